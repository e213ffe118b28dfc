"""The miniature base: a tiny Fun-ASR-Nano of the real classes, for tests and the miniature world.

Same structure as the real base (SAN-M encoder with transcription and timestamp layers, the adaptor's projector and
blocks at the LLM width, a Qwen3 text model, the real Qwen3 tokenizer and the converted checkpoint's processor),
only narrow and shallow, so that everything a real checkpoint goes through (conversion, swap, training, generation)
runs in seconds on a CPU. It is what `load_base` returns for a real checkpoint, built from a seed instead of files.
"""

from __future__ import annotations

import torch
from transformers import (
    FunAsrNanoAdaptorConfig,
    FunAsrNanoConfig,
    FunAsrNanoEncoderConfig,
    FunAsrNanoForConditionalGeneration,
    FunAsrNanoProcessor,
)

from funasr_swap.compat import fill_gaps
from funasr_swap.convert import ADAPTOR_LAYER_NORM_EPS, build_processor, generation_config
from funasr_swap.llms import BASE_LLM, get_llm, tiny_text_config
from tokenmap.assets import resolve_tokenizer_path

__all__ = ["tiny_base", "tiny_base_config"]


def tiny_base_config(
    audio_token_id: int,
    *,
    hidden_size: int = 64,
    num_attention_heads: int = 2,
    num_layers: int = 4,
    num_timestamp_layers: int = 1,
    projector_hidden_size: int = 128,
    encoder_dropout: float = 0.1,
) -> FunAsrNanoConfig:
    """A tiny `FunAsrNanoConfig`: encoder `hidden_size` wide with `num_layers` layers, the last
    `num_timestamp_layers` of them timestamp layers (as the real 50 + 20); adaptor and text model at the tiny LLM's
    width (`tiny_text_config(BASE_LLM)`, 64, with the real vocabulary size). `encoder_dropout`: the encoder's
    hidden and attention dropout (the real model's 0.1 by default)."""
    text_config = tiny_text_config(BASE_LLM)
    llm_dim = text_config.hidden_size
    audio_config = FunAsrNanoEncoderConfig(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=4 * hidden_size,  # the real ratio (512 -> 2048)
        num_hidden_layers=num_layers,
        num_timestamp_prediction_layers=num_timestamp_layers,
        hidden_dropout=encoder_dropout,
        attention_dropout=encoder_dropout,
    )
    adaptor_config = FunAsrNanoAdaptorConfig(
        hidden_size=llm_dim,
        num_attention_heads=4,  # head size 16, as the tiny LLM's
        intermediate_size=llm_dim // 4,
        projector_hidden_size=projector_hidden_size,
        layer_norm_eps=ADAPTOR_LAYER_NORM_EPS,
    )
    return FunAsrNanoConfig(
        audio_config=audio_config,
        adaptor_config=adaptor_config,
        text_config=text_config,
        audio_token_id=audio_token_id,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def tiny_base(seed: int = 0, **sizes: float) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor]:
    """A tiny random Fun-ASR-Nano as `(model, processor)`, the return type of `load_base`; model in eval mode.

    The weights depend only on `seed` (the global RNG is left as it was); `sizes` go to `tiny_base_config`. The
    processor is the real base's: the real Qwen3 tokenizer, the converted checkpoint's chat template and the
    `<|object_ref_start|>` placeholder (id 151646).
    """
    processor = build_processor(resolve_tokenizer_path(get_llm(BASE_LLM).tokenizer))
    config = tiny_base_config(processor.audio_token_id, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FunAsrNanoForConditionalGeneration(config)
    model.generation_config = generation_config(processor.tokenizer)
    fill_gaps(model)
    return model.eval(), processor
