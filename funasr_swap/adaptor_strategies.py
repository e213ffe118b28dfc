"""How a swap initialises the adaptor, as plain values: `funasr_swap.adaptor` implements them, and the CLI and the
miniature's config offer them without importing torch."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["RESIZE_STRATEGIES", "STRATEGIES", "ResizeStrategy", "Strategy"]

ResizeStrategy = Literal["fresh", "bridge"]  # what `resize_adaptor` builds
# `vocab` (funasr_swap.vocab_init) starts from one of the others and then fits the adaptor on speech frames carried
# through the vocabulary; `resize_adaptor` builds the start.
Strategy = Literal[ResizeStrategy, "vocab"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
RESIZE_STRATEGIES: tuple[ResizeStrategy, ...] = get_args(ResizeStrategy)
