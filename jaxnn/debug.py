"""The checking mode: run-time conditions inside ``jit`` become errors.

Inside ``jit`` jaxnn sees shapes but not values, so a value it would refuse when concrete
(an integer label outside ``[0, classes)``, a NaN input, a learning rate that is NaN or not
positive, a BatchNorm mask that selects fewer than two examples) cannot raise by default.
What happens then is fixed and the same on both gradient paths (``grad="autodiff"`` and
``grad="manual"``):

* an integer label outside ``[0, classes)`` makes that example's loss term NaN and its
  gradient row NaN (never silently another class, never silently dropped);
* NaN or infinite inputs propagate to the loss and the gradients;
* soft labels that are not probability vectors, and BCE targets outside ``[0, 1]``, enter the
  formulas as given (the hand gradients are the exact derivatives of those formulas);
* a learning rate is applied as given (NaN makes the parameters NaN, a negative one ascends).

Every such condition is also stated with :func:`jax.experimental.checkify.debug_check` when the
function is traced in the checking mode; outside it nothing is compiled for it and a call
keeps JAX's fast dispatch path. :func:`checked` runs a function with those checks on: the first
failed condition raises a :class:`jax.experimental.checkify.JaxRuntimeError` whose message
names it::

    step = jaxnn.make_train_step(net, "softmax_cross_entropy_with_integer_labels", opt)
    checked_step = jaxnn.debug.checked(step)
    ts, loss = checked_step(ts, x, labels)   # raises if a label is out of range

It is ``checkify.checkify(fn, errors=checkify.user_checks)`` under ``jit``, traced inside
:func:`mode`, then ``throw``; pass ``errors`` for more (e.g. ``checkify.nan_checks`` to find the
first NaN). To compose ``checkify`` yourself, trace and call inside ``with
jaxnn.debug.mode():``; outside it jaxnn states no conditions.
A checked function compiles separately from the unchecked one and runs slower (every
condition is evaluated): use it to debug, not in production loops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify

from jaxnn._checks import CHECKING

__all__ = ["ERRORS", "checked", "mode"]

# The conditions jaxnn states (checkify.debug_check) are user checks.
ERRORS = checkify.user_checks


def mode() -> Any:
    """A context in which jaxnn's functions are traced with their run-time conditions.

    ``jax.jit`` caches the traces made inside it apart from those made outside (it is a
    ``jax.make_user_context`` value), so a function already compiled without its checks is
    traced again with them. :func:`checked` uses it; use it to compose ``checkify`` yourself::

        with jaxnn.debug.mode():
            err, out = jax.jit(checkify.checkify(step, errors=checkify.user_checks))(ts, x, y)
        err.throw()
    """
    return CHECKING(True)


def checked(fn: Callable[..., Any], *, errors: Any = ERRORS) -> Callable[..., Any]:
    """``fn`` (any function of arrays, jitted or not) with jaxnn's run-time checks on.

    Args:
      fn: the function to run checked: a train step, ``value_and_grad``'s function, a loss.
      errors: the ``checkify`` error set (default: the conditions jaxnn states; add
        ``checkify.nan_checks``, ``checkify.index_checks`` ... as you need).

    Returns:
      A jitted function with ``fn``'s signature and results; it raises
      :class:`jax.experimental.checkify.JaxRuntimeError` when a condition fails.
    """
    if not callable(fn):
        raise TypeError(f"checked needs a function to run, got {type(fn).__name__}.")
    compiled: dict[tuple[tuple[str, Any], ...], Callable[..., Any]] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Python flags (train=True, a mode name) select the computation: static, as in jit.
        static = tuple(sorted((k, v) for k, v in kwargs.items() if _is_static(v)))
        dynamic = {k: v for k, v in kwargs.items() if not _is_static(v)}
        if static not in compiled:
            bound = functools.partial(fn, **dict(static))
            compiled[static] = jax.jit(checkify.checkify(bound, errors=errors))
        with mode():
            err, out = compiled[static](*args, **dynamic)
        err.throw()
        return out

    return wrapper


def _is_static(value: Any) -> bool:
    return value is None or isinstance(value, bool | str)
