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
# # 7. The KV cache
#
# Chapter 6 ended with the attention output of every position, computed from the queries,
# keys and values of the whole sequence at once. That is what a forward pass over a prompt
# does. Generation is different: it asks for one new token, appends it, and asks again. Run
# naively, every step feeds the whole sequence through all the layers again, so the model
# recomputes, at step $t$, the keys and values of the $t - 1$ positions it already processed at
# step $t - 1$.
#
# Those keys and values have not changed. Under the causal mask, position $j$ only ever sees
# positions $0, \dots, j$, so the hidden state $x_j$ at every layer, and with it
# $k_j = \operatorname{RoPE}_j(W_k x_j)$ and $v_j = W_v x_j$, depends on the first $j + 1$
# tokens only. The new token at position $t$ needs its own query and the keys and values of
# all positions up to $t$:
#
# $$
# o_t = \sum_{j=0}^{t} \operatorname{softmax}_j\!\left(\frac{q_t \cdot k_j}{\sqrt{d_\text{head}}}\right) v_j ,
# \qquad k_j, v_j \text{ for } j < t \text{ read from the cache.}
# $$
#
# The {term}`KV cache` keeps $k_j$ and $v_j$ of every layer as they are computed. Each step then runs
# the model on the one new token: it computes that token's query, key and value, appends the
# key and value to the cache, and attends over the cache. This chapter checks that this gives
# the same numbers as recomputation, measures what the cache costs in memory, and what it saves
# in time.

# %% [markdown]
# ## Set-up

# %% tags=["remove-input"]
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # on Colab only: install the package, keeping Colab's own torch
    from IPython import get_ipython

    REPO = "git+https://github.com/annotated-llama/annotated-llama"
    DEPS = 'numpy safetensors "gguf>=0.16" sentencepiece protobuf tokenizers tiktoken'
    get_ipython().run_line_magic("pip", f'install -q --no-deps "annotated-llama @ {REPO}"')
    get_ipython().run_line_magic("pip", f"install -q {DEPS}")
    get_ipython().system("python -m annotated_llama fetch")

# %% tags=["remove-input"]
import contextlib
import inspect
import os
import textwrap
import time
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.config import ModelArgs
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference only: no autograd graph anywhere in this chapter
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %% [markdown]
# The model is the bundled SmolLM2-135M unless you change the next cell: a Hugging Face id, a
# local directory or a GGUF file. In 16 bits the weights take parameters × 2 bytes:
# `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B` (gated,
# about 2.3 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf` (12.55 GiB) and
# `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the full table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# We load our model and, as the reference, transformers' `LlamaForCausalLM` built around the
# same tensors (`as_transformers`: one copy of the weights; what is shared is the weights as our
# loader read them, what is independent is transformers' model code and its own cache). The
# bundled model's matrices are 4-bit ({term}`Q4_1`) in its GGUF file, dequantized to float32 at load.
# Every comparison goes through `check_close`, which asserts a relative difference within a
# tolerance set by the model's dtype (float32 on a CPU; bfloat16 or float16 on a GPU, where two
# orders of the same arithmetic round differently).

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
hf = as_transformers(model)
a = model.args
print(f"{model.device.type}, {model.dtype}; tolerance {RELATIVE_TOLERANCE[model.dtype]:.2g}")
print(f"n_layers {a.n_layers}, n_heads {a.n_heads}, n_kv_heads {a.n_kv_heads}, "
      f"head_dim {a.head_dim}")


def show(obj):
    """Render the package's source of ``obj`` as a highlighted code block."""
    return Markdown(f"```python\n{textwrap.dedent(inspect.getsource(obj))}```")


# %% [markdown]
# ## Old keys do not change
#
# First the claim itself, on the real model. We run it twice, on a prompt and on the prompt
# with a few more tokens, and record with forward hooks what the key and value projections
# (`wk`, `wv`) of every layer produce. If the keys and values of the shared positions agree,
# the longer run recomputed them for nothing. (RoPE then rotates each key by an angle that
# depends on its position alone, so the rotated keys agree too.)

# %%
def record_kv(tokens):
    """Run the model on ``tokens``; return the outputs of every layer's wk and wv."""
    seen, hooks = {}, []
    for i, layer in enumerate(model.layers):
        for name in ("wk", "wv"):
            module = getattr(layer.attention, name)
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, key=(i, name): seen.__setitem__(key, out)))
    try:
        model(tokens, last_only=True)  # the logits are not needed, only what the hooks see
    finally:
        for h in hooks:
            h.remove()
    return seen  # {(layer, "wk"|"wv"): [1, seq, n_kv_heads * head_dim]}


prompt = "The capital of France is"
ids = torch.tensor([tok.encode(prompt + " Paris. The capital of Italy is")], device=model.device)
T = ids.shape[1]
n_short = T // 2
short = ids[:, :n_short]  # [1, n_short]: the first half of the tokens
kv_short, kv_long = record_kv(short), record_kv(ids)
for key in kv_short:
    check_close(kv_long[key][:, :n_short], kv_short[key], model.dtype, f"{key} of shared positions")
print(f"{n_short} tokens, then {T}; {len(kv_short)} key/value tensors compared")
print(f"first {n_short} positions, every layer: the same within tolerance")

# %% [markdown]
# Every key and value of the shared positions, in all layers, came out the same (to rounding)
# whether the model saw the short prompt or the long one. Only the new positions bring new keys
# and values.
#
# ## A cache by hand, for one layer
#
# Now we build the cache for the attention of layer 0, in plain PyTorch and in float32 (so the
# comparison is tight on any device). The input is what layer 0's attention reads: the
# normalised token embeddings.

# %%
layer = model.layers[0]
att = layer.attention
H, KV, hd = a.n_heads, a.n_kv_heads, a.head_dim
Wq, Wk, Wv, Wo = (w.weight.float() for w in (att.wq, att.wk, att.wv, att.wo))
x = layer.attention_norm(model.tok_embeddings(ids)).float()  # [1, T, dim]
freqs = model.freqs_cis(model.device)[:T]  # [T, head_dim/2] complex


def project(x, freqs):
    """Queries, keys and values of the positions in ``x`` [1, s, dim], rotated, heads first."""
    s = x.shape[1]
    q = (x @ Wq.T).view(1, s, H, hd)  # [1, s, n_heads, head_dim]
    k = (x @ Wk.T).view(1, s, KV, hd)  # [1, s, n_kv_heads, head_dim]
    v = (x @ Wv.T).view(1, s, KV, hd)
    q, k = al.model.apply_rotary_emb(q, freqs), al.model.apply_rotary_emb(k, freqs)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [1, heads, s, head_dim]


def attend(q, k, v, mask=None):
    """softmax(q kᵀ / √head_dim) v; each KV head is shared by n_heads / n_kv_heads query heads."""
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-2, -1) / hd**0.5  # [1, n_heads, s_q, s_k]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v  # [1, n_heads, s_q, head_dim]
    return out.transpose(1, 2).reshape(1, q.shape[2], H * hd) @ Wo.T  # [1, s_q, dim]


# %% [markdown]
# The full computation: all $T$ positions at once, with the causal mask.

# %%
q, k, v = project(x, freqs)
full = attend(q, k, v, al.model.causal_mask(T, 0, x.device))  # [1, T, dim]
print("full:", tuple(full.shape))

# %% [markdown]
# The incremental one: positions arrive one at a time. Each step projects only the new position,
# appends its key and value to the cache, and lets its single query attend over everything in
# the cache. No mask is needed: the cache holds no future positions.

# %%
cache_k = torch.zeros(1, KV, 0, hd, device=x.device)  # [1, n_kv_heads, 0, head_dim]: empty
cache_v = torch.zeros(1, KV, 0, hd, device=x.device)
steps = []
for t in range(T):
    q_t, k_t, v_t = project(x[:, t : t + 1], freqs[t : t + 1])  # one position: [1, heads, 1, hd]
    cache_k = torch.cat([cache_k, k_t], dim=2)  # [1, n_kv_heads, t + 1, head_dim]
    cache_v = torch.cat([cache_v, v_t], dim=2)
    steps.append(attend(q_t, cache_k, cache_v))  # [1, 1, dim]
incremental = torch.cat(steps, dim=1)  # [1, T, dim]
check_close(incremental, full, torch.float32, "incremental vs full, layer 0")
print("cache after the last step:", tuple(cache_k.shape))
print("incremental vs full, float32: within 1e-05 (relative)")

# %% [markdown]
# The same $T$ outputs, but each step projected one position instead of all positions so far.
# Over a generation of $N$ tokens that is the difference between $N$ projections and
# $1 + 2 + \dots + N = N(N+1)/2$ of them, in every layer:

# %%
for n in (16, 128, 1024):
    print(f"N = {n:4d}: {n:4d} positions with a cache, {n * (n + 1) // 2:6d} without")

# %% [markdown]
# ## The package's cache
#
# The package keeps one `KVCache` per attention layer, in `al.cache`. It stores keys and values
# heads-first, `[batch, n_kv_heads, capacity, head_dim]`, the layout the attention kernel reads,
# and writes the new positions at `start_pos`. Rather than concatenating a new tensor every step
# as we did above (which copies the whole cache each time), it allocates room for many
# positions and doubles it when it runs out.

# %%
show(al.cache.KVCache)

# %% [markdown]
# `Attention.forward` calls `update` after RoPE and attends over what it returns. With one new
# token (`seq == 1`) it passes no mask, as in our loop; for a prompt at `start_pos == 0` it asks
# the kernel for its built-in causal mask (`is_causal=True`); for several new tokens after a
# cached prefix it passes `causal_lower_right`, the causal triangle aligned to the last cached
# position (chapter 6's rectangular mask), expanding K and V for grouped-query attention first
# so that no mask is ever combined with `enable_gqa` (chapter 6 says why).

# %%
show(al.model.Attention.forward)

# %% [markdown]
# ## Incremental equals full, on the whole model
#
# The promise of `model(tokens, start_pos)`: feeding the prompt, then one token at a time with
# increasing `start_pos`, gives the same logits as one call on the whole sequence. We check it
# on the tokens from above: the first five as the prompt, the others one by one.

# %%
full_logits = model(ids)  # [1, T, vocab]: one call, every position's logits (all compared)
n_prompt = min(5, T - 1)  # at least one decode step
parts = [model(ids[:, :n_prompt], start_pos=0)]  # prefill: [1, n_prompt, vocab]
for pos in range(n_prompt, T):
    parts.append(model(ids[:, pos : pos + 1], start_pos=pos))  # decode: [1, 1, vocab]
inc_logits = torch.cat(parts, dim=1)  # [1, T, vocab]
check_close(inc_logits, full_logits, model.dtype, "incremental vs one call")
same = int((inc_logits.argmax(-1) == full_logits.argmax(-1)).sum())
print(f"{len(parts) - 1} decode steps; model.cache_len = {model.cache_len}")
print("cache of layer 0:", tuple(model.layers[0].attention.cache.k.shape),
      "[batch, n_kv_heads, capacity, head_dim]")
print("logits, incremental vs one call: within tolerance")
print(f"the same most likely next token at {same} of {T} positions")

# %% [markdown]
# A call at `start_pos=0` with the same batch size reuses the cache already allocated and
# overwrites it from position 0; here the earlier calls had grown it to room for all the
# positions. Whatever an older, longer sequence left beyond the new end is never read:
# `update` returns only the first `start_pos + seq` positions.
#
# transformers has its own cache (a `DynamicCache` object returned as `past_key_values`). Its
# incremental logits agree with ours too:

# %%
out = hf(ids[:, :n_prompt], use_cache=True)
hf_parts, past = [out.logits], out.past_key_values
for pos in range(n_prompt, T):
    out = hf(ids[:, pos : pos + 1], past_key_values=past, use_cache=True)
    hf_parts.append(out.logits)
    past = out.past_key_values
hf_inc = torch.cat(hf_parts, dim=1)  # [1, T, vocab]
check_close(inc_logits, hf_inc, model.dtype, "ours vs transformers, both incremental")
print(f"ours vs transformers, both incremental: within {RELATIVE_TOLERANCE[model.dtype]:.2g} "
      "(relative)")

# %% [markdown]
# ## What the cache costs in memory
#
# Every layer stores one key and one value vector per KV head for every position. Per token of
# context, the cache takes
#
# $$
# 2 \times n_\text{layers} \times n_\text{kv\_heads} \times d_\text{head} \times
# \text{bytes per number}.
# $$
#
# For Llama-2-7B in float16 this is $2 \times 32 \times 4096 \times 2$ bytes (32 heads of 128
# make 4096), computed here from the package's preset:

# %%
def kv_bytes_per_token(args, bytes_per_number):
    return 2 * args.n_layers * args.n_kv_heads * args.head_dim * bytes_per_number


llama2_7b = ModelArgs.preset("llama2-7b")
per_token = kv_bytes_per_token(llama2_7b, 2)
print(f"Llama-2-7B, fp16: {per_token:,} bytes = {per_token // 1024} KiB per token")
print(f"full context of {llama2_7b.max_seq_len} tokens: "
      f"{per_token * llama2_7b.max_seq_len / 2**30:.0f} GiB")
assert per_token == 2 * 32 * 4096 * 2 == 524_288

# %% [markdown]
# Half a megabyte per token, 2 GiB for one sequence at the full 4096-token context.
#
# An estimate one meets for Llama-2-7B is about 270 MB for 1,000 tokens. That is the size of a
# different cache: one vector of the residual stream per layer per token,
# $1000 \times 32 \times 4096 \times 2$ bytes, or with the embedding output counted as a 33rd
# vector, $1000 \times 33 \times 4096 \times 2$. Such a cache would spare the layers below, but
# every step would still have to push every cached state through `wk` and `wv` again, in every
# layer; the KV cache stores the keys and values themselves, two vectors of
# $n_\text{kv\_heads} \cdot d_\text{head}$ numbers per layer per token. For a multi-head model,
# where $n_\text{kv\_heads} \cdot d_\text{head} = d$, that is twice the residual figure; with
# grouped-query attention (chapter 6) {cite}`ainslie2023gqa` it can be less. From the presets,
# for 1,000 tokens in 16 bits (4 bytes for the bundled model in float32):

# %%
def cache_sizes(args, bytes_per_number, n_tokens=1000):
    """Bytes for n_tokens: residual states (one per layer), the K/V cache, and K/V without GQA."""
    residual = n_tokens * args.n_layers * args.dim * bytes_per_number
    kv = n_tokens * kv_bytes_per_token(args, bytes_per_number)
    mha = n_tokens * 2 * args.n_layers * args.n_heads * args.head_dim * bytes_per_number
    return residual, kv, mha


residual, kv, _ = cache_sizes(llama2_7b, 2)
with_embedding = 1000 * (llama2_7b.n_layers + 1) * llama2_7b.dim * 2
print(f"Llama-2-7B, fp16, 1,000 tokens: residual states {residual / 1e6:.0f} MB "
      f"({with_embedding / 1e6:.0f} MB with the embedding output), K/V cache {kv / 1e6:.0f} MB")
print(f"{'':22} {'residual states':>15} {'K/V cache':>10} {'K/V if MHA':>11}")
for label, name, nbytes in [("SmolLM2-135M, fp32", "smollm2-135m", 4),
                            ("Llama-2-7B, fp16", "llama2-7b", 2),
                            ("Llama-3-8B, bf16", "llama3-8b", 2),
                            ("Llama-3.2-1B, bf16", "llama3.2-1b", 2)]:
    p = ModelArgs.preset(name)
    residual, kv, mha = cache_sizes(p, nbytes)
    print(f"{label:22} {residual / 1e6:12.1f} MB {kv / 1e6:7.1f} MB {mha / 1e6:8.1f} MB")
assert cache_sizes(llama2_7b, 2)[1] == 2 * cache_sizes(llama2_7b, 2)[0] == 524_288_000

# %% [markdown]
# For Llama-2-7B the real cache, 524 MB for 1,000 tokens, is twice the residual-state estimate
# (262 MB, or 270 MB counting the embeddings). Llama-3-8B has the same `dim` and layer count,
# but its 32 query heads share 8 KV heads: its cache, 131 MB, is 4 times smaller than it would
# be with multi-head attention, and half the residual-state figure.
#
# Per token, for several models (GQA: Llama-2-70B has 64 query heads but 8 KV heads, Llama-3-8B
# and Llama-3.2-1B 32 and 8):

# %%
MODELS = {  # label: (preset, bytes per number)
    "SmolLM2-135M, fp32": ("smollm2-135m", 4),
    "SmolLM2-135M, bf16": ("smollm2-135m", 2),
    "Llama-2-7B, fp16": ("llama2-7b", 2),
    "Llama-2-70B, fp16": ("llama2-70b", 2),
    "Llama-3-8B, bf16": ("llama3-8b", 2),
    "Llama-3.2-1B, bf16": ("llama3.2-1b", 2),
}
for label, (name, nbytes) in MODELS.items():
    p = ModelArgs.preset(name)
    b = kv_bytes_per_token(p, nbytes)
    mha = 2 * p.n_layers * p.n_heads * p.head_dim * nbytes  # one KV head per query head
    print(f"{label:20} {p.n_layers:2d} layers x {p.n_kv_heads:2d} KV heads x {p.head_dim:3d}: "
          f"{b / 1024:6.1f} KiB/token (without GQA: {mha / 1024:6.1f})")

# %% [markdown]
# Llama-2-70B, ten times the parameters of Llama-2-7B, needs less cache per token (320 KiB
# against 512), because its 64 query heads share 8 KV heads; without GQA it would need
# 2.5 MiB. The bundled model (the first two lines) needs 45 KiB per token in float32.
#
# The package's cache tensors follow the formula: after the run above, the bytes held by all
# layers' caches, divided by the capacity and the batch, give the per-token figure for the
# model loaded above, in the dtype it runs in.

# %%
cache = model.layers[0].attention.cache
held = sum(layer.attention.cache.nbytes() for layer in model.layers)
formula = kv_bytes_per_token(a, cache.k.element_size())
print(f"{held:,} bytes in {a.n_layers} caches of capacity {cache.capacity}, batch {cache.batch}")
print(f"per token: {held // (cache.capacity * cache.batch):,} bytes; formula: {formula:,}")
assert held == formula * cache.capacity * cache.batch

# %% [markdown]
# For a whole sequence, multiply by the context length (and by the batch size, for several
# sequences at once). On a log scale, the growth is linear in the context for every model; the
# lines end at each model's maximum context or at 8192 tokens.

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for label, (name, nbytes) in MODELS.items():
    p = ModelArgs.preset(name)
    ctx = torch.logspace(7, 13, 61, base=2)  # 128 .. 8192 tokens
    ctx = ctx[ctx <= p.max_seq_len]
    gib = ctx * kv_bytes_per_token(p, nbytes) / 2**30
    ax.plot(ctx, gib, label=label, lw=2, ls="--" if "SmolLM2" in label else "-")
    print(f"{label:20} {int(ctx[-1]):5d} tokens: {gib[-1].item():6.2f} GiB")
ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="KV cache (GiB)",
       title="KV cache of one sequence, by context length")
ax.set_xticks([128, 512, 2048, 8192], ["128", "512", "2048", "8192"])
ax.grid(True, which="major", alpha=0.3)
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# ## What the cache saves in time
#
# We greedily generate $N$ tokens from the prompt, two ways, with the same model:
#
# - with the cache: the prompt at `start_pos=0` (the {term}`prefill <Prefill>`), then one token
#   per call with increasing `start_pos` (the {term}`decode <Decode>` steps), as the package's
#   `generate` does;
# - without it: step $t$ calls the model on the whole sequence so far, from `start_pos=0`, so
#   every position is recomputed. The model still writes its cache, from position 0, but each
#   call reads back only what it has just written. To do exactly the same steps, this run feeds
#   the tokens the cached run chose.
#
# Both ask only for the last position's logits (`last_only=True`), and both wait for the chosen
# token at every step (`int(...)`), so that each timing covers the work of its step, on a GPU
# too. First, both must give the same next-token logits at every step:

# %%
N_MAX = 16  # tokens per generation: small enough to keep this chapter quick on a CPU
prompt_ids = tok.encode(prompt)
P = len(prompt_ids)


def generate_cached(n):
    """n greedy tokens with the cache: the prompt once, then one new token per call."""
    ids, seconds, logits = [], [], []
    x, pos = torch.tensor([prompt_ids], device=model.device), 0
    for _ in range(n):
        start = time.perf_counter()
        out = model(x, start_pos=pos, last_only=True)[:, -1]  # [1, vocab]
        next_id = int(out.argmax(-1))  # waits for the result
        seconds.append(time.perf_counter() - start)
        ids.append(next_id)
        logits.append(out)
        pos += x.shape[1]
        x = torch.tensor([[next_id]], device=model.device)  # [1, 1]
    return ids, seconds, torch.cat(logits)  # logits: [n, vocab]


def generate_recomputed(ids):
    """The same steps without the cache: step t runs the whole sequence, prompt + ids[:t]."""
    tokens = torch.tensor([prompt_ids + ids], device=model.device)  # [1, P + n]
    own, seconds, logits = [], [], []
    for t in range(len(ids)):
        start = time.perf_counter()
        out = model(tokens[:, : P + t], start_pos=0, last_only=True)[:, -1]  # every position
        own.append(int(out.argmax(-1)))
        seconds.append(time.perf_counter() - start)
        logits.append(out)
    return own, seconds, torch.cat(logits)


ids_cached, _, logits_cached = generate_cached(N_MAX)
ids_recomputed, _, logits_recomputed = generate_recomputed(ids_cached)
check_close(logits_cached, logits_recomputed, model.dtype, "next-token logits, cache vs none")
agree = sum(c == r for c, r in zip(ids_cached, ids_recomputed))
print(f"{N_MAX} steps, prompt of {P} tokens: next-token logits with and without the cache "
      "within tolerance")
print(f"the same greedy token at {agree} of {N_MAX} steps:", repr(tok.decode(ids_cached)))

# %% [markdown]
# ### Calibration
#
# Timings depend on the machine and on what else it runs. Before measuring, we time one fixed
# call several times, the model on the prompt, and keep the median. On a CPU we time it with
# PyTorch's default number of threads and with one thread: on an idle machine the default is
# usually the faster; on a busy one (this book is executed on a shared machine) threads that must wait
# for each other at every operation can make it many times slower, and unevenly so. The
# measurement itself runs on one thread on a CPU, so that it depends less on that. The load
# average (processes wanting to run, averaged over a minute) is printed as a second hint.

# %%
ON_CPU = model.device.type == "cpu"
DEFAULT_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def cpu_threads(n):
    """Run the block with n PyTorch threads on a CPU (no effect on a GPU's kernels)."""
    if not ON_CPU:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


def median_seconds(call, repeats=3):
    """Median wall time of call() over `repeats` runs, after one untimed run."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


def prompt_call():
    return int(model(torch.tensor([prompt_ids], device=model.device), last_only=True).argmax())


def load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


TIMING_THREADS = 1 if ON_CPU else DEFAULT_THREADS
calibration = {}
for label, n in [("PyTorch's default CPU threads", DEFAULT_THREADS), ("one CPU thread", 1)]:
    with cpu_threads(n):
        calibration[label] = median_seconds(prompt_call)
print(f"{model.device.type}, {model.dtype}; logical CPUs ⏱{os.cpu_count()}, PyTorch threads "
      f"⏱{DEFAULT_THREADS}, load average ⏱{load_average():.1f}")
for label, sec in calibration.items():
    print(f"the model on the {P}-token prompt, {label}: median ⏱{1000 * sec:.1f} ms")

# %% [markdown]
# ### The measurement
#
# Each way runs the whole generation `REPEATS` times, alternating which goes first, and for every
# step we keep the median over the repeats: a burst of other work on the machine hits one run,
# not the median, and alternation keeps a slow drift from favouring one way.

# %%
REPEATS = 5
sec_cached, sec_recomputed = [], []  # REPEATS lists of N_MAX step times each
with cpu_threads(TIMING_THREADS):
    load_before = load_average()
    for r in range(REPEATS):
        for way in (("cached", "recomputed") if r % 2 == 0 else ("recomputed", "cached")):
            if way == "cached":
                sec_cached.append(generate_cached(N_MAX)[1])
            else:
                sec_recomputed.append(generate_recomputed(ids_cached)[1])
    check = median_seconds(prompt_call)
med_c = torch.tensor(sec_cached).median(0).values.double()  # [N_MAX] seconds per step
med_r = torch.tensor(sec_recomputed).median(0).values.double()
total_c, total_r = med_c.cumsum(0), med_r.cumsum(0)  # time to the first N tokens
print(f"{REPEATS} runs of each way, {N_MAX} steps each, on "
      f"{f'{TIMING_THREADS} thread' if ON_CPU else 'the GPU'}; load average "
      f"⏱{load_before:.1f} before, ⏱{load_average():.1f} after")
before = calibration["one CPU thread" if ON_CPU else "PyTorch's default CPU threads"]
print(f"calibration call after the measurement: ⏱{1000 * check:.1f} ms "
      f"(before: ⏱{1000 * before:.1f} ms)")
for n in (4, 8, 12, 16):
    with_, without = total_c[n - 1], total_r[n - 1]
    print(f"N = {n:2d}: ⏱{with_:.2f} s with the cache, ⏱{without:.2f} s without: "
          f"⏱{without / with_:.1f}x")

# %% [markdown]
# ### A cost model per step
#
# What does a step cost? A simple model: a fixed cost $a$ per call (every weight is read once,
# and Python and the kernel launches add their share, however few positions the call has)
# plus a cost $b$ per position. Without the cache, step $t$ runs $s = P + t - 1$ positions
# through every layer; with it, step $t \ge 2$ runs one position, whose attention reads the
# $s$ positions in the cache, so there $b$ is the cost of one more cached key and value. (The
# first step with the cache is the prompt, the same call as the first step without it.) A
# least-squares line through the medians of each way gives $a$ and $b$:

# %%
s = torch.arange(P, P + N_MAX, dtype=torch.float64)  # positions in the call / in the cache


def fit_line(x, y):
    """Least-squares a, b of y ≈ a + b·x."""
    design = torch.stack([torch.ones_like(x), x], dim=1)
    a_, b_ = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    return a_, b_


a_r, b_r = fit_line(s, med_r)
a_c, b_c = fit_line(s[1:], med_c[1:])  # decode steps only
model_r = a_r + b_r * s
model_c = torch.cat([med_c[:1], a_c + b_c * s[1:]])  # step 1 (the prompt) as measured
off = max(((model_r - med_r).abs() / med_r).max(), ((model_c - med_c).abs() / med_c).max())
print(f"without the cache: ⏱{1000 * a_r:.1f} ms + ⏱{1e6 * b_r:.0f} µs × positions in the call")
print(f"with the cache:    ⏱{1000 * a_c:.1f} ms + ⏱{1e6 * b_c:.0f} µs × positions in the cache")
print(f"largest gap between a median and its line: ⏱{100 * off:.0f}%")
print(f"the fixed cost of a call equals the cost of ⏱{a_r / b_r:.0f} positions without the cache")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(s, 1000 * med_r, "o", ms=4, color="C0", label="without cache: median")
ax1.plot(s, 1000 * model_r, "-", color="C0", label="without cache: a + b·s")
ax1.plot(s[1:], 1000 * med_c[1:], "s", ms=4, color="C1", label="with cache: median")
ax1.plot(s[1:], 1000 * model_c[1:], "-", color="C1", label="with cache: a + b·s")
ax1.set(xlabel="positions in the call (without) / in the cache (with), s",
        ylabel="time per step (ms)", title="One step", ylim=(0, None))
steps = range(1, N_MAX + 1)
ax2.plot(steps, total_r, "o", ms=4, color="C0", label="without cache: measured")
ax2.plot(steps, model_r.cumsum(0), "-", color="C0", label="without cache: model")
ax2.plot(steps, total_c, "s", ms=4, color="C1", label="with cache: measured")
ax2.plot(steps, model_c.cumsum(0), "-", color="C1", label="with cache: model")
ax2.set(xlabel="tokens generated, N", ylabel="time to N tokens (s)", title="Generation",
        ylim=(0, None))
for ax in (ax1, ax2):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"Greedy generation on {model.device.type}, {str(model.dtype).removeprefix('torch.')}"
             f"{f', {TIMING_THREADS} thread' if ON_CPU else ''}: medians of {REPEATS} runs",
             fontsize=10)
fig.tight_layout()
print(f"plotted: {N_MAX} steps × 2 ways, medians of {REPEATS} runs, and the two fitted lines")
plt.show()

# %% [markdown]
# What the fit says: a step without the cache costs $a_\text{without} + b_\text{without}\,s$,
# a step with it $a_\text{with} + b_\text{with}\,s$. One more position means one more cached
# key and value for the new query to read with the cache, against one more position through
# every matrix of every layer without it, so $b_\text{with}$ should be far smaller; it is also
# the hardest number here to measure, and on a busy machine its fitted value is mostly noise.
# So the ratio of the two step times grows with the sequence, slowly while the
# fixed costs $a$ dominate and in proportion to $s$ once $b_\text{without}\,s$ outweighs them;
# the last line printed by the fit says how many positions that takes on this machine. Summed
# over a generation, the time without the cache grows with the square of $N$ (the $N(N+1)/2$
# positions counted above), the time with it almost linearly (its steps grow only by
# $b_\text{with}$ per position). At the few dozen positions timed here
# both totals are still close to straight lines, and their ratio depends mostly on how the
# fixed cost of a call compares with the cost of a position on the machine at hand. That is why
# the same cell gives different ratios on different machines, and on one machine under
# different loads: other work that slows long calls more than short ones, or the reverse,
# changes the ratio. The calibration lines say what the conditions were (this book is executed
# on a shared machine: compare the load average with the number of CPUs); the medians, the
# alternation and the fit make the numbers steadier, but they cannot make a busy machine idle.
#
# What was measured here: the model loaded above, on the device and in the dtype printed, at
# batch size 1, for prompts of a few tokens and at most 16 new ones. Nothing in this chapter
# was measured on a GPU. There, at batch size 1, a step is expected to be limited by reading
# the weights from memory ({term}`memory-bandwidth bound <Memory-bandwidth bound>`), and running
# a few dozen positions through the weights should cost little more than running one, since
# either way each weight is read once: $b_\text{without}$ would be small next to $a$, and the
# cache would save little time on short sequences and much on long ones. That is an
# expectation from the arithmetic, not a measurement. A further
# step is to allocate the cache once for the whole context (a static cache), so that the decode
# step has fixed shapes and can be compiled and captured as a CUDA graph
# {cite}`pytorch2023gptfast`; chapter 11 builds that.
#
# ## What we have now
#
# - Per attention layer, a `KVCache` with keys and values `[batch, n_kv_heads, capacity,
#   head_dim]` (`[1, 3, capacity, 64]` in each of the bundled model's 30 layers), written at
#   `start_pos` after RoPE; `model.cache_len` counts the positions written.
# - `model(tokens, start_pos)`: the prompt at `start_pos=0` (`[1, seq]` in, `[1, seq, vocab]`
#   logits out, or `[1, 1, vocab]` with `last_only=True`), then one token `[1, 1]` per step;
#   checked against one call on the whole sequence, against recomputation at every step, and
#   against transformers' own cache, within the tolerance of the model's dtype.
# - The cost: $2 \cdot n_\text{layers} \cdot n_\text{kv\_heads} \cdot d_\text{head}$ numbers per
#   token (512 KiB for Llama-2-7B in fp16, 524 MB for 1,000 tokens, twice a cache of residual
#   states; 45 KiB for the bundled model in fp32); the saving: one position per step instead of
#   the whole sequence, which in time is worth $b s / (a + b s)$ of a step.
#
# The attention sub-layer is complete. Its output is added to the residual stream, and chapter 8
# turns to the block's other sub-layer: the SwiGLU feed-forward network, which works on each
# position separately.
