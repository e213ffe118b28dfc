"""SpeechMarkers: reuse picks genuinely unused tokens, add creates loadable new ones."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.conftest import real_tokenizer
from tokenmap.assets import load_tokenizer
from tokenmap.markers import ADDED_END, ADDED_PLACEHOLDER, ADDED_START, default_strategy, resolve_speech_markers


def test_qwen3_base_markers_are_the_checkpoints():
    markers = resolve_speech_markers(real_tokenizer("qwen3"), "reuse")
    assert (markers.placeholder, markers.placeholder_id) == ("<|object_ref_start|>", 151646)
    assert markers.start is None and markers.end is None and markers.added_ids == ()


@pytest.mark.parametrize("name", ["qwen3", "llama3", "gemma2", "mistral", "deepseek-v3"])
def test_reuse_with_boundaries_picks_three_distinct_single_tokens(name: str):
    tok = real_tokenizer(name)
    markers = resolve_speech_markers(tok, "reuse", boundaries=True)
    ids = [markers.placeholder_id, markers.start_id, markers.end_id]
    assert len(set(ids)) == 3
    for token, token_id in markers.tokens.values():
        assert tok(token, add_special_tokens=False).input_ids == [token_id]
    assert markers.audio_span == markers.start + markers.placeholder + markers.end


@pytest.mark.parametrize("name", ["deepseek-v2", "deepseek-llm", "llama2"])
def test_reuse_without_free_tokens_suggests_add(name: str):
    with pytest.raises(ValueError, match="strategy 'add'"):
        resolve_speech_markers(real_tokenizer(name), "reuse")


def test_add_creates_new_special_tokens_that_survive_save_and_load(tmp_path):
    tok = load_tokenizer("deepseek-v2")  # a private copy: `add` mutates the tokenizer
    before = len(tok)
    markers = resolve_speech_markers(tok, "add", boundaries=True)
    assert [m[0] for m in markers.tokens.values()] == [ADDED_PLACEHOLDER, ADDED_START, ADDED_END]
    assert markers.added_ids == (before, before + 1, before + 2)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hi" + markers.audio_span
    assert reloaded(text, add_special_tokens=False).input_ids[-3:] == [before + 1, before, before + 2]
    again = resolve_speech_markers(tok, "add", boundaries=True)  # idempotent: nothing new the second time
    assert again.added_ids == () and again.placeholder_id == markers.placeholder_id


def test_unknown_strategy():
    with pytest.raises(ValueError, match="'reuse' or 'add'"):
        resolve_speech_markers(real_tokenizer("qwen3"), "borrow")


@pytest.mark.parametrize(("name", "strategy"), [("qwen3", "reuse"), ("deepseek-v2", "add")])
def test_no_strategy_means_the_familys_default(name: str, strategy: str):
    tok = load_tokenizer(name)  # a private copy: `add` mutates the tokenizer
    assert resolve_speech_markers(tok, family=name).strategy == strategy == default_strategy(name)
