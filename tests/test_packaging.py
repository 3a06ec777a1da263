"""The declared dependency bounds are the ones CI proves: pyproject.toml's lower bounds equal
the pins of constraints-minimum.txt, on which .ci/run runs the whole suite. Every package is
installed, and the ``jaxnn`` console script has every command."""

import importlib
import re
import tomllib
from pathlib import Path

import pytest

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


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_installed():
    # A folder of jaxnn with an __init__.py that setuptools does not list is missing from a
    # wheel (an editable install hides that: it maps the whole folder).
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxnn").rglob("__init__.py")
    }
    assert set(_pyproject()["tool"]["setuptools"]["packages"]) == found | {"jaxnn_experiments"}


def test_the_console_script_is_the_library_commands_and_reproduce(capsys):
    module, _, name = _pyproject()["project"]["scripts"]["jaxnn"].partition(":")
    main = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxnn [-h] [--version] {reproduce,gradcheck,train} ...")
    # what the command is, one line per command, where the docs are
    text = " ".join(out.split())
    assert "every gradient derived by hand" in text and "README.md and docs/" in text
    for command in ("reproduce", "gradcheck", "train"):
        assert re.search(rf"^    {command} +\S", out, re.MULTILINE), command
