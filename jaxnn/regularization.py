"""Weight penalties, L2 and L1, each with its hand-derived gradient.

A penalty is added to the data loss: ``L_total(params) = L(params) + P(params)``. By default
it applies to the **kernels** only (the leaves named ``"w"``, dense layers' weights), not to
biases or BatchNorm's ``gamma``/``beta``: those set offsets and scales, and shrinking them
towards 0 only hampers the fit (Goodfellow et al., *Deep Learning*, §7.1). A selector
``where(path, leaf) -> bool`` (paths as in ``jax.tree_util.tree_map_with_path``) changes it.

* :func:`l2` — ``P = (scale / 2) Σ w²``, ``∂P/∂w = scale · w``. With the ½, ``scale`` is the
  ``weight_decay`` of PyTorch's SGD and of ``optax.add_decayed_weights``: under plain SGD,
  ``w ← w - η (∂L/∂w + scale · w)`` either way. (Keras's ``l2(l)`` is ``l Σ w²``, i.e.
  ``scale = 2 l``.)
* :func:`l1` — ``P = scale Σ |w|``, subgradient ``scale · sign(w)``, taking ``sign(0) = 0``
  (the subgradient of least norm). The forward writes ``|w|`` as ``w · sign(w)`` so that
  ``jax.grad`` takes the same subgradient (``jax.grad`` of ``jnp.abs`` takes 1 at 0).

**L2 is not weight decay under adaptive optimizers.** With plain SGD, adding ``scale · w`` to
the gradient and decaying the weights by ``η · scale · w`` after the step are the same update.
Under Adam the L2 gradient is divided by ``√v`` like the rest, so heavily-updated weights are
barely regularised; decoupled weight decay (Loshchilov & Hutter, 2019) — ``optax.adamw``, or
``optax.add_decayed_weights`` chained before any optimizer — decays every weight by the same
``η · scale``. Use the penalty for the L2 *objective*, the optax transform for *decay*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn._checks import ensure_nonnegative
from jaxnn._typing import Array, Grads, Params

__all__ = ["PENALTIES", "Penalty", "Selector", "combine", "kernels", "l1", "l2"]

Selector = Callable[[tuple[Any, ...], Array], bool]


class Penalty(NamedTuple):
    """A penalty ``fn(params) -> scalar`` and its hand-derived gradient ``grad(params)``."""

    name: str
    fn: Callable[[Params], Array]
    grad: Callable[[Params], Grads]


def kernels(path: tuple[Any, ...], leaf: Array) -> bool:
    """The default selector: leaves named ``"w"`` (kernels), not biases or gamma/beta."""
    del leaf
    last = path[-1] if path else None
    return getattr(last, "key", None) == "w"


def _selection(params: Params, where: Selector, name: str) -> Any:
    """A pytree of Python bools: which leaves the penalty applies to (a static fact)."""
    chosen = jax.tree_util.tree_map_with_path(lambda p, leaf: bool(where(p, leaf)), params)
    if not any(jax.tree.leaves(chosen)):
        raise ValueError(
            f"{name}: the selector picks no parameter, so the penalty would be 0. The default "
            f"selects kernels, the leaves named 'w' (dense layers); pass where=lambda path, "
            f"leaf: ... to choose others."
        )
    return chosen


def _penalty(name: str, scale: float, where: Selector, value, derivative) -> Penalty:
    def fn(params: Params) -> Array:
        chosen = _selection(params, where, name)
        terms = [
            jnp.sum(value(leaf))
            for leaf, c in zip(jax.tree.leaves(params), jax.tree.leaves(chosen), strict=True)
            if c
        ]
        return scale * sum(terms[1:], terms[0])

    def grad(params: Params) -> Grads:
        chosen = _selection(params, where, name)
        return jax.tree.map(
            lambda leaf, c: scale * derivative(leaf) if c else jnp.zeros_like(leaf),
            params,
            chosen,
        )

    return Penalty(name, fn, grad)


def l2(scale: float, *, where: Selector = kernels) -> Penalty:
    """``P = (scale / 2) Σ w²`` over the selected leaves; ``∂P/∂w = scale · w``.

    Args:
      scale: ``>= 0``; equal to the ``weight_decay`` of decoupled decay under plain SGD.
      where: which leaves are penalised (default: :func:`kernels`).
    """
    scale = ensure_nonnegative(scale, "l2: scale")
    return _penalty("l2", scale, where, lambda w: 0.5 * w * w, lambda w: w)


def l1(scale: float, *, where: Selector = kernels) -> Penalty:
    """``P = scale Σ |w|`` over the selected leaves; ``∂P/∂w = scale · sign(w)``, ``sign(0) = 0``.

    Args:
      scale: ``>= 0``.
      where: which leaves are penalised (default: :func:`kernels`).
    """
    scale = ensure_nonnegative(scale, "l1: scale")
    return _penalty("l1", scale, where, lambda w: w * jnp.sign(w), jnp.sign)


def combine(*penalties: Penalty) -> Penalty:
    """The sum of penalties (e.g. ``combine(l1(a), l2(b))``, the elastic net)."""
    if not penalties or not all(isinstance(p, Penalty) for p in penalties):
        raise TypeError("combine takes one or more Penalty values (l1(...), l2(...)).")

    def fn(params: Params) -> Array:
        values = [p.fn(params) for p in penalties]
        return sum(values[1:], values[0])

    def grad(params: Params) -> Grads:
        return jax.tree.map(lambda *g: sum(g[1:], g[0]), *(p.grad(params) for p in penalties))

    return Penalty("+".join(p.name for p in penalties), fn, grad)


PENALTIES: dict[str, Callable[..., Penalty]] = {"l1": l1, "l2": l2}
