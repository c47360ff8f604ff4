#!/usr/bin/env bash
# The one script a session lent a GPU runs first (issue 9): what has never run on a GPU, run, timed, recorded.
#
#   scripts/gpu_check.sh            # on a CUDA machine; writes benchmarks/RESULTS.md
#   scripts/gpu_check.sh --dry-run  # the same steps on the CPU in small sizes; results into a temporary file
#
# Steps, most important first, each with a wall-time cap so that one runaway step cannot eat the session
# (on an H100/H200 the whole script should take under 8 minutes; the GPU caps add up to 8):
#   1. cuda-tests    pytest -m cuda: fast path vs readable model in bf16 (error model, near ties), every
#                    attention call on a fused kernel (math kernel switched off), recompiles per cache length
#                    (and tests/test_quant.py: PyTorch's CUDA int4 kernel against its reference, the bundled
#                    model's answer in int8, int4 and native on the GPU)
#   2. bench-7b      benchmarks/gpu_decode.py on a random Llama-2-7B-shaped model in bf16: decode tok/s against
#                    the measured copy bandwidth (target >= 75%), prefill of 2,048 tokens against the measured
#                    bf16 matmul rate (target >= 50%); the compiled variant after the 128-token prompt only (one
#                    compile), ours eager and transformers compiled left out, for time
#   3. chapter-11, chapter-09   the chapters executed on the GPU into a temporary copy (scripts/run_chapter.py;
#                    stored outputs untouched); chapter 11 compiles the bundled model's step with CUDA graphs, times it
#   4. bench-bundled gpu_decode.py on the bundled model, eager variants only (chapter 11 timed the compiled one)
#   GPU_CHECK_FULL=1 runs every variant at every prompt length in both benchmarks (several more minutes).
# The dry run shrinks every step: the 7B shape to 1 of its 32 layers, a few tokens and repetitions, and the chapters
# run on a small random Llama-2-style checkpoint (tests/checkpoints.py) instead of the bundled model; on an idle
# 2-core CPU it takes about 3 minutes.
# gpu_decode.py writes its own sections of the results file; this script adds the section "gpu_check <device>":
# each step's exit status and wall time, the test summary and the numbers the tests print, and chapter 11's
# measured (⏱) lines. After a GPU run, re-execute chapter 11 (scripts/execute_notebooks.sh) so that its stored
# outputs show the new GPU sections. Exit status: 0 if every step passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DRY_RUN=0
case "${1:-}" in
    --dry-run|--cpu) DRY_RUN=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

OUT="$(mktemp -d /tmp/gpu_check.XXXXXX)"
if [[ $DRY_RUN -eq 1 ]]; then
    DEVICE=cpu
    RESULTS="$OUT/RESULTS.md"  # small sizes on a CPU: nothing for the real results file
    BENCH_7B=(--device cpu --shape llama2-7b --n-layers 1 --prompts 8,32 --prompts-compile 8 --new-tokens 3
              --reps 2 --skip eager,hf,hf-compile)
    BENCH_BUNDLED=(--device cpu --shape smollm2-135m --prompts 8 --new-tokens 2 --reps 2 --skip compile,hf-compile)
    CHAPTER_MODEL="$OUT/checkpoints/llama2-hf"
    CAP_TESTS=60; CAP_7B=180; CAP_CH11=180; CAP_CH09=180; CAP_BUNDLED=180  # generous: a shared CPU
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: no CUDA device visible to $PYTHON; on a CPU run $0 --dry-run" >&2
        exit 2
    fi
    DEVICE=cuda
    RESULTS="$ROOT/benchmarks/RESULTS.md"
    BENCH_7B=(--device cuda --shape llama2-7b --prompts 128,2048 --new-tokens 64 --reps 5)
    BENCH_BUNDLED=(--device cuda --shape smollm2-135m --prompts 128,2048 --new-tokens 64 --reps 5)
    if [[ "${GPU_CHECK_FULL:-0}" != 1 ]]; then
        BENCH_7B+=(--prompts-compile 128 --skip eager,hf-compile)
        BENCH_BUNDLED+=(--skip compile,hf-compile)
    fi
    CHAPTER_MODEL=smollm2-135m
    CAP_TESTS=120; CAP_7B=180; CAP_CH11=90; CAP_CH09=45; CAP_BUNDLED=45
fi
echo "gpu_check: device $DEVICE, logs in $OUT, results into $RESULTS"

SUMMARY=()
FAILED=0
step() {  # step NAME CAP_SECONDS COMMAND...: run with a cap, log to $OUT/NAME.log, show its tail
    local name=$1 cap=$2
    shift 2
    local start end rc
    start=$(date +%s.%N)
    timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    local verdict=passed
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then verdict="timed out (cap ${cap} s)"; elif [[ $rc -ne 0 ]]; then verdict="failed (exit $rc)"; fi
    [[ $verdict == passed ]] || FAILED=1
    SUMMARY+=("| $name | $verdict | $secs |")
    echo "=== $name: $verdict, $secs s"
    tail -n 15 "$OUT/$name.log" | sed 's/^/    /'
}

# a chapter run top to bottom in notebooks/ with MODEL=$CHAPTER_MODEL: CHAPTER=(...) NAME.ipynb --save OUT/NAME.ipynb
CHAPTER=("$PYTHON" scripts/run_chapter.py --model "$CHAPTER_MODEL")

TOTAL_START=$(date +%s)
if [[ $DRY_RUN -eq 1 ]]; then
    step checkpoint 60 "$PYTHON" tests/checkpoints.py "$OUT/checkpoints" --styles llama2-hf
fi
step cuda-tests "$CAP_TESTS" "$PYTHON" -m pytest -m cuda tests -q -rA -p no:cacheprovider
step bench-7b "$CAP_7B" "$PYTHON" benchmarks/gpu_decode.py "${BENCH_7B[@]}" --results "$RESULTS"
step chapter-11 "$CAP_CH11" "${CHAPTER[@]}" notebooks/11_fast_on_gpu.ipynb --save "$OUT/11_fast_on_gpu.ipynb"
step chapter-09 "$CAP_CH09" "${CHAPTER[@]}" notebooks/09_model_and_generation.ipynb \
    --save "$OUT/09_model_and_generation.ipynb"
step bench-bundled "$CAP_BUNDLED" "$PYTHON" benchmarks/gpu_decode.py "${BENCH_BUNDLED[@]}" --results "$RESULTS"
TOTAL=$(( $(date +%s) - TOTAL_START ))

# The section of this script: statuses, times, what the tests printed, chapter 11's measured lines.
GPU_CHECK_OUT="$OUT" GPU_CHECK_TOTAL="$TOTAL" GPU_CHECK_RESULTS="$RESULTS" GPU_CHECK_DRY="$DRY_RUN" \
"$PYTHON" - "${SUMMARY[@]}" <<'EOF'
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from results_md import machine_line, write_section

import torch

out, results = Path(os.environ["GPU_CHECK_OUT"]), Path(os.environ["GPU_CHECK_RESULTS"])
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
dry = os.environ["GPU_CHECK_DRY"] == "1"
lines = [f"## scripts/gpu_check.sh on {device}" + (" (dry run: small sizes)" if dry else ""), "",
         machine_line(), "", f"Total wall time: {os.environ['GPU_CHECK_TOTAL']} s.", "",
         "| step | result | wall s |", "|---|---|---:|", *sys.argv[1:], ""]
log = out / "cuda-tests.log"
if log.is_file():
    text = log.read_text()
    summary = [l for l in text.splitlines() if re.search(r"\b(passed|failed|skipped|errors?)\b.* in [\d.]+s", l)]
    printed = [l.strip() for l in text.splitlines() if re.search(r"\be = [\d.]+u\b", l)]
    lines += ["CUDA tests: " + (summary[-1].strip("= ") if summary else "no summary line (see the log)"), ""]
    if printed:
        lines += ["What the tests measured (error model, in units of the dtype's roundoff u):", "",
                  *[f"- {l}" for l in printed], ""]
nb = out / "11_fast_on_gpu.ipynb"
if nb.is_file():
    cells = json.loads(nb.read_text())["cells"]
    timed = [l for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
             for l in "".join(o.get("text", "")).splitlines() if "\u23f1" in l]
    if timed:
        lines += ["Chapter 11's timing cell, executed here:", "", "```", *timed, "```"]
name = f"gpu_check {device}" + (" dry run" if dry else "")
write_section(name, "\n".join(lines), path=results)
print(f"section '{name}' written to {results}")
EOF

echo
echo "gpu_check: $([[ $FAILED -eq 0 ]] && echo 'every step passed' || echo 'some step FAILED'), ${TOTAL} s in all"
printf '%s\n' "${SUMMARY[@]}"
if [[ $DRY_RUN -eq 1 ]]; then
    echo "--- $RESULTS (temporary) ---"
    cat "$RESULTS"
fi
exit $FAILED
