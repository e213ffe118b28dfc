"""The order training batches come in (`BatchPlan`), and the check that every clip fits the encoder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import soundfile as sf
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

from funasr_swap.data import Utterance, bucket_batches
from funasr_swap.errors import NAMED, SettingError
from funasr_swap.transcribe import max_encoder_seconds

__all__ = ["BatchPlan", "check_audio_lengths", "utterance_seconds"]


def utterance_seconds(utterance: Utterance) -> float:
    """The clip's duration: the manifest's, else read from the audio file's header."""
    return utterance.duration if utterance.duration is not None else sf.info(str(utterance.audio)).duration


def check_audio_lengths(
    model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor, utterances: Sequence[Utterance]
) -> None:
    """Refuse, before any work, an utterance longer than the encoder's positions cover: the model would fail on it
    mid-run. (`load_manifest(max_seconds=...)` drops such lines at load, as bad lines.)"""
    limit = max_encoder_seconds(model, processor)
    for utterance in utterances:
        seconds = utterance_seconds(utterance)
        if seconds > limit:
            positions = model.config.audio_config.max_position_embeddings
            raise SettingError(
                f"{utterance.audio}: {seconds:.1f} s of audio, longer than the {limit:.1f} s that the encoder's "
                f"{positions} positions cover; split it, or leave it out ({{max_seconds}} of load_manifest, at most "
                f"{limit:.1f})",
                max_seconds=NAMED,
            )  # fmt: skip


class BatchPlan:
    """The order training batches come in: epoch after epoch of length-bucketed batches (`bucket_batches`, seeded
    with `seed + epoch`). A position `(epoch, index)` names the next batch; it is all a checkpoint needs."""

    def __init__(self, durations: Sequence[float], batch_size: int, seed: int):
        self.durations = list(durations)
        self.batch_size = batch_size
        self.seed = seed
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs[epoch] = bucket_batches(self.durations, self.batch_size, seed=self.seed + epoch)
        return self._epochs[epoch]

    def advance(self, position: tuple[int, int], batches: int) -> tuple[int, int]:
        """The position `batches` batches after `position`."""
        epoch, index = position[0], position[1] + batches
        while index >= len(self.epoch(epoch)):
            index -= len(self.epoch(epoch))
            epoch += 1
        return epoch, index

    def stream(self, position: tuple[int, int], rank: int = 0, world: int = 1) -> Iterator[list[int]]:
        """The batches from `position` on, forever; of every `world` consecutive ones, the `rank`-th."""
        epoch, index = position
        count = 0
        while True:
            for batch in self.epoch(epoch)[index:]:
                if count % world == rank:
                    yield batch
                count += 1
            epoch, index = epoch + 1, 0
