"""The library is the library: no module of ``jaxnn`` imports the experiments, the benchmarks
or a peer framework, neither when it is imported nor when its commands run; and the
experiments import as a package and as scripts.

A run-time import (inside a function, through ``importlib``, a file loaded by path) escapes
the import-cycle test, which reads the import statements at the top of each module: hence a
process that imports every module and runs the commands, and a scan of the source.
"""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, import_experiments

import jaxnn_experiments

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "jaxnn"
# What the library must never import: the repository's tools and the peers they time.
FORBIDDEN = ("jaxnn_experiments", "benchmarks", "flax", "equinox", "torch")

CHILD = textwrap.dedent(
    """
    import contextlib, importlib, io, json, pkgutil, sys, tempfile

    import jaxnn
    from jaxnn import cli

    for module in pkgutil.walk_packages(jaxnn.__path__, "jaxnn."):
        importlib.import_module(module.name)
    with contextlib.redirect_stdout(io.StringIO()) as out, \\
            contextlib.redirect_stderr(io.StringIO()) as err:
        cli.parser().format_help()
        gradcheck = cli.main(["gradcheck", "--only", "layers.dense", "--seeds", "1", "-q"])
        with tempfile.TemporaryDirectory() as tmp:
            train = cli.main(["train", "--data", "xor", "--hidden", "4", "--epochs", "1",
                              "--no-batchnorm", "--out", tmp, "-q"])
    print(json.dumps({
        "codes": [gradcheck, train],
        "output": out.getvalue() + err.getvalue(),
        "modules": sorted(sys.modules),
    }))
    """
)


def test_importing_and_running_jaxnn_imports_no_tool_and_no_peer(tmp_path):
    # A fresh process: this one has imported the experiments. The working folder is not the
    # repository's, whose benchmarks/ and experiments/ would then be importable by accident.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout.splitlines()[-1])
    assert child["codes"] == [0, 0], child["output"]
    imported = {m for m in child["modules"] if m.split(".")[0] in FORBIDDEN}
    assert not imported, f"jaxnn imported {sorted(imported)}"


def _imported_roots(tree: ast.AST) -> set[str]:
    """The top-level names of every module an import statement anywhere in ``tree`` names."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


# Ways to reach a module other than an import statement; none of them belongs in the library.
LOADERS = (
    "jaxnn_experiments",
    "spec_from_file_location",
    "__import__(",
    re.compile(r"import_module\([^)]*(experiments|benchmarks)"),
)


@pytest.mark.parametrize(
    "path", sorted(LIBRARY.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_module_of_jaxnn_names_a_tool(path):
    text = path.read_text()
    imported = _imported_roots(ast.parse(text)) & set(FORBIDDEN)
    assert not imported, f"{path.name} imports {sorted(imported)}"
    for loader in LOADERS:
        found = loader.search(text) if isinstance(loader, re.Pattern) else loader in text
        assert not found, f"{path.name} mentions {getattr(loader, 'pattern', loader)!r}"


EXPERIMENT_FILES = sorted(
    p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("__")
)


def test_every_experiment_runs_as_a_script():
    # `python experiments/<name>.py`: the file run as __main__, its folder first on the path,
    # no package around it; runpy with another run_name runs its imports, not its main. The
    # experiments import each other as jaxnn_experiments: installed, as the README sets up.
    script = textwrap.dedent(
        f"""
        import runpy, sys
        try:
            import jaxnn_experiments
        except ModuleNotFoundError:
            sys.exit("not installed")
        sys.path.insert(0, {str(ROOT / "experiments")!r})
        for name in {EXPERIMENT_FILES!r}:
            runpy.run_path({str(ROOT / "experiments")!r} + "/" + name + ".py", run_name="script")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "experiments",
        env=env, timeout=600,
    )  # fmt: skip
    if result.stderr.strip() == "not installed":
        pytest.skip("jaxnn_experiments is not installed (pip install -e . from the repository)")
    assert result.returncode == 0, result.stderr


class _NotInstalled:
    """A meta path finder for which ``jaxnn_experiments`` is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == EXPERIMENTS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def experiments_not_installed(monkeypatch):
    def ours(name):
        return name == EXPERIMENTS or name.startswith(EXPERIMENTS + ".")

    before = {k: v for k, v in sys.modules.items() if ours(k)}
    for name in before:
        del sys.modules[name]
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(), *sys.meta_path])
    yield
    for name in [k for k in sys.modules if ours(k)]:
        del sys.modules[name]
    sys.modules.update(before)


def test_without_installing_the_tests_load_the_experiments_folder(experiments_not_installed):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(EXPERIMENTS)
    package = import_experiments()
    assert sys.modules[EXPERIMENTS] is package
    assert Path(package.__file__) == ROOT / "experiments" / "__init__.py"
    common = importlib.import_module(f"{EXPERIMENTS}.common")  # submodules by the package's name
    assert Path(common.__file__) == ROOT / "experiments" / "common.py"
    assert package.EXPERIMENTS == jaxnn_experiments.EXPERIMENTS
