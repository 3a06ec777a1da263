"""``jaxnn reproduce``: run every experiment and gather their claims in ``report.md``.

``jaxnn reproduce [--only NAME[,NAME]] [--quick] [--out DIR] [--quiet]`` (or
``python -m jaxnn_experiments`` with the same options) runs the experiments of
:data:`jaxnn_experiments.EXPERIMENTS` in order; each writes JSON, and figures where it has
them, into ``DIR`` (default ``results/``), and ``DIR/report.md`` gathers each claim of the
source text with its rule, figure, numbers and computed verdict. ``--quick`` runs every
experiment scaled down. ``DIR`` is checked before anything runs: it must be a folder that can
be created and written.

Exit status, as the other ``jaxnn`` commands (:mod:`jaxnn.cli`):

* 0 — every experiment ran.
* 1 — an experiment raised; the others still run, and the tracebacks are on stderr.
* 2 — a usage error: bad arguments, an ``--only`` that names no experiment, an ``--out`` that
  is not a writable folder, the experiments' dependencies (matplotlib, scikit-learn) not
  installed.
* 130 — interrupted (Ctrl-C), in one line.

stdout holds the reports only; the progress bar goes to stderr, shown only when stderr is a
terminal and never with ``--quiet``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

import jaxnn_experiments
from jaxnn import cli

__all__ = ["add_command", "reproduce"]

_INSTALL = (
    "Install them with the experiments extra: pip install -e '.[experiments]' from the "
    "repository root."
)


def add_command(sub: Any, quiet: argparse.ArgumentParser) -> None:
    """Add ``reproduce`` to the subcommands ``sub`` of the ``jaxnn`` parser (see
    :func:`jaxnn.cli.parser`); ``quiet`` is the parent parser that holds ``--quiet``."""
    p = sub.add_parser(
        "reproduce", parents=[quiet], help="run every experiment and write its results"
    )
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--only", type=_only, default=(), metavar="NAME[,NAME]",
                   help="run only these experiments")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="every experiment scaled down (seconds each; the test suite runs it)")  # fmt: skip
    p.set_defaults(run=reproduce)


def _only(text: str) -> tuple[str, ...]:
    """argparse type of ``--only``: experiment names separated by commas."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected experiment names, got {text!r}")
    return names


def _module(name: str) -> ModuleType:
    """The module ``jaxnn_experiments.<name>``, imported (matplotlib and scikit-learn with it)."""
    return importlib.import_module(f"{jaxnn_experiments.__name__}.{name}")


def _cannot_import(e: ImportError) -> int:
    print(f"jaxnn reproduce: cannot import the experiments ({e}). {_INSTALL}", file=sys.stderr)
    return 2


def reproduce(args: argparse.Namespace) -> int:
    """Run the experiments ``args`` names (see the module docstring); the exit status."""
    problem = cli.out_problem(args.out)
    if problem:
        print(f"jaxnn reproduce: {problem}", file=sys.stderr)
        return 2
    try:
        common = _module("common")
    except ImportError as e:  # the experiments need matplotlib and scikit-learn
        return _cannot_import(e)
    names = tuple(jaxnn_experiments.EXPERIMENTS)
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            print(
                f"jaxnn reproduce: --only expects experiment names from {', '.join(names)}; "
                f"got {', '.join(unknown)}.",
                file=sys.stderr,
            )
            return 2
        names = tuple(n for n in names if n in args.only)
    try:
        modules = {name: _module(name) for name in names}
    except ImportError as e:
        return _cannot_import(e)
    failed: dict[str, str] = {}
    results: dict[str, Any] = {}
    # disable=None: tqdm shows the bar only when stderr is a terminal.
    bar = tqdm(
        modules.items(), desc="reproduce", unit="experiment", disable=True if args.quiet else None
    )
    with common.silence_progress(args.quiet), bar:
        for name, module in bar:
            bar.set_postfix_str(name)
            # tqdm.write: the bar on stderr steps aside while the report goes to stdout.
            tqdm.write(f"== {name}", file=sys.stdout)
            start = time.perf_counter()
            try:
                results[name] = module.main(args.out, quick=args.quick)
            except Exception as e:  # report every experiment, then fail
                failed[name] = f"{type(e).__name__}: {e}"
                trace = "".join(traceback.format_exception(e)).rstrip()
                tqdm.write(f"!! {name} failed: {type(e).__name__}: {e}\n{trace}", file=sys.stderr)
            tqdm.write(f"== {name}: {time.perf_counter() - start:.1f} s\n", file=sys.stdout)
    report = Path(args.out) / "report.md"
    report.write_text(_report(names, results, failed, args.quick))
    print(f"wrote {report}")
    if failed:
        print(
            f"jaxnn reproduce: {len(failed)} experiment(s) failed: {', '.join(failed)} (exit 1; "
            f"the tracebacks are above).",
            file=sys.stderr,
        )
        return 1
    return 0


def _report(
    names: Sequence[str], results: dict[str, Any], failed: dict[str, str], quick: bool
) -> str:
    """``report.md``: each claim of the source text, its rule, its figure, its verdict."""
    lines = [
        "# jaxnn reproduce: the source text's claims, tested",
        "",
        "Each verdict is computed by the experiment from its own run, by a rule fixed before "
        "the run (the rules are also in each experiment's JSON, written there before the run "
        "starts). A claim that does not hold is checked for robustness: the same rule on runs "
        "that each change one setting (the budget x5, the learning rate x1/3 and x3, and the "
        "setting the claim most likely depends on), fixed before the run; the original verdict "
        "stays, and the analysis says whether it is robust or depends on the setup.",
    ]
    if quick:
        lines += ["", "**Quick mode** (`--quick`): every experiment scaled down; the verdicts "
                  "below are of the small runs and may differ from the full ones."]  # fmt: skip
    rows, sections = [], []
    for name in names:
        sections += ["", f"## {name}", ""]
        if name in failed:
            sections.append(f"**Failed**: {failed[name]}")
            rows.append(f"| {name} | – | **failed** | | |")
            continue
        claims = (results.get(name) or {}).get("claims")
        if not isinstance(claims, list) or not claims:
            sections.append("No claims recorded.")
            continue
        for c in claims:
            verdict = "holds" if c["holds"] else "does not hold"
            analysis = c.get("robustness")
            robust = (
                "" if not analysis else "robust" if analysis["robust"] else "depends on the setup"
            )
            rows.append(f"| {name} | {c['claim']} | **{verdict}** | {robust} | {c['figure']} |")
            sections += [
                f"**Claim.** {c['claim']}",
                "",
                f"**Rule.** {c['rule']}",
                "",
                f"**Verdict: {verdict}.** {c['evidence'].rstrip('.')}.",
                "",
                f"**Figure.** {c['figure']}",
                "",
                *_robustness(c.get("robustness")),
            ]
        if any(".png" in c["figure"] for c in claims):
            sections.append(f"![{name}]({name}.png)")
    table = [
        "",
        "| experiment | claim | verdict | robustness of a negative verdict | figure |",
        "|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines + table + sections) + "\n"


def _robustness(analysis: dict[str, Any] | None) -> list[str]:
    """The sensitivity analysis of a verdict, as a table and its sentence (none: no lines)."""
    if not analysis:
        return []
    word = {True: "holds", False: "does not hold"}
    rows = [
        f"| {v['setting']} | {word[v['holds']]} | {v['evidence'].rstrip('.')} |"
        for v in analysis["variants"]
    ]
    return [
        "**Robustness** (the same rule on runs that each change one setting, fixed before the "
        f"run). {analysis['sentence']}",
        "",
        "| variant | verdict | numbers |",
        "|---|---|---|",
        *rows,
        "",
    ]
