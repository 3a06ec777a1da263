"""BatchNorm: matched to PyTorch and Flax fixtures, hand backward = jax.grad, state semantics."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import RTOL, norm_rel_err

from jaxnn import combinators, networks
from jaxnn.backprop import manual
from jaxnn.batchnorm import BatchNormState, batchnorm, population_statistics
from jaxnn.layers import activation, dense, dropout
from jaxnn.train import TrainState, fit_full_batch, make_train_step

FIXTURES = Path(__file__).parent / "fixtures"
REF = np.load(FIXTURES / "batchnorm_reference.npz")
META = json.loads((FIXTURES / "batchnorm_reference.json").read_text())


def _layer_for(case):
    args = META["cases"][case]["module_args"]
    if META["cases"][case]["library"] == "flax":
        return batchnorm(convention="flax", momentum=args["momentum"], eps=args["epsilon"])
    if args["momentum"] is None:
        return batchnorm(convention="cumulative", eps=args["eps"])
    return batchnorm(convention="pytorch", momentum=args["momentum"], eps=args["eps"])


def _grads(layer, params, state, x, w, train, grad):
    def f(params, x):
        y, _ = (manual(layer) if grad == "manual" else layer).apply(params, state, x, train=train)
        return jnp.sum(y * w)

    return jax.grad(f, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("grad", ["autodiff", "manual"])
@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_matches_reference_framework_in_float32(case, grad):
    # The fixtures are float32 results of PyTorch 2.13.0 / Flax (see the .json). jaxnn runs in
    # float32 too: both sides carry float32 rounding (eps 6e-8) through a handful of reductions
    # over <= 40 elements, and the comparison is norm-wise per array: 1e-6 is ~17 ulps.
    tol = 1e-6
    with jax.enable_x64(False):
        layer = _layer_for(case)
        r = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in REF.items() if k.startswith(case + "/")}
        params, state = layer.init(jax.random.key(0), r["x_eval"].shape)
        params = {"gamma": r["gamma"], "beta": r["beta"]}
        assert state.mean.dtype == jnp.float32
        for k in range(r["x_train"].shape[0]):
            x, w = r["x_train"][k], r["w_train"][k]
            dparams, dx = _grads(layer, params, state, x, w, True, grad)
            y, state = layer.apply(params, state, x, train=True)
            assert norm_rel_err(y, r["y_train"][k]) <= tol
            assert norm_rel_err(state.mean, r["running_mean"][k]) <= tol
            assert norm_rel_err(state.var, r["running_var"][k]) <= tol
            assert int(state.count) == k + 1
            assert norm_rel_err(dx, r["dx_train"][k]) <= tol
            assert norm_rel_err(dparams["gamma"], r["dgamma_train"][k]) <= tol
            assert norm_rel_err(dparams["beta"], r["dbeta_train"][k]) <= tol
        y, same = layer.apply(params, state, r["x_eval"], train=False)
        assert same is state
        dparams, dx = _grads(layer, params, state, r["x_eval"], r["w_eval"], False, grad)
        assert norm_rel_err(y, r["y_eval"]) <= tol
        assert norm_rel_err(dx, r["dx_eval"]) <= tol
        assert norm_rel_err(dparams["gamma"], r["dgamma_eval"]) <= tol
        assert norm_rel_err(dparams["beta"], r["dbeta_eval"]) <= tol


SHAPES_AXES = [
    ((5, 3), -1),
    ((4, 3, 2), -1),
    ((2, 3, 2, 4), -1),
    ((3, 4, 2), 1),
    ((3, 2, 4), (1, 2)),
]


class HandBackwardTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=8)
    @given(
        shape_axis=st.sampled_from(SHAPES_AXES),
        train=st.booleans(),
        convention=st.sampled_from(["pytorch", "flax", "cumulative"]),
        seed=st.integers(0, 2**16),
    )
    def test_equals_jax_grad(self, shape_axis, train, convention, seed):
        check_hand_backward(self.variant, shape_axis, train, convention, seed)


def check_hand_backward(variant, shape_axis, train, convention, seed):
    shape, axis = shape_axis
    layer = batchnorm(convention=convention, axis=axis)
    k = jax.random.split(jax.random.key(seed), 6)
    params, state = layer.init(k[0], shape)
    fshape = params["gamma"].shape
    params = {"gamma": 1 + jax.random.normal(k[1], fshape), "beta": jax.random.normal(k[2], fshape)}
    state = BatchNormState(
        jax.random.normal(k[3], fshape),
        jax.random.uniform(k[4], fshape, minval=0.5, maxval=2),
        state.count,
    )
    x = 3 + 2 * jax.random.normal(k[5], shape)
    dy = jax.random.normal(jax.random.key(seed + 1), shape)
    y, new_state, backward = variant(lambda p, x: layer.vjp(p, state, x, train=train))(params, x)
    y_ref, vjp_ref = jax.vjp(lambda p, x: layer.apply(p, state, x, train=train)[0], params, x)
    assert norm_rel_err(y, y_ref) <= RTOL
    assert norm_rel_err(backward(dy), vjp_ref(dy)) <= RTOL
    if not train:  # eval leaves the statistics as they were
        chex.assert_trees_all_equal(new_state, state)


def test_train_and_eval_semantics_and_init():
    layer = batchnorm()
    params, state = layer.init(jax.random.key(0), (4, 3))
    np.testing.assert_array_equal(state.mean, 0.0)
    np.testing.assert_array_equal(state.var, 1.0)
    assert int(state.count) == 0 and set(params) == {"gamma", "beta"}
    x = jnp.asarray([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0], [5.0, 1.0, 0.0], [7.0, 3.0, 4.0]])
    # Eval before any training step normalises with mean 0, var 1: y = x / sqrt(1 + eps).
    y, same = layer.apply(params, state, x, train=False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-15)
    assert same is state
    y, new = layer.apply(params, state, x, train=True)
    mean, var = np.mean(np.asarray(x), 0), np.var(np.asarray(x), 0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(new.mean, 0.1 * mean, rtol=1e-15)
    np.testing.assert_allclose(new.var, 0.9 + 0.1 * var * 4 / 3, rtol=1e-15)


def test_running_variance_conventions_differ_as_documented():
    x = jax.random.normal(jax.random.key(0), (5, 2)) * 3 + 1
    var = np.var(np.asarray(x), 0)
    _, s_torch = batchnorm().apply(*batchnorm().init(None, x.shape), x, train=True)
    _, s_flax = batchnorm(convention="flax").apply(*batchnorm().init(None, x.shape), x, train=True)
    bn_cum = batchnorm(convention="cumulative")
    _, s_cum = bn_cum.apply(*bn_cum.init(None, x.shape), x, train=True)
    np.testing.assert_allclose(s_torch.var, 0.9 + 0.1 * var * 5 / 4, rtol=1e-15)
    np.testing.assert_allclose(s_flax.var, 0.99 + 0.01 * var, rtol=1e-15)
    np.testing.assert_allclose(s_cum.var, var * 5 / 4, rtol=1e-15)  # first batch replaces init


def test_vmap_normalises_each_batch_separately_and_grad_works():
    layer = batchnorm()
    params, state = layer.init(None, (6, 3))
    xs = jax.random.normal(jax.random.key(1), (4, 6, 3)) * 2 + 5
    ys, states = jax.vmap(lambda x: layer.apply(params, state, x, train=True))(xs)
    for i in range(4):
        y, s = layer.apply(params, state, xs[i], train=True)
        np.testing.assert_allclose(ys[i], y, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(states.mean[i], s.mean, rtol=1e-14)
    g = jax.grad(
        lambda p: jnp.sum(
            jax.vmap(lambda x: manual(layer).apply(p, state, x, train=True)[0])(xs) ** 3
        )
    )(params)
    g_ref = jax.grad(
        lambda p: jnp.sum(jax.vmap(lambda x: layer.apply(p, state, x, train=True)[0])(xs) ** 3)
    )(params)
    assert norm_rel_err(g, g_ref) <= RTOL


def test_state_threads_through_mlp_and_train_step_and_optimizer_never_sees_it():
    net = networks.mlp([8, 8, 3], "sigmoid", batchnorm=True)
    params, state = net.init(jax.random.key(0), (16, 4))
    assert list(state) == ["batchnorm_1", "batchnorm_4"]  # the layers that have state
    assert isinstance(state["batchnorm_1"], BatchNormState)
    assert all(not isinstance(p, BatchNormState) for p in params.values())
    x = jax.random.normal(jax.random.key(1), (16, 4)) + 3
    labels = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    opt = optax.adam(1e-2)
    runs = {}
    for mode in ["autodiff", "manual"]:
        step = make_train_step(net, "softmax_cross_entropy_with_integer_labels", opt, grad=mode)
        runs[mode] = fit_full_batch(
            step,
            TrainState.create(net, opt, jax.random.key(0), params=params, state=state),
            x,
            labels,
            30,
        )
    final = runs["manual"][0]
    assert int(final.state["batchnorm_1"].count) == 30
    assert not np.allclose(final.state["batchnorm_4"].mean, 0.0)
    # As in test_backprop: 30 Adam steps of lr 1e-2 move parameters by <= 30 * 1e-2 * 1e-10.
    assert norm_rel_err(final.params, runs["autodiff"][0].params) <= 1e-9
    assert norm_rel_err(final.state, runs["autodiff"][0].state) <= 1e-9
    assert float(runs["manual"][1][-1]) < float(runs["manual"][1][0])


def test_constant_feature_gives_finite_output_and_gradients():
    layer = batchnorm()
    params, state = layer.init(None, (4, 2))
    x = jnp.asarray([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0], [5.0, 4.0]])  # feature 0 has zero variance
    y, new = layer.apply(params, state, x, train=True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(new.var))
    np.testing.assert_array_equal(y[:, 0], 0.0)
    for g in jax.tree.leaves(_grads(layer, params, state, x, jnp.ones_like(x) + x, True, "manual")):
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_statistics_in_float32(dtype):
    layer = batchnorm(param_dtype=jnp.float32)
    params, state = layer.init(None, (64, 2))
    # Values whose variance float16 arithmetic would get badly wrong (mean 1000, std 0.5).
    x32 = 1000 + 0.5 * jax.random.normal(jax.random.key(0), (64, 2), jnp.float32)
    x = x32.astype(dtype)
    y, new = layer.apply(params, state, x, train=True)
    assert y.dtype == dtype and new.mean.dtype == jnp.float32
    ref, ref_state = layer.apply(params, state, x.astype(jnp.float32), train=True)
    # Same input values, statistics in float32 on both sides: the only difference is the final
    # rounding of y to the half dtype, half an ulp of |y| <= 3: 2^-8 (bfloat16), 2^-11 (float16).
    ulp = 2.0**-7 if dtype == jnp.bfloat16 else 2.0**-10
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=3 * ulp / 2, rtol=0)
    np.testing.assert_array_equal(new.var, ref_state.var)


def test_bad_input_errors():
    layer = batchnorm()
    params, state = layer.init(None, (4, 3))
    with pytest.raises(ValueError, match="more than one value per feature"):
        layer.apply(params, state, jnp.ones((1, 3)), train=True)
    layer.apply(params, state, jnp.ones((1, 3)), train=False)  # eval of one example is fine
    with pytest.raises(ValueError, match=r"gamma has shape \(3,\).*feature shape \(5,\)"):
        layer.apply(params, state, jnp.ones((4, 5)), train=True)
    with pytest.raises(ValueError, match="eps must be a positive"):
        batchnorm(eps=0.0)
    with pytest.raises(ValueError, match="eps must be a positive"):
        batchnorm(eps=-1e-5)
    with pytest.raises(ValueError, match=r"weight of the NEW batch.*\(0, 1\]"):
        batchnorm(momentum=0.99 + 0.02)
    with pytest.raises(ValueError, match="weight of the NEW batch"):
        batchnorm(momentum=0.0)
    with pytest.raises(ValueError, match=r"weight of the OLD value.*\[0, 1\)"):
        batchnorm(convention="flax", momentum=1.0)
    with pytest.raises(ValueError, match="takes no momentum"):
        batchnorm(convention="cumulative", momentum=0.1)
    with pytest.raises(ValueError, match="convention must be one of"):
        batchnorm(convention="keras")
    with pytest.raises(ValueError, match="no axis to normalise over"):
        layer.apply(params, state, jnp.ones(3), train=True)
    with pytest.raises(ValueError, match="BatchNormState"):
        layer.apply(params, {}, jnp.ones((4, 3)), train=True)
    with pytest.raises(TypeError, match="floating-point"):
        layer.apply(params, state, jnp.ones((4, 3), jnp.int32), train=True)
    with pytest.raises(ValueError, match="mask must be a boolean"):
        layer.apply(params, state, jnp.ones((4, 3)), train=True, mask=jnp.ones(4))


def test_mask_excludes_padding_from_the_statistics():
    layer = batchnorm()
    params, state = layer.init(None, (6, 2))
    x = jax.random.normal(jax.random.key(0), (6, 2)) * 2 + 1
    mask = jnp.asarray([True, True, False, True, False, True])
    y, s = layer.apply(params, state, x, train=True, mask=mask)
    y_ref, s_ref = layer.apply(params, state, x[mask], train=True)
    np.testing.assert_allclose(y[mask], y_ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s.var, s_ref.var, rtol=1e-14)
    g = jax.grad(lambda x: jnp.sum(manual_apply(layer, params, state, x, mask) ** 2))(x)
    g_ref = jax.grad(
        lambda x: jnp.sum(layer.apply(params, state, x, train=True, mask=mask)[0] ** 2)
    )(x)
    assert norm_rel_err(g, g_ref) <= RTOL


def test_mask_selecting_too_few_examples_stays_finite():
    layer = batchnorm()
    params, state = layer.init(None, (3, 2))
    x = jnp.ones((3, 2))
    for mask in ([False, False, False], [False, True, False]):
        y, s = jax.jit(lambda x, m: layer.apply(params, state, x, train=True, mask=m))(
            x, jnp.asarray(mask)
        )
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(s.mean)) and np.all(np.isfinite(s.var))


def manual_apply(layer, params, state, x, mask):
    y, _, _ = layer.vjp(params, state, x, train=True, mask=mask)
    return y


MULTI_DEVICE_SCRIPT = Path(__file__).parent / "multidevice_batchnorm.py"


@pytest.mark.slow  # a process of 4 simulated devices
def test_multi_device_statistics_are_global_and_count_weighted():
    # XLA_FLAGS must be set before JAX starts: a separate process with 4 simulated CPU devices.
    # JAX_PLATFORMS=cpu: the 4 simulated devices are the host's, on a GPU machine too (the
    # default backend there has 1 device); PYTHONPATH: jaxnn imports whether installed or not.
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_ENABLE_X64": "1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    result = subprocess.run(
        [sys.executable, str(MULTI_DEVICE_SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL CHECKS PASSED" in result.stdout


# ----------------------------------------------------------------------------- extreme inputs

_U = np.random.default_rng(7).standard_normal((16, 3))
EXTREME = {
    "1e30": _U * 1e30,
    "1e-30": _U * 1e-30,
    "mixed": _U * np.array([1e30, 1.0, 1e-30]),
    "constant": np.full((16, 3), 1e30),  # its mean rounds: a "variance" of rounding
    "constant-exact": np.full((16, 3), 2.0**100),  # 16 * 2^100 sums exactly: variance 0
    "float32-max": np.tile([[3.4e38], [-3.4e38]], (8, 3)),
}


@pytest.mark.parametrize("name", list(EXTREME))
def test_float32_statistics_stay_finite_for_any_finite_spread(name):
    # Float32 input, float32 statistics: a variance of 1e60 is not representable, but the
    # normalised output, the gradients and the state are finite, and the training output is the
    # textbook formula (float64 reference, an independent computation).
    x = jnp.asarray(EXTREME[name], jnp.float32)
    layer = batchnorm(param_dtype=jnp.float32)
    params, state = layer.init(None, x.shape)
    y, new_state = layer.apply(params, state, x, train=True)
    y_eval, _ = layer.apply(params, new_state, x, train=False)
    dy = jnp.asarray(np.random.default_rng(8).standard_normal(x.shape), jnp.float32)
    _, _, backward = layer.vjp(params, state, x, train=True)
    hand = backward(dy)
    auto = jax.grad(
        lambda p, x: jnp.sum(layer.apply(p, state, x, train=True)[0] * dy), argnums=(0, 1)
    )(params, x)
    for leaf in jax.tree.leaves((y, y_eval, new_state, hand, auto)):
        assert np.isfinite(np.asarray(leaf)).all(), name
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean(0), x64.var(0)
    expected = (x64 - mean) / np.sqrt(var + 1e-5)
    # Float32 rounding (u = eps32 / 2): the mean of n = 16 values is off by about n u max|x|,
    # which moves x̂ by that over √(var + eps); the scale and the rsqrt add a few ulps of x̂
    # itself. Twice 2 n u = 4 n (eps32 / 2) of each: a bound, not a fit. (A constant feature
    # has var = 0: its x̂ is that rounding over the rounding, bounded by √n below.)
    eps32 = float(np.finfo(np.float32).eps)
    if name != "constant":
        spread = np.max(np.abs(x64), 0) / np.sqrt(var + 1e-5)
        bound = 2 * 16 * eps32 * (spread + np.abs(expected))
        assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= bound), name
    # The hand backward and jax.grad agree: float32 rounding of 16-element sums (n u each, two
    # of them, times a cancellation of at most a few in dy - mean(dy) - x̂ mean(dy x̂)).
    # Not for a constant feature: its "variance" is the mean's rounding, the hand rule assumes
    # Σ (x - mean) = 0 exactly, and the two differ at that rounding (both finite, above).
    for h, a in zip(jax.tree.leaves(hand), jax.tree.leaves(auto), strict=True):
        h, a = np.asarray(h, np.float64), np.asarray(a, np.float64)
        if name != "constant":
            assert np.max(np.abs(h - a)) <= 64 * eps32 * max(np.max(np.abs(a)), 1e-300), name
    if name == "constant-exact":  # x̂ = 0 exactly, y = beta
        np.testing.assert_array_equal(np.asarray(y), 0.0)
    # Whatever the input, Σ x̂² = n Var/(Var + eps) <= n over each feature: |x̂| <= √n.
    assert np.all(np.abs(np.asarray(y, np.float64)) <= np.sqrt(16) * (1 + 16 * eps32)), name


def test_a_variance_beyond_float32_saturates_the_running_state_finitely():
    # std 1e30: var 1e60 cannot be stored in float32; it is stored as float32's max
    # (documented in update_running), never inf.
    x = jnp.asarray(EXTREME["1e30"], jnp.float32)
    layer = batchnorm(param_dtype=jnp.float32)
    params, state = layer.init(None, x.shape)
    _, new_state = layer.apply(params, state, x, train=True)
    fmax = float(np.finfo(np.float32).max)
    np.testing.assert_allclose(np.asarray(new_state.var), 0.9 + 0.1 * fmax, rtol=1e-6)


# ------------------------------------------------- population statistics (Algorithm 2)

# Ioffe & Szegedy (2015), Algorithm 2: E[x] = E_B[mean_B], Var[x] = m/(m - 1) E_B[var_B], the
# statistics of each BatchNorm layer's input with the network in train mode. Computed here by
# hand in numpy, float64: every quantity passes through fewer than 64 roundings (sums of at
# most 7 * 3 terms, a two-pass variance, one sigmoid/tanh, an average over 5 batches) with
# O(1) condition (the data and weights are standard normal draws, |mean| ~ std), so the two
# computations agree to 64 * 2u ≈ 1.4e-14 relative; POP_RTOL allows a factor 5 over that.
POP_RTOL = 64 * 2 * np.finfo(np.float64).eps / 2 * 5
EPS = 1e-5


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _population_network(convention):
    """dense -> BN -> sigmoid -> dense -> BN -> tanh -> dense, the first pair nested."""
    bn = {"convention": convention, "eps": EPS}
    return combinators.serial(
        combinators.serial(dense(4), batchnorm(**bn), name="block"),
        activation("sigmoid"),
        dense(3),
        batchnorm(**bn),
        activation("tanh"),
        dense(2),
    )


def _population_params(net, rng):
    """The network's params, every leaf (γ and β included) drawn from N(1, 0.5²) / N(0, 1)."""
    params, state = net.init(jax.random.key(0), (7, 3))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        loc = 1.0 if "gamma" in name else 0.0
        return jnp.asarray(rng.normal(loc, 0.5 if "gamma" in name else 1.0, leaf.shape))

    return jax.tree_util.tree_map_with_path(draw, params), state


def _hand_forward(params, x, stats=None):
    """The network by hand in numpy: train mode (batch statistics, returned) or, with
    ``stats``, Algorithm 2's inference transform y = γ/√(Var+ε) x + (β - γ E/√(Var+ε))."""
    p = jax.tree.map(np.asarray, params)
    layers = [
        (p["block_0"]["dense_0"], p["block_0"]["batchnorm_1"], _sigmoid),
        (p["dense_2"], p["batchnorm_3"], np.tanh),
    ]
    h, batch_stats = x, []
    for k, (d, bn, act) in enumerate(layers):
        z = h @ d["w"] + d["b"]
        if stats is None:
            mean, var = z.mean(0), z.var(0)  # biased
            batch_stats.append((mean, var))
            y = bn["gamma"] * (z - mean) / np.sqrt(var + EPS) + bn["beta"]
        else:
            e, v = stats[k]
            scale = bn["gamma"] / np.sqrt(v + EPS)
            y = scale * z + (bn["beta"] - scale * e)
        h = act(y)
    return h @ p["dense_5"]["w"] + p["dense_5"]["b"], batch_stats


@pytest.mark.parametrize("convention", ["pytorch", "flax", "cumulative"])
def test_population_statistics_equal_algorithm_2_by_hand(convention):

    rng = np.random.default_rng(0)
    net = _population_network(convention)
    params, state = _population_params(net, rng)
    k, m = 5, 7
    batches = rng.normal(0.5, 2.0, (k, m, 3))
    # The state passed in holds trained running statistics: they must not enter the result.
    state = jax.tree.map(lambda a: a + 3 if a.dtype != jnp.int32 else a + 11, state)
    before = jax.tree.map(np.array, (params, state))

    pop = population_statistics(net, params, state, iter(list(batches)))

    per_batch = [_hand_forward(params, xb)[1] for xb in batches]
    expected = [
        (
            np.mean([b[layer][0] for b in per_batch], 0),
            m / (m - 1) * np.mean([b[layer][1] for b in per_batch], 0),
        )
        for layer in range(2)
    ]
    got = [pop["block_0"]["batchnorm_1"], pop["batchnorm_3"]]
    for (e, v), s in zip(expected, got, strict=True):
        assert isinstance(s, BatchNormState)
        np.testing.assert_allclose(s.mean, e, rtol=POP_RTOL, atol=POP_RTOL * np.max(np.abs(e)))
        np.testing.assert_allclose(s.var, v, rtol=POP_RTOL)
        assert int(s.count) == k
    # Evaluating with them is Algorithm 2's inference network (step 11), by hand.
    x_test = rng.normal(0.5, 2.0, (9, 3))
    y, _ = net.apply(params, pop, x_test, train=False)
    y_hand, _ = _hand_forward(params, x_test, expected)
    assert norm_rel_err(y, y_hand) <= POP_RTOL
    # Nothing passed in changed.
    chex.assert_trees_all_equal(jax.tree.map(np.array, (params, state)), before)


def test_population_statistics_take_tuples_masks_and_channels_last():

    rng = np.random.default_rng(1)
    # Channels last: [batch, positions, channels], statistics over batch and positions, so a
    # batch of m examples gives n = 4m values per channel (the paper's m' = |B| p q, §3.2).
    net = combinators.serial(batchnorm(axis=-1), activation("relu"))
    params, state = net.init(None, (5, 4, 2))
    xs = rng.normal(3.0, 2.0, (3, 5, 4, 2))
    labels = np.zeros(5)
    examples = np.asarray([True, True, False, True, True])  # 4 examples count, n = 16
    mask = jnp.asarray(np.repeat(examples[:, None], 4, axis=1))  # the reduced axes' shape
    pop = population_statistics(net, params, state, ((x, labels) for x in xs), mask=mask)
    sel = xs[:, examples]  # [3, 4, 4, 2]
    n = sel.shape[1] * sel.shape[2]
    mean = sel.mean(axis=(1, 2)).mean(0)
    var = n / (n - 1) * sel.var(axis=(1, 2)).mean(0)
    np.testing.assert_allclose(pop["batchnorm_0"].mean, mean, rtol=POP_RTOL)
    np.testing.assert_allclose(pop["batchnorm_0"].var, var, rtol=POP_RTOL)


def test_population_statistics_with_dropout_use_one_key_per_batch():

    rng = np.random.default_rng(2)
    net = combinators.serial(dense(6), dropout(0.5), dense(4), batchnorm(), activation("relu"))
    params, state = net.init(jax.random.key(0), (8, 3))
    xs = rng.normal(size=(4, 8, 3))
    with pytest.raises(ValueError, match="needs key="):
        population_statistics(net, params, state, xs)
    key = jax.random.key(7)
    pop = population_statistics(net, params, state, xs, key=key)
    # Batch i runs in train mode with key fold_in(key, i): dropout active. The BN input read
    # with intermediates under that key, then Algorithm 2 by hand.
    inputs = [
        np.asarray(
            combinators.intermediates(
                net, params, state, x, train=True, key=jax.random.fold_in(key, i)
            )[2]["dense_2"]
        )
        for i, x in enumerate(xs)
    ]
    mean = np.mean([z.mean(0) for z in inputs], 0)
    var = 8 / 7 * np.mean([z.var(0) for z in inputs], 0)
    np.testing.assert_allclose(pop["batchnorm_3"].mean, mean, rtol=POP_RTOL, atol=1e-15)
    np.testing.assert_allclose(pop["batchnorm_3"].var, var, rtol=POP_RTOL)
    without_dropout = [np.asarray(x @ params["dense_0"]["w"] + params["dense_0"]["b"]) for x in xs]
    assert not np.allclose(inputs[0], without_dropout[0] @ np.asarray(params["dense_2"]["w"]))
    other = population_statistics(net, params, state, xs, key=jax.random.key(8))
    assert not np.allclose(other["batchnorm_3"].var, pop["batchnorm_3"].var)


def test_population_statistics_leave_the_layer_convention_alone_under_jit():
    # The population mode is part of jit's cache key: a train step traced before and called
    # after population_statistics still updates by the layer's own convention.

    net = combinators.serial(dense(3), batchnorm(convention="pytorch", momentum=0.1))
    params, state = net.init(jax.random.key(0), (6, 2))
    x = jax.random.normal(jax.random.key(1), (6, 2))
    train = jax.jit(lambda p, s, x: net.apply(p, s, x, train=True)[1])
    before = train(params, state, x)
    pop = population_statistics(net, params, state, [x])
    after = train(params, state, x)
    chex.assert_trees_all_equal(before, after)
    z = np.asarray(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    np.testing.assert_allclose(after["batchnorm_1"].mean, 0.1 * z.mean(0), rtol=POP_RTOL)
    np.testing.assert_allclose(pop["batchnorm_1"].mean, z.mean(0), rtol=POP_RTOL)


def test_population_statistics_bad_input():

    net = combinators.serial(dense(3), batchnorm())
    params, state = net.init(jax.random.key(0), (4, 2))
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="batches is empty"):
        population_statistics(net, params, state, [])
    with pytest.raises(ValueError, match="more than one value per feature"):
        population_statistics(net, params, state, [jnp.ones((1, 2))])
    with pytest.raises(ValueError, match="empty tuple"):
        population_statistics(net, params, state, [()])
    plain = combinators.serial(dense(3), activation("relu"))
    p2, s2 = plain.init(jax.random.key(0), (4, 2))
    with pytest.raises(ValueError, match="holds no BatchNormState"):
        population_statistics(plain, p2, s2, [x])
    with pytest.raises(TypeError, match="must be a jaxnn Layer"):
        population_statistics(lambda x: x, params, state, [x])


# ----------------------------------------------------------------------------- bad input, table


@functools.cache
def _pop_net():
    """One network for the rows below: population_statistics compiles its step once for it."""
    net = combinators.serial(dense(3), batchnorm(), activation("relu"), dense(3), batchnorm())
    params, state = net.init(jax.random.key(0), (4, 2))
    return net, params, state


def _pop_batches(nan_at=None, value=np.nan):
    xs = np.random.default_rng(0).normal(size=(3, 4, 2))
    if nan_at is not None:
        xs[nan_at] = value
    return xs


def _pop_nan_input(tmp_path):
    net, params, state = _pop_net()
    xs = _pop_batches((1, 2, 1))
    xs[1, 3, 0] = np.inf
    return population_statistics(net, params, state, list(xs))


def _pop_inf_input_device(tmp_path):
    net, params, state = _pop_net()
    xs = jnp.asarray(_pop_batches((2, 0, 0), -np.inf))
    return population_statistics(net, params, state, [(x, None) for x in xs])


def _pop_nan_params(tmp_path):
    net, params, state = _pop_net()
    params = {**params, "dense_3": {**params["dense_3"], "b": params["dense_3"]["b"] * np.nan}}
    return population_statistics(net, params, state, _pop_batches())


def _pop_overflow(tmp_path):
    net, params, state = _pop_net()
    params = {**params, "dense_0": {**params["dense_0"], "w": params["dense_0"]["w"] * 1e300}}
    return population_statistics(net, params, state, _pop_batches() * 1e10)


BAD_EDGE_ROWS = [
    (
        "batchnorm-param-dtype-float16",
        lambda tmp_path: batchnorm(param_dtype=jnp.float16),
        TypeError,
        "batchnorm: param_dtype is float16, which jaxnn refuses: float16's largest finite value "
        "is 65504",
    ),
    (
        "batchnorm-compute-dtype-float16",
        lambda tmp_path: batchnorm(compute_dtype="float16", name="bn"),
        TypeError,
        "bn: compute_dtype is float16, which jaxnn refuses",
    ),
    (
        "batchnorm-param-dtype-int",
        lambda tmp_path: batchnorm(param_dtype=jnp.int32),
        TypeError,
        "batchnorm: param_dtype must be a floating-point dtype (jnp.bfloat16, jnp.float32 or "
        "jnp.float64) or None, got dtype int32. Params are what the gradients update",
    ),
    (
        "population-nan-input",
        _pop_nan_input,
        ValueError,
        "population_statistics: batch 1's input x (shape (4, 2)) holds 2 non-finite value(s) "
        "(NaN or inf), the first at index (2, 1)",
    ),
    (
        "population-inf-input-on-device",
        _pop_inf_input_device,
        ValueError,
        "batch 2's input x (shape (4, 2)) holds 1 non-finite value(s) (NaN or inf), the first at "
        "index (0, 0)",
    ),
    (
        "population-nan-params",
        _pop_nan_params,
        ValueError,
        "the statistics of ['batchnorm_4'] are non-finite (NaN or inf) although every batch's "
        "input was finite; the network's params or state are non-finite: these params hold NaN "
        "or inf: ['dense_3']['b']",
    ),
    (
        "population-overflow",
        _pop_overflow,
        ValueError,
        "the statistics of ['batchnorm_1'], ['batchnorm_4'] are non-finite (NaN or inf) although "
        "every batch's input was finite; the params are finite",
    ),
]


def test_population_statistics_ignore_non_finite_padding_that_the_mask_excludes():
    # Padding rows are left out of every statistic, so NaN there is no error and no NaN.
    net, params, state = _pop_net()
    xs = _pop_batches()
    padded = np.concatenate([xs, np.full((3, 2, 2), np.nan)], axis=1)  # [3, 6, 2]
    mask = jnp.asarray([True] * 4 + [False] * 2)
    pop = population_statistics(net, params, state, padded, mask=mask)
    ref = population_statistics(net, params, state, xs)
    for name in ("batchnorm_1", "batchnorm_4"):
        np.testing.assert_allclose(pop[name].mean, ref[name].mean, rtol=POP_RTOL, atol=1e-15)
        np.testing.assert_allclose(pop[name].var, ref[name].var, rtol=POP_RTOL)


def test_param_dtype_is_kept_as_given_and_bfloat16_still_accepted():
    for dtype in (jnp.float32, np.dtype("float32"), "bfloat16"):
        params, state = batchnorm(param_dtype=dtype).init(None, (4, 3))
        assert params["gamma"].dtype == state.var.dtype == jnp.dtype(dtype)


def test_a_batch_of_one_in_training_is_refused_for_vectors_and_counts_pixels_for_images():
    # [1, C]: one value per feature, no variance: refused (PyTorch raises "Expected more than 1
    # value per channel when training"). [1, H, W, C]: BatchNorm over the channels of NHWC
    # input reduces (N, H, W), so one image gives H·W values per channel: accepted, as
    # PyTorch's BatchNorm2d accepts a batch of one image. [1, 1, 1, C] is refused again.
    layer = batchnorm()
    params, state = layer.init(None, (1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"x.shape=\(1, 3\) \(1 value\(s\) per feature\)"):
        layer.apply(params, state, jnp.ones((1, 3)), train=True)
    with pytest.raises(ValueError, match="more than one value per feature"):
        layer.apply(params, state, jnp.ones((1, 1, 1, 3)), train=True)
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    y, new = layer.apply(params, state, x, train=True)
    np.testing.assert_allclose(np.asarray(y).mean((0, 1, 2)), 0, atol=1e-6)
    assert int(new.count) == 1
