"""The ``jaxnn`` command line: audit the hand-derived gradients, train an MLP.

* ``jaxnn gradcheck [--seeds N] [--import MODULE ...] [--only PREFIX] [--list] [--quiet]`` —
  audits every registered hand-derived gradient against ``jax.grad`` and finite differences at
  random shapes and seeds (the list in :mod:`jaxnn.audit`) and prints a table and a summary
  line (``N passed, M failed, K errors``). ``--import`` loads a module of yours (from the
  working folder too) that registers its own cases with :func:`jaxnn.gradcheck.register`. A
  case that fails to build or raises while being checked is an ERROR row; the audit goes on
  through every other case. ``--list`` prints the cases (those ``--only`` selects) and checks
  nothing.
* ``jaxnn train [--data NAME] [--hidden 128,64] [--activation relu] [--batchnorm] [--dropout
  P] [--optimizer adam] [--lr 1e-3] [--epochs 20] [--grad manual] [--compute-dtype bfloat16]
  [--devices N] [--checkpoint DIR] [--resume [--fallback]] [--seed N] [--out DIR]`` — trains an MLP
  (:mod:`jaxnn.run`): a progress bar over the epochs, one line of metrics per epoch, the final
  test accuracy; ``metrics.json`` and ``learning_curve.png`` in ``DIR`` (default ``runs/``).
  ``--devices N`` trains data-parallel on ``N`` local devices (:mod:`jaxnn.parallel`; on the
  CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` simulates them).
* ``jaxnn --version`` — the installed version.

More commands plug in through :func:`main`'s ``commands`` (:func:`parser` lists them
before its own): the ``jaxnn`` console script of the repository's experiments package adds
``reproduce`` that way, and nothing in this package imports the experiments.
``python -m jaxnn.cli`` runs this module's commands alone.

Exit status, argparse's convention:

* 0 — success: every check passed, the run finished.
* 1 — a gradient mismatch (``gradcheck``), a training run that diverged (``train``: a NaN or
  infinite loss or metric; its record is written, with the test metrics of the best finite
  epoch).
* 2 — a usage error: bad arguments (for ``train`` also data files that are missing or
  corrupt, a ``--checkpoint`` folder that holds what jaxnn did not write or another run's
  checkpoints, a damaged checkpoint), an ``--import`` module that cannot be found or raises
  while importing, an ``--only`` that matches no case, an ``--out`` that is not a writable
  folder; and audit cases that fail to build or raise while being checked. When an audit has
  both mismatches and errors, 2 wins: the audit is incomplete, and a case that raised may
  hide a mismatch of its own.
* 130 — interrupted (Ctrl-C), in one line; ``train`` first finishes a checkpoint being saved
  and writes the record of the epochs done, and says how to resume.

stdout holds the report only (``jaxnn gradcheck > audit.txt`` gives the table and the
summary); progress bars and the details of failures and errors go to stderr. Progress shows
only when stderr is a terminal, and never with ``--quiet`` (``-q``, an option of each
subcommand).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from tqdm import tqdm

__all__ = ["Command", "main", "out_problem", "parser", "version"]

Command = Callable[[Any, argparse.ArgumentParser], None]
"""A subcommand to add: called with the parser's subcommands (what ``add_subparsers``
returns) and the parent parser that holds ``-q/--quiet``, it adds one with
``add_parser(name, parents=[quiet], help=...)`` and sets ``run``, the function of the parsed
arguments that returns the exit status: ``set_defaults(run=...)``."""

_DESCRIPTION = (
    "jaxnn: the fundamentals of training neural networks in JAX, every gradient derived by "
    "hand and checked against jax.grad. Each command below does one job; 'jaxnn COMMAND "
    "--help' lists its options."
)
_EPILOG = (
    "Documentation: README.md and docs/ in the jaxnn repository; help('jaxnn') in Python for "
    "the API.",
    "Exit status: 0 success; 1 a check or a run that failed (a gradient mismatch, an "
    "experiment that raised, a diverged training run); 2 a usage error, an --import that "
    "cannot be imported, or audit cases that raised; 130 interrupted (Ctrl-C).",
)
_HEADER = (
    "case",
    "seed",
    "shapes",
    "hand vs jax.grad (rel)",
    "vs finite diff (err/bound)",
    "ok",
)


def version() -> str:
    """jaxnn's version: the installed distribution's, else ``jaxnn.__version__``."""
    try:
        return importlib.metadata.version("jaxnn")
    except importlib.metadata.PackageNotFoundError:
        from jaxnn._version import __version__

        return __version__


def _progress_disabled(quiet: bool) -> bool | None:
    # None is tqdm's "shown only when the stream is a terminal".
    return True if quiet else None


# ----------------------------------------------------------------------------- gradcheck


def _seeds(text: str) -> int:
    """argparse type of ``--seeds``: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 1 (random draws per case), got {text!r}; e.g. --seeds 3"
        )
    return n


def _where(e: BaseException) -> str:
    """``file:line`` where ``e`` was raised (for a SyntaxError, where the bad line is)."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    frames = traceback.extract_tb(e.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _import_user_modules(modules: Sequence[str]) -> str | None:
    """Import each ``--import`` module; the reason one cannot be, or None."""
    if modules and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: your module in this folder
    importlib.invalidate_caches()  # a module written just before the run is found
    for module in modules:
        if module.endswith(".py") or "/" in module or os.sep in module:
            return (
                f"--import expects a module name, got {module!r}, a file path. Run jaxnn from "
                f"the folder holding the file and give its name without .py: --import {Path(module).stem}."
            )
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
                return (
                    f"--import {module}: no module named {e.name!r} on the path (the working "
                    f"folder {os.getcwd()} included). Run jaxnn from the folder that holds "
                    f"{module.replace('.', '/')}.py, or add that folder to PYTHONPATH."
                )
            return _import_raised(module, e)
        except Exception as e:  # SyntaxError included: the module exists but does not load
            return _import_raised(module, e)
    return None


def _import_raised(module: str, e: BaseException) -> str:
    return (
        f"--import {module}: importing it raised {type(e).__name__} at {_where(e)}: {e}. Fix "
        f"the module (python -c 'import {module}' shows the traceback) and run again."
    )


class _Check(NamedTuple):
    """One case at one seed, as the table and stderr report it."""

    row: tuple[str, ...]  # the table's cells, as _HEADER
    status: str  # "ok", "MISMATCH" or "ERROR"
    detail: str  # what stderr says of a mismatch or an error; "" when ok


def _check(name: str, make: Callable[[Any], Any], seed: int) -> _Check:
    """Build the case ``name`` at ``seed`` and check it; an exception is an ERROR row."""
    import jax

    from jaxnn import gradcheck as gc

    stage, shapes = "building the case", "-"
    try:
        with jax.enable_x64(True):
            case = make(jax.random.key(seed))
            stage, shapes = "checking it", str(case.shapes) or "-"
            report = gc.check_case(case, key=jax.random.key(seed), raise_on_mismatch=False)
    except Exception as e:  # recorded, and the audit goes on
        trace = "".join(traceback.format_exception(e)).rstrip()
        return _Check(
            (name, str(seed), shapes, "-", "-", "ERROR"),
            "ERROR",
            f"{name} (seed {seed}): ERROR while {stage}: {type(e).__name__}: {e}\n{trace}",
        )
    fd = [p for leaf in report.leaves for p in leaf.pairs if p.pair[1] == gc.FD]
    # err/bound at each pair's worst element (the element with the largest ratio)
    worst_fd = max(
        (abs(p.value_a - p.value_b) / p.tolerance if p.tolerance else 0.0 for p in fd),
        default=0.0,
    )
    status = "ok" if report.ok else "MISMATCH"
    detail = f"{name} (seed {seed}): {report.mismatch()}" if not report.ok else ""
    rel = f"{report.max_rel_err((gc.HAND, gc.AUTO)):.2e}"
    return _Check((name, str(seed), shapes, rel, f"{worst_fd:.2f}", status), status, detail)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _source(name: str, make: Callable[[Any], Any]) -> str:
    """Where a case comes from: jaxnn's audit, or the module that registered it."""
    from jaxnn import audit

    return "jaxnn.audit" if name in audit.CASES else getattr(make, "__module__", None) or "?"


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def gradcheck(args: argparse.Namespace) -> int:
    from jaxnn import audit
    from jaxnn import gradcheck as gc

    problem = _import_user_modules(args.imports)
    if problem:
        print(f"jaxnn gradcheck: {problem}", file=sys.stderr)
        return 2
    try:
        every_case = audit.cases()
    except ValueError as e:  # a user case named like one of the library's
        print(f"jaxnn gradcheck: {e}", file=sys.stderr)
        return 2
    cases = sorted((k, v) for k, v in every_case.items() if k.startswith(args.only))
    if not cases:
        groups = ", ".join(sorted({k.split(".")[0] + "." for k in every_case}))
        print(
            f"jaxnn gradcheck: no registered case starts with {args.only!r}. --only expects "
            f"the start of a case name, e.g. one of the groups {groups}",
            file=sys.stderr,
        )
        return 2
    if args.list:
        _print_table(("case", "from"), [(k, _source(k, v)) for k, v in cases])
        return 0

    checks: list[_Check] = []
    bar = tqdm(
        total=len(cases) * args.seeds,
        desc="gradcheck",
        unit="check",
        leave=False,
        disable=_progress_disabled(args.quiet),
    )
    with bar:
        for name, make in cases:
            for seed in range(args.seeds):
                bar.set_postfix_str(f"{name}, seed {seed}")  # the check that runs
                checks.append(_check(name, make, seed))
                bar.update()

    _print_table(_HEADER, [c.row for c in checks])
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "MISMATCH", "ERROR")}
    print(
        f"\n{counts['ok']} passed, {counts['MISMATCH']} failed, {_plural(counts['ERROR'], 'error')} "
        f"(rtol {gc.RTOL:g} vs jax.grad; finite differences within their derived bound when "
        "err/bound <= 1)"
    )
    sys.stdout.flush()  # the table before the details, when both go to one terminal
    for c in checks:
        if c.detail:
            print(f"\n{c.detail}", file=sys.stderr)
    if counts["ERROR"]:
        print(
            f"\njaxnn gradcheck: {_plural(counts['ERROR'], 'check')} raised instead of "
            f"completing (exit 2: the audit is incomplete), {counts['MISMATCH']} mismatched. "
            "Fix the cases named above; their tracebacks say where they raised.",
            file=sys.stderr,
        )
        return 2
    if counts["MISMATCH"]:
        print(
            f"\njaxnn gradcheck: {_plural(counts['MISMATCH'], 'check')} mismatched (exit 1); "
            "the tables above name the leaf and the pair of gradients that disagree.",
            file=sys.stderr,
        )
        return 1
    return 0


# ----------------------------------------------------------------------------- train


def _number(kind: type, low: float, high: float | None = None, *, open_low: bool = False):
    """An argparse type: a number of ``kind`` in ``[low, high)`` (``(low, ...`` if open)."""

    def parse(text: str) -> Any:
        what = f"{'a whole number' if kind is int else 'a number'} "
        what += f"{'>' if open_low else '>='} {low:g}" + (
            f" and < {high:{'d' if kind is int else 'g'}}" if high else ""
        )
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = (value > low if open_low else value >= low) and (high is None or value < high)
        if not ok or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes separated by commas, e.g. 128,64, got {text!r}"
        )
    return sizes


def _train_parser(sub: Any, quiet: argparse.ArgumentParser) -> None:
    from jaxnn.activations import ACTIVATIONS
    from jaxnn.data import DATASETS
    from jaxnn.run import MODELS, OPTIMIZERS, SEED_LIMIT, RunConfig

    d = RunConfig()
    p = sub.add_parser("train", parents=[quiet], help="train an MLP or a CNN on a data set")
    a = p.add_argument
    a(
        "--model",
        choices=MODELS,
        default=d.model,
        help="mlp: dense layers (--hidden); cnn: a convolutional network on the images of "
        "digits or MNIST (--channels, --blocks, --residual) (default: mlp)",
    )
    a("--data", choices=DATASETS, default=d.data, help=f"data set (default: {d.data})")
    a(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of MNIST-format files (IDX, optionally .gz, or .npz) for mnist/fashion_mnist",
    )
    a(
        "--hidden",
        type=_hidden,
        default=d.hidden,
        metavar="N,N",
        help="hidden layer sizes (default: 128,64)",
    )
    a(
        "--channels",
        type=_hidden,
        default=d.channels,
        metavar="N,N",
        help="cnn: each stage's channels; every stage after the first halves the image "
        "(default: 32,64)",
    )
    a(
        "--blocks",
        type=_number(int, 1),
        default=d.blocks,
        metavar="N",
        help="cnn: blocks of two 3x3 convolutions per stage (default: 1)",
    )
    a(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=d.residual,
        help="cnn: residual blocks, y = relu(block(x) + shortcut(x)) (default: off)",
    )
    a(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default=d.activation,
        metavar="NAME",
        help=f"hidden activation, one of {', '.join(sorted(ACTIVATIONS))} (default: relu)",
    )
    a(
        "--batchnorm",
        action=argparse.BooleanOptionalAction,
        default=d.batchnorm,
        help="BatchNorm in each hidden layer; cnn: after each convolution (default: on)",
    )
    a(
        "--dropout",
        type=_number(float, 0, 1),
        default=d.dropout,
        metavar="P",
        help="dropout rate after each hidden activation, in [0, 1) (default: 0)",
    )
    a("--optimizer", choices=sorted(OPTIMIZERS), default=d.optimizer, help="default: adam")
    a(
        "--lr",
        type=_number(float, 0, open_low=True),
        default=d.lr,
        help="learning rate (default: 1e-3)",
    )
    a(
        "--l2",
        type=_number(float, 0),
        default=d.l2,
        metavar="SCALE",
        help="L2 penalty (scale/2)·Σw² on the kernels (default: 0)",
    )
    a("--epochs", type=_number(int, 1), default=d.epochs, help="default: 20")
    a("--batch-size", type=_number(int, 1), default=d.batch_size, help="default: 32")
    a(
        "--grad",
        choices=("autodiff", "manual"),
        default=d.grad,
        help="gradient path: jax.grad, or the hand-derived rules (default: autodiff)",
    )
    a(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default=d.compute_dtype,
        help="bfloat16: mixed precision, bfloat16 matmuls with float32 master weights, "
        "BatchNorm and loss (default: float32)",
    )
    a(
        "--devices",
        type=_number(int, 1),
        default=d.devices,
        metavar="N",
        help="data parallelism: replicate the model on N local devices and split each "
        "minibatch among them; --batch-size must be divisible by N (default: 1)",
    )
    a(
        "--seed",
        type=_number(int, 0, SEED_LIMIT),
        default=d.seed,
        help=f"a whole number in [0, {SEED_LIMIT}): JAX keys keep 32 bits of a seed (default: 0)",
    )
    a(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help="save a checkpoint after every epoch in DIR (the last 3 kept)",
    )
    a(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint DIR",
    )
    a(
        "--fallback",
        action="store_true",
        help="with --resume: if the latest checkpoint is damaged, resume from the newest intact "
        "one and set the damaged ones aside (renamed DIR/N.damaged; nothing is deleted)",
    )
    a("--out", default="runs", help="folder for metrics.json and learning_curve.png "
      "(default: runs)")  # fmt: skip
    p.set_defaults(run=train)


def out_problem(out: str) -> str | None:
    """Why the folder ``out`` cannot receive a command's results, or None. It is created if
    missing, and a temporary file is created and removed in it: what the command will do, done
    first (``jaxnn train`` and ``jaxnn reproduce`` call it before any work)."""
    from jaxnn.run import writable_folder

    try:
        writable_folder(out, "--out")
    except OSError as e:
        return str(e)
    return None


def train(args: argparse.Namespace) -> int:
    from jaxnn import checkpoint as _checkpoint
    from jaxnn import run as _run

    def fail(message: str) -> int:
        print(f"jaxnn train: {message}", file=sys.stderr)
        return 2

    if args.resume and args.checkpoint is None:
        return fail("--resume needs --checkpoint DIR (the folder to resume from).")
    if args.fallback and not args.resume:
        return fail("--fallback applies to --resume (resume from the newest intact checkpoint).")
    try:  # the options are each valid (argparse); a combination may not be (cnn on moons)
        config = _run.RunConfig(
            data=args.data, data_dir=args.data_dir, model=args.model, hidden=tuple(args.hidden),
            channels=tuple(args.channels), blocks=args.blocks, residual=args.residual,
            activation=args.activation, batchnorm=args.batchnorm, dropout=args.dropout,
            optimizer=args.optimizer, lr=args.lr, l2=args.l2, epochs=args.epochs,
            batch_size=args.batch_size, grad=args.grad, seed=args.seed,
            compute_dtype=args.compute_dtype, devices=args.devices,
        )  # fmt: skip
    except ValueError as e:
        return fail(str(e))
    problem = out_problem(args.out)
    if problem:
        return fail(problem)
    try:
        result = _run.run(
            config, out=args.out, checkpoint_dir=args.checkpoint, resume=args.resume,
            fallback=args.fallback, progress=False if args.quiet else None,
            log=lambda line: tqdm.write(line, file=sys.stdout),
        )  # fmt: skip
    except _checkpoint.CheckpointDamaged as e:
        older = [s for s in e.steps if s < e.step]
        fix = (
            f"--fallback resumes from epoch {older[-1]} and sets {e.step} aside"
            if older
            else "no earlier checkpoint is intact: start a new run in another folder"
        )
        return fail(f"the checkpoint {e.directory / str(e.step)} is damaged ({e.reason}); {fix}.")
    except _run.Interrupted as e:
        if e.saved is not None:
            kept = (
                f"{e.checkpoint_dir} holds epochs up to {e.saved}: continue with the same "
                f"options and --checkpoint {e.checkpoint_dir} --resume"
            )
        else:
            kept = "no checkpoint was saved (--checkpoint DIR keeps one after each epoch)"
        record = f"; {e.written[0]} holds the record" if e.written else ""
        print(
            f"jaxnn train: interrupted after {e.epochs} epoch(s); {kept}{record}.",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, OSError, ImportError) as e:  # bad data, files, options
        return fail(str(e))
    diverged = result.get("diverged")
    if diverged:
        values = ", ".join(f"{k} {v}" for k, v in diverged["values"].items())
        kept = (
            f"; {args.checkpoint} holds epoch {result['test_epoch']} (the latest finite state)"
            if args.checkpoint is not None and result["test_epoch"]
            else ""
        )
        tested = (
            f"epoch {result['test_epoch']}, the best finite one"
            if result["test_epoch"]
            else "the initial state (no epoch was finite)"
        )
        print(
            f"jaxnn train: the run diverged at epoch {diverged['epoch']} ({values}) and "
            f"stopped; {Path(args.out) / 'metrics.json'} holds its record, with the test "
            f"metrics of {tested}{kept}. Lower --lr, or look for NaN or inf in the data.",
            file=sys.stderr,
        )
        return 1
    return 0


# ----------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    """The ``jaxnn`` parser: ``commands`` (each a :data:`Command`, listed first), then
    ``gradcheck`` and ``train``."""
    top = _Parser(
        prog="jaxnn",
        description=textwrap.fill(_DESCRIPTION, 88),
        epilog="\n\n".join(textwrap.fill(p, 88) for p in _EPILOG),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress on stderr (progress shows only when stderr is a terminal)",
    )  # fmt: skip
    sub = top.add_subparsers(title="commands", dest="command", required=True)
    for command in commands:
        command(sub, quiet)
    p = sub.add_parser(
        "gradcheck", parents=[quiet], help="audit every registered hand-derived gradient"
    )
    p.add_argument("--seeds", type=_seeds, default=3, metavar="N",
                   help="random draws per case, a whole number >= 1 (default: 3)")  # fmt: skip
    p.add_argument("--only", default="", metavar="PREFIX",
                   help="audit only the cases whose name starts with this")  # fmt: skip
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers its own cases (repeatable)")  # fmt: skip
    p.add_argument("--list", action="store_true",
                   help="print the cases (with --only: those it selects) and exit")  # fmt: skip
    p.set_defaults(run=gradcheck)
    _train_parser(sub, quiet)
    # The commands in usage and errors, e.g. "{reproduce,gradcheck,train}", not "command".
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return top


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = ()) -> int:
    """Run ``jaxnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Args:
      argv: the arguments after ``jaxnn``.
      commands: more subcommands (see :data:`Command`), listed before the library's own.

    Usage errors exit through argparse (``SystemExit(2)``), as ``--version`` and ``--help``
    do (``SystemExit(0)``).
    """
    args = parser(commands).parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training run: one line, the shell's 130
        print(f"jaxnn {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
