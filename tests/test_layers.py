"""Layers: hand-derived VJPs equal jax.vjp; initialisers; params pytrees; clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import norm_rel_err

from jaxnn import layers
from jaxnn.activations import ACTIVATIONS

RTOL = 1e-10  # same formula, different rounding order: a few ulps times a modest condition


def check_layer_vjp(layer, input_shape, seed, maybe_jit):
    k_init, k_x, k_dy = jax.random.split(jax.random.key(seed), 3)
    params, state = layer.init(k_init, input_shape)
    x = jax.random.normal(k_x, input_shape, jnp.float64)
    y, new_state, backward = maybe_jit(lambda p, x: layer.vjp(p, state, x))(params, x)
    dy = jax.random.normal(k_dy, y.shape, jnp.float64)
    y_ref, vjp_ref = jax.vjp(lambda p, x: layer.apply(p, state, x)[0], params, x)
    assert norm_rel_err(y, y_ref) <= RTOL
    dparams, dx = maybe_jit(lambda b, dy: b(dy))(backward, dy)
    assert norm_rel_err((dparams, dx), vjp_ref(dy)) <= RTOL
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


# Few distinct shapes: each new shape compiles afresh, and values vary with the seed anyway.
@settings(max_examples=10)
@given(
    batch=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    n_in=st.integers(1, 3),
    n_out=st.integers(1, 3),
    use_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_vjp_matches_jax_vjp(batch, n_in, n_out, use_bias, seed, maybe_jit):
    layer = layers.dense(n_out, use_bias=use_bias, b_init="glorot_normal")
    check_layer_vjp(layer, (*batch, n_in), seed, maybe_jit)


SMOOTH = [
    "sigmoid",
    "tanh",
    "softplus",
    "gelu",
    "gelu_tanh",
    "silu",
    "elu",
    "selu",
    "identity",
    "softmax",
    "log_softmax",
]


@settings(max_examples=10)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    acts=st.lists(st.sampled_from(SMOOTH), min_size=3, max_size=3),
    batch=st.integers(1, 3),
    n_in=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_mlp_vjp_matches_jax_vjp(sizes, acts, batch, n_in, seed, maybe_jit):
    net = layers.mlp(sizes, acts[: len(sizes)], b_init="glorot_normal")
    check_layer_vjp(net, (batch, n_in), seed, maybe_jit)


def test_backward_is_a_pytree_that_crosses_jit():
    net = layers.mlp([3, 2], "tanh")
    params, state = net.init(jax.random.key(0), (4, 3))
    x = jnp.ones((4, 3))
    _, _, backward = jax.jit(lambda p, x: net.vjp(p, state, x))(params, x)
    assert len(jax.tree.leaves(backward)) > 0  # the saved activations are its leaves
    dparams, dx = backward(jnp.ones((4, 2)))
    assert jax.tree.structure(dparams) == jax.tree.structure(params)
    assert dx.shape == x.shape


def test_serial_params_are_named_dicts_and_shapes_thread_through():
    net = layers.mlp([5, 3], "relu", final_activation="softmax")
    params, state = net.init(jax.random.key(0), (7, 4))
    assert list(params) == ["dense_0", "relu_1", "dense_2", "softmax_3"]
    assert params["dense_0"]["w"].shape == (4, 5) and params["dense_2"]["w"].shape == (5, 3)
    assert params["relu_1"] == {} and state == {k: {} for k in params}
    y, _ = net.apply(params, state, jnp.ones((7, 4)))
    assert y.shape == (7, 3)
    np.testing.assert_allclose(jnp.sum(y, axis=-1), 1.0, rtol=1e-15)


def test_mlp_without_nonlinearity_collapses_to_one_linear_map():
    # The source text's claim: stacked linear layers stay one linear map.
    net = layers.mlp([6, 5, 3], "identity", b_init="glorot_normal")
    params, state = net.init(jax.random.key(1), (8, 4))
    x = jax.random.normal(jax.random.key(2), (8, 4))
    w, b = params["dense_0"]["w"], params["dense_0"]["b"]
    for name in ["dense_2", "dense_4"]:
        w, b = w @ params[name]["w"], b @ params[name]["w"] + params[name]["b"]
    y, _ = net.apply(params, state, x)
    assert norm_rel_err(y, x @ w + b) <= 1e-13  # three matmuls, rounding only


@pytest.mark.parametrize(
    "name, variance",
    [
        ("glorot_uniform", 2 / (200 + 300)),
        ("glorot_normal", 2 / (200 + 300)),
        ("he_uniform", 2 / 200),
        ("he_normal", 2 / 200),
        ("lecun_uniform", 1 / 200),
        ("lecun_normal", 1 / 200),
    ],
)
def test_initialiser_variance_follows_its_formula(name, variance):
    w = layers.get_initializer(name)(jax.random.key(0), (200, 300), jnp.float64)
    n = w.size
    # The sample variance of n iid draws has relative std sqrt(2/n) (normal) or less
    # (uniform: sqrt(0.8/n)); 5 std is a 1-in-3.5-million false alarm.
    assert abs(float(jnp.var(w)) / variance - 1) <= 5 * math.sqrt(2 / n)
    assert abs(float(jnp.mean(w))) <= 5 * math.sqrt(variance / n)
    if "uniform" in name:
        assert float(jnp.max(jnp.abs(w))) <= math.sqrt(3 * variance)


def test_given_and_constant_set_exact_values():
    layer = layers.dense(
        2, w_init=layers.given([[0.15, 0.25], [0.20, 0.30]]), b_init=layers.constant(0.35)
    )
    params, _ = layer.init(jax.random.key(0), (1, 2))
    np.testing.assert_array_equal(params["w"], [[0.15, 0.25], [0.20, 0.30]])
    np.testing.assert_array_equal(params["b"], [0.35, 0.35])


def test_given_with_wrong_shape_says_the_layout():
    layer = layers.dense(3, w_init=layers.given(np.zeros((3, 2))))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\).*\[in_features, out_features\]"):
        layer.init(jax.random.key(0), (1, 2))


def test_unknown_initialiser_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"glorot_uniform.*he_normal|he_normal.*glorot_uniform"):
        layers.dense(3, w_init="glorot_uniformm")


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        layers.mlp([3], "sigmoidd")  # one layer: the hidden activation is unused, still checked
    for name in ACTIVATIONS:
        assert name in str(info.value)


def test_input_feature_mismatch_names_both_sizes():
    layer = layers.dense(3)
    params, state = layer.init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match=r"\(4, 3\).*5 features"):
        layer.apply(params, state, jnp.ones((2, 5)))


def test_wrong_rank_and_integer_input_are_refused():
    layer = layers.dense(3)
    params, state = layer.init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match="rank >= 1"):
        layer.apply(params, state, jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"floating-point.*int"):
        layer.apply(params, state, jnp.ones((2, 4), jnp.int32))


def test_params_that_do_not_match_the_network_are_refused():
    net = layers.mlp([3, 2], "tanh")
    params, state = net.init(jax.random.key(0), (1, 4))
    other, _ = layers.mlp([3, 3, 2], "tanh").init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match=r"do not match the network.*dense_0.*dense_2"):
        net.apply(other, state, jnp.ones((1, 4)))
    broken = {**params, "dense_0": {"w": params["dense_0"]["w"]}}  # bias missing
    with pytest.raises(ValueError, match=r"keys \['b', 'w'\]"):
        net.vjp(broken, state, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="bias b has shape"):
        net.apply(
            {**params, "dense_2": {**params["dense_2"], "b": jnp.ones(3)}}, state, jnp.ones((1, 4))
        )
    with pytest.raises(ValueError, match="no parameters"):
        net.apply({**params, "tanh_1": {"w": jnp.ones(1)}}, state, jnp.ones((1, 4)))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="positive int"):
        layers.dense(0)
    with pytest.raises(ValueError, match="3 dense layers need 3 activations"):
        layers.mlp([2, 2, 2], ["tanh", "tanh"])
    with pytest.raises(ValueError, match="not both"):
        layers.mlp([2, 2], ["tanh", "tanh"], final_activation="sigmoid")
    with pytest.raises(TypeError, match="not a Layer"):
        layers.serial(layers.dense(2), "tanh")
