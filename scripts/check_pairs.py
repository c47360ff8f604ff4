#!/usr/bin/env python
"""Check that every chapter's .py and .ipynb agree and that the .ipynb is executed.

    python scripts/check_pairs.py                          # every notebooks/NN_*.{py,ipynb}
    python scripts/check_pairs.py notebooks/05_rope.py ... # some chapters

For each chapter ``notebooks/NN_topic``:
- both ``NN_topic.py`` (jupytext percent) and ``NN_topic.ipynb`` exist;
- reading both with jupytext gives the same list of (cell_type, source): the .ipynb holds the
  cells that are in the .py, whatever the files' timestamps say;
- the .ipynb is executed: every code cell has an execution_count, and a notebook with code cells
  has outputs. (nbval reports "passed" for cells that were never executed: strict output checks
  mean nothing on an unexecuted notebook.)

Prints "N pairs in sync" and exits 0, or names each problem and exits 1.
Fix a stale or unexecuted chapter with ``scripts/execute_notebooks.sh notebooks/NN_topic.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTER = re.compile(r"^\d\d_.+$")


def cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, source) of every cell, as jupytext reads the file."""
    nb = jupytext.read(path)
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def first_difference(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return (f"cell {i + 1} differs: .py has {x[0]} {x[1][:60]!r}..., "
                    f".ipynb has {y[0]} {y[1][:60]!r}...")
    return f".py has {len(a)} cells, .ipynb has {len(b)}"


def check(stem: Path) -> list[str]:
    py, ipynb = stem.with_suffix(".py"), stem.with_suffix(".ipynb")
    rel = stem.relative_to(ROOT) if stem.is_relative_to(ROOT) else stem
    if not py.exists() and not ipynb.exists():
        return [f"{rel}: neither {py.name} nor {ipynb.name} exists"]
    for path, pair in ((py, ipynb), (ipynb, py)):
        if not path.exists():
            return [f"{rel.with_suffix(path.suffix)} is missing (its pair {pair.name} exists)"]
    problems = []
    py_cells, nb_cells = cells(py), cells(ipynb)
    if py_cells != nb_cells:
        problems.append(f"{rel.with_suffix('.ipynb')} is out of sync with {py.name}: "
                        + first_difference(py_cells, nb_cells))
    nb = jupytext.read(ipynb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unexecuted = [i for i, c in enumerate(nb.cells, 1)
                  if c.cell_type == "code" and c.get("execution_count") is None]
    if unexecuted:
        problems.append(f"{rel.with_suffix('.ipynb')}: {len(unexecuted)} code cell(s) never executed "
                        f"(cells {', '.join(map(str, unexecuted[:10]))})")
    if code and not any(c.get("outputs") for c in code):
        problems.append(f"{rel.with_suffix('.ipynb')}: no code cell has outputs")
    if "kernelspec" not in nb.metadata:
        problems.append(f"{rel.with_suffix('.ipynb')}: no kernelspec in the notebook metadata "
                        f"(run: jupytext --set-kernel python3 {rel.with_suffix('.py')})")
    return problems


def stems_from_args(args: list[str]) -> list[Path]:
    if not args:
        found = {p.with_suffix("") for p in NOTEBOOKS.glob("[0-9][0-9]_*")
                 if p.suffix in (".py", ".ipynb")}
        return sorted(found)
    stems = []
    for arg in args:
        path = Path(arg).resolve()
        stems.append(path.with_suffix("") if path.suffix in (".py", ".ipynb") else path)
    return list(dict.fromkeys(stems))


def main(argv: list[str]) -> int:
    stems = stems_from_args(argv)
    if not stems:
        print(f"no chapters found in {NOTEBOOKS}", file=sys.stderr)
        return 1
    problems = [p for stem in stems for p in check(stem)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(stems)} pair(s); fix with "
              "scripts/execute_notebooks.sh <chapter.py>", file=sys.stderr)
        return 1
    print(f"{len(stems)} pairs in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
