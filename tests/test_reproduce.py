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

from jaxnn_experiments import EXPERIMENTS, cli, common

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


# ----------------------------------------------------------------------------- preregistration,
# robustness


def test_publish_refuses_rules_that_changed_after_the_preregistration(tmp_path, monkeypatch):
    earlier = tmp_path / "x.json"
    earlier.write_text('{"an": "earlier result"}')
    common.preregister("x", tmp_path, {"a": 1}, {"rule": "holds if a >= 1"})
    assert earlier.read_text() == '{"an": "earlier result"}'  # kept until a result replaces it
    with pytest.raises(ValueError, match="preregistered"):
        common.publish("x", tmp_path, {"rules": {"rule": "holds if a >= 0"}}, {}, "report")
    assert earlier.read_text() == '{"an": "earlier result"}'
    record = json.loads((tmp_path / "x.preregistered.json").read_text())
    assert record["rules"] == {"rule": "holds if a >= 1"} and record["setup"] == {"a": 1}
    common.publish("x", tmp_path, {"rules": {"rule": "holds if a >= 1"}, "a": 1}, {}, "report")
    assert json.loads(earlier.read_text())["a"] == 1


def test_robustness_says_whether_every_variant_gives_the_original_verdict():
    same = common.variant("budget_x5", "1000 epochs", False, "0.70 < 0.85")
    other = common.variant("lr_x3", "learning rate 0.03", True, "0.90 >= 0.85")
    robust = common.robustness(False, [same])
    assert robust["robust"] is True and robust["holds"] is False
    assert robust["sentence"].startswith("Robust") and "budget_x5" in robust["sentence"]
    depends = common.robustness(False, [same, other])
    assert depends["robust"] is False
    assert depends["sentence"].startswith("Depends on the setup: the claim holds in lr_x3")
    assert "does not hold in budget_x5" in depends["sentence"]
    assert "original verdict (does not hold) stands" in depends["sentence"]
    with pytest.raises(ValueError, match="at least one variant"):
        common.robustness(False, [])
    with pytest.raises(TypeError, match="computed by the rule"):
        common.variant("lr_x3", "0.03", "yes", "")
    with pytest.raises(ValueError, match="the claim's is True"):
        common.claim("c", "r", True, "e", "f", robustness=depends)


def test_report_gives_the_variants_beside_the_original_verdict():
    from jaxnn_experiments import reproduce

    variants = [
        common.variant("budget_x5", "budget x5: 1000 epochs", True, "lowest 0.88"),
        common.variant("lr_x3", "learning rate 0.03", False, "lowest 0.62"),
    ]
    claims = [
        common.claim("It separates.", "holds if >= 0.85", False, "lowest 0.63", "x.png",
                     robustness=common.robustness(False, variants)),
        common.claim("It is linear.", "holds if <= 0.8", True, "0.7", "x.png"),
    ]  # fmt: skip
    report = reproduce._report(["x"], {"x": {"claims": claims}}, {}, quick=False)
    assert "| x | It separates. | **does not hold** | depends on the setup | x.png |" in report
    assert "| x | It is linear. | **holds** |  | x.png |" in report
    assert "**Verdict: does not hold.** lowest 0.63." in report
    assert "| budget x5: 1000 epochs | holds | lowest 0.88 |" in report
    assert "| learning rate 0.03 | does not hold | lowest 0.62 |" in report
    assert claims[0]["robustness"]["sentence"] in report
