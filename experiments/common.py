"""What every experiment does around its computation: write the JSON, save the figure, print.

An experiment computes a JSON-ready result whose keys are identifiers (ASCII snake_case; a
key that is a number, such as a learning rate, is data and may stay one) and keeps one
``LABELS`` map from identifier to human label (the label may hold σ, ∂, ...). Its report and
figure take every label from that map, and :func:`publish` writes the map into the JSON
under ``"labels"``, so a reader of the JSON has it too. An experiment's ``main`` is::

    def main(out_dir="results"):
        result = run()
        return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))

and ``python -m jaxnn_experiments.<name> [out_dir]`` runs it through :func:`script`. A loop
that runs for more than a few seconds goes through :func:`progress`: a bar on stderr while it
runs, shown only when stderr is a terminal and never inside :func:`silence_progress`
(``jaxnn reproduce --quiet``); stdout holds the reports only.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxnn_experiments import plots

__all__ = [
    "claim",
    "progress",
    "publish",
    "script",
    "silence_progress",
    "table",
]

DPI = 110
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
# tqdm's `disable`: None shows the bars only when stderr is a terminal; True hides them.
_PROGRESS: dict[str, bool | None] = {"disable": None}
T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterable[T]:
    """``iterable``, with a progress bar on stderr while it is consumed (tqdm).

    The bar shows only when stderr is a terminal, never inside :func:`silence_progress`, and
    is erased when the loop ends, so that a terminal keeps the reports only.

    Args:
      iterable: what the loop runs over.
      desc: what runs, shown before the bar (e.g. ``"lr 0.5, plain network"``).
      total: its length, when ``len(iterable)`` does not tell.
      unit: what one item is (``"eval"``), for the rate.
    """
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, leave=False, disable=_PROGRESS["disable"]
    )


@contextlib.contextmanager
def silence_progress(silent: bool = True) -> Iterator[None]:
    """Within the block, :func:`progress` shows no bar (when ``silent``); restored after it."""
    before = _PROGRESS["disable"]
    if silent:
        _PROGRESS["disable"] = True
    try:
        yield
    finally:
        _PROGRESS["disable"] = before


def _is_data_key(key: str) -> bool:
    try:
        float(key)
    except ValueError:
        return False
    return True


def _check_keys(tree: Any, where: str = "result") -> None:
    """Every dict key in ``tree`` is an identifier or a number (a data value such as 0.5)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if not (_IDENTIFIER.fullmatch(key) or _is_data_key(key)):
                raise ValueError(
                    f"{where}: the key {key!r} is not an ASCII snake_case identifier. Keys are "
                    f"identifiers; put the words in the experiment's LABELS map."
                )
            _check_keys(value, f"{where}[{key!r}]")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            _check_keys(value, f"{where}[{i}]")


def claim(text: str, rule: str, holds: bool, evidence: str, figure: str) -> dict[str, Any]:
    """One claim of the source text and its computed verdict, for ``report.md``.

    Every experiment's result holds ``"claims": [claim(...), ...]``; ``jaxnn reproduce``
    writes them, in order, into ``report.md``.

    Args:
      text: the claim, in the source text's words where it has them.
      rule: the rule that decides it, fixed before the run (the same words as in the
        experiment's ``RULES``).
      holds: the verdict the rule gives on this run's numbers (computed, never typed in).
      evidence: the numbers the rule was applied to, in one sentence.
      figure: the file (``<name>.png``) and panel that show it.
    """
    if not isinstance(holds, bool | np.bool_):
        raise TypeError(f"claim: holds must be a bool computed by the rule, got {holds!r}.")
    return {
        "claim": text,
        "rule": rule,
        "holds": bool(holds),
        "evidence": evidence,
        "figure": figure,
    }


def table(
    rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, align: str = ""
) -> str:
    """Rows as aligned text columns.

    Args:
      rows: the cells, converted with ``str``.
      header: optional column titles.
      align: ``"l"`` or ``"r"`` per column; the default left-aligns the first column and
        right-aligns the others.
    """
    cells = [[str(c) for c in r] for r in ([header] if header else []) + list(rows)]
    n = len(cells[0])
    align = align or "l" + "r" * (n - 1)
    widths = [max(len(r[i]) for r in cells) for i in range(n)]
    return "\n".join(
        "  "
        + "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True)
        ).rstrip()
        for r in cells
    )


def publish(
    name: str,
    out_dir: Path | str,
    result: dict[str, Any],
    labels: Mapping[str, str],
    report: str,
    figure: Figure | None = None,
) -> dict[str, Any]:
    """Write ``<name>.json`` (and ``<name>.png``) into ``out_dir``, print the report.

    Returns:
      ``result`` with ``labels`` added under ``"labels"``: what the JSON holds.

    Raises:
      ValueError: a key of ``result`` or ``labels`` is not an identifier (nothing is written).
    """
    result = {**result, "labels": dict(labels)}
    _check_keys(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json"]
    written[0].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    if figure is not None:
        written.append(out / f"{name}.png")
        plots.subscripts(figure).savefig(written[-1], dpi=DPI)
    # tqdm.write: a progress bar on stderr steps aside while the report goes to stdout.
    tqdm.write(report, file=sys.stdout)
    tqdm.write("wrote " + " and ".join(str(p) for p in written), file=sys.stdout)
    return result


def script(main: Callable[[str], Any]) -> None:
    """``python -m jaxnn_experiments.<name> [out_dir]``: run ``main`` (default ``results``)."""
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
