"""CTC forced alignment (`funasr_swap.timestamps`) against an independent reference: every CTC path of a few frames
enumerated, the most probable one that collapses to the targets picked, its token spans read off."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from funasr_swap.timestamps import (
    AlignmentError,
    TokenTime,
    forced_align,
    lfr_frame_seconds,
    token_timestamps,
    words_of,
)

BLANK = 0


def best_path_spans(log_probs: np.ndarray, targets: list[int]) -> list[tuple[int, int]] | None:
    """By enumeration: the most probable frame labelling whose collapse (repeats merged, blanks dropped) is
    `targets`, as (first, past last) frames of each target token; None when no labelling collapses to it."""
    frames, vocabulary = log_probs.shape
    best, best_score = None, -np.inf
    for path in itertools.product(range(vocabulary), repeat=frames):
        runs = [(label, len(list(group))) for label, group in itertools.groupby(path)]
        if [label for label, _ in runs if label != BLANK] != targets:
            continue
        score = sum(log_probs[t, label] for t, label in enumerate(path))
        if score > best_score:
            best_score, spans, t = score, [], 0
            for label, length in runs:
                if label != BLANK:
                    spans.append((t, t + length))
                t += length
            best = spans
    return best


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


CASES = [  # (frames, vocabulary incl. the blank, targets)
    (1, 3, [2]),
    (4, 3, [1, 2]),
    (5, 3, [1, 1]),  # equal neighbours: a blank between them
    (6, 4, [3, 1, 3]),
    (7, 3, [2, 2, 1]),
    (7, 4, [1, 2, 3, 1]),
    (3, 3, [1, 1]),  # the fewest frames that spell it
]


@pytest.mark.parametrize("frames, vocabulary, targets", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_the_alignment_is_the_most_probable_path_of_all(frames, vocabulary, targets, seed):
    rng = np.random.default_rng(seed)
    log_probs = log_softmax(rng.normal(0, 2, (frames, vocabulary))).astype(np.float32)
    assert forced_align(log_probs, targets, BLANK) == best_path_spans(log_probs, targets)


def test_a_transcript_longer_than_the_frames_allow_cannot_be_aligned():
    log_probs = log_softmax(np.zeros((4, 3)))
    assert best_path_spans(log_probs, [1, 1, 2]) is not None  # 4 frames: 1 _ 1 2
    with pytest.raises(AlignmentError, match=r"3 tokens \(1 repeated\) need at least 4 frames, got 3"):
        forced_align(log_probs[:3], [1, 1, 2], BLANK)
    assert token_timestamps(log_probs[:3], [1, 1, 2], BLANK, str, 0.06, 1.0) == ()  # the original's empty result
    with pytest.raises(ValueError, match="distinct ids"):
        forced_align(log_probs, [BLANK], BLANK)


def test_times_are_frames_times_the_lfr_period_clipped_to_the_audio():
    period = lfr_frame_seconds(16000, 160, 6)
    assert period == pytest.approx(0.06)  # the original's `frame * 6 * 10 / 1000`
    log_probs = np.log(np.full((5, 3), 1e-6))
    for t, label in enumerate([0, 1, 1, 0, 2]):
        log_probs[t, label] = 0.0
    times = token_timestamps(log_probs, [1, 2], BLANK, lambda i: "ab"[i - 1], period, audio_seconds=0.28)
    assert [(t.token, t.start, t.end) for t in times] == [("a", 0.06, 0.18), ("b", 0.24, 0.28)]


def test_words_join_tokens_at_spaces_and_time_each_ideograph_alone():
    tokens = [" Hello", ",", " wor", "ld", "你", "好", " ", "!"]
    times = [TokenTime(token, i / 10, (i + 1) / 10) for i, token in enumerate(tokens)]
    words = [(w.token, w.start, w.end) for w in words_of(times)]
    assert words == [("Hello,", 0.0, 0.2), ("world", 0.2, 0.4), ("你", 0.4, 0.5), ("好", 0.5, 0.6), ("!", 0.6, 0.8)]
