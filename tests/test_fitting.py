"""fit: one trace for every epoch, the best state, early stopping (and its EarlyStopping record),
resumption bit for bit, argument errors, divergence noticed, custom classification losses."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import Layer, data, losses
from jaxnn.evaluation import evaluate
from jaxnn.fitting import DivergenceWarning, EarlyStopping, fit
from jaxnn.train import TrainState

CE = "softmax_cross_entropy_with_integer_labels"


@pytest.fixture(scope="module")
def digits():
    with jax.enable_x64(False):
        return data.digits()


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- compile once


def _counting(net: Layer, counts: dict[str, int]) -> Layer:
    def apply(*args, **kwargs):
        counts["apply"] += 1
        return net.apply(*args, **kwargs)

    def vjp(*args, **kwargs):
        counts["vjp"] += 1
        return net.vjp(*args, **kwargs)

    return net._replace(apply=apply, vjp=vjp)


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_fit_traces_once_whatever_the_number_of_epochs(grad, digits):
    x, y = digits.train.x[:200], digits.train.y[:200]
    val = (digits.validation.x[:50], digits.validation.y[:50])
    runs = {}
    for epochs in (1, 4):
        counts = {"apply": 0, "vjp": 0}
        net = _counting(jaxnn.mlp([16, 10], "relu", batchnorm=True, dropout=0.1), counts)
        opt = optax.adam(1e-3)
        ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
        counts.update(apply=0, vjp=0)
        fit(net, CE, opt, ts, (x, y), epochs=epochs, batch_size=32, validation=val, grad=grad)
        runs[epochs] = dict(counts)
    assert runs[1] == runs[4]  # no retracing per step or per epoch
    assert sum(runs[1].values()) <= 3  # the epoch's step (once), the evaluation (once)


# ----------------------------------------------------------------------------- epochs


def test_a_last_minibatch_of_one_example_with_batchnorm_trains_when_dropped(digits):
    x, y = digits.train.x[:65], digits.train.y[:65]  # 65 = 2·32 + 1
    net = jaxnn.mlp([16, 10], "relu", batchnorm=True)
    opt = optax.adam(1e-3)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    result = fit(net, CE, opt, ts, (x, y), epochs=2, batch_size=32)
    assert int(result.state.step) == 4
    assert all(np.isfinite(r["loss"]) for r in result.history)
    with pytest.raises(ValueError, match="last minibatch of 1 example"):
        fit(net, CE, opt, ts, (x, y), epochs=1, batch_size=32, remainder="pad")


# ----------------------------------------------------------------------------- fit


def test_fit_evaluates_keeps_the_best_and_stops_early(digits):
    net = jaxnn.mlp([32, 10], "relu")
    opt = optax.adam(3e-2)  # a large rate: validation loss soon rises (overfitting)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    x, y = digits.train.x[:150], digits.train.y[:150]
    val = (digits.validation.x, digits.validation.y)
    seen = []
    result = fit(
        net, CE, opt, ts, (x, y), epochs=60, batch_size=32, validation=val, patience=3,
        callback=lambda epoch, ts, record: seen.append((epoch, int(ts.step))),
    )  # fmt: skip
    h = result.history
    assert [r["epoch"] for r in h] == list(range(1, len(h) + 1))
    assert seen == [(r["epoch"], 4 * r["epoch"]) for r in h]
    best = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    assert result.best_epoch == h[best]["epoch"]
    assert result.stopped_early and len(h) == result.best_epoch + 3
    again = evaluate(net, CE, result.best.params, result.best.state, *val)
    assert again["loss"] == h[best]["val_loss"]
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(ts))  # fit copies its input
    json.dumps(h)  # the history is plain JSON


def test_a_resumed_fit_is_bit_identical_to_an_uninterrupted_one(digits):
    net = jaxnn.mlp([32, 10], "relu", batchnorm=True, dropout=0.2)
    opt = optax.adam(1e-3)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    train = (digits.train.x[:300], digits.train.y[:300])
    val = (digits.validation.x, digits.validation.y)
    whole = fit(net, CE, opt, ts, train, epochs=4, batch_size=32, validation=val)
    first = fit(net, CE, opt, ts, train, epochs=2, batch_size=32, validation=val)
    rest = fit(net, CE, opt, first.state, train, epochs=2, batch_size=32, validation=val,
               history=first.history)  # fmt: skip
    _assert_trees_equal(rest.state, whole.state)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(rest.history) == strip(whole.history)
    assert rest.best_epoch == whole.best_epoch or rest.best_epoch > 2


def test_fit_refuses_bad_arguments_with_the_fix(digits):
    net = jaxnn.mlp([8, 10], "relu")
    opt = optax.sgd(0.1)
    ts = TrainState.create(net, opt, jax.random.key(0), (8, 64))
    x, y = digits.train.x[:20], digits.train.y[:20]
    cases = [
        (dict(epochs=0), "epochs must be a positive int"),
        (dict(epochs=1, batch_size=32), "batch_size=32 is larger than the 20 training examples"),
        (dict(epochs=1, monitor="val_loss"), "'val_\\*' need validation data"),
        (dict(epochs=1, remainder="keep"), "remainder must be one of"),
        (dict(epochs=1, grad="numeric"), "grad must be one of"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            fit(net, CE, opt, ts, (x, y), **{"batch_size": 8, **kwargs})
    with pytest.raises(ValueError, match="same number of examples"):
        fit(net, CE, opt, ts, (x, y[:10]), epochs=1, batch_size=8)


# ----------------------------------------------------------------------------- NaN is never hidden


def _small(digits, n=120):
    return digits.train.x[:n], digits.train.y[:n]


def test_a_diverging_fit_stops_warns_and_keeps_the_best_finite_state(digits):
    net = jaxnn.mlp([16, 10], "relu")
    opt = optax.sgd(1e3)
    x, y = _small(digits)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    with pytest.warns(DivergenceWarning, match=r"diverged at epoch (\d+): loss nan"):
        result = fit(net, CE, opt, ts, (x, y), epochs=20, batch_size=30, validation=(x, y))
    assert result.diverged == len(result.history) < 20  # stopped at the first bad epoch
    assert not math.isfinite(result.history[-1]["loss"])
    assert all(math.isfinite(v) for r in result.history[:-1] for v in r.values())
    for leaf in jax.tree.leaves(result.best.params):
        assert np.isfinite(np.asarray(leaf)).all()
    if result.best_epoch == 0:  # no epoch was finite: the starting state
        _assert_trees_equal(result.best, ts)
    # on_nonfinite="continue" runs every epoch, and warns once.
    with pytest.warns(DivergenceWarning) as caught:
        going = fit(net, CE, opt, ts, (x, y), epochs=20, batch_size=30, on_nonfinite="continue")
    assert len(going.history) == 20 and len(caught) == 1
    assert going.diverged is not None and not math.isfinite(going.history[-1]["loss"])


def test_a_run_with_nan_in_its_history_can_be_resumed(digits):
    net = jaxnn.mlp([8, 10], "relu")
    opt = optax.adam(1e-3)
    x, y = _small(digits)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    history = [
        {"epoch": 1, "loss": 2.0, "val_loss": 1.5},
        {"epoch": 2, "loss": float("nan"), "val_loss": float("nan")},
    ]
    result = fit(
        net, CE, opt, ts, (x, y), epochs=2, batch_size=30, validation=(x, y), history=history
    )
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.best_epoch in (1, 3, 4)


def test_nan_validation_data_is_a_divergence_not_a_finite_score(digits):
    net = jaxnn.mlp([8, 10], "relu", batchnorm=True)
    opt = optax.adam(1e-3)
    x, y = _small(digits)
    xv = np.array(x)
    xv[0, 0] = np.nan
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    with pytest.warns(DivergenceWarning, match="val_loss nan, val_accuracy nan"):
        result = fit(net, CE, opt, ts, (x, y), epochs=3, batch_size=30, validation=(xv, y))
    assert result.diverged == 1 and result.best_epoch == 0


# ----------------------------------------------------------------------------- custom losses


def _hinge(scores, labels):
    """Crammer & Singer's multiclass hinge, mean over the batch."""
    onehot = jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    margins = scores - jnp.sum(scores * onehot, -1, keepdims=True) + 1 - onehot
    return jnp.mean(jnp.max(margins, -1))


def _hinge_grad(scores, labels):
    """The subgradient: +1 at the most violating class, −1 at the true one, over B."""
    onehot = jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    margins = scores - jnp.sum(scores * onehot, -1, keepdims=True) + 1 - onehot
    top = jax.nn.one_hot(jnp.argmax(margins, -1), scores.shape[-1], dtype=scores.dtype)
    return (top - onehot) / labels.shape[0]


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_a_custom_classification_loss_gets_accuracy_and_val_accuracy(digits, grad):
    hinge = losses.Loss("multiclass_hinge", _hinge, _hinge_grad, targets="labels")
    net = jaxnn.mlp([32, 10], "relu")
    opt = optax.adam(1e-2)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    train_xy = (digits.train.x, digits.train.y)
    val = (digits.validation.x, digits.validation.y)
    result = fit(net, hinge, opt, ts, train_xy, epochs=5, batch_size=32, validation=val,
                 monitor="val_accuracy", grad=grad)  # fmt: skip
    assert result.history[-1]["val_accuracy"] > 0.9
    scores = evaluate(net, hinge, result.best.params, result.best.state, *val)
    assert scores["accuracy"] == result.history[result.best_epoch - 1]["val_accuracy"]
    assert np.asarray(scores["confusion"]).sum() == len(val[1])


# ----------------------------------------------------------------------------- EarlyStopping


def test_early_stopping_in_min_mode_counts_the_epochs_without_improvement():
    stopping = EarlyStopping.from_history(mode="min", patience=2)
    assert stopping.best_value is None and not stopping.improved and not stopping.should_stop
    seen = []
    for epoch, value in enumerate([3.0, 2.0, 2.0, 1.5, 1.6, 1.7], 1):
        stopping = stopping.update(epoch, value)
        seen.append((stopping.best_epoch, stopping.waited, stopping.improved))
    # Equal is not better: epoch 3 waits; epochs 5 and 6 wait, and patience 2 is then reached.
    assert seen == [(1, 0, True), (2, 0, True), (2, 1, False), (4, 0, True), (4, 1, False),
                    (4, 2, False)]  # fmt: skip
    assert stopping.best_value == 1.5 and stopping.should_stop


def test_early_stopping_in_max_mode_keeps_the_highest():
    stopping = EarlyStopping(mode="max", patience=3)
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.7], 1):
        stopping = stopping.update(epoch, value)
    assert (stopping.best_value, stopping.best_epoch, stopping.waited) == (0.7, 2, 2)
    assert not stopping.should_stop
    assert stopping.update(5, 0.9).improved


def test_early_stopping_never_takes_a_non_finite_value_as_the_best():
    stopping = EarlyStopping(mode="min")
    for epoch, value in enumerate([math.nan, 2.0, -math.inf, math.nan], 1):
        stopping = stopping.update(epoch, value)
        assert stopping.best_value is None or math.isfinite(stopping.best_value)
    assert (stopping.best_value, stopping.best_epoch, stopping.waited) == (2.0, 2, 2)
    assert not stopping.should_stop  # no patience: never
    nothing = EarlyStopping(mode="max", patience=1).update(1, math.nan)
    assert nothing.best_value is None and nothing.should_stop and not nothing.improved


def test_early_stopping_resumes_from_the_history():
    # The best finite value, its latest epoch on ties, the epochs since: as if never stopped.
    resumed = EarlyStopping.from_history([2.0, 1.0, math.nan, 1.0, 1.5], mode="min", patience=2)
    assert (resumed.best_value, resumed.best_epoch, resumed.waited) == (1.0, 4, 1)
    assert not resumed.improved and resumed.update(6, 1.2).should_stop
    assert resumed.update(6, 0.5).best_epoch == 6
    # Without a finite value there is no best yet, and the patience counts from the history's end.
    empty = EarlyStopping.from_history([math.nan, math.inf], mode="min", patience=1)
    assert (empty.best_value, empty.best_epoch, empty.waited) == (None, 2, 0)
    assert empty.update(3, 4.0).best_epoch == 3
    with pytest.raises(ValueError, match=r"mode must be one of \('min', 'max'\)"):
        EarlyStopping.from_history(mode="lowest")
    with pytest.raises(ValueError, match="patience must be a positive int"):
        EarlyStopping.from_history(patience=0)
    with pytest.raises(TypeError, match=r"values\[1\] \(epoch 2\) must be a real number"):
        EarlyStopping.from_history([1.0, "2.0"])


def test_fit_reports_the_early_stopping_record_of_its_history(digits):
    # fit's best epoch and stop are the EarlyStopping record's over the whole history.
    net = jaxnn.mlp([8, 10], "relu")
    opt = optax.sgd(0.01)
    x, y = digits.train.x[:60], digits.train.y[:60]
    ts = TrainState.create(net, opt, jax.random.key(0), (30, 64))
    history = [{"epoch": 1, "loss": 0.0}]  # unbeatable: every new epoch waits
    result = fit(net, CE, opt, ts, (x, y), epochs=5, batch_size=30, patience=2, history=history)
    expected = EarlyStopping.from_history([0.0], mode="min", patience=2)
    for r in result.history[1:]:
        expected = expected.update(r["epoch"], r["loss"])
    assert expected.should_stop and result.stopped_early and len(result.history) == 3
    assert result.best_epoch == expected.best_epoch == 1
    _assert_trees_equal(result.best, result.state)  # no epoch of this call beat the history
