"""Bad input, as a new user gives it, never prints a traceback: a table of inputs to `funasr-swap` (the findings of
issue 32's trial), each with its exit status, its one-line message naming what the user typed (a flag, not a
Python field) and no partial output."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import write_tone
from tests.funasr_swap.edge.conftest import copy_export
from tests.funasr_swap.test_cli import files_under, invoke


@pytest.fixture(scope="module")
def world(tiny_base_folder, tmp_path_factory) -> dict[str, Path]:
    """What the inputs below name: a model, one without its tokenizer, clips and manifests (one clip labelled 2.0 s
    that lasts 40 s, one that lasts 3 minutes), a folder, and where outputs would go."""
    root = tmp_path_factory.mktemp("bad-inputs")
    no_tokenizer = root / "no-tokenizer"
    shutil.copytree(tiny_base_folder, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    clips = {"clip": 1.0, "clip61": 61.0, "clip40": 40.0, "clip180": 180.0}
    paths = {name: write_tone(root / f"{name}.wav", seconds) for name, seconds in clips.items()}
    for name in ("clip40", "clip180"):
        line = {"audio": paths[name].name, "text": "a tone", "language": "en", "duration": 2.0}
        (root / f"{name}.jsonl").write_text(json.dumps(line) + "\n")
    (root / "folder").mkdir()
    return {
        "root": root, "folder": root / "folder", "model": tiny_base_folder, "no-tokenizer": no_tokenizer, **paths,
        "manifest40": root / "clip40.jsonl", "manifest180": root / "clip180.jsonl", "out": root / "out",
    }  # fmt: skip


def assert_one_line(result, status: int, message: str) -> None:
    """Exit `status`, no traceback; status 1: the last line is `error: ...message...` with no double period;
    status 2 (typer's usage errors, at parse time): the message names the option."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    if status == 2:
        assert message in result.output, result.output
        return
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and ".." not in last, last


def run(world: dict[str, Path], args: list[str]):
    return invoke(*(str(world[arg[1:]]) if arg.startswith("@") else arg for arg in args))


# (args with @name for the world's paths, exit status, message): quick, on the tiny base
CASES = [
    (["transcribe", "--model", "@model", "@folder"], 1, "is a folder, not an audio file"),
    (["transcribe", "--model", "@model", "@clip", "--max-seconds", "0"], 2, "--max-seconds"),
    (["eval", "--model", "@model", "--manifest", "@manifest40", "--max-seconds", "0"], 2, "--max-seconds"),
    (["train", "--model", "@model", "--train", "@manifest40", "-o", "@out", "--max-seconds", "0"], 2, "--max-seconds"),
    (["demo", "--model", "@model", "--max-seconds", "0"], 2, "--max-seconds"),
    (["transcribe", "--model", "@model", "@clip61"], 1, "audio is 61.0 s long, longer than --max-seconds 60; split"),
    (["transcribe", "--model", "@model", "@clip", "--max-seconds", "300"], 1,
     "--max-seconds 300 is longer than the encoder's positions cover (122.9 s)"),
    (["transcribe", "--model", "@no-tokenizer", "@clip"], 1, "no-tokenizer has no tokenizer (tokenizer.json"),
    (["export", "@no-tokenizer", "-o", "@out"], 1, "no-tokenizer has no tokenizer (tokenizer.json"),
    (["eval", "--model", "@model", "--manifest", "@manifest40", "--max-seconds", "30", "-o", "@out"], 1,
     "clip40.wav is 40.0 s long, longer than --max-seconds 30; split it"),
    (["eval", "--model", "@model", "--manifest", "@manifest180", "-o", "@out"], 1,
     "clip180.wav is 180.0 s long, longer than --max-seconds 60; split it"),
    (["train", "--model", "@model", "--train", "@manifest40", "-o", "@out", "--audio-cache", "fbank"], 1,
     "--audio-cache fbank: choose one of none, features, encoder"),
    (["train", "--model", "@model", "--train", "@manifest40", "-o", "@out", "--lora-r", "2", "--train-llm"], 1,
     "--lora-r and --train-llm both train the LLM; choose one"),
    (["train", "--model", "@model", "--train", "@manifest40", "-o", "@out", "--audio-cache", "features",
      "--num-workers", "2"], 1, "--audio-cache features needs 0 DataLoader workers (each would keep its own cache), "
     "not --num-workers 2"),
    (["demo", "--model", "@model", "--max-file-size", "abc"], 1,
     "--max-file-size abc: give a whole number and a unit, b, kb, mb, gb or tb"),
]  # fmt: skip


@pytest.mark.parametrize("args, status, message", CASES, ids=[" ".join(case[0][:1] + case[0][-2:]) for case in CASES])
def test_a_bad_input_is_one_line_and_writes_nothing(world, monkeypatch, args, status, message):
    monkeypatch.setattr("demos.models.load_models", lambda *a: pytest.fail("the demo loaded its models"))
    before = files_under(world["root"])
    assert_one_line(run(world, args), status, message)
    assert files_under(world["root"]) == before and not world["out"].exists()


def test_a_busy_port_is_refused_before_the_demo_loads_a_model(world, monkeypatch):
    monkeypatch.setattr("demos.models.load_models", lambda *a: pytest.fail("the demo loaded its models"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(world, ["demo", "--model", "@model", "--port", str(port)])
    assert_one_line(result, 1, f"--port {port} on 127.0.0.1 is not free (Address already in use): choose another")


def test_train_resume_says_when_it_starts_fresh_and_a_second_run_names_the_flag(world, manifest_short, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", str(world["model"]), "--train", str(manifest_short), "-o", str(out), "--steps", "1",
            "--warmup", "0", "--eval-every", "0", "--save-every", "0"]  # fmt: skip
    fresh = invoke(*args, "--resume")
    assert fresh.exit_code == 0, fresh.output
    assert f"--resume: {out} holds no checkpoint; starting a fresh run" in fresh.stderr
    again = invoke(*args)
    assert_one_line(again, 1, f"-o/--output {out} holds checkpoint-1: pass --resume to continue it, or choose")
    assert again.output.count("\n") == 1  # before the model loads


@pytest.fixture
def manifest_short(world, tmp_path) -> Path:
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"audio": str(world["clip"]), "text": "a tone", "language": "en"}) + "\n")
    return path


# the edge runtime's inputs: another export's parts, a truncated file, a field of the wrong type, ids outside the
# vocabulary; on the tiny export (made once per session)
EDGE_CASES = {
    "truncated audio.onnx": ({}, "audio.onnx: onnxruntime cannot load it ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF"),
    "stop_ids not a list": ({"stop_ids": 151645}, "edge.json: not a valid edge.json (stop_ids must be a list of "),
    "sampling rate a string": (
        {"features": "16000"}, "edge.json: not a valid edge.json (features must be an object, got '16000')"
    ),
    "prompt id out of range": ({"prompts": "out of range"}, "edge.json: prompts[0].before holds id 999999, outside"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", EDGE_CASES)
def test_a_bad_export_is_one_line(tiny_export, world, tmp_path, case):
    change, message = EDGE_CASES[case]
    if change.get("prompts"):
        prompts = json.loads((tiny_export / "edge.json").read_text())["prompts"]
        change = {"prompts": [{**prompts[0], "before": [999_999]}, *prompts[1:]]}
    folder = copy_export(tiny_export, tmp_path / "edge", **change)
    if case == "truncated audio.onnx":
        (folder / "audio.onnx").write_bytes((folder / "audio.onnx").read_bytes()[:4096])
    out = tmp_path / "out.jsonl"
    assert_one_line(invoke("transcribe", "--edge", folder, world["clip"], "-o", out), 1, message)
    assert not out.exists()


@pytest.mark.slow
def test_a_folder_given_to_the_edge_runtime_as_audio_is_named(tiny_export, world):
    assert_one_line(invoke("transcribe", "--edge", tiny_export, world["folder"]), 1, "is a folder, not an audio file")
