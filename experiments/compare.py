"""Compare two ``jaxnn reproduce`` output folders, number by number.

``python -m jaxnn_experiments.compare OLD NEW`` walks every experiment's JSON in both folders
and reports, per file, how many values are equal, which numbers (or structures) differ and
which strings differ. Numbers must be equal exactly (floats bit for bit; NaN equals NaN);
timing fields (keys naming seconds or wall time) differ between runs and are skipped. It exits
0 when every number is equal (strings may differ: they are listed), 1 otherwise.

Use it to show that a change of code moves no result, or that a run on another machine
reproduces this one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

TIMING = ("seconds", "wall", "time_s", "elapsed")  # keys whose values are timings


def compare_values(a: Any, b: Any, path: str = "") -> dict[str, Any]:
    """``{"equal": n, "skipped": n, "numbers": [...], "strings": [...]}`` for two JSON values."""
    out: dict[str, Any] = {"equal": 0, "skipped": 0, "numbers": [], "strings": []}
    _walk(a, b, path, out)
    return out


def _walk(a: Any, b: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if any(t in k.lower() for t in TIMING):
                out["skipped"] += 1
            elif k not in a or k not in b:
                out["numbers"].append(
                    f"{path}/{k}: only in {'the first' if k in a else 'the second'}"
                )
            else:
                _walk(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["numbers"].append(f"{path}: {len(a)} items vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        out["equal"] += 1
    elif a == b and type(a) is type(b):
        out["equal"] += 1
    elif isinstance(a, str) and isinstance(b, str):
        out["strings"].append(f"{path}: {a!r} vs {b!r}")
    else:
        out["numbers"].append(f"{path}: {a!r} vs {b!r}")


def compare_folders(old: Path, new: Path) -> tuple[list[str], int]:
    """The report's lines and the number of numbers (and files) that differ."""
    lines, bad = [], 0
    names = sorted({p.name for p in old.glob("*.json")} | {p.name for p in new.glob("*.json")})
    for name in names:
        if not (old / name).exists() or not (new / name).exists():
            lines.append(f"{name}: only in {old if (old / name).exists() else new}")
            bad += 1
            continue
        out = compare_values(
            json.loads((old / name).read_text()), json.loads((new / name).read_text())
        )
        lines.append(
            f"{name}: {out['equal']} values equal, {len(out['numbers'])} numbers differ, "
            f"{len(out['strings'])} strings differ, {out['skipped']} timing fields skipped"
        )
        lines += [f"    number {d}" for d in out["numbers"][:20]]
        lines += [f"    string {d}" for d in out["strings"]]
        bad += len(out["numbers"])
    if not names:
        lines.append(f"no JSON files in {old} or {new}")
        bad += 1
    lines.append("every number equal" if bad == 0 else f"{bad} numbers or files differ")
    return lines, bad


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(Path(a).is_dir() for a in args):
        print("usage: python -m jaxnn_experiments.compare OLD_DIR NEW_DIR (two reproduce outputs)",
              file=sys.stderr)  # fmt: skip
        return 2
    lines, bad = compare_folders(Path(args[0]), Path(args[1]))
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
