"""Each model's ASR prompt token by token: the ids the model is fed, markers told apart by the chat family."""

from __future__ import annotations

import numpy as np
import pytest

from demos.prompt_view import PromptToken, prompt_html, prompt_tokens
from funasr_swap.features import num_lfr_frames
from funasr_swap.transcribe import transcription_inputs
from tokenmap.families import detect_family


def _check_prompt(processor, seconds: float) -> list[PromptToken]:
    """The tokens' ids, runs expanded, are the ids `transcribe` feeds; their text spells every role marker."""
    tokens = prompt_tokens(processor, seconds)
    rate = processor.feature_extractor.sampling_rate
    inputs = transcription_inputs(processor, [np.zeros(round(seconds * rate), np.float32)])
    assert [t.id for t in tokens for _ in range(t.count)] == inputs["input_ids"][0].tolist()
    [speech] = [t for t in tokens if t.kind == "speech"]  # the quickstart's swaps use no boundary tokens
    assert speech.id == processor.audio_token_id
    assert speech.count == num_lfr_frames(processor.feature_extractor, round(seconds * rate))
    family = detect_family(processor.tokenizer)
    roles = "".join(t.text if t.kind == "role" else "|" for t in tokens)  # "|" breaks between role runs
    for marker in (family.user_start, family.assistant_start):
        assert marker in roles
    text = "".join(t.text for t in tokens if t.kind == "text")
    assert "You are a helpful assistant." in text and "语音转写：" in text  # the system and user turns are text
    return tokens


def test_the_base_prompt_marks_chatml_roles_and_the_placeholder(tiny_base_folder):
    from funasr_swap.features import load_processor

    tokens = _check_prompt(load_processor(tiny_base_folder), 1.0)
    assert [(t.text, t.kind) for t in tokens[:4]] == [
        ("<|im_start|>", "role"), ("system", "role"), ("\n", "role"), ("You", "text")
    ]  # fmt: skip
    assert tokens[-1] == PromptToken(198, "\n", "role")  # the generation prompt <|im_start|>assistant\n closes it


@pytest.mark.slow
def test_every_quickstart_model_marks_its_familys_roles_and_placeholder(world_models):
    for model in world_models:
        tokens = _check_prompt(model.processor, 2.5)
        if model.card.family in ("llama3", "gemma2", "deepseek-v2"):  # these families start with a BOS
            assert tokens[0].kind == "special"


def test_prompt_html_escapes_tokens_and_shows_ids_and_runs():
    html = prompt_html([PromptToken(1, "<|im_start|>", "role"), PromptToken(7, "\n", "role"),
                        PromptToken(9, "<unused0>", "speech", 17), PromptToken(3, " a", "text")])  # fmt: skip
    assert "&lt;|im_start|&gt;" in html and "<|im_start|>" not in html
    assert "↵" in html and "·a" in html  # whitespace made visible
    assert "&lt;unused0&gt; ×17" in html and "<sub>9</sub>" in html
    assert html.count('class="tok tok-role"') == 2 and 'class="tok tok-speech"' in html
