"""The gradient checker: hand-derived gradient vs ``jax.grad`` vs central differences.

Point it at any scalar function of pytrees::

    report = check_gradients(f, params, x, grad_fn=my_hand_derived_grad)

Three gradients are compared, leaf by leaf, in float64:

* **hand-derived** — ``grad_fn(*args)``, the chain rule written out (optional);
* **autodiff** — ``jax.grad(f, argnums)(*args)``;
* **finite differences** — central differences on sampled coordinates of every leaf, plus one
  directional derivative along a random direction per leaf, which touches every element.

Tolerances, and why:

* hand-derived vs autodiff: both evaluate the same formula in float64 with a different order of
  rounding, so they differ by a few ulps times the condition of the computation. The error is
  measured norm-wise over the whole gradient: ``max|a - b| / max|b|``, the maximum taken over
  every element of every leaf. Elementwise relative error is meaningless where a true
  derivative is near zero, and a per-leaf one fails honest code whenever a leaf is small by
  cancellation (behind a log-softmax, say, where ``dx = dy - p Σ dy`` subtracts O(1)
  cotangents to leave 1e-8: its rounding is an ulp of the cotangents, not of the result).
  It must be ``<= rtol`` (default :data:`RTOL` = 1e-10: about 5e5 ulps of headroom over
  float64's 2.2e-16, room for a condition number of 1e5). The report lists each leaf's worst element.
* against finite differences: the central difference ``D(h) = (f(x+h) - f(x-h)) / 2h`` has
  truncation error ``~ h**2 f'''/6`` and rounding error ``~ eps |f| / h``. The step
  ``h = eps**(1/3) * max(1, |x_i|)`` (about 6e-6 for float64) balances the two. The truncation
  error is *measured* rather than guessed: ``D(h) - D(2h) = -3 c h**2 + O(h**4)``, so
  ``|D(h) - D(2h)|`` bounds three times the truncation error of ``D(h)``. The rounding noise
  ``sigma`` of ``f`` is measured too, from the fourth differences of ``f`` at ``x + j h``,
  ``j = -4..4`` (Moré & Wild, 2011: their mean square is ``70 sigma²``), since ``eps |f|``
  badly underestimates it when ``f`` sums terms that cancel; it enters as ``4 sigma / h``.
  Add the rounding of the perturbed points (``eps |x_j| |g_j| / h``), double the sum, and
  add a floor of 16 ulps of the derivative and 64 ulps of the gradient's largest entry (the
  computed gradient's own rounding: where a derivative is 0 by cancellation, as for a bias
  feeding BatchNorm, reverse mode returns a few ulps, not 0): that is the bound each
  coordinate must meet.
  Across a kink (relu at 0) the two steps disagree and the bound widens: finite differences
  cannot judge there, and the bound says so instead of failing honest code.

Float32 input is promoted to float64 for the check (inside ``jax.enable_x64``), and the report
says so: a float32 central difference has only ~3 correct digits and would fail honest code.

**A layer** is checked in one line by :func:`check_layer`: its hand backward (``vjp``'s
``backward``) against ``jax.grad`` of its ``apply`` and central differences, w.r.t. its params
and its input, in each mode (``train=True`` and ``False``), the backward's structure validated
on the way; an error names the layer, the mode and the leaf (``dx`` or ``dparams['w']``)::

    reports = check_layer(my_layer, (4, 8))                 # {"train": ..., "eval": ...}

The library's own components are audited by :mod:`jaxnn.audit` (``jaxnn gradcheck``), its
layers through :func:`layer_case`, the case :func:`check_layer` runs in each mode; a user adds
cases of their own with :func:`register` (``jaxnn gradcheck --import my_module``). This module
depends on nothing else in jaxnn but the layer protocol (:mod:`jaxnn._typing`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxnn._typing import (
    Array,
    ArrayLike,
    Layer,
    Params,
    PRNGKey,
    Shape,
    State,
    backward_spec,
    check_cotangents,
)

__all__ = [
    "RTOL",
    "GradCase",
    "GradReport",
    "GradientMismatchError",
    "LeafReport",
    "PairResult",
    "check_case",
    "check_gradients",
    "check_layer",
    "layer_case",
    "register",
    "registered",
    "unregister",
]

# Hand-derived vs jax.grad: the same formula with a different order of rounding, a few ulps of
# float64 (2.2e-16) times the condition of the computation. 1e-10 leaves ~5e5 ulps of headroom
# (a condition number up to ~1e5) and still fails any wrong formula, whose error is O(1).
RTOL = 1e-10

HAND = "hand-derived"
AUTO = "jax.grad"
FD = "finite differences"

_EPS = float(np.finfo(np.float64).eps)
_FD_ROUNDING_ULPS = 16.0  # floor: a few ulps of the derivative itself
_FD_NOISE_SIGMAS = 4.0  # the rounding noise of D(h) has std sigma / (sqrt(2) h); allow ~5.7 std
_FD_SAFETY = 2.0
# The computed gradient's own rounding: where a true derivative is 0 by cancellation (the bias
# of a dense layer feeding BatchNorm), reverse mode returns a few ulps of the gradient's largest
# entries, not 0, while the finite difference is exactly 0.
_FD_GRADIENT_ULPS = 64.0


class GradientMismatchError(AssertionError):
    """Two gradients of the same function disagree beyond their derived tolerance."""


class PairResult(NamedTuple):
    """The comparison of two gradients of one leaf."""

    pair: tuple[str, str]  # which two, in the order (a, b)
    max_abs_err: float  # max |a - b| over the compared elements
    max_rel_err: float  # max_abs_err / the scale (whole gradient vs autodiff, leaf vs FD)
    worst_index: tuple[int, ...]  # index of the element with the largest error (or ratio)
    value_a: float  # a at worst_index
    value_b: float  # b at worst_index
    tolerance: float  # the bound the worst element had to meet (absolute)
    ok: bool


class LeafReport(NamedTuple):
    path: str  # e.g. "args[0]['w']"
    shape: tuple[int, ...]
    pairs: tuple[PairResult, ...]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)


@dataclasses.dataclass(frozen=True)
class GradReport:
    """Per-leaf results of :func:`check_gradients`."""

    leaves: tuple[LeafReport, ...]
    rtol: float
    notes: tuple[str, ...] = ()
    subject: str = ""  # what was checked, e.g. "layer 'dense', train=True" ("" for a function)

    @property
    def ok(self) -> bool:
        return all(leaf.ok for leaf in self.leaves)

    @property
    def failures(self) -> list[tuple[LeafReport, PairResult]]:
        return [(leaf, p) for leaf in self.leaves for p in leaf.pairs if not p.ok]

    def mismatch(self) -> str:
        """The first failure, named (leaf, index, values, bound), and the table; "" if ok."""
        if self.ok:
            return ""
        leaf, p = self.failures[0]
        where = f"{self.subject}: " if self.subject else ""
        return f"{where}{_describe(leaf, p, self.rtol)}\n{self.table()}"

    def max_rel_err(self, pair: tuple[str, str]) -> float:
        errs = [p.max_rel_err for leaf in self.leaves for p in leaf.pairs if p.pair == pair]
        return max(errs) if errs else float("nan")

    def table(self) -> str:
        rows = [("leaf", "shape", "pair", "max abs err", "max rel err", "worst index", "ok")]
        for leaf in self.leaves:
            for p in leaf.pairs:
                rows.append(
                    (
                        leaf.path,
                        str(leaf.shape),
                        f"{p.pair[0]} vs {p.pair[1]}",
                        f"{p.max_abs_err:.3e}",
                        f"{p.max_rel_err:.3e}",
                        str(p.worst_index),
                        "ok" if p.ok else "MISMATCH",
                    )
                )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join([*self.notes, *lines])

    def __str__(self) -> str:
        return self.table()


def _describe(leaf: LeafReport, p: PairResult, rtol: float) -> str:
    a, b = p.pair
    if b == FD:
        why = f"finite-difference bound {p.tolerance:.3e} (derived from step size and rounding)"
    else:
        why = (
            f"rtol {rtol:g} times the gradient's largest entry (relative error {p.max_rel_err:.3e})"
        )
    return (
        f"gradient mismatch at leaf {leaf.path} (shape {leaf.shape}), index {p.worst_index}: "
        f"{a} = {p.value_a!r}, {b} = {p.value_b!r}; |{a} - {b}| = {p.max_abs_err:.3e} "
        f"exceeds {why}."
    )


def _promote(tree: Any) -> tuple[Any, bool]:
    promoted = False

    def one(x: Any) -> Any:
        nonlocal promoted
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float64:
            promoted = True
            return jnp.asarray(np.asarray(x, np.float64))  # on the host: no compile per shape
        return x

    return jax.tree.map(one, tree), promoted


def _compare_exact(
    a: np.ndarray, b: np.ndarray, pair: tuple[str, str], rtol: float, scale: float
) -> PairResult:
    """``max|a - b| <= rtol * scale``, with ``scale`` the largest entry of the whole gradient."""
    diff = np.abs(a - b)
    if diff.size == 0:
        return PairResult(pair, 0.0, 0.0, (), float("nan"), float("nan"), 0.0, True)
    flat = int(np.argmax(np.where(np.isnan(diff), np.inf, diff)))
    idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    max_abs = float(diff.reshape(-1)[flat])
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    finite = bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    ok = finite and rel <= rtol
    return PairResult(pair, max_abs, rel, idx, float(a[idx]), float(b[idx]), rtol * scale, ok)


def _compare_fd(
    g: np.ndarray,  # [m] gradient at the sampled coordinates (or directional derivatives)
    d_h: np.ndarray,  # [m] central differences with step h
    bound: np.ndarray,  # [m] error bound of d_h
    indices: list[tuple[int, ...]],
    pair: tuple[str, str],
) -> PairResult:
    err = np.abs(g - d_h)
    ratio = np.where(np.isnan(err), np.inf, err / np.maximum(bound, np.finfo(np.float64).tiny))
    k = int(np.argmax(ratio))
    scale = max(float(np.max(np.abs(g))), float(np.max(np.abs(d_h))))
    max_abs = float(np.max(err))
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    ok = bool(np.all(np.isfinite(g)) and np.all(err <= bound))
    return PairResult(
        pair, max_abs, rel, indices[k], float(g[k]), float(d_h[k]), float(bound[k]), ok
    )


def check_gradients(
    f: Callable[..., Any],
    *args: Any,
    grad_fn: Callable[..., Any] | None = None,
    argnums: int | Sequence[int] = 0,
    rtol: float = RTOL,
    fd_samples: int = 16,
    key: PRNGKey | None = None,
    raise_on_mismatch: bool = True,
    names: Sequence[str] | None = None,
) -> GradReport:
    """Compare a hand-derived gradient, ``jax.grad`` and central finite differences.

    Args:
      f: a function of ``*args`` returning a real scalar. It must be traceable by JAX.
      *args: its arguments, pytrees of arrays. Floating leaves of the differentiated arguments
        are promoted to float64.
      grad_fn: optional hand-derived gradient with ``jax.grad(f, argnums)``'s signature and
        return structure. Without it, ``jax.grad`` is compared to finite differences only.
      argnums: which positional arguments to differentiate, as in ``jax.grad``.
      rtol: bound on ``max|hand - autodiff|`` relative to the largest entry of the whole
        gradient (norm-wise, over all leaves).
      fd_samples: coordinates of each leaf checked by central differences (all of them for a
        leaf with fewer elements); every element is also covered by one directional
        derivative per leaf.
      key: PRNG key choosing the sampled coordinates and directions (default ``key(0)``).
      raise_on_mismatch: raise :class:`GradientMismatchError` naming the first failing leaf
        (default), or only return the report.
      names: how the report names each differentiated argument, one per ``argnums`` (default
        ``args[i]``): ``names=("dparams", "dx")`` reports leaves ``dparams['w']`` and ``dx``.

    Returns:
      A :class:`GradReport` with one :class:`LeafReport` per leaf of the differentiated
      arguments and one :class:`PairResult` per pair of gradients compared.

    Raises:
      GradientMismatchError: a pair disagrees (unless ``raise_on_mismatch=False``).
      ValueError: ``f`` does not return a real scalar; ``rtol`` is not a positive finite
        number; ``argnums`` names an argument that is not there.
      TypeError: a differentiated argument has an integer, boolean or complex leaf;
        ``grad_fn`` does not return one gradient per differentiated argument.
    """
    _check_options(f, args, argnums, rtol, fd_samples)
    if key is None:
        key = jax.random.key(0)
    argnums_t = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    labels = _labels(names, argnums_t, len(args))
    _check_differentiable(args, argnums_t)
    with jax.enable_x64(True):
        args64, promoted = _promote(args)
        _check_scalar(f, args64)
        auto_t, hand_t = _gradients(f, args64, argnums, grad_fn)
        leaves = _leaf_reports(f, args64, labels, argnums_t, auto_t, hand_t, rtol, fd_samples, key)
    notes = (
        ("note: floating inputs were promoted to float64 for the check (a float32 central "
         "difference has about 3 correct digits).",)
        if promoted
        else ()
    )  # fmt: skip
    report = GradReport(tuple(leaves), rtol, notes)
    if raise_on_mismatch and not report.ok:
        raise GradientMismatchError(report.mismatch())
    return report


def _labels(names: Sequence[str] | None, argnums: tuple[int, ...], n_args: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"args[{a % n_args}]" for a in argnums)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a sequence of strings, one per argnums, got {names!r}.")
    if len(names) != len(argnums):
        raise ValueError(
            f"names has {len(names)} entries for {len(argnums)} differentiated argument(s) "
            f"(argnums={argnums}); give one name per argnums entry."
        )
    return tuple(names)


def _check_options(f: Any, args: tuple[Any, ...], argnums: Any, rtol: Any, fd_samples: Any) -> None:
    if not callable(f):
        raise TypeError(f"check_gradients needs a function f, got {type(f).__name__}.")
    if isinstance(rtol, bool) or not isinstance(rtol, int | float | np.floating | np.integer):
        raise TypeError(f"rtol must be a number, got {type(rtol).__name__} {rtol!r}.")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(
            f"rtol must be a positive finite number (default {RTOL:g}), got {rtol!r}: a NaN or "
            f"infinite tolerance would pass or fail every gradient."
        )
    if (
        isinstance(fd_samples, bool)
        or not isinstance(fd_samples, int | np.integer)
        or fd_samples < 1
    ):
        raise ValueError(f"fd_samples must be an int >= 1, got {fd_samples!r}.")
    nums = (argnums,) if isinstance(argnums, int | np.integer) else argnums
    try:
        nums = tuple(nums)
    except TypeError:
        nums = None
    if (
        not nums
        or not all(isinstance(a, int | np.integer) and not isinstance(a, bool) for a in nums)
        or len(set(nums)) != len(nums)
    ):
        raise TypeError(
            f"argnums must be an int or a non-empty sequence of distinct ints, as in jax.grad, "
            f"got {argnums!r}."
        )
    bad = [a for a in nums if not -len(args) <= a < len(args)]
    if bad:
        raise ValueError(
            f"argnums {argnums!r} names argument(s) {bad}, but f was given {len(args)} "
            f"argument(s). Pass the arguments after f: check_gradients(f, *args, ...)."
        )


def _check_differentiable(args: tuple[Any, ...], argnums: tuple[int, ...]) -> None:
    """Every leaf of a differentiated argument must be a real floating array."""
    for a in argnums:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[a])[0]:
            dtype = jnp.result_type(leaf)
            where = f"args[{a % len(args)}]{jax.tree_util.keystr(path)}"
            if jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(
                    f"check_gradients compares real gradients, but {where} is complex ({dtype}). "
                    f"Split it into real and imaginary parts (two float arguments) and check "
                    f"the real-valued function of both."
                )
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"{where} has dtype {dtype}: gradients are defined for floating arrays only. "
                    f"Convert it (jnp.asarray(x, jnp.float64)) or leave it out of argnums."
                )


def _check_scalar(f: Callable[..., Any], args: tuple[Any, ...]) -> None:
    out = jax.eval_shape(f, *args)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"check_gradients needs f to return a real scalar, got {out}. Reduce the output "
            f"(e.g. jnp.sum) or check one output at a time."
        )


def _gradients(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    argnums: int | Sequence[int],
    grad_fn: Callable[..., Any] | None,
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """``jax.grad`` and the hand-derived gradient, one tree per differentiated argument."""
    multiple = not isinstance(argnums, int)
    auto = jax.jit(jax.grad(f, argnums=argnums))(*args)
    auto_t = auto if multiple else (auto,)
    if grad_fn is None:
        return auto_t, None
    hand = grad_fn(*args)
    if multiple and not isinstance(hand, tuple | list):
        raise TypeError(
            f"grad_fn must return a tuple with one gradient per differentiated argument "
            f"(argnums={argnums}), as jax.grad(f, argnums) does; got {type(hand).__name__}."
        )
    hand_t = tuple(hand) if multiple else (hand,)
    if len(hand_t) != len(auto_t):
        raise ValueError(
            f"grad_fn returned {len(hand_t)} gradients for argnums={argnums}; expected "
            f"{len(auto_t)}, the structure jax.grad(f, argnums) returns."
        )
    argnums_t = (argnums,) if not multiple else tuple(argnums)
    for argnum, a, h in zip(argnums_t, auto_t, hand_t, strict=True):
        treedef, hand_struct = jax.tree.structure(a), jax.tree.structure(h)
        if hand_struct != treedef:
            raise ValueError(
                f"grad_fn's gradient for argument {argnum} has structure {hand_struct}, but the "
                f"argument (and jax.grad) has structure {treedef}."
            )
        for path, g_a, g_h in zip(
            (p for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]),
            jax.tree.leaves(a),
            jax.tree.leaves(h),
            strict=True,
        ):
            if np.shape(g_h) != np.shape(g_a):
                raise ValueError(
                    f"grad_fn's gradient for leaf args[{argnum}]{jax.tree_util.keystr(path)} "
                    f"has shape {np.shape(g_h)}; the leaf has shape {np.shape(g_a)}."
                )
    return auto_t, hand_t


def _leaf_reports(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    labels: tuple[str, ...],
    argnums: tuple[int, ...],
    auto_t: tuple[Any, ...],
    hand_t: tuple[Any, ...] | None,
    rtol: float,
    fd_samples: int,
    key: PRNGKey,
) -> list[LeafReport]:
    """Every leaf: hand-derived vs ``jax.grad``, and both vs central differences."""
    # The hand-vs-autodiff error is measured against the largest entry of the whole gradient
    # (every leaf of every differentiated argument).
    scale = max(
        (
            float(np.max(np.abs(np.asarray(g, np.float64)), initial=0.0))
            for t in (auto_t, hand_t or ())
            for g in jax.tree.leaves(t)
        ),
        default=0.0,
    )
    # Every leaf of every differentiated argument is probed in one compiled program.
    xs = [np.asarray(x, np.float64) for a in argnums for x in jax.tree.leaves(args[a])]
    plans: list[_FdPlan | None] = []
    for x in xs:
        key, sub = jax.random.split(key)
        plans.append(_fd_plan(x, fd_samples, sub) if x.size else None)
    values = _fd_values(f, args, argnums, plans) if any(plans) else plans
    names = [
        (f"{label}{jax.tree_util.keystr(path)}", g)
        for label, tree in zip(labels, auto_t, strict=True)
        for path, g in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    hands = [None] * len(names) if hand_t is None else jax.tree.leaves(hand_t)
    leaves = []
    for k, ((name, g_auto), g_hand) in enumerate(zip(names, hands, strict=True)):
        g_auto = np.asarray(g_auto, np.float64)
        pairs: list[PairResult] = []
        if g_hand is not None:
            g_hand = np.asarray(g_hand, np.float64)
            pairs.append(_compare_exact(g_hand, g_auto, (HAND, AUTO), rtol, scale))
        if plans[k] is not None:
            pairs.extend(_fd_compare(plans[k], values[k], xs[k], g_auto, g_hand, scale))
        leaves.append(LeafReport(name, tuple(g_auto.shape), tuple(pairs)))
    return leaves


class _FdPlan(NamedTuple):
    """Where one leaf is probed: sampled coordinates, one random unit direction, the steps."""

    flat_idx: np.ndarray  # [m] sampled coordinates of the flattened leaf
    direction: np.ndarray  # [size] random unit vector
    h: np.ndarray  # [m + 1] step per probe: the m coordinates, then the direction


def _fd_plan(x: np.ndarray, fd_samples: int, key: PRNGKey) -> _FdPlan:
    # Drawn on the host (numpy, seeded from the key): eager JAX ops would compile anew for
    # every leaf shape.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    if x.size <= fd_samples:
        flat_idx = np.arange(x.size)
    else:
        flat_idx = np.sort(rng.choice(x.size, fd_samples, replace=False))
    v = rng.standard_normal(x.size)
    v = v / np.linalg.norm(v)
    xf = x.reshape(-1)
    root = _EPS ** (1 / 3)
    h = np.concatenate(
        [root * np.maximum(1.0, np.abs(xf[flat_idx])), [root * max(1.0, float(np.max(np.abs(xf))))]]
    )
    return _FdPlan(flat_idx, v, h)


def _fd_values(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    argnums: tuple[int, ...],
    plans: list[_FdPlan | None],
) -> list[np.ndarray | None]:
    """``f`` at ``x + j h d``, ``j = -4..4``, for every probe of every differentiated leaf.

    One compiled program for all of them: the differentiated arguments are flattened into one
    vector ``θ``; a coordinate probe adds ``j h`` to one entry, a direction probe adds
    ``j h v`` with ``v`` zero outside its leaf. Probes run in a ``lax.map`` (one at a time:
    memory stays that of nine evaluations of ``f``), the nine steps of each in a ``vmap``.

    Args:
      plans: one per leaf, in the order of ``argnums`` and then of each argument's leaves
        (``None`` for an empty leaf).

    Returns:
      Per leaf, ``[m + 1, 9]`` values (``None`` for an empty leaf).
    """
    parts = [ravel_pytree(args[a]) for a in argnums]
    bounds = np.cumsum([0, *(int(flat.size) for flat, _ in parts)])
    theta = jnp.concatenate([flat for flat, _ in parts])
    sizes = [int(np.size(leaf)) for a in argnums for leaf in jax.tree.leaves(args[a])]
    offsets = np.cumsum([0, *sizes])
    used = [i for i, plan in enumerate(plans) if plan is not None]
    idx = np.concatenate([offsets[i] + plans[i].flat_idx for i in used])
    h_units = np.concatenate([plans[i].h[:-1] for i in used])
    dirs = np.zeros((len(used), theta.size))
    for row, i in enumerate(used):
        dirs[row, offsets[i] : offsets[i + 1]] = plans[i].direction
    h_dirs = np.asarray([plans[i].h[-1] for i in used])

    def f_flat(t: jax.Array) -> jax.Array:
        a = list(args)
        for p, argnum in enumerate(argnums):
            a[argnum] = parts[p][1](t[bounds[p] : bounds[p + 1]])
        return f(*a)

    @jax.jit
    def run(theta, idx, h_units, dirs, h_dirs):
        js = jnp.arange(-4, 5, dtype=theta.dtype)

        def unit(probe):
            i, hh = probe
            return jax.vmap(lambda j: f_flat(theta.at[i].add(j * hh)))(js)

        def direction(probe):
            v, hh = probe
            return jax.vmap(lambda j: f_flat(theta + (j * hh) * v))(js)

        return lax.map(unit, (idx, h_units)), lax.map(direction, (dirs, h_dirs))

    dt = theta.dtype
    v_units, v_dirs = run(
        theta,
        jnp.asarray(idx),
        jnp.asarray(h_units, dt),
        jnp.asarray(dirs, dt),
        jnp.asarray(h_dirs, dt),
    )
    v_units, v_dirs = np.asarray(v_units), np.asarray(v_dirs)
    out: list[np.ndarray | None] = [None] * len(plans)
    start = 0
    for row, i in enumerate(used):
        m = len(plans[i].flat_idx)
        out[i] = np.concatenate([v_units[start : start + m], v_dirs[row : row + 1]])
        start += m
    return out


def _fd_compare(
    plan: _FdPlan,
    values: np.ndarray,
    x: np.ndarray,
    g_auto: np.ndarray,
    g_hand: np.ndarray | None,
    scale: float,
) -> list[PairResult]:
    """Each gradient's projections on the probes against the central differences and their
    derived bound (module docstring)."""
    hn = plan.h
    d_h = (values[:, 5] - values[:, 3]) / (2 * hn)
    d_2h = (values[:, 6] - values[:, 2]) / (4 * hn)
    # Noise level of f (Moré & Wild, 2011): for independent rounding errors of std sigma,
    # E[(fourth difference)²] = 70 sigma², while the smooth part adds only h⁴ times the
    # fourth derivative.
    fourth = np.diff(values, n=4, axis=1)  # [m + 1, 5]
    sigma_dir = np.sqrt(np.mean(fourth**2, axis=1) / 70)
    sigma = np.maximum(sigma_dir, np.sqrt(np.mean(fourth**2) / 70))
    # Rounding of the perturbed points themselves: x_j + s d_j is off by up to eps |x_j| / 2,
    # which moves f by |g_j| eps |x_j| / 2 for every j the direction touches.
    g_ref = np.abs(g_auto.reshape(-1)) * np.abs(x.reshape(-1))
    touched = np.concatenate([g_ref[plan.flat_idx], [np.sum(g_ref[plan.direction != 0])]])
    representation = _EPS * touched / hn
    bound = _FD_SAFETY * (
        np.abs(d_h - d_2h) + _FD_NOISE_SIGMAS * sigma / hn + representation
    ) + _FD_ROUNDING_ULPS * _EPS * np.maximum(
        np.abs(d_h), _FD_GRADIENT_ULPS / _FD_ROUNDING_ULPS * scale
    )
    bound = np.where(np.isfinite(bound), bound, np.inf)

    indices = [tuple(int(i) for i in np.unravel_index(k, x.shape)) for k in plan.flat_idx]
    indices.append(("direction",))  # type: ignore[arg-type]
    results = []
    for name, g in ((HAND, g_hand), (AUTO, g_auto)):
        if g is None:
            continue
        gf = g.reshape(-1)
        projected = np.concatenate([gf[plan.flat_idx], [gf @ plan.direction]])
        results.append(_compare_fd(projected, d_h, bound, indices, (name, FD)))
    return results


# ----------------------------------------------------------------------------- cases, layers


class GradCase(NamedTuple):
    """One gradient check, drawn at random shapes and values: what :func:`check_case` runs.

    The audit's cases and a user's (:func:`register`) are functions ``make_case(key) ->
    GradCase``; a layer's is built by :func:`layer_case`.
    """

    f: Callable[..., jax.Array]  # scalar function of args
    args: tuple[Any, ...]  # its arguments
    grad_fn: Callable[..., Any] | None  # hand-derived gradient, jax.grad(f, argnums)'s shape
    argnums: int | tuple[int, ...] = 0
    shapes: str = ""  # the report's "shapes" column: what was drawn, e.g. "x(4, 3)"
    names: tuple[str, ...] | None = None  # the differentiated arguments' names (check_gradients)
    subject: str = ""  # what a mismatch names as checked, e.g. "layer 'dense', train=True"


def check_case(
    case: GradCase,
    *,
    key: PRNGKey | None = None,
    rtol: float = RTOL,
    fd_samples: int = 16,
    raise_on_mismatch: bool = True,
) -> GradReport:
    """Run one :class:`GradCase` through :func:`check_gradients` (same options).

    The report (and a :class:`GradientMismatchError`) names the case's ``subject``.
    """
    report = check_gradients(
        case.f, *case.args, grad_fn=case.grad_fn, argnums=case.argnums, rtol=rtol,
        fd_samples=fd_samples, key=key, raise_on_mismatch=False, names=case.names,
    )  # fmt: skip
    report = dataclasses.replace(report, subject=case.subject)
    if raise_on_mismatch and not report.ok:
        raise GradientMismatchError(report.mismatch())
    return report


def _host_rng(key: PRNGKey) -> np.random.Generator:
    """A numpy generator seeded from a JAX key: draws on the host compile nothing."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def _mode(train: bool) -> str:
    return "train" if train else "eval"


def _check_layer_args(who: str, layer: Any, input_shape: Any, keywords: dict[str, Any]) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(
            f"{who} needs a jaxnn Layer (dense(...), serial(...), your own Layer(name, init, "
            f"apply, vjp)), got {type(layer).__name__}."
        )
    dims = tuple(input_shape) if isinstance(input_shape, tuple | list) else None
    if dims is None or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise TypeError(
            f"{who}: input_shape must be a tuple of sizes including the batch axes, e.g. "
            f"(4, 8), got {input_shape!r}."
        )
    unknown = sorted(set(keywords) - set(layer.keywords))
    if unknown:
        raise TypeError(
            f"{who}: layer {layer.name!r} takes no keyword array(s) {unknown}; it takes "
            f"{list(layer.keywords) or 'none'} (Layer.keywords)."
        )


def layer_case(
    layer: Layer,
    input_shape: Shape,
    *,
    train: bool,
    key: PRNGKey | None = None,
    state: State | None = None,
    layer_key: PRNGKey | None = None,
    shapes: str | None = None,
    x: ArrayLike | None = None,
    **keywords: Any,
) -> GradCase:
    """A layer's gradient case in one mode: ``f(params, x) = Σ w ⊙ apply(params, state, x)``.

    ``w ~ N(0, 1)`` is a random cotangent, so ``∇f = backward(w)``, the layer's hand-derived
    vector-Jacobian product, checked w.r.t. the params (leaves ``dparams…``) and the input
    (leaf ``dx``): a wrong ``dx`` names this layer, not the one before it in a network. The
    backward is validated too (a ``Partial``, returning ``(dparams, dx)`` of the params'
    structure and ``x``'s shape and dtype).

    Args:
      layer: the layer.
      input_shape: its input's shape, batch axes included.
      train: the mode, on both sides.
      key: draws the params (the layer's ``init``, then promoted to float64), ``x ~ N(0, 1)``
        and ``w`` (default ``jax.random.key(0)``).
      state: the layer's state (default: what ``init`` returns), e.g. random running
        statistics for an eval-mode BatchNorm.
      layer_key: the key a stochastic layer draws from, the same on both sides (default: one
        drawn from ``key`` when ``layer.stochastic``).
      shapes: the report's "shapes" column (default: ``"train x(4, 8)"``).
      x: the input, of ``input_shape`` (default ``x ~ N(0, 1)``); required for a layer of
        integer input (``Layer.integer_input``, e.g. an embedding's tokens), whose case
        checks the params' gradients alone (an integer input has none).
      keywords: the layer's keyword arrays (BatchNorm's ``mask``), on both sides.

    Use it to register a layer of yours for ``jaxnn gradcheck --import``::

        register("mine.layernorm", lambda key: layer_case(layernorm(), (4, 8), train=True, key=key))
    """
    who = "layer_case"
    _check_layer_args(who, layer, input_shape, keywords)
    k_init, k_x, k_layer = jax.random.split(jax.random.key(0) if key is None else key, 3)
    shape = tuple(int(d) for d in input_shape)
    if layer_key is None and layer.stochastic:
        layer_key = k_layer
    run = dict(train=train, key=layer_key, **keywords)
    name = repr(layer.name)
    rng = _host_rng(k_x)
    if x is None and layer.integer_input:
        raise ValueError(
            f"{who}: layer {name} takes integer input (Layer.integer_input, e.g. token indices); "
            f"pass its input as x=..., an integer array of shape {shape} with valid indices."
        )
    if x is not None and tuple(np.shape(x)) != shape:
        raise ValueError(f"{who}: x has shape {tuple(np.shape(x))}, input_shape is {shape}.")
    with jax.enable_x64(True):
        params, init_state = layer.init(k_init, shape)
        params, _ = _promote(params)
        state = init_state if state is None else state
        x = jnp.asarray(rng.standard_normal(shape)) if x is None else _promote(jnp.asarray(x))[0]
        y = jax.eval_shape(lambda params, x: layer.apply(params, state, x, **run)[0], params, x)
        w = jnp.asarray(rng.standard_normal(y.shape))

    if not jnp.issubdtype(x.dtype, jnp.floating):  # no gradient w.r.t. an integer input
        tokens = x

        def f_params(params: Params) -> Array:
            return jnp.sum(w * layer.apply(params, state, tokens, **run)[0])

        @jax.jit
        def grad_params(params: Params) -> Params:
            _, _, backward = layer.vjp(params, state, tokens, **run)
            spec = backward_spec(name, backward, params, tokens, check_dtype=True)
            return check_cotangents(spec, backward(w))[0]

        return GradCase(
            f_params, (params,), grad_params, 0, shapes or f"{_mode(train)} x{shape}",
            ("dparams",), f"layer {name}, train={bool(train)}",
        )  # fmt: skip

    def f(params: Params, x: Array) -> Array:
        return jnp.sum(w * layer.apply(params, state, x, **run)[0])

    @jax.jit  # the hand rules compiled, as training runs them
    def grad_fn(params: Params, x: Array) -> tuple[Params, Array]:
        _, _, backward = layer.vjp(params, state, x, **run)
        spec = backward_spec(name, backward, params, x, check_dtype=True)
        return check_cotangents(spec, backward(w))

    return GradCase(
        f, (params, x), grad_fn, (0, 1), shapes or f"{_mode(train)} x{shape}",
        ("dparams", "dx"), f"layer {name}, train={bool(train)}",
    )  # fmt: skip


def check_layer(
    layer: Layer,
    input_shape: Shape,
    *,
    train: bool | Sequence[bool] = (True, False),
    key: PRNGKey | None = None,
    state: State | None = None,
    layer_key: PRNGKey | None = None,
    rtol: float = RTOL,
    fd_samples: int = 16,
    raise_on_mismatch: bool = True,
    x: ArrayLike | None = None,
    **keywords: Any,
) -> dict[str, GradReport]:
    """Check a layer's hand-derived backward against ``jax.grad`` and finite differences.

    In each mode of ``train`` (both by default), the :func:`layer_case` of the layer, drawn
    from ``key``, goes through :func:`check_gradients` in float64 with its derived tolerances:
    the gradient w.r.t. every parameter and w.r.t. the input ``x``.

    Args:
      layer: any :class:`~jaxnn.Layer` (a leaf layer or a network).
      input_shape: its input's shape, batch axes included, e.g. ``(4, 8)``.
      train: the mode or modes to check (default ``(True, False)``).
      key: draws params, input, cotangent and (stochastic layers) the layer's key (default
        ``jax.random.key(0)``); the same draws in every mode.
      state, layer_key: as in :func:`layer_case`.
      rtol, fd_samples: as in :func:`check_gradients`.
      raise_on_mismatch: raise on the first mismatch (default), or return every report.
      x: the input (default ``N(0, 1)`` draws); required for a layer of integer input.
      keywords: the layer's keyword arrays (BatchNorm's ``mask``).

    Returns:
      ``{"train": GradReport, "eval": GradReport}`` for the modes checked; each report has the
      leaves ``dparams['w']``, ..., and ``dx``.

    Raises:
      GradientMismatchError: a gradient disagrees; the message names the layer, the mode and
        the leaf (``layer 'dense', train=True: gradient mismatch at leaf dx ...``).
      TypeError, ValueError: the layer's backward is not a ``jax.tree_util.Partial`` (use
        :func:`jaxnn.bind_backward`), or does not return ``(dparams, dx)`` with ``dparams`` of
        the params' structure and ``dx`` of ``x``'s shape and dtype; the message names the
        layer. Or the arguments are not a layer, a shape, the layer's keywords.

    Example::

        >>> import jaxnn
        >>> from jaxnn.gradcheck import check_layer
        >>> reports = check_layer(jaxnn.dense(3), (4, 2))
        >>> sorted(reports), all(r.ok for r in reports.values())
        (['eval', 'train'], True)
        >>> [leaf.path for leaf in reports["train"].leaves]
        ["dparams['b']", "dparams['w']", 'dx']
    """
    _check_layer_args("check_layer", layer, input_shape, keywords)
    modes = (train,) if isinstance(train, bool | np.bool_) else tuple(train)
    if not modes or not all(isinstance(m, bool | np.bool_) for m in modes):
        raise TypeError(f"check_layer: train must be a bool or a sequence of bools, got {train!r}.")
    key = jax.random.key(0) if key is None else key
    reports = {}
    for mode in dict.fromkeys(bool(m) for m in modes):
        case = layer_case(
            layer,
            input_shape,
            train=mode,
            key=key,
            state=state,
            layer_key=layer_key,
            x=x,
            **keywords,
        )
        reports[_mode(mode)] = check_case(
            case, key=key, rtol=rtol, fd_samples=fd_samples, raise_on_mismatch=raise_on_mismatch
        )
    return reports


# ----------------------------------------------------------------------------- registry


_REGISTRY: dict[str, Callable[[PRNGKey], GradCase]] = {}


def register(name: str, make_case: Callable[[PRNGKey], GradCase]) -> Callable[[PRNGKey], GradCase]:
    """Register a gradient case of yours so that ``jaxnn gradcheck --import`` audits it.

    ``make_case(key)`` draws shapes and float64 values from ``key`` and returns a
    :class:`GradCase`; a layer's is one line,
    ``register("mine.norm", lambda key: layer_case(norm(), (4, 8), train=True, key=key))``.
    Registering an existing name replaces it.
    """
    _REGISTRY[name] = make_case
    return make_case


def unregister(name: str) -> None:
    """Remove a registered case (no error if there is none)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Callable[[PRNGKey], GradCase]]:
    """The cases registered with :func:`register`, by name (jaxnn itself registers none)."""
    return dict(_REGISTRY)
