"""What a training run depends on: `TrainConfig` (saved in each checkpoint, checked on resume) and `LoraSettings`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from funasr_swap.errors import NAMED, SettingError

__all__ = ["AUDIO_CACHES", "LoraSettings", "TrainConfig"]

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
