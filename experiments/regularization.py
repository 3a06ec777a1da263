"""Regularization on a small training set: does it close the train-test gap, and at what cost?

The claim (regularization among the core ideas of training a network): an L2 weight penalty
and dropout reduce overfitting, the gap between training and test accuracy, when the training
set is small, and do not cost test accuracy (or improve it).

Setup. ``jaxnn.data.digits(seed=DIGITS_SEED)`` (1079 train / 359 validation / 359 test,
standardised with the statistics of the whole train part: of its 1079 images, not of the
subset's 150; nothing of the validation or test parts). For each seed ``s`` a training subset of
``PER_CLASS`` examples of every class (150 in all) is drawn without replacement from the
*train* part by ``np.random.default_rng(s)``; the validation and test parts are used whole, so
the subset is disjoint from both. The network is the over-parameterised
``mlp([256, 256, 10], "relu")`` (Glorot-uniform kernels, zero biases, float32, 85k weights for
150 examples), trained with Adam (``LEARNING_RATE``, optax's defaults otherwise) on minibatches
of ``BATCH`` for ``EPOCHS`` epochs, no early stopping; softmax cross-entropy. Every arm of a
seed starts from the *same* dense weights and sees the same minibatch order (the same
``TrainState`` key); they differ only in the regularizer:

* ``none``: nothing;
* ``l2``: ``jaxnn.regularization.l2(scale)`` on the kernels, added to the loss
  (``P = scale/2 Σ w²``, ``∂P/∂w = scale · w``: PyTorch's ``weight_decay``), ``penalty=`` of
  :func:`jaxnn.fitting.fit`;
* ``dropout``: ``mlp(..., dropout=rate)``, inverted dropout after each hidden ReLU (rate = the
  probability of dropping);
* ``both``: the selected L2 scale and the selected dropout rate together;
* ``weight_decay``: decoupled weight decay, ``optax.adamw(LEARNING_RATE, weight_decay=wd)`` on
  the kernels (Loshchilov & Hutter, 2019). An extra arm, reported and not decided on: under
  Adam the L2 gradient is divided by ``√v`` like the data gradient, so L2 is not weight decay
  (``jaxnn.regularization``'s docstring), and this arm shows what decay itself does.

The strengths come from fixed grids of standard values (``L2_SCALES``, ``DROPOUT_RATES``,
``WEIGHT_DECAYS``); each regularizer's strength is selected on the *validation* part (the
highest mean final validation accuracy over the seeds), and the verdicts are taken on the
*test* part, which plays no part in any choice. After every epoch the train accuracy (eval
mode, on the subset) and the validation accuracy are recorded; after the last, the train and
test accuracy, the gap ``train - test``, and the Frobenius norm of all kernels (which shows
that the penalty reached training). ``RULES`` (also in the JSON) decides the two claims from
these numbers.

Across training-set sizes. The claim is about a *small* training set, so every arm is also
trained, on every seed, at ``n`` = 60, 150, 510 (``SIZES``: 6, 15, 51 examples per class, drawn
as above) and on the whole train part (1079: the same examples for every seed, which then
differ in the initial weights, the minibatch order and the dropout masks). The strengths are
the ones selected at 150 (no selection at other sizes), and every size gets the original
run's number of updates, ``U = EPOCHS · 150 / BATCH = 750``, in whole epochs:
``E(n) = ⌈U / ⌊n / BATCH⌋⌉`` epochs of ``⌊n / BATCH⌋`` minibatches (375, 150, 45, 22; a
ragged last minibatch is dropped, a different one each epoch). The sizes then differ in the
data alone; equal epochs would give the whole train part seven times the computation of the
150-example set. Only the final numbers are measured (no per-epoch evaluation), and the
claim-1 rule is applied at each size.

Sensitivity. When claim 1 does not hold, the same rule decides runs that each change one
setting of the original (``SENSITIVITY``): the budget ×5 (750 epochs: each original run
continued from its state after epoch 150, which equals a fresh 750-epoch run bit for bit,
since the minibatch order and the dropout masks depend on the key and the step count only),
the learning rate ×1/3 and ×3 (fresh runs), and the training-set size (the runs above). The
variants use the strengths selected in the original run; the original verdict is the claim's
verdict either way (:func:`jaxnn_experiments.common.robustness`).

``main(out_dir, quick=True)`` runs the same code with fewer seeds and epochs, one grid value
per regularizer, and the original size only. ``main`` writes the setup and ``RULES`` to
``regularization.preregistered.json`` before any training
(:func:`jaxnn_experiments.common.preregister`). The run is float32
whatever ``jax_enable_x64`` says.

References: Goodfellow, Bengio & Courville, *Deep Learning* (2016), ch. 7; Srivastava et al.,
"Dropout", JMLR 15 (2014); Loshchilov & Hutter, "Decoupled weight decay regularization",
ICLR 2019.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from jaxnn import Layer, mlp
from jaxnn.combinators import layer_keys
from jaxnn.data import Splits, digits
from jaxnn.evaluation import evaluate
from jaxnn.fitting import fit
from jaxnn.regularization import Penalty, kernels, l2
from jaxnn.train import TrainState
from jaxnn_experiments import common, plots

NAME = "regularization"
DIGITS_SEED = 0  # the digits split: the same validation and test parts for every seed
PER_CLASS = 15  # training examples per class: 150 in all
HIDDEN = (256, 256)
CLASSES = 10
FEATURES = 64  # 8x8 pixels
ACTIVATION = "relu"
W_INIT = "glorot_uniform"
LEARNING_RATE = 1e-3
BATCH = 30  # 150 / 30: five full minibatches per epoch, none dropped
EPOCHS = 150
SEEDS = (0, 1, 2, 3, 4)
QUICK_EPOCHS = 40
QUICK_SEEDS = (0,)
LOSS = "softmax_cross_entropy_with_integer_labels"
# The grids, standard values fixed before the run.
L2_SCALES = (1e-3, 3e-3, 1e-2)  # PyTorch weight_decay's usual range
DROPOUT_RATES = (0.3, 0.5)  # Srivastava et al.: 0.5 for hidden units
# optax.adamw decays by LEARNING_RATE * wd per update; with 750 updates at lr 1e-3, PyTorch's
# default 1e-2 shrinks the kernels by under 1 %, so the grid spans two more decades.
WEIGHT_DECAYS = (1e-2, 1e-1, 1.0)
GRIDS = {"l2": L2_SCALES, "dropout": DROPOUT_RATES, "weight_decay": WEIGHT_DECAYS}
# Quick mode: one value per grid (each configuration costs a compilation of about 1-2 s).
QUICK_GRIDS = {"l2": (3e-3,), "dropout": (0.5,), "weight_decay": (1e-1,)}
METHODS = ("none", "l2", "dropout", "both", "weight_decay")
DECIDED = ("l2", "dropout", "both")  # the arms the claims are decided on
GAP_SEEDS = (4, 5)  # a smaller gap in at least 4 of every 5 seeds (rounded up)
TOLERANCE = 0.01  # test accuracy a regularizer may lose and still "not cost" any
# The training-set sizes, in examples per class; None is the whole train part.
SIZES = (6, PER_CLASS, 51, None)
# Quick mode: the original size only (every other size costs a compilation per arm).
QUICK_SIZES = (PER_CLASS,)
TRAIN_PART = 1079  # the size of digits(seed=DIGITS_SEED)'s train part, checked on loading
BUDGET_FACTOR = 5  # the sensitivity analysis's budget: EPOCHS x 5
LEARNING_RATE_FACTORS = {"learning_rate_x1_3": 1 / 3, "learning_rate_x3": 3.0}
SENSITIVITY_ARMS = ("none", *DECIDED)  # the arms claim 1's rule reads


def n_train(per_class: int | None) -> int:
    """The training-set size of ``per_class`` examples per class (``None``: the train part)."""
    return TRAIN_PART if per_class is None else per_class * CLASSES


def updates_budget(epochs: int) -> int:
    """The original run's number of updates: ``epochs`` epochs of ``150 / BATCH``
    minibatches."""
    return epochs * (PER_CLASS * CLASSES // BATCH)


def epochs_for(n: int, updates: int) -> int:
    """``⌈updates / ⌊n / BATCH⌋⌉``: the fewest whole epochs of ``n`` examples (ragged last
    minibatch dropped) that make at least ``updates`` updates."""
    return -(-updates // (n // BATCH))


UPDATES = updates_budget(EPOCHS)  # 750


def _size_setting(per_class: int | None, updates: int) -> dict[str, Any]:
    n = n_train(per_class)
    epochs = epochs_for(n, updates)
    return {"n_train": n, "per_class": per_class, "epochs": epochs,
            "updates": epochs * (n // BATCH)}  # fmt: skip


SIZE_SETTINGS = [_size_setting(p, UPDATES) for p in SIZES]
# The sensitivity analysis of claim 1: each run changes one setting of the original.
SENSITIVITY = {
    "budget_x5": {"epochs": BUDGET_FACTOR * EPOCHS},
    **{k: {"learning_rate": LEARNING_RATE * f} for k, f in LEARNING_RATE_FACTORS.items()},
    **{
        f"n_train_{s['n_train']}": {"n_train": s["n_train"], "epochs": s["epochs"]}
        for s in SIZE_SETTINGS
        if s["per_class"] != PER_CLASS
    },
}


def _size_words(s: dict[str, Any]) -> str:
    what = (
        f"{s['n_train']} examples ({s['per_class']} per class)"
        if s["per_class"] is not None
        else f"the whole train part ({s['n_train']} examples)"
    )
    return (
        f"the training-set size, the setting the claim is about: {what} instead of "
        f"{PER_CLASS * CLASSES}, {s['epochs']} epochs ({s['updates']} updates, the original's "
        f"{UPDATES} rounded up to whole epochs)"
    )


SENSITIVITY_SETTINGS = {
    "budget_x5": f"the budget x{BUDGET_FACTOR}: {BUDGET_FACTOR * EPOCHS} epochs "
    f"({BUDGET_FACTOR * UPDATES} updates) instead of {EPOCHS}",
    "learning_rate_x1_3": f"the learning rate x1/3: Adam {LEARNING_RATE / 3:.4g} instead of "
    f"{LEARNING_RATE:g}",
    "learning_rate_x3": f"the learning rate x3: Adam {LEARNING_RATE * 3:.4g} instead of "
    f"{LEARNING_RATE:g}",
    **{
        f"n_train_{s['n_train']}": _size_words(s)
        for s in SIZE_SETTINGS
        if s["per_class"] != PER_CLASS
    },
}

RULES = {
    "subset": f"for seed s, {PER_CLASS} examples of each class drawn without replacement from "
    f"the train part of jaxnn.data.digits(seed={DIGITS_SEED}) by np.random.default_rng(s); "
    "validation and test parts used whole",
    "final_measures": f"after the last epoch ({EPOCHS} in the full run; no early stopping, no "
    "best epoch): train accuracy in eval mode on the training subset, test accuracy on the "
    "whole test part, gap = train accuracy - test accuracy",
    "selection": "for l2, dropout and weight_decay, the grid value with the highest mean over "
    "seeds of the final validation accuracy (a tie goes to the first, weaker, value); both "
    "uses the selected l2 scale and the selected dropout rate; the test part plays no role",
    "gap_reduced": f"a regularizer reduces the gap if its gap is smaller than none's (same "
    f"seed: same subset, initial weights and minibatch order) in at least ceil("
    f"{GAP_SEEDS[0]}/{GAP_SEEDS[1]} n_seeds) seeds AND its mean gap over seeds is smaller "
    "than none's",
    "claim_1": "holds if l2, dropout and both each reduce the gap",
    "no_cost": f"a regularizer costs no test accuracy if its mean test accuracy over seeds is "
    f">= none's mean test accuracy - {TOLERANCE}",
    "claim_2": "holds if l2, dropout and both each cost no test accuracy",
    "tolerance": f"{TOLERANCE} is 3.6 of the 359 test examples, below one binomial standard "
    "error of an accuracy near 90 % on 359 examples (0.016)",
    "weight_decay": "decoupled weight decay (optax.adamw on the kernels) is an extra arm: "
    "gap_reduced and no_cost are reported for it, not used in the claims",
    "kernel_norm": "sqrt of the sum of squares of every kernel (the leaves named w) after "
    "the last epoch; reported, and expected smaller with l2 than with none if the penalty "
    "reaches training",
    "grids": {m: list(g) for m, g in GRIDS.items()},
    "sizes": "the gap is also measured at the training-set sizes of size_settings ("
    + ", ".join(str(n_train(p)) for p in SIZES if p is not None)
    + ": "
    + ", ".join(str(p) for p in SIZES if p is not None)
    + " examples per class drawn as in subset; and the whole train part, "
    f"{TRAIN_PART}, the same examples for every seed, the seeds then differing in the initial "
    "weights, the minibatch order and the dropout masks), for every arm (none, l2, dropout, "
    "both, weight_decay) on every seed of the run; the strengths are those selected at 150 on "
    "validation, fixed (no selection at other sizes); size 150 is the original run",
    "size_budget": f"every size gets the original run's number of updates, {UPDATES} = "
    f"{EPOCHS} epochs x {PER_CLASS * CLASSES // BATCH} minibatches of {BATCH}, in whole "
    f"epochs: ceil({UPDATES} / floor(n / {BATCH})) epochs of floor(n / {BATCH}) minibatches, "
    "a ragged last minibatch dropped (a different one each epoch); so the sizes differ in the "
    "data alone (equal epochs would give the whole train part seven times the computation)",
    "size_measures": "at each size, after the last epoch (no per-epoch evaluation): the train "
    "accuracy in eval mode on that training set, the test accuracy, the gap = train - test; "
    "per arm the mean over seeds with its std, min and max; and claim 1's rule (gap_reduced, "
    "claim_1) applied to that size's runs",
    "size_settings": SIZE_SETTINGS,
    "sensitivity": common.sensitivity_rule(SENSITIVITY_SETTINGS)
    + "; for claim 1 and claim 2 alike (a variant's runs give both rules their numbers); the "
    "variants use the strengths selected in the original run (no new selection), the arms "
    "none, l2, dropout and both, and the original seeds; budget_x5 "
    f"continues each original run from its state after epoch {EPOCHS} (the same numbers as a "
    "fresh run of that length: the minibatch order and the dropout masks depend on the key and "
    "the step count only); the training-set size variants are the runs of sizes",
    "sensitivity_variants": SENSITIVITY,
}
LABELS = {
    "none": "none",
    "l2": "L2 penalty",
    "dropout": "dropout",
    "both": "L2 + dropout",
    "weight_decay": "decoupled weight decay (AdamW)",
    "claim_1": "claim 1 (regularization reduces the train-test gap)",
    "claim_2": "claim 2 (without cost in test accuracy)",
    "epoch": "epoch",
    "train_accuracy": "train accuracy (eval mode, training subset)",
    "val_accuracy": "validation accuracy",
    "validation_accuracy": "final validation accuracy",
    "test_accuracy": "test accuracy",
    "gap": "gap = train - test accuracy",
    "kernel_norm": "kernel norm sqrt(Σ w²), final",
    "initial_kernel_norm": "kernel norm sqrt(Σ w²), initial",
    "train_loss": "train data loss (eval mode), final",
    "test_loss": "test loss, final",
    "strength": "selected strength",
    "l2_scale": "L2 scale",
    "dropout_rate": "dropout rate (probability of dropping)",
    "mean_validation_accuracy": "mean final validation accuracy over seeds",
    "smaller_in_seeds": "seeds with a smaller gap than none",
    "required_seeds": "seeds required",
    "mean_gap": "mean gap",
    "none_mean_gap": "none's mean gap",
    "mean_test_accuracy": "mean test accuracy",
    "none_mean_test_accuracy": "none's mean test accuracy",
    "difference": "mean test accuracy - none's",
    "gap_reduced": "reduces the gap",
    "no_cost": "costs no test accuracy",
    "seconds": "wall time of the run (s)",
    "phase_seconds": "wall time of each part of the run (s)",
    "l2_short": "L2",
    "dropout_short": "dropout",
    "weight_decay_short": "AdamW wd",
    "holds": "holds",
    "sizes": "the gap across training-set sizes",
    "n_train": "training-set size",
    "per_class": "training examples per class (null: the whole train part)",
    "updates": "optimizer updates",
    "finals": "final measures per arm, one per seed",
    "sensitivity": "sensitivity analysis: the claims' rules on runs that each change one setting",
    "original": "original run",
    "budget_x5": f"budget x{BUDGET_FACTOR}",
    "learning_rate_x1_3": "learning rate x1/3",
    "learning_rate_x3": "learning rate x3",
    **{
        f"n_train_{s['n_train']}": f"n = {s['n_train']}"
        for s in SIZE_SETTINGS
        if s["per_class"] != PER_CLASS
    },
}


class Arm(NamedTuple):
    """One configuration: what differs between the arms, and the settings that made it."""

    net: Layer
    optimizer: optax.GradientTransformation
    penalty: Penalty | None
    l2_scale: float
    rate: float
    weight_decay: float
    learning_rate: float


class Trained(NamedTuple):
    """One training run: its JSON record, its final state and its history (to continue it)."""

    record: dict[str, Any]
    ts: Any
    history: list[dict[str, float]]


def _key(seed: int) -> jax.Array:
    """The seed's PRNG key: ``rbg`` (XLA's RngBitGenerator makes the bits; split and fold_in
    are threefry's), whose random-bit programs compile several times faster on a CPU than
    threefry's; its bits may differ between JAX versions and backends."""
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _network(rate: float) -> Layer:
    return mlp([*HIDDEN, CLASSES], ACTIVATION, w_init=W_INIT, dropout=rate, param_dtype=jnp.float32)


def _kernel_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(kernels, params)


def arm(
    l2_scale: float = 0.0,
    rate: float = 0.0,
    weight_decay: float = 0.0,
    learning_rate: float = LEARNING_RATE,
) -> Arm:
    """The network, optimizer and penalty of one configuration.

    Cached on the values: equal settings get the same objects, so
    :func:`jaxnn.train.make_epoch` (cached on them) compiles each configuration once.
    """
    return _arm(float(l2_scale), float(rate), float(weight_decay), float(learning_rate))


@functools.cache
def _arm(l2_scale: float, rate: float, weight_decay: float, learning_rate: float) -> Arm:
    if weight_decay:
        optimizer = optax.adamw(learning_rate, weight_decay=weight_decay, mask=_kernel_mask)
    else:
        optimizer = optax.adam(learning_rate)
    penalty = l2(l2_scale) if l2_scale else None
    return Arm(_network(rate), optimizer, penalty, l2_scale, rate, weight_decay, learning_rate)


def _arm_of(method: str, strength: dict[str, dict[str, float]], **settings: float) -> Arm:
    """``method``'s configuration with the ``strength`` selected for it (``result["strength"]``'s
    form), and ``settings`` (e.g. ``learning_rate``)."""
    s = strength[method]
    return arm(
        l2_scale=s.get("l2_scale", 0.0),
        rate=s.get("dropout_rate", 0.0),
        weight_decay=s.get("weight_decay", 0.0),
        **settings,
    )


def subset_indices(y_train: np.ndarray, seed: int, per_class: int | None = PER_CLASS) -> np.ndarray:
    """``per_class`` indices of each class into the train part, seeded, sorted.

    ``per_class=None``: every index (the whole train part, the same for every seed).
    """
    if per_class is None:
        return np.arange(len(y_train))
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(y_train == c), per_class, replace=False) for c in range(CLASSES)
    ]
    return np.sort(np.concatenate(chosen))


def _start(net: Layer, plain_params: dict[str, Any], seed: int) -> tuple[dict, dict]:
    """``net``'s params and state holding the plain network's initial dense weights."""
    # Shapes only (nothing computed): the layers other than dense hold no arrays.
    params, state = jax.eval_shape(lambda k: net.init(k, (BATCH, FEATURES)), _key(seed))
    dense = zip(layer_keys(net, "dense"), layer_keys(_network(0.0), "dense"), strict=True)
    for key, plain_key in dense:
        params[key] = plain_params[plain_key]
    if not all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves((params, state))):
        raise AssertionError(f"{net.name}: a layer other than dense holds arrays")
    return params, state


@jax.jit
def _init(key: jax.Array) -> dict[str, Any]:
    """The plain network's initial params (one compiled call, not one per random op)."""
    return _network(0.0).init(key, (BATCH, FEATURES))[0]


def kernel_norm(params: dict[str, Any]) -> float:
    """``sqrt(Σ w²)`` over every kernel (leaves named ``w``), in float64 on the host."""
    chosen = jax.tree.leaves(_kernel_mask(params))
    leaves = jax.tree.leaves(params)
    return math.sqrt(
        sum(
            float(np.sum(np.asarray(w, np.float64) ** 2))
            for w, c in zip(leaves, chosen, strict=True)
            if c
        )
    )


def _train(
    config: Arm,
    start: tuple[dict, dict] | Trained,
    seed: int,
    data: dict,
    epochs: int,
    *,
    curves: bool = True,
) -> Trained:
    """Train one arm on one seed's training set for ``epochs`` epochs; the final measures.

    ``start`` is the initial ``(params, state)``, or an earlier run of the same arm to continue
    (its state and history). With ``curves`` the train and validation accuracy are evaluated
    after every epoch and recorded; without, only after the last (the same evaluation,
    :func:`jaxnn.evaluation.evaluate`).
    """
    if isinstance(start, Trained):
        ts, history = start.ts, start.history
    else:
        params, state = start
        ts = TrainState.create(config.net, config.optimizer, _key(seed), params=params,
                               state=state)  # fmt: skip
        history = []
    result = fit(
        config.net,
        LOSS,
        config.optimizer,
        ts,
        data["train"],
        epochs=epochs,
        batch_size=BATCH,
        validation=data["validation"] if curves else None,
        penalty=config.penalty,
        evaluate_train=curves,
        history=history,
    )
    final = result.state  # the last epoch's, not the best: fixed epochs
    test = evaluate(config.net, LOSS, final.params, final.state, *data["test"])
    if curves:
        last = result.history[-1]
        train = {"accuracy": last["train_accuracy"], "loss": last["train_loss"]}
        validation = {"accuracy": last["val_accuracy"]}
        record = {
            "train_accuracy": [r["train_accuracy"] for r in result.history],
            "val_accuracy": [r["val_accuracy"] for r in result.history],
        }
    else:
        train = evaluate(config.net, LOSS, final.params, final.state, *data["train"])
        validation = evaluate(config.net, LOSS, final.params, final.state, *data["validation"])
        record = {}
    record["final"] = {
        "train_accuracy": train["accuracy"],
        "validation_accuracy": validation["accuracy"],
        "test_accuracy": test["accuracy"],
        "gap": train["accuracy"] - test["accuracy"],
        "train_loss": train["loss"],
        "test_loss": test["loss"],
        "kernel_norm": kernel_norm(final.params),
    }
    return Trained(record, final, result.history)


def select(grid: tuple[float, ...], runs: list[list[dict]]) -> tuple[float, list[float]]:
    """The grid value with the highest mean final validation accuracy (first on a tie).

    ``runs[i][k]`` is grid value ``i``'s run on seed ``k``.
    """
    means = [float(np.mean([r["final"]["validation_accuracy"] for r in row])) for row in runs]
    return grid[int(np.argmax(means))], means


def decide(finals: dict[str, list[dict]]) -> dict[str, Any]:
    """``gap_reduced`` and ``no_cost`` for every regularized arm, by RULES; the claims.

    ``finals[method][k]`` is the final record of ``method`` on seed ``k``; the arms are those
    of ``finals`` (none and the decided ones at least).
    """
    n = len(finals["none"])
    required = -(-GAP_SEEDS[0] * n // GAP_SEEDS[1])
    none_gap = [r["gap"] for r in finals["none"]]
    none_test = float(np.mean([r["test_accuracy"] for r in finals["none"]]))
    per_arm = {}
    for method in (m for m in METHODS[1:] if m in finals):
        gap = [r["gap"] for r in finals[method]]
        test = float(np.mean([r["test_accuracy"] for r in finals[method]]))
        smaller = sum(g < g0 for g, g0 in zip(gap, none_gap, strict=True))
        mean_gap, none_mean_gap = float(np.mean(gap)), float(np.mean(none_gap))
        per_arm[method] = {
            "gap_reduced": {
                "smaller_in_seeds": smaller,
                "required_seeds": required,
                "mean_gap": mean_gap,
                "none_mean_gap": none_mean_gap,
                "holds": bool(smaller >= required and mean_gap < none_mean_gap),
            },
            "no_cost": {
                "mean_test_accuracy": test,
                "none_mean_test_accuracy": none_test,
                "difference": test - none_test,
                "holds": bool(test >= none_test - TOLERANCE),
            },
        }
    return {
        "per_arm": per_arm,
        "claim_1": all(per_arm[m]["gap_reduced"]["holds"] for m in DECIDED),
        "claim_2": all(per_arm[m]["no_cost"]["holds"] for m in DECIDED),
    }


def _summary(finals: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("train_accuracy", "test_accuracy", "gap", "validation_accuracy", "kernel_norm"):
        v = np.asarray([r[key] for r in finals], np.float64)
        out[key] = {
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()),
            "max": float(v.max()),
        }
    return out


def _gap_evidence(decision: dict[str, Any], none_mean_gap: float) -> str:
    """Claim 1's numbers: none's mean gap, and each decided arm's mean gap and seed count."""

    def gaps(m: str) -> str:
        g = decision["per_arm"][m]["gap_reduced"]
        return (
            f"{LABELS[m]} {g['mean_gap']:.3f} (smaller in {g['smaller_in_seeds']} of the seeds, "
            f"{g['required_seeds']} required)"
        )

    return f"mean gap over seeds: none {none_mean_gap:.3f}; " + "; ".join(gaps(m) for m in DECIDED)


def _test_evidence(decision: dict[str, Any], none_mean_test: float) -> str:
    """Claim 2's numbers: none's mean test accuracy and each decided arm's."""
    tests = "; ".join(
        f"{LABELS[m]} {decision['per_arm'][m]['no_cost']['mean_test_accuracy']:.4f}"
        for m in DECIDED
    )
    return f"mean test accuracy over seeds: none {none_mean_test:.4f}; {tests}"


def _robustness(result: dict[str, Any], claim: str) -> dict[str, Any] | None:
    """``claim``'s sensitivity analysis (``"claim_1"`` or ``"claim_2"``), when it does not hold."""
    holds = result["decision"][claim]
    if holds or "sensitivity" not in result:
        return None
    variants = []
    for key, v in result["sensitivity"].items():
        d = v["decision"]
        first = d["per_arm"][DECIDED[0]]  # each arm records none's means
        evidence = (
            _gap_evidence(d, first["gap_reduced"]["none_mean_gap"])
            if claim == "claim_1"
            else _test_evidence(d, first["no_cost"]["none_mean_test_accuracy"])
            + f" (tolerance {TOLERANCE})"
        )
        variants.append(common.variant(key, SENSITIVITY_SETTINGS[key], d[claim], evidence))
    return common.robustness(holds, variants)


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    decision, summary = result["decision"], result["summary"]
    none = summary["none"]
    return [
        common.claim(
            "Regularization (an L2 weight penalty, dropout) reduces overfitting, the gap "
            "between training and test accuracy, when the training set is small.",
            RULES["gap_reduced"] + "; " + RULES["claim_1"],
            decision["claim_1"],
            _gap_evidence(decision, none["gap"]["mean"]) + ".",
            f"{NAME}.png, panels (a) and (c); across training-set sizes (e)"
            + ("; sensitivity (f)" if "sensitivity" in result else ""),
            robustness=_robustness(result, "claim_1"),
        ),
        common.claim(
            "Regularization does not cost test accuracy (or improves it).",
            RULES["no_cost"] + "; " + RULES["claim_2"],
            decision["claim_2"],
            _test_evidence(decision, none["test_accuracy"]["mean"]) + f" (tolerance {TOLERANCE}).",
            f"{NAME}.png, panel (b)",
            robustness=_robustness(result, "claim_2"),
        ),
    ]


def _mode(quick: bool) -> tuple[int, tuple[int, ...], dict[str, tuple[float, ...]], tuple]:
    """The epochs, seeds, grids and sizes (examples per class) of the run."""
    if quick:
        return QUICK_EPOCHS, QUICK_SEEDS, QUICK_GRIDS, QUICK_SIZES
    return EPOCHS, SEEDS, GRIDS, SIZES


def _sensitivity_variants(epochs: int, sizes: list[dict[str, Any]]) -> dict[str, dict]:
    """Each variant's one changed setting (``SENSITIVITY`` for the full run)."""
    return {
        "budget_x5": {"epochs": BUDGET_FACTOR * epochs},
        **{k: {"learning_rate": LEARNING_RATE * f} for k, f in LEARNING_RATE_FACTORS.items()},
        **{
            f"n_train_{s['n_train']}": {"n_train": s["n_train"], "epochs": s["epochs"]}
            for s in sizes
            if s["per_class"] != PER_CLASS
        },
    }


def setup(quick: bool = False, splits: Splits | None = None) -> dict[str, Any]:
    """The run's setup, known before any training: ``main`` preregisters it with ``RULES``."""
    epochs, seeds, grids, sizes = _mode(quick)
    splits = splits if splits is not None else digits(seed=DIGITS_SEED)
    if len(splits.train.y) != TRAIN_PART:
        raise ValueError(
            f"{NAME}: digits(seed={DIGITS_SEED})'s train part holds {len(splits.train.y)} "
            f"examples, the rules were written for {TRAIN_PART}; update TRAIN_PART."
        )
    updates = updates_budget(epochs)
    size_settings = [_size_setting(p, updates) for p in sizes]
    return {
        "data": f"jaxnn.data.digits(seed={DIGITS_SEED}): train part {len(splits.train.y)}, "
        f"validation {len(splits.validation.y)}, test {len(splits.test.y)}, standardised "
        "with the train part's statistics",
        "per_class": PER_CLASS,
        "n_train": PER_CLASS * CLASSES,
        "n_validation": len(splits.validation.y),
        "n_test": len(splits.test.y),
        "network": f"mlp({[*HIDDEN, CLASSES]}, {ACTIVATION!r}, w_init={W_INIT!r}), float32; "
        "every arm of a seed starts from the same dense weights",
        "optimizer": f"optax.adam({LEARNING_RATE}); weight_decay arm: optax.adamw("
        f"{LEARNING_RATE}, weight_decay=wd, mask=kernels)",
        "loss": LOSS,
        "batch_size": BATCH,
        "epochs": epochs,
        "seeds": list(seeds),
        "grids": {m: list(grids[m]) for m in grids},
        "tolerance": TOLERANCE,
        "dtype": "float32",
        "prng": "jax.random.key(seed, impl='rbg'): the initial weights, the minibatch "
        "order and the dropout masks",
        "updates": updates,
        "size_settings": size_settings,
        "sensitivity_variants": _sensitivity_variants(epochs, size_settings),
    }


def _sizes(
    splits: Splits,
    evaluation: dict,
    starts: dict[int, tuple[dict, dict]],
    size_settings: list[dict[str, Any]],
    strength: dict[str, dict[str, float]],
    original: dict[str, list[dict]],
) -> list[dict[str, Any]]:
    """Every arm at every training-set size, on every seed; the original run is size 150.

    ``starts[seed]`` is ``(data, plain initial params)``; ``original[method][k]`` the original
    run's final record on seed ``k``.
    """
    others = [s for s in size_settings if s["per_class"] != PER_CLASS]
    total = len(others) * len(starts) * len(METHODS)
    bar = iter(common.progress(range(total), f"{len(others)} size(s)", unit="run"))
    entries = []
    for setting in size_settings:
        per_class = setting["per_class"]
        seeds, finals = [], {m: [] for m in METHODS}
        for seed, (_, plain_params) in starts.items():
            idx = subset_indices(splits.train.y, seed, per_class)
            seeds.append(
                {
                    "seed": seed,
                    "train_indices": idx.tolist(),
                    "class_counts": np.bincount(splits.train.y[idx], minlength=CLASSES).tolist(),
                }
            )
            if per_class == PER_CLASS:
                continue
            data = {**evaluation, "train": (jnp.asarray(splits.train.x[idx]),
                                            jnp.asarray(splits.train.y[idx]))}  # fmt: skip
            for method in METHODS:
                config = _arm_of(method, strength)
                start = _start(config.net, plain_params, seed)
                trained = _train(config, start, seed, data, setting["epochs"], curves=False)
                finals[method].append(trained.record["final"])
                next(bar, None)
        if per_class == PER_CLASS:
            finals = {m: list(original[m]) for m in METHODS}
        entries.append(
            {
                **setting,
                "seeds": seeds,
                "finals": finals,
                "summary": {m: _summary(finals[m]) for m in METHODS},
                "decision": decide(finals),
            }
        )
    for _ in bar:  # closes the bar
        pass
    return entries


def _sensitivity(
    starts: dict[int, tuple[dict, dict]],
    chosen: dict[str, list[Trained]],
    strength: dict[str, dict[str, float]],
    epochs: int,
    sizes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The variants of ``SENSITIVITY``: the arms claim 1 reads, the original seeds.

    ``chosen[method][k]`` is the original run of ``method`` on seed ``k`` (continued for the
    budget); ``sizes`` the runs across sizes (their arms, read as they are).
    """
    learning_rates = {k: LEARNING_RATE * f for k, f in LEARNING_RATE_FACTORS.items()}
    total = (1 + len(learning_rates)) * len(SENSITIVITY_ARMS) * len(starts)
    bar = iter(common.progress(range(total), "sensitivity", unit="run"))

    def variant(changed: dict[str, Any], finals: dict[str, list[dict]]) -> dict[str, Any]:
        return {**changed, "finals": finals, "decision": decide(finals)}

    out = {}
    finals = {m: [] for m in SENSITIVITY_ARMS}
    for method in SENSITIVITY_ARMS:
        config = _arm_of(method, strength)
        for k, (seed, (data, _)) in enumerate(starts.items()):
            more = (BUDGET_FACTOR - 1) * epochs
            trained = _train(config, chosen[method][k], seed, data, more, curves=False)
            finals[method].append(trained.record["final"])
            next(bar, None)
    out["budget_x5"] = variant({"epochs": BUDGET_FACTOR * epochs}, finals)
    for key, learning_rate in learning_rates.items():
        finals = {m: [] for m in SENSITIVITY_ARMS}
        for method in SENSITIVITY_ARMS:
            config = _arm_of(method, strength, learning_rate=learning_rate)
            for seed, (data, plain_params) in starts.items():
                start = _start(config.net, plain_params, seed)
                trained = _train(config, start, seed, data, epochs, curves=False)
                finals[method].append(trained.record["final"])
                next(bar, None)
        out[key] = variant({"learning_rate": learning_rate}, finals)
    for entry in sizes:
        if entry["per_class"] != PER_CLASS:
            out[f"n_train_{entry['n_train']}"] = variant(
                {"n_train": entry["n_train"], "epochs": entry["epochs"]},
                {m: entry["finals"][m] for m in SENSITIVITY_ARMS},
            )
    for _ in bar:  # closes the bar
        pass
    return out


def run(quick: bool = False, splits: Splits | None = None) -> dict[str, Any]:
    """Train every arm on every seed, select on validation, decide on test; then every arm
    across training-set sizes, and the sensitivity analysis when a claim does not hold."""
    epochs, seeds, grids, _ = _mode(quick)
    start_time = time.perf_counter()
    phases = {}
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        splits = splits if splits is not None else digits(seed=DIGITS_SEED)
        config_setup = setup(quick, splits)
        evaluation = {
            "validation": tuple(jnp.asarray(a) for a in splits.validation),
            "test": tuple(jnp.asarray(a) for a in splits.test),
        }
        configs = {
            "none": [arm()],
            "l2": [arm(l2_scale=s) for s in grids["l2"]],
            "dropout": [arm(rate=r) for r in grids["dropout"]],
            "weight_decay": [arm(weight_decay=w) for w in grids["weight_decay"]],
        }
        per_seed = []
        runs: dict[str, list[list[Trained]]] = {m: [[] for _ in c] for m, c in configs.items()}
        per = sum(len(c) for c in configs.values()) + 1  # + both, after the selection
        desc = f"{len(seeds)} seed(s) x {per} runs"
        bar = iter(common.progress(range(len(seeds) * per), desc, unit="run"))
        starts = {}
        for seed in seeds:
            idx = subset_indices(splits.train.y, seed)
            data = {**evaluation, "train": (jnp.asarray(splits.train.x[idx]),
                                            jnp.asarray(splits.train.y[idx]))}  # fmt: skip
            plain_params = _init(_key(seed))
            starts[seed] = (data, plain_params)
            per_seed.append(
                {
                    "seed": seed,
                    "train_indices": idx.tolist(),
                    "class_counts": np.bincount(splits.train.y[idx], minlength=CLASSES).tolist(),
                    "initial_kernel_norm": kernel_norm(plain_params),
                }
            )
            for method, group in configs.items():
                for i, config in enumerate(group):
                    start = _start(config.net, plain_params, seed)
                    runs[method][i].append(_train(config, start, seed, data, epochs))
                    next(bar, None)
        records = {m: [[t.record for t in row] for row in runs[m]] for m in runs}
        selected = {m: select(grids[m], records[m]) for m in grids}
        both = arm(l2_scale=selected["l2"][0], rate=selected["dropout"][0])
        both_runs = []
        for seed in seeds:
            data, plain_params = starts[seed]
            start = _start(both.net, plain_params, seed)
            both_runs.append(_train(both, start, seed, data, epochs))
            next(bar, None)
        for _ in bar:  # closes the bar
            pass
        chosen = {
            "none": runs["none"][0],
            **{m: runs[m][grids[m].index(selected[m][0])] for m in grids},
            "both": both_runs,
        }
        del runs  # the states of the runs not chosen
        finals = {m: [t.record["final"] for t in chosen[m]] for m in METHODS}
        summary = {m: _summary(finals[m]) for m in METHODS}
        decision = decide(finals)
        strength = {
            "none": {},
            "l2": {"l2_scale": selected["l2"][0]},
            "dropout": {"dropout_rate": selected["dropout"][0]},
            "both": {"l2_scale": selected["l2"][0], "dropout_rate": selected["dropout"][0]},
            "weight_decay": {"weight_decay": selected["weight_decay"][0]},
        }
        phases["original"] = time.perf_counter() - start_time
        sizes = _sizes(splits, evaluation, starts, config_setup["size_settings"], strength, finals)
        phases["sizes"] = time.perf_counter() - start_time - phases["original"]
        sensitivity = None
        if not (decision["claim_1"] and decision["claim_2"]):
            sensitivity = _sensitivity(starts, chosen, strength, epochs, sizes)
            phases["sensitivity"] = time.perf_counter() - start_time - sum(phases.values())
    result = {
        "quick": quick,
        "setup": config_setup,
        "rules": RULES,
        "seeds": per_seed,
        "selection": {
            m: {
                "grid": list(grids[m]),
                "mean_validation_accuracy": selected[m][1],
                "per_seed_validation_accuracy": [
                    [r["final"]["validation_accuracy"] for r in row] for row in records[m]
                ],
                "selected": selected[m][0],
            }
            for m in grids
        },
        "grid_finals": {m: [[r["final"] for r in row] for row in records[m]] for m in grids},
        "strength": strength,
        "runs": {m: [t.record for t in chosen[m]] for m in METHODS},
        "summary": summary,
        "decision": decision,
        "sizes": sizes,
    }
    if sensitivity is not None:
        result["sensitivity"] = sensitivity
    result["claims"] = _claims(result)
    result["phase_seconds"] = phases
    result["seconds"] = time.perf_counter() - start_time
    return result


COLORS = {
    "none": "tab:red",
    "l2": "tab:blue",
    "dropout": "tab:green",
    "both": "tab:purple",
    "weight_decay": "tab:orange",
}


def _strength(result: dict[str, Any], method: str) -> str:
    s = result["strength"][method]
    return ", ".join(f"{v:g}" for v in s.values())


def _verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def _gap_by_size(ax: Any, result: dict[str, Any]) -> None:
    """(e): each arm's gap against the training-set size, mean and range over seeds."""
    sizes = result["sizes"]
    n = np.asarray([s["n_train"] for s in sizes], np.float64)
    for j, method in enumerate(METHODS):
        gap = [s["summary"][method]["gap"] for s in sizes]
        mean = np.asarray([g["mean"] for g in gap])
        low = mean - np.asarray([g["min"] for g in gap])
        high = np.asarray([g["max"] for g in gap]) - mean
        x = n * 1.04 ** (j - (len(METHODS) - 1) / 2)  # side by side on the log axis
        # yerr as one [2, sizes] array: a list of arrays trips a NumPy deprecation inside
        # matplotlib's errorbar with NumPy 2.0
        ax.errorbar(x, mean, yerr=np.stack([low, high]), color=COLORS[method], marker="o", ms=4,
                    capsize=3, lw=1.2, label=LABELS[method])  # fmt: skip
    for s in sizes:
        ax.annotate(
            f"claim 1 rule:\n{_verdict(s['decision']['claim_1'])}", (s["n_train"], 1),
            xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=7,
        )  # fmt: skip
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(n, [f"{int(v)}" for v in n])
    ax.minorticks_off()
    ax.set_xlim(n.min() / 1.5, n.max() * 1.5)
    top = max(s["summary"][m]["gap"]["max"] for s in sizes for m in METHODS)
    ax.set_ylim(min(0.0, min(s["summary"][m]["gap"]["min"] for s in sizes for m in METHODS)),
                top * 1.3 + 1e-3)  # fmt: skip
    seeds = len(result["setup"]["seeds"])
    ax.set(xlabel=f"{LABELS['n_train']} (log scale; {result['setup']['updates']} updates at "
           "every size, rounded up to whole epochs)",
           ylabel=f"gap, mean over {seeds} seed(s); bars: min to max")  # fmt: skip
    ax.set_title("(e) the gap against the training-set size (strengths selected at 150)")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)


def _sensitivity_panel(ax: Any, result: dict[str, Any]) -> None:
    """(f): each arm's mean gap in the original run and in every sensitivity variant."""
    groups = {"original": result["decision"], **{k: v["decision"] for k, v in
                                                 result["sensitivity"].items()}}  # fmt: skip
    width = 0.8 / len(SENSITIVITY_ARMS)
    for j, method in enumerate(SENSITIVITY_ARMS):
        means = [
            d["per_arm"]["l2"]["gap_reduced"]["none_mean_gap"]
            if method == "none"
            else d["per_arm"][method]["gap_reduced"]["mean_gap"]
            for d in groups.values()
        ]
        x = np.arange(len(groups)) + (j - (len(SENSITIVITY_ARMS) - 1) / 2) * width
        ax.bar(x, means, width, color=COLORS[method], alpha=0.7, edgecolor="k",
               label=LABELS[method])  # fmt: skip
    ticks = [f"{LABELS[k]}: {_verdict(d['claim_1'])}" for k, d in groups.items()]
    ax.set_xticks(np.arange(len(groups)), ticks, fontsize=7, rotation=20, ha="right")
    ax.set(ylabel="mean gap over seeds")
    ax.set_title(
        "(f) sensitivity of claim 1 (its verdict under each run's name): the same "
        "rule,\none setting changed per run, the strengths selected in the original run"
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def figure(result: dict[str, Any]) -> Figure:
    """(a) learning curves; (b) final train and test accuracy; (c) the gap; (d) the grids;
    (e) the gap against the training-set size; (f) the sensitivity analysis, when it ran."""
    runs, summary = result["runs"], result["summary"]
    sensitivity = "sensitivity" in result
    fig = plots.figure((14, 14) if sensitivity else (14, 13))
    grid = fig.add_gridspec(3, 2)
    (a, b), (c, d) = ([fig.add_subplot(grid[i, j]) for j in (0, 1)] for i in (0, 1))
    # Without a sensitivity analysis (every claim holds), (e) takes the whole last row.
    e = fig.add_subplot(grid[2, 0] if sensitivity else grid[2, :])
    setup = result["setup"]
    verdict = {k: _verdict(result["decision"][k]) for k in ("claim_1", "claim_2")}
    fig.suptitle(
        f"Regularization on {setup['n_train']} digits ({PER_CLASS} per class): "
        f"mlp({[*HIDDEN, CLASSES]}, relu), Adam {LEARNING_RATE:g}, batch {BATCH}, "
        f"{setup['epochs']} epochs, {len(setup['seeds'])} seed(s)"
        + (" [quick]" if result["quick"] else "")
        + f"\n{LABELS['claim_1']}: {verdict['claim_1']}; {LABELS['claim_2']}: {verdict['claim_2']}"
    )
    for method in METHODS:
        train = np.mean([r["train_accuracy"] for r in runs[method]], axis=0)
        val = np.mean([r["val_accuracy"] for r in runs[method]], axis=0)
        epochs = np.arange(1, len(train) + 1)
        label = f"{LABELS[method]} {_strength(result, method)}".strip()
        a.plot(epochs, train, "--", color=COLORS[method], lw=1)
        a.plot(epochs, val, "-", color=COLORS[method], label=label)
    a.plot([], [], "--", color="0.4", lw=1, label="train (dashed)")
    a.plot([], [], "-", color="0.4", label="validation (solid)")
    plots.finish(
        a, "(a) learning curves: train (eval mode) and validation accuracy",
        legend={"loc": "lower right", "fontsize": 8}, integer_x=True,
        xlabel=LABELS["epoch"], ylabel="accuracy, mean over seeds", ylim=(0.8, 1.005),
    )  # fmt: skip

    x = np.arange(len(METHODS))
    names = [LABELS[m].replace(" (AdamW)", "\n(AdamW)") for m in METHODS]

    def bars(ax, key: str, offset: float, width: float, hatch: str | None, label: str) -> None:
        means = [summary[m][key]["mean"] for m in METHODS]
        ax.bar(x + offset, means, width, color=[COLORS[m] for m in METHODS], alpha=0.6,
               hatch=hatch, edgecolor="k", label=label)  # fmt: skip
        for i, m in enumerate(METHODS):
            values = [r["final"][key] for r in runs[m]]
            ax.plot(np.full(len(values), x[i] + offset), values, "k.", ms=4)

    bars(b, "train_accuracy", -0.2, 0.4, "//", "train (hatched)")
    bars(b, "test_accuracy", 0.2, 0.4, None, "test")
    lo = min(summary[m]["test_accuracy"]["min"] for m in METHODS)
    b.set(ylim=(max(0.0, lo - 0.05), 1.01), ylabel="final accuracy (bars: mean; dots: seeds)")
    b.set_xticks(x, names, fontsize=8)
    b.set_title("(b) final train and test accuracy")
    b.legend(loc="lower right", fontsize=8)
    b.grid(alpha=0.3, axis="y")

    bars(c, "gap", 0.0, 0.6, None, "gap")
    c.axhline(summary["none"]["gap"]["mean"], color=COLORS["none"], ls=":", lw=1)
    c.set_xticks(x, names, fontsize=8)
    c.set(ylabel="train - test accuracy (bars: mean; dots: seeds)")
    c.set_title("(c) the gap; dotted: none's mean")
    c.grid(alpha=0.3, axis="y")

    ticks, heights, colors = [], [], []
    for method, sel in result["selection"].items():
        for value, mean in zip(sel["grid"], sel["mean_validation_accuracy"], strict=True):
            star = " *" if value == sel["selected"] else ""
            ticks.append(f"{LABELS[method + '_short']}\n{value:g}{star}")
            heights.append(mean)
            colors.append(COLORS[method])
    none_val = summary["none"]["validation_accuracy"]["mean"]
    d.bar(np.arange(len(heights)), heights, color=colors, alpha=0.6, edgecolor="k")
    d.axhline(none_val, color=COLORS["none"], ls=":", lw=1, label=f"none {none_val:.3f}")
    d.set_xticks(np.arange(len(heights)), ticks, fontsize=7)
    d.set(ylim=(max(0.0, min([*heights, none_val]) - 0.03), max([*heights, none_val]) + 0.01))
    d.set(ylabel=LABELS["mean_validation_accuracy"])
    d.set_title("(d) selection on validation (* selected); the test part is not used")
    d.legend(loc="lower right", fontsize=8)
    d.grid(alpha=0.3, axis="y")

    _gap_by_size(e, result)
    if sensitivity:
        _sensitivity_panel(fig.add_subplot(grid[2, 1]), result)
    return fig


def _size_report(result: dict[str, Any]) -> list[str]:
    """The gap (and test accuracy) per arm and training-set size; claim 1's rule per size."""
    sizes = result["sizes"]
    header = (
        "",
        *(f"n = {s['n_train']} ({s['epochs']} ep, {s['updates']} upd)" for s in sizes),
    )

    def row(method: str, key: str) -> tuple[str, ...]:
        cells = []
        for s in sizes:
            v = s["summary"][method][key]
            cells.append(f"{v['mean']:.4f} ± {v['std']:.4f} [{v['min']:.3f}, {v['max']:.3f}]")
        return (f"{LABELS[method]} {_strength(result, method)}".strip(), *cells)

    def rule(method: str) -> tuple[str, ...]:
        cells = []
        for s in sizes:
            g = s["decision"]["per_arm"][method]["gap_reduced"]
            cells.append(
                f"{g['smaller_in_seeds']}/{g['required_seeds']}, "
                f"{'reduces' if g['holds'] else 'does not reduce'}"
            )
        return (LABELS[method], *cells)

    seeds = len(result["setup"]["seeds"])
    claim = (
        LABELS["claim_1"].split(" (")[0],
        *(_verdict(s["decision"]["claim_1"]) for s in sizes),
    )
    return [
        f"the gap = train - test accuracy per training-set size, mean ± std [min, max] over "
        f"{seeds} seed(s); the strengths selected at 150:",
        common.table([row(m, "gap") for m in METHODS], header),
        "test accuracy per training-set size, mean ± std [min, max]:",
        common.table([row(m, "test_accuracy") for m in METHODS], header),
        "claim 1's rule at each size (seeds with a smaller gap than none / required; verdict):",
        common.table([*(rule(m) for m in METHODS[1:]), claim], header),
    ]


def _sensitivity_report(result: dict[str, Any]) -> list[str]:
    """Each sensitivity variant's mean gaps and test accuracies, its verdicts; robustness."""
    if "sensitivity" not in result:
        return ["sensitivity analysis: not run (both claims hold)"]
    groups = {"original": result["decision"], **{k: v["decision"] for k, v in
                                                 result["sensitivity"].items()}}  # fmt: skip

    def gaps(d: dict[str, Any]) -> list[str]:
        per_arm = d["per_arm"]
        none = per_arm[DECIDED[0]]["gap_reduced"]["none_mean_gap"]
        return [f"{none:.4f}"] + [
            f"{per_arm[m]['gap_reduced']['mean_gap']:.4f} "
            f"({per_arm[m]['gap_reduced']['smaller_in_seeds']}/"
            f"{per_arm[m]['gap_reduced']['required_seeds']})"
            for m in DECIDED
        ]

    rows = [
        (LABELS[k], *gaps(d), _verdict(d["claim_1"]), _verdict(d["claim_2"]))
        for k, d in groups.items()
    ]
    lines = [
        "sensitivity analysis: mean gap over seeds (seeds with a smaller gap than none / "
        "required), the strengths selected in the original run:",
        common.table(
            rows,
            ("", *(LABELS[m] for m in SENSITIVITY_ARMS), "claim 1", "claim 2"),
        ),
    ]
    for c in result["claims"]:
        if "robustness" in c:
            lines.append(f"{c['claim']} {c['robustness']['sentence']}")
    return lines


def report(result: dict[str, Any]) -> str:
    """The printed report: the selection, the final numbers per arm, the verdicts, the gap
    across sizes, the sensitivity analysis."""
    summary, decision = result["summary"], result["decision"]
    selection = [
        (LABELS[m], *(f"{v:g}: {a:.4f}" for v, a in zip(s["grid"], s["mean_validation_accuracy"],
                                                         strict=True)), f"{s['selected']:g}")
        for m, s in result["selection"].items()
    ]  # fmt: skip
    width = max(len(r) for r in selection)
    selection = [(*r[:-1], *[""] * (width - len(r)), r[-1]) for r in selection]

    def cell(m: str, key: str, digits: int = 4) -> str:
        s = summary[m][key]
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    finals = [
        (
            f"{LABELS[m]} {_strength(result, m)}".strip(),
            *(
                cell(m, k)
                for k in ("train_accuracy", "validation_accuracy", "test_accuracy", "gap")
            ),
            cell(m, "kernel_norm", 2),
        )
        for m in METHODS
    ]
    arms = [
        (
            LABELS[m],
            f"{d['gap_reduced']['smaller_in_seeds']}/{d['gap_reduced']['required_seeds']}",
            f"{d['gap_reduced']['mean_gap']:.4f}",
            d["gap_reduced"]["holds"],
            f"{d['no_cost']['difference']:+.4f}",
            d["no_cost"]["holds"],
        )
        for m, d in decision["per_arm"].items()
    ]

    def verdict(key: str) -> str:
        return f"{LABELS[key]}: {'HOLDS' if decision[key] else 'DOES NOT HOLD'}"

    return "\n".join(
        [
            "selection: mean final validation accuracy per grid value (the last column: chosen)",
            common.table(selection),
            "final numbers, mean ± std over seeds:",
            common.table(
                finals,
                ("", "train", "validation", "test", "gap", LABELS["kernel_norm"]),
            ),
            f"per arm (none's mean gap {summary['none']['gap']['mean']:.4f}, mean test "
            f"{summary['none']['test_accuracy']['mean']:.4f}; weight decay not decided on):",
            common.table(
                arms,
                ("", "smaller gap / required", "mean gap", "gap reduced", "test - none", "no cost"),
            ),
            verdict("claim_1"),
            verdict("claim_2"),
            *_size_report(result),
            *_sensitivity_report(result),
            f"{LABELS['seconds']}: {result['seconds']:.1f} ("
            + ", ".join(f"{k} {v:.1f}" for k, v in result["phase_seconds"].items())
            + ")",
        ]
    )


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``regularization.json`` and ``.png``; print the report.

    The setup and ``RULES`` are written to ``regularization.preregistered.json`` before any
    training.
    """
    splits = digits(seed=DIGITS_SEED)
    common.preregister(NAME, out_dir, setup(quick, splits), RULES)
    result = run(quick=quick, splits=splits)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
