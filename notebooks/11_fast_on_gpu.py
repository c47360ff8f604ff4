# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11. Fast on a GPU
#
# Chapter 9 gave us a complete model and a generation loop, and chapter 7 made each new token
# cost one pass over one position instead of the whole sequence. That code was written to be
# read. This chapter asks what it takes to make the same forward pass run at the speed the
# hardware allows, and answers with numbers: first the limit, computed from the model's
# shape, then the changes that approach it, each checked against the readable model.
#
# The changes follow gpt-fast {cite}`pytorch2023gptfast`: a static KV cache, fused
# projections, attention through PyTorch's fused kernel {cite}`dao2022flashattention`, a
# decode loop that never waits for the GPU, and `torch.compile` with CUDA graphs. They live
# in `annotated_llama/fast.py`, a `FastLlama` that runs the readable model's own weight tensors.

# %% [markdown]
# ## Set-up

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # on Colab only: install the package, keeping Colab's own torch
    from IPython import get_ipython

    REPO = "git+https://github.com/annotated-llama/annotated-llama"
    DEPS = 'numpy safetensors "gguf>=0.10" sentencepiece protobuf tokenizers'
    get_ipython().run_line_magic("pip", f'install -q --no-deps "annotated-llama @ {REPO}"')
    get_ipython().run_line_magic("pip", f"install -q {DEPS}")
    get_ipython().system("python -m annotated_llama fetch")

# %%
import inspect
import statistics
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.fast import FastLlama
from annotated_llama.generate import generate_ids

_ = torch.manual_seed(0)

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %%
model, tok = al.load(MODEL)
print(f"{MODEL} on {model.device.type}, {model.dtype}, {model.args.n_layers} layers")


# %% [markdown]
# ## Where the time goes: bytes against FLOPs
#
# Generating one token at batch 1 multiplies one vector by every weight matrix of the model.
# Each weight is read from memory once and used for one multiply and one add, 2 FLOPs. The
# ratio of arithmetic to memory traffic, the *arithmetic intensity*, is therefore about
#
# $$
# I_\text{decode} = \frac{2 N}{N \cdot b} = \frac{2}{b}\ \text{FLOP/byte}, \qquad
# I_\text{prefill}(s) \approx \frac{2 N s}{N \cdot b} = \frac{2 s}{b}\ \text{FLOP/byte},
# $$
#
# for $N$ weights of $b$ bytes each and a prompt of $s$ tokens, which reads the weights once
# for all $s$ positions. A GPU does far more arithmetic per byte than 1: decoding waits on
# memory, prefill on the arithmetic units. The weights that count are all matrices but the
# input embedding (a lookup reads one row of it); the LM head is read for every token.
#
# Here are the numbers for Llama-2-7B in bf16, from its configuration (chapter 1), against
# the H100 SXM's published figures: 3.35 TB/s of memory bandwidth and 989 TFLOP/s of dense
# bf16 tensor-core arithmetic {cite}`nvidia2022h100`.

# %%
def weights_read_per_token(args: al.ModelArgs) -> int:
    """Parameters read for one token: all but the input embedding (the LM head counts even when tied)."""
    n = al.count_parameters(args) - args.vocab_size * args.dim
    return n + (args.vocab_size * args.dim if args.tie_word_embeddings else 0)


args7b = al.ModelArgs.preset("llama2-7b")
n_read = weights_read_per_token(args7b)
bytes_per_token = 2 * n_read  # bf16
H100_BW, H100_FLOPS = 3.35e12, 989e12  # bytes/s and dense bf16 FLOP/s (spec sheet)
print(f"Llama-2-7B parameters: {al.count_parameters(args7b):,}; read per token: {n_read:,}")
print(f"bytes of weights per token (bf16): {bytes_per_token / 1e9:.2f} GB")
print(f"decode upper bound at 3.35 TB/s: {H100_BW / bytes_per_token:.0f} tokens per second")
prefill_flops = 2 * n_read * 512
print(f"prefill of 512 tokens: {prefill_flops / 1e12:.2f} TFLOP, "
      f"at least {prefill_flops / H100_FLOPS * 1e3:.1f} ms at 989 TFLOP/s")
# In bf16, s tokens sharing one read of the weights do s FLOPs per byte read: the ridge is at s = peak / bandwidth.
ridge = H100_FLOPS / H100_BW
print(f"ridge point of the H100: {ridge:.0f} FLOP per byte, i.e. {ridge:.0f} tokens per read of the weights")

# %% [markdown]
# So batch-1 decoding of Llama-2-7B cannot exceed about 250 tokens per second on an H100,
# however clever the code: every token must stream 13.2 GB of weights through the memory
# system. Prefill does 512 times the arithmetic on the same bytes, which puts it past the ridge
# point, where the GPU can keep its arithmetic units busy; there the limit is FLOPs. (Attention
# over the cache adds to both; at these lengths it is a few percent.) The figure draws both
# limits as a function of how many tokens share one read of the weights.

# %%
tokens_per_pass = torch.logspace(0, 13, 200, base=2)  # 1 .. 8192 tokens per weight read
t_memory = bytes_per_token / H100_BW  # seconds per pass, whatever the token count
t_compute = 2 * n_read * tokens_per_pass / H100_FLOPS
attainable = tokens_per_pass / torch.maximum(torch.tensor(t_memory), t_compute)
fig, ax = plt.subplots(figsize=(8, 4))
ax.loglog(tokens_per_pass, attainable, color="C0")
ax.axvline(ridge, color="0.6", ls="--", lw=1)
ax.text(ridge * 1.1, 400, f"ridge: {ridge:.0f} tokens", fontsize=9, color="0.4")
ax.plot([1, 512], [H100_BW / bytes_per_token, H100_FLOPS / (2 * n_read)], "o", color="C1")
ax.annotate("decode, batch 1\n(memory-bound)", (1, attainable[0]), (1.5, 1.5e3), fontsize=9,
            arrowprops=dict(arrowstyle="->", color="0.3"))
ax.annotate("prefill, 512 tokens\n(compute-bound)", (512, attainable.max()), (30, 2.5e4), fontsize=9,
            arrowprops=dict(arrowstyle="->", color="0.3"))
ax.set_xlabel("tokens sharing one read of the weights (batch × prompt length)", fontsize=10)
ax.set_ylabel("tokens per second, at most", fontsize=10)
ax.set_title("Llama-2-7B bf16 on an H100 (spec figures): the roofline", fontsize=11)
ax.grid(True, which="major", alpha=0.3)
plt.show()

# %% [markdown]
# The dashed line is the ridge point, about 295 tokens per pass: below it the weights'
# bandwidth sets the speed, above it the arithmetic. Batch-1 decoding sits at the far left.
# Everything in the rest of this chapter is about getting decode close to its roof, which
# means keeping the GPU reading weights all the time and doing nothing else.
#
# The readable model falls short of the roof for reasons that have nothing to do with the
# weights. Each layer launches a dozen small kernels, and at batch 1 a kernel finishes faster
# than Python can launch the next one, so the GPU idles between them. The generation loop
# asks the GPU for each new token's id (`int(next_id)`), which makes the CPU wait until all
# queued work is done. And the KV cache grows by reallocation, so shapes change every step
# and nothing can be recorded once and replayed.

# %% [markdown]
# ## A static KV cache
#
# The cache of chapter 7 grows as the sequence grows. `FastLlama` allocates it once, for the
# longest sequence it will serve, one pair of tensors per layer of shape
# `[max_batch_size, n_kv_heads, max_seq_len, head_dim]` in the model's dtype, and writes each
# new key and value in place at its position. Every decode step then sees the same shapes and
# the same memory addresses, which is what lets a compiler specialise the step and CUDA graphs
# replay it.
#
# The price: attention runs over all `max_seq_len` slots, not just the filled ones, so a mask
# must hide the empty and stale slots. The mask is the causal mask of chapter 6 built once,
# `[max_seq_len, max_seq_len]`; the step picks row `pos` of it with the position held in a
# device tensor, so no Python integer that changes per step enters the step.

# %%
max_seq = 8
causal = torch.ones(max_seq, max_seq, dtype=torch.bool).tril()  # row p: keys 0..p visible
pos = torch.tensor([3])  # the position of the new token, as a tensor
print(causal[pos].int())  # [1, max_seq]: the mask row for this step

# %% [markdown]
# With that row, attention over the full preallocated cache gives exactly what attention over
# the filled prefix gives: the masked slots get weight zero, whatever they hold. A check with
# random keys and values, the unused slots filled with garbage:

# %%
torch.manual_seed(0)
q = torch.randn(1, 4, 1, 16)  # [batch, heads, 1 new token, head_dim]
k_cache, v_cache = torch.randn(1, 4, max_seq, 16), torch.randn(1, 4, max_seq, 16)  # slots 4..7: garbage
F = torch.nn.functional
full = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=causal[pos][None, None])
prefix = F.scaled_dot_product_attention(q, k_cache[:, :, :4], v_cache[:, :, :4])
print("masked full cache == filled prefix:", torch.allclose(full, prefix, atol=1e-6))

# %% [markdown]
# `F.scaled_dot_product_attention` picks a fused kernel for the device: on a GPU, a
# FlashAttention-style kernel {cite}`dao2022flashattention` or a memory-efficient one, which
# computes softmax and the weighted sum in one pass without writing the score matrix to
# memory. The readable model uses it too; what changes here is only the mask.
#
# The cache length is a real cost at decode: the step reads every slot. For the bundled model
# in float32 each slot holds 2 × 30 layers × 3 KV heads × 64 × 4 bytes, so a cache sized for the
# model's whole context of 8192 positions would add about two thirds of the weights' own traffic
# to every step:

# %%
a = model.args
slot_bytes = 2 * a.n_layers * a.n_kv_heads * a.head_dim * model.dtype.itemsize
weight_bytes = weights_read_per_token(a) * model.dtype.itemsize
print(f"{MODEL}: {slot_bytes:,} bytes per cache slot; weights read per token: {weight_bytes / 1e6:.0f} MB")
for length in (256, 2048, a.max_seq_len):
    extra = slot_bytes * length
    print(f"  cache of {length:>5} slots: {extra / 1e6:7.1f} MB read per decode step, "
          f"{extra / weight_bytes:4.0%} of the weights' bytes")

# %% [markdown]
# So `FastLlama(model, max_seq_len=None)` sizes the cache per request, prompt plus new tokens
# rounded up to a multiple of 256 (few distinct shapes, so few recompilations), and a fixed
# `max_seq_len` can be given instead. Here is the step, from the package:

# %%
Markdown(f"```python\n{textwrap.dedent(inspect.getsource(FastLlama._decode))}```")

# %% [markdown]
# ## Fused projections
#
# Attention starts with three matrix products of the same input, `wq·x`, `wk·x` and `wv·x`,
# and SwiGLU with two, `w1·x` and `w3·x`. Stacking the weights row-wise turns each group into
# one product: one kernel launch instead of three, and one longer, better-shaped read of the
# weights. `FastLlama` concatenates them once at construction,
#
# $$
# W_{qkv} = \begin{bmatrix} W_q \\ W_k \\ W_v \end{bmatrix}, \qquad
# W_{13} = \begin{bmatrix} W_1 \\ W_3 \end{bmatrix},
# $$
#
# and then points the model's own `wq`, `wk`, `wv`, `w1`, `w3` at row slices of the fused
# tensors, so the weights still sit in memory once (a 7B model on a 16 GB GPU has no room for
# a second copy of two thirds of its weights).
#
# Whether this pays is a question for measurement. On the two CPU cores that wrote this book,
# one fused product took as long as the separate ones (the timing table below compares them),
# so `FastLlama` fuses by default only on CUDA, where each saved product is a saved kernel
# launch; `fuse=True` asks for it anywhere.

# %%
fast = FastLlama(model, fuse=True)
w = fast.layers[0]
print("wqkv:", tuple(w["wqkv"].shape), " w13:", tuple(w["w13"].shape))
print("model's wq is a view of wqkv:", model.layers[0].attention.wq.weight.data_ptr() == w["wqkv"].data_ptr())
print("embedding shared, not copied:", fast.tok_embeddings.data_ptr() == model.tok_embeddings.weight.data_ptr())

# %% [markdown]
# ## A loop that never waits
#
# A GPU runs asynchronously: Python queues kernels and moves on. It only stops to wait when
# it needs a value back on the host, such as `int(next_id)` to decide what to feed next, or
# `tokens.min()` to validate input. Each such sync drains the queue, and the GPU then idles
# while Python launches the next step. `FastLlama.generate` keeps everything on the device:
# the position is a device tensor incremented in place, sampling runs on the device
# (temperature and top-p as in chapter 9, with the draw done as an argmax of $p_i / E_i$,
# $E_i \sim \text{Exp}(1)$, which picks token $i$ with probability $p_i$ and needs no
# `torch.multinomial`), and the new ids go into a device buffer that is copied to the host
# once, at the end.

# %%
Markdown(f"```python\n{textwrap.dedent(inspect.getsource(FastLlama.generate))}```")

# %% [markdown]
# ## Compiling the step, and CUDA graphs
#
# `torch.compile` traces the one-token step into a graph and generates fused kernels for it
# (Triton on a GPU, C++ on a CPU): the float32 RMSNorm, RoPE and the SiLU product become a few
# kernels instead of dozens. With `mode="reduce-overhead"` on CUDA it also records the whole
# step as a *CUDA graph*: the sequence of kernel launches is captured once and replayed with
# one launch, so Python's per-kernel cost disappears. Replay demands what the previous sections
# arranged: fixed shapes, fixed addresses (the static cache), and no host syncs inside the
# step. The prompt runs separately (prefill), eagerly, because its length changes from call to
# call and it is compute-bound anyway.
#
# Compiling the 30-layer step on the two CPU cores that executed this page took from about
# 35 s (with inductor's on-disk cache warm) to over three minutes (cold, on a busy machine) in
# the tests, so this page does not compile live on a CPU; the compiled variant's CPU speed is
# in the benchmark results below. On a GPU the timing cell below compiles (a minute or so).

# %% [markdown]
# ## Same tokens as the readable model
#
# Before any timing: the fast path must produce what the readable model produces. Greedy
# decoding makes that a sharp test, since the argmax at every step must agree. On the bundled
# model in float32 all tokens agree; in bf16 the two paths round differently and greedy paths
# may part after a near-tie, so there we check the first 8.

# %%
prompt = tok.encode("The capital of France is")
n_new = 16
want = list(generate_ids(model, prompt, n_new))
got = fast.generate(prompt, n_new)
n_check = n_new if model.dtype == torch.float32 else 8
assert got[:n_check] == want[:n_check], (got, want)
print(f"greedy tokens identical for {n_check} steps:", repr(tok.decode(got)))
with torch.inference_mode():
    tokens = torch.tensor([prompt + want], device=model.device)
    ref = model(tokens)[0, len(prompt) - 1 : -1]  # logits that chose each new token
    steps = [fast.prefill(tokens[:, : len(prompt)])[0]]
    steps += [fast.decode_step(tokens[:, i], i)[0] for i in range(len(prompt), tokens.shape[1] - 1)]
diff = (torch.stack(steps) - ref).abs().max().item()
if model.dtype == torch.float32:
    print(f"max abs logit difference < 1e-4: {diff < 1e-4}")
else:  # bf16: relative to the largest logit
    print(f"max logit difference relative to the largest logit < 5e-2: {diff / ref.abs().max().item() < 5e-2}")

# %% [markdown]
# ## What each change buys, measured here
#
# Now the same generation, timed on whatever device this page runs on: the readable model (its
# cache grows, its loop syncs every token), then `FastLlama` without fused projections (static
# cache, sync-free loop), then with them. Each variant generates the same tokens from the same
# short prompt; the rounds alternate between variants so drift in the machine's speed hits all
# alike, and the median over rounds is reported.

# %%
def readable(n):
    list(generate_ids(model, prompt, n))


variants = {"readable model (eager)": readable}
for label, fuse in (("static cache", False), ("static cache + fused", True)):
    fl = FastLlama(model, fuse=fuse)
    variants[label] = lambda n, fl=fl: fl.generate(prompt, n)
if model.device.type == "cuda":  # compiling on a CPU takes minutes: see the benchmark results instead
    fc = FastLlama(model, compile=True)
    variants["+ torch.compile (CUDA graphs)"] = lambda n, fc=fc: fc.generate(prompt, n)


def timed(fn, n):
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(n)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# %%
n_tokens, rounds = 8, 2
for fn in variants.values():  # warm-up (and, on a GPU, compilation)
    fn(2)
times = {label: [] for label in variants}
for _ in range(rounds):
    for label, fn in variants.items():
        times[label].append(timed(fn, n_tokens))  # prompt + 8 new tokens
base = statistics.median(times["readable model (eager)"])
for label, ts in times.items():
    t = statistics.median(ts)
    print(f"{label:<22} {t / n_tokens * 1e3:.1f} ms per token, speed-up {base / t:.2f}, {n_tokens / t:.1f} tok/s")

# %% [markdown]
# On the two shared CPU cores that ran this page the differences are small, within the
# run-to-run noise of a shared machine: a CPU has no kernel-launch gap to close, and a "sync"
# costs nothing when the device is the CPU itself. The changes are aimed at a GPU, where the
# readable model spends much of each step launching kernels and waiting for syncs.

# %% [markdown]
# ## The benchmark: against transformers and against the roof
#
# `benchmarks/gpu_decode.py` measures, in one run and on the same weight tensors: this package's
# readable model, `FastLlama` eager and compiled, transformers' `LlamaForCausalLM.generate`
# eager, and transformers with a static cache and `torch.compile(hf.forward,
# mode="reduce-overhead", fullgraph=True)`, the recipe of its documentation. It also times a
# large device-to-device copy and a dense matmul, so each speed can be set against what the
# same machine can do, and records everything in `benchmarks/RESULTS.md`. This page reads that
# file:

# %%
results = Path("../benchmarks/RESULTS.md")
text = results.read_text() if results.is_file() else ""
sections = {s.splitlines()[0].strip(): s for s in text.split("\n## ")[1:]}
cpu = {h: s for h, s in sections.items() if h.startswith("CPU")}
gpu = {h: s for h, s in sections.items() if not h.startswith("CPU")}
print("results file found:", results.is_file())
print("CPU sections:", list(cpu) or "none")
print("GPU sections:", list(gpu) or "none: no GPU measurement has been recorded yet")

# %%
for heading, section in cpu.items():
    print(f"## {section.strip()}")

# %% [markdown]
# The ratios that matter, read from the same tables: the compiled step against the readable
# model and against `FastLlama` eager, and this package against transformers.

# %%
def table_rows(section):
    """(shape heading, variant, prompt length, decode tok/s) for every row of the section's tables."""
    rows, shape = [], None
    for line in section.splitlines():
        if line.startswith("### "):
            shape = line[4:].strip()
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[1].isdigit():
            rows.append((shape, cells[0], int(cells[1]), float(cells[4])))
    return rows


for heading, section in cpu.items():
    rows = table_rows(section)
    for shape, prompt_len in sorted({(r[0], r[2]) for r in rows}):
        speed = {r[1]: r[3] for r in rows if (r[0], r[2]) == (shape, prompt_len)}
        print(f"{shape}, prompt of {prompt_len} tokens, decode speed ratios:")
        for num, den in (("ours fast+compile", "ours eager"), ("ours fast+compile", "ours fast"),
                         ("ours fast", "ours eager"), ("ours eager", "hf eager"),
                         ("ours fast+compile", "hf static+compile")):
            if num in speed and den in speed:
                print(f"  {num} / {den}: {speed[num] / speed[den]:.2f}")


# %% [markdown]
# On this CPU the compiled step is the only change that clearly pays: in the run recorded above
# it decoded 1.07 to 1.14 times as fast as the readable model, and 1.07 to 1.10 times as fast as
# transformers' compiled static-cache path, with the same greedy tokens. The static cache and
# the sync-free loop alone change little here (1.00 to 1.03), as expected on a device with no
# launch gap to close. Every variant reads its weights at about 40% of the copy bandwidth
# measured in the same run, so on this CPU even the compiled step stays well below its roof.

# %% [markdown]
# The machine that wrote this chapter had no GPU, so the GPU rows of the comparison (the ones
# the changes are for) were not measured then. The cell below shows every GPU section of
# `benchmarks/RESULTS.md`, with its date and device, once someone has run the benchmark on a
# GPU; while there is none, it says so.

# %%
for heading, section in gpu.items():
    print(f"## {section.strip()}\n")
if not gpu:
    print("No GPU results in benchmarks/RESULTS.md yet: GPU speeds are unmeasured. A GPU run would be\n"
          "compared with the roof computed above (about 250 tokens per second for Llama-2-7B on an H100).")

# %% [markdown]
# ## Running it on a GPU (Colab)
#
# 1. In Colab, *Runtime → Change runtime type → GPU* (a T4 is enough for the bundled model; a
#    7B model in bf16 needs about 14 GB for its weights, so an L4 or A100 for the Llama-2-7B
#    shape with transformers beside it).
# 2. Run this chapter with the `MODEL` line changed, e.g. `MODEL = "meta-llama/Llama-2-7b-hf"`
#    (gated: accept the licence and log in first). `al.load` picks CUDA and bf16, and the timing
#    cell above then also compiles the step with CUDA graphs.
# 3. For the full benchmark, clone the repository and run the script; it writes its section into
#    `benchmarks/RESULTS.md`:
#
# ```bash
# git clone https://github.com/annotated-llama/annotated-llama && cd annotated-llama
# pip install -q --no-deps -e . && pip install -q safetensors "gguf>=0.10" sentencepiece tokenizers
# python -m annotated_llama fetch
# python benchmarks/gpu_decode.py                      # llama2-7b shape (random weights) and smollm2-135m
# python benchmarks/gpu_decode.py --model meta-llama/Llama-2-7b-hf   # a real checkpoint
# ```
#
# The random-weight Llama-2-7B shape needs no download: the model is built on the meta device
# and materialised on the GPU in bf16, so its speed can be measured anywhere a 7B model fits.

# %% [markdown]
# ## Loading a 7B checkpoint within memory
#
# A 7B model in bf16 is 13.5 GB. Building it the ordinary way would first allocate and
# randomly initialise every weight in float32 (27 GB), then load the checkpoint over them. The
# package avoids both: `build_model` creates the model on the *meta* device, where tensors have
# shapes but no storage, converts each loaded tensor to the target device and dtype one at a
# time, and hands them to the model with `load_state_dict(..., assign=True)`, which adopts the
# tensors instead of copying into preallocated ones. For Hugging Face checkpoints the
# safetensors reader reads each tensor straight onto the target device, so the peak memory is
# about one copy of the weights.

# %%
Markdown(f"```python\n{inspect.getsource(al.loading.build_model)}```")

# %% [markdown]
# ## What we have now
#
# The same weights and the same logits as the readable model, served by a decode path built
# for a GPU: a static `[batch, n_kv_heads, max_seq_len, head_dim]` cache per layer, a causal mask
# row picked by a position tensor, fused `[q + k + v rows, dim]` and `[2 · ffn_dim, dim]`
# projections, a loop without host syncs, and a step that `torch.compile` can turn into one CUDA
# graph replay. The roof for batch-1 decoding is the weights' bytes divided by the memory
# bandwidth; the benchmark measures how close each implementation gets, on the machine it runs
# on. The appendix tabulates the shapes of the model families, from which the same roof can be
# computed for any of them.
