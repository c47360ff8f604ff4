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
# # Appendix: model families
#
# The book ran one architecture on one small model, but the same code describes a whole
# family: LLaMA 1 {cite}`touvron2023llama`, Llama 2 {cite}`touvron2023llama2`, Code Llama
# {cite}`roziere2023codellama`, Llama 3 and 3.1 {cite}`dubey2024llama3`, the small Llama 3.2
# models {cite}`meta2024llama32`, and models that copied the layers with other sizes: TinyLlama
# {cite}`zhang2024tinyllama`, SmolLM2 {cite}`allal2025smollm2` and Mistral 7B
# {cite}`jiang2023mistral`. A model in this family is fully described by a dozen numbers, and from
# them follow the parameter count, the memory the weights take and the memory each token of
# context costs in the {term}`KV cache`. This page computes them from the configs, and checks
# every parameter count against transformers and, where one is published, against the exact
# published figure.

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
import html
import inspect
import math
import textwrap
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.reference import transformers_config

# %% [markdown]
# This page needs no weights until its last section, which checks the formula against the model
# the next cell names. Chapter 0 says which model fits which Colab GPU; the table below extends
# that arithmetic to the whole family.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# ## The numbers that define a model
#
# `al.ModelArgs.preset(name)` holds each model's hyperparameters as its `params.json` or
# `config.json` publishes them. Everything else is derived. The parameter count (chapter 1) is
#
# $$
# N = \underbrace{V d}_{\text{embedding}} + L\,\big(\underbrace{d\,h\,d_h + 2\,d\,h_{kv} d_h + h\,d_h\,d}_{\text{attention}} + \underbrace{3\,d\,d_{ff}}_{\text{SwiGLU}} + \underbrace{2d}_{\text{norms}}\big) + d + \underbrace{V d}_{\text{LM head, if untied}}
# $$
#
# with $V$ the vocabulary, $d$ the model width, $L$ layers, $h$ query heads, $h_{kv}$ key/value
# heads of size $d_h$ and $d_{ff}$ the feed-forward size. The KV cache stores one key and one value
# vector per KV head, layer and token: $2 \cdot L \cdot h_{kv} \cdot d_h$ numbers per token, two
# bytes each in 16 bits.

# %%
Markdown(f"```python\n{inspect.getsource(al.count_parameters)}```")

# %%
NAMES = ["llama1-7b", "llama1-13b", "llama1-33b", "llama1-65b", "llama2-7b", "llama2-13b",
         "llama2-70b", "codellama-7b", "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b",
         "llama3.1-405b", "llama3.2-1b", "llama3.2-3b", "tinyllama-1.1b", "smollm2-135m",
         "smollm2-360m", "smollm2-1.7b", "mistral-7b"]
GiB = 2**30


def kv_bytes_per_token(a, bytes_per_number=2):  # keys and values, every layer, 16 bits
    return 2 * a.n_layers * a.n_kv_heads * a.head_dim * bytes_per_number


presets = {name: al.ModelArgs.preset(name) for name in NAMES}
params = {name: al.count_parameters(a) for name, a in presets.items()}
a = presets["llama2-7b"]
print(f"llama2-7b: {params['llama2-7b']:,} parameters, "
      f"KV cache {kv_bytes_per_token(a) // 1024} KiB per token in 16 bits")

# %% [markdown]
# ## Check 1: the exact published counts
#
# For some checkpoints the exact number of parameters is published: the sum of the sizes of the
# tensors in the Hugging Face checkpoint (the count its model page shows, or that transformers'
# `LlamaForCausalLM` reports once the checkpoint is loaded). A tied LM head is one tensor there
# and counts once.

# %%
PUBLISHED_EXACT = {
    "llama2-7b": 6_738_415_616,  # meta-llama/Llama-2-7b-hf
    "llama2-13b": 13_015_864_320,  # meta-llama/Llama-2-13b-hf
    "llama2-70b": 68_976_648_192,  # meta-llama/Llama-2-70b-hf
    "llama3-8b": 8_030_261_248,  # meta-llama/Meta-Llama-3-8B
    "llama3.1-8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B
    "llama3.2-1b": 1_235_814_400,  # meta-llama/Llama-3.2-1B
    "llama3.2-3b": 3_212_749_824,  # meta-llama/Llama-3.2-3B
    "tinyllama-1.1b": 1_100_048_384,  # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
    "smollm2-135m": 134_515_008,  # HuggingFaceTB/SmolLM2-135M (the bundled model, from its GGUF)
}
for name, published in PUBLISHED_EXACT.items():
    ok = params[name] == published
    print(f"{name:14s} ours {params[name]:>15,}  published {published:>15,}  equal: {ok}")
    assert ok, name

# %% [markdown]
# ## Check 2: transformers on the meta device
#
# For every model, an independent count: transformers' `LlamaForCausalLM` built from the preset's
# own hyperparameters (`transformers_config` turns a `ModelArgs` into a `LlamaConfig`) on
# PyTorch's `meta` device, which gives tensors their shapes but no storage, so even 405B costs no
# memory. Tied embeddings appear once in `parameters()`. That checks the formula against
# transformers' model code. It cannot catch a wrong preset, so first each preset's sizes are
# compared with the sizes typed in from the model's published `config.json`, including the
# feed-forward size that the Llama presets derive with Meta's rounding rule.

# %%
# (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
#  vocab_size, tie_word_embeddings) from each model's config.json on the Hugging Face Hub
HF_CONFIGS = {
    "llama1-7b": (4096, 11008, 32, 32, 32, 32000, False),  # huggyllama/llama-7b
    "llama1-13b": (5120, 13824, 40, 40, 40, 32000, False),  # huggyllama/llama-13b
    "llama1-33b": (6656, 17920, 60, 52, 52, 32000, False),  # huggyllama/llama-30b
    "llama1-65b": (8192, 22016, 80, 64, 64, 32000, False),  # huggyllama/llama-65b
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000, False),  # meta-llama/Llama-2-7b-hf
    "llama2-13b": (5120, 13824, 40, 40, 40, 32000, False),  # meta-llama/Llama-2-13b-hf
    "llama2-70b": (8192, 28672, 80, 64, 8, 32000, False),  # meta-llama/Llama-2-70b-hf
    "codellama-7b": (4096, 11008, 32, 32, 32, 32016, False),  # codellama/CodeLlama-7b-hf
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256, False),  # meta-llama/Meta-Llama-3-8B
    "llama3-70b": (8192, 28672, 80, 64, 8, 128256, False),  # meta-llama/Meta-Llama-3-70B
    "llama3.1-8b": (4096, 14336, 32, 32, 8, 128256, False),  # meta-llama/Llama-3.1-8B
    "llama3.1-70b": (8192, 28672, 80, 64, 8, 128256, False),  # meta-llama/Llama-3.1-70B
    "llama3.1-405b": (16384, 53248, 126, 128, 8, 128256, False),  # meta-llama/Llama-3.1-405B
    "llama3.2-1b": (2048, 8192, 16, 32, 8, 128256, True),  # meta-llama/Llama-3.2-1B
    "llama3.2-3b": (3072, 8192, 28, 24, 8, 128256, True),  # meta-llama/Llama-3.2-3B
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000, False),  # TinyLlama/TinyLlama-1.1B-...-3T
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, True),  # HuggingFaceTB/SmolLM2-135M
    "smollm2-360m": (960, 2560, 32, 15, 5, 49152, True),  # HuggingFaceTB/SmolLM2-360M
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 49152, True),  # HuggingFaceTB/SmolLM2-1.7B
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, False),  # mistralai/Mistral-7B-v0.1
}

# %%
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
from transformers import LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()


def transformers_count(args):  # parameters of transformers' model with these hyperparameters
    with torch.device("meta"):
        model = LlamaForCausalLM(transformers_config(args))
    return sum(p.numel() for p in model.parameters())


hf_counts = {}
for name, a in presets.items():
    ours = (a.dim, a.ffn_dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size,
            a.tie_word_embeddings)
    assert ours == HF_CONFIGS[name], f"{name}: preset {ours} differs from config.json"
    hf_counts[name] = transformers_count(a)
    assert hf_counts[name] == params[name], name
print(f"{len(hf_counts)} presets: their sizes equal the config.json sizes, and transformers "
      f"counts the same parameters as count_parameters for every one")

# %% [markdown]
# ## Check 3: the headline figures
#
# Papers and model names round: "7B" is 6.74 billion. Each published headline, with its source,
# agrees with our count if the count rounded or truncated at the headline's last significant digit
# gives it (trailing zeros of a whole number are not significant: "70B" is checked to the ten,
# "405B" to the unit). LLaMA 1's paper gives one decimal.

# %%
HEADLINE = {  # name: (headline, source)
    "llama1-7b": ("6.7B", "LLaMA paper, Table 2"), "llama1-13b": ("13.0B", "LLaMA paper, Table 2"),
    "llama1-33b": ("32.5B", "LLaMA paper, Table 2"),
    "llama1-65b": ("65.2B", "LLaMA paper, Table 2"),
    "llama2-7b": ("7B", "Llama 2 paper"), "llama2-13b": ("13B", "Llama 2 paper"),
    "llama2-70b": ("70B", "Llama 2 paper"), "codellama-7b": ("7B", "Code Llama paper"),
    "llama3-8b": ("8B", "Llama 3 paper"), "llama3-70b": ("70B", "Llama 3 paper"),
    "llama3.1-8b": ("8B", "Llama 3 paper"), "llama3.1-70b": ("70B", "Llama 3 paper"),
    "llama3.1-405b": ("405B", "Llama 3 paper"), "llama3.2-1b": ("1B", "Llama 3.2 announcement"),
    "llama3.2-3b": ("3B", "Llama 3.2 announcement"), "tinyllama-1.1b": ("1.1B", "TinyLlama paper"),
    "smollm2-135m": ("135M", "SmolLM2 paper"), "smollm2-360m": ("360M", "SmolLM2 paper"),
    "smollm2-1.7b": ("1.7B", "SmolLM2 paper"), "mistral-7b": ("7B", "Mistral 7B paper"),
}


def agrees(count, headline):
    number, unit = headline[:-1], {"M": 1e6, "B": 1e9}[headline[-1]]
    if "." in number:
        step = 10.0 ** -len(number.split(".")[1])
    else:
        step = 10.0 ** (len(number) - len(number.rstrip("0")))
    x, target = count / unit / step, float(number) / step
    return round(x) == round(target) or math.floor(x) == round(target)


for name, (headline, source) in HEADLINE.items():
    assert agrees(params[name], headline), (name, params[name], headline)
print(f"all {len(HEADLINE)} headline figures agree with the counts")

# %% [markdown]
# ## The table
#
# Context is the context length of the preset (the config's; for Mistral 7B the 8,192 of its
# paper); θ is the {term}`RoPE` base. Llama 3.1 and 3.2 keep Llama 3's kind of shapes and stretch
# the context to 128K tokens with rescaled RoPE frequencies, which the package implements
# (chapter 5). Mistral 7B attends within a sliding window of 4,096 tokens, which the package does
# not implement: it counts Mistral 7B but refuses to load it. Neither changes the parameter
# count. Two tables: the shapes, then the sizes.

# %%
class Table:
    """A table shown as HTML on the page; its plain-text form is what nbval compares."""

    def __init__(self, columns, rows):
        self.columns, self.rows = columns, [[str(v) for v in r] for r in rows]

    def _repr_html_(self):
        cell = "padding: 2px 5px; white-space: nowrap"
        head = "".join(f'<th style="padding: 2px 5px">{html.escape(c)}</th>'
                       for c in self.columns)
        body = "".join("<tr>" + "".join(f'<td style="{cell}">{html.escape(v)}</td>' for v in r)
                       + "</tr>\n" for r in self.rows)
        return (f'<table style="font-size: 0.8em; text-align: right">\n<tr>{head}</tr>\n'
                f"{body}</table>")

    def __repr__(self):
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [self.columns, *self.rows]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in lines)


def shape_row(name):
    a = presets[name]
    return [name, a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn_dim, a.vocab_size,
            f"{a.max_seq_len:,}", f"{a.rope_theta:,.0f}", "yes" if a.tie_word_embeddings else "no"]


Table(["model", "layers", "dim", "heads", "KV heads", "head dim", "FFN", "vocab", "context",
       "RoPE θ", "tied"], [shape_row(n) for n in NAMES])

# %% [markdown]
# The sizes, with the memory the weights take in 16 bits (2 bytes per parameter) and the
# smallest of Colab's GPUs that holds them. The rule is chapter 0's: the 16-bit weights plus the
# KV cache of one sequence of 4,096 tokens (or the model's context, if shorter) must fit in 90%
# of the GPU's memory, as `nvidia-smi` reports it on Colab (T4 15 GiB, L4 22.5 GiB, A100 40 or
# 80 GiB); the rest is for activations and CUDA's own buffers. It is a rule of thumb for this
# package, which computes in 16 bits: with 8- or 4-bit weights the same models need less.

# %%
GPUS = {"T4": 15.0, "L4": 22.5, "A100 40 GB": 40.0, "A100 80 GB": 80.0}  # GiB on Colab
CONTEXT, HEADROOM = 4096, 0.9


def smallest_gpu(a):
    need = (al.count_parameters(a) * 2 + kv_bytes_per_token(a) * min(CONTEXT, a.max_seq_len)) / GiB
    return next((gpu for gpu, memory in GPUS.items() if need <= HEADROOM * memory), "none")


def size_row(name):
    a = presets[name]
    checks = (["exact"] if name in PUBLISHED_EXACT else []) + ["HF", f"≈ {HEADLINE[name][0]}"]
    return [name, f"{params[name]:,}", f"{params[name] * 2 / GiB:.2f}",
            f"{kv_bytes_per_token(a) / 1024:g}", smallest_gpu(a), ", ".join(checks)]


Table(["model", "parameters", "16-bit weights (GiB)", "KV cache (KiB / token)",
       "smallest Colab GPU", "checks"], [size_row(n) for n in NAMES])

# %% [markdown]
# Checks: "exact": equal to the published exact count; "HF": equal to transformers'
# `LlamaForCausalLM` built on the meta device from the preset; "≈": agrees with the rounded
# headline figure. The counts of the checks and the models per GPU:

# %%
n_exact = sum(name in PUBLISHED_EXACT for name in NAMES)
print(f"{len(NAMES)} models: all have the HF and headline checks, {n_exact} the exact count too")
by_gpu = {}
for name in NAMES:
    by_gpu.setdefault(smallest_gpu(presets[name]), []).append(name)
for gpu in [*GPUS, "none"]:
    print(f"{gpu:11s} {', '.join(by_gpu.get(gpu, []))}")

# %% [markdown]
# The models up to 3B (SmolLM2, TinyLlama, Llama 3.2) fit the free T4. The 7B and 8B models
# need an L4 or an A100: Llama-2-7B's weights alone take 12.55 GiB, and its 4,096-token cache 2
# GiB more, over 90% of a T4. The 13B models need an A100 with 40 GB, LLaMA 1's 33B the one with
# 80 GB, and the 65B to 405B models more than one GPU (or fewer bits).

# %% [markdown]
# ## Parameters vs KV cache
#
# Weight memory grows with the parameters; the KV cache grows with the context and the batch,
# and per token it depends on layers × KV heads × head size only.
# {term}`Grouped-query attention <GQA>` {cite}`ainslie2023gqa` cuts it by the ratio of query to
# KV heads, which is why Llama-2-70B needs less cache per token than Llama-2-13B:

# %%
kib = {n: kv_bytes_per_token(presets[n]) / 1024 for n in NAMES}
for n in ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "mistral-7b", "llama3.1-405b",
          "llama3.2-1b", "tinyllama-1.1b", "smollm2-135m", "smollm2-1.7b"]:
    a = presets[n]
    print(f"{n:14s} {params[n] / 1e9:7.3f}B {a.n_heads:3d}/{a.n_kv_heads:<3d} heads/KV  "
          f"{kib[n]:5g} KiB/token  {kib[n] * 4096 / 2**20:5.3f} GiB/4096 tokens")

# %% [markdown]
# Per token is one measure; per parameter is the other: how much cache a model needs for each
# unit of weight memory, here in KiB per token per billion parameters (16 bits). Ranked:

# %%
per_param = {n: kib[n] / (params[n] / 1e9) for n in NAMES}
ranked = sorted(NAMES, key=per_param.get, reverse=True)
for rank, n in enumerate(ranked, 1):
    a = presets[n]
    print(f"{rank:2d}. {n:14s} {per_param[n]:6.1f} KiB/token per B  "
          f"({a.n_heads}/{a.n_kv_heads} heads/KV, {a.n_layers} layers)")

# %%
points = {}
for n in NAMES:  # models within a few percent of each other and with the same cache share a label
    points.setdefault((round(math.log10(params[n]), 1), kib[n]), []).append(n)
place = {"llama1-7b": (-6, 0, "right", "center"), "llama3.1-405b": (-6, 0, "right", "center"),
         "llama2-70b": (6, -3, "left", "top"), "llama3.2-3b": (-6, 0, "right", "center")}
# (label offsets in points, and alignment, where the default would collide)
fig, ax = plt.subplots(figsize=(8, 5))
for per_b in [1, 10, 100]:  # dashed: equal cache per parameter
    xs = torch.tensor([8e7, 2e12])
    ax.plot(xs, per_b * xs / 1e9, color="0.6", ls="--", lw=0.8, zorder=1)
for (p, k), ns in points.items():
    x = params[ns[0]]
    dx, dy, ha, va = place.get(ns[0], (5, 3, "left", "bottom"))
    ax.scatter(x, k, color="C3" if len(ns) > 1 else "C0", s=40, zorder=3)
    ax.annotate(textwrap.fill(", ".join(ns), 26), (x, k), xytext=(dx, dy),
                textcoords="offset points", fontsize=9, ha=ha, va=va)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("parameters")
ax.set_ylabel("KV cache per token, 16 bits (KiB)")
ax.set_title("Model size vs KV-cache cost per token (red: several models share the point;\n"
             "dashed: 1, 10 and 100 KiB per token per billion parameters)", fontsize=11)
ax.set_ylim(15, 4000)
ax.grid(True, which="both", alpha=0.3)
ax.set_xlim(8e7, 2e12)
plt.show()
print(f"{len(points)} points for {len(NAMES)} models; KiB per token from {min(kib.values()):g} "
      f"to {max(kib.values()):g}")

# %% [markdown]
# Per token, the large models with full multi-head attention pay the most: LLaMA 1's 65B 2,560
# KiB and its 33B 1,560 KiB, the 13B models 800 KiB, the 7B models of LLaMA 1, Llama 2 and Code
# Llama 512 KiB, so that a 4,096-token context costs 2 GiB per sequence. Llama 3 8B and Mistral
# 7B share each KV head among 4 query heads and pay 128 KiB; the 70B models share among 8 and pay
# 320 KiB, less than the 13B models.
#
# Per parameter, the ranking turns around. The three SmolLM2 models pay the most, the bundled
# 135M model first (22.5 KiB per token for 0.135 billion parameters: 167 KiB per billion), then
# SmolLM2-1.7B, which keeps one KV head per query head (192 KiB per token, more than Llama 3 8B
# at a fifth of its size), and SmolLM2-360M. The multi-head LLaMA 1, Llama 2 and Code Llama
# models follow, less the larger they are, and the other models with grouped-query attention
# (Llama 3, 3.1 and 3.2, TinyLlama, Mistral) pay least, down to 1.2 KiB per billion for Llama 3.1
# 405B: grouping does not save the two small SmolLM2 models from first and third place. A small model's weights are cheap, but its cache per token is
# not proportionally smaller, so at long contexts and large batches its cache, not its weights,
# fills the memory.

# %% [markdown]
# ## The model you are running
#
# The formula against the real tensors of the model `MODEL` names: its config's count and the
# number of numbers in its parameters (a tied LM head counted once).

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
counted = sum(p.numel() for p in model.parameters())
print(f"count_parameters(model.args) = {al.count_parameters(model.args):,}, "
      f"tensors hold {counted:,}, equal: {counted == al.count_parameters(model.args)}")
assert counted == al.count_parameters(model.args)
