"""Validation: eager errors for static facts, checking-mode conditions for traced values.

Shapes, ranks, dtypes, empty batches, hyperparameters and names are known when a function is
traced: the ``ensure_*`` functions refuse them there with a ``TypeError`` or ``ValueError``.
Every message says what was expected, what came, and what to do about it.

Values inside ``jit`` (labels out of range, NaN inputs, a traced learning rate) cannot raise.
:func:`require` states such a condition with :func:`jax.experimental.checkify.debug_check`
when the computation is traced in the checking mode (:func:`jaxnn.debug.checked`, which
sets :data:`CHECKING`), and an error is raised when it fails. Outside it ``require`` puts
nothing in the computation: a ``debug_check`` is an effect, and a jitted function with an
effect leaves JAX's C++ dispatch path (a call then costs about ten times more on the host).
:data:`CHECKING` is a ``jax.make_user_context`` value, part of ``jit``'s cache key, so a
function traced once unchecked is traced again, with its checks, in the checking mode.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# True while a function is traced in the checking mode (jaxnn.debug.checked); part of the
# jit cache key, so the checked and the unchecked traces of one function are cached apart.
CHECKING = jax.make_user_context(False)


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


def ensure_nonnegative(value: Any, name: str) -> float:
    """Validate a finite scalar hyperparameter ``>= 0`` (a Python or NumPy number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


def ensure_input_shape(input_shape: Any, who: str) -> tuple[int, ...]:
    """``input_shape`` as a tuple of non-negative ints (leading batch axes included)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or not all(isinstance(d, int | np.integer) and d >= 0 for d in shape):
        raise TypeError(
            f"{who}: input_shape must be a tuple of ints including the batch axis, e.g. "
            f"(batch, features) = (32, 784), got {input_shape!r}."
        )
    return tuple(int(d) for d in shape)


def unknown_name(kind: str, name: str, known: list[str], plural: str | None = None) -> ValueError:
    return ValueError(
        f"unknown {kind} {name!r}. Known {plural or kind + 's'}: {', '.join(sorted(known))}."
    )


def is_traced(x: Any) -> bool:
    """Whether ``x`` is abstract (inside ``jit``, ``grad``, ``vmap``): no value to inspect."""
    return isinstance(x, jax.core.Tracer)


def require(pred: Any, message: str, **values: Any) -> None:
    """A condition on run-time values, checked in the checking mode only.

    ``message`` is formatted with ``values`` (``{name}`` fields, evaluated on the device)
    when the condition fails under :func:`jaxnn.debug.checked`; outside it this adds
    nothing to the computation. Callers state it for traced values only: concrete values get
    an eager error instead.
    """
    if CHECKING.value:
        checkify.debug_check(jnp.all(pred), message, **values)


def ensure_nonempty(x: Any, name: str, who: str, why: str) -> None:
    """Refuse an array with no elements, where a mean over it is undefined."""
    if jnp.size(x) == 0:
        raise ValueError(
            f"{who}: {name} is empty (shape {tuple(jnp.shape(x))}); {why}. Pass at least one "
            f"example."
        )


def all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating leaf of ``tree`` is finite (for :func:`require`)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if is_floating(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def ensure_float_dtype(dtype: Any, name: str, hint: str = "") -> np.dtype | None:
    """``dtype`` as a NumPy dtype, refusing one that is not floating-point, and float16
    (:func:`refuse_float16`); None stays None."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        got = f"dtype {dt}" if dt is not None else f"{type(dtype).__name__} {dtype!r}"
        raise TypeError(
            f"{name} must be a floating-point dtype (jnp.bfloat16, jnp.float32 or jnp.float64) "
            f"or None, got {got}.{' ' + hint if hint else ''}"
        )
    refuse_float16(dt, name)
    return dt


def refuse_float16(dtype: Any, name: str) -> None:
    """Refuse float16 (IEEE half precision) with the reason; any other dtype passes.

    float16 has 5 exponent bits: its largest finite value is 65504 and its smallest normal
    ``2⁻¹⁴ ≈ 6.1e-5`` (subnormals reach ``6e-8``), so activations overflow to inf and small
    gradients, and Adam's ``eps = 1e-8``, underflow to 0. Training in it needs loss scaling
    (Micikevicius et al., 2018), which jaxnn does not do. bfloat16 keeps float32's 8
    exponent bits (range ``1e-38`` to ``3e38``) and needs none.

    Args:
      dtype: a dtype (``jnp.float16``, ``"float16"``, ``x.dtype``) or an array, whose dtype is
        read; what ``jnp.dtype`` cannot read passes (the caller's own check reports it).
      name: what ``dtype`` is, for the message (``"dense: param_dtype"``).

    Raises:
      TypeError: ``dtype`` is float16, or an array of float16.
    """
    if isinstance(getattr(dtype, "dtype", None), np.dtype):
        dtype = dtype.dtype  # an array (a scalar type's .dtype is a descriptor, not a dtype)
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return
    if dt == jnp.float16:
        raise TypeError(
            f"{name} is float16, which jaxnn refuses: float16's largest finite value is 65504 "
            f"and its smallest normal 6.1e-5, so activations overflow to inf and small "
            f"gradients (and Adam's eps=1e-8) underflow to 0 without loss scaling, which jaxnn "
            f"does not do. Use jnp.bfloat16 (float32's exponent range) for mixed precision, "
            f"jnp.float32 or jnp.float64 otherwise."
        )


# The fix for a param_dtype that is not floating (dense, batchnorm, mlp).
PARAM_DTYPE_HINT = (
    "Params are what the gradients update: use jnp.float32 (the master weights under mixed "
    "precision) or jnp.float64."
)
