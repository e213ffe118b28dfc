"""What a served model accepts from a browser or an HTTP client: the upload limits the demo and `funasr-swap serve`
share, and the size form they are given in. Torch-free and Gradio-free, so both settings read it cheaply."""

from __future__ import annotations

import re

from funasr_swap.errors import SettingError

__all__ = ["MAX_AUDIO_SECONDS", "MAX_FILE_SIZE", "check_positive", "file_size_bytes"]

MAX_FILE_SIZE = "10mb"  # an upload over this is refused before it is read
MAX_AUDIO_SECONDS = 30.0  # longer audio gets a message, not a transcription

_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}  # Gradio's (gradio.utils.FileSize)


def file_size_bytes(size: str, owner: str = "") -> int:
    """Bytes of a size in Gradio's form, "<digits><unit>" (10mb, 1gb; units of 1024), as the demo and `funasr-swap
    serve` take `max_file_size`; anything else is a SettingError naming `max_file_size` (of `owner`)."""
    match = re.fullmatch(r"(\d+) *(b|kb|mb|gb|tb)", size, re.IGNORECASE)
    if match is None:
        raise SettingError(
            "{max_file_size}: give a whole number and a unit, b, kb, mb, gb or tb (10mb, 1gb)",
            owner=owner, max_file_size=size,
        )  # fmt: skip
    return int(match[1]) * _UNITS[match[2].lower()]


def check_positive(settings: object, *names: str) -> None:
    """ValueError naming the first of `settings`' fields `names` that is not > 0 (the limits the demo and the server
    both take), with its class and value."""
    for name in names:
        if not getattr(settings, name) > 0:
            raise ValueError(f"{type(settings).__name__}.{name} must be > 0, got {getattr(settings, name)!r}")
