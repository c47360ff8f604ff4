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
# hardware allows. It answers in two kinds of numbers, kept apart: limits *computed* from the
# model's shape and a GPU's published figures, and speeds *measured* on the machine that runs the
# page. The machine that wrote this page had no GPU: what it measured is a CPU, and the GPU rows
# of the benchmark appear below only once someone has run it on one.
#
# The changes follow gpt-fast {cite}`pytorch2023gptfast`: a static {term}`KV cache`, fused
# projections, attention through PyTorch's fused kernels {cite}`dao2022flashattention`, a
# decode loop that never waits for the GPU, and `torch.compile` with CUDA graphs. They live
# in `annotated_llama/fast.py`, a `FastLlama` that runs the readable model's own weight tensors.

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
import inspect
import os
import re
import statistics
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import annotated_llama as al
from annotated_llama.fast import FastLlama, cache_bucket, cache_lengths
from annotated_llama.generate import generate_ids
from annotated_llama.reference import RELATIVE_TOLERANCE, relative_difference

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %% [markdown]
# The model is the bundled SmolLM2-135M (4-bit weights dequantized to float32, chapter 0) unless
# you change the next cell. Any LLaMA runs here: a Hugging Face id, a local directory or a GGUF
# file; on a GPU, `al.load` picks CUDA and bf16 (fp16 on GPUs without native bf16).

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
print(f"{MODEL} on {model.device.type}, {model.dtype}, {model.args.n_layers} layers")


# %% [markdown]
# ## Where the time goes: bytes against FLOPs
#
# Generating one token at batch 1 multiplies one vector by every weight matrix of the model.
# Each weight is read from memory once and used for one multiply and one add, 2 FLOPs. The
# ratio of arithmetic to memory traffic, the {term}`arithmetic intensity <Arithmetic intensity>`,
# is therefore about
#
# $$
# I_\text{decode} = \frac{2 N}{N \cdot b} = \frac{2}{b}\ \text{FLOP/byte}, \qquad
# I_\text{prefill}(s) \approx \frac{2 N s}{N \cdot b} = \frac{2 s}{b}\ \text{FLOP/byte},
# $$
#
# for $N$ weights of $b$ bytes each and a prompt of $s$ tokens, which reads the weights once
# for all $s$ positions. A GPU does far more arithmetic per byte than 1: decoding waits on
# memory ({term}`memory-bandwidth bound <Memory-bandwidth bound>`), prefill on the arithmetic
# units. The weights that count are all matrices but the input embedding (a lookup reads one row
# of it); the LM head is read for every token.
#
# Here are the numbers for Llama-2-7B in bf16, from its configuration (chapter 1), against
# the H100 SXM's published figures: 3.35 TB/s of memory bandwidth and 989 TFLOP/s of dense
# bf16 tensor-core arithmetic {cite}`nvidia2022h100`. These are computed, not measured, and so
# is the cost of attention over a 512-token context, set against that of the weights.

# %%
def weights_read_per_token(args: al.ModelArgs) -> int:
    """Parameters read for one token: all but the input embedding (a tied LM head still counts)."""
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
# In bf16, s tokens sharing one read of the weights do s FLOPs per byte read:
# the ridge is at s = peak / bandwidth.
ridge = H100_FLOPS / H100_BW
print(f"ridge point of the H100: {ridge:.0f} FLOP per byte, "
      f"i.e. {ridge:.0f} tokens per read of the weights")
# Attention over a context of 512 positions, which the weights' count leaves out:
a7 = args7b
kv_bytes = 2 * a7.n_layers * a7.n_kv_heads * a7.head_dim * 2 * 512  # K and V, bf16
attn_flops = 2 * a7.n_layers * a7.dim * 512 * 512  # QK^T and PV, 2 FLOPs each, causal half
print(f"at 512 positions: the KV cache adds {kv_bytes / 1e9:.2f} GB to a decode step "
      f"({kv_bytes / bytes_per_token:.0%} of the weights' bytes); attention adds "
      f"{attn_flops / prefill_flops:.0%} to the prefill's FLOPs")

# %% [markdown]
# So batch-1 decoding of Llama-2-7B *with bf16 weights, each read once per token* cannot
# exceed about 250 tokens per second on an H100: every token streams 13.2 GB of weights
# through the memory system. The roof is a property of those bytes, not an absolute limit.
# Fewer bytes per weight raise it (int8 and int4 weights, chapter 12), and more tokens per read
# of the weights raise the speed under it (batching; speculative decoding, where a small model
# drafts several tokens that the large one checks in one pass). gpt-fast's published figures
# show the first; the next cell sets them against the same roof computed for their GPU, an A100
# 80 GB (2.04 TB/s on its data sheet {cite}`nvidia2020a100`; gpt-fast's README notes that its
# A100s were power-limited).
#
# Prefill does 512 times the arithmetic on the same bytes, which puts it past the ridge point,
# where the GPU can keep its arithmetic units busy; there the limit is FLOPs. Attention over
# the context adds to both, but at 512 positions little: 2% to the bytes of a decode step and 1%
# to the prefill's FLOPs (the last line above).

# %%
A100_BW = 2.039e12  # A100 80 GB SXM, bytes/s (data sheet)
GPT_FAST = {"bf16": 104.9, "int4, group 32": 196.80}  # Llama-2-7B tok/s on an A100 (README)
a100_roof = A100_BW / bytes_per_token
print(f"bf16 decode roof of Llama-2-7B on an A100 80 GB: {a100_roof:.0f} tokens per second")
for name, speed in GPT_FAST.items():
    print(f"  gpt-fast, {name:14s} {speed:6.1f} tok/s = {speed / a100_roof:4.0%} of that roof")

# %% [markdown]
# gpt-fast's bf16 run reaches about two thirds of the bf16 roof, and its int4 run goes past it,
# because its 4-bit weights, with a 16-bit scale and offset per group of 32, take under a third
# of the bf16 bytes {cite}`pytorchlabs2023gptfastrepo`. (These are gpt-fast's measurements,
# quoted, not this book's.) The figure draws both limits of the bf16
# model on an H100 as a function of how many tokens share one read of the weights.

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
ax.annotate("prefill, 512 tokens\n(compute-bound)", (512, attainable.max()), (30, 2.5e4),
            fontsize=9, arrowprops=dict(arrowstyle="->", color="0.3"))
ax.set_xlabel("tokens sharing one read of the weights (batch × prompt length)", fontsize=10)
ax.set_ylabel("tokens per second, at most", fontsize=10)
ax.set_title("Llama-2-7B bf16 on an H100 (spec figures): the roofline", fontsize=11)
ax.grid(True, which="major", alpha=0.3)
plt.show()
print(f"plotted: {len(tokens_per_pass)} points; at 1 token {attainable[0]:.0f} tok/s, "
      f"at 8192 tokens {attainable[-1]:,.0f} tok/s (the FLOP limit)")

# %% [markdown]
# The dashed line is the ridge point, about 295 tokens per pass: below it the weights'
# bandwidth sets the speed, above it the arithmetic. Batch-1 decoding sits at the far left.
# The rest of this chapter is about the changes that let decode approach its roof on a GPU, which
# means keeping the GPU reading weights all the time and doing nothing else; how close they get is
# a measurement, made only where a GPU ran the benchmark (the last sections say where).
#
# On a GPU the readable model is expected to fall short of the roof for reasons that have
# nothing to do with the weights; gpt-fast {cite}`pytorch2023gptfast` describes them, and this
# book has not yet measured them on a GPU. Each layer launches many small kernels, and at
# batch 1 a small kernel can finish before Python has launched the next one, so the GPU idles
# between them. The generation loop asks the GPU for each new token's id (`int(next_id)`),
# which makes the CPU wait until all queued work is done. And chapter 7's KV cache grows by
# reallocation and hands attention the keys up to the current position, so shapes change
# every step and nothing can be recorded once and replayed.

# %% [markdown]
# ## A static KV cache
#
# The cache of chapter 7 grows as the sequence grows. `FastLlama` allocates it once per
# length, one pair of tensors per layer of shape `[max_batch_size, n_kv_heads, max_seq_len,
# head_dim]` in the model's dtype, and writes each new key and value in place at its
# position. Every decode step then sees the same shapes and the same memory addresses, which
# is what lets a compiler specialise the step and CUDA graphs replay it.
#
# The price: attention runs over all `max_seq_len` slots, not just the filled ones, so a mask
# must hide the empty and stale slots. It is the causal mask of chapter 6 for one query: key
# slot $j$ is visible to the token at position $p$ when $j \le p$. The step computes it from
# the position, held in a device tensor so that no Python integer that changes per step
# enters the step: `arange(max_seq_len) <= pos`, one row of `max_seq_len` booleans (no
# `[max_seq_len, max_seq_len]` table, which at 32k positions would take 1 GiB: the last line).

# %%
max_seq = 8
key_pos = torch.arange(max_seq)  # slots 0 .. max_seq - 1
pos = torch.tensor([3])  # the position of the new token, as a tensor
mask = key_pos <= pos  # [max_seq]: keys 0..3 visible
print(mask.int())
print(f"a full [32768, 32768] boolean table instead: {32768**2 / 2**30:.0f} GiB")

# %% [markdown]
# With that row, attention over the full preallocated cache gives exactly what attention over
# the filled prefix gives: the masked slots get weight zero, whatever they hold. A check with
# random keys and values, the unused slots filled with garbage:

# %%
torch.manual_seed(0)
q = torch.randn(1, 4, 1, 16)  # [batch, heads, 1 new token, head_dim]
k_cache = torch.randn(1, 4, max_seq, 16)  # [batch, heads, slots, head_dim]; slots 4..7: garbage
v_cache = torch.randn(1, 4, max_seq, 16)
full = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask[None, None, None])
prefix = F.scaled_dot_product_attention(q, k_cache[:, :, :4], v_cache[:, :, :4])
assert torch.allclose(full, prefix, atol=1e-6)
print("masked full cache == filled prefix:", torch.allclose(full, prefix, atol=1e-6))

# %% [markdown]
# ## Which attention kernel runs
#
# `F.scaled_dot_product_attention` picks a fused kernel for the device when the call allows
# one, and otherwise falls back to a plain "math" implementation that writes out every score
# and, for grouped-query attention, repeats the keys and values for every query head. On CUDA,
# which fused kernel takes which call is decided in PyTorch's `sdp_utils.cpp`, and it depends
# on the GPU and has changed between PyTorch versions. The flash kernel
# {cite}`dao2022flashattention` takes a causal flag and grouped-query attention
# (`enable_gqa=True`) but never an explicit mask, and needs compute capability 8.0 or newer.
# The memory-efficient kernel takes a mask; grouped-query attention along with it only in
# recent versions. The cuDNN kernel takes both, but only on capability 8.0 or newer, in fp16 or
# bf16. A decode step needs a mask (its slots are not a square causal pattern), and the
# bundled model is {term}`GQA <GQA>`, so the obvious call, mask plus `enable_gqa`, is the one
# call whose kernel depends on all of that, and the math kernel is where it lands when no fused
# kernel takes it.
#
# `FastLlama` avoids the combination. The prompt (prefill) attends to itself with
# `is_causal=True` and no mask, which flash takes, GQA included. For the one-query decode step,
# the query heads that share a key/value head are folded into the query's sequence dimension:
# `[batch, n_heads, 1, head_dim]` becomes `[batch, n_kv_heads, n_rep, head_dim]`, $n_\text{rep}$
# queries against one key/value head, no `enable_gqa` needed. All of them sit at the same
# position, so the one mask row, broadcast as `[1, 1, 1, max_seq_len]`, serves them all. The two
# calls give the same numbers:

# %%
a = model.args
n_rep = a.n_heads // a.n_kv_heads
q = torch.randn(1, a.n_heads, 1, a.head_dim)  # one new token's queries: [batch, n_heads, 1, hd]
k_cache, v_cache = torch.randn(2, 1, a.n_kv_heads, max_seq, a.head_dim)  # [b, n_kv, slots, hd]
row = mask[None, None, None]  # [1, 1, 1, max_seq]
grouped = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=row,
                                         enable_gqa=n_rep > 1)  # mask + enable_gqa
q_folded = q.reshape(1, a.n_kv_heads, n_rep, a.head_dim)  # a group's heads as n_rep queries
folded = F.scaled_dot_product_attention(q_folded, k_cache, v_cache, attn_mask=row)
same = torch.allclose(folded.reshape(grouped.shape), grouped, atol=1e-5)  # [1, n_heads, 1, hd]
assert same
print(f"{a.n_heads} query heads, {a.n_kv_heads} key/value heads: n_rep = {n_rep}; "
      f"folded == grouped: {same}")

# %% [markdown]
# A CPU cannot show the difference: PyTorch's CPU flash kernel takes masks and GQA alike. The
# kernel SDPA would pick for each call, asked of PyTorch on the machine running this page
# (`torch._fused_sdp_choice`, a private function, so the cell says so if it is missing):

# %%
def sdpa_choice(q, k, v, **kw):  # the backend SDPA would run for this call, on this machine
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return "unknown (this PyTorch has no torch._fused_sdp_choice)"
    return torch.nn.attention.SDPBackend(choose(q, k, v, **kw)).name


dev, dt = model.device, model.dtype
args_q, args_kv = (q.to(dev, dt), q_folded.to(dev, dt)), (k_cache.to(dev, dt), v_cache.to(dev, dt))
print(f"on {dev.type}, {dt}: mask + enable_gqa -> "
      f"{sdpa_choice(args_q[0], *args_kv, attn_mask=row.to(dev), enable_gqa=n_rep > 1)}; "
      f"folded, mask only -> {sdpa_choice(args_q[1], *args_kv, attn_mask=row.to(dev))}")

# %% [markdown]
# On a CPU both calls get the flash kernel. Whatever a GPU answers, the tests check the calls
# themselves: `tests/test_fast.py` records every attention call of a prefill and a decode and
# asserts that none combines a mask with `enable_gqa`; on a GPU, a test runs generation with the
# math kernel switched off, so that any call no fused kernel takes would raise (a CUDA test, not
# yet run: no GPU has been lent to this book).
#
# The cache length is a real cost at decode: the step reads every slot. For the bundled model
# in float32 each slot holds 2 × 30 layers × 3 KV heads × 64 × 4 bytes, so a cache sized for
# the model's whole context of 8192 positions would add 70% of the weights' own traffic to
# every step (the last line below):

# %%
slot_bytes = 2 * a.n_layers * a.n_kv_heads * a.head_dim * model.dtype.itemsize
weight_bytes = weights_read_per_token(a) * model.dtype.itemsize
print(f"{MODEL}: {slot_bytes:,} bytes per cache slot; "
      f"weights read per token: {weight_bytes / 1e6:.0f} MB")
for length in sorted({256, 2048, a.max_seq_len}):
    extra = slot_bytes * length
    print(f"  cache of {length:>6} slots: {extra / 1e6:7.1f} MB read per decode step, "
          f"{extra / weight_bytes:4.0%} of the weights' bytes")

# %% [markdown]
# So the cache should be no longer than needed, and its length should change rarely, since a
# compiled step is specialised to it: each new length is one more compilation, and
# `torch.compile` gives up on a function after 8 of them. `FastLlama(model, max_seq_len=L)` fixes
# the length; by default (`max_seq_len=None`) the cache is allocated at the first request with
# the shortest of a few lengths that holds it, and afterwards only grows: a shorter request
# reuses a longer one's cache. The lengths start at 256 and double up to the context, or grow
# in larger steps for contexts so long that doubling would take more than six lengths:

# %%
lengths = cache_lengths(a.max_seq_len)
print(f"context {a.max_seq_len:,}: {len(lengths)} possible cache lengths: {lengths}")
needed = min(300, a.max_seq_len)
print(f"a request of {needed} positions gets a cache of {cache_bucket(needed, a.max_seq_len)}")

# %% [markdown]
# Each is one compiled graph at most, whatever the number of requests or of `FastLlama`
# objects (they share compiled graphs); the tests count them. Here is the step, from the
# package:

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
# tensors, so the weights still sit in memory once. A copy instead would cost as much again as
# the fused matrices, which hold most of each layer's weights (for this model, the last line
# below), on a GPU whose memory the model may already nearly fill (chapter 0's table).
#
# Whether this pays is a question for measurement. On a CPU it should not: there is no launch
# to save, and the timings below cannot tell the fused variant from the unfused one. So
# `FastLlama` fuses float weights by default only on CUDA, where each saved product is a saved
# kernel launch (not yet measured in this book); `fuse=True` asks for it anywhere. (Chapter 12's
# quantized linears are the exception: each of their calls does work besides the product, and
# they are stacked on every device.)

# %%
fast = FastLlama(model, fuse=True)
w = fast.layers[0]
print("wqkv:", tuple(w["wqkv"].shape), " w13:", tuple(w["w13"].shape))
wq_view = model.layers[0].attention.wq.weight.data_ptr() == w["wqkv"].data_ptr()
shared = fast.tok_embeddings.data_ptr() == model.tok_embeddings.weight.data_ptr()
assert wq_view and shared
print("model's wq is a view of wqkv:", wq_view)
print("embedding shared, not copied:", shared)
layer_params = sum(p.numel() for p in model.layers[0].parameters() if p.dim() == 2)  # matrices
fused_share = (w["wqkv"].numel() + w["w13"].numel()) / layer_params
print(f"the fused matrices hold {fused_share:.0%} of a layer's weights")

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
#
# What it cannot do inside the loop is check that a position fits the cache: that would be a
# sync, and a position past the cache would end on a GPU in a device-side assert, after which
# the CUDA context is unusable for the rest of the process. The loop's positions are known
# before it starts (the prompt's length plus the number of new tokens), so they are checked
# then, on the host, with a plain error:

# %%
small = FastLlama(model, max_seq_len=16)
try:
    small.generate(prompt_ids=list(range(10)), max_new_tokens=8)
except ValueError as e:
    print("ValueError:", e)

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
# step. The recording itself happens in the first calls of the compiled step (one warm-up call,
# then the recording), so any timing must start after a few decode steps. The prompt runs
# separately (prefill), eagerly, because its length changes from call to call and it is
# compute-bound anyway.
#
# Compiling the 30-layer step on the two CPU cores that wrote this book takes from tens of
# seconds to minutes, depending on inductor's on-disk cache and on the machine's load (seen
# when the tests compile it, not timed on this page), so this page does not compile on a CPU;
# a test checks the compiled step's tokens, and the compiled variant's CPU speed is in the
# benchmark results below. On a GPU the timing cell below compiles it, and its untimed warm-up
# runs absorb the compilation and the CUDA-graph recording.

# %% [markdown]
# ## Same tokens as the readable model
#
# Before any timing: the fast path must produce what the readable model produces. Greedy
# decoding makes that a sharp test, since the argmax at every step must agree. The two paths
# sum in different orders, so their logits differ by rounding; where the readable model's top
# two logits are closer than that difference (a near tie), the greedy paths may part without
# either being wrong. The check: both paths fed the same tokens give logits within the dtype's
# tolerance of each other (chapter 9's), and the greedy tokens agree up to the end or to the
# first near tie.

# %%
prompt = tok.encode("The capital of France is")
n_new = 16
want = list(generate_ids(model, prompt, n_new))
got = fast.generate(prompt, n_new)
tokens = torch.tensor([prompt + want], device=model.device)
with torch.inference_mode():
    ref = model(tokens)[0, len(prompt) - 1 : -1]  # [n_new, vocab]: the logits behind `want`
    steps = [fast.prefill(tokens[:, : len(prompt)])[0]]  # [vocab] each
    steps += [fast.decode_step(tokens[:, i], i)[0].clone()
              for i in range(len(prompt), tokens.shape[1] - 1)]
steps = torch.stack(steps)
gap = relative_difference(steps, ref)  # max |difference| / max |logit|
assert gap <= RELATIVE_TOLERANCE[model.dtype], gap
slack = 2 * (steps - ref).abs().max().item()  # each path may be off by the measured difference
agree = next((j for j, (g, w_) in enumerate(zip(got, want)) if g != w_), n_new)
if agree < n_new:  # they parted: only allowed at a near tie
    top2 = ref[agree].float().topk(2).values
    assert (top2[0] - top2[1]).item() <= slack, (agree, got, want)
print(f"logits within the {model.dtype} tolerance: {gap <= RELATIVE_TOLERANCE[model.dtype]}")
print(f"greedy tokens identical for {agree} of {n_new} steps:", repr(tok.decode(got[:agree])))

# %% [markdown]
# ## What each change buys, measured here
#
# Now the same generation, timed on whatever device this page runs on: the readable model (its
# cache grows, its loop syncs every token), then `FastLlama` without fused projections (static
# cache, sync-free loop), then with them, and on a GPU the compiled step. Each variant first
# generates the same number of tokens twice untimed (compilation, and on a GPU the CUDA-graph
# warm-up and recording, happen there); then the timed rounds go round the variants, in the
# opposite order every other round, so that a slow drift in the machine's speed does not favour
# one variant (a machine shared with other work still adds noise to every round). Reported: the
# median over rounds and, in brackets, the range, with the device and the machine's load. Every
# measured number is printed after a ⏱.

# %%
def readable(n):
    return list(generate_ids(model, prompt, n))


variants = {"readable model (eager)": readable}
for label, fuse in (("static cache", False), ("static cache + fused", True)):
    fl = FastLlama(model, fuse=fuse)
    variants[label] = lambda n, fl=fl: fl.generate(prompt, n)
if model.device.type == "cuda":  # compiling on a CPU is slow: see the benchmark results instead
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
n_tokens, rounds = 8, 5  # 8 new tokens: 7 decode steps per run
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # 1-minute average
for fn in variants.values():  # warm-up: 2 x 7 decode steps, past the CUDA-graph recording
    fn(n_tokens)
    fn(n_tokens)
times = {label: [] for label in variants}
for r in range(rounds):
    for label in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
        times[label].append(timed(variants[label], n_tokens))  # prompt + 8 new tokens
base = statistics.median(times["readable model (eager)"])
for label, ts in times.items():
    t = statistics.median(ts)
    ms = [x / n_tokens * 1e3 for x in (t, min(ts), max(ts))]  # median, fastest, slowest
    print(f"{label:<30} ⏱{ms[0]:.1f} ms per token [⏱{ms[1]:.1f} to ⏱{ms[2]:.1f}], "
          f"speed-up ⏱{base / t:.2f}, ⏱{n_tokens / t:.1f} tok/s")
print(f"measured on {model.device.type}, {model.dtype}; "
      f"load average before the rounds ⏱{load:.1f}")

# %% [markdown]
# Read the ranges before the medians. Where the ranges of two variants overlap, this run cannot
# tell them apart, and one run of five rounds on a shared machine supports no ranking finer than
# that. The stored outputs of this page were measured on a CPU (the last line says which device
# and how loaded it was); no GPU has run this page yet. On a CPU there should be little to tell:
# a CPU has no kernel-launch gap to close, and a "sync" costs nothing when the device is the CPU
# itself. The changes are aimed at a GPU, where the readable model is expected to spend much of
# each step launching kernels and waiting for syncs; only a GPU run can say how much.

# %% [markdown]
# ## The benchmark: against transformers and against the roof
#
# `benchmarks/gpu_decode.py` measures, in one run and on the same weight tensors: this package's
# readable model, `FastLlama` eager and compiled, transformers' `LlamaForCausalLM.generate`
# eager, and transformers with a static cache and `torch.compile(hf.forward,
# mode="reduce-overhead", fullgraph=True)`, the recipe of its documentation. It also times a
# large device-to-device copy and a dense matmul, so each speed can be set against what the
# same machine can do. Every variant repeats its run several times in alternating order, and
# the table gives the median and the range over the repetitions; every timed run must
# reproduce its own untimed tokens, and every variant the readable model's (up to a near tie).
# The script writes one section of `benchmarks/RESULTS.md` per device, model and dtype; this
# page shows the sections found there:

# %%
results = Path("../benchmarks/RESULTS.md")
text = results.read_text() if results.is_file() else ""
SECTION = r"<!-- BEGIN (gpu_decode [^>]*?) -->\n(.*?)\n<!-- END \1 -->"
sections = dict(re.findall(SECTION, text, re.S))
cpu = {name: body for name, body in sections.items() if name.startswith("gpu_decode CPU")}
gpu = {name: body for name, body in sections.items() if name not in cpu}
print("results file found:", results.is_file())
print("CPU sections:", list(cpu) or "none")
print("GPU sections:", list(gpu) or "none: no GPU measurement has been recorded yet")
for name, body in sections.items():  # where and when each was measured, as the script wrote it
    where = next((line for line in body.splitlines() if line.startswith("Measured")), "?")
    print(f"{name}: {where}")

# %%
for body in cpu.values():
    display(Markdown(body))

# %% [markdown]
# The comparisons that matter, read from the same tables: the compiled step against the
# readable model and against `FastLlama` eager, and this package against transformers. A ratio
# of medians says little when the ranges overlap, so each comparison also says whether the
# ranges of decode speed are apart ("faster" or "slower": every repetition of one variant
# beat every repetition of the other) or overlap ("within the spread"):

# %%
def table_rows(body):
    """{(variant, prompt length): (median, low, high) of decode tok/s} from a gpu_decode section."""
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        cell = cells[4] if len(cells) == 7 else ""
        found = re.fullmatch(r"([\d.]+) \[([\d.]+)-([\d.]+)\]", cell)
        if found and cells[1].isdigit():
            rows[cells[0], int(cells[1])] = tuple(float(x) for x in found.groups())
    return rows


PAIRS = (("ours fast+compile", "ours eager"), ("ours fast+compile", "ours fast"),
         ("ours fast", "ours eager"), ("ours eager", "hf eager"),
         ("ours fast+compile", "hf static+compile"))
for name, body in sections.items():
    rows = table_rows(body)
    for prompt_len in sorted({p for _, p in rows}):
        print(f"{name.removeprefix('gpu_decode ')}, prompt of {prompt_len} tokens, decode speed:")
        for num, den in PAIRS:
            if (num, prompt_len) in rows and (den, prompt_len) in rows:
                (m1, lo1, hi1), (m2, lo2, hi2) = rows[num, prompt_len], rows[den, prompt_len]
                verdict = "faster" if lo1 > hi2 else "slower" if hi1 < lo2 else "within the spread"
                print(f"  {num} / {den}: {m1 / m2:.2f} ({verdict})")


# %% [markdown]
# On a CPU, expect most comparisons to land within the spread: the changes of this chapter
# remove costs that a CPU does not have, and every variant reads its weights at a fraction of
# the copy bandwidth measured in the same run (the "of copy" column), well below its roof.
# The CPU section above was measured on the shared two-core machine that wrote this book,
# under the load its "Measured" line gives; it describes that run, and its single "faster"
# verdict is one run's, not a property of the code. The GPU sections, where the changes should
# pay, are below when someone has run the benchmark on a GPU (`scripts/gpu_check.sh` does, and
# re-executing this page shows them):

# %%
for body in gpu.values():
    display(Markdown(body))
if not gpu:
    print("No GPU section in benchmarks/RESULTS.md yet: GPU speeds are unmeasured. A GPU run "
          "would be\ncompared with the roof computed above (about 250 tokens per second for "
          "Llama-2-7B on an H100).")

# %% [markdown]
# ## Running it on a GPU (Colab)
#
# 1. In Colab, *Runtime → Change runtime type → GPU* (a T4 is enough for the bundled model; a
#    7B model in 16 bits needs 13.5 GB for its weights, so an L4 or A100 for the Llama-2-7B
#    shape with transformers beside it).
# 2. Run this chapter with the `MODEL` line changed, e.g. `MODEL = "meta-llama/Llama-2-7b-hf"`
#    (gated: accept the licence and log in first). `al.load` picks CUDA and bf16 (fp16 on a
#    T4), and the timing cell above then also compiles the step with CUDA graphs.
# 3. For the full benchmark, clone the repository and run the script; it writes its sections
#    into `benchmarks/RESULTS.md`:
#
# ```bash
# git clone https://github.com/annotated-llama/annotated-llama && cd annotated-llama
# pip install -q --no-deps -e .
# pip install -q safetensors "gguf>=0.16" sentencepiece tokenizers tiktoken
# python -m annotated_llama fetch
# python benchmarks/gpu_decode.py  # llama2-7b shape (random weights) and smollm2-135m
# python benchmarks/gpu_decode.py --model meta-llama/Llama-2-7b-hf  # a real checkpoint
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
# about one copy of the weights. Its `convert` argument is for chapter 12: asked for a
# quantized model, the readers (and, for a memory-mapped Meta checkpoint, `build_model`) turn
# each layer matrix into its quantized linear as soon as it is read, so the 16-bit model is
# never whole in memory at all.

# %%
Markdown(f"```python\n{inspect.getsource(al.loading.build_model)}```")

# %% [markdown]
# ## What we have now
#
# The same weights and the same logits as the readable model, served by a decode path built
# for a GPU: a static `[batch, n_kv_heads, max_seq_len, head_dim]` cache per layer that only
# grows, a mask row computed from a position tensor, decode attention with each GQA group's
# query heads folded into one `[batch, n_kv_heads, n_rep, head_dim]` call that a fused kernel
# takes, fused `[q + k + v rows, dim]` and `[2 · ffn_dim, dim]` projections, a loop without host
# syncs whose positions are checked before it starts, and a step written so that
# `torch.compile` can turn it into one CUDA graph replay (not yet run on a GPU). The roof for
# batch-1 decoding is the memory bandwidth divided by the bytes of weights read per token; the
# benchmark measures how close each implementation gets, on the machine it runs on. The appendix tabulates the shapes of the model families, from which the same roof can
# be computed for any of them.
