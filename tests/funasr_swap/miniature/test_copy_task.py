"""Copy-task pretraining of the tiny LLMs, and the world loss on a base built from one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from funasr_swap.miniature import QUICK, WorldLoss, build_base, pretrain_llm
from funasr_swap.miniature.config import FAMILY_LLMS
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


@pytest.mark.parametrize("name", ["Qwen3-0.6B", *FAMILY_LLMS.values()])
def test_copy_loss_with_the_shared_prefix_equals_the_whole_examples_loss(name):
    """The step computes the prompt prefix once for the batch: loss and gradients must be those of the examples
    computed whole (each family's attention and cache: Gemma-2's sliding layers, DeepSeek-V2's MLA and MoE)."""
    import random

    from transformers import AutoModelForCausalLM

    from funasr_swap.llms import get_llm, tiny_text_config
    from funasr_swap.miniature.copy_task import _copy_data, _copy_loss, _pad
    from tokenmap.assets import load_tokenizer
    from tokenmap.prompt import IGNORE_INDEX

    spec = get_llm(name)
    prompt, answers = _copy_data(load_tokenizer(spec.tokenizer), spec.family, TEXTS)
    config = tiny_text_config(name, 64)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config)
    rng = random.Random(0)
    examples = [prompt.example(answers[i % len(answers)], rng, config.vocab_size) for i in range(4)]
    batch = _pad(examples)  # ragged: the rows' padding differs

    def loss_and_grads(loss_of):
        llm.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in llm.parameters() if p.grad is not None]

    def whole() -> torch.Tensor:
        ids, labels = zip(*[(prompt.prefix + i, [IGNORE_INDEX] * len(prompt.prefix) + t) for i, t in examples])
        input_ids, attention_mask, labels = _pad(list(zip(ids, labels)))
        hidden = llm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        supervised = labels[:, 1:] != IGNORE_INDEX
        logits = llm.get_output_embeddings()(hidden[:, :-1][supervised])
        if cap := getattr(config, "final_logit_softcapping", None):
            logits = cap * torch.tanh(logits / cap)
        return torch.nn.functional.cross_entropy(logits, labels[:, 1:][supervised])

    shared_loss, shared_grads = loss_and_grads(lambda: _copy_loss(llm, prompt.prefix, batch, 0))
    whole_loss, whole_grads = loss_and_grads(whole)
    torch.testing.assert_close(shared_loss, whole_loss, rtol=1e-5, atol=1e-6)
    assert len(shared_grads) == len(whole_grads) > 0
    for shared, full in zip(shared_grads, whole_grads):
        torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-6)


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
