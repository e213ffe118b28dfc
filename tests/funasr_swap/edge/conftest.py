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
