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
# The KV cache keeps $k_j$ and $v_j$ of every layer as they are computed. Each step then runs
# the model on the one new token: it computes that token's query, key and value, appends the
# key and value to the cache, and attends over the cache. This chapter checks that this gives
# the same numbers as recomputation, measures what the cache costs in memory, and what it saves
# in time.

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
import textwrap
import time
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.config import ModelArgs
from annotated_llama.generate import generate_ids
from annotated_llama.reference import transformers_model

torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference only: no autograd graph anywhere in this chapter
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %% [markdown]
# We load our model and, as the independent reference, transformers' `LlamaForCausalLM` on the
# same weights, in the device and dtype that `al.load` picked (CPU and float32 here; CUDA and
# bfloat16 on a GPU). Comparisons of the whole model use a tolerance of 1e-4 in float32; in
# bfloat16 two different orders of the same arithmetic round differently, so the tolerance
# there is looser.

# %%
model, tok = al.load(MODEL)
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
FLOAT32 = model.dtype == torch.float32
TOL = 1e-4 if FLOAT32 else 2.0  # max abs logit difference (logits reach a few tens)
a = model.args
print(f"{model.device.type}, {model.dtype}")
print(f"n_layers {a.n_layers}, n_heads {a.n_heads}, n_kv_heads {a.n_kv_heads}, head_dim {a.head_dim}")


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
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen  # {(layer, "wk"|"wv"): [1, seq, n_kv_heads * head_dim]}


prompt = "The capital of France is"
ids = torch.tensor([tok.encode(prompt + " Paris. The capital of Italy is")], device=model.device)
short = ids[:, :6]  # [1, 6]: the first six tokens
kv_short, kv_long = record_kv(short), record_kv(ids)
diff = max((kv_long[key][:, :6] - kv_short[key]).abs().max().item() for key in kv_short)
print(f"{short.shape[1]} tokens, then {ids.shape[1]}; {len(kv_short)} key/value tensors compared")
print(f"first 6 positions, max abs diff over all layers < {TOL:.0e}: {diff < TOL}")
assert diff < TOL

# %% [markdown]
# Every key and value of the first six positions, in all layers, came out the same whether
# the model saw six tokens or twelve. Only the new positions bring new keys and values.
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
T = ids.shape[1]
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
    """softmax(q kᵀ / √head_dim) v, with each KV head shared by n_heads / n_kv_heads query heads."""
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
d = (incremental - full).abs().max().item()
print("cache after the last step:", tuple(cache_k.shape))
print(f"incremental vs full, max abs diff < 1e-4: {d < 1e-4}")
assert d < 1e-4

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
# token (`seq == 1`) it passes no mask, as in our loop; for a prompt at `start_pos == 0` it
# uses the square causal mask; for several new tokens after a cached prefix it builds the
# rectangular mask of chapter 6 with `causal_mask(seq, start_pos)`.

# %%
show(al.model.Attention.forward)

# %% [markdown]
# ## Incremental equals full, on the whole model
#
# The promise of `model(tokens, start_pos)`: feeding the prompt, then one token at a time with
# increasing `start_pos`, gives the same logits as one call on the whole sequence. We check it
# on the twelve tokens from above: the first five as the prompt, the other seven one by one.

# %%
full_logits = model(ids)  # [1, T, vocab]: one call, no cache in use
n_prompt = 5
parts = [model(ids[:, :n_prompt], start_pos=0)]  # prefill: [1, 5, vocab]
for pos in range(n_prompt, T):
    parts.append(model(ids[:, pos : pos + 1], start_pos=pos))  # decode: [1, 1, vocab]
inc_logits = torch.cat(parts, dim=1)  # [1, T, vocab]
d = (inc_logits - full_logits).abs().max().item()
print(f"{len(parts) - 1} decode steps; model.cache_len = {model.cache_len}")
print("cache of layer 0:", tuple(model.layers[0].attention.cache.k.shape),
      "[batch, n_kv_heads, capacity, head_dim]")
print(f"logits, incremental vs one call: max abs diff < {TOL:.0e}: {d < TOL}")
print("same argmax at every position:", torch.equal(inc_logits.argmax(-1), full_logits.argmax(-1)))
assert d < TOL

# %% [markdown]
# A call at `start_pos=0` with the same batch size reuses the cache already allocated and
# overwrites it from position 0; here the earlier calls had grown it to room for all twelve
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
hf_inc = torch.cat(hf_parts, dim=1).float()  # [1, T, vocab]
d = (inc_logits - hf_inc).abs().max().item()
print(f"ours vs transformers, both incremental: max abs diff < {TOL:.0e}: {d < TOL}")
assert d < TOL

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
print(f"full context of {llama2_7b.max_seq_len} tokens: {per_token * llama2_7b.max_seq_len / 2**30:.0f} GiB")
assert per_token == 2 * 32 * 4096 * 2 == 524_288

# %% [markdown]
# Half a megabyte per token, 2 GiB for one sequence at the full 4096-token context. Grouped-query
# attention (chapter 6) {cite}`ainslie2023gqa` shrinks it by storing fewer KV heads: Llama-2-70B
# has 64 query heads but 8 KV heads, Llama-3-8B 32 and 8.

# %%
MODELS = {  # label: (preset, bytes per number)
    "SmolLM2-135M, fp32": ("smollm2-135m", 4),
    "SmolLM2-135M, bf16": ("smollm2-135m", 2),
    "Llama-2-7B, fp16": ("llama2-7b", 2),
    "Llama-2-70B, fp16": ("llama2-70b", 2),
    "Llama-3-8B, bf16": ("llama3-8b", 2),
}
for label, (name, nbytes) in MODELS.items():
    p = ModelArgs.preset(name)
    b = kv_bytes_per_token(p, nbytes)
    mha = 2 * p.n_layers * p.n_heads * p.head_dim * nbytes  # if every query head had its own KV head
    print(f"{label:20} {p.n_layers:2d} layers x {p.n_kv_heads:2d} KV heads x {p.head_dim:3d}: "
          f"{b / 1024:6.1f} KiB/token (without GQA: {mha / 1024:6.1f})")

# %% [markdown]
# Llama-2-70B, ten times the parameters of Llama-2-7B, needs less cache per token (320 KiB
# against 512), because its 64 query heads share 8 KV heads; without GQA it would need
# 2.5 MiB. The bundled model (the first two lines) needs 45 KiB per token in float32.
#
# The package's cache tensors follow the formula: after the run above, the bytes held by all
# layers' caches, divided by the capacity and the batch, give the per-token figure for the
# bundled model in the dtype it runs in.

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
# lines end at each model's maximum context.

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for label, (name, nbytes) in MODELS.items():
    p = ModelArgs.preset(name)
    ctx = torch.logspace(7, 13, 61, base=2)  # 128 .. 8192 tokens
    ctx = ctx[ctx <= p.max_seq_len]
    ax.plot(ctx, ctx * kv_bytes_per_token(p, nbytes) / 2**30, label=label, lw=2,
            ls="--" if "SmolLM2" in label else "-")
ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="KV cache (GiB)",
       title="KV cache of one sequence, by context length")
ax.set_xticks([128, 512, 2048, 8192], ["128", "512", "2048", "8192"])
ax.grid(True, which="major", alpha=0.3)
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# ## What the cache saves in time
#
# We greedily generate $N$ tokens from the prompt, two ways:
#
# - with the cache: the package's `generate_ids`, which runs the prompt once and then one token
#   per step with increasing `start_pos`;
# - without it: every step calls `model(all_tokens)` with `start_pos=0`, recomputing every
#   position (the model still writes its cache, but never reads an old entry back).
#
# Both make $N$ forward passes, and both must produce the same tokens. The two run in lockstep,
# one step of each in turn, so that whatever else the machine is doing slows both alike; the
# recomputing run uses a second copy of the model, so it cannot overwrite the cache the other
# one reads. Summing the step times gives the time to the first $N$ tokens for every $N$.
# (Timings depend on the machine and its load; the cell's output is not compared when the book
# is tested.)

# %%
N_MAX = 24  # small enough to keep this chapter quick on a laptop CPU
prompt_ids = tok.encode(prompt)
recompute_model, _ = al.load(MODEL)  # a second copy of the same weights, with its own cache


def lockstep(n):
    """Generate n tokens both ways, one step of each in turn; return ids and seconds per step."""
    cached = generate_ids(model, prompt_ids, n)  # the package's loop: one token per next()
    tokens = torch.tensor([prompt_ids], device=model.device)  # [1, seq], grows by one per step
    ids_c, ids_r, sec_c, sec_r = [], [], [], []
    for _ in range(n):
        start = time.perf_counter()
        ids_c.append(next(cached))
        sec_c.append(time.perf_counter() - start)
        start = time.perf_counter()
        next_id = recompute_model(tokens, start_pos=0)[:, -1].argmax(-1)  # the whole sequence
        ids_r.append(int(next_id))
        sec_r.append(time.perf_counter() - start)
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)
    return ids_c, ids_r, sec_c, sec_r


# %%
# NBVAL_IGNORE_OUTPUT
ids_cached, ids_recomputed, sec_c, sec_r = lockstep(N_MAX)
t_cached = torch.tensor(sec_c).cumsum(0).tolist()  # time to the first N tokens, N = 1..N_MAX
t_recomputed = torch.tensor(sec_r).cumsum(0).tolist()
NS = [6, 12, 18, 24]
for n in NS:
    print(f"N = {n:2d}: {t_cached[n - 1]:6.2f} s with cache, {t_recomputed[n - 1]:6.2f} s "
          f"without, {t_recomputed[n - 1] / t_cached[n - 1]:4.1f}x elapsed")
print(f"last step: {sec_c[-1]:.3f} s with cache, {sec_r[-1]:.3f} s without elapsed")

# %%
print("same tokens with and without the cache:", ids_cached == ids_recomputed)
print(repr(tok.decode(ids_cached)))
assert ids_cached == ids_recomputed

# %% [markdown]
# Plotted against $N$, both curves are close to straight lines at these lengths, with very
# different slopes: a step with the cache runs one position through the model, a step without
# it runs the whole sequence so far (5 to 28 positions here). Without the cache each step also
# costs more than the one before, so over long generations the total grows quadratically, as
# the count of $N(N+1)/2$ positions above says; over a few dozen short steps that growth is
# small next to what every step costs anyway (reading all the weights once).

# %%
fig, ax = plt.subplots(figsize=(8, 4))
steps = range(1, N_MAX + 1)
ax.plot(steps, t_recomputed, "o-", ms=3, label="without cache: model(all tokens) each step")
ax.plot(steps, t_cached, "o-", ms=3, label="with cache: one new token each step")
ax.set(xlabel="tokens generated, N", ylabel="time (s)",
       title=f"Greedy generation on {model.device.type}, {str(model.dtype).removeprefix('torch.')}")
ax.set_xticks(NS)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# On a GPU, and for larger models, the decode step is limited by reading the weights from memory
# rather than by arithmetic, and a further step is to allocate the cache once for the whole
# context (a static cache) so that the decode step has fixed shapes and can be compiled and
# captured as a CUDA graph {cite}`pytorch2023gptfast`. Chapter 11 measures that.
#
# ## What we have now
#
# - Per attention layer, a `KVCache` with keys and values `[batch, n_kv_heads, capacity,
#   head_dim]` (here `[1, 3, capacity, 64]` in each of 30 layers), written at `start_pos` after
#   RoPE; `model.cache_len` counts the positions written.
# - `model(tokens, start_pos)`: the prompt at `start_pos=0` (`[1, seq]` in, `[1, seq, vocab]`
#   logits out), then one token `[1, 1]` per step; checked against one call on the whole
#   sequence and against transformers' own cache (both to 1e-4 in float32).
# - The cost: $2 \cdot n_\text{layers} \cdot n_\text{kv\_heads} \cdot d_\text{head}$ numbers per
#   token (512 KiB for Llama-2-7B in fp16; 45 KiB for the bundled model in fp32); the saving:
#   one position per step instead of the whole sequence.
#
# The attention sub-layer is complete. Its output is added to the residual stream, and chapter 8
# turns to the block's other sub-layer: the SwiGLU feed-forward network, which works on each
# position separately.
