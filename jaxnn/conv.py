"""Convolution: ``conv2d`` over NHWC input with an HWIO kernel, its backward by hand.

The forward is one ``lax.conv_general_dilated``; the backward is two more convolutions, derived
in :func:`conv2d`'s docstring (the input gradient is the *transposed* convolution, the kernel
gradient a correlation of the input with the output gradient) and a sum for the bias. The
spatial geometry (padding forms, output sizes) is shared with :mod:`jaxnn.pooling`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn import initializers as _initializers
from jaxnn._checks import PARAM_DTYPE_HINT, ensure_float, ensure_float_dtype, ensure_input_shape
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward

__all__ = ["conv2d"]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")  # x, w, y, as Flax's Conv
Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
PaddingSpec = str | Pads  # "SAME", "VALID", or explicit pairs

PADDING_FORMS = (
    '"SAME" (output size ceil(in / stride)), "VALID" (no padding), an int p (p on every side, '
    "PyTorch's padding=p), a pair (ph, pw) (ph above and below, pw left and right, PyTorch's "
    "padding=(ph, pw)), or explicit pairs ((top, bottom), (left, right))"
)


# ----------------------------------------------------------------------------- geometry
# Shared with jaxnn.pooling: the same padding forms and the same output-size arithmetic.


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_pair(value: Any, what: str, name: str) -> tuple[int, int]:
    """``value`` (an int, or a pair of ints) as ``(height, width)``, each >= 1."""
    pair = (value, value) if _is_int(value) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(
            f"{name}: {what} must be a positive int or a pair (height, width) of positive "
            f"ints, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def parse_padding(padding: Any, name: str) -> PaddingSpec:
    """``"SAME"``/``"VALID"`` (any case), or the explicit ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ValueError(f"{name}: unknown padding {padding!r}; padding is {PADDING_FORMS}.")
    if _is_int(padding):
        padding = (padding, padding)
    try:
        dims = tuple(padding)
    except TypeError:
        dims = None
    if dims is not None and len(dims) == 2:
        pairs = []
        for d in dims:
            if _is_int(d):
                pairs.append((int(d), int(d)))
                continue
            try:
                pair = tuple(d)
            except TypeError:
                break
            if len(pair) != 2 or not all(_is_int(v) for v in pair):
                break
            pairs.append((int(pair[0]), int(pair[1])))
        else:
            if all(v >= 0 for pair in pairs for v in pair):
                return (pairs[0], pairs[1])
            raise ValueError(
                f"{name}: padding must be >= 0 on every side, got {padding!r} (a negative "
                f"padding crops: slice the input instead)."
            )
    raise ValueError(f"{name}: malformed padding {padding!r}; padding is {PADDING_FORMS}.")


class Geometry(NamedTuple):
    """The static geometry of a windowed operation over the two spatial axes of NHWC input."""

    in_hw: tuple[int, int]  # (H, W)
    window: tuple[int, int]  # (kh, kw), undilated
    strides: tuple[int, int]  # (sh, sw)
    dilation: tuple[int, int]  # (dh, dw)
    pads: Pads  # ((top, bottom), (left, right)), explicit
    out_hw: tuple[int, int]  # (OH, OW)

    @property
    def effective(self) -> tuple[int, int]:
        """The dilated window ``k_eff = (k - 1) d + 1``."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.window, self.dilation, strict=True))

    @property
    def unreached(self) -> tuple[int, int]:
        """``r = H + lo + hi - ((O - 1) s + k_eff)``, ``0 <= r < s``: the padded rows past the
        last window (the stride does not tile the input); they get no gradient."""
        return tuple(
            n + lo + hi - ((o - 1) * s + k)
            for n, (lo, hi), o, s, k in zip(
                self.in_hw, self.pads, self.out_hw, self.strides, self.effective, strict=True
            )
        )


def geometry(
    name: str,
    in_hw: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: PaddingSpec,
    dilation: tuple[int, int] = (1, 1),
) -> Geometry:
    """Explicit pads and the output size; refuse a window larger than the padded input.

    ``"SAME"`` (as ``lax``/Flax/TensorFlow): ``O = ceil(n / s)``, total padding
    ``max((O - 1) s + k_eff - n, 0)``, the smaller half before (top/left), the larger after.
    Every form then gives ``O = floor((n + lo + hi - k_eff) / s) + 1``.
    """
    effective = tuple((k - 1) * d + 1 for k, d in zip(window, dilation, strict=True))
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pairs = []
        for n, k, s in zip(in_hw, effective, strides, strict=True):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pairs.append((total // 2, total - total // 2))
        pads = (pairs[0], pairs[1])
    else:
        pads = padding
    out = []
    for axis, n, (lo, hi), k, s in zip(
        ("height", "width"), in_hw, pads, effective, strides, strict=True
    ):
        if n + lo + hi < k:
            raise ValueError(
                f"{name}: the window ({k} along the {axis}, dilation included) is larger than "
                f"the padded input ({n} + {lo} + {hi} = {n + lo + hi}); input spatial shape "
                f"{tuple(in_hw)}, window {tuple(window)}, padding {tuple(pads)}. Use a smaller "
                f"window, more padding or a larger input."
            )
        out.append((n + lo + hi - k) // s + 1)
    return Geometry(tuple(in_hw), tuple(window), tuple(strides), tuple(dilation), pads, tuple(out))


def check_nhwc(x: Array, name: str) -> None:
    """Refuse input that is not rank 4 ``[batch, height, width, channels]``."""
    if jnp.ndim(x) != 4:
        hint = (
            " For a single image add the batch axis: x[None]."
            if jnp.ndim(x) == 3
            else " Reshape flat input first (jaxnn.reshape((H, W, C)))."
            if jnp.ndim(x) == 2
            else ""
        )
        raise ValueError(
            f"{name}: input must be NHWC [batch, height, width, channels] (rank 4, channels "
            f"last as JAX and Flax), got shape {tuple(jnp.shape(x))} of rank {jnp.ndim(x)}."
            f"{hint} PyTorch's NCHW input converts with x.transpose(0, 2, 3, 1)."
        )


def check_nhwc_shape(input_shape: Shape, name: str) -> tuple[int, int, int, int]:
    shape = ensure_input_shape(input_shape, name)
    if len(shape) != 4:
        raise ValueError(
            f"{name}: input_shape must be NHWC (batch, height, width, channels), got {shape}."
        )
    return shape


# ----------------------------------------------------------------------------- conv2d


class _Casts(NamedTuple):
    """The dtypes of a conv2d call (static: bound into its backward)."""

    x: Any  # the input's dtype: dx is cast back to it
    w: Any
    b: Any  # None without a bias


def _check_conv_params(
    params: Any, x: Array, features: int, window: tuple[int, int], groups: int, use_bias: bool,
    name: str,
) -> None:  # fmt: skip
    expected = {"w", "b"} if use_bias else {"w"}
    if not isinstance(params, dict) or set(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{name}: params must be a dict with keys {sorted(expected)}, got {got}. Use the "
            f"params that this layer's init returned."
        )
    c_in = x.shape[-1]
    _check_groups(c_in, features, groups, name)
    want = (*window, c_in // groups, features)
    w_shape = tuple(jnp.shape(params["w"]))
    if w_shape != want:
        raise ValueError(
            f"{name}: the kernel w has shape {w_shape} but this layer with input of {c_in} "
            f"channels (x.shape={tuple(x.shape)}) needs HWIO [kh, kw, in/groups, out] = "
            f"{want}. A PyTorch weight [out, in/groups, kh, kw] converts with "
            f"w.transpose(2, 3, 1, 0); params made for other input channels do not fit."
        )
    if use_bias and tuple(jnp.shape(params["b"])) != (features,):
        raise ValueError(
            f"{name}: the bias b has shape {tuple(jnp.shape(params['b']))}; it must be "
            f"({features},), one per output feature."
        )


def _check_groups(c_in: int, features: int, groups: int, name: str) -> None:
    if c_in % groups:
        raise ValueError(
            f"{name}: feature_group_count={groups} does not divide the {c_in} input channels; "
            f"each group convolves in/groups channels. Use a divisor of {c_in} (groups = "
            f"{c_in} with features a multiple of {c_in} is a depthwise convolution)."
        )


def _patches(x: Array, geo: Geometry) -> Array:
    """im2col: ``P[n, i, j, k, c] = x_pad[n, i s_h + a d_h, j s_w + b d_w, c]``, ``k = (a, b)``
    in row-major order: one strided slice of the padded input per kernel offset."""
    (lo_h, hi_h), (lo_w, hi_w) = geo.pads
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
    (oh, ow), (sh, sw), (dh, dw) = geo.out_hw, geo.strides, geo.dilation
    n, c = x.shape[0], x.shape[-1]
    cols = [
        lax.slice(
            xp,
            (0, a * dh, b * dw, 0),
            (n, a * dh + (oh - 1) * sh + 1, b * dw + (ow - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for a in range(geo.window[0])
        for b in range(geo.window[1])
    ]
    return jnp.stack(cols, axis=3)


def _im2col(x: Array, w: Array, geo: Geometry, groups: int) -> Array:
    """The convolution as patches times the kernel, per group::

        y[n, i, j, g, f] = Σ_{k, c} P[n, i, j, k, g, c] · w[k, c, g, f]

    (channels and features in ``groups`` contiguous blocks, as ``feature_group_count``)."""
    kh, kw, c_g, features = w.shape
    p = _patches(x, geo)
    p = p.reshape(*p.shape[:4], groups, c_g)
    wk = w.reshape(kh * kw, c_g, groups, features // groups)
    y = jnp.einsum("nhwkgc,kcgf->nhwgf", p, wk)
    return y.reshape(*y.shape[:3], features)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _convolve(x: Array, w: Array, geo: Geometry, groups: int) -> Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO), whose derivative is that of :func:`_im2col`.

    The two are the same bilinear map. ``jax.grad`` of the plain convolution emits transposed
    convolutions of non-canonical dimension labels, which XLA:CPU runs 30-50x slower inside a
    loop body (``lax.scan``: every epoch; JAX issue #12868); the transpose of the im2col form
    is strided pads and matrix products, fast everywhere. The tangent is the exact
    derivative of the bilinear map, ``dy = conv(dx, w) + conv(x, dw)``, so the autodiff path
    stays JAX's own reverse mode (the transpose of this tangent), independent of the hand
    backward (:func:`_conv2d_backward`), and differentiates again to any order.
    """
    return lax.conv_general_dilated(
        x, w, geo.strides, geo.pads, rhs_dilation=geo.dilation,
        dimension_numbers=_DIMENSIONS, feature_group_count=groups,
    )  # fmt: skip


@_convolve.defjvp
def _convolve_jvp(geo: Geometry, groups: int, primals: Any, tangents: Any) -> Any:
    x, w = primals
    dx, dw = tangents
    y = _convolve(x, w, geo, groups)
    return y, _im2col(dx, w, geo, groups) + _im2col(x, dw, geo, groups)


def _conv_forward(
    params: Params, x: Array, geo: Geometry, groups: int, use_bias: bool
) -> tuple[Array, Array, Array, _Casts]:
    """``(y, x, w, casts)``: the output, and ``x`` and ``w`` in the dtype the conv ran in."""
    w, b = params["w"], params.get("b")
    casts = _Casts(x.dtype, w.dtype, None if b is None else b.dtype)
    dtype = jnp.result_type(*(a for a in (x, w, b) if a is not None))
    x, w = x.astype(dtype), w.astype(dtype)
    y = _convolve(x, w, geo, groups)
    if use_bias:
        y = y + b.astype(dtype)
    return y, x, w, casts


def _conv_input_grad(dy: Array, w: Array, geo: Geometry, groups: int) -> Array:
    """``dx``: the transposed convolution (see conv2d's docstring, "Input gradient")."""
    kh, kw, c_in_g, c_out = w.shape
    # The kernel flipped in space, and per group its in/out axes swapped: [kh, kw, out/G, in].
    w_t = w[::-1, ::-1].reshape(kh, kw, c_in_g, groups, c_out // groups)
    w_t = w_t.transpose(0, 1, 4, 3, 2).reshape(kh, kw, c_out // groups, groups * c_in_g)
    pads = tuple(
        (k - 1 - lo, n + lo - 1 - (o - 1) * s)
        for n, (lo, _), o, s, k in zip(
            geo.in_hw, geo.pads, geo.out_hw, geo.strides, geo.effective, strict=True
        )
    )
    return lax.conv_general_dilated(
        dy, w_t, (1, 1), pads, lhs_dilation=geo.strides, rhs_dilation=geo.dilation,
        dimension_numbers=_DIMENSIONS, feature_group_count=groups,
    )  # fmt: skip


def _conv_kernel_grad(x: Array, dy: Array, geo: Geometry, groups: int) -> Array:
    """``dw``: the input correlated with ``dy`` (see conv2d's docstring, "Kernel gradient")."""
    pads = tuple((lo, hi - r) for (lo, hi), r in zip(geo.pads, geo.unreached, strict=True))
    # Batch and feature roles swap: x's channels are the batch, its examples the features
    # summed over, and dy the kernel (examples in, features out): x as [in, H, W, N], dy as
    # [OH, OW, N, out], the result [in, kh, kw, out]. Both are transposed explicitly, so
    # that the convolution has the canonical NHWC/HWIO labels: XLA:CPU runs a convolution of
    # other labels through a slow generic loop inside a loop body (a scanned epoch; JAX
    # issue #12868), 30-50x slower. Groups: x's channel groups pair with dy's feature
    # groups (batch_group_count).
    lhs = jnp.transpose(x, (3, 1, 2, 0))
    rhs = jnp.transpose(dy, (1, 2, 0, 3))
    dw = lax.conv_general_dilated(
        lhs, rhs, geo.dilation, pads, rhs_dilation=geo.strides,
        dimension_numbers=_DIMENSIONS, batch_group_count=groups,
    )  # fmt: skip
    return jnp.transpose(dw, (1, 2, 0, 3))


def _conv2d_backward(
    x: Array, w: Array, dy: Array, *, geo: Geometry, groups: int, use_bias: bool, casts: _Casts
) -> tuple[Params, Array]:
    dy = dy.astype(x.dtype)
    grads = {"w": _conv_kernel_grad(x, dy, geo, groups).astype(casts.w)}
    if use_bias:
        grads["b"] = jnp.sum(dy, axis=(0, 1, 2)).astype(casts.b)
    return grads, _conv_input_grad(dy, w, geo, groups).astype(casts.x)


def conv2d(
    features: int,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: str | int | Sequence[Any] = "SAME",
    kernel_dilation: int | tuple[int, int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    w_init: str | _initializers.Initializer = "lecun_normal",
    b_init: str | _initializers.Initializer = "zeros",
    param_dtype: Any = None,
    name: str = "conv2d",
) -> Layer:
    """A 2-D convolution (cross-correlation, as every framework computes it) over NHWC input.

    Shapes: ``x [N, H, W, C]``, ``w [kh, kw, C/G, F]`` (HWIO), ``b [F]``,
    ``y [N, OH, OW, F]``, with ``G = feature_group_count`` groups. Output feature ``f`` is in
    group ``g = f // (F/G)`` and reads the input channels ``g C/G ... (g+1) C/G - 1``.

    **Forward.** With ``xp`` the input zero-padded by ``(lo, hi)`` on each spatial axis,
    strides ``s``, dilation ``d``::

        y[n, o, p, f] = b[f] + Σ_{i, j, c} xp[n, o s_h + i d_h, p s_w + j d_w, g C/G + c] w[i, j, c, f]

    **Geometry.** Along one spatial axis (input ``n``, kernel ``k``, ``k_eff = (k - 1) d + 1``):
    ``O = floor((n + lo + hi - k_eff) / s) + 1``. The windows reach the padded rows
    ``0 ... (O - 1) s + k_eff - 1``; the ``r = n + lo + hi - (O - 1) s - k_eff`` rows past
    them (``0 <= r < s``: the stride does not tile the input) are never read, so those input
    rows get a zero gradient. ``"SAME"`` pads ``max((O - 1) s + k_eff - n, 0)`` in total for
    ``O = ceil(n / s)``, the smaller half first (lax, Flax, TensorFlow).

    **Input gradient** (hand-derived). ``x[h]`` (one axis, one channel pair shown) is read by
    output ``o`` through tap ``i`` where ``o s + i d = h + lo``, so::

        dx[h] = Σ_{o, i: o s + i d = h + lo} dy[o] w[i]

    Spread ``dy`` out with ``s - 1`` zeros between its entries (``lhs_dilation = s``: ``ŷ[o s]
    = dy[o]``); then ``dx[h] = Σ_i ŷ[h + lo - i d] w[i]``, and with ``i' = k - 1 - i`` this is
    a stride-1 correlation of ``ŷ`` with the kernel **flipped** (``w[k - 1 - i']``), dilated by
    ``d``, after padding ``ŷ`` with ``k_eff - 1 - lo`` before. Its output has length ``n`` when
    the padding after is ``n + lo - 1 - (O - 1) s = k_eff - 1 - hi + r``: the ``r`` rows the
    forward never read are correlated with zeros only. Over channels the roles of in and out
    swap in each group: the kernel becomes ``[kh, kw, F/G, C]`` (``w[::-1, ::-1]``, axes
    ``(C/G, G, F/G) -> (F/G, G, C/G)``) with the same ``G`` feature groups. A pad below zero
    (padding wider than the dilated kernel) crops.

    **Kernel gradient.** ``dw[i, j, c, f] = Σ_{n, o, p} xp[n, o s_h + i d_h, p s_w + j d_w,
    g C/G + c] dy[n, o, p, f]``: a correlation of ``x`` (its channels as the batch, its
    examples summed over as features) with ``dy`` as the kernel, taps ``dy`` apart by ``s``
    (``rhs_dilation = s``) and outputs apart by ``d`` (``window_strides = d``), padding
    ``(lo, hi - r)`` so that exactly ``k`` outputs come: ``(n + lo + hi - r - (O - 1) s - 1) /
    d + 1 = k``. Groups pair channel group ``g`` of ``x`` with feature group ``g`` of ``dy``
    (``batch_group_count = G``).

    **Bias gradient.** ``db[f] = Σ_{n, o, p} dy[n, o, p, f]``.

    The forward runs in the dtype ``x``, ``w`` and ``b`` promote to; each gradient leaves in
    its primal's dtype. The backward is written as convolutions (never ``jax.vjp`` of the
    forward), so reverse over reverse through it is right. The arithmetic of the transposed
    convolution: Dumoulin & Visin (2016), "A guide to convolution arithmetic for deep
    learning".

    **PyTorch** ``nn.Conv2d(C, F, k, stride, padding, dilation, groups, bias)`` runs NCHW with
    ``weight [F, C/G, kh, kw] = w.transpose(3, 2, 0, 1)`` and ``bias = b``; input
    ``x_nchw = x.transpose(0, 3, 1, 2)``. Its ``padding=p`` (int or pair) is ``padding`` here,
    ``"same"`` is ``"SAME"`` (stride 1 only there; here any stride), ``"valid"`` is
    ``"VALID"``; asymmetric padding is ``F.pad`` first there, explicit pairs here. **Flax**
    ``nn.Conv(features, kernel_size, strides, padding, kernel_dilation, feature_group_count,
    use_bias)``: the same names and layouts (params ``kernel``, ``bias``), default padding
    ``"SAME"`` as here.

    **Initialisation.** ``w_init="lecun_normal"``: ``N(0, 1/fan_in)``, ``fan_in = kh kw C/G``
    (the receptive field times the in-axis), untruncated; Flax's default is the truncated
    LeCun normal. PyTorch's default, ``kaiming_uniform_(a=√5)``, is ``U(±1/√fan_in)``
    (variance ``1/(3 fan_in)``): pass ``jax.nn.initializers.variance_scaling(1/3, "fan_in",
    "uniform")``. For ReLU networks ``"he_normal"`` keeps the activations' scale.

    Args:
      features: ``F``, the output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)`` (PyTorch ``stride``), default 1.
      padding: ``"SAME"`` (default), ``"VALID"``, an int ``p`` (``p`` on every side), a pair
        ``(ph, pw)``, or explicit ``((top, bottom), (left, right))``; non-negative.
      kernel_dilation: ``d`` or ``(dh, dw)`` (PyTorch ``dilation``), default 1.
      feature_group_count: ``G`` (PyTorch ``groups``); must divide ``C`` and ``F``.
        ``G = C`` is a depthwise convolution (``F = C`` times a channel multiplier).
      use_bias: whether to add ``b``.
      w_init, b_init: initialisers by name or callable (:mod:`jaxnn.initializers`).
      param_dtype: dtype of the params (default float64 under ``jax_enable_x64``, else float32).
      name: the layer's name (error messages, its key inside ``serial``).

    Raises:
      ValueError: a hyperparameter out of range or malformed padding (at construction);
        ``G`` not dividing the input channels, input not rank 4, params that do not fit the
        input, a window larger than the padded input (at init or at the call, trace time).
      TypeError: an integer input, a non-floating ``param_dtype``.

    Example::

        layer = conv2d(8, 3, strides=2, padding=1)                # PyTorch's Conv2d(C, 8, 3, 2, 1)
        params, state = layer.init(jax.random.key(0), (4, 28, 28, 1))  # w [3, 3, 1, 8], b [8]
        y, state = layer.apply(params, state, x, train=False)     # y [4, 14, 14, 8]
    """
    if not (_is_int(features) and features > 0):
        raise ValueError(f"{name}: features must be a positive int, got {features!r}.")
    window = positive_pair(kernel_size, "kernel_size", name)
    stride_hw = positive_pair(strides, "strides", name)
    dilation = positive_pair(kernel_dilation, "kernel_dilation", name)
    pad_spec = parse_padding(padding, name)
    if not (_is_int(feature_group_count) and feature_group_count > 0):
        raise ValueError(
            f"{name}: feature_group_count must be a positive int, got {feature_group_count!r}."
        )
    groups = int(feature_group_count)
    if features % groups:
        raise ValueError(
            f"{name}: feature_group_count={groups} does not divide features={features}; each "
            f"group produces features/groups outputs. Use a multiple of {groups} features."
        )
    w_init_fn, b_init_fn = _initializers.get(w_init), _initializers.get(b_init)
    param_dtype = ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT)
    features = int(features)

    def geo_of(in_hw: tuple[int, int]) -> Geometry:
        return geometry(name, in_hw, window, stride_hw, pad_spec, dilation)

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        _, h, w, c = check_nhwc_shape(input_shape, name)
        _check_groups(c, features, groups, name)
        geo_of((h, w))
        dtype = jnp.result_type(float) if param_dtype is None else param_dtype
        kw, kb = jax.random.split(key)
        params = {"w": w_init_fn(kw, (*window, c // groups, features), dtype)}
        if use_bias:
            params["b"] = b_init_fn(kb, (features,), dtype)
        return params, {}

    def forward(params: Params, x: ArrayLike) -> tuple[Array, Array, Array, _Casts, Geometry]:
        x = ensure_float(x, "x")
        check_nhwc(x, name)
        _check_conv_params(params, x, features, window, groups, use_bias, name)
        geo = geo_of(x.shape[1:3])
        return (*_conv_forward(params, x, geo, groups, use_bias), geo)

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key
        return forward(params, x)[0], state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        y, x, w, casts, geo = forward(params, x)
        backward = bind_backward(
            _conv2d_backward, x, w, geo=geo, groups=groups, use_bias=use_bias, casts=casts
        )
        return y, state, backward

    return Layer(name, init, apply, vjp)
