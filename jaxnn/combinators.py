"""Composition: ``serial`` and ``residual`` (a composition is itself a layer), ``intermediates``,
``layer_keys``.

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
import jax.numpy as jnp

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

__all__ = ["intermediates", "layer_keys", "residual", "serial"]


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
        x_dtype = jnp.int32 if layers[0].integer_input else default_float()
        shape = jax.ShapeDtypeStruct(ensure_input_shape(input_shape, name), x_dtype)
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        params, state = {}, {}
        for k, layer_name, layer in zip(keys, names, layers, strict=True):
            p, s = layer.init(k, shape.shape)
            if p != {}:
                params[layer_name] = p
            if s != {}:
                state[layer_name] = s
            out, _ = jax.eval_shape(functools.partial(layer.apply, train=False), p, s, shape)
            shape = jax.ShapeDtypeStruct(out.shape, default_float())
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
        integer_input=layers[0].integer_input,
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


# ----------------------------------------------------------------------------- residual


def _residual_backward(
    block_backward: Any,
    shortcut_backward: Any,
    dy: Array,
    *,
    specs: tuple[BackwardSpec, BackwardSpec | None],
    keys: tuple[bool, bool],
) -> tuple[Params, Array]:
    # y = f(x) + g(x): dy reaches both branches unchanged, and x's gradient is the sum of the
    # two (the chain rule through a fork). With g the identity, dx = dx_f + dy.
    dparams: dict[str, Params] = {}
    dp, dx = check_cotangents(specs[0], block_backward(dy))
    if keys[0]:
        dparams["block"] = dp
    if shortcut_backward is None:
        return dparams, dx + dy.astype(dx.dtype)
    dp, dx_shortcut = check_cotangents(specs[1], shortcut_backward(dy))
    if keys[1]:
        dparams["shortcut"] = dp
    return dparams, dx + dx_shortcut


def residual(block: Layer, shortcut: Layer | None = None, *, name: str = "residual") -> Layer:
    """A residual connection (He et al., 2016): ``y = block(x) + shortcut(x)``. A layer.

    ``shortcut`` is the identity by default (He et al.'s option A/B identity shortcut), or a
    layer of its own, e.g. a projection ``conv2d(C_out, 1, strides=s, use_bias=False)`` where
    the block changes the channels or the resolution (option B). ``y`` is what is added:
    put an activation after the sum with ``serial(residual(...), activation("relu"))``, as
    He et al.'s post-activation block does.

    **Backward.** The input reaches both branches, so its gradient is the sum of theirs;
    each branch receives the whole ``dy``::

        (dθ_block, dx_block) = block.backward(dy)
        (dθ_shortcut, dx_shortcut) = shortcut.backward(dy)      (identity: dx_shortcut = dy)
        dx = dx_block + dx_shortcut

    An identity shortcut passes ``dy`` to ``x`` unchanged whatever the block does: a deep
    stack of residual blocks keeps a path on which the gradient is not multiplied by any
    layer's Jacobian (He et al., 2016b, "Identity Mappings in Deep Residual Networks", eq. 5).

    Params and state are dicts ``{"block": ..., "shortcut": ...}``, each entry present where
    that branch has params (or state). Keys: a stochastic branch gets its own (split from
    ``key``); keyword arrays (BatchNorm's ``mask``) reach every branch that names them.

    PyTorch writes the block as a module whose ``forward`` returns ``out + identity``
    (torchvision's ``BasicBlock``); Flax as a module adding its input (``ResNetBlock`` in the
    Flax examples). Same computation.

    Raises:
      TypeError: ``block`` or ``shortcut`` is not a Layer.
      ValueError: the two branches' outputs differ in shape (at ``init`` and at every call):
        the message names the block and both shapes, and suggests a projection shortcut.
    """
    for what, layer in (("block", block), ("shortcut", shortcut)):
        if layer is not None and not isinstance(layer, Layer):
            raise TypeError(
                f"{name}: the {what} must be a Layer (conv2d(...), serial(...), ...), got "
                f"{type(layer).__name__} {layer!r}."
            )
    branches = (block,) if shortcut is None else (block, shortcut)
    keywords = tuple(dict.fromkeys(k for layer in branches for k in layer.keywords))
    shortcut_name = "the identity" if shortcut is None else f"the shortcut {shortcut.name!r}"

    def check_shapes(x_shape: tuple[int, ...], y_block: Any, y_shortcut: Any) -> None:
        if tuple(y_block.shape) != tuple(y_shortcut.shape):
            raise ValueError(
                f"{name}: the block {block.name!r} maps x of shape {tuple(x_shape)} to "
                f"{tuple(y_block.shape)} but {shortcut_name} gives {tuple(y_shortcut.shape)}; "
                f"the two are added, so they must have one shape. Give a projection shortcut "
                f"that maps x to the block's output shape, e.g. residual(block, shortcut="
                f"{projection(y_block.shape)})."
            )

    def projection(shape: tuple[int, ...]) -> str:
        if len(shape) == 4:  # NHWC: a 1x1 convolution, strided where the block downsamples
            return f"conv2d({shape[-1]}, 1, strides=..., use_bias=False)"
        return f"dense({shape[-1]}, use_bias=False)"

    def split(key: PRNGKey | None) -> tuple[PRNGKey | None, PRNGKey | None]:
        keys = _layer_keys(branches, key)
        return keys[0], (keys[1] if len(keys) > 1 else None)

    def route(layer: Layer, kw: dict[str, Any]) -> dict[str, Any]:
        return {a: kw[a] for a in layer.keywords if a in kw}

    def check_keywords(kw: dict[str, Any]) -> None:
        unknown = set(kw) - set(keywords)
        if unknown:
            raise TypeError(
                f"{name}: no branch takes the keyword(s) {sorted(unknown)}; its branches take "
                f"{list(keywords) or 'no keyword arrays'}."
            )

    def parts(tree: Any, what: str) -> tuple[Any, Any]:
        if not isinstance(tree, dict) or not set(tree) <= {"block", "shortcut"}:
            got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(
                f"{name}: the {what} must be a dict with keys among ['block', 'shortcut'], got "
                f"{got}. Use the {what} that this layer's init returned."
            )
        return tree.get("block", {}), tree.get("shortcut", {})

    def pack(block_tree: Any, shortcut_tree: Any, had: dict) -> dict:
        out = {}
        if block_tree != {} or "block" in had:
            out["block"] = block_tree
        if shortcut is not None and (shortcut_tree != {} or "shortcut" in had):
            out["shortcut"] = shortcut_tree
        return out

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        shape = ensure_input_shape(input_shape, name)
        k_block, k_shortcut = (None, None) if key is None else tuple(jax.random.split(key))
        x = jax.ShapeDtypeStruct(shape, default_float())
        pb, sb = block.init(k_block, shape)
        yb, _ = jax.eval_shape(functools.partial(block.apply, train=False), pb, sb, x)
        ps, ss = ({}, {}) if shortcut is None else shortcut.init(k_shortcut, shape)
        if shortcut is None:
            ys = x
        else:
            ys, _ = jax.eval_shape(functools.partial(shortcut.apply, train=False), ps, ss, x)
        check_shapes(shape, yb, ys)
        return pack(pb, ps, {}), pack(sb, ss, {})

    def apply(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        check_keywords(kw)
        (pb, ps), (sb, ss) = parts(params, "params"), parts(state, "state")
        kb, ks = split(key)
        yb, sb = block.apply(pb, sb, x, train=train, key=kb, **route(block, kw))
        if shortcut is None:
            ys = jnp.asarray(x)
        else:
            ys, ss = shortcut.apply(ps, ss, x, train=train, key=ks, **route(shortcut, kw))
        check_shapes(jnp.shape(x), yb, ys)
        return yb + ys, pack(sb, ss, state)

    def vjp(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        check_keywords(kw)
        (pb, ps), (sb, ss) = parts(params, "params"), parts(state, "state")
        kb, ks = split(key)
        yb, sb, bb = block.vjp(pb, sb, x, train=train, key=kb, **route(block, kw))
        spec_b = backward_spec(f"{block.name!r} in {name!r}", bb, pb, x)
        if shortcut is None:
            ys, bs, spec_s = jnp.asarray(x), None, None
        else:
            ys, ss, bs = shortcut.vjp(ps, ss, x, train=train, key=ks, **route(shortcut, kw))
            spec_s = backward_spec(f"{shortcut.name!r} in {name!r}", bs, ps, x)
        check_shapes(jnp.shape(x), yb, ys)
        keys = ("block" in params, "shortcut" in params)
        backward = bind_backward(_residual_backward, bb, bs, specs=(spec_b, spec_s), keys=keys)
        return yb + ys, pack(sb, ss, state), backward

    return Layer(
        name,
        init,
        apply,
        vjp,
        keywords=keywords,
        stochastic=any(layer.stochastic for layer in branches),
    )
