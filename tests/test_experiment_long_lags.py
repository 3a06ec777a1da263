"""The long-lags experiment (Hochreiter & Schmidhuber 1997): its rules, its task, its
networks, its training step, its run.

The rules (success rate, longest lag solved, plateau) are checked on numbers made up here;
the task's sequences against their definition; the two networks' parameter counts against
the formulas; their hand-derived gradient (what the experiment trains with) against
``jax.grad`` in float64; one compiled chunk against a plain optax loop, and its freezing of a
solved seed; the preregistration before any training; and the quick run once: its files,
and its verdicts recomputed from its recorded numbers. The sensitivity analysis runs on the
quick setup with small budgets: the longer budget continues the original runs exactly.
"""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn_experiments.long_lags as ll
from jaxnn import backprop
from jaxnn_experiments import common

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Stop(Exception):
    """Raised by a stand-in for training: nothing may train before the rules are on disk."""


def test_rules_are_written_before_any_training(tmp_path, monkeypatch):
    seen = []

    def first_training(*args, **kwargs):
        seen.append(json.loads((tmp_path / f"{ll.NAME}.preregistered.json").read_text()))
        raise _Stop

    monkeypatch.setattr(ll, "train_group", first_training)
    with pytest.raises(_Stop):
        ll.main(tmp_path, quick=False)
    record = seen[0]
    assert record["status"].startswith("preregistered")
    assert record["rules"] == json.loads(json.dumps(ll.RULES))
    setup = record["setup"]
    assert setup["lags"] == [5, 10, 20, 50, 100] and setup["seeds"] == [0, 1, 2, 3, 4]
    assert setup["forget_bias"] == ll.FORGET_BIAS and setup["max_steps"] == ll.MAX_STEPS
    assert setup["parameters"]["lstm"] == setup["parameters"]["elman"] == 5522
    assert "grad='manual'" in record["rules"]["budget"]
    assert f"reaches {ll.SUCCESS_ACCURACY:g}" in record["rules"]["solved"]
    assert "above 1/2" in record["rules"]["longest_lag"]
    assert f"minus {ll.PLATEAU_TOL:g} nats" in record["rules"]["plateaued"]
    for key, setting in ll.SENSITIVITY.items():
        assert f"{key}: {setting}" in record["rules"]["sensitivity"]
    assert not (tmp_path / f"{ll.NAME}.json").exists()


# ----------------------------------------------------------------------------- the rules


def test_success_rate_and_longest_lag_need_a_strict_majority():
    assert ll.success_rate([100, None, 300, None]) == 0.5
    runs = {
        "5": {"solved_step": [100, 100, 100]},
        "10": {"solved_step": [100, 200, None]},  # 2/3: solved
        "20": {"solved_step": [None, 900, None]},  # 1/3: not
        "50": {"solved_step": [None, None, None]},
    }
    assert ll.longest_lag(runs) == 10
    # the largest lag with a majority, even above a lag without one
    assert ll.longest_lag({**runs, "50": {"solved_step": [100, 100, None]}}) == 50
    # exactly one half is not a majority; no lag solved gives 0
    assert ll.longest_lag({"5": {"solved_step": [100, None]}}) == 0
    assert ll.longest_lag({"5": {"solved_step": [None, None, None]}}) == 0


def test_plateau_compares_the_last_two_quarters():
    flat = [0.7] * 8 + [0.694, 0.693]  # n = 10: quarters of 2
    t = ll.plateau(flat)
    assert t["last_quarter"] == pytest.approx(0.6935) and t["quarter_before"] == 0.7
    assert t["plateaued"] is True
    falling = [0.69] * 6 + [0.60, 0.58, 0.50, 0.48]
    t = ll.plateau(falling)
    assert t["quarter_before"] == pytest.approx(0.59) and t["last_quarter"] == pytest.approx(0.49)
    assert t["plateaued"] is False
    # a fall by less than the tolerance is a plateau; a rise is one too
    assert ll.plateau([0.5] * 6 + [0.49 + 0.001] * 2)["plateaued"] is True
    assert ll.plateau([0.5] * 6 + [0.6] * 2)["plateaued"] is True
    # fewer than 4 evaluations: quarters of one; fewer than 2: no plateau to see
    t = ll.plateau([0.7, 0.69, 0.695])
    assert (t["quarter_before"], t["last_quarter"], t["plateaued"]) == (0.69, 0.695, True)
    assert ll.plateau([0.7])["plateaued"] is False


def _run(steps, curves=None):
    curves = curves or [[0.69] * 8 for _ in steps]
    return {"solved_step": steps, "heldout_loss": curves}


def test_claims_read_the_longest_lags_and_the_unsolved_plain_seeds():
    flat, falling = [0.69] * 8, [0.69] * 4 + [0.6, 0.6, 0.4, 0.4]
    elman = {
        "5": _run([100, 100, 100]),
        "10": _run([100, None, 300], [[0.1], falling, [0.1]]),  # solved: not read
        "20": _run([None, None, 700], [flat, flat, [0.1]]),
    }
    lstm = {lag: _run([100, 100, 100]) for lag in ("5", "10", "20")}
    holds, numbers = ll.decide_longer_lags({"elman": elman, "lstm": lstm})
    assert holds is True and numbers["longest_lag"] == {"elman": 10, "lstm": 20}
    holds, numbers = ll.decide_plain_converged({"elman": elman})
    assert holds is True and list(numbers["plateau"]) == ["20"]
    assert sorted(numbers["plateau"]["20"]) == ["0", "1"]  # the solved seed is not tested
    # a seed still improving at the end of the budget
    elman["20"] = _run([None, None, 700], [flat, falling, [0.1]])
    holds, numbers = ll.decide_plain_converged({"elman": elman})
    assert holds is False and numbers["plateau"]["20"]["1"]["plateaued"] is False
    # equal longest lags: claim 1 does not hold
    assert ll.decide_longer_lags({"elman": lstm, "lstm": lstm})[0] is False
    # the plain network solves every lag: there is no failure to check, claim 2 does not hold
    holds, numbers = ll.decide_plain_converged({"elman": lstm})
    assert holds is False and numbers["plateau"] == {}


# ----------------------------------------------------------------------------- task, networks


def test_sequences_put_the_answer_first_and_distractors_after():
    x, y = ll.sequences(np.random.default_rng(0), (512,), 7)
    assert x.shape == (512, 7) and y.shape == (512,) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0], np.where(y == 1, ll.Y_TOKEN, ll.X_TOKEN))
    assert set(np.unique(x[:, 1:])) == set(range(2, ll.VOCAB))  # every distractor, nothing else
    assert 0.4 < y.mean() < 0.6
    # a lag's sequences are the first tokens of a longer lag's: its data do not depend on
    # which other lags run
    x5, y5 = ll.heldout(5)
    x20, y20 = ll.heldout(20)
    np.testing.assert_array_equal(x5, x20[:, :5])
    np.testing.assert_array_equal(y5, y20)
    assert x5.shape == (ll.HELDOUT, 5)
    xb, yb = ll.minibatches(3, 7, 5)
    assert xb.shape == (ll.EVAL_EVERY, ll.BATCH, 5) and yb.shape == (ll.EVAL_EVERY, ll.BATCH)
    np.testing.assert_array_equal(xb, ll.minibatches(3, 7, 20)[0][..., :5])
    np.testing.assert_array_equal(xb, ll.minibatches(3, 7, 5)[0])  # deterministic
    assert not np.array_equal(xb, ll.minibatches(3, 8, 5)[0])  # a new chunk: new data
    assert not np.array_equal(xb, ll.minibatches(4, 7, 5)[0])  # another seed: other data
    # the held-out sequences are not this chunk's training sequences
    assert not np.array_equal(x5[: ll.BATCH], xb[0])


def test_the_networks_have_matched_parameter_counts():
    v, e, c = ll.VOCAB, ll.EMBED, ll.CLASSES

    def count(h, gates):  # embedding, the cell's four arrays, the dense head
        return v * e + gates * h * (e + h + 2) + h * c + c

    h_lstm, h_elman = ll.LSTM_HIDDEN, ll.matched_hidden()
    assert ll.parameter_count("lstm", h_lstm) == count(h_lstm, 4)
    assert ll.parameter_count("elman", h_elman) == count(h_elman, 1)
    # the closest hidden size: one unit more or less is further from the LSTM's count
    target = count(h_lstm, 4)
    gap = abs(count(h_elman, 1) - target)
    assert gap <= abs(count(h_elman - 1, 1) - target)
    assert gap <= abs(count(h_elman + 1, 1) - target)
    assert gap / target < 0.02


def test_lstm_starts_with_the_declared_forget_bias():
    net = ll.network("lstm", 4)
    params = ll.init_params(net, "lstm", jax.random.key(0), 2.5)
    cell = params[ll.recurrent_key(net)]
    b = np.asarray(cell["b_ih"]) + np.asarray(cell["b_hh"])
    np.testing.assert_array_equal(b[4:8], 2.5)  # f: the total bias
    assert np.all(np.abs(b[:4]) <= 1.0) and np.all(np.abs(b[8:]) <= 1.0)  # U(±1/2) each
    # the plain network is left as PyTorch initialises it
    net = ll.network("elman", 4)
    params = ll.init_params(net, "elman", jax.random.key(0), 2.5)
    assert np.all(np.abs(np.asarray(params[ll.recurrent_key(net)]["b_ih"])) <= 0.5)


@pytest.mark.parametrize("model", ll.MODELS)
def test_the_training_gradient_is_the_hand_bptt_and_equals_jax_grad(model):
    """``grad="manual"`` (the recurrent layer's hand-derived BPTT, what the experiment trains
    with) against ``jax.grad`` of the plain forward, in float64, at a lag of 30."""
    with jax.enable_x64(True):
        net = ll.serial(
            ll.embedding(ll.VOCAB, 3),
            ll.recurrent_layer(
                (ll.lstm_cell if model == "lstm" else ll.elman_cell)(5), return_sequences=False
            ),
            ll.dense(ll.CLASSES),
        )
        params, _ = net.init(jax.random.key(1), (6, 30))
        x, y = ll.sequences(np.random.default_rng(2), (6,), 30)
        vg = backprop.value_and_grad(net, ll.LOSS, grad="manual")
        (v_m, _), g_m = jax.jit(lambda p: vg(p, {}, x, y, train=True))(params)

        def loss(p):
            logits, _ = net.apply(p, {}, x, train=True)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        value, expected = jax.jit(jax.value_and_grad(loss))(params)
        assert float(v_m) == pytest.approx(float(value), rel=1e-14)
        for got, want in zip(jax.tree.leaves(g_m), jax.tree.leaves(expected), strict=True):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


def test_a_chunk_is_a_plain_optax_loop_and_freezes_a_solved_seed():
    """Twenty updates of two seeds through the compiled, vectorised chunk, against the same
    updates written as a loop; the second seed inactive keeps its params and Adam state."""
    lag = 6
    net, start, chunk = ll.programs("lstm", 8)
    keys = jnp.stack([ll.init_key(s) for s in (0, 1)])
    params, opt_state = start(keys, jnp.float32(ll.FORGET_BIAS), jnp.float32(0.01))
    rng = np.random.default_rng(0)
    data = [ll.sequences(rng, (ll.BATCH,), lag) for _ in range(2 * ll.LOG_EVERY)]
    xs = jnp.stack([jnp.stack([x for x, _ in data])] * 2)
    ys = jnp.stack([jnp.stack([y for _, y in data])] * 2)
    x_test, y_test = ll.heldout(lag)
    out = chunk(params, opt_state, jnp.array([True, False]), xs, ys, x_test, y_test)
    p0 = jax.tree.map(lambda a: a[0], params)
    opt = ll.optimizer(0.01)
    o0 = opt.init(p0)
    vg = backprop.value_and_grad(net, ll.LOSS, grad="manual")

    @jax.jit
    def update(p, o, x, y):
        (value, _), grads = vg(p, {}, x, y, train=True)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    losses = []
    for x, y in data:
        p0, o0, value = update(p0, o0, x, y)
        losses.append(float(value))
    for got, want in zip(jax.tree.leaves(out[0]), jax.tree.leaves(p0), strict=True):
        np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=1e-6)
    means = np.asarray(losses).reshape(2, ll.LOG_EVERY).mean(1)  # the logged training loss
    np.testing.assert_allclose(out[2][0], means, rtol=1e-5)
    before_leaves = jax.tree.leaves((params, opt_state))
    for got, before in zip(jax.tree.leaves(out[:2]), before_leaves, strict=True):
        np.testing.assert_array_equal(got[1], before[1])  # the inactive seed
    logits, _ = net.apply(jax.tree.map(lambda a: a[0], out[0]), {}, x_test, train=False)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    assert float(out[3][0]) == pytest.approx(accuracy)


# ----------------------------------------------------------------------------- the quick run


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp(ll.NAME)
    return out, ll.main(out, quick=True)


@pytest.mark.slow
def test_quick_run_writes_its_files(quick):
    out, result = quick
    png = (out / f"{ll.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert json.loads((out / f"{ll.NAME}.json").read_text()) == json.loads(json.dumps(result))
    assert result["quick"] is True and result["rules"] == ll.RULES
    assert len(result["claims"]) == 2


@pytest.mark.slow
def test_quick_run_verdicts_follow_the_recorded_numbers(quick):
    _, result = quick
    setup, runs = result["setup"], result["runs"]
    k = len(setup["seeds"])
    longest = {}
    for model in ll.MODELS:
        assert sorted(runs[model], key=int) == [str(lag) for lag in setup["lags"]]
        solved_lags = []
        for lag, r in runs[model].items():
            assert len(r["solved_step"]) == k and r["updates"] <= setup["max_steps"]
            for step, acc, curve in zip(
                r["solved_step"], r["heldout_accuracy"], r["heldout_loss"], strict=True
            ):
                assert len(acc) == len(curve)
                # a seed solves at its first evaluation at the criterion, and stops there
                hits = [i for i, a in enumerate(acc) if a >= ll.SUCCESS_ACCURACY]
                if step is None:
                    assert not hits and len(acc) == r["updates"] // ll.EVAL_EVERY
                else:
                    assert hits == [len(acc) - 1] and step == len(acc) * ll.EVAL_EVERY
            if sum(s is not None for s in r["solved_step"]) * 2 > k:
                solved_lags.append(int(lag))
        longest[model] = max(solved_lags, default=0)
    assert result["tests"]["claim_longer_lags"]["longest_lag"] == longest
    above = [lag for lag in runs["elman"] if int(lag) > longest["elman"]]
    plateaus = [
        np.mean(c[-(len(c) // 4) :]) >= np.mean(c[-2 * (len(c) // 4) : -(len(c) // 4)]) - 0.01
        for lag in above
        for c, s in zip(
            runs["elman"][lag]["heldout_loss"], runs["elman"][lag]["solved_step"], strict=True
        )
        if s is None
    ]
    expected = {
        "claim_longer_lags": longest["lstm"] > longest["elman"],
        "claim_plain_converged": bool(above) and all(plateaus),
    }
    assert result["verdicts"] == expected
    assert [c["holds"] for c in result["claims"]] == list(expected.values())
    failed = not all(expected.values())
    assert ("sensitivity_not_run" in result) == failed and "sensitivity" not in result


@pytest.mark.slow
def test_sensitivity_continues_the_runs_and_applies_the_same_rules(quick, monkeypatch):
    """On the quick setup at lags 3 and 12 with 200 updates, then each variant: the budget
    variant continued to 400 updates equals a 400-update run, and every variant's verdicts
    follow from its runs by the same deciders."""
    monkeypatch.setitem(ll.SENSITIVITY_CHANGES, "budget_x5", {"max_steps": 400})
    cfg = {**ll.setup(quick=True), "lags": [3, 12]}
    jobs = [(m, lag) for m in ll.MODELS for lag in cfg["lags"]]
    runs, groups = ll.train_all(jobs, cfg, "test")
    before = copy.deepcopy(runs)
    failed = list(ll.DECIDERS)
    analysis = ll.sensitivity(cfg, failed, runs, groups)
    assert list(analysis) == list(ll.SENSITIVITY)
    assert runs == before  # the original records are left as they were
    long_runs, _ = ll.train_all(jobs, {**cfg, "max_steps": 400}, "test")
    budget = analysis["budget_x5"]["runs"]
    for m in ll.MODELS:
        for lag in map(str, cfg["lags"]):  # the same programs on the same inputs: bit for bit
            got, want = (
                {k: v for k, v in r[m][lag].items() if k != "seconds"} for r in (budget, long_runs)
            )
            assert got == want
    assert set(analysis["forget_bias_1"]["verdicts"]) == {"claim_longer_lags"}
    assert analysis["forget_bias_1"]["runs"]["elman"] == runs["elman"]  # not retrained
    for v in analysis.values():
        for claim, verdict in v["verdicts"].items():
            holds, numbers = ll.DECIDERS[claim][1](v["runs"])
            assert verdict == {"holds": holds, "numbers": numbers}
    result = {
        "quick": True,
        "setup": cfg,
        "runs": runs,
        "verdicts": {c: ll.DECIDERS[c][1](runs)[0] for c in failed},
        "tests": {c: ll.DECIDERS[c][1](runs)[1] for c in failed},
        "sensitivity": analysis,
        "seconds": 0.0,
    }
    result["claims"] = ll._claims(result)
    for claim in result["claims"]:
        r = claim["robustness"]
        assert r == common.robustness(claim["holds"], r["variants"])
        assert r["sentence"] in ll.report(result)
    fig = ll.figure(result)  # with the sensitivity panel (e)
    assert len(fig.axes) == 6 and fig.axes[2].get_title().startswith("(e) sensitivity")
