"""Mixed precision: bfloat16 compute with float32 master weights (``compute_dtype``).

Tolerances come from bfloat16's unit roundoff ``u = 2⁻⁸`` (half its ``eps = 2⁻⁷``, the
spacing at 1). The hand-derived and the autodiff backward compute the same exact cotangents
from a bit-identical forward; XLA multiplies bfloat16 in float32 and rounds each stored result
once, so the two paths can differ by one rounding per side at every stage that stores a
bfloat16 value (two ulps, ``2u`` of that stage's largest value), and autodiff's bias gradient
is a reduction XLA may accumulate in bfloat16 (its error grows with ``⌈log₂ n⌉ u``, pairwise
summation). Each bound below counts those stages; a wrong rule (a missing cast back, a
BatchNorm term dropped) is off by O(1), not by a few ``u``.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numerics import norm_rel_err

from jaxnn import cli
from jaxnn._checks import refuse_float16
from jaxnn.backprop import value_and_grad
from jaxnn.batchnorm import batchnorm
from jaxnn.combinators import intermediates
from jaxnn.layers import dense
from jaxnn.networks import mlp
from jaxnn.run import RunConfig, run
from jaxnn.train import TrainState, make_train_step

BF16 = jnp.bfloat16
F32 = jnp.dtype(jnp.float32)
U = float(jnp.finfo(BF16).eps) / 2  # 2⁻⁸, bfloat16's unit roundoff
LOSS = "softmax_cross_entropy_with_integer_labels"
_NORMAL = jax.nn.initializers.normal(1.0)


def _leafwise(a, b):
    """``{path: norm_rel_err}`` for two pytrees of the same structure."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(a)]
    return {
        p: norm_rel_err(x, y)
        for p, x, y in zip(paths, jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    }


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    ("x_dtype", "output_dtype"),
    [(jnp.float32, None), (jnp.float32, jnp.float32), (BF16, None)],
)
@pytest.mark.parametrize("batch", [8, 64])
def test_dense_bf16_backward_matches_autodiff_and_keeps_the_primal_dtypes(
    jit, x_dtype, output_dtype, batch
):
    layer = dense(16, param_dtype=jnp.float32, compute_dtype=BF16, output_dtype=output_dtype,
                  b_init=_NORMAL)  # fmt: skip
    params, state = layer.init(jax.random.key(batch), (batch, 20))
    x = jax.random.normal(jax.random.key(1), (batch, 20)).astype(x_dtype)
    maybe_jit = jax.jit if jit else (lambda f: f)
    y, _, backward = maybe_jit(lambda p, x: layer.vjp(p, state, x, train=False))(params, x)
    assert y.dtype == (output_dtype or BF16)
    dy = jax.random.normal(jax.random.key(2), y.shape).astype(y.dtype)
    hand = maybe_jit(lambda b, dy: b(dy))(backward, dy)
    y_ref, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=False)[0], params, x)
    auto = maybe_jit(vjp)(dy)
    # dparams in the params' dtype (float32 master weights), dx in the input's dtype.
    assert jax.tree.map(lambda g: g.dtype, hand) == ({"b": jnp.float32, "w": jnp.float32}, x_dtype)
    assert jax.tree.map(lambda g: g.dtype, auto) == jax.tree.map(lambda g: g.dtype, hand)
    # One rounding per side (2u); autodiff's bias sum may accumulate in bfloat16.
    bound = (2 + math.ceil(math.log2(batch))) * U
    errors = _leafwise(hand, auto)
    assert max(errors.values()) <= bound, errors
    assert norm_rel_err(y, y_ref) <= 2 * U  # under jit XLA may skip the rounding before a cast


def test_dense_bf16_hand_backward_is_the_exact_vjp_rounded_once():
    """Against float64 products of the bfloat16 operands: one rounding of the float32 sum."""
    layer = dense(16, param_dtype=jnp.float32, compute_dtype=BF16, b_init=_NORMAL)
    params, state = layer.init(jax.random.key(0), (64, 20))
    x = jax.random.normal(jax.random.key(1), (64, 20), jnp.float32)
    y, _, backward = jax.jit(lambda p, x: layer.vjp(p, state, x, train=False))(params, x)
    dy = jax.random.normal(jax.random.key(2), y.shape).astype(BF16)
    dparams, dx = jax.jit(lambda b, dy: b(dy))(backward, dy)
    xc, wc, dyc = (np.asarray(a.astype(BF16), np.float64) for a in (x, params["w"], dy))
    f32 = 64 * float(jnp.finfo(jnp.float32).eps)  # float32 accumulation of <= 64 terms
    for got, exact, mag in (
        (dparams["w"], xc.T @ dyc, np.abs(xc).T @ np.abs(dyc)),
        (dparams["b"], dyc.sum(0), np.abs(dyc).sum(0)),
        (dx, dyc @ wc.T, np.abs(dyc) @ np.abs(wc).T),
    ):
        err = np.abs(np.asarray(got, np.float64) - exact)
        assert np.all(err <= U * np.abs(exact) + f32 * mag)


# ----------------------------------------------------------------------------- batchnorm


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("x_dtype", "compute_dtype"), [(BF16, None), (jnp.float32, BF16)])
def test_batchnorm_on_bf16_normalises_in_float32_and_returns_the_compute_dtype(
    train, x_dtype, compute_dtype
):
    layer = batchnorm(param_dtype=jnp.float32, compute_dtype=compute_dtype)
    params, state = layer.init(None, (64, 8))
    state = state._replace(mean=jnp.full(8, 3.0, jnp.float32), var=jnp.full(8, 4.0, jnp.float32))
    x = (3.0 + 2.0 * jax.random.normal(jax.random.key(1), (64, 8))).astype(x_dtype)
    y, new_state, backward = jax.jit(lambda p, x: layer.vjp(p, state, x, train=train))(params, x)
    assert y.dtype == BF16
    assert all(a.dtype == jnp.float32 for a in (new_state.mean, new_state.var))
    # The statistics of the bfloat16-valued input, in float64: float32-accurate, not bf16's.
    xv = np.asarray(x, np.float64)
    if train:
        mean, var = xv.mean(0), xv.var(0)
        np.testing.assert_allclose(new_state.mean, 0.9 * 3.0 + 0.1 * mean, rtol=1e-6)
        np.testing.assert_allclose(new_state.var, 0.9 * 4.0 + 0.1 * var * 64 / 63, rtol=1e-6)
    else:
        mean, var = np.full(8, 3.0), np.full(8, 4.0)
    expected = (xv - mean) / np.sqrt(var + 1e-5)
    assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= U * np.abs(expected) + 1e-5)
    dy = jax.random.normal(jax.random.key(2), y.shape).astype(BF16)
    hand = jax.jit(lambda b, dy: b(dy))(backward, dy)
    _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=train)[0], params, x)
    auto = jax.jit(vjp)(dy)
    assert jax.tree.map(lambda g: g.dtype, hand) == (
        {"beta": jnp.float32, "gamma": jnp.float32},
        x_dtype,
    )
    assert jax.tree.map(lambda g: g.dtype, auto) == jax.tree.map(lambda g: g.dtype, hand)
    errors = _leafwise(hand, auto)  # float32 inside; dx rounded once to its dtype per side
    assert max(errors.values()) <= 2 * U, errors


# ----------------------------------------------------------------------------- the network


def _net(compute_dtype, param_dtype=jnp.float32, dropout=0.1):
    return mlp([64, 32, 10], "relu", batchnorm=True, dropout=dropout, param_dtype=param_dtype,
               compute_dtype=compute_dtype, b_init=_NORMAL)  # fmt: skip


def _batch(dtype=jnp.float32, batch=32):
    x = jax.random.normal(jax.random.key(1), (batch, 64)).astype(dtype)
    return x, jax.random.randint(jax.random.key(2), (batch,), 0, 10)


def test_mlp_bf16_runs_bf16_between_layers_and_returns_float32_logits():
    net = _net(BF16)
    params, state = net.init(jax.random.key(0), (32, 64))
    x, _ = _batch()
    y, new_state, outputs = jax.jit(
        lambda p, s, x: intermediates(net, p, s, x, train=True, key=jax.random.key(3))
    )(params, state, x)
    assert y.dtype == jnp.float32
    dtypes = {k: v.dtype for k, v in outputs.items()}
    assert dtypes.pop("dense_8") == dtypes.pop("identity_9") == jnp.float32  # the output cast
    assert set(dtypes.values()) == {jnp.dtype(BF16)}, dtypes  # dense, BN, relu, dropout
    assert {a.dtype for a in jax.tree.leaves((params, new_state)) if a.ndim} == {F32}


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_bf16_manual_and_autodiff_gradients_agree(seed):
    """Both paths from the same forward; per leaf, the stages that store bfloat16 on the way
    from the loss (the loss gradient's cast, each dense and BatchNorm dx, the leaf) plus the
    bias reduction's ``⌈log₂ 32⌉``."""
    net = _net(BF16)
    params, state = net.init(jax.random.key(seed), (32, 64))
    x, labels = _batch()
    results = {
        grad: jax.jit(
            lambda p, s, x, t, grad=grad: value_and_grad(net, LOSS, grad=grad)(
                p, s, x, t, train=True, key=jax.random.key(seed + 5)
            )
        )(params, state, x, labels)
        for grad in ("autodiff", "manual")
    }
    (loss_a, state_a), grads_a = results["autodiff"]
    (loss_m, state_m), grads_m = results["manual"]
    assert loss_a == loss_m and loss_a.dtype == jnp.float32  # the same forward
    jax.tree.map(np.testing.assert_array_equal, state_a, state_m)
    assert {g.dtype for g in jax.tree.leaves((grads_a, grads_m))} == {jnp.dtype(jnp.float32)}
    stages = 1 + 5 + 1  # the loss gradient's cast, 3 dense + 2 BatchNorm layers, the leaf
    errors = _leafwise(grads_m, grads_a)
    assert max(errors.values()) <= (stages + math.ceil(math.log2(32))) * U, errors


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
def test_compute_dtype_equal_to_the_params_dtype_is_bit_identical_to_none(grad):
    """float64 params (the conftest's x64) with compute_dtype=float64 cast nothing."""
    x, labels = _batch(jnp.float64)
    out = {}
    for compute_dtype in (None, jnp.float64):
        net = _net(compute_dtype, param_dtype=jnp.float64)
        params, state = net.init(jax.random.key(0), (32, 64))
        vg = value_and_grad(net, LOSS, grad=grad)
        out[compute_dtype] = jax.jit(
            lambda p, s, x, t, vg=vg: vg(p, s, x, t, train=True, key=jax.random.key(5))
        )(params, state, x, labels)
        assert out[compute_dtype][0][0].dtype == jnp.float64
    jax.tree.map(np.testing.assert_array_equal, out[None], out[jnp.float64])


def test_a_bf16_train_step_keeps_float32_params_and_its_matmuls_are_bf16():
    with jax.enable_x64(False):
        net = _net(BF16)
        ts = TrainState.create(net, optax.adam(1e-3), jax.random.key(0), (32, 64))
        x, labels = _batch()
        step = make_train_step(net, LOSS, optax.adam(1e-3), grad="manual", donate=False)
        hlo = step.lower(ts, x, labels).as_text()
        new_ts, loss = step(ts, x, labels)
    assert loss.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves((new_ts.params, new_ts.state)) if a.ndim} == {
        jnp.dtype(jnp.float32)
    }
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ts.params),
               jax.tree.leaves(new_ts.params), strict=True))  # fmt: skip
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    # 3 forward matmuls, then dw for each dense layer and dx for the two above the first.
    assert len(dots) >= 3 + 3 + 2
    for line in dots:
        assert re.search(r"\(tensor<\S+xbf16>, tensor<\S+xbf16>\) -> tensor<\S+xbf16>", line), line


@pytest.mark.parametrize(
    ("factory", "who"),
    [
        (lambda d: mlp([4, 2], compute_dtype=d), "mlp: compute_dtype"),
        (lambda d: mlp([4, 2], output_dtype=d), "mlp: output_dtype"),
        (lambda d: dense(3, compute_dtype=d), "dense: compute_dtype"),
        (lambda d: batchnorm(compute_dtype=d), "batchnorm: compute_dtype"),
    ],
)
@pytest.mark.parametrize(
    ("dtype", "got"), [(jnp.int32, "got dtype int32"), ("bf16", "got str 'bf16'"), (bool, "bool")]
)
def test_a_non_floating_compute_dtype_is_refused_saying_what_to_pass(factory, who, dtype, got):
    with pytest.raises(TypeError, match=rf"{who} must be a floating-point dtype .*{got}"):
        factory(dtype)


def test_compute_dtype_names_are_accepted_as_strings():
    net = mlp([4, 2], compute_dtype="bfloat16")
    params, state = net.init(jax.random.key(0), (3, 5))
    y, _ = net.apply(params, state, jnp.ones((3, 5)), train=False)
    assert y.dtype == jnp.float32 and params["dense_0"]["w"].dtype == jnp.float64  # x64 tests


# ----------------------------------------------------------------------------- jaxnn train


@pytest.mark.slow  # two trainings on digits
def test_bf16_training_on_digits_is_within_half_a_point_of_float32():
    """The issue's acceptance: `jaxnn train`'s defaults (MLP 64-128-64-10 with BatchNorm,
    Adam 1e-3, 20 epochs), float32 vs bfloat16, same seeds. Measured on 10 seeds: the
    difference is one test example (0.28 points) or none; 359 test examples."""
    with jax.enable_x64(False):  # as `jaxnn train` runs: float32 params
        for seed in (0, 1):
            acc = {
                dtype: run(RunConfig(seed=seed, compute_dtype=dtype))["test"]["accuracy"]
                for dtype in ("float32", "bfloat16")
            }
            assert acc["bfloat16"] >= 0.97, acc
            assert abs(acc["bfloat16"] - acc["float32"]) <= 0.005, (seed, acc)


def test_jaxnn_train_compute_dtype_is_saved_and_a_resume_in_another_dtype_is_refused(
    tmp_path, capsys
):
    argv = ["train", "--hidden", "16", "--epochs", "1", "--out", str(tmp_path / "out"), "-q",
            "--checkpoint", str(tmp_path / "ckpt")]  # fmt: skip
    assert cli.main([*argv, "--compute-dtype", "bfloat16"]) == 0
    metrics = (tmp_path / "out" / "metrics.json").read_text()
    assert '"compute_dtype": "bfloat16"' in metrics
    capsys.readouterr()
    assert cli.main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "compute_dtype: saved 'bfloat16', now 'float32'" in err
    assert len(err.strip().splitlines()) == 1


def test_a_checkpoint_config_saved_before_compute_dtype_counts_as_float32():
    saved = RunConfig().to_json()
    del saved["compute_dtype"]
    assert RunConfig().differences(saved) == []
    assert RunConfig(compute_dtype="bfloat16").differences(saved) == [
        "compute_dtype: saved 'float32', now 'bfloat16'"
    ]


def test_run_refuses_an_unknown_compute_dtype():
    # float16 is no choice of `jaxnn train` (nor of mlp: see the refusals below).
    with pytest.raises(
        ValueError,
        match=r"compute_dtype must be one of \[?'?bfloat16'?, '?float32'?\]?, got .*'float16'",
    ):
        run(RunConfig(compute_dtype="float16", epochs=1))


# ----------------------------------------------------------------------------- float16, refused

FP16_REASON = (
    "is float16, which jaxnn refuses: float16's largest finite value is 65504 and its smallest "
    "normal 6.1e-5, so activations overflow to inf and small gradients (and Adam's eps=1e-8) "
    "underflow to 0 without loss scaling, which jaxnn does not do. Use jnp.bfloat16 (float32's "
    "exponent range) for mixed precision, jnp.float32 or jnp.float64 otherwise."
)

BAD_EDGE_ROWS = [
    (
        "mlp-compute-dtype-float16",
        lambda tmp_path: mlp([4, 2], compute_dtype=jnp.float16),
        TypeError,
        "mlp: compute_dtype " + FP16_REASON,
    ),
    (
        "mlp-param-dtype-float16",
        lambda tmp_path: mlp([4, 2], param_dtype="float16"),
        TypeError,
        "mlp: param_dtype " + FP16_REASON,
    ),
    (
        "mlp-output-dtype-float16",
        lambda tmp_path: mlp([4, 2], compute_dtype=BF16, output_dtype=np.float16),
        TypeError,
        "mlp: output_dtype is float16, which jaxnn refuses",
    ),
    (
        "dense-compute-dtype-float16",
        lambda tmp_path: dense(3, compute_dtype=np.dtype("float16")),
        TypeError,
        "dense: compute_dtype " + FP16_REASON,
    ),
    (
        "dense-param-dtype-float16",
        lambda tmp_path: dense(3, param_dtype=jnp.float16, name="fc"),
        TypeError,
        "fc: param_dtype " + FP16_REASON,
    ),
    (
        "batchnorm-compute-dtype-half",
        lambda tmp_path: batchnorm(compute_dtype="half"),
        TypeError,
        "batchnorm: compute_dtype is float16",
    ),
]


@pytest.mark.parametrize(
    "spelling", [jnp.float16, np.float16, "float16", np.dtype("float16"), jnp.ones(2, jnp.float16)]
)
def test_refuse_float16_reads_every_spelling_and_passes_the_others(spelling):
    with pytest.raises(TypeError, match=re.escape("params['w'] " + FP16_REASON)):
        refuse_float16(spelling, "params['w']")
    for ok in (BF16, jnp.float32, "float64", None, jnp.ones(2, BF16), np.ones(2, np.float32)):
        refuse_float16(ok, "x")  # no error


def test_bf16_params_and_compute_are_still_accepted():
    net = mlp([4, 2], batchnorm=True, param_dtype="bfloat16", compute_dtype=BF16)
    params, state = jax.eval_shape(lambda key: net.init(key, (3, 5)), jax.random.key(0))
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(BF16)}
    y, _ = jax.eval_shape(
        lambda p, s, x: net.apply(p, s, x, train=True), params, state, jnp.ones((3, 5))
    )
    assert y.dtype == jnp.float32
