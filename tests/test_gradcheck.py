"""The gradient checker: it passes honest code, and it catches and names planted mistakes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import cli, gradcheck
from jaxnn.gradcheck import AUTO, FD, HAND, GradientMismatchError, check_gradients


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(k1, (3, 4), jnp.float64),
        "b": jax.random.normal(k2, (4,), jnp.float64),
    }, jax.random.normal(k3, (5, 3), jnp.float64)


def _loss(params, x):
    return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2)


def _hand_grad(params, x, *, wrong_b_at=None):
    z = x @ params["w"] + params["b"]
    t = jnp.tanh(z)
    dz = 2 * t * (1 - t * t)
    db = jnp.sum(dz, axis=0)
    if wrong_b_at is not None:
        db = db.at[wrong_b_at].multiply(1.001)  # a planted slip in one element of one leaf
    return {"w": x.T @ dz, "b": db}


def test_honest_gradient_passes_with_per_leaf_report():
    params, x = _params(jax.random.key(0))
    report = check_gradients(_loss, params, x, grad_fn=_hand_grad)
    assert report.ok
    assert [leaf.path for leaf in report.leaves] == ["args[0]['b']", "args[0]['w']"]
    for leaf in report.leaves:
        assert {p.pair for p in leaf.pairs} == {(HAND, AUTO), (HAND, FD), (AUTO, FD)}
        (exact,) = [p for p in leaf.pairs if p.pair == (HAND, AUTO)]
        assert exact.max_rel_err <= 1e-10


def test_planted_wrong_derivative_is_reported_at_exactly_that_leaf_and_index():
    params, x = _params(jax.random.key(1))
    report = check_gradients(
        _loss,
        params,
        x,
        grad_fn=lambda p, x: _hand_grad(p, x, wrong_b_at=2),
        raise_on_mismatch=False,
    )
    assert not report.ok
    failing = {(leaf.path, p.pair) for leaf, p in report.failures}
    # The hand-derived gradient disagrees with both references at leaf b, element 2; jax.grad
    # and finite differences still agree with each other, and leaf w is untouched.
    assert failing == {("args[0]['b']", (HAND, AUTO)), ("args[0]['b']", (HAND, FD))}
    (exact,) = [p for leaf, p in report.failures if p.pair == (HAND, AUTO)]
    assert exact.worst_index == (2,)
    true_db = float(_hand_grad(params, x)["b"][2])
    assert exact.value_a == pytest.approx(true_db * 1.001, rel=1e-12)
    assert exact.value_b == pytest.approx(true_db, rel=1e-12)


def test_mismatch_error_names_leaf_and_says_which_value_is_which():
    params, x = _params(jax.random.key(2))
    with pytest.raises(GradientMismatchError) as info:
        check_gradients(_loss, params, x, grad_fn=lambda p, x: _hand_grad(p, x, wrong_b_at=0))
    message = str(info.value)
    assert "args[0]['b']" in message
    assert "index (0,)" in message
    assert "hand-derived = " in message and "jax.grad = " in message


def test_finite_differences_catch_an_error_far_below_the_first_digits():
    # A slip of 1e-9 in an O(0.01) derivative: invisible at 6 printed digits. The derived
    # finite-difference bound (~1e-10 here: sigma ~ 1e-16, h ~ 6e-6) still resolves it.
    x = jnp.linspace(-3.0, 3.0, 7)

    def wrong(x):
        return 1 - jnp.tanh(x) ** 2 + jnp.where(x > 2, 1e-9, 0.0)

    report = check_gradients(
        lambda x: jnp.sum(jnp.tanh(x)), x, grad_fn=wrong, rtol=1.0, raise_on_mismatch=False
    )
    assert [(leaf.path, p.pair) for leaf, p in report.failures] == [("args[0]", (HAND, FD))]


def test_float32_input_is_promoted_and_the_report_says_so():
    x = jnp.linspace(-2.0, 2.0, 6, dtype=jnp.float32)
    report = check_gradients(
        lambda x: jnp.sum(jnp.sin(x) * x), x, grad_fn=lambda x: jnp.cos(x) * x + jnp.sin(x)
    )
    assert report.ok
    assert any("promoted to float64" in note for note in report.notes)
    assert "promoted to float64" in report.table()


def test_argnums_tuple_and_kinks_do_not_fail_honest_code():
    # relu has a kink at 0; a coordinate placed exactly on it must not fail the check.
    w = jnp.asarray([[1.0, -1.0], [0.5, 2.0]])
    x = jnp.asarray([[1.0, -1.0]])  # x @ w = [0.5, -3.0]; the third point sits on the kink

    def f(w, x):
        return jnp.sum(jnp.maximum(x @ w, 0.0)) + jnp.maximum(x[0, 0] - 1.0, 0.0)

    report = check_gradients(f, w, x, argnums=(0, 1))
    assert report.ok
    assert [leaf.path for leaf in report.leaves] == ["args[0]", "args[1]"]


def test_bad_arguments_get_clear_errors():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="real scalar"):
        check_gradients(lambda x: x * 2, x)
    with pytest.raises(ValueError, match="structure"):
        check_gradients(lambda p: jnp.sum(p["a"]), {"a": x}, grad_fn=lambda p: {"b": p["a"]})
    with pytest.raises(ValueError, match="shape"):
        check_gradients(lambda x: jnp.sum(x), x, grad_fn=lambda x: jnp.ones(4))


def test_cli_gradcheck_exits_nonzero_when_a_registered_rule_is_wrong(capsys):
    def wrong_sigmoid(key):
        x = jax.random.normal(key, (3,), jnp.float64)

        def f(x):
            return jnp.sum(jax.nn.sigmoid(x))

        def grad_fn(x):  # a classic slip: sigma' written as sigma (1 + sigma)
            s = jax.nn.sigmoid(x)
            return s * (1 + s)

        return gradcheck.GradCase(f, (x,), grad_fn, 0, "x(3,)")

    gradcheck.register("planted.wrong_sigmoid", wrong_sigmoid)
    try:
        assert cli.main(["gradcheck", "--seeds", "1", "--only", "planted."]) == 1
    finally:
        gradcheck.unregister("planted.wrong_sigmoid")
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out
    assert "planted.wrong_sigmoid" in captured.err and "args[0]" in captured.err


def test_noise_estimate_keeps_bound_tight_for_an_exact_function():
    # f(x) = sum(x**2) has almost no rounding noise and no third derivative: the derived bound
    # stays tiny (nothing is widened to cover it), and honest code still passes.
    x = jnp.asarray([1.0, 2.0, -3.0])
    report = check_gradients(lambda x: jnp.sum(x**2), x, grad_fn=lambda x: 2 * x)
    (fd,) = [p for p in report.leaves[0].pairs if p.pair == (HAND, FD)]
    assert fd.ok and fd.tolerance < 1e-8
    assert np.isfinite(fd.max_abs_err)
