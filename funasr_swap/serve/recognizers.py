"""What the server transcribes with: a PyTorch model folder (`funasr_swap.transcribe`, batched) or an export
(`funasr_swap.edge`, its clips decoded together), behind one `Recognizer` the batching worker calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from funasr_swap.asr_io import Transcript, load_sources

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

    from funasr_swap.ctc_branch import CtcBranch

__all__ = ["Recognizer", "edge_recognizer", "load_pytorch_recognizer", "pytorch_recognizer"]

# waveforms at the recognizer's rate, language (None: the model's choice), hotwords, timestamps (token times asked)
# -> one Transcript per waveform
Transcribe = Callable[[Sequence[np.ndarray], "str | None", Sequence[str], bool], list[Transcript]]


@dataclass(frozen=True)
class Recognizer:
    """A loaded model as the server uses it. `transcribe` runs in the server's one worker thread only."""

    name: str  # the model's id when the server's config names none: its folder's name
    sampling_rate: int
    min_samples: int  # one feature frame: shorter audio cannot be transcribed
    max_seconds: float  # what the encoder's positions cover
    transcribe: Transcribe
    close: Callable[[], None] = lambda: None
    # why `transcribe` cannot give token times (the model has no CTC branch); None: it can
    no_timestamps: str | None = None

    def waveform(self, data: bytes, max_audio_seconds: float) -> np.ndarray:
        """The audio file `data` as a mono waveform at the model's rate. ValueError for audio that cannot be read,
        is shorter than a frame, or is longer than `max_audio_seconds` (a SettingError naming it); the message
        starts with "audio #0: " (`load_sources` names inputs by position)."""
        return load_sources([data], self.sampling_rate, self.min_samples, max_audio_seconds, self.max_seconds)[0]


def pytorch_recognizer(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    name: str,
    max_new_tokens: int,
    max_audio_seconds: float,
    ctc_branch: CtcBranch | None = None,
    no_timestamps: str | None = "the model has no CTC branch",
) -> Recognizer:
    """A loaded model (`funasr_swap.convert.load_base`); each call is one `transcribe` of every waveform together,
    greedy, as `funasr-swap transcribe --batch-size N` runs them. `ctc_branch` (with its tokenizer, on the model's
    device): token times; without it, `no_timestamps` says why there are none."""
    from funasr_swap.features import frame_samples
    from funasr_swap.transcribe import max_encoder_seconds, transcribe

    def batch(
        waveforms: Sequence[np.ndarray], language: str | None, hotwords: Sequence[str], timestamps: bool
    ) -> list[Transcript]:
        return transcribe(
            model, processor, waveforms, language=language, hotwords=hotwords, batch_size=len(waveforms),
            max_new_tokens=max_new_tokens, max_audio_seconds=max_audio_seconds, progress=False,
            timestamps=timestamps, ctc_branch=ctc_branch,
        )  # fmt: skip

    fe = processor.feature_extractor
    return Recognizer(
        name, fe.sampling_rate, frame_samples(fe)[0], max_encoder_seconds(model, processor), batch,
        no_timestamps=None if ctc_branch is not None else no_timestamps,
    )  # fmt: skip


def load_pytorch_recognizer(folder: str | Path, max_new_tokens: int, max_audio_seconds: float) -> Recognizer:
    """`pytorch_recognizer` of a model folder, loaded onto the GPU when there is one, with the folder's CTC branch
    for token times when it has one (`funasr_swap.ctc_branch`)."""
    import torch

    from funasr_swap.convert import load_base
    from funasr_swap.ctc_branch import require_ctc_branch

    model, processor = load_base(folder, device="cuda" if torch.cuda.is_available() else None)
    try:
        branch, reason = require_ctc_branch(folder).to(model.device), None
    except FileNotFoundError as error:
        branch, reason = None, str(error)
    return pytorch_recognizer(model, processor, Path(folder).name, max_new_tokens, max_audio_seconds, branch, reason)


def edge_recognizer(folder: str | Path, max_new_tokens: int, max_audio_seconds: float) -> Recognizer:
    """An export (`funasr-swap export`), loaded once and closed with the server; each call decodes its waveforms
    together as llama.cpp sequences, greedy."""
    from funasr_swap.edge import EdgeModel
    from funasr_swap.edge import transcribe as edge_transcribe

    model = EdgeModel(folder)
    settings = model.config.features

    def batch(
        waveforms: Sequence[np.ndarray], language: str | None, hotwords: Sequence[str], timestamps: bool
    ) -> list[Transcript]:
        return edge_transcribe(
            model, waveforms, language, hotwords, max_new_tokens=max_new_tokens, max_audio_seconds=max_audio_seconds,
            progress=False, batch_size=len(waveforms), timestamps=timestamps,
        )  # fmt: skip

    return Recognizer(
        Path(folder).name, settings.sampling_rate, settings.frame_samples[0], model.config.max_audio_seconds, batch,
        model.close, no_timestamps=None if model.config.ctc else "the export has no CTC branch (ctc.onnx)",
    )  # fmt: skip
