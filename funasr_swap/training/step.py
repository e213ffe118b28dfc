"""One optimizer step and what it needs: what trains (`setup_trainable`), the loss (`supervised_loss`), the
optimizer, and `TrainingStep`, the step itself, which the recipe and the benchmarks run.

What trains: the adaptor, plus the input-embedding rows of added speech markers (`trainable_token_ids`, a
`TrainableTokenRows` delta); optionally the encoder (`unfreeze_encoder`), the whole LLM (`train_llm`, for the
miniature base's joint training) or LoRA adapters on the LLM (`lora`, peft). Frozen parameters have
`requires_grad=False` (no weight gradients, no optimizer state) and the parts with nothing to train run in eval mode,
as funasr runs its frozen encoder and LLM (no dropout noise there).

The loss is the model's own next-token cross-entropy, but the LM head runs only at the supervised positions
(`supervised_loss`): with a 150k-256k vocabulary, logits of the prompt and the audio frames are most of the step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from transformers import FunAsrNanoForConditionalGeneration

from funasr_swap.compat import active_logit_softcap
from funasr_swap.data import precomputed_audio
from funasr_swap.llms import lora_targets
from funasr_swap.loss import lm_head_cross_entropy
from funasr_swap.swap import read_swap_report, set_trainable
from funasr_swap.token_rows import TrainableTokenRows
from funasr_swap.training.config import TrainConfig
from funasr_swap.training.distributed import full_tensor
from tokenmap.prompt import IGNORE_INDEX

__all__ = [
    "LossFunction",
    "StepOutput",
    "TrainingStep",
    "added_token_ids",
    "attention_kernels",
    "build_optimizer",
    "compile_layers",
    "setup_trainable",
    "supervised_loss",
    "supervised_states",
    "train_mode",
    "trainable_in_fp32",
]

LossFunction = Callable[[FunAsrNanoForConditionalGeneration, dict[str, torch.Tensor]], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# What trains


def setup_trainable(model: FunAsrNanoForConditionalGeneration, config: TrainConfig) -> Callable[[], None]:
    """Set `requires_grad` from `config` (module docstring): LoRA adapters injected into the LLM in place (peft),
    the rows of `trainable_token_ids` as a `TrainableTokenRows` delta on its input embedding. Returns the function
    that folds both into the model's own weights (after training: the saved folder is then a stock one)."""
    llm = model.model.language_model
    lora_model = None
    if config.lora is not None:
        from peft import LoraConfig, LoraModel

        lora = config.lora
        targets = lora.target_modules if lora.target_modules is not None else lora_targets(llm.config)
        peft_config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets)
        )
        # injects the adapters into the LLM's modules in place; FunAsrNano keeps the same language_model object
        lora_model = LoraModel(llm, peft_config, "default")
    rows = None
    if config.trainable_token_ids and not config.train_llm:
        rows = TrainableTokenRows(llm.get_input_embeddings(), config.trainable_token_ids)
        llm.set_input_embeddings(rows)
    # peft only set flags inside the LLM; these set them for the whole model, the adapters and rows last
    set_trainable(model)
    if config.unfreeze_encoder:
        model.model.audio_tower.requires_grad_(True)
    if config.train_llm:
        llm.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)
    if rows is not None:
        rows.delta.requires_grad_(True)

    def merge() -> None:
        if lora_model is not None:
            lora_model.merge_and_unload()
        if rows is not None:
            llm.set_input_embeddings(rows.merge())

    return merge


def added_token_ids(model_dir: str | Path) -> tuple[int, ...]:
    """The token ids whose embedding rows a swap added (speech markers with `markers="add"`), from the folder's
    swap report; () for a folder without a report or without added rows."""
    report = read_swap_report(model_dir)
    return tuple(report.added_token_ids) if report else ()


def trainable_in_fp32(model: nn.Module) -> None:
    """fp32 master weights for what trains; frozen weights keep the dtype they were loaded in (bf16 on a GPU)."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def train_mode(model: FunAsrNanoForConditionalGeneration) -> None:
    """Train mode for the parts that train, eval mode (no dropout) for the frozen ones."""
    model.train()
    for part in (model.model.audio_tower, model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        part.train(any(p.requires_grad for p in part.parameters()))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on the matrices, never on embeddings (it would shrink
    frozen rows) or 1-d parameters."""
    embedding = model.get_input_embeddings()
    rows = {id(embedding.weight)} | {id(m.delta) for m in model.modules() if isinstance(m, TrainableTokenRows)}
    decay, no_decay = [], []
    for parameter in model.parameters():  # each shared (tied) parameter once
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or id(parameter) in rows else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


# ----------------------------------------------------------------------------------------------------------------
# Speed: compiled layers, attention kernels


def _layer_stacks(model: FunAsrNanoForConditionalGeneration) -> tuple[nn.ModuleList, ...]:
    return (model.model.audio_tower.layers, model.model.multi_modal_projector.layers, model.model.language_model.layers)


def compile_layers(model: FunAsrNanoForConditionalGeneration, enable: bool = True) -> None:
    """torch.compile (in place) each layer of the encoder, the adaptor and the LLM, or with `enable=False` undo it.
    Layer by layer: one graph per layer class, reused by every layer of it; length-bucketed batches vary in shape,
    hence dynamic shapes on a GPU. On a CPU the shapes are static (a graph per batch shape): torch 2.13's vectorised
    CPU code for this encoder's layers with dynamic shapes writes outside its buffers (glibc aborts with "free():
    invalid pointer"; `tests/funasr_swap/training/compiled_worker.py` runs the layers under glibc's heap checks). The
    model's own code between the layers (embedding, masks, audio merge, loss) stays eager."""
    dynamic = next(model.parameters()).device.type != "cpu"
    if enable:
        # the layer classes share transformers' checkpointing wrapper (one code object): a recompilation per class
        # and call signature, beyond dynamo's default limit of 8, which would leave layers eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 1024)
    for stack in _layer_stacks(model):
        for layer in stack:
            if enable:
                layer.compile(dynamic=dynamic)
            else:
                layer._compiled_call_impl = None


def attention_kernels() -> contextlib.AbstractContextManager:
    """SDPA restricted to flash, memory-efficient and math kernels, i.e. without cuDNN: cuDNN's attention builds a
    plan per new shape, and over bucketed batches of new lengths the step ran at 0.56x with it (Qwen3-1.7B, H200)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# ----------------------------------------------------------------------------------------------------------------
# The loss


def supervised_states(
    model: FunAsrNanoForConditionalGeneration, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LLM's last hidden states at the positions whose next token is supervised (labels != -100), (N, H), those
    next tokens, (N,), row by row, and the adaptor's outputs at the valid audio frames, (M, H), row by row."""
    output = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        input_features=batch["input_features"],
        input_features_mask=batch["input_features_mask"],
        use_cache=False,
    )
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    supervised = targets != IGNORE_INDEX
    return output.last_hidden_state[:, :-1][supervised], targets[supervised], output.audio_hidden_states


def supervised_loss(model: FunAsrNanoForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised tokens (labels != -100), as `model(**batch).loss`, with the
    LM head applied only at the positions whose next token is supervised, a chunk of them at a time
    (`funasr_swap.loss.lm_head_cross_entropy`: no full-vocabulary logits are held)."""
    hidden, targets, _ = supervised_states(model, batch)
    # (N, V) logits never materialise: chunked through the head, soft-capped as the lm_head's hook would
    return lm_head_cross_entropy(model.lm_head, hidden, targets, softcap=active_logit_softcap(model))


class LossModule(nn.Module):
    """`loss_fn` as a module's forward: what DDP wraps (it syncs gradients of what its forward ran)."""

    def __init__(self, model: FunAsrNanoForConditionalGeneration, loss_fn: LossFunction):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


# ----------------------------------------------------------------------------------------------------------------
# The step


@dataclass(frozen=True)
class StepOutput:
    """One optimizer step's loss (the mean over its micro-batches and processes) and gradient norm (before
    clipping), both still on the device: reading them waits for the step (a host sync)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor


@dataclass
class TrainingStep:
    """One optimizer step over `grad_accum` micro-batches per process: each micro-batch's loss (its mean over the
    supervised tokens) backpropagated scaled by 1 / grad_accum, the gradients all-reduced once (on the last
    micro-batch), clipped to `max_grad_norm`, AdamW's step. Built by `prepare`; call it with an iterator of
    micro-batches (on the device)."""

    model: FunAsrNanoForConditionalGeneration
    accelerator: Accelerator
    loss_module: nn.Module  # the loss, DDP- or FSDP-wrapped by the accelerator
    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]  # what trains, as the optimizer holds it (FSDP: this process's shards)
    merge_adapters: Callable[[], None]  # `setup_trainable`'s merge, for after training
    config: TrainConfig

    @classmethod
    def prepare(
        cls,
        model: FunAsrNanoForConditionalGeneration,
        config: TrainConfig,
        accelerator: Accelerator,
        loss_fn: LossFunction = supervised_loss,
    ) -> TrainingStep:
        """Set what trains (`setup_trainable`, fp32 master weights, train mode), place the model and wrap its loss
        (DDP or FSDP2, which needs the optimizer with the model: it swaps in sharded parameters)."""
        merge = setup_trainable(model, config)
        trainable_in_fp32(model)
        loss_module, optimizer = accelerator.prepare(LossModule(model, loss_fn), build_optimizer(model, config))
        train_mode(model)
        parameters = [p for p in model.parameters() if p.requires_grad]
        return cls(model, accelerator, loss_module, optimizer, parameters, merge, config)

    def __call__(self, micro_batches: Iterator[dict[str, torch.Tensor]]) -> StepOutput:
        accelerator, grad_accum = self.accelerator, self.config.grad_accum
        losses = []
        for micro in range(grad_accum):
            batch = next(micro_batches)
            # gradients are all-reduced once per step: on the last micro-batch
            sync = micro == grad_accum - 1
            with (
                contextlib.nullcontext() if sync else accelerator.no_sync(self.loss_module),
                precomputed_audio(self.model) if self.config.audio_cache == "encoder" else contextlib.nullcontext(),
                attention_kernels(),
            ):
                loss = self.loss_module(batch)
                accelerator.backward(loss / grad_accum)
            losses.append(loss.detach())
        grad_norm = accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = accelerator.reduce(torch.stack(losses).mean(), "mean")
        norm = full_tensor(torch.as_tensor(grad_norm, device=mean_loss.device)).float()  # FSDP: a replicated DTensor
        return StepOutput(mean_loss.float(), norm)
