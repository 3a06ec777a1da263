"""Benchmark: the convolutional network's training step, alone and scanned, against plain JAX
and Flax linen.

::

    python benchmarks/bench_conv.py [--inputs digits,mnist] [--batches 128] [--rounds 5]
                                    [--modes step,epoch] [--epoch-steps 8] [--only NAME[,NAME]]
                                    [--quick] [--out bench_conv.json] [--quiet]

(or ``python -m benchmarks.bench_conv`` from the repository root) prints a table and writes
the JSON report to ``--out``. ``--quick`` runs the digits input with channels ``(4, 8)`` at
batch 8, epochs of 2 steps, two short rounds: what the tests run (add ``--inputs
digits,mnist`` for both). Exit status: 0 done; 2 a usage error.

**The model.** ``jaxnn.networks.cnn(input_shape, (32, 64), 10)``, the network ``jaxnn train
--model cnn`` trains: a 3x3 convolution stem -> BatchNorm -> ReLU, two stages of one plain
block each (``conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU``), a 2x2 max pool (stride 2)
between them, global average pooling and a dense head; the convolutions without bias
(BatchNorm follows), He-normal kernels; BatchNorm ``eps = 1e-5``, running statistics with
weight 0.1 for the new batch. Two inputs: ``digits`` (8x8x1, scikit-learn's digits) and
``mnist`` (28x28x1), NHWC. Softmax cross-entropy with integer labels averaged over the batch,
``optax.adam(1e-3)``, float32. The data is random: ``x`` standard normal, ``y`` uniform in
``[0, 10)``.

**The implementations** (:data:`IMPLEMENTATIONS`), all from jaxnn's initial parameters
(copied into the others):

* ``jaxnn_autodiff`` / ``jaxnn_manual`` — ``cnn`` + ``TrainState`` + ``make_train_step(...,
  grad="autodiff" | "manual")``; the scanned epoch is ``make_epoch`` (what ``fit`` runs);
* ``plain_jax`` — the reference: ``lax.conv_general_dilated`` (NHWC/HWIO), BatchNorm in a few
  ``jnp`` lines, ``lax.reduce_window`` max pooling, ``jax.value_and_grad``, optax;
* ``flax_linen`` — ``nn.Conv(use_bias=False)``, ``nn.BatchNorm(momentum=0.9, epsilon=1e-5)``
  (Flax's default one-pass variance), ``nn.max_pool``, a mean over H and W, ``nn.Dense``;
  where Flax is installed (the ``bench`` extra), otherwise listed under ``skipped``.

**Two measurements** (``--modes``), per input and batch size:

* ``step`` — one jitted step per call, the state donated (as ``bench_step.py``);
* ``epoch`` — ``--epoch-steps`` steps inside one ``lax.scan`` per call, as jaxnn trains an
  epoch (``make_epoch``: the permutation of the epoch's ``steps · batch`` examples drawn inside
  the compiled code, each step gathering its minibatch); plain JAX and Flax scan their own
  step the same way, with the same permutation.

The two differ on XLA:CPU: both convolutions of the gradient that ``jax.grad`` emits for a
convolution have non-canonical dimension labels (the input gradient's kernel with its input
and output channels swapped; the kernel gradient contracting over the batch, with the input's
channels as its batch dimension), which XLA:CPU rewrites into its fast (Eigen) form only
outside a loop body; inside a ``while`` loop (a scan) it runs them through a generic loop,
10-50x slower (JAX issue #12868, "Convolution is significantly slower inside a loop body
(CPU)"). So a step that is fast alone can be slow in a scanned epoch; the ``epoch`` rows and
the ``scan slowdown`` column (ms/step scanned over ms/step alone) show it. jaxnn's
convolution avoids it on both gradient paths (:mod:`jaxnn.conv`).

**What is measured** in each: the first call (trace, compile and one call; *compile s* is
that less one warm call, floored at 0: an estimate, as noisy as a call when calls last
seconds); then ``R`` rounds (default 5), in each of which every implementation makes ``K``
calls (``K`` fixed from the warm-up so that they last about 0.2 s; at least one), the order
rotating by one place each round, timed up to
``block_until_ready``. Per implementation: the median ms/step, and the ratios
``t_impl / t_plain_jax`` and ``t_impl / t_flax_linen`` computed within each round (min,
median, max over rounds).

**The agreement check.** Before the timing, for each input, every implementation runs
``check_steps`` steps (alone, and as one scanned epoch) from the same parameters on a small
batch in float64, and the losses are compared with plain JAX's, to the rounding bound of
:func:`benchmarks.bench_step.agreement_tolerance` (see there; the longest sum here is a
kernel gradient's, over ``batch · H · W`` terms).

The harness is ``bench_step.py``'s (its timing loop, statistics, tolerance and command-line
helpers are imported from there); :func:`run` returns the report (a JSON-able dict with keys
``meta``, ``results``, ``skipped``); :func:`table` formats it.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
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
    BN_EPS,
    BN_NEW_WEIGHT,
    LEARNING_RATE,
    LOSS,
    BenchError,
    _batches,
    _cannot_import,
    _cast_floats,
    _check_out_file,
    _count,
    _fmt,
    _Impl,
    _jax_inputs,
    _Parser,
    _rounds,
    _run_steps,
    _stats,
    _versions,
    agreement_tolerance,
)
from jaxnn.combinators import layer_keys
from jaxnn.networks import cnn
from jaxnn.train import TrainState, make_epoch, make_train_step

IMPLEMENTATIONS = ("jaxnn_autodiff", "jaxnn_manual", "plain_jax", "flax_linen")
REFERENCE = "plain_jax"
PEER = "flax_linen"
MODES = ("step", "epoch")
INPUTS = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}  # one example's (H, W, C)
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_SHUFFLE_STREAM = 1  # jaxnn.train's: an epoch's permutation key is fold_in(fold_in(key, 1), step)


class ConvConfig(NamedTuple):
    """What to run; :func:`quick_config` gives the test's scaled-down one."""

    inputs: tuple[str, ...] = ("digits", "mnist")  # names in INPUTS
    batches: tuple[int, ...] = (128,)
    rounds: int = 5
    modes: tuple[str, ...] = MODES
    only: tuple[str, ...] = IMPLEMENTATIONS  # plain_jax is always added
    channels: tuple[int, ...] = (32, 64)
    num_classes: int = 10
    epoch_steps: int = 8  # steps in one scanned epoch
    min_time: float = 0.2  # seconds each implementation runs per round (sets K)
    max_calls: int = 10_000  # an upper bound on K
    check_steps: int = 3  # steps of the float64 agreement check (alone and scanned)
    check_batch: int = 8  # its batch size
    seed: int = 0
    quick: bool = False


def quick_config(**changes: Any) -> ConvConfig:
    """Digits, channels (4, 8), batch 8, epochs of 2 steps, 2 rounds of at most 2 calls."""
    quick = ConvConfig(
        inputs=("digits",),
        batches=(8,),
        rounds=2,
        channels=(4, 8),
        epoch_steps=2,
        min_time=0.002,
        max_calls=2,
        check_steps=2,
        check_batch=4,
        quick=True,
    )
    return quick._replace(**changes)


class _Layer(NamedTuple):
    """One layer of the network, as plain JAX and Flax rebuild it."""

    kind: str  # "conv2d", "batchnorm", "relu", "max_pool", "global_avg_pool", "dense"
    key: str  # jaxnn's key, e.g. "conv2d_1"
    shape: tuple[int, ...] = ()  # conv2d: (kh, kw, in, out); dense: (in, out)
    bias: bool = False  # conv2d and dense


class _Weights(NamedTuple):
    """The initial parameters every implementation starts from (float32), for one input."""

    input_shape: tuple[int, int, int]
    layers: tuple[_Layer, ...]
    train_state: TrainState  # jaxnn's (never donated); its key draws the epochs' permutations


# ----------------------------------------------------------------------------- jaxnn


def _jaxnn_net(cfg: ConvConfig, input_shape: tuple[int, int, int], param_dtype: Any):
    return cnn(input_shape, cfg.channels, cfg.num_classes, param_dtype=param_dtype)


def _program(net: Any, params: dict[str, Any]) -> tuple[_Layer, ...]:
    """The network's layers in order, read from its keys (``conv2d_1``, ...) and params."""
    layers = []
    for key in layer_keys(net):
        kind = key.rsplit("_", 1)[0]
        if kind == "reshape":  # the input comes NHWC
            continue
        if kind not in ("conv2d", "batchnorm", "relu", "max_pool", "global_avg_pool", "dense"):
            raise BenchError(f"cnn has a layer {key!r} that this benchmark does not rebuild.")
        p = params.get(key, {})
        shape = tuple(p["w"].shape) if "w" in p else ()
        layers.append(_Layer(kind, key, shape, "b" in p))
    return tuple(layers)


def _initial_weights(cfg: ConvConfig, input_name: str) -> _Weights:
    """jaxnn's initialisation (``TrainState.create`` with key ``seed``)."""
    shape = INPUTS[input_name]
    net, opt = _jaxnn_net(cfg, shape, jnp.float32), optax.adam(LEARNING_RATE)
    # jitted: one compilation instead of one per initialiser's shape
    ts = jax.jit(lambda key: TrainState.create(net, opt, key, (2, *shape)))(
        jax.random.key(cfg.seed)
    )
    return _Weights(shape, _program(net, ts.params), ts)


def _build_jaxnn(grad: str):
    def build(cfg: ConvConfig, weights: _Weights, dtype: Any, batch: int, mode: str) -> _Impl:
        opt, net = optax.adam(LEARNING_RATE), _jaxnn_net(cfg, weights.input_shape, dtype)
        start = jax.jit(functools.partial(_cast_floats, dtype=dtype))(weights.train_state)
        # The same key as the initialisation's: the same run key, so the same permutations.
        fresh = TrainState.create(
            net, opt, jax.random.key(cfg.seed), params=start.params, state=start.state
        )
        if mode == "step":
            step = make_train_step(net, LOSS, opt, grad=grad)
            return _Impl(fresh, step, _jax_inputs(dtype), jax.block_until_ready, step.lower)
        epoch = make_epoch(net, LOSS, opt, batch_size=batch, grad=grad)
        return _Impl(
            fresh, epoch, _jax_inputs(dtype), jax.block_until_ready, epoch.lower,
            loss=lambda losses: float(losses[-1]),
        )  # fmt: skip

    return build


# ----------------------------------------------------------------------------- plain JAX


def _plain_loss(params, bn_state, x, y, layers):
    """The network's forward and loss, written out; returns ``(loss, new_bn_state)``."""
    new_state = {}
    for layer in layers:
        p = params.get(layer.key)
        if layer.kind == "conv2d":
            x = lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=_DIMENSIONS)
            x = x + p["b"] if layer.bias else x
        elif layer.kind == "batchnorm":
            mean_r, var_r = bn_state[layer.key]
            mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
            x = (x - mean) * lax.rsqrt(var + BN_EPS) * p["gamma"] + p["beta"]
            n = x.size // x.shape[-1]
            new_state[layer.key] = (
                (1 - BN_NEW_WEIGHT) * mean_r + BN_NEW_WEIGHT * mean,
                (1 - BN_NEW_WEIGHT) * var_r + BN_NEW_WEIGHT * var * (n / (n - 1)),
            )
        elif layer.kind == "relu":
            x = jax.nn.relu(x)
        elif layer.kind == "max_pool":
            x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        elif layer.kind == "global_avg_pool":
            x = x.mean(axis=(1, 2))
        else:  # dense
            x = x @ p["w"] + p["b"]
    loss = optax.softmax_cross_entropy_with_integer_labels(x, y).mean()
    return loss, new_state


def _plain_params(weights: _Weights, dtype: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    params = jax.tree.map(lambda a: jnp.array(a, dtype), weights.train_state.params)  # copies
    bn_state = {
        layer.key: (
            jnp.zeros(params[layer.key]["gamma"].shape, dtype),
            jnp.ones(params[layer.key]["gamma"].shape, dtype),
        )
        for layer in weights.layers
        if layer.kind == "batchnorm"
    }
    return params, bn_state


def _build_plain(cfg: ConvConfig, weights: _Weights, dtype: Any, batch: int, mode: str) -> _Impl:
    opt = optax.adam(LEARNING_RATE)
    params, bn_state = _plain_params(weights, dtype)

    def step(carry, x, y):
        params, bn_state, opt_state = carry
        (loss, bn_state), grads = jax.value_and_grad(_plain_loss, has_aux=True)(
            params, bn_state, x, y, weights.layers
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), bn_state, opt_state), loss

    return _jax_impl(step, (params, bn_state, opt.init(params)), weights, dtype, batch, mode)


# ----------------------------------------------------------------------------- Flax


@functools.cache
def _flax_module() -> type:
    """The network as a Flax linen module of the layers (defined once; Flax is optional)."""
    import flax.linen as nn

    class CNN(nn.Module):
        layers: tuple[_Layer, ...]

        @nn.compact
        def __call__(self, x, train: bool):
            for layer in self.layers:
                if layer.kind == "conv2d":
                    kh, kw, _, features = layer.shape
                    x = nn.Conv(features, (kh, kw), padding="SAME", use_bias=layer.bias)(x)
                elif layer.kind == "batchnorm":
                    x = nn.BatchNorm(
                        use_running_average=not train, momentum=1 - BN_NEW_WEIGHT, epsilon=BN_EPS
                    )(x)
                elif layer.kind == "relu":
                    x = nn.relu(x)
                elif layer.kind == "max_pool":
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                elif layer.kind == "global_avg_pool":
                    x = x.mean(axis=(1, 2))
                else:
                    x = nn.Dense(layer.shape[1])(x)
            return x

    return CNN


def _flax_variables(weights: _Weights, dtype: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """jaxnn's params as Flax's ``params`` and ``batch_stats`` (``Conv_0``, ... in order)."""
    source = weights.train_state.params
    params, stats, counts = {}, {}, {"conv2d": 0, "batchnorm": 0, "dense": 0}
    names = {"conv2d": "Conv", "batchnorm": "BatchNorm", "dense": "Dense"}
    for layer in weights.layers:
        if layer.kind not in names:
            continue
        name = f"{names[layer.kind]}_{counts[layer.kind]}"
        counts[layer.kind] += 1
        p = {k: jnp.array(v, dtype) for k, v in source[layer.key].items()}  # copies
        if layer.kind == "batchnorm":
            params[name] = {"scale": p["gamma"], "bias": p["beta"]}
            stats[name] = {
                "mean": jnp.zeros_like(p["gamma"]),
                "var": jnp.ones_like(p["gamma"]),
            }
        else:
            params[name] = {"kernel": p["w"]} | ({"bias": p["b"]} if layer.bias else {})
    return params, stats


def _build_flax(cfg: ConvConfig, weights: _Weights, dtype: Any, batch: int, mode: str) -> _Impl:
    model = _flax_module()(weights.layers)
    params, stats = _flax_variables(weights, dtype)
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

    return _jax_impl(step, (params, stats, opt.init(params)), weights, dtype, batch, mode)


# ----------------------------------------------------------------------------- step, epoch


def _jax_impl(
    step: Callable[..., Any], state: Any, weights: _Weights, dtype: Any, batch: int, mode: str
) -> _Impl:
    """A JAX ``step(carry, x, y) -> (carry, loss)`` jitted alone (``mode="step"``) or scanned
    over an epoch as :func:`jaxnn.train.make_epoch` scans (``mode="epoch"``); donated."""
    if mode == "step":
        jitted = jax.jit(step, donate_argnums=0)
        return _Impl(state, jitted, _jax_inputs(dtype), jax.block_until_ready, jitted.lower)
    run_key = weights.train_state.key  # jaxnn's: the same permutations as its epochs

    def epoch(carry, x, y):
        inner, count = carry
        n = x.shape[0]
        key = jax.random.fold_in(jax.random.fold_in(run_key, _SHUFFLE_STREAM), count)
        perm = jax.random.permutation(key, n)[: n // batch * batch].reshape(-1, batch)
        inner, losses = lax.scan(lambda c, idx: step(c, x[idx], y[idx]), inner, perm)
        return (inner, count + perm.shape[0]), losses

    jitted = jax.jit(epoch, donate_argnums=0)
    return _Impl(
        (state, jnp.zeros((), jnp.int32)), jitted, _jax_inputs(dtype), jax.block_until_ready,
        jitted.lower, loss=lambda losses: float(losses[-1]),
    )  # fmt: skip


_BUILDERS: dict[str, Callable[..., _Impl]] = {
    "jaxnn_autodiff": _build_jaxnn("autodiff"),
    "jaxnn_manual": _build_jaxnn("manual"),
    "plain_jax": _build_plain,
    "flax_linen": _build_flax,
}


# ----------------------------------------------------------------------------- selection


def _select(cfg: ConvConfig) -> tuple[list[str], list[dict[str, str]]]:
    """The implementations to run, in :data:`IMPLEMENTATIONS` order, and the skipped ones."""
    for what, given, known in (
        ("implementation", cfg.only, IMPLEMENTATIONS),
        ("input", cfg.inputs, tuple(INPUTS)),
        ("mode", cfg.modes, MODES),
    ):
        unknown = [n for n in given if n not in known]
        if unknown or not given:
            raise BenchError(
                f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; expected names "
                f"from {', '.join(known)}."
            )
    if not cfg.batches or min(cfg.batches) < 2 or cfg.check_batch < 2:
        raise BenchError(
            f"batch sizes must be >= 2 (BatchNorm's statistics in train mode), got "
            f"{cfg.batches} (check batch {cfg.check_batch})."
        )
    if cfg.epoch_steps < 1 or cfg.check_steps < 1:
        raise BenchError(
            f"epoch_steps and check_steps must be >= 1, got {cfg.epoch_steps}, {cfg.check_steps}."
        )
    chosen, skipped = [], []
    for name in IMPLEMENTATIONS:
        if name not in cfg.only and name != REFERENCE:
            skipped.append({"implementation": name, "reason": "not selected (--only)"})
        elif name == PEER and (problem := _cannot_import("flax")):
            skipped.append({"implementation": name, "reason": problem})
        else:
            chosen.append(name)
    return chosen, skipped


# ----------------------------------------------------------------------------- measurement


def _data(cfg: ConvConfig, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed + n)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, size=n).astype(np.int32)
    return x, y


def _prepare(
    cfg: ConvConfig, name: str, weights: _Weights, batch: int, mode: str, log: Callable
) -> tuple[_Impl, Any, tuple[Any, Any], dict[str, Any]]:
    """Build ``name``, time its first call, warm it up: ``(impl, state, (x, y), entry)``."""
    log(f"{weights.input_shape} batch {batch} {mode}: {name}: building and compiling")
    impl = _BUILDERS[name](cfg, weights, jnp.float32, batch, mode)
    steps = 1 if mode == "step" else cfg.epoch_steps
    x, y = impl.inputs(
        *_data(cfg, weights.input_shape, steps * batch if mode == "epoch" else batch)
    )
    start = time.perf_counter()
    state, loss = impl.step(impl.state, x, y)
    impl.block((state, loss))
    first = time.perf_counter() - start
    warm = 2 if mode == "step" else 1  # an epoch may last long (JAX issue #12868)
    state, _, t_warm = _run_steps(impl, state, x, y, warm)
    entry = {
        "compile_s": max(first - t_warm / warm, 0.0),  # trace + compile
        "first_call_s": first,
        "steps_per_call": steps,
        "calls_per_round": _count(cfg.min_time, cfg.max_calls, t_warm / warm),
        "loss_first": impl.loss(loss),
    }
    return impl, state, (x, y), entry


def _ratios(times: list[float], ref: list[float] | None) -> dict[str, float] | None:
    return None if ref is None else _stats([t / r for t, r in zip(times, ref, strict=True)])


def _bench(
    cfg: ConvConfig, names: list[str], weights: _Weights, batch: int, mode: str, log: Callable
) -> dict[str, Any]:
    impls, states, data, entry = {}, {}, {}, {}
    for name in names:
        impls[name], states[name], data[name], entry[name] = _prepare(
            cfg, name, weights, batch, mode, log
        )
    times: dict[str, list[float]] = {n: [] for n in names}  # s/step, one per round
    last_loss: dict[str, Any] = {}
    for r in range(cfg.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        log(f"{weights.input_shape} batch {batch} {mode}: round {r + 1}/{cfg.rounds}")
        for name in order:
            k = entry[name]["calls_per_round"]
            states[name], last_loss[name], t = _run_steps(impls[name], states[name], *data[name], k)
            times[name].append(t / (k * entry[name]["steps_per_call"]))
    for name in names:
        info = entry[name]
        info["ms_per_step"] = 1e3 * statistics.median(times[name])
        info["ms_per_step_rounds"] = [1e3 * t for t in times[name]]
        info["ratio_to_plain_jax"] = _ratios(times[name], times[REFERENCE])
        info["ratio_to_flax_linen"] = _ratios(times[name], times.get(PEER))
        info["loss_last"] = impls[name].loss(last_loss[name])
    return entry


def _agreement(
    cfg: ConvConfig, names: list[str], weights: _Weights, log: Callable
) -> dict[str, Any]:
    """Every implementation's losses over ``check_steps`` steps, alone and scanned, in float64."""
    batch, steps = cfg.check_batch, cfg.check_steps
    x_np, y_np = _data(cfg, weights.input_shape, steps * batch)
    losses: dict[str, dict[str, list[float]]] = {"step": {}, "epoch": {}}
    with jax.enable_x64(True):
        log(f"{weights.input_shape} agreement (float64, batch {batch}): {', '.join(names)}")
        for name in names:
            impl = _BUILDERS[name](cfg, weights, jnp.float64, batch, "step")
            x, y = impl.inputs(x_np[:batch], y_np[:batch])
            state, trace = impl.state, []
            for _ in range(steps):
                state, loss = impl.step(state, x, y)
                trace.append(impl.loss(loss))
            losses["step"][name] = trace
            impl = _BUILDERS[name](cfg, weights, jnp.float64, batch, "epoch")
            _, epoch_losses = impl.step(impl.state, *impl.inputs(x_np, y_np))
            losses["epoch"][name] = [float(v) for v in np.asarray(epoch_losses)]
        params, bn_state = _plain_params(weights, jnp.float64)
        x, y = jnp.asarray(x_np[:batch], jnp.float64), jnp.asarray(y_np[:batch], jnp.int32)
        loss, grads = jax.jit(
            jax.value_and_grad(lambda p: _plain_loss(p, bn_state, x, y, weights.layers)[0])
        )(params)
        flat = np.concatenate([np.abs(np.ravel(g)) for g in jax.tree.leaves(grads)])
    h, w, _ = weights.input_shape
    widest = max(layer.shape[0] * layer.shape[1] * layer.shape[3]
                 for layer in weights.layers if layer.kind == "conv2d")  # fmt: skip
    terms = {
        "loss": float(loss),
        "grad_l1": float(flat.sum()),
        "grad_max": float(flat.max()),
        "steps": steps,
        "reduction": max(batch * h * w, widest),  # a kernel gradient's sum; dx's
    }
    diffs = {
        mode: {
            n: max(abs(a - b) for a, b in zip(trace, by_name[REFERENCE], strict=True))
            for n, trace in by_name.items()
        }
        for mode, by_name in losses.items()
    }
    return {
        "dtype": "float64",
        "batch": batch,
        "steps": steps,
        "losses": losses,
        "max_abs_diff_to_plain_jax": diffs,
        "tolerance": agreement_tolerance(**terms),
        "tolerance_terms": terms,
    }


# ----------------------------------------------------------------------------- the run


def _meta(cfg: ConvConfig, names: list[str]) -> dict[str, Any]:
    import os
    import platform
    import socket

    device = jax.devices()[0]
    return {
        "versions": _versions(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "model": {
            "network": f"jaxnn.networks.cnn(input_shape, {tuple(cfg.channels)}, {cfg.num_classes})",
            "loss": LOSS,
            "optimizer": f"adam({LEARNING_RATE:g})",
            "batchnorm": {"eps": BN_EPS, "new_batch_weight": BN_NEW_WEIGHT},
        },
        "dtype": "float32",
        "inputs": {n: list(INPUTS[n]) for n in cfg.inputs},
        "batches": list(cfg.batches),
        "modes": list(cfg.modes),
        "epoch_steps": cfg.epoch_steps,
        "rounds": cfg.rounds,
        "min_time_s": cfg.min_time,
        "quick": cfg.quick,
        "implementations": names,
        "reference": REFERENCE,
        "peer": PEER if PEER in names else None,
    }


def run(cfg: ConvConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module docstring).

    Raises:
      BenchError: an unknown implementation, input or mode, a batch size below 2.
    """
    log = log or (lambda line: None)
    names, skipped = _select(cfg)
    results, agreement = [], {}
    # The benchmark's dtypes, whatever the caller's jax_enable_x64 (the tests turn it on).
    with jax.enable_x64(False):
        meta = _meta(cfg, names)
        for input_name in cfg.inputs:
            weights = _initial_weights(cfg, input_name)
            agreement[input_name] = _agreement(cfg, names, weights, log)
            for batch in cfg.batches:
                per_mode = {
                    mode: _bench(cfg, names, weights, batch, mode, log) for mode in cfg.modes
                }
                if "step" in per_mode and "epoch" in per_mode:
                    for name, info in per_mode["epoch"].items():
                        info["scan_slowdown"] = (
                            info["ms_per_step"] / (per_mode["step"][name]["ms_per_step"])
                        )
                for mode, entry in per_mode.items():
                    results.append(
                        {
                            "input": input_name,
                            "batch": batch,
                            "mode": mode,
                            "implementations": entry,
                        }
                    )
    meta["agreement"] = agreement
    return {"meta": meta, "results": results, "skipped": skipped}


def table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per input, batch, mode and implementation."""
    meta = report["meta"]
    header = (
        "input", "batch", "mode", "implementation", "ms/step", "x plain min", "med", "max",
        "x flax min", "med", "max", "compile s", "scan slowdown",
    )  # fmt: skip
    rows = [header]
    for result in report["results"]:
        for name, info in result["implementations"].items():
            plain, flax = info["ratio_to_plain_jax"], info["ratio_to_flax_linen"] or {}
            rows.append(
                (
                    result["input"],
                    str(result["batch"]),
                    result["mode"],
                    name,
                    f"{info['ms_per_step']:.3f}",
                    *(f"{plain[k]:.2f}" for k in ("min", "median", "max")),
                    *(_fmt(flax.get(k), ".2f") for k in ("min", "median", "max")),
                    f"{info['compile_s']:.2f}",
                    _fmt(info.get("scan_slowdown"), ".1f"),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"bench_conv: jax {meta['versions']['jax']} on {meta['backend']} "
        f"({meta['device_kind']}, {meta['cpu_count']} CPUs), float32, "
        f"{meta['model']['network']}, {meta['rounds']} rounds, epochs of "
        f"{meta['epoch_steps']} scanned steps"
    ]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i in (0, 2, 3) else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True)))
        )  # fmt: skip
    for input_name, agreement in meta["agreement"].items():
        worst = max(max(d.values()) for d in agreement["max_abs_diff_to_plain_jax"].values())
        lines.append(
            f"agreement {input_name} (float64, batch {agreement['batch']}, {agreement['steps']} "
            f"steps alone and scanned, same parameters): max |loss - plain_jax's| {worst:.1e} "
            f"(rounding bound {agreement['tolerance']:.1e})"
        )
    for s in report["skipped"]:
        lines.append(f"skipped {s['implementation']}: {s['reason']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


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


def _steps(text: str) -> int:
    """argparse type of ``--epoch-steps``: a whole number >= 1."""
    return _rounds(text)


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(
        prog="python benchmarks/bench_conv.py",
        description="Time the training step of jaxnn's convolutional network (cnn, channels "
        "32,64, BatchNorm) alone and scanned over an epoch: jaxnn (autodiff and hand-derived "
        "gradients) against plain JAX and, where installed, Flax linen, interleaved. Prints a "
        "table and writes the JSON report.",
    )
    a = p.add_argument
    a("-q", "--quiet", action="store_true",
      help="no progress on stderr (progress shows only when stderr is a terminal)")  # fmt: skip
    a("--inputs", type=_names(tuple(INPUTS), "input names"), default=None, metavar="NAME,NAME",
      help="digits (8x8x1) and/or mnist (28x28x1) (default: digits,mnist; with --quick digits)")  # fmt: skip
    a("--batches", type=_batches, default=None, metavar="N,N",
      help="batch sizes (default: 128; with --quick 8)")  # fmt: skip
    a("--rounds", type=_rounds, default=None, metavar="N",
      help="timed rounds, a whole number >= 1 (default: 5; with --quick 2)")  # fmt: skip
    a("--modes", type=_names(MODES, "modes"), default=None, metavar="MODE,MODE",
      help="step (one jitted step per call) and/or epoch (steps in one lax.scan, as "
      "make_epoch) (default: step,epoch)")  # fmt: skip
    a("--epoch-steps", type=_steps, default=None, metavar="N",
      help="steps in one scanned epoch, a whole number >= 1 (default: 8; with --quick 2)")  # fmt: skip
    a("--only", type=_names(IMPLEMENTATIONS, "implementation names"), default=None,
      metavar="NAME[,NAME]",
      help="only these implementations (plain_jax, the reference, always runs)")  # fmt: skip
    a("--out", default="bench_conv.json", metavar="FILE",
      help="the JSON report (default: bench_conv.json)")  # fmt: skip
    a("--quick", action="store_true",
      help="digits, channels 4,8, batch 8, epochs of 2 steps, 2 short rounds (the tests run it)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors exit through argparse (``SystemExit(2)``), as ``--help`` does
    (``SystemExit(0)``).
    """
    args = parser().parse_args(argv)
    problem = _check_out_file(args.out)
    if problem:
        print(f"bench_conv: {problem}", file=sys.stderr)
        return 2
    config = quick_config() if args.quick else ConvConfig()
    given = {
        "inputs": args.inputs,
        "batches": args.batches,
        "rounds": args.rounds,
        "modes": args.modes,
        "epoch_steps": args.epoch_steps,
        "only": args.only,
    }
    config = config._replace(**{k: v for k, v in given.items() if v})
    show = not args.quiet and sys.stderr.isatty()
    try:
        report = run(config, log=lambda line: print(line, file=sys.stderr) if show else None)
    except BenchError as e:
        print(f"bench_conv: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
