"""Exports of every family, built once per session: the quick world's trained swaps (Qwen3, Llama-3, Gemma-2,
DeepSeek-V2) and tiny random-weight swaps of its base (Gemma-2 again, whose quick-world swap answers nothing, and the
DeepSeek families the quickstart does not build; that Gemma-2 once more with its logits at the soft-cap), each
exported on first use per GGUF type; and PyTorch's side of every comparison (the loaded model, its transcripts, its
greedy answers with their logits), computed once per model and task however many outtypes and batch sizes are
compared against it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from funasr_swap.miniature import base_model_folder, held_out_manifest, read_index

# name -> registry LLM of a tiny random-weight swap of the quick world's base
RANDOM_SWAPS = {
    "Gemma-2-2B random": "Gemma-2-2B",
    "DeepSeek-7B random": "DeepSeek-7B",
    "DeepSeek-Coder-1.3B random": "DeepSeek-Coder-1.3B",
    "DeepSeek-V3 random": "DeepSeek-V3",
}
WORLD_FAMILIES = ("qwen3", "llama3", "gemma2", "deepseek-v2")
MODELS = (*WORLD_FAMILIES, *RANDOM_SWAPS)
# the random Gemma-2 with its final norm 40x: logits up to 25, where the soft-cap (30 tanh(x / 30)) bends them; the
# other models' logits stay near 1, where the cap is the identity within 4e-4 and a dropped cap would not show
AT_THE_CAP = "Gemma-2-2B random at its soft-cap"
MAX_NEW_TOKENS = 16
Task = tuple[str | None, tuple[str, ...], bool]  # (language, hotwords, itn): hashable, a cache key


@pytest.fixture(scope="session")
def edge_sources(quick_world, tmp_path_factory) -> dict[str, Path]:
    """Model folder by name (`MODELS`)."""
    from funasr_swap.convert import load_base
    from funasr_swap.swap import swap_llm

    folders = {entry.family: quick_world / entry.folder for entry in read_index(quick_world) if entry.init != "joint"}
    model, processor = load_base(base_model_folder(quick_world))
    root = tmp_path_factory.mktemp("random-swaps")
    for name, llm in RANDOM_SWAPS.items():
        folders[name] = swap_llm(model, processor, llm, random_weights="tiny").save(root / llm)
    capped = swap_llm(model, processor, "Gemma-2-2B", random_weights="tiny")
    norm = capped.model.model.language_model.norm.weight  # Gemma's RMSNorm multiplies by 1 + weight
    norm.data = 40 * (1 + norm.data) - 1
    folders[AT_THE_CAP] = capped.save(root / "Gemma-2-2B-capped")
    return folders


@pytest.fixture(scope="session")
def export(edge_sources, tmp_path_factory):
    """`export(name, outtype)`: the folder `export_edge` wrote for that model, made on first use.

    audio.onnx depends on the model only, not on the GGUF type, and torch's dynamo exporter takes most of an
    export's time: a model's first export writes it (`export_onnx`), its other outtypes' exports copy that file and
    its measured error instead. Everything else of each export (the GGUF conversion, quantization, edge.json) runs.
    """
    import shutil

    from funasr_swap import export as exporting

    export_onnx = exporting.export_onnx
    made: dict[tuple[str, str], Path] = {}
    audio: dict[str, tuple[Path, float]] = {}  # name -> (its first export's audio.onnx, export_onnx's error)
    root = tmp_path_factory.mktemp("exports")

    def exported(name: str, outtype: str) -> Path:
        if (name, outtype) in made:
            return made[name, outtype]

        def export_onnx_once(model, processor, path: Path, ctc_branch=None, ctc_path=None) -> float:
            if ctc_branch is not None:  # (no model here has the CTC branch) its second file is not shared
                return export_onnx(model, processor, path, ctc_branch, ctc_path)
            if name not in audio:
                audio[name] = (folder / path.name, export_onnx(model, processor, path))
            else:
                shutil.copyfile(audio[name][0], path)
            return audio[name][1]

        folder = root / f"{name.replace(' ', '-')}-{outtype}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(exporting, "export_onnx", export_onnx_once)
            exporting.export_edge(edge_sources[name], folder, outtype)
        made[name, outtype] = folder
        return folder

    return exported


@pytest.fixture(scope="session")
def test_clips(quick_world) -> list[Path]:
    manifest = held_out_manifest(quick_world)
    return [manifest.parent / json.loads(line)["audio"] for line in manifest.read_text().splitlines()]


@pytest.fixture(scope="session")
def pytorch_model(edge_sources):
    """`pytorch_model(name)`: `load_base` of that model's folder, loaded on first use (tests only read it)."""
    from funasr_swap.convert import load_base

    return functools.cache(lambda name: load_base(edge_sources[name]))


@pytest.fixture(scope="session")
def pytorch_transcripts(pytorch_model, test_clips):
    """`pytorch_transcripts(name, task)`: PyTorch's greedy transcripts of the test clips, computed on first use."""
    from funasr_swap.transcribe import transcribe

    @functools.cache
    def transcripts(name: str, task: Task) -> tuple:
        language, hotwords, itn = task
        return tuple(transcribe(*pytorch_model(name), test_clips, language, hotwords, itn,
                                max_new_tokens=MAX_NEW_TOKENS))  # fmt: skip

    return transcripts


@pytest.fixture(scope="session")
def pytorch_answer(pytorch_model):
    """`pytorch_answer(name, clip, task)`: PyTorch's greedy answer ids of one clip (stop id included) and the logits
    `(steps, vocab)` each was chosen from, computed on first use."""
    import torch

    from funasr_swap.audio import load_audio
    from funasr_swap.transcribe import transcription_inputs

    @functools.cache
    def answer(name: str, clip: Path, task: Task):
        model, processor = pytorch_model(name)
        inputs = transcription_inputs(processor, [load_audio(clip)], *task)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)  # fmt: skip
        ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        return ids, torch.stack([step[0] for step in out.logits]).float().numpy()

    return answer


def write_audio_onnx(path: Path, width: int | str, features: int = 560) -> Path:
    """An audio.onnx of another model: the export's inputs, rows `width` wide out of one linear map (a name for
    `width` makes it a dynamic axis, which only the rows themselves tell)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = 128 if isinstance(width, str) else width
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.01, (features, size)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input_features", "w"], ["audio_embeds"])],
        "audio",
        [
            helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", "frames", features]),
            helper.make_tensor_value_info("input_features_mask", TensorProto.INT32, ["batch", "frames"]),
        ],
        [helper.make_tensor_value_info("audio_embeds", TensorProto.FLOAT, ["batch", "frames", width])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.save(model, path)
    return path


def copy_export(export: Path, folder: Path, **edge_json) -> Path:
    """A copy of `export` in `folder` with `edge_json`'s fields replaced in its edge.json."""
    import shutil

    shutil.copytree(export, folder)
    path = folder / "edge.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edge_json}))
    return folder


# the start of a script for a fresh interpreter where importing torch or transformers fails (`python -c`)
WITHOUT_TORCH = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(name + " is not importable here")

sys.meta_path.insert(0, Refuse())
"""
