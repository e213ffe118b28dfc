"""Checkpoints and exact resume (torchtune's recipe shape).

A checkpoint (`checkpoint-{step}/`, written atomically, the last `keep_last` kept) holds the trainable weights
(safetensors), the optimizer and scheduler states, every process's RNG states (python, numpy, torch) and the data
position (epoch, batch index); `train(..., resume=True)` continues from the latest one exactly: the losses after a
kill equal those of an uninterrupted run. Frozen weights come from the model passed in, so resume with the same
starting model.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from funasr_swap.errors import NAMED, SettingError
from funasr_swap.training.config import TrainConfig
from funasr_swap.training.distributed import load_optimizer_state, optimizer_state, shard_like, trainable_state
from tokenmap.io import atomic_folder

__all__ = [
    "CHECKPOINT_PREFIX",
    "RESUMABLE_CHANGES",
    "STATE_FILE",
    "checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "rng_state",
    "save_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
WEIGHTS_FILE = "model.safetensors"  # the trainable parameters only
OPTIMIZER_FILE = "optimizer.pt"  # optimizer and scheduler states
RNG_FILE = "rng.pt"  # one RNG state per process
STATE_FILE = "trainer_state.json"  # step, data position, world size, config
# Config fields a resumed run may change; any other change would not continue the same run.
RESUMABLE_CHANGES = frozenset(
    "output_dir max_steps eval_every save_every keep_last log_samples num_workers eval_batch_size audio_cache "
    "compile".split()
)


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, by step."""
    steps = {}
    for folder in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = folder.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (folder / STATE_FILE).is_file():
            steps[int(suffix)] = folder
    return [steps[step] for step in sorted(steps)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    folders = checkpoints(Path(output_dir))
    return folders[-1] if folders else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the last `keep` checkpoints."""
    for folder in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(folder)


def rng_state() -> dict:
    """This process's RNG states: python, numpy, torch (and CUDA's)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),  # loadable weights_only
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng_states: list[dict],
    state: dict,
    *,
    write: bool = True,
) -> None:
    """Write one checkpoint folder atomically (a killed save leaves no partial `checkpoint-*`). Under FSDP every
    process calls it (the shards are gathered whole) and only the one with `write=True` writes: the files are the
    same as a single-process run's."""
    weights, optimizer_states = trainable_state(model), optimizer_state(optimizer)
    if not write:
        return
    with atomic_folder(folder) as tmp:
        save_file(weights, tmp / WEIGHTS_FILE)
        torch.save({"optimizer": optimizer_states, "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        torch.save(rng_states, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    rank: int,
    world: int,
) -> dict:
    """Restore what `save_checkpoint` wrote into a freshly set-up run; returns the trainer state (step, position)."""
    state = json.loads((folder / STATE_FILE).read_text())
    saved, now = state["config"], config.to_dict()
    changed = sorted(k for k in saved.keys() | now.keys() if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise SettingError(f"{folder}: cannot resume with a different {diff}; use another {{output_dir}} to start over",
                           output_dir=NAMED)  # fmt: skip
    if state["world_size"] != world:
        raise ValueError(f"{folder}: saved by {state['world_size']} process(es), resumed with {world}")
    weights = load_file(folder / WEIGHTS_FILE)
    trainable = dict(model.named_parameters())
    expected = {name for name, p in trainable.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(
            f"{folder / WEIGHTS_FILE}: trainable parameters differ from this run's; missing "
            f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            trainable[name].copy_(shard_like(tensor, trainable[name]))  # FSDP: this process's shard
    states = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    load_optimizer_state(optimizer, states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    _set_rng_state(torch.load(folder / RNG_FILE, weights_only=True)[rank])
    return state
