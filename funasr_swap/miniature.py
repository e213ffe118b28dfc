"""The miniature world: the whole swap pipeline, end to end, on a model small enough for 2 CPU cores.

Real checkpoints are gigabytes; the miniature is built locally from real parts (`funasr-swap quickstart`):

    1. corpus   English sentences spoken by espeak-ng (`funasr_swap.synth`); test sentences are unseen in train
    2. LLMs     a tiny LLM per family (real class, real tokenizer, real vocabulary size), pretrained on a copy task
    3. base     tiny Fun-ASR-Nano: SAN-M encoder + adaptor + the pretrained tiny Qwen3, trained jointly (encoder,
                adaptor, LoRA on the LLM) with `funasr_swap.train`
    4. swaps    `swap_llm` into each target family's tiny LLM, `bridge` and `fresh`; the encoder frozen, the adaptor
                retrained with `funasr_swap.train`, LoRA adapters on the frozen LLM beside it, and a CTC loss
                pulling the adaptor's frames onto the new LLM's token embeddings (`adaptor_ctc_loss`); test CER and
                the steps to reach a CER (bridge vs fresh)
    5. report   REPORT.md (a table) and cer.png (validation CER against step, every run)

Why a copy task: a tiny LLM pretrained only on transcripts and then frozen ignores the audio (the adaptor cannot
move the loss off the LLM's unconditional entropy); one pretrained to repeat its user turn reads its context, as a
real LLM reads its prompt. The user turn is the family's ASR prompt with the transcript's tokens where the audio
goes, each token repeated 1-3 times (audio frames outnumber tokens about 4 to 1) and 10% replaced by a random one
(the LLM must clean up, with its knowledge of the corpus' language, what a weak adaptor gives it).

The world vocabulary: a tiny LLM keeps the real tokenizer and its full-size embedding, but only the rows of tokens
its world uses (the corpus' transcripts and the prompt) are non-zero; the others are exactly zero, so their logits
are exactly 0. The full-vocabulary cross-entropy is then computed exactly from the world rows alone
(`WorldLoss`): log-sum-exp over the world logits plus `n_zero` terms of exp(0). That is what makes the miniature
train on 2 cores: with the full 150k-wide softmax, the LM head took 0.5 s of every step of 32 utterances. The
pretraining runs on a compact copy of each LLM (world rows only), which is the same computation; the saved folder
is the full-size model.

Why LoRA and CTC in the swaps: with the adaptor alone, a swapped model learned about as slowly as the base from
scratch (validation CER 58% after 250 steps, 43% after 1,200), the frozen tiny LLM having to be taught to read the
adaptor again through its own loss only; the CTC loss gives the adaptor a direct signal (40% after 600 steps) and
LoRA lets the LLM meet it halfway (18% after 600 steps). DeepSeek-V2's attention reads keys and values through a
low-rank projection (MLA): with a rank of width / 8 and LoRA on its query and output projections only, its swaps
stalled at 20% test CER after 1,000 steps; at the real model's proportions (rank and head dimensions of width / 4)
and with LoRA on `kv_a_proj_with_mqa` and `kv_b_proj` too, they reach 10-12%.

Speed: the encoder is frozen in the swaps, so its outputs are computed once per clip and stand in for it in later
epochs (`TrainConfig.audio_cache="encoder"`); the base, which trains its encoder, keeps each clip's fbank features
("features"). Swap runs go two at a time, one thread each; the base takes both cores once the target LLMs are
pretrained.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tokenmap.io import atomic_folder, atomic_write_bytes, atomic_write_lines
from tokenmap.prompt import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import (
        FunAsrNanoForConditionalGeneration,
        FunAsrNanoProcessor,
        PreTrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

__all__ = [
    "BASE_LLM",
    "FAMILY_LLMS",
    "MiniatureConfig",
    "QUICK",
    "RunResult",
    "WorldLoss",
    "build_base",
    "pretrain_llm",
    "run_quickstart",
]

BASE_LLM = "Qwen3-0.6B"
# The target LLM of each family: the plan's paths (Llama-3.2, Gemma-2, DeepSeek-V2-Lite, an MoE with MLA).
FAMILY_LLMS = {"llama3": "Llama-3.2-1B", "gemma2": "Gemma-2-2B", "deepseek": "DeepSeek-V2-Lite"}
TARGET_CER = 0.15


@dataclass(frozen=True)
class MiniatureConfig:
    """Sizes, steps and rates of the miniature world (defaults: the quickstart, ~22 minutes on 2 cores)."""

    utterances: int = 4000  # English clips; 5% valid, 5% test
    valid_utterances: int = 100  # of the valid split, scored during training (test: the whole split, at the end)
    encoder_hidden: int = 96
    encoder_layers: int = 4  # the last one a timestamp layer, as the real 50 + 20
    encoder_heads: int = 4
    projector_hidden: int = 256
    target_width: int = 128  # the targets are twice the base LLM's width (64), as 2048 is to Qwen3-0.6B's 1024
    lm_steps: int = 800  # copy-task pretraining, per LLM (400: Llama-3.2 copies 96% of tokens, its bridge swap 20% CER)
    lm_batch_size: int = 64
    lm_lr: float = 6e-3
    base_steps: int = 2400
    base_lr: float = 2e-3
    base_eval_every: int = 400
    lora_rank: int = 16
    adaptor_ctc_weight: float = 1.0  # `adaptor_ctc_loss` beside the LLM's loss in the adaptor retraining
    adaptor_lora_rank: int = 16  # LoRA on the swapped LLM beside the adaptor; 0: the adaptor alone
    adaptor_steps: int = 1000
    adaptor_lr: float = 4e-3
    adaptor_eval_every: int = 250  # the validation curves give the steps to a CER (bridge vs fresh)
    adaptor_batch_size: int = 32
    batch_size: int = 32  # the base's
    warmup_steps: int = 50
    seed: int = 0


# `--quick`: the same pipeline on a handful of clips, for tests and a first look (CER is meaningless here).
QUICK = MiniatureConfig(
    utterances=60, valid_utterances=3, encoder_hidden=32, encoder_layers=2, encoder_heads=2, projector_hidden=32,
    target_width=64, lm_steps=4, lm_batch_size=8, base_steps=2, base_eval_every=1, adaptor_steps=2,
    adaptor_eval_every=1, adaptor_batch_size=8, batch_size=8, warmup_steps=1,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The world vocabulary and its exact loss


def _world_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, n_zero: int, softcap: float | None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (the world rows) against `targets` (indices into them), over the
    full vocabulary whose other `n_zero` rows are zero: each of those adds exp(0) to the partition function."""
    logits = hidden @ weight.T  # (N, K)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)  # Gemma-2; tanh(0) = 0 keeps the zero rows at 0
    zero_rows = torch.full_like(logits[:, :1], math.log(n_zero))  # log(n_zero * exp(0))
    return F.cross_entropy(torch.cat([logits, zero_rows], dim=1), targets)


CTC_SCALE = 20.0  # the CTC logit of token t at a frame whose adaptor output is e_t; the blank's is half


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
    scores = CTC_SCALE * (audio.float() @ embeddings.float().T) / embeddings.float().pow(2).sum(1)  # (N, K)
    logits = torch.cat([scores, torch.full_like(scores[:, :1], CTC_SCALE / 2)], dim=1)  # blank: the last class
    log_probs = torch.nn.utils.rnn.pad_sequence(list(logits.log_softmax(-1).split(lengths.tolist())))  # (T, B, K+1)
    target_lengths = torch.tensor([len(t) for t in targets])
    return F.ctc_loss(log_probs, torch.cat(targets), lengths, target_lengths, blank=len(embeddings), zero_infinity=True)


class WorldLoss:
    """`funasr_swap.train.supervised_loss` for a model whose LM head is zero outside its world rows, computed
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
            raise ValueError("WorldLoss: the LM head has no zero rows; use funasr_swap.train.supervised_loss")
        self.index = torch.full((weight.shape[0],), -1, dtype=torch.long)  # vocabulary id -> world row
        self.index[self.rows] = torch.arange(len(self.rows))
        self.softcap = getattr(model.config.text_config, "final_logit_softcapping", None)
        self.ctc_weight = ctc_weight

    def __call__(self, model: FunAsrNanoForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from funasr_swap.train import supervised_states

        weight = model.lm_head.weight
        if weight.requires_grad:
            raise ValueError("WorldLoss needs a frozen LM head (its zero rows get no gradient); train with LoRA")
        hidden, targets, audio = supervised_states(model, batch)
        world_targets = self.index.to(targets.device)[targets]
        if (world_targets < 0).any():
            unknown = targets[world_targets < 0].unique().tolist()[:10]
            raise ValueError(f"WorldLoss: target token ids {unknown} are outside the LLM's world (zero rows)")
        rows = self.rows.to(weight.device)
        loss = _world_cross_entropy(hidden.float(), weight[rows].float(), world_targets, self.n_zero, self.softcap)
        if not self.ctc_weight:
            return loss
        answers = world_targets.split((batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist())
        transcripts = [answer[:-1] for answer in answers]  # the end of turn is not spoken
        embeddings = model.get_input_embeddings().weight[rows]
        frames = batch["input_features_mask"].sum(1)
        return loss + self.ctc_weight * adaptor_ctc_loss(audio, frames, embeddings, transcripts)


# ----------------------------------------------------------------------------------------------------------------
# Tiny LLMs pretrained on the copy task


def tiny_llm_config(name: str, width: int) -> PreTrainedConfig:
    """`tiny_text_config(name)` at `width` (2 layers, 4 heads, MLP 2 x width); the base's is width 64."""
    from funasr_swap.llms import get_llm, tiny_text_config

    spec = get_llm(name)
    overrides: dict = {"hidden_size": width, "intermediate_size": 2 * width}
    if spec.uses_mla:  # DeepSeek-V2-Lite's proportions: KV rank and head dims of width / 4, RoPE half of them
        overrides.update(kv_lora_rank=width // 4, qk_nope_head_dim=width // 4, v_head_dim=width // 4)
        overrides["qk_rope_head_dim"] = width // 8
    else:
        overrides["head_dim"] = width // 4
        if "query_pre_attn_scalar" in spec.extra:  # Gemma-2 scales queries by its head_dim
            overrides["query_pre_attn_scalar"] = width // 4
    return tiny_text_config(name, **overrides)


@dataclass(frozen=True)
class _CopyPrompt:
    """The ASR prompt of one family cut around its audio slot: prefix + slot + suffix, then the answer."""

    prefix: list[int]
    suffix: list[int]

    def example(self, answer: list[int], rng: random.Random, vocabulary: int) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one copy example: the answer's text (its last token, the end of turn, left out)
        in the audio slot, each token 1-3 times (audio frames outnumber tokens) and 10% of them replaced by a
        random token (the LLM learns to correct its "audio" with what it knows), then the answer supervised."""
        slot = []
        for token in answer[:-1]:
            if rng.random() < 0.1:
                token = rng.randrange(vocabulary)
            slot += [token] * rng.randint(1, 3)
        context = self.prefix + slot + self.suffix
        return context + answer, [IGNORE_INDEX] * len(context) + answer


def _copy_data(
    tokenizer: PreTrainedTokenizerBase, family: str, texts: Sequence[str]
) -> tuple[_CopyPrompt, list[list[int]]]:
    """The family's ASR prompt around the audio slot, and each text's answer ids (text and end of turn) exactly as
    `build_asr_prompt` (so the collator) renders them: some templates put a space before the answer."""
    from tokenmap.families import get_family
    from tokenmap.markers import resolve_speech_markers
    from tokenmap.prompt import build_asr_prompt

    tokenizer = copy.deepcopy(tokenizer)  # `add` markers extend it
    strategy = "reuse" if get_family(family).unused_special else "add"
    markers = resolve_speech_markers(tokenizer, strategy, family=family)
    answers = []
    for text in texts:
        prompt = build_asr_prompt(tokenizer, 1, target=text, family=family, markers=markers)
        answers.append(prompt.input_ids[prompt.prompt_length :])
    slot = prompt.audio_start
    return _CopyPrompt(prompt.input_ids[:slot], prompt.input_ids[slot + 1 : prompt.prompt_length]), answers


def _pad(examples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.zeros(len(examples), length, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, target) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(target)
    return input_ids, attention_mask, labels


def _copy_loss(llm: PreTrainedModel, batch: tuple[torch.Tensor, ...], n_zero: int) -> torch.Tensor:
    input_ids, attention_mask, labels = batch
    hidden = llm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    softcap = getattr(llm.config, "final_logit_softcapping", None)
    weight = llm.get_output_embeddings().weight
    return _world_cross_entropy(hidden[:, :-1][supervised], weight, targets[supervised], n_zero, softcap)


def pretrain_llm(
    name: str,
    texts: Sequence[str],
    output: str | os.PathLike,
    *,
    width: int = 64,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    eval_texts: Sequence[str] = (),
) -> Path:
    """Pretrain a tiny LLM of registry entry `name` on the copy task over `texts`; save it (full vocabulary, zero
    rows outside the world of `texts` and the prompt, with its real tokenizer) as a Hugging Face folder `output`
    that `swap_llm` loads.

    `PRETRAIN.json` in the folder records the world size, the final loss and, with `eval_texts`, the copy accuracy
    on them (greedy next token, teacher-forced; `_copy_accuracy`).
    """
    from transformers import AutoModelForCausalLM

    from funasr_swap.llms import get_llm
    from tokenmap.assets import load_tokenizer

    began = time.perf_counter()
    spec = get_llm(name)
    tokenizer = load_tokenizer(spec.tokenizer)
    prompt, answers = _copy_data(tokenizer, spec.family, texts)
    world = sorted(set(prompt.prefix + prompt.suffix).union(*answers))
    position = {token: row for row, token in enumerate(world)}  # vocabulary id -> compact id

    def compact(ids: list[int]) -> list[int]:
        return [position[t] for t in ids]

    compact_prompt = _CopyPrompt(compact(prompt.prefix), compact(prompt.suffix))
    compact_answers = [compact(answer) for answer in answers]

    config = tiny_llm_config(name, width)
    n_zero = config.vocab_size - len(world)
    # the compact model: the same LLM with the world's rows only (special ids unset: they index the full vocabulary)
    compact_config = type(config).from_dict(
        {**config.to_dict(), "vocab_size": len(world), "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = AutoModelForCausalLM.from_config(compact_config)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    rng = random.Random(seed)
    llm.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = _pad([compact_prompt.example(rng.choice(compact_answers), rng, len(world)) for _ in range(batch_size)])
        loss = _copy_loss(llm, batch, n_zero)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    llm.eval()
    record = {"llm": name, "width": width, "world_tokens": len(world), "steps": steps, "final_loss": loss.item()}
    if eval_texts:
        _, eval_answers = _copy_data(tokenizer, spec.family, eval_texts)
        known = [compact(a) for a in eval_answers if all(t in position for t in a)]
        record["copy_accuracy"] = _copy_accuracy(llm, compact_prompt, known)

    # the full-size model: the compact weights, world rows scattered into zero embedding and head matrices
    full = AutoModelForCausalLM.from_config(config)
    rows = torch.tensor(world)
    trained = llm.state_dict()
    state = {}
    for key, tensor in full.state_dict().items():
        same = trained[key].shape == tensor.shape  # all but the embedding and the LM head: (vocab, width)
        state[key] = trained[key] if same else torch.zeros_like(tensor).index_copy_(0, rows, trained[key])
    full.load_state_dict(state)
    record["seconds"] = time.perf_counter() - began
    with atomic_folder(output) as tmp:
        full.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "PRETRAIN.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(output)


@torch.no_grad()
def _copy_accuracy(llm: PreTrainedModel, prompt: _CopyPrompt, answers: list[list[int]]) -> float:
    """Share of answer tokens predicted right (teacher-forced) when the slot holds the answer's text unstretched."""
    examples = []
    for answer in answers:
        context = prompt.prefix + answer[:-1] + prompt.suffix
        examples.append((context + answer, [IGNORE_INDEX] * len(context) + answer))
    input_ids, attention_mask, labels = _pad(examples)
    predicted = llm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].argmax(-1)
    supervised = labels[:, 1:] != IGNORE_INDEX
    return (predicted[supervised] == labels[:, 1:][supervised]).float().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# The base and the swaps


def build_base(
    llm_folder: str | os.PathLike, config: MiniatureConfig = MiniatureConfig()
) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor]:
    """The miniature base: `tiny_base` with `config`'s encoder sizes, its Qwen3 LLM replaced by the pretrained one
    in `llm_folder` (`pretrain_llm(BASE_LLM, ..., width=64)`: the shape `tiny_base` builds)."""
    from transformers import AutoModelForCausalLM

    from funasr_swap.base import tiny_base

    model, processor = tiny_base(
        seed=config.seed, hidden_size=config.encoder_hidden, num_layers=config.encoder_layers,
        num_attention_heads=config.encoder_heads, projector_hidden_size=config.projector_hidden,
    )  # fmt: skip
    llm = AutoModelForCausalLM.from_pretrained(llm_folder)
    model.model.language_model.load_state_dict(llm.base_model.state_dict())  # strict: the same tiny Qwen3 shape
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    return model, processor


@dataclass
class RunResult:
    """One training run of the quickstart and its test scores."""

    name: str  # "base", "llama3 bridge", ...
    llm: str
    strategy: str  # "joint" for the base, else the adaptor strategy
    trainable: int  # parameters trained
    steps: int
    seconds: float  # training wall time, validation included
    start_cer: float | None  # validation CER at step 0 (swaps: right after the swap); None for the base
    test_cer: float
    test_wer: float
    history: list[dict]  # the trainer's metrics.jsonl records

    def steps_to(self, cer: float) -> int | None:
        """The first validation step whose CER is at most `cer`, or None."""
        return next((r["step"] for r in self.history if r.get("valid/cer", math.inf) <= cer), None)


def _load_corpus(folder: Path, config: MiniatureConfig) -> dict[str, list]:
    """The corpus' utterances per split; "valid" is the subset scored during training (it runs often)."""
    from funasr_swap.data import load_manifest

    data = {split: load_manifest(folder / f"{split}.jsonl").utterances for split in ("train", "valid", "test")}
    data["valid"] = data["valid"][: config.valid_utterances]
    return data


def _cached_run(folder: Path) -> RunResult | None:
    """The result of a finished run in `folder` (its `result.json`), or None."""
    cached = folder / "result.json"
    return RunResult(**json.loads(cached.read_text())) if cached.is_file() else None


def _train_and_test(
    name: str,
    llm: str,
    strategy: str,
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    data: dict[str, list],
    train_config,
    start_cer: float | None,
    ctc_weight: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """`funasr_swap.train.train` with the world loss (`on_step` after each step), then the test CER; written as
    `result.json` in the run folder, which the callers read back (`_cached_run`) before building their model; an
    interrupted run resumes from its checkpoint."""
    from funasr_swap.train import evaluate, train

    trainable = []

    def count_trainable(step: int, loss: float) -> None:  # once the trainer has set what trains (LoRA included)
        if not trainable:
            trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if on_step is not None:
            on_step(step, loss)

    began = time.perf_counter()
    result = train(
        model, processor, data["train"], data["valid"], train_config, resume=True, loss_fn=WorldLoss(model, ctc_weight),
        on_step=count_trainable,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    test = evaluate(model, processor, data["test"], batch_size=train_config.eval_batch_size, loss_fn=None).metrics
    run = RunResult(
        name, llm, strategy, trainable[0] if trainable else 0, result.step, seconds, start_cer, test["cer"],
        test["wer"], result.history,
    )  # fmt: skip
    atomic_write_lines(train_config.output_dir / "result.json", [json.dumps(dataclasses.asdict(run))])
    return run


def _train_config(folder: Path, config: MiniatureConfig, **options):
    from funasr_swap.train import TrainConfig

    return TrainConfig(
        output_dir=folder, warmup_steps=config.warmup_steps, save_every=0, keep_last=1, seed=config.seed,
        eval_batch_size=50, **options,
    )  # fmt: skip


# every attention and MLP projection of the four families; DeepSeek's MLA reads keys and values through
# kv_a_proj_with_mqa and kv_b_proj (its routed experts are fused tensors, not Linear layers: no LoRA there)
LORA_TARGETS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "kv_a_proj_with_mqa", "kv_b_proj", "gate_proj", "up_proj", "down_proj",
)  # fmt: skip


def _lora(rank: int):
    """LoRA of `rank` on every attention and MLP projection of the LLM (alpha 2 x rank); None for rank 0."""
    from funasr_swap.train import LoraSettings

    return LoraSettings(r=rank, alpha=2 * rank, target_modules=LORA_TARGETS) if rank else None


def _train_base(
    folder: Path, llm_folder: Path, data: dict[str, list], config: MiniatureConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:  # fmt: skip
    """The base trained jointly: encoder, adaptor and LoRA on the LLM (the LM head stays frozen: `WorldLoss`)."""
    if (run := _cached_run(folder)) is not None:  # before building the model
        return run
    model, processor = build_base(llm_folder, config)
    train_config = _train_config(
        folder, config, max_steps=config.base_steps, batch_size=config.batch_size, lr=config.base_lr,
        eval_every=config.base_eval_every, unfreeze_encoder=True, lora=_lora(config.lora_rank), audio_cache="features",
    )  # fmt: skip
    return _train_and_test("base", BASE_LLM, "joint", model, processor, data, train_config, None, on_step=on_step)


def _train_swap(
    base_folder: Path, llm_folder: Path, family: str, strategy: str, folder: Path, corpus: Path,
    config: MiniatureConfig,
) -> RunResult:  # fmt: skip
    """Swap the trained base's LLM for `family`'s pretrained tiny LLM and retrain the adaptor (encoder and LLM
    frozen; `config` may add LoRA on the LLM and the CTC loss); a top-level function, so that it can run in a worker
    process."""
    from funasr_swap.convert import load_base
    from funasr_swap.llms import get_llm
    from funasr_swap.swap import swap_llm
    from funasr_swap.train import evaluate
    from tokenmap.families import get_family

    if (run := _cached_run(folder)) is not None:  # before the swap and its test score
        return run
    name = FAMILY_LLMS[family]
    data = _load_corpus(corpus, config)
    markers = "reuse" if get_family(get_llm(name).family).unused_special else "add"
    base, processor = load_base(base_folder)
    with warnings.catch_warnings():
        # the tiny LLMs are registry shapes scaled down: load_llm warns that no registry entry has their shape
        warnings.filterwarnings("ignore", message=r".*is not in the funasr_swap LLM registry.*")
        swapped = swap_llm(base, processor, llm_folder, strategy=strategy, markers=markers, seed=config.seed)
    start = evaluate(swapped.model, swapped.processor, data["valid"], batch_size=50, loss_fn=None).metrics["cer"]
    train_config = _train_config(
        folder, config, max_steps=config.adaptor_steps, batch_size=config.adaptor_batch_size, lr=config.adaptor_lr,
        eval_every=config.adaptor_eval_every, trainable_token_ids=tuple(swapped.report.added_token_ids),
        lora=_lora(config.adaptor_lora_rank), audio_cache="encoder",
    )  # fmt: skip
    run = _train_and_test(
        f"{family} {strategy}", name, strategy, swapped.model, swapped.processor, data, train_config, start,
        config.adaptor_ctc_weight,
    )  # fmt: skip
    atomic_write_lines(folder / "SWAP_REPORT.md", [swapped.report.to_markdown()])
    return run


def _in_worker(log_file: Path, threads: int, function: Callable, *args):
    """Run `function(*args)` in a worker process: `threads` torch threads, its output (progress bars included) in
    `log_file` rather than interleaved with the other workers'."""
    import contextlib

    torch.set_num_threads(threads)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        return function(*args)


# ----------------------------------------------------------------------------------------------------------------
# The quickstart


# What each stage depends on: its folder's name is a hash of these settings (and of the stages before it).
CORPUS_FIELDS = ("utterances", "seed")
LLM_FIELDS = (*CORPUS_FIELDS, "lm_steps", "lm_batch_size", "lm_lr", "target_width")
BASE_FIELDS = (
    *LLM_FIELDS, "valid_utterances", "encoder_hidden", "encoder_layers", "encoder_heads", "projector_hidden",
    "base_steps", "base_lr", "base_eval_every", "lora_rank", "batch_size", "warmup_steps",
)  # fmt: skip
SWAP_FIELDS = (
    *BASE_FIELDS,
    "adaptor_steps",
    "adaptor_lr",
    "adaptor_eval_every",
    "adaptor_lora_rank",
    "adaptor_ctc_weight",
    "adaptor_batch_size",
)


# Bumped when the code changes what a stage builds from the same settings (2: DeepSeek's MLA at width / 4, LoRA on
# its KV projections), so that an older cache is not read as this version's.
CACHE_VERSION = 2


def _key(config: MiniatureConfig, fields: Sequence[str], *extra: str) -> str:
    """A short hash naming a cached stage folder: it changes when a setting the stage depends on does."""
    settings = [getattr(config, name) for name in fields]
    return hashlib.sha1(json.dumps([CACHE_VERSION, settings, extra]).encode()).hexdigest()[:8]


def run_quickstart(
    output: str | os.PathLike = "runs/quickstart",
    families: Sequence[str] = tuple(FAMILY_LLMS),
    config: MiniatureConfig = MiniatureConfig(),
    *,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the miniature world in `output` and write `REPORT.md` and `cer.png` there; returns the report's path.

    Stages (module docstring) are cached in folders named by a hash of the settings they depend on, so a rerun
    reuses what was built (and an interrupted training resumes from its checkpoint). Independent work runs side by
    side in `jobs` worker processes of `cpu_count // jobs` torch threads each (on 2 small cores, two one-thread
    jobs beat one two-thread job): the target LLMs' pretraining beside the base's training (which takes all the
    threads once the pretraining is done), then the swap runs; each writes its progress to a `log.txt`.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from funasr_swap.synth import synthesize

    unknown = [f for f in families if f not in FAMILY_LLMS]
    if unknown:
        raise KeyError(f"unknown families {unknown}; choose from {', '.join(FAMILY_LLMS)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    output = Path(output)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    timings: dict[str, float] = {}  # stage -> seconds it took when it was built (this run or an earlier one)
    built_times_file = output / "build_seconds.json"
    built_times = json.loads(built_times_file.read_text()) if built_times_file.is_file() else {}

    def timed(stage: str, key: str, began: float, built: bool) -> None:
        if built or key not in built_times:
            built_times[key] = time.perf_counter() - began
            atomic_write_lines(built_times_file, [json.dumps(built_times, indent=2)])
        timings[stage] = built_times[key]
        log(f"[quickstart] {stage}: {timings[stage]:.0f} s" + ("" if built else " (when built)"))

    # 1. corpus (synthesize reuses clips; the manifests, written last, mark a complete corpus)
    began = time.perf_counter()
    corpus = output / f"corpus-{_key(config, CORPUS_FIELDS)}"
    corpus_cached = (corpus / "test.jsonl").is_file()
    if corpus_cached:
        log(f"[quickstart] corpus: cached in {corpus}")
    else:
        log(f"[quickstart] synthesizing {config.utterances} utterances into {corpus}")
        synthesize(corpus, config.utterances, ("en",), seed=config.seed, progress=False)
    data = _load_corpus(corpus, config)
    timed("corpus", corpus.name, began, built=not corpus_cached)

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # 2. tiny LLMs on the copy task over the train transcripts (valid and test sentences stay unseen)
        began = time.perf_counter()
        texts = [u.text for u in data["train"]]
        llm_root = output / f"llm-{_key(config, LLM_FIELDS)}"
        pretrainings = {}
        for name in [BASE_LLM] + [FAMILY_LLMS[f] for f in families]:
            folder = llm_root / name
            if folder.is_dir():  # written atomically: a folder is a finished pretraining
                log(f"[quickstart] pretrain {name}: cached in {folder}")
                continue
            job = functools.partial(
                pretrain_llm, name, texts, folder, width=64 if name == BASE_LLM else config.target_width,
                steps=config.lm_steps, batch_size=config.lm_batch_size, lr=config.lm_lr, seed=config.seed,
                eval_texts=[u.text for u in data["valid"]],
            )  # fmt: skip
            pretrainings[name] = pool.submit(_in_worker, llm_root / f"{name}.log.txt", threads, job)

        def pretrained(name: str) -> Path:
            if name in pretrainings:
                pretrainings.pop(name).result()
                record = json.loads((llm_root / name / "PRETRAIN.json").read_text())
                log(f"[quickstart] pretrained {name}: copy accuracy {record.get('copy_accuracy', 0):.1%}, "
                    f"{record['world_tokens']} world tokens, {record['seconds']:.0f} s")  # fmt: skip
            return llm_root / name

        # 3. the base, in this process, while the workers pretrain the target LLMs
        base_llm_built = BASE_LLM in pretrainings
        base_llm = pretrained(BASE_LLM)
        timed("base LLM pretraining", f"{llm_root.name}/{BASE_LLM}", began, built=base_llm_built)
        began = time.perf_counter()
        base_dir = output / f"base-{_key(config, BASE_FIELDS)}"
        base_cached = (base_dir / "result.json").is_file()
        log(f"[quickstart] base: training in {base_dir}" + (" (cached)" if base_cached else ""))
        main_threads = torch.get_num_threads()
        torch.set_num_threads(threads)  # the workers' share: they pretrain meanwhile

        def join_freed_cores(step: int, loss: float) -> None:  # 2 threads: a base step 1.46x faster than with 1
            if torch.get_num_threads() < main_threads and all(f.done() for f in pretrainings.values()):
                torch.set_num_threads(main_threads)

        try:
            runs = [_train_base(base_dir, base_llm, data, config, join_freed_cores)]
        finally:
            torch.set_num_threads(main_threads)
        log(f"[quickstart] base: test CER {runs[0].test_cer:.1%}")
        timed("base (target LLMs pretrained beside it)", base_dir.name, began, built=not base_cached)

        # 4. swaps, bridge and fresh, side by side
        began = time.perf_counter()
        swaps, swaps_cached = {}, True
        for family in families:
            llm_folder = pretrained(FAMILY_LLMS[family])
            for strategy in ("bridge", "fresh"):
                folder = output / f"swap-{_key(config, SWAP_FIELDS, family, strategy)}"
                cached = (folder / "result.json").is_file()
                swaps_cached &= cached
                log(
                    f"[quickstart] {family} {strategy}: adaptor retraining in {folder}"
                    + (" (cached)" if cached else "")
                )
                swaps[family, strategy] = pool.submit(
                    _in_worker, folder / "log.txt", threads, _train_swap, base_dir / "final", llm_folder, family,
                    strategy, folder, corpus, config,
                )  # fmt: skip
        for (family, strategy), future in swaps.items():
            runs.append(run := future.result())
            log(f"[quickstart] {family} {strategy}: valid CER {run.start_cer:.1%} at step 0, test {run.test_cer:.1%}")
        timed("swaps", f"swaps-{_key(config, SWAP_FIELDS, *families)}", began, built=not swaps_cached)

    report = _write_report(output, config, data, runs, timings)
    log(f"[quickstart] report: {report}")
    return report


def _write_report(
    output: Path, config: MiniatureConfig, data: dict[str, list], runs: list[RunResult], timings: dict[str, float]
) -> Path:
    """REPORT.md (corpus, one row per run, bridge vs fresh, stage times) and cer.png."""
    hours = sum(u.duration for u in data["train"]) / 3600
    lines = [
        "# The miniature world (funasr-swap quickstart)",
        "",
        f"Corpus: English, espeak-ng; {len(data['train'])} train utterances ({hours:.2f} h), {len(data['valid'])} "
        f"valid (CER during training), {len(data['test'])} test (sentences unseen in train). Target: test CER < "
        f"{TARGET_CER:.0%}.",
        "",
        "| model | LLM | trains | trainable params | steps | train s | valid CER at step 0 | test CER | test WER | "
        f"steps to valid CER < {TARGET_CER:.0%} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lora = " + LoRA" if config.adaptor_lora_rank else ""
        trains = "encoder + adaptor + LoRA" if run.strategy == "joint" else f"adaptor ({run.strategy}){lora}"
        start = "" if run.start_cer is None else f"{run.start_cer:.1%}"
        reached = run.steps_to(TARGET_CER - 1e-9)
        lines.append(
            f"| {run.name} | {run.llm} | {trains} | {run.trainable:,} | {run.steps} | {run.seconds:.0f} | {start} | "
            f"{run.test_cer:.1%} | {run.test_wer:.1%} | {reached if reached is not None else 'not reached'} |"
        )
    by_name = {run.name: run for run in runs}
    comparisons = []
    for family in dict.fromkeys(run.name.split()[0] for run in runs if run.strategy != "joint"):
        bridge, fresh = by_name[f"{family} bridge"], by_name[f"{family} fresh"]
        final = [r["valid/cer"] for r in fresh.history if "valid/cer" in r][-1]
        fresh_steps, bridge_steps = fresh.steps_to(final), bridge.steps_to(final)
        if bridge_steps is None:
            reached = f"reached by fresh at step {fresh_steps}, never by bridge: no speed-up"
        else:
            reached = f"reached at step {bridge_steps} (bridge) vs {fresh_steps} (fresh): speed-up "
            reached += f"{fresh_steps / bridge_steps:.2f}x"
        comparisons.append(
            f"- {family}: test CER {bridge.test_cer:.1%} (bridge) vs {fresh.test_cer:.1%} (fresh) after "
            f"{fresh.steps} steps; fresh's final validation CER {final:.1%} {reached}"
        )
    if comparisons:
        lines += ["", "Bridge vs fresh (same data, steps and seed):", "", *comparisons]
    lines += ["", "| stage | seconds to build |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]  # as built, cached or not
    lines += [f"| total | {sum(timings.values()):.0f} |", "", "![validation CER](cer.png)", ""]
    lines += ["Settings: `" + json.dumps(dataclasses.asdict(config)) + "`"]
    _plot_cer(runs, output / "cer.png")
    return atomic_write_lines(output / "REPORT.md", lines)


def _plot_cer(runs: list[RunResult], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    fig, (ax_base, ax_swap) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        points = [(r["step"], r["valid/cer"]) for r in run.history if "valid/cer" in r]
        if run.start_cer is not None:
            points.insert(0, (0, run.start_cer))
        ax = ax_base if run.strategy == "joint" else ax_swap
        style = "--" if run.strategy == "fresh" else "-"
        ax.plot(*zip(*points), style, marker="o", markersize=3, label=run.name)
    for ax, title in ((ax_base, "base (joint)"), (ax_swap, "swaps (adaptor retraining)")):
        ax.axhline(TARGET_CER, color="grey", linewidth=0.8)
        ax.set(xlabel="step", ylabel="validation CER", title=title, ylim=(0, None))
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
