"""Benchmark: building a VocabMap against the naive per-token build, and `convert` throughput on a manifest.

Builds Qwen3 -> Llama-3 and Qwen3 -> Gemma-2 maps (best of 3) and, in the same run, the naive map a user would write
first: decode each source token alone and encode the text with the target, one token at a time (transformers API,
`add_special_tokens=False`). Prints the ratio and how many source tokens the naive map gets wrong (its ids do not
decode to the token's text: partial UTF-8 pieces decode to U+FFFD, control tokens become text). Then times
`convert` over a synthetic mixed Chinese/English manifest of 100,000 lines tokenised with Qwen3, and checks a sample
of lines for decode equality.

    python benchmarks/tokenmap_build.py            # full run, writes benchmarks/results/tokenmap_build.json
    python benchmarks/tokenmap_build.py --quick    # naive on a 10,000-token sample, 10,000 lines; prints only
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import time
from pathlib import Path

from tokenmap.assets import load_tokenizer
from tokenmap.io import atomic_write_bytes
from tokenmap.vocab_map import VocabMap

RESULTS = Path(__file__).parent / "results" / "tokenmap_build.json"
PAIRS = [("qwen3", "llama3"), ("qwen3", "gemma2")]
TARGET_RATIO, TARGET_SECONDS = 20.0, 5.0  # for Qwen3 -> Llama-3 on 2 cores

ZH = "今天 天气 很好 我们 去 公园 散步 语音 识别 模型 训练 数据 测试 结果 会议 记录 上下文 热词 北京 通义".split()
EN = "the model speech recognition adapter swap token vocabulary test data hello world meeting notes Qwen Llama".split()
EXTRA = ["123", "4567", "3.14", "，", "。", "！", "？", ",", ".", "🙂", "OK", "GPU", "2024年", "(", ")", "—"]


def machine() -> dict:
    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "")
    versions = {p: importlib.metadata.version(p) for p in ("tokenizers", "transformers", "numpy")}
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every timing
        **versions,
    }


def manifest(lines: int, seed: int = 0) -> list[str]:
    """Synthetic transcripts: Chinese-only, English-only and code-switched lines of 4-24 words."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        style = rng.random()
        words = []
        for _ in range(rng.randint(4, 24)):
            pool = ZH if (style < 0.4 or (style < 0.7 and rng.random() < 0.5)) else EN
            words.append(rng.choice(EXTRA) if rng.random() < 0.1 else rng.choice(pool))
        out.append(("" if style < 0.4 else " ").join(words))
    return out


def naive_build(src, dst, ids: list[int]) -> tuple[dict[int, list[int]], float]:
    start = time.perf_counter()
    mapped = {i: dst.encode(src.decode([i]), add_special_tokens=False) for i in ids}
    return mapped, time.perf_counter() - start


def bench_pair(src, dst, src_name: str, dst_name: str, quick: bool) -> tuple[dict, VocabMap]:
    times, vm = [], None
    for _ in range(3):
        start = time.perf_counter()
        vm = VocabMap.build(src, dst)
        times.append(time.perf_counter() - start)
    ids = list(range(len(src)))
    sample = sorted(random.Random(0).sample(ids, 10_000)) if quick else ids
    naive, naive_s = naive_build(src, dst, sample)
    naive_full_s = naive_s * len(ids) / len(sample)
    # A naive entry is wrong when its ids do not decode to what the source token decodes to alone.
    wrong = sum(dst.decode(naive[i]) != src.decode([i]) or "\ufffd" in src.decode([i]) for i in sample)
    start = time.perf_counter()
    stats = vm.stats()  # computes both fingerprints, as save does
    fingerprint_s = time.perf_counter() - start
    best = min(times)
    result = {
        "build_s": [round(t, 4) for t in times],
        "build_best_s": round(best, 4),
        "fingerprints_s": round(fingerprint_s, 4),
        "naive_s": round(naive_full_s, 3),
        "naive_extrapolated_from": len(sample) if quick else None,
        "ratio": round(naive_full_s / best, 2),
        "naive_wrong_tokens": round(wrong * len(ids) / len(sample)),
        "stats": stats,
    }
    print(
        f"{src_name} -> {dst_name}: build {best:.3f} s (runs {', '.join(f'{t:.3f}' for t in times)}), "
        f"naive {naive_full_s:.2f} s{' (extrapolated)' if quick else ''}, ratio {result['ratio']:.1f}x; "
        f"fingerprints {fingerprint_s:.2f} s; naive wrong on ~{result['naive_wrong_tokens']} tokens"
    )
    print(
        f"  exact {stats['exact']}, normalised {stats['normalised']}, decomposed {stats['decomposed']} "
        f"(mean {stats['mean_decomposed_length']} ids), unmappable {stats['unmappable']}, "
        f"specials mapped {stats['special_mapped']} / unmapped {stats['special_unmapped']}"
    )
    return result, vm


def bench_convert(vm: VocabMap, src, dst, lines: int) -> dict:
    texts = manifest(lines)
    encoded = [e.ids for e in src.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    n_tokens = sum(map(len, encoded))
    start = time.perf_counter()
    converted = [vm.convert(ids) for ids in encoded]
    exact_s = time.perf_counter() - start
    canonical_lines = encoded[: max(1, lines // 10)]
    start = time.perf_counter()
    canonical = [vm.convert(ids, canonical=True) for ids in canonical_lines]
    canonical_s = time.perf_counter() - start
    check = random.Random(1).sample(range(lines), min(2000, lines))
    mismatches = sum(dst.decode(converted[i]) != src.decode(encoded[i]) for i in check)
    mismatches += sum(dst.decode(c) != src.decode(ids) for c, ids in zip(canonical[:2000], canonical_lines))
    canonical_tokens = sum(map(len, canonical_lines))
    result = {
        "lines": lines,
        "src_tokens": n_tokens,
        "dst_tokens": sum(map(len, converted)),
        "seconds": round(exact_s, 3),
        "tokens_per_s": round(n_tokens / exact_s),
        "lines_per_s": round(lines / exact_s),
        "canonical": {
            "lines": len(canonical_lines),
            "seconds": round(canonical_s, 3),
            "tokens_per_s": round(canonical_tokens / canonical_s),
        },
        "decode_mismatches_in_checked_lines": mismatches,
        "checked_lines": len(check) + min(2000, len(canonical_lines)),
    }
    print(
        f"convert: {lines} lines, {n_tokens} tokens in {exact_s:.2f} s = "
        f"{result['tokens_per_s']:,} tokens/s ({result['lines_per_s']:,} lines/s); canonical "
        f"{result['canonical']['tokens_per_s']:,} tokens/s; decode mismatches {mismatches} in "
        f"{result['checked_lines']} checked lines"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="naive on a sample, 10,000 lines; prints only")
    parser.add_argument("--out", type=Path, help=f"results JSON (default: {RESULTS} for a full run)")
    args = parser.parse_args()
    out = args.out or (None if args.quick else RESULTS)

    tokenizers = {name: load_tokenizer(name) for name in dict.fromkeys(n for pair in PAIRS for n in pair)}
    pairs, maps = {}, {}
    for src_name, dst_name in PAIRS:
        src, dst = tokenizers[src_name], tokenizers[dst_name]
        pairs[f"{src_name}->{dst_name}"], maps[src_name, dst_name] = bench_pair(
            src, dst, src_name, dst_name, args.quick
        )
    src_name, dst_name = PAIRS[0]
    print(f"convert {src_name} -> {dst_name}:")
    convert = bench_convert(
        maps[PAIRS[0]], tokenizers[src_name], tokenizers[dst_name], 10_000 if args.quick else 100_000
    )
    convert["pair"] = f"{src_name}->{dst_name}"

    headline = pairs["qwen3->llama3"]
    targets = {
        "ratio_target": TARGET_RATIO,
        "ratio_met": headline["ratio"] >= TARGET_RATIO,
        "seconds_target": TARGET_SECONDS,
        "seconds_met": headline["build_best_s"] < TARGET_SECONDS,
    }
    print(
        f"qwen3 -> llama3: {headline['build_best_s']:.3f} s (target < {TARGET_SECONDS} s: "
        f"{'met' if targets['seconds_met'] else 'MISSED'}), {headline['ratio']:.1f}x naive (target >= "
        f"{TARGET_RATIO}x: {'met' if targets['ratio_met'] else 'MISSED'})"
    )
    if out is not None:
        result = {
            "benchmark": "tokenmap_build",
            "quick": args.quick,
            "machine": machine(),
            "pairs": pairs,
            "convert": convert,
            "targets": targets,
        }
        atomic_write_bytes(out, (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
