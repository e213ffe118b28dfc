"""Where an edge clip's time goes: the audio tower and adaptor (ONNX), the prefill, and the decode steps, each timed
on its own for a real-shape LLM with random weights swapped into a quickstart world's base and exported.

    PYTHONPATH=. .venv/bin/python benchmarks/edge_split.py --world runs/quickstart --llm Qwen3-1.7B \
        --outtype q4_k_m --out benchmarks/results/edge_split

Each clip is put through `EdgeModel.audio_rows`, `EdgeModel.prefill` and then `EdgeModel.generate` (prefill again
plus `--max-new-tokens` decode steps: random weights rarely stop), twice over the clips; the second pass is
reported (the first warms llama.cpp's buffers). Decode seconds = generate's minus the prefill's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from edge import world_clips  # benchmarks/edge.py: its clips, held-out ones first
from environment import device_info, write_results  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap import edge
from funasr_swap.audio import load_audio
from funasr_swap.convert import load_base
from funasr_swap.export import export_edge
from funasr_swap.miniature import base_model_folder
from funasr_swap.swap import swap_llm


def split(model: edge.EdgeModel, waveform, max_new_tokens: int) -> dict[str, float]:
    """Seconds of one clip's audio rows, prefill and decode steps."""
    before, after = model.prompt(None, (), True)
    began = time.perf_counter()
    rows = model.audio_rows(waveform)
    audio = time.perf_counter()
    model.prefill(before, rows, after, max_new_tokens)
    prefill = time.perf_counter()
    model.generate(before, rows, after, max_new_tokens)
    generate = time.perf_counter()
    return {"audio_rows": len(rows), "audio": audio - began, "prefill": prefill - audio,
            "decode": (generate - prefill) - (prefill - audio)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a quickstart output folder (its base and clips)")
    parser.add_argument("--llm", default="Qwen3-1.7B", help="registry LLM swapped in at its real shape, random")
    parser.add_argument("--outtype", default="q4_k_m", help="the GGUF type")
    parser.add_argument("--clips", type=int, default=4, help="clips of the world, held-out ones first")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for onnxruntime and llama.cpp")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge_split"), help="OUT.json, OUT.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = base_model_folder(args.world)
    waveforms = [load_audio(clip) for clip in world_clips(args.world, args.clips)[0]]
    with tempfile.TemporaryDirectory(prefix="edge-split-") as tmp:
        swap_llm(*load_base(base), args.llm, random_weights="real").save(Path(tmp) / "real")
        export_edge(Path(tmp) / "real", Path(tmp) / "edge", args.outtype)
        with edge.EdgeModel(Path(tmp) / "edge", threads=args.threads) as model:
            for waveform in waveforms:  # warm-up pass
                split(model, waveform, args.max_new_tokens)
            clips = [split(model, waveform, args.max_new_tokens) for waveform in waveforms]
    record = {"environment": device_info("cpu"), "llm": args.llm, "outtype": args.outtype,
              "max_new_tokens": args.max_new_tokens, "clips": clips}  # fmt: skip
    write_results(args.out, record, render)


def render(record: dict) -> str:
    """A table: per clip, its audio rows and the seconds of each part."""
    lines = [f"# Where an edge clip's time goes: {record['llm']} real shape, {record['outtype']}, "
             f"{record['max_new_tokens']} decode steps", "", "| audio rows | audio (ONNX) s | prefill s | decode s |",
             "|---|---|---|---|"]  # fmt: skip
    for clip in record["clips"]:
        lines.append(f"| {clip['audio_rows']} | {clip['audio']:.3f} | {clip['prefill']:.3f} | {clip['decode']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
