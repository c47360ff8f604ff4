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
# # 12. Model families
#
# An appendix. The book ran one architecture on one small model, but the same code describes a
# whole family: LLaMA 1 {cite}`touvron2023llama`, Llama 2 {cite}`touvron2023llama2`, Code Llama
# {cite}`roziere2023codellama`, Llama 3 and 3.1 {cite}`dubey2024llama3`, and models that copied
# the layers with other sizes: TinyLlama {cite}`zhang2024tinyllama`, SmolLM2
# {cite}`allal2025smollm2` and Mistral 7B {cite}`jiang2023mistral`. A model in this family is
# fully described by a dozen numbers, and from them follow the parameter count, the memory the
# weights take and the memory each token of context costs in the KV cache. This page computes
# them from the configs, and checks every parameter count against a published figure.

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
import html
import inspect
import math
import textwrap
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, Markdown

import annotated_llama as al

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

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
# bytes each in fp16.

# %%
Markdown(f"```python\n{inspect.getsource(al.count_parameters)}```")

# %%
NAMES = ["llama1-7b", "llama1-13b", "llama1-33b", "llama1-65b", "llama2-7b", "llama2-13b", "llama2-70b",
         "codellama-7b", "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b",
         "tinyllama-1.1b", "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "mistral-7b"]


def kv_bytes_per_token(a, bytes_per_number=2):  # keys and values, every layer, fp16
    return 2 * a.n_layers * a.n_kv_heads * a.head_dim * bytes_per_number


presets = {name: al.ModelArgs.preset(name) for name in NAMES}
params = {name: al.count_parameters(a) for name, a in presets.items()}
a = presets["llama2-7b"]
print(f"llama2-7b: {params['llama2-7b']:,} parameters, "
      f"KV cache {kv_bytes_per_token(a) // 1024} KiB per token in fp16")

# %% [markdown]
# ## Check 1: the exact published counts
#
# For five checkpoints the exact number of parameters is known: the sum of the tensor sizes of the
# Hugging Face checkpoint (counted by loading it into transformers' `LlamaForCausalLM`).

# %%
PUBLISHED_EXACT = {
    "llama2-7b": 6_738_415_616,  # meta-llama/Llama-2-7b-hf
    "llama2-13b": 13_015_864_320,  # meta-llama/Llama-2-13b-hf
    "llama2-70b": 68_976_648_192,  # meta-llama/Llama-2-70b-hf
    "llama3-8b": 8_030_261_248,  # meta-llama/Meta-Llama-3-8B
    "smollm2-135m": 134_515_008,  # HuggingFaceTB/SmolLM2-135M (the bundled model, from its GGUF)
}
for name, published in PUBLISHED_EXACT.items():
    ok = params[name] == published
    print(f"{name:13s} ours {params[name]:>15,}  published {published:>15,}  equal: {ok}")
    assert ok

# %% [markdown]
# ## Check 2: transformers on the meta device
#
# For the other models, an independent count: build transformers' `LlamaForCausalLM` from the
# sizes each model's published `config.json` gives, on PyTorch's `meta` device (shapes without
# storage, so even 405B costs no memory), and count its parameters. Tied embeddings appear once in
# `parameters()`. The sizes below are typed in from the configs, including the feed-forward size
# that our presets derive with Meta's rounding rule for the Llama models, so a wrong rule or a
# wrong formula would show.

# %%
# (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
#  tie_word_embeddings) from each model's config.json on the Hugging Face Hub
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
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000, False),  # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, True),  # HuggingFaceTB/SmolLM2-135M
    "smollm2-360m": (960, 2560, 32, 15, 5, 49152, True),  # HuggingFaceTB/SmolLM2-360M
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 49152, True),  # HuggingFaceTB/SmolLM2-1.7B
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, False),  # mistralai/Mistral-7B-v0.1
}

# %%
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()


def transformers_count(sizes):
    d, ffn, layers, heads, kv_heads, vocab, tied = sizes
    config = LlamaConfig(hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         tie_word_embeddings=tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


hf_counts = {}
for name, sizes in HF_CONFIGS.items():
    a = presets[name]
    ours = (a.dim, a.ffn_dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.tie_word_embeddings)
    assert ours == sizes, f"{name}: preset {ours} differs from config.json {sizes}"
    hf_counts[name] = transformers_count(sizes)
    assert hf_counts[name] == params[name], name
print(f"{len(hf_counts)} configs: presets equal the config.json sizes, and transformers counts "
      f"the same parameters as count_parameters for all of them")

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
    "llama1-33b": ("32.5B", "LLaMA paper, Table 2"), "llama1-65b": ("65.2B", "LLaMA paper, Table 2"),
    "llama2-7b": ("7B", "Llama 2 paper"), "llama2-13b": ("13B", "Llama 2 paper"),
    "llama2-70b": ("70B", "Llama 2 paper"), "codellama-7b": ("7B", "Code Llama paper"),
    "llama3-8b": ("8B", "Llama 3 paper"), "llama3-70b": ("70B", "Llama 3 paper"),
    "llama3.1-8b": ("8B", "Llama 3 paper"), "llama3.1-70b": ("70B", "Llama 3 paper"),
    "llama3.1-405b": ("405B", "Llama 3 paper"), "tinyllama-1.1b": ("1.1B", "TinyLlama paper"),
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
# Context is the context length of the preset (the config's, for Mistral 7B the 8192 of its
# paper); θ is the RoPE base. Llama 3.1 keeps Llama 3's shapes and stretches the context to 128K
# tokens with a rescaled RoPE, and Mistral 7B attends within a sliding window of 4096 tokens: this
# package counts both but runs neither (neither changes the parameter count). Two tables: the
# shapes, then the sizes. Weight bytes are for 2-byte numbers (fp16/bf16); the KV cache per token
# is in KiB, fp16.

# %%
def html_table(columns, rows):
    cell = "padding: 2px 5px; white-space: nowrap"
    head = "".join(f'<th style="padding: 2px 5px">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td style="{cell}">{html.escape(str(v))}</td>' for v in r) + "</tr>\n"
                   for r in rows)
    return HTML(f'<table style="font-size: 0.8em; text-align: right">\n<tr>{head}</tr>\n{body}</table>')


def shape_row(name):
    a = presets[name]
    return [name, a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn_dim, a.vocab_size,
            a.max_seq_len, f"{a.rope_theta:,.0f}"]


html_table(["model", "layers", "dim", "heads", "KV heads", "head dim", "FFN", "vocab", "context", "RoPE θ"],
           [shape_row(n) for n in NAMES])


# %%
def size_row(name):
    a = presets[name]
    checks = ["exact"] if name in PUBLISHED_EXACT else []
    checks += ["HF", f"≈ {HEADLINE[name][0]}"]
    return [name, f"{params[name]:,}", f"{params[name] * 2 / 1e9:.1f}", f"{kv_bytes_per_token(a) / 1024:g}",
            ", ".join(checks)]


html_table(["model", "parameters", "fp16 weights (GB)", "KV cache (KiB / token)", "checks"],
           [size_row(n) for n in NAMES])

# %% [markdown]
# Checks: "exact": equal to the published exact count; "HF": equal to transformers'
# `LlamaForCausalLM` built on the meta device from the config.json sizes; "≈": agrees with the
# rounded headline figure. Every row got the last two checks, five rows all three.

# %% [markdown]
# ## Parameters vs KV cache
#
# Weight memory grows with the parameters; the KV cache grows with the context and the batch,
# and per token it depends on layers × KV heads × head size only. Grouped-query attention
# {cite}`ainslie2023gqa` cuts it by the ratio of query to KV heads, which is why Llama-2-70B needs
# less cache per token than Llama-2-7B:

# %%
kib = {n: kv_bytes_per_token(presets[n]) / 1024 for n in NAMES}
for n in ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "mistral-7b", "llama3.1-405b", "smollm2-135m",
          "smollm2-1.7b"]:
    a = presets[n]
    print(f"{n:13s} {params[n] / 1e9:7.3f}B {a.n_heads:3d}/{a.n_kv_heads:<3d} heads/KV  "
          f"{kib[n]:5g} KiB/token  {kib[n] * 4096 / 2**20:5.3f} GiB/4096 tokens")

# %%
points = {}
for n in NAMES:  # models within a few percent of each other and with the same cache share one label
    points.setdefault((round(math.log10(params[n]), 1), kib[n]), []).append(n)
place = {"llama1-7b": (-6, 0, "right", "center"), "llama3.1-405b": (-6, 0, "right", "center"),
         "llama2-70b": (6, -3, "left", "top")}  # label offsets (points) and alignment where the default collides
fig, ax = plt.subplots(figsize=(8, 5))
for (p, k), ns in points.items():
    x = params[ns[0]]
    dx, dy, ha, va = place.get(ns[0], (5, 3, "left", "bottom"))
    ax.scatter(x, k, color="C3" if len(ns) > 1 else "C0", s=40, zorder=3)
    ax.annotate(textwrap.fill(", ".join(ns), 26), (x, k), xytext=(dx, dy), textcoords="offset points",
                fontsize=9, ha=ha, va=va)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("parameters")
ax.set_ylabel("KV cache per token, fp16 (KiB)")
ax.set_title("Model size vs KV-cache cost per token (red: several models share the point)")
ax.grid(True, which="both", alpha=0.3)
ax.set_xlim(8e7, 2e12)
plt.show()

# %% [markdown]
# The 7B models with full multi-head attention (LLaMA 1, Llama 2, Code Llama) sit highest for
# their size: 512 KiB per token, so a 4096-token context costs 2 GiB per sequence. Llama 3 8B
# and Mistral 7B share each KV head among 4 query heads and pay 128 KiB; Llama 2 70B shares among
# 8 and pays 320 KiB, less than the 7B model. SmolLM2-1.7B keeps one KV head per query head and
# pays 192 KiB per token, more than Llama 3 8B at a fifth of its size, while the bundled 135M
# model pays 22.5 KiB.

# %% [markdown]
# ## The model you are running
#
# The formula against the real tensors of the model `MODEL` names: its config's count and the
# number of numbers in its parameters (a tied LM head counted once).

# %%
model, tok = al.load(MODEL)
counted = sum(p.numel() for p in model.parameters())
print(f"{MODEL}: count_parameters(model.args) = {al.count_parameters(model.args):,}, "
      f"tensors hold {counted:,}, equal: {counted == al.count_parameters(model.args)}")
assert counted == al.count_parameters(model.args)
