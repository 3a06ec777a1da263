"""Long time lags: the LSTM against a plain recurrent network (Hochreiter & Schmidhuber 1997).

Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997, built the
LSTM's gated cell state so that error flows back over long lags without vanishing (the
"constant error carousel"), and report that it solves tasks with lags "in excess of 1000
discrete-time steps" where recurrent networks trained by backpropagation through time or
real-time recurrent learning fail. Their Experiment 2 ("noise-free and noisy sequences with
long time lags") is the simplest of those tasks: the first symbol of a sequence, ``x`` or
``y``, must be reported at its end, after distractor symbols that carry no information. One
claim, tested here, and one check of the negative result it rests on:

1. *The LSTM solves longer lags than the plain network*, at equal parameter count and budget.
2. *The plain network's failure is at convergence*: at the lags it does not solve, its
   held-out loss has stopped improving by the end of the budget (a negative verdict checked
   against its setup, not an artefact of a short budget).

**The task** (their Experiment 2b, "no local regularities", with ``DISTRACTORS`` distractor
symbols instead of ``p − 1``). A sequence of lag ``T`` has ``T`` tokens: the first is ``x``
or ``y`` (equally likely), the ``T − 1`` after it are drawn uniformly and independently from
the distractors; the target is the first token, read from the network's state after the last.
The answer depends on an input ``T`` steps back and on nothing else, so chance is 50 %.
Training sequences are drawn fresh at every update (as in H&S: no training set to
memorise), by NumPy (``default_rng((seed, chunk))``, :func:`minibatches`), the same for both
models; the held-out set is ``HELDOUT`` sequences per lag from their own generator, the same
for every model and seed (lag 5 has only ``2·8⁴`` distinct sequences, so there the held-out
ones are seen in training too; from lag 10, ``2·8⁹ ≈ 2.7·10⁸``, practically never).

**The networks** (``jaxnn.serial``): ``jaxnn.embedding(VOCAB, EMBED)`` →
``jaxnn.recurrent_layer(cell, return_sequences=False)`` (the last hidden state ``h_T``) →
``jaxnn.dense(2)``, with ``cell`` an LSTM of ``LSTM_HIDDEN`` units (``jaxnn.lstm_cell``,
PyTorch's ``nn.LSTM`` with the forget gate of Gers et al. 2000) or a plain Elman network
(``jaxnn.elman_cell``, tanh, PyTorch's ``nn.RNN``) whose hidden size :func:`matched_hidden`
chooses so that the two networks' parameter counts are as close as the hidden size allows
(both counts are reported). Every parameter starts as PyTorch's (``U(±1/√H)`` for the cells,
``N(0, 1)`` for the embedding) and the dense head as the library's (Glorot uniform, zero
bias), except one declared choice: the LSTM's forget gate starts with the total bias
``FORGET_BIAS`` (``b_ih[H:2H] = FORGET_BIAS``, ``b_hh[H:2H] = 0``; PyTorch's default is a
random bias near 0). H&S's 1997 LSTM had no forget gate: its cell kept its content exactly
(``f ≡ 1``); Gers et al. added the gate and started it open so that the cell starts as the
1997 one, and Jozefowicz, Zaremba & Sutskever (2015) recommend a bias of 1. At bias ``b`` the
cell keeps ``σ(b)^T`` of its content over ``T`` steps at initialisation: ``0.73^T`` at 1
(``2·10⁻⁷`` at ``T = 50``), ``0.95^T`` at 3 (``0.8 %`` at ``T = 100``). The bias was fixed
before this run, after calibration runs in which the LSTM with a bias of 1, like the plain
network, solved no seed at lag 50; the sensitivity analysis repeats the LSTM with bias 1.

**Training: one budget for both, with a convergence check.** Adam (``LEARNING_RATE``,
constant) after ``optax.clip_by_global_norm(CLIP_NORM)`` (Pascanu et al. 2013's clipping,
the same for both), minibatches of ``BATCH`` fresh sequences, at most ``MAX_STEPS`` updates,
float32. The gradient is the hand-derived one: ``jaxnn.backprop.value_and_grad(...,
grad="manual")``, whose recurrent layer runs the hand-written backpropagation through time
(a reverse ``lax.scan``; never ``jax.vjp`` of the forward loop). Every ``EVAL_EVERY`` updates
the network is evaluated on the held-out set; a seed *solves* a lag when its held-out
accuracy reaches ``SUCCESS_ACCURACY``, and its training stops there (H&S stop at their error
criterion too). The seeds of one (model, lag) train together, vectorised with ``jax.vmap``
(one compiled program per model and lag). A seed fixes the initial weights (the same at
every lag) and the training sequences (the same for both models).

**The decision.** The *success rate* at a lag is the fraction of seeds that solve it within
the budget; the *longest lag solved* is the largest lag whose success rate is above one half
(a strict majority of the seeds), 0 if none. Claim 1 holds if the LSTM's longest lag solved
is larger than the plain network's. Claim 2 holds if there is a lag above the plain
network's longest lag solved and, at every such lag, every seed that did not solve it has
*plateaued*: the mean of its held-out loss over the last quarter of its evaluations is not
below the mean over the quarter before by more than ``PLATEAU_TOL`` nats. A plateau says
the loss stopped improving within the budget, not that it never would: a loss at chance can
fall suddenly after a long plateau (the sensitivity analysis's longer budget asks that).

``RULES`` is fixed before the run and written to ``long_lags.preregistered.json`` before any
training; a claim that does not hold is checked against the variants of ``SENSITIVITY``
(each changes one setting; the longer budget continues the original runs, which is the
same computation as a longer run since the learning rate is constant and the sequences are
indexed by the update). ``main(out_dir, quick=True)``: lags ``QUICK_LAGS``, two seeds,
``QUICK_MAX_STEPS`` updates, no sensitivity analysis. The (model, lag) groups train two at a
time in threads. Writes ``long_lags.json`` and ``.png``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
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

from jaxnn import Layer, backprop
from jaxnn.combinators import layer_keys, serial
from jaxnn.layers import dense
from jaxnn.recurrent import elman_cell, embedding, lstm_cell, recurrent_layer
from jaxnn_experiments import common, plots

NAME = "long_lags"
MODELS = ("elman", "lstm")
X_TOKEN, Y_TOKEN = 0, 1  # the two symbols to remember; the distractors are 2 .. VOCAB - 1
DISTRACTORS = 8
VOCAB = 2 + DISTRACTORS
EMBED = 8
CLASSES = 2
LSTM_HIDDEN = 32
LAGS = (5, 10, 20, 50, 100)
SEEDS = (0, 1, 2, 3, 4)
BATCH = 32
LEARNING_RATE = 1e-3
CLIP_NORM = 1.0
FORGET_BIAS = 3.0
MAX_STEPS = 2000
EVAL_EVERY = 100
LOG_EVERY = 10  # the training loss is recorded as the mean over each LOG_EVERY updates
HELDOUT = 1024
HELDOUT_SEED = 2**20  # the held-out sequences: default_rng(HELDOUT_SEED), apart from training
SUCCESS_ACCURACY = 0.95
PLATEAU_TOL = 0.01  # nats
QUICK_LAGS = (5, 10)
QUICK_SEEDS = (0, 1)
QUICK_MAX_STEPS = 200
LOSS = "softmax_cross_entropy_with_integer_labels"
CHANCE_LOSS = math.log(2)
WORKERS = 2
BUDGET_FACTOR = 5
SENSITIVITY = {
    "budget_x5": f"{BUDGET_FACTOR * MAX_STEPS} updates at most instead of {MAX_STEPS} (the "
    "unsolved seeds continued)",
    "lr_third": f"learning rate {LEARNING_RATE / 3:.4g} instead of {LEARNING_RATE:g}",
    "lr_x3": f"learning rate {3 * LEARNING_RATE:.4g} instead of {LEARNING_RATE:g}",
    "forget_bias_1": f"the LSTM's forget-gate bias 1 (Jozefowicz et al. 2015) instead of "
    f"{FORGET_BIAS:g} (the setting the LSTM's memory at initialisation most depends on; the "
    "plain network unchanged)",
}
SENSITIVITY_CHANGES = {
    "budget_x5": {"max_steps": BUDGET_FACTOR * MAX_STEPS},
    "lr_third": {"learning_rate": LEARNING_RATE / 3},
    "lr_x3": {"learning_rate": 3 * LEARNING_RATE},
    "forget_bias_1": {"forget_bias": 1.0},
}

RULES = {
    "task": "lag T: T tokens, the first x or y (probability 1/2 each), then T - 1 distractors "
    f"drawn uniformly from {DISTRACTORS}; the target is the first token, read after the last; "
    "fresh training sequences at every update",
    "budget": f"both models: Adam, learning rate {LEARNING_RATE:g} (constant), after "
    f"clip_by_global_norm({CLIP_NORM:g}); minibatches of {BATCH}; at most {MAX_STEPS} updates; "
    "float32; the hand-derived gradient (grad='manual')",
    "solved": f"a seed solves a lag when its accuracy on the {HELDOUT} held-out sequences of "
    f"that lag, evaluated every {EVAL_EVERY} updates, reaches {SUCCESS_ACCURACY:g}; its "
    "training stops there",
    "success_rate": "the fraction of the seeds that solve the lag within the budget",
    "longest_lag": "the largest lag whose success rate is above 1/2 (a strict majority of the "
    "seeds); 0 if none",
    "claim_longer_lags": "holds if the LSTM's longest lag solved (the largest lag at which a "
    f"strict majority of the seeds reach {SUCCESS_ACCURACY:g} held-out accuracy within the "
    "budget) is larger than the plain network's",
    "plateaued": "an unsolved seed has plateaued if the mean of its held-out loss over the last "
    "quarter of its n evaluations (the last q = max(1, floor(n/4))) is at least the mean over "
    f"the q before them minus {PLATEAU_TOL:g} nats; with fewer than 2 evaluations it has not",
    "claim_plain_converged": "holds if some lag is above the plain network's longest lag "
    "solved and, at every such lag, every seed that did not solve it has plateaued (its mean "
    "held-out loss over the last quarter of its evaluations at least the mean over the "
    f"quarter before minus {PLATEAU_TOL:g} nats)",
    "reported": "not decided on: the updates each seed took to solve, the training loss, "
    "the held-out loss and accuracy at every evaluation",
    "sensitivity": common.sensitivity_rule(SENSITIVITY)
    + "; a variant trains only the models whose setting it changes and the claim's rule reads "
    "(forget_bias_1: the LSTM, and only for claim_longer_lags), on the same seeds and lags",
}
LABELS = {
    "elman": "plain (Elman, tanh)",
    "lstm": "LSTM",
    "lag": "lag T (steps from the symbol to the answer)",
    "hidden": "hidden size",
    "parameters": "parameters",
    "success_rate": "success rate (fraction of seeds)",
    "solved_step": "updates to solve (null: not solved)",
    "eval_steps": "updates at each evaluation",
    "heldout_loss": "held-out loss (cross-entropy, nats)",
    "heldout_accuracy": "held-out accuracy",
    "train_loss": f"training loss, mean over each {LOG_EVERY} updates",
    "updates": "updates run by the group (the longest-running seed)",
    "longest_lag": "longest lag solved (strict majority of seeds)",
    "plateau": "the plateau test of the plain network's unsolved seeds",
    "last_quarter": "mean held-out loss, last quarter of the evaluations",
    "quarter_before": "mean held-out loss, the quarter before",
    "plateaued": "plateaued",
    "claim_longer_lags": "(1) the LSTM solves longer lags than the plain network",
    "claim_plain_converged": "(2) the plain network's failures are at convergence",
    "sensitivity": "sensitivity of a negative verdict",
    "seconds": "wall time (s)",
    "seconds_main": "wall time before the sensitivity analysis (s)",
    **{k: k.replace("_", " ") for k in SENSITIVITY},
}


# ----------------------------------------------------------------------------- networks


def network(model: str, hidden: int) -> Layer:
    """embedding → recurrent layer (the last hidden state) → dense head, float32."""
    cell = (lstm_cell if model == "lstm" else elman_cell)(hidden, param_dtype=jnp.float32)
    return serial(
        embedding(VOCAB, EMBED, param_dtype=jnp.float32),
        recurrent_layer(cell, return_sequences=False, name=model),
        dense(CLASSES, param_dtype=jnp.float32),
        name=f"{model}_{hidden}",
    )


def parameter_count(model: str, hidden: int) -> int:
    """The number of trainable parameters of :func:`network` (from its shapes)."""
    params, _ = jax.eval_shape(lambda: network(model, hidden).init(jax.random.key(0), (1, 3)))
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def matched_hidden(lstm_hidden: int = LSTM_HIDDEN) -> int:
    """The plain network's hidden size whose parameter count is closest to the LSTM's."""
    target = parameter_count("lstm", lstm_hidden)
    # Elman: H·(EMBED + H + 2) + head + embedding; the count grows with H, so search near
    # the positive root of H² + (EMBED + 2 + CLASSES)·H = target - embedding - head bias.
    rest = VOCAB * EMBED + CLASSES
    root = -(EMBED + 2 + CLASSES) + math.sqrt((EMBED + 2 + CLASSES) ** 2 + 4 * (target - rest))
    guess = max(1, int(root / 2))
    candidates = range(max(1, guess - 2), guess + 3)
    return min(candidates, key=lambda h: (abs(parameter_count("elman", h) - target), h))


def hidden_sizes() -> dict[str, int]:
    """``{"elman": matched_hidden(), "lstm": LSTM_HIDDEN}``."""
    return {"elman": matched_hidden(), "lstm": LSTM_HIDDEN}


def recurrent_key(net: Layer) -> str:
    """The params' key of the recurrent layer of :func:`network` (its second layer)."""
    return layer_keys(net)[1]


def init_params(net: Layer, model: str, key: jax.Array, forget_bias: float) -> Any:
    """PyTorch's initialisation, and for the LSTM the forget gate's total bias set to
    ``forget_bias`` (``b_ih[H:2H] = forget_bias``, ``b_hh[H:2H] = 0``)."""
    params, _ = net.init(key, (BATCH, 2))
    if model == "lstm":
        rk = recurrent_key(net)
        cell = dict(params[rk])
        h = cell["w_hh"].shape[0]
        cell["b_ih"] = cell["b_ih"].at[h : 2 * h].set(forget_bias)
        cell["b_hh"] = cell["b_hh"].at[h : 2 * h].set(0.0)
        params = {**params, rk: cell}
    return params


# ----------------------------------------------------------------------------- the task


def sequences(
    rng: np.random.Generator, shape: tuple[int, ...], lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of lag ``lag``: tokens ``[*shape, lag]`` and targets ``[*shape]`` (int32).

    The first token is ``X_TOKEN`` or ``Y_TOKEN`` (the target: 0 or 1, equally likely), the
    ``lag - 1`` after it are drawn uniformly from the ``DISTRACTORS`` distractor tokens. The
    distractors are drawn time step by time step, so a generator in the same state gives, at
    a shorter lag, the first tokens of the same sequences: the data of a lag do not depend on
    which other lags run.
    """
    label = rng.integers(0, 2, shape)
    rest = np.moveaxis(rng.integers(2, VOCAB, (lag - 1, *shape)), 0, -1)
    first = np.where(label == 1, Y_TOKEN, X_TOKEN)
    tokens = np.concatenate([first[..., None], rest], axis=-1)
    return tokens.astype(np.int32), label.astype(np.int32)


def heldout(lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``HELDOUT`` held-out sequences of ``lag``, the same for every model and seed,
    drawn from their own generator (``default_rng(HELDOUT_SEED)``)."""
    return sequences(np.random.default_rng(HELDOUT_SEED), (HELDOUT,), lag)


def minibatches(seed: int, chunk: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The training minibatches of chunk ``chunk`` (updates ``chunk · EVAL_EVERY`` to
    ``(chunk + 1) · EVAL_EVERY − 1``) of seed ``seed``: tokens ``[EVAL_EVERY, BATCH, lag]``,
    targets ``[EVAL_EVERY, BATCH]``, drawn by ``default_rng((seed, chunk))``: the same for
    both models (and the first tokens of the same sequences at every lag).
    """
    return sequences(np.random.default_rng((seed, chunk)), (EVAL_EVERY, BATCH), lag)


def init_key(seed: int) -> jax.Array:
    """The key of a seed's initial weights: the same at every lag."""
    return jax.random.key(seed)


def optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Clipping, then Adam; the learning rate lives in the optimizer's state, so one compiled
    program serves every rate."""
    return optax.chain(
        optax.clip_by_global_norm(CLIP_NORM),
        optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate),
    )


# ----------------------------------------------------------------------------- training


def make_chunk(net: Layer):
    """One compiled program: the updates of one chunk for every seed, then the evaluation.

    ``chunk(params, opt_state, active, x, y, x_test, y_test) -> (params, opt_state,
    train_loss, accuracy, heldout_loss)``, ``train_loss`` the mean of each ``LOG_EVERY``
    updates' minibatch losses, vectorised over the seeds (the leading axis of
    every argument but the held-out set); ``x [S, every, BATCH, T]``, ``y [S, every, BATCH]``
    are the chunk's minibatches (:func:`minibatches`). A seed with ``active`` false keeps its
    params and optimizer state.
    """
    vg = backprop.value_and_grad(net, LOSS, grad="manual")
    opt = optimizer(LEARNING_RATE)  # the rate is read from the state

    def one(params, opt_state, active, xs, ys, x_test, y_test):
        def body(carry, batch):
            p, o = carry
            (value, _), grads = vg(p, {}, *batch, train=True)
            updates, o_new = opt.update(grads, o, p)
            p_new = optax.apply_updates(p, updates)

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)

            return (keep(p_new, p), keep(o_new, o)), value

        (params, opt_state), values = jax.lax.scan(body, (params, opt_state), (xs, ys))
        logits, _ = net.apply(params, {}, x_test, train=False)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y_test)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y_test))
        return params, opt_state, values.reshape(-1, LOG_EVERY).mean(-1), accuracy, loss

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None, None)))


@functools.cache
def programs(model: str, hidden: int) -> tuple[Layer, Any, Any]:
    """The network, its compiled initialisation ``start(init_keys, forget_bias,
    learning_rate) -> (params, opt_state)`` (vectorised over the seeds) and its
    :func:`make_chunk`, one per (model, hidden size): ``jit`` compiles the chunk once per lag
    (its shapes) and keeps it, so the variants reuse the programs."""
    net = network(model, hidden)

    def start(init_keys, forget_bias, learning_rate):
        params = jax.vmap(lambda k: init_params(net, model, k, forget_bias))(init_keys)
        return params, jax.vmap(optimizer(learning_rate).init)(params)

    return net, jax.jit(start), make_chunk(net)


class Group:
    """The seeds of one (model, lag): their arrays, their programs, the record of their
    evaluations. :meth:`train` runs it, and runs it on from where it stopped."""

    def __init__(self, model: str, lag: int, config: dict[str, Any]) -> None:
        self.model, self.lag, self.seeds = model, lag, list(config["seeds"])
        self.net, start, self.chunk = programs(model, config["hidden"][model])
        self.x_test, self.y_test = heldout(lag)
        self.params, self.opt_state = start(
            jnp.stack([init_key(s) for s in self.seeds]),
            jnp.float32(config["forget_bias"]),
            jnp.float32(config["learning_rate"]),
        )
        n = len(config["seeds"])
        self.active = np.ones(n, bool)
        self.chunks = 0
        self.record: dict[str, Any] = {
            "solved_step": [None] * n,
            "eval_steps": [],
            "heldout_loss": [[] for _ in range(n)],
            "heldout_accuracy": [[] for _ in range(n)],
            "train_loss": [[] for _ in range(n)],
            "seconds": 0.0,
        }

    def train(self, max_steps: int, bar: Any = None) -> dict[str, Any]:
        """Train until every seed has solved the lag or ``max_steps`` updates have run."""
        start = time.perf_counter()
        rec = self.record
        with jax.enable_x64(False):  # float32 by construction, in this thread too
            while self.active.any() and (self.chunks + 1) * EVAL_EVERY <= max_steps:
                data = [minibatches(s, self.chunks, self.lag) for s in self.seeds]
                out = self.chunk(
                    self.params,
                    self.opt_state,
                    jnp.asarray(self.active),
                    np.stack([x for x, _ in data]),
                    np.stack([y for _, y in data]),
                    self.x_test,
                    self.y_test,
                )
                self.params, self.opt_state = out[0], out[1]
                train_loss, accuracy, loss = (np.asarray(a, np.float64) for a in out[2:])
                self.chunks += 1
                step = self.chunks * EVAL_EVERY
                rec["eval_steps"].append(step)
                for s in np.flatnonzero(self.active):
                    rec["train_loss"][s].extend(float(v) for v in train_loss[s])
                    rec["heldout_loss"][s].append(float(loss[s]))
                    rec["heldout_accuracy"][s].append(float(accuracy[s]))
                    if accuracy[s] >= SUCCESS_ACCURACY:
                        rec["solved_step"][s] = step
                        self.active[s] = False
                if bar is not None:
                    bar.update(1)
        rec["updates"] = self.chunks * EVAL_EVERY
        rec["success_rate"] = success_rate(rec["solved_step"])
        rec["seconds"] += time.perf_counter() - start
        return rec


class _Bar:
    """A progress bar shared by the worker threads."""

    def __init__(self, total: int, desc: str) -> None:
        self._bar = common.progress(range(total), desc, total=total, unit="eval")
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            if hasattr(self._bar, "update"):
                self._bar.update(n)

    def close(self) -> None:
        if hasattr(self._bar, "close"):
            self._bar.close()


def train_group(model: str, lag: int, config: dict[str, Any], bar: Any = None) -> Group:
    """Train every seed of (``model``, ``lag``) within ``config``'s budget.

    Returns the :class:`Group`, whose ``record`` is the JSON-ready record: per seed
    ``solved_step`` and, until it solved, ``heldout_loss`` and ``heldout_accuracy`` at each
    evaluation and ``train_loss`` per ``LOG_EVERY`` updates; ``eval_steps``, ``updates``, ``success_rate``,
    ``seconds``.
    """
    with jax.enable_x64(False):
        group = Group(model, lag, config)
    group.train(config["max_steps"], bar)
    return group


def _by_model(records: dict[tuple[str, int], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for model, lag in sorted(records, key=lambda j: (MODELS.index(j[0]), j[1])):
        runs.setdefault(model, {})[str(lag)] = records[model, lag]
    return runs


def _in_threads(fn: Any, jobs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """``fn(job)`` for every job, ``WORKERS`` at a time; the longest lags first."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {j: pool.submit(fn, j) for j in sorted(jobs, key=lambda j: -j[1])}
        return {j: f.result() for j, f in futures.items()}


def train_all(
    jobs: Sequence[tuple[str, int]], config: dict[str, Any], desc: str
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], Group]]:
    """Every (model, lag) of ``jobs``, ``WORKERS`` at a time (threads).

    Returns ``({model: {str(lag): record}}, {(model, lag): group})``.
    """
    bar = _Bar(len(jobs) * (config["max_steps"] // EVAL_EVERY), desc)
    groups = _in_threads(lambda j: train_group(j[0], j[1], config, bar), jobs)
    bar.close()
    return _by_model({j: g.record for j, g in groups.items()}), groups


def continue_all(
    groups: dict[tuple[str, int], Group], max_steps: int, desc: str
) -> dict[str, dict[str, Any]]:
    """The budget variant: every group run on to ``max_steps`` updates (its unsolved seeds
    train on, the solved ones keep their params). Returns the extended records; the groups'
    own records (and the run's, which are the same objects) stay the original run's."""
    originals = {j: g.record for j, g in groups.items()}
    for g in groups.values():
        g.record = copy.deepcopy(g.record)
    jobs = [j for j, g in groups.items() if g.active.any()]
    bar = _Bar(len(jobs) * (max_steps // EVAL_EVERY), desc)
    _in_threads(lambda j: groups[j].train(max_steps, bar), jobs)
    bar.close()
    extended = {}
    for j, g in groups.items():
        extended[j], g.record = g.record, originals[j]
    return _by_model(extended)


# ----------------------------------------------------------------------------- the rules


def success_rate(solved_step: Sequence[int | None]) -> float:
    """``RULES["success_rate"]``: the fraction of seeds with a solve step."""
    return sum(s is not None for s in solved_step) / len(solved_step)


def longest_lag(by_lag: dict[str, dict[str, Any]]) -> int:
    """``RULES["longest_lag"]``: the largest lag whose success rate is above 1/2; 0 if none."""
    solved = [int(lag) for lag, r in by_lag.items() if success_rate(r["solved_step"]) > 0.5]
    return max(solved, default=0)


def plateau(curve: Sequence[float]) -> dict[str, Any]:
    """``RULES["plateaued"]`` on one seed's held-out losses (one per evaluation)."""
    if len(curve) < 2:  # nothing to compare: no evidence of a plateau
        last = float(curve[-1]) if len(curve) else None
        return {"last_quarter": last, "quarter_before": None, "plateaued": False}
    q = max(1, len(curve) // 4)
    last = float(np.mean(curve[-q:]))
    before = float(np.mean(curve[-2 * q : -q]))
    return {
        "last_quarter": last,
        "quarter_before": before,
        "plateaued": last >= before - PLATEAU_TOL,
    }


def decide_longer_lags(runs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 1 on ``runs`` (both models): ``(holds, {"longest_lag": {model: lag}})``."""
    longest = {m: longest_lag(runs[m]) for m in MODELS}
    return longest["lstm"] > longest["elman"], {"longest_lag": longest}


def decide_plain_converged(runs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Claim 2 on ``runs`` (the plain network's): ``(holds, {"longest_lag", "plateau":
    {lag: {seed index: plateau(...)}}})`` over the lags above its longest lag solved."""
    by_lag = runs["elman"]
    longest = longest_lag(by_lag)
    above = sorted(int(lag) for lag in by_lag if int(lag) > longest)
    tests = {
        str(lag): {
            str(s): plateau(curve)
            for s, (curve, step) in enumerate(
                zip(by_lag[str(lag)]["heldout_loss"], by_lag[str(lag)]["solved_step"], strict=True)
            )
            if step is None
        }
        for lag in above
    }
    holds = bool(above) and all(
        t["plateaued"] for by_seed in tests.values() for t in by_seed.values()
    )
    return holds, {"longest_lag": longest, "plateau": tests}


DECIDERS = {
    "claim_longer_lags": (MODELS, decide_longer_lags),
    "claim_plain_converged": (("elman",), decide_plain_converged),
}


def sensitivity(
    config: dict[str, Any],
    failed: Sequence[str],
    runs: dict[str, Any],
    groups: dict[tuple[str, int], Group],
) -> dict[str, Any]:
    """The variants of ``SENSITIVITY`` for the claims in ``failed``: each changes one setting
    of ``config`` and trains only the models whose setting it changes and the claims read
    (the others' original runs are reused); the budget variant continues the original runs."""
    read = {m for c in failed for m in DECIDERS[c][0]}
    out = {}
    for name, change in SENSITIVITY_CHANGES.items():
        claims = [c for c in failed if name != "forget_bias_1" or c == "claim_longer_lags"]
        if not claims:
            continue
        cfg = {**config, **change}
        if name == "budget_x5":
            chosen = {j: groups[j] for j in groups if j[0] in read}
            v_runs = continue_all(chosen, cfg["max_steps"], f"variant {name}")
        else:
            models = ["lstm"] if name == "forget_bias_1" else sorted(read)
            models = [m for m in models if m in read]
            jobs = [(m, lag) for m in models for lag in cfg["lags"]]
            trained, _ = train_all(jobs, cfg, f"variant {name}")
            v_runs = {m: trained.get(m, runs[m]) for m in read}
        verdicts = {}
        for c in claims:
            holds, numbers = DECIDERS[c][1](v_runs)
            verdicts[c] = {"holds": holds, "numbers": numbers}
        out[name] = {
            "setting": SENSITIVITY[name],
            "change": change,
            "runs": v_runs,
            "verdicts": verdicts,
        }
    return out


# ----------------------------------------------------------------------------- run


def setup(quick: bool = False) -> dict[str, Any]:
    """The setup fixed before the run (preregistered with ``RULES``)."""
    hidden = hidden_sizes()
    return {
        "task": f"Hochreiter & Schmidhuber 1997, Experiment 2 (task 2b: random distractors): "
        f"tokens x={X_TOKEN}, y={Y_TOKEN}, distractors 2..{VOCAB - 1}; the first token is the "
        "target",
        "data": f"training: update k of seed s trains on {BATCH} sequences drawn by NumPy's "
        f"default_rng((s, k // {EVAL_EVERY})), the same for both models; held-out: {HELDOUT} "
        f"sequences per lag drawn by default_rng({HELDOUT_SEED}); the distractors drawn time "
        "step by time step, so a lag's sequences are the first tokens of a longer lag's",
        "initialisation": f"seed s: jax.random.key(s), the same initial weights at every lag; "
        f"the LSTM's forget gate: b_ih[H:2H] = {FORGET_BIAS:g}, b_hh[H:2H] = 0",
        "network": f"serial(embedding({VOCAB}, {EMBED}), recurrent_layer(cell, "
        f"return_sequences=False), dense({CLASSES})); cell lstm_cell(H) or elman_cell(H, "
        "'tanh'); PyTorch's initialisation (cells U(-1/sqrt(H), 1/sqrt(H)), embedding N(0, 1)), "
        "Glorot-uniform head with zero bias",
        "hidden": hidden,
        "parameters": {m: parameter_count(m, h) for m, h in hidden.items()},
        "forget_bias": FORGET_BIAS,
        "lags": list(QUICK_LAGS if quick else LAGS),
        "seeds": list(QUICK_SEEDS if quick else SEEDS),
        "batch_size": BATCH,
        "learning_rate": LEARNING_RATE,
        "clip_norm": CLIP_NORM,
        "max_steps": QUICK_MAX_STEPS if quick else MAX_STEPS,
        "eval_every": EVAL_EVERY,
        "heldout": HELDOUT,
        "success_accuracy": SUCCESS_ACCURACY,
        "loss": LOSS,
        "gradient_path": "manual: jaxnn.backprop.value_and_grad(grad='manual'), the recurrent "
        "layer's hand-derived backpropagation through time",
        "sensitivity": SENSITIVITY,
        "sensitivity_changes": SENSITIVITY_CHANGES,
        "quick": quick,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Train every (model, lag, seed); decide the claims; the JSON-ready result."""
    start = time.perf_counter()
    cfg = setup(quick)
    jobs = [(m, lag) for m in MODELS for lag in cfg["lags"]]
    runs, groups = train_all(jobs, cfg, f"{len(jobs)} (model, lag) x {len(cfg['seeds'])} seeds")
    result: dict[str, Any] = {"quick": quick, "setup": cfg, "rules": RULES, "runs": runs}
    verdicts, tests = {}, {}
    for claim, (_, decide) in DECIDERS.items():
        verdicts[claim], tests[claim] = decide(runs)
    result["verdicts"], result["tests"] = verdicts, tests
    failed = [c for c, holds in verdicts.items() if not holds]
    if failed and quick:
        result["sensitivity_not_run"] = "quick mode: the variants need the full setup"
    elif failed:
        result["seconds_main"] = time.perf_counter() - start
        result["sensitivity"] = sensitivity(cfg, failed, runs, groups)
    result["claims"] = _claims(result)
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- claims, report


def _rates(runs: dict[str, Any], model: str) -> str:
    return ", ".join(
        f"{lag}: {_fraction(r['solved_step'])}"
        for lag, r in sorted(runs[model].items(), key=lambda kv: int(kv[0]))
    )


def _fraction(solved_step: Sequence[int | None]) -> str:
    return f"{sum(s is not None for s in solved_step)}/{len(solved_step)}"


def _evidence(
    claim: str, runs: dict[str, Any], numbers: dict[str, Any], cfg: dict[str, Any]
) -> str:
    if claim == "claim_longer_lags":
        longest = numbers["longest_lag"]
        return (
            f"seeds that solved each lag within {cfg['max_steps']} updates, LSTM ({cfg['parameters']['lstm']} "
            f"parameters) {_rates(runs, 'lstm')}; plain network ({cfg['parameters']['elman']} "
            f"parameters) {_rates(runs, 'elman')}; longest lag solved: LSTM {longest['lstm']}, "
            f"plain {longest['elman']}"
        )
    parts = []
    for lag, by_seed in numbers["plateau"].items():
        if not by_seed:
            parts.append(f"lag {lag}: every seed solved it")
            continue
        tests = list(by_seed.values())
        falls = [
            t["quarter_before"] - t["last_quarter"]
            for t in tests
            if t["quarter_before"] is not None
        ]
        finals = [t["last_quarter"] for t in tests if t["last_quarter"] is not None]
        fall = (
            f", its fall from the quarter before {min(falls):+.4f} to {max(falls):+.4f} nats "
            f"(tolerance {PLATEAU_TOL:g})"
            if falls
            else ", too few evaluations to compare"
        )
        parts.append(
            f"lag {lag}: {len(tests)} unsolved seed(s), {sum(t['plateaued'] for t in tests)} "
            f"plateaued; held-out loss over the last quarter {min(finals):.3f}-{max(finals):.3f} "
            f"(chance ln 2 = {CHANCE_LOSS:.3f}){fall}"
        )
    if not parts:
        return f"the plain network solved every lag (longest {numbers['longest_lag']}): no failure to check"
    return (
        f"the lags above the plain network's longest lag solved ({numbers['longest_lag']}): "
        + "; ".join(parts)
    )


CLAIM_TEXT = {
    "claim_longer_lags": "The LSTM solves longer time lags than a plain recurrent network "
    "(Elman, tanh) of the same parameter count trained with the same budget (Hochreiter & "
    "Schmidhuber 1997, Experiment 2)",
    "claim_plain_converged": "The plain network's failure at the longer lags is at "
    "convergence, not a short budget: its held-out loss has stopped improving",
}
CLAIM_FIGURE = {
    "claim_longer_lags": f"{NAME}.png, panels (a, b)",
    "claim_plain_converged": f"{NAME}.png, panel (c)",
}


def _claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    analysis = result.get("sensitivity")
    cfg = result["setup"]
    for claim, holds in result["verdicts"].items():
        robustness = None
        if analysis:
            variants = [
                common.variant(
                    name,
                    v["setting"],
                    v["verdicts"][claim]["holds"],
                    _evidence(
                        claim,
                        v["runs"],
                        v["verdicts"][claim]["numbers"],
                        {**cfg, **v["change"]},
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
                _evidence(claim, result["runs"], result["tests"][claim], cfg),
                CLAIM_FIGURE[claim],
                robustness=robustness,
            )
        )
    return out


def _median_steps(solved_step: Sequence[int | None]) -> str:
    steps = [s for s in solved_step if s is not None]
    return f"{int(np.median(steps))}" if steps else "-"


def report(result: dict[str, Any]) -> str:
    """The printed report: success rate and updates to solve by lag; verdicts."""
    runs, cfg = result["runs"], result["setup"]
    rows = [
        (
            str(lag),
            *(
                item
                for m in MODELS
                for item in (
                    _fraction(runs[m][str(lag)]["solved_step"]),
                    _median_steps(runs[m][str(lag)]["solved_step"]),
                )
            ),
        )
        for lag in cfg["lags"]
    ]
    header = ("lag",)
    for m in MODELS:
        header += (f"{m}: solved", f"{m}: median updates")
    longest = result["tests"]["claim_longer_lags"]["longest_lag"]
    lines = [
        f"{len(cfg['seeds'])} seeds, at most {cfg['max_steps']} updates of {cfg['batch_size']} "
        f"sequences, Adam {cfg['learning_rate']:g}, clipping {cfg['clip_norm']:g}, hand BPTT"
        f"{', quick' if result['quick'] else ''}",
        f"parameters: LSTM (H={cfg['hidden']['lstm']}) {cfg['parameters']['lstm']}, plain "
        f"(H={cfg['hidden']['elman']}) {cfg['parameters']['elman']}; LSTM forget-gate bias "
        f"{cfg['forget_bias']:g}",
        common.table(rows, header),
        f"{LABELS['longest_lag']}: LSTM {longest['lstm']}, plain {longest['elman']}",
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

COLORS = {"elman": "tab:red", "lstm": "tab:blue"}


def _lag_colors(lags: Sequence[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {lag: cmap(0.1 + 0.8 * i / max(1, len(lags) - 1)) for i, lag in enumerate(lags)}


def figure(result: dict[str, Any]) -> Figure:
    """(a) success rate against the lag; (b) updates to solve, per seed; (c, d) the training
    loss of every seed until it solves (lines) and its held-out loss at the evaluations
    (dots), plain network and LSTM; (e) with a sensitivity analysis, the longest lag solved
    in every variant."""
    runs, cfg = result["runs"], result["setup"]
    lags = cfg["lags"]
    analysis = result.get("sensitivity")
    fig = plots.figure((20, 9) if analysis else (14, 9))
    grid = fig.subplots(2, 3 if analysis else 2)
    (a, b), (c, d) = grid[0][:2], grid[1][:2]
    verdict = "; ".join(
        f"{LABELS[k]}: {'holds' if v else 'does not hold'}" for k, v in result["verdicts"].items()
    )
    fig.suptitle(
        f"Long time lags (Hochreiter & Schmidhuber 1997, Exp. 2): {len(cfg['seeds'])} seeds, "
        f"at most {cfg['max_steps']} updates, LSTM {cfg['parameters']['lstm']} vs plain "
        f"{cfg['parameters']['elman']} parameters, hand BPTT"
        f"{', quick' if result['quick'] else ''}\n{verdict}",
        fontsize=10,
    )
    longest = result["tests"]["claim_longer_lags"]["longest_lag"]
    for m, marker in (("elman", "s"), ("lstm", "o")):
        rates = [success_rate(runs[m][str(lag)]["solved_step"]) for lag in lags]
        a.plot(lags, rates, marker + "-", color=COLORS[m],
               label=f"{LABELS[m]}, H={cfg['hidden'][m]}: longest {longest[m]}")  # fmt: skip
        shift = 0.96 if m == "elman" else 1.04
        for i, lag in enumerate(lags):
            r = runs[m][str(lag)]
            solved = [s for s in r["solved_step"] if s is not None]
            b.plot([lag * shift] * len(solved), solved, marker, color=COLORS[m], mfc="none",
                   alpha=0.7, label=LABELS[m] if i == 0 else None)  # fmt: skip
            failed = len(r["solved_step"]) - len(solved)
            if failed:
                b.plot([lag * shift] * failed, [r["updates"] * 1.25] * failed, "x",
                       color=COLORS[m], alpha=0.7, label=None)  # fmt: skip
    a.axhline(0.5, color="k", ls=":", lw=1, label="1/2: a lag is solved above it")
    plots.finish(a, "(a) success rate: the seeds reaching the held-out criterion", legend={},
                 xlabel=LABELS["lag"], ylabel=LABELS["success_rate"], xscale="log",
                 ylim=(-0.05, 1.05))  # fmt: skip
    b.axhline(cfg["max_steps"], color="0.5", ls="--", lw=1, label="the budget")
    plots.finish(b, "(b) updates to solve, per seed (x: not solved within the budget)",
                 legend={}, xlabel=LABELS["lag"], ylabel="updates", xscale="log",
                 yscale="log")  # fmt: skip
    for panel in (a, b):
        panel.set_xticks(lags, [str(lag) for lag in lags])
        panel.minorticks_off()
    colors = _lag_colors(lags)
    for panel, m, letter in ((c, "elman", "c"), (d, "lstm", "d")):
        for lag in lags:
            r = runs[m][str(lag)]
            for i, (curve, held) in enumerate(zip(r["train_loss"], r["heldout_loss"], strict=True)):
                steps = LOG_EVERY * np.arange(1, len(curve) + 1)
                panel.plot(steps, curve, "-", color=colors[lag], lw=0.8, alpha=0.6,
                           label=f"T = {lag}" if i == 0 else None)  # fmt: skip
                panel.plot(r["eval_steps"][: len(held)], held, ".", color=colors[lag], ms=4)
        panel.axhline(CHANCE_LOSS, color="k", ls=":", lw=1, label="chance (ln 2)")
        plots.finish(panel, f"({letter}) {LABELS[m]}: every seed until it solves",
                     legend={"ncol": 2}, xlabel="update",
                     ylabel=f"loss (nats): training, per {LOG_EVERY} updates (lines); "
                     "held-out (dots)", yscale="log")  # fmt: skip
    if analysis:
        _sensitivity_panel(grid[0][2], result)
        grid[1][2].axis("off")
    return fig


def _sensitivity_panel(ax: Any, result: dict[str, Any]) -> None:
    """(e) the longest lag solved by each model the failed claims read, in the original run
    and in every variant."""
    columns = {"original": result["runs"]}
    columns.update({name: v["runs"] for name, v in result["sensitivity"].items()})
    pos = np.arange(len(columns))
    for m, marker in (("elman", "s"), ("lstm", "o")):
        values = [longest_lag(r[m]) if m in r else np.nan for r in columns.values()]
        ax.plot(pos, values, marker, color=COLORS[m], ms=8, mfc="none", label=LABELS[m])
    ax.set_xticks(pos, [k.replace("_", " ") for k in columns], fontsize=8)
    plots.finish(ax, "(e) sensitivity: longest lag solved", legend={}, grid="y",
                 ylabel=LABELS["longest_lag"])  # fmt: skip


def main(out_dir: Path | str = "results", *, quick: bool = False) -> dict[str, Any]:
    """Run the experiment; write ``long_lags.json`` and ``.png``; print the report.

    The setup and the rules are written to ``long_lags.preregistered.json`` before any
    training (:func:`jaxnn_experiments.common.preregister`).
    """
    common.preregister(NAME, out_dir, setup(quick), RULES)
    result = run(quick=quick)
    return common.publish(NAME, out_dir, result, LABELS, report(result), figure(result))


if __name__ == "__main__":
    common.script(main)
