"""Pooling: max_pool, avg_pool and global_avg_pool. The hand backward (overlap-add of the
window offsets) equals jax.vjp for windows that tile the input, overlap, leave gaps (stride
larger than the window) or leave rows unread; the forward equals a naive loop; the ties
convention (first maximum in row-major window order) and what jax.grad does there; errors."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import RTOL, norm_rel_err

import jaxnn
from jaxnn.backprop import manual
from jaxnn.conv import conv2d
from jaxnn.gradcheck import check_layer
from jaxnn.pooling import avg_pool, global_avg_pool, max_pool


def check_vjp(variant, layer, shape, seed):
    """The hand backward equals jax.vjp of apply under ``variant`` (jit or not), the forward
    equals apply's. Draws on the host: jax.random would compile afresh for every shape."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape))
    y, state, backward = variant(lambda x: layer.vjp({}, {}, x, train=False))(x)
    y_ref, vjp_ref = jax.vjp(lambda p, x: layer.apply(p, {}, x, train=False)[0], {}, x)
    assert norm_rel_err(y, y_ref) <= RTOL
    dy = jnp.asarray(rng.standard_normal(y.shape))
    assert norm_rel_err(variant(lambda b, dy: b(dy))(backward, dy), vjp_ref(dy)) <= RTOL
    assert state == {}


POOLS = {
    "max": lambda *a, **k: max_pool(*a, **k),
    "avg": lambda *a, **k: avg_pool(*a, **k),
    "avg-exclude-pad": lambda *a, **k: avg_pool(*a, count_include_pad=False, **k),
}
# Each: (window_shape, strides, padding, input shape [N, H, W, C]).
GEOMETRIES = {
    "tiling": (2, None, "VALID", (2, 8, 6, 3)),
    "not-tiling": (2, None, "VALID", (2, 7, 9, 3)),  # the last row is never read
    "overlapping-padded": (3, 2, 1, (2, 7, 6, 3)),
    "stride-larger-than-window": (2, 3, "VALID", (2, 8, 7, 2)),
    "asymmetric": ((2, 3), (3, 1), ((1, 0), (2, 1)), (1, 9, 8, 2)),
    "same-stride1": (3, 1, "SAME", (1, 4, 5, 2)),
    "same-stride3": (2, 3, "SAME", (2, 11, 10, 2)),
    "pair-padding": (3, None, (1, 2), (1, 5, 5, 1)),
    "window-equals-input": ((4, 3), None, "VALID", (2, 4, 3, 2)),
    "one-by-one": (1, 2, "VALID", (1, 5, 4, 2)),
}


class VjpTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_geometry(self):
        for seed, (pool, (window, strides, padding, shape)) in enumerate(
            itertools.product(POOLS.values(), GEOMETRIES.values())
        ):
            check_vjp(self.variant, pool(window, strides, padding), shape, seed)

    @chex.variants(with_jit=True)
    @settings(max_examples=12)
    @given(
        pool=st.sampled_from(sorted(POOLS)),
        window=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        strides=st.tuples(st.integers(1, 4), st.integers(1, 4)),
        padding=st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.tuples(
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
            ),
        ),
        size=st.tuples(st.integers(3, 8), st.integers(3, 8)),
        seed=st.integers(0, 2**16),
    )
    def test_random_geometry(self, pool, window, strides, padding, size, seed):
        if not isinstance(padding, str):  # padding must be smaller than the window
            padding = tuple(
                tuple(min(p, k - 1) for p in pair) for pair, k in zip(padding, window, strict=True)
            )
        check_vjp(self.variant, POOLS[pool](window, strides, padding), (2, *size, 2), seed)

    @chex.variants(with_jit=True, without_jit=True)
    def test_global_avg_pool(self):
        for seed, shape in enumerate([(2, 3, 4, 5), (1, 1, 1, 3), (3, 7, 2), (2, 2, 3, 2, 4)]):
            check_vjp(self.variant, global_avg_pool(), shape, seed)


def _naive_pool(x, window, strides, pads, kind):
    """The forward formulas of the docstrings, as loops (float64)."""
    fill = -np.inf if kind == "max" else 0.0
    real = np.pad(np.ones(x.shape[1:3]), pads)
    x = np.pad(np.asarray(x), ((0, 0), *pads, (0, 0)), constant_values=fill)
    (kh, kw), (sh, sw) = window, strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for o, p in itertools.product(range(oh), range(ow)):
        patch = x[:, o * sh : o * sh + kh, p * sw : p * sw + kw]
        if kind == "max":
            y[:, o, p] = patch.max(axis=(1, 2))
        else:
            count = (
                kh * kw if kind == "avg" else real[o * sh : o * sh + kh, p * sw : p * sw + kw].sum()
            )
            y[:, o, p] = patch.sum(axis=(1, 2)) / count
    return y


@pytest.mark.parametrize("kind", sorted(POOLS))
@pytest.mark.parametrize(
    ("window", "strides", "padding", "shape", "pads"),
    [
        (3, 2, 1, (2, 7, 6, 3), ((1, 1), (1, 1))),
        ((2, 3), (3, 1), ((1, 0), (2, 1)), (1, 9, 8, 2), ((1, 0), (2, 1))),
        # SAME, O = ceil(n / 3) = 4: total (4 - 1) 3 + 2 - n = 0 for n = 11, 1 for n = 10.
        (2, 3, "SAME", (2, 11, 10, 2), ((0, 0), (0, 1))),
        (3, None, "VALID", (1, 7, 8, 1), ((0, 0), (0, 0))),
    ],
    ids=["overlap-padded", "asymmetric", "same", "default-stride"],
)
def test_forward_is_the_documented_formula(kind, window, strides, padding, shape, pads):
    x = np.random.default_rng(0).standard_normal(shape)
    y, _ = POOLS[kind](window, strides, padding).apply({}, {}, jnp.asarray(x), train=False)
    w = (window, window) if isinstance(window, int) else window
    s = w if strides is None else (strides, strides) if isinstance(strides, int) else strides
    assert norm_rel_err(y, _naive_pool(x, w, s, pads, kind)) <= RTOL


def test_same_padding_total_split_smaller_half_first():
    # H = 10, k = 3, s = 2: OH = 5, total (5 - 1) 2 + 3 - 10 = 1 -> (0, 1).
    x = jnp.arange(10.0).reshape(1, 10, 1, 1)
    y, _ = max_pool((3, 1), (2, 1), "SAME").apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y.ravel(), [2, 4, 6, 8, 9])


def test_count_include_pad_divisors():
    x = jnp.ones((1, 3, 3, 1))
    included, _ = avg_pool(2, 2, 1).apply({}, {}, x, train=False)
    excluded, _ = avg_pool(2, 2, 1, count_include_pad=False).apply({}, {}, x, train=False)
    # Each 2x2 window holds one real element in the corners, two on the edges, four inside.
    np.testing.assert_allclose(included[0, :, :, 0], [[0.25, 0.5], [0.5, 1.0]], rtol=RTOL)
    np.testing.assert_array_equal(excluded, 1.0)


def test_strides_default_to_the_window():
    x = jnp.ones((1, 6, 6, 1))
    assert max_pool(2).apply({}, {}, x, train=False)[0].shape == (1, 3, 3, 1)
    assert max_pool(2, strides=1).apply({}, {}, x, train=False)[0].shape == (1, 5, 5, 1)
    assert avg_pool((3, 2)).apply({}, {}, x, train=False)[0].shape == (1, 2, 3, 1)


# ----------------------------------------------------------------------------- ties, gaps


def _hand_grad(layer, x, dy=None):
    y, _, backward = layer.vjp({}, {}, x, train=False)
    return backward(jnp.ones_like(y) if dy is None else dy)[1]


def _autodiff_grad(layer, x):
    return jax.grad(lambda x: jnp.sum(layer.apply({}, {}, x, train=False)[0]))(x)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        # Non-overlapping 2x2 windows of equal values: the top-left element of each.
        (max_pool(2), [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]),
        # 3x3 windows, stride 1, padded by 1 (-inf): each window's first real element, so
        # the top-left input element is the first maximum of the four windows over it.
        (max_pool(3, 1, 1), [[4, 2, 2, 0], [2, 1, 1, 0], [2, 1, 1, 0], [0, 0, 0, 0]]),
        # Stride 3 > window 2 over 5x5: the windows start at 0 and 3; row and column 2 between
        # them get nothing.
        (max_pool(2, 3), [[1, 0, 0, 1, 0], [0] * 5, [0] * 5, [1, 0, 0, 1, 0], [0] * 5]),
    ],
    ids=["tiling", "overlapping", "gaps"],
)
def test_ties_go_to_the_first_maximum_and_jax_grad_agrees(layer, expected):
    """Every window holds equal values. The hand rule sends each window's gradient to its
    first maximum in row-major order (as PyTorch's CPU kernel); jax.grad of lax.reduce_window
    max does the same (its select_and_scatter_add keeps the earlier element under >=)."""
    x = jnp.ones((1, len(expected), len(expected), 1))
    np.testing.assert_array_equal(_hand_grad(layer, x)[0, :, :, 0], expected)
    np.testing.assert_array_equal(_autodiff_grad(layer, x)[0, :, :, 0], expected)


def test_ties_first_in_row_major_order_not_column_major():
    # Window [[0, 5], [5, 0]]: the maxima at (0, 1) and (1, 0); row-major first is (0, 1).
    x = jnp.array([[0.0, 5.0], [5.0, 0.0]]).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(_hand_grad(max_pool(2), x).ravel(), [0, 1, 0, 0])
    np.testing.assert_array_equal(_autodiff_grad(max_pool(2), x).ravel(), [0, 1, 0, 0])


def test_max_pool_nan_is_the_maximum():
    x = jnp.array([1.0, np.nan, 2.0, 3.0]).reshape(1, 2, 2, 1)
    y, _, backward = max_pool(2).vjp({}, {}, x, train=False)
    assert np.isnan(y).all() and np.isnan(max_pool(2).apply({}, {}, x, train=False)[0]).all()
    np.testing.assert_array_equal(backward(jnp.ones_like(y))[1].ravel(), [0, 1, 0, 0])


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_rows_and_columns_no_window_reads_get_no_gradient(kind):
    # H = 7, window 2, stride 2: OH = 3 reads rows 0..5, row 6 never; W = 8, stride 3:
    # OW = 3 reads columns 0-1, 3-4, 6-7, never 2 and 5.
    layer = POOLS[kind](2, (2, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 8, 3)))
    dx = _hand_grad(layer, x)
    np.testing.assert_array_equal(dx[:, 6], 0.0)
    np.testing.assert_array_equal(dx[:, :, [2, 5]], 0.0)
    assert norm_rel_err(dx, _autodiff_grad(layer, x)) <= RTOL


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (max_pool(3, 2, 1), (2, 5, 6, 2)),
        (avg_pool(2, 1, ((0, 1), (1, 0))), (2, 4, 5, 2)),
        (avg_pool(3, 2, 1, count_include_pad=False), (1, 5, 6, 2)),
        (global_avg_pool(), (2, 3, 4, 2)),
    ],
    ids=["max", "avg", "avg-exclude-pad", "global"],
)
def test_check_layer_passes(layer, shape):
    reports = check_layer(layer, shape)
    assert all(report.ok for report in reports.values())


def test_backward_is_differentiable_again():
    """Reverse over reverse through the hand backward (w.r.t. dy: max pooling's backward is
    linear in dy given the saved argmax) equals it through jax.vjp's."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6, 2)))
    probe = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape))
    for layer in (max_pool(3, 2, 1), avg_pool(3, 2, 1, count_include_pad=False)):
        y = layer.apply({}, {}, x, train=False)[0]
        dy = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape))

        def hand(dy, layer=layer):
            return jnp.sum(jnp.sin(probe * layer.vjp({}, {}, x, train=False)[2](dy)[1]))

        def auto(dy, layer=layer):
            vjp = jax.vjp(lambda x: layer.apply({}, {}, x, train=False)[0], x)[1]
            return jnp.sum(jnp.sin(probe * vjp(dy)[0]))

        assert norm_rel_err(jax.grad(hand)(dy), jax.grad(auto)(dy)) <= RTOL


def test_a_cnn_has_the_same_gradients_on_both_paths():
    """conv -> relu -> max_pool -> conv -> avg_pool -> global_avg_pool -> dense: the manual
    path (every backward by hand, through jax.custom_vjp) gives autodiff's gradients."""
    net = jaxnn.serial(
        conv2d(4, 3), jaxnn.activation("relu"), max_pool(2), conv2d(4, 3, strides=1),
        jaxnn.activation("tanh"), avg_pool(3, 1, 1, count_include_pad=False), global_avg_pool(),
        jaxnn.dense(3),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 2)))
    labels = jnp.asarray(rng.integers(0, 3, 4))
    params, state = jax.eval_shape(lambda: net.init(jax.random.key(0), x.shape))
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) / 2), params)
    loss = "softmax_cross_entropy_with_integer_labels"
    grads = {
        mode: jax.jit(jaxnn.value_and_grad(net, loss, grad=mode), static_argnames="train")(
            params, state, x, labels, train=True
        )[1]
        for mode in ("autodiff", "manual")
    }
    assert norm_rel_err(grads["manual"], grads["autodiff"]) <= RTOL
    manual_grad = jax.grad(lambda x: jnp.sum(manual(max_pool(2)).apply({}, {}, x, train=True)[0]))
    np.testing.assert_array_equal(manual_grad(jnp.ones((1, 2, 2, 1))).ravel(), [1, 0, 0, 0])


def test_global_avg_pool_shapes():
    y, _ = global_avg_pool().apply({}, {}, jnp.ones((2, 3, 4, 5)), train=False)
    assert y.shape == (2, 5)
    assert global_avg_pool().init(None, (2, 3, 4, 5)) == ({}, {})


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_padding_not_smaller_than_the_window(kind):
    with pytest.raises(ValueError, match=rf"{kind}_pool: padding \(\(2, 2\), \(0, 0\)\) is not "
                                         r"smaller than the window \(2, 2\) along the height"):  # fmt: skip
        POOLS[kind](2, 1, (2, 0)).apply({}, {}, jnp.ones((1, 4, 4, 1)), train=False)


def test_window_larger_than_the_padded_input():
    with pytest.raises(ValueError, match=r"max_pool: the window \(3 along the width.*larger "):
        max_pool((1, 3), 1, ((0, 0), (0, 1))).apply({}, {}, jnp.ones((1, 4, 1, 1)), train=False)
    with pytest.raises(ValueError, match=r"avg_pool: the window \(5 along the height"):
        avg_pool(5).init(None, (1, 4, 4, 1))


@pytest.mark.parametrize("layer", [max_pool(2), avg_pool(2)], ids=["max", "avg"])
def test_wrong_rank_input(layer):
    with pytest.raises(ValueError, match=rf"{layer.name}: input must be NHWC.*rank 3.*x\[None\]"):
        layer.apply({}, {}, jnp.ones((4, 4, 1)), train=False)
    with pytest.raises(ValueError, match=rf"{layer.name}: input_shape must be NHWC"):
        layer.init(None, (4, 4))
    with pytest.raises(ValueError, match=r"global_avg_pool: input must be channels last"):
        global_avg_pool().apply({}, {}, jnp.ones((4, 4)), train=False)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0,), "window_shape must be a positive int or a pair"),
        ((2, (1, 0)), "strides must be a positive int or a pair"),
        ((2, None, "full"), "unknown padding 'full'"),
        ((2, None, (1, 1, 1)), "malformed padding"),
        ((2, None, -1), "padding must be >= 0"),
    ],
)
def test_malformed_hyperparameters(args, match):
    for factory in (max_pool, avg_pool):
        with pytest.raises(ValueError, match=match):
            factory(*args)


def test_params_must_be_empty():
    with pytest.raises(ValueError, match=r"max_pool: this layer has no parameters"):
        max_pool(2).apply({"w": jnp.ones(1)}, {}, jnp.ones((1, 2, 2, 1)), train=False)
