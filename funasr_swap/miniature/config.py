"""What the miniature world is built from: its settings (`MiniatureConfig`) and the target LLM of each family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from funasr_swap.adaptor_strategies import STRATEGIES, Strategy

__all__ = [
    "DEFAULT_FAMILIES", "FAMILY_LLMS", "FULL_WORLD_MINUTES", "QUICK", "TARGET_CER", "MiniatureConfig",
    "resolve_families",
]  # fmt: skip

# The target LLM of each family, keyed by its chat family (tokenmap.families): the plan's paths (Qwen3 wider, on
# the base's own tokenizer; Llama-3.2; Gemma-2; DeepSeek-V2-Lite, an MoE with MLA).
FAMILY_LLMS = {
    "qwen3": "Qwen3-1.7B", "llama3": "Llama-3.2-1B", "gemma2": "Gemma-2-2B", "deepseek-v2": "DeepSeek-V2-Lite",
}  # fmt: skip
# What the quickstart swaps into unless told otherwise: the cross-family paths. Qwen3 (same family, wider) is built
# when asked for (`--families`, or a notebook that needs it).
DEFAULT_FAMILIES = ("llama3", "gemma2", "deepseek-v2")
TARGET_CER = 0.15
# How long the default world takes from nothing on 2 quiet CPU cores (benchmarks/results/quickstart_seeds.md): the one
# figure the README, the CLI's help and the notebooks (through `open_world`'s message) give.
FULL_WORLD_MINUTES = 13
# The swaps' adaptor inits in the order `compare_init` runs them: bridge (the quickstart's) first, then the library's.
ADAPTOR_INITS: tuple[Strategy, ...] = ("bridge", *(init for init in STRATEGIES if init != "bridge"))


@dataclass(frozen=True)
class MiniatureConfig:
    """Sizes, steps and rates of the miniature world (defaults: the quickstart, chosen over seeds 0-2; seed 0 took
    13 min 20 s and 1,413 CPU seconds on 2 quiet cores, benchmarks/results/quickstart_seeds.md)."""

    utterances: int = 4000  # English clips; 5% valid, 5% test
    valid_utterances: int = 50  # of the valid split, scored during training (test: the whole split, at the end)
    encoder_hidden: int = 96
    encoder_layers: int = 4  # the last one a timestamp layer, as the real 50 + 20
    encoder_heads: int = 4
    # the real encoder's is 0.1; here drawing its masks (aten::bernoulli_) took 21% of a base step on CPU, and
    # without it the base learned faster (valid CER at step 800: 14.0% against 18.4%; test 5.5% against 6.8%; one
    # run each), the swaps too (test 7.6 / 12.7 / 10.8% against 12.8 / 12.1 / 12.9%)
    encoder_dropout: float = 0.0
    projector_hidden: int = 256
    target_width: int = 128  # the targets are twice the base LLM's width (64), as 2048 is to Qwen3-0.6B's 1024
    # copy-task pretraining, per LLM. The base reads its speech through this LLM, so its copy skill bounds the base:
    # at 800 steps seed 2's base LLM copied 97.6% of tokens and its base stalled at 25-26% test CER (seeds 0 and 1:
    # 99.8-100%, 4-6%); at 1,600 steps (with base_ctc_weight) 99.8% and 10.4% (benchmarks/results/quickstart_history.md)
    lm_steps: int = 1600
    lm_batch_size: int = 64
    lm_lr: float = 6e-3
    # the base under-fitted at 1,600 and 2,000 (training loss still falling; its errors were content words swapped
    # for others of their kind, the LLM's guess where the audio was unclear): 1,600 -> 2,000 steps took its test CER
    # over seeds 0 / 1 / 2 from 4.1 / 11.0 / 10.9% to 3.0 / 9.2 / 6.2%, and with the one-thread schedule seed 1's
    # from 13.0% (2,000) to 4.4% (3,000; training loss 0.27 -> 0.03) (quickstart_history.md)
    base_steps: int = 3000
    base_lr: float = 2e-3
    base_eval_every: int = 400
    # `adaptor_ctc_loss` beside the LLM's loss in the base's joint training: it pulls the adaptor's frames onto the
    # LLM's token embeddings, in order (seeds 0-2 with 1,200-step LLMs: test CER 9.1 / 10.3 / 24.9% without, 9.3 /
    # 7.0 / 19.7% at weight 0.3; weight 1.0 hurt: 9.7 / 19.9 / 25.9% with 800-step LLMs)
    base_ctc_weight: float = 0.3
    lora_rank: int = 16
    adaptor_init: Strategy = ADAPTOR_INITS[0]  # bridge: the swaps' adaptor initialisation; compare_init adds the others
    compare_init: bool = False
    adaptor_ctc_weight: float = 1.0  # `adaptor_ctc_loss` beside the LLM's loss in the adaptor retraining
    adaptor_lora_rank: int = 16  # LoRA on the swapped LLM beside the adaptor; 0: the adaptor alone
    # seeds 1 and 2's swaps were still learning at 700 steps (training loss 0.2-0.6, valid CER still falling); the
    # one-thread schedule made the world fast enough for 1,000 (quickstart_history.md)
    adaptor_steps: int = 1000
    adaptor_lr: float = 4e-3
    adaptor_eval_every: int = 175  # the validation curves give the steps to a CER (bridge vs fresh)
    adaptor_batch_size: int = 32
    batch_size: int = 32  # the base's
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.adaptor_init not in ADAPTOR_INITS:
            raise ValueError(f"adaptor_init must be one of {', '.join(ADAPTOR_INITS)}, got {self.adaptor_init!r}")

    @property
    def adaptor_inits(self) -> tuple[Strategy, ...]:
        """The adaptor initialisations each family's swap is trained with, the default one first."""
        others = tuple(init for init in ADAPTOR_INITS if init != self.adaptor_init)
        return (self.adaptor_init, *others) if self.compare_init else (self.adaptor_init,)


# `--quick`: the same pipeline on a handful of clips, for tests and a first look (CER is meaningless here).
QUICK = MiniatureConfig(
    utterances=60, valid_utterances=3, encoder_hidden=32, encoder_layers=2, encoder_heads=2, projector_hidden=32,
    target_width=64, lm_steps=4, lm_batch_size=8, base_steps=2, base_eval_every=1, adaptor_steps=2,
    adaptor_eval_every=1, adaptor_batch_size=8, batch_size=8, warmup_steps=1,
)  # fmt: skip


def resolve_families(names: Sequence[str]) -> list[str]:
    """The target families named by `names`, each a family (`qwen3`, `llama3`, `gemma2`, `deepseek-v2`) or the
    registry name of its target LLM (`Qwen3-1.7B`, `Llama-3.2-1B`, ...); KeyError naming the unknown ones and the
    choices."""
    by_llm = {llm.lower(): family for family, llm in FAMILY_LLMS.items()}
    families, unknown = [], []
    for name in names:
        family = name if name in FAMILY_LLMS else by_llm.get(name.lower())
        if family is None:
            unknown.append(name)
        elif family not in families:
            families.append(family)
    if unknown:
        choices = ", ".join(f"{family} ({llm})" for family, llm in FAMILY_LLMS.items())
        raise KeyError(f"unknown target families {unknown}; choose from {choices}")
    if not families:
        raise ValueError("no target family given; choose from " + ", ".join(FAMILY_LLMS))
    return families
