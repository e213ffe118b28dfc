"""Fun-ASR-Nano's audio features as the original model computes them (Kaldi fbank + LFR), without torchaudio.

The original frontend (funasr's `WavFrontend`; FunASR's llama.cpp runtime for Nano does the same) multiplies the
waveform by 32768 (`upsacle_samples=True`: int16 full scale) before `torchaudio.compliance.kaldi.fbank`, applies no
CMVN (Nano ships no am.mvn), trains with dither 1.0 on that int16 scale, and stacks LFR 7/6 as transformers does.
transformers' `FunAsrNanoFeatureExtractor` takes the waveform at unit scale. Where every mel energy of a frame is
above Kaldi's floor (float32 epsilon) the two differ by the constant 2 ln 32768 = 20.79 in every log-mel value, which
the encoder's first LayerNorm removes; elsewhere the unit scale floors values that the int16 scale resolves: quiet
audio (at peak 1e-4 over 90% of the values floor), near-silent frames, the empty bands of band-limited audio, and the
lowest mel bins of clean speech, which pre-emphasis all but removes. Digital silence floors on both scales.

`KaldiFbankFeatureExtractor` follows the original. It is the stock extractor with two settings added:
`waveform_scale` (default `WAVEFORM_SCALE`, 32768; 1.0 gives the stock features) and `dither` (default 0, as for
inference; Kaldi's dither on the scaled waveform, an option for training), and its one torchaudio call replaced by
`kaldi_fbank`, a port of torchaudio's function for the options the stock extractor uses (DC offset removed,
pre-emphasis 0.97, FFT size rounded up to a power of two, snip_edges, mel bins from 20 Hz to Nyquist, log power with
a float32-epsilon floor, no energy column) plus its dither; LFR stacking is `lfr_stack` (the stock `_apply_lfr` as
one gather: the same frames copied, so equal bit for bit); padding, masks and dtypes are inherited unchanged.
The port repeats torchaudio's arithmetic op by op: on the same torch it equals torchaudio 2.11 bit for bit, dither
included for the same seed (measured on the GPU machine, torch 2.11). The fixtures computed there (tests/fixtures/fbank,
made by benchmarks/gpu/make_fbank_fixture.py) are matched exactly by torch 2.13 on this project's CPU machine; other
builds and CPUs round FFT/matmul sums differently, by a few float32 epsilons of each frame's total energy, which in
the log of a bin many decades below the frame's loudest becomes 1e-3 or more (1.6e-3 under MKL's AVX2 kernels, as on
an AMD EPYC; CUDA 1.1e-3): tests bound energies relative to the frame's (tests/tolerances.py). The scale is a power
of two, so the scaled waveform is exact. kaldi-native-fbank (the C++ Kaldi port) was measured too and differs from
torchaudio by up to 7e-4.

Both functions take a batch: `batch_features(extractor, waveforms, device)` computes a whole batch of padded
waveforms in one set of tensor ops on any device (the GPU for transcription), and returns what `extractor(waveforms)`
returns; the extractor's per-utterance path is the same code with a batch of one. Dither is Kaldi's: `dither` times
a standard normal draw added to every sample of every frame before DC removal (overlapping frames draw apart).
`batch_features(..., dither=, generator=)` draws from the given generator, for the padded batch's frames; the
extractor's `__call__` draws from torch's default generator (`torch.manual_seed`), as torchaudio does.

Saved folders: `save_pretrained` writes `waveform_scale` and `dither` into the config, under the stock class's name
(`"feature_extractor_type": "FunAsrNanoFeatureExtractor"`), so that stock transformers (with torchaudio) still loads
the folder with `AutoProcessor`/`AutoFeatureExtractor`. It loads it as its own class, which keeps the two settings as
unused attributes and computes the unit-scale features, without dither. A model run that way sees, on frames where
nothing floors, features 20.79 lower (the same first-LayerNorm outputs, up to float rounding), and other inputs on
frames that floor at unit scale: its transcripts of quiet, band-limited or silence-padded audio may differ from the
original's. `load_processor` / `load_feature_extractor` always build `KaldiFbankFeatureExtractor`
(with or without torchaudio): a folder saved by stock transformers, which holds no `waveform_scale`, gets the
original's 32768.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature

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
    "WAVEFORM_SCALE",
    "KaldiFbankFeatureExtractor",
    "batch_features",
    "frame_samples",
    "kaldi_fbank",
    "lfr_stack",
    "load_feature_extractor",
    "load_processor",
    "num_lfr_frames",
]

# funasr's WavFrontend `upsacle_samples`: waveforms in [-1, 1) become int16-scale samples before the fbank.
WAVEFORM_SCALE = float(1 << 15)

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
def _mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float, device: torch.device) -> torch.Tensor:
    """Triangular mel filters `(num_mel_bins, fft_size // 2 + 1)`; the Nyquist column is zero, as in Kaldi."""
    mel_low, mel_high = _mel(_LOW_FREQ_HZ), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)  # +1: the outer triangles reach past both edges
    bins = torch.arange(num_mel_bins).unsqueeze(1)
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1.0) * delta, mel_low + (bins + 2.0) * delta
    fft_mel = _mel(sample_rate / fft_size * torch.arange(fft_size // 2)).unsqueeze(0)  # (1, fft_size // 2)
    up, down = (fft_mel - left) / (center - left), (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (num_mel_bins, fft_size // 2)
    return torch.nn.functional.pad(banks, (0, 1)).to(device)


def _frame_and_shift(sample_rate: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """Frame length and shift in samples, checked."""
    # Same float expressions as torchaudio, so that e.g. 16000 * 25 * 0.001 truncates to the same integer.
    frame = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    if frame < 2 or shift < 1:
        raise ValueError(
            f"frame_length_ms={frame_length_ms}, frame_shift_ms={frame_shift_ms} give frame {frame} and shift {shift} "
            f"samples at {sample_rate} Hz; need frame >= 2 and shift >= 1"
        )
    return frame, shift


def _check_dither(dither: float) -> None:
    if not dither >= 0.0:  # NaN fails too
        raise ValueError(f"dither must be >= 0 (0: none), got {dither}")


def kaldi_fbank(
    waveform: torch.Tensor,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    sample_rate: float = 16000.0,
    window: str = "hamming",
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log mel filterbank `(num_frames, num_mel_bins)` of a 1-D float32 waveform, as
    `torchaudio.compliance.kaldi.fbank(waveform[None], num_mel_bins=..., frame_length=..., frame_shift=...,
    sample_frequency=..., window_type=..., dither=...)` computes it with its other options at their defaults; or
    `(batch, num_frames, num_mel_bins)` of a batch `(batch, num_samples)`, computed on the waveform's device.
    The waveform is taken as is: Kaldi's own convention is int16-scale samples (see `WAVEFORM_SCALE`).

    Frames fit wholly inside the waveform (snip_edges): `1 + (num_samples - frame) // shift` of them. Each frame
    depends on its own samples alone, so in a batch of zero-padded waveforms a row's first frames (as many as its
    unpadded length gives) are that waveform's frames.

    `dither` > 0 adds `dither * N(0, 1)` to every sample of every frame before DC removal, as Kaldi does, drawn from
    `generator` (None: torch's default generator, which torchaudio uses; a generator must be on the waveform's
    device). On the CPU, one seed gives torchaudio's draws for a 1-D waveform.
    """
    if waveform.dim() not in (1, 2):
        raise ValueError(
            f"waveform must be 1-D (num_samples,) or 2-D (batch, num_samples), got shape {tuple(waveform.shape)}"
        )
    if window not in KALDI_WINDOWS:
        raise ValueError(f"window must be one of {sorted(KALDI_WINDOWS)}, got {window!r}")
    _check_dither(dither)
    frame, shift = _frame_and_shift(sample_rate, frame_length_ms, frame_shift_ms)
    if waveform.shape[-1] < frame:
        raise ValueError(
            f"waveform has {waveform.shape[-1]} samples; Kaldi fbank needs at least one {frame_length_ms} ms frame "
            f"({frame} samples at {sample_rate} Hz)"
        )
    fft_size = 1 << (frame - 1).bit_length()

    frames = waveform.to(torch.float32).unfold(-1, frame, shift)  # (..., T, frame)
    if dither > 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        frames = frames + noise * dither  # torchaudio's order of operations: the same float results
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi repeats the first sample of each frame
    frames = (frames - _PREEMPHASIS * previous) * KALDI_WINDOWS[window](frame).to(frames.device)
    frames = torch.nn.functional.pad(frames, (0, fft_size - frame))  # (..., T, fft_size)
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (..., T, fft_size // 2 + 1)
    banks = _mel_banks(num_mel_bins, fft_size, float(sample_rate), frames.device)
    mel_energies = torch.matmul(power, banks.T)  # (..., T, num_mel_bins)
    return torch.clamp(mel_energies, min=_EPSILON).log()


def lfr_stack(features: torch.Tensor, num_frames: Sequence[int], num_stacked: int = 7, stride: int = 6) -> torch.Tensor:
    """Low frame rate (LFR) stacking of fbank frames `(batch, frames, feature_size)` whose row `b` holds
    `num_frames[b]` valid frames: `(batch, max(lfr_frames), num_stacked * feature_size)`.

    Row `b` has `lfr_frames = ceil(num_frames[b] / stride)` LFR frames; frame `j` stacks `num_stacked` fbank frames
    from `j * stride - (num_stacked - 1) // 2` on, with the first and the last valid frame repeated past either end
    (the stock `_apply_lfr`, which is this with a batch of one). Rows past a row's `lfr_frames` repeat its last
    frame: mask them.
    """
    batch, _, feature_size = features.shape
    if len(num_frames) != batch or min(num_frames) < 1:
        raise ValueError(f"num_frames must hold one count >= 1 per row of features ({batch}), got {list(num_frames)}")
    lfr_frames = max(-(-n // stride) for n in num_frames)
    device = features.device
    # Index of the fbank frame in each stacked slot: (lfr_frames, num_stacked), then clamped per row to [0, n - 1].
    slots = torch.arange(lfr_frames, device=device)[:, None] * stride + torch.arange(num_stacked, device=device)
    slots = (slots - (num_stacked - 1) // 2).clamp(min=0)
    last = torch.tensor(num_frames, device=device)[:, None, None] - 1
    index = torch.minimum(slots[None], last)  # (batch, lfr_frames, num_stacked)
    index = index.reshape(batch, -1, 1).expand(-1, -1, feature_size)
    stacked = torch.gather(features, 1, index)  # (batch, lfr_frames * num_stacked, feature_size)
    return stacked.reshape(batch, lfr_frames, num_stacked * feature_size)


def frame_samples(extractor: FunAsrNanoFeatureExtractor) -> tuple[int, int]:
    """Samples of one fbank frame (the shortest audio that has features) and of the shift between frames."""
    return _frame_and_shift(extractor.sampling_rate, extractor.frame_length, extractor.frame_shift)


def _num_fbank_frames(extractor: FunAsrNanoFeatureExtractor, num_samples: int) -> int:
    frame, shift = frame_samples(extractor)
    if num_samples < frame:
        raise ValueError(
            f"{num_samples} samples is shorter than one {extractor.frame_length} ms fbank frame ({frame} samples at "
            f"{extractor.sampling_rate} Hz)"
        )
    return 1 + (num_samples - frame) // shift


def num_lfr_frames(extractor: FunAsrNanoFeatureExtractor, num_samples: int) -> int:
    """LFR frames (audio placeholder tokens) that `extractor` makes of a waveform of `num_samples` samples."""
    return -(-_num_fbank_frames(extractor, num_samples) // extractor.stride_lfr)


class KaldiFbankFeatureExtractor(FunAsrNanoFeatureExtractor):
    """`FunAsrNanoFeatureExtractor` (same arguments, `__call__`, outputs and saved config type) with the original's
    input scale, optional dither, and `kaldi_fbank` instead of torchaudio's, so it needs no torchaudio.

    Args:
        waveform_scale: factor on the waveform before the fbank; `WAVEFORM_SCALE` (32768) is funasr's int16 scale,
            the features Fun-ASR-Nano was trained on, 1.0 the stock extractor's. Saved with the config.
        dither: Kaldi's dither on the scaled waveform (1.0 is funasr's training default; 0, the default, for
            inference). Saved with the config; `batch_features(..., dither=)` overrides it per call.
        args, kwargs: the stock extractor's arguments (feature_size, sampling_rate, frame_length, ...).
    """

    def __init__(self, *args: Any, waveform_scale: float = WAVEFORM_SCALE, dither: float = 0.0, **kwargs: Any):
        if not (waveform_scale > 0.0 and math.isfinite(waveform_scale)):
            raise ValueError(f"waveform_scale must be a finite number > 0 (int16: 32768), got {waveform_scale}")
        _check_dither(dither)
        super().__init__(*args, **kwargs)
        self.waveform_scale = float(waveform_scale)
        self.dither = float(dither)

    def fbank(
        self, waveform: torch.Tensor, dither: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`kaldi_fbank` of `waveform * waveform_scale` with this extractor's settings; `dither` None: `self.dither`."""
        return kaldi_fbank(
            waveform * self.waveform_scale,
            num_mel_bins=self.feature_size,
            frame_length_ms=self.frame_length,
            frame_shift_ms=self.frame_shift,
            sample_rate=self.sampling_rate,
            window=self.window,
            dither=self.dither if dither is None else dither,
            generator=generator,
        )

    def _extract_fbank_features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.fbank(waveform)

    def _apply_lfr(self, features: torch.Tensor) -> torch.Tensor:
        return lfr_stack(features[None], [features.shape[0]], self.num_frames_lfr, self.stride_lfr)[0]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # The stock name, so that stock transformers loads a saved folder (it then ignores the scale: module docstring).
        output["feature_extractor_type"] = FunAsrNanoFeatureExtractor.__name__
        return output


def batch_features(
    extractor: KaldiFbankFeatureExtractor,
    waveforms: Sequence[np.ndarray | torch.Tensor],
    device: torch.device | str | None = None,
    *,
    dither: float | None = None,
    generator: torch.Generator | None = None,
) -> BatchFeature:
    """What `extractor(waveforms)` returns, computed for the whole batch in one set of tensor ops on `device` (None:
    the CPU): `input_features` `(batch, max_lfr_frames, feature_size * num_frames_lfr)` float32, padded with the
    extractor's `padding_value`, and `input_features_mask` `(batch, max_lfr_frames)` int32.

    The waveforms (1-D, at the extractor's sampling rate) are zero-padded into one tensor; one `kaldi_fbank` of the
    scaled batch and one `lfr_stack` make every row's features. Frame counts equal the extractor's, values equal them
    up to float rounding (FFTs and matrix products of other shapes, or on another device).

    Args:
        dither: Kaldi's dither for this call (training); None: the extractor's `dither` (0 unless set).
        generator: where the dither draws come from (None: torch's default generator), on `device`; the draws cover
            the padded batch, so one waveform's noise depends on the batch it is in.
    """
    if not isinstance(extractor, KaldiFbankFeatureExtractor):
        raise TypeError(
            f"extractor must be a KaldiFbankFeatureExtractor (the original's int16-scale features), got "
            f"{type(extractor).__name__}; load processors with funasr_swap.features.load_processor"
        )
    if len(waveforms) == 0:
        raise ValueError("waveforms is empty; pass at least one waveform")
    rows, num_frames = [], []
    for i, waveform in enumerate(waveforms):
        row = torch.as_tensor(waveform, dtype=torch.float32)
        if row.dim() != 1:
            raise ValueError(f"waveforms[{i}] must be 1-D (num_samples,), got shape {tuple(row.shape)}")
        try:
            num_frames.append(_num_fbank_frames(extractor, row.numel()))
        except ValueError as error:
            raise ValueError(f"waveforms[{i}]: {error}") from error
        rows.append(row.to(device))
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (batch, max_samples)
    fbank = extractor.fbank(padded, dither, generator)  # (batch, max_frames, feature_size)
    features = lfr_stack(fbank, num_frames, extractor.num_frames_lfr, extractor.stride_lfr)
    lfr_frames = torch.tensor([-(-n // extractor.stride_lfr) for n in num_frames], device=features.device)
    mask = torch.arange(features.shape[1], device=features.device) < lfr_frames[:, None]  # (batch, max_lfr_frames)
    features = features.masked_fill(~mask[..., None], extractor.padding_value)
    return BatchFeature({"input_features": features, "input_features_mask": mask.to(torch.int32)})


def load_feature_extractor(source: str | Path | None = None, **kwargs: Any) -> KaldiFbankFeatureExtractor:
    """A `KaldiFbankFeatureExtractor`, whether or not torchaudio is installed.

    Args:
        source: a folder saved by `save_pretrained` (its `preprocessor_config.json`, or the `feature_extractor`
            entry of its `processor_config.json`), or None for the defaults (80 mel, 25/10 ms, hamming, LFR 7/6,
            waveform_scale 32768, dither 0). A folder saved by stock transformers has no `waveform_scale`: 32768.
        kwargs: overrides of the saved or default arguments (`waveform_scale=...`, `stride_lfr=...`, ...).
    """
    if source is None:
        return KaldiFbankFeatureExtractor(**kwargs)
    if not Path(source).is_dir():
        raise FileNotFoundError(f"feature extractor folder {source} does not exist")
    saved, _ = KaldiFbankFeatureExtractor.get_feature_extractor_dict(source)
    # One dict: `from_pretrained(source, **kwargs)` would drop overrides of settings the folder does not hold.
    return KaldiFbankFeatureExtractor.from_dict({**saved, **kwargs})


def load_processor(folder: str | Path, **kwargs: Any) -> FunAsrNanoProcessor:
    """`AutoProcessor.from_pretrained(folder)` for a Fun-ASR-Nano processor folder, with the original's features and
    without torchaudio: the feature extractor is `load_feature_extractor(folder)` (a `KaldiFbankFeatureExtractor`,
    where `AutoProcessor` would build the stock class, which ignores `waveform_scale`), the tokenizer comes from
    `AutoTokenizer`, the chat template and audio token from the folder's processor files. `kwargs` go to
    `AutoTokenizer.from_pretrained`.
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"processor folder {folder} does not exist")
    feature_extractor = load_feature_extractor(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    processor_dict, _ = FunAsrNanoProcessor.get_processor_dict(folder)
    # from_dict with the parts as keywords (they replace the dicts saved for them): from_args_and_dict, the
    # positional form, prints a deprecation warning at every load under transformers 5.25
    return FunAsrNanoProcessor.from_dict(processor_dict, feature_extractor=feature_extractor, tokenizer=tokenizer)
