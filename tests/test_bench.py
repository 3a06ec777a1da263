"""``python benchmarks/bench_step.py --quick``: the report's structure and the invariants its
numbers must keep.

Timings are not asserted (they belong to the machine); what is asserted could be false: every
implementation is reported or skipped with a reason, times are positive and finite, ratios are
consistent with the times, the state sizes and the memory are counted, the identity call
really dispatches, and the implementations compute the same model (float64 losses from the
same parameters agree to the rounding bound).
"""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_conv
from benchmarks import bench_step as benchmark
from benchmarks.bench_step import main

pytestmark = pytest.mark.slow  # the benchmark harness, run --quick


ROOT = Path(__file__).resolve().parent.parent
MODELS = [n for n in benchmark.IMPLEMENTATIONS if n != benchmark.CEILING]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["--quick", "-q", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _entries(report):
    for result in report["results"]:
        yield from (
            (result["batch"], name, info) for name, info in result["implementations"].items()
        )


def test_the_report_has_its_keys_and_every_batch(report):
    assert set(report) == {"meta", "results", "skipped"}
    assert [r["batch"] for r in report["results"]] == [8, 16]
    meta = report["meta"]
    assert meta["dtype"] == "float32" and meta["reference"] == "plain_jax"
    assert meta["model"]["layers"] == [784, 32, 32, 10]
    for key in ("backend", "device_kind", "cpu_count", "host", "versions"):
        assert meta[key], key


def test_every_implementation_ran_or_is_skipped_with_a_reason(report):
    skipped = {s["implementation"]: s["reason"] for s in report["skipped"]}
    assert all(reason.strip() for reason in skipped.values())
    for result in report["results"]:
        ran = set(result["implementations"])
        assert ran.isdisjoint(skipped)
        assert ran | set(skipped) == set(benchmark.IMPLEMENTATIONS)
        assert {"jaxnn_autodiff", "jaxnn_manual", "plain_jax", "matmuls"} <= ran


def test_times_are_positive_and_finite(report):
    for batch, name, info in _entries(report):
        times = [info["ms_per_step"], info["first_call_s"], *info["ms_per_step_rounds"]]
        assert all(math.isfinite(t) and t > 0 for t in times), (batch, name)
        assert len(info["ms_per_step_rounds"]) == report["meta"]["rounds"]
        assert info["steps_per_round"] >= 1
        if name != "torch":
            assert math.isfinite(info["compile_s"]) and info["compile_s"] > 0
            assert info["host_overhead_us"] > 0 and math.isfinite(info["host_overhead_us"])


def test_ratios_follow_from_the_times(report):
    for result in report["results"]:
        impls = result["implementations"]
        ref = impls["plain_jax"]
        assert ref["ratio_to_plain_jax"] == {"min": 1.0, "median": 1.0, "max": 1.0}
        assert ref["host_overhead_ratio_to_plain_jax"] == 1.0
        assert ref["compile_ratio_to_plain_jax"] == 1.0
        assert impls["matmuls"]["matmul_fraction"] == {"min": 1.0, "median": 1.0, "max": 1.0}
        for name, info in impls.items():
            for stats in (info["ratio_to_plain_jax"], info["matmul_fraction"]):
                assert 0 < stats["min"] <= stats["median"] <= stats["max"], name
            per_round = [t / r for t, r in zip(info["ms_per_step_rounds"],
                                               ref["ms_per_step_rounds"], strict=True)]  # fmt: skip
            assert math.isclose(min(per_round), info["ratio_to_plain_jax"]["min"], rel_tol=1e-12)


def test_state_sizes_memory_and_a_dispatching_identity(report):
    for batch, name, info in _entries(report):
        if name == "torch":
            assert info["state_leaves"] is None and info["memory"] is None
            continue
        assert 0 < info["state_array_leaves"] <= info["state_leaves"] < info["state_nodes"]
        assert info["host_overhead_executes"] is True, (batch, name)
        memory = info["memory"]
        assert memory is not None and memory["argument_bytes"] > 0 and memory["output_bytes"] > 0
        assert all(isinstance(v, int) and v >= 0 for v in memory.values())
    matmuls = [info for _, name, info in _entries(report) if name == "matmuls"]
    assert all(info["state_leaves"] == 3 for info in matmuls)  # the three kernels


def test_the_implementations_compute_the_same_model(report):
    agreement = report["meta"]["agreement"]
    losses = agreement["losses"]
    assert agreement["dtype"] == "float64"
    assert set(losses) == {n for n in MODELS if n in report["results"][0]["implementations"]}
    tolerance = benchmark.agreement_tolerance(**agreement["tolerance_terms"])
    assert tolerance == agreement["tolerance"]
    # The bound must be far below a modelling difference: BatchNorm's biased vs unbiased
    # variance moves the first loss by far more than this.
    assert tolerance < 1e-3
    ref = losses["plain_jax"]
    assert len(ref) == agreement["steps"] and ref[-1] < ref[0]
    for name, trace in losses.items():
        diff = max(abs(a - b) for a, b in zip(trace, ref, strict=True))
        assert diff <= tolerance, (name, diff, tolerance)


def test_every_model_lowers_its_loss_in_float32(report):
    for batch, name, info in _entries(report):
        if name == "matmuls":
            assert info["loss_first"] is None and info["loss_last"] is None
            continue
        assert math.isfinite(info["loss_last"]) and info["loss_last"] < info["loss_first"], (
            batch, name,
        )  # fmt: skip


def test_missing_peers_are_skipped_with_the_install_hint(monkeypatch):
    for module in ("flax", "equinox", "torch"):
        monkeypatch.setitem(sys.modules, module, None)  # `import flax` raises ImportError
    names, skipped = benchmark._select(benchmark.quick_config())
    assert names == ["jaxnn_autodiff", "jaxnn_manual", "plain_jax", "matmuls"]
    reasons = {s["implementation"]: s["reason"] for s in skipped}
    assert set(reasons) == {"flax_linen", "equinox", "torch"}
    assert all("not installed" in r and ".[bench]" in r for r in reasons.values())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batches", "1,8"], "expected batch sizes >= 2"),
        (["--batches", "8,x"], "expected batch sizes >= 2"),
        (["--rounds", "0"], "expected a whole number >= 1"),
        (["--only", "plain_jax,jax"], "expected implementation names from"),
        (["--dtype", "float16"], "invalid choice"),
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


def test_bfloat16_needs_mlp_compute_dtype(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "_has_compute_dtype", lambda: False)
    out = tmp_path / "bench.json"
    assert main(["--quick", "--dtype", "bfloat16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "compute_dtype" in err and "jaxnn_autodiff, jaxnn_manual" in err
    assert not out.exists()


def test_bfloat16_runs_plain_jax_and_the_matmuls_and_skips_the_peers(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--quick", "-q", "--dtype", "bfloat16", "--batches", "8", "--rounds", "1"]
    assert main([*argv, "--only", "matmuls,torch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["dtype"] == "bfloat16"
    assert list(report["results"][0]["implementations"]) == ["plain_jax", "matmuls"]
    skipped = {s["implementation"]: s["reason"] for s in report["skipped"]}
    assert "float32 only" in skipped["torch"]
    # the kernels, donated and aliased to the output, are bfloat16: 2 bytes an element
    memory = report["results"][0]["implementations"]["matmuls"]["memory"]
    assert memory["alias_bytes"] == 2 * (784 * 32 + 32 * 32 + 32 * 10)


@pytest.mark.parametrize(
    "command",
    [["benchmarks/bench_step.py"], ["-m", "benchmarks.bench_step"]],
    ids=["file", "module"],
)
def test_the_script_runs_as_a_file_and_as_a_module(command):
    # JAX_PLATFORMS=cpu: the child leaves an accelerator to the process running the tests.
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--batches N,N" in result.stdout and "--quick" in result.stdout


# ----------------------------------------------------------------------------- bench_conv
# ``python benchmarks/bench_conv.py --quick``: the convolutional network's step, alone and
# scanned over an epoch, against plain JAX and (where installed) Flax linen.


@pytest.fixture(scope="module")
def conv_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_conv") / "bench_conv.json"
    assert bench_conv.main(["--quick", "-q", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _conv_entries(report):
    for result in report["results"]:
        for name, info in result["implementations"].items():
            yield result, name, info


def test_conv_report_has_every_input_batch_and_mode(conv_report):
    assert set(conv_report) == {"meta", "results", "skipped"}
    meta = conv_report["meta"]
    assert meta["inputs"] == {"digits": [8, 8, 1]} and meta["reference"] == "plain_jax"
    assert [(r["input"], r["batch"], r["mode"]) for r in conv_report["results"]] == [
        ("digits", 8, "step"),
        ("digits", 8, "epoch"),
    ]
    skipped = {s["implementation"]: s["reason"] for s in conv_report["skipped"]}
    assert all(reason.strip() for reason in skipped.values())
    for result in conv_report["results"]:
        ran = set(result["implementations"])
        assert ran.isdisjoint(skipped) and ran | set(skipped) == set(bench_conv.IMPLEMENTATIONS)
        assert {"jaxnn_autodiff", "jaxnn_manual", "plain_jax"} <= ran
    assert meta["peer"] == ("flax_linen" if "flax_linen" not in skipped else None)


def test_conv_times_are_positive_and_ratios_follow_from_them(conv_report):
    rounds = conv_report["meta"]["rounds"]
    for result, name, info in _conv_entries(conv_report):
        times = [info["ms_per_step"], info["first_call_s"], *info["ms_per_step_rounds"]]
        assert all(math.isfinite(t) and t > 0 for t in times), (result["mode"], name)
        assert len(info["ms_per_step_rounds"]) == rounds and info["calls_per_round"] >= 1
        assert info["compile_s"] >= 0
        expected_steps = 1 if result["mode"] == "step" else conv_report["meta"]["epoch_steps"]
        assert info["steps_per_call"] == expected_steps
        impls = result["implementations"]
        for peer, key in (
            ("plain_jax", "ratio_to_plain_jax"),
            ("flax_linen", "ratio_to_flax_linen"),
        ):
            if peer not in impls:
                assert info[key] is None
                continue
            per_round = [t / r for t, r in zip(info["ms_per_step_rounds"],
                                               impls[peer]["ms_per_step_rounds"], strict=True)]  # fmt: skip
            stats = info[key]
            assert math.isclose(stats["median"], statistics.median(per_round), rel_tol=1e-12)
            assert stats["min"] == min(per_round) and stats["max"] == max(per_round)
            if name == peer:
                assert stats == {"min": 1.0, "median": 1.0, "max": 1.0}


def test_conv_scan_slowdown_is_the_epoch_over_the_step(conv_report):
    step, epoch = (r["implementations"] for r in conv_report["results"])
    for name, info in epoch.items():
        expected = info["ms_per_step"] / step[name]["ms_per_step"]
        assert math.isclose(info["scan_slowdown"], expected, rel_tol=1e-12), name
        assert "scan_slowdown" not in step[name]


def test_conv_implementations_compute_the_same_model_alone_and_scanned(conv_report):
    agreement = conv_report["meta"]["agreement"]["digits"]
    assert agreement["dtype"] == "float64"
    tolerance = benchmark.agreement_tolerance(**agreement["tolerance_terms"])
    assert tolerance == agreement["tolerance"]
    # far below a modelling difference (BatchNorm's eps, a biased variance in the forward)
    assert tolerance < 1e-3
    for mode in ("step", "epoch"):
        losses = agreement["losses"][mode]
        assert set(losses) == set(conv_report["results"][0]["implementations"])
        ref = losses["plain_jax"]
        assert len(ref) == agreement["steps"]
        for name, trace in losses.items():
            diff = max(abs(a - b) for a, b in zip(trace, ref, strict=True))
            assert diff <= tolerance, (mode, name, diff, tolerance)
    step = agreement["losses"]["step"]["plain_jax"]
    assert step[-1] < step[0]


def test_conv_every_model_lowers_its_loss_in_float32_step_by_step(conv_report):
    step = conv_report["results"][0]
    assert step["mode"] == "step"
    for name, info in step["implementations"].items():
        assert math.isfinite(info["loss_last"]) and info["loss_last"] < info["loss_first"], name


def test_conv_missing_flax_is_skipped_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` raises ImportError
    names, skipped = bench_conv._select(bench_conv.quick_config())
    assert names == ["jaxnn_autodiff", "jaxnn_manual", "plain_jax"]
    assert [s["implementation"] for s in skipped] == ["flax_linen"]
    assert "not installed" in skipped[0]["reason"] and ".[bench]" in skipped[0]["reason"]


def test_conv_rebuilds_the_networks_layers_in_order():
    weights = bench_conv._initial_weights(bench_conv.quick_config(), "digits")
    kinds = [layer.kind for layer in weights.layers]
    block = ["conv2d", "batchnorm", "relu"]
    assert kinds == [*block, *block * 2, "max_pool", *block * 2, "global_avg_pool", "dense"]
    convs = [layer for layer in weights.layers if layer.kind == "conv2d"]
    assert convs[0].shape == (3, 3, 1, 4) and convs[-1].shape == (3, 3, 8, 8)
    assert not any(layer.bias for layer in convs)  # BatchNorm follows every convolution


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--inputs", "cifar"], "expected input names from digits,mnist"),
        (["--modes", "scan"], "expected modes from step,epoch"),
        (["--epoch-steps", "0"], "expected a whole number >= 1"),
        (["--batches", "1"], "expected batch sizes >= 2"),
        (["--only", "equinox"], "expected implementation names from"),
    ],
)
def test_conv_usage_errors_are_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as e:
        bench_conv.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_conv_out_must_be_a_file(tmp_path, capsys):
    assert bench_conv.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "which is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["benchmarks/bench_conv.py"], ["-m", "benchmarks.bench_conv"]],
    ids=["file", "module"],
)
def test_conv_script_runs_as_a_file_and_as_a_module(command):
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--epoch-steps N" in result.stdout and "--modes MODE,MODE" in result.stdout


# ----------------------------------------------------------------------------- bench_statistics


@pytest.mark.slow  # compiles 8 small programs
def test_bench_statistics_quick_prints_every_variant_in_both_modes(capsys):
    from benchmarks import bench_statistics

    assert bench_statistics.main(["--quick"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert {(r[1], r[2]) for r in rows} == {
        (mode, v) for mode in ("forward", "grad") for v in bench_statistics.VARIANTS
    }
    assert all(float(r[4]) == 1.0 for r in rows if r[2] == bench_statistics.REFERENCE)
