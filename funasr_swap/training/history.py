"""A run's history: its `metrics.jsonl` read back, drawn (`training.png`), and redrawn in a notebook while it trains
(`LiveTrainingPlot`)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenmap.io import atomic_write_bytes

if TYPE_CHECKING:
    from funasr_swap.figures import Figure

__all__ = ["METRICS_FILE", "PLOT_FILE", "LiveTrainingPlot", "history_figure", "plot_history", "read_history"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


def read_history(path: str | os.PathLike, up_to_step: int | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (`path`; a line cut by a kill is dropped), optionally only those up to
    a step; none for a file not written yet."""
    path = Path(path)
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or record["step"] <= up_to_step:
                records.append(record)
    return records


def history_figure(records: Sequence[dict]) -> Figure:
    """Training and validation loss, and validation CER, against the step (`read_history`'s records)."""
    from funasr_swap.figures import Figure  # an image in a notebook (matplotlib's, never pyplot's)

    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid/loss" in r or "valid/cer" in r]
    fig = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_cer = fig.subplots(1, 2)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.6)
    if any("valid/loss" in r for r in valid):
        points = [r for r in valid if "valid/loss" in r]
        ax_loss.plot([r["step"] for r in points], [r["valid/loss"] for r in points], "o-", label="valid")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    points = [r for r in valid if "valid/cer" in r]
    ax_cer.plot([r["step"] for r in points], [r["valid/cer"] for r in points], "o-")
    ax_cer.set(xlabel="step", ylabel="CER", title="validation CER")
    return fig


def plot_history(records: Sequence[dict], path: Path) -> None:
    """`history_figure` of `records` written to `path` (PNG)."""
    buffer = io.BytesIO()
    history_figure(records).savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


class LiveTrainingPlot:
    """An `on_step` callback for `train` that redraws the loss and validation CER of the run in `output_dir` (its
    `metrics.jsonl`) every `every` steps, in place in the notebook cell's output; call `show()` once more after
    training for the final evaluation.

        plot = LiveTrainingPlot(config.output_dir)
        train(model, processor, train_data, valid_data, config, on_step=plot)
        plot.show()
    """

    def __init__(self, output_dir: str | os.PathLike, every: int = 25) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path = Path(output_dir) / METRICS_FILE
        self.every = every
        self._handle = None  # IPython's display handle, once the figure is shown

    def __call__(self, step: int, loss: float) -> None:
        if step % self.every == 0:
            self.show()

    def show(self) -> None:
        """Draw the curves as they stand now (replacing the last drawing)."""
        from IPython.display import display

        figure = history_figure(read_history(self.path))
        if self._handle is None:
            self._handle = display(figure, display_id=True)
        else:
            self._handle.update(figure)
