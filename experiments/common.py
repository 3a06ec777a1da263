"""What every experiment does around its computation: write the JSON, save the figure, print.

An experiment computes a JSON-ready result whose keys are identifiers (ASCII snake_case; a
key that is a number, such as a learning rate, is data and may stay one) and keeps one
``LABELS`` map from identifier to human label (the label may hold σ, ∂, ...). Its report and
figure take every label from that map, and :func:`publish` writes the map into the JSON
under ``"labels"``, so a reader of the JSON has it too. An experiment's ``main`` is::

    def main(out_dir="results"):
        result = run()
        return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))

and ``python -m jaxnn_experiments.<name> [out_dir]`` runs it through :func:`script`. The rules
are fixed before the run, and written before it: ``main`` first calls :func:`preregister`, which
writes ``<name>.preregistered.json`` holding only the setup and the rules, and :func:`publish`
refuses a result whose rules differ from them (an earlier run's ``<name>.json`` stays until the
new result replaces it). A claim that
does not hold carries a sensitivity analysis (:func:`variant`, :func:`robustness`): the same rule
applied to runs that each change one setting, fixed before the run (:func:`sensitivity_rule`);
the original verdict stays, and the analysis says whether it is robust. A loop
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
    "preregister",
    "progress",
    "publish",
    "robustness",
    "script",
    "sensitivity_rule",
    "silence_progress",
    "table",
    "variant",
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


def claim(
    text: str,
    rule: str,
    holds: bool,
    evidence: str,
    figure: str,
    robustness: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
      robustness: for a claim that does not hold, its sensitivity analysis
        (:func:`robustness`); it never changes ``holds``.
    """
    _check_verdict(holds, "claim")
    out = {
        "claim": text,
        "rule": rule,
        "holds": bool(holds),
        "evidence": evidence,
        "figure": figure,
    }
    if robustness is not None:
        if robustness["holds"] != bool(holds):
            raise ValueError(
                f"claim: the sensitivity analysis is of a verdict {robustness['holds']}, the "
                f"claim's is {bool(holds)}; pass the claim's own verdict to robustness()."
            )
        out["robustness"] = robustness
    return out


def _check_verdict(holds: Any, who: str) -> None:
    if not isinstance(holds, bool | np.bool_):
        raise TypeError(f"{who}: holds must be a bool computed by the rule, got {holds!r}.")


def sensitivity_rule(variants: Mapping[str, str]) -> str:
    """The sensitivity rule's words, for an experiment's ``RULES``, naming its ``variants``.

    Args:
      variants: identifier -> the one setting that run changes (e.g. ``{"budget_x5": "1000
        epochs instead of 200"}``); the standard ones are the training budget x5 and the
        learning rate x1/3 and x3, and the setting the claim most likely depends on.
    """
    listed = "; ".join(f"{name}: {setting}" for name, setting in variants.items())
    return (
        "when the claim does not hold, the same rule, unchanged, is applied to runs that each "
        f"change one setting of the original ({listed}); the verdict is robust if the rule "
        "gives the original verdict in every variant, and depends on the setup otherwise; the "
        "original verdict is the claim's verdict either way"
    )


def variant(name: str, setting: str, holds: bool, evidence: str) -> dict[str, Any]:
    """One run of a sensitivity analysis: what it changed, the rule's verdict, the numbers."""
    _check_verdict(holds, "variant")
    return {"variant": name, "setting": setting, "holds": bool(holds), "evidence": evidence}


def robustness(holds: bool, variants: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A verdict's sensitivity analysis: its variants (:func:`variant`) and whether it stands.

    Returns:
      ``{"holds": the original verdict, "variants": [...], "robust": the rule gives the
      original verdict in every variant, "sentence": that, in words, naming the variants}``.
    """
    _check_verdict(holds, "robustness")
    if not variants:
        raise ValueError("robustness: expected at least one variant, got none.")
    word = {True: "holds", False: "does not hold"}
    same = [v["variant"] for v in variants if v["holds"] == bool(holds)]
    other = [v["variant"] for v in variants if v["holds"] != bool(holds)]
    if not other:
        sentence = (
            f"Robust: the rule gives the original verdict ({word[bool(holds)]}) in every "
            f"variant ({', '.join(same)})."
        )
    else:
        sentence = (
            f"Depends on the setup: the claim {word[not holds]} in {', '.join(other)}"
            + (f", and {word[bool(holds)]} in {', '.join(same)}" if same else "")
            + f"; the original verdict ({word[bool(holds)]}) stands as the rule decided it."
        )
    return {
        "holds": bool(holds),
        "variants": [dict(v) for v in variants],
        "robust": not other,
        "sentence": sentence,
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


def preregister(
    name: str, out_dir: Path | str, setup: Mapping[str, Any], rules: Mapping[str, Any]
) -> Path:
    """Write ``<name>.preregistered.json``: the setup and the rules only, before any training.

    The rules that decide the claims (criteria, grids, sensitivity settings) are then on disk
    before the first result exists; :func:`publish` refuses a result whose ``rules`` differ
    from these. ``<name>.json``, an earlier run's result, is left as it is until
    :func:`publish` replaces it, so a run that fails loses nothing.

    Returns:
      The path written.
    """
    record = {
        "status": "preregistered: the setup and the rules, written before any training; the "
        f"run's result, with these rules, is {name}.json",
        "setup": dict(setup),
        "rules": dict(rules),
    }
    _check_keys(record)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = _preregistration(out, name)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def _preregistration(out: Path, name: str) -> Path:
    return out / f"{name}.preregistered.json"


def _check_preregistered(path: Path, result: Mapping[str, Any]) -> None:
    """The result's rules are the ones preregistered in ``path``, if a preregistration is there."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not (isinstance(before, dict) and str(before.get("status", "")).startswith("preregistered")):
        return
    if before.get("rules") != json.loads(json.dumps(result.get("rules"))):
        raise ValueError(
            f"publish: the rules in the result differ from those preregistered in {path} "
            "before the run. Rules are fixed before the run: decide with the preregistered ones."
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
      ValueError: a key of ``result`` or ``labels`` is not an identifier, or the rules differ
        from those :func:`preregister` wrote into ``<name>.preregistered.json`` before the run
        (nothing is written).
    """
    result = {**result, "labels": dict(labels)}
    _check_keys(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json"]
    _check_preregistered(_preregistration(out, name), result)
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
