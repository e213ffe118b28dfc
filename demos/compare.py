"""One clip through every selected model: transcripts with latency and real-time factor, and against a reference,
CER, the word differences and a ranking.

Transcription is the project's batched `funasr_swap.transcribe.transcribe` with its defaults (greedy, the plain ASR
prompt the models were trained and scored with), so a transcript here equals what `transcribe` returns for the file.
A model with an edge export also transcribes the clip with it (`funasr_swap.edge.transcribe`, the same settings):
its transcript, latency and real-time factor, and whether it equals PyTorch's.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from demos.models import DemoModel
from funasr_swap.metrics import cer, normalize, wer_units

__all__ = ["DIFF_LABELS", "EdgeResult", "ModelResult", "compare_models", "ranking", "word_diff"]

log = logging.getLogger(__name__)

# word_diff's labels: reference words the transcript lacks, transcript words in their place, and words it added
DIFF_LABELS = {"missing": "#f97316", "wrong": "#ef4444", "extra": "#a855f7"}


@dataclass(frozen=True)
class EdgeResult:
    """The transcript of the clip by a model's edge export, or the error it raised."""

    text: str | None = None
    latency: float | None = None  # seconds: features, generation and decoding of this clip
    rtf: float | None = None
    equal: bool | None = None  # whether it equals the model's PyTorch transcript
    error: str | None = None


@dataclass(frozen=True)
class ModelResult:
    """One model's transcript of the clip, or the error it raised."""

    name: str
    text: str | None = None
    latency: float | None = None  # seconds: features, generation and decoding of this clip
    rtf: float | None = None  # real-time factor: latency / audio duration (below 1: faster than real time)
    cer: float | None = None  # against the reference, when one is given
    diff: list[tuple[str, str | None]] = field(default_factory=list)  # word_diff, when a reference is given
    error: str | None = None
    edge: EdgeResult | None = None  # the model's edge export's, when it has one that loaded


def word_diff(reference: str, hypothesis: str) -> list[tuple[str, str | None]]:
    """(text, label) spans of the transcript against the reference, for `gr.HighlightedText`: words both share
    (label None), reference words it lacks ("missing"), its words in their place ("wrong") and words it added
    ("extra"). Words as the error rates see them: normalised (`funasr_swap.metrics.normalize`), a Han or kana
    character each (`wer_units`). Each span ends with a space, so that the spans read as text side by side."""
    ref, hyp = wer_units(reference, None), wer_units(hypothesis, None)
    spans: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            spans.append(("".join(w + " " for w in hyp[j1:j2]), None))
        if op in ("delete", "replace"):
            spans.append(("".join(w + " " for w in ref[i1:i2]), "missing"))
        if op == "replace":
            spans.append(("".join(w + " " for w in hyp[j1:j2]), "wrong"))
        if op == "insert":
            spans.append(("".join(w + " " for w in hyp[j1:j2]), "extra"))
    return spans


def compare_models(
    models: Sequence[DemoModel], waveform: np.ndarray, reference: str | None, max_new_tokens: int
) -> list[ModelResult]:
    """Transcribe the 16 kHz mono `waveform` with each loaded model, in order; with a `reference` (one that
    normalises to no text counts as none), score each transcript. A model that fails gets its error, and the
    others still run."""
    from funasr_swap.transcribe import transcribe

    reference = reference if reference and normalize(reference) else None
    results = []
    for model in models:
        try:
            [transcript] = transcribe(
                model.model, model.processor, [waveform], max_new_tokens=max_new_tokens, progress=False
            )
        except Exception as error:  # one failing model (too short a clip, out of memory) must not hide the others
            log.exception("%s failed", model.name)
            results.append(ModelResult(model.name, error=f"{type(error).__name__}: {error}"))
            continue
        latency = transcript.seconds
        scores = {}
        if reference is not None:
            scores = {"cer": cer([reference], [transcript.text]), "diff": word_diff(reference, transcript.text)}
        if model.edge is not None:
            scores["edge"] = _on_edge(model, waveform, max_new_tokens, transcript.text)
        results.append(ModelResult(model.name, transcript.text, latency, latency / transcript.audio_seconds, **scores))
    return results


def _on_edge(model: DemoModel, waveform: np.ndarray, max_new_tokens: int, pytorch_text: str) -> EdgeResult:
    """The clip through the model's edge export, compared with PyTorch's transcript."""
    from funasr_swap.edge import transcribe

    try:
        [transcript] = transcribe(model.edge, [waveform], max_new_tokens=max_new_tokens, progress=False)
    except Exception as error:  # as for the PyTorch side: the column says why, the others still show
        log.exception("%s's edge export failed", model.name)
        return EdgeResult(error=f"{type(error).__name__}: {error}")
    latency = transcript.seconds
    return EdgeResult(transcript.text, latency, latency / transcript.audio_seconds, transcript.text == pytorch_text)


def ranking(results: Sequence[ModelResult]) -> list[list]:
    """Rows `[rank, model, CER %, latency s, RTF]`, best first: by CER when scored, then by latency. Models that
    failed are not ranked: they come last, without a rank or numbers (their columns say why)."""

    def key(result: ModelResult) -> tuple:
        return (0 if result.cer is not None else 1, result.cer or 0.0, result.latency)

    ranked = sorted((r for r in results if r.error is None), key=key)
    rows = []
    for rank, result in enumerate(ranked, start=1):
        cer_percent = None if result.cer is None else round(100 * result.cer, 1)
        rows.append([rank, result.name, cer_percent, round(result.latency, 3), round(result.rtf, 3)])
    return rows + [[None, r.name, None, None, None] for r in results if r.error is not None]
