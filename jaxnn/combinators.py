"""Composition: ``serial`` and ``mlp`` (a composition is itself a layer), and ``intermediates``.

``serial(*layers)`` runs its layers in order. Its params and state are dicts keyed
``"{layer.name}_{i}"`` (``"dense_0"``, ``"batchnorm_1"``, ...), each holding that layer's own
params or state; a layer without params (an activation, dropout) has no entry in the params,
and one without state (all but BatchNorm) none in the state. The pytrees a training step
carries then have a node per array-holding layer only (each node costs host time at every
jitted call), and :func:`layer_keys` gives every layer's key in run order.

Its backward is the chain rule done by hand: the forward runs each layer's
``vjp`` and keeps its ``backward``; the backward runs them in reverse, feeding each one's
``dx`` to the layer before as its ``dy`` and collecting every ``dparams``::

    dy_n = dL/dy;   (dparams_i, dy_{i-1}) = backward_i(dy_i),   i = n, ..., 1

Keys and keyword arrays are routed, not broadcast blindly: the network's ``key`` is split
into one key per stochastic layer (dropout), in order; a keyword array (BatchNorm's ``mask``)
goes to every layer that names it in ``Layer.keywords``, and a keyword no layer takes is an
error. :func:`intermediates` returns every layer's output by name, from the same forward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxnn import activations as _activations
from jaxnn import initializers as _initializers
from jaxnn._checks import PARAM_DTYPE_HINT, ensure_float_dtype, ensure_input_shape
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward
from jaxnn.batchnorm import batchnorm as _batchnorm
from jaxnn.layers import activation as _activation
from jaxnn.layers import default_float, dense
from jaxnn.layers import dropout as _dropout

__all__ = ["intermediates", "layer_keys", "mlp", "serial"]


def _names(layers: Sequence[Layer]) -> tuple[str, ...]:
    return tuple(f"{layer.name}_{i}" for i, layer in enumerate(layers))


def layer_keys(layer: Layer) -> tuple[str, ...]:
    """The keys of a composition's layers, in the order they run.

    ``"{layer.name}_{i}"`` for the ``i``-th layer (``("dense_0", "relu_1", ...)``): the keys
    of its params and state (where a layer has them) and of :func:`intermediates`' outputs.
    Use it to walk a network's params in order (``[k for k in layer_keys(net) if k in
    params]``): a dict that has been through ``jit`` or ``jax.tree.map`` comes back with its
    keys sorted (``"dense_10"`` before ``"dense_2"``).
    """
    if not isinstance(layer, Layer) or not layer.children:
        raise TypeError("layer_keys needs a composition (serial or mlp).")
    return _names(layer.children)


def _layer_keys(layers: Sequence[Layer], key: PRNGKey | None) -> list[PRNGKey | None]:
    """One key per stochastic layer (``None`` for the others): ``key`` split in order."""
    stochastic = [i for i, layer in enumerate(layers) if layer.stochastic]
    keys: list[PRNGKey | None] = [None] * len(layers)
    if key is None or not stochastic:
        return keys
    split = [key] if len(stochastic) == 1 else list(jax.random.split(key, len(stochastic)))
    for i, k in zip(stochastic, split, strict=True):
        keys[i] = k
    return keys


def _check_tree(tree: Any, names: tuple[str, ...], what: str, net: str) -> None:
    if not isinstance(tree, dict) or not set(tree) <= set(names):
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(
            f"{net}: the {what} do not match the network: expected a dict whose keys are among "
            f"{list(names)} (one per layer that has {what}), got {got}. Use the {what} that "
            f"this network's init returned (or a pytree with the same structure)."
        )


def _forward(
    layer: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    train: bool,
    key: PRNGKey | None,
    keywords: dict[str, Any],
    with_vjp: bool,
) -> tuple[Array, State, dict[str, Array], list[Any]]:
    """Run a composition's layers in order: ``(y, new_state, outputs by name, backwards)``."""
    layers, names = layer.children, _names(layer.children)
    _check_tree(params, names, "params", layer.name)
    _check_tree(state, names, "state", layer.name)
    unknown = set(keywords) - set(layer.keywords)
    if unknown:
        raise TypeError(
            f"{layer.name}: no layer of this network takes the keyword(s) {sorted(unknown)}; "
            f"its layers take {list(layer.keywords) or 'no keyword arrays'}."
        )
    new_state, outputs, backwards = {}, {}, []
    for name, child, k in zip(names, layers, _layer_keys(layers, key), strict=True):
        kw = {a: keywords[a] for a in child.keywords if a in keywords}
        p, s = params.get(name, {}), state.get(name, {})
        if with_vjp:
            x, s, backward = child.vjp(p, s, x, train=train, key=k, **kw)
            backwards.append(backward)
        else:
            x, s = child.apply(p, s, x, train=train, key=k, **kw)
        if name in state or s != {}:
            new_state[name] = s
        outputs[name] = x
    return x, new_state, outputs, backwards


def _serial_backward(
    backwards: tuple[Any, ...], dy: Array, *, names: tuple[str, ...], with_params: frozenset[str]
) -> tuple[Params, Array]:
    grads = {}
    for name, backward in zip(reversed(names), reversed(backwards), strict=True):
        grads[name], dy = backward(dy)
    return {name: grads[name] for name in names if name in with_params}, dy


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers in sequence: ``y = layer_n(... layer_1(x))``. The result is a layer.

    See the module docstring for the params' keys, the backward, and how keys and keyword
    arrays reach the layers.

    Example::

        net = serial(dense(16), activation("tanh"), dropout(0.1), dense(3))
        params, state = net.init(jax.random.key(0), (8, 4))
        y, state = net.apply(params, state, x, train=True, key=jax.random.key(1))
    """
    if not layers:
        raise ValueError("serial needs at least one layer.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"serial: argument {i} must be a Layer (dense(...), activation(...), ...), got "
                f"{type(layer).__name__} {layer!r}."
            )
    names = _names(layers)
    keywords = tuple(dict.fromkeys(k for layer in layers for k in layer.keywords))

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        shape = jax.ShapeDtypeStruct(ensure_input_shape(input_shape, name), default_float())
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        params, state = {}, {}
        for k, layer_name, layer in zip(keys, names, layers, strict=True):
            p, s = layer.init(k, shape.shape)
            if p != {}:
                params[layer_name] = p
            if s != {}:
                state[layer_name] = s
            out, _ = jax.eval_shape(functools.partial(layer.apply, train=False), p, s, shape)
            shape = jax.ShapeDtypeStruct(out.shape, shape.dtype)
        return params, state

    def apply(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        y, new_state, _, _ = _forward(net, params, state, x, train, key, kw, with_vjp=False)
        return y, new_state

    def vjp(params, state, x, *, train: bool, key: PRNGKey | None = None, **kw: Any):
        y, new_state, _, backwards = _forward(net, params, state, x, train, key, kw, with_vjp=True)
        with_params = frozenset(params)
        return (
            y,
            new_state,
            bind_backward(_serial_backward, tuple(backwards), names=names, with_params=with_params),
        )

    net = Layer(
        name,
        init,
        apply,
        vjp,
        keywords=keywords,
        stochastic=any(layer.stochastic for layer in layers),
        children=tuple(layers),
    )
    return net


def intermediates(
    layer: Layer,
    params: Params,
    state: State,
    x: ArrayLike,
    *,
    train: bool,
    key: PRNGKey | None = None,
    **keywords: Any,
) -> tuple[Array, State, dict[str, Array]]:
    """A composition's forward pass with every layer's output, by the layer's key.

    The same computation as ``layer.apply`` (same key splitting, same keyword routing), so
    ``intermediates(net, ...)["batchnorm_4"]`` is what the layer ``batchnorm_4`` handed on
    inside ``net.apply``. Under ``jit`` the outputs you do not use cost nothing.

    Returns:
      ``(y, new_state, outputs)``: ``outputs`` maps each key of ``params`` (``"dense_0"``,
      ``"sigmoid_1"``, ...) to that layer's output, in order.

    Raises:
      TypeError: ``layer`` is not a composition (``serial`` or ``mlp``).
    """
    if not isinstance(layer, Layer) or not layer.children:
        got = layer.name if isinstance(layer, Layer) else type(layer).__name__
        raise TypeError(
            f"intermediates needs a composition (serial or mlp), got {got!r}, which has no "
            f"layers inside it: its output is apply's output."
        )
    y, new_state, outputs, _ = _forward(layer, params, state, x, train, key, keywords, False)
    return y, new_state, outputs


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
