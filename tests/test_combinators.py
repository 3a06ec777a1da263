"""Composition: serial's keys split per stochastic layer; keyword arrays reach the layers that
take them; intermediates and layer_keys; the acceptance network; clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import RTOL, norm_rel_err

import jaxnn
from jaxnn import combinators, layers, networks
from jaxnn.batchnorm import batchnorm


def test_acceptance_network_manual_equals_autodiff_with_the_same_key():
    net = jaxnn.mlp([16, 16, 4], "relu", batchnorm=True, dropout=0.1)
    k_init, k_x, k_t, k_drop = jax.random.split(jax.random.key(0), 4)
    params, state = net.init(k_init, (12, 6))
    x = jax.random.normal(k_x, (12, 6))
    labels = jax.random.randint(k_t, (12,), 0, 4)
    mask = jnp.arange(12) < 10  # two padding rows
    y, new_state = net.apply(params, state, x, train=True, key=k_drop, mask=mask)
    chex.assert_shape(y, (12, 4))
    assert int(new_state["batchnorm_1"].count) == 1
    loss = "softmax_cross_entropy_with_integer_labels"

    @jax.jit  # compiled, as training runs it (the eager path is the line above and test_layers)
    def three_ways(params, key, mask):
        run = dict(train=True, key=key, mask=mask)
        auto = jaxnn.value_and_grad(net, loss)(params, state, x, labels, **run)
        man = jaxnn.value_and_grad(net, loss, grad="manual")(params, state, x, labels, **run)
        loop = jaxnn.backprop.backprop(net, loss, params, state, x, labels, **run)
        return auto, man, loop

    ((v_auto, s_auto), g_auto), ((v_man, s_man), g_man), (v_loop, g_loop, _) = three_ways(
        params, k_drop, mask
    )
    assert norm_rel_err(g_man, g_auto) <= RTOL
    assert norm_rel_err(g_loop, g_auto) <= RTOL
    assert float(v_man) == pytest.approx(float(v_auto), rel=1e-14)
    assert float(v_loop) == pytest.approx(float(v_auto), rel=1e-14)
    chex.assert_trees_all_close(s_man, s_auto, rtol=1e-14)
    run = dict(train=True, key=k_drop, mask=mask)
    # The mask reached every BatchNorm: its statistics are those of the ten real rows.
    _, _, acts = jaxnn.intermediates(net, params, state, x, **run)
    h = acts["dense_0"]
    mean = jnp.mean(h[:10], axis=0)
    np.testing.assert_allclose(new_state["batchnorm_1"].mean, 0.1 * mean, rtol=1e-12)


def test_keys_are_split_per_stochastic_layer():
    net = combinators.serial(layers.dropout(0.5), layers.dense(8), layers.dropout(0.5))
    params, state = net.init(jax.random.key(0), (4, 8))
    key = jax.random.key(1)
    _, _, acts = combinators.intermediates(
        net, params, state, jnp.ones((4, 8)), train=True, key=key
    )
    k1, k2 = jax.random.split(key)
    first, _ = layers.dropout(0.5).apply({}, {}, jnp.ones((4, 8)), train=True, key=k1)
    np.testing.assert_array_equal(acts["dropout_0"], first)  # the first split key, in order
    last, _ = layers.dropout(0.5).apply({}, {}, acts["dense_1"], train=True, key=k2)
    np.testing.assert_array_equal(acts["dropout_2"], last)
    # One stochastic layer gets the network's key itself.
    single = combinators.serial(layers.dense(8), layers.dropout(0.5))
    p, s = single.init(jax.random.key(0), (4, 8))
    y, _ = single.apply(p, s, jnp.ones((4, 8)), train=True, key=key)
    h, _ = layers.dense(8).apply(p["dense_0"], {}, jnp.ones((4, 8)), train=False)
    np.testing.assert_array_equal(y, layers.dropout(0.5).apply({}, {}, h, train=True, key=key)[0])


def test_deterministic_networks_need_no_key_and_stochastic_ones_say_so():
    net = networks.mlp([3, 2], "tanh")
    params, state = net.init(jax.random.key(0), (2, 3))
    net.apply(params, state, jnp.ones((2, 3)), train=True)  # no key: nothing random
    assert not net.stochastic
    noisy = networks.mlp([3, 2], "tanh", dropout=0.2)
    assert noisy.stochastic
    params, state = noisy.init(jax.random.key(0), (2, 3))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        noisy.apply(params, state, jnp.ones((2, 3)), train=True)
    y, _ = noisy.apply(params, state, jnp.ones((2, 3)), train=False)  # eval: no key needed
    chex.assert_shape(y, (2, 2))


def test_keyword_arrays_reach_only_the_layers_that_take_them():
    net = combinators.serial(layers.dense(3), batchnorm(), layers.activation("tanh"), batchnorm())
    assert net.keywords == ("mask",)
    params, state = net.init(jax.random.key(0), (6, 2))
    x = jax.random.normal(jax.random.key(1), (6, 2))
    mask = jnp.asarray([True, True, False, True, True, False])
    _, new_state = net.apply(params, state, x, train=True, mask=mask)
    # Each BatchNorm's statistics equal those of the unpadded rows through the same layers.
    _, ref_state = net.apply(params, state, x[mask], train=True)
    for name in ("batchnorm_1", "batchnorm_3"):
        np.testing.assert_allclose(new_state[name].mean, ref_state[name].mean, rtol=1e-12)
        np.testing.assert_allclose(new_state[name].var, ref_state[name].var, rtol=1e-12)
    with pytest.raises(TypeError, match=r"no layer of this network takes.*\['masks'\].*\['mask'\]"):
        net.apply(params, state, x, train=True, masks=mask)
    plain = networks.mlp([3, 2], "tanh")
    p, s = plain.init(jax.random.key(0), (6, 2))
    with pytest.raises(TypeError, match="no keyword arrays"):
        plain.apply(p, s, x, train=True, mask=mask)


def test_intermediates_are_the_forward_pass_by_name():
    net = networks.mlp([5, 3], "sigmoid", batchnorm=True)
    params, state = net.init(jax.random.key(0), (8, 4))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y, new_state, acts = combinators.intermediates(net, params, state, x, train=True)
    assert list(acts) == list(combinators.layer_keys(net))
    h = x
    for name, layer in zip(acts, net.children, strict=True):
        h, _ = layer.apply(params.get(name, {}), state.get(name, {}), h, train=True)
        np.testing.assert_array_equal(acts[name], h)
    y_apply, s_apply = net.apply(params, state, x, train=True)
    np.testing.assert_array_equal(y, y_apply)
    chex.assert_trees_all_equal(new_state, s_apply)
    with pytest.raises(TypeError, match="needs a composition"):
        combinators.intermediates(layers.dense(2), {}, {}, x, train=False)


def test_backward_is_a_pytree_that_crosses_jit_and_does_not_retrace():
    net = networks.mlp([3, 2], "tanh", batchnorm=True)
    params, state = net.init(jax.random.key(0), (4, 3))
    x = jnp.ones((4, 3))
    _, _, backward = jax.jit(lambda p, x: net.vjp(p, state, x, train=True))(params, x)
    assert len(jax.tree.leaves(backward)) > 0  # the saved activations are its leaves
    dparams, dx = backward(jnp.ones((4, 2)))
    chex.assert_trees_all_equal_structs(dparams, params)
    assert dx.shape == x.shape
    # Static configuration is bound by value: two networks of the same configuration give
    # backwards of equal structure, so a jitted function of the backward compiles once.
    other = networks.mlp([3, 2], "tanh", batchnorm=True)
    _, _, backward2 = other.vjp(params, state, x, train=True)
    assert jax.tree.structure(backward) == jax.tree.structure(backward2)
    traces = []

    @jax.jit
    def run(b, dy):
        traces.append(1)
        return b(dy)

    run(backward, jnp.ones((4, 2)))
    run(backward2, jnp.ones((4, 2)))
    assert len(traces) == 1


def test_serial_params_are_named_dicts_and_shapes_thread_through():
    net = networks.mlp([5, 3], "relu", final_activation="softmax")
    params, state = net.init(jax.random.key(0), (7, 4))
    # Only layers with arrays have an entry: no empty nodes for activations, no state at all.
    assert list(params) == ["dense_0", "dense_2"] and state == {}
    assert combinators.layer_keys(net) == ("dense_0", "relu_1", "dense_2", "softmax_3")
    chex.assert_shape([params["dense_0"]["w"], params["dense_2"]["w"]], [(4, 5), (5, 3)])
    y, _ = net.apply(params, state, jnp.ones((7, 4)), train=False)
    chex.assert_shape(y, (7, 3))
    np.testing.assert_allclose(jnp.sum(y, axis=-1), 1.0, rtol=1e-15)


def test_params_that_do_not_match_the_network_are_refused():
    net = networks.mlp([3, 2], "tanh")
    params, state = net.init(jax.random.key(0), (1, 4))
    other, _ = networks.mlp([3, 3, 2], "tanh").init(jax.random.key(0), (1, 4))
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match=r"do not match the network.*dense_0.*dense_2"):
        net.apply(other, state, x, train=False)
    broken = {**params, "dense_0": {"w": params["dense_0"]["w"]}}  # bias missing
    with pytest.raises(ValueError, match=r"keys \['b', 'w'\]"):
        net.vjp(broken, state, x, train=False)
    with pytest.raises(ValueError, match="bias b has shape"):
        net.apply(
            {**params, "dense_2": {**params["dense_2"], "b": jnp.ones(3)}}, state, x, train=False
        )
    with pytest.raises(ValueError, match="no parameters"):
        net.apply({**params, "tanh_1": {"w": jnp.ones(1)}}, state, x, train=False)


def test_serial_refuses_what_is_not_a_layer():
    with pytest.raises(TypeError, match="must be a Layer"):
        combinators.serial(layers.dense(2), "tanh")


def test_layer_keys_give_the_run_order_that_sorted_dicts_lose():
    net = networks.mlp([3] * 11, "relu")
    keys = combinators.layer_keys(net)
    assert keys[:3] == ("dense_0", "relu_1", "dense_2") and len(keys) == 22
    params, _ = net.init(jax.random.key(0), (2, 3))
    assert set(params) == set(keys[::2])  # the dense layers; activations have no entry
    through_jit = jax.jit(lambda p: p)(params)
    assert list(through_jit) != list(keys)  # sorted: "dense_10" before "dense_2"
    with pytest.raises(TypeError, match="needs a composition"):
        combinators.layer_keys(layers.dense(2))


# ----------------------------------------------------------------------------- residual


def _block(n_out=4):
    return combinators.serial(
        layers.dense(6, b_init=jax.nn.initializers.normal(1.0)),
        batchnorm(),
        layers.activation("tanh"),
        layers.dropout(0.25),
        layers.dense(n_out),
        name="block",
    )


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_residual_is_block_plus_shortcut_and_its_backward_sums_both_branches(projection, train):
    with jax.enable_x64(True):
        block = _block(5 if projection else 4)
        shortcut = layers.dense(5, name="projection") if projection else None
        net = combinators.residual(block, shortcut)
        k_init, k_x, k_dy, k_drop = jax.random.split(jax.random.key(0), 4)
        params, state = net.init(k_init, (7, 4))
        assert set(params) == ({"block", "shortcut"} if projection else {"block"})
        assert set(state) == {"block"}  # only the block has state (BatchNorm)
        x = jax.random.normal(k_x, (7, 4), jnp.float64)
        run = dict(train=train, key=k_drop)
        y, new_state, backward = net.vjp(params, state, x, **run)
        yb, sb = block.apply(params["block"], state["block"], x, **run)
        ys = shortcut.apply(params["shortcut"], {}, x, train=train)[0] if projection else x
        np.testing.assert_array_equal(y, yb + ys)
        chex.assert_trees_all_equal(new_state, {"block": sb})
        dy = jax.random.normal(k_dy, y.shape, jnp.float64)
        dparams, dx = backward(dy)
        _, vjp = jax.vjp(lambda p, x: net.apply(p, state, x, **run)[0], params, x)
        auto_dparams, auto_dx = vjp(dy)
        assert norm_rel_err(dparams, auto_dparams) <= RTOL
        assert norm_rel_err(dx, auto_dx) <= RTOL
        # the manual path (jax.grad through custom_vjp) runs the same rules
        man = jaxnn.manual(net)
        g = jax.grad(lambda p, x: jnp.sum(dy * man.apply(p, state, x, **run)[0]), (0, 1))
        assert norm_rel_err(g(params, x), (auto_dparams, auto_dx)) <= RTOL


def test_residual_routes_keywords_and_gives_each_stochastic_branch_its_own_key():
    net = combinators.residual(_block(), combinators.serial(layers.dropout(0.5), layers.dense(4)))
    assert net.keywords == ("mask",) and net.stochastic
    params, state = net.init(jax.random.key(0), (6, 4))
    x = jax.random.normal(jax.random.key(3), (6, 4))
    mask = jnp.arange(6) < 4
    y1, s1 = net.apply(params, state, x, train=True, key=jax.random.key(1), mask=mask)
    y2, _ = net.apply(params, state, x, train=True, key=jax.random.key(2), mask=mask)
    assert not np.allclose(y1, y2)  # the key reaches the branches
    _, s_unmasked = net.apply(params, state, x, train=True, key=jax.random.key(1))
    assert not np.allclose(s1["block"]["batchnorm_1"].mean, s_unmasked["block"]["batchnorm_1"].mean)
    with pytest.raises(TypeError, match="no branch takes the keyword"):
        net.apply(params, state, x, train=True, key=jax.random.key(1), weights=mask)


def test_residual_whose_shapes_do_not_match_names_the_block():
    net = combinators.residual(_block(n_out=3))
    with pytest.raises(
        ValueError,
        match=r"residual: the block 'block' maps x of shape \(2, 4\) "
        r"to \(2, 3\) but the identity gives \(2, 4\).*dense\(3, use_bias=False\)",
    ):
        net.init(jax.random.key(0), (2, 4))
    flat = combinators.residual(layers.flatten())
    params, state = flat.init(jax.random.key(0), (2, 4))  # [2, 4] -> [2, 4]: fits
    with pytest.raises(ValueError, match=r"the block 'flatten' maps x of shape \(2, 2, 2\)"):
        flat.apply(params, state, jnp.ones((2, 2, 2)), train=False)  # checked at apply too
    img = combinators.residual(jaxnn.conv.conv2d(8, 3, strides=2), name="down")
    with pytest.raises(ValueError, match=r"down: .*conv2d\(8, 1, strides=..., use_bias=False\)"):
        img.init(jax.random.key(0), (2, 6, 6, 4))
    with pytest.raises(TypeError, match="the shortcut must be a Layer"):
        combinators.residual(_block(), shortcut=lambda x: x)
