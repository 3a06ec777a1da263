"""Tests of jaxnn.activations: hand-derived VJPs and derivatives against JAX autodiff,
stability at saturation, golden values from independent closed forms, lookup and errors."""

import functools
import math
from decimal import Decimal, localcontext

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numerics import RTOL, norm_rel_err

from jaxnn import activations as A

NAMES = sorted(A.ACTIVATIONS)
ELEMENTWISE = sorted(n for n, a in A.ACTIVATIONS.items() if a.derivative is not None)
EPS64 = float(np.finfo(np.float64).eps)


# relu, leaky_relu, elu and selu have a kink (or a branch switch) at 0: there the derivative
# is a convention (which one-sided derivative / subgradient), and jax.grad picks it from
# jnp.where's tie rule, not from the math, so the property test keeps them off 0. (The
# smooth ones at exactly 0 are pinned by the tests in "autodiff at 0" below.)
AVOID_ZERO = {"relu", "leaky_relu", "elu", "selu"}
KINK_GAP = 1e-6


def away_from_zero(x):
    """Move |x| < KINK_GAP to KINK_GAP + |x|: off the kink, where both derivations must agree.

    The comparison is exact arithmetic on one point (no finite differences), so any nonzero
    gap works; 1e-6 changes nothing else about the drawn values.
    """
    return np.where(np.abs(x) < KINK_GAP, KINK_GAP + np.abs(x), x)


# ----------------------------------------------------------------------------- 1. VJPs

# Shapes of rank 1-3 with dims 1-5, drawn from a fixed pool rather than all 155: in eager mode
# JAX compiles every primitive once per shape, so each new shape costs ~0.3-1 s per
# activation. The pool has every rank, length-1 axes first and last (softmax over a length-1
# axis, a length-1 batch), and the largest side (5).
SHAPES = [(1,), (5,), (2, 3), (5, 1), (1, 4, 2), (3, 2, 5)]


@st.composite
def float64_inputs(draw):
    """A float64 array of a pool shape: hypothesis floats, or seeded normals at a scale.

    (Seeded numpy normals rather than jax.random: jax.random compiles its generator once per
    shape in eager mode, which would dominate the runtime.)
    """
    shape = draw(st.sampled_from(SHAPES))
    if draw(st.booleans()):
        return draw(
            hnp.arrays(
                np.float64,
                shape,
                elements=st.floats(-40.0, 40.0, allow_nan=False, allow_infinity=False),
            )
        )
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    return scale * np.random.default_rng(seed).standard_normal(shape)


def term_scale(name, x):
    """M: a bound on the size of the terms either derivative forms, per element of x.

    Where a derivative is small but its terms are not (1 - tanh² at saturation, softmax's
    dy - <dy, y>, jax's expm1' = expm1 + 1 for elu/selu at x << 0, 1 + erf at x << 0), both
    sides carry an absolute rounding error of a few ulps of the terms, which no relative
    tolerance on the (tiny) result can absorb. Elementwise: |f'| <= selu's lambda alpha = 1.76
    and the intermediates (sigma, 1 +- tanh, Phi, x phi, ...) are below 2, except gelu_tanh's
    1 - tanh²(u), rounded at the ulp of 1, then multiplied by (x/2) sqrt(2/pi) (1 + 3c x²).
    softmax: |y| <= 1 and |<dy, y>| <= max|dy|. log_softmax: |sum dy| <= (axis length) max|dy|.
    For a VJP multiply by |dy| (elementwise) or max|dy| (softmax-like: the terms mix the row).
    """
    if name == "log_softmax":
        return np.full(x.shape, float(x.shape[-1]))
    if name == "softmax":
        return np.ones(x.shape)
    if name == "gelu_tanh":
        return 2.0 + 0.5 * np.abs(x) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
    return np.full(x.shape, 2.0)


def forward_scale(x):
    """A bound on the terms of every forward: x sigma(x), x Phi(x), x (1 + tanh u) / 2, lambda x,
    max(x, 0) + log1p(.), and log_softmax's x - max - lse are all <= 2 max|x| + 2."""
    return 2.0 * np.max(np.abs(x)) + 2.0


# Rounding floor: each side forms its result in <= 4 rounded steps (a libm call of <= 1 ulp,
# a product, a sum) on terms of size <= M, so the two differ by <= 8 eps M.
FLOOR_ULPS = 8


@functools.cache
def _hand(name):
    """The hand-derived VJP (and derivative) of one activation: one function object per name,
    so that its jitted variant compiles once per shape, not once per drawn example."""
    act = A.ACTIVATIONS[name]

    def hand(x, dy):
        y, backward = act.vjp(x)
        out = {"y": y, "dx": backward(dy)}
        if act.derivative is not None:
            out["d"] = act.derivative(x.reshape(-1))
        return out

    return hand


@functools.cache
def _autodiff(name):
    """jax.vjp and jax.vmap(jax.grad) of the forward: the reference, always jitted (it is not
    the code under test, and eager autodiff would triple the compile time)."""
    act = A.ACTIVATIONS[name]

    @jax.jit
    def ref(x, dy):
        y, backward = jax.vjp(act.fn, x)
        (dx,) = backward(dy)
        out = {"y": y, "dx": dx}
        if act.derivative is not None:
            out["d"] = jax.vmap(jax.grad(act.fn))(x.reshape(-1))
        return out

    return ref


class VjpTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in NAMES))
    @given(x=float64_inputs(), seed=st.integers(0, 2**32 - 1))
    def test_vjp_and_derivative_match_autodiff(self, name, x, seed):
        check_vjp_and_derivative(self.variant, name, x, seed)


def check_vjp_and_derivative(variant, name, x, seed):
    act = A.ACTIVATIONS[name]
    if name in AVOID_ZERO:
        x = away_from_zero(x)
    dy = np.random.default_rng(seed).standard_normal(x.shape)
    out = {k: np.asarray(v) for k, v in variant(_hand(name))(jnp.asarray(x), dy).items()}
    out |= {f"{k}_ref": np.asarray(v) for k, v in _autodiff(name)(jnp.asarray(x), dy).items()}
    m = term_scale(name, x)

    # the forward of vjp is fn itself (same formula; eager vs jit may round differently)
    y, y_ref = out["y"], out["y_ref"]
    assert y.dtype == out["dx"].dtype == np.float64
    y_scale = max(np.max(np.abs(y)), np.max(np.abs(y_ref)))
    y_floor = FLOOR_ULPS * EPS64 * forward_scale(x)
    assert np.max(np.abs(y - y_ref)) <= RTOL * y_scale + y_floor, norm_rel_err(y, y_ref)

    # VJP: norm-wise relative error <= RTOL, above the rounding floor 8 eps M |dy| (term_scale)
    dx, dx_ref = out["dx"], out["dx_ref"]
    assert dx.shape == x.shape
    assert np.all(np.isfinite(dx))
    scale = max(np.max(np.abs(dx)), np.max(np.abs(dx_ref)))
    dy_size = np.max(np.abs(dy)) if act.derivative is None else np.abs(dy)
    floor = FLOOR_ULPS * EPS64 * m * dy_size
    assert np.all(np.abs(dx - dx_ref) <= RTOL * scale + floor), norm_rel_err(dx, dx_ref)

    # derivative vs jax.vmap(jax.grad(fn)), element by element (dy = 1: floor 8 eps M)
    if act.derivative is not None:
        d, d_ref = out["d"], out["d_ref"]
        assert d.shape == d_ref.shape == (x.size,)
        assert np.all(np.isfinite(d))
        tol = RTOL * np.maximum(np.abs(d), np.abs(d_ref)) + FLOOR_ULPS * EPS64 * m.reshape(-1)
        assert np.all(np.abs(d - d_ref) <= tol), (x, d, d_ref)


def test_swish_is_x_sigmoid_x():
    # Against numpy's own evaluation of x σ(x) and σ(x) + x σ(x)(1 - σ(x)) on moderate x,
    # where each side is a handful of correctly rounded operations: 8 eps relative.
    x = np.linspace(-5.0, 5.0, 11)
    sig = 1 / (1 + np.exp(-x))
    swish = A.get("swish")
    assert swish.name == "swish"
    np.testing.assert_allclose(swish.fn(jnp.asarray(x)), x * sig, rtol=8 * EPS64, atol=0)
    d = sig + x * sig * (1 - sig)
    np.testing.assert_allclose(swish.derivative(jnp.asarray(x)), d, rtol=8 * EPS64, atol=8 * EPS64)


# ----------------------------------------------------------------------------- autodiff at 0 (tie rules)


def test_softplus_autodiff_at_zero():
    # softplus is analytic; its derivative at 0 is sigma(0) = 1/2 exactly.
    assert float(A.softplus_derivative(0.0)) == 0.5  # the hand derivative is right
    assert float(jax.grad(A.softplus)(0.0)) == 0.5


def test_elu_autodiff_at_zero():
    # With alpha = 1 both one-sided derivatives at 0 are 1: elu'(0) = 1 is not a convention.
    assert float(A.elu_derivative(0.0)) == 1.0  # the hand derivative is right
    assert float(jax.grad(A.elu)(0.0)) == 1.0


# ----------------------------------------------------------------------------- 2. extremes

EXTREME = [-1e4, -1e3, -50.0, 0.0, 50.0, 1e3, 1e4]
STABLE = ["sigmoid", "softplus", "log_softmax", "softmax", "tanh", "silu", "gelu", "elu", "selu"]
DTYPES = [jnp.float32, jnp.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(set(STABLE) | set(ELEMENTWISE)))
def test_finite_at_extremes(name, dtype):
    act = A.ACTIVATIONS[name]
    x = jnp.asarray(EXTREME, dtype)
    y = act.fn(x)
    y_vjp, backward = act.vjp(x)
    dy = jnp.asarray([1.0, -2.0, 0.5, 1.0, -1.0, 3.0, 1.0], dtype)
    dx = backward(dy)
    # no silent promotion: a float32 input gives float32 outputs
    for v in (y, y_vjp, dx):
        assert v.dtype == dtype
        assert v.shape == x.shape
        assert np.all(np.isfinite(np.asarray(v))), (name, v)
    if act.derivative is not None:
        d = act.derivative(x)
        assert d.dtype == dtype
        assert np.all(np.isfinite(np.asarray(d))), (name, d)
        # the VJP is dy * f'(x): one rounded product per element, so exactly that product
        np.testing.assert_array_equal(dx, dy * d)


def _sig(x):
    """sigma(x) = 1/(1 + e^-x), 60-digit decimal, rounded once to float."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float(1 / (1 + (-Decimal(x)).exp()))


S50 = _sig(-50.0)  # sigma(-50) = 1.9287...e-22
L, LA = A.SELU_SCALE, A.SELU_SCALE * A.SELU_ALPHA

# Expected values at EXTREME, from the true function rounded to the dtype: anything below the
# smallest subnormal (e^-1000, e^-1e4, Phi(-50) ~ 1e-545, 4 e^-100 in float64 ...) is 0, and
# 1 - (something below eps/2) is 1. Entries None are checked only for finiteness above.
SATURATION = {
    "sigmoid": [0.0, 0.0, S50, 0.5, 1.0, 1.0, 1.0],
    "sigmoid_d": [0.0, 0.0, S50, 0.25, S50, 0.0, 0.0],
    "softplus": [0.0, 0.0, S50, math.log(2.0), 50.0, 1e3, 1e4],
    "softplus_d": [0.0, 0.0, S50, 0.5, 1.0, 1.0, 1.0],
    "tanh": [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0],
    # tanh'(+-50) = 4e^-100 ~ 1.5e-43 is a float32 subnormal: 1 - t^2 cannot give it (None)
    "tanh_d": [0.0, 0.0, None, 1.0, None, 0.0, 0.0],
    "silu": [0.0, 0.0, -50.0 * S50, 0.0, 50.0, 1e3, 1e4],
    # silu'(x) = sigma(x)(1 + x sigma(-x)): at -50, sigma(-50)(1 - 50 sigma(50)) ~ -49 sigma(-50)
    "silu_d": [0.0, 0.0, S50 * (1.0 - 50.0 * _sig(50.0)), 0.5, 1.0, 1.0, 1.0],
    "gelu": [0.0, 0.0, 0.0, 0.0, 50.0, 1e3, 1e4],
    "gelu_d": [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0],
    "gelu_tanh": [0.0, 0.0, 0.0, 0.0, 50.0, 1e3, 1e4],
    "gelu_tanh_d": [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0],
    "elu": [-1.0, -1.0, -1.0, 0.0, 50.0, 1e3, 1e4],
    "elu_d": [0.0, 0.0, math.exp(-50.0), 1.0, 1.0, 1.0, 1.0],  # at 0: alpha e^0 (x > 0 fails)
    "selu": [-LA, -LA, -LA, 0.0, 50.0 * L, 1e3 * L, 1e4 * L],
    "selu_d": [0.0, 0.0, LA * math.exp(-50.0), LA, L, L, L],
    "relu": [0.0, 0.0, 0.0, 0.0, 50.0, 1e3, 1e4],
    "relu_d": [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # 0 at the kink, as jax.nn.relu
    "leaky_relu": [-100.0, -10.0, -0.5, 0.0, 50.0, 1e3, 1e4],
    "leaky_relu_d": [0.01, 0.01, 0.01, 1.0, 1.0, 1.0, 1.0],
    "identity": EXTREME,
    "identity_d": [1.0] * 7,
    # one row: log_softmax(x) = x - 1e4 - log(1 + e^-9000 + ...) = x - 1e4 exactly
    "log_softmax": [x - 1e4 for x in EXTREME],
    "softmax": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
}
SATURATION["swish"], SATURATION["swish_d"] = SATURATION["silu"], SATURATION["silu_d"]


def _assert_close_ulps(got, expected, dtype, ulps):
    got = np.asarray(got, np.float64)
    eps = float(np.finfo(dtype).eps)
    for g, e in zip(got, expected, strict=True):
        if e is None:
            continue
        e32 = float(np.asarray(e, dtype))  # the true value rounded to the dtype
        assert abs(g - e32) <= ulps * eps * abs(e32), (got, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(set(STABLE) | set(ELEMENTWISE)))
def test_exact_values_at_saturation(name, dtype):
    act = A.ACTIVATIONS[name]
    x = jnp.asarray(EXTREME, dtype)
    # 4 ulps: the non-saturated entries (sigma(-50), selu's lambda*x ...) go through at most an
    # exp (<= 1 ulp on XLA CPU) and two or three correctly rounded operations; the saturated
    # ones must be exact (0 * anything is 0, 1 must stay 1).
    _assert_close_ulps(act.fn(x), SATURATION[name], dtype, 4)
    if act.derivative is not None:
        _assert_close_ulps(act.derivative(x), SATURATION[f"{name}_d"], dtype, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_saturation_headline_values(dtype):
    """The values the docstrings promise, exactly."""
    big = jnp.asarray([1e4, -1e4], dtype)
    assert A.sigmoid(big).tolist() == [1.0, 0.0]
    assert A.sigmoid_derivative(big).tolist() == [0.0, 0.0]
    assert A.softplus(big).tolist() == [1e4, 0.0]
    assert A.softplus_derivative(big).tolist() == [1.0, 0.0]
    assert A.tanh_derivative(big).tolist() == [0.0, 0.0]
    assert A.relu_derivative(big).tolist() == [1.0, 0.0]
    # log_softmax([1e4, 0, -1e4]) = [0, -1e4, -2e4] - log(1 + e^-1e4 + e^-2e4): exactly, since
    # the correction (~e^-1e4) is far below half an ulp of 1e4 in either dtype
    row = jnp.asarray([1e4, 0.0, -1e4], dtype)
    assert A.log_softmax(row).tolist() == [0.0, -1e4, -2e4]
    assert A.softmax(row).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_axis_vjp_finite_at_saturation(name, dtype):
    act = A.ACTIVATIONS[name]
    x = jnp.asarray([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype)
    dy = jnp.asarray([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], dtype)
    _, backward = act.vjp(x)
    dx = np.asarray(backward(dy), np.float64)
    assert np.all(np.isfinite(dx))
    # softmax is one-hot in each row here, so by the docstrings' formulas:
    #   softmax:     dx = y (dy - sum dy y) = 0 everywhere (y_i (dy_i - dy_i) at the 1)
    #   log_softmax: dx = dy - y sum(dy)
    # every term exact (products with 0 and 1, sums of a few small binary fractions)
    if name == "softmax":
        np.testing.assert_array_equal(dx, np.zeros((2, 3)))
    else:
        np.testing.assert_array_equal(dx, [[1.0 - 2.0, -2.0, 3.0], [0.5, 0.25, -1.0 - -0.25]])


# ----------------------------------------------------------------------------- 3. golden values


def test_sigmoid_golden_float64():
    xs = [-30.0, -10.0, -1.0, 0.5, 3.0, 20.0, 36.0]
    got = np.asarray(A.sigmoid(jnp.asarray(xs)))
    for x, g in zip(xs, got, strict=True):
        ref = _sig(x)  # 60 digits, one rounding
        # z = e^-|x| (<= 1 ulp), 1 + z (0.5), one division (0.5): < 2 ulps; 4 eps for margin
        assert abs(g - ref) <= 4 * EPS64 * ref, (x, g, ref)
    # the docstring's headline: sigma(-30) in the tail keeps full relative precision; the
    # naive math form 1/(1 + e^30) is itself within 2 eps of the truth
    assert abs(got[0] - 1 / (1 + math.exp(30))) <= 4 * EPS64 * got[0]


def test_softplus_golden_float64():
    xs = [-20.0, -3.0, -0.5, 0.25, 1.0, 5.0, 20.0]
    got = np.asarray(A.softplus(jnp.asarray(xs)))
    for x, g in zip(xs, got, strict=True):
        with localcontext() as ctx:
            ctx.prec = 60
            ref = float((1 + Decimal(x).exp()).ln())
        # max(x,0) + log1p(e^-|x|): exp and log1p (<= 1 ulp each) and one addition of two
        # same-sign terms (0.5): < 3 ulps; 4 eps
        assert abs(g - ref) <= 4 * EPS64 * ref, (x, g, ref)
        # math's log1p(exp(x)) agrees too (itself within ~2 ulps for these moderate x)
        assert abs(g - math.log1p(math.exp(x))) <= 4 * EPS64 * ref


def test_gelu_golden_float64():
    assert float(A.gelu(1.0)) == pytest.approx(
        0.5 * (1 + math.erf(1 / math.sqrt(2))), rel=4 * EPS64
    )
    xs = [-3.0, -1.0, -0.5, 0.5, 1.0, 2.0, 5.0]
    got = np.asarray(A.gelu(jnp.asarray(xs)))
    for x, g in zip(xs, got, strict=True):
        ref = 0.5 * x * math.erfc(-x / math.sqrt(2))  # x Phi(x) with no cancellation
        # Both sides form x/2 erfc(-x/sqrt2), which does not cancel: XLA's erfc is within a few
        # ulps (6 seen at -10), plus the scaling and the products; math.erfc ~1 ulp: 8 eps.
        assert abs(g - ref) <= 8 * EPS64 * abs(ref), (x, g, ref)
    # derivative: Phi(x) + x phi(x), same construction
    d = np.asarray(A.gelu_derivative(jnp.asarray([0.5, 1.0, 2.0])))
    for x, g in zip([0.5, 1.0, 2.0], d, strict=True):
        ref = 0.5 * math.erfc(-x / math.sqrt(2)) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        # positive x: two positive terms, each a few (<= 4) ulps
        assert abs(g - ref) <= 8 * EPS64 * ref


def test_gelu_tanh_golden_float64():
    for x in [-2.0, -0.5, 0.7, 3.0]:
        u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        ref = 0.5 * x * (1 + math.tanh(u))
        # same formula, different libm: 1 + tanh(u) at x = -2 cancels by (1+|t|)/(1+t) ~ 50;
        # bound 8 eps times that condition
        cond = (1 + abs(math.tanh(u))) / (1 + math.tanh(u))
        assert abs(float(A.gelu_tanh(x)) - ref) <= 8 * EPS64 * cond * abs(ref)


def test_selu_constants():
    # the paper's published digits (Klambauer et al., 2017, eq. 14), parsed independently
    assert float("1.6732632423543772848170429916717") == A.SELU_ALPHA
    assert float("1.0507009873554804934193349852946") == A.SELU_SCALE
    # and the paper's closed forms, evaluated with math:
    #   alpha = -sqrt(2/pi) / (erfc(1/sqrt2) e^(1/2) - 1)
    #   lambda = (1 - erfc(1/sqrt2) sqrt(e)) sqrt(2 pi)
    #            * (2 erfc(sqrt2) e^2 + pi erfc(1/sqrt2)^2 e - 2 (2+pi) erfc(1/sqrt2) sqrt(e)
    #               + pi + 2)^(-1/2)
    e, c = math.e, math.erfc(1 / math.sqrt(2))
    alpha = -math.sqrt(2 / math.pi) / (c * math.sqrt(e) - 1)
    bracket = 2 * math.erfc(math.sqrt(2)) * e**2 + math.pi * c * c * e
    bracket += -2 * (2 + math.pi) * c * math.sqrt(e) + math.pi + 2
    lam = (1 - c * math.sqrt(e)) * math.sqrt(2 * math.pi) * bracket**-0.5
    # alpha: the denominator c sqrt(e) - 1 = -0.477 cancels by ~2x; ~6 roundings of <= 1 ulp
    # each -> <= 2 * 6 = 12 eps; 16 eps
    assert abs(alpha - A.SELU_ALPHA) <= 16 * EPS64 * A.SELU_ALPHA
    # lambda: the bracket sums terms of total size ~12 to 1.29 (condition ~9), each term a few
    # (<= 4) ulps: <= 36 eps on the bracket, half that after ^(-1/2), plus ~2x4 for the other
    # factor's cancellation: <= 26 eps; 32 eps
    assert abs(lam - A.SELU_SCALE) <= 32 * EPS64 * A.SELU_SCALE


def test_elu_derivative_keeps_the_negative_tail():
    # elu'(x) = e^x for x < 0: the hand derivative exponentiates directly, so it keeps full
    # relative precision where jax.grad's expm1' = expm1(x) + 1 cancels (at -40 it gives 0).
    for x in [-16.0, -30.0, -40.0, -700.0]:
        ref = math.exp(x)
        # one exp (<= 1 ulp) and a product with alpha = 1 (exact): 2 eps
        assert abs(float(A.elu_derivative(x)) - ref) <= 2 * EPS64 * ref
        ref_s = A.SELU_SCALE * A.SELU_ALPHA * ref
        # exp, alpha *, lambda *: 3 roundings; 4 eps
        assert abs(float(A.selu_derivative(x)) - ref_s) <= 4 * EPS64 * ref_s


def test_selu_values():
    assert float(A.selu(1.0)) == A.SELU_SCALE
    x = -0.75
    ref = A.SELU_SCALE * A.SELU_ALPHA * math.expm1(x)
    # expm1 (<= 1 ulp each side) and two products: 4 eps
    assert abs(float(A.selu(x)) - ref) <= 4 * EPS64 * abs(ref)
    ref_d = A.SELU_SCALE * A.SELU_ALPHA * math.exp(x)
    assert abs(float(A.selu_derivative(x)) - ref_d) <= 4 * EPS64 * ref_d


# ----------------------------------------------------------------------------- 4. lookup


@pytest.mark.parametrize("name", NAMES)
def test_get_returns_activation(name):
    act = A.get(name)
    assert act is A.ACTIVATIONS[name]
    assert act.name == name
    assert A.get(act) is act  # an Activation passes through


def test_get_unknown_name_lists_known():
    with pytest.raises(ValueError, match="nope") as info:
        A.get("nope")
    msg = str(info.value)
    for known in ("sigmoid", "relu", "softmax", "gelu"):
        assert known in msg


def test_get_wrong_type():
    with pytest.raises(TypeError, match="int"):
        A.get(123)


@pytest.mark.parametrize("name", NAMES)
def test_vjp_refuses_integer_input(name):
    with pytest.raises(TypeError, match="floating"):
        A.ACTIVATIONS[name].vjp(jnp.arange(3))


# ----------------------------------------------------------------------------- 6. sigmoid'


def test_sigmoid_derivative_peak_and_monotone():
    assert float(A.sigmoid_derivative(0.0)) == 0.25  # 0.5 * 0.5, exact
    xs = np.arange(0.0, 30.0, 0.25)
    d = np.asarray(A.sigmoid_derivative(jnp.asarray(xs)))
    assert np.all(d <= 0.25)
    assert np.all(np.diff(d) < 0)  # strictly decreasing away from 0 (to ~1e-13 at 30)
    # symmetric exactly: sigma(x) sigma(-x) is the same product either way
    np.testing.assert_array_equal(d, np.asarray(A.sigmoid_derivative(jnp.asarray(-xs))))
    rand = 10 * jax.random.normal(jax.random.key(0), (1000,), jnp.float64)
    assert float(jnp.max(A.sigmoid_derivative(rand))) < 0.25


# ----------------------------------------------------------------------------- tail precision


@pytest.mark.parametrize("x", [-20.0, -15.0, -3.0, 0.5, 9.0, 15.0, 20.0, 300.0])
def test_tanh_derivative_keeps_relative_precision_in_the_tails(x):
    # sech^2 from math.cosh: a few roundings, so <= 4 ulps apart. 1 - tanh^2 would be 4e-4 off
    # at 15 and 0 at 20 (cancellation), which this bound rejects.
    expected = 1 / math.cosh(x) ** 2
    got = float(A.tanh_derivative(jnp.float64(x)))
    assert abs(got - expected) <= 4 * EPS64 * expected


@pytest.mark.parametrize("x", [-10.0, -5.0, -1.0, 2.0])
def test_gelu_keeps_relative_precision_for_negative_inputs(x):
    # Reference x Phi(x), Phi = erfc(-x / sqrt 2) / 2, from math.erfc. What this test guards is
    # cancellation: 1 + erf(x / sqrt 2) is 100% off at x = -10 (it gives -0 for -7.6e-23).
    # XLA's erfc is a polynomial approximation a few ulps from correctly rounded in the far
    # tail (6 ulps seen at -10), so 1e-12 relative separates the two cases by 1e12 either way.
    rtol = 1e-12
    phi = 0.5 * math.erfc(-x / math.sqrt(2))
    pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    assert float(A.gelu(jnp.float64(x))) == pytest.approx(x * phi, rel=rtol, abs=0)
    # gelu'(x) = Phi(x) + x phi(x): the two terms cancel to ~1% at -10, losing 2 digits.
    assert float(A.gelu_derivative(jnp.float64(x))) == pytest.approx(
        phi + x * pdf, rel=100 * rtol, abs=0
    )


# ----------------------------------------------------------------------------- NaN propagates

# Each activation's counterpart in jax.nn (the reference for where a NaN input gives NaN).
JAX_NN = {
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.swish,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
}


def test_every_activation_has_a_jax_nn_counterpart_for_the_nan_test():
    assert set(JAX_NN) == set(A.ACTIVATIONS)


@settings(max_examples=14)  # each activation about once; the shapes pooled
@given(
    name=st.sampled_from(NAMES),
    shape=st.sampled_from([(4,), (3, 5), (2, 3, 4)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_nan_input_gives_nan_where_jax_nn_gives_nan(name, shape, seed):
    """NaN is never mapped to a number: the output is NaN exactly where jax.nn's is, on the
    forward, the VJP's output and the network's loss; finite elements are untouched."""
    rng = np.random.default_rng(seed)
    x = 3 * rng.standard_normal(shape)
    x[rng.random(shape) < 0.3] = np.nan
    x.flat[rng.integers(x.size)] = np.nan  # at least one
    act = A.get(name)
    y, y_ref = np.asarray(act.fn(jnp.asarray(x))), np.asarray(JAX_NN[name](jnp.asarray(x)))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y).any()
    y_vjp, backward = act.vjp(jnp.asarray(x))
    np.testing.assert_array_equal(np.isnan(np.asarray(y_vjp)), np.isnan(y))
    # A NaN cotangent is never swallowed by the hand backward: dy * f'(x) or the softmax rules.
    dy = rng.standard_normal(shape)
    dy.flat[0] = np.nan
    assert np.isnan(np.asarray(backward(jnp.asarray(dy)))).any()


def test_relu_of_nan_is_nan_and_its_derivative_is_jax_nns_on_both_paths():
    x = jnp.array([jnp.nan, -jnp.inf, -1.0, 0.0, 2.0, jnp.inf])
    np.testing.assert_array_equal(A.relu(x), [np.nan, 0.0, 0.0, 0.0, 2.0, np.inf])
    grads = jax.vmap(jax.grad(A.relu))(x)  # autodiff of jaxnn's forward
    np.testing.assert_array_equal(A.relu_derivative(x), grads)
    np.testing.assert_array_equal(grads, jax.vmap(jax.grad(jax.nn.relu))(x))  # 0 at NaN
