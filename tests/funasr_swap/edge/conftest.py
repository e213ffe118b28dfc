"""Exports of every family, built once per session: the quick world's trained swaps (Qwen3, Llama-3, Gemma-2,
DeepSeek-V2) and tiny random-weight swaps of its base (Gemma-2 again, whose quick-world swap answers nothing, and the
DeepSeek families the quickstart does not build), each exported on first use per GGUF type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from funasr_swap.miniature import held_out_manifest, read_index

# name -> registry LLM of a tiny random-weight swap of the quick world's base
RANDOM_SWAPS = {
    "Gemma-2-2B random": "Gemma-2-2B",
    "DeepSeek-7B random": "DeepSeek-7B",
    "DeepSeek-Coder-1.3B random": "DeepSeek-Coder-1.3B",
    "DeepSeek-V3 random": "DeepSeek-V3",
}
WORLD_FAMILIES = ("qwen3", "llama3", "gemma2", "deepseek-v2")
MODELS = (*WORLD_FAMILIES, *RANDOM_SWAPS)


@pytest.fixture(scope="session")
def edge_sources(quick_world, tmp_path_factory) -> dict[str, Path]:
    """Model folder by name (`MODELS`)."""
    from funasr_swap.convert import load_base
    from funasr_swap.swap import swap_llm

    index = read_index(quick_world)
    folders = {entry.family: quick_world / entry.folder for entry in index if entry.init != "joint"}
    base = next(quick_world / entry.folder for entry in index if entry.init == "joint")
    model, processor = load_base(base)
    root = tmp_path_factory.mktemp("random-swaps")
    for name, llm in RANDOM_SWAPS.items():
        folders[name] = swap_llm(model, processor, llm, random_weights="tiny").save(root / llm)
    return folders


@pytest.fixture(scope="session")
def export(edge_sources, tmp_path_factory):
    """`export(name, outtype)`: the folder `export_edge` wrote for that model, made on first use."""
    from funasr_swap.export import export_edge

    made: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("exports")

    def exported(name: str, outtype: str) -> Path:
        if (name, outtype) not in made:
            folder = root / f"{name.replace(' ', '-')}-{outtype}"
            export_edge(edge_sources[name], folder, outtype)
            made[name, outtype] = folder
        return made[name, outtype]

    return exported


@pytest.fixture(scope="session")
def test_clips(quick_world) -> list[Path]:
    manifest = held_out_manifest(quick_world)
    return [manifest.parent / json.loads(line)["audio"] for line in manifest.read_text().splitlines()]


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
