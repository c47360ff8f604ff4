#!/usr/bin/env bash
# Execute chapters and store them with their outputs.
#
#   scripts/execute_notebooks.sh                      # every notebooks/NN_*.py
#   scripts/execute_notebooks.sh notebooks/05_rope.py # some chapters (.py, .ipynb or no suffix)
#
# For each chapter:
#   1. jupytext --to ipynb --update NN_x.py   the .py is the source of truth; --update copies its
#                                            cells into the .ipynb and keeps existing outputs,
#                                            cell ids and notebook metadata
#   2. nbconvert --execute --inplace NN_x.ipynb   top to bottom in a fresh python3 kernel, from
#                                            notebooks/ as working directory, 600 s per cell
# then prints the chapter's wall time, and finally runs scripts/check_pairs.py on the chapters.
#
# Kernel: the chapters name the kernel "python3". It must start the same Python as the one running
# this script ($PYTHON, default .venv/bin/python), or the notebooks would run against another
# environment. The check below installs the kernel into the environment if it is missing
# (python -m ipykernel install --sys-prefix --name python3) and refuses to run if a "python3"
# kernel exists but points at another interpreter.
set -euo pipefail
# Figures must be stored as inline outputs: ipykernel selects its inline backend only when
# MPLBACKEND is unset; with MPLBACKEND=Agg, plt.show() displays nothing and nbval then fails on
# the missing figure outputs.
unset MPLBACKEND

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    echo "error: no Python at $PYTHON (set PYTHON=/path/to/python)" >&2
    exit 1
fi

"$PYTHON" - <<'EOF'
import os
import subprocess
import sys

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

try:
    spec = KernelSpecManager().get_kernel_spec("python3")
except NoSuchKernel:
    print("installing a python3 kernel for", sys.executable)
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix",
                    "--name", "python3"], check=True)
    spec = KernelSpecManager().get_kernel_spec("python3")
exe = spec.argv[0]
# jupyter_client runs a bare "python"/"python3"/"python3.X" as the Python that starts the kernel.
bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
if exe not in bare and os.path.realpath(exe) != os.path.realpath(sys.executable):
    sys.exit(f"error: kernel python3 ({spec.resource_dir}) runs {exe}, not {sys.executable}.\n"
             f"Fix: {sys.executable} -m ipykernel install --sys-prefix --name python3, "
             "and remove the other python3 kernel.")
EOF

if [[ $# -eq 0 ]]; then
    set -- notebooks/[0-9][0-9]_*.py
fi

chapters=()
for arg in "$@"; do
    py="${arg%.ipynb}"
    py="${py%.py}.py"
    if [[ ! -f "$py" ]]; then
        echo "error: $py not found (given: $arg)" >&2
        exit 1
    fi
    chapters+=("$py")
done

total_start=$(date +%s.%N)
for py in "${chapters[@]}"; do
    ipynb="${py%.py}.ipynb"
    start=$(date +%s.%N)
    "$PYTHON" -m jupytext --quiet --to ipynb --update "$py"
    "$PYTHON" -m nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.kernel_name=python3 \
        --ExecutePreprocessor.timeout=600 \
        --ExecutePreprocessor.record_timing=False \
        --log-level=WARN \
        "$ipynb"
    end=$(date +%s.%N)
    awk -v f="$ipynb" -v a="$start" -v b="$end" 'BEGIN { printf "%-45s %7.1f s\n", f, b - a }'
done
total_end=$(date +%s.%N)
awk -v f="total (${#chapters[@]} chapters)" -v a="$total_start" -v b="$total_end" \
    'BEGIN { printf "%-45s %7.1f s\n", f, b - a }'

"$PYTHON" scripts/check_pairs.py "${chapters[@]}"
