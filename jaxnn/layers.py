"""Layers: dense, activation, and their composition (``serial``, ``mlp``), with initialisers.

A layer is a :class:`Layer`, a record of pure functions in the style of optax's
``GradientTransformation`` and stax's ``(init_fun, apply_fun)``:

* ``init(key, input_shape) -> (params, state)``; a stateless layer returns ``state = {}``.
* ``apply(params, state, x, *, train=False, key=None) -> (y, new_state)``.
* ``vjp(params, state, x, *, train=False, key=None) -> (y, new_state, backward)`` with
  ``backward(dy) -> (dparams, dx)`` derived by hand. ``backward`` is a
  ``jax.tree_util.Partial``: a pytree whose leaves are the saved activations, so it can be
  returned from ``jit`` and used as the residual of a ``jax.custom_vjp``.

Params are plain nested dicts of arrays (``{"w": ..., "b": ...}``); state (BatchNorm's running
statistics) is a separate pytree that an optimizer never sees. ``input_shape`` includes the
leading batch axes, e.g. ``(batch, features)``; any batch size will do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxnn import activations as _activations
from jaxnn import gradcheck
from jaxnn._checks import ensure_float, ensure_min_rank, unknown_name
from jaxnn._typing import Array, ArrayLike, Params, PRNGKey, Shape, State

__all__ = [
    "INITIALIZERS",
    "Initializer",
    "Layer",
    "activation",
    "constant",
    "dense",
    "get_initializer",
    "given",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "mlp",
    "ones",
    "serial",
    "zeros",
]


class Layer(NamedTuple):
    """A layer: a named record of pure functions (see the module docstring)."""

    name: str
    init: Callable[[PRNGKey, Shape], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    vjp: Callable[..., tuple[Array, State, Callable[[Array], tuple[Params, Array]]]]


# ----------------------------------------------------------------------------- initialisers

# An initialiser maps (key, shape, dtype) to an array. For a dense kernel of shape
# [fan_in, fan_out], the variance-scaling schemes below use these fans.
Initializer = Callable[[PRNGKey, tuple[int, ...], Any], Array]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Glorot & Bengio (2010): ``U(-a, a)``, ``a = √(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = _fans(shape)
    a = math.sqrt(6 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -a, a)


def glorot_normal(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``N(0, σ²)``, ``σ = √(2 / (fan_in + fan_out))`` (untruncated, as PyTorch's xavier_normal_)."""
    fan_in, fan_out = _fans(shape)
    return math.sqrt(2 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)


def he_uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """He et al. (2015) for ReLU: ``U(-a, a)``, ``a = √(6 / fan_in)``."""
    fan_in, _ = _fans(shape)
    a = math.sqrt(6 / fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)


def he_normal(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """He et al. (2015): ``N(0, 2 / fan_in)`` (untruncated, as PyTorch's kaiming_normal_)."""
    fan_in, _ = _fans(shape)
    return math.sqrt(2 / fan_in) * jax.random.normal(key, shape, dtype)


def lecun_uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """LeCun et al. (1998): ``U(-a, a)``, ``a = √(3 / fan_in)`` (variance ``1 / fan_in``)."""
    fan_in, _ = _fans(shape)
    a = math.sqrt(3 / fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)


def lecun_normal(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``N(0, 1 / fan_in)`` (untruncated); the initialiser SELU's fixed point assumes."""
    fan_in, _ = _fans(shape)
    return math.sqrt(1 / fan_in) * jax.random.normal(key, shape, dtype)


def zeros(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    del key
    return jnp.zeros(shape, dtype)


def ones(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    del key
    return jnp.ones(shape, dtype)


def constant(value: float) -> Initializer:
    """Every element equal to ``value``."""

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def given(values: ArrayLike) -> Initializer:
    """Exactly ``values`` (to set a published example's weights); the shape must match.

    Example: the worked example's hidden layer, ``w[i, j]`` from input ``i`` to unit ``j``::

        dense(2, w_init=given([[0.15, 0.25], [0.20, 0.30]]), b_init=constant(0.35))
    """
    values = np.asarray(values)

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        if tuple(values.shape) != tuple(shape):
            raise ValueError(
                f"given() values have shape {tuple(values.shape)}, but the layer needs a "
                f"parameter of shape {tuple(shape)}. A dense kernel is [in_features, "
                f"out_features]: w[i, j] connects input i to unit j."
            )
        return jnp.asarray(values, dtype)

    return init


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "zeros": zeros,
    "ones": ones,
}


def get_initializer(init: str | Initializer) -> Initializer:
    """An initialiser by name (``"glorot_uniform"``, ``"he_normal"``...), or a callable."""
    if callable(init):
        return init
    if isinstance(init, str) and init in INITIALIZERS:
        return INITIALIZERS[init]
    raise unknown_name("initialiser", str(init), list(INITIALIZERS))


def _default_float() -> Any:
    return jnp.result_type(float)  # float64 under jax_enable_x64, else float32


# ----------------------------------------------------------------------------- dense


def _check_dense_params(params: Any, x: Array, use_bias: bool, name: str) -> None:
    expected = {"w", "b"} if use_bias else {"w"}
    if not isinstance(params, dict) or set(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{name}: params must be a dict with keys {sorted(expected)}, got {got}. Use the "
            f"params that this layer's init returned."
        )
    w = params["w"]
    if jnp.ndim(w) != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"{name}: the kernel w has shape {tuple(jnp.shape(w))} but the input has "
            f"{x.shape[-1]} features (x.shape={x.shape}); w must be [in_features="
            f"{x.shape[-1]}, out_features]."
        )
    if use_bias and jnp.shape(params["b"]) != (w.shape[1],):
        raise ValueError(
            f"{name}: the bias b has shape {tuple(jnp.shape(params['b']))}; it must be "
            f"({w.shape[1]},) to match w of shape {tuple(w.shape)}."
        )


def _dense_backward(x: Array, w: Array, dy: Array) -> tuple[Params, Array]:
    # y = x @ w + b over leading axes [..., in] -> [..., out]:
    #   dw = Σ_batch xᵀ dy,   db = Σ_batch dy,   dx = dy @ wᵀ
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    return {"w": x2.T @ dy2, "b": jnp.sum(dy2, axis=0)}, dy @ w.T


def _dense_backward_no_bias(x: Array, w: Array, dy: Array) -> tuple[Params, Array]:
    x2 = x.reshape(-1, x.shape[-1])
    return {"w": x2.T @ dy.reshape(-1, dy.shape[-1])}, dy @ w.T


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    param_dtype: Any = None,
    name: str = "dense",
) -> Layer:
    """A fully connected layer ``y = x @ w + b``.

    Shapes: ``x [..., in]``, ``w [in, out]``, ``b [out]``, ``y [..., out]``.

    Backward (hand-derived), summing over the leading (batch) axes::

        dw = xᵀ dy        db = Σ dy        dx = dy wᵀ

    Args:
      features: ``out``, the number of units.
      use_bias: whether to add ``b``.
      w_init, b_init: initialisers, by name or callable (see :data:`INITIALIZERS`,
        :func:`given`, :func:`constant`).
      param_dtype: dtype of the parameters (default: float64 under ``jax_enable_x64``,
        else float32).
      name: the layer's name, used in error messages and as its key inside ``serial``.
    """
    if not (isinstance(features, int | np.integer) and features > 0):
        raise ValueError(f"dense: features must be a positive int, got {features!r}.")
    w_init_fn, b_init_fn = get_initializer(w_init), get_initializer(b_init)
    backward_fn = _dense_backward if use_bias else _dense_backward_no_bias

    def init(key: PRNGKey, input_shape: Shape) -> tuple[Params, State]:
        if len(input_shape) < 1:
            raise ValueError(f"{name}: input_shape must be [..., in_features], got {input_shape}.")
        dtype = param_dtype or _default_float()
        kw, kb = jax.random.split(key)
        params = {"w": w_init_fn(kw, (int(input_shape[-1]), features), dtype)}
        if use_bias:
            params["b"] = b_init_fn(kb, (features,), dtype)
        return params, {}

    def apply(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        del train, key
        x = ensure_float(x, "x")
        ensure_min_rank(x, 1, "x", "[..., in_features]")
        _check_dense_params(params, x, use_bias, name)
        y = x @ params["w"]
        if use_bias:
            y = y + params["b"]
        return y, state

    def vjp(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        y, state = apply(params, state, x, train=train, key=key)
        return y, state, Partial(backward_fn, jnp.asarray(x), params["w"])

    return Layer(name, init, apply, vjp)


# ----------------------------------------------------------------------------- activation


def _activation_backward(act_backward: Callable[[Array], Array], dy: Array) -> tuple[Params, Array]:
    return {}, act_backward(dy)


def activation(fn: str | _activations.Activation, *, name: str | None = None) -> Layer:
    """A parameter-free layer applying an activation (by name or :class:`Activation`).

    Backward: ``dx = backward_activation(dy)`` (``dy ⊙ f'(x)`` for elementwise ones).
    """
    act = _activations.get(fn)
    layer_name = name or act.name

    def init(key: PRNGKey, input_shape: Shape) -> tuple[Params, State]:
        del key, input_shape
        return {}, {}

    def _check(params: Params) -> None:
        if params != {} and params is not None:
            raise ValueError(
                f"{layer_name}: an activation layer has no parameters (params must be {{}}), got "
                f"{jax.tree.structure(params)}."
            )

    def apply(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        del train, key
        _check(params)
        return act.fn(ensure_float(x, "x")), state

    def vjp(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        del train, key
        _check(params)
        y, act_backward = act.vjp(ensure_float(x, "x"))
        return y, state, Partial(_activation_backward, act_backward)

    return Layer(layer_name, init, apply, vjp)


# ----------------------------------------------------------------------------- composition


def _split_key(key: PRNGKey | None, n: int) -> list[PRNGKey | None]:
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers in sequence: ``y = layer_n(... layer_1(x))``. The result is a layer.

    Its params and state are dicts keyed ``"{layer.name}_{i}"`` (``"dense_0"``,
    ``"sigmoid_1"``, ...), each holding that layer's own params or state.

    Backward: the chain rule, done by hand. The forward runs each layer's ``vjp`` and keeps its
    ``backward``; the backward runs them in reverse, feeding each one's ``dx`` to the layer
    before as its ``dy``, and collects every ``dparams``::

        dy_n = dL/dy;   (dparams_i, dy_{i-1}) = backward_i(dy_i),  i = n, ..., 1
    """
    if not layers:
        raise ValueError("serial needs at least one layer.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is a {type(layer).__name__}, not a Layer.")
    names = tuple(f"{layer.name}_{i}" for i, layer in enumerate(layers))

    def _check(tree: Any, what: str) -> None:
        if not isinstance(tree, dict) or set(tree) != set(names):
            got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(
                f"{name}: the {what} do not match the network: expected a dict with keys "
                f"{list(names)}, got {got}. Use the {what} that this network's init returned "
                f"(or a pytree with the same structure)."
            )

    def init(key: PRNGKey, input_shape: Shape) -> tuple[Params, State]:
        params, state = {}, {}
        shape = jax.ShapeDtypeStruct(tuple(input_shape), _default_float())
        for k, layer_name, layer in zip(_split_key(key, len(layers)), names, layers, strict=True):
            p, s = layer.init(k, shape.shape)
            params[layer_name], state[layer_name] = p, s
            out, _ = jax.eval_shape(functools.partial(layer.apply, train=False), p, s, shape)
            shape = jax.ShapeDtypeStruct(out.shape, shape.dtype)
        return params, state

    def apply(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        _check(params, "params")
        _check(state, "state")
        new_state = {}
        for k, layer_name, layer in zip(_split_key(key, len(layers)), names, layers, strict=True):
            x, new_state[layer_name] = layer.apply(
                params[layer_name], state[layer_name], x, train=train, key=k
            )
        return x, new_state

    def backward(backwards: tuple[Callable[[Array], tuple[Params, Array]], ...], dy: Array):
        grads = {}
        for layer_name, layer_backward in zip(reversed(names), reversed(backwards), strict=True):
            grads[layer_name], dy = layer_backward(dy)
        return grads, dy

    def vjp(
        params: Params,
        state: State,
        x: ArrayLike,
        *,
        train: bool = False,
        key: PRNGKey | None = None,
    ):
        _check(params, "params")
        _check(state, "state")
        new_state, backwards = {}, []
        for k, layer_name, layer in zip(_split_key(key, len(layers)), names, layers, strict=True):
            x, new_state[layer_name], layer_backward = layer.vjp(
                params[layer_name], state[layer_name], x, train=train, key=k
            )
            backwards.append(layer_backward)
        return x, new_state, Partial(backward, tuple(backwards))

    return Layer(name, init, apply, vjp)


def mlp(
    features: Sequence[int],
    activation: str | _activations.Activation | Sequence[str | _activations.Activation] = "relu",
    *,
    final_activation: str | _activations.Activation | None = None,
    use_bias: bool = True,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    param_dtype: Any = None,
    batchnorm: bool | dict[str, Any] = False,
    name: str = "mlp",
) -> Layer:
    """A multi-layer perceptron: ``dense(features[0])``, activation, ..., ``dense(features[-1])``.

    Args:
      features: units of each dense layer, e.g. ``[100, 100, 10]``.
      activation: one activation for every hidden layer (the last gets ``final_activation``,
        default identity), or a sequence with one activation per dense layer (then
        ``final_activation`` must be left out).
      final_activation: activation after the last dense layer, when ``activation`` is one.
      use_bias, w_init, b_init, param_dtype: passed to every :func:`dense`.
      batchnorm: put a :func:`jaxnn.batchnorm.batchnorm` between each hidden dense layer and
        its activation (Ioffe & Szegedy's placement); a dict passes its arguments.
    """
    features = list(features)
    if not features:
        raise ValueError("mlp: features must list at least one layer size, got [].")
    if isinstance(activation, str | _activations.Activation):
        _activations.get(activation)  # an unknown name is an error even for a one-layer mlp
        acts = [activation] * (len(features) - 1) + [final_activation or "identity"]
    else:
        acts = list(activation)
        if final_activation is not None:
            raise ValueError(
                "mlp: give either one activation per layer or final_activation, not both."
            )
        if len(acts) != len(features):
            raise ValueError(
                f"mlp: {len(features)} dense layers need {len(features)} activations, got "
                f"{len(acts)}: {acts}."
            )
    bn_kwargs = batchnorm if isinstance(batchnorm, dict) else {}
    if batchnorm:
        from jaxnn.batchnorm import batchnorm as _batchnorm  # batchnorm imports this module

    layers: list[Layer] = []
    for i, (f, a) in enumerate(zip(features, acts, strict=True)):
        layers.append(
            dense(f, use_bias=use_bias, w_init=w_init, b_init=b_init, param_dtype=param_dtype)
        )
        if batchnorm and i < len(features) - 1:
            layers.append(_batchnorm(param_dtype=param_dtype, **bn_kwargs))
        layers.append(_activations_layer(a))
    return serial(*layers, name=name)


_activations_layer = activation


# ----------------------------------------------------------------------------- gradcheck


def layer_case(
    layer: Layer, input_shape: Shape, *, train: bool = False
) -> Callable[[PRNGKey], gradcheck.GradCase]:
    """A gradcheck case for a layer: ``f(params, x) = Σ w ⊙ layer(params, x)`` with random ``w``.

    Its hand-derived gradient runs the layer's ``vjp`` backward on ``w``.
    """

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_init, k_x, k_w = jax.random.split(key, 3)
        with jax.enable_x64(True):
            params, state = layer.init(k_init, input_shape)
            params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
            x = jax.random.normal(k_x, tuple(input_shape), jnp.float64)
            y, _ = layer.apply(params, state, x, train=train)
            w = jax.random.normal(k_w, y.shape, jnp.float64)

        def f(params: Params, x: Array) -> Array:
            return jnp.sum(w * layer.apply(params, state, x, train=train)[0])

        def grad_fn(params: Params, x: Array) -> tuple[Params, Array]:
            _, _, backward = layer.vjp(params, state, x, train=train)
            return backward(w)

        return gradcheck.GradCase(f, (params, x), grad_fn, (0, 1), f"x{tuple(input_shape)}")

    return make


def _random_dense(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    b, i, o = (int(s) for s in jax.random.randint(k_shape, (3,), 1, 7))
    return layer_case(dense(o, w_init="glorot_normal", b_init="glorot_normal"), (b, i))(k_case)


def _random_mlp(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_act, k_case = jax.random.split(key, 3)
    sizes = [int(s) for s in jax.random.randint(k_shape, (4,), 1, 6)]
    smooth = ["sigmoid", "tanh", "softplus", "gelu", "gelu_tanh", "silu", "elu", "selu"]
    acts = [smooth[int(i)] for i in jax.random.randint(k_act, (2,), 0, len(smooth))]
    net = mlp(sizes[1:], [acts[0], acts[1], "identity"], b_init="glorot_normal")
    return layer_case(net, (sizes[0], 3))(k_case)


gradcheck.register("layers.dense", _random_dense)
gradcheck.register("layers.mlp", _random_mlp)
