"""Composition: ``serial`` (a composition is itself a layer), ``intermediates``, ``layer_keys``.

``serial(*layers)`` runs its layers in order. Its params and state are dicts keyed
``"{layer.name}_{i}"`` (``"dense_0"``, ``"batchnorm_1"``, ...), each holding that layer's own
params or state; a layer without params (an activation, dropout) has no entry in the params,
and one without state (all but BatchNorm) none in the state. The pytrees a training step
carries then have a node per array-holding layer only (each node costs host time at every
jitted call), and :func:`layer_keys` gives every layer's key in run order.

Its backward is the chain rule done by hand: the forward runs each layer's
``vjp`` and keeps its ``backward``; the backward runs them in reverse, feeding each one's
``dx`` to the layer before as its ``dy`` and collecting every ``dparams``::

    dy_n = dL/dy;   (dparams_i, dy_{i-1}) = backward_i(dy_i),   i = n, ..., 1

Keys and keyword arrays are routed, not broadcast blindly: the network's ``key`` is split
into one key per stochastic layer (dropout), in order; a keyword array (BatchNorm's ``mask``)
goes to every layer that names it in ``Layer.keywords``, and a keyword no layer takes is an
error. :func:`intermediates` returns every layer's output by name, from the same forward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax

from jaxnn._checks import ensure_input_shape
from jaxnn._typing import (
    Array,
    ArrayLike,
    BackwardSpec,
    Layer,
    Params,
    PRNGKey,
    Shape,
    State,
    backward_spec,
    bind_backward,
    check_cotangents,
)
from jaxnn.layers import default_float

__all__ = ["intermediates", "layer_keys", "serial"]


def _names(layers: Sequence[Layer]) -> tuple[str, ...]:
    return tuple(f"{layer.name}_{i}" for i, layer in enumerate(layers))


def layer_keys(network: Layer, kind: str | None = None) -> tuple[str, ...]:
    """The keys of a composition's layers, in the order they run; with ``kind``, of that kind.

    ``"{layer.name}_{i}"`` for the ``i``-th layer (``("dense_0", "relu_1", ...)``): the keys
    of its params and state (where a layer has them) and of :func:`intermediates`' outputs.
    Use it to walk a network's params in order (``[k for k in layer_keys(net) if k in
    params]``): a dict that has been through ``jit`` or ``jax.tree.map`` comes back with its
    keys sorted (``"dense_10"`` before ``"dense_2"``).

    Args:
      network: a composition (``serial`` or ``mlp``).
      kind: a layer name (``"dense"``, ``"batchnorm"``, ``"sigmoid"``, ...): only the keys of
        the layers so named, in order (``layer_keys(net, "dense")``: every kernel's layer).

    Raises:
      TypeError: ``network`` is not a composition.
    """
    if not isinstance(network, Layer) or not network.children:
        raise TypeError("layer_keys needs a composition (serial or mlp).")
    names = _names(network.children)
    if kind is None:
        return names
    return tuple(n for n, layer in zip(names, network.children, strict=True) if layer.name == kind)


def _layer_keys(layers: Sequence[Layer], key: PRNGKey | None) -> list[PRNGKey | None]:
    """One key per stochastic layer (``None`` for the others): ``key`` split in order."""
    stochastic = [i for i, layer in enumerate(layers) if layer.stochastic]
    keys: list[PRNGKey | None] = [None] * len(layers)
    if key is None or not stochastic:
        return keys
    split = [key] if len(stochastic) == 1 else list(jax.random.split(key, len(stochastic)))
    for i, k in zip(stochastic, split, strict=True):
        keys[i] = k
    return keys


def _check_tree(tree: Any, names: tuple[str, ...], what: str, net: str) -> None:
    if not isinstance(tree, dict) or not set(tree) <= set(names):
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(
            f"{net}: the {what} do not match the network: expected a dict whose keys are among "
            f"{list(names)} (one per layer that has {what}), got {got}. Use the {what} that "
            f"this network's init returned (or a pytree with the same structure)."
        )


def _forward(
    layer: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    train: bool,
    key: PRNGKey | None,
    keywords: dict[str, Any],
    with_vjp: bool,
) -> tuple[Array, State, dict[str, Array], list[Any]]:
    """Run a composition's layers in order: ``(y, new_state, outputs by name, backwards)``."""
    layers, names = layer.children, _names(layer.children)
    _check_tree(params, names, "params", layer.name)
    _check_tree(state, names, "state", layer.name)
    unknown = set(keywords) - set(layer.keywords)
    if unknown:
        raise TypeError(
            f"{layer.name}: no layer of this network takes the keyword(s) {sorted(unknown)}; "
            f"its layers take {list(layer.keywords) or 'no keyword arrays'}."
        )
    new_state, outputs, backwards = {}, {}, []
    for name, child, k in zip(names, layers, _layer_keys(layers, key), strict=True):
        kw = {a: keywords[a] for a in child.keywords if a in keywords}
        p, s = params.get(name, {}), state.get(name, {})
        if with_vjp:
            x, s, backward = child.vjp(p, s, x, train=train, key=k, **kw)
            backwards.append(backward)
        else:
            x, s = child.apply(p, s, x, train=train, key=k, **kw)
        if name in state or s != {}:
            new_state[name] = s
        outputs[name] = x
    return x, new_state, outputs, backwards


def _forward_vjp(
    network: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    train: bool,
    key: PRNGKey | None,
    keywords: dict[str, Any],
) -> tuple[Array, State, dict[str, Any], dict[str, Array], list[Any], tuple[BackwardSpec, ...]]:
    """The forward keeping each layer's backward: ``(y, new_state, inputs, outputs, backwards,
    specs)``, inputs and outputs by key, ``specs`` what each backward must return."""
    y, new_state, outputs, backwards = _forward(
        network, params, state, x, train, key, keywords, with_vjp=True
    )
    names = _names(network.children)
    inputs = dict(zip(names, (x, *list(outputs.values())[:-1]), strict=True))  # i - 1's output
    specs = tuple(
        backward_spec(f"{n!r} in {network.name!r}", b, params.get(n, {}), inputs[n])
        for n, b in zip(names, backwards, strict=True)
    )
    return y, new_state, inputs, outputs, backwards, specs


def _backward_pass(
    backwards: Sequence[Any], dy: Array, names: tuple[str, ...], specs: tuple[BackwardSpec, ...]
) -> tuple[dict[str, Array], dict[str, Params], Array]:
    """The reverse loop: ``(dy each layer received, dparams each returned, dx)``, by key."""
    # Each result is checked against its layer's spec (trace time only): a wrong structure is
    # named here, at the layer that returned it, not inside the layer before.
    received, grads = {}, {}
    for name, backward, spec in reversed(list(zip(names, backwards, specs, strict=True))):
        received[name] = dy
        grads[name], dy = check_cotangents(spec, backward(dy))
    return received, grads, dy


def _serial_backward(
    backwards: tuple[Any, ...],
    dy: Array,
    *,
    names: tuple[str, ...],
    with_params: frozenset[str],
    specs: tuple[BackwardSpec, ...],
) -> tuple[Params, Array]:
    _, grads, dx = _backward_pass(backwards, dy, names, specs)
    return {name: grads[name] for name in names if name in with_params}, dx


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers in sequence: ``y = layer_n(... layer_1(x))``. The result is a layer.

    See the module docstring for the params' keys, the backward, and how keys and keyword
    arrays reach the layers.

    Example::

        net = serial(dense(16), activation("tanh"), dropout(0.1), dense(3))
        params, state = net.init(jax.random.key(0), (8, 4))
        y, state = net.apply(params, state, x, train=True, key=jax.random.key(1))
    """
    if not layers:
        raise ValueError("serial needs at least one layer.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"serial: argument {i} must be a Layer (dense(...), activation(...), ...), got "
                f"{type(layer).__name__} {layer!r}."
            )
    names = _names(layers)
    keywords = tuple(dict.fromkeys(k for layer in layers for k in layer.keywords))

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        shape = jax.ShapeDtypeStruct(ensure_input_shape(input_shape, name), default_float())
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        params, state = {}, {}
        for k, layer_name, layer in zip(keys, names, layers, strict=True):
            p, s = layer.init(k, shape.shape)
            if p != {}:
                params[layer_name] = p
            if s != {}:
                state[layer_name] = s
            out, _ = jax.eval_shape(functools.partial(layer.apply, train=False), p, s, shape)
            shape = jax.ShapeDtypeStruct(out.shape, shape.dtype)
        return params, state

    def apply(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        y, new_state, _, _ = _forward(net, params, state, x, train, key, kw, with_vjp=False)
        return y, new_state

    def vjp(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        y, new_state, _, _, backwards, specs = _forward_vjp(net, params, state, x, train, key, kw)
        static = {"names": names, "with_params": frozenset(params), "specs": specs}
        return y, new_state, bind_backward(_serial_backward, tuple(backwards), **static)

    net = Layer(
        name,
        init,
        apply,
        vjp,
        keywords=keywords,
        stochastic=any(layer.stochastic for layer in layers),
        children=tuple(layers),
    )
    return net


def intermediates(
    network: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    *,
    train: bool,
    key: PRNGKey | None = None,
    **keywords: Any,
) -> tuple[Array, State, dict[str, Array]]:
    """A composition's forward pass with every layer's output, by the layer's key.

    The same computation as ``network.apply`` (same key splitting, same keyword routing), so
    ``intermediates(net, ...)["batchnorm_4"]`` is what the layer ``batchnorm_4`` handed on
    inside ``net.apply``. Under ``jit`` the outputs you do not use cost nothing.

    Returns:
      ``(y, new_state, outputs)``: ``outputs`` maps each key of ``params`` (``"dense_0"``,
      ``"sigmoid_1"``, ...) to that layer's output, in order.

    Raises:
      TypeError: ``network`` is not a composition (``serial`` or ``mlp``).
    """
    if not isinstance(network, Layer) or not network.children:
        got = network.name if isinstance(network, Layer) else type(network).__name__
        raise TypeError(
            f"intermediates needs a composition (serial or mlp), got {got!r}, which has no "
            f"layers inside it: its output is apply's output."
        )
    y, new_state, outputs, _ = _forward(network, params, state, x, train, key, keywords, False)
    return y, new_state, outputs
