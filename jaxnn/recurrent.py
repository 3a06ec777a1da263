"""Recurrent networks: Elman, LSTM and GRU cells, backpropagation through time by hand, and
the embedding that feeds them tokens.

A recurrent network is a deep network whose layers share one weight matrix: the cell maps
``(carry_{t-1}, x_t)`` to ``(carry_t, y_t)`` with the same params at every step, and its
backward pass is backpropagation through time (BPTT; Werbos, 1990): the chain rule run from
the last step to the first, with the gradient of the carry passed backwards from step to
step. Each cell here has its per-step forward and its hand-derived per-step backward side by
side; :func:`scan` runs a cell over a sequence with ``lax.scan`` and :func:`scan_vjp`'s
backward is the reverse ``lax.scan`` written out (never ``jax.vjp`` of the forward loop).

**Layout: PyTorch's** (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``, one layer, ``batch_first=True``).
Inputs are ``x [B, T, I]`` (batch, time, features), the hidden size is ``H``, and a cell with
``G`` gate blocks (Elman 1, LSTM 4, GRU 3) has the params::

    w_ih [I, G·H]   w_hh [H, G·H]   b_ih [G·H]   b_hh [G·H]      (no b_* when use_bias=False)

oriented as :func:`jaxnn.dense`'s kernel (``y = x @ w``): PyTorch's ``weight_ih_l0`` is
``w_ih.T``, ``weight_hh_l0`` is ``w_hh.T``; ``bias_ih_l0`` is ``b_ih``, ``bias_hh_l0`` is
``b_hh``. The gate blocks lie along the last axis in PyTorch's order: LSTM ``(i, f, g, o)``,
GRU ``(r, z, n)``. Two biases, as PyTorch has (their sum is what an Elman cell or an LSTM sees;
the GRU needs ``b_hn`` apart). Init, as PyTorch: every entry ``U(-1/√H, 1/√H)``. The carry
is ``h [B, H]`` for Elman and GRU cells, ``(h, c)`` for the LSTM (PyTorch's ``(h_n, c_n)``).

**Every product stays inside the loops.** ``x_t W_ih + b_ih`` does not depend on the carry,
and cuDNN computes it for all ``T`` steps as one product before the loop; on XLA:CPU that is
slower, not faster: the product's ``[T, B, G·H]`` result is ``G·H/I`` times the input's size
(16 for an LSTM of hidden 128 on 32 features), and writing it, adding the bias to it and
slicing each step's gates back out of it cost more than ``T`` small products (and an
elementwise fusion that reads several gate slices of a slice of it runs ~10x slower than on
a fresh product). So the forward computes ``x_t W_ih + b_ih`` step by step, and the reverse
loop accumulates ``dW_ih``, ``dW_hh``, ``db_ih``, ``db_hh`` in its carry (``+= x_tᵀ da_t``)
instead of stacking ``da_t`` over all steps (two ``[T, B, G·H]`` arrays, zero-filled first)
for products over all ``B·T`` rows afterwards. ``benchmarks/bench_lstm.py`` times both
(``plain_jax`` against ``plain_jax_hoisted``).

**Masks** (``seq_mask [B, T]``, true at real steps) run sequences of different lengths in one
batch: at a masked step the carry passes through unchanged and the output is zero, so
padding never changes a real step's output or gradient, the final carry is the one after
each sequence's last real step, and a masked input (even NaN) is never read. That is
PyTorch's ``pack_padded_sequence`` for right padding (``pad_packed_sequence`` gives zeros
at the padding, ``h_n`` the state at each sequence's last step), and Flax's ``seq_lengths``.
A sequence with no real step keeps its initial carry, outputs zeros, and has zero gradients
w.r.t. the params and its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn import activations as _activations
from jaxnn import initializers as _initializers
from jaxnn._checks import (
    PARAM_DTYPE_HINT,
    ensure_float,
    ensure_float_dtype,
    ensure_input_shape,
    is_traced,
    require,
)
from jaxnn._typing import Array, ArrayLike, Layer, Params, PRNGKey, Shape, State, bind_backward
from jaxnn.layers import default_float

__all__ = [
    "Cell",
    "elman_cell",
    "embedding",
    "gru_cell",
    "lstm_cell",
    "recurrent_layer",
    "scan",
    "scan_vjp",
]

Carry = Any  # h [B, H], or (h, c) for the LSTM

_GATES = {"elman": 1, "lstm": 4, "gru": 3}


class _Config(NamedTuple):
    """A cell's static configuration (hashable: bound into the backward)."""

    kind: str  # "elman" | "lstm" | "gru"
    hidden: int
    activation: str  # the Elman cell's activation ("tanh" for the others: unused)
    use_bias: bool
    name: str

    @property
    def gates(self) -> int:
        return _GATES[self.kind]


# ----------------------------------------------------------------------------- one step
# Every cell is written on the pre-activations ``gi = x W_ih + b_ih`` (the input projection,
# computed outside the loop) and ``gh = h W_hh + b_hh``; its backward returns the gradients
# w.r.t. ``gi`` and ``gh`` and the parts of the carry's gradient that bypass ``W_hh``.


class _ElmanRes(NamedTuple):
    h: Array  # [B, H] the carry the step read
    a: Array  # [B, H] the pre-activation


class _LstmRes(NamedTuple):
    h: Array  # [B, H]
    c: Array  # [B, H] the cell state the step read
    gates: Array  # [B, 4H] i, f, g, o after their nonlinearities
    tanh_c: Array  # [B, H] tanh(c_t)


class _GruRes(NamedTuple):
    h: Array  # [B, H]
    r: Array  # [B, H]
    z: Array  # [B, H]
    n: Array  # [B, H]
    gh_n: Array  # [B, H] h W_hn + b_hn


def _hidden(cfg: _Config, carry: Carry) -> Array:
    return carry[0] if cfg.kind == "lstm" else carry


def _step(cfg: _Config, gi: Array, carry: Carry, w_hh: Array, b_hh: Array | None):
    """One step on the input projection ``gi [B, G·H]``: ``(new carry, residuals)``.

    Elman:  ``h' = φ(a)``, ``a = gi + h W_hh + b_hh``.
    LSTM:   ``[i f g o] = gi + h W_hh + b_hh`` → ``σ, σ, tanh, σ``; ``c' = f c + i g``,
            ``h' = o tanh(c')``.
    GRU:    ``r = σ(gi_r + gh_r)``, ``z = σ(gi_z + gh_z)``, ``n = tanh(gi_n + r (h W_hn +
            b_hn))``, ``h' = (1 - z) n + z h``.
    """
    h = _hidden(cfg, carry)
    gh = h @ w_hh
    if b_hh is not None:
        gh = gh + b_hh
    if cfg.kind == "elman":
        a = gi + gh
        return _activations.get(cfg.activation).fn(a), _ElmanRes(h, a)
    if cfg.kind == "lstm":
        c = carry[1]
        i, f, g, o = jnp.split(gi + gh, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c_new = f * c + i * g
        tanh_c = jnp.tanh(c_new)
        h_new = o * tanh_c
        return (h_new, c_new), _LstmRes(h, c, jnp.concatenate([i, f, g, o], axis=-1), tanh_c)
    gi_r, gi_z, gi_n = jnp.split(gi, 3, axis=-1)
    gh_r, gh_z, gh_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(gi_r + gh_r)
    z = jax.nn.sigmoid(gi_z + gh_z)
    n = jnp.tanh(gi_n + r * gh_n)
    return (1 - z) * n + z * h, _GruRes(h, r, z, n, gh_n)


def _step_backward(cfg: _Config, res: Any, dh: Array, dc: Array | None):
    """``(dgi, dgh, dh_direct, dc_prev)`` from the new carry's gradient ``(dh, dc)``.

    ``dgi``, ``dgh`` are the gradients w.r.t. the pre-activations ``gi`` and ``gh``; the
    carry's gradient is then ``dh_prev = dh_direct + dgh W_hhᵀ`` (and ``dc_prev``).

    Elman: ``da = dh ⊙ φ'(a)``; ``dgi = dgh = da``.

    LSTM (with ``σ' = σ(1 - σ)``, ``tanh' = 1 - tanh²``)::

        do = dh ⊙ tanh(c')            dc' = dc + dh ⊙ o ⊙ (1 - tanh²(c'))
        di = dc' ⊙ g    df = dc' ⊙ c    dg = dc' ⊙ i    dc_prev = dc' ⊙ f
        dgi = dgh = [di i(1-i), df f(1-f), dg (1-g²), do o(1-o)]

    GRU::

        dz = dh ⊙ (h - n)    dn = dh ⊙ (1 - z)    dh_direct = dh ⊙ z
        da_n = dn ⊙ (1 - n²)    dr = da_n ⊙ gh_n
        dgi = [dr r(1-r), dz z(1-z), da_n]    dgh = [dr r(1-r), dz z(1-z), da_n ⊙ r]
    """
    if cfg.kind == "elman":
        da = dh * _activations.get(cfg.activation).derivative(res.a)
        return da, da, None, None
    if cfg.kind == "lstm":
        i, f, g, o = jnp.split(res.gates, 4, axis=-1)
        do = dh * res.tanh_c
        dc_total = dc + dh * o * (1 - res.tanh_c**2)
        da = jnp.concatenate(
            [
                dc_total * g * i * (1 - i),
                dc_total * res.c * f * (1 - f),
                dc_total * i * (1 - g**2),
                do * o * (1 - o),
            ],
            axis=-1,
        )
        return da, da, None, dc_total * f
    dz = dh * (res.h - res.n)
    da_n = dh * (1 - res.z) * (1 - res.n**2)
    da_r = da_n * res.gh_n * res.r * (1 - res.r)
    da_z = dz * res.z * (1 - res.z)
    dgi = jnp.concatenate([da_r, da_z, da_n], axis=-1)
    dgh = jnp.concatenate([da_r, da_z, da_n * res.r], axis=-1)
    return dgi, dgh, dh * res.z, None


def _split_carry(cfg: _Config, carry: Carry) -> tuple[Array, Array | None]:
    return (carry[0], carry[1]) if cfg.kind == "lstm" else (carry, None)


def _join_carry(cfg: _Config, h: Array, c: Array | None) -> Carry:
    return (h, c) if cfg.kind == "lstm" else h


# ----------------------------------------------------------------------------- checks


def _where(cfg: _Config) -> str:
    return f"{cfg.name!r} ({cfg.kind} cell, hidden {cfg.hidden})"


def _check_params(cfg: _Config, params: Any, input_size: int | None) -> None:
    """Keys and shapes of a cell's params against its hidden size and the input's features."""
    expected = ["b_hh", "b_ih", "w_hh", "w_ih"] if cfg.use_bias else ["w_hh", "w_ih"]
    if not isinstance(params, dict) or sorted(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{_where(cfg)}: params must be a dict with keys {expected}, got {got}. Use the "
            f"params that this cell's init returned."
        )
    gh = cfg.gates * cfg.hidden
    w_ih, w_hh = jnp.shape(params["w_ih"]), jnp.shape(params["w_hh"])
    if w_hh != (cfg.hidden, gh):
        raise ValueError(
            f"{_where(cfg)}: w_hh has shape {tuple(w_hh)}, but hidden size {cfg.hidden} needs "
            f"[hidden, {cfg.gates}·hidden] = ({cfg.hidden}, {gh}). The params were made for "
            f"another hidden size: init them with this cell."
        )
    if len(w_ih) != 2 or w_ih[1] != gh:
        raise ValueError(
            f"{_where(cfg)}: w_ih has shape {tuple(w_ih)}, but hidden size {cfg.hidden} needs "
            f"[input_size, {gh}]. Init the params with this cell."
        )
    if input_size is not None and w_ih[0] != input_size:
        raise ValueError(
            f"{_where(cfg)}: the input has {input_size} features, but w_ih has shape "
            f"{tuple(w_ih)} (made for {w_ih[0]} input features). Init the params with this "
            f"input size, or feed x [batch, time, {w_ih[0]}]."
        )
    if cfg.use_bias:
        for b in ("b_ih", "b_hh"):
            if jnp.shape(params[b]) != (gh,):
                raise ValueError(
                    f"{_where(cfg)}: {b} has shape {tuple(jnp.shape(params[b]))}; it must be "
                    f"({gh},) = ({cfg.gates}·hidden,)."
                )
    for k in expected:
        if not jnp.issubdtype(jnp.result_type(params[k]), jnp.floating):
            raise TypeError(
                f"{_where(cfg)}: {k} must be a floating-point array, got dtype "
                f"{jnp.result_type(params[k])}."
            )


def _check_carry(cfg: _Config, carry: Any, batch: int, what: str) -> Carry:
    """A given carry as arrays of shape [batch, hidden] (a pair for the LSTM)."""
    shape = (batch, cfg.hidden)
    if cfg.kind == "lstm":
        if not (isinstance(carry, tuple | list) and len(carry) == 2):
            raise ValueError(
                f"{_where(cfg)}: {what} must be the pair (h, c) of arrays {shape}, got "
                f"{jax.tree.structure(carry)}."
            )
        parts = tuple(carry)
    else:
        parts = (carry,)
    out = []
    for name, part in zip(("h", "c"), parts, strict=False):
        part = ensure_float(part, f"{cfg.name}: {what} {name}")
        if part.shape != shape:
            raise ValueError(
                f"{_where(cfg)}: {what} {name} has shape {part.shape}; it must be [batch, "
                f"hidden] = {shape}."
            )
        out.append(part)
    return tuple(out) if cfg.kind == "lstm" else out[0]


def _check_x(cfg: _Config, x: ArrayLike) -> Array:
    x = ensure_float(x, f"{cfg.name}: x")
    if x.ndim != 3:
        raise ValueError(
            f"{_where(cfg)}: x must be [batch, time, features] (batch first, as PyTorch's "
            f"batch_first=True and Flax's default), got shape {x.shape}. Add a batch axis with "
            f"x[None] for one sequence."
        )
    if x.shape[1] == 0:
        raise ValueError(f"{_where(cfg)}: x has no time steps (shape {x.shape}).")
    return x


def _check_mask(cfg: _Config, seq_mask: Any, x: Array) -> Array | None:
    if seq_mask is None:
        return None
    seq_mask = jnp.asarray(seq_mask)
    if seq_mask.shape != x.shape[:2]:
        raise ValueError(
            f"{_where(cfg)}: seq_mask has shape {seq_mask.shape}; it must be [batch, time] = "
            f"{x.shape[:2]} (true at each sequence's real steps), e.g. "
            f"jnp.arange(T) < lengths[:, None]."
        )
    if not (seq_mask.dtype == bool or jnp.issubdtype(seq_mask.dtype, jnp.number)):
        raise TypeError(f"{cfg.name}: seq_mask must be boolean (or 0/1), got {seq_mask.dtype}.")
    return seq_mask if seq_mask.dtype == bool else seq_mask != 0


# ----------------------------------------------------------------------------- the loop


class _Residuals(NamedTuple):
    """What the hand BPTT needs (time major)."""

    x: Array  # [T, B, I] the inputs as the projection read them (masked steps zeroed)
    w_ih: Array
    w_hh: Array
    steps: Any  # the cell's per-step residuals, each [T, B, ...]
    mask: Array | None  # [T, B, 1] or None


def _dtype(params: Params, x: Array) -> Any:
    return jnp.result_type(x, *jax.tree.leaves(params))


def _forward(cfg: _Config, params: Params, x: Array, carry: Carry, mask: Array | None, keep: bool):
    """``(ys [B, T, H], carry_T, residuals or None)``."""
    dtype = _dtype(params, x)
    w_ih, w_hh = params["w_ih"].astype(dtype), params["w_hh"].astype(dtype)
    b_ih = params["b_ih"].astype(dtype) if cfg.use_bias else None
    b_hh = params["b_hh"].astype(dtype) if cfg.use_bias else None
    xt = jnp.swapaxes(x, 0, 1).astype(dtype)  # [T, B, I]
    mt = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]  # [T, B, 1]
    if mt is not None:
        xt = jnp.where(mt, xt, 0)  # a masked input is never read
    carry = jax.tree.map(lambda a: a.astype(dtype), carry)

    def body(carry: Carry, inputs: tuple[Array, Array | None]):
        x_t, m_t = inputs
        gi_t = x_t @ w_ih  # the input projection, step by step (the module docstring)
        if b_ih is not None:
            gi_t = gi_t + b_ih
        new, res = _step(cfg, gi_t, carry, w_hh, b_hh)
        y = _hidden(cfg, new)
        if m_t is not None:
            new = jax.tree.map(lambda a, b: jnp.where(m_t, a, b), new, carry)
            y = jnp.where(m_t, y, 0)
        return new, ((y, res) if keep else y)

    carry_t, out = lax.scan(body, carry, (xt, mt))
    ys, steps = out if keep else (out, None)
    res = _Residuals(xt, w_ih, w_hh, steps, mt) if keep else None
    return jnp.swapaxes(ys, 0, 1), carry_t, res


def _bptt(
    res: _Residuals,
    dys: Array,
    dcarry: Carry,
    *,
    cfg: _Config,
    x_dtype: Any,
    param_dtypes: tuple[tuple[str, Any], ...],
    carry_dtype: Any,
):
    """Backpropagation through time: ``(dparams, dx, dcarry_0)`` by a reverse ``lax.scan``.

    The carry of the reverse loop is the gradient w.r.t. the carry ``(dh, dc)``. At step ``t``,
    with ``dy_t`` the output's gradient and ``m_t`` the mask::

        dh_t ← dy_t + dh_t                          (the output and the next step read h_t)
        (dgi_t, dgh_t, dh_direct, dc_prev) = step_backward(dh_t, dc_t)
        dh_{t-1} = dh_direct + dgh_t W_hhᵀ            (at a masked step: dh_{t-1} = dh_t)

    and, in the same loop, the weight gradients accumulate in its carry (and ``dx_t`` is
    its output, which XLA drops when nothing reads it)::

        dW_ih += x_tᵀ dgi_t    db_ih += Σ_b dgi_t    dx_t = dgi_t W_ihᵀ
        dW_hh += h_{t-1}ᵀ dgh_t    db_hh += Σ_b dgh_t
    """
    dtype = res.w_hh.dtype
    dyt = jnp.swapaxes(dys, 0, 1).astype(dtype)
    dh_t, dc_t = _split_carry(cfg, jax.tree.map(lambda a: a.astype(dtype), dcarry))
    w_ih_t, w_hh_t = res.w_ih.T, res.w_hh.T
    grads = {"w_ih": jnp.zeros_like(res.w_ih), "w_hh": jnp.zeros_like(res.w_hh)}
    if cfg.use_bias:
        grads["b_ih"] = jnp.zeros(res.w_hh.shape[1], dtype)
        grads["b_hh"] = jnp.zeros(res.w_hh.shape[1], dtype)

    def body(carry: Any, inputs: Any):
        dh, dc, grads = carry
        steps, x_t, dy, m = inputs
        g = dy + dh
        dc_in = dc
        if m is not None:  # a masked step: nothing flows into the cell; the carry passes by
            g = jnp.where(m, g, 0)
            dc_in = None if dc is None else jnp.where(m, dc, 0)
        dgi, dgh, direct, dc_prev = _step_backward(cfg, steps, g, dc_in)
        dh_prev = dgh @ w_hh_t
        if direct is not None:
            dh_prev = dh_prev + direct
        if m is not None:
            dh_prev = jnp.where(m, dh_prev, dh)
            dc_prev = None if dc is None else jnp.where(m, dc_prev, dc)
        grads = dict(grads)  # the weight gradients accumulate in the loop's carry
        grads["w_ih"] = grads["w_ih"] + x_t.T @ dgi
        grads["w_hh"] = grads["w_hh"] + steps.h.T @ dgh
        if cfg.use_bias:
            grads["b_ih"] = grads["b_ih"] + jnp.sum(dgi, axis=0)
            grads["b_hh"] = grads["b_hh"] + jnp.sum(dgh, axis=0)
        return (dh_prev, dc_prev, grads), dgi @ w_ih_t  # dx_t (dropped by XLA when unused)

    (dh0, dc0, dparams), dxt = lax.scan(
        body, (dh_t, dc_t, grads), (res.steps, res.x, dyt, res.mask), reverse=True
    )
    dtypes = dict(param_dtypes)
    dparams = {k: v.astype(dtypes[k]) for k, v in dparams.items()}
    dx = jnp.swapaxes(dxt, 0, 1)
    if res.mask is not None:  # the transpose of zeroing the masked inputs
        dx = jnp.where(jnp.swapaxes(res.mask, 0, 1), dx, 0)
    dcarry0 = jax.tree.map(lambda a: a.astype(carry_dtype), _join_carry(cfg, dh0, dc0))
    return dparams, dx.astype(x_dtype), dcarry0


def _prepare(cell: Cell, params: Params, x: ArrayLike, initial_carry: Any, seq_mask: Any):
    cfg = cell.config
    x = _check_x(cfg, x)
    _check_params(cfg, params, x.shape[-1])
    mask = _check_mask(cfg, seq_mask, x)
    dtype = _dtype(params, x)
    if initial_carry is None:
        carry = cell.initial_carry(x.shape[0], dtype)
    else:
        carry = _check_carry(cfg, initial_carry, x.shape[0], "initial_carry")
    return cfg, x, mask, carry


def scan(
    cell: Cell,
    params: Params,
    x: ArrayLike,
    *,
    initial_carry: Carry | None = None,
    seq_mask: ArrayLike | None = None,
) -> tuple[Array, Carry]:
    """Run ``cell`` over the sequence ``x [B, T, I]``: ``(ys [B, T, H], carry_T)``.

    ``ys[:, t]`` is the hidden state ``h_t`` after step ``t`` (zero at a masked step);
    ``carry_T`` is the carry after each sequence's last real step (``h_T``, or ``(h_T, c_T)``
    for the LSTM). Differentiable by ``jax.grad`` (the autodiff path) w.r.t. the params, ``x``
    and ``initial_carry``; :func:`scan_vjp` is the same forward with the hand-derived BPTT.

    Args:
      cell: an :func:`elman_cell`, :func:`lstm_cell` or :func:`gru_cell`.
      params: the cell's params (``cell.init(key, I)``).
      x: ``[batch, time, features]``, batch first.
      initial_carry: the carry before the first step (default: zeros), ``[B, H]`` or
        ``(h, c)`` for the LSTM.
      seq_mask: ``[B, T]``, true at real steps (see the module docstring); None: all real.

    Raises:
      ValueError, TypeError: a shape that does not match (the message names the cell, what
        it expected and what came).
    """
    cfg, x, mask, carry = _prepare(cell, params, x, initial_carry, seq_mask)
    ys, carry_t, _ = _forward(cfg, params, x, carry, mask, keep=False)
    return ys.astype(x.dtype), carry_t


def scan_vjp(
    cell: Cell,
    params: Params,
    x: ArrayLike,
    *,
    initial_carry: Carry | None = None,
    seq_mask: ArrayLike | None = None,
) -> tuple[Array, Carry, Callable[[Array, Carry], tuple[Params, Array, Carry]]]:
    """:func:`scan`, with the hand-derived backpropagation through time.

    Returns ``(ys, carry_T, backward)``; ``backward(dys, dcarry_T) -> (dparams, dx,
    dcarry_0)`` takes the gradients w.r.t. both outputs (``dys`` of ``ys``' shape, ``dcarry_T``
    of the carry's; pass zeros for an output the loss does not read) and returns those w.r.t.
    the params, the input and the initial carry. The backward is a reverse ``lax.scan`` carrying
    the carry's gradient (see :func:`_bptt`'s docstring for the equations), a
    ``jax.tree_util.Partial`` (it can cross ``jit``), written in differentiable operations.

    Example (the gradient of ``h_T`` w.r.t. ``h_0`` along ``v``, as in Pascanu et al. 2013)::

        ys, h_T, backward = scan_vjp(cell, params, x, initial_carry=h0)
        _, _, v_dh_T_dh_0 = backward(jnp.zeros_like(ys), v)
    """
    cfg, x, mask, carry = _prepare(cell, params, x, initial_carry, seq_mask)
    ys, carry_t, res = _forward(cfg, params, x, carry, mask, keep=True)
    backward = bind_backward(
        _bptt,
        res,
        cfg=cfg,
        x_dtype=jnp.dtype(x.dtype),
        param_dtypes=tuple(sorted((k, jnp.dtype(jnp.result_type(v))) for k, v in params.items())),
        carry_dtype=jnp.dtype(jax.tree.leaves(carry)[0].dtype),
    )
    return ys.astype(x.dtype), carry_t, backward


# ----------------------------------------------------------------------------- cells


class Cell(NamedTuple):
    """A recurrent cell: its configuration and its pure functions.

    Attributes:
      name: how errors name it (and :func:`recurrent_layer`'s default name).
      config: the static configuration (kind, hidden size, activation, use_bias).
      init: ``init(key, input_size) -> params`` (the dict of the module docstring).
      initial_carry: ``initial_carry(batch, dtype) -> carry`` of zeros.
      step: ``step(params, carry, x_t) -> (carry, y_t)``, one step, ``x_t [B, I]``,
        ``y_t = h_t``.
      step_vjp: ``step_vjp(params, carry, x_t) -> (carry, y_t, backward)`` with the
        hand-derived ``backward(dcarry, dy) -> (dparams, dcarry_prev, dx_t)``.
    """

    name: str
    config: _Config
    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[[int, Any], Carry]
    step: Callable[..., tuple[Carry, Array]]
    step_vjp: Callable[..., tuple[Carry, Array, Callable[..., Any]]]

    @property
    def hidden(self) -> int:
        return self.config.hidden


def _projection(cfg: _Config, params: Params, x: Array) -> tuple[Array, Any]:
    dtype = _dtype(params, x)
    gi = x.astype(dtype) @ params["w_ih"].astype(dtype)
    if cfg.use_bias:
        gi = gi + params["b_ih"].astype(dtype)
    b_hh = params["b_hh"].astype(dtype) if cfg.use_bias else None
    return gi, (params["w_hh"].astype(dtype), b_hh)


def _cell_backward(
    x: Array,
    w_ih: Array,
    w_hh: Array,
    res: Any,
    dcarry: Carry,
    dy: Array,
    *,
    cfg: _Config,
    param_dtypes: tuple[tuple[str, Any], ...],
    x_dtype: Any,
    carry_dtype: Any,
):
    """One step's backward: ``dh ← dy + dh``, then :func:`_step_backward` and the products."""
    dh, dc = _split_carry(cfg, dcarry)
    dgi, dgh, direct, dc_prev = _step_backward(cfg, res, dy + dh, dc)
    dh_prev = dgh @ w_hh.T if direct is None else direct + dgh @ w_hh.T
    dtypes = dict(param_dtypes)
    dparams = {"w_ih": x.T @ dgi, "w_hh": res.h.T @ dgh}
    if cfg.use_bias:
        dparams["b_ih"], dparams["b_hh"] = jnp.sum(dgi, axis=0), jnp.sum(dgh, axis=0)
    dparams = {k: v.astype(dtypes[k]) for k, v in dparams.items()}
    dcarry_prev = jax.tree.map(lambda a: a.astype(carry_dtype), _join_carry(cfg, dh_prev, dc_prev))
    return dparams, dcarry_prev, (dgi @ w_ih.T).astype(x_dtype)


def _check_step(cfg: _Config, params: Params, carry: Any, x: ArrayLike) -> tuple[Array, Carry]:
    x = ensure_float(x, f"{cfg.name}: x")
    if x.ndim != 2:
        raise ValueError(
            f"{_where(cfg)}: one step's x must be [batch, features], got shape {x.shape}."
        )
    _check_params(cfg, params, x.shape[-1])
    return x, _check_carry(cfg, carry, x.shape[0], "carry")


def _make_cell(cfg: _Config, w_init: Any, b_init: Any, param_dtype: Any) -> Cell:
    g = cfg.gates * cfg.hidden
    bound = 1.0 / math.sqrt(cfg.hidden)

    def uniform(key: PRNGKey, shape: tuple[int, ...], dtype: Any) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    w_fn = uniform if w_init is None else _initializers.get(w_init)
    b_fn = uniform if b_init is None else _initializers.get(b_init)

    def init(key: PRNGKey, input_size: int) -> Params:
        if isinstance(input_size, bool) or not (
            isinstance(input_size, int | np.integer) and input_size > 0
        ):
            raise ValueError(
                f"{cfg.name}: init(key, input_size) needs the input's number of features as a "
                f"positive int, got {input_size!r}."
            )
        dtype = default_float() if param_dtype is None else param_dtype
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        params = {
            "w_ih": w_fn(k_ih, (int(input_size), g), dtype),
            "w_hh": w_fn(k_hh, (cfg.hidden, g), dtype),
        }
        if cfg.use_bias:
            params["b_ih"] = b_fn(k_bi, (g,), dtype)
            params["b_hh"] = b_fn(k_bh, (g,), dtype)
        return params

    def initial_carry(batch: int, dtype: Any = None) -> Carry:
        dtype = default_float() if dtype is None else dtype
        h = jnp.zeros((batch, cfg.hidden), dtype)
        return (h, jnp.zeros_like(h)) if cfg.kind == "lstm" else h

    def step(params: Params, carry: Carry, x: ArrayLike) -> tuple[Carry, Array]:
        x, carry = _check_step(cfg, params, carry, x)
        gi, (w_hh, b_hh) = _projection(cfg, params, x)
        new, _ = _step(cfg, gi, carry, w_hh, b_hh)
        return new, _hidden(cfg, new)

    def step_vjp(params: Params, carry: Carry, x: ArrayLike):
        x, carry = _check_step(cfg, params, carry, x)
        dtype = _dtype(params, x)
        gi, (w_hh, b_hh) = _projection(cfg, params, x)
        new, res = _step(cfg, gi, jax.tree.map(lambda a: a.astype(dtype), carry), w_hh, b_hh)
        backward = bind_backward(
            _cell_backward,
            x.astype(dtype),
            params["w_ih"].astype(dtype),
            w_hh,
            res,
            cfg=cfg,
            param_dtypes=tuple(
                sorted((k, jnp.dtype(jnp.result_type(v))) for k, v in params.items())
            ),
            x_dtype=jnp.dtype(x.dtype),
            carry_dtype=jnp.dtype(jax.tree.leaves(carry)[0].dtype),
        )
        return new, _hidden(cfg, new), backward

    return Cell(cfg.name, cfg, init, initial_carry, step, step_vjp)


def _check_hidden(hidden: Any, name: str) -> int:
    if isinstance(hidden, bool) or not (isinstance(hidden, int | np.integer) and hidden > 0):
        raise ValueError(
            f"{name}: hidden must be a positive int (the hidden size), got {hidden!r}."
        )
    return int(hidden)


def _cell(kind: str, hidden: Any, activation: str, use_bias: bool, w_init: Any, b_init: Any,
          param_dtype: Any, name: str) -> Cell:  # fmt: skip
    param_dtype = ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT)
    cfg = _Config(kind, _check_hidden(hidden, name), activation, bool(use_bias), name)
    return _make_cell(cfg, w_init, b_init, param_dtype)


def elman_cell(
    hidden: int,
    *,
    activation: str = "tanh",
    use_bias: bool = True,
    w_init: str | _initializers.Initializer | None = None,
    b_init: str | _initializers.Initializer | None = None,
    param_dtype: Any = None,
    name: str = "elman",
) -> Cell:
    """The Elman cell (Elman, 1990; PyTorch ``nn.RNN``, ``nonlinearity="tanh"|"relu"``)::

        h_t = φ(x_t W_ih + b_ih + h_{t-1} W_hh + b_hh)

    **Backward, by hand.** With ``a = x W_ih + b_ih + h W_hh + b_hh`` and ``dh`` the gradient
    w.r.t. ``h_t`` (from the output and from the next step)::

        da = dh ⊙ φ'(a)    dW_ih = xᵀ da    dW_hh = hᵀ da    db_ih = db_hh = Σ da
        dx = da W_ihᵀ      dh_{t-1} = da W_hhᵀ

    Through time, ``∂h_T/∂h_0 = Π_t diag(φ'(a_t)) W_hhᵀ``, so ``‖∂h_T/∂h_0‖ ≤ (γ λ₁)^T`` with
    ``λ₁`` the largest singular value of ``W_hh`` and ``γ = max |φ'|`` (1 for tanh, ¼ for
    sigmoid): the gradient vanishes when ``λ₁ < 1/γ`` (Pascanu, Mikolov & Bengio, 2013).

    Args:
      hidden: the hidden size ``H``.
      activation: any elementwise activation of :mod:`jaxnn.activations` by name (``"tanh"``,
        ``"relu"``, ``"sigmoid"``, ...).
      use_bias: whether the cell has ``b_ih`` and ``b_hh``.
      w_init, b_init: initialisers (None: PyTorch's ``U(-1/√H, 1/√H)``).
      param_dtype: the params' dtype (default float32, float64 under ``jax_enable_x64``).
      name: how errors name the cell.
    """
    act = _activations.get(activation)
    if act.derivative is None:
        raise ValueError(
            f"{name}: activation {act.name!r} is not elementwise; an Elman cell needs an "
            f"elementwise activation (tanh, relu, sigmoid, ...)."
        )
    return _cell("elman", hidden, act.name, use_bias, w_init, b_init, param_dtype, name)


def lstm_cell(
    hidden: int,
    *,
    use_bias: bool = True,
    w_init: str | _initializers.Initializer | None = None,
    b_init: str | _initializers.Initializer | None = None,
    param_dtype: Any = None,
    name: str = "lstm",
) -> Cell:
    """The LSTM cell (Hochreiter & Schmidhuber, 1997, with the forget gate of Gers,
    Schmidhuber & Cummins, 2000), as PyTorch's ``nn.LSTM``, gates ``(i, f, g, o)``::

        [a_i a_f a_g a_o] = x_t W_ih + b_ih + h_{t-1} W_hh + b_hh
        i = σ(a_i)  f = σ(a_f)  g = tanh(a_g)  o = σ(a_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g        h_t = o ⊙ tanh(c_t)

    **Backward, by hand.** Given ``dh`` (w.r.t. ``h_t``) and ``dc`` (w.r.t. ``c_t`` from the
    next step)::

        do = dh ⊙ tanh(c_t)                 dc_t = dc + dh ⊙ o ⊙ (1 - tanh²(c_t))
        di = dc_t ⊙ g   df = dc_t ⊙ c_{t-1}   dg = dc_t ⊙ i   dc_{t-1} = dc_t ⊙ f
        da = [di ⊙ i(1-i), df ⊙ f(1-f), dg ⊙ (1-g²), do ⊙ o(1-o)]
        dW_ih = xᵀ da   dW_hh = h_{t-1}ᵀ da   db_ih = db_hh = Σ da
        dx = da W_ihᵀ   dh_{t-1} = da W_hhᵀ

    ``dc_{t-1} = dc_t ⊙ f``: the cell state's gradient passes through time multiplied by the
    forget gate only — no weight matrix, no squashing — which is how the LSTM carries error
    over long lags (the "constant error carousel" when ``f = 1``).

    Args: as :func:`elman_cell` (no activation). The forget gate's bias starts as PyTorch's
    (uniform like the others); set ``params["b_hh"][H:2H]`` to change it.
    """
    return _cell("lstm", hidden, "tanh", use_bias, w_init, b_init, param_dtype, name)


def gru_cell(
    hidden: int,
    *,
    use_bias: bool = True,
    w_init: str | _initializers.Initializer | None = None,
    b_init: str | _initializers.Initializer | None = None,
    param_dtype: Any = None,
    name: str = "gru",
) -> Cell:
    """The GRU cell (Cho et al., 2014), as PyTorch's ``nn.GRU``, gates ``(r, z, n)``::

        r = σ(x W_ir + b_ir + h W_hr + b_hr)      z = σ(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    (``r`` multiplies ``h W_hn + b_hn``, after the product, as PyTorch and cuDNN do; Cho et
    al. apply it to ``h`` before. Flax's ``GRUCell`` follows PyTorch.)

    **Backward, by hand.** Given ``dh`` (w.r.t. ``h_t``), ``gh_n = h W_hn + b_hn``::

        dz = dh ⊙ (h_{t-1} - n)     dn = dh ⊙ (1 - z)     da_n = dn ⊙ (1 - n²)
        da_r = da_n ⊙ gh_n ⊙ r(1-r)   da_z = dz ⊙ z(1-z)
        d(x W_i + b_i) = [da_r, da_z, da_n]    d(h W_h + b_h) = [da_r, da_z, da_n ⊙ r]
        dh_{t-1} = dh ⊙ z + d(h W_h + b_h) W_hhᵀ

    Args: as :func:`lstm_cell`.
    """
    return _cell("gru", hidden, "tanh", use_bias, w_init, b_init, param_dtype, name)


# ----------------------------------------------------------------------------- the layer


def _layer_backward(
    scan_backward: Any, dy: Array, *, cfg: _Config, return_sequences: bool, shape: tuple
) -> tuple[Params, Array]:
    batch, time = shape
    if return_sequences:
        dys = dy
        zeros = jnp.zeros((batch, cfg.hidden), dy.dtype)
        dcarry = (zeros, zeros) if cfg.kind == "lstm" else zeros
    else:
        dys = jnp.zeros((batch, time, cfg.hidden), dy.dtype)
        dcarry = (dy, jnp.zeros_like(dy)) if cfg.kind == "lstm" else dy
    dparams, dx, _ = scan_backward(dys, dcarry)
    return dparams, dx


def recurrent_layer(cell: Cell, *, return_sequences: bool = True, name: str | None = None) -> Layer:
    """A layer that runs ``cell`` over ``x [B, T, I]`` (Flax's ``nn.RNN(cell)``; PyTorch's
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` with one layer and ``batch_first=True``).

    Its output is the hidden state at every step, ``[B, T, H]`` (``return_sequences=True``,
    zero at masked steps), or the last one, ``h_T [B, H]`` (after each sequence's last real
    step). Its hand backward is :func:`scan_vjp`'s BPTT; ``jax.grad`` of its ``apply`` is the
    autodiff path. No state (``{}``); the same computation in train and eval mode.

    Keyword arrays (passed through ``serial`` to the layers that name them):

    * ``seq_mask [B, T]``: true at real steps (module docstring).
    * ``initial_carry``: the carry before the first step (default zeros). It is an input held
      constant: no gradient flows into it on either path (``lax.stop_gradient``). To
      differentiate w.r.t. it, call :func:`scan` (autodiff) or :func:`scan_vjp` (by hand).

    Example::

        layer = recurrent_layer(lstm_cell(64), return_sequences=False)
        params, state = layer.init(key, (32, 100, 8))          # x [32, 100, 8]
        h_T, _ = layer.apply(params, state, x, train=True, seq_mask=mask)   # [32, 64]
    """
    if not isinstance(cell, Cell):
        raise TypeError(
            f"recurrent_layer: cell must be a jaxnn recurrent Cell (elman_cell, lstm_cell, "
            f"gru_cell), got {type(cell).__name__}."
        )
    layer_name = cell.name if name is None else name
    cfg = cell.config._replace(name=layer_name)
    cell = cell._replace(name=layer_name, config=cfg)
    return_sequences = bool(return_sequences)

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        shape = ensure_input_shape(input_shape, layer_name)
        if len(shape) != 3:
            raise ValueError(
                f"{_where(cfg)}: input_shape must be (batch, time, features), got {shape}."
            )
        return cell.init(jax.random.key(0) if key is None else key, shape[-1]), {}

    def carry_of(initial_carry: Any) -> Any:
        return None if initial_carry is None else jax.tree.map(lax.stop_gradient, initial_carry)

    def output(ys: Array, carry_t: Carry) -> Array:
        return ys if return_sequences else _hidden(cfg, carry_t).astype(ys.dtype)

    def apply(params, state, x, *, train, key=None, seq_mask=None, initial_carry=None):
        del train, key
        ys, carry_t = scan(
            cell, params, x, initial_carry=carry_of(initial_carry), seq_mask=seq_mask
        )
        return output(ys, carry_t), state

    def vjp(params, state, x, *, train, key=None, seq_mask=None, initial_carry=None):
        del train, key
        ys, carry_t, backward = scan_vjp(
            cell, params, x, initial_carry=carry_of(initial_carry), seq_mask=seq_mask
        )
        layer_backward = bind_backward(
            _layer_backward, backward, cfg=cfg, return_sequences=return_sequences,
            shape=tuple(jnp.shape(x)[:2]),
        )  # fmt: skip
        return output(ys, carry_t), state, layer_backward

    return Layer(layer_name, init, apply, vjp, keywords=("seq_mask", "initial_carry"))


# ----------------------------------------------------------------------------- embedding


def _embedding_backward(
    x: Array, dy: Array, *, num_embeddings: int, padding_idx: int | None, w_dtype: Any
) -> tuple[Params, Array]:
    """``dw = Σ_n e_{x_n} dy_nᵀ`` (a scatter-add: a repeated index sums its rows); the
    padding row gets none; ``dx`` is the ``float0`` zero of an integer input."""
    d = dy.shape[-1]
    dw = jnp.zeros((num_embeddings, d), dy.dtype).at[x.reshape(-1)].add(dy.reshape(-1, d))
    if padding_idx is not None:
        dw = dw.at[padding_idx].set(0)
    return {"w": dw.astype(w_dtype)}, np.zeros(x.shape, jax.dtypes.float0)


def embedding(
    num_embeddings: int,
    features: int,
    *,
    padding_idx: int | None = None,
    w_init: str | _initializers.Initializer | None = None,
    param_dtype: Any = None,
    name: str = "embedding",
) -> Layer:
    """A lookup table: integer tokens ``x [...]`` to vectors ``y = w[x]``, ``[..., features]``
    (PyTorch ``nn.Embedding``, Flax ``nn.Embed``).

    It is the dense layer of a one-hot input, ``y = onehot(x) @ w``, without forming the
    one-hot matrix. **Backward, by hand**: ``dw = onehot(x)ᵀ dy``, i.e. row ``k`` of ``dw`` is
    the sum of ``dy`` over every position where ``x = k`` — a scatter-add, so a repeated index
    sums its gradients, and a row no token used gets zero. The input is integer: its
    gradient is the ``float0`` zero (what ``jax.vjp`` gives an integer input).

    Args:
      num_embeddings: the vocabulary size ``V``; ``w`` is ``[V, features]``.
      features: the vector size.
      padding_idx: as PyTorch: this row starts at zero and never receives a gradient (on
        both paths), so a padding token maps to a constant vector.
      w_init: an initialiser (None: ``N(0, 1)``, PyTorch's).
      param_dtype: the params' dtype (default float32, float64 under ``jax_enable_x64``).
      name: how errors name the layer.

    An index outside ``[0, V)`` is refused when ``x`` is concrete; under ``jit`` it gives a row
    of NaN (never a silent clamp to the last row), and :func:`jaxnn.debug.checked` reports it.
    """
    for what, v in (("num_embeddings", num_embeddings), ("features", features)):
        if isinstance(v, bool) or not (isinstance(v, int | np.integer) and v > 0):
            raise ValueError(f"{name}: {what} must be a positive int, got {v!r}.")
    num_embeddings, features = int(num_embeddings), int(features)
    if padding_idx is not None:
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int | np.integer):
            raise TypeError(f"{name}: padding_idx must be an int or None, got {padding_idx!r}.")
        if not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(
                f"{name}: padding_idx={padding_idx} is outside the vocabulary [0, "
                f"{num_embeddings})."
            )
        padding_idx = int(padding_idx) % num_embeddings
    param_dtype = ensure_float_dtype(param_dtype, f"{name}: param_dtype", PARAM_DTYPE_HINT)
    w_fn = jax.nn.initializers.normal(1.0) if w_init is None else _initializers.get(w_init)

    def init(key: PRNGKey | None, input_shape: Shape) -> tuple[Params, State]:
        ensure_input_shape(input_shape, name)
        dtype = default_float() if param_dtype is None else param_dtype
        w = w_fn(jax.random.key(0) if key is None else key, (num_embeddings, features), dtype)
        if padding_idx is not None:
            w = w.at[padding_idx].set(0)
        return {"w": w}, {}

    def check(params: Any, x: ArrayLike) -> Array:
        if not isinstance(params, dict) or sorted(params) != ["w"]:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(
                f"{name}: params must be a dict with the key ['w'], got {got}. Use the params "
                f"that this layer's init returned."
            )
        if jnp.shape(params["w"]) != (num_embeddings, features):
            raise ValueError(
                f"{name}: w has shape {tuple(jnp.shape(params['w']))}; this layer needs "
                f"[num_embeddings, features] = ({num_embeddings}, {features})."
            )
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(
                f"{name}: x must hold integer token indices, got dtype {dtype}. Convert with "
                f"jnp.asarray(x, jnp.int32)."
            )
        if not is_traced(x):
            xv = np.asarray(x)
            bad = (xv < 0) | (xv >= num_embeddings)
            if bad.any():
                raise ValueError(
                    f"{name}: x holds {int(bad.sum())} indices outside [0, {num_embeddings}) "
                    f"(e.g. {int(xv[bad].flat[0])}); the vocabulary has {num_embeddings} rows."
                )
        else:
            require(
                jnp.all((x >= 0) & (x < num_embeddings)),
                f"{name}: x holds indices outside [0, {num_embeddings})",
            )
        return jnp.asarray(x)

    def lookup(params: Params, x: Array) -> Array:
        w = params["w"]
        if padding_idx is not None:  # the padding row is a constant: no gradient on any path
            w = w.at[padding_idx].set(lax.stop_gradient(w[padding_idx]))
        return jnp.take(w, x, axis=0, mode="fill", fill_value=jnp.nan)

    def apply(params, state, x, *, train, key=None):
        del train, key
        x = check(params, x)
        return lookup(params, x), state

    def vjp(params, state, x, *, train, key=None):
        del train, key
        x = check(params, x)
        backward = bind_backward(
            _embedding_backward, x, num_embeddings=num_embeddings, padding_idx=padding_idx,
            w_dtype=jnp.dtype(jnp.result_type(params["w"])),
        )  # fmt: skip
        return lookup(params, x), state, backward

    return Layer(name, init, apply, vjp, integer_input=True)
