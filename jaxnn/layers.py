"""Layers: ``dense``, ``activation``, ``dropout``, ``flatten`` and ``reshape``, each forward beside
its hand backward.

Every factory returns a :class:`~jaxnn.Layer` (the protocol is in ``jaxnn._typing``):
``init(key, input_shape) -> (params, state)``, ``apply(params, state, x, *, train, key=None)
-> (y, state)`` and ``vjp(...) -> (y, state, backward)`` with ``backward(dy) -> (dparams,
dx)`` derived by hand. Params are plain dicts of arrays; these layers have no state (``{}``).
Composition (``serial``, ``mlp``) is in :mod:`jaxnn.combinators`, BatchNorm in
:mod:`jaxnn.batchnorm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import activations as _activations
from jaxnn import initializers as _initializers
from jaxnn._checks import (
    PARAM_DTYPE_HINT,
    ensure_float,
    ensure_float_dtype,
    ensure_input_shape,
    ensure_min_rank,
)
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward

__all__ = ["activation", "default_float", "dense", "dropout", "flatten", "reshape"]


def default_float() -> Any:
    """float64 under ``jax_enable_x64``, else float32: the default ``param_dtype``."""
    return jnp.result_type(float)


def _check_no_params(params: Params, name: str) -> None:
    if params != {} and params is not None:
        raise ValueError(
            f"{name}: this layer has no parameters (params must be {{}}), got "
            f"{jax.tree.structure(params)}. Use the params that its init returned."
        )


def _no_params_init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
    del key, input_shape
    return {}, {}


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


class _Casts(NamedTuple):
    """A dense layer's dtypes under a precision policy (static: bound into its backward)."""

    compute: Any  # x, w and b are cast to it; the matmul runs in it
    x: Any  # the input's dtype: dx is cast back to it
    w: Any  # the params' dtypes: dw and db are cast back to them
    b: Any  # None without a bias


def _dense_forward(
    params: Params, x: Array, use_bias: bool, compute_dtype: Any, output_dtype: Any
) -> tuple[Array, Array, Array, _Casts | None]:
    """``(y, x, w, casts)``: the output, and ``x`` and ``w`` as the matmul saw them."""
    w = params["w"]
    b = params["b"] if use_bias else None
    if compute_dtype is None and output_dtype is None:
        y = x @ w
        return (y if b is None else y + b), x, w, None
    operands = (x, w) if b is None else (x, w, b)
    compute = jnp.dtype(jnp.result_type(*operands) if compute_dtype is None else compute_dtype)
    casts = _Casts(compute, x.dtype, w.dtype, None if b is None else b.dtype)
    x, w = x.astype(compute), w.astype(compute)
    y = x @ w
    if b is not None:
        y = y + b.astype(compute)
    return (y if output_dtype is None else y.astype(output_dtype)), x, w, casts


def _dense_backward(
    x: Array, w: Array, dy: Array, *, use_bias: bool, casts: _Casts | None = None
) -> tuple[Params, Array]:
    # y = x @ w + b over leading axes [..., in] -> [..., out]:
    #   dw = Σ_batch xᵀ dy,   db = Σ_batch dy,   dx = dy @ wᵀ
    # Under a policy x and w are the compute-dtype copies; a cast's transpose is the cast
    # back, so dy enters in the compute dtype and each gradient leaves in its primal's dtype.
    if casts is not None:
        dy = dy.astype(casts.compute)
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    grads = {"w": x2.T @ dy2}
    if use_bias:
        grads["b"] = jnp.sum(dy2, axis=0)
    dx = dy @ w.T
    if casts is not None:
        grads["w"] = grads["w"].astype(casts.w)
        if use_bias:
            grads["b"] = grads["b"].astype(casts.b)
        dx = dx.astype(casts.x)
    return grads, dx


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: str | _initializers.Initializer = "glorot_uniform",
    b_init: str | _initializers.Initializer = "zeros",
    param_dtype: Any = None,
    compute_dtype: Any = None,
    output_dtype: Any = None,
    name: str = "dense",
) -> Layer:
    """A fully connected layer ``y = x @ w + b``.

    Shapes: ``x [..., in]``, ``w [in, out]``, ``b [out]``, ``y [..., out]``.

    Backward (hand-derived), summing over the leading (batch) axes::

        dw = xᵀ dy        db = Σ dy        dx = dy wᵀ

    **Precision** follows jmp's ``Policy(param_dtype, compute_dtype, output_dtype)``
    (DeepMind's mixed-precision library for JAX; Flax's ``Dense(param_dtype=..., dtype=...)``
    calls the compute dtype ``dtype``). The params are stored in ``param_dtype`` (float32: the
    master weights the optimizer updates); ``x``, ``w`` and ``b`` are cast to the compute
    dtype ``c`` and the result to ``output_dtype`` (default ``c``)::

        y = cast_o(cast_c(x) @ cast_c(w) + cast_c(b))

    A cast is linear and its transpose is the cast back, so the backward multiplies in ``c``
    and returns each gradient in its primal's dtype (float32 ``dw``, ``db`` for bfloat16
    compute: Micikevicius et al., 2018, "Mixed Precision Training"), as ``jax.grad`` does::

        dy_c = cast_c(dy)    dw = cast_w(cast_c(x)ᵀ dy_c)    db = cast_b(Σ dy_c)
        dx = cast_x(dy_c cast_c(w)ᵀ)

    Args:
      features: ``out``, the number of units.
      use_bias: whether to add ``b``.
      w_init, b_init: initialisers, by name or callable (see :mod:`jaxnn.initializers`).
      param_dtype: dtype of the parameters (default: float64 under ``jax_enable_x64``,
        else float32).
      compute_dtype: a floating dtype to run the matmul in (``jnp.bfloat16`` for mixed
        precision); None (default): no cast, ``x @ w + b`` in the dtype JAX promotes to.
      output_dtype: a floating dtype to cast ``y`` to; None (default): the compute dtype.
      name: the layer's name, used in error messages and as its key inside ``serial``.

    Raises:
      ValueError: ``features`` is not a positive int.
      TypeError: a dtype that is not floating-point, or is float16.

    float16 is refused for each of the three dtypes: its range (largest finite 65504,
    smallest normal 6.1e-5) overflows activations and underflows gradients unless the loss is
    scaled, which jaxnn does not do; bfloat16 has float32's range.

    Example::

        layer = dense(3)
        params, state = layer.init(jax.random.key(0), (8, 4))    # w [4, 3], b [3]
        y, state = layer.apply(params, state, x, train=False)    # y [8, 3]
    """
    if isinstance(features, bool) or not (isinstance(features, int | np.integer) and features > 0):
        raise ValueError(f"dense: features must be a positive int, got {features!r}.")
    w_init_fn, b_init_fn = _initializers.get(w_init), _initializers.get(b_init)
    compute_dtype = ensure_float_dtype(
        compute_dtype, f"{name}: compute_dtype", "Use jnp.bfloat16 for mixed precision."
    )
    output_dtype = ensure_float_dtype(output_dtype, f"{name}: output_dtype")
    param_dtype = ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT)

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        shape = ensure_input_shape(input_shape, name)
        if len(shape) < 1:
            raise ValueError(f"{name}: input_shape must be [..., in_features], got {shape}.")
        dtype = default_float() if param_dtype is None else param_dtype
        kw, kb = jax.random.split(key)
        params = {"w": w_init_fn(kw, (shape[-1], int(features)), dtype)}
        if use_bias:
            params["b"] = b_init_fn(kb, (int(features),), dtype)
        return params, {}

    def forward(params: Params, x: ArrayLike) -> tuple[Array, Array, Array, _Casts | None]:
        x = ensure_float(x, "x")
        ensure_min_rank(x, 1, "x", "[..., in_features]")
        _check_dense_params(params, x, use_bias, name)
        return _dense_forward(params, x, use_bias, compute_dtype, output_dtype)

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        return forward(params, x)[0], state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        y, x, w, casts = forward(params, x)
        return y, state, bind_backward(_dense_backward, x, w, use_bias=use_bias, casts=casts)

    return Layer(name, init, apply, vjp)


# ----------------------------------------------------------------------------- activation


def _activation_backward(act_backward: Any, dy: Array) -> tuple[Params, Array]:
    return {}, act_backward(dy)


def activation(fn: str | _activations.Activation, *, name: str | None = None) -> Layer:
    """A parameter-free layer applying an activation (by name or :class:`Activation`).

    Backward: the activation's own VJP, ``dx = dy ⊙ f'(x)`` for the elementwise ones (see
    :mod:`jaxnn.activations`).
    """
    act = _activations.get(fn)
    layer_name = name or act.name

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        _check_no_params(params, layer_name)
        return act.fn(ensure_float(x, "x")), state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        _check_no_params(params, layer_name)
        y, act_backward = act.vjp(ensure_float(x, "x"))
        return y, state, bind_backward(_activation_backward, act_backward)

    return Layer(layer_name, _no_params_init, apply, vjp)


# ----------------------------------------------------------------------------- dropout


def _dropout_forward(x: Array, keep: Array, keep_prob: float) -> Array:
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


def _dropout_backward(keep: Array, dy: Array, *, keep_prob: float) -> tuple[Params, Array]:
    # y = keep ⊙ x / (1 - rate)  =>  dx = keep ⊙ dy / (1 - rate): the same mask, the same scale.
    return {}, _dropout_forward(dy, keep, keep_prob)


def _identity_backward(dy: Array) -> tuple[Params, Array]:
    return {}, dy


def dropout(rate: float, *, name: str = "dropout") -> Layer:
    """Inverted dropout (Srivastava et al., 2014): drop each unit with probability ``rate``.

    ``rate`` is the probability of **dropping** a unit, as in PyTorch's ``nn.Dropout(p)``
    and Flax's ``nn.Dropout(rate)`` (stax's ``Dropout(rate)`` takes the *keep* probability).
    In training, with ``keep ~ Bernoulli(1 - rate)`` drawn independently for every element::

        y = keep ⊙ x / (1 - rate)        dx = keep ⊙ dy / (1 - rate)

    so that ``E[y] = x`` and evaluation needs no rescaling: with ``train=False`` the layer is
    the identity. The backward reuses the forward's mask (saved as the residual), so the same
    key gives the same mask in the hand-derived and the autodiff paths.

    Args:
      rate: in ``[0, 1)``. ``rate = 0`` is the identity in both modes (and needs no key).
        ``rate = 1`` is refused: it zeroes every unit, so nothing trains (PyTorch and Flax
        return zeros there).
      name: the layer's name.

    ``apply(params, state, x, *, train, key)``: ``train=True`` needs a PRNG key (inside
    ``serial``/``mlp`` one key for the network is split, one per dropout layer).

    Raises:
      ValueError: ``rate`` outside ``[0, 1)``; training without a key.
    """
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise TypeError(f"dropout: rate must be a number in [0, 1), got {type(rate).__name__}.")
    rate = float(rate)
    if not 0 <= rate < 1:
        raise ValueError(
            f"dropout: rate is the probability of DROPPING a unit and must lie in [0, 1), got "
            f"{rate!r}. (stax's Dropout takes the keep probability: rate = 1 - keep.)"
        )
    keep_prob = 1.0 - rate

    def mask(x: Array, train: bool, key: PRNGKey | None) -> Array | None:
        if not train or rate == 0:
            return None
        if key is None:
            raise ValueError(
                f"{name}: training (train=True) draws a random mask and needs a PRNG key, got "
                f"key=None. Pass key=jax.random.key(seed) to apply/vjp (a network splits it per "
                f"dropout layer; make_train_step's step and fit_full_batch take key= too), or "
                f"use train=False, where dropout is the identity."
            )
        return jax.random.bernoulli(key, keep_prob, x.shape)

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        _check_no_params(params, name)
        x = ensure_float(x, "x")
        keep = mask(x, train, key)
        return (x if keep is None else _dropout_forward(x, keep, keep_prob)), state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        _check_no_params(params, name)
        x = ensure_float(x, "x")
        keep = mask(x, train, key)
        if keep is None:
            return x, state, bind_backward(_identity_backward)
        backward = bind_backward(_dropout_backward, keep, keep_prob=keep_prob)
        return _dropout_forward(x, keep, keep_prob), state, backward

    return Layer(name, _no_params_init, apply, vjp, stochastic=rate > 0)


# ----------------------------------------------------------------------------- flatten, reshape


def _reshape_backward(dy: Array, *, shape: tuple[int, ...]) -> tuple[Params, Array]:
    # A reshape moves no value: dx is dy read in x's shape.
    return {}, dy.reshape(shape)


def _example_shape(x: Array, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``[batch, *shape]`` for ``x [batch, ...]``, refused unless the sizes agree."""
    if x.ndim < 1:
        raise ValueError(f"{name}: x must have a batch axis, [batch, ...], got a scalar.")
    size = math.prod(x.shape[1:])
    free = [i for i, d in enumerate(shape) if d == -1]
    if len(free) > 1 or any(d == 0 or d < -1 for d in shape):
        raise ValueError(
            f"{name}: the target shape {shape} may hold one -1 and positive sizes otherwise."
        )
    if free:
        known = math.prod(d for d in shape if d != -1)
        if size % known:
            raise ValueError(
                f"{name}: cannot reshape each example of shape {tuple(x.shape[1:])} ({size} "
                f"values) to {shape}: {size} is not a multiple of {known}."
            )
        shape = tuple(size // known if d == -1 else d for d in shape)
    if math.prod(shape) != size:
        raise ValueError(
            f"{name}: cannot reshape each example of shape {tuple(x.shape[1:])} ({size} values) "
            f"to {shape} ({math.prod(shape)} values). The input x has shape {tuple(x.shape)}; "
            f"the first axis is the batch."
        )
    return (x.shape[0], *shape)


def reshape(shape: Sequence[int], *, name: str = "reshape") -> Layer:
    """Reshape each example: ``x [batch, *a] -> y [batch, *shape]`` (row-major, as NumPy).

    ``shape`` may hold one ``-1`` (inferred). The backward reads ``dy`` in ``x``'s shape::

        dx = reshape(dy, x.shape)

    PyTorch's ``nn.Unflatten(1, shape)`` for flat input (``nn.Flatten``'s inverse); in Flax a
    plain ``x.reshape((x.shape[0], *shape))``. Use it to feed flat images (the digits
    ``[n, 64]``) to a convolution: ``reshape((8, 8, 1))`` gives NHWC.

    Raises:
      ValueError: ``shape`` has more than one ``-1`` or a size below 1; an example's size
        differs from ``prod(shape)``.
    """
    if isinstance(shape, int | np.integer):
        shape = (shape,)
    target = tuple(int(d) for d in shape)

    def forward(params: Params, x: ArrayLike) -> tuple[Array, Array]:
        _check_no_params(params, name)
        x = jnp.asarray(x)
        return x.reshape(_example_shape(x, target, name)), x

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        return forward(params, x)[0], state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        y, x = forward(params, x)
        return y, state, bind_backward(_reshape_backward, shape=tuple(x.shape))

    return Layer(name, _no_params_init, apply, vjp)


def flatten(*, name: str = "flatten") -> Layer:
    """Flatten each example: ``x [batch, d1, ..., dk] -> y [batch, d1 · ... · dk]``.

    Row-major, as PyTorch's ``nn.Flatten()`` (``start_dim=1``) and Flax's
    ``x.reshape((x.shape[0], -1))``; for NHWC input the channels vary fastest, so a dense
    layer after it sees another order of features than after PyTorch's NCHW flatten (transpose
    to NCHW first to carry PyTorch weights over). The backward::

        dx = reshape(dy, x.shape)
    """
    layer = reshape((-1,), name=name)
    return layer
