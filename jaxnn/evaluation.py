"""Evaluation: a network's outputs and scores in eval mode, batched and jitted.

* :func:`predict` — the outputs of ``network.apply(params, state, x, train=False)``
  (BatchNorm's running statistics, no dropout), ``batch_size`` examples at a time.
* :func:`evaluate` — the data loss and, for a classification loss
  (:func:`jaxnn.losses.is_classification`), the accuracy and the confusion matrix
  (:mod:`jaxnn.metrics`).

Both check their concrete arguments first (the params and state must be the network's for
inputs like ``x``; the targets what the loss takes) and take ``devices=`` to split each batch
over a mesh (:mod:`jaxnn.parallel`); the scores are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn import losses as _losses
from jaxnn import metrics as _metrics
from jaxnn import parallel as _parallel
from jaxnn._inputs import check_data, check_network, ensure_pair, positive_int
from jaxnn._typing import Array, ArrayLike, Layer, Params, State

__all__ = ["evaluate", "predict"]


@functools.lru_cache(maxsize=64)
def _predictor(
    network: Layer, batch_size: int, mesh: Mesh | None
) -> Callable[[Params, State, Array], Array]:
    d = 1 if mesh is None else mesh.shape[_parallel.BATCH_AXIS]

    def apply(params: Params, state: State, xb: Array) -> Array:
        return network.apply(params, state, _parallel.shard_batch(xb, mesh), train=False)[0]

    def run(params: Params, state: State, x: Array) -> Array:
        n = x.shape[0]
        size = -(-min(batch_size, n) // d) * d  # a chunk: at most batch_size, split d ways
        if size == n:
            return apply(params, state, x)
        batches = -(-n // size)
        padded = jnp.concatenate([x, jnp.zeros((batches * size - n, *x.shape[1:]), x.dtype)])
        if batches == 1:
            return apply(params, state, padded)[:n]
        chunks = padded.reshape(batches, size, *x.shape[1:])
        y = jax.lax.map(lambda xb: apply(params, state, xb), chunks)
        return y.reshape(batches * size, *y.shape[2:])[:n]

    if mesh is None:
        return jax.jit(run)
    replicated = NamedSharding(mesh, P())
    return jax.jit(run, in_shardings=replicated, out_shardings=replicated)


def predict(
    network: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    *,
    batch_size: int = 1024,
    devices: _parallel.Devices = None,
) -> Array:
    """The network's outputs in eval mode (``train=False``: BatchNorm's running statistics,
    no dropout), ``batch_size`` examples at a time, jitted.

    In eval mode every example's output depends on that example alone, so batching changes
    nothing but memory: the last batch is padded and the padding's outputs dropped.

    ``devices`` (:func:`jaxnn.parallel.data_mesh`): each batch is split over the mesh's
    ``"batch"`` axis (its size rounded up to a multiple of the devices), params and state
    replicated; the outputs come back replicated on every device (and process).

    Args:
      network: the network (a :class:`~jaxnn.Layer`).
      params, state: its params and state (e.g. ``ts.params``, ``ts.state``).
      x: the inputs, ``[n, ...]`` with ``n > 0``.

    Returns:
      ``[n, ...]``, the outputs of ``network.apply(params, state, x, train=False)``.
    """
    batch_size = positive_int(batch_size, "predict: batch_size")
    mesh = _parallel.data_mesh(devices, "predict")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"predict: x must be [examples, ...] with examples > 0, got {x.shape}.")
    check_network(network, params, state, x, "predict")
    if mesh is not None:
        params, state, x = _parallel.replicate((params, state, x), mesh)
    return _predictor(network, batch_size, mesh)(params, state, x)


def evaluate(
    network: Layer,
    loss: str | _losses.Loss,
    params: Params,
    state: State,
    x: ArrayLike,
    targets: ArrayLike,
    *,
    batch_size: int = 1024,
    devices: _parallel.Devices = None,
) -> dict[str, Any]:
    """The loss and, for a classification loss, accuracy and confusion matrix, in eval mode.

    ``devices``: the batches split over a mesh, as :func:`predict`; the scores are the same.

    Args:
      network, loss: the network and the loss (name or :class:`~jaxnn.losses.Loss`).
      params, state: the network's params and state.
      x, targets: the examples, one per row, and what the loss takes for them.

    Returns:
      ``{"loss": float, "accuracy": float, "confusion": [[int]]}`` (the last two for the
      classification losses only: :func:`jaxnn.losses.is_classification`). ``loss`` is the data loss
      of the whole set (no penalty), as ``loss(predict(...), targets)``; ``confusion[i][j]``
      counts the examples of class ``i`` predicted as ``j``.
    """
    loss = _losses.get(loss)
    batch_size = positive_int(batch_size, "evaluate: batch_size")
    mesh = _parallel.data_mesh(devices, "evaluate")
    x, targets = ensure_pair(x, targets, "evaluate")
    check_data(network, loss, params, state, x, targets, "evaluate")
    return _evaluate(network, loss, params, state, x, targets, batch_size, mesh)


def _evaluate(network, loss, params, state, x, targets, batch_size, mesh) -> dict[str, Any]:
    """:func:`evaluate` of checked arguments."""
    if mesh is not None:
        params, state, x, targets = _parallel.replicate((params, state, x, targets), mesh)
    y = _predictor(network, batch_size, mesh)(params, state, x)
    return _scores(loss, y, targets)


def _scores(loss: _losses.Loss, y: Array, targets: Array) -> dict[str, Any]:
    value, acc, confusion = _score_fn(loss)(y, targets)
    out: dict[str, Any] = {"loss": float(value)}
    if _metrics.is_classification(loss):
        out["accuracy"] = float(acc)
        out["confusion"] = np.asarray(confusion).tolist()
    return out


@functools.lru_cache(maxsize=64)
def _score_fn(loss: _losses.Loss) -> Callable[[Array, Array], tuple[Array, Array, Array]]:
    @jax.jit
    def scores(y: Array, targets: Array):
        value = loss.fn(y, targets)
        if not _metrics.is_classification(loss):
            return value, jnp.nan, jnp.zeros((0, 0), jnp.int32)
        return (
            value,
            _metrics.accuracy(y, targets, loss),
            _metrics.confusion_matrix(y, targets, loss),
        )

    return scores
