"""The regularization experiment, run once in its quick mode.

Checked: the files; the training subset (stratified, drawn from the train part, disjoint from
the validation and test parts); the recorded gaps are train - test; the accuracies are
fractions of the set sizes; the selection, the per-arm verdicts and the claims recomputed from
the recorded per-seed numbers; the L2 penalty reaching training (a smaller final kernel norm
than without it, same seed); every arm of a seed starting from the same weights.
"""

import json
import math

import jax
import numpy as np
import pytest

import jaxnn_experiments.regularization as reg
from jaxnn.combinators import layer_keys
from jaxnn.data import digits

pytestmark = pytest.mark.slow  # the experiment's quick run


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS32 = 2.0**-24  # unit roundoff of float32
EPS64 = 2.0**-53


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("regularization")
    return out, reg.main(out, quick=True)


@pytest.fixture(scope="module")
def splits():
    return digits(seed=reg.DIGITS_SEED)


def _finals(result: dict, method: str) -> list[dict]:
    return [r["final"] for r in result["runs"][method]]


def test_files_and_json(ran):
    out, result = ran
    png = (out / f"{reg.NAME}.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    written = json.loads((out / f"{reg.NAME}.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert result["quick"] is True
    assert result["rules"] == reg.RULES
    assert set(result["runs"]) == set(reg.METHODS)
    assert result["setup"]["seeds"] == list(reg.QUICK_SEEDS)
    for method in reg.METHODS:
        assert len(result["runs"][method]) == len(reg.QUICK_SEEDS)
        for run in result["runs"][method]:
            assert len(run["train_accuracy"]) == len(run["val_accuracy"]) == reg.QUICK_EPOCHS


def test_subset_is_stratified_and_disjoint_from_the_evaluation_parts(ran, splits):
    _, result = ran
    held_out = {row.tobytes() for part in (splits.validation, splits.test) for row in part.x}
    assert result["setup"]["n_test"] == len(splits.test.y)
    assert result["setup"]["n_validation"] == len(splits.validation.y)
    for record in result["seeds"]:
        idx = np.asarray(record["train_indices"])
        assert len(np.unique(idx)) == len(idx) == reg.PER_CLASS * reg.CLASSES
        assert idx.min() >= 0 and idx.max() < len(splits.train.y)
        counts = np.bincount(splits.train.y[idx], minlength=reg.CLASSES)
        assert counts.tolist() == record["class_counts"] == [reg.PER_CLASS] * reg.CLASSES
        # The digits hold no two identical images, so disjoint rows mean disjoint examples.
        assert not any(row.tobytes() in held_out for row in splits.train.x[idx])
        np.testing.assert_array_equal(idx, reg.subset_indices(splits.train.y, record["seed"]))
    seeds = [r["seed"] for r in result["seeds"]]
    assert seeds == list(reg.QUICK_SEEDS)


def test_gaps_are_train_minus_test_and_accuracies_are_fractions(ran):
    _, result = ran
    n_train, n_val, n_test = (result["setup"][k] for k in ("n_train", "n_validation", "n_test"))
    for method in reg.METHODS:
        for run in result["runs"][method]:
            final = run["final"]
            # The same float64 subtraction of the same two numbers: equal, bit for bit.
            assert final["gap"] == final["train_accuracy"] - final["test_accuracy"]
            assert final["train_accuracy"] == run["train_accuracy"][-1]
            assert final["validation_accuracy"] == run["val_accuracy"][-1]
            # A float32 mean of n zeros and ones: the sum is an exact integer (< 2^24), then at
            # most two roundings (a division, or a reciprocal and a product): |acc n - k| <=
            # 2 eps32 n.
            for key, n in (("train_accuracy", n_train), ("test_accuracy", n_test)):
                k = final[key] * n
                assert abs(k - round(k)) <= 2 * EPS32 * n, (method, key, final[key])
            for acc in run["val_accuracy"]:
                assert abs(acc * n_val - round(acc * n_val)) <= 2 * EPS32 * n_val


def test_summary_is_the_per_seed_numbers(ran):
    _, result = ran
    for method in reg.METHODS:
        for key, stats in result["summary"][method].items():
            values = np.asarray([f[key] for f in _finals(result, method)], np.float64)
            assert stats["mean"] == float(values.mean())
            assert stats["min"] == float(values.min()) and stats["max"] == float(values.max())


def test_selection_and_verdicts_recomputed_from_the_recorded_numbers(ran):
    _, result = ran
    grids = result["setup"]["grids"]
    for method, grid in grids.items():
        sel = result["selection"][method]
        rows = result["grid_finals"][method]
        means = [float(np.mean([f["validation_accuracy"] for f in row])) for row in rows]
        assert sel["mean_validation_accuracy"] == means
        best = max(means)
        chosen = grid[next(i for i, m in enumerate(means) if m == best)]  # first on a tie
        assert sel["selected"] == chosen
        assert _finals(result, method) == rows[grid.index(chosen)]
    strength = result["strength"]
    assert strength["both"] == {
        "l2_scale": result["selection"]["l2"]["selected"],
        "dropout_rate": result["selection"]["dropout"]["selected"],
    }

    none = _finals(result, "none")
    n = len(none)
    required = math.ceil(reg.GAP_SEEDS[0] * n / reg.GAP_SEEDS[1])
    # np.mean over the same numbers in the same order as the experiment: equal, bit for bit,
    # so a verdict at its threshold is recomputed exactly too.
    none_mean_gap = float(np.mean([f["gap"] for f in none]))
    none_mean_test = float(np.mean([f["test_accuracy"] for f in none]))
    recomputed = {}
    for method in reg.METHODS[1:]:
        finals = _finals(result, method)
        got = result["decision"]["per_arm"][method]
        smaller = sum(f["gap"] < f0["gap"] for f, f0 in zip(finals, none, strict=True))
        mean_gap = float(np.mean([f["gap"] for f in finals]))
        mean_test = float(np.mean([f["test_accuracy"] for f in finals]))
        assert got["gap_reduced"]["smaller_in_seeds"] == smaller
        assert got["gap_reduced"]["required_seeds"] == required
        assert got["gap_reduced"]["mean_gap"] == mean_gap
        assert got["gap_reduced"]["none_mean_gap"] == none_mean_gap
        assert got["no_cost"]["mean_test_accuracy"] == mean_test
        assert got["no_cost"]["none_mean_test_accuracy"] == none_mean_test
        recomputed[method] = {
            "gap_reduced": smaller >= required and mean_gap < none_mean_gap,
            "no_cost": mean_test >= none_mean_test - reg.TOLERANCE,
        }
        assert got["gap_reduced"]["holds"] == recomputed[method]["gap_reduced"]
        assert got["no_cost"]["holds"] == recomputed[method]["no_cost"]
    claim_1 = all(recomputed[m]["gap_reduced"] for m in ("l2", "dropout", "both"))
    claim_2 = all(recomputed[m]["no_cost"] for m in ("l2", "dropout", "both"))
    assert result["decision"]["claim_1"] == claim_1
    assert result["decision"]["claim_2"] == claim_2
    assert [c["holds"] for c in result["claims"]] == [claim_1, claim_2]


def test_the_l2_penalty_reaches_training(ran):
    _, result = ran
    for k, none in enumerate(_finals(result, "none")):
        assert _finals(result, "l2")[k]["kernel_norm"] < none["kernel_norm"]
        assert _finals(result, "weight_decay")[k]["kernel_norm"] < none["kernel_norm"]


def test_every_arm_starts_from_the_seeds_weights(ran):
    _, result = ran
    with jax.enable_x64(False):
        for record in result["seeds"]:
            seed = record["seed"]
            plain = reg._init(reg._key(seed))
            kernels = [
                np.asarray(plain[k]["w"], np.float64) for k in ("dense_0", "dense_2", "dense_4")
            ]
            count = sum(w.size for w in kernels)
            # Sums of count squares in float64, in two orders: count eps64 relative apart at most.
            norm = math.sqrt(sum(float(np.sum(w * w)) for w in kernels))
            assert abs(record["initial_kernel_norm"] - norm) <= count * EPS64 * norm
            for rate in (0.0, *reg.DROPOUT_RATES):
                net = reg._network(rate)
                params, state = reg._start(net, plain, seed)
                dense = layer_keys(net, "dense")
                assert len(dense) == 3 and jax.tree.leaves(state) == []
                for key, w in zip(dense, kernels, strict=True):
                    np.testing.assert_array_equal(np.asarray(params[key]["w"], np.float64), w)
