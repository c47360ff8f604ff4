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
# tested LLaMA that runs real pretrained weights.
#
# This chapter needs nothing but matplotlib: it says what LLaMA is, draws the whole pipeline
# once, and explains how to run and check the book.

# %% [markdown]
# ## Set-up
#
# Every chapter starts with the cell below. On your own machine it does nothing (the
# environment comes from the repository, see "Running the book" at the end). On Google Colab it
# installs this book's package from GitHub, leaving Colab's own PyTorch alone, and fetches the
# small model the chapters run on.

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # on Colab only: install the package, keeping Colab's own torch
    from IPython import get_ipython

    ipython = get_ipython()
    REPO = "annotated-llama @ git+https://github.com/annotated-llama/annotated-llama"
    DEPS = 'numpy safetensors "gguf>=0.10" sentencepiece protobuf tokenizers'
    ipython.run_line_magic("pip", f'install -q --no-deps "{REPO}"')
    ipython.run_line_magic("pip", f"install -q {DEPS}")
    ipython.system("python -m annotated_llama fetch")

# %% [markdown]
# ## What LLaMA is
#
# LLaMA is a family of decoder-only transformer language models released by Meta: LLaMA
# (February 2023, 7B to 65B parameters) {cite}`touvron2023llama`, Llama 2 (July 2023, 7B to 70B,
# with chat versions) {cite}`touvron2023llama2`, and Llama 3 (2024, 8B to 405B)
# {cite}`dubey2024llama3`. Because the weights were published, the architecture became a
# template: many other models, from TinyLlama to SmolLM2, use exactly the same layers with
# different sizes. The appendix tabulates a few of them.
#
# The architecture fits in one paragraph. Text is split into tokens, integer ids from a fixed
# vocabulary. Each id selects a row of an embedding table, a vector of `dim` numbers. These
# vectors pass through `n_layers` identical blocks, each made of two sub-layers: causal
# self-attention, in which every position gathers information from the positions before it
# (with rotary position embeddings, RoPE, telling it how far away they are), and a SwiGLU
# feed-forward network, which transforms each position on its own. Each sub-layer reads a
# normalised copy of the running vector (RMSNorm) and adds its result back to it, so the vector
# that flows through the blocks, the residual stream, is only ever added to. A last RMSNorm and
# a linear layer, the LM head, turn the final vector at each position into one score (logit)
# per vocabulary entry.
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
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

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
ax.add_patch(Rectangle((0.03, 0.245), 0.74, 0.55, fill=False, ls="--", ec="0.5"))
ax.text(0.785, 0.52, REPEAT, fontsize=9, va="center")
for y, shape in SHAPES.items():
    ax.text(X + 0.02, y, shape, fontsize=9, color="0.35", family="monospace", va="center")
ax.text(0.09, 0.64, "residual stream", fontsize=8, color="0.35", rotation=90, ha="right")
plt.show()

# %% [markdown]
# Only the two sub-layers inside the dashed block mix information, and only attention mixes it
# *across positions*. Everything else acts on each position separately. The LM head produces
# logits for every position at once, but generation only needs those of the last position, and
# only the newest token needs to go through the blocks: the KV cache of chapter 7 makes use of
# that.

# %% [markdown]
# ## Two models
#
# The chapters run on two models with the same architecture:
#
# - **SmolLM2-135M-Instruct** {cite}`allal2025smollm2`, the bundled default: a small
#   LLaMA-architecture model (30 layers, 9 query heads sharing 3 key/value heads) that is fetched
#   once from PyPI and runs every chapter on a laptop CPU in seconds.
# - **Llama-2-7B** {cite}`touvron2023llama2`, the model the numbers in the prose usually refer
#   to (32 layers, 32 heads): too large for a laptop, but one line away on a Colab GPU.
#
# Their sizes, from the exact parameter counts that chapter 1 derives from the configuration:

# %%
PARAMETERS = {"SmolLM2-135M": 134_515_008, "Llama-2-7B": 6_738_415_616}
BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2}

for name, n in PARAMETERS.items():
    sizes = ", ".join(f"{dtype} {n * size / 1e9:6.2f} GB"
                      for dtype, size in BYTES_PER_PARAMETER.items())
    print(f"{name:>12}: {n:>13,} parameters -> {sizes}")

# %% [markdown]
# Llama-2-7B needs about 13.5 GB in a 16-bit format just for its weights, which is why it runs
# on a GPU with at least 16 GB of memory. The bundled model fits anywhere.

# %% [markdown]
# ## How the book checks itself
#
# A book about code is only as good as its code. Three things keep this one honest:
#
# - **Every step has a reference.** Where a chapter computes something (a tokenization, a
#   normalised vector, an attention pattern, the final logits) it compares it with an
#   independent implementation: mostly Hugging Face transformers' `LlamaForCausalLM` and its
#   modules loaded with the same weights, sometimes a published number or test vector.
# - **Every cell is re-run.** The notebooks are stored with their outputs. The tests execute
#   each chapter again from a fresh kernel with [nbval](https://github.com/computationalmodelling/nbval)
#   and fail if any output differs from the stored one (timings and memory addresses aside).
# - **The code shown is the code run.** The model lives in a small Python package,
#   `annotated_llama`. Chapters build each piece by hand first, then display the package's own
#   source and check that the two agree; the package has its own unit tests.

# %% [markdown]
# ## Running the book
#
# **Online.** Read the pages as they are: every output was produced by the code above it.
#
# **Locally.** Clone the repository and follow the README: `make book` builds this website and
# `make test` runs the package tests and re-executes every chapter. The chapters are paired
# files: `notebooks/NN_topic.py` (what people edit and review) and `notebooks/NN_topic.ipynb`
# (the same cells with outputs, what Jupyter and nbval open).
#
# **On Colab.** Use the rocket icon at the top of a chapter and pick Colab. Run the set-up cell
# first. To use a bigger model, choose a GPU runtime and change the one line near the top of
# the chapter that names the model:
#
# ```python
# MODEL = "smollm2-135m"  # e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU runtime
# ```
#
# Any Hugging Face id of a LLaMA-architecture model works. The Llama 2 repositories are gated:
# accept Meta's licence on their Hugging Face page and log in (a Colab secret named `HF_TOKEN`
# does that) before the chapter downloads the weights.

# %% [markdown]
# ## What we have now
#
# A map: token ids go in, `n_layers` blocks of attention and SwiGLU add to a residual stream
# of shape `[seq, dim]`, and the LM head turns it into `[seq, vocab]` logits. Chapter 1 puts
# numbers on that map: the configuration of each model, every tensor's shape, and a parameter
# count that matches the published one to the last digit.
