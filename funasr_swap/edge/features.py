"""Fun-ASR-Nano's audio features in numpy: Kaldi fbank on the int16 scale + LFR stacking, for one waveform.

The same arithmetic as `funasr_swap.features.kaldi_fbank` and `lfr_stack` (the original's x32768 frontend, no
CMVN, no dither: inference), without torch. numpy's FFT and matrix product round differently from torch's: on the
test clips the two agree within 1e-3 in log-mel (tests/funasr_swap/edge/test_features.py states the tolerance it
checks), which moves the audio embeddings by far less than the gap between two tokens' logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureSettings", "fbank", "lfr_stack", "num_lfr_frames"]

_EPSILON = np.finfo(np.float32).eps  # Kaldi's floor on mel energies before the log
_PREEMPHASIS = np.float32(0.97)
_LOW_FREQ_HZ = 20.0


@dataclass(frozen=True)
class FeatureSettings:
    """What the feature extractor of the exported model computes (its saved settings; edge.json's `features`)."""

    sampling_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"
    lfr_m: int = 7  # LFR: frames stacked
    lfr_n: int = 6  # LFR: stride
    waveform_scale: float = 32768.0  # the original's int16 scale
    padding_value: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sampling_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "lfr_m", "lfr_n"):
            if not getattr(self, name) > 0:
                raise ValueError(f"features.{name} must be positive, got {getattr(self, name)!r}")
        if min(self.frame_samples) < 1:
            raise ValueError(
                f"features: a frame must hold a sample, got {self.frame_samples} at {self.sampling_rate} Hz"
            )

    @property
    def frame_samples(self) -> tuple[int, int]:
        """Samples of one fbank frame and of the shift between frames (torchaudio's float expressions)."""
        return (
            int(self.sampling_rate * self.frame_length_ms * 0.001),
            int(self.sampling_rate * self.frame_shift_ms * 0.001),
        )


def _window(name: str, size: int) -> np.ndarray:
    n = np.arange(size, dtype=np.float64)
    cosine = np.cos(2 * np.pi * n / (size - 1))
    windows: dict[str, Callable[[], np.ndarray]] = {
        "hamming": lambda: 0.54 - 0.46 * cosine,
        "hanning": lambda: 0.5 - 0.5 * cosine,
        "povey": lambda: (0.5 - 0.5 * cosine) ** 0.85,
        "rectangular": lambda: np.ones(size),
        "blackman": lambda: 0.42 - 0.5 * cosine + 0.08 * np.cos(4 * np.pi * n / (size - 1)),
    }
    if name not in windows:
        raise ValueError(f"window must be one of {sorted(windows)}, got {name!r}")
    return windows[name]().astype(np.float32)


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def _mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float) -> np.ndarray:
    """Triangular mel filters `(num_mel_bins, fft_size // 2 + 1)`; the Nyquist column is zero, as in Kaldi."""
    mel_low, mel_high = _mel(_LOW_FREQ_HZ), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    bins = np.arange(num_mel_bins)[:, None]
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1.0) * delta, mel_low + (bins + 2.0) * delta
    fft_mel = _mel(sample_rate / fft_size * np.arange(fft_size // 2))[None]
    banks = np.clip(np.minimum((fft_mel - left) / (center - left), (right - fft_mel) / (right - center)), 0.0, None)
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def fbank(waveform: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Log mel filterbank `(num_frames, num_mel_bins)` float32 of a 1-D waveform in [-1, 1] at the settings' rate:
    scaled by `waveform_scale`, framed with snip_edges, DC removed, pre-emphasis 0.97, windowed, power spectrum,
    mel filters, log with a float32-epsilon floor."""
    frame, shift = settings.frame_samples
    if waveform.ndim != 1 or len(waveform) < frame:
        raise ValueError(
            f"waveform must be 1-D with at least one {settings.frame_length_ms} ms frame ({frame} samples), "
            f"got shape {waveform.shape}"
        )
    scaled = waveform.astype(np.float32) * np.float32(settings.waveform_scale)
    frames = np.lib.stride_tricks.sliding_window_view(scaled, frame)[::shift]  # (T, frame)
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # Kaldi repeats each frame's first sample
    frames = (frames - _PREEMPHASIS * previous) * _window(settings.window, frame)
    fft_size = 1 << (frame - 1).bit_length()
    power = np.abs(np.fft.rfft(frames, n=fft_size, axis=1)).astype(np.float32) ** 2
    mel_energies = power @ _mel_banks(settings.num_mel_bins, fft_size, float(settings.sampling_rate)).T
    return np.log(np.maximum(mel_energies, _EPSILON)).astype(np.float32)


def lfr_stack(features: np.ndarray, num_stacked: int = 7, stride: int = 6) -> np.ndarray:
    """LFR frames `(ceil(frames / stride), num_stacked * feature_size)` of fbank frames `(frames, feature_size)`:
    frame `j` stacks `num_stacked` frames from `j * stride - (num_stacked - 1) // 2` on, the first and last frame
    repeated past either end (`funasr_swap.features.lfr_stack` for one row)."""
    count = features.shape[0]
    lfr_frames = -(-count // stride)
    slots = np.arange(lfr_frames)[:, None] * stride + np.arange(num_stacked) - (num_stacked - 1) // 2
    index = np.clip(slots, 0, count - 1)
    return features[index].reshape(lfr_frames, num_stacked * features.shape[1])


def num_lfr_frames(num_samples: int, settings: FeatureSettings) -> int:
    """LFR frames (audio rows fed to the LLM) of a waveform of `num_samples` samples."""
    frame, shift = settings.frame_samples
    return -(-(1 + (num_samples - frame) // shift) // settings.lfr_n)
