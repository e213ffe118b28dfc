"""Training curves that redraw in a notebook while `funasr_swap.train.train` runs."""

from __future__ import annotations

import os
from pathlib import Path

from funasr_swap.train import METRICS_FILE, history_figure, read_history

__all__ = ["LiveTrainingPlot"]


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
