"""Eager validation of static facts (shapes, dtypes, hyperparameters).

Every message says what was expected, what came, and what to do about it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_floating(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def ensure_float(x: Any, name: str) -> jax.Array:
    """Return ``x`` as a JAX array, refusing integer and boolean input."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {dtype}. Gradients are not "
            f"defined for integer or boolean arrays: convert with jnp.asarray({name}, "
            f"dtype=jnp.float32) (or float64)."
        )
    return jnp.asarray(x)


def ensure_same_shape(a: jax.Array, b: jax.Array, a_name: str, b_name: str) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {a_name}.shape="
            f"{tuple(jnp.shape(a))} and {b_name}.shape={tuple(jnp.shape(b))}. jaxnn does not "
            f"broadcast silently: reshape one of them explicitly."
        )


def ensure_min_rank(x: jax.Array, rank: int, name: str, layout: str) -> None:
    if jnp.ndim(x) < rank:
        raise ValueError(
            f"{name} must have rank >= {rank} (layout {layout}), got shape "
            f"{tuple(jnp.shape(x))} of rank {jnp.ndim(x)}. Add a batch axis with x[None] "
            f"for a single example."
        )


def ensure_positive(value: Any, name: str) -> None:
    """Validate a positive scalar hyperparameter, when it is known at trace time."""
    if isinstance(value, jax.core.Tracer):
        return  # a traced hyperparameter (e.g. a schedule) cannot be checked eagerly
    v = float(np.asarray(value))
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def unknown_name(kind: str, name: str, known: list[str]) -> ValueError:
    return ValueError(
        f"unknown {kind} {name!r}. Known {kind}s: {', '.join(sorted(known))}. "
        f"Pass one of these names, or a callable."
    )
