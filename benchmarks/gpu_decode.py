"""Batch-1 decode and prefill speed of this package against transformers, on the same weights, against the limits
of the machine measured in the same run.

Variants (all greedy, batch 1, the same weight tensors in one process):
  ours eager           the readable model (``annotated_llama.generate.generate_ids``)
  ours fast            ``FastLlama``: static KV cache, fused projections (also on a CPU), sync-free loop, eager
  ours fast+compile    ``FastLlama(compile=True)``: the one-token step torch.compiled (CUDA graphs on CUDA)
  hf eager             transformers ``LlamaForCausalLM.generate`` with its default dynamic cache
  hf static+compile    transformers with a static cache and ``torch.compile(hf.forward, fullgraph=True)``
                       (mode "reduce-overhead" on CUDA), the recipe of transformers' docs; one StaticCache per
                       length is kept and reset between calls, which is what ``cache_implementation="static"``
                       does inside ``generate``

Memory: the fast variants are built first, so the model's q/k/v and w1/w3 become row slices of the fused tensors
and no unfused copy stays alive; transformers then runs on those same tensors (``reference.as_transformers``),
except q/k, which it needs in another row order: they are permuted once into a copy (2 GB for a 7B model),
instead of on every forward, which would slow transformers' every step. Each prompt length has its own FastLlama
objects with a fixed cache length (prompt + new tokens, rounded up to 256), as transformers' StaticCache has.

Shapes: ``--shape smollm2-135m`` is the bundled model; any other preset name (``llama2-7b``) builds a model of that
shape with random weights directly on the device in the benchmark's dtype (no download; ``--n-layers`` shrinks
it); ``--model ID_OR_PATH`` loads a real checkpoint with ``al.load``.

Measurements: every variant is warmed up first (two full generations, so a CUDA graph is recorded before any
timing, and its own tokens are fixed); then each repetition goes round all variants and prompt lengths, in the
opposite order every other repetition, timing the prompt alone (1 new token) and the prompt with N new tokens.
Prefill tok/s = P / time(1 token); decode tok/s = (N - 1) / (time(N) - time(1)), per repetition; reported: the
median and the range (min-max) over repetitions. Every timed run must reproduce the variant's own warm-up tokens
(else the run stops: a replayed graph computing something else is a bug, not a speed). Across variants, greedy
tokens are compared with the readable model's: they may part only at a near tie (the readable model's top-2
logit gap within the dtype's tolerance, ``reference.RELATIVE_TOLERANCE``); anything else stops the run.
Achieved weight bandwidth = bytes of the weights read per token (every matrix but the input embedding; the LM
head counted even when tied) x decode tok/s, against a device-to-device copy (read + write) timed in the same
run; prefill FLOP/s = 2 x those weights' parameters x prefill tok/s (attention's FLOPs not counted), against a
dense matmul timed in the same run. Targets (issue 9; meant for an H100/H200 in bf16, reported on any device):
decode after the shortest prompt at >= 75% of the copy bandwidth, prefill of the longest prompt (2,048 tokens)
at >= 50% of the matmul rate, each for the best of this package's variants. ``--prompts-compile`` limits the
compiled variants to some prompt lengths (each length is one more compile).

    python benchmarks/gpu_decode.py                       # CUDA: llama2-7b and smollm2-135m, bf16
    python benchmarks/gpu_decode.py --device cpu          # CPU: bundled model, small prompts
Each (device, shape, dtype) writes its own section of benchmarks/RESULTS.md (``--results`` for another file).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import annotated_llama as al
from annotated_llama.fast import FastLlama
from annotated_llama.generate import generate_ids
from annotated_llama.loading import resolve_device_dtype
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers

sys.path.insert(0, str(Path(__file__).parent))
from results_md import RESULTS, machine_line, write_section  # noqa: E402

VARIANTS = ("eager", "fast", "compile", "hf", "hf-compile")  # the names --skip takes
DECODE_TARGET, PREFILL_TARGET = 0.75, 0.50  # of the copy bandwidth, of the matmul rate


# --- the machine's limits ---------------------------------------------------------------------------------
def timed(fn, device: torch.device):
    """(seconds, result) of fn(), the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def copy_bandwidth(device: torch.device, reps: int = 10) -> float:
    """Bytes per second of a large device-to-device copy, counting the read and the write (median of reps)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.empty(n, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = statistics.median(timed(lambda: dst.copy_(src), device)[0] for _ in range(reps))
    return 2 * n * src.element_size() / t


def matmul_flops(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """FLOP/s of a dense square matmul in ``dtype`` (8192 on a GPU, 1024 on a CPU; median of reps)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = statistics.median(timed(lambda: a @ b, device)[0] for _ in range(reps))
    return 2 * n**3 / t


def weight_bytes_per_token(model) -> int:
    """Bytes read from the weights for one token: every matrix except the input embedding (one row of it is
    read), plus the LM head even when it is the embedding itself."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied matrix counted once
    emb = model.tok_embeddings.weight
    return total - emb.numel() * emb.element_size() + (
        emb.numel() * emb.element_size() if model.args.tie_word_embeddings else 0)


# --- the models ---------------------------------------------------------------------------------------------
def random_model(preset: str, device: torch.device, dtype: torch.dtype, n_layers: int | None = None):
    """A model of the preset's shape (``n_layers`` layers if given) with random weights, built on the meta device
    and materialised on ``device`` in ``dtype`` (no float32 copy on the way)."""
    args = al.ModelArgs.preset(preset)
    if n_layers:
        args.n_layers = n_layers
    with torch.device("meta"):
        model = al.Transformer(args).to(dtype)
    model = model.to_empty(device=device)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm gains
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def transformers_on_our_tensors(model):
    """``reference.as_transformers`` with q/k permuted once into a copy (see the module's docstring)."""
    from torch.nn.utils import parametrize

    hf = as_transformers(model)
    for layer in hf.model.layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.disable_compile = True  # no automatic compile: "hf static+compile" compiles explicitly
    return hf


# --- the variants: each is run(prompt [1, P] on the device, n) -> list of n new ids -------------------------
def cache_length(prompt_len: int, n: int) -> int:
    return math.ceil((prompt_len + n) / 256) * 256


def variants(model, prompt_lens, n, device, skip: set[str]):
    """The variants to time, built in the order that keeps one copy of the weights (fused first):
    {label: (run, the prompt lengths it runs)}."""
    out = {}
    if "fast" not in skip:
        fast = {p: FastLlama(model, fuse=True, max_seq_len=cache_length(p, n)) for p in prompt_lens["eager"]}
        out["ours fast"] = (lambda prompt, k: fast[prompt.shape[1]].generate(prompt[0], k), prompt_lens["eager"])
    if "compile" not in skip:
        fast_c = {p: FastLlama(model, compile=True, fuse=True, max_seq_len=cache_length(p, n))
                  for p in prompt_lens["compile"]}
        out["ours fast+compile"] = (lambda prompt, k: fast_c[prompt.shape[1]].generate(prompt[0], k),
                                    prompt_lens["compile"])
    if "eager" not in skip:  # the readable model, on the same (now fused-slice) weights
        out = {"ours eager": (lambda prompt, k: list(generate_ids(model, prompt[0].tolist(), k)),
                              prompt_lens["eager"]), **out}
    if {"hf", "hf-compile"} <= skip:
        return out
    hf = transformers_on_our_tensors(model)

    def hf_run(module, caches=None):
        @torch.inference_mode()  # the cache's tensors are created and reset in inference mode too
        def run(prompt, k):
            kw = {}
            if caches is not None:  # one static cache per length, reset before each call
                from transformers import StaticCache

                length = cache_length(prompt.shape[1], n)
                if length not in caches:
                    caches[length] = StaticCache(config=module.config, max_cache_len=length)
                caches[length].reset()
                kw["past_key_values"] = caches[length]
            ids = module.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k,
                                  min_new_tokens=k, do_sample=False, **kw)
            return ids[0, prompt.shape[1]:].tolist()
        return run

    if "hf" not in skip:
        out["hf eager"] = (hf_run(hf), prompt_lens["eager"])
    if "hf-compile" not in skip:
        hf_c = copy.copy(hf)  # the same modules and tensors; only its forward differs
        hf_c.forward = torch.compile(hf.forward, mode="reduce-overhead" if device.type == "cuda" else None,
                                     fullgraph=True)
        out["hf static+compile"] = (hf_run(hf_c, caches={}), prompt_lens["compile"])
    return out


# --- agreement ----------------------------------------------------------------------------------------------
def check_against_readable(model, prompt: torch.Tensor, ref: list[int], ids: list[int], label: str) -> str:
    """'same', or 'near tie at token j' where ``ids`` leaves the readable model's greedy tokens ``ref`` at a step
    whose top-2 logit gap is within twice the dtype's tolerance; raises on any other difference."""
    j = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), None)
    if j is None:
        return "same"
    with torch.inference_mode():
        fed = torch.tensor([ref[:j]], dtype=torch.long, device=prompt.device)  # [1, j]: the agreed tokens
        logits = model(torch.cat([prompt, fed], dim=1), last_only=True)[0, -1]  # [vocab]
    top2 = logits.float().topk(2).values
    gap, slack = (top2[0] - top2[1]).item(), 2 * RELATIVE_TOLERANCE[model.dtype] * logits.abs().max().item()
    if gap > slack:
        raise RuntimeError(f"{label}, prompt of {prompt.shape[1]}: greedy token {j} is {ids[j]}, the readable "
                           f"model's is {ref[j]}, with a top-2 gap of {gap:.3g} > {slack:.3g}: not a near tie")
    return f"near tie at token {j}"


# --- measuring ----------------------------------------------------------------------------------------------
def measure_all(runs, prompts, n, device, reps, log):
    """{(label, P): dict(prefill=[tok/s per rep], decode=[tok/s per rep], ids=[the n greedy ids])}."""
    ids, failed = {}, {}
    for label, (run, lengths) in runs.items():
        for p in lengths:
            prompt = prompts[p]
            start = time.perf_counter()
            try:
                first = run(prompt, n)
                again = run(prompt, n)  # CUDA graphs: the first call warms up, the second records
                if again != first or run(prompt, 1) != first[:1]:
                    raise RuntimeError(f"{label}, prompt of {p}: a second greedy run gave other tokens")
                ids[label, p] = first
                log(f"{label:<18} prompt {p:>5}: warm ({time.perf_counter() - start:.0f} s, compiles included)")
            except Exception as e:  # one variant failing to build (a compile error, say) should not lose the rest
                failed[label, p] = f"{type(e).__name__}: {e}"
                log(f"{label:<18} prompt {p:>5}: failed: {failed[label, p]}"[:400])
    order = list(ids)
    times = {key: ([], []) for key in order}
    for r in range(reps):
        for label, p in (order if r % 2 == 0 else order[::-1]):  # alternating order: drift hits all alike
            run, prompt = runs[label][0], prompts[p]
            t1, one = timed(lambda: run(prompt, 1), device)
            tn, all_ = timed(lambda: run(prompt, n), device)
            if one != ids[label, p][:1] or all_ != ids[label, p]:
                raise RuntimeError(f"{label}, prompt of {p}: repetition {r} gave other tokens than the warm-up")
            times[label, p][0].append(t1)
            times[label, p][1].append(tn)
    out = {}
    for key, (t_first, t_all) in times.items():
        p = key[1]
        decode = [(n - 1) / (tn - t1) if tn > t1 else float("nan") for t1, tn in zip(t_first, t_all)]
        out[key] = dict(prefill=[p / t for t in t_first], decode=decode, ids=ids[key])
    return out, failed


def spread(values: list[float], fmt: str) -> str:
    """'median [min-max]' of the finite values."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "nan"
    return f"{format(statistics.median(v), fmt)} [{format(min(v), fmt)}-{format(max(v), fmt)}]"


def median(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return statistics.median(v) if v else float("nan")


# --- main ---------------------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on GPUs that have it natively, fp16 on "
                        "older ones, float32 on a CPU")
    parser.add_argument("--shape", action="append", help="model shape(s): smollm2-135m (the bundled model) or a "
                        "preset name (random weights); default: llama2-7b and smollm2-135m on CUDA, "
                        "smollm2-135m on CPU")
    parser.add_argument("--n-layers", type=int, help="random shapes only: this many layers")
    parser.add_argument("--model", help="a real checkpoint for al.load instead of --shape")
    parser.add_argument("--prompts", default=None, help="prompt lengths, default 128,2048 (CUDA) / 16,64 (CPU)")
    parser.add_argument("--prompts-compile", default=None, help="prompt lengths for the compiled variants (each "
                        "length is one more compile), default: all of --prompts")
    parser.add_argument("--new-tokens", type=int, default=None, help="N, default 128 (CUDA) / 32 (CPU)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions, default 5")
    parser.add_argument("--skip", default="", help=f"comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results file")
    a = parser.parse_args()
    device, dtype = resolve_device_dtype(a.device, a.dtype)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    prompt_lens = [int(p) for p in (a.prompts or ("128,2048" if cuda else "16,64")).split(",")]
    lens = {"eager": prompt_lens, "compile": [int(p) for p in a.prompts_compile.split(",")] if a.prompts_compile
            else prompt_lens}
    if not set(lens["compile"]) <= set(prompt_lens):
        parser.error("--prompts-compile must be a subset of --prompts")
    n_new = a.new_tokens or (128 if cuda else 32)
    reps = a.reps or 5
    skip = set(filter(None, a.skip.split(",")))
    if skip - set(VARIANTS):
        parser.error(f"unknown --skip {sorted(skip - set(VARIANTS))}; known: {', '.join(VARIANTS)}")
    shapes = [a.model] if a.model else (a.shape or (["llama2-7b", "smollm2-135m"] if cuda else ["smollm2-135m"]))
    if not cuda and "llama2-7b" in shapes and not a.n_layers:
        parser.error("--shape llama2-7b needs a GPU (27 GB of float32 weights); add --n-layers 1 for a CPU trial")

    device_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    dname = str(dtype).removeprefix("torch.")
    copy_bw, flops = copy_bandwidth(device), matmul_flops(device, dtype)
    import transformers

    env = f"transformers {transformers.__version__}"
    machine = machine_line()  # the load at the start of the run
    print(machine)
    print(f"{device_name}: copy bandwidth (read + write) {copy_bw / 1e9:.1f} GB/s; dense {dname} matmul "
          f"{flops / 1e12:.2f} TFLOP/s; {env}")

    for shape in shapes:
        start = time.perf_counter()
        if a.model:
            model, _ = al.load(shape, device=device, dtype=dtype)
        elif shape == "smollm2-135m":
            model, _ = al.load(shape, device=device, dtype=dtype)
        else:
            model = random_model(shape, device, dtype, a.n_layers)
        shrunk = a.n_layers and shape != "smollm2-135m" and not a.model
        label = shape + (f" ({a.n_layers} of {al.ModelArgs.preset(shape).n_layers} layers)" if shrunk else "")
        model.check_inputs = False  # the token-range check costs a host sync per step
        wbytes, wparams = weight_bytes_per_token(model), weight_bytes_per_token(model) // dtype.itemsize
        runs = variants(model, lens, n_new, device, skip)
        memory = ""
        if cuda:  # one copy of the weights: fused in place, transformers on the same tensors (plus its q/k copy)
            weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
            memory = (f" GPU memory once every variant was built: {torch.cuda.memory_allocated(device) / 1e9:.2f} GB "
                      f"allocated, for {weights / 1e9:.2f} GB of weights.")
            print(f"{label:>14}{memory}")
        gen = torch.Generator().manual_seed(0)
        prompts = {p: torch.randint(0, model.args.vocab_size, (1, p), generator=gen).to(device) for p in prompt_lens}
        results, failed = measure_all(runs, prompts, n_new, device, reps, lambda m: print(f"{label:>14} {m}"))
        if failed:
            print(f"{label}: {len(failed)} variant(s) failed to run; they are marked in the table")

        ref_label = "ours eager" if "ours eager" in runs else next(iter(runs))
        rows = []
        for name, (_, lengths) in runs.items():
            for p in lengths:
                if (name, p) in failed or (name, p) not in results:
                    rows.append(f"| {name} | {p} | failed | | | | | {failed.get((name, p), '')[:80]} |")
                    continue
                res = results[name, p]
                ref = results.get((ref_label, p))
                agree = "reference" if name == ref_label else (
                    check_against_readable(model, prompts[p], ref["ids"], res["ids"], name) if ref else "n/a")
                pre, dec = median(res["prefill"]), median(res["decode"])
                rows.append(f"| {name} | {p} | {spread(res['prefill'], '.1f')} | {2 * wparams * pre / 1e12:.3f} "
                            f"({2 * wparams * pre / flops:.0%}) | {spread(res['decode'], '.2f')} | "
                            f"{wbytes * dec / 1e9:.1f} ({wbytes * dec / copy_bw:.0%}) | {agree} |")
                print(f"{label:>14} {rows[-1]}")

        # the targets: our best decode after the shortest prompt, our best prefill of the longest
        target_lines = []
        for what, p, key, scale, limit, target in (
                ("decode", min(prompt_lens), "decode", wbytes, copy_bw, DECODE_TARGET),
                ("prefill", max(prompt_lens), "prefill", 2 * wparams, flops, PREFILL_TARGET)):
            ours = {v: median(results[v, p][key]) for v in runs if v.startswith("ours") and (v, p) in results}
            if not ours:
                continue
            best = max(ours, key=lambda v: ours[v] if math.isfinite(ours[v]) else -1.0)
            frac = scale * ours[best] / limit
            verdict = "met" if frac >= target else "not met"
            target_lines.append(f"- {what} ({best}, prompt of {p}): {frac:.0%} of the "
                                f"{'copy bandwidth' if what == 'decode' else 'matmul rate'} (target >= "
                                f"{target:.0%}): **{verdict}**")
            print(f"{label:>14} target: {target_lines[-1][2:]}")

        body = [
            f"## gpu_decode.py: {label}, {dname}, on {device_name}", "",
            machine + f" {env}.", "",
            f"{label}, {dname}: {wbytes / 1e9:.3f} GB of weights read per token; {n_new} new tokens per run; "
            f"{reps} repetitions in alternating order, **median [min-max]** over them. Copy bandwidth (read + "
            f"write) {copy_bw / 1e9:.1f} GB/s, so at most {copy_bw / wbytes:.1f} tok/s at batch 1; dense {dname} "
            f"matmul {flops / 1e12:.2f} TFLOP/s. Build and measure: {time.perf_counter() - start:.0f} s.{memory}", "",
            "| variant | prompt | prefill tok/s | prefill TFLOP/s (of matmul) | decode tok/s | weight GB/s (of copy) "
            f"| greedy ids vs {ref_label} |",
            "|---|---:|---:|---:|---:|---:|:-:|", *rows, "",
        ]
        if target_lines:
            body += [f"Targets (issue 9, set for an H100/H200 in bf16; this run: {device_name}, {dname}):",
                     *target_lines]
        if not a.no_write:
            write_section(f"gpu_decode {device_name} {label} {dname}", "\n".join(body), path=a.results)
            print(f"written to {a.results}")
        del runs, model, results
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
