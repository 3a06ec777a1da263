"""The audit: one gradient case for every public component, in one explicit list.

``jaxnn gradcheck`` runs every case of :data:`CASES` (and the cases a user registers with
:func:`jaxnn.gradcheck.register`) at random shapes and seeds, comparing the hand-derived
gradient with ``jax.grad`` and finite differences (:func:`jaxnn.gradcheck.check_gradients`).
Nothing registers itself on import: this module *is* the list, and :func:`missing` names any
public activation, loss, layer factory or penalty that has no case (a test keeps it empty).
Layer factories are found, not listed (:func:`layer_factories`): every public function of every
module of :mod:`jaxnn`, subpackages included, whose return annotation is :class:`~jaxnn.Layer`
needs a case, wherever it lives.

Case names are ``group.component`` or ``group.component.variant`` (``"layers.batchnorm.eval"``),
``component`` being the public name it covers; ``jaxnn gradcheck --list`` prints them.

Every layer case is :func:`jaxnn.gradcheck.layer_case`, the case that
:func:`jaxnn.gradcheck.check_layer` runs in each mode: ``f(params, x) = Σ w ⊙ layer(params, x)``
with a random cotangent ``w``, whose hand-derived gradient is the layer's validated
``backward(w)``, w.r.t. the params and the input; it takes the layer's ``state`` and, for
stochastic layers, the ``key`` held fixed on both sides.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import batchnorm as _batchnorm
from jaxnn import combinators as _combinators
from jaxnn import conv as _conv
from jaxnn import gradcheck
from jaxnn import layers as _layers
from jaxnn import losses as _losses
from jaxnn import networks as _networks
from jaxnn import norms as _norms
from jaxnn import pooling as _pooling
from jaxnn import recurrent as _recurrent
from jaxnn import regularization as _regularization
from jaxnn._typing import Array, Layer, Params, PRNGKey, backward_spec, check_cotangents
from jaxnn.activations import ACTIVATIONS, Activation
from jaxnn.backprop import backprop, manual, value_and_grad
from jaxnn.gradcheck import layer_case

__all__ = ["CASES", "cases", "components", "layer_factories", "missing", "random_targets"]

MakeCase = Callable[[PRNGKey], gradcheck.GradCase]
_NORMAL = jax.nn.initializers.normal(1.0)  # non-zero biases, so their gradients are exercised
_SMOOTH = ("sigmoid", "tanh", "softplus", "gelu", "gelu_tanh", "silu", "elu", "selu")


def _dims(key: PRNGKey, n: int, low: int, high: int) -> list[int]:
    return [int(d) for d in _host_rng(key).integers(low, high, n)]


def _host_rng(key: PRNGKey) -> np.random.Generator:
    """A numpy generator seeded from a JAX key: draws on the host compile nothing (an eager
    JAX draw compiles once per shape, and the audit's shapes vary with the seed)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def _float64(a: Array) -> Array:
    return jnp.asarray(np.asarray(a, np.float64))


# ----------------------------------------------------------------------------- activations, losses


def _activation(act: Activation) -> MakeCase:
    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_x = jax.random.split(key)
        shape = tuple(_dims(k_shape, 2, 1, 6))
        rng = _host_rng(k_x)
        x = 3.0 * rng.standard_normal(shape)
        x = jnp.asarray(np.where(np.abs(x) < 1e-3, 1e-3 + np.abs(x), x))  # FD off the kinks
        w = jnp.asarray(rng.standard_normal(shape))  # a random cotangent

        def f(x: Array) -> Array:
            return jnp.sum(w * act.fn(x))

        @jax.jit
        def grad_fn(x: Array) -> Array:
            return act.vjp(x)[1](w)

        return gradcheck.GradCase(f, (x,), grad_fn, 0, f"x{shape}")

    return make


def random_targets(loss: str | _losses.Loss, key: PRNGKey, shape: tuple[int, ...]) -> Array:
    """Valid targets for ``loss`` and predictions of ``shape``, drawn from ``key``, as the
    loss's ``targets`` says: probability rows, integer labels, values in [0, 1], or reals."""
    kind = _losses.get(loss).targets
    rng = _host_rng(key)
    if kind == "probabilities":
        return jnp.asarray(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]))
    if kind == "labels":
        return jnp.asarray(rng.integers(0, shape[-1], shape[:-1]), jnp.int32)
    if kind == "binary":
        return jnp.asarray(rng.uniform(size=shape))
    return jnp.asarray(rng.standard_normal(shape))


def _loss(loss: _losses.Loss) -> MakeCase:
    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_p, k_t = jax.random.split(key, 3)
        shape = tuple(_dims(k_shape, 2, 1, 6))
        predictions = jnp.asarray(2.0 * _host_rng(k_p).standard_normal(shape))
        targets = random_targets(loss, k_t, shape)
        return gradcheck.GradCase(
            loss.fn, (predictions, targets), jax.jit(loss.grad), 0, f"predictions{shape}"
        )

    return make


def _masked_loss(loss: _losses.Loss) -> MakeCase:
    """The loss over the examples a random mask selects (at least one, some left out)."""
    masked = _losses.masked(loss)

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_p, k_t, k_m = jax.random.split(key, 4)
        shape = tuple(_dims(k_shape, 2, 2, 6))
        predictions = jnp.asarray(2.0 * _host_rng(k_p).standard_normal(shape))
        targets = random_targets(loss, k_t, shape)
        mask = _host_rng(k_m).permutation(shape[0]) < max(1, shape[0] // 2)
        pair = (targets, jnp.asarray(mask))
        return gradcheck.GradCase(
            lambda y: masked.fn(y, pair),
            (predictions,),
            jax.jit(lambda y: masked.grad(y, pair)),
            0,
            f"predictions{shape}, {int(mask.sum())} of {shape[0]} examples",
        )

    return make


# ----------------------------------------------------------------------------- layers
# Each: draw the shapes from one half of the key, the case (params, x, cotangent) from the other.


def _dense(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    batch, n_in, n_out = _dims(k_shape, 3, 1, 7)
    return layer_case(_layers.dense(n_out, b_init=_NORMAL), (batch, n_in), train=False, key=k_case)


def _activation_layer(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    shape = _dims(k_shape, 2, 1, 6)
    return layer_case(_layers.activation("tanh"), shape, train=False, key=k_case)


def _dropout(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    return layer_case(_layers.dropout(0.3), _dims(k_shape, 2, 2, 7), train=True, key=k_case)


def _bn_shape(key: PRNGKey) -> tuple[int, ...]:
    d = _dims(key, 3, 2, 5)
    # [batch, features] or channels last [batch, length, channels]
    return (d[1], d[2]) if d[0] % 2 else (d[1], 2, d[2])


def _batchnorm_train(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    return layer_case(_batchnorm.batchnorm(), _bn_shape(k_shape), train=True, key=k_case)


def _batchnorm_eval(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case, k_state = jax.random.split(key, 3)
    shape = _bn_shape(k_shape)
    c, rng = shape[-1], _host_rng(k_state)
    state = _batchnorm.BatchNormState(  # random running statistics, not init's (0, 1)
        jnp.asarray(rng.standard_normal(c)), jnp.asarray(rng.uniform(0.5, 2.0, c)), jnp.asarray(3)
    )
    return layer_case(_batchnorm.batchnorm(), shape, train=False, key=k_case, state=state)


def _batchnorm_mask(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case, k_mask = jax.random.split(key, 3)
    batch, features = _dims(k_shape, 2, 3, 7)
    mask = jnp.arange(batch) < _dims(k_mask, 1, 2, batch + 1)[0]  # >= 2 real rows
    return layer_case(
        _batchnorm.batchnorm(), (batch, features), train=True, key=k_case, mask=mask,
        shapes=f"train x({batch}, {features}), {int(mask.sum())} rows in the statistics",
    )  # fmt: skip


def _serial(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    batch, n_in, hidden = _dims(k_shape, 3, 2, 6)
    net = _combinators.serial(
        _layers.dense(hidden, b_init=_NORMAL),
        _layers.activation("softplus"),
        _layers.dropout(0.25),
        _layers.dense(2, b_init=_NORMAL),
    )
    return layer_case(net, (batch, n_in), train=True, key=k_case)


def _mlp(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_act, k_case = jax.random.split(key, 3)
    sizes = _dims(k_shape, 4, 1, 6)
    acts = [_SMOOTH[i] for i in _dims(k_act, 2, 0, len(_SMOOTH))]
    net = _networks.mlp(sizes[1:], [*acts, "identity"], b_init=_NORMAL)
    return layer_case(net, (sizes[0], 3), train=False, key=k_case)


def _masked_mlp(key: PRNGKey, wrap: Callable[[Layer], Layer]) -> gradcheck.GradCase:
    """An MLP with BatchNorm and dropout, one padding row masked, in training."""
    k_shape, k_case, k_mask = jax.random.split(key, 3)
    batch, n_in, hidden = _dims(k_shape, 3, 3, 6)
    net = _networks.mlp([hidden, hidden, 2], "sigmoid", batchnorm=True, dropout=0.2, b_init=_NORMAL)
    mask = jnp.arange(batch) != _dims(k_mask, 1, 0, batch)[0]  # one padding row
    return layer_case(
        wrap(net), (batch, n_in), train=True, key=k_case, mask=mask,
        shapes=f"train x({batch}, {n_in}), one row masked",
    )  # fmt: skip


def _mlp_batchnorm_dropout(key: PRNGKey) -> gradcheck.GradCase:
    return _masked_mlp(key, lambda net: net)


def _manual(key: PRNGKey) -> gradcheck.GradCase:
    """``manual(net)``: ``jax.grad`` of its ``apply`` runs the hand rules through
    ``jax.custom_vjp`` (hand vs ``jax.grad`` agree by construction there); finite differences
    judge both, w.r.t. the params and the input."""
    return _masked_mlp(key, manual)


# ---- shapes, residual, cnn


def _flatten(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    return layer_case(_layers.flatten(), _dims(k_shape, 4, 1, 4), train=False, key=k_case)


def _reshape(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    batch, h, w = _dims(k_shape, 3, 1, 4)
    return layer_case(_layers.reshape((h, -1, 2)), (batch, h * w * 2), train=False, key=k_case)


def _residual(projection: bool) -> MakeCase:
    """A residual block with BatchNorm and dropout inside (train), identity or projection."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case = jax.random.split(key)
        batch, n_in, hidden = _dims(k_shape, 3, 2, 6)
        n_out = hidden if projection else n_in
        block = _combinators.serial(
            _layers.dense(hidden, b_init=_NORMAL),
            _batchnorm.batchnorm(),
            _layers.activation("tanh"),
            _layers.dropout(0.2),
            _layers.dense(n_out, b_init=_NORMAL),
        )
        shortcut = _layers.dense(n_out, b_init=_NORMAL) if projection else None
        layer = _combinators.residual(block, shortcut)
        return layer_case(layer, (batch, n_in), train=True, key=k_case)

    return make


def _cnn(residual: bool, norm: str) -> MakeCase:
    """A small ``cnn`` (stem, two stages, pooling, head) in training."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case = jax.random.split(key)
        batch, side = _dims(k_shape, 2, 2, 4)
        side = 2 * side  # one halving
        net = _networks.cnn(
            (side, side, 1), (2, 4), 3, residual=residual, norm=norm, groups=2,
            pool="max" if residual else "avg", activation="softplus",
        )  # fmt: skip
        return layer_case(net, (batch, side * side), train=True, key=k_case)

    return make


# ---- norms
# LayerNorm, GroupNorm and RMSNorm compute the same thing in train and eval mode (no state, no
# running statistics), so train mode is the only mode that matters: one case each.


def _random_affine(layer: Layer) -> Layer:
    """``layer`` whose init draws gamma ~ 1 + N(0, 1) and beta ~ N(0, 1) (init's 1 and 0
    would leave a gamma missing from ``dx`` unseen)."""

    def init(key: PRNGKey, input_shape: Any) -> tuple[Params, Any]:
        params, state = layer.init(key, input_shape)
        keys = dict(zip(sorted(params), jax.random.split(key, max(len(params), 1)), strict=False))
        params = {
            k: (1.0 if k == "gamma" else 0.0) + _NORMAL(keys[k], v.shape, v.dtype)
            for k, v in params.items()
        }
        return params, state

    return layer._replace(init=init)


def _norm_shape(key: PRNGKey) -> tuple[int, ...]:
    d = _dims(key, 4, 1, 5)
    # [batch, features] or [batch, length, features]; a batch of one is fine for these norms
    return (d[1], d[2]) if d[0] % 2 else (d[1], d[3], d[2])


def _layernorm(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    shape = _norm_shape(k_shape)
    shape = shape if shape[-1] > 1 else (*shape[:-1], 2)  # a spread to normalise
    return layer_case(_random_affine(_norms.layernorm()), shape, train=True, key=k_case)


def _layernorm_axes(key: PRNGKey) -> gradcheck.GradCase:
    """Several normalised axes: the trailing (H, W, C) of NHWC, or a non-trailing pair."""
    k_shape, k_axes, k_case = jax.random.split(key, 3)
    batch, h, w, c = _dims(k_shape, 4, 1, 4)
    axis = ((-3, -2, -1), (1, 3))[_dims(k_axes, 1, 0, 2)[0]]
    layer = _random_affine(_norms.layernorm(axis=axis))
    return layer_case(
        layer, (batch, h, w + 1, c), train=True, key=k_case,
        shapes=f"train x({batch}, {h}, {w + 1}, {c}), axis {axis}",
    )  # fmt: skip


def _groupnorm(key: PRNGKey) -> gradcheck.GradCase:
    """NHWC, C = G · C/G; G from 1 (LayerNorm of a CNN) to C (InstanceNorm)."""
    k_shape, k_case = jax.random.split(key)
    batch, side, groups, per_group = _dims(k_shape, 4, 1, 4)
    shape = (batch, side, side + 1, groups * per_group)
    return layer_case(
        _random_affine(_norms.groupnorm(groups)), shape, train=True, key=k_case,
        shapes=f"train x{shape}, {groups} groups",
    )  # fmt: skip


def _rmsnorm(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    layer = _random_affine(_norms.rmsnorm())
    return layer_case(layer, _norm_shape(k_shape), train=True, key=k_case)


# ---- conv/pooling
# Convolution and pooling compute the same thing in train and eval mode (no state): one mode.
# Shapes stay small (finite differences probe every case); geometry is drawn on the host.


def _geometry_draw(key: PRNGKey, groups: bool = False) -> tuple[tuple[int, ...], dict, str]:
    """A random conv2d geometry: (input shape, conv2d options, report text)."""
    rng = _host_rng(key)
    k = tuple(int(v) for v in rng.integers(1, 4, 2))
    s = tuple(int(v) for v in rng.integers(1, 3, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = [
        "SAME", "VALID", int(rng.integers(0, 3)),
        tuple(tuple(int(v) for v in rng.integers(0, 3, 2)) for _ in range(2)),
    ][int(rng.integers(0, 4))]  # fmt: skip
    h, w = (int((kk - 1) * dd + 1 + rng.integers(0, 4)) for kk, dd in zip(k, d, strict=True))
    g = int(rng.integers(2, 4)) if groups else 1
    c_in = g * int(rng.integers(1, 3))
    depthwise = groups and rng.integers(0, 2) == 1  # groups = C_in
    g = c_in if depthwise else g
    features = g * int(rng.integers(1, 3))
    shape = (int(rng.integers(1, 3)), h, w, c_in)
    options = dict(strides=s, padding=padding, kernel_dilation=d, feature_group_count=g)
    text = f"x{shape}, {features} features, kernel {k}, strides {s}, dilation {d}, {padding!r}"
    return shape, {"features": features, "kernel_size": k, **options}, text + f", groups {g}"


def _conv2d(groups: bool) -> MakeCase:
    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case = jax.random.split(key)
        shape, options, text = _geometry_draw(k_shape, groups)
        layer = _conv.conv2d(**options, b_init=_NORMAL)
        return layer_case(layer, shape, train=True, key=k_case, shapes=text)

    return make


def _pool(kind: str, padded: bool, count_include_pad: bool = True) -> MakeCase:
    """max_pool or avg_pool at a random window and stride (the window's by default), padded
    by less than the window (or "SAME") when ``padded``."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case = jax.random.split(key)
        rng = _host_rng(k_shape)
        window = tuple(int(v) for v in rng.integers(1, 4, 2))
        strides = None if rng.integers(0, 2) else tuple(int(v) for v in rng.integers(1, 4, 2))
        padding: Any = "VALID"
        if padded:
            padding = "SAME" if rng.integers(0, 3) == 0 else tuple(
                tuple(int(rng.integers(0, k)) for _ in range(2)) for k in window
            )  # fmt: skip
        h, w = (k + int(rng.integers(0, 4)) for k in window)
        shape = (int(rng.integers(1, 3)), h, w, int(rng.integers(1, 3)))
        if kind == "max":
            layer = _pooling.max_pool(window, strides, padding)
        else:
            layer = _pooling.avg_pool(window, strides, padding, count_include_pad=count_include_pad)
        text = f"x{shape}, window {window}, strides {strides or window}, {padding!r}"
        return layer_case(layer, shape, train=True, key=k_case, shapes=text)

    return make


def _global_avg_pool(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    return layer_case(_pooling.global_avg_pool(), _dims(k_shape, 4, 1, 4), train=True, key=k_case)


# ----------------------------------------------------------------------------- penalties


def _penalty(name: str) -> MakeCase:
    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_init, k_scale = jax.random.split(key, 3)
        n_in, hidden = _dims(k_shape, 2, 1, 5)
        net = _networks.mlp([hidden, 2], "tanh", batchnorm=True, b_init=_NORMAL)
        with jax.enable_x64(True):
            params, _ = net.init(k_init, (4, n_in))
            # Kernels moved 0.1 away from 0, where L1's subgradient jumps (finite differences
            # cannot judge there); biases and gamma/beta are in the tree, unpenalised (their
            # gradient must be exactly 0).
            params = jax.tree.map(lambda p: _float64(p + 0.1 * np.sign(p)), params)
        scale = float(_host_rng(k_scale).uniform(0.1, 2.0))
        penalty = _regularization.PENALTIES[name](scale)
        return gradcheck.GradCase(
            penalty.fn, (params,), jax.jit(penalty.grad), 0, f"mlp n_in={n_in}, scale {scale:.3f}"
        )

    return make


# ----------------------------------------------------------------------------- backprop


def _network(mode: str) -> MakeCase:
    """A random MLP under a loss and an L2 penalty: the explicit loop, or the custom_vjp path."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_init, k_x, k_t = jax.random.split(key, 4)
        batch, n_in, hidden, n_out = _dims(k_shape, 4, 1, 6)
        with jax.enable_x64(True):
            net = _networks.mlp([hidden, hidden, n_out], "tanh", b_init=_NORMAL)
            params, state = net.init(k_init, (batch, n_in))
            x = jnp.asarray(_host_rng(k_x).standard_normal((batch, n_in)))
            targets = jnp.asarray(_host_rng(k_t).standard_normal((batch, n_out)))
        loss, penalty = "mean_squared_error", _regularization.l2(0.1)

        def f(params: Params) -> Array:
            y, _ = net.apply(params, state, x, train=True)
            return _losses.mean_squared_error(y, targets) + penalty.fn(params)

        if mode == "loop":

            def grad_fn(params: Params) -> Any:
                run = backprop(net, loss, params, state, x, targets, train=True, penalty=penalty)
                return run[1]

        else:
            vg = value_and_grad(net, loss, grad="manual", penalty=penalty)

            def grad_fn(params: Params) -> Any:
                return vg(params, state, x, targets, train=True)[1]

        return gradcheck.GradCase(f, (params,), jax.jit(grad_fn), 0, f"mlp x({batch}, {n_in}) + l2")

    return make


# ---- recurrent: cells, the loop (BPTT), the layer, embedding

_CELLS = {
    "elman": lambda h: _recurrent.elman_cell(h),
    "elman_sigmoid": lambda h: _recurrent.elman_cell(h, activation="sigmoid", name="elman"),
    "lstm": lambda h: _recurrent.lstm_cell(h),
    "gru": lambda h: _recurrent.gru_cell(h),
}


def _tree_dot(a: Any, b: Any) -> Array:
    return sum(jax.tree.leaves(jax.tree.map(lambda u, v: jnp.sum(u * v), a, b)))


def _lengths_mask(key: PRNGKey, batch: int, time: int) -> Array:
    """``[batch, time]``: random lengths in ``[0, time]``, the first row full, one of 0 or 1."""
    lengths = _host_rng(key).integers(0, time + 1, batch)
    lengths[0] = time
    if batch > 1:
        lengths[1] = lengths[1] % 2  # an empty sequence or a sequence of one step
    return jnp.asarray(np.arange(time) < lengths[:, None])


def _rnn_draw(key: PRNGKey) -> tuple[int, int, int, int]:
    batch, time, n_in, hidden = _dims(key, 4, 2, 5)
    return batch, time, n_in, hidden


def _recurrent_layer(kind: str, masked: bool, return_sequences: bool = True) -> MakeCase:
    """The layer over a random sequence (float64), with or without a mask of random lengths."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case, k_mask = jax.random.split(key, 3)
        batch, time, n_in, hidden = _rnn_draw(k_shape)
        layer = _recurrent.recurrent_layer(_CELLS[kind](hidden), return_sequences=return_sequences)
        keywords = {"seq_mask": _lengths_mask(k_mask, batch, time)} if masked else {}
        lengths = (
            "" if not masked else f", lengths {np.asarray(keywords['seq_mask']).sum(1).tolist()}"
        )
        return layer_case(
            layer, (batch, time, n_in), train=True, key=k_case,
            shapes=f"x({batch}, {time}, {n_in}), hidden {hidden}{lengths}", **keywords,
        )  # fmt: skip

    return make


def _scan(kind: str) -> MakeCase:
    """:func:`jaxnn.recurrent.scan_vjp`'s BPTT w.r.t. the params, ``x`` and the initial carry,
    both outputs read, under a mask of random lengths."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_p, k_x, k_mask = jax.random.split(key, 4)
        batch, time, n_in, hidden = _rnn_draw(k_shape)
        cell = _CELLS[kind](hidden)
        rng = _host_rng(k_x)
        with jax.enable_x64(True):
            params = jax.tree.map(_float64, cell.init(k_p, n_in))
            x = jnp.asarray(rng.standard_normal((batch, time, n_in)))
            carry0 = jax.tree.map(
                lambda a: jnp.asarray(rng.standard_normal(a.shape)),
                cell.initial_carry(batch, jnp.float64),
            )
            mask = _lengths_mask(k_mask, batch, time)
            w_ys = jnp.asarray(rng.standard_normal((batch, time, hidden)))
            w_carry = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), carry0)

        def f(params: Params, x: Array, carry0: Any) -> Array:
            ys, carry = _recurrent.scan(cell, params, x, initial_carry=carry0, seq_mask=mask)
            dot = _tree_dot(carry, w_carry)
            return jnp.sum(w_ys * ys) + dot

        @jax.jit
        def grad_fn(params: Params, x: Array, carry0: Any) -> Any:
            _, _, backward = _recurrent.scan_vjp(
                cell, params, x, initial_carry=carry0, seq_mask=mask
            )
            return backward(w_ys, w_carry)

        return gradcheck.GradCase(
            f, (params, x, carry0), grad_fn, (0, 1, 2),
            f"x({batch}, {time}, {n_in}), hidden {hidden}, lengths {np.asarray(mask).sum(1).tolist()}",
            ("dparams", "dx", "dcarry0"), f"recurrent.scan_vjp ({kind} cell)",
        )  # fmt: skip

    return make


def _cell_step(kind: str) -> MakeCase:
    """One step of a cell: ``step_vjp``'s backward w.r.t. the params, the carry and ``x_t``."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_p, k_x = jax.random.split(key, 3)
        batch, _, n_in, hidden = _rnn_draw(k_shape)
        cell = _CELLS[kind](hidden)
        rng = _host_rng(k_x)
        with jax.enable_x64(True):
            params = jax.tree.map(_float64, cell.init(k_p, n_in))
            x = jnp.asarray(rng.standard_normal((batch, n_in)))
            carry = jax.tree.map(
                lambda a: jnp.asarray(rng.standard_normal(a.shape)),
                cell.initial_carry(batch, jnp.float64),
            )
            w_y = jnp.asarray(rng.standard_normal((batch, hidden)))
            w_carry = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), carry)

        def f(params: Params, carry: Any, x: Array) -> Array:
            new, y = cell.step(params, carry, x)
            dot = _tree_dot(new, w_carry)
            return jnp.sum(w_y * y) + dot

        @jax.jit
        def grad_fn(params: Params, carry: Any, x: Array) -> Any:
            return cell.step_vjp(params, carry, x)[2](w_carry, w_y)

        return gradcheck.GradCase(
            f, (params, carry, x), grad_fn, (0, 1, 2), f"x({batch}, {n_in}), hidden {hidden}",
            ("dparams", "dcarry", "dx"), f"{kind} cell, one step",
        )  # fmt: skip

    return make


def _embedding(padding: bool) -> MakeCase:
    """Tokens with repeated indices (and, with ``padding``, a padding index among them)."""

    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_p, k_x = jax.random.split(key, 3)
        batch, time, vocab, features = _dims(k_shape, 4, 2, 6)
        rng = _host_rng(k_x)
        tokens = rng.integers(0, vocab, (batch, time))
        tokens[0, :2] = vocab - 1  # a repeated index, whatever the draw
        tokens[-1, -1] = 0  # with padding: the padding index among the tokens
        layer = _recurrent.embedding(vocab, features, padding_idx=0 if padding else None)
        with jax.enable_x64(True):
            params, state = layer.init(k_p, tokens.shape)
            params = jax.tree.map(_float64, params)
            params = {"w": params["w"] + jnp.asarray(rng.standard_normal(params["w"].shape))}
            x = jnp.asarray(tokens, jnp.int32)
            w = jnp.asarray(rng.standard_normal((batch, time, features)))
            w_pad = params["w"][0]  # held fixed, so finite differences see a constant row

        def f(params: Params) -> Array:
            if padding:  # the padding row is a constant by definition (PyTorch's padding_idx)
                params = {"w": jnp.where(jnp.arange(vocab)[:, None] == 0, w_pad, params["w"])}
            return jnp.sum(w * layer.apply(params, state, x, train=True)[0])

        @jax.jit
        def grad_fn(params: Params) -> Params:
            _, _, backward = layer.vjp(params, state, x, train=True)
            spec = backward_spec(repr(layer.name), backward, params, x, check_dtype=True)
            return check_cotangents(spec, backward(w))[0]

        return gradcheck.GradCase(
            f, (params,), grad_fn, 0,
            f"tokens({batch}, {time}) of {vocab}{', padding_idx 0' if padding else ''}",
            ("dparams",), f"layer {layer.name!r}",
        )  # fmt: skip

    return make


# ----------------------------------------------------------------------------- the list

CASES: dict[str, MakeCase] = {
    **{f"activations.{name}": _activation(act) for name, act in ACTIVATIONS.items()},
    **{f"losses.{name}": _loss(loss) for name, loss in _losses.LOSSES.items()},
    **{f"losses.masked.{name}": _masked_loss(loss) for name, loss in _losses.LOSSES.items()},
    "layers.dense": _dense,
    "layers.activation": _activation_layer,
    "layers.dropout": _dropout,
    "layers.batchnorm.train": _batchnorm_train,
    "layers.batchnorm.eval": _batchnorm_eval,
    "layers.batchnorm.mask": _batchnorm_mask,
    "layers.serial": _serial,
    "layers.mlp": _mlp,
    "layers.mlp.batchnorm_dropout": _mlp_batchnorm_dropout,
    "layers.manual": _manual,
    "layers.flatten": _flatten,
    "layers.reshape": _reshape,
    "layers.residual": _residual(projection=False),
    "layers.residual.projection": _residual(projection=True),
    "layers.cnn": _cnn(residual=True, norm="batchnorm"),
    "layers.cnn.plain_groupnorm": _cnn(residual=False, norm="groupnorm"),
    "layers.layernorm": _layernorm,
    "layers.layernorm.axes": _layernorm_axes,
    "layers.groupnorm": _groupnorm,
    "layers.rmsnorm": _rmsnorm,
    "layers.conv2d": _conv2d(groups=False),
    "layers.conv2d.groups": _conv2d(groups=True),
    "layers.max_pool": _pool("max", padded=False),
    "layers.max_pool.padding": _pool("max", padded=True),
    "layers.avg_pool": _pool("avg", padded=True),
    "layers.avg_pool.exclude_pad": _pool("avg", padded=True, count_include_pad=False),
    "layers.global_avg_pool": _global_avg_pool,
    **{f"recurrent.{kind}_cell": _cell_step(kind) for kind in ("elman", "lstm", "gru")},
    **{f"recurrent.scan.{kind}": _scan(kind) for kind in ("elman", "lstm", "gru")},
    **{
        f"layers.recurrent_layer.{kind}{'.mask' if masked else ''}": _recurrent_layer(kind, masked)
        for kind in ("elman", "elman_sigmoid", "lstm", "gru")
        for masked in (False, True)
    },
    "layers.recurrent_layer.lstm.last": _recurrent_layer("lstm", True, return_sequences=False),
    "layers.recurrent_layer.gru.last": _recurrent_layer("gru", True, return_sequences=False),
    "layers.embedding": _embedding(padding=False),
    "layers.embedding.padding": _embedding(padding=True),
    "regularization.l1": _penalty("l1"),
    "regularization.l2": _penalty("l2"),
    "backprop.loop": _network("loop"),
    "backprop.custom_vjp": _network("custom_vjp"),
}


def _skip(name: str) -> None:
    del name


def _returns(fn: Callable[..., Any], cls: type) -> bool:
    """Whether ``fn``'s return annotation is ``cls`` (resolved, or by its text where the
    module's annotations cannot be resolved at run time)."""
    annotation = inspect.signature(fn).return_annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        try:
            annotation = typing.get_type_hints(fn).get("return")
        except Exception:  # a name imported only for type checking: judge by the text
            return annotation.rsplit(".", 1)[-1] == cls.__name__
    return annotation is cls


def layer_factories(package: ModuleType | None = None, *, returns: type = Layer) -> dict[str, str]:
    """Every public layer factory of ``package`` (default :mod:`jaxnn`): name -> where defined.

    A layer factory is a public function (its name does not start with ``_``) defined in a
    module of the package, at any depth, whose return annotation is :class:`~jaxnn.Layer`:
    ``{"dense": "jaxnn.layers.dense", ...}``. Every module is imported (``__main__`` modules
    excepted), and one that fails to import raises: jaxnn's modules have no import-time side
    effects. ``returns=jaxnn.recurrent.Cell`` finds the recurrent cell factories instead.
    """
    package = importlib.import_module("jaxnn") if package is None else package
    found: dict[str, str] = {}
    # A subpackage that fails to import is skipped by the walk and raises at import below.
    modules = pkgutil.walk_packages(package.__path__, f"{package.__name__}.", onerror=_skip)
    for module_name in [package.__name__, *sorted(m.name for m in modules)]:
        if module_name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(module_name)
        for public, obj in sorted(vars(module).items()):
            if (
                not public.startswith("_")
                and inspect.isfunction(obj)
                and obj.__module__ == module_name
                and _returns(obj, returns)
            ):
                found.setdefault(public, f"{module_name}.{public}")
    return found


def components() -> list[str]:
    """Every public component that must have a case: ``group.name``.

    Activations and losses by their registries' names, penalties by
    :data:`jaxnn.regularization.PENALTIES`, and every layer factory of the package wherever it
    is defined (:func:`layer_factories`) as ``layers.<name>``, every recurrent cell factory as
    ``recurrent.<name>``.
    """
    names = [f"activations.{n}" for n in ACTIVATIONS]
    names += [f"losses.{n}" for n in _losses.LOSSES]
    names += [f"regularization.{n}" for n in _regularization.PENALTIES]
    names += [f"layers.{n}" for n in layer_factories()]
    names += [f"recurrent.{n}" for n in layer_factories(returns=_recurrent.Cell)]
    return names


def missing(cases: dict[str, Any] | None = None) -> list[str]:
    """The components of :func:`components` with no case in ``cases`` (default :data:`CASES`)."""
    names = CASES if cases is None else cases
    return [c for c in components() if not any(n == c or n.startswith(c + ".") for n in names)]


def cases() -> dict[str, MakeCase]:
    """The library's cases and the user's (:func:`jaxnn.gradcheck.register`), by name.

    Raises:
      ValueError: a user case has the name of a library case.
    """
    user = gradcheck.registered()
    clash = sorted(set(user) & set(CASES))
    if clash:
        raise ValueError(
            f"gradcheck.register: {clash} already name jaxnn's own audit cases; register yours "
            f"under another name (e.g. with your package's prefix)."
        )
    return {**CASES, **user}
