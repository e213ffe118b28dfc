"""The server's settings (`funasr-swap serve --help` lists them as flags); torch-free, so the CLI reads the defaults
without importing the model side."""

from __future__ import annotations

from dataclasses import dataclass

from funasr_swap.asr_io import DEFAULT_MAX_NEW_TOKENS
from funasr_swap.uploads import MAX_AUDIO_SECONDS, MAX_FILE_SIZE, check_positive, file_size_bytes

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """Where the server listens, what it accepts, and how it batches requests that arrive together."""

    host: str = "127.0.0.1"  # this machine only; "0.0.0.0" exposes the server to the network
    port: int = 8000  # 0: a free port the system picks (tests)
    model_name: str | None = None  # the id of `/v1/models` and the `model` a request must name; None: the folder's name
    max_file_size: str = MAX_FILE_SIZE  # the demo's upload limits
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # as `funasr-swap transcribe`: the same transcript for the same clip
    max_batch_size: int = 8  # clips in one `transcribe` call
    max_wait_ms: float = 50.0  # how long the first request of a batch waits for others to join it
    queue_size: int = 64  # requests waiting for the model; more are turned away (503) until some are done

    def __post_init__(self) -> None:
        check_positive(self, "max_audio_seconds", "max_new_tokens", "max_batch_size", "queue_size")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        file_size_bytes(self.max_file_size, owner="ServeConfig")

    @property
    def max_file_bytes(self) -> int:
        return file_size_bytes(self.max_file_size)
