"""Ready-made networks: ``mlp``, a multi-layer perceptron built with :func:`~jaxnn.serial`.

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
from jaxnn.combinators import serial
from jaxnn.layers import activation as _activation
from jaxnn.layers import dense
from jaxnn.layers import dropout as _dropout

__all__ = ["mlp"]


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
