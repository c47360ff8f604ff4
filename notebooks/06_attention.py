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
# where things are, RoPE; this chapter builds the attention layer around it.
#
# Each position asks a question (a query $q$), offers a label (a key $k$) and a content (a value
# $v$), all three linear projections of its normalised vector. A query is compared with the keys
# of its own and all earlier positions; the scores, after a softmax, say how much of each value
# to take {cite}`vaswani2017attention`. For one head, with the queries, keys and values of all
# positions stacked into matrices $Q, K, V$ (one row per position, $d$ = `head_dim` columns):
#
# $$
# \operatorname{head}(Q, K, V) = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V,
# \qquad M_{mn} = \begin{cases} 0 & n \le m \\ -\infty & n > m \end{cases}
# $$
#
# where RoPE has rotated the rows of $Q$ and $K$ and $M$, the causal mask, hides the future.
# LLaMA runs several heads side by side, concatenates their outputs and projects the result back
# to `dim` with a last matrix $W_O$.

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
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
import annotated_llama as al  # noqa: E402
from annotated_llama.config import ModelArgs, count_parameters  # noqa: E402
from annotated_llama.reference import transformers_model  # noqa: E402

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %% [markdown]
# Our model, and transformers' `LlamaForCausalLM` on the same weights as the reference. As in
# chapter 5, the input of layer 0's attention is the `attention_norm` of the token embeddings of
# one sentence.

# %%
model, tok = al.load(MODEL)
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"dim {args.dim}, n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, "
      f"head_dim {args.head_dim}")

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
# The comparisons below are exact up to float32 rounding on the bundled model, which runs in
# float32 on a CPU. A model running in bfloat16 on a GPU rounds every product to 8 significant
# bits, so there we allow a looser tolerance.

# %%
TOL = 1e-4 if model.dtype == torch.float32 else 5e-2
print(f"tolerance for comparisons in {model.dtype}: {TOL:g}")

# %% [markdown]
# ## Four projections
#
# Layer 0's attention holds four matrices (stored as `nn.Linear` weights, `[out, in]`): `wq`
# makes `n_heads` queries of `head_dim` numbers, `wk` and `wv` make `n_kv_heads` keys and values,
# and `wo` maps the concatenated head outputs back to `dim`. On the bundled model the 9 query
# heads share 3 key/value heads, so `wk` and `wv` are a third of the size of `wq`.

# %%
attn = model.layers[0].attention
for name in ["wq", "wk", "wv", "wo"]:
    w = getattr(attn, name).weight
    print(f"{name}: {str(tuple(w.shape)):>11}  {w.numel():>9,} parameters")

# %% [markdown]
# We build the layer by hand in float32. First the projections, split into heads:

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
# There are 9 query heads but only 3 key and value heads. Grouped-query attention (GQA)
# {cite}`ainslie2023gqa` lets consecutive query heads share one key/value head: with
# `n_rep = n_heads // n_kv_heads` = 3, query heads 0, 1, 2 read key/value head 0, heads 3, 4, 5
# read head 1, and so on. The plain way to implement it is to repeat each key/value head `n_rep`
# times, with `repeat_interleave` (which repeats each head in place; `repeat` would tile the whole
# list instead, pairing query head 1 with the wrong key/value head).

# %%
n_rep = n_heads // n_kv_heads
print("query head -> key/value head:", {h: h // n_rep for h in range(n_heads)})
k_rep = k.repeat_interleave(n_rep, dim=1)  # [1, n_heads, seq, head_dim]
v_rep = v.repeat_interleave(n_rep, dim=1)  # [1, n_heads, seq, head_dim]
print("k_rep:", tuple(k_rep.shape), " v_rep:", tuple(v_rep.shape))
print("query head 4 reads key head 1:", torch.equal(k_rep[:, 4], k[:, 1]))

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
# cached ones (`start_pos=2`, the KV cache of chapter 7) the queries see the 2 earlier positions
# as well:

# %%
print(al.model.causal_mask(5, 0, model.device).int())
print(al.model.causal_mask(3, 2, model.device).int())

# %% [markdown]
# Masked scores are set to $-\infty$, so that softmax gives them exactly zero weight. Softmax
# then turns each row into probabilities that sum to 1:

# %%
mask = al.model.causal_mask(seq, 0, model.device)  # [seq, seq] bool
probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # [1, n_heads, seq, seq]
print("probs:", tuple(probs.shape))
print("rows sum to 1:", torch.allclose(probs.sum(-1), torch.ones_like(probs[..., 0])))
print("weight on future keys:", probs.masked_select(~mask).abs().max().item())

# %% [markdown]
# ## Weighted values and the output projection
#
# Each head's output at a position is the probability-weighted average of the values; the heads
# are concatenated back into one vector of `n_heads × head_dim` = 576 numbers per position
# (equal to `dim` here, as in most LLaMA models) and projected by `wo`.

# %%
heads = probs @ v_rep  # [1, n_heads, seq, head_dim]
concat = heads.transpose(1, 2).reshape(1, seq, n_heads * hd)  # [1, seq, n_heads*head_dim]
ours = concat @ wo.T  # [1, seq, dim]
print("heads:", tuple(heads.shape), " concat:", tuple(concat.shape),
      " out:", tuple(ours.shape))

# %% [markdown]
# ## The package's `Attention`
#
# The package does the same in its `Attention` module, displayed from its source. Two
# differences from our cell-by-cell version: it reads and writes the KV cache (chapter 7), and it
# hands scores, mask, softmax and weighted sum to one call, PyTorch's
# `scaled_dot_product_attention` (SDPA), which with `enable_gqa=True` also does the sharing of
# key/value heads without materialising the repeated copies.

# %%
Markdown(f"```python\n{inspect.getsource(al.model.Attention)}```")

# %% [markdown]
# Our result against the package's module and against transformers' `LlamaAttention` of layer 0
# (`hf.model.layers[0].self_attn`). Transformers takes the RoPE `cos`/`sin` from outside, as
# `position_embeddings` computed by `hf.model.rotary_emb`; with no attention mask given, its SDPA
# path applies the causal mask itself.

# %%
attn.cache = None  # no KV cache: attend over this input only
package = attn(x, 0, freqs)  # [1, seq, dim]
positions = torch.arange(seq, device=model.device)[None]  # [1, seq]
cos_sin = hf.model.rotary_emb(x, positions)
reference, _ = hf.model.layers[0].self_attn(x, position_embeddings=cos_sin)  # [1, seq, dim]
diff_package = (ours - package.float()).abs().max().item()
diff_hf = (ours - reference.float()).abs().max().item()
print(f"ours vs package Attention:    max abs diff < {TOL:g}: {diff_package < TOL}")
print(f"ours vs transformers' self_attn: max abs diff < {TOL:g}: {diff_hf < TOL}")
assert diff_package < TOL and diff_hf < TOL

# %% [markdown]
# ## SDPA is the explicit formula
#
# `scaled_dot_product_attention` may use a fused kernel (on a GPU, flash attention
# {cite}`dao2022flashattention`) that never builds the `seq × seq` matrix of probabilities, but
# it computes the same function. With the repeated key/value heads or with `enable_gqa=True`:

# %%
sdpa_rep = F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)  # [1, 9, seq, hd]
sdpa_gqa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
diff_rep = (sdpa_rep - heads).abs().max().item()
diff_gqa = (sdpa_gqa - heads).abs().max().item()
print(f"SDPA (repeated K/V) vs softmax formula: max abs diff < 1e-5: {diff_rep < 1e-5}")
print(f"SDPA (enable_gqa)   vs softmax formula: max abs diff < 1e-5: {diff_gqa < 1e-5}")
assert diff_rep < 1e-5 and diff_gqa < 1e-5

# %% [markdown]
# The sharing order matters. Tiling the key/value heads with `repeat` instead of
# `repeat_interleave` pairs query heads with the wrong key/value heads, and the result is wrong:

# %%
wrong = F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1),
                                       is_causal=True)
print(f"repeat instead of repeat_interleave: max abs diff {(wrong - heads).abs().max():.2f}")

# %% [markdown]
# ## Multi-head, grouped-query, multi-query
#
# The original transformer gives every query head its own key and value head: multi-head
# attention (MHA), `n_kv_heads = n_heads`, as in Llama-2-7B. Multi-query attention (MQA)
# {cite}`shazeer2019mqa` goes to the other extreme, one key/value head for all query heads.
# Grouped-query attention sits in between {cite}`ainslie2023gqa`: Llama-2-70B has 64 query heads
# in 8 groups, the bundled model 9 in 3.
#
# Fewer key/value heads mean smaller `wk` and `wv`, but the main gain is at generation time:
# the KV cache (chapter 7) stores one key and one value vector per key/value head, per layer,
# per token. From the presets, with 2 bytes per number (fp16/bf16):

# %%
def attention_sizes(name):
    a = ModelArgs.preset(name)
    q_o = 2 * a.dim * a.n_heads * a.head_dim  # wq and wo
    k_v = 2 * a.dim * a.n_kv_heads * a.head_dim  # wk and wv
    share = a.n_layers * (q_o + k_v) / count_parameters(a)
    kv_bytes = 2 * a.n_layers * a.n_kv_heads * a.head_dim * 2  # K and V, every layer, fp16
    mha_bytes = 2 * a.n_layers * a.n_heads * a.head_dim * 2  # with n_kv_heads = n_heads
    return a, q_o + k_v, share, kv_bytes, mha_bytes


print(f"{'model':>13} {'parameters':>15} {'heads q/kv':>10} {'attention/layer':>15} "
      f"{'share':>6} {'KV cache/token':>15} {'if MHA':>9}")
for name in ["smollm2-135m", "llama2-7b", "llama2-70b"]:
    a, per_layer, share, kv, mha = attention_sizes(name)
    print(f"{name:>13} {count_parameters(a):>15,} {f'{a.n_heads}/{a.n_kv_heads}':>10} "
          f"{per_layer:>15,} {share:>6.1%} {kv / 1024:>11,.1f} KiB {mha / 1024:>5,.0f} KiB")
kv_7b = attention_sizes("llama2-7b")[3]
print(f"Llama-2-7B, KV cache for a full 4096-token context: {kv_7b * 4096 / 2**30:.0f} GiB")

# %% [markdown]
# ("share" is the fraction of all the model's parameters that sit in attention.) Llama-2-7B's
# cache takes 512 KiB per token, so its full 4096-token context needs 2 GiB per sequence.
# Llama-2-70B has about ten times as many parameters but, with 8 key/value heads instead of 64,
# needs only 320 KiB per token, eight times less than it would with multi-head attention. Multi-query
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
model(tokens)
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
    rebuilt = layer.wo(mixed.to(inp.dtype)).float()  # [1, seq, dim]
    assert (rebuilt - out.float()).abs().max() < TOL * max(1.0, out.float().abs().max().item())
    return p[0]


probs_all = torch.stack([layer_probs(i) for i in range(args.n_layers)])
print("probabilities [n_layers, n_heads, seq, seq]:", tuple(probs_all.shape))
print(f"every layer's output rebuilt from them to within {TOL:g}",
      "(relative to its largest entry where that exceeds 1)")

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
for i in [0, 1, 2, args.n_layers // 2, args.n_layers - 1]:
    print(f"layer {i:2d}  first token:    " + " ".join(f"{p:.2f}" for p in first[i]))
    print(f"{'':8s}  previous token: " + " ".join(f"{p:.2f}" for p in previous[i]))

# %% [markdown]
# The same two statistics for every head of every layer:

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5.5), sharey=True)
for ax, values, title in [(axes[0], first, "mean attention to the first token"),
                          (axes[1], previous, "mean attention to the previous token")]:
    image = ax.imshow(values.cpu(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set(xlabel="head", title=title, xticks=range(n_heads))
    ax.title.set_fontsize(10)
axes[0].set_ylabel("layer")
fig.colorbar(image, ax=axes, label="attention weight (0-1)")
plt.show()

# %%
early, late = first[:2], first[2:]
print("heads with mean first-token attention > 0.5:",
      f"layers 0-1: {int((early > 0.5).sum())} of {early.numel()},",
      f"layers 2-{args.n_layers - 1}: {int((late > 0.5).sum())} of {late.numel()}")
best = previous.flatten().argmax().item()
print(f"strongest previous-token head: layer {best // n_heads}, head {best % n_heads} "
      f"({previous.flatten()[best]:.2f})")

# %% [markdown]
# Attention maps of single heads, the rows being queries and the columns keys. The upper
# triangle is empty: that is the causal mask. First, three heads of layer 0:

# %%
def show_heads(layer_heads):
    """Attention maps for a list of (layer, head), side by side."""
    fig, axes = plt.subplots(1, len(layer_heads), figsize=(4.4 * len(layer_heads), 4.6),
                             layout="constrained")
    for ax, (layer, h) in zip(axes, layer_heads):
        image = ax.imshow(probs_all[layer, h].cpu(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(seq), labels, rotation=90, fontsize=9)
        ax.set_yticks(range(seq), labels, fontsize=9)
        ax.set_title(f"layer {layer}, head {h}", fontsize=10)
        ax.set_xlabel("key (attended to)", fontsize=9)
    axes[0].set_ylabel("query (attending)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    plt.show()


show_heads([(0, 0), (0, 1), (0, 8)])

# %% [markdown]
# And three heads of deeper layers: the strongest previous-token head found above, and the two
# heads of the middle layer with the most attention on the first token.

# %%
middle = args.n_layers // 2
sinks = first[middle].argsort(descending=True)[:2].tolist()
print(f"previous-token head: layer {best // n_heads}, head {best % n_heads}; "
      f"first-token heads of layer {middle}: {sinks}")

# %%
show_heads([(best // n_heads, best % n_heads)] + [(middle, h) for h in sinks])

# %% [markdown]
# In every map the first row is trivially all on the first token, the only key the first query
# can see. Beyond that, what the printed numbers support, on the bundled model and this one
# 15-token sentence:
#
# - In layers 0 and 1 no head puts more than half of its attention on the first token on average
#   (0 of 18 heads; the largest average is 0.33, against a uniform baseline of 0.14).
# - From layer 2 on, 175 of the 252 heads put more than half of their attention on the first
#   token, "The" here (SmolLM2 adds no BOS token). Xiao et al. describe the same "attention sink"
#   in Llama-2-7B, whose first token is BOS {cite}`xiao2023sinks`. Softmax weights must sum to
#   one, and a sink is where a head can put weight that it does not want to spend on any other
#   token.
# - A few heads mostly read the previous token: head 2 of layer 1 (0.58 on average), head 1 of
#   layer 2 (0.62) and, the strongest, head 1 of layer 11 (0.75), whose map is the bright line
#   just below the diagonal.
#
# One sentence is a small sample: these are observations about these heads on this input, not a
# description of what the heads "do" in general. Chapter 10 looks inside the model with more
# tools.

# %% [markdown]
# ## What we have now
#
# - One attention layer, built by hand: `x [batch, seq, dim]` → `q [batch, n_heads, seq,
#   head_dim]`, `k, v [batch, n_kv_heads, seq, head_dim]` → RoPE on q and k → key/value heads
#   repeated `n_rep` times → scores and probabilities `[batch, n_heads, seq, seq]` → weighted
#   values `[batch, n_heads, seq, head_dim]` → concatenated and projected by `wo` back to
#   `[batch, seq, dim]`.
# - Checked against the package's `Attention` and transformers' `LlamaAttention`, and SDPA
#   checked against the explicit softmax formula.
# - The cost side of grouped-query attention: the KV cache per token for the three models.
#
# The attention output is added to the residual stream. Chapter 7 makes generation fast by
# keeping the keys and values of past tokens in the KV cache instead of recomputing them; the
# feed-forward layer that follows attention in every block comes in chapter 8.
