"""An export of a folder that carries the CTC branch (`ctc.onnx`, `ctc_tokenizer/`) gives the token times the
PyTorch path gives for the same clips, without torch; an export without the branch names what it lacks."""

from __future__ import annotations

import pytest

from funasr_swap import edge
from funasr_swap.convert import load_base
from funasr_swap.export import export_edge
from funasr_swap.transcribe import transcribe
from tests.conftest import voice

pytestmark = pytest.mark.slow  # the export converts the tiny LLM and writes two ONNX files (about 30 s on 2 cores)
CLIPS = (1.3, 2.6)


def test_the_edge_runtime_times_tokens_as_pytorch_does(timestamped_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge") / "timestamped"
    config = export_edge(timestamped_folder, folder, "f32")
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
