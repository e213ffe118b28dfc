"""One clip through several models: transcripts equal `transcribe`'s, scores, word differences, ranking."""

from __future__ import annotations

import numpy as np
import pytest

from demos.compare import ModelResult, compare_models, ranking, word_diff
from demos.models import DemoModel, load_models
from funasr_swap.audio import load_audio
from funasr_swap.metrics import cer
from funasr_swap.transcribe import transcribe

CLIP = "tests/fixtures/fbank/en.wav"


def test_word_diff_labels_missing_wrong_and_extra_words():
    assert word_diff("the cat sat", "the cat sat") == [("the cat sat ", None)]
    assert word_diff("the cat sat down", "the dog sat") == [
        ("the ", None), ("cat ", "missing"), ("dog ", "wrong"), ("sat ", None), ("down ", "missing"),
    ]  # fmt: skip
    assert word_diff("a b", "a x b") == [("a ", None), ("x ", "extra"), ("b ", None)]


def test_word_diff_compares_normalised_words_and_han_characters():
    assert word_diff("The Cat, sat.", "the cat sat") == [("the cat sat ", None)]  # case and punctuation
    assert word_diff("语音转写", "语音转与") == [("语 音 转 ", None), ("写 ", "missing"), ("与 ", "wrong")]


def test_ranking_orders_by_cer_then_latency_and_never_ranks_a_failure():
    results = [
        ModelResult("slow", "x", latency=2.0, rtf=1.0, cer=0.1),
        ModelResult("broken", error="ValueError: no"),
        ModelResult("fast", "x", latency=1.0, rtf=0.5, cer=0.1),
        ModelResult("best", "x", latency=3.0, rtf=1.5, cer=0.0),
    ]
    assert [row[:2] for row in ranking(results)] == [[1, "best"], [2, "fast"], [3, "slow"], [None, "broken"]]
    assert ranking(results)[0] == [1, "best", 0.0, 3.0, 1.5]
    assert ranking(results)[3] == [None, "broken", None, None, None]  # listed, not ranked
    unscored = [ModelResult("b", "x", latency=2.0, rtf=1.0), ModelResult("a", "x", latency=1.0, rtf=0.5)]
    assert ranking(unscored) == [[1, "a", None, 1.0, 0.5], [2, "b", None, 2.0, 1.0]]


@pytest.fixture(scope="module")
def tiny_models(tiny_base_folder):
    return load_models([tiny_base_folder, tiny_base_folder])


def test_compare_models_gives_transcribes_transcripts_and_scores(tiny_models):
    waveform = load_audio(CLIP, 16000)
    results = compare_models(tiny_models, waveform, "hello world", max_new_tokens=6)
    expected = transcribe(tiny_models[0].model, tiny_models[0].processor, [CLIP], max_new_tokens=6)[0]
    assert [r.name for r in results] == [m.name for m in tiny_models]
    for result in results:
        assert result.error is None and result.text == expected.text
        assert result.cer == cer(["hello world"], [expected.text])
        assert result.diff == word_diff("hello world", expected.text)
        assert result.latency > 0 and result.rtf == pytest.approx(result.latency / (len(waveform) / 16000))


def test_compare_models_without_a_reference_scores_nothing(tiny_models):
    for reference in (None, "", " ,. "):  # nothing left after normalisation is no reference
        [result] = compare_models(tiny_models[:1], load_audio(CLIP, 16000), reference, max_new_tokens=4)
        assert result.text is not None and result.cer is None and result.diff == []


def test_a_failing_model_reports_its_error_and_the_others_still_run(tiny_models):
    broken = DemoModel("broken", tiny_models[0].folder, model=None, processor=tiny_models[0].processor)
    results = compare_models([broken, tiny_models[0]], load_audio(CLIP, 16000), "hi", max_new_tokens=4)
    assert results[0].name == "broken" and results[0].error and results[0].text is None
    assert results[1].error is None and results[1].text is not None
    too_short = compare_models(tiny_models[:1], np.zeros(10, np.float32), None, max_new_tokens=4)[0]
    assert "shorter than one" in too_short.error
