"""The nonlinearity experiment: the collapse of stacked linear layers, and the three verdicts.

The experiment runs once, in its quick mode. Its verdicts are recomputed from the recorded
numbers; its saved networks are collapsed again here in numpy float64; and the collapse is
checked on random identity stacks built here, against numpy float64. Every tolerance is
Higham's rounding-error bound (``jaxnn_experiments.nonlinearity``'s docstring): a product
chain whose inner lengths add up to ``k`` is within ``γ_k |A_1| ··· |A_L|`` of the exact
product in a dtype of unit roundoff ``u``, ``γ_k = k u / (1 - k u)``; a float64 reference
adds its own ``γ_k(2^-53)``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn_experiments.nonlinearity as nl
from jaxnn import mlp

slow = pytest.mark.slow  # the tests that use the experiment's quick run


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
U32, U64 = 2.0**-24, 2.0**-53


def _gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonlinearity")
    return out, nl.main(out, quick=True)


def _layers(saved: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(d["w"], np.float64), np.asarray(d["b"], np.float64)) for d in saved]


def _exact_collapse(layers):
    """``W = W_1 ··· W_L``, ``b`` by Horner, and ``|W_1| ··· |W_L|``, its bias analogue."""
    w, b = layers[0]
    aw, ab = np.abs(w), np.abs(b)
    for wl, bl in layers[1:]:
        w, b = w @ wl, b @ wl + bl
        aw, ab = aw @ np.abs(wl), ab @ np.abs(wl) + np.abs(bl)
    return w, b, aw, ab


@slow
def test_files_and_json(run):
    out, result = run
    png = (out / f"{nl.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert json.loads((out / f"{nl.NAME}.json").read_text()) == json.loads(json.dumps(result))
    assert result["quick"] is True and result["rules"] == nl.RULES


@slow
def test_verdicts_follow_the_rules(run):
    _, result = run
    col, table, setup = result["collapse"], result["accuracy"], result["setup"]
    # (a): the bound's γ_K from the widths, and the ratio's verdict
    widths = {name: [v["input"], *v["widths"]] for name, v in setup["collapse_networks"].items()}
    claim_a = True
    for name, r in col.items():
        assert r["k"] == sum(n + 1 for n in widths[name][:-1])
        assert r["min_width"] == min(widths[name])
        for dt, u in (("float32", U32), ("float64", U64)):
            e = r[dt]
            assert e["gamma_k"] == pytest.approx(_gamma(r["k"], u), rel=1e-12)
            assert e["within_bound"] == (e["max_ratio_to_bound"] is not None
                                         and e["max_ratio_to_bound"] <= 1)  # fmt: skip
            assert e["rel_error"] == pytest.approx(e["max_abs_diff"] / e["max_abs_output"])
            claim_a &= e["within_bound"] and e["numerical_rank"] <= r["min_width"]
    # (b), (c): from the accuracy table and the recorded thresholds
    for name in nl.DATASETS:
        for model in setup["models"]:
            row = table[name][model]
            assert len(row["test"]) == len(setup["seeds"])
            assert row["test_mean"] == pytest.approx(float(np.mean(row["test"])), abs=1e-12)
    claim_b = all(
        table[name][m]["test_mean"] <= limit
        for name, limit in setup["linear_at_most"].items()
        for m in ("linear", "identity")
    )
    claim_c = all(
        table[name][m]["test_mean"] >= limit
        for name, limit in setup["nonlinear_at_least"].items()
        for m in setup["models"]
        if m not in ("linear", "identity")
    )
    # (c) at convergence: each seed's learning rate is the first of the grid with the highest
    # validation accuracy at convergence; the thresholds are claim (c)'s
    conv, sweep_models = result["converged"], setup["sweep_models"]
    for name in nl.DATASETS:
        for model in sweep_models:
            row = conv[name][model]
            for k, by_rate in enumerate(row["validation_by_rate"]):
                best = int(np.argmax(by_rate))
                assert row["learning_rate"][k] == setup["learning_rates"][best]
                assert row["validation"][k] == by_rate[best]
                assert 1 <= row["best_epoch"][k] <= row["converged_epoch"][k]
            assert row["test_mean"] == pytest.approx(float(np.mean(row["test"])), abs=1e-12)
            assert all(e <= setup["convergence"]["max_epochs"] for e in row["converged_epoch"])
            c = setup["convergence"]
            for epoch, converged in zip(row["converged_epoch"], row["converged"], strict=True):
                if converged:  # a window end from the floor on
                    assert epoch % c["window"] == 0 and epoch >= c["min_epochs"]
                else:  # trained to the cap
                    assert epoch == c["max_epochs"]
    claim_c_converged = all(
        conv[name][m]["test_mean"] >= limit
        for name, limit in setup["nonlinear_at_least"].items()
        for m in sweep_models
    )
    # slower: medians of epochs to fit on the decided data set, saturating against not
    slower = result["slower"][setup["slower_dataset"]]
    for m in sweep_models:
        assert slower[m]["median"] == float(np.median(slower[m]["epochs_to_fit"]))
    slow = [slower[m]["median"] for m in setup["saturating"] if m in slower]
    fast = [slower[m]["median"] for m in setup["non_saturating"] if m in slower]
    claim_slower = bool(slow and fast and min(slow) > max(fast))
    expected = {
        "claim_a": claim_a,
        "claim_b": claim_b,
        "claim_c": claim_c,
        "claim_c_converged": claim_c_converged,
        "claim_slower": claim_slower,
    }
    assert result["verdicts"] == expected
    assert [c["holds"] for c in result["claims"]] == list(expected.values())
    # the sensitivity runs exactly when claim (c) does not hold, and never changes its verdict
    # (the quick run leaves it out, and says so)
    assert ("sensitivity" in result) == (not claim_c and not result["quick"])
    assert ("sensitivity_not_run" in result) == (not claim_c and result["quick"])
    assert ("robustness" in result["claims"][2]) == ("sensitivity" in result)


@slow
def test_saved_networks_collapse_like_numpy_float64(run):
    _, result = run
    for name, saved in result["saved_networks"].items():
        layers = _layers(saved["layers"])
        w, b, aw, ab = _exact_collapse(layers)
        widths = [layers[0][0].shape[0], *(wl.shape[1] for wl, _ in layers)]
        k_w = sum(widths[1:-1])  # inner lengths of W_1 ··· W_L
        k_b = sum(n + 1 for n in widths[1:-1])  # Horner: b_1 W_2 + b_2, ...
        for dt, u in (("float32", U32), ("float64", U64)):
            err_w = np.abs(np.asarray(saved[f"w_{dt}"]) - w)
            err_b = np.abs(np.asarray(saved[f"b_{dt}"]) - b)
            assert np.all(err_w <= (_gamma(k_w, u) + _gamma(k_w, U64)) * aw), (name, dt)
            assert np.all(err_b <= (_gamma(k_b, u) + _gamma(k_b, U64)) * ab), (name, dt)


@slow
def test_the_bound_holds_for_numpy_float32_too(run):
    """The saved narrow network, stacked and collapsed by numpy in float32, on new inputs."""
    _, result = run
    layers = [(w.astype(np.float32), b.astype(np.float32))
              for w, b in _layers(result["saved_networks"]["narrow"]["layers"])]  # fmt: skip
    x = np.random.default_rng(1).standard_normal((500, layers[0][0].shape[0])).astype(np.float32)
    h = x
    for wl, bl in layers:
        h = h @ wl + bl
    w, b = layers[0]
    for wl, bl in layers[1:]:
        w, b = w @ wl, b @ wl + bl
    m = np.abs(x.astype(np.float64))
    for wl, bl in layers:
        m = m @ np.abs(wl.astype(np.float64)) + np.abs(bl.astype(np.float64))
    k = result["collapse"]["narrow"]["k"]
    diff = np.abs(h.astype(np.float64) - (x @ w + b).astype(np.float64))
    assert np.all(diff <= 2 * _gamma(k, U32) * m)


@slow
def test_linear_models_stay_below_the_best_line(run):
    """Any half-plane classifier's accuracy is at most the exact best line's, seed by seed."""
    _, result = run
    for name in nl.DATASETS:
        ceiling = result["accuracy"][name]["line_ceiling"]["test"]
        for model in ("linear", "identity"):
            for acc, best in zip(result["accuracy"][name][model]["test"], ceiling, strict=True):
                assert acc <= best + 1e-12, (name, model)


@slow
def test_xor_line_is_the_collapsed_map(run):
    _, result = run
    w, b, aw, ab = _exact_collapse(_layers(result["saved_networks"]["trained_xor"]["layers"]))
    line = result["xor_line"]
    k_w = sum(nl.HIDDEN)
    tol_w = (_gamma(k_w, U32) + _gamma(k_w, U64)) * (aw[:, 0] + aw[:, 1])
    assert np.all(np.abs(np.asarray(line["normal"]) - (w[:, 1] - w[:, 0])) <= tol_w)
    k_b = sum(n + 1 for n in nl.HIDDEN)
    tol_b = (_gamma(k_b, U32) + _gamma(k_b, U64)) * (ab[0] + ab[1])
    assert abs(line["offset"] - (b[1] - b[0])) <= tol_b


def test_line_ceiling_exact_cases():
    corners = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], np.float32)
    assert nl.line_ceiling(corners, np.array([0, 0, 1, 1])) == 0.75
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2))
    assert nl.line_ceiling(x, (x @ [1.0, -2.0] > 0.3).astype(int)) == 1.0
    y = (x @ [1.0, -2.0] > 0.3).astype(int)
    y[:3] = 1 - y[:3]  # three points flipped: a line gets at least 37 of 40
    assert nl.line_ceiling(x, y) >= 37 / 40


@settings(max_examples=6)
@given(
    depth=st.integers(1, 5),
    widths=st.lists(st.integers(1, 24), min_size=5, max_size=5),
    n_in=st.integers(1, 6),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_identity_stack_is_one_affine_map(depth, widths, n_in, batch, seed):
    """A random ``mlp(widths, "identity")`` against numpy float64's ``x W + b``, both dtypes."""
    widths = widths[:depth]
    net = mlp(widths, "identity")
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: net.init(k, (batch, n_in))[0], jax.random.key(0))
    params64 = jax.tree.map(lambda s: rng.standard_normal(s.shape), shapes)
    params32 = jax.tree.map(lambda a: a.astype(np.float32), params64)
    x32 = rng.standard_normal((batch, n_in)).astype(np.float32)
    dense = [params32[f"dense_{2 * i}"] for i in range(depth)]  # mlp: dense_0, identity_1, ...
    layers = [(d["w"].astype(np.float64), d["b"].astype(np.float64)) for d in dense]
    w, b, _, _ = _exact_collapse(layers)
    exact = x32.astype(np.float64) @ w + b
    m = np.abs(x32.astype(np.float64))
    for wl, bl in layers:
        m = m @ np.abs(wl) + np.abs(bl)
    big_k = sum(n + 1 for n in [n_in, *widths][:-1])
    state = {}  # no layer of an identity mlp has state
    for dtype, u in ((np.float32, U32), (np.float64, U64)):
        with jax.default_matmul_precision("highest"):
            p = jax.tree.map(lambda a, dtype=dtype: jnp.asarray(a.astype(dtype)), params32)
            y, _ = jax.jit(net.apply, static_argnames="train")(
                p, state, jnp.asarray(x32.astype(dtype)), train=False
            )
        assert y.dtype == dtype
        # the library's float32 (float64) output and numpy float64's x W + b each within γ_K M
        tol = (_gamma(big_k, u) + _gamma(big_k, U64)) * m
        assert np.all(np.abs(np.asarray(y, np.float64) - exact) <= tol), dtype


# ----------------------------------------------------------------------------- convergence, the
# slower-training claim, the sensitivity of claim (c)


class _Stop(Exception):
    """Raised by a stand-in for training: nothing may train before the rules are on disk."""


def test_rules_are_written_before_any_training(tmp_path, monkeypatch):
    """The convergence criterion, the learning-rate grid and the sensitivity settings are in
    ``nonlinearity.json``'s rules when the first training starts."""
    seen = []

    def first_training(*args, **kwargs):
        record = json.loads((tmp_path / f"{nl.NAME}.preregistered.json").read_text())
        seen.append(record)
        raise _Stop

    monkeypatch.setattr(nl, "train_all", first_training)
    monkeypatch.setattr(nl, "sweep", first_training)
    with pytest.raises(_Stop):
        nl.main(tmp_path, quick=False)
    assert seen  # claim (c)'s training and the sweeps start together: each saw the file
    assert all(r == seen[0] for r in seen)
    record = seen[0]
    assert record["status"].startswith("preregistered") and set(record) == {
        "status", "setup", "rules"
    }  # fmt: skip
    rules, setup = record["rules"], record["setup"]
    assert rules == json.loads(json.dumps(nl.RULES))
    c = nl.CONVERGENCE
    for number in (c["min_epochs"], c["window"], c["min_improvement"], c["max_epochs"]):
        assert str(number) in rules["convergence"]
    assert str([round(lr, 6) for lr in nl.LEARNING_RATES]) in rules["sweep"]
    for key, setting in nl.SENSITIVITY.items():
        assert f"{key}: {setting}" in rules["sensitivity"]
    assert setup["convergence"] == c and setup["sensitivity"] == nl.SENSITIVITY
    assert setup["learning_rates"] == list(nl.LEARNING_RATES)
    assert setup["sweep_models"] == list(nl.ACTIVATIONS)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (np.ones(400), 150),  # flat: converged at the first window end judged
        # towards 0 by a constant factor: window means 0.113, 0.025, 0.0054 from 50 on
        (0.97 ** np.arange(400.0), 250),
        (1 - 0.0004 * np.arange(400.0), 0),  # 0.02 a window, for ever: never
        (np.r_[np.ones(120), np.full(280, 0.5)], 250),  # a drop at 120, then flat
        (np.maximum(1 - 0.0004 * np.arange(400.0), 0.9), 350),  # falls until 250, then flat
    ],
)
def test_converged_epoch(loss, expected):
    # Windows end at multiples of 50 from max(min_epochs, 2 windows) = 150; at the end e, the
    # mean over (e - 50, e] less than 0.01 below the mean over (e - 100, e - 50].
    criterion = {"min_epochs": 150, "window": 50, "min_improvement": 0.01, "max_epochs": 400}
    assert nl.converged_epoch(loss, criterion) == expected


def _fake_sweep(acc_by_run: dict, epochs: int, learning_rates=nl.LEARNING_RATES, seeds=(0,)):
    """A Sweep whose run (lr, data set, seed) has the [epochs, 3] accuracies given (default
    all 1), flat loss (converged at its end)."""
    runs = [(lr, n, s) for lr in learning_rates for n in nl.DATASETS for s in seeds]
    accuracy = np.ones((len(runs), epochs, 3))
    for key, value in acc_by_run.items():
        accuracy[runs.index(key)] = value
    return nl.Sweep(
        runs, np.ones((len(runs), epochs)), accuracy, np.full(len(runs), epochs), epochs
    )


def test_protocol_takes_the_first_best_validation_epoch_within_the_budget():
    acc = np.zeros((10, 3))
    acc[:, 1] = [0.1, 0.5, 0.5, 0.2, 0.9, 0, 0, 0, 0, 0.95]  # validation
    acc[:, 2] = np.arange(10) / 10  # test = epoch index / 10
    sw = _fake_sweep({(nl.LEARNING_RATE, "spirals", 0): acc}, 10)
    i = sw.runs.index((nl.LEARNING_RATE, "spirals", 0))
    assert nl.best_validation_test(sw, i, 4) == 0.1  # epochs 2 and 3 tie: the first
    assert nl.best_validation_test(sw, i, 9) == 0.4
    assert nl.best_validation_test(sw, i, 10) == 0.9


def test_sensitivity_applies_claim_c_rule_to_every_variant(monkeypatch):
    epochs = 4
    low = np.full((5 * epochs, 3), 0.7)  # below every threshold
    # relu: fails only at the third learning rate; sigmoid: fails only after the budget
    late = np.ones((5 * epochs, 3))
    late[:epochs, 1] = 0.9
    late[epochs:, 2] = 0.7  # the best validation epoch lies beyond the budget, with test 0.7
    sweeps = {
        "relu": _fake_sweep({(nl.LEARNING_RATES[2], "xor", 0): low}, 5 * epochs),
        "sigmoid": _fake_sweep({(nl.LEARNING_RATE, "moons", 0): late}, 5 * epochs),
    }
    wide = _fake_sweep({}, epochs, (nl.LEARNING_RATE,))
    monkeypatch.setattr(nl, "sweep", lambda *args, **kwargs: wide)
    out = nl.sensitivity(sweeps, (0,), epochs, nl.CONVERGENCE)
    assert {k: v["holds"] for k, v in out.items()} == {
        "budget_x5": False,  # sigmoid on moons: the best validation epoch is 5, its test 0.7
        "lr_third": True,
        "lr_x3": False,  # relu on xor: 0.7 < 0.95
        "width_x2": True,
    }
    assert out["budget_x5"]["accuracy"]["moons"]["sigmoid"]["test_mean"] == 0.7
    assert out["lr_x3"]["accuracy"]["xor"]["relu"]["test_mean"] == 0.7


def test_at_convergence_the_best_validation_epoch_is_within_the_run():
    """A run that converged keeps training beside the others; its later epochs are not its
    run: neither the best validation epoch nor the learning-rate choice may come from them."""
    epochs = 20
    acc = np.full((epochs, 3), 0.5)
    acc[4] = [0.9, 0.8, 0.96]  # the best validation epoch within the run: 5
    acc[15] = [1.0, 1.0, 0.1]  # after its convergence at 10: must be ignored
    key = (nl.LEARNING_RATES[0], "spirals", 0)
    sw = _fake_sweep({key: acc}, epochs)
    sw.converged[sw.runs.index(key)] = 10
    other = sw.runs.index((nl.LEARNING_RATES[1], "spirals", 0))
    sw.accuracy[other, :, 1] = 0.85  # the other rates' runs: validation 0.85, test 1.0
    sw.accuracy[sw.runs.index((nl.LEARNING_RATES[2], "spirals", 0)), :, 1] = 0.85
    assert nl.best_recorded(sw, sw.runs.index(key)) == 4  # epoch 5, not 16
    assert nl.epochs_to_fit(sw, sw.runs.index(key), 0.95) == epochs + 1  # not 16: never
    row = nl.converged_table({"relu": sw}, (0,))["spirals"]["relu"]
    assert row["validation_by_rate"] == [[0.8, 0.85, 0.85]]
    assert row["learning_rate"] == [nl.LEARNING_RATES[1]]  # 0.85 beats 0.8, not 1.0
    assert row["best_epoch"] == [1] and row["test"] == [1.0]  # the first of equal epochs


def test_sensitivity_needs_the_budget_x5_epochs():
    with pytest.raises(ValueError, match="budget x5"):
        nl.sensitivity({"relu": _fake_sweep({}, 7)}, (0,), 2, nl.CONVERGENCE)
