"""Tests of jaxnn.losses: hand-derived gradients against jax.grad, golden values from
independent numpy/math formulas, stability at extreme logits, and input validation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numerics import RTOL, norm_rel_err

from jaxnn import losses as L

NAMES = sorted(L.LOSSES)
SAME_SHAPE = [n for n in NAMES if n != "softmax_cross_entropy_with_integer_labels"]
EPS64 = float(np.finfo(np.float64).eps)

# Rounding floor where the gradient is a small difference of larger terms (softmax - y for a
# confident right answer, sigma(z) - t, out - target): each side forms it in <= 4 rounded
# steps on terms of size <= M (see term_scale), so the two differ by <= 8 eps M absolutely.
FLOOR_ULPS = 8


# Shapes of rank 1-3 with dims 1-5 from a fixed pool (each new shape recompiles every
# primitive in eager mode): length-1 axes in every position, including a single class.
SHAPES = [(1,), (5,), (2, 3), (5, 1), (1, 4, 2), (3, 2, 5)]


def _reals(draw, shape, bound):
    """hypothesis floats in [-bound, bound], or seeded normals at a drawn scale."""
    if draw(st.booleans()):
        return draw(
            hnp.arrays(
                np.float64,
                shape,
                elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False),
            )
        )
    scale = draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    return scale * np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)


@st.composite
def loss_inputs(draw, name):
    """(predictions, targets) of a pool shape, targets appropriate to the loss."""
    shape = draw(st.sampled_from(SHAPES))
    pred = _reals(draw, shape, 30.0)
    if name == "softmax_cross_entropy":
        # each row a probability vector: Dirichlet draws, or one-hot rows
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if draw(st.booleans()):
            target = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
        else:
            target = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])]
    elif name == "softmax_cross_entropy_with_integer_labels":
        target = draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(0, shape[-1] - 1)))
    elif name == "binary_cross_entropy_with_logits":
        target = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    else:  # squared errors: any reals
        target = _reals(draw, shape, 30.0)
    return pred, target


def term_scale(name, pred, target):
    """M: the size of the terms either gradient forms before they (may) cancel."""
    n = pred.size
    batch = max(n // pred.shape[-1], 1)
    big = np.max(np.abs(pred)) + np.max(np.abs(np.asarray(target, np.float64)))
    return {
        "squared_error": big,  # out - target
        "mean_squared_error": 2 * big / n,  # 2 (out - target) / N
        "softmax_cross_entropy": 2.0 / batch,  # (softmax sum y - y) / B, sum y = 1
        "softmax_cross_entropy_with_integer_labels": 1.0 / batch,  # (softmax - onehot) / B
        "binary_cross_entropy_with_logits": 1.0 / n,  # (sigma(z) - t) / N
    }[name]


# ----------------------------------------------------------------------------- gradients


def _hand(name):
    return L.LOSSES[name].grad  # a module-level function: its jitted variant compiles once


@functools.cache
def _autodiff(name):
    # the reference, always jitted: it is not the code under test
    return jax.jit(jax.grad(L.LOSSES[name].fn))


def _check_grad(name, variant, pred, target):
    g = np.asarray(variant(_hand(name))(jnp.asarray(pred), jnp.asarray(target)))
    g_ref = np.asarray(_autodiff(name)(jnp.asarray(pred), jnp.asarray(target)))
    assert g.dtype == np.float64
    assert g.shape == pred.shape
    assert np.all(np.isfinite(g))
    scale = max(np.max(np.abs(g)), np.max(np.abs(g_ref)))
    floor = FLOOR_ULPS * EPS64 * term_scale(name, pred, target)
    assert np.max(np.abs(g - g_ref)) <= RTOL * scale + floor, norm_rel_err(g, g_ref)


class GradTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in sorted(L.LOSSES)))
    @given(data=st.data())
    def test_grad_matches_autodiff(self, name, data):
        # The inputs are drawn inside the test: their strategy depends on the loss.
        _check_grad(name, self.variant, *data.draw(loss_inputs(name)))


def test_bce_autodiff_at_zero_logit():
    z = jnp.zeros(2)
    t = jnp.asarray([0.25, 1.0])
    expected = [(0.5 - 0.25) / 2, (0.5 - 1.0) / 2]  # (sigma(0) - t) / N, exact binary fractions
    np.testing.assert_array_equal(L.binary_cross_entropy_with_logits_grad(z, t), expected)
    np.testing.assert_array_equal(jax.grad(L.binary_cross_entropy_with_logits)(z, t), expected)


# ----------------------------------------------------------------------------- golden values


def test_squared_error_golden():
    out = [0.75136507, 0.772928465]
    target = [0.01, 0.99]
    got = float(L.squared_error(jnp.asarray(out), jnp.asarray(target)))
    ref = 0.5 * ((target[0] - out[0]) ** 2 + (target[1] - out[1]) ** 2)
    # two squares of correctly rounded differences, one sum of positives, one halving: 4 eps
    assert abs(got - ref) <= 4 * EPS64 * ref
    assert abs(got - 0.298371109) <= 5e-10  # the published 9 decimals: half a unit of the last
    g = np.asarray(L.squared_error_grad(jnp.asarray(out), jnp.asarray(target)))
    np.testing.assert_array_equal(g, np.subtract(out, target))  # out - target, one rounding


def test_mean_squared_error_golden():
    rng = np.random.default_rng(0)
    out, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    got = float(L.mean_squared_error(jnp.asarray(out), jnp.asarray(target)))
    ref = float(np.mean((out - target) ** 2))
    # 12 positive terms: summation error <= 12 eps of the sum, plus 2 ulps per term
    assert abs(got - ref) <= 14 * EPS64 * ref
    g = np.asarray(L.mean_squared_error_grad(jnp.asarray(out), jnp.asarray(target)))
    np.testing.assert_allclose(g, 2 * (out - target) / 12, rtol=2 * EPS64, atol=0)  # 2 roundings


def _np_log_softmax(z):
    m = np.max(z, axis=-1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (6,)])
def test_softmax_cross_entropy_golden(shape):
    rng = np.random.default_rng(1)
    z = 4 * rng.standard_normal(shape)
    y = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    batch = max(z.size // shape[-1], 1)
    lsm = _np_log_softmax(z)
    ref = -np.sum(y * lsm) / batch
    got = float(L.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y)))
    # every term y (-log_softmax) >= 0 (no cancellation in the sum); each log_softmax entry is
    # z - m - lse, with absolute error <= 4 eps (|z| + |m| + |lse|), and the sum of n terms
    # adds n eps of the total
    mag = np.abs(z) + np.abs(np.max(z, -1, keepdims=True)) + np.abs(lsm - z)
    tol = 4 * EPS64 * np.sum(y * mag) / batch + z.size * EPS64 * ref
    assert abs(got - ref) <= tol
    g = np.asarray(L.softmax_cross_entropy_grad(jnp.asarray(z), jnp.asarray(y)))
    g_ref = (np.exp(lsm) * np.sum(y, -1, keepdims=True) - y) / batch
    # (softmax sum y - y) / B: the reference's softmax = exp(log_softmax) inherits the
    # log_softmax's absolute error (<= 4 eps mag, see above) as a relative one, the library's
    # has a few ulps; terms <= 1/B: 8 eps (mag + 1) / B
    assert np.max(np.abs(g - g_ref)) <= 8 * EPS64 * (np.max(mag) + 1) / batch


def test_binary_cross_entropy_golden():
    rng = np.random.default_rng(2)
    z = rng.uniform(-4.0, 4.0, (3, 5))
    t = rng.uniform(0.0, 1.0, (3, 5))
    s = 1 / (1 + np.exp(-z))
    ref_terms = -t * np.log(s) - (1 - t) * np.log(1 - s)
    ref = float(np.mean(ref_terms))
    got = float(L.binary_cross_entropy_with_logits(jnp.asarray(z), jnp.asarray(t)))
    # the reference is the weaker side: 1 - s cancels, so log(1 - s) carries an absolute
    # error of ~eps s/(1 - s) <= eps e^|z|; log s and the library's softplus - t z carry a few
    # ulps of |z| + 1. 4 eps of each, averaged.
    tol = 4 * EPS64 * float(np.mean(np.exp(np.abs(z)) + np.abs(z) + 1))
    assert abs(got - ref) <= tol, (got, ref, tol)
    g = np.asarray(L.binary_cross_entropy_with_logits_grad(jnp.asarray(z), jnp.asarray(t)))
    # (s - t) / N: terms <= 1, a few (<= 4) ulps each side
    assert np.max(np.abs(g - (s - t) / z.size)) <= 4 * EPS64 / z.size


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (6,), (3, 1)])
def test_integer_labels_equal_one_hot(shape):
    rng = np.random.default_rng(3)
    z = jnp.asarray(3 * rng.standard_normal(shape))
    labels = jnp.asarray(rng.integers(0, shape[-1], size=shape[:-1]))
    onehot = jnp.asarray(np.eye(shape[-1])[np.asarray(labels)])
    v_int = float(L.softmax_cross_entropy_with_integer_labels(z, labels))
    v_hot = float(L.softmax_cross_entropy(z, onehot))
    # the same terms -log_softmax(z)_label (the one-hot sum adds exact zeros: 0 * finite = 0),
    # summed in possibly different orders: <= (number of terms) eps of the (positive) sum
    assert abs(v_int - v_hot) <= z.size * EPS64 * abs(v_hot)
    # gradients: (softmax * sum(onehot) - onehot)/B with sum(onehot) = 1 exactly is the same
    # rounded expression as (softmax - onehot)/B: bitwise equal
    np.testing.assert_array_equal(
        L.softmax_cross_entropy_with_integer_labels_grad(z, labels),
        L.softmax_cross_entropy_grad(z, onehot),
    )


# ----------------------------------------------------------------------------- stability

DTYPES = [jnp.float32, jnp.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("logit", "target", "value", "grad"),
    [
        # softplus(z) - t z, every entry exact: softplus(1e4) = 1e4 + log1p(e^-1e4) = 1e4
        (1e4, 0.0, 1e4, 1.0),
        (-1e4, 0.0, 0.0, 0.0),
        (1e4, 1.0, 0.0, 0.0),
        (-1e4, 1.0, 1e4, -1.0),
    ],
)
def test_bce_at_extreme_logits(logit, target, value, grad, dtype):
    z = jnp.asarray([logit], dtype)
    t = jnp.asarray([target], dtype)
    v = L.binary_cross_entropy_with_logits(z, t)
    assert v.dtype == dtype
    assert float(v) == value
    g = L.binary_cross_entropy_with_logits_grad(z, t)
    assert g.dtype == dtype
    assert g.tolist() == [grad]  # sigma(+-1e4) - t: 1 - 0, 0 - 0, 1 - 1, 0 - 1
    assert np.all(np.isfinite(np.asarray(jax.grad(L.binary_cross_entropy_with_logits)(z, t))))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(("label", "value"), [(0, 0.0), (1, 1e4), (2, 2e4)])
def test_softmax_cross_entropy_at_extreme_logits(label, value, dtype):
    z = jnp.asarray([[1e4, 0.0, -1e4]], dtype)
    # log_softmax = [0, -1e4, -2e4] exactly (the correction e^-1e4 is far below an ulp)
    onehot = jnp.asarray(np.eye(3)[[label]], dtype)
    labels = jnp.asarray([label])
    expected_grad = [[1.0, 0.0, 0.0] - np.eye(3)[label]]  # softmax = [1, 0, 0] exactly
    for fn, grad, y in (
        (L.softmax_cross_entropy, L.softmax_cross_entropy_grad, onehot),
        (
            L.softmax_cross_entropy_with_integer_labels,
            L.softmax_cross_entropy_with_integer_labels_grad,
            labels,
        ),
    ):
        v = fn(z, y)
        assert v.dtype == dtype
        assert float(v) == value
        g = grad(z, y)
        assert g.dtype == dtype
        np.testing.assert_array_equal(g, expected_grad)
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(z, y))))


# ----------------------------------------------------------------------------- bad input


def _fn_and_grad(name):
    loss = L.LOSSES[name]
    return [loss.fn, loss.grad]


@pytest.mark.parametrize("name", SAME_SHAPE)
def test_shape_mismatch_is_refused(name):
    pred = jnp.zeros((3, 1))
    target = jnp.zeros((3,))
    for f in _fn_and_grad(name):
        with pytest.raises(ValueError) as info:
            f(pred, target)
        assert "(3, 1)" in str(info.value)
        assert "(3,)" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_integer_predictions_are_refused(name):
    pred = jnp.zeros((2, 3), jnp.int32)
    if name == "softmax_cross_entropy_with_integer_labels":
        target = jnp.zeros((2,), jnp.int32)
    else:
        target = jnp.zeros((2, 3))
    for f in _fn_and_grad(name):
        with pytest.raises(TypeError, match="floating"):
            f(pred, target)


def test_integer_label_loss_refuses_float_labels():
    for f in _fn_and_grad("softmax_cross_entropy_with_integer_labels"):
        with pytest.raises(TypeError, match="integer"):
            f(jnp.zeros((2, 3)), jnp.asarray([0.0, 1.0]))


@pytest.mark.parametrize("bad", [5, 3, -1])
def test_integer_labels_out_of_range(bad):
    labels = jnp.asarray([0, bad])
    for f in _fn_and_grad("softmax_cross_entropy_with_integer_labels"):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            f(jnp.zeros((2, 3)), labels)


@pytest.mark.parametrize("labels_shape", [(2, 1), (3,), (2, 3), ()])
def test_integer_labels_wrong_shape(labels_shape):
    labels = jnp.zeros(labels_shape, jnp.int32)
    for f in _fn_and_grad("softmax_cross_entropy_with_integer_labels"):
        with pytest.raises(ValueError) as info:
            f(jnp.zeros((2, 3)), labels)
        assert str(labels_shape) in str(info.value)
        assert "(2, 3)" in str(info.value)


@pytest.mark.parametrize(
    "name", ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]
)
def test_softmax_losses_need_a_class_axis(name):
    labels = jnp.asarray(0.0) if name == "softmax_cross_entropy" else jnp.asarray(0)
    for f in _fn_and_grad(name):
        with pytest.raises(ValueError, match="rank"):
            f(jnp.asarray(1.0), labels)


@pytest.mark.parametrize("name", NAMES)
def test_get_returns_loss(name):
    assert L.get(name) is L.LOSSES[name]
    assert L.get(name).name == name
    assert L.get(L.LOSSES[name]) is L.LOSSES[name]


def test_get_unknown_name_lists_known():
    with pytest.raises(ValueError, match="nope") as info:
        L.get("nope")
    for name in NAMES:
        assert name in str(info.value)


# ----------------------------------------------------------------------------- NaN propagates


def _valid_targets(name, shape, rng):
    from jaxnn.audit import random_targets

    return random_targets(name, jax.random.key(int(rng.integers(2**31))), shape)


# optax's counterparts, where optax has one: NaN must reach the value as it does there.
def _optax_reference(name):
    import optax

    return {
        "mean_squared_error": lambda y, t: jnp.mean(optax.l2_loss(y, t)) * 2,
        "softmax_cross_entropy": lambda z, t: jnp.mean(optax.softmax_cross_entropy(z, t)),
        "softmax_cross_entropy_with_integer_labels": lambda z, t: jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(z, t)
        ),
        "binary_cross_entropy_with_logits": lambda z, t: jnp.mean(
            optax.sigmoid_binary_cross_entropy(z, t)
        ),
        "squared_error": lambda y, t: jnp.sum(optax.l2_loss(y, t)),
    }[name]


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_prediction_gives_a_nan_loss_and_gradient_on_both_paths(name):
    """As optax: one NaN in the predictions makes the value NaN; the hand gradient and
    jax.grad are NaN in that example's row (and nowhere does NaN turn into a number)."""
    rng = np.random.default_rng(0)
    shape = (4, 3)
    y = rng.standard_normal(shape)
    y[2, 1] = np.nan
    y = jnp.asarray(y)
    t = _valid_targets(name, shape, rng)
    loss = L.LOSSES[name]
    wrap = jax.jit  # predictions are never checked for NaN, eager or jitted: one path
    value = wrap(loss.fn)(y, t)
    assert np.isnan(float(value)) and np.isnan(float(_optax_reference(name)(y, t)))
    for g in (wrap(loss.grad)(y, t), wrap(jax.grad(loss.fn))(y, t)):
        g = np.asarray(g)
        assert np.isnan(g[2]).any(), g
        assert not np.isnan(np.delete(g, 2, axis=0)).any()  # the other examples untouched


@pytest.mark.parametrize(
    "name",
    [
        "squared_error",
        "mean_squared_error",
        "softmax_cross_entropy",
        "binary_cross_entropy_with_logits",
    ],
)
def test_a_nan_target_under_jit_gives_a_nan_loss(name):
    """Concrete NaN targets are refused (test_bad_inputs); under jit they reach the loss."""
    rng = np.random.default_rng(1)
    shape = (4, 3)
    t = np.array(_valid_targets(name, shape, rng))
    t[1, 0] = np.nan
    loss = L.LOSSES[name]
    y = jnp.asarray(rng.standard_normal(shape))
    assert np.isnan(float(jax.jit(loss.fn)(y, jnp.asarray(t))))
    assert np.isnan(np.asarray(jax.jit(loss.grad)(y, jnp.asarray(t)))).any()


# ----------------------------------------------------------------------------- the record


@pytest.mark.parametrize("name", NAMES)
def test_masked_with_every_example_kept_is_the_loss_whatever_its_reduction(name):
    """The reduction field, not the name, decides how masking renormalises."""
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.standard_normal((5, 3)))
    t = _valid_targets(name, (5, 3), rng)
    loss = L.LOSSES[name]
    keep = jnp.ones(5, bool)
    masked = L.masked(loss)
    # Each side sums or averages 5 terms in another order: a few ulps of the largest.
    both = jax.jit(lambda y, t: (masked.fn(y, (t, keep)), loss.fn(y, t),
                                 masked.grad(y, (t, keep)), loss.grad(y, t)))  # fmt: skip
    value_m, value, grad_m, grad = both(y, t)
    np.testing.assert_allclose(value_m, value, rtol=8 * EPS64)
    np.testing.assert_allclose(grad_m, grad, rtol=8 * EPS64, atol=8 * EPS64 * np.abs(grad).max())


def _summed_hinge(scores, labels):
    """A loss of one's own that sums over the batch: Σ_i max(0, 1 + max_{c≠y} s_ic − s_iy)."""
    picked = jnp.take_along_axis(scores, labels[:, None], axis=1)
    others = jnp.where(jax.nn.one_hot(labels, scores.shape[1]) > 0, -jnp.inf, scores)
    return jnp.sum(jax.nn.relu(1 + jnp.max(others, axis=1, keepdims=True) - picked))


def test_a_custom_loss_that_sums_is_masked_as_a_sum():
    """Reported: a summing loss came out divided by the batch size (70.0 unmasked, 17.5
    masked with every example kept); its reduction now says it sums."""
    loss = L.Loss(
        "summed_hinge", _summed_hinge, jax.grad(_summed_hinge), reduction="sum", targets="labels"
    )
    scores = jnp.asarray(np.arange(12.0).reshape(4, 3) * np.array([1.0, -2.0, 3.0]))
    labels = jnp.array([0, 1, 0, 1])
    masked = jax.jit(L.masked(loss).fn)
    value = float(loss.fn(scores, labels))  # integers: every sum is exact
    assert value == float(masked(scores, (labels, jnp.ones(4, bool))))
    assert value == float(masked(scores, (labels, jnp.array([1, 1, 0, 0], bool)))) + float(
        loss.fn(scores[2:], labels[2:])
    )


def test_a_loss_record_says_what_it_is():
    kinds = {n: (loss.reduction, loss.targets) for n, loss in L.LOSSES.items()}
    assert kinds == {
        "squared_error": ("sum", "values"),
        "mean_squared_error": ("mean", "values"),
        "softmax_cross_entropy": ("mean", "probabilities"),
        "softmax_cross_entropy_with_integer_labels": ("mean", "labels"),
        "binary_cross_entropy_with_logits": ("mean", "binary"),
    }
    assert [n for n in NAMES if L.is_classification(n)] == [
        "binary_cross_entropy_with_logits",
        "softmax_cross_entropy",
        "softmax_cross_entropy_with_integer_labels",
    ]
