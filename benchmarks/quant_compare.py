"""Fewer bits, measured (chapter 12): decode and prefill speed and resident memory of the bundled model as
float32, int8 and int4 in this package, transformers eager float32, and llama.cpp on the very same Q4_1 GGUF.

Each variant lives in its own fresh process (so its resident memory, RSS, is its own), loads once, then
waits for orders on stdin; the orchestrator runs one repetition of each variant in turn, rotating the order
every repetition, so drift in the machine's speed hits every variant alike. One variant runs at a time, with
the same thread count (``--threads``) for all. Reported: median [min-max] of prefill tok/s (one pass over
``--prefill`` tokens) and decode tok/s (``--decode`` greedy tokens after an 8-token prompt), the paired
decode ratio against our float32 within each repetition, RSS after load, one warm-up and ``malloc_trim``
(minus the process's RSS before loading: interpreter and libraries), the weight bytes a decode step reads, and the
**bytes-per-token roof**: measured copy bandwidth / those bytes, the speed if reading the weights were all
that a token cost. The load average is read at the start and at the end.

``native`` (``load(quantize="native")``) is not a separate row: it builds the very same modules as ``int4``
(the same bytes, bit for bit, tested), so it runs the same kernels at the same speed.

llama.cpp runs through ``llama-cpp-python`` from PyPI, built into a benchmark-only venv
(``benchmarks/.venv-llamacpp``, see ``make bench-quant``); it is not a dependency of the book.

    python benchmarks/quant_compare.py [--reps 5] [--prefill 64] [--decode 32] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMACPP_PY = HERE / ".venv-llamacpp" / "bin" / "python"
STOPWATCH = "\u23f1"
PROMPT = "The capital of France is"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- workers (one process each) --------------------------------------------------------------------------
def torch_worker(variant: str, ids: list[int], prompt: list[int], threads: int):
    import torch

    torch.set_num_threads(threads)
    import annotated_llama as al
    from annotated_llama import quant

    base = rss_mb()
    harness, rest = variant.split("-", 1)  # "ours" (the readable model), "fast" (FastLlama), "transformers"
    scheme, _, levels = rest.partition("-")  # "float32" | "int8" | "int4", and "1level" for one-level int8
    model, _ = al.load("smollm2-135m", device="cpu", dtype="float32", quantize=None if levels else
                       {"float32": None, "int8": "int8", "int4": "int4"}[scheme])
    if levels:  # int8 with one-level activations (Int8Linear's activation_levels=1)
        quant.quantize_model(model, scheme, activation_levels=1)
    weight = quant.weight_bytes(model)
    read = bytes_read_per_token(model)
    if variant.startswith("transformers"):
        sys.path.insert(0, str(HERE))
        from cpu_compare import load_transformers

        hf = load_transformers(model)
        prefill = lambda: hf(torch.tensor([ids]), use_cache=False).logits  # noqa: E731

        def decode(n):
            out = hf(torch.tensor([prompt]), use_cache=True)
            past, toks = out.past_key_values, []
            for _ in range(n):
                tok = out.logits[0, -1].argmax()
                toks.append(int(tok))
                out = hf(tok.view(1, 1), past_key_values=past, use_cache=True)
                past = out.past_key_values
            return toks
    elif harness == "fast":  # chapter 11's path: static cache, stacked projections (quantized ones too)
        from annotated_llama.fast import FastLlama

        fast = FastLlama(model, max_seq_len=max(len(ids), len(prompt) + 64))
        prefill = lambda: fast.prefill(torch.tensor([ids]))  # noqa: E731

        def decode(n):
            return fast.generate(prompt, n + 1)[:n]  # n decode steps after the prompt, as below (the last
            # step's token is not kept there either)
    else:
        prefill = lambda: model(torch.tensor([ids]), last_only=True)  # noqa: E731

        def decode(n):
            logits = model(torch.tensor([prompt]), 0, last_only=True)
            pos, toks = len(prompt), []
            for _ in range(n):
                tok = logits[0, -1].argmax()
                toks.append(int(tok))
                logits = model(tok.view(1, 1), pos, last_only=True)
                pos += 1
            return toks

    with torch.inference_mode():
        serve(prefill, decode, base, weight, read)


def bytes_read_per_token(model) -> int:
    """The weight bytes one decode step reads: every matrix once (its kernel's copy where it has one), norms,
    and one embedding row (negligible)."""
    from torch import nn

    from annotated_llama import quant

    total = 0
    for m in model.modules():
        if isinstance(m, quant.Int8Linear):
            total += m.kernel_nbytes() or (m.q.numel() + m.scale.numel() * 4)
        elif isinstance(m, quant.Int4Linear):
            total += m.qpacked.numel() + m.scale.numel() * 4 * 2  # nibbles + (scale, zero') pairs
        elif isinstance(m, quant.Float16Linear):
            total += m.weight16.numel() * 2
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif type(m).__name__ == "RMSNorm":
            total += m.weight.numel() * m.weight.element_size()
    return total


def llamacpp_worker(ids: list[int], prompt: list[int], threads: int, gguf: str):
    import numpy as np
    from llama_cpp import Llama

    base = rss_mb()
    llm = Llama(model_path=gguf, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False, use_mmap=False)  # no mmap: the weights are in RSS, as ours are

    def prefill():
        llm.reset()
        llm.eval(ids)

    def decode(n):
        llm.reset()
        llm.eval(prompt)
        toks = []
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            toks.append(tok)
            llm.eval([tok])
        return toks

    serve(prefill, decode, base, None, None)


def serve(prefill, decode, base, weight, read):
    decode(2)  # warm-up: kernels' packed copies, caches, first-call costs
    prefill()
    try:  # hand memory freed while loading (the float32 matrices quantized away) back to the OS, so RSS
        import ctypes  # counts what the variant holds, not what its loading once held

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    print("READY " + json.dumps({"rss_mb": rss_mb(), "rss_base_mb": base, "weight_bytes": weight,
                                 "bytes_per_token": read}), flush=True)
    for line in sys.stdin:
        order, n = line.split()
        t0 = time.perf_counter()
        toks = prefill() if order == "prefill" else decode(int(n))
        dt = time.perf_counter() - t0
        print(json.dumps({"s": dt, "tokens": toks if order == "decode" else None}), flush=True)


# --- the orchestrator ------------------------------------------------------------------------------------
def copy_bandwidth_gbps() -> float:
    """Read+write bytes per second of a 256 MB float32 copy (median of 7)."""
    import torch

    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ids, prompt = json.loads(args.ids)
        if args.worker == "llamacpp-q4_1":
            llamacpp_worker(ids, prompt, args.threads, args.gguf)
        else:
            torch_worker(args.worker, ids, prompt, args.threads)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    import annotated_llama as al
    from annotated_llama import assets

    sys.path.insert(0, str(HERE))
    from results_md import machine_line, publish

    load_start = os.getloadavg()
    line = machine_line()
    gguf = str(assets.asset_path(assets.SMOLLM2_GGUF))
    _, tok = al.load("smollm2-135m", device="cpu")
    text = (HERE.parent / "book" / "intro.md").read_text()
    ids = tok.encode(text)[: args.prefill]
    prompt = tok.encode(PROMPT)[:8]
    from gguf import GGUFReader

    gguf_bytes = sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors)
    bandwidth = copy_bandwidth_gbps()

    variants = ["ours-float32", "ours-int8", "ours-int8-1level", "ours-int4", "fast-float32", "fast-int8",
                "fast-int8-1level", "fast-int4", "transformers-float32"]
    if LLAMACPP_PY.is_file():
        variants.append("llamacpp-q4_1")
    else:
        print(f"llama.cpp skipped: {LLAMACPP_PY} not found (make bench-quant builds it)", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    procs, info = {}, {}
    for v in variants:  # start and load one at a time (loads are not timed)
        py = str(LLAMACPP_PY) if v.startswith("llamacpp") else sys.executable
        procs[v] = subprocess.Popen(
            [py, __file__, "--worker", v, "--ids", json.dumps([ids, prompt]), "--threads", str(args.threads),
             "--gguf", gguf], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = procs[v].stdout.readline()
        if not ready.startswith("READY "):
            raise RuntimeError(f"{v} did not start: {ready!r}")
        info[v] = json.loads(ready[6:])
        print(f"{v}: loaded, RSS {info[v]['rss_mb']:.0f} MB", file=sys.stderr)
    info["llamacpp-q4_1"] = {**info.get("llamacpp-q4_1", {}), "weight_bytes": gguf_bytes, "bytes_per_token": gguf_bytes}

    def ask(v, order, n=0):
        procs[v].stdin.write(f"{order} {n}\n")
        procs[v].stdin.flush()
        return json.loads(procs[v].stdout.readline())

    times = {v: {"prefill": [], "decode": []} for v in variants}
    tokens = {}
    for r in range(args.reps):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate
        for v in order:
            times[v]["prefill"].append(ask(v, "prefill")["s"])
            out = ask(v, "decode", args.decode)
            times[v]["decode"].append(out["s"])
            tokens[v] = out["tokens"]
        print(f"repetition {r + 1}/{args.reps} done", file=sys.stderr)
    for p in procs.values():
        p.stdin.close()
        p.wait(timeout=60)
    load_end = os.getloadavg()

    result = {
        "machine": line, "load_start": list(load_start), "load_end": list(load_end), "threads": args.threads,
        "reps": args.reps, "prefill_tokens": len(ids), "decode_tokens": args.decode, "prompt_tokens": len(prompt),
        "copy_bandwidth_GBps": bandwidth, "variants": {},
    }
    f32, hf = times["ours-float32"]["decode"], times["transformers-float32"]["decode"]
    for v in variants:
        bpt = info[v]["bytes_per_token"]
        result["variants"][v] = {
            "prefill_tok_s": summary([len(ids) / s for s in times[v]["prefill"]]),
            "decode_tok_s": summary([args.decode / s for s in times[v]["decode"]]),
            "decode_vs_ours_float32": summary([a / b for a, b in zip(f32, times[v]["decode"])]),
            "decode_vs_transformers": summary([a / b for a, b in zip(hf, times[v]["decode"])]),
            "rss_mb": info[v]["rss_mb"], "rss_base_mb": info[v]["rss_base_mb"],
            "weight_bytes": info[v]["weight_bytes"], "bytes_per_token": bpt,
            "roof_tok_s": bandwidth * 1e9 / bpt, "greedy_tokens": tokens[v],
        }
    publish("quant_compare", result, report(result), write=not args.no_write)
    return 0


def report(r) -> str:
    from results_md import load_sentence  # benchmarks/ is on sys.path (main puts it there)

    def fmt(s, d=1):
        return f"{STOPWATCH} {s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]"

    rows = []
    for v, x in r["variants"].items():
        wb = f"{x['weight_bytes'] / 1e6:.0f}" if x["weight_bytes"] else "n/a"
        rows.append(f"| {v} | {fmt(x['prefill_tok_s'], 0)} | {fmt(x['decode_tok_s'])} | "
                    f"{fmt(x['decode_vs_ours_float32'], 2)} | {fmt(x['decode_vs_transformers'], 2)} | {STOPWATCH} {x['rss_mb'] - x['rss_base_mb']:.0f} | "
                    f"{wb} | {x['bytes_per_token'] / 1e6:.0f} | {STOPWATCH} {x['roof_tok_s']:.0f} |")
    return "\n".join([
        "## Fewer bits: float32, int8, int4, transformers and llama.cpp (`benchmarks/quant_compare.py`)",
        "",
        r["machine"],
        load_sentence(r["load_start"], r["load_end"]) + " The cores are shared with other jobs: times are "
        f"noisy, compare the paired ratios. {r['threads']} threads for every variant; {r['reps']} repetitions, order rotated; "
        f"prefill {r['prefill_tokens']} tokens, decode {r['decode_tokens']} greedy tokens after a "
        f"{r['prompt_tokens']}-token prompt. Copy bandwidth {STOPWATCH} {r['copy_bandwidth_GBps']:.1f} GB/s "
        "(read + write, 256 MB float32 copy).",
        "",
        "| variant | prefill tok/s | decode tok/s | decode ÷ ours-float32 | decode ÷ transformers | RSS MB (fresh process, after load, "
        "minus its pre-load RSS) | weight MB (`weight_bytes`; llama.cpp: the GGUF's tensors) | MB read per "
        "token | roof tok/s (bandwidth ÷ bytes per token) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Medians [min-max] over the repetitions; the ratios are paired within each repetition. `ours-*`: the "
        "readable model; `fast-*`: FastLlama (chapter 11) on it, eager, with stacked projections; `int8`: "
        "two-level activations (the default), `int8-1level`: one-level (see `quant.Int8Linear`). `native` is "
        "not a row: it builds the same modules, bit for bit, as `ours-int4`.",
    ])


if __name__ == "__main__":
    sys.exit(main())
