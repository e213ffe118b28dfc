"""Resizing the adaptor to a new LLM width: `resize_adaptor`, with the embedding bridge it can use.

The adaptor is transformers' `FunAsrNanoMultiModalProjector`:

    encoder out (B, T, 512) -> linear_1 (-> 2048) -> ReLU -> linear_2 (-> d) -> N pre-norm blocks at width d

and each block computes (no final norm in the adaptor)

    h = h + o_proj(attention(LN1(h)))      # H heads of d / H, softmax(q k^T / sqrt(d / H)), biases everywhere
    h = h + fc2(relu(fc1(LN2(h))))         # inner width d // 4

Two strategies give an adaptor of the same structure at a new width d' (a standard projector, so the swapped
folder stays loadable by stock transformers):

- `fresh`: keep the encoder-side `linear_1`, initialise everything after it anew (transformers' init).
- `bridge`: widen the old adaptor so that it computes W · old_adaptor(x), with W = s·Q (d' x d) fitted between the
  two LLMs' input embeddings (`fit_embedding_bridge`). Q is an isometry (Q^T Q = I) that maps the normalised ones
  vector to the normalised ones vector, so the residual stream of the new adaptor is W times the old one and:
  * linear_2, o_proj, fc2 (writers to the residual stream) are multiplied by W on the left;
  * LayerNorm commutes with Q: centring commutes because Q maps ones to ones and their complements to each other,
    and the norm scales by sqrt(d / d'), a constant folded into the readers below. The old LayerNorm gains and
    biases are folded into the linear maps that read them (SliceGPT), so the new LayerNorms are the identity
    affine (weight 1, bias 0);
  * q_proj, k_proj, v_proj, fc1 (readers) are multiplied by Q^T on the right; their outputs are padded per head
    (q, k, v) or at the end (fc1) to the new head size d'/H and inner width d'//4;
  * the attention temperature changes from 1/sqrt(d/H) to 1/sqrt(d'/H): q is scaled by sqrt(d'/d) to compensate.
  Padded units are function-preserving without being dead: their input side (q, v, fc1 rows) keeps the fresh
  random init and their output side (k rows, o_proj and fc2 columns) is zero, so q·k, the attention output and the
  FFN output are unchanged while every padded weight gets a gradient within a step or two (zeros on both sides
  would stay zero under gradient descent).
  The construction is exact up to float rounding and LayerNorm's eps: the widened LayerNorm sees the variance
  scaled by s²·d/d', so the identity holds up to eps / variance (the real adaptor's eps is 1e-12). The report
  measures it: max |new(x) - W·old(x)| on a probe batch of encoder outputs. It only widens (d' >= d); narrowing
  would drop information and is refused.

Typical use (what `swap_llm` does):

    src_ids, dst_ids = map(torch.as_tensor, VocabMap.build(old_tokenizer, new_tokenizer).pairs())
    bridge = fit_embedding_bridge(old_embed.weight[src_ids].float(), new_embed.weight[dst_ids].float())
    adaptor, report = resize_adaptor(model.model.multi_modal_projector, new_dim, "bridge", bridge=bridge)
    # build the new FunAsrNanoConfig with adaptor_config=adaptor.config, then load adaptor.state_dict()
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import FunAsrNanoAdaptorConfig, FunAsrNanoConfig
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoMultiModalProjector

# The strategies' names live apart, free of torch, for the CLI; public here too, beside what implements them.
from funasr_swap.adaptor_strategies import RESIZE_STRATEGIES, STRATEGIES, ResizeStrategy, Strategy
from funasr_swap.llms import count_parameters

__all__ = [
    "RESIZE_STRATEGIES",
    "STRATEGIES",
    "EmbeddingBridge",
    "ResizeReport",
    "ResizeStrategy",
    "Strategy",
    "adaptor_config_for",
    "fit_embedding_bridge",
    "resize_adaptor",
]

Probe = tuple[torch.Tensor, torch.Tensor]  # encoder outputs (B, T, audio hidden), mask (B, T) with 1 = valid frame


# ------------------------------------------------------------------------------------------------ embedding bridge


@dataclass(frozen=True)
class EmbeddingBridge:
    """A linear map from the old LLM's input-embedding space (d_old) to the new one's (d_new), fitted on paired rows.

    `least_squares` is the best unconstrained map (for judging how linear the relation is); `weight` =
    `scale * isometry` is the map `resize_adaptor` applies, because only an isometry that maps the normalised
    ones vector to itself commutes with LayerNorm. Both are (d_new, d_old): new ≈ W @ old.
    """

    least_squares: torch.Tensor  # (d_new, d_old)
    isometry: torch.Tensor  # (d_new, d_old), Q^T Q = I (d_new >= d_old), Q 1/sqrt(d_old) = 1/sqrt(d_new)
    scale: float
    r2_least_squares: float  # R² of new ≈ old @ least_squares^T over the pairs (1 = perfect, 0 = the mean)
    r2_isometry: float  # R² of new ≈ old @ weight^T
    num_pairs: int

    @property
    def weight(self) -> torch.Tensor:
        """W = scale · isometry, (d_new, d_old): the map the bridged adaptor's output is multiplied by."""
        return self.scale * self.isometry

    @property
    def old_dim(self) -> int:
        return self.isometry.shape[1]

    @property
    def new_dim(self) -> int:
        return self.isometry.shape[0]

    def metrics(self) -> dict[str, float]:
        """The fit's numbers for a report table."""
        return {
            "pairs": float(self.num_pairs),
            "r2_least_squares": self.r2_least_squares,
            "r2_isometry": self.r2_isometry,
            "scale": self.scale,
        }


def _reflect(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """H @ matrix for the Householder reflection H (symmetric, H = H^-1) that swaps 1/sqrt(d) and e_1."""
    d = matrix.shape[0] if dim == 0 else matrix.shape[1]
    v = torch.full((d,), d**-0.5, dtype=matrix.dtype)
    v[0] -= 1.0
    norm2 = v @ v
    if dim == 0:
        return matrix - (2.0 / norm2) * torch.outer(v, v @ matrix)
    return matrix - (2.0 / norm2) * torch.outer(matrix @ v, v)


def fit_embedding_bridge(
    old_embeddings: torch.Tensor, new_embeddings: torch.Tensor, *, chunk_rows: int = 16384
) -> EmbeddingBridge:
    """Fit W with new_embeddings[i] ≈ W @ old_embeddings[i] over paired rows (the same token in both vocabularies).

    Args:
        old_embeddings: (n, d_old) rows of the old LLM's input embedding matrix.
        new_embeddings: (n, d_new) the rows of the same tokens in the new LLM's matrix (pair them with
            `tokenmap.VocabMap.pairs()`; a same-vocabulary swap pairs every row).
        chunk_rows: rows per step when accumulating the float64 Gram matrices (memory only).

    Returns the least-squares map and the constrained scaled isometry s·Q (orthogonal Procrustes with a scale,
    with Q fixed to map the normalised ones vector to the normalised ones vector), each with its R².
    """
    if old_embeddings.ndim != 2 or new_embeddings.ndim != 2:
        raise ValueError(
            f"old_embeddings and new_embeddings must be 2-D (n, d); got {tuple(old_embeddings.shape)} and "
            f"{tuple(new_embeddings.shape)}"
        )
    n, d_old = old_embeddings.shape
    if new_embeddings.shape[0] != n:
        raise ValueError(
            f"old_embeddings and new_embeddings must pair rows; got {n} and {new_embeddings.shape[0]} rows"
        )
    if n < 2:
        raise ValueError(f"fit_embedding_bridge needs at least 2 paired rows; got {n}")
    d_new = new_embeddings.shape[1]

    # One pass over the rows; everything else works on these sufficient statistics.
    gram = torch.zeros(d_old, d_old, dtype=torch.float64)  # X^T X
    cross = torch.zeros(d_new, d_old, dtype=torch.float64)  # Y^T X
    y_sum = torch.zeros(d_new, dtype=torch.float64)
    y_sq = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        x = old_embeddings[start : start + chunk_rows].detach().to("cpu", torch.float64)
        y = new_embeddings[start : start + chunk_rows].detach().to("cpu", torch.float64)
        gram += x.T @ x
        cross += y.T @ x
        y_sum += y.sum(0)
        y_sq += (y * y).sum()
    total = y_sq - (y_sum @ y_sum) / n  # sum of squares of Y around its mean

    def r2(w: torch.Tensor) -> float:
        # |Y - X W^T|^2 = |Y|^2 - 2 <Y^T X, W> + <W X^T X, W>
        residual = y_sq - 2 * (cross * w).sum() + ((w @ gram) * w).sum()
        return float(1 - residual / total)

    # gelsy gives the minimum-norm solution when X^T X is singular (fewer pairs than d_old, duplicated rows).
    least_squares = torch.linalg.lstsq(gram, cross.T, driver="gelsy").solution.T  # (d_new, d_old)

    # Q = H_new [[1, 0], [0, R]] H_old maps ones to ones; max <Y^T X, Q> over R is an orthogonal Procrustes
    # problem on the complements of the ones vectors, solved by the SVD.
    core = _reflect(_reflect(cross, dim=0), dim=1)[1:, 1:]
    u, _, vh = torch.linalg.svd(core, full_matrices=False)
    inner = torch.zeros(d_new, d_old, dtype=torch.float64)
    inner[0, 0] = 1.0
    inner[1:, 1:] = u @ vh
    isometry = _reflect(_reflect(inner, dim=0), dim=1)
    scale = float((cross * isometry).sum() / gram.trace())
    if scale <= 0:
        raise ValueError(
            f"the best isometric bridge has scale {scale:.4g} <= 0: the embeddings are anti-correlated, which a "
            f"map that commutes with LayerNorm cannot express; use strategy='fresh'"
        )
    return EmbeddingBridge(
        least_squares=least_squares.float(),
        isometry=isometry.float(),
        scale=scale,
        r2_least_squares=r2(least_squares),
        r2_isometry=r2(scale * isometry),
        num_pairs=n,
    )


# ------------------------------------------------------------------------------------------------ building adaptors


def adaptor_config_for(width: int, like: FunAsrNanoAdaptorConfig) -> FunAsrNanoAdaptorConfig:
    """`like` at another LLM width: hidden_size = width, intermediate_size = width // 4 (what
    `FunAsrNanoConfig.validate_architecture` demands); heads, layers, eps, projector and attention
    implementation are kept."""
    if width % like.num_attention_heads:
        raise ValueError(
            f"new_llm_dim {width} is not divisible by the adaptor's num_attention_heads {like.num_attention_heads}"
        )
    return FunAsrNanoAdaptorConfig(
        **{**like.to_dict(), "hidden_size": width, "intermediate_size": width // 4},
        attn_implementation=like._attn_implementation,
    )


def _fresh_projector(
    audio_hidden_size: int, adaptor_config: FunAsrNanoAdaptorConfig, seed: int
) -> FunAsrNanoMultiModalProjector:
    """A float32 CPU projector initialised as transformers initialises a new FunAsrNano model (normal(0,
    initializer_range) weights, zero biases, identity LayerNorms), seeded by `seed`."""
    # The constructor takes the full model config but reads only audio_config.hidden_size and adaptor_config; the
    # text config is there because FunAsrNanoConfig checks the adaptor width against it.
    config = FunAsrNanoConfig(
        audio_config={"hidden_size": audio_hidden_size},
        adaptor_config=adaptor_config,
        text_config={"hidden_size": adaptor_config.hidden_size},
        attn_implementation=adaptor_config._attn_implementation,  # or FunAsrNanoConfig resets the adaptor's
    )
    with torch.device("meta"):  # no default init to overwrite: the weights are drawn once, below
        projector = FunAsrNanoMultiModalProjector(config)
    projector.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in projector.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=config.initializer_range, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return projector


@torch.no_grad()
def _widen(old: FunAsrNanoMultiModalProjector, new: FunAsrNanoMultiModalProjector, bridge: EmbeddingBridge) -> None:
    """Overwrite `new` (freshly initialised, at least as wide) so that new(x) = W · old(x); see the module docstring.

    Products are taken in float64 and rounded once, into `new`'s parameters.
    """
    d_old, d_new = old.config.hidden_size, new.config.hidden_size
    heads, inner_old = old.config.num_attention_heads, old.config.intermediate_size
    w = bridge.weight.to(torch.float64)  # (d_new, d_old), writes to the residual stream
    q_t = bridge.isometry.to(torch.float64).T  # (d_old, d_new), reads from it
    c = math.sqrt(d_new / d_old)  # LN_new(W h) = c · Q · LN_old(h), gains and biases folded out
    # Where the old per-head dimensions sit in the new concatenated heads: each head is zero-padded at its end.
    head_old, head_new = d_old // heads, d_new // heads
    slots = (torch.arange(heads)[:, None] * head_new + torch.arange(head_old)).flatten()  # (d_old,)
    everything = slice(None)

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64)

    def write(param: torch.Tensor, value: torch.Tensor, index: tuple = (everything,)) -> None:
        param[index] = value.to(param.dtype)

    def reader(linear: nn.Linear, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """`linear` reading `norm`'s output, with the norm's gain and bias folded in, rewritten to read the new
        normalised stream c·Q·z: (weight (out, d_new), bias (out,))."""
        weight = f64(linear.weight) * f64(norm.weight)  # W · diag(gamma), (out, d_old)
        bias = f64(linear.bias) + f64(linear.weight) @ f64(norm.bias)
        return weight @ q_t / c, bias

    write(new.linear_1.weight, f64(old.linear_1.weight))
    write(new.linear_1.bias, f64(old.linear_1.bias))
    write(new.linear_2.weight, w @ f64(old.linear_2.weight))
    write(new.linear_2.bias, w @ f64(old.linear_2.bias))

    for old_block, new_block in zip(old.layers, new.layers, strict=True):
        old_attn, new_attn = old_block.self_attn, new_block.self_attn
        # q is scaled by c = sqrt(head_new / head_old): q·k / sqrt(head_new) = q_old·k_old / sqrt(head_old).
        weight, bias = reader(old_attn.q_proj, old_block.input_layernorm)
        write(new_attn.q_proj.weight, c * weight, (slots,))
        write(new_attn.q_proj.bias, c * bias, (slots,))
        # Padded key dimensions are zero, so the (random) padded query dimensions add nothing to q·k.
        weight, bias = reader(old_attn.k_proj, old_block.input_layernorm)
        new_attn.k_proj.weight.zero_()
        new_attn.k_proj.bias.zero_()
        write(new_attn.k_proj.weight, weight, (slots,))
        write(new_attn.k_proj.bias, bias, (slots,))
        weight, bias = reader(old_attn.v_proj, old_block.input_layernorm)
        write(new_attn.v_proj.weight, weight, (slots,))
        write(new_attn.v_proj.bias, bias, (slots,))
        # o_proj reads nothing from the (random) padded value dimensions: their columns are zero.
        new_attn.o_proj.weight.zero_()
        write(new_attn.o_proj.weight, w @ f64(old_attn.o_proj.weight), (everything, slots))
        write(new_attn.o_proj.bias, w @ f64(old_attn.o_proj.bias))

        old_mlp, new_mlp = old_block.mlp, new_block.mlp
        weight, bias = reader(old_mlp.fc1, old_block.post_attention_layernorm)
        write(new_mlp.fc1.weight, weight, (slice(0, inner_old),))
        write(new_mlp.fc1.bias, bias, (slice(0, inner_old),))
        # fc2 reads nothing from the (random) padded inner units: their columns are zero.
        new_mlp.fc2.weight.zero_()
        write(new_mlp.fc2.weight, w @ f64(old_mlp.fc2.weight), (everything, slice(0, inner_old)))
        write(new_mlp.fc2.bias, w @ f64(old_mlp.fc2.bias))
        # The new LayerNorms keep the identity affine of the fresh init: the old gains and biases are folded above.


@torch.no_grad()
def _widening_error(
    old: FunAsrNanoMultiModalProjector, new: FunAsrNanoMultiModalProjector, w: torch.Tensor, probe: Probe
) -> tuple[float, float]:
    """(max abs, relative to max |W·old(x)|) of new(x) - W·old(x) over the probe's valid frames."""
    features, mask = probe
    valid = mask.bool()
    target = old(features, mask)[valid].float() @ w.float().T  # (frames, d_new)
    error = (new(features, mask)[valid].float() - target).abs().max().item()
    return error, error / target.abs().max().item()


def _default_probe(audio_hidden_size: int, seed: int) -> Probe:
    """Two sequences of 8 frames, the second with 3 padded frames: unit-variance values, like the encoder's
    LayerNorm-ed output."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 8, audio_hidden_size, generator=generator)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return features, mask


# ------------------------------------------------------------------------------------------------ resize_adaptor


@dataclass(frozen=True)
class ResizeReport:
    """What `resize_adaptor` did. The bridge fields are None for `fresh`."""

    strategy: str
    old_dim: int
    new_dim: int
    params_before: int
    params_after: int
    r2_least_squares: float | None = None  # the bridge's fit (see EmbeddingBridge)
    r2_isometry: float | None = None
    widening_max_error: float | None = None  # max |new(x) - W·old(x)| over the probe's valid frames
    widening_rel_error: float | None = None  # the same divided by max |W·old(x)|

    def metrics(self) -> dict[str, float]:
        """The numeric fields that are set, for a report table."""
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}


def resize_adaptor(
    adaptor: FunAsrNanoMultiModalProjector,
    new_llm_dim: int,
    strategy: ResizeStrategy = "fresh",
    *,
    bridge: EmbeddingBridge | None = None,
    probe: Probe | None = None,
    seed: int = 0,
) -> tuple[FunAsrNanoMultiModalProjector, ResizeReport]:
    """A copy of `adaptor` for an LLM of width `new_llm_dim`, and a report.

    The result is a standard `FunAsrNanoMultiModalProjector` whose `config` is `adaptor_config_for(new_llm_dim,
    adaptor.config)`: build the swapped model's `FunAsrNanoConfig` with `adaptor_config=new_adaptor.config` and
    load `new_adaptor.state_dict()` under `model.multi_modal_projector.`. It has the old adaptor's dtype, device
    and training mode; the old adaptor is not modified.

    Args:
        adaptor: the old projector (`model.model.multi_modal_projector`).
        new_llm_dim: the new LLM's `hidden_size`; must be divisible by the adaptor's number of heads.
        strategy: `fresh` keeps linear_1 and re-initialises the rest (transformers' init: normal(0, 0.02) weights,
            zero biases, identity LayerNorms), seeded by `seed`. `bridge` widens the old adaptor so that its output
            is `bridge.weight @ old_output` (see the module docstring); needs `bridge` and new_llm_dim >= old.
        bridge: from `fit_embedding_bridge(old_rows, new_rows)`; only with `strategy="bridge"`.
        probe: (encoder outputs (B, T, audio hidden), mask (B, T)) on which the bridge's widening error is
            measured; real encoder outputs are best. Default: a seeded random batch.
        seed: seeds the fresh weights (with `bridge`, those of the padded units' input side) and the default probe.
    """
    if not isinstance(adaptor, FunAsrNanoMultiModalProjector):
        raise TypeError(f"adaptor must be a FunAsrNanoMultiModalProjector; got {type(adaptor).__name__}")
    if strategy not in RESIZE_STRATEGIES:
        raise ValueError(f"strategy must be one of {RESIZE_STRATEGIES}; got {strategy!r}")
    if strategy == "bridge" and bridge is None:
        raise ValueError("strategy='bridge' needs bridge=fit_embedding_bridge(old_rows, new_rows)")
    if strategy == "fresh" and bridge is not None:
        raise ValueError("a bridge was given with strategy='fresh', which does not use it; pass strategy='bridge'")
    old_config = adaptor.config
    old_dim = old_config.hidden_size
    new_config = adaptor_config_for(new_llm_dim, like=old_config)  # checks divisibility by the heads
    if strategy == "bridge":
        if (bridge.old_dim, bridge.new_dim) != (old_dim, new_llm_dim):
            raise ValueError(
                f"bridge maps {bridge.old_dim} -> {bridge.new_dim}, but the adaptor is {old_dim} wide and "
                f"new_llm_dim is {new_llm_dim}"
            )
        if new_llm_dim < old_dim:
            raise ValueError(
                f"strategy='bridge' only widens: new_llm_dim {new_llm_dim} < adaptor width {old_dim}; use 'fresh'"
            )

    param = adaptor.linear_1.weight  # the result gets its dtype and device
    new = _fresh_projector(adaptor.linear_1.in_features, new_config, seed)
    if strategy == "fresh":
        with torch.no_grad():
            new.linear_1.weight.copy_(adaptor.linear_1.weight)
            new.linear_1.bias.copy_(adaptor.linear_1.bias)
        new = new.to(device=param.device, dtype=param.dtype).train(adaptor.training)
        return new, ResizeReport(strategy, old_dim, new_llm_dim, count_parameters(adaptor), count_parameters(new))

    _widen(adaptor, new, bridge)
    new = new.to(device=param.device, dtype=param.dtype)
    features, mask = probe if probe is not None else _default_probe(adaptor.linear_1.in_features, seed)
    training = adaptor.training
    adaptor.eval()
    new.eval()
    max_error, rel_error = _widening_error(
        adaptor, new, bridge.weight.to(param.device), (features.to(param.device, param.dtype), mask.to(param.device))
    )
    adaptor.train(training)
    new.train(training)
    report = ResizeReport(
        strategy,
        old_dim,
        new_llm_dim,
        count_parameters(adaptor),
        count_parameters(new),
        r2_least_squares=bridge.r2_least_squares,
        r2_isometry=bridge.r2_isometry,
        widening_max_error=max_error,
        widening_rel_error=rel_error,
    )
    return new, report
