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

**The backward is validated** where it is called (``serial``'s loop,
:func:`jaxnn.backprop.backprop`, :func:`jaxnn.backprop.manual`,
:func:`jaxnn.gradcheck.check_layer`): :func:`backward_spec` refuses a backward that is not a
``Partial`` and records, at trace time, what it must return; :func:`check_cotangents` refuses a
result that is not ``(dparams, dx)`` with ``dparams`` of the params' tree structure and leaf
shapes and ``dx`` of ``x``'s shape. Each error names the layer. Structures and shapes are
static, so the checks cost nothing in the compiled computation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
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
    "BackwardSpec",
    "Grads",
    "InitFn",
    "Layer",
    "PRNGKey",
    "Params",
    "Shape",
    "State",
    "VjpFn",
    "backward_spec",
    "bind_backward",
    "check_cotangents",
    "validated",
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
      integer_input: whether its input holds integers (an embedding's token indices), not
        floats: a composition traces its shapes from an integer input then.
    """

    name: str
    init: InitFn
    apply: ApplyFn
    vjp: VjpFn
    keywords: tuple[str, ...] = ()
    stochastic: bool = False
    children: tuple[Layer, ...] = ()
    integer_input: bool = False


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


# ----------------------------------------------------------------------------- validation


class BackwardSpec(NamedTuple):
    """What a layer's ``backward(dy)`` must return, fixed when its ``vjp`` is traced.

    Hashable (static configuration of a :func:`bind_backward`): equal layers give equal specs.
    """

    layer: str  # how errors name the layer, e.g. "'dense'" or "'dense_0' in 'mlp'"
    params: jax.tree_util.PyTreeDef  # dparams' tree structure: the params'
    param_shapes: tuple[tuple[int, ...], ...]  # dparams' leaf shapes, in leaf order
    x_shape: tuple[int, ...]  # dx's shape: the input's
    x_dtype: np.dtype | None  # dx's dtype, or None where it is not compared


_USE_BIND_BACKWARD = (
    "Build it with jaxnn.bind_backward(fn, *residuals, **static), fn a module-level "
    "fn(*residuals, dy, **static) -> (dparams, dx)."
)


def backward_spec(
    layer: str, backward: Any, params: Params, x: ArrayLike, *, check_dtype: bool = False
) -> BackwardSpec:
    """Refuse a ``backward`` that is not a ``Partial``; what its result must be.

    Args:
      layer: the layer as errors name it (``repr(layer.name)``).
      backward: what the layer's ``vjp`` returned as its backward.
      params, x: the params and input the ``vjp`` was called with.
      check_dtype: compare ``dx``'s dtype with ``x``'s too. Off inside networks: a layer may
        hand back ``dx`` in the dtype its input was promoted to (a float32 input to float64
        params), which the chain rule accepts.

    Raises:
      TypeError: ``backward`` is not a ``jax.tree_util.Partial`` (a plain function or lambda
        cannot cross ``jit`` nor be a ``jax.custom_vjp`` residual: "not a valid JAX type").
    """
    if not isinstance(backward, Partial):
        raise TypeError(
            f"layer {layer}: vjp returned a backward of type {type(backward).__name__}, but the "
            f"layer protocol needs a jax.tree_util.Partial (a pytree of the saved residuals, so "
            f"that it can cross jit and be the residual of jax.custom_vjp; a plain function "
            f"fails there with 'is not a valid JAX type'). {_USE_BIND_BACKWARD}"
        )
    leaves, treedef = jax.tree.flatten(params)
    return BackwardSpec(
        layer,
        treedef,
        tuple(tuple(np.shape(leaf)) for leaf in leaves),
        tuple(np.shape(x)),
        np.dtype(jnp.result_type(x)) if check_dtype else None,
    )


def _what(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__} of structure {jax.tree.structure(value)}"


def _cotangent_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of an input's gradient: its own, or ``float0`` for an integer or boolean input
    (as ``jax.vjp`` returns: such an input has no tangent space)."""
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.dtype(bool):
        return np.dtype(jax.dtypes.float0)
    return dtype


def check_cotangents(spec: BackwardSpec, result: Any) -> tuple[Grads, Array]:
    """``result`` as ``(dparams, dx)``, refused unless it has the structure ``spec`` names.

    Raises:
      TypeError: ``result`` is not a pair; ``dx`` is not an array.
      ValueError: ``dparams`` has not the params' tree structure or leaf shapes (a swapped
        ``(dx, dparams)`` lands here, and the message says so); ``dx`` has not ``x``'s shape
        (or dtype, where ``spec`` names one).
    """
    where = f"layer {spec.layer}: backward(dy)"
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise TypeError(
            f"{where} must return the pair (dparams, dx), the shape of jax.vjp's backward; got "
            f"{_what(result)}. {_USE_BIND_BACKWARD}"
        )
    dparams, dx = result
    expected = (
        "an empty dict {} (the layer has no params)"
        if spec.params == jax.tree.structure({})
        else f"the params' structure {spec.params}"
    )
    if jax.tree.structure(dparams) != spec.params:
        swapped = hasattr(dparams, "shape") and tuple(dparams.shape) == spec.x_shape
        hint = (
            " It looks like (dx, dparams): return (dparams, dx), params first, as jax.vjp "
            "returns the cotangents in the order of the arguments."
            if swapped
            else ""
        )
        raise ValueError(
            f"{where} returned dparams as {_what(dparams)}; expected {expected}, one gradient "
            f"per parameter.{hint}"
        )
    shapes = tuple(tuple(np.shape(g)) for g in jax.tree.leaves(dparams))
    if shapes != spec.param_shapes:
        raise ValueError(
            f"{where} returned dparams with leaf shapes {list(shapes)}; the params have "
            f"{list(spec.param_shapes)} (each gradient has its parameter's shape)."
        )
    if not (hasattr(dx, "shape") and hasattr(dx, "dtype")):
        raise TypeError(
            f"{where} returned dx as {_what(dx)}; expected an array of the input's shape "
            f"{spec.x_shape}: the gradient w.r.t. the layer's input."
        )
    if tuple(dx.shape) != spec.x_shape:
        raise ValueError(
            f"{where} returned dx of shape {tuple(dx.shape)}; the input x has shape "
            f"{spec.x_shape} (dx is the gradient w.r.t. x: sum over the axes the forward "
            f"broadcast)."
        )
    if spec.x_dtype is not None and np.dtype(dx.dtype) != _cotangent_dtype(spec.x_dtype):
        raise ValueError(
            f"{where} returned dx of dtype {dx.dtype}; the input x has dtype {spec.x_dtype}, "
            f"so dx must be {_cotangent_dtype(spec.x_dtype)} (the input's dtype, float0 for an "
            f"integer input, as jax.vjp returns)."
        )
    return dparams, dx


def _validated_backward(
    backward: Backward, dy: Array, *, spec: BackwardSpec
) -> tuple[Grads, Array]:
    return check_cotangents(spec, backward(dy))


def validated(layer: str, backward: Any, params: Params, x: ArrayLike, **options: Any) -> Backward:
    """``backward`` (refused unless a ``Partial``), whose result is checked when it is called.

    A ``Partial`` again (its leaves are ``backward``'s), so it can cross ``jit`` and be a
    ``jax.custom_vjp`` residual. ``options``: :func:`backward_spec`'s ``check_dtype``.
    """
    spec = backward_spec(layer, backward, params, x, **options)
    return bind_backward(_validated_backward, backward, spec=spec)
