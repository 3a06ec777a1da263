"""Optimiser helpers: plain gradient descent with frozen leaves and checked learning rates.

Any optax ``GradientTransformation`` trains a jaxnn network (:mod:`jaxnn.train`); :func:`sgd`
is optax's ``sgd`` with what optax leaves to the user: a learning rate refused at once when
it is not a positive finite number, a schedule whose values are checked in the checking mode
(:mod:`jaxnn.debug`), and leaves that the update leaves exactly as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn._checks import ensure_positive, is_traced, require
from jaxnn._typing import Array

__all__ = ["sgd"]


def sgd(
    learning_rate: float | optax.Schedule,
    *,
    trainable: Callable[[tuple[Any, ...], Array], bool] | None = None,
) -> optax.GradientTransformation:
    """Plain gradient descent ``w ← w - η ∂L/∂w`` (optax's ``sgd``), with frozen leaves.

    Args:
      learning_rate: ``η > 0``, or an optax schedule ``step -> η`` (e.g.
        ``optax.exponential_decay(0.1, 1000, 0.5)``), which is checked when it is called.
      trainable: optional ``trainable(path, leaf) -> bool`` (``path`` as in
        ``jax.tree_util.tree_map_with_path``, ``leaf`` the gradient, of the parameter's shape
        and dtype); leaves for which it is false get a zero update.
        E.g. ``lambda path, _: path[-1].key == "w"`` trains the kernels and freezes the biases.

    Raises:
      ValueError: a numeric ``learning_rate`` is not a positive finite number.
      TypeError: ``learning_rate`` is neither a number nor a callable schedule.

    A traced rate (an array inside ``jit``) and a schedule's values are applied as given;
    the checking mode (:mod:`jaxnn.debug`) raises when one is not a positive finite number.
    """
    if callable(learning_rate):
        learning_rate = _checked_schedule(learning_rate)
    else:  # a schedule is evaluated by optax at every step
        scalar_array = isinstance(learning_rate, jax.Array) and learning_rate.ndim == 0
        if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, int | float | np.number) or scalar_array
        ):
            raise TypeError(
                f"learning_rate must be a positive number or an optax schedule (step -> rate), "
                f"got {type(learning_rate).__name__} {learning_rate!r}."
            )
        ensure_positive(learning_rate, "learning_rate")
    inner = optax.sgd(learning_rate)
    if is_traced(learning_rate):
        inner = _checked_rate(inner, learning_rate)
    if trainable is None:
        return inner

    # A frozen leaf's gradient is replaced by 0 before the step, so its update is -η·0 = 0
    # exactly. Stateless: the optimizer state stays sgd's own (optax.multi_transform would
    # add a state node per label, each carried and flattened at every step).
    def update(updates, state, params=None):
        updates = jax.tree_util.tree_map_with_path(
            lambda path, g: g if trainable(path, g) else jnp.zeros_like(g), updates
        )
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update)


def _rate_ok(rate: Array) -> Array:
    return (rate > 0) & jnp.isfinite(rate)


def _checked_schedule(schedule: optax.Schedule) -> optax.Schedule:
    def checked(count: Array) -> Array:
        rate = schedule(count)
        require(_rate_ok(rate), "sgd: the schedule gave learning rate {rate} at step {count}; "
                "it must be a positive finite number", rate=rate, count=count)  # fmt: skip
        return rate

    return checked


def _checked_rate(inner: optax.GradientTransformation, rate: Array) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        require(_rate_ok(rate), "sgd: learning rate {rate} must be a positive finite number",
                rate=rate)  # fmt: skip
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update)
