"""The GGUF side of an export: the converter fetched from the pinned sdist, the per-family fixes, clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from funasr_swap import gguf
from funasr_swap.base import tiny_base
from funasr_swap.gguf import GGUF_FAMILIES, LLAMA_CPP_PYTHON_VERSION, converter, gguf_family, stage_llm
from funasr_swap.llms import LLMS
from funasr_swap.swap import swap_llm
from tests.conftest import real_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_the_converters_version_is_the_runtimes_pin():
    edge = re.search(r"^edge = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert edge is not None and f'"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"' in edge.group(1)


def test_every_registry_family_has_a_conversion():
    assert {spec.family for spec in LLMS.values()} <= set(GGUF_FAMILIES)


def test_the_converter_comes_from_the_sdist_with_its_own_gguf_py():
    folder = converter()
    assert (folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert (folder / "conversion" / "gemma.py").is_file()


def test_a_missing_converter_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape("run `funasr-swap fetch-converter` once")):
        converter()


def test_unknown_or_refused_families_are_named(monkeypatch):
    with pytest.raises(ValueError, match="'mistral' family.*supported: \\['deepseek-coder'"):
        gguf_family("mistral")
    monkeypatch.setitem(GGUF_FAMILIES, "llama3", gguf.GgufFamily(refused="no reason"))
    with pytest.raises(ValueError, match="the llama3 family cannot be exported to GGUF: no reason"):
        gguf_family("llama3")


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def test_deepseek_v2s_null_query_rank_is_written_as_zero(base, tmp_path):
    swapped = swap_llm(*base, "DeepSeek-V2-Lite", random_weights="tiny")
    assert swapped.model.config.text_config.q_lora_rank is None
    stage_llm(swapped.model, swapped.processor.tokenizer, "deepseek-v2", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["q_lora_rank"] == 0


def test_a_llama_config_gets_no_query_rank(base, tmp_path):
    swapped = swap_llm(*base, "DeepSeek-7B", random_weights="tiny")  # deepseek-llm is a Llama architecture
    stage_llm(swapped.model, swapped.processor.tokenizer, "deepseek-v2", tmp_path)
    assert "q_lora_rank" not in json.loads((tmp_path / "config.json").read_text())


def test_gemma2_gets_the_real_sentencepiece_model_checked_against_its_tokenizer(base, tmp_path):
    swapped = swap_llm(*base, "Gemma-2-2B", random_weights="tiny")
    stage_llm(swapped.model, swapped.processor.tokenizer, "gemma2", tmp_path / "ok")
    assert (tmp_path / "ok" / "tokenizer.model").is_file() and not (tmp_path / "ok" / "config.json").read_text() == ""
    with pytest.raises(ValueError, match="does not match the model's tokenizer: .* id\\(s\\) differ"):
        stage_llm(swapped.model, real_tokenizer("llama3"), "gemma2", tmp_path / "wrong")


def test_deepseek_v3_routes_with_sigmoid_scores_in_llama_cpp_too(base, tmp_path):
    swapped = swap_llm(*base, "DeepSeek-V3", random_weights="tiny")
    stage_llm(swapped.model, swapped.processor.tokenizer, "deepseek-v3", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["scoring_func"] == "sigmoid"
