"""edge.json: written and read back whole; other versions, broken files and unknown languages refused by name."""

from __future__ import annotations

import json
import re

import pytest

from funasr_swap.edge.config import EDGE_CONFIG, EdgeConfig, HotwordPrompt, TaskPrompt, read_edge_config
from funasr_swap.edge.features import FeatureSettings
from tokenmap.prompt import LANGUAGE_NAMES


def config() -> EdgeConfig:
    prompts = [
        TaskPrompt(language, itn, [1, 2], [3], HotwordPrompt("a[", ", ", "]b"))
        for language in (None, "中文", "英文", "日文")
        for itn in (True, False)
    ]
    return EdgeConfig(
        audio_model="audio.onnx", llm="llm.gguf", outtype="f16", hidden_size=64, audio_embedding_scale=8.0,
        stop_ids=[5, 7], max_audio_seconds=59.9, languages=dict(LANGUAGE_NAMES), control_tokens=["<|im_end|>"],
        features=FeatureSettings(), prompts=prompts, model_card={"family": "gemma2"},
    )  # fmt: skip


def test_written_and_read_back_equal(tmp_path):
    config().write(tmp_path)
    assert read_edge_config(tmp_path) == config()


@pytest.mark.parametrize("language", ["en", "English", "英文", " EN "])
def test_a_language_is_named_as_transcribe_names_it(language):
    expected = TaskPrompt("英文", False, [1, 2], [3], HotwordPrompt("a[", ", ", "]b"))
    assert config().prompt(language, itn=False) == expected


def test_an_unknown_language_is_an_error_listing_the_known():
    with pytest.raises(ValueError, match="unknown language 'klingon'; known: zh, chinese, en"):
        config().prompt("klingon", itn=True)


def test_not_an_export_another_version_or_a_broken_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not an edge export: no edge.json"):
        read_edge_config(tmp_path)
    path = config().write(tmp_path)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "format": 99}))
    with pytest.raises(ValueError, match=f"{path}: not a valid {EDGE_CONFIG} \\(format 99, this runtime reads"):
        read_edge_config(tmp_path)
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "stop_ids"}))
    with pytest.raises(ValueError, match=f"{path}: not a valid {EDGE_CONFIG}"):
        read_edge_config(tmp_path)
    path.write_text("{")
    with pytest.raises(ValueError, match=f"{path}: not a valid {EDGE_CONFIG}"):
        read_edge_config(tmp_path)


def features(**change):
    """An edit of edge.json: its `features` with `change` (None: the field left out)."""
    return lambda raw: {"features": {k: v for k, v in {**raw["features"], **change}.items() if v is not None}}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: {"stop_ids": 151645}, "stop_ids must be a list of integers, got 151645"),
        (lambda raw: {"stop_ids": ["151645"]}, "stop_ids[0] must be an integer, got '151645'"),
        (lambda raw: {"stop_ids": []}, "stop_ids must name at least one token id, got []"),
        (lambda raw: {"hidden_size": "64"}, "hidden_size must be an integer, got '64'"),
        (lambda raw: {"hidden_size": True}, "hidden_size must be an integer, got True"),
        (lambda raw: {"hidden_size": 0}, "hidden_size must be a positive number, got 0"),
        (lambda raw: {"audio_embedding_scale": "8"}, "audio_embedding_scale must be a number, got '8'"),
        (lambda raw: {"languages": ["en"]}, "languages must be an object, got ['en']"),
        (features(sampling_rate="16000"), "features.sampling_rate must be an integer, got '16000'"),
        (features(sampling_rate=16000.0), "features.sampling_rate must be an integer, got 16000.0"),
        (features(sampling_rate=0), "features.sampling_rate must be positive, got 0"),
        (features(lfr_n=-6), "features.lfr_n must be positive, got -6"),
        (features(sampling_rate=None, rate=16000), "features: fields missing: none, unknown: ['rate']"),
        (
            lambda raw: {"prompts": [{**raw["prompts"][0], "before": [1, None]}, *raw["prompts"][1:]]},
            "prompts[0].before[1] must be an integer, got None",
        ),
        (lambda raw: {"prompts": raw["prompts"][1:]}, "prompts have none for language None with itn True"),
    ],
)
def test_a_field_of_the_wrong_type_or_value_is_named(tmp_path, edit, message):
    """The runtime hands these to llama.cpp and onnxruntime, which do not check them: a wrong one is one line here."""
    path = config().write(tmp_path)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, **edit(raw)}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a valid {EDGE_CONFIG} ({message})")):
        read_edge_config(tmp_path)
