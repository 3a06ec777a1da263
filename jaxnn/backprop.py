"""Backpropagation done by hand, and the binding that lets ``jax.grad`` run on it.

Two ways to take the gradient of a loss through a network, which give the same numbers:

* :func:`backprop` — reverse-mode differentiation written out as one readable loop: the
  forward runs each layer's ``vjp`` and keeps its ``backward``; the loss's hand-derived
  gradient gives ``dL/dy``; the ``backward``s run in reverse (inside ``serial``). No
  ``jax.grad`` anywhere.
* :func:`manual` — wraps a layer (and :func:`manual_loss` a loss) in ``jax.custom_vjp``
  whose backward *is* the hand-derived one, so that ``jax.grad`` of any function of the
  network (regularised losses, optax pipelines, ``vmap``) runs on the hand-derived rules.

:func:`value_and_grad` is where the library takes gradients; its ``grad="autodiff"`` or
``grad="manual"`` chooses between ``jax.grad`` of the plain forward and the hand-derived rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxnn import gradcheck
from jaxnn import losses as _losses
from jaxnn._typing import Array, ArrayLike, Grads, Params, PRNGKey, State
from jaxnn.layers import Layer, mlp

__all__ = ["GRAD_MODES", "backprop", "manual", "manual_loss", "value_and_grad"]

GradMode = Literal["autodiff", "manual"]
GRAD_MODES = ("autodiff", "manual")


def backprop(
    layer: Layer,
    loss: str | _losses.Loss,
    params: Params,
    state: State,
    x: ArrayLike,
    targets: ArrayLike,
    *,
    train: bool = True,
    key: PRNGKey | None = None,
) -> tuple[Array, Grads, State]:
    """Loss and its gradient w.r.t. ``params`` by manual reverse-mode differentiation.

    The chain rule, in order::

        y, new_state, backward = layer.vjp(params, state, x)   # forward, keeping residuals
        L = loss(y, targets);  dy = ∂L/∂y                        # loss and its hand gradient
        grads, dx = backward(dy)                                 # every layer, in reverse

    Args:
      layer: the network (any :class:`~jaxnn.layers.Layer`, e.g. ``mlp``/``serial``).
      loss: a loss name or :class:`~jaxnn.losses.Loss`.
      params, state: the network's params and state.
      x: inputs ``[batch, ...]``; targets: what the loss compares ``y`` with.
      train, key: passed to the layer.

    Returns:
      ``(loss_value, grads, new_state)``; ``grads`` has the structure of ``params``.
    """
    loss = _losses.get(loss)
    y, new_state, backward = layer.vjp(params, state, x, train=train, key=key)
    value = loss.fn(y, targets)
    grads, _dx = backward(loss.grad(y, targets))
    return value, grads, new_state


def manual(layer: Layer) -> Layer:
    """The same layer, but ``jax.grad`` through its ``apply`` runs its hand-derived ``vjp``.

    ``apply`` is wrapped in ``jax.custom_vjp``: the custom forward runs ``layer.vjp`` and
    keeps its ``backward`` (a ``jax.tree_util.Partial`` pytree) as the residual; the custom
    backward calls it. State, key and any layer-specific keyword arrays (BatchNorm's ``mask``)
    get no cotangent: they are not differentiable.
    """

    def make(train: bool) -> Callable[..., tuple[Array, State]]:
        @jax.custom_vjp
        def f(params: Params, state: State, x: Array, key: PRNGKey | None, extras: dict):
            return layer.apply(params, state, x, train=train, key=key, **extras)

        def fwd(params: Params, state: State, x: Array, key: PRNGKey | None, extras: dict):
            y, new_state, backward = layer.vjp(params, state, x, train=train, key=key, **extras)
            return (y, new_state), backward

        def bwd(backward: Callable[[Array], tuple[Params, Array]], cotangents: Any):
            dy, _ = cotangents
            dparams, dx = backward(dy)
            return dparams, None, dx, None, None

        f.defvjp(fwd, bwd)
        return f

    by_mode = {True: make(True), False: make(False)}

    def apply(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
        **extras: Any,
    ):
        return by_mode[bool(train)](params, state, jnp.asarray(x), key, extras)

    return Layer(layer.name, layer.init, apply, layer.vjp)


def manual_loss(loss: str | _losses.Loss) -> _losses.Loss:
    """The same loss, but ``jax.grad`` runs its hand-derived gradient w.r.t. the predictions.

    The targets are treated as constants: they receive a zero cotangent.
    """
    loss = _losses.get(loss)

    @jax.custom_vjp
    def fn(predictions: Array, targets: Array) -> Array:
        return loss.fn(predictions, targets)

    def fwd(predictions: Array, targets: Array):
        return loss.fn(predictions, targets), (predictions, targets)

    def bwd(residuals: tuple[Array, Array], dloss: Array):
        predictions, targets = residuals
        return dloss * loss.grad(predictions, targets), None

    fn.defvjp(fwd, bwd)
    return _losses.Loss(loss.name, fn, loss.grad)


def value_and_grad(
    layer: Layer,
    loss: str | _losses.Loss,
    *,
    grad: GradMode = "autodiff",
    penalty: Callable[[Params], Array] | None = None,
) -> Callable[..., tuple[tuple[Array, State], Grads]]:
    """A function computing the loss, the new state and the gradient w.r.t. params.

    Args:
      layer: the network.
      loss: a loss name or :class:`~jaxnn.losses.Loss`.
      grad: ``"autodiff"`` (``jax.grad`` of the forward) or ``"manual"`` (``jax.grad`` running
        the hand-derived rules through ``jax.custom_vjp``). Both give the same numbers.
      penalty: optional ``penalty(params) -> scalar`` added to the loss (a regulariser).

    Returns:
      ``fn(params, state, x, targets, *, train=True, key=None) -> ((loss, new_state), grads)``.

    Raises:
      ValueError: ``grad`` is not one of ``"autodiff"``, ``"manual"``.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}.")
    loss = _losses.get(loss)
    if grad == "manual":
        layer, loss = manual(layer), manual_loss(loss)

    def objective(
        params: Params, state: State, x: ArrayLike, targets: ArrayLike, train: bool, key: Any
    ):
        y, new_state = layer.apply(params, state, x, train=train, key=key)
        value = loss.fn(y, targets)
        if penalty is not None:
            value = value + penalty(params)
        return value, new_state

    vg = jax.value_and_grad(objective, has_aux=True)

    def fn(
        params: Params,
        state: State,
        x: ArrayLike,
        targets: ArrayLike,
        *,
        train: bool = True,
        key: PRNGKey | None = None,
    ):
        return vg(params, state, x, targets, train, key)

    return fn


# ----------------------------------------------------------------------------- gradcheck


def _network_case(mode: str) -> Callable[[PRNGKey], gradcheck.GradCase]:
    """A random MLP under a loss: autodiff vs the explicit loop, or vs the custom_vjp path."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_init, k_x, k_t = jax.random.split(key, 4)
        batch, n_in, hidden, n_out = (int(s) for s in jax.random.randint(k_shape, (4,), 1, 6))
        net = mlp([hidden, hidden, n_out], "tanh", b_init="glorot_normal", param_dtype=jnp.float64)
        params, state = net.init(k_init, (batch, n_in))
        x = jax.random.normal(k_x, (batch, n_in), jnp.float64)
        targets = jax.random.normal(k_t, (batch, n_out), jnp.float64)

        def f(params: Params) -> Array:
            return _losses.mean_squared_error(net.apply(params, state, x)[0], targets)

        if mode == "loop":

            def grad_fn(params: Params) -> Grads:
                return backprop(net, "mean_squared_error", params, state, x, targets)[1]

        else:
            vg = value_and_grad(net, "mean_squared_error", grad="manual")

            def grad_fn(params: Params) -> Grads:
                return vg(params, state, x, targets)[1]

        return gradcheck.GradCase(f, (params,), grad_fn, 0, f"mlp x({batch}, {n_in})")

    return make


gradcheck.register("backprop.loop", _network_case("loop"))
gradcheck.register("backprop.custom_vjp", _network_case("custom_vjp"))
