"""Retrain a Fun-ASR-Nano after a swap: one recipe, read top to bottom (torchtune's full_finetune recipe shape).

    setup_trainable -> (resume: load_checkpoint) -> train loop -> evaluate every `eval_every` steps
                    -> save_checkpoint every `save_every` steps -> final `save_pretrained` folder

What trains (`setup_trainable`): the adaptor, plus the input-embedding rows of added speech markers
(`trainable_token_ids`, a `TrainableTokenRows` delta); optionally the encoder
(`unfreeze_encoder`), the whole LLM (`train_llm`, for the miniature base's joint training) or LoRA adapters on the
LLM (`lora`, peft). Frozen parameters have `requires_grad=False` (no weight gradients, no optimizer state) and the
parts with nothing to train run in eval mode, as funasr runs its frozen encoder and LLM (no dropout noise there).

The loss is the model's own next-token cross-entropy, but the LM head runs only at the supervised positions
(`supervised_loss`): with a 150k-256k vocabulary, logits of the prompt and the audio frames are most of the step.

Runs of many epochs over a corpus that fits in memory can skip the repeated audio work (`audio_cache`): "features"
keeps each clip's fbank features after its first batch; "encoder", with a frozen encoder, keeps its outputs, which
then stand in for it in every step (`funasr_swap.data.precomputed_audio`). In the miniature world's adaptor
retraining that removed the audio reading, fbank and encoder passes, about 40% of a step.

Speed on a GPU (measured at the seed LLMs' real widths on an H200: benchmarks/train_throughput.py, README): the
batches are length-bucketed (`BatchPlan`), 64 utterances by default; the LM head runs at the supervised positions
only and chunked (`funasr_swap.loss`: no full-vocabulary logits); SDPA runs without its cuDNN kernels
(`attention_kernels`); the encoder, adaptor and LLM layers are compiled for the steps (`compile_layers`,
`TrainConfig.compile`, default on CUDA); the loss is read back from the device every `SYNC_EVERY` steps, not every
step. Together: 2.3-5x the stock transformers step's samples/s, a 100k-pair epoch of Qwen3-1.7B in under 5 minutes.

Precision: bf16 autocast on CUDA, fp32 on CPU. Trainable parameters are fp32 (master weights); frozen ones keep the
dtype they were loaded in, so on a GPU the frozen LLM can stay in bf16 (the CLI loads it so: Qwen3-8B then takes
16 GB, not 32). On CPU, where there is no autocast, load the model in fp32.

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
torch's FSDP2 also runs on CPU over gloo, so there the trainer turns it on itself (`_accelerator`): that is how the
FSDP path is tested without GPUs. Not yet under FSDP (refused at the start): evaluation (generation would need every
process in step), LoRA and added marker rows (their merge works on whole weights).

A checkpoint (`checkpoint-{step}/`, written atomically, the last `keep_last` kept) holds the trainable weights
(safetensors), the optimizer and scheduler states, every process's RNG states (python, numpy, torch) and the data
position (epoch, batch index); `train(..., resume=True)` continues from the latest one exactly: the losses after a
kill equal those of an uninterrupted run. Frozen weights come from the model passed in, so resume with the same
starting model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    gather_object,
    parse_flag_from_env,
    set_seed,
)
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor, get_cosine_schedule_with_warmup

from funasr_swap.compat import active_logit_softcap, fill_gaps
from funasr_swap.data import AsrCollator, Utterance, bucket_batches, precomputed_audio
from funasr_swap.errors import NAMED, SettingError
from funasr_swap.llms import lora_targets
from funasr_swap.loss import lm_head_cross_entropy
from funasr_swap.metrics import cer, wer
from funasr_swap.swap import read_swap_report, set_trainable
from funasr_swap.token_rows import TrainableTokenRows
from funasr_swap.transcribe import max_encoder_seconds, transcribe
from tokenmap.io import atomic_folder, atomic_write_bytes, atomic_write_lines
from tokenmap.prompt import IGNORE_INDEX

if TYPE_CHECKING:
    from funasr_swap.figures import Figure

__all__ = [
    "BatchPlan",
    "Evaluation",
    "LoraSettings",
    "TrainConfig",
    "TrainResult",
    "added_token_ids",
    "evaluate",
    "latest_checkpoint",
    "history_figure",
    "load_checkpoint",
    "plot_history",
    "read_history",
    "save_checkpoint",
    "setup_trainable",
    "supervised_loss",
    "train",
]

CHECKPOINT_PREFIX = "checkpoint-"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
WEIGHTS_FILE = "model.safetensors"  # the trainable parameters only
OPTIMIZER_FILE = "optimizer.pt"  # optimizer and scheduler states
RNG_FILE = "rng.pt"  # one RNG state per process
STATE_FILE = "trainer_state.json"  # step, data position, world size, config
# Config fields a resumed run may change; any other change would not continue the same run.
RESUMABLE_CHANGES = frozenset(
    "output_dir max_steps eval_every save_every keep_last log_samples num_workers eval_batch_size audio_cache "
    "compile".split()
)
SYNC_EVERY = 10  # steps between reads of the loss from the device (each read waits for the GPU: a host sync)
AUDIO_CACHES = ("none", "features", "encoder")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters on the LLM's linear layers (peft); merged into the weights before the final save."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # module names; None: the registry's for the model's LLM (`funasr_swap.llms.lora_targets`: every attention and MLP
    # projection, DeepSeek's MLA key/value projections included)
    target_modules: tuple[str, ...] | None = None


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in each checkpoint and checked on resume."""

    output_dir: Path
    max_steps: int = 1000  # optimizer steps
    # utterances per micro-batch per process (length-bucketed: little padding). 64: on one H200 the compiled step
    # runs 2.3-5x the stock step's samples/s at every seed LLM and fits all of them (Qwen3-8B: 105 GB peak;
    # benchmarks/train_throughput.py); Qwen3-1.7B and smaller gain a little more at 128, an 80 GB card needs 32 for 8B
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step per process
    lr: float = 1e-3
    warmup_steps: int = 100  # linear warmup from 0 (the first step's rate), then cosine decay to 0 at max_steps
    weight_decay: float = 0.01  # AdamW; never on embeddings (it would shrink frozen rows) or 1-d parameters
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)
    eval_every: int = 200  # 0: only at the end
    save_every: int = 200  # 0: only at the end
    keep_last: int = 2  # checkpoints kept
    seed: int = 0
    unfreeze_encoder: bool = False
    train_llm: bool = False  # the whole LLM (embeddings and lm_head included)
    lora: LoraSettings | None = None
    trainable_token_ids: tuple[int, ...] = ()  # added speech-marker rows (SwapReport.added_token_ids)
    log_samples: int = 3  # reference/hypothesis pairs printed and logged per evaluation
    num_workers: int = 0  # DataLoader processes collating batches (audio reading, fbank); 0: in the main process
    eval_batch_size: int = 16
    # keep each utterance's audio inputs in memory after its first batch (AsrCollator's cache): "features" (fbank +
    # LFR), "encoder" (the frozen encoder's outputs, which then stand in for it in the steps), or "none"
    audio_cache: str = "none"
    # Kaldi dither on the training batches' int16-scale waveforms (funasr trains with 1.0; evaluation never dithers);
    # new noise every epoch, so it excludes audio_cache
    dither: float = 0.0
    # torch.compile of every encoder, adaptor and LLM layer for the training steps (not evaluation); None: on CUDA
    # only (there it doubled the step's rate; on a CPU its minutes of compilation outweigh a short run's gain)
    compile: bool | None = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.trainable_token_ids = tuple(self.trainable_token_ids)
        for name in ("max_steps", "batch_size", "grad_accum", "keep_last", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        # the settings a user chose: their names are the caller's (TrainConfig's fields, or the CLI's flags)
        owner, cache = "TrainConfig", self.audio_cache
        if self.lora is not None and self.train_llm:
            raise SettingError("{lora} and {train_llm} both train the LLM; choose one", owner=owner, lora=NAMED,
                               train_llm=True)  # fmt: skip
        if cache not in AUDIO_CACHES:
            raise SettingError(f"{{audio_cache}}: choose one of {', '.join(AUDIO_CACHES)}", owner=owner,
                               audio_cache=cache)  # fmt: skip
        if cache == "encoder" and self.unfreeze_encoder:
            raise SettingError("{audio_cache} keeps the encoder's outputs: it needs the encoder frozen, not "
                               "{unfreeze_encoder}", owner=owner, audio_cache=cache, unfreeze_encoder=True)  # fmt: skip
        if self.dither < 0:
            raise SettingError("{dither} must be >= 0", owner=owner, dither=self.dither)
        if self.dither and cache != "none":
            raise SettingError(
                "{dither} draws new noise every epoch, which a cache would not keep: it needs no audio cache, not "
                "{audio_cache}", owner=owner, dither=self.dither, audio_cache=cache,
            )  # fmt: skip
        if cache != "none" and self.num_workers:
            raise SettingError(
                "{audio_cache} needs 0 DataLoader workers (each would keep its own cache), not {num_workers}",
                owner=owner, audio_cache=cache, num_workers=self.num_workers,
            )  # fmt: skip

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one evaluation (`loss`, `cer`, `wer`, and `cer/<language>`, `wer/<language>` per language) and
    the hypotheses, in the order of the utterances."""

    metrics: dict[str, float]
    hypotheses: list[str]


@dataclass
class TrainResult:
    final_dir: Path  # save_pretrained folder (model + processor), loadable by load_base
    step: int
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of the whole run


# ----------------------------------------------------------------------------------------------------------------
# What trains, and the loss


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


def _train_mode(model: FunAsrNanoForConditionalGeneration) -> None:
    """Train mode for the parts that train, eval mode (no dropout) for the frozen ones."""
    model.train()
    for part in (model.model.audio_tower, model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        part.train(any(p.requires_grad for p in part.parameters()))


def _layer_stacks(model: FunAsrNanoForConditionalGeneration) -> tuple[nn.ModuleList, ...]:
    return (model.model.audio_tower.layers, model.model.multi_modal_projector.layers, model.model.language_model.layers)


def compile_layers(model: FunAsrNanoForConditionalGeneration, enable: bool = True) -> None:
    """torch.compile (in place) each layer of the encoder, the adaptor and the LLM, or with `enable=False` undo it.
    Layer by layer: one graph per layer class, reused by every layer of it; length-bucketed batches vary in shape,
    hence dynamic shapes on a GPU. On a CPU the shapes are static (a graph per batch shape): torch 2.13's vectorised
    CPU code for this encoder's layers with dynamic shapes writes outside its buffers (glibc aborts with "free():
    invalid pointer"; `tests/funasr_swap/compiled_worker.py` runs the layers under glibc's heap checks). The model's
    own code between the layers (embedding, masks, audio merge, loss) stays eager."""
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


LossFunction = Callable[[FunAsrNanoForConditionalGeneration, dict[str, torch.Tensor]], torch.Tensor]


class _LossModule(nn.Module):
    """`loss_fn` as a module's forward: what DDP wraps (it syncs gradients of what its forward ran)."""

    def __init__(self, model: FunAsrNanoForConditionalGeneration, loss_fn: LossFunction):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    embedding = model.get_input_embeddings()
    rows = {id(embedding.weight)} | {id(m.delta) for m in model.modules() if isinstance(m, TrainableTokenRows)}
    decay, no_decay = [], []
    for parameter in model.parameters():  # each shared (tied) parameter once
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or id(parameter) in rows else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole (FSDP: gathered from every process's shard, so every process calls it)."""
    return {name: _full(p.detach()).contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict under FSDP (every process calls it: each parameter is gathered), a tied
    parameter once (under its first name, as `save_pretrained` keeps it)."""
    state, seen = {}, set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in seen:
            seen.add(id(value))
            state[name] = _full(value.detach())
    return state


# ----------------------------------------------------------------------------------------------------------------
# Several processes: DDP or FSDP2


def _accelerator(on_cuda: bool) -> Accelerator:
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


def _check_fsdp_config(config: TrainConfig, valid_data: Sequence[Utterance] | None) -> None:
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


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A whole tensor from an FSDP2 shard (a DTensor: all-gathered, a collective); any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` split as `like` is (its DTensor mesh and placements: this process's shard); as it is otherwise."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with whole moments (FSDP: gathered), as a single-process run writes it."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: _full(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what `_optimizer_state` wrote: moments of a sharded parameter split as the parameter is."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    for index, values in state["state"].items():
        parameter = parameters[int(index)]
        for key, value in values.items():
            if value.shape == parameter.shape:  # the moments; `step` is a scalar
                values[key] = _shard_like(value, parameter)
    optimizer.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# Data order


def _duration(utterance: Utterance) -> float:
    return utterance.duration if utterance.duration is not None else sf.info(str(utterance.audio)).duration


def _check_audio_lengths(
    model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor, utterances: Sequence[Utterance]
) -> None:
    """Refuse, before any work, an utterance longer than the encoder's positions cover: the model would fail on it
    mid-run. (`load_manifest(max_seconds=...)` drops such lines at load, as bad lines.)"""
    limit = max_encoder_seconds(model, processor)
    for utterance in utterances:
        seconds = _duration(utterance)
        if seconds > limit:
            positions = model.config.audio_config.max_position_embeddings
            raise SettingError(
                f"{utterance.audio}: {seconds:.1f} s of audio, longer than the {limit:.1f} s that the encoder's "
                f"{positions} positions cover; split it, or leave it out ({{max_seconds}} of load_manifest, at most "
                f"{limit:.1f})",
                max_seconds=NAMED,
            )  # fmt: skip


class BatchPlan:
    """The order training batches come in: epoch after epoch of length-bucketed batches (`bucket_batches`, seeded
    with `seed + epoch`). A position `(epoch, index)` names the next batch; it is all a checkpoint needs."""

    def __init__(self, durations: Sequence[float], batch_size: int, seed: int):
        self.durations = list(durations)
        self.batch_size = batch_size
        self.seed = seed
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs[epoch] = bucket_batches(self.durations, self.batch_size, seed=self.seed + epoch)
        return self._epochs[epoch]

    def advance(self, position: tuple[int, int], batches: int) -> tuple[int, int]:
        """The position `batches` batches after `position`."""
        epoch, index = position[0], position[1] + batches
        while index >= len(self.epoch(epoch)):
            index -= len(self.epoch(epoch))
            epoch += 1
        return epoch, index

    def stream(self, position: tuple[int, int], rank: int = 0, world: int = 1) -> Iterator[list[int]]:
        """The batches from `position` on, forever; of every `world` consecutive ones, the `rank`-th."""
        epoch, index = position
        count = 0
        while True:
            for batch in self.epoch(epoch)[index:]:
                if count % world == rank:
                    yield batch
                count += 1
            epoch, index = epoch + 1, 0


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _scores(refs: list[str], hyps: list[str], languages: list[str | None]) -> dict[str, float]:
    metrics = {"cer": cer(refs, hyps), "wer": wer(refs, hyps, languages)}
    for language in sorted({lang for lang in languages if lang is not None}):
        pick = [i for i, lang in enumerate(languages) if lang == language]
        metrics[f"cer/{language}"] = cer([refs[i] for i in pick], [hyps[i] for i in pick])
        metrics[f"wer/{language}"] = wer([refs[i] for i in pick], [hyps[i] for i in pick], language)
    return metrics


@torch.no_grad()
def evaluate(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    utterances: Sequence[Utterance],
    *,
    batch_size: int = 16,
    loss_fn: LossFunction | None = supervised_loss,
) -> Evaluation:
    """CER and WER of greedy batched transcription (`funasr_swap.metrics`), and `loss_fn` averaged over the
    supervised tokens (None: no loss pass, which is a full-vocabulary LM head over every supervised token); leaves
    the model in eval mode.

    Each utterance is transcribed with the prompt it trains with (`Utterance.asr_task`: plain, or naming the
    language), so the loss and the error rates measure the same task.

    Answers are cut at twice the longest reference in tokens plus 8: an untrained model that never says its stop
    token then costs a little more than a correct one, not `transcribe`'s 512 tokens per utterance.

    Every utterance is scored, up to the length the encoder's positions cover (a longer one raises ValueError
    naming it, before any work); the manifest's `max_seconds` decides which clips come in.
    """
    if not utterances:
        raise ValueError("evaluate: no utterances")
    _check_audio_lengths(model, processor, utterances)
    fill_gaps(model)
    model.eval()
    refs = [u.text for u in utterances]
    metrics = {}
    if loss_fn is not None:
        collate = AsrCollator(processor)
        total, count = 0.0, 0
        for start in range(0, len(utterances), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(utterances[start : start + batch_size]).items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += loss_fn(model, batch).item() * n
            count += n
        metrics["loss"] = total / count  # mean over the set's supervised tokens

    max_new_tokens = 2 * max(len(ids) for ids in processor.tokenizer(refs)["input_ids"]) + 8
    hyps = [""] * len(utterances)
    # the prompt each utterance was trained with: plain, or naming its language (Utterance.asr_task)
    for language in sorted({u.asr_task.language for u in utterances}, key=str):
        pick = [i for i, u in enumerate(utterances) if u.asr_task.language == language]
        transcripts = transcribe(
            model, processor, [utterances[i].audio for i in pick], language=language, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_audio_seconds=max_encoder_seconds(model, processor), progress=False,
        )  # fmt: skip
        for i, transcript in zip(pick, transcripts):
            hyps[i] = transcript.text
    metrics |= _scores(refs, hyps, [u.language for u in utterances])
    return Evaluation(metrics, hyps)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, by step."""
    steps = {}
    for folder in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = folder.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (folder / STATE_FILE).is_file():
            steps[int(suffix)] = folder
    return [steps[step] for step in sorted(steps)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    folders = _checkpoints(Path(output_dir))
    return folders[-1] if folders else None


def _rng_state() -> dict:
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
    weights, optimizer_state = _trainable_state(model), _optimizer_state(optimizer)
    if not write:
        return
    with atomic_folder(folder) as tmp:
        save_file(weights, tmp / WEIGHTS_FILE)
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
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
            trainable[name].copy_(_shard_like(tensor, trainable[name]))  # FSDP: this process's shard
    states = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    _load_optimizer_state(optimizer, states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    _set_rng_state(torch.load(folder / RNG_FILE, weights_only=True)[rank])
    return state


def _keep_last(output_dir: Path, keep: int) -> None:
    for folder in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(folder)


# ----------------------------------------------------------------------------------------------------------------
# Logs


def read_history(path: str | os.PathLike, up_to_step: int | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (`path`; a line cut by a kill is dropped), optionally only those up to
    a step; none for a file not written yet."""
    path = Path(path)
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or record["step"] <= up_to_step:
                records.append(record)
    return records


def history_figure(records: Sequence[dict]) -> Figure:
    """Training and validation loss, and validation CER, against the step (`read_history`'s records)."""
    from funasr_swap.figures import Figure  # an image in a notebook (matplotlib's, never pyplot's)

    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid/loss" in r or "valid/cer" in r]
    fig = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_cer = fig.subplots(1, 2)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.6)
    if any("valid/loss" in r for r in valid):
        points = [r for r in valid if "valid/loss" in r]
        ax_loss.plot([r["step"] for r in points], [r["valid/loss"] for r in points], "o-", label="valid")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    points = [r for r in valid if "valid/cer" in r]
    ax_cer.plot([r["step"] for r in points], [r["valid/cer"] for r in points], "o-")
    ax_cer.set(xlabel="step", ylabel="CER", title="validation CER")
    return fig


def plot_history(records: Sequence[dict], path: Path) -> None:
    """`history_figure` of `records` written to `path` (PNG)."""
    buffer = io.BytesIO()
    history_figure(records).savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def train(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    train_data: Sequence[Utterance],
    valid_data: Sequence[Utterance] | None,
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    loss_fn: LossFunction = supervised_loss,
) -> TrainResult:
    """Train `model` in place on `train_data`; evaluate on `valid_data` (None: no evaluation); write checkpoints,
    `metrics.jsonl`, `training.png` and the final folder (model + processor) under `config.output_dir`.

    `resume=True` continues from the latest checkpoint in `config.output_dir` (a fresh start when there is none).
    `on_step(step, loss)` runs after each optimizer step's logging and checkpointing, on every process.
    `loss_fn(model, batch)` is the training loss (default `supervised_loss`; the miniature world's `WorldLoss` computes
    the same faster). The global RNGs are seeded from `config.seed` (and restored on resume), as any training script
    does.
    """
    if not train_data:
        raise ValueError("train: no training utterances")
    _check_audio_lengths(model, processor, [*train_data, *(valid_data or ())])
    on_cuda = torch.cuda.is_available()
    accelerator = _accelerator(on_cuda)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp:
        _check_fsdp_config(config, valid_data)
    main = accelerator.is_main_process
    out = config.output_dir
    log_path = out / METRICS_FILE
    set_seed(config.seed)

    # setup: what trains, the DDP-wrapped loss, optimizer and schedule, the data order
    fill_gaps(model)  # a model loaded with stock transformers needs them (idempotent)
    merge_adapters = setup_trainable(model, config)
    for parameter in model.parameters():  # fp32 master weights for what trains; frozen weights keep their dtype
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    # device placement, DDP or FSDP2 (which needs the optimizer with the model: it swaps in sharded parameters)
    loss_module, optimizer = accelerator.prepare(_LossModule(model, loss_fn), _optimizer(model, config))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    plan = BatchPlan([_duration(u) for u in train_data], config.batch_size, config.seed)
    micro_batches = config.grad_accum * accelerator.num_processes  # per optimizer step, all processes together
    step, position = 0, (0, 0)

    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise FileExistsError(f"{out} holds {checkpoint.name}: resume it (resume=True), or use another output_dir")
    if checkpoint is not None:
        state = load_checkpoint(
            checkpoint, model, optimizer, scheduler, config, accelerator.process_index, accelerator.num_processes
        )
        step, position = state["step"], (state["epoch"], state["batch_index"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT_PREFIX}*"):  # temporary folders of saves a kill interrupted
            shutil.rmtree(stale)
        # records after the checkpoint come again; without a checkpoint the run starts over
        atomic_write_lines(log_path, [json.dumps(r) for r in read_history(log_path, up_to_step=step)])
    accelerator.wait_for_everyone()

    encoder = model.model.audio_tower if config.audio_cache == "encoder" else None  # frozen by setup_trainable
    loader = DataLoader(
        train_data,
        batch_sampler=plan.stream(position, accelerator.process_index, accelerator.num_processes),
        collate_fn=AsrCollator(processor, cache=config.audio_cache != "none", encoder=encoder, dither=config.dither),
        num_workers=config.num_workers,
        pin_memory=on_cuda,
        generator=torch.Generator().manual_seed(config.seed),  # its iterator draws a seed: not from the global RNG
    )
    batches = iter(loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    _train_mode(model)
    compiled = on_cuda if config.compile is None else config.compile
    if compiled:
        compile_layers(model)

    def log(record: dict) -> None:
        if main:
            with log_path.open("a") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def run_evaluation() -> None:
        if main and valid_data:
            if compiled:  # generation runs eager: its cache and shapes would recompile every layer
                compile_layers(model, False)
            with accelerator.autocast():
                # the model's own loss, whatever trains it: a training loss may not cover every valid token
                evaluation = evaluate(model, processor, valid_data, batch_size=config.eval_batch_size)
            samples = [
                {"ref": u.text, "hyp": h} for u, h in zip(valid_data, evaluation.hypotheses[: config.log_samples])
            ]
            for sample in samples:
                tqdm.write(f"  ref: {sample['ref']}\n  hyp: {sample['hyp']}")
            metrics = {f"valid/{k}": v for k, v in evaluation.metrics.items()}
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            log({"step": step, **metrics, "samples": samples})
            _train_mode(model)
            if compiled:
                compile_layers(model)
        accelerator.wait_for_everyone()

    # Step records wait on the device: their loss and gradient norm are read (one host sync) every SYNC_EVERY steps,
    # before an evaluation or a checkpoint, and every step for `on_step`; meanwhile the host queues the next steps.
    pending: list[dict] = []
    flushed_at = time.perf_counter()

    def flush() -> float:
        """Log the pending records; the last one's loss."""
        nonlocal flushed_at
        values = torch.stack([torch.stack([r["loss"], r["grad_norm"]]) for r in pending]).tolist()
        now = time.perf_counter()
        for record, (loss_value, norm) in zip(pending, values):
            # the wall time per step since the last read (single steps' times are not seen without a sync each)
            log(record | {"loss": loss_value, "grad_norm": norm, "seconds": (now - flushed_at) / len(pending)})
        pending.clear()
        flushed_at = now
        bar.set_postfix(loss=f"{values[-1][0]:.4f}")
        return values[-1][0]

    bar = tqdm(total=config.max_steps, initial=step, disable=not main, unit="step")
    while step < config.max_steps:
        losses = []
        for micro in range(config.grad_accum):
            # pinned on CUDA: the copy does not wait for the queued steps
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
            # gradients are all-reduced once per step: on the last micro-batch
            sync = micro == config.grad_accum - 1
            with (
                contextlib.nullcontext() if sync else accelerator.no_sync(loss_module),
                precomputed_audio(model) if encoder is not None else contextlib.nullcontext(),
                attention_kernels(),
            ):
                loss = loss_module(batch)
                accelerator.backward(loss / config.grad_accum)
            losses.append(loss.detach())
        grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm or math.inf)
        lr = scheduler.get_last_lr()[0]  # the rate of this step
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        position = plan.advance(position, micro_batches)

        mean_loss = accelerator.reduce(torch.stack(losses).mean(), "mean")
        norm = _full(torch.as_tensor(grad_norm, device=mean_loss.device)).float()  # FSDP: a replicated DTensor
        pending.append({"step": step, "loss": mean_loss.float(), "lr": lr, "grad_norm": norm})
        bar.update(1)
        last = step == config.max_steps
        evaluating = (config.eval_every and step % config.eval_every == 0) or last
        saving = (config.save_every and step % config.save_every == 0) or last
        if evaluating or saving or on_step is not None or len(pending) >= SYNC_EVERY:
            loss_value = flush()
        if evaluating:
            run_evaluation()
        if saving:
            rng_states = gather_object([_rng_state()])  # every process's, in rank order
            state = {
                "step": step,
                "epoch": position[0],
                "batch_index": position[1],
                "world_size": accelerator.num_processes,
                "config": config.to_dict(),
            }
            # every process: under FSDP the shards are gathered (collectives); only the main process writes
            save_checkpoint(
                out / f"{CHECKPOINT_PREFIX}{step}", model, optimizer, scheduler, rng_states, state, write=main
            )
            if main:
                _keep_last(out, config.keep_last)
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(step, loss_value)
    bar.close()
    if compiled:
        compile_layers(model, False)

    # the final model: adapters (LoRA, marker rows) merged, so the folder is a stock FunAsrNano one
    model.eval()
    merge_adapters()
    final = out / FINAL_DIR
    history = read_history(log_path) if main else []
    # FSDP: the whole weights, gathered by every process (None elsewhere: the model's own parameters)
    weights = _full_state(model) if fsdp else None
    if main:
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp, state_dict=weights)
            processor.save_pretrained(tmp)
        plot_history(history, out / PLOT_FILE)
    accelerator.wait_for_everyone()
    return TrainResult(final, step, history)
