"""One training step and what it needs: the supervised-position loss against the model's own, the optimised step against
the stock one, compiled layers, what trains."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from funasr_swap.base import tiny_base
from funasr_swap.training import LoraSettings, TrainConfig, added_token_ids
from funasr_swap.training.step import (
    attention_kernels,
    build_optimizer,
    setup_trainable,
    supervised_loss,
    train_mode,
)
from tests.conftest import tiny_swap
from tests.funasr_swap.training.conftest import _batch

COMPILED_WORKER = Path(__file__).with_name("compiled_worker.py")
MALLOC_DEBUG = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"  # glibc >= 2.34 (Debian 12)

# ------------------------------------------------------------------------------------------------------------------
# The loss


def test_supervised_loss_equals_the_models_own_loss(utterances):
    model, processor = tiny_base()
    batch = _batch(processor, utterances["train"][:4])
    assert (batch["labels"] != -100).sum() < batch["labels"].numel() / 2  # most positions are prompt and audio
    with torch.no_grad():
        expected = model(**batch).loss
        assert supervised_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_supervised_loss_keeps_gemma2_soft_capping(utterances):
    swapped = tiny_swap("Gemma-2-2B")
    model, processor = copy.deepcopy(swapped.model), swapped.processor  # the shared swap stays as it is
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # logits far beyond the cap (30), so soft-capping changes the loss
    batch = _batch(processor, utterances["train"][:2])
    with torch.no_grad():
        expected = model(**batch).loss.item()
        loss = supervised_loss(model, batch).item()
        hidden = model.model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        logits = torch.nn.functional.linear(hidden[:, :-1], model.lm_head.weight)  # lm_head without its hook
        uncapped = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten()).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert abs(loss - uncapped) > 1.0


def _steps(model, batches, loss) -> list[float]:
    """Adaptor-training steps of `model` over `batches`, as `train` takes them (AdamW with its parameter groups,
    clipping at 1.0), with `loss(model, batch)`: the losses."""
    config = TrainConfig(output_dir=Path("unused"), lr=1e-2)
    setup_trainable(model, config)
    train_mode(model)
    optimizer = build_optimizer(model, config)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    for batch in batches:
        value = loss(model, batch)
        value.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value.item())
    return losses


def test_optimised_step_gives_the_stock_steps_loss_curve(utterances):
    # float32 on CPU: the stock step (full logits, transformers' loss) and the trainer's (LM head at the supervised
    # positions, chunked cross-entropy, SDPA without cuDNN) over 6 steps of the same batches, from the same weights;
    # equal up to float32 summation order (rtol 1e-5; the GPU run's bf16 curves: benchmarks/results)
    data = utterances["train"]
    plain, processor = tiny_base()
    optimised, _ = tiny_base()
    batches = [_batch(processor, data[i : i + 3]) for i in (0, 3, 5, 0, 3, 5)]
    expected = _steps(plain, batches, lambda model, batch: model(**batch).loss)

    def trainer_loss(model, batch):
        with attention_kernels():
            return supervised_loss(model, batch)

    got = _steps(optimised, batches, trainer_loss)
    assert expected[-1] < expected[0]  # it trains
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients(corpus, tmp_path):
    # the GPU default (TrainConfig.compile) on CPU: torch.compile of every layer changes no value beyond rounding. In a
    # process of its own under glibc's heap checks, where it is available: torch 2.13's dynamic-shape CPU code for
    # these layers wrote outside its buffers (free(): invalid pointer), which aborted a whole test run
    out = tmp_path / "results.pt"
    env = dict(os.environ)
    if Path(MALLOC_DEBUG).is_file():
        env |= {"LD_PRELOAD": MALLOC_DEBUG, "GLIBC_TUNABLES": "glibc.malloc.check=3", "MALLOC_PERTURB_": "165"}
    command = [sys.executable, str(COMPILED_WORKER), "--train", str(corpus["train"]), "--out", str(out)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    results = torch.load(out)
    eager, compiled = results["eager"], results["compiled"]
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    for expected, got in zip(eager["grads"], compiled["grads"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# What trains


def _trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        ({}, {"model.multi_modal_projector"}),
        ({"unfreeze_encoder": True}, {"model.multi_modal_projector", "model.audio_tower"}),
        ({"train_llm": True}, {"model.multi_modal_projector", "model.language_model"}),  # lm_head is tied to it
    ],
)
def test_setup_trainable_freezes_everything_else(tmp_path, options, parts):
    model, _ = tiny_base()
    setup_trainable(model, TrainConfig(output_dir=tmp_path, **options))
    trainable = _trainable_names(model)
    assert {p for p in parts if any(n.startswith(p + ".") for n in trainable)} == parts
    assert all(any(n.startswith(p + ".") for p in parts) for n in trainable)


def test_lora_trains_only_adapters_and_adaptor(tmp_path):
    model, _ = tiny_base()
    setup_trainable(
        model, TrainConfig(output_dir=tmp_path, lora=LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    )
    trainable = _trainable_names(model)
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(".q_proj." in n or ".v_proj." in n for n in lora)
    assert trainable - lora == {n for n in trainable if n.startswith("model.multi_modal_projector.")}


@pytest.mark.parametrize("target", ["Llama-3.2-1B", "Gemma-2-2B", "DeepSeek-V2-Lite", "DeepSeek-V3"])
def test_lora_targets_default_to_every_projection_of_the_llm(tmp_path, target):
    model = copy.deepcopy(tiny_swap(target).model)  # LoRA wraps its layers: the shared swap stays as it is
    linear = {name for name, m in model.model.language_model.named_modules() if isinstance(m, torch.nn.Linear)}
    setup_trainable(model, TrainConfig(output_dir=tmp_path, lora=LoraSettings(r=4)))  # target_modules None
    adapted = {
        name.removeprefix("model.language_model.").split(".lora_")[0].removesuffix(".base_layer")
        for name in _trainable_names(model)
        if "lora_" in name
    }
    if not target.startswith("DeepSeek"):
        assert adapted == linear
        return
    # MLA: every attention projection, its key/value path included
    attention = {name for name in linear if ".self_attn." in name}
    assert {name for name in adapted if ".self_attn." in name} == attention
    assert {"layers.0.self_attn.kv_a_proj_with_mqa", "layers.0.self_attn.kv_b_proj"} <= attention
    # peft reads the MLP names of an MoE layer as its routed experts' fused weights (layer 1: the first MoE layer);
    # the dense layer's MLP and the shared experts stay without LoRA (funasr_swap.llms.LORA_TARGETS)
    assert adapted - attention == {"layers.1.mlp.experts"}


def test_added_token_ids_come_from_the_swap_report(tmp_path):
    result = tiny_swap("DeepSeek-V2-Lite")  # its family's default markers are added ones
    assert result.report.added_token_ids
    result.save(tmp_path / "swapped")
    assert added_token_ids(tmp_path / "swapped") == tuple(result.report.added_token_ids)
    assert added_token_ids(tmp_path) == ()  # no report: nothing added
