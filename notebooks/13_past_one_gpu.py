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
# # 13. Past one GPU
#
# Llama-2-70B's weights take more memory in bf16 than an 80 GB A100 or H100 holds (the memory
# table below has the numbers). Meta ships it as eight files, `consolidated.00.pth` …
# `consolidated.07.pth`, because Meta's reference code runs it on eight GPUs, one file each:
# every matrix is cut into eight slices, and each GPU computes with its own slices. This is
# {term}`tensor parallelism <Tensor parallelism>`, the scheme of Megatron-LM
# {cite}`shoeybi2019megatron`, which Meta's code runs through fairscale's column- and
# row-parallel layers. This chapter shows where the cuts go and
# why they cost only two all-reduces per layer, what those cost on real links, how much memory
# each GPU needs for 7B, 70B and 405B models, and then runs the split model on this CPU, as two
# processes talking through PyTorch's own distributed engine, `torch.distributed` (gloo on a CPU,
# NCCL on GPUs), with logits equal to the single-process model's.

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
import copy
import inspect
import os
import textwrap

import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama import parallel
from annotated_llama.generate import generate_ids

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU
model, tok = al.load(MODEL, dtype=DTYPE)
args = model.args
print(f"{args.n_layers} layers, dim {args.dim}, {args.n_heads} query heads, "
      f"{args.n_kv_heads} KV heads, FFN {args.ffn_dim}, vocabulary {args.vocab_size}")

# %% [markdown]
# ## Two ranks in one process: cutting a layer by hand
#
# Attention is a sum over heads. Each head $h$ computes its own output $o_h$ (`head_dim` numbers)
# from its own rows of $W_q$, $W_k$, $W_v$, and the output projection multiplies the concatenated
# heads by $W_o$, which is the same as adding up each head's output times *its* columns of $W_o$:
#
# $$
# \text{attn}(x) = W_o \,[o_1; \dots; o_H] = \sum_{\text{rank } r} \; W_o^{(r)} \,[o_h]_{h \in r}.
# $$
#
# So a rank that holds some heads (its rows of $W_q, W_k, W_v$: **column-parallel**, cut along the
# output dimension) and the matching columns of $W_o$ (**row-parallel**, cut along the input
# dimension) computes a partial sum with no help, and one {term}`all-reduce <All-reduce>` (every
# rank ends with the sum over ranks) completes the layer. The SwiGLU feed-forward is a sum over its hidden units in
# the same way: $W_2\,(\text{silu}(W_1 x) \odot W_3 x) = \sum_r W_2^{(r)}\,(\text{silu}(W_1^{(r)} x)
# \odot W_3^{(r)} x)$, with $W_1, W_3$ cut by rows and $W_2$ by columns: the second all-reduce.
# Everything between (RoPE, the softmax, the SiLU, the product) acts on one head or one hidden
# unit at a time and never needs another rank's numbers.
#
# Here is that cut done by hand on the first layer, in float32 on the CPU: two copies of the
# attention module, each given one rank's slices (from `parallel.plan`, below), and their
# outputs added.

# %%
layer = copy.deepcopy(model.layers[0]).float().cpu()
torch.manual_seed(0)
x = torch.randn(1, 6, args.dim)  # [batch, seq, dim]: a residual stream, already normed
freqs = model.freqs_cis(torch.device("cpu"))[:6]


def rank_attention(attention, s):
    """One rank's attention: its heads' rows of wq/wk/wv, their columns of wo, and no all-reduce."""
    part = copy.deepcopy(attention)
    part.cache = None
    part.n_heads, part.n_kv_heads = s.n_heads, s.n_kv_heads
    for name in ("wq", "wk", "wv", "wo"):
        dim, ranges = s.ranges(name + ".weight")
        w = getattr(attention, name).weight
        sliced = torch.cat([w[lo:hi] if dim == 0 else w[:, lo:hi] for lo, hi in ranges], dim)
        setattr(part, name, torch.nn.Linear(sliced.shape[1], sliced.shape[0], bias=False))
        getattr(part, name).weight.data = sliced
    return part


with torch.no_grad():
    layer.attention.cache = None
    full = layer.attention(x, 0, freqs)  # [1, 6, dim]
    ranks = [rank_attention(layer.attention, parallel.plan(args, r, 2)) for r in range(2)]
    partial = [part(x, 0, freqs) for part in ranks]  # each [1, 6, dim], a partial sum
scale = full.abs().max().item()
attention_ok = (partial[0] + partial[1] - full).abs().max().item() < 1e-5 * scale
alone_differs = not torch.allclose(partial[0], full, atol=1e-3)
print("rank 0 alone is not the answer:", alone_differs)
print("rank 0 + rank 1 == the full attention output "
      "(float32, max abs diff below 1e-5 of the largest value):", attention_ok)
assert alone_differs and attention_ok

# %% [markdown]
# The feed-forward, cut by hidden units:

# %%
ff = layer.feed_forward
with torch.no_grad():
    parts = []
    for r in range(2):
        lo, hi = parallel.plan(args, r, 2).ffn
        gate = torch.nn.functional.silu(x @ ff.w1.weight[lo:hi].T)  # [1, 6, ffn/2]
        h = gate * (x @ ff.w3.weight[lo:hi].T)  # [1, 6, ffn/2]: this rank's hidden units
        parts.append(h @ ff.w2.weight[:, lo:hi].T)  # [1, 6, dim], a partial sum
    whole = ff(x)  # [1, 6, dim]
    ffn_ok = (parts[0] + parts[1] - whole).abs().max().item() < 1e-5 * whole.abs().max().item()
print("rank 0 + rank 1 == the full feed-forward "
      "(max abs diff below 1e-5 of the largest value):", ffn_ok)
assert ffn_ok

# %% [markdown]
# The ends of the model are cut the way Meta's files cut them: the token embedding along the model
# dimension (each rank looks up its `dim / N` columns of every token's vector, and an all-gather
# puts the vectors together) and the LM head along the vocabulary (each rank scores its
# `vocab / N` tokens, and an all-gather concatenates the logits). Norms are small and copied to
# every rank; the residual stream between the all-reduces is the same on every rank.

# %% [markdown]
# ## Which heads each rank holds
#
# `parallel.plan(args, rank, N)` says which slices rank `rank` of `N` keeps. Query heads are dealt
# out in order; when `N` does not divide them the shares differ by one (the bundled model's 9 heads
# go 4 + 5 on two ranks: the all-reduce adds whole `[…, dim]` partial sums, whatever each rank
# summed over). Key/value heads follow a rule, because in
# {term}`grouped-query attention <GQA>` several query heads read one KV head:
#
# * when `N` divides the KV heads, they are divided like the query heads, without copies
#   (Llama-2-70B: 64 query and 8 KV heads on 8 GPUs, one KV head each);
# * otherwise each rank keeps the KV heads its own query heads read: with fewer KV heads than
#   ranks, one KV head, copied onto several ranks; and when a rank's query heads do not read its
#   KV heads in equal groups, one KV copy per query head, so that attention on that rank is plain
#   multi-head (correct, at the price of a larger {term}`KV cache` there).

# %%
for name, a, n in (("this model", args, 2), ("llama2-70b", al.ModelArgs.preset("llama2-70b"), 8)):
    for r in range(n) if n <= 2 else (0, 7):
        s = parallel.plan(a, r, n)
        print(f"{name}, rank {r} of {n}: query heads {s.q_heads[0]}..{s.q_heads[1] - 1}, "
              f"KV heads {list(s.kv_heads)}, FFN units {s.ffn[0]}..{s.ffn[1] - 1}, "
              f"embedding columns {s.dim[0]}..{s.dim[1] - 1}, "
              f"vocabulary rows {s.vocab[0]}..{s.vocab[1] - 1}")

# %% [markdown]
# ## The split model: the readable one with its matrices swapped
#
# The parallel model is chapter 9's `Transformer` with each matrix replaced by the rank's slice;
# `Attention.forward` and `FeedForward.forward` run as written, on the rank's heads and hidden
# units. The only new code is where the sums happen: `wo` and `w2` become a linear layer followed
# by an all-reduce.

# %%
Markdown(f"```python\n{inspect.getsource(parallel.RowParallelLinear)}\n"
         f"{inspect.getsource(parallel.ParallelEmbedding)}```")

# %%
init = inspect.getsource(parallel.TensorParallelTransformer.__init__)
Markdown(f"```python\n{textwrap.dedent(init)}```")

# %% [markdown]
# Each rank reads only its own slice of the checkpoint. A Meta directory with as many
# `consolidated.NN.pth` files as ranks is the easy case: file `r` *is* rank `r`'s slice, loaded as
# saved, with nothing merged. Other shard counts are memory-mapped and cut; a Hugging Face
# directory is read with safetensors' `get_slice`, which reads only the rows or columns asked
# for (whole heads, then each head's rows un-permuted from the rotate-half order, chapter 5); a
# GGUF file is dequantized one tensor at a time and cut. A rank that fails to load tells every
# other rank, so all of them stop with the same error instead of waiting for it.

# %% [markdown]
# ## What the all-reduces cost
#
# Per token and per layer, each all-reduce adds up one `[dim]` vector from every rank: $d$ numbers
# of 2 bytes in bf16. NCCL's ring all-reduce makes each rank send (and receive) $2\,(N-1)/N$ times
# that payload. Per token, with $L$ layers:
#
# $$
# \text{bytes sent per rank per token} = 2 L \cdot \frac{2(N-1)}{N} \cdot 2d.
# $$
#
# The table divides this by the link speed: NVLink 4 on an H100 SXM, 900 GB/s per GPU in both
# directions together, 450 GB/s each way {cite}`nvidia2022h100`; PCIe 4.0 ×16, 16 GT/s per lane
# with 128b/130b coding, 31.5 GB/s each way; and a 100 Gb/s Ethernet link, 12.5 GB/s. These are
# computed from the links' nominal speeds, not measured: no GPU has run this chapter yet.

# %%
LINKS = {"NVLink 4 (450 GB/s)": 450e9, "PCIe 4.0 x16 (31.5 GB/s)": 31.5e9,
         "100 GbE (12.5 GB/s)": 12.5e9}  # bytes/s each way
PRESETS = {"Llama-2-7B": al.ModelArgs.preset("llama2-7b"),
           "Llama-2-70B": al.ModelArgs.preset("llama2-70b"),
           "Llama-3.1-405B": al.ModelArgs.preset("llama3.1-405b")}


def sent_per_token(a, n):  # bytes each rank sends per token: 2 all-reduces per layer, bf16
    return 2 * a.n_layers * 2 * (n - 1) / n * 2 * a.dim


print(f"{'model':15} {'N':>2} {'calls':>6} {'KB sent/token':>13}  "
      + "  ".join(f"{k:>25}" for k in LINKS))
for name, a in PRESETS.items():
    for n in (2, 8):
        sent = sent_per_token(a, n)
        times = "  ".join(f"{sent / bw * 1e6:>20.1f} µs/tok" for bw in LINKS.values())
        print(f"{name:15} {n:>2} {2 * a.n_layers:>6} {sent / 1e3:>13.0f}  {times}")
a70 = PRESETS["Llama-2-70B"]
read_s = al.count_parameters(a70) * 2 / 8 / 3.35e12  # one rank's bf16 weights at H100 bandwidth
prompt_bytes = 2048 * sent_per_token(a70, 8)
print(f"Llama-2-70B at TP 8: one rank reads its weights in {read_s * 1e3:.1f} ms at 3.35 TB/s; "
      f"a 2,048-token prompt sends {prompt_bytes / 1e9:.1f} GB per rank: "
      + ", ".join(f"{prompt_bytes / bw * 1e3:,.0f} ms" for bw in LINKS.values()))

# %% [markdown]
# At batch 1 these are small amounts: 70B on 8 GPUs sends 4.6 MB per token, 10 µs of NVLink,
# while each GPU reads its 16 GiB of weights for the same token in about 5 ms at the H100's
# 3.35 TB/s. What costs at batch 1 is the number of calls: 160 all-reduces per token for 70B,
# each paying a fixed start-up latency however small its message; at, say, 10 µs per call (an
# illustration, not a measurement) that is already 1.6 ms per token. Bandwidth matters when many
# tokens travel at once: a 2,048-token prompt sends 2,048 times as much, 9.4 GB per rank for 70B
# on 8 GPUs: 21 ms over NVLink, 0.3 s over PCIe, 0.75 s over Ethernet (the last line). That is
# why tensor parallelism is kept inside one machine's NVLink domain, and machines are joined by
# other splits (pipeline or data parallelism), which send far less {cite}`shoeybi2019megatron`.

# %% [markdown]
# ## Memory per rank
#
# Every matrix is cut in $N$, so the weights per rank are the model's divided by $N$, plus the
# norms, copied to every rank (the last column: 8.3 MB at most). The KV cache divides too, as
# long as there are at least $N$ KV heads; beyond that each rank keeps one. An 80 GB GPU holds
# 74.5 GiB.

# %%
print(f"{'model':15} {'parameters':>16} " + "  ".join(f"{f'TP {n}':>10}" for n in (1, 2, 4, 8))
      + "   KV per token, TP 8   norms")
for name, a in PRESETS.items():
    weights = al.count_parameters(a) * 2  # bf16
    kv_heads = max(1, a.n_kv_heads // 8)
    kv = 2 * a.n_layers * kv_heads * a.head_dim * 2  # K and V, bf16
    norms = (2 * a.n_layers + 1) * a.dim * 2  # two per layer and the final one, bf16
    print(f"{name:15} {al.count_parameters(a):>16,} "
          + "  ".join(f"{weights / n / 2**30:>6.1f} GiB" for n in (1, 2, 4, 8))
          + f"   {kv / 2**10:>12.0f} KiB   {norms / 1e6:.1f} MB")
print(f"an 80 GB GPU: {80e9 / 2**30:.1f} GiB")

# %% [markdown]
# 70B fits on two 80 GB GPUs with about 10 GiB each left for the KV cache, the activations and
# CUDA's own buffers, on four with room to spare; 405B does not fit on eight 80 GB GPUs in bf16
# (94.5 GiB per rank). Meta runs it in bf16 on two such machines, and with fp8 weights on one
# {cite}`dubey2024llama3`.

# %% [markdown]
# ## A run on this CPU: two processes, one model
#
# `parallel.run_local(fn, 2, ...)` starts two Python processes, joins them in a gloo process group
# (with a timeout, so that a rank whose partner died raises instead of waiting for ever) and runs
# `fn` on each: here, load the rank's slice, compute the prompt's logits, decode greedily, and
# time the decoding with the seconds spent inside the collectives. The same code runs from a shell
# as one process per GPU: `torchrun --nproc-per-node 2 -m annotated_llama generate "…" --tp 2`.
# The reference is the ordinary single-process model, in float32 on the CPU. A model too large to
# run twice on a CPU (on Colab with a 7B) is replaced by the bundled one for this section.

# %%
RUN_MODEL = MODEL if al.count_parameters(args) < 1e9 else "smollm2-135m"
if RUN_MODEL == MODEL and model.device.type == "cpu" and model.dtype == torch.float32:
    reference = model  # already what the ranks will compare with: no second copy of the weights
else:
    del model  # one copy at a time: the float32 CPU reference replaces the model loaded above
    reference, tok = al.load(RUN_MODEL, device="cpu", dtype=torch.float32)
prompt = tok.encode("The capital of France is")
torch.set_num_threads(2)  # the same two cores the two ranks get, one each
with torch.inference_mode():
    expected = reference(torch.tensor([prompt]))
    expected_ids = list(generate_ids(reference, prompt, 8))
single = parallel.time_decode(reference, prompt)
ranks = parallel.run_local(parallel.check_and_time, 2, RUN_MODEL, prompt, 8,
                           timeout_s=300, threads=1)  # one dict per rank
for r, out in enumerate(ranks):
    same_logits = (out["logits"] - expected).abs().max().item() < 1e-4
    print(f"rank {r}: {out['how']}; {out['weights_mib']:.1f} MiB of weights")
    print(f"  logits equal the single process's (float32, max abs diff < 1e-4): {same_logits}; "
          f"greedy tokens identical: {out['ids'] == expected_ids}")
    assert same_logits and out["ids"] == expected_ids
print("continuation:", repr(tok.decode(ranks[0]["ids"])))

# %%
t1, t2 = single["token_s"], max(out["token_s"] for out in ranks)
share = max(out["comm_share"] for out in ranks)
print(f"TP 1 (one process, 2 threads): ⏱{t1 * 1e3:.0f} ms per token, "
      f"{single['weights_mib']:.0f} MiB of weights")
print(f"TP 2 (two processes, 1 thread each): ⏱{t2 * 1e3:.0f} ms per token, "
      f"⏱{share * 100:.0f}% of it in {ranks[0]['comm_calls']:.0f} collectives per token "
      f"({ranks[0]['comm_bytes'] / 1e3:.0f} KB per token)")
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # 1-minute average
print(f"measured on this machine's CPU; load average after the runs ⏱{load:.1f}")

# %% [markdown]
# The point of the run is the equality: the split model computes the same numbers as the whole one,
# from its halves of the checkpoint. For the bundled model the weights per rank are about two
# thirds of the single process's, not half: a model with tied embeddings (this one) gives each
# rank its columns of the embedding *and* its rows of the LM head, two slices of one matrix, and
# with 9 query heads over 3 KV heads neither rank's heads read their KV heads in equal groups, so
# each keeps one KV copy per query head.
#
# The times say little about GPUs. Two processes on two CPU cores do the same arithmetic as one
# process with two threads, divided differently, plus the collectives, which gloo runs through the
# operating system's sockets; a collective's time also includes waiting for the slower rank to
# arrive, so on a busy machine the share printed above can be mostly waiting, and the scheduler
# decides these numbers more than the split does. They come from one run on a shared two-core
# CPU (its load is printed with them). On GPUs the split is meant to buy what one GPU cannot
# have: memory, and the memory bandwidth of N GPUs reading their slices at once; no GPU has run
# it for this book yet, so NCCL's side of it is unmeasured.

# %% [markdown]
# ## What we have now
#
# The same forward pass on N processes: each rank holds its heads (rows of `wq`, `wk`, `wv`,
# columns of `wo`), its FFN hidden units (rows of `w1`, `w3`, columns of `w2`), its columns of the
# embedding and its rows of the LM head; two all-reduces per layer and two all-gathers per call
# make its logits equal the single-process model's. A Meta checkpoint with N shards loads one
# shard per rank as saved; every other format is cut on load. At batch 1 the communication is a
# few MB per token and costs latency more than bandwidth; the memory per GPU divides by N.
