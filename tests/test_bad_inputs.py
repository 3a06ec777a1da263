"""Bad input, table-driven: every static mistake is an error that names what was expected and
what came; every run-time value that jit cannot inspect has one documented behaviour on both
gradient paths, and the checking mode (jaxnn.debug.checked) turns it into an error.

The command line's bad input is at the end of this module (the CLI_ROWS table).
"""

import importlib
import importlib.metadata
import io
import math
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_batchnorm
import test_checkpoint
import test_data
import test_layers
import test_mixed_precision
import test_networks
from jax.experimental import checkify
from numerics import RTOL

import jaxnn
import jaxnn_experiments
import jaxnn_experiments.cli
import jaxnn_experiments.reproduce
from jaxnn import batchnorm as bn_module
from jaxnn import cli, debug, evaluation, fitting, gradcheck, optim, train
from jaxnn import initializers as inits
from jaxnn import losses as L
from jaxnn import regularization as R
from jaxnn import run as jaxnn_run
from jaxnn.activations import get as get_activation
from jaxnn.backprop import backprop

KEY = jax.random.key(0)
X = jnp.ones((4, 3))


def _mlp():
    net = jaxnn.mlp([3], "tanh")
    params, state = net.init(KEY, (4, 3))
    return net, params, state


def _bn():
    layer = bn_module.batchnorm()
    params, state = layer.init(None, (4, 3))
    return layer, params, state


def _dense_apply(x, in_features=3):
    layer = jaxnn.dense(2)
    params, state = layer.init(KEY, (4, in_features))
    return layer.apply(params, state, x, train=False)


def _bn_apply(x, **kw):
    layer, params, state = _bn()
    return layer.apply(params, state, x, **kw)


def _vg(x, targets, loss="mean_squared_error", **kw):
    net, params, state = _mlp()
    return jaxnn.value_and_grad(net, loss, **kw)(params, state, x, targets, train=True)


def _check(f, *args, **kw):
    return jaxnn.check_gradients(f, *args, **kw)


def _sum_xy(x, y):
    return jnp.sum(x * y)


ONES2 = jnp.ones(2)

# (id, thunk, exception type, fragment of the message). The ids marked [issue] are the ones a
# user reported; the others are ours.
API_ROWS = [
    # ---------------------------------------------------------------- [issue] obscure errors
    ("mlp-int-features", lambda: jaxnn.mlp(3), TypeError, "features must be a list of layer sizes"),
    (
        "mlp-callable-activation",
        lambda: jaxnn.mlp([3], jnp.tanh),
        TypeError,
        "elementwise(name, fn, derivative)",
    ),
    (
        "init-int-shape",
        lambda: jaxnn.mlp([3]).init(KEY, 4),
        TypeError,
        "input_shape must be a tuple of ints",
    ),
    (
        "sgd-string-rate",
        lambda: optim.sgd("0.1"),
        TypeError,
        "positive number or an optax schedule",
    ),
    (
        "unknown-activation-offers-no-callable",
        lambda: get_activation("nope"),
        ValueError,
        "Known activations: elu",
    ),
    ("unknown-loss-plural", lambda: L.get("nope"), ValueError, "Known losses:"),
    (
        "check-gradients-argnums-dict",
        lambda: _check(_sum_xy, ONES2, ONES2, argnums=(0, 1), grad_fn=lambda x, y: {"x": y}),
        TypeError,
        "one gradient per differentiated argument",
    ),
    # ---------------------------------------------------------------- [issue] silent results
    (
        "batchnorm-0-row-train",
        lambda: _bn_apply(jnp.ones((0, 3)), train=True),
        ValueError,
        "more than one value per feature",
    ),
    (
        "mse-0-row",
        lambda: L.mean_squared_error(jnp.ones((0, 3)), jnp.ones((0, 3))),
        ValueError,
        "predictions is empty",
    ),
    (
        "mse-grad-0-row",
        lambda: L.mean_squared_error_grad(jnp.ones((0, 3)), jnp.ones((0, 3))),
        ValueError,
        "mean over no elements",
    ),
    (
        "value-and-grad-0-row",
        lambda: _vg(jnp.ones((0, 3)), jnp.ones((0, 3))),
        ValueError,
        "x is empty",
    ),
    (
        "int-ce-empty",
        lambda: L.softmax_cross_entropy_with_integer_labels(
            jnp.ones((0, 3)), jnp.ones((0,), jnp.int32)
        ),
        ValueError,
        "labels is empty",
    ),
    (
        "soft-ce-empty",
        lambda: L.softmax_cross_entropy(jnp.ones((0, 3)), jnp.ones((0, 3))),
        ValueError,
        "logits is empty",
    ),
    (
        "bce-empty",
        lambda: L.binary_cross_entropy_with_logits(jnp.ones((0,)), jnp.ones((0,))),
        ValueError,
        "is empty",
    ),
    (
        "bce-target-above-1",
        lambda: L.binary_cross_entropy_with_logits(jnp.zeros(3), jnp.asarray([0.0, 1.5, 1.0])),
        ValueError,
        "targets must lie in [0, 1]",
    ),
    (
        "bce-target-negative",
        lambda: L.binary_cross_entropy_with_logits(jnp.zeros(3), jnp.asarray([0.0, -1.0, 1.0])),
        ValueError,
        "-1.0 at index (1,)",
    ),
    (
        "bce-target-nan",
        lambda: L.binary_cross_entropy_with_logits_grad(jnp.zeros(2), jnp.asarray([0.0, jnp.nan])),
        ValueError,
        "targets must lie in [0, 1]",
    ),
    (
        "soft-labels-sum-half",
        lambda: L.softmax_cross_entropy(jnp.zeros((2, 2)), jnp.asarray([[0.5, 0.5], [0.25, 0.25]])),
        ValueError,
        "must sum to 1",
    ),
    (
        "soft-labels-negative",
        lambda: L.softmax_cross_entropy_grad(jnp.zeros((1, 2)), jnp.asarray([[1.5, -0.5]])),
        ValueError,
        "non-negative",
    ),
    ("sgd-nan", lambda: optim.sgd(float("nan")), ValueError, "positive finite number"),
    ("sgd-negative", lambda: optim.sgd(-0.1), ValueError, "positive finite number"),
    (
        "check-gradients-rtol-nan",
        lambda: _check(jnp.sum, ONES2, rtol=float("nan")),
        ValueError,
        "rtol must be a positive finite number",
    ),
    (
        "check-gradients-complex",
        lambda: _check(lambda z: jnp.sum(jnp.abs(z) ** 2), jnp.ones(2, jnp.complex64)),
        TypeError,
        "is complex",
    ),
    (
        "check-gradients-integer-arg",
        lambda: _check(lambda x: jnp.sum(x * 1.0), jnp.ones(2, jnp.int32)),
        TypeError,
        "floating arrays only",
    ),
    (
        "int-labels-out-of-range",
        lambda: L.softmax_cross_entropy_with_integer_labels(X, jnp.asarray([0, 1, 7, 2])),
        ValueError,
        "must lie in [0, 3)",
    ),
    (
        "int-labels-negative",
        lambda: L.softmax_cross_entropy_with_integer_labels_grad(X, jnp.asarray([0, -1, 1, 2])),
        ValueError,
        "from -1 to 2",
    ),
    # ---------------------------------------------------------------- ours: layers
    ("mlp-empty", lambda: jaxnn.mlp([]), ValueError, "at least one layer size"),
    ("mlp-negative-size", lambda: jaxnn.mlp([3, -1]), ValueError, "positive int, got -1"),
    ("mlp-dropout-1", lambda: jaxnn.mlp([3], dropout=1.0), ValueError, "probability of DROPPING"),
    (
        "mlp-compute-dtype-int",
        lambda: jaxnn.mlp([3], compute_dtype=jnp.int8),
        TypeError,
        "mlp: compute_dtype must be a floating-point dtype (jnp.bfloat16, jnp.float32 or "
        "jnp.float64) or None, got dtype int8. Use jnp.bfloat16 for mixed",
    ),
    ("init-negative-dim", lambda: jaxnn.mlp([3]).init(KEY, (4, -3)), TypeError, "got (4, -3)"),
    ("dense-negative", lambda: jaxnn.dense(-3), ValueError, "positive int"),
    ("dense-float-features", lambda: jaxnn.dense(2.5), ValueError, "positive int, got 2.5"),
    (
        "dense-wrong-features",
        lambda: _dense_apply(X, in_features=5),
        ValueError,
        "w must be [in_features=3",
    ),
    (
        "dense-integer-input",
        lambda: _dense_apply(jnp.ones((4, 3), jnp.int32)),
        TypeError,
        "floating-point array",
    ),
    ("dropout-rate-1", lambda: jaxnn.dropout(1.0), ValueError, "must lie in [0, 1)"),
    ("dropout-rate-negative", lambda: jaxnn.dropout(-0.1), ValueError, "must lie in [0, 1)"),
    ("dropout-rate-string", lambda: jaxnn.dropout("0.5"), TypeError, "rate must be a number"),
    (
        "dropout-train-without-key",
        lambda: jaxnn.dropout(0.5).apply({}, {}, X, train=True),
        ValueError,
        "needs a PRNG key",
    ),
    ("serial-empty", lambda: jaxnn.serial(), ValueError, "at least one layer"),
    ("serial-not-a-layer", lambda: jaxnn.serial(3), TypeError, "must be a Layer"),
    (
        "keyword-no-layer-takes",
        lambda: _mlp()[0].apply(*_mlp()[1:], X, train=True, mask=jnp.ones(4, bool)),
        TypeError,
        "no layer of this network takes",
    ),
    (
        "unknown-activation-layer",
        lambda: jaxnn.activation("nope"),
        ValueError,
        "unknown activation 'nope'",
    ),
    # ---------------------------------------------------------------- ours: BatchNorm
    (
        "batchnorm-unknown-convention",
        lambda: bn_module.batchnorm(convention="keras"),
        ValueError,
        "convention must be one of",
    ),
    (
        "batchnorm-pytorch-momentum",
        lambda: bn_module.batchnorm(momentum=1.5),
        ValueError,
        "weight of the NEW batch",
    ),
    (
        "batchnorm-flax-momentum",
        lambda: bn_module.batchnorm(convention="flax", momentum=1.0),
        ValueError,
        "weight of the OLD value",
    ),
    (
        "batchnorm-cumulative-momentum",
        lambda: bn_module.batchnorm(convention="cumulative", momentum=0.1),
        ValueError,
        "takes no momentum",
    ),
    (
        "batchnorm-eps-0",
        lambda: bn_module.batchnorm(eps=0),
        ValueError,
        "batchnorm: eps must be a positive finite",
    ),
    ("batchnorm-eps-nan", lambda: bn_module.batchnorm(eps=math.nan), ValueError, "positive finite"),
    (
        "batchnorm-no-axis",
        lambda: bn_module.batchnorm(axis=()),
        ValueError,
        "at least one feature axis",
    ),
    (
        "batchnorm-rank-1",
        lambda: _bn_apply(jnp.ones(3), train=True),
        ValueError,
        "no axis to normalise over",
    ),
    (
        "batchnorm-1-row-train",
        lambda: _bn_apply(jnp.ones((1, 3)), train=True),
        ValueError,
        "at least 2",
    ),
    (
        "batchnorm-float-mask",
        lambda: _bn_apply(X, train=True, mask=jnp.ones(4)),
        ValueError,
        "mask must be a boolean array",
    ),
    (
        "batchnorm-mask-shape",
        lambda: _bn_apply(X, train=True, mask=jnp.ones(3, bool)),
        ValueError,
        "reduced axes' shape (4,)",
    ),
    (
        "batchnorm-wrong-params",
        lambda: _bn()[0].apply({"g": 1}, _bn()[2], X, train=True),
        ValueError,
        "keys ['beta', 'gamma']",
    ),
    (
        "batchnorm-wrong-state",
        lambda: _bn()[0].apply(_bn()[1], {}, X, train=True),
        ValueError,
        "must be the BatchNormState",
    ),
    (
        "batchnorm-feature-size",
        lambda: _bn_apply(jnp.ones((4, 5)), train=True),
        ValueError,
        "initialised for another feature size",
    ),
    # ---------------------------------------------------------------- ours: losses
    (
        "loss-broadcast",
        lambda: L.squared_error(jnp.ones((4, 1)), jnp.ones(4)),
        ValueError,
        "does not broadcast silently",
    ),
    (
        "loss-integer-predictions",
        lambda: L.squared_error(jnp.ones(4, jnp.int32), jnp.ones(4)),
        TypeError,
        "floating-point array",
    ),
    (
        "int-ce-float-labels",
        lambda: L.softmax_cross_entropy_with_integer_labels(X, jnp.ones(4)),
        TypeError,
        "integer class indices",
    ),
    (
        "int-ce-label-shape",
        lambda: L.softmax_cross_entropy_with_integer_labels(X, jnp.ones(3, jnp.int32)),
        ValueError,
        "needs labels.shape=(4,)",
    ),
    (
        "soft-ce-0-classes",
        lambda: L.softmax_cross_entropy(jnp.ones((4, 0)), jnp.ones((4, 0))),
        ValueError,
        "0 classes",
    ),
    ("loss-not-a-name", lambda: L.get(3), TypeError, "or a Loss, got int"),
    # ---------------------------------------------------------------- ours: gradients, training
    (
        "value-and-grad-mode",
        lambda: jaxnn.value_and_grad(_mlp()[0], "squared_error", grad="bogus"),
        ValueError,
        "grad must be one of",
    ),
    (
        "value-and-grad-penalty-float",
        lambda: jaxnn.value_and_grad(_mlp()[0], "squared_error", penalty=0.1),
        TypeError,
        "must be a jaxnn Penalty",
    ),
    (
        "backprop-0-row",
        lambda: backprop(
            _mlp()[0], "squared_error", *_mlp()[1:], jnp.ones((0, 3)), jnp.ones((0, 3)), train=True
        ),
        ValueError,
        "backprop: x is empty",
    ),
    (
        "train-step-mode",
        lambda: train.make_train_step(_mlp()[0], "squared_error", optax.sgd(0.1), grad="x"),
        ValueError,
        "grad must be one of",
    ),
    ("sgd-zero", lambda: optim.sgd(0), ValueError, "positive finite number, got 0"),
    (
        "fit-zero-steps",
        lambda: train.fit_full_batch(None, None, X, X, 0),
        ValueError,
        "num_steps must be a positive int",
    ),
    (
        "fit-bool-steps",
        lambda: train.fit_full_batch(None, None, X, X, True),
        ValueError,
        "num_steps must be a positive int",
    ),
    ("l2-negative", lambda: R.l2(-1.0), ValueError, "scale must be a finite number >= 0"),
    ("l2-nan", lambda: R.l2(math.nan), ValueError, "got nan"),
    ("l1-string", lambda: R.l1("0.1"), TypeError, "must be a number >= 0"),
    (
        "l2-selects-nothing",
        lambda: R.l2(0.1, where=lambda path, leaf: False).fn(_mlp()[1]),
        ValueError,
        "selector picks no parameter",
    ),
    ("combine-nothing", lambda: R.combine(), TypeError, "one or more Penalty"),
    ("unknown-initializer", lambda: inits.get("nope"), ValueError, "Known initialisers"),
    (
        "given-wrong-shape",
        lambda: inits.given(jnp.ones((2, 2)))(None, (3, 3)),
        ValueError,
        "needs a parameter of shape (3, 3)",
    ),
    ("checked-not-a-function", lambda: debug.checked(3), TypeError, "needs a function"),
    ("check-gradients-not-a-function", lambda: _check(3, ONES2), TypeError, "needs a function f"),
    (
        "check-gradients-vector-output",
        lambda: _check(lambda x: x * 2, ONES2),
        ValueError,
        "real scalar",
    ),
    (
        "check-gradients-argnums-out-of-range",
        lambda: _check(jnp.sum, ONES2, argnums=3),
        ValueError,
        "was given 1 argument",
    ),
    (
        "check-gradients-argnums-repeated",
        lambda: _check(_sum_xy, ONES2, ONES2, argnums=(0, 0)),
        TypeError,
        "distinct ints",
    ),
    (
        "check-gradients-argnums-string",
        lambda: _check(jnp.sum, ONES2, argnums="0"),
        TypeError,
        "argnums must be an int",
    ),
    (
        "check-gradients-rtol-inf",
        lambda: _check(jnp.sum, ONES2, rtol=math.inf),
        ValueError,
        "positive finite",
    ),
    (
        "check-gradients-rtol-string",
        lambda: _check(jnp.sum, ONES2, rtol="1e-8"),
        TypeError,
        "rtol must be a number",
    ),
    (
        "check-gradients-fd-samples-0",
        lambda: _check(jnp.sum, ONES2, fd_samples=0),
        ValueError,
        "fd_samples must be an int >= 1",
    ),
]


@pytest.mark.parametrize(
    ("thunk", "exc", "fragment"), [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS]
)
def test_bad_api_input_is_a_clear_error(thunk, exc, fragment):
    with pytest.raises(exc) as info:
        thunk()
    assert fragment in str(info.value), str(info.value)


def test_the_api_table_is_the_size_the_issue_asks_for():
    # The reported cases plus at least 40 of our own (the command line's are in CLI_ROWS).
    assert len(API_ROWS) >= 26 + 40
    assert len({r[0] for r in API_ROWS}) == len(API_ROWS)


# ----------------------------------------------------------------------------- run-time values
#
# Under jit the values are abstract: nothing can raise by default. Each row: what a loss gets,
# then (a) both gradient paths give the same result, (b) the documented result, (c) the checking
# mode raises with the fragment.


def _labels(values):
    return lambda: jnp.asarray(values, jnp.int32)


JIT_ROWS = [
    # id, loss, x, targets, documented result ("non-finite" or "finite"), fragment of the checked error
    (
        "int-label-minus-1",
        "softmax_cross_entropy_with_integer_labels",
        X,
        _labels([0, -1, 1, 2]),
        "non-finite",
        "labels must lie in [0, 3)",
    ),
    (
        "int-label-7-of-3",
        "softmax_cross_entropy_with_integer_labels",
        X,
        _labels([0, 7, 1, 2]),
        "non-finite",
        "got values from 0 to 7",
    ),
    (
        "nan-input",
        "mean_squared_error",
        X.at[1, 2].set(jnp.nan),
        lambda: jnp.zeros((4, 3)),
        "non-finite",
        "inputs x contain NaN",
    ),
    (
        "inf-target",
        "mean_squared_error",
        X,
        lambda: jnp.zeros((4, 3)).at[0, 0].set(jnp.inf),
        "non-finite",
        "targets contain NaN or inf",
    ),
    (
        "bce-target-1.5",
        "binary_cross_entropy_with_logits",
        X,
        lambda: jnp.full((4, 3), 1.5),
        "finite",
        "targets must lie in [0, 1]",
    ),
    (
        "soft-labels-sum-2",
        "softmax_cross_entropy",
        X,
        lambda: jnp.full((4, 3), 2 / 3),
        "finite",
        "must sum to 1",
    ),
    (
        "soft-labels-negative",
        "softmax_cross_entropy",
        X,
        lambda: jnp.tile(jnp.asarray([1.5, -0.5, 0.0]), (4, 1)),
        "finite",
        "non-negative",
    ),
]


@pytest.mark.parametrize(
    ("loss", "x", "make_targets", "documented", "fragment"),
    [r[1:] for r in JIT_ROWS],
    ids=[r[0] for r in JIT_ROWS],
)
def test_run_time_values_have_one_behaviour_and_the_checking_mode_raises(
    loss, x, make_targets, documented, fragment
):
    net, params, state = _mlp()
    targets = make_targets()
    results = []
    for grad in ("autodiff", "manual"):
        vg = jax.jit(jaxnn.value_and_grad(net, loss, grad=grad), static_argnames="train")
        (value, _), grads = vg(params, state, x, targets, train=True)
        results.append((np.asarray(value), [np.asarray(g) for g in jax.tree.leaves(grads)]))
    (v_auto, g_auto), (v_hand, g_hand) = results
    # (a) the same numbers on both paths: the same NaN and inf in the same places, equal
    # elsewhere (the usual hand-vs-autodiff tolerance).
    np.testing.assert_array_equal(v_auto[~np.isfinite(v_auto)], v_hand[~np.isfinite(v_hand)])
    finite = [g[np.isfinite(g)] for g in g_auto]
    scale = max(max(float(np.max(np.abs(g), initial=0)) for g in finite), 1e-300)
    for a, h in zip(g_auto, g_hand, strict=True):
        ok = np.isfinite(a)
        np.testing.assert_array_equal(ok, np.isfinite(h))
        np.testing.assert_array_equal(a[~ok], h[~ok])  # NaN matches NaN, inf its sign
        assert np.max(np.abs(a[ok] - h[ok]), initial=0) <= RTOL * scale
    # (b) what the docs say happens.
    if documented == "non-finite":
        assert not np.isfinite(v_auto) and all(not np.isfinite(g).all() for g in g_auto)
    else:
        assert np.isfinite(v_auto) and all(np.isfinite(g).all() for g in g_auto)
    # (c) the checking mode turns it into an error, on either path.
    for grad in ("autodiff", "manual"):
        fn = debug.checked(jaxnn.value_and_grad(net, loss, grad=grad))
        with pytest.raises(checkify.JaxRuntimeError, match=re.escape(fragment)):
            fn(params, state, x, targets, train=True)


def test_out_of_range_labels_poison_only_their_own_rows():
    # The documented NaN is the example's, not the batch's: the other rows' gradients are the
    # exact (softmax - onehot) / B.
    z = jnp.asarray([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]])
    labels = jnp.asarray([2, 5])
    g_hand = jax.jit(L.softmax_cross_entropy_with_integer_labels_grad)(z, labels)
    g_auto = jax.jit(jax.grad(L.softmax_cross_entropy_with_integer_labels))(z, labels)
    p = np.exp(np.asarray(z[0])) / np.exp(np.asarray(z[0])).sum()
    expected_row0 = (p - np.eye(3)[2]) / 2
    for g in (g_hand, g_auto):
        assert np.isnan(np.asarray(g[1])).all()
        np.testing.assert_allclose(
            np.asarray(g[0]), expected_row0, rtol=0, atol=8 * np.finfo(np.float64).eps
        )


def test_checking_mode_passes_valid_values_through_unchanged():
    net, params, state = _mlp()
    labels = jnp.asarray([0, 1, 2, 1])
    vg = jaxnn.value_and_grad(net, "softmax_cross_entropy_with_integer_labels")
    (v1, _), g1 = debug.checked(vg)(params, state, X, labels, train=True)
    (v2, _), g2 = jax.jit(vg, static_argnames="train")(params, state, X, labels, train=True)
    assert float(v1) == float(v2)
    jax.tree.map(np.testing.assert_array_equal, g1, g2)


# ----------------------------------------------------------------------------- learning rates


def _train_setup(optimizer):
    net, params, state = _mlp()
    step = train.make_train_step(net, "mean_squared_error", optimizer, donate=False)
    return step, train.TrainState.create(
        net, optimizer, jax.random.key(0), params=params, state=state
    )


def test_nan_optax_rate_makes_nan_parameters_and_the_checking_mode_says_why():
    step, ts = _train_setup(optax.sgd(float("nan")))
    new_ts, _ = step(ts, X, jnp.zeros((4, 3)))
    assert all(
        np.isnan(np.asarray(w)).all() for w in jax.tree.leaves(new_ts.params)
    )  # as documented
    with pytest.raises(checkify.JaxRuntimeError, match="update made a parameter NaN or inf"):
        debug.checked(step)(ts, X, jnp.zeros((4, 3)))


@pytest.mark.parametrize("rate", [float("nan"), -0.1, 0.0], ids=["nan", "negative", "zero"])
def test_a_traced_sgd_rate_is_checked_in_the_checking_mode(rate):
    net, params, state = _mlp()

    def run(lr, params, state):
        opt = optim.sgd(lr)  # lr is a tracer here: it cannot be refused eagerly
        step = train.make_train_step(net, "mean_squared_error", opt)
        ts, loss = step(
            train.TrainState.create(net, opt, jax.random.key(0), params=params, state=state),
            X,
            jnp.zeros((4, 3)),
        )
        return ts.params, loss

    new_params, _ = jax.jit(run)(rate, params, state)  # applied as given
    w0, w1 = (np.asarray(p["dense_0"]["w"]) for p in (params, new_params))
    if math.isnan(rate):
        assert np.isnan(w1).all()
    elif rate == 0:
        np.testing.assert_array_equal(w0, w1)
    with pytest.raises(checkify.JaxRuntimeError, match="must be a positive finite number"):
        debug.checked(run)(jnp.asarray(rate), params, state)


def test_a_schedule_that_turns_negative_is_caught_at_its_step():
    schedule = optax.linear_schedule(0.1, -0.1, transition_steps=10)  # 0 at step 5
    step, ts = _train_setup(optim.sgd(schedule))
    checked_step = debug.checked(step)
    for _ in range(5):
        ts, _ = checked_step(ts, X, jnp.zeros((4, 3)))
    with pytest.raises(checkify.JaxRuntimeError, match="at step 5"):
        checked_step(ts, X, jnp.zeros((4, 3)))


def test_batchnorm_mask_of_one_example_is_finite_and_the_checking_mode_raises():
    layer, params, state = _bn()
    x = jnp.arange(12.0).reshape(4, 3)
    mask = jnp.asarray([False, True, False, False])
    apply = jax.jit(layer.apply, static_argnames="train")
    y, new_state = apply(params, state, x, train=True, mask=mask)
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(new_state.var)).all()
    with pytest.raises(checkify.JaxRuntimeError, match=r"mask selects 1\.0 example"):
        debug.checked(layer.apply)(params, state, x, train=True, mask=mask)


# ============================================================================= trust at the edges
# Issue 17: what reaches the training engine, run, the checkpoints and the data files from
# outside: every concrete input is checked where it is concrete, and a message names the
# argument or field. Each row is (id, thunk(tmp_path), exception type, fragment); the ids of
# the cases the issue reported start with "17-", the others are ours.

CE = "softmax_cross_entropy_with_integer_labels"


def _two_class():
    """A 2-class network, its state, and 8 examples with valid labels."""
    net = jaxnn.mlp([4, 2], "relu")
    ts = train.TrainState.create(net, optax.sgd(0.1), KEY, (8, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)))
    return net, ts, x, jnp.asarray([0, 1] * 4)


def _fit(tmp_path=None, **kw):
    net, ts, x, y = _two_class()
    args = {"train": (x, y), "epochs": 1, "batch_size": 4, **kw}
    return fitting.fit(kw.pop("net", net), CE, optax.sgd(0.1), kw.pop("ts", ts), **{
        k: v for k, v in args.items() if k not in ("net", "ts")})  # fmt: skip


def _labels(*values):
    return jnp.asarray(values * 4)[:8]


def _evaluate(**kw):
    """``evaluate`` of the 2-class network's state; ``state_of`` builds the state of another."""
    net, ts, x, y = _two_class()
    if "state_of" in kw:
        ts = train.TrainState.create(kw.pop("state_of"), optax.sgd(0.1), KEY, (8, 3))
    kw = {"x": x, "targets": y, **kw}
    return evaluation.evaluate(kw.pop("net", net), kw.pop("loss", CE), ts.params, ts.state, **kw)


def _config(**kw):
    from jaxnn.run import RunConfig

    return RunConfig(**kw)


def _train_run(tmp_path, **kw):
    from jaxnn.run import RunConfig, run

    return run(RunConfig(hidden=(4,), epochs=1), **kw)


def _saved_run(tmp_path):
    from jaxnn import checkpoint

    checkpoint.save(tmp_path / "ck", {"a": jnp.ones(2)}, step=1)
    return tmp_path / "ck"


def _user_folder(tmp_path):
    (tmp_path / "proj" / "7").mkdir(parents=True)
    (tmp_path / "proj" / "7" / "notes.txt").write_text("mine")
    return tmp_path / "proj"


def _file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    return tmp_path / "f.txt"


def _loss(**kw):
    return L.get(
        L.Loss(**{"name": "mine", "fn": L.squared_error, "grad": L.squared_error_grad, **kw})
    )


EDGE_ROWS = [
    # ---------------------------------------------------------------- [17] reported
    ("17-fit-label-too-large", lambda p: _fit(train=(_two_class()[2], _labels(0, 5))), ValueError, "fit: train: labels must lie in [0, 2) for the network's 2 outputs, got 5"),
    ("17-fit-label-negative", lambda p: _fit(train=(_two_class()[2], _labels(-1, 0))), ValueError, "labels must lie in [0, 2)"),
    ("17-fit-validation-label", lambda p: _fit(validation=(_two_class()[2], _labels(0, 5))), ValueError, "fit: validation: labels must lie in [0, 2)"),
    ("17-evaluate-label", lambda p: _evaluate(targets=_labels(0, 2)), ValueError, "evaluate: labels must lie in [0, 2)"),
    ("17-fit-state-of-another-network", lambda p: _fit(net=jaxnn.mlp([8, 2], "relu")), ValueError, "params/dense_0/w: shape (3, 4), expected (3, 8)"),
    ("17-run-epochs-0", lambda p: _config(epochs=0), ValueError, "RunConfig.epochs must be a whole number >= 1, got int 0"),
    ("17-run-epochs-negative", lambda p: _config(epochs=-5), ValueError, "RunConfig.epochs must be a whole number >= 1"),
    ("17-run-l2-negative", lambda p: _config(l2=-1), ValueError, "RunConfig.l2 must be a number >= 0"),
    ("17-run-batchnorm-no", lambda p: _config(batchnorm="no"), TypeError, "RunConfig.batchnorm must be True or False, got str 'no'"),
    ("17-run-hidden-string", lambda p: _config(hidden="8,4"), TypeError, "RunConfig.hidden must be a sequence of layer sizes"),
    ("17-run-lr-string", lambda p: _config(lr="0.1"), TypeError, "RunConfig.lr must be a positive number, got str '0.1'"),
    ("17-run-batch-size-float", lambda p: _config(batch_size=2.0), TypeError, "RunConfig.batch_size must be a whole number"),
    ("17-history-epoch-7", lambda p: _fit(history=[{"epoch": 7}]), ValueError, "history[0] must be the record of epoch 1"),
    ("17-history-without-monitor", lambda p: _fit(history=[{"epoch": 1, "loss": 0.5}], validation=_two_class()[2:]), ValueError, "has no number for the monitor 'val_loss'"),
    ("17-fit-validation-triple", lambda p: _fit(validation=(*_two_class()[2:], _two_class()[3])), TypeError, "fit: validation must be a pair (x, targets)"),
    ("17-fit-train-single", lambda p: _fit(train=(_two_class()[2],)), TypeError, "fit: train must be a pair (x, targets) of arrays with one example per row, got a tuple of 1 item(s)"),
    ("17-history-dict", lambda p: _fit(history={"epoch": 1}), TypeError, "history must be a list of the earlier epochs' records"),
    ("17-callback-not-callable", lambda p: _fit(callback="save"), TypeError, "callback must be a function callback(epoch, ts, record)"),
    ("17-callback-arity", lambda p: _fit(callback=lambda epoch: None), TypeError, "callback must take three arguments"),
    ("17-run-seed-2-63", lambda p: _config(seed=2**63), ValueError, "RunConfig.seed must be a whole number >= 0 and < 4294967296"),
    ("17-checkpoint-is-a-file", lambda p: _train_run(p, checkpoint_dir=_file(p)), NotADirectoryError, "f.txt"),
    ("17-checkpoint-user-folder", lambda p: _train_run(p, checkpoint_dir=_user_folder(p)), ValueError, "7/"),
    ("17-checkpoint-of-another-run", lambda p: _train_run(p, checkpoint_dir=_saved_run(p)), ValueError, "holds the checkpoints of a run (epochs [1])"),
    ("17-float16-params-create", lambda p: train.TrainState.create(jaxnn.mlp([2]), optax.adam(1e-3), KEY, params={"dense_0": {"w": jnp.ones((3, 2), jnp.float16), "b": jnp.zeros(2, jnp.float16)}}, state={}), TypeError, "TrainState.create: params['dense_0']['b'] is float16, which jaxnn refuses"),
    ("17-float16-params-fit", lambda p: _fit(ts=_two_class()[1]._replace(params=jax.tree.map(lambda a: a.astype(jnp.float16), _two_class()[1].params))), TypeError, "fit: ts: params['dense_0']['b'] is float16"),
    # ---------------------------------------------------------------- ours: fit, evaluate, predict, make_epoch
    ("fit-ts-not-a-train-state", lambda p: _fit(ts=(1, 2)), TypeError, "fit: ts must be a TrainState"),
    ("fit-on-nonfinite-unknown", lambda p: _fit(on_nonfinite="ignore"), ValueError, "on_nonfinite must be one of ('stop', 'continue')"),
    ("fit-history-monitor-string", lambda p: _fit(history=[{"epoch": 1, "loss": "0.5"}]), ValueError, "has no number for the monitor 'loss'"),
    ("fit-history-not-records", lambda p: _fit(history=[1, 2]), TypeError, "history[0] must be a dict"),
    ("fit-history-string", lambda p: _fit(history="epoch 1"), TypeError, "got a str"),
    ("fit-history-epoch-bool", lambda p: _fit(history=[{"epoch": True, "loss": 1.0}]), ValueError, "got epoch True"),
    ("fit-float-labels", lambda p: _fit(train=(_two_class()[2], jnp.zeros(8))), TypeError, "takes integer class labels, got targets of dtype float"),
    ("fit-labels-2d", lambda p: _fit(train=(_two_class()[2], jnp.zeros((8, 1), jnp.int32))), ValueError, "needs labels of shape (8,) (one per example), got (8, 1)"),
    ("fit-train-lengths", lambda p: _fit(train=(_two_class()[2], jnp.zeros(7, jnp.int32))), ValueError, "same number of examples"),
    ("fit-callback-keyword-only", lambda p: _fit(callback=lambda *, epoch, ts, record: None), TypeError, "callback must take three arguments"),
    ("evaluate-state-of-another-network", lambda p: _evaluate(net=jaxnn.mlp([4, 3], "relu")), ValueError, "params/dense_2/w: shape (4, 2), expected (4, 3)"),
    ("evaluate-probabilities-not-rows", lambda p: _evaluate(loss="softmax_cross_entropy", targets=jnp.ones((8, 2))), ValueError, "each row of labels must sum to 1"),
    ("evaluate-bce-targets", lambda p: _evaluate(net=jaxnn.mlp([4, 1], "relu"), state_of=jaxnn.mlp([4, 1], "relu"), loss="binary_cross_entropy_with_logits", targets=jnp.full((8, 1), 2.0)), ValueError, "targets must lie in [0, 1]"),
    ("evaluate-mse-shape", lambda p: _evaluate(loss="mean_squared_error", targets=jnp.ones(8)), ValueError, "needs targets of that shape, got (8,)"),
    ("evaluate-batch-size-0", lambda p: _evaluate(batch_size=0), ValueError, "evaluate: batch_size must be a positive int"),
    ("predict-state-of-another-network", lambda p: evaluation.predict(jaxnn.mlp([5, 2]), *_two_class()[1][:2], _two_class()[2]), ValueError, "predict: the params and state do not belong to the network"),
    ("predict-state-of-another-input", lambda p: evaluation.predict(_two_class()[0], *_two_class()[1][:2], jnp.ones((8, 4))), ValueError, "for inputs of shape (8, 4)"),
    ("epoch-label-out-of-range", lambda p: train.make_epoch(_two_class()[0], CE, optax.sgd(0.1), batch_size=4)(_two_class()[1], _two_class()[2], _labels(0, 9)), ValueError, "epoch: labels must lie in [0, 2)"),
    ("epoch-state-of-another-network", lambda p: train.make_epoch(jaxnn.mlp([6, 2]), CE, optax.sgd(0.1), batch_size=4)(*_two_class()[1:]), ValueError, "epoch: the params and state do not belong"),
    ("epoch-remainder", lambda p: train.make_epoch(_two_class()[0], CE, optax.sgd(0.1), batch_size=4, remainder="keep"), ValueError, "remainder must be one of ('drop', 'pad')"),
    # ---------------------------------------------------------------- ours: a loss says what it is
    ("loss-reduction-unknown", lambda p: _loss(reduction="avg"), ValueError, "reduction must be one of ('mean', 'sum')"),
    ("loss-targets-unknown", lambda p: _loss(targets="classes"), ValueError, "targets must be one of ('values', 'labels', 'probabilities', 'binary')"),
    ("loss-fn-not-callable", lambda p: _loss(fn=None), TypeError, "fn must be a function (predictions, targets)"),
    ("loss-predict-not-callable", lambda p: _loss(predict=3), TypeError, "predict must be a function outputs -> class labels"),
    ("metrics-of-a-regression-loss", lambda p: jaxnn.metrics.accuracy(jnp.ones((2, 2)), jnp.ones((2, 2)), _loss()), ValueError, "'mine' is a regression loss (targets='values')"),
    ("fit-val-accuracy-regression", lambda p: fitting.fit(jaxnn.mlp([2]), _loss(), optax.sgd(0.1), train.TrainState.create(jaxnn.mlp([2]), optax.sgd(0.1), KEY, (8, 3)), (jnp.ones((8, 3)), jnp.ones((8, 2))), epochs=1, batch_size=4, validation=(jnp.ones((8, 3)), jnp.ones((8, 2))), monitor="val_accuracy"), ValueError, "needs a classification loss (targets 'labels', 'probabilities' or 'binary'), got mine"),
    # ---------------------------------------------------------------- ours: run and RunConfig
    ("run-data-unknown", lambda p: _config(data="cifar"), ValueError, "RunConfig.data must be one of"),
    ("run-activation-unknown", lambda p: _config(activation="swishy"), ValueError, "RunConfig.activation must be one of"),
    ("run-optimizer-unknown", lambda p: _config(optimizer="lion"), ValueError, "RunConfig.optimizer must be one of adam, adamw, momentum, sgd"),
    ("run-dropout-1", lambda p: _config(dropout=1.0), ValueError, "RunConfig.dropout must be a number in [0, 1)"),
    ("run-dropout-nan", lambda p: _config(dropout=math.nan), ValueError, "RunConfig.dropout must be a number in [0, 1)"),
    ("run-lr-inf", lambda p: _config(lr=math.inf), ValueError, "RunConfig.lr must be a positive number"),
    ("run-lr-bool", lambda p: _config(lr=True), TypeError, "RunConfig.lr must be a positive number, got bool True"),
    ("run-grad-unknown", lambda p: _config(grad="numeric"), ValueError, "RunConfig.grad must be one of autodiff, manual"),
    ("run-compute-dtype-float16", lambda p: _config(compute_dtype="float16"), ValueError, "RunConfig.compute_dtype must be one of bfloat16, float32"),
    ("run-devices-0", lambda p: _config(devices=0), ValueError, "RunConfig.devices must be a whole number >= 1"),
    ("run-hidden-0", lambda p: _config(hidden=(8, 0)), ValueError, "RunConfig.hidden[1] must be a whole number >= 1"),
    ("run-hidden-bool", lambda p: _config(hidden=(8, True)), TypeError, "RunConfig.hidden[1] must be a whole number"),
    ("run-data-dir-int", lambda p: _config(data_dir=3), TypeError, "RunConfig.data_dir must be a folder's path or None"),
    ("run-seed-negative", lambda p: _config(seed=-1), ValueError, "RunConfig.seed must be a whole number >= 0"),
    ("run-seed-2-32", lambda p: _config(seed=2**32), ValueError, "< 4294967296"),
    ("run-not-a-config", lambda p: jaxnn_run.run({"epochs": 1}), TypeError, "config must be a RunConfig"),
    ("run-fallback-without-resume", lambda p: _train_run(p, fallback=True), ValueError, "fallback applies to resuming"),
    ("run-resume-without-checkpoint", lambda p: _train_run(p, resume=True), ValueError, "resume needs a checkpoint folder"),
    ("run-out-is-a-file", lambda p: _train_run(p, out=_file(p)), NotADirectoryError, "which is a file"),
]  # fmt: skip


# The rows that need their module's fixtures (IDX writers, saved checkpoints, BatchNorm
# batches) are listed beside them, in that module's test file, and run here, in one table.
EDGE_TABLE = [
    *EDGE_ROWS,
    *((f"checkpoint-{r[0]}", *r[1:]) for r in test_checkpoint.BAD_CHECKPOINT_ROWS),
    *((f"data-{r[0]}", *r[1:]) for r in test_data.BAD_EDGE_ROWS),
    *((f"batchnorm-{r[0]}", *r[1:]) for r in test_batchnorm.BAD_EDGE_ROWS),
    *((f"precision-{r[0]}", *r[1:]) for r in test_mixed_precision.BAD_EDGE_ROWS),
    *((f"layers-{r[0]}", *r[1:]) for r in test_layers.BAD_EDGE_ROWS),
    *((f"networks-{r[0]}", *r[1:]) for r in test_networks.BAD_EDGE_ROWS),
]


@pytest.mark.parametrize(
    ("row", "thunk", "exc", "fragment"), EDGE_TABLE, ids=[r[0] for r in EDGE_TABLE]
)
def test_bad_input_at_the_edges_is_a_clear_error(tmp_path, row, thunk, exc, fragment):
    with pytest.raises(exc) as info:
        thunk(tmp_path)
    assert type(info.value) is exc  # e.g. a checkpoint mismatch is no CheckpointDamaged
    assert fragment in str(info.value), str(info.value)
    if row.startswith("data-"):
        assert "\n" not in str(info.value)  # a data file's fault: one line on the command line


def test_the_edge_table_holds_every_reported_case_and_30_of_ours():
    ids = [r[0] for r in EDGE_TABLE]
    assert len(set(ids)) == len(ids)
    ours = [i for i in ids if not i.startswith("17-")]
    assert len(ours) >= 30


# ============================================================================= the command line
# The ``jaxnn`` command as a Unix tool: exit codes, messages, progress on stderr only.
#
# Each row of :data:`CLI_ROWS` runs the console script's ``main(argv)`` (jaxnn_experiments.cli:
# jaxnn.cli's commands and ``reproduce``) in-process, in a scratch folder that
# holds user modules to ``--import``, with four user cases registered (honest, wrong, raising
# while checked, raising while built) and the experiment list replaced by two fakes (one runs,
# one raises), so that no real experiment runs here.

REPO = Path(__file__).resolve().parent.parent
PKG = jaxnn_experiments.__name__
BAR = "%|"  # in every tqdm bar, in no report

USER_MODULES = {
    "raises_on_import": 'raise RuntimeError("no accelerator found")\n',
    "bad_syntax": "def f(:\n    pass\n",
    "needs_a_dependency": "import nosuchdependency_for_jaxnn_tests\n",
    "good_rules": textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from jaxnn import gradcheck

        def case(key):
            x = jax.random.normal(key, (3,), jnp.float64)
            return gradcheck.GradCase(lambda x: jnp.sum(jnp.sin(x)), (x,), jnp.cos)

        gradcheck.register("user.imported", case)
        """
    ),
}


def _exp_case(grad_fn):
    def make(key):
        x = jax.random.normal(key, (4,), jnp.float64)
        return gradcheck.GradCase(lambda x: jnp.sum(jnp.exp(x)), (x,), grad_fn, 0, "x(4,)")

    return make


def _raising_grad(x):
    raise ValueError("hand rule not written yet")


def _unbuildable(key):
    raise KeyError("missing_shape")


USER_CASES = {
    "user.honest": _exp_case(jnp.exp),
    "user.wrong": _exp_case(lambda x: 2 * jnp.exp(x)),
    "user.raises": _exp_case(_raising_grad),
    "user.unbuildable": _unbuildable,
}


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal: tqdm shows its bars on it."""

    def isatty(self):
        return True


def _fake_experiment(name, calls, fail=False):
    module = types.ModuleType(f"{PKG}.{name}")

    def main(out_dir, *, quick=False):
        common = importlib.import_module(f"{PKG}.common")
        for step in common.progress(range(3), f"{name} inner", unit="step"):
            calls.append((name, str(out_dir), step))
        calls.append((name, "quick", quick))
        if fail:
            raise RuntimeError(f"{name} diverged")
        print(f"{name} report")
        return {"claims": [common.claim(f"{name} claim", "1 == 1", True, "1 = 1", f"{name}.png")]}

    module.main = main
    return module


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A scratch working folder, user modules and cases, fake experiments; undone after."""
    monkeypatch.chdir(tmp_path)
    for name, text in USER_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "taken.txt").write_text("not a folder")
    # The working folder on the path only through the CLI (as for the console script).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(gradcheck, "_REGISTRY", dict(USER_CASES))
    calls = []
    for name, fail in (("fake_ok", False), ("fake_fails", True)):
        monkeypatch.setitem(sys.modules, f"{PKG}.{name}", _fake_experiment(name, calls, fail))
    monkeypatch.setattr(jaxnn_experiments, "EXPERIMENTS", ("fake_ok", "fake_fails"))
    yield types.SimpleNamespace(path=tmp_path, calls=calls)
    for name in USER_MODULES:
        sys.modules.pop(name, None)


def _run(argv, capsys, monkeypatch, tty=False):
    """``main(argv)``: (exit status, stdout, stderr), stderr a terminal when ``tty``."""
    terminal = _Terminal()
    if tty:
        monkeypatch.setattr(sys, "stderr", terminal)
    try:
        code = jaxnn_experiments.cli.main(argv)
    except SystemExit as e:  # argparse: usage errors, --version
        code = e.code
    out, err = capsys.readouterr()
    return code, out, terminal.getvalue() if tty else err


RELU = ["gradcheck", "--only", "activations.relu", "--seeds", "1"]
REPRODUCE = ["reproduce", "--out", "results"]

# (argv, stderr a terminal, exit status, where to look, fragment); where is "out" or "err"
# (the fragment is there) or "no-err" (it is not).
CLI_ROWS = [
    # usage errors: argparse's exit 2
    pytest.param([], False, 2, "err", "arguments are required", id="no-subcommand"),
    pytest.param(["fly"], False, 2, "err", "invalid choice: 'fly'", id="unknown-subcommand"),
    pytest.param(["gradcheck", "--colour"], False, 2, "err", "unrecognized arguments", id="unknown-option"),
    pytest.param(["gradcheck", "--seeds", "abc"], False, 2, "err", "got 'abc'", id="seeds-abc"),
    pytest.param(["gradcheck", "--seeds", "0"], False, 2, "err", "expected a whole number >= 1", id="seeds-0"),
    pytest.param(["gradcheck", "--seeds", "-2"], False, 2, "err", "got '-2'", id="seeds-negative"),
    pytest.param(["gradcheck", "--only", "nothing."], False, 2, "err", "no registered case starts with 'nothing.'", id="only-nothing"),
    # --import: one line naming the module, the error and the fix; no traceback
    pytest.param(["gradcheck", "--import", "nosuchmodule"], False, 2, "err", "no module named 'nosuchmodule' on the path", id="import-missing"),
    pytest.param(["gradcheck", "--import", "raises_on_import"], False, 2, "err", "raised RuntimeError at", id="import-raises"),
    pytest.param(["gradcheck", "--import", "bad_syntax"], False, 2, "err", "raised SyntaxError at", id="import-syntax-error"),
    pytest.param(["gradcheck", "--import", "needs_a_dependency"], False, 2, "err", "raised ModuleNotFoundError", id="import-missing-dependency"),
    pytest.param(["gradcheck", "--import", "raises_on_import"], False, 2, "no-err", "Traceback", id="import-no-traceback"),
    pytest.param(["gradcheck", "--import", "good_rules.py"], False, 2, "err", "--import good_rules.", id="import-a-file-path"),
    pytest.param(["gradcheck", "--import", "good_rules", "--only", "user.imported", "--seeds", "1"], False, 0, "out", "1 passed, 0 failed, 0 errors", id="import-from-working-folder"),
    # the audit: 1 for mismatches, 2 for cases that raise, the summary every time
    pytest.param(RELU, False, 0, "out", "1 passed, 0 failed, 0 errors", id="library-case-passes"),
    pytest.param(["gradcheck", "--only", "user.wrong", "--seeds", "1"], False, 1, "out", "0 passed, 1 failed, 0 errors", id="mismatch"),
    pytest.param(["gradcheck", "--only", "user.wrong", "--seeds", "1"], False, 1, "err", "args[0]", id="mismatch-details"),
    pytest.param(["gradcheck", "--only", "user.raises", "--seeds", "1"], False, 2, "out", "ERROR", id="raising-case-row"),
    pytest.param(["gradcheck", "--only", "user.raises", "--seeds", "1"], False, 2, "err", "ERROR while checking it: ValueError: hand rule not written yet", id="raising-case-details"),
    pytest.param(["gradcheck", "--only", "user.unbuildable", "--seeds", "1"], False, 2, "err", "ERROR while building the case: KeyError", id="unbuildable-case"),
    pytest.param(["gradcheck", "--only", "user.", "--seeds", "2"], False, 2, "out", "2 passed, 2 failed, 4 errors", id="errors-win-and-the-rest-is-checked"),
    # reproduce: --out checked first, 1 when an experiment fails
    pytest.param(["reproduce", "--out", "taken.txt"], False, 2, "err", "got 'taken.txt', which is a file", id="out-is-a-file"),
    pytest.param(["reproduce", "--out", "taken.txt/results"], False, 2, "err", "expects a folder that can be created", id="out-cannot-be-created"),
    pytest.param(["reproduce", "--out", "/proc/self"], False, 2, "err", "expects a folder that can be written", id="out-cannot-be-written",
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")),
    pytest.param(REPRODUCE, False, 1, "err", "1 experiment(s) failed: fake_fails", id="experiment-fails"),
    pytest.param(REPRODUCE, False, 1, "out", "fake_ok report", id="other-experiments-run"),
    # --version
    pytest.param(["--version"], False, 0, "out", f"jaxnn {cli.version()}", id="version"),
    # progress: on a terminal's stderr, not with --quiet, not when stderr is not a terminal
    pytest.param(RELU, True, 0, "err", "0/1 [", id="progress-on-a-terminal"),
    pytest.param([*RELU, "--quiet"], True, 0, "no-err", BAR, id="quiet"),
    pytest.param(RELU, False, 0, "no-err", BAR, id="no-progress-off-a-terminal"),
    pytest.param(REPRODUCE, True, 1, "err", "0/2 [", id="reproduce-progress"),
    pytest.param([*REPRODUCE, "--only", "nope"], False, 2, "err", "--only expects experiment names from fake_ok, fake_fails; got nope", id="reproduce-only-unknown"),
    pytest.param([*REPRODUCE, "--only", "fake_ok"], False, 0, "out", "fake_ok report", id="reproduce-only"),
    # train: bad options are one line, exit 2, before any work
    pytest.param(["train", "--hidden", "12,a"], False, 2, "err", "expected layer sizes separated by commas, e.g. 128,64, got '12,a'", id="train-hidden"),
    pytest.param(["train", "--lr", "0"], False, 2, "err", "expected a number > 0, got '0'", id="train-lr-zero"),
    pytest.param(["train", "--lr", "nan"], False, 2, "err", "expected a number > 0, got 'nan'", id="train-lr-nan"),
    pytest.param(["train", "--dropout", "1"], False, 2, "err", "expected a number >= 0 and < 1, got '1'", id="train-dropout-one"),
    pytest.param(["train", "--epochs", "0"], False, 2, "err", "expected a whole number >= 1, got '0'", id="train-epochs-zero"),
    pytest.param(["train", "--data", "cifar"], False, 2, "err", "invalid choice: 'cifar'", id="train-unknown-data"),
    pytest.param(["train", "--optimizer", "lion"], False, 2, "err", "invalid choice: 'lion'", id="train-unknown-optimizer"),
    pytest.param(["train", "--compute-dtype", "float16"], False, 2, "err", "invalid choice: 'float16'", id="train-unknown-compute-dtype"),
    pytest.param(["train", "--resume"], False, 2, "err", "--resume needs --checkpoint DIR", id="train-resume-without-checkpoint"),
    pytest.param(["train", "--devices", "0"], False, 2, "err", "expected a whole number >= 1, got '0'", id="train-devices-zero"),
    pytest.param(["train", "--devices", "4096", "--out", "o"], False, 2, "err", "devices=4096, but this process has", id="train-devices-more-than-there-are"),
    pytest.param(["train", "--out", "taken.txt"], False, 2, "err", "got 'taken.txt', which is a file", id="train-out-is-a-file"),
    pytest.param(["train", "--data", "mnist", "--out", "o"], False, 2, "err", "--data-dir", id="train-mnist-without-data-dir"),
    pytest.param(["train", "--data", "mnist", "--data-dir", "nowhere", "--out", "o"], False, 2, "no-err", "Traceback", id="train-mnist-missing-files"),
    # [17] the command line ends cleanly: every option's range checked, one line, exit 2
    pytest.param(["train", "--seed", "9223372036854775808"], False, 2, "err", "expected a whole number >= 0 and < 4294967296, got '9223372036854775808'", id="17-train-seed-2-63"),
    pytest.param(["train", "--seed", str(2**70)], False, 2, "err", "expected a whole number >= 0 and < 4294967296", id="17-train-seed-2-70"),
    pytest.param(["train", "--seed", "-1"], False, 2, "err", "expected a whole number >= 0", id="train-seed-negative"),
    pytest.param(["train", "--seed", "4294967296"], False, 2, "err", "< 4294967296, got '4294967296'", id="train-seed-2-32"),
    pytest.param(["train", "--fallback"], False, 2, "err", "--fallback applies to --resume", id="train-fallback-without-resume"),
    pytest.param(["train", "--checkpoint", "taken.txt", "--out", "o"], False, 2, "err", "taken.txt is a file, not a folder", id="17-train-checkpoint-is-a-file"),
    pytest.param(REPRODUCE, True, 1, "err", "fake_ok inner", id="experiment-progress"),
    pytest.param([*REPRODUCE, "-q"], True, 1, "no-err", BAR, id="reproduce-quiet"),
    pytest.param(REPRODUCE, False, 1, "no-err", BAR, id="reproduce-no-progress-off-a-terminal"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "tty", "code", "where", "fragment"), CLI_ROWS)
def test_cli(env, capsys, monkeypatch, argv, tty, code, where, fragment):
    got, out, err = _run(argv, capsys, monkeypatch, tty)
    assert got == code, out + err
    if where == "no-err":
        assert fragment not in err
    else:
        assert fragment in (out if where == "out" else err), out + err
    assert BAR not in out  # stdout holds the report only
    if code == 2:
        assert env.calls == []  # a usage error runs nothing
    if code == 2 and "Traceback" not in err:  # a usage error is one line (raising cases aside)
        assert len(err.strip().splitlines()) == 1, err


def test_raising_case_keeps_the_audit_going_and_reports_each_case(env, capsys, monkeypatch):
    code, out, err = _run(["gradcheck", "--only", "user.", "--seeds", "1"], capsys, monkeypatch)
    assert code == 2
    rows = {
        line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("user.")
    }
    assert rows == {
        "user.honest": "ok",
        "user.raises": "ERROR",
        "user.unbuildable": "ERROR",
        "user.wrong": "MISMATCH",
    }
    assert "Traceback" in err and "exit 2: the audit is incomplete" in err


def test_reproduce_checks_out_before_importing_anything(env, capsys, monkeypatch):
    def no_import(name):
        raise AssertionError(f"{name} was imported before --out was checked")

    monkeypatch.setattr(jaxnn_experiments.reproduce, "_module", no_import)
    code, _, err = _run(["reproduce", "--out", "taken.txt"], capsys, monkeypatch)
    assert code == 2 and "which is a file" in err


def test_reproduce_exits_0_when_every_experiment_runs(env, capsys, monkeypatch):
    monkeypatch.setattr(jaxnn_experiments, "EXPERIMENTS", ("fake_ok",))
    code, out, _ = _run(["reproduce", "--out", "new/results"], capsys, monkeypatch)
    assert code == 0
    assert env.calls == [
        *(("fake_ok", "new/results", step) for step in range(3)),
        ("fake_ok", "quick", False),
    ]
    assert out.startswith("== fake_ok\nfake_ok report\n")
    assert (env.path / "new" / "results").is_dir()


def test_user_case_named_like_a_library_case_is_a_usage_error(env, capsys, monkeypatch):
    gradcheck.register("activations.relu", USER_CASES["user.honest"])
    code, _, err = _run(RELU, capsys, monkeypatch)
    assert code == 2 and "register yours under another name" in err


def test_version_without_installed_metadata(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == jaxnn.__version__


def test_the_package_version_is_the_one_pyproject_declares():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert jaxnn.__version__ == declared


def test_reproduce_without_the_experiments_dependencies_says_how_to_install(
    env, capsys, monkeypatch
):
    # common imported again, as if matplotlib were not installed
    monkeypatch.delitem(sys.modules, f"{PKG}.common", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = _run(["reproduce", "--out", "out"], capsys, monkeypatch)
    assert code == 2 and "cannot import the experiments" in err
    assert "pip install -e '.[experiments]'" in err and env.calls == []


def test_gradcheck_in_a_fresh_process_with_only_the_repository_on_the_path(tmp_path):
    (tmp_path / "my_rules.py").write_text(
        textwrap.dedent(
            """
            import jax, jax.numpy as jnp
            from jaxnn import gradcheck

            def case(key):
                x = jax.random.normal(key, (4,), jnp.float64)
                return gradcheck.GradCase(lambda x: jnp.sum(jnp.exp(x)), (x,), lambda x: 2 * jnp.exp(x))

            gradcheck.register("user.wrong_exp", case)
            """
        )
    )
    # -P: Python puts neither the working folder nor a script's on the path, as for the
    # console script; my_rules is found because the CLI searches the working folder.
    # JAX_PLATFORMS=cpu: the child leaves an accelerator to the process running the tests.
    env = {"PATH": "", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    argv = ["gradcheck", "--import", "my_rules", "--only", "user.", "--seeds", "1"]
    result = subprocess.run(
        [sys.executable, "-P", "-m", "jaxnn.cli", *argv],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "user.wrong_exp" in result.stdout and "MISMATCH" in result.stdout
    assert "0 passed, 1 failed, 0 errors" in result.stdout
    assert BAR not in result.stderr  # stderr is a pipe: no progress
