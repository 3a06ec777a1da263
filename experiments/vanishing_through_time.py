"""Vanishing and exploding gradients through time: Pascanu, Mikolov & Bengio (2013).

Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML
2013, §2–3: for the recurrent network ``h_t = φ(x_t W_ih + b + h_{t−1} W_hh)`` the Jacobian
through time is a product of per-step factors (rows are examples; ``W`` is ``[in, out]``)::

    ∂h_T/∂h_0 = Π_{t=1..T} ∂h_t/∂h_{t−1},     ∂h_t/∂h_{t−1} = W_hhᵀ diag(φ'(a_t))   (as a map)

so, with ``λ₁ = ‖W_hh‖₂`` the largest singular value and ``γ ≥ |φ'|`` (1 for tanh, ¼ for the
sigmoid), ``‖∂h_T/∂h_0‖₂ ≤ (γλ₁)^T``: ``λ₁ < 1/γ`` is *sufficient* for the gradient to vanish
geometrically; ``λ₁ > 1/γ`` is *necessary* for it to explode. Their remedy for the explosion
is to clip the gradient's norm. Four claims, tested here:

1. *The bound holds*: ``‖∂h_T/∂h_0‖₂ ≤ (γλ₁)^T`` for every activation, matrix, ``λ₁``, ``T``
   and example, up to a float64 rounding tolerance derived below (not tuned).
2. *Below 1/γ the gradient vanishes geometrically*: for every ``λ₁γ < 1`` the norm at
   ``T_max`` is below ``VANISH_THRESHOLD`` and its per-step rate over the second half is < 1.
3. *Above 1/γ it can explode*: for some ``λ₁γ > 1`` the norm at ``T_max`` is above
   ``EXPLODE_THRESHOLD`` and its per-step rate is > 1, in every example.
4. *Then training diverges without clipping and does not with it*: the same network (tanh,
   ``λ₁γ = TRAIN_GAIN``), data, seed and SGD rate, with and without
   ``optax.clip_by_global_norm``.

**Measurement** (``measure``), in float64. An Elman cell (:func:`jaxnn.elman_cell`, hidden
``HIDDEN``, ``INPUTS`` input features, zero biases, ``W_ih`` PyTorch's ``U(−1/√H, 1/√H)``)
with ``W_hh = (g/γ) M``, ``g = λ₁γ`` over ``GAINS``, and ``M`` either a random orthogonal
matrix (all singular values 1: QR of a Gaussian matrix with Mezzadri's sign correction) or a
Gaussian matrix divided by its spectral norm (singular values spread below 1; its spectral
*radius* is about half its norm). ``EXAMPLES`` input sequences ``x_t ~ N(0, INPUT_SCALE²)``
of ``T_MAX`` steps (the input scale sets how far the units saturate, and so how far below
the bound the norm stays), the initial state ``h_0 = 0``. One forward pass of ``T_MAX``
steps (:func:`jaxnn.recurrent.scan_vjp`), then its hand-derived backward (the reverse
``lax.scan`` of backpropagation through time) once per basis vector ``e_i`` and chosen ``T``
(``T_GRID``; vmapped over the ``H`` basis vectors and over the ``T``'s in chunks of
``T_CHUNK``): with ``dys`` zero except ``e_i`` at step ``T`` and ``dcarry_T = 0``, the
returned ``dcarry_0`` is row ``i`` of ``∂h_T/∂h_0`` (BPTT from step ``T``, reading nothing
later). The ``H`` rows give the Jacobian per example; ``‖·‖₂`` is its largest singular value
(numpy's SVD, LAPACK, float64). The same matrices, inputs and input weights serve every
activation and gain (paired).

**Rounding tolerance (claim 1), derived.** Standard model, ``u = 2⁻⁵³``. The backward step
computes ``g_{t−1} = (g_t ⊙ φ̃'(a_t)) W_hhᵀ`` (the added ``dy_t`` is exactly zero before ``T``).
Assume the computed ``φ̃' ≤ γ(1 + c u)``, ``c = 16`` (``tanh' = 4z/(1+z)²`` is ``≤ 1`` for any
computed ``z = e^{−2|a|}`` and takes three roundings; ``σ' = σ(a)σ(−a)`` is two factors each
within a few ulps and one rounding; the tests check the maximum on a grid near 0). The product
with ``φ'`` adds ``u``; the dot of ``H`` terms has a backward error ``|ΔW| ≤ γ_H |W|``,
``γ_H = Hu/(1 − Hu)``. So each computed step is the exact step with ``diag(φ̃')W_hhᵀ``
replaced by ``D̃(W_hhᵀ + F_t)``, ``‖D̃‖ ≤ γ(1+cu)``, ``‖F_t‖₂ ≤ η = uλ₁ + (1+u)γ_H‖|W_hh|‖₂``,
and a row of the computed Jacobian differs from the exact product of ``D̃_t W_hhᵀ`` by at most
``(γ(1+cu))^T((λ₁+η)^T − λ₁^T)``. The ``H`` rows: ``‖E‖₂ ≤ ‖E‖_F ≤ √H ×`` that. The SVD's
normwise backward error, ``p u ‖·‖`` with ``p = H²`` (a conservative stand-in for LAPACK's
modest polynomial), enters once for the Jacobian and once for ``λ₁`` itself (the bound uses
the computed ``λ̃₁``; the true ``λ₁ ≤ λ̃₁/(1 − pu)``). Hence, relative to ``(γλ̃₁)^T``::

    1 + tol(T) = (1 + pu)(1 − pu)^{−T} (1 + cu)^T [1 + √H((1 + η/λ₁)^T − 1)] (1 + 8u)

(the last factor: evaluating the bound and the comparison). At ``T = 300``, ``H = 32``:
``tol ≈ 6·10⁻¹¹``. The bound is *attained* with zero input (``h_t = 0``, ``φ'(0) = 1``, tanh,
orthogonal ``M``: ``∂h_T/∂h_0 = (λ₁Q)^T`` as a map): that run is reported (``attained``), and
the tests check that the tolerance covers its rounding.

**Training** (``train_run``), float32. The adding problem (Hochreiter & Schmidhuber 1997,
Experiment 4; one of Pascanu et al.'s tasks): ``TRAIN_T`` steps of two inputs, a value
``U(0, 1)`` and a marker, 1 at one step of the first half and one of the second; the target
is the sum of the two marked values (predicting the mean gives an MSE of about 1/6).
``serial(recurrent_layer(elman_cell(HIDDEN, tanh), return_sequences=False), dense(1))``,
``W_hh = TRAIN_GAIN · Q`` (``λ₁γ = 3``, well above 1), the other parameters the library's
default initialisation; mean squared error; ``fit`` with the hand-derived gradient
(``grad="manual"``), plain SGD at ``LEARNING_RATE``, batches of ``BATCH``, ``EPOCHS`` epochs;
once with ``optax.sgd`` and once with ``optax.chain(optax.clip_by_global_norm(CLIP),
optax.sgd)``, the same seed (initial weights and minibatch order) and data. A run *diverges*
if ``fit`` records a non-finite loss, or the whole-training-set loss after the last epoch
exceeds ``DIVERGENCE_FACTOR`` times the loss at initialisation. Reported, not decided on:
the reference run ``λ₁γ = 1`` without clipping at the same rate (whether the rate alone is
too large), the pair of runs at ``λ₁γ = 1.5`` (``MODERATE_GAIN``, nearer the boundary), the
gradient's global norm at initialisation, and ``‖W_hh‖₂`` after each epoch.

The setup was sized on a pilot (plain JAX, the same task, other data): at ``λ₁γ = 3`` the
gradient at initialisation has a global norm of 10¹²–10¹³ (about 10 at ``λ₁γ = 1``).
Without clipping the first updates throw ``W_hh`` to a norm of about 10¹⁰, the tanh units
saturate (``‖h_T‖² → H``), and with the readout's inputs saturated the SGD rate is past the
readout's stability limit, so the loss runs away; at a rate of 0.02 the weights explode the
same way but the loss recovers (the sensitivity analysis's ``lr_third`` would find it). With
clipping, the clipped gradient is almost all ``W_hh``'s (the readout's part of the
gradient is of order 1, ``readout_grad_norm_init``, against a global norm of about 10¹²): the
run does not diverge, and does not learn the task within the budget either.
At ``λ₁γ = 1.5`` the gradient at initialisation is only a few times the reference's, the
explosion builds up during training without clipping, and with clipping the network learns
as well as the reference.

``RULES`` (written to ``vanishing_through_time.preregistered.json`` before anything runs)
decides the claims; a claim that does not hold is checked against the variants of
``MEASUREMENT_SENSITIVITY`` (claims 1–3) or ``TRAINING_SENSITIVITY`` (claim 4), in the full
run only. ``main(out_dir, quick=True)`` runs the same code with ``T_MAX`` 100, four gains,
four examples, and a shorter training (``QUICK_*``) without the reported runs. Writes
``vanishing_through_time.json`` and ``.png``.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from jaxnn import dense, elman_cell, recurrent, serial
from jaxnn.backprop import value_and_grad
from jaxnn.combinators import layer_keys
from jaxnn.fitting import DivergenceWarning, fit
from jaxnn.train import TrainState
from jaxnn_experiments import common, plots

NAME = "vanishing_through_time"
SEED = 0
HIDDEN = 32
INPUTS = 8
EXAMPLES = 8
INPUT_SCALE = 1.0
T_MAX = 300
T_GRID = (1, 2, 3, 5, 10, 15, *range(25, T_MAX + 1, 25))  # holds T_MAX // 2 and T_MAX
T_CHUNK = 2  # the T's vmapped at once (divides both grids; 2 ran fastest on 2 cores)
GAINS = (0.5, 0.9, 1.0, 1.1, 1.5, 2.0, 4.0)  # λ₁γ
ACTIVATIONS = {"tanh": 1.0, "sigmoid": 0.25}  # γ = max φ'
MATRICES = ("orthogonal", "gaussian")
QUICK_T_MAX = 100
QUICK_T_GRID = (1, 2, 3, 5, 10, 15, 25, 50, 75, 100)
QUICK_GAINS = (0.5, 1.0, 2.0, 4.0)
QUICK_EXAMPLES = 4
VANISH_THRESHOLD = 1e-6  # claim 2: every example's norm at T_max below this
EXPLODE_THRESHOLD = 1e6  # claim 3: every example's norm at T_max above this
U64 = 2.0**-53  # float64 unit roundoff
DERIVATIVE_ULPS = 16  # c: computed φ' ≤ γ(1 + c u)

# Training (claim 4)
TRAIN_T = 100
TRAIN_EXAMPLES = 512
BATCH = 32
LEARNING_RATE = 0.05
EPOCHS = 20
CLIP = 1.0
TRAIN_GAIN = 3.0  # λ₁γ of the trained network (tanh: λ₁ = 3)
REFERENCE_GAIN = 1.0  # the reported reference run
MODERATE_GAIN = 1.5  # the reported pair of runs nearer the boundary
DIVERGENCE_FACTOR = 10.0
LOSS = "mean_squared_error"
QUICK_TRAIN_T = 50
QUICK_TRAIN_EXAMPLES = 256
QUICK_EPOCHS = 5

MEASUREMENT_SENSITIVITY = {
    "input_scale_0_1": f"input scale 0.1 instead of {INPUT_SCALE:g} (less saturation: the "
    "setting the distance to the bound most depends on)",
    "hidden_16": f"hidden size 16 instead of {HIDDEN}",
    "seed_1": f"seed 1 instead of {SEED} (other matrices, input weights and inputs)",
}
MEASUREMENT_CHANGES = {
    "input_scale_0_1": {"input_scale": 0.1},
    "hidden_16": {"hidden": 16},
    "seed_1": {"seed": 1},
}
TRAINING_SENSITIVITY = {
    "budget_x5": f"{5 * EPOCHS} epochs instead of {EPOCHS}",
    "lr_third": f"learning rate {LEARNING_RATE / 3:.4g} instead of {LEARNING_RATE}",
    "lr_x3": f"learning rate {3 * LEARNING_RATE:.4g} instead of {LEARNING_RATE}",
    "gain_x2": f"lambda_1 gamma {2 * TRAIN_GAIN:g} instead of {TRAIN_GAIN:g} (the size of the "
    "explosion: the setting the claim most depends on)",
}
TRAINING_CHANGES = {
    "budget_x5": {"epochs": 5 * EPOCHS},
    "lr_third": {"learning_rate": LEARNING_RATE / 3},
    "lr_x3": {"learning_rate": 3 * LEARNING_RATE},
    "gain_x2": {"gain": 2 * TRAIN_GAIN},
}

RULES = {
    "jacobian_norm": "||dh_T/dh_0||_2 per example: the largest singular value (numpy SVD, "
    "float64) of the H x H Jacobian whose row i is dcarry_0 from the hand-derived backward of "
    "jaxnn.recurrent.scan_vjp with dys zero except e_i at step T and dcarry_T = 0",
    "bound": "(gamma lambda_1)^T, lambda_1 the largest singular value of W_hh (numpy SVD, "
    "float64), gamma = 1 (tanh), 1/4 (sigmoid)",
    "tolerance": "relative, derived: 1 + tol(T) = (1 + p u)(1 - p u)^(-T) (1 + c u)^T [1 + "
    "sqrt(H)((1 + eta/lambda_1)^T - 1)] (1 + 8u), u = 2^-53, p = H^2, c = "
    f"{DERIVATIVE_ULPS}, eta = u lambda_1 + (1 + u) gamma_H || |W_hh| ||_2, gamma_H = "
    "H u/(1 - H u)",
    "claim_bound": "holds if every measured norm (every activation, matrix, gain, T and "
    "example) is finite and <= bound (1 + tol(T))",
    "rate": "per-step rate of an example: (||dh_Tmax/dh_0|| / ||dh_(Tmax/2)/dh_0||)^(1/(Tmax "
    "- Tmax/2)); 0 when the norm at Tmax/2 is 0",
    "claim_vanish": "holds if for every gain lambda_1 gamma < 1 (both activations, both "
    f"matrices) every example has ||dh_Tmax/dh_0|| < {VANISH_THRESHOLD:g} and rate < 1",
    "claim_explode": "holds if for some gain lambda_1 gamma > 1 (either activation, either "
    f"matrix) every example has ||dh_Tmax/dh_0|| > {EXPLODE_THRESHOLD:g} and rate > 1",
    "diverges": "a training run diverges if fit records a non-finite loss in some epoch, or "
    "the mean squared error on the whole training set after the last epoch is > "
    f"{DIVERGENCE_FACTOR:g} x the one at initialisation",
    "claim_clipping": f"holds if the tanh network initialised with lambda_1 gamma = "
    f"{TRAIN_GAIN:g} diverges trained without clipping and does not diverge trained with "
    f"optax.clip_by_global_norm({CLIP:g}), the same seed, data and SGD rate",
    "reported": "not decided on: the zero-input run (the bound attained), the reference run "
    f"lambda_1 gamma = {REFERENCE_GAIN:g} without clipping, the pair of runs (without and with "
    f"clipping) at lambda_1 gamma = {MODERATE_GAIN:g}, the gradient's global norm at "
    "initialisation, ||W_hh||_2 after each epoch",
    "measurement_sensitivity": common.sensitivity_rule(MEASUREMENT_SENSITIVITY)
    + "; for claims 1-3, each variant repeats the whole measurement",
    "training_sensitivity": common.sensitivity_rule(TRAINING_SENSITIVITY)
    + "; for claim 4, each variant trains both runs (with and without clipping)",
}
LABELS = {
    "tanh": "tanh (γ = 1)",
    "sigmoid": "sigmoid (γ = 1/4)",
    "orthogonal": "λ₁ × random orthogonal",
    "gaussian": "Gaussian scaled to ‖W‖₂ = λ₁",
    "gain": "λ₁γ",
    "lambda_1": "λ₁ = ‖W_{hh}‖₂ (computed)",
    "abs_lambda_1": "‖|W_{hh}|‖₂ (entrywise absolute value)",
    "t": "T (steps)",
    "norms": "‖∂h_T/∂h_0‖₂ per T (rows) and example (columns)",
    "bound": "(γλ₁)^T",
    "tolerance": "rounding tolerance tol(T), relative",
    "max_ratio": "max over examples of ‖∂h_T/∂h_0‖ / (γλ₁)^T",
    "violations": "(T, example) pairs above bound·(1 + tol)",
    "rate": "per-step rate over the second half, per example",
    "norm_t_max": "‖∂h_Tmax/∂h_0‖₂ per example",
    "attained": "zero input, tanh, orthogonal: max over T of |‖∂h_T/∂h_0‖/(γλ₁)^T − 1|",
    "measurement": "Jacobian norms",
    "training": "training runs",
    "no_clip": "SGD, no clipping",
    "clip": f"SGD, gradient clipped to global norm {CLIP:g}",
    "reference": f"λ₁γ = {REFERENCE_GAIN:g}, no clipping (reference)",
    "moderate_no_clip": f"λ₁γ = {MODERATE_GAIN:g}, SGD, no clipping",
    "moderate_clip": f"λ₁γ = {MODERATE_GAIN:g}, SGD, gradient clipped to global norm {CLIP:g}",
    "train_loss": "MSE on the whole training set, after each epoch (0: initialisation)",
    "loss": "fit's mean minibatch loss per epoch",
    "w_hh_norm": "‖W_{hh}‖₂ after each epoch (0: initialisation)",
    "readout_norm": "‖w_readout‖_F after each epoch",
    "grad_norm_init": "global norm of the gradient at initialisation (whole training set)",
    "readout_grad_norm_init": "global norm of the readout's part of it",
    "diverged_epoch": "first epoch fit recorded as non-finite",
    "diverges": "diverges (the rule)",
    "initial_loss": "MSE at initialisation",
    "final_loss": "MSE after the last epoch",
    "claim_bound": "(1) the bound (γλ₁)^T holds",
    "claim_vanish": "(2) below 1/γ the gradient vanishes geometrically",
    "claim_explode": "(3) above 1/γ it can explode",
    "claim_clipping": "(4) training diverges without clipping, not with",
    "seconds": "wall time (s)",
    "seconds_measurement": "wall time of the measurement (s)",
    "seconds_training": "wall time of the training (s)",
    "sensitivity": "sensitivity of a negative verdict",
    **{k: k.replace("_", " ") for k in (*MEASUREMENT_SENSITIVITY, *TRAINING_SENSITIVITY)},
}


# ----------------------------------------------------------------------------- setup


def setup(quick: bool = False) -> dict[str, Any]:
    """The setup fixed before the run (preregistered with ``RULES``)."""
    return {
        "measurement": {
            "hidden": HIDDEN,
            "inputs": INPUTS,
            "examples": QUICK_EXAMPLES if quick else EXAMPLES,
            "input_scale": INPUT_SCALE,
            "t_max": QUICK_T_MAX if quick else T_MAX,
            "t_grid": list(QUICK_T_GRID if quick else T_GRID),
            "gains": list(QUICK_GAINS if quick else GAINS),
            "activations": ACTIVATIONS,
            "matrices": list(MATRICES),
            "seed": SEED,
            "network": "jaxnn.elman_cell(hidden, activation), zero biases, W_ih "
            "U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's init), W_hh = (gain/gamma) M, M orthogonal "
            "(QR of a Gaussian, sign-corrected) or Gaussian / its spectral norm; h_0 = 0; "
            "x_t ~ N(0, input_scale^2); float64",
        },
        "training": {
            "task": "adding problem: inputs (value ~ U(0,1), marker), markers at one step of "
            "each half, target the sum of the two marked values",
            "steps": QUICK_TRAIN_T if quick else TRAIN_T,
            "examples": QUICK_TRAIN_EXAMPLES if quick else TRAIN_EXAMPLES,
            "network": f"serial(recurrent_layer(elman_cell({HIDDEN}, 'tanh'), "
            "return_sequences=False), dense(1)); W_hh = gain x orthogonal, the rest the "
            "library's default init; float32",
            "gain": TRAIN_GAIN,
            "reference_gain": REFERENCE_GAIN,
            "moderate_gain": MODERATE_GAIN,
            "reported_runs": not quick,
            "loss": LOSS,
            "optimizer": f"optax.sgd({LEARNING_RATE}); with clipping: optax.chain("
            f"optax.clip_by_global_norm({CLIP}), optax.sgd({LEARNING_RATE}))",
            "learning_rate": LEARNING_RATE,
            "clip": CLIP,
            "batch_size": BATCH,
            "epochs": QUICK_EPOCHS if quick else EPOCHS,
            "gradient_path": "fit(grad='manual'): the hand-derived BPTT",
            "seed": SEED,
        },
        "measurement_sensitivity": MEASUREMENT_SENSITIVITY,
        "measurement_changes": MEASUREMENT_CHANGES,
        "training_sensitivity": TRAINING_SENSITIVITY,
        "training_changes": TRAINING_CHANGES,
        "quick": quick,
    }


# ----------------------------------------------------------------------------- matrices


def orthogonal(key: jax.Array, n: int) -> jax.Array:
    """A random orthogonal ``n × n`` matrix: QR of a Gaussian, ``Q diag(sign(diag R))``
    (Mezzadri 2007: Haar-distributed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q * jnp.sign(jnp.diag(r))


def gaussian(key: jax.Array, n: int) -> jax.Array:
    """A Gaussian ``n × n`` matrix divided by its spectral norm (``‖M‖₂ = 1``)."""
    w = jax.random.normal(key, (n, n))
    return w / jnp.linalg.norm(w, 2)


def spectral_norm(w: Any) -> float:
    """``‖W‖₂``, the largest singular value, by numpy's SVD in float64."""
    return float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0])


def tolerance(t: int, hidden: int, lambda_1: float, abs_lambda_1: float) -> float:
    """``tol(T)`` of ``RULES["tolerance"]``: the relative rounding slack of the bound."""
    u, p, c = U64, hidden**2, DERIVATIVE_ULPS
    gamma_h = hidden * u / (1 - hidden * u)
    eta = u * lambda_1 + (1 + u) * gamma_h * abs_lambda_1
    rows = math.sqrt(hidden) * math.expm1(t * math.log1p(eta / lambda_1))
    log_factor = (
        math.log1p(p * u)
        - t * math.log1p(-p * u)
        + t * math.log1p(c * u)
        + math.log1p(rows)
        + math.log1p(8 * u)
    )
    return math.expm1(log_factor)


# ----------------------------------------------------------------------------- measurement


@functools.lru_cache(maxsize=8)
def _rows_fn(activation: str, hidden: int, t_grid: tuple[int, ...]):
    """The compiled ``rows(params, x) -> [nT, H (i), B, H (j)]``: row ``i`` of ``∂h_T/∂h_0``
    for each ``T`` of ``t_grid`` and example, from :func:`jaxnn.recurrent.scan_vjp`'s backward."""
    cell = elman_cell(hidden, activation=activation)

    @jax.jit
    def rows(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        ys, h_t, backward = recurrent.scan_vjp(cell, params, x)
        zero_carry = jnp.zeros_like(h_t)

        def at(t: jax.Array) -> jax.Array:
            def row(i: jax.Array) -> jax.Array:
                dys = jnp.zeros_like(ys).at[:, t - 1, i].set(1.0)  # e_i at step T
                return backward(dys, zero_carry)[2]  # dcarry_0 [B, H]

            return jax.vmap(row)(jnp.arange(hidden))

        return jax.lax.map(at, jnp.asarray(t_grid), batch_size=T_CHUNK)

    return rows


def jacobian_norms(
    activation: str, params: dict[str, Any], x: Any, t_grid: Sequence[int]
) -> np.ndarray:
    """``‖∂h_T/∂h_0‖₂`` for each ``T`` of ``t_grid`` and example: ``[len(t_grid), B]``.

    The Jacobians come from the hand-derived backward (:func:`_rows_fn`), the norms from
    numpy's SVD in float64. Call under ``jax.enable_x64(True)`` for float64.
    """
    hidden = int(params["w_hh"].shape[0])
    rows = np.asarray(_rows_fn(activation, hidden, tuple(int(t) for t in t_grid))(params, x))
    jac = np.swapaxes(rows, 1, 2).astype(np.float64)  # [nT, B, i, j]
    finite = np.all(np.isfinite(jac), axis=(-2, -1))
    safe = np.where(finite[..., None, None], jac, 0.0)
    norms = np.linalg.svd(safe, compute_uv=False)[..., 0]
    return np.where(finite, norms, np.nan)


def rate(norm_half: float, norm_max: float, steps: int) -> float | None:
    """``RULES["rate"]``: ``(norm_max / norm_half)^(1/steps)``; 0 if ``norm_half`` is 0."""
    if not (math.isfinite(norm_half) and math.isfinite(norm_max)):
        return None
    if norm_half == 0:
        return 0.0
    return (norm_max / norm_half) ** (1.0 / steps)


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _record(
    norms: np.ndarray, gamma: float, w_hh: Any, t_grid: Sequence[int], t_max: int
) -> dict[str, Any]:
    """One (activation, matrix, gain)'s JSON-ready numbers and bound check."""
    lam, abs_lam = spectral_norm(w_hh), spectral_norm(np.abs(np.asarray(w_hh, np.float64)))
    hidden = int(np.shape(w_hh)[0])
    bound = [(gamma * lam) ** t for t in t_grid]
    tol = [tolerance(t, hidden, lam, abs_lam) for t in t_grid]
    ok = [
        [bool(math.isfinite(n) and n <= b * (1 + e)) for n in row]
        for row, b, e in zip(norms.tolist(), bound, tol, strict=True)
    ]
    i_half, i_max = list(t_grid).index(t_max // 2), list(t_grid).index(t_max)
    steps = t_max - t_max // 2
    return {
        "lambda_1": lam,
        "abs_lambda_1": abs_lam,
        "norms": [[_finite(n) for n in row] for row in norms.tolist()],
        "bound": bound,
        "tolerance": tol,
        "max_ratio": [
            _finite(np.nanmax(row) / b) if np.any(np.isfinite(row)) else None
            for row, b in zip(norms, bound, strict=True)
        ],
        "violations": sum(not v for row in ok for v in row),
        "rate": [rate(h, m, steps) for h, m in zip(norms[i_half], norms[i_max], strict=True)],
        "norm_t_max": [_finite(n) for n in norms[i_max]],
    }


def _inputs(cfg: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array], Any]:
    """The matrices ``M``, the cell's input weights (zero biases) and the inputs ``x``."""
    hidden, seed = cfg["hidden"], cfg["seed"]
    k_q, k_g, k_w, k_x = jax.random.split(jax.random.key(seed), 4)
    mats = {"orthogonal": orthogonal(k_q, hidden), "gaussian": gaussian(k_g, hidden)}
    base = elman_cell(hidden).init(k_w, cfg["inputs"])
    base = {**base, "b_ih": jnp.zeros(hidden), "b_hh": jnp.zeros(hidden)}
    x = cfg["input_scale"] * jax.random.normal(k_x, (cfg["examples"], cfg["t_max"], cfg["inputs"]))
    return mats, base, x


def measure(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Claims 1–3's numbers: ``{activation: {matrix: {gain: record}}}`` and the zero-input
    run (``attained``), for the measurement setup ``cfg`` (``setup()["measurement"]``)."""
    with jax.enable_x64(True):
        mats, base, x = _inputs(cfg)
        t_grid, t_max = list(cfg["t_grid"]), cfg["t_max"]
        out: dict[str, Any] = {}
        jobs = [
            (a, m, g) for a in cfg["activations"] for m in cfg["matrices"] for g in cfg["gains"]
        ]
        for act, kind, gain in common.progress(jobs, "Jacobian norms", unit="config"):
            gamma = cfg["activations"][act]
            w_hh = (gain / gamma) * mats[kind]
            norms = jacobian_norms(act, {**base, "w_hh": w_hh}, x, t_grid)
            rec = _record(norms, gamma, w_hh, t_grid, t_max)
            out.setdefault(act, {}).setdefault(kind, {})[str(gain)] = rec
        attained = {}
        if "tanh" in cfg["activations"] and "orthogonal" in cfg["matrices"]:
            zero = jnp.zeros_like(x)
            for gain in cfg["gains"]:
                w_hh = gain * mats["orthogonal"]
                norms = jacobian_norms("tanh", {**base, "w_hh": w_hh}, zero, t_grid)
                lam = spectral_norm(w_hh)
                dev = [abs(n / lam**t - 1) for t, n in zip(t_grid, norms[:, 0], strict=True)]
                attained[str(gain)] = _finite(max(dev))
    return {"runs": out, "attained": attained}


# ----------------------------------------------------------------------------- the rules


def _runs(runs: Mapping[str, Any]):
    for act, by_kind in runs.items():
        for kind, by_gain in by_kind.items():
            for gain, rec in by_gain.items():
                yield act, kind, float(gain), rec


def decide_bound(runs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 1: no violation, every norm finite; the counts and the largest ratio."""
    checked = violations = 0
    worst = 0.0
    for _, _, _, rec in _runs(runs):
        checked += sum(len(row) for row in rec["norms"])
        violations += rec["violations"]
        worst = max([worst, *(r for r in rec["max_ratio"] if r is not None)])
    return checked > 0 and violations == 0, {
        "checked": checked,
        "violations": violations,
        "max_ratio": worst,
    }


def _all_below(values: Sequence[float | None], limit: float) -> bool:
    return all(v is not None and v < limit for v in values)


def _all_above(values: Sequence[float | None], limit: float) -> bool:
    return all(v is not None and v > limit for v in values)


def decide_vanish(runs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 2: every gain < 1 vanishes (every example below the threshold, rate < 1)."""
    cases = {}
    for act, kind, gain, rec in _runs(runs):
        if gain < 1:
            cases[f"{act}_{kind}_{gain:g}".replace(".", "_")] = bool(
                _all_below(rec["norm_t_max"], VANISH_THRESHOLD) and _all_below(rec["rate"], 1.0)
            )
    return bool(cases) and all(cases.values()), cases


def decide_explode(runs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 3: some gain > 1 explodes (every example above the threshold, rate > 1)."""
    cases = {}
    for act, kind, gain, rec in _runs(runs):
        if gain > 1:
            cases[f"{act}_{kind}_{gain:g}".replace(".", "_")] = bool(
                _all_above(rec["norm_t_max"], EXPLODE_THRESHOLD) and _all_above(rec["rate"], 1.0)
            )
    return any(cases.values()), cases


MEASUREMENT_DECIDERS = {
    "claim_bound": decide_bound,
    "claim_vanish": decide_vanish,
    "claim_explode": decide_explode,
}


def diverges(record: Mapping[str, Any]) -> bool:
    """``RULES["diverges"]`` on a training record (:func:`train_run`)."""
    if record["diverged_epoch"] is not None:
        return True
    final, initial = record["final_loss"], record["initial_loss"]
    return final is None or final > DIVERGENCE_FACTOR * initial


def decide_clipping(runs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 4: the run without clipping diverges, the run with clipping does not."""
    no_clip, clip = diverges(runs["no_clip"]), diverges(runs["clip"])
    return no_clip and not clip, {"no_clip_diverges": no_clip, "clip_diverges": clip}


# ----------------------------------------------------------------------------- training


def adding_problem(key: jax.Array, n: int, steps: int) -> tuple[jax.Array, jax.Array]:
    """``n`` sequences of the adding problem: ``x [n, steps, 2]``, targets ``[n, 1]``."""
    k_v, k_1, k_2 = jax.random.split(key, 3)
    values = jax.random.uniform(k_v, (n, steps))
    first = jax.random.randint(k_1, (n,), 0, steps // 2)
    second = jax.random.randint(k_2, (n,), steps // 2, steps)
    rows = jnp.arange(n)
    marks = jnp.zeros((n, steps)).at[rows, first].set(1.0).at[rows, second].set(1.0)
    return jnp.stack([values, marks], axis=-1), jnp.sum(values * marks, axis=1, keepdims=True)


@functools.cache
def network() -> Any:
    """The trained network: a tanh Elman layer read out at its last step by ``dense(1)``."""
    cell = elman_cell(HIDDEN, activation="tanh")
    return serial(
        recurrent.recurrent_layer(cell, return_sequences=False, name="rnn"),
        dense(1, name="readout"),
    )


def global_norm(tree: Any) -> float | None:
    """``sqrt(Σ g²)`` over every leaf, in float64 (``optax``'s global norm, the norm that
    ``clip_by_global_norm`` clips); ``None`` if a gradient is not finite (overflowed)."""
    return _finite(
        math.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(tree)))
    )


def _matrix_norm(w: Any) -> float | None:
    w = np.asarray(w, np.float64)
    return spectral_norm(w) if np.all(np.isfinite(w)) else None


@functools.cache
def _loss_and_grad():
    """The compiled loss and hand-derived gradient of :func:`network` on a whole data set."""
    vg = value_and_grad(network(), LOSS, grad="manual")
    return jax.jit(lambda params, state, x, y: vg(params, state, x, y, train=True))


def train_run(gain: float, learning_rate: float, epochs: int, clip: bool, cfg: Mapping[str, Any]):
    """Train the network of ``cfg`` (``setup()["training"]``) with ``W_hh = gain · Q``."""
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        net = network()
        rnn, readout = layer_keys(net, "rnn")[0], layer_keys(net, "readout")[0]
        k_data, k_q, k_init = jax.random.split(jax.random.key(cfg["seed"]), 3)
        x, y = adding_problem(k_data, cfg["examples"], cfg["steps"])
        opt = optax.sgd(learning_rate)
        if clip:
            opt = optax.chain(optax.clip_by_global_norm(CLIP), opt)
        ts = TrainState.create(net, opt, k_init, (BATCH, cfg["steps"], 2))
        params = {**ts.params, rnn: {**ts.params[rnn], "w_hh": gain * orthogonal(k_q, HIDDEN)}}
        ts = TrainState.create(net, opt, k_init, params=params, state=ts.state)
        (initial, _), grads = _loss_and_grad()(ts.params, ts.state, x, y)
        w_norms = [_matrix_norm(ts.params[rnn]["w_hh"])]
        readout_norms = [_finite(np.linalg.norm(np.asarray(ts.params[readout]["w"], np.float64)))]

        def callback(epoch: int, state: TrainState, record: dict[str, float]) -> None:
            w_norms.append(_matrix_norm(state.params[rnn]["w_hh"]))
            readout_norms.append(
                _finite(np.linalg.norm(np.asarray(state.params[readout]["w"], np.float64)))
            )

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            result = fit(
                net,
                LOSS,
                opt,
                ts,
                (x, y),
                epochs=epochs,
                batch_size=BATCH,
                grad="manual",
                evaluate_train=True,
                callback=callback,
                on_nonfinite="stop",
            )
    curve = [float(initial)] + [float(r["train_loss"]) for r in result.history]
    record = {
        "gain": gain,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "clip": CLIP if clip else None,
        "grad_norm_init": global_norm(grads),
        "readout_grad_norm_init": global_norm(grads[readout]),
        "initial_loss": float(initial),
        "train_loss": [_finite(v) for v in curve],
        "loss": [_finite(r["loss"]) for r in result.history],
        "w_hh_norm": w_norms,
        "readout_norm": readout_norms,
        "diverged_epoch": result.diverged,
        "final_loss": _finite(curve[-1]),
    }
    record["diverges"] = diverges(record)
    return record


def train_all(config: Mapping[str, Any], desc: str, reported: bool = True) -> dict[str, Any]:
    """The runs of claim 4 for ``config`` (gain, learning_rate, epochs and the training
    setup): without and with clipping, and (``reported``) the reported runs: the reference
    (``REFERENCE_GAIN``, no clipping) and the pair at ``MODERATE_GAIN``."""
    jobs = [("no_clip", config["gain"], False), ("clip", config["gain"], True)]
    if reported:
        jobs += [
            ("reference", REFERENCE_GAIN, False),
            ("moderate_no_clip", MODERATE_GAIN, False),
            ("moderate_clip", MODERATE_GAIN, True),
        ]
    return {
        name: train_run(gain, config["learning_rate"], config["epochs"], clip, config)
        for name, gain, clip in common.progress(jobs, desc, unit="run")
    }


# ----------------------------------------------------------------------------- run


def _measurement_variants(cfg: Mapping[str, Any], failed: Sequence[str]) -> dict[str, Any]:
    out = {}
    for name, change in MEASUREMENT_CHANGES.items():
        measured = measure({**cfg, **change})
        verdicts = {}
        for c in failed:
            holds, numbers = MEASUREMENT_DECIDERS[c](measured["runs"])
            verdicts[c] = {"holds": holds, "numbers": numbers}
        out[name] = {
            "setting": MEASUREMENT_SENSITIVITY[name],
            "change": change,
            "runs": measured["runs"],
            "verdicts": verdicts,
        }
    return out


def _training_variants(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, change in TRAINING_CHANGES.items():
        runs = train_all({**config, **change}, f"variant {name}", reported=False)
        holds, numbers = decide_clipping(runs)
        out[name] = {
            "setting": TRAINING_SENSITIVITY[name],
            "change": change,
            "runs": runs,
            "verdicts": {"claim_clipping": {"holds": holds, "numbers": numbers}},
        }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Measure, train, decide the claims; the JSON-ready result."""
    start = time.perf_counter()
    cfg = setup(quick)
    measured = measure(cfg["measurement"])
    seconds_measurement = time.perf_counter() - start
    train_config = {**cfg["training"], "gain": TRAIN_GAIN}
    training = train_all(train_config, "training", reported=not quick)
    seconds_training = time.perf_counter() - start - seconds_measurement
    result: dict[str, Any] = {
        "quick": quick,
        "setup": cfg,
        "rules": RULES,
        "measurement": measured,
        "training": training,
    }
    verdicts, numbers = {}, {}
    for claim, decide in MEASUREMENT_DECIDERS.items():
        verdicts[claim], numbers[claim] = decide(measured["runs"])
    verdicts["claim_clipping"], numbers["claim_clipping"] = decide_clipping(training)
    result["verdicts"], result["tests"] = verdicts, numbers
    failed = [c for c, holds in verdicts.items() if not holds]
    if failed and quick:
        result["sensitivity_not_run"] = "quick mode: the variants need the full setup"
    elif failed:
        analysis = {}
        failed_measurement = [c for c in failed if c in MEASUREMENT_DECIDERS]
        if failed_measurement:
            analysis["measurement"] = _measurement_variants(cfg["measurement"], failed_measurement)
        if "claim_clipping" in failed:
            analysis["training"] = _training_variants(train_config)
        result["sensitivity"] = analysis
    result["claims"] = _claims(result)
    result["seconds_measurement"] = seconds_measurement
    result["seconds_training"] = seconds_training
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- claims, report


def _g(v: float | None, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _case_text(cases: Mapping[str, bool], want: bool) -> str:
    picked = [k for k, v in cases.items() if v == want]
    return ", ".join(picked) if picked else "none"


def _evidence(claim: str, runs: Mapping[str, Any], numbers: Mapping[str, Any]) -> str:
    if claim == "claim_bound":
        return (
            f"{numbers['violations']} of {numbers['checked']} measured norms (every "
            f"activation, matrix, gain, T and example) above (γλ₁)^T (1 + tol(T)); the largest "
            f"ratio ‖∂h_T/∂h_0‖/(γλ₁)^T is {_g(numbers['max_ratio'], '.12g')}"
        )
    if claim in ("claim_vanish", "claim_explode"):
        below = claim == "claim_vanish"
        parts = []
        for act, kind, gain, rec in _runs(runs):
            if (gain < 1) if below else (gain > 1):
                norm = (max if below else min)(
                    (v for v in rec["norm_t_max"] if v is not None), default=None
                )
                r = (max if below else min)((v for v in rec["rate"] if v is not None), default=None)
                parts.append(f"{act}/{kind} λ₁γ={gain:g}: {_g(norm)} (rate {_g(r, '.4f')})")
        which = "largest" if below else "smallest"
        return (
            f"{which} ‖∂h_Tmax/∂h_0‖ over the examples (and {which} per-step rate): "
            + "; ".join(parts)
            + (
                f". Vanishing in: {_case_text(numbers, True)}"
                if below
                else f". Exploding in: {_case_text(numbers, True)}"
            )
        )
    nc, c = runs["no_clip"], runs["clip"]

    def describe(r: Mapping[str, Any]) -> str:
        end = (
            f"non-finite at epoch {r['diverged_epoch']}"
            if r["diverged_epoch"] is not None
            else f"final MSE {_g(r['final_loss'])}"
        )
        grown = max((v for v in r["w_hh_norm"] if v is not None), default=None)
        return (
            f"MSE at init {_g(r['initial_loss'])}, {end}, largest ‖W_hh‖₂ {_g(grown)} "
            f"({'diverges' if r['diverges'] else 'does not diverge'})"
        )

    text = (
        f"λ₁γ = {nc['gain']:g}, SGD {nc['learning_rate']:g}, {nc['epochs']} epochs; gradient "
        f"norm at init {_g(nc['grad_norm_init'])}. Without clipping: {describe(nc)}. With "
        f"clip_by_global_norm({CLIP:g}): {describe(c)}"
    )
    if "reference" in runs:
        text += (
            f". Reported: reference λ₁γ = {REFERENCE_GAIN:g} without clipping (gradient norm at "
            f"init {_g(runs['reference']['grad_norm_init'])}): {describe(runs['reference'])}"
        )
    if "moderate_no_clip" in runs:
        mn, mc = runs["moderate_no_clip"], runs["moderate_clip"]
        text += (
            f"; λ₁γ = {MODERATE_GAIN:g} (gradient norm at init {_g(mn['grad_norm_init'])}) "
            f"without clipping: {describe(mn)}; with clipping: {describe(mc)}"
        )
    return text


CLAIM_TEXT = {
    "claim_bound": "‖∂h_T/∂h_0‖ <= (γλ₁)^T, λ₁ the largest singular value of the recurrent "
    "matrix and γ the bound on the activation's derivative (Pascanu, Mikolov & Bengio 2013)",
    "claim_vanish": "λ₁ < 1/γ is sufficient for the gradient through time to vanish "
    "(geometrically, as T grows)",
    "claim_explode": "Above 1/γ the gradient through time can explode (λ₁ > 1/γ is necessary "
    "for it)",
    "claim_clipping": "With exploding gradients, training diverges without clipping the "
    "gradient's norm and does not with it",
}
CLAIM_FIGURE = {
    "claim_bound": f"{NAME}.png, panels (a, b, d, e) and (c)",
    "claim_vanish": f"{NAME}.png, panels (a, b, d, e) and (c)",
    "claim_explode": f"{NAME}.png, panels (a, b, d, e) and (c)",
    "claim_clipping": f"{NAME}.png, panel (f)",
}


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    analysis = result.get("sensitivity", {})
    for claim, holds in result["verdicts"].items():
        part = "training" if claim == "claim_clipping" else "measurement"
        runs = result["training"] if part == "training" else result["measurement"]["runs"]
        robustness = None
        variants = [
            common.variant(
                name,
                v["setting"],
                v["verdicts"][claim]["holds"],
                _evidence(claim, v["runs"], v["verdicts"][claim]["numbers"]),
            )
            for name, v in analysis.get(part, {}).items()
            if claim in v["verdicts"]
        ]
        if variants:
            robustness = common.robustness(holds, variants)
        out.append(
            common.claim(
                CLAIM_TEXT[claim],
                RULES[claim],
                holds,
                _evidence(claim, runs, result["tests"][claim]),
                CLAIM_FIGURE[claim],
                robustness=robustness,
            )
        )
    return out


def report(result: dict[str, Any]) -> str:
    """The printed report: the norms per configuration; the training runs; the verdicts."""
    m = result["setup"]["measurement"]
    t_grid, t_max = m["t_grid"], m["t_max"]
    i_half = t_grid.index(t_max // 2)
    rows = []
    for act, kind, gain, rec in _runs(result["measurement"]["runs"]):

        def med(i: int, rec: Mapping[str, Any] = rec) -> str:
            vals = [v for v in rec["norms"][i] if v is not None]
            return _g(float(np.median(vals)) if vals else None, ".3g")

        rates = [r for r in rec["rate"] if r is not None]
        ratios = [r for r in rec["max_ratio"] if r is not None]
        rows.append(
            (
                act,
                kind,
                f"{gain:g}",
                f"{rec['lambda_1']:.4g}",
                med(0),
                med(i_half),
                med(-1),
                _g(float(np.median(rates)) if rates else None, ".4f"),
                _g(max(ratios) if ratios else None, ".4g"),
                rec["violations"],
            )
        )
    header = (
        "act",
        "matrix",
        "λ₁γ",
        "λ₁",
        "T=1",
        f"T={t_max // 2}",
        f"T={t_max}",
        "rate",
        "max ratio",
        "viol.",
    )
    lines = [
        f"‖∂h_T/∂h_0‖₂, median over {m['examples']} examples (hidden {m['hidden']}, inputs "
        f"N(0, {m['input_scale']:g}²)){', quick' if result['quick'] else ''}; rate: median "
        "per-step rate over the second half; max ratio: the largest norm/(γλ₁)^T over T",
        common.table(rows, header, "lll" + "r" * 7),
        "zero input, tanh, orthogonal (the bound attained): max |norm/(γλ₁)^T − 1| = "
        + ", ".join(f"{g} {_g(v, '.2e')}" for g, v in result["measurement"]["attained"].items()),
    ]
    train_rows = []
    for name, r in result["training"].items():
        train_rows.append(
            (
                name,
                f"{r['gain']:g}",
                _g(r["grad_norm_init"]),
                _g(r["initial_loss"], ".4g"),
                _g(r["final_loss"], ".4g"),
                "-" if r["diverged_epoch"] is None else str(r["diverged_epoch"]),
                _g(max((v for v in r["w_hh_norm"] if v is not None), default=None)),
                "yes" if r["diverges"] else "no",
            )
        )
    lines += [
        "training (adding problem, SGD, the same seed and data)",
        common.table(
            train_rows,
            (
                "run",
                "λ₁γ",
                "‖∇‖ init",
                "MSE init",
                "MSE end",
                "non-finite",
                "max ‖W_hh‖₂",
                "diverges",
            ),
        ),
    ]
    for c in result["claims"]:
        lines.append(
            f"{'HOLDS' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']}\n    {c['evidence']}"
        )
        if "robustness" in c:
            lines.append("    " + c["robustness"]["sentence"])
    if "sensitivity_not_run" in result:
        lines.append(f"{LABELS['sensitivity']}: {result['sensitivity_not_run']}")
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure


def _gain_colors(gains: Sequence[float]) -> dict[float, Any]:
    from matplotlib import colormaps

    cmap = colormaps["coolwarm"]
    span = max(abs(math.log(g)) for g in gains) or 1.0
    return {g: cmap(0.5 + 0.5 * math.log(g) / span) if g != 1 else "k" for g in gains}


def _norm_panel(ax: Any, by_gain: Mapping[str, Any], t_grid: Sequence[int], title: str) -> None:
    gains = [float(g) for g in by_gain]
    colors = _gain_colors(gains)
    ts = np.asarray(t_grid)
    low, high = np.inf, 0.0
    with warnings.catch_warnings():  # a T where every example underflowed to 0: a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        for g, rec in by_gain.items():
            n = np.asarray([[np.nan if v is None else v for v in row] for row in rec["norms"]])
            n = np.where(n > 0, n, np.nan)
            color = colors[float(g)]
            ax.fill_between(ts, np.nanmin(n, 1), np.nanmax(n, 1), color=color, alpha=0.15, lw=0)
            ax.plot(ts, np.nanmedian(n, 1), "-", marker=".", color=color, label=f"λ₁γ = {g}")
            ax.plot(ts, rec["bound"], "--", color=color, lw=0.8, alpha=0.8)
            if np.any(np.isfinite(n)):
                low, high = min(low, np.nanmin(n)), max(high, np.nanmax(n))
    ax.plot([], [], "k--", lw=0.8, label="bound (γλ₁)^T")
    if math.isfinite(low) and high > 0:
        ax.set_ylim(low / 1e5, high * 1e10)
    plots.finish(
        ax,
        title,
        legend={"ncol": 2, "loc": "lower left"},
        yscale="log",
        xlabel=LABELS["t"],
        ylabel="‖∂h_T/∂h_0‖₂ (median; band: min–max)",
    )


def _rate_panel(ax: Any, runs: Mapping[str, Any]) -> None:
    styles = {
        ("tanh", "orthogonal"): ("tab:red", "o"),
        ("tanh", "gaussian"): ("tab:red", "s"),
        ("sigmoid", "orthogonal"): ("tab:blue", "o"),
        ("sigmoid", "gaussian"): ("tab:blue", "s"),
    }
    gains = sorted({g for _, _, g, _ in _runs(runs)})
    for (act, kind), (color, marker) in styles.items():
        if act not in runs or kind not in runs[act]:
            continue
        xs, ys = [], []
        for g, rec in runs[act][kind].items():
            rates = [r for r in rec["rate"] if r is not None and r > 0]
            if rates:
                xs.append(float(g))
                ys.append(float(np.median(rates)))
        ax.plot(
            xs,
            ys,
            marker=marker,
            color=color,
            mfc="none",
            ls="-" if marker == "o" else ":",
            label=f"{act}, {kind}",
        )
    ax.plot(gains, gains, "k--", lw=1, label="bound: rate ≤ λ₁γ")
    ax.axhline(1.0, color="0.5", lw=0.8)
    plots.finish(
        ax,
        "(c) per-step rate over the second half\n(median over examples)",
        legend={},
        xscale="log",
        yscale="log",
        xlabel=LABELS["gain"],
        ylabel="rate (‖J(Tmax)‖ / ‖J(Tmax/2)‖)^(2/Tmax)",
    )
    ticks = [0.25, 0.5, 1.0, 2.0, 4.0]
    ax.set_xticks(gains, [f"{g:g}" for g in gains])
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def _training_panel(ax: Any, result: Mapping[str, Any]) -> None:
    """(f): the whole-training-set MSE per epoch; a run that leaves the panel ends at its top
    edge (an arrow), a non-finite one with a cross there."""
    styles = {
        "no_clip": ("tab:red", "-"),
        "clip": ("tab:blue", "-"),
        "reference": ("0.4", "-"),
        "moderate_no_clip": ("tab:red", "--"),
        "moderate_clip": ("tab:blue", "--"),
    }
    runs = dict(result["training"])
    initial = max(r["initial_loss"] for r in runs.values())
    top = 1e3 * DIVERGENCE_FACTOR * initial  # the panel shows the clipped runs' scale
    for name, r in runs.items():
        curve = np.asarray([np.nan if v is None else v for v in r["train_loss"]])
        epochs = np.arange(len(curve))
        color, ls = styles[name]
        label = (
            LABELS[name]
            if name.startswith(("reference", "moderate"))
            else (f"λ₁γ = {r['gain']:g}, {LABELS[name]}")
        )
        if r["diverged_epoch"] is not None:
            label += f" (non-finite at epoch {r['diverged_epoch']}: ×)"
        ax.plot(epochs, np.minimum(curve, top), ls, marker=".", color=color, label=label)
        above = np.flatnonzero(np.isfinite(curve) & (curve > top))
        if above.size:
            ax.plot(epochs[above], [top] * above.size, "^", color=color, ms=8, clip_on=False)
        if r["diverged_epoch"] is not None:
            ax.plot(r["diverged_epoch"], top, "x", color=color, ms=10, mew=2, clip_on=False)
    for v in result.get("sensitivity", {}).get("training", {}).values():
        for run_name, r in v["runs"].items():
            curve = np.asarray([np.nan if x is None else x for x in r["train_loss"]])
            ax.plot(np.arange(len(curve)), np.minimum(curve, top), ":", color=styles[run_name][0],
                    alpha=0.4, lw=0.8)  # fmt: skip
    nc = runs["no_clip"]
    ax.axhline(DIVERGENCE_FACTOR * nc["initial_loss"], color="k", ls="--", lw=0.8,
               label=f"{DIVERGENCE_FACTOR:g} × MSE at init (λ₁γ = {nc['gain']:g})")  # fmt: skip
    ax.plot([], [], "^", color="0.3", label=f"above {top:.3g}, drawn at the top")
    finite = [v for r in runs.values() for v in r["train_loss"] if v is not None and v > 0]
    ax.set_ylim(min(finite) / 2, top * 1.5)
    plots.finish(
        ax,
        f"(f) training on the adding problem ({nc['epochs']} epochs), SGD {nc['learning_rate']:g}",
        legend={},
        yscale="log",
        integer_x=True,
        xlabel="epoch",
        ylabel=LABELS["train_loss"].split(",")[0],
    )


def figure(result: dict[str, Any]) -> Figure:
    """(a, b, d, e) ‖∂h_T/∂h_0‖ vs T per gain with the bounds; (c) the per-step rates;
    (f) the training curves with and without clipping."""
    m, runs = result["setup"]["measurement"], result["measurement"]["runs"]
    fig = plots.figure((17, 10))
    (a, b, c), (d, e, f) = fig.subplots(2, 3)
    verdict = "; ".join(
        f"{LABELS[k]}: {'holds' if v else 'does not hold'}" for k, v in result["verdicts"].items()
    )
    fig.suptitle(
        f"Vanishing and exploding gradients through time (Pascanu et al. 2013): Elman network, "
        f"hidden {m['hidden']}, inputs N(0, {m['input_scale']:g}²)"
        f"{', quick' if result['quick'] else ''}\n{verdict}",
        fontsize=10,
    )
    for ax, act, kind, letter in (
        (a, "tanh", "orthogonal", "a"),
        (b, "tanh", "gaussian", "b"),
        (d, "sigmoid", "orthogonal", "d"),
        (e, "sigmoid", "gaussian", "e"),
    ):
        if act in runs and kind in runs[act]:
            _norm_panel(
                ax,
                runs[act][kind],
                m["t_grid"],
                f"({letter}) {LABELS[act]}, W_{{hh}} = {LABELS[kind]}",
            )
    _rate_panel(c, runs)
    _training_panel(f, result)
    return fig


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``vanishing_through_time.json`` and ``.png``; print the report.

    The setup and the rules are written to ``vanishing_through_time.preregistered.json``
    before anything runs (:func:`jaxnn_experiments.common.preregister`).
    """
    common.preregister(NAME, out_dir, setup(quick), RULES)
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
