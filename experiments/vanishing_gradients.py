"""Vanishing gradients, measured layer by layer, against the chain rule's bound.

The source text: "Backpropagation is the chain rule ... Understanding it explains vanishing
gradients." For an MLP of ``L`` dense layers ``z_l = a_{l-1} W_l + b_l``, ``a_l = f(z_l)``
(rows are examples, ``W_l`` is ``[in, out]``), the backpropagated signal ``δ_l = ∂L/∂z_l``
obeys, without BatchNorm::

    δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ),     ∂L/∂W_l = a_{l-1}ᵀ δ_l

so, with ``‖·‖`` the Frobenius norm over the batch and ``‖W‖₂`` the spectral norm,
``‖δ_l‖ ≤ max f'(z_l) · ‖W_{l+1}‖₂ · ‖δ_{l+1}‖``. For the sigmoid ``f' = σ(1 − σ) ≤ 1/4``:
every layer multiplies the signal by at most ``‖W_{l+1}‖₂ / 4``, and with Glorot's weights
(``‖W‖₂ ≈ 2`` for a square 64x64 layer) the gradient reaching the first layers of a deep
sigmoid network shrinks geometrically. tanh has ``f' ≤ 1``, ReLU ``f' ∈ {0, 1}``, and BatchNorm
between the affine map and ``f`` rescales every layer's input (and its Jacobian).

**Setup** (``SETUP``, written to the JSON): digits, width-64 MLPs of ``DEPTHS`` dense layers,
sigmoid, tanh and ReLU, with and without BN, standard and N(0, 1) initialisation, trained by
``fit``; at the epochs of ``CHECKPOINTS`` the per-layer gradients are read from the layers' own
hand-derived VJPs (:func:`jaxnn.backprop.layer_gradients`).

**Rounding.** The bound holds for the computed float32 arrays up to rounding, derived (not
tuned) from the standard model of floating-point arithmetic: the dot ``δ_{l+1} W_{l+1}ᵀ`` of
``n`` terms (``γ_n``), the product with ``f'`` (``u``) and the recomputation of ``f'`` for
``m`` (``γ_3``) add at most ``γ_{n+4}`` relative error per element with respect to ``|f'|
(|δ_{l+1}| |W_{l+1}|ᵀ)``, ``γ_k = k u / (1 − k u)``, ``u = 2⁻²⁴``; so ``‖δ_l‖ ≤ m (‖W‖₂ +
γ_{n+4} ‖|W|‖₂) ‖δ_{l+1}‖ + √(B n_l)(2n + 2) t``, with ``t`` float32's smallest normal (XLA on
CPU flushes subnormal results to zero: an absolute error below ``t`` for each of the ``2n``
operations of an element, ``n`` products, ``n − 1`` sums and the product with ``f' ≤ 1``).
``m`` is 1/4 for claim (a), ``max f'`` for the general check; the slack also covers the
computed ``σ'(z) = σ(z)σ(−z)``, which exceeds 1/4 by one ulp (0.25000003) near ``z = 0`` when
both factors round up (each within an ulp of σ, assumed). Accelerators that run float32 dots
at reduced precision (TF32) void the derivation: the experiment runs on the CPU.

**Quick mode** (``main(..., quick=True)``): depth 10 only, the networks of
``QUICK_NETWORKS``, both initialisations, ``QUICK_EPOCHS`` epochs. The four claims are decided
by ``RULES`` (fixed before the run, written to the JSON). Writes ``vanishing_gradients.json``
and ``.png``.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxnn import Layer, activations, backprop, data, mlp
from jaxnn.combinators import layer_keys
from jaxnn.fitting import DivergenceWarning, fit
from jaxnn.optim import sgd
from jaxnn.train import TrainState
from jaxnn_experiments import common, plots

NAME = "vanishing_gradients"
SEED = 0
WIDTH = 64
CLASSES = 10
DEPTHS = (10, 20)  # dense layers L
QUICK_DEPTHS = (10,)
ACTIVATIONS = ("sigmoid", "tanh", "relu")
# Quick mode compiles three networks, not six: those the claims compare.
QUICK_NETWORKS = (("sigmoid", "no_bn"), ("sigmoid", "bn"), ("relu", "no_bn"))
STANDARD_INIT = {"sigmoid": "glorot_normal", "tanh": "glorot_normal", "relu": "he_normal"}
INITS = ("standard", "normal_1")
BN = {"no_bn": False, "bn": True}
LOSS = "softmax_cross_entropy_with_integer_labels"
LEARNING_RATE = 0.1
BATCH = 64
EPOCHS = 20
QUICK_EPOCHS = 2
CHECKPOINTS = (0, 1, 5, EPOCHS)
QUICK_CHECKPOINTS = (0, 1, QUICK_EPOCHS)
VANISHING_THRESHOLD = 1e-3  # claim (b): ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ below this
MITIGATION_FACTOR = 100.0  # claims (c), (d): that ratio at least this many times larger
SIGMOID_BOUND = 0.25  # max σ' = σ'(0)
U32 = 2.0**-24  # float32 unit roundoff
TINY32 = float(np.finfo(np.float32).tiny)

SETUP = {
    "data": "jaxnn.data.digits(seed=0): 1079 train / 359 validation, standardised, float32",
    "network": f"mlp([{WIDTH}] * (L - 1) + [{CLASSES}], activation, batchnorm=False/True), "
    "logits out, zero biases",
    "init": "standard: glorot_normal (sigmoid, tanh), he_normal (relu); normal_1: "
    "jax.nn.initializers.normal(1.0); all networks of one depth draw their kernels from the "
    "same key; the BN network gets the plain network's kernels",
    "batchnorm": "library default (pytorch convention, momentum 0.1, eps 1e-5), between each "
    "hidden dense layer and its activation",
    "loss": LOSS,
    "optimizer": f"plain SGD (jaxnn.optim.sgd), learning rate {LEARNING_RATE}, the same for every "
    "network, fixed before the run",
    "batch_size": BATCH,
    "gradient_measurement": "whole training set, train mode, backpropagation through the layers' "
    "hand-derived VJPs; norms in float64 from the float32 arrays",
    "dtype": "float32",
}
RULES = {
    "ratio": "per-layer ratio r_l = ||delta_l||_F / ||delta_{l+1}||_F, delta_l = dL/dz_l the "
    "gradient w.r.t. dense layer l's output, over the whole training set, l = 1..L-1",
    "slack": "rounding slack, derived: gamma_{n+4} = (n+4)u/(1-(n+4)u), u = 2^-24, n = fan-out "
    "of W_{l+1}; abs = sqrt(B n_l)(2n+2) * float32 smallest normal, B examples, n_l units of "
    "layer l",
    "claim_a": "holds if, in every sigmoid network without BN (every depth, both inits, every "
    "recorded epoch), every layer satisfies ||delta_l|| <= (1/4)(||W_{l+1}||_2 + gamma_{n+4} "
    "|| |W_{l+1}| ||_2) ||delta_{l+1}|| + abs; layers with a non-finite norm are counted as "
    "violations",
    "general_bound": "reported, not decided on: the same check for every network without BN with "
    "max f'(z_l) (the measured largest derivative of layer l) in place of 1/4; layers with a "
    "non-finite norm (diverged runs) are counted apart",
    "first_over_last": "||dL/dW_1||_F / ||dL/dW_L||_F over the whole training set, train mode",
    "claim_b": "holds if, in the deepest network run (L = 20; quick mode: 10), sigmoid + Glorot "
    f"normal without BN, at initialisation (epoch 0), first_over_last < {VANISHING_THRESHOLD:g}",
    "claim_c": "holds if the same network with BN (same kernels, epoch 0) has first_over_last >= "
    f"{MITIGATION_FACTOR:g} x that of the network without BN",
    "claim_d": "holds if the relu + He normal network without BN (same depth, epoch 0) has "
    f"first_over_last >= {MITIGATION_FACTOR:g} x that of the sigmoid + Glorot network without BN",
    "geometric_mean_decay": "reported: (||delta_1|| / ||delta_L||)^(1/(L-1)), the geometric mean "
    "of the per-layer ratios, beside the geometric means of the bounds and of the typical "
    "factor mean f'(z_l) ||W_{l+1}||_F / sqrt(n) (a heuristic, not decided on)",
}
LABELS = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "ReLU",
    "standard": "standard init (Glorot normal; He normal for ReLU)",
    "normal_1": "N(0, 1) init",
    "no_bn": "without BN",
    "bn": "with BN",
    "epoch": "epoch (0: initialisation)",
    "grad_w_norm": "‖∂L/∂W_l‖_F, l = 1..L",
    "delta_norm": "‖δ_l‖_F = ‖∂L/∂z_l‖_F, l = 1..L",
    "delta_ratio": "‖δ_l‖/‖δ_{l+1}‖, l = 1..L−1",
    "w_spectral_norm": "‖W_l‖₂, l = 1..L",
    "w_abs_spectral_norm": "‖|W_l|‖₂ (entrywise absolute value), l = 1..L",
    "dact_max": "max f'(z_l) over the batch and units (BN: at the BN output), hidden l",
    "dact_mean": "mean f'(z_l), hidden l",
    "bound_quarter": "(1/4)‖W_{l+1}‖₂ (sigmoid)",
    "bound_general": "max f'(z_l) · ‖W_{l+1}‖₂",
    "slack_quarter": "rounding slack of the 1/4 bound, as a ratio",
    "slack_general": "rounding slack of the general bound, as a ratio",
    "first_over_last": "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖",
    "geometric_mean_ratio": "geometric mean of ‖δ_l‖/‖δ_{l+1}‖",
    "geometric_mean_bound_quarter": "geometric mean of (1/4)‖W_{l+1}‖₂",
    "geometric_mean_bound_general": "geometric mean of max f'·‖W_{l+1}‖₂",
    "w_frobenius_norm": "‖W_l‖_F, l = 1..L",
    "typical_factor": "mean f'(z_l) · ‖W_{l+1}‖_F / √n: the factor for a δ_{l+1} with no "
    "preferred direction (a heuristic, not a bound)",
    "geometric_mean_typical_factor": "geometric mean of the typical factor",
    "train_loss": "training loss (whole set, train mode)",
    "val_accuracy": "validation accuracy (eval mode)",
    "history": "fit's per-epoch records",
    "diverged": "a loss or gradient became non-finite",
    "w_init": "kernel initialiser",
    "seconds": "wall time (s)",
    "checked": "layer transitions checked",
    "violations": "layer transitions above bound + slack (non-finite included)",
    "non_finite": "layer transitions with a non-finite norm",
    "max_margin": "largest ‖δ_l‖ / (bound · ‖δ_{l+1}‖ + slack)",
    "holds_where_finite": "every finite layer transition within the bound",
    "general_bound": "the bound max f'(z_l)·‖W_{l+1}‖₂, every network without BN",
    "margin_quarter": "‖δ_l‖ / ((1/4)(‖W‖₂ + γ‖|W|‖₂)‖δ_{l+1}‖ + abs)",
    "margin_general": "‖δ_l‖ / (max f'(‖W‖₂ + γ‖|W|‖₂)‖δ_{l+1}‖ + abs)",
    "ok_quarter": "within the 1/4 bound + slack",
    "ok_general": "within the general bound + slack",
    "finite_quarter": "numbers finite (1/4 bound)",
    "finite_general": "numbers finite (general bound)",
    "fan_out": "fan-out n of W_l",
    "batch": "examples B in the measured batch",
    "loss": "mean training loss of the epoch's updates",
    "first_over_last_bn": "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖, with BN",
    "first_over_last_no_bn": "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖, without BN",
    "first_over_last_relu_he": "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖, ReLU + He",
    "first_over_last_sigmoid_glorot": "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖, sigmoid + Glorot",
    "factor": "ratio of the two",
    "threshold": "threshold",
    "depth": "dense layers L",
    "sigmoid_above_quarter": "sigmoid layers (no BN, every checkpoint) whose largest computed σ' "
    "exceeds 1/4 (rounding)",
}


def _gamma(k: int) -> float:
    return k * U32 / (1 - k * U32)


def network(depth: int, act: str, bn: bool, w_init: Any = "glorot_normal") -> Layer:
    """``mlp([WIDTH] * (depth − 1) + [CLASSES], act, batchnorm=bn)`` in float32."""
    return mlp(
        [WIDTH] * (depth - 1) + [CLASSES],
        act,
        batchnorm=bn,
        w_init=w_init,
        param_dtype=jnp.float32,
    )


def _w_init(act: str, init: str) -> Any:
    return jax.nn.initializers.normal(1.0) if init == "normal_1" else STANDARD_INIT[act]


def layer_gradients(
    net: Layer, act: str, params: dict, state: dict, x: jax.Array, y: jax.Array
) -> dict[str, Any]:
    """What each dense layer of ``net`` receives in backpropagation, and ``f'`` at each hidden layer.

    :func:`jaxnn.backprop.layer_gradients` through the layers' hand-derived VJPs: at dense layer
    ``l`` the received ``dy`` is ``δ_l = ∂L/∂z_l`` and ``dparams["w"]`` is ``∂L/∂W_l``.

    Returns:
      ``{"loss": [], "grad_w": [L] arrays [in, out], "delta": [L] arrays [batch, out],
      "dact_max": [L − 1] scalars, "dact_mean": [L − 1] scalars}`` with ``dact`` the hidden
      activations' derivative ``f'`` at their inputs (after BN where there is BN).
    """
    loss, layers, _ = backprop.layer_gradients(net, LOSS, params, state, x, y, train=True)
    dense = [layers[k] for k in layer_keys(net, "dense")]
    dact = [activations.get(act).derivative(layers[k].x) for k in layer_keys(net, act)]
    return {
        "loss": loss,
        "grad_w": [g.dparams["w"] for g in dense],
        "delta": [g.dy for g in dense],
        "dact_max": [jnp.max(d) for d in dact],
        "dact_mean": [jnp.mean(d) for d in dact],
    }


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def bound_check(
    delta_norm: list,
    w_spectral_norm: list,
    w_abs_spectral_norm: list,
    fan_out: list[int],
    batch: int,
    dact_max: list | float,
) -> dict[str, list]:
    """Whether ``‖δ_l‖ ≤ m (‖W_{l+1}‖₂ + γ_{n+4}‖|W_{l+1}|‖₂) ‖δ_{l+1}‖ + abs``, per layer.

    ``m`` is ``dact_max`` (a list, per hidden layer) or one number (1/4 for the sigmoid). A
    layer with a non-finite or missing number fails. Returns the bounds ``m ‖W_{l+1}‖₂``, the
    slack as a ratio, the margins ``‖δ_l‖ / (bound · ‖δ_{l+1}‖ + slack)`` and ``ok`` per layer.
    """
    depth = len(delta_norm)
    ms = dact_max if isinstance(dact_max, list) else [dact_max] * (depth - 1)
    out: dict[str, list] = {"bound": [], "slack": [], "margin": [], "ok": [], "finite": []}
    for i in range(depth - 1):
        d_l, d_next, m = delta_norm[i], delta_norm[i + 1], ms[i]
        w2, wabs, n = w_spectral_norm[i + 1], w_abs_spectral_norm[i + 1], fan_out[i + 1]
        n_l = fan_out[i]
        if any(v is None or not math.isfinite(v) for v in (d_l, d_next, m, w2, wabs)):
            for key, value in (("bound", None), ("slack", None), ("margin", None)):
                out[key].append(value)
            out["ok"].append(False)
            out["finite"].append(False)
            continue
        absolute = math.sqrt(batch * n_l) * (2 * n + 2) * TINY32
        rhs = m * (w2 + _gamma(n + 4) * wabs) * d_next + absolute
        out["bound"].append(m * w2)
        out["slack"].append(m * _gamma(n + 4) * wabs + (absolute / d_next if d_next else math.inf))
        out["margin"].append(d_l / rhs if rhs else (0.0 if d_l == 0 else math.inf))
        out["ok"].append(d_l <= rhs)
        out["finite"].append(True)
    out["slack"] = [_finite(v) if v is not None else None for v in out["slack"]]
    out["margin"] = [_finite(v) if v is not None else None for v in out["margin"]]
    return out


def _geometric_mean(values: list) -> float | None:
    if not values or any(v is None or not v > 0 or not math.isfinite(v) for v in values):
        return None
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def _measure_fn(net: Layer, act: str):
    """One compiled function per network: the per-layer gradients, the validation accuracy."""

    @jax.jit
    def measure(params, state, x, y, x_val, y_val):
        logits, _ = net.apply(params, state, x_val, train=False)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y_val)
        return {**layer_gradients(net, act, params, state, x, y), "val_accuracy": accuracy}

    return measure


def checkpoint_record(
    net: Layer, act: str, bn: bool, measured: Any, params: dict, epoch: int
) -> dict[str, Any]:
    """One checkpoint's JSON-ready numbers, from ``measured`` (:func:`layer_gradients` and the
    validation accuracy) and the kernels in ``params``; the bound checks for networks without BN.
    """
    hand = jax.tree.map(np.asarray, measured)
    ws = [np.asarray(params[n]["w"], np.float64) for n in layer_keys(net, "dense")]
    batch = int(hand["delta"][0].shape[0])
    fan_out = [int(w.shape[1]) for w in ws]
    finite_w = [bool(np.all(np.isfinite(w))) for w in ws]
    w2 = [
        float(np.linalg.norm(w, 2)) if ok else math.nan for w, ok in zip(ws, finite_w, strict=True)
    ]
    wabs = [
        float(np.linalg.norm(np.abs(w), 2)) if ok else math.nan
        for w, ok in zip(ws, finite_w, strict=True)
    ]

    def fro(a: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float64)))

    delta_norm = [_finite(fro(d)) for d in hand["delta"]]
    grad_norm = [_finite(fro(g)) for g in hand["grad_w"]]
    dact_max = [_finite(float(v)) for v in hand["dact_max"]]
    ratio = [a / b if a is not None and b else None for a, b in itertools.pairwise(delta_norm)]
    rec: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": _finite(float(hand["loss"])),
        "val_accuracy": _finite(float(hand["val_accuracy"])),
        "grad_w_norm": grad_norm,
        "delta_norm": delta_norm,
        "delta_ratio": ratio,
        "w_spectral_norm": [_finite(v) for v in w2],
        "w_abs_spectral_norm": [_finite(v) for v in wabs],
        "w_frobenius_norm": [_finite(fro(w)) for w in ws],
        "fan_out": fan_out,
        "batch": batch,
        "dact_max": dact_max,
        "dact_mean": [_finite(float(v)) for v in hand["dact_mean"]],
    }
    first, last = grad_norm[0], grad_norm[-1]
    rec["first_over_last"] = first / last if first is not None and last else None
    rec["geometric_mean_ratio"] = _geometric_mean(ratio)
    if not bn:
        # The typical factor: for δ_{l+1} with no preferred direction, E‖δ Wᵀ‖² = ‖W‖_F²/n ‖δ‖².
        typical = [
            m * wf / math.sqrt(n) if m is not None and wf is not None else None
            for m, wf, n in zip(
                rec["dact_mean"], rec["w_frobenius_norm"][1:], fan_out[1:], strict=True
            )
        ]
        rec["typical_factor"] = typical
        rec["geometric_mean_typical_factor"] = _geometric_mean(typical)
        args = (delta_norm, rec["w_spectral_norm"], rec["w_abs_spectral_norm"], fan_out, batch)
        general = bound_check(*args, dact_max)
        rec["bound_general"], rec["slack_general"] = general["bound"], general["slack"]
        rec["margin_general"], rec["ok_general"] = general["margin"], general["ok"]
        rec["finite_general"] = general["finite"]
        rec["geometric_mean_bound_general"] = _geometric_mean(general["bound"])
        if act == "sigmoid":
            quarter = bound_check(*args, SIGMOID_BOUND)
            rec["bound_quarter"], rec["slack_quarter"] = quarter["bound"], quarter["slack"]
            rec["margin_quarter"], rec["ok_quarter"] = quarter["margin"], quarter["ok"]
            rec["finite_quarter"] = quarter["finite"]
            rec["geometric_mean_bound_quarter"] = _geometric_mean(quarter["bound"])
    return rec


def _initial_params(depth: int, act: str, init: str, x_shape: tuple[int, ...]):
    """Kernels drawn from one key per depth; the BN network gets the plain one's kernels."""
    key = jax.random.key(SEED + depth)
    plain_net = network(depth, act, False, _w_init(act, init))
    plain_params, plain_state = plain_net.init(key, x_shape)
    bn_net = network(depth, act, True, _w_init(act, init))
    bn_params, bn_state = bn_net.init(key, x_shape)
    for p, b in zip(layer_keys(plain_net, "dense"), layer_keys(bn_net, "dense"), strict=True):
        # only the kernel: a dense layer followed by BN has no bias (its shift is BN's β)
        bn_params[b] = {**bn_params[b], "w": plain_params[p]["w"]}
    return {"no_bn": (plain_params, plain_state), "bn": (bn_params, bn_state)}


def _train_and_measure(
    net: Layer, act: str, bn: bool, params: dict, state: dict, measure: Any, arrays: tuple,
    epochs: int, checkpoints: tuple[int, ...], optimizer: Any,
) -> dict[str, Any]:  # fmt: skip
    """Measure at epoch 0, train with ``fit``, measure at the checkpoint epochs."""
    x, y = arrays[:2]
    start = time.perf_counter()
    recs = [checkpoint_record(net, act, bn, measure(params, state, *arrays), params, 0)]

    def callback(epoch: int, ts: TrainState, record: dict[str, float]) -> None:
        del record
        if epoch in checkpoints:  # ts is valid during the call only: measured here
            m = measure(ts.params, ts.state, *arrays)
            recs.append(checkpoint_record(net, act, bn, m, ts.params, epoch))

    ts = TrainState.create(net, optimizer, jax.random.key(SEED), params=params, state=state)
    # A run that diverges (the N(0, 1) kernels of deep ReLU networks) is part of the result:
    # it trains every epoch, and `diverged` below records it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        fitted = fit(
            net, LOSS, optimizer, ts, (x, y), epochs=epochs, batch_size=BATCH, callback=callback,
            on_nonfinite="continue",
        )  # fmt: skip
    history = [{"epoch": r["epoch"], "loss": _finite(float(r["loss"]))} for r in fitted.history]
    return {
        "checkpoints": recs,
        "history": history,
        "diverged": any(h["loss"] is None for h in history)
        or any(r["first_over_last"] is None for r in recs),
        "val_accuracy": recs[-1]["val_accuracy"],
        "seconds": time.perf_counter() - start,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Train and measure every network; decide the claims. Returns a JSON-ready dict."""
    depths = QUICK_DEPTHS if quick else DEPTHS
    epochs = QUICK_EPOCHS if quick else EPOCHS
    checkpoints = QUICK_CHECKPOINTS if quick else CHECKPOINTS
    kinds = QUICK_NETWORKS if quick else tuple((a, b) for a in ACTIVATIONS for b in BN)
    runs: dict[str, Any] = {}
    optimizer = sgd(LEARNING_RATE)  # one object: fit's compiled epochs are cached by it
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        splits = data.digits(seed=SEED)
        arrays = tuple(
            jnp.asarray(a)
            for a in (splits.train.x, splits.train.y, splits.validation.x, splits.validation.y)
        )
        configs = [(d, a, b) for d in depths for a, b in kinds]
        initial: dict[tuple[int, str, str], dict[str, tuple[dict, dict]]] = {}
        for depth, act, bn_key in common.progress(configs, "networks", unit="net"):
            net = network(depth, act, BN[bn_key])  # both inits share its compiled functions
            measure = _measure_fn(net, act)
            for init in INITS:
                if (depth, act, init) not in initial:  # both BN variants from one draw
                    shape = tuple(arrays[0].shape)
                    initial[depth, act, init] = _initial_params(depth, act, init, shape)
                params, state = initial[depth, act, init][bn_key]
                entry = _train_and_measure(
                    net, act, BN[bn_key], params, state, measure, arrays, epochs, checkpoints,
                    optimizer,
                )  # fmt: skip
                entry = {
                    "w_init": STANDARD_INIT[act] if init == "standard" else "normal(1.0)"
                } | entry
                by_init = runs.setdefault(f"depth_{depth}", {}).setdefault(act, {})
                by_init.setdefault(init, {})[bn_key] = entry
    result = {
        "setup": {
            **SETUP,
            "depths": list(depths),
            "networks": [list(k) for k in kinds],
            "epochs": epochs,
            "checkpoints": list(checkpoints),
        },
        "quick": quick,
        "rules": RULES,
        "runs": runs,
    }
    result["decisions"] = decide(result)
    result["claims"] = claims(result)
    return result


def _bound_counts(recs: list[dict[str, Any]], which: str) -> dict[str, Any]:
    """Layers checked, violations (non-finite included), non-finite, and the largest margin."""
    ok = [v for r in recs for v in r[f"ok_{which}"]]
    finite = [v for r in recs for v in r[f"finite_{which}"]]
    margins = [m for r in recs for m in r[f"margin_{which}"] if m is not None]
    return {
        "checked": len(ok),
        "violations": sum(not v for v in ok),
        "non_finite": sum(not v for v in finite),
        "max_margin": max(margins, default=None),
    }


def decide(result: dict[str, Any]) -> dict[str, Any]:
    """The four claims' numbers and verdicts, by ``RULES``, from the recorded numbers."""
    runs = result["runs"]
    sigmoid, plain = [], []
    for by_act in runs.values():
        for act, by_init in by_act.items():
            for by_bn in by_init.values():
                if "no_bn" in by_bn:
                    plain += by_bn["no_bn"]["checkpoints"]
                    if act == "sigmoid":
                        sigmoid += by_bn["no_bn"]["checkpoints"]
    a = _bound_counts(sigmoid, "quarter")
    above_quarter = sum(m is not None and m > SIGMOID_BOUND for r in sigmoid for m in r["dact_max"])
    general = _bound_counts(plain, "general")
    deepest = f"depth_{max(result['setup']['depths'])}"

    def fol(act: str, bn: str) -> float | None:
        return runs[deepest][act]["standard"][bn]["checkpoints"][0]["first_over_last"]

    base, with_bn, relu = fol("sigmoid", "no_bn"), fol("sigmoid", "bn"), fol("relu", "no_bn")
    return {
        "claim_a": {
            **a,
            "sigmoid_above_quarter": above_quarter,
            "holds": a["checked"] > 0 and a["violations"] == 0,
        },
        "general_bound": {
            **general,
            "holds_where_finite": general["violations"] == general["non_finite"],
        },
        "claim_b": {
            "depth": int(deepest.removeprefix("depth_")),
            "first_over_last": base,
            "threshold": VANISHING_THRESHOLD,
            "holds": base is not None and base < VANISHING_THRESHOLD,
        },
        "claim_c": {
            "first_over_last_bn": with_bn,
            "first_over_last_no_bn": base,
            "factor": with_bn / base if with_bn is not None and base else None,
            "holds": with_bn is not None
            and base is not None
            and with_bn >= MITIGATION_FACTOR * base,
        },
        "claim_d": {
            "first_over_last_relu_he": relu,
            "first_over_last_sigmoid_glorot": base,
            "factor": relu / base if relu is not None and base else None,
            "holds": relu is not None and base is not None and relu >= MITIGATION_FACTOR * base,
        },
    }


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of the source text, with the verdicts of :func:`decide`."""
    d = result["decisions"]
    a, b, c, e, gb = (d[k] for k in ("claim_a", "claim_b", "claim_c", "claim_d", "general_bound"))
    depth = b["depth"]

    def g(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3g}"

    return [
        common.claim(
            "Backpropagation is the chain rule: through a sigmoid layer the backpropagated signal "
            "is multiplied by σ'(z) <= 1/4 and by the weights, so "
            "‖δ_l‖ <= (1/4)‖W_{l+1}‖₂ ‖δ_{l+1}‖",
            RULES["claim_a"],
            a["holds"],
            f"{a['violations']} of {a['checked']} sigmoid layer transitions (every depth, init "
            f"and recorded epoch) above (1/4)‖W‖₂ + slack; largest ‖δ_l‖/(bound·‖δ_{{l+1}}‖ + "
            f"slack) = {g(a['max_margin'])}; general bound max f'·‖W‖₂ (all activations): "
            f"{gb['violations'] - gb['non_finite']} of {gb['checked'] - gb['non_finite']} finite "
            f"transitions above it ({gb['non_finite']} non-finite, diverged runs)",
            f"{NAME}.png, panels (g) and (h)",
        ),
        common.claim(
            "Understanding backpropagation explains vanishing gradients: in a deep sigmoid "
            "network the gradient reaching the early layers shrinks geometrically",
            RULES["claim_b"],
            b["holds"],
            f"{depth}-layer sigmoid + Glorot network without BN at initialisation: "
            f"‖∂L/∂W_1‖/‖∂L/∂W_L‖ = {g(b['first_over_last'])} (threshold {VANISHING_THRESHOLD:g})",
            f"{NAME}.png, panels (a) and (i)",
        ),
        common.claim(
            "BatchNorm mitigates vanishing gradients",
            RULES["claim_c"],
            c["holds"],
            f"{depth}-layer sigmoid + Glorot at initialisation: ‖∂L/∂W_1‖/‖∂L/∂W_L‖ = "
            f"{g(c['first_over_last_bn'])} with BN vs {g(c['first_over_last_no_bn'])} without "
            f"(factor {g(c['factor'])}; needed {MITIGATION_FACTOR:g})",
            f"{NAME}.png, panels (a) and (i)",
        ),
        common.claim(
            "ReLU with He initialisation mitigates vanishing gradients",
            RULES["claim_d"],
            e["holds"],
            f"{depth}-layer networks without BN at initialisation: ‖∂L/∂W_1‖/‖∂L/∂W_L‖ = "
            f"{g(e['first_over_last_relu_he'])} for ReLU + He vs "
            f"{g(e['first_over_last_sigmoid_glorot'])} for sigmoid + Glorot (factor "
            f"{g(e['factor'])}; needed {MITIGATION_FACTOR:g})",
            f"{NAME}.png, panels (c) and (i)",
        ),
    ]


STYLES = {  # (init, bn): colour, line style, marker; BN makes the two inits coincide
    ("standard", "no_bn"): ("tab:red", "-", "o"),
    ("standard", "bn"): ("tab:blue", "-", "s"),
    ("normal_1", "no_bn"): ("tab:orange", "--", "^"),
    ("normal_1", "bn"): ("tab:cyan", ":", "x"),
}
ACT_COLORS = {"sigmoid": "tab:red", "tanh": "tab:green", "relu": "tab:purple"}
RATIO_FLOOR = 1e-3  # panel (g): ratios far below their bound (saturated tanh) are counted


def _positive(values: list) -> np.ndarray:
    return np.asarray([v if v is not None and v > 0 else np.nan for v in values], np.float64)


def _per_layer_panels(axes: Any, deep: dict[str, Any], depth: int, final_epoch: int) -> None:
    """(a–f): ‖∂L/∂W_l‖ per layer, at initialisation (top) and after training (middle)."""
    layers = np.arange(1, depth + 1)
    for row, (which, when) in enumerate(
        ((0, "at initialisation"), (-1, f"after {final_epoch} epochs"))
    ):
        for col, act in enumerate(ACTIVATIONS):
            ax = axes[row, col]
            title = f"({'abcdef'[3 * row + col]}) {LABELS[act]}, {when}"
            if act not in deep:
                ax.set_title(title)
                ax.text(0.5, 0.5, "not run in quick mode", ha="center", transform=ax.transAxes)
                continue
            for (init, bn), (color, ls, marker) in STYLES.items():
                if bn not in deep[act][init]:
                    continue
                entry = deep[act][init][bn]
                label = f"{LABELS[init].split(' (')[0]}, {LABELS[bn]}"
                if entry["diverged"] and row:
                    label += " (diverged: no finite gradient)"
                norms = _positive(entry["checkpoints"][which]["grad_w_norm"])
                ax.plot(layers, norms, ls, color=color, marker=marker, ms=4, mfc="none",
                        alpha=0.8, label=label)  # fmt: skip
            plots.finish(ax, title, legend={}, integer_x=True, yscale="log",
                         xlabel="dense layer l", ylabel=LABELS["grad_w_norm"] + " (log)")  # fmt: skip


def _ratio_panel(g: Any, runs: dict[str, Any]) -> None:
    """(g): measured ratio / bound, every layer of every network without BN."""
    below = 0
    for by_act in runs.values():
        for act, by_init in by_act.items():
            for by_bn in by_init.values():
                for rec in by_bn.get("no_bn", {}).get("checkpoints", []):
                    key = "bound_quarter" if act == "sigmoid" else "bound_general"
                    b, r = _positive(rec[key]), _positive(rec["delta_ratio"])
                    below += int(np.sum(r / b < RATIO_FLOOR))
                    g.plot(b, np.maximum(r / b, RATIO_FLOOR), ".", ms=3, alpha=0.5,
                           color=ACT_COLORS[act])  # fmt: skip
    for act, color in ACT_COLORS.items():
        bound = LABELS["bound_quarter" if act == "sigmoid" else "bound_general"]
        g.plot([], [], ".", color=color, label=f"{LABELS[act]}: bound {bound}")
    g.axhline(1.0, color="k", lw=1, label="ratio = bound")
    g.axhline(RATIO_FLOOR, color="0.5", lw=0.8, ls=":",
              label=f"{below} layers below {RATIO_FLOOR:g}, drawn here")  # fmt: skip
    plots.finish(
        g, "(g) measured ratio / bound: every layer of\nevery network without BN, all epochs",
        legend={"loc": "lower left"}, xscale="log", yscale="log",
        xlabel="bound on ‖δ_l‖/‖δ_{l+1}‖ (log)", ylabel="measured ‖δ_l‖/‖δ_{l+1}‖ / bound (log)",
    )  # fmt: skip


def _factor_panel(h: Any, rec: dict[str, Any], depth: int) -> None:
    """(h): the per-layer factors of the sigmoid + Glorot network without BN, at init."""
    ls = np.arange(1, depth)
    curves = (  # key, style, colour, label; the general bound is drawn over the 1/4 bound
        ("bound_quarter", "s-", "k", LABELS["bound_quarter"]),
        ("bound_general", "^:", "tab:gray", LABELS["bound_general"]),
        ("delta_ratio", "o-", "tab:red", LABELS["delta_ratio"]),
        ("dact_max", "x--", "tab:orange", "max σ'(z_l)"),
        ("dact_mean", "+-", "tab:olive", "mean σ'(z_l)"),
        ("typical_factor", "d-.", "tab:blue", "mean σ'(z_l)·‖W_{l+1}‖_F/√n (typical factor)"),
    )
    for z, (key, style, color, label) in enumerate(curves):
        h.plot(ls, _positive(rec[key]), style, color=color, mfc="none", ms=6 + 2 * (z == 0),
               zorder=2 + z, label=label)  # fmt: skip
    h.axhline(SIGMOID_BOUND, color="tab:orange", lw=0.8, ls=":", zorder=1, label="1/4")
    gm = rec["geometric_mean_ratio"]
    plots.finish(
        h, f"(h) sigmoid + Glorot, no BN, at initialisation\ngeometric-mean decay "
        f"{'n/a' if gm is None else f'{gm:.3f}'} per layer",
        legend={}, integer_x=True, yscale="log", xlabel="layer l", ylabel="per-layer factor (log)",
    )  # fmt: skip


def figure(result: dict[str, Any]) -> Figure:
    """Per-layer gradient norms at init (a–c) and after training (d–f); the bound (g, h); (i)."""
    runs, depth = result["runs"], max(result["setup"]["depths"])
    deep, final_epoch = runs[f"depth_{depth}"], result["setup"]["epochs"]
    fig = plots.figure((16, 13))
    axes = fig.subplots(3, 3)
    fig.suptitle(
        f"Vanishing gradients: {depth}-layer, width-{WIDTH} MLPs on digits, SGD lr {LEARNING_RATE}"
        f", {final_epoch} epochs ({'quick mode' if result['quick'] else 'full run'})"
    )
    _per_layer_panels(axes, deep, depth, final_epoch)
    _ratio_panel(axes[2, 0], runs)
    _factor_panel(axes[2, 1], deep["sigmoid"]["standard"]["no_bn"]["checkpoints"][0], depth)

    i = axes[2, 2]
    names, at_init, at_end = [], [], []
    for act, by_init in deep.items():
        for init, by_bn in by_init.items():
            for bn, entry in by_bn.items():
                name = f"{LABELS[act]}, {'std' if init == 'standard' else 'N(0,1)'}, {LABELS[bn]}"
                names.append(name + (" (diverged)" if entry["diverged"] else ""))
                at_init.append(entry["checkpoints"][0]["first_over_last"])
                at_end.append(entry["checkpoints"][-1]["first_over_last"])
    series = {"initialisation": (at_init, "tab:gray", "o"),
              f"epoch {final_epoch}": (at_end, "tab:green", "D")}  # fmt: skip
    plots.log_dots(i, names, series)
    i.axvline(VANISHING_THRESHOLD, color="tab:red", ls="--", lw=1,
              label=f"claim (b) threshold {VANISHING_THRESHOLD:g}")  # fmt: skip
    i.tick_params(axis="y", labelsize=7)
    plots.finish(
        i, f"(i) {LABELS['first_over_last']} (log), {depth} layers",
        grid="x", legend={"loc": "upper center", "bbox_to_anchor": (0.5, -0.1), "ncol": 3},
    )  # fmt: skip
    return fig


def report(result: dict[str, Any]) -> str:
    """The printed report: per network, the first/last ratio and decay; then the verdicts."""
    rows = []
    for depth_key, by_act in result["runs"].items():
        for act, by_init in by_act.items():
            for by_bn in by_init.values():
                for bn, entry in by_bn.items():
                    c0, c1 = entry["checkpoints"][0], entry["checkpoints"][-1]

                    def f(v: float | None, spec: str = ".2e") -> str:
                        return "n/a" if v is None else format(v, spec)

                    rows.append(
                        (
                            depth_key.removeprefix("depth_"),
                            act,
                            entry["w_init"],
                            bn,
                            f(c0["first_over_last"]),
                            f(c1["first_over_last"]),
                            f(c0["geometric_mean_ratio"], ".3f"),
                            f(
                                c0.get(
                                    "geometric_mean_bound_quarter",
                                    c0.get("geometric_mean_bound_general"),
                                ),
                                ".3f",
                            ),
                            f(c0.get("geometric_mean_typical_factor"), ".3f"),
                            f(entry["val_accuracy"], ".3f"),
                        )
                    )
    header = (
        "L", "act", "init", "BN", "W1/WL init", "W1/WL end", "gm ratio", "gm bound", "gm typical",
        "val acc",
    )  # fmt: skip
    lines = [
        common.table(rows, header, "llll" + "r" * 6),
        "W1/WL: ‖∂L/∂W_1‖/‖∂L/∂W_L‖ at initialisation and at the last epoch; gm: geometric means "
        "over the layers, at initialisation, of the ratio ‖δ_l‖/‖δ_{l+1}‖, of the bound ((1/4)‖W‖₂ "
        "for sigmoid, max f'·‖W‖₂ otherwise) and of the typical factor mean f'·‖W‖_F/√n (no BN "
        "only); val acc at the last epoch",
    ]
    for c in result["claims"]:
        lines.append(
            f"{'HOLDS' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']}\n    {c['evidence']}"
        )
    return "\n".join(lines)


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``vanishing_gradients.json`` and ``.png``; print the report."""
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
