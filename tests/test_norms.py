"""LayerNorm, GroupNorm, RMSNorm: hand backward = jax.vjp (first and second order), forward =
the textbook formula, the overflow guarantee, half-precision input, the edge cases (a batch of
one, constant input) and clear errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import RTOL, norm_rel_err

import jaxnn
from jaxnn.gradcheck import check_layer
from jaxnn.norms import groupnorm, layernorm, rmsnorm

FACTORIES = {"layernorm": layernorm, "groupnorm": groupnorm, "rmsnorm": rmsnorm}


def _random_params(layer, shape, seed):
    """init's params replaced by random ones (gamma near 1, beta ~ N(0, 1)), so that the
    gradient through gamma and the shift by beta are both exercised."""
    params, state = layer.init(None, shape)
    key = jax.random.key(seed)
    params = {
        k: (1.0 if k == "gamma" else 0.0) + jax.random.normal(jax.random.fold_in(key, i), v.shape)
        for i, (k, v) in enumerate(sorted(params.items()))
    }
    return params, state


def _hand_equals_vjp(layer, shape, seed, jit):
    params, state = _random_params(layer, shape, seed)
    k_x, k_dy = jax.random.split(jax.random.key(seed + 1))
    # A mean to subtract and a spread to divide by; the mean small or large against the spread
    # (jaxnn.statistics takes one pass or two accordingly).
    x = (3 + 7 * (seed % 2)) + 2 * jax.random.normal(k_x, shape)
    dy = jax.random.normal(k_dy, shape)

    def run(params, x, dy):  # both modes in one program: one compilation
        out = {}
        for train in (True, False):
            y, new_state, backward = layer.vjp(params, state, x, train=train)
            y_ref, vjp_ref = jax.vjp(
                lambda p, x, train=train: layer.apply(p, state, x, train=train)[0], params, x
            )
            out[train] = (y, new_state, backward(dy), y_ref, vjp_ref(dy))
        return out

    out = (jax.jit(run) if jit else run)(params, x, dy)
    for y, new_state, hand, y_ref, auto in out.values():
        assert new_state == {} and y.shape == shape
        assert norm_rel_err(y, y_ref) <= RTOL
        assert norm_rel_err(hand, auto) <= RTOL
    # One computation, whatever the mode.
    chex.assert_trees_all_equal(out[True][:3], out[False][:3])


def _both_vjps(layer, params, state, x, dy):
    """``(y, hand (dparams, dx), jax.vjp's)`` in train mode, in one compiled program."""

    @jax.jit
    def run(params, x, dy):
        y, _, backward = layer.vjp(params, state, x, train=True)
        auto = jax.vjp(lambda p, x: layer.apply(p, state, x, train=True)[0], params, x)[1](dy)
        return y, backward(dy), auto

    return run(params, x, dy)


# (factory, arguments, input shape): trailing and non-trailing axes, rank 1 to 4, groups from
# 1 (LayerNorm of a CNN) to C (InstanceNorm), batches of one.
CASES = [
    ("layernorm", {}, (5, 3)),
    ("layernorm", {"axis": -1}, (2, 3, 4)),
    ("layernorm", {"axis": (-2, -1)}, (2, 3, 4)),
    ("layernorm", {"axis": (1, 3)}, (2, 3, 2, 4)),
    ("layernorm", {"axis": (1, 2, 3)}, (1, 2, 3, 2)),
    ("layernorm", {}, (7,)),
    ("groupnorm", {"num_groups": 1}, (2, 6)),
    ("groupnorm", {"num_groups": 3}, (2, 6)),
    ("groupnorm", {"num_groups": 2}, (2, 3, 3, 4)),
    ("groupnorm", {"num_groups": 4}, (1, 2, 3, 4)),
    ("groupnorm", {"num_groups": 2}, (3, 5, 6)),
    ("rmsnorm", {}, (5, 3)),
    ("rmsnorm", {"axis": (-2, -1)}, (2, 3, 4)),
    ("rmsnorm", {"eps": None}, (1, 4)),
]


@pytest.mark.parametrize(("factory", "kwargs", "shape"), CASES, ids=lambda v: str(v))
def test_hand_backward_equals_jax_vjp(factory, kwargs, shape):
    _hand_equals_vjp(FACTORIES[factory](**kwargs), shape, seed=len(shape), jit=True)


def test_hand_backward_equals_jax_vjp_unjitted():
    # Op by op, as a user's first call runs it (each op compiles alone: one case only).
    _hand_equals_vjp(groupnorm(2), (2, 3, 3, 4), seed=0, jit=False)


@pytest.mark.parametrize(
    ("factory", "kwargs", "shape"),
    [
        *[
            (f, {**kw, "use_scale": scale, "use_bias": bias}, shape)
            for f, kw, shape in [
                ("layernorm", {"axis": (1, 2)}, (2, 3, 2, 2)),
                ("groupnorm", {"num_groups": 2}, (2, 3, 4)),
            ]
            for scale, bias in [(True, False), (False, True), (False, False)]
        ],
        ("rmsnorm", {"use_scale": False}, (3, 4)),
    ],
    ids=str,
)
def test_hand_backward_without_scale_or_bias(factory, kwargs, shape):
    layer = FACTORIES[factory](**kwargs)
    params, _ = layer.init(None, shape)
    flags = (("beta", kwargs.get("use_bias", False)), ("gamma", kwargs["use_scale"]))
    assert sorted(params) == [k for k, on in flags if on]
    _hand_equals_vjp(layer, shape, seed=3, jit=True)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (layernorm(axis=(-2, -1)), (3, 2, 4)),
        (groupnorm(2), (2, 2, 3, 4)),
        (rmsnorm(), (3, 5)),
    ],
    ids=["layernorm", "groupnorm", "rmsnorm"],
)
def test_check_layer_passes(layer, shape):
    reports = check_layer(layer, shape)
    assert sorted(reports) == ["eval", "train"] and all(r.ok for r in reports.values())


@pytest.mark.parametrize("factory", ["layernorm", "groupnorm", "rmsnorm"])
def test_reverse_over_reverse_through_the_hand_backward(factory):
    # The backward is written in differentiable operations: differentiating <backward(dy), v>
    # gives what differentiating autodiff's VJP gives (second derivatives, Hessian-vector
    # products), w.r.t. the input, the params and the cotangent.
    layer = {"layernorm": layernorm(), "groupnorm": groupnorm(2), "rmsnorm": rmsnorm()}[factory]
    shape = (2, 3, 4)
    params, state = _random_params(layer, shape, 0)
    k = jax.random.split(jax.random.key(1), 4)
    x, dy, vx = (jax.random.normal(k[i], shape) for i in range(3))
    vp = jax.tree.map(lambda p: jax.random.normal(k[3], p.shape), params)

    def pairing(dparams, dx):
        return jnp.sum(dx * vx) + sum(jnp.sum(dparams[n] * vp[n]) for n in params)

    def hand(params, x, dy):
        return pairing(*layer.vjp(params, state, x, train=True)[2](dy))

    def auto(params, x, dy):
        vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=True)[0], params, x)[1]
        return pairing(*vjp(dy))

    g_hand = jax.jit(jax.grad(hand, argnums=(0, 1, 2)))(params, x, dy)
    g_auto = jax.jit(jax.grad(auto, argnums=(0, 1, 2)))(params, x, dy)
    assert norm_rel_err(g_hand, g_auto) <= RTOL


# ----------------------------------------------------------------------------- the forward


def _reference(x, reduce, center, eps):
    """The textbook formula in float64 numpy (an independent computation)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(reduce, keepdims=True) if center else 0.0
    var = ((x - mean) ** 2).mean(reduce, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_forward_is_the_textbook_formula_and_the_same_in_both_modes():
    rng = np.random.default_rng(0)
    x = jnp.asarray(5 + 3 * rng.standard_normal((2, 3, 4, 6)))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    nchw = np.asarray(x).transpose(0, 3, 1, 2)  # PyTorch's layout: groups of channels on axis 1
    grouped = nchw.reshape(2, 3, 2, 3, 4)  # [N, G, C/G, H, W]
    expected = {
        "layernorm": _reference(x, -1, True, 1e-5) * gamma + beta,
        "layernorm_chw": _reference(x, (1, 2, 3), True, 1e-5),
        "groupnorm": (_reference(grouped, (2, 3, 4), True, 1e-5).reshape(nchw.shape)).transpose(
            0, 2, 3, 1
        )
        * gamma
        + beta,
        "rmsnorm": _reference(x, -1, False, 1e-6) * gamma,
    }
    layers = {
        "layernorm": (layernorm(), {"gamma": gamma, "beta": beta}),
        "layernorm_chw": (layernorm(axis=(1, 2, 3), use_scale=False, use_bias=False), {}),
        "groupnorm": (groupnorm(3), {"gamma": gamma, "beta": beta}),
        "rmsnorm": (rmsnorm(), {"gamma": gamma}),
    }
    for name, (layer, params) in layers.items():
        params = jax.tree.map(jnp.asarray, params)
        apply = jax.jit(layer.apply, static_argnames="train")
        y_train, state = apply(params, {}, x, train=True)
        y_eval, _ = apply(params, state, x, train=False)
        assert state == {}
        np.testing.assert_array_equal(y_train, y_eval)  # one computation, whatever the mode
        # float64, sums of at most 72 terms: a few hundred ulps at most.
        np.testing.assert_allclose(y_train, expected[name], rtol=1e-13, atol=1e-13, err_msg=name)


def test_init_makes_pytorch_shaped_params_and_no_state():
    params, state = layernorm(axis=(-3, -2, -1)).init(None, (2, 5, 4, 3))
    assert state == {} and params["gamma"].shape == (5, 4, 3) == params["beta"].shape
    np.testing.assert_array_equal(params["gamma"], 1.0)
    np.testing.assert_array_equal(params["beta"], 0.0)
    params, _ = layernorm(axis=(1, 3)).init(None, (2, 5, 4, 3))
    assert params["gamma"].shape == (5, 3)
    params, _ = groupnorm(4).init(None, (2, 5, 5, 8))
    assert params["gamma"].shape == (8,) == params["beta"].shape
    params, _ = rmsnorm().init(None, (2, 7))
    assert sorted(params) == ["gamma"] and params["gamma"].shape == (7,)
    params, _ = rmsnorm(use_scale=False).init(None, (2, 7))
    assert params == {}
    params, _ = layernorm(param_dtype=jnp.float32).init(None, (2, 7))
    assert params["gamma"].dtype == jnp.float32 == params["beta"].dtype


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (layernorm(), (1, 5)),
        (layernorm(axis=(1, 2, 3)), (1, 2, 2, 3)),
        (groupnorm(2), (1, 3, 3, 4)),
    ],
    ids=["layernorm", "layernorm_chw", "groupnorm"],
)
def test_a_batch_of_one_is_fine_and_examples_are_independent(layer, shape):
    # Unlike BatchNorm, each example is normalised on its own: a batch of one is fine in both
    # modes, and an example's output does not depend on the rest of the batch.
    params, state = _random_params(layer, shape, 0)
    x = jax.random.normal(jax.random.key(1), (4, *shape[1:]))
    apply = jax.jit(layer.apply, static_argnames="train")
    y_all, _ = apply(params, state, x, train=True)
    for i in range(4):
        for train in (True, False):
            y_one, _ = apply(params, state, x[i : i + 1], train=train)
            assert np.isfinite(np.asarray(y_one)).all()
            np.testing.assert_allclose(y_one, y_all[i : i + 1], rtol=1e-14, atol=1e-14)
    # ... and under vmap, one example at a time (negative axes fit the unbatched rank too).
    if layer.name == "layernorm" and shape == (1, 5):
        y_map = jax.jit(jax.vmap(lambda r: layer.apply(params, state, r, train=True)[0]))(x)
        np.testing.assert_allclose(y_map, y_all, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("factory", ["layernorm", "groupnorm", "rmsnorm"])
def test_constant_input_gives_finite_output_and_gradients(factory):
    layer = {"layernorm": layernorm(), "groupnorm": groupnorm(2), "rmsnorm": rmsnorm()}[factory]
    shape = (2, 3, 4)
    params, state = _random_params(layer, shape, 0)
    x = jnp.full(shape, 5.0)  # every group constant: variance 0 (5 · 12 sums exactly)
    dy = jax.random.normal(jax.random.key(2), shape)
    y, hand, auto = _both_vjps(layer, params, state, x, dy)
    for leaf in jax.tree.leaves((y, hand, auto)):
        assert np.isfinite(np.asarray(leaf)).all()
    if factory == "rmsnorm":  # x̂ = 5/√(25 + eps): no mean to subtract
        expected = 5 / np.sqrt(25 + 1e-6) * np.broadcast_to(params["gamma"], shape)
        np.testing.assert_allclose(y, expected, rtol=1e-15)
    else:  # x̂ = 0 exactly: y = beta
        np.testing.assert_array_equal(y, np.broadcast_to(params["beta"], shape))
        # dx = s (g - mean(g) - 0): the gradient of a constant group is finite, of size 1/√eps.
        assert float(jnp.max(jnp.abs(hand[1]))) < 10 / math.sqrt(1e-5)
    assert norm_rel_err(hand, auto) <= RTOL


# ----------------------------------------------------------------------------- extreme inputs

_U = np.random.default_rng(7).standard_normal((4, 32))
EXTREME = {
    "1e30": _U * 1e30,
    "1e-30": _U * 1e-30,
    "rows 1e30, 1, 1e-30, 1e20": _U * np.array([[1e30], [1.0], [1e-30], [1e20]]),
    "offset 1e30 + 1e24 u": 1e30 + 1e24 * _U,  # a mean far above the spread
    "float32-max": np.tile([3.4e38, -3.4e38], (4, 16)),
}
# Each as the layers see it: groups of M = 16 elements ([8, 16]; GroupNorm: [4, 2, 2, 8], 2
# groups of 4 channels).
_VIEWS = {
    "layernorm": (layernorm(param_dtype=jnp.float32), lambda a: a.reshape(8, 16), 1e-5, True),
    "groupnorm": (
        groupnorm(2, param_dtype=jnp.float32),
        lambda a: a.reshape(4, 2, 2, 8),
        1e-5,
        True,
    ),
    "rmsnorm": (rmsnorm(param_dtype=jnp.float32), lambda a: a.reshape(8, 16), 1e-6, False),
}


def _grouped(a):
    """[4, 2, 2, 8] -> [8, 16]: GroupNorm's groups (of each example) as rows."""
    return a.reshape(4, 2, 2, 2, 4).transpose(0, 3, 1, 2, 4).reshape(8, 16)


@pytest.mark.parametrize("factory", list(_VIEWS))
@pytest.mark.parametrize("name", list(EXTREME))
def test_float32_input_of_any_finite_spread_stays_finite_and_correct(factory, name):
    layer, view, eps, center = _VIEWS[factory]
    x = jnp.asarray(view(EXTREME[name]), jnp.float32)
    params, state = layer.init(None, x.shape)
    dy = jnp.asarray(np.random.default_rng(8).standard_normal(x.shape), jnp.float32)
    y, hand, auto = _both_vjps(layer, params, state, x, dy)
    for leaf in jax.tree.leaves((y, hand, auto)):
        assert np.isfinite(np.asarray(leaf)).all(), (factory, name)
    assert y.dtype == jnp.float32 and hand[1].dtype == jnp.float32
    # The float64 textbook formula, group by group (rows of 16).
    x64 = np.asarray(x, np.float64)
    rows = _grouped(x64) if factory == "groupnorm" else x64
    expected = _reference(rows, -1, center, eps)
    mean = rows.mean(-1, keepdims=True) if center else 0.0
    spread = np.max(np.abs(rows), -1, keepdims=True) / np.sqrt(
        ((rows - mean) ** 2).mean(-1, keepdims=True) + eps
    )
    got = _grouped(np.asarray(y, np.float64)) if factory == "groupnorm" else np.asarray(y)
    # Float32 rounding (u = eps32 / 2): the mean (or mean square) of M = 16 values is off by
    # about M u max|x|, which moves x̂ by that over √(var + eps); the scale and the rsqrt add
    # a few ulps of x̂ itself. Twice 2 M u = 2 M eps32 of each: a bound, not a fit (as
    # BatchNorm's test of the same guarantee).
    eps32, m = float(np.finfo(np.float32).eps), 16
    bound = 2 * m * eps32 * (spread + np.abs(expected))
    assert np.all(np.abs(got - expected) <= bound), (factory, name)
    # Σ x̂² = M var/(var + eps) <= M over each group: |x̂| <= √M (gamma = 1, beta = 0).
    assert np.all(np.abs(got) <= math.sqrt(m) * (1 + m * eps32)), (factory, name)
    # The hand backward and autodiff agree to float32 rounding of 16-element sums (M u each,
    # two of them, times a cancellation of at most a few in g - mean(g) - x̂ mean(g x̂)).
    for h, a in zip(jax.tree.leaves(hand), jax.tree.leaves(auto), strict=True):
        h, a = np.asarray(h, np.float64), np.asarray(a, np.float64)
        assert np.max(np.abs(h - a)) <= 4 * m * eps32 * max(np.max(np.abs(a)), 1e-300), (
            factory,
            name,
        )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("factory", ["layernorm", "groupnorm", "rmsnorm"])
def test_half_precision_input_takes_float32_statistics(factory, dtype):
    layer = {
        "layernorm": layernorm,
        "groupnorm": lambda **kw: groupnorm(2, **kw),
        "rmsnorm": rmsnorm,
    }[factory](param_dtype=jnp.float32)
    shape = (8, 2, 6)
    params, state = layer.init(None, shape)
    # Values whose statistics half-precision arithmetic would get badly wrong (mean 1000,
    # std 0.5: float16's ulp at 1000 is 0.5, and Σ x overflows float16 past 65504).
    x32 = 1000 + 0.5 * jax.random.normal(jax.random.key(0), shape, jnp.float32)
    x = x32.astype(dtype)

    @jax.jit
    def run(params, x):
        y, _, backward = layer.vjp(params, state, x, train=True)
        ref, _ = layer.apply(params, state, x.astype(jnp.float32), train=True)
        return y, backward(jnp.ones(shape, dtype)), ref

    y, (dparams, dx), ref = run(params, x)
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(dparams))
    # The same input values with float32 statistics on both sides: the only difference is the
    # final rounding of y to the half dtype, at most half an ulp of |y|: 2^(e - p - 1) for
    # 2^e <= |y| < 2^(e+1), p = 10 (float16) or 7 (bfloat16) significand bits; below 2^-14
    # (float16's smallest normal) the spacing is fixed.
    p = 7 if dtype == jnp.bfloat16 else 10
    ref = np.asarray(ref, np.float64)
    half_ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 2.0**-14))) - p - 1)
    assert np.all(np.abs(np.asarray(y, np.float64) - ref) <= half_ulp)


@pytest.mark.parametrize(
    "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64], ids=lambda d: d.__name__
)
def test_rmsnorm_eps_none_is_pytorchs_machine_epsilon(dtype):
    # torch.nn.RMSNorm(eps=None): finfo of the computation (opmath) dtype: float32's for
    # float16, bfloat16 and float32 input, float64's for float64.
    x = jnp.asarray([[1e-4, -2e-4, 3e-4]], dtype)  # mean square ~5e-8: eps matters
    expected_eps = float(jnp.finfo(jnp.promote_types(dtype, jnp.float32)).eps)
    p32 = {"param_dtype": jnp.float32}
    y_none, _ = rmsnorm(eps=None, **p32).apply(
        {"gamma": jnp.ones(3, jnp.float32)}, {}, x, train=True
    )
    y_eps, _ = rmsnorm(eps=expected_eps, **p32).apply(
        {"gamma": jnp.ones(3, jnp.float32)}, {}, x, train=True
    )
    np.testing.assert_array_equal(y_none, y_eps)


def test_in_a_network_manual_gradients_equal_autodiff():
    net = jaxnn.serial(
        jaxnn.dense(8),
        groupnorm(2),
        jaxnn.activation("tanh"),
        layernorm(),
        jaxnn.dense(4),
        rmsnorm(),
        jaxnn.dense(3),
    )
    params, state = net.init(jax.random.key(0), (1, 5))
    x, labels = jax.random.normal(jax.random.key(1), (1, 5)), jnp.asarray([2])
    loss = "softmax_cross_entropy_with_integer_labels"
    batch = (params, state, x, labels)
    manual = jax.jit(jaxnn.value_and_grad(net, loss, grad="manual"), static_argnames="train")
    (_, new_state), by_hand = manual(*batch, train=True)
    _, by_jax = jax.jit(jaxnn.value_and_grad(net, loss), static_argnames="train")(
        *batch, train=True
    )
    assert new_state == {}  # no layer has state: the network carries none
    assert norm_rel_err(by_hand, by_jax) <= RTOL


# ----------------------------------------------------------------------------- errors


def test_num_groups_that_does_not_divide_the_channels_is_refused():
    msg = r"gn: num_groups=3 does not divide the 8 channels.*divisors of 8: \[1, 2, 4, 8\]"
    with pytest.raises(ValueError, match=msg):
        groupnorm(3, name="gn").init(None, (2, 4, 4, 8))
    params, state = groupnorm(4).init(None, (2, 4, 4, 8))
    with pytest.raises(ValueError, match="groupnorm: num_groups=4 does not divide the 6"):
        groupnorm(4).apply(params, state, jnp.ones((2, 4, 4, 6)), train=True)
    for bad in (0, -2, 2.5, True, None):
        with pytest.raises(ValueError, match="groupnorm: num_groups must be a positive int"):
            groupnorm(bad)
    with pytest.raises(ValueError, match=r"groupnorm: x must be channels last.*rank >= 2"):
        groupnorm(1).apply(
            {"gamma": jnp.ones(4), "beta": jnp.zeros(4)}, {}, jnp.ones(4), train=True
        )


def test_params_of_the_wrong_shape_or_structure_are_refused():
    params, state = layernorm().init(None, (4, 3))
    with pytest.raises(ValueError, match=r"layernorm: gamma has shape \(3,\) but x.shape=\(4, 5\) needs \(5,\)"):  # fmt: skip
        layernorm().apply(params, state, jnp.ones((4, 5)), train=True)
    with pytest.raises(ValueError, match=r"norm: beta has shape \(2,\).*needs \(4,\)"):
        groupnorm(2, name="norm").apply(
            {"gamma": jnp.ones(4), "beta": jnp.zeros(2)}, {}, jnp.ones((2, 3, 4)), train=True
        )
    with pytest.raises(ValueError, match=r"rmsnorm: gamma has shape \(3,\).*needs \(2, 3\)"):
        rmsnorm(axis=(-2, -1)).apply({"gamma": jnp.ones(3)}, {}, jnp.ones((4, 2, 3)), train=True)
    with pytest.raises(ValueError, match=r"layernorm: params must be a dict with keys \['gamma'\], got \['beta', 'gamma'\]"):  # fmt: skip
        layernorm(use_bias=False).apply(params, state, jnp.ones((4, 3)), train=True)
    with pytest.raises(ValueError, match=r"rmsnorm: params must be a dict with keys \[\]"):
        rmsnorm(use_scale=False).apply({"gamma": jnp.ones(3)}, {}, jnp.ones((4, 3)), train=True)
    with pytest.raises(TypeError, match="gamma must be a floating-point array"):
        rmsnorm().apply({"gamma": jnp.ones(3, jnp.int32)}, {}, jnp.ones((4, 3)), train=True)


def test_bad_arguments_and_inputs_are_refused():
    for make in (layernorm, lambda **kw: groupnorm(2, **kw), rmsnorm):
        for eps in (0.0, -1e-5, math.inf):
            with pytest.raises(ValueError, match="eps must be a positive finite number"):
                make(eps=eps)
        with pytest.raises(TypeError, match="param_dtype is float16, which jaxnn refuses"):
            make(param_dtype=jnp.float16)
        with pytest.raises(TypeError, match="param_dtype must be a floating-point dtype"):
            make(param_dtype=jnp.int32)
    with pytest.raises(TypeError, match="layernorm: eps must be a positive number, got None"):
        layernorm(eps=None)
    with pytest.raises(TypeError, match="rmsnorm: eps must be a positive number or None"):
        rmsnorm(eps="small")
    for axis in ((), 1.0, True, (0, "a")):
        with pytest.raises(TypeError, match="layernorm: axis must be an int or a non-empty"):
            layernorm(axis=axis)
    params, state = layernorm().init(None, (4, 3))
    with pytest.raises(ValueError, match=r"layernorm: axis 2 does not fit an input of rank 2"):
        layernorm(axis=2).apply(params, state, jnp.ones((4, 3)), train=True)
    with pytest.raises(ValueError, match="names an axis twice"):
        layernorm(axis=(-1, 1)).init(None, (4, 3))
    with pytest.raises(ValueError, match="hold no elements"):
        layernorm().init(None, (4, 0))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        layernorm().apply(params, state, jnp.ones((4, 3), jnp.int32), train=True)
    with pytest.raises(TypeError, match="layernorm: input_shape must be a tuple of ints"):
        layernorm().init(None, 3)
    with pytest.raises(TypeError, match="train"):
        layernorm().apply(params, state, jnp.ones((4, 3)))
