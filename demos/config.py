"""The demo's settings: limits and safety defaults, each overridable (`funasr-swap demo --help` lists them).

Kept apart from the Gradio app so that the CLI reads these defaults without importing Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from funasr_swap.uploads import MAX_AUDIO_SECONDS, MAX_FILE_SIZE, check_positive, file_size_bytes

__all__ = ["DemoConfig"]


@dataclass(frozen=True)
class DemoConfig:
    """How the demo serves: where, how much it accepts, how much it does at once."""

    host: str = "127.0.0.1"  # this machine only; "0.0.0.0" exposes the demo to the network
    port: int | None = None  # None: the first free port from 7860
    max_file_size: str = MAX_FILE_SIZE  # an upload over this is refused in the browser and by the server
    max_audio_seconds: float = MAX_AUDIO_SECONDS  # longer audio gets a message, not a transcription
    queue_size: int = 16  # comparisons waiting beyond this are turned away (Gradio's queue max_size)
    concurrency_limit: int = 1  # comparisons running at once: each already uses every CPU core through torch
    max_new_tokens: int = 128  # the longest transcript, in tokens, per model (an untrained model may never stop)
    max_examples: int = 8  # held-out clips offered as examples
    temp_dir: Path | None = None  # every upload and cached file goes here; None: a new folder in the system's temp

    def __post_init__(self) -> None:
        check_positive(self, "max_audio_seconds", "queue_size", "concurrency_limit", "max_new_tokens")
        if self.max_examples < 0:
            raise ValueError(f"DemoConfig.max_examples must be >= 0, got {self.max_examples}")
        # Gradio checks it only as it starts serving, after the models load
        file_size_bytes(self.max_file_size, owner="DemoConfig")
