"""A run's history: metrics.jsonl read back, training curves drawn for notebooks (in place while training runs, as
images), without switching the notebook's backend."""

from __future__ import annotations

import json

import matplotlib
import pytest

from funasr_swap.training.history import METRICS_FILE, LiveTrainingPlot, history_figure, plot_history, read_history
from tests.funasr_swap.test_figures import shown_as

RECORDS = [
    {"step": 1, "loss": 3.0},
    {"step": 2, "loss": 2.5, "valid/loss": 2.7, "valid/cer": 0.9},
    {"step": 3, "loss": 2.0},
    {"step": 4, "loss": 1.5, "valid/loss": 1.9, "valid/cer": 0.4},
]


def test_history_figure_draws_loss_and_validation_cer():
    loss, cer = history_figure(RECORDS).axes
    train, valid = loss.get_lines()
    assert list(train.get_ydata()) == [3.0, 2.5, 2.0, 1.5] and list(valid.get_ydata()) == [2.7, 1.9]
    assert list(cer.get_lines()[0].get_xdata()) == [2, 4] and list(cer.get_lines()[0].get_ydata()) == [0.9, 0.4]


def test_history_figure_is_shown_as_a_png():
    assert shown_as(history_figure(RECORDS))["image/png"][:4] == b"\x89PNG"


def test_plot_history_leaves_the_matplotlib_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        plot_history(RECORDS, tmp_path / "training.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_read_history_drops_a_cut_line_and_reads_up_to_a_step(tmp_path):
    path = tmp_path / METRICS_FILE
    assert read_history(path) == []  # not written yet
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"step": 5, "lo')
    assert read_history(path) == RECORDS
    assert read_history(path, up_to_step=2) == RECORDS[:2]


def test_live_plot_draws_every_n_steps_in_one_place(tmp_path, monkeypatch):
    shown = []

    class Handle:
        def update(self, figure):
            shown.append(("update", figure))

    def display(figure, display_id):
        assert display_id is True
        shown.append(("display", figure))
        return Handle()

    monkeypatch.setattr("IPython.display.display", display)
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:2]))
    plot = LiveTrainingPlot(tmp_path, every=2)
    for step in (1, 2, 3):
        plot(step, 1.0)
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    plot(4, 1.0)
    assert [kind for kind, _ in shown] == ["display", "update"]  # steps 2 and 4, the second in place
    assert all("image/png" in shown_as(figure) for _, figure in shown)  # images, while it trains and after
    assert len(shown[1][1].axes[1].get_lines()[0].get_xdata()) == 2  # the newest records


def test_live_plot_refuses_a_bad_interval(tmp_path):
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        LiveTrainingPlot(tmp_path, every=0)
