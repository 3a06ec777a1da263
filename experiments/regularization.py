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
these numbers. ``main(out_dir, quick=True)`` runs the same code with fewer seeds and epochs.
The run is float32 whatever ``jax_enable_x64`` says.

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
from jaxnn.data import digits
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
    "l2_short": "L2",
    "dropout_short": "dropout",
    "weight_decay_short": "AdamW wd",
    "holds": "holds",
}


class Arm(NamedTuple):
    """One configuration: what differs between the arms."""

    net: Layer
    optimizer: optax.GradientTransformation
    penalty: Penalty | None


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


@functools.cache
def arm(l2_scale: float = 0.0, rate: float = 0.0, weight_decay: float = 0.0) -> Arm:
    """The network, optimizer and penalty of one configuration.

    Cached: every seed gets the same objects, so :func:`jaxnn.train.make_epoch` (cached on
    them) compiles each configuration once.
    """
    if weight_decay:
        optimizer = optax.adamw(LEARNING_RATE, weight_decay=weight_decay, mask=_kernel_mask)
    else:
        optimizer = optax.adam(LEARNING_RATE)
    return Arm(_network(rate), optimizer, l2(l2_scale) if l2_scale else None)


def subset_indices(y_train: np.ndarray, seed: int) -> np.ndarray:
    """``PER_CLASS`` indices of each class into the train part, seeded, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(y_train == c), PER_CLASS, replace=False) for c in range(CLASSES)
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


def _train(config: Arm, start: tuple[dict, dict], seed: int, data: dict, epochs: int) -> dict:
    """Train one arm on one seed's subset; the per-epoch curves and the final measures."""
    params, state = start
    ts = TrainState.create(config.net, config.optimizer, _key(seed), params=params, state=state)
    result = fit(
        config.net,
        LOSS,
        config.optimizer,
        ts,
        data["train"],
        epochs=epochs,
        batch_size=BATCH,
        validation=data["validation"],
        penalty=config.penalty,
        evaluate_train=True,
    )
    final = result.state  # the last epoch's, not the best: fixed epochs
    last = result.history[-1]
    test = evaluate(config.net, LOSS, final.params, final.state, *data["test"])
    return {
        "train_accuracy": [r["train_accuracy"] for r in result.history],
        "val_accuracy": [r["val_accuracy"] for r in result.history],
        "final": {
            "train_accuracy": last["train_accuracy"],
            "validation_accuracy": last["val_accuracy"],
            "test_accuracy": test["accuracy"],
            "gap": last["train_accuracy"] - test["accuracy"],
            "train_loss": last["train_loss"],
            "test_loss": test["loss"],
            "kernel_norm": kernel_norm(final.params),
        },
    }


def select(grid: tuple[float, ...], runs: list[list[dict]]) -> tuple[float, list[float]]:
    """The grid value with the highest mean final validation accuracy (first on a tie).

    ``runs[i][k]`` is grid value ``i``'s run on seed ``k``.
    """
    means = [float(np.mean([r["final"]["validation_accuracy"] for r in row])) for row in runs]
    return grid[int(np.argmax(means))], means


def decide(finals: dict[str, list[dict]]) -> dict[str, Any]:
    """``gap_reduced`` and ``no_cost`` for every regularized arm, by RULES; the claims.

    ``finals[method][k]`` is the final record of ``method`` on seed ``k``.
    """
    n = len(finals["none"])
    required = -(-GAP_SEEDS[0] * n // GAP_SEEDS[1])
    none_gap = [r["gap"] for r in finals["none"]]
    none_test = float(np.mean([r["test_accuracy"] for r in finals["none"]]))
    per_arm = {}
    for method in METHODS[1:]:
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


def _claims(decision: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    per_arm = decision["per_arm"]

    def gaps(m: str) -> str:
        g = per_arm[m]["gap_reduced"]
        return (
            f"{LABELS[m]} {g['mean_gap']:.3f} (smaller in {g['smaller_in_seeds']} of the seeds, "
            f"{g['required_seeds']} required)"
        )

    def tests(m: str) -> str:
        return f"{LABELS[m]} {per_arm[m]['no_cost']['mean_test_accuracy']:.4f}"

    none = summary["none"]
    return [
        common.claim(
            "Regularization (an L2 weight penalty, dropout) reduces overfitting, the gap "
            "between training and test accuracy, when the training set is small.",
            RULES["gap_reduced"] + "; " + RULES["claim_1"],
            decision["claim_1"],
            f"mean gap over seeds: none {none['gap']['mean']:.3f}; "
            + "; ".join(gaps(m) for m in DECIDED)
            + ".",
            f"{NAME}.png, panels (a) and (c)",
        ),
        common.claim(
            "Regularization does not cost test accuracy (or improves it).",
            RULES["no_cost"] + "; " + RULES["claim_2"],
            decision["claim_2"],
            f"mean test accuracy over seeds: none {none['test_accuracy']['mean']:.4f}; "
            + "; ".join(tests(m) for m in DECIDED)
            + f" (tolerance {TOLERANCE}).",
            f"{NAME}.png, panel (b)",
        ),
    ]


def run(quick: bool = False) -> dict[str, Any]:
    """Train every arm on every seed, select on validation, decide on test."""
    epochs = QUICK_EPOCHS if quick else EPOCHS
    seeds = QUICK_SEEDS if quick else SEEDS
    grids = QUICK_GRIDS if quick else GRIDS
    start_time = time.perf_counter()
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        splits = digits(seed=DIGITS_SEED)
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
        runs: dict[str, list[list[dict]]] = {m: [[] for _ in c] for m, c in configs.items()}
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
        selected = {m: select(grids[m], runs[m]) for m in grids}
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
    finals = {m: [r["final"] for r in chosen[m]] for m in METHODS}
    summary = {m: _summary(finals[m]) for m in METHODS}
    decision = decide(finals)
    return {
        "quick": quick,
        "setup": {
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
        },
        "rules": RULES,
        "seeds": per_seed,
        "selection": {
            m: {
                "grid": list(grids[m]),
                "mean_validation_accuracy": selected[m][1],
                "per_seed_validation_accuracy": [
                    [r["final"]["validation_accuracy"] for r in row] for row in runs[m]
                ],
                "selected": selected[m][0],
            }
            for m in grids
        },
        "grid_finals": {m: [[r["final"] for r in row] for row in runs[m]] for m in grids},
        "strength": {
            "none": {},
            "l2": {"l2_scale": selected["l2"][0]},
            "dropout": {"dropout_rate": selected["dropout"][0]},
            "both": {"l2_scale": selected["l2"][0], "dropout_rate": selected["dropout"][0]},
            "weight_decay": {"weight_decay": selected["weight_decay"][0]},
        },
        "runs": chosen,
        "summary": summary,
        "decision": decision,
        "claims": _claims(decision, summary),
        "seconds": time.perf_counter() - start_time,
    }


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


def figure(result: dict[str, Any]) -> Figure:
    """(a) learning curves; (b) final train and test accuracy; (c) the gap; (d) the grids."""
    runs, summary = result["runs"], result["summary"]
    fig = plots.figure((14, 9.5))
    (a, b), (c, d) = fig.subplots(2, 2)
    setup = result["setup"]
    verdict = {
        k: "holds" if result["decision"][k] else "does not hold" for k in ("claim_1", "claim_2")
    }
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
    return fig


def report(result: dict[str, Any]) -> str:
    """The printed report: the selection, the final numbers per arm, the verdicts."""
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
            f"{LABELS['seconds']}: {result['seconds']:.1f}",
        ]
    )


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``regularization.json`` and ``.png``; print the report."""
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
