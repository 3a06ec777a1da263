"""Error measures shared by the tests."""

import math

import jax
import numpy as np


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
