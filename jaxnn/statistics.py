"""The statistics of the normalisation family, and the normalisation itself, with one guarantee.

BatchNorm, LayerNorm, GroupNorm and RMSNorm differ only in the axes they reduce (the batch
and spatial axes; the features of one example; a group of channels of one example) and in
whether they centre. Each computes, per normalised group of ``n`` elements::

    mean = (1/n) Σ x         var = (1/n) Σ (x - mean)²        (biased; RMSNorm: (1/n) Σ x²)
    x̂ = (x - mean) / √(var + eps)         y = gamma · x̂ + beta

here, in one routine, :func:`moments`, and one normaliser, :func:`normalize`.

**The guarantee.** For any finite input the statistics and the output are finite, in the
input's dtype: a float32 ``(x - mean)²`` overflows once the spread passes ``1.8e19``, and
``E[x²] - E[x]²`` can go negative (then ``√`` gives NaN). The statistics are kept in a
scale where they cannot overflow (:class:`Statistics`): ``x / scale`` with ``scale >= 1`` a
power of two near the largest ``|x|`` (dividing by a power of two is exact).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn._typing import Array

__all__ = ["Statistics", "moments", "normalize"]


class Statistics(NamedTuple):
    """Batch statistics of each feature, kept in a scale where they cannot overflow.

    ``mean = scale · mean_scaled`` and ``var = scale² · var_scaled``, with ``scale >= 1`` a
    power of two near ``max |x|`` (so dividing by it is exact for normal numbers) and
    ``|mean_scaled| <= 4``, ``var_scaled <= 16``: a float32 feature of any finite spread has
    finite statistics, though its variance may exceed float32's range (above ``1.8e19²``).
    The running statistics of eval mode travel as ``Statistics(None, 1, mean, var)``.
    """

    count: Array | None  # [] elements per feature (masked, psum-ed); None: running stats
    scale: Array  # [*bshape] power of two, constant (no gradient)
    mean_scaled: Array  # [*bshape]
    var_scaled: Array  # [*bshape] biased

    def var(self, dtype: Any) -> Array:
        """``scale² · var_scaled`` in ``dtype``, saturating at its largest finite value."""
        scale = self.scale.astype(dtype)
        v = self.var_scaled.astype(dtype) * scale * scale  # 0 stays 0 where scale² overflows
        return jnp.minimum(v, jnp.finfo(dtype).max)

    def mean(self, dtype: Any) -> Array:
        return self.mean_scaled.astype(dtype) * self.scale.astype(dtype)


def _power_of_two_scale(amax: Array) -> Array:
    """``2**(e - 1)`` for ``amax = m 2**e``, ``m`` in [0.5, 1): within a factor 2 below
    ``amax``; 1 where that is smaller (values below 2 need no scaling: nothing overflows),
    or ``amax`` is not finite; at most ``2**(maxexp - 2)`` (``2**126`` for float32) so that
    its reciprocal is a normal number (XLA may divide by multiplying with it, and CPUs flush
    subnormals to zero)."""
    info = jnp.finfo(amax.dtype)
    _, e = jnp.frexp(amax)
    e = jnp.clip(e - 1, 0, info.maxexp - 2)
    s = jnp.ldexp(jnp.ones_like(amax), e)
    return jnp.where(jnp.isfinite(amax), s, jnp.ones_like(amax))


def moments(
    x: Array,
    reduce: tuple[int, ...],
    mask: Array | None = None,
    axis_name: str | None = None,
    *,
    center: bool = True,
) -> Statistics:
    """Count, mean and biased variance over the ``reduce`` axes (kept as size-1 axes).

    ``center=False`` gives the mean square instead of the variance (``mean_scaled = 0``,
    ``var_scaled = Σ x² / n`` in the scale's units): RMSNorm's statistic.

    **Two passes, and a third only where it is needed.** ``mean = Σ x / n``, then
    ``var = Σ (x - mean)² / n`` (the two-pass variance: never ``E[x²] - E[x]²``, which can
    go negative and loses ``log2(1 + mean²/var)`` bits to cancellation; Chan, Golub &
    LeVeque, 1983). That is finite unless a sum overflows: float32 ``(x - mean)²`` does once
    the spread passes ``1.8e19``. Then, and only then (``lax.cond``: one branch runs), the
    guaranteed path: the same two passes on ``x / scale``, ``scale >= 1`` a power of two
    near each feature's largest ``|x|`` (a third pass finds it; :class:`Statistics`), where
    every intermediate is finite for any finite input. Dividing by a power of two is exact,
    so both paths round alike; the first gives ``scale = 1``. Under ``jax.vmap`` both
    branches run (a batched ``lax.cond`` is a select), with the same result. A NaN or inf in
    ``x`` takes the guaranteed path and propagates, as in ``jax.nn``.

    **Derivatives** (``jax.custom_jvp``): the statistics' exact tangents, whichever branch
    ran, with ``y = x / scale`` and ``scale`` a constant::

        d mean_scaled = Σ dy / n          d var_scaled = (2/n) Σ (y - mean_scaled) dy

    (``center=False``: ``(2/n) Σ y dy``), linear in ``dx``, so reverse mode costs one
    elementwise product and two sums, and differentiates again to any order.

    With ``mask`` (broadcast against ``x``), only the selected elements count. With
    ``axis_name``, counts and sums are ``psum``-ed (the scale ``pmax``-ed) over the mapped
    axis, so the statistics are those of the global batch, each device weighted by its
    count; that path always scales (three passes). A count of 0 (an all-false mask) is taken
    as 1 to stay finite; the statistics then say nothing.
    """
    reduce = tuple(sorted(int(a) % x.ndim for a in reduce))
    if axis_name is not None:
        return _two_pass(x, reduce, mask, axis_name, center)
    return _moments(x, mask, reduce, center)


def _count(x: Array, reduce: tuple[int, ...], mask: Array | None) -> Array:
    if mask is None:
        return jnp.asarray(math.prod(x.shape[a] for a in reduce), x.dtype)
    return jnp.sum(mask.astype(x.dtype))


def _textbook(x: Array, reduce: tuple[int, ...], mask: Array | None, center: bool) -> Statistics:
    """The two passes on ``x`` itself (scale 1): may overflow (see :func:`_overflowed`)."""
    selected = None if mask is None else jnp.broadcast_to(mask, x.shape)
    n = jnp.maximum(_count(x, reduce, mask), 1)
    if center:
        xs = x if selected is None else jnp.where(selected, x, 0)
        mean = jnp.sum(xs, axis=reduce, keepdims=True) / n
        d = x - mean
    else:
        mean = jnp.zeros((1,) * x.ndim, x.dtype)
        d = x
    sq = d * d if selected is None else jnp.where(selected, d * d, 0)
    var = jnp.sum(sq, axis=reduce, keepdims=True) / n
    return Statistics(n, jnp.ones_like(var), jnp.broadcast_to(mean, var.shape), var)


def _overflowed(stats: Statistics) -> Array:
    """Whether a sum of :func:`_textbook` overflowed (or ``x`` held NaN or inf)."""
    return ~(jnp.all(jnp.isfinite(stats.mean_scaled)) & jnp.all(jnp.isfinite(stats.var_scaled)))


def _two_pass(
    x: Array, reduce: tuple[int, ...], mask: Array | None, axis_name: str | None, center: bool
) -> Statistics:
    """The guaranteed path: ``mean``, then ``Σ (x - mean)²``, both on ``x / scale``."""
    selected = None if mask is None else jnp.broadcast_to(mask, x.shape)
    ax = jnp.abs(x) if selected is None else jnp.where(selected, jnp.abs(x), 0)
    amax = lax.stop_gradient(jnp.max(ax, axis=reduce, keepdims=True, initial=0))
    if axis_name is not None:
        amax = lax.pmax(amax, axis_name)
    scale = _power_of_two_scale(amax)  # a constant: the statistics do not depend on it
    y = x / scale
    n = _count(x, reduce, mask)
    if center:
        ys = y if selected is None else jnp.where(selected, y, 0)
        total = jnp.sum(ys, axis=reduce, keepdims=True)
        if axis_name is not None:
            n, total = lax.psum((n, total), axis_name)
        n = jnp.maximum(n, 1)
        mean = total / n
    else:
        if axis_name is not None:
            n = lax.psum(n, axis_name)
        n = jnp.maximum(n, 1)
        mean = jnp.zeros_like(amax, dtype=y.dtype)
    d = y - mean
    sq = d * d if selected is None else jnp.where(selected, d * d, 0)  # padding never counts
    var = jnp.sum(sq, axis=reduce, keepdims=True)
    if axis_name is not None:
        var = lax.psum(var, axis_name)
    return Statistics(n, scale, mean, var / n)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _moments(x: Array, mask: Array | None, reduce: tuple[int, ...], center: bool) -> Statistics:
    fast = _textbook(x, reduce, mask, center)
    return lax.cond(
        _overflowed(fast),
        lambda: _two_pass(x, reduce, mask, None, center),
        lambda: fast,
    )


@_moments.defjvp
def _moments_jvp(reduce, center, primals, tangents):
    x, mask = primals
    dx = tangents[0]
    stats = _moments(x, mask, reduce, center)
    n, scale, mean_s, _ = stats
    dy = dx / scale
    if mask is not None:
        dy = jnp.where(jnp.broadcast_to(mask, x.shape), dy, 0)
    y = x / scale
    if center:
        dmean = jnp.sum(dy, axis=reduce, keepdims=True) / n
        dvar = 2 * jnp.sum((y - mean_s) * dy, axis=reduce, keepdims=True) / n
    else:
        dmean = jnp.zeros_like(mean_s)
        dvar = 2 * jnp.sum(y * dy, axis=reduce, keepdims=True) / n
    zeros = Statistics(jnp.zeros_like(n), jnp.zeros_like(scale), dmean, dvar)
    return stats, zeros


def normalize(
    x: Array, stats: Statistics, gamma: Array, beta: Array, eps: float
) -> tuple[Array, Array, Array]:
    """``y = gamma · x̂ + beta`` with ``x̂ = (x - mean) / √(var + eps)``; returns ``(y, x̂, s)``
    with ``s = 1/√(var + eps)``.

    In the scaled statistics' units, ``x̂ = (x/scale - mean_scaled) · r`` with
    ``r = scale · s = 1/√(var_scaled + eps/scale²)``; at a variance of 0, ``r = scale/√eps``
    directly (``eps/scale²`` may underflow; above ``scale = 1e36`` the largest float). With
    ``scale = 1`` this is the textbook formula, rounding included. ``r`` is one number per
    feature, so ``jax.grad`` through it costs what the textbook formula costs.
    """
    dtype = x.dtype
    scale = stats.scale
    eps_ = jnp.asarray(eps, dtype)
    info = jnp.finfo(dtype)
    var_s = stats.var_scaled
    # A variance of 0 (a constant feature, or var below the smallest normal at scale 1) takes
    # r = scale/√eps directly: eps/scale² may underflow, and rsqrt's derivative at a tiny
    # argument overflows (0 · inf in jax.grad). A positive var_scaled is at least about
    # (2^-23)²/n (the data's granularity at that scale), where nothing overflows.
    positive = var_s > 0
    r = jnp.where(
        positive,
        lax.rsqrt(jnp.where(positive, var_s, 1) + eps_ / (scale * scale)),
        jnp.minimum(scale * lax.rsqrt(eps_), info.max),  # above scale = 1e36, the largest
    )
    xhat = (x / scale - stats.mean_scaled) * r
    return gamma * xhat + beta, xhat, r / scale
