"""Run every Python example of README.md and docs/*.md, each alone, as a user would.

Every fenced block marked ``python`` is a complete program: it runs in a fresh interpreter,
in an empty temporary folder, with the repository on ``PYTHONPATH`` and nothing else
prepared. Blocks that are not meant to run (output, listings) are fenced as ``text`` or
``console``. Shell blocks (``bash``, ``console``, ``sh``) are collected too, so that a test can
check the ``jaxnn`` commands they show (``tests/test_docs.py``).

Usage::

    python tests/doc_examples.py [FILE ...]     # default: README.md and docs/*.md

prints ``file:line ok (seconds)`` per block, and for each failure its exit status and the end
of its output; exits 1 if any block failed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ("python", "py", "python3")
SHELL = ("bash", "console", "sh", "shell")
TIMEOUT = 300  # seconds a block may run: far above what any example needs alone
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


class Block(NamedTuple):
    """A fenced code block: its file, the line of its opening fence, language and text."""

    path: Path
    line: int
    lang: str
    code: str

    @property
    def where(self) -> str:
        """``file:line``, the file relative to the repository where it lies inside it."""
        try:
            name = self.path.resolve().relative_to(ROOT)
        except ValueError:
            name = self.path
        return f"{name}:{self.line}"


class Outcome(NamedTuple):
    """What running a block gave: its exit status, its output, and how long it took."""

    block: Block
    returncode: int
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def doc_files() -> list[Path]:
    """README.md and every ``docs/*.md``, in that order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order (indented fences included)."""
    found: list[Block] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append(Block(Path(path), i + 1, opening["lang"].lower(), "\n".join(body) + "\n"))
        i = j + 1
    return found


def python_blocks(paths: Iterable[Path]) -> list[Block]:
    """The ``python`` blocks of the files: the examples that must run as written."""
    return [b for p in paths for b in blocks(p) if b.lang in PYTHON]


def shell_blocks(paths: Iterable[Path]) -> list[Block]:
    """The shell blocks of the files: the commands the documents show."""
    return [b for p in paths for b in blocks(p) if b.lang in SHELL]


def commands(block: Block) -> list[list[str]]:
    """The commands of a shell block as words: continuation lines joined, comments, prompts
    and leading ``VAR=value`` assignments dropped, ``a && b``, ``a; b``, ``a & b`` split."""
    text = re.sub(r"\\\n", " ", block.code)
    found = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"&&|;|(?<![&>])&(?!&)|\|", line):
            words = part.split()
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
                words.pop(0)
            if words and words[0] == "export":
                continue
            if words:
                found.append(words)
    return found


def jaxnn_commands(paths: Iterable[Path]) -> list[tuple[Block, list[str]]]:
    """Every ``jaxnn ...`` command the shell blocks show (``.venv/bin/jaxnn`` included), as
    ``(block, arguments after "jaxnn")``."""
    return [
        (block, words[1:])
        for block in shell_blocks(paths)
        for words in commands(block)
        if Path(words[0]).name == "jaxnn"
    ]


def run(block: Block, *, timeout: float = TIMEOUT) -> Outcome:
    """Run a Python block alone: a fresh interpreter, an empty temporary folder as the
    working directory, the repository first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory(prefix="jaxnn-doc-") as folder:
        script = Path(folder) / "example.py"
        script.write_text(block.code, encoding="utf-8")
        begin = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, str(script)],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            returncode = -1
            output = f"timed out after {timeout:g} s\n" + _text(e.stdout) + _text(e.stderr)
        return Outcome(block, returncode, output, time.perf_counter() - begin)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def failure_report(outcome: Outcome, tail: int = 25) -> str:
    """``file:line FAILED (exit N)`` and the last lines of the block's output."""
    lines = outcome.output.rstrip().splitlines()[-tail:]
    body = "\n".join("    " + line for line in lines)
    return f"{outcome.block.where} FAILED (exit {outcome.returncode})\n{body}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Python blocks of the given files (default: README.md and docs/*.md)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    paths = [Path(a) for a in argv] or doc_files()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"doc_examples: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    failures = []
    todo = python_blocks(paths)
    for block in todo:
        outcome = run(block)
        if outcome.ok:
            print(f"{block.where} ok ({outcome.seconds:.1f} s)", flush=True)
        else:
            failures.append(outcome)
            print(failure_report(outcome), flush=True)
    print(f"{len(todo) - len(failures)} of {len(todo)} Python blocks ran; {len(failures)} failed")
    if failures:
        print("failed: " + ", ".join(f.block.where for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
