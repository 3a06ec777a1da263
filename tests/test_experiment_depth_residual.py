"""The depth experiment (He et al. 2016 at small scale): its rules, its measurements, its run.

The rules are checked on numbers made up here (the paired t-test of "degrades", the gradient
ratio), the measured per-layer gradient norms against ``jax.grad`` in float64 (the
experiment reads them from the hand-derived VJPs), the preregistration before any training,
and the quick run once: its files, and its verdicts recomputed from its recorded numbers.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn_experiments.depth_residual as dr

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Stop(Exception):
    """Raised by a stand-in for training: nothing may train before the rules are on disk."""


def test_rules_are_written_before_any_training(tmp_path, monkeypatch):
    seen = []

    def first_training(*args, **kwargs):
        seen.append(json.loads((tmp_path / f"{dr.NAME}.preregistered.json").read_text()))
        raise _Stop

    monkeypatch.setattr(dr, "train_network", first_training)
    with pytest.raises(_Stop):
        dr.main(tmp_path, quick=False)
    record = seen[0]
    assert record["status"].startswith("preregistered")
    assert record["rules"] == json.loads(json.dumps(dr.RULES))
    assert record["setup"]["epochs"] == dr.EPOCHS and record["setup"]["blocks"] == list(dr.BLOCKS)
    assert record["setup"]["depths"] == [8, 20, 32]
    for key, setting in dr.SENSITIVITY.items():
        assert f"{key}: {setting}" in record["rules"]["sensitivity"]
    assert str(dr.VANISHING_THRESHOLD) in record["rules"]["claim_gradients"]
    assert not (tmp_path / f"{dr.NAME}.json").exists()


def test_degradation_is_a_one_sided_paired_t_test():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, SE 0.1/sqrt(3); t_(0.95, 2) = 2.919986
    t = dr.degradation([1.0, 1.0, 1.0], [1.1, 1.2, 1.3])
    assert t["critical"] == pytest.approx(2.919986, rel=1e-6)
    assert t["mean_difference"] == pytest.approx(0.2)
    assert t["standard_error"] == pytest.approx(0.1 / math.sqrt(3))
    assert t["degrades"] is True  # 0.2 > 2.92 * 0.0577 = 0.169
    # a wider spread with the same mean: 0.2 < 2.92 * 0.3/sqrt(3) = 0.506
    assert dr.degradation([1.0] * 3, [0.9, 1.2, 1.5])["degrades"] is False
    assert dr.degradation([1.0] * 3, [0.8, 0.9, 0.7])["degrades"] is False  # better, not worse
    assert dr.degradation([1.0, 2.0], [1.5, 2.5])["degrades"] is True  # sd 0: mean > 0
    assert dr.degradation([1.0, 2.0], [1.0, 2.0])["degrades"] is False
    with pytest.raises(ValueError, match="at least 2 seeds"):
        dr.degradation([1.0], [2.0])


def _runs(losses: dict[str, list[float]]) -> dict:
    return {d: {"final_training_loss": v} for d, v in losses.items()}


def test_claims_1_and_2_read_the_shallowest_and_the_deeper_depths():
    plain = _runs({"8": [0.1, 0.1, 0.1], "20": [0.1, 0.1, 0.1], "32": [0.5, 0.6, 0.7]})
    holds, tests = dr.decide_degradation(plain)
    assert holds is True and list(tests) == ["from_8_to_32"]
    # the residual claim fails if any deeper depth degrades from the shallowest
    holds, tests = dr.decide_residual(plain)
    assert holds is False and list(tests) == ["from_8_to_20", "from_8_to_32"]
    assert tests["from_8_to_20"]["degrades"] is False and tests["from_8_to_32"]["degrades"]
    holds, _ = dr.decide_residual(_runs({"8": [0.2, 0.3, 0.2], "32": [0.1, 0.1, 0.2]}))
    assert holds is True


def test_gradient_claim_takes_the_lowest_ratio_to_the_head():
    assert dr.min_over_head([0.5, 0.1, 2.0]) == pytest.approx(0.05)
    ok = {"checkpoints": {"0": {"grad_w_norm": [[1.0, 0.01, 1.0], [1, 1, 1]]}}}
    bad = {
        "checkpoints": {
            "0": {"grad_w_norm": [[1.0, 1.0, 1.0]]},
            "5": {"grad_w_norm": [[1e-4, 1.0, 1.0]]},
        }
    }
    holds, ratios = dr.decide_gradients({"8": ok})
    assert holds is True and ratios["8"]["0"] == [0.01, 1.0]
    holds, ratios = dr.decide_gradients({"8": ok, "32": bad})
    assert holds is False and ratios["32"]["5"] == [pytest.approx(1e-4)]
    holds, _ = dr.decide_gradients({"8": {"checkpoints": {"0": {"grad_w_norm": [[1.0, 0.0]]}}}})
    assert holds is False  # a zero head gradient: the ratio is undefined, not a pass


@pytest.mark.parametrize("family", dr.FAMILIES)
def test_main_path_lists_every_weighted_layer_in_order(family):
    net = dr.network(2, family)
    params, _ = net.init(jax.random.key(0), (2, 64))
    main, projections = dr.main_path(net, params)
    assert len(main) == dr.depth(2) == 14
    assert main[0][-1] == "w" and main[-1][0].startswith("dense")
    shapes = [dr._get(params, p).shape for p in main]
    assert shapes[0] == (3, 3, 1, 4) and shapes[-1] == (16, 10)
    # the channels along the main path: 4 (stem, stage 1), then 8, then 16
    assert [s[-1] for s in shapes[:-1]] == [4] * 5 + [8] * 4 + [16] * 4
    assert len(projections) == (2 if family == "residual" else 0)  # where the channels change


@pytest.mark.parametrize("family", dr.FAMILIES)
def test_measured_gradient_norms_equal_jax_grad_float64(family):
    """The per-layer ‖∂L/∂W_l‖ the experiment reads from the hand-derived VJPs, and the
    eval-mode scores, against jax.grad of the loss and a plain forward pass, in float64."""
    with jax.enable_x64(True):
        net = dr.cnn(
            dr.INPUT_SHAPE,
            (2, 4),
            dr.CLASSES,
            blocks_per_stage=1,
            residual=family == "residual",
            param_dtype=jnp.float64,
        )
        rng = np.random.default_rng(0)
        x, x_test = rng.standard_normal((24, 64)), rng.standard_normal((8, 64))
        y, y_test = rng.integers(0, 10, 24), rng.integers(0, 10, 8)
        params, state = net.init(jax.random.key(1), (24, 64))
        out = dr._measure_fn(net, params)(params, state, x, y, x_test, y_test)

        def loss(p):
            logits, _ = net.apply(p, state, x, train=True)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        grads = jax.grad(loss)(params)
        main, projections = dr.main_path(net, params)
        expected = [float(jnp.linalg.norm(dr._get(grads, p))) for p in main]
        np.testing.assert_allclose(out["grad_w_norm"], expected, rtol=1e-10)
        if projections:
            expected = [float(jnp.linalg.norm(dr._get(grads, p))) for p in projections]
            np.testing.assert_allclose(out["projection_grad_w_norm"], expected, rtol=1e-10)
        assert float(out["measured_loss"]) == pytest.approx(float(loss(params)), rel=1e-12)
        logits, _ = net.apply(params, state, x_test, train=False)
        assert float(out["test_accuracy"]) == float(jnp.mean(jnp.argmax(logits, -1) == y_test))


# ----------------------------------------------------------------------------- the quick run


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp(dr.NAME)
    return out, dr.main(out, quick=True)


@pytest.mark.slow
def test_quick_run_writes_its_files(quick):
    out, result = quick
    png = (out / f"{dr.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert json.loads((out / f"{dr.NAME}.json").read_text()) == json.loads(json.dumps(result))
    assert result["quick"] is True and result["rules"] == dr.RULES
    assert len(result["claims"]) == 3


@pytest.mark.slow
def test_quick_run_verdicts_follow_the_recorded_numbers(quick):
    _, result = quick
    setup, runs = result["setup"], result["runs"]
    depths = [str(d) for d in setup["depths"]]
    k = len(setup["seeds"])
    for family in dr.FAMILIES:
        assert sorted(runs[family], key=int) == depths
        for r in runs[family].values():
            assert len(r["loss_curve"]) == k and all(
                len(c) == setup["epochs"] for c in r["loss_curve"]
            )
            assert r["final_training_loss"] == [c[-1] for c in r["loss_curve"]]
            assert sorted(r["checkpoints"], key=int) == [str(e) for e in setup["checkpoints"]]
            for c in r["checkpoints"].values():
                assert all(len(g) == r["depth"] for g in c["grad_w_norm"])

    def t_test(a, b):
        d = np.asarray(b) - np.asarray(a)
        se = np.std(d, ddof=1) / math.sqrt(len(d))
        from scipy import stats

        return d.mean() > stats.t.ppf(0.95, len(d) - 1) * se if se > 0 else d.mean() > 0

    loss = {f: {d: runs[f][d]["final_training_loss"] for d in depths} for f in dr.FAMILIES}
    expected = {
        "claim_degradation": bool(t_test(loss["plain"][depths[0]], loss["plain"][depths[-1]])),
        "claim_residual": not any(
            t_test(loss["residual"][depths[0]], loss["residual"][d]) for d in depths[1:]
        ),
        "claim_gradients": all(
            min(g) / g[-1] >= dr.VANISHING_THRESHOLD
            for r in runs["plain"].values()
            for c in r["checkpoints"].values()
            for g in c["grad_w_norm"]
        ),
    }
    assert result["verdicts"] == expected
    assert [c["holds"] for c in result["claims"]] == list(expected.values())
    failed = not all(expected.values())
    assert ("sensitivity_not_run" in result) == failed and "sensitivity" not in result
