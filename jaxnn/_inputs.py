"""The concrete checks of what training and evaluation are given: counts, ``(x, targets)``
pairs, a network's params and state, and the targets its outputs must meet.

They run before anything is compiled, on concrete arrays, and raise with the argument's name
(``who``), what was expected, what came and the fix; the compiled code behind them trusts
its arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import losses as _losses
from jaxnn._trees import differences as _differences
from jaxnn._typing import Array, ArrayLike, Layer, Params, State


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int | np.integer) and value > 0):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def ensure_pair(x: ArrayLike, targets: ArrayLike, who: str) -> tuple[Array, Array]:
    x, targets = jnp.asarray(x), jnp.asarray(targets)
    if x.ndim < 1 or targets.ndim < 1 or x.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{who}: x and targets must have the same number of examples (first axis), got "
            f"x.shape={x.shape} and targets.shape={targets.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{who}: no examples (x.shape={x.shape}).")
    return x, targets


def pair_argument(value: Any, who: str) -> tuple[Array, Array]:
    """``(x, targets)`` from an argument such as ``fit``'s ``train=(x, y)``, checked."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        got = (
            f"a {type(value).__name__} of {len(value)} item(s)"
            if isinstance(value, tuple | list)
            else f"a {type(value).__name__}"
        )
        raise TypeError(
            f"{who} must be a pair (x, targets) of arrays with one example per row, got {got}."
        )
    return ensure_pair(*value, who)


@functools.lru_cache(maxsize=64)
def _init_shapes(network: Layer, features: tuple[int, ...]) -> Any:
    """The shapes of ``network.init``'s ``(params, state)`` for examples of shape ``features``."""
    return jax.eval_shape(lambda key: network.init(key, (2, *features)), jax.random.key(0))


@functools.lru_cache(maxsize=64)
def _outputs(network: Layer) -> Callable[[Params, State, Array], Array]:
    """``network``'s eval-mode output; :func:`jax.eval_shape` of it gives the outputs' shape."""
    return lambda params, state, x: network.apply(params, state, x, train=False)[0]


def check_network(network: Layer, params: Params, state: State, x: Array, who: str) -> None:
    """Refuse ``params``/``state`` that are not ``network``'s for inputs like ``x``."""
    if not isinstance(network, Layer):
        raise TypeError(f"{who}: the network must be a jaxnn Layer (mlp(...), serial(...)), got "
                        f"{type(network).__name__}.")  # fmt: skip
    try:
        want = _init_shapes(network, tuple(x.shape[1:]))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # an init that cannot be traced: the layer's own checks stand
    problems = [f"params/{d}" for d in _differences(want[0], params)]
    problems += [f"state/{d}" for d in _differences(want[1], state)]
    if problems:
        listing = "\n  ".join(
            problems[:12] + ([f"... {len(problems) - 12} more"] if len(problems) > 12 else [])
        )
        raise ValueError(
            f"{who}: the params and state do not belong to the network {network.name!r} for "
            f"inputs of shape {tuple(x.shape)} ({len(problems)} difference(s)):\n  {listing}\n"
            f"Build the state for this network: TrainState.create(network, optimizer, key, "
            f"x.shape), or network.init(key, x.shape)."
        )


def check_data(
    network: Layer, loss: _losses.Loss, params: Params, state: State, x: Array, targets: Array,
    who: str,
) -> None:  # fmt: skip
    """The concrete checks of a network's inputs: its params and state, and the targets its
    outputs must meet (:func:`jaxnn.losses.check_targets`: e.g. labels in ``[0, classes)``)."""
    check_network(network, params, state, x, who)
    # The outputs of one example (one trace per input shape, cached): the first axis is the
    # batch in every layer.
    one = jax.eval_shape(
        _outputs(network), params, state, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    )
    _losses.check_targets(loss, targets, (x.shape[0], *one.shape[1:]), who)
