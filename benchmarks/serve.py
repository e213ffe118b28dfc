"""`funasr-swap serve` under 1, 4 and 16 concurrent clients, against the offline batched transcription of the same
clips measured in the same run.

    PYTHONPATH=. nice -n 10 python benchmarks/serve.py --quickstart runs/quickstart-quick \\
        --out benchmarks/results/serve_cpu.json

The model is the base of a quickstart's world (`funasr-swap quickstart --quick -o DIR` builds one in a minute), the
clips its corpus's espeak-ng wav files. The server runs as users run it, `funasr-swap serve` in a subprocess, with
the same torch threads as the offline runs here; each client is a thread sending one request after the other
(closed loop), the clips dealt round-robin. Requests/s = requests / wall seconds of the level; latency is per
request, sent to answered. Offline: `transcribe` over every clip in one call, at --max-batch-size (the server's
largest batch) and at 1, before and after serving (the machine's load drifts; the ratios use the mean of the two).
Every served transcript is checked against the offline one of its clip. The server logs each model call ("batch of
N clip(s)"), which gives the batch sizes of each level.
"""

from __future__ import annotations

import argparse
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
import torch
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap.convert import load_base
from funasr_swap.miniature.quickstart import read_index
from funasr_swap.serve import ServeConfig
from funasr_swap.transcribe import transcribe
from tokenmap.io import atomic_write_lines

BATCH_LINE = re.compile(r"batch of (\d+) clip\(s\)")


def offline(model, processor, clips: list[bytes], batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    results = transcribe(model, processor, clips, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    wall = time.perf_counter() - start
    audio = sum(r.audio_seconds for r in results)
    summary = {
        "batch_size": batch_size,
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

    def batch_sizes(self) -> list[int]:
        return [int(n) for n in BATCH_LINE.findall(self.log.read_text())]

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


def serve_levels(folder: Path, clips: list[bytes], texts: list[str], args: argparse.Namespace) -> list[dict]:
    """Each concurrency level against one server: requests/s, latency, the batch sizes its log shows, and how many
    clips were answered unlike offline."""
    levels = []
    log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])
    server = Server(folder, args, log)
    try:
        load_level(server.url, clips, 1, 2)  # warm-up: first requests load lazy parts
        for concurrency in args.concurrency:
            seen = len(server.batch_sizes())
            wall, latencies, answers = load_level(server.url, clips, concurrency, args.requests)
            sizes = server.batch_sizes()[seen:]
            levels.append({
                "concurrency": concurrency,
                "requests": len(latencies),
                "wall_seconds": round(wall, 2),
                "requests_per_second": round(len(latencies) / wall, 2),
                "p50_latency_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
                "p95_latency_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
                "mean_batch_size": round(float(np.mean(sizes)), 2),
                "max_batch_size": max(sizes),
                "clips_answered_unlike_offline": sum(answer != {texts[i]} for i, answer in answers.items()),
                "load_average_1min": round(os.getloadavg()[0], 2),
            })  # fmt: skip
    finally:
        server.close()
        log.unlink(missing_ok=True)
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", type=Path, required=True, help="a quickstart's folder (its base is served)")
    parser.add_argument("--clips", type=int, default=48, help="the corpus's first N wav files")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=ServeConfig().max_wait_ms)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, offline and in the server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = next(entry for entry in read_index(args.quickstart) if entry.name == "base")
    folder = args.quickstart / base.folder
    files = sorted(args.quickstart.glob("corpus-*/clips/*.wav"))[: args.clips]
    clips = [file.read_bytes() for file in files]
    load_before = os.getloadavg()
    model, processor = load_base(folder)
    transcribe(model, processor, clips[:2], batch_size=2, max_new_tokens=args.max_new_tokens, progress=False)  # warm
    batched, texts = offline(model, processor, clips, args.max_batch_size, args.max_new_tokens)
    one_by_one, _ = offline(model, processor, clips, 1, args.max_new_tokens)
    server_levels = serve_levels(folder, clips, texts, args)
    # offline again after the server: on a shared machine the load drifts; the ratios use the mean of the two runs
    batched_after, _ = offline(model, processor, clips, args.max_batch_size, args.max_new_tokens)
    one_by_one_after, _ = offline(model, processor, clips, 1, args.max_new_tokens)
    offline_rates = {
        name: (before["requests_per_second"] + after["requests_per_second"]) / 2
        for name, before, after in (("batched", batched, batched_after), ("one_by_one", one_by_one, one_by_one_after))
    }
    levels = [
        {
            **level,
            "ratio_to_offline_batched": round(level["requests_per_second"] / offline_rates["batched"], 2),
            "ratio_to_offline_one_by_one": round(level["requests_per_second"] / offline_rates["one_by_one"], 2),
        }
        for level in server_levels
    ]

    result = {
        "what": "funasr-swap serve on the CPU: requests/s and latency at each concurrency, against offline batched "
        "transcribe of the same clips in the same run",
        "model": f"the quickstart --quick world's base ({base.llm} tiny, {folder.name}), test CER {base.test_cer:.0%}",
        "clips": len(clips),
        "audio_seconds_mean": round(float(np.mean([len(c) for c in clips])) / 32000, 2),  # 16 kHz int16 wav
        "settings": {key: getattr(args, key) for key in ("max_batch_size", "max_wait_ms", "max_new_tokens", "threads")},
        "offline": {
            "before_serving": {"batched": batched, "one_by_one": one_by_one},
            "after_serving": {"batched": batched_after, "one_by_one": one_by_one_after},
        },
        "serve": levels,
        "environment": {
            **device_info("cpu"),
            "niceness": os.nice(0),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "a shared, busy machine (2 cores, other agents' jobs running, this run at nice 10): absolute "
            "figures are noisy; offline runs before and after serving bracket the drift, and the ratios use their mean",
        },
    }
    print(f"offline, requests/s before / after serving: batched ({args.max_batch_size}) "
          f"{batched['requests_per_second']} / {batched_after['requests_per_second']}, one by one "
          f"{one_by_one['requests_per_second']} / {one_by_one_after['requests_per_second']}")  # fmt: skip
    print("| clients | req/s | p50 ms | p95 ms | mean batch | vs offline batched | vs one by one | unlike offline |")
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        print(f"| {level['concurrency']} | {level['requests_per_second']} | {level['p50_latency_ms']} | "
              f"{level['p95_latency_ms']} | {level['mean_batch_size']} | {level['ratio_to_offline_batched']}x | "
              f"{level['ratio_to_offline_one_by_one']}x | {level['clips_answered_unlike_offline']} |")  # fmt: skip
    if args.out:
        atomic_write_lines(args.out, [json.dumps(result, indent=2, ensure_ascii=False)])


if __name__ == "__main__":
    main()
