"""The miniature's settings and the naming of its target families."""

from __future__ import annotations

import pytest

from funasr_swap.miniature import DEFAULT_FAMILIES, FAMILY_LLMS, MiniatureConfig, resolve_families


def test_families_are_named_by_family_or_by_their_llm():
    assert resolve_families(["llama3", "Gemma-2-2B", "deepseek-v2", "llama-3.2-1b"]) == [
        "llama3", "gemma2", "deepseek-v2",
    ]  # fmt: skip
    assert resolve_families(["Qwen3-1.7B"]) == ["qwen3"]
    assert set(FAMILY_LLMS) == {"qwen3", "llama3", "gemma2", "deepseek-v2"}
    assert DEFAULT_FAMILIES == ("llama3", "gemma2", "deepseek-v2")  # path A (qwen3) only when asked for


def test_an_unknown_family_names_itself_and_the_choices():
    with pytest.raises(KeyError, match=r"mistral.*llama3 \(Llama-3.2-1B\)"):
        resolve_families(["llama3", "mistral"])
    with pytest.raises(ValueError, match="no target family"):
        resolve_families([])


def test_one_adaptor_init_by_default_all_when_compared():
    assert MiniatureConfig().adaptor_inits == ("bridge",)
    assert MiniatureConfig(compare_init=True).adaptor_inits == ("bridge", "fresh", "vocab")
    assert MiniatureConfig(adaptor_init="vocab", compare_init=True).adaptor_inits == ("vocab", "bridge", "fresh")
    with pytest.raises(ValueError, match="adaptor_init"):
        MiniatureConfig(adaptor_init="random")
