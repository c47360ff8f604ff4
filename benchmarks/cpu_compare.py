"""Prefill and decode speed of this package against transformers on the same weights (float32, CPU).

Ours: the bundled SmolLM2-135M as ``al.load`` gives it to a user (input checks on, as by default), generating
with ``generate_ids`` (what ``al.generate`` runs). Theirs: transformers' ``LlamaForCausalLM`` built around the
same tensors by ``reference.as_transformers`` (its own code: attention, RoPE, norms, MLP, ``generate``), with
its q/k weights permuted into its own row order once, before timing.

Method: ``--reps`` repetitions; in each, both sides run each phase, ours first in even repetitions and theirs
first in odd ones, so that drift in the machine's speed and any order effect hit both alike. Reported: the
median, min and max of each side's speed, and of the paired ratio ours / theirs (one ratio per repetition;
above 1: this package is faster). Every timed run is checked: decode, the greedy tokens of both sides must be
identical at every one of the ``--decode`` positions; prefill, the logits must agree (max abs difference
1e-3) and so must the greedy token at every position where the top two logits are more than 1e-3 apart. A
mismatch stops the run with an error, before anything is written.

The result replaces this script's section of ``benchmarks/RESULTS.md`` (``results_md.write_section``); every
measured number there follows the book's timing convention (printed right after a stopwatch sign), so a
chapter that shows the file stays comparable under nbval.

    python benchmarks/cpu_compare.py [--reps 7] [--prefill 512] [--decode 64] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file

import annotated_llama as al  # noqa: E402
from annotated_llama.generate import generate_ids  # noqa: E402
from results_md import machine_line, write_section  # noqa: E402

STOPWATCH = "\u23f1"  # the book's tag for a measured number (see nbval_sanitize.cfg)


class Mismatch(RuntimeError):
    pass


def load_transformers(model):
    """transformers on our tensors, q/k permuted once (a parametrization would permute them at every step)."""
    from torch.nn.utils import parametrize

    from annotated_llama.reference import as_transformers

    hf = as_transformers(model)
    for layer in hf.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            if parametrize.is_parametrized(proj, "weight"):
                parametrize.remove_parametrizations(proj, "weight", leave_parametrized=True)
    return hf


@torch.inference_mode()
def prefill_ours(model, tokens):
    return model(tokens)


@torch.inference_mode()
def prefill_theirs(hf, tokens):
    return hf(tokens, use_cache=False).logits


def decode_ours(model, prompt, n):
    return list(generate_ids(model, prompt, n))


@torch.inference_mode()
def decode_theirs(hf, prompt, n):
    # eos_token_id=None: go on past the end-of-sequence token, as generate_ids does without stop ids.
    # (min_new_tokens would instead forbid that token, and the two sides would part there.)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def run_name(rep: int) -> str:
    return "warm-up" if rep < 0 else f"repetition {rep + 1}"


def check_prefill(ours: torch.Tensor, theirs: torch.Tensor, rep: int) -> None:
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-3:
        raise Mismatch(f"{run_name(rep)}, prefill: max abs logit difference {diff:.2e} > 1e-3")
    top2 = theirs[0].topk(2, dim=-1).values  # [seq, 2]
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # positions where float noise cannot flip the greedy token
    a, b = ours[0].argmax(-1), theirs[0].argmax(-1)
    bad = ((a != b) & clear).nonzero().flatten().tolist()
    if bad:
        p = bad[0]
        raise Mismatch(f"{run_name(rep)}, prefill: greedy token differs at position {p} "
                       f"(ours {a[p].item()}, transformers {b[p].item()}) and {len(bad) - 1} more")


def check_decode(ours: list[int], theirs: list[int], n: int, rep: int) -> None:
    if len(ours) != n or len(theirs) != n:
        raise Mismatch(f"{run_name(rep)}, decode: {len(ours)} tokens (ours) and {len(theirs)} (transformers), "
                       f"expected {n}")
    for i, (x, y) in enumerate(zip(ours, theirs)):
        if x != y:
            raise Mismatch(f"{run_name(rep)}, decode: greedy token {i} differs: ours {x}, transformers {y} "
                           f"(tokens before it: {ours[:i]})")


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def summary(values: list[float]) -> str:
    return (f"{STOPWATCH}{statistics.median(values):.1f} "
            f"[{STOPWATCH}{min(values):.1f}–{STOPWATCH}{max(values):.1f}]")


def ratio_summary(values: list[float]) -> str:
    return (f"{STOPWATCH}{statistics.median(values):.2f} "
            f"[{STOPWATCH}{min(values):.2f}–{STOPWATCH}{max(values):.2f}]")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = parser.parse_args()

    machine = machine_line()  # the load average before anything of ours runs
    load_start = os.getloadavg()[0]
    model, tok = al.load("smollm2-135m", device="cpu", dtype="float32")
    assert getattr(model, "check_inputs", True), "ours must keep the input check a user has by default"
    hf = load_transformers(model)
    import transformers

    torch.manual_seed(0)
    long_prompt = torch.randint(0, model.args.vocab_size, (1, a.prefill))
    short_prompt = tok.encode("The capital of France is")
    n = a.decode

    # Warm-up (allocator, kernels), checked like the timed runs.
    check_prefill(prefill_ours(model, long_prompt), prefill_theirs(hf, long_prompt), rep=-1)
    check_decode(decode_ours(model, short_prompt, n), decode_theirs(hf, short_prompt, n), n, rep=-1)

    speed = {(phase, side): [] for phase in ("prefill", "decode") for side in ("ours", "theirs")}
    runs = {
        "prefill": ((prefill_ours, model, long_prompt), (prefill_theirs, hf, long_prompt), a.prefill, check_prefill),
        "decode": ((decode_ours, model, short_prompt, n), (decode_theirs, hf, short_prompt, n), n,
                   lambda x, y, rep: check_decode(x, y, n, rep)),
    }
    for rep in range(a.reps):
        for phase, (ours_call, theirs_call, n_tokens, check) in runs.items():
            order = [("ours", ours_call), ("theirs", theirs_call)]
            if rep % 2:
                order.reverse()  # theirs first in odd repetitions
            out = {}
            for side, (fn, *args) in order:
                seconds, out[side] = timed(fn, *args)
                speed[(phase, side)].append(n_tokens / seconds)
            check(out["ours"], out["theirs"], rep)
        print(f"repetition {rep + 1}/{a.reps} ({'ours' if rep % 2 == 0 else 'transformers'} first): "
              f"prefill {STOPWATCH}{speed[('prefill', 'ours')][-1]:.1f} / "
              f"{STOPWATCH}{speed[('prefill', 'theirs')][-1]:.1f} tok/s, decode "
              f"{STOPWATCH}{speed[('decode', 'ours')][-1]:.1f} / {STOPWATCH}{speed[('decode', 'theirs')][-1]:.1f} "
              "tok/s (ours / transformers)", flush=True)

    load_end = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    busy = ""
    if max(load_start, load_end) > cores:  # more runnable processes than cores: others shared the CPU
        busy = (f" The machine was busy (load average above its {cores} cores): both sides ran slower than on an "
                "idle machine and the spread is wide; re-run `make bench` on an idle machine for figures that "
                "describe the code rather than the other jobs.")
    rows = []
    for phase, label in (("prefill", f"prefill ({a.prefill} random tokens, one pass)"),
                         ("decode", f"decode ({n} greedy tokens after a {len(short_prompt)}-token prompt)")):
        ours, theirs = speed[(phase, "ours")], speed[(phase, "theirs")]
        paired = [x / y for x, y in zip(ours, theirs)]
        rows.append(f"| {label} | {summary(ours)} | {summary(theirs)} | {ratio_summary(paired)} |")
    body = "\n".join([
        "## CPU against transformers eager (benchmarks/cpu_compare.py)",
        "",
        "Written by `benchmarks/cpu_compare.py` (`make bench`); do not edit by hand. The bundled SmolLM2-135M in "
        "float32. Ours: `al.load` as a user gets it (input checks on), decoding with `generate_ids` (what "
        "`al.generate` runs). Transformers: its `LlamaForCausalLM` built around the same tensors by "
        "`reference.as_transformers`: the two sides share every weight tensor except q/k, which transformers "
        "holds permuted into its rotate-half row order (copied once, before timing); the code (attention, RoPE, "
        "norms, MLP, the generate loop and its KV cache) is each side's own.",
        "",
        f"{machine} transformers {transformers.__version__}; load average (1 min) at the end: {load_end:.2f}."
        f"{busy} {a.reps} repetitions, alternating which side runs "
        "first. Speeds in tokens per second: median [min–max] over the repetitions; the ratio is ours / "
        "transformers within each repetition (above 1: this package is faster), median [min–max]. Decode "
        f"timings include the {len(short_prompt)}-token prompt's prefill, on both sides, and neither side stops "
        "at the end-of-sequence token. Checked in every "
        f"timed run: the same greedy token at all {n} decode positions; in prefill, logits within 1e-3 and the "
        "same greedy token wherever the top two logits are more than 1e-3 apart.",
        "",
        "| phase | ours tok/s | transformers tok/s | ratio ours / transformers |",
        "|---|---:|---:|---:|",
        *rows,
    ])
    print()
    print(body)
    if not a.no_write:
        write_section("cpu_compare", body)
        print("\nwritten to benchmarks/RESULTS.md (section cpu_compare)")


if __name__ == "__main__":
    try:
        main()
    except Mismatch as e:
        sys.exit(f"cpu_compare: the two sides disagree, so their speeds are not comparable; stopped.\n  {e}")
