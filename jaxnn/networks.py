"""Ready-made networks: ``mlp`` (a multi-layer perceptron) and ``cnn`` (a convolutional network,
plain or residual), built with :func:`~jaxnn.serial` and :func:`~jaxnn.combinators.residual`.

A network is a layer like any other (a :class:`~jaxnn.Layer`), the composition of its layers
by :func:`jaxnn.combinators.serial`: its params and state are keyed ``"dense_0"``,
``"batchnorm_1"``, ... (:func:`jaxnn.combinators.layer_keys`), and its hand backward is
``serial``'s chain rule through each layer's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from jaxnn import activations as _activations
from jaxnn import initializers as _initializers
from jaxnn._checks import PARAM_DTYPE_HINT, ensure_float_dtype
from jaxnn._typing import Layer
from jaxnn.batchnorm import batchnorm as _batchnorm
from jaxnn.combinators import residual as _residual
from jaxnn.combinators import serial
from jaxnn.conv import conv2d
from jaxnn.layers import activation as _activation
from jaxnn.layers import dense, reshape
from jaxnn.layers import dropout as _dropout
from jaxnn.norms import groupnorm as _groupnorm
from jaxnn.norms import layernorm as _layernorm
from jaxnn.pooling import avg_pool, global_avg_pool, max_pool

__all__ = ["NORMS", "cnn", "mlp"]


def _activation_arg(act: Any) -> str | _activations.Activation:
    if isinstance(act, str | _activations.Activation):
        _activations.get(act)  # an unknown name is an error even where it goes unused
        return act
    raise TypeError(
        f"mlp: an activation must be a name ({', '.join(sorted(_activations.ACTIVATIONS))}) or "
        f"a jaxnn Activation, got {type(act).__name__} {act!r}. For your own function use "
        f"jaxnn.activations.elementwise(name, fn, derivative): jaxnn needs its hand derivative."
    )


def mlp(
    features: Sequence[int],
    activation: str | _activations.Activation | Sequence[str | _activations.Activation] = "relu",
    *,
    final_activation: str | _activations.Activation | None = None,
    use_bias: bool = True,
    w_init: str | _initializers.Initializer = "glorot_uniform",
    b_init: str | _initializers.Initializer = "zeros",
    param_dtype: Any = None,
    compute_dtype: Any = None,
    output_dtype: Any = None,
    batchnorm: bool | dict[str, Any] = False,
    dropout: float = 0.0,
    name: str = "mlp",
) -> Layer:
    """A multi-layer perceptron: ``dense(features[0])``, activation, ..., ``dense(features[-1])``.

    Each hidden layer is ``dense -> [batchnorm] -> activation -> [dropout]`` (Ioffe &
    Szegedy's placement of BatchNorm, between the affine map and the non-linearity; dropout
    on the hidden activations, as Srivastava et al.); the last is ``dense -> final_activation``.
    A dense layer followed by BatchNorm has no bias: BatchNorm's mean subtraction cancels it
    and its ``β`` takes its place (Ioffe & Szegedy, 2015, §3.2), so its gradient would be
    exactly 0 (PyTorch's and Flax's examples write ``bias=False`` there too).

    **Mixed precision** names its three dtypes as DeepMind's jmp does, ``Policy(param_dtype,
    compute_dtype, output_dtype)`` (Flax's layers call the first two ``param_dtype`` and
    ``dtype``). With ``compute_dtype=jnp.bfloat16`` (Micikevicius et al., 2018, "Mixed
    Precision Training"; bfloat16: Kalamkar et al., 2019, "A Study of BFLOAT16 for Deep
    Learning Training"):

    * the params stay in ``param_dtype`` (float32): the master weights, which the gradients
      (returned in float32) and the optimizer update;
    * every dense layer casts its input and its params to bfloat16 and multiplies there, so
      the network's input is cast at the first one and every activation between layers is
      bfloat16; activations and dropout compute in the dtype they receive;
    * BatchNorm normalises in float32 (statistics, running statistics, gamma, beta) and hands
      on bfloat16;
    * the last dense layer casts its output to ``output_dtype`` (default: float32, or the
      compute dtype if wider), so the final activation and the loss run in float32.

    bfloat16 keeps float32's 8 exponent bits and shortens the significand to 8 bits (unit
    roundoff 2⁻⁸), so small gradients do not underflow as in float16 (smallest normal 6e-5)
    and no loss scaling is needed (Kalamkar et al., 2019). float16 is refused for all three
    dtypes (a ``TypeError``): its largest finite value, 65504, overflows activations, and
    without loss scaling, which jaxnn does not do, small gradients underflow.
    ``compute_dtype=None`` (default) casts nothing: everything runs in the params' dtype (with
    ``output_dtype`` alone, only the output is cast).

    Args:
      features: units of each dense layer, e.g. ``[100, 100, 10]``.
      activation: one activation for every hidden layer (the last gets ``final_activation``,
        default identity), or a sequence with one activation per dense layer (then
        ``final_activation`` must be left out).
      final_activation: activation after the last dense layer, when ``activation`` is one.
      use_bias, w_init, b_init, param_dtype: passed to every :func:`~jaxnn.layers.dense`
        (``use_bias`` to those not followed by BatchNorm; ``param_dtype`` to BatchNorm too).
      compute_dtype: a floating dtype (``jnp.bfloat16`` for mixed precision) passed to every
        dense and BatchNorm layer; None (default): no cast anywhere.
      output_dtype: the network output's dtype, cast at the last dense layer (default: with
        ``compute_dtype``, ``promote(compute_dtype, float32)``; without, no cast).
      batchnorm: put a :func:`~jaxnn.batchnorm.batchnorm` in each hidden layer; a dict passes
        its arguments.
      dropout: put a :func:`~jaxnn.layers.dropout` of this rate (the probability of dropping a
        unit) after each hidden activation; 0 (default) puts none.
      name: the network's name.

    Raises:
      TypeError: ``features`` is not a list of ints; an activation is neither a name nor an
        :class:`~jaxnn.activations.Activation`; a dtype is not floating-point, or is float16.
      ValueError: no layer sizes; as many activations as layers are not given.

    Example::

        net = mlp([128, 64, 10], "relu", batchnorm=True, dropout=0.1)
        y, state = net.apply(params, state, x, train=True, key=key, mask=mask)
        net = mlp([128, 64, 10], "relu", batchnorm=True, compute_dtype=jnp.bfloat16)
    """
    if isinstance(features, int | str) or not isinstance(features, Sequence):
        raise TypeError(
            f"mlp: features must be a list of layer sizes, e.g. [100, 10], got {features!r}."
        )
    features = list(features)
    if not features:
        raise ValueError("mlp: features must list at least one layer size, got [].")
    if isinstance(activation, str | _activations.Activation) or callable(activation):
        acts = [_activation_arg(activation)] * (len(features) - 1)
        acts.append(_activation_arg(final_activation or "identity"))
    else:
        acts = [_activation_arg(a) for a in activation]
        if final_activation is not None:
            raise ValueError(
                "mlp: give either one activation per layer or final_activation, not both."
            )
        if len(acts) != len(features):
            raise ValueError(
                f"mlp: {len(features)} dense layers need {len(features)} activations, got "
                f"{len(acts)}: {acts}."
            )
    hint = "Use jnp.bfloat16 for mixed precision (params kept in param_dtype), or None."
    compute_dtype = ensure_float_dtype(compute_dtype, "mlp: compute_dtype", hint)
    output_dtype = ensure_float_dtype(output_dtype, "mlp: output_dtype")
    param_dtype = ensure_float_dtype(param_dtype, "mlp: param_dtype", PARAM_DTYPE_HINT)
    if output_dtype is None and compute_dtype is not None:
        output_dtype = jnp.promote_types(compute_dtype, jnp.float32)  # the loss in >= float32
    dtypes = {"param_dtype": param_dtype, "compute_dtype": compute_dtype}
    bn_kwargs = batchnorm if isinstance(batchnorm, dict) else {}
    drop = _dropout(dropout) if dropout else None  # validates the rate
    layers: list[Layer] = []
    for i, (f, a) in enumerate(zip(features, acts, strict=True)):
        hidden = i < len(features) - 1
        # Before BatchNorm a bias is cancelled by the mean subtraction (Ioffe & Szegedy, 2015,
        # §3.2: β takes its role): its exact gradient is 0, and an optimizer that normalises
        # the step (Adam) would turn that gradient's rounding noise into lr-sized updates.
        bias = use_bias and not (batchnorm and hidden)
        out = None if hidden else output_dtype
        layers.append(
            dense(f, use_bias=bias, w_init=w_init, b_init=b_init, output_dtype=out, **dtypes)
        )
        if batchnorm and hidden:
            layers.append(_batchnorm(**dtypes, **bn_kwargs))
        layers.append(_activation(a))
        if drop is not None and hidden:
            layers.append(drop)
    return serial(*layers, name=name)


# ----------------------------------------------------------------------------- cnn

NORMS = ("batchnorm", "layernorm", "groupnorm", None)


def _norm_layer(norm: str | None, groups: int, dtypes: dict[str, Any]) -> Layer | None:
    if norm == "batchnorm":
        return _batchnorm(param_dtype=dtypes["param_dtype"])  # over the channels of NHWC
    if norm == "layernorm":
        return _layernorm(axis=(-3, -2, -1), param_dtype=dtypes["param_dtype"])
    if norm == "groupnorm":
        return _groupnorm(groups, param_dtype=dtypes["param_dtype"])
    return None


def _conv_norm(
    channels: int, kernel: int, strides: int, norm: str | None, groups: int, dtypes: dict
) -> list[Layer]:
    """``conv -> norm`` (the convolution without bias where a norm follows: its mean
    subtraction cancels a bias, and beta takes its place, as in ``mlp``)."""
    normalise = _norm_layer(norm, groups, dtypes)
    conv = conv2d(
        channels, kernel, strides=strides, use_bias=normalise is None, w_init="he_normal", **dtypes
    )
    return [conv] if normalise is None else [conv, normalise]


def cnn(
    input_shape: Sequence[int],
    channels: Sequence[int],
    num_classes: int,
    *,
    blocks_per_stage: int = 1,
    residual: bool = False,
    norm: str | None = "batchnorm",
    groups: int = 2,
    activation: str | _activations.Activation = "relu",
    pool: str = "max",
    param_dtype: Any = None,
    name: str = "cnn",
) -> Layer:
    """A convolutional network for images: a stem, stages of blocks, global pooling, a head.

    The layout of He et al.'s CIFAR-10 networks (2016, §4.2), at any size::

        reshape(input_shape)                      flat [N, H·W·C] or [N, H, W, C] -> NHWC
        conv3x3(channels[0]) -> norm -> act       the stem
        for each stage s (channels[s]):
            [pool 2x2, stride 2]                  every stage but the first halves H and W
            blocks_per_stage x block
        global_avg_pool -> dense(num_classes)     logits

    A block is two 3x3 convolutions, ``conv -> norm -> act -> conv -> norm``, then ``act``.
    A *plain* block (``residual=False``) is just that; a *residual* block adds its input
    before the last activation, ``act(block(x) + shortcut(x))`` (:func:`~jaxnn.combinators.
    residual`), with the identity shortcut, or where the block changes the channels a
    projection ``conv1x1 -> norm`` (He et al.'s option B). So a plain network and a residual
    one of the same arguments have the same layers and the same number of weights but the
    projections: the comparison of He et al.'s Figure 4. Weighted layers:
    ``2 + 2 · blocks_per_stage · len(channels)`` (``blocks_per_stage = 3, channels = (16, 32,
    64)``: He et al.'s ResNet-20 / plain-20).

    Convolutions are He-normal initialised (``he_normal``, fan-in; He et al., 2015), without
    bias where a norm follows (the norm's beta takes its place), with bias where
    ``norm=None``.

    Args:
      input_shape: one example's ``(H, W, C)``; inputs may come flat, ``[N, H·W·C]``, as
        :func:`jaxnn.data.digits` gives them (8x8x1), or as ``[N, H, W, C]``.
      channels: each stage's channels, e.g. ``(16, 32)``; the stem has ``channels[0]``.
      num_classes: the head's units.
      blocks_per_stage: blocks in each stage (depth).
      residual: residual blocks (True) or plain ones (False).
      norm: after every convolution: ``"batchnorm"`` (BatchNorm over the channels of NHWC
        input, :func:`~jaxnn.batchnorm.batchnorm`), ``"layernorm"`` (each example over
        ``(H, W, C)``, PyTorch's ``nn.LayerNorm([C, H, W])``), ``"groupnorm"`` (``groups``
        groups of channels, Wu & He, 2018), or None.
      groups: GroupNorm's number of groups (must divide every stage's channels).
      activation: the non-linearity, by name or :class:`~jaxnn.activations.Activation`.
      pool: the downsampling between stages, ``"max"`` or ``"avg"`` (2x2, stride 2).
      param_dtype: the params' dtype (default float64 under ``jax_enable_x64``, else float32).
      name: the network's name.

    Raises:
      ValueError: an empty ``channels``, a size below 1, an unknown ``norm`` or ``pool``; an
        image too small for the stages (each but the first halves it).

    Example::

        net = cnn((8, 8, 1), (16, 32), 10, residual=True)
        params, state = net.init(jax.random.key(0), (128, 64))   # digits: flat 8x8 images
        logits, state = net.apply(params, state, x, train=True)
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"cnn: input_shape must be one example's (H, W, C), got {input_shape!r}.")
    channels = [int(c) for c in channels]
    if not channels or min(channels) < 1:
        raise ValueError(f"cnn: channels must list each stage's channels (>= 1), got {channels}.")
    for what, v in (("num_classes", num_classes), ("blocks_per_stage", blocks_per_stage)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"cnn: {what} must be an int >= 1, got {v!r}.")
    if norm not in NORMS:
        raise ValueError(f"cnn: norm must be one of {list(NORMS)}, got {norm!r}.")
    if norm == "groupnorm" and any(c % groups for c in channels):
        raise ValueError(
            f"cnn: GroupNorm's groups={groups} must divide every stage's channels {channels}."
        )
    if pool not in ("max", "avg"):
        raise ValueError(f"cnn: pool must be 'max' or 'avg', got {pool!r}.")
    side = min(shape[:2]) // 2 ** (len(channels) - 1)
    if side < 1:
        raise ValueError(
            f"cnn: {len(channels)} stages halve the image {len(channels) - 1} times; a "
            f"{shape[0]}x{shape[1]} image is too small. Use fewer stages."
        )
    act = _activation_arg(activation)
    param_dtype = ensure_float_dtype(param_dtype, "cnn: param_dtype", PARAM_DTYPE_HINT)
    dtypes = {"param_dtype": param_dtype}
    downsample = max_pool if pool == "max" else avg_pool

    def block(c_in: int, c_out: int) -> list[Layer]:
        body = [
            *_conv_norm(c_out, 3, 1, norm, groups, dtypes),
            _activation(act),
            *_conv_norm(c_out, 3, 1, norm, groups, dtypes),
        ]
        if not residual:
            return [*body, _activation(act)]
        shortcut = None
        if c_in != c_out:
            shortcut = serial(*_conv_norm(c_out, 1, 1, norm, groups, dtypes), name="projection")
        return [_residual(serial(*body, name="block"), shortcut), _activation(act)]

    layers: list[Layer] = [reshape(shape), *_conv_norm(channels[0], 3, 1, norm, groups, dtypes)]
    layers.append(_activation(act))
    c_in = channels[0]
    for s, c in enumerate(channels):
        if s > 0:
            layers.append(downsample(2, 2))
        for _ in range(blocks_per_stage):
            layers += block(c_in, c)
            c_in = c
    layers += [global_avg_pool(), dense(num_classes, **dtypes)]
    return serial(*layers, name=name)
