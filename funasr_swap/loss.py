"""Cross-entropy through the LM head without the full-vocabulary logits: chunked, recomputed in the backward pass.

The training loss needs, at N supervised positions, `cross_entropy(softcap(hidden @ W.T), targets)`: (N, V) logits,
V = 151,936 (Qwen3) to 256,000 (Gemma-2). Computed whole, autograd keeps the bf16 logits, their float32 copy, the
soft-capped ones and the gradient of each: at 8k supervised tokens of Gemma-2 that is over 20 GB.
`chunked_cross_entropy` runs the head over `chunk` rows at a time, keeps only each row's log-sum-exp (N floats), and
in the backward pass recomputes each chunk's logits to form `(softmax - onehot) * d softcap` and multiply it back
through W: the peak is a few (chunk, V) float32 buffers, whatever N is (`CHUNK_ELEMENTS` sets chunk =
CHUNK_ELEMENTS // V rows). The price is one more (N, H) x (H, V) product, the forward's, in the backward.

Gradients flow to `hidden` and, when it requires one, to `weight` (a trained, e.g. tied, LM head); the result equals
`F.cross_entropy(softcap(F.linear(hidden, weight)).float(), targets)` (tested in value and gradient). Soft-capping
(`cap * tanh(z / cap)`, Gemma-2's `final_logit_softcapping`) is applied here in float32, not by the lm_head's hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CHUNK_ELEMENTS", "CTC_SCALE", "chunked_cross_entropy", "lm_head_cross_entropy", "token_scores"]

# logits per chunk: 2^25 float32 = 128 MiB, 131 rows of Gemma-2's 256k vocabulary (a chunk's backward holds about
# three such buffers); large enough that each chunk's product still runs at full matrix-unit rate on a GPU
CHUNK_ELEMENTS = 2**25
CTC_SCALE = 20.0  # the CTC logit of token t at a frame whose adaptor output is e_t; the blank's is half


def token_scores(frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """How much of each token's input embedding each adaptor frame holds, as the adaptor CTC loss reads a frame:
    `CTC_SCALE h.e_t / |e_t|^2` (float32), frames (N, H), embeddings (K, H) -> (N, K)."""
    embeddings = embeddings.float()
    return CTC_SCALE * (frames.float() @ embeddings.T) / embeddings.pow(2).sum(1)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's product runs in: autocast's where it is on (what `F.linear` would use), else the
    weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 (c, V) logits of one chunk, soft-capped; and tanh(z / cap) (for the derivative) when capped."""
    z = (h @ weight.T).float()  # (c, V)
    if not softcap:
        return z, None
    t = z.div_(softcap).tanh_()  # in place: z is t now
    return t * softcap, t


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk, dtype):  # noqa: D102 - see chunked_cross_entropy
        h, w = hidden.to(dtype), weight.to(dtype)
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        picked = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            z, _ = _chunk_logits(h[s : s + chunk], w, softcap)
            lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
            picked[s : s + chunk] = z.gather(1, targets[s : s + chunk, None])[:, 0]
            del z
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.softcap, ctx.chunk, ctx.dtype = softcap, chunk, dtype
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        hidden, weight, targets, lse = ctx.saved_tensors
        softcap, chunk, dtype = ctx.softcap, ctx.chunk, ctx.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        n = hidden.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        scale = grad_output.float() / n  # d mean / d loss_i
        for s in range(0, n, chunk):
            hc = h[s : s + chunk]
            z, t = _chunk_logits(hc, w, softcap)
            g = z.sub_(lse[s : s + chunk, None]).exp_()  # softmax, in place: (c, V)
            g[torch.arange(g.shape[0], device=g.device), targets[s : s + chunk]] -= 1.0
            g.mul_(scale)
            if t is not None:
                g.mul_(t.mul_(t).neg_().add_(1.0))  # d(cap * tanh(z / cap)) / dz = 1 - tanh^2
                del t
            g = g.to(dtype)
            if want_hidden:
                grad_hidden[s : s + chunk] = (g @ w).to(hidden.dtype)  # (c, H)
            if want_weight:
                grad_weight += (g.T @ hc).float()  # (V, H)
            del z, g
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `softcap(hidden @ weight.T)` against `targets`, never holding all (N, V) logits.

    hidden (N, H) at the supervised positions, weight (V, H) the LM head's, targets (N,) token ids (no ignored
    ones: select the supervised rows first). `chunk` rows at a time (default CHUNK_ELEMENTS // V). The product runs
    in autocast's dtype where autocast is on, else in the weight's; the softmax in float32.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be ({hidden.shape[0]},), got {tuple(targets.shape)}")
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.shape[0])
    dtype = _compute_dtype(hidden, weight)
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, softcap, chunk, dtype)


def lm_head_cross_entropy(
    lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `lm_head(hidden)` (soft-capped by `softcap`) against `targets`: chunked where the head
    is a plain bias-free `nn.Linear` whose forward hooks are at most the soft-capping one (`softcap` names its cap),
    else through the module itself (full logits, its hooks run)."""
    plain = type(lm_head) is nn.Linear and lm_head.bias is None and not lm_head._forward_pre_hooks
    hooks = len(lm_head._forward_hooks)
    if plain and hooks <= (1 if softcap else 0):
        return chunked_cross_entropy(hidden, lm_head.weight, targets, softcap=softcap)
    return F.cross_entropy(lm_head(hidden).float(), targets)
