"""The audit and the package's shape: every public component has a gradient case and passes
it; importing jaxnn registers nothing; the import graph of jaxnn has no cycle."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from numerics import RTOL

import jaxnn
from jaxnn import audit, cli, gradcheck
from jaxnn.gradcheck import AUTO, HAND, check_gradients

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
                     "layers.serial", "layers.mlp", "regularization.l1", "regularization.l2",
                     "activations.sigmoid", "losses.squared_error"):  # fmt: skip
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
        report = check_gradients(
            case.f, *case.args, grad_fn=case.grad_fn, argnums=case.argnums, key=jax.random.key(seed)
        )
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
