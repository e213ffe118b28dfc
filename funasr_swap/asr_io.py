"""What transcription takes and gives, shared by the PyTorch path (`funasr_swap.transcribe`) and the edge runtime
(`funasr_swap.edge`); torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funasr_swap.audio import load_audio
from funasr_swap.errors import SettingError
from funasr_swap.timestamps import TokenTime

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "DEFAULT_MAX_NEW_TOKENS",
    "AudioSource",
    "Transcript",
    "load_sources",
]

# A path, the bytes of an audio file, an array at the processor's rate (16 kHz), or (array, its sampling rate).
AudioSource = str | Path | bytes | np.ndarray | tuple[np.ndarray, int]

DEFAULT_MAX_AUDIO_SECONDS = 60.0  # longer audio is refused: split it first (e.g. with a VAD), as funasr does
DEFAULT_MAX_NEW_TOKENS = 512  # funasr's default `max_length` for the LLM's answer


@dataclass(frozen=True)
class Transcript:
    """The transcription of one audio input."""

    text: str
    audio_seconds: float  # duration of the audio
    seconds: float  # wall time of its batch (features, generation, decoding) divided by the batch size
    tokens: int  # generated text tokens, the stop token not counted
    # per-token times when asked for (`timestamps=True`), in order; empty when the text cannot be aligned
    timestamps: tuple[TokenTime, ...] | None = None


def _source_name(source: AudioSource, index: int) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"audio #{index}"


def _load(source: AudioSource, index: int, sampling_rate: int) -> np.ndarray:
    """Mono float32 at `sampling_rate`; errors name the file (or the input's position for bytes and arrays)."""
    try:
        if isinstance(source, tuple):
            if len(source) != 2 or not isinstance(source[0], np.ndarray):
                raise TypeError(f"expected (array, sampling_rate), got a tuple of {len(source)} item(s)")
            return load_audio(source[0], sampling_rate, source_rate=int(source[1]))
        if isinstance(source, np.ndarray):
            return load_audio(source, sampling_rate, source_rate=sampling_rate)
        if isinstance(source, (str, Path, bytes)):
            return load_audio(source, sampling_rate)
        raise TypeError(f"expected a path, bytes, an array or (array, sampling_rate); got {type(source).__name__}")
    except (ValueError, TypeError) as error:
        if isinstance(source, (str, Path)):  # load_audio's message already names the file
            raise
        raise type(error)(f"{_source_name(source, index)}: {error}") from error


def load_sources(
    audios: Sequence[AudioSource], sampling_rate: int, min_samples: int, max_audio_seconds: float, limit: float
) -> list[np.ndarray]:
    """Every input as a mono float32 waveform at `sampling_rate`, all decoded and checked before any model runs.

    `min_samples`: one feature frame; `max_audio_seconds`: the caller's limit, at most `limit` (what the encoder's
    positions cover). Raises TypeError for a single input not wrapped in a list, FileNotFoundError for a missing
    file, ValueError naming the input for unreadable, empty, too short or too long audio.
    """
    if isinstance(audios, (str, Path, bytes, np.ndarray)) or (
        isinstance(audios, tuple) and len(audios) == 2 and isinstance(audios[1], int)
    ):
        raise TypeError(f"audios must be a list of audio inputs; wrap the single {type(audios).__name__} in a list")
    if max_audio_seconds > limit:
        raise SettingError(
            f"{{max_audio_seconds}} is longer than the encoder's positions cover ({limit:.1f} s)",
            max_audio_seconds=max_audio_seconds,
        )
    waveforms = []
    for index, source in enumerate(audios):
        waveform = _load(source, index, sampling_rate)
        seconds = len(waveform) / sampling_rate
        if len(waveform) < min_samples:
            raise ValueError(
                f"{_source_name(source, index)}: audio is {seconds:.3f} s long, shorter than one "
                f"{1000 * min_samples / sampling_rate:g} ms feature frame"
            )
        if seconds > max_audio_seconds:
            raise SettingError(
                f"{_source_name(source, index)}: audio is {seconds:.1f} s long, longer than {{max_audio_seconds}}; "
                f"split it (e.g. with a VAD), or raise the maximum (at most {limit:.1f} s)",
                max_audio_seconds=max_audio_seconds,
            )
        waveforms.append(waveform)
    return waveforms
