"""``fit``: epochs of minibatches, an evaluation after each, the best state, early stopping.

* :func:`fit` — trains for a number of epochs (each one compiled ``lax.scan``,
  :func:`jaxnn.train.make_epoch`), evaluates in eval mode after each
  (:func:`jaxnn.evaluation.evaluate`), keeps the best state and a record per epoch, stops
  early, and notices a run that diverges (:class:`DivergenceWarning`).
* :class:`EarlyStopping` — the monitoring as a small pure record (as
  ``flax.training.early_stopping.EarlyStopping``): the best finite value of the monitored
  metric, its epoch and the epochs waited since; ``update(epoch, value)`` returns the next.
* :class:`FitResult` — what ``fit`` returns.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn import losses as _losses
from jaxnn import parallel as _parallel
from jaxnn._inputs import check_data, pair_argument, positive_int
from jaxnn._typing import Array, ArrayLike, Layer
from jaxnn.backprop import GradMode
from jaxnn.evaluation import _evaluate
from jaxnn.regularization import Penalty
from jaxnn.train import (
    Remainder,
    TrainState,
    _batches,
    _check_grad_mode,
    _make_epoch,
    _refuse_float16_params,
)

__all__ = ["DivergenceWarning", "EarlyStopping", "FitResult", "fit"]


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    state: TrainState  # after the last epoch run (non-finite if the run diverged)
    best: TrainState  # after the best epoch of this call by `monitor`, always a finite one
    #                   (see best_epoch)
    best_epoch: int  # 1-based epoch with the best finite `monitor`, counting `history`; 0 or
    #                  an epoch of the earlier history when no epoch of this call beat it:
    #                  `best` is then `state`, or the starting state if the run diverged
    history: list[dict[str, float]]  # one record per epoch (see fit)
    stopped_early: bool  # whether early stopping ended the run
    diverged: int | None = None  # the first epoch whose record holds a NaN or inf, if any


class DivergenceWarning(RuntimeWarning):
    """A :func:`fit` epoch ended with a NaN or infinite loss or metric."""


# ----------------------------------------------------------------------------- early stopping

_MODES = ("min", "max")


class EarlyStopping(NamedTuple):
    """The monitoring of a run: the best value of a metric so far, and how long ago it came.

    A pure record, as ``flax.training.early_stopping.EarlyStopping``: :meth:`update` returns a
    new one. An epoch improves when its value is finite and strictly better than the best so
    far (lower with ``mode="min"``, higher with ``mode="max"``); a NaN or infinite value is
    never the best, it only counts as an epoch waited. :attr:`should_stop` once ``patience``
    epochs in a row have not improved.

    A resumed run starts from the earlier epochs' values (:meth:`from_history`): they count
    towards the best value and the patience.

    Example::

        stopping = EarlyStopping.from_history(mode="min", patience=3)
        for epoch in range(1, 101):
            stopping = stopping.update(epoch, validation_loss(epoch))
            if stopping.should_stop:
                break
    """

    mode: Literal["min", "max"] = "min"  # lower is better ("min") or higher ("max")
    patience: int | None = None  # epochs without improvement before stopping; None: never
    best_value: float | None = None  # the best finite value so far; None: none yet
    best_epoch: int = 0  # the epoch of best_value (1-based); before any finite value, the
    #                      last epoch of the history (0 for a fresh run)
    waited: int = 0  # epochs since best_epoch

    @classmethod
    def from_history(
        cls,
        values: Sequence[float] = (),
        *,
        mode: Literal["min", "max"] = "min",
        patience: int | None = None,
    ) -> EarlyStopping:
        """The record after the epochs ``1, ..., len(values)`` of ``values``.

        The best is the best finite value, at its latest epoch on ties; the epochs after it
        have been waited. Without a finite value there is no best yet, and the patience
        counts from the end of the history.

        Raises:
          ValueError: ``mode`` is not ``"min"`` or ``"max"``; ``patience`` is not a positive
            int or None.
          TypeError: a value is not a real number.
        """
        if mode not in _MODES:
            raise ValueError(f"EarlyStopping: mode must be one of {_MODES}, got {mode!r}.")
        if patience is not None:
            patience = positive_int(patience, "EarlyStopping: patience")
        values = list(values)
        for i, v in enumerate(values):
            if not _is_number(v):
                raise TypeError(
                    f"EarlyStopping: values[{i}] (epoch {i + 1}) must be a real number, got "
                    f"{type(v).__name__} {v!r}."
                )
        return cls._from_history(values, mode, patience)

    @classmethod
    def _from_history(
        cls, values: Sequence[float], mode: Literal["min", "max"], patience: int | None
    ) -> EarlyStopping:
        """:meth:`from_history` of checked arguments."""
        scored = [v for v in values if math.isfinite(v)]
        if not scored:
            return cls(mode, patience, None, len(values), 0)
        best = (min if mode == "min" else max)(scored)
        best_epoch = max(i for i, v in enumerate(values, 1) if v == best)
        return cls(mode, patience, best, best_epoch, len(values) - best_epoch)

    def update(self, epoch: int, value: float) -> EarlyStopping:
        """The record after ``epoch`` (the next one) whose monitored value is ``value``."""
        if math.isfinite(value) and (
            self.best_value is None
            or (value < self.best_value if self.mode == "min" else value > self.best_value)
        ):
            return self._replace(best_value=value, best_epoch=epoch, waited=0)
        return self._replace(waited=self.waited + 1)

    @property
    def improved(self) -> bool:
        """Whether the latest epoch set the best value."""
        return self.best_value is not None and self.waited == 0

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row have passed without improvement."""
        return self.patience is not None and self.waited >= self.patience


# ----------------------------------------------------------------------------- fit

_MONITORS: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_accuracy": "max",
                                                "loss": "min"}  # fmt: skip
ON_NONFINITE = ("stop", "continue")


def fit(
    network: Layer,
    loss: str | _losses.Loss,
    optimizer: optax.GradientTransformation,
    ts: TrainState,
    train: tuple[ArrayLike, ArrayLike],
    *,
    epochs: int,
    batch_size: int = 128,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
    remainder: Remainder = "drop",
    monitor: str | None = None,
    patience: int | None = None,
    evaluate_train: bool = False,
    history: Sequence[Mapping[str, float]] = (),
    callback: Callable[[int, TrainState, dict[str, float]], None] | None = None,
    on_nonfinite: Literal["stop", "continue"] = "stop",
    progress: bool | None = False,
    devices: _parallel.Devices = None,
) -> FitResult:
    """Train for ``epochs`` epochs of shuffled minibatches; evaluate after each.

    Each epoch is one compiled ``lax.scan`` (:func:`jaxnn.train.make_epoch`); the data are
    moved to the device once. After each epoch the network is evaluated in eval mode on
    ``validation`` (and on the training set with ``evaluate_train``), and a record is appended
    to the history::

        {"epoch": 3, "loss": mean training loss of the epoch's updates (train mode,
         penalty included), "val_loss": ..., "val_accuracy": ..., "train_loss": ...,
         "train_accuracy": ..., "seconds": wall time of the epoch}

    **A run that diverges is noticed.** An epoch whose record holds a NaN or infinite loss or
    metric ends the run (``on_nonfinite="stop"``) with a :class:`DivergenceWarning` naming
    the epoch and the values; its record stays in the history, ``diverged`` is its number and
    ``best`` is the best finite state (the starting state if no epoch was finite).

    Before anything is compiled, the concrete arguments are checked: ``ts`` must hold params
    and state of ``network``'s shapes for these inputs, the targets must be what the loss
    takes (:func:`jaxnn.losses.check_targets`: e.g. integer labels in ``[0, classes)``),
    ``history`` must be records numbered 1, 2, ... holding the monitor, ``callback`` a
    function of three arguments.

    Args:
      network, loss, optimizer: the network, the loss, an optax ``GradientTransformation``.
      ts: the starting state (:meth:`TrainState.create`, or a restored checkpoint). It is
        not consumed: the first epoch works on a copy.
      train: ``(x, targets)``; ``validation`` likewise, optional.
      epochs: the number of epochs to run (``> 0``).
      batch_size, remainder: the minibatches (:mod:`jaxnn.train`: ``"drop"`` or ``"pad"``).
      grad, penalty: the gradient path and the penalty, as
        :func:`~jaxnn.train.make_train_step`.
      monitor: the record key that chooses the best epoch and drives early stopping
        (:class:`EarlyStopping`): ``"val_loss"`` (default with validation; lower is better),
        ``"val_accuracy"`` (higher is better), or ``"loss"`` (the default without
        validation). Only finite values count.
      patience: stop after this many epochs without improvement of ``monitor``; ``None``
        runs every epoch.
      evaluate_train: also record ``train_loss``/``train_accuracy`` in eval mode.
      history: the records of earlier epochs (a resumed run): epochs are numbered on from
        them and they count towards the best epoch and the patience (non-finite values
        never count as the best). ``best`` is a state of this call's epochs.
      callback: ``callback(epoch, ts, record)`` after each epoch (e.g. to save a
        checkpoint), the diverged epoch's included (check ``record`` before saving ``ts``).
        ``ts`` is valid during the call only (the next epoch donates it): save or copy it
        there.
      on_nonfinite: ``"stop"`` (default) ends the run after the first epoch whose record is
        not finite; ``"continue"`` runs every epoch anyway. Both warn once.
      progress: a tqdm bar over the epochs on stderr with the latest metrics; ``None`` shows
        it only when stderr is a terminal.
      devices: data parallelism (:mod:`jaxnn.parallel`): ``None`` (JAX's default device), a
        number ``N`` (the first ``N`` local devices; ``N`` of each process after
        ``jax.distributed.initialize``), a sequence of devices, or a ``Mesh`` with a
        ``"batch"`` axis. The state and the data sets are replicated on the mesh once, each
        minibatch and each evaluation batch is split over ``"batch"``; ``batch_size`` must be
        divisible by the number of devices. The gradient and BatchNorm's statistics are those
        of the whole minibatch, so the run equals a one-device run to rounding. ``best``,
        ``state`` and the callback's ``ts`` are replicated on the mesh.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError, TypeError: a bad argument (its message names it and the fix), e.g. a
        ``ts`` of another network, labels out of range, ``batch_size`` not divisible by the
        number of devices, or more devices than a process has.

    Warns:
      DivergenceWarning: an epoch's loss or metric is NaN or infinite.
    """
    run = _checked_arguments(
        network, loss, ts, train, validation, epochs, batch_size, devices, grad, remainder,
        monitor, patience, on_nonfinite, history, callback,
    )  # fmt: skip
    loss, mesh, records, earlier = run.loss, run.mesh, run.records, len(run.records)
    epoch_fn = _make_epoch(network, loss, optimizer, run.batch_size, grad, penalty, remainder, mesh)
    (x, targets), val = run.train, run.validation
    if mesh is not None:  # once: the epochs and evaluations then find everything in place
        ts, x, targets = _parallel.replicate((ts, x, targets), mesh)
        if val is not None:
            val = _parallel.replicate(val, mesh)
    evaluated = {"val": val, "train": (x, targets) if evaluate_train else None}
    copy = _copier(mesh)
    start = ts  # never donated: the state to fall back on if no epoch of this call is finite
    ts = copy(ts)  # the caller's state survives the donation
    stopping = EarlyStopping._from_history(
        [r[run.monitor] for r in records], _MONITORS[run.monitor], run.patience
    )
    best, diverged, stopped = start, None, False

    from tqdm.auto import tqdm  # a runtime dependency; imported where it is used

    bar = tqdm(range(earlier + 1, earlier + run.epochs + 1), desc="fit", unit="epoch",
               disable=None if progress is None else not progress, leave=False)  # fmt: skip
    for epoch in bar:
        begin = time.perf_counter()
        ts, losses = epoch_fn(ts, x, targets)
        record = _record(network, loss, ts, epoch, losses, evaluated, mesh, begin)
        records.append(record)
        bar.set_postfix(
            {k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")}
        )
        stopping = stopping.update(epoch, record[run.monitor])
        if stopping.improved:
            best = copy(ts)  # the next epoch donates ts's buffers
        bad = _nonfinite(record)
        if bad and diverged is None:
            diverged = epoch
            message = _divergence(epoch, bad, stopping, run.monitor, earlier, on_nonfinite)
            warnings.warn(message, DivergenceWarning, stacklevel=2)
        if run.callback is not None:
            run.callback(epoch, ts, record)
        if bad and on_nonfinite == "stop":
            break
        if stopping.should_stop:
            stopped = True
            break
    bar.close()
    if stopping.best_epoch <= earlier:  # no epoch of this call beat the earlier ones
        best = ts if diverged is None else start
    return FitResult(ts, best, stopping.best_epoch, records, stopped, diverged)


class _Arguments(NamedTuple):
    """:func:`fit`'s arguments, checked and in the form the run uses."""

    loss: _losses.Loss
    train: tuple[Array, Array]
    validation: tuple[Array, Array] | None
    epochs: int
    batch_size: int
    mesh: Mesh | None
    monitor: str
    patience: int | None
    records: list[dict[str, Any]]  # the history's records, copied: the run appends to them
    callback: Callable[[int, TrainState, dict[str, float]], Any] | None


def _checked_arguments(
    network, loss, ts, train, validation, epochs, batch_size, devices, grad, remainder,
    monitor, patience, on_nonfinite, history, callback,
) -> _Arguments:  # fmt: skip
    """Check every argument of :func:`fit` once, cheap checks first, before any compilation."""
    epochs = positive_int(epochs, "fit: epochs")
    batch_size = positive_int(batch_size, "fit: batch_size")
    mesh = _parallel.data_mesh(devices, "fit")
    _parallel.batch_size_per_device(batch_size, mesh, "fit")
    _check_grad_mode(grad)
    loss = _losses.get(loss)
    if not isinstance(ts, TrainState):
        raise TypeError(
            f"fit: ts must be a TrainState (TrainState.create(network, optimizer, key, "
            f"x.shape), or a restored checkpoint), got a {type(ts).__name__}."
        )
    _refuse_float16_params(ts.params, "fit: ts")
    x, targets = pair_argument(train, "fit: train")
    _batches(x.shape[0], batch_size, remainder, "fit")
    check_data(network, loss, ts.params, ts.state, x, targets, "fit: train")
    val = None
    if validation is not None:
        val = pair_argument(validation, "fit: validation")
        check_data(network, loss, ts.params, ts.state, *val, "fit: validation")
    monitor = monitor or ("val_loss" if validation is not None else "loss")
    if monitor not in _MONITORS or (monitor.startswith("val_") and validation is None):
        raise ValueError(
            f"fit: monitor must be one of {sorted(_MONITORS)} ('val_*' need validation data), "
            f"got {monitor!r}."
        )
    if monitor == "val_accuracy" and not _losses.is_classification(loss):
        raise ValueError(
            f"fit: monitor='val_accuracy' needs a classification loss (targets 'labels', "
            f"'probabilities' or 'binary'), got {loss.name} (targets={loss.targets!r})."
        )
    if patience is not None:
        patience = positive_int(patience, "fit: patience")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"fit: on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    records = _checked_history(history, monitor)
    callback = _checked_callback(callback)
    return _Arguments(loss, (x, targets), val, epochs, batch_size, mesh, monitor, patience,
                      records, callback)  # fmt: skip


def _record(
    network: Layer,
    loss: _losses.Loss,
    ts: TrainState,
    epoch: int,
    losses: Array,
    evaluated: Mapping[str, tuple[Array, Array] | None],
    mesh: Mesh | None,
    begin: float,
) -> dict[str, float]:
    """An epoch's record: the mean training loss of its updates, the eval-mode scores on each
    data set of ``evaluated`` (``{prefix: (x, targets) or None}``), the seconds since
    ``begin``."""
    record: dict[str, float] = {"epoch": epoch, "loss": float(jnp.mean(losses))}
    for prefix, data in evaluated.items():
        if data is not None:
            scores = _evaluate(network, loss, ts.params, ts.state, *data, 1024, mesh)
            record.update({f"{prefix}_{k}": v for k, v in scores.items() if k != "confusion"})
    record["seconds"] = time.perf_counter() - begin
    return record


def _divergence(
    epoch: int, bad: list[str], stopping: EarlyStopping, monitor: str, earlier: int,
    on_nonfinite: str,
) -> str:  # fmt: skip
    """The :class:`DivergenceWarning`'s message: the epoch, its non-finite values, what fit
    does now and which state ``FitResult.best`` is."""
    kept = (
        f"the state after epoch {stopping.best_epoch} ({monitor} {stopping.best_value:.6g})"
        if stopping.best_epoch > earlier
        else "the state fit started from"
    )
    what = "stopped" if on_nonfinite == "stop" else "going on (on_nonfinite='continue')"
    return (
        f"fit: the run diverged at epoch {epoch}: {', '.join(bad)}; {what}. "
        f"FitResult.best is {kept}. Lower the learning rate, or look for NaN or inf "
        f"in the data; jaxnn.debug.checked(step) names the first non-finite step."
    )


@functools.lru_cache(maxsize=16)
def _copier(mesh: Mesh | None) -> Callable[[Any], Any]:
    """Fresh buffers for every leaf, in one dispatch (a ``tree.map`` is one per leaf); with a
    mesh, replicated on it: an epoch's input then has the sharding of its output, so the
    epoch compiles once (a one-device mesh's copy would otherwise leave the mesh)."""
    copy = functools.partial(jax.tree.map, jnp.copy)
    return jax.jit(copy, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _nonfinite(record: Mapping[str, Any]) -> list[str]:
    """``"name value"`` of each number in ``record`` that is NaN or infinite."""
    return [
        f"{k} {v}"
        for k, v in record.items()
        if k not in ("epoch", "seconds") and _is_number(v) and not math.isfinite(v)
    ]


def _checked_history(history: Any, monitor: str) -> list[dict[str, Any]]:
    """The earlier epochs' records, checked: mappings numbered 1, 2, ... with the monitor."""
    if isinstance(history, Mapping | str | bytes) or not isinstance(history, Sequence):
        raise TypeError(
            f"fit: history must be a list of the earlier epochs' records (dicts, as "
            f"FitResult.history holds them), got a {type(history).__name__}."
        )
    records = []
    for i, r in enumerate(history):
        if not isinstance(r, Mapping):
            raise TypeError(
                f"fit: history[{i}] must be a dict (an epoch's record), got a {type(r).__name__}."
            )
        epoch = r.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch != i + 1:
            raise ValueError(
                f"fit: history[{i}] must be the record of epoch {i + 1} (records numbered 1, "
                f"2, ... in order, as FitResult.history holds them), got epoch {epoch!r}. Pass "
                f"the whole history of the run being resumed."
            )
        if not _is_number(r.get(monitor)):
            raise ValueError(
                f"fit: history[{i}] (epoch {epoch}) has no number for the monitor {monitor!r} "
                f"(keys: {sorted(r)}). Resume with the monitor the run was trained with, or "
                f"with the same validation data."
            )
        records.append(dict(r))
    return records


def _checked_callback(callback: Any) -> Callable[[int, TrainState, dict[str, float]], Any] | None:
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(
            f"fit: callback must be a function callback(epoch, ts, record), got a "
            f"{type(callback).__name__}."
        )
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return callback
    try:
        signature.bind(1, None, {})
    except TypeError as e:
        raise TypeError(
            f"fit: callback must take three arguments, callback(epoch, ts, record), but "
            f"{getattr(callback, '__name__', 'it')}{signature} cannot ({e}). E.g. "
            f"lambda epoch, ts, record: ..."
        ) from None
    return callback
