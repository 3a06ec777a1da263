"""The normalisation and batch size experiment (Wu & He 2018): its rules, its networks, its run.

The fall test is checked on numbers made up here; the networks on the mechanism the claims
rest on (in train mode an example's output depends on the rest of its batch through
BatchNorm, and not through LayerNorm or GroupNorm); the preregistration before any training;
and the quick run once: its files, and its verdicts recomputed from its recorded numbers.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn_experiments.norm_batch_size as nb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Stop(Exception):
    """Raised by a stand-in for training: nothing may train before the rules are on disk."""


def test_rules_are_written_before_any_training(tmp_path, monkeypatch):
    seen = []

    def first_training(*args, **kwargs):
        seen.append(json.loads((tmp_path / f"{nb.NAME}.preregistered.json").read_text()))
        raise _Stop

    monkeypatch.setattr(nb, "train_runs", first_training)
    with pytest.raises(_Stop):
        nb.main(tmp_path, quick=False)
    record = seen[0]
    assert record["status"].startswith("preregistered")
    assert record["rules"] == json.loads(json.dumps(nb.RULES))
    assert record["setup"]["batch_sizes"] == [2, 4, 8, 16, 32, 64]
    assert f"{nb.LEARNING_RATE} x B / {nb.REFERENCE_BATCH}" in record["rules"]["learning_rate"]
    assert f"drop(b) >= {nb.MIN_DROP:g} point" in record["rules"]["falls"]
    for key, setting in nb.SENSITIVITY.items():
        assert f"{key}: {setting}" in record["rules"]["sensitivity"]
    assert not (tmp_path / f"{nb.NAME}.json").exists()


def test_learning_rate_scales_linearly_with_the_batch():
    assert nb.learning_rate(nb.REFERENCE_BATCH) == nb.LEARNING_RATE
    assert nb.learning_rate(2) == pytest.approx(nb.LEARNING_RATE / 16)
    assert nb.learning_rate(64, base=0.3) == pytest.approx(0.6)


def test_fall_test_needs_a_minimum_drop_and_the_t_test():
    # drops 2, 3, 4 points: mean 3, SE 1/sqrt(3), t_(0.95, 2) = 2.92: 3 > 1.69, falls
    t = nb.fall_test([0.95, 0.95, 0.95], [0.93, 0.92, 0.91])
    assert t["mean_drop"] == pytest.approx(3.0)
    assert t["standard_error"] == pytest.approx(1 / math.sqrt(3))
    assert t["critical"] == pytest.approx(2.919986, rel=1e-6) and t["falls"] is True
    # consistent but below the minimum: 0.5 point in every seed
    assert nb.fall_test([0.95] * 3, [0.945] * 3)["falls"] is False
    # large on average, not consistent: drops 10, -2, -2 (mean 2, SE 4)
    assert nb.fall_test([0.95] * 3, [0.85, 0.97, 0.97])["falls"] is False
    assert nb.fall_test([0.9] * 3, [0.95] * 3)["falls"] is False  # a rise
    with pytest.raises(ValueError, match="at least 2 seeds"):
        nb.fall_test([0.9], [0.8])


def _runs(acc: dict[str, dict[str, list[float]]]) -> dict:
    return {n: {b: {"test_accuracy": v} for b, v in by_b.items()} for n, by_b in acc.items()}


def test_claims_read_batch_2_for_batchnorm_and_every_small_batch_for_the_others():
    flat = {"2": [0.95] * 3, "4": [0.95] * 3, "32": [0.95] * 3, "64": [0.95] * 3}
    falls_at_4 = {**flat, "4": [0.90, 0.91, 0.89]}
    runs = _runs({"batchnorm": falls_at_4, "layernorm": flat, "groupnorm": flat})
    holds, tests = nb.decide_batchnorm(runs)
    assert holds is False and set(tests["batchnorm"]) == {"2", "4"}  # only below 32
    assert tests["batchnorm"]["4"]["falls"] is True  # reported; the rule reads batch 2
    assert nb.decide_batch_independent(runs)[0] is True
    runs = _runs({"batchnorm": falls_at_4, "layernorm": flat, "groupnorm": falls_at_4})
    assert nb.decide_batch_independent(runs)[0] is False
    runs = _runs({"batchnorm": {**flat, "2": [0.8, 0.82, 0.81]}})
    assert nb.decide_batchnorm(runs)[0] is True


@pytest.mark.parametrize("norm", nb.NORMS)
def test_only_batchnorm_couples_an_example_to_its_batch(norm):
    """In train mode, the first example's logits with a batch of 2 and of 8 around it: the
    same for LayerNorm and GroupNorm (statistics per example), different for BatchNorm."""
    net = nb.network(norm)
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    params, state = net.init(jax.random.key(0), (8, 64))
    small, _ = net.apply(params, state, x[:2], train=True)
    large, _ = net.apply(params, state, x, train=True)
    same = np.allclose(small[0], large[0], rtol=1e-5, atol=1e-6)
    assert same == (norm != "batchnorm")
    # in eval mode every norm treats each example alone
    small, _ = net.apply(params, state, x[:2], train=False)
    large, _ = net.apply(params, state, x, train=False)
    np.testing.assert_allclose(small[0], large[0], rtol=1e-5, atol=1e-6)


def test_groupnorm_groups_divide_every_stage():
    assert all(c % nb.GROUPS == 0 for c in (*nb.CHANNELS, *nb.THREE_STAGES, *nb.QUICK_CHANNELS))
    params, _ = nb.network("groupnorm").init(jax.random.key(0), (2, 64))
    assert jax.tree.leaves(params)  # builds and initialises
    assert jnp.float32 == jax.tree.leaves(params)[0].dtype


# ----------------------------------------------------------------------------- the quick run


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp(nb.NAME)
    return out, nb.main(out, quick=True)


@pytest.mark.slow
def test_quick_run_writes_its_files(quick):
    out, result = quick
    png = (out / f"{nb.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert json.loads((out / f"{nb.NAME}.json").read_text()) == json.loads(json.dumps(result))
    assert result["quick"] is True and result["rules"] == nb.RULES
    assert len(result["claims"]) == 2


@pytest.mark.slow
def test_quick_run_verdicts_follow_the_recorded_numbers(quick):
    _, result = quick
    setup, runs = result["setup"], result["runs"]
    from scipy import stats

    def falls(ref, small):
        d = 100 * (np.asarray(ref) - np.asarray(small))
        se = np.std(d, ddof=1) / math.sqrt(len(d))
        sig = d.mean() > stats.t.ppf(0.95, len(d) - 1) * se if se > 0 else d.mean() > 0
        return bool(d.mean() >= nb.MIN_DROP and sig)

    for norm in nb.NORMS:
        assert sorted(runs[norm], key=int) == [str(b) for b in setup["batch_sizes"]]
        for b, r in runs[norm].items():
            assert r["learning_rate"] == pytest.approx(nb.learning_rate(int(b)))
            assert len(r["test_accuracy"]) == len(setup["seeds"])
            assert r["final_training_loss"] == [c[-1] for c in r["loss_curve"]]
            # each accuracy is a count over the 359 test images
            assert all(abs(a * 359 - round(a * 359)) < 1e-3 for a in r["test_accuracy"])
    ref = str(nb.REFERENCE_BATCH)
    acc = {n: {b: r["test_accuracy"] for b, r in runs[n].items()} for n in nb.NORMS}
    expected = {
        "claim_batchnorm": falls(acc["batchnorm"][ref], acc["batchnorm"]["2"]),
        "claim_batch_independent": not any(
            falls(acc[n][ref], acc[n][b])
            for n in nb.BATCH_INDEPENDENT
            for b in acc[n]
            if int(b) < nb.REFERENCE_BATCH
        ),
    }
    assert result["verdicts"] == expected
    assert [c["holds"] for c in result["claims"]] == list(expected.values())
    failed = not all(expected.values())
    assert ("sensitivity_not_run" in result) == failed and "sensitivity" not in result
