"""chunked_cross_entropy equals the full-logits cross-entropy in value and in both gradients (hidden, weight), with
and without soft-capping, on chunk sizes that do and do not divide N; lm_head_cross_entropy takes the chunked path
only for a plain head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from funasr_swap.loss import chunked_cross_entropy, lm_head_cross_entropy


def _reference(hidden, weight, targets, softcap):
    logits = F.linear(hidden, weight).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets)


def _inputs(seed: int, n: int = 37, h: int = 24, v: int = 301, scale: float = 1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = (scale * torch.randn(v, h, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 8, 37, 100])
def test_equals_full_cross_entropy_in_value_and_gradients(softcap, chunk):
    # float64, weights large enough (scale 2) that the cap bends most logits: equal to rounding
    hidden, weight, targets = _inputs(seed=chunk, scale=2.0)
    expected = _reference(hidden, weight, targets, softcap)
    grad_h, grad_w = torch.autograd.grad(expected, (hidden, weight))
    loss = chunked_cross_entropy(hidden, weight, targets, softcap=softcap, chunk=chunk)
    got_h, got_w = torch.autograd.grad(loss, (hidden, weight))
    # the float32 softmax inside (as F.cross_entropy(logits.float()) computes it) bounds the agreement
    torch.testing.assert_close(loss.double(), expected.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, grad_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, grad_w, rtol=1e-5, atol=1e-6)


def test_float32_matches_the_full_path_and_frozen_weight_gets_no_gradient():
    hidden, weight, targets = _inputs(seed=0, dtype=torch.float32)
    weight.requires_grad_(False)
    expected = _reference(hidden, weight, targets, 30.0)
    (grad_h,) = torch.autograd.grad(expected, hidden)
    loss = chunked_cross_entropy(hidden, weight, targets, softcap=30.0, chunk=5)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, grad_h, rtol=1e-5, atol=1e-7)
    assert weight.grad is None


def test_bfloat16_autocast_matches_within_bf16_tolerance():
    hidden, weight, targets = _inputs(seed=1, n=64, h=64, v=1000, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _reference(hidden, weight, targets, None)
        loss = chunked_cross_entropy(hidden, weight, targets, chunk=16)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    grad = torch.autograd.grad(loss, hidden)[0]
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_lm_head_cross_entropy_uses_the_module_when_it_is_not_plain():
    hidden, _, targets = _inputs(seed=2, dtype=torch.float32)
    head = nn.Linear(hidden.shape[1], 301, bias=True)  # a bias: not the plain head, so the module runs
    torch.testing.assert_close(
        lm_head_cross_entropy(head, hidden, targets), F.cross_entropy(head(hidden), targets), rtol=1e-6, atol=1e-6
    )
    plain = nn.Linear(hidden.shape[1], 301, bias=False)
    calls = []
    plain.register_forward_hook(lambda module, inputs, output: calls.append(1))
    lm_head_cross_entropy(plain, hidden, targets)  # an unknown hook: the module runs, and so does the hook
    assert calls == [1]


def test_shapes_are_checked():
    hidden, weight, targets = _inputs(seed=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="hidden"):
        chunked_cross_entropy(hidden[:, :-1], weight, targets)
