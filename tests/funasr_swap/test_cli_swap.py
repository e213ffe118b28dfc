"""funasr-swap plan and swap from the command line."""

from __future__ import annotations

from typer.testing import CliRunner

from funasr_swap.base import tiny_base
from funasr_swap.cli import app

runner = CliRunner()


def test_plan_lists_every_registry_llm_with_paths():
    result = runner.invoke(app, ["plan"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("Qwen3-32B", "Llama-3.2-3B", "Gemma-2-9B", "DeepSeek-V2-Lite", "DeepSeek-V3"):
        assert name in result.output
    assert "+600%" in result.output  # 1024 -> 7168


def test_swap_writes_a_folder_and_bad_markers_write_nothing(tmp_path):
    model, processor = tiny_base()
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    out = tmp_path / "swapped"
    result = runner.invoke(app, ["swap", "--base", str(base), "--llm", "Llama-3.2-1B", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and "llama3" in result.output
    bad = tmp_path / "bad"
    result = runner.invoke(app, ["swap", "--base", str(base), "--llm", "DeepSeek-V2-Lite", "-o", str(bad)])
    assert result.exit_code == 1 and "strategy 'add'" in result.output
    assert not bad.exists()
