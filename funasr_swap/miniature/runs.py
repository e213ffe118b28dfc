"""The miniature's training runs: the base trained jointly, and each swap's adaptor retraining, with test scores.

Each run trains in its own folder through `funasr_swap.training.train` (an interrupted run resumes from its
checkpoint), is scored on the test split, and writes `result.json` last: a folder with it holds a finished run,
which `cached_run` reads back before any model is built.

Speed: the encoder is frozen in the swaps, so its outputs are computed once per clip and stand in for it in later
epochs (`TrainConfig.audio_cache="encoder"`); the base, which trains its encoder, keeps each clip's fbank features
("features").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from funasr_swap.compat import NO_HUB_KERNELS
from funasr_swap.llms import BASE_LLM, get_llm
from funasr_swap.miniature.config import FAMILY_LLMS, MiniatureConfig
from funasr_swap.miniature.world_loss import WorldLoss
from tokenmap.io import atomic_write_lines

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

    from funasr_swap.data import Utterance
    from funasr_swap.swap import SwappedModel
    from funasr_swap.training import LoraSettings, TrainConfig

__all__ = [
    "RESULT_FILE", "RunResult", "build_base", "cached_run", "load_corpus", "retrain_adaptor", "swap_into", "train_base",
    "train_swap",
]  # fmt: skip

RESULT_FILE = "result.json"  # written last: its presence marks a finished run


def build_base(
    llm_folder: str | os.PathLike, config: MiniatureConfig = MiniatureConfig()
) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor]:
    """The miniature base: `tiny_base` with `config`'s encoder sizes, its Qwen3 LLM replaced by the pretrained one
    in `llm_folder` (`pretrain_llm(BASE_LLM, ..., width=64)`: the shape `tiny_base` builds)."""
    from transformers import AutoModelForCausalLM

    from funasr_swap.base import tiny_base

    model, processor = tiny_base(
        seed=config.seed, hidden_size=config.encoder_hidden, num_layers=config.encoder_layers,
        num_attention_heads=config.encoder_heads, projector_hidden_size=config.projector_hidden,
        encoder_dropout=config.encoder_dropout,
    )  # fmt: skip
    llm = AutoModelForCausalLM.from_pretrained(llm_folder, **NO_HUB_KERNELS)
    model.model.language_model.load_state_dict(llm.base_model.state_dict())  # strict: the same tiny Qwen3 shape
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    return model, processor


@dataclass
class RunResult:
    """One training run of the miniature and its test scores."""

    name: str  # "base", "llama3 bridge", ...
    llm: str
    family: str
    strategy: str  # "joint" for the base, else the adaptor initialisation
    trainable: int  # parameters trained
    steps: int
    seconds: float  # training wall time, validation included
    start_cer: float | None  # validation CER at step 0 (swaps: right after the swap); None for the base
    test_cer: float
    test_wer: float
    history: list[dict]  # the trainer's metrics.jsonl records

    @property
    def valid_curve(self) -> list[tuple[int, float]]:
        """(step, validation CER) in order; step 0 is `start_cer` where there is one (a swap, before training)."""
        start = [] if self.start_cer is None else [(0, self.start_cer)]
        return start + [(r["step"], r["valid/cer"]) for r in self.history if "valid/cer" in r]

    def steps_to(self, cer: float) -> int | None:
        """The first step of `valid_curve` whose CER is at most `cer` (0: right after the swap), or None."""
        return first_step_at_most(self.valid_curve, cer)


def first_step_at_most(curve: Iterable[tuple[int, float]], cer: float) -> int | None:
    """The first step of `curve` ((step, validation CER) pairs, in order) whose CER is at most `cer`, or None."""
    return next((step for step, value in curve if value <= cer), None)


def load_corpus(folder: str | os.PathLike, config: MiniatureConfig) -> dict[str, list]:
    """The corpus' utterances per split; "valid" is the subset scored during training (it runs often)."""
    from funasr_swap.data import load_manifest

    data = {split: load_manifest(Path(folder) / f"{split}.jsonl").utterances for split in ("train", "valid", "test")}
    data["valid"] = data["valid"][: config.valid_utterances]
    return data


def cached_run(folder: str | os.PathLike) -> RunResult | None:
    """The result of a finished run in `folder` (its `result.json`), or None."""
    cached = Path(folder) / RESULT_FILE
    return RunResult(**json.loads(cached.read_text())) if cached.is_file() else None


def _train_and_test(
    run: RunResult,
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    data: dict[str, list],
    train_config: TrainConfig,
    ctc_weight: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """`funasr_swap.training.train` with the world loss (`on_step` after each step), then the test CER: `run` filled in
    and written as `result.json`, the run folder's last file."""
    from funasr_swap.training import evaluate, train

    def count_trainable(step: int, loss: float) -> None:  # once the trainer has set what trains (LoRA included)
        if not run.trainable:
            run.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if on_step is not None:
            on_step(step, loss)

    began = time.perf_counter()
    result = train(
        model, processor, data["train"], data["valid"], train_config, resume=True, loss_fn=WorldLoss(model, ctc_weight),
        on_step=count_trainable,
    )  # fmt: skip
    run.seconds = time.perf_counter() - began
    test = evaluate(model, processor, data["test"], batch_size=train_config.eval_batch_size, loss_fn=None).metrics
    run.steps, run.test_cer, run.test_wer, run.history = result.step, test["cer"], test["wer"], result.history
    atomic_write_lines(Path(train_config.output_dir) / RESULT_FILE, [json.dumps(dataclasses.asdict(run))])
    return run


def _train_config(folder: Path, config: MiniatureConfig, **options) -> TrainConfig:
    from funasr_swap.training import TrainConfig

    return TrainConfig(
        output_dir=folder, warmup_steps=config.warmup_steps, save_every=0, keep_last=1, seed=config.seed,
        eval_batch_size=50, **options,
    )  # fmt: skip


def _lora(rank: int) -> LoraSettings | None:
    """LoRA of `rank` on the registry's targets, every attention and MLP projection of the LLM (alpha 2 x rank);
    None for rank 0."""
    from funasr_swap.training import LoraSettings

    return LoraSettings(r=rank, alpha=2 * rank) if rank else None


def train_base(
    folder: str | os.PathLike, llm_folder: str | os.PathLike, data: dict[str, list], config: MiniatureConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:  # fmt: skip
    """The base trained jointly in `folder`: encoder, adaptor and LoRA on the LLM (the LM head stays frozen:
    `WorldLoss`); its model is `folder/final`. A finished run is read back, not repeated."""
    folder = Path(folder)
    if (run := cached_run(folder)) is not None:  # before building the model
        return run
    model, processor = build_base(llm_folder, config)
    train_config = _train_config(
        folder, config, max_steps=config.base_steps, batch_size=config.batch_size, lr=config.base_lr,
        eval_every=config.base_eval_every, unfreeze_encoder=True, lora=_lora(config.lora_rank), audio_cache="features",
    )  # fmt: skip
    run = RunResult("base", BASE_LLM, get_llm(BASE_LLM).family, "joint", 0, 0, 0.0, None, math.nan, math.nan, [])
    return _train_and_test(run, model, processor, data, train_config, config.base_ctc_weight, on_step=on_step)


def swap_into(
    base_folder: str | os.PathLike, llm_folder: str | os.PathLike, strategy: str, config: MiniatureConfig,
    clips: Sequence[Utterance] = (),
) -> SwappedModel:  # fmt: skip
    """The trained base in `base_folder` with its LLM swapped for the pretrained tiny LLM in `llm_folder`: its
    family's default marker strategy, the adaptor initialised by `strategy` (`bridge`, `fresh`, or `vocab`,
    which reads the base's frames of `clips`: training utterances)."""
    from funasr_swap.convert import load_base
    from funasr_swap.swap import swap_llm

    base, processor = load_base(base_folder)
    with warnings.catch_warnings():
        # the tiny LLMs are registry shapes scaled down: load_llm warns that no registry entry has their shape
        warnings.filterwarnings("ignore", message=r".*is not in the funasr_swap LLM registry.*")
        return swap_llm(base, processor, llm_folder, strategy=strategy, seed=config.seed, clips=clips)


def retrain_adaptor(
    swapped: SwappedModel, folder: str | os.PathLike, data: dict[str, list], config: MiniatureConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:  # fmt: skip
    """Retrain the adaptor of `swapped` (a swap of the miniature base) in `folder`: encoder and LLM frozen, `config`
    may add LoRA on the LLM and the CTC loss; `on_step(step, loss)` after each step (e.g. a `LiveTrainingPlot`).
    Writes the swap's report (`SWAP_REPORT.md`, `swap_report.json`) first and `result.json` last; the model is
    `folder/final`."""
    from funasr_swap.swap import SWAP_REPORT_JSON, SWAP_REPORT_MD
    from funasr_swap.training import evaluate

    folder, report = Path(folder), swapped.report
    atomic_write_lines(folder / SWAP_REPORT_MD, [report.to_markdown()])
    atomic_write_lines(folder / SWAP_REPORT_JSON, [json.dumps(dataclasses.asdict(report), indent=2)])
    start = evaluate(swapped.model, swapped.processor, data["valid"], batch_size=50, loss_fn=None).metrics["cer"]
    train_config = _train_config(
        folder, config, max_steps=config.adaptor_steps, batch_size=config.adaptor_batch_size, lr=config.adaptor_lr,
        eval_every=config.adaptor_eval_every, trainable_token_ids=tuple(report.added_token_ids),
        lora=_lora(config.adaptor_lora_rank), audio_cache="encoder",
    )  # fmt: skip
    family, strategy = report.family, report.adaptor_strategy
    run = RunResult(f"{family} {strategy}", FAMILY_LLMS[family], family, strategy, 0, 0, 0.0, start, math.nan,
                    math.nan, [])  # fmt: skip
    return _train_and_test(
        run, swapped.model, swapped.processor, data, train_config, config.adaptor_ctc_weight, on_step=on_step
    )


def train_swap(
    base_folder: str | os.PathLike, llm_folder: str | os.PathLike, family: str, strategy: str,
    folder: str | os.PathLike, corpus: str | os.PathLike, config: MiniatureConfig,
) -> RunResult:  # fmt: skip
    """`swap_into` then `retrain_adaptor` in `folder`, on the corpus in `corpus`. A top-level function, so that it
    can run in a worker process; a finished run is read back, not repeated."""
    if (run := cached_run(folder)) is not None:  # before the swap and its test score
        return run
    data = load_corpus(corpus, config)
    swapped = swap_into(base_folder, llm_folder, strategy, config, clips=data["train"])
    return retrain_adaptor(swapped, folder, data, config)


def in_worker(log_file: str | os.PathLike, threads: int, function: Callable, *args):
    """Run `function(*args)` in a worker process: `threads` torch threads, its output (progress bars included) in
    `log_file` rather than interleaved with the other workers'."""
    torch.set_num_threads(threads)
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        return function(*args)
