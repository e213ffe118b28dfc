"""Batched transcription against one utterance at a time (what funasr's inference does), measured in the same run.

    PYTHONPATH=. python benchmarks/transcribe.py --model tiny --n 32 --batch-sizes 8 \\
        --out benchmarks/results/transcribe_cpu.json
    PYTHONPATH=. python benchmarks/transcribe.py --model real --device cuda --n 256 --baseline-n 16 \\
        --batch-sizes 128 256 --attention default no-cudnn --static 256 --out benchmarks/results/transcribe_gpu.json

Models have random weights: `tiny` is `tiny_base()`, `real` the real shapes (encoder 70 layers x 512, adaptor at
1024, Qwen3-0.6B text model) in bfloat16. Random weights rarely emit a stop token, so the stop tokens are switched
off and every utterance generates exactly --max-new-tokens tokens (32 by default, a realistic transcript length),
the same work in every run. The audio is synthetic (tones in noise, 16 kHz), durations uniform in
[--min-seconds, --max-seconds]. The baseline is `transcribe(..., batch_size=1)` on the first --baseline-n
utterances: features, encoder and `generate` for one utterance at a time, as funasr's `inference` runs them.
Features are computed where `transcribe` computes them, on the model's device, in the baseline as in batched runs.
RTFx = audio seconds / wall seconds; the ratio compares RTFx, so runs over different numbers of utterances compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (
    FunAsrNanoAdaptorConfig,
    FunAsrNanoConfig,
    FunAsrNanoEncoderConfig,
    FunAsrNanoForConditionalGeneration,
    FunAsrNanoProcessor,
)

from funasr_swap.base import tiny_base
from funasr_swap.convert import ADAPTOR_LAYER_NORM_EPS, build_processor, generation_config
from funasr_swap.llms import BASE_LLM, count_parameters, text_config
from funasr_swap.transcribe import transcribe, transcription_inputs
from tokenmap.assets import resolve_tokenizer_path


def real_shape_base(device: str) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor]:
    """Random Fun-ASR-Nano of the real shapes in bfloat16, built on `device`."""
    processor = build_processor(resolve_tokenizer_path("qwen3"))
    llm = text_config(BASE_LLM)
    config = FunAsrNanoConfig(
        audio_config=FunAsrNanoEncoderConfig(),  # the defaults are the real encoder: 70 layers, 512 wide
        adaptor_config=FunAsrNanoAdaptorConfig(
            hidden_size=llm.hidden_size, intermediate_size=llm.hidden_size // 4, layer_norm_eps=ADAPTOR_LAYER_NORM_EPS
        ),
        text_config=llm,
        audio_token_id=processor.audio_token_id,
        tie_word_embeddings=llm.tie_word_embeddings,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = FunAsrNanoForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = generation_config(processor.tokenizer)
    return model.eval(), processor


def synthetic_audio(n: int, min_seconds: float, max_seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = []
    for seconds in rng.uniform(min_seconds, max_seconds, n):
        t = np.arange(int(16000 * seconds)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t)
        clips.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_run(model, processor, clips, batch_size: int, max_new_tokens: int, device: str) -> dict:
    sync(device)
    start = time.perf_counter()
    results = transcribe(model, processor, clips, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    sync(device)
    wall = time.perf_counter() - start
    audio = sum(r.audio_seconds for r in results)
    tokens = sum(r.tokens for r in results)
    return {
        "batch_size": batch_size,
        "utterances": len(clips),
        "audio_seconds": round(audio, 2),
        "wall_seconds": round(wall, 3),
        "rtfx": round(audio / wall, 1),
        "generated_tokens": tokens,
        "tokens_per_second": round(tokens / wall, 1),
    }


def features_seconds(processor, clips, batch_size: int, device: str) -> float:
    """Wall time of the inputs alone over `clips`: fbank and LFR on `device` (as `transcribe` computes them, on the
    model's device), the chat template and the ids."""
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    sync(device)
    start = time.perf_counter()
    for s in range(0, len(order), batch_size):
        transcription_inputs(processor, [clips[i] for i in order[s : s + batch_size]], device=device)
    sync(device)
    return time.perf_counter() - start


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def generate_seconds(model, processor, clips, batch_size: int, max_new_tokens: int, device: str) -> float:
    """Wall time of `generate` alone (encoder, adaptor, prefill, decoding) over `clips`, inputs prepared first."""
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    batches = [transcription_inputs(processor, [clips[i] for i in order[s : s + batch_size]], device=device).to(device)
               for s in range(0, len(order), batch_size)]
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for inputs in batches:
            model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    sync(device)
    return time.perf_counter() - start


ATTENTION = {
    "default": "torch's SDPA backend choice",
    "no-cudnn": "SDPA without the cuDNN backend (flash, memory-efficient, math)",
}


def attention(name: str):
    """A context that selects the SDPA kernels of variant `name`."""
    if name == "default":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=32, help="utterances of the batched runs")
    parser.add_argument("--baseline-n", type=int, default=None, help="utterances of the baseline (default: --n)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--attention", nargs="+", choices=sorted(ATTENTION), default=["default"],
                        help="SDPA kernel variants to measure (baseline and batched runs each)")
    parser.add_argument("--static", type=int, nargs="*", default=[], help="batch sizes to run with a static KV "
                        "cache (transformers then compiles the decoding step with torch.compile on CUDA), with the "
                        "last --attention variant")
    parser.add_argument("--max-cache-len", type=int, default=512, help="static cache length (one shape: one compile)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model, processor = tiny_base() if args.model == "tiny" else real_shape_base(args.device)
    model.to(args.device)
    model.generation_config.eos_token_id = None  # random weights: a fixed number of tokens per utterance
    clips = synthetic_audio(args.n, args.min_seconds, args.max_seconds)
    baseline_clips = clips[: args.baseline_n or args.n]
    # Warm-up clips of other lengths: a timed run must not find kernels, plans or caches built for its exact shapes.
    warmup_clips = synthetic_audio(max(args.batch_sizes + args.static), args.min_seconds, args.max_seconds, seed=1)
    parameters = count_parameters(model)
    print(f"{args.model}: {parameters / 1e6:.1f} M parameters, {model.dtype}, on {args.device}", flush=True)
    result = {
        "benchmark": "batched transcription vs one utterance at a time",
        "model": args.model,
        "parameters": parameters,
        "dtype": str(model.dtype),
        "max_new_tokens": args.max_new_tokens,
        "stop_tokens": "off (random weights): every utterance generates max_new_tokens tokens",
        "audio": f"synthetic, 16 kHz, uniform {args.min_seconds}-{args.max_seconds} s, seed 0 (warm-up: seed 1)",
        "device_info": device_info(args.device),
        "attention": {},
        "static_cache": [],
    }

    for name in args.attention:
        with attention(name):
            # Warm-up: kernels, allocator, tokenizer; the largest batch first, so its memory is reserved up front.
            for batch_size in (max(args.batch_sizes), 1):
                transcribe(model, processor, warmup_clips[: max(batch_size, 2)], batch_size=batch_size,
                           max_new_tokens=args.max_new_tokens, progress=False)
            baseline = timed_run(model, processor, baseline_clips, 1, args.max_new_tokens, args.device)
            print(f"[{name}] baseline (batch size 1):", baseline, flush=True)
            runs = []
            for batch_size in args.batch_sizes:
                run = timed_run(model, processor, clips, batch_size, args.max_new_tokens, args.device)
                run["vs_baseline"] = round(run["rtfx"] / baseline["rtfx"], 2)
                print(f"[{name}] batched ({batch_size}):", run, flush=True)
                runs.append(run)
            largest = max(args.batch_sizes)
            inputs_side = features_seconds(processor, clips, largest, args.device)
            model_side = generate_seconds(model, processor, clips, largest, args.max_new_tokens, args.device)
            print(f"[{name}] batch size {largest}: features and prompts alone {inputs_side:.2f} s, "
                  f"generate alone {model_side:.2f} s", flush=True)
        result["attention"][name] = {
            "what": ATTENTION[name],
            "baseline": baseline,
            "batched": runs,
            # The two sides of the largest batch size, each alone (a run does them one after the other); the
            # features are computed on the model's device, as transcribe does.
            "features_and_prompts_seconds": round(inputs_side, 3),
            "generate_seconds": round(model_side, 3),
        }
        write_json(result, args.out)  # after each step: a compile below may outlast the time limit

    if args.static:
        model.generation_config.cache_implementation = "static"
        model.generation_config.max_cache_len = args.max_cache_len
        name = args.attention[-1]
        reference = result["attention"][name]["baseline"]["rtfx"]
        for batch_size in args.static:
            started = time.perf_counter()
            try:
                with attention(name):  # the first call compiles the decoding step for this batch shape
                    transcribe(model, processor, warmup_clips[:batch_size], batch_size=batch_size,
                               max_new_tokens=args.max_new_tokens, progress=False)
                    compile_seconds = round(time.perf_counter() - started, 1)
                    run = timed_run(model, processor, clips, batch_size, args.max_new_tokens, args.device)
            except Exception as error:  # noqa: BLE001 - the measurement reports what failed instead of stopping
                run = {"batch_size": batch_size, "error": f"{type(error).__name__}: {error}"[:500]}
            else:
                run["vs_baseline"] = round(run["rtfx"] / reference, 2)
                run["warmup_and_compile_seconds"] = compile_seconds
            run["attention"] = name
            print(f"[{name}] static cache ({batch_size}):", run, flush=True)
            result["static_cache"].append(run)
            write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
