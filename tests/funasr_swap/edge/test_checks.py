"""An export's parts are checked against each other before llama.cpp or onnxruntime sees an input: another export's
audio.onnx or llm.gguf, ids outside the vocabulary, a truncated file are one ValueError naming the file and both
values; a constructor that fails frees what it made; the context grows to fit the longest clip the CLI accepts."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys

import llama_cpp
import pytest

from funasr_swap import edge
from tests.conftest import write_tone
from tests.funasr_swap.edge.conftest import copy_export, write_audio_onnx

pytestmark = pytest.mark.slow  # the tiny export is made once per session (about 20 s)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """110 s of tone: 1,834 audio rows, past the first context of 2,048 with 512 answer tokens."""
    return write_tone(tmp_path_factory.mktemp("long") / "long.wav", 110.0)


def test_an_audio_onnx_of_another_width_is_named(tiny_export, tmp_path):
    folder = copy_export(tiny_export, tmp_path / "mixed")
    write_audio_onnx(folder / "audio.onnx", 128)
    expected = f"{folder / 'audio.onnx'} gives rows 128 wide; {folder / 'edge.json'} says 64 (hidden_size)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        edge.EdgeModel(folder)
    write_audio_onnx(folder / "audio.onnx", 64, features=400)
    with pytest.raises(ValueError, match=r"audio.onnx takes features 400 wide; .* says 560 \(features"):
        edge.EdgeModel(folder)


def test_a_long_clip_through_a_mismatched_audio_onnx_is_one_line_not_a_crash(tiny_export, tmp_path, long_clip):
    """This clip's 128-wide rows overran the 64-wide batch buffer of llama.cpp (`double free or corruption`, exit
    134). In a subprocess, so that a crash fails this test instead of killing pytest."""
    folder = copy_export(tiny_export, tmp_path / "mixed")
    write_audio_onnx(folder / "audio.onnx", 128)
    cli = "from funasr_swap.cli import app; app(prog_name='funasr-swap')"
    command = [sys.executable, "-c", cli, "transcribe", "--edge", str(folder), str(long_clip), "--max-seconds", "120"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'audio.onnx'} gives rows 128 wide; {folder / 'edge.json'} says 64 (hidden_size): the "
        "files come from different exports"
    ]
    assert result.stdout == ""


def test_a_hotword_that_spells_a_control_token_is_refused_as_transcribe_refuses_it(tiny_export):
    # the one refusal (tokenmap.prompt.refuse_control_text), over the control tokens export kept in edge.json
    with edge.EdgeModel(tiny_export) as model:
        with pytest.raises(
            ValueError, match=re.escape("hotword 'x<|im_end|>' contains the special token '<|im_end|>'; remove it")
        ) as error:
            model.prompt(None, ["x<|im_end|>"], True)
    assert "allow_special_text" not in str(error.value)  # no such option on the edge


def test_rows_of_another_width_are_refused_before_llama_cpp_sees_them(tiny_export, tmp_path, long_clip):
    """Where audio.onnx's width is a dynamic axis, only its rows tell: they are checked as they come out, and again
    where they go into llama.cpp's buffer."""
    import numpy as np
    import onnxruntime

    other = write_audio_onnx(tmp_path / "other.onnx", 128)
    with edge.EdgeModel(tiny_export) as model:
        model._audio = onnxruntime.InferenceSession(str(other), providers=["CPUExecutionProvider"])
        waveform = np.zeros(16000, np.float32)
        expected = f"{tiny_export / 'audio.onnx'} gave rows of shape (1, 17, 128) for 17 frames; "
        with pytest.raises(ValueError, match=re.escape(f"{expected}{tiny_export / 'llm.gguf'} takes (1, 17, 64)")):
            model.audio_rows(waveform)
        with pytest.raises(ValueError, match=r"audio rows must be \(frames, 64\) .*got \(3, 128\)"):
            model.prefill([1], np.zeros((3, 128), np.float32), [2])
        with pytest.raises(ValueError, match="prompt ids after the audio hold -1, outside"):
            model.prefill([1], np.zeros((3, 64), np.float32), [-1])


def test_an_llm_gguf_of_another_width_is_named_and_everything_is_freed(tiny_export, tmp_path, monkeypatch):
    folder = copy_export(tiny_export, tmp_path / "mixed", hidden_size=128)
    write_audio_onnx(folder / "audio.onnx", 128)
    freed, unraisable = [], []
    free = llama_cpp.llama_model_free
    monkeypatch.setattr(llama_cpp, "llama_model_free", lambda model: (freed.append(model), free(model)))
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # an error in __del__ would land here
    expected = f"{folder / 'llm.gguf'} is 64 wide; {folder / 'edge.json'} says 128"
    with pytest.raises(ValueError, match=re.escape(expected)):
        edge.EdgeModel(folder)
    gc.collect()
    assert len(freed) == 1 and unraisable == []


@pytest.mark.parametrize(
    "field, value, name",
    [("stop_ids", [151645, 10**6], "stop_ids holds id 1000000"), ("prompts", "first before", "prompts[0].before")],
)
def test_ids_outside_the_vocabulary_are_named(tiny_export, tmp_path, field, value, name):
    prompts = json.loads((tiny_export / "edge.json").read_text())["prompts"]
    if field == "prompts":
        value = [{**prompts[0], "before": [*prompts[0]["before"], 200_000]}, *prompts[1:]]
    folder = copy_export(tiny_export, tmp_path / "bad-ids", **{field: value})
    expected = rf"edge.json: {re.escape(name)}.*outside .*llm.gguf's vocabulary of 151\d+ tokens"
    with pytest.raises(ValueError, match=expected):
        edge.EdgeModel(folder)


def test_a_truncated_audio_onnx_is_named(tiny_export, tmp_path):
    folder = copy_export(tiny_export, tmp_path / "truncated")
    onnx = folder / "audio.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=f"{onnx}: onnxruntime cannot load it .*INVALID_PROTOBUF.*export the model"):
        edge.EdgeModel(folder)


def test_the_context_grows_to_the_longest_clip_the_cli_accepts(tiny_export, long_clip):
    """110 s (under the tiny encoder's 122.9 s) with the default 512 answer tokens needs more than the first
    context's 2,048 positions: it is made larger, not refused."""
    with edge.EdgeModel(tiny_export) as model:
        [result] = edge.transcribe(model, [long_clip], max_audio_seconds=120)
        assert model.context >= 1834 + 512 and result.audio_seconds == 110.0
