"""The guided notebooks as committed: papermill's parameters cell first, nothing skipped, key facts checked, and
outputs from a run on the full world (nbval re-executes them on the quick world: see notebooks/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
CHECK = "# NBVAL_CHECK_OUTPUT"


def cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def text(cell: dict) -> str:
    """What a cell printed and showed, as text."""
    outputs = cell["outputs"]
    return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)


def test_one_notebook_per_path_in_order():
    assert [p.stem for p in NOTEBOOKS] == [
        "00_anatomy", "01_path_a_qwen3", "02_path_b_llama3", "03_path_c_deepseek_v2", "04_gemma2", "05_compare",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_first_code_cell_holds_the_parameters_read_from_the_environment(path):
    first = cells(path)[0]
    assert "parameters" in first["metadata"].get("tags", [])
    assert 'os.environ.get("FUNASR_SWAP_WORLD", "full")' in source(first)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_is_skipped_and_key_facts_are_checked(path):
    code = cells(path)
    assert not any("NBVAL_SKIP" in source(c) or "NBVAL_RAISES" in source(c) for c in code)
    assert not any(tag.startswith("nbval") for c in code for tag in c["metadata"].get("tags", []))
    checked = [c for c in code if source(c).startswith(CHECK)]
    assert checked or path.stem == "05_compare"  # 05 compares trained models: nothing in it is a fixed fact
    assert all(c["outputs"] for c in checked)  # committed outputs for nbval to compare against


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_a_full_world_run(path):
    code = cells(path)
    assert all(c["execution_count"] is not None for c in code)  # run top to bottom
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])
    world = next(text(c) for c in code if "open_world(" in source(c))
    assert "runs/quickstart" in world and "runs/quick/" not in world
