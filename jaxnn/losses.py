"""Losses, each with its hand-derived gradient with respect to the predictions.

Every loss takes ``(predictions, targets)`` of the same shape (integer labels excepted) and
refuses to broadcast: a ``[batch, 1]`` prediction against a ``[batch]`` target is an error,
not a silent ``[batch, batch]`` loss.

Reductions, named:

* :func:`squared_error` — the sum ``E = Σ ½ (target - out)²`` of the backprop derivation
  (no mean), so ``∂E/∂out = out - target``.
* :func:`mean_squared_error` — ``mean (out - target)²`` over every element.
* the cross-entropies — the mean over the batch (every axis but the last, the class axis,
  for the softmax ones; every element for the binary one).

:class:`Loss` bundles a loss with its gradient; :data:`LOSSES` lists them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn._checks import ensure_float, ensure_min_rank, ensure_same_shape, unknown_name
from jaxnn._typing import Array, ArrayLike
from jaxnn.activations import log_softmax, sigmoid, softmax, softplus

__all__ = [
    "LOSSES",
    "Loss",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "get",
    "mean_squared_error",
    "mean_squared_error_grad",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy_with_integer_labels_grad",
    "squared_error",
    "squared_error_grad",
]


def _pair(predictions: ArrayLike, targets: ArrayLike) -> tuple[Array, Array]:
    predictions = ensure_float(predictions, "predictions")
    targets = jnp.asarray(targets)
    ensure_same_shape(predictions, targets, "predictions", "targets")
    return predictions, targets.astype(predictions.dtype)


# ----------------------------------------------------------------------------- squared error


def squared_error(predictions: ArrayLike, targets: ArrayLike) -> Array:
    """``E = Σ ½ (target - out)²`` over every element (the backprop derivation's error).

    Args:
      predictions: ``out``, any shape.
      targets: same shape as ``predictions``.
    """
    out, target = _pair(predictions, targets)
    return 0.5 * jnp.sum((target - out) ** 2)


def squared_error_grad(predictions: ArrayLike, targets: ArrayLike) -> Array:
    """``∂E/∂out = -(target - out) = out - target`` (the ½ cancels the 2 of the square)."""
    out, target = _pair(predictions, targets)
    return out - target


def mean_squared_error(predictions: ArrayLike, targets: ArrayLike) -> Array:
    """``L = (1/N) Σ (out - target)²`` with ``N`` the number of elements."""
    out, target = _pair(predictions, targets)
    return jnp.mean((out - target) ** 2)


def mean_squared_error_grad(predictions: ArrayLike, targets: ArrayLike) -> Array:
    """``∂L/∂out = 2 (out - target) / N``."""
    out, target = _pair(predictions, targets)
    return 2 * (out - target) / out.size


# ----------------------------------------------------------------------------- cross-entropy


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``L = -(1/B) Σ_b Σ_c y_bc log softmax(z_b)_c`` for one-hot (or soft) labels ``y``.

    Args:
      logits: ``z``, shape ``[..., classes]``; ``B`` is the product of the leading axes.
      labels: same shape; each row a probability vector.
    """
    z, y = _pair(logits, labels)
    ensure_min_rank(z, 1, "logits", "[..., classes]")
    batch = max(z.size // max(z.shape[-1], 1), 1)
    return -jnp.sum(y * log_softmax(z)) / batch


def softmax_cross_entropy_grad(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``∂L/∂z_bc = (softmax(z_b)_c Σ_k y_bk - y_bc) / B``; ``(softmax - y)/B`` for one-hot y."""
    z, y = _pair(logits, labels)
    ensure_min_rank(z, 1, "logits", "[..., classes]")
    batch = max(z.size // max(z.shape[-1], 1), 1)
    return (softmax(z) * jnp.sum(y, axis=-1, keepdims=True) - y) / batch


def _integer_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[Array, Array]:
    z = ensure_float(logits, "logits")
    ensure_min_rank(z, 1, "logits", "[..., classes]")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"labels must be integer class indices, got dtype {labels.dtype}. For one-hot or "
            f"soft labels use softmax_cross_entropy."
        )
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"labels must have the logits' shape without the class axis: logits.shape="
            f"{z.shape} needs labels.shape={z.shape[:-1]}, got labels.shape={labels.shape}."
        )
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        concrete = np.asarray(labels)
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi >= z.shape[-1]:
            raise ValueError(
                f"labels must lie in [0, {z.shape[-1]}) for {z.shape[-1]} classes, got values "
                f"from {lo} to {hi}."
            )
    return z, labels


def softmax_cross_entropy_with_integer_labels(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``L = -(1/B) Σ_b log softmax(z_b)_{label_b}``.

    Args:
      logits: shape ``[..., classes]``.
      labels: integer class indices, shape ``[...]`` (the logits' shape without the last axis).
        Out-of-range labels are refused when the labels are concrete; under ``jit`` they cannot
        be inspected.
    """
    z, labels = _integer_labels(logits, labels)
    batch = max(labels.size, 1)
    picked = jnp.take_along_axis(log_softmax(z), labels[..., None], axis=-1)
    return -jnp.sum(picked) / batch


def softmax_cross_entropy_with_integer_labels_grad(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``∂L/∂z_bc = (softmax(z_b)_c - [c = label_b]) / B``."""
    z, labels = _integer_labels(logits, labels)
    batch = max(labels.size, 1)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
    return (softmax(z) - onehot) / batch


def binary_cross_entropy_with_logits(logits: ArrayLike, targets: ArrayLike) -> Array:
    """``L = (1/N) Σ [softplus(z) - t z]``, which equals ``-t log σ(z) - (1-t) log(1-σ(z))``.

    The softplus form is finite for logits of +-1e4, where ``log σ(z)`` would be ``log 0``.

    Args:
      logits: ``z``, any shape.
      targets: ``t`` in [0, 1], same shape.
    """
    z, t = _pair(logits, targets)
    return jnp.mean(softplus(z) - t * z)


def binary_cross_entropy_with_logits_grad(logits: ArrayLike, targets: ArrayLike) -> Array:
    """``∂L/∂z = (σ(z) - t) / N``."""
    z, t = _pair(logits, targets)
    return (sigmoid(z) - t) / z.size


# ----------------------------------------------------------------------------- the record


class Loss(NamedTuple):
    """A loss ``fn(predictions, targets) -> scalar`` and its gradient w.r.t. the predictions."""

    name: str
    fn: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("squared_error", squared_error, squared_error_grad),
        Loss("mean_squared_error", mean_squared_error, mean_squared_error_grad),
        Loss("softmax_cross_entropy", softmax_cross_entropy, softmax_cross_entropy_grad),
        Loss(
            "softmax_cross_entropy_with_integer_labels",
            softmax_cross_entropy_with_integer_labels,
            softmax_cross_entropy_with_integer_labels_grad,
        ),
        Loss(
            "binary_cross_entropy_with_logits",
            binary_cross_entropy_with_logits,
            binary_cross_entropy_with_logits_grad,
        ),
    )
}


def get(loss: str | Loss) -> Loss:
    """Look a loss up by name, or pass a :class:`Loss` through."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"loss must be a name ({', '.join(sorted(LOSSES))}) or a Loss, got "
            f"{type(loss).__name__}."
        )
    if loss not in LOSSES:
        raise unknown_name("loss", str(loss), list(LOSSES), "losses")
    return LOSSES[loss]
