"""The `vocab` adaptor initialisation on tiny models of the real classes with the real tokenizers: what a frame is
carried to in each family (Llama-3's reserved markers, Gemma-2's scaled embeddings and soft-capping, DeepSeek-V2's
added marker rows, a token the target spells in pieces), the CTC reading with its blank, the fit, and the swap."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from funasr_swap.base import tiny_base
from funasr_swap.compat import active_logit_softcap
from funasr_swap.data import Utterance
from funasr_swap.llms import tiny_text_config
from funasr_swap.loss import CTC_SCALE
from funasr_swap.swap import swap_llm
from funasr_swap.vocab_init import VocabInitSettings, carry_embeddings, fit_adaptor, frame_targets
from tests.conftest import real_tokenizer, write_tone
from tokenmap.markers import default_strategy, resolve_speech_markers
from tokenmap.vocab_map import KINDS, VocabMap

FAMILY_TARGETS = {"llama3": "Llama-3.2-1B", "gemma2": "Gemma-2-2B", "deepseek-v2": "DeepSeek-V2-Lite"}


@functools.cache
def tiny_llm(name: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(tiny_text_config(name)).eval()


@functools.cache
def qwen3_map(family: str) -> VocabMap:
    return VocabMap.build(real_tokenizer("qwen3"), real_tokenizer(family))


def some_ids(vocab_map: VocabMap, kind: str, count: int, min_pieces: int = 1) -> list[int]:
    """`count` source ids of match `kind` that map to at least `min_pieces` target tokens."""
    pieces = np.diff(vocab_map.offsets)
    ids = np.flatnonzero((vocab_map.kinds == KINDS.index(kind)) & (pieces >= min_pieces))
    return ids[:count].tolist()


def test_an_exact_token_is_carried_to_its_partners_embedding():
    vocab_map = qwen3_map("llama3")
    embedding = tiny_llm("Llama-3.2-1B").get_input_embeddings()
    ids = some_ids(vocab_map, "exact", 20)
    carried = carry_embeddings(vocab_map, ids, embedding)
    assert carried.source_ids.tolist() == ids and carried.pieces.tolist() == [1] * 20 and carried.dropped == 0
    partners = [vocab_map.lookup(i).partner for i in ids]
    torch.testing.assert_close(carried.embeddings, embedding.weight[partners].detach())


def test_gemma2_tokens_are_carried_as_its_layer_reads_them_scaled_by_sqrt_hidden():
    vocab_map = qwen3_map("gemma2")
    llm = tiny_llm("Gemma-2-2B")
    ids = some_ids(vocab_map, "exact", 10)
    carried = carry_embeddings(vocab_map, ids, llm.get_input_embeddings())
    partners = [vocab_map.lookup(i).partner for i in ids]
    scale = math.sqrt(llm.config.hidden_size)
    torch.testing.assert_close(carried.embeddings, scale * llm.get_input_embeddings().weight[partners].detach())


@pytest.mark.parametrize("family", ["llama3", "gemma2"])
def test_a_token_the_target_spells_in_pieces_is_carried_as_their_mean(family):
    vocab_map = qwen3_map(family)
    embedding = tiny_llm(FAMILY_TARGETS[family]).get_input_embeddings()
    ids = some_ids(vocab_map, "decomposed", 5, min_pieces=2)
    assert ids, f"Qwen3 -> {family}: no token spelled in pieces"
    carried = carry_embeddings(vocab_map, ids, embedding)
    for row, src in enumerate(ids):
        pieces = list(vocab_map.lookup(src).target_ids)
        assert carried.pieces[row] == len(pieces) >= 2
        with torch.no_grad():
            expected = embedding(torch.tensor(pieces)).mean(0)
        torch.testing.assert_close(carried.embeddings[row], expected)
    assert carried.metrics()["carried_in_pieces"] == len(ids)


def test_control_tokens_markers_and_zero_rows_are_never_landed_on():
    """Llama-3's placeholder is a reserved special token: no text maps to it, and a marker passed in `excluded`
    removes every token that would land on it; control tokens are not speech; a zero row is a token the LLM
    does not know (the miniature's)."""
    vocab_map = qwen3_map("llama3")
    tokenizer = real_tokenizer("llama3")
    markers = resolve_speech_markers(tokenizer, "reuse", family="llama3")
    assert tokenizer.convert_ids_to_tokens(markers.placeholder_id).startswith("<|reserved_special_token_")
    llm = tiny_llm("Llama-3.2-1B")
    qwen = real_tokenizer("qwen3")
    controls = [qwen.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")]
    exact = some_ids(vocab_map, "exact", 6)
    taken, zeroed = vocab_map.lookup(exact[0]).partner, vocab_map.lookup(exact[1]).partner
    embedding = torch.nn.Embedding.from_pretrained(llm.get_input_embeddings().weight.detach().clone())
    embedding.weight.data[zeroed] = 0
    carried = carry_embeddings(vocab_map, controls + exact, embedding, excluded=[markers.placeholder_id, taken])
    assert carried.source_ids.tolist() == exact[2:] and carried.dropped == 3 + 2
    with pytest.raises(ValueError, match="no base token maps"):
        carry_embeddings(vocab_map, controls, embedding)


def test_the_ctc_reading_carries_a_token_frame_to_its_token_and_a_blank_frame_to_nothing():
    source = 3.0 * torch.eye(6, 8)  # six orthogonal base tokens, 8 wide
    carried = torch.randn(6, 16)
    frames = torch.stack([source[2], 0.2 * source[4], torch.zeros(8)])  # a token, a faint token, silence
    targets = frame_targets(frames, source, carried)
    # a frame holding e_t scores CTC_SCALE for t, 0 for the others, CTC_SCALE / 2 for the blank
    weight = 1 / (1 + math.exp(-CTC_SCALE / 2) + 5 * math.exp(-CTC_SCALE))
    torch.testing.assert_close(targets[0], weight * carried[2])
    assert targets[1].norm() < 0.01 * carried[4].norm()  # under half a token: mostly blank
    assert targets[2].norm() < 1e-3 * carried.norm(dim=1).min()
    sharper = frame_targets(frames, source, carried, temperature=0.5)
    assert (sharper[0] - carried[2]).norm() < (targets[0] - carried[2]).norm()


def test_the_fit_moves_an_adaptors_frames_onto_their_targets():
    model, _ = tiny_base(seed=0)
    adaptor = model.model.multi_modal_projector
    features = torch.randn(12, 9, adaptor.linear_1.in_features)
    mask = torch.ones(12, 9, dtype=torch.long)
    mask[3, 6:] = 0
    targets = torch.randn(int(mask.sum()), adaptor.config.hidden_size)
    torch.manual_seed(0)
    report = fit_adaptor(adaptor, features, mask, targets, steps=60, lr=1e-2, batch_size=4)
    assert report.frames == 105 and report.error_after < 0.7 * report.error_before
    with torch.no_grad():
        error = (adaptor(features, mask)[mask.bool()] - targets).pow(2).sum(-1).mean() / targets.pow(2).sum(-1).mean()
    assert error.item() == pytest.approx(report.error_after, rel=1e-4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    texts = ["hello world", "the cat sat", "seven green lamps", "a big umbrella"]
    return [
        Utterance(write_tone(folder / f"{i}.wav", 0.6 + 0.2 * i, 180.0 + 40 * i), text, "en")
        for i, text in enumerate(texts)
    ]


@pytest.mark.parametrize(
    "target",
    [
        "Llama-3.2-1B",
        pytest.param("Gemma-2-2B", marks=pytest.mark.slow),
        pytest.param("DeepSeek-V2-Lite", marks=pytest.mark.slow),
    ],
)
def test_a_vocab_swap_fits_its_adaptor_and_reports_it(target, clips):
    model, processor = tiny_base(seed=0)
    settings = VocabInitSettings(clips=3, steps=20, batch_size=2)
    result = swap_llm(model, processor, target, strategy="vocab", random_weights="tiny", seed=1, clips=clips,
                      vocab=settings)  # fmt: skip
    report = result.report
    assert report.adaptor_strategy == "vocab" and report.bridge == {}  # the default start is fresh
    numbers = report.vocab_init
    assert numbers["fit_steps"] == 20 and numbers["carried_tokens"] > 100_000  # a random LLM: every row non-zero
    assert numbers["fit_error_after"] < numbers["fit_error_before"]
    assert "vocab fit_error_after" in report.to_markdown()
    if target == "Gemma-2-2B":  # soft-capping acts on the LM head's logits, after the fit: still on
        assert active_logit_softcap(result.model) == result.model.config.text_config.final_logit_softcapping > 0
    if target == "DeepSeek-V2-Lite":  # its placeholder is an added row (the carry leaves it out: tested above)
        assert report.added_token_ids and default_strategy("deepseek-v2") == "add"
    fitted = result.model.model.multi_modal_projector.linear_1.weight
    torch.testing.assert_close(
        model.model.multi_modal_projector.linear_1.weight,
        tiny_base(seed=0)[0].model.multi_modal_projector.linear_1.weight,
    )
    assert not any(fitted is p for p in model.parameters())  # the base's adaptor is untouched


def test_a_vocab_swap_needs_clips():
    model, processor = tiny_base(seed=0)
    with pytest.raises(ValueError, match="pass clips"):
        swap_llm(model, processor, "Llama-3.2-1B", strategy="vocab", random_weights="tiny")
