"""The tokenmap CLI as a new user would try it: commands work, bad input gives one line and exit 1."""

from __future__ import annotations

import functools
import json
import os
import re
import stat

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tests.conftest import real_tokenizer
from tokenmap.assets import load_tokenizer
from tokenmap.cli import CliError, _convert_manifest, _text_controls, app
from tokenmap.families import FAMILIES
from tokenmap.markers import resolve_speech_markers
from tokenmap.vocab_map import VocabMap

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


COMMANDS = ("fetch", "inspect", "specials", "prompt", "add-markers", "build", "convert")


def test_help_lists_commands_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
    assert "Example" in invoke("prompt", "--help").output


def test_options_use_one_vocabulary_with_funasr_swap():
    """`--manifest` is an input JSONL, `-o/--output` the output, `--markers reuse|add` the speech-marker strategy."""
    helps = {command: invoke(command, "--help").output for command in COMMANDS}
    for command, text in helps.items():
        assert "--strategy" not in text and "--jsonl" not in text, command
    assert "--manifest" in helps["convert"] and "--output" in helps["convert"]
    for command in ("prompt", "add-markers"):
        assert "--markers" in helps[command], command
    assert "--strategy" not in invoke("--help").output


def test_inspect_shows_family_and_free_tokens():
    result = invoke("inspect", "llama3")
    assert result.exit_code == 0
    assert "llama3" in result.output and "128,256" in result.output and "reserved_special_token_0" in result.output


def test_specials_side_by_side():
    result = invoke("specials", "qwen3", "gemma2")
    assert result.exit_code == 0
    for expected in ("<|object_ref_start|>", "151646", "<unused0> = 7", "folded into user"):
        assert expected in result.output


def test_prompt_renders_ids_and_target():
    result = invoke("prompt", "qwen3", "--language", "en", "--frames", "2", "--target", "hi")
    assert result.exit_code == 0
    assert "[151646][151646]" in result.output.replace("<|object_ref_start|>", "")
    assert "英文[" in result.output and "hi[6023]<|im_end|>[151645]" in result.output


def test_add_markers_saves_a_loadable_tokenizer(tmp_path):
    out = tmp_path / "tok"
    result = invoke("add-markers", "deepseek-v2", "--markers", "add", "--boundaries", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "added ids [100002, 100003, 100004]" in result.output
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|startofspeech|>") == 100003
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0o700


def test_markers_default_to_the_familys_strategy(tmp_path):
    for family, placeholder in (("deepseek-v2", "<|speech_pad|> = 100002"), ("llama3", "<|reserved_special_token_0|>")):
        result = invoke("add-markers", family, "-o", str(tmp_path / family))
        assert result.exit_code == 0, result.output
        assert placeholder in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/no/such/folder"], "no such file"),
        (["add-markers", "deepseek-v2", "--markers", "reuse", "-o", "TMP/out"], "strategy 'add'"),
        (["add-markers", "qwen3", "--markers", "borrow", "-o", "TMP/out"], "--markers must be reuse or add"),
        (["prompt", "qwen3", "--markers", "borrow"], "--markers must be reuse or add"),
        (["prompt", "vicuna"], "known"),
        (["prompt", "qwen3", "--language", "xx"], "unknown language 'xx'; known: zh, chinese, en, english"),
        # unwritable outputs are refused before any work: the tokenizer and map named here do not even exist
        (["build", "qwen3", "no-such-tokenizer", "-o", "TMP/a-file/q2l.safetensors"], "a-file is a file, not a folder"),
        (["add-markers", "no-such-tokenizer", "-o", "TMP/a-file"], "a-file: exists and is not a folder"),
        (["convert", "TMP/no-map.safetensors", "--manifest", "TMP/m.jsonl", "-o", "TMP/a-file/x.jsonl"], "a-file is a"),
        (["convert", "TMP/empty.safetensors", "1"], "empty.safetensors: empty file, not a vocabulary map"),
        (["convert", "TMP/empty.json", "--manifest", "TMP/m.jsonl", "-o", "TMP/out.jsonl"], "empty.json: empty file"),
        (["convert", "TMP/empty.json", "1", "--manifest", "TMP/m.jsonl", "-o", "TMP/out.jsonl"], "not both"),
        (["convert", "TMP/empty.json", "1", "-o", "TMP/out.jsonl"], "give --manifest FILE or leave -o out"),
        (["convert", "TMP/empty.json", "--manifest", "TMP/m.jsonl"], "--manifest needs -o/--output"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, message, tmp_path):
    (tmp_path / "a-file").write_text("user data")
    (tmp_path / "empty.safetensors").touch()
    (tmp_path / "empty.json").touch()
    (tmp_path / "m.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    before = sorted(tmp_path.iterdir())
    result = invoke(*(arg.replace("TMP", str(tmp_path)) for arg in args))
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert sorted(tmp_path.iterdir()) == before and (tmp_path / "a-file").read_text() == "user data"


@pytest.fixture(scope="module")
def q2l_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "q2l.safetensors"
    VocabMap.build(real_tokenizer("qwen3"), real_tokenizer("llama3")).save(path)
    return path



@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_manifest_fails_as_eval_does_and_writes_nothing(q2l_map, tmp_path, content):
    manifest = tmp_path / "empty.jsonl"
    manifest.write_text(content)
    result = invoke("convert", str(q2l_map), "--manifest", str(manifest), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"error: {manifest}: no lines to convert (the manifest is empty or blank)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]

def test_build_and_convert_ids_and_manifest(tmp_path):
    map_file = tmp_path / "q2l.safetensors"
    result = invoke("build", "qwen3", "llama3", "-o", str(map_file))
    assert result.exit_code == 0, result.output
    assert "exact" in result.output and map_file.is_file()
    result = invoke("convert", str(map_file), "14990", "1879")  # "hello world" in Qwen3
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["15339", "1917"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"ids": [14990, 1879]}\n{"text": "你好"}\n')
    out = tmp_path / "out.jsonl"
    result = invoke("convert", str(map_file), "--manifest", str(manifest), "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [
        {"ids": [15339, 1917]},
        {"text": "你好", "ids": real_tokenizer("llama3").encode("你好", add_special_tokens=False)},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ids": [1]}\n{oops\n')
    out_bad = tmp_path / "bad-out.jsonl"
    result = invoke("convert", str(map_file), "--manifest", str(bad), "-o", str(out_bad))
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output
    assert not out_bad.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    result = invoke("convert", str(map_file), "1", "--src", "llama3")  # the map's target given as its source
    assert result.exit_code == 1 and "fingerprint" in result.output


def test_the_readme_command_converts_the_projects_own_manifests(q2l_map, tmp_path):
    line = {"audio": "clips/x.wav", "text": "hello world", "language": "en", "duration": 1.2}
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps(line) + "\n\n" + json.dumps(line | {"ids": [14990]}) + "\n")
    out = tmp_path / "train.llama3.jsonl"
    result = invoke("convert", str(q2l_map), "--manifest", str(manifest), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 2 lines" in result.output
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    assert lines == [line | {"ids": [15339, 1917]}, line | {"ids": [15339]}]  # text -> target ids; ids converted


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"audio": "b.wav", "sentence": "hi"}, "m.jsonl:2: no field 'ids' or 'text' (fields: 'audio', 'sentence')"),
        ({}, "m.jsonl:2: no field 'ids' or 'text' (fields: none)"),
        ({"text": ["hi"]}, "m.jsonl:2: field 'text' must be a string, got list"),
        ({"ids": "1 2"}, "m.jsonl:2: field 'ids' must be a list of token ids"),
    ],
)
def test_a_bad_manifest_line_is_named_with_what_it_has(q2l_map, record, message):
    lines = [json.dumps({"text": "fine"}), json.dumps(record)]
    with pytest.raises(CliError, match=re.escape(message)):
        list(
            _convert_manifest(lines, VocabMap.load(q2l_map), real_tokenizer("llama3"), "ids", "text", False, "m.jsonl")
        )


def test_text_spelling_a_control_token_fails_the_command_and_writes_nothing(q2l_map, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "hi<|eot_id|>"}) + "\n")
    result = invoke("convert", str(q2l_map), "--manifest", str(manifest), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "m.jsonl:2: field 'text' spells the control token '<|eot_id|>' of the target" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


# Text that spells these must never become the control id: role markers, BOS/EOS, speech markers (the tokens the
# `reuse` strategy takes, or those `add` creates).
DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
CONTROL_TEXT = {
    "qwen3": ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|object_ref_start|>", "<think>"],
    "llama3": [
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
    ],
    "gemma2": ["<end_of_turn>", "<start_of_turn>", "<bos>", "<eos>", "<unused0>"],
    "deepseek-v2": [DS_BOS, DS_EOS, "<|speech_pad|>", "<|startofspeech|>", "<|endofspeech|>"],
    "deepseek-v3": ["<｜User｜>", "<｜Assistant｜>", DS_BOS, DS_EOS, "<｜place▁holder▁no▁0｜>"],
    "mistral": ["[INST]", "[/INST]", "<s>", "</s>", "[control_12]"],
}


@functools.cache
def target(family: str):
    """The family's real tokenizer; DeepSeek-V2 with added speech markers (it has no unused tokens to reuse)."""
    if family != "deepseek-v2":
        return real_tokenizer(family)
    tok = load_tokenizer(family)  # a fresh copy: `add` changes it in place
    resolve_speech_markers(tok, "add", boundaries=True)
    return tok


@pytest.mark.parametrize("family", list(CONTROL_TEXT))
def test_manifest_text_never_becomes_a_control_id(family, tmp_path):
    dst = target(family)
    vocab_map = VocabMap.build(real_tokenizer("qwen3"), dst)
    controls = _text_controls(dst)
    control_ids = {dst.convert_tokens_to_ids(token) for token in controls}
    clean = "say hello, 你好 (a < b > c)"
    (line,) = _convert_manifest([json.dumps({"text": clean})], vocab_map, dst, "ids", "text", False, tmp_path / "m")
    ids = json.loads(line)["ids"]
    assert dst.decode(ids) == clean and not control_ids & set(ids)
    for token in CONTROL_TEXT[family]:
        assert dst.convert_tokens_to_ids(token) in dst(f"say {token} now", add_special_tokens=False).input_ids
        lines = [json.dumps({"text": clean}), "", json.dumps({"text": f"say {token} now"})]
        with pytest.raises(
            CliError, match=rf"^.*m\.jsonl:3: field 'text' spells the control token {re.escape(repr(token))}"
        ):
            list(_convert_manifest(lines, vocab_map, dst, "ids", "text", False, tmp_path / "m.jsonl"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_token_a_speech_marker_may_reuse_is_a_control_token(family):
    tok = real_tokenizer(family)
    reusable = {token for token, _ in FAMILIES[family].unused_special_tokens(tok)}
    assert reusable <= set(_text_controls(tok))


def test_split_special_tokens_would_not_keep_every_control_token_text():
    """Why `convert` refuses such text instead of encoding it with `split_special_tokens=True`."""
    for family, token in (("gemma2", "<end_of_turn>"), ("deepseek-v3", "<｜User｜>")):
        tok = real_tokenizer(family)
        ids = tok(f"a {token} b", add_special_tokens=False, split_special_tokens=True).input_ids
        assert tok.convert_tokens_to_ids(token) in ids, family
