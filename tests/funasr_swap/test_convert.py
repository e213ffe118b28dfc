"""Loading and converting Fun-ASR-Nano checkpoints: an original-format checkpoint is written from a tiny model with
the real original key names (fused encoder q/k/v, a CTC branch, config.yaml, a Qwen3-0.6B/ folder with the real
tokenizer); converted, it must compute exactly what the tiny model computes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSpeechSeq2Seq, AutoTokenizer, FunAsrNanoConfig, FunAsrNanoForConditionalGeneration
from transformers.utils import is_torchaudio_available
from typer.testing import CliRunner

from funasr_swap.base import tiny_base
from funasr_swap.cli import app
from funasr_swap.compat import mask_adaptor_padding
from funasr_swap.convert import (
    check_state_dict,
    checkpoint_format,
    convert_checkpoint,
    convert_state_dict,
    load_base,
    original_config,
    prefix_renames,
    read_original_state_dict,
)
from funasr_swap.llms import text_config
from tokenmap.assets import resolve_tokenizer_path
from tokenmap.prompt import build_chat_template

# transformers name inside an encoder layer / adaptor block -> funasr name (the inverse of the package's renames,
# written out independently here).
_INNER = {
    "self_attn.q_proj.": "self_attn.linear_q.",
    "self_attn.k_proj.": "self_attn.linear_k.",
    "self_attn.v_proj.": "self_attn.linear_v.",
    "self_attn.o_proj.": "self_attn.linear_out.",
    "self_attn.fsmn.conv.": "self_attn.fsmn_block.",
    "mlp.fc1.": "feed_forward.w_1.",
    "mlp.fc2.": "feed_forward.w_2.",
    "input_layernorm.": "norm1.",
    "post_attention_layernorm.": "norm2.",
}


def _inner(rest: str) -> str:
    for hf, original in _INNER.items():
        if rest.startswith(hf):
            return original + rest[len(hf) :]
    raise AssertionError(f"no original name for {rest}")


def to_original(state_dict: dict[str, torch.Tensor], config: FunAsrNanoConfig) -> dict[str, torch.Tensor]:
    """A transformers FunAsrNano state dict under funasr's FunASRNano key names, encoder q/k/v fused."""
    n_layers = config.audio_config.num_hidden_layers
    n_transcription = n_layers - config.audio_config.num_timestamp_prediction_layers
    out = {}
    for key, value in state_dict.items():
        if key.startswith("model.audio_tower.layers."):
            index, rest = key.removeprefix("model.audio_tower.layers.").split(".", 1)
            i = int(index)
            if rest.startswith("final_layernorm."):
                norm = {n_transcription - 1: "after_norm.", n_layers - 1: "tp_norm."}[i]
                out["audio_encoder." + norm + rest.removeprefix("final_layernorm.")] = value
                continue
            if i == 0:
                layer = "audio_encoder.encoders0.0."
            elif i < n_transcription:
                layer = f"audio_encoder.encoders.{i - 1}."
            else:
                layer = f"audio_encoder.tp_encoders.{i - n_transcription}."
            if rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                continue  # fused with q below
            if rest.startswith("self_attn.q_proj."):
                leaf = rest.removeprefix("self_attn.q_proj.")
                parts = [state_dict[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
                out[layer + "self_attn.linear_q_k_v." + leaf] = torch.cat(parts, dim=0)
                continue
            out[layer + _inner(rest)] = value
        elif key.startswith("model.multi_modal_projector.linear_"):
            out[key.replace("model.multi_modal_projector.linear_", "audio_adaptor.linear")] = value
        elif key.startswith("model.multi_modal_projector.layers."):
            index, rest = key.removeprefix("model.multi_modal_projector.layers.").split(".", 1)
            out[f"audio_adaptor.blocks.{index}." + _inner(rest)] = value
        elif key.startswith("model.language_model."):
            out["llm.model." + key.removeprefix("model.language_model.")] = value
        else:
            assert key.startswith("lm_head."), key
            out["llm." + key] = value
    return out


def original_yaml(config: FunAsrNanoConfig) -> dict:
    """config.yaml of funasr's FunASRNano (the keys of the published Fun-ASR-Nano-2512 file) for `config`."""
    audio, adaptor = config.audio_config, config.adaptor_config
    n_tp = audio.num_timestamp_prediction_layers
    return {
        "model": "FunASRNano",
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {
            "output_size": audio.hidden_size,
            "attention_heads": audio.num_attention_heads,
            "linear_units": audio.intermediate_size,
            "num_blocks": audio.num_hidden_layers - n_tp,
            "tp_blocks": n_tp,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": audio.fsmn_kernel_size,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "freeze": True,
        },
        "llm": "Qwen3-0.6b",
        "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "bf16", "init_param_path": "Qwen3-0.6B"},
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": {
            "downsample_rate": 1,
            "use_low_frame_rate": True,
            "ffn_dim": adaptor.projector_hidden_size,
            "llm_dim": adaptor.hidden_size,
            "encoder_dim": audio.hidden_size,
            "n_layer": adaptor.num_hidden_layers,
            "attention_heads": adaptor.num_attention_heads,
            "freeze": True,
        },
        "ctc_decoder": "Transformer",
        "ctc_decoder_conf": {"downsample_rate": 1, "ffn_dim": 2048, "llm_dim": 512, "encoder_dim": 512, "n_layer": 5},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": audio.num_mel_bins,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": audio.num_stacked_frames,
            "lfr_n": 6,
            "cmvn_file": None,
        },
    }


CTC_KEYS = ("ctc_decoder.linear1.weight", "ctc.ctc_lo.weight")


def write_original(model: FunAsrNanoForConditionalGeneration, folder: Path) -> Path:
    """Write `model` as an original Fun-ASR-Nano checkpoint: config.yaml, model.pt (under "state_dict", with a CTC
    branch), and Qwen3-0.6B/ with the LLM's config.json and the real Qwen3 tokenizer files."""
    folder.mkdir(parents=True)
    state_dict = to_original(model.state_dict(), model.config)
    state_dict |= {key: torch.randn(8, 4) for key in CTC_KEYS}
    torch.save({"state_dict": state_dict}, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(original_yaml(model.config), allow_unicode=True))
    model.config.text_config.save_pretrained(folder / "Qwen3-0.6B")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(resolve_tokenizer_path("qwen3") / name, folder / "Qwen3-0.6B" / name)
    return folder


def variant(original: Path, folder: Path, **files: object) -> Path:
    """A copy of checkpoint `original` (symlinks) in which `files` ("model.pt": a state dict, "config.yaml": a
    dict) are replaced."""
    folder.mkdir()
    for child in original.iterdir():
        if child.name not in files:
            (folder / child.name).symlink_to(child)
    if "model.pt" in files:
        torch.save(files["model.pt"], folder / "model.pt")
    if "config.yaml" in files:
        (folder / "config.yaml").write_text(yaml.safe_dump(files["config.yaml"], allow_unicode=True))
    return folder


@pytest.fixture(scope="module")
def source():
    return tiny_base(seed=0)


@pytest.fixture(scope="module")
def original(source, tmp_path_factory) -> Path:
    return write_original(source[0], tmp_path_factory.mktemp("orig") / "Fun-ASR-Nano-tiny")


@pytest.fixture(scope="module")
def inputs(source):
    """Processor outputs for two clips of different length (padding, several placeholders per row)."""
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 11000)]
    return source[1].apply_transcription_request(audio, language="en", keywords=["funasr"])


def logits(model: FunAsrNanoForConditionalGeneration, inputs) -> torch.Tensor:
    """The model's logits on `inputs`. A conversion copies weights: the converted model and its source run the same
    weights through the same kernels in this process, so their logits are compared bit for bit, on any machine."""
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def converted_fp32(original, tmp_path_factory) -> Path:
    return convert_checkpoint(original, tmp_path_factory.mktemp("hf") / "fun-asr-nano-hf", dtype=torch.float32)


def test_original_loads_with_identical_outputs_and_reports_skipped_keys(source, original, inputs, caplog):
    with caplog.at_level(logging.INFO, logger="funasr_swap.convert"):
        model, processor = load_base(original)
    assert isinstance(model, FunAsrNanoForConditionalGeneration) and not model.training
    assert model.dtype == torch.float32  # CPU default
    assert torch.equal(logits(model, inputs), logits(source[0], inputs))
    assert all(key in caplog.text for key in CTC_KEYS)
    assert model.config.audio_token_id == processor.audio_token_id == 151646
    # The processor carries the checkpoint's own tokenizer (Qwen3-0.6B/) and builds the same prompt ids.
    assert torch.equal(
        processor.apply_transcription_request([np.zeros(16000, np.float32)], language="en")["input_ids"],
        source[1].apply_transcription_request([np.zeros(16000, np.float32)], language="en")["input_ids"],
    )


def layer_norm_eps(module: torch.nn.Module) -> set[float]:
    return {m.eps for m in module.modules() if isinstance(m, torch.nn.LayerNorm)}


def test_original_gets_funasrs_layer_norm_eps(original, converted_fp32):
    # funasr: the adaptor blocks use transformer/layer_norm.py's LayerNorm (eps 1e-12), SenseVoiceEncoderSmall torch's
    # default (1e-5); config.yaml states neither, and transformers defaults both to 1e-5.
    config = original_config(original)
    assert (config.audio_config.layer_norm_eps, config.adaptor_config.layer_norm_eps) == (1e-5, 1e-12)
    model, _ = load_base(original)
    assert layer_norm_eps(model.model.audio_tower) == {1e-5}
    assert layer_norm_eps(model.model.multi_modal_projector) == {1e-12}
    saved = json.loads((converted_fp32 / "config.json").read_text())
    assert (saved["audio_config"]["layer_norm_eps"], saved["adaptor_config"]["layer_norm_eps"]) == (1e-5, 1e-12)
    reloaded = AutoModelForSpeechSeq2Seq.from_pretrained(converted_fp32)
    assert layer_norm_eps(reloaded.model.multi_modal_projector) == {1e-12}


def test_convert_state_dict_splits_fused_qkv_and_returns_unconverted(source):
    model = source[0]
    original_sd = to_original(model.state_dict(), model.config) | {key: torch.zeros(2) for key in CTC_KEYS}
    converted, unconverted = convert_state_dict(original_sd, model.config)
    assert sorted(unconverted) == sorted(CTC_KEYS)
    assert converted.keys() == model.state_dict().keys()
    fused = original_sd["audio_encoder.encoders.0.self_attn.linear_q_k_v.weight"]
    hidden = model.config.audio_config.hidden_size
    assert torch.equal(converted["model.audio_tower.layers.1.self_attn.k_proj.weight"], fused[hidden : 2 * hidden])
    assert check_state_dict(converted, unconverted, model.config, "model.pt") == list(CTC_KEYS)


def test_fused_qkv_must_split_in_three(source):
    bad = {"audio_encoder.encoders.0.self_attn.linear_q_k_v.bias": torch.zeros(10)}
    with pytest.raises(ValueError, match=r"linear_q_k_v.bias: .*divisible by 3, got shape \(10,\)"):
        convert_state_dict(bad, source[0].config)


def test_read_original_state_dict_unwraps(tmp_path):
    tensors = {"llm.model.norm.weight": torch.ones(3)}
    for name, payload in {"plain": tensors, "state_dict": {"state_dict": tensors}, "model": {"model": tensors}}.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        assert read_original_state_dict(tmp_path / f"{name}.pt").keys() == tensors.keys()
    torch.save({"epoch": 3, "state_dict": tensors, "optimizer": {"step": torch.tensor(1)}}, tmp_path / "ckpt.pt")
    assert read_original_state_dict(tmp_path / "ckpt.pt").keys() == tensors.keys()


def test_unexpected_key_is_named(original, tmp_path):
    state_dict = read_original_state_dict(original / "model.pt")
    state_dict["audio_encoder.foo.weight"] = torch.zeros(2)
    state_dict["audio_encoder.encoders.0.norm3.weight"] = torch.zeros(2)  # renamed, yet no tensor of the model
    folder = variant(original, tmp_path / "ckpt", **{"model.pt": state_dict})
    with pytest.raises(ValueError) as error:
        load_base(folder)
    assert "audio_encoder.foo.weight" in str(error.value)
    assert "model.audio_tower.layers.1.norm3.weight" in str(error.value)
    assert "ctc_decoder" not in str(error.value)


def test_missing_key_is_named(original, tmp_path):
    state_dict = read_original_state_dict(original / "model.pt")
    del state_dict["audio_encoder.tp_norm.weight"], state_dict["audio_adaptor.blocks.1.norm2.bias"]
    folder = variant(original, tmp_path / "ckpt", **{"model.pt": state_dict})
    with pytest.raises(ValueError, match="2 missing") as error:
        load_base(folder)
    last = f"model.audio_tower.layers.{original_config(original).audio_config.num_hidden_layers - 1}"
    assert f"{last}.final_layernorm.weight" in str(error.value)
    assert "model.multi_modal_projector.layers.1.post_attention_layernorm.bias" in str(error.value)


def test_shape_mismatch_is_named(original, tmp_path):
    state_dict = read_original_state_dict(original / "model.pt")
    state_dict["audio_adaptor.linear2.bias"] = torch.zeros(3)
    folder = variant(original, tmp_path / "ckpt", **{"model.pt": state_dict})
    with pytest.raises(ValueError, match=r"model.multi_modal_projector.linear_2.bias: \(3,\) != \(64,\)"):
        load_base(folder)


def test_layer_beyond_config_is_unexpected(source, original, tmp_path):
    conf = yaml.safe_load((original / "config.yaml").read_text())
    conf["audio_encoder_conf"]["num_blocks"] -= 1  # the checkpoint has one transcription layer more
    folder = variant(original, tmp_path / "ckpt", **{"config.yaml": conf})
    n = conf["audio_encoder_conf"]["num_blocks"]
    with pytest.raises(ValueError, match=rf"audio_encoder\.encoders\.{n - 1}\.norm1\.weight"):
        load_base(folder)


def test_untied_lm_head_differing_from_embeddings_is_an_error(source):
    model = source[0]
    original_sd = to_original(model.state_dict(), model.config)
    original_sd["llm.lm_head.weight"] = original_sd["llm.lm_head.weight"] + 1.0
    converted, unconverted = convert_state_dict(original_sd, model.config)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        check_state_dict(converted, unconverted, model.config, "model.pt")


def test_tied_lm_head_may_be_absent(source, original, inputs, tmp_path):
    state_dict = read_original_state_dict(original / "model.pt")
    del state_dict["llm.lm_head.weight"]
    model, _ = load_base(variant(original, tmp_path / "ckpt", **{"model.pt": state_dict}))
    assert torch.equal(logits(model, inputs), logits(source[0], inputs))


def test_llm_dim_mismatch_is_an_error(original, tmp_path):
    conf = yaml.safe_load((original / "config.yaml").read_text())
    conf["audio_adaptor_conf"]["llm_dim"] = 1024
    folder = variant(original, tmp_path / "ckpt", **{"config.yaml": conf})
    with pytest.raises(ValueError, match=r"llm_dim 1024 != hidden_size 64 of .*Qwen3-0.6B/config.json"):
        load_base(folder)


@pytest.mark.parametrize("key", ["num_blocks", "output_size"])
def test_missing_encoder_hyperparameter_is_named(original, tmp_path, key):
    conf = yaml.safe_load((original / "config.yaml").read_text())
    del conf["audio_encoder_conf"][key]
    with pytest.raises(KeyError, match=f"audio_encoder_conf has no '{key}'"):
        original_config(variant(original, tmp_path / "ckpt", **{"config.yaml": conf}))


def test_unsupported_adaptor_downsampling_is_an_error(original, tmp_path):
    conf = yaml.safe_load((original / "config.yaml").read_text())
    conf["audio_adaptor_conf"]["downsample_rate"] = 2
    with pytest.raises(ValueError, match="downsample_rate is 2"):
        original_config(variant(original, tmp_path / "ckpt", **{"config.yaml": conf}))


def test_neither_format_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(FileNotFoundError) as error:
        load_base(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "'qwen3'" in message and "config.yaml" in message and "model.pt" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base(tmp_path / "nowhere")


def test_dtype_and_placement_pass_through(original):
    model, _ = load_base(original, dtype=torch.bfloat16, device_map={"": "cpu"})
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    with pytest.raises(ValueError, match="not both"):
        load_base(original, device="cpu", device_map="auto")


def test_checkpoint_format(original, converted_fp32):
    assert checkpoint_format(original) == "original"
    assert checkpoint_format(converted_fp32) == "hf"


def test_real_size_mapping_covers_every_tensor(tmp_path):
    """The published shapes (50 + 20 encoder layers, Qwen3-0.6B): every tensor maps, final norms at 49 and 69."""
    real = {
        "audio_encoder_conf": {
            "output_size": 512,
            "attention_heads": 4,
            "linear_units": 2048,
            "num_blocks": 50,
            "tp_blocks": 20,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "kernel_size": 11,
        },
        "audio_adaptor_conf": {
            "downsample_rate": 1,
            "use_low_frame_rate": True,
            "ffn_dim": 2048,
            "llm_dim": 1024,
            "encoder_dim": 512,
            "n_layer": 2,
        },
        "frontend_conf": {"n_mels": 80, "lfr_m": 7, "lfr_n": 6},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(real))
    text_config("Qwen3-0.6B").save_pretrained(tmp_path / "Qwen3-0.6B")
    config = original_config(tmp_path)
    assert (config.audio_config.num_hidden_layers, config.audio_config.num_timestamp_prediction_layers) == (70, 20)
    assert (config.adaptor_config.hidden_size, config.adaptor_config.intermediate_size) == (1024, 256)
    renames = dict(prefix_renames(config))
    assert renames["audio_encoder.after_norm."] == "model.audio_tower.layers.49.final_layernorm."
    assert renames["audio_encoder.tp_norm."] == "model.audio_tower.layers.69.final_layernorm."
    assert renames["audio_encoder.encoders.48."] == "model.audio_tower.layers.49."
    assert renames["audio_encoder.tp_encoders.0."] == "model.audio_tower.layers.50."
    with torch.device("meta"):
        expected = FunAsrNanoForConditionalGeneration(config).state_dict()
    original_sd = to_original(expected, config)
    del original_sd["llm.lm_head.weight"]  # tied; meta tensors cannot be compared
    converted, unconverted = convert_state_dict(original_sd, config)
    assert unconverted == [] and check_state_dict(converted, unconverted, config, "model.pt") == []
    assert converted.keys() == expected.keys() - {"lm_head.weight"}


def test_converted_folder_loads_with_stock_transformers(source, inputs, converted_fp32):
    files = {p.name for p in converted_fp32.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "generation_config.json",
    } <= files
    assert not list(converted_fp32.parent.glob(".*"))  # the temporary folder was renamed away
    model = AutoModelForSpeechSeq2Seq.from_pretrained(converted_fp32)
    assert isinstance(model, FunAsrNanoForConditionalGeneration)
    mask_adaptor_padding(model)  # stock loading leaves the adaptor unmasked (funasr_swap.compat); inputs are padded
    assert torch.equal(logits(model, inputs), logits(source[0], inputs))
    assert (converted_fp32 / "chat_template.jinja").read_text() == build_chat_template("qwen3")
    processor_config = json.loads((converted_fp32 / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "FunAsrNanoProcessor"
    assert processor_config["feature_extractor"]["feature_extractor_type"] == "FunAsrNanoFeatureExtractor"
    assert processor_config["audio_token"] == "<|object_ref_start|>"
    tokenizer = AutoTokenizer.from_pretrained(converted_fp32)
    assert tokenizer.padding_side == "left" and len(tokenizer) == len(source[1].tokenizer)
    assert model.generation_config.eos_token_id == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]


def test_hf_folder_loads_with_load_base(source, inputs, converted_fp32):
    model, processor = load_base(converted_fp32)
    assert model.dtype == torch.float32
    assert torch.equal(logits(model, inputs), logits(source[0], inputs))
    audio = [np.zeros(12000, np.float32)]
    ours = processor.apply_transcription_request(audio, language="en", keywords=["a", "b"])
    theirs = source[1].apply_transcription_request(audio, language="en", keywords=["a", "b"])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["input_features"], theirs["input_features"])


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["cut-in-the-weights", "empty"])
def test_a_truncated_weights_file_is_one_clear_error(converted_fp32, tmp_path, keep):
    folder = Path(shutil.copytree(converted_fp32, tmp_path / "cut"))
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(int(weights.stat().st_size * keep))
    with pytest.raises(OSError, match=f"{weights}: cannot read the weights .*truncated or corrupt"):
        load_base(folder)


@pytest.mark.skipif(not is_torchaudio_available(), reason="stock FunAsrNanoFeatureExtractor needs torchaudio")
def test_converted_folder_loads_with_stock_auto_processor(source, converted_fp32):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted_fp32)
    audio = [np.zeros(12000, np.float32)]
    assert torch.equal(
        processor.apply_transcription_request(audio)["input_ids"],
        source[1].apply_transcription_request(audio)["input_ids"],
    )


def test_convert_refuses_to_overwrite(original, converted_fp32):
    before = (converted_fp32 / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(original, converted_fp32)
    assert (converted_fp32 / "model.safetensors").stat().st_mtime_ns == before


def test_cli_convert(original, tmp_path):
    runner = CliRunner()
    dst = tmp_path / "out"
    result = runner.invoke(app, ["convert", str(original), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"  # the default
    model = AutoModelForSpeechSeq2Seq.from_pretrained(dst, dtype="auto")
    assert model.dtype == torch.bfloat16
    again = runner.invoke(app, ["convert", str(original), "-o", str(dst)])
    assert again.exit_code == 1 and "overwrite" in again.output
    bad = runner.invoke(app, ["convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "does not exist" in bad.output and not (tmp_path / "x").exists()
