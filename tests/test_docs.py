"""README.md and docs/*.md: every Python example runs as written, alone; every command exists.

Each ``python`` block runs in a fresh interpreter in an empty folder (``doc_examples.run``),
one test per block, named by its ``file:line``. The shell blocks' ``jaxnn`` commands are
checked against the command's own parser: the subcommand exists and takes every option shown;
``python benchmarks/X.py`` and ``python -m jaxnn_experiments.X`` name files that are there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import tomllib

import doc_examples as docs
import pytest

FILES = docs.doc_files()
PYTHON_BLOCKS = docs.python_blocks(FILES)
JAXNN_COMMANDS = docs.jaxnn_commands(FILES)


def test_every_document_has_its_examples():
    assert FILES[0].name == "README.md" and len(FILES) > 1, "README.md and docs/*.md"
    assert PYTHON_BLOCKS, "no python blocks found: the extraction is broken"
    assert docs.python_blocks([FILES[0]]), "README.md shows no Python example"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_block_runs_alone(block):
    outcome = docs.run(block)
    assert outcome.ok, docs.failure_report(outcome, tail=40)


def _console_main():
    """The function the ``jaxnn`` console script runs (pyproject.toml's [project.scripts])."""
    scripts = tomllib.loads((docs.ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["jaxnn"].split(":")
    return getattr(importlib.import_module(module), function)


def _help(main, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0, f"jaxnn {' '.join(argv)} --help exited {exit_.value.code}"
    return out.getvalue()


@pytest.mark.parametrize(
    ("block", "argv"), JAXNN_COMMANDS, ids=[f"{b.where}:{' '.join(a)}" for b, a in JAXNN_COMMANDS]
)
def test_jaxnn_command_exists(block, argv):
    main = _console_main()
    top = _help(main, [])
    sub = [a for a in argv if not a.startswith("-")][:1]
    if not sub:  # e.g. `jaxnn --version`
        options = {a.split("=")[0] for a in argv}
        assert all(o in top for o in options), f"{block.where}: jaxnn {' '.join(argv)}: {top}"
        return
    assert re.search(rf"\b{re.escape(sub[0])}\b", top), (
        f"{block.where}: `jaxnn {sub[0]}` is not a subcommand of jaxnn:\n{top}"
    )
    text = _help(main, sub)
    for option in (a.strip("[]").split("=")[0] for a in argv if a.strip("[").startswith("--")):
        assert option in text, f"{block.where}: `jaxnn {sub[0]}` has no option {option}:\n{text}"


def _scripts_named():
    found = []
    for block in docs.shell_blocks(FILES):
        for words in docs.commands(block):
            if not words or not words[0].endswith(("python", "python3")) or len(words) < 2:
                continue
            if words[1] == "-m" and len(words) > 2:
                found.append((block, words[2], "module"))
            elif words[1].endswith(".py"):
                found.append((block, words[1], "file"))
    return found


@pytest.mark.parametrize(
    ("block", "target", "kind"), _scripts_named(), ids=lambda v: getattr(v, "where", str(v))
)
def test_python_commands_name_what_is_there(block, target, kind):
    if kind == "file":
        if "/" not in target:  # a user's own script (train.py), not the repository's
            return
        assert (docs.ROOT / target).is_file(), f"{block.where}: no file {target}"
        return
    top, *rest = target.split(".")
    if top in ("pytest", "pip", "venv", "jaxnn"):
        if top == "jaxnn":
            importlib.import_module(target)
        return
    folder = {"jaxnn_experiments": "experiments"}.get(top, top)
    path = docs.ROOT / folder / "/".join(rest)
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"{block.where}: python -m {target}: nothing at {path}"
    )


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_documents_resolve():
    broken = []
    for path in FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(encoding="utf-8"), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
