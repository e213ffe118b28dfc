"""Multi-GPU adaptor training (issue 20): the trainer's step under DDP or FSDP2 at a seed LLM's real shape, timed, its
peak memory per process, and the adaptor after K steps, for comparison with one process at the same global batch.

NOT YET RUN ON GPUs: no machine of two GPUs was available when this was written; it has run on CPU with tiny shapes
only (tests/funasr_swap/training/test_distributed.py). The intended runs, on a machine of two H200s:

    # DDP scaling (Qwen3-1.7B shape): one GPU with --grad-accum 2, two GPUs with --grad-accum 1: the same global batch
    PYTHONPATH=. python benchmarks/train_distributed.py --model Qwen3-1.7B --batch-size 64 --grad-accum 2 \
        --out benchmarks/results/train_distributed_1gpu.json --save-adaptor /tmp/one.safetensors
    PYTHONPATH=. accelerate launch --config_file configs/accelerate_ddp.yaml benchmarks/train_distributed.py \
        --model Qwen3-1.7B --batch-size 64 --out benchmarks/results/train_distributed_ddp.json \
        --save-adaptor /tmp/ddp.safetensors
    PYTHONPATH=. python benchmarks/train_distributed.py --compare benchmarks/results/train_distributed_1gpu.json \
        benchmarks/results/train_distributed_ddp.json
    # peak memory per GPU, DDP against FSDP2, for Qwen3-8B, Llama-3.1-8B (--fsdp_transformer_layer_cls_to_wrap
    # FunAsrNanoEncoderLayer,LlamaDecoderLayer) and Qwen3-32B (DDP: 65 GB of bf16 weights per GPU)
    PYTHONPATH=. accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 \
        benchmarks/train_distributed.py --model Qwen3-8B --batch-size 32 \
        --out benchmarks/results/train_distributed_fsdp_qwen3_8b.json

What a step is: the trainer's own adaptor step, `funasr_swap.training.TrainingStep` (encoder and LLM frozen in bf16,
the adaptor fp32, bf16 autocast, AdamW, clipping at 1.0, the chunked supervised loss) through the trainer's own
Accelerator (`funasr_swap.training.distributed.make_accelerator`:
DDP or FSDP2 as `accelerate launch` set it, FSDP2 on CPU too), the trainer's data order (`BatchPlan`: each step takes
grad_accum x processes length-bucketed micro-batches, rank r every r-th), and the synthetic corpus and real-shape
random-weight model of benchmarks/train_throughput.py. Layers run eager (no torch.compile), so the ratio of 2 GPUs
to 1 measures the distribution, not compilation. samples/s counts the utterances of the timed steps (after --warmup
steps) over their wall time; scaling efficiency = samples/s on N processes / (N x samples/s on one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput, beside this file

from train_throughput import (  # noqa: E402
    GB,
    Corpus,
    _feature_dim,
    build_model,
    cpu_batch,
    device_info,
    to_device,
    write_json,
)

from funasr_swap.training.config import TrainConfig  # noqa: E402
from funasr_swap.training.data_order import BatchPlan  # noqa: E402
from funasr_swap.training.distributed import make_accelerator, trainable_state  # noqa: E402
from funasr_swap.training.step import TrainingStep  # noqa: E402


def run(args: argparse.Namespace) -> dict:
    on_cuda = torch.cuda.is_available()
    accelerator = make_accelerator(on_cuda)
    rank, world = accelerator.process_index, accelerator.num_processes
    # FSDP: built on the CPU and sharded onto the GPUs by prepare (a whole 32B copy per GPU is what FSDP avoids)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    model = build_model(args.model, "cpu" if fsdp or not on_cuda else str(accelerator.device), args.tiny)
    config = TrainConfig(output_dir=Path("unused"), batch_size=args.batch_size, grad_accum=args.grad_accum)
    training_step = TrainingStep.prepare(model, config, accelerator)  # as train() sets it up

    corpus = Corpus.sample(args.utterances, seed=0)
    plan = BatchPlan(list(corpus.seconds), args.batch_size, seed=0)
    batches = plan.stream((0, 0), rank, world)
    vocab, feature_dim = model.config.text_config.vocab_size, _feature_dim(model)
    device = str(accelerator.device)
    losses, samples, seconds = [], 0, 0.0

    def micro_batches(step: int) -> Iterator[dict[str, torch.Tensor]]:
        """The step's micro-batches of this process: random ids and features seeded by the micro-batch's place in
        the global order, so one process with grad_accum N*g sees the very batches N processes with g see."""
        nonlocal samples
        for micro in range(args.grad_accum):
            indices = next(batches)
            seed = (step * args.grad_accum + micro) * world + rank
            if step >= args.warmup:
                samples += len(indices)
            yield to_device(cpu_batch(corpus, indices, vocab, seed), device, feature_dim, seed)

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            accelerator.wait_for_everyone()
            if on_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        losses.append(training_step(micro_batches(step)).loss.item())
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / GB if on_cuda else None
    weights = trainable_state(model)  # every process: under FSDP a gather
    result = {
        "model": args.model,
        "tiny": args.tiny,
        "distributed_type": accelerator.distributed_type.value,
        # FSDP: the frozen LLM's weights are this process's shards (DTensor), not whole copies
        "llm_sharded": isinstance(model.model.language_model.layers[0].mlp.up_proj.weight, DTensor),
        "processes": world,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "global_batch": args.batch_size * args.grad_accum * world,
        "steps": args.steps,
        "warmup": args.warmup,
        "samples_per_s": sum(gather_object([samples])) / seconds,
        "peak_memory_gb_per_process": gather_object([peak]),
        "losses": losses,  # every step's, warmup included: the same on one and N processes up to bf16/fp32 noise
        **device_info(device),
    }
    if accelerator.is_main_process:
        if args.save_adaptor:
            save_file({k: v.cpu() for k, v in weights.items()}, args.save_adaptor)
        if args.out:
            write_json(result, args.out)
        print(result)
    accelerator.wait_for_everyone()
    return result


def compare(one: Path, many: Path, adaptors: tuple[Path, Path] | None = None) -> dict:
    """Scaling efficiency of `many` (N processes) against `one` (one process, the same global batch), the largest
    loss difference, and with `adaptors` (their --save-adaptor files) the largest adaptor weight difference."""
    a, b = json.loads(one.read_text()), json.loads(many.read_text())
    if a["global_batch"] != b["global_batch"] or a["processes"] != 1:
        raise ValueError(f"{one} must be one process with {many}'s global batch {b['global_batch']}, got {a}")
    out = {
        "scaling_efficiency": b["samples_per_s"] / (b["processes"] * a["samples_per_s"]),
        "max_loss_difference": max(abs(x - y) for x, y in zip(a["losses"], b["losses"])),
    }
    if adaptors:
        x, y = (load_file(p) for p in adaptors)
        out["max_adaptor_difference"] = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
    print(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen3-1.7B", help="a registry LLM (funasr_swap.llms)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same classes, float32 (CPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="utterances per micro-batch per process")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step per process")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--utterances", type=int, default=4096)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save-adaptor", type=Path, help="safetensors of the trainable weights after the steps")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("ONE", "MANY"), help="two --out files")
    parser.add_argument("--adaptors", type=Path, nargs=2, metavar=("ONE", "MANY"), help="with --compare")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare, adaptors=args.adaptors)
    if math.prod((args.batch_size, args.grad_accum, args.steps)) < 1:
        parser.error("--batch-size, --grad-accum and --steps must be >= 1")
    return run(args)


if __name__ == "__main__":
    main()
