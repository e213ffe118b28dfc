"""A tokenizer's chat setup: the chat family and speech markers a swap chose for it, saved with the tokenizer (its
`tokenizer_config.json`, which every `save_pretrained` of the model's processor writes again) and read back by
`read_chat_setup`, the one place that tells them for a saved model.

A tokenizer saved before the record existed (an older swap) or never swapped (the base) has none: its family is then
detected from its special tokens (`detect_family`) and its markers are the placeholder alone. Detection is a guess
where families share every special token (deepseek-llm and deepseek-v2); the record is what the swap chose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenmap.families import ChatFamily, detect_family, get_family
from tokenmap.markers import SpeechMarkers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CHAT_SETUP_KEY", "ChatSetup", "read_chat_setup", "record_chat_setup"]

CHAT_SETUP_KEY = "asr_chat_setup"  # the key in tokenizer_config.json


@dataclass(frozen=True)
class ChatSetup:
    """The chat family and speech markers of a tokenizer; `recorded` is False where they were detected instead."""

    family: ChatFamily
    markers: SpeechMarkers
    recorded: bool


def record_chat_setup(tokenizer: PreTrainedTokenizerBase, family: str | ChatFamily, markers: SpeechMarkers) -> None:
    """Keep `family` and `markers` in `tokenizer` (IN PLACE): its `save_pretrained` writes them, loading reads them."""
    fields = dataclasses.asdict(markers) | {"added_ids": list(markers.added_ids)}
    tokenizer.init_kwargs[CHAT_SETUP_KEY] = {"family": get_family(family).name, "markers": fields}


def read_chat_setup(tokenizer: PreTrainedTokenizerBase, placeholder: str) -> ChatSetup:
    """The chat setup `record_chat_setup` kept in `tokenizer`; without one, the family detected from the tokenizer
    (ValueError for a tokenizer of no known family) and `placeholder` (the processor's audio token) as the only
    marker, its strategy `reuse` when it is one of the family's unused special tokens, else `add`.

    A record whose placeholder is not `placeholder`, or whose ids are not this tokenizer's, raises ValueError."""
    saved = tokenizer.init_kwargs.get(CHAT_SETUP_KEY)
    if saved is None:
        family = detect_family(tokenizer)
        unused = {token for token, _ in family.unused_special_tokens(tokenizer)}
        strategy = "reuse" if placeholder in unused else "add"
        markers = SpeechMarkers(placeholder, tokenizer.convert_tokens_to_ids(placeholder), strategy=strategy)
        return ChatSetup(family, markers, recorded=False)
    markers = SpeechMarkers(**saved["markers"] | {"added_ids": tuple(saved["markers"]["added_ids"])})
    if markers.placeholder != placeholder:
        raise ValueError(
            f"the tokenizer's recorded speech placeholder {markers.placeholder!r} is not the processor's audio token "
            f"{placeholder!r}"
        )
    for token, token_id in markers.tokens.values():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise ValueError(f"the tokenizer's recorded speech marker {token!r}={token_id} is not one of its tokens")
    return ChatSetup(get_family(saved["family"]), markers, recorded=True)
