"""Penalties: L2 and L1 by their formulas, on kernels only by default; their hand gradients on
both training paths; L2 + SGD equals decoupled decay + SGD, and the two part under Adam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numerics import RTOL, norm_rel_err

from jaxnn import networks, regularization
from jaxnn.backprop import backprop, value_and_grad
from jaxnn.optim import sgd
from jaxnn.regularization import combine, l1, l2
from jaxnn.train import TrainState, fit_full_batch, make_train_step

LOSS = "softmax_cross_entropy_with_integer_labels"


def _network():
    net = networks.mlp([6, 3], "tanh", batchnorm=True, b_init=jax.nn.initializers.normal(1.0))
    params, state = net.init(jax.random.key(0), (10, 4))
    x = jax.random.normal(jax.random.key(1), (10, 4))
    labels = jax.random.randint(jax.random.key(2), (10,), 0, 3)
    return net, params, state, x, labels


def _kernels(params):
    return [np.asarray(params[k]["w"]) for k in params if k.startswith("dense_")]


def test_l2_and_l1_values_and_gradients_follow_their_formulas():
    _, params, _, _, _ = _network()
    w = _kernels(params)
    assert float(l2(0.3).fn(params)) == pytest.approx(
        0.15 * sum(np.sum(k**2) for k in w), rel=1e-14
    )
    assert float(l1(0.3).fn(params)) == pytest.approx(
        0.3 * sum(np.sum(np.abs(k)) for k in w), rel=1e-14
    )
    for penalty, expected in ((l2(0.3), lambda k: 0.3 * k), (l1(0.3), lambda k: 0.3 * np.sign(k))):
        g = penalty.grad(params)
        for name in params:
            for leaf, value in g[name].items():
                if leaf == "w":
                    np.testing.assert_array_equal(value, expected(np.asarray(params[name]["w"])))
                else:  # biases and BatchNorm's gamma/beta are not penalised
                    np.testing.assert_array_equal(value, 0.0)


def test_hand_gradients_equal_jax_grad():
    _, params, _, _, _ = _network()
    for penalty in (l2(0.7), l1(0.7), combine(l1(0.2), l2(0.5))):
        assert norm_rel_err(penalty.grad(params), jax.grad(penalty.fn)(params)) <= RTOL


def test_l1_subgradient_at_zero_is_zero():
    params = {"w": jnp.asarray([-2.0, 0.0, 3.0])}
    np.testing.assert_array_equal(l1(1.5).grad(params)["w"], [-1.5, 0.0, 1.5])
    np.testing.assert_array_equal(jax.grad(l1(1.5).fn)(params)["w"], [-1.5, 0.0, 1.5])


def test_selector_chooses_the_leaves():
    _, params, _, _, _ = _network()
    everything = l2(1.0, where=lambda path, leaf: True)
    total = sum(0.5 * np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(params))
    assert float(everything.fn(params)) == pytest.approx(total, rel=1e-14)
    with pytest.raises(ValueError, match=r"selector picks no parameter.*named 'w'"):
        l2(1.0).fn({"gamma": jnp.ones(3)})


def test_bad_scales_are_refused():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="l2: scale must be a finite number >= 0"):
            l2(bad)
    with pytest.raises(TypeError, match="l1: scale must be a number"):
        l1("0.1")
    with pytest.raises(TypeError, match="Penalty"):
        value_and_grad(networks.mlp([2]), LOSS, penalty=lambda p: 0.0)
    assert set(regularization.PENALTIES) == {"l1", "l2"}


def test_penalty_on_every_gradient_path():
    net, params, state, x, labels = _network()
    penalty = combine(l1(0.01), l2(0.1))

    @jax.jit
    def every_path(params):
        run = dict(train=True)
        return (
            value_and_grad(net, LOSS, penalty=penalty)(params, state, x, labels, **run),
            value_and_grad(net, LOSS, grad="manual", penalty=penalty)(
                params, state, x, labels, **run
            ),
            backprop(net, LOSS, params, state, x, labels, penalty=penalty, **run),
            value_and_grad(net, LOSS)(params, state, x, labels, **run),
            penalty.fn(params),
            penalty.grad(params),
        )

    auto, man, loop, plain, p_value, p_grad = every_path(params)
    (v_auto, _), g_auto = auto
    (v_man, _), g_man = man
    v_loop, g_loop, _ = loop
    (v_plain, _), g_plain = plain
    assert norm_rel_err(g_man, g_auto) <= RTOL and norm_rel_err(g_loop, g_auto) <= RTOL
    assert float(v_auto) == pytest.approx(float(v_plain) + float(p_value), rel=1e-14)
    assert float(v_man) == pytest.approx(float(v_auto), rel=1e-14)
    assert float(v_loop) == pytest.approx(float(v_auto), rel=1e-14)
    # The difference is exactly the penalty's gradient (the data term is the same computation).
    diff = jax.tree.map(jnp.subtract, g_auto, g_plain)
    assert norm_rel_err(diff, p_grad) <= RTOL


def _train(optimizer, penalty, grad, steps=25):
    net, params, state, x, labels = _network()
    step = make_train_step(net, LOSS, optimizer, grad=grad, penalty=penalty)
    ts = TrainState.create(net, optimizer, jax.random.key(0), params=params, state=state)
    return fit_full_batch(step, ts, x, labels, steps)[0].params


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_l2_with_sgd_equals_decoupled_weight_decay_with_sgd(grad):
    lr, scale = 0.1, 0.05
    kernels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: regularization.kernels(path, None), params
    )
    steps = 25
    coupled = _train(optax.sgd(lr), l2(scale), grad, steps)
    decoupled = _train(
        optax.chain(optax.add_decayed_weights(scale, mask=kernels), optax.sgd(lr)),
        None,
        grad,
        steps,
    )
    # Per step both compute w - lr (g + scale w) in exact arithmetic; in floating point XLA
    # may fuse or order the multiply-adds differently in the two programs, a few ulps per step.
    # Gradient descent at this learning rate does not amplify a perturbation (it contracts
    # along the loss's curvature), so after n steps they differ by at most ~n * 4 eps.
    eps = float(np.finfo(np.float64).eps)
    assert norm_rel_err(coupled, decoupled) <= steps * 4 * eps


def test_l2_and_decoupled_decay_part_under_adam():
    lr, scale = 0.05, 0.05
    coupled = _train(optax.adam(lr), l2(scale), "manual", steps=50)
    decoupled = _train(optax.adamw(lr, weight_decay=scale, mask=lambda p: jax.tree_util.tree_map_with_path(lambda path, _: regularization.kernels(path, None), p)), None, "manual", steps=50)  # fmt: skip
    # Adam divides the L2 gradient by sqrt(v); adamw decays every kernel by lr * scale * w.
    # After 50 steps the two differ by far more than rounding (1e-14): by O(lr * steps * scale).
    assert norm_rel_err(coupled, decoupled) > 1e-3
    # Both shrink the kernels relative to no regularisation at all.
    plain = _train(optax.adam(lr), None, "manual", steps=50)
    norm = lambda p: sum(float(np.sum(k**2)) for k in _kernels(p))  # noqa: E731
    assert norm(coupled) < norm(plain) and norm(decoupled) < norm(plain)


def test_sgd_trains_with_a_penalty_and_a_schedule():
    schedule = optax.exponential_decay(0.5, transition_steps=10, decay_rate=0.5)
    net, params, state, x, labels = _network()
    opt = sgd(schedule)
    step = make_train_step(net, LOSS, opt, penalty=l2(1e-3))
    _, losses = fit_full_batch(
        step,
        TrainState.create(net, opt, jax.random.key(0), params=params, state=state),
        x,
        labels,
        30,
    )
    assert float(losses[-1]) < float(losses[0])
