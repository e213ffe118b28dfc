"""The library's figures are shown as PNG images by IPython, without matplotlib's inline backend."""

from __future__ import annotations

import matplotlib.figure
from IPython.core.formatters import DisplayFormatter

from funasr_swap.figures import Figure


def shown_as(figure) -> dict:
    """What IPython sends to the notebook for `figure` (a cell's value or `display`), by MIME type; a bare
    `DisplayFormatter`, as in a kernel where nothing has activated matplotlib's inline backend."""
    data, _ = DisplayFormatter().format(figure)
    return data


def test_a_figure_is_shown_as_a_png_without_the_inline_backend():
    plain = matplotlib.figure.Figure(figsize=(4, 3))
    plain.subplots().plot([1, 2, 3])
    assert set(shown_as(plain)) == {"text/plain"}  # matplotlib's own: "<Figure size 400x300 with 1 Axes>", the bug
    ours = Figure(figsize=(4, 3))
    ours.subplots().plot([1, 2, 3])
    shown = shown_as(ours)
    assert shown["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert shown["text/plain"] == "<Figure size 400x300 with 1 Axes>"  # the text fallback stays beside the image
