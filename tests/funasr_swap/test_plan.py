"""The swap plan: its figures come from the registry's real shapes, its marker strategy from the families."""

from __future__ import annotations

import pytest
import torch
from transformers import FunAsrNanoEncoderConfig
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder

from funasr_swap.llms import LLMS, count_parameters, text_config
from funasr_swap.plan import GIB, adaptor_params, available_memory_gib, inference_gib, model_params, swap_plan
from tokenmap.markers import default_strategy


@pytest.fixture(scope="module")
def rows():
    return {row.llm: row for row in swap_plan()}


def test_one_row_per_registry_llm_with_the_familys_marker_strategy(rows):
    assert list(rows) == list(LLMS)
    for name, row in rows.items():
        assert row.markers == default_strategy(LLMS[name].family)
    assert rows["Llama-3.2-3B"].path == "B" and rows["Qwen3-8B"].path == "A" and rows["Gemma-2-2B"].path == "-"


def test_inference_memory_is_the_bf16_weights_of_encoder_adaptor_and_llm(rows):
    with torch.device("meta"):
        encoder = count_parameters(FunAsrNanoEncoder(FunAsrNanoEncoderConfig()))
    llm = count_parameters(text_config("Llama-3.2-1B"))
    assert model_params("Llama-3.2-1B") == encoder + adaptor_params("Llama-3.2-1B") + llm
    assert rows["Llama-3.2-1B"].inference_gib == inference_gib("Llama-3.2-1B") == 2 * model_params("Llama-3.2-1B") / GIB
    assert 1200 < rows["DeepSeek-V3"].inference_gib < 1300  # 671B parameters
    row = rows["Qwen3-8B"]
    assert row.training_gib - row.inference_gib == pytest.approx(16 * row.adaptor_params_after / GIB)


def test_available_memory_is_positive_and_below_the_total():
    import psutil

    assert 0 < available_memory_gib() <= psutil.virtual_memory().total / GIB
