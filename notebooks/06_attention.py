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
# # 6. Attention
#
# Attention is the only place in LLaMA where positions exchange information. Every other layer
# works on each position's vector alone. Chapter 5 left us with the tool that tells attention
# where things are, {term}`RoPE`; this chapter builds the attention layer around it.
#
# Each position asks a question (a query $q$), offers a label (a key $k$) and a content (a value
# $v$), all three linear projections of its normalised vector. A query is compared with the keys
# of its own and all earlier positions; the scores, after a {term}`softmax <Softmax>`, say how
# much of each value to take {cite}`vaswani2017attention`. For one
# {term}`attention head <Attention head>`, with the queries, keys and values of all positions
# stacked into matrices $Q, K, V$ (one row per position, $d$ = `head_dim` columns):
#
# $$
# \operatorname{head}(Q, K, V) = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V,
# \qquad M_{mn} = \begin{cases} 0 & n \le m \\ -\infty & n > m \end{cases}
# $$
#
# where RoPE has rotated the rows of $Q$ and $K$ and $M$, the
# {term}`causal mask <Causal mask>`, hides the future. LLaMA runs several heads side by side,
# concatenates their outputs and projects the result back to `dim` with a last matrix $W_O$.

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
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
from torch.nn.attention.bias import causal_lower_right  # noqa: E402

import annotated_llama as al  # noqa: E402
from annotated_llama.config import ModelArgs, count_parameters  # noqa: E402
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close  # noqa: E402

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %% [markdown]
# The model is the bundled SmolLM2-135M unless you change the next cell. Any LLaMA runs here: a
# Hugging Face id, a local directory or a GGUF file. Its weights in 16 bits take parameters × 2
# bytes: `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B`
# (gated, about 2.3 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf` (12.55 GiB) and
# `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the full table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# Our model, and as the reference transformers' `LlamaForCausalLM` built around the same
# tensors (`as_transformers`: one copy of the weights). What the two share is the weights as
# our loader read them; what is independent is transformers' model code: its attention, its
# RoPE in rotate-half form (the q/k rows are permuted on the fly to match), its norms. The
# bundled model's matrices are stored 4-bit ({term}`Q4_1`) in its GGUF file and dequantized to float32
# at load, so everything below is the quantized model's behaviour. As in chapter 5, the input
# of layer 0's attention is the `attention_norm` of the token embeddings of one sentence.

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
hf = as_transformers(model)
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"dim {args.dim}, n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, "
      f"head_dim {args.head_dim}, n_layers {args.n_layers}")

# %%
TEXT = "The capital of France is Paris, and the capital of Italy is Rome."
ids = tok.encode(TEXT)
tokens = torch.tensor([ids], device=model.device)  # [1, seq]
seq = tokens.shape[1]
labels = [tok.decode([i]) for i in ids]
x = model.layers[0].attention_norm(model.tok_embeddings(tokens))  # [1, seq, dim]
print("tokens:", labels)
print("x:", tuple(x.shape))

# %% [markdown]
# Every comparison below goes through `check_close`, which asserts that the largest difference,
# relative to the largest entry of the reference, stays within a tolerance set by the dtype the
# model runs in: float32 here on a CPU, bfloat16 or float16 on a GPU, where every product is
# rounded to 8 or 11 significant bits.

# %%
print({str(dt).removeprefix("torch."): tol for dt, tol in RELATIVE_TOLERANCE.items()})
print(f"this model runs in {model.dtype}: tolerance {RELATIVE_TOLERANCE[model.dtype]:.2g}")

# %% [markdown]
# ## Four projections
#
# Layer 0's attention holds four matrices (stored as `nn.Linear` weights, `[out, in]`): `wq`
# makes `n_heads` queries of `head_dim` numbers, `wk` and `wv` make `n_kv_heads` keys and values,
# and `wo` maps the concatenated head outputs back to `dim`. In the bundled model the 9 query
# heads share 3 key/value heads, so `wk` and `wv` are a third of the size of `wq`.

# %%
attn = model.layers[0].attention
for name in ["wq", "wk", "wv", "wo"]:
    w = getattr(attn, name).weight
    print(f"{name}: {str(tuple(w.shape)):>12}  {w.numel():>11,} parameters")

# %% [markdown]
# We build the layer by hand in float32, whatever dtype the model runs in. First the
# projections, split into heads:

# %%
wq, wk, wv, wo = (getattr(attn, n).weight.float() for n in ["wq", "wk", "wv", "wo"])
n_heads, n_kv_heads, hd = args.n_heads, args.n_kv_heads, args.head_dim
xf = x.float()
q = (xf @ wq.T).view(1, seq, n_heads, hd)  # [1, seq, n_heads, head_dim]
k = (xf @ wk.T).view(1, seq, n_kv_heads, hd)  # [1, seq, n_kv_heads, head_dim]
v = (xf @ wv.T).view(1, seq, n_kv_heads, hd)  # [1, seq, n_kv_heads, head_dim]
print("q:", tuple(q.shape), " k:", tuple(k.shape), " v:", tuple(v.shape))

# %% [markdown]
# Then RoPE on queries and keys (not on values: position only shapes *who* attends to whom),
# and the heads moved in front of the positions, the layout the matrix products want:

# %%
freqs = model.freqs_cis(model.device)[:seq]  # [seq, head_dim/2], positions 0 .. seq-1
q = al.model.apply_rotary_emb(q, freqs).transpose(1, 2)  # [1, n_heads, seq, head_dim]
k = al.model.apply_rotary_emb(k, freqs).transpose(1, 2)  # [1, n_kv_heads, seq, head_dim]
v = v.transpose(1, 2)  # [1, n_kv_heads, seq, head_dim]
print("q:", tuple(q.shape), " k:", tuple(k.shape), " v:", tuple(v.shape))

# %% [markdown]
# ## Sharing key/value heads
#
# The bundled model has 9 query heads but only 3 key and value heads.
# {term}`Grouped-query attention <GQA>` (GQA) {cite}`ainslie2023gqa` lets consecutive query
# heads share one key/value head: with `n_rep = n_heads // n_kv_heads` = 3, query heads 0, 1, 2
# read key/value head 0, heads 3, 4, 5 read head 1, and so on. The plain way to implement it is
# to repeat each key/value head `n_rep` times, with `repeat_interleave` (which repeats each head
# in place; `repeat` would tile the whole list instead, pairing query head 1 with the wrong
# key/value head).

# %%
n_rep = n_heads // n_kv_heads
print("query head -> key/value head:", {h: h // n_rep for h in range(n_heads)})
k_rep = k.repeat_interleave(n_rep, dim=1)  # [1, n_heads, seq, head_dim]
v_rep = v.repeat_interleave(n_rep, dim=1)  # [1, n_heads, seq, head_dim]
print("k_rep:", tuple(k_rep.shape), " v_rep:", tuple(v_rep.shape))
h_q = min(4, n_heads - 1)  # a query head; it reads key/value head h_q // n_rep
assert all(torch.equal(k_rep[:, h], k[:, h // n_rep]) for h in range(n_heads))
print(f"query head {h_q} reads key head {h_q // n_rep}: "
      f"{torch.equal(k_rep[:, h_q], k[:, h_q // n_rep])}")

# %% [markdown]
# ## Scores, scaled
#
# Every query is compared with every key by a dot product: `seq × seq` scores per head. The
# division by $\sqrt{d}$ keeps their size independent of the head dimension: the dot product of
# two random vectors with independent unit-variance entries has a standard deviation of
# $\sqrt{d}$, and softmax of large scores would be nearly one-hot.

# %%
a, b = torch.randn(2, 10_000, hd)  # 10,000 pairs of random vectors, entries ~ N(0, 1)
print(f"std of a·b for d = {hd}: {(a * b).sum(-1).std():.1f}  (√d = {hd ** 0.5:.1f})")

scores = q @ k_rep.transpose(-2, -1) / hd**0.5  # [1, n_heads, seq, seq]
print("scores:", tuple(scores.shape))

# %% [markdown]
# ## The causal mask
#
# A language model predicts the next token, so position $m$ must not see keys after $m$. The
# package's `causal_mask(seq, start_pos, device)` says which keys each query may see (`True`:
# visible). For a 5-token prompt it is the lower triangle; for 3 new tokens appended after 2
# cached ones (`start_pos=2`, the {term}`KV cache` of chapter 7) the queries see the 2 earlier
# positions as well:

# %%
print(al.model.causal_mask(5, 0, model.device).int())
print(al.model.causal_mask(3, 2, model.device).int())

# %% [markdown]
# Masked scores are set to $-\infty$, so that softmax gives them exactly zero weight. Softmax
# then turns each row into probabilities that sum to 1:

# %%
mask = al.model.causal_mask(seq, 0, model.device)  # [seq, seq] bool
probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # [1, n_heads, seq, seq]
row_sums = probs.sum(-1)
future = probs.masked_select(~mask).abs().max().item()
assert torch.allclose(row_sums, torch.ones_like(row_sums)) and future == 0.0
print("probs:", tuple(probs.shape))
print("rows sum to 1:", torch.allclose(row_sums, torch.ones_like(row_sums)))
print("weight on future keys:", future)

# %% [markdown]
# ## Weighted values and the output projection
#
# Each head's output at a position is the probability-weighted average of the values; the heads
# are concatenated back into one vector of `n_heads × head_dim` numbers per position (equal to
# `dim` in the bundled model and in most LLaMA models, 9 × 64 = 576 there) and projected by `wo`.

# %%
heads = probs @ v_rep  # [1, n_heads, seq, head_dim]
concat = heads.transpose(1, 2).reshape(1, seq, n_heads * hd)  # [1, seq, n_heads*head_dim]
ours = concat @ wo.T  # [1, seq, dim]
print("heads:", tuple(heads.shape), " concat:", tuple(concat.shape),
      " out:", tuple(ours.shape))
print(f"n_heads × head_dim = {n_heads * hd}, dim = {args.dim}")

# %% [markdown]
# ## The package's `Attention`
#
# The package does the same in its `Attention` module, displayed from its source. Two
# differences from our cell-by-cell version: it reads and writes the KV cache (chapter 7), and it
# hands scores, mask, softmax and weighted sum to one call, PyTorch's
# `scaled_dot_product_attention` (SDPA), which with `enable_gqa=True` also does the sharing of
# key/value heads.
#
# Whether that sharing saves the repeated copies depends on which of SDPA's kernels runs. PyTorch
# documents SDPA as equivalent to a reference that repeat-interleaves K and V, and that is what
# its math kernel does; on CUDA only the flash and the math kernels accept `enable_gqa`, and the
# flash kernel, which reads the shared heads in place, takes no explicit mask
# ([PyTorch's SDPA documentation](https://docs.pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html)).
# GQA together with a mask would therefore leave only the math kernel, so `Attention.forward`
# never passes both. A decode step, one new query after the cached positions, needs no mask at
# all; a prompt from position 0 asks SDPA for its built-in causal mask (`is_causal=True`); and
# only a chunk of several tokens after cached positions needs the rectangular mask, which it
# passes as `causal_lower_right` (the causal triangle aligned to the bottom-right corner of the
# scores), with K and V expanded by `repeat_interleave` first when the model uses GQA.

# %%
Markdown(f"```python\n{inspect.getsource(al.model.Attention)}```")

# %% [markdown]
# Our result against the package's module and against transformers' `LlamaAttention` of layer 0
# (`hf.model.layers[0].self_attn`). Transformers takes the RoPE `cos`/`sin` from outside, as
# `position_embeddings` computed by `hf.model.rotary_emb`; with no attention mask given, its SDPA
# path applies the causal mask itself. The package and transformers run in the model's dtype;
# our version ran in float32 from the same input.

# %%
attn.cache = None  # no KV cache: attend over this input only
package = attn(x, 0, freqs)  # [1, seq, dim]
positions = torch.arange(seq, device=model.device)[None]  # [1, seq]
cos_sin = hf.model.rotary_emb(x, positions)
reference, _ = hf.model.layers[0].self_attn(x, position_embeddings=cos_sin)  # [1, seq, dim]
tol = RELATIVE_TOLERANCE[model.dtype]
check_close(package, ours, model.dtype, "package Attention vs ours")
check_close(reference, ours, model.dtype, "transformers' self_attn vs ours")
print(f"ours vs package Attention:       within {tol:.2g} (relative): True")
print(f"ours vs transformers' self_attn: within {tol:.2g} (relative): True")

# %% [markdown]
# ## SDPA is the explicit formula
#
# `scaled_dot_product_attention` may use a fused kernel (on a GPU, flash attention
# {cite}`dao2022flashattention`) that never builds the `seq × seq` matrix of probabilities, but
# it computes the same function. With the repeated key/value heads or with `enable_gqa=True`,
# in float32 like our formula:

# %%
sdpa_rep = F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)  # [1, n_heads, seq, hd]
sdpa_gqa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=n_rep > 1)
check_close(sdpa_rep, heads, torch.float32, "SDPA, repeated K/V")
check_close(sdpa_gqa, heads, torch.float32, "SDPA, enable_gqa")
print("SDPA (repeated K/V) vs softmax formula: within 1e-05 (relative): True")
print("SDPA (enable_gqa)   vs softmax formula: within 1e-05 (relative): True")

# %% [markdown]
# The sharing order matters. Tiling the key/value heads with `repeat` instead of
# `repeat_interleave` pairs query heads with the wrong key/value heads, and the result is wrong
# (for a model with as many key/value heads as query heads, `n_rep = 1`, the two are the same):

# %%
wrong = F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1),
                                       is_causal=True)
print(f"n_rep = {n_rep}; repeat instead of repeat_interleave: "
      f"max abs diff {(wrong - heads).abs().max():.2f}")

# %% [markdown]
# ## Meta's code, side by side
#
# Meta's reference implementation (`llama/model.py` in
# [meta-llama/llama](https://github.com/meta-llama/llama), and the same in the Llama 3
# repository) writes attention out instead of calling SDPA, and differs from ours in three
# places:
#
# - **an additive float mask**, built once per forward pass and handed to every layer: a
#   `seq × seq` matrix of $-\infty$ above the diagonal (`torch.triu`), with `start_pos` columns
#   of zeros stacked on its left (`torch.hstack`) so that new tokens see the cached positions.
#   It is added to the scores. A single new token gets no mask. Ours chooses among no mask,
#   `is_causal` and `causal_lower_right`, and lets the kernel apply it;
# - **the softmax in float32**: the scores are cast to float32 for the softmax and the
#   probabilities cast back to the queries' dtype (`F.softmax(scores.float(), dim=-1).type_as(xq)`);
# - **key/value heads repeated** in memory for GQA (`repeat_kv`), where ours passes `enable_gqa`.
#
# Here is the same computation in a few lines of our own, run on the same queries, keys and
# values cast to the model's dtype, and compared with SDPA in that dtype: once for the whole
# sentence, and once for its last 3 tokens as a chunk after cached positions.

# %%
def attention_meta_style(q, k, v):
    """softmax(q·kᵀ/√d + additive mask)·v, written out the way Meta's reference code does it.

    q: [batch, n_heads, new, head_dim]; k, v: [batch, n_kv_heads, cached + new, head_dim].
    """
    new, total = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # GQA by copies
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # [batch, n_heads, new, total]
    if new > 1:  # 0 where a key is visible, -inf where it lies in the future
        future = torch.full((new, new), float("-inf"), device=q.device).triu(diagonal=1)
        cached = torch.zeros(new, total - new, device=q.device)  # cached keys: all visible
        scores = scores + torch.hstack([cached, future]).to(q.dtype)
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # softmax in float32, then cast back
    return weights @ v  # [batch, n_heads, new, head_dim]


qm, km, vm = (t.to(model.dtype) for t in (q, k, v))  # the model's dtype
meta_full = attention_meta_style(qm, km, vm)
sdpa_full = F.scaled_dot_product_attention(qm, km, vm, is_causal=True, enable_gqa=n_rep > 1)
c = 3  # the last c tokens, after seq - c cached positions
meta_chunk = attention_meta_style(qm[:, :, -c:], km, vm)
sdpa_chunk = F.scaled_dot_product_attention(  # as Attention.forward does it for a chunk
    qm[:, :, -c:], km.repeat_interleave(n_rep, dim=1), vm.repeat_interleave(n_rep, dim=1),
    attn_mask=causal_lower_right(c, seq))
check_close(meta_full, sdpa_full, model.dtype, "Meta-style vs SDPA, whole sentence")
check_close(meta_chunk, sdpa_chunk, model.dtype, "Meta-style vs SDPA, chunk")
check_close(meta_chunk, heads[:, :, -c:], model.dtype, "chunk vs the full computation")
print(f"in {model.dtype}, within {tol:.2g} (relative):")
print("  Meta-style vs SDPA (is_causal), whole sentence:       True")
print(f"  Meta-style vs SDPA (causal_lower_right), last {c} tokens: True")
print(f"  the chunk vs rows {seq - c}..{seq - 1} of the float32 computation:   True")

# %% [markdown]
# What does the float32 softmax buy? We take layer 0's float32 scores from above (masked), round
# them to bfloat16 and to float16 as a model in those dtypes would hold them, and compare three
# sets of probabilities with the exact softmax, computed in float64 from the float32 scores:
#
# - softmax computed directly on the 16-bit scores (PyTorch's kernel, 16-bit output);
# - Meta's way: the 16-bit scores cast to float32, softmax, cast back to 16 bits;
# - the exact softmax of the rounded scores: what rounding the scores alone costs.

# %%
masked = scores.masked_fill(~mask, float("-inf"))  # float32 [1, n_heads, seq, seq]
exact = masked.double().softmax(-1)
for dt in (torch.bfloat16, torch.float16):
    s16 = masked.to(dt)
    direct = s16.softmax(-1)  # in 16 bits
    meta = s16.float().softmax(-1).to(dt)  # float32 softmax, cast back
    rounded_scores = s16.double().softmax(-1)  # exact softmax of the rounded scores
    err = {name: (p.double() - exact).abs().max().item()
           for name, p in [("direct", direct), ("float32", meta), ("scores", rounded_scores)]}
    unit = torch.finfo(dt).eps / 2  # unit roundoff: 2^-8 (bf16), 2^-11 (fp16)
    # Cast from float32: the exact probabilities of the rounded scores, rounded once more.
    assert (meta.double() - rounded_scores).abs().max().item() <= unit
    print(f"{str(dt).removeprefix('torch.'):>8}: max abs error of the probabilities: "
          f"softmax in 16 bits {err['direct']:.1e}, in float32 {err['float32']:.1e}; "
          f"from rounding the scores alone {err['scores']:.1e}")
    print(f"{'':>8}  softmax in 16 bits vs float32-then-cast: max abs diff "
          f"{(direct.float() - meta.float()).abs().max().item():.1e}")

# %% [markdown]
# On the bundled model, on this CPU, the printed numbers say that the cast buys nothing here.
# PyTorch's softmax on 16-bit scores returned exactly the float32 result rounded to 16 bits
# (difference 0.0e+00), and the error of the probabilities, 4.4e-03 in bfloat16 and 5.2e-04 in
# float16, is of the size that rounding the scores alone to 16 bits causes (3.6e-03 and
# 6.1e-04), plus the rounding of the probabilities themselves. What Meta's `.float()`
# guarantees is that the exponentials and their sum are computed in float32 whatever kernel
# runs, instead of relying on the kernel to do so; the rounding of the scores, which a 16-bit
# matrix product has already done, it cannot undo.

# %% [markdown]
# ## Multi-head, grouped-query, multi-query
#
# The original transformer gives every query head its own key and value head:
# {term}`multi-head attention <MHA>` (MHA), `n_kv_heads = n_heads`, as in Llama-2-7B.
# {term}`Multi-query attention <MQA>` (MQA) {cite}`shazeer2019mqa` goes to the other extreme,
# one key/value head for all query heads. Grouped-query attention sits in between
# {cite}`ainslie2023gqa`.
#
# Fewer key/value heads mean smaller `wk` and `wv`, but the main gain is at generation time:
# the KV cache (chapter 7) stores one key and one value vector per key/value head, per layer,
# per token. From the package's presets, with 2 bytes per number (fp16/bf16):

# %%
def attention_sizes(a):
    q_o = 2 * a.dim * a.n_heads * a.head_dim  # wq and wo
    k_v = 2 * a.dim * a.n_kv_heads * a.head_dim  # wk and wv
    share = a.n_layers * (q_o + k_v) / count_parameters(a)
    kv_bytes = 2 * a.n_layers * a.n_kv_heads * a.head_dim * 2  # K and V, every layer, fp16
    mha_bytes = 2 * a.n_layers * a.n_heads * a.head_dim * 2  # with n_kv_heads = n_heads
    return q_o + k_v, share, kv_bytes, mha_bytes


print(f"{'model':>13} {'parameters':>15} {'heads q/kv':>10} {'attention/layer':>15} "
      f"{'share':>6} {'KV cache/token':>15} {'if MHA':>9}")
for name in ["smollm2-135m", "llama2-7b", "llama2-70b", "llama3.2-1b"]:
    a = ModelArgs.preset(name)
    per_layer, share, kv, mha = attention_sizes(a)
    print(f"{name:>13} {count_parameters(a):>15,} {f'{a.n_heads}/{a.n_kv_heads}':>10} "
          f"{per_layer:>15,} {share:>6.1%} {kv / 1024:>11,.1f} KiB {mha / 1024:>5,.0f} KiB")
kv_7b = attention_sizes(ModelArgs.preset("llama2-7b"))[2]
print(f"Llama-2-7B, KV cache for a full 4096-token context: {kv_7b * 4096 / 2**30:.0f} GiB")
print(f"the model loaded above: {args.n_heads}/{args.n_kv_heads} heads, "
      f"{args.n_rep} query heads per key/value head")

# %% [markdown]
# ("share" is the fraction of all the model's parameters that sit in attention.) The bundled
# model shares 3 key/value heads among 9 query heads; Llama-2-7B is multi-head, 32/32;
# Llama-2-70B has 64 query heads in 8 groups and Llama 3.2-1B 32 in 8. Llama-2-7B's cache takes
# 512 KiB per token, so its full 4096-token context needs 2 GiB per sequence. Llama-2-70B has
# about ten times as many parameters but, with 8 key/value heads instead of 64, needs only
# 320 KiB per token, eight times less than it would with multi-head attention. Multi-query
# attention would shrink it by another factor of 8, at some cost in quality, which is the
# trade-off GQA was proposed to balance {cite}`ainslie2023gqa`.

# %% [markdown]
# ## What real heads attend to
#
# `scaled_dot_product_attention` does not return its probabilities. To look at them we recompute
# them: forward hooks record the input and the output of every layer's attention module during
# one forward pass, and the package's `attention_probabilities(q, k)` turns the rotated queries
# and keys into the `[batch, n_heads, seq, seq]` weights.

# %%
Markdown(f"```python\n{inspect.getsource(al.model.attention_probabilities)}```")

# %%
captured = {}  # layer index -> (input, output) of its attention module


def record(index):
    def hook(module, inputs, output):
        captured[index] = (inputs[0], output)  # [1, seq, dim] each
    return hook


handles = [layer.attention.register_forward_hook(record(i))
           for i, layer in enumerate(model.layers)]
model.reset_cache()
model(tokens, last_only=True)  # the logits are not needed: only what the hooks record
for handle in handles:
    handle.remove()
print(f"captured {len(captured)} layers; input {tuple(captured[0][0].shape)}")

# %% [markdown]
# For each layer we recompute q, k and v from the recorded input, and, as a check that these are
# the probabilities the model used, rebuild the module's output from them:

# %%
def layer_probs(i):
    """Attention probabilities [n_heads, seq, seq] of layer i, checked against its output."""
    layer, (inp, out) = model.layers[i].attention, captured[i]
    q = layer.wq(inp).view(1, seq, n_heads, hd)
    k = layer.wk(inp).view(1, seq, n_kv_heads, hd)
    q = al.model.apply_rotary_emb(q, freqs).transpose(1, 2)  # [1, n_heads, seq, head_dim]
    k = al.model.apply_rotary_emb(k, freqs).transpose(1, 2)  # [1, n_kv_heads, seq, head_dim]
    v = layer.wv(inp).view(1, seq, n_kv_heads, hd).transpose(1, 2)
    p = al.model.attention_probabilities(q, k)  # [1, n_heads, seq, seq] float32
    mixed = (p @ v.float().repeat_interleave(n_rep, dim=1)).transpose(1, 2).reshape(1, seq, -1)
    rebuilt = layer.wo(mixed.to(inp.dtype))  # [1, seq, dim]
    check_close(rebuilt, out, model.dtype, f"layer {i}'s attention output, rebuilt")
    return p[0]


probs_all = torch.stack([layer_probs(i) for i in range(args.n_layers)])
print("probabilities [n_layers, n_heads, seq, seq]:", tuple(probs_all.shape))
print(f"every layer's output rebuilt from them within {tol:.2g} (relative)")

# %% [markdown]
# Two simple statistics per head: the average weight a query puts on the **first token** and on
# the **previous token**. We average over query positions 2 and later, where the two are
# different keys. For comparison, a head that spread its weight evenly over all visible keys
# would give each of them, on average over the same queries, the "uniform" value.

# %%
rows = torch.arange(2, seq)  # query positions 2 .. seq-1
first = probs_all[:, :, rows, 0].mean(-1)  # [n_layers, n_heads]
previous = probs_all[:, :, rows, rows - 1].mean(-1)  # [n_layers, n_heads]
uniform = (1.0 / (rows + 1)).mean().item()
print(f"uniform baseline: {uniform:.2f}")
shown = sorted({i for i in [0, 1, 2, args.n_layers // 2, args.n_layers - 1] if i < args.n_layers})
for i in shown:
    print(f"layer {i:2d}  first token:    " + " ".join(f"{p:.2f}" for p in first[i]))
    print(f"{'':8s}  previous token: " + " ".join(f"{p:.2f}" for p in previous[i]))

# %% [markdown]
# The same two statistics for every head of every layer, and what the maps show in numbers:

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5.5), sharey=True)
for ax, values, title in [(axes[0], first, "mean attention to the first token"),
                          (axes[1], previous, "mean attention to the previous token")]:
    image = ax.imshow(values.cpu(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set(xlabel="head", title=title, xticks=range(n_heads))
    ax.title.set_fontsize(10)
axes[0].set_ylabel("layer")
fig.colorbar(image, ax=axes, label="attention weight (0-1)")
n_early = min(2, args.n_layers)  # layers 0 and 1
early, late = first[:n_early], first[n_early:]
print(f"two maps of [n_layers, n_heads] = {tuple(first.shape)}")
print(f"heads with mean first-token attention > 0.5: layers 0-{n_early - 1}: "
      f"{int((early > 0.5).sum())} of {early.numel()} (largest {early.max():.2f})", end="")
if late.numel():
    print(f", layers {n_early}-{args.n_layers - 1}: {int((late > 0.5).sum())} of {late.numel()}")
else:
    print()
top = previous.flatten().topk(min(3, previous.numel()))
strongest = [(j // n_heads, j % n_heads) for j in top.indices.tolist()]  # (layer, head)
print("strongest previous-token heads: "
      + ", ".join(f"layer {li} head {hi} ({p:.2f})" for (li, hi), p in zip(strongest, top.values)))
plt.show()

# %% [markdown]
# Attention maps of single heads, the rows being queries and the columns keys. The upper
# triangle is empty: that is the causal mask. First, three heads of layer 0, picked by what we
# just measured: the one with the most attention on the previous token, the one with the most
# on the first token, and the one whose weights are spread most evenly (the largest average
# entropy of its rows).

# %%
def show_heads(layer_heads):
    """Attention maps for a list of (layer, head), side by side, and a one-line summary of each."""
    fig, axes = plt.subplots(1, len(layer_heads), figsize=(4.4 * len(layer_heads), 4.6),
                             layout="constrained", squeeze=False)
    for ax, (layer, h) in zip(axes[0], layer_heads):
        image = ax.imshow(probs_all[layer, h].cpu(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(seq), labels, rotation=90, fontsize=9)
        ax.set_yticks(range(seq), labels, fontsize=9)
        ax.set_title(f"layer {layer}, head {h}", fontsize=10)
        ax.set_xlabel("key (attended to)", fontsize=9)
        print(f"layer {layer:2d}, head {h}: on average {first[layer, h]:.2f} on the first token, "
              f"{previous[layer, h]:.2f} on the previous one")
    axes[0, 0].set_ylabel("query (attending)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    plt.show()


p0 = probs_all[0].clamp_min(1e-30)  # layer 0: [n_heads, seq, seq]
entropy = -(p0 * p0.log()).sum(-1)[:, rows].mean(-1)  # mean row entropy per head, nats
picked = []
for score in (previous[0], first[0], entropy):  # best head for each, skipping heads already taken
    order = [h for h in score.argsort(descending=True).tolist() if h not in picked]
    if order:
        picked.append(order[0])
show_heads([(0, h) for h in picked])

# %% [markdown]
# And three heads of deeper layers: the strongest previous-token head found above, and the two
# heads of the middle layer with the most attention on the first token.

# %%
middle = args.n_layers // 2
sinks = first[middle].argsort(descending=True)[:2].tolist()
best_layer, best_head = strongest[0]
print(f"previous-token head: layer {best_layer}, head {best_head}; "
      f"first-token heads of layer {middle}: {sinks}")

# %%
show_heads([(best_layer, best_head)] + [(middle, h) for h in sinks])

# %% [markdown]
# In every map the first row is trivially all on the first token, the only key the first query
# can see. Beyond that, what the printed numbers support, on the bundled model and this one
# 15-token sentence:
#
# - In layers 0 and 1 no head puts more than half of its attention on the first token on average
#   (0 of 18 heads; the largest average is 0.33, against a uniform baseline of 0.14).
# - From layer 2 on, 175 of the 252 heads put more than half of their attention on the first
#   token, "The" here (SmolLM2 adds no {term}`BOS`). Xiao et al. describe the same
#   {term}`attention sink <Attention sink>` in Llama-2-7B, whose first token is BOS
#   {cite}`xiao2023sinks`. Softmax weights must sum to one, and a sink is where a head can put
#   weight that it does not want to spend on any other token.
# - A few heads mostly read the previous token: the strongest are head 1 of layer 11 and head 0
#   of layer 16 (0.75 each on average; the first one's map, above, is the bright line just
#   below the diagonal), then head 1 of layer 2 (0.62); in layer 1, head 2 reaches 0.58.
#
# One sentence is a small sample: these are observations about these heads on this input, not a
# description of what the heads "do" in general; and they are the heads of the 4-bit quantized
# model, which may attend slightly differently from the original weights. Chapter 10 looks
# inside the model with more tools.

# %% [markdown]
# Every head of every layer, to explore: pick a layer and a head in the menus or click a cell of
# the small map on the left (each head's mean weight on the first token, the sink column of the
# maps above); hover a row of the large map to read one query's weights on every key. The first
# column, framed in red, is the first token.

# %%
from annotated_llama import explorers  # noqa: E402

attention_explorer = explorers.attention(
    probs_all, labels, title=f"Attention weights for {TEXT!r}", layer=best_layer, head=best_head)
print(attention_explorer.summary)
print(f"opens on layer {best_layer}, head {best_head} (the strongest previous-token head)")

# %% tags=["remove-input", "nbval-ignore-output"]
attention_explorer

# %% [markdown]
# ## What we have now
#
# - One attention layer, built by hand: `x [batch, seq, dim]` → `q [batch, n_heads, seq,
#   head_dim]`, `k, v [batch, n_kv_heads, seq, head_dim]` → RoPE on q and k → key/value heads
#   repeated `n_rep` times → scores and probabilities `[batch, n_heads, seq, seq]` → weighted
#   values `[batch, n_heads, seq, head_dim]` → concatenated and projected by `wo` back to
#   `[batch, seq, dim]`.
# - Checked against the package's `Attention` and transformers' `LlamaAttention`, SDPA checked
#   against the explicit softmax formula, and Meta's way (additive mask, float32 softmax)
#   checked against SDPA in the model's dtype, for a prompt and for a chunk after cached
#   positions.
# - The cost side of grouped-query attention: the KV cache per token for four models.
#
# The attention output is added to the residual stream. Chapter 7 makes generation fast by
# keeping the keys and values of past tokens in the KV cache instead of recomputing them; the
# feed-forward layer that follows attention in every block comes in chapter 8.
