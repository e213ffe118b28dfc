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
    src: Path = typer.Argument(..., help="Fun-ASR-Nano checkpoint folder: original (config.yaml, model.pt, "
                               "Qwen3-0.6B/) or Hugging Face"),
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
