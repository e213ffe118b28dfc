"""The LLM registry: every seed LLM a Fun-ASR-Nano swap can target, as plain data.

One `LLMSpec` per model, under a comment linking the `config.json` its numbers come from (litgpt `config.py`
style). Look one up with `get_llm` (short name, HF id or HF repo name, any case), build a `transformers` config of
its real shape with `text_config` (size estimates, random-weight benchmarks; `count_parameters` builds it on the
meta device) or a tiny one of the same class with `tiny_text_config` (tests), and load a user's local checkpoint
with `load_llm`, which checks it against the registry.

Field names follow our own vocabulary (`num_layers`, `context_length`, ...); `_hf_kwargs` is the one place that
maps them to `config.json` keys. MoE and MLA fields keep their `config.json` names and are None for dense models;
`extra` holds the remaining family-specific `config.json` keys that the `transformers` config class reads.
`total_params` / `active_params` are the published figures (model card or HF safetensors metadata); the tests
rebuild every entry on the meta device and check the count against `total_params`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LLMSpec:
    """One seed LLM: identity, tokenizer side, and the shape of its published `config.json`."""

    name: str  # short name, e.g. "Qwen3-0.6B"
    hf_id: str  # Hugging Face repo id
    family: str  # tokenmap chat family: qwen3, llama3, gemma2, deepseek-coder, deepseek-llm, deepseek-v2, deepseek-v3
    tokenizer: str  # tokenmap.assets source name of its real tokenizer
    model_type: str  # config.json "model_type"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int  # dense MLP width (the dense layers' width in MoE models)
    vocab_size: int  # embedding rows of the published checkpoint (often padded beyond the tokenizer's length)
    tie_word_embeddings: bool
    total_params: float
    active_params: float  # parameters used per token; equals total_params for dense models
    context_length: int  # config.json "max_position_embeddings"
    rope_theta: float
    rms_norm_eps: float
    head_dim: int | None = None  # set where config.json carries it (it may differ from hidden_size // num_heads)
    rope_scaling: dict[str, Any] | None = None  # config.json "rope_scaling", with "type" spelled "rope_type"
    # MoE (DeepSeek-V2/V3)
    n_routed_experts: int | None = None
    n_shared_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int | None = None
    # Multi-head latent attention (DeepSeek-V2/V3); q_lora_rank None means an uncompressed query (V2-Lite)
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other config.json keys the transformers class reads

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts is not None

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank is not None


_QWEN3 = dict(
    family="qwen3",
    tokenizer="qwen3",
    model_type="qwen3",
    vocab_size=151936,  # 151,669 tokens, padded
    head_dim=128,
    context_length=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)
# Llama-3.1/3.2: 128,000 ranks + 256 specials; a 128K context through `_llama3_rope_scaling`.
_LLAMA3 = dict(
    family="llama3", tokenizer="llama3", model_type="llama", vocab_size=128256, context_length=131072,
    rope_theta=500_000.0, rms_norm_eps=1e-5,
)  # fmt: skip


def _llama3_rope_scaling(factor: float) -> dict[str, Any]:
    """Llama-3's "llama3" RoPE frequency scaling of its 8K-token pretraining context by `factor` (3.2: 32, 3.1: 8)."""
    return dict(
        rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )  # fmt: skip


_GEMMA2 = dict(
    family="gemma2",
    tokenizer="gemma2",
    model_type="gemma2",
    vocab_size=256000,
    head_dim=256,
    tie_word_embeddings=True,
    context_length=8192,
    rope_theta=10_000.0,
    rms_norm_eps=1e-6,
)
# Gemma-2 2B/9B scale queries by head_dim**-0.5 (query_pre_attn_scalar = head_dim; 27B differs), soft-cap the
# attention logits at 50 and the final logits at 30, and alternate 4096-token sliding-window and global layers.
_GEMMA2_EXTRA = dict(
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    sliding_window=4096,
    hidden_activation="gelu_pytorch_tanh",
)

LLMS: dict[str, LLMSpec] = {
    s.name: s
    for s in [
        # https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json
        LLMSpec(
            name="Qwen3-0.6B",
            hf_id="Qwen/Qwen3-0.6B",
            **_QWEN3,
            hidden_size=1024,
            num_layers=28,
            num_heads=16,
            num_kv_heads=8,
            intermediate_size=3072,
            tie_word_embeddings=True,
            total_params=0.6e9,
            active_params=0.6e9,
        ),
        # https://huggingface.co/Qwen/Qwen3-1.7B/blob/main/config.json
        LLMSpec(
            name="Qwen3-1.7B",
            hf_id="Qwen/Qwen3-1.7B",
            **_QWEN3,
            hidden_size=2048,
            num_layers=28,
            num_heads=16,
            num_kv_heads=8,
            intermediate_size=6144,
            tie_word_embeddings=True,
            total_params=1.7e9,
            active_params=1.7e9,
        ),
        # https://huggingface.co/Qwen/Qwen3-4B/blob/main/config.json
        LLMSpec(
            name="Qwen3-4B",
            hf_id="Qwen/Qwen3-4B",
            **_QWEN3,
            hidden_size=2560,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=9728,
            tie_word_embeddings=True,
            total_params=4.0e9,
            active_params=4.0e9,
        ),
        # https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json
        LLMSpec(
            name="Qwen3-8B",
            hf_id="Qwen/Qwen3-8B",
            **_QWEN3,
            hidden_size=4096,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=12288,
            tie_word_embeddings=False,
            total_params=8.2e9,
            active_params=8.2e9,
        ),
        # https://huggingface.co/Qwen/Qwen3-14B/blob/main/config.json
        LLMSpec(
            name="Qwen3-14B",
            hf_id="Qwen/Qwen3-14B",
            **_QWEN3,
            hidden_size=5120,
            num_layers=40,
            num_heads=40,
            num_kv_heads=8,
            intermediate_size=17408,
            tie_word_embeddings=False,
            total_params=14.8e9,
            active_params=14.8e9,
        ),
        # https://huggingface.co/Qwen/Qwen3-32B/blob/main/config.json
        LLMSpec(
            name="Qwen3-32B",
            hf_id="Qwen/Qwen3-32B",
            **_QWEN3,
            hidden_size=5120,
            num_layers=64,
            num_heads=64,
            num_kv_heads=8,
            intermediate_size=25600,
            tie_word_embeddings=False,
            total_params=32.8e9,
            active_params=32.8e9,
        ),
        # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
        LLMSpec(
            name="Llama-3.2-1B",
            hf_id="meta-llama/Llama-3.2-1B",
            **_LLAMA3,
            hidden_size=2048,
            num_layers=16,
            num_heads=32,
            num_kv_heads=8,
            head_dim=64,
            intermediate_size=8192,
            tie_word_embeddings=True,
            total_params=1.24e9,
            active_params=1.24e9,
            rope_scaling=_llama3_rope_scaling(32.0),
        ),
        # https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json
        LLMSpec(
            name="Llama-3.2-3B",
            hf_id="meta-llama/Llama-3.2-3B",
            **_LLAMA3,
            hidden_size=3072,
            num_layers=28,
            num_heads=24,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=8192,
            tie_word_embeddings=True,
            total_params=3.21e9,
            active_params=3.21e9,
            rope_scaling=_llama3_rope_scaling(32.0),
        ),
        # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
        LLMSpec(
            name="Llama-3.1-8B",
            hf_id="meta-llama/Llama-3.1-8B",
            **_LLAMA3,
            hidden_size=4096,
            num_layers=32,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            tie_word_embeddings=False,
            total_params=8.03e9,
            active_params=8.03e9,
            rope_scaling=_llama3_rope_scaling(8.0),
        ),
        # https://huggingface.co/google/gemma-2-2b/blob/main/config.json
        LLMSpec(
            name="Gemma-2-2B",
            hf_id="google/gemma-2-2b",
            **_GEMMA2,
            hidden_size=2304,
            num_layers=26,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=9216,
            total_params=2.61e9,
            active_params=2.61e9,
            extra=_GEMMA2_EXTRA,
        ),
        # https://huggingface.co/google/gemma-2-9b/blob/main/config.json
        LLMSpec(
            name="Gemma-2-9B",
            hf_id="google/gemma-2-9b",
            **_GEMMA2,
            hidden_size=3584,
            num_layers=42,
            num_heads=16,
            num_kv_heads=8,
            intermediate_size=14336,
            total_params=9.24e9,
            active_params=9.24e9,
            extra=_GEMMA2_EXTRA,
        ),
        # https://huggingface.co/deepseek-ai/deepseek-coder-1.3b-base/blob/main/config.json
        # LlamaForCausalLM; 32,022 tokens padded to 32,256 rows; 16K context by linear RoPE interpolation (x4).
        # total_params: HF safetensors metadata (1.35B; the name says 1.3B).
        LLMSpec(
            name="DeepSeek-Coder-1.3B",
            hf_id="deepseek-ai/deepseek-coder-1.3b-base",
            family="deepseek-coder",
            tokenizer="deepseek-coder",
            model_type="llama",
            hidden_size=2048,
            num_layers=24,
            num_heads=16,
            num_kv_heads=16,
            intermediate_size=5504,
            vocab_size=32256,
            tie_word_embeddings=False,
            total_params=1.35e9,
            active_params=1.35e9,
            context_length=16384,
            rope_theta=100_000.0,
            rms_norm_eps=1e-6,
            rope_scaling=dict(rope_type="linear", factor=4.0),
        ),
        # https://huggingface.co/deepseek-ai/deepseek-llm-7b-base/blob/main/config.json
        # LlamaForCausalLM; 100,015 tokens padded to 102,400 rows. total_params: HF metadata (6.91B; named 7B).
        # rms_norm_eps 1e-6 could not be confirmed from a vendored copy of the config (shape and vocab were).
        LLMSpec(
            name="DeepSeek-7B",
            hf_id="deepseek-ai/deepseek-llm-7b-base",
            family="deepseek-llm",
            tokenizer="deepseek-llm",
            model_type="llama",
            hidden_size=4096,
            num_layers=30,
            num_heads=32,
            num_kv_heads=32,
            intermediate_size=11008,
            vocab_size=102400,
            tie_word_embeddings=False,
            total_params=6.91e9,
            active_params=6.91e9,
            context_length=4096,
            rope_theta=10_000.0,
            rms_norm_eps=1e-6,
        ),
        # https://huggingface.co/deepseek-ai/DeepSeek-V2-Lite/blob/main/config.json
        # MoE: layer 0 dense, layers 1-26 with 2 shared + 64 routed experts (top-6); MLA without query compression.
        LLMSpec(
            name="DeepSeek-V2-Lite",
            hf_id="deepseek-ai/DeepSeek-V2-Lite",
            family="deepseek-v2",
            tokenizer="deepseek-v2",
            model_type="deepseek_v2",
            hidden_size=2048,
            num_layers=27,
            num_heads=16,
            num_kv_heads=16,
            intermediate_size=10944,
            vocab_size=102400,
            tie_word_embeddings=False,
            total_params=15.7e9,
            active_params=2.4e9,
            context_length=163840,
            rope_theta=10_000.0,
            rms_norm_eps=1e-6,
            rope_scaling=dict(
                rope_type="yarn",
                factor=40.0,
                beta_fast=32,
                beta_slow=1,
                mscale=0.707,
                mscale_all_dim=0.707,
                original_max_position_embeddings=4096,
            ),
            n_routed_experts=64,
            n_shared_experts=2,
            num_experts_per_tok=6,
            moe_intermediate_size=1408,
            first_k_dense_replace=1,
            kv_lora_rank=512,
            q_lora_rank=None,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            # n_group/topk_group not confirmed from a vendored config; "greedy" routing ignores them.
            extra=dict(topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False),
        ),
        # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json
        # MoE: layers 0-2 dense, layers 3-60 with 1 shared + 256 routed experts (top-8 within 4 of 8 groups,
        # sigmoid scores: transformers' DeepseekV3 always routes this way, so "topk_method"/"scoring_func" are not
        # passed). 671B is the main model; the published checkpoint adds a 14B multi-token-prediction layer
        # (685B in all) that transformers does not build.
        LLMSpec(
            name="DeepSeek-V3",
            hf_id="deepseek-ai/DeepSeek-V3",
            family="deepseek-v3",
            tokenizer="deepseek-v3",
            model_type="deepseek_v3",
            hidden_size=7168,
            num_layers=61,
            num_heads=128,
            num_kv_heads=128,
            intermediate_size=18432,
            vocab_size=129280,
            tie_word_embeddings=False,
            total_params=671e9,
            active_params=37e9,
            context_length=163840,
            rope_theta=10_000.0,
            rms_norm_eps=1e-6,
            rope_scaling=dict(
                rope_type="yarn",
                factor=40.0,
                beta_fast=32,
                beta_slow=1,
                mscale=1.0,
                mscale_all_dim=1.0,
                original_max_position_embeddings=4096,
            ),
            n_routed_experts=256,
            n_shared_experts=1,
            num_experts_per_tok=8,
            moe_intermediate_size=2048,
            first_k_dense_replace=3,
            kv_lora_rank=512,
            q_lora_rank=1536,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            extra=dict(n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True),
        ),
    ]
}

BASE_LLM = "Qwen3-0.6B"  # Fun-ASR-Nano's own LLM, the one a swap replaces (its family: `get_llm(BASE_LLM).family`)

# Every spelling get_llm accepts, lower-cased: short name, HF id, and the HF repo name alone.
_INDEX: dict[str, LLMSpec] = {
    key.lower(): spec for spec in LLMS.values() for key in (spec.name, spec.hf_id, spec.hf_id.split("/")[-1])
}


def get_llm(name: str) -> LLMSpec:
    """The registry entry for `name`: short name ("Qwen3-4B"), HF id ("Qwen/Qwen3-4B") or repo name, any case."""
    try:
        return _INDEX[name.lower()]
    except KeyError:
        raise KeyError(f"unknown LLM {name!r}; known: {', '.join(LLMS)}") from None


_MOE_KEYS = (
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "first_k_dense_replace",
)
_MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def _hf_kwargs(spec: LLMSpec) -> dict[str, Any]:
    """`config.json` keys of `spec`, as `AutoConfig.for_model` takes them (transformers 5: `rope_parameters`)."""
    kwargs: dict[str, Any] = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        tie_word_embeddings=spec.tie_word_embeddings,
        max_position_embeddings=spec.context_length,
        rms_norm_eps=spec.rms_norm_eps,
        rope_parameters={"rope_type": "default", **(spec.rope_scaling or {}), "rope_theta": spec.rope_theta},
    )
    if spec.head_dim is not None:
        kwargs["head_dim"] = spec.head_dim
    if spec.is_moe:
        kwargs.update({key: getattr(spec, key) for key in _MOE_KEYS})
    if spec.uses_mla:
        # All five go in, None included: DeepseekV2Config defaults q_lora_rank to 1536, V2-Lite has none.
        kwargs.update({key: getattr(spec, key) for key in _MLA_KEYS})
    kwargs.update(spec.extra)
    return kwargs


# The shapes a registry LLM can be built in with random weights (no checkpoint): `tiny_text_config` or `text_config`.
RandomWeights = Literal["tiny", "real"]


def text_config(name: str, **overrides: Any) -> PreTrainedConfig:
    """A `transformers` config of the real shape of LLM `name` (its `*ForCausalLM` class), `overrides` applied last.

    Building a model from it allocates the full size: use the meta device (`count_parameters`) for estimates.
    """
    from transformers import AutoConfig

    spec = get_llm(name)
    return AutoConfig.for_model(spec.model_type, **{**_hf_kwargs(spec), **overrides})


def tiny_text_config(name: str, width: int = 64, **overrides: Any) -> PreTrainedConfig:
    """A small config of the same class and model_type as LLM `name`, for tests and the miniature world.

    `width` wide, 2 layers, 4 heads (2 KV heads where the real model uses GQA), head_dim width / 4, MLP 2 x width.
    The vocabulary is the published `vocab_size` (the real embedding rows, padding included; always >= the real
    tokenizer's length), so token ids and embedding shapes match real checkpoints of the family. Family structure is
    kept: Gemma-2's soft-capping values and sliding layers (query_pre_attn_scalar = head_dim, as in 2B/9B), the RoPE
    scaling type, tied or untied embeddings. DeepSeek MoE keeps one dense layer then MoE (8 routed experts of width
    / 4, top-2, its shared experts and routing); MLA keeps DeepSeek-V2-Lite's proportions (KV rank, no-position and
    value head dims width / 4, RoPE head dim width / 8), with a compressed query (rank width / 2) only where the
    real model has one. `overrides` apply last.
    """
    spec = get_llm(name)
    heads = 4
    tiny: dict[str, Any] = dict(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads if spec.num_kv_heads == spec.num_heads else heads // 2,
        intermediate_size=2 * width,
    )
    if spec.uses_mla:
        tiny.update(
            kv_lora_rank=width // 4,
            q_lora_rank=None if spec.q_lora_rank is None else width // 2,
            qk_rope_head_dim=width // 8,
            qk_nope_head_dim=width // 4,
            v_head_dim=width // 4,
        )
    else:
        tiny["head_dim"] = width // heads
    if spec.is_moe:
        tiny.update(
            n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=width // 4, first_k_dense_replace=1
        )
        if spec.extra.get("n_group", 1) > 1:
            tiny.update(n_group=4, topk_group=2)  # group-limited routing stays active: 2 of 4 groups of 2 experts
    if "query_pre_attn_scalar" in spec.extra:
        tiny["query_pre_attn_scalar"] = tiny["head_dim"]
    return text_config(name, **{**tiny, **overrides})


def count_parameters(model: torch.nn.Module | PreTrainedConfig) -> int:
    """Parameters of a module, a shared (tied) parameter once; given a text config, of the causal LM
    `AutoModelForCausalLM.from_config` builds from it, built on the meta device (no memory, fast)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not isinstance(model, torch.nn.Module):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model)
    return sum(p.numel() for p in model.parameters())


def active_parameters(config: PreTrainedConfig) -> int:
    """Parameters a token passes through in the causal LM of text config `config`: `count_parameters` less, in
    each MoE layer, the routed experts it is not sent to (DeepSeek: `n_routed_experts - num_experts_per_tok` of
    them, each a gated MLP of width `moe_intermediate_size`); a dense model's total."""
    total = count_parameters(config)
    routed = getattr(config, "n_routed_experts", None)
    if not routed:
        return total
    moe_layers = config.num_hidden_layers - config.first_k_dense_replace  # every layer after the dense ones
    per_expert = 3 * config.hidden_size * config.moe_intermediate_size  # gate, up and down projections
    return total - moe_layers * (routed - config.num_experts_per_tok) * per_expert


_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLA = ("kv_a_proj_with_mqa", "kv_b_proj", "o_proj")  # the query's projections depend on the config: lora_targets
_MLP = ("gate_proj", "up_proj", "down_proj")
# Every attention and MLP projection of each model_type's decoder, by module name (peft `target_modules`). DeepSeek's
# MLA reads keys and values through kv_a_proj_with_mqa and kv_b_proj, and its query through q_proj, or q_a_proj and
# q_b_proj when compressed (q_lora_rank). In DeepSeek's MoE layers, peft (0.21, with transformers 5: its mapping of
# transformers-4 adapters) reads the MLP names as the routed experts' fused weights: LoRA goes there, and the dense
# first layers' MLP and the shared experts stay without it. The miniature's DeepSeek swaps measured this set.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qwen3": _ATTENTION + _MLP,
    "llama": _ATTENTION + _MLP,
    "gemma2": _ATTENTION + _MLP,
    "deepseek_v2": _MLA + _MLP,
    "deepseek_v3": _MLA + _MLP,
}


def lora_targets(config: PreTrainedConfig) -> tuple[str, ...]:
    """The module names LoRA adapts in an LLM of text config `config`: every attention and MLP projection.

    The default of `funasr_swap.training.LoraSettings.target_modules`. A model_type outside the registry raises,
    naming the known ones: pass the module names explicitly then.
    """
    if config.model_type not in LORA_TARGETS:
        raise ValueError(
            f"no LoRA targets known for model_type {config.model_type!r} (known: {', '.join(LORA_TARGETS)}); "
            "pass the module names explicitly (LoraSettings.target_modules, CLI --lora-targets)"
        )
    targets = LORA_TARGETS[config.model_type]
    if targets[: len(_MLA)] == _MLA:
        query = ("q_proj",) if config.q_lora_rank is None else ("q_a_proj", "q_b_proj")
        targets = query + targets
    return targets


def match_llm(config: PreTrainedConfig | dict[str, Any]) -> LLMSpec | None:
    """The registry entry a checkpoint config belongs to, or None.

    By name first: a `_name_or_path` that `get_llm` knows (also as its last path component, e.g. a local copy named
    after the repo). Otherwise by architecture: the one entry with the same model_type, hidden_size and layer count
    (so instruct and fine-tuned variants of a seed model match it). A name match is not checked here: `load_llm`
    compares its shape and fails loudly.
    """
    raw = config if isinstance(config, dict) else config.to_dict()
    name = raw.get("_name_or_path") or ""
    for candidate in (name, Path(name).name):
        if candidate.lower() in _INDEX:
            return _INDEX[candidate.lower()]
    shape = (raw.get("model_type"), raw.get("hidden_size"), raw.get("num_hidden_layers"))
    found = [s for s in LLMS.values() if (s.model_type, s.hidden_size, s.num_layers) == shape]
    return found[0] if len(found) == 1 else None


@dataclass
class LoadedLLM:
    """A user's LLM as `load_llm` returns it; `spec` is its registry entry, None for a model outside the registry."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: LLMSpec | None


def _check_against_spec(folder: Path, raw: dict[str, Any], spec: LLMSpec) -> None:
    for key, expected in (("model_type", spec.model_type), ("hidden_size", spec.hidden_size)):
        if raw.get(key) != expected:
            raise ValueError(
                f"{folder / 'config.json'}: {key} {raw.get(key)!r} != {expected!r} of {spec.name} ({spec.hf_id}), "
                f"which its _name_or_path {raw.get('_name_or_path')!r} names; fix the config or its _name_or_path"
            )


def load_llm(
    folder: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
) -> LoadedLLM:
    """Load a local Hugging Face causal-LM folder (config.json, weights, tokenizer files) and its tokenizer.

    Never downloads and never runs code from the folder (`trust_remote_code=False`). A model that matches a
    registry entry (`match_llm`) must agree with it on model_type and hidden_size; any model must have at least as
    many embedding rows as its tokenizer has tokens. A model outside the registry still loads if transformers has
    a causal-LM class for its model_type, with a warning.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from funasr_swap.compat import NO_HUB_KERNELS
    from tokenmap.assets import load_tokenizer

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: LLM folder not found")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face model folder")
    raw = json.loads(config_file.read_text())
    model_type = raw.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} has no causal-LM class in this transformers "
            f"(trust_remote_code is off); supported: {', '.join(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))}"
        )

    spec = match_llm(raw)
    if spec is None:
        warnings.warn(
            f"{folder}: {model_type} with hidden_size {raw.get('hidden_size')} and {raw.get('num_hidden_layers')} "
            f"layers is not in the funasr_swap LLM registry ({', '.join(LLMS)}); loading it unchecked",
            stacklevel=2,
        )
    else:
        _check_against_spec(folder, raw, spec)

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    tokenizer = load_tokenizer(folder)
    rows = config.get_text_config().vocab_size
    if rows < len(tokenizer):
        raise ValueError(
            f"{config_file}: vocab_size {rows} (embedding rows) < {len(tokenizer)} tokens of the "
            f"tokenizer in {folder}; the tokenizer does not belong to this model, or resize its embeddings first"
        )
    model = AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=dtype, device_map=device_map, trust_remote_code=False, local_files_only=True,
        **NO_HUB_KERNELS,
    )  # fmt: skip
    return LoadedLLM(model=model, tokenizer=tokenizer, spec=spec)
