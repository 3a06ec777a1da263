"""Ioffe & Szegedy (2015), Figure 1, scaled down to scikit-learn's digits.

The paper trains two networks on MNIST, identical but for BatchNorm: three fully connected
hidden layers of 100 sigmoid units and a 10-way softmax output, minibatches of 60. It shows
(a) test accuracy against training steps: with BN the network trains faster and to a higher
accuracy; (b, c) the 15th, 50th and 85th percentiles of the input to one sigmoid of the last
hidden layer over training: without BN they move, with BN they are stable.

Here: the 1797 8x8 images of ``sklearn.datasets.load_digits`` (bundled, no download), pixels
divided by 16, a stratified split of 1347 train / 450 test (``random_state=SEED``). Both
networks are ``jaxnn.layers.mlp([100, 100, 100, 10], "sigmoid", batchnorm=False/True)`` with
``w_init="glorot_normal"`` (the paper says only "small random Gaussian values"; Glorot's normal
is the standard choice for sigmoid layers), zero biases, float32; the BN network starts from
the *same* dense weights as the plain one. Loss: softmax cross-entropy; optimizer: plain SGD
(``jaxnn.train.sgd``) with the same learning rate ``LEARNING_RATE`` for both, chosen before
the run and not tuned; the same minibatch sequence (a seeded permutation per epoch); gradients
``grad="manual"`` (the hand-derived rules) for both. BN uses the library's default PyTorch
convention (momentum 0.1, eps 1e-5; ``BATCHNORM``); evaluation is in eval mode (running statistics).

Every ``eval_every`` steps (and at step 0) the script records the test accuracy and the 15th,
50th and 85th percentiles over the test set of the input to unit ``UNIT`` of the last hidden
sigmoid: for the BN network the BN output, for the plain network the dense output. The two
claims are then decided from the recorded numbers, by the rules in ``RULES`` (also in the JSON).
As a check that the result is not an artefact of the one learning rate, the whole comparison
is repeated at the learning rates in ``SWEEP_LEARNING_RATES`` and the verdicts reported for each.

Writes ``batchnorm_ioffe_digits.json`` and ``batchnorm_ioffe_digits.png``. ``main(out_dir,
steps=..., eval_every=..., sweep=...)`` runs a shorter version (the tests use it). The results
do not depend on ``jax_enable_x64``: the run is float32 by construction.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxnn import layers, losses
from jaxnn.batchnorm import batchnorm
from jaxnn.train import TrainState, make_train_step, sgd

NAME = "batchnorm_ioffe_digits"
SEED = 0
TEST_SIZE = 450
HIDDEN = (100, 100, 100)
CLASSES = 10
W_INIT = "glorot_normal"
BATCH = 60
LEARNING_RATE = 0.5
SWEEP_LEARNING_RATES = (0.1, 0.5, 2.0)  # includes LEARNING_RATE: that run is reused
STEPS = 8000
EVAL_EVERY = 100
TARGET_ACCURACY = 0.90
UNIT = 0  # the sigmoid of the last hidden layer whose input distribution is tracked
PERCENTILES = (15, 50, 85)
LOSS = "softmax_cross_entropy_with_integer_labels"
# BatchNorm's settings, passed explicitly (they are the library's defaults: PyTorch's).
BATCHNORM = {"convention": "pytorch", "momentum": 0.1, "eps": 1e-5}

RULES = {
    "steps to target": f"the first recorded step (multiples of eval_every) at which the test "
    f"accuracy is >= {TARGET_ACCURACY}; null if never",
    "final accuracy": "the test accuracy at the last recorded step",
    "claim 1 (faster training to higher accuracy)": "holds if the BN network reaches the target "
    "accuracy in fewer steps than the plain network (reaching it when the plain network never "
    "does counts as fewer; neither reaching it does not) AND its final accuracy is >= the plain "
    "network's",
    "movement / spread": "for each percentile p in (15, 50, 85): the total movement of its "
    "curve, sum over consecutive evaluations (step 0 included) of |p[k+1] - p[k]|, divided by "
    "the mean over evaluations of the distribution's spread, p85 - p15 (a scale-free measure: "
    "how many spreads the percentile travelled)",
    "claim 2 (more stable input distribution)": "holds if, for every one of the three "
    "percentiles, the BN network's movement / spread is smaller than the plain network's",
    "range / spread (reported, not decided on)": "(max - min of the percentile over the "
    "evaluations after step 0) / mean spread",
    "reported diagnostics, not decided on": "movement / spread over the second half of the "
    "evaluations only; net displacement |p[last] - p[first after step 0]| / spread; and, for the "
    "BN network, the same measures when BN normalises the test set with the test set's own "
    "batch statistics (train-mode BN, state discarded) instead of the running statistics",
    "note on the movement measure": "total movement counts the fluctuation between "
    "evaluations as well as the drift, so a curve that jitters around a fixed level can travel "
    "further than one that drifts smoothly; the reported diagnostics separate the two",
}


def _data() -> dict[str, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _batches(n_train: int, steps: int) -> np.ndarray:
    """[steps, BATCH] example indices: a seeded permutation per epoch, full batches only."""
    rng = np.random.default_rng(SEED)
    per_epoch = n_train // BATCH
    epochs = -(-steps // per_epoch)
    idx = [
        rng.permutation(n_train)[: per_epoch * BATCH].reshape(per_epoch, BATCH)
        for _ in range(epochs)
    ]
    return np.concatenate(idx)[:steps].astype(np.int32)


def _network(use_bn: bool) -> tuple[layers.Layer, layers.Layer, int]:
    """The network, the prefix ending at the input of the last hidden sigmoid, its length."""
    net = layers.mlp(
        [*HIDDEN, CLASSES],
        "sigmoid",
        batchnorm=dict(BATCHNORM) if use_bn else False,
        w_init=W_INIT,
        param_dtype=jnp.float32,
    )
    # The same layers as mlp builds, in the same order, up to (not including) the last hidden
    # sigmoid. serial keys params by "{name}_{position}", so the prefix's keys are the first
    # keys of the network's, and it runs on the network's own params and state.
    prefix: list[layers.Layer] = []
    for i, f in enumerate(HIDDEN):
        prefix.append(layers.dense(f, param_dtype=jnp.float32))
        if use_bn:
            prefix.append(batchnorm(param_dtype=jnp.float32, **BATCHNORM))
        if i < len(HIDDEN) - 1:
            prefix.append(layers.activation("sigmoid"))
    return net, layers.serial(*prefix, name="prefix"), len(prefix)


def _keys(tree: dict[str, Any]) -> list[str]:
    return sorted(tree, key=lambda k: int(k.rsplit("_", 1)[1]))


def _init(data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Both networks; the BN one gets the plain one's dense weights."""
    shape = (BATCH, data["x_train"].shape[1])
    nets = {}
    for name, use_bn in (("plain", False), ("bn", True)):
        net, prefix, k = _network(use_bn)
        params, state = net.init(jax.random.key(SEED), shape)
        nets[name] = {"net": net, "prefix": prefix, "params": params, "state": state}
        keys = _keys(params)
        pkeys = _keys(prefix.init(jax.random.key(SEED), shape)[0])
        if keys[:k] != pkeys:
            raise RuntimeError(f"prefix keys {pkeys} are not the first keys of {keys}")
        nets[name]["prefix keys"] = pkeys
    plain_dense = [k for k in _keys(nets["plain"]["params"]) if k.startswith("dense_")]
    bn_dense = [k for k in _keys(nets["bn"]["params"]) if k.startswith("dense_")]
    for kp, kb in zip(plain_dense, bn_dense, strict=True):
        nets["bn"]["params"][kb] = jax.tree.map(jnp.copy, nets["plain"]["params"][kp])
    same = all(
        bool(jnp.array_equal(a, b))
        for kp, kb in zip(plain_dense, bn_dense, strict=True)
        for a, b in zip(
            jax.tree.leaves(nets["plain"]["params"][kp]),
            jax.tree.leaves(nets["bn"]["params"][kb]),
            strict=True,
        )
    )
    return nets, same


def _make_evaluate(net: layers.Layer, prefix: layers.Layer, pkeys: list[str], data):
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
    q = jnp.asarray(PERCENTILES, jnp.float32)

    @jax.jit
    def evaluate(params, state):
        logits, _ = net.apply(params, state, x_test, train=False)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y_test)
        loss = losses.softmax_cross_entropy_with_integer_labels(logits, y_test)
        sub = ({k: params[k] for k in pkeys}, {k: state[k] for k in pkeys})
        h, _ = prefix.apply(*sub, x_test, train=False)
        # BN with the test set's own batch statistics (the new state is discarded); for the
        # plain network this is the same as h.
        h_own, _ = prefix.apply(*sub, x_test, train=True)
        # Check: the rest of the network (sigmoid, last dense, identity) on the prefix output
        # gives the network's logits.
        n = len(pkeys)
        last = params[f"dense_{n + 1}"]
        again = jax.nn.sigmoid(h) @ last["w"] + last["b"]
        err = jnp.max(jnp.abs(again - logits))
        return accuracy, loss, jnp.percentile(h[:, UNIT], q), jnp.percentile(h_own[:, UNIT], q), err

    return evaluate


def _make_chunk(net: layers.Layer, learning_rate: float):
    optimizer = sgd(learning_rate)
    step = make_train_step(net, LOSS, optimizer, grad="manual")

    @jax.jit
    def chunk(ts: TrainState, idx: jax.Array, x_train: jax.Array, y_train: jax.Array):
        def body(ts: TrainState, i: jax.Array):
            return step(ts, x_train[i], y_train[i])

        ts, batch_losses = jax.lax.scan(body, ts, idx)
        return ts, jnp.mean(batch_losses)

    return optimizer, chunk


def _record(rec: dict[str, Any], evaluate, step: int, ts: TrainState, train_loss) -> float:
    acc, loss, pct, pct_own, err = evaluate(ts.params, ts.state)
    rec["step"].append(step)
    rec["test accuracy"].append(float(acc))
    rec["test loss"].append(float(loss))
    rec["train loss (mean over the chunk)"].append(train_loss)
    rec["percentiles"].append([float(v) for v in pct])
    rec["percentiles, BN with the test set's own statistics"].append([float(v) for v in pct_own])
    return float(err)


def _train(nets, data, idx, learning_rate: float, eval_every: int) -> dict[str, Any]:
    """Train both networks on the same minibatches; record every eval_every steps."""
    x_train, y_train = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    out: dict[str, Any] = {}
    for name, n in nets.items():
        optimizer, chunk = _make_chunk(n["net"], learning_rate)
        evaluate = _make_evaluate(n["net"], n["prefix"], n["prefix keys"], data)
        ts = TrainState(n["params"], n["state"], optimizer.init(n["params"]))
        rec: dict[str, Any] = {
            "step": [],
            "test accuracy": [],
            "test loss": [],
            "train loss (mean over the chunk)": [],
            "percentiles": [],
            "percentiles, BN with the test set's own statistics": [],
        }
        start = time.perf_counter()
        check = _record(rec, evaluate, 0, ts, None)
        for c in range(len(idx) // eval_every):
            batch_idx = jnp.asarray(idx[c * eval_every : (c + 1) * eval_every])
            ts, train_loss = chunk(ts, batch_idx, x_train, y_train)
            check = max(check, _record(rec, evaluate, (c + 1) * eval_every, ts, float(train_loss)))
        rec["seconds"] = time.perf_counter() - start
        rec["max |logits from the prefix - logits|"] = check
        if name == "plain":
            del rec["percentiles, BN with the test set's own statistics"]  # no BN: the same
        out[name] = rec
    return out


def _steps_to(rec: dict[str, Any], target: float) -> int | None:
    for step, acc in zip(rec["step"], rec["test accuracy"], strict=True):
        if acc >= target:
            return step
    return None


def _stability(percentiles: list[list[float]]) -> dict[str, Any]:
    p = np.asarray(percentiles, np.float64)  # [evals, 3]
    spread = float(np.mean(p[:, -1] - p[:, 0]))
    steps = np.abs(np.diff(p, axis=0))
    after = p[1:] if len(p) > 1 else p
    half = steps[len(steps) // 2 :]

    def per_q(values: np.ndarray) -> dict[str, float]:
        return {str(q): float(v / spread) for q, v in zip(PERCENTILES, values, strict=True)}

    return {
        "mean spread (p85 - p15)": spread,
        "total movement": {
            str(q): float(m) for q, m in zip(PERCENTILES, steps.sum(0), strict=True)
        },
        "movement / spread": per_q(steps.sum(0)),
        "range / spread (after step 0)": per_q(np.max(after, 0) - np.min(after, 0)),
        "movement / spread, second half of the evaluations": per_q(half.sum(0)),
        "net displacement / spread (first after step 0 to last)": per_q(
            np.abs(after[-1] - after[0])
        ),
        "first, last percentiles": [p[0].tolist(), p[-1].tolist()],
    }


def decide(runs: dict[str, Any]) -> dict[str, Any]:
    """The two claims, decided by RULES from the recorded numbers."""
    plain, bn = runs["plain"], runs["bn"]
    s_plain, s_bn = _steps_to(plain, TARGET_ACCURACY), _steps_to(bn, TARGET_ACCURACY)
    f_plain, f_bn = plain["test accuracy"][-1], bn["test accuracy"][-1]
    fewer = s_bn is not None and (s_plain is None or s_bn < s_plain)
    claim1 = {
        "target accuracy": TARGET_ACCURACY,
        "steps to target": {"plain": s_plain, "bn": s_bn},
        "final accuracy": {"plain": f_plain, "bn": f_bn},
        "best accuracy": {"plain": max(plain["test accuracy"]), "bn": max(bn["test accuracy"])},
        "bn reaches the target in fewer steps": fewer,
        "bn final accuracy >= plain": f_bn >= f_plain,
        "holds": bool(fewer and f_bn >= f_plain),
    }
    st_plain, st_bn = _stability(plain["percentiles"]), _stability(bn["percentiles"])
    st_own = _stability(bn["percentiles, BN with the test set's own statistics"])

    def smaller(measure: str, b: dict[str, Any] = st_bn) -> dict[str, bool]:
        return {str(q): b[measure][str(q)] < st_plain[measure][str(q)] for q in PERCENTILES}

    primary = smaller("movement / spread")
    claim2 = {
        "unit": UNIT,
        "plain": st_plain,
        "bn": st_bn,
        "bn movement / spread smaller, per percentile": primary,
        "holds": all(primary.values()),
        "reported, not decided on": {
            "bn smaller, per percentile": {
                m: smaller(m)
                for m in (
                    "range / spread (after step 0)",
                    "movement / spread, second half of the evaluations",
                    "net displacement / spread (first after step 0 to last)",
                )
            },
            "bn with the test set's own statistics": st_own,
            "bn with the test set's own statistics: movement / spread smaller than plain": smaller(
                "movement / spread", st_own
            ),
        },
    }
    return {
        "claim 1: faster training to higher accuracy": claim1,
        "claim 2: more stable input distribution": claim2,
    }


def _verdict(claims: dict[str, Any]) -> list[str]:
    c1 = claims["claim 1: faster training to higher accuracy"]
    c2 = claims["claim 2: more stable input distribution"]
    s, f = c1["steps to target"], c1["final accuracy"]

    def steps(v: int | None) -> str:
        return "never" if v is None else f"step {v}"

    ratio = {k: c2[k]["movement / spread"] for k in ("plain", "bn")}
    extra = c2["reported, not decided on"]
    own_key = "bn with the test set's own statistics"
    own = extra[own_key]

    def r3(d: dict[str, float]) -> list[float]:
        return [round(v, 3) for v in d.values()]

    return [
        f"claim 1 (faster training to higher accuracy) {'HOLDS' if c1['holds'] else 'DOES NOT HOLD'}: "
        f"test accuracy >= {c1['target accuracy']:.0%} at {steps(s['bn'])} with BN vs "
        f"{steps(s['plain'])} without; final accuracy {f['bn']:.4f} with BN vs {f['plain']:.4f} "
        "without",
        f"claim 2 (more stable input distribution) {'HOLDS' if c2['holds'] else 'DOES NOT HOLD'}: "
        "movement / spread of the 15th, 50th, 85th percentiles "
        f"{[round(v, 3) for v in ratio['bn'].values()]} with BN vs "
        f"{[round(v, 3) for v in ratio['plain'].values()]} without",
        *(
            f"  reported, not decided on: {m} {r3(c2['bn'][m])} with BN vs "
            f"{r3(c2['plain'][m])} without (BN smaller: {list(extra['bn smaller, per percentile'][m].values())})"
            for m in extra["bn smaller, per percentile"]
        ),
        "  reported, not decided on: movement / spread with BN normalising by the test set's own "
        f"statistics instead of the running ones {r3(own['movement / spread'])} (smaller than "
        f"without BN: {list(extra[own_key + ': movement / spread smaller than plain'].values())})",
    ]


def run(
    steps: int = STEPS, eval_every: int = EVAL_EVERY, sweep: Sequence[float] = SWEEP_LEARNING_RATES
) -> dict[str, Any]:
    """Train, record and decide. Returns a JSON-ready dict."""
    if steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({eval_every}).")
    rates = [LEARNING_RATE, *(lr for lr in sweep if lr != LEARNING_RATE)]
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        data = _data()
        nets, same_init = _init(data)
        idx = _batches(len(data["x_train"]), steps)
        by_rate = {lr: _train(nets, data, idx, lr, eval_every) for lr in rates}
    main_runs = by_rate[LEARNING_RATE]
    claims = decide(main_runs)
    sweep_result = {}
    for lr in sorted(by_rate):
        c = decide(by_rate[lr])
        c1 = c["claim 1: faster training to higher accuracy"]
        c2 = c["claim 2: more stable input distribution"]
        sweep_result[str(lr)] = {
            "steps to target": c1["steps to target"],
            "final accuracy": c1["final accuracy"],
            "movement / spread": {k: c2[k]["movement / spread"] for k in ("plain", "bn")},
            "claim 1 holds": c1["holds"],
            "claim 2 holds": c2["holds"],
        }
    return {
        "setup": {
            "data": "sklearn.datasets.load_digits, pixels / 16",
            "split": {
                "train": len(data["x_train"]),
                "test": len(data["x_test"]),
                "stratified": True,
                "random_state": SEED,
            },
            "network": f"mlp({[*HIDDEN, CLASSES]}, 'sigmoid', batchnorm=False/True), logits out",
            "w_init": W_INIT,
            "b_init": "zeros",
            "same initial dense weights for both": same_init,
            "batchnorm": {
                **BATCHNORM,
                "placement": "between each hidden dense layer and its sigmoid",
                "evaluation": "eval mode (running statistics)",
            },
            "loss": LOSS,
            "optimizer": f"plain SGD (jaxnn.train.sgd), learning rate {LEARNING_RATE}, "
            "the same for both, not tuned",
            "batch size": BATCH,
            "minibatches": "the same for both: a permutation per epoch (numpy default_rng("
            f"{SEED})), {len(data['x_train']) // BATCH} full batches per epoch",
            "gradients": "grad='manual' (the hand-derived rules) for both",
            "steps": steps,
            "eval_every": eval_every,
            "dtype": "float32",
            "tracked input": f"unit {UNIT} of the last hidden sigmoid (its input: the dense "
            "output without BN, the BN output with BN), over the test set",
            "percentiles": list(PERCENTILES),
            "sweep learning rates": sorted(by_rate),
        },
        "rules": RULES,
        "runs": main_runs,
        "claims": claims,
        "verdict": _verdict(claims),
        "learning-rate sweep": sweep_result,
        "claim 1 holds at every swept learning rate": all(
            v["claim 1 holds"] for v in sweep_result.values()
        ),
        "claim 2 holds at every swept learning rate": all(
            v["claim 2 holds"] for v in sweep_result.values()
        ),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    runs = result["runs"]
    claims = result["claims"]
    c2 = claims["claim 2: more stable input distribution"]
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    a, b, c = fig.subplots(1, 3)
    setup = result["setup"]
    fig.suptitle(
        "Ioffe & Szegedy (2015) Fig. 1 on sklearn digits: 3x100 sigmoid MLP, SGD lr "
        f"{LEARNING_RATE}, batch {BATCH}, {setup['steps']} steps, same init and minibatches"
    )
    for name, label, color in (("plain", "without BN", "tab:red"), ("bn", "with BN", "tab:blue")):
        a.plot(runs[name]["step"], runs[name]["test accuracy"], color=color, label=label)
    a.axhline(TARGET_ACCURACY, color="0.5", ls=":", lw=1, label=f"target {TARGET_ACCURACY:.0%}")
    a.set_ylim(0, 1.01)
    a.set_xlabel("training step")
    a.set_ylabel("test accuracy (eval mode)")
    a.set_title("(a) test accuracy")
    a.legend(loc="lower right")
    a.grid(alpha=0.3)

    own_key = "percentiles, BN with the test set's own statistics"
    curves = [np.asarray(runs[n]["percentiles"]) for n in ("plain", "bn")]
    curves.append(np.asarray(runs["bn"][own_key]))
    lo = min(float(v.min()) for v in curves)
    hi = max(float(v.max()) for v in curves)
    pad = 0.05 * (hi - lo)
    for ax, name, title in ((b, "plain", "(b) without BN"), (c, "bn", "(c) with BN")):
        steps = runs[name]["step"]
        styles = (":", "-", "--")
        p = np.asarray(runs[name]["percentiles"])
        for j, (q, style) in enumerate(zip(PERCENTILES, styles, strict=True)):
            ax.plot(steps, p[:, j], style, color="k", label=f"{q}th percentile")
        if name == "bn":
            p = np.asarray(runs[name][own_key])
            for j, (q, style) in enumerate(zip(PERCENTILES, styles, strict=True)):
                ax.plot(
                    steps,
                    p[:, j],
                    style,
                    color="tab:cyan",
                    lw=1,
                    label=f"{q}th, test-set statistics (diagnostic)",
                )
        ms = c2[name]["movement / spread"]
        ax.set_title(
            f"{title}: input to last-hidden sigmoid {UNIT}\nmovement / spread = "
            + ", ".join(f"{ms[str(q)]:.2f}" for q in PERCENTILES)
        )
        ax.set_ylim(lo - pad, hi + 0.45 * (hi - lo))  # room for the legend
        ax.set_xlabel("training step")
        ax.set_ylabel(
            "BN output (eval mode: running statistics)"
            if name == "bn"
            else "dense output (pre-activation)"
        )
        ax.legend(loc="upper center", ncol=2, fontsize=7)
        ax.grid(alpha=0.3)
    c1 = claims["claim 1: faster training to higher accuracy"]
    fig.suptitle(
        fig.get_suptitle()
        + f"\nclaim 1 (faster, higher accuracy): {'holds' if c1['holds'] else 'does not hold'}; "
        f"claim 2 (movement / spread smaller for all three percentiles): "
        f"{'holds' if c2['holds'] else 'does not hold'}"
    )
    fig.savefig(path, dpi=110)


def report(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        f"{'step':>6} {'acc plain':>10} {'acc BN':>8}   {'plain p15/p50/p85':>26}   "
        f"{'BN p15/p50/p85':>24}"
    ]
    n = len(runs["plain"]["step"])
    show = sorted({0, n - 1, *range(0, n, max(1, n // 16))})
    for i in show:
        pp, pb = runs["plain"]["percentiles"][i], runs["bn"]["percentiles"][i]
        lines.append(
            f"{runs['plain']['step'][i]:>6} {runs['plain']['test accuracy'][i]:>10.4f} "
            f"{runs['bn']['test accuracy'][i]:>8.4f}   "
            + " ".join(f"{v:>8.3f}" for v in pp)
            + "   "
            + " ".join(f"{v:>7.3f}" for v in pb)
        )
    lines.append(
        f"train time: plain {runs['plain']['seconds']:.1f} s, BN {runs['bn']['seconds']:.1f} s "
        "(compilation included)"
    )
    lines.append("")
    lines += result["verdict"]
    lines.append("Learning-rate sweep (same everything else):")
    for lr, v in result["learning-rate sweep"].items():
        lines.append(
            f"  lr {lr:>4}: steps to target plain {v['steps to target']['plain']}, BN "
            f"{v['steps to target']['bn']}; final plain {v['final accuracy']['plain']:.4f}, BN "
            f"{v['final accuracy']['bn']:.4f}; claim 1 {v['claim 1 holds']}, claim 2 "
            f"{v['claim 2 holds']}"
        )
    return "\n".join(lines)


def main(
    out_dir: Path | str = "results",
    *,
    steps: int = STEPS,
    eval_every: int = EVAL_EVERY,
    sweep: Sequence[float] = SWEEP_LEARNING_RATES,
) -> dict[str, Any]:
    result = run(steps, eval_every, sweep)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{NAME}.png"
    plot(result, png)
    path = out_dir / f"{NAME}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(report(result))
    print(f"wrote {path} and {png}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
