"""Classification metrics from a network's outputs: predicted labels, accuracy, confusion matrix.

The loss says how the outputs are read, so the metrics take the same loss name:

* ``softmax_cross_entropy_with_integer_labels`` — outputs are logits ``[..., classes]``,
  targets integer labels ``[...]``; the prediction is ``argmax`` over the classes.
* ``softmax_cross_entropy`` — targets are probability rows ``[..., classes]`` (one-hot or
  soft); the true class is their ``argmax`` (the first, on ties, as ``jnp.argmax``).
* ``binary_cross_entropy_with_logits`` — each output is one logit; the prediction is
  ``logit > 0`` (``σ(z) > ½``), the true class is ``target > ½``; two classes.

Regression losses (``squared_error``, ``mean_squared_error``) have no labels:
:func:`is_classification` tells them apart. All functions are jit-compatible.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxnn import losses as _losses
from jaxnn._typing import Array, ArrayLike

__all__ = [
    "CLASSIFICATION_LOSSES",
    "accuracy",
    "confusion_matrix",
    "is_classification",
    "labels_of",
    "num_classes",
    "predicted_labels",
]

CLASSIFICATION_LOSSES = (
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "binary_cross_entropy_with_logits",
)


def _name(loss: str | _losses.Loss) -> str:
    return _losses.get(loss).name


def is_classification(loss: str | _losses.Loss) -> bool:
    """Whether the loss is one of :data:`CLASSIFICATION_LOSSES`."""
    return _name(loss) in CLASSIFICATION_LOSSES


def _require_classification(loss: str | _losses.Loss, who: str) -> str:
    name = _name(loss)
    if name not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"{who}: the loss {name!r} is a regression loss, which has no class labels; "
            f"labels are defined for {', '.join(CLASSIFICATION_LOSSES)}."
        )
    return name


def num_classes(predictions: ArrayLike, loss: str | _losses.Loss) -> int:
    """The number of classes the outputs distinguish: ``classes``, or 2 for binary logits."""
    name = _require_classification(loss, "num_classes")
    return 2 if name == "binary_cross_entropy_with_logits" else int(jnp.shape(predictions)[-1])


def predicted_labels(predictions: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The predicted class of each example (int32): ``argmax`` of the logits, or ``z > 0``."""
    name = _require_classification(loss, "predicted_labels")
    predictions = jnp.asarray(predictions)
    if name == "binary_cross_entropy_with_logits":
        return (predictions > 0).astype(jnp.int32)
    return jnp.argmax(predictions, axis=-1).astype(jnp.int32)


def labels_of(targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The true class of each example (int32), from the targets the loss takes."""
    name = _require_classification(loss, "labels_of")
    targets = jnp.asarray(targets)
    if name == "softmax_cross_entropy_with_integer_labels":
        return targets.astype(jnp.int32)
    if name == "binary_cross_entropy_with_logits":
        return (targets > 0.5).astype(jnp.int32)
    return jnp.argmax(targets, axis=-1).astype(jnp.int32)


def accuracy(predictions: ArrayLike, targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The fraction of examples whose predicted class is the true class (a float32 scalar)."""
    hits = predicted_labels(predictions, loss) == labels_of(targets, loss)
    return jnp.mean(hits.astype(jnp.float32))


def confusion_matrix(predictions: ArrayLike, targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """Counts ``C[true, predicted]`` (int32 ``[classes, classes]``); rows sum to class sizes.

    The convention of scikit-learn's ``confusion_matrix``: row ``i`` is the examples of true
    class ``i``, column ``j`` those predicted as ``j``; the diagonal holds the hits. A label
    outside ``[0, classes)`` is counted nowhere.
    """
    k = num_classes(predictions, loss)
    true = labels_of(targets, loss).reshape(-1)
    pred = predicted_labels(predictions, loss).reshape(-1)
    valid = (true >= 0) & (true < k)
    flat = jnp.where(valid, true * k + pred, k * k)  # an out-of-range label lands in a spill bin
    return jnp.bincount(flat, length=k * k + 1)[: k * k].reshape(k, k).astype(jnp.int32)
