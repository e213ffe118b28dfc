"""The miniature world: the exact world loss, copy-task pretraining, and the quickstart's wiring (`--quick` sizes)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from funasr_swap.cli import app
from funasr_swap.miniature import (
    QUICK,
    WorldLoss,
    _world_cross_entropy,
    adaptor_ctc_loss,
    build_base,
    pretrain_llm,
)
from funasr_swap.train import supervised_loss

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

runner = CliRunner()
TEXTS = ["the red cat sat on the mat", "alice bought two blue cups", "there are five green apples in the park"]


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_world_cross_entropy_equals_the_full_vocabulary_loss(softcap):
    torch.manual_seed(0)
    vocabulary, width, world = 50, 8, [3, 7, 8, 20, 41]
    weight = torch.zeros(vocabulary, width)
    weight[world] = torch.randn(len(world), width)
    hidden = torch.randn(6, width) * 3
    targets = torch.tensor([3, 7, 41, 20, 8, 3])
    logits = hidden @ weight.T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    full = F.cross_entropy(logits, targets)
    index = {token: row for row, token in enumerate(world)}
    compact = _world_cross_entropy(
        hidden, weight[world], torch.tensor([index[t] for t in targets.tolist()]), vocabulary - len(world), softcap
    )
    torch.testing.assert_close(compact, full)


def test_adaptor_ctc_loss_is_low_for_token_embeddings_among_silence():
    torch.manual_seed(0)
    embeddings = torch.randn(20, 16)
    transcripts = [torch.tensor([3, 7, 7, 12]), torch.tensor([5, 1])]
    silence = torch.zeros(2, 16)  # between tokens (the repeated 7 needs it)
    spoken = [
        torch.cat([silence, *[torch.cat([embeddings[t : t + 1], silence]) for t in row.tolist()]])
        for row in transcripts
    ]
    lengths = torch.tensor([len(frames) for frames in spoken])
    aligned = adaptor_ctc_loss(torch.cat(spoken), lengths, embeddings, transcripts)
    assert aligned < 0.1
    wrong = [torch.tensor([4, 8, 8, 13]), torch.tensor([6, 2])]
    assert adaptor_ctc_loss(torch.cat(spoken), lengths, embeddings, wrong) > 10 * aligned
    silent = torch.zeros(int(lengths.sum()), 16)
    assert adaptor_ctc_loss(silent, lengths, embeddings, transcripts) > 10 * aligned


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
        torch.testing.assert_close(WorldLoss(model)(model, batch), supervised_loss(model, batch))
        assert WorldLoss(model, ctc_weight=0.5)(model, batch) > supervised_loss(model, batch)
    model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen LM head"):
        WorldLoss(model)(model, batch)


def test_quickstart_refuses_an_unknown_family(tmp_path):
    result = runner.invoke(app, ["quickstart", "-o", str(tmp_path / "out"), "--families", "llama3,mistral"])
    assert result.exit_code == 1
    assert "mistral" in result.output and "gemma2" in result.output  # the bad name and the choices
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quickstart_writes_report_and_reuses_its_cache(tmp_path):
    command = ["quickstart", "-o", str(tmp_path), "--families", "llama3", "--quick"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    report = tmp_path / "REPORT.md"
    text = report.read_text()
    for row in ("| base |", "| llama3 bridge |", "| llama3 fresh |"):
        assert row in text
    assert "Bridge vs fresh" in text
    assert (tmp_path / "cer.png").stat().st_size > 0
    assert len(list(tmp_path.glob("base-*/final/config.json"))) == 1
    assert len(list(tmp_path.glob("swap-*/result.json"))) == 2
    total = [line for line in text.splitlines() if line.startswith("| total |")]

    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    cached = [line for line in result.output.splitlines() if "cached" in line]
    assert any("corpus: cached" in line for line in cached)
    assert any("pretrain Llama-3.2-1B: cached" in line for line in cached)
    assert any(line.startswith("[quickstart] base:") for line in cached)
    assert sum("adaptor retraining" in line for line in cached) == 2
    assert len(list(tmp_path.glob("swap-*/result.json"))) == 2  # nothing new
    assert report.read_text().count("| llama3 bridge |") == 1
    assert [line for line in report.read_text().splitlines() if line.startswith("| total |")] == total  # build times


def test_lora_reaches_every_projection_of_each_target_family():
    """LoRA on the swapped tiny LLMs covers attention and MLP, DeepSeek's MLA key/value path included; DeepSeek's
    tiny MLA keeps the real model's proportions (KV rank and head dims a quarter of the width)."""
    from transformers import AutoModel

    from funasr_swap.miniature import FAMILY_LLMS, LORA_TARGETS, tiny_llm_config

    for name in FAMILY_LLMS.values():
        config = tiny_llm_config(name, 128)
        linear = {n.rsplit(".", 1)[-1] for n, m in AutoModel.from_config(config).named_modules()
                  if isinstance(m, torch.nn.Linear)}  # fmt: skip
        assert linear <= set(LORA_TARGETS), name  # DeepSeek's router and fused experts are not Linear layers
        if name == "DeepSeek-V2-Lite":
            assert {"kv_a_proj_with_mqa", "kv_b_proj"} <= linear
            assert (config.kv_lora_rank, config.qk_nope_head_dim, config.v_head_dim) == (32, 32, 32)
