"""swap_llm from the tiny base into a tiny model of each family, with the real tokenizers: config, processor,
logits, save/load, the family's default markers, random weights only when asked for (and refused when they cannot
fit), and no tensor shared with the base."""

from __future__ import annotations

import shutil
import warnings
from copy import deepcopy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSpeechSeq2Seq

import funasr_swap.swap
from funasr_swap.base import tiny_base
from funasr_swap.compat import restore_logit_softcapping
from funasr_swap.features import load_processor
from funasr_swap.llms import LLMS, tiny_text_config
from funasr_swap.plan import inference_gib
from funasr_swap.swap import _check_fits_in_memory, _target_llm, check_target, read_swap_report, swap_llm
from funasr_swap.transcribe import transcribe
from tests.conftest import real_tokenizer, shared_tiny_base, tiny_swap
from tokenmap.chat_setup import CHAT_SETUP_KEY, read_chat_setup
from tokenmap.families import detect_family, get_family
from tokenmap.markers import default_strategy
from tokenmap.prompt import AsrTask, build_asr_prompt

# registry name -> (family, the marker strategy its tokenizer supports: the family's default)
TARGETS = {
    "Qwen3-1.7B": ("qwen3", "reuse"),
    "Llama-3.2-1B": ("llama3", "reuse"),
    "Gemma-2-2B": ("gemma2", "reuse"),
    "DeepSeek-7B": ("deepseek-llm", "add"),
    "DeepSeek-V2-Lite": ("deepseek-v2", "add"),
    "DeepSeek-V3": ("deepseek-v3", "reuse"),
}


def audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("target", list(TARGETS))
def test_swap_config_processor_and_trainable_split(target: str):
    family, _ = TARGETS[target]
    result = tiny_swap(target)
    model, processor = result.model, result.processor
    spec = check_target(target, "tiny")
    config = model.config
    assert config.text_config.model_type == spec.model_type
    assert config.adaptor_config.hidden_size == config.text_config.hidden_size == tiny_text_config(target).hidden_size
    assert config.adaptor_config.intermediate_size == config.text_config.hidden_size // 4
    assert (
        config.audio_token_id
        == processor.audio_token_id
        == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    )
    assert config.tie_word_embeddings == spec.tie_word_embeddings
    assert result.report.family == family
    assert bool(result.report.added_token_ids) == (TARGETS[target][1] == "add")  # the family's default strategy
    # the audio tower carried over unchanged
    old_tower = shared_tiny_base()[0].model.audio_tower.state_dict()
    for key, value in model.model.audio_tower.state_dict().items():
        assert torch.equal(value, old_tower[key]), key
    # only the adaptor trains (added marker rows train through the trainer's setup_trainable)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("model.multi_modal_projector.")}
    # the processor's prompt is the family's ASR prompt
    prompt = build_asr_prompt(
        processor.tokenizer, 3, AsrTask(language="en"), family=family, markers=_markers_of(result)
    )
    inputs = processor.apply_transcription_request(audio=[audio(0.2, 0)], language="en")
    n_frames = int(inputs["input_features_mask"].sum())
    assert (
        inputs["input_ids"][0].tolist()
        == build_asr_prompt(
            processor.tokenizer, n_frames, AsrTask(language="en"), family=family, markers=_markers_of(result)
        ).input_ids
    )
    assert prompt.input_ids.count(config.audio_token_id) == 3


def _markers_of(result):
    from tokenmap.markers import SpeechMarkers

    (token, token_id) = result.report.markers["placeholder"]
    return SpeechMarkers(token, token_id)


@pytest.mark.parametrize("target", list(TARGETS))
def test_text_only_logits_equal_the_targets_own_causal_lm(target: str):
    result = tiny_swap(target)
    llm = _target_llm(target, "tiny", seed=0)[0]
    if result.report.added_token_ids:
        llm.resize_token_embeddings(result.model.config.text_config.vocab_size, mean_resizing=False)
    ids = torch.tensor([[5, 17, 99, 1000, 3]])
    with torch.no_grad():
        ours = result.model(input_ids=ids).logits
        theirs = llm(input_ids=ids).logits
    # rows of added markers differ (mean-initialised); compare every other column. The same weights through the same
    # layers, the same lm_head and (Gemma-2) the same soft-capping arithmetic, in this process: equal bit for bit on
    # any machine, so a step the swap loses or adds shows however small it is.
    keep = torch.ones(theirs.shape[-1], dtype=torch.bool)
    keep[result.report.added_token_ids] = False
    assert torch.equal(ours[..., keep], theirs[..., keep])


def test_gemma2_soft_capping_is_restored():
    result = tiny_swap("Gemma-2-2B")
    cap = result.model.config.text_config.final_logit_softcapping
    with torch.no_grad():
        logits = result.model(input_ids=torch.tensor([[2, 106, 1645]])).logits
    assert logits.abs().max() <= cap
    assert restore_logit_softcapping(result.model)  # idempotent: a second call adds no second hook
    with torch.no_grad():
        again = result.model(input_ids=torch.tensor([[2, 106, 1645]])).logits
    torch.testing.assert_close(logits, again)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_save_reload_train_and_transcribe(target: str, tmp_path):
    result = tiny_swap(target, "bridge" if target in ("Qwen3-1.7B", "Llama-3.2-1B") else "fresh")
    folder = result.save(tmp_path / "swapped")
    assert (folder / "SWAP_REPORT.md").is_file()
    assert read_swap_report(folder) == result.report
    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder)
    processor = load_processor(folder)  # stock AutoProcessor needs torchaudio, which this machine lacks
    restore_logit_softcapping(model)
    assert type(model).__name__ == "FunAsrNanoForConditionalGeneration"
    assert processor.audio_token == result.processor.audio_token
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    # a training forward with labels: loss is finite and gradients reach the adaptor
    family = TARGETS[target][0]
    clip = audio(0.4, 1)
    inputs = processor.apply_transcription_request(audio=[clip])
    n = int(inputs["input_features_mask"].sum())
    example = build_asr_prompt(processor.tokenizer, n, target="hello 你好", family=family, markers=_markers_of(result))
    model.train()
    out = model(
        input_ids=torch.tensor([example.input_ids]),
        labels=torch.tensor([example.labels]),
        input_features=inputs["input_features"],
        input_features_mask=inputs["input_features_mask"],
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_2.weight.grad.abs().sum() > 0
    model.eval()
    clips = [audio(0.5, 2), audio(1.2, 3), audio(0.3, 4)]
    batched = transcribe(model, processor, clips, batch_size=3, max_new_tokens=4)
    single = [transcribe(model, processor, [c], batch_size=1, max_new_tokens=4)[0] for c in clips]
    assert [t.text for t in batched] == [t.text for t in single]


def test_bridge_fits_over_the_shared_vocabulary():
    result = tiny_swap("Llama-3.2-1B", "bridge")
    assert result.report.adaptor_strategy == "bridge"
    assert result.report.bridge["pairs"] > 50_000  # Qwen3 and Llama-3 share most byte-level pieces
    assert result.report.bridge["widening_rel_error"] < 1e-4


def test_check_target_gives_a_names_registry_entry_before_anything_loads(tmp_path):
    # the check swap_llm makes first (its refusals: the test below), and the CLI's swap before the base loads
    assert check_target(tmp_path, None) is None
    assert check_target("Llama-3.2-1B", "tiny") is LLMS["Llama-3.2-1B"]


def test_unsatisfiable_markers_unknown_target_and_bad_folder(tmp_path):
    model, processor = shared_tiny_base()
    with pytest.raises(ValueError, match="strategy 'add'"):
        swap_llm(model, processor, "DeepSeek-V2-Lite", markers="reuse", random_weights="tiny")
    with pytest.raises(KeyError, match="Qwen3-0.6B"):
        swap_llm(model, processor, "GPT-5", random_weights="tiny")
    folder = tmp_path / "llm"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        swap_llm(model, processor, folder)
    assert list(tmp_path.iterdir()) == [folder]


@pytest.mark.parametrize("family", sorted({spec.family for spec in LLMS.values()}))
def test_default_marker_strategy_resolves_on_the_familys_tokenizer(family):
    from tokenmap.markers import resolve_speech_markers

    tokenizer = real_tokenizer(next(s.tokenizer for s in LLMS.values() if s.family == family))
    free = get_family(family).unused_special_tokens(tokenizer)
    assert default_strategy(family) == ("reuse" if free else "add")
    assert default_strategy(get_family(family)) == default_strategy(family)
    # `add` changes the tokenizer in place and the session's is shared: a copy for it (`reuse` only reads)
    resolved = deepcopy(tokenizer) if default_strategy(family) == "add" else tokenizer
    assert resolve_speech_markers(resolved, default_strategy(family), family=family).placeholder_id is not None


# ------------------------------------------------------------------------------------------------------------------
# Random weights only when asked for


def test_a_registry_name_needs_random_weights_and_a_folder_refuses_them(tmp_path):
    model, processor = shared_tiny_base()
    with pytest.raises(ValueError, match=r"target='Llama-3.2-1B': no such folder, .* or random_weights \(tiny or real"):
        swap_llm(model, processor, "Llama-3.2-1B")
    with pytest.raises(ValueError, match="random_weights must be one of tiny, real or None, got 'small'"):
        swap_llm(model, processor, "Llama-3.2-1B", random_weights="small")
    with pytest.raises(
        ValueError, match=f"random_weights='tiny' is for registry names; target='{tmp_path}' is a folder"
    ):
        swap_llm(model, processor, tmp_path, random_weights="tiny")


def test_random_weights_are_recorded_and_announced_first(tmp_path):
    result = tiny_swap("Llama-3.2-1B")
    assert result.report.random_weights == "tiny"
    markdown = result.report.to_markdown()
    assert markdown.startswith("**RANDOM WEIGHTS: the LLM Llama-3.2-1B was built from its registry shape (tiny)")
    assert "not a usable model" in markdown.splitlines()[0]
    assert read_swap_report(result.save(tmp_path / "swapped")).random_weights == "tiny"


@pytest.fixture(scope="module")
def llm_folder(tiny_llama_folder):
    return tiny_llama_folder


def _swap_folder(folder):
    model, processor = shared_tiny_base()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in the funasr_swap LLM registry")  # a tiny shape
        return swap_llm(model, processor, folder)


@pytest.fixture(scope="module")
def folder_swap(llm_folder):
    """The swap into the tiny Llama folder, read by the tests below (another swap of it is made where one is needed)."""
    return _swap_folder(llm_folder)


def test_a_folders_weights_are_not_random(folder_swap, llm_folder):
    result = folder_swap
    assert result.report.random_weights is None and result.report.target_llm == str(llm_folder)
    assert "RANDOM WEIGHTS" not in result.report.to_markdown()
    saved = AutoModelForCausalLM.from_pretrained(llm_folder)
    torch.testing.assert_close(result.model.lm_head.weight, saved.lm_head.weight, rtol=0, atol=0)


def test_a_real_shape_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    model, processor = shared_tiny_base()

    class NoBuild:  # what swap builds its LLM with (the plan's meta-device counts use the real class)
        @staticmethod
        def from_config(*args, **kwargs):
            raise AssertionError("the LLM was built")

    monkeypatch.setattr(funasr_swap.swap, "AutoModelForCausalLM", NoBuild)
    # DeepSeek-V3: 1,251 GiB in bf16 (the plan's), twice that as the float32 random weights; no machine here has it
    planned = inference_gib("DeepSeek-V3")
    with pytest.raises(MemoryError, match=f"DeepSeek-V3 .* needs {2 * planned:,.1f} GiB .* plan's {planned:,.1f} GiB"):
        swap_llm(model, processor, "DeepSeek-V3", random_weights="real")
    needed = 2 * inference_gib("Qwen3-0.6B")  # 3.1 GiB
    monkeypatch.setattr(funasr_swap.swap, "available_memory_gib", lambda: needed - 0.1)
    expected = rf"Qwen3-0.6B .* needs {needed:.1f} GiB .*, {needed - 0.1:.1f} GiB available"
    with pytest.raises(MemoryError, match=expected):
        swap_llm(model, processor, "Qwen3-0.6B", random_weights="real")
    monkeypatch.setattr(funasr_swap.swap, "available_memory_gib", lambda: needed + 0.1)
    _check_fits_in_memory(LLMS["Qwen3-0.6B"])  # fits: no error


# ------------------------------------------------------------------------------------------------------------------
# No storage shared with the base


def _storages(module: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}


@pytest.mark.parametrize("target", ["registry", "folder"])
def test_a_swap_shares_no_tensor_or_config_with_its_base(target, folder_swap, llm_folder):
    model, processor = shared_tiny_base()
    result = tiny_swap("Llama-3.2-1B") if target == "registry" else folder_swap
    assert not _storages(result.model) & _storages(model)
    assert result.model.config.audio_config is not model.config.audio_config
    assert result.processor.feature_extractor is not processor.feature_extractor
    again = _swap_folder(llm_folder) if target == "folder" else swap_llm(model, processor, "Llama-3.2-1B",
                                                                         random_weights="tiny")  # fmt: skip
    assert not _storages(result.model) & _storages(again.model)  # siblings neither


# ------------------------------------------------------------------------------------------------------------------
# The chat setup saved with the swap, and the places that read it


@pytest.fixture(scope="module")
def deepseek_llm_run(tmp_path_factory):
    """A tiny DeepSeek-7B swap (deepseek-llm: its tokenizer shares every special token with deepseek-v2's) with
    added boundary markers, saved, and a copy without its swap report, as a training run's final folder holds it."""
    base, processor = tiny_base()
    swapped = swap_llm(base, processor, "DeepSeek-7B", markers="add", boundaries=True, random_weights="tiny")
    folder = swapped.save(tmp_path_factory.mktemp("swap") / "deepseek-llm")
    final = tmp_path_factory.mktemp("run") / "final"
    shutil.copytree(folder, final, ignore=shutil.ignore_patterns("SWAP_REPORT.md", "swap_report.json"))
    return swapped, final


def test_the_chat_setup_saved_with_a_swap_is_what_data_and_the_demo_read(deepseek_llm_run):
    from demos.models import load_models
    from demos.prompt_view import model_prompt_tokens
    from funasr_swap.data import AsrCollator

    swapped, final = deepseek_llm_run
    markers = swapped.processor.tokenizer.init_kwargs[CHAT_SETUP_KEY]["markers"]
    processor = load_processor(final)
    assert detect_family(processor.tokenizer).name == "deepseek-v2"  # what guessing from the tokenizer says
    chat = read_chat_setup(processor.tokenizer, processor.audio_token)
    assert (chat.family.name, chat.recorded, chat.markers.strategy) == ("deepseek-llm", True, "add")
    assert [chat.markers.placeholder, chat.markers.start, chat.markers.end] == [
        markers["placeholder"], "<|startofspeech|>", "<|endofspeech|>"
    ]  # fmt: skip
    assert chat.markers.added_ids == tuple(swapped.report.added_token_ids)

    collator = AsrCollator(processor)
    assert (collator.family.name, collator.markers) == ("deepseek-llm", chat.markers)
    [model] = load_models([final])
    assert (model.card.family, model.card.marker_strategy) == ("deepseek-llm", "add")
    tokens = model_prompt_tokens(processor, 1.0)
    [run] = [i for i, t in enumerate(tokens) if t.role == "audio"]
    assert [t.text for t in tokens[run - 1 : run + 2]] == ["<|startofspeech|>", "<|speech_pad|>", "<|endofspeech|>"]


@pytest.mark.slow
def test_export_names_the_family_the_swap_saved(deepseek_llm_run, tmp_path, monkeypatch):
    from funasr_swap.export import export_edge
    from tests.conftest import onnx_stand_in

    monkeypatch.setattr("funasr_swap.export.export_onnx", onnx_stand_in)  # the audio tower's export reads no family
    _, final = deepseek_llm_run
    assert export_edge(final, tmp_path / "edge").model_card["family"] == "deepseek-llm"
