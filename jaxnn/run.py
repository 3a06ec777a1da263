"""A training run from a configuration: data, network, optimizer, ``fit``, checkpoints, results.

What ``jaxnn train`` does, callable from Python::

    config = RunConfig(data="digits", hidden=(128, 64), epochs=20)
    result = jaxnn.run.run(config, out="runs/digits")          # metrics.json, learning_curve.png
    result["test"]["accuracy"]

The network is ``mlp([*hidden, classes], activation, batchnorm=..., dropout=...)`` trained
with softmax cross-entropy on integer labels; each epoch is one compiled scan
(:func:`jaxnn.train.fit`), evaluated on the validation part after it. With a checkpoint
folder the state is saved after every epoch (:mod:`jaxnn.checkpoint`: the last three kept);
``resume=True`` continues from the latest one, bit for bit as the uninterrupted run, up to
``config.epochs`` epochs in all. The test part is evaluated once, at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn import checkpoint as _checkpoint
from jaxnn import data as _data
from jaxnn import parallel as _parallel
from jaxnn.combinators import mlp
from jaxnn.regularization import l2 as _l2
from jaxnn.train import TrainState, evaluate, fit

__all__ = ["OPTIMIZERS", "RunConfig", "build", "run"]

LOSS = "softmax_cross_entropy_with_integer_labels"
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
}
KEEP = 3  # checkpoints kept
COMPUTE_DTYPES: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}  # mlp's compute_dtype


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run (saved in its checkpoints and its metrics JSON).

    The defaults train digits to about 98% test accuracy in well under a minute on 2 CPU
    cores: an MLP 64-128-64-10 with BatchNorm and ReLU, Adam at 1e-3, batches of 32.
    """

    data: str = "digits"  # a name of jaxnn.data.DATASETS
    data_dir: str | None = None  # the folder of MNIST-format files (mnist, fashion_mnist)
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    batchnorm: bool = True
    dropout: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    l2: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    grad: str = "autodiff"
    seed: int = 0
    # "float32": every layer computes in the params' dtype (float32; float64 under
    # jax_enable_x64). "bfloat16": mixed precision, mlp's compute_dtype (float32 master
    # weights, bfloat16 matmuls, BatchNorm and the loss in float32).
    compute_dtype: str = "float32"
    # Data parallelism (jaxnn.parallel): the state replicated on this many local devices (of
    # each process, after jax.distributed.initialize), each minibatch split among them. It
    # changes the order of sums, not the math: a run may resume with another count.
    devices: int = 1

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
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
    """The network and the optimizer a configuration names (errors name the bad field)."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {sorted(OPTIMIZERS)}, got {config.optimizer!r}."
        )
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive number, got {config.lr!r}.")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {config.compute_dtype!r}."
        )
    net = mlp(
        [*config.hidden, splits.num_classes],
        config.activation,
        batchnorm=config.batchnorm,
        dropout=config.dropout,
        compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    return net, OPTIMIZERS[config.optimizer](config.lr)


def run(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says; write ``metrics.json`` and ``learning_curve.png`` into ``out``.

    Args:
      config: the run.
      out: the folder for the results (created); ``None`` writes nothing.
      checkpoint_dir: save the state after every epoch there (the last 3 kept).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` (its configuration
        must equal ``config`` but for ``epochs``); a folder without one starts afresh.
      progress: a bar over the epochs on stderr (``None``: when stderr is a terminal).
      log: receives one line per epoch and the summary (e.g. ``print``).

    Returns:
      The JSON written to ``metrics.json``: the configuration, the per-epoch history, the
      test metrics (loss, accuracy, confusion matrix), throughput and wall times.
    """
    say = log or (lambda line: None)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs a checkpoint folder (--checkpoint DIR).")
    mesh = _parallel.data_mesh(config.devices, "")  # before the data: a bad count fails fast
    _parallel.batch_size_per_device(config.batch_size, mesh, "")
    splits = _data.load(config.data, data_dir=config.data_dir, seed=config.seed)
    net, optimizer = build(config, splits)
    penalty = _l2(config.l2) if config.l2 > 0 else None
    train, val, test = splits.train, splits.validation, splits.test
    ts = TrainState.create(
        net, optimizer, jax.random.key(config.seed), (config.batch_size, train.x.shape[1])
    )
    # On the mesh before a restore: the checkpoint's arrays are restored onto it (any device
    # count, whatever the count that saved them; with several processes, global arrays).
    ts = _parallel.replicate(ts, mesh)
    history: list[dict[str, float]] = []
    if resume and _checkpoint.latest_step(checkpoint_dir) is not None:
        restored = _checkpoint.restore(checkpoint_dir, ts)
        problems = config.differences(restored.config, ignore=("epochs", "devices"))
        if problems:
            raise ValueError(
                f"--resume: the checkpoint in {checkpoint_dir} is of another run "
                f"({'; '.join(problems)}). Resume with the same options, or use a new folder."
            )
        ts, history = restored.train_state, list(restored.extra.get("history", []))
        say(f"resumed from {checkpoint_dir} after epoch {restored.step}")
    remaining = config.epochs - len(history)

    def after_epoch(epoch: int, state: TrainState, record: dict[str, float]) -> None:
        say(
            f"epoch {epoch:3d}  loss {record['loss']:.4f}  val_loss {record['val_loss']:.4f}  "
            f"val_accuracy {record['val_accuracy']:.4f}  ({record['seconds']:.2f} s)"
        )
        if checkpoint_dir is not None:
            done = [*history, *records_so_far, record]
            _checkpoint.save(
                checkpoint_dir, state, step=epoch, config=config.to_json(),
                extra={"history": done}, keep=KEEP,
            )  # fmt: skip
        records_so_far.append(record)

    records_so_far: list[dict[str, float]] = []
    start = time.perf_counter()
    if remaining > 0:
        result = fit(
            net, LOSS, optimizer, ts, (train.x, train.y), epochs=remaining,
            batch_size=config.batch_size, validation=(val.x, val.y), grad=config.grad,
            penalty=penalty, history=history, callback=after_epoch, progress=progress,
            devices=mesh,
        )  # fmt: skip
        ts, history = result.state, result.history
    else:
        say(f"the checkpoint has all {config.epochs} epochs already: evaluating it")
    wall = time.perf_counter() - start
    scores = evaluate(net, LOSS, ts.params, ts.state, test.x, test.y, devices=mesh)
    trained = history[len(history) - len(records_so_far) :]
    steps_per_epoch = train.x.shape[0] // config.batch_size
    # The first epoch of a process compiles; throughput is measured over the others.
    timed = trained[1:] if len(trained) > 1 else trained
    seconds = sum(r["seconds"] for r in timed)
    result_json = {
        "config": config.to_json(),
        "data": {
            "name": splits.name,
            "train": int(train.x.shape[0]),
            "validation": int(val.x.shape[0]),
            "test": int(test.x.shape[0]),
            "features": int(train.x.shape[1]),
            "classes": splits.num_classes,
        },
        "history": history,
        "test": scores,
        "examples_per_second": (
            steps_per_epoch * config.batch_size * len(timed) / seconds if seconds > 0 else None
        ),
        "seconds": wall,
        "backend": jax.default_backend(),
    }
    say(
        f"test accuracy {scores['accuracy']:.4f}, test loss {scores['loss']:.4f} after "
        f"{len(history)} epochs ({wall:.1f} s)"
    )
    if out is not None and jax.process_index() == 0:  # several processes: one writes
        _write(Path(out), result_json, say)
    return result_json


def _write(out: Path, result: dict[str, Any], say: Callable[[str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
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
        ax_acc.axhline(result["test"]["accuracy"], ls="--", color="k", lw=1,
                       label=f"test, final: {result['test']['accuracy']:.4f}")  # fmt: skip
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
        for ax in (ax_loss, ax_acc):
            ax.legend()
            ax.grid(alpha=0.3)
        cfg = result["config"]
        fig.suptitle(
            f"{cfg['data']}: mlp {cfg['hidden']} {cfg['activation']}"
            f"{' + BN' if cfg['batchnorm'] else ''}, {cfg['optimizer']} lr {cfg['lr']:g}, "
            f"grad={cfg['grad']}"
        )
        fig.savefig(out / "learning_curve.png", dpi=110)
        written.append(out / "learning_curve.png")
    say("wrote " + " and ".join(str(p) for p in written))
