"""The experiments' shared machinery, and the two BatchNorm experiments.

The saturation numbers are checked against exact values computed here with Python's math
module; the Ioffe & Szegedy verdicts are recomputed from the numbers recorded next to them
(the experiment runs in its fast mode: a few hundred steps), and the tracked input against a
float64 numpy forward pass. Each experiment's sensitivity analysis (the same rule on runs that
each change one setting) is checked the same way: its rules are on disk before any training,
each variant's verdict follows from its recorded numbers, and the robustness sentence from
the verdicts.
"""

import copy
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn_experiments.batchnorm_ioffe_digits as ioffe
import jaxnn_experiments.batchnorm_saturation as saturation
from jaxnn import activations
from jaxnn.batchnorm import batchnorm
from jaxnn.gradcheck import RTOL
from jaxnn_experiments import EXPERIMENTS, common

pytestmark = pytest.mark.slow  # the experiments' quick runs


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_files(out: Path, name: str, result: dict) -> dict:
    png = out / f"{name}.png"
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    written = json.loads((out / f"{name}.json").read_text())
    assert written == json.loads(json.dumps(result))
    return written


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _sigmoid_derivative(x: float) -> float:
    return math.exp(-x) / (1 + math.exp(-x)) ** 2


def _close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------------------- common


def test_publish_refuses_a_sentence_as_a_key(tmp_path):
    with pytest.raises(ValueError, match="not an ASCII snake_case identifier"):
        common.publish("x", tmp_path, {"mean |dL/dx| with BN": 1.0}, {}, "")
    with pytest.raises(ValueError, match="'σ'"):
        common.publish("x", tmp_path, {"a": 1.0}, {"σ": "sigmoid"}, "")
    assert not list(tmp_path.iterdir())


def test_publish_writes_the_result_and_its_labels(tmp_path, capsys):
    result = {"rates": {"0.5": {"steps_to_target": 100}}}
    labels = {"steps_to_target": "first step at 90% accuracy"}
    got = common.publish("x", tmp_path / "out", result, labels, "the report")
    assert got == {**result, "labels": labels}
    assert json.loads((tmp_path / "out" / "x.json").read_text()) == got
    assert capsys.readouterr().out.startswith("the report\n")
    with pytest.raises(ValueError, match="Out of range float values"):
        common.publish("x", tmp_path, {"a": math.nan}, {}, "")


def test_every_experiment_is_a_module_with_main():
    import importlib

    for name in EXPERIMENTS:
        module = importlib.import_module(f"jaxnn_experiments.{name}")
        assert callable(module.main) and module.NAME == name


# ----------------------------------------------------------------------------- saturation


@pytest.fixture(scope="module")
def sat(tmp_path_factory):
    out = tmp_path_factory.mktemp("saturation")
    return _check_files(out, "batchnorm_saturation", saturation.main(out))


def test_saturation_fields(sat):
    assert {"setup", "rules", "pair", "sample", "hand_vs_autodiff_within_rtol"} <= set(sat)
    assert sat["labels"] == saturation.LABELS
    for part in ("pair", "sample"):
        assert set(sat[part]) == {"float32", "float64"}
        for dt in ("float32", "float64"):
            assert {"no_bn", "bn"} <= set(sat[part][dt])


def test_saturation_outputs_against_math(sat):
    p32, p64 = sat["pair"]["float32"]["no_bn"], sat["pair"]["float64"]["no_bn"]
    # float64: sigmoid(90) and sigmoid(60) are the correctly rounded values, to a few ulps.
    for got, x in zip(p64["sigmoid"], (90, 60), strict=True):
        assert abs(got - _sigmoid(x)) <= 4 * math.ulp(_sigmoid(x))
    # Both round to 1.0 in float32 (and in float64): indistinguishable.
    assert p32["sigmoid"] == [1.0, 1.0]
    assert float(np.float32(_sigmoid(60))) == 1.0
    for p in (p32, p64):
        assert p["sigmoid_equal"] is True
        assert p["sigmoid_is_one"] is True


def test_saturation_derivatives_against_math(sat):
    p32, p64 = sat["pair"]["float32"]["no_bn"], sat["pair"]["float64"]["no_bn"]
    for got, x in zip(p64["dsigmoid"], (90, 60), strict=True):
        assert _close(got, _sigmoid_derivative(x), 1e-13)  # tiny, but exact in float64
    d90, d60 = p32["dsigmoid"]
    assert _close(d60, _sigmoid_derivative(60), 1e-6)  # a normal float32
    # sigmoid'(90) = 8.2e-40 is below float32's smallest normal: 0 where XLA flushes
    # subnormals (CPU), else the subnormal nearest to it.
    assert _sigmoid_derivative(90) < np.finfo(np.float32).tiny
    assert d90 == 0.0 or d90 == float(np.float32(_sigmoid_derivative(90)))
    assert p32["dsigmoid_is_zero"] == [d90 == 0.0, False]
    # The σ(1 - σ) form (jax.grad's rule) is exactly 0 for both, in both dtypes.
    for p in (p32, p64):
        assert p["dsigmoid_one_minus"] == [0.0, 0.0]
        assert p["grad_x_autodiff"] == [0.0, 0.0]


def test_saturation_batchnorm_of_the_pair(sat):
    xhat = 15 / math.sqrt(225 + saturation.EPS)
    for dt, rtol in (("float32", 2 * 2.0**-23), ("float64", 4 * 2.0**-52)):
        p = sat["pair"][dt]["bn"]
        assert p["batch_mean_var"] == [75.0, 225.0]
        z = p["x_hat"]
        assert _close(z[0], xhat, rtol) and _close(z[1], -xhat, rtol)
        y = p["sigmoid"]
        assert _close(y[0], _sigmoid(xhat), 4 * rtol) and _close(y[1], _sigmoid(-xhat), 4 * rtol)
        assert p["sigmoid_equal"] is False
    # The gradient to x through BN for a pair is only the eps term; closed form, by math here.
    p = sat["pair"]["float64"]
    w = p["w"]
    s = 1 / math.sqrt(225 + saturation.EPS)
    g = [wi * _sigmoid_derivative(zi) for wi, zi in zip(w, p["bn"]["x_hat"], strict=True)]
    closed = s / 2 * saturation.EPS / (225 + saturation.EPS) * (g[0] - g[1])
    assert _close(p["bn"]["grad_x_closed_form"][0], closed, 1e-12)
    # Cancellation bound: ~ulp(1) / (eps / (var + eps)) ≈ 5e-9 relative.
    for key in ("grad_x_hand", "grad_x_autodiff"):
        got = p["bn"][key]
        assert _close(got[0], closed, 1e-7) and _close(got[1], -closed, 1e-7)


def test_saturation_hand_vs_jax_grad_float64(sat):
    assert sat["sample"]["float64"]["bn"]["rel_hand_vs_autodiff"] <= RTOL
    assert sat["hand_vs_autodiff_within_rtol"] is True
    # Recomputed here: the library's hand-derived BN + sigmoid backward vs jax.grad, float64.
    data = saturation.inputs()["sample"]
    x, w = jnp.asarray(data["x"], jnp.float64), jnp.asarray(data["w"], jnp.float64)
    sig = activations.get("sigmoid")
    bn = batchnorm(eps=saturation.EPS, param_dtype=jnp.float64)
    params, state = bn.init(jax.random.key(0), (x.shape[0], 1))
    z, _, back = bn.vjp(params, state, x[:, None], train=True)
    _, sig_back = sig.vjp(z)
    _, dx = back(sig_back(w[:, None]))
    dx_ad = jax.grad(
        lambda x: jnp.sum(w * sig.fn(bn.apply(params, state, x[:, None], train=True)[0])[:, 0])
    )(x)
    assert float(jnp.max(jnp.abs(dx[:, 0] - dx_ad)) / jnp.max(jnp.abs(dx_ad))) <= RTOL
    got = sat["sample"]["float64"]["bn"]["grad_x_hand"]["mean_abs"]
    assert _close(got, float(jnp.mean(jnp.abs(dx))), 1e-12)


def test_saturation_wide_sample(sat):
    data = saturation.inputs()["sample"]
    x, w = data["x"], data["w"]
    s64 = sat["sample"]["float64"]
    # Without BN: dL/dx = w σ'(x), computed here with math.
    exact = np.asarray([abs(wi) * _sigmoid_derivative(xi) for wi, xi in zip(w, x, strict=True)])
    assert _close(s64["no_bn"]["grad_x_hand"]["mean_abs"], float(np.mean(exact)), 1e-12)
    assert _close(s64["no_bn"]["output_std"], float(np.std([_sigmoid(v) for v in x])), 1e-6)
    for dt in ("float32", "float64"):
        no_bn, bn = sat["sample"][dt]["no_bn"], sat["sample"][dt]["bn"]
        assert bn["distinct_outputs"] == saturation.SAMPLE_SIZE
        assert no_bn["distinct_outputs"] < 0.05 * saturation.SAMPLE_SIZE
        assert bn["output_std"] > 1e6 * no_bn["output_std"]
        assert _close(
            sat["sample"][dt]["grad_ratio_bn_over_no_bn"],
            bn["grad_x_hand"]["mean_abs"] / no_bn["grad_x_hand"]["mean_abs"],
            1e-12,
        )
    # float32 outputs over the sample: 1.0 wherever x is above ~17.
    assert sat["sample"]["float32"]["no_bn"]["outputs_equal_one"] == int(
        np.sum(np.float32([_sigmoid(v) for v in x]) == 1.0)
    )


def test_saturation_normalised_values_are_standardised_not_in_the_unit_interval(sat):
    # The pair: a batch of two is standardised to ±15/√(225 + ε): one of the two lies in [0, 1].
    for dt in ("float32", "float64"):
        pair = sat["pair"][dt]["bn"]["landing"]
        assert pair["fraction_in_unit_interval"] == 0.5
        assert abs(pair["mean"]) <= 1e-6 and _close(pair["var"], 225 / (225 + saturation.EPS), 1e-6)
    # The sample, standardised here in float64 numpy: the same fraction, mean 0, variance 1.
    x = saturation.inputs()["sample"]["x"]
    x_hat = (x - x.mean()) / np.sqrt(x.var() + saturation.EPS)
    expected = float(np.mean((x_hat >= 0) & (x_hat <= 1)))
    for dt, u in (("float32", 2.0**-24), ("float64", 2.0**-53)):
        landing = sat["sample"][dt]["bn"]["landing"]
        assert landing["fraction_in_unit_interval"] == expected
        # Each x̂ errs by the batch mean's error (a sum of n terms: γ_n max|x|) and its own
        # few roundings, over the std: (n + 8) u max|x| / std; the variance by twice that.
        tol = (len(x) + 8) * u * np.max(np.abs(x)) / np.std(x)
        assert abs(landing["mean"]) <= tol and abs(landing["var"] - np.var(x_hat)) <= 2 * tol
    # P(0 <= Z <= 1) = Φ(1) - Φ(0), from math.erf; a sample of n = 1000 standard normals hits
    # it with a binomial standard error √(p(1 - p)/n) ≈ 0.015: within 4 of them.
    p = 0.5 * math.erf(1 / math.sqrt(2))
    assert sat["normal_in_unit_interval"] == p and abs(p - 0.34134474606854293) < 1e-15
    assert abs(expected - p) <= 4 * math.sqrt(p * (1 - p) / saturation.SAMPLE_SIZE)


def test_saturation_trained_network_landing_and_the_unit_interval_verdict(sat):
    trained = sat["trained"]
    assert set(trained["layers"]) == {"batchnorm_1", "batchnorm_4", "batchnorm_7"}
    assert 0.9 <= trained["test_accuracy"] <= 1
    fractions = []
    for layer in trained["layers"].values():
        for part in ("x_hat_landing", "y_landing"):
            fractions.append(layer[part]["fraction_in_unit_interval"])
            assert 0 <= fractions[-1] <= 1
        # The sigmoid's output is in (0, 1): the interval the source text names.
        assert layer["sigmoid_landing"]["fraction_in_unit_interval"] == 1.0
        lo, mean, hi = layer["gamma_min_mean_max"]
        assert lo <= mean <= hi
    claim = sat["claims"][-1]
    fractions.append(sat["sample"]["float32"]["bn"]["landing"]["fraction_in_unit_interval"])
    assert claim["holds"] is all(f == 1.0 for f in fractions)
    assert claim["rule"] == saturation.RULES["claim_unit_interval"]
    assert sat["reading"] == saturation.READING
    assert "Where the normalised values land" in saturation.report(sat)


class _Stop(Exception):
    """Raised by a stand-in for an experiment's training, once it has checked the JSON."""


def _preregistered(path: Path) -> dict:
    """The record in ``path`` is the preregistration: the setup and the rules, no result."""
    record = json.loads(path.read_text())
    assert record["status"].startswith("preregistered")
    assert set(record) == {"status", "setup", "rules"}
    return record


def test_saturation_sensitivity_rules_are_written_before_any_computation(tmp_path, monkeypatch):
    seen = []

    def stop(*args, **kwargs):
        record = _preregistered(tmp_path / "batchnorm_saturation.preregistered.json")
        rules = record["rules"]
        assert rules == json.loads(json.dumps(saturation.RULES))
        assert rules["sensitivity_variants"] == {
            "budget_x5": {"epochs": 150},
            "learning_rate_x1_3": {"learning_rate": 0.5 / 3},
            "learning_rate_x3": {"learning_rate": 1.5},
            "skewed_sample": {"sample": "75 + 15 (1 - E), E ~ Exponential(1)"},
        }
        for name, words in saturation.SENSITIVITY_SETTINGS.items():
            assert f"{name}: {words}" in rules["sensitivity"]
        assert record["setup"]["trained"] == saturation.TRAINED
        seen.append(True)
        raise _Stop

    # The sample's analysis comes first, the training after it: both stopped.
    monkeypatch.setattr(saturation, "inputs", stop)
    monkeypatch.setattr(saturation, "trained", stop)
    with pytest.raises(_Stop):
        saturation.main(tmp_path)
    assert seen == [True]


def _fractions(sample_landing: dict, layers: dict) -> list[float]:
    return [sample_landing["fraction_in_unit_interval"]] + [
        layer[part]["fraction_in_unit_interval"]
        for layer in layers.values()
        for part in ("x_hat_landing", "y_landing")
    ]


def test_saturation_sensitivity_variants_follow_from_the_numbers(sat):
    original_sample = sat["sample"]["float32"]["bn"]["landing"]
    original = sat["trained"]
    holds = all(f == 1.0 for f in _fractions(original_sample, original["layers"]))
    assert sat["claims"][1]["holds"] is holds is False
    analysis = sat["sensitivity"]
    assert analysis["run"] is True
    variants = analysis["variants"]
    assert list(variants) == list(saturation.SENSITIVITY)
    for name, v in variants.items():
        # The rule, unchanged: every fraction of the variant's numbers is 1.
        assert v["holds"] is all(f == 1.0 for f in _fractions(v["sample_landing"], v["layers"]))
        assert v["change"] == saturation.SENSITIVITY[name]
        assert v["setting"] == saturation.SENSITIVITY_SETTINGS[name]
        if name == "skewed_sample":  # the trained network is the original's
            assert v["layers"] == original["layers"]
            assert v["test_accuracy"] == original["test_accuracy"]
        else:  # the sample is the original's; the network was trained again, differently
            assert v["sample_landing"] == original_sample
            assert v["layers"] != original["layers"]
            assert 0.1 < v["test_accuracy"] <= 1  # it learned: chance is 0.1
    # The skewed sample, standardised here in float64 numpy: the recorded float32 fraction is
    # the same but for values within float32's error of 0 or 1 (the bound of the original
    # sample's test: (n + 8) u max|x| / std, u = 2^-24), which may fall on either side.
    x = saturation.skewed_sample()
    x_hat = (x - x.mean()) / np.sqrt(x.var() + saturation.EPS)
    tol = (len(x) + 8) * 2.0**-24 * np.max(np.abs(x)) / np.std(x)
    near = int(np.sum((np.abs(x_hat) <= tol) | (np.abs(x_hat - 1) <= tol)))
    got = variants["skewed_sample"]["sample_landing"]["fraction_in_unit_interval"]
    assert abs(got - float(np.mean((x_hat >= 0) & (x_hat <= 1)))) <= near / len(x)
    # The shape is the setting the share depends on: the skewed sample puts more inside.
    assert got > original_sample["fraction_in_unit_interval"]


def test_saturation_robustness_follows_from_the_variants(sat):
    claim, variants = sat["claims"][1], sat["sensitivity"]["variants"]
    analysis = claim["robustness"]
    assert analysis["holds"] is claim["holds"]
    assert [v["variant"] for v in analysis["variants"]] == list(variants)
    for v in analysis["variants"]:
        recorded = variants[v["variant"]]
        assert v["holds"] is recorded["holds"] and v["setting"] == recorded["setting"]
        sample = recorded["sample_landing"]["fraction_in_unit_interval"]
        assert f"the sample's x̂ {sample:.3f}" in v["evidence"]
    robust = all(v["holds"] == claim["holds"] for v in analysis["variants"])
    assert analysis["robust"] is robust
    assert analysis == common.robustness(claim["holds"], analysis["variants"])
    assert analysis["sentence"].startswith("Robust" if robust else "Depends on the setup")
    assert "robustness" not in sat["claims"][0]  # it holds: no sensitivity analysis
    report = saturation.report(sat)
    assert analysis["sentence"] in report
    for name in variants:
        assert saturation.LABELS[name] in report


def test_saturation_sensitivity_runs_only_for_a_negative_verdict_outside_quick_mode(
    sat, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(saturation, "trained", no_training)
    assert saturation.sensitivity(sat, quick=True) == {
        "run": False,
        "reason": saturation.QUICK_SKIP,
    }
    # A result whose every normalised value lay inside [0, 1] (made up here): the claim holds,
    # nothing runs and the claim carries no robustness.
    inside = copy.deepcopy(sat)
    inside["sample"]["float32"]["bn"]["landing"]["fraction_in_unit_interval"] = 1.0
    for layer in inside["trained"]["layers"].values():
        for part in ("x_hat_landing", "y_landing"):
            layer[part]["fraction_in_unit_interval"] = 1.0
    inside["sensitivity"] = saturation.sensitivity(inside)
    assert inside["sensitivity"] == {"run": False, "reason": saturation.NOT_NEEDED}
    claim = saturation.claims(inside)[1]
    assert claim["holds"] is True and "robustness" not in claim
    assert saturation.NOT_NEEDED in saturation.report(inside)


# ----------------------------------------------------------------------------- Ioffe


@pytest.fixture(scope="module")
def fig1(tmp_path_factory):
    out = tmp_path_factory.mktemp("ioffe")
    result = ioffe.main(out, steps=300, eval_every=100, sweep=(0.5, 2.0))
    return _check_files(out, "batchnorm_ioffe_digits", result)


def test_ioffe_fields(fig1):
    assert {"setup", "rules", "runs", "decisions", "claims", "learning_rate_sweep"} <= set(fig1)
    assert [c["holds"] for c in fig1["claims"]] == [
        fig1["decisions"]["claim_1"]["holds"],
        fig1["decisions"]["claim_2"]["holds"],
        fig1["decisions"]["claim_2_population"]["holds"],
    ]
    # Claim 2 is decided twice by one rule: the population verdict's rule names claim 2's.
    assert fig1["claims"][2]["rule"].startswith("claim_2's rule, unchanged")
    assert fig1["setup"]["population_batches"] == 1347 // ioffe.BATCH
    assert fig1["labels"] == ioffe.LABELS
    assert fig1["setup"]["split"] == {
        "train": 1347,
        "test": 450,
        "stratified": True,
        "random_state": ioffe.SEED,
    }
    for name in ("plain", "bn"):
        run = fig1["runs"][name]
        assert run["step"] == [0, 100, 200, 300]
        assert all(0 <= a <= 1 for a in run["test_accuracy"])
        assert all(p[0] <= p[1] <= p[2] for p in run["percentiles"])
    bn = fig1["runs"]["bn"]
    assert len(bn["percentiles_population"]) == len(bn["test_accuracy_population"]) == 4
    assert all(p[0] <= p[1] <= p[2] for p in bn["percentiles_population"])
    assert "percentiles_population" not in fig1["runs"]["plain"]
    # Same initial dense weights: at step 0 BN (eval mode, mean 0, var 1) only divides by
    # sqrt(1 + eps), so the tracked input's percentiles agree.
    np.testing.assert_allclose(
        fig1["runs"]["bn"]["percentiles"][0], fig1["runs"]["plain"]["percentiles"][0], rtol=1e-4
    )
    assert set(fig1["learning_rate_sweep"]) == {"0.5", "2.0"}


def _default_matmul_unit_roundoff() -> float:
    """The unit roundoff of a float32 matmul's operands at JAX's default precision."""
    if jax.config.jax_default_matmul_precision not in (None, "default", "DEFAULT"):
        return 0.0
    return {"gpu": 2.0**-11, "tpu": 2.0**-8}.get(jax.default_backend(), 0.0)


def test_ioffe_tracks_the_input_of_the_last_hidden_sigmoid(fig1):
    # mlp([100, 100, 100, 10], "sigmoid") is dense, sigmoid (x3), dense, identity; with BN,
    # dense, batchnorm, sigmoid (x3), dense, identity. The last hidden sigmoid's input:
    assert fig1["setup"]["tracked_input"] == {"plain": "dense_4", "bn": "batchnorm_7"}
    # Its step-0 percentiles, from the plain network's initial weights by a float64 numpy
    # forward pass (numpy's percentile interpolates linearly, as jnp.percentile).
    with jax.enable_x64(False):
        params = ioffe.networks(64)["plain"].params
    h = np.asarray(ioffe.digits()["x_test"], np.float64)
    # The float32 run differs from it by at most `err`: a dot product of n terms plus a bias
    # errs by γ_{n+1} (|h| @ |w| + |b|), γ_k = k u / (1 - k u), u = 2^-24; an earlier error
    # passes the sigmoid (slope <= 1/4, plus 2 u of its own rounding) and the sum of |w| into
    # a unit; the percentile's interpolation adds 2 u of the values.
    u, err = 2.0**-24, 0.0
    # A GPU multiplies float32 matrices in TF32 by default (operands rounded to 10 mantissa
    # bits, u = 2^-11), a TPU in bfloat16 (u = 2^-8): each product errs by 2 u_dot more.
    u_dot = _default_matmul_unit_roundoff()
    for key in ("dense_0", "dense_2", "dense_4"):
        w, b = (np.asarray(params[key][k], np.float64) for k in ("w", "b"))
        if key == "dense_4":
            w, b = w[:, [ioffe.UNIT]], b[[ioffe.UNIT]]
        if key != "dense_0":
            h, err = 1 / (1 + np.exp(-h)), err / 4 + 2 * u
        gamma = (w.shape[0] + 1) * u / (1 - (w.shape[0] + 1) * u) + 2 * u_dot
        scale = float(np.max(np.abs(h) @ np.abs(w) + np.abs(b)))
        err = float(np.max(np.sum(np.abs(w), axis=0))) * err + gamma * scale
        h = h @ w + b
    expected = np.percentile(h[:, 0], ioffe.PERCENTILES)
    err += 2 * u * float(np.max(np.abs(h)))
    np.testing.assert_allclose(fig1["runs"]["plain"]["percentiles"][0], expected, rtol=0, atol=err)


def test_ioffe_population_percentiles_at_step_0_are_algorithm_2s(fig1):
    # Algorithm 2 at step 0, by hand in float64 numpy: the BN network's initial weights (γ = 1,
    # β = 0); train-mode passes over the first epoch's minibatches give each layer's batch mean
    # and biased variance; E = their mean, Var = m/(m - 1) their mean; the test set through
    # y = (z - E)/√(Var + ε) and the sigmoids; the percentiles of unit UNIT of batchnorm_7.
    # A worst-case float32 error bound through three BN + sigmoid layers is useless here (it
    # grows by ~300 a layer: 1/std ≈ 7, and |z - E|/std ≈ 4 twice through the variance), so
    # the test compares instead: the recorded percentiles are nearer Algorithm 2's values than
    # to those of the nearest wrong readings (the biased variance, or a single batch's
    # statistics), which differ from them by 7e-4 to 0.12 here (float32 against float64:
    # 5e-7).
    with jax.enable_x64(False):
        params = ioffe.networks(64)["bn"].params
    kernels = [np.asarray(params[d]["w"], np.float64) for d in ("dense_0", "dense_3", "dense_6")]
    data = ioffe.digits()
    idx = ioffe._batches(len(data["x_train"]), ioffe.POPULATION_BATCHES)
    batches = data["x_train"][idx].astype(np.float64)  # [K, m, 64]
    m = batches.shape[1]
    eps = ioffe.BATCHNORM["eps"]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    means, variances = [[] for _ in kernels], [[] for _ in kernels]
    for xb in batches:
        h = xb
        for k, w in enumerate(kernels):
            z = h @ w
            means[k].append(z.mean(0))
            variances[k].append(z.var(0))
            h = sigmoid((z - z.mean(0)) / np.sqrt(z.var(0) + eps))

    def percentiles(mean, var):
        h = np.asarray(data["x_test"], np.float64)
        for k, w in enumerate(kernels):
            y = (h @ w - mean[k]) / np.sqrt(var[k] + eps)
            h = sigmoid(y)
        return np.percentile(y[:, ioffe.UNIT], ioffe.PERCENTILES)

    e = [np.mean(a, 0) for a in means]
    biased = [np.mean(a, 0) for a in variances]
    expected = percentiles(e, [m / (m - 1) * v for v in biased])
    wrong = {
        "biased variance": percentiles(e, biased),
        "one batch": percentiles([a[0] for a in means], [m / (m - 1) * a[0] for a in variances]),
    }
    got = np.asarray(fig1["runs"]["bn"]["percentiles_population"][0])
    for name, other in wrong.items():
        assert np.all(np.abs(got - expected) < np.abs(got - other)), name


def _claim1(plain_acc, bn_acc, steps, target):
    def first(acc):
        return next((s for s, a in zip(steps, acc, strict=True) if a >= target), None)

    s_plain, s_bn = first(plain_acc), first(bn_acc)
    fewer = s_bn is not None and (s_plain is None or s_bn < s_plain)
    return s_plain, s_bn, fewer and bn_acc[-1] >= plain_acc[-1]


def _movement_over_spread(percentiles):
    p = np.asarray(percentiles)
    spread = np.mean(p[:, 2] - p[:, 0])
    return np.sum(np.abs(np.diff(p, axis=0)), axis=0) / spread


def test_ioffe_verdicts_follow_from_the_numbers(fig1):
    runs = fig1["runs"]
    c1, c2 = fig1["decisions"]["claim_1"], fig1["decisions"]["claim_2"]
    assert isinstance(c1["holds"], bool) and isinstance(c2["holds"], bool)
    s_plain, s_bn, holds = _claim1(
        runs["plain"]["test_accuracy"],
        runs["bn"]["test_accuracy"],
        runs["plain"]["step"],
        c1["target_accuracy"],
    )
    assert c1["steps_to_target"] == {"plain": s_plain, "bn": s_bn}
    assert c1["final_accuracy"] == {
        "plain": runs["plain"]["test_accuracy"][-1],
        "bn": runs["bn"]["test_accuracy"][-1],
    }
    assert c1["holds"] is holds
    ratios = {n: _movement_over_spread(runs[n]["percentiles"]) for n in ("plain", "bn")}
    for n in ("plain", "bn"):
        np.testing.assert_allclose(
            list(c2[n]["movement_over_spread"].values()), ratios[n], rtol=1e-9
        )
    assert list(c2["plain"]["movement_over_spread"]) == ["p15", "p50", "p85"]
    assert c2["holds"] is bool(np.all(ratios["bn"] < ratios["plain"]))
    # The same rule with the BN network's Algorithm 2 percentiles, against the same plain ones.
    c2p = fig1["decisions"]["claim_2_population"]
    population = _movement_over_spread(runs["bn"]["percentiles_population"])
    np.testing.assert_allclose(
        list(c2p["bn_population"]["movement_over_spread"].values()), population, rtol=1e-9
    )
    assert c2p["plain"] == c2["plain"]
    assert c2p["holds"] is bool(np.all(population < ratios["plain"]))
    assert c2p["final_accuracy_population"] == runs["bn"]["test_accuracy_population"][-1]
    report = ioffe.report(fig1).splitlines()
    verdicts = (("claim_1", holds), ("claim_2", c2["holds"]), ("claim_2_population", c2p["holds"]))
    for claim, verdict in verdicts:
        assert f"{ioffe.LABELS[claim]}: {'HOLDS' if verdict else 'DOES NOT HOLD'}" in report
    # The sweep's verdicts follow from the numbers it records.
    for v in fig1["learning_rate_sweep"].values():
        s, f = v["steps_to_target"], v["final_accuracy"]
        fewer = s["bn"] is not None and (s["plain"] is None or s["bn"] < s["plain"])
        assert v["claim_1_holds"] is (fewer and f["bn"] >= f["plain"])
        ms = v["movement_over_spread"]
        assert v["claim_2_holds"] is all(ms["bn"][q] < ms["plain"][q] for q in ms["bn"])
        assert v["claim_2_population_holds"] is all(
            ms["bn_population"][q] < ms["plain"][q] for q in ms["bn"]
        )
    assert fig1["learning_rate_sweep"]["0.5"]["claim_1_holds"] is c1["holds"]


def test_ioffe_steps_must_be_a_multiple_of_eval_every():
    with pytest.raises(ValueError, match="multiple of eval_every"):
        ioffe.run(steps=150, eval_every=100)


def test_ioffe_sensitivity_rules_are_written_before_any_training(tmp_path, monkeypatch):
    seen = []

    def stop(*args, **kwargs):
        record = _preregistered(tmp_path / "batchnorm_ioffe_digits.preregistered.json")
        rules = record["rules"]
        assert rules == json.loads(json.dumps(ioffe.RULES))
        assert rules["sensitivity_variants"] == {
            "budget_x5": {"steps_factor": 5},
            "learning_rate_x1_3": {"learning_rate": 0.5 / 3},
            "learning_rate_x3": {"learning_rate": 1.5},
            "momentum_0_01": {"momentum": 0.01},
        }
        for name, words in ioffe.SENSITIVITY_SETTINGS.items():
            assert f"{name}: {words}" in rules["sensitivity"]
        setup = record["setup"]
        assert (setup["steps"], setup["eval_every"], setup["sweep_learning_rates"]) == (
            200,
            100,
            [0.5],
        )
        assert setup["batchnorm"]["momentum"] == 0.1
        seen.append(True)
        raise _Stop

    monkeypatch.setattr(ioffe, "_train", stop)
    with pytest.raises(_Stop):
        ioffe.main(tmp_path, steps=200, eval_every=100, sweep=(0.5,))
    assert seen == [True]


@pytest.fixture(scope="module")
def fig1_variants(fig1):
    """The sensitivity runs at the fixture's scale (300 steps; the budget variant 1500),
    called directly: whether they run in main depends on the verdicts."""
    return json.loads(json.dumps(ioffe.sensitivity_runs(300, 100, fig1["runs"])))


def test_ioffe_sensitivity_variants_change_one_setting(fig1, fig1_variants):
    assert list(fig1_variants) == list(ioffe.SENSITIVITY)
    original = fig1["runs"]
    expected = {  # steps, learning rate, momentum
        "budget_x5": (1500, 0.5, 0.1),
        "learning_rate_x1_3": (300, 0.5 / 3, 0.1),
        "learning_rate_x3": (300, 1.5, 0.1),
        "momentum_0_01": (300, 0.5, 0.01),
    }
    for name, v in fig1_variants.items():
        assert (v["steps"], v["learning_rate"], v["momentum"]) == expected[name]
        assert v["setting"] == ioffe.SENSITIVITY_SETTINGS[name]
        for net in ("plain", "bn"):
            assert v["runs"][net]["step"] == list(range(0, v["steps"] + 1, 100))
            # The same initial weights: step 0 is the original's.
            assert v["runs"][net]["percentiles"][0] == original[net]["percentiles"][0]
    # The budget: the same minibatches, so its first 300 steps are the original run.
    budget = fig1_variants["budget_x5"]["runs"]
    for net in ("plain", "bn"):
        for key, values in budget[net].items():
            if key != "seconds":
                assert values[:4] == original[net][key], (net, key)
    # The learning rates: the first step already differs.
    for name in ("learning_rate_x1_3", "learning_rate_x3"):
        for net in ("plain", "bn"):
            assert (
                fig1_variants[name]["runs"][net]["percentiles"][1]
                != (original[net]["percentiles"][1])
            )
    # The momentum enters the running statistics only: the plain run is the original's, and
    # the BN network trains (batch statistics) and reads Algorithm 2's statistics as the
    # original, bit for bit; only what is read with the running statistics differs.
    momentum = fig1_variants["momentum_0_01"]["runs"]
    assert momentum["plain"] == {k: original["plain"][k] for k in momentum["plain"]}
    for key in ("percentiles_population", "test_accuracy_population"):
        assert momentum["bn"][key] == original["bn"][key]
    assert momentum["bn"]["percentiles"][1:] != original["bn"]["percentiles"][1:]


def test_ioffe_sensitivity_verdicts_follow_from_the_numbers(fig1_variants):
    for v in fig1_variants.values():
        runs, d = v["runs"], v["decisions"]
        s_plain, s_bn, holds = _claim1(
            runs["plain"]["test_accuracy"],
            runs["bn"]["test_accuracy"],
            runs["plain"]["step"],
            ioffe.TARGET_ACCURACY,
        )
        assert d["claim_1"]["steps_to_target"] == {"plain": s_plain, "bn": s_bn}
        assert d["claim_1"]["holds"] is holds
        ratios = {
            "plain": _movement_over_spread(runs["plain"]["percentiles"]),
            "bn": _movement_over_spread(runs["bn"]["percentiles"]),
            "bn_population": _movement_over_spread(runs["bn"]["percentiles_population"]),
        }
        for net, claim in (
            ("plain", "claim_2"),
            ("bn", "claim_2"),
            ("bn_population", "claim_2_population"),
        ):
            np.testing.assert_allclose(
                list(d[claim][net]["movement_over_spread"].values()), ratios[net], rtol=1e-9
            )
        assert d["claim_2"]["holds"] is bool(np.all(ratios["bn"] < ratios["plain"]))
        assert d["claim_2_population"]["holds"] is bool(
            np.all(ratios["bn_population"] < ratios["plain"])
        )


def _failing(result: dict, variants: dict, claim: str = "claim_2") -> dict:
    """``result`` with ``claim``'s verdict made negative (made up, to reach the analysis's code
    path whatever the small run decided) and ``variants`` as its sensitivity analysis."""
    made_up = copy.deepcopy(result)
    made_up["decisions"][claim]["holds"] = False
    made_up["sensitivity"] = {"run": True, "negative_claims": [claim], "variants": variants}
    return made_up


def test_ioffe_robustness_follows_from_the_variants(fig1, fig1_variants):
    result = _failing(fig1, fig1_variants)
    claims = ioffe.claims(result)
    assert [c["holds"] for c in claims] == [result["decisions"][k]["holds"] for k in ioffe.CLAIMS]
    for c in claims:
        assert ("robustness" in c) is (not c["holds"])
    claim = claims[1]
    assert claim["rule"] == ioffe.RULES["claim_2"]
    analysis = claim["robustness"]
    assert [v["variant"] for v in analysis["variants"]] == list(fig1_variants)
    for v in analysis["variants"]:
        recorded = fig1_variants[v["variant"]]
        assert v["holds"] is recorded["decisions"]["claim_2"]["holds"]
        bn = recorded["decisions"]["claim_2"]["bn"]["movement_over_spread"]
        assert v["evidence"].startswith(
            "movement/spread of p15, p50, p85: " + ", ".join(f"{bn[q]:.2f}" for q in ioffe.Q)
        )
    robust = all(v["holds"] is False for v in analysis["variants"])
    assert analysis["robust"] is robust
    assert analysis == common.robustness(False, analysis["variants"])
    # The printed report and the figure show the analysis.
    report = ioffe.report({**result, "claims": claims})
    assert analysis["sentence"] in report
    for name in fig1_variants:
        assert ioffe.LABELS[name] in report
    fig = ioffe.figure(result)
    assert len(fig.axes) == 5 and fig.axes[4].get_title().startswith("(e) sensitivity")


def test_ioffe_sensitivity_runs_only_for_a_negative_verdict_outside_quick_mode(
    fig1, fig1_variants, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("sensitivity_runs")

    # At the fixture's scale main decided whether to run it: only if a claim does not hold.
    holds = all(fig1["decisions"][k]["holds"] for k in ioffe.CLAIMS)
    assert fig1["sensitivity"]["run"] is (not holds)
    if holds:
        assert fig1["sensitivity"] == {"run": False, "reason": ioffe.NOT_NEEDED}
        assert all("robustness" not in c for c in fig1["claims"])
        assert len(ioffe.figure(fig1).axes) == 4
    else:
        negative = [k for k in ioffe.CLAIMS if not fig1["decisions"][k]["holds"]]
        assert fig1["sensitivity"]["negative_claims"] == negative
    monkeypatch.setattr(ioffe, "sensitivity_runs", no_training)
    assert ioffe.sensitivity(_failing(fig1, fig1_variants), quick=True) == {
        "run": False,
        "reason": ioffe.QUICK_SKIP,
    }
    made_up = copy.deepcopy(fig1)
    for k in ioffe.CLAIMS:
        made_up["decisions"][k]["holds"] = True
    assert ioffe.sensitivity(made_up) == {"run": False, "reason": ioffe.NOT_NEEDED}
