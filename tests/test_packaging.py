"""The declared dependency bounds are the ones CI proves: pyproject.toml's lower bounds equal
the pins of constraints-minimum.txt, on which .ci/run runs the whole suite."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    lines = (line.strip() for line in (ROOT / "constraints-minimum.txt").read_text().splitlines())
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def _lower_bounds() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", dep)
        assert m, f"{dep!r}: every runtime dependency needs a lower bound (pkg>=version)"
        bounds[m[1].lower()] = m[2]
    return bounds


def test_lower_bounds_equal_the_pinned_minimum_versions():
    assert _lower_bounds() == _pins()


def test_ci_runs_the_suite_on_the_minimum_versions():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints-minimum.txt" in ci and ".venv-min/bin/python -m pytest" in ci
