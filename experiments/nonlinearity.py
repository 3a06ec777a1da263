"""Activation functions make a network non-linear; stacked linear layers stay one linear map.

The claim: "Activation functions make a network non-linear: stacked linear layers stay one
linear map and cannot separate data that no straight line separates." Three parts.

**(a) The collapse.** A stack of ``L`` dense layers with the identity activation,
``h_l = h_{l-1} W_l + b_l`` (``W_l [n_{l-1}, n_l]``), is the single affine map::

    y = x W + b,   W = W_1 W_2 ··· W_L,   b = ((b_1 W_2 + b_2) W_3 + b_3) ··· W_L + b_L

(Horner's scheme for the bias). ``jaxnn.mlp(features, "identity")`` networks
(``COLLAPSE_NETWORKS``: a narrow, a wide and a bottlenecked one; Glorot-uniform kernels and
``N(0, BIAS_STD²)`` biases drawn by numpy in float32) are run on ``COLLAPSE_POINTS`` standard normal
inputs, and so is the identity stack trained on XOR below (on the decision-boundary grid);
``W`` and ``b`` are formed in the same dtype, and ``max |stacked(x) - (x W + b)|`` is compared
with a rounding-error bound, in float32 and in float64 (the float32 parameters cast, so both
dtypes compute the same exact map). The bound (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., SIAM 2002, §3.1 Lemmas 3.1 and 3.3, §3.5): in a dtype of unit roundoff
``u``, a sum of ``n`` products carries relative perturbations ``|θ_n| <= γ_n = n u / (1 - n u)``
per term, in any summation order and with or without FMA, and perturbations compose,
``(1 + θ_j)(1 + θ_k) = 1 + θ_{j+k}``. Layer ``l`` adds ``n_{l-1} + 1`` terms (the bias is one),
so every term of the fully expanded output, ``x_i (W_1)_{i·} ··· (W_L)_{·j}`` or
``(b_l)_i (W_{l+1}) ··· (W_L)``, is perturbed by at most ``γ_K``::

    |fl(stacked) - y| <= γ_K M,   K = Σ_l (n_{l-1} + 1),
    M = (((|x| |W_1| + |b_1|) |W_2| + |b_2|) ···) |W_L| + |b_L|

(elementwise; ``M`` is the sum of the absolute values of the terms). The collapsed route
``fl(x fl(W) + fl(b))`` perturbs each term by at most ``γ_K`` too (its inner lengths add up to
at most ``K``), so ``|stacked - collapsed| <= 2 γ_K M``. Matrix products run at
``jax.default_matmul_precision("highest")``: on a GPU the default float32 product may round
its inputs to TF32 (u = 2⁻¹¹), which the float32 bound does not allow for. The consequence:
``rank W <= min_l n_l``; the numerical rank counts the singular values of the computed ``W``
above ``γ_k ‖|W_1| ··· |W_L|‖_F`` (``k = Σ_{l<L} n_l``, the product's inner lengths; Weyl's
inequality puts the perturbed zero singular values below it) plus the SVD's own
``max(m, n) ε σ_1``. And a network whose output is affine and which predicts
``argmax(logits)`` of two classes decides by the sign of ``x (W_{·1} - W_{·0}) + b_1 - b_0``:
its decision boundary is a straight line.

**(b, c) Linear models against activations.** The four synthetic sets of :mod:`jaxnn.data`
(``N_POINTS`` points each, the generators' default noise: XOR 0.1, moons 0.1, circles 0.05 with
factor 0.5, spirals 0.1 over 1.5 turns), split 60/20/20 by :func:`jaxnn.data.split` (stratified;
the data seed, the split seed and the init key all ``seed``). Models: ``linear``, one dense
layer of two logits (softmax regression); ``identity``, ``mlp([*HIDDEN, 2], "identity")``, a deep
linear network; and ``mlp([*HIDDEN, 2], act)`` for every elementwise non-linear activation of
:data:`jaxnn.activations.ACTIVATIONS` (``ACTIVATIONS``; ``swish`` is ``silu``, softmax is not
elementwise). All are trained alike, with hyperparameters fixed before the run and never tuned:
Glorot-uniform kernels, zero biases, float32, softmax cross-entropy, ``optax.adam(LEARNING_RATE)``,
minibatches of ``BATCH``, ``EPOCHS`` epochs of :func:`jaxnn.fitting.fit`; the state kept is the
epoch with the best validation accuracy (``monitor="val_accuracy"``), and its test accuracy is
what is reported, as a mean over ``SEEDS``. Beside it, the *line ceiling*: the best test accuracy
that any straight line achieves on that test set, found exactly (an optimal line can be moved,
without changing any other point's side, until it passes through two points, which may then go
to either side; so the best over the lines through pairs of points, those two counted correct,
and the constant classifiers, is the optimum for points in general position and an upper bound
otherwise).

**(c) at convergence, and the training speed.** Claim (c) is about what a network with an
activation *can* represent, and a fixed budget measures how fast it learns: saturating
activations start slowly. So the claim is judged a second time on networks trained to
convergence (``CONVERGENCE``: from ``5 * EPOCHS`` epochs on, a window's mean training loss
that fell by less than ``min_improvement`` nats below the window before; at most
``max_epochs``), with each seed's learning rate chosen on the validation set from
``LEARNING_RATES`` (``LEARNING_RATE`` ×⅓, ×1, ×3), by claim (c)'s protocol (the test accuracy
of the best validation epoch, up to convergence instead of ``EPOCHS``) and thresholds. The fixed-budget finding becomes its own claim:
the epochs until the training accuracy reaches the threshold on spirals, saturating
activations (sigmoid, tanh: ``φ'(z) -> 0`` on both sides) against non-saturating ones (ReLU,
leaky ReLU), reported beside the mean ``φ'(z)`` of the hidden units at initialisation and
each kernel's gradient from the hand-derived backward (:func:`jaxnn.backprop.layer_gradients`):
through a sigmoid layer the backpropagated signal is multiplied by ``σ'(z) <= 1/4``, the
vanishing-gradient bound (``vanishing_gradients``). Every (learning rate, data set, seed) of an
activation trains in one compiled program (:func:`sweep`: ``jax.vmap`` of
:func:`jaxnn.train.make_epoch`, the learning rate a leaf of
``optax.inject_hyperparams(optax.adam)``'s state); the runs start from claim (c)'s weights and
minibatch orders. When claim (c) does not hold, its rule is applied unchanged to the variants
of ``SENSITIVITY`` (the budget ×5 and the learning rates ×⅓ and ×3 read from the sweep, hidden
widths ×2 a sweep of its own), and the report says whether the verdict is robust.

``RULES`` (fixed before the run, written to disk before it, also in the result) decides
the claims. Writes
``nonlinearity.json`` and ``.png``; ``main(out_dir, quick=True)`` runs the same code with one
seed, fewer epochs, ``QUICK_MODELS`` only (linear, identity stack, relu: every model is a
compilation of seconds) and the sweeps of ``QUICK_SWEEP_MODELS`` under ``QUICK_CONVERGENCE``. The training is float32 whatever ``jax_enable_x64`` says.

References: Minsky & Papert, *Perceptrons* (1969), XOR; Rumelhart, Hinton & Williams, "Learning
representations by back-propagating errors", Nature 323 (1986); Saxe, McClelland & Ganguli,
"Exact solutions to the nonlinear dynamics of learning in deep linear neural networks", ICLR
2014 (a deep linear network computes a linear map but trains non-linearly).
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from jaxnn import Layer, activations, data, mlp
from jaxnn.backprop import layer_gradients
from jaxnn.combinators import layer_keys
from jaxnn.evaluation import predict
from jaxnn.fitting import fit
from jaxnn.train import TrainState, make_epoch
from jaxnn_experiments import common, plots

NAME = "nonlinearity"
SEED = 0
# (a) the collapse: name -> (input features, dense layer widths)
COLLAPSE_NETWORKS = {
    "narrow": (2, (16, 16, 16, 2)),
    "wide": (2, (256, 256, 256, 2)),
    "bottleneck": (16, (64, 3, 64, 16)),
}
SAVED_NETWORKS = ("narrow", "trained_xor")  # their parameters and W, b go into the JSON
COLLAPSE_POINTS = 1000
BIAS_STD = 0.5
DTYPES = {"float32": np.float32, "float64": np.float64}
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}
# (b, c) training
DATASETS = ("xor", "moons", "circles", "spirals")
N_POINTS = 1000
VALIDATION, TEST = 0.2, 0.2
HIDDEN = (32, 32)
ACTIVATIONS = (
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "softplus",
    "gelu",
    "gelu_tanh",
    "silu",
)
LINEAR_MODELS = ("linear", "identity")
MODELS = (*LINEAR_MODELS, *ACTIVATIONS)
FIGURE_MODELS = ("linear", "identity", "sigmoid", "tanh", "relu")
LOSS = "softmax_cross_entropy_with_integer_labels"
LEARNING_RATE = 0.01
BATCH = 32
EPOCHS = 200
SEEDS = (0, 1, 2)
QUICK_EPOCHS = 40
QUICK_SEEDS = (0,)
QUICK_MODELS = ("linear", "identity", "relu")  # each model is a compilation (seconds)
QUICK_SWEEP_MODELS = ("sigmoid", "relu")  # one saturating, one not
# (c) at convergence, the slower-training claim, and the sensitivity of the fixed-budget verdict.
# One vmapped sweep per activation trains every (learning rate, data set, seed) together; its
# learning rates are the grid of (c) at convergence and the sensitivity's x1/3 and x3.
LEARNING_RATES = (LEARNING_RATE / 3, LEARNING_RATE, 3 * LEARNING_RATE)
# A run has converged when its training loss stops falling: a window's mean below the previous
# window's by less than min_improvement (nats, absolute: on separable data the loss keeps
# falling towards 0 by a constant factor, so a relative criterion would never stop it).
CONVERGENCE = {
    "min_epochs": 5 * EPOCHS,  # never judged before the sensitivity's budget x5: early
    #                            plateaus (a network still near its linear regime) last hundreds
    "window": 100,  # epochs
    "min_improvement": 0.005,  # nats, of the window's mean training loss
    "max_epochs": 2000,
}
# Quick mode: short sweeps, no sensitivity (its budget x5 would need 5 * QUICK_EPOCHS).
QUICK_CONVERGENCE = {"min_epochs": QUICK_EPOCHS, "window": 20, "min_improvement": 0.005,
                     "max_epochs": 100}  # fmt: skip
EVALUATE_EVERY = 10  # the sweep's accuracies: every 10 epochs, validation and test every
#                      epoch up to the budget x5 (what claim (c)'s protocol reads)
SATURATING = ("sigmoid", "tanh")  # bounded: φ'(z) -> 0 as |z| -> ∞, on both sides
NON_SATURATING = ("relu", "leaky_relu")  # φ'(z) = 1 for every z > 0
SLOWER_DATASET = "spirals"
WIDE_HIDDEN = (64, 64)
SENSITIVITY = {
    "budget_x5": f"{5 * EPOCHS} epochs instead of {EPOCHS}",
    "lr_third": f"learning rate {LEARNING_RATE / 3:.4g} instead of {LEARNING_RATE}",
    "lr_x3": f"learning rate {3 * LEARNING_RATE:.4g} instead of {LEARNING_RATE}",
    "width_x2": f"hidden widths {list(WIDE_HIDDEN)} instead of {list(HIDDEN)} (capacity: the "
    "setting a claim about what a network can represent most likely depends on)",
}
GRID = 150  # decision-boundary grid points per axis
GRID_MARGIN = 0.3
# (b) a line's best, with room for noise: 3/4 on XOR (one blob cut off), about 2/3 on the
# circles (a cap of the outer circle beyond the inner one) and on 1.5-turn spirals.
LINEAR_AT_MOST = {"xor": 0.80, "circles": 0.75, "spirals": 0.75}
# (c) spirals' arms are 0.3 apart and the noise is 0.1: P(radial noise > 0.15) = P(Z > 1.5)
# ≈ 0.067 puts the best achievable near 0.93.
NONLINEAR_AT_LEAST = {"xor": 0.95, "moons": 0.95, "circles": 0.95, "spirals": 0.85}

RULES = {
    "collapse_bound": "for L dense layers h_l = h_(l-1) W_l + b_l (n_(l-1) inputs each) in a "
    "dtype of unit roundoff u (2^-24 float32, 2^-53 float64), |stacked - collapsed| <= 2 gamma_K "
    "M elementwise, gamma_K = K u / (1 - K u), K = sum_l (n_(l-1) + 1), M = (((|x||W_1| + "
    "|b_1|)|W_2| + |b_2|) ...)|W_L| + |b_L| (Higham 2002, Lemmas 3.1, 3.3, section 3.5); "
    "collapsed = x W + b with W = W_1 ... W_L (left to right) and b by Horner, in the same dtype",
    "numerical_rank": "the number of singular values of the computed W (SVD in float64) above "
    "gamma_k || |W_1| ... |W_L| ||_F + max(m, n) eps_float64 sigma_1, k = sum_(l<L) n_l",
    "claim_a": "holds if, for every network (narrow, wide, bottleneck, and the identity stack "
    "trained on XOR with seed 0) in both float32 and float64, max over outputs of |stacked - "
    "collapsed| / (2 gamma_K M) is <= 1, and the numerical rank of W is <= the narrowest of "
    "n_0, ..., n_L",
    "test_accuracy": "the test accuracy of the state of the epoch with the best validation "
    "accuracy (fit's monitor='val_accuracy'), mean over the seeds",
    "line_ceiling": "the best test accuracy any straight line achieves on that test set "
    "(exact: the best over lines through pairs of test points, the two points counted correct, "
    "and the constant classifiers); reported, not decided on",
    "claim_b": "holds if the linear model's and the identity stack's mean test accuracy are "
    f"each <= {LINEAR_AT_MOST['xor']} on XOR, <= {LINEAR_AT_MOST['circles']} on circles and <= "
    f"{LINEAR_AT_MOST['spirals']} on spirals (a line's best: 3/4 on XOR, about 2/3 on circles "
    "and 1.5-turn spirals, plus room for noise); moons, nearly linearly separable, is reported "
    "and not decided on",
    "claim_c": "holds if every non-linear activation's network reaches a mean test accuracy >= "
    f"{NONLINEAR_AT_LEAST['xor']} on XOR, moons and circles and >= "
    f"{NONLINEAR_AT_LEAST['spirals']} on spirals (noise 0.1 against arms 0.3 apart: the best "
    "achievable is near 0.93)",
    "sweep": "every (learning rate, data set, seed) of an activation trained together (jax.vmap "
    "of jaxnn.train.make_epoch; optax.inject_hyperparams(optax.adam), the learning rate a "
    f"state leaf), learning rates {[round(lr, 6) for lr in LEARNING_RATES]}, the setup of "
    "claim_c otherwise (data, split, init key, batch, float32); recorded: the training loss "
    f"of every epoch, the validation accuracy of every epoch up to {5 * EPOCHS} (and the test "
    "accuracy of each epoch whose validation accuracy beats a run's best so far: the epochs "
    f"the protocol can pick), and the train (eval mode), validation and test accuracy every "
    f"{EVALUATE_EVERY} epochs",
    "convergence": "a run has converged at the end of epoch e when e >= "
    f"{CONVERGENCE['min_epochs']}, e is a multiple of {CONVERGENCE['window']}, and the mean "
    f"training loss over epochs (e - {CONVERGENCE['window']}, e] is less than "
    f"{CONVERGENCE['min_improvement']} below the mean over the {CONVERGENCE['window']} epochs "
    f"before; it is then no longer trained; a run that never converges stops at "
    f"{CONVERGENCE['max_epochs']} epochs and counts as not converged; the training loss of an "
    "epoch is the mean of its minibatch losses (train mode)",
    "test_accuracy_converged": "claim_c's test_accuracy with the budget replaced by "
    "convergence: the test accuracy of the recorded epoch, up to the run's convergence epoch "
    "(its last if it never converged), with the best "
    "validation accuracy (the first of equals); the train and test accuracy of the last epoch "
    "are reported beside it",
    "learning_rate_selection": "for each activation, data set and seed, the learning rate of "
    "the grid whose run has the highest best validation accuracy (a tie goes to the smaller "
    "learning rate); the test part plays no role",
    "claim_c_converged": "claim_c's thresholds, unchanged, applied to the mean over seeds of "
    "test_accuracy_converged with the selected learning rate: holds if every non-linear "
    f"activation reaches >= {NONLINEAR_AT_LEAST['xor']} on XOR, moons and circles and >= "
    f"{NONLINEAR_AT_LEAST['spirals']} on spirals",
    "epochs_to_fit": "with the original learning rate "
    f"{LEARNING_RATE}, the first recorded epoch (a multiple of {EVALUATE_EVERY}) whose "
    "training accuracy (eval mode) is >= the data set's claim_c threshold; a run that never "
    "reaches it (it converged below it, or reached the cap) counts as "
    f"{CONVERGENCE['max_epochs'] + 1}",
    "claim_slower": "holds if on "
    f"{SLOWER_DATASET} the median over seeds of epochs_to_fit of each saturating activation "
    f"({', '.join(SATURATING)}) is larger than that of each non-saturating one "
    f"({', '.join(NON_SATURATING)}); the other activations and data sets are reported, not "
    "decided on",
    "sigma_prime": "reported, not decided on: at initialisation (seed 0, the "
    f"{SLOWER_DATASET} training set, train mode) the mean over hidden units and examples of "
    "the activation's derivative, and the norm of the gradient of each dense kernel from the "
    "hand-derived backward (jaxnn.backprop.layer_gradients)",
    "sensitivity": common.sensitivity_rule(SENSITIVITY)
    + "; each variant applies claim_c's protocol (the test accuracy of the best validation "
    "epoch within the budget, mean over the seeds) to the sweep's runs: budget_x5 and the "
    "learning-rate variants read the sweep's recorded epochs, width_x2 is a sweep of its own",
}
LABELS = {
    "narrow": "narrow 2-16-16-16-2",
    "wide": "wide 2-256-256-256-2",
    "bottleneck": "bottleneck 16-64-3-64-16",
    "trained_xor": "identity stack trained on XOR (2-32-32-2)",
    "float32": "float32",
    "float64": "float64",
    "k": "K = Σ (n_(l-1) + 1)",
    "gamma_k": "γ_K",
    "rel_error": "max |stacked − collapsed| / max |stacked|",
    "rel_bound": "max 2γ_K M / max |stacked|",
    "max_ratio_to_bound": "max |stacked − collapsed| / (2γ_K M)",
    "within_bound": "within 2γ_K M everywhere",
    "error_vs_float64": "max |float32 route − float64 stacked| / (γ_K M)",
    "numerical_rank": "numerical rank of W",
    "min_width": "narrowest width",
    "singular_values": "singular values of W",
    "linear": "linear (softmax regression)",
    "identity": "identity stack (no activation)",
    **{a: a for a in ACTIVATIONS},
    "line_ceiling": "best straight line (test set)",
    "test_mean": "mean test accuracy",
    "train_mean": "mean train accuracy",
    "claim_a": "(a) stacked linear layers are one linear map",
    "claim_b": "(b) a linear model cannot separate data no line separates",
    "claim_c": "(c) activation functions make the network separate them",
    "claim_c_converged": "(c) at convergence, learning rate chosen on validation",
    "claim_slower": "saturating activations are slower to train",
    "epochs_to_fit": "epochs to reach the threshold in training accuracy",
    "converged_epoch": "convergence epoch",
    "learning_rate": "selected learning rate",
    "mean_derivative": "mean φ'(z) over hidden units at initialisation",
    "max_derivative": "max φ'(z)",
    "kernel_gradient_norms": "‖∂L/∂W_l‖ at initialisation, l = 1, 2, 3",
    "sweep_check": "the sweep's test accuracy under claim (c)'s protocol and settings",
    "sweep_check_max_difference": "max |sweep_check - claim (c)'s own run| over the runs",
    **{k: k.replace("_", " ") for k in SENSITIVITY},
    "xor": "XOR",
    "moons": "two moons",
    "circles": "circles",
    "spirals": "spirals",
}


# ----------------------------------------------------------------------------- (a) collapse


def gamma(k: int, u: float) -> float:
    """Higham's ``γ_k = k u / (1 - k u)``, the bound on ``|θ_k|`` (needs ``k u < 1``)."""
    if k * u >= 1:
        raise ValueError(f"gamma: k u = {k * u} must be < 1.")
    return k * u / (1 - k * u)


def _dense(net: Layer, params: dict[str, Any]) -> list[tuple[Any, Any]]:
    names = [f"{c.name}_{i}" for i, c in enumerate(net.children)]
    return [
        (params[n]["w"], params[n]["b"])
        for n, c in zip(names, net.children, strict=True)
        if c.name == "dense"
    ]


def dense_layers(net: Layer, params: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(w, b)`` of each dense layer of a ``serial``/``mlp`` network, in order (numpy)."""
    return [(np.asarray(w), np.asarray(b)) for w, b in _dense(net, params)]


def collapse(layers: Sequence[tuple[Any, Any]]) -> tuple[jax.Array, jax.Array]:
    """``W = W_1 ··· W_L`` (left to right) and ``b`` by Horner, in the layers' dtype (jnp)."""
    w, b = (jnp.asarray(a) for a in layers[0])
    for wl, bl in layers[1:]:
        wl = jnp.asarray(wl)
        w, b = w @ wl, b @ wl + jnp.asarray(bl)
    return w, b


def magnitude(x: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``M = (((|x||W_1| + |b_1|)|W_2| + |b_2|) ···)|W_L| + |b_L|`` in float64 (numpy)."""
    m = np.abs(np.asarray(x, np.float64))
    for w, b in layers:
        m = m @ np.abs(np.asarray(w, np.float64)) + np.abs(np.asarray(b, np.float64))
    return m


def inner_lengths(n_in: int, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """``(K, k)``: ``K = Σ_l (n_{l-1} + 1)`` for the outputs, ``k = Σ_{l<L} n_l`` for ``W``."""
    widths = [n_in, *(np.shape(w)[1] for w, _ in layers)]
    return sum(n + 1 for n in widths[:-1]), sum(widths[1:-1])


def numerical_rank(
    w: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]], k: int, u: float
) -> tuple[list[float], float, int]:
    """Singular values of the computed ``w`` (float64 SVD), the tolerance, the rank above it."""
    w = np.asarray(w, np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    a = np.abs(np.asarray(layers[0][0], np.float64))
    for wl, _ in layers[1:]:
        a = a @ np.abs(np.asarray(wl, np.float64))
    tol = gamma(k, u) * float(np.linalg.norm(a)) + max(w.shape) * np.finfo(np.float64).eps * s[0]
    return s.tolist(), float(tol), int(np.sum(s > tol))


def _ratio(diff: np.ndarray, bound: np.ndarray) -> float | None:
    """``max diff / bound`` (0/0 counts 0); ``None`` where a nonzero diff meets a zero bound."""
    if np.any((bound == 0) & (diff != 0)):
        return None
    safe = np.where(bound > 0, bound, 1.0)
    return float(np.max(np.where(bound > 0, diff / safe, 0.0)))


@functools.lru_cache(maxsize=16)
def _routes(net: Layer):
    """``(params, x) ->`` the network's output, ``W``, ``b`` and ``x W + b``, jitted."""

    def routes(params: dict[str, Any], x: jax.Array) -> dict[str, jax.Array]:
        stacked, _ = net.apply(params, {}, x, train=False)
        w, b = collapse(_dense(net, params))
        return {"stacked": stacked, "w": w, "b": b, "collapsed": x @ w + b}

    return jax.jit(routes)


def _stacked_and_collapsed(
    net: Layer, params: dict[str, Any], x: np.ndarray, dtype_name: str
) -> dict[str, np.ndarray]:
    """The network's output, ``W``, ``b`` and ``x W + b``, all computed in ``dtype_name``."""
    dtype = DTYPES[dtype_name]
    with jax.enable_x64(dtype_name == "float64"), jax.default_matmul_precision("highest"):
        p = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype)), params)
        out = _routes(net)(p, jnp.asarray(np.asarray(x, dtype)))
        return {k: np.asarray(v) for k, v in out.items()}


def collapse_check(
    net: Layer, params: dict[str, Any], x: np.ndarray, min_width: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stacked against collapsed in both dtypes: the JSON-ready numbers, and the arrays."""
    layers32 = [(w.astype(np.float32), b.astype(np.float32)) for w, b in dense_layers(net, params)]
    big_k, small_k = inner_lengths(x.shape[1], layers32)
    m = magnitude(np.asarray(x, np.float32), layers32)
    routes = {dt: _stacked_and_collapsed(net, params, x, dt) for dt in DTYPES}
    reference = routes["float64"]["stacked"]  # the same exact map, 2^29 times finer
    out: dict[str, Any] = {"k": big_k, "k_product": small_k, "min_width": min_width}
    for dt, r in routes.items():
        u = UNIT_ROUNDOFF[dt]
        g = gamma(big_k, u)
        stacked, collapsed = (np.asarray(r[k], np.float64) for k in ("stacked", "collapsed"))
        diff = np.abs(stacked - collapsed)
        scale = float(np.max(np.abs(stacked)))
        ratio = _ratio(diff, 2 * g * m)
        s, tol, rank = numerical_rank(r["w"], layers32, small_k, u)
        entry = {
            "unit_roundoff": u,
            "gamma_k": g,
            "max_abs_diff": float(np.max(diff)),
            "max_abs_output": scale,
            "rel_error": float(np.max(diff)) / scale,
            "rel_bound": float(np.max(2 * g * m)) / scale,
            "max_ratio_to_bound": ratio,
            "within_bound": ratio is not None and ratio <= 1,
            "singular_values": s,
            "rank_tolerance": tol,
            "numerical_rank": rank,
            "rank_at_most_min_width": rank <= min_width,
        }
        if dt == "float32":
            entry["error_vs_float64"] = {
                route: _ratio(np.abs(np.asarray(r[route], np.float64) - reference), g * m)
                for route in ("stacked", "collapsed")
            }
        out[dt] = entry
    return out, routes


def random_params(net: Layer, n_in: int, widths: Sequence[int], rng: np.random.Generator):
    """Float32 params for ``mlp(widths, "identity")``: Glorot-uniform w, N(0, BIAS_STD²) b.

    Drawn with numpy: ``jax.random`` compiles a sampler for every new shape, seconds each.
    """
    params, fans = {}, iter(zip([n_in, *widths[:-1]], widths, strict=True))
    for i, child in enumerate(net.children):  # only the dense layers hold params
        if child.name == "dense":
            fan_in, fan_out = next(fans)
            limit = np.sqrt(6 / (fan_in + fan_out))
            params[f"{child.name}_{i}"] = {
                "w": rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32),
                "b": (BIAS_STD * rng.standard_normal(fan_out)).astype(np.float32),
            }
    return params


def collapse_networks(n_points: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three random identity stacks of ``COLLAPSE_NETWORKS``, checked in both dtypes."""
    rng = np.random.default_rng(SEED)
    results, saved = {}, {}
    for name, (n_in, widths) in COLLAPSE_NETWORKS.items():
        net = mlp(widths, "identity", name=name)
        params = random_params(net, n_in, widths, rng)
        x = rng.standard_normal((n_points, n_in)).astype(np.float32)
        results[name], routes = collapse_check(net, params, x, min(n_in, *widths))
        if name in SAVED_NETWORKS:
            saved[name] = _saved(net, params, routes)
    return results, saved


def _saved(net: Layer, params: dict[str, Any], routes: dict[str, Any]) -> dict[str, Any]:
    return {
        "layers": [{"w": w.tolist(), "b": b.tolist()} for w, b in dense_layers(net, params)],
        **{f"w_{dt}": routes[dt]["w"].tolist() for dt in DTYPES},
        **{f"b_{dt}": routes[dt]["b"].tolist() for dt in DTYPES},
    }


# ----------------------------------------------------------------------------- (b, c) training


def network(model: str) -> Layer:
    """``linear``: one dense layer of two logits; otherwise ``mlp([*HIDDEN, 2], model)``."""
    if model == "linear":
        return mlp([2], "identity", param_dtype=jnp.float32, name="linear")
    return mlp([*HIDDEN, 2], model, param_dtype=jnp.float32, name=model)


def splits(name: str, seed: int, n_points: int) -> data.Splits:
    """The data set ``name`` (default noise), split 60/20/20 stratified, all seeded by ``seed``."""
    raw = data.SYNTHETIC[name](n_points, seed=seed)
    return data.split(raw, validation=VALIDATION, test=TEST, seed=seed, name=name, num_classes=2)


def line_ceiling(x: np.ndarray, y: np.ndarray) -> float:
    """The best accuracy of any half-plane classifier on ``(x, y)`` (module docstring).

    For the line through points ``i`` and ``j``, ``s = (X - x_i) · n`` with ``n ⊥ (x_j -
    x_i)``; ``s_i`` and ``s_j`` are exactly 0 (the two products commute). Points with ``s ==
    0`` count as correct, the others by their side, the better orientation taken.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y)
    n = len(y)
    best = max(np.sum(y == 0), np.sum(y == 1))
    i, j = np.triu_indices(n, k=1)
    for chunk in np.array_split(np.arange(len(i)), max(1, len(i) // 4096)):
        d = x[j[chunk]] - x[i[chunk]]
        normal = np.stack([-d[:, 1], d[:, 0]], 1)  # [pairs, 2]
        rel = x[None, :, :] - x[i[chunk]][:, None, :]  # [pairs, n, 2]
        s = rel[..., 0] * normal[:, None, 0] + rel[..., 1] * normal[:, None, 1]
        on = np.sum(s == 0, 1)
        one = (y == 1)[None, :]
        up = np.sum((s > 0) & one, 1) + np.sum((s < 0) & ~one, 1)
        down = np.sum((s < 0) & one, 1) + np.sum((s > 0) & ~one, 1)
        best = max(best, int(np.max(np.maximum(up, down) + on)))
    return float(best) / n


def _grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = x.min(0) - GRID_MARGIN, x.max(0) + GRID_MARGIN
    g0, g1 = np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID)
    mesh = np.stack(np.meshgrid(g0, g1), -1).reshape(-1, 2).astype(np.float32)
    return g0, g1, mesh


def _softmax1(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    return 1 / (1 + np.exp(z[:, 0] - z[:, 1]))


def train_all(
    models: Sequence[str], seeds: Sequence[int], epochs: int, n_points: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every model on every data set and seed: the JSON-ready table, and the figure's arrays."""
    optimizer = optax.adam(LEARNING_RATE)
    sets = {(name, s): splits(name, s, n_points) for name in DATASETS for s in seeds}
    grids = {name: _grid(sets[name, seeds[0]].train.x) for name in DATASETS}
    table: dict[str, Any] = {name: {m: {} for m in models} for name in DATASETS}
    arrays: dict[str, Any] = {"boundaries": {}, "test": {}, "grids": grids}
    jobs = list(itertools.product(models, DATASETS, seeds))
    bar = iter(common.progress(range(len(jobs)), f"{len(jobs)} training runs", unit="run"))
    with jax.enable_x64(False):  # float32 by construction
        nets = {m: network(m) for m in models}
        for model, name, seed in jobs:
            net, sp = nets[model], sets[name, seed]
            ts = TrainState.create(net, optimizer, jax.random.key(seed), (BATCH, 2))
            fitted = fit(net, LOSS, optimizer, ts, tuple(sp.train), epochs=epochs,
                         batch_size=BATCH, validation=tuple(sp.validation),
                         monitor="val_accuracy")  # fmt: skip
            best = fitted.best
            # One forward pass over train, test and the grid: one compilation per model.
            points = np.concatenate((sp.train.x, sp.test.x, grids[name][2]))
            logits = np.asarray(
                predict(net, best.params, best.state, points, batch_size=len(points))
            )
            n_train, n_test = len(sp.train.y), len(sp.test.y)
            predicted = np.argmax(logits, axis=1)
            row = table[name][model]
            for key, value in (
                ("test", float(np.mean(predicted[n_train : n_train + n_test] == sp.test.y))),
                ("train", float(np.mean(predicted[:n_train] == sp.train.y))),
                ("best_epoch", fitted.best_epoch),
            ):
                row.setdefault(key, []).append(value)
            if seed == seeds[0]:
                grid_logits = logits[n_train + n_test :]
                arrays["boundaries"][name, model] = _softmax1(grid_logits).reshape(GRID, GRID)
                arrays["test"][name] = sp.test
                if (name, model) == ("xor", "identity"):
                    arrays["trained_xor"] = (net, jax.tree.map(np.asarray, best.params))
            next(bar, None)
    for _ in bar:  # closes the bar
        pass
    for name in DATASETS:
        for row in table[name].values():
            row["test_mean"] = float(np.mean(row["test"]))
            row["train_mean"] = float(np.mean(row["train"]))
        ceilings = [line_ceiling(*sets[name, s].test) for s in seeds]
        table[name]["line_ceiling"] = {"test": ceilings, "test_mean": float(np.mean(ceilings))}
    return table, arrays


# ----------------------------------------------------------------------------- (c) the sweep


class Sweep(NamedTuple):
    """Every run of one activation's sweep, one row per ``(learning rate, data set, seed)``."""

    runs: list[tuple[float, str, int]]  # [runs]: (learning rate, data set, seed)
    loss: np.ndarray  # [runs, epochs]: mean minibatch loss of each epoch (train mode)
    accuracy: np.ndarray  # [runs, epochs, 3]: train (eval mode), validation, test accuracy
    converged: np.ndarray  # [runs]: the convergence epoch (1-based), 0 where never
    max_epochs: int  # the cap


def _with_learning_rate(ts: TrainState, learning_rate: float) -> TrainState:
    """``ts`` whose ``inject_hyperparams`` optimizer state holds ``learning_rate``."""
    hyper = {**ts.opt_state.hyperparams, "learning_rate": jnp.float32(learning_rate)}
    return ts._replace(opt_state=ts.opt_state._replace(hyperparams=hyper))


def converged_epoch(loss: np.ndarray, criterion: dict[str, Any]) -> int:
    """The first epoch at which one run's per-epoch ``loss`` meets ``criterion``
    (``RULES["convergence"]``), 1-based; 0 if none does."""
    w, floor, delta = criterion["window"], criterion["min_epochs"], criterion["min_improvement"]
    start = max(floor, 2 * w)
    for end in range(-(-start // w) * w, len(loss) + 1, w):
        if loss[end - 2 * w : end - w].mean() - loss[end - w : end].mean() < delta:
            return end
    return 0


def sweep(
    model: str,
    hidden: Sequence[int],
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    criterion: dict[str, Any],
    every_epoch: int,
    n_points: int = N_POINTS,
) -> Sweep:
    """Train ``mlp([*hidden, 2], model)`` on every (learning rate, data set, seed) at once.

    One compiled program runs ``criterion["window"]`` epochs of every run (``jax.vmap`` of
    :func:`jaxnn.train.make_epoch`, the learning rate a leaf of the optimizer state) and
    records the loss of every epoch, the validation accuracy of every epoch up to
    ``every_epoch`` (the test accuracy too where a run's validation accuracy beats its best so
    far) and the three accuracies every ``EVALUATE_EVERY`` epochs (``NaN`` where not recorded:
    the evaluations cost more than the training); the sweep stops once every
    run has converged (:func:`converged_epoch`) or at ``criterion["max_epochs"]``. Each run
    starts as claim (c)'s: ``TrainState.create(net, ..., jax.random.key(seed))``, the same
    initial weights and minibatch order.
    """
    if criterion["window"] % EVALUATE_EVERY:
        raise ValueError(f"sweep: the window must be a multiple of {EVALUATE_EVERY} epochs.")
    runs = [(lr, name, seed) for lr in learning_rates for name in DATASETS for seed in seeds]
    sets = {(name, seed): splits(name, seed, n_points) for name in DATASETS for seed in seeds}
    parts = ("train", "validation", "test")
    with jax.enable_x64(False):  # float32 by construction
        net = mlp([*hidden, 2], model, param_dtype=jnp.float32, name=model)
        optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=LEARNING_RATE)
        states = [
            _with_learning_rate(
                TrainState.create(net, optimizer, jax.random.key(seed), (BATCH, 2)), lr
            )
            for lr, _, seed in runs
        ]
        ts = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        data_ = {
            part: tuple(
                jnp.stack([jnp.asarray(getattr(sets[n, s], part)[i]) for _, n, s in runs])
                for i in (0, 1)
            )
            for part in parts
        }

        def accuracy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
            return jnp.mean(jnp.argmax(net.apply(params, {}, x, train=False)[0], -1) == y)

        def accuracies_of(ts: TrainState, data: dict, which: Sequence[str]) -> jax.Array:
            """``[runs, 3]``: the accuracy on each part in ``which``, NaN on the others."""
            n = jax.tree.leaves(ts.params)[0].shape[0]
            return jnp.stack(
                [
                    jax.vmap(accuracy)(ts.params, *data[part])
                    if part in which
                    else jnp.full(n, jnp.nan)
                    for part in parts
                ],
                axis=1,
            )

        epoch = jax.vmap(make_epoch(net, LOSS, optimizer, batch_size=BATCH))

        def validation_first(ts: TrainState, data: dict, best: jax.Array) -> jax.Array:
            """Every epoch up to ``every_epoch``: the validation accuracy, and the test
            accuracy only when some run's validation accuracy beats its best so far (the only
            epochs claim (c)'s protocol can pick)."""
            val = accuracies_of(ts, data, ("validation",))
            return jax.lax.cond(
                jnp.any(val[:, 1] > best),
                lambda: accuracies_of(ts, data, parts[1:]),
                lambda: val,
            )

        @functools.partial(jax.jit, donate_argnums=(0,))
        def window(ts: TrainState, data: dict, done: jax.Array, best: jax.Array):
            def body(carry: tuple[TrainState, jax.Array, jax.Array], _: None):
                ts, e, best = carry
                ts, loss = epoch(ts, *data["train"])
                e = e + 1
                acc = jax.lax.cond(
                    e % EVALUATE_EVERY == 0,
                    lambda: accuracies_of(ts, data, parts),
                    lambda: jax.lax.cond(
                        e <= every_epoch,
                        lambda: validation_first(ts, data, best),
                        lambda: accuracies_of(ts, data, ()),
                    ),
                )
                best = jnp.fmax(best, acc[:, 1])
                return (ts, e, best), (loss.mean(-1), acc)

            (ts, _, best), out = jax.lax.scan(
                body, (ts, done, best), None, length=criterion["window"]
            )
            return ts, best, out

        # Runs stop being trained once they converge: when at most a third are left, they go on
        # alone (padded to a third: one more compilation, a third of the work per epoch).
        w, cap, n = criterion["window"], criterion["max_epochs"], len(runs)
        loss_all = np.full((n, cap), np.nan)
        acc_all = np.full((n, cap, 3), np.nan)
        active = np.arange(n)  # the runs the stacked state holds, in order
        best = jnp.full(n, -1.0)  # each run's best validation accuracy so far
        for start in range(0, cap, w):
            ts, best, (loss, acc) = window(ts, data_, jnp.int32(start), best)
            keep = np.flatnonzero(np.r_[True, active[1:] != active[:-1]])  # padding repeats
            loss_all[active[keep], start : start + w] = np.asarray(loss).T[keep]
            acc_all[active[keep], start : start + w] = np.asarray(acc).transpose(1, 0, 2)[keep]
            left = [i for i in range(n) if not converged_epoch(loss_all[i, : start + w], criterion)]
            if not left:
                break
            if len(active) == n >= 24 and len(left) <= n // 3:
                active = np.array(left + [left[-1]] * (n // 3 - len(left)))
                ts, data_, best = jax.tree.map(
                    lambda leaf, idx=active: leaf[idx], (ts, data_, best)
                )
    last = int(np.max(np.sum(np.isfinite(loss_all), axis=1)))
    return Sweep(
        runs=runs,
        loss=loss_all[:, :last],
        accuracy=acc_all[:, :last],
        converged=np.array([converged_epoch(row, criterion) for row in loss_all[:, :last]]),
        max_epochs=cap,
    )


def sweep_all(
    models: Sequence[str],
    hidden: Sequence[int],
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    criterion: dict[str, Any],
    every_epoch: int,
) -> dict[str, Sweep]:
    """:func:`sweep` of every model, two at a time (each compiled program runs on one core)."""
    args = (hidden, learning_rates, seeds, criterion, every_epoch)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {m: pool.submit(sweep, m, *args) for m in models}
        bar = common.progress(
            concurrent.futures.as_completed(futures.values()),
            f"{len(models)} sweeps of {len(learning_rates) * len(DATASETS) * len(seeds)} runs",
            total=len(models), unit="sweep",
        )  # fmt: skip
        for _ in bar:
            pass
        return {m: f.result() for m, f in futures.items()}


def best_validation_test(sw: Sweep, i: int, epochs: int) -> float:
    """Claim (c)'s protocol on run ``i``: the test accuracy of the first epoch (of the first
    ``epochs``) with the highest validation accuracy, as ``fit(..., monitor="val_accuracy")``.

    Raises:
      ValueError: an epoch of the first ``epochs`` has no recorded validation accuracy.
    """
    val = sw.accuracy[i, :epochs, 1]
    if len(val) < epochs or np.isnan(val).any():
        raise ValueError(f"best_validation_test: run {i} did not record {epochs} epochs.")
    return float(sw.accuracy[i, int(np.argmax(val)), 2])


def at_convergence(sw: Sweep, i: int) -> tuple[int, np.ndarray]:
    """Run ``i``'s convergence epoch (its last epoch if it never converged) and accuracies."""
    e = int(sw.converged[i]) or ran(sw, i)
    return e, sw.accuracy[i, e - 1]


def ran(sw: Sweep, i: int) -> int:
    """The epochs run ``i`` was trained for (a converged run stops early, see :func:`sweep`)."""
    return int(np.sum(np.isfinite(sw.loss[i])))


def epochs_to_fit(sw: Sweep, i: int, threshold: float) -> int:
    """The first recorded epoch (1-based, a multiple of ``EVALUATE_EVERY``) of run ``i``
    whose training accuracy is >= ``threshold``, up to its convergence epoch (the epochs a
    converged run trains beside the others are not its run); the cap + 1 if none is."""
    last, _ = at_convergence(sw, i)
    with np.errstate(invalid="ignore"):
        hits = np.flatnonzero(sw.accuracy[i, :last, 0] >= threshold)
    return int(hits[0]) + 1 if len(hits) else sw.max_epochs + 1


def sigma_prime(model: str, seed: int = 0) -> dict[str, Any]:
    """At initialisation on the spirals training set: the activation's derivative over the
    hidden units, and every dense kernel's gradient norm from the hand-derived backward."""
    sp = splits(SLOWER_DATASET, seed, N_POINTS)
    with jax.enable_x64(False):
        net = network(model)
        params, state = net.init(jax.random.key(seed), (BATCH, 2))
        x, y = jnp.asarray(sp.train.x), jnp.asarray(sp.train.y)
        gradients = jax.jit(lambda *a: layer_gradients(net, LOSS, *a, train=True)[1])
        layers = gradients(params, state, x, y)
    dense = layer_keys(net, "dense")
    hidden = [k for k in layers if k not in dense]  # the activation layers, in order
    derivative = activations.get(model).derivative
    return {
        "mean_derivative": float(np.mean([jnp.mean(derivative(layers[k].x)) for k in hidden])),
        "max_derivative": float(max(jnp.max(derivative(layers[k].x)) for k in hidden)),
        "kernel_gradient_norms": [float(jnp.linalg.norm(layers[k].dparams["w"])) for k in dense],
    }


# ----------------------------------------------------------------------------- verdicts


def decide(collapse_results: dict[str, Any], table: dict[str, Any], models: Sequence[str]):
    """The three verdicts of ``RULES`` from the recorded numbers."""
    claim_a = all(
        r[dt]["within_bound"] and r[dt]["numerical_rank"] <= r["min_width"]
        for r in collapse_results.values()
        for dt in DTYPES
    )
    claim_b = all(
        table[name][m]["test_mean"] <= limit
        for name, limit in LINEAR_AT_MOST.items()
        for m in LINEAR_MODELS
    )
    claim_c = all(
        table[name][m]["test_mean"] >= limit
        for name, limit in NONLINEAR_AT_LEAST.items()
        for m in models
        if m in ACTIVATIONS
    )
    return {"claim_a": claim_a, "claim_b": claim_b, "claim_c": claim_c}


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    col, table, verdicts, line = (
        result["collapse"], result["accuracy"], result["verdicts"], result["xor_line"]
    )  # fmt: skip

    def worst(dt: str) -> str:
        ratios = [r[dt]["max_ratio_to_bound"] for r in col.values()]
        return "none" if None in ratios else f"{max(ratios):.3g}"

    ranks = ", ".join(
        f"{name} {r['float64']['numerical_rank']} (narrowest {r['min_width']})"
        for name, r in col.items()
    )
    linear = "; ".join(
        f"{name}: linear {table[name]['linear']['test_mean']:.3f}, identity stack "
        f"{table[name]['identity']['test_mean']:.3f} (limit {limit}, best line "
        f"{table[name]['line_ceiling']['test_mean']:.3f})"
        for name, limit in LINEAR_AT_MOST.items()
    )
    acts = [m for m in result["setup"]["models"] if m in ACTIVATIONS]
    lowest = _lowest(table, acts)
    return [
        common.claim(
            "Stacked linear layers stay one linear map.",
            RULES["collapse_bound"] + "; " + RULES["claim_a"],
            verdicts["claim_a"],
            f"largest |stacked - collapsed| / (2 gamma_K M) over the four networks: float32 "
            f"{worst('float32')}, float64 {worst('float64')}; numerical rank of W: {ranks}; "
            f"the XOR-trained identity stack's classes on the {GRID}x{GRID} grid differ from "
            f"its collapsed map's half-plane at {line['grid_class_mismatches']} points.",
            f"{NAME}.png, bottom row, panels (a)-(c)",
        ),
        common.claim(
            "Stacked linear layers cannot separate data that no straight line separates.",
            RULES["test_accuracy"] + "; " + RULES["claim_b"],
            verdicts["claim_b"],
            f"mean test accuracy: {linear}; moons (not decided): linear "
            f"{table['moons']['linear']['test_mean']:.3f}, identity stack "
            f"{table['moons']['identity']['test_mean']:.3f}.",
            f"{NAME}.png, columns linear and identity stack, and panel (d)",
        ),
        common.claim(
            "Activation functions make a network non-linear (able to separate such data).",
            RULES["test_accuracy"] + "; " + RULES["claim_c"],
            verdicts["claim_c"],
            f"over the {len(acts)} activations, {result['setup']['epochs']} epochs at learning "
            f"rate {LEARNING_RATE}: {lowest}.",
            f"{NAME}.png, the activation columns and panel (d)",
            robustness=_robustness(result),
        ),
        _claim_converged(result),
        _claim_slower(result),
    ]


def _lowest(table: dict[str, Any], acts: Sequence[str]) -> str:
    """Each data set's lowest mean test accuracy, and every (activation, data set) below."""
    lowest = "; ".join(
        f"{name}: lowest {min(acts, key=lambda m: table[name][m]['test_mean'])} "
        f"{min(table[name][m]['test_mean'] for m in acts):.3f} (threshold {limit})"
        for name, limit in NONLINEAR_AT_LEAST.items()
    )
    below = [
        f"{m} on {name} (test {table[name][m]['test_mean']:.3f}"
        + next(
            (
                f", train {table[name][m][k]:.3f})"
                for k in ("train_mean", "train_last_mean")
                if k in table[name][m]
            ),
            ")",
        )
        for name, limit in NONLINEAR_AT_LEAST.items()
        for m in acts
        if table[name][m]["test_mean"] < limit
    ]
    return lowest + "; below the threshold: " + (", ".join(below) if below else "none")


def _robustness(result: dict[str, Any]) -> dict[str, Any] | None:
    """Claim (c)'s sensitivity analysis, when it does not hold."""
    if "sensitivity" not in result:
        return None
    variants = [
        common.variant(key, f"{key.replace('_', ' ')}: {SENSITIVITY[key]}", v["holds"],
                       _lowest(v["accuracy"], list(result["sweep_check"]["xor"])))
        for key, v in result["sensitivity"].items()
    ]  # fmt: skip
    return common.robustness(result["verdicts"]["claim_c"], variants)


def _claim_converged(result: dict[str, Any]) -> dict[str, Any]:
    conv = result["converged"]
    acts = list(result["sweep_check"]["xor"])
    stuck = sum(not c for name in DATASETS for m in acts for c in conv[name][m]["converged"])
    epochs = [e for name in DATASETS for m in acts for e in conv[name][m]["converged_epoch"]]
    rates = [lr for name in DATASETS for m in acts for lr in conv[name][m]["learning_rate"]]
    counts = ", ".join(f"{lr:.4g}: {rates.count(lr)}" for lr in LEARNING_RATES)
    threshold = NONLINEAR_AT_LEAST[SLOWER_DATASET]
    means = [conv[SLOWER_DATASET][m]["test_mean"] for m in acts]
    n_test = round(N_POINTS * TEST) * len(result["setup"]["seeds"])
    se = (threshold * (1 - threshold) / n_test) ** 0.5
    spread = max(abs(m - threshold) for m in means) / se
    return common.claim(
        "Activation functions make a network non-linear (able to separate such data), judged "
        "on networks trained to convergence.",
        "; ".join(
            RULES[k]
            for k in (
                "convergence",
                "test_accuracy_converged",
                "learning_rate_selection",
                "claim_c_converged",
            )
        ),
        result["verdicts"]["claim_c_converged"],
        f"over the {len(acts)} activations, the best validation epoch up to convergence "
        f"(train: the last epoch's): {_lowest(conv, acts)}; convergence epochs "
        f"{min(epochs)}-{max(epochs)}, {stuck} of {len(epochs)} selected runs not converged by "
        f"{result['setup']['convergence']['max_epochs']} epochs; selected learning rates "
        f"{counts}; the last epoch's mean test accuracy on {SLOWER_DATASET}, lowest "
        f"{min(conv[SLOWER_DATASET][m]['test_last_mean'] for m in acts):.3f}. On "
        f"{SLOWER_DATASET} the activations' means lie in [{min(means):.3f}, {max(means):.3f}] "
        f"and the binomial standard error of a mean over {n_test} test points at the threshold "
        f"is {se:.3f}: the verdict is decided within {spread:.1f} standard errors of the "
        "threshold. No sensitivity analysis: each variant would be a sweep to convergence of "
        "every activation, beyond the experiment's time budget.",
        f"{NAME}.png, panel (f)",
    )


def _claim_slower(result: dict[str, Any]) -> dict[str, Any]:
    row = result["slower"][SLOWER_DATASET]
    sig = result["sigma_prime"]
    medians = ", ".join(
        f"{m} {row[m]['median']:g}" for m in sorted(row, key=lambda m: row[m]["median"])
    )
    derivative = ", ".join(
        f"{m} {sig[m]['mean_derivative']:.3f} (‖∂L/∂W_1‖ / ‖∂L/∂W_3‖ = "
        f"{sig[m]['kernel_gradient_norms'][0] / sig[m]['kernel_gradient_norms'][-1]:.3g})"
        for m in (*SATURATING, *NON_SATURATING) if m in sig
    )  # fmt: skip
    return common.claim(
        "Saturating activations (sigmoid, tanh) are slower to train than non-saturating ones "
        "(relu, leaky_relu): the fixed-budget result, the vanishing-gradient bound σ' <= 1/4 "
        "seen from training speed.",
        RULES["epochs_to_fit"] + "; " + RULES["claim_slower"],
        result["verdicts"]["claim_slower"],
        f"median epochs to reach training accuracy {NONLINEAR_AT_LEAST[SLOWER_DATASET]} on "
        f"{SLOWER_DATASET} at learning rate {LEARNING_RATE}: {medians} (a run that never "
        f"reaches it counts as {result['setup']['convergence']['max_epochs'] + 1}); at "
        "initialisation, the mean φ'(z) over "
        "the hidden units, and the gradient reaching the first kernel over the last's from the "
        f"hand-derived backward: {derivative}. Through each sigmoid layer the backpropagated "
        "signal is multiplied by σ'(z) <= 1/4 (vanishing_gradients, claim 1), so the first "
        "layers of a sigmoid network learn slowly; tanh' <= 1 with tanh'(0) = 1, so for tanh the "
        "bound alone does not explain a slower start",
        f"{NAME}.png, panel (e)",
    )


def _xor_line(arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The XOR-trained identity stack: its collapse check on the grid, and its boundary line."""
    net, params = arrays["trained_xor"]
    mesh = arrays["grids"]["xor"][2]
    check, routes = collapse_check(net, params, mesh, min(2, *HIDDEN))
    r = routes["float32"]
    w, b = np.asarray(r["w"], np.float64), np.asarray(r["b"], np.float64)
    normal, offset = w[:, 1] - w[:, 0], float(b[1] - b[0])
    stacked_class = np.argmax(r["stacked"], axis=1)
    half_plane = (mesh.astype(np.float64) @ normal + offset > 0).astype(int)
    line = {
        "normal": normal.tolist(),
        "offset": offset,
        "grid_class_mismatches": int(np.sum(stacked_class != half_plane)),
        "grid_points": len(mesh),
    }
    return check, _saved(net, params, routes), line


def setup(quick: bool = False) -> dict[str, Any]:
    """The setup of a run, fixed before it (:func:`jaxnn_experiments.common.preregister`)."""
    return {
        "collapse_networks": {
            name: {"input": n_in, "widths": list(widths)}
            for name, (n_in, widths) in COLLAPSE_NETWORKS.items()
        }
        | {"trained_xor": {"input": 2, "widths": [*HIDDEN, 2]}},
        "collapse_init": f"mlp(widths, 'identity'); Glorot-uniform kernels and N(0, "
        f"{BIAS_STD}^2) biases drawn in float32 by numpy default_rng({SEED}) (then the "
        "inputs); the float64 route uses the same values cast",
        "collapse_inputs": f"{COLLAPSE_POINTS} points ~ N(0, I), numpy default_rng({SEED}); "
        f"trained_xor: the {GRID}x{GRID} grid of the XOR panel",
        "matmul_precision": "highest",
        "datasets": {
            name: f"jaxnn.data.{name}({N_POINTS}, seed=seed), default noise; split "
            f"validation={VALIDATION}, test={TEST}, seed=seed"
            for name in DATASETS
        },
        "models": list(QUICK_MODELS if quick else MODELS),
        "hidden": list(HIDDEN),
        "init": "glorot_uniform kernels, zero biases, float32; key jax.random.key(seed)",
        "loss": LOSS,
        "optimizer": f"optax.adam({LEARNING_RATE})",
        "batch_size": BATCH,
        "epochs": QUICK_EPOCHS if quick else EPOCHS,
        "selection": "monitor='val_accuracy' (the best validation epoch's state)",
        "seeds": list(QUICK_SEEDS if quick else SEEDS),
        "linear_at_most": LINEAR_AT_MOST,
        "nonlinear_at_least": NONLINEAR_AT_LEAST,
        "dtype": "float32 (training); float32 and float64 (the collapse)",
        "sweep_models": list(QUICK_SWEEP_MODELS if quick else ACTIVATIONS),
        "learning_rates": list(LEARNING_RATES),
        "convergence": QUICK_CONVERGENCE if quick else CONVERGENCE,
        "saturating": list(SATURATING),
        "non_saturating": list(NON_SATURATING),
        "slower_dataset": SLOWER_DATASET,
        "sensitivity": SENSITIVITY,
        "wide_hidden": list(WIDE_HIDDEN),
    }


def best_recorded(sw: Sweep, i: int) -> int:
    """The index of run ``i``'s recorded epoch with the best validation accuracy (the first of
    equals), up to its convergence epoch (its last if it never converged): a converged run may
    go on training beside the others, and those epochs are not its run."""
    last, _ = at_convergence(sw, i)
    return int(np.nanargmax(sw.accuracy[i, :last, 1]))


def converged_table(sweeps: dict[str, Sweep], seeds: Sequence[int]) -> dict[str, Any]:
    """(c) at convergence: per data set and activation, each seed's selected learning rate, the
    test accuracy of its best validation epoch, its last epoch's accuracies, the means."""
    keys = ("learning_rate", "converged_epoch", "converged", "best_epoch", "validation",
            "test", "train_last", "test_last", "validation_by_rate")  # fmt: skip
    table: dict[str, Any] = {name: {} for name in DATASETS}
    for model, sw in sweeps.items():
        for name in DATASETS:
            row: dict[str, list] = {k: [] for k in keys}
            for seed in seeds:
                candidates = [i for i, (_, n, s) in enumerate(sw.runs) if (n, s) == (name, seed)]
                best = {i: best_recorded(sw, i) for i in candidates}
                by_rate = [float(sw.accuracy[i, best[i], 1]) for i in candidates]
                k = int(np.argmax(by_rate))  # a tie goes to the first, smaller, rate
                i = candidates[k]
                epoch, last = at_convergence(sw, i)
                values = (sw.runs[i][0], epoch, bool(sw.converged[i]), best[i] + 1,
                          by_rate[k], float(sw.accuracy[i, best[i], 2]), float(last[0]),
                          float(last[2]), by_rate)  # fmt: skip
                for key, value in zip(keys, values, strict=True):
                    row[key].append(value)
            for key in ("test", "train_last", "test_last"):
                row[f"{key}_mean"] = float(np.mean(row[key]))
            table[name][model] = row
    return table


def slower_table(sweeps: dict[str, Sweep], seeds: Sequence[int]) -> dict[str, Any]:
    """Epochs to reach each data set's threshold in training accuracy at the original
    learning rate, per data set, activation and seed, and the medians over seeds."""
    table: dict[str, Any] = {}
    for name, threshold in NONLINEAR_AT_LEAST.items():
        table[name] = {}
        for model, sw in sweeps.items():
            epochs = [
                epochs_to_fit(sw, sw.runs.index((LEARNING_RATE, name, seed)), threshold)
                for seed in seeds
            ]
            table[name][model] = {"epochs_to_fit": epochs, "median": float(np.median(epochs))}
    return table


def decide_slower(table: dict[str, Any]) -> bool:
    """``RULES["claim_slower"]`` (False when a group has no activation in the sweep)."""
    row = table[SLOWER_DATASET]
    slow = [row[m]["median"] for m in SATURATING if m in row]
    fast = [row[m]["median"] for m in NON_SATURATING if m in row]
    return bool(slow and fast and min(slow) > max(fast))


def _protocol(sw: Sweep, learning_rate: float, epochs: int, seeds: Sequence[int]) -> dict:
    """Claim (c)'s protocol on the sweep's runs at ``learning_rate`` within ``epochs``."""
    out = {}
    for name in DATASETS:
        test = [best_validation_test(sw, sw.runs.index((learning_rate, name, s)), epochs)
                for s in seeds]  # fmt: skip
        out[name] = {"test": test, "test_mean": float(np.mean(test))}
    return out


def decide_c(table: dict[str, Any], models: Sequence[str]) -> bool:
    """``RULES["claim_c"]`` on ``table[data set][model]["test_mean"]``."""
    return all(
        table[name][m]["test_mean"] >= limit
        for name, limit in NONLINEAR_AT_LEAST.items()
        for m in models
        if m in ACTIVATIONS
    )


def sensitivity(
    sweeps: dict[str, Sweep], seeds: Sequence[int], epochs: int, criterion: dict[str, Any]
) -> dict[str, Any]:
    """Claim (c)'s rule on each variant of ``SENSITIVITY`` (``RULES["sensitivity"]``).

    Raises:
      ValueError: a sweep ran fewer than ``5 * epochs`` epochs (the budget x5 variant reads them).
    """
    short = {m: sw.loss.shape[1] for m, sw in sweeps.items() if sw.loss.shape[1] < 5 * epochs}
    if short:
        raise ValueError(
            f"sensitivity: the budget x5 variant needs {5 * epochs} epochs of every sweep; got "
            f"{short}. Give the sweep min_epochs >= 5 * epochs."
        )
    variants = {
        "budget_x5": {
            m: _protocol(sw, LEARNING_RATE, 5 * epochs, seeds) for m, sw in sweeps.items()
        },
        "lr_third": {
            m: _protocol(sw, LEARNING_RATES[0], epochs, seeds) for m, sw in sweeps.items()
        },
        "lr_x3": {m: _protocol(sw, LEARNING_RATES[2], epochs, seeds) for m, sw in sweeps.items()},
    }
    wide = {**criterion, "min_epochs": epochs, "max_epochs": epochs, "window": epochs}
    wide_sweeps = sweep_all(list(sweeps), WIDE_HIDDEN, (LEARNING_RATE,), seeds, wide, epochs)
    variants["width_x2"] = {
        m: _protocol(sw, LEARNING_RATE, epochs, seeds) for m, sw in wide_sweeps.items()
    }
    out = {}
    for key, per_model in variants.items():
        table = {name: {m: per_model[m][name] for m in per_model} for name in DATASETS}
        out[key] = {"accuracy": table, "holds": decide_c(table, list(per_model))}
    return out


def run(quick: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parts (a)-(c): the JSON-ready result, and the arrays the figure draws."""
    start = time.perf_counter()
    config = setup(quick)
    epochs, seeds, models = config["epochs"], config["seeds"], config["models"]
    collapse_results, saved = collapse_networks(COLLAPSE_POINTS)
    criterion = config["convergence"]
    # The sweeps run beside claim (c)'s own training (threads: each compiled program runs on
    # one core). Every epoch's validation accuracy is recorded up to what the protocol reads:
    # the budget x5 for the sensitivity (not run in quick mode), the budget for the check.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        swept = background.submit(sweep_all, config["sweep_models"], HIDDEN, LEARNING_RATES,
                                  seeds, criterion, epochs if quick else 5 * epochs)  # fmt: skip
        table, arrays = train_all(models, seeds, epochs, N_POINTS)
        sweeps = swept.result()
    collapse_results["trained_xor"], saved["trained_xor"], line = _xor_line(arrays)
    arrays["collapse"] = collapse_results
    arrays["sweeps"] = sweeps
    result: dict[str, Any] = {
        "quick": quick,
        "setup": config,
        "rules": RULES,
        "collapse": collapse_results,
        "saved_networks": saved,
        "xor_line": line,
        "accuracy": table,
        "converged": converged_table(sweeps, seeds),
        "slower": slower_table(sweeps, seeds),
        "sigma_prime": {m: sigma_prime(m) for m in config["sweep_models"]},
        # the sweep at the original learning rate and budget against claim (c)'s own runs
        "sweep_check": {
            name: {
                m: _protocol(sw, LEARNING_RATE, epochs, seeds)[name]["test"]
                for m, sw in sweeps.items()
            }
            for name in DATASETS
        },
    }
    result["sweep_check_max_difference"] = max(
        abs(a - b)
        for name in DATASETS
        for m in sweeps
        if m in table[name]
        for a, b in zip(result["sweep_check"][name][m], table[name][m]["test"], strict=True)
    )  # both run every model of the quick and of the full run
    result["verdicts"] = decide(collapse_results, table, models)
    result["verdicts"]["claim_c_converged"] = decide_c(result["converged"], list(sweeps))
    result["verdicts"]["claim_slower"] = decide_slower(result["slower"])
    if not result["verdicts"]["claim_c"]:
        if quick:
            result["sensitivity_not_run"] = "quick mode: the variants need the budget x5"
        else:
            result["sensitivity"] = sensitivity(sweeps, seeds, epochs, criterion)
    result["claims"] = _claims(result)
    result["seconds"] = time.perf_counter() - start
    return result, arrays


# ----------------------------------------------------------------------------- figure, report


def _boundary_panel(ax, arrays, name: str, model: str, title: str) -> None:
    g0, g1, _ = arrays["grids"][name]
    p = arrays["boundaries"][name, model]
    ax.contourf(g0, g1, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
    ax.contour(g0, g1, p, levels=[0.5], colors="k", linewidths=1.2)
    test = arrays["test"][name]
    ax.scatter(test.x[:, 0], test.x[:, 1], c=test.y, cmap="bwr", s=5, edgecolors="none")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="box")


def figure(result: dict[str, Any], arrays: dict[str, Any]) -> Figure:
    """Decision boundaries (data set rows x model columns) and the collapse panels."""
    table, col, models = result["accuracy"], result["collapse"], result["setup"]["models"]
    shown = [m for m in FIGURE_MODELS if m in models]
    fig = plots.figure((3.4 * max(len(shown), 5), 3.1 * (len(DATASETS) + 2)))
    gs = fig.add_gridspec(len(DATASETS) + 2, len(shown))
    verdicts = list(result["verdicts"].items())
    verdict = "\n".join(
        "; ".join(f"{LABELS[k]}: {'holds' if v else 'does not hold'}" for k, v in part)
        for part in (verdicts[:3], verdicts[3:])
    )
    fig.suptitle(
        f"Linear models against activations ({len(result['setup']['seeds'])} seed(s), "
        f"{result['setup']['epochs']} epochs{', quick' if result['quick'] else ''}); "
        f"seed {result['setup']['seeds'][0]}'s test points and P(class 1)\n{verdict}",
        fontsize=10,
    )
    for r, name in enumerate(DATASETS):
        for c, model in enumerate(shown):
            acc = table[name][model]["test"][0]
            title = f"{LABELS[name]}: {LABELS[model]}\ntest acc {acc:.3f}"
            _boundary_panel(fig.add_subplot(gs[r, c]), arrays, name, model, title)

    sub = gs[len(DATASETS), :].subgridspec(1, 5)
    a = fig.add_subplot(sub[0, 0])
    _boundary_panel(a, arrays, "xor", "identity", "")
    line = result["xor_line"]
    g0 = arrays["grids"]["xor"][0]
    n0, n1 = line["normal"]
    a.plot(g0, -(n0 * g0 + line["offset"]) / n1, "--", color="gold", lw=2, label="x W + b: line")
    a.set_ylim(arrays["grids"]["xor"][1][[0, -1]])
    a.legend(loc="lower left", fontsize=7)
    a.set_title(
        f"(a) XOR identity stack: boundary (black),\nline of x W + b (gold); "
        f"{line['grid_class_mismatches']} grid mismatches",
        fontsize=9,
    )

    b = fig.add_subplot(sub[0, 1])
    names = list(col)
    xs = np.arange(len(names))
    for off, dt, color in ((-0.2, "float32", "tab:orange"), (0.2, "float64", "tab:blue")):
        vals = [col[n][dt]["max_ratio_to_bound"] or np.nan for n in names]
        b.bar(xs + off, vals, 0.4, color=color, label=dt)
    b.axhline(1, color="k", ls=":", lw=1, label="bound")
    b.set(yscale="log", ylabel=LABELS["max_ratio_to_bound"])
    b.set_xticks(xs, [n.replace("_", "\n") for n in names], fontsize=7)
    b.set_title("(b) stacked vs collapsed, over the bound", fontsize=9)
    b.legend(fontsize=7)

    c = fig.add_subplot(sub[0, 2])
    for n in names:
        s = np.asarray(col[n]["float64"]["singular_values"])
        c.semilogy(np.arange(1, len(s) + 1), np.maximum(s, 1e-300), "o-", ms=3, label=LABELS[n])
    bn = col["bottleneck"]["float64"]
    c.axhline(bn["rank_tolerance"], color="0.5", ls=":", lw=1, label="bottleneck tolerance")
    c.set(xlabel="index i", ylabel=LABELS["singular_values"] + " (float64)")
    c.set_title("(c) singular values of W: rank <= narrowest width", fontsize=9)
    c.legend(fontsize=6)

    d = fig.add_subplot(sub[0, 3:])
    rows = [*models, "line_ceiling"]
    heat = np.array([[table[name][m]["test_mean"] for name in DATASETS] for m in rows])
    im = d.imshow(heat.T, vmin=0.4, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(heat):
        d.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=6,
               color="w" if v < 0.75 else "k")  # fmt: skip
    d.set_xticks(range(len(rows)), [m.replace("_", "\n") for m in rows], fontsize=6)
    d.set_yticks(range(len(DATASETS)), [LABELS[n] for n in DATASETS], fontsize=7)
    d.set_title("(d) mean test accuracy (last column: the best straight line)", fontsize=9)
    fig.colorbar(im, ax=d, shrink=0.8)
    _convergence_panels(fig, gs[len(DATASETS) + 1, :].subgridspec(1, 5), result, arrays)
    return fig


def _convergence_panels(fig: Figure, sub: Any, result: dict[str, Any], arrays: dict) -> None:
    """(e) training accuracy on spirals against epochs; (f) spirals under every protocol."""
    e = fig.add_subplot(sub[0, :2])
    threshold = NONLINEAR_AT_LEAST[SLOWER_DATASET]
    seeds = result["setup"]["seeds"]
    for model, sw in arrays["sweeps"].items():
        rows = [sw.runs.index((LEARNING_RATE, SLOWER_DATASET, s)) for s in seeds]
        curve = sw.accuracy[rows, :, 0].mean(0)  # recorded every EVALUATE_EVERY epochs
        recorded = np.flatnonzero(np.isfinite(curve))
        style = "-" if model in SATURATING else "--" if model in NON_SATURATING else ":"
        e.plot(recorded + 1, curve[recorded], style, lw=1.2, label=model)
    e.axhline(threshold, color="k", lw=0.8, ls=":")
    e.axvline(result["setup"]["epochs"], color="0.5", lw=0.8)
    plots.finish(
        e, legend={"fontsize": 6, "ncol": 2, "loc": "upper left"}, xlabel="epoch",
        ylabel="training accuracy (eval mode)", xscale="log",
    )  # fmt: skip
    e.set_title(
        f"(e) {SLOWER_DATASET}: training accuracy, learning rate {LEARNING_RATE}, mean over "
        "seeds\nsolid: saturating, dashed: not, dotted: the others;\ngrey: the original "
        "budget; black: the threshold",
        fontsize=8,
    )

    f = fig.add_subplot(sub[0, 2:])
    columns = {f"{result['setup']['epochs']} epochs\n(claim c)": result["accuracy"]}
    for key, v in result.get("sensitivity", {}).items():
        columns[key.replace("_", " ")] = v["accuracy"]
    columns["converged,\nrate on val."] = result["converged"]
    acts = list(result["sweep_check"][SLOWER_DATASET])
    heat = np.array(
        [
            [t[SLOWER_DATASET].get(m, {}).get("test_mean", np.nan) for t in columns.values()]
            for m in acts
        ]
    )  # fmt: skip (a model of the sweep that claim (c) did not train: blank)
    im = f.imshow(heat, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(heat):
        if np.isfinite(v):
            f.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                   color="w" if v < threshold else "k")  # fmt: skip
    f.set_xticks(range(len(columns)), list(columns), fontsize=6)
    f.set_yticks(range(len(acts)), acts, fontsize=6)
    f.set_title(
        f"(f) {SLOWER_DATASET}: mean test accuracy under each protocol (threshold {threshold}; "
        "white text below it)",
        fontsize=9,
    )
    fig.colorbar(im, ax=f, shrink=0.8)


def report(result: dict[str, Any]) -> str:
    """The printed report: the collapse table, the accuracy table, the three verdicts."""
    col, table, models = result["collapse"], result["accuracy"], result["setup"]["models"]
    rows = []
    for name, r in col.items():
        for dt in DTYPES:
            e = r[dt]
            ratio = e["max_ratio_to_bound"]
            rows.append(
                (
                    f"{name} {dt}",
                    r["k"],
                    f"{e['gamma_k']:.2e}",
                    f"{e['rel_error']:.2e}",
                    f"{e['rel_bound']:.2e}",
                    "n/a" if ratio is None else f"{ratio:.2e}",
                    f"{e['numerical_rank']}/{r['min_width']}",
                )
            )
    header = ("network", "K", "γ_K", "rel error", "rel bound", "error/bound", "rank/narrowest")
    acc_rows = [
        (LABELS[m], *(f"{table[n][m]['test_mean']:.3f} ({table[n][m]['train_mean']:.3f})"
                      for n in DATASETS))
        for m in models
    ]  # fmt: skip
    ceiling = [f"{table[n]['line_ceiling']['test_mean']:.3f}" for n in DATASETS]
    acc_rows.append((LABELS["line_ceiling"], *ceiling))
    line = result["xor_line"]
    lines = [
        "(a) stacked identity networks against x W + b",
        common.table(rows, header),
        f"XOR identity stack: classes differ from its line's half-plane at "
        f"{line['grid_class_mismatches']} of {line['grid_points']} grid points",
        f"mean test (train) accuracy over seeds {result['setup']['seeds']} "
        f"({result['setup']['epochs']} epochs{', quick' if result['quick'] else ''})",
        common.table(acc_rows, ("model", *(LABELS[n] for n in DATASETS))),
        *_sweep_report(result),
    ]
    for c in result["claims"]:
        lines.append(f"{c['claim']} {'HOLDS' if c['holds'] else 'DOES NOT HOLD'}: {c['evidence']}")
        if "robustness" in c:
            lines.append("  " + c["robustness"]["sentence"])
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)


def _sweep_report(result: dict[str, Any]) -> list[str]:
    """The tables of the sweep: at convergence, epochs to fit, the sensitivity variants."""
    conv, slower = result["converged"], result["slower"]
    acts = list(result["sweep_check"]["xor"])
    conv_rows = [
        (m, *(f"{conv[n][m]['test_mean']:.3f} ({conv[n][m]['train_last_mean']:.3f}) "
              f"{max(conv[n][m]['converged_epoch'])}" for n in DATASETS))
        for m in acts
    ]  # fmt: skip
    slow_rows = [(m, *(" ".join(map(str, slower[n][m]["epochs_to_fit"])) for n in DATASETS))
                 for m in acts]  # fmt: skip
    lines = [
        "at convergence, learning rate chosen on validation: mean test accuracy of the best "
        "validation epoch (train accuracy of the last epoch), the latest convergence epoch",
        common.table(conv_rows, ("model", *(LABELS[n] for n in DATASETS))),
        f"epochs to reach the threshold in training accuracy at learning rate {LEARNING_RATE}, "
        "per seed",
        common.table(slow_rows, ("model", *(LABELS[n] for n in DATASETS))),
    ]
    if "sensitivity" in result:
        rows = [
            (key, *(f"{min(v['accuracy'][n][m]['test_mean'] for m in acts):.3f}"
                    for n in DATASETS), "holds" if v["holds"] else "does not hold")
            for key, v in result["sensitivity"].items()
        ]  # fmt: skip
        lines += [
            "sensitivity of claim (c): the lowest mean test accuracy over the activations (the "
            f"sweep at claim (c)'s own settings: within {result['sweep_check_max_difference']:.3f} "
            "of claim (c)'s runs, run by run)",
            common.table(rows, ("variant", *(LABELS[n] for n in DATASETS), "verdict")),
        ]
    return lines


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``nonlinearity.json`` and ``.png``; print the report.

    The setup and the rules are written to ``nonlinearity.preregistered.json`` before any
    training (:func:`jaxnn_experiments.common.preregister`); the result must keep them.
    """
    common.preregister(NAME, out_dir, setup(quick), RULES)
    result, arrays = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result, arrays))


if __name__ == "__main__":
    common.script(main)
