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
# `n_layers` blocks, the final RMSNorm and the LM head turn it into logits, and the bundled model
# answers "The capital of France is" with " Paris". So far we only looked at the two ends. This
# chapter opens the model up while it runs and asks what the tensors in between look like: what
# the model "has in mind" after each layer (the logit lens), where the attention heads look and
# what one head computes from its weights, how large the residual stream grows and which few
# numbers in it are enormous, and how the weights of shallow and deep layers differ.
#
# We need one tool for all of it: a way to get named activations out of one forward pass without
# editing the model's code. PyTorch's forward hooks do that, and the package wraps them in
# `annotated_llama.lens`.

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
import math
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown
from matplotlib.colors import ListedColormap, LogNorm

import annotated_llama as al
from annotated_llama import lens
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference only

# %% [markdown]
# The model is the bundled SmolLM2-135M-Instruct unless you change the next cell. Its matrices
# are stored as 4-bit {term}`Q4_1` numbers (the embedding as 8-bit {term}`Q8_0`) and dequantized
# to float32 when it loads (chapter 0): what this chapter finds in the bundled model, from its
# predictions to its largest activations and the spectra of its weights, is the 4-bit model's,
# close to but not the same as the 16-bit release's. Any LLaMA runs here. In 16 bits the weights
# take parameters × 2 bytes: `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or
# `meta-llama/Llama-3.2-1B` (gated, 2.30 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf`
# (12.55 GiB) and `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the
# full table. Every layer and head this chapter looks at closely is chosen from `model.args` or
# by a measurement, so the printouts name the right ones for whichever model runs.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
args = model.args
TOL = RELATIVE_TOLERANCE[model.dtype]  # check_close's tolerance in this dtype
print(f"{args.n_layers} layers, dim {args.dim}, {args.n_heads} query heads, "
      f"{args.n_kv_heads} KV heads of {args.head_dim}")
print(model.device, model.dtype)

# %% [markdown]
# ## Hooks: activations by name
#
# A forward hook is a function PyTorch calls after a module's `forward`, with the module's inputs
# and output; a forward *pre*-hook is called before, with the inputs. Registering one returns a
# handle whose `remove()` takes it off again. Hooks on the model's existing modules give us every
# tensor we want:
#
# - the {term}`residual stream <Residual stream>` entering block $i$ is the input of `layers[i]`
#   (`resid_pre.{i}`), leaving it is the block's output (`resid_post.{i}`);
# - the SwiGLU gate and up projections are the outputs of `w1` and `w3` (`mlp.gate.{i}`,
#   `mlp.up.{i}`), and their product $\mathrm{silu}(g)\odot u$ is the input of `w2` (`mlp.act.{i}`);
# - queries and keys after RoPE (`attn.q.{i}`, `attn.k.{i}`) are not the output of any module:
#   we take the outputs of `wq` and `wk` and rotate them with the same RoPE table and positions
#   the attention layer received;
# - the attention weights do not exist at all in our attention layer: `scaled_dot_product_attention`
#   fuses $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$ and never returns the softmax. The hook
#   recomputes them from $q$ and $k$ with `al.model.attention_probabilities`, and only for the
#   layers asked for (`attn.probs.{i}`, a `[batch, heads, seq, seq]` tensor per layer; the scores
#   before the softmax are `attn.scores.{i}`).
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
assert hooks_left == 0

# %% [markdown]
# Two checks that the hooks see what the model computes. Applying block 0 by hand to
# `resid_pre.0` must give `resid_post.0`, and `final_norm` through the LM head must give the
# logits:

# %%
freqs = model.freqs_cis(model.device)[: len(ids)]
model.reset_cache()  # block 0 alone, without the KV cache of the run above
by_hand = model.layers[0](cache["resid_pre.0"], 0, freqs)  # [1, seq, dim]
head = model.output(cache["final_norm"]).float()  # [1, seq, vocab]
same_block = torch.equal(by_hand, cache["resid_post.0"])
same_head = torch.equal(head, logits)
print("block 0 by hand == resid_post.0:", same_block)
print("LM head on final_norm == logits:", same_head)
assert same_block and same_head

# %% [markdown]
# And against the independent reference: transformers' `LlamaForCausalLM`, built around our
# model's own tensors by `as_transformers` (one copy of the weights; the model code, from
# attention and RoPE to the norms, is transformers' own). It returns every layer's residual
# stream (`output_hidden_states`) and, with its "eager" attention, the attention weights
# (`output_attentions`). Its `hidden_states[i + 1]` is our `resid_post.{i}` (except the last,
# which it returns after the final norm). `check_close` asserts that the largest difference,
# relative to the largest value, is within the tolerance of the dtype.

# %%
hf = as_transformers(model)
hf.config._attn_implementation = "eager"  # the attention implementation that returns weights
ref = hf(tokens, output_attentions=True, output_hidden_states=True)
_, ours = lens.run_with_cache(model, tokens, names=["attn.probs.*", "resid_post.*"])
for i in range(args.n_layers):
    check_close(ours[f"attn.probs.{i}"], ref.attentions[i], model.dtype, f"attention {i}")
    if i < args.n_layers - 1:
        check_close(ours[f"resid_post.{i}"], ref.hidden_states[i + 1], model.dtype,
                    f"residual stream {i}")
check_close(logits, ref.logits, model.dtype, "logits")
print(f"attention weights and residual stream of all {args.n_layers} layers, and the logits: "
      f"within {TOL:.2g} of transformers'")
del hf, ref, ours

# %% [markdown]
# ## The logit lens
#
# The LM head reads the last residual state. Nothing stops us from applying it to an earlier one:
# put the stream after block $\ell$ through the final RMSNorm and the unembedding $W_U$ and read
# the distribution it would predict if the model stopped there, the
# {term}`logit lens <Logit lens>` {cite}`nostalgebraist2020logitlens`:
#
# $$
# p_\ell(\cdot \mid x_{\le t}) = \mathrm{softmax}\!\left(W_U \,\frac{h_{\ell,t}}{\sqrt{\tfrac{1}{d}\lVert h_{\ell,t}\rVert^2 + \epsilon}} \odot g\right)
# $$
#
# Each state is divided by its own RMS. That is easy to get wrong: TransformerLens's
# `accumulated_resid(apply_ln=True)`, the library's documented way to build a logit lens,
# divided every layer's state by the scale the final norm had computed for the *last* layer's
# state ([issue #1076](https://github.com/TransformerLensOrg/TransformerLens/issues/1076), fixed
# by [PR #1180](https://github.com/TransformerLensOrg/TransformerLens/pull/1180)). Since the
# stream grows with depth, early states came out divided by too large a number, and their
# readings looked nearly uniform. Nothing was trained to make the early readings meaningful; the
# tuned lens {cite}`belrose2023tuned` learns a small affine map per layer for that. The plain
# lens is what the model's own head sees. `lens.logit_lens` returns, for every layer and
# position, the top tokens and, for a chosen target token, its rank (1 = top) and probability.
# Row 0 reads the embeddings; row $\ell+1$ the stream after block $\ell$.

# %%
Markdown(f"```python\n{inspect.getsource(lens.decode_residual)}```")

# %% [markdown]
# The target is the first token of " Paris" after the prompt, whatever the model's own answer
# (for a model whose tokenizer splits " Paris", its first piece):

# %%
paris_ids = tok.encode(prompt + " Paris")
assert paris_ids[: len(ids)] == ids  # the prompt's tokens do not change when " Paris" is appended
target = paris_ids[len(ids)]
print("target:", repr(tok.decode([target])), target)
ll = lens.logit_lens(model, ids, target=target, k=5)
print("rows x positions x k:", list(ll.top_ids.shape))
final = torch.softmax(ll.logits.float(), dim=-1)  # [seq, vocab], the model's own prediction
check_close(ll.top_probs[-1], final.topk(5, dim=-1).values, model.dtype, "last row")
print(f"last row vs the model's own softmax: within {TOL:.2g}")

# %% [markdown]
# The grid: one row per layer, one column per position, the top token written in each cell and
# the cell coloured by its probability. The column for position $t$ is the prediction of token
# $t+1$.

# %%
def show(i, width=9):  # a token's text, spaces and newlines made visible, cut to fit a cell
    if int(i) >= tok.vocab_size:  # a spare embedding row, past the tokenizer's last token
        return f"<{int(i)}>"
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
ax.set_title("Logit lens: top token per layer and position")
fig.colorbar(im, ax=ax, label="probability of the top token")
plt.show()
print(f"{rows} rows x {seq} positions; last row's top tokens:",
      [show(i) for i in ll.top_ids[-1, :, 0]])
print("last position, top token per row:", [show(i) for i in ll.top_ids[:, -1, 0]])

# %% [markdown]
# The same grid to explore: hover a cell for its five most likely tokens with their
# probabilities, and the rank of the target token at that layer and position.

# %%
from annotated_llama import explorers  # noqa: E402


def token_text(i):  # a token's text, or its id for a spare embedding row no token owns
    return tok.decode([int(i)]) if int(i) < tok.vocab_size else f"<{int(i)}>"


lens_explorer = explorers.logit_lens(ll, token_text, [token_text(i) for i in ids],
                                     target_text=tok.decode([target]))
print(lens_explorer.summary)

# %% tags=["remove-input", "nbval-ignore-output"]
lens_explorer

# %% [markdown]
# And the target alone, at the last position (the one that predicts the answer), across layers:

# %%
rank = ll.target_rank[:, -1].cpu()
prob = ll.target_prob[:, -1].float().cpu()
first = ll.first_layer_ranked_first()
print("row       rank  probability")
shown = set(range(0, rows - 1, 3 if rows > 16 else 1)) | {max(0, rows - 3), rows - 2, rows - 1}
for r in sorted(shown):
    print(f"{ll.labels[r]:9s} {int(rank[r]):5d}  {prob[r]:.1e}")
where = ll.labels[first] if first is not None else "never"
print(f"{tok.decode([target])!r} first ranks first at row {first}: {where}")

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
print(f"{rows} points; best rank {int(rank.min())}, last row's probability {prob[-1]:.2f}")

# %% [markdown]
# On the bundled model the reading is late: " Paris" ranks in the thousands through the first two
# thirds of the network, climbs into the top hundred only in the last few blocks, and becomes
# the top token only after the very last block, with probability 0.77. Before that, the last
# position's rows mostly read a full stop or a bare space, and " the" in the last few layers. The
# final block does a large share of the work: it takes " Paris" from rank 3 to rank 1. Wendler et
# al. {cite}`wendler2024llamas` read Llama 2 with this lens and found the answer several layers
# before the end, with an English "concept space" in the middle layers. The outputs on this
# page are the bundled model's; change `MODEL` to draw another model's grid.
#
# One column of the grid behaves differently from the others: the first. How sure is each
# reading? The entropy of the lens distribution, in bits, per row at position 0 and (the median)
# at the other positions; a uniform guess over the vocabulary would have $\log_2 V$ bits:

# %%
_, states = lens.run_with_cache(model, tokens, names=["resid_pre.0", "resid_post.*"])
stream = torch.stack([states["resid_pre.0"][0]]
                     + [states[f"resid_post.{i}"][0] for i in range(args.n_layers)])
lens_probs = lens.decode_residual(model, stream).softmax(-1)  # [rows, seq, vocab]
entropy = -(lens_probs * lens_probs.clamp_min(1e-30).log2()).sum(-1)  # [rows, seq], bits
top_p0, top_id0 = lens_probs[:, 0].max(-1)  # position 0: the top token and its probability
del lens_probs
print(f"uniform over {args.vocab_size:,} tokens: {math.log2(args.vocab_size):.1f} bits")
print("row        position 0: entropy  top token       p    others: median entropy")
for r in range(rows):
    others = entropy[r, 1:].median().item() if seq > 1 else float("nan")
    print(f"{ll.labels[r]:9s} {entropy[r, 0]:19.1f}  {show(top_id0[r], 12):12s} "
          f"{top_p0[r]:5.2f} {others:22.1f}")

# %% [markdown]
# In the bundled model, position 0 (the word "The", which starts the text: SmolLM2 adds no
# start-of-text token) is not an ordinary position. In layers 2 to 8 its readings are about as
# sure as the others' (about 3 bits, against a median of 1 to 2 bits elsewhere), but they never
# change: "," with probability 0.33 to 0.39 at every layer. Layer 10 reads " dismant" there with
# probability 0.97. From layer 11 to layer 28 the reading freezes again, now flat: " the" with
# probability 0.03 to 0.04 and about 10 bits of entropy, row after row (a uniform guess over the
# vocabulary has 15.6 bits), while the median of the other positions stays between 0.2 and 1.8
# bits.
# Only the last layer changes it. The section on massive activations below shows why.

# %% [markdown]
# ## Attention patterns
#
# The logit lens reads the residual stream; the attention weights say where each position read
# from. We take a longer sentence and ask for every layer's attention probabilities
# (`[1, n_heads, seq, seq]` each), plus the residual stream and the attention layers' inputs and
# scores for later.

# %%
sentence = ("The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox was "
            "happy.")
s_ids = tok.encode(sentence)
s_tokens = torch.tensor([s_ids], device=model.device)
labels = [show(i) for i in s_ids]
_, cache = lens.run_with_cache(
    model, s_tokens, names=["attn.probs.*", "resid_pre.0", "resid_post.*", "attn_norm.*",
                            "attn.scores.*"])
L, H, S = args.n_layers, args.n_heads, len(s_ids)
probs = torch.stack([cache[f"attn.probs.{i}"][0] for i in range(L)]).cpu()  # [L, H, S, S]
rows_sum_to_1 = bool(torch.allclose(probs.sum(-1), torch.ones(L, H, S), atol=1e-4))
causal = bool((probs.triu(1) == 0).all())
print("attention probabilities:", list(probs.shape), f"{S} tokens")
print("rows sum to 1:", rows_sum_to_1)
print("nothing above the diagonal:", causal)
assert rows_sum_to_1 and causal


# %%
def attention_maps(layer, heads, title):
    fig, axes = plt.subplots(1, len(heads), figsize=(8, 3), squeeze=False)
    for ax, h in zip(axes[0], heads):
        ax.imshow(probs[layer, h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ax.set_xlabel("key position", fontsize=9)
        ax.tick_params(labelsize=9)
    axes[0, 0].set_ylabel("query position", fontsize=9)
    fig.suptitle(title)
    plt.show()
    first_col = probs[layer, list(heads), 1:, 0].mean().item()
    print(f"layer {layer}, heads {list(heads)}: mean weight on the first token {first_col:.2f}")


first_heads = range(min(4, H))
attention_maps(0, first_heads, "First layer: attention probabilities (colour 0 to 1)")
attention_maps(L // 2, first_heads, "A middle layer")

# %% [markdown]
# On the bundled model, the four heads shown of the first layer put 0.10 of their weight on the
# first token on average, those of the middle layer 0.59: there most of it sits in the first
# column. More about that below. First, a head with a clear job: the *previous-token head*, which at every position
# attends to the token just before. We measure each head's mean weight on the previous token
# (over all queries after the first) and take the head where it is largest:

# %%
idx = torch.arange(1, S)
prev_share = probs[:, :, idx, idx - 1].mean(-1)  # [layers, heads]: weight on the token before
top_prev = prev_share.flatten().topk(min(5, L * H))
print("largest mean weight on the previous token (layer, head, weight):",
      [(int(i) // H, int(i) % H, round(float(v), 2)) for v, i in zip(*top_prev)])
pl, ph = divmod(int(top_prev.indices[0]), H)  # the previous-token head we look at

fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(probs[pl, ph].numpy(), cmap="viridis", vmin=0, vmax=1)
ax.set_xticks(range(S), labels, rotation=90, fontsize=9)
ax.set_yticks(range(S), labels, fontsize=9)
ax.set_xlabel("key (attended to)")
ax.set_ylabel("query (attending)")
ax.set_title(f"Layer {pl}, head {ph}: mean weight on the previous token {prev_share[pl, ph]:.2f}")
fig.colorbar(im, ax=ax, label="attention probability")
plt.show()
print(f"layer {pl}, head {ph}: the previous token is the largest weight for "
      f"{int((probs[pl, ph, idx].argmax(-1) == idx - 1).sum())} of {S - 1} queries")

# %% [markdown]
# For the bundled model on this sentence, the sharpest previous-token head is head 0 of layer 16,
# with 0.80 of its weight on the token just before on average, and the previous token gets its
# largest weight at every query; head 1 of layer 11, head 2 of layer 1 and head 1 of layer 2 come
# next. Previous-token heads are the first half of the "induction" circuits that copy a pattern
# seen earlier in the text {cite}`elhage2021mathematical`.

# %% [markdown]
# ## The attention sink
#
# In the middle layer above most heads put much of their weight on the first token, whatever it
# is. Xiao et al. {cite}`xiao2023sinks` found the same in Llama 2 beyond the first two layers and
# called it an {term}`attention sink <Attention sink>`: softmax must put its weight somewhere,
# and a head with nothing to read parks it on a token every position can see. Dropping that
# token from a sliding-window cache wrecks the model's perplexity. The share per layer and head,
# averaged over all queries after the first (which can only see itself):

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
      "| layers 2 and up:", f"{by_layer[2:].mean():.2f}" if L > 2 else "none")
print("heads with share > 0.9 (layer, head):",
      [(int(l), int(h)) for l, h in (sink > 0.9).nonzero()])
print("heads with share > 0.5 per layer:", (sink > 0.5).sum(-1).tolist())
if L > 2:
    low = by_layer[2:].topk(min(2, L - 2), largest=False)
    print("layers >= 2 with the lowest mean share:",
          [(int(i) + 2, round(float(v), 2)) for v, i in zip(*low)])

# %% [markdown]
# Every layer and head of this sentence, to explore: pick one in the menus or in the small map
# of the shares just drawn, then hover a query row to read its weights on every key; the first
# column, the sink, is framed in red.

# %%
sentence_explorer = explorers.attention(probs, [token_text(i) for i in s_ids],
                                        title=f"Attention weights for {sentence!r}",
                                        layer=pl, head=ph)
print(sentence_explorer.summary)
print(f"opens on layer {pl}, head {ph} (the previous-token head above)")

# %% tags=["remove-input", "nbval-ignore-output"]
sentence_explorer

# %% [markdown]
# The same two explorers for a bigger model, when its data is stored beside this chapter: on a GPU,
# `python -m annotated_llama explore --model meta-llama/Llama-2-7b-hf --out
# notebooks/explorers/10_llama-2-7b.json` computes them for this chapter's prompt and sentence and
# writes a small JSON file, which the next cells show.

# %%
from pathlib import Path  # noqa: E402

stored_runs = [explorers.load_saved(path) for path in sorted(Path("explorers").glob("10_*.json"))]
print(f"{len(stored_runs)} stored run(s) in notebooks/explorers/:",
      [f"{source}: {len(found)} explorers" for source, found in stored_runs])

# %% tags=["remove-input", "nbval-ignore-output"]
from IPython.display import display  # noqa: E402

for _, found in stored_runs:
    for stored_explorer in found:
        display(stored_explorer)

# %% [markdown]
# ## What kind of head is it?
#
# A coarse classification by where each head's weight goes, averaged over queries from position
# 3 on: the first token (sink), the query's own position (same token), the position just before
# (previous token), or anything further back (far back). Each head gets the label of its largest
# share.

# %%
q = torch.arange(min(3, S - 1), S)
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
print(f"far-back heads in the first half of the layers (0-{L // 2 - 1}): "
      f"{int((far_layers < L // 2).sum())}, in the second half: "
      f"{int((far_layers >= L // 2).sum())}")

# %%
colours = ["#999999", "C1", "C0", "C2"]
fig, ax = plt.subplots(figsize=(8, 0.22 * L + 1.5))
ax.imshow(kind.numpy(), aspect="auto", cmap=ListedColormap(colours), vmin=-0.5, vmax=3.5)
top = shares.max(-1).values
for l in range(L):
    for h in range(H):
        ax.text(h, l, f"{top[l, h]:.1f}", ha="center", va="center", fontsize=7 if H > 16 else 9)
ax.set_xticks(range(H), range(H), fontsize=9)
ax.set_xlabel("head")
ax.set_ylabel("layer")
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
ax.legend(handles, kinds, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=4, fontsize=9)
ax.set_title("Where each head's attention goes (label: largest share; number: that share)")
plt.show()
print(f"{L} x {H} heads; counts per kind:", [int((kind == j).sum()) for j in range(4)])
print("first-token heads per layer:", (kind == 0).sum(-1).tolist())

# %% [markdown]
# On the bundled model, the printouts say: in layers 0 and 1 the first token gets a sixth of the
# attention on average, from layer 2 on more than half, and twenty heads, all between layers 14
# and 26, put over 90% there. Two layers break the pattern: layers 10 and 11 attend to the
# content again, almost no head sinks there, and (see below) block 11 is where the first token's
# residual stream explodes. After that, the sink is the largest share of most heads. Only a
# handful of heads are labelled previous-token heads (in layers 1, 2, 11, 16 and 19 on this
# sentence), and the far-back heads, which read content, cluster in the first half of the layers.
# This is one sentence of 22 tokens: a coarse picture, not a census.

# %% [markdown]
# ## Inside one head: the QK and OV circuits
#
# An {term}`attention head <Attention head>` does two separate things, and each one is a single
# matrix of size `dim × dim` {cite}`elhage2021mathematical`. With $x_i$ the normalised residual
# vector at position $i$ (the attention input), $W_Q^h, W_K^h, W_V^h$ the head's `[head_dim, dim]`
# slices of `wq`, `wk`, `wv`, and $W_O^h$ its `[dim, head_dim]` slice of `wo`:
#
# - the **QK circuit** decides *where* the head looks. Without RoPE, the score of query $i$ and
#   key $j$ is a bilinear form, $s_{ij} = x_i^\top W_{QK}^h x_j / \sqrt{d_h}$ with
#   $W_{QK}^h = W_Q^{h\top} W_K^h$;
# - the **OV circuit** decides *what* it writes: the head adds
#   $\sum_j a_{ij}\, W_{OV}^h x_j$ to the residual stream, with $W_{OV}^h = W_O^h W_V^h$.
#
# Both are products of two matrices with `head_dim` rows between them, so their rank is at most
# `head_dim`: each head reads and writes a subspace of `head_dim` dimensions out of `dim`.
# RoPE rotates $q_i$ and $k_j$ by the angles of their own positions, so the real score is
# $x_i^\top W_Q^{h\top} R_{j-i} W_K^h x_j$: the QK circuit depends on the offset $j - i$, and
# $W_{QK}^h$ is its offset-0 case, exact on the diagonal of the score matrix. With
# {term}`grouped-query attention <GQA>`, the query heads of a group share $W_K$ and $W_V$, so
# their QK circuits read keys from the same subspace and their OV circuits read values from the
# same subspace.
#
# We take the previous-token head found above and check the offset-0 claim against the scores the
# model computed (`attn.scores`, scaled by $1/\sqrt{d_h}$, with RoPE):

# %%
hd, n_rep = args.head_dim, args.n_rep
g = ph // n_rep  # the KV head this query head reads
attn = model.layers[pl].attention
W_Q = attn.wq.weight[ph * hd: (ph + 1) * hd].float()  # [head_dim, dim]
W_K = attn.wk.weight[g * hd: (g + 1) * hd].float()  # [head_dim, dim]
W_V = attn.wv.weight[g * hd: (g + 1) * hd].float()  # [head_dim, dim]
W_O = attn.wo.weight[:, ph * hd: (ph + 1) * hd].float()  # [dim, head_dim]

x = cache[f"attn_norm.{pl}"][0].float()  # [seq, dim], the attention layer's input
plain = (x @ W_Q.T) @ (x @ W_K.T).T / hd**0.5  # [seq, seq]: x_i^T W_QK x_j / sqrt(d), no RoPE
scores = cache[f"attn.scores.{pl}"][0, ph].float()  # [seq, seq], with RoPE, -inf above diagonal
check_close(plain.diagonal(), scores.diagonal(), model.dtype, "offset-0 scores")
below = torch.ones(S, S, dtype=torch.bool).tril(-1)  # offsets j - i < 0
off = ((plain - scores)[below].abs().max() / scores[below].abs().max()).item()
print(f"layer {pl}, head {ph} (KV head {g}, shared by query heads "
      f"{list(range(g * n_rep, (g + 1) * n_rep))})")
print(f"diagonal (offset 0): x_i^T W_QK x_i / sqrt(d) == the model's score, within {TOL:.2g}")
print(f"below the diagonal, without RoPE the scores are off by {off:.0%} of the largest score")
causal_plain = plain.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
rows_q = torch.arange(1, S)
hits = lambda sc: int((sc[rows_q].argmax(-1) == rows_q - 1).sum())  # noqa: E731
print(f"previous token has the largest score: without RoPE for {hits(causal_plain)} of "
      f"{S - 1} queries, with RoPE for {hits(scores)}")

# %% [markdown]
# On the diagonal the two agree, and below it the plain product misses by a large fraction of the
# scores. For the bundled model's head, without RoPE the largest score would be the previous
# token's for one query only (the first token's for the others); with RoPE it is the previous
# token's for every query: RoPE is what lets this head prefer the token one position back.
#
# Now the circuits themselves. Neither `dim × dim` matrix needs to be formed to get its singular
# values: with the QR factorisations $W_Q^{h\top} = Q_1 R_1$ and $W_K^{h\top} = Q_2 R_2$ (each $Q$
# with orthonormal columns), $W_{QK}^h = Q_1 (R_1 R_2^\top) Q_2^\top$ has the singular values of
# the small `head_dim × head_dim` matrix $R_1 R_2^\top$; the same for $W_{OV}^h$. For a small model
# the cell checks this against the full matrix:

# %%
def circuit_svdvals(A, B):  # singular values of A @ B.T, for A, B of shape [dim, head_dim]
    _, R_a = torch.linalg.qr(A)
    _, R_b = torch.linalg.qr(B)
    return torch.linalg.svdvals(R_a @ R_b.T)  # [head_dim], descending


sv_qk = circuit_svdvals(W_Q.T, W_K.T)  # W_QK = W_Q^T W_K
sv_ov = circuit_svdvals(W_O, W_V.T)  # W_OV = W_O W_V
if args.dim <= 1024:  # small enough to form the dim x dim matrices and check
    full_qk = torch.linalg.svdvals(W_Q.T @ W_K)[:hd]
    full_ov = torch.linalg.svdvals(W_O @ W_V)[:hd]
    check_close(sv_qk, full_qk, torch.float32, "QK singular values")
    check_close(sv_ov, full_ov, torch.float32, "OV singular values")
    print(f"the full {args.dim} x {args.dim} matrices give the same singular values")


def effective_rank(sv, share=0.9):  # how many directions hold `share` of the squared norm
    energy = sv.pow(2).cumsum(0) / sv.pow(2).sum()
    return int((energy < share).sum()) + 1


for name, sv in [("QK", sv_qk), ("OV", sv_ov)]:
    print(f"W_{name}: rank <= {hd} in {args.dim} dimensions; σ1 {sv[0]:.3g}, "
          f"σ1/σ{hd} {sv[0] / sv[-1]:.3g}; {effective_rank(sv)} directions hold 90% of σ²")

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.semilogy(range(1, hd + 1), sv_qk.cpu(), "o-", ms=3, label="QK circuit $W_Q^T W_K$")
ax.semilogy(range(1, hd + 1), sv_ov.cpu(), "s-", ms=3, label="OV circuit $W_O W_V$")
ax.set_xlabel("index (largest first)")
ax.set_ylabel("singular value (log)")
ax.set_title(f"The two circuits of layer {pl}, head {ph}: {hd} singular values each")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
print(f"QK: σ1 {sv_qk[0]:.3g}, σ{hd} {sv_qk[-1]:.3g}; "
      f"OV: σ1 {sv_ov[0]:.3g}, σ{hd} {sv_ov[-1]:.3g}")

# %% [markdown]
# For the bundled model's head (layer 16, head 0), both circuits use all 64 of their possible
# directions, unevenly: the largest singular value is about 13 times the smallest in both. The OV
# circuit is the more concentrated: 22 directions hold 90% of its squared singular values,
# against 43 for the QK circuit. So what the head copies forward from the previous token lives
# mostly in a couple of dozen directions of the 576, while its choice of where to look (with
# RoPE's help) uses more. (The spectra are those of the 4-bit weights. Rounding the weights
# changes each singular value by at most the spectral norm of the rounding error, which matters
# most, relative to their size, for the smallest ones.)
#
# With GQA the heads of a group share one $W_K$: their QK circuits differ in $W_Q$ only, and read
# keys from the same `head_dim`-dimensional subspace, the row space of $W_K$. The cell checks
# that for the group of this head: the principal angles between the key-side singular subspaces
# of the heads' QK circuits are zero (cosines 1):

# %%
group = list(range(g * n_rep, (g + 1) * n_rep))
if n_rep == 1:
    print("multi-head attention: every query head has its own W_K and W_V")
else:
    def key_side(h):  # orthonormal basis of the key-side (right) singular subspace of W_QK^h
        W_Qh = attn.wq.weight[h * hd: (h + 1) * hd].float()
        _, R_q = torch.linalg.qr(W_Qh.T)
        Q_k, R_k = torch.linalg.qr(W_K.T)
        _, _, Vh = torch.linalg.svd(R_q @ R_k.T)  # W_QK^h = Q_q (R_q R_k^T) Q_k^T
        return Q_k @ Vh.T  # [dim, head_dim]

    base = key_side(group[0])
    for h in group[1:]:
        cosines = torch.linalg.svdvals(base.T @ key_side(h))  # cosines of the principal angles
        print(f"heads {group[0]} and {h}: smallest cosine {cosines.min():.4f}")
        assert cosines.min() > 0.99

# %% [markdown]
# ## Residual-stream norms and massive activations
#
# The residual stream is only ever added to, so its norm can grow from layer to layer. The norm
# of every position after every block of the sentence (row 0: the embeddings):

# %%
resid = torch.stack([cache["resid_pre.0"][0]] + [cache[f"resid_post.{i}"][0] for i in range(L)])
resid = resid.float().cpu()  # [layers + 1, seq, dim]
norms = resid.norm(dim=-1)  # [layers + 1, seq]
fig, ax = plt.subplots(figsize=(8, 0.2 * L + 2))
im = ax.imshow(norms.numpy(), aspect="auto", cmap="viridis", norm=LogNorm())
ax.set_xticks(range(S), labels, rotation=90, fontsize=9)
ax.set_ylabel("row (0 = embeddings, r = after block r-1)")
ax.set_title("L2 norm of the residual stream (log colour scale)")
fig.colorbar(im, ax=ax, label="norm")
plt.show()
print("norm, first token vs the median of the others, per 5 rows:")
for r in range(0, L + 1, 5):
    print(f"  row {r:2d}: first {norms[r, 0]:8.0f}   others {norms[r, 1:].median():6.0f}")

# %% [markdown]
# Sun et al. {cite}`sun2024massive` found {term}`massive activations <Massive activation>` in
# Llama-2-7B: a few dimensions (1415 and 2533) take values thousands of times the median on the
# start token and the first delimiter, from layer 2 to layer 30, acting like fixed biases; they
# tie them to the attention sink above. Here is the largest absolute entry of each layer's
# residual stream, where it sits, and how it compares with that layer's median absolute entry:

# %%
def largest(r):
    flat = resid[r].abs().flatten().argmax()
    pos, dim = divmod(int(flat), resid.shape[-1])
    return pos, dim, float(resid[r, pos, dim])


row_median = resid.abs().flatten(1).median(dim=1).values  # [layers + 1]
print("row  layer  position token      dim       value   / median |x|")
for r in list(range(0, L + 1, 3)) + ([L] if L % 3 else []):
    pos, dim, val = largest(r)
    layer = "embed" if r == 0 else r - 1
    print(f"{r:3d}  {layer!s:>5}  {pos:8d} {labels[pos]!r:10s} {dim:5d} {val:11.0f} "
          f"{abs(val) / row_median[r]:10.0f}")

# %% [markdown]
# We call an entry massive, as Sun et al. do, when it is more than 100 times the median absolute
# entry of its layer (and larger than 100). The largest entry of all, and the rows in which that
# same dimension at that same position is massive:

# %%
r_max = int(resid.abs().amax(dim=(1, 2)).argmax())
pos, dim, val = largest(r_max)
big = resid[:, pos, dim]  # this one number across rows
massive = (big.abs() > 100 * row_median) & (big.abs() > 100)  # [layers + 1]
rows_big = massive.nonzero().flatten()
print(f"largest: row {r_max} (after block {r_max - 1}), position {pos} ({labels[pos]!r}), "
      f"dimension {dim}, value {val:.0f}")
if len(rows_big) == 0:
    print("no massive activation: that entry is never more than 100 times its row's median "
          "(and larger than 100)")
else:
    r0 = int(rows_big.min())
    print(f"dimension {dim} at position {pos} is massive in rows {r0}..{int(rows_big.max())}, "
          f"{len(rows_big)} of {L + 1} rows")
    half = (big.abs() > abs(val) / 2).nonzero().flatten()
    print(f"above half its peak in rows {int(half.min())}..{int(half.max())}")
    early = resid[r0, :, dim].abs().topk(min(3, S))
    print(f"row {r0}, where it is first massive: the largest |x| in dimension {dim} at",
          [(int(p), labels[p], round(float(v))) for v, p in zip(*early)],
          f"(median |x| of the row {row_median[r0]:.2f})")
    top_dims = resid[r_max, pos].abs().topk(3)
    print("top 3 dimensions at that position:",
          [(int(d), round(float(v))) for v, d in zip(*top_dims)])
    rest = torch.ones(S, dtype=torch.bool)
    rest[pos] = False
    other = resid[1:, rest].abs().amax(dim=(0, 1)).topk(1)
    print(f"largest |x| at any other position, any layer: {other.values.item():.0f} "
          f"(dimension {int(other.indices)})")

# %% [markdown]
# On the bundled model the pattern has the shape Sun et al. describe, with its own numbers (those
# of the 4-bit weights). One dimension, 507, carries it: on the first token it holds about 22,500
# after block 11, more than ten thousand times the median entry of that layer, and stays above
# half of that through block 27; the last two blocks shrink it (the final row's largest entry is
# 2,531, in another dimension). No other position comes close: the largest entry anywhere else
# is 627. Already in row 2, after block 1, dimension 507 is massive on the first token (183,
# against a median of 0.79), and its next-largest value there is at position 6, the second
# occurrence of "the" (in "over the lazy dog"), a smaller echo of Sun et al.'s "first
# delimiter"; here it is a word, and one sentence cannot tell us which tokens qualify. SmolLM2
# adds no start token, so the "start" is whatever word comes first. Change `MODEL` and the
# printouts above name another model's dimensions, or say that there are none.
#
# This is also what froze the logit lens at position 0. Once a few entries hold nearly all of a
# state's norm, the final RMSNorm divides everything else by their size, and the updates that
# later layers add are too small to turn the state. For position 0 of the prompt above, per row:
# the massive dimension's value and its share of the state's squared norm, the cosine between the state
# and the one a row earlier, and the lens reading of the state next to the reading of its five
# largest entries alone (the rest set to zero):

# %%
def reading(state):  # the lens distribution of one state -> (top token, its p, entropy in bits)
    p = lens.decode_residual(model, state).softmax(-1)
    return show(p.argmax(), 10), p.max().item(), -(p * p.clamp_min(1e-30).log2()).sum().item()


if len(rows_big) == 0:
    print("no massive activation in this model: nothing to explain")
else:
    x0 = stream[:, 0].float()  # [rows, dim]: position 0 of the prompt, every row
    share = x0[:, dim] ** 2 / x0.pow(2).sum(-1)  # [rows]
    cos = torch.nn.functional.cosine_similarity(x0[1:], x0[:-1], dim=-1)  # [rows - 1]
    print(f"row       value in {dim}  share   cosine to the row before   reading: "
          "state            5 largest entries alone")
    for r in range(1, rows, 1 if rows <= 40 else 2):
        five = torch.zeros_like(stream[r, 0])
        top5 = stream[r, 0].abs().topk(5).indices
        five[top5] = stream[r, 0, top5]
        full, alone = reading(stream[r, 0]), reading(five)
        print(f"{ll.labels[r]:9s} {x0[r, dim]:12.0f} {share[r]:6.3f} {cos[r - 1]:22.4f}      "
              f"{full[0]:10s} {full[1]:4.2f} {full[2]:4.1f}b   {alone[0]:10s} {alone[1]:4.2f} "
              f"{alone[2]:4.1f}b")

# %% [markdown]
# For the bundled model, dimension 507 holds over 90% of position 0's squared norm from layer 2
# to layer 8 and 98% from layer 11 to layer 27, and in both stretches the state's direction
# hardly moves: the cosine between consecutive rows is 0.9998 or more in layers 3 to 7 and
# 1.0000 in layers 12 to 26. The five largest entries alone are about as sure as the whole state:
# 2.5 to 2.8 bits in the first stretch and 9.5 to 10 in the second, against 2.8 to 3.1 and 9.9 to
# 10 for the whole state, with the same top token "," in the first stretch (in the second, ","
# against " the", both at a few percent). So how sure both frozen readings are is set by the
# massive entries; neither is a prediction about what follows "The". What changes between the
# stretches is their size and mix: at layers 9 to 11 the state is rebuilt (cosines 0.85, 0.78,
# 0.44), dimension 507 falls from about 650 to 60 and jumps to about 22,500, and the reading goes
# from "," through a confident " dismant" at layer 10, where dimension 507 holds only a fifth of
# the squared norm, to the flat one. (Position 0 attends only to itself, so its state is the same
# in every text that starts with "The": these are the same numbers as in the sentence's table
# above.)

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
picked = sorted({0, L // 2, L - 1})  # layers whose singular values we compute
rms = {k: [] for k in mats}
gains = {"attention_norm": [], "ffn_norm": []}
sv = {}
threads = torch.get_num_threads()
torch.set_num_threads(1)  # on a CPU, LAPACK's SVD of a small matrix is faster on one thread
for i, layer in enumerate(model.layers):
    for k, path in mats.items():
        w = layer.get_submodule(path).weight.float()
        rms[k].append((w.norm() / w.numel() ** 0.5).item())
        if k in ("wq", "wo") and i in picked:
            sv[k, i] = torch.linalg.svdvals(w).cpu()  # descending
    for k in gains:
        gains[k].append(getattr(layer, k).weight.float().abs().mean().item())
torch.set_num_threads(threads)
print(f"final norm mean |gain|: {model.norm.weight.float().abs().mean().item():.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for k, v in rms.items():
    axes[0].plot(v, label=k)
axes[0].set(title="RMS of the weight entries", xlabel="layer", ylabel="‖W‖_F / √(rows·cols)")
for (k, i), s_vals in sv.items():
    axes[1].semilogy(s_vals[:64].numpy(), "-" if k == "wq" else "--",
                     color=f"C{picked.index(i)}", label=f"{k}, layer {i}")
axes[1].set(title="Leading singular values", xlabel="index (largest first)", ylabel="σ (log)")
for k, v in gains.items():
    axes[2].plot(v, label=k)
axes[2].set(title="RMSNorm gains", xlabel="layer", ylabel="mean |g| over dims")
for ax in axes:
    ax.legend(fontsize=9, ncol=2)
fig.tight_layout()
plt.show()
print("layer   wq σ1   wo σ1   wq σ1/σ10   attn |g|   ffn |g|   RMS wk   RMS wv")
for i in picked:
    print(f"{i:5d} {sv['wq', i][0]:7.1f} {sv['wo', i][0]:7.1f} "
          f"{sv['wq', i][0] / sv['wq', i][9]:11.1f} {gains['attention_norm'][i]:10.2f} "
          f"{gains['ffn_norm'][i]:9.2f} {rms['wk'][i]:8.2f} {rms['wv'][i]:8.2f}")

# %% [markdown]
# On the bundled model the first layer is the odd one. Its attention RMSNorm gain averages 0.03
# against 0.34 in the middle and 0.41 at the end, so its attention reads a strongly shrunk copy
# of the embedding, and its `wq` makes up for it: the largest singular value is 82 against about
# 18 in deeper layers, and the spectrum falls steeply (σ1/σ10 = 3.5 vs 1.4 and 1.8), a few
# directions doing most of the work. The key weights are largest in layer 0 and shrink with
# depth, while the value weights start smallest and grow. The gains of both norms grow with
# depth, as does the residual stream they divide, so the scale each sub-layer sees is set by
# both. These are statistics of one small model, and of its 4-bit weights: quantization rounds
# every entry, and moves each singular value by at most the spectral norm of the rounding error,
# which matters most, relative to their size, for the smallest. Read another model's off the same
# figure.

# %% [markdown]
# ## Embedding spaces: input vs output
#
# The model has two vocabularies of vectors: the input embedding (`tok_embeddings`, a token id to
# a vector) and the output embedding (the LM head's rows, a vector to a score per token). The
# nearest neighbours of a token by cosine similarity show what each space groups together.

# %%
tied = model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
print("input and output embeddings are one tensor (tied):", tied)
n_params = sum(p.numel() for p in model.parameters())  # a tied tensor is counted once
print(f"vocab x dim = {args.vocab_size * args.dim:,} parameters of {n_params:,} in the model")


def token_id(word):  # the id of " word" in running text, or None if it is not a single token
    a, b = tok.encode("a " + word, bos=False), tok.encode("a", bos=False)
    return a[-1] if len(a) == len(b) + 1 and a[: len(b)] == b else None


def neighbours(E, i, n=6):  # E: [vocab, dim]; cosine similarity with row i, in chunks
    e = E[i].float() / E[i].float().norm()
    sims = torch.cat([(c.float() @ e) / c.float().norm(dim=-1) for c in E.split(8192)])
    return [show(j, width=20) for j in sims.topk(n + 1).indices[1:].tolist()]


# %%
spaces = [("input", model.tok_embeddings.weight)]
if not tied:
    spaces.append(("output", model.output.weight))
for word in ["Paris", "king", "three", "blue", "Monday", "dog"]:
    i = token_id(word)
    if i is None:
        print(f"{word:7s} is more than one token for this tokenizer: skipped")
        continue
    for name, E in spaces:
        print(f"{word:7s} {name:6s}: {', '.join(neighbours(E, i))}")

# %% [markdown]
# The bundled model ties the two: `output.weight` *is* `tok_embeddings.weight`, so the same
# vector stands for a token when it is read and when it is predicted, and the two neighbour lists
# would be identical; the cell prints one. Tying saves `vocab × dim` parameters (28 million of the
# bundled model's 135 million) at the cost of forcing one geometry on both jobs. Llama 2 does not
# tie them: for such a model the cell prints both lists, the input space (what a token *is*) and
# the output space (which contexts predict it).

# %% [markdown]
# ## What we have now
#
# - `lens.run_with_cache(model, tokens, names=...)`: logits `[batch, seq, vocab]` and named
#   activations: residual stream `resid_pre/mid/post.{i}` `[batch, seq, dim]`, attention input
#   `attn_norm.{i}`, queries and keys after RoPE `attn.q/k.{i}` `[batch, heads, seq, head_dim]`,
#   attention scores and weights `attn.scores/probs.{i}` `[batch, n_heads, seq, seq]`
#   (recomputed on request), SwiGLU `mlp.gate/up/act.{i}` `[batch, seq, ffn_dim]`,
#   `final_norm`. Hooks are removed afterwards.
# - `lens.logit_lens(model, ids, target=...)`: top tokens `[layers + 1, seq, k]` and the target's
#   rank and probability `[layers + 1, seq]`; `lens.decode_residual` for any state.
# - A head's QK and OV circuits, `dim × dim` maps of rank at most `head_dim`, from its slices of
#   the weights; RoPE makes the QK circuit depend on the offset.
# - What the bundled (4-bit) model showed: the answer appears only in the last block; from layer
#   2 on most heads sink their attention into the first token; one residual dimension on the
#   first token holds values thousands of times the median and freezes that position's
#   logit-lens reading into a flat one (about 10 bits).
#
# Everything in this chapter ran on a CPU, in float32 for the outputs shown here. The next
# chapter is about speed on a GPU: bf16, fused attention kernels, a static KV cache,
# `torch.compile` and CUDA graphs, set against the memory-bandwidth limit. It records which of
# its measurements were taken on which machine; GPU timings are not among this chapter's outputs.
