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
