"""An export of a folder that carries the CTC branch (`ctc.onnx`, `ctc_tokenizer/`) gives the token times the
PyTorch path gives for the same clips, without torch; an export without the branch names what it lacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from funasr_swap import edge
from funasr_swap.convert import load_base
from funasr_swap.edge.config import read_edge_config
from funasr_swap.transcribe import transcribe
from tests.conftest import voice
from tests.funasr_swap.edge.conftest import WITHOUT_TORCH

pytestmark = pytest.mark.slow  # the export converts the tiny LLM and writes two ONNX files (about 30 s on 2 cores)
CLIPS = (1.3, 2.6)


def test_the_edge_runtime_times_tokens_as_pytorch_does(timestamped_folder, timestamped_export):
    folder = timestamped_export
    config = read_edge_config(folder)
    assert config.ctc is not None and (folder / config.ctc.model).is_file()
    waveforms = [voice(seconds, seed) for seed, seconds in enumerate(CLIPS, start=1)]
    model, processor = load_base(timestamped_folder)
    expected = transcribe(model, processor, waveforms, max_new_tokens=4, timestamps=True)
    got = edge.transcribe(folder, waveforms, max_new_tokens=4, timestamps=True)
    for edge_transcript, transcript in zip(got, expected):
        assert edge_transcript.text == transcript.text and transcript.timestamps
        assert [(t.token, t.start, t.end) for t in edge_transcript.timestamps] == [
            (t.token, pytest.approx(t.start), pytest.approx(t.end)) for t in transcript.timestamps
        ]


def test_timestamps_of_an_export_without_the_branch_name_what_it_lacks(tiny_export):
    with pytest.raises(FileNotFoundError) as error:
        edge.transcribe(tiny_export, [voice(1.0, 1)], timestamps=True)
    assert str(error.value) == (
        f"{tiny_export} was exported without the CTC branch (no ctc in edge.json), which timestamps need; export a "
        "model folder that carries it (`funasr-swap convert` of an original checkpoint keeps it)"
    )


def test_edge_timestamps_never_import_torch(timestamped_export, tmp_path):
    """As `test_the_edge_runtime_never_imports_torch`, with timestamps: the CTC branch runs in onnxruntime and its
    tokenizer in `tokenizers`."""
    import soundfile

    clip = tmp_path / "clip.wav"
    soundfile.write(clip, voice(1.3, 1), 16000)
    script = WITHOUT_TORCH + textwrap.dedent("""
        from funasr_swap import edge

        (result,) = edge.transcribe(sys.argv[1], sys.argv[2:], max_new_tokens=4, timestamps=True)
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
        print("ok", len(result.timestamps) > 0)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(timestamped_export), str(clip)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok True"
