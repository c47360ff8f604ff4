"""Sections of ``benchmarks/RESULTS.md`` written by the scripts that measured them, never by hand.

Each script owns one section, delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``; running it again
replaces that section and leaves the others alone. ``machine_line()`` says where and under what load a
figure was taken, so a reader can judge it.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``body`` (markdown, heading included)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def machine_line() -> str:
    """Date, torch version, device, threads and the 1-minute load average at the time of the run."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        device = f"CPU, {os.cpu_count()} cores, {platform.machine()}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Measured {when} on {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average (1 min) at the start: {load:.2f}.")


def publish(name: str, result: dict, body: str, write: bool = True) -> None:
    """Save ``result`` as ``benchmarks/<name>.json`` (what the chapters read), print the markdown ``body``, and
    write it as the section ``name`` of RESULTS.md unless ``write`` is false."""
    RESULTS.with_name(f"{name}.json").write_text(json.dumps(result, indent=1))
    print(body)
    if write:
        write_section(name, body)


def load_sentence(start, end) -> str:
    """The 1/5/15-minute load averages at the start and at the end of a run, as a sentence."""
    return (f"Load average (1/5/15 min) at the start {start[0]:.2f} / {start[1]:.2f} / {start[2]:.2f}, at the end "
            f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}.")
