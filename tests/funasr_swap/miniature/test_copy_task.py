"""Copy-task pretraining of the tiny LLMs, and the world loss on a base built from one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from funasr_swap.miniature import QUICK, WorldLoss, build_base, pretrain_llm
from funasr_swap.training import supervised_loss

TEXTS = ["the red cat sat on the mat", "alice bought two blue cups", "there are five green apples in the park"]


@pytest.fixture(scope="module")
def qwen3_llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm") / "Qwen3-0.6B"
    return pretrain_llm("Qwen3-0.6B", TEXTS, folder, steps=3, batch_size=4, eval_texts=TEXTS[:1])


def test_pretrained_llm_folder_has_zero_rows_outside_its_world(qwen3_llm):
    from transformers import AutoModelForCausalLM

    from tokenmap.assets import load_tokenizer

    record = json.loads((qwen3_llm / "PRETRAIN.json").read_text())
    llm = AutoModelForCausalLM.from_pretrained(qwen3_llm)
    rows = (llm.get_input_embeddings().weight != 0).any(dim=1)
    assert int(rows.sum()) == record["world_tokens"] < 100
    assert llm.config.vocab_size == 151936  # the real vocabulary size, the real tokenizer
    tokenizer = load_tokenizer(qwen3_llm)
    assert len(tokenizer) == len(load_tokenizer("qwen3"))
    for token in tokenizer("alice bought", add_special_tokens=False)["input_ids"]:
        assert rows[token]
    assert 0.0 <= record["copy_accuracy"] <= 1.0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_world_loss_equals_the_trainer_loss_on_the_base(qwen3_llm, tmp_path):
    import soundfile

    from funasr_swap.data import AsrCollator, Utterance
    from funasr_swap.synth import SAMPLING_RATE, speak

    model, processor = build_base(qwen3_llm, QUICK)
    utterances = []
    for i, text in enumerate(TEXTS):
        path = tmp_path / f"{i}.wav"
        soundfile.write(path, speak(text, "en-us"), SAMPLING_RATE)
        utterances.append(Utterance(path, text, "en"))
    batch = AsrCollator(processor)(utterances)
    model.requires_grad_(False)
    with torch.no_grad():
        # the same sum in another order: float32 rounding of a loss near 11
        torch.testing.assert_close(WorldLoss(model)(model, batch), supervised_loss(model, batch), rtol=1e-5, atol=0)
        assert WorldLoss(model, ctc_weight=0.5)(model, batch) > supervised_loss(model, batch)
    model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen LM head"):
        WorldLoss(model)(model, batch)
