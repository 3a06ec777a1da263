"""The gradient checker: it passes honest code, and it catches and names planted mistakes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import (
    audit,
    batchnorm,
    cli,
    combinators,
    conv,
    gradcheck,
    layers,
    networks,
    norms,
    pooling,
    recurrent,
)
from jaxnn._typing import bind_backward
from jaxnn.backprop import manual
from jaxnn.gradcheck import AUTO, FD, HAND, GradientMismatchError, check_gradients, check_layer


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


def test_names_label_the_differentiated_arguments():
    params, x = _params(jax.random.key(3))
    report = check_gradients(_loss, params, x, argnums=(0, 1), names=("dparams", "dx"))
    assert [leaf.path for leaf in report.leaves] == ["dparams['b']", "dparams['w']", "dx"]
    with pytest.raises(ValueError, match="one name per argnums"):
        check_gradients(_loss, params, x, names=("a", "b"))


# ----------------------------------------------------------------------------- check_layer


def _wrong_dx(backward, dy):
    dparams, dx = backward(dy)
    return dparams, dx.at[0, 0].multiply(1.001)  # a planted slip in one element of dx


def _swapped(backward, dy):
    dparams, dx = backward(dy)
    return dx, dparams


def _faulty(kind, name="faulty", features=3):
    """A dense layer whose backward has one planted mistake of ``kind``."""
    base = layers.dense(features, b_init=jax.nn.initializers.normal(1.0))

    def vjp(params, state, x, *, train, key=None):
        y, state, backward = base.vjp(params, state, x, train=train, key=key)
        if kind == "plain function":
            return y, state, lambda dy: backward(dy)
        wrong = {"wrong dx": _wrong_dx, "swapped": _swapped}[kind]
        return y, state, bind_backward(wrong, backward)

    return base._replace(name=name, vjp=vjp)


_BN_STATE = batchnorm.BatchNormState(
    jnp.asarray([0.5, -1.0, 0.2]), jnp.asarray([2.0, 0.5, 1.5]), jnp.asarray(3)
)


# Every layer factory of jaxnn (audit.layer_factories), in the modes and keywords it has.
_BUILTIN = [
    ("dense", layers.dense(4, b_init=jax.nn.initializers.normal(1.0)), (5, 3), {}),
    ("activation", layers.activation("gelu"), (3, 4), {}),
    ("dropout", layers.dropout(0.3), (4, 5), {}),
    ("batchnorm", batchnorm.batchnorm(), (6, 3), {}),
    ("batchnorm", batchnorm.batchnorm(), (6, 3), {"state": _BN_STATE}),
    ("batchnorm", batchnorm.batchnorm(), (6, 3), {"mask": jnp.arange(6) < 4}),
    ("serial", combinators.serial(layers.dense(3), layers.activation("tanh"), layers.dropout(0.2)),
     (4, 2), {}),
    ("mlp", networks.mlp([3, 2], "softplus", batchnorm=True, dropout=0.2), (5, 2),
     {"mask": jnp.arange(5) != 2}),
    ("manual", manual(networks.mlp([3, 2], "tanh", batchnorm=True)), (5, 2), {}),
    ("flatten", layers.flatten(), (2, 3, 2, 2), {}),
    ("reshape", layers.reshape((2, -1)), (3, 6), {}),
    ("conv2d", conv.conv2d(3, 3, strides=2, padding=1, kernel_dilation=(1, 2)), (2, 6, 7, 2), {}),
    ("max_pool", pooling.max_pool(3, 2, 1), (2, 5, 5, 2), {}),
    ("avg_pool", pooling.avg_pool(2, 1, count_include_pad=False, padding=1), (2, 4, 4, 2), {}),
    ("global_avg_pool", pooling.global_avg_pool(), (2, 3, 4, 2), {}),
    ("layernorm", norms.layernorm(axis=(-2, -1)), (3, 2, 4), {}),
    ("groupnorm", norms.groupnorm(2), (2, 3, 3, 4), {}),
    ("rmsnorm", norms.rmsnorm(), (3, 5), {}),
    ("residual", combinators.residual(combinators.serial(layers.dense(3), batchnorm.batchnorm()),
                                      layers.dense(3)), (4, 2), {}),
    ("cnn", networks.cnn((4, 4, 1), (2, 4), 3, residual=True, activation="tanh"), (3, 16), {}),
    ("recurrent_layer", recurrent.recurrent_layer(recurrent.lstm_cell(3)), (2, 4, 2),
     {"seq_mask": jnp.arange(4) < jnp.array([[4], [2]])}),
    ("recurrent_layer", recurrent.recurrent_layer(recurrent.gru_cell(3), return_sequences=False),
     (3, 2, 2), {}),
    ("embedding", recurrent.embedding(5, 3), (2, 3),
     {"x": jnp.array([[1, 1, 4], [0, 2, 1]])}),
]  # fmt: skip


def test_the_builtin_list_covers_every_layer_factory():
    assert set(audit.layer_factories()) <= {factory for factory, *_ in _BUILTIN}


@pytest.mark.parametrize(
    ("factory", "layer", "shape", "options"),
    _BUILTIN,
    ids=[f"{f}-{'-'.join(o) or 'plain'}" for f, _, _, o in _BUILTIN],
)
def test_check_layer_passes_every_builtin_layer_in_each_mode(factory, layer, shape, options):
    del factory
    reports = check_layer(layer, shape, **options)
    assert set(reports) == {"train", "eval"}
    for mode, report in reports.items():
        assert report.ok, (mode, report.table())
        assert report.subject == f"layer {layer.name!r}, train={mode == 'train'}"
        paths = [leaf.path for leaf in report.leaves]
        if layer.integer_input:  # tokens have no gradient: the params' alone
            assert paths and all(p.startswith("dparams") for p in paths)
        else:
            assert paths[-1] == "dx"  # the input's gradient, besides every parameter's
            assert all(p.startswith("dparams") for p in paths[:-1])
        assert report.max_rel_err((HAND, AUTO)) <= 1e-10


def test_check_layer_one_mode_and_its_key():
    reports = check_layer(layers.dropout(0.5), (4, 4), train=True, key=jax.random.key(7))
    assert list(reports) == ["train"]
    # the same key draws the same case (a dropout mask included): the same numbers
    again = check_layer(layers.dropout(0.5), (4, 4), train=True, key=jax.random.key(7))
    assert reports["train"].table() == again["train"].table()


def test_check_layer_names_the_layer_the_mode_and_dx_of_a_wrong_input_gradient():
    with pytest.raises(GradientMismatchError) as info:
        check_layer(_faulty("wrong dx"), (4, 2))
    message = str(info.value)
    assert message.startswith("layer 'faulty', train=True: gradient mismatch at leaf dx ")
    assert "index (0, 0)" in message
    # Its params' gradients are right: the report says so leaf by leaf.
    report = check_layer(_faulty("wrong dx"), (4, 2), train=True, raise_on_mismatch=False)
    assert {leaf.path for leaf, _ in report["train"].failures} == {"dx"}


def test_a_wrong_dx_inside_a_network_is_found_at_its_layer():
    net = combinators.serial(layers.dense(3), layers.activation("tanh"), _faulty("wrong dx"))
    # The network's check sees dense_0's params and the input go wrong (dx flows through
    # them); the layer's own check names the layer whose dx is wrong.
    report = check_layer(net, (4, 2), train=False, raise_on_mismatch=False)["eval"]
    assert not report.ok
    with pytest.raises(GradientMismatchError, match=r"^layer 'faulty', train=False: .* leaf dx "):
        check_layer(net.children[2], (4, 3), train=False)


@pytest.mark.parametrize("where", ["alone", "in a network"])
def test_check_layer_refuses_a_swapped_backward_naming_the_layer(where):
    layer = _faulty("swapped", name="swapper")
    if where == "in a network":
        layer = combinators.serial(layers.dense(3), layer, name="net")
    with pytest.raises(ValueError) as info:
        check_layer(layer, (4, 3), train=False)
    message = str(info.value)
    assert ("layer 'swapper'" if where == "alone" else "layer 'swapper_1' in 'net'") in message
    assert "It looks like (dx, dparams): return (dparams, dx)" in message
    assert "expected the params' structure" in message


@pytest.mark.parametrize("where", ["alone", "in a network"])
def test_check_layer_refuses_a_plain_function_backward_naming_the_layer(where):
    layer = _faulty("plain function", name="lambda_layer")
    if where == "in a network":
        layer = combinators.serial(layer, layers.activation("relu"), name="net")
    with pytest.raises(TypeError) as info:
        check_layer(layer, (4, 3), train=False)
    message = str(info.value)
    assert ("layer 'lambda_layer'" if where == "alone" else "'lambda_layer_0' in 'net'") in message
    assert "backward of type function" in message
    assert "jaxnn.bind_backward" in message


def test_check_layer_refuses_a_dx_of_the_wrong_shape_or_dtype():
    base = layers.dense(2)

    def summed(backward, dy):  # forgot to keep the batch axis
        dparams, dx = backward(dy)
        return dparams, jnp.sum(dx, axis=0)

    def single(backward, dy):
        dparams, dx = backward(dy)
        return dparams, dx.astype(jnp.float32)

    for fn, match in ((summed, r"dx of shape \(3,\); the input x has shape \(4, 3\)"),
                      (single, r"dx of dtype float32; the input x has dtype float64")):  # fmt: skip

        def vjp(params, state, x, *, train, key=None, fn=fn):
            y, state, backward = base.vjp(params, state, x, train=train, key=key)
            return y, state, bind_backward(fn, backward)

        with pytest.raises(ValueError, match=match):
            check_layer(base._replace(name="shaper", vjp=vjp), (4, 3), train=False)


def test_check_layer_bad_arguments():
    with pytest.raises(TypeError, match="needs a jaxnn Layer"):
        check_layer(lambda x: x, (2, 3))
    with pytest.raises(TypeError, match="input_shape must be a tuple"):
        check_layer(layers.dense(2), 3)
    with pytest.raises(TypeError, match=r"layer 'dense' takes no keyword array\(s\) \['mask'\]"):
        check_layer(layers.dense(2), (2, 3), mask=jnp.ones(2, bool))
    with pytest.raises(TypeError, match="train must be a bool"):
        check_layer(layers.dense(2), (2, 3), train="yes")


def test_a_layer_case_registers_in_one_line(capsys):
    gradcheck.register(
        "mine.tanh_dense",
        lambda key: gradcheck.layer_case(networks.mlp([3], "tanh"), (4, 2), train=True, key=key),
    )
    try:
        assert cli.main(["gradcheck", "--seeds", "2", "--only", "mine."]) == 0
    finally:
        gradcheck.unregister("mine.tanh_dense")
    assert "mine.tanh_dense  1     train x(4, 2)" in capsys.readouterr().out


def test_cli_gradcheck_names_the_layer_of_a_registered_layer_case(capsys):
    gradcheck.register(
        "mine.faulty",
        lambda key: gradcheck.layer_case(_faulty("wrong dx"), (4, 2), train=True, key=key),
    )
    try:
        assert cli.main(["gradcheck", "--seeds", "1", "--only", "mine."]) == 1
    finally:
        gradcheck.unregister("mine.faulty")
    err = capsys.readouterr().err
    assert "mine.faulty (seed 0): layer 'faulty', train=True: gradient mismatch at leaf dx" in err
