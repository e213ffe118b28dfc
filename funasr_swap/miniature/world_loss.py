"""The exact full-vocabulary loss of a tiny LLM whose vocabulary is mostly zero rows, and the adaptor's CTC loss.

A tiny LLM of the miniature keeps the real tokenizer and its full-size embedding, but only the rows of tokens its
world uses (the corpus' transcripts and the prompt) are non-zero; the others are exactly zero, so their logits are
exactly 0. The full-vocabulary cross-entropy is then computed exactly from the world rows alone (`WorldLoss`):
log-sum-exp over the world logits plus `n_zero` terms of exp(0). That is what makes the miniature train on 2 cores:
with the full 150k-wide softmax, the LM head took 0.5 s of every step of 32 utterances.

Why CTC in the swaps: with the adaptor alone, a swapped model learned about as slowly as the base from scratch
(validation CER 58% after 250 steps, 43% after 1,200), the frozen tiny LLM having to be taught to read the adaptor
again through its own loss only; `adaptor_ctc_loss` gives the adaptor a direct signal (40% after 600 steps), and LoRA
on the LLM meets it halfway (18% after 600 steps).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from funasr_swap.loss import CTC_SCALE, token_scores
from tokenmap.prompt import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration

__all__ = ["CTC_SCALE", "WorldLoss", "adaptor_ctc_loss", "world_cross_entropy"]


def world_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, n_zero: int, softcap: float | None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (the world rows) against `targets` (indices into them), over the
    full vocabulary whose other `n_zero` rows are zero: each of those adds exp(0) to the partition function."""
    logits = hidden @ weight.T  # (N, K)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)  # Gemma-2; tanh(0) = 0 keeps the zero rows at 0
    if n_zero:
        zero_rows = torch.full_like(logits[:, :1], math.log(n_zero))  # log(n_zero * exp(0))
        logits = torch.cat([logits, zero_rows], dim=1)
    return F.cross_entropy(logits, targets)


def adaptor_ctc_loss(
    audio: torch.Tensor, lengths: torch.Tensor, embeddings: torch.Tensor, targets: list[torch.Tensor]
) -> torch.Tensor:
    """CTC loss of the adaptor's output frames against each utterance's transcript tokens, a frame read as the LLM
    reads it: frame h scores token t by how much of t's embedding e_t it holds (`CTC_SCALE` h.e_t / |e_t|^2), the
    CTC blank scores `CTC_SCALE / 2`. It pulls the adaptor's frames onto the LLM's token embeddings, in order, which
    is what a copy-task LLM reads: a direct signal where the LLM's loss alone reaches the adaptor through a frozen
    LLM that ignores what it cannot read yet.

    audio: (N, H) the adaptor's outputs at the valid frames of all utterances, in order (FunAsrNano's
    `audio_hidden_states`); lengths: (B,) frames per utterance; embeddings: (K, H) the LLM's input embeddings of
    the world tokens; targets: B tensors of indices into them.
    """
    scores = token_scores(audio, embeddings)  # (N, K)
    logits = torch.cat([scores, torch.full_like(scores[:, :1], CTC_SCALE / 2)], dim=1)  # blank: the last class
    log_probs = torch.nn.utils.rnn.pad_sequence(list(logits.log_softmax(-1).split(lengths.tolist())))  # (T, B, K+1)
    target_lengths = torch.tensor([len(t) for t in targets])
    return F.ctc_loss(log_probs, torch.cat(targets), lengths, target_lengths, blank=len(embeddings), zero_infinity=True)


class WorldLoss:
    """`funasr_swap.training.supervised_loss` for a model whose LM head is zero outside its world rows, computed
    exactly over the world rows only (the module docstring says why), plus `ctc_weight` times `adaptor_ctc_loss`
    against the transcript (the answer without its end of turn).

    The rows are read from the LM head once; it must stay frozen (adaptor, encoder or LoRA training), since
    gradients of the zero rows are not computed.
    """

    def __init__(self, model: FunAsrNanoForConditionalGeneration, ctc_weight: float = 0.0):
        weight = model.lm_head.weight
        self.rows = (weight != 0).any(dim=1).nonzero()[:, 0]  # (K,)
        self.n_zero = weight.shape[0] - len(self.rows)
        if self.n_zero == 0:
            raise ValueError("WorldLoss: the LM head has no zero rows; use funasr_swap.training.supervised_loss")
        self.index = torch.full((weight.shape[0],), -1, dtype=torch.long)  # vocabulary id -> world row
        self.index[self.rows] = torch.arange(len(self.rows))
        self.softcap = getattr(model.config.text_config, "final_logit_softcapping", None)
        self.ctc_weight = ctc_weight

    def __call__(self, model: FunAsrNanoForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from funasr_swap.training.step import supervised_states

        weight = model.lm_head.weight
        if weight.requires_grad:
            raise ValueError("WorldLoss needs a frozen LM head (its zero rows get no gradient); train with LoRA")
        hidden, targets, audio = supervised_states(model, batch)
        world_targets = self.index.to(targets.device)[targets]
        if (world_targets < 0).any():
            unknown = targets[world_targets < 0].unique().tolist()[:10]
            raise ValueError(f"WorldLoss: target token ids {unknown} are outside the LLM's world (zero rows)")
        rows = self.rows.to(weight.device)
        loss = world_cross_entropy(hidden.float(), weight[rows].float(), world_targets, self.n_zero, self.softcap)
        if not self.ctc_weight:
            return loss
        answers = world_targets.split((batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist())
        transcripts = [answer[:-1] for answer in answers]  # the end of turn is not spoken
        embeddings = model.get_input_embeddings().weight[rows]
        frames = batch["input_features_mask"].sum(1)
        return loss + self.ctc_weight * adaptor_ctc_loss(audio, frames, embeddings, transcripts)
