"""Speech markers: the audio placeholder token and optional start/end boundary tokens, resolved per tokenizer.

Fun-ASR-Nano repeats one placeholder token once per audio frame and overwrites its embeddings with the adaptor's
output, so any token with an embedding row serves; the original training code also wrapped the audio in
`<|startofspeech|>` / `<|endofspeech|>`. Two explicit strategies resolve them for a target tokenizer:

- `reuse`: take genuinely unused special tokens of the family (Llama-3 `<|reserved_special_token_N|>`, Gemma
  `<unusedN>`, Qwen `<|object_ref_start|>`-like vision tokens, DeepSeek-V3 place-holders); no embedding resize.
- `add`: add new special tokens to the tokenizer; their ids are returned so the model side can add (or initialise)
  the embedding rows, which then train with the adaptor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tokenmap.families import ChatFamily, detect_family, get_family

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Strategy = Literal["reuse", "add"]

ADDED_PLACEHOLDER = "<|speech_pad|>"
ADDED_START = "<|startofspeech|>"
ADDED_END = "<|endofspeech|>"


@dataclass(frozen=True)
class SpeechMarkers:
    """The audio placeholder (repeated once per audio frame) and optional boundary tokens, with their ids."""

    placeholder: str
    placeholder_id: int
    start: str | None = None
    start_id: int | None = None
    end: str | None = None
    end_id: int | None = None
    strategy: Strategy = "reuse"
    added_ids: tuple[int, ...] = ()  # ids created by `add`: their embedding rows must be added/initialised

    @property
    def audio_span(self) -> str:
        """The text that stands for one audio item before placeholder expansion."""
        return (self.start or "") + self.placeholder + (self.end or "")

    @property
    def tokens(self) -> dict[str, tuple[str, int]]:
        """role -> (token, id) for the markers that are set."""
        out = {"placeholder": (self.placeholder, self.placeholder_id)}
        if self.start is not None:
            out["start"] = (self.start, self.start_id)
            out["end"] = (self.end, self.end_id)
        return out


def default_strategy(family: str | ChatFamily) -> Strategy:
    """The marker strategy a swap into `family` uses unless told otherwise: `reuse` where the family's tokenizers
    have unused special tokens (no embedding resize), else `add`."""
    return "reuse" if get_family(family).unused_special else "add"


def resolve_speech_markers(
    tokenizer: PreTrainedTokenizerBase,
    strategy: Strategy | None = None,
    *,
    boundaries: bool = False,
    family: str | ChatFamily | None = None,
) -> SpeechMarkers:
    """Resolve speech markers for `tokenizer` (of `family`, detected when None) by `strategy`; None: the family's
    default (`default_strategy`), the one place that applies it.

    `reuse` takes the family's first unused special tokens in id order (placeholder, then start and end when
    `boundaries`), and fails with a message suggesting `add` when there are not enough. `add` adds
    `<|speech_pad|>` (and `<|startofspeech|>` / `<|endofspeech|>`) as special tokens to `tokenizer` IN PLACE, reusing
    any that already exist, and reports the new ids in `added_ids`.
    """
    fam = get_family(family) if family is not None else detect_family(tokenizer)
    strategy = strategy if strategy is not None else default_strategy(fam)
    wanted = 3 if boundaries else 1
    if strategy == "reuse":
        free = fam.unused_special_tokens(tokenizer)
        if len(free) < wanted:
            raise ValueError(
                f"strategy 'reuse': the {fam.name} tokenizer has {len(free)} unused special token(s), "
                f"{wanted} needed ({'placeholder + start/end' if boundaries else 'placeholder'}); "
                "use strategy 'add' (CLI: --markers add) to add new special tokens"
            )
        chosen = free[:wanted]
        added: list[int] = []
    elif strategy == "add":
        names = [ADDED_PLACEHOLDER, ADDED_START, ADDED_END][:wanted]
        vocab = tokenizer.get_vocab()
        new = [name for name in names if name not in vocab]
        if new:
            tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        chosen = [(name, tokenizer.convert_tokens_to_ids(name)) for name in names]
        added = [tokenizer.convert_tokens_to_ids(name) for name in new]
    else:
        raise ValueError(f"strategy must be 'reuse' or 'add', got {strategy!r}")
    (placeholder, placeholder_id), *bounds = chosen
    (start, start_id), (end, end_id) = bounds if bounds else ((None, None), (None, None))
    return SpeechMarkers(placeholder, placeholder_id, start, start_id, end, end_id, strategy, tuple(added))
