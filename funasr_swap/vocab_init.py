"""The `vocab` adaptor initialisation: the base's speech frames carried into the new LLM through the vocabulary.

Why: an embedding bridge (`adaptor.fit_embedding_bridge`) maps the base adaptor's output through a linear map fitted
on token pairs, but the base's frames are not token-like enough for that map to say how the new LLM should read
them (valid CER right after such a swap: 74-116%). Here the frames are read as tokens instead, and the tokens are
carried across by `tokenmap`'s exact vocabulary correspondence:

1. read: each base frame h is read against the base LLM's input embeddings exactly as the swaps' CTC loss reads it
   (`funasr_swap.loss.token_scores`: token t scores `CTC_SCALE h.e_t / |e_t|^2`, the CTC blank `CTC_SCALE / 2`),
   softmax: a distribution q(t | frame) over the base's readable tokens and the blank;
2. carry: every readable base token t has a carried embedding c_t in the new LLM's input space: the mean of the new
   LLM's input embeddings of the target tokens `VocabMap` maps t to (one for an exact match, several for a token
   the target spells in pieces), as the new LLM's embedding layer gives them (Gemma-2's scale sqrt(hidden)
   included: the frames are merged with its output, not with the rows). The blank is carried as the zero vector.
   A frame's target is the mixture sum_t q(t) c_t;
3. fit: the new adaptor (a `fresh` or `bridge` start) is fitted to those targets with a few hundred Adam steps on
   the mean squared error, the encoder's outputs of a few hundred training clips computed once.

Why the blank is zero: the new LLMs were pretrained to copy token embeddings, never shown a blank. In the Llama-3.2
swap of the seed-0 world, feeding the carried targets themselves to the new LLM (the fit's ceiling) gave a valid
CER of 31.7% with the blank as zero, 59.7% with the blank left out of the softmax (a blank frame then carried as
the tokens it holds most of), 40.1% with a blank frame repeating the last token; 12.3% is the base frames' own
greedy CTC reading.

Readable tokens: on the base side the non-zero rows of its input embedding (a real LLM: every row; the
miniature's: the tokens its world uses), text tokens only (a frame is speech, never a control token); a base token
is left out when the map gives it no target spelling, when it maps to a speech marker of the new LLM (Llama-3's
reserved tokens reused as the placeholder, DeepSeek-V2's added marker rows), or when one of its targets is a zero
row of the new LLM (the miniature's LLMs know nothing else). Its share of a frame goes to the others.

Typical use (what `swap_llm` does with `strategy="vocab"`):

    vocab_map = VocabMap.build(base_tokenizer, new_tokenizer)
    carried = carry_embeddings(vocab_map, base_ids, new_llm.get_input_embeddings(), excluded=marker_ids)
    targets = frame_targets(base_frames, base_embedding_rows[carried.source_ids], carried.embeddings)
    fit_adaptor(new_adaptor, encoder_outputs, mask, targets)

or all of it from clips: `carry_adaptor(base, base_processor, swapped, vocab_map, clips)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoMultiModalProjector

from funasr_swap.ctc_branch import CtcBranch
from funasr_swap.data import AsrCollator, Utterance
from funasr_swap.loss import CTC_SCALE, token_scores
from tokenmap.vocab_map import VocabMap

CARRIED_KINDS = ("exact", "normalised", "decomposed")  # tokenmap.vocab_map.KINDS of text with a target spelling
READ_CHUNK = 256  # frames read at a time: (chunk, K) scores, K up to a real vocabulary (150k-256k)
READ_CLIPS = 16  # clips the CTC branch reads at a time: (their frames, 60,515) posteriors

__all__ = [
    "CarriedEmbeddings", "FitReport", "VocabInitSettings", "carry_adaptor", "carry_embeddings", "encoder_outputs",
    "fit_adaptor", "frame_targets",
]  # fmt: skip


@dataclass(frozen=True)
class VocabInitSettings:
    """How the `vocab` initialisation reads, carries and fits (defaults: measured in the miniature,
    benchmarks/results/warm_start.md)."""

    clips: int = 512  # training clips whose encoder outputs the fit sees
    steps: int = 600  # Adam steps of the fit (Llama-3.2 swap of seed 0: 300 steps 55.6%, 600 steps 47.7% valid CER)
    batch_size: int = 64  # clips per step
    lr: float = 2e-3
    temperature: float = 1.0  # divides the CTC reading's logits (blank included) before the softmax
    # the adaptor the fit starts from, "fresh" or "bridge" (seed 0, Llama-3.2, 128 clips: 51.4% against 60.3%: the
    # bridge's frames are 4.7x the tokens' norm, a long way from the targets)
    start: str = "fresh"


@dataclass(frozen=True)
class CarriedEmbeddings:
    """Base tokens that a frame can be read as, and each one's embedding carried into the new LLM's input space."""

    source_ids: torch.Tensor  # (K,) base token ids
    embeddings: torch.Tensor  # (K, d_new) float32: mean of the new LLM's embeddings of the tokens each maps to
    pieces: torch.Tensor  # (K,) how many target tokens each maps to (1: an exact match)
    dropped: int  # base rows given that have no usable target

    def metrics(self) -> dict[str, float]:
        return {
            "carried_tokens": float(len(self.source_ids)),
            "carried_in_pieces": float((self.pieces > 1).sum()),
            "dropped_tokens": float(self.dropped),
        }


def carry_embeddings(
    vocab_map: VocabMap,
    source_ids: Sequence[int] | torch.Tensor,
    target_embedding: nn.Module,
    *,
    excluded: Sequence[int] = (),
) -> CarriedEmbeddings:
    """The carried embedding of each base token in `source_ids` that has a usable target (module docstring).

    Args:
        vocab_map: `VocabMap.build(base_tokenizer, new_tokenizer)`.
        source_ids: the base tokens a frame may be read as.
        target_embedding: the new LLM's input embedding module (`get_input_embeddings()`): its forward gives the
            vectors the LLM reads (Gemma-2's scale included).
        excluded: target ids no base token may land on (the new LLM's speech markers).
    """
    ids = torch.as_tensor(source_ids, dtype=torch.long).tolist()
    weight = target_embedding.weight
    zero_rows = set((weight.detach() == 0).all(dim=1).nonzero()[:, 0].tolist())
    excluded = set(excluded) | zero_rows
    kept, pieces, groups = [], [], []
    for src in ids:
        if not 0 <= src < len(vocab_map):
            continue
        match = vocab_map.lookup(src)
        if match.kind not in CARRIED_KINDS:  # a frame is speech: never a control token, nor bytes without a target
            continue
        if excluded.intersection(match.target_ids):
            continue
        kept.append(src)
        pieces.append(len(match.target_ids))
        groups.append(match.target_ids)
    if not kept:
        raise ValueError("no base token maps to a usable token of the new LLM: nothing to carry the frames through")
    flat = torch.tensor([t for group in groups for t in group], dtype=torch.long, device=weight.device)
    owner = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(pieces)).to(weight.device)
    with torch.no_grad():
        vectors = target_embedding(flat).float()
        summed = torch.zeros(len(kept), vectors.shape[1], device=weight.device).index_add_(0, owner, vectors)
    counts = torch.tensor(pieces)
    return CarriedEmbeddings(
        torch.tensor(kept), (summed / counts[:, None].to(summed)).cpu(), counts, len(ids) - len(kept)
    )


@torch.no_grad()
def frame_targets(
    frames: torch.Tensor, source_embeddings: torch.Tensor, carried: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Each base frame's target in the new LLM's input space: sum_t q(t | frame) carried[t], q the CTC reading of
    the frame (`token_scores` and the blank at `CTC_SCALE / 2`, divided by `temperature`, softmax), the blank carried
    as the zero vector.

    frames (N, d_old) the base adaptor's outputs; source_embeddings (K, d_old) the base LLM's input embeddings of
    the carried tokens (the rows its CTC loss reads); carried (K, d_new). Returns (N, d_new) float32.
    """
    carried = carried.float().to(frames.device)
    targets = []
    for chunk in frames.split(READ_CHUNK):
        scores = token_scores(chunk, source_embeddings)
        logits = torch.cat([scores, torch.full_like(scores[:, :1], CTC_SCALE / 2)], dim=1) / temperature
        targets.append(logits.softmax(-1)[:, :-1] @ carried)  # the blank's share adds nothing
    return torch.cat(targets)


@dataclass(frozen=True)
class FitReport:
    """How close the fitted adaptor lands on its targets (relative squared error: 1 = no better than zero)."""

    steps: int
    error_before: float
    error_after: float
    frames: int

    def metrics(self) -> dict[str, float]:
        return {
            "fit_steps": float(self.steps),
            "fit_error_before": self.error_before,
            "fit_error_after": self.error_after,
            "fit_frames": float(self.frames),
        }


def fit_adaptor(
    adaptor: FunAsrNanoMultiModalProjector,
    encoder_outputs: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 64,
) -> FitReport:
    """Fit `adaptor` in place so that adaptor(encoder_outputs) lands on `targets` at the valid frames.

    encoder_outputs (B, T, audio hidden), mask (B, T) (1 = valid), targets (valid frames, d_new) in the order of
    `adaptor(...)[mask.bool()]`. Adam with a cosine decay on the mean squared error, `batch_size` clips drawn at
    random per step (torch's default generator: seed it); every parameter of the adaptor trains (its requires_grad
    is switched on). The adaptor comes back in the training mode it had.
    """
    valid = mask.bool()
    param = next(adaptor.parameters())
    encoder_outputs, mask = encoder_outputs.to(param.device, param.dtype), mask.to(param.device)
    per_clip = list(targets.to(param.device, torch.float32).split(valid.sum(1).tolist()))
    scale = targets.float().pow(2).sum(-1).mean()  # relative error: 1 for an adaptor that outputs zeros
    training = adaptor.training
    adaptor.eval()  # no dropout: the frames are the ones the swapped model will compute
    adaptor.requires_grad_(True)

    def error(rows: torch.Tensor) -> torch.Tensor:
        frames = adaptor(encoder_outputs[rows], mask[rows])[valid[rows]].float()
        return (frames - torch.cat([per_clip[i] for i in rows.tolist()])).pow(2).sum(-1).mean() / scale

    everything = torch.arange(len(per_clip))
    with torch.no_grad():
        before = error(everything).item()
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    with torch.enable_grad():
        for _ in range(steps):
            loss = error(torch.randperm(len(per_clip))[:batch_size].sort().values)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        after = error(everything).item()
    adaptor.train(training)
    return FitReport(steps, before, after, int(valid.sum()))


@torch.no_grad()
def encoder_outputs(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    clips: Sequence[Utterance],
    *,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio tower's outputs of `clips`, computed once: (B, T, audio hidden) right-padded with zeros, and the
    mask (B, T), 1 at valid frames. The tower runs in eval mode (no dropout)."""
    tower = model.model.audio_tower
    training = tower.training
    tower.eval()
    collate = AsrCollator(processor)
    param = next(tower.parameters())
    rows = []
    for start in range(0, len(clips), batch_size):
        batch = collate(list(clips[start : start + batch_size]))
        mask = batch["input_features_mask"]
        out = tower(
            input_features=batch["input_features"].to(param.device, param.dtype),
            input_features_mask=mask.to(param.device),
        ).last_hidden_state.cpu()
        rows += [row[:n] for row, n in zip(out, mask.sum(-1).tolist())]
    tower.train(training)
    lengths = torch.tensor([len(row) for row in rows])
    mask = (torch.arange(int(lengths.max())) < lengths[:, None]).to(torch.int32)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), mask


def carry_adaptor(
    base: FunAsrNanoForConditionalGeneration,
    base_processor: FunAsrNanoProcessor,
    swapped: FunAsrNanoForConditionalGeneration,
    vocab_map: VocabMap,
    clips: Sequence[Utterance],
    *,
    excluded: Sequence[int] = (),
    settings: VocabInitSettings = VocabInitSettings(),
    seed: int = 0,
    ctc_branch: CtcBranch | None = None,
) -> dict[str, float]:
    """Fit the adaptor of `swapped` (the base with its LLM swapped) in place so that its frames land on the base's
    frames read as tokens and carried into the new LLM (the module docstring says how); returns the carry's and
    the fit's numbers for the swap report.

    The frames are read by the base's adaptor against its LLM's non-zero input-embedding rows (a real LLM: every
    row; the miniature's: the tokens its world uses), as the adaptor CTC loss reads them, or, with `ctc_branch`,
    by the original's CTC branch (`funasr_swap.ctc_branch`: its posteriors over its own vocabulary, the blank and
    tokens without a usable target carried as zero). `vocab_map` maps the vocabulary they are read in (the base
    LLM's, or the CTC branch's) to the swapped model's. `excluded`: the new LLM's speech marker ids; `seed` seeds
    the fit.
    """
    if not clips:
        raise ValueError("the vocab initialisation needs clips (a handful of training utterances) to read frames from")
    features, mask = encoder_outputs(base, base_processor, list(clips)[: settings.clips])
    target_embedding = swapped.get_input_embeddings()
    if ctc_branch is None:
        base_adaptor = base.model.multi_modal_projector
        training = base_adaptor.training
        base_adaptor.eval()
        param = next(base_adaptor.parameters())
        with torch.no_grad():
            frames = base_adaptor(features.to(param.device, param.dtype), mask.to(param.device))[mask.bool()]
        base_adaptor.train(training)
        base_rows = base.get_input_embeddings().weight.detach()
        source_ids = (base_rows != 0).any(dim=1).nonzero()[:, 0]
        carried = carry_embeddings(vocab_map, source_ids, target_embedding, excluded=excluded)
        targets = frame_targets(
            frames, base_rows[carried.source_ids.to(base_rows.device)], carried.embeddings,
            temperature=settings.temperature,
        )  # fmt: skip
    else:
        carried = carry_embeddings(vocab_map, range(ctc_branch.blank_id), target_embedding, excluded=excluded)
        targets = torch.cat([
            ctc_branch.posteriors(features[rows], mask[rows])[:, carried.source_ids] @ carried.embeddings
            for rows in torch.arange(len(features)).split(READ_CLIPS)
        ])  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fit = fit_adaptor(
            swapped.model.multi_modal_projector, features, mask, targets, steps=settings.steps, lr=settings.lr,
            batch_size=settings.batch_size,
        )  # fmt: skip
    return {**carried.metrics(), **fit.metrics(), "read_by_ctc_branch": float(ctc_branch is not None)}
