"""CER/WER on hand-computed cases: normalisation, Chinese by character, corpus-level pooling, bad inputs."""

from __future__ import annotations

import pytest

from funasr_swap.metrics import cer, normalize, wer, wer_units


def test_normalize_folds_case_width_and_punctuation():
    assert normalize("Hello, World!  Don't") == "hello world dont"
    assert normalize("你好，世界。") == "你好 世界"
    assert normalize("ＡＢＣ１２３") == "abc123"  # full-width letters and digits (NFKC)
    assert normalize("$3 + 4°") == "$3 + 4°"  # symbols (category S) are not punctuation


def test_english_wer_counts_words_after_normalisation():
    # "the cat sat" vs "The cat, sat!": identical after normalisation
    assert wer(["the cat sat"], ["The cat, sat!"], "en") == 0.0
    # one substitution (sat -> sit) and one deletion (down) over 4 reference words
    assert wer(["the cat sat down"], ["the cat sit"], "en") == pytest.approx(2 / 4)
    # one insertion over 2 words
    assert wer(["hello world"], ["hello big world"], "en") == pytest.approx(1 / 2)


def test_wer_is_pooled_over_the_corpus_not_averaged_per_utterance():
    # utterance 1: 1 error / 1 word; utterance 2: 0 errors / 3 words -> 1/4 (the per-utterance mean would be 1/2)
    assert wer(["yes", "a b c"], ["no", "a b c"], "en") == pytest.approx(1 / 4)
    assert cer(["ab", "cdef"], ["ax", "cdef"]) == pytest.approx(1 / 6)


def test_chinese_wer_is_by_character_and_equals_cer():
    ref, hyp = "今天天气很好", "今天天汽好"  # one substitution (气 -> 汽), one deletion (很) over 6 characters
    assert wer_units(ref, "zh") == list(ref)
    assert wer([ref], [hyp], "zh") == pytest.approx(2 / 6)
    assert cer([ref], [hyp]) == pytest.approx(2 / 6)
    # punctuation and spaces do not count
    assert cer(["今天天气很好。"], ["今天 天气 很好"]) == 0.0


def test_latin_words_inside_chinese_stay_whole_words():
    assert wer_units("我用iPhone打电话", "zh") == ["我", "用", "iphone", "打", "电", "话"]
    # the English word is one unit: a one-letter typo costs one of 6 units
    assert wer(["我用iPhone打电话"], ["我用iPhine打电话"], "zh") == pytest.approx(1 / 6)
    # read as English, the same line is one word: the typo makes the whole line wrong
    assert wer(["我用iPhone打电话"], ["我用iPhine打电话"], "en") == 1.0
    # an unknown language splits by script: Chinese by character, English by word
    assert wer_units("我用iPhone打电话", None) == wer_units("我用iPhone打电话", "zh")
    assert wer_units("Hello there", None) == ["hello", "there"]


def test_mixed_language_wer_pools_each_utterance_in_its_language():
    # en: 1 error / 2 words; zh: 1 error / 4 characters -> 2 / 6
    refs, hyps = ["good morning", "早上好啊"], ["good evening", "早上好"]
    assert wer(refs, hyps, ["en", "zh"]) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="1 language\\(s\\) for 2 reference"):
        wer(refs, hyps, ["en"])


def test_english_cer_ignores_spacing():
    assert cer(["the cat"], ["thecat"]) == 0.0
    assert cer(["abcd"], ["abce"]) == pytest.approx(1 / 4)


def test_empty_hypothesis_is_all_deletions_and_insertions_can_exceed_one():
    assert cer(["abc"], [""]) == 1.0
    assert wer(["a b"], [""], "en") == 1.0
    assert cer(["a"], ["abc"]) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("refs", "hyps", "error", "match"),
    [
        (["a", "b"], ["a"], ValueError, "2 reference"),
        ([], [], ValueError, "no references"),
        (["ok", "?!"], ["ok", "x"], ValueError, "reference #1 '\\?!' is empty"),
        ("abc", "abc", TypeError, "lists of strings"),
    ],
)
def test_bad_inputs_are_named(refs, hyps, error, match):
    with pytest.raises(error, match=match):
        cer(refs, hyps)
    with pytest.raises(error, match=match):
        wer(refs, hyps, "en")
