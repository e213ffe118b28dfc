"""The tokenmap CLI as a new user would try it: commands work, bad input gives one line and exit 1."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tokenmap.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_commands_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("fetch", "inspect", "specials", "prompt", "add-markers", "build", "convert"):
        assert command in result.output
    assert "Example" in invoke("prompt", "--help").output


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
    result = invoke("add-markers", "deepseek-v2", "--strategy", "add", "--boundaries", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "added ids [100002, 100003, 100004]" in result.output
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|startofspeech|>") == 100003


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/no/such/folder"], "no such file"),
        (["add-markers", "deepseek-v2", "-o", "OUT"], "strategy 'add'"),
        (["add-markers", "qwen3", "--strategy", "borrow", "-o", "OUT"], "--strategy must be"),
        (["prompt", "vicuna"], "known"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, message, tmp_path):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "OUT").exists()


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
    result = invoke("convert", str(map_file), "--jsonl", str(manifest), "--text-field", "text", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and '"ids": [15339, 1917]' in lines[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ids": [1]}\n{oops\n')
    out_bad = tmp_path / "bad-out.jsonl"
    result = invoke("convert", str(map_file), "--jsonl", str(bad), "-o", str(out_bad))
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output
    assert not out_bad.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    result = invoke("convert", str(map_file), "1", "--src", "gemma2")
    assert result.exit_code == 1 and "fingerprint" in result.output
