"""Manual backprop (the explicit reverse loop and the custom_vjp binding) equals jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import norm_rel_err

from jaxnn import layers, losses
from jaxnn.backprop import backprop, manual, value_and_grad
from jaxnn.train import TrainState, fit_full_batch, make_train_step, sgd

RTOL = 1e-10  # same formulas, different rounding order (see jaxnn.gradcheck)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def targets_for(loss_name, key, shape):
    if loss_name == "softmax_cross_entropy_with_integer_labels":
        return jax.random.randint(key, shape[:-1], 0, shape[-1])
    if loss_name == "softmax_cross_entropy":
        return jax.nn.softmax(jax.random.normal(key, shape, jnp.float64))
    if loss_name == "binary_cross_entropy_with_logits":
        return jax.random.uniform(key, shape, jnp.float64)
    return jax.random.normal(key, shape, jnp.float64)


@settings(max_examples=10)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    activation=st.sampled_from(["sigmoid", "tanh", "softplus", "gelu", "silu", "selu"]),
    loss_name=st.sampled_from(sorted(losses.LOSSES)),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_three_gradients_agree(sizes, activation, loss_name, batch, seed, maybe_jit):
    net = layers.mlp([*sizes, 2], activation, b_init="glorot_normal")
    k_init, k_x, k_t = jax.random.split(jax.random.key(seed), 3)
    params, state = net.init(k_init, (batch, 3))
    x = jax.random.normal(k_x, (batch, 3), jnp.float64)
    t = targets_for(loss_name, k_t, (batch, 2))

    value_loop, g_loop, _ = maybe_jit(lambda p: backprop(net, loss_name, p, state, x, t))(params)
    (value_auto, _), g_auto = maybe_jit(lambda p: value_and_grad(net, loss_name)(p, state, x, t))(
        params
    )
    (value_custom, _), g_custom = maybe_jit(
        lambda p: value_and_grad(net, loss_name, grad="manual")(p, state, x, t)
    )(params)
    assert jax.tree.structure(g_loop) == jax.tree.structure(params) == jax.tree.structure(g_custom)
    assert norm_rel_err(g_loop, g_auto) <= RTOL
    assert norm_rel_err(g_custom, g_auto) <= RTOL
    assert float(value_loop) == pytest.approx(float(value_auto), rel=1e-14)
    assert float(value_custom) == pytest.approx(float(value_auto), rel=1e-14)


def test_manual_mode_really_runs_the_hand_derived_rules():
    # Swap in a deliberately wrong backward: jax.grad through manual() must pick it up, which
    # proves the custom_vjp path is not quietly autodiff.
    base = layers.dense(2)

    def wrong_vjp(params, state, x, *, train=False, key=None):
        y, new_state, backward = base.vjp(params, state, x, train=train, key=key)
        return (
            y,
            new_state,
            jax.tree_util.Partial(lambda b, dy: jax.tree.map(lambda g: 2 * g, b(dy)), backward),
        )

    layer = base._replace(vjp=wrong_vjp)
    params, state = layer.init(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (3, 4))

    def f(layer):
        return lambda p: jnp.sum(layer.apply(p, state, x)[0] ** 2)

    g_auto = jax.grad(f(layer))(params)
    g_manual = jax.grad(f(manual(layer)))(params)
    np.testing.assert_allclose(flat(g_manual), 2 * flat(g_auto), rtol=1e-12)


def test_manual_binding_composes_with_vmap_and_higher_level_code():
    net = layers.mlp([4, 1], "tanh")
    params, state = net.init(jax.random.key(0), (5, 3))
    xs = jax.random.normal(jax.random.key(1), (6, 5, 3))

    def per_batch(layer):
        return jax.vmap(lambda x: jax.grad(lambda p: jnp.sum(layer.apply(p, state, x)[0]))(params))(
            xs
        )

    assert norm_rel_err(per_batch(manual(net)), per_batch(net)) <= RTOL


def test_invalid_grad_mode():
    with pytest.raises(ValueError, match="grad must be one of"):
        value_and_grad(layers.dense(2), "squared_error", grad="numerical")


def test_sgd_refuses_a_nonpositive_learning_rate():
    for bad in [0.0, -0.1, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
            sgd(bad)


def test_frozen_leaves_are_not_updated_and_scan_equals_loop():
    net = layers.mlp([3, 2], "sigmoid", b_init=layers.constant(0.5))
    params, state = net.init(jax.random.key(0), (4, 2))
    x = jax.random.normal(jax.random.key(1), (4, 2))
    t = jax.random.uniform(jax.random.key(2), (4, 2))
    opt = sgd(0.5, trainable=lambda path, _: path[-1].key == "w")
    step = make_train_step(net, "squared_error", opt, grad="manual")
    ts = TrainState(params, state, opt.init(params))
    final, losses_scan = fit_full_batch(step, ts, x, t, 20)
    for name in ["dense_0", "dense_2"]:
        np.testing.assert_array_equal(final.params[name]["b"], params[name]["b"])
        assert not np.allclose(final.params[name]["w"], params[name]["w"])
    loop = ts
    for k in range(20):
        loop, value = step(loop, x, t)
        assert float(value) == pytest.approx(float(losses_scan[k]), rel=1e-12)
    assert norm_rel_err(loop.params, final.params) <= 1e-12
    assert float(losses_scan[-1]) < float(losses_scan[0])  # the loss falls


def test_manual_and_autodiff_training_give_the_same_trajectory():
    net = layers.mlp([8, 3], "tanh")
    params, state = net.init(jax.random.key(0), (16, 4))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    labels = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    opt = optax.adam(1e-2)
    loss = "softmax_cross_entropy_with_integer_labels"
    runs = {}
    for mode in ["autodiff", "manual"]:
        step = make_train_step(net, loss, opt, grad=mode)
        runs[mode] = fit_full_batch(
            step, TrainState(params, state, opt.init(params)), x, labels, 50
        )
    # Each step's gradients agree to the checked 1e-10 relative; Adam's step m/sqrt(v) is
    # scale-free, so a relative gradient error moves each parameter by at most ~lr * 1e-10 per
    # step: 50 * 1e-2 * 1e-10 = 5e-11 on O(1) parameters, under the 1e-9 asserted.
    assert norm_rel_err(runs["manual"][0].params, runs["autodiff"][0].params) <= 1e-9
    assert float(runs["manual"][1][-1]) < float(runs["manual"][1][0])


def test_num_steps_must_be_positive():
    net = layers.dense(1)
    params, state = net.init(jax.random.key(0), (1, 1))
    opt = sgd(0.1)
    step = make_train_step(net, "squared_error", opt)
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        fit_full_batch(
            step, TrainState(params, state, opt.init(params)), jnp.ones((1, 1)), jnp.ones((1, 1)), 0
        )
