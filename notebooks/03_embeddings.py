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
# # 3. Embeddings
#
# The tokenizer of chapter 2 left us with integers: a tensor of token ids of shape
# `[batch, seq]`. A neural network cannot do much with an id like 4649 as a number; the value
# is only a name. The first layer of LLaMA therefore replaces every id by a vector of `dim`
# learned numbers, its {term}`embedding <Embedding>`, read from a table with one row per entry
# of the {term}`vocabulary <Vocabulary>`. The result, of shape `[batch, seq, dim]`, is where
# the {term}`residual stream <Residual stream>` of every later chapter starts.
#
# This chapter builds that lookup, shows that it is a matrix product in disguise, checks it
# against transformers, and then looks at the table itself: how long its rows are, which
# tokens sit next to each other, and why in the bundled model the same table also produces
# the output scores.

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
import textwrap
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import annotated_llama as al
from annotated_llama.config import ModelArgs, count_parameters
from annotated_llama.reference import as_transformers, check_close

_ = torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# The bundled model is SmolLM2-135M, read from a {term}`GGUF` file in which the matrices are stored
# as 4-bit Q4_1 blocks and the embedding table as 8-bit Q8_0 blocks (llama.cpp's formats
# {cite}`gerganov2023llamacpp`), dequantized when the model is loaded (to float32 on a CPU). To run
# the chapter on another LLaMA, set `MODEL` to a Hugging Face id or a local directory. At 2 bytes
# per parameter in 16 bits, `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or
# `meta-llama/Llama-3.2-1B` (gated, about 2.3 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf`
# (12.55 GiB) or `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the
# full table.

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"vocab_size {args.vocab_size}, dim {args.dim}")

# %% [markdown]
# ## The prompt, as ids
#
# We follow the same sentence through the whole book. A small helper prints a token as the text
# it stands for, leading space included. Decoding a token on its own is not enough for that:
# SentencePiece's decoder drops the space in front of a text's first word. So we decode the token
# after a plain letter and cut the letter off, which works for every tokenizer the package
# reads (SentencePiece's `▁` pieces, byte-level `Ġ` pieces, tiktoken's bytes); special tokens
# such as {term}`BOS`, which decode to nothing, are shown by their name.

# %%
_LETTER = tok.encode("a", bos=False)[-1:]  # any ordinary token to stand in front


def show(i: int) -> str:
    """A token as readable text, leading space included."""
    text = tok.decode(_LETTER + [i])[len(tok.decode(_LETTER)):]
    return repr(text or tok.id_to_piece(i))


PROMPT = "The capital of France is"
tokens = torch.tensor([tok.encode(PROMPT)], device=model.device)  # [batch, seq]
print("tokens", tuple(tokens.shape), tokens.tolist())
print("pieces", " ".join(show(i) for i in tokens[0].tolist()))

# %% [markdown]
# The bundled model's tokenizer adds no BOS token; Llama 2's would put id 1 in front.
#
# ## The table
#
# The embedding is a matrix $E$ with one row per token and one column per model dimension,
# stored as `model.tok_embeddings.weight`. Looking up token $t$ means taking row $t$. Written
# as algebra, that row is what a one-hot vector $\mathbf{e}_t$ (all zeros except a one at
# position $t$) picks out of $E$:
#
# $$
# \mathbf{x} = E_{t,:} = \mathbf{e}_t^\top E, \qquad
# E \in \mathbb{R}^{\text{vocab} \times \text{dim}},\;
# \mathbf{e}_t \in \{0, 1\}^{\text{vocab}}.
# $$
#
# So the embedding layer is a linear layer with no bias applied to one-hot inputs; the lookup
# is just the cheap way to compute it, reading `dim` numbers instead of multiplying
# `vocab × dim` of them.

# %%
E = model.tok_embeddings.weight  # [vocab, dim]
print("E", tuple(E.shape), E.dtype)
print(f"{E.numel():,} numbers in the table")

# %% [markdown]
# Three ways to embed the prompt: index the rows, call the module, multiply one-hot vectors by
# the matrix. Adding zeros is exact in floating point, so all three agree bit for bit.

# %%
x_index = E[tokens]  # [batch, seq, dim]: row tokens[b, s] for every (b, s)
x_module = model.tok_embeddings(tokens)  # [batch, seq, dim]
one_hot = F.one_hot(tokens, args.vocab_size).to(E.dtype)  # [batch, seq, vocab]
x_matmul = one_hot @ E  # [batch, seq, vocab] @ [vocab, dim] -> [batch, seq, dim]

print("one_hot", tuple(one_hot.shape), "-> x", tuple(x_matmul.shape))
assert torch.equal(x_index, x_module) and torch.equal(x_index, x_matmul)
print("indexing == module == one-hot @ E: True")

# %% [markdown]
# In the package the table is an `nn.Embedding`, created in `Transformer.__init__` (the line
# after it ties the output layer to it when the config says so; more on that below):

# %%
print(textwrap.dedent(inspect.getsource(al.model.Transformer.__init__)))

# %% [markdown]
# and used in the first line of the forward pass that touches the tokens:

# %%
source = inspect.getsource(al.model.Transformer.forward).splitlines()
print(next(line for line in source if "tok_embeddings" in line).strip())

# %% [markdown]
# ### Checked against transformers
#
# transformers calls the same table `model.embed_tokens`. The book's reference,
# `as_transformers(model)`, is transformers' `LlamaForCausalLM` built around the tensors our
# loader read, so that a chapter holds the weights once. Be clear about what that checks. Shared:
# the weights, as our loader read them, so `embed_tokens` is our very table and the comparison
# below says only that transformers' lookup returns what ours does. Independent: transformers'
# model code, which later chapters compare layer by layer (its attention, its RoPE in another
# layout, its norms and MLP).
#
# Whether the file was read correctly is checked in the tests (`tests/test_bundled.py`), where
# transformers loads the bundled GGUF itself, with its own tensor-name mapping and its own q/k
# row permutation. Even that check is not independent everywhere: to turn the Q8_0 and Q4_1 blocks
# into float32, transformers and our loader call the same function, gguf-py's `dequantize`.

# %%
hf = as_transformers(model)  # transformers' model on our tensors: no second copy
x_hf = hf.model.embed_tokens(tokens)  # [batch, seq, dim]
print("transformers:", tuple(x_hf.shape))
assert hf.model.embed_tokens.weight.data_ptr() == E.data_ptr()  # the same storage
assert torch.equal(x_hf, x_module)
print("transformers' embed_tokens is our table; its lookup == ours: True (exact)")

# %% [markdown]
# Each position now holds a vector of `dim` numbers. The first few of each:

# %%
x = x_module  # [batch, seq, dim]: the input of chapter 4
for i, row in zip(tokens[0].tolist(), x[0]):
    values = " ".join(f"{v:+.3f}" for v in row[:6].tolist())
    norm = row.float().norm()
    print(f"{show(i):>11}: [{values} ...]  norm {norm:.2f}")

# %% [markdown]
# ## How long are the rows?
#
# Nothing forces the rows to have the same length. The histogram shows the Euclidean norm
# $\lVert E_{t,:} \rVert$ of every row the tokenizer can produce (some checkpoints have a few
# spare rows beyond the tokenizer's vocabulary, which no text ever reads; we leave them out).

# %%
def row_norms(W: torch.Tensor) -> torch.Tensor:
    """float32 L2 norm of every row of W, a chunk at a time (saves memory)."""
    return torch.cat([rows.float().norm(dim=1) for rows in W.split(8192)])


n_tokens = min(tok.vocab_size, args.vocab_size)  # rows the tokenizer can produce
norms = row_norms(E[:n_tokens])  # [n_tokens]
q = torch.quantile(norms.cpu(), torch.tensor([0.0, 0.5, 1.0]))
print(f"{n_tokens:,} rows; norms: min {q[0]:.2f}, median {q[1]:.2f}, max {q[2]:.2f}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.hist(norms.cpu().numpy(), bins=120, color="#4a7ab5")
ax.set_yscale("log")
ax.set(xlabel="L2 norm of the embedding row",
       ylabel="number of tokens (log scale)",
       title=f"Norms of the {n_tokens:,} rows of tok_embeddings")
plt.show()

# %% [markdown]
# Which tokens are at the two ends?

# %%
order = torch.sort(norms, stable=True).indices.tolist()
print(f"{'smallest norms':<24}  largest norms")
for small, large in zip(order[:8], order[::-1][:8]):
    print(f"{show(small):>16} {norms[small]:.2f}  {show(large):>16} {norms[large]:.2f}")

# %% [markdown]
# In the bundled model the shortest rows belong to frequent first names (" John", " Michael",
# " David") and the longest to word beginnings that are almost never a word on their own
# (" strugg", " affili", " enthus"). We read nothing deep into this; one thing it does matter
# for is the output side. In a model with {term}`tied embeddings <Tied embeddings>` (below), a
# row is also the vector that the final hidden state is compared with to score the token, and
# its length scales that score.

# %% [markdown]
# ## Neighbours
#
# If the table has learned something about meaning, tokens used in similar ways should have
# rows that point in similar directions. We measure that with the cosine similarity
#
# $$
# \cos(s, t) = \frac{E_{s,:} \cdot E_{t,:}}{\lVert E_{s,:} \rVert \, \lVert E_{t,:} \rVert},
# $$
#
# which ignores the lengths we just looked at. First, a way to name a token by a word: encode
# it and keep the last id, provided that id alone spells the word (SentencePiece tokenizers
# put a lone `▁` in front of a word that starts with a space; " 7" is two tokens in the
# bundled tokenizer, in Llama 2's and in Llama 3's, a space and the digit). A word that the
# tokenizer splits into several pieces has no row of its own, and is skipped.

# %%
def token_of(word: str) -> int | None:
    """The id that spells `word` alone (a lone leading space dropped), or None."""
    ids = tok.encode(word, bos=False)
    return ids[-1] if tok.decode(ids[-1:]).strip() == word.strip() else None


def neighbours(W: torch.Tensor, i: int, k: int = 6) -> list[tuple[int, float]]:
    """The k rows of W [vocab, dim] most cosine-similar to row i (i excluded)."""
    n = row_norms(W)  # [vocab]
    sims = (W @ W[i]).float() / (n * n[i])  # [vocab]
    sims[i] = -2.0
    top = sims.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist()))


# %% [markdown]
# The model has two matrices that can be read as embeddings: the input table
# `tok_embeddings.weight`, and the output projection `output.weight`, whose row $t$ is the
# vector that scores token $t$. The cell below lists the neighbours in both when they are
# different matrices (Llama 2) and once when they are the same one (the bundled model).

# %%
WORDS = [" Paris", " king", " 7", " running", " blue"]
TABLES = {"input": model.tok_embeddings.weight, "output": model.output.weight}
if TABLES["output"] is TABLES["input"]:
    TABLES = {"input = output": TABLES["input"]}

lines = []
for name, W in TABLES.items():
    lines.append(f"nearest neighbours by cosine similarity, {name} embeddings:")
    for word in WORDS:
        i = token_of(word)
        if i is None:
            lines.append(f"{word!r:>10}: not a single token here, skipped")
            continue
        found = [f"{show(j)} {s:.2f}" for j, s in neighbours(W[:n_tokens], i)]
        lines.append(f"{show(i):>10}: " + ", ".join(found[:3]))
        lines.append(" " * 12 + ", ".join(found[3:]))
print("\n".join(lines))

# %% [markdown]
# For the bundled model the neighbours are what one would hope for: other capitals next to
# " Paris", royalty and other spellings of the same word next to " king", the other digits next
# to "7", roughly in order of numerical distance, inflections of " running", colours next to
# " blue". Many of the closest tokens are the same word with different capitalisation or
# without the leading space: to a byte-level tokenizer these are unrelated ids, and the table
# had to learn that they mean nearly the same. These are the similarities of the dequantized
# table: in the GGUF it is stored in 8 bits, one scale per block of 32 numbers, so each number
# there is off by at most 1/254 of the largest in its block.

# %% [markdown]
# ## Tied and untied embeddings
#
# At the other end of the model, the {term}`LM head` turns the final hidden state
# $\mathbf{h}$ (after the last RMSNorm) of each position into one score per token with a
# matrix $W_\text{out} \in \mathbb{R}^{\text{vocab} \times \text{dim}}$:
# $\text{logit}_t = W_{\text{out}\,t,:} \cdot \mathbf{h}$. Some models use the input table
# for this, $W_\text{out} = E$ {cite}`press2017tying`, so the score of a token is the dot
# product of the hidden state with that token's embedding. The bundled SmolLM2 does, and so do
# Llama 3.2's 1B and 3B; the config says so, and the package then makes `output.weight` the
# very same tensor object:

# %%
tied = model.output.weight is model.tok_embeddings.weight
print("tie_word_embeddings in the config:", args.tie_word_embeddings)
print("model.output.weight is model.tok_embeddings.weight:", tied)
assert tied == args.tie_word_embeddings

# %% [markdown]
# LLaMA 1, Llama 2 and the Llama 3 models from 8B up do not tie: they train a separate output
# matrix of the same shape. A reader who sets `MODEL` to Llama-2-7B sees `False` above and
# two neighbour tables instead of one.
#
# Either way the {term}`logits <Logits>` are dot products with the rows of `output.weight`. We
# catch the output of the final RMSNorm with a forward hook, multiply by the matrix ourselves and
# compare with the model's logits. Only the last position's logits are needed, so we ask the
# model for those alone (`last_only=True`; the final norm then sees the last position only):

# %%
captured = {}
hook = model.norm.register_forward_hook(
    lambda module, inputs, out: captured.update(h=out))
logits = model(tokens, last_only=True)  # [batch, 1, vocab], float32
hook.remove()

h = captured["h"]  # [batch, 1, dim]: the last final hidden state, after the last RMSNorm
W_out = model.output.weight  # [vocab, dim]
by_hand = (h @ W_out.T).float()  # [batch, 1, dim] @ [dim, vocab] -> [batch, 1, vocab]
gap = check_close(by_hand, logits, model.dtype, "h @ W_out.T")  # asserts, in the model's dtype
print(f"h {tuple(h.shape)} @ W_out.T -> {tuple(by_hand.shape)}")
print(f"matches the model's logits within the {model.dtype} tolerance: True")

# %% [markdown]
# The five highest scores at the last position, each recomputed as one dot product with a row
# of the matrix:

# %%
top = logits[0, -1].topk(5)
for t, value in zip(top.indices.tolist(), top.values.tolist()):
    dot = (h[0, -1].float() @ W_out[t].float()).item()
    print(f"{show(t):>10}: logit {value:6.2f} = h · W_out[{t:>5}] = {dot:6.2f}")

# %% [markdown]
# Tying saves one `vocab × dim` matrix. For a small model with a large vocabulary that is a
# large share of all parameters; for a 7B model it is a small one:

# %%
for name, a in [(f"this model (tied: {args.tie_word_embeddings})", args),
                ("llama2-7b (untied)", ModelArgs.preset("llama2-7b")),
                ("llama3.2-1b (tied)", ModelArgs.preset("llama3.2-1b"))]:
    matrix, total = a.vocab_size * a.dim, count_parameters(a)
    print(f"{name}: vocab x dim = {a.vocab_size:,} x {a.dim:,} = {matrix:,}\n"
          f"    = {matrix / total:.1%} of all {total:,} parameters")

# %% [markdown]
# For the bundled SmolLM2-135M a second table would add about a fifth to the model, for
# Llama-3.2-1B about a fifth as well (its vocabulary has 128,256 tokens). Llama-2-7B spends
# under 2% of its parameters on its separate output matrix and gets, in exchange, an input
# and an output representation that are free to differ.

# %% [markdown]
# ## A picture of a few groups
#
# Projected onto a plane, do related tokens cluster? We take four groups of words, stack
# their embedding rows, centre them and project onto the two directions of largest variance
# (principal component analysis, computed with an SVD). Words that the tokenizer splits into
# several pieces are skipped, and so is a group left with fewer than three words.

# %%
GROUPS = {
    "numbers": "one two three four five six seven eight nine ten",
    "countries": "France Germany Italy Spain Japan China India Brazil Canada Egypt",
    "colours": "red blue green yellow purple orange black white brown pink",
    "days": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
}
COLOURS = {"numbers": "#1f77b4", "countries": "#d62728",
           "colours": "#2ca02c", "days": "#9467bd"}
words = {}  # group -> the words that are one token with a leading space
for group, text in GROUPS.items():
    words[group] = [w for w in text.split() if token_of(" " + w) is not None]
    skipped = sorted(set(text.split()) - set(words[group]))
    print(f"{group}: {len(words[group])} single tokens; skipped {skipped}")
KEPT = [g for g in GROUPS if len(words[g]) >= 3]  # groups with enough points to project
print("groups drawn:", KEPT)

# %% [markdown]
# The projection itself, a few lines around `torch.linalg.svd`. The sign of a principal
# component is arbitrary, so we orient both axes by the first row (negative $x$, positive
# $y$), which makes the picture the same on every machine.

# %%
def pca_2d(X: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rows of X [n, dim] on their 2 main directions -> ([n, 2], variance share)."""
    Xc = X.float() - X.float().mean(dim=0)  # centred, [n, dim]
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)  # Xc = U diag(S) Vh
    xy = Xc @ Vh[:2].T  # [n, 2]
    xy = xy * torch.tensor([-1.0, 1.0], device=xy.device) * xy[0].sign()
    return xy.cpu(), ((S[:2] ** 2).sum() / (S**2).sum()).item()


all_words = [(g, w) for g in KEPT for w in words[g]]
ids = [token_of(" " + w) for _, w in all_words]
if KEPT:
    xy, share = pca_2d(E[ids])  # [n_words, 2]
    print(f"{len(ids)} words; the 2 components hold {share:.0%} of their variance")
else:
    print("no group has three single-token words in this vocabulary: nothing to project")

# %%
fig, ax = plt.subplots(figsize=(8, 5))
for group in KEPT:
    mask = torch.tensor([g == group for g, _ in all_words])
    ax.scatter(xy[mask, 0], xy[mask, 1], color=COLOURS[group], s=25, label=group)
    centre = xy[mask].mean(0)  # printed: the figure's summary
    print(f"{group:>9}: centre ({centre[0]:+.1f}, {centre[1]:+.1f})")
for (g, w), (px, py) in zip(all_words, xy.tolist() if KEPT else []):
    if g == "numbers":  # the one group spread out enough to label every word
        ax.annotate(w, (px, py), xytext=(3, 3), textcoords="offset points",
                    fontsize=9, color=COLOURS[g])
ax.set(xlabel="principal component 1 (embedding units)",
       ylabel="principal component 2 (embedding units)",
       title="Word groups in the embedding table, projected with PCA")
if KEPT:
    ax.legend(fontsize=9, loc="upper left")
plt.show()

# %% [markdown]
# The projection was never told which word belongs to which group. For the bundled model the
# groups land in separate regions of the plane (the printed centres): two directions out of
# `dim` are enough to pull them apart.
#
# Within a group the points are too close to label. Projecting each group on its *own* two
# main directions spreads it out and shows the order inside it:

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 8))
summary = []
for ax in axes.flat[len(KEPT):]:
    ax.set_axis_off()  # fewer than four groups on a small vocabulary
for ax, group in zip(axes.flat, KEPT):
    gxy, gshare = pca_2d(E[[token_of(" " + w) for w in words[group]]])
    ax.scatter(gxy[:, 0], gxy[:, 1], color=COLOURS[group], s=20)
    for w, (px, py) in zip(words[group], gxy.tolist()):
        ax.annotate(w, (px, py), xytext=(3, 3), textcoords="offset points",
                    fontsize=9)
    ax.margins(0.25)
    ax.set_title(f"{group} ({gshare:.0%} of their variance)", fontsize=10)
    ax.set_xlabel("component 1 (embedding units)", fontsize=9)
    ax.set_ylabel("component 2", fontsize=9)
    ranked = [words[group][i] for i in gxy[:, 0].argsort().tolist()]
    summary.append(f"{group:>9} ({gshare:.0%}), by component 1: {' '.join(ranked)}")
fig.suptitle("Each group projected on its own two principal components")
fig.tight_layout()
print("\n".join(summary))
plt.show()

# %% [markdown]
# On the bundled model the first component puts the number words from "one" to "nine" in
# their numerical order (only "ten" is out of place), the European countries at one end, black
# and white together at one end of the colours, and the weekend at the end of the days (in
# the figure the days trace an arc in their weekly order). With
# ten points in 576 dimensions some structure would show up by chance, so we take these as
# illustrations, not findings; but they are the kind of order that makes the rows useful to
# the layers that read them.

# %% [markdown]
# ## A map to explore
#
# The same projection on a few hundred tokens, to explore: the first 400 tokens of the vocabulary
# (in id order) that are a space followed by three or more letters, plus the group words above,
# all projected by `pca_2d` onto the two main directions of this larger set. Hover a point, or
# type a word in the box, to see its five nearest neighbours among these tokens, measured by
# cosine similarity in the full `dim`-dimensional table, not on the plane.

# %%
from annotated_llama import explorers  # noqa: E402

map_tokens = dict(explorers.word_tokens(tok, limit=400))  # id -> text: a space and 3+ letters
for group in KEPT:
    map_tokens.update({token_of(" " + w): " " + w for w in words[group]})
map_ids = list(map_tokens)
if len(map_ids) >= 3:
    map_xy, map_share = pca_2d(E[map_ids])  # [n_tokens, 2]
    embedding_explorer = explorers.embedding_map(
        [map_tokens[i] for i in map_ids], map_xy, E[map_ids],
        groups={g: words[g] for g in KEPT}, colours=COLOURS, share=map_share)
    print(embedding_explorer.summary)
    print(f"the 2 components hold {map_share:.0%} of these tokens' variance")
else:
    embedding_explorer = None
    print("fewer than 3 such tokens in this vocabulary: no map")

# %% tags=["remove-input", "nbval-ignore-output"]
embedding_explorer

# %% [markdown]
# ## What we have now
#
# - `tokens` `[batch, seq]` became `x` `[batch, seq, dim]`: `[1, 5]` and `[1, 5, 576]` for the
#   bundled model (`[1, 6, 4096]` for Llama-2-7B, whose tokenizer adds BOS), one row of the
#   `[vocab, dim]` table per token, the same as transformers' `embed_tokens` on that table.
# - The rows carry meaning: in the bundled model similar tokens point in similar directions,
#   and the same table scores the output tokens (tied embeddings); Llama 2 keeps a second one.
# - Nothing in `x` says where a token stands in the sequence: LLaMA adds no position vector
#   here. Position enters later, inside attention, through RoPE (chapter 5).
#
# Next, chapter 4 normalises these vectors with RMSNorm, the first thing every transformer
# block does to its input.
