"""Fewer bits at three widths (chapter 12): one token through a layer's seven matrices, float32 against the
quantized linears, for the bundled model's sizes, TinyLlama-1.1B's and Llama-2-7B's.

The bundled model is small (576-wide), so a decode step on it is many small matrix-vector products, and the
fixed work of each call (Python, dispatch, the activation rounding of ``Int8Linear``) weighs on it. This asks
how the ratios move when the matrices grow to the sizes of the models a reader would swap in. Only the seven
matrices of a layer are timed (no attention, norms or head), with random weights of each configuration's
shapes: enough distinct layers that their float32 weights exceed 400 MB (so they are read from memory, not
from a cache), one token (batch 1), the same input for every variant. Variants: float32 ``F.linear``;
``Int8Linear`` with two-level activations (the default) and with one level; ``Int4Linear`` (groups of 32,
PyTorch's packed CPU kernel). Medians of ``--reps`` repetitions that alternate between the variants; the
ratios against float32 are paired within each repetition.

    python benchmarks/quant_widths.py [--reps 7] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STOPWATCH = "\u23f1"
# (dim, n_kv_heads·head_dim, ffn_dim) from each model's configuration
WIDTHS = {"SmolLM2-135M": (576, 192, 1536), "TinyLlama-1.1B": (2048, 256, 5632), "Llama-2-7B": (4096, 4096, 11008)}
MIN_FLOAT_BYTES = 400e6
VARIANTS = ("float32", "int8", "int8-1level", "int4")


def layer_shapes(dim: int, kv: int, ffn: int) -> list[tuple[int, int]]:
    """[out, in] of wq, wk, wv, wo, w1, w3, w2."""
    return [(dim, dim), (kv, dim), (kv, dim), (dim, dim), (ffn, dim), (ffn, dim), (dim, ffn)]


def build(name: str, variant: str, n_layers: int):
    import torch
    from torch import nn

    from annotated_llama import quant

    gen = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(n_layers):
        mats = []
        for out_f, in_f in layer_shapes(*WIDTHS[name]):
            lin = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
            lin.weight.copy_(torch.randn(out_f, in_f, generator=gen) * in_f**-0.5)
            if variant == "float32":
                mats.append(lin.weight)
            elif variant == "int4":
                mats.append(quant.Int4Linear.from_linear(lin, 32).prepare())
            else:
                mats.append(quant.Int8Linear.from_linear(lin, activation_levels=1 if "1level" in variant else 2
                                                         ).prepare())
        layers.append(mats)
    return layers


def token_time(layers, xs) -> float:
    """Seconds for one token through every matrix: x of each matrix's width, batch 1."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    for mats in layers:
        for m, x in zip(mats, xs):
            F.linear(x, m) if isinstance(m, torch.Tensor) else m(x)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from results_md import machine_line, publish

    torch.set_grad_enabled(False)
    load_start = os.getloadavg()
    result = {"machine": machine_line(), "threads": args.threads, "reps": args.reps, "widths": {}}
    for name, (dim, kv, ffn) in WIDTHS.items():
        shapes = layer_shapes(dim, kv, ffn)
        per_layer = sum(o * i for o, i in shapes)
        n_layers = max(1, -int(-MIN_FLOAT_BYTES // (4 * per_layer)))  # ceil
        gen = torch.Generator().manual_seed(1)
        xs = [torch.randn(1, i, generator=gen) for _, i in shapes]
        built = {}
        for v in VARIANTS:  # one variant's weights at a time are built, then all are held for the alternation
            built[v] = build(name, v, n_layers)
        bytes_read = {}
        for v, layers in built.items():
            mats = [m for layer in layers for m in layer]
            if v == "float32":
                bytes_read[v] = sum(m.numel() * 4 for m in mats)
            elif v == "int4":
                bytes_read[v] = sum(m.qpacked.numel() + 8 * m.scale.numel() for m in mats)
            else:
                bytes_read[v] = sum(m.kernel_nbytes() + 4 * m.scale.numel() for m in mats)
        for v, layers in built.items():  # warm-up
            token_time(layers, xs)
        times = {v: [] for v in VARIANTS}
        for r in range(args.reps):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
            for v in order:
                times[v].append(token_time(built[v], xs) / n_layers)
        f32 = times["float32"]
        result["widths"][name] = {
            "dim": dim, "kv": kv, "ffn_dim": ffn, "layers_timed": n_layers, "variants": {
                v: {"ms_per_layer": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3,
                    "speedup": statistics.median(a / b for a, b in zip(f32, t)),
                    "bytes_ratio": bytes_read["float32"] / bytes_read[v]}
                for v, t in times.items()}}
        del built
        print(f"{name}: done", file=sys.stderr)
    result["load_start"], result["load_end"] = list(load_start), list(os.getloadavg())
    publish("quant_widths", result, report(result), write=not args.no_write)
    return 0


def report(r) -> str:
    from results_md import load_sentence  # benchmarks/ is on sys.path (main puts it there)

    rows = []
    for name, w in r["widths"].items():
        for v, x in w["variants"].items():
            rows.append(f"| {name} ({w['dim']}/{w['ffn_dim']}, {w['layers_timed']} layers) | {v} | "
                        f"{STOPWATCH} {x['ms_per_layer']:.2f} [{x['min_ms']:.2f}-{x['max_ms']:.2f}] | "
                        f"{STOPWATCH} {x['speedup']:.2f} | {x['bytes_ratio']:.2f} |")
    return "\n".join([
        "## Fewer bits at three widths: one layer's matrices, one token (`benchmarks/quant_widths.py`)",
        "",
        r["machine"],
        load_sentence(r["load_start"], r["load_end"]) + f" {r['threads']} threads; {r['reps']} repetitions alternating "
        "between the variants. Random weights of each model's shapes; the seven matrices of a layer only (no "
        "attention, norms or head); enough layers that the float32 weights exceed 400 MB.",
        "",
        "| width (dim/ffn_dim) | variant | ms per layer, median [min-max] | speed-up vs float32 (paired median) "
        "| float32 bytes ÷ bytes read |",
        "|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    sys.exit(main())
