"""The figures the library and the notebooks draw: matplotlib's `Figure`, shown as a PNG wherever IPython shows it.

A plain `matplotlib.figure.Figure` returned as a cell's value (or passed to `display`) has no PNG form until
matplotlib's inline backend has been activated, which happens only when something imports `matplotlib.pyplot`: before
that, the cell shows `<Figure size 1100x600 with 3 Axes>`. The project draws without pyplot (no global registry that
keeps every figure alive, no backend to choose), so its figures carry their own PNG form instead:

    from funasr_swap.figures import Figure

    fig = Figure(figsize=(7, 3), layout="tight")
    fig.subplots().plot([1, 2, 3])
    fig  # an image in JupyterLab, in an executed .ipynb (`image/png`) and on a code-hosting site

Once the inline backend is active, IPython's own PNG printer for matplotlib figures takes precedence (the same
image, at the inline backend's settings).
"""

from __future__ import annotations

import io

import matplotlib.figure

__all__ = ["Figure"]


class Figure(matplotlib.figure.Figure):
    """A `matplotlib.figure.Figure` that IPython displays as a PNG whatever the matplotlib backend."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")  # the inline backend's cropping
        return buffer.getvalue()
