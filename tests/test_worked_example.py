"""The source text's worked example: every published figure is reproduced and accounted for.

The published figures below are typed in from the walk-through, independently of the code;
the test also recomputes the key numbers with plain Python floats (math.exp), a second
implementation that shares nothing with jaxnn.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location(
    "backprop_worked_example", ROOT / "experiments" / "backprop_worked_example.py"
)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


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
PUBLISHED_ONE_STEP = {
    "E_total": 0.298371109,
    "dE/dw5": 0.082167041,
    "w5": 0.35891648,
    "w1": 0.149780716,
}


def test_one_step_figures_match_every_printed_digit(result):
    half_ulp_9 = 0.5e-9  # the figures print 9 decimals (w5: 8)
    assert abs(result["forward"]["E_total"] - PUBLISHED_ONE_STEP["E_total"]) <= half_ulp_9
    assert (
        abs(result["gradients"]["dE/dw5"]["manual backprop"] - PUBLISHED_ONE_STEP["dE/dw5"])
        <= half_ulp_9
    )
    assert abs(result["updated weights"]["w5"] - PUBLISHED_ONE_STEP["w5"]) <= 0.5e-8
    assert abs(result["updated weights"]["w1"] - PUBLISHED_ONE_STEP["w1"]) <= half_ulp_9


def test_manual_backprop_equals_jax_grad_for_every_weight(result):
    for name, g in result["gradients"].items():
        if "not applied" in name:
            continue
        # float64, a handful of operations on O(0.1) numbers: a few ulps.
        assert abs(g["manual - jax.grad"]) <= 1e-15
        assert abs(g["jax.grad on hand-derived rules"] - g["jax.grad"]) <= 1e-15


def test_every_published_figure_is_accounted_for(result):
    comparison = result["published vs jaxnn"]
    assert set(comparison) == set(example.PUBLISHED)
    assert result["all published figures accounted for"]
    expected = {
        "E_total": [example.STATED],
        "dE/dw5": [example.STATED],
        "w5 after one update": [example.STATED],
        "w1 after one update": [example.STATED],
        "E_total after one update": [example.SEQUENTIAL],
        "E_total after 10,000 updates": [example.LOGGED],
        "out_o1 after 10,000 updates": [example.SEQUENTIAL],
        "out_o2 after 10,000 updates": [example.SEQUENTIAL],
    }
    assert {k: c["reproduced by"] for k, c in comparison.items()} == expected


def test_jaxnn_agrees_with_an_independent_plain_python_run(result):
    errors, outputs = plain_python(example.NUM_STEPS)
    # 10,000 steps of float64 arithmetic in two different orders drift apart by at most
    # ~1e4 steps * 2 ulps = 4.4e-12 relative in the outputs (linear worst case; a random walk
    # gives ~1e-14). E ~ (o - t)^2 with o - t ~ 0.37 o amplifies that ~5.4x: 2.4e-11.
    out_rtol, err_rtol = 5e-12, 3e-11
    assert result["E_total after one update"] == pytest.approx(errors[1], rel=1e-14)
    after = result["after 10,000 updates"]
    assert after["E_total"] == pytest.approx(errors[-1], rel=err_rtol)
    assert after["E_total logged by the last iteration (after 9,999 updates)"] == pytest.approx(
        errors[-2], rel=err_rtol
    )
    assert (after["out_o1"], after["out_o2"]) == pytest.approx(outputs, rel=out_rtol)
    seq_errors, seq_outputs = plain_python(example.NUM_STEPS, sequential=True)
    seq = result["sequential rule"]
    assert seq["E_total after one update"] == pytest.approx(seq_errors[1], rel=1e-14)
    assert (
        seq["out_o1 after 10,000 updates"],
        seq["out_o2 after 10,000 updates"],
    ) == pytest.approx(seq_outputs, rel=out_rtol)


def test_the_loss_falls(result):
    assert result["E_total after one update"] < result["forward"]["E_total"]
    assert result["after 10,000 updates"]["E_total"] < 1e-4
