"""The audit and the package's shape: every public component has a gradient case and passes
it; importing jaxnn registers nothing; the import graph of jaxnn has no cycle."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from numerics import RTOL

import jaxnn
from jaxnn import audit, cli, gradcheck
from jaxnn.gradcheck import AUTO, HAND

PACKAGE = Path(jaxnn.__file__).parent


def _import_graph() -> dict[str, set[str]]:
    """Module -> the jaxnn modules it imports, anywhere in its body (functions included)."""
    modules = {
        ".".join(("jaxnn", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in PACKAGE.rglob("*.py")
    }
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from jaxnn import layers` imports the module jaxnn.layers, not the package.
                found = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            targets |= {t for t in found if t in modules and t != name}
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for t in sorted(graph[node]):
            if state.get(t) == 1:
                return [*path[path.index(t) :], t]
            if t not in state and (found := visit(t, [*path, t])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    graph.pop("jaxnn")  # the package re-exports its modules; they never import it back
    assert all("jaxnn" not in targets for targets in graph.values())
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # The checker stands apart: it depends on nothing of the library but the type aliases.
    assert graph["jaxnn.gradcheck"] <= {"jaxnn._typing"}
    # ...and the cycle finder finds a planted one.
    assert _cycle({**graph, "jaxnn._typing": {"jaxnn.layers"}}) is not None


def test_importing_jaxnn_registers_nothing():
    code = (
        "import jaxnn, jaxnn.audit; from jaxnn import gradcheck; print(len(gradcheck.registered()))"
    )
    root = str(Path(__file__).resolve().parent.parent)  # importable, installed or not
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_every_public_component_has_an_audit_case():
    components = audit.components()
    for expected in ("layers.dense", "layers.activation", "layers.dropout", "layers.batchnorm",
                     "layers.serial", "layers.mlp", "layers.manual", "regularization.l1",
                     "regularization.l2", "activations.sigmoid", "losses.squared_error"):  # fmt: skip
        assert expected in components
    assert audit.missing() == []


@pytest.mark.parametrize(
    "component", ["layers.dropout", "layers.batchnorm", "regularization.l1", "activations.swish"]
)
def test_completeness_check_fails_when_a_case_is_removed(component):
    cases = {
        k: v for k, v in audit.CASES.items() if k != component and not k.startswith(component + ".")
    }
    assert audit.missing(cases) == [component]


def test_user_cases_may_not_shadow_the_library():
    gradcheck.register("layers.dense", lambda key: None)
    try:
        with pytest.raises(ValueError, match=r"already name jaxnn's own audit cases"):
            audit.cases()
    finally:
        gradcheck.unregister("layers.dense")


@pytest.mark.parametrize("name", sorted(audit.CASES))
def test_every_audit_case_passes_at_random_shapes_and_seeds(name):
    make = audit.CASES[name]
    for seed in (0, 1, 2):  # the CLI audits the same draws (its default --seeds 3)
        case = make(jax.random.key(seed))
        report = gradcheck.check_case(case, key=jax.random.key(seed))
        assert report.max_rel_err((HAND, AUTO)) <= RTOL


def test_cli_gradcheck_lists_the_new_components(capsys):
    assert cli.main(["gradcheck", "--seeds", "1", "--only", "layers.dropout"]) == 0
    assert cli.main(["gradcheck", "--seeds", "1", "--only", "regularization."]) == 0
    assert cli.main(["gradcheck", "--seeds", "1", "--only", "layers.batchnorm"]) == 0
    out = capsys.readouterr().out
    for name in ("layers.dropout", "regularization.l1", "regularization.l2",
                 "layers.batchnorm.train", "layers.batchnorm.eval", "layers.batchnorm.mask"):  # fmt: skip
        assert name in out
    assert "MISMATCH" not in out


# ----------------------------------------------------------------------------- discovery

_WITH_FUTURE = """
from __future__ import annotations

from jaxnn._typing import Layer
from jaxnn.layers import activation, dense  # imported factories belong to their own module


def instancenorm(eps: float = 1e-5) -> Layer:
    return activation("identity", name="instancenorm")


def _private() -> Layer:
    return activation("identity")


def helper() -> int:
    return 0
"""

_TYPE_CHECKING_ONLY = """
from __future__ import annotations

from typing import TYPE_CHECKING

from jaxnn.layers import activation

if TYPE_CHECKING:
    from jaxnn import Layer


def weightnorm(groups: int) -> Layer:  # unresolvable at run time: judged by its text
    return activation("identity", name="weightnorm")
"""

_WITHOUT_FUTURE = """
from jaxnn._typing import Layer
from jaxnn.layers import activation


def spectralnorm() -> Layer:
    return activation("identity", name="spectralnorm")
"""


@pytest.fixture
def new_subpackage(tmp_path, monkeypatch):
    """``jaxnn.extras`` (a subpackage that is not in the repository) with three modules of
    layer factories, found through ``jaxnn.__path__``."""
    extras = tmp_path / "extras"
    extras.mkdir()
    (extras / "__init__.py").write_text("")
    (extras / "norms.py").write_text(_WITH_FUTURE)
    (extras / "more.py").write_text(_WITHOUT_FUTURE)
    (extras / "hinted.py").write_text(_TYPE_CHECKING_ONLY)
    monkeypatch.setattr(jaxnn, "__path__", [*jaxnn.__path__, str(tmp_path)])
    yield "jaxnn.extras"
    for name in [m for m in sys.modules if m == "jaxnn.extras" or m.startswith("jaxnn.extras.")]:
        del sys.modules[name]
    if hasattr(jaxnn, "extras"):
        delattr(jaxnn, "extras")


def test_discovery_finds_the_library_layer_factories_where_they_are_defined():
    found = audit.layer_factories()
    assert found["dense"] == "jaxnn.layers.dense"
    assert found["batchnorm"] == "jaxnn.batchnorm.batchnorm"
    assert found["serial"] == "jaxnn.combinators.serial"
    assert found["mlp"] == "jaxnn.networks.mlp"
    assert found["manual"] == "jaxnn.backprop.manual"
    assert {f"layers.{name}" for name in found} <= set(audit.components())


def test_discovery_finds_a_layer_factory_in_a_new_module_and_completeness_fails(new_subpackage):
    found = audit.layer_factories()
    assert found["instancenorm"] == f"{new_subpackage}.norms.instancenorm"
    assert found["weightnorm"] == f"{new_subpackage}.hinted.weightnorm"
    assert found["spectralnorm"] == f"{new_subpackage}.more.spectralnorm"
    assert found["dense"] == "jaxnn.layers.dense"  # where it is defined, not where imported
    assert "_private" not in found and "helper" not in found
    # The completeness test fails for them until each has a case.
    assert sorted(audit.missing()) == [
        "layers.instancenorm", "layers.spectralnorm", "layers.weightnorm",
    ]  # fmt: skip
    cases = {**audit.CASES, "layers.instancenorm": None, "layers.weightnorm.eval": None}
    assert audit.missing(cases) == ["layers.spectralnorm"]


def test_discovery_of_another_package(new_subpackage):
    extras = importlib.import_module(new_subpackage)
    assert sorted(audit.layer_factories(extras)) == ["instancenorm", "spectralnorm", "weightnorm"]


# ----------------------------------------------------------------------------- --list


def test_cli_gradcheck_list_prints_the_cases_and_checks_nothing(capsys):
    assert cli.main(["gradcheck", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["case", "from"]
    assert [line.split() for line in lines[1:]] == [[n, "jaxnn.audit"] for n in sorted(audit.CASES)]

    gradcheck.register("mine.never_built", lambda key: 1 / 0)  # --list builds no case
    try:
        assert cli.main(["gradcheck", "--list", "--only", "mine."]) == 0
        assert cli.main(["gradcheck", "--list", "--only", "nothing."]) == 2
    finally:
        gradcheck.unregister("mine.never_built")
    captured = capsys.readouterr()
    assert [line.split() for line in captured.out.splitlines()] == [
        ["case", "from"],
        ["mine.never_built", __name__],
    ]
    assert "no registered case starts with 'nothing.'" in captured.err
