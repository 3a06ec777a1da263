"""conv2d: the hand-derived backward (two convolutions and a sum) equals jax.vjp for every
geometry (strides, every padding form, dilation, groups, depthwise, no bias, odd sizes, strides
that do not tile the input); the forward equals a naive loop; init's fan-in; clear errors."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import RTOL, norm_rel_err

from jaxnn.backprop import manual
from jaxnn.conv import conv2d
from jaxnn.gradcheck import check_layer

_NORMAL = jax.nn.initializers.normal(1.0)  # non-zero biases, so their gradients are exercised


def _conv(features, kernel, **options):
    return conv2d(features, kernel, b_init=_NORMAL, **options)


def host_draws(layer, shape, seed):
    """``(params, state, x, rng)``: params and ``x`` drawn ~ N(0, 1) on the host.

    ``jax.random`` compiles afresh for every new shape (seconds each in float64); numpy draws
    compile nothing, so many geometries stay cheap to test.
    """
    rng = np.random.default_rng(seed)
    params, state = jax.eval_shape(lambda: layer.init(jax.random.key(0), shape))
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), params)
    return params, state, jnp.asarray(rng.standard_normal(shape)), rng


def check_vjp(variant, layer, shape, seed):
    """The hand backward equals jax.vjp of apply, run under ``variant`` (jit or not); the
    forward equals apply's. As numerics.check_layer_vjp, with host draws."""
    params, state, x, rng = host_draws(layer, shape, seed)
    y, new_state, backward = variant(lambda p, x: layer.vjp(p, state, x, train=False))(params, x)
    y_ref, vjp_ref = jax.vjp(lambda p, x: layer.apply(p, state, x, train=False)[0], params, x)
    assert norm_rel_err(y, y_ref) <= RTOL
    dy = jnp.asarray(rng.standard_normal(y.shape))
    assert norm_rel_err(variant(lambda b, dy: b(dy))(backward, dy), vjp_ref(dy)) <= RTOL
    assert new_state == state == {}


# Each: (features, kernel_size, options, input shape [N, H, W, C]).
CONFIGS = {
    "same": (4, 3, {}, (2, 5, 6, 3)),
    "valid-stride2-untiled": (3, 3, {"strides": 2, "padding": "VALID"}, (2, 8, 7, 2)),
    "int-padding": (2, 3, {"strides": 2, "padding": 1}, (1, 7, 7, 3)),
    "pair-padding": (2, (3, 2), {"padding": (2, 1)}, (1, 4, 5, 2)),
    "explicit-asymmetric": (3, (2, 3), {"strides": (3, 2), "padding": ((2, 0), (1, 3))},
                            (1, 9, 8, 2)),
    "padding-wider-than-kernel": (2, 1, {"strides": 3, "padding": 3}, (1, 4, 5, 2)),
    "stride-larger-than-kernel": (2, 2, {"strides": 3, "padding": "VALID"}, (2, 7, 8, 1)),
    "dilation-same-stride": (4, 2, {"strides": 2, "kernel_dilation": 3, "padding": "SAME"},
                             (1, 11, 10, 2)),
    "dilation-pair": (2, 3, {"kernel_dilation": (2, 1), "padding": "VALID"}, (1, 7, 5, 3)),
    "groups": (6, 3, {"feature_group_count": 3, "strides": 2, "padding": 1}, (2, 5, 6, 6)),
    "depthwise": (4, 3, {"feature_group_count": 4}, (2, 5, 5, 4)),
    "depthwise-multiplier": (6, (3, 1), {"feature_group_count": 3, "strides": (1, 2)},
                             (1, 4, 5, 3)),
    "no-bias": (3, 2, {"use_bias": False, "strides": 2}, (2, 5, 5, 2)),
    "one-by-one": (5, 1, {}, (3, 1, 1, 4)),
    "kernel-equals-input": (2, 3, {"padding": "VALID"}, (1, 3, 3, 2)),
}  # fmt: skip


class VjpTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_configuration(self):
        for seed, (features, kernel, options, shape) in enumerate(CONFIGS.values()):
            check_vjp(self.variant, _conv(features, kernel, **options), shape, seed)

    # Few distinct shapes: each new one compiles afresh, and the values vary with the seed.
    @chex.variants(with_jit=True)
    @settings(max_examples=12)
    @given(
        kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        padding=st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.integers(0, 2),
            st.tuples(
                st.tuples(st.integers(0, 3), st.integers(0, 3)),
                st.tuples(st.integers(0, 3), st.integers(0, 3)),
            ),
        ),
        groups=st.sampled_from([1, 2]),
        size=st.tuples(st.integers(5, 8), st.integers(5, 8)),
        use_bias=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_random_geometry(
        self, kernel, strides, dilation, padding, groups, size, use_bias, seed
    ):
        layer = conv2d(
            2 * groups, kernel, strides=strides, padding=padding, kernel_dilation=dilation,
            feature_group_count=groups, use_bias=use_bias, b_init=_NORMAL,
        )  # fmt: skip
        check_vjp(self.variant, layer, (2, *size, 2 * groups), seed)


def _naive_conv(x, w, b, strides, pads, dilation, groups):
    """The forward formula of conv2d's docstring, as loops (float64)."""
    x = np.pad(np.asarray(x), ((0, 0), *pads, (0, 0)))
    kh, kw, c_g, f_total = w.shape
    (sh, sw), (dh, dw), f_g = strides, dilation, f_total // groups
    oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, f_total))
    for o, p, f in itertools.product(range(oh), range(ow), range(f_total)):
        g = f // f_g
        for i, j in itertools.product(range(kh), range(kw)):
            patch = x[:, o * sh + i * dh, p * sw + j * dw, g * c_g : (g + 1) * c_g]
            y[:, o, p, f] += patch @ w[i, j, :, f]
    return y + (0 if b is None else np.asarray(b))


@pytest.mark.parametrize(
    ("features", "kernel", "options", "shape", "pads"),
    [
        (4, 3, {}, (2, 5, 6, 3), ((1, 1), (1, 1))),
        (3, 3, {"strides": 2, "padding": "SAME"}, (1, 6, 7, 2), ((0, 1), (1, 1))),
        (6, (2, 3), {"strides": (3, 2), "padding": ((2, 0), (1, 3)), "kernel_dilation": (2, 1),
                     "feature_group_count": 3}, (1, 9, 8, 6), ((2, 0), (1, 3))),
        (4, 2, {"strides": 2, "kernel_dilation": 3}, (1, 11, 10, 2), ((1, 2), (1, 1))),
    ],
    ids=["same", "same-stride2", "explicit-groups-dilation", "same-dilation"],
)  # fmt: skip
def test_forward_is_the_documented_formula(features, kernel, options, shape, pads):
    layer = _conv(features, kernel, **options)
    params, state, x, _ = host_draws(layer, shape, 0)
    y, _ = layer.apply(params, state, x, train=False)
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    expected = _naive_conv(
        x, np.asarray(params["w"]), params["b"], pair(options.get("strides", 1)), pads,
        pair(options.get("kernel_dilation", 1)), options.get("feature_group_count", 1),
    )  # fmt: skip
    assert params["w"].shape == (*k, shape[-1] // options.get("feature_group_count", 1), features)
    assert norm_rel_err(y, expected) <= RTOL


def test_rows_the_stride_never_reaches_get_no_gradient():
    # H = 8, k = 3, s = 2, VALID: OH = 3, the windows read rows 0..6; row 7 is never read.
    # W = 7: OW = 3, columns 0..6 all read.
    layer = _conv(2, 3, strides=2, padding="VALID")
    params, state, x, _ = host_draws(layer, (2, 8, 7, 3), 0)
    y, _, backward = layer.vjp(params, state, x, train=False)
    assert y.shape == (2, 3, 3, 2)
    _, dx = backward(jnp.ones_like(y))
    np.testing.assert_array_equal(dx[:, 7], 0.0)
    assert np.all(np.abs(dx[:, 6]) > 0)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (_conv(3, 2, strides=2, padding=1, kernel_dilation=(1, 2)), (2, 5, 6, 2)),
        (_conv(4, 3, feature_group_count=2, padding="VALID"), (2, 4, 5, 2)),
    ],
    ids=["stride-padding-dilation", "groups"],
)
def test_check_layer_passes(layer, shape):
    reports = check_layer(layer, shape)
    assert all(report.ok for report in reports.values())


def test_backward_is_differentiable_again():
    """Reverse over reverse: the derivatives of backward(dy) w.r.t. params, x and dy equal
    those of jax.vjp's (the backward is made of differentiable convolutions)."""
    layer = _conv(4, 3, strides=2, padding=1, feature_group_count=2)
    params, state, x, rng = host_draws(layer, (2, 5, 6, 4), 0)
    dy = jnp.asarray(rng.standard_normal((2, 3, 3, 4)))
    probe = jnp.asarray(rng.standard_normal((2, 5, 6, 4)))

    def hand(params, x, dy):
        dparams, dx = layer.vjp(params, state, x, train=False)[2](dy)
        return jnp.sum(probe * dx) + jnp.sum(dparams["w"] ** 2) + jnp.sum(dparams["b"] ** 2)

    def auto(params, x, dy):
        vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=False)[0], params, x)[1]
        dparams, dx = vjp(dy)
        return jnp.sum(probe * dx) + jnp.sum(dparams["w"] ** 2) + jnp.sum(dparams["b"] ** 2)

    got = jax.grad(hand, argnums=(0, 1, 2))(params, x, dy)
    want = jax.grad(auto, argnums=(0, 1, 2))(params, x, dy)
    assert norm_rel_err(got, want) <= RTOL


def test_manual_path_equals_autodiff():
    layer = _conv(3, 3, strides=2, feature_group_count=3)
    params, state, x, _ = host_draws(layer, (2, 6, 5, 3), 0)

    def loss(layer):
        return jax.jit(
            jax.grad(
                lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, state, x, train=True)[0])), (0, 1)
            )
        )

    assert norm_rel_err(loss(manual(layer))(params, x), loss(layer)(params, x)) <= RTOL


def test_dtypes_each_gradient_in_its_primals_dtype():
    layer = conv2d(3, 2, param_dtype=jnp.float32)
    params, state = layer.init(jax.random.key(0), (1, 4, 4, 2))
    assert params["w"].dtype == params["b"].dtype == jnp.float32
    x32 = jnp.ones((1, 4, 4, 2), jnp.float32)
    y, _, backward = layer.vjp(params, state, x32, train=False)
    (dparams, dx) = backward(jnp.ones_like(y))
    assert y.dtype == dx.dtype == dparams["w"].dtype == jnp.float32
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)  # promotes: y float64
    y, _, backward = layer.vjp(params64, state, x32, train=False)
    dparams, dx = backward(jnp.ones_like(y))
    assert y.dtype == jnp.float64 and dx.dtype == jnp.float32
    assert dparams["w"].dtype == jnp.float64


def test_init_shapes_and_lecun_fan_in():
    """lecun_normal: variance 1 / fan_in with fan_in = kh kw C/G (the HWIO kernel's receptive
    field times its in-axis). Over n = 3·3·16·256 normal samples the sample variance's relative
    standard error is √(2/n); five of them bound the check."""
    layer = conv2d(256, 3, feature_group_count=4)
    params, state = layer.init(jax.random.key(0), (1, 5, 5, 64))
    assert state == {}
    w = np.asarray(params["w"])
    assert w.shape == (3, 3, 16, 256) and params["b"].shape == (256,)
    np.testing.assert_array_equal(params["b"], 0.0)
    fan_in = 3 * 3 * 16
    tolerance = 5 * np.sqrt(2 / w.size)
    assert abs(w.var() * fan_in - 1) <= tolerance
    assert set(conv2d(2, 1, use_bias=False).init(jax.random.key(0), (1, 2, 2, 1))[0]) == {"w"}


def test_output_sizes_match_each_padding_form():
    x = jnp.ones((1, 7, 7, 1))
    sizes = {
        "SAME": (4, 4),  # ceil(7 / 2)
        "same": (4, 4),
        "VALID": (3, 3),  # floor((7 - 3) / 2) + 1
        1: (4, 4),  # floor((7 + 2 - 3) / 2) + 1
        (0, 2): (3, 5),
        ((0, 1), (2, 0)): (3, 4),
        ((1, 1), 0): (4, 3),  # a mix: as Flax, an int in the sequence pads both sides
    }
    for padding, (oh, ow) in sizes.items():
        layer = conv2d(1, 3, strides=2, padding=padding)
        params, state = layer.init(jax.random.key(0), x.shape)
        assert layer.apply(params, state, x, train=False)[0].shape == (1, oh, ow, 1), padding


# ----------------------------------------------------------------------------- errors


def _init_apply(layer, shape, x_shape=None):
    params, state = layer.init(jax.random.key(0), shape)
    return layer.apply(params, state, jnp.ones(x_shape or shape), train=False)


def test_groups_that_do_not_divide_the_channels_name_the_layer():
    with pytest.raises(ValueError, match=r"stem: feature_group_count=3 does not divide the 4 "):
        conv2d(6, 3, feature_group_count=3, name="stem").init(jax.random.key(0), (1, 5, 5, 4))
    with pytest.raises(ValueError, match=r"stem: feature_group_count=2 does not divide features"):
        conv2d(3, 3, feature_group_count=2, name="stem")
    layer = conv2d(4, 3, feature_group_count=2, name="stem")
    params, state = layer.init(jax.random.key(0), (1, 5, 5, 4))
    with pytest.raises(ValueError, match=r"stem: feature_group_count=2 does not divide the 3 "):
        layer.apply(params, state, jnp.ones((1, 5, 5, 3)), train=False)


@pytest.mark.parametrize(("shape", "hint"), [((5, 5, 3), r"x\[None\]"), ((2, 75), "reshape")])
def test_wrong_rank_input(shape, hint):
    layer = conv2d(2, 3)
    params, state = layer.init(jax.random.key(0), (1, 5, 5, 3))
    with pytest.raises(ValueError, match=rf"conv2d: input must be NHWC.*rank {len(shape)}.*{hint}"):
        layer.apply(params, state, jnp.ones(shape), train=False)
    with pytest.raises(ValueError, match=r"conv2d: input_shape must be NHWC"):
        layer.init(jax.random.key(0), shape)


def test_kernel_that_does_not_fit_the_input_channels():
    layer = conv2d(2, 3)
    with pytest.raises(ValueError, match=r"kernel w has shape \(3, 3, 3, 2\).*\(3, 3, 4, 2\)"):
        _init_apply(layer, (1, 5, 5, 3), (1, 5, 5, 4))
    params, state = layer.init(jax.random.key(0), (1, 5, 5, 3))
    with pytest.raises(ValueError, match=r"params must be a dict with keys \['b', 'w'\]"):
        layer.apply({"w": params["w"]}, state, jnp.ones((1, 5, 5, 3)), train=False)


@pytest.mark.parametrize(
    "padding", ["same-ish", (1, 2, 3), ((1, 2, 3), (0, 0)), ((1,), 2), 1.5, None, ((0, -1), 0)]
)
def test_malformed_padding(padding):
    with pytest.raises(
        ValueError, match=r"conv2d: (malformed|unknown) padding|padding must be >= 0"
    ):
        conv2d(2, 3, padding=padding)


@pytest.mark.parametrize(
    ("option", "value"),
    [("kernel_size", 0), ("strides", (1, 0)), ("kernel_dilation", -1), ("kernel_size", (2, 2, 2))],
)
def test_bad_window_hyperparameters(option, value):
    options = {"kernel_size": 3, option: value}
    with pytest.raises(ValueError, match=rf"conv2d: {option} must be a positive int or a pair"):
        conv2d(2, **options)


def test_window_larger_than_the_padded_input():
    with pytest.raises(ValueError, match=r"window \(5 along the height, dilation included\) is "
                                         r"larger than the padded input \(3 \+ 0 \+ 1 = 4\)"):  # fmt: skip
        conv2d(2, (3, 1), kernel_dilation=2, padding=((0, 1), (0, 0))).init(
            jax.random.key(0), (1, 3, 3, 1)
        )


def test_integer_input_and_features_refused():
    layer = conv2d(2, 1)
    params, state = layer.init(jax.random.key(0), (1, 2, 2, 1))
    with pytest.raises(TypeError, match="floating-point"):
        layer.apply(params, state, jnp.ones((1, 2, 2, 1), jnp.int32), train=False)
    with pytest.raises(ValueError, match="features must be a positive int"):
        conv2d(0, 3)
