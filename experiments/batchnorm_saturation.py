"""The source text's BatchNorm example: a saturating sigmoid, with and without BatchNorm.

Sigmoid maps x1 = 90 and x2 = 60 both to ~1: their difference is lost and the derivative
there, ``σ'(x) = σ(x) σ(−x) ≈ e^−x``, is ~0, so almost no gradient flows back to x. BatchNorm
(train mode, γ = 1, β = 0) standardises the batch first, so the sigmoid sees values near 0,
where it is steep and keeps the spread.

Computed in float32 and in float64, for the pair ``x = PAIR`` and for a wide sample of
``SAMPLE_SIZE`` values from a seeded normal (mean ``SAMPLE_MEAN``, std ``SAMPLE_STD``): the
sigmoid's input ``z`` (``z = x`` without BN, ``z = x̂ = BN(x)`` with it), its output and
derivative, and the gradient reaching x for ``L = Σ_i w_i σ(z_i)`` with fixed upstream weights
``w ~ N(0, 1)`` (seeded; with ``w`` all equal the gradient through BN of a symmetric pair is
exactly 0). Without BN, ``∂L/∂x = w σ'(x)`` (the sigmoid's hand-derived VJP); with BN, the
sigmoid's VJP followed by BatchNorm's hand-derived backward; both beside ``jax.grad``.

For the pair, BN's output is ``±15/√(225 + ε) ≈ ±1`` whatever x1 and x2 are (a batch of two
is always standardised to ±1), so the gradient to x through BN is only the ``ε`` term::

    ∂L/∂x1 = −∂L/∂x2 = (s/2) · ε/(var + ε) · (g1 − g2),   s = 1/√(var + ε),   g = w σ'(x̂)

which the experiment also evaluates with Python's ``math``.

**Where the normalised values land.** The source text says BatchNorm "redistributes all the
data into the 0–1 interval". It does not: it standardises each feature to mean 0 and variance
1, ``x̂ = (x - mean)/√(var + ε)``, then ``y = γ x̂ + β``; a standard normal lies inside [0, 1]
with probability ``Φ(1) - Φ(0) = ½ erf(1/√2) ≈ 0.3413``. What lies in (0, 1) is the
sigmoid's output. The experiment measures the mean, the variance and the fraction inside
[0, 1] of ``x̂`` for the pair and the sample (γ = 1, β = 0, so ``y = x̂``), and of ``x̂`` and
``y`` in each BatchNorm layer of a network trained on digits (``TRAINED``: the learned γ, β;
evaluated on the test set with Algorithm 2's population statistics,
:func:`jaxnn.batchnorm.population_statistics`).

**Sensitivity of that verdict** (``SENSITIVITY``, fixed in ``RULES`` before the run): when it
does not hold, the same rule is applied to runs that each change one setting: the trained
network's budget x5 (150 epochs), its learning rate x1/3 and x3, and the wide sample's shape,
``75 + 15 (1 − E)`` with ``E ~ Exponential(1)`` (the same mean and standard deviation, skewed
to the left). Standardisation removes the location and the scale, so the share of ``x̂``
inside [0, 1] depends on the data's shape alone: ``Φ(1) − Φ(0) ≈ 0.341`` for a normal, and for
the skewed sample ``x̂ ≈ 1 − E``, inside [0, 1] with probability ``1 − 1/e ≈ 0.632``. No shape
puts every value there: a batch of n ≥ 2 values standardised with its own statistics has mean
0 and variance ``var/(var + ε)``, and values in [0, 1] with mean 0 are all 0, with variance 0.

docs/experiments.md (`batchnorm_saturation`) says what the numbers show. Writes
``batchnorm_saturation.json`` and ``.png``;
run it with ``jaxnn reproduce`` or ``python -m jaxnn_experiments.batchnorm_saturation``. The
results do not depend on ``jax_enable_x64`` (each part sets the precision it needs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxnn import activations, intermediates, mlp
from jaxnn.batchnorm import batchnorm, population_statistics
from jaxnn.combinators import layer_keys
from jaxnn.data import digits
from jaxnn.fitting import fit
from jaxnn.gradcheck import RTOL
from jaxnn.optim import sgd
from jaxnn.train import TrainState
from jaxnn_experiments import common, plots

NAME = "batchnorm_saturation"
PAIR = (90.0, 60.0)
SAMPLE_SIZE = 1000
SAMPLE_MEAN, SAMPLE_STD = 75.0, 15.0
SEED = 0
EPS = 1e-5  # BatchNorm's eps (the library default, passed explicitly)
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
FLOOR = 1e-46  # where exact zeros are drawn on the log-scale panels (below float32's subnormals)
# P(0 <= Z <= 1) for Z ~ N(0, 1): the share of standardised normal data inside [0, 1].
NORMAL_IN_UNIT_INTERVAL = 0.5 * math.erf(1 / math.sqrt(2))
# The trained network whose learned γ, β are measured: Ioffe & Szegedy's Figure 1 network
# (3x100 sigmoid, BN before each sigmoid) on jaxnn.data.digits, plain SGD, float32.
TRAINED = {
    "features": [100, 100, 100, 10],
    "activation": "sigmoid",
    "w_init": "glorot_normal",
    "learning_rate": 0.5,
    "batch_size": 60,
    "epochs": 30,
    "seed": SEED,
    "loss": "softmax_cross_entropy_with_integer_labels",
}
# The setup fixed before the run (run() adds the sample's measured mean and std).
SETUP = {
    "pair": list(PAIR),
    "sample": {"size": SAMPLE_SIZE, "mean": SAMPLE_MEAN, "std": SAMPLE_STD, "seed": SEED},
    "batchnorm": {"mode": "train", "gamma": 1.0, "beta": 0.0, "eps": EPS},
    "rtol": RTOL,
}
# The sensitivity analysis of the "0-1 interval" verdict: each run changes one setting, of the
# trained network (TRAINED) or of the wide sample; the parts it does not change are the
# original run's. P(0 <= 1 - E <= 1) = 1 - 1/e for E ~ Exponential(1).
SKEWED_IN_UNIT_INTERVAL = 1 - math.exp(-1)
SENSITIVITY = {
    "budget_x5": {"epochs": 5 * TRAINED["epochs"]},
    "learning_rate_x1_3": {"learning_rate": TRAINED["learning_rate"] / 3},
    "learning_rate_x3": {"learning_rate": 3 * TRAINED["learning_rate"]},
    "skewed_sample": {"sample": "75 + 15 (1 - E), E ~ Exponential(1)"},
}
SENSITIVITY_SETTINGS = {
    "budget_x5": f"the trained network's budget x5: {5 * TRAINED['epochs']} epochs instead of "
    f"{TRAINED['epochs']}",
    "learning_rate_x1_3": "the trained network's learning rate x1/3: "
    f"{TRAINED['learning_rate'] / 3:.4g} instead of {TRAINED['learning_rate']:g}",
    "learning_rate_x3": "the trained network's learning rate x3: "
    f"{3 * TRAINED['learning_rate']:g} instead of {TRAINED['learning_rate']:g}",
    "skewed_sample": "the wide sample's shape, the setting the share inside [0, 1] depends on "
    "(standardisation removes location and scale, not shape): 75 + 15 (1 - E) with E ~ "
    "Exponential(1), numpy default_rng(SEED), the same mean 75 and std 15 skewed to the left, "
    f"instead of N(75, 15²); a standardised normal lies inside [0, 1] with probability "
    f"{NORMAL_IN_UNIT_INTERVAL:.3f}, this shape with 1 - 1/e = {SKEWED_IN_UNIT_INTERVAL:.3f}",
}

RULES = {
    "upstream_gradient": "L = Σ_i w_i σ(z_i), w ~ N(0, 1) seeded (numpy default_rng(SEED)); "
    "z = x without BN, z = BN(x) with BN",
    "equal": "two outputs are indistinguishable when they are equal as floating-point numbers "
    "of that dtype (==)",
    "distinct_values": "np.unique over the sample's outputs in that dtype",
    "hand_vs_autodiff": "max |hand - jax.grad| / max |jax.grad| over the batch; they agree when "
    f"this is <= {RTOL:g} (float64)",
    "unit_interval": "a value v is inside the 0-1 interval when 0 <= v <= 1; mean and variance "
    "are over every value of the layer (all features pooled), variance biased",
    "claim_unit_interval": "the source text's 'BatchNorm redistributes all the data into the "
    "0-1 interval' holds if every normalised value lies inside [0, 1]: x̂ of the wide sample "
    "(γ = 1, β = 0), and x̂ and γ x̂ + β of every BatchNorm layer of the trained network on "
    "the test set",
    "sensitivity": common.sensitivity_rule(SENSITIVITY_SETTINGS)
    + "; the parts of the rule a variant does not change (the sample, or the trained network) "
    "are the original run's numbers; quick mode does not run it (three more trainings)",
    "sensitivity_variants": SENSITIVITY,
    "float32_subnormals": "XLA on CPU flushes float32 subnormal results to zero; a derivative "
    "whose exact value is below float32's smallest normal "
    f"({float(np.finfo(np.float32).tiny):.3e}) may therefore come out as exactly 0",
}
LABELS = {
    "no_bn": "without BN",
    "bn": "with BN",
    "w": "upstream ∂L/∂σ(z) = w",
    "batch_mean_var": "batch mean, variance (biased)",
    "x_hat": "x̂ = BN(x)",
    "x_hat_exact": "x̂ exact: ±15/√(225 + ε)",
    "x_hat_mean_std": "mean, std of x̂",
    "sigmoid": "σ(z)",
    "sigmoid_equal": "σ(z(90)) == σ(z(60))",
    "sigmoid_is_one": "σ(z(90)) == σ(z(60)) == 1.0",
    "dsigmoid": "σ'(z) = σ(z)σ(−z), hand-derived",
    "dsigmoid_exact": "σ'(x) exact (math, float64)",
    "dsigmoid_one_minus": "σ'(z) in the σ(1 − σ) form (jax.grad's)",
    "dsigmoid_is_zero": "σ'(z) == 0",
    "smallest_normal": "the dtype's smallest normal",
    "dsigmoid_exact_below_smallest_normal": "exact σ'(x) below the smallest normal",
    "grad_z": "∂L/∂z",
    "grad_x_hand": "∂L/∂x, hand-derived",
    "grad_x_autodiff": "∂L/∂x, jax.grad",
    "grad_x_closed_form": "∂L/∂x, closed form (math, float64)",
    "rel_hand_vs_autodiff": "max |hand − jax.grad| / max |jax.grad|",
    "rel_hand_vs_closed_form": "max |hand − closed form| / max |closed form|",
    "rel_autodiff_vs_closed_form": "max |jax.grad − closed form| / max |closed form|",
    "dgamma_dbeta": "∂L/∂γ, ∂L/∂β (hand-derived)",
    "output_std": "std of σ(z)",
    "distinct_outputs": "distinct values of σ(z)",
    "outputs_equal_one": "σ(z) == 1.0 (count)",
    "output_min_max": "min, max of σ(z)",
    "dsigmoid_mean": "mean σ'(z)",
    "dsigmoid_zero_count": "σ'(z) == 0 (count)",
    "dsigmoid_subnormal_count": "σ'(z) nonzero, below the smallest normal (count)",
    "mean_abs": "mean |∂L/∂x|",
    "median_abs": "median |∂L/∂x|",
    "max_abs": "max |∂L/∂x|",
    "min_nonzero_abs": "smallest nonzero |∂L/∂x|",
    "zero_count": "∂L/∂x == 0 (count)",
    "autodiff_zero_hand_nonzero": "∂L/∂x: jax.grad 0 where the hand-derived is not (count)",
    "grad_ratio_bn_over_no_bn": "mean |∂L/∂x| with BN / without BN",
    "hand_vs_autodiff_within_rtol": f"float64 sample, with BN: hand-derived within {RTOL:g} of "
    "jax.grad",
    "landing": "where x̂ = BN(x) lands (γ = 1, β = 0: y = x̂)",
    "mean": "mean",
    "var": "variance",
    "fraction_in_unit_interval": "fraction inside [0, 1]",
    "normal_in_unit_interval": "P(0 <= Z <= 1), Z ~ N(0, 1): ½ erf(1/√2)",
    "trained": "trained network (digits test set, population statistics)",
    "x_hat_landing": "x̂, before γ, β",
    "y_landing": "y = γ x̂ + β, after γ, β",
    "sigmoid_landing": "σ(y)",
    "gamma_min_mean_max": "γ: min, mean, max",
    "beta_min_mean_max": "β: min, mean, max",
    "test_accuracy": "test accuracy",
    "layers": "BatchNorm layers",
    "claim_unit_interval": "every normalised value inside [0, 1]",
    "sensitivity": "sensitivity of the 0-1 interval verdict",
    "sample_landing": "the wide sample's x̂ (float32)",
    "holds": "holds",
    "run": "run (false: not run)",
    "reason": "why not run",
    "variants": "variants",
    "setting": "the one setting changed",
    "change": "the change",
    "original": "original run",
    "budget_x5": "budget x5",
    "learning_rate_x1_3": "learning rate x1/3",
    "learning_rate_x3": "learning rate x3",
    "skewed_sample": "skewed sample",
    "reading": "what BatchNorm does",
}
READING = (
    "BatchNorm standardises each feature over the batch to mean 0 and variance 1 "
    "(x̂ = (x - mean)/√(var + ε)), then scales and shifts it with the learned γ and β; it does "
    "not map the data into the 0-1 interval. A standardised normal sample lies inside [0, 1] "
    f"with probability {NORMAL_IN_UNIT_INTERVAL:.4f}; the rest falls below 0 or above 1. The "
    "0-1 interval is the range of the sigmoid that follows: because BatchNorm keeps its input "
    "near 0, where the sigmoid is steep, the sigmoid spreads the values over (0, 1) instead of "
    "saturating at 1. Rescaling data into [0, 1] is min-max normalisation, a different "
    "transform, usually applied to a network's inputs (e.g. pixels / 255)"
)


def skewed_sample() -> np.ndarray:
    """The ``skewed_sample`` variant's wide sample: ``SAMPLE_MEAN + SAMPLE_STD (1 − E)``,
    ``E ~ Exponential(1)`` (numpy ``default_rng(SEED)``): mean 75, std 15, skewed left."""
    e = np.random.default_rng(SEED).exponential(1.0, SAMPLE_SIZE)
    return SAMPLE_MEAN + SAMPLE_STD * (1 - e)


def inputs() -> dict[str, dict[str, np.ndarray]]:
    """The pair and the wide sample: ``x`` and the upstream ``w`` (float64 numpy, seeded)."""
    rng = np.random.default_rng(SEED)
    sample = rng.normal(SAMPLE_MEAN, SAMPLE_STD, SAMPLE_SIZE)
    return {
        "pair": {"x": np.asarray(PAIR), "w": rng.standard_normal(len(PAIR))},
        "sample": {"x": sample, "w": rng.standard_normal(SAMPLE_SIZE)},
    }


@jax.jit
def _analyse(x: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
    """Outputs, derivatives and gradients to x, without and with BN, in x's dtype."""
    sig = activations.get("sigmoid")
    bn = batchnorm(eps=EPS, param_dtype=x.dtype)
    params, state = bn.init(jax.random.key(0), (x.shape[0], 1))  # gamma = 1, beta = 0

    y_raw, sig_back_raw = sig.vjp(x)

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
    return {
        "no_bn": {
            "sigmoid": y_raw,
            "dsigmoid": sig.derivative(x),
            "dsigmoid_one_minus": y_raw * (1 - y_raw),
            "grad_x_hand": sig_back_raw(w),
            "grad_x_autodiff": jax.grad(loss_raw)(x),
        },
        "bn": {
            "batch_mean": mean,
            "batch_var": jnp.mean((xs - mean) ** 2),
            "x_hat": z[:, 0],
            "sigmoid": y_bn[:, 0],
            "dsigmoid": sig.derivative(z[:, 0]),
            "grad_z": dz[:, 0],
            "grad_x_hand": dx[:, 0],
            "grad_x_autodiff": jax.grad(loss_bn)(x),
            "dgamma": dparams["gamma"][0],
            "dbeta": dparams["beta"][0],
        },
    }


def _compute(dtype_name: str, x: np.ndarray, w: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    with jax.enable_x64(dtype_name == "float64"):
        dtype = DTYPES[dtype_name]
        out = jax.tree.map(np.asarray, _analyse(jnp.asarray(x, dtype), jnp.asarray(w, dtype)))
    # Paired here, not inside jit: a stacked output changes XLA's fusion, and with it the
    # rounding of the pair's ε-only gradient through BN (a difference of O(1) terms).
    bn = out["bn"]
    bn["batch_mean_var"] = np.stack([bn.pop("batch_mean"), bn.pop("batch_var")])
    bn["dgamma_dbeta"] = np.stack([bn.pop("dgamma"), bn.pop("dbeta")])
    return out


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """max |a − b| / max |b|: 0 when both are 0, None (undefined) when only b is 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale else (0.0 if diff == 0 else None)


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a).ravel()]


def _landing(values: Any) -> dict[str, float]:
    """Mean, variance (biased) and the fraction inside [0, 1] of every value, pooled."""
    v = np.asarray(values, np.float64).ravel()
    return {
        "mean": float(np.mean(v)),
        "var": float(np.var(v)),
        "fraction_in_unit_interval": float(np.mean((v >= 0) & (v <= 1))),
    }


def _spread(values: Any) -> list[float]:
    v = np.asarray(values, np.float64)
    return [float(np.min(v)), float(np.mean(v)), float(np.max(v))]


def trained(
    cfg: Mapping[str, Any] = TRAINED, desc: str = "trained network"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train ``cfg`` (``TRAINED``); measure where each BatchNorm layer's x̂ and y = γ x̂ + β land.

    Trained with :func:`jaxnn.fitting.fit` on :func:`jaxnn.data.digits` (float32), then
    evaluated on the test set with the population statistics of the training set's full
    minibatches (Ioffe & Szegedy's Algorithm 2). ``x̂`` is the layer itself applied with
    γ = 1, β = 0 to its input; ``y`` is its output. Returns the JSON-ready measures and the
    arrays to plot (the last BatchNorm layer's x̂ and y). ``desc`` names the progress bar.
    """
    with jax.enable_x64(False):
        data = digits(seed=cfg["seed"])
        net = mlp(
            cfg["features"],
            cfg["activation"],
            batchnorm=True,
            w_init=cfg["w_init"],
            param_dtype=jnp.float32,
        )
        m = cfg["batch_size"]
        optimizer = sgd(cfg["learning_rate"])
        ts = TrainState.create(
            net, optimizer, jax.random.key(cfg["seed"]), (m, data.train.x.shape[1])
        )
        bar = iter(common.progress(range(cfg["epochs"] + 1), desc, unit="epoch"))
        next(bar)
        result = fit(
            net,
            cfg["loss"],
            optimizer,
            ts,
            (data.train.x, data.train.y),
            epochs=cfg["epochs"],
            batch_size=m,
            callback=lambda *_: next(bar, None),
        )
        next(bar, None)  # the iterator ends: the bar is erased
        params, state = result.state.params, result.state.state
        x = data.train.x
        batches = [x[i : i + m] for i in range(0, len(x) - m + 1, m)]  # full batches only
        population = population_statistics(net, params, state, batches)
        logits, _, out = intermediates(net, params, population, data.test.x, train=False)
        keys = layer_keys(net)
        layers, arrays = {}, {}
        for i, (key, layer) in enumerate(zip(keys, net.children, strict=True)):
            if layer.name != "batchnorm":
                continue
            unit = {
                "gamma": jnp.ones_like(params[key]["gamma"]),
                "beta": jnp.zeros_like(params[key]["beta"]),
            }
            x_hat, _ = layer.apply(unit, population[key], out[keys[i - 1]], train=False)
            y, sig = out[key], out[keys[i + 1]]
            layers[key] = {
                "x_hat_landing": _landing(x_hat),
                "y_landing": _landing(y),
                "sigmoid_landing": _landing(sig),
                "gamma_min_mean_max": _spread(params[key]["gamma"]),
                "beta_min_mean_max": _spread(params[key]["beta"]),
            }
            arrays = {"layer": key, "x_hat": np.asarray(x_hat), "y": np.asarray(y)}
        accuracy = float(jnp.mean(jnp.argmax(logits, -1) == data.test.y))
    measures = {
        "setup": {
            **cfg,
            "data": "jaxnn.data.digits (60/20/20, standardised), test set",
            "split": [len(data.train.x), len(data.validation.x), len(data.test.x)],
            "evaluation": f"eval mode, population statistics over {len(batches)} training "
            f"minibatches of {m} (jaxnn.batchnorm.population_statistics)",
        },
        "test_accuracy": accuracy,
        "layers": layers,
    }
    return measures, arrays


def _math_dsigmoid(x: float) -> float:
    return math.exp(-x) / (1 + math.exp(-x)) ** 2


def _pair(r: dict[str, dict[str, np.ndarray]], w: np.ndarray, dtype_name: str) -> dict[str, Any]:
    tiny = float(np.finfo(dtype_name).tiny)
    exact = [_math_dsigmoid(v) for v in PAIR]
    # The closed form of the gradient to x through BN for a batch of two (module docstring),
    # in float64 with Python's math, from this dtype's x̂ and upstream g = w σ'(x̂).
    var = float(np.var(np.asarray(PAIR)))
    s = 1 / math.sqrt(var + EPS)
    g = [float(wi) * _math_dsigmoid(float(zi)) for wi, zi in zip(w, r["bn"]["x_hat"], strict=True)]
    c = (s / 2) * (EPS / (var + EPS)) * (g[0] - g[1])
    closed = np.asarray([c, -c])
    no_bn, bn = ({k: _floats(v) for k, v in r[part].items()} for part in ("no_bn", "bn"))
    return {
        "w": _floats(w),
        "smallest_normal": tiny,
        "no_bn": {
            **no_bn,
            "sigmoid_equal": no_bn["sigmoid"][0] == no_bn["sigmoid"][1],
            "sigmoid_is_one": all(v == 1.0 for v in no_bn["sigmoid"]),
            "dsigmoid_exact": exact,
            "dsigmoid_exact_below_smallest_normal": [t < tiny for t in exact],
            "dsigmoid_is_zero": [v == 0 for v in no_bn["dsigmoid"]],
        },
        "bn": {
            **bn,
            "sigmoid_equal": bn["sigmoid"][0] == bn["sigmoid"][1],
            "x_hat_exact": [15 / math.sqrt(225 + EPS), -15 / math.sqrt(225 + EPS)],
            "grad_x_closed_form": _floats(closed),
            "rel_hand_vs_autodiff": _rel_diff(r["bn"]["grad_x_hand"], r["bn"]["grad_x_autodiff"]),
            "rel_hand_vs_closed_form": _rel_diff(r["bn"]["grad_x_hand"], closed),
            "rel_autodiff_vs_closed_form": _rel_diff(r["bn"]["grad_x_autodiff"], closed),
            "landing": _landing(r["bn"]["x_hat"]),
        },
    }


def _gradient_stats(g: np.ndarray) -> dict[str, Any]:
    a = np.abs(np.asarray(g, np.float64))
    nonzero = a[a > 0]
    return {
        "mean_abs": float(np.mean(a)),
        "median_abs": float(np.median(a)),
        "max_abs": float(np.max(a)),
        "min_nonzero_abs": float(np.min(nonzero)) if nonzero.size else None,
        "zero_count": int(np.sum(a == 0)),
    }


def _output_stats(y: np.ndarray, d: np.ndarray, tiny: float) -> dict[str, Any]:
    return {
        "output_std": float(np.std(np.asarray(y, np.float64))),
        "distinct_outputs": int(np.unique(y).size),
        "outputs_equal_one": int(np.sum(y == 1.0)),
        "output_min_max": [float(np.min(y)), float(np.max(y))],
        "dsigmoid_mean": float(np.mean(np.asarray(d, np.float64))),
        "dsigmoid_zero_count": int(np.sum(d == 0)),
        "dsigmoid_subnormal_count": int(np.sum((d > 0) & (d < tiny))),
    }


def _sample(r: dict[str, dict[str, np.ndarray]], dtype_name: str) -> dict[str, Any]:
    tiny = float(np.finfo(dtype_name).tiny)
    stats = {
        part: {
            **_output_stats(r[part]["sigmoid"], r[part]["dsigmoid"], tiny),
            "grad_x_hand": _gradient_stats(r[part]["grad_x_hand"]),
            "grad_x_autodiff": _gradient_stats(r[part]["grad_x_autodiff"]),
        }
        for part in ("no_bn", "bn")
    }
    no_bn, bn = r["no_bn"], r["bn"]
    stats["no_bn"]["autodiff_zero_hand_nonzero"] = int(
        np.sum((no_bn["grad_x_autodiff"] == 0) & (no_bn["grad_x_hand"] != 0))
    )
    stats["bn"] |= {
        "batch_mean_var": _floats(bn["batch_mean_var"]),
        "x_hat_mean_std": [float(np.mean(bn["x_hat"])), float(np.std(bn["x_hat"]))],
        "landing": _landing(bn["x_hat"]),
        "rel_hand_vs_autodiff": _rel_diff(bn["grad_x_hand"], bn["grad_x_autodiff"]),
        "dgamma_dbeta": _floats(bn["dgamma_dbeta"]),
    }
    before, after = (stats[part]["grad_x_hand"]["mean_abs"] for part in ("no_bn", "bn"))
    return {**stats, "grad_ratio_bn_over_no_bn": after / before if before else None}


def run() -> tuple[dict[str, Any], dict[str, Any]]:
    """Both batches in both dtypes: the JSON-ready result, and the sample's arrays to plot."""
    data = inputs()
    x = data["sample"]["x"]
    result: dict[str, Any] = {
        "setup": {**SETUP, "sample_mean_std": [float(np.mean(x)), float(np.std(x))]},
        "rules": RULES,
        "pair": {},
        "sample": {},
    }
    arrays: dict[str, Any] = {"x": x}
    for dt in DTYPES:
        pair = _compute(dt, data["pair"]["x"], data["pair"]["w"])
        arrays[dt] = _compute(dt, data["sample"]["x"], data["sample"]["w"])
        result["pair"][dt] = _pair(pair, data["pair"]["w"], dt)
        result["sample"][dt] = _sample(arrays[dt], dt)
    rel = result["sample"]["float64"]["bn"]["rel_hand_vs_autodiff"]
    result["hand_vs_autodiff_within_rtol"] = rel is not None and rel <= RTOL
    result["normal_in_unit_interval"] = NORMAL_IN_UNIT_INTERVAL
    result["trained"], arrays["trained"] = trained()
    result["reading"] = READING
    return result, arrays


def _log_panel(ax, x, arrays, key: str, ylabel: str, title: str) -> None:
    """|value| per sample point without (red) and with (blue) BN, both dtypes; 0 at FLOOR."""
    for dt, marker in (("float64", "."), ("float32", "x")):
        for part, color in (("no_bn", "tab:red"), ("bn", "tab:blue")):
            v = np.abs(np.asarray(arrays[dt][part][key], np.float64))
            label = f"{LABELS[part]} ({dt})"
            ax.plot(x, np.where(v > 0, v, FLOOR), marker, ms=3, color=color, alpha=0.6, label=label)
    ax.axhline(FLOOR, color="k", lw=0.8, ls=":", label=f"exact 0 (drawn at {FLOOR:g})")
    ax.set(yscale="log", xlabel="raw input x", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)


def figure(result: dict[str, Any], arrays: dict[str, Any]) -> Figure:
    """(a) where the sigmoid's inputs fall, (b) its outputs, (c) σ', (d) the gradient to x,
    (e, f) where the normalised values land against [0, 1]: the sample, a trained network."""
    x, bn64, pair = arrays["x"], arrays["float64"]["bn"], result["pair"]["float64"]
    fig = plots.figure((13, 14))
    (a, b), (c, d), (e, f) = fig.subplots(3, 2)
    fig.suptitle(
        f"Sigmoid saturation with and without BatchNorm: x ~ N({SAMPLE_MEAN:g}, {SAMPLE_STD:g}²), "
        f"n = {SAMPLE_SIZE}; the pair x = 90, 60 marked"
    )

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-v))

    zoom = a.inset_axes((0.42, 0.1, 0.55, 0.4))
    for ax, (lo, hi), ms in ((a, (-10, 130), 10), (zoom, (-4.5, 4.5), 8)):
        grid = np.linspace(lo, hi, 2000)
        ax.plot(grid, sigmoid(grid), color="0.3", lw=1.5, label="sigmoid")
        ax.plot(
            bn64["x_hat"], bn64["sigmoid"], "|", color="tab:blue", ms=ms, alpha=0.4, label="BN(x)"
        )
        ax.plot(
            pair["bn"]["x_hat"], pair["bn"]["sigmoid"], "o", color="navy", label="90, 60 after BN"
        )
        ax.grid(alpha=0.3)
    a.plot(x, sigmoid(x), "|", color="tab:red", ms=10, alpha=0.4, label="raw sample x")
    a.plot(PAIR, pair["no_bn"]["sigmoid"], "o", color="darkred", label="x = 90, 60 (raw)")
    a.set(xlabel="input to the sigmoid", ylabel="sigmoid output")
    a.set_title("(a) where the sigmoid's inputs fall (pair batch after BN: ±1)")
    a.legend(loc="upper center", bbox_to_anchor=(0.6, 0.95), fontsize=8)
    zoom.set_title("zoom: BN(x) in [-4.5, 4.5]", fontsize=8)
    zoom.tick_params(labelsize=7)

    bins = np.linspace(0, 1, 41)
    for dt, style in (("float32", "-"), ("float64", "--")):
        for part, color in (("no_bn", "tab:red"), ("bn", "tab:blue")):
            label = (
                f"{LABELS[part]} ({dt}): {result['sample'][dt][part]['distinct_outputs']} distinct"
            )
            b.hist(
                arrays[dt][part]["sigmoid"],
                bins,
                histtype="step",
                ls=style,
                color=color,
                lw=1.5,
                label=label,
            )
    b.set(yscale="log", xlabel="sigmoid output", ylabel="count (log scale)")
    b.set_title("(b) distribution of the sigmoid outputs over the sample")
    b.legend(loc="upper center", fontsize=8)
    b.grid(alpha=0.3)

    ylabel = f"{LABELS['dsigmoid']} (log scale)"
    _log_panel(c, x, arrays, "dsigmoid", ylabel, "(c) σ' at each sample point")
    tiny = float(np.finfo(np.float32).tiny)
    c.axhline(tiny, color="0.5", lw=0.8, ls="--", label="float32 smallest normal")
    c.legend(loc="lower left", fontsize=7)
    ylabel, title = (
        f"|{LABELS['grad_x_hand']}| (log scale)",
        "(d) gradient reaching x, L = Σ w σ(z), w ~ N(0, 1)",
    )
    _log_panel(d, x, arrays, "grad_x_hand", ylabel, title)
    d.legend(loc="lower left", fontsize=7)

    bins = np.linspace(-4.5, 4.5, 61)
    for ax in (e, f):
        ax.axvspan(0, 1, color="gold", alpha=0.3, label="the 0-1 interval")
        ax.set(xlabel="normalised value", ylabel="density")
        ax.grid(alpha=0.3)
    frac = result["sample"]["float64"]["bn"]["landing"]["fraction_in_unit_interval"]
    e.hist(
        bn64["x_hat"],
        bins,
        density=True,
        color="tab:blue",
        alpha=0.6,
        label=f"x̂ = BN(x): {frac:.3f} inside [0, 1]",
    )
    grid = np.linspace(-4.5, 4.5, 400)
    e.plot(
        grid,
        np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi),
        color="k",
        lw=1,
        label=f"N(0, 1): {NORMAL_IN_UNIT_INTERVAL:.4f} inside [0, 1]",
    )
    e.set_title("(e) the sample after BN (γ = 1, β = 0): mean 0, variance 1, not [0, 1]")
    e.legend(loc="upper left", fontsize=8)
    t, layer = arrays["trained"], arrays["trained"]["layer"]
    measured = result["trained"]["layers"][layer]
    for key, color in (("x_hat", "tab:blue"), ("y", "tab:green")):
        frac = measured[f"{key}_landing"]["fraction_in_unit_interval"]
        label = f"{LABELS[f'{key}_landing']}: {frac:.3f} inside [0, 1]"
        f.hist(
            t[key].ravel(), bins, density=True, histtype="step", lw=1.5, color=color, label=label
        )
    f.set_title(
        f"(f) trained network, {layer}: all units, digits test set\n(learned γ, β; Algorithm 2 "
        f"population statistics; test accuracy {result['trained']['test_accuracy']:.3f})"
    )
    f.legend(loc="upper left", fontsize=8)
    return fig


# The report's rows: a path into pair[dtype] / sample[dtype], and the format of its values.
PAIR_ROWS = (
    ("no_bn.sigmoid", "{:.17g}"),
    ("no_bn.dsigmoid", "{:.3e}"),
    ("no_bn.grad_x_hand", "{:.3e}"),
    ("no_bn.grad_x_autodiff", "{:.3e}"),
    ("bn.x_hat", "{:.9f}"),
    ("bn.sigmoid", "{:.7f}"),
    ("bn.dsigmoid", "{:.7f}"),
    ("bn.grad_x_hand", "{:.3e}"),
    ("bn.grad_x_autodiff", "{:.3e}"),
    ("bn.grad_x_closed_form", "{:.3e}"),
)
SAMPLE_ROWS = (
    ("no_bn.output_std", "{:.3e}"),
    ("no_bn.distinct_outputs", "{}"),
    ("no_bn.grad_x_hand.mean_abs", "{:.3e}"),
    ("no_bn.grad_x_hand.zero_count", "{}"),
    ("bn.output_std", "{:.3e}"),
    ("bn.distinct_outputs", "{}"),
    ("bn.grad_x_hand.mean_abs", "{:.3e}"),
    ("bn.rel_hand_vs_autodiff", "{:.3e}"),
    ("grad_ratio_bn_over_no_bn", "{:.3e}"),
)


def _label(path: str) -> str:
    """``"bn.grad_x_hand.mean_abs"`` -> "mean |∂L/∂x|, with BN": the metric, then the part."""
    keys = path.split(".")
    return ", ".join(LABELS[k] for k in (keys[-1], *keys[:-1][:1]))


def _value(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def report(result: dict[str, Any]) -> str:
    """The printed report: the pair and the wide sample, float32 beside float64."""
    pair, sample = result["pair"], result["sample"]
    pair_rows = [
        (f"{_label(path)} [x = {x:g}]", *(fmt.format(_value(pair[dt], path)[i]) for dt in DTYPES))
        for path, fmt in PAIR_ROWS
        for i, x in enumerate(PAIR)
    ]
    sample_rows = [
        (_label(path), *(fmt.format(_value(sample[dt], path)) for dt in DTYPES))
        for path, fmt in SAMPLE_ROWS
    ]
    return "\n".join(
        [
            f"x = {list(PAIR)}",
            common.table(pair_rows, ("", *DTYPES)),
            f"Wide sample: {SAMPLE_SIZE} values ~ N({SAMPLE_MEAN:g}, {SAMPLE_STD:g}²)",
            common.table(sample_rows, ("", *DTYPES)),
            f"{LABELS['hand_vs_autodiff_within_rtol']}: {result['hand_vs_autodiff_within_rtol']}",
            "Where the normalised values land (mean, variance, fraction inside [0, 1]); trained: "
            f"{LABELS['trained']}, test accuracy {result['trained']['test_accuracy']:.4f}",
            common.table(
                _landing_rows(result),
                ("", LABELS["mean"], LABELS["var"], LABELS["fraction_in_unit_interval"]),
            ),
            f"{LABELS['reading']}: {result['reading']}",
            *_sensitivity_lines(result),
        ]
    )


def _sensitivity_lines(result: dict[str, Any]) -> list[str]:
    """The sensitivity analysis' table (fraction inside [0, 1] per variant), or why it did not
    run; with the robustness sentence when the claims are there."""
    analysis = result.get("sensitivity")
    if not analysis:
        return []
    if not analysis["run"]:
        return [f"{LABELS['sensitivity']}: {LABELS['reason']} ({analysis['reason']})"]
    layers = list(result["trained"]["layers"])
    original = {
        "sample_landing": result["sample"]["float32"]["bn"]["landing"],
        "test_accuracy": result["trained"]["test_accuracy"],
        "layers": result["trained"]["layers"],
        "holds": unit_interval_holds(
            result["sample"]["float32"]["bn"]["landing"], result["trained"]["layers"]
        ),
    }
    rows = [
        (
            LABELS[name],
            f"{v['sample_landing']['fraction_in_unit_interval']:.3f}",
            *(
                f"{v['layers'][k]['x_hat_landing']['fraction_in_unit_interval']:.3f}, "
                f"{v['layers'][k]['y_landing']['fraction_in_unit_interval']:.3f}"
                for k in layers
            ),
            f"{v['test_accuracy']:.4f}",
            "holds" if v["holds"] else "does not hold",
        )
        for name, v in {"original": original, **analysis["variants"]}.items()
    ]
    sentences = [c["robustness"]["sentence"] for c in result.get("claims", []) if "robustness" in c]
    return [
        f"{LABELS['sensitivity']} (fraction inside [0, 1]; the rule: all of them 1):",
        common.table(
            rows,
            ("", "sample x̂", *(f"{k}: x̂, γ x̂ + β" for k in layers), "test accuracy", "rule"),
        ),
        *(f"  {name}: {v['setting']}" for name, v in analysis["variants"].items()),
        *sentences,
    ]


def _landing_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    def row(label: str, d: dict[str, float]) -> tuple[str, ...]:
        return (
            label,
            f"{d['mean']:.4f}",
            f"{d['var']:.4f}",
            f"{d['fraction_in_unit_interval']:.4f}",
        )

    rows = [
        row(f"pair, {LABELS['x_hat']} ({dt})", result["pair"][dt]["bn"]["landing"]) for dt in DTYPES
    ]
    rows += [
        row(f"sample, {LABELS['x_hat']} ({dt})", result["sample"][dt]["bn"]["landing"])
        for dt in DTYPES
    ]
    rows.append((LABELS["normal_in_unit_interval"], "0", "1", f"{NORMAL_IN_UNIT_INTERVAL:.4f}"))
    for key, layer in result["trained"]["layers"].items():
        for part in ("x_hat_landing", "y_landing", "sigmoid_landing"):
            rows.append(row(f"trained, {key}, {LABELS[part]}", layer[part]))
    return rows


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The source text's claim for ``report.md``, decided on float32 (the training dtype)."""
    pair, sample = result["pair"]["float32"], result["sample"]["float32"]
    holds = (
        pair["no_bn"]["sigmoid_equal"]
        and not pair["bn"]["sigmoid_equal"]
        and sample["bn"]["distinct_outputs"] > sample["no_bn"]["distinct_outputs"]
    )
    return [
        common.claim(
            "BatchNorm keeps the data's spread through a saturating sigmoid: x1 = 90 and "
            "x2 = 60 both give sigmoid ≈ 1 without it, and are told apart with it",
            "in float32, σ(90) == σ(60) without BN, σ(BN(90)) != σ(BN(60)) with BN, and BN "
            "gives more distinct sigmoid outputs over the 1000-value sample than no BN",
            bool(holds),
            f"without BN σ = {pair['no_bn']['sigmoid']}; with BN σ = "
            f"[{pair['bn']['sigmoid'][0]:.4f}, {pair['bn']['sigmoid'][1]:.4f}]; distinct "
            f"outputs over the sample: {sample['no_bn']['distinct_outputs']} without BN, "
            f"{sample['bn']['distinct_outputs']} with BN",
            f"{NAME}.png",
        ),
        _unit_interval_claim(result),
    ]


def unit_interval_holds(sample_landing: dict[str, float], layers: dict[str, Any]) -> bool:
    """``RULES["claim_unit_interval"]``: every fraction inside [0, 1] is 1, for the sample's
    x̂ (float32) and for x̂ and γ x̂ + β of every BatchNorm layer of the trained network."""
    fractions = [sample_landing["fraction_in_unit_interval"]] + [
        layer[part]["fraction_in_unit_interval"]
        for layer in layers.values()
        for part in ("x_hat_landing", "y_landing")
    ]
    return all(f == 1.0 for f in fractions)


def _layer_fractions(layers: dict[str, Any]) -> str:
    return "; ".join(
        f"{key}: x̂ {layer['x_hat_landing']['fraction_in_unit_interval']:.3f}, γ x̂ + β "
        f"{layer['y_landing']['fraction_in_unit_interval']:.3f}"
        for key, layer in layers.items()
    )


NOT_NEEDED = "the claim holds: the sensitivity analysis runs only for a claim that does not hold"
QUICK_SKIP = (
    "quick mode: the sensitivity analysis trains the network three more times, which would "
    "double the quick run; the full run records it"
)


def sensitivity(result: dict[str, Any], *, quick: bool = False) -> dict[str, Any]:
    """The sensitivity analysis of the "0-1 interval" verdict (``RULES["sensitivity"]``).

    Run only when :func:`unit_interval_holds` is false for ``result`` and not ``quick``;
    otherwise ``{"run": False, "reason": ...}``. Each variant of ``SENSITIVITY`` changes one
    setting: the trained network's (``TRAINED`` updated, trained again) or the wide sample's
    shape (:func:`skewed_sample`, standardised by BatchNorm in float32 as the original); the
    part it does not change is the original's. The rule is applied to each, unchanged.

    Returns:
      ``{"run": True, "variants": {name: {"setting", "change", "sample_landing",
      "test_accuracy", "layers", "holds"}}}``.
    """
    original_sample = result["sample"]["float32"]["bn"]["landing"]
    original = result["trained"]
    if unit_interval_holds(original_sample, original["layers"]):
        return {"run": False, "reason": NOT_NEEDED}
    if quick:
        return {"run": False, "reason": QUICK_SKIP}
    variants = {}
    for name, change in SENSITIVITY.items():
        sample, measured = original_sample, original
        if "sample" in change:
            w = inputs()["sample"]["w"]
            sample = _landing(_compute("float32", skewed_sample(), w)["bn"]["x_hat"])
        else:
            measured, _ = trained({**TRAINED, **change}, desc=f"variant {name}")
        variants[name] = {
            "setting": SENSITIVITY_SETTINGS[name],
            "change": change,
            "sample_landing": sample,
            "test_accuracy": measured["test_accuracy"],
            "layers": measured["layers"],
            "holds": unit_interval_holds(sample, measured["layers"]),
        }
    return {"run": True, "variants": variants}


def _unit_interval_claim(result: dict[str, Any]) -> dict[str, Any]:
    """The source text's "0-1 interval", decided on float32 and the trained network, with
    its sensitivity analysis when that ran."""
    landing = result["sample"]["float32"]["bn"]["landing"]
    sample = landing["fraction_in_unit_interval"]
    layers = result["trained"]["layers"]
    holds = unit_interval_holds(landing, layers)
    analysis = result.get("sensitivity") or {}
    robustness = None
    if analysis.get("run"):
        variants = [
            common.variant(
                name,
                v["setting"],
                v["holds"],
                f"fraction inside [0, 1]: the sample's x̂ "
                f"{v['sample_landing']['fraction_in_unit_interval']:.3f}; trained network "
                f"(test accuracy {v['test_accuracy']:.3f}) {_layer_fractions(v['layers'])}",
            )
            for name, v in analysis["variants"].items()
        ]
        robustness = common.robustness(holds, variants)
    return common.claim(
        "BatchNorm redistributes all the data into the 0-1 interval, so that the sigmoid maps "
        "each value faithfully into 0-1",
        RULES["claim_unit_interval"],
        holds,
        f"fraction inside [0, 1]: the sample's x̂ {sample:.3f} (a standard normal: "
        f"{NORMAL_IN_UNIT_INTERVAL:.3f}); trained network (digits test set) "
        f"{_layer_fractions(layers)}. {READING}",
        f"{NAME}.png, panels (e, f)",
        robustness=robustness,
    )


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``batchnorm_saturation.json`` and ``.png``; print the report.

    The setup and the rules are written to ``batchnorm_saturation.preregistered.json`` first
    (:func:`common.preregister`). ``quick`` changes nothing but skip the sensitivity analysis
    (:func:`sensitivity`): the experiment then takes about 15 seconds on 2 CPU cores.
    """
    common.preregister(NAME, out_dir, {**SETUP, "trained": TRAINED}, RULES)
    result, arrays = run()
    result["sensitivity"] = sensitivity(result, quick=quick)
    result = {**result, "quick": quick, "claims": claims(result)}
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result, arrays))


if __name__ == "__main__":
    common.script(main)
