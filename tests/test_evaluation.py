"""Evaluation: predict in batches and in eval mode, evaluate's scores against scikit-learn, the
metrics of every classification loss, and NaN that is never a class."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import jaxnn
from jaxnn import data, losses, metrics
from jaxnn.evaluation import evaluate, predict
from jaxnn.fitting import fit
from jaxnn.train import TrainState

CE = "softmax_cross_entropy_with_integer_labels"


@pytest.fixture(scope="module")
def digits():
    with jax.enable_x64(False):
        return data.digits()


def test_predict_in_batches_equals_one_pass_and_uses_running_statistics(digits):
    net = jaxnn.mlp([32, 10], "relu", batchnorm=True, dropout=0.5)
    opt = optax.adam(1e-3)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    ts = fit(net, CE, opt, ts, (digits.train.x, digits.train.y), epochs=1, batch_size=64).state
    x = digits.test.x
    whole, _ = net.apply(ts.params, ts.state, x, train=False)
    for batch_size in (1024, 100, 7):
        got = predict(net, ts.params, ts.state, x, batch_size=batch_size)
        assert got.shape == whole.shape
        # Each row is the same computation on a different batch size: matmul rounding only,
        # |Δ| ≤ (fan-in)·u·Σ|terms| — 64 inputs, u = 2^-24: below 1e-4 of the O(10) logits.
        np.testing.assert_allclose(np.asarray(got), np.asarray(whole), rtol=0, atol=1e-4)


def test_evaluate_matches_scikit_learn(digits):
    net = jaxnn.mlp([32, 10], "relu")
    opt = optax.adam(1e-2)
    ts = TrainState.create(net, opt, jax.random.key(0), (32, 64))
    ts = fit(net, CE, opt, ts, (digits.train.x, digits.train.y), epochs=3, batch_size=64).state
    x, y = digits.test.x, digits.test.y
    scores = evaluate(net, CE, ts.params, ts.state, x, y, batch_size=50)
    logits = np.asarray(predict(net, ts.params, ts.state, x))
    pred = logits.argmax(-1)
    expected = sk_confusion_matrix(y, pred, labels=list(range(10)))
    np.testing.assert_array_equal(np.asarray(scores["confusion"]), expected)
    assert scores["accuracy"] == pytest.approx(np.trace(expected) / len(y), rel=1e-7)
    assert scores["loss"] == pytest.approx(float(losses.get(CE).fn(logits, y)), rel=1e-6)


def test_metrics_for_each_classification_loss():
    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    labels = jnp.asarray([0, 1, 1, 2])
    onehot = jax.nn.one_hot(labels, 3)
    for loss, targets in ((CE, labels), ("softmax_cross_entropy", onehot)):
        assert float(metrics.accuracy(logits, targets, loss)) == 0.5
        np.testing.assert_array_equal(
            np.asarray(metrics.confusion_matrix(logits, targets, loss)),
            sk_confusion_matrix(labels, [0, 1, 2, 0], labels=[0, 1, 2]),
        )
    z = jnp.asarray([[1.0], [-2.0], [0.5]])
    t = jnp.asarray([[1.0], [1.0], [0.0]])
    assert float(metrics.accuracy(z, t, "binary_cross_entropy_with_logits")) == pytest.approx(1 / 3)
    assert metrics.confusion_matrix(z, t, "binary_cross_entropy_with_logits").tolist() == [
        [0, 1],
        [1, 1],
    ]
    with pytest.raises(ValueError, match="regression loss"):
        metrics.accuracy(z, t, "squared_error")
    # An out-of-range label is counted nowhere, not as another class.
    assert int(metrics.confusion_matrix(logits, jnp.asarray([0, 1, 1, 7]), CE).sum()) == 3


# ----------------------------------------------------------------------------- NaN is never hidden


def test_a_nan_output_has_no_class_and_makes_the_accuracy_nan():
    logits = jnp.asarray([[2.0, 0.0], [jnp.nan, 1.0], [0.0, 3.0]])
    labels = jnp.asarray([0, 1, 1])
    assert metrics.predicted_labels(logits, CE).tolist() == [0, -1, 1]
    assert np.isnan(float(metrics.accuracy(logits, labels, CE)))
    assert metrics.confusion_matrix(logits, labels, CE).tolist() == [[1, 0], [0, 1]]
    z = jnp.asarray([[1.0], [jnp.nan]])
    assert np.isnan(
        float(metrics.accuracy(z, jnp.asarray([[1.0], [0.0]]), "binary_cross_entropy_with_logits"))
    )
