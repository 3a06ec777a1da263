"""What the experiments' figures share: the figure, panel finishing, log-axis bars, subscripts.

Figures are plain matplotlib ``Figure`` objects (no pyplot: no global state, no GUI backend).
Labels come from each experiment's ``LABELS`` (plain text, also written to the JSON); a
subscript written there as ``W_l``, ``δ_{l+1}`` or ``‖W‖_F`` is drawn as a subscript by
:func:`subscripts`, which :func:`jaxnn_experiments.common.publish` applies before saving.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

__all__ = ["figure", "finish", "integer_ticks", "log_dots", "subscripts"]

_SUBSCRIPT = re.compile(r"_(\{[^{}$]*\}|[A-Za-z0-9])")


def figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib ``Figure`` with constrained layout."""
    return Figure(figsize=figsize, layout="constrained")


def finish(
    ax: Axes,
    title: str | None = None,
    *,
    legend: dict | None = None,
    grid: str = "both",
    integer_x: bool = False,
    **settings,
) -> None:
    """Title, ``ax.set(**settings)`` (labels, scales, limits), a light grid, a legend.

    Args:
      legend: keyword arguments of ``ax.legend`` (``{}``: the defaults, small type); ``None``:
        no legend.
      grid: the axis the grid lines follow (``"x"``, ``"y"``, ``"both"``).
      integer_x: whole-number ticks on the x axis (epochs, layers, steps).
    """
    if title is not None:
        ax.set_title(title)
    ax.set(**settings)
    ax.grid(alpha=0.3, axis=grid)
    if integer_x:
        integer_ticks(ax)
    if legend is not None:
        ax.legend(**{"fontsize": 7, **legend})


def integer_ticks(ax: Axes, axis: str = "x") -> None:
    """Ticks at whole numbers only on ``axis``."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def log_dots(
    ax: Axes, names: Sequence[str], series: dict[str, tuple[Sequence[float | None], str, str]]
) -> None:
    """One row per name, a marker per series on a log x axis, the row's markers joined.

    On a log axis a bar's length depends on where it starts, which the data do not fix (a
    value of 1e-12 looks long beside an axis reaching 1e-38): markers show the values and
    the joining line the change, with no baseline. ``series`` maps a legend label to
    ``(values, color, marker)``; a missing or non-positive value draws no marker.
    """
    pos = np.arange(len(names))
    rows = np.asarray(
        [[x if x is not None and x > 0 else np.nan for x in v] for v, _, _ in series.values()],
        np.float64,
    )
    ax.hlines(pos, np.nanmin(rows, 0), np.nanmax(rows, 0), color="0.7", lw=1.5, zorder=1)
    for values, (label, (_, color, marker)) in zip(rows, series.items(), strict=True):
        ax.plot(values, pos, marker, color=color, ms=7, mfc="none", mew=1.5, ls="", label=label)
    ax.set(xscale="log", yticks=pos, yticklabels=names)


def subscripts(fig: Figure) -> Figure:
    """Draw ``x_l``, ``x_{l+1}`` in every text of ``fig`` as subscripts (matplotlib mathtext).

    Texts that already hold ``$`` (mathtext) are left alone.
    """
    for text in fig.findobj(Text):
        s = text.get_text()
        if "_" in s and "$" not in s:
            text.set_text(_SUBSCRIPT.sub(lambda m: "$_{" + m.group(1).strip("{}") + "}$", s))
    return fig
