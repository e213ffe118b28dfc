"""One training run of the tiny base, for the training tests' runs in other processes: a SIGKILL mid-run, a resume
of it, and two DDP or FSDP2 processes (gloo on CPU) against one. The model is `tiny_base(seed=0)` every time, so runs
compare. After training it prints how the LLM's first decoder layer's weight is held (`llm weight: ...`): whole, or
this process's FSDP shard, and Accelerate's distributed type (`distributed: ...`). With `--uninterrupted DIR` the same
processes then make the run again from the start in DIR, uninterrupted: a resume's reference without another launch.

    python tests/funasr_swap/training/ddp_worker.py --train T.jsonl --out DIR --steps 6 --save-every 2 --kill-after 3
    accelerate launch --config_file configs/accelerate_ddp.yaml tests/funasr_swap/training/ddp_worker.py \
        --train ... --steps 3
    accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 \
        tests/funasr_swap/training/ddp_worker.py --train T.jsonl --out DIR --steps 3
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from accelerate.state import AcceleratorState
from torch.distributed.tensor import DTensor

from funasr_swap.base import tiny_base
from funasr_swap.data import load_manifest
from funasr_swap.training import TrainConfig, TrainResult, train


def run(argv: list[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--unfreeze-encoder", action="store_true")  # its dropout makes the RNG state matter
    parser.add_argument("--kill-after", type=int, default=0, help="SIGKILL this process after this step")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--uninterrupted", type=Path, help="then the same run from the start into this folder")
    args = parser.parse_args(argv)
    utterances = load_manifest(args.train).utterances

    def kill(step: int, loss: float) -> None:
        if step == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash or an OOM kill

    def run_into(out: Path, resume: bool) -> TrainResult:
        model, processor = tiny_base(seed=0)
        config = TrainConfig(
            output_dir=out, max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=3e-3,
            warmup_steps=1, eval_every=0, save_every=args.save_every, keep_last=10,
            unfreeze_encoder=args.unfreeze_encoder, num_workers=args.num_workers,
        )  # fmt: skip
        result = train(model, processor, utterances, None, config, resume=resume, on_step=kill)
        weight = model.model.language_model.layers[0].mlp.up_proj.weight
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        print(f"llm weight: {type(weight).__name__} {tuple(weight.shape)}, local {tuple(local.shape)}", flush=True)
        print(f"distributed: {AcceleratorState().distributed_type.value}", flush=True)  # as Accelerate sees the run
        return result

    result = run_into(args.out, args.resume)
    if args.uninterrupted is not None:
        run_into(args.uninterrupted, resume=False)
    return result


if __name__ == "__main__":
    run()
