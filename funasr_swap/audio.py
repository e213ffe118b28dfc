"""Audio in: any file, bytes or array to the mono float32 waveform at 16 kHz that the feature extractor takes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile
import soxr

__all__ = ["load_audio"]


def load_audio(
    source: str | Path | bytes | np.ndarray,
    sampling_rate: int = 16000,
    source_rate: int | None = None,
) -> np.ndarray:
    """Read audio as a mono float32 waveform `(num_samples,)` at `sampling_rate`.

    Args:
        source: a path to a file soundfile reads (wav, flac, ogg, ...), the bytes of such a file, or an array of
            shape `(num_samples,)` or `(num_samples, num_channels)` (float in [-1, 1], or int16/int32 PCM).
        sampling_rate: the rate of the returned waveform.
        source_rate: the rate of an array `source` (required for arrays; files and bytes carry their own).

    Channels are averaged, then the waveform is resampled with soxr (high quality). Raises FileNotFoundError for a
    missing file and ValueError, naming the source, for a folder, unreadable, empty or non-finite audio.
    """
    if isinstance(source, np.ndarray):
        if source_rate is None:
            raise ValueError(f"an array source needs source_rate (its sampling rate); got shape {source.shape}")
        name, waveform, rate = f"array of shape {source.shape}", _to_float32(source), source_rate
        if waveform.ndim not in (1, 2):
            raise ValueError(f"audio {name} must be 1-D or 2-D (num_samples, num_channels), got {waveform.ndim}-D")
        if waveform.ndim == 2 and 0 < waveform.shape[0] < waveform.shape[1]:
            raise ValueError(f"audio {name} looks channels-first; expected (num_samples, num_channels)")
    else:
        if source_rate is not None:
            raise ValueError(f"source_rate={source_rate} is only for arrays; files and bytes carry their own rate")
        name, waveform, rate = _read(source)

    if waveform.size == 0:
        raise ValueError(f"audio {name} is empty (0 samples)")
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if not np.isfinite(waveform).all():
        raise ValueError(f"audio {name} contains NaN or infinite samples")
    if rate != sampling_rate:
        waveform = soxr.resample(waveform, rate, sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _read(source: str | Path | bytes) -> tuple[str, np.ndarray, int]:
    """(name for errors, float32 samples `(num_samples, num_channels)`, rate) of a file path or file bytes."""
    if isinstance(source, bytes):
        name, handle = f"<{len(source)} bytes>", io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"audio {path} is a folder, not an audio file")
        if not path.is_file():
            raise FileNotFoundError(f"audio file {path} does not exist")
        name, handle = str(path), path
    try:
        waveform, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except soundfile.SoundFileError as error:
        raise ValueError(f"cannot read audio {name}: {error}") from error
    return name, waveform, rate


def _to_float32(samples: np.ndarray) -> np.ndarray:
    """PCM integers scaled to [-1, 1) like soundfile scales them; floats as they are."""
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    if samples.dtype in (np.int16, np.int32):
        return (samples / float(-np.iinfo(samples.dtype).min)).astype(np.float32)
    raise ValueError(f"array dtype must be float, int16 or int32, got {samples.dtype}")
