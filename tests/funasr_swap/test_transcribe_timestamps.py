"""`transcribe(..., timestamps=True)`: per-token times from the CTC branch kept beside a model folder, equal to the
forced alignment of each clip's own posteriors computed alone; a folder without the branch is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funasr_swap.convert import load_base
from funasr_swap.ctc_branch import read_ctc_branch
from funasr_swap.features import batch_features
from funasr_swap.timestamps import forced_align
from funasr_swap.transcribe import transcribe
from tests.conftest import voice

CLIPS = (1.3, 2.6)  # seconds: 21 and 43 encoder frames


@pytest.fixture(scope="module")
def timestamped(timestamped_folder):
    model, processor = load_base(timestamped_folder)
    waveforms = [voice(seconds, seed) for seed, seconds in enumerate(CLIPS, start=1)]
    transcripts = transcribe(model, processor, waveforms, max_new_tokens=4, timestamps=True)
    return model, processor, waveforms, transcripts


def test_each_token_is_timed_in_order_inside_its_clip(timestamped):
    model, processor, waveforms, transcripts = timestamped
    tokenizer = read_ctc_branch(model.name_or_path).tokenizer
    for waveform, transcript in zip(waveforms, transcripts):
        ids = tokenizer.encode(transcript.text, add_special_tokens=False)
        assert ids, "the tiny model answered nothing: nothing to time"
        assert [t.token for t in transcript.timestamps] == [tokenizer.decode([i]) for i in ids]
        ends = [0.0] + [t.end for t in transcript.timestamps]
        for previous_end, time in zip(ends, transcript.timestamps):
            assert previous_end <= time.start < time.end <= len(waveform) / 16000


def test_the_times_are_the_alignment_of_each_clips_own_posteriors(timestamped):
    model, processor, waveforms, transcripts = timestamped
    branch = read_ctc_branch(model.name_or_path)
    for waveform, transcript in zip(waveforms, transcripts):
        inputs = batch_features(processor.feature_extractor, [waveform])  # alone: no padding
        with torch.no_grad():
            hidden = model.model.audio_tower(**inputs).last_hidden_state
            log_probs = branch.output(branch.decoder(hidden, inputs["input_features_mask"])).log_softmax(-1)[0]
        ids = branch.tokenizer.encode(transcript.text, add_special_tokens=False)
        spans = forced_align(log_probs.numpy(), ids, branch.blank_id)
        got = [(round(t.start / 0.06), t.end) for t in transcript.timestamps]
        assert got == [(first, pytest.approx(min(end * 0.06, len(waveform) / 16000))) for first, end in spans]


def test_timestamps_of_a_folder_without_the_branch_name_what_it_lacks(tiny_base_folder):
    model, processor = load_base(tiny_base_folder)
    with pytest.raises(FileNotFoundError) as error:
        transcribe(model, processor, [np.zeros(16000, np.float32)], timestamps=True)
    assert str(error.value) == (
        f"{tiny_base_folder} has no CTC branch (ctc_branch.safetensors), which timestamps need; `funasr-swap "
        "convert` of an original Fun-ASR-Nano checkpoint keeps it, and swaps and exports of that folder carry it"
    )
    assert transcribe(model, processor, [np.zeros(16000, np.float32)], max_new_tokens=2)[0].timestamps is None


def test_the_cli_prints_each_token_under_its_file(timestamped, timestamped_folder, tmp_path):
    import soundfile

    from tests.funasr_swap.test_cli import invoke

    model, processor, waveforms, transcripts = timestamped
    path = tmp_path / "clip.wav"
    soundfile.write(path, waveforms[1], 16000, subtype="FLOAT")  # the same samples as transcribed above
    printed = invoke("transcribe", "--model", timestamped_folder, path, "--max-new-tokens", "4", "--timestamps")
    assert printed.exit_code == 0, printed.output
    lines = printed.stdout.splitlines()
    expected = [f"{t.start:.2f}\t{t.end:.2f}\t{t.token}" for t in transcripts[1].timestamps]
    assert lines == [f"{path}\t{transcripts[1].text}", *expected]


def test_a_branch_without_its_tokenizer_is_named(converted, tmp_path):
    import shutil

    from funasr_swap.ctc_branch import CTC_BRANCH_FILE, require_ctc_branch

    shutil.copy(converted / CTC_BRANCH_FILE, tmp_path / CTC_BRANCH_FILE)
    with pytest.raises(FileNotFoundError, match=r"has a CTC branch but no ctc_tokenizer/ \(a Hugging Face tokenizer"):
        require_ctc_branch(tmp_path)
