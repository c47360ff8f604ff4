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
# # 10. Looking inside
#
# Chapter 9 put the pieces together: token ids go in, the residual stream passes through
# `n_layers` blocks, the final RMSNorm and the LM head turn it into logits, and the model answers
# "The capital of France is" with " Paris". So far we only looked at the two ends. This chapter
# opens the model up while it runs and asks what the tensors in between look like: what the
# model "has in mind" after each layer (the logit lens), where the attention heads look, how
# large the residual stream grows and which few numbers in it are enormous, and how the weights
# of shallow and deep layers differ.
#
# We need one tool for all of it: a way to get named activations out of one forward pass without
# editing the model's code. PyTorch's forward hooks do that, and the package wraps them in
# `annotated_llama.lens`.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama import lens

torch.manual_seed(0)

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %%
model, tok = al.load(MODEL)
args = model.args
print(f"{MODEL}: {args.n_layers} layers, dim {args.dim}, {args.n_heads} query heads, {args.n_kv_heads} KV heads")
print(model.device, model.dtype)

# %% [markdown]
# ## Hooks: activations by name
#
# A forward hook is a function PyTorch calls after a module's `forward`, with the module's inputs
# and output; a forward *pre*-hook is called before, with the inputs. Registering one returns a
# handle whose `remove()` takes it off again. Hooks on the model's existing modules give us every
# tensor we want:
#
# - the residual stream entering block $i$ is the input of `layers[i]` (`resid_pre.{i}`), leaving
#   it is the block's output (`resid_post.{i}`);
# - the SwiGLU gate and up projections are the outputs of `w1` and `w3` (`mlp.gate.{i}`,
#   `mlp.up.{i}`), and their product $\mathrm{silu}(g)\odot u$ is the input of `w2` (`mlp.act.{i}`);
# - queries and keys after RoPE (`attn.q.{i}`, `attn.k.{i}`) are not the output of any module:
#   we take the outputs of `wq` and `wk` and rotate them with the same RoPE table and positions
#   the attention layer received;
# - the attention weights do not exist at all in the fast path: `scaled_dot_product_attention`
#   fuses $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$ and never returns the softmax. The hook
#   recomputes them from $q$ and $k$ with `al.model.attention_probabilities`, and only for the
#   layers asked for (`attn.probs.{i}`, a `[batch, heads, seq, seq]` tensor per layer).
#
# The context manager that installs the hooks removes them in a `finally` block, so an exception
# in the middle of the forward pass cannot leave hooks behind:

# %%
Markdown(f"```python\n{inspect.getsource(lens.capture)}```")

# %% [markdown]
# `run_with_cache` runs the model once under `torch.no_grad()` inside that context and returns the
# logits with a dict of the requested activations. `names` takes exact names or shell-style
# patterns; on a 7B model, asking for everything would store gigabytes, so the chapter always
# asks for what it uses.

# %%
prompt = "The capital of France is"
ids = tok.encode(prompt)
tokens = torch.tensor([ids], device=model.device)  # [1, seq]
names = ["resid_pre.0", "resid_post.0", "attn.q.0", "attn.probs.0", "mlp.act.0", "final_norm"]
logits, cache = lens.run_with_cache(model, tokens, names=names)
for name, t in cache.items():
    print(f"{name:13s} {str(list(t.shape)):22s} {t.dtype}")
print("logits       ", list(logits.shape))
hooks_left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
print("hooks left on the model:", hooks_left)

# %% [markdown]
# Two checks that the hooks see what the model computes. Applying block 0 by hand to
# `resid_pre.0` must give `resid_post.0`, and `final_norm` through the LM head must give the
# logits:

# %%
freqs = model.freqs_cis(model.device)[: len(ids)]
with torch.no_grad():
    by_hand = model.layers[0](cache["resid_pre.0"], 0, freqs)  # [1, seq, dim]
    head = model.output(cache["final_norm"]).float()  # [1, seq, vocab]
d_block = (by_hand - cache["resid_post.0"]).abs().max().item()
d_head = (head - logits).abs().max().item()
print(f"block 0 by hand vs resid_post.0: max abs diff {d_block:.1e}, < 1e-3: {d_block < 1e-3}")
print(f"LM head on final_norm vs logits: max abs diff {d_head:.1e}, < 1e-3: {d_head < 1e-3}")
assert d_block < 1e-3 and d_head < 1e-3

# %% [markdown]
# And against the independent reference: transformers' `LlamaForCausalLM` on the same weights
# returns every layer's residual stream (`output_hidden_states`) and, with its "eager" attention,
# the attention weights (`output_attentions`). Its `hidden_states[i + 1]` is our `resid_post.{i}`
# (except the last, which it returns after the final norm). The tolerances are for float32; in
# bf16 (on a GPU) the two implementations round differently, and the cell loosens them. A second
# full model does not fit next to a 7B one on a small GPU, so the check runs only on models
# under 2B parameters.

# %%
if al.count_parameters(args) < 2e9:
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
    from annotated_llama.reference import transformers_model

    hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = hf(tokens, output_attentions=True, output_hidden_states=True)
    _, ours = lens.run_with_cache(model, tokens, names=["attn.probs.*", "resid_post.*"])
    d_probs = max((ours[f"attn.probs.{i}"] - ref.attentions[i].float()).abs().max().item()
                  for i in range(args.n_layers))
    d_resid = max(((ours[f"resid_post.{i}"] - ref.hidden_states[i + 1]).abs().max()
                   / ref.hidden_states[i + 1].abs().max()).item() for i in range(args.n_layers - 1))
    tol_p, tol_r = (1e-4, 1e-4) if model.dtype == torch.float32 else (5e-2, 3e-2)  # float32 / bf16
    print(f"attention weights, all layers: max abs diff < {tol_p:g}: {d_probs < tol_p}")
    print(f"residual stream, all layers: max abs diff / max abs value < {tol_r:g}: {d_resid < tol_r}")
    assert d_probs < tol_p and d_resid < tol_r
    del hf, ref, ours

# %% [markdown]
# ## The logit lens
#
# The LM head reads the last residual state. Nothing stops us from applying it to an earlier one:
# put the stream after block $\ell$ through the final RMSNorm and the unembedding $W_U$ and read
# the distribution it would predict if the model stopped there
# {cite}`nostalgebraist2020logitlens`:
#
# $$
# p_\ell(\cdot \mid x_{\le t}) = \mathrm{softmax}\!\left(W_U \,\frac{h_{\ell,t}}{\sqrt{\tfrac{1}{d}\lVert h_{\ell,t}\rVert^2 + \epsilon}} \odot g\right)
# $$
#
# Each state is divided by its own RMS. (A subtle bug lived for years in a popular library:
# it divided every layer's state by the *last* layer's norm.) Nothing was trained to make these
# early readings meaningful; the tuned lens {cite}`belrose2023tuned` learns a small affine map per
# layer for that. The plain lens is what the model's own head sees. `lens.logit_lens` returns,
# for every layer and position, the top tokens and, for a chosen target token, its rank
# (1 = top) and probability. Row 0 reads the embeddings; row $\ell+1$ the stream after block $\ell$.

# %%
Markdown(f"```python\n{inspect.getsource(lens.decode_residual)}```")

# %%
paris_ids = tok.encode(prompt + " Paris")
assert paris_ids[: len(ids)] == ids  # the prompt's tokens do not change when " Paris" is appended
target = paris_ids[len(ids)]
print("target:", repr(tok.decode([target])), target)
t0 = time.perf_counter()
ll = lens.logit_lens(model, ids, target=target, k=5)
print(f"logit lens: {time.perf_counter() - t0:.1f} s elapsed")
print("rows x positions x k:", list(ll.top_ids.shape))
final = torch.softmax(ll.logits.float(), dim=-1)
d_lens = (ll.top_probs[-1] - final.topk(5, dim=-1).values).abs().max().item()
print(f"last row vs the model's own softmax: max abs diff < 1e-4: {d_lens < 1e-4}")
assert d_lens < 1e-4 and torch.equal(ll.top_ids[-1], final.topk(5, dim=-1).indices)

# %% [markdown]
# The grid: one row per layer, one column per position, the top token written in each cell and
# the cell coloured by its probability. The column for position $t$ is the prediction of token
# $t+1$.

# %%
def show(i, width=9):  # a token's text, spaces and newlines made visible, cut to fit a cell
    return tok.decode([int(i)]).replace(" ", "·").replace("\n", "\\n")[:width]


rows, seq = ll.top_ids.shape[:2]
p_top = ll.top_probs[..., 0].float().cpu().numpy()  # [rows, seq]
fig, ax = plt.subplots(figsize=(8, 0.27 * rows + 1.2))
im = ax.imshow(p_top, aspect="auto", cmap="Blues", vmin=0, vmax=1)
for r in range(rows):
    for c in range(seq):
        ax.text(c, r, show(ll.top_ids[r, c, 0]), ha="center", va="center", fontsize=9,
                color="white" if p_top[r, c] > 0.6 else "black")
ax.set_xticks(range(seq), [show(i) for i in ids], fontsize=9)
ax.set_yticks(range(rows), ll.labels, fontsize=9)
ax.set_xlabel("input token (each column predicts the next one)")
ax.set_title(f"Logit lens on {MODEL}: top token per layer and position")
fig.colorbar(im, ax=ax, label="probability of the top token")
plt.show()

# %% [markdown]
# And the target alone, at the last position (the one that predicts the answer), across layers:

# %%
rank = ll.target_rank[:, -1].cpu()
prob = ll.target_prob[:, -1].float().cpu()
first = ll.first_layer_ranked_first()
print("row       rank  probability")
for r in list(range(0, rows - 1, 3 if rows > 16 else 1)) + [rows - 1]:
    print(f"{ll.labels[r]:9s} {int(rank[r]):5d}  {prob[r]:.1e}")
print(f"{tok.decode([target])!r} first ranks first at row {first}: {ll.labels[first] if first is not None else None}")

# %%
fig, ax1 = plt.subplots(figsize=(8, 3.5))
ax1.semilogy(range(rows), rank.numpy(), "o-", color="C0")
ax1.invert_yaxis()
ax1.set_xlabel("row (0 = embeddings, r = after block r-1)")
ax1.set_ylabel("rank of the target (log, 1 = top)", color="C0")
ax2 = ax1.twinx()
ax2.plot(range(rows), prob.numpy(), "s-", color="C1")
ax2.set_ylabel("probability of the target", color="C1")
ax1.set_title(f"{tok.decode([target])!r} after {prompt!r}, layer by layer")
plt.show()

# %% [markdown]
# On the bundled model (float32) the reading is late: " Paris" ranks in the thousands through the
# first two thirds of the network, climbs into the top hundred only in the last few blocks, and
# becomes the top token only after the very last block. Before that, the middle rows mostly
# predict punctuation and function words (",", " of", " the"). A 135M-parameter model has little
# depth to spare, and the final block does a large share of the work. On Llama-2-7B the answer
# appears several layers before the end, and Wendler et al. {cite}`wendler2024llamas` read an
# English "concept space" in the middle layers of Llama 2 this way; change `MODEL` on a GPU to
# see it.

# %% [markdown]
# ## Attention patterns
#
# The logit lens reads the residual stream; the attention weights say where each position read
# from. We take a longer sentence and ask for every layer's attention probabilities
# (`[1, n_heads, seq, seq]` each), plus the residual stream for later.

# %%
sentence = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox was happy."
s_ids = tok.encode(sentence)
s_tokens = torch.tensor([s_ids], device=model.device)
labels = [show(i) for i in s_ids]
_, cache = lens.run_with_cache(model, s_tokens, names=["attn.probs.*", "resid_pre.0", "resid_post.*"])
L, H, S = args.n_layers, args.n_heads, len(s_ids)
probs = torch.stack([cache[f"attn.probs.{i}"][0] for i in range(L)]).cpu()  # [layers, heads, seq, seq]
print("attention probabilities:", list(probs.shape), f"{len(s_ids)} tokens")
print("rows sum to 1:", bool(torch.allclose(probs.sum(-1), torch.ones(L, H, S), atol=1e-4)))
print("nothing above the diagonal:", bool((probs.triu(1) == 0).all()))


# %%
def attention_maps(layer, heads, title):
    fig, axes = plt.subplots(1, len(heads), figsize=(8, 3))
    for ax, h in zip(axes, heads):
        ax.imshow(probs[layer, h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ax.set_xlabel("key position", fontsize=9)
        ax.tick_params(labelsize=9)
    axes[0].set_ylabel("query position", fontsize=9)
    fig.suptitle(title)
    plt.show()


attention_maps(0, [0, 1, 2, 3], "First layer: attention probabilities (colour 0 to 1)")
attention_maps(L // 2, [0, 1, 2, 3], "A middle layer: most mass in the first column")

# %% [markdown]
# A closer look at the first-layer head with the sharpest previous-token pattern, with the tokens
# written on the axes:

# %%
idx = torch.arange(1, S)
prev_share = probs[:, :, idx, idx - 1].mean(-1)  # [layers, heads]: mass on the token just before
h0 = int(prev_share[0].argmax())
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(probs[0, h0].numpy(), cmap="viridis", vmin=0, vmax=1)
ax.set_xticks(range(S), labels, rotation=90, fontsize=9)
ax.set_yticks(range(S), labels, fontsize=9)
ax.set_xlabel("key (attended to)")
ax.set_ylabel("query (attending)")
ax.set_title(f"Layer 0, head {h0}: mean mass on the previous token {prev_share[0, h0]:.2f}")
fig.colorbar(im, ax=ax, label="attention probability")
plt.show()

# %% [markdown]
# ## The attention sink
#
# In the middle layer above most heads put much of their mass on the first token, whatever it is.
# Xiao et al. {cite}`xiao2023sinks` found the same in Llama 2 beyond the first two layers and
# called it an *attention sink*: softmax must put its mass somewhere, and a head with nothing to
# read parks it on a token every position can see. Dropping that token from a sliding-window cache
# wrecks the model's perplexity. The share per layer and head, averaged over all queries after
# the first (which can only see itself):

# %%
sink = probs[:, :, 1:, 0].mean(-1)  # [layers, heads]
fig, ax = plt.subplots(figsize=(8, 0.22 * L + 1.5))
im = ax.imshow(sink.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
ax.set_xticks(range(H), range(H), fontsize=9)
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.set_title(f"Share of attention on the first token ({labels[0]!r}), mean over queries")
fig.colorbar(im, ax=ax, label="attention probability")
plt.show()
by_layer = sink.mean(-1)
print("mean share on the first token, layers 0-1:", f"{by_layer[:2].mean():.2f}",
      "| layers 2 and up:", f"{by_layer[2:].mean():.2f}")
print("heads with share > 0.9 (layer, head):", [(int(l), int(h)) for l, h in (sink > 0.9).nonzero()])
low = by_layer[2:].topk(2, largest=False)
print("layers >= 2 with the lowest mean share:", [(int(i) + 2, round(float(v), 2)) for v, i in zip(*low)])

# %% [markdown]
# ## What kind of head is it?
#
# A coarse classification by where each head's mass goes, averaged over queries from position 3
# on: the first token (sink), the query's own position (same token), the position just before
# (previous token), or anything further back (far back). Each head gets the label of its largest
# share.

# %%
q = torch.arange(3, S)
first_tok = probs[:, :, q, 0].mean(-1)
same = probs[:, :, q, q].mean(-1)
previous = probs[:, :, q, q - 1].mean(-1)
far = 1 - first_tok - same - previous
shares = torch.stack([first_tok, same, previous, far], dim=-1)  # [layers, heads, 4]
kinds = ["first token", "same token", "previous token", "far back"]
kind = shares.argmax(-1)  # [layers, heads]
for j, name in enumerate(kinds):
    print(f"{name:15s} {int((kind == j).sum()):3d} heads")
print("previous-token heads (layer, head, share):",
      [(int(l), int(h), round(float(previous[l, h]), 2)) for l, h in (kind == 2).nonzero()])
print("same-token heads (layer, head, share):",
      [(int(l), int(h), round(float(same[l, h]), 2)) for l, h in (kind == 1).nonzero()])
far_layers = (kind == 3).nonzero()[:, 0]
print(f"far-back heads in layers 0-11: {int((far_layers < 12).sum())}, "
      f"in layers 12 and up: {int((far_layers >= 12).sum())}")

# %%
from matplotlib.colors import ListedColormap

fig, ax = plt.subplots(figsize=(8, 0.22 * L + 1.5))
ax.imshow(kind.numpy(), aspect="auto", cmap=ListedColormap(["#999999", "C1", "C0", "C2"]), vmin=-0.5, vmax=3.5)
top = shares.max(-1).values
for l in range(L):
    for h in range(H):
        ax.text(h, l, f"{top[l, h]:.1f}", ha="center", va="center", fontsize=7 if H > 16 else 9)
ax.set_xticks(range(H), range(H), fontsize=9)
ax.set_xlabel("head")
ax.set_ylabel("layer")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ["#999999", "C1", "C0", "C2"]]
ax.legend(handles, kinds, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=4, fontsize=9)
ax.set_title("Where each head's attention goes (label: largest share; number: that share)")
plt.show()

# %% [markdown]
# On the bundled model (float32), the printouts say: in layers 0 and 1 the first token gets a
# sixth of the attention on average, from layer 2 on more than half, and twenty heads, all
# between layers 14 and 26, put over 90% there. Two layers break the pattern: layers 10 and 11
# attend to the content again, almost no head sinks there, and (see the next section) block 11
# is where the first token's residual stream explodes. After that, the sink is the largest share
# of most heads. Only a handful of heads are previous-token heads (layers 1, 2, 11, 16 and 19
# on this sentence); previous-token heads are the first half of the "induction" circuits that
# copy a pattern seen earlier in the text. The far-back heads, which read content, cluster in
# the first twelve layers. This is one sentence of 22 tokens: a coarse picture, not a census.

# %% [markdown]
# ## Residual-stream norms and massive activations
#
# The residual stream is only ever added to, so its norm can grow from layer to layer. The norm
# of every position after every block (row 0: the embeddings):

# %%
resid = torch.stack([cache["resid_pre.0"][0]] + [cache[f"resid_post.{i}"][0] for i in range(L)])
resid = resid.float().cpu()  # [layers + 1, seq, dim]
norms = resid.norm(dim=-1)  # [layers + 1, seq]
fig, ax = plt.subplots(figsize=(8, 0.2 * L + 2))
from matplotlib.colors import LogNorm

im = ax.imshow(norms.numpy(), aspect="auto", cmap="viridis", norm=LogNorm())
ax.set_xticks(range(S), labels, rotation=90, fontsize=9)
ax.set_ylabel("row (0 = embeddings, r = after block r-1)")
ax.set_title("L2 norm of the residual stream (log colour scale)")
fig.colorbar(im, ax=ax, label="norm")
plt.show()
print("median norm, first token vs the others, per 5 rows:")
for r in range(0, L + 1, 5):
    print(f"  row {r:2d}: first {norms[r, 0]:8.0f}   others {norms[r, 1:].median():6.0f}")

# %% [markdown]
# One column stands out by two orders of magnitude in the middle rows. Sun et al.
# {cite}`sun2024massive` found such *massive activations* in Llama-2-7B: a few dimensions (1415
# and 2533) take values thousands of times the median on the start token and the first
# delimiter, from layer 2 to layer 30, acting like fixed biases; they tie them to the attention
# sink above. Here is the largest absolute entry of each layer's residual stream, where it sits,
# and how it compares with that layer's median absolute entry:

# %%
def largest(r):
    flat = resid[r].abs().flatten().argmax()
    pos, dim = divmod(int(flat), resid.shape[-1])
    return pos, dim, float(resid[r, pos, dim])


print("row  layer  position token      dim       value   / median |x|")
for r in list(range(0, L + 1, 3)) + ([L] if L % 3 else []):
    pos, dim, val = largest(r)
    med = resid[r].abs().median().item()
    layer = "embed" if r == 0 else r - 1
    print(f"{r:3d}  {layer!s:>5}  {pos:8d} {labels[pos]!r:10s} {dim:5d} {val:11.0f} {abs(val) / med:10.0f}")

# %%
r_max = int(resid.abs().amax(dim=(1, 2)).argmax())
pos, dim, val = largest(r_max)
big = resid[:, pos, dim]  # this one number across rows
row_median = resid.abs().flatten(1).median(dim=1).values  # [layers + 1]
rows_big = (big.abs() > 100 * row_median).nonzero().flatten()
print(f"largest: layer {r_max - 1}, position {pos} ({labels[pos]!r}), dimension {dim}, value {val:.0f}")
print(f"dimension {dim} at position {pos} is > 100x the median |x| in rows {rows_big.min()}..{rows_big.max()}")
half = (big.abs() > abs(val) / 2).nonzero().flatten()
print(f"it is above half its peak in rows {half.min()}..{half.max()} (layers {half.min() - 1}..{half.max() - 1})")
early = resid[3, :, dim].abs().topk(2)  # row 3 = after block 2
print(f"after block 2, dimension {dim} is largest at", [(int(p), labels[p], round(float(v))) for v, p in zip(*early)],
      f"(median |x| there {resid[3].abs().median():.1f})")
top_dims = resid[r_max, pos].abs().topk(3)
print("top 3 dimensions at that position:", [(int(d), round(float(v))) for v, d in zip(*top_dims)])
other = resid[1:, 1:].abs().amax(dim=(0, 1)).topk(1)
print(f"largest |x| at any other position, any layer: {other.values.item():.0f} (dimension {int(other.indices)})")

# %% [markdown]
# On the bundled model (float32) the pattern has the shape Sun et al. describe, with its own
# numbers. One dimension, 507, carries it: on the first token it holds about 22,500 after block
# 11, more than ten thousand times the median entry of that layer, and stays above half of that
# through block 27; the last two blocks shrink it (the final row's largest entry is 2,531, in
# another dimension). No other position comes close: the largest entry anywhere else is 627.
# Already after block 2, dimension 507 stands out (about 650 against a median of 0.9) on the
# first token and on the second token " the", a smaller echo of Sun et al.'s "first delimiter";
# here it is a word, and one sentence cannot tell us which tokens qualify. SmolLM2 adds no start
# token, so the "start" is whatever word comes first. Llama-2-7B shows the same on dimensions 1415
# and 2533 from layer 2 on {cite}`sun2024massive`; on a GPU, change `MODEL` and the printouts
# above name its dimensions. The final RMSNorm divides this position by its huge norm, which is
# why its logit-lens reading above looks ordinary.

# %% [markdown]
# ## Weights: shallow vs deep
#
# Everything so far depended on the input. The raw weights can be read directly. Per layer: the
# Frobenius norm $\lVert W\rVert_F$ of each matrix divided by $\sqrt{\text{rows}\cdot\text{cols}}$
# (the RMS of its entries, so matrices of different shapes share an axis) and the mean absolute
# learned gain of the two RMSNorms; and for `wq` and `wo` of the first, a middle and the last
# layer, the leading singular values (`torch.linalg.svdvals`): how much a matrix stretches its
# most-stretched directions.

# %%
mats = {"wq": "attention.wq", "wk": "attention.wk", "wv": "attention.wv", "wo": "attention.wo",
        "w1": "feed_forward.w1", "w2": "feed_forward.w2", "w3": "feed_forward.w3"}
picked = [0, L // 2, L - 1]  # layers whose singular values we compute
t0 = time.perf_counter()
rms = {k: [] for k in mats}
gains = {"attention_norm": [], "ffn_norm": []}
sv = {}
threads = torch.get_num_threads()
torch.set_num_threads(1)  # on a CPU, LAPACK's SVD of a 576 x 576 matrix is much faster on one thread
with torch.no_grad():
    for i, layer in enumerate(model.layers):
        for k, path in mats.items():
            w = layer.get_submodule(path).weight.float()
            rms[k].append((w.norm() / w.numel() ** 0.5).item())
            if k in ("wq", "wo") and i in picked:
                sv[k, i] = torch.linalg.svdvals(w).cpu()  # descending
        for k in gains:
            gains[k].append(getattr(layer, k).weight.float().abs().mean().item())
torch.set_num_threads(threads)
print(f"weight statistics: {time.perf_counter() - t0:.1f} s elapsed")
print(f"final norm mean |gain|: {model.norm.weight.float().abs().mean().item():.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for k, v in rms.items():
    axes[0].plot(v, label=k)
axes[0].set(title="RMS of the weight entries", xlabel="layer", ylabel="‖W‖_F / √(rows·cols)")
for (k, i), s_vals in sv.items():
    axes[1].semilogy(s_vals[:64].numpy(), "-" if k == "wq" else "--", color=f"C{picked.index(i)}",
                     label=f"{k}, layer {i}")
axes[1].set(title="Leading singular values", xlabel="index (largest first)", ylabel="σ (log)")
for k, v in gains.items():
    axes[2].plot(v, label=k)
axes[2].set(title="RMSNorm gains", xlabel="layer", ylabel="mean |g| over dims")
for ax in axes:
    ax.legend(fontsize=9, ncol=2)
fig.tight_layout()
plt.show()

# %%
print("layer   wq σ1   wo σ1   wq σ1/σ10   attn |g|   ffn |g|   RMS wk   RMS wv")
for i in picked:
    print(f"{i:5d} {sv['wq', i][0]:7.1f} {sv['wo', i][0]:7.1f} {sv['wq', i][0] / sv['wq', i][9]:11.1f} "
          f"{gains['attention_norm'][i]:10.2f} {gains['ffn_norm'][i]:9.2f} {rms['wk'][i]:8.2f} {rms['wv'][i]:8.2f}")

# %% [markdown]
# On the bundled model (float32) the first layer is the odd one. Its attention RMSNorm gain
# averages 0.03 against 0.34 in the middle and 0.41 at the end, so its attention reads a strongly
# shrunk copy of the embedding, and its `wq` makes up for it: the largest singular value is 82
# against about 18 in deeper layers, and the spectrum falls steeply (σ1/σ10 = 3.5 vs 1.4 and
# 1.8), a few directions doing most of the work. The key weights are largest in layer 0 and
# shrink with depth, while the value weights start smallest and grow. The gains of both norms
# grow with depth, as does the residual stream they divide, so the scale each sub-layer sees is
# set by both. These are statistics of one small model; read another's off the same figure.

# %% [markdown]
# ## Embedding spaces: input vs output
#
# The model has two vocabularies of vectors: the input embedding (`tok_embeddings`, a token id to
# a vector) and the output embedding (the LM head's rows, a vector to a score per token). The
# nearest neighbours of a token by cosine similarity show what each space groups together.

# %%
tied = model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
print("input and output embeddings are one tensor (tied):", tied)
E_in = model.tok_embeddings.weight.float()
E_out = model.output.weight.float()
E_in, E_out = E_in / E_in.norm(dim=-1, keepdim=True), E_out / E_out.norm(dim=-1, keepdim=True)


def token_id(word):  # the id of " word" in running text (every tokenizer, with or without BOS)
    a, b = tok.encode("a " + word, bos=False), tok.encode("a", bos=False)
    assert len(a) == len(b) + 1 and a[: len(b)] == b, f"{word!r} is not a single token"
    return a[-1]


def neighbours(E, i, n=6):
    return [show(j, width=20) for j in (E @ E[i]).topk(n + 1).indices[1:].tolist()]

# %%
spaces = [("input", E_in)] + ([] if tied else [("output", E_out)])
for word in ["Paris", "king", "three", "blue", "Monday", "dog"]:
    i = token_id(word)
    for name, E in spaces:
        print(f"{word:7s} {name:6s}: {', '.join(neighbours(E, i))}")

# %% [markdown]
# The bundled model ties the two: `output.weight` *is* `tok_embeddings.weight`, so the same
# vector stands for a token when it is read and when it is predicted, and the two neighbour lists
# would be identical; the cell prints one. Tying saves `vocab × dim` parameters (28 million of the
# bundled model's 135 million) at the cost of forcing one geometry on both jobs. Llama-2-7B does
# not tie them: on a GPU, set `MODEL` to it and the cell prints both lists, and the input space
# (what a token *is*) and the output space (which contexts predict it) group tokens differently.

# %% [markdown]
# ## What we have now
#
# - `lens.run_with_cache(model, tokens, names=...)`: logits `[batch, seq, vocab]` and named
#   activations: residual stream `resid_pre/mid/post.{i}` `[batch, seq, dim]`, queries and keys
#   after RoPE `attn.q/k.{i}` `[batch, heads, seq, head_dim]`, attention weights
#   `attn.probs.{i}` `[batch, n_heads, seq, seq]` (recomputed on request), SwiGLU
#   `mlp.gate/up/act.{i}` `[batch, seq, ffn_dim]`, `final_norm`. Hooks are removed afterwards.
# - `lens.logit_lens(model, ids, target=...)`: top tokens `[layers + 1, seq, k]` and the target's
#   rank and probability `[layers + 1, seq]`.
# - What the bundled model showed: the answer appears only in the last block; from layer 2 on most
#   heads sink their attention into the first token; one residual dimension on the first token
#   holds values thousands of times the median.
#
# Everything so far ran on a CPU in float32. The next chapter makes the same forward pass fast on
# a GPU: bf16, fused attention kernels, a static KV cache, `torch.compile` and CUDA graphs,
# measured against the memory-bandwidth limit.
