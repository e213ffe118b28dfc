"""The training tests' corpus (word-specific tones the adaptor can learn to read), a short run of the tiny base that
several modules' tests read, and helpers: reading a run's log, launching ddp_worker.py in other processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from funasr_swap.base import tiny_base
from funasr_swap.data import AsrCollator, Utterance, load_manifest
from funasr_swap.training import TrainConfig, train
from funasr_swap.training.checkpoints import CHECKPOINT_PREFIX

WORKER = Path(__file__).with_name("ddp_worker.py")
CONFIGS = Path(__file__).parents[3] / "configs"
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


@pytest.fixture(scope="package")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    return {"train": _write_corpus(folder, "train", 8, seed=0), "valid": _write_corpus(folder, "valid", 3, seed=1)}


@pytest.fixture(scope="package")
def utterances(corpus) -> dict[str, list[Utterance]]:
    return {split: load_manifest(path).utterances for split, path in corpus.items()}


@pytest.fixture(scope="package")
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


def _batch(processor, utterances: list[Utterance]) -> dict[str, torch.Tensor]:
    return AsrCollator(processor)(utterances)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _train_losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _log(folder) if "loss" in r}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(*args: str, config: str | None = None, processes: int = 2) -> subprocess.CompletedProcess:
    """ddp_worker.py in one process, or with `config` (a file of configs/) in `processes` through `accelerate
    launch`, as a user launches the trainer (without CUDA the trainer runs on the CPU: gloo)."""
    env = None
    if config is None:
        command = [sys.executable, str(WORKER), *args]
        # this process's thread count: tests compare the worker's numbers with runs made here, bit for bit
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                   "--num_processes", str(processes), "--main_process_port", str(_free_port()),
                   str(WORKER), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


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
