"""The edge runtime (numpy + onnxruntime + llama.cpp) against PyTorch `transcribe`, batch 1 and batched, on the CPU,
on the same clips in the same run.

    PYTHONPATH=. python benchmarks/edge.py --world runs/quickstart --real-llama --out benchmarks/results/edge_cpu.json

Two kinds of model:
- the miniature's trained models (`funasr-swap quickstart`'s world: `--world`), exported f16, on `--n` of its
  held-out clips: wall time, start-up, and whether the edge transcripts equal PyTorch's (and their CER);
- a real-shape Llama-3.2-1B with random weights swapped into the miniature's base (`--real-llama`; 1.24 B
  parameters, about 5 GB in float32), exported f16 and q8_0, on `--real-n` clips. Random weights rarely emit a stop
  token, so every clip generates up to --max-new-tokens on both paths: the same work.

Start-up is loading (PyTorch: `load_base`; edge: `EdgeModel`); wall time is transcribing all the clips after it.
Both sides get the same CPU threads (--threads, default every core; torch.set_num_threads and EdgeModel(threads=)).
RTFx = audio seconds / wall seconds; ratios compare the edge runtime's RTFx with each PyTorch run's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap import edge
from funasr_swap.convert import load_base
from funasr_swap.export import export_edge
from funasr_swap.metrics import cer
from funasr_swap.miniature import held_out_manifest, read_index
from funasr_swap.swap import swap_llm
from funasr_swap.transcribe import transcribe


def timed(function, *args, **kwargs):
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - began


def measure(name: str, source: Path, clips: list[Path], references: list[str] | None, outtypes: list[str],
            work: Path, threads: int, batch_size: int, max_new_tokens: int) -> list[dict]:  # fmt: skip
    """One row per GGUF type: PyTorch batch 1 and batched, then the edge runtime, on `clips`."""
    (model, processor), torch_start = timed(load_base, source)
    torch_runs = {}
    for label, size in (("batch 1", 1), (f"batch {batch_size}", batch_size)):
        results, seconds = timed(
            transcribe, model, processor, clips, batch_size=size, max_new_tokens=max_new_tokens, progress=False
        )
        torch_runs[label] = (results, seconds)
    audio = sum(r.audio_seconds for r in torch_runs["batch 1"][0])
    expected = [r.text for r in torch_runs["batch 1"][0]]
    del model
    rows = []
    for outtype in outtypes:
        folder = work / f"{name.replace(' ', '-')}-{outtype}"
        _, export_seconds = timed(export_edge, source, folder, outtype)
        loaded, edge_start = timed(edge.EdgeModel, folder, threads=threads)
        with loaded:
            results, edge_seconds = timed(edge.transcribe, loaded, clips, max_new_tokens=max_new_tokens, progress=False)
        texts = [r.text for r in results]
        row = {
            "model": name,
            "outtype": outtype,
            "clips": len(clips),
            "audio_seconds": round(audio, 2),
            "tokens": sum(r.tokens for r in results),
            "gguf_mb": round((folder / "llm.gguf").stat().st_size / 1e6, 1),
            "onnx_mb": round((folder / "audio.onnx").stat().st_size / 1e6, 1),
            "export_seconds": round(export_seconds, 1),
            "startup_seconds": {"edge": round(edge_start, 2), "pytorch": round(torch_start, 2)},
            "wall_seconds": {"edge": round(edge_seconds, 2)}
            | {label: round(seconds, 2) for label, (_, seconds) in torch_runs.items()},
            "equal_transcripts": sum(a == b for a, b in zip(texts, expected)),
        }
        row["rtfx"] = {label: round(audio / seconds, 1) for label, seconds in row["wall_seconds"].items()}
        row["edge_speedup"] = {
            f"vs pytorch {label}": round(seconds / edge_seconds, 2) for label, (_, seconds) in torch_runs.items()
        }
        if references is not None:
            row["cer"] = {"edge": round(cer(references, texts), 4), "pytorch": round(cer(references, expected), 4)}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a quickstart output folder (its models.json)")
    parser.add_argument("--models", nargs="*", help="names from its models.json (default: every one)")
    parser.add_argument("--n", type=int, default=50, help="held-out clips for the miniature's models")
    parser.add_argument("--real-llama", action="store_true", help="also a real-shape random-weight Llama-3.2-1B")
    parser.add_argument("--real-n", type=int, default=8, help="clips for the real-shape model")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the real-shape model's answer length cap")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both runtimes")
    parser.add_argument("--batch-size", type=int, default=16, help="PyTorch's batched run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge_cpu.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    manifest = held_out_manifest(args.world)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()][: args.n]
    clips = [manifest.parent / line["audio"] for line in lines]
    references = [line["text"] for line in lines]
    index = read_index(args.world)
    chosen = [entry for entry in index if not args.models or entry.name in args.models]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        for entry in chosen:
            rows += measure(entry.name, args.world / entry.folder, clips, references, ["f16"], work, args.threads,
                            args.batch_size, max_new_tokens=64)  # fmt: skip
        if args.real_llama:
            base = next(args.world / entry.folder for entry in index if entry.init == "joint")
            swapped = swap_llm(*load_base(base), "Llama-3.2-1B", random_weights="real")
            swapped.save(work / "llama-real")
            del swapped
            rows += measure("Llama-3.2-1B real shape, random weights", work / "llama-real", clips[: args.real_n], None,
                            ["f16", "q8_0"], work, args.threads, args.batch_size, args.max_new_tokens)  # fmt: skip
    result = {"environment": device_info("cpu") | {"threads": args.threads}, "world": str(args.world), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
