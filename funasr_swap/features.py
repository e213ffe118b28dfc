"""Fun-ASR-Nano's audio features (Kaldi fbank + LFR) without torchaudio.

transformers' `FunAsrNanoFeatureExtractor` computes its fbank with `torchaudio.compliance.kaldi.fbank`, and
torchaudio does not load beside every torch (2.11's compiled library fails with torch 2.13; PyPI has nothing newer).
`KaldiFbankFeatureExtractor` is that extractor with the one torchaudio call replaced by `kaldi_fbank`, a port of
torchaudio's function for the options the stock extractor uses (dither 0, DC offset removed, pre-emphasis 0.97, FFT
size rounded up to a power of two, snip_edges, mel bins from 20 Hz to Nyquist, log power with a float32-epsilon
floor, no energy column). LFR stacking, padding, masks and dtypes are inherited unchanged.
The port repeats torchaudio's arithmetic op by op: on the same torch it equals torchaudio 2.11 bit for bit (measured
on the GPU machine, torch 2.11). Against the fixtures computed there (tests/fixtures/fbank, made by
benchmarks/gpu/make_fbank_fixture.py), torch 2.13 differs by at most 3.5e-4 in log-mel: FFT/matmul rounding of the
two torch builds.
kaldi-native-fbank (the C++ Kaldi port) was measured too and differs from torchaudio by up to 7e-4.
Like the stock extractor (and unlike funasr's WavFrontend, which multiplies by 32768), it takes the waveform as is.

Saved configs name the stock class (`"feature_extractor_type": "FunAsrNanoFeatureExtractor"`), so a folder saved
here loads with stock transformers wherever torchaudio works, and both classes give the same features. Without
torchaudio, `AutoProcessor`/`AutoFeatureExtractor` resolve that name to transformers' placeholder, which raises;
load such folders with `load_processor` / `load_feature_extractor`, which pick the stock class when torchaudio is
available and this one otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.utils import is_torchaudio_available

try:
    # Import from the module, not from `transformers`: without torchaudio the top-level name is a placeholder class.
    from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor
except OSError as error:  # the stock module imports torchaudio whenever it is installed, even if it cannot load
    raise ImportError(
        f"torchaudio is installed but does not load with torch {torch.__version__} ({error}); "
        "uninstall it (`pip uninstall torchaudio`): funasr_swap computes Kaldi fbank features without it"
    ) from error
from transformers.models.fun_asr_nano.processing_fun_asr_nano import FunAsrNanoProcessor

__all__ = [
    "KALDI_WINDOWS",
    "KaldiFbankFeatureExtractor",
    "feature_extractor_class",
    "kaldi_fbank",
    "load_feature_extractor",
    "load_processor",
]

# numeric_limits<float>::epsilon(): Kaldi's floor on mel energies before the log (log(eps) = -15.94 on silence).
_EPSILON = torch.finfo(torch.float32).eps
_PREEMPHASIS = 0.97
_LOW_FREQ_HZ = 20.0  # the upper edge is Nyquist (torchaudio's high_freq=0.0)
_BLACKMAN_COEFF = 0.42


def _blackman(size: int) -> torch.Tensor:
    # Kaldi's generalised Blackman, not torch.blackman_window (other coefficients).
    n = torch.arange(size, dtype=torch.float32)
    a = 2 * math.pi / (size - 1)
    return _BLACKMAN_COEFF - 0.5 * torch.cos(a * n) + (0.5 - _BLACKMAN_COEFF) * torch.cos(2 * a * n)


# Window functions by the names torchaudio.compliance.kaldi accepts, built exactly as it builds them.
KALDI_WINDOWS: dict[str, Callable[[int], torch.Tensor]] = {
    "hamming": lambda size: torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46),
    "hanning": lambda size: torch.hann_window(size, periodic=False),
    "povey": lambda size: torch.hann_window(size, periodic=False).pow(0.85),
    "rectangular": lambda size: torch.ones(size),
    "blackman": _blackman,
}


def _mel(freq: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float) -> torch.Tensor:
    """Triangular mel filters `(num_mel_bins, fft_size // 2 + 1)`; the Nyquist column is zero, as in Kaldi."""
    mel_low, mel_high = _mel(_LOW_FREQ_HZ), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)  # +1: the outer triangles reach past both edges
    bins = torch.arange(num_mel_bins).unsqueeze(1)
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1.0) * delta, mel_low + (bins + 2.0) * delta
    fft_mel = _mel(sample_rate / fft_size * torch.arange(fft_size // 2)).unsqueeze(0)  # (1, fft_size // 2)
    up, down = (fft_mel - left) / (center - left), (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (num_mel_bins, fft_size // 2)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    sample_rate: float = 16000.0,
    window: str = "hamming",
) -> torch.Tensor:
    """Log mel filterbank `(num_frames, num_mel_bins)` of a 1-D float32 waveform, as
    `torchaudio.compliance.kaldi.fbank(waveform[None], num_mel_bins=..., frame_length=..., frame_shift=...,
    sample_frequency=..., window_type=...)` computes it with its other options at their defaults.

    Frames fit wholly inside the waveform (snip_edges): `1 + (num_samples - frame) // shift` of them.
    """
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be 1-D (num_samples,), got shape {tuple(waveform.shape)}")
    if window not in KALDI_WINDOWS:
        raise ValueError(f"window must be one of {sorted(KALDI_WINDOWS)}, got {window!r}")
    # Same float expressions as torchaudio, so that e.g. 16000 * 25 * 0.001 truncates to the same integer.
    frame = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    if frame < 2 or shift < 1:
        raise ValueError(
            f"frame_length_ms={frame_length_ms}, frame_shift_ms={frame_shift_ms} give frame {frame} and shift {shift} "
            f"samples at {sample_rate} Hz; need frame >= 2 and shift >= 1"
        )
    if waveform.numel() < frame:
        raise ValueError(
            f"waveform has {waveform.numel()} samples; Kaldi fbank needs at least one {frame_length_ms} ms frame "
            f"({frame} samples at {sample_rate} Hz)"
        )
    fft_size = 1 << (frame - 1).bit_length()

    frames = waveform.to(torch.float32).unfold(0, frame, shift)  # (T, frame)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # Kaldi repeats the first sample of each frame
    frames = (frames - _PREEMPHASIS * previous) * KALDI_WINDOWS[window](frame)
    frames = torch.nn.functional.pad(frames, (0, fft_size - frame))  # (T, fft_size)
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (T, fft_size // 2 + 1)
    mel_energies = torch.mm(power, _mel_banks(num_mel_bins, fft_size, float(sample_rate)).T)  # (T, num_mel_bins)
    return torch.clamp(mel_energies, min=_EPSILON).log()


class KaldiFbankFeatureExtractor(FunAsrNanoFeatureExtractor):
    """`FunAsrNanoFeatureExtractor` (same arguments, `__call__`, outputs and saved config) whose fbank is
    `kaldi_fbank` instead of torchaudio's, so it needs no torchaudio."""

    def _extract_fbank_features(self, waveform: torch.Tensor) -> torch.Tensor:
        return kaldi_fbank(
            waveform,
            num_mel_bins=self.feature_size,
            frame_length_ms=self.frame_length,
            frame_shift_ms=self.frame_shift,
            sample_rate=self.sampling_rate,
            window=self.window,
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # The stock name, so stock transformers loads a saved folder; the features are the same either way.
        output["feature_extractor_type"] = FunAsrNanoFeatureExtractor.__name__
        return output


def feature_extractor_class() -> type[FunAsrNanoFeatureExtractor]:
    """The stock `FunAsrNanoFeatureExtractor` where torchaudio is available, else `KaldiFbankFeatureExtractor`."""
    return FunAsrNanoFeatureExtractor if is_torchaudio_available() else KaldiFbankFeatureExtractor


def load_feature_extractor(source: str | Path | None = None, **kwargs: Any) -> FunAsrNanoFeatureExtractor:
    """A Fun-ASR-Nano feature extractor of `feature_extractor_class()`.

    Args:
        source: a folder saved by `save_pretrained` (its `preprocessor_config.json`, or the `feature_extractor`
            entry of its `processor_config.json`), or None for the defaults (80 mel, 25/10 ms, hamming, LFR 7/6).
        kwargs: overrides of the saved or default arguments (`sampling_rate=...`, ...).
    """
    cls = feature_extractor_class()
    if source is None:
        return cls(**kwargs)
    if not Path(source).is_dir():
        raise FileNotFoundError(f"feature extractor folder {source} does not exist")
    return cls.from_pretrained(source, **kwargs)


def load_processor(folder: str | Path, **kwargs: Any) -> FunAsrNanoProcessor:
    """`AutoProcessor.from_pretrained(folder)` for a Fun-ASR-Nano processor folder, that also works without
    torchaudio: the feature extractor comes from `load_feature_extractor`, the tokenizer from `AutoTokenizer` and the
    chat template and audio token from the folder's processor files. `kwargs` go to `AutoTokenizer.from_pretrained`.
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"processor folder {folder} does not exist")
    feature_extractor = load_feature_extractor(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    processor_dict, _ = FunAsrNanoProcessor.get_processor_dict(folder)
    return FunAsrNanoProcessor.from_args_and_dict([feature_extractor, tokenizer], processor_dict)
