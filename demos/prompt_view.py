"""A model's ASR prompt token by token: each token's text and id, role markers and speech markers told apart.

The ids are the ones `funasr_swap.transcribe.transcription_inputs` feeds the model (the processor's chat template:
the training prompt, `tokenmap.prompt.build_asr_prompt`, token for token). Which tokens are markers comes from the
model's chat family (`tokenmap.families.ChatFamily`): tokens that spell the family's role markers
(`<|im_start|>user\\n`, `User: `, ...) are "role"; the audio placeholder and any speech boundary or unused
special token of the family are "speech"; other special tokens (BOS) are "special"; the rest is "text".
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from transformers import FunAsrNanoProcessor

__all__ = ["KIND_COLOURS", "PromptToken", "prompt_html", "prompt_tokens"]

Kind = Literal["role", "speech", "special", "text"]
KIND_COLOURS: dict[str, str] = {"role": "#bfdbfe", "speech": "#bbf7d0", "special": "#e5e7eb", "text": "#ffffff"}


@dataclass(frozen=True)
class PromptToken:
    """One token of the prompt, or a run of the same token (the audio placeholder, once per audio frame)."""

    id: int
    text: str  # the token decoded on its own
    kind: Kind
    count: int = 1


def _role_spans(text: str, markers: list[str]) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of every marker string in `text`."""
    spans = []
    for marker in filter(None, markers):
        start = text.find(marker)
        while start >= 0:
            spans.append((start, start + len(marker)))
            start = text.find(marker, start + 1)
    return spans


def prompt_tokens(processor: FunAsrNanoProcessor, audio_seconds: float = 1.0) -> list[PromptToken]:
    """The prompt of a clip of `audio_seconds`, token by token, consecutive repeats (the audio placeholder) merged.

    Raises ValueError when the tokenizer belongs to no known chat family."""
    from funasr_swap.transcribe import transcription_inputs
    from tokenmap.families import detect_family
    from tokenmap.markers import ADDED_END, ADDED_START

    sampling_rate = processor.feature_extractor.sampling_rate
    inputs = transcription_inputs(processor, [np.zeros(round(audio_seconds * sampling_rate), np.float32)])
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    tokenizer = processor.tokenizer
    family = detect_family(tokenizer)
    speech = {processor.audio_token, ADDED_START, ADDED_END} | {t for t, _ in family.unused_special_tokens(tokenizer)}
    # marked special in the tokenizer itself (all_special_ids also lists Gemma-2's unspecial whitespace tokens)
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    texts = [tokenizer.decode([i]) for i in ids]
    # role markers are found in the concatenated token texts, so each token's span is exactly its own text's
    roles = _role_spans("".join(texts), [family.system_start, family.system_end, family.user_start, family.user_end,
                                          family.assistant_start, family.think_block or ""])  # fmt: skip
    tokens: list[PromptToken] = []
    offset = 0
    for token_id, text in zip(ids, texts):
        start, offset = offset, offset + len(text)
        if tokenizer.convert_ids_to_tokens(token_id) in speech:
            kind: Kind = "speech"
        elif any(start < end and offset > begin for begin, end in roles):
            kind = "role"
        elif token_id in special:
            kind = "special"
        else:
            kind = "text"
        if tokens and tokens[-1].id == token_id and kind == "speech":
            tokens[-1] = PromptToken(token_id, text, kind, tokens[-1].count + 1)
        else:
            tokens.append(PromptToken(token_id, text, kind))
    return tokens


def _shown(text: str) -> str:
    """Whitespace made visible: a token that is only a newline or a space must still show."""
    return html.escape(text).replace("\n", "↵").replace(" ", "·") or "∅"


def prompt_html(tokens: list[PromptToken]) -> str:
    """The tokens as coloured chips, each with its id below (and the repeat count of a run)."""
    chips = []
    for token in tokens:
        repeat = f" ×{token.count}" if token.count > 1 else ""
        chips.append(
            f'<span class="tok tok-{token.kind}" title="{token.kind}" style="background:{KIND_COLOURS[token.kind]}">'
            f"<code>{_shown(token.text)}{repeat}</code><sub>{token.id}</sub></span>"
        )
    return '<div class="prompt-tokens">' + "".join(chips) + "</div>"
