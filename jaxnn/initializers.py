"""Initialisers by name: ``jax.nn.initializers`` where it has them, and :func:`given`.

An initialiser maps ``(key, shape, dtype)`` to an array. For a dense kernel ``[fan_in,
fan_out]``, the variance-scaling schemes draw with variance ``scale / n``:

==================  ==========================  =================================
name                variance                    reference
==================  ==========================  =================================
glorot_uniform      ``2 / (fan_in + fan_out)``  Glorot & Bengio (2010), uniform
glorot_normal       ``2 / (fan_in + fan_out)``  the same, normal
he_uniform          ``2 / fan_in``              He et al. (2015), for ReLU
he_normal           ``2 / fan_in``              the same, normal
lecun_uniform       ``1 / fan_in``              LeCun et al. (1998)
lecun_normal        ``1 / fan_in``              the same; SELU's fixed point assumes it
==================  ==========================  =================================

A uniform draws from ``U(-a, a)`` with ``a = √(3 variance)``. The normals are **untruncated**,
as PyTorch's ``xavier_normal_`` and ``kaiming_normal_`` (``jax.nn.initializers.glorot_normal``
and ``he_normal`` truncate at two standard deviations; jaxnn's names do not). Each entry is
``jax.nn.initializers.variance_scaling(scale, mode, distribution)``, so it also needs a
parameter of rank >= 2: for a bias use ``"zeros"``, :func:`jax.nn.initializers.constant` or
:func:`jax.nn.initializers.normal`. ``xavier_*`` and ``kaiming_*`` are aliases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.nn import initializers as _jax_init

from jaxnn._checks import unknown_name
from jaxnn._typing import Array, ArrayLike, PRNGKey

__all__ = ["INITIALIZERS", "Initializer", "constant", "get", "given"]

Initializer = Callable[..., Array]  # (key, shape, dtype) -> array


def _variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    return _jax_init.variance_scaling(scale, mode, distribution)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "zeros": _jax_init.zeros,
    "ones": _jax_init.ones,
}
for _alias, _name in (
    ("xavier_uniform", "glorot_uniform"),
    ("xavier_normal", "glorot_normal"),
    ("kaiming_uniform", "he_uniform"),
    ("kaiming_normal", "he_normal"),
):
    INITIALIZERS[_alias] = INITIALIZERS[_name]

constant = _jax_init.constant  # constant(value): every element equal to value


def given(values: ArrayLike) -> Initializer:
    """Exactly ``values`` (to set a published example's weights); the shape must match.

    Example: the worked example's hidden layer, ``w[i, j]`` from input ``i`` to unit ``j``::

        dense(2, w_init=given([[0.15, 0.25], [0.20, 0.30]]), b_init=constant(0.35))
    """
    values = np.asarray(values)

    def init(key: PRNGKey | None, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        if tuple(values.shape) != tuple(shape):
            raise ValueError(
                f"given() values have shape {tuple(values.shape)}, but the layer needs a "
                f"parameter of shape {tuple(shape)}. A dense kernel is [in_features, "
                f"out_features]: w[i, j] connects input i to unit j."
            )
        return jnp.asarray(values, dtype)

    return init


def get(init: str | Initializer) -> Initializer:
    """An initialiser by name (``"glorot_uniform"``, ``"he_normal"``, ...), or a callable.

    Raises:
      ValueError: an unknown name; the message lists the known ones.
      TypeError: neither a name nor a callable.
    """
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise unknown_name("initialiser", init, list(INITIALIZERS))
        return INITIALIZERS[init]
    if callable(init):
        return init
    raise TypeError(
        f"an initialiser must be a name ({', '.join(sorted(INITIALIZERS))}) or a callable "
        f"(key, shape, dtype) -> array, got {type(init).__name__}."
    )
