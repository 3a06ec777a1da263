"""Ready-made networks: mlp equals jax.vjp, its layout (BatchNorm between the affine map and the
non-linearity, dropout after it), its dtypes, and its argument errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import check_layer_vjp, norm_rel_err

import jaxnn
from jaxnn import combinators, networks
from jaxnn.activations import ACTIVATIONS
from jaxnn.batchnorm import BatchNormState

SMOOTH = ["sigmoid", "tanh", "softplus", "gelu", "gelu_tanh", "silu", "elu", "selu", "identity", "softmax", "log_softmax"]  # fmt: skip
NORMAL = jax.nn.initializers.normal(1.0)


class MlpVjpTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=10)
    @given(
        sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
        acts=st.lists(st.sampled_from(SMOOTH), min_size=3, max_size=3),
        batch=st.integers(1, 3),
        n_in=st.integers(1, 3),
        seed=st.integers(0, 2**16),
    )
    def test_mlp(self, sizes, acts, batch, n_in, seed):
        net = networks.mlp(sizes, acts[: len(sizes)], b_init=NORMAL)
        check_layer_vjp(self.variant, net, (batch, n_in), seed)

    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=2)
    @given(seed=st.integers(0, 2**16), train=st.booleans())
    def test_mlp_with_batchnorm_and_dropout(self, seed, train):
        net = networks.mlp([4, 3, 2], "tanh", batchnorm=True, dropout=0.3, b_init=NORMAL)
        check_layer_vjp(self.variant, net, (5, 3), seed, train=train)


def test_mlp_layout_with_batchnorm_and_dropout():
    net = networks.mlp([4, 4, 2], "relu", batchnorm=True, dropout=0.1)
    params, state = net.init(jax.random.key(0), (3, 5))
    assert combinators.layer_keys(net) == (
        "dense_0", "batchnorm_1", "relu_2", "dropout_3",
        "dense_4", "batchnorm_5", "relu_6", "dropout_7",
        "dense_8", "identity_9",
    )  # fmt: skip
    assert list(params) == ["dense_0", "batchnorm_1", "dense_4", "batchnorm_5", "dense_8"]
    assert list(state) == ["batchnorm_1", "batchnorm_5"]
    assert isinstance(state["batchnorm_5"], BatchNormState)


def test_mlp_without_nonlinearity_collapses_to_one_linear_map():
    # The source text's claim: stacked linear layers stay one linear map.
    net = networks.mlp([6, 5, 3], "identity", b_init=NORMAL)
    params, state = net.init(jax.random.key(1), (8, 4))
    x = jax.random.normal(jax.random.key(2), (8, 4))
    w, b = params["dense_0"]["w"], params["dense_0"]["b"]
    for name in ["dense_2", "dense_4"]:
        w, b = w @ params[name]["w"], b @ params[name]["w"] + params[name]["b"]
    y, _ = net.apply(params, state, x, train=False)
    assert norm_rel_err(y, x @ w + b) <= 1e-13  # three matmuls, rounding only


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        networks.mlp([3], "sigmoidd")  # one layer: the hidden activation is unused, still checked
    for name in ACTIVATIONS:
        assert name in str(info.value)


def test_mlp_refuses_bad_hyperparameters():
    with pytest.raises(ValueError, match="3 dense layers need 3 activations"):
        networks.mlp([2, 2, 2], ["tanh", "tanh"])
    with pytest.raises(ValueError, match="not both"):
        networks.mlp([2, 2], ["tanh", "tanh"], final_activation="sigmoid")
    with pytest.raises(TypeError, match=r"list of layer sizes, e.g. \[100, 10\], got 3"):
        networks.mlp(3)
    with pytest.raises(TypeError, match=r"elementwise\(name, fn, derivative\)"):
        networks.mlp([3], jnp.tanh)
    with pytest.raises(ValueError, match="probability of DROPPING"):
        networks.mlp([3, 2], "relu", dropout=1.0)
    with pytest.raises(TypeError, match="input_shape"):
        networks.mlp([3]).init(jax.random.key(0), 4)


# ----------------------------------------------------------------------------- bad input, table

BAD_EDGE_ROWS = [
    (
        "mlp-param-dtype-int",
        lambda tmp_path: jaxnn.mlp([3], param_dtype=np.int64),
        TypeError,
        "mlp: param_dtype must be a floating-point dtype (jnp.bfloat16, jnp.float32 or "
        "jnp.float64) or None, got dtype int64. Params are what the gradients update",
    ),
    (
        "mlp-param-dtype-bool",
        lambda tmp_path: jaxnn.mlp([3], batchnorm=True, param_dtype=bool),
        TypeError,
        "mlp: param_dtype must be a floating-point dtype",
    ),
]


def test_mlp_param_dtype_reaches_dense_and_batchnorm():
    net = jaxnn.mlp([3, 2], batchnorm=True, param_dtype=np.dtype("float32"))
    params, state = jax.eval_shape(lambda key: net.init(key, (4, 5)), jax.random.key(0))
    leaves = jax.tree.leaves((params, state))
    assert {a.dtype for a in leaves if a.ndim} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------- cnn


@pytest.mark.parametrize("residual", [False, True])
def test_cnn_layout_and_the_depth_formula(residual):
    net = networks.cnn((8, 8, 1), (4, 8), 10, blocks_per_stage=2, residual=residual)
    params, state = net.init(jax.random.key(0), (3, 64))
    kernels = [p for p in jax.tree_util.tree_leaves_with_path(params)
               if jax.tree_util.keystr(p[0]).endswith("['w']")]  # fmt: skip
    convs = [w for path, w in kernels if w.ndim == 4 and w.shape[:2] == (3, 3)]
    assert len(convs) + 1 == 2 + 2 * 2 * 2  # stem + 2 per block + the dense head
    projections = [w for path, w in kernels if w.ndim == 4 and w.shape[:2] == (1, 1)]
    # plain: no projection; residual: one where the channels change (4 -> 8)
    assert len(projections) == (1 if residual else 0)
    # flat input (digits) and NHWC input give the same logits
    x = jax.random.normal(jax.random.key(1), (3, 64))
    y_flat, _ = net.apply(params, state, x, train=False)
    y_img, _ = net.apply(params, state, x.reshape(3, 8, 8, 1), train=False)
    chex.assert_shape(y_flat, (3, 10))
    np.testing.assert_allclose(y_flat, y_img, rtol=1e-6)
    # convolutions before a norm have no bias (beta takes its place)
    assert all("b" not in p for k, p in params.items() if k.startswith("conv2d"))


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "groupnorm", None])
def test_cnn_hand_backward_equals_autodiff_for_every_norm(norm):
    net = networks.cnn((4, 4, 2), (2, 4), 3, residual=True, norm=norm, groups=2,
                       activation="tanh")  # fmt: skip
    check_layer_vjp(lambda f: f, net, (3, 4, 4, 2), 0, train=True)


def test_cnn_refuses_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        networks.cnn((4, 4, 1), (2, 4, 8, 16), 3)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        networks.cnn((8, 8, 1), (4, 8), 3, norm="groupnorm", groups=3)
    with pytest.raises(ValueError, match="norm must be one of"):
        networks.cnn((8, 8, 1), (4,), 3, norm="instancenorm")
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        networks.cnn((64,), (4,), 3)
    with pytest.raises(ValueError, match="channels must list"):
        networks.cnn((8, 8, 1), (), 3)
