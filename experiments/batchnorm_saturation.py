"""The source text's BatchNorm example: a saturating sigmoid, with and without BatchNorm.

Sigmoid maps x1 = 90 and x2 = 60 both to ~1: their difference is lost and the derivative
there, ``σ'(x) = σ(x) σ(-x) ≈ e^-x``, is ~0, so almost no gradient flows back to x. BatchNorm
(train mode, gamma = 1, beta = 0) standardises the batch first, so the sigmoid sees values near
0, where it is steep and keeps the spread.

Everything is computed twice, in float32 and in float64, for two batches:

* the pair ``x = [90, 60]``;
* a wide sample of ``SAMPLE_SIZE`` values drawn from a seeded normal, mean 75, std 15.

For each: the sigmoid outputs and derivatives without BN and with BN before the sigmoid; the
gradient that flows back to x for the loss ``L = Σ_i w_i σ(z_i)`` with fixed upstream weights
``w`` drawn from a seeded standard normal (``dL/dy = w``; a generic upstream gradient — with
``w`` all equal, the gradient through BN of a symmetric pair is exactly 0). Without BN,
``dL/dx = w σ'(x)`` (the sigmoid's hand-derived VJP); with BN, the sigmoid's VJP followed by
BatchNorm's hand-derived ``backward``; both are set beside ``jax.grad`` of the same composition.

For the pair, BN's output is ``±15/√(225 + eps) ≈ ±1`` whatever x1 and x2 are (a batch of
two is always standardised to ±1), so the gradient to x through BN is only the ``eps`` term,
``dL/dx1 = -dL/dx2 = (s/2) · eps/(var + eps) · (g1 - g2)`` with ``s = 1/√(var + eps)`` and
``g = w σ'(x̂)``; the script evaluates that closed form with Python's ``math`` too.

Writes ``batchnorm_saturation.json`` and ``batchnorm_saturation.png``. Run it with
``jaxnn reproduce`` or ``python experiments/batchnorm_saturation.py``; the results do not
depend on ``jax_enable_x64`` (each part sets the precision it needs).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxnn import activations
from jaxnn.batchnorm import batchnorm

NAME = "batchnorm_saturation"
PAIR = (90.0, 60.0)
SAMPLE_SIZE = 1000
SAMPLE_MEAN, SAMPLE_STD = 75.0, 15.0
SEED = 0
EPS = 1e-5  # BatchNorm's eps (the library default, passed explicitly)
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
# Where a gradient is not below this relative difference from jax.grad, the hand-derived and
# automatic gradients are said to agree (the library's gradcheck tolerance, float64).
RTOL_HAND_VS_AUTODIFF = 1e-10
FLOOR = 1e-46  # where exact zeros are drawn on the log-scale panels (below float32's subnormals)


def _inputs() -> dict[str, Any]:
    """The pair, the wide sample, and the upstream gradients w (float64 numpy, seeded)."""
    rng = np.random.default_rng(SEED)
    sample = rng.normal(SAMPLE_MEAN, SAMPLE_STD, SAMPLE_SIZE)
    return {
        "pair": {"x": np.asarray(PAIR), "w": rng.standard_normal(len(PAIR))},
        "sample": {"x": sample, "w": rng.standard_normal(SAMPLE_SIZE)},
    }


def _analyse(x: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
    """Outputs, derivatives and gradients to x, without and with BN, in x's dtype."""
    sig = activations.get("sigmoid")
    bn = batchnorm(eps=EPS, param_dtype=x.dtype)
    params, state = bn.init(jax.random.key(0), (x.shape[0], 1))  # gamma = 1, beta = 0

    # Without BN: y = σ(x), dL/dx = w σ'(x) (the hand-derived VJP), and jax.grad.
    y_raw, sig_back_raw = sig.vjp(x)
    grad_raw = sig_back_raw(w)

    def loss_raw(x: jax.Array) -> jax.Array:
        return jnp.sum(w * sig.fn(x))

    # With BN: z = BN(x) as a batch [n, 1], y = σ(z); backward through σ, then BN, by hand.
    z, _, bn_back = bn.vjp(params, state, x[:, None], train=True)
    y_bn, sig_back_bn = sig.vjp(z)
    dz = sig_back_bn(w[:, None])
    dparams, dx = bn_back(dz)

    def loss_bn(x: jax.Array) -> jax.Array:
        z, _ = bn.apply(params, state, x[:, None], train=True)
        return jnp.sum(w * sig.fn(z)[:, 0])

    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(xs)
    var = jnp.mean((xs - mean) ** 2)
    return {
        "y_raw": y_raw,
        "d_raw": sig.derivative(x),
        "d_raw_one_minus": y_raw * (1 - y_raw),  # the σ(1 - σ) form, for comparison
        "grad_raw_hand": grad_raw,
        "grad_raw_autodiff": jax.grad(loss_raw)(x),
        "batch_mean": mean,
        "batch_var": var,
        "z": z[:, 0],
        "y_bn": y_bn[:, 0],
        "d_bn": sig.derivative(z[:, 0]),
        "dz_bn": dz[:, 0],
        "grad_bn_hand": dx[:, 0],
        "grad_bn_autodiff": jax.grad(loss_bn)(x),
        "dgamma": dparams["gamma"][0],
        "dbeta": dparams["beta"][0],
    }


_analyse_jit = jax.jit(_analyse)


def _compute(dtype_name: str, x: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    dtype = DTYPES[dtype_name]
    with jax.enable_x64(dtype_name == "float64"):
        out = _analyse_jit(jnp.asarray(x, dtype), jnp.asarray(w, dtype))
        return {k: np.asarray(v) for k, v in out.items()}


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """max |a - b| / max |b|: 0 when both are 0, None (undefined) when only b is 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale else (0.0 if diff == 0 else None)


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a).ravel()]


def _math_sigmoid_derivative(x: float) -> float:
    return math.exp(-x) / (1 + math.exp(-x)) ** 2


def _pair_report(r: dict[str, np.ndarray], w: np.ndarray, dtype_name: str) -> dict[str, Any]:
    y = r["y_raw"]
    tiny = float(np.finfo(dtype_name).tiny)
    true_d = [_math_sigmoid_derivative(v) for v in PAIR]
    # The closed form of the gradient to x through BN for a batch of two (see the docstring),
    # in float64 with Python's math module, from this dtype's x̂ and upstream g = w σ'(x̂).
    var = float(np.var(np.asarray(PAIR)))
    s = 1 / math.sqrt(var + EPS)
    g = [float(wi) * _math_sigmoid_derivative(float(zi)) for wi, zi in zip(w, r["z"], strict=True)]
    closed = (s / 2) * (EPS / (var + EPS)) * (g[0] - g[1])
    return {
        "sigmoid(x) without BN": _floats(y),
        "sigmoid(90) == sigmoid(60) without BN": bool(y[0] == y[1]),
        "sigmoid(90) == 1.0 and sigmoid(60) == 1.0 without BN": bool(np.all(y == 1.0)),
        "sigmoid'(x) without BN (hand-derived, σ(x)σ(-x))": _floats(r["d_raw"]),
        "sigmoid'(x) without BN, exact (math, float64)": true_d,
        "sigmoid'(x) without BN in the σ(1 - σ) form": _floats(r["d_raw_one_minus"]),
        f"smallest normal {dtype_name}": tiny,
        "sigmoid'(x) exact value is below the smallest normal": [t < tiny for t in true_d],
        "sigmoid'(x) == 0 without BN": [bool(v == 0) for v in r["d_raw"]],
        "upstream dL/dy = w": _floats(w),
        "dL/dx without BN (hand-derived)": _floats(r["grad_raw_hand"]),
        "dL/dx without BN (jax.grad)": _floats(r["grad_raw_autodiff"]),
        "batch mean, var (biased)": [float(r["batch_mean"]), float(r["batch_var"])],
        "x_hat = BN(x) (gamma 1, beta 0)": _floats(r["z"]),
        "x_hat exact: +-15/sqrt(225 + eps)": [
            15 / math.sqrt(225 + EPS),
            -15 / math.sqrt(225 + EPS),
        ],
        "sigmoid(x_hat) with BN": _floats(r["y_bn"]),
        "sigmoid(x_hat(90)) == sigmoid(x_hat(60)) with BN": bool(r["y_bn"][0] == r["y_bn"][1]),
        "sigmoid'(x_hat) with BN": _floats(r["d_bn"]),
        "dL/dx_hat with BN (at the sigmoid's input)": _floats(r["dz_bn"]),
        "dL/dx with BN (hand-derived)": _floats(r["grad_bn_hand"]),
        "dL/dx with BN (jax.grad)": _floats(r["grad_bn_autodiff"]),
        "dL/dx with BN (closed form, math, float64)": [closed, -closed],
        "dL/dx with BN: max |hand - jax.grad| / max |jax.grad|": _rel_diff(
            r["grad_bn_hand"], r["grad_bn_autodiff"]
        ),
        "dL/dx with BN: max |hand - closed form| / max |closed form|": _rel_diff(
            r["grad_bn_hand"], np.asarray([closed, -closed])
        ),
        "dL/dx with BN: max |jax.grad - closed form| / max |closed form|": _rel_diff(
            r["grad_bn_autodiff"], np.asarray([closed, -closed])
        ),
        "dL/dgamma, dL/dbeta with BN (hand-derived)": [float(r["dgamma"]), float(r["dbeta"])],
    }


def _sample_report(r: dict[str, np.ndarray], dtype_name: str) -> dict[str, Any]:
    tiny = float(np.finfo(dtype_name).tiny)

    def grad_stats(g: np.ndarray) -> dict[str, Any]:
        a = np.abs(np.asarray(g, np.float64))
        nz = a[a > 0]
        return {
            "mean |dL/dx|": float(np.mean(a)),
            "median |dL/dx|": float(np.median(a)),
            "max |dL/dx|": float(np.max(a)),
            "smallest nonzero |dL/dx|": float(np.min(nz)) if nz.size else None,
            "number of exact zeros": int(np.sum(a == 0)),
        }

    def out_stats(y: np.ndarray, d: np.ndarray) -> dict[str, Any]:
        return {
            "std of outputs": float(np.std(np.asarray(y, np.float64))),
            "distinct output values": int(np.unique(y).size),
            "outputs equal to 1.0": int(np.sum(y == 1.0)),
            "min, max output": [float(np.min(y)), float(np.max(y))],
            "mean sigmoid'": float(np.mean(np.asarray(d, np.float64))),
            "sigmoid' == 0 (count)": int(np.sum(d == 0)),
            "sigmoid' below the smallest normal (nonzero) count": int(np.sum((d > 0) & (d < tiny))),
        }

    return {
        "without BN": {
            **out_stats(r["y_raw"], r["d_raw"]),
            "gradient to x (hand-derived)": grad_stats(r["grad_raw_hand"]),
            "gradient to x (jax.grad)": grad_stats(r["grad_raw_autodiff"]),
            "elements where jax.grad is 0 and the hand-derived gradient is not": int(
                np.sum((r["grad_raw_autodiff"] == 0) & (r["grad_raw_hand"] != 0))
            ),
        },
        "with BN": {
            **out_stats(r["y_bn"], r["d_bn"]),
            "batch mean, var (biased)": [float(r["batch_mean"]), float(r["batch_var"])],
            "x_hat mean, std": [float(np.mean(r["z"])), float(np.std(r["z"]))],
            "gradient to x (hand-derived)": grad_stats(r["grad_bn_hand"]),
            "gradient to x (jax.grad)": grad_stats(r["grad_bn_autodiff"]),
            "max |hand - jax.grad| / max |jax.grad|": _rel_diff(
                r["grad_bn_hand"], r["grad_bn_autodiff"]
            ),
            "dL/dgamma, dL/dbeta (hand-derived)": [float(r["dgamma"]), float(r["dbeta"])],
        },
    }


def _findings(result: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Sentences built from the computed numbers, and the rules they follow."""
    f: list[str] = []
    for dt in DTYPES:
        p = result["pair"][dt]
        s = result["sample"][dt]
        y, d = p["sigmoid(x) without BN"], p["sigmoid'(x) without BN (hand-derived, σ(x)σ(-x))"]
        is_zero = [str(v).lower() for v in p["sigmoid'(x) == 0 without BN"]]
        exact = p["sigmoid'(x) without BN, exact (math, float64)"]
        below = [str(v).lower() for v in p["sigmoid'(x) exact value is below the smallest normal"]]
        f.append(
            f"without BN, {dt}: sigmoid(90) == sigmoid(60): "
            f"{str(p['sigmoid(90) == sigmoid(60) without BN']).lower()} "
            f"(both {y[0]!r} and {y[1]!r}; == 1.0: "
            f"{str(p['sigmoid(90) == 1.0 and sigmoid(60) == 1.0 without BN']).lower()})"
        )
        f.append(
            f"without BN, {dt}: sigmoid'(90) = {d[0]:.3e}, sigmoid'(60) = {d[1]:.3e} "
            f"(== 0: {is_zero}; exact values {exact[0]:.3e} and {exact[1]:.3e}; below {dt}'s "
            f"smallest normal: {below})"
        )
        one_minus = p["sigmoid'(x) without BN in the σ(1 - σ) form"]
        f.append(
            f"without BN, {dt}: the σ(1 - σ) form of sigmoid' gives {one_minus[0]!r} and "
            f"{one_minus[1]!r}; jax.grad (which uses it) gives dL/dx = "
            f"{p['dL/dx without BN (jax.grad)']}, the hand-derived σ(x)σ(-x) gives "
            f"{[float(f'{v:.4g}') for v in p['dL/dx without BN (hand-derived)']]}"
        )
        yb = p["sigmoid(x_hat) with BN"]
        d_bn = p["sigmoid'(x_hat) with BN"][0]
        f.append(
            f"with BN, {dt}: x_hat = {p['x_hat = BN(x) (gamma 1, beta 0)']}, sigmoid(x_hat) = "
            f"[{yb[0]:.6f}, {yb[1]:.6f}] (equal: "
            f"{str(p['sigmoid(x_hat(90)) == sigmoid(x_hat(60)) with BN']).lower()}), "
            f"sigmoid'(x_hat) = {d_bn:.4f}"
        )
        g = p["dL/dx with BN (hand-derived)"]
        g_ad = p["dL/dx with BN (jax.grad)"]
        closed = p["dL/dx with BN (closed form, math, float64)"]
        f.append(
            f"with BN, {dt}, pair: the gradient to x through BN is only the eps term (a batch "
            f"of two is standardised to ±1 whatever x is): dL/dx = [{g[0]:.3e}, {g[1]:.3e}] "
            f"hand-derived, [{g_ad[0]:.3e}, {g_ad[1]:.3e}] jax.grad, [{closed[0]:.3e}, "
            f"{closed[1]:.3e}] closed form; dL/dgamma, dL/dbeta = "
            f"{[float(f'{v:.4g}') for v in p['dL/dgamma, dL/dbeta with BN (hand-derived)']]}"
        )
        wo, wi = s["without BN"], s["with BN"]
        f.append(
            f"wide sample ({SAMPLE_SIZE} values, mean {SAMPLE_MEAN:g}, std {SAMPLE_STD:g}), {dt}: "
            f"outputs std {wo['std of outputs']:.3g} with {wo['distinct output values']} distinct "
            f"value(s) without BN vs std {wi['std of outputs']:.3g} with "
            f"{wi['distinct output values']} distinct values with BN; mean |dL/dx| "
            f"{wo['gradient to x (hand-derived)']['mean |dL/dx|']:.3e} without BN "
            f"({wo['gradient to x (hand-derived)']['number of exact zeros']} exact zeros) vs "
            f"{wi['gradient to x (hand-derived)']['mean |dL/dx|']:.3e} with BN "
            f"({wi['gradient to x (hand-derived)']['number of exact zeros']} exact zeros); ratio "
            f"{result['comparisons'][dt]['mean |dL/dx| with BN / without BN']:.3g}"
        )
    c = result["comparisons"]["float64"]
    f.append(
        "float64, wide sample: hand-derived gradient through BN + sigmoid vs jax.grad: max "
        f"relative difference {c['hand vs jax.grad through BN, wide sample (rel)']:.2e}, "
        f"within {RTOL_HAND_VS_AUTODIFF:g}: "
        f"{str(c['hand vs jax.grad through BN within rtol']).lower()}"
    )
    var = result["pair"]["float64"]["batch mean, var (biased)"][1]
    f.append(
        "float64, pair: the eps-only gradient through BN is a difference of O(1) terms that "
        f"cancel to eps/(var + eps) = {EPS / (var + EPS):.1e} of their size, so hand-derived "
        "and jax.grad agree only to "
        f"{c['pair, dL/dx with BN: max |hand - jax.grad| / max |jax.grad|']:.2e} relative; "
        "against the closed form: hand "
        f"{c['pair, dL/dx with BN: max |hand - closed form| / max |closed form|']:.2e}, jax.grad "
        f"{c['pair, dL/dx with BN: max |jax.grad - closed form| / max |closed form|']:.2e}"
    )
    rules = {
        "upstream gradient": "L = Σ_i w_i σ(z_i), w ~ N(0, 1) seeded (numpy default_rng(SEED)); "
        "z = x without BN, z = BN(x) with BN",
        "equal / distinguishable": "two outputs are indistinguishable when they are equal as "
        "floating-point numbers of that dtype (==)",
        "distinct values": "np.unique over the sample's outputs in that dtype",
        "hand vs jax.grad": "max |hand - jax.grad| / max |jax.grad| over the batch; they agree "
        f"when this is <= {RTOL_HAND_VS_AUTODIFF:g} (float64)",
        "float32 subnormals": "XLA on CPU flushes float32 subnormal results to zero; a "
        "derivative whose exact value is below float32's smallest normal "
        f"({float(np.finfo(np.float32).tiny):.3e}) may therefore come out as exactly 0",
    }
    return f, rules


def run() -> dict[str, Any]:
    data = _inputs()
    result: dict[str, Any] = {
        "setup": {
            "pair": list(PAIR),
            "sample": {"size": SAMPLE_SIZE, "mean": SAMPLE_MEAN, "std": SAMPLE_STD, "seed": SEED},
            "batchnorm": {"mode": "train", "gamma": 1.0, "beta": 0.0, "eps": EPS},
            "sample drawn (float64) mean, std": [
                float(np.mean(data["sample"]["x"])),
                float(np.std(data["sample"]["x"])),
            ],
        },
        "pair": {},
        "sample": {},
        "comparisons": {},
    }
    raw: dict[str, Any] = {}
    for dt in DTYPES:
        rp = _compute(dt, data["pair"]["x"], data["pair"]["w"])
        rs = _compute(dt, data["sample"]["x"], data["sample"]["w"])
        raw[dt] = rs
        result["pair"][dt] = _pair_report(rp, data["pair"]["w"], dt)
        result["sample"][dt] = _sample_report(rs, dt)
        wo = result["sample"][dt]["without BN"]["gradient to x (hand-derived)"]["mean |dL/dx|"]
        wi = result["sample"][dt]["with BN"]["gradient to x (hand-derived)"]["mean |dL/dx|"]
        rel = result["sample"][dt]["with BN"]["max |hand - jax.grad| / max |jax.grad|"]
        result["comparisons"][dt] = {
            "mean |dL/dx| with BN / without BN": wi / wo if wo else None,
            "hand vs jax.grad through BN, wide sample (rel)": rel,
        }
    c64, p64 = result["comparisons"]["float64"], result["pair"]["float64"]
    rel64 = c64["hand vs jax.grad through BN, wide sample (rel)"]
    c64["hand vs jax.grad through BN within rtol"] = (
        rel64 is not None and rel64 <= RTOL_HAND_VS_AUTODIFF
    )
    for what in (
        "hand - jax.grad| / max |jax.grad|",
        "hand - closed form| / max |closed form|",
        "jax.grad - closed form| / max |closed form|",
    ):
        c64[f"pair, dL/dx with BN: max |{what}"] = p64[f"dL/dx with BN: max |{what}"]
    result["findings"], result["rules"] = _findings(result)
    result["_plot"] = {"x": data["sample"]["x"], "raw": raw}
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    x = result["_plot"]["x"]
    raw = result["_plot"]["raw"]
    r32, r64 = raw["float32"], raw["float64"]
    fig = Figure(figsize=(13, 9.5), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    fig.suptitle(
        f"Sigmoid saturation with and without BatchNorm: x ~ N({SAMPLE_MEAN:g}, {SAMPLE_STD:g}²), "
        f"n = {SAMPLE_SIZE}; the pair x = 90, 60 marked"
    )

    grid = np.linspace(-10, 130, 2000)
    a.plot(grid, 1 / (1 + np.exp(-grid)), color="0.3", lw=1.5, label="sigmoid")
    a.plot(x, 1 / (1 + np.exp(-x)), "|", color="tab:red", ms=10, alpha=0.4, label="raw sample x")
    z = r64["z"]
    a.plot(z, r64["y_bn"], "|", color="tab:blue", ms=10, alpha=0.4, label="BN(x) of the sample")
    pair = result["pair"]["float64"]
    a.plot(PAIR, pair["sigmoid(x) without BN"], "o", color="darkred", label="x = 90, 60 (raw)")
    a.plot(
        pair["x_hat = BN(x) (gamma 1, beta 0)"],
        pair["sigmoid(x_hat) with BN"],
        "o",
        color="navy",
        label="90, 60 after BN (pair batch: ±1)",
    )
    a.set_xlabel("input to the sigmoid")
    a.set_ylabel("sigmoid output")
    a.set_title("(a) where the sigmoid's inputs fall")
    a.legend(loc="upper center", bbox_to_anchor=(0.6, 0.95), fontsize=8)
    a.grid(alpha=0.3)
    zoom = a.inset_axes((0.42, 0.1, 0.55, 0.4))
    zg = np.linspace(-4.5, 4.5, 400)
    zoom.plot(zg, 1 / (1 + np.exp(-zg)), color="0.3", lw=1.2)
    zoom.plot(z, r64["y_bn"], "|", color="tab:blue", ms=8, alpha=0.4)
    zoom.plot(
        pair["x_hat = BN(x) (gamma 1, beta 0)"], pair["sigmoid(x_hat) with BN"], "o", color="navy"
    )
    zoom.set_title("zoom: BN(x) in [-4.5, 4.5]", fontsize=8)
    zoom.tick_params(labelsize=7)
    zoom.grid(alpha=0.3)

    bins = np.linspace(0, 1, 41)
    for r, dt, style in ((r32, "float32", "-"), (r64, "float64", "--")):
        b.hist(
            r["y_raw"],
            bins=bins,
            histtype="step",
            ls=style,
            color="tab:red",
            lw=1.5,
            label=f"without BN ({dt}): {result['sample'][dt]['without BN']['distinct output values']} distinct",
        )
        b.hist(
            r["y_bn"],
            bins=bins,
            histtype="step",
            ls=style,
            color="tab:blue",
            lw=1.5,
            label=f"with BN ({dt}): {result['sample'][dt]['with BN']['distinct output values']} distinct",
        )
    b.set_yscale("log")
    b.set_xlabel("sigmoid output")
    b.set_ylabel("count (log scale)")
    b.set_title("(b) distribution of the sigmoid outputs over the sample")
    b.legend(loc="upper center", fontsize=8)
    b.grid(alpha=0.3)

    def floor(v: np.ndarray) -> np.ndarray:
        v = np.abs(np.asarray(v, np.float64))
        return np.where(v > 0, v, FLOOR)

    def log_panel(ax, raw_key, bn_key, raw_label, bn_label, ylabel, title):
        """Per-point values without (red) and with (blue) BN, both dtypes, exact 0 at FLOOR."""
        for r, dt, m in ((r64, "float64", "."), (r32, "float32", "x")):
            for key, color, label in (
                (raw_key, "tab:red", raw_label),
                (bn_key, "tab:blue", bn_label),
            ):
                ax.plot(x, floor(r[key]), m, ms=3, color=color, alpha=0.6, label=f"{label} ({dt})")
        ax.axhline(FLOOR, color="k", lw=0.8, ls=":", label=f"exact 0 (drawn at {FLOOR:g})")
        ax.set_yscale("log")
        ax.set_xlabel("raw input x")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)

    log_panel(
        c, "d_raw", "d_bn", "sigmoid'(x), without BN", "sigmoid'(BN(x)), with BN",
        "local derivative of the sigmoid (log scale)", "(c) sigmoid' at each sample point",
    )  # fmt: skip
    c.axhline(
        float(np.finfo(np.float32).tiny),
        color="0.5",
        lw=0.8,
        ls="--",
        label="float32 smallest normal",
    )
    c.legend(loc="lower left", fontsize=7)
    log_panel(
        d, "grad_raw_hand", "grad_bn_hand", "|dL/dx| without BN", "|dL/dx| with BN",
        "|dL/dx| (log scale), hand-derived", "(d) gradient reaching x, L = Σ w σ(z), w ~ N(0, 1)",
    )  # fmt: skip
    d.legend(loc="lower left", fontsize=7)
    fig.savefig(path, dpi=110)


def report(result: dict[str, Any]) -> str:
    lines = ["x = [90, 60]"]
    header = f"  {'':<34} {'float32':>26} {'float64':>26}"
    lines.append(header)
    rows = [
        ("sigmoid(x), no BN", "sigmoid(x) without BN", "{:.17g}"),
        ("sigmoid'(x), no BN", "sigmoid'(x) without BN (hand-derived, σ(x)σ(-x))", "{:.3e}"),
        ("dL/dx, no BN, hand", "dL/dx without BN (hand-derived)", "{:.3e}"),
        ("dL/dx, no BN, jax.grad", "dL/dx without BN (jax.grad)", "{:.3e}"),
        ("x_hat = BN(x)", "x_hat = BN(x) (gamma 1, beta 0)", "{:.9f}"),
        ("sigmoid(x_hat)", "sigmoid(x_hat) with BN", "{:.7f}"),
        ("sigmoid'(x_hat)", "sigmoid'(x_hat) with BN", "{:.7f}"),
        ("dL/dx, BN, hand", "dL/dx with BN (hand-derived)", "{:.3e}"),
        ("dL/dx, BN, jax.grad", "dL/dx with BN (jax.grad)", "{:.3e}"),
        ("dL/dx, BN, closed form", "dL/dx with BN (closed form, math, float64)", "{:.3e}"),
    ]
    for label, key, fmt in rows:
        for i, v in enumerate(PAIR):
            cells = [fmt.format(result["pair"][dt][key][i]) for dt in DTYPES]
            lines.append(f"  {label + f' [{v:g}]':<34} {cells[0]:>26} {cells[1]:>26}")
    lines.append(f"\nWide sample: {SAMPLE_SIZE} values ~ N({SAMPLE_MEAN:g}, {SAMPLE_STD:g}²)")
    lines.append(header)
    for label, part, key in (
        ("std of outputs, no BN", "without BN", "std of outputs"),
        ("distinct outputs, no BN", "without BN", "distinct output values"),
        ("mean |dL/dx|, no BN", "without BN", ("gradient to x (hand-derived)", "mean |dL/dx|")),
        (
            "exact-zero dL/dx, no BN",
            "without BN",
            ("gradient to x (hand-derived)", "number of exact zeros"),
        ),
        ("std of outputs, BN", "with BN", "std of outputs"),
        ("distinct outputs, BN", "with BN", "distinct output values"),
        ("mean |dL/dx|, BN", "with BN", ("gradient to x (hand-derived)", "mean |dL/dx|")),
        ("hand vs jax.grad (rel), BN", "with BN", "max |hand - jax.grad| / max |jax.grad|"),
    ):
        cells = []
        for dt in DTYPES:
            v = result["sample"][dt][part]
            for k in key if isinstance(key, tuple) else (key,):
                v = v[k]
            cells.append(f"{v:.3e}" if isinstance(v, float) else str(v))
        lines.append(f"  {label:<34} {cells[0]:>26} {cells[1]:>26}")
    lines.append("\nFindings:")
    lines += [f"  - {s}" for s in result["findings"]]
    return "\n".join(lines)


def main(out_dir: Path | str = "results") -> dict[str, Any]:
    result = run()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{NAME}.png"
    plot(result, png)
    del result["_plot"]
    path = out_dir / f"{NAME}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(report(result))
    print(f"wrote {path} and {png}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
