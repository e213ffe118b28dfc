"""The recipe on the tiny base: a short run's logs, evaluations and final folder, what its settings train (marker rows,
LoRA, the encoder), refusals before any work, and the train/eval commands."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from funasr_swap.base import tiny_base
from funasr_swap.cli import app
from funasr_swap.convert import load_base
from funasr_swap.swap import swap_llm
from funasr_swap.training import LoraSettings, TrainConfig, evaluate, latest_checkpoint, train
from tests.conftest import shared_tiny_base
from tests.funasr_swap.training.conftest import _batch, _log, _train_losses

# ------------------------------------------------------------------------------------------------------------------
# A short run: logs, evaluation, plot, final folder


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


def test_run_trains_only_the_adaptor(short_run):
    model, initial = short_run["model"], short_run["initial"]
    for name, value in model.state_dict().items():
        same = torch.equal(value, initial[name])
        assert same != name.startswith("model.multi_modal_projector."), name


def test_final_folder_loads_with_load_base(short_run, utterances):
    model = short_run["model"]
    loaded, loaded_processor = load_base(short_run["out"] / "final")
    batch = _batch(loaded_processor, utterances["valid"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


# ------------------------------------------------------------------------------------------------------------------
# What the settings train


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
    base, processor = shared_tiny_base()  # the base that other modules read too: nothing may change it
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


# ------------------------------------------------------------------------------------------------------------------
# Refused before any work


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


def test_fresh_start_refuses_a_folder_with_checkpoints(short_run, utterances):
    model, processor = tiny_base()
    config = TrainConfig(output_dir=short_run["out"], max_steps=4)
    with pytest.raises(FileExistsError, match="checkpoint-4: resume it"):
        train(model, processor, utterances["train"], None, config)


# ------------------------------------------------------------------------------------------------------------------
# Commands


def test_cli_train_then_eval(tiny_base_folder, corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_base_folder), "--train", str(corpus["train"]), "--valid", str(corpus["valid"]),
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
