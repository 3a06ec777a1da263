"""The source text's worked example: every published figure is reproduced and accounted for.

The published figures below are typed in from the walk-through, independently of the code;
the test also recomputes the key numbers with plain Python floats (math.exp), a second
implementation that shares nothing with jaxnn.
"""

import json
import math

import pytest

import jaxnn_experiments.backprop_worked_example as example


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    res = example.main(out)
    assert json.loads((out / "backprop_worked_example.json").read_text()) == json.loads(
        json.dumps(res)
    )
    return res


def plain_python(steps, sequential=False):
    """The network in plain floats; returns (error before each update, final outputs)."""
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    i1, i2, t1, t2, eta = 0.05, 0.10, 0.01, 0.99, 0.5
    w1, w2, w3, w4, w5, w6, w7, w8 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55
    errors = []
    for _ in range(steps):
        h1, h2 = s(w1 * i1 + w2 * i2 + 0.35), s(w3 * i1 + w4 * i2 + 0.35)
        o1, o2 = s(w5 * h1 + w6 * h2 + 0.60), s(w7 * h1 + w8 * h2 + 0.60)
        errors.append(0.5 * (t1 - o1) ** 2 + 0.5 * (t2 - o2) ** 2)
        d1, d2 = (o1 - t1) * o1 * (1 - o1), (o2 - t2) * o2 * (1 - o2)
        n5, n6, n7, n8 = (
            w5 - eta * d1 * h1,
            w6 - eta * d1 * h2,
            w7 - eta * d2 * h1,
            w8 - eta * d2 * h2,
        )
        if sequential:
            w5, w6, w7, w8 = n5, n6, n7, n8
        e1 = (d1 * w5 + d2 * w7) * h1 * (1 - h1)
        e2 = (d1 * w6 + d2 * w8) * h2 * (1 - h2)
        w1, w2, w3, w4 = (
            w1 - eta * e1 * i1,
            w2 - eta * e1 * i2,
            w3 - eta * e2 * i1,
            w4 - eta * e2 * i2,
        )
        w5, w6, w7, w8 = n5, n6, n7, n8
    h1, h2 = s(w1 * i1 + w2 * i2 + 0.35), s(w3 * i1 + w4 * i2 + 0.35)
    o1, o2 = s(w5 * h1 + w6 * h2 + 0.60), s(w7 * h1 + w8 * h2 + 0.60)
    errors.append(0.5 * (t1 - o1) ** 2 + 0.5 * (t2 - o2) ** 2)
    return errors, (o1, o2)


# Typed in from the published walk-through of this network.
PUBLISHED = {
    "e_total": 0.298371109,
    "de_dw5": 0.082167041,
    "w5_after_1": 0.35891648,
    "w1_after_1": 0.149780716,
    "e_total_after_1": 0.291027924,
    "e_total_after_n": 0.0000351085,
    "out_o1_after_n": 0.015912196,
    "out_o2_after_n": 0.984065734,
}


def test_the_experiment_compares_against_the_published_figures():
    assert {k: float(v) for k, v in example.PUBLISHED.items()} == PUBLISHED


def test_one_step_figures_match_every_printed_digit(result):
    half_ulp_9 = 0.5e-9  # the figures print 9 decimals (w5: 8)
    assert abs(result["forward"]["e_total"] - PUBLISHED["e_total"]) <= half_ulp_9
    assert abs(result["gradients"]["manual"]["w5"] - PUBLISHED["de_dw5"]) <= half_ulp_9
    assert abs(result["updated_weights"]["w5"] - PUBLISHED["w5_after_1"]) <= 0.5e-8
    assert abs(result["updated_weights"]["w1"] - PUBLISHED["w1_after_1"]) <= half_ulp_9


def test_manual_backprop_equals_jax_grad_for_every_weight(result):
    g = result["gradients"]
    assert set(g["manual"]) == {f"w{i}" for i in range(1, 9)}
    for w in g["manual"]:
        # float64, a handful of operations on O(0.1) numbers: a few ulps.
        assert abs(g["manual"][w] - g["autodiff"][w]) <= 1e-15
        assert abs(g["autodiff_on_hand_rules"][w] - g["autodiff"][w]) <= 1e-15
    assert result["max_abs_manual_minus_autodiff"] == max(
        abs(g["manual"][w] - g["autodiff"][w]) for w in g["manual"]
    )


def test_every_published_figure_is_accounted_for(result):
    figures = result["figures"]
    assert set(figures) == set(PUBLISHED)
    assert result["all_published_reproduced"]
    expected = {
        "e_total": ["stated"],
        "de_dw5": ["stated"],
        "w5_after_1": ["stated"],
        "w1_after_1": ["stated"],
        "e_total_after_1": ["sequential"],
        "e_total_after_n": ["logged"],
        "out_o1_after_n": ["sequential"],
        "out_o2_after_n": ["sequential"],
    }
    assert {k: f["reproduced_by"] for k, f in figures.items()} == expected
    assert set(result["rules"]) == {"stated", "sequential", "logged"}


def test_jaxnn_agrees_with_an_independent_plain_python_run(result):
    errors, outputs = plain_python(example.NUM_STEPS)
    # 10,000 steps of float64 arithmetic in two different orders drift apart by at most
    # ~1e4 steps * 2 ulps = 4.4e-12 relative in the outputs (linear worst case; a random walk
    # gives ~1e-14). E ~ (o - t)^2 with o - t ~ 0.37 o amplifies that ~5.4x: 2.4e-11.
    out_rtol, err_rtol = 5e-12, 3e-11
    f = result["figures"]
    assert f["e_total_after_1"]["stated"] == pytest.approx(errors[1], rel=1e-14)
    assert f["e_total_after_n"]["stated"] == pytest.approx(errors[-1], rel=err_rtol)
    assert f["e_total_after_n"]["logged"] == pytest.approx(errors[-2], rel=err_rtol)
    stated_outputs = (f["out_o1_after_n"]["stated"], f["out_o2_after_n"]["stated"])
    assert stated_outputs == pytest.approx(outputs, rel=out_rtol)
    seq_errors, seq_outputs = plain_python(example.NUM_STEPS, sequential=True)
    assert f["e_total_after_1"]["sequential"] == pytest.approx(seq_errors[1], rel=1e-14)
    assert f["e_total_after_n"]["sequential"] == pytest.approx(seq_errors[-1], rel=err_rtol)
    seq = (f["out_o1_after_n"]["sequential"], f["out_o2_after_n"]["sequential"])
    assert seq == pytest.approx(seq_outputs, rel=out_rtol)


def test_the_loss_falls(result):
    f = result["figures"]
    assert f["e_total_after_1"]["stated"] < result["forward"]["e_total"]
    assert f["e_total_after_n"]["stated"] < 1e-4
