"""``python benchmarks/bench_lstm.py --quick``: the LSTM benchmark's report and the invariants
its numbers must keep.

Timings are not asserted (they belong to the machine); what is asserted could be false: every
implementation is reported or skipped with a reason, times are positive and finite, the ratios
follow from the times, the Flax reference is the faster Flax cell, the implementations compute
the same model (float64 losses and gradients at the same parameters agree to the rounding
bound, which a wrong gate order exceeds by far), every step lowers its loss, and the breakdown
splits a step into its forward scan, its backward scan and the rest.
"""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_lstm
from benchmarks.bench_lstm import main

pytestmark = pytest.mark.slow  # the benchmark harness, run --quick

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_lstm") / "bench_lstm.json"
    assert main(["--quick", "-q", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _entries(report):
    for result in report["results"]:
        for name, info in result["implementations"].items():
            yield result, name, info


def test_report_has_every_mode_and_implementation_or_a_reason(report):
    assert set(report) == {"meta", "results", "breakdown", "skipped"}
    meta = report["meta"]
    assert (meta["batch"], meta["time"], meta["features"], meta["hidden"]) == (4, 6, 3, 5)
    assert meta["reference"] == "plain_jax" and meta["dtype"] == "float32"
    for key in ("backend", "device_kind", "cpu_count", "host", "versions"):
        assert meta[key], key
    assert [r["mode"] for r in report["results"]] == ["step", "forward"]
    skipped = {s["implementation"]: s["reason"] for s in report["skipped"]}
    assert all(reason.strip() for reason in skipped.values())
    for result in report["results"]:
        ran = set(result["implementations"])
        assert ran.isdisjoint(skipped) and ran | set(skipped) == set(bench_lstm.IMPLEMENTATIONS)
        assert {"jaxnn_autodiff", "jaxnn_manual", "plain_jax", "plain_jax_hoisted"} <= ran


def test_times_are_positive_and_the_ratios_follow_from_them(report):
    rounds = report["meta"]["rounds"]
    for result, name, info in _entries(report):
        times = [info["ms"], info["first_call_s"], *info["ms_rounds"]]
        assert all(math.isfinite(t) and t > 0 for t in times), (result["mode"], name)
        assert len(info["ms_rounds"]) == rounds and info["calls_per_round"] >= 1
        assert info["compile_s"] >= 0
        assert math.isclose(info["ms"], statistics.median(info["ms_rounds"]), rel_tol=1e-12)
        impls = result["implementations"]
        for peer, key in ((result["flax_reference"], "ratio_to_flax"),
                          ("plain_jax", "ratio_to_plain_jax")):  # fmt: skip
            if peer is None:
                assert info[key] is None
                continue
            per_round = [t / r for t, r in zip(info["ms_rounds"], impls[peer]["ms_rounds"],
                                               strict=True)]  # fmt: skip
            stats = info[key]
            assert math.isclose(stats["median"], statistics.median(per_round), rel_tol=1e-12)
            assert stats["min"] == min(per_round) and stats["max"] == max(per_round)
            if name == peer:
                assert stats == {"min": 1.0, "median": 1.0, "max": 1.0}


def test_the_flax_reference_is_the_faster_flax_cell(report):
    for result in report["results"]:
        impls = result["implementations"]
        flax = [n for n in bench_lstm.FLAX if n in impls]
        if not flax:
            assert result["flax_reference"] is None
            continue
        assert result["flax_reference"] == min(flax, key=lambda n: impls[n]["ms"])


def test_the_implementations_compute_the_same_model(report):
    agreement = report["meta"]["agreement"]
    assert agreement["dtype"] == "float64"
    tolerance = bench_lstm.agreement_tolerance(batch=agreement["batch"], time=agreement["time"],
                                               features=3, hidden=5)  # fmt: skip
    assert tolerance == agreement["tolerance"] and tolerance < 1e-12
    diffs = agreement["relative_diff_to_plain_jax"]
    assert set(diffs) == set(report["results"][0]["implementations"])
    for name, diff in diffs.items():
        assert diff["loss"] <= tolerance and diff["grads"] <= tolerance, (name, diff)


def test_a_wrong_gate_order_is_far_outside_the_agreement_bound():
    cfg = bench_lstm.quick_config()
    weights = bench_lstm._initial_weights(cfg)
    h = cfg.hidden
    swapped = {  # the input and forget gates exchanged: PyTorch's (f, i, g, o)
        k: np.concatenate([v[..., h : 2 * h], v[..., :h], v[..., 2 * h :]], axis=-1)
        for k, v in weights.items()
    }
    x = bench_lstm._data(cfg, cfg.check_batch)[0].astype(np.float64)
    right = bench_lstm.plain_lstm({k: jnp.asarray(v) for k, v in weights.items()}, x)
    wrong = bench_lstm.plain_lstm({k: jnp.asarray(v) for k, v in swapped.items()}, x)
    tolerance = bench_lstm.agreement_tolerance(
        batch=cfg.check_batch, time=cfg.time, features=cfg.features, hidden=cfg.hidden
    )
    assert float(jnp.max(jnp.abs(right - wrong))) > 1e6 * tolerance


def test_every_step_lowers_its_loss_and_a_forward_keeps_it(report):
    for result, name, info in _entries(report):
        assert math.isfinite(info["loss_first"]) and math.isfinite(info["loss_last"])
        if result["mode"] == "step":
            assert info["loss_last"] < info["loss_first"], name
        else:
            assert info["loss_last"] == info["loss_first"], name


def test_the_breakdown_splits_each_step_into_its_two_scans_and_the_rest(report):
    breakdown = report["breakdown"]
    assert set(breakdown) == set(report["results"][0]["implementations"])
    for name, b in breakdown.items():
        if "error" in b:  # a jax whose profiler trace cannot be read: said, not hidden
            assert b["error"].strip()
            continue
        assert [loop["label"] for loop in b["loops"]] == ["forward scan", "backward scan"], name
        assert b["calls"] == 1 and b["total_ms"] == b["calls_ms"][0] > 0
        loops = sum(loop["ms"] for loop in b["loops"])
        assert all(loop["ms"] > 0 and loop["top_us_per_iteration"] for loop in b["loops"])
        assert math.isclose(b["outside_ms"], b["total_ms"] - loops, rel_tol=1e-9, abs_tol=1e-9)


def _event(name, start, end):
    return bench_lstm._Event(name, start * 1000, end * 1000)  # µs -> ns


def _synthetic_call(slow=0):
    """A step of 2 iterations: a product, a 2-op forward loop, a 1-op backward loop, Adam;
    ``slow`` µs more in the backward loop's first op."""
    return [
        _event("ynn_fusion.9", 0, 10),  # the hoisted product, outside
        _event("while.1", 10, 12),  # ends before its body: XLA:CPU runs loops asynchronously
        _event("dot.1", 12, 20), _event("add.1", 20, 22),
        _event("dot.1", 22, 30), _event("add.1", 30, 32),
        _event("while.2", 32, 70 + slow),
        _event("dot.2", 35, 50 + slow), _event("dot.2", 50 + slow, 65 + slow),
        _event("reduce.3", 66 + slow, 69 + slow),  # ran once: outside, though in the window
        _event("adam.4", 70 + slow, 80 + slow),
    ]  # fmt: skip


def test_breakdown_of_a_synthetic_trace():
    b = bench_lstm.breakdown([_synthetic_call(), _synthetic_call()], steps=2)
    assert b["calls"] == 2 and b["total_ms"] == pytest.approx(0.080)
    forward, backward = b["loops"]
    assert forward["label"] == "forward scan" and forward["ms"] == pytest.approx(0.022)
    assert backward["label"] == "backward scan" and backward["ms"] == pytest.approx(0.038)
    assert forward["us_per_iteration"] == pytest.approx(11.0)
    assert forward["top_us_per_iteration"] == [["dot.1", 8.0], ["add.1", 2.0]]
    assert backward["top_us_per_iteration"] == [["dot.2", 15.0]]
    assert b["outside_ms"] == pytest.approx(0.080 - 0.022 - 0.038)
    assert b["top_outside_ms"] == [
        ["ynn_fusion.9", pytest.approx(0.010)],
        ["adam.4", pytest.approx(0.010)],
        ["reduce.3", pytest.approx(0.003)],
    ]


def test_breakdown_reports_the_median_call():
    calls = [_synthetic_call(slow) for slow in (100, 0, 20)]  # an outlier, a fast, the median
    b = bench_lstm.breakdown(calls, steps=2)
    assert b["calls_ms"] == pytest.approx([0.180, 0.080, 0.100])
    assert b["total_ms"] == pytest.approx(0.100)
    assert b["loops"][1]["ms"] == pytest.approx(0.058)
    assert b["outside_ms"] == pytest.approx(0.100 - 0.022 - 0.058)


def test_missing_flax_is_skipped_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` raises ImportError
    names, skipped = bench_lstm._select(bench_lstm.quick_config())
    assert names == ["jaxnn_autodiff", "jaxnn_manual", "plain_jax", "plain_jax_hoisted"]
    assert [s["implementation"] for s in skipped] == list(bench_lstm.FLAX)
    assert all("not installed" in s["reason"] and ".[bench]" in s["reason"] for s in skipped)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--modes", "backward"], "expected modes from step,forward"),
        (["--hidden", "0"], "expected a whole number >= 1"),
        (["--rounds", "x"], "expected a whole number >= 1"),
        (["--only", "equinox"], "expected implementation names from"),
    ],
)
def test_usage_errors_are_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_out_must_be_a_file(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 2
    assert "which is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["benchmarks/bench_lstm.py"], ["-m", "benchmarks.bench_lstm"]],
    ids=["file", "module"],
)
def test_the_script_runs_as_a_file_and_as_a_module(command):
    # JAX_PLATFORMS=cpu: the child leaves an accelerator to the process running the tests.
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--hidden N" in result.stdout and "--no-profile" in result.stdout
