"""Several processes: DDP or FSDP2, through Accelerate.

Multi-GPU goes through Accelerate (`accelerate launch $(which funasr-swap) train ...`, or `torchrun`): the loss
module is wrapped in DDP. Each optimizer step consumes `grad_accum * num_processes` micro-batches of `batch_size`
utterances from one seeded stream of length-bucketed batches, rank r taking every num_processes-th one, so N
processes with `grad_accum=g` compute the step of one process with `grad_accum=N*g` (each micro-batch's loss is its
mean over supervised tokens; the step averages the micro-batches). DDP keeps the whole model on every GPU: with the
frozen LLM in bf16 that holds adaptor or LoRA training up to Qwen3-14B (28 GB) comfortably on 80 GB cards and
Qwen3-32B (65 GB) tightly. Beyond that the weights must be sharded: FSDP2 through Accelerate
(`configs/accelerate_fsdp.yaml`, `fsdp_version: 2`: one shard unit per encoder and decoder layer, the frozen LLM's
parameters split across the processes, the adaptor trained with the same data order and step as DDP). Checkpoints
then gather each trainable parameter and its optimizer moments whole (a collective on every process) and write the
same files as a single-process run; a resume splits them again. Accelerate 1.15 turns FSDP on only on accelerators;
torch's FSDP2 also runs on CPU over gloo, so there the trainer turns it on itself (`make_accelerator`): that is how
the FSDP path is tested without GPUs. Not yet under FSDP (refused at the start, `check_fsdp_support`): evaluation
(generation would need every process in step), LoRA and added marker rows (their merge works on whole weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from funasr_swap.data import Utterance
from funasr_swap.training.config import TrainConfig

__all__ = [
    "check_fsdp_support",
    "full_state",
    "full_tensor",
    "load_optimizer_state",
    "make_accelerator",
    "optimizer_state",
    "shard_like",
    "trainable_state",
]


def make_accelerator(on_cuda: bool) -> Accelerator:
    """The run's Accelerator: bf16 autocast on CUDA, fp32 on CPU; DDP or FSDP as `accelerate launch` set it.

    cpu=True without CUDA: processes started by torchrun or `accelerate launch --cpu` then form a gloo group instead
    of running alone. Accelerate (1.15) turns FSDP on only on accelerators and on a CPU silently runs DDP instead;
    torch's FSDP2 runs on CPU over gloo, so an FSDP2 launch on CPU gets it here, from the same plugin settings (the
    FSDP_* variables `accelerate launch` exports)."""
    accelerator = Accelerator(mixed_precision="bf16" if on_cuda else "no", cpu=not on_cuda)
    if parse_flag_from_env("ACCELERATE_USE_FSDP") and accelerator.distributed_type != DistributedType.FSDP:
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* environment
        if accelerator.distributed_type != DistributedType.MULTI_CPU or plugin.fsdp_version != 2:
            raise ValueError(
                f"FSDP was asked for (ACCELERATE_USE_FSDP) but Accelerate set up {accelerator.distributed_type.value} "
                f"with fsdp_version {plugin.fsdp_version}; the trainer supports FSDP2 (fsdp_version: 2) on GPUs, or "
                "on CPU with several processes (gloo)"
            )
        # both shared states: a later AcceleratorState() copies PartialState's over its own (as Accelerate does)
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def check_fsdp_support(config: TrainConfig, valid_data: Sequence[Utterance] | None) -> None:
    """Refuse, before any work, what the trainer does not support under FSDP (module docstring)."""
    unsupported = {
        "a validation set (evaluation generates on the main process only)": bool(valid_data),
        "lora (the merge works on whole weights)": config.lora is not None,
        "trainable_token_ids (the merge works on whole weights)": bool(config.trainable_token_ids),
    }
    refused = [what for what, present in unsupported.items() if present]
    if refused:
        raise ValueError(f"FSDP training does not support {'; '.join(refused)} yet; use DDP (accelerate launch "
                         "--multi_gpu) for these")  # fmt: skip


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A whole tensor from an FSDP2 shard (a DTensor: all-gathered, a collective); any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` split as `like` is (its DTensor mesh and placements: this process's shard); as it is otherwise."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole (FSDP: gathered from every process's shard, so every process calls it)."""
    return {name: full_tensor(p.detach()).contiguous() for name, p in model.named_parameters() if p.requires_grad}


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict under FSDP (every process calls it: each parameter is gathered), a tied
    parameter once (under its first name, as `save_pretrained` keeps it)."""
    state, seen = {}, set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in seen:
            seen.add(id(value))
            state[name] = full_tensor(value.detach())
    return state


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with whole moments (FSDP: gathered), as a single-process run writes it."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what `optimizer_state` wrote: moments of a sharded parameter split as the parameter is."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    for index, values in state["state"].items():
        parameter = parameters[int(index)]
        for key, value in values.items():
            if value.shape == parameter.shape:  # the moments; `step` is a scalar
                values[key] = shard_like(value, parameter)
    optimizer.load_state_dict(state)
