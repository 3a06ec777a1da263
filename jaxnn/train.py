"""Jit-compiled training: an optax optimizer, a train step, and many steps as one ``lax.scan``.

The step takes its gradient through :func:`jaxnn.backprop.value_and_grad`, so
``grad="autodiff"`` or ``grad="manual"`` chooses between ``jax.grad`` and the hand-derived
rules; a :class:`~jaxnn.regularization.Penalty` is added to the loss on either path; a PRNG
key reaches the stochastic layers (dropout).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import losses as _losses
from jaxnn._checks import all_finite, ensure_positive, is_traced, require
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, State
from jaxnn.backprop import GradMode, value_and_grad
from jaxnn.regularization import Penalty

__all__ = ["TrainState", "fit_full_batch", "make_train_step", "sgd"]


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
        ``jax.tree_util.tree_map_with_path``); leaves for which it is false get a zero update.
        E.g. ``lambda path, _: path[-1].key == "w"`` trains the kernels and freezes the biases.

    Raises:
      ValueError: a numeric ``learning_rate`` is not a positive finite number.
      TypeError: ``learning_rate`` is neither a number nor a callable schedule.

    A traced rate (an array inside ``jit``) and a schedule's values are applied as given;
    the checking mode (:mod:`jaxnn.checking`) raises when one is not a positive finite number.
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

    def labels(params: Params) -> Params:
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: "train" if trainable(path, leaf) else "freeze", params
        )

    return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)


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


class TrainState(NamedTuple):
    params: Params  # the network's trainable parameters
    state: State  # the network's non-trainable state (e.g. BatchNorm statistics)
    opt_state: optax.OptState  # the optimizer's state


def make_train_step(
    layer: Layer,
    loss: str | _losses.Loss,
    optimizer: optax.GradientTransformation,
    *,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
) -> Callable[..., tuple[TrainState, Array]]:
    """A jit-compiled step ``step(ts, x, targets, key=None) -> (new_ts, loss)``.

    The step runs the network with ``train=True``; ``key`` reaches its stochastic layers
    (a network with dropout needs one per step). The returned loss is the one of the forward
    pass that produced the gradient (i.e. before the update), penalty included.

    The update is applied as the optimizer gives it. In the checking mode
    (:mod:`jaxnn.checking`) a NaN or infinite loss, gradient or updated parameter raises,
    naming which (e.g. ``optax.sgd(nan)`` makes the parameters NaN).
    """
    vg = value_and_grad(layer, loss, grad=grad, penalty=penalty)

    @jax.jit
    def step(ts: TrainState, x: ArrayLike, targets: ArrayLike, key: PRNGKey | None = None):
        (value, new_state), grads = vg(ts.params, ts.state, x, targets, train=True, key=key)
        require(jnp.isfinite(value), "train step: the loss is {value}", value=value)
        require(all_finite(grads), "train step: a gradient is NaN or inf")
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        require(
            all_finite(params),
            "train step: the optimizer's update made a parameter NaN or inf (a NaN or too "
            "large learning rate?)",
        )
        return TrainState(params, new_state, opt_state), value

    return step


def fit_full_batch(
    step: Callable[..., tuple[TrainState, Array]],
    ts: TrainState,
    x: ArrayLike,
    targets: ArrayLike,
    num_steps: int,
    *,
    key: PRNGKey | None = None,
) -> tuple[TrainState, Array]:
    """``num_steps`` steps on the same batch as one compiled ``lax.scan``.

    Args:
      step: a step from :func:`make_train_step`.
      ts, x, targets: the starting state and the batch.
      num_steps: ``> 0``.
      key: split into one key per step (``jax.random.split(key, num_steps)``); needed when
        the network has stochastic layers.

    Returns:
      The final state and the losses, shape ``[num_steps]``; ``losses[k]`` is the loss after
      ``k`` updates (the forward pass of step ``k + 1``).
    """
    if isinstance(num_steps, bool) or not (isinstance(num_steps, int) and num_steps > 0):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    keys = None if key is None else jax.random.split(key, num_steps)
    return _scan(step, ts, jnp.asarray(x), jnp.asarray(targets), keys, num_steps)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _scan(step, ts, x, targets, keys, num_steps):
    def body(ts: TrainState, key: PRNGKey | None):
        return step(ts, x, targets, key)

    return jax.lax.scan(body, ts, keys, length=num_steps)
