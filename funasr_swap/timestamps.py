"""Token timestamps by CTC forced alignment, as funasr 1.4's `FunASRNano` gives them; numpy only (the edge runtime
uses it without torch).

The original (`funasr/models/fun_asr_nano/model.py`, `inference_llm`) runs its CTC branch on the encoder's outputs,
tokenizes the LLM's transcript with the branch's tokenizer, and aligns the two with torchaudio's `forced_align`
(`tools/utils.py`): the most probable CTC path that spells exactly those tokens (Viterbi over the trellis of tokens
and blanks). A token spans the frames its path stays on it: start = its first frame, end = its last frame + 1, in
encoder frames, times 60 ms (`frame * 6 * 10 / 1000` there: LFR stride 6 of a 10 ms fbank shift). Here the period
comes from the feature extractor's settings (`lfr_frame_seconds`), and ends are clipped to the audio's duration (the
last LFR frame covers up to 60 ms past it). A transcript the frames cannot spell (a CTC path needs one frame per
token, plus a blank between two equal neighbours) gives no timestamps, an empty result, as the original gives an
empty list; so does an empty transcript.

torchaudio is no dependency of this project; `forced_align` here is the textbook Viterbi (tests check it against an
enumeration of every CTC path on small inputs).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AlignmentError", "TokenTime", "forced_align", "lfr_frame_seconds", "token_timestamps", "words_of"]


@dataclass(frozen=True)
class TokenTime:
    """When one token of a transcript is spoken: a token of the CTC branch's vocabulary (or a word of them,
    `words_of`), its first frame's start and its last frame's end in seconds from the audio's start."""

    token: str
    start: float
    end: float


class AlignmentError(ValueError):
    """The frames cannot spell the tokens: too few of them."""


def lfr_frame_seconds(sampling_rate: int, shift_samples: int, stride_lfr: int) -> float:
    """Seconds between two encoder frames: `stride_lfr` fbank shifts of `shift_samples` samples (60 ms for the
    original's 10 ms shift and LFR stride 6)."""
    return shift_samples * stride_lfr / sampling_rate


def forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int) -> list[tuple[int, int]]:
    """The frames each target token spans on the most probable CTC path that spells `targets`: one `(first, past
    last)` frame pair per token, in order.

    log_probs `(frames, vocabulary)`: per-frame log-posteriors (the branch's log-softmax); `blank`: the blank's
    column. Raises AlignmentError when no path of that many frames spells the targets, ValueError for a target or
    blank outside the vocabulary.
    """
    frames, vocabulary = log_probs.shape
    targets = [int(t) for t in targets]
    if not 0 <= blank < vocabulary or any(not 0 <= t < vocabulary or t == blank for t in targets):
        raise ValueError(f"targets and blank must be distinct ids below the vocabulary's {vocabulary}")
    repeats = sum(a == b for a, b in zip(targets, targets[1:]))  # equal neighbours need a blank between them
    if len(targets) + repeats > frames:
        raise AlignmentError(
            f"{len(targets)} tokens ({repeats} repeated) need at least {len(targets) + repeats} frames, got {frames}"
        )
    if not targets:
        return []
    # the trellis' states: blank, t0, blank, t1, ..., blank (2L + 1); state s emits labels[s]
    labels = np.full(2 * len(targets) + 1, blank)
    labels[1::2] = targets
    emit = log_probs[:, labels].astype(np.float64)  # (frames, states)
    states = len(labels)
    # a state is entered from itself, the one before, or (a token unlike the token two before) skipping a blank
    skip = np.zeros(states, bool)
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    score = np.full(states, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((frames, states), np.int64)  # the state each state's best path came from
    index = np.arange(states)
    for t in range(1, frames):
        stay = score
        step = np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        choices = np.stack([stay, step, jump])  # (3, states)
        best = choices.argmax(0)
        score = choices[best, index] + emit[t]
        back[t] = index - best
    state = states - 1 if score[-1] >= score[-2] else states - 2
    path = [state]
    for t in range(frames - 1, 0, -1):
        state = back[t, state]
        path.append(state)
    path.reverse()  # the state at each frame
    spans = [[-1, -1] for _ in targets]
    for t, state in enumerate(path):
        if state % 2:
            span = spans[state // 2]
            span[0] = t if span[0] < 0 else span[0]
            span[1] = t + 1
    return [(first, end) for first, end in spans]


def token_timestamps(
    log_probs: np.ndarray,
    token_ids: Sequence[int],
    blank: int,
    token_text: Callable[[int], str],
    frame_seconds: float,
    audio_seconds: float,
) -> tuple[TokenTime, ...]:
    """Per-token times of a transcript's tokens `token_ids` (of the CTC branch's vocabulary) over one clip's
    log-posteriors `(frames, vocabulary)`: each token's text (`token_text(id)`, the branch tokenizer's decoding of the
    one token, as the original gives it), start and end in seconds, ends clipped to `audio_seconds`. Empty when
    the frames cannot spell the tokens (module docstring)."""
    try:
        spans = forced_align(log_probs, token_ids, blank)
    except AlignmentError:
        return ()
    return tuple(
        TokenTime(token_text(int(token)), first * frame_seconds, min(end * frame_seconds, audio_seconds))
        for token, (first, end) in zip(token_ids, spans)
    )


def _is_ideograph(char: str) -> bool:
    """A character of a script written without spaces between words (CJK ideographs, kana): a word by itself."""
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))


def words_of(times: Sequence[TokenTime]) -> list[TokenTime]:
    """Token times merged into words (OpenAI's `word` granularity): a word starts at a token that starts with
    whitespace, and each ideograph or kana is a word of its own (Chinese and Japanese write no spaces between
    words; the original times each character); punctuation stays with the word before it. Each word spans its
    tokens' first start to their last end, its text stripped; words of whitespace only are left out."""
    words: list[list[TokenTime]] = []
    for time in times:
        text = time.token
        if not words or text[:1].isspace() or _is_ideograph(text[:1]) or _is_ideograph(words[-1][-1].token[-1:]):
            words.append([])
        words[-1].append(time)
    merged = [TokenTime("".join(t.token for t in word).strip(), word[0].start, word[-1].end) for word in words]
    return [word for word in merged if word.token]
