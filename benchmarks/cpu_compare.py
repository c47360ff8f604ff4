"""Prefill and decode speed of this package against transformers on the same weights (float32, CPU).

Both load the bundled SmolLM2-135M GGUF (dequantized to float32). Repetitions alternate between the two so
that drift in the machine's speed hits both alike; the median of each is reported, with the ratio
ours / theirs (above 1.0: this package is faster).

    python benchmarks/cpu_compare.py [--reps 5] [--prefill 512] [--decode 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import annotated_llama as al
from annotated_llama.generate import generate_ids


def load_transformers():
    """transformers' LlamaForCausalLM on the same weights (transformers dequantized the GGUF itself)."""
    from annotated_llama.reference import transformers_model

    return transformers_model("smollm2-135m", device="cpu", dtype=torch.float32)


@torch.inference_mode()
def prefill_ours(model, tokens):
    model(tokens)


@torch.inference_mode()
def prefill_theirs(hf, tokens):
    hf(tokens, use_cache=False)


def decode_ours(model, prompt, n):
    out = list(generate_ids(model, prompt, n))
    assert len(out) == n
    return out


@torch.inference_mode()
def decode_theirs(hf, prompt, n):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    a = parser.parse_args()

    model, tok = al.load("smollm2-135m", device="cpu", dtype="float32")
    hf = load_transformers()
    torch.manual_seed(0)
    long_prompt = torch.randint(0, model.args.vocab_size, (1, a.prefill))
    short_prompt = tok.encode("The capital of France is")
    n_decode = a.decode

    # Warm-up (allocator, kernels), and a check that both produce the same greedy tokens.
    prefill_ours(model, long_prompt), prefill_theirs(hf, long_prompt)
    same = decode_ours(model, short_prompt, 16) == decode_theirs(hf, short_prompt, 16)

    times = {"prefill ours": [], "prefill transformers": [], "decode ours": [], "decode transformers": []}
    for _ in range(a.reps):
        times["prefill ours"].append(timed(prefill_ours, model, long_prompt)[0])
        times["prefill transformers"].append(timed(prefill_theirs, hf, long_prompt)[0])
        # decode timing includes the short prompt's prefill (5 tokens), the same for both
        times["decode ours"].append(timed(decode_ours, model, short_prompt, n_decode)[0])
        times["decode transformers"].append(timed(decode_theirs, hf, short_prompt, n_decode)[0])

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"greedy tokens identical (16 steps): {same}")
    print(f"{'':<24}{'ours tok/s':>12}{'transformers tok/s':>20}{'ratio':>8}")
    for phase, n in (("prefill", a.prefill), ("decode", n_decode)):
        ours, theirs = n / med[f"{phase} ours"], n / med[f"{phase} transformers"]
        label = f"{phase} ({n} tokens)"
        print(f"{label:<24}{ours:>12.1f}{theirs:>20.1f}{ours / theirs:>8.2f}")


if __name__ == "__main__":
    main()
