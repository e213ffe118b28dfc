"""The chat setup saved with a tokenizer: what a swap chose is read back after save and load; without a record, the
family is detected and the placeholder is the only marker."""

from __future__ import annotations

import copy
import re

import pytest
from transformers import AutoTokenizer

from tests.conftest import real_tokenizer
from tokenmap.chat_setup import read_chat_setup, record_chat_setup
from tokenmap.families import FAMILIES, detect_family
from tokenmap.markers import default_strategy, resolve_speech_markers
from tokenmap.prompt import build_chat_template


# a vocabulary of 100k+ tokens takes seconds to save and load: llama3 (reuse) only in the slow runs
@pytest.mark.parametrize(
    ("family", "boundaries"),
    [("deepseek-v2", True), ("deepseek-llm", False), pytest.param("llama3", True, marks=pytest.mark.slow)],
)
def test_a_recorded_setup_survives_save_and_load(tmp_path, family, boundaries):
    tokenizer = copy.deepcopy(real_tokenizer(family))  # `add` markers mutate it
    markers = resolve_speech_markers(tokenizer, default_strategy(family), boundaries=boundaries, family=family)
    tokenizer.chat_template = build_chat_template(family, markers)  # as a swap sets it
    record_chat_setup(tokenizer, family, markers)
    tokenizer.save_pretrained(tmp_path)

    setup = read_chat_setup(AutoTokenizer.from_pretrained(tmp_path), markers.placeholder)
    assert (setup.family, setup.markers, setup.recorded) == (FAMILIES[family], markers, True)


def test_the_record_names_a_family_that_detection_cannot_tell():
    # deepseek-llm and deepseek-v2 share every special token: detection goes by whether a chat template is set
    tokenizer = copy.deepcopy(real_tokenizer("deepseek-llm"))
    markers = resolve_speech_markers(tokenizer, "add", family="deepseek-llm")
    tokenizer.chat_template = build_chat_template("deepseek-llm", markers)
    assert detect_family(tokenizer).name == "deepseek-v2"
    record_chat_setup(tokenizer, "deepseek-llm", markers)
    assert read_chat_setup(tokenizer, markers.placeholder).family.name == "deepseek-llm"


@pytest.mark.parametrize(("family", "placeholder", "strategy"), [("qwen3", "<|object_ref_start|>", "reuse"),
                                                                 ("llama3", "<|speech_pad|>", "add")])  # fmt: skip
def test_without_a_record_the_family_is_detected(family, placeholder, strategy):
    tokenizer = copy.deepcopy(real_tokenizer(family))
    if strategy == "add":
        resolve_speech_markers(tokenizer, "add", family=family)
    setup = read_chat_setup(tokenizer, placeholder)
    assert (setup.family.name, setup.recorded) == (family, False)
    assert (setup.markers.placeholder, setup.markers.strategy, setup.markers.start) == (placeholder, strategy, None)
    assert setup.markers.placeholder_id == tokenizer.convert_tokens_to_ids(placeholder)


def test_a_record_of_another_placeholder_is_refused():
    tokenizer = copy.deepcopy(real_tokenizer("qwen3"))
    record_chat_setup(tokenizer, "qwen3", resolve_speech_markers(tokenizer, "reuse", family="qwen3"))
    with pytest.raises(ValueError, match=re.escape("recorded speech placeholder '<|object_ref_start|>' is not")):
        read_chat_setup(tokenizer, "<|box_start|>")
