"""``jaxnn reproduce --quick``: every experiment runs scaled down, and the report has them all.

Each experiment's own numbers are checked in its own test module; this one checks that the
command produces every JSON, figure and verdict, and that ``report.md`` states each claim with
the verdict its experiment computed; and that ``python -m jaxnn_experiments`` is the same
command. Its exit codes and messages are in ``test_bad_inputs.py`` (the command-line table).
"""

import json
import runpy
import sys
import time

import pytest

from jaxnn_experiments import EXPERIMENTS, cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_FIGURE = {"backprop_worked_example"}  # a table of published numbers


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    start = time.perf_counter()
    code = cli.main(["reproduce", "--quick", "--out", str(out), "-q"])
    return code, out, time.perf_counter() - start


@pytest.mark.slow  # every experiment, quick
def test_reproduce_quick_runs_every_experiment(reproduced):
    code, _, seconds = reproduced
    assert code == 0
    print(f"jaxnn reproduce --quick: {seconds:.1f} s")  # the issue asks for < 90 s; not asserted


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.slow  # every experiment, quick
def test_every_experiment_writes_its_json_figure_and_verdicts(reproduced, name):
    _, out, _ = reproduced
    result = json.loads((out / f"{name}.json").read_text())
    assert result["quick"] is True
    claims = result["claims"]
    assert claims and all(isinstance(c["holds"], bool) for c in claims)
    assert all(c["claim"] and c["rule"] and c["evidence"] and c["figure"] for c in claims)
    if name not in NO_FIGURE:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == PNG_SIGNATURE and len(png) > 10_000


@pytest.mark.slow  # every experiment, quick
def test_the_report_states_every_claim_with_its_computed_verdict(reproduced):
    _, out, _ = reproduced
    report = (out / "report.md").read_text()
    assert "**Quick mode**" in report
    for name in EXPERIMENTS:
        assert f"## {name}" in report
        for c in json.loads((out / f"{name}.json").read_text())["claims"]:
            verdict = "holds" if c["holds"] else "does not hold"
            assert f"| {name} | {c['claim']} | **{verdict}** |" in report
            assert f"**Verdict: {verdict}.** {c['evidence']}" in report


def test_python_m_jaxnn_experiments_is_jaxnn_reproduce(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["jaxnn_experiments", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("jaxnn_experiments", run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxnn reproduce ")
    assert all(option in out for option in ("--quick", "--only NAME[,NAME]", "--out", "--quiet"))


def test_compare_reports_numbers_that_differ_and_lists_strings(tmp_path, capsys):
    from jaxnn_experiments import compare

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    base = {"a": [1.0, float("nan")], "setup": {"optimizer": "sgd"}, "seconds": 3.0}
    (old / "x.json").write_text(json.dumps(base))
    (new / "x.json").write_text(
        json.dumps({**base, "setup": {"optimizer": "adam"}, "seconds": 4.0})
    )
    assert compare.main([str(old), str(new)]) == 0  # a string and a timing differ: numbers equal
    out = capsys.readouterr().out
    assert "2 values equal, 0 numbers differ, 1 strings differ, 1 timing fields skipped" in out
    (new / "x.json").write_text(json.dumps({**base, "a": [1.0 + 2**-52, float("nan")]}))
    assert compare.main([str(old), str(new)]) == 1  # one ulp is a difference
    assert "/a[0]: 1.0 vs 1.0000000000000002" in capsys.readouterr().out
    (new / "y.json").write_text("{}")
    assert compare.main([str(old), str(new)]) == 1  # a file of one folder only
    assert compare.main([str(old)]) == 2
