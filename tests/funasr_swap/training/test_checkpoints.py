"""Checkpoints: what a run keeps, a resume refusing a changed config, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from funasr_swap.base import tiny_base
from funasr_swap.training import TrainConfig, latest_checkpoint, train
from tests.funasr_swap.training.conftest import _log, _train_losses, _worker
from tests.funasr_swap.training.ddp_worker import run as run_worker


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


def test_resume_refuses_a_changed_config(short_run, utterances):
    model, processor = tiny_base()
    config = TrainConfig(
        output_dir=short_run["out"], max_steps=4, batch_size=4, lr=0.5, warmup_steps=1, eval_every=2, save_every=2,
        keep_last=1, log_samples=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.5"):
        train(model, processor, utterances["train"], None, config, resume=True)


def test_resume_after_sigkill_gives_the_uninterrupted_losses(tmp_path, corpus):
    common = ["--train", str(corpus["train"]), "--steps", "6", "--save-every", "2", "--unfreeze-encoder"]
    killed = _worker(*common, "--out", str(tmp_path / "run"), "--kill-after", "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert max(_train_losses(tmp_path / "run")) == 3  # step 3 ran and was logged, then the kill

    # the resume and the uninterrupted run in this process (each with a new model; train seeds, then the resume
    # restores the checkpoint's RNG states); the uninterrupted run's batches collated by a DataLoader worker: the same
    # data
    run_worker([*common, "--out", str(tmp_path / "run"), "--resume"])
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
