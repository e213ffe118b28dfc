"""Adaptor resizing: `fresh` and `bridge` at every seed LLM width, on the real projector class.

The old adaptor has the real Fun-ASR-Nano structure (512 -> 2048 -> 1024, two blocks of 8 heads, FFN 256, eps 1e-12)
with weights of trained-like size (torch's default Linear init, random LayerNorm gains and biases, sharpened
queries) rather than transformers' 0.02 init, under which the blocks are nearly the identity and a wrong
conjugation could hide. Shapes and loadability run at every width. Widening exactness runs where the widening can
differ: the same width, a widening that changes the head size, and the widest (DeepSeek-V3's 7168: a 478M-parameter
adaptor, the longest sums for float32 rounding; marked slow). The widths between take the same code path with
shorter sums.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    FunAsrNanoAdaptorConfig,
    FunAsrNanoConfig,
    FunAsrNanoEncoderConfig,
    FunAsrNanoForConditionalGeneration,
)
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoMultiModalProjector

from funasr_swap.adaptor import EmbeddingBridge, adaptor_config_for, fit_embedding_bridge, resize_adaptor
from funasr_swap.convert import ADAPTOR_LAYER_NORM_EPS
from funasr_swap.llms import get_llm, tiny_text_config

# Every seed LLM width, with a registry LLM of that width (its tiny text config, at full width, hosts the adaptor).
WIDTHS = {
    1024: "Qwen3-0.6B",
    2048: "Llama-3.2-1B",
    2304: "Gemma-2-2B",
    2560: "Qwen3-4B",
    3072: "Llama-3.2-3B",
    3584: "Gemma-2-9B",
    4096: "Qwen3-8B",
    5120: "Qwen3-14B",
    7168: "DeepSeek-V3",
}
FAST_BRIDGE_WIDTHS = (1024, 2304)  # same width (orthogonal W), and a widening that changes the head size 128 -> 288
BRIDGE_WIDTHS = [*FAST_BRIDGE_WIDTHS, pytest.param(max(WIDTHS), marks=pytest.mark.slow)]


def trained_like_projector(
    seed: int,
    *,
    audio: int = 512,
    projector: int = 2048,
    width: int = 1024,
    heads: int = 8,
) -> FunAsrNanoMultiModalProjector:
    """A projector of the real class and structure with O(1) contributions from every weight (see module doc)."""
    adaptor_config = FunAsrNanoAdaptorConfig(
        hidden_size=width,
        num_attention_heads=heads,
        intermediate_size=width // 4,
        projector_hidden_size=projector,
        layer_norm_eps=ADAPTOR_LAYER_NORM_EPS,
        attn_implementation="sdpa",
    )
    config = FunAsrNanoConfig(
        audio_config={"hidden_size": audio},
        adaptor_config=adaptor_config,
        text_config={"hidden_size": width},
        attn_implementation="sdpa",  # as from_pretrained sets it
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = FunAsrNanoMultiModalProjector(config)  # nn.Linear's own init: U(±1/sqrt(fan_in))
        with torch.no_grad():
            for block in module.layers:
                block.self_attn.q_proj.weight.mul_(3.0)  # attention far from uniform
                for norm in (block.input_layernorm, block.post_attention_layernorm):
                    norm.weight.copy_(1 + 0.3 * torch.randn_like(norm.weight))
                    norm.bias.copy_(0.3 * torch.randn_like(norm.bias))
    return module.eval()


@pytest.fixture(scope="module")
def old_adaptor() -> FunAsrNanoMultiModalProjector:
    return trained_like_projector(seed=0)


def probe(audio: int, seed: int, batch: int = 3, frames: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder-output-like features (unit variance, as after the encoder's final LayerNorm) and a padding mask."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, frames, audio, generator=generator)
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[-1, frames // 2 :] = 0
    return features, mask


def ones_preserving_isometry(d_new: int, d_old: int, seed: int) -> torch.Tensor:
    """A random Q (d_new, d_old) with Q^T Q = I and Q·1/sqrt(d_old) = 1/sqrt(d_new), built by QR (Gram-Schmidt) of
    [ones | random] in both spaces: independent of the package's Householder construction."""
    generator = torch.Generator().manual_seed(seed)

    def basis(d: int, k: int) -> torch.Tensor:
        a = torch.randn(d, k, generator=generator)
        a[:, 0] = 1.0
        q, r = torch.linalg.qr(a)
        return q * torch.sign(torch.diagonal(r))  # first column +ones/sqrt(d)

    return basis(d_new, d_old) @ basis(d_old, d_old).T


def known_bridge(q: torch.Tensor, scale: float) -> EmbeddingBridge:
    """The bridge of an exactly known map (as if fitted on noiseless pairs)."""
    return EmbeddingBridge(
        least_squares=scale * q, isometry=q, scale=scale, r2_least_squares=1.0, r2_isometry=1.0, num_pairs=0
    )


def relative_error(new: nn.Module, old: nn.Module, w: torch.Tensor, inputs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """max |new(x) - W·old(x)| / max |W·old(x)| over the valid frames."""
    features, mask = inputs
    with torch.no_grad():
        target = old(features, mask)[mask.bool()] @ w.T
        return ((new(features, mask)[mask.bool()] - target).abs().max() / target.abs().max()).item()


# ------------------------------------------------------------------------------------------------ fresh


@pytest.mark.parametrize("width", WIDTHS)
def test_fresh_keeps_linear_1_and_loads_into_a_model_of_the_new_width(old_adaptor, width):
    new, report = resize_adaptor(old_adaptor, width, "fresh", seed=0)

    assert isinstance(new, FunAsrNanoMultiModalProjector)
    assert torch.equal(new.linear_1.weight, old_adaptor.linear_1.weight)
    assert torch.equal(new.linear_1.bias, old_adaptor.linear_1.bias)
    assert (new.config.hidden_size, new.config.intermediate_size) == (width, width // 4)
    assert (new.config.num_attention_heads, new.config.num_hidden_layers) == (8, 2)
    assert new.linear_2.weight.shape == (width, 2048)
    block = new.layers[1]
    for linear in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert getattr(block.self_attn, linear).weight.shape == (width, width)
    assert block.mlp.fc1.weight.shape == (width // 4, width)
    assert block.mlp.fc2.weight.shape == (width, width // 4)
    assert block.self_attn.head_dim == width // 8
    # transformers' init for a new FunAsrNano model: normal(0, 0.02) weights, zero biases, identity LayerNorms.
    assert torch.all(block.input_layernorm.weight == 1) and torch.all(block.input_layernorm.bias == 0)
    assert torch.all(new.linear_2.bias == 0)
    assert new.linear_2.weight.std().item() == pytest.approx(0.02, rel=0.02)

    blocks = 2 * (4 * (width * width + width) + 2 * width * (width // 4) + width // 4 + width + 4 * width)
    expected = (512 * 2048 + 2048) + (2048 * width + width) + blocks
    assert report.params_after == expected == sum(p.numel() for p in new.parameters())
    assert report.params_before == sum(p.numel() for p in old_adaptor.parameters())
    assert (report.strategy, report.old_dim, report.new_dim) == ("fresh", 1024, width)
    assert report.widening_max_error is None and "widening_max_error" not in report.metrics()

    # A stock FunAsrNano config of the new width (validate_architecture) takes it with a strict load.
    name = WIDTHS[width]
    assert get_llm(name).hidden_size == width
    audio_config = FunAsrNanoEncoderConfig(num_hidden_layers=2, num_timestamp_prediction_layers=1, intermediate_size=64)
    config = FunAsrNanoConfig(
        audio_config=audio_config,
        adaptor_config=new.config,
        text_config=tiny_text_config(name, hidden_size=width),
    )
    config = FunAsrNanoConfig.from_dict(config.to_dict())  # what a saved config.json gives back
    with torch.device("meta"):
        model = FunAsrNanoForConditionalGeneration(config)
    state = model.state_dict() | {f"model.multi_modal_projector.{k}": v for k, v in new.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(model.model.multi_modal_projector.linear_2.weight, new.linear_2.weight)


def test_fresh_is_seeded_and_keeps_dtype_device_and_mode(old_adaptor):
    a, _ = resize_adaptor(old_adaptor, 1024, seed=0)
    b, _ = resize_adaptor(old_adaptor, 1024, seed=0)
    c, _ = resize_adaptor(old_adaptor, 1024, seed=1)
    assert torch.equal(a.layers[0].self_attn.q_proj.weight, b.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(a.layers[0].self_attn.q_proj.weight, c.layers[0].self_attn.q_proj.weight)
    assert not a.training

    half = trained_like_projector(seed=0).to(torch.bfloat16).train()
    new, _ = resize_adaptor(half, 2048)
    assert new.linear_2.weight.dtype == torch.bfloat16 and new.training
    assert torch.equal(new.linear_1.weight, half.linear_1.weight)


# ------------------------------------------------------------------------------------------------ bridge: widening


@pytest.mark.parametrize("width", BRIDGE_WIDTHS)
def test_bridge_computes_w_times_the_old_adaptor(old_adaptor, width):
    """Same width (an orthogonal W) and widening (a semi-orthogonal W, head size 128 -> width / 8): exact up to
    float32 rounding, on a probe the report did not see; against another W it is nowhere near (the metric can fail:
    a fresh adaptor fails it too, test_a_fresh_adaptor_is_nowhere_near_w_times_the_old_adaptor)."""
    bridge = known_bridge(ones_preserving_isometry(width, 1024, seed=width), scale=0.7)
    w = bridge.weight
    new, report = resize_adaptor(old_adaptor, width, "bridge", bridge=bridge)

    assert report.widening_rel_error < 1e-5 and report.widening_max_error < 1e-5
    assert relative_error(new, old_adaptor, w, probe(512, seed=1)) < 1e-5
    other_w = w.roll(1, dims=0)  # its output coordinates permuted: another scaled isometry that keeps the ones
    assert relative_error(new, old_adaptor, other_w, probe(512, seed=1)) > 0.5

    # A standard adaptor: identity LayerNorm affine (the old gains are folded into q/k/v and fc1).
    for block in new.layers:
        assert torch.all(block.input_layernorm.weight == 1) and torch.all(block.post_attention_layernorm.bias == 0)
    assert (new.config.hidden_size, new.config.intermediate_size) == (width, width // 4)
    assert torch.equal(new.linear_1.weight, old_adaptor.linear_1.weight)
    assert report.metrics()["params_after"] == sum(p.numel() for p in new.parameters())


@pytest.mark.parametrize("width", FAST_BRIDGE_WIDTHS)
def test_a_fresh_adaptor_is_nowhere_near_w_times_the_old_adaptor(old_adaptor, width):
    """The exactness metric of the test above fails for an adaptor that was not widened from the old one."""
    w = known_bridge(ones_preserving_isometry(width, 1024, seed=width), scale=0.7).weight
    fresh, _ = resize_adaptor(old_adaptor, width)
    assert relative_error(fresh, old_adaptor, w, probe(512, seed=1)) > 0.5


def test_padded_units_are_not_dead():
    """Zero padding on both sides would never train (each side's gradient is proportional to the other); the
    padded key rows, o_proj and fc2 columns start at zero but get a gradient on the first step. Small widths
    (64 -> 160, head size 8 -> 20, FFN 16 -> 40) of the real structure."""
    d_old, d_new = 64, 160
    old = trained_like_projector(seed=1, audio=32, projector=64, width=d_old)
    bridge = known_bridge(ones_preserving_isometry(d_new, d_old, seed=3), 1.0)
    new, report = resize_adaptor(old, d_new, "bridge", bridge=bridge)
    assert report.widening_rel_error < 1e-5
    features, mask = probe(32, seed=2)
    new(features, mask)[mask.bool()].pow(2).sum().backward()

    head_old, head_new = d_old // 8, d_new // 8
    padded = (torch.arange(8)[:, None] * head_new + torch.arange(head_old, head_new)).flatten()
    inner_padded = slice(d_old // 4, d_new // 4)
    for block in new.layers:
        attn, mlp = block.self_attn, block.mlp
        assert torch.all(attn.k_proj.weight[padded] == 0) and attn.k_proj.weight.grad[padded].abs().sum() > 0
        assert torch.all(attn.o_proj.weight[:, padded] == 0) and attn.o_proj.weight.grad[:, padded].abs().sum() > 0
        assert torch.all(mlp.fc2.weight[:, inner_padded] == 0) and mlp.fc2.weight.grad[:, inner_padded].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ bridge: the fit


def test_fit_recovers_a_known_scaled_isometry():
    for d_old, d_new in ((32, 32), (24, 40)):
        q = ones_preserving_isometry(d_new, d_old, seed=d_new)
        old = torch.randn(300, d_old, generator=torch.Generator().manual_seed(0))
        bridge = fit_embedding_bridge(old, 0.7 * old @ q.T, chunk_rows=64)  # several chunks
        torch.testing.assert_close(bridge.isometry, q, atol=1e-5, rtol=0)
        assert bridge.scale == pytest.approx(0.7, rel=1e-6)
        torch.testing.assert_close(bridge.least_squares, 0.7 * q, atol=1e-5, rtol=0)
        torch.testing.assert_close(bridge.weight, 0.7 * q, atol=1e-5, rtol=0)
        assert bridge.r2_least_squares == pytest.approx(1.0, abs=1e-9)
        assert bridge.r2_isometry == pytest.approx(1.0, abs=1e-9)
        assert (bridge.old_dim, bridge.new_dim, bridge.num_pairs) == (d_old, d_new, 300)


def test_fit_least_squares_and_r2_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(500, 24, generator=g)
    new = old @ torch.randn(40, 24, generator=g).T + 0.5 * torch.randn(500, 40, generator=g)
    bridge = fit_embedding_bridge(old, new)
    x, y = old.double(), new.double()

    expected = torch.linalg.lstsq(x, y).solution.T
    torch.testing.assert_close(bridge.least_squares, expected.float(), atol=1e-5, rtol=1e-5)

    def r2(w: torch.Tensor) -> float:
        return (1 - (y - x @ w.double().T).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()

    assert bridge.r2_least_squares == pytest.approx(r2(bridge.least_squares), abs=1e-6)
    assert bridge.r2_isometry == pytest.approx(r2(bridge.weight), abs=1e-6)
    assert 0 < bridge.r2_isometry < bridge.r2_least_squares < 1
    # The isometry is what the widening needs: orthonormal columns, ones -> ones.
    q = bridge.isometry
    torch.testing.assert_close(q.T @ q, torch.eye(24), atol=1e-5, rtol=0)
    torch.testing.assert_close(q @ torch.full((24,), 24**-0.5), torch.full((40,), 40**-0.5), atol=1e-6, rtol=0)
    assert set(bridge.metrics()) == {"pairs", "r2_least_squares", "r2_isometry", "scale"}


def test_fit_with_fewer_pairs_than_dimensions_gives_the_minimum_norm_map():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(10, 24, generator=g), torch.randn(10, 40, generator=g)
    bridge = fit_embedding_bridge(old, new)
    minimum_norm = (torch.linalg.pinv(old.double()) @ new.double()).T.float()
    torch.testing.assert_close(bridge.least_squares, minimum_norm, atol=1e-4, rtol=1e-4)
    assert bridge.r2_least_squares == pytest.approx(1.0, abs=1e-6)  # 10 points are interpolated exactly


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="pair rows; got 10 and 9"):
        fit_embedding_bridge(torch.randn(10, 4), torch.randn(9, 4))
    with pytest.raises(ValueError, match="2-D"):
        fit_embedding_bridge(torch.randn(10), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fit_embedding_bridge(torch.randn(1, 4), torch.randn(1, 4))
    # Rows dominated by the ones direction, negated: the best isometry would need scale < 0.
    old = 5 + 0.1 * torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="scale .* <= 0"):
        fit_embedding_bridge(old, -old)


def test_bridged_adaptor_lands_closer_to_the_new_embeddings_than_fresh():
    """Synthetic but honest: two embedding tables with new = W_true·old + noise, W_true a random scaled
    semi-orthogonal map that does NOT preserve the ones vector (so the constrained fit cannot be exact). The old
    adaptor's output o means "this frame looks like o" to the old LLM; the new LLM should see W_true·o. Metrics over
    valid frames: (1) cosine between the new adaptor's output and W_true·o; (2) agreement of the nearest token
    (cosine) of o among the old rows with that of the new output among the new rows. Small widths (64 -> 160,
    8 heads: head size 8 -> 20) keep the fit's SVD fast; the structure is the real projector's."""
    g = torch.Generator().manual_seed(0)
    d_old, d_new, vocab = 64, 160, 100
    old_adaptor = trained_like_projector(seed=1, audio=32, projector=64, width=d_old)
    w_true = 0.8 * torch.linalg.qr(torch.randn(d_new, d_old, generator=g)).Q
    old_rows = torch.randn(vocab, d_old, generator=g)
    new_rows = old_rows @ w_true.T + 0.05 * torch.randn(vocab, d_new, generator=g)
    bridge = fit_embedding_bridge(old_rows, new_rows)
    assert bridge.r2_isometry > 0.9

    bridged, report = resize_adaptor(old_adaptor, d_new, "bridge", bridge=bridge)
    fresh, _ = resize_adaptor(old_adaptor, d_new, "fresh")
    assert report.r2_isometry == bridge.r2_isometry and report.widening_rel_error < 1e-5
    features, mask = probe(32, seed=3, batch=4, frames=16)
    valid = mask.bool()
    with torch.no_grad():
        o = old_adaptor(features, mask)[valid]
        outputs = {"bridge": bridged(features, mask)[valid], "fresh": fresh(features, mask)[valid]}
    target = o @ w_true.T
    token_old = (nn.functional.normalize(o, dim=-1) @ nn.functional.normalize(old_rows, dim=-1).T).argmax(-1)

    def scores(out: torch.Tensor) -> tuple[float, float]:
        cosine = nn.functional.cosine_similarity(out, target, dim=-1).mean().item()
        token = (nn.functional.normalize(out, dim=-1) @ nn.functional.normalize(new_rows, dim=-1).T).argmax(-1)
        return cosine, (token == token_old).float().mean().item()

    bridge_cosine, bridge_agreement = scores(outputs["bridge"])
    fresh_cosine, fresh_agreement = scores(outputs["fresh"])
    assert bridge_cosine > 0.95 and abs(fresh_cosine) < 0.3  # measured 0.976 and -0.06
    assert bridge_agreement > 0.7 and fresh_agreement < 0.1  # measured 0.84 and 0.0; chance is 1 / 100


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused(old_adaptor):
    with pytest.raises(ValueError, match="new_llm_dim 1020 is not divisible by the adaptor's num_attention_heads 8"):
        resize_adaptor(old_adaptor, 1020)
    with pytest.raises(ValueError, match=r"strategy must be one of \('fresh', 'bridge'\); got 'net2net'"):
        resize_adaptor(old_adaptor, 2048, "net2net")
    with pytest.raises(ValueError, match="needs bridge="):
        resize_adaptor(old_adaptor, 2048, "bridge")
    bridge = known_bridge(torch.eye(2048, 1024), 1.0)  # refused before it is used
    with pytest.raises(ValueError, match="strategy='fresh'"):
        resize_adaptor(old_adaptor, 2048, "fresh", bridge=bridge)
    with pytest.raises(ValueError, match="bridge maps 1024 -> 2048, but the adaptor is 1024 wide and new_llm_dim is"):
        resize_adaptor(old_adaptor, 3072, "bridge", bridge=bridge)
    narrow = known_bridge(torch.eye(512, 1024), 1.0)
    with pytest.raises(ValueError, match="only widens: new_llm_dim 512 < adaptor width 1024"):
        resize_adaptor(old_adaptor, 512, "bridge", bridge=narrow)
    with pytest.raises(TypeError, match="FunAsrNanoMultiModalProjector; got Linear"):
        resize_adaptor(nn.Linear(2, 2), 2048)


def test_adaptor_config_for_keeps_everything_but_the_width(old_adaptor):
    config = adaptor_config_for(3584, like=old_adaptor.config)
    assert (config.hidden_size, config.intermediate_size) == (3584, 896)
    for key in ("num_attention_heads", "num_hidden_layers", "layer_norm_eps", "projector_hidden_size", "hidden_act"):
        assert getattr(config, key) == getattr(old_adaptor.config, key)
    assert config._attn_implementation == "sdpa"
