"""4- and 5-bit exports through llama.cpp's own quantizer: the tiny model's 64-wide rows fall back to llama.cpp's
32-block types and the card says so; a model no weight of which can be quantized is refused, naming the widths; the
f16 intermediate is removed; `--check` records the export's agreement with PyTorch."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from funasr_swap import edge
from funasr_swap.cli import app
from funasr_swap.gguf import GgufWeights, converter, quantize_gguf
from tests.conftest import real_tokenizer, write_tone

pytestmark = pytest.mark.slow  # each export converts the tiny LLM (about 30 s on 2 cores)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three tones and their manifest (texts the tiny random model will not say)."""
    folder = tmp_path_factory.mktemp("check")
    lines = []
    for i, seconds in enumerate((0.5, 0.9, 1.3)):
        write_tone(folder / f"clip{i}.wav", seconds, freq=200.0 + 150 * i)
        lines.append(json.dumps({"audio": f"clip{i}.wav", "text": ["one", "two three", "four"][i]}))
    (folder / "check.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "check.jsonl"


def export(source, output, *args):
    result = CliRunner().invoke(app, ["export", str(source), "-o", str(output), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def k_quant_exports(tiny_base_folder, tmp_path_factory, manifest):
    """`funasr-swap export` of the tiny base to each k-quant type: outtype -> (its folder, the CLI's result). The
    q4_k_m one is checked against PyTorch on 2 clips (`--check`), which test_check_records_the_agreement_with_pytorch
    reads: one export serves both tests."""
    made = {}
    for outtype, check in (("q4_k_m", ["--check", manifest, "--check-clips", 2]), ("q5_k_m", [])):
        folder = tmp_path_factory.mktemp(outtype) / "edge"
        made[outtype] = folder, export(tiny_base_folder, folder, "--outtype", outtype, *check)
    return made


@pytest.mark.parametrize("outtype, fallbacks", [("q4_k_m", {"q5_0", "q8_0"}), ("q5_k_m", {"q5_1", "q8_0"})])
def test_a_k_quant_export_of_the_tiny_model_names_its_fallbacks(k_quant_exports, tmp_path, outtype, fallbacks):
    folder, result = k_quant_exports[outtype]
    assert sorted(p.name for p in folder.iterdir()) == ["audio.onnx", "edge.json", "llm.gguf"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["edge"]  # the f16 intermediate, the staging: gone
    config = edge.read_edge_config(folder)
    weights = GgufWeights(**config.model_card["gguf"])
    assert config.outtype == weights.outtype == outtype
    # every 2-D weight of the 64-wide LLM is 64 or 128 wide: none takes a 256-block k-quant, each falls back
    assert {f["columns"] for f in weights.fallbacks} == {64, 128} and {f["block"] for f in weights.fallbacks} == {256}
    assert {f["used"] for f in weights.fallbacks} == fallbacks
    assert set(weights.tensor_types) == {*fallbacks, "f32"}  # no f16 left: every weight quantized
    assert sum(weights.tensor_types.values()) == 24  # 2 layers of 11, the embedding (tied: no output) and a norm
    assert f"{len(weights.fallbacks)} tensor(s) fell back (rows 64, 128 wide, not a multiple of 256)" in result.stdout
    [transcript] = edge.transcribe(folder, [write_tone(tmp_path / "a.wav", 0.6)], max_new_tokens=4)
    assert transcript.tokens == 4  # random weights: no stop within 4 tokens; what matters is that llama.cpp runs it


def test_a_model_none_of_whose_weights_can_be_quantized_is_refused_naming_the_widths(tmp_path):
    """Rows 48 and 80 wide take neither a 256-block k-quant nor the 32-block fallback: llama.cpp would write f16
    under the q4_k_m name; the quantizer's result is refused and removed."""
    import subprocess
    import sys

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = real_tokenizer("llama3")
    config = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=3,
                         num_key_value_heads=1, head_dim=16, vocab_size=len(tokenizer))  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    f16 = tmp_path / "f16.gguf"
    command = [sys.executable, "-m", "funasr_swap.gguf", "convert", str(converter()), "", str(tmp_path / "hf"),
               "--outfile", str(f16), "--outtype", "f16"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    expected = "no tensor of the LLM could be quantized to q4_k_m: its rows are 48, 80 wide, not a multiple of"
    with pytest.raises(ValueError, match=re.escape(expected)):
        quantize_gguf(f16, tmp_path / "q4.gguf", "q4_k_m")
    assert not (tmp_path / "q4.gguf").exists()
    with pytest.raises(ValueError, match="llama.cpp's quantizer makes q4_k_m, q5_k_m here, not 'q8_0'"):
        quantize_gguf(f16, tmp_path / "q8.gguf", "q8_0")


def test_check_records_the_agreement_with_pytorch(tiny_base_folder, tmp_path, manifest, k_quant_exports):
    """f32 transcribes as PyTorch does (test_runtime): every transcript equal and a CER delta of 0; q4_k_m's
    agreement (its export checked on 2 clips) is whatever it is, counted the same way."""
    result = export(tiny_base_folder, tmp_path / "f32", "--outtype", "f32", "--check", manifest)
    agreement = edge.read_edge_config(tmp_path / "f32").model_card["agreement"]
    assert agreement["clips"] == 3 and agreement["equal_transcripts"] == 3 and agreement["cer_delta"] == 0.0
    assert f"against PyTorch on 3 clip(s) of {manifest}: 3 transcript(s) equal" in result.stdout
    agreement = edge.read_edge_config(k_quant_exports["q4_k_m"][0]).model_card["agreement"]
    assert agreement["clips"] == 2 and 0 <= agreement["equal_transcripts"] <= 2
    # the card rounds each CER and the delta to 4 decimals (each within 5e-5): the delta of the rounded CERs is the
    # rounded delta or one 1e-4 step beside it, never more than three half-steps away
    assert agreement["cer_delta"] == pytest.approx(agreement["cer"]["edge"] - agreement["cer"]["pytorch"], abs=1.5e-4)


def test_a_bad_check_manifest_fails_before_the_export(tiny_base_folder, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "missing.wav"}\n')
    command = ["export", str(tiny_base_folder), "-o", str(tmp_path / "out"), "--check", str(bad)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1 and "missing field 'text'" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
