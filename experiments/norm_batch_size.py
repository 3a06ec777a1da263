"""Normalisation and batch size: BatchNorm falls at small batches, LayerNorm and GroupNorm do not.

Wu & He, "Group Normalization", ECCV 2018, Figure 1: ResNet-50 on ImageNet, trained with
batches of 32, 16, 8, 4 and 2 images per worker; BatchNorm's validation error rises from 23.6 %
at 32 to 34.7 % at 2, GroupNorm's stays at 24.1-24.2 % (and LayerNorm, their Figure 4, is
worse than both at 32 but, like GroupNorm, independent of the batch). CS231n's assignment 2
("Layer Normalization and Batch Size") asks the same question of small networks. BatchNorm
normalises with statistics over the batch (and the spatial positions); at small batches they
are noisy in training and the running averages used at test time are averages of noisy
estimates. LayerNorm and GroupNorm take their statistics per example, so the batch size does
not enter them. Two claims, tested here:

1. *BatchNorm's test accuracy falls at small batches.*
2. *LayerNorm's and GroupNorm's test accuracy does not.*

**Networks.** :func:`jaxnn.cnn` on the 8x8 digits, ``CHANNELS`` (two stages, 8x8 and 4x4, max
pooling between; a stem and one block of two ``conv3x3 -> norm -> ReLU`` per stage; global
average pooling; a dense head: 6 weighted layers), with ``norm`` BatchNorm (over the
channels of NHWC: statistics over the batch and the positions, PyTorch's ``BatchNorm2d``),
LayerNorm (each example over ``(H, W, C)``, Wu & He's LN of a CNN) or GroupNorm (``GROUPS``
groups of channels), the same network otherwise.

**Training: the same epochs for every batch size; the learning rate scales linearly.** Each
network trains ``EPOCHS`` epochs with minibatches of each size in ``BATCH_SIZES`` (the last
partial minibatch dropped), SGD with momentum ``MOMENTUM``, learning rate
``LEARNING_RATE · B / REFERENCE_BATCH`` (Wu & He: 0.1 · B/32, Goyal et al. 2017's linear
scaling rule: the same epochs then take the same total step per example), cosine-decayed to
0 at the end, the same for every norm. The budget was sized so that every norm fits the training set at
the reference batch (a final training loss of a few hundredths at 32 and 64): with fewer
epochs the large batches, which make the fewest updates, stop short of the fit, and the
comparison would be with an under-trained reference. Float32, the autodiff path. Each seed
sets the initial weights (the same for every batch size) and the minibatch order.

**The decision.** Test accuracy in eval mode (BatchNorm with its running statistics, PyTorch's
convention with momentum 0.1, as PyTorch and Flax evaluate) on the 359 test images, at the
end of the budget. The *drop* at batch ``b`` is the mean over the seeds of the paired
differences ``D_s = acc_32(s) − acc_b(s)`` (percentage points; 32 is Wu & He's reference).
The accuracy *falls* at ``b`` if the drop is at least ``MIN_DROP`` points and the one-sided
paired t-test at 5 % finds it (mean ``D > t_{0.95, k−1} sd(D)/√k``). ``MIN_DROP`` = 1 point is
3.6 test images: less than the binomial standard error of one run's accuracy near 95 %
(``√(0.95 · 0.05 / 359)`` ≈ 1.2 points), so smaller drops are not counted as a fall whatever
the test says. Claim 1 holds if BatchNorm's accuracy falls at batch 2; claim 2 if neither
LayerNorm's nor GroupNorm's falls at any batch below 32.

``RULES`` is fixed before the run and written to ``norm_batch_size.preregistered.json``
before any training; a claim that does not hold is checked against the variants of
``SENSITIVITY`` (each trains only the norms and batch sizes its rule reads).
``main(out_dir, quick=True)``: one stage (``QUICK_CHANNELS``), batch sizes
``QUICK_BATCH_SIZES``, two seeds, ``QUICK_EPOCHS`` epochs, no sensitivity analysis. The (norm, batch size) runs go two at a time in threads.
Writes ``norm_batch_size.json`` and ``.png``.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure
from scipy import stats

from jaxnn import Layer
from jaxnn.data import digits
from jaxnn.networks import cnn
from jaxnn.train import TrainState, make_epoch
from jaxnn_experiments import common, plots

NAME = "norm_batch_size"
NORMS = ("batchnorm", "layernorm", "groupnorm")
BATCH_INDEPENDENT = ("layernorm", "groupnorm")
INPUT_SHAPE = (8, 8, 1)
CLASSES = 10
CHANNELS = (8, 16)
GROUPS = 4  # GroupNorm: 2 channels per group in the first stage, 4 in the second
BATCH_SIZES = (2, 4, 8, 16, 32, 64)
REFERENCE_BATCH = 32
SMALLEST_BATCH = 2
SEEDS = (0, 1, 2)
LEARNING_RATE = 0.1  # at REFERENCE_BATCH (Wu & He's); linear in the batch size
MOMENTUM = 0.9
EPOCHS = 15
QUICK_BATCH_SIZES = (2, 32)
QUICK_SEEDS = (0, 1)
QUICK_EPOCHS = 2
QUICK_CHANNELS = (8,)  # one stage: less to compile
LOSS = "softmax_cross_entropy_with_integer_labels"
CONFIDENCE = 0.95
MIN_DROP = 1.0  # percentage points of test accuracy
WORKERS = 2
# Wu & He 2018, Figure 1 (ResNet-50, ImageNet): validation error (%) by batch per worker.
WU_HE_ERROR = {
    "batchnorm": {"32": 23.6, "16": 23.7, "8": 24.8, "4": 27.3, "2": 34.7},
    "groupnorm": {"32": 24.1, "16": 24.2, "8": 24.0, "4": 24.2, "2": 24.1},
}
THREE_STAGES = (8, 16, 32)
SENSITIVITY = {
    "budget_x5": f"{5 * EPOCHS} epochs instead of {EPOCHS}",
    "lr_third": f"learning rate {LEARNING_RATE / 3:.4g} · B/{REFERENCE_BATCH} instead of "
    f"{LEARNING_RATE} · B/{REFERENCE_BATCH}",
    "lr_x3": f"learning rate {3 * LEARNING_RATE:.4g} · B/{REFERENCE_BATCH} instead of "
    f"{LEARNING_RATE} · B/{REFERENCE_BATCH}",
    "three_stages": f"channels {list(THREE_STAGES)} instead of {list(CHANNELS)}: a third stage "
    "at 2x2, where BatchNorm's statistics at batch 2 average 2·2·2 = 8 values per channel "
    "instead of 2·4·4 = 32 (how many values the batch statistics average: the setting the "
    "claims most likely depend on)",
}
SENSITIVITY_CHANGES = {
    "budget_x5": {"epochs": 5 * EPOCHS},
    "lr_third": {"learning_rate": LEARNING_RATE / 3},
    "lr_x3": {"learning_rate": 3 * LEARNING_RATE},
    "three_stages": {"channels": list(THREE_STAGES)},
}

RULES = {
    "learning_rate": f"{LEARNING_RATE} x B / {REFERENCE_BATCH} for batch size B (linear "
    f"scaling, Wu & He 2018), SGD momentum {MOMENTUM}, cosine-decayed to 0 over the budget, "
    "no warm-up, no weight decay",
    "budget": f"{EPOCHS} epochs for every norm and batch size (the last partial minibatch "
    "dropped), sized so that every norm fits the training set at the reference batch; float32",
    "test_accuracy": "eval-mode accuracy on the 359 test images at the end of the budget "
    "(BatchNorm: its running statistics, PyTorch convention, momentum 0.1)",
    "drop": f"drop(b) = mean over seeds s of D_s = acc({REFERENCE_BATCH}, s) - acc(b, s), in "
    "percentage points (pairs share the seed: the initial weights)",
    "falls": f"the accuracy falls at b if drop(b) >= {MIN_DROP:g} point and mean(D) > "
    f"t_({CONFIDENCE}, k-1) sd(D) / sqrt(k) (one-sided paired t-test at "
    f"{round(100 * (1 - CONFIDENCE))}%, k seeds, sample sd; with sd(D) = 0, mean(D) > 0)",
    "claim_batchnorm": f"holds if BatchNorm's test accuracy falls at batch {SMALLEST_BATCH}",
    "claim_batch_independent": "holds if neither LayerNorm's nor GroupNorm's test accuracy "
    f"falls at any batch size below {REFERENCE_BATCH}",
    "reported": "not decided on: the final training loss (mean of the last epoch's minibatch "
    "losses, train mode), the eval-mode training accuracy, every batch size's accuracy",
    "sensitivity": common.sensitivity_rule(SENSITIVITY)
    + "; a variant trains only the norms and batch sizes the claim's rule reads, on the same "
    "seeds",
}
LABELS = {
    "batchnorm": "BatchNorm",
    "layernorm": "LayerNorm",
    "groupnorm": f"GroupNorm ({GROUPS} groups)",
    "batch_size": "batch size",
    "learning_rate": "learning rate",
    "test_accuracy": "test accuracy (eval mode)",
    "train_accuracy": "training accuracy (eval mode)",
    "final_training_loss": "final training loss (last epoch's minibatches, train mode)",
    "loss_curve": "training loss per epoch",
    "drop": "drop from batch 32 (points)",
    "mean_drop": "mean drop (points)",
    "standard_error": "standard error of the drop (points)",
    "critical": "t critical value",
    "falls": "falls",
    "tests": "the fall tests, by norm and batch size",
    "claim_batchnorm": "(1) BatchNorm's test accuracy falls at small batches",
    "claim_batch_independent": "(2) LayerNorm's and GroupNorm's do not",
    "wu_he_error": "Wu & He 2018, Figure 1: ImageNet validation error (%)",
    "sensitivity": "sensitivity of a negative verdict",
    "seconds": "wall time (s)",
    "seconds_main": "wall time before the sensitivity analysis (s)",
    **{k: k.replace("_", " ") for k in SENSITIVITY},
}


def setup(quick: bool = False) -> dict[str, Any]:
    """The setup fixed before the run (preregistered with ``RULES``)."""
    channels = QUICK_CHANNELS if quick else CHANNELS
    return {
        "data": "jaxnn.data.digits(seed=0): 1079 train / 359 test 8x8 images, standardised, "
        "float32; the validation part is not used",
        "network": f"jaxnn.cnn({INPUT_SHAPE}, {list(channels)}, {CLASSES}, norm=..., "
        f"groups={GROUPS}): stem conv3x3, {len(channels)} stage(s) (8x8, 4x4; max pooling "
        "between) of one block of two conv3x3 -> norm, ReLU; global average pooling, dense head",
        "norms": list(NORMS),
        "groups": GROUPS,
        "channels": list(channels),
        "batch_sizes": list(QUICK_BATCH_SIZES if quick else BATCH_SIZES),
        "reference_batch": REFERENCE_BATCH,
        "seeds": list(QUICK_SEEDS if quick else SEEDS),
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "epochs": QUICK_EPOCHS if quick else EPOCHS,
        "loss": LOSS,
        "sensitivity": SENSITIVITY,
        "sensitivity_changes": SENSITIVITY_CHANGES,
        "wu_he_error": WU_HE_ERROR,
        "quick": quick,
    }


def network(norm: str, channels: Sequence[int] = CHANNELS) -> Layer:
    """The convolutional network with ``norm`` after every convolution (:func:`jaxnn.cnn`)."""
    return cnn(
        INPUT_SHAPE,
        channels,
        CLASSES,
        norm=norm,
        groups=GROUPS,
        param_dtype=jnp.float32,
        name=f"cnn_{norm}",
    )


def learning_rate(batch_size: int, base: float = LEARNING_RATE) -> float:
    """``base · batch_size / REFERENCE_BATCH`` (the linear scaling rule)."""
    return base * batch_size / REFERENCE_BATCH


def _accuracy_fn(net: Layer):
    """Eval-mode accuracy on the training and test sets, one compiled program per network."""

    @jax.jit
    def accuracy(params, state, x, y, x_test, y_test):
        logits, _ = net.apply(params, state, jnp.concatenate([x, x_test]), train=False)
        correct = jnp.argmax(logits, -1) == jnp.concatenate([y, y_test])
        n = x.shape[0]
        return jnp.mean(correct[:n]), jnp.mean(correct[n:])

    return accuracy


def train_runs(
    net: Layer,
    accuracy: Any,
    batch_size: int,
    config: dict[str, Any],
    data: tuple[Any, ...],
    bar: Any = None,
) -> dict[str, Any]:
    """Train ``net`` with minibatches of ``batch_size`` on every seed of ``config``.

    Returns ``{"learning_rate", "test_accuracy": [per seed], "train_accuracy": [...],
    "final_training_loss": [...], "loss_curve": [[per epoch] per seed]}``.
    """
    with jax.enable_x64(False):  # float32 by construction, in this thread too
        x, y = data[:2]
        lr = learning_rate(batch_size, config["learning_rate"])
        steps = len(x) // batch_size
        schedule = optax.cosine_decay_schedule(lr, config["epochs"] * steps)
        opt = optax.sgd(schedule, momentum=MOMENTUM)
        epoch = make_epoch(net, LOSS, opt, batch_size=batch_size)
        out: dict[str, Any] = {"learning_rate": lr, "loss_curve": []}
        for seed in config["seeds"]:
            ts = TrainState.create(net, opt, jax.random.key(seed), (batch_size, x.shape[1]))
            curve = []
            for _ in range(config["epochs"]):
                ts, losses = epoch(ts, x, y)
                curve.append(float(jnp.mean(losses)))
                if bar is not None:
                    bar.update(1)
            train_acc, test_acc = (float(a) for a in accuracy(ts.params, ts.state, *data))
            out["loss_curve"].append(curve)
            for key, value in (
                ("test_accuracy", test_acc),
                ("train_accuracy", train_acc),
                ("final_training_loss", curve[-1]),
            ):
                out.setdefault(key, []).append(value)
    return out


class _Bar:
    """A progress bar shared by the worker threads."""

    def __init__(self, total: int, desc: str) -> None:
        self._bar = common.progress(range(total), desc, total=total, unit="epoch")
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            if hasattr(self._bar, "update"):
                self._bar.update(n)

    def close(self) -> None:
        if hasattr(self._bar, "close"):
            self._bar.close()


def _data() -> tuple[np.ndarray, ...]:
    sp = digits(seed=0)
    return (sp.train.x, sp.train.y, sp.test.x, sp.test.y)


def train_all(
    norms: Sequence[str], batch_sizes: Sequence[int], config: dict[str, Any], desc: str
) -> dict[str, dict[str, Any]]:
    """Every (norm, batch size) of the grid, ``WORKERS`` at a time (threads).

    Returns ``{norm: {str(batch size): train_runs(...)}}``.
    """
    data = tuple(jnp.asarray(a) for a in _data())
    with jax.enable_x64(False):
        nets = {n: network(n, config["channels"]) for n in norms}
        accuracy = {n: _accuracy_fn(nets[n]) for n in norms}
    jobs = [(n, b) for n in norms for b in batch_sizes]
    bar = _Bar(len(jobs) * len(config["seeds"]) * config["epochs"], desc)
    # The small batches first: their epochs take the most updates.
    order = sorted(jobs, key=lambda j: j[1])
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {
            (n, b): pool.submit(train_runs, nets[n], accuracy[n], b, config, data, bar)
            for n, b in order
        }
        results = {j: f.result() for j, f in futures.items()}
    bar.close()
    return {n: {str(b): results[n, b] for b in batch_sizes} for n in norms}


# ----------------------------------------------------------------------------- the rules


def fall_test(reference: Sequence[float], small: Sequence[float]) -> dict[str, Any]:
    """``RULES["falls"]``: whether the accuracy falls from ``reference`` to ``small`` (per seed,
    fractions), in percentage points."""
    d = 100 * (np.asarray(reference, np.float64) - np.asarray(small, np.float64))
    k = len(d)
    if k < 2:
        raise ValueError(f"fall_test: the test needs at least 2 seeds, got {k}.")
    mean = float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(k))
    critical = float(stats.t.ppf(CONFIDENCE, k - 1))
    significant = mean > critical * se if se > 0 else mean > 0
    return {
        "mean_drop": mean,
        "standard_error": se,
        "critical": critical,
        "falls": bool(mean >= MIN_DROP and significant),
    }


def tests(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fall test of every norm at every batch size below the reference."""
    ref = str(REFERENCE_BATCH)
    return {
        norm: {
            b: fall_test(by_batch[ref]["test_accuracy"], r["test_accuracy"])
            for b, r in by_batch.items()
            if int(b) < REFERENCE_BATCH
        }
        for norm, by_batch in runs.items()
    }


def decide_batchnorm(runs: dict[str, dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """Claim 1 on ``runs`` (which hold BatchNorm's runs)."""
    t = tests({"batchnorm": runs["batchnorm"]})
    return t["batchnorm"][str(SMALLEST_BATCH)]["falls"], t


def decide_batch_independent(runs: dict[str, dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """Claim 2 on ``runs`` (which hold LayerNorm's and GroupNorm's runs)."""
    t = tests({n: runs[n] for n in BATCH_INDEPENDENT})
    return not any(v["falls"] for by_batch in t.values() for v in by_batch.values()), t


DECIDERS = {
    "claim_batchnorm": (("batchnorm",), decide_batchnorm),
    "claim_batch_independent": (BATCH_INDEPENDENT, decide_batch_independent),
}


def sensitivity(config: dict[str, Any], failed: Sequence[str]) -> dict[str, Any]:
    """The variants of ``SENSITIVITY`` for the claims in ``failed``: each changes one setting
    of ``config`` and trains only what the claims' rules read."""
    norms = [n for n in NORMS if any(n in DECIDERS[c][0] for c in failed)]
    if "claim_batch_independent" in failed:
        batches = [b for b in config["batch_sizes"] if b <= REFERENCE_BATCH]
    else:
        batches = [SMALLEST_BATCH, REFERENCE_BATCH]
    out = {}
    for name, change in SENSITIVITY_CHANGES.items():
        cfg = {**config, **change}
        runs = train_all(norms, batches, cfg, f"variant {name}")
        verdicts = {}
        for c in failed:
            holds, numbers = DECIDERS[c][1](runs)
            verdicts[c] = {"holds": holds, "numbers": numbers}
        out[name] = {
            "setting": SENSITIVITY[name],
            "change": change,
            "runs": runs,
            "verdicts": verdicts,
        }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Train every (norm, batch size, seed); decide the claims; the JSON-ready result."""
    start = time.perf_counter()
    cfg = setup(quick)
    jobs = len(NORMS) * len(cfg["batch_sizes"])
    runs = train_all(
        NORMS, cfg["batch_sizes"], cfg, f"{jobs} (norm, batch) x {len(cfg['seeds'])} seeds"
    )
    result: dict[str, Any] = {"quick": quick, "setup": cfg, "rules": RULES, "runs": runs}
    verdicts = {}
    for claim, (_, decide) in DECIDERS.items():
        verdicts[claim], _ = decide(runs)
    result["verdicts"], result["tests"] = verdicts, tests(runs)
    failed = [c for c, holds in verdicts.items() if not holds]
    if failed and quick:
        result["sensitivity_not_run"] = "quick mode: the variants need the full setup"
    elif failed:
        result["seconds_main"] = time.perf_counter() - start
        result["sensitivity"] = sensitivity(cfg, failed)
    result["claims"] = _claims(result)
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- claims, report


def _accuracies(runs: dict[str, Any], norm: str) -> str:
    by_batch = runs[norm]
    return ", ".join(
        f"{b}: {100 * np.mean(r['test_accuracy']):.1f}%"
        for b, r in sorted(by_batch.items(), key=lambda kv: int(kv[0]))
    )


def _falls_text(t: dict[str, Any]) -> str:
    return ", ".join(
        f"{b}: {v['mean_drop']:+.2f} ({'falls' if v['falls'] else 'does not fall'})"
        for b, v in sorted(t.items(), key=lambda kv: int(kv[0]))
    )


def _evidence(claim: str, runs: dict[str, Any], t: dict[str, Any]) -> str:
    norms = DECIDERS[claim][0]
    parts = [
        f"{LABELS[n]} mean test accuracy by batch size {_accuracies(runs, n)}; drop from "
        f"{REFERENCE_BATCH} in points {_falls_text(t[n])}"
        for n in norms
    ]
    wu_he = "; ".join(
        f"{LABELS[n].split(' (')[0]} {WU_HE_ERROR[n]['32']}% at 32, {WU_HE_ERROR[n]['2']}% at 2"
        for n in WU_HE_ERROR
    )
    return "; ".join(parts) + f". Wu & He's ImageNet validation error: {wu_he}"


CLAIM_TEXT = {
    "claim_batchnorm": "BatchNorm's test accuracy falls at small batches (Wu & He 2018, Figure 1)",
    "claim_batch_independent": "LayerNorm's and GroupNorm's test accuracy does not fall at "
    "small batches (Wu & He 2018)",
}


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    analysis = result.get("sensitivity")
    for claim, holds in result["verdicts"].items():
        robustness = None
        if analysis:
            variants = [
                common.variant(
                    name,
                    v["setting"],
                    v["verdicts"][claim]["holds"],
                    _evidence(claim, v["runs"], v["verdicts"][claim]["numbers"]),
                )
                for name, v in analysis.items()
                if claim in v["verdicts"]
            ]
            robustness = common.robustness(holds, variants) if variants else None
        out.append(
            common.claim(
                CLAIM_TEXT[claim],
                RULES[claim],
                holds,
                _evidence(claim, result["runs"], result["tests"]),
                f"{NAME}.png, panel (a)" + (", (b)" if claim == "claim_batchnorm" else ""),
                robustness=robustness,
            )
        )
    return out


def report(result: dict[str, Any]) -> str:
    """The printed report: test accuracy and training loss by norm and batch size; verdicts."""
    runs, cfg = result["runs"], result["setup"]
    batches = [str(b) for b in cfg["batch_sizes"]]
    acc_rows = [
        (LABELS[n], *(f"{100 * np.mean(runs[n][b]['test_accuracy']):.1f}" for b in batches))
        for n in NORMS
    ]
    loss_rows = [
        (LABELS[n], *(f"{np.mean(runs[n][b]['final_training_loss']):.4f}" for b in batches))
        for n in NORMS
    ]
    lines = [
        f"{len(cfg['seeds'])} seeds, {cfg['epochs']} epochs, learning rate {LEARNING_RATE} x B/"
        f"{REFERENCE_BATCH}{', quick' if result['quick'] else ''}; mean over seeds",
        "test accuracy (%, eval mode)",
        common.table(acc_rows, ("norm \\ batch", *batches)),
        "final training loss",
        common.table(loss_rows, ("norm \\ batch", *batches)),
    ]
    for c in result["claims"]:
        lines.append(f"{c['claim']}: {'HOLDS' if c['holds'] else 'DOES NOT HOLD'}. {c['evidence']}")
        if "robustness" in c:
            lines.append("  " + c["robustness"]["sentence"])
    if "sensitivity_not_run" in result:
        lines.append(f"{LABELS['sensitivity']}: {result['sensitivity_not_run']}")
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)


COLORS = {"batchnorm": "tab:red", "layernorm": "tab:green", "groupnorm": "tab:blue"}


def figure(result: dict[str, Any]) -> Figure:
    """(a) test accuracy against batch size, per norm; (b) the drop from batch 32 with the fall
    threshold; (c) the final training loss against batch size."""
    runs, cfg = result["runs"], result["setup"]
    batches = [int(b) for b in cfg["batch_sizes"]]
    analysis = result.get("sensitivity")
    fig = plots.figure((21, 5) if analysis else (16, 5))
    a, b, c, *rest = fig.subplots(1, 4 if analysis else 3)
    verdict = "; ".join(
        f"{LABELS[k]}: {'holds' if v else 'does not hold'}" for k, v in result["verdicts"].items()
    )
    fig.suptitle(
        f"Normalisation and batch size on digits ({len(cfg['seeds'])} seeds, {cfg['epochs']} "
        f"epochs, learning rate {LEARNING_RATE} x B/{REFERENCE_BATCH}"
        f"{', quick' if result['quick'] else ''})\n{verdict}",
        fontsize=10,
    )
    for norm in NORMS:
        acc = [100 * np.asarray(runs[norm][str(bs)]["test_accuracy"]) for bs in batches]
        for bs, v in zip(batches, acc, strict=True):
            a.plot([bs] * len(v), v, "o", color=COLORS[norm], mfc="none", alpha=0.5)
        a.plot(batches, [v.mean() for v in acc], "-", color=COLORS[norm], label=LABELS[norm])
        drops = [
            result["tests"][norm][str(bs)]["mean_drop"] for bs in batches if bs < REFERENCE_BATCH
        ]
        small = [bs for bs in batches if bs < REFERENCE_BATCH]
        b.plot(small, drops, "o-", color=COLORS[norm], label=LABELS[norm])
        loss = [np.mean(runs[norm][str(bs)]["final_training_loss"]) for bs in batches]
        c.plot(batches, loss, "o-", color=COLORS[norm], label=LABELS[norm])
    b.axhline(MIN_DROP, color="k", ls=":", lw=1, label=f"{MIN_DROP:g} point (the rule's minimum)")
    b.axhline(0, color="0.5", lw=0.8)
    for panel, title, ylabel, scale in (
        (a, "(a) test accuracy (eval mode); dots: seeds", "test accuracy (%)", "linear"),
        (
            b,
            f"(b) drop from batch {REFERENCE_BATCH} (mean over seeds)",
            "drop (percentage points)",
            "linear",
        ),
        (c, "(c) final training loss (train mode)", "training loss", "log"),
    ):
        plots.finish(
            panel,
            title,
            legend={},
            xlabel=LABELS["batch_size"],
            ylabel=ylabel,
            xscale="log",
            yscale=scale,
        )
        ticks = [bs for bs in batches if panel is not b or bs < REFERENCE_BATCH]
        panel.set_xticks(ticks, [str(bs) for bs in ticks])
        panel.minorticks_off()
    if analysis:
        _sensitivity_panel(rest[0], result)
    return fig


def _sensitivity_panel(ax: Any, result: dict[str, Any]) -> None:
    """(d) the drop of each norm a failed claim reads, at the batch sizes below 32, in the
    original run and in every variant of the sensitivity analysis."""
    analysis = result["sensitivity"]
    columns = {"original": result["tests"]}
    for name, v in analysis.items():
        columns[name] = {n: t for c in v["verdicts"].values() for n, t in c["numbers"].items()}
    norms = [n for n in NORMS if all(n in t for t in columns.values())]
    pos = np.arange(len(columns))
    for i, norm in enumerate(norms):
        for j, t in enumerate(columns.values()):
            drops = [d["mean_drop"] for d in t[norm].values()]
            x = pos[j] + 0.12 * (i - (len(norms) - 1) / 2)
            ax.plot(
                [x] * len(drops),
                drops,
                "o",
                color=COLORS[norm],
                mfc="none",
                label=LABELS[norm] if j == 0 else None,
            )
    ax.axhline(MIN_DROP, color="k", ls=":", lw=1)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(pos, [k.replace("_", " ") for k in columns], fontsize=8)
    plots.finish(
        ax,
        f"(d) sensitivity: drops from {REFERENCE_BATCH} at each batch below it",
        legend={},
        grid="y",
        ylabel="drop (percentage points)",
    )


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``norm_batch_size.json`` and ``.png``; print the report.

    The setup and the rules are written to ``norm_batch_size.preregistered.json`` before any
    training (:func:`jaxnn_experiments.common.preregister`).
    """
    common.preregister(NAME, out_dir, setup(quick), RULES)
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
