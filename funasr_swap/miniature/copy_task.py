"""Tiny LLMs of the real classes and tokenizers, pretrained on a copy task so that they read their context.

Why a copy task: a tiny LLM pretrained only on transcripts and then frozen ignores the audio (the adaptor cannot
move the loss off the LLM's unconditional entropy); one pretrained to repeat its user turn reads its context, as a
real LLM reads its prompt. The user turn is the family's ASR prompt with the transcript's tokens where the audio
goes, each token repeated 1-3 times (audio frames outnumber tokens about 4 to 1) and 10% replaced by a random one
(the LLM must clean up, with its knowledge of the corpus' language, what a weak adaptor gives it).

The pretraining runs on a compact copy of each LLM (the world rows only: `world_loss` says why that is the same
computation); the saved folder is the full-size model with zero rows outside the world. Every example of a batch
starts with the same prompt prefix (chat header and instruction, about a third of its positions), so a step computes
that prefix once and the examples read its keys and values from a shared cache (`_copy_loss`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from funasr_swap.miniature.world_loss import world_cross_entropy
from tokenmap.io import atomic_folder
from tokenmap.prompt import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["pretrain_llm"]


@dataclass(frozen=True)
class _CopyPrompt:
    """The ASR prompt of one family cut around its audio slot: prefix + slot + suffix, then the answer."""

    prefix: list[int]
    suffix: list[int]

    def example(self, answer: list[int], rng: random.Random, vocabulary: int) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one copy example after the prefix (which every example shares): the answer's
        text (its last token, the end of turn, left out) in the audio slot, each token 1-3 times (audio frames
        outnumber tokens) and 10% of them replaced by a random token (the LLM learns to correct its "audio" with
        what it knows), then the answer supervised."""
        slot = []
        for token in answer[:-1]:
            if rng.random() < 0.1:
                token = rng.randrange(vocabulary)
            slot += [token] * rng.randint(1, 3)
        context = slot + self.suffix
        return context + answer, [IGNORE_INDEX] * len(context) + answer


def _copy_data(
    tokenizer: PreTrainedTokenizerBase, family: str, texts: Sequence[str]
) -> tuple[_CopyPrompt, list[list[int]]]:
    """The family's ASR prompt around the audio slot, and each text's answer ids (text and end of turn) exactly as
    `build_asr_prompt` (so the collator) renders them: some templates put a space before the answer."""
    from tokenmap.markers import resolve_speech_markers
    from tokenmap.prompt import AsrPromptBuilder

    tokenizer = copy.deepcopy(tokenizer)  # `add` markers extend it
    markers = resolve_speech_markers(tokenizer, family=family)  # the family's default strategy
    build = AsrPromptBuilder(tokenizer, family=family, markers=markers)  # the template rendered once, not per text
    answers = []
    for text in texts:
        prompt = build(1, target=text)
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


def _copy_loss(llm: PreTrainedModel, prefix: list[int], batch: tuple[torch.Tensor, ...], n_zero: int) -> torch.Tensor:
    """The copy loss of `batch` (the examples after `prefix`, right-padded): the prefix's keys and values computed
    once and repeated for every example, the same loss as the whole examples' up to float rounding. The prefix's
    last position predicts the slot, which is never supervised, so only the positions after it are scored."""
    input_ids, attention_mask, labels = batch
    cache = llm.base_model(input_ids=torch.tensor([prefix]), use_cache=True).cache
    cache.batch_repeat_interleave(len(input_ids))
    seen = torch.ones(len(input_ids), len(prefix), dtype=attention_mask.dtype)
    hidden = llm.base_model(
        input_ids=input_ids, attention_mask=torch.cat([seen, attention_mask], dim=1), cache=cache
    ).last_hidden_state
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    softcap = getattr(llm.config, "final_logit_softcapping", None)
    weight = llm.get_output_embeddings().weight
    return world_cross_entropy(hidden[:, :-1][supervised], weight, targets[supervised], n_zero, softcap)


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

    from funasr_swap.llms import get_llm, tiny_text_config
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

    config = tiny_text_config(name, width)
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
        loss = _copy_loss(llm, compact_prompt.prefix, batch, n_zero)
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
