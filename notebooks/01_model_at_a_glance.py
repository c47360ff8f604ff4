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
# # 1. The model at a glance
#
# Chapter 0 drew the forward pass as a column of boxes. This chapter puts numbers on it. A
# LLaMA model is fully described by about a dozen numbers, its configuration; from
# those alone we can count every parameter exactly and predict the shape of every tensor
# that flows through the model. We do both for the bundled model, SmolLM2-135M, and for
# Llama-2-7B, and then check the predictions: the count against transformers' own model,
# the shapes by watching one real forward pass of "The capital of France is".

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
from pathlib import PurePosixPath

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, Markdown, display

import annotated_llama as al
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

# tqdm, imported by transformers, warns about missing notebook widgets
warnings.filterwarnings("ignore", message="IProgress not found")
torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %% [markdown]
# The model is the bundled SmolLM2-135M (4-bit weights dequantized to float32, chapter 0) unless
# you change the next cell. Any LLaMA runs here: a Hugging Face id, a local directory or a GGUF
# file. Its weights in 16 bits take parameters × 2 bytes: `TinyLlama/TinyLlama-1.1B-Chat-v1.0`
# (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B` (gated, 2.30 GiB) fit a Colab T4;
# `meta-llama/Llama-2-7b-hf` (12.55 GiB) and `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or
# an A100. Chapter 0 has the full table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
name = PurePosixPath(str(MODEL)).name  # a short name for the tables: "smollm2-135m"
print(f"{name} on {model.device}, weights in {model.dtype}")

# %% [markdown]
# ## The configuration
#
# `model.args` holds the configuration, with the field names of Meta's `ModelArgs` in
# `llama/model.py`. `al.ModelArgs.preset("llama2-7b")` gives the same object for Llama-2-7B,
# with the values Meta published in its `params.json` {cite}`touvron2023llama2`. Side by side:

# %%
small = model.args
llama2 = al.ModelArgs.preset("llama2-7b")

FIELDS = [  # (what it is, how to read it off a ModelArgs)
    ("hidden size <code>dim</code>", lambda a: a.dim),
    ("FFN size <code>ffn_dim</code>", lambda a: a.ffn_dim),
    ("layers <code>n_layers</code>", lambda a: a.n_layers),
    ("query heads <code>n_heads</code>", lambda a: a.n_heads),
    ("key/value heads <code>n_kv_heads</code>", lambda a: a.n_kv_heads),
    ("head size <code>head_dim</code>", lambda a: a.head_dim),
    ("vocabulary <code>vocab_size</code>", lambda a: f"{a.vocab_size:,}"),
    ("context <code>max_seq_len</code>", lambda a: f"{a.max_seq_len:,}"),
    ("RoPE θ <code>rope_theta</code>", lambda a: f"{a.rope_theta:,.0f}"),
    ("RMSNorm ε <code>norm_eps</code>", lambda a: f"{a.norm_eps:.0e}"),
    ("output tied to embedding", lambda a: ["no", "yes"][a.tie_word_embeddings]),
]
cell = '<td style="text-align:right; padding: 0 1em">{}</td>'.format
rows = [f"<tr><td>{field}</td>{cell(get(small))}{cell(get(llama2))}</tr>"
        for field, get in FIELDS]
th = '<th style="padding: 0 1em">{}</th>'.format
head = f"<tr>{th('')}{th(name)}{th('Llama-2-7B')}</tr>"
display(HTML(f"<table>{head}{''.join(rows)}</table>"))

# %% [markdown]
# The two models have the same architecture and very different proportions. Llama-2-7B has
# a residual stream of 4096 numbers per token, 32 heads of 128 dimensions, and one key/value
# head per query head ({term}`multi-head attention <MHA>`). The bundled model's stream is 576
# wide, it has 30 layers of 9 query heads of 64 dimensions, and its 9 query heads share 3
# key/value heads ({term}`grouped-query attention <GQA>` {cite}`ainslie2023gqa`, chapter 6). Its
# vocabulary is larger (49,152 tokens against 32,000), its RoPE base θ ten times larger (chapter
# 5), and its output layer reuses the token embedding instead of having its own matrix
# ({term}`tied embeddings <Tied embeddings>`).
#
# The head size is not a free parameter in either: `head_dim = dim / n_heads`, and the
# query projection maps `dim` back to `n_heads · head_dim = dim`.

# %%
for label, a in [(name, small), ("Llama-2-7B", llama2)]:
    print(f"{label:>12}: head_dim = {a.dim} / {a.n_heads} = {a.head_dim};"
          f" n_heads / n_kv_heads = {a.n_heads // a.n_kv_heads}")
    assert a.n_heads % a.n_kv_heads == 0  # query heads come in whole groups

# %% [markdown]
# ## Counting parameters exactly
#
# Every learned number in a LLaMA model sits in a weight matrix of a linear layer, in the
# embedding table, or in the gain vector of an RMSNorm. There are no biases. With $V$ the
# vocabulary, $d$ = `dim`, $L$ layers, $h$ query heads and $h_{kv}$ key/value heads of
# size $d_h$, and $f$ = `ffn_dim`:
#
# $$
# N = \underbrace{V d}_{\text{embedding}}
#   + L\,\big(\underbrace{d\,h d_h + 2\,d\,h_{kv} d_h + h d_h\,d}_{\text{attention: } W_q,\,W_k,\,W_v,\,W_o}
#   + \underbrace{3\,d f}_{\text{FFN: } W_1,\,W_2,\,W_3} + \underbrace{2d}_{\text{two norms}}\big)
#   + \underbrace{d}_{\text{final norm}} + \underbrace{V d}_{\text{output, if untied}}
# $$
#
# Written out as a table of components, from the configuration alone:

# %%
def parameter_breakdown(a: al.ModelArgs) -> dict[str, int]:
    """Learned parameters per component, computed by hand from the config."""
    d, hd, L, V = a.dim, a.head_dim, a.n_layers, a.vocab_size
    q, kv = a.n_heads * hd, a.n_kv_heads * hd  # widths of q and of k, v
    return {  # L layers, each with these shapes:
        "token embedding": V * d,                   # [vocab, dim]
        "attention wq": L * q * d,                  # [n_heads*head_dim, dim]
        "attention wk": L * kv * d,                 # [n_kv_heads*head_dim, dim]
        "attention wv": L * kv * d,                 # [n_kv_heads*head_dim, dim]
        "attention wo": L * d * q,                  # [dim, n_heads*head_dim]
        "feed-forward w1, w2, w3": L * 3 * d * a.ffn_dim,  # 3 x [ffn_dim, dim]
        "attention_norm + ffn_norm": L * 2 * d,     # 2 x [dim]
        "final norm": d,                            # [dim]
        "output (LM head)": 0 if a.tie_word_embeddings else V * d,  # [V, dim]
    }


def print_breakdown(title: str, parts: dict[str, int]) -> None:
    total = sum(parts.values())
    print(title)
    for part, n in parts.items():
        print(f"  {part:<28}{n:>15,}  {100 * n / total:5.1f} %")
    print(f"  {'total':<28}{total:>15,}")


# %%
parts_llama2 = parameter_breakdown(llama2)
print_breakdown("Llama-2-7B", parts_llama2)
n_llama2 = sum(parts_llama2.values())
assert n_llama2 == 6_738_415_616 == al.count_parameters(llama2)

# %% [markdown]
# 6,738,415,616: the "7B" of the name is 6.7 billion. The sum agrees with the package's
# `al.count_parameters`, which is the same formula in one expression:

# %%
display(Markdown(f"```python\n{inspect.getsource(al.count_parameters)}```"))

# %% [markdown]
# Two implementations of one formula can share one mistake, so the check that matters is an
# independent one. transformers' `LlamaForCausalLM` can be built on PyTorch's `meta`
# device: every parameter gets a shape and no memory, so a 7B model is built in moments
# without any weights. Its configuration takes the sizes from Llama-2-7B's published
# `config.json` (the Hugging Face conversion of Meta's checkpoint):

# %%
from transformers import LlamaConfig, LlamaForCausalLM

# the sizes in meta-llama/Llama-2-7b-hf's config.json
LLAMA2_7B_CONFIG_JSON = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False,
)
with torch.device("meta"):
    hf_llama2 = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B_CONFIG_JSON))

n_hf = sum(p.numel() for p in hf_llama2.parameters())
print(f"transformers on the meta device: {n_hf:,}")
print(f"by hand from the config:         {n_llama2:,}")
assert n_hf == n_llama2

# %% [markdown]
# The component totals agree too, not just the sum. transformers names the same matrices
# differently (`q_proj` for `wq`, `gate_proj` for `w1`, `input_layernorm` for
# `attention_norm`, `lm_head` for `output`); mapping its parameter names onto our components:

# %%
HF_NAMES = {  # a substring of transformers' parameter name -> our component
    "embed_tokens": "token embedding",
    "q_proj": "attention wq", "k_proj": "attention wk",
    "v_proj": "attention wv", "o_proj": "attention wo",
    "mlp.": "feed-forward w1, w2, w3",  # gate_proj, up_proj, down_proj
    "layernorm": "attention_norm + ffn_norm",  # input_/post_attention_layernorm
    "model.norm": "final norm",
    "lm_head": "output (LM head)",
}


def hf_breakdown(hf_model) -> dict[str, int]:
    counts = dict.fromkeys(HF_NAMES.values(), 0)
    tied = hf_model.config.tie_word_embeddings
    for pname, p in hf_model.named_parameters():
        if tied and pname.startswith("lm_head"):
            continue  # tied: the embedding matrix again, under a second name
        (part,) = [part for key, part in HF_NAMES.items() if key in pname]
        counts[part] += p.numel()
    return counts


assert hf_breakdown(hf_llama2) == parts_llama2
print("every component of Llama-2-7B matches transformers' parameter shapes")

# %% [markdown]
# What is *not* a parameter: the RoPE frequencies. Both implementations compute the rotation
# angles from θ and `head_dim` and keep them outside the learned weights: transformers as a
# buffer (`inv_freq`), our model as a table it builds on first use (chapter 5).

# %%
for bname, _ in hf_llama2.named_buffers():
    print("transformers buffer:", bname)
freqs = model.freqs_cis(model.device)  # [max_seq_len, head_dim / 2] complex
print(f"our RoPE table: {tuple(freqs.shape)} {freqs.dtype}")
is_parameter = any(p.data_ptr() == freqs.data_ptr() for p in model.parameters())
print("a parameter?", is_parameter)
assert not is_parameter and freqs.shape == (small.max_seq_len, small.head_dim // 2)

# %% [markdown]
# ### The loaded model
#
# Now the model we have loaded. Its weights are in memory, so the count can be checked against
# the tensors themselves. Where the output layer is tied to the token embedding, as in the
# bundled model, `model.output.weight` and `model.tok_embeddings.weight` are one tensor, and
# `model.parameters()` lists it once.

# %%
parts_small = parameter_breakdown(small)
print_breakdown(name, parts_small)
n_loaded = sum(p.numel() for p in model.parameters())
print(f"sum(p.numel() for p in model.parameters()): {n_loaded:,}")
is_tied = model.output.weight is model.tok_embeddings.weight
print("output.weight is tok_embeddings.weight:", is_tied)
assert n_loaded == sum(parts_small.values()) == al.count_parameters(small)
assert is_tied == small.tie_word_embeddings

# %% [markdown]
# The reference every chapter checks against is transformers' `LlamaForCausalLM` built around
# our tensors: `as_transformers(model)` builds it from the configuration on the meta device,
# then hands it our weights, which transformers accepts only if every tensor has the shape its
# own code expects. No second copy of the weights is made (the output layer, when tied, is the
# embedding's storage under transformers' second name `lm_head`). Its components:

# %%
hf = as_transformers(model)  # transformers' model code, our tensors
parts_hf = hf_breakdown(hf)
n_hf_loaded = sum(parts_hf.values())
print(f"transformers: {n_hf_loaded:,} parameters")
assert parts_hf == parts_small and n_hf_loaded == n_loaded
if small.tie_word_embeddings:  # one matrix, two names: the same memory
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
print("the same per component as the count by hand")

# %% [markdown]
# ## The FFN size: 2/3 · 4d, rounded up
#
# The feed-forward size 11008 of Llama-2-7B looks arbitrary; it is a rule. The original
# transformer's feed-forward layer has two matrices of $d \times 4d$. SwiGLU (chapter 8)
# has three, so to keep the parameter count about the same the hidden size shrinks to
# $\tfrac{2}{3} \cdot 4d$ {cite}`shazeer2020glu`. Meta's code then optionally scales it by
# `ffn_dim_multiplier` and rounds up to a multiple of `multiple_of`, so that the matrix
# shapes suit GPU kernels:
#
# $$ f = m \left\lceil \frac{\lfloor c \cdot \lfloor \tfrac{2}{3} \cdot 4d \rfloor \rfloor}{m} \right\rceil $$
#
# with $m$ = `multiple_of` and $c$ = `ffn_dim_multiplier` (1 when absent). Step by step:

# %%
def ffn_steps(name: str, a: al.ModelArgs) -> int:
    m, c = a.multiple_of, a.ffn_dim_multiplier
    print(f"{name}: dim = {a.dim}, multiple_of = {m}, ffn_dim_multiplier = {c}")
    hidden = int(2 * (4 * a.dim) / 3)
    print(f"  2/3 * 4 * {a.dim} = {2 * 4 * a.dim / 3:.2f} -> {hidden}")
    if c is not None:
        print(f"  {c} * {hidden} = {c * hidden:.1f} -> {int(c * hidden)}")
        hidden = int(c * hidden)
    blocks = math.ceil(hidden / m)
    print(f"  ceil({hidden} / {m}) = ceil({hidden / m:.3f}) = {blocks} blocks")
    print(f"  {blocks} * {m} = {blocks * m}")
    return blocks * m


assert ffn_steps("Llama-2-7B", llama2) == 11008 == llama2.ffn_dim
llama3 = al.ModelArgs.preset("llama3-8b")
assert ffn_steps("Llama-3-8B", llama3) == 14336 == llama3.ffn_dim

# %% [markdown]
# Rounding up 10922 to 43 blocks of 256 adds 86 hidden units per layer. Llama 3 8B has the
# same `dim` but scales by 1.3 and rounds to multiples of 1024, which gives 14336
# {cite}`dubey2024llama3`. The package's version of the rule:

# %%
display(Markdown(f"```python\n{inspect.getsource(al.ffn_hidden_dim)}```"))

# %% [markdown]
# Hugging Face configurations, and the bundled model's GGUF, state the FFN size directly
# (`intermediate_size`), so for SmolLM2 the 1536 is read, not derived: it is
# $\tfrac{8}{3} \cdot 576 = 1536$ exactly, the same rule without any rounding.

# %% [markdown]
# ## Where the parameters go
#
# Grouping the components into the token embedding and output layer, attention, the
# feed-forward layers and the norms:

# %%
GROUPS = {
    "embedding + output": ["token embedding", "output (LM head)"],
    "attention": [f"attention w{x}" for x in "qkvo"],
    "feed-forward": ["feed-forward w1, w2, w3"],
    "norms": ["attention_norm + ffn_norm", "final norm"],
}
shares = {}  # model -> group -> % of all parameters
for label, parts in [(name, parts_small), ("Llama-2-7B", parts_llama2)]:
    total = sum(parts.values())
    shares[label] = {group: 100 * sum(parts[k] for k in keys) / total
                     for group, keys in GROUPS.items()}
    print(label)
    for group, share in shares[label].items():
        print(f"  {group:<20}{share:5.1f} %")
    ratio = shares[label]["feed-forward"] / shares[label]["attention"]
    print(f"  feed-forward / attention = {ratio:.2f}")

# %%
fig, ax = plt.subplots(figsize=(8, 3))
colours = {"embedding + output": "#6fa8dc", "attention": "#e06666",
           "feed-forward": "#93c47d", "norms": "#ffd966"}
names = list(shares)
left = [0.0] * len(names)
for group, colour in colours.items():
    widths = [shares[n][group] for n in names]
    ax.barh(names, widths, left=left, color=colour, label=group,
            edgecolor="white")
    for y, (x0, w) in enumerate(zip(left, widths)):
        if w > 5:  # label the segments wide enough to hold a label
            ax.text(x0 + w / 2, y, f"{w:.0f} %", ha="center", va="center",
                    fontsize=9)
    left = [x0 + w for x0, w in zip(left, widths)]
ax.set_xlim(0, 100)
ax.set_xlabel("share of all parameters (%)")
ax.set_title("Where the parameters are")
ax.invert_yaxis()
ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=9,
          frameon=False)
plt.show()
for n in names:  # the bars as text: each segment's width in %
    print(f"{n:>12}: " + ", ".join(f"{g} {shares[n][g]:.0f} %" for g in colours))

# %% [markdown]
# The bundled model is embedding-heavy. Its embedding table, 49,152 × 576, is about a fifth
# of all its parameters (and it is used twice, as input embedding and as output layer),
# while Llama-2-7B's two tables of 32,000 × 4096 are under 4 % of its parameters. The
# table grows with `dim` only, the layers with `dim²`, so the larger the model, the more of
# it is layers. Within each layer the feed-forward network holds about twice as many
# parameters as attention in Llama-2-7B ($3 d f$ against $4 d^2$), and three times as many in
# the bundled model. Its FFN has the same relative width ($f \approx 2.7\,d$ in both), but its
# shared key/value heads shrink $W_k$ and $W_v$ to a third of the size of $W_q$, so its
# attention has $2\tfrac{2}{3}\,d^2$ parameters per layer instead of $4 d^2$.

# %% [markdown]
# ## Every tensor in one forward pass
#
# The configuration also fixes every tensor's shape. To see them on the real model, we
# register forward hooks: functions PyTorch calls after a module's `forward` with its
# output (and a pre-hook, called with the input). Each hook records the shape of what
# flows past, and we run one forward pass of the prompt.

# %%
prompt = "The capital of France is"
ids = tok.encode(prompt)
tokens = torch.tensor([ids], device=model.device)  # [batch=1, seq]
print(f"{len(ids)} tokens: {ids}")
print([tok.id_to_piece(i) for i in ids])

# %% [markdown]
# For the bundled model: five tokens and no {term}`BOS`, since the SmolLM2 tokenizer does not
# add one (Llama 2's does, chapter 2). The places to watch, by module name (layer 0 stands for
# every layer):

# %%
layer0 = model.layers[0]
WATCH = [  # (label, module, "out" for its output or "in" for its input)
    ("token embedding", model.tok_embeddings, "out"),
    ("layer 0: attention_norm", layer0.attention_norm, "out"),
    ("layer 0: q = wq(x)", layer0.attention.wq, "out"),
    ("layer 0: k = wk(x)", layer0.attention.wk, "out"),
    ("layer 0: v = wv(x)", layer0.attention.wv, "out"),
    ("layer 0: heads concatenated", layer0.attention.wo, "in"),
    ("layer 0: attention out = wo(.)", layer0.attention, "out"),
    ("layer 0: ffn_norm", layer0.ffn_norm, "out"),
    ("layer 0: ffn hidden silu(w1 x)*w3 x", layer0.feed_forward.w2, "in"),
    ("layer 0: feed-forward out", layer0.feed_forward, "out"),
    ("layer 0: block out", layer0, "out"),
    (f"layer {small.n_layers - 1}: block out", model.layers[-1], "out"),
    ("final norm", model.norm, "out"),
    ("logits = output(.)", model.output, "out"),
]

# %%
shapes = []
handles = []
for label, module, where in WATCH:
    def record(module, args, output=None, label=label, where=where):
        tensor = output if where == "out" else args[0]
        shapes.append((label, tuple(tensor.shape)))

    if where == "out":
        handles.append(module.register_forward_hook(record))
    else:
        handles.append(module.register_forward_pre_hook(record))

with torch.no_grad():
    logits = model(tokens)  # [batch, seq, vocab]
for h in handles:
    h.remove()

print(f"{'input ids':<38}{tuple(tokens.shape)}")
for label, shape in shapes:
    print(f"{label:<38}{shape}")

# %% [markdown]
# Read with the configuration in hand (the bundled model's, here), `[1, 5, ...]` is one
# sequence of five tokens, and the last dimension is:
#
# - 576 = `dim` for the residual stream: the embedding, every norm output, the attention
#   and feed-forward outputs that are added back, and each block's output;
# - 576 = 9 heads × 64 for the queries, but only 192 = 3 × 64 for keys and values, which
#   is grouped-query attention at work (the projections are viewed as `[1, 5, 9, 64]` and
#   `[1, 5, 3, 64]` inside the attention, chapter 6);
# - 1536 = `ffn_dim` inside the feed-forward layer, the only place the stream gets wider;
# - 49,152 = `vocab_size` for the logits, one score per vocabulary entry at every position.
#
# Layer 29 returns the same shape as layer 0: the blocks never change the stream's shape,
# which is what lets them be stacked. The same, for whichever model is loaded:

# %%
b, seq = tokens.shape
q_width, kv_width = small.n_heads * small.head_dim, small.n_kv_heads * small.head_dim
LAST_DIM = {  # every tensor not listed here is the residual stream's width, dim
    "layer 0: q = wq(x)": q_width, "layer 0: heads concatenated": q_width,
    "layer 0: k = wk(x)": kv_width, "layer 0: v = wv(x)": kv_width,
    "layer 0: ffn hidden silu(w1 x)*w3 x": small.ffn_dim, "logits = output(.)": small.vocab_size,
}
for label, shape in shapes:
    assert shape == (b, seq, LAST_DIM.get(label, small.dim)), label
print(f"all {len(shapes)} shapes as the configuration predicts")

# %% [markdown]
# ## The next token
#
# Only the last position's logits matter for the next token. A softmax turns them into a
# probability distribution over the vocabulary; the five most likely tokens:

# %%
probs = torch.softmax(logits[0, -1].float(), dim=-1)  # [vocab]
top = torch.topk(probs, 5)
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{i:>6}  {tok.decode([i])!r:<12} {p:.3f}")
assert torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-3)  # a distribution

# %% [markdown]
# For the bundled model " Paris" (with its leading space: it is one token, `ĠParis`) is the first
# choice, with the probability printed above. That probability is the 4-bit model's: the
# original 16-bit weights would give a somewhat different one, which this book does not
# measure. (The cell asserts nothing about Paris: another model, or random weights, may well
# answer differently.)
#
# Finally, the logits themselves against transformers' `LlamaForCausalLM` on the same
# weights, for every position and every vocabulary entry. The two implementations add and round
# in different orders, so they agree to a tolerance that depends on the dtype: relative to the
# largest logit, 1e-5 in float32, and 32 times the unit roundoff of the 16-bit types ($2^{-11}$
# for float16, $2^{-8}$ for bfloat16). `check_close` asserts it; the other chapters use it too.

# %%
hf_logits = hf(tokens).logits  # [batch, seq, vocab]
check_close(logits, hf_logits, model.dtype, "logits")
print(f"logits {tuple(logits.shape)}, {model.dtype}: max |ours - transformers| / max |transformers|"
      f" <= {RELATIVE_TOLERANCE[model.dtype]:.1e}")

# %% [markdown]
# ## What we have now
#
# A model we can describe in numbers. For the bundled model: 134,515,008 parameters, a fifth
# of them in the (tied) embedding table; for Llama-2-7B: 6,738,415,616, counted by hand and
# matched by transformers. The tensors in flight for a prompt of `seq` tokens:
#
# - token ids `[batch, seq]` go in;
# - the residual stream is `[batch, seq, dim]` from the embedding to the final norm;
# - inside attention, queries are `[batch, seq, n_heads, head_dim]`, keys and values
#   `[batch, seq, n_kv_heads, head_dim]`; inside the feed-forward layer the stream widens to
#   `[batch, seq, ffn_dim]`;
# - logits `[batch, seq, vocab]` come out, and the last position's give the next token.
#
# Chapter 2 starts at the beginning: how the text "The capital of France is" became, for the
# bundled model, the ids `[504, 3575, 282, 4649, 314]`.
