"""`funasr-swap serve` under 1, 4 and 16 concurrent clients, against the offline batched transcription of the same
clips measured in the same run.

    PYTHONPATH=. nice -n 10 python benchmarks/serve.py --quickstart runs/quickstart-quick \\
        --out benchmarks/results/serve_cpu.json
    PYTHONPATH=. python benchmarks/serve.py --model real --max-batch-size 64 --concurrency 1 16 64 \\
        --requests 256 --clips 256 --out benchmarks/results/serve_gpu.json

On the CPU the model is the base of a quickstart's world (`funasr-swap quickstart --quick -o DIR` builds one in a
minute), the clips its corpus's espeak-ng wav files. `--model real` serves a random Fun-ASR-Nano of the real shapes
(Qwen3-0.6B text model, bfloat16, on the GPU when there is one) saved to a temporary folder, with
`benchmarks/transcribe.py`'s synthetic clips (2-15 s) and, as there, its stop tokens off: every request generates
--max-new-tokens tokens, the same work in every run.

The server runs as users run it, `funasr-swap serve` in a subprocess, with the same torch threads as the offline runs
here; each client is a thread sending one request after the other (closed loop), the clips dealt round-robin.
Requests/s = requests / wall seconds of the level, RTFx = audio seconds answered / wall seconds; latency is per
request, sent to answered. Offline: `transcribe` over every clip in one call at --max-batch-size (the server's
largest batch), and one clip at a time over the first --baseline-clips, before and after serving (the machine's
load drifts; the ratios compare RTFx, with the mean of the two). Every served transcript is checked against the
offline one of its clip. The server logs each model call ("batch of N clip(s) in S s"), which gives the batch sizes
of each level and the seconds its model calls took (`transcribe` in the server's worker thread, the batch's
features included) against the level's wall.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
import torch
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder
from transcribe import real_shape_base, synthetic_audio  # benchmarks/transcribe.py

from funasr_swap.convert import load_base
from funasr_swap.miniature.quickstart import read_index
from funasr_swap.serve import ServeConfig
from funasr_swap.transcribe import transcribe
from tokenmap.io import atomic_write_lines

BATCH_LINE = re.compile(r"batch of (\d+) clip\(s\) in ([\d.]+) s")


def offline(model, processor, clips: list[bytes], batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    results = transcribe(model, processor, clips, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    wall = time.perf_counter() - start
    audio = sum(r.audio_seconds for r in results)
    summary = {
        "batch_size": batch_size,
        "audio_seconds": round(audio, 2),
        "requests": len(clips),
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(len(clips) / wall, 2),
        "rtfx": round(audio / wall, 1),
        "mean_generated_tokens": round(float(np.mean([r.tokens for r in results])), 1),
    }
    return summary, [r.text for r in results]


class Server:
    """`funasr-swap serve` in a subprocess on a free port; its log goes to a file, read for the batch sizes."""

    def __init__(self, model: Path, args: argparse.Namespace, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-c", "from funasr_swap.cli import app; app()", "serve", "--model", str(model),
                   "--port", "0", "--name", "base", "--max-batch-size", str(args.max_batch_size),
                   "--max-wait-ms", str(args.max_wait_ms), "--max-new-tokens", str(args.max_new_tokens),
                   "--queue-size", str(max(args.concurrency) * 2)]  # fmt: skip
        self.log = log
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
        line = self.process.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"the server did not start: {line}{log.read_text()}")
        self.url = line.split()[-1]
        for _ in range(1200):
            try:
                httpx.get(f"{self.url}/models").raise_for_status()
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the server does not answer at {self.url}")

    def batches(self) -> list[tuple[int, float]]:
        """(clips, seconds of the model call) of every batch the server has logged."""
        return [(int(n), float(seconds)) for n, seconds in BATCH_LINE.findall(self.log.read_text())]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def load_level(url: str, clips: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float], dict]:
    """`requests` requests from `concurrency` client threads; (wall seconds, latencies, answers by clip index)."""
    latencies: list[float] = []
    answers: dict[int, set[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def client(first: int) -> None:
        with httpx.Client(timeout=600) as http:
            start.wait()
            for n in range(first, requests, concurrency):
                index = n % len(clips)
                began = time.perf_counter()
                response = http.post(f"{url}/audio/transcriptions", data={"model": "base"},
                                     files={"file": (f"{index}.wav", clips[index])})  # fmt: skip
                took = time.perf_counter() - began
                response.raise_for_status()
                with lock:
                    latencies.append(took)
                    answers.setdefault(index, set()).add(response.json()["text"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, answers


def serve_levels(
    folder: Path, clips: list[bytes], audio_seconds: list[float], texts: list[str], args: argparse.Namespace
) -> list[dict]:
    """Each concurrency level against one server: requests/s, RTFx, latency, the batch sizes its log shows, and how
    many clips were answered unlike offline."""
    levels = []
    log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])
    server = Server(folder, args, log)
    try:
        load_level(server.url, clips, max(args.concurrency), max(args.concurrency))  # warm-up, as offline
        for concurrency in args.concurrency:
            seen = len(server.batches())
            wall, latencies, answers = load_level(server.url, clips, concurrency, args.requests)
            sizes, seconds = zip(*server.batches()[seen:])
            levels.append({
                "concurrency": concurrency,
                "requests": len(latencies),
                "wall_seconds": round(wall, 2),
                "requests_per_second": round(len(latencies) / wall, 2),
                "rtfx": round(sum(audio_seconds[n % len(clips)] for n in range(len(latencies))) / wall, 1),
                "p50_latency_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
                "p95_latency_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
                "mean_batch_size": round(float(np.mean(sizes)), 2),
                "max_batch_size": max(sizes),
                # the model calls' share of the wall: the rest is HTTP, uploads' decoding, waiting for batch-mates
                "model_seconds": round(sum(seconds), 2),
                "model_share_of_wall": round(sum(seconds) / wall, 2),
                "clips_answered_unlike_offline": sum(answer != {texts[i]} for i, answer in answers.items()),
                "load_average_1min": round(os.getloadavg()[0], 2),
            })  # fmt: skip
    finally:
        server.close()
        log.unlink(missing_ok=True)
    return levels


def quickstart_model(args: argparse.Namespace) -> tuple[Path, object, object, list[bytes], str]:
    """The base of a quickstart's world and its corpus's first --clips wav files."""
    base = next(entry for entry in read_index(args.quickstart) if entry.name == "base")
    folder = args.quickstart / base.folder
    files = sorted(args.quickstart.glob("corpus-*/clips/*.wav"))[: args.clips]
    model, processor = load_base(folder)
    description = f"the quickstart --quick world's base ({base.llm} tiny, {folder.name}), test CER {base.test_cer:.0%}"
    return folder, model, processor, [file.read_bytes() for file in files], description


def real_model(scratch: Path, args: argparse.Namespace) -> tuple[Path, object, object, list[bytes], str]:
    """A random Fun-ASR-Nano of the real shapes with its stop tokens off, saved to `scratch` for the server, and
    --clips synthetic clips as wav files."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = real_shape_base(device)
    model.generation_config.eos_token_id = None  # random weights: a fixed number of tokens per request
    model.save_pretrained(scratch)
    processor.save_pretrained(scratch)
    clips = []
    for waveform in synthetic_audio(args.clips, min_seconds=2.0, max_seconds=15.0):
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, 16000, format="WAV", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return scratch, model, processor, clips, "random Fun-ASR-Nano of the real shapes (Qwen3-0.6B), bfloat16"


def measure(folder: Path, model, processor, clips: list[bytes], args: argparse.Namespace) -> dict:
    """Offline batched and one-by-one transcription, the server's levels, then offline again; ratios by RTFx (the
    one-by-one baseline may run over fewer clips)."""
    audio_seconds = [soundfile.info(io.BytesIO(clip)).duration for clip in clips]
    baseline_clips = clips[: args.baseline_clips or len(clips)]
    # warm-up at the largest batch: a GPU's first batches of a shape find no kernels, plans or memory ready
    transcribe(model, processor, clips[: args.max_batch_size], batch_size=args.max_batch_size,
               max_new_tokens=args.max_new_tokens, progress=False)  # fmt: skip
    batched, texts = offline(model, processor, clips, args.max_batch_size, args.max_new_tokens)
    one_by_one, _ = offline(model, processor, baseline_clips, 1, args.max_new_tokens)
    server_levels = serve_levels(folder, clips, audio_seconds, texts, args)
    # offline again after the server: on a shared machine the load drifts; the ratios use the mean of the two runs
    batched_after, _ = offline(model, processor, clips, args.max_batch_size, args.max_new_tokens)
    one_by_one_after, _ = offline(model, processor, baseline_clips, 1, args.max_new_tokens)
    offline_rtfx = {
        name: (before["rtfx"] + after["rtfx"]) / 2
        for name, before, after in (("batched", batched, batched_after), ("one_by_one", one_by_one, one_by_one_after))
    }
    levels = [
        {
            **level,
            "ratio_to_offline_batched": round(level["rtfx"] / offline_rtfx["batched"], 2),
            "ratio_to_offline_one_by_one": round(level["rtfx"] / offline_rtfx["one_by_one"], 2),
        }
        for level in server_levels
    ]
    return {
        "clips": len(clips),
        "audio_seconds_mean": round(float(np.mean(audio_seconds)), 2),
        "offline": {
            "before_serving": {"batched": batched, "one_by_one": one_by_one},
            "after_serving": {"batched": batched_after, "one_by_one": one_by_one_after},
        },
        "serve": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--quickstart", type=Path, help="a quickstart's folder (its base is served)")
    what.add_argument("--model", choices=["real"], help="a random model of the real shapes (on the GPU if any)")
    parser.add_argument("--clips", type=int, default=48, help="the corpus's first N wav files (real: N synthetic)")
    parser.add_argument("--baseline-clips", type=int, help="clips of the one-by-one baseline (default: all)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=ServeConfig().max_wait_ms)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, offline and in the server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-real-") as scratch:
        folder, model, processor, clips, description = (
            real_model(Path(scratch), args) if args.model == "real" else quickstart_model(args)
        )
        measured = measure(folder, model, processor, clips, args)
    device = str(model.device)
    result = {
        "what": f"funasr-swap serve on {device}: requests/s, RTFx and latency at each concurrency, against offline "
        "transcribe of the same clips (batched, and one by one) in the same run",
        "model": description,
        **measured,
        "settings": {key: getattr(args, key) for key in ("max_batch_size", "max_wait_ms", "max_new_tokens", "threads")},
        "environment": {
            **device_info(device),
            "niceness": os.nice(0),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "offline runs before and after serving bracket the machine's drift; the ratios use their mean",
        },
    }
    offline_runs = result["offline"]
    for name in ("batched", "one_by_one"):
        print(f"offline {name}, RTFx before / after serving: {offline_runs['before_serving'][name]['rtfx']} / "
              f"{offline_runs['after_serving'][name]['rtfx']}")  # fmt: skip
    print("| clients | req/s | RTFx | p50 ms | p95 ms | mean batch | model share of wall | vs offline batched "
          "| vs one by one | unlike offline |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for level in result["serve"]:
        print(f"| {level['concurrency']} | {level['requests_per_second']} | {level['rtfx']} | "
              f"{level['p50_latency_ms']} | {level['p95_latency_ms']} | {level['mean_batch_size']} | "
              f"{level['model_share_of_wall']} | "
              f"{level['ratio_to_offline_batched']}x | {level['ratio_to_offline_one_by_one']}x | "
              f"{level['clips_answered_unlike_offline']} |")  # fmt: skip
    if args.out:
        atomic_write_lines(args.out, [json.dumps(result, indent=2, ensure_ascii=False)])


if __name__ == "__main__":
    main()
