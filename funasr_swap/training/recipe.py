"""Retrain a Fun-ASR-Nano after a swap: one recipe, read top to bottom (torchtune's full_finetune recipe shape).

    setup (`TrainingStep.prepare`) -> (resume: `load_checkpoint`) -> the loop of `TrainingStep`s -> evaluate every
    `eval_every` steps -> `save_checkpoint` every `save_every` steps -> the final `save_pretrained` folder

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
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor, get_cosine_schedule_with_warmup

from funasr_swap.compat import fill_gaps
from funasr_swap.data import AsrCollator, Utterance
from funasr_swap.training.checkpoints import (
    CHECKPOINT_PREFIX,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from funasr_swap.training.config import TrainConfig
from funasr_swap.training.data_order import BatchPlan, check_audio_lengths, utterance_seconds
from funasr_swap.training.distributed import check_fsdp_support, full_state, make_accelerator
from funasr_swap.training.evaluation import evaluate
from funasr_swap.training.history import METRICS_FILE, PLOT_FILE, plot_history, read_history
from funasr_swap.training.step import LossFunction, TrainingStep, compile_layers, supervised_loss, train_mode
from tokenmap.io import atomic_folder, atomic_write_lines

__all__ = ["FINAL_DIR", "SYNC_EVERY", "TrainResult", "train"]

FINAL_DIR = "final"
SYNC_EVERY = 10  # steps between reads of the loss from the device (each read waits for the GPU: a host sync)


@dataclass
class TrainResult:
    final_dir: Path  # save_pretrained folder (model + processor), loadable by load_base
    step: int
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of the whole run


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
    check_audio_lengths(model, processor, [*train_data, *(valid_data or ())])
    on_cuda = torch.cuda.is_available()
    accelerator = make_accelerator(on_cuda)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp:
        check_fsdp_support(config, valid_data)
    out = config.output_dir
    set_seed(config.seed)

    # setup: what trains, the wrapped loss and its optimizer, the schedule, the data order
    fill_gaps(model)  # a model loaded with stock transformers needs them (idempotent)
    training_step = TrainingStep.prepare(model, config, accelerator, loss_fn)
    scheduler = get_cosine_schedule_with_warmup(training_step.optimizer, config.warmup_steps, config.max_steps)
    plan = BatchPlan([utterance_seconds(u) for u in train_data], config.batch_size, config.seed)
    micro_batches = config.grad_accum * accelerator.num_processes  # per optimizer step, all processes together
    step, position = _starting_point(training_step, scheduler, config, resume)
    log = _MetricsLog(out / METRICS_FILE, accelerator.is_main_process)
    batches = _device_batches(model, processor, train_data, plan, position, config, accelerator)
    compiled = on_cuda if config.compile is None else config.compile
    if compiled:
        compile_layers(model)

    bar = tqdm(total=config.max_steps, initial=step, disable=not accelerator.is_main_process, unit="step")
    while step < config.max_steps:
        output = training_step(batches)
        lr = scheduler.get_last_lr()[0]  # the rate of this step
        scheduler.step()
        step += 1
        position = plan.advance(position, micro_batches)
        log.queue({"step": step, "loss": output.loss, "lr": lr, "grad_norm": output.grad_norm})
        bar.update(1)
        last = step == config.max_steps
        evaluating = (config.eval_every and step % config.eval_every == 0) or last
        saving = (config.save_every and step % config.save_every == 0) or last
        if evaluating or saving or on_step is not None or log.queued >= SYNC_EVERY:
            loss_value = log.flush()
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if evaluating:
            _evaluate(model, processor, valid_data, config, step, log, accelerator, compiled)
        if saving:
            _save(training_step, scheduler, config, step, position)
        if on_step is not None:
            on_step(step, loss_value)
    bar.close()
    if compiled:
        compile_layers(model, False)
    return _save_final(training_step, processor, config, fsdp, step)


def _starting_point(
    training_step: TrainingStep,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    resume: bool,
) -> tuple[int, tuple[int, int]]:
    """The step and data position the run starts from: the latest checkpoint's, loaded into the run, when `resume`
    (a checkpoint without `resume` is refused), else the beginning. The output folder is made ready: temporary
    folders of saves a kill interrupted removed, the log cut back to the step (records after the checkpoint come
    again; without a checkpoint the run starts over)."""
    out, accelerator = config.output_dir, training_step.accelerator
    step, position = 0, (0, 0)
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise FileExistsError(f"{out} holds {checkpoint.name}: resume it (resume=True), or use another output_dir")
    if checkpoint is not None:
        state = load_checkpoint(
            checkpoint, training_step.model, training_step.optimizer, scheduler, config, accelerator.process_index,
            accelerator.num_processes,
        )  # fmt: skip
        step, position = state["step"], (state["epoch"], state["batch_index"])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT_PREFIX}*"):  # temporary folders of saves a kill interrupted
            shutil.rmtree(stale)
        log_path = out / METRICS_FILE
        atomic_write_lines(log_path, [json.dumps(r) for r in read_history(log_path, up_to_step=step)])
    accelerator.wait_for_everyone()
    return step, position


def _device_batches(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    train_data: Sequence[Utterance],
    plan: BatchPlan,
    position: tuple[int, int],
    config: TrainConfig,
    accelerator: Accelerator,
) -> Iterator[dict[str, torch.Tensor]]:
    """This process's micro-batches from `position` on, forever: collated (in `num_workers` DataLoader processes,
    through the audio cache when asked for) and moved to the device."""
    on_cuda = accelerator.device.type == "cuda"
    encoder = model.model.audio_tower if config.audio_cache == "encoder" else None  # frozen by setup_trainable
    loader = DataLoader(
        train_data,
        batch_sampler=plan.stream(position, accelerator.process_index, accelerator.num_processes),
        collate_fn=AsrCollator(processor, cache=config.audio_cache != "none", encoder=encoder, dither=config.dither),
        num_workers=config.num_workers,
        pin_memory=on_cuda,
        generator=torch.Generator().manual_seed(config.seed),  # its iterator draws a seed: not from the global RNG
    )
    for batch in loader:
        # pinned on CUDA: the copy does not wait for the queued steps
        yield {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}


class _MetricsLog:
    """The run's metrics.jsonl, written by the main process. Step records wait on the device (`queue`): their loss
    and gradient norm are read (one host sync) at `flush`, every `SYNC_EVERY` steps, before an evaluation or a
    checkpoint, and every step for `on_step`; meanwhile the host queues the next steps."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main
        self.pending: list[dict] = []
        self.flushed_at = time.perf_counter()

    @property
    def queued(self) -> int:
        return len(self.pending)

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def queue(self, record: dict) -> None:
        self.pending.append(record)

    def flush(self) -> float:
        """Write the queued records; the last one's loss."""
        values = torch.stack([torch.stack([r["loss"], r["grad_norm"]]) for r in self.pending]).tolist()
        now = time.perf_counter()
        for record, (loss_value, norm) in zip(self.pending, values):
            # the wall time per step since the last read (single steps' times are not seen without a sync each)
            self.write(
                record | {"loss": loss_value, "grad_norm": norm, "seconds": (now - self.flushed_at) / len(values)}
            )
        self.pending.clear()
        self.flushed_at = now
        return values[-1][0]


def _evaluate(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    valid_data: Sequence[Utterance] | None,
    config: TrainConfig,
    step: int,
    log: _MetricsLog,
    accelerator: Accelerator,
    compiled: bool,
) -> None:
    """Evaluate on the main process (`evaluate`, the model's own loss), print and log the scores and a few
    transcripts, and put the model back into training."""
    if accelerator.is_main_process and valid_data:
        if compiled:  # generation runs eager: its cache and shapes would recompile every layer
            compile_layers(model, False)
        with accelerator.autocast():
            # the model's own loss, whatever trains it: a training loss may not cover every valid token
            evaluation = evaluate(model, processor, valid_data, batch_size=config.eval_batch_size)
        samples = [{"ref": u.text, "hyp": h} for u, h in zip(valid_data, evaluation.hypotheses[: config.log_samples])]
        for sample in samples:
            tqdm.write(f"  ref: {sample['ref']}\n  hyp: {sample['hyp']}")
        metrics = {f"valid/{k}": v for k, v in evaluation.metrics.items()}
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        log.write({"step": step, **metrics, "samples": samples})
        train_mode(model)
        if compiled:
            compile_layers(model)
    accelerator.wait_for_everyone()


def _save(
    training_step: TrainingStep,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    step: int,
    position: tuple[int, int],
) -> None:
    """Checkpoint `step` (every process: under FSDP the shards are gathered; the main process writes), keeping
    the last `keep_last`."""
    accelerator = training_step.accelerator
    rng_states = gather_object([rng_state()])  # every process's, in rank order
    state = {
        "step": step,
        "epoch": position[0],
        "batch_index": position[1],
        "world_size": accelerator.num_processes,
        "config": config.to_dict(),
    }
    save_checkpoint(
        config.output_dir / f"{CHECKPOINT_PREFIX}{step}", training_step.model, training_step.optimizer, scheduler,
        rng_states, state, write=accelerator.is_main_process,
    )  # fmt: skip
    if accelerator.is_main_process:
        prune_checkpoints(config.output_dir, config.keep_last)
    accelerator.wait_for_everyone()


def _save_final(
    training_step: TrainingStep, processor: FunAsrNanoProcessor, config: TrainConfig, fsdp: bool, step: int
) -> TrainResult:
    """The final model, adapters (LoRA, marker rows) merged so that the folder is a stock FunAsrNano one, with the
    processor; the history plot."""
    model, accelerator, out = training_step.model, training_step.accelerator, config.output_dir
    main = accelerator.is_main_process
    model.eval()
    training_step.merge_adapters()
    final = out / FINAL_DIR
    history = read_history(out / METRICS_FILE) if main else []
    # FSDP: the whole weights, gathered by every process (None elsewhere: the model's own parameters)
    weights = full_state(model) if fsdp else None
    if main:
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp, state_dict=weights)
            processor.save_pretrained(tmp)
        plot_history(history, out / PLOT_FILE)
    accelerator.wait_for_everyone()
    return TrainResult(final, step, history)
