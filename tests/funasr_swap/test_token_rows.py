"""TrainableTokenRows: the embedding with a few rows trained, equal to peft's trainable tokens, merged in place."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import TrainableTokensConfig, TrainableTokensModel
from transformers import AutoModel

from funasr_swap.llms import tiny_text_config
from funasr_swap.token_rows import TrainableTokenRows

ROWS = [7, 3, 120]


@pytest.fixture(params=["Llama-3.2-1B", "gemma-2-2b"])
def llm(request):
    """A tiny LLM backbone (Gemma-2's embedding scales its rows by sqrt(hidden))."""
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_text_config(request.param)).eval()


def _with_rows(llm, delta: torch.Tensor) -> TrainableTokenRows:
    rows = TrainableTokenRows(llm.get_input_embeddings(), ROWS)
    with torch.no_grad():
        rows.delta.copy_(delta)
    llm.set_input_embeddings(rows)
    return rows


def test_rows_equal_peft_trainable_tokens(llm):
    ids = torch.tensor([[7, 1, 3, 3, 500, 120], [2, 120, 9, 7, 0, 1]])
    delta = torch.randn(len(ROWS), llm.config.hidden_size)
    reference = TrainableTokensModel(copy.deepcopy(llm), TrainableTokensConfig(token_indices=ROWS), "default")
    layer = reference.model.get_input_embeddings()
    with torch.no_grad():  # peft holds the rows' values, in token_indices order: originals + delta
        original = layer.trainable_tokens_original["default"]
        order = sorted(ROWS)
        layer.trainable_tokens_delta["default"].copy_(original + delta[[order.index(t) for t in ROWS]])
    _with_rows(llm, delta)
    with torch.no_grad():
        torch.testing.assert_close(llm(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


def test_only_the_delta_gets_gradients(llm):
    llm.requires_grad_(False)
    rows = _with_rows(llm, torch.zeros(len(ROWS), llm.config.hidden_size))
    rows.delta.requires_grad_(True)
    llm(input_ids=torch.tensor([[7, 1, 120, 4]])).last_hidden_state.sum().backward()
    assert rows.weight.grad is None and rows.weight is rows.embedding.weight
    grad = rows.delta.grad
    assert grad[sorted(ROWS).index(3)].abs().sum() == 0  # token 3 is not in the input
    assert grad[sorted(ROWS).index(7)].abs().sum() > 0 and grad[sorted(ROWS).index(120)].abs().sum() > 0


def test_merge_writes_the_rows_into_the_table(llm):
    before = llm.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[7, 1, 3, 120, 4]])
    rows = _with_rows(llm, torch.randn(len(ROWS), llm.config.hidden_size))
    with torch.no_grad():
        expected = llm(input_ids=ids).last_hidden_state
    embedding = rows.merge()
    llm.set_input_embeddings(embedding)
    after = embedding.weight.detach()
    assert (after != before).any(dim=1).nonzero().flatten().tolist() == sorted(ROWS)
    with torch.no_grad():
        torch.testing.assert_close(llm(input_ids=ids).last_hidden_state, expected)


def test_bad_rows_are_refused(llm):
    embedding = llm.get_input_embeddings()
    for ids in ([], [-1], [embedding.weight.shape[0]]):
        with pytest.raises(ValueError, match=f"below the embedding's {embedding.weight.shape[0]} rows"):
            TrainableTokenRows(embedding, ids)
