"""Depth and residual connections: He et al. (2016) at small scale, on the 8x8 digits.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, found that a
deeper *plain* network, trained the same way as a shallower one, ends with a *higher training
error* (ImageNet top-1 validation error, Table 2: plain-18 27.94 %, plain-34 28.54 %; Figure
4 shows the training error higher too), that the same networks with identity shortcuts do not
degrade (residual-18 27.88 %, residual-34 25.03 %), and that the degradation is not vanishing
gradients: their plain networks have BatchNorm, and "we also verify that the backward
propagated gradients exhibit healthy norms with BN. So neither forward nor backward signals
vanish" (§4.1). Three claims, tested here:

1. *The deeper plain network ends with a higher training loss than the shallower one.*
2. *The residual networks do not degrade with depth.*
3. *The plain networks' per-layer gradient norms do not vanish* (at initialisation and during
   training), read from the hand-derived backward (:func:`jaxnn.backprop.layer_gradients`).

**Networks.** :func:`jaxnn.cnn` with He et al.'s CIFAR-10 layout (§4.2): a 3x3 stem, three
stages of ``CHANNELS`` channels at 8x8, 4x4 and 2x2 (max pooling between them), ``n`` blocks
per stage (``BLOCKS``), each block two ``conv3x3 -> BatchNorm`` with ReLU, global average
pooling, a dense head: ``6n + 2`` weighted layers (8, 20, 32). The residual network is the
same with ``act(block(x) + shortcut(x))``: the identity, or ``conv1x1 -> BatchNorm`` where a
stage changes the channels (option B).

**Training: one budget for all, fixed before the run.** He et al. train every network with
the same schedule and read the error at its end; their claim is about what a network reaches
*with that budget* (they conjecture that deep plain networks "have exponentially low
convergence rates"). So the budget is part of the claim, and is fixed here before the run:
``EPOCHS`` epochs of SGD with momentum ``MOMENTUM``, minibatches of ``BATCH``, a learning rate
warmed up linearly from 0 over ``WARMUP_EPOCHS`` epochs to ``LEARNING_RATE`` and decayed to 0
by a cosine (Goyal et al. 2017's warm-up, which deep residual networks need to start: He et
al. warm up their 110-layer network too), the same for every network and seed. The budget
was sized so that the shallowest plain network fits the training set (training loss of a few
hundredths), so that what the deeper ones lack is the budget's fit, not the data's. The
sensitivity analysis of a negative verdict multiplies it by 5. Float32, the autodiff path for
training (the hand-derived path gives the same gradients to rounding: ``tests/test_train.py``
and the gradient audit); each seed sets the initial weights and the minibatch order
(:class:`jaxnn.train.TrainState`), so the networks of one seed see the same minibatches.

**What is measured.** The training loss of every epoch, the mean of its minibatch losses
(train mode, as He et al.'s thin training curves); at the epochs of ``CHECKPOINTS``, on the
whole training set in train mode, every weighted layer's ``‖∂L/∂W_l‖_F`` and, for the plain
networks, each convolution's backpropagated ``‖δ_l‖_F = ‖∂L/∂z_l‖_F`` (``z_l`` its output) and
the standard deviation of ``z_l`` (the forward signal), all from the layers' hand-derived
VJPs (:func:`jaxnn.backprop.layer_gradients`); and at the end the eval-mode training error
and test accuracy (BatchNorm's running statistics).

**Statistics.** "Degrades" (claims 1 and 2) is one test: the paired differences ``D_s =
L_deep(s) − L_shallow(s)`` of the final training loss over the seeds (pairs share the
minibatch order) have a mean above ``t_{0.95, k−1} · sd(D)/√k`` (a one-sided paired t-test at
5 %). Claim 1 holds if the plain networks degrade from the shallowest depth to the deepest;
claim 2 if no residual network degrades from the shallowest depth to a deeper one. Claim 3
holds if, in every plain network, seed and checkpoint, the smallest ``‖∂L/∂W_l‖`` over the
weighted layers is at least ``VANISHING_THRESHOLD`` times the head's (the threshold at which
``vanishing_gradients`` calls a gradient vanished).

``RULES`` (fixed before the run and written to ``depth_residual.preregistered.json`` before
any training) decides the claims; a claim that does not hold is checked against the variants
of ``SENSITIVITY``. ``main(out_dir, quick=True)`` runs the same code on two stages
(``QUICK_CHANNELS``) and two depths (``QUICK_BLOCKS``: 6 and 10 layers), two seeds and
``QUICK_EPOCHS`` epochs, without the sensitivity analysis.
Networks train two at a time in threads (each compiled program mostly runs on one core).
Writes ``depth_residual.json`` and ``.png``.
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

from jaxnn import Layer, backprop
from jaxnn.combinators import layer_keys
from jaxnn.data import digits
from jaxnn.networks import cnn
from jaxnn.train import TrainState, make_epoch
from jaxnn_experiments import common, plots

NAME = "depth_residual"
FAMILIES = ("plain", "residual")
INPUT_SHAPE = (8, 8, 1)
CLASSES = 10
CHANNELS = (4, 8, 16)
BLOCKS = (1, 3, 5)  # blocks per stage: 6n + 2 = 8, 20, 32 weighted layers
SEEDS = (0, 1, 2)
BATCH = 64
LEARNING_RATE = 0.05
MOMENTUM = 0.9
WARMUP_EPOCHS = 2
EPOCHS = 12
CHECKPOINTS = (0, 1, EPOCHS // 2, EPOCHS)
QUICK_BLOCKS = (1, 2)  # with QUICK_CHANNELS: 6 and 10 layers
QUICK_CHANNELS = (4, 8)  # two stages: fewer layers to compile
QUICK_SEEDS = (0, 1)
QUICK_EPOCHS = 3
QUICK_CHECKPOINTS = (0, QUICK_EPOCHS)
LOSS = "softmax_cross_entropy_with_integer_labels"
CONFIDENCE = 0.95  # the one-sided paired t-test of "degrades"
VANISHING_THRESHOLD = 1e-3  # vanishing_gradients' threshold: a layer's gradient 1000x smaller
WORKERS = 2  # networks trained at once (threads)
# He et al. 2016, Table 2: ImageNet top-1 error (%, 10-crop testing) of the plain and residual
# networks of 18 and 34 layers.
HE_TOP1 = {"plain_18": 27.94, "plain_34": 28.54, "residual_18": 27.88, "residual_34": 25.03}
DEEPER_BLOCKS = (1, 3, 7)  # the depth variant: 44 layers as the deepest
SENSITIVITY = {
    "budget_x5": f"{5 * EPOCHS} epochs instead of {EPOCHS} (the warm-up unchanged)",
    "lr_third": f"learning rate {LEARNING_RATE / 3:.4g} instead of {LEARNING_RATE}",
    "lr_x3": f"learning rate {3 * LEARNING_RATE:.4g} instead of {LEARNING_RATE}",
    "deeper": f"blocks per stage {list(DEEPER_BLOCKS)} instead of {list(BLOCKS)}: "
    f"{6 * DEEPER_BLOCKS[-1] + 2} layers as the deepest instead of {6 * BLOCKS[-1] + 2} (depth: "
    "the setting degradation and vanishing gradients most likely depend on)",
}
SENSITIVITY_CHANGES = {
    "budget_x5": {"epochs": 5 * EPOCHS},
    "lr_third": {"learning_rate": LEARNING_RATE / 3},
    "lr_x3": {"learning_rate": 3 * LEARNING_RATE},
    "deeper": {"blocks": list(DEEPER_BLOCKS)},
}


def depth(blocks: int, stages: int = len(CHANNELS)) -> int:
    """Weighted layers of a network of ``blocks`` per stage: the stem, 2 per block, the head."""
    return 2 + 2 * blocks * stages


RULES = {
    "final_training_loss": "the mean of the minibatch losses (softmax cross-entropy, train "
    "mode) of the last epoch of the budget",
    "budget": f"every network and seed: {EPOCHS} epochs of SGD, momentum {MOMENTUM}, batch "
    f"{BATCH} (the last partial minibatch dropped), learning rate warmed up linearly from 0 "
    f"over {WARMUP_EPOCHS} epochs to {LEARNING_RATE}, then cosine-decayed to 0 at the end; "
    "float32; no weight decay",
    "degrades": "a family degrades from depth a to a deeper depth b if the paired differences "
    "D_s = final_training_loss(b, s) - final_training_loss(a, s) over the seeds s have mean > "
    f"t_({CONFIDENCE}, k-1) sd(D) / sqrt(k) (one-sided paired t-test at "
    f"{round(100 * (1 - CONFIDENCE))}%, k seeds, sample sd; with sd(D) = 0, mean > 0)",
    "claim_degradation": "holds if the plain networks degrade from the shallowest depth to "
    "the deepest",
    "claim_residual": "holds if no residual network degrades from the shallowest depth to any "
    "deeper depth",
    "gradient_norms": "at the end of the epochs of the checkpoints (0: at initialisation), on "
    "the whole training set in train mode, ||dL/dW_l||_F of every weighted layer on the main "
    "path (the stem, each block's two convolutions, the dense head; not the projections), from "
    "the layers' hand-derived VJPs (jaxnn.backprop.layer_gradients)",
    "claim_gradients": "holds if, in every plain network, seed and checkpoint, min_l "
    f"||dL/dW_l||_F / ||dL/dW_head||_F >= {VANISHING_THRESHOLD:g}",
    "reported": "not decided on: the eval-mode training error and test accuracy at the end, "
    "each plain convolution's ||delta_l||_F (the gradient w.r.t. its output) and the standard "
    "deviation of its output at each checkpoint, the residual networks' gradient norms",
    "sensitivity": common.sensitivity_rule(SENSITIVITY)
    + "; a variant trains only the networks the claim's rule reads, on the same seeds",
}
LABELS = {
    "plain": "plain",
    "residual": "residual",
    "depth": "weighted layers",
    "blocks": "blocks per stage",
    "loss_curve": "training loss per epoch (mean of the minibatch losses, train mode)",
    "final_training_loss": "final training loss",
    "train_error": "training error (eval mode)",
    "train_loss_eval": "training loss (eval mode)",
    "test_accuracy": "test accuracy (eval mode)",
    "checkpoints": "gradient measurements, by epoch",
    "grad_w_norm": "‖∂L/∂W_l‖_F, main-path weighted layers in order",
    "projection_grad_w_norm": "‖∂L/∂W‖_F of the projection shortcuts",
    "delta_norm": "‖δ_l‖_F = ‖∂L/∂z_l‖_F at each convolution's output (plain)",
    "forward_std": "std of each convolution's output z_l (plain)",
    "min_over_head": "min_l ‖∂L/∂W_l‖ / ‖∂L/∂W_head‖",
    "max_over_head": "max_l ‖∂L/∂W_l‖ / ‖∂L/∂W_head‖",
    "measured_loss": "training loss, whole training set, train mode",
    "degradation": "the degradation test",
    "mean_difference": "mean paired difference of final training loss (deep - shallow)",
    "standard_error": "its standard error",
    "critical": "t critical value",
    "degrades": "degrades",
    "claim_degradation": "(1) the deeper plain network ends with a higher training loss",
    "claim_residual": "(2) the residual networks do not degrade with depth",
    "claim_gradients": "(3) the plain networks' gradients do not vanish",
    "he_top1": "He et al. 2016, Table 2: ImageNet top-1 error (%)",
    "sensitivity": "sensitivity of a negative verdict",
    "seconds": "wall time (s)",
    "seconds_main": "wall time before the sensitivity analysis (s)",
    **{k: k.replace("_", " ") for k in SENSITIVITY},
}


# ----------------------------------------------------------------------------- setup


def setup(quick: bool = False) -> dict[str, Any]:
    """The setup fixed before the run (preregistered with ``RULES``)."""
    blocks = QUICK_BLOCKS if quick else BLOCKS
    epochs = QUICK_EPOCHS if quick else EPOCHS
    channels = QUICK_CHANNELS if quick else CHANNELS
    return {
        "data": "jaxnn.data.digits(seed=0): 1079 train / 359 test 8x8 images, standardised, "
        "float32; the validation part is not used",
        "network": f"jaxnn.cnn({INPUT_SHAPE}, {list(channels)}, {CLASSES}, blocks_per_stage=n, "
        f"residual=False/True, norm='batchnorm'): stem conv3x3, {len(channels)} stages (8x8, "
        "4x4, 2x2; max pooling between), n blocks of two conv3x3 -> BatchNorm, ReLU; residual: identity "
        "shortcut, conv1x1 -> BatchNorm where the channels change; global average pooling, "
        "dense head; He-normal convolutions, the library's default dense head",
        "channels": list(channels),
        "blocks": list(blocks),
        "depths": [depth(n, len(channels)) for n in blocks],
        "seeds": list(QUICK_SEEDS if quick else SEEDS),
        "batch_size": BATCH,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "warmup_epochs": 1 if quick else WARMUP_EPOCHS,
        "epochs": epochs,
        "checkpoints": list(QUICK_CHECKPOINTS if quick else CHECKPOINTS),
        "loss": LOSS,
        "gradient_path": "training: autodiff; the measurements: the hand-derived VJPs",
        "sensitivity": SENSITIVITY,
        "sensitivity_changes": SENSITIVITY_CHANGES,
        "he_top1": HE_TOP1,
        "quick": quick,
    }


def network(blocks: int, family: str, channels: Sequence[int] = CHANNELS) -> Layer:
    """The plain or residual network of ``blocks`` blocks per stage (:func:`jaxnn.cnn`)."""
    return cnn(
        INPUT_SHAPE,
        channels,
        CLASSES,
        blocks_per_stage=blocks,
        residual=family == "residual",
        norm="batchnorm",
        param_dtype=jnp.float32,
        name=f"{family}_{depth(blocks, len(channels))}",
    )


def optimizer(learning_rate: float, epochs: int, warmup: int, steps_per_epoch: int):
    """SGD with momentum; linear warm-up over ``warmup`` epochs, cosine decay to 0 at the end."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup * steps_per_epoch, epochs * steps_per_epoch, end_value=0.0
    )
    return optax.sgd(schedule, momentum=MOMENTUM)


# ----------------------------------------------------------------------------- measurement


def _suffix(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def main_path(net: Layer, params: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """Where each weighted layer's kernel sits in ``params``, in the order the layers run.

    Returns ``(main, projections)``: lists of key paths (tuples) to the ``"w"`` of the stem,
    each block's two convolutions and the dense head; and of the projection shortcuts.
    """
    main, projections = [], []
    for key, child in zip(layer_keys(net), net.children, strict=True):
        if child.name in ("conv2d", "dense"):
            main.append((key, "w"))
        elif key in params and "block" in params[key]:  # a residual block
            block = params[key]["block"]
            main += [(key, "block", k, "w") for k in sorted(block, key=_suffix) if "w" in block[k]]
            for k in sorted(params[key].get("shortcut", {}), key=_suffix):
                if "w" in params[key]["shortcut"][k]:
                    projections.append((key, "shortcut", k, "w"))
    return main, projections


def _get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _measure_fn(net: Layer, params: dict[str, Any]):
    """One compiled function per network: the per-layer gradients, the eval-mode scores."""
    main, projections = main_path(net, params)
    convs = layer_keys(net, "conv2d")  # top-level convolutions: every one in a plain network

    @jax.jit
    def measure(params, state, x, y, x_test, y_test):
        loss, layers, _ = backprop.layer_gradients(net, LOSS, params, state, x, y, train=True)
        grads = {k: g.dparams for k, g in layers.items()}
        out = {
            "measured_loss": loss,
            "grad_w_norm": jnp.stack([jnp.linalg.norm(_get(grads, p)) for p in main]),
            "delta_norm": jnp.stack([jnp.linalg.norm(layers[k].dy) for k in convs]),
            "forward_std": jnp.stack([jnp.std(layers[k].y) for k in convs]),
        }
        if projections:
            out["projection_grad_w_norm"] = jnp.stack(
                [jnp.linalg.norm(_get(grads, p)) for p in projections]
            )
        # eval mode (running statistics): one forward pass over the training and test sets
        logits, _ = net.apply(params, state, jnp.concatenate([x, x_test]), train=False)
        n = x.shape[0]
        for part, (lg, ys) in (("train", (logits[:n], y)), ("test", (logits[n:], y_test))):
            out[f"{part}_accuracy"] = jnp.mean(jnp.argmax(lg, -1) == ys)
            out[f"{part}_loss_eval"] = jnp.mean(
                optax.softmax_cross_entropy_with_integer_labels(lg, ys)
            )
        return out

    return measure


def _floats(tree: Any) -> Any:
    """JSON-ready: arrays to (lists of) floats."""
    return jax.tree.map(lambda a: np.asarray(a, np.float64).tolist(), tree)


def train_network(
    family: str,
    blocks: int,
    config: dict[str, Any],
    data: Any,
    bar: Any = None,
) -> dict[str, Any]:
    """Train one network on every seed of ``config``; its curves and checkpoints, per seed.

    ``config``: ``seeds``, ``epochs``, ``warmup_epochs``, ``learning_rate``, ``checkpoints``
    and ``channels``. Returns ``{"depth", "seeds": [...], "final_training_loss": [...],
    "train_error": [...], "test_accuracy": [...], "loss_curve": [[...]], "checkpoints": {epoch:
    {...: [per seed]}}}``.
    """
    with jax.enable_x64(False):  # float32 by construction, in this thread too
        net = network(blocks, family, config["channels"])
        x, y, x_test, y_test = data
        steps = len(x) // BATCH
        opt = optimizer(config["learning_rate"], config["epochs"], config["warmup_epochs"], steps)
        epoch = make_epoch(net, LOSS, opt, batch_size=BATCH)
        measure = None
        out: dict[str, Any] = {
            "depth": depth(blocks, len(config["channels"])),
            "seeds": list(config["seeds"]),
            "loss_curve": [],
            "checkpoints": {},
        }
        for seed in config["seeds"]:
            ts = TrainState.create(net, opt, jax.random.key(seed), (BATCH, x.shape[1]))
            if measure is None:
                measure = _measure_fn(net, ts.params)
            curve, last = [], None
            for e in range(config["epochs"] + 1):
                if e > 0:
                    ts, losses = epoch(ts, x, y)
                    curve.append(float(jnp.mean(losses)))
                    if bar is not None:
                        bar.update(1)
                if e in config["checkpoints"] or e == config["epochs"]:
                    last = jax.device_get(measure(ts.params, ts.state, x, y, x_test, y_test))
                    if e in config["checkpoints"]:
                        record = out["checkpoints"].setdefault(str(e), {})
                        for k, v in _floats(last).items():
                            record.setdefault(k, []).append(v)
            out["loss_curve"].append(curve)
            for key, value in (
                ("final_training_loss", curve[-1]),
                ("train_error", 1 - float(last["train_accuracy"])),
                ("train_loss_eval", float(last["train_loss_eval"])),
                ("test_accuracy", float(last["test_accuracy"])),
            ):
                out.setdefault(key, []).append(value)
    return out


def _data() -> tuple[np.ndarray, ...]:
    sp = digits(seed=0)
    return (sp.train.x, sp.train.y, sp.test.x, sp.test.y)


def train_all(
    jobs: Sequence[tuple[str, int]], config: dict[str, Any], desc: str
) -> dict[str, dict[str, Any]]:
    """Train the ``(family, blocks)`` networks of ``jobs``, ``WORKERS`` at a time (threads).

    Returns ``{family: {str(depth): train_network(...)}}``.
    """
    data = tuple(jnp.asarray(a) for a in _data())
    total = len(jobs) * len(config["seeds"]) * config["epochs"]
    lock = threading.Lock()
    bar = common.progress(range(total), desc, total=total, unit="epoch")

    class _Bar:  # a thread-safe update of the shared bar
        def update(self, n: int) -> None:
            with lock:
                if hasattr(bar, "update"):
                    bar.update(n)

    # The deepest networks first: the longest jobs start while the others queue.
    order = sorted(jobs, key=lambda j: -j[1])
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {j: pool.submit(train_network, *j, config, data, _Bar()) for j in order}
        results = {j: f.result() for j, f in futures.items()}
    if hasattr(bar, "close"):
        bar.close()
    out: dict[str, dict[str, Any]] = {}
    for family, blocks in jobs:
        key = str(depth(blocks, len(config["channels"])))
        out.setdefault(family, {})[key] = results[family, blocks]
    return out


# ----------------------------------------------------------------------------- the rules


def degradation(shallow: Sequence[float], deep: Sequence[float]) -> dict[str, Any]:
    """``RULES["degrades"]``: the one-sided paired t-test of ``deep > shallow`` over seeds."""
    d = np.asarray(deep, np.float64) - np.asarray(shallow, np.float64)
    k = len(d)
    if k < 2:
        raise ValueError(f"degradation: the test needs at least 2 seeds, got {k}.")
    mean = float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(k))
    critical = float(stats.t.ppf(CONFIDENCE, k - 1))
    degrades = mean > critical * se if se > 0 else mean > 0
    return {
        "mean_difference": mean,
        "standard_error": se,
        "critical": critical,
        "degrades": bool(degrades),
    }


def decide_degradation(runs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 1 on ``runs`` (``{str(depth): ...}`` of the plain family)."""
    depths = sorted(runs, key=int)
    test = degradation(
        runs[depths[0]]["final_training_loss"], runs[depths[-1]]["final_training_loss"]
    )
    return test["degrades"], {f"from_{depths[0]}_to_{depths[-1]}": test}


def decide_residual(runs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 2 on ``runs`` (``{str(depth): ...}`` of the residual family)."""
    depths = sorted(runs, key=int)
    tests = {
        f"from_{depths[0]}_to_{d}": degradation(
            runs[depths[0]]["final_training_loss"], runs[d]["final_training_loss"]
        )
        for d in depths[1:]
    }
    return not any(t["degrades"] for t in tests.values()), tests


def min_over_head(grad_w_norm: Sequence[float]) -> float:
    """``min_l ‖∂L/∂W_l‖ / ‖∂L/∂W_head‖`` (the head is the last weighted layer)."""
    head = grad_w_norm[-1]
    return min(grad_w_norm) / head if head > 0 else math.nan


def max_over_head(grad_w_norm: Sequence[float]) -> float:
    """``max_l ‖∂L/∂W_l‖ / ‖∂L/∂W_head‖``: above 1 where the gradient grows towards the input."""
    head = grad_w_norm[-1]
    return max(grad_w_norm) / head if head > 0 else math.nan


def decide_gradients(runs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 3 on ``runs`` (``{str(depth): ...}`` of the plain family): the ratios per
    depth, checkpoint and seed, and whether every one is at least the threshold."""
    ratios = {
        d: {e: [min_over_head(g) for g in c["grad_w_norm"]] for e, c in r["checkpoints"].items()}
        for d, r in runs.items()
    }
    values = [v for by_epoch in ratios.values() for vs in by_epoch.values() for v in vs]
    holds = all(math.isfinite(v) and v >= VANISHING_THRESHOLD for v in values)
    return holds, ratios


DECIDERS = {
    "claim_degradation": ("plain", decide_degradation),
    "claim_residual": ("residual", decide_residual),
    "claim_gradients": ("plain", decide_gradients),
}


def _needed_blocks(claim: str, blocks: Sequence[int]) -> list[int]:
    """The depths a claim's rule reads: claim 1 the shallowest and the deepest, else all."""
    return [blocks[0], blocks[-1]] if claim == "claim_degradation" else list(blocks)


def sensitivity(config: dict[str, Any], failed: Sequence[str]) -> dict[str, Any]:
    """The variants of ``SENSITIVITY`` for the claims in ``failed``: each changes one setting
    of ``config`` and trains only the networks the claims' rules read."""
    out = {}
    for name, change in SENSITIVITY_CHANGES.items():
        cfg = {**config, **change}
        blocks = cfg["blocks"]
        if "epochs" in change:
            cfg["checkpoints"] = sorted({0, 1, cfg["epochs"] // 2, cfg["epochs"]})
        jobs = sorted({(DECIDERS[c][0], n) for c in failed for n in _needed_blocks(c, blocks)})
        runs = train_all(jobs, cfg, f"variant {name}")
        verdicts = {}
        for c in failed:
            family, decide = DECIDERS[c]
            holds, numbers = decide(runs[family])
            verdicts[c] = {"holds": holds, "numbers": numbers}
        out[name] = {
            "setting": SENSITIVITY[name],
            "change": change,
            "runs": runs,
            "verdicts": verdicts,
        }
    return out


# ----------------------------------------------------------------------------- run


def run(quick: bool = False) -> dict[str, Any]:
    """Train every network, decide the claims; the JSON-ready result."""
    start = time.perf_counter()
    cfg = setup(quick)
    config = dict(cfg)
    jobs = [(f, n) for f in FAMILIES for n in cfg["blocks"]]
    runs = train_all(jobs, config, f"{len(jobs)} networks x {len(cfg['seeds'])} seeds")
    result: dict[str, Any] = {"quick": quick, "setup": cfg, "rules": RULES, "runs": runs}
    verdicts, numbers = {}, {}
    for claim, (family, decide) in DECIDERS.items():
        verdicts[claim], numbers[claim] = decide(runs[family])
    result["verdicts"], result["tests"] = verdicts, numbers
    failed = [c for c, holds in verdicts.items() if not holds]
    if failed and quick:
        result["sensitivity_not_run"] = "quick mode: the variants need the full setup"
    elif failed:
        result["seconds_main"] = time.perf_counter() - start
        result["sensitivity"] = sensitivity(config, failed)
    result["claims"] = _claims(result)
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- claims, report


def _mean_sd(values: Sequence[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _losses(runs: dict[str, Any]) -> str:
    return ", ".join(
        f"{d} layers {_mean_sd(r['final_training_loss'])}"
        for d, r in sorted(runs.items(), key=lambda kv: int(kv[0]))
    )


def _test_text(tests: dict[str, Any]) -> str:
    return "; ".join(
        f"{k.removeprefix('from_').replace('_to_', ' -> ')} layers: mean difference {t['mean_difference']:+.4f}, "
        f"{t['critical']:.2f} x SE = {t['critical'] * t['standard_error']:.4f}, "
        f"{'degrades' if t['degrades'] else 'does not degrade'}"
        for k, t in tests.items()
    )


def _evidence(claim: str, runs: dict[str, Any], numbers: dict[str, Any]) -> str:
    if claim == "claim_degradation":
        return (
            f"final training loss of the plain networks (mean ± sd over seeds): "
            f"{_losses(runs['plain'])}; {_test_text(numbers)}. He et al.'s ImageNet top-1 "
            f"error: plain-18 {HE_TOP1['plain_18']}%, plain-34 {HE_TOP1['plain_34']}%"
        )
    if claim == "claim_residual":
        return (
            f"final training loss of the residual networks (mean ± sd over seeds): "
            f"{_losses(runs['residual'])}; {_test_text(numbers)}. He et al.: residual-18 "
            f"{HE_TOP1['residual_18']}%, residual-34 {HE_TOP1['residual_34']}%"
        )
    parts, growth = [], []
    for d, by_epoch in sorted(numbers.items(), key=lambda kv: int(kv[0])):
        lowest = min((v, e) for e, vs in by_epoch.items() for v in vs)
        parts.append(f"{d} layers: lowest {lowest[0]:.3g} (epoch {lowest[1]})")
        first = min(runs["plain"][d]["checkpoints"], key=int)
        grads = runs["plain"][d]["checkpoints"][first]["grad_w_norm"]
        growth.append(f"{d} layers {max(max_over_head(g) for g in grads):.3g}")
    return (
        f"min_l ||dL/dW_l|| / ||dL/dW_head|| over every seed and checkpoint (threshold "
        f"{VANISHING_THRESHOLD:g}): " + "; ".join(parts) + ". Reported: at epoch "
        f"{first}, the largest max_l ||dL/dW_l|| / ||dL/dW_head|| over the seeds (above 1: "
        "the gradient grows towards the input): " + ", ".join(growth)
    )


CLAIM_TEXT = {
    "claim_degradation": "The deeper plain network ends with a higher training error (here: "
    "training loss) than the shallower one, trained with the same budget (He et al. 2016, "
    "the degradation problem)",
    "claim_residual": "The residual networks do not degrade with depth (He et al. 2016)",
    "claim_gradients": "The degradation is not vanishing gradients: the plain networks' "
    "per-layer gradient norms do not vanish, at initialisation or during training (He et al. "
    "2016, §4.1: 'neither forward nor backward signals vanish')",
}
CLAIM_FIGURE = {
    "claim_degradation": f"{NAME}.png, panels (a, b)",
    "claim_residual": f"{NAME}.png, panels (a, b)",
    "claim_gradients": f"{NAME}.png, panels (d, e, f)",
}


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for claim, holds in result["verdicts"].items():
        robustness = None
        analysis = result.get("sensitivity")
        if analysis:
            variants = [
                common.variant(
                    name,
                    v["setting"],
                    v["verdicts"][claim]["holds"],
                    _evidence(
                        claim,
                        {DECIDERS[claim][0]: v["runs"][DECIDERS[claim][0]]},
                        v["verdicts"][claim]["numbers"],
                    ),
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
                _evidence(claim, result["runs"], result["tests"][claim]),
                CLAIM_FIGURE[claim],
                robustness=robustness,
            )
        )
    return out


def report(result: dict[str, Any]) -> str:
    """The printed report: losses, errors, accuracies; gradient ratios; the verdicts."""
    runs, cfg = result["runs"], result["setup"]
    rows = []
    for family in FAMILIES:
        for d, r in sorted(runs[family].items(), key=lambda kv: int(kv[0])):
            rows.append(
                (
                    f"{family}-{d}",
                    _mean_sd(r["final_training_loss"]),
                    f"{np.mean(r['train_error']):.4f}",
                    f"{np.mean(r['test_accuracy']):.4f}",
                )
            )
    grad_rows = []
    for family in FAMILIES:
        for d, r in sorted(runs[family].items(), key=lambda kv: int(kv[0])):
            grad_rows.append(
                (
                    f"{family}-{d}",
                    *(
                        f"{min(min_over_head(g) for g in r['checkpoints'][str(e)]['grad_w_norm']):.3g}"
                        for e in cfg["checkpoints"]
                    ),
                )
            )
    growth_rows = [
        (
            f"plain-{d}",
            *(
                f"{max(max_over_head(g) for g in r['checkpoints'][str(e)]['grad_w_norm']):.3g}"
                for e in cfg["checkpoints"]
            ),
        )
        for d, r in sorted(runs["plain"].items(), key=lambda kv: int(kv[0]))
    ]
    lines = [
        f"{len(cfg['seeds'])} seeds, {cfg['epochs']} epochs, channels {cfg['channels']}"
        f"{', quick' if result['quick'] else ''}; mean over seeds",
        common.table(
            rows,
            (
                "network",
                LABELS["final_training_loss"] + " (± sd)",
                LABELS["train_error"],
                LABELS["test_accuracy"],
            ),
        ),
        f"{LABELS['min_over_head']}, lowest over seeds, at the end of epoch",
        common.table(grad_rows, ("network", *map(str, cfg["checkpoints"]))),
        f"{LABELS['max_over_head']}, highest over seeds, at the end of epoch",
        common.table(growth_rows, ("network", *map(str, cfg["checkpoints"]))),
    ]
    for c in result["claims"]:
        lines.append(f"{c['claim']}: {'HOLDS' if c['holds'] else 'DOES NOT HOLD'}. {c['evidence']}")
        if "robustness" in c:
            lines.append("  " + c["robustness"]["sentence"])
    if "sensitivity_not_run" in result:
        lines.append(f"{LABELS['sensitivity']}: {result['sensitivity_not_run']}")
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure


def _depth_colors(depths: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {d: cmap(0.15 + 0.7 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}


def figure(result: dict[str, Any]) -> Figure:
    """(a) training curves; (b) final training loss by depth; (c) test accuracy by depth;
    (d) per-layer gradient norms at initialisation; (e) the deepest plain network's per-layer
    gradient norms during training; (f) its backpropagated ‖δ_l‖."""
    runs, cfg = result["runs"], result["setup"]
    depths = sorted(runs["plain"], key=int)
    colors = _depth_colors(depths)
    fig = plots.figure((16, 9.5))
    (a, b, c), (d, e, f) = fig.subplots(2, 3)
    verdict = "; ".join(
        f"{LABELS[k]}: {'holds' if v else 'does not hold'}" for k, v in result["verdicts"].items()
    )
    fig.suptitle(
        f"Depth and residual connections on digits ({len(cfg['seeds'])} seeds, {cfg['epochs']} "
        f"epochs{', quick' if result['quick'] else ''})\n{verdict}",
        fontsize=10,
    )
    for family, style in (("plain", "-"), ("residual", "--")):
        for dep in depths:
            curves = np.asarray(runs[family][dep]["loss_curve"])
            epochs = np.arange(1, curves.shape[1] + 1)
            a.plot(epochs, curves.mean(0), style, color=colors[dep], label=f"{family}-{dep}")
    plots.finish(
        a,
        "(a) training loss per epoch (mean over seeds)",
        legend={"ncol": 2},
        integer_x=True,
        xlabel="epoch",
        ylabel=LABELS["loss_curve"].split(" (")[0],
        yscale="log",
    )
    for panel, key, title, scale in (
        (b, "final_training_loss", "(b) final training loss by depth", "log"),
        (c, "test_accuracy", "(c) test accuracy by depth (reported)", "linear"),
    ):
        for family, marker, color in (("plain", "o", "tab:red"), ("residual", "s", "tab:blue")):
            xs = [int(dep) for dep in depths]
            values = [runs[family][dep][key] for dep in depths]
            for xv, vs in zip(xs, values, strict=True):
                panel.plot([xv] * len(vs), vs, marker, color=color, mfc="none", alpha=0.6)
            panel.plot(xs, [np.mean(v) for v in values], "-", color=color, label=family)
        plots.finish(
            panel, title, legend={}, xlabel=LABELS["depth"], ylabel=LABELS[key], yscale=scale
        )
        panel.set_xticks([int(dep) for dep in depths])
    first = str(cfg["checkpoints"][0])
    for family, style in (("plain", "-"), ("residual", "--")):
        for dep in depths:
            g = np.asarray(runs[family][dep]["checkpoints"][first]["grad_w_norm"])
            layers = np.arange(1, g.shape[1] + 1)
            d.plot(
                layers,
                np.exp(np.log(g).mean(0)),
                style,
                marker=".",
                color=colors[dep],
                label=f"{family}-{dep}",
            )
    plots.finish(
        d,
        f"(d) ‖∂L/∂W_l‖ at epoch {first} (initialisation), geometric mean over seeds",
        legend={"ncol": 2},
        integer_x=True,
        xlabel="weighted layer l (last: the head)",
        ylabel="‖∂L/∂W_l‖_F",
        yscale="log",
    )
    deepest = runs["plain"][depths[-1]]["checkpoints"]
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    for i, ep in enumerate(cfg["checkpoints"]):
        col = cmap(0.1 + 0.75 * i / max(1, len(cfg["checkpoints"]) - 1))
        g = np.asarray(deepest[str(ep)]["grad_w_norm"])
        e.plot(
            np.arange(1, g.shape[1] + 1),
            np.exp(np.log(g).mean(0)),
            "-",
            marker=".",
            color=col,
            label=f"epoch {ep}",
        )
        delta = np.asarray(deepest[str(ep)]["delta_norm"])
        f.plot(
            np.arange(1, delta.shape[1] + 1),
            np.exp(np.log(delta).mean(0)),
            "-",
            marker=".",
            color=col,
            label=f"epoch {ep}",
        )
    plots.finish(
        e,
        f"(e) plain-{depths[-1]}: ‖∂L/∂W_l‖ during training",
        legend={},
        integer_x=True,
        xlabel="weighted layer l (last: the head)",
        ylabel="‖∂L/∂W_l‖_F",
        yscale="log",
    )
    plots.finish(
        f,
        f"(f) plain-{depths[-1]}: backpropagated ‖δ_l‖ = ‖∂L/∂z_l‖",
        legend={},
        integer_x=True,
        xlabel="convolution l",
        ylabel="‖δ_l‖_F",
        yscale="log",
    )
    return fig


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``depth_residual.json`` and ``.png``; print the report.

    The setup and the rules are written to ``depth_residual.preregistered.json`` before any
    training (:func:`jaxnn_experiments.common.preregister`).
    """
    common.preregister(NAME, out_dir, setup(quick), RULES)
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
