"""Backpropagation done by hand, and the binding that lets ``jax.grad`` run on it.

Two ways to take the gradient of a loss through a network, which give the same numbers:

* :func:`backprop` — reverse-mode differentiation written out as one readable loop: the
  forward runs each layer's ``vjp`` and keeps its ``backward``; the loss's hand-derived
  gradient gives ``dL/dy``; the ``backward``s run in reverse (inside ``serial``). No
  ``jax.grad`` anywhere. :func:`layer_gradients` runs the same loop and keeps what every layer
  of a composition received and sent: its input, its output, ``δ = ∂L/∂y`` and its ``dparams``.
* :func:`manual` — wraps a layer (and :func:`manual_loss` a loss, :func:`manual_penalty` a
  penalty) in ``jax.custom_vjp`` whose backward *is* the hand-derived one, so that
  ``jax.grad`` of any function of the network (regularised losses, optax pipelines,
  ``vmap``) runs on the hand-derived rules.

:func:`value_and_grad` is where the library takes gradients; its ``grad="autodiff"`` or
``grad="manual"`` chooses between ``jax.grad`` of the plain forward and the hand-derived rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn import losses as _losses
from jaxnn._checks import all_finite, ensure_nonempty, is_traced, require
from jaxnn._typing import (
    Array,
    ArrayLike,
    Grads,
    Layer,
    Params,
    PRNGKey,
    State,
    backward_spec,
    check_cotangents,
    validated,
)
from jaxnn.combinators import _backward_pass, _forward_vjp, layer_keys
from jaxnn.regularization import Penalty

__all__ = [
    "GRAD_MODES",
    "LayerGradients",
    "backprop",
    "layer_gradients",
    "manual",
    "manual_loss",
    "manual_penalty",
    "value_and_grad",
]

GradMode = Literal["autodiff", "manual"]
GRAD_MODES = ("autodiff", "manual")


def _check_penalty(penalty: Any) -> None:
    if penalty is not None and not isinstance(penalty, Penalty):
        raise TypeError(
            f"penalty must be a jaxnn Penalty (jaxnn.regularization.l2(scale), l1(scale), or "
            f"combine(...)), got {type(penalty).__name__}: the manual path needs its hand "
            f"gradient."
        )


def _check_batch(who: str, x: ArrayLike, targets: ArrayLike) -> None:
    """An empty batch is refused; non-finite inputs fail in the checking mode."""
    ensure_nonempty(x, "x", who, "a loss over an empty batch is undefined")
    if is_traced(x) or is_traced(targets):  # concrete values need no device check
        require(all_finite(x), f"{who}: the inputs x contain NaN or inf")
        require(all_finite(targets), f"{who}: the targets contain NaN or inf")


def backprop(
    network: Layer,
    loss: str | _losses.Loss,
    params: Params,
    state: State,
    x: ArrayLike,
    targets: ArrayLike,
    *,
    train: bool,
    key: PRNGKey | None = None,
    penalty: Penalty | None = None,
    **keywords: Any,
) -> tuple[Array, Grads, State]:
    """Loss and its gradient w.r.t. ``params`` by manual reverse-mode differentiation.

    The chain rule, in order::

        y, new_state, backward = network.vjp(params, state, x) # forward, keeping residuals
        L = loss(y, targets);  dy = ∂L/∂y                        # loss and its hand gradient
        grads, dx = backward(dy)                                 # every layer, in reverse
        L, grads += P(params), ∂P/∂params                        # a penalty, if any

    Args:
      network: any :class:`~jaxnn.Layer` (e.g. ``mlp``/``serial``).
      loss: a loss name or :class:`~jaxnn.losses.Loss`.
      params, state: the network's params and state.
      x: inputs ``[batch, ...]``; targets: what the loss compares ``y`` with.
      train, key, keywords: passed to the network (``keywords``: e.g. BatchNorm's ``mask``).
      penalty: optional :class:`~jaxnn.regularization.Penalty` added to the loss.

    Returns:
      ``(loss_value, grads, new_state)``; ``grads`` has the structure of ``params``.

    Raises:
      TypeError, ValueError: the layer's backward is not a ``Partial``, or does not return
        ``(dparams, dx)`` of the params' structure and ``x``'s shape (the error names the layer).
    """
    loss = _losses.get(loss)
    _check_penalty(penalty)
    _check_batch("backprop", x, targets)
    y, new_state, backward = network.vjp(params, state, x, train=train, key=key, **keywords)
    spec = backward_spec(repr(network.name), backward, params, x)  # refused unless a Partial
    value = loss.fn(y, targets)
    grads, _dx = check_cotangents(spec, backward(loss.grad(y, targets)))
    if penalty is not None:
        value = value + penalty.fn(params)
        grads = jax.tree.map(jnp.add, grads, penalty.grad(params))
    return value, grads, new_state


class LayerGradients(NamedTuple):
    """What one layer of a composition received and sent during :func:`layer_gradients`."""

    x: Array  # its input [batch, ...]
    y: Array  # its output [batch, ...]
    dy: Array  # δ = ∂L/∂y, the gradient it received, y's shape
    dparams: Params  # ∂L/∂params, its params' structure ({} for a layer without params)


def layer_gradients(
    network: Layer,
    loss: str | _losses.Loss,
    params: Params,
    state: State,
    x: ArrayLike,
    targets: ArrayLike,
    *,
    train: bool,
    key: PRNGKey | None = None,
    **keywords: Any,
) -> tuple[Array, dict[str, LayerGradients], State]:
    """:func:`backprop` through a composition, keeping every layer's input, output and gradients.

    The same forward (each layer's ``vjp``) and the same reverse loop as ``serial``'s
    backward, with each layer's ``dy`` kept on the way::

        δ_n = ∂L/∂y_n;   (dparams_i, δ_{i-1}) = backward_i(δ_i),   i = n, ..., 1

    so ``δ_i`` is ``∂L/∂y_i``, the gradient w.r.t. layer ``i``'s output (for a dense layer
    ``z = xW + b``: ``δ = ∂L/∂z`` and ``dparams["w"] = xᵀδ``), and the ``dparams`` equal
    :func:`backprop`'s grads. No ``jax.grad`` anywhere.

    Args:
      network: a composition (``serial`` or ``mlp``).
      loss, params, state, x, targets, train, key, keywords: as for :func:`backprop`.

    Returns:
      ``(loss_value, layers, new_state)``: ``layers`` maps each layer's key
      (:func:`jaxnn.combinators.layer_keys`), in run order, to its :class:`LayerGradients`.

    Raises:
      TypeError: ``network`` is not a composition; a layer's backward is not a ``Partial``.
      ValueError: a layer's backward does not return ``(dparams, dx)`` of its params' structure
        and its input's shape (the error names the layer).
    """
    names = layer_keys(network)
    loss = _losses.get(loss)
    _check_batch("layer_gradients", x, targets)
    y, new_state, inputs, outputs, backwards, specs = _forward_vjp(
        network, params, state, x, train, key, keywords
    )
    received, grads, _dx = _backward_pass(backwards, loss.grad(y, targets), names, specs)
    layers = {n: LayerGradients(inputs[n], outputs[n], received[n], grads[n]) for n in names}
    return loss.fn(y, targets), layers, new_state


def manual(layer: Layer) -> Layer:
    """The same layer, but ``jax.grad`` through its ``apply`` runs its hand-derived ``vjp``.

    ``apply`` is wrapped in ``jax.custom_vjp``: the custom forward runs ``layer.vjp`` and
    keeps its ``backward`` (a ``jax.tree_util.Partial`` pytree) as the residual; the custom
    backward calls it. State, key and the layer's keyword arrays (BatchNorm's ``mask``) get no
    cotangent: they are not differentiable. A backward that is not a ``Partial``, or whose
    result is not ``(dparams, dx)`` of the params' structure and ``x``'s shape, is refused
    naming the layer (:func:`jaxnn._typing.validated`).
    """

    def make(train: bool) -> Callable[..., tuple[Array, State]]:
        @jax.custom_vjp
        def f(params: Params, state: State, x: Array, key: PRNGKey | None, keywords: dict):
            return layer.apply(params, state, x, train=train, key=key, **keywords)

        def fwd(params: Params, state: State, x: Array, key: PRNGKey | None, keywords: dict):
            y, new_state, backward = layer.vjp(params, state, x, train=train, key=key, **keywords)
            return (y, new_state), validated(repr(layer.name), backward, params, x)

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
        train: bool,
        key: PRNGKey | None = None,
        **keywords: Any,
    ):
        return by_mode[bool(train)](params, state, jnp.asarray(x), key, keywords)

    return layer._replace(apply=apply)


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
    return loss._replace(fn=fn)


def manual_penalty(penalty: Penalty) -> Penalty:
    """The same penalty, but ``jax.grad`` runs its hand-derived gradient."""
    _check_penalty(penalty)

    @jax.custom_vjp
    def fn(params: Params) -> Array:
        return penalty.fn(params)

    def fwd(params: Params):
        return penalty.fn(params), params

    def bwd(params: Params, dvalue: Array):
        return (jax.tree.map(lambda g: dvalue * g, penalty.grad(params)),)

    fn.defvjp(fwd, bwd)
    return Penalty(penalty.name, fn, penalty.grad)


def value_and_grad(
    network: Layer,
    loss: str | _losses.Loss,
    *,
    grad: GradMode = "autodiff",
    penalty: Penalty | None = None,
) -> Callable[..., tuple[tuple[Array, State], Grads]]:
    """A function computing the loss, the new state and the gradient w.r.t. params.

    Args:
      network: the network (any :class:`~jaxnn.Layer`).
      loss: a loss name or :class:`~jaxnn.losses.Loss`.
      grad: ``"autodiff"`` (``jax.grad`` of the forward) or ``"manual"`` (``jax.grad`` running
        the hand-derived rules through ``jax.custom_vjp``). Both give the same numbers.
      penalty: optional :class:`~jaxnn.regularization.Penalty` added to the loss (its value is
        part of the returned loss).

    Returns:
      ``fn(params, state, x, targets, *, train, key=None, **keywords) -> ((loss, new_state),
      grads)``; ``keywords`` (e.g. BatchNorm's ``mask``) go to the network.

    Raises:
      ValueError: ``grad`` is not one of ``"autodiff"``, ``"manual"``.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}.")
    loss = _losses.get(loss)
    _check_penalty(penalty)
    if grad == "manual":
        network, loss = manual(network), manual_loss(loss)
        penalty = None if penalty is None else manual_penalty(penalty)

    def objective(params, state, x, targets, train, key, keywords):
        y, new_state = network.apply(params, state, x, train=train, key=key, **keywords)
        value = loss.fn(y, targets)
        if penalty is not None:
            value = value + penalty.fn(params)
        return value, new_state

    vg = jax.value_and_grad(objective, has_aux=True)

    def fn(
        params: Params,
        state: State,
        x: ArrayLike,
        targets: ArrayLike,
        *,
        train: bool,
        key: PRNGKey | None = None,
        **keywords: Any,
    ):
        _check_batch("value_and_grad", x, targets)
        return vg(params, state, x, targets, train, key, keywords)

    return fn
