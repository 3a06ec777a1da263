"""Benchmark: one training step of one model, timed against plain JAX, bare matmuls and peers.

::

    python benchmarks/bench_step.py [--batches 128,1024,16384] [--rounds 7] [--dtype bfloat16]
                                    [--only NAME[,NAME]] [--quick] [--out bench.json] [--quiet]

(or ``python -m benchmarks.bench_step`` from the repository root) prints a table and writes
the JSON report to ``--out``. ``--quick`` runs a 784-32-32-10 model at batches 8 and 16, two
short rounds: seconds, what the tests run. Exit status: 0 done; 2 a usage error (an option out
of range, an ``--out`` that is a folder or cannot be written, bfloat16 asked of a jaxnn without
``mlp(compute_dtype=...)``).

**The model.** An MLP ``784-512-512-10``, each hidden layer ``dense -> BatchNorm -> ReLU``
(the dense layer without bias, BatchNorm ``eps = 1e-5``, running statistics with weight 0.1
for the new batch; the running variance is stored unbiased by jaxnn, plain JAX and PyTorch,
biased by Flax and Equinox, which no training step reads), softmax cross-entropy with
integer labels averaged over the batch, Adam (``optax.adam(1e-3)``: ``β₁ = 0.9,
β₂ = 0.999, ε = 1e-8``), float32. The data is one fixed
random batch, ``x [batch, 784]`` standard normal and ``y [batch]`` uniform in ``[0, 10)``.

**The implementations** (:data:`IMPLEMENTATIONS`), each ``step(state, x, y) -> (state, loss)``
(the JAX ones jitted with the carried state donated), all starting from the same initial
parameters (jaxnn's Glorot-uniform kernels, ``gamma = 1``, ``beta = 0``, zero output bias):

* ``jaxnn_autodiff`` / ``jaxnn_manual`` — ``jaxnn.mlp`` + ``TrainState`` +
  ``make_train_step(..., grad="autodiff" | "manual")``, as docs/training.md writes them;
* ``plain_jax`` — the reference: a dict of kernels, BatchNorm in a few ``jnp`` lines,
  ``jax.value_and_grad(has_aux=True)``, optax, ``jax.jit(step, donate_argnums=0)``;
* ``matmuls`` — only the step's 8 matrix products (forward ``x W₁, h₁ W₂, h₂ W₃``; backward
  ``dW = hᵀ δ`` for the 3 layers and ``δ Wᵀ`` for the upper 2), jitted: the ceiling;
* ``flax_linen``, ``equinox``, ``torch`` (eager; on a CUDA GPU where there is one, else on
  the CPU with its default thread count) — where installed (the ``bench`` extra); otherwise
  listed under ``skipped`` with the reason.

**What is measured**, per batch size (default 128, 1024, 16384): the first call (trace,
compile and one step: *compile s*); then ``R`` rounds (default 7), in each of which every
implementation runs ``K`` steps (``K`` fixed from the warm-up so that they last about
0.2 s), the order rotating by one place each round, the time taken up to
``block_until_ready`` of the last step. Per implementation: the median ms/step; the ratio
``t_impl / t_plain_jax`` computed within each round (min, median, max over rounds: a ratio
from one round shares that round's machine state); the fraction of the matmuls' throughput
``t_matmuls / t_impl``, per round likewise. The host overhead per call is the time of a
jitted identity on the implementation's carried state, called as its step calls its compiled
computation (donated: every call dispatches an executable, which hands every buffer through;
for jaxnn, the state but the run's key, which the step passes in only where a layer draws
from it and never returns): its cost grows with the number of pytree leaves and nodes, which
are reported too. Memory: XLA's ``memory_analysis()`` of the compiled step
(argument, output, alias and temporary bytes), and on a GPU the device's peak bytes in use
(the process's peak so far, so after each batch size it covers every implementation).

**The agreement check.** Before the timing, every implementation but the matmuls runs a few
steps on one batch from the same parameters in float64, and the losses are compared with
plain JAX's: they may differ by rounding only, bounded by :func:`agreement_tolerance`. It
shows that the timed implementations compute the same model. In float32 no such bound
exists: Adam's step ``lr · m̂/(√v̂ + ε)`` moves a parameter by about ``lr · sign(g)`` for any
gradient far above ``ε = 1e-8``, so a rounding difference that flips the sign of a near-zero
gradient element moves it by ``2 lr``.

With ``dtype="bfloat16"`` jaxnn runs ``mlp(..., compute_dtype=jnp.bfloat16)`` and plain JAX
casts ``x`` and the kernels to bfloat16 for the products (float32 master weights, BatchNorm
statistics in float32 with a bfloat16 output, the logits and the loss in float32); the matmuls
run on bfloat16 operands; the peers are skipped.

:func:`run` returns the report (a JSON-able dict with keys ``meta``, ``results``,
``skipped``); :func:`table` formats it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn.combinators import layer_keys
from jaxnn.networks import mlp
from jaxnn.train import TrainState, make_train_step

IMPLEMENTATIONS = (
    "jaxnn_autodiff",
    "jaxnn_manual",
    "plain_jax",
    "matmuls",
    "flax_linen",
    "equinox",
    "torch",
)
REFERENCE = "plain_jax"
CEILING = "matmuls"
PEERS = ("flax_linen", "equinox", "torch")
DTYPES = ("float32", "bfloat16")
LOSS = "softmax_cross_entropy_with_integer_labels"
LEARNING_RATE = 1e-3
ADAM_EPS = 1e-8  # optax.adam's and torch.optim.Adam's default
BN_EPS = 1e-5
BN_NEW_WEIGHT = 0.1  # running ← 0.9 · running + 0.1 · batch (PyTorch momentum 0.1, Flax 0.9)
_INSTALL_PEERS = "install the bench extra: pip install -e '.[bench]'"


class BenchError(ValueError):
    """A benchmark that cannot run as asked (the message says why and what to do)."""


class BenchConfig(NamedTuple):
    """What to run; :func:`quick_config` gives the test's scaled-down one."""

    batches: tuple[int, ...] = (128, 1024, 16384)
    rounds: int = 7
    dtype: str = "float32"  # "float32" or "bfloat16" (the matmuls' dtype)
    only: tuple[str, ...] = IMPLEMENTATIONS  # plain_jax is always added
    in_features: int = 784
    features: tuple[int, ...] = (512, 512, 10)  # the dense layers' units; the last: classes
    min_time: float = 0.2  # seconds each implementation runs per round (sets K)
    max_steps: int = 10_000  # an upper bound on K
    check_steps: int = 5  # steps of the float64 agreement check
    seed: int = 0
    quick: bool = False
    # PyTorch's intra-op threads; None leaves its default (one per core). Quick mode uses 1:
    # on a loaded machine its spin-waiting OpenMP threads can make a tiny step 100x slower.
    torch_threads: int | None = None


def quick_config(**changes: Any) -> BenchConfig:
    """Batches 8 and 16, a 784-32-32-10 model, 2 rounds of at most 3 steps: seconds, for tests."""
    quick = BenchConfig(
        batches=(8, 16),
        rounds=2,
        features=(32, 32, 10),
        min_time=0.002,
        max_steps=3,
        check_steps=3,
        torch_threads=1,
        quick=True,
    )
    return quick._replace(**changes)


class _Impl(NamedTuple):
    """One implementation, built for one batch shape and dtype."""

    state: Any  # the fresh carried state
    step: Callable[[Any, Any, Any], tuple[Any, Any]]  # donates its first argument
    inputs: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]  # numpy batch -> step's (x, y)
    block: Callable[[Any], Any]  # waits until a step's outputs are computed
    lower: Callable[..., Any] | None = None  # (state, x, y) -> jax Lowered (JAX steps only)
    identity: Callable[[Any], Any] | None = None  # jitted identity of the state, donated
    loss: Callable[[Any], float | None] = lambda loss: float(loss)
    carried: Callable[[Any], Any] = lambda state: state  # what crosses the jit boundary


class _Weights(NamedTuple):
    """The initial parameters every implementation starts from (float32)."""

    kernels: tuple[np.ndarray, ...]  # [in, out] per dense layer
    bias: np.ndarray  # [classes]: the output layer's bias (the hidden ones have none)
    train_state: TrainState  # jaxnn's, from which the two above are read (never donated)


# ----------------------------------------------------------------------------- jaxnn


def _has_compute_dtype() -> bool:
    return "compute_dtype" in inspect.signature(mlp).parameters


def _jaxnn_net(cfg: BenchConfig, param_dtype: Any, compute_dtype: Any):
    kwargs = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    return mlp(list(cfg.features), "relu", batchnorm=True, param_dtype=param_dtype, **kwargs)


def _initial_weights(cfg: BenchConfig) -> _Weights:
    """jaxnn's initialisation (``TrainState.create`` with key ``seed``), as numpy arrays."""
    net, opt = _jaxnn_net(cfg, jnp.float32, None), optax.adam(LEARNING_RATE)
    # jitted: one compilation instead of one per initialiser's shape
    ts = jax.jit(lambda key: TrainState.create(net, opt, key, (2, cfg.in_features)))(
        jax.random.key(cfg.seed)
    )
    dense = [ts.params[k] for k in layer_keys(net) if k in ts.params and "w" in ts.params[k]]
    return _Weights(tuple(np.array(p["w"]) for p in dense), np.array(dense[-1]["b"]), ts)


def _build_jaxnn(grad: str):
    def build(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
        opt, net = optax.adam(LEARNING_RATE), _jaxnn_net(cfg, dtype, compute_dtype)
        start = weights.train_state
        if dtype != jnp.float32:  # cast in one call (a float64 init would draw other numbers)
            start = jax.jit(functools.partial(_cast_floats, dtype=dtype))(start)
        key = jax.random.key(cfg.seed)
        fresh = TrainState.create(net, opt, key, params=start.params, state=start.state)
        step = make_train_step(net, LOSS, opt, grad=grad)
        return _Impl(
            fresh, step, _jax_inputs(dtype), jax.block_until_ready, step.lower,
            _jaxnn_identity(), carried=lambda ts: ts[:-1],
        )  # fmt: skip

    return build


# ----------------------------------------------------------------------------- plain JAX


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _jax_inputs(dtype: Any) -> Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]:
    return lambda x, y: (jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32))


def _identity() -> Callable[[Any], Any]:
    return jax.jit(lambda s: s, donate_argnums=0)


def _jaxnn_identity() -> Callable[[TrainState], TrainState]:
    """The identity as jaxnn's step calls its compiled computation: the state but the run's
    key (which never changes) goes through one donated jitted call."""
    inner = _identity()
    return lambda ts: TrainState(*inner(ts[:-1]), ts.key)


def _matmul(x: jax.Array, w: jax.Array, compute_dtype: Any) -> jax.Array:
    if compute_dtype is None:
        return x @ w
    return x.astype(compute_dtype) @ w.astype(compute_dtype)


def _plain_loss(params, bn_state, x, y, compute_dtype):
    """The model's forward and loss, written out; returns ``(loss, new_bn_state)``."""
    h, new_state = x, []
    for layer, (mean_r, var_r) in zip(params["hidden"], bn_state, strict=True):
        z = _matmul(h, layer["w"], compute_dtype)
        z = z.astype(jnp.promote_types(z.dtype, jnp.float32))  # statistics in >= float32
        mean, var = z.mean(axis=0), z.var(axis=0)
        z = (z - mean) * jax.lax.rsqrt(var + BN_EPS) * layer["gamma"] + layer["beta"]
        n = z.shape[0]
        new_state.append(
            (
                (1 - BN_NEW_WEIGHT) * mean_r + BN_NEW_WEIGHT * mean,
                (1 - BN_NEW_WEIGHT) * var_r + BN_NEW_WEIGHT * var * (n / (n - 1)),
            )
        )
        h = jax.nn.relu(z if compute_dtype is None else z.astype(compute_dtype))
    out = params["out"]
    logits = _matmul(h, out["w"], compute_dtype)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) + out["b"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, tuple(new_state)


def _plain_params(weights: _Weights, dtype: Any):
    *hidden, last = weights.kernels
    params = {
        "hidden": [
            {
                "w": jnp.asarray(w, dtype),
                "gamma": jnp.ones(w.shape[1], dtype),
                "beta": jnp.zeros(w.shape[1], dtype),
            }
            for w in hidden
        ],
        "out": {"w": jnp.asarray(last, dtype), "b": jnp.asarray(weights.bias, dtype)},
    }
    bn_state = tuple((jnp.zeros(w.shape[1], dtype), jnp.ones(w.shape[1], dtype)) for w in hidden)
    return params, bn_state


def _build_plain(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
    opt = optax.adam(LEARNING_RATE)
    params, bn_state = _plain_params(weights, dtype)

    def step(carry, x, y):
        params, bn_state, opt_state = carry
        (loss, bn_state), grads = jax.value_and_grad(_plain_loss, has_aux=True)(
            params, bn_state, x, y, compute_dtype
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), bn_state, opt_state), loss

    step = jax.jit(step, donate_argnums=0)
    state = (params, bn_state, opt.init(params))
    return _Impl(state, step, _jax_inputs(dtype), jax.block_until_ready, step.lower, _identity())


def _build_matmuls(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
    """The 8 products of one step on the model's shapes; returns the 3 kernel gradients.

    Forward ``h₁ = x W₁, h₂ = h₁ W₂, o = h₂ W₃``; backward with ``δ₃ = o`` standing for the
    loss's gradient: ``dW₃ = h₂ᵀ δ₃, δ₂ = δ₃ W₃ᵀ, dW₂ = h₁ᵀ δ₂, δ₁ = δ₂ W₂ᵀ, dW₁ = xᵀ δ₁``.
    The state (the kernels) passes through unchanged, so only the products run.
    """
    mm_dtype = compute_dtype or dtype

    def step(kernels, x, y):
        del y
        hs = [x]
        for w in kernels:
            hs.append(hs[-1] @ w)
        delta, grads = hs.pop(), []
        for i in reversed(range(len(kernels))):
            grads.append(hs[i].T @ delta)
            if i > 0:
                delta = delta @ kernels[i].T
        return kernels, tuple(grads)

    step = jax.jit(step, donate_argnums=0)
    state = tuple(jnp.asarray(w, mm_dtype) for w in weights.kernels)
    return _Impl(
        state, step, _jax_inputs(mm_dtype), jax.block_until_ready, step.lower, _identity(),
        loss=lambda _: None,
    )  # fmt: skip


# ----------------------------------------------------------------------------- peers


def _build_flax(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
    import flax.linen as nn

    class MLP(nn.Module):
        features: tuple[int, ...]

        @nn.compact
        def __call__(self, x, train: bool):
            for f in self.features[:-1]:
                x = nn.Dense(f, use_bias=False, param_dtype=dtype)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=1 - BN_NEW_WEIGHT,
                                 epsilon=BN_EPS, param_dtype=dtype)(x)  # fmt: skip
                x = nn.relu(x)
            return nn.Dense(self.features[-1], param_dtype=dtype)(x)

    model = MLP(cfg.features)
    *hidden, last = weights.kernels
    params = {f"Dense_{i}": {"kernel": jnp.asarray(w, dtype)} for i, w in enumerate(hidden)}
    params |= {
        f"BatchNorm_{i}": {
            "scale": jnp.ones(w.shape[1], dtype),
            "bias": jnp.zeros(w.shape[1], dtype),
        }
        for i, w in enumerate(hidden)
    }
    params[f"Dense_{len(hidden)}"] = {
        "kernel": jnp.asarray(last, dtype),
        "bias": jnp.asarray(weights.bias, dtype),
    }
    stats = {
        f"BatchNorm_{i}": {"mean": jnp.zeros(w.shape[1], dtype), "var": jnp.ones(w.shape[1], dtype)}
        for i, w in enumerate(hidden)
    }
    opt = optax.adam(LEARNING_RATE)

    def step(carry, x, y):
        params, stats, opt_state = carry

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    step = jax.jit(step, donate_argnums=0)
    state = (params, stats, opt.init(params))
    return _Impl(state, step, _jax_inputs(dtype), jax.block_until_ready, step.lower, _identity())


def _build_equinox(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
    import equinox as eqx

    sizes = (cfg.in_features, *cfg.features)
    model, bn_state = _equinox_init()(jax.random.key(cfg.seed), sizes, np.dtype(dtype))

    def linears(m):
        return [layer for layer in m.layers if isinstance(layer, eqx.nn.Linear)]

    model = eqx.tree_at(
        lambda m: (*(layer.weight for layer in linears(m)), linears(m)[-1].bias),
        model,
        (*(jnp.asarray(w.T, dtype) for w in weights.kernels), jnp.asarray(weights.bias, dtype)),
    )
    opt = optax.adam(LEARNING_RATE)

    # The first argument is not donated (the batch is reused); the carried state, second, is.
    @eqx.filter_jit(donate="all-except-first")
    def step_batch_first(batch, carry):
        x, y = batch
        model, bn_state, opt_state = carry

        def loss_fn(model):
            batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            logits, new_state = batched(x, bn_state)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

        (loss, bn_state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), bn_state, opt_state), loss

    def step(carry, x, y):
        return step_batch_first((x, y), carry)

    state = (model, bn_state, opt.init(eqx.filter(model, eqx.is_inexact_array)))
    return _Impl(
        state, step, _jax_inputs(dtype), jax.block_until_ready,
        lambda carry, x, y: step_batch_first.lower((x, y), carry).lowered,  # the jax Lowered
        eqx.filter_jit(lambda s: s, donate="all"),
    )  # fmt: skip


@functools.cache
def _equinox_init() -> Callable[..., Any]:
    """``init(key, sizes, dtype) -> (model, state)``, jitted once (not once per initialiser)."""
    import equinox as eqx

    @eqx.filter_jit  # `sizes` and `dtype` are static: one compilation per model and dtype
    def init(key, sizes, dtype):
        keys = iter(jax.random.split(key, len(sizes) - 1))
        layers = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            hidden = i < len(sizes) - 2
            layers.append(eqx.nn.Linear(n_in, n_out, use_bias=not hidden, key=next(keys),
                                        dtype=dtype))  # fmt: skip
            if hidden:
                bn = eqx.nn.BatchNorm(n_out, "batch", eps=BN_EPS, momentum=1 - BN_NEW_WEIGHT,
                                      mode="batch", dtype=dtype)  # fmt: skip
                layers.append(bn)
                layers.append(eqx.nn.Lambda(jax.nn.relu))
        return eqx.nn.make_with_state(eqx.nn.Sequential)(layers)

    return init


def _build_torch(cfg: BenchConfig, weights: _Weights, dtype: Any, compute_dtype: Any) -> _Impl:
    import torch

    torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)
    ]
    layers: list[Any] = []
    *hidden, last = weights.kernels
    for w in hidden:
        layers += [
            torch.nn.Linear(*w.shape, bias=False),
            torch.nn.BatchNorm1d(w.shape[1], eps=BN_EPS, momentum=BN_NEW_WEIGHT),
            torch.nn.ReLU(),
        ]
    layers.append(torch.nn.Linear(*last.shape))
    # On a machine with a CUDA GPU PyTorch runs there too (eager; each timed round ends with
    # torch.cuda.synchronize, as the JAX steps end with block_until_ready).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch.nn.Sequential(*layers).to(device=device, dtype=torch_dtype)
    with torch.no_grad():
        linear = [m for m in model if isinstance(m, torch.nn.Linear)]
        for m, w in zip(linear, weights.kernels, strict=True):
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)).to(device))
        linear[-1].bias.copy_(torch.from_numpy(weights.bias).to(device))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS)

    def step(state, x, y):
        model, opt = state
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return state, loss.detach()

    def inputs(x, y):
        x = torch.from_numpy(x.astype(np.dtype(dtype))).to(device)
        return x, torch.from_numpy(y.astype(np.int64)).to(device)

    def block(out: Any) -> Any:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return _Impl((model, opt), step, inputs, block, loss=lambda loss: float(loss.item()))


_BUILDERS: dict[str, Callable[..., _Impl]] = {
    "jaxnn_autodiff": _build_jaxnn("autodiff"),
    "jaxnn_manual": _build_jaxnn("manual"),
    "plain_jax": _build_plain,
    "matmuls": _build_matmuls,
    "flax_linen": _build_flax,
    "equinox": _build_equinox,
    "torch": _build_torch,
}
_PEER_MODULES = {"flax_linen": "flax", "equinox": "equinox", "torch": "torch"}


# ----------------------------------------------------------------------------- selection


def _select(cfg: BenchConfig) -> tuple[list[str], list[dict[str, str]]]:
    """The implementations to run, in :data:`IMPLEMENTATIONS` order, and the skipped ones."""
    unknown = [n for n in cfg.only if n not in IMPLEMENTATIONS]
    if unknown:
        raise BenchError(
            f"unknown implementation(s) {', '.join(unknown)}; expected names from "
            f"{', '.join(IMPLEMENTATIONS)}."
        )
    if cfg.dtype not in DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}.")
    if any(b < 2 for b in cfg.batches) or not cfg.batches:
        raise BenchError(
            f"batch sizes must be >= 2 (BatchNorm's statistics in train mode), got {cfg.batches}."
        )
    chosen, skipped = [], []
    for name in IMPLEMENTATIONS:
        if name not in cfg.only and name != REFERENCE:
            skipped.append({"implementation": name, "reason": "not selected (--only)"})
        elif name in PEERS and cfg.dtype != "float32":
            skipped.append(
                {"implementation": name, "reason": f"peers run in float32 only, not {cfg.dtype}"}
            )
        elif name in PEERS and (problem := _cannot_import(_PEER_MODULES[name])):
            skipped.append({"implementation": name, "reason": problem})
        else:
            chosen.append(name)
    if cfg.dtype == "bfloat16" and not _has_compute_dtype():
        jaxnn_chosen = [n for n in chosen if n.startswith("jaxnn_")]
        if jaxnn_chosen:
            raise BenchError(
                "--dtype bfloat16 needs jaxnn.mlp(..., compute_dtype=jnp.bfloat16), which this "
                f"jaxnn does not have; run float32, or leave out {', '.join(jaxnn_chosen)} "
                "with --only."
            )
    return chosen, skipped


def _cannot_import(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError as e:
        return f"{module} is not installed ({e}); {_INSTALL_PEERS}"
    return None


# ----------------------------------------------------------------------------- measurement


def _data(cfg: BenchConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + batch)
    x = rng.standard_normal((batch, cfg.in_features), dtype=np.float32)
    y = rng.integers(0, cfg.features[-1], size=batch).astype(np.int32)
    return x, y


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _memory(impl: _Impl, state: Any, x: Any, y: Any) -> dict[str, int] | None:
    if impl.lower is None:
        return None
    compiled = impl.lower(state, x, y).compile()  # jit's cache has it: nothing compiles
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):  # a backend without it
        return None
    if analysis is None:
        return None
    fields = ("argument", "output", "alias", "temp", "generated_code")
    return {f"{f}_bytes": int(getattr(analysis, f"{f}_size_in_bytes", 0)) for f in fields}


def _tree_size(impl: _Impl, state: Any) -> dict[str, int | None]:
    if impl.identity is None:  # not a JAX pytree
        return {"leaves": None, "nodes": None, "array_leaves": None}
    state = impl.carried(state)
    structure = jax.tree_util.tree_structure(state)
    arrays = sum(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
    return {"leaves": structure.num_leaves, "nodes": structure.num_nodes, "array_leaves": arrays}


def _run_steps(impl: _Impl, state: Any, x: Any, y: Any, k: int) -> tuple[Any, Any, float]:
    start = time.perf_counter()
    loss = None
    for _ in range(k):
        state, loss = impl.step(state, x, y)
    impl.block((state, loss))
    return state, loss, time.perf_counter() - start


def _run_identity(impl: _Impl, state: Any, k: int) -> tuple[Any, float]:
    start = time.perf_counter()
    for _ in range(k):
        state = impl.identity(state)
    jax.block_until_ready(state)
    return state, time.perf_counter() - start


def _identity_executes(impl: _Impl, state: Any) -> tuple[Any, bool]:
    """The state after one identity call, and whether the call consumed its input buffers.

    Consumed (donated) buffers prove that the call dispatched an executable, rather than
    returning its argument from the host.
    """
    before = [leaf for leaf in jax.tree.leaves(impl.carried(state)) if isinstance(leaf, jax.Array)]
    state = jax.block_until_ready(impl.identity(state))
    return state, bool(before) and all(leaf.is_deleted() for leaf in before)


def _count(min_time: float, max_count: int, seconds_per_call: float) -> int:
    """Calls that take about ``min_time`` (at least 1, at most ``max_count``)."""
    return max(1, min(max_count, math.ceil(min_time / max(seconds_per_call, 1e-9))))


def _prepare(
    cfg: BenchConfig, name: str, weights: _Weights, batch: int, log: Callable[[str], None]
) -> tuple[_Impl, Any, tuple[Any, Any], dict[str, Any]]:
    """Build ``name``, time its first call, warm it up: ``(impl, state, (x, y), entry)``."""
    compute = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
    log(f"batch {batch}: {name}: building and compiling")
    impl = _BUILDERS[name](cfg, weights, jnp.float32, compute)
    x, y = impl.inputs(*_data(cfg, batch))
    start = time.perf_counter()
    state, loss = impl.step(impl.state, x, y)
    impl.block((state, loss))
    first = time.perf_counter() - start
    state, _, t_warm = _run_steps(impl, state, x, y, 2)
    entry = {
        "compile_s": first if impl.lower is not None else None,  # trace + compile + 1 step
        "first_call_s": first,
        "steps_per_round": _count(cfg.min_time, cfg.max_steps, t_warm / 2),
        "loss_first": impl.loss(loss),
        "memory": _memory(impl, state, x, y),
        **{f"state_{k}": v for k, v in _tree_size(impl, state).items()},
        "host_overhead_executes": None,
        "identity_calls_per_round": None,
    }
    if impl.identity is not None:
        state, entry["host_overhead_executes"] = _identity_executes(impl, state)
        state, t_id = _run_identity(impl, state, 3)
        entry["identity_calls_per_round"] = _count(cfg.min_time / 4, 10 * cfg.max_steps, t_id / 3)
    return impl, state, (x, y), entry


def _bench_batch(
    cfg: BenchConfig, names: list[str], weights: _Weights, batch: int, log: Callable[[str], None]
) -> dict[str, Any]:
    impls, states, data, entry = {}, {}, {}, {}
    for name in names:
        impls[name], states[name], data[name], entry[name] = _prepare(
            cfg, name, weights, batch, log
        )
    step_times: dict[str, list[float]] = {n: [] for n in names}  # s/step, one per round
    identity_times = {n: [] for n in names if impls[n].identity is not None}
    last_loss: dict[str, Any] = {}
    for r in range(cfg.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        log(f"batch {batch}: round {r + 1}/{cfg.rounds}")
        for name in order:
            k = entry[name]["steps_per_round"]
            states[name], last_loss[name], t = _run_steps(impls[name], states[name], *data[name], k)
            step_times[name].append(t / k)
        for name in order:
            if name in identity_times:
                k = entry[name]["identity_calls_per_round"]
                states[name], t = _run_identity(impls[name], states[name], k)
                identity_times[name].append(t / k)

    ref_times = step_times[REFERENCE]
    ref_overhead = statistics.median(identity_times[REFERENCE])
    for name in names:
        info, times = entry[name], step_times[name]
        info["ms_per_step"] = 1e3 * statistics.median(times)
        info["ms_per_step_rounds"] = [1e3 * t for t in times]
        info["ratio_to_plain_jax"] = _stats([t / r for t, r in zip(times, ref_times, strict=True)])
        info["matmul_fraction"] = (
            _stats([m / t for m, t in zip(step_times[CEILING], times, strict=True)])
            if CEILING in step_times
            else None
        )
        info["compile_ratio_to_plain_jax"] = (
            None if info["compile_s"] is None else info["compile_s"] / entry[REFERENCE]["compile_s"]
        )
        overhead = statistics.median(identity_times[name]) if name in identity_times else None
        info["host_overhead_us"] = None if overhead is None else 1e6 * overhead
        info["host_overhead_ratio_to_plain_jax"] = (
            None if overhead is None else overhead / ref_overhead
        )
        info["loss_last"] = impls[name].loss(last_loss[name])
        info["steps_run"] = 3 + cfg.rounds * info["steps_per_round"]
    memory_stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return {
        "batch": batch,
        "device_peak_bytes_in_use": (memory_stats or {}).get("peak_bytes_in_use"),
        "implementations": entry,
    }


# ----------------------------------------------------------------------------- agreement


def agreement_tolerance(
    *,
    loss: float,
    grad_l1: float,
    grad_max: float,
    steps: int,
    reduction: int,
    learning_rate: float = LEARNING_RATE,
    adam_eps: float = ADAM_EPS,
    unit_roundoff: float = 2.0**-53,
) -> float:
    """The largest loss difference that float64 rounding explains between two implementations.

    Both start from the same parameters and run ``steps`` Adam steps on the same batch. A sum
    of ``n`` terms evaluated in any order is off by at most ``γ = n·u`` times the sum of the
    terms' magnitudes (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1),
    with ``n = reduction`` the longest sum of the step. So the loss differs by at most
    ``γ·|L|``, and each gradient element by about ``γ·max|g|`` (the largest gradient element
    standing for the scale of the terms). Adam's step ``lr·m̂/(√v̂ + ε)`` changes by at most
    ``lr/ε`` per unit change of ``g``, so after ``steps`` steps the parameters differ by at
    most ``steps·lr·γ·max|g|/ε`` each, and, to first order, the loss by ``‖g‖₁`` times that::

        tol = γ·|L| + steps · lr · γ · max|g| · ‖g‖₁ / ε

    Args:
      loss, grad_l1, grad_max: ``L``, ``‖g‖₁`` and ``max|g|`` at the initial parameters.
      steps: Adam steps taken. reduction: the longest sum (the widest layer or the batch).
      learning_rate, adam_eps, unit_roundoff: ``lr``, ``ε`` and ``u`` (float64's ``2⁻⁵³``).
    """
    gamma = reduction * unit_roundoff
    return gamma * abs(loss) + steps * learning_rate * gamma * grad_max * grad_l1 / adam_eps


def _agreement(
    cfg: BenchConfig, names: list[str], weights: _Weights, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every model implementation's losses over ``check_steps`` steps, in float64."""
    batch = min(cfg.batches)
    x_np, y_np = _data(cfg, batch)
    losses, models = {}, [n for n in names if n != CEILING]

    def first_step(impl: _Impl, x: Any, y: Any) -> tuple[Any, Any]:
        with jax.enable_x64(True):  # the setting is per thread
            return impl.step(impl.state, x, y)

    with jax.enable_x64(True), concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        log(f"agreement (float64, batch {batch}): {', '.join(models)}")
        impls = {name: _BUILDERS[name](cfg, weights, jnp.float64, None) for name in models}
        data = {name: impl.inputs(x_np, y_np) for name, impl in impls.items()}
        # The first calls compile; in threads, the compilations overlap (not timed here).
        first = {n: pool.submit(first_step, impl, *data[n]) for n, impl in impls.items()}
        for name, impl in impls.items():
            state, loss = first[name].result()
            trace = [impl.loss(loss)]
            for _ in range(cfg.check_steps - 1):
                state, loss = impl.step(state, *data[name])
                trace.append(impl.loss(loss))
            losses[name] = trace
        params, bn_state = _plain_params(weights, jnp.float64)
        x, y = jnp.asarray(x_np, jnp.float64), jnp.asarray(y_np, jnp.int32)
        loss, grads = jax.jit(
            jax.value_and_grad(lambda p: _plain_loss(p, bn_state, x, y, None)[0])
        )(params)
        flat = np.concatenate([np.abs(np.ravel(g)) for g in jax.tree.leaves(grads)])
    reduction = max(cfg.in_features, *cfg.features, batch)
    terms = {
        "loss": float(loss),
        "grad_l1": float(flat.sum()),
        "grad_max": float(flat.max()),
        "steps": cfg.check_steps,
        "reduction": reduction,
    }
    ref = losses[REFERENCE]
    return {
        "dtype": "float64",
        "batch": batch,
        "steps": cfg.check_steps,
        "losses": losses,
        "max_abs_diff_to_plain_jax": {
            n: max(abs(a - b) for a, b in zip(trace, ref, strict=True))
            for n, trace in losses.items()
        },
        "tolerance": agreement_tolerance(**terms),
        "tolerance_terms": terms,
    }


# ----------------------------------------------------------------------------- the run


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("jax", "jaxlib", "optax", "numpy", "jaxnn", "flax", "equinox", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _meta(cfg: BenchConfig, names: list[str]) -> dict[str, Any]:
    device = jax.devices()[0]
    torch_threads = torch_device = None
    if "torch" in names:
        import torch

        torch_threads = torch.get_num_threads()
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": _versions(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "torch_device": torch_device,
        "torch_threads": torch_threads,
        "model": {
            "layers": [cfg.in_features, *cfg.features],
            "hidden": "dense (no bias) -> batchnorm -> relu",
            "loss": LOSS,
            "optimizer": f"adam({LEARNING_RATE:g})",
            "batchnorm": {"eps": BN_EPS, "new_batch_weight": BN_NEW_WEIGHT},
        },
        "dtype": cfg.dtype,
        "batches": list(cfg.batches),
        "rounds": cfg.rounds,
        "min_time_s": cfg.min_time,
        "quick": cfg.quick,
        "implementations": names,
        "reference": REFERENCE,
    }


def run(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module docstring).

    Args:
      cfg: what to run.
      log: called with a line of progress before each phase (e.g. ``print`` to stderr).

    Raises:
      BenchError: an unknown implementation, a batch size below 2, or bfloat16 asked of a
        jaxnn without ``mlp(compute_dtype=...)``.
    """
    log = log or (lambda line: None)
    names, skipped = _select(cfg)
    with contextlib.ExitStack() as stack:
        if "torch" in names and cfg.torch_threads is not None:
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(cfg.torch_threads)
        # The benchmark's dtypes, whatever the caller's jax_enable_x64 (the tests turn it on).
        stack.enter_context(jax.enable_x64(False))
        weights = _initial_weights(cfg)
        meta = _meta(cfg, names)
        meta["agreement"] = _agreement(cfg, names, weights, log)
        results = [_bench_batch(cfg, names, weights, b, log) for b in cfg.batches]
    return {"meta": meta, "results": results, "skipped": skipped}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per implementation per batch size."""
    meta = report["meta"]
    header = (
        "batch", "implementation", "ms/step", "x plain min", "med", "max", "of matmuls min",
        "med", "max", "compile s", "overhead us", "leaves/nodes",
    )  # fmt: skip
    rows = [header]
    for result in report["results"]:
        for name, info in result["implementations"].items():
            ratio, frac = info["ratio_to_plain_jax"], info["matmul_fraction"] or {}
            rows.append(
                (
                    str(result["batch"]),
                    name,
                    f"{info['ms_per_step']:.3f}",
                    *(f"{ratio[k]:.2f}" for k in ("min", "median", "max")),
                    *(_fmt(frac.get(k), ".2f") for k in ("min", "median", "max")),
                    _fmt(info["compile_s"], ".2f"),
                    _fmt(info["host_overhead_us"], ".1f"),
                    "-"
                    if info["state_leaves"] is None
                    else f"{info['state_leaves']}/{info['state_nodes']}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"bench_step: jax {meta['versions']['jax']} on {meta['backend']} "
        f"({meta['device_kind']}, {meta['cpu_count']} CPUs), {meta['dtype']}, model "
        f"{'-'.join(map(str, meta['model']['layers']))}, {meta['rounds']} rounds"
    ]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True)))
        )  # fmt: skip
    agreement = meta["agreement"]
    worst = max(agreement["max_abs_diff_to_plain_jax"].values())
    lines.append(
        f"agreement (float64, batch {agreement['batch']}, {agreement['steps']} steps from the "
        f"same parameters): max |loss - plain_jax's| {worst:.1e} (rounding bound "
        f"{agreement['tolerance']:.1e})"
    )
    for s in report["skipped"]:
        lines.append(f"skipped {s['implementation']}: {s['reason']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def _batches(text: str) -> tuple[int, ...]:
    """argparse type of ``--batches``: batch sizes >= 2 separated by commas."""
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(
            f"expected batch sizes >= 2 (BatchNorm needs two examples) separated by commas, "
            f"e.g. 128,1024, got {text!r}"
        )
    return sizes


def _rounds(text: str) -> int:
    """argparse type of ``--rounds``: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def _implementations(text: str) -> tuple[str, ...]:
    """argparse type of ``--only``: implementation names separated by commas."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in IMPLEMENTATIONS for n in names):
        raise argparse.ArgumentTypeError(
            f"expected implementation names from {','.join(IMPLEMENTATIONS)}, got {text!r}"
        )
    return names


def _check_out_file(out: str) -> str | None:
    """Why the file ``out`` cannot be written, or None (its folder is created if missing)."""
    path = Path(out)
    if path.is_dir():
        return (
            f"--out expects a file for the JSON report, got {out!r}, which is a folder. Name a "
            f"file, e.g. --out bench.json."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        return (
            f"--out expects a file in a folder that can be written, got {out!r} "
            f"({e.strerror or e}). Name a file in a folder you can write to."
        )
    return None


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(
        prog="python benchmarks/bench_step.py",
        description="Time one training step of an MLP 784-512-512-10 with BatchNorm: jaxnn "
        "(autodiff and hand-derived gradients) against plain JAX, the step's bare matmuls and, "
        "where installed, Flax, Equinox and PyTorch, interleaved. Prints a table and writes the "
        "JSON report.",
    )
    a = p.add_argument
    a("-q", "--quiet", action="store_true",
      help="no progress on stderr (progress shows only when stderr is a terminal)")  # fmt: skip
    a("--batches", type=_batches, default=None, metavar="N,N",
      help="batch sizes (default: 128,1024,16384; with --quick 8,16)")  # fmt: skip
    a("--rounds", type=_rounds, default=None, metavar="N",
      help="timed rounds, a whole number >= 1 (default: 7; with --quick 2)")  # fmt: skip
    a("--dtype", choices=DTYPES, default="float32",
      help="bfloat16: bfloat16 matmuls, float32 master weights (default: float32)")  # fmt: skip
    a("--only", type=_implementations, default=None, metavar="NAME[,NAME]",
      help="only these implementations (plain_jax, the reference, always runs)")  # fmt: skip
    a("--out", default="bench.json", metavar="FILE", help="the JSON report (default: bench.json)")
    a("--quick", action="store_true",
      help="a 784-32-32-10 model, batches 8,16, 2 short rounds (seconds; the tests run it)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors exit through argparse (``SystemExit(2)``), as ``--help`` does
    (``SystemExit(0)``).
    """
    args = parser().parse_args(argv)
    problem = _check_out_file(args.out)
    if problem:
        print(f"bench_step: {problem}", file=sys.stderr)
        return 2
    config = quick_config() if args.quick else BenchConfig()
    given = {"batches": args.batches, "rounds": args.rounds, "only": args.only}
    config = config._replace(dtype=args.dtype, **{k: v for k, v in given.items() if v})
    show = not args.quiet and sys.stderr.isatty()
    try:
        report = run(config, log=lambda line: print(line, file=sys.stderr) if show else None)
    except BenchError as e:
        print(f"bench_step: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
