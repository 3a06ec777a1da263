"""Pooling over NHWC input: ``max_pool``, ``avg_pool``, ``global_avg_pool``, hand backwards.

A window's forward reads ``kh kw`` strided views of the padded input, one per offset ``(i,
j)`` in the window; its backward is the transpose of that read, the *overlap-add*: each
offset's contribution laid back at its strided positions (``lax.pad`` with ``s - 1`` zeros
between entries) and summed, then the padding cropped. Where the windows tile the input
(stride = window) the views are a reshape and the overlap-add a stack. No scatter, no
``jax.vjp`` of the forward: every step is a slice, a pad, a select or a sum, so the backward
is cheap enough to train on (``grad="manual"``) and differentiable again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn._checks import ensure_float, ensure_input_shape
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward
from jaxnn.conv import (
    Geometry,
    check_nhwc,
    check_nhwc_shape,
    geometry,
    parse_padding,
    positive_pair,
)
from jaxnn.layers import _check_no_params

__all__ = ["avg_pool", "global_avg_pool", "max_pool"]


# ----------------------------------------------------------------------------- windows


def _phases(geo: Geometry) -> tuple[int, int]:
    """``(Hb, Wb)``: the padded input seen as ``Hb`` blocks of ``s_h`` rows (``Wb`` of ``s_w``
    columns), enough to hold every row a window reaches."""
    return tuple(
        -(-(n + lo + hi) // s)
        for n, (lo, hi), s in zip(geo.in_hw, geo.pads, geo.strides, strict=True)
    )


def _windows(xp: Array, geo: Geometry, fill: float) -> list[Array]:
    """The ``kh kw`` views ``xp[:, o s_h + i, p s_w + j, :]`` ([N, OH, OW, C]), row-major in
    ``(i, j)``, of the padded input ``xp``.

    Row ``o s + i`` with ``i = a s + b`` is row ``b`` of block ``o + a``: with ``xp`` reshaped to
    ``[N, Hb, s_h, Wb, s_w, C]`` every view is a contiguous slice (no strided gather).
    """
    (kh, kw), (sh, sw), (oh, ow) = geo.window, geo.strides, geo.out_hw
    (hb, wb), (n, hp, wp, c) = _phases(geo), xp.shape
    xp = lax.pad(xp, jnp.asarray(fill, xp.dtype),
                 ((0, 0, 0), (0, hb * sh - hp, 0), (0, wb * sw - wp, 0), (0, 0, 0)))  # fmt: skip
    blocks = xp.reshape(n, hb, sh, wb, sw, c)
    views = []
    for i in range(kh):
        a, b = divmod(i, sh)
        for j in range(kw):
            a2, b2 = divmod(j, sw)
            views.append(blocks[:, a : a + oh, b, a2 : a2 + ow, b2])
    return views


def _overlap_add(parts: Sequence[Array], geo: Geometry) -> Array:
    """The transpose of :func:`_windows` then of the padding: ``dx[n, h, w, c] = Σ`` of the
    parts whose window offset lands on ``(h, w)``; rows the windows never reach get 0.

    Per phase ``(b, b2)`` (row ``b`` of each block of ``s_h``, column ``b2`` of each of ``s_w``)
    the parts of offsets ``(a s_h + b, a2 s_w + b2)`` are shifted by ``(a, a2)`` blocks and
    summed; the phases are then interleaved by one stack and reshape.
    """
    kw, (sh, sw), (oh, ow) = geo.window[1], geo.strides, geo.out_hw
    (hb, wb), ((top, _), (left, _)), (h, w) = _phases(geo), geo.pads, geo.in_hw
    n, _, _, c = parts[0].shape
    zero = jnp.zeros((), parts[0].dtype)
    phase = {}
    for k, part in enumerate(parts):
        (a, b), (a2, b2) = divmod(k // kw, sh), divmod(k % kw, sw)
        shifted = lax.pad(part, zero, ((0, 0, 0), (a, hb - a - oh, 0), (a2, wb - a2 - ow, 0),
                                       (0, 0, 0)))  # fmt: skip
        phase[b, b2] = shifted if (b, b2) not in phase else phase[b, b2] + shifted
    empty = jnp.zeros((n, hb, wb, c), zero.dtype)  # a stride longer than the window
    rows = [jnp.stack([phase.get((b, b2), empty) for b2 in range(sw)], axis=3) for b in range(sh)]
    dxp = jnp.stack(rows, axis=2).reshape(n, hb * sh, wb * sw, c)
    return dxp[:, top : top + h, left : left + w]


def _pad(x: Array, geo: Geometry, value: float) -> Array:
    ((top, bottom), (left, right)) = geo.pads
    return lax.pad(
        x, jnp.asarray(value, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )


def _reduce_window(x: Array, geo: Geometry, init: float, op: Any) -> Array:
    (kh, kw), (sh, sw) = geo.window, geo.strides
    pads = ((0, 0), *geo.pads, (0, 0))
    # A Python scalar init: jax recognises (max, -inf) and (add, 0) as the monoids it can
    # differentiate only when the init value is concrete (a jnp array is a tracer under jit).
    return lax.reduce_window(x, init, op, (1, kh, kw, 1), (1, sh, sw, 1), pads)


def _pool_config(
    window_shape: Any, strides: Any, padding: Any, name: str
) -> tuple[tuple[int, int], tuple[int, int], Any]:
    window = positive_pair(window_shape, "window_shape", name)
    stride_hw = window if strides is None else positive_pair(strides, "strides", name)
    return window, stride_hw, parse_padding(padding, name)


def _pool_geometry(
    x_shape: Shape, window: tuple[int, int], strides: tuple[int, int], pad_spec: Any, name: str
) -> Geometry:
    geo = geometry(name, tuple(x_shape[1:3]), window, strides, pad_spec)
    for axis, (lo, hi), k in zip(("height", "width"), geo.pads, window, strict=True):
        if lo >= k or hi >= k:
            raise ValueError(
                f"{name}: padding {geo.pads} is not smaller than the window {window} along the "
                f"{axis}; a window could then hold padding only (max pooling would output "
                f"-inf there). Pad by less than the window (PyTorch allows at most half of it)."
            )
    return geo


def _pool_init(name: str, window: Any, strides: Any, pad_spec: Any):
    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        del key
        shape = check_nhwc_shape(input_shape, name)
        _pool_geometry(shape, window, strides, pad_spec, name)
        return {}, {}

    return init


def _pool_input(params: Params, x: ArrayLike, name: str) -> Array:
    _check_no_params(params, name)
    x = ensure_float(x, "x")
    check_nhwc(x, name)
    return x


# ----------------------------------------------------------------------------- max_pool


def _max_pool_forward(x: Array, geo: Geometry) -> tuple[Array, Array]:
    """``(y, arg)``: the window maxima and, per output, the offset ``k = i kw + j`` of the
    first maximum in row-major window order (a NaN counts as the maximum: ``y`` is NaN and
    ``arg`` the first NaN)."""
    # One reduction over a stacked window axis [N, OH, OW, kh kw, C], not a chain of
    # compare-selects: XLA would fuse such a chain into each of its consumers, recomputing it.
    stacked = jnp.stack(_windows(_pad(x, geo, -jnp.inf), geo, -jnp.inf), axis=3)
    return jnp.max(stacked, axis=3), jnp.argmax(stacked, axis=3).astype(jnp.int32)


def _max_pool_backward(arg: Array, dy: Array, *, geo: Geometry) -> tuple[Params, Array]:
    # dx[h, w] = Σ over the windows whose first maximum sits at (h, w) of their dy.
    zero = jnp.zeros((), dy.dtype)
    size = geo.window[0] * geo.window[1]
    return {}, _overlap_add([jnp.where(arg == k, dy, zero) for k in range(size)], geo)


def max_pool(
    window_shape: int | tuple[int, int],
    strides: int | tuple[int, int] | None = None,
    padding: str | int | Sequence[Any] = "VALID",
    *,
    name: str = "max_pool",
) -> Layer:
    """Max pooling over the spatial axes of NHWC input ``x [N, H, W, C] -> y [N, OH, OW, C]``.

    **Forward**, with ``xp`` the input padded with ``-inf``::

        y[n, o, p, c] = max_{i < kh, j < kw} xp[n, o s_h + i, p s_w + j, c]

    **Backward** (hand-derived): ``y`` is piecewise the selection of one element, so each
    window's ``dy`` goes to the element that attains its maximum, and an input element
    collects the ``dy`` of every window (overlapping windows included) that selected it::

        dx[n, h, w, c] = Σ_{o, p: (o s_h + a_op, p s_w + b_op) = (h + top, w + left)} dy[n, o, p, c]

    where ``(a_op, b_op)`` is the offset of the window's maximum, found in the forward and
    saved (an int per output). Input rows no window reaches (the stride does not tile the
    input: ``r = H + top + bottom - (OH - 1) s_h - kh`` of them at the bottom) get 0.

    **Ties.** Where several elements of a window equal its maximum the gradient goes to
    **one**: the first in row-major window order (lowest ``i``, then lowest ``j``), as
    PyTorch's CPU kernel (it keeps the first index whose value is strictly greater) and
    ``jax.grad`` of ``lax.reduce_window`` max (its ``select_and_scatter_add`` selects with
    ``>=``, keeping the earlier element) — tested, not assumed. A NaN in a window is its
    maximum (``y`` is NaN, as ``lax.max`` and PyTorch propagate it); the gradient goes to the
    first NaN here, to the last in PyTorch's CPU kernel, and ``jax.grad`` (whose ``>=`` is
    false against NaN) gives it to an element after the NaN.

    **Strides default to the window** (non-overlapping windows), as PyTorch's
    ``F.max_pool2d(x, k)``; Flax's ``nn.max_pool(x, window_shape)`` defaults to stride 1
    (pass ``strides=1`` for that). Padding as :func:`jaxnn.conv2d` (``"VALID"`` by default, as
    both), with ``-inf`` (PyTorch pads max pooling with ``-inf`` too); it must be smaller than
    the window, so every window holds a real element (PyTorch allows at most half the
    window). PyTorch's ``ceil_mode=True`` is padding added at the bottom/right;
    ``dilation`` is not offered. Layout: PyTorch is NCHW (``x.transpose(0, 3, 1, 2)``).

    Args:
      window_shape: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``; default ``window_shape``.
      padding: ``"VALID"`` (default), ``"SAME"``, an int, a pair ``(ph, pw)``, or
        ``((top, bottom), (left, right))``.
      name: the layer's name.

    Raises:
      ValueError: malformed window, strides or padding; padding not smaller than the window;
        input not rank 4; a window larger than the padded input.

    Example::

        y, state = max_pool(2).apply({}, {}, x, train=False)   # [N, 28, 28, C] -> [N, 14, 14, C]
    """
    window, stride_hw, pad_spec = _pool_config(window_shape, strides, padding, name)

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        x = _pool_input(params, x, name)
        geo = _pool_geometry(x.shape, window, stride_hw, pad_spec, name)
        return _reduce_window(x, geo, -jnp.inf, lax.max), state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        x = _pool_input(params, x, name)
        geo = _pool_geometry(x.shape, window, stride_hw, pad_spec, name)
        y, arg = _max_pool_forward(x, geo)
        return y, state, bind_backward(_max_pool_backward, arg, geo=geo)

    return Layer(name, _pool_init(name, window, stride_hw, pad_spec), apply, vjp)


# ----------------------------------------------------------------------------- avg_pool


def _counts(geo: Geometry, count_include_pad: bool) -> np.ndarray | int:
    """The divisor of each window: ``kh kw``, or the real (unpadded) elements in it, as a
    static ``[1, OH, OW, 1]`` array."""
    if count_include_pad:
        return geo.window[0] * geo.window[1]
    per_axis = []
    for n, (lo, _), o, s, k in zip(
        geo.in_hw, geo.pads, geo.out_hw, geo.strides, geo.window, strict=True
    ):
        start = np.arange(o) * s - lo  # the window's first row, in input coordinates
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(*per_axis)[None, :, :, None]


def _avg_pool_backward(
    dy: Array, *, geo: Geometry, count_include_pad: bool
) -> tuple[Params, Array]:
    # y = Σ_window xp / count  =>  every element of a window gets dy / count from it.
    share = dy / jnp.asarray(_counts(geo, count_include_pad), dy.dtype)
    return {}, _overlap_add([share] * (geo.window[0] * geo.window[1]), geo)


def avg_pool(
    window_shape: int | tuple[int, int],
    strides: int | tuple[int, int] | None = None,
    padding: str | int | Sequence[Any] = "VALID",
    *,
    count_include_pad: bool = True,
    name: str = "avg_pool",
) -> Layer:
    """Average pooling over the spatial axes of NHWC input ``x [N, H, W, C] -> [N, OH, OW, C]``.

    **Forward**, with ``xp`` the input zero-padded and ``m[o, p]`` the window's divisor::

        y[n, o, p, c] = (1 / m[o, p]) Σ_{i < kh, j < kw} xp[n, o s_h + i, p s_w + j, c]

    ``count_include_pad=True`` (default, as PyTorch's ``F.avg_pool2d`` and Flax's
    ``nn.avg_pool``): ``m = kh kw``, the padded zeros count. ``False``: ``m[o, p]`` is the
    number of real input elements in the window (a static array: it depends on shapes only).

    **Backward** (hand-derived): ``y`` is linear in ``x``; each element of window ``(o, p)``
    receives ``dy[o, p] / m[o, p]``, summed over the windows that contain it::

        dx[n, h, w, c] = Σ_{(o, p) ∋ (h + top, w + left)} dy[n, o, p, c] / m[o, p]

    computed as the overlap-add of ``dy / m`` at every window offset (the transpose of the
    forward's strided reads), the padding then cropped; rows no window reaches get 0.

    **Strides default to the window**, as PyTorch (Flax's ``nn.avg_pool`` defaults to 1).
    Padding as :func:`max_pool`, with zeros, smaller than the window. PyTorch's
    ``ceil_mode`` and ``divisor_override`` are not offered; layout NCHW there.

    Args:
      window_shape: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``; default ``window_shape``.
      padding: ``"VALID"`` (default), ``"SAME"``, an int, a pair, or explicit pairs.
      count_include_pad: whether padded zeros count in the divisor (default True).
      name: the layer's name.

    Raises:
      ValueError: as :func:`max_pool`.
    """
    window, stride_hw, pad_spec = _pool_config(window_shape, strides, padding, name)
    count_include_pad = bool(count_include_pad)

    def forward(params: Params, x: ArrayLike) -> tuple[Array, Geometry]:
        x = _pool_input(params, x, name)
        geo = _pool_geometry(x.shape, window, stride_hw, pad_spec, name)
        total = _reduce_window(x, geo, 0.0, lax.add)
        return total / jnp.asarray(_counts(geo, count_include_pad), x.dtype), geo

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        return forward(params, x)[0], state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        y, geo = forward(params, x)
        backward = bind_backward(_avg_pool_backward, geo=geo, count_include_pad=count_include_pad)
        return y, state, backward

    return Layer(name, _pool_init(name, window, stride_hw, pad_spec), apply, vjp)


# ----------------------------------------------------------------------------- global_avg_pool


def _global_avg_pool_backward(dy: Array, *, shape: tuple[int, ...]) -> tuple[Params, Array]:
    # y = mean over the spatial axes  =>  dx = dy / (H W), broadcast over them.
    spatial = shape[1:-1]
    scale = jnp.asarray(1.0 / np.prod(spatial), dy.dtype)
    dy = (dy * scale).reshape(shape[0], *(1,) * len(spatial), shape[-1])
    return {}, jnp.broadcast_to(dy, shape)


def global_avg_pool(*, name: str = "global_avg_pool") -> Layer:
    """The mean over the spatial axes: ``x [N, H, W, C] -> y [N, C]``.

    ``y[n, c] = (1 / HW) Σ_{h, w} x[n, h, w, c]``; backward ``dx[n, h, w, c] = dy[n, c] / HW``.
    Any channels-last input of rank >= 3 (``[N, L, C]``, ``[N, D, H, W, C]``) is averaged over
    all its middle axes. PyTorch: ``nn.AdaptiveAvgPool2d(1)`` then ``flatten(1)`` (NCHW);
    Flax: ``jnp.mean(x, axis=(1, 2))``.

    Raises:
      ValueError: input of rank < 3, or with an empty spatial extent.
    """

    def check(x: ArrayLike, params: Params) -> Array:
        _check_no_params(params, name)
        x = ensure_float(x, "x")
        if x.ndim < 3 or 0 in x.shape[1:-1]:
            raise ValueError(
                f"{name}: input must be channels last [batch, spatial..., channels] with at "
                f"least one spatial axis, none empty (NHWC: [N, H, W, C]), got shape "
                f"{tuple(x.shape)}. For a single image add the batch axis: x[None]."
            )
        return x

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        del key
        shape = ensure_input_shape(input_shape, name)
        if len(shape) < 3:
            raise ValueError(
                f"{name}: input_shape must be [batch, spatial..., channels] (NHWC), got {shape}."
            )
        return {}, {}

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        x = check(x, params)
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        x = check(x, params)
        y = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        return y, state, bind_backward(_global_avg_pool_backward, shape=tuple(x.shape))

    return Layer(name, init, apply, vjp)
