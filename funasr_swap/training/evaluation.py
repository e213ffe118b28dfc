"""Evaluation during and after training: the loss, and CER/WER of greedy batched transcription."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

from funasr_swap.compat import fill_gaps
from funasr_swap.data import AsrCollator, Utterance
from funasr_swap.metrics import cer, wer
from funasr_swap.training.data_order import check_audio_lengths
from funasr_swap.training.step import LossFunction, supervised_loss
from funasr_swap.transcribe import max_encoder_seconds, transcribe
from tokenmap.prompt import IGNORE_INDEX

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one evaluation (`loss`, `cer`, `wer`, and `cer/<language>`, `wer/<language>` per language) and
    the hypotheses, in the order of the utterances."""

    metrics: dict[str, float]
    hypotheses: list[str]


def _scores(refs: list[str], hyps: list[str], languages: list[str | None]) -> dict[str, float]:
    metrics = {"cer": cer(refs, hyps), "wer": wer(refs, hyps, languages)}
    for language in sorted({lang for lang in languages if lang is not None}):
        pick = [i for i, lang in enumerate(languages) if lang == language]
        metrics[f"cer/{language}"] = cer([refs[i] for i in pick], [hyps[i] for i in pick])
        metrics[f"wer/{language}"] = wer([refs[i] for i in pick], [hyps[i] for i in pick], language)
    return metrics


@torch.no_grad()
def evaluate(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    utterances: Sequence[Utterance],
    *,
    batch_size: int = 16,
    loss_fn: LossFunction | None = supervised_loss,
) -> Evaluation:
    """CER and WER of greedy batched transcription (`funasr_swap.metrics`), and `loss_fn` averaged over the
    supervised tokens (None: no loss pass, which is a full-vocabulary LM head over every supervised token); leaves
    the model in eval mode.

    Each utterance is transcribed with the prompt it trains with (`Utterance.asr_task`: plain, or naming the
    language), so the loss and the error rates measure the same task.

    Answers are cut at twice the longest reference in tokens plus 8: an untrained model that never says its stop
    token then costs a little more than a correct one, not `transcribe`'s 512 tokens per utterance.

    Every utterance is scored, up to the length the encoder's positions cover (a longer one raises ValueError
    naming it, before any work); the manifest's `max_seconds` decides which clips come in.
    """
    if not utterances:
        raise ValueError("evaluate: no utterances")
    check_audio_lengths(model, processor, utterances)
    fill_gaps(model)
    model.eval()
    refs = [u.text for u in utterances]
    metrics = {}
    if loss_fn is not None:
        collate = AsrCollator(processor)
        total, count = 0.0, 0
        for start in range(0, len(utterances), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(utterances[start : start + batch_size]).items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += loss_fn(model, batch).item() * n
            count += n
        metrics["loss"] = total / count  # mean over the set's supervised tokens

    max_new_tokens = 2 * max(len(ids) for ids in processor.tokenizer(refs)["input_ids"]) + 8
    hyps = [""] * len(utterances)
    # the prompt each utterance was trained with: plain, or naming its language (Utterance.asr_task)
    for language in sorted({u.asr_task.language for u in utterances}, key=str):
        pick = [i for i, u in enumerate(utterances) if u.asr_task.language == language]
        transcripts = transcribe(
            model, processor, [utterances[i].audio for i in pick], language=language, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_audio_seconds=max_encoder_seconds(model, processor), progress=False,
        )  # fmt: skip
        for i, transcript in zip(pick, transcripts):
            hyps[i] = transcript.text
    metrics |= _scores(refs, hyps, [u.language for u in utterances])
    return Evaluation(metrics, hyps)
