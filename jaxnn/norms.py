"""The normalisation family without state: LayerNorm, GroupNorm and RMSNorm.

BatchNorm (:mod:`jaxnn.batchnorm`) standardises each feature over the *batch*, so its output
for one example depends on the others, it needs running statistics for evaluation, and its
statistics degrade at small batches (Wu & He, 2018, Fig. 1). The layers here standardise
each example over its *own* elements: no state (``{}``), the same computation in train and
eval mode, and a batch of one is as good as any. They differ only in the group of ``M``
elements each statistic runs over, and in whether they centre:

* :func:`layernorm` (Ba, Kiros & Hinton, 2016, "Layer Normalization"): over the features of
  one example, the axes ``axis`` (default ``-1``).
* :func:`groupnorm` (Wu & He, 2018, "Group Normalization"): channels last ``[N, ..., C]``,
  the ``C`` channels split into ``G = num_groups`` groups of ``C/G`` consecutive channels;
  over the spatial axes and the ``C/G`` channels of one group of one example. ``G = 1`` is
  LayerNorm over ``(..., C)``; ``G = C`` is InstanceNorm.
* :func:`rmsnorm` (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization"): as
  LayerNorm, without centring: the root mean square replaces the standard deviation.

**Forward**, per group of ``M`` elements (biased variance, as every reference)::

    mean = (1/M) Σ x        var = (1/M) Σ (x - mean)²        s = 1/√(var + eps)
    x̂ = (x - mean) s        y = gamma · x̂ + beta
    RMSNorm:  s = 1/√((1/M) Σ x² + eps),   x̂ = x s,   y = gamma · x̂

``gamma`` and ``beta`` are per element of the normalised shape (LayerNorm, RMSNorm) or per
channel (GroupNorm), broadcast over the rest, as PyTorch's ``weight`` and ``bias``.

**Backward, derived by hand.** With ``g = gamma · dy`` (broadcast to ``x``'s shape) and the
means over the group's ``M`` elements: ``∂mean/∂x_j = 1/M``, ``∂var/∂x_j = 2 (x_j - mean)/M``,
so ``∂s/∂x_j = -s³ (x_j - mean)/M = -s² x̂_j / M`` and::

    ∂x̂_i/∂x_j = s (δ_ij - 1/M - x̂_i x̂_j / M)
    dx = Σ_i g_i ∂x̂_i/∂x_j = s (g - mean(g) - x̂ · mean(g · x̂))

RMSNorm has no mean: ``∂s/∂x_j = -s³ x_j / M = -s² x̂_j / M``, ``∂x̂_i/∂x_j = s (δ_ij -
x̂_i x̂_j / M)``, so ``dx = s (g - x̂ · mean(g · x̂))``. The parameters' gradients sum over
every axis they are broadcast along (the batch, and for GroupNorm the spatial axes)::

    dgamma = Σ dy · x̂          dbeta = Σ dy

The backward is these formulas in jnp operations (two reductions over each group, one over
the parameters' broadcast axes), never ``jax.vjp`` of the forward, and differentiable in turn.

**Statistics and precision** come from :mod:`jaxnn.statistics`, the routine BatchNorm uses:
:func:`~jaxnn.statistics.moments` over the group's axes and
:func:`~jaxnn.statistics.normalize`. Any finite input gives finite statistics, output and
gradients (a float32 ``(x - mean)²`` would overflow once the spread passes ``1.8e19``; the
statistics are kept in a power-of-two scale where it cannot). They are computed in at least
float32 (float16 and bfloat16 input is promoted); the output ``y`` and ``dx`` have the
input's dtype, ``dgamma`` and ``dbeta`` the params'. A group of constant values (variance 0)
gives ``x̂ = 0``, ``y = beta`` and finite gradients.

**eps, and the mapping to PyTorch and Flax** (each factory's docstring has the details):

============  ===================================  ===================================
jaxnn         PyTorch (eps default)                Flax linen (epsilon default 1e-6)
============  ===================================  ===================================
layernorm     ``F.layer_norm`` (1e-5)              ``nn.LayerNorm`` (reduction_axes)
groupnorm     ``F.group_norm`` (1e-5), NCHW        ``nn.GroupNorm`` (num_groups)
rmsnorm       ``F.rms_norm`` (None: finfo eps)     ``nn.RMSNorm``
============  ===================================  ===================================

jaxnn's defaults are PyTorch's for LayerNorm and GroupNorm (``1e-5``) and Flax's for
RMSNorm (``1e-6``; ``eps=None`` is PyTorch's machine epsilon). Params are named ``gamma``
and ``beta`` as in :func:`~jaxnn.batchnorm.batchnorm` (PyTorch ``weight``/``bias``, Flax
``scale``/``bias``). Flax computes the variance as ``E[x²] - E[x]²`` by default
(``use_fast_variance=True``); jaxnn never does (it can lose every digit and go negative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxnn._checks import (
    PARAM_DTYPE_HINT,
    ensure_float,
    ensure_float_dtype,
    ensure_input_shape,
    ensure_positive,
)
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward
from jaxnn.layers import default_float
from jaxnn.statistics import moments, normalize

__all__ = ["groupnorm", "layernorm", "rmsnorm"]


class _Layout(NamedTuple):
    """How one input is normalised (static: bound into the backward).

    The input is seen through ``view`` (GroupNorm splits the channels ``C`` into ``[G, C/G]``;
    the other norms see ``x`` as it is); the statistics reduce the view's ``reduce`` axes, and
    gamma/beta span its ``param_axes``, broadcast along the others.
    """

    x_shape: tuple[int, ...]  # the input's shape
    view: tuple[int, ...]  # the shape the statistics see
    reduce: tuple[int, ...]  # the axes of each group (in the view)
    param_axes: tuple[int, ...]  # the axes gamma and beta span (in the view)
    param_shape: tuple[int, ...]  # gamma's and beta's shape, as init makes them

    @property
    def param_bshape(self) -> tuple[int, ...]:
        """gamma's shape broadcastable against the view: 1 off the parameter axes."""
        return tuple(d if a in self.param_axes else 1 for a, d in enumerate(self.view))


class _Residuals(NamedTuple):
    """What the hand backward needs, saved by the forward (statistics dtype)."""

    xhat: Array  # [*view] the normalised input
    inv_std: Array  # [*view, 1 on the reduced axes] s = 1/√(var + eps)
    gamma: Array | None  # [*param_bshape]; None without a scale


class _Norm(NamedTuple):
    """A normalisation layer's static configuration."""

    name: str
    eps: float | None  # None (rmsnorm only): the statistics dtype's machine epsilon
    center: bool  # subtract the mean (LayerNorm, GroupNorm) or not (RMSNorm)
    use_scale: bool
    use_bias: bool
    param_dtype: Any


# ----------------------------------------------------------------------------- the math


def _forward(cfg: _Norm, layout: _Layout, params: Params, x: Array) -> tuple[Array, _Residuals]:
    """``y`` and the residuals: statistics in at least float32, ``y`` in ``x``'s dtype."""
    sd = jnp.promote_types(x.dtype, jnp.float32)
    xs = x.astype(sd).reshape(layout.view)
    bshape = layout.param_bshape
    gamma = params["gamma"].astype(sd).reshape(bshape) if cfg.use_scale else None
    beta = params["beta"].astype(sd).reshape(bshape) if cfg.use_bias else None
    eps = float(jnp.finfo(sd).eps) if cfg.eps is None else cfg.eps
    stats = moments(xs, layout.reduce, center=cfg.center)
    # A missing scale or bias is the scalar 1 or 0 (one fused elementwise op at most).
    one_or_gamma = jnp.ones((), sd) if gamma is None else gamma
    zero_or_beta = jnp.zeros((), sd) if beta is None else beta
    y, xhat, inv_std = normalize(xs, stats, one_or_gamma, zero_or_beta, eps)
    return y.reshape(layout.x_shape).astype(x.dtype), _Residuals(xhat, inv_std, gamma)


def _backward(
    res: _Residuals,
    dy: Array,
    *,
    layout: _Layout,
    center: bool,
    use_bias: bool,
    gamma_dtype: Any,
    beta_dtype: Any,
    x_dtype: Any,
) -> tuple[Params, Array]:
    """``dx = s (g - mean(g) - x̂ mean(g x̂))`` (RMSNorm: without ``mean(g)``), ``g = gamma dy``;
    ``dgamma = Σ dy x̂``, ``dbeta = Σ dy`` over the parameters' broadcast axes."""
    xhat = res.xhat
    dyf = dy.astype(xhat.dtype).reshape(layout.view)
    g = dyf if res.gamma is None else dyf * res.gamma
    inner = g - xhat * jnp.mean(g * xhat, axis=layout.reduce, keepdims=True)
    if center:
        inner = inner - jnp.mean(g, axis=layout.reduce, keepdims=True)
    dx = (res.inv_std * inner).reshape(layout.x_shape).astype(x_dtype)
    others = tuple(a for a in range(len(layout.view)) if a not in layout.param_axes)
    grads = {}
    if res.gamma is not None:
        dgamma = jnp.sum(dyf * xhat, axis=others)
        grads["gamma"] = dgamma.reshape(layout.param_shape).astype(gamma_dtype)
    if use_bias:
        dbeta = jnp.sum(dyf, axis=others)
        grads["beta"] = dbeta.reshape(layout.param_shape).astype(beta_dtype)
    return grads, dx


# ----------------------------------------------------------------------------- checks


def _axes(axis: Any, name: str) -> tuple[int, ...]:
    """``axis`` (an int or a non-empty sequence of ints) as a tuple, as given."""
    axes = (axis,) if isinstance(axis, int | np.integer) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        axes = None
    if (
        not axes
        or isinstance(axis, bool)
        or not all(isinstance(a, int | np.integer) and not isinstance(a, bool) for a in axes)
    ):
        raise TypeError(
            f"{name}: axis must be an int or a non-empty sequence of ints (the normalised "
            f"axes, e.g. -1 or (-3, -2, -1)), got {axis!r}."
        )
    return tuple(int(a) for a in axes)


def _resolve_axes(axes: tuple[int, ...], shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """The normalised axes of an input of ``shape``, non-negative and sorted."""
    ndim = len(shape)
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(
            f"{name}: axis {axes if len(axes) > 1 else axes[0]} does not fit an input of rank "
            f"{ndim} (shape {shape}). Pass axes in [-{ndim}, {ndim}); negative axes count from "
            f"the last (-1: the features of [batch, ..., features])."
        )
    resolved = tuple(sorted(a % ndim for a in axes))
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{name}: axis {axes} names an axis twice (input rank {ndim}).")
    if math.prod(shape[a] for a in resolved) == 0:
        raise ValueError(
            f"{name}: the normalised axes {resolved} of x.shape={shape} hold no elements; there "
            f"is nothing to take a mean over."
        )
    return resolved


def _axes_layout(axes: tuple[int, ...], shape: tuple[int, ...], name: str) -> _Layout:
    """LayerNorm and RMSNorm: statistics and parameters over the normalised axes."""
    norm = _resolve_axes(axes, shape, name)
    return _Layout(shape, shape, norm, norm, tuple(shape[a] for a in norm))


def _group_layout(num_groups: int, shape: tuple[int, ...], name: str) -> _Layout:
    """GroupNorm: ``[N, ..., C]`` seen as ``[N, ..., G, C/G]``; statistics over every axis
    but the batch and the group axis, parameters over ``(G, C/G)``, i.e. per channel."""
    if len(shape) < 2:
        raise ValueError(
            f"{name}: x must be channels last [batch, ..., channels] of rank >= 2, got shape "
            f"{shape}. Add a batch axis with x[None] for a single example."
        )
    c = shape[-1]
    if c % num_groups:
        divisors = [d for d in range(1, c + 1) if c % d == 0]
        raise ValueError(
            f"{name}: num_groups={num_groups} does not divide the {c} channels of x.shape="
            f"{shape} (channels last); each group holds C/num_groups consecutive channels. "
            f"Choose num_groups among the divisors of {c}: {divisors}."
        )
    view = (*shape[:-1], num_groups, c // num_groups)
    k = len(view)
    reduce = (*range(1, k - 2), k - 1)
    return _Layout(shape, view, reduce, (k - 2, k - 1), (c,))


def _check_params(cfg: _Norm, layout: _Layout, params: Any, what: str) -> None:
    expected = [k for k, on in (("beta", cfg.use_bias), ("gamma", cfg.use_scale)) if on]
    if not isinstance(params, dict) or sorted(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{cfg.name}: params must be a dict with keys {expected}, got {got}. Use the params "
            f"that this layer's init returned."
        )
    for key in sorted(expected, reverse=True):  # gamma first
        shape = tuple(jnp.shape(params[key]))
        if shape != layout.param_shape:
            raise ValueError(
                f"{cfg.name}: {key} has shape {shape} but x.shape={layout.x_shape} needs "
                f"{layout.param_shape} ({what}). The layer was initialised for another input "
                f"shape: init it with this one."
            )
        if not jnp.issubdtype(jnp.result_type(params[key]), jnp.floating):
            raise TypeError(
                f"{cfg.name}: {key} must be a floating-point array, got dtype "
                f"{jnp.result_type(params[key])}."
            )


def _check_eps(eps: Any, name: str, allow_none: bool = False) -> float | None:
    if eps is None and allow_none:
        return None
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.integer | np.floating):
        none = " or None (PyTorch's machine epsilon)" if allow_none else ""
        raise TypeError(f"{name}: eps must be a positive number{none}, got {eps!r}.")
    ensure_positive(eps, f"{name}: eps")
    return float(eps)


def _make_layer(cfg: _Norm, layout_of: Any, what: str) -> Layer:
    """The layer: ``layout_of(shape)`` gives each input's :class:`_Layout`."""

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        del key  # nothing random: gamma = 1, beta = 0
        layout = layout_of(ensure_input_shape(input_shape, cfg.name))
        dtype = default_float() if cfg.param_dtype is None else cfg.param_dtype
        params = {}
        if cfg.use_scale:
            params["gamma"] = jnp.ones(layout.param_shape, dtype)
        if cfg.use_bias:
            params["beta"] = jnp.zeros(layout.param_shape, dtype)
        return params, {}

    def forward(params: Params, x: ArrayLike) -> tuple[Array, _Residuals, _Layout, Array]:
        x = ensure_float(x, "x")
        layout = layout_of(tuple(x.shape))
        _check_params(cfg, layout, params, what)
        y, res = _forward(cfg, layout, params, x)
        return y, res, layout, x

    def apply(
        params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None
    ):
        del train, key  # the same computation in both modes; nothing random
        return forward(params, x)[0], state

    def vjp(params: Params, state: State, x: ArrayLike, *, train: bool, key: PRNGKey | None = None):
        del train, key
        y, res, layout, x = forward(params, x)
        dtypes = {k: jnp.dtype(jnp.result_type(v)) for k, v in params.items()}
        backward = bind_backward(
            _backward,
            res,
            layout=layout,
            center=cfg.center,
            use_bias=cfg.use_bias,
            gamma_dtype=dtypes.get("gamma"),
            beta_dtype=dtypes.get("beta"),
            x_dtype=jnp.dtype(x.dtype),
        )
        return y, state, backward

    return Layer(cfg.name, init, apply, vjp)


# ----------------------------------------------------------------------------- the layers


def layernorm(
    *,
    axis: int | Sequence[int] = -1,
    eps: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    param_dtype: Any = None,
    name: str = "layernorm",
) -> Layer:
    """Layer normalisation (Ba, Kiros & Hinton, 2016): each example over its own features.

    ``x̂ = (x - mean) / √(var + eps)`` and ``y = gamma · x̂ + beta`` with the statistics over
    the ``axis`` axes of each example (``M`` elements); ``gamma`` and ``beta`` have the shape
    of those axes (``x.shape[a] for a in sorted(axis)``), broadcast over the others. Backward
    (derived in the module docstring), with ``g = gamma · dy`` and means over the ``M``::

        dx = s (g - mean(g) - x̂ · mean(g · x̂))      s = 1/√(var + eps)
        dgamma = Σ_batch dy · x̂                      dbeta = Σ_batch dy

    No state, the same in train and eval mode; any batch size, one included.

    **PyTorch**: ``F.layer_norm(x, normalized_shape, weight, bias, eps=1e-5)`` normalises
    the trailing ``len(normalized_shape)`` axes; it is ``layernorm(axis=(-k, ..., -1))`` with
    ``gamma = weight``, ``beta = bias`` (``elementwise_affine=False``: ``use_scale=False,
    use_bias=False``; ``bias=False``: ``use_bias=False``). ``nn.LayerNorm([C, H, W])`` on
    NCHW is ``layernorm(axis=(1, 2, 3))`` on NHWC with ``gamma = weight.permute(1, 2, 0)``.

    **Flax**: ``nn.LayerNorm(epsilon=1e-6, reduction_axes=-1, feature_axes=-1)``; its scale
    and bias span ``feature_axes``, which may differ from ``reduction_axes``: jaxnn's
    ``layernorm(axis=a, eps=e)`` is ``nn.LayerNorm(epsilon=e, reduction_axes=a,
    feature_axes=a, use_fast_variance=False)``, with ``scale``/``bias`` as gamma/beta.

    Args:
      axis: the normalised axis or axes (default ``-1``: the features of ``[batch,
        features]``, the channels of ``[batch, ..., channels]``). Negative axes count from
        the last, so the layer also runs per example under ``jax.vmap``.
      eps: added to the variance, ``> 0``; default ``1e-5`` (PyTorch; Flax's is ``1e-6``).
      use_scale, use_bias: whether the layer has ``gamma``, ``beta`` (the params hold only
        those it has).
      param_dtype: gamma's and beta's dtype (default float64 under ``jax_enable_x64``, else
        float32); float16 is refused.
      name: the layer's name.

    Raises:
      ValueError: ``eps <= 0``; an axis outside the input's rank, named twice, or of size 0;
        params of another structure or shape than init's.
      TypeError: ``axis`` not an int or a sequence of ints; a non-floating or float16
        ``param_dtype``; integer input.

    Example::

        layer = layernorm()
        params, state = layer.init(None, (8, 16))      # gamma [16], beta [16]; state {}
        y, state = layer.apply(params, state, x, train=True)
    """
    axes = _axes(axis, name)
    cfg = _Norm(
        name,
        _check_eps(eps, name),
        True,
        bool(use_scale),
        bool(use_bias),
        ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT),
    )
    return _make_layer(
        cfg,
        lambda shape: _axes_layout(axes, shape, name),
        f"the shape of the normalised axes {axes}",
    )


def groupnorm(
    num_groups: int,
    *,
    eps: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    param_dtype: Any = None,
    name: str = "groupnorm",
) -> Layer:
    """Group normalisation (Wu & He, 2018): channels in groups, each example on its own.

    ``x [N, ..., C]`` (channels last; ``[N, C]`` or ``[N, H, W, C]``); the ``C`` channels
    split into ``G = num_groups`` groups of ``C/G`` consecutive channels (channel ``c`` is in
    group ``c // (C/G)``, as PyTorch and Flax group them). Each group of each example is
    standardised over its ``M = (spatial size) · C/G`` elements, then scaled and shifted per
    channel: ``gamma``, ``beta`` of shape ``[C]``. The backward is LayerNorm's over each
    group (module docstring)::

        dx = s (g - mean(g) - x̂ · mean(g · x̂))      g = gamma · dy, means over the group
        dgamma = Σ_{N, spatial} dy · x̂              dbeta = Σ_{N, spatial} dy

    ``num_groups = 1`` is LayerNorm over every axis but the batch (Wu & He's "LN" of a CNN)
    with per-channel parameters; ``num_groups = C`` is InstanceNorm. No state, the same in
    train and eval mode; any batch size, one included. A group of a single element (``[N,
    C]`` with ``num_groups = C``) has variance 0: ``y = beta`` (PyTorch refuses a batch of one
    there).

    **PyTorch**: ``F.group_norm(x_nchw, num_groups, weight, bias, eps=1e-5)`` (channels at
    axis 1) equals ``groupnorm(num_groups)`` on ``x_nhwc = x_nchw.permute(0, 2, 3, 1)``, with
    ``gamma = weight``, ``beta = bias`` (``nn.GroupNorm(affine=False)``: ``use_scale=False,
    use_bias=False``).

    **Flax**: ``nn.GroupNorm(num_groups=32, epsilon=1e-6)`` (channels last, groups of
    consecutive channels, ``scale``/``bias`` of shape ``[C]``): jaxnn's ``groupnorm(G,
    eps=e)`` is ``nn.GroupNorm(num_groups=G, epsilon=e, use_fast_variance=False)``. jaxnn has
    no default ``num_groups`` (Flax's 32 needs ``C`` divisible by 32) and no ``group_size``
    (pass ``C // group_size``).

    Args:
      num_groups: ``G``, a positive int dividing the channel count ``C`` (checked against
        each input: a clear error otherwise).
      eps: added to the variance, ``> 0``; default ``1e-5`` (PyTorch; Flax's is ``1e-6``).
      use_scale, use_bias: whether the layer has ``gamma``, ``beta``.
      param_dtype: gamma's and beta's dtype (default float64 under ``jax_enable_x64``, else
        float32); float16 is refused.
      name: the layer's name.

    Raises:
      ValueError: ``num_groups`` not a positive int, or not dividing ``C``; ``eps <= 0``;
        input of rank < 2; params of another structure or shape than init's.
      TypeError: a non-floating or float16 ``param_dtype``; integer input.

    Example::

        layer = groupnorm(4)
        params, state = layer.init(None, (2, 8, 8, 16))   # gamma [16], beta [16]; state {}
        y, state = layer.apply(params, state, x, train=True)
    """
    if isinstance(num_groups, bool) or not (
        isinstance(num_groups, int | np.integer) and num_groups > 0
    ):
        raise ValueError(
            f"{name}: num_groups must be a positive int (the number of channel groups; it must "
            f"divide the channels), got {num_groups!r}."
        )
    groups = int(num_groups)
    cfg = _Norm(
        name,
        _check_eps(eps, name),
        True,
        bool(use_scale),
        bool(use_bias),
        ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT),
    )
    return _make_layer(
        cfg, lambda shape: _group_layout(groups, shape, name), "one value per channel: [C]"
    )


def rmsnorm(
    *,
    axis: int | Sequence[int] = -1,
    eps: float | None = 1e-6,
    use_scale: bool = True,
    param_dtype: Any = None,
    name: str = "rmsnorm",
) -> Layer:
    """Root mean square normalisation (Zhang & Sennrich, 2019): LayerNorm without centring.

    ``y = gamma · x̂`` with ``x̂ = x s``, ``s = 1/√(mean(x²) + eps)``, the mean over the
    ``axis`` axes of each example (``M`` elements); ``gamma`` has those axes' shape. No bias
    (as the paper, PyTorch and Flax). Backward (module docstring), ``g = gamma · dy``::

        dx = s (g - x̂ · mean(g · x̂))        dgamma = Σ_batch dy · x̂

    No state, the same in train and eval mode; any batch size.

    **eps**: default ``1e-6``, Flax's (``nn.RMSNorm(epsilon=1e-6)``). ``eps=None`` is
    PyTorch's default (``torch.nn.RMSNorm(eps=None)``, ``F.rms_norm``): the machine epsilon
    of the computation dtype, ``finfo(float32).eps = 1.19e-7`` for float16, bfloat16 and
    float32 input, ``finfo(float64).eps = 2.2e-16`` for float64.

    **PyTorch**: ``F.rms_norm(x, normalized_shape, weight, eps)`` is ``rmsnorm(axis=(-k, ...,
    -1), eps=eps)`` with ``gamma = weight`` (``elementwise_affine=False``:
    ``use_scale=False``). **Flax**: ``nn.RMSNorm(epsilon=e, reduction_axes=a,
    feature_axes=a)``, with ``scale`` as gamma.

    Args:
      axis: the normalised axis or axes (default ``-1``).
      eps: added to the mean square, ``> 0``, or None (PyTorch's machine epsilon, above).
      use_scale: whether the layer has ``gamma`` (without it, params are ``{}``).
      param_dtype: gamma's dtype (default float64 under ``jax_enable_x64``, else float32);
        float16 is refused.
      name: the layer's name.

    Raises:
      ValueError: ``eps <= 0``; an axis outside the input's rank, named twice, or of size 0;
        params of another structure or shape than init's.
      TypeError: ``axis`` not an int or a sequence of ints; a non-floating or float16
        ``param_dtype``; integer input.

    Example::

        layer = rmsnorm()
        params, state = layer.init(None, (8, 16))      # gamma [16]; state {}
        y, state = layer.apply(params, state, x, train=False)
    """
    axes = _axes(axis, name)
    cfg = _Norm(
        name,
        _check_eps(eps, name, allow_none=True),
        False,
        bool(use_scale),
        False,
        ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT),
    )
    return _make_layer(
        cfg,
        lambda shape: _axes_layout(axes, shape, name),
        f"the shape of the normalised axes {axes}",
    )
