"""Classification metrics from a network's outputs: predicted labels, accuracy, confusion matrix.

The loss says how its outputs and targets are read (:class:`jaxnn.losses.Loss`: its
``targets`` and ``predict`` fields), so the metrics take the loss, built-in or your own:

* ``targets="labels"`` (``softmax_cross_entropy_with_integer_labels``) — outputs are logits
  ``[..., classes]``, targets integer labels ``[...]``; the prediction is ``argmax`` over the
  classes.
* ``targets="probabilities"`` (``softmax_cross_entropy``) — targets are probability rows
  ``[..., classes]`` (one-hot or soft); the true class is their ``argmax`` (the first, on
  ties, as ``jnp.argmax``).
* ``targets="binary"`` (``binary_cross_entropy_with_logits``) — each output is one logit; the
  prediction is ``logit > 0`` (``σ(z) > ½``), the true class is ``target > ½``; two classes.

A loss's own ``predict`` replaces the default prediction. Regression losses
(``targets="values"``: ``squared_error``, ``mean_squared_error``) have no labels:
:func:`is_classification` tells them apart.

**NaN.** An example whose output holds a NaN has no predicted class: it is ``-1`` in
:func:`predicted_labels`, the :func:`accuracy` of any batch holding it is NaN (as the mean
loss over that batch is), and the :func:`confusion_matrix` counts it nowhere. All functions
are jit-compatible.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxnn import losses as _losses
from jaxnn._typing import Array, ArrayLike

__all__ = [
    "accuracy",
    "confusion_matrix",
    "is_classification",
    "labels_of",
    "num_classes",
    "predicted_labels",
]

is_classification = _losses.is_classification


def _classifier(loss: str | _losses.Loss, who: str) -> _losses.Loss:
    loss = _losses.get(loss)
    if loss.targets == "values":
        raise ValueError(
            f"{who}: the loss {loss.name!r} is a regression loss (targets='values'), which has "
            f"no class labels. Labels are defined for a loss whose targets are 'labels', "
            f"'probabilities' or 'binary' (jaxnn.losses.Loss)."
        )
    return loss


def num_classes(predictions: ArrayLike, loss: str | _losses.Loss) -> int:
    """The number of classes the outputs distinguish: ``classes``, or 2 for binary outputs."""
    loss = _classifier(loss, "num_classes")
    return 2 if loss.targets == "binary" else int(jnp.shape(predictions)[-1])


def _has_nan(predictions: Array, loss: _losses.Loss) -> Array:
    """Per example: whether its output holds a NaN."""
    nan = jnp.isnan(predictions)
    return nan if loss.targets == "binary" else jnp.any(nan, axis=-1)


def predicted_labels(predictions: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The predicted class of each example (int32): the loss's ``predict``, ``argmax`` of the
    logits, or ``z > 0`` for binary logits; ``-1`` for an example whose output holds a NaN."""
    loss = _classifier(loss, "predicted_labels")
    predictions = jnp.asarray(predictions)
    if loss.predict is not None:
        labels = jnp.asarray(loss.predict(predictions))
    elif loss.targets == "binary":
        labels = predictions > 0
    else:
        labels = jnp.argmax(predictions, axis=-1)
    return jnp.where(_has_nan(predictions, loss), -1, labels.astype(jnp.int32))


def labels_of(targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The true class of each example (int32), from the targets the loss takes."""
    loss = _classifier(loss, "labels_of")
    targets = jnp.asarray(targets)
    if loss.targets == "labels":
        return targets.astype(jnp.int32)
    if loss.targets == "binary":
        return (targets > 0.5).astype(jnp.int32)
    return jnp.argmax(targets, axis=-1).astype(jnp.int32)


def accuracy(predictions: ArrayLike, targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """The fraction of examples whose predicted class is the true class (a float32 scalar);
    NaN when an output holds a NaN (module docstring)."""
    predicted = predicted_labels(predictions, loss)
    hits = jnp.mean((predicted == labels_of(targets, loss)).astype(jnp.float32))
    return jnp.where(jnp.any(predicted < 0), jnp.nan, hits)


def confusion_matrix(predictions: ArrayLike, targets: ArrayLike, loss: str | _losses.Loss) -> Array:
    """Counts ``C[true, predicted]`` (int32 ``[classes, classes]``); rows sum to class sizes.

    The convention of scikit-learn's ``confusion_matrix``: row ``i`` is the examples of true
    class ``i``, column ``j`` those predicted as ``j``; the diagonal holds the hits. A label
    outside ``[0, classes)``, and an example whose output holds a NaN (no predicted class), is
    counted nowhere.
    """
    k = num_classes(predictions, loss)
    true = labels_of(targets, loss).reshape(-1)
    pred = predicted_labels(predictions, loss).reshape(-1)
    valid = (true >= 0) & (true < k) & (pred >= 0) & (pred < k)
    flat = jnp.where(valid, true * k + pred, k * k)  # an uncounted example lands in a spill bin
    return jnp.bincount(flat, length=k * k + 1)[: k * k].reshape(k, k).astype(jnp.int32)
