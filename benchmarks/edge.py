"""The edge runtime (numpy + onnxruntime + llama.cpp) against PyTorch `transcribe`, batch 1 and batched, on the CPU,
on the same clips in the same run.

    PYTHONPATH=. nice -n 10 python benchmarks/edge.py --world runs/quickstart --real Llama-3.2-1B Qwen3-1.7B \
        --out benchmarks/results/edge_cpu.json

Two kinds of model:
- the miniature's trained models (`funasr-swap quickstart`'s world: `--world`), exported f16 and q4_k_m, on `--n`
  clips: its held-out test clips first, topped up from its training manifest where the world has fewer (a quick
  world holds 3); whether the edge transcripts equal PyTorch's, and each side's CER;
- real-shape LLMs with random weights swapped into the miniature's base (`--real`: Llama-3.2-1B is 1.24 B
  parameters, Qwen3-1.7B 2.03 B, about 5 and 8 GB in float32), exported f16 and q4_k_m, on `--real-n` clips. Random
  weights rarely emit a stop token, so every clip generates up to --max-new-tokens on both paths: the same work
  (as do most clips of a quick world's models, which are far from trained).

Each runtime transcribes the clips one at a time (batch 1) and `--batch-size` at a time (PyTorch: padded batches of
`generate`; edge: that many llama.cpp sequences). Start-up is loading (PyTorch: `load_base`; edge: `EdgeModel`); wall
time is transcribing all the clips after it. Both sides get the same CPU threads (--threads, default every core;
torch.set_num_threads and EdgeModel(threads=)). RTFx = audio seconds / wall seconds. The machine's load average is
recorded around each measurement: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap import edge
from funasr_swap.convert import load_base
from funasr_swap.export import export_edge
from funasr_swap.gguf import GgufWeights
from funasr_swap.metrics import cer
from funasr_swap.miniature import base_model_folder, held_out_manifest, read_index
from funasr_swap.swap import swap_llm
from funasr_swap.transcribe import transcribe


def timed(function, *args, **kwargs):
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - began


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(name: str, source: Path, clips: list[Path], references: list[str] | None, outtypes: list[str],
            work: Path, threads: int, batch_size: int, max_new_tokens: int) -> list[dict]:  # fmt: skip
    """One row per GGUF type: PyTorch batch 1 and batched, then the edge runtime batch 1 and batched, on `clips`."""
    began_load = load_average()
    (model, processor), torch_start = timed(load_base, source)
    runs = {}
    for size in (1, batch_size):
        runs[f"pytorch batch {size}"] = timed(
            transcribe, model, processor, clips, batch_size=size, max_new_tokens=max_new_tokens, progress=False
        )
    audio = sum(r.audio_seconds for r in runs["pytorch batch 1"][0])
    expected = [r.text for r in runs["pytorch batch 1"][0]]
    del model
    rows = []
    for outtype in outtypes:
        folder = work / f"{name.replace(' ', '-')}-{outtype}"
        config, export_seconds = timed(export_edge, source, folder, outtype)
        loaded, edge_start = timed(edge.EdgeModel, folder, threads=threads)
        with loaded:
            edge_runs = {
                f"edge batch {size}": timed(
                    edge.transcribe, loaded, clips, max_new_tokens=max_new_tokens, progress=False, batch_size=size
                )  # fmt: skip
                for size in (1, batch_size)
            }
        texts = [r.text for r in edge_runs["edge batch 1"][0]]
        wall = {label: seconds for label, (_, seconds) in (edge_runs | runs).items()}
        row = {
            "model": name,
            "outtype": outtype,
            "gguf": GgufWeights(**config.model_card["gguf"]).summary(),
            "clips": len(clips),
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "audio_seconds": round(audio, 2),
            "tokens": sum(r.tokens for r in edge_runs["edge batch 1"][0]),
            "gguf_mb": round((folder / "llm.gguf").stat().st_size / 1e6, 1),
            "onnx_mb": round((folder / "audio.onnx").stat().st_size / 1e6, 1),
            "export_seconds": round(export_seconds, 1),
            "startup_seconds": {"edge": round(edge_start, 2), "pytorch": round(torch_start, 2)},
            "wall_seconds": {label: round(seconds, 2) for label, seconds in wall.items()},
            "seconds_per_clip": {label: round(seconds / len(clips), 3) for label, seconds in wall.items()},
            "rtfx": {label: round(audio / seconds, 2) for label, seconds in wall.items()},
            "speedup": {
                "edge batch 1 vs pytorch batch 1": round(wall["pytorch batch 1"] / wall["edge batch 1"], 2),
                f"edge batch {batch_size} vs pytorch batch {batch_size}": round(
                    wall[f"pytorch batch {batch_size}"] / wall[f"edge batch {batch_size}"], 2
                ),
                f"edge batch {batch_size} vs pytorch batch 1": round(
                    wall["pytorch batch 1"] / wall[f"edge batch {batch_size}"], 2
                ),
            },
            "equal_transcripts": {
                "edge batch 1 = pytorch batch 1": sum(a == b for a, b in zip(texts, expected)),
                f"edge batch {batch_size} = edge batch 1": sum(
                    a.text == b for a, b in zip(edge_runs[f"edge batch {batch_size}"][0], texts)
                ),
            },
            "load_average_1_5_15": {"before": began_load, "after": load_average()},
        }
        if references is not None:
            row["cer"] = {"edge": round(cer(references, texts), 4), "pytorch": round(cer(references, expected), 4)}
            row["cer_delta"] = round(row["cer"]["edge"] - row["cer"]["pytorch"], 4)
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        del loaded
        shutil.rmtree(folder)  # a real-shape export is gigabytes: keep the disk free for the next
    return rows


def world_clips(world: Path, n: int) -> tuple[list[Path], list[str], dict[str, int]]:
    """`n` clips of the world's corpus, held-out test clips first, then its training clips; their references and how
    many came from each manifest."""
    test = held_out_manifest(world)
    chosen, counts = [], {}
    for manifest in (test, test.with_name("train.jsonl")):
        lines = [json.loads(line) for line in manifest.read_text().splitlines()][: n - len(chosen)]
        chosen += [(manifest.parent / line["audio"], line["text"]) for line in lines]
        counts[manifest.name] = len(lines)
    return [clip for clip, _ in chosen], [text for _, text in chosen], counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a quickstart output folder (its models.json)")
    parser.add_argument("--models", nargs="*", help="names from its models.json (default: every one; none: --models)")
    parser.add_argument("--n", type=int, default=50, help="clips for the miniature's models")
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q4_k_m"], help="GGUF types to export")
    parser.add_argument("--real", nargs="*", default=[], help="registry LLMs to swap in at their real shape, random")
    parser.add_argument("--real-n", type=int, default=8, help="clips for the real-shape models")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the answers' length cap")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both runtimes")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched runs' clips per batch (both sides)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge_cpu.json"))
    parser.add_argument("--append", action="store_true", help="add the rows to --out's (one model per run, say)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clips, references, sources = world_clips(args.world, args.n)
    index = read_index(args.world)
    chosen = [entry for entry in index if args.models is None or entry.name in args.models]
    result = {
        "environment": device_info("cpu") | {"threads": args.threads},  # the load: per row
        "world": str(args.world),
        "world_clips": sources,
        "commands": [],
        "rows": [],
    }
    if args.append and args.out.is_file():
        result = json.loads(args.out.read_text())
    result["commands"].append(" ".join(["python", *sys.argv]))
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(rows: list[dict]) -> None:  # written after each model: a long run interrupted keeps what it measured
        result["rows"] += rows
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        base = base_model_folder(args.world)
        for llm in args.real:
            swapped = swap_llm(*load_base(base), llm, random_weights="real")
            swapped.save(work / "real")
            del swapped
            record(measure(f"{llm} real shape, random weights", work / "real", clips[: args.real_n], None,
                           args.outtypes, work, args.threads, args.batch_size, args.max_new_tokens))  # fmt: skip
            shutil.rmtree(work / "real")
        for entry in chosen:
            record(measure(entry.name, args.world / entry.folder, clips, references, args.outtypes, work,
                           args.threads, args.batch_size, args.max_new_tokens))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
