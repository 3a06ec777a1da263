"""BatchNorm as a stateful functional transform (Ioffe & Szegedy, 2015).

A saturating activation loses the spread of its inputs: sigmoid maps 60 and 90 to
``1 - 8.8e-27`` and ``1 - 8.2e-40``: both round to 1.0 even in float64, and the derivative
there is ~0 (exactly 0 in float32 at 90), so no
gradient flows back. BatchNorm standardises each feature over the batch, then lets the network
choose the scale and offset it wants with two learned parameters ``gamma`` and ``beta``::

    mean = (1/N) Σ x                 var = (1/N) Σ (x - mean)²      (biased, over the batch)
    x̂ = (x - mean) / √(var + eps)    y = gamma · x̂ + beta

``N`` counts every element of one feature: all axes but the feature axes are reduced
(``[batch, features]``, or channels last ``[batch, ..., channels]``).

**Params and state are apart.** ``params = {"gamma": [features], "beta": [features]}`` are
trained; ``state = BatchNormState(mean, var, count)`` holds the running statistics that eval
mode uses, and no optimizer ever sees it. ``apply(..., train=True)`` normalises with the batch
statistics and returns the updated state; ``train=False`` uses the running statistics and
returns the state unchanged; ``init`` never touches statistics (mean 0, var 1, count 0, so eval
before any training step normalises with those).

**Conventions, by name** (``convention=``), for the running statistics after a training step
with batch statistics ``mean``, ``var`` (biased) and ``var_u = var · N / (N - 1)`` (unbiased):

* ``"pytorch"`` (default; PyTorch's ``BatchNorm1d/2d``): ``momentum`` (default 0.1) is the
  weight of the new batch; the running variance is stored **unbiased**::

      running_mean ← (1 - momentum) · running_mean + momentum · mean
      running_var  ← (1 - momentum) · running_var  + momentum · var_u

* ``"flax"`` (Flax ``nn.BatchNorm``, Keras): ``momentum`` (default 0.99) is the weight of the
  **old** value; the running variance is stored **biased**::

      running_mean ← momentum · running_mean + (1 - momentum) · mean
      running_var  ← momentum · running_var  + (1 - momentum) · var

* ``"cumulative"`` (PyTorch's ``momentum=None``): the plain average of every batch so far,
  ``running ← running + (batch - running) / count`` after incrementing ``count``; unbiased var.

**The backward, derived by hand** (train mode; sums over the reduced axes, ``N`` elements,
``s = 1/√(var + eps)``)::

    dbeta  = Σ dy                    dgamma = Σ dy · x̂
    dx     = (gamma · s / N) · (N · dy - dbeta - x̂ · dgamma)

(the mean and the variance depend on every x, hence the two correction terms). In eval mode
the statistics are constants: ``dx = gamma · s_running · dy``. The running-statistic update is
not differentiated.

**Several devices.** With ``axis_name`` (inside ``shard_map``/``pmap``), the batch statistics
are global: sums and counts are ``psum``-ed over devices, so unequal per-device batches (with
``mask``) give exactly the statistics of the whole batch, as PyTorch's SyncBatchNorm does (a
plain ``pmean`` of per-device means, as in Flax, weights a device of 2 examples like one of
200). Under ``jit`` with the batch sharded over a mesh no ``axis_name`` is needed: the
reduction already spans the global batch.

**Precision.** Statistics are computed in at least float32 (float16/bfloat16 input is promoted
for them), with the two-pass variance ``mean((x - mean)²)``, never ``E[x²] - E[x]²`` (which can
go negative and give NaN). The output has the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.tree_util import Partial

from jaxnn import gradcheck
from jaxnn._checks import ensure_float, ensure_positive
from jaxnn._typing import Array, ArrayLike, Params, PRNGKey, Shape
from jaxnn.layers import Layer, _default_float, layer_case, mlp

__all__ = ["CONVENTIONS", "BatchNormState", "batchnorm"]

CONVENTIONS = ("pytorch", "flax", "cumulative")
_DEFAULT_MOMENTUM = {"pytorch": 0.1, "flax": 0.99, "cumulative": None}


class BatchNormState(NamedTuple):
    """Running statistics of a BatchNorm layer (never trained, never seen by an optimizer)."""

    mean: Array  # [*features] running mean
    var: Array  # [*features] running variance (unbiased: pytorch, cumulative; biased: flax)
    count: Array  # [] int32, training steps folded into the running statistics


def _check_momentum(convention: str, momentum: float | None) -> float | None:
    if convention not in CONVENTIONS:
        raise ValueError(f"batchnorm: convention must be one of {CONVENTIONS}, got {convention!r}.")
    if convention == "cumulative":
        if momentum is not None:
            raise ValueError(
                "batchnorm: the 'cumulative' convention averages every batch equally and takes "
                f"no momentum, got momentum={momentum!r}. Leave it out, or use "
                "convention='pytorch' for an exponential average."
            )
        return None
    if momentum is None:
        return _DEFAULT_MOMENTUM[convention]
    m = float(momentum)
    if convention == "pytorch" and not (0 < m <= 1):
        raise ValueError(
            f"batchnorm: in the 'pytorch' convention momentum is the weight of the NEW batch and "
            f"must lie in (0, 1], got {momentum!r}. (For Flax/Keras' momentum = weight of the "
            f"old value, e.g. 0.99, pass convention='flax'.)"
        )
    if convention == "flax" and not (0 <= m < 1):
        raise ValueError(
            f"batchnorm: in the 'flax' convention momentum is the weight of the OLD value and "
            f"must lie in [0, 1), got {momentum!r}. (For PyTorch's momentum = weight of the new "
            f"batch, e.g. 0.1, pass convention='pytorch'.)"
        )
    return m


def _stat_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def batchnorm(
    *,
    convention: str = "pytorch",
    momentum: float | None = None,
    eps: float = 1e-5,
    axis: int | Sequence[int] = -1,
    axis_name: str | None = None,
    param_dtype: Any = None,
    name: str = "batchnorm",
) -> Layer:
    """A BatchNorm layer (see the module docstring for the formulas and conventions).

    Args:
      convention: ``"pytorch"`` (default), ``"flax"`` or ``"cumulative"``: how the running
        statistics are updated and what ``momentum`` means.
      momentum: per the convention (defaults: 0.1 pytorch, 0.99 flax; none for cumulative).
      eps: added to the variance, ``> 0``.
      axis: the feature axis or axes, kept; every other axis is reduced. Default ``-1``
        (``[batch, features]`` and channels-last ``[batch, ..., channels]``).
      axis_name: the mapped axis (``shard_map``/``pmap``) to combine statistics over, weighted
        by each device's count.
      param_dtype: dtype of gamma, beta and the running statistics (default float64 under
        ``jax_enable_x64``, else float32).
      name: the layer's name.

    The layer's ``apply`` and ``vjp`` take an extra keyword ``mask``: a boolean array of the
    reduced axes' shape (e.g. ``[batch]``) marking the examples that count in the statistics
    (padding excluded); every example is still normalised. A mask that selects fewer than two
    examples cannot be refused under ``jit``: the statistics then stay finite but say nothing.

    Raises:
      ValueError: unknown convention; ``eps <= 0``; momentum outside its convention's range.
    """
    momentum = _check_momentum(convention, momentum)
    ensure_positive(eps, "eps")
    feature_axes_arg = (axis,) if isinstance(axis, int) else tuple(axis)
    if not feature_axes_arg:
        raise ValueError("batchnorm: axis must name at least one feature axis.")

    def _axes(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        feat = tuple(sorted(a % ndim if -ndim <= a < ndim else a for a in feature_axes_arg))
        if any(not 0 <= a < ndim for a in feat) or len(set(feat)) != len(feat):
            raise ValueError(
                f"{name}: feature axes {feature_axes_arg} do not fit an input of rank {ndim}."
            )
        reduce = tuple(a for a in range(ndim) if a not in feat)
        if not reduce:
            raise ValueError(
                f"{name}: an input of rank {ndim} with feature axes {feat} leaves no axis to "
                f"normalise over. BatchNorm needs a batch axis: pass x of shape [batch, ...]."
            )
        return feat, reduce

    def init(key: PRNGKey, input_shape: Shape) -> tuple[Params, BatchNormState]:
        del key
        feat, _ = _axes(len(input_shape))
        shape = tuple(int(input_shape[a]) for a in feat)
        dtype = param_dtype or _default_float()
        params = {"gamma": jnp.ones(shape, dtype), "beta": jnp.zeros(shape, dtype)}
        state = BatchNormState(
            jnp.zeros(shape, dtype), jnp.ones(shape, dtype), jnp.zeros((), jnp.int32)
        )
        return params, state

    def _prepare(params: Params, state: Any, x: ArrayLike, mask: ArrayLike | None):
        x = ensure_float(x, "x")
        feat, reduce = _axes(x.ndim)
        shape = tuple(x.shape[a] for a in feat)
        if not isinstance(params, dict) or set(params) != {"gamma", "beta"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(
                f"{name}: params must be a dict with keys ['beta', 'gamma'], got {got}. Use "
                f"the params that this layer's init returned."
            )
        if not isinstance(state, BatchNormState):
            raise ValueError(
                f"{name}: state must be the BatchNormState that init returned (running mean, "
                f"var, count), got {type(state).__name__}. Thread the state returned by each "
                f"apply into the next call."
            )
        for what, arr in (("gamma", params["gamma"]), ("beta", params["beta"]), ("running mean", state.mean), ("running var", state.var)):  # fmt: skip
            if tuple(jnp.shape(arr)) != shape:
                raise ValueError(
                    f"{name}: {what} has shape {tuple(jnp.shape(arr))} but the input has feature "
                    f"shape {shape} (x.shape={x.shape}, feature axes {feat}). The layer was "
                    f"initialised for another feature size."
                )
        bshape = tuple(x.shape[a] if a in feat else 1 for a in range(x.ndim))
        m = None
        if mask is not None:
            mask = jnp.asarray(mask)
            rshape = tuple(x.shape[a] for a in reduce)
            if mask.shape != rshape or mask.dtype != jnp.bool_:
                raise ValueError(
                    f"{name}: mask must be a boolean array of the reduced axes' shape {rshape}, "
                    f"got {mask.dtype}{list(mask.shape)}."
                )
            m = jnp.expand_dims(mask, feat)  # broadcastable against x
        return x, feat, reduce, bshape, m

    def _batch_stats(xs: Array, reduce: tuple[int, ...], m: Array | None):
        # Counts and sums, psum-ed over devices when mapped: exact global statistics.
        if m is None:
            n = jnp.asarray(math.prod(xs.shape[a] for a in reduce), xs.dtype)
            total = jnp.sum(xs, axis=reduce, keepdims=True)
        else:
            mf = m.astype(xs.dtype)
            n = jnp.sum(mf)
            total = jnp.sum(xs * mf, axis=reduce, keepdims=True)
        if axis_name is not None:
            n, total = lax.psum((n, total), axis_name)
        # A mask may select no example at all: keep that finite (the statistics then say nothing).
        n = jnp.maximum(n, 1)
        mean = total / n
        d = xs - mean
        sq = d * d if m is None else d * d * m.astype(xs.dtype)
        var = jnp.sum(sq, axis=reduce, keepdims=True)
        if axis_name is not None:
            var = lax.psum(var, axis_name)
        return n, mean, var / n

    def _running(state: BatchNormState, n: Array, mean: Array, var: Array, feat_shape):
        mean = lax.stop_gradient(mean.reshape(feat_shape)).astype(state.mean.dtype)
        var = lax.stop_gradient(var.reshape(feat_shape)).astype(state.var.dtype)
        count = state.count + 1
        if convention == "flax":
            new_mean = momentum * state.mean + (1 - momentum) * mean
            new_var = momentum * state.var + (1 - momentum) * var
        else:
            n = lax.stop_gradient(n).astype(state.var.dtype)
            unbiased = var * n / jnp.maximum(n - 1, 1)  # a 1-example mask: finite, not inf
            w = momentum if convention == "pytorch" else 1.0 / count.astype(state.mean.dtype)
            new_mean = (1 - w) * state.mean + w * mean
            new_var = (1 - w) * state.var + w * unbiased
        return BatchNormState(new_mean, new_var, count)

    def _forward(params, state, x, train, mask):
        x, feat, reduce, bshape, m = _prepare(params, state, x, mask)
        sd = _stat_dtype(x.dtype)
        xs = x.astype(sd)
        gamma = params["gamma"].astype(sd).reshape(bshape)
        beta = params["beta"].astype(sd).reshape(bshape)
        feat_shape = tuple(x.shape[a] for a in feat)
        if train:
            local_n = math.prod(x.shape[a] for a in reduce)
            if local_n == 1 and axis_name is None and m is None:
                raise ValueError(
                    f"{name}: train mode needs more than one value per feature to estimate a "
                    f"variance, got x.shape={x.shape} ({local_n} value per feature). Use a batch "
                    f"of at least 2, or train=False to normalise with the running statistics."
                )
            n, mean, var = _batch_stats(xs, reduce, m)
            new_state = _running(state, n, mean, var, feat_shape)
        else:
            n = None
            mean = state.mean.astype(sd).reshape(bshape)
            var = state.var.astype(sd).reshape(bshape)
            new_state = state
        s = lax.rsqrt(var + jnp.asarray(eps, sd))
        xhat = (xs - mean) * s
        y = (gamma * xhat + beta).astype(x.dtype)
        return y, new_state, (xhat, s, gamma, n, m, reduce, bshape)

    def apply(params, state, x, *, train: bool = False, key: PRNGKey | None = None, mask=None):
        del key
        y, new_state, _ = _forward(params, state, x, train, mask)
        return y, new_state

    def vjp(params, state, x, *, train: bool = False, key: PRNGKey | None = None, mask=None):
        del key
        y, new_state, (xhat, s, gamma, n, m, reduce, bshape) = _forward(
            params, state, x, train, mask
        )
        pdtype = params["gamma"].dtype
        if train:
            backward = Partial(
                _train_backward_fn(reduce, bshape, pdtype, axis_name, m is not None),
                xhat,
                s,
                gamma,
                n,
                m,
            )
        else:
            backward = Partial(_eval_backward_fn(reduce, bshape, pdtype, axis_name), xhat, s, gamma)
        return y, new_state, backward

    return Layer(name, init, apply, vjp)


# The backward functions close over static facts (axes, dtypes, axis name) and take the saved
# arrays as arguments, so that the Partial's leaves are arrays only (a custom_vjp residual).
_BACKWARDS: dict[Any, Any] = {}


def _train_backward_fn(reduce, bshape, pdtype, axis_name, masked):
    key = ("train", reduce, bshape, jnp.dtype(pdtype), axis_name, masked)
    if key not in _BACKWARDS:

        def backward(xhat, s, gamma, n, m, dy):
            dyf = dy.astype(xhat.dtype)
            dbeta = jnp.sum(dyf, axis=reduce, keepdims=True)  # this device's share
            dgamma = jnp.sum(dyf * xhat, axis=reduce, keepdims=True)
            if axis_name is not None:
                sum_dy, sum_dy_xhat = lax.psum((dbeta, dgamma), axis_name)
                if not _varies(gamma, axis_name):
                    # Params replicated over the mapped axis (shard_map in_specs P()): their
                    # cotangent is the sum of every device's share, as autodiff's transpose of
                    # the implicit broadcast gives.
                    dbeta, dgamma = sum_dy, sum_dy_xhat
            else:
                sum_dy, sum_dy_xhat = dbeta, dgamma
            correction = (sum_dy + xhat * sum_dy_xhat) / n
            if masked:
                correction = correction * m.astype(xhat.dtype)  # padding did not enter the stats
            dx = gamma * s * (dyf - correction)
            grads = {
                "gamma": dgamma.reshape(_feature_shape(bshape, reduce)).astype(pdtype),
                "beta": dbeta.reshape(_feature_shape(bshape, reduce)).astype(pdtype),
            }
            return grads, dx.astype(dy.dtype)

        _BACKWARDS[key] = backward
    return _BACKWARDS[key]


def _eval_backward_fn(reduce, bshape, pdtype, axis_name):
    key = ("eval", reduce, bshape, jnp.dtype(pdtype), axis_name)
    if key not in _BACKWARDS:

        def backward(xhat, s, gamma, dy):
            dyf = dy.astype(xhat.dtype)
            dgamma = jnp.sum(dyf * xhat, axis=reduce)
            dbeta = jnp.sum(dyf, axis=reduce)
            if axis_name is not None and not _varies(gamma, axis_name):
                dgamma, dbeta = lax.psum((dgamma, dbeta), axis_name)  # replicated params
            fshape = _feature_shape(bshape, reduce)
            grads = {
                "gamma": dgamma.reshape(fshape).astype(pdtype),
                "beta": dbeta.reshape(fshape).astype(pdtype),
            }
            return grads, (gamma * s * dyf).astype(dy.dtype)

        _BACKWARDS[key] = backward
    return _BACKWARDS[key]


def _varies(a: Array, axis_name: str) -> bool:
    """Whether ``a`` holds per-device values along ``axis_name`` (shard_map's varying type).

    JAX 0.10 records it as ``aval.manual_axis_type.varying``, earlier releases as ``aval.vma``;
    without either (no type tracking), values are per-device.
    """
    aval = jax.typeof(a)
    manual_axis_type = getattr(aval, "manual_axis_type", None)
    if manual_axis_type is not None:
        return axis_name in manual_axis_type.varying
    vma = getattr(aval, "vma", None)
    return True if vma is None else axis_name in vma


def _feature_shape(bshape: tuple[int, ...], reduce: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for a, d in enumerate(bshape) if a not in reduce)


# ----------------------------------------------------------------------------- gradcheck


def _random_batchnorm(train: bool):
    def make(key: PRNGKey) -> gradcheck.GradCase:
        k_shape, k_case, k_mean, k_var = jax.random.split(key, 4)
        dims = [int(d) for d in jax.random.randint(k_shape, (3,), 2, 5)]
        # [batch, features] or channels last [batch, length, channels]
        shape = (dims[1], dims[2]) if dims[0] % 2 else (dims[1], 2, dims[2])
        layer = batchnorm()
        case = layer_case(layer, shape, train=train)(k_case)
        if train:
            return case._replace(description=f"train x{shape}")
        # Eval: random running statistics, not init's (0, 1).
        c = shape[-1]
        state = BatchNormState(
            jax.random.normal(k_mean, (c,), jnp.float64),
            jax.random.uniform(k_var, (c,), jnp.float64, 0.5, 2.0),
            jnp.asarray(3, jnp.int32),
        )
        (params, x), w = case.args, jax.random.normal(k_case, shape, jnp.float64)

        def f(params: Params, x: Array) -> Array:
            return jnp.sum(w * layer.apply(params, state, x)[0])

        def grad_fn(params: Params, x: Array):
            return layer.vjp(params, state, x)[2](w)

        return gradcheck.GradCase(f, (params, x), grad_fn, (0, 1), f"eval x{shape}")

    return make


def _random_bn_mlp(key: PRNGKey) -> gradcheck.GradCase:
    k_shape, k_case = jax.random.split(key)
    batch, n_in, hidden = (int(s) for s in jax.random.randint(k_shape, (3,), 2, 6))
    net = mlp([hidden, hidden, 2], "sigmoid", batchnorm=True, b_init="glorot_normal")
    return layer_case(net, (batch, n_in), train=True)(k_case)._replace(
        description=f"mlp+bn x({batch}, {n_in})"
    )


gradcheck.register("batchnorm.train", _random_batchnorm(True))
gradcheck.register("batchnorm.eval", _random_batchnorm(False))
gradcheck.register("batchnorm.mlp", _random_bn_mlp)
