"""Train a few rows of a frozen input embedding: the rows of speech markers a swap added (`markers="add"`).

peft's trainable tokens (`TrainableTokensModel`, LoRA's `trainable_token_indices`) give the same model, but build
the whole merged table in every forward (a copy of it) and its dense gradient in every backward: for DeepSeek-V2's
102,400 rows that was 90 ms of a 0.23 s adaptor-retraining step on a CPU core in the miniature world, and on a GPU
two extra copies of a 0.4-1.2 GB table per step. `TrainableTokenRows` adds a trained (rows, hidden) delta where
those ids occur and only reads the frozen table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainableTokenRows"]


class TrainableTokenRows(nn.Module):
    """`embedding` (frozen) plus a trainable delta on the rows of `token_ids`; what `embedding` would return with
    those rows replaced by their trained values (its `embed_scale`, as Gemma-2's scaled embedding has, applies to
    them too). `merge()` writes the trained rows into `embedding.weight` and returns `embedding`."""

    def __init__(self, embedding: nn.Embedding, token_ids: Sequence[int]):
        super().__init__()
        ids = sorted(set(token_ids))
        vocabulary = embedding.weight.shape[0]
        if not ids or ids[0] < 0 or ids[-1] >= vocabulary:
            raise ValueError(f"token_ids must be non-empty ids below the embedding's {vocabulary} rows, got {ids}")
        self.embedding = embedding
        self.register_buffer("token_ids", torch.tensor(ids, device=embedding.weight.device), persistent=False)
        # id -> its delta row; every other id -> the last row, which stays zero
        slots = torch.full((vocabulary,), len(ids), dtype=torch.long, device=embedding.weight.device)
        slots[self.token_ids] = torch.arange(len(ids), device=embedding.weight.device)
        self.register_buffer("slots", slots, persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(ids), embedding.weight.shape[1], device=embedding.weight.device))

    @property
    def weight(self) -> nn.Parameter:
        """The frozen table (without the trained rows' deltas), as code that reads `get_input_embeddings().weight`
        expects."""
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.embedding(input_ids)
        delta = F.pad(self.delta, (0, 0, 0, 1))  # the zero row of the other ids
        shift = F.embedding(self.slots[input_ids], delta)
        scale = getattr(self.embedding, "embed_scale", None)
        if scale is not None:
            shift = shift * scale.to(shift.dtype)
        return out + shift.to(out.dtype)

    @torch.no_grad()
    def merge(self) -> nn.Embedding:
        """`embedding` with the trained rows written in (tied output rows change with it)."""
        weight = self.embedding.weight
        weight[self.token_ids] += self.delta.to(weight.dtype)
        return self.embedding
