"""Benchmark: an LSTM's training step over a sequence, against plain JAX and Flax linen.

::

    python benchmarks/bench_lstm.py [--batch 64] [--time 100] [--features 32] [--hidden 128]
                                    [--rounds 7] [--modes step,forward] [--only NAME[,NAME]]
                                    [--no-profile] [--quick] [--out bench_lstm.json] [--quiet]

(or ``python -m benchmarks.bench_lstm`` from the repository root) prints a table, the
breakdown of where each step's time goes, and writes the JSON report to ``--out``.
``--quick`` runs batch 4, 6 steps, 3 input features, hidden 5, two short rounds: seconds,
what the tests run. Exit status: 0 done; 2 a usage error.

**The model.** One LSTM layer (PyTorch's ``nn.LSTM``, gates ``(i, f, g, o)``, one layer,
batch first) over ``x [batch, time, features]`` from a zero initial state, its output the
hidden state at every step ``[batch, time, hidden]``; the loss the mean squared error against
fixed targets of that shape (``x`` standard normal, the targets uniform in ``[-1, 1)``);
``optax.adam(1e-3)``; float32. Default sizes batch 64, 100 steps, 32 input features, hidden
128.

**The implementations** (:data:`IMPLEMENTATIONS`), all from the same parameters (jaxnn's
``lstm_cell(hidden).init``, PyTorch's ``U(-1/√H, 1/√H)``, copied into the others):

* ``jaxnn_autodiff`` / ``jaxnn_manual`` — ``recurrent_layer(lstm_cell(hidden))`` +
  ``TrainState`` + ``make_train_step(..., grad="autodiff" | "manual")``: ``jax.grad`` of
  :func:`jaxnn.recurrent.scan`, or the hand-derived BPTT of :func:`jaxnn.recurrent.scan_vjp`;
* ``plain_jax`` — the reference: a hand-written ``lax.scan`` over time whose step computes
  ``x_t W_ih + b_ih + h W_hh + b_hh`` (the four gates in one product each, PyTorch's layout),
  ``jax.grad``, optax;
* ``plain_jax_hoisted`` — the same, but the input projection ``x W_ih + b_ih`` computed for
  all steps as one product before the loop (as cuDNN and jaxnn do): what hoisting costs or
  saves here;
* ``flax_lstm`` / ``flax_optimized_lstm`` — ``nn.RNN(nn.LSTMCell(hidden))`` and
  ``nn.RNN(nn.OptimizedLSTMCell(hidden))`` (the second concatenates the four gates' kernels
  into one product per step), where Flax is installed (the ``bench`` extra); otherwise listed
  under ``skipped``. Flax's cell has one bias per gate (on the recurrent product); it gets
  ``b_ih + b_hh``, so it computes the same function with ``4·hidden`` fewer parameters.

**Two measurements** (``--modes``): ``step``, the jitted training step with its carried state
(params and Adam's moments) donated; ``forward``, the jitted forward and loss alone (the same
computation for both jaxnn paths).

**What is measured** in each: the first call (trace, compile and one call); then ``R`` rounds
(default 7), in each of which every implementation makes ``K`` calls (``K`` fixed from the
warm-up so that they last about 0.2 s), the order rotating by one place each round, timed up
to ``block_until_ready``. Per implementation: the median ms per call, and the ratios to Flax
(to the faster of the two Flax cells, by median, named in the table) and to plain JAX,
computed within each round (min, median, max over rounds).

**Where the time goes** (``--no-profile`` leaves it out). After the rounds, each
implementation's step runs 5 more times, each under ``jax.profiler``, and the trace of the
median one (by its time) is split (:func:`breakdown`): the time of each ``while`` loop the
compiled step runs (a step runs two, the forward scan and then the backward reverse scan, by
``jax.grad`` of a scan and by the hand BPTT alike) and of the operations outside the loops
(a hoisted product, weight gradients' products over all steps, Adam, copies), with the
costliest operations inside and outside the loops by their HLO names. The profiler adds a
little time to every operation, so these times are a share, not the step's time.

**The agreement check.** Before the timing, every implementation computes the loss and its
gradient w.r.t. the parameters at the initial parameters on a small batch in float64, and
they are compared with plain JAX's (Flax's bias gradient with those of ``b_ih`` and
``b_hh``, which are equal): they may differ by rounding only, bounded by
:func:`agreement_tolerance`.

The harness is ``bench_step.py``'s (its timing loop, statistics and command-line helpers are
imported from there); :func:`run` returns the report (a JSON-able dict with keys ``meta``,
``results``, ``breakdown``, ``skipped``); :func:`table` formats it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # run as a file: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from benchmarks.bench_step import (
    LEARNING_RATE,
    BenchError,
    _cannot_import,
    _check_out_file,
    _count,
    _fmt,
    _Impl,
    _Parser,
    _rounds,
    _run_steps,
    _stats,
    _versions,
)
from jaxnn.backprop import manual
from jaxnn.backprop import value_and_grad as jaxnn_value_and_grad
from jaxnn.recurrent import lstm_cell, recurrent_layer
from jaxnn.train import TrainState, make_train_step

IMPLEMENTATIONS = (
    "jaxnn_autodiff",
    "jaxnn_manual",
    "plain_jax",
    "plain_jax_hoisted",
    "flax_lstm",
    "flax_optimized_lstm",
)
REFERENCE = "plain_jax"
FLAX = ("flax_lstm", "flax_optimized_lstm")
MODES = ("step", "forward")
LOSS = "mean_squared_error"
_GATES = ("i", "f", "g", "o")  # PyTorch's order of the four gate blocks
_INSTALL_PEERS = "install the bench extra: pip install -e '.[bench]'"


class LstmConfig(NamedTuple):
    """What to run; :func:`quick_config` gives the test's scaled-down one."""

    batch: int = 64
    time: int = 100  # sequence length
    features: int = 32  # the input's features
    hidden: int = 128
    rounds: int = 7
    modes: tuple[str, ...] = MODES
    only: tuple[str, ...] = IMPLEMENTATIONS  # plain_jax is always added
    min_time: float = 0.2  # seconds each implementation runs per round (sets K)
    max_calls: int = 10_000  # an upper bound on K
    check_batch: int = 4  # the float64 agreement check's batch (its length is `time`)
    profile: bool = True  # the breakdown of where the step's time goes
    profile_calls: int = 5  # steps profiled (one trace each) per implementation
    seed: int = 0
    quick: bool = False


def quick_config(**changes: Any) -> LstmConfig:
    """Batch 4, 6 steps, 3 features, hidden 5, 2 rounds of at most 2 calls: seconds."""
    quick = LstmConfig(
        batch=4,
        time=6,
        features=3,
        hidden=5,
        rounds=2,
        min_time=0.002,
        max_calls=2,
        check_batch=2,
        profile_calls=1,
        quick=True,
    )
    return quick._replace(**changes)


Weights = dict[str, np.ndarray]  # jaxnn's (= PyTorch's, transposed) w_ih, w_hh, b_ih, b_hh


class _Model(NamedTuple):
    """One implementation's model: its params and its differentiable loss."""

    params: Any  # in its own layout, in the dtype asked
    loss: Callable[[Any, Any, Any], Any]  # (params, x, targets) -> scalar; jax.grad-able
    common: Callable[[Any], dict[str, Any]]  # its gradient -> jaxnn's layout
    # (params, x, targets) -> (loss, grads): jax.value_and_grad(loss) unless given
    value_and_grad: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None


# ----------------------------------------------------------------------------- jaxnn


def _jaxnn_layer(cfg: LstmConfig):
    return recurrent_layer(lstm_cell(cfg.hidden))


def _initial_weights(cfg: LstmConfig) -> Weights:
    """jaxnn's initialisation (``lstm_cell(hidden).init`` with key ``seed``), as numpy."""
    params = jax.jit(lstm_cell(cfg.hidden).init, static_argnums=1)(
        jax.random.key(cfg.seed), cfg.features
    )
    return {k: np.array(v) for k, v in params.items()}


def _jaxnn_model(grad: str):
    def model(cfg: LstmConfig, weights: Weights, dtype: Any) -> _Model:
        layer = _jaxnn_layer(cfg)
        applied = manual(layer) if grad == "manual" else layer
        mse = _mse

        def loss(params, x, y):
            ys, _ = applied.apply(params, {}, x, train=True)
            return mse(ys, y)

        vg = jaxnn_value_and_grad(layer, LOSS, grad=grad)

        def value_and_grad(params, x, y):
            (value, _), grads = vg(params, {}, x, y, train=True)
            return value, grads

        params = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
        return _Model(params, loss, lambda g: dict(g), value_and_grad)

    return model


def _build_jaxnn(grad: str):
    def build(cfg: LstmConfig, weights: Weights, dtype: Any, mode: str) -> _Impl:
        if mode == "forward":
            return _forward_impl(_jaxnn_model(grad)(cfg, weights, dtype), dtype)
        layer, opt = _jaxnn_layer(cfg), optax.adam(LEARNING_RATE)
        params = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
        fresh = TrainState.create(layer, opt, jax.random.key(cfg.seed), params=params, state={})
        step = make_train_step(layer, LOSS, opt, grad=grad)
        return _Impl(
            fresh, step, _inputs(dtype), jax.block_until_ready, step.lower,
            carried=lambda ts: ts[:-1],
        )  # fmt: skip

    return build


# ----------------------------------------------------------------------------- plain JAX


def _mse(ys, targets):
    return jnp.mean((ys - targets) ** 2)


def _inputs(dtype: Any) -> Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]:
    return lambda x, y: (jnp.asarray(x, dtype), jnp.asarray(y, dtype))


def _lstm_gates(a, c):
    """``(h', c')`` from the pre-activations ``a [B, 4H]`` (PyTorch's i, f, g, o)."""
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def plain_lstm(params: dict[str, Any], x: Any, *, hoisted: bool = False) -> Any:
    """The LSTM over ``x [B, T, I]`` written out: ``ys [B, T, H]`` from a zero state.

    ``hoisted=False`` computes ``x_t W_ih`` inside the loop, step by step (as Flax does);
    ``True`` computes ``x W_ih + b_ih`` for all steps as one product before the loop.
    """
    w_ih, w_hh, b_ih, b_hh = (params[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
    hidden = w_hh.shape[0]
    xs = jnp.swapaxes(x, 0, 1)  # [T, B, I]
    if hoisted:
        xs = xs @ w_ih + b_ih  # [T, B, 4H]

    def body(carry, x_t):
        h, c = carry
        a = (x_t if hoisted else x_t @ w_ih + b_ih) + h @ w_hh + b_hh
        h, c = _lstm_gates(a, c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[0], hidden), jnp.result_type(x, w_hh))
    _, hs = lax.scan(body, (zeros, zeros), xs)
    return jnp.swapaxes(hs, 0, 1)


def _plain_model(hoisted: bool):
    def model(cfg: LstmConfig, weights: Weights, dtype: Any) -> _Model:
        params = {k: jnp.asarray(v, dtype) for k, v in weights.items()}

        def loss(params, x, y):
            return _mse(plain_lstm(params, x, hoisted=hoisted), y)

        return _Model(params, loss, lambda g: dict(g))

    return model


# ----------------------------------------------------------------------------- Flax


def _flax_model(optimized: bool):
    def model(cfg: LstmConfig, weights: Weights, dtype: Any) -> _Model:
        import flax.linen as nn

        cell = (nn.OptimizedLSTMCell if optimized else nn.LSTMCell)(cfg.hidden, param_dtype=dtype)
        rnn = nn.RNN(cell)  # batch first, a zero initial carry, every step's output
        h = cfg.hidden
        block = {g: slice(k * h, (k + 1) * h) for k, g in enumerate(_GATES)}
        # Flax's one bias per gate; summed in float64 (exact for two float32 numbers), as
        # the others' b_ih + b_hh in the float64 check
        bias = weights["b_ih"].astype(np.float64) + weights["b_hh"]
        params = {"cell": {}}
        for g, s in block.items():
            params["cell"][f"i{g}"] = {"kernel": jnp.asarray(weights["w_ih"][:, s], dtype)}
            params["cell"][f"h{g}"] = {
                "kernel": jnp.asarray(weights["w_hh"][:, s], dtype),
                "bias": jnp.asarray(bias[s], dtype),
            }

        def loss(params, x, y):
            return _mse(rnn.apply({"params": params}, x), y)

        def common(grads):
            p = grads["cell"]
            b = jnp.concatenate([p[f"h{g}"]["bias"] for g in _GATES])
            return {
                "w_ih": jnp.concatenate([p[f"i{g}"]["kernel"] for g in _GATES], axis=1),
                "w_hh": jnp.concatenate([p[f"h{g}"]["kernel"] for g in _GATES], axis=1),
                "b_ih": b,  # ∂L/∂b_ih = ∂L/∂b_hh = ∂L/∂(b_ih + b_hh)
                "b_hh": b,
            }

        return _Model(params, loss, common)

    return model


# ----------------------------------------------------------------------------- step, forward


def _step_impl(model: _Model, dtype: Any) -> _Impl:
    opt = optax.adam(LEARNING_RATE)

    def step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(model.loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    jitted = jax.jit(step, donate_argnums=0)
    state = (model.params, opt.init(model.params))
    return _Impl(state, jitted, _inputs(dtype), jax.block_until_ready, jitted.lower)


def _forward_impl(model: _Model, dtype: Any) -> _Impl:
    """The forward and the loss alone; the params are passed through (not donated)."""
    forward = jax.jit(model.loss)

    def step(params, x, y):
        return params, forward(params, x, y)

    return _Impl(
        model.params, step, _inputs(dtype), jax.block_until_ready,
        lambda params, x, y: forward.lower(params, x, y),
    )  # fmt: skip


def _build_peer(make_model: Callable[..., _Model]):
    def build(cfg: LstmConfig, weights: Weights, dtype: Any, mode: str) -> _Impl:
        model = make_model(cfg, weights, dtype)
        return _step_impl(model, dtype) if mode == "step" else _forward_impl(model, dtype)

    return build


_MODELS: dict[str, Callable[..., _Model]] = {
    "jaxnn_autodiff": _jaxnn_model("autodiff"),
    "jaxnn_manual": _jaxnn_model("manual"),
    "plain_jax": _plain_model(hoisted=False),
    "plain_jax_hoisted": _plain_model(hoisted=True),
    "flax_lstm": _flax_model(optimized=False),
    "flax_optimized_lstm": _flax_model(optimized=True),
}
_BUILDERS: dict[str, Callable[..., _Impl]] = {
    "jaxnn_autodiff": _build_jaxnn("autodiff"),
    "jaxnn_manual": _build_jaxnn("manual"),
    **{name: _build_peer(_MODELS[name]) for name in IMPLEMENTATIONS if name[:5] != "jaxnn"},
}


# ----------------------------------------------------------------------------- selection


def _select(cfg: LstmConfig) -> tuple[list[str], list[dict[str, str]]]:
    """The implementations to run, in :data:`IMPLEMENTATIONS` order, and the skipped ones."""
    for what, given, known in (
        ("implementation", cfg.only, IMPLEMENTATIONS),
        ("mode", cfg.modes, MODES),
    ):
        unknown = [n for n in given if n not in known]
        if unknown or not given:
            raise BenchError(
                f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; expected names "
                f"from {', '.join(known)}."
            )
    sizes = {k: getattr(cfg, k) for k in ("batch", "time", "features", "hidden", "check_batch")}
    if min(sizes.values()) < 1:
        raise BenchError(f"sizes must be >= 1, got {sizes}.")
    chosen, skipped = [], []
    for name in IMPLEMENTATIONS:
        if name not in cfg.only and name != REFERENCE:
            skipped.append({"implementation": name, "reason": "not selected (--only)"})
        elif name in FLAX and (problem := _cannot_import("flax")):
            skipped.append({"implementation": name, "reason": problem})
        else:
            chosen.append(name)
    return chosen, skipped


# ----------------------------------------------------------------------------- measurement


def _data(cfg: LstmConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + batch)
    x = rng.standard_normal((batch, cfg.time, cfg.features), dtype=np.float32)
    y = rng.uniform(-1.0, 1.0, (batch, cfg.time, cfg.hidden)).astype(np.float32)
    return x, y


def _prepare(
    cfg: LstmConfig, name: str, weights: Weights, mode: str, log: Callable[[str], None]
) -> tuple[_Impl, Any, tuple[Any, Any], dict[str, Any]]:
    """Build ``name``, time its first call, warm it up: ``(impl, state, (x, y), entry)``."""
    log(f"{mode}: {name}: building and compiling")
    impl = _BUILDERS[name](cfg, weights, jnp.float32, mode)
    x, y = impl.inputs(*_data(cfg, cfg.batch))
    start = time.perf_counter()
    state, loss = impl.step(impl.state, x, y)
    impl.block((state, loss))
    first = time.perf_counter() - start
    state, _, t_warm = _run_steps(impl, state, x, y, 2)
    entry = {
        "compile_s": max(first - t_warm / 2, 0.0),  # trace + compile, less one warm call
        "first_call_s": first,
        "calls_per_round": _count(cfg.min_time, cfg.max_calls, t_warm / 2),
        "loss_first": float(loss),
    }
    return impl, state, (x, y), entry


def _ratios(times: list[float], ref: list[float] | None) -> dict[str, float] | None:
    return None if ref is None else _stats([t / r for t, r in zip(times, ref, strict=True)])


def _bench(
    cfg: LstmConfig, names: list[str], weights: Weights, mode: str, log: Callable[[str], None]
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Time ``mode``: ``(entries, the Flax reference's name or None, (impls, states, data))``."""
    impls, states, data, entry = {}, {}, {}, {}
    for name in names:
        impls[name], states[name], data[name], entry[name] = _prepare(cfg, name, weights, mode, log)
    times: dict[str, list[float]] = {n: [] for n in names}  # s/call, one per round
    last_loss: dict[str, Any] = {}
    for r in range(cfg.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        log(f"{mode}: round {r + 1}/{cfg.rounds}")
        for name in order:
            k = entry[name]["calls_per_round"]
            states[name], last_loss[name], t = _run_steps(impls[name], states[name], *data[name], k)
            times[name].append(t / k)
    flax = [n for n in FLAX if n in names]
    peer = min(flax, key=lambda n: statistics.median(times[n])) if flax else None
    for name in names:
        info = entry[name]
        info["ms"] = 1e3 * statistics.median(times[name])
        info["ms_rounds"] = [1e3 * t for t in times[name]]
        info["ratio_to_flax"] = _ratios(times[name], times.get(peer))
        info["ratio_to_plain_jax"] = _ratios(times[name], times[REFERENCE])
        info["loss_last"] = float(last_loss[name])
    return entry, peer, {"impls": impls, "states": states, "data": data}


# ----------------------------------------------------------------------------- where the time goes

_OP = re.compile(r"[A-Za-z_][\w.-]*")  # an HLO instruction's name (not a runtime's event)
_WHILE = re.compile(r"while(\.\d+)?")


class _Event(NamedTuple):
    name: str
    start: int  # ns
    end: int


def _trace_events(run: Callable[[], None], folder: str) -> list[_Event]:
    """The events of ``run()``'s HLO operations under ``jax.profiler`` (all threads)."""
    from jax.profiler import ProfileData  # raises where this jax has no reader

    jax.profiler.start_trace(folder)
    try:
        run()
    finally:
        jax.profiler.stop_trace()
    files = sorted(Path(folder).rglob("*.xplane.pb"))
    if not files:
        raise RuntimeError("jax.profiler wrote no trace")
    events = []
    for plane in ProfileData.from_file(str(files[-1])).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for e in line.events:
                if _OP.fullmatch(e.name):
                    events.append(_Event(e.name, e.start_ns, e.start_ns + e.duration_ns))
    return sorted(events, key=lambda e: e.start)


def _one_call(events: Sequence[_Event], steps: int) -> dict[str, Any] | None:
    """One profiled call's split (ns): its wall time, each loop's, the ops' times."""
    events = sorted(events, key=lambda e: e.start)
    whiles = [e for e in events if _WHILE.fullmatch(e.name)]
    ops = [e for e in events if not _WHILE.fullmatch(e.name)]
    if not ops:
        return None
    counts = collections.Counter(e.name for e in ops)
    last = max(e.end for e in events)
    bounds = [w.start for w in whiles] + [last + 1]
    loops, in_loop = [], set()
    for k, w in enumerate(whiles):
        body = [e for e in ops if bounds[k] <= e.start < bounds[k + 1] and counts[e.name] >= steps]
        in_loop.update(id(e) for e in body)
        times: collections.Counter = collections.Counter()
        for e in body:
            times[e.name] += e.end - e.start
        loops.append({"ns": max([w.end, *(e.end for e in body)]) - w.start, "ops": times})
    outside: collections.Counter = collections.Counter()
    for e in ops:
        if id(e) not in in_loop:
            outside[e.name] += e.end - e.start
    return {"ns": last - ops[0].start, "loops": loops, "outside": outside}


def breakdown(calls: Sequence[Sequence[_Event]], steps: int) -> dict[str, Any]:
    """Where the time of a step goes, from the profiled events of each of its ``calls``.

    Per call: its wall time (first operation's start to the last one's end); each ``while``
    loop's (in the order they ran: a step's forward scan, then its backward scan), from the
    loop's start to the end of the last operation of its body; and the rest, the operations
    outside the loops. A loop's body is the operations that start between the loop's start
    and the next loop's and run at least ``steps`` times in the call (once an iteration).
    (The loop's own event may end before its body does: XLA:CPU runs a loop asynchronously.)
    Returns the split of the median call (by wall time; the lower median of an even number),
    in ms, with the costliest operations by name inside each loop (µs per iteration) and
    outside (ms), and every call's wall time.
    """
    split = [c for c in (_one_call(events, steps) for events in calls) if c is not None]
    if not split:
        raise RuntimeError("the trace holds no operation of the step")
    median = sorted(split, key=lambda c: c["ns"])[(len(split) - 1) // 2]
    loops = median["loops"]
    labels = (
        ["forward scan", "backward scan"]
        if len(loops) == 2
        else [f"loop {k + 1}" for k in range(len(loops))]
    )
    return {
        "calls": len(split),
        "calls_ms": [c["ns"] / 1e6 for c in split],
        "total_ms": median["ns"] / 1e6,
        "loops": [
            {
                "label": label,
                "ms": loop["ns"] / 1e6,
                "us_per_iteration": loop["ns"] / steps / 1e3,
                "top_us_per_iteration": [
                    [op, ns / steps / 1e3] for op, ns in loop["ops"].most_common(4)
                ],
            }
            for label, loop in zip(labels, loops, strict=True)
        ],
        "outside_ms": (median["ns"] - sum(loop["ns"] for loop in loops)) / 1e6,
        "top_outside_ms": [[op, ns / 1e6] for op, ns in median["outside"].most_common(5)],
    }


def _profile(
    cfg: LstmConfig, names: list[str], timed: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """Each implementation's step under the profiler, one trace a call: :func:`breakdown`,
    or why not."""
    out: dict[str, Any] = {}
    for name in names:
        impl, data = timed["impls"][name], timed["data"][name]
        log(f"profile: {name}")
        holder = [timed["states"][name]]

        def run(impl=impl, data=data, holder=holder):
            holder[0], loss = impl.step(holder[0], *data)
            impl.block((holder[0], loss))

        try:
            calls = []
            for _ in range(cfg.profile_calls):
                with tempfile.TemporaryDirectory() as folder:
                    calls.append(_trace_events(run, folder))
            out[name] = breakdown(calls, cfg.time)
        except Exception as e:  # the breakdown is optional: say why not
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        timed["states"][name] = holder[0]
    return out


# ----------------------------------------------------------------------------- agreement


def agreement_tolerance(*, batch: int, time: int, features: int, hidden: int) -> float:
    """The largest relative difference float64 rounding explains between two implementations'
    loss or gradient (relative to the largest gradient element, or to the loss).

    Every gradient element is a sum over the ``batch · time`` (example, step) pairs of terms
    each built from products of length ``features + hidden`` (a gate's pre-activation); a sum
    of ``n`` terms in any order is off by at most ``n·u`` times the sum of their magnitudes
    (Higham 2002, §3.1), ``u = 2⁻⁵³``; the loss likewise sums ``batch · time · hidden``
    squares. ``n = batch · time · (features + hidden)`` bounds both, at magnitude 1.
    """
    return batch * time * (features + hidden) * 2.0**-53


def _agreement(
    cfg: LstmConfig, names: list[str], weights: Weights, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every implementation's loss and gradient at the initial parameters, in float64."""
    x_np, y_np = _data(cfg, cfg.check_batch)
    losses, grads = {}, {}
    with jax.enable_x64(True):
        log(f"agreement (float64, batch {cfg.check_batch}): {', '.join(names)}")
        x, y = jnp.asarray(x_np, jnp.float64), jnp.asarray(y_np, jnp.float64)
        for name in names:
            model = _MODELS[name](cfg, weights, jnp.float64)
            vg = model.value_and_grad or jax.value_and_grad(model.loss)
            loss, g = jax.jit(vg)(model.params, x, y)
            losses[name] = float(loss)
            grads[name] = {k: np.asarray(v) for k, v in model.common(g).items()}
    ref_loss, ref = losses[REFERENCE], grads[REFERENCE]
    scale = max(float(np.abs(g).max()) for g in ref.values())
    diffs = {
        name: {
            "loss": abs(losses[name] - ref_loss) / abs(ref_loss),
            "grads": max(float(np.abs(g[k] - ref[k]).max()) for k in ref) / scale,
        }
        for name, g in grads.items()
    }
    return {
        "dtype": "float64",
        "batch": cfg.check_batch,
        "time": cfg.time,
        "losses": losses,
        "max_grad": scale,
        "relative_diff_to_plain_jax": diffs,
        "tolerance": agreement_tolerance(
            batch=cfg.check_batch, time=cfg.time, features=cfg.features, hidden=cfg.hidden
        ),
    }


# ----------------------------------------------------------------------------- the run


def _meta(cfg: LstmConfig, names: list[str]) -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "versions": _versions(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "model": {
            "layer": f"recurrent_layer(lstm_cell({cfg.hidden}))",
            "loss": LOSS,
            "optimizer": f"adam({LEARNING_RATE:g})",
        },
        "dtype": "float32",
        "batch": cfg.batch,
        "time": cfg.time,
        "features": cfg.features,
        "hidden": cfg.hidden,
        "modes": list(cfg.modes),
        "rounds": cfg.rounds,
        "min_time_s": cfg.min_time,
        "quick": cfg.quick,
        "implementations": names,
        "reference": REFERENCE,
    }


def run(cfg: LstmConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module docstring).

    Raises:
      BenchError: an unknown implementation or mode, a size below 1.
    """
    log = log or (lambda line: None)
    names, skipped = _select(cfg)
    results, profile = [], {}
    # The benchmark's dtypes, whatever the caller's jax_enable_x64 (the tests turn it on).
    with jax.enable_x64(False):
        meta = _meta(cfg, names)
        weights = _initial_weights(cfg)
        meta["agreement"] = _agreement(cfg, names, weights, log)
        for mode in cfg.modes:
            entry, peer, timed = _bench(cfg, names, weights, mode, log)
            results.append({"mode": mode, "flax_reference": peer, "implementations": entry})
            if mode == "step" and cfg.profile:
                profile = _profile(cfg, names, timed, log)
        meta["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"meta": meta, "results": results, "breakdown": profile, "skipped": skipped}


def table(report: dict[str, Any]) -> str:
    """The report as text: the timings, then where each step's time goes."""
    meta = report["meta"]
    header = (
        "mode", "implementation", "ms", "x flax min", "med", "max", "x plain min", "med",
        "max", "compile s",
    )  # fmt: skip
    rows = [header]
    for result in report["results"]:
        for name, info in result["implementations"].items():
            flax, plain = info["ratio_to_flax"] or {}, info["ratio_to_plain_jax"]
            rows.append(
                (
                    result["mode"],
                    name,
                    f"{info['ms']:.2f}",
                    *(_fmt(flax.get(k), ".2f") for k in ("min", "median", "max")),
                    *(f"{plain[k]:.2f}" for k in ("min", "median", "max")),
                    f"{info['compile_s']:.2f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    load = meta.get("load_average")
    lines = [
        f"bench_lstm: jax {meta['versions']['jax']} on {meta['backend']} "
        f"({meta['device_kind']}, {meta['cpu_count']} CPUs"
        + (f", load {load[0]:.2f}" if load else "")
        + f"), float32, LSTM batch {meta['batch']}, length {meta['time']}, features "
        f"{meta['features']}, hidden {meta['hidden']}, {meta['model']['loss']}, "
        f"{meta['model']['optimizer']}, {meta['rounds']} rounds"
    ]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True)))
        )  # fmt: skip
    for result in report["results"]:
        if result["flax_reference"]:
            lines.append(f"x flax ({result['mode']}): per round, to {result['flax_reference']}")
    agreement = meta["agreement"]
    worst = max(max(d.values()) for d in agreement["relative_diff_to_plain_jax"].values())
    lines.append(
        f"agreement (float64, batch {agreement['batch']}, length {agreement['time']}, the "
        f"initial parameters): max relative |loss or gradient - plain_jax's| {worst:.1e} "
        f"(rounding bound {agreement['tolerance']:.1e})"
    )
    for s in report["skipped"]:
        lines.append(f"skipped {s['implementation']}: {s['reason']}")
    if report["breakdown"]:
        lines.append("")
        lines.append(
            "where a step's time goes (profiled; ms per step, in-loop ops in us per iteration):"
        )
        for name, b in report["breakdown"].items():
            if "error" in b:
                lines.append(f"  {name}: no breakdown ({b['error']})")
                continue
            parts = [f"{loop['label']} {loop['ms']:.2f}" for loop in b["loops"]]
            parts.append(f"outside the loops {b['outside_ms']:.2f}")
            lines.append(f"  {name}: {b['total_ms']:.2f} = " + " + ".join(parts))
            for loop in b["loops"]:
                ops = ", ".join(f"{op} {us:.0f}" for op, us in loop["top_us_per_iteration"])
                lines.append(f"      in {loop['label']}: {ops}")
            ops = ", ".join(f"{op} {ms:.2f}" for op, ms in b["top_outside_ms"])
            lines.append(f"      outside: {ops}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def _size(text: str) -> int:
    """argparse type of a size: a whole number >= 1."""
    return _rounds(text)


def _names(known: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """argparse type: names from ``known`` separated by commas."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names or any(n not in known for n in names):
            raise argparse.ArgumentTypeError(
                f"expected {what} from {','.join(known)}, got {text!r}"
            )
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(
        prog="python benchmarks/bench_lstm.py",
        description="Time an LSTM's training step over a sequence (forward, backpropagation "
        "through time, Adam): jaxnn (autodiff and hand-derived BPTT) against plain JAX and, "
        "where installed, Flax linen's LSTM cells, interleaved; then where each step's time "
        "goes. Prints a table and writes the JSON report.",
    )
    a = p.add_argument
    a("-q", "--quiet", action="store_true",
      help="no progress on stderr (progress shows only when stderr is a terminal)")  # fmt: skip
    for option, default, quick in (
        ("--batch", 64, 4), ("--time", 100, 6), ("--features", 32, 3), ("--hidden", 128, 5),
    ):  # fmt: skip
        a(option, type=_size, default=None, metavar="N",
          help=f"a whole number >= 1 (default: {default}; with --quick {quick})")  # fmt: skip
    a("--rounds", type=_rounds, default=None, metavar="N",
      help="timed rounds, a whole number >= 1 (default: 7; with --quick 2)")  # fmt: skip
    a("--modes", type=_names(MODES, "modes"), default=None, metavar="MODE,MODE",
      help="step (the training step) and/or forward (the forward and loss alone) "
      "(default: step,forward)")  # fmt: skip
    a("--only", type=_names(IMPLEMENTATIONS, "implementation names"), default=None,
      metavar="NAME[,NAME]",
      help="only these implementations (plain_jax, the reference, always runs)")  # fmt: skip
    a("--no-profile", action="store_true",
      help="leave out where the step's time goes (the profiled breakdown)")  # fmt: skip
    a("--out", default="bench_lstm.json", metavar="FILE",
      help="the JSON report (default: bench_lstm.json)")  # fmt: skip
    a("--quick", action="store_true",
      help="batch 4, length 6, features 3, hidden 5, 2 short rounds (the tests run it)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors exit through argparse (``SystemExit(2)``), as ``--help`` does
    (``SystemExit(0)``).
    """
    args = parser().parse_args(argv)
    problem = _check_out_file(args.out)
    if problem:
        print(f"bench_lstm: {problem}", file=sys.stderr)
        return 2
    config = quick_config() if args.quick else LstmConfig()
    given = {
        k: getattr(args, k)
        for k in ("batch", "time", "features", "hidden", "rounds", "modes", "only")
    }
    config = config._replace(**{k: v for k, v in given.items() if v})
    if args.no_profile:
        config = config._replace(profile=False)
    show = not args.quiet and sys.stderr.isatty()
    try:
        report = run(config, log=lambda line: print(line, file=sys.stderr) if show else None)
    except BenchError as e:
        print(f"bench_lstm: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
