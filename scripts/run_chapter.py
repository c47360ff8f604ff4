#!/usr/bin/env python
"""Execute a chapter with another model: the one-line swap a reader makes, done by a script.

Every chapter has a cell with ``MODEL = "smollm2-135m"`` and ``DTYPE = None``. This replaces those two values,
runs the chapter top to bottom in a fresh kernel (working directory notebooks/, as a reader's), and fails on
the first cell that raises. Outputs are not compared (a random checkpoint says random things); the stored
notebook is never modified.

    python scripts/run_chapter.py notebooks/05_rope.ipynb --model /path/to/ckpt --dtype bfloat16
    python scripts/run_chapter.py notebooks/05_rope.ipynb --model /path/to/ckpt --memory   # peak RSS / weights

``--memory`` adds two cells: one before the model is loaded that records the kernel's resident memory, and one at
the end that prints the peak resident memory above it, divided by the bytes of the model's weights: the CPU
stand-in for "does this chapter fit on a GPU that holds the weights once".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_LINE = re.compile(r'^MODEL = "smollm2-135m"', re.M)
DTYPE_LINE = re.compile(r"^DTYPE = None", re.M)

_BEFORE = """import psutil as _psutil
_rss_before_load = _psutil.Process().memory_info().rss"""
_AFTER = """import json as _json, resource as _resource
try:
    _weights = {id(p): p for p in model.parameters()}  # a tied matrix counts once
    _weight_bytes = sum(p.numel() * p.element_size() for p in _weights.values())
except NameError:  # a chapter that lets its model go before its end (chapter 12): the checkpoint's size,
    import pathlib as _pathlib, torch as _torch, annotated_llama as _al  # from a Hugging Face config.json
    _args = _al.ModelArgs.from_hf_config(_json.loads((_pathlib.Path(MODEL) / "config.json").read_text()))
    _dtype = getattr(_torch, DTYPE) if isinstance(DTYPE, str) else (DTYPE or _torch.float32)
    _weight_bytes = _al.count_parameters(_args) * _torch.finfo(_dtype).bits // 8
_peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
print("MEMORY " + _json.dumps({"weights": _weight_bytes, "before_load": _rss_before_load, "peak": _peak}))"""


def swapped_notebook(path: Path, model: str, dtype: str | None, memory: bool = False):
    """The chapter with MODEL (and DTYPE) replaced; raises if the chapter has no such cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and MODEL_LINE.search(c.source)]
    if len(cells) != 1:
        raise SystemExit(f"{path}: expected one cell with a line 'MODEL = \"smollm2-135m\"', found {len(cells)}")
    cell = nb.cells[cells[0]]
    cell.source = MODEL_LINE.sub(f"MODEL = {json.dumps(str(model))}", cell.source)
    if dtype is not None:
        if not DTYPE_LINE.search(cell.source):
            raise SystemExit(f"{path}: the MODEL cell has no line 'DTYPE = None' to set the dtype with")
        cell.source = DTYPE_LINE.sub(f"DTYPE = {json.dumps(dtype)}", cell.source)
    if memory:
        nb.cells.insert(cells[0], nbformat.v4.new_code_cell(_BEFORE))
        nb.cells.append(nbformat.v4.new_code_cell(_AFTER))
    return nb


def execute_chapter(path: Path, model: str, dtype: str | None = None, memory: bool = False,
                    timeout: int = 600) -> tuple[object, dict | None]:
    """Run the swapped chapter; returns (executed notebook, memory figures or None)."""
    import os

    from nbclient import NotebookClient

    nb = swapped_notebook(Path(path), model, dtype, memory)
    os.environ.pop("MPLBACKEND", None)  # the inline backend, as in a reader's notebook
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).resolve().parent)}}).execute()
    figures = None
    if memory:
        for out in nb.cells[-1].get("outputs", []):
            text = out.get("text", "")
            if text.startswith("MEMORY "):
                figures = json.loads(text[len("MEMORY "):])
    return nb, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter", type=Path)
    parser.add_argument("--model", required=True, help="what MODEL becomes: a path, a bundled name or a hub id")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--memory", action="store_true", help="report peak memory against the weights' bytes")
    parser.add_argument("--save", type=Path, help="write the executed notebook here (for a look at its outputs)")
    a = parser.parse_args()
    from nbclient.exceptions import CellExecutionError

    try:
        nb, figures = execute_chapter(a.chapter, a.model, a.dtype, a.memory)
    except CellExecutionError as e:
        sys.exit(f"{a.chapter} failed with MODEL={a.model} DTYPE={a.dtype}:\n{e}")
    if a.save:
        import nbformat

        nbformat.write(nb, a.save)
    if figures:
        ratio = (figures["peak"] - figures["before_load"]) / figures["weights"]
        print(json.dumps(figures | {"peak_over_weights": round(ratio, 3)}))
    print(f"{a.chapter}: every cell ran with MODEL={a.model} DTYPE={a.dtype}")


if __name__ == "__main__":
    main()
