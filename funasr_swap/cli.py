"""The `funasr-swap` command line: one typer app, one function per command (add a command with `@app.command()`).

Examples:

    funasr-swap convert ./Fun-ASR-Nano-2512 -o ./Fun-ASR-Nano-2512-hf
    funasr-swap convert ./Fun-ASR-Nano-2512 -o ./fun-asr-nano-fp32 --dtype float32 --overwrite
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    name="funasr-swap",
    help=(
        "Swap the LLM inside Fun-ASR-Nano: load and convert checkpoints, resize the adaptor, retrain, evaluate.\n\n"
        "Example: funasr-swap convert ./Fun-ASR-Nano-2512 -o ./Fun-ASR-Nano-2512-hf"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Swap the LLM inside Fun-ASR-Nano."""  # a callback keeps `convert` a subcommand while it is the only one


class DType(str, Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


@app.command()
def convert(
    src: Path = typer.Argument(
        ..., help="Fun-ASR-Nano checkpoint folder: original (config.yaml, model.pt, Qwen3-0.6B/) or Hugging Face"
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Hugging Face folder to write"),
    dtype: DType = typer.Option(DType.bfloat16, help="dtype of the saved weights"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
) -> None:
    """Convert a Fun-ASR-Nano checkpoint to a Hugging Face folder (AutoModelForSpeechSeq2Seq / AutoProcessor).

    Example: funasr-swap convert ./Fun-ASR-Nano-2512 -o ./Fun-ASR-Nano-2512-hf
    """
    import torch

    from funasr_swap.convert import convert_checkpoint

    try:
        written = convert_checkpoint(src, output, dtype=getattr(torch, dtype.value), overwrite=overwrite)
    except (OSError, KeyError, ValueError) as error:  # a wrong folder or checkpoint: its message, no traceback
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"wrote {written}")


@app.command()
def transcribe(
    model: Path = typer.Argument(..., help="Fun-ASR-Nano model folder (Hugging Face or original format)"),
    audio: list[Path] = typer.Argument(..., help="audio files (wav, flac, ogg, ...; any rate, mono or stereo)"),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="write one JSON line per file here instead of printing"),
    language: str | None = typer.Option(None, help="transcribe into this language (zh, en, ja, ...)"),
    hotword: list[str] | None = typer.Option(None, "--hotword", help="a word to bias recognition; repeatable"),
    itn: bool = typer.Option(True, "--itn/--no-itn", help="inverse text normalisation (digits, punctuation)"),
    batch_size: int = typer.Option(8, min=1, help="files per generate call"),
    beams: int = typer.Option(1, min=1, help="beam search width (1: greedy)"),
    max_new_tokens: int = typer.Option(512, min=1, help="the longest transcript, in tokens"),
) -> None:
    """Transcribe audio files: prints FILE<TAB>TEXT per file, or writes JSONL (audio, text, audio_seconds).

    Example: funasr-swap transcribe ./Fun-ASR-Nano-2512-hf a.wav b.flac --language en --jsonl out.jsonl
    """
    import json

    import torch

    from funasr_swap.convert import load_base
    from funasr_swap.transcribe import transcribe as run_transcription
    from tokenmap.io import atomic_write_lines

    try:
        base, processor = load_base(model, device="cuda" if torch.cuda.is_available() else None)
        results = run_transcription(
            base,
            processor,
            audio,
            language=language,
            hotwords=hotword or (),
            itn=itn,
            batch_size=batch_size,
            num_beams=beams,
            max_new_tokens=max_new_tokens,
        )
    except (OSError, KeyError, ValueError) as error:  # a wrong folder or audio file: its message, no traceback
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    if jsonl is None:
        for path, result in zip(audio, results):
            typer.echo(f"{path}\t{result.text}")
        return
    lines = [
        json.dumps({"audio": str(path), "text": r.text, "audio_seconds": r.audio_seconds}, ensure_ascii=False)
        for path, r in zip(audio, results)
    ]
    atomic_write_lines(jsonl, lines)
    typer.echo(f"wrote {len(lines)} transcript(s) to {jsonl}")


@app.command()
def plan(
    source: str = typer.Option("Qwen3-0.6B", "--from", help="the LLM inside the model you start from"),
) -> None:
    """Compare every registry LLM as a swap target: width, adaptor size, tokenizer work, markers, memory, path.

    Memory is bf16 weights (encoder + adaptor + LLM); training adds fp32 master weights, gradients and AdamW
    moments for the adaptor only (activations excluded). Paths: A stays in the Qwen family, B moves to
    Llama-3.2-3B, C to DeepSeek-V2-Lite.

    Example: funasr-swap plan --from Qwen3-0.6B
    """
    from rich.console import Console
    from rich.table import Table

    from funasr_swap.plan import swap_plan

    try:
        rows = swap_plan(source)
    except KeyError as error:
        typer.echo(f"error: {error.args[0]}", err=True)
        raise typer.Exit(1) from error
    table = Table(title=f"swapping the LLM of Fun-ASR-Nano ({source})")
    for column in ("LLM", "hidden", "llm_dim", "adaptor params", "tokenizer work", "markers", "infer GiB", "train GiB"):
        table.add_column(column, justify="right" if column in ("hidden", "infer GiB", "train GiB") else "left")
    table.add_column("path")
    for r in rows:
        table.add_row(
            r.llm, str(r.hidden), f"{r.dim_change:+.0%}",
            f"{r.adaptor_params_before / 1e6:.1f}M -> {r.adaptor_params_after / 1e6:.1f}M",
            r.tokenizer_work, r.markers, f"{r.inference_gib:.1f}", f"{r.training_gib:.1f}", r.path,
        )  # fmt: skip
    Console().print(table)


@app.command()
def swap(
    base: Path = typer.Option(..., help="Fun-ASR-Nano folder (Hugging Face or original format)"),
    llm: str = typer.Option(..., help="registry name (random weights) or a local LLM folder"),
    output: Path = typer.Option(..., "-o", "--output", help="folder to write the swapped model to"),
    strategy: str = typer.Option("fresh", help="adaptor: fresh | bridge"),
    markers: str = typer.Option("reuse", help="speech markers: reuse | add"),
    boundaries: bool = typer.Option(False, help="also wrap the audio in start/end marker tokens"),
    size: str = typer.Option("tiny", help="registry targets only: tiny | real shape (random weights)"),
) -> None:
    """Swap the LLM of a Fun-ASR-Nano model and save a folder that stock transformers loads.

    Example: funasr-swap swap --base ./Fun-ASR-Nano-2512-hf --llm ./Llama-3.2-1B --strategy bridge -o ./nano-llama
    """
    from funasr_swap.convert import load_base
    from funasr_swap.swap import swap_llm

    try:
        model, processor = load_base(base)
        result = swap_llm(model, processor, llm, markers=markers, boundaries=boundaries, strategy=strategy, size=size)
        result.save(output)
    except (OSError, KeyError, ValueError) as error:  # nothing is written unless the swap succeeded
        typer.echo(f"error: {error.args[0] if isinstance(error, KeyError) else error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(result.report.to_markdown())
    typer.echo(f"saved to {output}")


@app.command()
def synth(
    output: Path = typer.Option(..., "-o", "--output", help="corpus folder: clips/ and train/valid/test.jsonl"),
    utterances: int = typer.Option(..., min=1, help="utterances in all, shared evenly between the languages"),
    languages: str = typer.Option("en,zh", help="comma-separated: en, zh"),
    seed: int = typer.Option(0, help="sentences, voices, speeds and pitches follow from it"),
    valid_fraction: float = typer.Option(0.05, min=0.0, max=0.99, help="share of each language for valid"),
    test_fraction: float = typer.Option(0.05, min=0.0, max=0.99, help="share of each language for test"),
    workers: int | None = typer.Option(None, min=1, help="parallel espeak-ng processes (default: CPU count)"),
) -> None:
    """Speak a synthetic English/Mandarin ASR corpus with espeak-ng (16 kHz wav + JSONL manifests).

    Valid and test sentences never occur in train. Clips in OUTPUT are reused: a rerun speaks only what is missing.

    Speed: 10,000 utterances (8 hours of audio) take 1-2.5 minutes on 2 CPU cores.

    Examples:

        funasr-swap synth -o data/synth --utterances 10000

        funasr-swap synth -o data/en --utterances 2000 --languages en --test-fraction 0.1
    """
    from rich.console import Console
    from rich.table import Table

    from funasr_swap.synth import synthesize

    try:
        report = synthesize(
            output, utterances, [language.strip() for language in languages.split(",") if language.strip()],
            seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction, workers=workers,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as error:  # no espeak-ng, bad arguments: the message, no traceback
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    table = Table(title=f"{output}: {report.synthesized} clip(s) spoken, {report.reused} reused, "
                  f"{report.seconds:.1f} s")  # fmt: skip
    for column in ("split", "language", "utterances", "hours", "manifest"):
        table.add_column(column, justify="right" if column in ("utterances", "hours") else "left")
    for (split, language), count in report.counts.items():
        table.add_row(split, language, str(count), f"{report.hours[split, language]:.2f}",
                      str(report.manifests[split]))  # fmt: skip
    Console().print(table)


@app.command("train")
def train_command(
    model: Path = typer.Option(..., help="Fun-ASR-Nano folder to train: a swapped model or the base"),
    train_manifest: Path = typer.Option(..., "--train", help="training manifest (JSONL: audio, text, language)"),
    valid: Path | None = typer.Option(None, help="validation manifest; CER/WER and loss every --eval-every steps"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder: checkpoints, metrics.jsonl, final/"),
    steps: int = typer.Option(1000, min=1, help="optimizer steps"),
    batch_size: int = typer.Option(8, min=1, help="utterances per micro-batch (per process)"),
    grad_accum: int = typer.Option(1, min=1, help="micro-batches per optimizer step"),
    lr: float = typer.Option(1e-3, min=0.0, help="peak learning rate (AdamW)"),
    warmup: int = typer.Option(100, min=0, help="linear warmup steps, then cosine decay to 0"),
    weight_decay: float = typer.Option(0.01, min=0.0),
    max_grad_norm: float = typer.Option(1.0, min=0.0, help="gradient clipping; 0: off"),
    eval_every: int = typer.Option(200, min=0, help="steps between evaluations; 0: at the end only"),
    save_every: int = typer.Option(200, min=0, help="steps between checkpoints; 0: at the end only"),
    keep_last: int = typer.Option(2, min=1, help="checkpoints kept"),
    seed: int = typer.Option(0),
    unfreeze_encoder: bool = typer.Option(False, "--unfreeze-encoder", help="train the audio encoder too"),
    train_llm: bool = typer.Option(False, "--train-llm", help="train the whole LLM too (joint training)"),
    lora_r: int = typer.Option(0, min=0, help="LoRA rank on the LLM; 0: no LoRA"),
    lora_alpha: int = typer.Option(16, min=1),
    lora_dropout: float = typer.Option(0.0, min=0.0, max=1.0),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", help="comma-separated LLM module names"),
    train_token: list[int] | None = typer.Option(
        None, "--train-token", help="token id whose embedding row trains; repeatable (default: the swap's added rows)"
    ),
    log_samples: int = typer.Option(3, min=0, help="transcripts shown per evaluation"),
    num_workers: int = typer.Option(0, min=0, help="DataLoader processes reading audio"),
    audio_cache: str = typer.Option(
        "none",
        help="keep each clip's audio inputs in memory after epoch 1 (needs --num-workers 0): 'features' "
        "(fbank, ~37 KB per audio second), 'encoder' (a frozen encoder's outputs, which replace it in the steps)",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) bad manifest lines"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in OUTPUT"),
) -> None:
    """Retrain the adaptor of a Fun-ASR-Nano model (after a swap); optionally the encoder, the LLM or LoRA on it.

    Writes OUTPUT/checkpoint-N/ (the last --keep-last), metrics.jsonl, training.png and OUTPUT/final/, a model
    folder that `funasr-swap transcribe` and stock transformers load. On several GPUs (DDP):
    `accelerate launch --multi_gpu $(which funasr-swap) train ...`.

    Examples:

        funasr-swap train --model ./nano-llama --train data/train.jsonl --valid data/valid.jsonl -o runs/llama

        funasr-swap train --model ./nano-llama --train data/train.jsonl -o runs/llama --lora-r 16 --resume

    Many epochs over a corpus that fits in memory: --audio-cache encoder (the encoder frozen) computes each clip's
    fbank and encoder pass once, not once per epoch.
    """
    import torch

    from funasr_swap.convert import load_base
    from funasr_swap.data import load_manifest
    from funasr_swap.train import LoraSettings, TrainConfig, added_token_ids
    from funasr_swap.train import train as run_training

    try:
        train_set = load_manifest(train_manifest, skip_bad=skip_bad)
        valid_set = load_manifest(valid, skip_bad=skip_bad) if valid is not None else None
        for manifest in (train_set, valid_set):
            if manifest is not None and manifest.skipped:
                typer.echo(f"{manifest.path}: skipped {len(manifest.skipped)} bad line(s)", err=True)
        lora = None
        if lora_r:
            targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
            lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets)
        config = TrainConfig(
            output_dir=output, max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
            warmup_steps=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm or None,
            eval_every=eval_every, save_every=save_every, keep_last=keep_last, seed=seed,
            unfreeze_encoder=unfreeze_encoder, train_llm=train_llm, lora=lora,
            trainable_token_ids=tuple(train_token) if train_token else added_token_ids(model),
            log_samples=log_samples, num_workers=num_workers, audio_cache=audio_cache,
        )  # fmt: skip
        # frozen weights in bf16 on a GPU (what trains is made fp32); all fp32 on CPU, which has no autocast
        base, processor = load_base(model, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        result = run_training(
            base, processor, train_set.utterances, valid_set.utterances if valid_set else None, config, resume=resume
        )
    except (OSError, KeyError, ValueError) as error:  # bad manifest, model folder or resume: its message
        typer.echo(f"error: {error.args[0] if isinstance(error, KeyError) else error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"trained {result.step} steps; model saved to {result.final_dir}")


@app.command("eval")
def eval_command(
    model: Path = typer.Option(..., help="Fun-ASR-Nano model folder (Hugging Face or original format)"),
    manifest: Path = typer.Option(..., help="manifest to score (JSONL: audio, text, language)"),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="write audio, language, ref, hyp per utterance here"),
    batch_size: int = typer.Option(16, min=1, help="utterances per generate call"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip (and count) bad manifest lines"),
) -> None:
    """Score a model on a manifest: CER and WER (overall and per language) and the loss, as a table.

    Chinese WER counts characters; text is compared case-folded and without punctuation (funasr_swap.metrics).

    Example: funasr-swap eval --model runs/llama/final --manifest data/test.jsonl --jsonl runs/llama/test.jsonl
    """
    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    from funasr_swap.convert import load_base
    from funasr_swap.data import load_manifest
    from funasr_swap.train import evaluate
    from tokenmap.io import atomic_write_lines

    try:
        data = load_manifest(manifest, skip_bad=skip_bad)
        base, processor = load_base(model, device="cuda" if torch.cuda.is_available() else None)
        result = evaluate(base, processor, data.utterances, batch_size=batch_size)
    except (OSError, KeyError, ValueError) as error:  # a wrong folder or manifest: its message, no traceback
        typer.echo(f"error: {error.args[0] if isinstance(error, KeyError) else error}", err=True)
        raise typer.Exit(1) from error
    utterances, metrics = data.utterances, result.metrics
    table = Table(title=f"{model} on {manifest}: loss {metrics['loss']:.4f}")
    for column in ("language", "utterances", "CER", "WER"):
        table.add_column(column, justify="left" if column == "language" else "right")
    languages = sorted({u.language for u in utterances if u.language is not None})
    for language in languages:
        count = sum(u.language == language for u in utterances)
        table.add_row(language, str(count), f"{metrics[f'cer/{language}']:.2%}", f"{metrics[f'wer/{language}']:.2%}")
    table.add_row("all", str(len(utterances)), f"{metrics['cer']:.2%}", f"{metrics['wer']:.2%}")
    Console().print(table)
    if data.skipped:
        typer.echo(f"skipped {len(data.skipped)} bad line(s)", err=True)
    if jsonl is not None:
        lines = [
            json.dumps({"audio": str(u.audio), "language": u.language, "ref": u.text, "hyp": h}, ensure_ascii=False)
            for u, h in zip(utterances, result.hypotheses)
        ]
        atomic_write_lines(jsonl, lines)
        typer.echo(f"wrote {len(lines)} transcript(s) to {jsonl}")


@app.command()
def quickstart(
    output: Path = typer.Option(Path("runs/quickstart"), "-o", "--output", help="folder for everything it builds"),
    families: str = typer.Option("llama3,gemma2,deepseek", help="comma-separated target families"),
    quick: bool = typer.Option(False, "--quick", help="a handful of clips and steps: checks the wiring in a minute"),
    jobs: int = typer.Option(2, min=1, help="worker processes for the independent runs (LLM pretraining, swaps)"),
) -> None:
    """Build the miniature world and swap its LLM: espeak-ng corpus, tiny LLMs with the real tokenizers, the base
    (tiny Fun-ASR-Nano) trained, then each family's LLM swapped in (bridge and fresh adaptor) and the adaptor
    retrained (with LoRA on the LLM); writes OUTPUT/REPORT.md (test CER per model, steps, times) and OUTPUT/cer.png.

    Everything built is cached in OUTPUT: a rerun reuses it. About 22 minutes on 2 CPU cores (--quick: 1 minute).

    Example: funasr-swap quickstart -o runs/quickstart --families llama3,gemma2
    """
    from funasr_swap.miniature import QUICK, MiniatureConfig, run_quickstart

    names = [name.strip() for name in families.split(",") if name.strip()]
    try:
        report = run_quickstart(output, names, QUICK if quick else MiniatureConfig(), jobs=jobs, log=typer.echo)
    except (OSError, KeyError, ValueError) as error:
        typer.echo(f"error: {error.args[0] if isinstance(error, KeyError) else error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(report.read_text())
