"""Error measures shared by the tests, and the one tolerance of hand-derived vs autodiff."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.gradcheck import RTOL as RTOL  # the checker's: same formula, different rounding


def norm_rel_err(a, b):
    """``max|a - b| / max(max|a|, max|b|)`` over every element of two pytrees (or arrays).

    Norm-wise over the whole gradient, as :mod:`jaxnn.gradcheck` measures it: an elementwise
    relative error is meaningless where a true derivative is near zero. 0 when both are zero.
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert [np.shape(x) for x in la] == [np.shape(y) for y in lb]
    fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in la] or [np.zeros(0)])
    fb = np.concatenate([np.ravel(np.asarray(y, np.float64)) for y in lb] or [np.zeros(0)])
    diff = float(np.max(np.abs(fa - fb), initial=0.0))
    scale = max(float(np.max(np.abs(fa), initial=0.0)), float(np.max(np.abs(fb), initial=0.0)))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def check_layer_vjp(variant, layer, input_shape, seed, *, train=False):
    """The hand backward equals jax.vjp of apply (same key, same mode), run under ``variant``."""
    k_init, k_x, k_dy, k_layer = jax.random.split(jax.random.key(seed), 4)
    params, state = layer.init(k_init, input_shape)
    x = jax.random.normal(k_x, input_shape, jnp.float64)
    key = k_layer if layer.stochastic else None
    y, new_state, backward = variant(lambda p, x: layer.vjp(p, state, x, train=train, key=key))(
        params, x
    )
    dy = jax.random.normal(k_dy, y.shape, jnp.float64)
    y_ref, vjp_ref = jax.vjp(
        lambda p, x: layer.apply(p, state, x, train=train, key=key)[0], params, x
    )
    assert norm_rel_err(y, y_ref) <= RTOL
    dparams, dx = variant(lambda b, dy: b(dy))(backward, dy)
    assert norm_rel_err((dparams, dx), vjp_ref(dy)) <= RTOL
    chex.assert_trees_all_equal_structs(new_state, state)
