"""The optimiser helpers: sgd is optax's sgd bit for bit, freezes leaves exactly, and takes
numbers, scalar arrays and schedules while refusing what is neither."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn.optim import sgd


def _params():
    return {
        "dense_0": {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.1, -0.2])},
        "dense_1": {"w": jnp.asarray([[2.0], [-1.0]]), "b": jnp.asarray([0.3])},
    }


def _grads(params, k):
    """A different gradient at every step ``k``: ``(k + 1) · w`` for every leaf ``w``."""
    return jax.tree.map(lambda w: (k + 1.0) * w, params)


def _run(opt, steps=3):
    params = _params()
    state = opt.init(params)
    for k in range(steps):
        updates, state = opt.update(_grads(params, k), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("rate", [0.1, np.float32(0.1), jnp.asarray(0.1)], ids=str)
def test_sgd_of_a_rate_is_optax_sgd_bit_for_bit(rate):
    got, got_state = _run(sgd(rate))
    want, want_state = _run(optax.sgd(rate))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)


def test_frozen_leaves_are_not_moved_and_add_no_state():
    opt = sgd(0.1, trainable=lambda path, _: path[-1].key == "w")
    got, state = _run(opt)
    start, want = _params(), _run(optax.sgd(0.1))[0]
    for layer in ("dense_0", "dense_1"):
        np.testing.assert_array_equal(got[layer]["b"], start[layer]["b"])  # exactly unchanged
        np.testing.assert_array_equal(got[layer]["w"], want[layer]["w"])  # trained as sgd's
    assert jax.tree.structure(state) == jax.tree.structure(optax.sgd(0.1).init(start))


def test_a_schedule_gives_each_step_its_rate():
    # On L = w²/2 (dL/dw = w) step k multiplies w by 1 - η_k.
    schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
    opt = sgd(schedule)
    w = {"w": jnp.asarray(2.0, jnp.float32)}
    state, expected = opt.init(w), np.float32(2.0)
    for k in range(4):
        updates, state = opt.update(w, state, w)
        w = optax.apply_updates(w, updates)
        expected = expected - np.float32(0.5 * 0.5**k) * expected
        assert float(w["w"]) == pytest.approx(float(expected), rel=1e-6)


def test_sgd_refuses_what_is_not_a_rate():
    for bad in [True, jnp.ones(2), "0.1", None]:
        with pytest.raises(TypeError, match="positive number or an optax schedule"):
            sgd(bad)
    for bad in [0, -1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
            sgd(bad)
