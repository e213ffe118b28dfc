"""Adaptor-retraining throughput at the real widths of the seed LLMs, against the stock transformers step measured in
the same run.

    # on the GPU machine (random weights, bf16 frozen encoder and LLM, fp32 trainable adaptor); the README's run:
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --compile --skip-small --ablate \
        --batch-sizes 128 --batch-sizes-for Qwen3-1.7B=128,192 Qwen3-8B=64 DeepSeek-V2-Lite=64 \
        --encoder-cached-for Qwen3-1.7B --curve-steps 0 --head-tokens 0 --max-seconds 5 --warmup 2 \
        --out benchmarks/results/train_throughput_gpu.json
    # lever by lever on one model, with the loss head's memory and the bf16 loss curves
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --models Qwen3-0.6B Qwen3-1.7B \
        --ablate Qwen3-1.7B --batch-sizes 64 --out benchmarks/results/train_throughput_levers_gpu.json
    # smoke test on a CPU: tiny models of the same classes
    PYTHONPATH=. python benchmarks/train_throughput.py --tiny --models Qwen3-0.6B DeepSeek-V2-Lite --ablate \
        --utterances 16 --baseline-batch-size 4 --batch-sizes 8 --warmup 1 --curve-steps 2 --out /tmp/t.json
    # the README's figure, from the results files
    PYTHONPATH=. python benchmarks/train_throughput.py --plot benchmarks/results/train_throughput_gpu.json \
        --levers benchmarks/results/train_throughput_levers_gpu.json

What a step is: the adaptor-retraining step of `funasr-swap train` (`funasr_swap.training`): encoder and LLM frozen
(`setup_trainable`), the adaptor trainable in fp32 master weights, bf16 autocast, AdamW (`step.build_optimizer`),
gradient clipping at 1.0. The model is a real-shape Fun-ASR-Nano (the real encoder, 70 layers x 512; the adaptor at
the LLM's width; the LLM's real class and shape from the registry, `funasr_swap.llms.text_config`) with random
weights, built on the device in bf16 (`random_weights="real"` builds the same shapes on the CPU).

The data: utterances of 2-15 s (log-normal around a 6 s median, clipped: most read-speech corpora's shape) with
transcripts of ~3 tokens per second, in the prompt of a real ChatML ASR request (16 prompt tokens, one placeholder
per 60 ms LFR frame, 5 tokens of the assistant header, the transcript and its end token). Token ids and LFR features
are random (random weights make their values irrelevant to speed); the features are drawn on the device, i.e. fbank
is not timed (the trainer computes it in DataLoader workers, off the step's critical path).

Each variant takes the first --utterances of the corpus in its batches (after --warmup batches of other utterances)
and runs two passes over them, the first stopped after --max-seconds, the second, over the same batches, timed: the
first meets each batch shape once, so one-off per-shape work (compilation, cuDNN attention plans) stays out, as it
does over a long run. tokens/s counts unpadded tokens: it corrects for the mix of lengths a short window covers.
Variants:
    baseline     the stock step: `model(**batch, labels=...)`, full logits over every position and its float32
                 upcast (transformers' loss), randomly ordered padded batches, `loss.item()` each step, AdamW over the
                 trainable parameters; frozen weights bf16, trainable fp32 (as a user writes it)
    + levers     length-bucketed batches (`funasr_swap.data.bucket_batches`), the LM head at supervised positions only
                 (`supervised_states`), chunked cross-entropy (`funasr_swap.loss`), no host sync per step, larger
                 micro-batches, the encoder's outputs cached (a run's later epochs: `--audio-cache encoder`), SDPA
                 without cuDNN, torch.compile of the layers
MFU counts the FLOPs the step must do on the unpadded tokens, over the H200's dense bf16 peak (989 TFLOP/s by the
datasheet; the measured 8192^3 matrix product's rate is reported beside it):
    encoder (frozen, forward only)         2 * P_enc * frames + attention 4 * F^2 * d per layer
    adaptor (trained: forward, input and weight gradients)   6 * P_adaptor * frames
    LLM (frozen, but the gradient flows back through it to the audio tokens: forward + input gradients)
                                           4 * P_active * tokens (P_active: matrix weights of the decoder layers, the
                                           routed experts scaled by top-k / experts) + causal attention 3 * 2 * T^2 *
                                           (d_qk + d_v) * heads / 2 per layer
    LM head (forward + input gradient, supervised positions only)           4 * hidden * vocab * supervised tokens
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from environment import device_info  # benchmarks/environment.py: the scripts run from this folder
from torch import nn
from transformers import FunAsrNanoConfig, FunAsrNanoEncoderConfig, FunAsrNanoForConditionalGeneration

from funasr_swap.adaptor import adaptor_config_for
from funasr_swap.compat import fill_gaps
from funasr_swap.convert import ADAPTOR_LAYER_NORM_EPS
from funasr_swap.data import bucket_batches, precomputed_audio
from funasr_swap.llms import get_llm, text_config, tiny_text_config
from funasr_swap.loss import chunked_cross_entropy
from funasr_swap.training.config import LoraSettings, TrainConfig
from funasr_swap.training.step import (
    attention_kernels,
    build_optimizer,
    compile_layers,
    setup_trainable,
    supervised_loss,
    supervised_states,
    train_mode,
    trainable_in_fp32,
)
from tokenmap.prompt import IGNORE_INDEX

MODELS = ["Qwen3-0.6B", "Qwen3-1.7B", "Llama-3.2-3B", "Gemma-2-2B", "Qwen3-8B", "DeepSeek-V2-Lite"]
PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16, datasheet
AUDIO_TOKEN = 999  # placeholder id (any id with an embedding row serves: its row is overwritten by audio)
PAD = 0
PROMPT_BEFORE, PROMPT_AFTER = 16, 5  # ChatML system + user turn up to the audio; "<|im_end|>\n<|im_start|>assistant\n"
TOKENS_PER_SECOND = 3.0
LFR_SECONDS = 0.06  # one LFR frame (one audio token) per 60 ms
GB = 1e9


# ----------------------------------------------------------------------------------------------------------------
# Model and data


def build_model(llm: str, device: str, tiny: bool) -> FunAsrNanoForConditionalGeneration:
    """A Fun-ASR-Nano around LLM `llm` with random weights: real shapes in bf16 (tiny: a small one in float32)."""
    text = tiny_text_config(llm) if tiny else text_config(llm)
    audio = FunAsrNanoEncoderConfig(
        **(
            dict(
                hidden_size=64,
                num_attention_heads=2,
                intermediate_size=256,
                num_hidden_layers=4,
                num_timestamp_prediction_layers=1,
            )
            if tiny
            else {}
        )
    )
    adaptor = adaptor_config_for(text.hidden_size, FunAsrNanoConfig().adaptor_config)
    adaptor.layer_norm_eps = ADAPTOR_LAYER_NORM_EPS
    if tiny:
        adaptor.num_attention_heads, adaptor.projector_hidden_size = 4, 128
    config = FunAsrNanoConfig(
        audio_config=audio,
        adaptor_config=adaptor,
        text_config=text,
        audio_token_id=AUDIO_TOKEN,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = FunAsrNanoForConditionalGeneration._from_config(config, dtype=torch.float32 if tiny else torch.bfloat16)
    fill_gaps(model)  # the adaptor's padding mask, Gemma-2's soft-capping
    return model


@dataclass
class Corpus:
    seconds: np.ndarray
    frames: np.ndarray  # LFR frames = audio tokens
    target_tokens: np.ndarray  # transcript tokens (+1 end token in the sequence)

    @classmethod
    def sample(cls, n: int, seed: int = 0) -> Corpus:
        rng = np.random.default_rng(seed)
        seconds = np.clip(rng.lognormal(math.log(6.0), 0.55, n), 2.0, 15.0)
        frames = np.ceil(seconds / LFR_SECONDS).astype(int)
        target = np.maximum(1, np.round(TOKENS_PER_SECOND * seconds + rng.normal(0, 2, n))).astype(int)
        return cls(seconds, frames, target)

    def length(self, i: int) -> int:
        return PROMPT_BEFORE + self.frames[i] + PROMPT_AFTER + self.target_tokens[i] + 1


def cpu_batch(corpus: Corpus, indices: list[int], vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids, attention mask, labels (pinned CPU tensors) of one right-padded batch, laid out as AsrCollator's."""
    g = torch.Generator().manual_seed(seed)
    length = max(corpus.length(i) for i in indices)
    ids = torch.full((len(indices), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(indices), length), dtype=torch.long)
    labels = torch.full((len(indices), length), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(indices):
        f, t = int(corpus.frames[i]), int(corpus.target_tokens[i])
        prompt = PROMPT_BEFORE + f + PROMPT_AFTER
        n = prompt + t + 1
        ids[row, :n] = torch.randint(1000, min(vocab, 100_000), (n,), generator=g)
        ids[row, PROMPT_BEFORE : PROMPT_BEFORE + f] = AUDIO_TOKEN
        mask[row, :n] = 1
        labels[row, prompt:n] = ids[row, prompt:n]
    frames = torch.tensor([int(corpus.frames[i]) for i in indices])
    features_mask = (torch.arange(int(frames.max())) < frames[:, None]).to(torch.int32)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "input_features_mask": features_mask}
    return {k: v.pin_memory() if torch.cuda.is_available() else v for k, v in out.items()}


def to_device(batch: dict[str, torch.Tensor], device: str, feature_dim: int, seed: int) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    g = torch.Generator(device=device).manual_seed(seed)
    b, f = out["input_features_mask"].shape
    out["input_features"] = torch.randn(b, f, feature_dim, device=device, generator=g)  # fbank-scale LFR features
    return out


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def _decoder_params(llm: nn.Module, config) -> int:
    """Matrix weights of the decoder layers a token goes through (MoE: routed experts scaled by top-k / experts)."""
    total = 0.0
    experts = getattr(config, "n_routed_experts", None)
    for name, p in llm.layers.named_parameters():
        if p.ndim < 2:
            continue
        routed = experts and ".experts." in f".{name}" and "shared" not in name
        total += p.numel() * (config.num_experts_per_tok / experts if routed else 1.0)
    return int(total)


def flop_model(model: FunAsrNanoForConditionalGeneration) -> dict:
    text = model.config.text_config
    llm = model.model.language_model
    heads = text.num_attention_heads
    if getattr(text, "kv_lora_rank", None):
        d_qk, d_v = text.qk_nope_head_dim + text.qk_rope_head_dim, text.v_head_dim
    else:
        d_qk = d_v = getattr(text, "head_dim", None) or text.hidden_size // heads
    enc = model.model.audio_tower
    return {
        "encoder_params": sum(p.numel() for p in enc.parameters() if p.ndim >= 2),
        "encoder_layers": len(enc.layers),
        "encoder_width": model.config.audio_config.hidden_size,
        "adaptor_params": sum(p.numel() for p in model.model.multi_modal_projector.parameters()),
        "llm_active_params": _decoder_params(llm, text),
        "llm_layers": text.num_hidden_layers,
        "attention_dims": heads * (d_qk + d_v),
        "hidden": text.hidden_size,
        "vocab": text.vocab_size,
    }


def step_flops(fm: dict, frames: list[int], tokens: list[int], supervised: int) -> float:
    enc = sum(2 * fm["encoder_params"] * f + 4 * f * f * fm["encoder_width"] * fm["encoder_layers"] for f in frames)
    adaptor = 6 * fm["adaptor_params"] * sum(frames)
    llm = sum(4 * fm["llm_active_params"] * t + 3 * t * t * fm["attention_dims"] * fm["llm_layers"] for t in tokens)
    head = 4 * fm["hidden"] * fm["vocab"] * supervised
    return float(enc + adaptor + llm + head)


# ----------------------------------------------------------------------------------------------------------------
# The step


@dataclass
class Variant:
    name: str
    what: str
    batch_size: int = 16
    bucketed: bool = True
    loss: str = "chunked"  # stock | supervised (full logits at supervised positions) | chunked
    sync_each_step: bool = False  # loss.item() after every step
    encoder_cached: bool = False
    sdpa: str = "default"  # default | no-cudnn
    compile: bool = False
    lora: bool = False


def _loss(model, batch, kind: str) -> torch.Tensor:
    if kind == "stock":
        return model(**batch).loss  # full (B, T, V) logits, transformers' float32 loss
    if kind == "supervised":
        hidden, targets, _ = supervised_states(model, batch)
        return F.cross_entropy(model.lm_head(hidden).float(), targets)  # the head's hook (soft-capping) runs
    return supervised_loss(model, batch)  # chunked: funasr_swap.loss


def _feature_dim(model) -> int:
    audio = model.config.audio_config
    return audio.num_mel_bins * audio.num_stacked_frames  # 80 x 7 = 560


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_variant(
    model,
    corpus: Corpus,
    variant: Variant,
    *,
    device: str,
    utterances: int,
    warmup: int,
    max_seconds: float,
    fm: dict,
    seed: int = 0,
) -> dict:
    """Train `model` (its adaptor, in place) over the first `utterances` of `corpus` in `variant`'s way; the rate."""
    vocab = model.config.text_config.vocab_size
    on_cuda = device.startswith("cuda")
    n = min(utterances, len(corpus.seconds))
    if variant.bucketed:
        batches = bucket_batches([corpus.seconds[i] for i in range(n)], variant.batch_size, seed=seed)
    else:
        order = np.random.default_rng(seed).permutation(n).tolist()
        batches = [order[s : s + variant.batch_size] for s in range(0, n, variant.batch_size)]
    warm = [
        list(b)
        for b in bucket_batches(
            list(corpus.seconds[n : n + warmup * variant.batch_size]), variant.batch_size, seed=seed + 1
        )
    ][:warmup]
    warm = [[n + i for i in b] for b in warm]
    prepared = [cpu_batch(corpus, b, vocab, seed=k) for k, b in enumerate(warm + batches)]

    config = TrainConfig(
        output_dir=Path(tempfile.gettempdir()) / "unused", lora=LoraSettings() if variant.lora else None
    )
    merge = setup_trainable(model, config)
    trainable_in_fp32(model)
    train_mode(model)
    if variant.loss == "stock":
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)  # as a user writes it
    else:
        optimizer = build_optimizer(model, config)
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
    if variant.compile:
        compile_layers(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    feature_dim = _feature_dim(model)
    encoder = model.model.audio_tower

    def inputs(k: int) -> dict[str, torch.Tensor]:
        batch = to_device(prepared[k], device, feature_dim, seed=k)
        if variant.encoder_cached:  # what AsrCollator(encoder=...) keeps from the first epoch
            with torch.no_grad(), autocast:
                batch["input_features"] = encoder(
                    input_features=batch["input_features"], input_features_mask=batch["input_features_mask"]
                ).last_hidden_state
        return batch

    def step(batch) -> torch.Tensor:
        with (
            autocast,
            attention_kernels() if variant.sdpa == "no-cudnn" else contextlib.nullcontext(),
            precomputed_audio(model) if variant.encoder_cached else contextlib.nullcontext(),
        ):
            loss = _loss(model, batch, variant.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    result = {"variant": variant.name, "what": variant.what, "batch_size": variant.batch_size}
    try:
        compile_started = time.perf_counter()
        for k in range(len(warm)):
            step(inputs(k)).item()
        _sync(device)
        result["warmup_seconds"] = round(time.perf_counter() - compile_started, 1)
        cached = [inputs(len(warm) + k) for k in range(len(batches))] if variant.encoder_cached else None
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()

        def timed_pass(count: int | None) -> tuple[int, float, list]:
            """Steps over the batches (all `count`, or until max_seconds): (steps, seconds, losses)."""
            _sync(device)
            start, losses = time.perf_counter(), []
            for k in range(count or len(batches)):
                loss = step(cached[k] if cached is not None else inputs(len(warm) + k))
                losses.append(loss.item() if variant.sync_each_step else loss)
                if count is None and time.perf_counter() - start > max_seconds:
                    break
            _sync(device)
            return len(losses), time.perf_counter() - start, losses

        # Two passes over the same batches, the second timed: the first meets each batch shape once, so one-off
        # per-shape work (compilation, cuDNN attention plans) stays out, as it does over a long run's many steps.
        done, first_wall, _ = timed_pass(None)
        _, wall, losses = timed_pass(done)
        losses = [float(x) for x in losses]
    except torch.OutOfMemoryError as error:
        result["error"] = f"out of memory: {str(error)[:200]}"
        return result
    except Exception as error:  # noqa: BLE001 - a failed lever (a compile error) is a result, not the end of the run
        result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        return result
    finally:
        merge()  # LoRA adapters (zero-initialised B: no change) out again
        if variant.compile:
            compile_layers(model, False)
        optimizer.zero_grad(set_to_none=True)
    used = batches[:done]
    samples = sum(len(b) for b in used)
    frames = [int(corpus.frames[i]) for b in used for i in b]
    tokens = [int(corpus.length(i)) for b in used for i in b]
    padded = sum(len(b) * max(corpus.length(i) for i in b) for b in used)
    supervised = sum(int(corpus.target_tokens[i]) + 1 for b in used for i in b)
    flops = step_flops(fm, frames, tokens, supervised)
    if variant.encoder_cached:
        flops -= sum(
            2 * fm["encoder_params"] * f + 4 * f * f * fm["encoder_width"] * fm["encoder_layers"] for f in frames
        )
    result |= {
        "steps": done,
        "samples": samples,
        "audio_hours": round(sum(float(corpus.seconds[i]) for b in used for i in b) / 3600, 3),
        "wall_seconds": round(wall, 3),
        "samples_per_second": round(samples / wall, 1),
        "first_pass_samples_per_second": round(samples / first_wall, 1),
        "tokens_per_second": round(sum(tokens) / wall),
        "supervised_tokens_per_second": round(supervised / wall),
        "padding_fraction": round(float(1 - sum(tokens) / padded), 3),
        "tflops_per_second": round(flops / wall / 1e12, 1),
        "mfu": round(flops / wall / 1e12 / PEAK_TFLOPS, 3),
        "epoch_100k_minutes": round(100_000 / (samples / wall) / 60, 1),
        "first_losses": [round(x, 4) for x in losses[:3]],
    }
    if on_cuda:
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / GB, 1)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Loss head memory and loss-curve equality


def loss_head_memory(device: str, llm: str = "Gemma-2-2B", tokens: int = 8192) -> dict:
    """Peak memory of the loss head alone (forward + backward) at `tokens` supervised positions: the full-logits head
    (`lm_head` with its soft-capping hook, float32 cross-entropy) against `chunked_cross_entropy`."""
    spec = get_llm(llm)
    cap = spec.extra.get("final_logit_softcapping")
    dtype = torch.bfloat16
    weight = torch.randn(spec.vocab_size, spec.hidden_size, device=device, dtype=dtype) * 0.02
    targets = torch.randint(0, spec.vocab_size, (tokens,), device=device)
    out = {
        "llm": llm,
        "supervised_tokens": tokens,
        "vocab": spec.vocab_size,
        "hidden": spec.hidden_size,
        "softcap": cap,
        "head_weight_gb": round(weight.numel() * 2 / GB, 2),
    }
    for name in ("full", "chunked"):
        hidden = torch.randn(tokens, spec.hidden_size, device=device, dtype=dtype, requires_grad=True)
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        if name == "full":
            logits = F.linear(hidden, weight)
            logits = torch.tanh(logits / cap) * cap if cap else logits
            loss = F.cross_entropy(logits.float(), targets)
        else:
            loss = chunked_cross_entropy(hidden, weight, targets, softcap=cap)
        loss.backward()
        _sync(device)
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 4)
        if device.startswith("cuda"):
            out[f"{name}_peak_gb"] = round((torch.cuda.max_memory_allocated() - base) / GB, 3)
        out[f"{name}_loss"] = round(loss.item(), 5)
        del hidden, loss
    return out


def loss_curves(model, corpus: Corpus, *, device: str, steps: int, batch_size: int, optimised: Variant) -> dict:
    """The stock step and the optimised one from the same adaptor weights over the same `steps` batches: their loss
    curves (the optimiser's step differs only in how the loss is computed)."""
    n = steps * batch_size
    batches = bucket_batches(list(corpus.seconds[:n]), batch_size, seed=5)[:steps]
    initial = {k: v.detach().clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    curves = {}
    for variant in (
        Variant("plain", "", batch_size, loss="stock", bucketed=True, sync_each_step=True),
        dataclasses.replace(optimised, name="optimised", batch_size=batch_size),
    ):
        model.model.multi_modal_projector.load_state_dict(initial)
        curves[variant.name] = _curve(model, corpus, batches, variant, device)
    model.model.multi_modal_projector.load_state_dict(initial)
    plain, opt = np.array(curves["plain"]), np.array(curves["optimised"])
    return {
        "steps": steps,
        "batch_size": batch_size,
        "plain": curves["plain"],
        "optimised": curves["optimised"],
        "max_abs_difference": float(np.abs(plain - opt).max()),
        "max_relative_difference": float((np.abs(plain - opt) / np.abs(plain)).max()),
    }


def _curve(model, corpus, batches, variant: Variant, device: str) -> list[float]:
    vocab = model.config.text_config.vocab_size
    config = TrainConfig(output_dir=Path(tempfile.gettempdir()) / "unused", lr=1e-4)
    setup_trainable(model, config)
    trainable_in_fp32(model)
    train_mode(model)
    optimizer = build_optimizer(model, config)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    if variant.compile:
        compile_layers(model)
    losses = []
    for k, b in enumerate(batches):
        batch = to_device(cpu_batch(corpus, b, vocab, seed=1000 + k), device, _feature_dim(model), seed=1000 + k)
        with autocast, attention_kernels() if variant.sdpa == "no-cudnn" else contextlib.nullcontext():
            loss = _loss(model, batch, variant.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    if variant.compile:
        compile_layers(model, False)
    return [round(float(x), 5) for x in losses]


# ----------------------------------------------------------------------------------------------------------------
# Runs


def matmul_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    _sync(device)
    return round(20 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def variants_for(
    llm: str,
    ablate: bool,
    batch_sizes: list[int],
    small: int = 16,
    compile: bool = False,
    small_optimised: bool = True,
) -> list[Variant]:
    """The baseline and optimised variants (`small`: the baseline's batch size), lever by lever where `ablate`;
    `compile`: the optimised ones with torch.compile of the layers."""
    base = Variant(
        "baseline",
        "stock step: full logits, random padded batches, loss.item() each step",
        small,
        bucketed=False,
        loss="stock",
        sync_each_step=True,
    )
    best = dict(bucketed=True, loss="chunked", sdpa="no-cudnn", compile=compile and not ablate)
    what = "bucketing, chunked CE at supervised positions, no sync, no-cudnn SDPA" + (", compiled layers" * compile)
    out = [base]
    if ablate:
        out += [
            Variant("+bucketing", "length-bucketed batches", small, bucketed=True, loss="stock", sync_each_step=True),
            Variant(
                "+supervised head",
                "LM head at supervised positions, full-vocabulary logits there",
                small,
                loss="supervised",
                sync_each_step=True,
            ),
            Variant(
                "+chunked CE", "chunked cross-entropy (funasr_swap.loss)", small, loss="chunked", sync_each_step=True
            ),
            Variant("+no sync", "no loss.item() in the step", small, loss="chunked"),
            Variant("+no-cudnn SDPA", "SDPA without the cuDNN backend", small, **best),
        ]
    elif small_optimised and small not in batch_sizes:
        out.append(Variant(f"optimised@{small}", what, small, **best))
    for b in batch_sizes:
        out.append(Variant(f"optimised@{b}", f"{what}; {b} utterances per micro-batch", b, **best))
    if ablate:
        top = max(batch_sizes)
        out += [
            Variant(
                f"default SDPA@{top}",
                "as optimised, torch's default SDPA backend choice",
                top,
                bucketed=True,
                loss="chunked",
            ),
            Variant(
                f"+encoder cached@{top}",
                "the frozen encoder's outputs cached (epochs after the first)",
                top,
                encoder_cached=True,
                **best,
            ),
            Variant(f"LoRA@{top}", "as optimised, with LoRA r=8 on every LLM projection", top, lora=True, **best),
            Variant(
                f"+compile@{top}",
                "torch.compile of every encoder, adaptor and LLM layer",
                top,
                **{**best, "compile": True},
            ),
        ]
    return out


def plot(path: Path, levers: Path | None = None) -> Path:
    """The README's figure (PNG beside `path`): samples/s of the stock and the optimised step per model, the optimised
    step's MFU, and, from `levers` (a run with --ablate), the samples/s lever by lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    rows = [m for m in data["models"] if "runs" in m]
    names = [m["llm"] for m in rows]

    def best(model: dict, key: str) -> float:
        runs = [r for r in model["runs"] if r["variant"].startswith("optimised") and key in r]
        return max(runs, key=lambda r: r["samples_per_second"])[key] if runs else 0.0

    base = [next(r for r in m["runs"] if r["variant"] == "baseline").get("samples_per_second", 0) for m in rows]
    fast = [best(m, "samples_per_second") for m in rows]
    mfu = [best(m, "mfu") for m in rows]
    panels = 3 if levers else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.4))
    ax, ax2 = axes[0], axes[1]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, base, 0.4, label="stock step (batch 16)")
    ax.bar(x + 0.2, fast, 0.4, label="optimised (best batch)")
    for i, (b, o) in enumerate(zip(base, fast)):
        ax.text(i + 0.2, o, f"{o / b:.1f}x" if o and b else "n/m", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set(ylabel="samples / s", title=f"adaptor retraining, one {data['device_info'].get('gpu', 'device')}")
    ax.legend(fontsize=8)
    ax2.bar(x, [100 * m for m in mfu], 0.5, color="tab:green")
    ax2.axhline(45, color="grey", ls="--", lw=1)
    ax2.set_xticks(x, names, rotation=20, fontsize=8)
    ax2.set(ylabel="MFU % of 989 TFLOP/s", title="model FLOPs utilisation, optimised step")
    if levers:
        ladder = next(m for m in json.loads(levers.read_text())["models"] if len(m.get("runs", [])) > 4)
        runs = [r for r in ladder["runs"] if "samples_per_second" in r]
        axes[2].barh(range(len(runs)), [r["samples_per_second"] for r in runs], color="tab:purple")
        axes[2].set_yticks(range(len(runs)), [f"{r['variant']} (b{r['batch_size']})" for r in runs], fontsize=8)
        axes[2].invert_yaxis()
        axes[2].set(xlabel="samples / s", title=f"{ladder['llm']}: lever by lever (one run)")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--ablate", nargs="*", default=["Qwen3-1.7B"], help="models measured lever by lever")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same classes (CPU smoke test)")
    parser.add_argument("--baseline-batch-size", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="the optimised variants compile the layers")
    parser.add_argument("--skip-small", action="store_true", help="no optimised variant at the baseline's batch size")
    parser.add_argument(
        "--batch-sizes-for",
        nargs="*",
        default=[],
        metavar="LLM=B[,B]",
        help="optimised micro-batch sizes of one model, instead of --batch-sizes",
    )
    parser.add_argument(
        "--encoder-cached-for",
        nargs="*",
        default=[],
        help="models also measured with the encoder's outputs cached (a run's later epochs)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64], help="optimised micro-batch sizes")
    parser.add_argument("--utterances", type=int, default=1024, help="utterances of each variant's timed pass")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up batches (other utterances) before timing")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="a timed pass stops after this long")
    parser.add_argument("--curve-steps", type=int, default=50, help="loss-curve equality: steps (0: skip)")
    parser.add_argument("--curve-model", default="Qwen3-0.6B")
    parser.add_argument("--head-tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path, help="only draw the plot of a results file")
    parser.add_argument("--levers", type=Path, help="with --plot: a results file with a lever-by-lever model")
    args = parser.parse_args()
    if args.plot:
        print(f"wrote {plot(args.plot, args.levers)}")
        return

    device = args.device
    corpus = Corpus.sample(args.utterances + 64 * args.warmup + 2048)
    result = {
        "benchmark": "adaptor retraining step vs the stock transformers step, real LLM widths, random weights",
        "device_info": device_info(device),
        "settings": {
            "tiny": args.tiny,
            "utterances": args.utterances,
            "warmup_batches": args.warmup,
            "max_seconds_per_variant": args.max_seconds,
            "batch_sizes": args.batch_sizes,
            "audio": "2-15 s, log-normal (median 6 s, sigma 0.55) clipped; 60 ms per audio token",
            "transcript": f"{TOKENS_PER_SECOND} tokens/s (+-2) + end token; prompt {PROMPT_BEFORE} + {PROMPT_AFTER}",
            "precision": "frozen encoder and LLM bf16, trainable adaptor fp32 master weights, bf16 autocast",
            "peak_tflops": PEAK_TFLOPS,
            "flops": "encoder 2PF (+attention), adaptor 6PF, LLM 4PT + causal attention fwd+bwd, head 4HVN "
            "(unpadded tokens; the module docstring)",
        },
        "matmul_tflops_8192": matmul_tflops(device),
        "models": [],
    }
    print(json.dumps(result["device_info"]), "matmul", result["matmul_tflops_8192"], flush=True)
    if args.head_tokens and not args.tiny:
        result["loss_head_memory"] = loss_head_memory(device, tokens=args.head_tokens)
        print("loss head:", result["loss_head_memory"], flush=True)
    for llm in args.models:
        entry = {"llm": llm}
        result["models"].append(entry)
        started = time.perf_counter()
        try:
            model = build_model(llm, device, args.tiny)
        except torch.OutOfMemoryError as error:
            entry["error"] = f"build: out of memory: {str(error)[:200]}"
            continue
        fm = flop_model(model)
        entry |= {
            "parameters": sum(p.numel() for p in model.parameters()),
            "flop_model": fm,
            "build_seconds": round(time.perf_counter() - started, 1),
            "runs": [],
        }
        print(
            f"== {llm}: {entry['parameters'] / 1e9:.2f} B parameters, built in {entry['build_seconds']} s", flush=True
        )
        if llm == args.curve_model and args.curve_steps:
            best = Variant("optimised", "", bucketed=True, loss="chunked", sdpa="no-cudnn", compile=args.compile)
            entry["loss_curves"] = loss_curves(
                model,
                corpus,
                device=device,
                steps=args.curve_steps,
                batch_size=args.baseline_batch_size,
                optimised=best,
            )
            print("loss curves: max |plain - optimised| =", entry["loss_curves"]["max_abs_difference"], flush=True)
        baseline, too_large = None, None
        sizes = dict(item.split("=") for item in args.batch_sizes_for)
        batch_sizes = [int(b) for b in sizes[llm].split(",")] if llm in sizes else args.batch_sizes
        variants = variants_for(
            llm, llm in args.ablate, batch_sizes, args.baseline_batch_size, args.compile, not args.skip_small
        )
        if llm in args.encoder_cached_for:
            top = max(batch_sizes)
            variants.append(
                Variant(
                    f"+encoder cached@{top}",
                    f"as optimised@{top}, the frozen encoder's outputs cached "
                    "(epochs after the first: --audio-cache encoder)",
                    top,
                    bucketed=True,
                    loss="chunked",
                    sdpa="no-cudnn",
                    compile=args.compile,
                    encoder_cached=True,
                )
            )
        for variant in variants:
            if too_large is not None and variant.name.startswith("optimised@") and variant.batch_size > too_large:
                continue  # a smaller micro-batch ran out of memory already
            run = run_variant(
                model,
                corpus,
                variant,
                device=device,
                utterances=args.utterances,
                warmup=args.warmup,
                max_seconds=args.max_seconds,
                fm=fm,
            )
            if variant.name == "baseline":
                baseline = run.get("samples_per_second")
            if run.get("error", "").startswith("out of memory") and variant.name.startswith("optimised@"):
                too_large = variant.batch_size
            if baseline and "samples_per_second" in run:
                run["vs_baseline"] = round(run["samples_per_second"] / baseline, 2)
            entry["runs"].append(run)
            print(
                f"  {variant.name:24s}",
                {
                    k: run.get(k)
                    for k in (
                        "samples_per_second",
                        "vs_baseline",
                        "mfu",
                        "peak_memory_gb",
                        "padding_fraction",
                        "epoch_100k_minutes",
                        "warmup_seconds",
                        "error",
                    )
                },
                flush=True,
            )
            if args.out:
                write_json(result, args.out)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if args.out:
            write_json(result, args.out)
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
