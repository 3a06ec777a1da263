"""Manual backprop (the explicit reverse loop and the custom_vjp binding) equals jax.grad."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import RTOL, norm_rel_err

from jaxnn import combinators, initializers, layers, losses, networks
from jaxnn.audit import random_targets as targets_for
from jaxnn.backprop import backprop, manual, value_and_grad
from jaxnn.backprop import layer_gradients as backprop_layers
from jaxnn.optim import sgd
from jaxnn.train import TrainState, fit_full_batch, make_train_step


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


class ThreeGradientsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=10)
    @given(
        sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
        activation=st.sampled_from(["sigmoid", "tanh", "softplus", "gelu", "silu", "selu"]),
        loss_name=st.sampled_from(sorted(losses.LOSSES)),
        batch=st.integers(1, 3),
        seed=st.integers(0, 2**16),
    )
    def test_loop_custom_vjp_and_autodiff_agree(self, sizes, activation, loss_name, batch, seed):
        net = networks.mlp([*sizes, 2], activation, b_init=jax.nn.initializers.normal(1.0))
        k_init, k_x, k_t = jax.random.split(jax.random.key(seed), 3)
        params, state = net.init(k_init, (batch, 3))
        x = jax.random.normal(k_x, (batch, 3), jnp.float64)
        t = targets_for(loss_name, k_t, (batch, 2))
        run = self.variant
        value_loop, g_loop, _ = run(lambda p: backprop(net, loss_name, p, state, x, t, train=True))(
            params
        )
        (value_auto, _), g_auto = run(
            lambda p: value_and_grad(net, loss_name)(p, state, x, t, train=True)
        )(params)
        (value_custom, _), g_custom = run(
            lambda p: value_and_grad(net, loss_name, grad="manual")(p, state, x, t, train=True)
        )(params)
        chex.assert_trees_all_equal_structs(g_loop, params, g_custom)
        assert norm_rel_err(g_loop, g_auto) <= RTOL
        assert norm_rel_err(g_custom, g_auto) <= RTOL
        assert float(value_loop) == pytest.approx(float(value_auto), rel=1e-14)
        assert float(value_custom) == pytest.approx(float(value_auto), rel=1e-14)


def test_manual_mode_really_runs_the_hand_derived_rules():
    # Swap in a deliberately wrong backward: jax.grad through manual() must pick it up, which
    # proves the custom_vjp path is not quietly autodiff.
    base = layers.dense(2)

    def wrong_vjp(params, state, x, *, train, key=None):
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
        return lambda p: jnp.sum(layer.apply(p, state, x, train=False)[0] ** 2)

    g_auto = jax.grad(f(layer))(params)
    g_manual = jax.grad(f(manual(layer)))(params)
    np.testing.assert_allclose(flat(g_manual), 2 * flat(g_auto), rtol=1e-12)


def test_manual_binding_composes_with_vmap_and_higher_level_code():
    net = networks.mlp([4, 1], "tanh")
    params, state = net.init(jax.random.key(0), (5, 3))
    xs = jax.random.normal(jax.random.key(1), (6, 5, 3))

    def per_batch(layer):
        return jax.vmap(
            lambda x: jax.grad(lambda p: jnp.sum(layer.apply(p, state, x, train=False)[0]))(params)
        )(xs)

    assert norm_rel_err(per_batch(manual(net)), per_batch(net)) <= RTOL


def test_invalid_grad_mode():
    with pytest.raises(ValueError, match="grad must be one of"):
        value_and_grad(layers.dense(2), "squared_error", grad="numerical")


def test_sgd_refuses_a_nonpositive_learning_rate():
    for bad in [0.0, -0.1, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
            sgd(bad)
    for bad in ["0.1", None, [0.1]]:
        with pytest.raises(TypeError, match="positive number or an optax schedule"):
            sgd(bad)


def test_sgd_takes_an_optax_schedule():
    # w <- w - eta_k dL/dw with eta_k from the schedule: on L = w²/2 (dL/dw = w) each step
    # multiplies w by (1 - eta_k), exactly as computed here in float64.
    schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
    opt = sgd(schedule)
    w, opt_state, expected = {"w": jnp.asarray(2.0)}, None, 2.0
    opt_state = opt.init(w)
    for k in range(5):
        updates, opt_state = opt.update(w, opt_state, w)
        w = optax.apply_updates(w, updates)
        expected *= 1 - 0.5 * 0.5**k
        assert float(w["w"]) == pytest.approx(expected, rel=1e-15)


def test_frozen_leaves_are_not_updated_and_scan_equals_loop():
    net = networks.mlp([3, 2], "sigmoid", b_init=initializers.constant(0.5))
    params, state = net.init(jax.random.key(0), (4, 2))
    x = jax.random.normal(jax.random.key(1), (4, 2))
    t = jax.random.uniform(jax.random.key(2), (4, 2))
    opt = sgd(0.5, trainable=lambda path, _: path[-1].key == "w")
    step = make_train_step(net, "squared_error", opt, grad="manual")
    ts = TrainState.create(net, opt, jax.random.key(0), params=params, state=state)
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
    net = networks.mlp([8, 3], "tanh")
    params, state = net.init(jax.random.key(0), (16, 4))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    labels = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    opt = optax.adam(1e-2)
    loss = "softmax_cross_entropy_with_integer_labels"
    runs = {}
    for mode in ["autodiff", "manual"]:
        step = make_train_step(net, loss, opt, grad=mode)
        runs[mode] = fit_full_batch(
            step,
            TrainState.create(net, opt, jax.random.key(0), params=params, state=state),
            x,
            labels,
            50,
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
            step,
            TrainState.create(net, opt, jax.random.key(0), params=params, state=state),
            jnp.ones((1, 1)),
            jnp.ones((1, 1)),
            0,
        )


def test_keys_flow_through_the_scan_one_per_step():
    net = networks.mlp([8, 3], "tanh", dropout=0.5)
    params, state = net.init(jax.random.key(0), (16, 4))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    labels = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    opt = optax.sgd(0.1)
    loss = "softmax_cross_entropy_with_integer_labels"
    ts = TrainState.create(net, opt, jax.random.key(0), params=params, state=state)
    key = jax.random.key(3)
    runs = {}
    for mode in ["autodiff", "manual"]:
        step = make_train_step(net, loss, opt, grad=mode)
        runs[mode] = fit_full_batch(step, ts, x, labels, 10, key=key)
    # Without a key, step k draws its masks from fold_in(fold_in(ts.key, 0), k) (jaxnn.train).
    derived = fit_full_batch(step, ts, x, labels, 10)
    loop, keep_step = ts, make_train_step(net, loss, opt, donate=False)
    for k in range(10):
        k_key = jax.random.fold_in(jax.random.fold_in(ts.key, 0), k)
        loop, value = keep_step(loop, x, labels, k_key)
        assert float(value) == pytest.approx(float(derived[1][k]), rel=1e-12)
    assert int(derived[0].step) == 10
    # The scan uses jax.random.split(key, num_steps), step k the k-th key: a loop agrees.
    step = make_train_step(net, loss, opt, grad="manual")
    loop = ts
    for k, step_key in enumerate(jax.random.split(key, 10)):
        loop, value = step(loop, x, labels, step_key)
        assert float(value) == pytest.approx(float(runs["manual"][1][k]), rel=1e-12)
    assert norm_rel_err(loop.params, runs["manual"][0].params) <= 1e-12
    # Same keys, same masks: the two gradient paths train alike (as for Adam below, the
    # gradients agree to RTOL per step; SGD at lr 0.1 moves parameters by <= 10 * 0.1 * RTOL).
    assert norm_rel_err(runs["manual"][0].params, runs["autodiff"][0].params) <= 1e-9


# ----------------------------------------------------------------------------- a layer's backward


def _swapped(backward, dy):
    dparams, dx = backward(dy)
    return dx, dparams


def _one_gradient(backward, dy):
    dparams, _ = backward(dy)
    return dparams  # forgot dx


def _broken(kind, name="broken"):
    """A dense layer whose vjp breaks the protocol in one way."""
    base = layers.dense(3)

    def vjp(params, state, x, *, train, key=None):
        y, state, backward = base.vjp(params, state, x, train=train, key=key)
        if kind == "plain function":
            return y, state, lambda dy: backward(dy)
        fn = {"swapped": _swapped, "one gradient": _one_gradient}[kind]
        return y, state, jax.tree_util.Partial(fn, backward)

    return base._replace(name=name, vjp=vjp)


def _run(net, path):
    params, state = net.init(jax.random.key(0), (4, 3))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    t = jax.random.normal(jax.random.key(2), (4, 3))
    if path == "loop":
        return jax.jit(lambda p: backprop(net, "squared_error", p, state, x, t, train=False))(
            params
        )
    vg = value_and_grad(net, "squared_error", grad="manual")
    return jax.jit(lambda p: vg(p, state, x, t, train=False))(params)


@pytest.mark.parametrize("path", ["loop", "custom_vjp"])
@pytest.mark.parametrize("where", ["alone", "in a network"])
@pytest.mark.parametrize(
    ("kind", "error", "says"),
    [
        ("plain function", TypeError, "vjp returned a backward of type function"),
        ("swapped", ValueError, "It looks like (dx, dparams): return (dparams, dx)"),
        ("one gradient", TypeError, "must return the pair (dparams, dx)"),
    ],
)
def test_a_broken_backward_is_refused_naming_its_layer(kind, error, says, where, path):
    net = _broken(kind)
    named = "layer 'broken'"
    if where == "in a network":
        net = combinators.serial(layers.dense(3), layers.activation("tanh"), net, name="net")
        named = "layer 'broken_2' in 'net'"
    with pytest.raises(error) as info:
        _run(net, path)
    assert named in str(info.value)
    assert says in str(info.value)


def test_validation_leaves_the_numbers_and_the_backward_pytree_alone():
    # The checks run at trace time: the same numbers, and the backward still crosses jit.
    net = networks.mlp([4, 3], "tanh", batchnorm=True)
    params, state = net.init(jax.random.key(0), (5, 3))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    y, _, backward = jax.jit(lambda p: net.vjp(p, state, x, train=True))(params)
    dparams, dx = jax.jit(lambda b, dy: b(dy))(backward, jnp.ones_like(y))
    _, vjp_ref = jax.vjp(lambda p, x: net.apply(p, state, x, train=True)[0], params, x)
    assert norm_rel_err((dparams, dx), vjp_ref(jnp.ones_like(y))) <= RTOL


@pytest.mark.parametrize("batchnorm", [False, True])
def test_layer_gradients_are_each_layers_delta_and_backprops_grads(batchnorm):
    net = networks.mlp([4, 3, 2], "tanh", batchnorm=batchnorm)
    k_init, k_x, k_t = jax.random.split(jax.random.key(3), 3)
    params, state = net.init(k_init, (5, 3))
    x = jax.random.normal(k_x, (5, 3), jnp.float64)
    t = targets_for("squared_error", k_t, (5, 2))
    names = combinators.layer_keys(net)
    value, layers_, new_state = jax.jit(
        lambda p: backprop_layers(net, "squared_error", p, state, x, t, train=True)
    )(params)
    assert sorted(layers_) == sorted(names)  # jit returns dicts with sorted keys

    def perturbed(eps):  # the forward with eps added to every layer's output: dL/d eps = δ
        h = x
        for name, layer in zip(names, net.children, strict=True):
            h, _ = layer.apply(params.get(name, {}), state.get(name, {}), h, train=True)
            h = h + eps[name]
        return losses.get("squared_error").fn(h, t)

    _, _, outputs = combinators.intermediates(net, params, state, x, train=True)
    deltas = jax.grad(perturbed)({n: jnp.zeros_like(outputs[n]) for n in names})
    loop_value, grads, loop_state = backprop(net, "squared_error", params, state, x, t, train=True)
    # Jitted against eager: XLA may fuse and order the float64 sums differently, so the two agree
    # to rounding (a few ulps through 3 layers and BatchNorm), not bit for bit; 1e-12 as below.
    np.testing.assert_allclose(value, loop_value, rtol=1e-12)
    chex.assert_trees_all_close(new_state, loop_state)
    for i, name in enumerate(names):
        record = layers_[name]
        np.testing.assert_allclose(record.x, x if i == 0 else outputs[names[i - 1]])
        np.testing.assert_allclose(record.y, outputs[name])
        np.testing.assert_allclose(record.dy, deltas[name], rtol=1e-12, atol=1e-14)
        chex.assert_trees_all_close(record.dparams, grads.get(name, {}), rtol=1e-12)
    assert combinators.layer_keys(net, "dense") == tuple(
        n for n in names if "w" in params.get(n, {})
    )
    assert combinators.layer_keys(net, "tanh") == tuple(n for n in names if n.startswith("tanh"))


def test_layer_gradients_needs_a_composition():
    layer = layers.dense(2)
    params, state = layer.init(jax.random.key(0), (1, 3))
    with pytest.raises(TypeError, match="composition"):
        backprop_layers(
            layer, "squared_error", params, state, jnp.ones((1, 3)), jnp.ones((1, 2)), train=True
        )
