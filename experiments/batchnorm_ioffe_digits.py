"""Ioffe & Szegedy (2015), Figure 1, scaled down to scikit-learn's digits.

The paper trains two networks on MNIST, identical but for BatchNorm: three fully connected
hidden layers of 100 sigmoid units and a 10-way softmax output, minibatches of 60. It shows
(a) test accuracy against training steps: with BN the network trains faster and to a higher
accuracy; (b, c) the 15th, 50th and 85th percentiles of the input to one sigmoid of the last
hidden layer over training: without BN they move, with BN they are stable.

Here (``SETUP`` and ``RULES``, written to the JSON, are the description): the same two
networks on scikit-learn's digits, the same initial weights and minibatches, plain SGD at
``LEARNING_RATE`` (and ``SWEEP_LEARNING_RATES``), hand-derived gradients; every ``eval_every``
steps the test accuracy and the percentiles of the input to unit ``UNIT`` of the last hidden
sigmoid, with BN evaluated with the running statistics and with Algorithm 2's.

**Sensitivity of a claim that does not hold** (``SENSITIVITY``, fixed in ``RULES`` before the
run): the same rules, unchanged, decide runs that each change one setting of the original: the
steps x5, the learning rate x1/3 and x3, and BatchNorm's momentum 0.1 → 0.01. In the PyTorch
convention the running statistics are ``r ← (1 − m) r + m s`` over the minibatch statistics
``s``, an exponential average whose weights ``m (1 − m)^k`` span about ``1/m`` steps: 10
minibatches of 60 at ``m = 0.1``, 100 at ``m = 0.01``. Claim 2 with the running statistics
reads the test set through that average, so its window is the setting the claim most likely
depends on (Algorithm 2's average over the whole first epoch does not use it).

Writes ``batchnorm_ioffe_digits.json`` and ``.png``. ``main(out_dir, steps=..., eval_every=...,
sweep=...)`` runs a shorter version (the tests use it). The run is float32 whatever
``jax_enable_x64`` says.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxnn import Layer, intermediates, losses, mlp
from jaxnn.batchnorm import population_statistics
from jaxnn.combinators import layer_keys
from jaxnn.optim import sgd
from jaxnn.train import TrainState, make_train_step
from jaxnn_experiments import common, plots

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
POPULATION_BATCHES = 1347 // BATCH  # Algorithm 2's minibatches: the first epoch's, all of them
UNIT = 0  # the sigmoid of the last hidden layer whose input distribution is tracked
PERCENTILES = (15, 50, 85)
Q = tuple(f"p{q}" for q in PERCENTILES)  # their keys
LOSS = "softmax_cross_entropy_with_integer_labels"
# BatchNorm's settings, passed explicitly (they are the library's defaults: PyTorch's).
BATCHNORM = {"convention": "pytorch", "momentum": 0.1, "eps": 1e-5}
NETWORKS = {"plain": False, "bn": True}  # name: with BatchNorm
CLAIMS = ("claim_1", "claim_2", "claim_2_population")
# Reported beside claim 2's movement / spread, not decided on.
DIAGNOSTICS = ("range_over_spread", "movement_over_spread_second_half", "displacement_over_spread")

SETUP = {
    "data": "sklearn.datasets.load_digits, pixels / 16",
    "network": f"mlp({[*HIDDEN, CLASSES]}, 'sigmoid', batchnorm=False/True), logits out",
    "w_init": f"{W_INIT}, drawn for the plain network; the BN network gets the same dense weights",
    "b_init": "zeros",
    "batchnorm": {
        **BATCHNORM,
        "placement": "between each hidden dense layer and its sigmoid",
        "evaluation": "eval mode, twice: with the running statistics (momentum average), and "
        "with Algorithm 2's population statistics (jaxnn.batchnorm.population_statistics over "
        f"the first epoch's {POPULATION_BATCHES} minibatches of {BATCH}, network in train mode)",
    },
    "loss": LOSS,
    "optimizer": f"plain SGD (jaxnn.optim.sgd), learning rate {LEARNING_RATE}, the same for both, "
    "not tuned",
    "batch_size": BATCH,
    "gradients": "grad='manual' (the hand-derived rules) for both",
    "dtype": "float32",
    "unit": UNIT,
    "percentiles": list(PERCENTILES),
}
# The sensitivity analysis: each run changes one setting of the original run; the rest (data,
# initial weights, minibatch order, eval_every) is the original's.
SENSITIVITY = {
    "budget_x5": {"steps_factor": 5},
    "learning_rate_x1_3": {"learning_rate": LEARNING_RATE / 3},
    "learning_rate_x3": {"learning_rate": 3 * LEARNING_RATE},
    "momentum_0_01": {"momentum": 0.01},
}
SENSITIVITY_SETTINGS = {
    "budget_x5": f"the training budget x5: 5 times the steps ({5 * STEPS} instead of {STEPS} in "
    f"the full run), recorded every eval_every ({EVAL_EVERY}) steps as the original",
    "learning_rate_x1_3": f"the learning rate x1/3: {LEARNING_RATE / 3:.4g} instead of "
    f"{LEARNING_RATE:g}, for both networks",
    "learning_rate_x3": f"the learning rate x3: {3 * LEARNING_RATE:g} instead of "
    f"{LEARNING_RATE:g}, for both networks",
    "momentum_0_01": f"BatchNorm's momentum 0.01 instead of {BATCHNORM['momentum']:g}: the "
    "running statistics average the minibatch statistics over about 1/momentum steps (100 "
    "instead of 10), so the momentum sets how much of the 60-example batches' noise, and how "
    "much lag, reaches the percentiles read with the running statistics, the setting claim 2 "
    "with those statistics most likely depends on (Algorithm 2's statistics do not use it); "
    "the network without BN has no running statistics, its run is the original's",
}
RULES = {
    "steps_to_target": "the first recorded step (multiples of eval_every) at which the test "
    f"accuracy is >= {TARGET_ACCURACY}; null if never",
    "final_accuracy": "the test accuracy at the last recorded step",
    "claim_1": "holds if the BN network reaches the target accuracy in fewer steps than the "
    "plain network (reaching it when the plain network never does counts as fewer; neither "
    "reaching it does not) AND its final accuracy is >= the plain network's",
    "movement_over_spread": "for each percentile p in (15, 50, 85): the total movement of its "
    "curve, sum over consecutive evaluations (step 0 included) of |p[k+1] - p[k]|, divided by "
    "the mean over evaluations of the distribution's spread, p85 - p15 (a scale-free measure: "
    "how many spreads the percentile travelled)",
    "claim_2": "holds if, for every one of the three percentiles, the BN network's movement / "
    "spread is smaller than the plain network's",
    "claim_2_population": "claim_2's rule, unchanged, with the BN network evaluated as Ioffe & "
    "Szegedy's Algorithm 2 prescribes: its percentiles recorded with population statistics, "
    "E[x] = E_B[mean_B] and Var[x] = m/(m - 1) E_B[var_B] over the first epoch's "
    f"{POPULATION_BATCHES} training minibatches of m = {BATCH} (network in train mode), "
    "recomputed at every evaluation",
    "range_over_spread": "reported, not decided on: (max - min of the percentile over the "
    "evaluations after step 0) / mean spread",
    "diagnostics": "reported, not decided on: movement / spread over the second half of the "
    "evaluations only; net displacement |p[last] - p[first after step 0]| / spread; and, for "
    "the BN network, the same measures when BN normalises the test set with the test set's own "
    "batch statistics (train-mode BN, state discarded) instead of the running statistics",
    "sensitivity": common.sensitivity_rule(SENSITIVITY_SETTINGS)
    + "; the analysis runs when any of claim_1, claim_2, claim_2_population does not hold, and "
    "each claim that does not hold is decided on the variants by its own rule; quick mode does "
    "not run it",
    "sensitivity_variants": SENSITIVITY,
    "movement_note": "total movement counts the fluctuation between evaluations as well as the "
    "drift, so a curve that jitters around a fixed level can travel further than one that "
    "drifts smoothly; the reported diagnostics separate the two",
}
LABELS = {
    "plain": "without BN",
    "bn": "with BN",
    "bn_own_stats": "with BN, the test set's own statistics",
    "bn_population": "with BN, Algorithm 2's population statistics",
    "claim_1": "claim 1 (faster training to higher accuracy)",
    "claim_2": "claim 2 (more stable input distribution)",
    "claim_2_population": "claim 2, BN evaluated with Algorithm 2's population statistics",
    "step": "training step",
    "test_accuracy": "test accuracy (eval mode)",
    "test_accuracy_population": "test accuracy, BN with Algorithm 2's population statistics",
    "test_loss_population": "test loss, BN with Algorithm 2's population statistics",
    "percentiles_population": "the same, BN with Algorithm 2's population statistics",
    "test_loss": "test loss",
    "train_loss": "train loss (mean over the steps since the last evaluation)",
    "percentiles": f"p15, p50, p85 of the input to last-hidden sigmoid {UNIT}",
    "percentiles_own_stats": "the same, BN with the test set's own statistics",
    "seconds": "training time, compilation included (s)",
    "target_accuracy": "target test accuracy",
    "steps_to_target": f"first step with test accuracy >= {TARGET_ACCURACY:.0%}",
    "final_accuracy": "final test accuracy",
    "best_accuracy": "best test accuracy",
    "bn_fewer_steps": "BN reaches the target in fewer steps",
    "bn_final_at_least_plain": "BN's final accuracy >= plain's",
    "mean_spread": "mean spread (p85 - p15)",
    "movement": "total movement",
    "movement_over_spread": "movement / spread",
    "range_over_spread": "range / spread (after step 0)",
    "movement_over_spread_second_half": "movement / spread, second half of the evaluations",
    "displacement_over_spread": "net displacement / spread (first after step 0 to last)",
    "first_last_percentiles": "first and last percentiles",
    "bn_smaller": "BN smaller, per percentile",
    "holds": "holds",
    "claim_1_holds": "claim 1 holds",
    "claim_2_holds": "claim 2 holds",
    "claim_2_population_holds": "claim 2 holds, population statistics",
    "claim_1_holds_at_every_rate": "claim 1 holds at every swept learning rate",
    "claim_2_holds_at_every_rate": "claim 2 holds at every swept learning rate",
    "claim_2_population_holds_at_every_rate": "claim 2 holds with population statistics at "
    "every swept learning rate",
    "final_accuracy_population": "final test accuracy, BN with population statistics",
    "sensitivity": "sensitivity of the claims that do not hold",
    "run": "run (false: not run)",
    "reason": "why not run",
    "negative_claims": "the claims that do not hold",
    "variants": "variants",
    "setting": "the one setting changed",
    "change": "the change",
    "learning_rate": "learning rate",
    "momentum": "BatchNorm momentum",
    "original": "original run",
    "budget_x5": "budget x5",
    "learning_rate_x1_3": "learning rate x1/3",
    "learning_rate_x3": "learning rate x3",
    "momentum_0_01": "momentum 0.01",
    **{key: f"{q}th percentile" for key, q in zip(Q, PERCENTILES, strict=True)},
}


class Network(NamedTuple):
    net: Layer
    params: dict[str, Any]
    state: dict[str, Any]
    tracked: str  # the key of the layer whose output is the input to the last hidden sigmoid


def digits() -> dict[str, np.ndarray]:
    """The digits, pixels / 16 (float32), split stratified into train and test (SEED)."""
    raw = load_digits()
    x = (raw.data / 16.0).astype(np.float32)
    y = raw.target.astype(np.int32)
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


def networks(n_features: int, momentum: float = BATCHNORM["momentum"]) -> dict[str, Network]:
    """Both networks, initialised; the BN one starts from the plain one's dense weights.

    ``momentum``: BatchNorm's (``BATCHNORM``'s unless a sensitivity run changes it); it enters
    the running statistics only, never the initial weights."""
    nets = {}
    for name, use_bn in NETWORKS.items():
        net = mlp(
            [*HIDDEN, CLASSES],
            "sigmoid",
            batchnorm={**BATCHNORM, "momentum": momentum} if use_bn else False,
            w_init=W_INIT,
            param_dtype=jnp.float32,
        )
        params, state = net.init(jax.random.key(SEED), (BATCH, n_features))
        keys = list(layer_keys(net))
        last_sigmoid = keys.index(layer_keys(net, "sigmoid")[-1])
        nets[name] = Network(net, params, state, tracked=keys[last_sigmoid - 1])
    plain, bn = nets["plain"], nets["bn"]
    for plain_key, bn_key in zip(
        layer_keys(plain.net, "dense"), layer_keys(bn.net, "dense"), strict=True
    ):
        # The BN network's hidden dense layers have no bias (BN's beta replaces it): share
        # the kernels, and the output layer's bias (zeros at initialisation in both).
        bn.params[bn_key] = {k: plain.params[plain_key][k] for k in bn.params[bn_key]}
    return nets


def _evaluator(network: Network, data: dict[str, np.ndarray]):
    """``(params, state) ->`` the recorded measures, from the test set."""
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
    q = jnp.asarray(PERCENTILES, jnp.float32)

    @jax.jit
    def evaluate(params: dict[str, Any], state: dict[str, Any]):
        logits, _, out = intermediates(network.net, params, state, x_test, train=False)
        _, _, own = intermediates(network.net, params, state, x_test, train=True)  # state dropped
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y_test)
        loss = losses.softmax_cross_entropy_with_integer_labels(logits, y_test)
        return {
            "test_accuracy": accuracy,
            "test_loss": loss,
            "percentiles": jnp.percentile(out[network.tracked][:, UNIT], q),
            "percentiles_own_stats": jnp.percentile(own[network.tracked][:, UNIT], q),
        }

    return evaluate


def _trainer(net: Layer, learning_rate: float):
    """The optimizer, and ``(ts, idx, x, y) -> (ts, mean loss)``: one step per row of ``idx``."""
    optimizer = sgd(learning_rate)
    step = make_train_step(net, LOSS, optimizer, grad="manual")

    @jax.jit
    def steps(ts: TrainState, idx: jax.Array, x_train: jax.Array, y_train: jax.Array):
        ts, batch_losses = jax.lax.scan(lambda ts, i: step(ts, x_train[i], y_train[i]), ts, idx)
        return ts, jnp.mean(batch_losses)

    return optimizer, steps


def _train(
    nets, data, idx, learning_rate: float, eval_every: int, label: str = ""
) -> dict[str, Any]:
    """Train the networks ``nets`` on the same minibatches; record every eval_every steps.

    ``label`` prefixes the progress bars' descriptions."""
    x_train, y_train = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    # Algorithm 2's minibatches: the first epoch's, each full batch of the training set once.
    population = data["x_train"][_batches(len(data["x_train"]), POPULATION_BATCHES)]
    runs: dict[str, Any] = {}
    for name, network in nets.items():
        optimizer, train_steps = _trainer(network.net, learning_rate)
        evaluate = _evaluator(network, data)
        ts = TrainState.create(
            network.net, optimizer, jax.random.key(0), params=network.params, state=network.state
        )
        rec: dict[str, Any] = {"step": [], "train_loss": []}
        start = time.perf_counter()
        train_loss = None
        # The bar advances per evaluation: eval_every training steps and one test-set pass.
        evaluations = range(len(idx) // eval_every + 1)
        desc = f"{label}lr {learning_rate:g}, {name} network"
        for c in common.progress(evaluations, desc, unit="eval"):
            if c:
                chunk = jnp.asarray(idx[(c - 1) * eval_every : c * eval_every])
                ts, mean_loss = train_steps(ts, chunk, x_train, y_train)
                train_loss = float(mean_loss)
            rec["step"].append(c * eval_every)
            rec["train_loss"].append(train_loss)
            for key, value in evaluate(ts.params, ts.state).items():
                rec.setdefault(key, []).append(value.tolist())
            if NETWORKS[name]:
                pop = population_statistics(network.net, ts.params, ts.state, population)
                scores = evaluate(ts.params, pop)
                for key in ("test_accuracy", "test_loss", "percentiles"):
                    rec.setdefault(f"{key}_population", []).append(scores[key].tolist())
        rec["seconds"] = time.perf_counter() - start
        if not NETWORKS[name]:
            del rec["percentiles_own_stats"]  # without BN, the same as the percentiles
        runs[name] = rec
    return runs


def _steps_to(rec: dict[str, Any], target: float) -> int | None:
    reached = (s for s, a in zip(rec["step"], rec["test_accuracy"], strict=True) if a >= target)
    return next(reached, None)


def _stability(percentiles: list[list[float]]) -> dict[str, Any]:
    p = np.asarray(percentiles, np.float64)  # [evals, 3]
    spread = float(np.mean(p[:, -1] - p[:, 0]))
    steps = np.abs(np.diff(p, axis=0))
    after = p[1:] if len(p) > 1 else p

    def per_q(values: np.ndarray, scale: float = spread) -> dict[str, float]:
        return {k: float(v / scale) for k, v in zip(Q, values, strict=True)}

    return {
        "mean_spread": spread,
        "movement": per_q(steps.sum(0), 1.0),
        "movement_over_spread": per_q(steps.sum(0)),
        "range_over_spread": per_q(np.max(after, 0) - np.min(after, 0)),
        "movement_over_spread_second_half": per_q(steps[len(steps) // 2 :].sum(0)),
        "displacement_over_spread": per_q(np.abs(after[-1] - after[0])),
        "first_last_percentiles": [p[0].tolist(), p[-1].tolist()],
    }


def decide(runs: dict[str, Any]) -> dict[str, Any]:
    """The two claims, decided by RULES from the recorded numbers."""
    plain, bn = runs["plain"], runs["bn"]
    s_plain, s_bn = _steps_to(plain, TARGET_ACCURACY), _steps_to(bn, TARGET_ACCURACY)
    f_plain, f_bn = plain["test_accuracy"][-1], bn["test_accuracy"][-1]
    fewer = s_bn is not None and (s_plain is None or s_bn < s_plain)
    claim_1 = {
        "target_accuracy": TARGET_ACCURACY,
        "steps_to_target": {"plain": s_plain, "bn": s_bn},
        "final_accuracy": {"plain": f_plain, "bn": f_bn},
        "best_accuracy": {"plain": max(plain["test_accuracy"]), "bn": max(bn["test_accuracy"])},
        "bn_fewer_steps": fewer,
        "bn_final_at_least_plain": f_bn >= f_plain,
        "holds": bool(fewer and f_bn >= f_plain),
    }
    stability = {
        "plain": _stability(plain["percentiles"]),
        "bn": _stability(bn["percentiles"]),
        "bn_own_stats": _stability(bn["percentiles_own_stats"]),
        "bn_population": _stability(bn["percentiles_population"]),
    }

    def smaller(measure: str, name: str = "bn") -> dict[str, bool]:
        return {k: stability[name][measure][k] < stability["plain"][measure][k] for k in Q}

    primary = smaller("movement_over_spread")
    claim_2 = {
        "unit": UNIT,
        **{k: v for k, v in stability.items() if k != "bn_population"},
        "bn_smaller": {
            "movement_over_spread": primary,
            **{m: smaller(m) for m in DIAGNOSTICS},
            "bn_own_stats_movement_over_spread": smaller("movement_over_spread", "bn_own_stats"),
        },
        "holds": all(primary.values()),
    }
    # The same rule, the BN network evaluated with Algorithm 2's population statistics.
    population = smaller("movement_over_spread", "bn_population")
    claim_2_population = {
        "unit": UNIT,
        "plain": stability["plain"],
        "bn_population": stability["bn_population"],
        "bn_smaller": {
            "movement_over_spread": population,
            **{m: smaller(m, "bn_population") for m in DIAGNOSTICS},
        },
        "final_accuracy_population": bn["test_accuracy_population"][-1],
        "holds": all(population.values()),
    }
    return {"claim_1": claim_1, "claim_2": claim_2, "claim_2_population": claim_2_population}


def _check_steps(steps: int, eval_every: int) -> None:
    if steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({eval_every}).")


def _rates(sweep: Sequence[float]) -> list[float]:
    return [LEARNING_RATE, *(lr for lr in sweep if lr != LEARNING_RATE)]


def run(
    steps: int = STEPS, eval_every: int = EVAL_EVERY, sweep: Sequence[float] = SWEEP_LEARNING_RATES
) -> dict[str, Any]:
    """Train, record and decide. Returns a JSON-ready dict."""
    _check_steps(steps, eval_every)
    rates = _rates(sweep)
    with jax.enable_x64(False):  # float32 by construction, whatever the global setting
        data = digits()
        nets = networks(data["x_train"].shape[1])
        idx = _batches(len(data["x_train"]), steps)
        by_rate = {lr: _train(nets, data, idx, lr, eval_every) for lr in rates}
    sweep_result = {}
    for lr in sorted(by_rate):
        c = decide(by_rate[lr])
        sweep_result[str(lr)] = {
            "steps_to_target": c["claim_1"]["steps_to_target"],
            "final_accuracy": c["claim_1"]["final_accuracy"],
            "movement_over_spread": {
                **{k: c["claim_2"][k]["movement_over_spread"] for k in NETWORKS},
                "bn_population": c["claim_2_population"]["bn_population"]["movement_over_spread"],
            },
            "final_accuracy_population": c["claim_2_population"]["final_accuracy_population"],
            "claim_1_holds": c["claim_1"]["holds"],
            "claim_2_holds": c["claim_2"]["holds"],
            "claim_2_population_holds": c["claim_2_population"]["holds"],
        }
    return {
        "setup": {
            **SETUP,
            "split": {
                "train": len(data["x_train"]),
                "test": len(data["x_test"]),
                "stratified": True,
                "random_state": SEED,
            },
            "minibatches": f"the same for both: a permutation per epoch (numpy default_rng("
            f"{SEED})), {len(data['x_train']) // BATCH} full batches per epoch",
            "steps": steps,
            "eval_every": eval_every,
            "tracked_input": {name: n.tracked for name, n in nets.items()},
            "population_batches": POPULATION_BATCHES,
            "sweep_learning_rates": sorted(by_rate),
        },
        "rules": RULES,
        "runs": by_rate[LEARNING_RATE],
        "decisions": decide(by_rate[LEARNING_RATE]),
        "learning_rate_sweep": sweep_result,
        "claim_1_holds_at_every_rate": all(v["claim_1_holds"] for v in sweep_result.values()),
        "claim_2_holds_at_every_rate": all(v["claim_2_holds"] for v in sweep_result.values()),
        "claim_2_population_holds_at_every_rate": all(
            v["claim_2_population_holds"] for v in sweep_result.values()
        ),
    }


# What a sensitivity run keeps of its records: what the claims' rules read (and the timing);
# its decisions, diagnostics included, are decided on the whole records.
KEPT = (
    "step",
    "test_accuracy",
    "percentiles",
    "test_accuracy_population",
    "percentiles_population",
    "seconds",
)
NOT_NEEDED = "every claim holds: the sensitivity analysis runs only for a claim that does not hold"
QUICK_SKIP = (
    "quick mode: the sensitivity analysis trains both networks four more times (one of them "
    "for 5 times the steps), which would more than double the quick run; the full run records it"
)


def sensitivity_runs(steps: int, eval_every: int, original: dict[str, Any]) -> dict[str, Any]:
    """Train and decide each variant of ``SENSITIVITY``, by :func:`decide` unchanged.

    Each variant is the original run (``steps``, ``eval_every``, learning rate ``LEARNING_RATE``,
    the same data, initial weights and minibatch order) with one setting changed. The momentum
    variant trains the BN network only: momentum enters BatchNorm's running statistics, and
    the plain network's run is ``original["plain"]`` (the original run's records, of the same
    ``steps`` and ``eval_every``).

    Returns:
      ``{name: {"setting", "change", "steps", "learning_rate", "momentum", "runs" (the records
      decide() reads), "decisions"}}``.
    """
    _check_steps(steps, eval_every)
    if len(original["plain"]["step"]) != steps // eval_every + 1:
        raise ValueError(
            f"sensitivity_runs: the original run has {len(original['plain']['step'])} "
            f"evaluations, expected {steps // eval_every + 1} for steps={steps}, "
            f"eval_every={eval_every}."
        )
    out: dict[str, Any] = {}
    with jax.enable_x64(False):  # float32 by construction, as the original
        data = digits()
        for name, change in SENSITIVITY.items():
            n_steps = steps * change.get("steps_factor", 1)
            lr = change.get("learning_rate", LEARNING_RATE)
            momentum = change.get("momentum", BATCHNORM["momentum"])
            nets = networks(data["x_train"].shape[1], momentum)
            idx = _batches(len(data["x_train"]), n_steps)
            if momentum != BATCHNORM["momentum"]:
                bn = _train({"bn": nets["bn"]}, data, idx, lr, eval_every, f"{name}: ")
                runs = {"plain": original["plain"], **bn}
            else:
                runs = _train(nets, data, idx, lr, eval_every, f"{name}: ")
            out[name] = {
                "setting": SENSITIVITY_SETTINGS[name],
                "change": change,
                "steps": n_steps,
                "learning_rate": lr,
                "momentum": momentum,
                "runs": {n: {k: r[k] for k in KEPT if k in r} for n, r in runs.items()},
                "decisions": decide(runs),
            }
    return out


def sensitivity(result: dict[str, Any], *, quick: bool = False) -> dict[str, Any]:
    """The sensitivity analysis of the claims that do not hold (``RULES["sensitivity"]``).

    Returns:
      ``{"run": True, "negative_claims": [the claims that do not hold], "variants":
      sensitivity_runs(...)}``, or ``{"run": False, "reason": ...}`` when every claim holds
      or in ``quick`` mode.
    """
    failing = [k for k in CLAIMS if not result["decisions"][k]["holds"]]
    if not failing:
        return {"run": False, "reason": NOT_NEEDED}
    if quick:
        return {"run": False, "reason": QUICK_SKIP}
    setup = result["setup"]
    variants = sensitivity_runs(setup["steps"], setup["eval_every"], result["runs"])
    return {"run": True, "negative_claims": failing, "variants": variants}


def figure(result: dict[str, Any]) -> Figure:
    """(a) test accuracy against steps; (b, c, d) the tracked input's percentiles: without BN,
    with BN evaluated with the running statistics, with Algorithm 2's population statistics;
    (e) when the sensitivity analysis ran, claim 2's ratios in the original run and each
    variant."""
    runs, claims = result["runs"], result["decisions"]
    analysis = result.get("sensitivity") or {}
    fig = plots.figure((24, 5.8) if analysis.get("run") else (19, 5.8))
    a, b, c, d, *e = fig.subplots(1, 5 if analysis.get("run") else 4)
    verdict = {n: "holds" if claims[n]["holds"] else "does not hold" for n in claims}
    fig.suptitle(
        "Ioffe & Szegedy (2015) Fig. 1 on sklearn digits: 3x100 sigmoid MLP, SGD lr "
        f"{LEARNING_RATE}, batch {BATCH}, {result['setup']['steps']} steps, same init and "
        f"minibatches\n{LABELS['claim_1']}: {verdict['claim_1']}\n{LABELS['claim_2']}, by "
        f"{LABELS['movement_over_spread']} of all three percentiles: {verdict['claim_2']} with "
        f"the running statistics (c), {verdict['claim_2_population']} with Algorithm 2's "
        "population statistics (d)"
    )
    bn = runs["bn"]
    for name, color in (("plain", "tab:red"), ("bn", "tab:blue")):
        # drawn wide, under the population curve that follows it closely
        a.plot(runs[name]["step"], runs[name]["test_accuracy"], color=color, lw=3, alpha=0.6,
               label=LABELS[name])  # fmt: skip
    a.plot(
        bn["step"],
        bn["test_accuracy_population"],
        "--",
        color="tab:green",
        label=LABELS["bn_population"],
    )
    a.axhline(TARGET_ACCURACY, color="0.5", ls=":", lw=1, label=f"target {TARGET_ACCURACY:.0%}")
    a.set(ylim=(0, 1.01), xlabel=LABELS["step"], ylabel=LABELS["test_accuracy"])
    a.set_title("(a) test accuracy")
    a.legend(loc="lower right", fontsize=8)
    a.grid(alpha=0.3)

    panels = {  # name: (percentiles, the stability entry, the y-axis' words)
        "plain": (runs["plain"]["percentiles"], claims["claim_2"]["plain"], "pre-activation"),
        "bn": (bn["percentiles"], claims["claim_2"]["bn"], "running statistics"),
        "bn_population": (
            bn["percentiles_population"],
            claims["claim_2_population"]["bn_population"],
            "population statistics",
        ),
    }
    own = np.asarray(bn["percentiles_own_stats"])
    values = [np.asarray(p) for p, _, _ in panels.values()] + [own]
    lo, hi = min(float(np.min(v)) for v in values), max(float(np.max(v)) for v in values)
    styles = dict(zip(Q, (":", "-", "--"), strict=True))
    colors = {"plain": "k", "bn": "k", "bn_population": "tab:green"}
    for ax, (name, (p, stab, words)), title in zip(
        (b, c, d), panels.items(), ("(b)", "(c)", "(d)"), strict=True
    ):
        steps = runs["plain" if name == "plain" else "bn"]["step"]
        for j, q in enumerate(Q):
            ax.plot(steps, np.asarray(p)[:, j], styles[q], color=colors[name], label=LABELS[q])
        if name == "bn_population":
            for j, (q, pq) in enumerate(zip(Q, PERCENTILES, strict=True)):
                label = f"{pq}th, test-set statistics (diagnostic)"
                ax.plot(steps, own[:, j], styles[q], color="tab:cyan", lw=1, label=label)
        ms = stab["movement_over_spread"]
        ax.set_title(
            f"{title} {LABELS[name]}\ninput to last-hidden sigmoid {UNIT}\n"
            f"{LABELS['movement_over_spread']} = " + ", ".join(f"{ms[q]:.2f}" for q in Q),
            fontsize=10,
        )
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.45 * (hi - lo))  # room for the legend
        ax.set_xlabel(LABELS["step"])
        layer = "dense layer" if name == "plain" else "BatchNorm"
        ax.set_ylabel(f"{layer} output ({words})")
        ax.legend(loc="upper center", ncol=2, fontsize=7)
        ax.grid(alpha=0.3)
    if e:
        _sensitivity_panel(e[0], result)
    return fig


def _sensitivity_panel(ax, result: dict[str, Any]) -> None:
    """Claim 2's rule as ratios: BN's movement / spread over the plain network's, per
    percentile, for the original run and each variant; the rule holds when all three are < 1."""
    decisions = {
        "original": result["decisions"],
        **{k: v["decisions"] for k, v in result["sensitivity"]["variants"].items()},
    }
    markers = dict(zip(Q, ("v", "o", "^"), strict=True))
    top = 1.0
    for i, d in enumerate(decisions.values()):
        plain = d["claim_2"]["plain"]["movement_over_spread"]
        for j, q in enumerate(Q):
            x = i + (j - 1) * 0.15
            bn = d["claim_2"]["bn"]["movement_over_spread"][q] / plain[q]
            pop = d["claim_2_population"]["bn_population"]["movement_over_spread"][q] / plain[q]
            labels = (f"running statistics, {q}", f"Algorithm 2, {q}") if i == 0 else ("", "")
            top = max(top, bn, pop)
            ax.plot(x, bn, markers[q], color="tab:blue", label=labels[0] or None)
            ax.plot(x, pop, markers[q], color="tab:green", mfc="none", label=labels[1] or None)
    ax.axhline(1, color="k", lw=1, ls=":", label="claim 2 holds: all three below 1")
    ax.set_ylim(0, 1.5 * top)  # room for the legend
    ax.set_xticks(range(len(decisions)), [LABELS[k] for k in decisions], rotation=20, fontsize=8)
    ax.set_ylabel(f"{LABELS['movement_over_spread']}: BN / without BN")
    ax.set_title(
        "(e) sensitivity: claim 2's rule in the original run\nand in runs that each change one "
        "setting",
        fontsize=10,
    )
    ax.legend(loc="upper center", ncol=2, fontsize=7)
    ax.grid(alpha=0.3)


def report(result: dict[str, Any]) -> str:
    """The printed report: the recorded curves, the verdicts, the sweep."""
    runs, claims = result["runs"], result["decisions"]
    plain, bn = runs["plain"], runs["bn"]
    n = len(plain["step"])
    curves = [
        (
            plain["step"][i],
            f"{plain['test_accuracy'][i]:.4f}",
            f"{bn['test_accuracy'][i]:.4f}",
            f"{bn['test_accuracy_population'][i]:.4f}",
            *(f"{v:.3f}" for v in plain["percentiles"][i] + bn["percentiles"][i]),
            *(f"{v:.3f}" for v in bn["percentiles_population"][i]),
        )
        for i in sorted({0, n - 1, *range(0, n, max(1, n // 16))})
    ]
    header = (
        "step",
        "acc plain",
        "acc BN",
        "acc BN pop",
        *(f"plain {q}" for q in Q),
        *(f"BN {q}" for q in Q),
        *(f"BN pop {q}" for q in Q),
    )
    c1, c2, c2p = claims["claim_1"], claims["claim_2"], claims["claim_2_population"]
    stability = {
        **{k: c2[k] for k in (*NETWORKS, "bn_own_stats")},
        "bn_population": c2p["bn_population"],
    }

    def verdict(claim: str) -> str:
        return f"{LABELS[claim]}: {'HOLDS' if claims[claim]['holds'] else 'DOES NOT HOLD'}"

    def triple(d: dict[str, float]) -> str:
        return ", ".join(f"{d[q]:.3f}" for q in Q)

    claim_rows = [
        (LABELS[k], *(f"{c1[k][name]}" for name in NETWORKS), "", "")
        for k in ("steps_to_target", "final_accuracy")
    ]
    for m in ("movement_over_spread", *DIAGNOSTICS):
        claim_rows.append((LABELS[m], *(triple(v[m]) for v in stability.values())))
    sweep = [
        (
            lr,
            *(v["steps_to_target"][k] for k in NETWORKS),
            *(f"{v['final_accuracy'][k]:.4f}" for k in NETWORKS),
            f"{v['final_accuracy_population']:.4f}",
            v["claim_1_holds"],
            v["claim_2_holds"],
            v["claim_2_population_holds"],
        )
        for lr, v in result["learning_rate_sweep"].items()
    ]
    sweep_header = ("lr", "steps plain", "steps BN", "final plain", "final BN", "final BN pop")
    holds = tuple(LABELS[k] for k in ("claim_1_holds", "claim_2_holds", "claim_2_population_holds"))
    return "\n".join(
        [
            common.table(curves, header),
            f"{LABELS['seconds']}: plain {plain['seconds']:.1f}, BN {bn['seconds']:.1f}",
            verdict("claim_1"),
            verdict("claim_2"),
            verdict("claim_2_population"),
            common.table(claim_rows, ("", *(LABELS[k] for k in stability))),
            "learning-rate sweep (all else the same):",
            common.table(sweep, (*sweep_header, *holds)),
            *_sensitivity_lines(result),
        ]
    )


def _sensitivity_lines(result: dict[str, Any]) -> list[str]:
    """The sensitivity analysis' table (the original run and each variant), or why it did not
    run; with the robustness sentences when the claims are there."""
    analysis = result.get("sensitivity")
    if not analysis:
        return []
    if not analysis["run"]:
        return [f"{LABELS['sensitivity']}: {LABELS['reason']} ({analysis['reason']})"]
    original = {
        "steps": result["setup"]["steps"],
        "learning_rate": LEARNING_RATE,
        "momentum": BATCHNORM["momentum"],
        "decisions": result["decisions"],
    }

    def triple(d: dict[str, float]) -> str:
        return ", ".join(f"{d[q]:.2f}" for q in Q)

    rows = []
    for name, v in {"original": original, **analysis["variants"]}.items():
        d = v["decisions"]
        rows.append(
            (
                LABELS[name],
                v["steps"],
                f"{v['learning_rate']:.4g}",
                f"{v['momentum']:g}",
                triple(d["claim_2"]["plain"]["movement_over_spread"]),
                triple(d["claim_2"]["bn"]["movement_over_spread"]),
                triple(d["claim_2_population"]["bn_population"]["movement_over_spread"]),
                *(d[k]["holds"] for k in CLAIMS),
            )
        )
    header = (
        "",
        "steps",
        "lr",
        "momentum",
        f"{LABELS['movement_over_spread']}: {LABELS['plain']}",
        LABELS["bn"],
        LABELS["bn_population"],
        *(LABELS[f"{k}_holds"] for k in CLAIMS),
    )
    sentences = [
        f"{c['claim']}: {c['robustness']['sentence']}"
        for c in result.get("claims", [])
        if "robustness" in c
    ]
    return [
        f"{LABELS['sensitivity']} ({', '.join(analysis['negative_claims'])}; the same rules, each run "
        "changes one setting):",
        common.table(rows, header),
        *(f"  {name}: {v['setting']}" for name, v in analysis["variants"].items()),
        *sentences,
    ]


def _evidence(claim: str, decisions: dict[str, Any], steps: int, learning_rate: float) -> str:
    """The numbers ``claim``'s rule was applied to, in one sentence."""

    def triple(d: dict[str, float]) -> str:
        return ", ".join(f"{d[q]:.2f}" for q in Q)

    c1, c2, c2p = (decisions[k] for k in CLAIMS)
    plain = triple(c2["plain"]["movement_over_spread"])
    if claim == "claim_1":
        return (
            f"steps to {c1['target_accuracy']:.0%} test accuracy: {c1['steps_to_target']['bn']} "
            f"with BN, {c1['steps_to_target']['plain']} without; final accuracy "
            f"{c1['final_accuracy']['bn']:.4f} with BN, {c1['final_accuracy']['plain']:.4f} "
            f"without ({steps} steps, lr {learning_rate:g})"
        )
    if claim == "claim_2":
        return (
            f"movement/spread of p15, p50, p85: {triple(c2['bn']['movement_over_spread'])} "
            f"with BN against {plain} without"
        )
    return (
        "movement/spread of p15, p50, p85: "
        f"{triple(c2p['bn_population']['movement_over_spread'])} with BN against {plain} "
        f"without; final test accuracy with population statistics "
        f"{c2p['final_accuracy_population']:.4f}"
    )


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims for ``report.md``, as :func:`decide` decided them: claim 2 twice, once with
    each set of BatchNorm inference statistics, by the same rule; a claim that does not hold
    carries its sensitivity analysis when that ran (:func:`sensitivity`)."""
    decisions, steps = result["decisions"], result["setup"]["steps"]
    analysis = result.get("sensitivity") or {}

    def robustness(claim: str) -> dict[str, Any] | None:
        if decisions[claim]["holds"] or not analysis.get("run"):
            return None
        variants = [
            common.variant(
                name,
                v["setting"],
                v["decisions"][claim]["holds"],
                _evidence(claim, v["decisions"], v["steps"], v["learning_rate"]),
            )
            for name, v in analysis["variants"].items()
        ]
        return common.robustness(decisions[claim]["holds"], variants)

    claim_2 = (
        "Ioffe & Szegedy, Figure 1(b, c): with BatchNorm the distribution of a sigmoid's "
        "input (its 15th, 50th, 85th percentiles) moves less during training"
    )
    texts = {
        "claim_1": "Ioffe & Szegedy, Figure 1(a): with BatchNorm the network trains faster and "
        "to a higher accuracy",
        "claim_2": f"{claim_2}; BN evaluated with its running statistics (momentum average)",
        "claim_2_population": f"{claim_2}; BN evaluated with the paper's Algorithm 2 "
        "population statistics",
    }
    panels = {
        "claim_1": "panel (a)",
        "claim_2": "panels (b, c)",
        "claim_2_population": "panels (b, d)",
    }
    return [
        common.claim(
            texts[k],
            RULES[k],
            decisions[k]["holds"],
            _evidence(k, decisions, steps, LEARNING_RATE),
            f"{NAME}.png, {panels[k]}",
            robustness=robustness(k),
        )
        for k in CLAIMS
    ]


#: ``main(quick=True)``: the same experiment, 600 steps and one learning rate.
QUICK = {"steps": 600, "eval_every": 100, "sweep": (LEARNING_RATE,)}


def main(
    out_dir: Path | str = "results",
    *,
    quick: bool = False,
    steps: int = STEPS,
    eval_every: int = EVAL_EVERY,
    sweep: Sequence[float] = SWEEP_LEARNING_RATES,
) -> dict[str, Any]:
    """Run the experiment; write ``batchnorm_ioffe_digits.json`` and ``.png``; print the report.

    The setup and the rules are written to ``batchnorm_ioffe_digits.preregistered.json`` first
    (:func:`common.preregister`). ``quick=True`` runs :data:`QUICK` (the numbers are then not
    the paper's comparison) and no sensitivity analysis.
    """
    if quick:
        steps, eval_every, sweep = QUICK["steps"], QUICK["eval_every"], QUICK["sweep"]
    _check_steps(steps, eval_every)
    setup = {
        **SETUP,
        "steps": steps,
        "eval_every": eval_every,
        "sweep_learning_rates": sorted(_rates(sweep)),
        "quick": quick,
    }
    common.preregister(NAME, out_dir, setup, RULES)
    result = run(steps, eval_every, sweep)
    result["sensitivity"] = sensitivity(result, quick=quick)
    result = {**result, "quick": quick, "claims": claims(result)}
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
