"""Each model's ASR prompt token by token: the ids the model is fed, each token's part of the conversation."""

from __future__ import annotations

import numpy as np
import pytest

from demos.prompt_view import model_prompt_tokens
from funasr_swap.features import num_lfr_frames
from funasr_swap.transcribe import transcription_inputs
from tokenmap.families import detect_family
from tokenmap.prompt import PromptToken


def _check_prompt(processor, seconds: float) -> list[PromptToken]:
    """The tokens' ids, runs expanded, are the ids `transcribe` feeds; each turn holds its role marker and text."""
    tokens = model_prompt_tokens(processor, seconds)
    rate = processor.feature_extractor.sampling_rate
    inputs = transcription_inputs(processor, [np.zeros(round(seconds * rate), np.float32)])
    assert [t.id for t in tokens for _ in range(t.count)] == inputs["input_ids"][0].tolist()
    [audio] = [t for t in tokens if t.role == "audio"]  # one run; the quickstart's swaps use no boundary tokens
    assert (audio.id, audio.special) == (processor.audio_token_id, True)
    assert audio.count == num_lfr_frames(processor.feature_extractor, round(seconds * rate))
    family = detect_family(processor.tokenizer)
    turns = {role: "".join(t.text for t in tokens if t.role == role) for role in ("system", "user", "assistant")}
    assert "You are a helpful assistant." in turns["system"] + turns["user"]  # Gemma folds it into the user turn
    assert family.user_start in turns["user"] and "语音转写：" in turns["user"]
    assert turns["assistant"].startswith(family.assistant_start)
    return tokens


def test_the_base_prompt_marks_chatml_turns_control_tokens_and_the_placeholder(tiny_base_folder):
    from funasr_swap.features import load_processor

    tokens = _check_prompt(load_processor(tiny_base_folder), 1.0)
    assert [(t.text, t.role, t.special) for t in tokens[:4]] == [
        ("<|im_start|>", "system", True), ("system", "system", False), ("\n", "system", False),
        ("You", "system", False),
    ]  # fmt: skip
    assert tokens[-1] == PromptToken(198, "\n", "assistant", False)  # <|im_start|>assistant\n closes it


@pytest.mark.slow
def test_every_quickstart_model_marks_its_familys_turns_and_placeholder(world_models):
    for model in world_models:
        tokens = _check_prompt(model.processor, 2.5)
        if model.card.family in ("llama3", "gemma2", "deepseek-v2"):  # these families start with a BOS
            assert tokens[0].special and tokens[0].role == "system"
