"""Type aliases used across jaxnn, kept in one place."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.typing import ArrayLike

Array = jax.Array
PRNGKey = jax.Array
Shape = Sequence[int]
Params = Any  # a pytree of arrays (nested dicts with named leaves)
State = Any  # a pytree of non-trainable arrays (e.g. BatchNorm running statistics)
Grads = Any  # a pytree with the structure of Params
Backward = Callable[[Array], Any]

__all__ = ["Array", "ArrayLike", "Backward", "Grads", "PRNGKey", "Params", "Shape", "State"]
