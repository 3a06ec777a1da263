"""The ``jaxnn`` command.

* ``jaxnn reproduce [--out DIR]`` — runs every experiment of the ``jaxnn_experiments``
  package (the repository's ``experiments/`` folder); each writes JSON, and figures where it
  has them, into ``DIR`` (default ``results/``).
* ``jaxnn gradcheck [--seeds N] [--import MODULE ...] [--only PREFIX]`` — audits every
  registered hand-derived gradient against ``jax.grad`` and finite differences at random
  shapes and seeds (the list in :mod:`jaxnn.audit`), prints a table, and exits 1 on any
  mismatch. ``--import`` loads a module of yours (from the working folder too) that registers
  its own cases with :func:`jaxnn.gradcheck.register`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def reproduce(args: argparse.Namespace) -> int:
    try:
        import jaxnn_experiments as experiments
    except ImportError as e:  # the experiments need matplotlib and scikit-learn
        print(
            f"jaxnn reproduce: cannot import the experiments ({e}). Install them with the "
            f"experiments extra: pip install -e '.[experiments]' from the repository root.",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in experiments.EXPERIMENTS:
        print(f"== {name}")
        start = time.perf_counter()
        try:
            importlib.import_module(f"jaxnn_experiments.{name}").main(args.out)
        except Exception as e:  # report every experiment, then fail
            failed.append(name)
            print(f"!! {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"== {name}: {time.perf_counter() - start:.1f} s\n")
    if failed:
        print(
            f"jaxnn reproduce: {len(failed)} experiment(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


def gradcheck(args: argparse.Namespace) -> int:
    import jax

    from jaxnn import audit
    from jaxnn import gradcheck as gc

    if args.imports and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: your module in this folder
    for module in args.imports:
        importlib.import_module(module)
    cases = {k: v for k, v in audit.cases().items() if k.startswith(args.only)}
    if not cases:
        print(f"jaxnn gradcheck: no registered case starts with {args.only!r}.", file=sys.stderr)
        return 2
    header = (
        "case",
        "seed",
        "shapes",
        "hand vs jax.grad (rel)",
        "vs finite diff (err/bound)",
        "ok",
    )
    rows = [header]
    failures = []
    for name, make in sorted(cases.items()):
        for seed in range(args.seeds):
            with jax.enable_x64(True):
                case = make(jax.random.key(seed))
                report = gc.check_gradients(
                    case.f, *case.args, grad_fn=case.grad_fn, argnums=case.argnums,
                    key=jax.random.key(seed), raise_on_mismatch=False,
                )  # fmt: skip
            fd = [p for leaf in report.leaves for p in leaf.pairs if p.pair[1] == gc.FD]
            # err/bound at each pair's worst element (the element with the largest ratio)
            worst_fd = max(
                (abs(p.value_a - p.value_b) / p.tolerance if p.tolerance else 0.0 for p in fd),
                default=0.0,
            )
            rows.append(
                (
                    name,
                    str(seed),
                    case.description,
                    f"{report.max_rel_err((gc.HAND, gc.AUTO)):.2e}",
                    f"{worst_fd:.2f}",
                    "ok" if report.ok else "MISMATCH",
                )
            )
            if not report.ok:
                failures.append((name, seed, report))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\n{len(rows) - 1 - len(failures)} passed, {len(failures)} failed (rtol {gc.RTOL:g} vs jax.grad; "
        "finite differences within their derived bound when err/bound <= 1)"
    )
    for name, seed, report in failures:
        leaf, p = report.failures[0]
        print(
            f"\n{name} (seed {seed}): {gc._describe(leaf, p, report.rtol)}\n{report.table()}",
            file=sys.stderr,
        )
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="run every experiment and write its results")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.set_defaults(run=reproduce)
    p = sub.add_parser("gradcheck", help="audit every registered hand-derived gradient")
    p.add_argument("--seeds", type=int, default=3, help="random draws per case (default: 3)")
    p.add_argument("--only", default="", help="audit only the cases whose name starts with this")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers its own cases (repeatable)")  # fmt: skip
    p.set_defaults(run=gradcheck)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
