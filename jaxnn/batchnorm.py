"""BatchNorm as a stateful functional transform (Ioffe & Szegedy, 2015).

A saturating activation loses the spread of its inputs: sigmoid maps 60 and 90 to
``1 - 8.8e-27`` and ``1 - 8.2e-40``: both round to 1.0 even in float64, and the derivative
there is ~0 (exactly 0 in float32 at 90), so no gradient flows back. BatchNorm standardises
each feature over the batch, then lets the network choose the scale and offset it wants with
two learned parameters ``gamma`` and ``beta``::

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
for them) by :func:`jaxnn.statistics.moments`, the routine the whole normalisation family
shares: one pass (``Σ x`` and ``Σ x²`` together) where its cancellation costs at most 4 bits,
else the two-pass variance ``mean((x - mean)²)`` on ``x / scale`` with ``scale >= 1`` a power
of two near each feature's largest ``|x|``; either way every intermediate stays finite for any
finite input (a float32 ``(x - mean)²`` overflows once the spread passes ``1.8e19``), and the
variance never goes negative. A running variance beyond the state dtype's range is stored as
its largest finite value (:func:`update_running`). The output has the input's dtype, or
``compute_dtype``.

**Mixed precision** (``compute_dtype=jnp.bfloat16``, as :func:`~jaxnn.networks.mlp` passes
it): the layer's policy in jmp's terms is ``Policy(param_dtype=float32, compute_dtype=float32,
output_dtype=bfloat16)`` (jmp users give BatchNorm a policy of its own, as Haiku's ImageNet
example's ``--mp_bn_policy``), and it is what Flax's ``nn.BatchNorm(dtype=jnp.bfloat16)`` does
(statistics reduced in float32, ``dtype`` the output's). With ``c = promote(compute_dtype, float32)`` and ``o = compute_dtype``, the
formulas above run on ``cast_c(x)`` with gamma, beta and the statistics in ``c``::

    y = cast_o(gamma · x̂ + beta)          dx = cast_x(the backward above, on cast_c(dy))

so bfloat16's 8-bit significand never enters a mean, a variance or the running statistics.

**Refused**: a training batch of fewer than two values per feature (no variance to estimate;
a 0-row batch included). Under ``jit`` a ``mask`` selecting fewer than two examples cannot be
refused: the statistics stay finite but say nothing, and the checking mode
(:mod:`jaxnn.debug`) raises.

**Inference statistics as the paper defines them** (Ioffe & Szegedy, 2015, Algorithm 2,
steps 8–11): after training, run the training network (train mode) over training minibatches
``B`` of size ``m`` and set, in every BatchNorm layer::

    E[x] = E_B[mean_B]        Var[x] = m/(m - 1) · E_B[var_B]      (var_B biased)

which is the ``"cumulative"`` update started from ``count = 0``, whatever the layer's own
convention. :func:`population_statistics` computes them for any network and returns the
state to evaluate with (PyTorch's ``torch.optim.swa_utils.update_bn`` does the same by
setting ``momentum=None`` and resetting the statistics).

The module is a handful of pure functions — :func:`update_running` and the two backwards (the
statistics and the normalisation are :mod:`jaxnn.statistics`') — :func:`batchnorm`, which
binds a configuration to them as a :class:`~jaxnn.Layer`, and :func:`population_statistics`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn._checks import (
    PARAM_DTYPE_HINT,
    ensure_float,
    ensure_float_dtype,
    ensure_input_shape,
    ensure_positive,
    is_traced,
    require,
)
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward
from jaxnn.layers import default_float
from jaxnn.statistics import Statistics, moments, normalize

__all__ = [
    "CONVENTIONS",
    "BatchNormState",
    "batchnorm",
    "population_statistics",
    "update_running",
]

CONVENTIONS = ("pytorch", "flax", "cumulative")
_DEFAULT_MOMENTUM = {"pytorch": 0.1, "flax": 0.99, "cumulative": None}
# While True, train mode folds each batch into the running statistics by the cumulative rule,
# whatever a layer's convention (what population_statistics needs). A user context, so it is
# part of jit's cache key: a function traced outside it is traced again inside it.
_POPULATION = jax.make_user_context(False)


class BatchNormState(NamedTuple):
    """Running statistics of a BatchNorm layer (never trained, never seen by an optimizer)."""

    mean: Array  # [*features] running mean
    var: Array  # [*features] running variance (unbiased: pytorch, cumulative; biased: flax)
    count: Array  # [] int32, training steps folded into the running statistics


class _Residuals(NamedTuple):
    """What the hand backward needs, saved by the forward (statistics dtype)."""

    xhat: Array  # [*x.shape] normalised input
    inv_std: Array  # [*bshape] 1 / √(var + eps); bshape: x's rank, 1 on the reduced axes
    gamma: Array  # [*bshape]
    count: Array | None  # [] values per feature in the batch statistics (train only)
    mask: Array | None  # [*bshape-like] bool, the examples in the statistics (train, masked)


class _Config(NamedTuple):
    """A BatchNorm layer's static configuration."""

    name: str
    convention: str
    momentum: float | None
    eps: float
    axes: tuple[int, ...]  # the feature axes as given (may be negative)
    axis_name: str | None
    param_dtype: Any
    compute_dtype: Any  # the output's dtype (None: the input's); statistics in >= float32


# ----------------------------------------------------------------------------- the math


def update_running(
    state: BatchNormState,
    stats: Statistics,
    convention: str,
    momentum: float | None,
) -> BatchNormState:
    """The running statistics after one training step, per ``convention`` (module docstring).

    ``stats`` are the batch's (:func:`jaxnn.statistics.moments`); the update is not differentiated. A
    variance beyond the state dtype's range (a float32 feature whose spread exceeds ``1.8e19``)
    is stored as its largest finite value: eval mode then stays finite but under-normalises
    that feature; keep such data in float64 (``param_dtype``) or rescale it.
    """
    dtype = state.mean.dtype
    shape = state.mean.shape
    fmax = jnp.finfo(dtype).max
    stats = lax.stop_gradient(stats)
    mean = stats.mean(dtype).reshape(shape)
    var = stats.var(state.var.dtype).reshape(shape)
    count = state.count + 1
    if convention == "flax":
        new_mean = momentum * state.mean + (1 - momentum) * mean
        new_var = momentum * state.var + (1 - momentum) * var
    else:
        n = stats.count.astype(state.var.dtype)
        unbiased = var * n / jnp.maximum(n - 1, 1)  # a 1-example mask: finite, not inf
        w = momentum if convention == "pytorch" else 1.0 / count.astype(dtype)
        new_mean = (1 - w) * state.mean + w * mean
        new_var = (1 - w) * state.var + w * jnp.minimum(unbiased, fmax)
    return BatchNormState(jnp.clip(new_mean, -fmax, fmax), jnp.minimum(new_var, fmax), count)


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


def _param_grads(dgamma: Array, dbeta: Array, feature_shape: tuple[int, ...], pdtype: Any):
    return {
        "gamma": dgamma.reshape(feature_shape).astype(pdtype),
        "beta": dbeta.reshape(feature_shape).astype(pdtype),
    }


def _train_backward(
    res: _Residuals,
    dy: Array,
    *,
    reduce: tuple[int, ...],
    feature_shape: tuple[int, ...],
    pdtype: Any,
    x_dtype: Any,
    axis_name: str | None,
) -> tuple[Params, Array]:
    """``dx = gamma s (dy - (Σ dy + x̂ Σ dy x̂) / N)``; ``dgamma = Σ dy x̂``; ``dbeta = Σ dy``."""
    dyf = dy.astype(res.xhat.dtype)
    dbeta = jnp.sum(dyf, axis=reduce, keepdims=True)  # this device's share
    dgamma = jnp.sum(dyf * res.xhat, axis=reduce, keepdims=True)
    sum_dy, sum_dy_xhat = dbeta, dgamma
    if axis_name is not None:
        sum_dy, sum_dy_xhat = lax.psum((dbeta, dgamma), axis_name)
        if not _varies(res.gamma, axis_name):
            # Params replicated over the mapped axis (shard_map in_specs P()): their cotangent
            # is the sum of every device's share, as autodiff's transpose of the implicit
            # broadcast gives.
            dbeta, dgamma = sum_dy, sum_dy_xhat
    correction = (sum_dy + res.xhat * sum_dy_xhat) / res.count
    if res.mask is not None:
        correction = correction * res.mask.astype(res.xhat.dtype)  # padding is not in the stats
    dx = res.gamma * res.inv_std * (dyf - correction)
    return _param_grads(dgamma, dbeta, feature_shape, pdtype), dx.astype(x_dtype)


def _eval_backward(
    res: _Residuals,
    dy: Array,
    *,
    reduce: tuple[int, ...],
    feature_shape: tuple[int, ...],
    pdtype: Any,
    x_dtype: Any,
    axis_name: str | None,
) -> tuple[Params, Array]:
    """Constant statistics: ``dx = gamma s dy``; ``dgamma = Σ dy x̂``; ``dbeta = Σ dy``."""
    dyf = dy.astype(res.xhat.dtype)
    dgamma = jnp.sum(dyf * res.xhat, axis=reduce)
    dbeta = jnp.sum(dyf, axis=reduce)
    if axis_name is not None and not _varies(res.gamma, axis_name):
        dgamma, dbeta = lax.psum((dgamma, dbeta), axis_name)  # replicated params
    dx = res.gamma * res.inv_std * dyf
    return _param_grads(dgamma, dbeta, feature_shape, pdtype), dx.astype(x_dtype)


# ----------------------------------------------------------------------------- checks


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


def _layout(cfg: _Config, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The feature axes and the reduced axes of an input of rank ``ndim``."""
    feat = tuple(sorted(a % ndim if -ndim <= a < ndim else a for a in cfg.axes))
    if any(not 0 <= a < ndim for a in feat) or len(set(feat)) != len(feat):
        raise ValueError(f"{cfg.name}: feature axes {cfg.axes} do not fit an input of rank {ndim}.")
    reduce = tuple(a for a in range(ndim) if a not in feat)
    if not reduce:
        raise ValueError(
            f"{cfg.name}: an input of rank {ndim} with feature axes {feat} leaves no axis to "
            f"normalise over. BatchNorm needs a batch axis: pass x of shape [batch, ...]."
        )
    return feat, reduce


def _check_inputs(cfg: _Config, params: Params, state: Any, x: Array, feat: tuple[int, ...]):
    if not isinstance(params, dict) or set(params) != {"gamma", "beta"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{cfg.name}: params must be a dict with keys ['beta', 'gamma'], got {got}. Use the "
            f"params that this layer's init returned."
        )
    if not isinstance(state, BatchNormState):
        raise ValueError(
            f"{cfg.name}: state must be the BatchNormState that init returned (running mean, "
            f"var, count), got {type(state).__name__}. Thread the state returned by each apply "
            f"into the next call."
        )
    shape = tuple(x.shape[a] for a in feat)
    for what, arr in (("gamma", params["gamma"]), ("beta", params["beta"]), ("running mean", state.mean), ("running var", state.var)):  # fmt: skip
        if tuple(jnp.shape(arr)) != shape:
            raise ValueError(
                f"{cfg.name}: {what} has shape {tuple(jnp.shape(arr))} but the input has feature "
                f"shape {shape} (x.shape={x.shape}, feature axes {feat}). The layer was "
                f"initialised for another feature size."
            )


def _check_mask(cfg: _Config, mask: ArrayLike, x: Array, feat, reduce) -> Array:
    mask = jnp.asarray(mask)
    rshape = tuple(x.shape[a] for a in reduce)
    if mask.shape != rshape or mask.dtype != jnp.bool_:
        raise ValueError(
            f"{cfg.name}: mask must be a boolean array of the reduced axes' shape {rshape}, got "
            f"{mask.dtype}{list(mask.shape)}."
        )
    return jnp.expand_dims(mask, feat)  # broadcastable against x


# ----------------------------------------------------------------------------- the layer


def _forward(
    cfg: _Config, params: Params, state: Any, x: ArrayLike, train: bool, mask: ArrayLike | None
) -> tuple[Array, Any, _Residuals, dict[str, Any]]:
    """``(y, new_state, residuals, static)``: one forward pass, train or eval."""
    x = ensure_float(x, "x")
    feat, reduce = _layout(cfg, x.ndim)
    _check_inputs(cfg, params, state, x, feat)
    m = None if mask is None else _check_mask(cfg, mask, x, feat, reduce)
    out = x.dtype if cfg.compute_dtype is None else cfg.compute_dtype
    sd = jnp.promote_types(out, jnp.float32)  # statistics and normalisation in >= float32
    bshape = tuple(x.shape[a] if a in feat else 1 for a in range(x.ndim))
    feature_shape = tuple(x.shape[a] for a in feat)
    xs = x.astype(sd)
    gamma = params["gamma"].astype(sd).reshape(bshape)
    beta = params["beta"].astype(sd).reshape(bshape)
    if train:
        local_n = math.prod(x.shape[a] for a in reduce)
        if cfg.axis_name is None and (local_n == 0 or (local_n == 1 and m is None)):
            raise ValueError(
                f"{cfg.name}: train mode needs more than one value per feature to estimate a "
                f"variance, got x.shape={x.shape} ({local_n} value(s) per feature). Use a batch "
                f"of at least 2, or train=False to normalise with the running statistics."
            )
        stats = moments(xs, reduce, m, cfg.axis_name)
        if m is not None and is_traced(m):
            require(
                stats.count >= 2,
                f"{cfg.name}: the mask selects {{n}} example(s); the batch statistics need at "
                f"least 2",
                n=stats.count,
            )
        if _POPULATION.value:
            new_state = update_running(state, stats, "cumulative", None)
        else:
            new_state = update_running(state, stats, cfg.convention, cfg.momentum)
        n = stats.count
    else:
        n, new_state = None, state
        one = jnp.ones(bshape, sd)
        stats = Statistics(
            None, one, state.mean.astype(sd).reshape(bshape), state.var.astype(sd).reshape(bshape)
        )
    y, xhat, inv_std = normalize(xs, stats, gamma, beta, cfg.eps)
    static = {
        "reduce": reduce,
        "feature_shape": feature_shape,
        "pdtype": jnp.dtype(params["gamma"].dtype),
        "x_dtype": jnp.dtype(x.dtype),
        "axis_name": cfg.axis_name,
    }
    res = _Residuals(xhat, inv_std, gamma, n, m if train else None)
    return y.astype(out), new_state, res, static


def batchnorm(
    *,
    convention: str = "pytorch",
    momentum: float | None = None,
    eps: float = 1e-5,
    axis: int | Sequence[int] = -1,
    axis_name: str | None = None,
    param_dtype: Any = None,
    compute_dtype: Any = None,
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
      compute_dtype: the network's compute dtype (``jnp.bfloat16`` for mixed precision): the
        output's dtype, the normalisation itself computed in at least float32 (module
        docstring, *Mixed precision*). None (default): the input's dtype.
      name: the layer's name.

    float16 is refused as ``param_dtype`` and ``compute_dtype``
    (:func:`jaxnn._checks.refuse_float16`: without loss scaling its range overflows and
    underflows); an input ``x`` in float16 is accepted, its statistics taken in float32.

    The layer's ``apply`` and ``vjp`` take an extra keyword ``mask``: a boolean array of the
    reduced axes' shape (e.g. ``[batch]``) marking the examples that count in the statistics
    (padding excluded); every example is still normalised. A mask that selects fewer than two
    examples cannot be refused under ``jit``: the statistics then stay finite but say nothing
    (the checking mode, :mod:`jaxnn.debug`, raises).

    Raises:
      ValueError: unknown convention; ``eps <= 0``; momentum outside its convention's range.
      TypeError: a ``param_dtype`` or ``compute_dtype`` that is not floating, or is float16.
    """
    momentum = _check_momentum(convention, momentum)
    ensure_positive(eps, f"{name}: eps")
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes:
        raise ValueError("batchnorm: axis must name at least one feature axis.")
    compute_dtype = ensure_float_dtype(
        compute_dtype, f"{name}: compute_dtype", "Use jnp.bfloat16 for mixed precision."
    )
    param_dtype = ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT)
    cfg = _Config(
        name, convention, momentum, float(eps), axes, axis_name, param_dtype, compute_dtype
    )

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, BatchNormState]:
        del key
        shape = ensure_input_shape(input_shape, name)
        feat, _ = _layout(cfg, len(shape))
        fshape = tuple(shape[a] for a in feat)
        dtype = default_float() if param_dtype is None else param_dtype
        params = {"gamma": jnp.ones(fshape, dtype), "beta": jnp.zeros(fshape, dtype)}
        state = BatchNormState(
            jnp.zeros(fshape, dtype), jnp.ones(fshape, dtype), jnp.zeros((), jnp.int32)
        )
        return params, state

    def apply(params, state, x, *, train: bool, key: PRNGKey | None = None, mask=None):
        del key
        y, new_state, _, _ = _forward(cfg, params, state, x, train, mask)
        return y, new_state

    def vjp(params, state, x, *, train: bool, key: PRNGKey | None = None, mask=None):
        del key
        y, new_state, res, static = _forward(cfg, params, state, x, train, mask)
        backward = bind_backward(_train_backward if train else _eval_backward, res, **static)
        return y, new_state, backward

    return Layer(name, init, apply, vjp, keywords=("mask",))


# ----------------------------------------------------------------------------- Algorithm 2


def _is_bn_state(node: Any) -> bool:
    return isinstance(node, BatchNormState)


@functools.lru_cache(maxsize=64)
def _population_step(network: Layer) -> Any:
    """``(params, state, x, key, keywords) -> state``: one training-mode pass, jitted once per
    network (traced inside :data:`_POPULATION`, which is part of the cache key)."""

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(params: Params, state: State, x: Array, key: PRNGKey | None, keywords: dict):
        _, new_state = network.apply(params, state, x, train=True, key=key, **keywords)
        return new_state

    return step


def _input_of(batch: Any, i: int) -> Any:
    """A batch's input: the batch itself, or the first element of a tuple or list."""
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError(
                f"population_statistics: batch {i} is an empty {type(batch).__name__}; each "
                f"batch must be an input array x, or a tuple (x, ...) whose first element is x."
            )
        return batch[0]
    return batch


@functools.partial(jax.jit, static_argnums=(2,))
def _nonfinite_count(x: Array, mask: Array | None, mask_ndim: int) -> tuple[Array, Array]:
    """``(count, first flat index)`` of the non-finite values of ``x`` that the statistics
    use (with a ``mask`` over x's leading axes, those of the selected examples)."""
    bad = ~jnp.isfinite(x)
    if mask is not None:
        bad = bad & mask.reshape(mask.shape + (1,) * (x.ndim - mask_ndim))
    return jnp.sum(bad, dtype=jnp.int32), jnp.argmax(bad.reshape(-1)).astype(jnp.int32)


def _finite_input_check(x: Any, mask: np.ndarray | None) -> tuple[Any, Any] | None:
    """The non-finite count of a concrete floating batch input, as :func:`_nonfinite_count`
    (on the device, not yet fetched: the batches run on without a host sync each); None when
    ``x`` cannot be checked (traced, not floating: the layers' own checks refuse it, or a mask
    of another shape, whose examples cannot be told from x's)."""
    if is_traced(x) or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        return None
    if mask is not None and (mask.dtype != np.bool_ or mask.shape != tuple(x.shape[: mask.ndim])):
        return None
    if isinstance(x, np.ndarray):  # a host array stays on the host
        bad = ~np.isfinite(x)
        if mask is not None:
            bad &= mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        return int(bad.sum()), int(np.argmax(bad.reshape(-1)))
    return _nonfinite_count(
        x, None if mask is None else jnp.asarray(mask), 0 if mask is None else mask.ndim
    )


def _refuse_nonfinite_inputs(checks: list[tuple[int, tuple[int, ...], tuple[Any, Any]]]) -> None:
    """Refuse the first batch whose input holds NaN or inf (one host transfer for all)."""
    if not checks:
        return
    counts = np.asarray(jnp.stack([jnp.asarray(c[2][0]) for c in checks]))
    if not counts.any():
        return
    k = int(np.argmax(counts > 0))
    i, shape, (_, first) = checks[k]
    index = tuple(int(j) for j in np.unravel_index(int(first), shape))
    raise ValueError(
        f"population_statistics: batch {i}'s input x (shape {shape}) holds {int(counts[k])} "
        f"non-finite value(s) (NaN or inf), the first at index {index}; the BatchNorm "
        f"statistics would be NaN. Drop or repair those examples before passing the batches "
        f"(e.g. x[np.isfinite(x).reshape(len(x), -1).all(1)])."
    )


def _check_finite_statistics(params: Params, state: State, inputs_checked: bool) -> None:
    """Refuse non-finite population statistics, naming the layers and whether the params are
    to blame (one reduction over every layer, one sync)."""
    paths, layers = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_bn_state)[0]:
        if _is_bn_state(leaf):
            paths.append(jax.tree_util.keystr(path) or "state")
            layers.append(jnp.all(jnp.isfinite(leaf.mean)) & jnp.all(jnp.isfinite(leaf.var)))
    if any(is_traced(f) for f in layers):
        return  # inside jit: no values to check
    finite = np.asarray(jnp.stack(layers))
    if finite.all():
        return
    bad_layers = [p for p, ok in zip(paths, finite, strict=True) if not ok]
    bad_params = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        and not bool(jnp.isfinite(leaf).all())
    ]
    inputs = " although every batch's input was finite" if inputs_checked else ""
    if bad_params:
        why = (
            f"the network's params or state are non-finite: these params hold NaN or inf: "
            f"{', '.join(bad_params)}. Check them with jnp.isfinite and restore the params of a "
            f"finite checkpoint (or train again with a lower learning rate)"
        )
    else:
        why = (
            "the params are finite, so the network's state is non-finite outside the BatchNorm "
            "layers, or a layer before them overflowed (inputs or weights too large for the "
            "dtype). Check the params and the state with jnp.isfinite"
        )
    raise ValueError(
        f"population_statistics: the statistics of {', '.join(bad_layers)} are non-finite "
        f"(NaN or inf){inputs}; {why}."
    )


def population_statistics(
    network: Layer,
    params: Params,
    state: State,
    batches: Iterable[Any],
    *,
    key: PRNGKey | None = None,
    **keywords: Any,
) -> State:
    """The inference statistics of every BatchNorm layer in ``network``, as Ioffe & Szegedy (2015)
    define them (Algorithm 2, steps 9–11): ``state`` with each :class:`BatchNormState` set to::

        mean = E_B[mean_B]     var = E_B[m_B/(m_B - 1) · var_B]     count = number of batches

    where ``mean_B`` and ``var_B`` (biased) are the statistics each layer computes of its input
    on batch ``B`` with the network in train mode (so each layer's input is normalised by the
    layers before it with their batch statistics, as in training). For batches of one size
    ``m`` this is the paper's ``Var[x] = m/(m - 1) · E_B[var_B]``. Evaluate with the returned
    state (``network.apply(params, pop_state, x, train=False)``). The state passed in is not
    consumed; only its BatchNorm entries change; ``params`` are not changed.

    It is the ``"cumulative"`` convention's update (``running ← running + (batch - running) /
    count``, unbiased variance) from ``count = 0``, applied to every BatchNorm layer whatever
    its own convention, in one training-mode pass per batch; the paper runs it once training
    has finished. Each batch counts once, whatever its size: drop an incomplete last batch
    to follow the paper (or pass ``mask=`` for padded batches of one shape).

    Args:
      network: a network (any :class:`~jaxnn.Layer`; BatchNorm layers anywhere inside it).
      params, state: the trained network's params and state.
      batches: an iterable of training minibatches, each an input array ``x`` or a tuple
        ``(x, ...)`` whose first element is ``x`` (targets are ignored), e.g. the minibatches
        of one epoch without shuffling.
      key: needed when ``network`` is stochastic (dropout): batch ``i`` gets
        ``jax.random.fold_in(key, i)``, so dropout is active, as in the training network that
        Algorithm 2 runs.
      **keywords: keyword arrays passed to every call (BatchNorm's ``mask``).

    Returns:
      ``state``'s structure, with every BatchNorm layer's population statistics.

    Raises:
      ValueError: ``batches`` is empty; ``state`` holds no BatchNorm state; ``network`` is
        stochastic and ``key`` is None; a batch of one example (no variance to estimate); a
        batch whose input ``x`` holds NaN or inf (checked per batch, one reduction and one
        host sync each); statistics that come out non-finite from finite inputs (the params
        or the state are non-finite, or a layer overflowed).

    Example::

        trained = fit(network, loss, optimizer, ts, (x, y), epochs=20).state
        batches = (x[i : i + 64] for i in range(0, len(x) - 63, 64))  # full batches only
        pop = population_statistics(network, trained.params, trained.state, batches)
        logits, _ = network.apply(trained.params, pop, x_test, train=False)
    """
    if not isinstance(network, Layer):
        raise TypeError(
            f"population_statistics: network must be a jaxnn Layer (mlp(...), serial(...)), "
            f"got {type(network).__name__}."
        )
    if not any(_is_bn_state(n) for n in jax.tree.leaves(state, is_leaf=_is_bn_state)):
        raise ValueError(
            f"population_statistics: the state of {network.name!r} holds no BatchNormState, so "
            f"there are no BatchNorm statistics to estimate. Pass the state that the network's "
            f"init (or training) returned; a network without BatchNorm needs none."
        )
    if network.stochastic and key is None:
        raise ValueError(
            f"population_statistics: {network.name!r} draws randomness in train mode (dropout), so "
            f"it needs key=jax.random.key(seed); batch i gets jax.random.fold_in(key, i)."
        )
    fresh = jax.tree.map(
        lambda s: (
            BatchNormState(jnp.zeros_like(s.mean), jnp.ones_like(s.var), jnp.zeros_like(s.count))
            if _is_bn_state(s)
            else s
        ),
        state,
        is_leaf=_is_bn_state,
    )
    # The first step donates its state argument: give it copies, never the caller's arrays.
    current = jax.tree.map(jnp.array, fresh)
    step = _population_step(network)
    n, checked = 0, True
    mask = keywords.get("mask")
    if is_traced(mask):  # inside jit: no values to check
        mask, checked = None, False
    mask = None if mask is None else np.asarray(mask)  # on the host once, for the input check
    checks = []
    with _POPULATION(True):
        for i, batch in enumerate(batches):
            k = None if key is None else jax.random.fold_in(key, i)
            x = _input_of(batch, i)
            check = _finite_input_check(x, mask)
            if check is None:
                checked = False
            else:
                checks.append((i, tuple(x.shape), check))
            current = step(params, current, x, k, keywords)
            n += 1
    _refuse_nonfinite_inputs(checks)
    if n == 0:
        raise ValueError(
            "population_statistics: batches is empty; Algorithm 2 averages the statistics of "
            "at least one training minibatch. Pass an iterable of input arrays (a generator "
            "is consumed once: make a new one for each call)."
        )
    _check_finite_statistics(params, current, checked)
    return jax.tree.map(
        lambda old, new: new if _is_bn_state(old) else old, state, current, is_leaf=_is_bn_state
    )
