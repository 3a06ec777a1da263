"""The normalisation family's shared statistics: the values, the overflow guarantee, the passes
the cheap path makes, and the derivatives (custom_jvp) against autodiff of the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import RTOL, norm_rel_err

from jaxnn.statistics import moments, normalize


def _reference(x, axes, center=True):
    x = np.asarray(x, np.float64)
    mean = x.mean(axes, keepdims=True) if center else np.zeros((1,) * x.ndim)
    return mean, ((x - mean) ** 2).mean(axes, keepdims=True)


def _values(stats):
    return stats.mean_scaled * stats.scale, stats.var_scaled * stats.scale * stats.scale


@pytest.mark.parametrize("axes", [(0,), (0, 1, 2), (1, 2, 3), (-1,)])
@pytest.mark.parametrize("center", [True, False])
def test_moments_are_the_mean_and_the_biased_variance(axes, center):
    with jax.enable_x64(True):
        x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 3, 5, 6), jnp.float64)
        stats = moments(x, axes, center=center)
        mean, var = _reference(x, axes, center)
        # A sum of n <= 360 float64 terms: relative error <= n u = 4e-14.
        assert (
            norm_rel_err(_values(stats)[0], np.broadcast_to(mean, stats.mean_scaled.shape)) <= 1e-13
        )
        assert norm_rel_err(_values(stats)[1], var) <= 1e-13
        assert float(jnp.max(stats.scale)) == 1.0  # nothing overflowed: the cheap path


def test_float32_statistics_of_any_finite_spread_are_finite_and_right():
    # A float32 (x - mean)² overflows above a spread of 1.8e19; the cheap path overflows there
    # and the scaled path runs (a power-of-two scale), exact up to float32 rounding.
    rng = np.random.default_rng(1)
    x64 = rng.standard_normal((64, 3)) * np.array([1e30, 1.0, 1e-30]) + np.array([0, 5, 0])
    x = jnp.asarray(x64, jnp.float32)
    stats = moments(x, (0,))
    mean, _ = _values(stats)
    ref_mean, ref_var = _reference(np.asarray(x), (0,))
    assert np.all(np.isfinite(stats.var_scaled)) and np.all(np.isfinite(stats.mean_scaled))
    assert float(stats.scale[0, 0]) > 1.0
    # var overflows float32 as a value (1e60) but not in the scaled form: compare in float64.
    var64 = np.asarray(stats.var_scaled, np.float64) * np.asarray(stats.scale, np.float64) ** 2
    assert np.allclose(var64, ref_var, rtol=64 * 2**-24)
    assert np.allclose(
        np.asarray(mean, np.float64), ref_mean, rtol=64 * 2**-24, atol=1e-6 * 1e30 / 8
    )
    y, xhat, _ = normalize(x, stats, jnp.ones(3), jnp.zeros(3), 1e-5)
    assert np.all(np.isfinite(np.asarray(y)))
    ref_xhat = (np.asarray(x, np.float64) - ref_mean) / np.sqrt(ref_var + 1e-5)
    assert norm_rel_err(xhat[:, :2], ref_xhat[:, :2]) <= 64 * 2**-24


def test_rms_statistic_of_huge_values_is_finite():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 4)) * 1e25, jnp.float32)
    stats = moments(x, (-1,), center=False)
    ms = np.asarray(stats.var_scaled, np.float64) * np.asarray(stats.scale, np.float64) ** 2
    ref = (np.asarray(x, np.float64) ** 2).mean(-1, keepdims=True)
    assert np.all(np.isfinite(stats.var_scaled)) and np.allclose(ms, ref, rtol=16 * 2**-24)


def _reductions(jaxpr, shape):
    """Reductions of an operand of ``shape`` at the top level of ``jaxpr`` (not in a cond)."""
    names = ("reduce_sum", "reduce_max", "reduce_min", "argmax")
    return [e.primitive.name for e in jaxpr.eqns if e.primitive.name in names
            and tuple(e.invars[0].aval.shape) == shape]  # fmt: skip


def _inner(jaxpr, primitive):
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == primitive]
    return eqn


def test_the_cheap_path_reads_x_twice_and_the_scaled_path_three_times():
    shape = (128, 16)
    closed = jax.make_jaxpr(lambda x: moments(x, (0,)))(jnp.ones(shape, jnp.float32))
    call = _inner(closed.jaxpr, "custom_jvp_call")
    body = call.params["call_jaxpr"].jaxpr
    assert _reductions(body, shape) == ["reduce_sum", "reduce_sum"]  # Σ x, then Σ (x - mean)²
    cond = _inner(body, "cond")
    scaled, cheap = cond.params["branches"]
    assert sorted(_reductions(cheap.jaxpr, shape) + _reductions(scaled.jaxpr, shape)) == [
        "reduce_max", "reduce_sum", "reduce_sum",
    ]  # fmt: skip


def test_derivatives_are_those_of_the_formula_to_second_order():
    def formula(x, center):
        mean = x.mean(0, keepdims=True) if center else 0.0
        return mean, ((x - mean) ** 2).mean(0, keepdims=True)

    with jax.enable_x64(True):
        x = 1.0 + jax.random.normal(jax.random.key(3), (6, 3), jnp.float64)
        w = jax.random.normal(jax.random.key(4), (2, 3), jnp.float64)
        for center in (True, False):

            def ours(x, center=center):
                s = moments(x, (0,), center=center)
                return jnp.sum(w[0] * s.mean_scaled) + jnp.sum(w[1] * s.var_scaled**2)

            def theirs(x, center=center):
                m, v = formula(x, center)
                return jnp.sum(w[0] * m) + jnp.sum(w[1] * v**2)

            assert norm_rel_err(jax.grad(ours)(x), jax.grad(theirs)(x)) <= RTOL
            assert norm_rel_err(jax.hessian(ours)(x), jax.hessian(theirs)(x)) <= RTOL


def test_vmap_gives_each_example_its_own_path():
    # One example overflows (scaled path), the other does not; vmap runs both branches and
    # must still give each example its own statistics.
    x = jnp.stack([jnp.linspace(-1, 1, 8) * 3e38, jnp.linspace(-1, 1, 8)]).astype(jnp.float32)
    batched = jax.vmap(lambda r: moments(r, (0,)))(x)
    for i in range(2):
        one = moments(x[i], (0,))
        np.testing.assert_array_equal(batched.scale[i], one.scale)
        np.testing.assert_array_equal(batched.var_scaled[i], one.var_scaled)


def test_a_mask_counts_only_the_selected_elements():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(5), (7, 3), jnp.float64)
        mask = jnp.arange(7)[:, None] < 5
        stats = moments(x.at[5:].set(1e6), (0,), mask)
        _, var = _reference(x[:5], (0,))
        assert float(stats.count) == 5
        assert norm_rel_err(_values(stats)[1], var) <= 1e-13
