"""Initialisers: each name draws with its formula's variance, untruncated, and is jax's own."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import initializers

FAN_IN, FAN_OUT = 200, 300
VARIANCE = {
    "glorot_uniform": 2 / (FAN_IN + FAN_OUT),
    "glorot_normal": 2 / (FAN_IN + FAN_OUT),
    "he_uniform": 2 / FAN_IN,
    "he_normal": 2 / FAN_IN,
    "lecun_uniform": 1 / FAN_IN,
    "lecun_normal": 1 / FAN_IN,
}


@pytest.mark.parametrize("name", sorted(VARIANCE))
def test_variance_follows_its_formula(name):
    variance = VARIANCE[name]
    w = initializers.get(name)(jax.random.key(0), (FAN_IN, FAN_OUT), jnp.float64)
    n = w.size
    # The sample variance of n iid draws has relative std sqrt(2/n) (normal) or less
    # (uniform: sqrt(0.8/n)); 5 std is a 1-in-3.5-million false alarm.
    assert abs(float(jnp.var(w)) / variance - 1) <= 5 * math.sqrt(2 / n)
    assert abs(float(jnp.mean(w))) <= 5 * math.sqrt(variance / n)
    if "uniform" in name:
        assert float(jnp.max(jnp.abs(w))) <= math.sqrt(3 * variance)


@pytest.mark.parametrize("name", ["glorot_normal", "he_normal", "lecun_normal"])
def test_normals_are_untruncated(name):
    # PyTorch's xavier_normal_/kaiming_normal_ do not truncate; jax.nn.initializers.glorot_normal
    # truncates at 2 std (then rescales by 1/0.87962566), so it never exceeds 2.27 std. Of
    # 60,000 untruncated draws, 2.7e-3 lie beyond 3 std: ~162 expected, none is e^-162 likely.
    w = initializers.get(name)(jax.random.key(1), (FAN_IN, FAN_OUT), jnp.float64)
    std = math.sqrt(VARIANCE[name])
    assert int(jnp.sum(jnp.abs(w) > 3 * std)) > 0
    # ...which tells them apart from the truncated one the test would otherwise accept:
    truncated = jax.nn.initializers.glorot_normal()(jax.random.key(1), w.shape, jnp.float64)
    assert int(jnp.sum(jnp.abs(truncated) > 3 * math.sqrt(VARIANCE["glorot_normal"]))) == 0


def test_names_are_jax_initializers_not_copies():
    # The same draws as jax.nn.initializers.variance_scaling with the documented arguments.
    key, shape = jax.random.key(2), (5, 7)
    ref = {
        "glorot_uniform": (1.0, "fan_avg", "uniform"),
        "glorot_normal": (1.0, "fan_avg", "normal"),
        "he_uniform": (2.0, "fan_in", "uniform"),
        "he_normal": (2.0, "fan_in", "normal"),
        "lecun_uniform": (1.0, "fan_in", "uniform"),
        "lecun_normal": (1.0, "fan_in", "normal"),
    }
    for name, args in ref.items():
        expected = jax.nn.initializers.variance_scaling(*args)(key, shape, jnp.float32)
        np.testing.assert_array_equal(initializers.get(name)(key, shape, jnp.float32), expected)
    assert initializers.get("xavier_normal") is initializers.get("glorot_normal")
    assert initializers.get("kaiming_uniform") is initializers.get("he_uniform")


def test_given_with_wrong_shape_says_the_layout():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\).*\[in_features, out_features\]"):
        initializers.given(np.zeros((3, 2)))(None, (2, 3))


def test_unknown_initialiser_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Known initialisers:.*glorot_uniform.*he_normal"):
        initializers.get("glorot_uniformm")
    with pytest.raises(TypeError, match=r"a name .* or a callable"):
        initializers.get(3)
