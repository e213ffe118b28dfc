"""A model's ASR prompt token by token, as the demo's Prompts tab shows it: the ids `transcribe` feeds the model for
a clip, rendered by `tokenmap.prompt.prompt_tokens` (each token's text, id and part of the conversation, control
tokens marked) with the audio placeholders as one run; `tokenmap.prompt.prompt_html` draws them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenmap.prompt import PromptToken, build_asr_prompt, prompt_tokens

if TYPE_CHECKING:
    from transformers import FunAsrNanoProcessor

__all__ = ["model_prompt_tokens"]


def model_prompt_tokens(processor: FunAsrNanoProcessor, audio_seconds: float = 1.0) -> list[PromptToken]:
    """The prompt of a clip of `audio_seconds` as the processor's chat template renders it, token by token.

    Raises ValueError when the tokenizer belongs to no known chat family."""
    from funasr_swap.features import num_lfr_frames
    from tokenmap.chat_setup import read_chat_setup

    extractor, tokenizer, template = processor.feature_extractor, processor.tokenizer, processor.chat_template
    frames = num_lfr_frames(extractor, round(audio_seconds * extractor.sampling_rate))
    chat = read_chat_setup(tokenizer, processor.audio_token)
    prompt = build_asr_prompt(tokenizer, frames, family=chat.family, markers=chat.markers, chat_template=template)
    return prompt_tokens(tokenizer, prompt, template=template, merge_audio=True)
