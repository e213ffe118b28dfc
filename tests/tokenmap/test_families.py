"""ChatFamily registry: detection from specials and the unused-token tables."""

from __future__ import annotations

import pytest

from tests.conftest import real_tokenizer
from tokenmap.families import FAMILIES, detect_family, get_family


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_is_detected_from_its_real_tokenizer(name: str):
    assert detect_family(real_tokenizer(name)).name == name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_tokens_are_single_tokens_of_the_real_tokenizer(name: str):
    tok = real_tokenizer(name)
    fam = FAMILIES[name]
    for token in (fam.end_of_turn, *fam.stop_tokens, *([fam.bos] if fam.bos else [])):
        assert token in tok.get_vocab(), token


@pytest.mark.parametrize(
    ("name", "first_unused", "count"),
    [
        ("qwen3", ("<|object_ref_start|>", 151646), 11),
        ("llama3", ("<|reserved_special_token_0|>", 128002), 247),
        ("gemma2", ("<unused0>", 7), 100),
        ("deepseek-v3", ("<｜place▁holder▁no▁0｜>", 128000), 798),
    ],
)
def test_unused_special_tokens(name, first_unused, count):
    free = FAMILIES[name].unused_special_tokens(real_tokenizer(name))
    assert free[0] == first_unused
    assert len(free) == count


def test_unknown_family_lists_known_ones():
    with pytest.raises(KeyError, match="qwen3"):
        get_family("vicuna")
