"""The swap plan: for every registry LLM, what swapping it into Fun-ASR-Nano changes and costs.

Computed, not typed in: widths and parameter counts come from the registry's real-shape configs built on the meta
device, marker strategies from the tokenizer families, memory from parameter counts (bf16 weights; adaptor training
adds fp32 master weights, gradients and AdamW moments for the adaptor only; activations excluded).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import FunAsrNanoConfig, FunAsrNanoEncoderConfig
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder, FunAsrNanoMultiModalProjector

from funasr_swap.adaptor import adaptor_config_for
from funasr_swap.llms import BASE_LLM, LLMS, count_parameters, get_llm, text_config
from tokenmap.families import get_family
from tokenmap.markers import default_strategy

GIB = 1024**3
# The seed's three migration paths: A stays in the Qwen family, B moves to Llama-3.2-3B, C to an MoE.
MIGRATION_PATHS = {"Llama-3.2-3B": "B", "DeepSeek-V2-Lite": "C"}
ADAPTOR_TRAINING_BYTES = 4 + 4 + 8  # fp32 master copy, gradient, AdamW first and second moments
INFERENCE_BYTES = 2  # bf16 weights


@dataclass(frozen=True)
class PlanRow:
    llm: str
    family: str
    hidden: int
    dim_change: float  # relative change of llm_dim against the source
    adaptor_params_before: int
    adaptor_params_after: int
    tokenizer_work: str
    markers: str
    inference_gib: float
    training_gib: float
    path: str


@functools.cache  # a pure function of the name; the plan reads it twice per row (adaptor and memory columns)
def adaptor_params(llm: str) -> int:
    """Parameters of the real Fun-ASR-Nano adaptor (512 -> 2048 -> llm_dim, 2 blocks) in front of registry LLM `llm`."""
    text = text_config(llm)
    adaptor = adaptor_config_for(text.hidden_size, FunAsrNanoConfig().adaptor_config)
    with torch.device("meta"):
        return count_parameters(
            FunAsrNanoMultiModalProjector(FunAsrNanoConfig(adaptor_config=adaptor, text_config=text))
        )


def model_params(llm: str) -> int:
    """Parameters of a real-shape Fun-ASR-Nano around registry LLM `llm`: encoder, adaptor at its width, the LLM."""
    return _encoder_params() + adaptor_params(llm) + count_parameters(text_config(llm))


@functools.cache  # the same real-shape encoder in front of every LLM: built once, not once per plan row
def _encoder_params() -> int:
    with torch.device("meta"):
        return count_parameters(FunAsrNanoEncoder(FunAsrNanoEncoderConfig()))


def inference_gib(llm: str) -> float:
    """The plan's inference memory of a real-shape Fun-ASR-Nano around registry LLM `llm`: GiB of its weights in bf16
    (activations excluded)."""
    return INFERENCE_BYTES * model_params(llm) / GIB


def available_memory_gib() -> float:
    """Memory a new allocation can get now without swapping, in GiB (psutil, which accelerate installs)."""
    import psutil

    return psutil.virtual_memory().available / GIB


def swap_plan(source: str = BASE_LLM) -> list[PlanRow]:
    """One `PlanRow` per registry LLM, for a swap away from `source`."""
    src = get_llm(source)
    before = adaptor_params(src.name)
    rows = []
    for spec in LLMS.values():
        family = get_family(spec.family)
        after = adaptor_params(spec.name)
        inference = inference_gib(spec.name)
        rows.append(
            PlanRow(
                llm=spec.name,
                family=family.name,
                hidden=spec.hidden_size,
                dim_change=spec.hidden_size / src.hidden_size - 1,
                adaptor_params_before=before,
                adaptor_params_after=after,
                tokenizer_work="same vocabulary" if spec.tokenizer == src.tokenizer else f"remap to {family.name}",
                markers=default_strategy(family),
                inference_gib=inference,
                training_gib=inference + ADAPTOR_TRAINING_BYTES * after / GIB,
                path="A" if spec.family == src.family else MIGRATION_PATHS.get(spec.name, "-"),
            )
        )
    return rows
