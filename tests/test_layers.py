"""Layers (dense, activation, dropout): hand-derived VJPs equal jax.vjp; dropout's statistics
within derived bounds; the train/key contract; clear errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import check_layer_vjp

from jaxnn import initializers, layers
from jaxnn.backprop import manual


class VjpTest(chex.TestCase):
    # Few distinct shapes: each new shape compiles afresh, and values vary with the seed anyway.
    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=10)
    @given(
        batch=st.lists(st.integers(1, 3), min_size=1, max_size=2),
        n_in=st.integers(1, 3),
        n_out=st.integers(1, 3),
        use_bias=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_dense(self, batch, n_in, n_out, use_bias, seed):
        b_init = jax.nn.initializers.normal(1.0)
        layer = layers.dense(n_out, use_bias=use_bias, b_init=b_init)
        check_layer_vjp(self.variant, layer, (*batch, n_in), seed)

    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=6)
    @given(
        shape=st.sampled_from([(4,), (3, 5), (2, 3, 4)]),
        rate=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
        train=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_dropout(self, shape, rate, train, seed):
        check_layer_vjp(self.variant, layers.dropout(rate), shape, seed, train=train)

    @chex.variants(with_jit=True, without_jit=True)
    def test_activation(self):
        check_layer_vjp(self.variant, layers.activation("gelu"), (3, 4), 0)


def test_dense_shapes_and_params_tree():
    layer = layers.dense(5)
    params, state = layer.init(jax.random.key(0), (7, 4))
    chex.assert_shape(params["w"], (4, 5))
    chex.assert_shape(params["b"], (5,))
    assert state == {}
    y, _ = layer.apply(params, state, jnp.ones((2, 3, 4)), train=False)
    chex.assert_shape(y, (2, 3, 5))
    params, _ = layers.dense(5, use_bias=False).init(jax.random.key(0), (7, 4))
    assert set(params) == {"w"}


def test_given_and_constant_set_exact_values():
    layer = layers.dense(
        2,
        w_init=initializers.given([[0.15, 0.25], [0.20, 0.30]]),
        b_init=initializers.constant(0.35),
    )
    params, _ = layer.init(jax.random.key(0), (1, 2))
    np.testing.assert_array_equal(params["w"], [[0.15, 0.25], [0.20, 0.30]])
    np.testing.assert_array_equal(params["b"], [0.35, 0.35])


def test_input_feature_mismatch_names_both_sizes():
    layer = layers.dense(3)
    params, state = layer.init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match=r"\(4, 3\).*5 features"):
        layer.apply(params, state, jnp.ones((2, 5)), train=False)


def test_wrong_rank_and_integer_input_are_refused():
    layer = layers.dense(3)
    params, state = layer.init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match="rank >= 1"):
        layer.apply(params, state, jnp.float32(1.0), train=False)
    with pytest.raises(TypeError, match=r"floating-point.*int"):
        layer.apply(params, state, jnp.ones((2, 4), jnp.int32), train=False)


def test_bad_dense_arguments():
    with pytest.raises(ValueError, match="positive int"):
        layers.dense(0)
    with pytest.raises(ValueError, match="positive int"):
        layers.dense(True)
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints.*\(32, 784\)"):
        layers.dense(3).init(jax.random.key(0), 4)
    with pytest.raises(ValueError, match="keys \\['b', 'w'\\]"):
        layers.dense(3).apply({"w": jnp.ones((4, 3))}, {}, jnp.ones((1, 4)), train=False)


def test_train_is_required_everywhere():
    # One rule: train is keyword-only and has no default, in every layer.
    for layer in (layers.dense(2), layers.activation("tanh"), layers.dropout(0.5)):
        params, state = layer.init(jax.random.key(0), (3, 2))
        with pytest.raises(TypeError, match="train"):
            layer.apply(params, state, jnp.ones((3, 2)))
        with pytest.raises(TypeError, match="train"):
            layer.vjp(params, state, jnp.ones((3, 2)))


# ----------------------------------------------------------------------------- dropout

RATES = [0.1, 0.5, 0.8]


@pytest.mark.parametrize("rate", RATES)
def test_dropout_keeps_1_minus_rate_within_a_binomial_bound(rate):
    n = 200_000
    x = jnp.ones((n,))
    y, _ = layers.dropout(rate).apply({}, {}, x, train=True, key=jax.random.key(0))
    kept = float(jnp.mean(y != 0))
    # The kept count is Binomial(n, 1 - rate): std sqrt(rate (1 - rate) / n) as a fraction.
    # 5 std: a false alarm once in 1.7 million runs.
    assert abs(kept - (1 - rate)) <= 5 * math.sqrt(rate * (1 - rate) / n)
    # Every kept unit is scaled by exactly 1 / (1 - rate) (the inverted-dropout scale).
    np.testing.assert_array_equal(np.unique(np.asarray(y)), [0.0, 1 / (1 - rate)])


@pytest.mark.parametrize("rate", RATES)
def test_dropout_preserves_the_mean(rate):
    # E[y_j] = x_j for every unit: average y over K independent keys at a fixed x.
    units, draws = 64, 4000
    x = jax.random.normal(jax.random.key(1), (units,), jnp.float64) * 3
    keys = jax.random.split(jax.random.key(2), draws)
    layer = layers.dropout(rate)
    ys = jax.vmap(lambda k: layer.apply({}, {}, x, train=True, key=k)[0])(keys)
    # y_j = x_j b / (1 - rate), b ~ Bernoulli(1 - rate): Var y_j = x_j² rate / (1 - rate), so
    # the mean of K draws has std |x_j| sqrt(rate / ((1 - rate) K)). 5 std per unit: a false
    # alarm for any of the 64 units about once in 27,000 runs.
    std = np.abs(np.asarray(x)) * math.sqrt(rate / ((1 - rate) * draws))
    assert np.all(np.abs(np.asarray(jnp.mean(ys, axis=0)) - np.asarray(x)) <= 5 * std)


def test_dropout_eval_and_rate_zero_are_the_identity():
    x = jax.random.normal(jax.random.key(0), (5, 7))
    y, _ = layers.dropout(0.5).apply({}, {}, x, train=False)  # no key needed
    assert y is x or np.array_equal(y, x)
    np.testing.assert_array_equal(layers.dropout(0.0).apply({}, {}, x, train=True)[0], x)
    assert not layers.dropout(0.0).stochastic and layers.dropout(0.3).stochastic


def test_dropout_same_key_same_mask_in_both_gradient_paths():
    layer = layers.dropout(0.5)
    x = jax.random.normal(jax.random.key(0), (6, 8)) + 2.0  # no exact zeros in x
    key = jax.random.key(3)

    def loss(layer):
        return lambda x: jnp.sum(layer.apply({}, {}, x, train=True, key=key)[0] ** 2)

    y, _ = layer.apply({}, {}, x, train=True, key=key)
    g_auto = jax.grad(loss(layer))(x)
    g_manual = jax.grad(loss(manual(layer)))(x)
    np.testing.assert_array_equal(g_manual, g_auto)  # same mask, same scale: the same numbers
    dropped = np.asarray(y == 0)
    assert dropped.any() and (~dropped).any()
    np.testing.assert_array_equal(np.asarray(g_auto)[dropped], 0.0)  # dropped units get none
    y2, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(4))
    assert not np.array_equal(np.asarray(y2 == 0), dropped)  # another key, another mask


def test_dropout_bad_input():
    with pytest.raises(ValueError, match=r"needs a PRNG key.*key=jax.random.key"):
        layers.dropout(0.5).apply({}, {}, jnp.ones(3), train=True)
    with pytest.raises(ValueError, match=r"needs a PRNG key"):
        layers.dropout(0.5).vjp({}, {}, jnp.ones(3), train=True)
    for rate in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"probability of DROPPING.*\[0, 1\).*keep"):
            layers.dropout(rate)
    with pytest.raises(TypeError, match="number"):
        layers.dropout("0.5")
    with pytest.raises(ValueError, match="no parameters"):
        layers.dropout(0.5).apply({"w": jnp.ones(1)}, {}, jnp.ones(3), train=False)
    with pytest.raises(TypeError, match="floating-point"):
        layers.dropout(0.5).apply({}, {}, jnp.ones(3, jnp.int32), train=False)


def test_activation_layer_refuses_params():
    with pytest.raises(ValueError, match="no parameters"):
        layers.activation("tanh").apply({"w": jnp.ones(1)}, {}, jnp.ones(3), train=False)


# ----------------------------------------------------------------------------- bad input, table

BAD_EDGE_ROWS = [
    (
        "dense-param-dtype-int",
        lambda tmp_path: layers.dense(3, param_dtype=jnp.int32),
        TypeError,
        "dense: param_dtype must be a floating-point dtype (jnp.bfloat16, jnp.float32 or "
        "jnp.float64) or None, got dtype int32. Params are what the gradients update: use "
        "jnp.float32",
    ),
    (
        "dense-param-dtype-unknown-name",
        lambda tmp_path: layers.dense(3, param_dtype="f32x", name="fc"),
        TypeError,
        "fc: param_dtype must be a floating-point dtype (jnp.bfloat16, jnp.float32 or "
        "jnp.float64) or None, got str 'f32x'.",
    ),
]


@pytest.mark.parametrize("dtype", [jnp.float32, np.dtype("float32"), "float32", jnp.bfloat16])
def test_dense_param_dtype_spellings_give_that_dtype_under_x64(dtype):
    def init(layer):
        return jax.eval_shape(lambda key: layer.init(key, (2, 4)), jax.random.key(0))[0]

    assert init(layers.dense(3))["w"].dtype == jnp.float64  # the conftest's x64 default
    params = init(layers.dense(3, param_dtype=dtype))
    assert params["w"].dtype == params["b"].dtype == jnp.dtype(dtype)


# ----------------------------------------------------------------------------- flatten, reshape


@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (1, 7), (2, 1, 1, 1)])
def test_flatten_is_row_major_per_example_and_its_backward_reads_dy_back(shape):
    layer = layers.flatten()
    x = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
    y, _, backward = layer.vjp({}, {}, x, train=True)
    np.testing.assert_array_equal(y, np.asarray(x).reshape(shape[0], -1))
    dy = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) * 2
    dparams, dx = backward(dy)
    assert dparams == {}
    np.testing.assert_array_equal(dx, np.asarray(dy).reshape(shape))


def test_reshape_infers_one_axis_and_refuses_sizes_that_do_not_fit():
    layer = layers.reshape((8, 8, 1))
    y, _ = layer.apply({}, {}, jnp.zeros((5, 64)), train=False)
    assert y.shape == (5, 8, 8, 1)
    y, _ = layers.reshape((2, -1)).apply({}, {}, jnp.zeros((3, 4, 3)), train=False)
    assert y.shape == (3, 2, 6)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape each example of shape \(63,\)"):
        layer.apply({}, {}, jnp.zeros((5, 63)), train=False)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        layers.reshape((5, -1)).apply({}, {}, jnp.zeros((2, 12)), train=False)
    with pytest.raises(ValueError, match="one -1"):
        layers.reshape((-1, -1)).apply({}, {}, jnp.zeros((2, 12)), train=False)
    with pytest.raises(ValueError, match="batch axis"):
        layers.flatten().apply({}, {}, jnp.zeros(()), train=False)
