import json
import shutil

import pytest
import torch
from torch.nn import Linear
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    FunAsrNanoAdaptorConfig,
    FunAsrNanoConfig,
    FunAsrNanoEncoderConfig,
    FunAsrNanoForConditionalGeneration,
)

from funasr_swap.llms import (
    BASE_LLM,
    LLMS,
    LLMSpec,
    active_parameters,
    count_parameters,
    get_llm,
    load_llm,
    lora_targets,
    match_llm,
    text_config,
    tiny_text_config,
)
from tests.conftest import real_tokenizer

NAMES = list(LLMS)
# Tiny configs of one family differ only in tie_word_embeddings: one Fun-ASR-Nano run per distinct tiny config.
DISTINCT_TINY = list({(s.family, s.tie_word_embeddings): name for name, s in LLMS.items()}.values())
FAMILIES = {"qwen3", "llama3", "gemma2", "deepseek-coder", "deepseek-llm", "deepseek-v2", "deepseek-v3"}

# The brief's widths, in registry order: the adaptor's output must equal these.
PUBLISHED_HIDDEN = {
    "Qwen3-0.6B": 1024,
    "Qwen3-1.7B": 2048,
    "Qwen3-4B": 2560,
    "Qwen3-8B": 4096,
    "Qwen3-14B": 5120,
    "Qwen3-32B": 5120,
    "Llama-3.2-1B": 2048,
    "Llama-3.2-3B": 3072,
    "Llama-3.1-8B": 4096,
    "Gemma-2-2B": 2304,
    "Gemma-2-9B": 3584,
    "DeepSeek-Coder-1.3B": 2048,
    "DeepSeek-7B": 4096,
    "DeepSeek-V2-Lite": 2048,
    "DeepSeek-V3": 7168,
}


def test_registry_holds_every_seed_llm():
    assert set(LLMS) == set(PUBLISHED_HIDDEN)
    assert all(isinstance(spec, LLMSpec) and spec.name == name for name, spec in LLMS.items())
    assert {spec.family for spec in LLMS.values()} == FAMILIES


def test_base_llm_is_fun_asr_nanos_qwen3_entry():
    # The base checkpoint's processor and stop tokens are the family of this entry (`convert.build_processor`).
    base = get_llm(BASE_LLM)
    assert (base.hf_id, base.family, base.hidden_size) == ("Qwen/Qwen3-0.6B", "qwen3", 1024)


@pytest.mark.parametrize("name", ["Qwen3-4B", "qwen/qwen3-4b", "QWEN3-4B", "Qwen/Qwen3-4B"])
def test_get_llm_accepts_short_name_and_hf_id_in_any_case(name):
    assert get_llm(name) is LLMS["Qwen3-4B"]


def test_get_llm_accepts_the_hf_repo_name():
    assert get_llm("deepseek-coder-1.3b-base") is LLMS["DeepSeek-Coder-1.3B"]


def test_unknown_llm_lists_the_known_names():
    with pytest.raises(KeyError, match="unknown LLM 'Qwen3-5B'.*Qwen3-0.6B.*DeepSeek-V3"):
        get_llm("Qwen3-5B")


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        LLMS["Qwen3-0.6B"].hidden_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_real_shape_config_reports_published_facts(name):
    spec = LLMS[name]
    config = text_config(name)
    assert config.model_type == spec.model_type
    assert config.hidden_size == spec.hidden_size == PUBLISHED_HIDDEN[name]
    assert config.num_hidden_layers == spec.num_layers
    assert config.vocab_size == spec.vocab_size
    assert config.tie_word_embeddings == spec.tie_word_embeddings
    assert config.max_position_embeddings == spec.context_length
    assert config.rope_parameters["rope_theta"] == spec.rope_theta


@pytest.mark.parametrize("name", NAMES)
def test_real_shape_parameter_count_matches_published_total(name):
    spec = LLMS[name]
    n = count_parameters(text_config(name))
    assert abs(n / spec.total_params - 1) < 0.015, f"{name}: {n / 1e9:.3f}B vs published {spec.total_params / 1e9}B"


@pytest.mark.parametrize("name", [n for n in NAMES if LLMS[n].is_moe])
def test_moe_active_parameters_match_published(name):
    # Per token: everything except the routed experts not chosen; the published figure leaves out the input
    # embedding (a lookup)
    spec = LLMS[name]
    active = active_parameters(text_config(name)) - spec.vocab_size * spec.hidden_size
    assert abs(active / spec.active_params - 1) < 0.03, f"{name}: {active / 1e9:.2f}B active"
    tiny = tiny_text_config(name)  # one routed expert's gated MLP per idle expert and MoE layer
    idle = (tiny.n_routed_experts - tiny.num_experts_per_tok) * (tiny.num_hidden_layers - tiny.first_k_dense_replace)
    assert count_parameters(tiny) - active_parameters(tiny) == idle * 3 * tiny.hidden_size * tiny.moe_intermediate_size


def test_dense_models_use_all_parameters():
    assert all(s.active_params == s.total_params for s in LLMS.values() if not s.is_moe)
    config = tiny_text_config("Llama-3.2-1B")
    assert active_parameters(config) == count_parameters(config)


def test_family_specific_keys_reach_the_transformers_config():
    gemma = text_config("Gemma-2-9B")
    assert (gemma.head_dim, gemma.query_pre_attn_scalar, gemma.sliding_window) == (256, 256, 4096)
    assert (gemma.final_logit_softcapping, gemma.attn_logit_softcapping) == (30.0, 50.0)
    llama = text_config("Llama-3.2-1B")
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 32.0
    assert text_config("Qwen3-0.6B").head_dim == 128
    lite = text_config("DeepSeek-V2-Lite")
    assert lite.q_lora_rank is None and lite.kv_lora_rank == 512 and lite.topk_method == "greedy"
    v3 = text_config("DeepSeek-V3")
    assert (v3.q_lora_rank, v3.n_group, v3.topk_group, v3.routed_scaling_factor) == (1536, 8, 4, 2.5)


def test_overrides_win():
    assert text_config("Qwen3-8B", num_hidden_layers=2).num_hidden_layers == 2
    assert tiny_text_config("Qwen3-8B", hidden_size=128).hidden_size == 128


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_builds_runs_and_keeps_the_real_vocabulary(name):
    spec = LLMS[name]
    config = tiny_text_config(name)
    assert type(config) is type(text_config(name)) and config.model_type == spec.model_type
    assert config.vocab_size == spec.vocab_size >= len(real_tokenizer(spec.tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.get_input_embeddings().num_embeddings == spec.vocab_size
    ids = torch.randint(0, config.vocab_size, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, spec.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_configs_keep_family_structure():
    gemma = tiny_text_config("Gemma-2-2B")
    assert (gemma.final_logit_softcapping, gemma.attn_logit_softcapping) == (30.0, 50.0)
    assert gemma.query_pre_attn_scalar == gemma.head_dim == 16
    assert tiny_text_config("Llama-3.2-1B").rope_parameters["rope_type"] == "llama3"
    assert tiny_text_config("DeepSeek-Coder-1.3B").num_key_value_heads == 4  # multi-head like the real one
    assert tiny_text_config("Qwen3-0.6B").num_key_value_heads == 2  # grouped-query like the real one
    assert tiny_text_config("Qwen3-0.6B").tie_word_embeddings and not tiny_text_config("Qwen3-8B").tie_word_embeddings
    lite, v3 = tiny_text_config("DeepSeek-V2-Lite"), tiny_text_config("DeepSeek-V3")
    assert lite.q_lora_rank is None and v3.q_lora_rank is not None
    assert lite.first_k_dense_replace == v3.first_k_dense_replace == 1 < lite.num_hidden_layers  # dense, then MoE
    assert v3.n_routed_experts % v3.n_group == 0 and v3.topk_group < v3.n_group


@pytest.mark.parametrize("width", [64, 128])
def test_tiny_configs_scale_with_the_width(width):
    llama, gemma = tiny_text_config("Llama-3.2-1B", width=width), tiny_text_config("Gemma-2-2B", width=width)
    assert (llama.hidden_size, llama.intermediate_size, llama.head_dim) == (width, 2 * width, width // 4)
    assert (llama.num_hidden_layers, llama.num_attention_heads) == (2, 4)
    assert gemma.query_pre_attn_scalar == gemma.head_dim == width // 4
    lite = tiny_text_config("DeepSeek-V2-Lite", width=width)  # MLA at the real model's proportions
    assert (lite.kv_lora_rank, lite.qk_nope_head_dim, lite.v_head_dim) == (width // 4,) * 3
    assert (lite.qk_rope_head_dim, lite.moe_intermediate_size, lite.q_lora_rank) == (width // 8, width // 4, None)
    assert tiny_text_config("DeepSeek-V3", width=width).q_lora_rank == width // 2


def test_tied_embeddings_count_once():
    tied = tiny_text_config("Qwen3-0.6B")
    untied = tiny_text_config("Qwen3-0.6B", tie_word_embeddings=False)
    assert count_parameters(untied) - count_parameters(tied) == tied.vocab_size * tied.hidden_size
    torch.manual_seed(0)
    assert count_parameters(AutoModelForCausalLM.from_config(tied)) == count_parameters(tied)  # a module, or its config


@pytest.mark.parametrize("name", NAMES)
def test_lora_targets_name_every_attention_and_mlp_projection(name):
    config = tiny_text_config(name)
    linear = {n.rsplit(".", 1)[-1] for n, m in AutoModel.from_config(config).named_modules() if isinstance(m, Linear)}
    assert set(lora_targets(config)) == linear  # DeepSeek's routed experts are fused tensors, not Linear layers
    if LLMS[name].uses_mla:
        assert {"kv_a_proj_with_mqa", "kv_b_proj"} <= linear


def test_lora_targets_of_an_unknown_architecture_say_what_to_pass():
    with pytest.raises(ValueError, match="model_type 'mistral' .* pass the module names explicitly"):
        lora_targets(AutoConfig.for_model("mistral"))


def _tiny_fun_asr_nano(text) -> FunAsrNanoConfig:
    audio = FunAsrNanoEncoderConfig(
        hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2,
        num_timestamp_prediction_layers=1,
    )  # fmt: skip
    adaptor = FunAsrNanoAdaptorConfig(
        hidden_size=text.hidden_size, intermediate_size=text.hidden_size // 4, num_attention_heads=4,
        projector_hidden_size=128,
    )  # fmt: skip
    # Any id of the tokenizer serves as the placeholder: audio overwrites its embedding.
    return FunAsrNanoConfig(
        text_config=text,
        audio_config=audio,
        adaptor_config=adaptor,
        audio_token_id=text.vocab_size - 1,
        tie_word_embeddings=text.tie_word_embeddings,
    )


@pytest.mark.parametrize("name", DISTINCT_TINY)
def test_tiny_llm_trains_inside_fun_asr_nano(name):
    config = _tiny_fun_asr_nano(tiny_text_config(name))
    torch.manual_seed(0)
    model = FunAsrNanoForConditionalGeneration(config)
    frames = 5  # one audio token per LFR frame
    features = torch.randn(1, frames, config.audio_config.input_size)
    prompt, target = torch.randint(0, 1000, (1, 3)), torch.randint(0, 1000, (1, 4))
    audio = torch.full((1, frames), config.audio_token_id)
    input_ids = torch.cat([prompt, audio, target], dim=1)
    labels = torch.cat([torch.full((1, 3 + frames), -100), target], dim=1)
    out = model(
        input_ids=input_ids,
        input_features=features,
        input_features_mask=torch.ones(1, frames, dtype=torch.long),
        labels=labels,
    )
    assert out.logits.shape == (1, input_ids.shape[1], LLMS[name].vocab_size)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_2.weight.grad.abs().sum() > 0


def test_match_llm_by_architecture_and_by_name():
    assert match_llm(text_config("Qwen3-14B")) is LLMS["Qwen3-14B"]
    assert match_llm(text_config("Qwen3-32B")) is LLMS["Qwen3-32B"]  # same width, told apart by depth
    instruct = {**text_config("Llama-3.2-1B").to_dict(), "_name_or_path": "meta-llama/Llama-3.2-1B-Instruct"}
    assert match_llm(instruct) is LLMS["Llama-3.2-1B"]
    local = {**tiny_text_config("DeepSeek-7B").to_dict(), "_name_or_path": "/models/deepseek-llm-7b-base"}
    assert match_llm(local) is LLMS["DeepSeek-7B"]
    assert match_llm(tiny_text_config("Qwen3-0.6B")) is None


def _copy_with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_load_llm_loads_an_unlisted_model_with_a_warning(tiny_llama_folder):
    with pytest.warns(UserWarning, match="not in the funasr_swap LLM registry"):
        loaded = load_llm(tiny_llama_folder, dtype=torch.float32)
    assert loaded.spec is None
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert len(loaded.tokenizer) == 128256
    ids = loaded.tokenizer("hello world", return_tensors="pt").input_ids
    assert loaded.model(input_ids=ids).logits.shape[-1] == 128256


def test_load_llm_rejects_a_shape_that_contradicts_its_registry_name(tiny_llama_folder, tmp_path):
    folder = _copy_with_config(tiny_llama_folder, tmp_path / "m", _name_or_path="meta-llama/Llama-3.2-1B")
    with pytest.raises(ValueError, match=r"config.json: hidden_size 64 != 2048 of Llama-3.2-1B") as err:
        load_llm(folder)
    assert str(folder) in str(err.value)


def test_load_llm_rejects_a_tokenizer_longer_than_the_embeddings(tiny_llama_folder, tmp_path):
    folder = _copy_with_config(tiny_llama_folder, tmp_path / "m", vocab_size=1000)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"vocab_size 1000 \(embedding rows\) < 128256"):
        load_llm(folder)


def test_load_llm_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="LLM folder not found"):
        load_llm(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.json"):
        load_llm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "fun_asr_nano_encoder"}))
    with pytest.raises(ValueError, match="model_type 'fun_asr_nano_encoder' has no causal-LM class"):
        load_llm(tmp_path)
