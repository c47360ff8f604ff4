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
# # 0. Introduction
#
# A language model like LLaMA does one thing over and over: it reads a sequence of tokens and
# produces a score for every token in its vocabulary, the model's guess at what comes next.
# Pick one of those tokens, append it, and repeat, and you have generated text.
#
# This book follows that one step, the forward pass, from the text going in to the token coming
# out. Each chapter takes the tensors the previous chapter left us with, explains the next piece
# in a few sentences and an equation, builds it in plain PyTorch with the shapes written out, and
# then checks the result against an independent reference. By the end we have a complete,
# tested LLaMA that runs pretrained weights.
#
# This chapter says what LLaMA is, draws the whole pipeline once, says which model the book runs
# on and what a bigger one needs, and explains how to run and check the book.

# %% [markdown]
# ## Set-up
#
# Every chapter's notebook starts with a set-up cell, hidden on these pages. On your own machine
# it does nothing (the environment comes from the repository, see "Running the book" at the
# end). On Google Colab it installs this book's package from GitHub, leaving Colab's own PyTorch
# alone, and fetches the small model the chapters run on.

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
import collections

import gguf
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

import annotated_llama as al
from annotated_llama import assets

# %% [markdown]
# ## What LLaMA is
#
# LLaMA is a family of decoder-only transformer language models released by Meta: LLaMA
# (February 2023, 7B to 65B parameters) {cite}`touvron2023llama`, Llama 2 (July 2023, 7B to 70B,
# with chat versions) {cite}`touvron2023llama2`, and Llama 3 (2024) {cite}`dubey2024llama3`, which
# came in 8B and 70B, grew to 405B and a context of 128k tokens with Llama 3.1, and shrank to 1B
# and 3B with the small text models of Llama 3.2 {cite}`meta2024llama32`. Because the weights were
# published, the architecture became a template: many other models, from TinyLlama
# {cite}`zhang2024tinyllama` to SmolLM2 {cite}`allal2025smollm2`, use exactly the same layers with
# different sizes. The appendix tabulates a few of them.
#
# The architecture fits in one paragraph. Text is split into {term}`tokens <Token>`, integer ids
# from a fixed {term}`vocabulary <Vocabulary>`. Each id selects a row of an
# {term}`embedding <Embedding>` table, a vector of `dim` numbers. These vectors pass through
# `n_layers` identical blocks, each made of two sub-layers: causal self-attention, in which every
# position gathers information from the positions before it (with rotary position embeddings,
# {term}`RoPE`, telling it how far away they are), and a {term}`SwiGLU` feed-forward network,
# which transforms each position on its own. Each sub-layer reads a normalised copy of the
# running vector ({term}`RMSNorm`) and adds its result back to it, so the vector that flows
# through the blocks, the {term}`residual stream <Residual stream>`, is only ever added to. A last
# RMSNorm and a linear layer, the {term}`LM head`, turn the final vector at each position into one
# score ({term}`logit <Logits>`) per vocabulary entry.
#
# Compared with the original transformer {cite}`vaswani2017attention`, LLaMA normalises before
# each sub-layer rather than after, uses RMSNorm {cite}`zhang2019rmsnorm` instead of LayerNorm,
# rotary position embeddings {cite}`su2021roformer` instead of learned or sinusoidal ones added
# to the input, and SwiGLU {cite}`shazeer2020glu` instead of a ReLU feed-forward layer. The
# figure below is the whole model; the chapters take it apart box by box.

# %% [markdown]
# The figure below is drawn with matplotlib. Its code, two helpers and a layout followed by the
# drawing itself, is folded away: click "Show code cell source" to read it. Grey labels are the
# shapes of the tensors on the arrows, for one sequence of `seq` tokens.

# %% tags=["hide-input"]
X, W, H = 0.42, 0.46, 0.05  # centre line, box width and box height, in axes units


def box(ax, y, text, colour):
    corner = (X - W / 2, y - H / 2)
    ax.add_patch(FancyBboxPatch(corner, W, H, boxstyle="round,pad=0.006",
                                facecolor=colour, edgecolor="0.3"))
    ax.text(X, y, text, ha="center", va="center", fontsize=10)


def arrow(ax, start, end):
    style = dict(arrowstyle="-|>", color="0.3")
    ax.annotate("", xy=end, xytext=start, arrowprops=style)


# Layout, top to bottom in the order the forward pass runs
BOXES = [  # (height on the page, label, colour)
    (0.95, "token ids", "white"),
    (0.85, "token embedding", "#cfe2f3"),
    (0.71, "RMSNorm", "#fff2cc"),
    (0.62, "attention (RoPE on q and k)", "#f4cccc"),
    (0.45, "RMSNorm", "#fff2cc"),
    (0.36, "SwiGLU feed-forward", "#d9ead3"),
    (0.19, "final RMSNorm", "#fff2cc"),
    (0.10, "LM head", "#cfe2f3"),
    (0.01, "next token", "white"),
]
FORKS, ADDS = [0.77, 0.51], [0.535, 0.275]  # the residual stream forks, then adds back
SHAPES = {0.90: "[seq]", 0.78: "[seq, dim]", 0.145: "[seq, dim]", 0.055: "[seq, vocab]"}
REPEAT = "repeated\nn_layers times:\n30 in SmolLM2-135M,\n32 in Llama-2-7B"
BLOCK = (0.245, 0.795)  # bottom and top of the dashed block

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.5, 7.5))
ax.set(xlim=(0, 1), ylim=(-0.03, 1.0), title="One LLaMA forward pass")
ax.axis("off")
for y, label, colour in BOXES:
    box(ax, y, label, colour)
stops = sorted([y for y, _, _ in BOXES] + ADDS, reverse=True)
for a, b in zip(stops, stops[1:]):  # the main path, top to bottom
    gap_a, gap_b = (0.016 if s in ADDS else H / 2 + 0.006 for s in (a, b))
    arrow(ax, (X, a - gap_a), (X, b + gap_b))
for fork, add in zip(FORKS, ADDS):  # residual connections around each sub-layer
    ax.plot([X, 0.1, 0.1], [fork, fork, add], color="0.3", lw=1)
    arrow(ax, (0.1, add), (X - 0.016, add))
    ax.add_patch(plt.Circle((X, add), 0.016, facecolor="white", edgecolor="0.3"))
    ax.text(X, add, "+", ha="center", va="center", fontsize=11)
ax.add_patch(Rectangle((0.03, BLOCK[0]), 0.74, BLOCK[1] - BLOCK[0], fill=False, ls="--", ec="0.5"))
ax.text(0.785, 0.52, REPEAT, fontsize=9, va="center")
for y, shape in SHAPES.items():
    ax.text(X + 0.02, y, shape, fontsize=9, color="0.35", family="monospace", va="center")
ax.text(0.09, 0.64, "residual stream", fontsize=8, color="0.35", rotation=90, ha="right")
plt.show()

# The figure as text (what nbval compares: it does not compare images)
steps = sorted([(y, label) for y, label, _ in BOXES] + [(y, "+") for y in ADDS], reverse=True)
block = [label for y, label in steps if BLOCK[0] < y < BLOCK[1]]
print(" -> ".join(label for y, label in steps if y > BLOCK[1]))
print(f"  n_layers x [{' -> '.join(block)}]")
print(" -> ".join(label for y, label in steps if y < BLOCK[0]))

# %% [markdown]
# Only the two sub-layers inside the dashed block mix information, and only attention mixes it
# *across positions*. Everything else acts on each position separately. The LM head produces
# logits for every position at once, but generation only needs those of the last position, and
# only the newest token needs to go through the blocks: the {term}`KV cache` of chapter 7 makes
# use of that.

# %% [markdown]
# ## The model this book runs on
#
# Every number the chapters print comes from one model, unless a cell says otherwise:
# **SmolLM2-135M-Instruct** {cite}`allal2025smollm2`, a small LLaMA-architecture model (30
# layers, 9 query heads sharing 3 key/value heads) that is fetched once from PyPI and runs every
# chapter on a laptop CPU in seconds. Where the prose speaks of Llama-2-7B, its figures are
# computed from its published configuration (chapter 1 counts its parameters that way), not
# measured on its weights.
#
# The bundled file is a {term}`GGUF`, the format of llama.cpp, and its weights are
# {term}`quantized <Quantization>`. Reading its table of tensors:

# %%
reader = gguf.GGUFReader(assets.asset_path(assets.SMOLLM2_GGUF))
kinds = collections.defaultdict(lambda: {"tensors": 0, "weights": 0, "bytes": 0, "names": set()})
for t in reader.tensors:  # e.g. blk.0.attn_q.weight, stored as Q4_1
    kind = kinds[t.tensor_type.name]
    kind["tensors"] += 1
    kind["weights"] += int(t.n_elements)
    kind["bytes"] += int(t.n_bytes)
    kind["names"].add(t.name.split(".")[-2])  # attn_q, ffn_up, token_embd, ...

print(f"{'stored as':<10}{'tensors':>7}{'weights':>13}{'bits/weight':>12}  which")
for name, kind in sorted(kinds.items(), key=lambda item: -item[1]["weights"]):
    bits = 8 * kind["bytes"] / kind["weights"]
    which = " ".join(sorted(kind["names"]))
    print(f"{name:<10}{kind['tensors']:>7}{kind['weights']:>13,}{bits:>12.2f}  {which}")
total = sum(kind["weights"] for kind in kinds.values())
print(f"{'total':<10}{len(reader.tensors):>7}{total:>13,}")
assert total == al.count_parameters(al.ModelArgs.preset("smollm2-135m"))

# %% [markdown]
# Every matrix of every layer is stored as {term}`Q4_1` {cite}`gerganov2023llamacpp`: blocks of 32
# weights that share a 16-bit scale and a 16-bit minimum, each weight a 4-bit integer $q$ from 0
# to 15 standing for $\text{minimum} + \text{scale} \cdot q$, which makes the 5 bits per weight
# above. The token embedding, which is also the output layer (the two are tied), is
# {term}`Q8_0`: blocks of 32 8-bit integers with one 16-bit scale, 8.5 bits per weight. Only the
# norm gains are plain float32.
#
# The package dequantizes every tensor to float32 when it loads the file, and the chapters
# compute with those float32 values (or with 16-bit copies of them, when a chapter is run in
# 16 bits). So the model the chapters take apart is this 4-bit version of SmolLM2, close to but
# not the same as the 16-bit weights it was released with: its predictions, the statistics of
# its weights and its largest activations are the quantized model's, and the chapters that look
# at such things say so.

# %% [markdown]
# ## What fits which GPU
#
# Every chapter has one line that names the model, and the same chapter runs on any LLaMA
# checkpoint (how, at the end of this chapter). On a GPU the weights are held in 16 bits, 2 bytes
# per parameter, so a model needs its parameter count × 2 bytes of GPU memory before anything
# else. Generation also keeps a {term}`KV cache`: a key and a value vector per layer, key/value
# head and token, which for a context of 4,096 tokens in 16 bits is
# 2 × `n_layers` × `n_kv_heads` × `head_dim` × 4,096 × 2 bytes. Both from the published
# configurations (the package's presets), against the memory of Colab's GPUs as `nvidia-smi`
# reports it:

# %%
GPUS = {"T4": 15.0, "L4": 22.5, "A100 40": 40.0, "A100 80": 80.0}  # memory in GiB
CANDIDATES = {  # preset -> Hugging Face id (all but TinyLlama are gated)
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "llama3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
}
CONTEXT, MiB, GiB = 4096, 2**20, 2**30
HEADROOM = 0.9  # fits: weights + KV cache within 90 % of the memory (the rest: CUDA, activations)

print(f"{'model':<36}{'parameters':>14}{'weights':>9}{'KV cache':>9}  "
      + "".join(f"{gpu:>9}" for gpu in GPUS))
for preset, hub_id in CANDIDATES.items():
    a = al.ModelArgs.preset(preset)
    weights = al.count_parameters(a) * 2 / GiB  # 16 bits: 2 bytes per parameter
    cache = 2 * a.n_layers * a.n_kv_heads * a.head_dim * CONTEXT * 2  # bytes of K and V
    fits = ["yes" if weights + cache / GiB <= HEADROOM * memory else "no"
            for memory in GPUS.values()]
    print(f"{hub_id:<36}{al.count_parameters(a):>14,}{weights:>9.2f}{cache / MiB:>9,.0f}  "
          + "".join(f"{fit:>9}" for fit in fits))
print(f"weights and GPU memory in GiB, KV cache for {CONTEXT:,} tokens in MiB;"
      f" yes: weights + cache <= {HEADROOM:.0%} of the memory")

# %% [markdown]
# The first three fit the free T4 with room to spare. Llama-2-7B does not: its weights, 12.55
# GiB, and a 4,096-token KV cache of 2,048 MiB (2 GiB) make 14.55 GiB of the T4's 15, and the
# activations and CUDA's own buffers need more than what is left. It needs an L4 or an A100 in
# 16 bits, and so does Llama-3.1-8B. The cache grows with the context: Llama 2 caches keys and
# values for all 32 of its heads, while the newer models share each key/value head among
# several query heads ({term}`GQA`, chapter 6), which is why Llama-3.1-8B's cache is a quarter of
# Llama-2-7B's. Fewer bits per weight would fit a 7B model into a T4 (at the bundled file's 5
# bits per weight, under a third of the 16-bit size), but this package computes in 16 bits on a
# GPU: a quantized GGUF is dequantized as it is loaded, so the 16-bit figures are the ones that
# count here.
#
# Every chapter names its model in one cell near the top, the one line to change (with the
# precision, `DTYPE`, beside it; `None` picks it as the comment says). Here is that cell, and
# the size of the model it names, measured on the tensors as loaded:

# %%
MODEL = "smollm2-135m"  # the one line to change: see the table above for what fits which GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
a = model.args
n_params = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
assert n_params == al.count_parameters(a)
loaded = sum(p.numel() * p.element_size() for p in model.parameters())
cache = 2 * a.n_layers * a.n_kv_heads * a.head_dim * min(CONTEXT, a.max_seq_len) * 2
print(f"{n_params:,} parameters on {model.device}, {model.dtype}: {loaded / GiB:.2f} GiB loaded,"
      f" {n_params * 2 / GiB:.2f} GiB in 16 bits")
print(f"KV cache for {min(CONTEXT, a.max_seq_len):,} tokens in 16 bits: {cache / MiB:,.0f} MiB")

# %% [markdown]
# For the bundled model: a quarter of a GiB in 16 bits, twice that in the float32 a CPU computes
# in, and 90 MiB of KV cache for 4,096 tokens. It fits anywhere.

# %% [markdown]
# ## How the book checks itself
#
# A book about code is only as good as its code. Four things keep this one honest:
#
# - **Every step has a reference.** Where a chapter computes something (a tokenization, a
#   normalised vector, an attention pattern, the final logits) it compares it with an
#   independent implementation, mostly Hugging Face transformers' `LlamaForCausalLM` and its
#   modules, built around the chapter's own tensors so that only one copy of the weights is in
#   memory. The two share the weights as our loader read them; transformers' model code (its
#   attention, its form of RoPE, its norms) is independent of ours. Where a check shares more,
#   the chapter says so. Some checks are against published numbers or test vectors instead.
# - **Every check asserts.** A comparison is an `assert`, with a tolerance stated for each
#   dtype (float32, bfloat16, float16), so a check that fails stops the chapter.
# - **Every cell is re-run.** The notebooks are stored with their outputs. The tests execute
#   each chapter again from a fresh kernel with
#   [nbval](https://github.com/computationalmodelling/nbval) and fail if any text output differs
#   from the stored one. Two kinds of output are not compared: measured times, which the
#   chapters print after a stopwatch sign ⏱ and the tests mask, and images, which nbval skips.
#   So every figure's cell also prints a short summary of the data it draws (as the figure
#   above does), and the summary is compared.
# - **The code shown is the code run.** The model lives in a small Python package,
#   `annotated_llama`. Chapters build each piece by hand first, then display the package's own
#   source and check that the two agree; the package has its own unit tests.

# %% [markdown]
# ## Running the book
#
# **Online.** Read the pages as they are: they show the outputs stored with each notebook,
# produced by running every cell, and the same outputs CI verifies by running every cell again
# and comparing.
#
# **Locally.** Clone the repository and follow the README: `make book` builds this website and
# `make test` runs the package tests and re-executes every chapter. The chapters are paired
# files: `notebooks/NN_topic.py` (what people edit and review) and `notebooks/NN_topic.ipynb`
# (the same cells with outputs, what Jupyter and nbval open).
#
# **On Colab.** Use the rocket icon at the top of a chapter and pick Colab. Run the set-up cell
# first. To use a bigger model, choose a GPU runtime and change the line near the top of the
# chapter that names the model, for instance:
#
# ```python
# MODEL = "meta-llama/Llama-3.2-1B"  # instead of "smollm2-135m"; see the table above
# DTYPE = None  # None: bf16 on GPUs that have it natively (A100, L4, H100), fp16 on a T4
# ```
#
# `MODEL` takes a Hugging Face id of a Llama-architecture checkpoint, a local Hugging Face
# directory, a directory in Meta's own format (`params.json`, `consolidated.00.pth` and a
# `tokenizer.model`: SentencePiece for Llama 2, a tiktoken file for Llama 3), or a GGUF file.
# Meta's repositories are gated: accept the licence on the model's Hugging Face page and log
# in (a Colab secret named `HF_TOKEN` does that) before the chapter downloads the weights. With
# another model the printed numbers change and no longer match the prose, which describes the
# bundled model; the checks must pass all the same.

# %% [markdown]
# ## What we have now
#
# A map: token ids go in, `n_layers` blocks of attention and SwiGLU add to a residual stream
# of shape `[seq, dim]`, and the LM head turns it into `[seq, vocab]` logits. The model on the
# map is a 4-bit SmolLM2-135M, computed in float32. Chapter 1 puts numbers on that map: the
# configuration of each model, every tensor's shape, and a parameter count that matches the
# published one to the last digit.
