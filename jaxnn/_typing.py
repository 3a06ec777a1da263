"""The layer protocol, and the type aliases used across jaxnn.

A layer is a :class:`Layer`: a named record of pure functions, in the style of optax's
``GradientTransformation(init, update)`` and stax's ``(init_fun, apply_fun)``:

* ``init(key, input_shape) -> (params, state)``. ``input_shape`` includes the leading batch
  axes, e.g. ``(batch, features)``; a stateless layer returns ``state = {}``.
* ``apply(params, state, x, *, train, key=None, **keywords) -> (y, new_state)``.
* ``vjp(params, state, x, *, train, key=None, **keywords) -> (y, new_state, backward)`` with
  the hand-derived ``backward(dy) -> (dparams, dx)``: the shape of ``jax.vjp``.

**The one rule for** ``train``: it is keyword-only and required, in every ``apply`` and
``vjp`` and in every function that runs a network (``backprop``, ``value_and_grad``'s
function, ``intermediates``). A mode that changes the computation (batch vs running
statistics, dropping units or not) is never a silent default.

``key`` is keyword-only: a PRNG key for the layers that draw randomness in training
(``Layer.stochastic``); composition splits it, one key per stochastic layer. ``keywords``
names the layer-specific keyword arrays that ``apply`` and ``vjp`` accept (BatchNorm's
``mask``); a composition passes each one to the layers that name it.

**The backward is a value.** A ``backward`` is a ``jax.tree_util.Partial``, a pytree whose
leaves are the saved arrays (the residuals), so it can be returned from ``jit`` and be the
residual of a ``jax.custom_vjp``. Static configuration (axes, dtypes, flags) must not be a
leaf: :func:`bind_backward` is the one way every layer builds its backward, with the static
values bound into the Partial's function, which compares by value (so equal configurations
give equal tree structures and ``jit`` does not retrace).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
from jax.tree_util import Partial
from jax.typing import ArrayLike

Array = jax.Array
PRNGKey = jax.Array
Shape = Sequence[int]
Params = Any  # a pytree of arrays (nested dicts with named leaves)
State = Any  # a pytree of non-trainable arrays (e.g. BatchNorm running statistics)
Grads = Any  # a pytree with the structure of Params

__all__ = [
    "ApplyFn",
    "Array",
    "ArrayLike",
    "Backward",
    "Grads",
    "InitFn",
    "Layer",
    "PRNGKey",
    "Params",
    "Shape",
    "State",
    "VjpFn",
    "bind_backward",
]


class InitFn(Protocol):
    """``init(key, input_shape) -> (params, state)``."""

    def __call__(self, key: PRNGKey | None, input_shape: Shape, /) -> tuple[Params, State]: ...


class Backward(Protocol):
    """``backward(dy) -> (dparams, dx)``: the hand-derived vector-Jacobian product."""

    def __call__(self, dy: Array, /) -> tuple[Grads, Array]: ...


class ApplyFn(Protocol):
    """``apply(params, state, x, *, train, key=None, **keywords) -> (y, new_state)``."""

    def __call__(
        self,
        params: Params,
        state: State,
        x: ArrayLike,
        /,
        *,
        train: bool,
        key: PRNGKey | None = None,
        **keywords: Any,
    ) -> tuple[Array, State]: ...


class VjpFn(Protocol):
    """``vjp(params, state, x, *, train, key=None, **keywords) -> (y, new_state, backward)``."""

    def __call__(
        self,
        params: Params,
        state: State,
        x: ArrayLike,
        /,
        *,
        train: bool,
        key: PRNGKey | None = None,
        **keywords: Any,
    ) -> tuple[Array, State, Backward]: ...


class Layer(NamedTuple):
    """A layer: a named record of pure functions (see the module docstring).

    Attributes:
      name: used in error messages and, inside a composition, in its params' keys.
      init, apply, vjp: the protocol's three functions.
      keywords: the layer-specific keyword arrays ``apply`` and ``vjp`` accept
        (BatchNorm: ``("mask",)``).
      stochastic: whether ``apply(..., train=True)`` needs a ``key``.
      children: the layers of a composition, in order (empty for a leaf layer).
    """

    name: str
    init: InitFn
    apply: ApplyFn
    vjp: VjpFn
    keywords: tuple[str, ...] = ()
    stochastic: bool = False
    children: tuple[Layer, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Bound:
    """``fn`` with static keyword arguments bound; equal (and hashed) by value."""

    fn: Callable[..., Any]
    static: tuple[tuple[str, Hashable], ...]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args, **dict(self.static))


def bind_backward(fn: Callable[..., Any], *residuals: Any, **static: Hashable) -> Backward:
    """A backward as a pytree: ``dy -> fn(*residuals, dy, **static)``.

    ``residuals`` (arrays, or pytrees of them) become the leaves; ``static`` (axes, dtypes,
    flags: hashable values) is bound into the function, never a leaf. ``fn`` should be a
    module-level function so that two backwards of the same configuration have equal tree
    structures.

    Example (dense: ``dw = xᵀ dy``, ``dx = dy wᵀ``)::

        def _dense_backward(x, w, dy, *, use_bias):
            ...
        backward = bind_backward(_dense_backward, x, w, use_bias=True)
        dparams, dx = backward(dy)
    """
    return Partial(_Bound(fn, tuple(sorted(static.items()))), *residuals)
