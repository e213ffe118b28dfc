"""The trainer on the tiny base: the supervised-position loss, what trains, a short run's outputs, exact resume after
SIGKILL, DDP with 2 processes against 1, LoRA merge, and the train/eval commands."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file
from typer.testing import CliRunner

from funasr_swap.base import tiny_base
from funasr_swap.cli import app
from funasr_swap.convert import load_base
from funasr_swap.data import AsrCollator, Utterance, load_manifest
from funasr_swap.swap import swap_llm
from funasr_swap.train import (
    CHECKPOINT_PREFIX,
    BatchPlan,
    LoraSettings,
    TrainConfig,
    _check_fsdp_config,
    _optimizer,
    _train_mode,
    added_token_ids,
    attention_kernels,
    evaluate,
    latest_checkpoint,
    setup_trainable,
    supervised_loss,
    train,
)
from tests.funasr_swap.ddp_worker import run as run_worker

WORKER = Path(__file__).with_name("ddp_worker.py")
COMPILED_WORKER = Path(__file__).with_name("compiled_worker.py")
MALLOC_DEBUG = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"  # glibc >= 2.34 (Debian 12)
CONFIGS = Path(__file__).parents[2] / "configs"
WORDS = ["one", "two", "three", "four", "five", "six"]
RATE = 16000


def _tones(words: list[str]) -> np.ndarray:
    """0.3 s of a word-specific tone per word: audio the adaptor can learn to read."""
    freqs = np.repeat([200.0 + 100 * WORDS.index(w) for w in words], int(0.3 * RATE))
    t = np.arange(len(freqs)) / RATE
    return (0.3 * np.sin(2 * np.pi * freqs * t)).astype(np.float32)


def _write_corpus(folder: Path, name: str, n: int, seed: int) -> Path:
    """`n` utterances of 1-3 words as wav files and a JSONL manifest (no durations: the loader reads them)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=int(rng.integers(1, 4)))]
        path = folder / f"{name}-{i}.wav"
        sf.write(path, _tones(words), RATE)
        lines.append(json.dumps({"audio": path.name, "text": " ".join(words), "language": "en"}))
    manifest = folder / f"{name}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    return {"train": _write_corpus(folder, "train", 8, seed=0), "valid": _write_corpus(folder, "valid", 3, seed=1)}


@pytest.fixture(scope="module")
def utterances(corpus) -> dict[str, list[Utterance]]:
    return {split: load_manifest(path).utterances for split, path in corpus.items()}


def _batch(processor, utterances: list[Utterance]) -> dict[str, torch.Tensor]:
    return AsrCollator(processor)(utterances)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _train_losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _log(folder) if "loss" in r}


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
    base, base_processor = tiny_base()
    swapped = swap_llm(base, base_processor, "Gemma-2-2B", random_weights="tiny")
    model, processor = swapped.model, swapped.processor
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
    _train_mode(model)
    optimizer = _optimizer(model, config)
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
    base, processor = tiny_base()
    model = swap_llm(base, processor, target, random_weights="tiny").model
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


def test_lora_and_train_llm_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match=r"TrainConfig.lora and TrainConfig.train_llm=True both train the LLM"):
        TrainConfig(output_dir=tmp_path, lora=LoraSettings(), train_llm=True)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)], ids=["adaptor", "lora"])
def test_marker_rows_train_and_other_rows_stay(tmp_path, utterances, lora):
    model, processor = tiny_base()
    marker = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")  # a prompt token: its row gets gradients
    before = model.get_input_embeddings().weight.detach().clone()
    encoder = {k: v.clone() for k, v in model.model.audio_tower.state_dict().items()}
    config = TrainConfig(
        output_dir=tmp_path, max_steps=2, batch_size=4, lr=1e-2, warmup_steps=0, weight_decay=0.1, eval_every=0,
        save_every=0, trainable_token_ids=(marker,), lora=lora,
    )  # fmt: skip
    unmeasured = [dataclasses.replace(u, duration=None) for u in utterances["train"]]  # read from the files
    train(model, processor, unmeasured, None, config)
    after = model.get_input_embeddings().weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [marker]  # weight decay did not shrink the frozen rows either
    assert all(torch.equal(v, model.model.audio_tower.state_dict()[k]) for k, v in encoder.items())
    # the checkpoint holds the marker row (TrainableTokenRows' delta, not the whole embedding) and the adaptor
    weights = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    rows = {k: v for k, v in weights.items() if k.startswith("model.language_model.") and "lora_" not in k}
    assert [tuple(v.shape) for v in rows.values()] == [(1, after.shape[1])]
    assert {k.split(".")[1] for k in weights} == {"language_model", "multi_modal_projector"}
    # the final model is a stock one: rows merged into a plain embedding
    assert type(model.get_input_embeddings()) is torch.nn.Embedding


def test_added_token_ids_come_from_the_swap_report(tmp_path):
    model, processor = tiny_base()
    result = swap_llm(model, processor, "Qwen3-1.7B", markers="add", boundaries=True, random_weights="tiny")
    assert result.report.added_token_ids
    result.save(tmp_path / "swapped")
    assert added_token_ids(tmp_path / "swapped") == tuple(result.report.added_token_ids)
    assert added_token_ids(tmp_path) == ()  # no report: nothing added


def test_lora_run_checkpoints_adapters_and_saves_a_merged_stock_folder(tmp_path, utterances):
    model, processor = tiny_base()
    q_proj = model.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    batch = _batch(processor, utterances["valid"])
    trained = {}

    def capture(step: int, loss: float) -> None:  # the LoRA model's output after the last step, before the merge
        if step == 3:
            with torch.no_grad():
                trained["logits"] = model.eval()(**batch).logits

    config = TrainConfig(
        output_dir=tmp_path, max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=0, save_every=0,
        lora=LoraSettings(r=4, alpha=8),
    )  # fmt: skip
    train(model, processor, utterances["train"], None, config, on_step=capture)
    weights = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    assert any("lora_A" in k for k in weights) and any("lora_B" in k for k in weights)
    assert all("lora_" in k or k.startswith("model.multi_modal_projector.") for k in weights)

    final = load_file(tmp_path / "final" / "model.safetensors")
    assert not any("lora" in k for k in final)  # merged: a stock FunAsrNano folder
    merged_q = final["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(merged_q, q_proj)  # the adapters moved the merged weight
    loaded, _ = load_base(tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, trained["logits"], rtol=1e-4, atol=1e-4)


def test_training_a_swaps_encoder_leaves_its_base_unchanged(tmp_path, utterances):
    base, processor = tiny_base()
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    swapped = swap_llm(base, processor, "Llama-3.2-1B", random_weights="tiny")
    tower = {name: tensor.clone() for name, tensor in swapped.model.model.audio_tower.state_dict().items()}
    config = TrainConfig(
        output_dir=tmp_path, max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=0, save_every=0,
        unfreeze_encoder=True,
    )  # fmt: skip
    train(swapped.model, swapped.processor, utterances["train"], None, config)
    trained = swapped.model.model.audio_tower.state_dict()
    assert any(not torch.equal(trained[name], tensor) for name, tensor in tower.items())  # the swap's encoder trained
    after = base.state_dict()
    for name, tensor in before.items():  # byte for byte
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_audio_longer_than_the_encoder_covers_is_refused_before_any_work(tmp_path, utterances):
    model, processor = tiny_base()  # 2048 encoder positions: 122.9 s
    first = utterances["train"][0]
    too_long = dataclasses.replace(first, duration=130.0)  # a manifest's duration is trusted
    config = TrainConfig(output_dir=tmp_path / "run", max_steps=1, eval_every=0, save_every=0)
    expected = rf"{first.audio}: 130.0 s of audio, longer than the 122.9 s .*max_seconds of load_manifest"
    for train_data, valid_data in (([*utterances["train"], too_long], None), (utterances["train"], [too_long])):
        with pytest.raises(ValueError, match=expected):
            train(model, processor, train_data, valid_data, config)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="130.0 s of audio"):
        evaluate(model, processor, [too_long])


def test_evaluate_scores_audio_up_to_what_the_encoder_covers(tmp_path):
    # 62 s: past transcribe's default maximum (60 s, for audio a user hands it), within the encoder's 122.9 s
    path = tmp_path / "long.wav"
    sf.write(path, _tones(["one", "two"] * 103), RATE)
    model, processor = tiny_base()
    evaluation = evaluate(model, processor, [Utterance(path, "one two", "en", 61.8)], loss_fn=None)
    assert len(evaluation.hypotheses) == 1 and "cer" in evaluation.metrics


# ------------------------------------------------------------------------------------------------------------------
# Data order


def test_batch_plan_positions_and_rank_streams_agree():
    plan = BatchPlan([1.0, 2.0, 3.0, 1.5, 2.5, 0.5, 0.7], batch_size=2, seed=3)
    n = len(plan.epoch(0))
    assert n == 4 and plan.epoch(0) != plan.epoch(1)  # new order each epoch
    flat = plan.epoch(0) + plan.epoch(1) + plan.epoch(2)
    stream = plan.stream((0, 0))
    assert [next(stream) for _ in range(3 * n)] == flat
    assert plan.advance((0, 1), 5) == (1, 2)
    rank0, rank1 = plan.stream((0, 3), 0, 2), plan.stream((0, 3), 1, 2)
    assert [next(rank0) for _ in range(3)] == flat[3:9:2]
    assert [next(rank1) for _ in range(3)] == flat[4:10:2]


# ------------------------------------------------------------------------------------------------------------------
# A short run: logs, evaluation, checkpoints, plot, final folder


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, utterances):
    out = tmp_path_factory.mktemp("run")
    model, processor = tiny_base()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(
        output_dir=out, max_steps=4, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=2, save_every=2,
        keep_last=1, log_samples=2,
    )  # fmt: skip
    result = train(model, processor, utterances["train"], utterances["valid"], config)
    return {"out": out, "model": model, "processor": processor, "initial": initial, "result": result, "config": config}


def test_run_logs_steps_and_evaluations(short_run, utterances):
    log = _log(short_run["out"])
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    evaluations = [r for r in log if "valid/cer" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    for record in evaluations:
        assert {"valid/loss", "valid/cer", "valid/wer", "valid/cer/en", "valid/wer/en"} <= record.keys()
        assert [s["ref"] for s in record["samples"]] == [u.text for u in utterances["valid"][:2]]
    # one warmup step from 0, then cosine decay over the remaining 3: factors 1, cos^2(pi/6), cos^2(pi/3)
    assert [r["lr"] for r in log if "lr" in r] == pytest.approx([0.0, 1e-2, 7.5e-3, 2.5e-3])
    assert short_run["result"].history == log
    assert (short_run["out"] / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluations_leave_training_unchanged(short_run, utterances, tmp_path):
    # the same run without a validation set: frozen parts stay in eval mode (no encoder dropout) after evaluating.
    # The same steps through the same kernels on this machine: equal bit for bit, so any leak of evaluation into
    # training (a mode, an RNG draw) shows, however small.
    config = dataclasses.replace(short_run["config"], output_dir=tmp_path)
    model, processor = tiny_base()
    train(model, processor, utterances["train"], None, config)
    assert _train_losses(tmp_path) == _train_losses(short_run["out"])


@pytest.mark.parametrize("cache", ["features", "encoder"])
def test_audio_caches_leave_the_run_unchanged(short_run, utterances, tmp_path, cache):
    # 4 steps over 2 batches an epoch: epoch 2 comes from the cache (the encoder's outputs standing in for it)
    config = dataclasses.replace(short_run["config"], output_dir=tmp_path, audio_cache=cache)
    model, processor = tiny_base()
    tower = model.model.audio_tower
    train(model, processor, utterances["train"], utterances["valid"], config)
    assert _train_losses(tmp_path) == pytest.approx(_train_losses(short_run["out"]), abs=1e-5)
    evaluations = {r["step"]: r["valid/loss"] for r in _log(tmp_path) if "valid/loss" in r}
    expected = {r["step"]: r["valid/loss"] for r in _log(short_run["out"]) if "valid/loss" in r}
    assert evaluations == pytest.approx(expected, abs=1e-5)  # evaluation ran the real encoder on the audio
    assert model.model.audio_tower is tower


def test_audio_cache_settings_are_checked(tmp_path):
    """Named as a Python caller spells them (the CLI names its flags: tests/funasr_swap/test_cli_bad_inputs.py)."""
    cases = [
        ({"audio_cache": "fbank"}, "TrainConfig.audio_cache='fbank': choose one of none, features, encoder"),
        ({"audio_cache": "encoder", "unfreeze_encoder": True}, "needs the encoder frozen, not TrainConfig.unfreeze_"),
        ({"audio_cache": "features", "num_workers": 2}, "needs 0 DataLoader workers (each would keep its own cache), "
         "not TrainConfig.num_workers=2"),
        ({"audio_cache": "encoder", "dither": 1.0}, "it needs no audio cache, not TrainConfig.audio_cache='encoder'"),
        ({"dither": -1.0}, "TrainConfig.dither=-1 must be >= 0"),
    ]  # fmt: skip
    for settings, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(output_dir=tmp_path, **settings)


def test_run_trains_only_the_adaptor(short_run):
    model, initial = short_run["model"], short_run["initial"]
    for name, value in model.state_dict().items():
        same = torch.equal(value, initial[name])
        assert same != name.startswith("model.multi_modal_projector."), name


def test_run_keeps_the_last_checkpoint_with_its_state(short_run):
    out = short_run["out"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # keep_last=1
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    # 4 steps of 1 batch of 4 from 8 utterances: 2 batches an epoch
    assert (state["step"], state["epoch"], state["batch_index"]) == (4, 2, 0)
    weights = load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(k.startswith("model.multi_modal_projector.") for k in weights)
    trained = short_run["model"].state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in weights.items())


def test_final_folder_loads_with_load_base(short_run, utterances):
    model = short_run["model"]
    loaded, loaded_processor = load_base(short_run["out"] / "final")
    batch = _batch(loaded_processor, utterances["valid"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_evaluate_scores_transcripts(short_run, utterances):
    model, processor = short_run["model"], short_run["processor"]
    evaluation = evaluate(model, processor, utterances["valid"], batch_size=2)
    last = [r for r in _log(short_run["out"]) if "valid/cer" in r][-1]
    assert evaluation.metrics["cer"] == pytest.approx(last["valid/cer"])
    assert evaluation.metrics["loss"] == pytest.approx(last["valid/loss"], rel=1e-5)
    assert len(evaluation.hypotheses) == len(utterances["valid"])
    # another loss function, or none: the transcripts and scores stay
    doubled = evaluate(
        model, processor, utterances["valid"], batch_size=2, loss_fn=lambda m, b: 2 * supervised_loss(m, b)
    )
    assert doubled.metrics["loss"] == pytest.approx(2 * evaluation.metrics["loss"], rel=1e-5)
    unscored = evaluate(model, processor, utterances["valid"], batch_size=2, loss_fn=None)
    assert "loss" not in unscored.metrics and unscored.hypotheses == evaluation.hypotheses


def test_fresh_start_refuses_a_folder_with_checkpoints(short_run, utterances):
    model, processor = tiny_base()
    config = TrainConfig(output_dir=short_run["out"], max_steps=4)
    with pytest.raises(FileExistsError, match="checkpoint-4: resume it"):
        train(model, processor, utterances["train"], None, config)


def test_resume_refuses_a_changed_config(short_run, utterances):
    model, processor = tiny_base()
    config = TrainConfig(
        output_dir=short_run["out"], max_steps=4, batch_size=4, lr=0.5, warmup_steps=1, eval_every=2, save_every=2,
        keep_last=1, log_samples=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.5"):
        train(model, processor, utterances["train"], None, config, resume=True)


# ------------------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL; DDP


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(*args: str, config: str | None = None, processes: int = 2) -> subprocess.CompletedProcess:
    """ddp_worker.py in one process, or with `config` (a file of configs/) in `processes` through `accelerate
    launch`, as a user launches the trainer (without CUDA the trainer runs on the CPU: gloo)."""
    if config is None:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                   "--num_processes", str(processes), "--main_process_port", str(_free_port()),
                   str(WORKER), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _checkpoint_weights(folder: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(folder / f"{CHECKPOINT_PREFIX}{step}" / "model.safetensors")


def _assert_same_run(got: Path, expected: Path, steps: int, rel: float, atol: float) -> None:
    """Two runs' logged losses agree (relative `rel`) and their last checkpoints' trainable weights (`atol`), and
    training moved the weights by more than that."""
    losses, reference = _train_losses(got), _train_losses(expected)
    assert losses.keys() == reference.keys() == set(range(1, steps + 1))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=rel), step
    weights, reference_weights = _checkpoint_weights(got, steps), _checkpoint_weights(expected, steps)
    assert weights.keys() == reference_weights.keys()
    initial = tiny_base(seed=0)[0].state_dict()
    # Adam turns rounding differences of near-zero gradients into small update differences: compare against how
    # far training moved the weights (lr 3e-3 a step), not against float epsilon
    assert max((value - initial[name]).abs().max() for name, value in reference_weights.items()) > 3e-3
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=atol, msg=name)


def test_resume_after_sigkill_gives_the_uninterrupted_losses(tmp_path, corpus):
    common = ["--train", str(corpus["train"]), "--steps", "6", "--save-every", "2", "--unfreeze-encoder"]
    killed = _worker(*common, "--out", str(tmp_path / "run"), "--kill-after", "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert max(_train_losses(tmp_path / "run")) == 3  # step 3 ran and was logged, then the kill

    resumed = _worker(*common, "--out", str(tmp_path / "run"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # uninterrupted, in this process, its batches collated by a DataLoader worker: the same data
    run_worker([*common, "--out", str(tmp_path / "reference"), "--num-workers", "1"])

    steps = [r["step"] for r in _log(tmp_path / "run")]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]  # the killed step 3 is logged once
    # One process each, the same thread count, the same kernels: the checkpoint restores weights, optimizer, RNG and
    # data position exactly, so the resumed run is the uninterrupted one bit for bit (a bound would hide a lost draw).
    got, expected = _train_losses(tmp_path / "run"), _train_losses(tmp_path / "reference")
    for step in range(1, 7):
        assert got[step] == expected[step], step
    final, reference_final = (
        load_file(tmp_path / d / "checkpoint-6" / "model.safetensors") for d in ("run", "reference")
    )
    for name, value in reference_final.items():
        assert torch.equal(final[name], value), name


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_the_same_global_batch(tmp_path, corpus):
    common = ["--train", str(corpus["train"]), "--steps", "3", "--batch-size", "2"]
    ddp = _worker(*common, "--out", str(tmp_path / "ddp"), config="accelerate_ddp.yaml")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("llm weight: Parameter (128, 64), local (128, 64)") == 2  # whole on both processes
    assert ddp.stdout.count("distributed: MULTI_CPU") == 2
    run_worker([*common, "--out", str(tmp_path / "single"), "--grad-accum", "2"])  # one process, in this one

    state = json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    # float32: the two processes' gradients are summed in another order than one process's
    _assert_same_run(tmp_path / "ddp", tmp_path / "single", 3, rel=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fsdp_two_processes_shard_the_llm_and_equal_one_process(tmp_path, corpus):
    common = ["--train", str(corpus["train"]), "--steps", "3", "--batch-size", "2"]
    fsdp = _worker(*common, "--out", str(tmp_path / "fsdp"), config="accelerate_fsdp.yaml")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    # the frozen LLM's weights are split across the two processes (FSDP2's DTensor shards), not copied
    assert fsdp.stdout.count("llm weight: DTensor (128, 64), local (64, 64)") == 2, fsdp.stdout[-2000:]
    assert fsdp.stdout.count("distributed: FSDP") == 2  # Accelerate's FSDP code paths ran (no_sync, clipping)
    run_worker([*common, "--out", str(tmp_path / "single"), "--grad-accum", "2"])

    # the checkpoint holds whole tensors, as one process writes them
    _assert_same_run(tmp_path / "fsdp", tmp_path / "single", 3, rel=1e-5, atol=1e-5)
    optimizer, reference = (torch.load(tmp_path / d / f"{CHECKPOINT_PREFIX}3" / "optimizer.pt", weights_only=True)
                            for d in ("fsdp", "single"))  # fmt: skip
    assert optimizer["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for index, moments in reference["optimizer"]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(optimizer["optimizer"]["state"][index][key], value, rtol=1e-4, atol=1e-6)
    # the final folder: the whole model, gathered, loadable as the single-process one
    final, reference_final = (load_base(tmp_path / d / "final")[0].state_dict() for d in ("fsdp", "single"))
    assert final.keys() == reference_final.keys()
    for name, value in reference_final.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_gives_the_uninterrupted_losses(tmp_path, corpus):
    # the sharded encoder trains too, and its dropout draws from the RNG; two micro-batches a step (no_sync)
    common = ["--train", str(corpus["train"]), "--steps", "5", "--batch-size", "2", "--grad-accum", "2",
              "--save-every", "2", "--unfreeze-encoder"]  # fmt: skip
    killed = _worker(*common, "--out", str(tmp_path / "run"), "--kill-after", "3", config="accelerate_fsdp.yaml")
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert max(_train_losses(tmp_path / "run")) == 3  # step 3 ran and was logged, then the kill

    resumed = _worker(*common, "--out", str(tmp_path / "run"), "--resume", config="accelerate_fsdp.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("distributed: FSDP") == 2
    uninterrupted = _worker(*common, "--out", str(tmp_path / "reference"), config="accelerate_fsdp.yaml")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    steps = [r["step"] for r in _log(tmp_path / "run")]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5]  # the killed step 3 is logged once
    # the same two processes, the same reductions: the resumed run is the uninterrupted one up to float noise
    _assert_same_run(tmp_path / "run", tmp_path / "reference", 5, rel=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["accelerate_ddp.yaml", "accelerate_fsdp.yaml"])
def test_launch_configs_parse_and_name_the_models_layers(name):
    config = load_config_from_file(str(CONFIGS / name))  # Accelerate's own reader, as `accelerate launch` reads it
    assert config.compute_environment == "LOCAL_MACHINE" and config.num_machines == 1
    if name == "accelerate_ddp.yaml":
        assert config.distributed_type == "MULTI_GPU" and config.fsdp_config == {}
        return
    assert config.distributed_type == "FSDP"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # every class named must be a layer of the model (Accelerate raises otherwise): the base's encoder and Qwen3 LLM
    classes = {type(module).__name__ for module in tiny_base(seed=0)[0].modules()}
    wrapped = set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert wrapped == {"FunAsrNanoEncoderLayer", "Qwen3DecoderLayer"} and wrapped <= classes


def test_fsdp_refuses_what_it_does_not_support_yet(tmp_path):
    config = TrainConfig(output_dir=tmp_path, lora=LoraSettings(), trainable_token_ids=(5,))
    with pytest.raises(ValueError, match="validation set .*; lora .*; trainable_token_ids"):
        _check_fsdp_config(config, [Utterance(audio=tmp_path / "a.wav", text="a")])
    _check_fsdp_config(TrainConfig(output_dir=tmp_path, unfreeze_encoder=True), None)  # adaptor and encoder: fine


# ------------------------------------------------------------------------------------------------------------------
# Commands


@pytest.fixture(scope="module")
def model_folder(tiny_base_folder) -> Path:
    return tiny_base_folder


def test_cli_train_then_eval(model_folder, corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", str(model_folder), "--train", str(corpus["train"]), "--valid", str(corpus["valid"]),
            "-o", str(out), "--steps", "2", "--batch-size", "4", "--warmup", "0", "--save-every", "0",
            "--audio-cache", "encoder"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"trained 2 steps; model saved to {out / 'final'}" in result.output
    assert [r["step"] for r in _log(out) if "valid/cer" in r] == [2]  # evaluated at the end

    again = CliRunner().invoke(app, args)  # the same folder without --resume: refused, one line before loading
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert again.output.strip().splitlines() == [
        f"error: -o/--output {out} holds checkpoint-2: pass --resume to continue it, or choose another folder"
    ]
    resumed = CliRunner().invoke(app, [*args, "--resume"])  # nothing left to do: the final folder again
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2]

    scores = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["eval", "--model", str(out / "final"), "--manifest", str(corpus["valid"]),
                                      "-o", str(scores)])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert any(row.split("│")[1].strip() == "en" for row in rows) and any("all" in row for row in rows)
    lines = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [line["ref"] for line in lines] == [json.loads(x)["text"] for x in corpus["valid"].read_text().splitlines()]
    assert {"audio", "language", "ref", "hyp"} == lines[0].keys()


# ------------------------------------------------------------------------------------------------------------------
# The multi-GPU benchmark's code path, on CPU with tiny shapes (benchmarks/train_distributed.py)

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "train_distributed.py"


@pytest.mark.slow
def test_distributed_benchmark_two_fsdp_processes_against_one(tmp_path):
    common = ["--tiny", "--model", "Qwen3-1.7B", "--batch-size", "2", "--steps", "2", "--warmup", "1",
              "--utterances", "16"]  # fmt: skip
    one = subprocess.run(
        [sys.executable, str(BENCHMARK), *common, "--grad-accum", "2", "--out", str(tmp_path / "one.json"),
         "--save-adaptor", str(tmp_path / "one.safetensors")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate_fsdp.yaml"),
         "--num_processes", "2", "--main_process_port", str(_free_port()), str(BENCHMARK), *common,
         "--out", str(tmp_path / "two.json"), "--save-adaptor", str(tmp_path / "two.safetensors")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads((tmp_path / "two.json").read_text())
    assert (result["distributed_type"], result["llm_sharded"], result["processes"]) == ("FSDP", True, 2)
    assert result["global_batch"] == json.loads((tmp_path / "one.json").read_text())["global_batch"] == 4
    assert len(result["peak_memory_gb_per_process"]) == 2 and result["samples_per_s"] > 0

    from benchmarks.train_distributed import compare

    summary = compare(tmp_path / "one.json", tmp_path / "two.json",
                      adaptors=(tmp_path / "one.safetensors", tmp_path / "two.safetensors"))  # fmt: skip
    # the same batches in the same steps: float32 summation order only; Adam (lr 1e-3, 3 steps, each moving a weight
    # by up to lr) turns the rounding of near-zero gradients into update differences, hence the adaptor's 5e-4
    assert summary["max_loss_difference"] < 1e-4
    assert summary["max_adaptor_difference"] < 5e-4
    assert summary["scaling_efficiency"] > 0
