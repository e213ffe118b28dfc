"""The miniature base: real classes, real Qwen3 tokenizer, the converted checkpoint's prompt, seeded weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor, Qwen3Model

from funasr_swap.base import tiny_base, tiny_base_config
from tests.conftest import real_tokenizer
from tokenmap.assets import tokenizer_fingerprint
from tokenmap.prompt import build_chat_template

# The converted Fun-ASR-Nano checkpoint's prompt for one clip (../shared/reference/fun_asr_nano.md).
REFERENCE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n语音转写成英文：<|object_ref_start|><|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def base():
    return tiny_base(seed=0)


def test_real_classes_and_structure(base):
    model, processor = base
    assert isinstance(model, FunAsrNanoForConditionalGeneration) and isinstance(processor, FunAsrNanoProcessor)
    assert isinstance(model.model.language_model, Qwen3Model)
    assert not model.training
    config = model.config
    audio = config.audio_config
    layers = model.model.audio_tower.layers
    assert len(layers) == audio.num_hidden_layers and audio.num_timestamp_prediction_layers >= 1
    normed = [i for i, layer in enumerate(layers) if isinstance(layer.final_layernorm, nn.LayerNorm)]
    n_transcription = audio.num_hidden_layers - audio.num_timestamp_prediction_layers
    assert normed == [n_transcription - 1, audio.num_hidden_layers - 1]
    assert config.adaptor_config.hidden_size == config.text_config.hidden_size == 64
    assert config.text_config.vocab_size >= len(processor.tokenizer)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as Qwen3-0.6B


def test_processor_is_the_real_bases(base):
    model, processor = base
    assert tokenizer_fingerprint(processor.tokenizer) == tokenizer_fingerprint(real_tokenizer("qwen3"))
    assert processor.audio_token == "<|object_ref_start|>"
    assert processor.audio_token_id == model.config.audio_token_id == 151646
    assert processor.chat_template == build_chat_template("qwen3")
    prompt = processor.apply_transcription_request([np.zeros(16000, np.float32)], language="en", tokenize=False)
    assert prompt == [REFERENCE_PROMPT]


def test_seed_determines_weights_and_leaves_global_rng_alone(base):
    state = torch.random.get_rng_state()
    same, _ = tiny_base(seed=0)
    other, _ = tiny_base(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    reference = base[0].state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in same.state_dict().items())
    assert not torch.equal(other.state_dict()["model.multi_modal_projector.linear_1.weight"],
                           reference["model.multi_modal_projector.linear_1.weight"])


def test_sizes_override():
    model, _ = tiny_base(seed=0, hidden_size=32, num_layers=3, num_timestamp_layers=2)
    audio = model.config.audio_config
    assert (audio.hidden_size, audio.num_hidden_layers, audio.num_timestamp_prediction_layers) == (32, 3, 2)
    assert model.model.multi_modal_projector.linear_1.in_features == 32



def test_encoder_dropout_is_the_real_models_unless_set():
    """The real encoder's 0.1 by default; the miniature sets its own (MiniatureConfig.encoder_dropout)."""
    default = tiny_base_config(151646).audio_config
    assert default.hidden_dropout == default.attention_dropout == 0.1
    none = tiny_base_config(151646, encoder_dropout=0.0).audio_config
    assert none.hidden_dropout == none.attention_dropout == 0.0
    assert tiny_base(encoder_dropout=0.0)[0].config.audio_config.hidden_dropout == 0.0


def test_forward_and_generate_on_audio(base):
    model, processor = base
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000)]
    inputs = processor.apply_transcription_request(audio)
    # One placeholder per LFR frame, left-padded batch.
    counts = (inputs["input_ids"] == processor.audio_token_id).sum(-1)
    assert torch.equal(counts, inputs["input_features_mask"].sum(-1))
    assert (inputs["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
