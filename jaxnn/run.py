"""A training run from a configuration: data, network, optimizer, ``fit``, checkpoints, results.

What ``jaxnn train`` does, callable from Python::

    config = RunConfig(data="digits", hidden=(128, 64), epochs=20)
    result = jaxnn.run.run(config, out="runs/digits")          # metrics.json, learning_curve.png
    result["test"]["accuracy"]

The network is ``mlp([*hidden, classes], activation, batchnorm=..., dropout=...)`` trained
with softmax cross-entropy on integer labels; each epoch is one compiled scan
(:func:`jaxnn.fitting.fit`), evaluated on the validation part after it. With a checkpoint
folder the state is saved after every finite epoch (:mod:`jaxnn.checkpoint`: the last three
kept); ``resume=True`` continues from the latest one, bit for bit as the uninterrupted run, up
to ``config.epochs`` epochs in all. The test part is evaluated once, at the end. A run that
diverges or is interrupted still writes its record (:func:`run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import checkpoint as _checkpoint
from jaxnn import data as _data
from jaxnn import parallel as _parallel
from jaxnn.backprop import GRAD_MODES
from jaxnn.evaluation import evaluate
from jaxnn.fitting import DivergenceWarning, fit
from jaxnn.networks import cnn, mlp
from jaxnn.regularization import l2 as _l2
from jaxnn.train import TrainState

__all__ = [
    "IMAGE_SHAPES",
    "MODELS",
    "OPTIMIZERS",
    "Interrupted",
    "RunConfig",
    "build",
    "load_metrics",
    "run",
    "writable_folder",
]

LOSS = "softmax_cross_entropy_with_integer_labels"
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
}
KEEP = 3  # checkpoints kept
COMPUTE_DTYPES: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}  # mlp's compute_dtype


MODELS = ("mlp", "cnn")
# One example's (H, W, C) for the image data sets (their inputs come flat, [n, H·W·C]).
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
}
SEED_LIMIT = 2**32  # jax.random.key(seed) keeps 32 bits of the seed: 2**32 gives key(0)


def _fail(kind: type[Exception], field: str, expected: str, value: Any) -> Exception:
    return kind(
        f"RunConfig.{field} must be {expected}, got {type(value).__name__} {value!r}. "
        f"(jaxnn train --help lists every option and its default.)"
    )


def _whole(value: Any, field: str, low: int, high: int | None = None) -> int:
    what = f"a whole number >= {low}" + (f" and < {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _fail(TypeError, field, what, value)
    if value < low or (high is not None and value >= high):
        raise _fail(ValueError, field, what, value)
    return int(value)


def _real(value: Any, field: str, what: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(TypeError, field, what, value)
    if not (math.isfinite(value) and ok(float(value))):
        raise _fail(ValueError, field, what, value)
    return float(value)


def _choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        kind = TypeError if not isinstance(value, str) else ValueError
        raise _fail(kind, field, f"one of {', '.join(sorted(choices))}", value)
    return value


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run (saved in its checkpoints and its metrics JSON).

    The defaults train digits to about 98% test accuracy in well under a minute on 2 CPU
    cores: an MLP 64-128-64-10 with BatchNorm and ReLU, Adam at 1e-3, batches of 32.

    Every field is checked when the config is made, as the command line checks its options:
    a wrong type is a ``TypeError`` and a value out of range a ``ValueError``, each naming
    the field (``"0.1"`` is not a learning rate, ``"no"`` is not ``False``, ``2.0`` is not a
    batch size). ``hidden`` may be given as a list; it is kept as a tuple.
    """

    data: str = "digits"  # a name of jaxnn.data.DATASETS
    data_dir: str | None = None  # the folder of MNIST-format files (mnist, fashion_mnist)
    # "mlp": mlp([*hidden, classes], ...). "cnn": jaxnn.networks.cnn on the images of an image
    # data set (digits 8x8, MNIST 28x28): a stem and one stage per entry of `channels`, each of
    # `blocks` two-convolution blocks (residual ones with `residual`), BatchNorm after every
    # convolution with `batchnorm`; `hidden`, `dropout` and `compute_dtype` are the MLP's.
    model: str = "mlp"
    hidden: tuple[int, ...] = (128, 64)
    channels: tuple[int, ...] = (32, 64)
    blocks: int = 1
    residual: bool = False
    activation: str = "relu"
    batchnorm: bool = True
    dropout: float = 0.0  # in [0, 1)
    optimizer: str = "adam"
    lr: float = 1e-3  # > 0
    l2: float = 0.0  # >= 0
    epochs: int = 20  # >= 1: the run's total, a resumed run's earlier epochs included
    batch_size: int = 32  # >= 1
    grad: str = "autodiff"
    seed: int = 0  # in [0, 2**32): jax.random.key keeps 32 bits of a seed
    # "float32": every layer computes in the params' dtype (float32; float64 under
    # jax_enable_x64). "bfloat16": mixed precision, mlp's compute_dtype (float32 master
    # weights, bfloat16 matmuls, BatchNorm and the loss in float32).
    compute_dtype: str = "float32"
    # Data parallelism (jaxnn.parallel): the state replicated on this many local devices (of
    # each process, after jax.distributed.initialize), each minibatch split among them. It
    # changes the order of sums, not the math: a run may resume with another count.
    devices: int = 1

    def __post_init__(self) -> None:
        from jaxnn.activations import ACTIVATIONS

        put = functools.partial(object.__setattr__, self)
        _choice(self.data, "data", _data.DATASETS)
        if self.data_dir is not None:
            if not isinstance(self.data_dir, str | os.PathLike):
                raise _fail(TypeError, "data_dir", "a folder's path or None", self.data_dir)
            put("data_dir", os.fspath(self.data_dir))
        hidden = self.hidden
        if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
            raise _fail(TypeError, "hidden", "a sequence of layer sizes, e.g. (128, 64)", hidden)
        put("hidden", tuple(_whole(h, f"hidden[{i}]", 1) for i, h in enumerate(hidden)))
        _choice(self.model, "model", MODELS)
        channels = self.channels
        if isinstance(channels, str | bytes) or not isinstance(channels, Sequence) or not channels:
            raise _fail(
                TypeError, "channels", "a sequence of channel counts, e.g. (32, 64)", channels
            )
        put("channels", tuple(_whole(c, f"channels[{i}]", 1) for i, c in enumerate(channels)))
        put("blocks", _whole(self.blocks, "blocks", 1))
        if not isinstance(self.residual, bool | np.bool_):
            raise _fail(TypeError, "residual", "True or False", self.residual)
        put("residual", bool(self.residual))
        _choice(self.activation, "activation", list(ACTIVATIONS))
        if not isinstance(self.batchnorm, bool | np.bool_):
            raise _fail(TypeError, "batchnorm", "True or False", self.batchnorm)
        put("batchnorm", bool(self.batchnorm))
        put("dropout", _real(self.dropout, "dropout", "a number in [0, 1)", lambda p: 0 <= p < 1))
        _choice(self.optimizer, "optimizer", list(OPTIMIZERS))
        put("lr", _real(self.lr, "lr", "a positive number", lambda v: v > 0))
        put("l2", _real(self.l2, "l2", "a number >= 0", lambda v: v >= 0))
        put("epochs", _whole(self.epochs, "epochs", 1))
        put("batch_size", _whole(self.batch_size, "batch_size", 1))
        _choice(self.grad, "grad", GRAD_MODES)
        put("seed", _whole(self.seed, "seed", 0, SEED_LIMIT))
        _choice(self.compute_dtype, "compute_dtype", list(COMPUTE_DTYPES))
        put("devices", _whole(self.devices, "devices", 1))
        if self.model == "cnn":
            if self.data not in IMAGE_SHAPES:
                raise ValueError(
                    f"RunConfig.model: 'cnn' needs images; {self.data!r} is not an image data "
                    f"set (images: {', '.join(sorted(IMAGE_SHAPES))}). Use model='mlp'."
                )
            for field, default in (("dropout", 0.0), ("compute_dtype", "float32")):
                if getattr(self, field) != default:
                    raise ValueError(
                        f"RunConfig.{field}: {getattr(self, field)!r} is an option of the MLP; "
                        f"the cnn model takes {default!r} (leave it out)."
                    )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["channels"] = list(self.channels)
        return out

    def differences(self, saved: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
        """``"field: saved X, now Y"`` for each field that differs from a saved config.

        A field the saved config lacks (saved before the field existed) counts as its default.
        """
        now, default = self.to_json(), type(self)().to_json()
        saved = {**default, **saved}
        return [
            f"{k}: saved {saved.get(k)!r}, now {now[k]!r}"
            for k in now
            if k not in ignore and saved.get(k) != now[k]
        ]


def build(config: RunConfig, splits: _data.Splits) -> tuple[Any, optax.GradientTransformation]:
    """The network and the optimizer a configuration names (its fields were checked when it
    was made)."""
    if config.model == "cnn":
        net = cnn(
            IMAGE_SHAPES[config.data],
            config.channels,
            splits.num_classes,
            blocks_per_stage=config.blocks,
            residual=config.residual,
            norm="batchnorm" if config.batchnorm else None,
            activation=config.activation,
        )
        return net, OPTIMIZERS[config.optimizer](config.lr)
    net = mlp(
        [*config.hidden, splits.num_classes],
        config.activation,
        batchnorm=config.batchnorm,
        dropout=config.dropout,
        compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    return net, OPTIMIZERS[config.optimizer](config.lr)


class Interrupted(KeyboardInterrupt):
    """:func:`run` was interrupted (Ctrl-C); what it kept is in the attributes."""

    def __init__(self, epochs: int, saved: int | None, checkpoint_dir: Path | None,
                 written: list[Path]) -> None:  # fmt: skip
        super().__init__(f"interrupted after {epochs} epoch(s)")
        self.epochs = epochs  # epochs completed (a resumed run's earlier ones included)
        self.saved = saved  # the latest checkpoint's epoch, or None
        self.checkpoint_dir = checkpoint_dir
        self.written = written  # the record's files (metrics.json, learning_curve.png)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it: a checkpoint being saved is
    finished first. Only the main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder that exists (created, parents too) and can be written.

    A temporary file is created and removed in it: what the run will do, done first.

    Raises:
      NotADirectoryError, PermissionError, OSError: naming ``what`` (e.g. ``"--out"``), the
        path, why, and the fix.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"{what} expects a folder (new or existing), got {str(path)!r}, which is a file. "
            f"Name a folder, or move the file away."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(
            f"{what} expects a folder that can be created, got {str(path)!r}, which cannot be "
            f"({e.strerror or e}). Name a folder under one you can write to."
        ) from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise type(e)(
            f"{what} expects a folder that can be written, got {str(path)!r}, which cannot be "
            f"written ({e.strerror or e}). Name a folder you can write to, or fix its "
            f"permissions."
        ) from None
    return folder


def run(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    fallback: bool = False,
    progress: bool | None = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says; write ``metrics.json`` and ``learning_curve.png`` into ``out``.

    Every path is checked before anything is loaded or trained: ``out`` must be a folder that
    can be written, and ``checkpoint_dir`` a folder that holds nothing but jaxnn's checkpoints
    (:func:`jaxnn.checkpoint.prepare`), none of them unless ``resume``.

    **Every ending leaves its record.** ``metrics.json`` says how the run ended in
    ``"status"``:

    * ``"completed"`` — every epoch ran; ``"test"`` holds the final state's test metrics.
    * ``"diverged"`` — an epoch's loss or metric was NaN or infinite (``fit`` stops there):
      ``"diverged"`` names the epoch and the values, the history keeps that epoch's record,
      ``"test"`` holds the metrics of the best finite epoch (``"test_epoch"``), and the
      diverged state is not checkpointed: the latest checkpoint is the last finite epoch.
    * ``"interrupted"`` — Ctrl-C: the epochs completed so far, no test metrics; a checkpoint
      being saved is finished first. :class:`Interrupted` is raised after writing.

    JSON has no NaN or infinity: ``metrics.json`` writes them as the strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"`` (the names Python's and JavaScript's parsers use for
    the non-standard tokens); :func:`load_metrics` reads them back as floats.

    Args:
      config: the run.
      out: the folder for the results (created); ``None`` writes nothing.
      checkpoint_dir: save the state after every finite epoch there (the last 3 kept).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` (its configuration
        must equal ``config`` but for ``epochs`` and ``devices``); a folder without one starts
        afresh.
      fallback: with ``resume``, when the latest checkpoint is damaged, resume from the newest
        intact one and set the damaged ones aside (renamed ``<step>.damaged``; nothing is
        deleted). Without it a damaged checkpoint raises
        :class:`jaxnn.checkpoint.CheckpointDamaged`.
      progress: a bar over the epochs on stderr (``None``: when stderr is a terminal).
      log: receives one line per epoch and the summary (e.g. ``print``).

    Returns:
      What ``metrics.json`` holds (with float NaN and infinities): the configuration, the
      status, the per-epoch history, the test metrics (loss, accuracy, confusion matrix) and
      the epoch they are of, throughput and wall times.

    Raises:
      Interrupted: Ctrl-C (a ``KeyboardInterrupt``), after the record was written.
      ValueError, TypeError, OSError: a bad configuration, path, data file or checkpoint.
    """
    say = log or (lambda line: None)
    checkpoint_dir = _check_paths(config, out, checkpoint_dir, resume, fallback)
    mesh = _parallel.data_mesh(config.devices, "")  # before the data: a bad count fails fast
    _parallel.batch_size_per_device(config.batch_size, mesh, "")
    per = "all" if config.model == "cnn" else "feature"  # a convolution wants whole images
    splits = _data.load(config.data, data_dir=config.data_dir, seed=config.seed, per=per)
    network, optimizer = build(config, splits)
    train, val, test = splits.train, splits.validation, splits.test
    ts = TrainState.create(
        network, optimizer, jax.random.key(config.seed), (config.batch_size, train.x.shape[1])
    )
    # On the mesh before a restore: the checkpoint's arrays are restored onto it (any device
    # count, whatever the count that saved them; with several processes, global arrays).
    ts = _parallel.replicate(ts, mesh)
    ts, history, saved = _resume(config, ts, checkpoint_dir, resume, fallback, say)
    epochs = _Epochs(config, checkpoint_dir, history, saved, say)

    def record(status: str, **fields: Any) -> dict[str, Any]:
        return {
            "config": config.to_json(), "status": status, "data": _data_summary(splits),
            "history": [*history, *epochs.records], **fields, "backend": jax.default_backend(),
        }  # fmt: skip

    start = time.perf_counter()
    result = None
    try:
        if config.epochs > len(history):
            with warnings.catch_warnings():  # the divergence is reported below, in the record
                warnings.simplefilter("ignore", DivergenceWarning)
                result = fit(
                    network, LOSS, optimizer, ts, (train.x, train.y),
                    epochs=config.epochs - len(history), batch_size=config.batch_size,
                    validation=(val.x, val.y), grad=config.grad,
                    penalty=_l2(config.l2) if config.l2 > 0 else None, history=history,
                    callback=epochs, progress=progress, devices=mesh,
                )  # fmt: skip
        else:
            say(f"the checkpoint has all {config.epochs} epochs already: evaluating it")
    except KeyboardInterrupt:
        partial = record("interrupted", test=None, test_epoch=None, diverged=None,
                         seconds=time.perf_counter() - start)  # fmt: skip
        written = _write(Path(out), partial, say) if out is not None else []
        done = len(history) + len(epochs.records)
        raise Interrupted(done, epochs.saved, checkpoint_dir, written) from None
    wall = time.perf_counter() - start
    tested, test_epoch, diverged = _outcome(result, ts, len(history))
    scores = evaluate(network, LOSS, tested.params, tested.state, test.x, test.y, devices=mesh)
    result_json = record(
        "diverged" if diverged else "completed",
        test=scores,
        test_epoch=test_epoch,
        diverged=diverged,
        examples_per_second=_throughput(epochs.records, train.x.shape[0], config.batch_size),
        seconds=wall,
    )
    if not diverged:
        what = f"after {test_epoch} epochs"
    elif test_epoch:
        what = f"of epoch {test_epoch}, the best finite one"
    else:
        what = "of the initial state (no epoch was finite)"
    say(
        f"test accuracy {scores['accuracy']:.4f}, test loss {scores['loss']:.4f} {what} "
        f"({wall:.1f} s)"
    )
    if out is not None:
        _write(Path(out), result_json, say)
    return result_json


def _check_paths(
    config: Any, out: Any, checkpoint_dir: Any, resume: bool, fallback: bool
) -> Path | None:
    """Refuse a bad configuration or path before anything is loaded; the checkpoint folder."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"run: config must be a RunConfig, got {type(config).__name__}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs a checkpoint folder (--checkpoint DIR).")
    if fallback and not resume:
        raise ValueError("fallback applies to resuming: pass resume=True (--resume) with it.")
    if out is not None:
        writable_folder(out, "--out")
    if checkpoint_dir is None:
        return None
    checkpoint_dir = Path(checkpoint_dir)
    steps = _checkpoint.prepare(checkpoint_dir)
    if steps and not resume:
        raise ValueError(
            f"--checkpoint {checkpoint_dir} holds the checkpoints of a run (epochs "
            f"{steps}). Continue it with --resume (resume=True), or give this run a folder "
            f"of its own."
        )
    return checkpoint_dir


def _resume(
    config: RunConfig,
    ts: TrainState,
    checkpoint_dir: Path | None,
    resume: bool,
    fallback: bool,
    say: Callable[[str], None],
) -> tuple[TrainState, list[dict[str, float]], int | None]:
    """The state, the history and the saved epoch to go on from: the latest checkpoint's with
    ``resume`` (damaged ones set aside with ``fallback``), else ``ts`` and nothing."""
    if not resume or _checkpoint.latest_step(checkpoint_dir) is None:
        return ts, [], None
    restored = _checkpoint.restore(checkpoint_dir, ts, fallback=fallback)
    for step, reason in restored.skipped:
        aside = _checkpoint.set_aside(checkpoint_dir, step)
        say(f"checkpoint {step} is damaged ({reason}): set aside as {aside}")
    problems = config.differences(restored.config, ignore=("epochs", "devices"))
    if problems:
        raise ValueError(
            f"--resume: the checkpoint in {checkpoint_dir} is of another run "
            f"({'; '.join(problems)}). Resume with the same options, or use a new folder."
        )
    say(f"resumed from {checkpoint_dir} after epoch {restored.step}")
    return restored.train_state, list(restored.extra.get("history", [])), restored.step


class _Epochs:
    """``fit``'s callback: logs each epoch, keeps its record and checkpoints every finite one
    (a diverged state is never checkpointed). ``saved`` is the latest epoch saved."""

    def __init__(self, config, checkpoint_dir, history, saved, say) -> None:
        self.config, self.checkpoint_dir, self.history = config, checkpoint_dir, history
        self.saved, self.say = saved, say
        self.records: list[dict[str, float]] = []

    def __call__(self, epoch: int, state: TrainState, record: dict[str, float]) -> None:
        line = (
            f"epoch {epoch:3d}  loss {record['loss']:.4f}  val_loss {record['val_loss']:.4f}  "
            f"val_accuracy {record['val_accuracy']:.4f}  ({record['seconds']:.2f} s)"
        )
        finite = all(math.isfinite(v) for v in record.values())
        if self.checkpoint_dir is None or not finite:
            self.say(line)
            self.records.append(record)
            return
        # The line, the record and the checkpoint as one: a Ctrl-C by someone who has seen the
        # epoch's line is held until that epoch is saved.
        with _sigint_deferred():
            self.say(line)
            self.records.append(record)
            _checkpoint.save(
                self.checkpoint_dir, state, step=epoch, config=self.config.to_json(),
                extra={"history": [*self.history, *self.records]}, keep=KEEP,
            )  # fmt: skip
            self.saved = epoch  # before a deferred Ctrl-C is raised, at the block's end


def _data_summary(splits: _data.Splits) -> dict[str, Any]:
    train = splits.train
    return {
        "name": splits.name,
        "train": int(train.x.shape[0]),
        "validation": int(splits.validation.x.shape[0]),
        "test": int(splits.test.x.shape[0]),
        "features": int(train.x.shape[1]),
        "classes": splits.num_classes,
    }


def _outcome(
    result: Any, ts: TrainState, earlier: int
) -> tuple[TrainState, int, dict[str, Any] | None]:
    """The state to test, its epoch, and the divergence (epoch and non-finite values) if any:
    the final state, or after a divergence the best finite one."""
    if result is None:  # every epoch was in the checkpoint
        return ts, earlier, None
    if result.diverged is None:
        return result.state, len(result.history), None
    bad = result.history[result.diverged - 1]
    diverged = {
        "epoch": result.diverged,
        "values": {k: v for k, v in bad.items() if not math.isfinite(v)},
    }
    return result.best, result.best_epoch, diverged


def _throughput(records: list[dict[str, float]], n: int, batch_size: int) -> float | None:
    """Examples per second over this process's epochs but the first (which compiles)."""
    trained = records[1:] if len(records) > 1 else records
    seconds = sum(r["seconds"] for r in trained)
    return (n // batch_size) * batch_size * len(trained) / seconds if seconds > 0 else None


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats as the strings ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"`` (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def load_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``metrics.json`` that :func:`run` wrote, with the numbers of its history, test
    metrics and divergence as floats again (``"NaN"`` → ``nan``, ``"Infinity"`` → ``inf``)."""
    metrics = json.loads(Path(path).read_text())

    def numbers_of(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in d.items()}

    metrics["history"] = [numbers_of(r) for r in metrics.get("history", [])]
    for key in ("test",):
        metrics[key] = numbers_of(metrics.get(key))
    if isinstance(metrics.get("diverged"), dict):
        metrics["diverged"]["values"] = numbers_of(metrics["diverged"].get("values"))
    return metrics


def _write(out: Path, result: dict[str, Any], say: Callable[[str], None]) -> list[Path]:
    """Write ``metrics.json`` and ``learning_curve.png``; one process of several writes."""
    if jax.process_index() != 0:
        return []
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False)
    (out / "metrics.json").write_text(text + "\n")
    written = [out / "metrics.json"]
    try:
        from matplotlib.figure import Figure
    except ImportError:
        say("matplotlib is not installed: no learning_curve.png (pip install matplotlib)")
    else:
        h = result["history"]
        epochs = [r["epoch"] for r in h]
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        ax_loss.plot(epochs, [r["loss"] for r in h], label="training (train mode)")
        ax_loss.plot(epochs, [r["val_loss"] for r in h], label="validation")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_acc.plot(epochs, [r["val_accuracy"] for r in h], label="validation", color="C1")
        test = result.get("test")
        if test is not None:
            ax_acc.axhline(test["accuracy"], ls="--", color="k", lw=1,
                           label=f"test, epoch {result['test_epoch']}: {test['accuracy']:.4f}")  # fmt: skip
        diverged = result.get("diverged")
        for ax in (ax_loss, ax_acc):
            if diverged:
                ax.axvline(
                    diverged["epoch"],
                    color="C3",
                    lw=1,
                    label=f"diverged (epoch {diverged['epoch']})",
                )
            ax.set_xlabel("epoch")
            ax.legend()
            ax.grid(alpha=0.3)
        ax_acc.set(ylabel="accuracy", title="accuracy")
        cfg = result["config"]
        status = "" if result["status"] == "completed" else f" [{result['status']}]"
        fig.suptitle(
            f"{cfg['data']}: mlp {cfg['hidden']} {cfg['activation']}"
            f"{' + BN' if cfg['batchnorm'] else ''}, {cfg['optimizer']} lr {cfg['lr']:g}, "
            f"grad={cfg['grad']}{status}"
        )
        fig.savefig(out / "learning_curve.png", dpi=110)
        written.append(out / "learning_curve.png")
    say("wrote " + " and ".join(str(p) for p in written))
    return written
