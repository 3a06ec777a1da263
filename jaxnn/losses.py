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

:class:`Loss` bundles a loss with its gradient and what it is (its reduction over the batch,
what its targets are, how to predict a class from its outputs); :data:`LOSSES` lists them by
name.

**Values.** Targets are validated when they are concrete: integer labels in ``[0, classes)``,
probability rows for :func:`softmax_cross_entropy` (non-negative, summing to 1 within
``2 · classes · eps`` of the dtype: the rounding of casting and summing ``classes`` terms),
BCE targets in ``[0, 1]``. A mean over an empty batch is refused. Under ``jit`` the values
cannot be inspected: the conditions are checked in the checking mode
(:mod:`jaxnn.debug`), and an out-of-range integer label gives a NaN loss and a NaN gradient
row for its example, identically in the loss, its hand gradient and ``jax.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn._checks import (
    ensure_float,
    ensure_min_rank,
    ensure_nonempty,
    ensure_same_shape,
    is_traced,
    require,
    unknown_name,
)
from jaxnn._typing import Array, ArrayLike
from jaxnn.activations import log_softmax, sigmoid, softmax, softplus

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "TARGETS",
    "Loss",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "check_targets",
    "get",
    "is_classification",
    "masked",
    "mean_squared_error",
    "mean_squared_error_grad",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy_with_integer_labels_grad",
    "squared_error",
    "squared_error_grad",
]


def _pair(
    predictions: ArrayLike, targets: ArrayLike, who: str | None = None
) -> tuple[Array, Array]:
    """Float predictions and same-shape targets; ``who`` names a loss that is a mean."""
    predictions = ensure_float(predictions, "predictions")
    targets = jnp.asarray(targets)
    ensure_same_shape(predictions, targets, "predictions", "targets")
    if who is not None:
        ensure_nonempty(predictions, "predictions", who, "the mean over no elements is undefined")
    return predictions, targets.astype(predictions.dtype)


def _first(bad: np.ndarray, values: np.ndarray) -> str:
    """The first offending value and its index, for a message."""
    i = tuple(int(k[0]) for k in np.nonzero(bad))
    return f"{values[i].item()!r} at index {i}"


def _bce_targets(who: str, t: Array) -> None:
    if not is_traced(t):
        tv = np.asarray(t)
        bad = ~((tv >= 0) & (tv <= 1))  # NaN included
        if bad.any():
            raise ValueError(
                f"{who}: targets must lie in [0, 1] (probabilities of the positive class), got "
                f"{_first(bad, tv)}. Map labels to {{0, 1}} (e.g. (y + 1) / 2 for ±1 labels)."
            )
    else:
        require((t >= 0) & (t <= 1), f"{who}: targets must lie in [0, 1]")


def _probability_rows(who: str, y: Array) -> None:
    classes = y.shape[-1]
    tol = 2 * classes * float(jnp.finfo(y.dtype).eps)
    if not is_traced(y):
        yv = np.asarray(y)
        if (bad := ~(yv >= 0)).any():
            raise ValueError(
                f"{who}: labels must be probability rows (non-negative, summing to 1), got "
                f"{_first(bad, yv)}. For class indices use "
                f"softmax_cross_entropy_with_integer_labels."
            )
        sums = yv.sum(axis=-1)
        if (bad := ~(np.abs(sums - 1) <= tol)).any():
            raise ValueError(
                f"{who}: each row of labels must sum to 1 (within {tol:.1e}, the rounding of "
                f"{classes} terms), got a row summing to {_first(bad, sums)}. Normalise with "
                f"labels / labels.sum(-1, keepdims=True)."
            )
    else:
        require(y >= 0, f"{who}: labels must be non-negative")
        require(
            jnp.abs(jnp.sum(y, axis=-1) - 1) <= tol,
            f"{who}: each row of labels must sum to 1 (within {tol:.1e})",
        )


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
    out, target = _pair(predictions, targets, "mean_squared_error")
    return jnp.mean((out - target) ** 2)


def mean_squared_error_grad(predictions: ArrayLike, targets: ArrayLike) -> Array:
    """``∂L/∂out = 2 (out - target) / N``."""
    out, target = _pair(predictions, targets, "mean_squared_error")
    return 2 * (out - target) / out.size


# ----------------------------------------------------------------------------- cross-entropy


def _soft_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[Array, Array, int]:
    who = "softmax_cross_entropy"
    z, y = _pair(logits, labels)
    ensure_min_rank(z, 1, "logits", "[..., classes]")
    if z.shape[-1] == 0:
        raise ValueError(f"{who}: logits have 0 classes (shape {z.shape}); need at least 1.")
    ensure_nonempty(z, "logits", who, "the mean over no examples is undefined")
    _probability_rows(who, y)
    return z, y, z.size // z.shape[-1]


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``L = -(1/B) Σ_b Σ_c y_bc log softmax(z_b)_c`` for one-hot (or soft) labels ``y``.

    Args:
      logits: ``z``, shape ``[..., classes]``; ``B`` is the product of the leading axes.
      labels: same shape; each row a probability vector.
    """
    z, y, batch = _soft_labels(logits, labels)
    return -jnp.sum(y * log_softmax(z)) / batch


def softmax_cross_entropy_grad(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``∂L/∂z_bc = (softmax(z_b)_c Σ_k y_bk - y_bc) / B``; ``(softmax - y)/B`` for one-hot y."""
    z, y, batch = _soft_labels(logits, labels)
    return (softmax(z) * jnp.sum(y, axis=-1, keepdims=True) - y) / batch


def _integer_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[Array, Array, Array]:
    """Checked logits and labels, and ``valid = 0 <= label < classes`` per example."""
    who = "softmax_cross_entropy_with_integer_labels"
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
    if z.shape[-1] == 0:
        raise ValueError(f"{who}: logits have 0 classes (shape {z.shape}); need at least 1.")
    ensure_nonempty(labels, "labels", who, "the mean over no examples is undefined")
    classes = z.shape[-1]
    if not is_traced(labels):
        concrete = np.asarray(labels)
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi >= classes:
            raise ValueError(
                f"labels must lie in [0, {classes}) for {classes} classes, got values from {lo} "
                f"to {hi}. (Under jit such a label gives a NaN loss and gradient; "
                f"jaxnn.debug.checked turns it into this error.)"
            )
    valid = (labels >= 0) & (labels < classes)
    if is_traced(labels):
        require(
            valid,
            f"{who}: labels must lie in [0, {classes}), got values from {{lo}} to {{hi}}",
            lo=jnp.min(labels),
            hi=jnp.max(labels),
        )
    return z, labels, valid


def softmax_cross_entropy_with_integer_labels(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``L = -(1/B) Σ_b log softmax(z_b)_{label_b}``.

    Args:
      logits: shape ``[..., classes]``.
      labels: integer class indices, shape ``[...]`` (the logits' shape without the last axis).
        Out-of-range labels are refused when the labels are concrete. Under ``jit`` an
        out-of-range label makes its example's logits row NaN before the loss, so the loss is
        NaN and ``jax.grad`` gives that row NaN, as the hand gradient does; the checking mode
        (:mod:`jaxnn.debug`) raises instead.
    """
    z, labels, valid = _integer_labels(logits, labels)
    poison = jnp.where(valid, 1, jnp.nan).astype(z.dtype)[..., None]  # NaN rows: invalid labels
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(log_softmax(z * poison), safe[..., None], axis=-1)
    return -jnp.sum(picked) / labels.size


def softmax_cross_entropy_with_integer_labels_grad(logits: ArrayLike, labels: ArrayLike) -> Array:
    """``∂L/∂z_bc = (softmax(z_b)_c - [c = label_b]) / B``; NaN rows for out-of-range labels."""
    z, labels, valid = _integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
    grad = (softmax(z) - onehot) / labels.size
    return jnp.where(valid[..., None], grad, jnp.nan)


def binary_cross_entropy_with_logits(logits: ArrayLike, targets: ArrayLike) -> Array:
    """``L = (1/N) Σ [softplus(z) - t z]``, which equals ``-t log σ(z) - (1-t) log(1-σ(z))``.

    The softplus form is finite for logits of +-1e4, where ``log σ(z)`` would be ``log 0``.

    Args:
      logits: ``z``, any shape.
      targets: ``t`` in [0, 1], same shape.
    """
    z, t = _pair(logits, targets, "binary_cross_entropy_with_logits")
    _bce_targets("binary_cross_entropy_with_logits", t)
    return jnp.mean(softplus(z) - t * z)


def binary_cross_entropy_with_logits_grad(logits: ArrayLike, targets: ArrayLike) -> Array:
    """``∂L/∂z = (σ(z) - t) / N``."""
    z, t = _pair(logits, targets, "binary_cross_entropy_with_logits")
    _bce_targets("binary_cross_entropy_with_logits", t)
    return (sigmoid(z) - t) / z.size


# ----------------------------------------------------------------------------- the record

REDUCTIONS = ("mean", "sum")
TARGETS = ("values", "labels", "probabilities", "binary")


class Loss(NamedTuple):
    """A loss ``fn(predictions, targets) -> scalar``, its gradient, and what it is.

    Masking (:func:`masked`), the metrics (:mod:`jaxnn.metrics`), ``fit``'s ``monitor``, the
    target checks (:func:`check_targets`) and the audit read these fields, never the name, so
    a loss of your own behaves as a built-in one::

        Loss("multiclass_hinge", hinge, hinge_grad, reduction="mean", targets="labels")

    Attributes:
      name: the name :func:`get` knows it by (and the messages use).
      fn: ``L = fn(predictions, targets)``, a scalar.
      grad: ``∂L/∂predictions``, hand-derived, the predictions' shape.
      reduction: how the per-example terms ``ℓ_i`` (example ``i`` along the first axis)
        combine over the batch: ``"mean"``, ``L = (1/B) Σ_i ℓ_i``, or ``"sum"``,
        ``L = Σ_i ℓ_i``. :func:`masked` keeps it over the selected examples.
      targets: what the targets are, and so whether the loss classifies:

        * ``"values"`` — real targets of the predictions' shape (regression: no classes).
        * ``"labels"`` — integer class indices ``[...]`` for outputs ``[..., classes]``.
        * ``"probabilities"`` — probability rows ``[..., classes]`` (one-hot or soft); the
          true class is the row's ``argmax``.
        * ``"binary"`` — the probability of class 1, the outputs' shape; the true class is
          ``target > ½``.
      predict: ``outputs -> predicted class`` (int), for a classification loss; ``None``
        takes the default of ``targets``: ``argmax`` over the last axis, or ``output > 0``
        for ``"binary"`` (the outputs are logits: ``σ(z) > ½``).
    """

    name: str
    fn: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    reduction: str = "mean"
    targets: str = "values"
    predict: Callable[[Array], Array] | None = None


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("squared_error", squared_error, squared_error_grad, reduction="sum"),
        Loss("mean_squared_error", mean_squared_error, mean_squared_error_grad),
        Loss(
            "softmax_cross_entropy",
            softmax_cross_entropy,
            softmax_cross_entropy_grad,
            targets="probabilities",
        ),
        Loss(
            "softmax_cross_entropy_with_integer_labels",
            softmax_cross_entropy_with_integer_labels,
            softmax_cross_entropy_with_integer_labels_grad,
            targets="labels",
        ),
        Loss(
            "binary_cross_entropy_with_logits",
            binary_cross_entropy_with_logits,
            binary_cross_entropy_with_logits_grad,
            targets="binary",
        ),
    )
}


def is_classification(loss: str | Loss) -> bool:
    """Whether the loss's targets are classes (its ``targets`` is not ``"values"``)."""
    return get(loss).targets != "values"


def check_targets(
    loss: str | Loss, targets: ArrayLike, output_shape: tuple[int, ...], who: str
) -> None:
    """Refuse concrete targets that ``loss`` cannot take for outputs of ``output_shape``.

    What the loss's ``targets`` says, checked on the values before anything is compiled
    (under ``jit`` they cannot be; see the module docstring): ``"labels"`` are integers of
    the outputs' shape without the class axis, each in ``[0, classes)``; ``"probabilities"``
    are non-negative rows of the outputs' shape summing to 1; ``"binary"`` targets lie in
    ``[0, 1]``; ``"values"`` have the outputs' shape. A traced ``targets`` is not checked.

    Raises:
      ValueError, TypeError: naming ``who``, what was expected, what came and the fix.
    """
    loss = get(loss)
    if is_traced(targets):
        return
    t = np.asarray(targets)
    output_shape = tuple(output_shape)
    if loss.targets == "labels":
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(
                f"{who}: the loss {loss.name} takes integer class labels, got targets of dtype "
                f"{t.dtype}. Convert them with jnp.asarray(targets, jnp.int32) (one-hot rows "
                f"need a loss with targets='probabilities')."
            )
        if t.shape != output_shape[:-1]:
            raise ValueError(
                f"{who}: the network's outputs have shape {output_shape}, so the loss "
                f"{loss.name} needs labels of shape {output_shape[:-1]} (one per example), got "
                f"{t.shape}."
            )
        classes = output_shape[-1]
        if t.size and (t.min() < 0 or t.max() >= classes):
            bad = (t < 0) | (t >= classes)
            raise ValueError(
                f"{who}: labels must lie in [0, {classes}) for the network's {classes} outputs, "
                f"got {_first(bad, t)} (values from {t.min()} to {t.max()}). Give the last "
                f"layer as many units as there are classes, or fix the labels."
            )
        return
    if t.shape != output_shape:
        raise ValueError(
            f"{who}: the network's outputs have shape {output_shape}, so the loss {loss.name} "
            f"needs targets of that shape, got {t.shape}. jaxnn does not broadcast silently."
        )
    if loss.targets == "probabilities" and t.size:
        _probability_rows(f"{who}: {loss.name}", jnp.asarray(t, jnp.result_type(float)))
    elif loss.targets == "binary" and t.size:
        _bce_targets(f"{who}: {loss.name}", jnp.asarray(t))
    elif loss.targets == "values" and not np.issubdtype(t.dtype, np.number):
        raise TypeError(f"{who}: targets must be numbers, got dtype {t.dtype}.")


def masked(loss: str | Loss) -> Loss:
    """The loss over the examples a mask selects; its targets are ``(targets, mask)``.

    With per-example losses ``ℓ_i`` (the loss of example ``i`` alone, ``i`` along the first
    axis) and ``mask [batch]`` (bool), the loss keeps its reduction::

        reduction "mean":  L = Σ_i m_i ℓ_i / Σ_i m_i     ∂L/∂y_i = m_i ∂ℓ_i/∂y_i / Σ_i m_i
        reduction "sum":   L = Σ_i m_i ℓ_i               ∂L/∂y_i = m_i ∂ℓ_i/∂y_i

    so that a batch padded to a fixed size and masked gives the loss of its real examples
    (:func:`jaxnn.fitting.fit` with ``remainder="pad"``). Masked-out examples contribute exactly
    0 to the value and the gradient, whatever their values. The gradient is the base loss's
    hand-derived gradient, example by example.
    """
    base = get(loss)
    total = base.reduction == "sum"

    def weights(predictions: Array, targets: tuple[Array, Array]) -> tuple[Array, Array, Array]:
        if not (isinstance(targets, tuple) and len(targets) == 2):
            raise TypeError(
                f"masked {base.name}: targets must be a pair (targets, mask), got "
                f"{type(targets).__name__}."
            )
        t, mask = targets
        y = jnp.asarray(predictions)
        mask = jnp.asarray(mask)
        ensure_min_rank(y, 1, "predictions", "[batch, ...]")
        if mask.dtype != jnp.bool_ or mask.shape != y.shape[:1]:
            raise ValueError(
                f"masked {base.name}: mask must be bool of shape [batch] = {y.shape[:1]}, got "
                f"{mask.dtype} {mask.shape}."
            )
        m = mask.astype(y.dtype)
        return y, jnp.asarray(t), (m if total else m / jnp.sum(m))

    def fn(predictions: ArrayLike, targets: tuple[Array, Array]) -> Array:
        y, t, w = weights(predictions, targets)
        per_example = jax.vmap(lambda yi, ti: base.fn(yi[None], ti[None]))(y, t)
        return jnp.sum(jnp.where(w > 0, w * per_example, 0))

    def grad(predictions: ArrayLike, targets: tuple[Array, Array]) -> Array:
        y, t, w = weights(predictions, targets)
        g = jax.vmap(lambda yi, ti: base.grad(yi[None], ti[None])[0])(y, t)
        w = w.reshape(w.shape + (1,) * (y.ndim - 1))
        return jnp.where(w > 0, w * g, 0)

    return base._replace(fn=fn, grad=grad)


def get(loss: str | Loss) -> Loss:
    """Look a loss up by name, or check a :class:`Loss` and pass it through.

    Raises:
      ValueError: an unknown name, or a ``Loss`` whose ``reduction`` or ``targets`` is not
        one of :data:`REDUCTIONS`, :data:`TARGETS`.
      TypeError: ``loss`` is neither, or a ``Loss`` whose ``fn``, ``grad`` or ``predict`` is
        not callable.
    """
    if isinstance(loss, Loss):
        _check_record(loss)
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"loss must be a name ({', '.join(sorted(LOSSES))}) or a Loss, got "
            f"{type(loss).__name__}."
        )
    if loss not in LOSSES:
        raise unknown_name("loss", str(loss), list(LOSSES), "losses")
    return LOSSES[loss]


def _check_record(loss: Loss) -> None:
    who = f"Loss {loss.name!r}"
    for field in ("fn", "grad"):
        if not callable(getattr(loss, field)):
            raise TypeError(
                f"{who}: {field} must be a function (predictions, targets) -> array, got "
                f"{type(getattr(loss, field)).__name__}."
            )
    if loss.predict is not None and not callable(loss.predict):
        raise TypeError(
            f"{who}: predict must be a function outputs -> class labels, or None, got "
            f"{type(loss.predict).__name__}."
        )
    if loss.reduction not in REDUCTIONS:
        raise ValueError(
            f"{who}: reduction must be one of {REDUCTIONS} (how the examples' terms combine "
            f"over the batch), got {loss.reduction!r}."
        )
    if loss.targets not in TARGETS:
        raise ValueError(
            f"{who}: targets must be one of {TARGETS} ('values' for regression; 'labels', "
            f"'probabilities' or 'binary' for a classification loss), got {loss.targets!r}."
        )
