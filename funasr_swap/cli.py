"""The `funasr-swap` command line: one typer app, one function per command (add a command with `@app.command()` and
`@one_line_errors`).

One vocabulary across the commands (and with the `tokenmap` CLI): `--model DIR` is the Fun-ASR-Nano folder a
command reads, `--manifest FILE` (train: `--train`, `--valid`) an input JSONL manifest, `-o/--output` what it writes;
`--adaptor fresh|bridge|vocab` is how a swap initialises the adaptor, `--markers reuse|add` how it finds its speech
markers.
Errors print one line, `error: ...`, and exit with status 1; outputs are checked before any work.

Defaults are the library's (`TrainConfig`, `LoraSettings`, `transcribe`, `evaluate`, `swap_llm`), read when a command
needs them, so that each exists once and `funasr-swap --help` starts without importing torch.

Examples:

    funasr-swap convert ./Fun-ASR-Nano-2512 -o ./Fun-ASR-Nano-2512-hf
    funasr-swap plan --from Qwen3-0.6B
    funasr-swap swap --model ./Fun-ASR-Nano-2512-hf --llm ./Llama-3.2-1B --adaptor bridge -o ./nano-llama
    funasr-swap synth -o data/synth --utterances 10000
    funasr-swap train --model ./nano-llama --train data/synth/train.jsonl --valid data/synth/valid.jsonl -o runs/llama
    funasr-swap eval --model runs/llama/final --manifest data/synth/test.jsonl -o runs/llama/test.jsonl
    funasr-swap transcribe --model runs/llama/final a.wav b.flac --language en
    funasr-swap export runs/llama/final -o runs/llama/edge && funasr-swap transcribe --edge runs/llama/edge a.wav
    funasr-swap demo --quickstart runs/quickstart
    funasr-swap serve --model runs/llama/final
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import typer

from funasr_swap.adaptor_strategies import Strategy as AdaptorStrategy
from funasr_swap.gguf import OutType as GgufOutType
from funasr_swap.llms import RandomWeights as RandomWeightShapes
from tokenmap.cli import CliError
from tokenmap.cli import one_line_errors as tokenmap_one_line_errors
from tokenmap.markers import Strategy as MarkerStrategy

if TYPE_CHECKING:  # torch-heavy: imported inside the commands that need them
    from transformers import FunAsrNanoProcessor

    from funasr_swap.data import Manifest

app = typer.Typer(
    name="funasr-swap",
    help=(
        "Swap the LLM inside Fun-ASR-Nano: load and convert checkpoints, resize the adaptor, retrain, evaluate.\n\n"
        "Example: funasr-swap swap --model ./Fun-ASR-Nano-2512-hf --llm ./Llama-3.2-1B -o ./nano-llama"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Swap the LLM inside Fun-ASR-Nano."""  # a callback keeps every command a subcommand


# The library's names of the settings that commands take as flags: a `SettingError` from the library names the flag
# the user typed (`--max-seconds 60`), not the parameter a Python caller passes (`max_audio_seconds=60`).
FLAGS = {
    "max_audio_seconds": "--max-seconds",
    "max_seconds": "--max-seconds",
    "max_new_tokens": "--max-new-tokens",
    "output_dir": "-o/--output",
    "resume": "--resume",
    "audio_cache": "--audio-cache",
    "num_workers": "--num-workers",
    "dither": "--dither",
    "unfreeze_encoder": "--unfreeze-encoder",
    "train_llm": "--train-llm",
    "lora": "--lora-r",
    "max_file_size": "--max-file-size",
    "port": "--port",
    "target": "--llm",
    "random_weights": "--random-weights",
}


def one_line_errors(command: Callable) -> Callable:
    """`tokenmap.cli.one_line_errors` (OSError, KeyError, ValueError: one line `error: ...` on stderr, exit status 1,
    no traceback), widened to MemoryError (a real-shape LLM that cannot fit this machine: `swap --random-weights
    real`), with a `SettingError`'s settings named by their flags (`FLAGS`)."""

    @tokenmap_one_line_errors
    @functools.wraps(command)
    def widened(*args, **kwargs):
        from funasr_swap.errors import SettingError

        try:
            return command(*args, **kwargs)
        except MemoryError as error:
            raise CliError(str(error) or "out of memory") from error
        except SettingError as error:
            raise CliError(error.spelled(FLAGS)) from None

    return widened


def positive(value: float | None) -> float | None:
    """A typer callback refusing 0 and less at parse time (exit status 2, naming the option)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be more than 0, got {value:g}")
    return value


class LibraryDefault:
    """An option's default read from its home in the library when typer needs it (a command's --help, or a run that
    leaves the option out): the default exists once, and `funasr-swap --help` imports no torch (0.6 s, not 11 s).

    `source` is "module:NAME" (a constant), "module:Class.field" (a dataclass field's default) or
    "module:function.parameter" (a parameter's default).
    """

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self) -> Any:
        module, _, path = self.source.partition(":")
        owner_name, _, name = path.partition(".")
        owner = getattr(importlib.import_module(module), owner_name)
        if not name:
            return owner
        if dataclasses.is_dataclass(owner):
            return next(field.default for field in dataclasses.fields(owner) if field.name == name)
        return inspect.signature(owner).parameters[name].default

    def __str__(self) -> str:  # what --help shows: typer prints a callable default that is not a function with str()
        return str(self())


def train_default(field: str) -> LibraryDefault:
    """The default of `TrainConfig.<field>`."""
    return LibraryDefault(f"funasr_swap.training.config:TrainConfig.{field}")


def transcribe_default(parameter: str) -> LibraryDefault:
    """The default of `funasr_swap.transcribe.transcribe`'s `parameter`."""
    return LibraryDefault(f"funasr_swap.transcribe:transcribe.{parameter}")


def demo_default(field: str) -> LibraryDefault:
    """The default of `demos.config.DemoConfig.<field>`."""
    return LibraryDefault(f"demos.config:DemoConfig.{field}")


def serve_default(field: str) -> LibraryDefault:
    """The default of `funasr_swap.serve.ServeConfig.<field>`."""
    return LibraryDefault(f"funasr_swap.serve.config:ServeConfig.{field}")


def synth_default(parameter: str) -> LibraryDefault:
    """The default of `funasr_swap.synth.synthesize`'s `parameter`."""
    return LibraryDefault(f"funasr_swap.synth:synthesize.{parameter}")


MAX_SECONDS = LibraryDefault("funasr_swap.transcribe:DEFAULT_MAX_AUDIO_SECONDS")
MAX_SECONDS_HELP = "clips longer than this many seconds are bad manifest lines (see --skip-bad)"
SKIP_BAD_HELP = "skip (and count) bad manifest lines: malformed, missing audio, too long, text spelling a control token"


def check_output_folder(output: Path, reads: dict[str, Path], overwrite: bool) -> None:
    """Refuse, before any work, a folder OUTPUT that is, holds or lies inside a folder the command reads (`reads`:
    option name -> folder; replacing it would delete what is being read), that exists without --overwrite, or that
    cannot be written."""
    from tokenmap.io import check_writable

    out = output.resolve()
    for option, read in reads.items():
        src = read.resolve()
        if out == src:
            relation = "is"
        elif src in out.parents:
            relation = "lies inside"
        elif out in src.parents:
            relation = "holds"
        else:
            continue
        raise CliError(
            f"-o/--output {output} {relation} {option} {read}, which this command reads: choose a folder apart"
        )
    if output.exists() and not overwrite:
        raise CliError(f"-o/--output {output} exists; pass --overwrite to replace it, or choose another folder")
    check_writable(output, folder=True)


class DType(str, Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


def library_choices(name: str, literal: Any) -> type[Enum]:
    """An option's choices as an Enum of a library `Literal`'s values: the CLI offers exactly what the library
    takes. The Literal's home must import no torch (this module is imported for every command, --help too)."""
    return Enum(name, {value: value for value in get_args(literal)}, type=str)


Adaptor = library_choices("Adaptor", AdaptorStrategy)
Markers = library_choices("Markers", MarkerStrategy)
RandomWeights = library_choices("RandomWeights", RandomWeightShapes)


@app.command()
@one_line_errors
def convert(
    src: Path = typer.Argument(
        ..., help="Fun-ASR-Nano checkpoint folder: original (config.yaml, model.pt, Qwen3-0.6B/) or Hugging Face"
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Hugging Face folder to write (apart from SRC)"),
    dtype: DType = typer.Option(DType.bfloat16, help="dtype of the saved weights"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
) -> None:
    """Convert a Fun-ASR-Nano checkpoint to a Hugging Face folder (AutoModelForSpeechSeq2Seq / AutoProcessor).

    Example: funasr-swap convert ./Fun-ASR-Nano-2512 -o ./Fun-ASR-Nano-2512-hf
    """
    import torch

    from funasr_swap.convert import convert_checkpoint

    check_output_folder(output, {"SRC": src}, overwrite)
    written = convert_checkpoint(src, output, dtype=getattr(torch, dtype.value), overwrite=overwrite)
    typer.echo(f"wrote {written}")


@app.command()
@one_line_errors
def transcribe(
    audio: list[Path] = typer.Argument(..., help="audio files (wav, flac, ogg, ...; any rate, mono or stereo)"),
    model: Path | None = typer.Option(
        None, "--model", help="Fun-ASR-Nano model folder (Hugging Face or original format)"
    ),
    edge: Path | None = typer.Option(
        None,
        "--edge",
        help="instead of --model: a folder `funasr-swap export` wrote (no torch; greedy, clips decoded together)",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="write one JSON line per file (audio, text, audio_seconds) here, not print"
    ),
    language: str | None = typer.Option(
        None, help="transcribe into this language (zh, en, ja, or the checkpoint's name); default: the model's choice"
    ),
    hotword: list[str] | None = typer.Option(None, "--hotword", help="a word to bias recognition; repeatable"),
    itn: bool = typer.Option(True, "--itn/--no-itn", help="inverse text normalisation (digits, punctuation)"),
    batch_size: int = typer.Option(
        default_factory=transcribe_default("batch_size"), min=1, help="files per generate call"
    ),
    beams: int = typer.Option(default_factory=transcribe_default("num_beams"), min=1, help="beam width (1: greedy)"),
    max_new_tokens: int = typer.Option(
        default_factory=transcribe_default("max_new_tokens"), min=1, help="the longest transcript, in tokens"
    ),
    max_seconds: float = typer.Option(
        default_factory=transcribe_default("max_audio_seconds"),
        callback=positive,
        help="longer audio is an error: split it first (e.g. with a VAD)",
    ),
    timestamps: bool = typer.Option(
        False, "--timestamps", help="per-token start and end times, by forced alignment on the CTC branch"
    ),
) -> None:
    """Transcribe audio files: prints FILE<TAB>TEXT per file, or writes JSONL (audio, text, audio_seconds).

    With --timestamps, each file's tokens follow its line, one per line: START<TAB>END<TAB>TOKEN in seconds (the
    JSONL gets "timestamps": [{"token", "start", "end"}]); the model folder (or the export) needs the original's CTC
    branch, which `funasr-swap convert` keeps.

    Example: funasr-swap transcribe --model ./Fun-ASR-Nano-2512-hf a.wav b.flac --language en -o out.jsonl

    Example (an export, without torch): funasr-swap transcribe --edge ./nano-llama-edge a.wav --language en
    """
    import json
    from dataclasses import asdict

    from tokenmap.io import atomic_write_lines, check_writable
    from tokenmap.prompt import language_name

    if (model is None) == (edge is None):
        raise CliError("give the model as --model DIR or an export as --edge DIR (one of the two)")
    if language is not None:
        language_name(language)  # an unknown language is an error before the model loads
    if output is not None:
        check_writable(output)
    if edge is not None:
        if beams != 1:
            raise CliError(f"--edge decodes greedily; --beams {beams} needs --model")
        from funasr_swap.edge import transcribe as edge_transcription

        results = edge_transcription(
            edge, audio, language=language, hotwords=hotword, itn=itn, max_new_tokens=max_new_tokens,
            max_audio_seconds=max_seconds, timestamps=timestamps,
        )  # fmt: skip
    else:
        import torch

        from funasr_swap.convert import load_base
        from funasr_swap.transcribe import transcribe as run_transcription

        base, processor = load_base(model, device="cuda" if torch.cuda.is_available() else None)
        results = run_transcription(
            base, processor, audio, language=language, hotwords=hotword, itn=itn, batch_size=batch_size,
            num_beams=beams, max_new_tokens=max_new_tokens, max_audio_seconds=max_seconds, timestamps=timestamps,
        )  # fmt: skip
    if output is None:
        for path, result in zip(audio, results):
            typer.echo(f"{path}\t{result.text}")
            for time in result.timestamps or ():
                typer.echo(f"{time.start:.2f}\t{time.end:.2f}\t{time.token}")
        return
    lines = [
        json.dumps(
            {"audio": str(path), "text": r.text, "audio_seconds": r.audio_seconds}
            | ({"timestamps": [asdict(t) for t in r.timestamps]} if timestamps else {}),
            ensure_ascii=False,
        )
        for path, r in zip(audio, results)
    ]
    atomic_write_lines(output, lines)
    typer.echo(f"wrote {len(lines)} transcript(s) to {output}")


OutType = library_choices("OutType", GgufOutType)


@app.command("export")
@one_line_errors
def export_command(
    model: Path = typer.Argument(..., help="Fun-ASR-Nano model folder: a swap, a trained model or the base"),
    output: Path = typer.Option(..., "--output", "-o", help="folder to write (audio.onnx, llm.gguf, edge.json)"),
    outtype: OutType = typer.Option(
        OutType("f16"),
        "--outtype",
        help="the LLM's weights in the GGUF: f32, f16 (transcripts as f32), q8_0, or the 4- and 5-bit q4_k_m, q5_k_m "
        "(llama.cpp's quantizer; rows not a multiple of 256 wide fall back to q5_0 / q8_0, said in edge.json)",
    ),
    check: Path | None = typer.Option(
        None, "--check", help="a manifest (JSONL: audio, text): edge.json records how the export agrees with PyTorch"
    ),
    check_clips: int = typer.Option(50, "--check-clips", min=1, help="the manifest's first clips that --check uses"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
) -> None:
    """Export a model for the edge runtime: the audio tower + adaptor as ONNX, the LLM as GGUF (llama.cpp's own
    converter and quantizer), the prompts and settings as edge.json. `transcribe --edge OUTPUT` then runs it without
    torch.

    Example: funasr-swap export runs/llama/final -o nano-llama-edge --outtype q4_k_m --check data/test.jsonl
    """
    from funasr_swap.export import export_edge
    from funasr_swap.gguf import GgufWeights

    check_output_folder(output, {"MODEL": model}, overwrite)
    config = export_edge(model, output, outtype.value, overwrite=overwrite, check=check, check_clips=check_clips)
    card = config.model_card
    typer.echo(f"GGUF {GgufWeights(**card['gguf']).summary()}")
    if (agreed := card.get("agreement")) is not None:
        typer.echo(
            f"against PyTorch on {agreed['clips']} clip(s) of {check}: {agreed['equal_transcripts']} transcript(s) "
            f"equal, CER {agreed['cer']['edge']:.2%} vs {agreed['cer']['pytorch']:.2%} "
            f"(delta {agreed['cer_delta']:+.2%})"
        )
    typer.echo(
        f"wrote {output}: {card['llm']} ({card['family']}, {config.outtype}), audio tower + adaptor max error "
        f"{card['onnx_max_abs_error']:.1e} vs PyTorch, {card['export_seconds']} s"
    )


@app.command("fetch-converter")
@one_line_errors
def fetch_converter_command() -> None:
    """Fetch llama.cpp's GGUF converter (for `export`) from the pinned llama-cpp-python sdist on PyPI into the cache
    ($FUNASR_SWAP_CACHE, else ~/.cache/funasr-swap); once, at set-up. `export` itself never downloads."""
    from funasr_swap.gguf import fetch_converter

    typer.echo(f"llama.cpp's converter is in {fetch_converter()}")


@app.command()
@one_line_errors
def plan(
    source: str = typer.Option(
        ...,
        "--from",
        default_factory=LibraryDefault("funasr_swap.plan:swap_plan.source"),
        help="the LLM inside the model you start from",
    ),
) -> None:
    """Compare every registry LLM as a swap target: width, adaptor size, tokenizer work, markers, memory, path.

    adaptor: its parameters after the swap (the title gives today's). Memory is bf16 weights (encoder + adaptor +
    LLM); training adds fp32 master weights, gradients and AdamW moments for the adaptor only (activations
    excluded). Paths: A stays in the Qwen family, B moves to Llama-3.2-3B, C to DeepSeek-V2-Lite.

    Example: funasr-swap plan --from Qwen3-0.6B
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from funasr_swap.llms import get_llm
    from funasr_swap.plan import swap_plan

    spec, rows = get_llm(source), swap_plan(source)
    # 80 columns hold every column with one space between them: only the tokenizer work folds, never an LLM name
    table = Table(
        title=f"swapping the LLM of Fun-ASR-Nano ({spec.name}: hidden {spec.hidden_size}, "
        f"adaptor {rows[0].adaptor_params_before / 1e6:.1f}M params)",
        box=box.SIMPLE_HEAD,
        padding=0,
        show_edge=False,
    )
    table.add_column("LLM", no_wrap=True)
    table.add_column("hidden", justify="right", no_wrap=True)
    table.add_column("adaptor", justify="right", no_wrap=True)
    table.add_column("tokenizer work", overflow="fold")
    table.add_column("markers", no_wrap=True)
    table.add_column("infer\nGiB", justify="right", no_wrap=True)
    table.add_column("train\nGiB", justify="right", no_wrap=True)
    table.add_column("path", no_wrap=True)
    for r in rows:
        table.add_row(
            r.llm, str(r.hidden), f"{r.adaptor_params_after / 1e6:.1f}M", r.tokenizer_work, r.markers,
            f"{r.inference_gib:.1f}", f"{r.training_gib:.1f}", r.path,
        )  # fmt: skip
    Console().print(table)


@app.command()
@one_line_errors
def swap(
    model: Path = typer.Option(..., "--model", help="Fun-ASR-Nano folder whose LLM is swapped (HF or original)"),
    llm: str = typer.Option(
        ...,
        "--llm",
        metavar="NAME_OR_FOLDER",
        help="the LLM to put in: its local folder (trained weights), or a registry name with --random-weights",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="folder to write the swapped model to (not --model)"),
    random_weights: RandomWeights | None = typer.Option(
        None,
        "--random-weights",
        help="required with a registry name, refused with a folder: build that LLM with random weights, of a tiny "
        "shape (tests) or its real shape (refused when it cannot fit this machine's memory); not a usable model",
    ),
    adaptor: Adaptor = typer.Option(
        default_factory=LibraryDefault("funasr_swap.swap:swap_llm.strategy"),
        help="adaptor init: fresh re-initialises its output side; bridge widens the old adaptor through a map "
        "between the two LLMs' embeddings; vocab fits it on the base's frames read as tokens and carried through "
        "the vocabulary map (needs --clips)",
    ),
    clips: Path | None = typer.Option(
        None, "--clips", metavar="MANIFEST", help="training manifest whose first clips --adaptor vocab reads"
    ),
    markers: Markers | None = typer.Option(
        None,
        help="speech markers: reuse unused special tokens of the target, or add new ones (trainable rows); default: "
        "the family's choice (see `funasr-swap plan`)",
    ),
    boundaries: bool = typer.Option(False, help="also wrap the audio in start/end marker tokens"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
) -> None:
    """Swap the LLM of a Fun-ASR-Nano model and save a folder that stock transformers loads.

    Examples:

        funasr-swap swap --model ./Fun-ASR-Nano-2512-hf --llm ./Llama-3.2-1B --adaptor bridge -o ./nano-llama

        funasr-swap swap --model ./Fun-ASR-Nano-2512-hf --llm Gemma-2-2B --random-weights tiny -o ./nano-gemma-test
    """
    from funasr_swap.convert import load_base
    from funasr_swap.data import load_manifest
    from funasr_swap.swap import check_target, swap_llm

    reads = {"--model": model}  # the folders the swap reads, which its output must keep apart from
    if check_target(llm, random_weights.value if random_weights else None) is None:  # before the base loads
        reads["--llm"] = Path(llm).expanduser()
    check_output_folder(output, reads, overwrite)
    if random_weights is not None:
        typer.secho(
            f"warning: RANDOM WEIGHTS: {llm} is built from its registry shape ({random_weights.value}), untrained: "
            "the swapped model will not transcribe",
            err=True,
            fg="yellow",
            bold=True,
        )
    base, processor = load_base(model)
    utterances = load_manifest(clips).utterances if clips else ()
    result = swap_llm(
        base, processor, llm, markers=markers.value if markers else None, boundaries=boundaries,
        strategy=adaptor.value, random_weights=random_weights.value if random_weights else None, clips=utterances,
    )  # fmt: skip
    result.save(output, ctc_branch_from=model)
    typer.echo(result.report.to_markdown())
    typer.echo(f"saved to {output}")


@app.command()
@one_line_errors
def synth(
    output: Path = typer.Option(..., "-o", "--output", help="corpus folder: clips/ and train/valid/test.jsonl"),
    utterances: int = typer.Option(..., min=1, help="utterances in all, shared evenly between the languages"),
    languages: str | None = typer.Option(None, help="comma-separated: en, zh (default: both)"),
    seed: int = typer.Option(
        default_factory=synth_default("seed"), help="sentences, voices, speeds and pitches follow from it"
    ),
    valid_fraction: float = typer.Option(
        default_factory=synth_default("valid_fraction"), min=0.0, max=0.99, help="share of each language for valid"
    ),
    test_fraction: float = typer.Option(
        default_factory=synth_default("test_fraction"), min=0.0, max=0.99, help="share of each language for test"
    ),
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

    from funasr_swap.synth import LANGUAGES, synthesize

    chosen = [language.strip() for language in languages.split(",") if language.strip()] if languages else LANGUAGES
    try:
        report = synthesize(
            output, utterances, chosen, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction,
            workers=workers,
        )  # fmt: skip
    except RuntimeError as error:  # espeak-ng failed on a sentence: its command, status and message
        raise CliError(str(error)) from error
    # the counts first: a narrow terminal wraps a long folder name, and they must stay on one line
    table = Table(title=f"{report.synthesized} clip(s) spoken, {report.reused} reused, {report.seconds:.1f} s: "
                  f"{output}")  # fmt: skip
    for column in ("split", "language", "utterances", "hours", "manifest"):
        table.add_column(column, justify="right" if column in ("utterances", "hours") else "left")
    for (split, language), count in report.counts.items():
        table.add_row(split, language, str(count), f"{report.hours[split, language]:.2f}",
                      str(report.manifests[split]))  # fmt: skip
    Console().print(table)


def load_checked_manifest(path: Path, processor: FunAsrNanoProcessor, skip_bad: bool, max_seconds: float) -> Manifest:
    """`load_manifest` checked against the model (control tokens of its tokenizer, clip length); says on stderr how
    many bad lines `skip_bad` skipped."""
    from funasr_swap.data import load_manifest

    manifest = load_manifest(path, skip_bad=skip_bad, tokenizer=processor.tokenizer, max_seconds=max_seconds)
    if manifest.skipped:
        number, reason = manifest.skipped[0]
        typer.echo(
            f"{manifest.path}: skipped {len(manifest.skipped)} bad line(s); the first, line {number}: {reason}",
            err=True,
        )
    return manifest


@app.command("train")
@one_line_errors
def train_command(
    model: Path = typer.Option(..., "--model", help="Fun-ASR-Nano folder to train: a swapped model or the base"),
    train_manifest: Path = typer.Option(..., "--train", help="training manifest (JSONL: audio, text, language)"),
    valid: Path | None = typer.Option(None, "--valid", help="validation manifest; CER/WER and loss every --eval-every"),
    output: Path = typer.Option(..., "-o", "--output", help="run folder: checkpoints, metrics.jsonl, final/"),
    steps: int = typer.Option(default_factory=train_default("max_steps"), min=1, help="optimizer steps"),
    batch_size: int = typer.Option(
        default_factory=train_default("batch_size"), min=1, help="utterances per micro-batch (per process)"
    ),
    grad_accum: int = typer.Option(
        default_factory=train_default("grad_accum"), min=1, help="micro-batches per optimizer step"
    ),
    lr: float = typer.Option(default_factory=train_default("lr"), min=0.0, help="peak learning rate (AdamW)"),
    warmup: int = typer.Option(
        default_factory=train_default("warmup_steps"), min=0, help="linear warmup steps, then cosine decay to 0"
    ),
    weight_decay: float = typer.Option(
        default_factory=train_default("weight_decay"), min=0.0, help="AdamW's (never on embeddings or 1-d weights)"
    ),
    max_grad_norm: float = typer.Option(
        default_factory=train_default("max_grad_norm"), min=0.0, help="gradient clipping; 0: off"
    ),
    eval_every: int = typer.Option(
        default_factory=train_default("eval_every"), min=0, help="steps between evaluations; 0: at the end only"
    ),
    save_every: int = typer.Option(
        default_factory=train_default("save_every"), min=0, help="steps between checkpoints; 0: at the end only"
    ),
    keep_last: int = typer.Option(default_factory=train_default("keep_last"), min=1, help="checkpoints kept"),
    seed: int = typer.Option(default_factory=train_default("seed"), help="initialisation, batch order, dropout"),
    unfreeze_encoder: bool = typer.Option(False, "--unfreeze-encoder", help="train the audio encoder too"),
    train_llm: bool = typer.Option(False, "--train-llm", help="train the whole LLM too (joint training)"),
    lora_r: int = typer.Option(0, min=0, help="LoRA rank on the LLM; 0: no LoRA"),
    lora_alpha: int = typer.Option(
        default_factory=LibraryDefault("funasr_swap.training.config:LoraSettings.alpha"),
        min=1,
        help="LoRA scale: alpha / r",
    ),
    lora_dropout: float = typer.Option(
        default_factory=LibraryDefault("funasr_swap.training.config:LoraSettings.dropout"),
        min=0.0,
        max=1.0,
        help="dropout on the LoRA path",
    ),
    lora_targets: str | None = typer.Option(
        None,
        help="comma-separated LLM module names (default: the registry's for the LLM's architecture, every "
        "attention and MLP projection)",
    ),
    train_token: list[int] | None = typer.Option(
        None, "--train-token", help="token id whose embedding row trains; repeatable (default: the swap's added rows)"
    ),
    log_samples: int = typer.Option(
        default_factory=train_default("log_samples"), min=0, help="transcripts shown per evaluation"
    ),
    num_workers: int = typer.Option(
        default_factory=train_default("num_workers"), min=0, help="DataLoader processes reading audio"
    ),
    audio_cache: str = typer.Option(
        default_factory=train_default("audio_cache"),
        help="keep each clip's audio inputs in memory after epoch 1 (needs --num-workers 0): 'features' "
        "(fbank, ~37 KB per audio second), 'encoder' (a frozen encoder's outputs, which replace it in the steps)",
    ),
    dither: float = typer.Option(
        default_factory=train_default("dither"),
        min=0.0,
        help="Kaldi dither on the training audio (int16 scale; funasr trains with 1.0), new noise every epoch: needs "
        "--audio-cache none",
    ),  # fmt: skip
    compile_layers: bool | None = typer.Option(
        default_factory=train_default("compile"),
        help="torch.compile the encoder, adaptor and LLM layers for the steps; default: on a GPU only",
        show_default=False,
    ),
    max_seconds: float = typer.Option(default_factory=MAX_SECONDS, callback=positive, help=MAX_SECONDS_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in OUTPUT"),
) -> None:
    """Retrain the adaptor of a Fun-ASR-Nano model (after a swap); optionally the encoder, the LLM or LoRA on it.

    Writes OUTPUT/checkpoint-N/ (the last --keep-last), metrics.jsonl, training.png and OUTPUT/final/, a model
    folder that `funasr-swap transcribe` and stock transformers load. On several GPUs:
    `accelerate launch --config_file configs/accelerate_ddp.yaml $(which funasr-swap) train ...` (DDP), or
    configs/accelerate_fsdp.yaml (FSDP2: the frozen LLM sharded; no --valid, --lora or added marker rows yet).

    Examples:

        funasr-swap train --model ./nano-llama --train data/train.jsonl --valid data/valid.jsonl -o runs/llama

        funasr-swap train --model ./nano-llama --train data/train.jsonl -o runs/llama --lora-r 16 --resume

    Many epochs over a corpus that fits in memory: --audio-cache encoder (the encoder frozen) computes each clip's
    fbank and encoder pass once, not once per epoch.

    GPU defaults (measured on an H200 at the seed LLMs' real widths, README "Training throughput"): length-bucketed
    micro-batches of 64, the loss head chunked at the supervised positions, compiled layers: 2.3-5x the stock
    transformers step; Qwen3-1.7B and smaller run a little faster with --batch-size 128, Qwen3-8B on an 80 GB card
    needs --batch-size 32.
    """
    import torch

    from funasr_swap.convert import load_base
    from funasr_swap.training import LoraSettings, TrainConfig, added_token_ids, latest_checkpoint
    from funasr_swap.training import train as run_training
    from funasr_swap.training.history import METRICS_FILE
    from tokenmap.io import check_writable

    lora = None
    if lora_r:
        targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets else None
        lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets)
    config = TrainConfig(
        output_dir=output, max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm or None,
        eval_every=eval_every, save_every=save_every, keep_last=keep_last, seed=seed,
        unfreeze_encoder=unfreeze_encoder, train_llm=train_llm, lora=lora,
        trainable_token_ids=tuple(train_token) if train_token else added_token_ids(model),
        log_samples=log_samples, num_workers=num_workers, audio_cache=audio_cache, dither=dither,
        compile=compile_layers,
    )  # fmt: skip
    check_writable(output / METRICS_FILE)  # the run writes its files inside OUTPUT (made when missing)
    checkpoint = latest_checkpoint(output)
    if checkpoint is not None and not resume:
        raise CliError(f"-o/--output {output} holds {checkpoint.name}: pass --resume to continue it, or choose another "
                       "folder")  # fmt: skip
    if checkpoint is None and resume:
        typer.echo(f"--resume: {output} holds no checkpoint; starting a fresh run", err=True)
    # frozen weights in bf16 on a GPU (what trains is made fp32); all fp32 on CPU, which has no autocast
    base, processor = load_base(model, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    train_set = load_checked_manifest(train_manifest, processor, skip_bad, max_seconds)
    valid_set = load_checked_manifest(valid, processor, skip_bad, max_seconds) if valid is not None else None
    result = run_training(
        base, processor, train_set.utterances, valid_set.utterances if valid_set else None, config, resume=resume
    )
    typer.echo(f"trained {result.step} steps; model saved to {result.final_dir}")


@app.command("eval")
@one_line_errors
def eval_command(
    model: Path = typer.Option(..., "--model", help="Fun-ASR-Nano model folder (Hugging Face or original format)"),
    manifest: Path = typer.Option(..., "--manifest", help="manifest to score (JSONL: audio, text, language)"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="write audio, language, ref, hyp per utterance here (JSONL)"
    ),
    batch_size: int = typer.Option(
        default_factory=LibraryDefault("funasr_swap.training.evaluation:evaluate.batch_size"),
        min=1,
        help="utterances per generate",
    ),
    max_seconds: float = typer.Option(default_factory=MAX_SECONDS, callback=positive, help=MAX_SECONDS_HELP),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_BAD_HELP),
) -> None:
    """Score a model on a manifest: CER and WER (overall and per language) and the loss, as a table.

    Chinese WER counts characters; text is compared case-folded and without punctuation (funasr_swap.metrics).

    Example: funasr-swap eval --model runs/llama/final --manifest data/test.jsonl -o runs/llama/test.jsonl
    """
    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    from funasr_swap.convert import load_base
    from funasr_swap.training import evaluate
    from tokenmap.io import atomic_write_lines, check_writable

    if output is not None:
        check_writable(output)
    base, processor = load_base(model, device="cuda" if torch.cuda.is_available() else None)
    data = load_checked_manifest(manifest, processor, skip_bad, max_seconds)
    result = evaluate(base, processor, data.utterances, batch_size=batch_size)
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
    if output is not None:
        lines = [
            json.dumps({"audio": str(u.audio), "language": u.language, "ref": u.text, "hyp": h}, ensure_ascii=False)
            for u, h in zip(utterances, result.hypotheses)
        ]
        atomic_write_lines(output, lines)
        typer.echo(f"wrote {len(lines)} transcript(s) to {output}")


@app.command()
@one_line_errors
def quickstart(
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        default_factory=LibraryDefault("funasr_swap.miniature.quickstart:DEFAULT_OUTPUT"),
        help="folder for everything it builds",
    ),
    families: str = typer.Option(
        "llama3,gemma2,deepseek-v2",
        help="comma-separated target families (qwen3, llama3, gemma2, deepseek-v2) or their LLMs (Llama-3.2-1B, ...);"
        " qwen3 (Qwen3-1.7B: the base's family, wider) is built only when named",
    ),
    compare_init: bool = typer.Option(
        False, "--compare-init", help="also retrain each swap from the other adaptor inits (fresh, vocab), and compare"
    ),
    quick: bool = typer.Option(False, "--quick", help="a handful of clips and steps: checks the wiring in a minute"),
    jobs: int = typer.Option(
        3, min=1, help="swaps retrained side by side, a process of one torch thread each (results do not depend on it)"
    ),
    seed: int = typer.Option(
        0, help="seeds the corpus, the tiny LLMs, the base and the swaps: another seed, another world"
    ),
) -> None:
    """Build the miniature world and swap its LLM: espeak-ng corpus, tiny LLMs with the real tokenizers, the base
    (tiny Fun-ASR-Nano) trained, then each family's LLM swapped in (bridge adaptor) and the adaptor retrained (with
    LoRA on the LLM); writes OUTPUT/REPORT.md (test CER per model, steps, times), OUTPUT/cer.png and
    OUTPUT/models.json (the models built, for notebooks and the demo).

    Everything built is cached in OUTPUT: a rerun reuses it. About 13 minutes on 2 CPU cores (--quick: 1 minute;
    --compare-init retrains each swap twice more, from the fresh and vocab adaptors).

    The same command gives the same numbers on the same processor, busy or quiet, whatever its number of cores
    (every training runs on one torch thread). Another seed or processor rounds differently: the README's figures
    are a range over three seeds.

    Example: funasr-swap quickstart -o runs/quickstart --families llama3,gemma2
    """
    import dataclasses

    from funasr_swap.miniature import QUICK, MiniatureConfig, run_quickstart

    config = dataclasses.replace(QUICK if quick else MiniatureConfig(), compare_init=compare_init, seed=seed)
    names = [name.strip() for name in families.split(",") if name.strip()]
    report = run_quickstart(output, names, config, jobs=jobs, log=typer.echo)
    typer.echo(report.read_text())


@app.command()
@one_line_errors
def demo(
    quickstart: Path = typer.Option(
        default_factory=LibraryDefault("funasr_swap.miniature.quickstart:DEFAULT_OUTPUT"),
        help="a quickstart's folder: the demo compares every model it built (models.json) on its held-out test clips",
    ),
    model: list[Path] | None = typer.Option(
        None, "--model", help="a model folder to compare instead of the quickstart's models; repeatable"
    ),
    examples: Path | None = typer.Option(
        None,
        help="JSONL manifest of example clips (audio, text); default: the quickstart's test clips, none with --model",
    ),
    host: str = typer.Option(default_factory=demo_default("host"), help="address to serve on (0.0.0.0: the network)"),
    port: int | None = typer.Option(
        default_factory=demo_default("port"), help="port; default: the first free one from 7860"
    ),
    max_file_size: str = typer.Option(default_factory=demo_default("max_file_size"), help="largest upload (10mb, 1gb)"),
    max_seconds: float = typer.Option(
        default_factory=demo_default("max_audio_seconds"),
        callback=positive,
        help="longer audio gets a message, not a transcript",
    ),
    queue_size: int = typer.Option(
        default_factory=demo_default("queue_size"), min=1, help="comparisons that may wait; more are turned away"
    ),
    concurrency: int = typer.Option(
        default_factory=demo_default("concurrency_limit"), min=1, help="comparisons that run at once"
    ),
    max_new_tokens: int = typer.Option(
        default_factory=demo_default("max_new_tokens"), min=1, help="the longest transcript, in tokens"
    ),
    max_examples: int = typer.Option(default_factory=demo_default("max_examples"), min=0, help="example clips shown"),
    temp_dir: Path | None = typer.Option(
        default_factory=demo_default("temp_dir"), help="folder for uploads and cached files; default: a new temp folder"
    ),
) -> None:
    """Serve the comparison page: one clip (upload, microphone or a held-out example) through every model side by
    side, with latency, real-time factor, CER and differences against the reference, and each model's ASR prompt
    token by token. Binds 127.0.0.1 unless --host says otherwise.

    Example: funasr-swap demo --quickstart runs/quickstart
    """
    from demos.compare_app import serve
    from demos.config import DemoConfig
    from funasr_swap.miniature.quickstart import held_out_manifest, read_index

    folders = model or [Path(quickstart) / entry.folder for entry in read_index(quickstart)]
    if examples is None and not model:
        examples = held_out_manifest(quickstart)
    config = DemoConfig(
        host=host, port=port, max_file_size=max_file_size, max_audio_seconds=max_seconds, queue_size=queue_size,
        concurrency_limit=concurrency, max_new_tokens=max_new_tokens, max_examples=max_examples, temp_dir=temp_dir,
    )  # fmt: skip
    serve(folders, examples, config)


@app.command()
@one_line_errors
def serve(
    model: Path | None = typer.Option(
        None, "--model", help="Fun-ASR-Nano model folder (Hugging Face or original format), as transcribe takes"
    ),
    edge: Path | None = typer.Option(
        None, "--edge", help="instead of --model: a folder `funasr-swap export` wrote (its batches decoded together)"
    ),
    host: str = typer.Option(default_factory=serve_default("host"), help="address to serve on (0.0.0.0: the network)"),
    port: int = typer.Option(default_factory=serve_default("port"), min=0, help="port (0: a free one)"),
    name: str | None = typer.Option(
        default_factory=serve_default("model_name"), help="the model's id for clients; default: the folder's name"
    ),
    max_batch_size: int = typer.Option(
        default_factory=serve_default("max_batch_size"), min=1, help="clips transcribed together, at most"
    ),
    max_wait_ms: float = typer.Option(
        default_factory=serve_default("max_wait_ms"), min=0, help="how long a request waits for batch-mates, in ms"
    ),
    queue_size: int = typer.Option(
        default_factory=serve_default("queue_size"), min=1, help="requests that may wait; more get 503 (busy)"
    ),
    max_file_size: str = typer.Option(
        default_factory=serve_default("max_file_size"), help="largest upload (10mb, 1gb)"
    ),
    max_seconds: float = typer.Option(
        default_factory=serve_default("max_audio_seconds"), callback=positive, help="longer audio gets a 400"
    ),
    max_new_tokens: int = typer.Option(
        default_factory=serve_default("max_new_tokens"), min=1, help="the longest transcript, in tokens"
    ),
) -> None:
    """Serve a model behind OpenAI's transcription API: POST /v1/audio/transcriptions and GET /v1/models, on
    127.0.0.1 unless --host says otherwise. Requests that arrive together are transcribed together (greedy, as
    `funasr-swap transcribe` does: the same text for the same clip); Ctrl-C lets the requests in flight finish.

    \b
    POST /v1/audio/transcriptions takes a multipart form:
      file             the audio: wav, flac, ogg, ... (any rate, mono or
                       stereo), at most --max-file-size and --max-seconds
      model            the id that GET /v1/models lists (--name)
      language         zh, en or ja; left out: the model's choice
      prompt           hotwords, separated by commas: "Fun-ASR, Qwen3"
      response_format  json: {"text"}; text: the text alone; verbose_json:
                       {"text", "language", "duration"} (duration: seconds)
    A bad request gets a 4xx and one JSON line, {"error": {"message", "type"}},
    as OpenAI's API answers; the server goes on serving.

    \b
    Example:
      funasr-swap serve --model runs/llama/final --port 8000
      curl http://127.0.0.1:8000/v1/audio/transcriptions \\
          -F file=@a.wav -F model=final -F language=en

    \b
    From Python, with OpenAI's client (pip install openai):
      from openai import OpenAI
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
      with open("a.wav", "rb") as audio:
          result = client.audio.transcriptions.create(
              model="final", file=audio, language="en")
      print(result.text)
    """
    import logging

    from funasr_swap.serve import ServeConfig
    from funasr_swap.serve.app import bind, build_app, run
    from funasr_swap.serve.recognizers import edge_recognizer, load_pytorch_recognizer

    if (model is None) == (edge is None):
        raise CliError("give the model as --model DIR or an export as --edge DIR (one of the two)")
    config = ServeConfig(
        host=host, port=port, model_name=name, max_file_size=max_file_size, max_audio_seconds=max_seconds,
        max_new_tokens=max_new_tokens, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        queue_size=queue_size,
    )  # fmt: skip
    sock = bind(config)  # a busy port fails before the model loads
    load = load_pytorch_recognizer if model is not None else edge_recognizer
    recognizer = load(model or edge, config.max_new_tokens, config.max_audio_seconds)
    logging.basicConfig(format="%(levelname)s:     %(message)s")  # as uvicorn logs
    logging.getLogger("funasr_swap.serve").setLevel(logging.INFO)  # each batch: its clips and seconds
    typer.echo(f"serving {config.model_name or recognizer.name} on http://{host}:{sock.getsockname()[1]}/v1")
    run(build_app(recognizer, config), sock)
