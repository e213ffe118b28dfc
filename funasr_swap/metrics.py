"""Character and word error rates (jiwer), with the text normalisation they are measured after.

Both rates are corpus-level: the edits summed over all utterances divided by the reference units summed over all
utterances (not a mean of per-utterance rates, which over-weights short utterances).

Normalisation (`normalize`), the same for every language: Unicode NFKC (full-width letters and digits become ASCII),
case folding, apostrophes deleted ("don't" -> "dont"), every other punctuation character (Unicode category P*,
Chinese "，。？" included, and "%", which Unicode files as punctuation) replaced by a space, whitespace collapsed.
Symbols (category S*: "$", "+", "°") stay. ASR models differ in punctuation and casing far more than in
recognition; scoring them would measure the formatting.

- CER counts characters of the normalised text with all whitespace removed, so spacing never counts: for Chinese
  that is the usual CER; for English it is the characters of the words.
- WER counts words. For languages written without spaces (`CHARACTER_LANGUAGES`: Chinese, Cantonese, Japanese) each
  Han or kana character is a word, and runs of other characters (a Latin word inside Chinese) stay one word each;
  so on pure Chinese text WER equals CER. No word segmenter is used: segmenter-dependent WERs are not comparable
  across toolkits. Every other language splits on whitespace; an unknown language (None) splits Han and kana
  characters apart and everything else on whitespace.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import jiwer

__all__ = ["CHARACTER_LANGUAGES", "cer", "normalize", "wer", "wer_units"]

CHARACTER_LANGUAGES = frozenset({"zh", "yue", "ja", "cmn", "chinese", "cantonese", "japanese", "中文", "日文", "粤语"})

_APOSTROPHES = str.maketrans("", "", "'\u2019")
# CJK unified ideographs (and extension A, compatibility ideographs), hiragana and katakana: one word per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_UNITS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def normalize(text: str) -> str:
    """The text as both rates see it: NFKC, case-folded, punctuation removed, single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def wer_units(text: str, language: str | None) -> list[str]:
    """The words of normalised `text` that WER counts in `language` (characters for Chinese and Japanese). An
    unknown language (None) splits Han and kana characters too, which leaves text without them split on spaces."""
    text = normalize(text)
    if language is None or language.strip().lower() in CHARACTER_LANGUAGES:
        return _CJK_UNITS.findall(text)
    return text.split()


def _check(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be lists of strings, not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference(s) but {len(hyps)} hypothesis(es); they must pair up")
    if not refs:
        raise ValueError("no references to score")


def _empty_reference(index: int, ref: str) -> ValueError:
    return ValueError(f"reference #{index} {ref!r} is empty after normalisation; an error rate needs reference text")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate of `hyps` against `refs` (normalised, whitespace removed); can exceed 1 (insertions)."""
    _check(refs, hyps)
    ref_chars = ["".join(normalize(r).split()) for r in refs]
    hyp_chars = ["".join(normalize(h).split()) for h in hyps]
    for i, chars in enumerate(ref_chars):
        if not chars:
            raise _empty_reference(i, refs[i])
    # jiwer scores whole strings per character; an empty hypothesis is all deletions
    return jiwer.process_characters(ref_chars, hyp_chars).cer


def wer(refs: Sequence[str], hyps: Sequence[str], language: str | None | Sequence[str | None]) -> float:
    """Word error rate of `hyps` against `refs` in `language` (see the module docstring for Chinese and Japanese);
    a list gives each utterance's language, for one rate pooled over a mixed-language set."""
    _check(refs, hyps)
    languages = [language] * len(refs) if language is None or isinstance(language, str) else list(language)
    if len(languages) != len(refs):
        raise ValueError(f"{len(languages)} language(s) for {len(refs)} reference(s); give one, or one per reference")
    ref_words = [wer_units(r, lang) for r, lang in zip(refs, languages)]
    hyp_words = [wer_units(h, lang) for h, lang in zip(hyps, languages)]
    for i, words in enumerate(ref_words):
        if not words:
            raise _empty_reference(i, refs[i])
    # units joined by single spaces: jiwer's default transform splits them back exactly
    return jiwer.process_words([" ".join(w) for w in ref_words], [" ".join(w) for w in hyp_words]).wer
