"""Jit-compiled training: an optax optimizer, a train step, and many steps as one ``lax.scan``.

The step takes its gradient through :func:`jaxnn.backprop.value_and_grad`, so
``grad="autodiff"`` or ``grad="manual"`` chooses between ``jax.grad`` and the hand-derived rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnn import losses as _losses
from jaxnn._checks import ensure_positive
from jaxnn._typing import Array, ArrayLike, Params, PRNGKey, State
from jaxnn.backprop import GradMode, value_and_grad
from jaxnn.layers import Layer

__all__ = ["TrainState", "fit_full_batch", "make_train_step", "sgd"]


def sgd(
    learning_rate: float,
    *,
    trainable: Callable[[tuple[Any, ...], Array], bool] | None = None,
) -> optax.GradientTransformation:
    """Plain gradient descent ``w ← w - η ∂L/∂w`` (optax's ``sgd``), with frozen leaves.

    Args:
      learning_rate: ``η > 0``.
      trainable: optional ``trainable(path, leaf) -> bool`` (``path`` as in
        ``jax.tree_util.tree_map_with_path``); leaves for which it is false get a zero update.
        E.g. ``lambda path, _: path[-1].key == "w"`` trains the kernels and freezes the biases.

    Raises:
      ValueError: ``learning_rate`` is not a positive finite number.
    """
    ensure_positive(learning_rate, "learning_rate")
    inner = optax.sgd(learning_rate)
    if trainable is None:
        return inner

    def labels(params: Params) -> Params:
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: "train" if trainable(path, leaf) else "freeze", params
        )

    return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)


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
) -> Callable[..., tuple[TrainState, Array]]:
    """A jit-compiled step ``step(ts, x, targets, key=None) -> (new_ts, loss)``.

    The returned loss is the one of the forward pass that produced the gradient, i.e. before
    the update.
    """
    vg = value_and_grad(layer, loss, grad=grad)

    @jax.jit
    def step(ts: TrainState, x: ArrayLike, targets: ArrayLike, key: PRNGKey | None = None):
        (value, new_state), grads = vg(ts.params, ts.state, x, targets, train=True, key=key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, new_state, opt_state), value

    return step


def fit_full_batch(
    step: Callable[..., tuple[TrainState, Array]],
    ts: TrainState,
    x: ArrayLike,
    targets: ArrayLike,
    num_steps: int,
) -> tuple[TrainState, Array]:
    """``num_steps`` steps on the same batch as one compiled ``lax.scan``.

    Returns:
      The final state and the losses, shape ``[num_steps]``; ``losses[k]`` is the loss after
      ``k`` updates (the forward pass of step ``k + 1``).
    """
    if not (isinstance(num_steps, int) and num_steps > 0):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    return _scan(step, ts, jnp.asarray(x), jnp.asarray(targets), num_steps)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _scan(step, ts, x, targets, num_steps):
    def body(ts: TrainState, _: None):
        return step(ts, x, targets)

    return jax.lax.scan(body, ts, None, length=num_steps)
