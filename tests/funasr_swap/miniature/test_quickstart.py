"""The quickstart's wiring on `--quick` sizes: stages, cache, report, model index, result markers written last."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from funasr_swap.cli import app
from funasr_swap.miniature import (
    FAMILY_LLMS,
    MODEL_DIR,
    QUICK,
    base_model_folder,
    cached_run,
    held_out_manifest,
    load_corpus,
    open_world,
    read_index,
    run_quickstart,
    world_folders,
)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

runner = CliRunner()


def test_quickstart_refuses_an_unknown_family(tmp_path):
    result = runner.invoke(app, ["quickstart", "-o", str(tmp_path / "out"), "--families", "llama3,mistral"])
    assert result.exit_code == 1
    assert "mistral" in result.output and "gemma2" in result.output  # the bad name and the choices
    assert not (tmp_path / "out").exists()


def test_read_index_says_how_to_build_a_missing_world(tmp_path):
    with pytest.raises(FileNotFoundError, match="funasr-swap quickstart"):
        read_index(tmp_path)
    with pytest.raises(KeyError, match="unknown world 'huge'; choose from full, quick"):
        open_world("huge", runs=tmp_path)


def test_held_out_manifest_finds_the_one_corpus_or_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="funasr-swap quickstart"):
        held_out_manifest(tmp_path)
    for key in ("aaaa", "bbbb"):
        (tmp_path / f"corpus-{key}").mkdir()
        (tmp_path / f"corpus-{key}" / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match="2 quickstart corpora"):
        held_out_manifest(tmp_path)
    (tmp_path / "corpus-bbbb" / "test.jsonl").unlink()
    assert held_out_manifest(tmp_path) == tmp_path / "corpus-aaaa" / "test.jsonl"


def _newest_last(folder):
    """True when `result.json` is the run folder's last-written file (the worker's log aside)."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "log.txt"]
    return max(files, key=lambda p: p.stat().st_mtime_ns).name == "result.json"


@pytest.mark.slow
def test_quickstart_writes_report_index_and_reuses_its_cache(quick_world, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs") / "quick"  # the quick world's folder, as open_world names it
    # the session's quick world lends its corpus, base and pretrained LLMs (built from nothing there and in the
    # determinism test below): this run builds the swaps, then reuses everything
    for stage in [*quick_world.glob("corpus-*"), *quick_world.glob("base-*"), *quick_world.glob("llm-*")]:
        shutil.copytree(stage, tmp_path / stage.name)
    command = ["quickstart", "-o", str(tmp_path), "--families", "Llama-3.2-1B", "--quick"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    report = tmp_path / "REPORT.md"
    text = report.read_text()
    assert "| base |" in text and "| llama3 bridge |" in text
    assert "| llama3 fresh |" not in text and "Against fresh" not in text  # one init by default
    assert (tmp_path / "cer.png").stat().st_size > 0
    index = read_index(tmp_path)
    assert [(m.name, m.family, m.init) for m in index] == [("base", "qwen3", "joint"), ("llama3 bridge", "llama3",
                                                                                         "bridge")]  # fmt: skip
    for model in index:
        assert (tmp_path / model.folder / "config.json").is_file()
        assert 0.0 <= model.test_cer
    assert base_model_folder(tmp_path) == tmp_path / index[0].folder
    swap_run = (tmp_path / index[1].folder).parent
    assert (swap_run / "SWAP_REPORT.md").is_file() and (swap_run / "swap_report.json").is_file()
    assert _newest_last(swap_run) and _newest_last((tmp_path / index[0].folder).parent)
    total = [line for line in text.splitlines() if line.startswith("| total |")]
    folders = world_folders(tmp_path, QUICK)  # the stages' hashed folders, for notebooks
    assert (folders.corpus / "test.jsonl").is_file() and (folders.base / MODEL_DIR / "config.json").is_file()
    assert (folders.llm("Llama-3.2-1B") / "config.json").is_file()
    assert folders.base == (tmp_path / index[0].folder).parent

    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    cached = [line for line in result.output.splitlines() if "cached" in line]
    assert any("corpus: cached" in line for line in cached)
    assert any("pretrain Llama-3.2-1B: cached" in line for line in cached)
    assert any(line.startswith("[quickstart] base:") for line in cached)
    assert sum("adaptor retraining" in line for line in cached) == 1
    assert report.read_text().count("| llama3 bridge |") == 1
    assert [line for line in report.read_text().splitlines() if line.startswith("| total |")] == total  # build times

    result = runner.invoke(app, [*command, "--compare-init"])  # adds the fresh and vocab runs only
    assert result.exit_code == 0, result.output
    assert sum("adaptor retraining" in line and "cached" not in line for line in result.output.splitlines()) == 2
    assert "Against fresh" in report.read_text() and "(vocab) vs" in report.read_text()
    assert [m.name for m in read_index(tmp_path)] == ["base", "llama3 bridge", "llama3 fresh", "llama3 vocab"]
    assert len(list(tmp_path.glob("swap-*/result.json"))) == 3

    said = []
    world = open_world("quick", ["llama3"], runs=tmp_path.parent, log=said.append)  # built: nothing to do
    assert said == [] and world.models == read_index(tmp_path) and world.output == tmp_path
    assert world.model_folder("llama3 fresh") == tmp_path / world.models[2].folder
    with pytest.raises(KeyError, match="built: base, llama3 bridge, llama3 fresh, llama3 vocab"):
        world.model_folder("gemma2 bridge")
    world = open_world("quick", ["qwen3"], runs=tmp_path.parent, log=said.append)  # path A's family, added
    assert said and "qwen3 bridge" in said[0]
    names = ["base", "llama3 bridge", "llama3 fresh", "llama3 vocab", "qwen3 bridge", "qwen3 fresh", "qwen3 vocab"]
    assert [m.name for m in world.models] == names
    assert len(list(tmp_path.glob("swap-*/result.json"))) == 6
    assert [u.text for u in world.data()["test"]] == [u.text for u in load_corpus(folders.corpus, QUICK)["test"]]


def _numbers(world):
    """Every number a world's training recorded, per model: test scores, and each step's loss, learning rate,
    gradient norm and validation scores (wall-clock fields left out: they are the only ones allowed to differ)."""
    numbers = {}
    for model in read_index(world):
        history = cached_run((world / model.folder).parent).history
        steps = [{k: v for k, v in record.items() if k != "seconds"} for record in history]
        numbers[model.name] = (model.test_cer, model.test_wer, steps)
    return numbers


@pytest.mark.slow
def test_a_world_built_again_from_nothing_has_the_same_numbers(quick_world, tmp_path):
    """Same settings, same seed, same processor: bit-identical losses and CERs, however many processes run side by
    side (here the swaps one at a time, not three). Every training runs on one torch thread (float rounding depends
    on the thread count), never on a count chosen by the cores or by how fast another stage went."""
    run_quickstart(tmp_path / "again", list(FAMILY_LLMS), config=QUICK, jobs=1, log=lambda line: None)
    again, first = _numbers(tmp_path / "again"), _numbers(quick_world)
    assert list(again) == ["base", "qwen3 bridge", "llama3 bridge", "gemma2 bridge", "deepseek-v2 bridge"]
    assert again == first
