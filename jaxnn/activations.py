"""Activation functions, each with its hand-derived derivative written beside it.

Without a non-linearity, stacked dense layers compose to one linear map
``x @ (w1 @ w2) + (b1 @ w2 + b2)``, which cannot separate data that no straight line
separates. Each activation here is a pair:

* the forward ``f(x)``, written to be finite and correct for any finite input
  (inputs of +-1e4 in float32 and float64 included);
* its derivative ``f'(x)``, derived by hand, never by ``jax.grad``, and written so that it
  is also finite at saturation (0 or 1 there, never NaN).

**NaN propagates.** A NaN input gives a NaN output wherever ``jax.nn``'s activation gives one
(elementwise; a whole row for softmax and log-softmax), so one bad example cannot leave a
finite loss behind it; no ``where``, ``maximum`` or ``clip`` maps NaN to a number. The
forward's NaN reaches the loss and through it every gradient, on both gradient paths.

:class:`Activation` bundles them with a VJP of ``jax.vjp``'s shape: ``y, backward = vjp(x)``
and ``dx = backward(dy)``. For the elementwise activations ``dx = dy * f'(x)``; softmax and
log-softmax act along an axis and have the Jacobian-vector products given in their docstrings.

Look an activation up by name with :func:`get`; :data:`ACTIVATIONS` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jaxnn._checks import ensure_float, unknown_name
from jaxnn._typing import Array, ArrayLike, bind_backward

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "elu",
    "elu_derivative",
    "gelu",
    "gelu_derivative",
    "gelu_tanh",
    "gelu_tanh_derivative",
    "get",
    "identity",
    "identity_derivative",
    "leaky_relu",
    "leaky_relu_derivative",
    "log_softmax",
    "log_softmax_vjp",
    "relu",
    "relu_derivative",
    "selu",
    "selu_derivative",
    "sigmoid",
    "sigmoid_derivative",
    "silu",
    "silu_derivative",
    "softmax",
    "softmax_vjp",
    "softplus",
    "softplus_derivative",
    "swish",
    "tanh",
    "tanh_derivative",
]


# ----------------------------------------------------------------------------- identity


def identity(x: ArrayLike) -> Array:
    """``f(x) = x``."""
    return jnp.asarray(x)


def identity_derivative(x: ArrayLike) -> Array:
    """``f'(x) = 1``."""
    return jnp.ones_like(x)


# ----------------------------------------------------------------------------- sigmoid


def sigmoid(x: ArrayLike) -> Array:
    """Logistic sigmoid ``σ(x) = 1 / (1 + exp(-x))``.

    Evaluated by XLA's ``logistic`` operation: to an ulp in both tails (``σ(-30) =
    9.357622968839299e-14`` in float64), exactly 0 and 1 at -+1e4, never ``inf / inf``.
    """
    return lax.logistic(jnp.asarray(x))


def sigmoid_derivative(x: ArrayLike) -> Array:
    """``σ'(x) = σ(x) (1 - σ(x)) = σ(x) σ(-x)``.

    The product form ``σ(x) σ(-x)`` avoids the cancellation in ``1 - σ(x)`` when
    ``σ(x) ≈ 1``; at saturation it is ``1 * 0 = 0``, never NaN. Its maximum is 1/4 at 0
    (in exact arithmetic; in float32 the rounded product can be 0.25000003 near 0). The
    backward signal through a sigmoid layer is ``δ_l = σ'(z_l) ⊙ (W_{l+1} δ_{l+1})``, so
    ``‖δ_l‖ ≤ ¼ ‖W_{l+1}‖₂ ‖δ_{l+1}‖``: unless the weights' gain makes up the factor 4, each
    layer shrinks the signal, which is why deep sigmoid networks suffer vanishing gradients
    (``experiments/vanishing_gradients.py`` measures it).
    """
    return sigmoid(x) * sigmoid(-jnp.asarray(x))


# ----------------------------------------------------------------------------- tanh


def tanh(x: ArrayLike) -> Array:
    """``tanh(x) = (e^x - e^-x) / (e^x + e^-x) = 2σ(2x) - 1``."""
    return jnp.tanh(x)


def tanh_derivative(x: ArrayLike) -> Array:
    """``tanh'(x) = 1 - tanh(x)² = sech²(x) = 4z / (1 + z)²`` with ``z = e^{-2|x|}``.

    The last form keeps full relative precision in the tails, where ``1 - tanh²`` cancels
    (at x = 15 it is 4e-4 off; at x = 20 it gives 0 for 1.7e-17), and is exactly 0 at 1e4.
    """
    z = jnp.exp(-2 * jnp.abs(jnp.asarray(x)))
    return 4 * z / ((1 + z) * (1 + z))


# ----------------------------------------------------------------------------- relu family


def relu(x: ArrayLike) -> Array:
    """``relu(x) = max(x, 0)``; ``relu(NaN) = NaN``, as ``jax.nn.relu`` and PyTorch.

    Written so that a NaN passes through and ``jax.grad`` is :func:`relu_derivative`
    everywhere: ``where(x > 0, x, c)`` with ``c = where(x <= 0, 0, x)`` held constant (0, or
    the NaN itself). ``where(x > 0, x, 0)`` alone would map NaN to 0 and hide a bad input
    behind a finite output; ``maximum`` would give ``jax.grad`` a slope of ½ at the kink.
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, lax.stop_gradient(jnp.where(x <= 0, jnp.zeros_like(x), x)))


def relu_derivative(x: ArrayLike) -> Array:
    """``relu'(x) = 1 if x > 0 else 0``; at the kink x = 0 we take 0, and at NaN 0 too (as
    ``jax.nn.relu`` and PyTorch's backward: the forward's NaN already reaches the loss)."""
    x = jnp.asarray(x)
    return jnp.where(x > 0, jnp.ones_like(x), jnp.zeros_like(x))


def leaky_relu(x: ArrayLike, negative_slope: float = 0.01) -> Array:
    """``f(x) = x if x >= 0 else negative_slope * x``."""
    x = jnp.asarray(x)
    return jnp.where(x >= 0, x, negative_slope * x)


def leaky_relu_derivative(x: ArrayLike, negative_slope: float = 0.01) -> Array:
    """``f'(x) = 1 if x >= 0 else negative_slope``."""
    x = jnp.asarray(x)
    return jnp.where(x >= 0, jnp.ones_like(x), jnp.full_like(x, negative_slope))


def elu(x: ArrayLike, alpha: float = 1.0) -> Array:
    """``elu(x) = x if x > 0 else alpha (e^x - 1)`` (Clevert et al., 2016).

    ``expm1`` is evaluated at ``where(x > 0, 0, x)`` so that the branch not taken never
    overflows; ``where`` rather than ``minimum``, whose tie rule would hand ``jax.grad`` a
    slope of ``alpha / 2`` at exactly 0.
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.where(x > 0, 0.0, x)))


def elu_derivative(x: ArrayLike, alpha: float = 1.0) -> Array:
    """``elu'(x) = 1 if x > 0 else alpha e^x``."""
    x = jnp.asarray(x)
    return jnp.where(x > 0, jnp.ones_like(x), alpha * jnp.exp(jnp.where(x > 0, 0.0, x)))


# Klambauer et al. (2017), "Self-Normalizing Neural Networks", eq. (14): the fixed point
# of mean 0 and variance 1. Same digits as PyTorch's and JAX's selu.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(x: ArrayLike) -> Array:
    """``selu(x) = λ x if x > 0 else λ α (e^x - 1)``, λ = 1.0507..., α = 1.6732...."""
    return SELU_SCALE * elu(x, SELU_ALPHA)


def selu_derivative(x: ArrayLike) -> Array:
    """``selu'(x) = λ if x > 0 else λ α e^x``."""
    return SELU_SCALE * elu_derivative(x, SELU_ALPHA)


# ----------------------------------------------------------------------------- softplus


def softplus(x: ArrayLike) -> Array:
    """``softplus(x) = log(1 + e^x) = log(e^x + e^0)``.

    Evaluated as ``jnp.logaddexp(x, 0)``, i.e. ``max(x, 0) + log1p(e^{-|x|})``: it never
    exponentiates a positive number, so it is finite and exact at +-1e4, and its autodiff is
    right at 0 (a hand-written ``maximum + log1p(exp(-abs))`` gives ``jax.grad`` a slope of
    0 there: the tie rules of ``maximum`` and ``abs`` do not cancel).
    """
    return jnp.logaddexp(jnp.asarray(x), 0.0)


def softplus_derivative(x: ArrayLike) -> Array:
    """``softplus'(x) = e^x / (1 + e^x) = σ(x)``."""
    return sigmoid(x)


# ----------------------------------------------------------------------------- gelu


def gelu(x: ArrayLike) -> Array:
    """Exact GELU ``x Φ(x) = x/2 (1 + erf(x / √2))`` (Hendrycks & Gimpel, 2016).

    ``Φ(x) = erfc(-x / √2) / 2`` avoids the cancellation of ``1 + erf`` for negative x
    (gelu(-10) = -7.6e-23, not -0).
    """
    x = jnp.asarray(x)
    return 0.5 * x * lax.erfc(-x / math.sqrt(2))


def gelu_derivative(x: ArrayLike) -> Array:
    """``gelu'(x) = Φ(x) + x φ(x)``, ``φ(x) = e^{-x²/2} / √(2π)``."""
    x = jnp.asarray(x)
    cdf = 0.5 * lax.erfc(-x / math.sqrt(2))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


_GELU_C = math.sqrt(2 / math.pi)


def gelu_tanh(x: ArrayLike) -> Array:
    """Tanh approximation ``x/2 (1 + tanh(u))``, ``u = √(2/π) (x + 0.044715 x³)``."""
    x = jnp.asarray(x)
    u = _GELU_C * (x + 0.044715 * x**3)
    return 0.5 * x * (1 + jnp.tanh(u))


def gelu_tanh_derivative(x: ArrayLike) -> Array:
    """``½ (1 + tanh u) + ½ x (1 - tanh² u) √(2/π) (1 + 3·0.044715 x²)``."""
    x = jnp.asarray(x)
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)


# ----------------------------------------------------------------------------- silu / swish


def silu(x: ArrayLike) -> Array:
    """SiLU / swish ``x σ(x)``."""
    x = jnp.asarray(x)
    return x * sigmoid(x)


def silu_derivative(x: ArrayLike) -> Array:
    """``silu'(x) = σ(x) + x σ(x) (1 - σ(x)) = σ(x) + x σ(x) σ(-x)``."""
    x = jnp.asarray(x)
    s = sigmoid(x)
    return s + x * s * sigmoid(-x)


swish = silu


# ----------------------------------------------------------------------------- softmax


def softmax(x: ArrayLike, axis: int = -1) -> Array:
    """``softmax(x)_i = e^{x_i - m} / Σ_j e^{x_j - m}`` with ``m = max_j x_j``.

    Subtracting the maximum changes nothing mathematically and keeps every exponent <= 0.
    """
    x = jnp.asarray(x)
    e = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True)))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_vjp(x: ArrayLike, axis: int = -1) -> tuple[Array, Callable[[Array], Array]]:
    """Softmax and its VJP ``dx = y ⊙ (dy - Σ_k dy_k y_k)``.

    From the Jacobian ``∂y_i/∂x_j = y_i (δ_ij - y_j)``: ``dx_j = Σ_i dy_i y_i (δ_ij - y_j)``.
    """
    y = softmax(x, axis)
    return y, bind_backward(_softmax_backward, y, axis=axis)


def _softmax_backward(y: Array, dy: Array, *, axis: int) -> Array:
    return y * (dy - jnp.sum(dy * y, axis=axis, keepdims=True))


def log_softmax(x: ArrayLike, axis: int = -1) -> Array:
    """``log_softmax(x)_i = x_i - m - log Σ_j e^{x_j - m}``, finite for inputs of +-1e4."""
    x = jnp.asarray(x)
    shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_vjp(x: ArrayLike, axis: int = -1) -> tuple[Array, Callable[[Array], Array]]:
    """Log-softmax and its VJP ``dx = dy - softmax(x) Σ_k dy_k``.

    From ``∂ log y_i / ∂x_j = δ_ij - softmax(x)_j``.
    """
    y = log_softmax(x, axis)
    return y, bind_backward(_log_softmax_backward, y, axis=axis)


def _log_softmax_backward(y: Array, dy: Array, *, axis: int) -> Array:
    return dy - jnp.exp(y) * jnp.sum(dy, axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- the record


class Activation(NamedTuple):
    """An activation: its forward, and its hand-derived VJP.

    Attributes:
      name: the name :func:`get` knows it by.
      fn: ``y = fn(x)``.
      vjp: ``y, backward = vjp(x)``; ``dx = backward(dy)``. ``backward`` is a
        ``jax.tree_util.Partial``, a pytree, so it may cross ``jit`` and ``custom_vjp``.
      derivative: ``f'(x)`` for elementwise activations, ``None`` for softmax-like ones.
    """

    name: str
    fn: Callable[[Array], Array]
    vjp: Callable[[Array], tuple[Array, Callable[[Array], Array]]]
    derivative: Callable[[Array], Array] | None


def _times(derivative: Array, dy: Array) -> Array:
    return dy * derivative


def elementwise(
    name: str, fn: Callable[[Array], Array], derivative: Callable[[Array], Array]
) -> Activation:
    """Build the :class:`Activation` of an elementwise ``fn`` with derivative ``f'``.

    Its VJP is ``dx = dy ⊙ f'(x)`` (the Jacobian is diagonal).
    """

    def vjp(x: Array) -> tuple[Array, Callable[[Array], Array]]:
        x = ensure_float(x, "x")
        return fn(x), bind_backward(_times, derivative(x))

    return Activation(name, fn, vjp, derivative)


def _checked(fn: Callable[..., Array]) -> Callable[..., Array]:
    def wrapped(x: ArrayLike, *args, **kwargs) -> Array:
        return fn(ensure_float(x, "x"), *args, **kwargs)

    return wrapped


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        elementwise("identity", identity, identity_derivative),
        elementwise("sigmoid", sigmoid, sigmoid_derivative),
        elementwise("tanh", tanh, tanh_derivative),
        elementwise("relu", relu, relu_derivative),
        elementwise("leaky_relu", leaky_relu, leaky_relu_derivative),
        elementwise("elu", elu, elu_derivative),
        elementwise("selu", selu, selu_derivative),
        elementwise("softplus", softplus, softplus_derivative),
        elementwise("gelu", gelu, gelu_derivative),
        elementwise("gelu_tanh", gelu_tanh, gelu_tanh_derivative),
        elementwise("silu", silu, silu_derivative),
        Activation("softmax", _checked(softmax), _checked(softmax_vjp), None),
        Activation("log_softmax", _checked(log_softmax), _checked(log_softmax_vjp), None),
    )
}
ACTIVATIONS["swish"] = ACTIVATIONS["silu"]._replace(name="swish")


def get(activation: str | Activation) -> Activation:
    """Look an activation up by name (``"sigmoid"``, ``"relu"``, ...), or pass one through.

    Raises:
      ValueError: the name is unknown; the message lists the known names.
    """
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            f"activation must be a name ({', '.join(sorted(ACTIVATIONS))}) or an Activation, "
            f"got {type(activation).__name__}. Build a custom one with "
            f"jaxnn.activations.elementwise(name, fn, derivative)."
        )
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise unknown_name("activation", activation, list(ACTIVATIONS)) from None
