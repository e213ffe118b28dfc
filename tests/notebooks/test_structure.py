"""The guided notebooks as committed: papermill's parameters cell first, nothing skipped, key facts checked, and
outputs from a run on the full world (nbval re-executes them on the quick world: see notebooks/conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECK = "# NBVAL_CHECK_OUTPUT"
# a cell that draws: it builds a figure (funasr_swap.figures.Figure), shows the live training plot or calls a helper
# that returns a figure (`history_figure`, `cer_figure`)
PLOTS = re.compile(r"\bFigure\(|LiveTrainingPlot\(|\w_figure\(")


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


def figures_not_shown_as_images(path: Path) -> list[int]:
    """The cells of the notebook at `path` (numbered as JupyterLab and issue 27 count them, markdown too) that show
    a figure as text alone (matplotlib's `<Figure size 1100x600 with 3 Axes>`, what a Figure shows before the inline
    backend is active) or that draw (`PLOTS`) and hold no PNG."""
    numbered = enumerate(json.loads(path.read_text())["cells"])
    code = {i: c for i, c in numbered if c["cell_type"] == "code"}
    plotting = [i for i, c in code.items() if PLOTS.search(source(c))]
    assert plotting, f"no plotting cell in {path.name}: is PLOTS out of date?"  # every notebook draws something
    as_text = [i for i, c in code.items() for o in c["outputs"]
               if "".join(o.get("data", {}).get("text/plain", "")).startswith("<Figure size")
               and "image/png" not in o["data"]]  # fmt: skip
    without_image = [i for i in plotting if not any("image/png" in o.get("data", {}) for o in code[i]["outputs"])]
    return sorted(set(as_text + without_image))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_is_committed_as_an_image(path):
    """Each plotting cell's committed outputs hold a PNG and no figure is there as text alone.

    EXPECTED TO FAIL on 00, 01, 03 and 04 until their outputs are regenerated on the full world (issue 27): they
    were committed before `funasr_swap.figures`. Left failing on purpose, not xfail: regenerate, don't mark."""
    assert figures_not_shown_as_images(path) == [], "these cells show a figure as text, not as an image"


def test_the_full_worlds_build_time_is_one_figure():
    """The README and the CLI's help give the figure of `FULL_WORLD_MINUTES` (the notebooks print it through
    `open_world`); a re-measured build time changes it in one place, and this test finds the copies."""
    from funasr_swap.cli import quickstart
    from funasr_swap.miniature.config import FULL_WORLD_MINUTES

    readme = (ROOT / "README.md").read_text()
    said = re.findall(r"(\d+) minutes (?:on 2 CPU cores|for the full world)", readme + quickstart.__doc__)
    assert len(said) >= 3 and set(said) == {str(FULL_WORLD_MINUTES)}, said
    for path in NOTEBOOKS:
        assert not re.search(r"full: about \d+", path.read_text()), path.name  # the notebooks defer to open_world
