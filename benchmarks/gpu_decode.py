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

Shapes: ``--shape llama2-7b`` builds a Llama-2-7B-shaped model with random weights directly on the GPU in bf16
(no download); ``--shape smollm2-135m`` is the bundled model; ``--model ID_OR_PATH`` loads a real checkpoint with
``al.load`` (e.g. meta-llama/Llama-2-7b-hf on Colab). transformers gets our tensors (q/k rows permuted into its
rotate-half order; every other matrix is shared, not copied).

Speeds: prefill tok/s = P / time of (prompt of P tokens -> first new token); decode tok/s = (N - 1) / (time for N
new tokens - time for 1), the same prompt, so the prompt's cost cancels; over --reps, the median on a GPU and the
fastest run on a CPU (usually a shared machine, where the fastest run is the least disturbed). Achieved weight
bandwidth = bytes of the weights read per token (every matrix except the input embedding; the LM head counted
even when tied) x decode tok/s, compared with a device-to-device copy (read + write) timed in the same run;
prefill FLOP/s = 2 x those weights' parameters x prefill tok/s, compared with a dense matmul timed in the same run.

    python benchmarks/gpu_decode.py                       # CUDA: llama2-7b and smollm2-135m
    python benchmarks/gpu_decode.py --device cpu          # CPU smoke test: bundled model, small prompts
Results are printed and written into benchmarks/RESULTS.md (one section per device, one table per shape).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import re
import statistics
import time
from pathlib import Path

import torch

import annotated_llama as al
from annotated_llama.fast import FastLlama
from annotated_llama.generate import generate_ids
from annotated_llama.weights import permute_meta_to_hf

RESULTS = Path(__file__).with_name("RESULTS.md")
CPU_HEADING = "CPU (2 cores, this dev machine)"


# --- the machine's limits ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    """Seconds for fn(); CUDA events on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def copy_bandwidth(device: torch.device, reps: int = 10) -> float:
    """Bytes per second of a large device-to-device copy, counting the read and the write."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.empty(n, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = statistics.median(timed(lambda: dst.copy_(src), device) for _ in range(reps))
    return 2 * n * src.element_size() / t


def matmul_flops(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """FLOP/s of a dense square matmul in ``dtype`` (8192 on a GPU, 1024 on a CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = statistics.median(timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / t


def weight_bytes_per_token(model) -> int:
    """Bytes read from the weights for one token: every matrix except the input embedding (one row of it is
    read), plus the LM head even when it is the embedding itself."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied matrix counted once
    emb = model.tok_embeddings.weight
    return total - emb.numel() * emb.element_size() + (
        emb.numel() * emb.element_size() if model.args.tie_word_embeddings else 0)


# --- the models ---------------------------------------------------------------------------------------------
def random_model(preset: str, device: torch.device, dtype: torch.dtype) -> al.Transformer:
    """A model of the preset's shape with random weights, built on the meta device and materialised on
    ``device`` in ``dtype`` (no float32 copy on the way)."""
    args = al.ModelArgs.preset(preset)
    with torch.device("meta"):
        model = al.Transformer(args).to(dtype)
    model = model.to_empty(device=device)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm gains
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def transformers_from_ours(model):
    """transformers' LlamaForCausalLM on our tensors: q/k rows permuted into rotate-half order (a copy), the
    rest shared."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    a = model.args
    config = LlamaConfig(
        vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.ffn_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads, head_dim=a.head_dim,
        max_position_embeddings=a.max_seq_len, rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta,
        tie_word_embeddings=a.tie_word_embeddings, dtype=model.dtype)
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight,
          "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.layers):
        at, ff, p = layer.attention, layer.feed_forward, f"model.layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": permute_meta_to_hf(at.wq.weight, a.n_heads),
            p + "self_attn.k_proj.weight": permute_meta_to_hf(at.wk.weight, a.n_kv_heads),
            p + "self_attn.v_proj.weight": at.wv.weight, p + "self_attn.o_proj.weight": at.wo.weight,
            p + "mlp.gate_proj.weight": ff.w1.weight, p + "mlp.up_proj.weight": ff.w3.weight,
            p + "mlp.down_proj.weight": ff.w2.weight,
            p + "input_layernorm.weight": layer.attention_norm.weight,
            p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
        })
    hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True, assign=True)
    hf.model.rotary_emb = LlamaRotaryEmbedding(config).to(model.device)  # its buffers were on meta
    hf.generation_config.pad_token_id = 0
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.disable_compile = True  # no automatic compile: variant (d) compiles explicitly
    return hf.eval().requires_grad_(False)


# --- the variants: each is run(prompt [1, P] on the device, n) -> list of n new ids -------------------------
def cache_length(prompt_len: int, n: int) -> int:
    return math.ceil((prompt_len + n) / 256) * 256


def variants(model, hf, device, skip: set[str]):
    out = {}
    if "eager" not in skip:
        out["ours eager"] = lambda prompt, n: list(generate_ids(model, prompt[0].tolist(), n))
    if "fast" not in skip:
        fast = FastLlama(model, fuse=True)  # cache sized per request, rounded up to 256 positions
        out["ours fast"] = lambda prompt, n: fast.generate(prompt[0], n)
    if "compile" not in skip:
        fast_c = FastLlama(model, compile=True, fuse=True)
        out["ours fast+compile"] = lambda prompt, n: fast_c.generate(prompt[0], n)
    if hf is None:
        return out

    def hf_run(module, caches=None):
        @torch.inference_mode()  # the cache's tensors are created and reset in inference mode too
        def run(prompt, n):
            kw = {}
            if caches is not None:  # one static cache per length, reset before each call
                from transformers import StaticCache

                length = cache_length(prompt.shape[1], n)
                if length not in caches:
                    caches[length] = StaticCache(config=module.config, max_cache_len=length)
                caches[length].reset()
                kw["past_key_values"] = caches[length]
            ids = module.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, **kw)
            return ids[0, prompt.shape[1]:].tolist()
        return run

    if "hf" not in skip:
        out["hf eager"] = hf_run(hf)
    if "hf-compile" not in skip:
        hf_c = transformers_from_ours(model)  # a second wrapper on the same tensors (q/k: one more copy)
        hf_c.forward = torch.compile(hf_c.forward, mode="reduce-overhead" if device.type == "cuda" else None,
                                     fullgraph=True)
        out["hf static+compile"] = hf_run(hf_c, caches={})
    return out


def measure_all(runs, prompts, n, device, reps, log):
    """{(label, P): (prefill tok/s, decode tok/s, the n greedy ids)}.

    Every variant is warmed up (and compiled) first; then the timed repetitions go round all variants and
    prompts in turn, so that a change in the machine's speed (a shared CPU) hits every variant alike. Each
    repetition times the prompt alone (1 new token) and the prompt with n new tokens."""
    ids, times, failed = {}, {}, {}
    for label, run in runs.items():
        for p, prompt in prompts.items():
            start = time.perf_counter()
            try:
                ids[label, p] = run(prompt, n)
                run(prompt, 1)
                times[label, p] = ([], [])
                log(f"{label:<18} prompt {p:>5}: warm ({time.perf_counter() - start:.0f} s, compiles included)")
            except Exception as e:  # one variant failing (a compile error, say) should not lose the rest
                failed[label, p] = f"{type(e).__name__}: {e}"
                log(f"{label:<18} prompt {p:>5}: failed: {failed[label, p]}"[:400])
    for _ in range(reps):
        for (label, p), (t_first, t_all) in times.items():
            run, prompt = runs[label], prompts[p]
            t_first.append(timed(lambda: run(prompt, 1), device))
            t_all.append(timed(lambda: run(prompt, n), device))
    # a GPU is ours alone: the median; a CPU is often shared: the least-disturbed (fastest) run
    pick = statistics.median if device.type == "cuda" else min
    out = {}
    for (label, p), (t_first, t_all) in times.items():
        t1, tn = pick(t_first), pick(t_all)
        decode = (n - 1) / (tn - t1) if tn > t1 else float("nan")  # nan: noise swamped the difference
        out[label, p] = (p / t1, decode, ids[label, p])
    return out, failed


# --- RESULTS.md ---------------------------------------------------------------------------------------------
INTRO = """# Benchmark results

Written by `benchmarks/gpu_decode.py` (one section per device, one table per model shape; re-running replaces
that table). Batch 1, greedy. Prefill tok/s: prompt of P tokens to the first new token. Decode tok/s: (N - 1) /
(time for N new tokens - time for 1); median of the repetitions on a GPU, fastest on a CPU. Weight GB/s: bytes
of weights read per token x decode tok/s; the copy bandwidth (read + write) and the matmul rate were measured in
the same run.
"""


def update_results(heading: str, sub: str, body: str, note: str = "") -> None:
    text = RESULTS.read_text() if RESULTS.is_file() else INTRO
    parts = re.split(r"(?m)^(?=## )", text)
    intro, sections = parts[0], {p.splitlines()[0][3:].strip(): p for p in parts[1:]}
    section = sections.get(heading, f"## {heading}\n\n{note}\n\n" if note else f"## {heading}\n\n")
    subs = re.split(r"(?m)^(?=### )", section)
    head, tables = subs[0], [s for s in subs[1:] if s.splitlines()[0][4:].strip() != sub]
    sections[heading] = head + "".join(tables) + f"### {sub}\n\n{body.rstrip()}\n\n"
    RESULTS.write_text(intro.rstrip() + "\n\n" + "".join(s.rstrip() + "\n\n" for s in sections.values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", action="append", choices=["llama2-7b", "smollm2-135m"],
                        help="model shape(s); default: both on CUDA, smollm2-135m on CPU")
    parser.add_argument("--model", help="a real checkpoint for al.load instead of --shape")
    parser.add_argument("--prompts", default=None, help="prompt lengths, default 128,2048 (CUDA) / 16,64 (CPU)")
    parser.add_argument("--new-tokens", type=int, default=None, help="N, default 128 (CUDA) / 32 (CPU)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions, default 5")
    parser.add_argument("--skip", default="", help="comma-separated: eager,fast,compile,hf,hf-compile")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    a = parser.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    prompts = [int(p) for p in (a.prompts or ("128,2048" if cuda else "16,64")).split(",")]
    n_new = a.new_tokens or (128 if cuda else 32)
    reps = a.reps or 5
    skip = set(filter(None, a.skip.split(",")))
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = [a.model] if a.model else (a.shape or (["llama2-7b", "smollm2-135m"] if cuda else ["smollm2-135m"]))
    if not cuda and "llama2-7b" in shapes:
        parser.error("--shape llama2-7b needs a GPU (27 GB of float32 weights); use --device cuda")

    name = torch.cuda.get_device_name(device) if cuda else CPU_HEADING
    copy_bw, flops = copy_bandwidth(device), matmul_flops(device, dtype)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import transformers

    env = (f"torch {torch.__version__}, transformers {transformers.__version__}"
           + (f", CUDA {torch.version.cuda}" if cuda else f", {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}"))
    print(f"{name}: {env}")
    print(f"copy bandwidth (read + write): {copy_bw / 1e9:.1f} GB/s; dense {str(dtype)[6:]} matmul: "
          f"{flops / 1e12:.2f} TFLOP/s")

    for shape in shapes:
        if shape == "llama2-7b":
            model = random_model(shape, device, dtype)
        else:
            model, _ = al.load(shape, device=device, dtype=dtype)
        model.check_inputs = False  # the token-range check costs a host sync per step
        wbytes = weight_bytes_per_token(model)
        hf = None if {"hf", "hf-compile"} <= skip else transformers_from_ours(model)
        runs = variants(model, hf, device, skip)
        gen = torch.Generator().manual_seed(0)
        prompt_ids = {p: torch.randint(0, model.args.vocab_size, (1, p), generator=gen).to(device) for p in prompts}
        results, failed = measure_all(runs, prompt_ids, n_new, device, reps, lambda m: print(f"{shape:>14} {m}"))
        rows = []
        for label in runs:
            for p in prompts:
                if (label, p) in failed:
                    rows.append((label, p, float("nan"), float("nan"), float("nan"), None))
                    continue
                pre, dec, ids = results[label, p]
                first = next(results[v, p][2] for v in runs if (v, p) in results)
                rows.append((label, p, pre, dec, wbytes * dec, ids == first))
                print(f"{shape:>14} {label:<18} prompt {p:>5}: prefill {pre:9.1f} tok/s, decode {dec:7.2f} tok/s, "
                      f"weights {wbytes * dec / 1e9:7.1f} GB/s ({wbytes * dec / copy_bw:5.1%} of copy), "
                      f"greedy ids as the first variant's: {ids == first}")
        body = [f"Measured {when} on {name}; {env}.",
                f"{shape}, {str(dtype)[6:]}: {wbytes / 1e9:.3f} GB of weights read per token; {n_new} new tokens; "
                f"{'median' if cuda else 'best'} of {reps}.",
                f"Copy bandwidth (read + write) {copy_bw / 1e9:.1f} GB/s, so at most "
                f"{copy_bw / wbytes:.1f} tok/s at batch 1; dense {str(dtype)[6:]} matmul {flops / 1e12:.2f} TFLOP/s.",
                "", "| variant | prompt | prefill tok/s | prefill TFLOP/s | decode tok/s | weight GB/s | of copy bw "
                "| same greedy ids |", "|---|---:|---:|---:|---:|---:|---:|:-:|"]
        for label, p, pre, dec, bw, same in rows:
            agree = "failed" if same is None else "yes" if same else "no"
            body.append(f"| {label} | {p} | {pre:.1f} | {2 * wbytes / model.dtype.itemsize * pre / 1e12:.3f} "
                        f"| {dec:.2f} | {bw / 1e9:.1f} | {bw / copy_bw:.0%} | {agree} |")
        if not a.no_write:
            note = ("No GPU was available in the session that wrote this section, so the GPU figures are\n"
                    "unmeasured: run this script on a GPU to add them. The CPU is shared with other jobs:\n"
                    "repeated runs differ by several percent.") if not cuda else ""
            update_results(name, f"{shape} ({str(dtype)[6:]})", "\n".join(body), note)
        del runs, hf, model, results
        if cuda:
            torch.cuda.empty_cache()
    if not a.no_write:
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
