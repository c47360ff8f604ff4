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
# learned numbers, read from a table with one row per vocabulary entry. The result, of shape
# `[batch, seq, dim]`, is where the residual stream of every later chapter starts.
#
# This chapter builds that lookup, shows that it is a matrix product in disguise, checks it
# against transformers, and then looks at the table itself: how long its rows are, which
# tokens sit next to each other, and why in the bundled model the same table also produces
# the output scores.

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
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import annotated_llama as al
from annotated_llama.config import ModelArgs, count_parameters
from annotated_llama.reference import transformers_model

_ = torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %%
model, tok = al.load(MODEL)
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"vocab_size {args.vocab_size}, dim {args.dim}")

# %% [markdown]
# ## The prompt, as ids
#
# We follow the same sentence through the whole book. Encoded with the model's own tokenizer
# (the bundled model adds no BOS token; Llama 2 would put id 1 in front):

# %%
PROMPT = "The capital of France is"
tokens = torch.tensor([tok.encode(PROMPT)], device=model.device)  # [batch, seq]
print("tokens", tuple(tokens.shape), tokens.tolist())
print("pieces", [tok.decode([i]) for i in tokens[0].tolist()])

# %% [markdown]
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
# transformers calls the same table `model.embed_tokens`. For the bundled model it read and
# dequantized the GGUF file with its own code (the embedding is stored there in 8-bit Q8_0
# blocks), so exact equality also says that the two dequantizers agree.

# %%
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
x_hf = hf.model.embed_tokens(tokens)  # [batch, seq, dim]
print("transformers:", tuple(x_hf.shape))
assert torch.equal(x_hf, x_module)
print("our embedding == transformers' embed_tokens: True (exact)")

# %% [markdown]
# Each of the five positions now holds a vector of `dim` numbers. The first few of each:

# %%
x = x_module  # [batch, seq, dim]: the input of chapter 4
for i, row in zip(tokens[0].tolist(), x[0]):
    values = " ".join(f"{v:+.3f}" for v in row[:6].tolist())
    norm = row.float().norm()
    print(f"{tok.decode([i])!r:>11}: [{values} ...]  norm {norm:.2f}")

# %% [markdown]
# ## How long are the rows?
#
# Nothing forces the rows to have the same length. The histogram shows the Euclidean norm
# $\lVert E_{t,:} \rVert$ of every row.

# %%
def row_norms(W: torch.Tensor) -> torch.Tensor:
    """float32 L2 norm of every row of W, a chunk at a time (saves memory)."""
    return torch.cat([rows.float().norm(dim=1) for rows in W.split(8192)])


norms = row_norms(E)  # [vocab]
q = torch.quantile(norms.cpu(), torch.tensor([0.0, 0.5, 1.0]))
print(f"row norms: min {q[0]:.2f}, median {q[1]:.2f}, max {q[2]:.2f}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.hist(norms.cpu().numpy(), bins=120, color="#4a7ab5")
ax.set_yscale("log")
ax.set(xlabel="L2 norm of the embedding row",
       ylabel="number of tokens (log scale)",
       title=f"Norms of the {args.vocab_size:,} rows of tok_embeddings")
plt.show()

# %% [markdown]
# Which tokens are at the two ends? A small helper prints a token with its leading space
# visible (SentencePiece's `decode` drops the space of a word-initial piece, so for a
# SentencePiece tokenizer we show the piece with `▁` turned back into a space).

# %%
def show(i: int) -> str:
    """A token as readable text, leading space included."""
    if isinstance(tok, al.tokenizer.SentencePieceTokenizer):
        return repr(tok.id_to_piece(i).replace("▁", " "))
    return repr(tok.decode([i]))


order = torch.sort(norms, stable=True).indices.tolist()
print(f"{'smallest norms':<24}  largest norms")
for small, large in zip(order[:8], order[::-1][:8]):
    print(f"{show(small):>16} {norms[small]:.2f}  {show(large):>16} {norms[large]:.2f}")

# %% [markdown]
# In the bundled model the shortest rows belong to frequent first names (" John", " Michael",
# " David") and the longest to word beginnings that are almost never a word on their own
# (" strugg", " affili", " enthus"). We read nothing deep into this; one thing it does matter
# for is the output side. In a model with tied embeddings (below), a row is also the vector
# that the final hidden state is compared with to score the token, and its length scales that
# score.

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
# put a lone `▁` in front of a word that starts with a space; " 7" is two tokens in both
# tokenizers, a space and the digit).

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
        found = [f"{show(j)} {s:.2f}" for j, s in neighbours(W, i)]
        lines.append(f"{show(i):>10}: " + ", ".join(found[:3]))
        lines.append(" " * 12 + ", ".join(found[3:]))
print("\n".join(lines))

# %% [markdown]
# The neighbours are what one would hope for: other capitals next to " Paris", royalty and
# other spellings of the same word next to " king", the other digits next to "7", roughly in
# order of numerical distance, inflections of " running", colours next to " blue". Many of the closest
# tokens are the same word with different capitalisation or without the leading space: to a
# byte-level tokenizer these are unrelated ids, and the table had to learn that they mean
# nearly the same.

# %% [markdown]
# ## Tied and untied embeddings
#
# At the other end of the model, the LM head turns the final hidden state $\mathbf{h}$ (after
# the last RMSNorm) of each position into one score per token with a matrix
# $W_\text{out} \in \mathbb{R}^{\text{vocab} \times \text{dim}}$:
# $\text{logit}_t = W_{\text{out}\,t,:} \cdot \mathbf{h}$. Some models use the input table
# for this, $W_\text{out} = E$ {cite}`press2017tying`, so the score of a token is the dot
# product of the hidden state with that token's embedding. The bundled SmolLM2 does; its
# config says so, and the package makes `output.weight` the very same tensor object:

# %%
tied = model.output.weight is model.tok_embeddings.weight
print("tie_word_embeddings in the config:", args.tie_word_embeddings)
print("model.output.weight is model.tok_embeddings.weight:", tied)
assert tied == args.tie_word_embeddings
hf_tied = hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
assert hf_tied == tied
print("transformers' lm_head shares embed_tokens' storage:", hf_tied)

# %% [markdown]
# LLaMA 1, Llama 2 and the Llama 3 models from 8B up do not tie: they train a separate output
# matrix of the same shape. A reader who sets `MODEL` to Llama-2-7B sees `False` above and
# two neighbour tables instead of one.
#
# With tied weights the logits really are dot products with the embedding rows. We catch the
# output of the final RMSNorm with a forward hook, multiply by the table ourselves and compare
# with the model's logits:

# %%
captured = {}
hook = model.norm.register_forward_hook(
    lambda module, inputs, out: captured.update(h=out))
logits = model(tokens)  # [batch, seq, vocab], float32
hook.remove()

h = captured["h"]  # [batch, seq, dim]: final hidden states, after the last RMSNorm
W_out = model.output.weight  # [vocab, dim]
by_hand = (h @ W_out.T).float()  # [batch, seq, dim] @ [dim, vocab] -> [b, s, vocab]
tol = 1e-4 if model.dtype == torch.float32 else 1e-1
diff = (by_hand - logits).abs().max().item()
assert diff < tol
print(f"h {tuple(h.shape)} @ W_out.T -> {tuple(by_hand.shape)}")
print(f"max abs diff from the model's logits < {tol:g}: True")

# %% [markdown]
# The five highest scores at the last position, each recomputed as one dot product with a row
# of the table:

# %%
top = logits[0, -1].topk(5)
for t, value in zip(top.indices.tolist(), top.values.tolist()):
    dot = (h[0, -1].float() @ W_out[t].float()).item()
    print(f"{show(t):>10}: logit {value:6.2f} = h · W_out[{t:>5}] = {dot:6.2f}")

# %% [markdown]
# Tying saves one `vocab × dim` matrix. For a small model with a large vocabulary that is a
# large share of all parameters; for a 7B model it is a small one:

# %%
for name, a in [(f"{MODEL} (tied: {args.tie_word_embeddings})", args),
                ("llama2-7b (untied)", ModelArgs.preset("llama2-7b"))]:
    matrix, total = a.vocab_size * a.dim, count_parameters(a)
    print(f"{name}: vocab x dim = {a.vocab_size:,} x {a.dim:,} = {matrix:,}\n"
          f"    = {matrix / total:.1%} of all {total:,} parameters")

# %% [markdown]
# For SmolLM2-135M a second table would add about a fifth to the model. Llama-2-7B spends
# under 2% of its parameters on its separate output matrix and gets, in exchange, an input
# and an output representation that are free to differ.

# %% [markdown]
# ## A picture of a few groups
#
# Projected onto a plane, do related tokens cluster? We take four groups of words, stack
# their embedding rows, centre them and project onto the two directions of largest variance
# (principal component analysis, computed with an SVD). Words that the tokenizer splits into
# several pieces are skipped.

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


all_words = [(g, w) for g in GROUPS for w in words[g]]
ids = [token_of(" " + w) for _, w in all_words]
xy, share = pca_2d(E[ids])  # [n_words, 2]
print(f"{len(ids)} words; the 2 components hold {share:.0%} of their variance")

# %%
fig, ax = plt.subplots(figsize=(8, 5))
for group in GROUPS:
    mask = torch.tensor([g == group for g, _ in all_words])
    ax.scatter(xy[mask, 0], xy[mask, 1], color=COLOURS[group], s=25,
               label=group)
for (g, w), (px, py) in zip(all_words, xy.tolist()):
    if g == "numbers":  # the one group spread out enough to label every word
        ax.annotate(w, (px, py), xytext=(3, 3), textcoords="offset points",
                    fontsize=9, color=COLOURS[g])
ax.set(xlabel="principal component 1 (embedding units)",
       ylabel="principal component 2 (embedding units)",
       title="Four word groups in the embedding table, projected with PCA")
ax.legend(fontsize=9, loc="upper left")
plt.show()

# %% [markdown]
# The projection was never told which word belongs to which group, yet the groups land in
# separate regions of the plane. Two directions out of `dim` are enough to pull them apart.
#
# Within a group the points are too close to label. Projecting each group on its *own* two
# main directions spreads it out and shows the order inside it:

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 8))
for ax, group in zip(axes.flat, GROUPS):
    gxy, gshare = pca_2d(E[[token_of(" " + w) for w in words[group]]])
    ax.scatter(gxy[:, 0], gxy[:, 1], color=COLOURS[group], s=20)
    for w, (px, py) in zip(words[group], gxy.tolist()):
        ax.annotate(w, (px, py), xytext=(3, 3), textcoords="offset points",
                    fontsize=9)
    ax.margins(0.25)
    ax.set_title(f"{group} ({gshare:.0%} of their variance)", fontsize=10)
    ax.set_xlabel("component 1 (embedding units)", fontsize=9)
    ax.set_ylabel("component 2", fontsize=9)
fig.suptitle("Each group projected on its own two principal components")
fig.tight_layout()
plt.show()

# %% [markdown]
# The words of each group, sorted by their coordinate on the group's first component:

# %%
for group in GROUPS:
    gxy, _ = pca_2d(E[[token_of(" " + w) for w in words[group]]])
    ranked = [words[group][i] for i in gxy[:, 0].argsort().tolist()]
    print(f"{group:>9}: {' '.join(ranked)}")

# %% [markdown]
# On the bundled model the first component puts the number words from "one" to "nine" in
# their numerical order (only "ten" is out of place), the European countries at one end, black
# and white together at one end of the colours, and the weekend at the end of the days (in
# the figure the days trace an arc in their weekly order). With
# ten points in 576 dimensions some structure would show up by chance, so we take these as
# illustrations, not findings; but they are the kind of order that makes the rows useful to
# the layers that read them.

# %% [markdown]
# ## What we have now
#
# - `tokens` `[batch, seq]` = `[1, 5]` became `x` `[batch, seq, dim]` = `[1, 5, 576]` for the
#   bundled model (`[1, 6, 4096]` for Llama-2-7B, whose tokenizer adds BOS): one row of the
#   `[vocab, dim]` table per token, identical to transformers' `embed_tokens`.
# - The rows carry meaning: similar tokens point in similar directions. In the bundled model
#   the same table scores the output tokens (tied embeddings); Llama 2 keeps a second one.
# - Nothing in `x` says where a token stands in the sequence: LLaMA adds no position vector
#   here. Position enters later, inside attention, through RoPE (chapter 5).
#
# Next, chapter 4 normalises these vectors with RMSNorm, the first thing every transformer
# block does to its input.
