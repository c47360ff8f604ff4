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
# # 5. RoPE
#
# After chapter 4 each position carries a normalised vector, `attention_norm(x)` of shape
# `[batch, seq, dim]`. Attention (chapter 6) projects it to queries and keys and scores every
# pair of positions by a dot product $q_m \cdot k_n$. A dot product does not know where its two
# vectors came from: shuffle the tokens and every score stays the same. Something has to tell
# attention about order.
#
# LLaMA does it with rotary position embeddings, {term}`RoPE` {cite}`su2021roformer`. Nothing is
# added to the embeddings. Instead, just before the dot product, each query and key is *rotated*
# by an angle proportional to its position. Rotations preserve lengths, and the angle between two
# rotated vectors depends only on the difference of their rotations, so the score of a query at
# position $m$ and a key at position $n$ ends up depending on $m - n$ alone.
#
# This chapter builds the rotation twice (as 2-D rotation matrices and as complex
# multiplication), checks it against the package and against transformers, which uses a
# different but equivalent layout, explains how Llama 3.1 stretches the rotation for a longer
# context, and verifies the relative-position property on real queries and keys.

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

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

import annotated_llama as al  # noqa: E402
from annotated_llama.config import ModelArgs  # noqa: E402
from annotated_llama.reference import (  # noqa: E402
    RELATIVE_TOLERANCE, as_transformers, check_close, transformers_config)

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# The bundled model is SmolLM2-135M, from a {term}`GGUF` file whose matrices are 4-bit (Q4_1) and
# whose embedding table is 8-bit (Q8_0), dequantized at load. To use another LLaMA, set `MODEL` to
# a Hugging Face id or a local directory: `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (2.05 GiB in 16
# bits) or `meta-llama/Llama-3.2-1B` (about 2.3 GiB, and an example of the scaled RoPE of this
# chapter) fit a Colab T4; `meta-llama/Llama-2-7b-hf` (12.55 GiB) or `meta-llama/Llama-3.1-8B`
# (14.96 GiB) need an L4 or an A100 (2 bytes per parameter; chapter 0 has the full table).
#
# We load the model and, as the independent reference, transformers' `LlamaForCausalLM` built
# around the same tensors by `as_transformers` (one copy of the weights: what it shares with our
# model is the weights; its model code, RoPE included, is its own). Then we redo what the earlier
# chapters did: tokenize a sentence, look up the embeddings and apply layer 0's `attention_norm`.
# That is the input of the first attention layer, where RoPE is used for the first time.

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
hf = as_transformers(model)  # transformers' model on our tensors: no second copy
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"dim {args.dim}, n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, "
      f"head_dim {args.head_dim}, rope_theta {args.rope_theta:g}, max_seq_len {args.max_seq_len}")
print(f"Llama 3.1 RoPE scaling: {args.use_scaled_rope}")

# %%
TEXT = "The capital of France is Paris, and the capital of Italy is Rome."
ids = tok.encode(TEXT)
tokens = torch.tensor([ids], device=model.device)  # [1, seq]
seq = tokens.shape[1]
x = model.layers[0].attention_norm(model.tok_embeddings(tokens))  # [1, seq, dim]
_LETTER = tok.encode("a", bos=False)[-1:]  # decoded after a letter, a token keeps its space


def piece(i: int) -> str:
    """A token's text, leading space included (special tokens by name)."""
    return tok.decode(_LETTER + [i])[len(tok.decode(_LETTER)):] or tok.id_to_piece(i)


print("tokens:", [piece(i) for i in ids])
print("x:", tuple(x.shape))

# %% [markdown]
# Layer 0's query and key projections turn `x` into one query per
# {term}`attention head <Attention head>` and one key per key/value head. We compute them in
# float32 so that the comparisons below are exact up to float32 rounding, whatever dtype the
# model runs in.

# %%
attn = model.layers[0].attention
wq = attn.wq.weight.float()  # [n_heads * head_dim, dim]
wk = attn.wk.weight.float()  # [n_kv_heads * head_dim, dim]
xf = x.float()
q = (xf @ wq.T).view(1, seq, args.n_heads, args.head_dim)  # [1, seq, n_heads, head_dim]
k = (xf @ wk.T).view(1, seq, args.n_kv_heads, args.head_dim)  # [1, seq, n_kv_heads, head_dim]
print("q:", tuple(q.shape), " k:", tuple(k.shape))

# %% [markdown]
# ## The idea
#
# Split each head's vector of $d$ = `head_dim` numbers into $d/2$ pairs. Pair $j$ is a point in a
# plane, and RoPE turns it by the angle $m\theta_j$, where $m$ is the position and $\theta_j$ a
# fixed frequency for that pair:
#
# $$
# \begin{pmatrix} q'_{2j} \\ q'_{2j+1} \end{pmatrix} =
# \begin{pmatrix} \cos m\theta_j & -\sin m\theta_j \\ \sin m\theta_j & \cos m\theta_j \end{pmatrix}
# \begin{pmatrix} q_{2j} \\ q_{2j+1} \end{pmatrix},
# \qquad \theta_j = b^{-2j/d}, \quad j = 0, \dots, d/2 - 1,
# $$
#
# with the base $b$ = `rope_theta` (10000 in Llama 2). Read the pair as one complex number,
# $\tilde q_j = q_{2j} + i\, q_{2j+1}$, and the rotation is a single multiplication:
#
# $$
# \tilde q'_j = \tilde q_j \, e^{i m \theta_j}.
# $$
#
# Keys get the same treatment at their own position $n$. The real dot product of two vectors is
# the real part of $\sum_j \tilde q_j \overline{\tilde k_j}$, so after rotation
#
# $$
# q'_m \cdot k'_n = \operatorname{Re} \sum_{j} \tilde q_j e^{i m\theta_j}\,
# \overline{\tilde k_j e^{i n\theta_j}}
# = \operatorname{Re} \sum_{j} \tilde q_j \overline{\tilde k_j}\, e^{i (m-n)\theta_j}:
# $$
#
# the positions enter only through $m - n$, whatever the frequencies $\theta_j$ are.

# %% [markdown]
# ## The frequencies
#
# The first pair turns by one radian per position, the last by about $1/b$ radians: the
# frequencies fall geometrically from fast to very slow. A pair returns to where it started after
# $2\pi/\theta_j = 2\pi\, b^{2j/d}$ positions, its wavelength.

# %%
def inv_freq(head_dim, base):
    """θ_j = base^(-2j/head_dim) for j = 0 .. head_dim/2 - 1."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [head_dim/2]


theta = inv_freq(args.head_dim, args.rope_theta)
wavelength = 2 * math.pi / theta
print(f"{len(theta)} pairs; θ_0 = {theta[0]:.3f}, θ_last = {theta[-1]:.2e} rad/position")
print(f"wavelengths: first {wavelength[0]:.2f}, last {wavelength[-1]:,.0f} positions")

# %% [markdown]
# The base sets how slow the slowest pairs are. Llama 2 uses 10000, the bundled SmolLM2 100000 and
# Llama 3 500000 {cite}`dubey2024llama3`. Plotted against the pair's relative index $2j/d$ the
# wavelength $2\pi b^{2j/d}$ does not depend on $d$, so one plot serves all three (Llama 2 and 3
# have $d = 128$, 64 pairs; the bundled model $d = 64$, 32 pairs; we draw 64 points).

# %%
BASES = {"Llama 2 (b = 10,000)": 1e4, "SmolLM2 (b = 100,000)": 1e5,
         "Llama 3 (b = 500,000)": 5e5}
fig, ax = plt.subplots(figsize=(8, 4))
frac = torch.arange(0, 128, 2) / 128  # 2j/d
for label, base in BASES.items():
    curve = 2 * math.pi * base**frac
    ax.plot(frac, curve, marker=".", label=label)
    print(f"{label}: wavelength {curve[0]:.2f} (2j/d = 0) to {curve[-1]:,.0f} positions")
for context, name, shift in [(4096, "4,096 (Llama 2 context)", 0.55),
                             (8192, "8,192 (SmolLM2, Llama 3 context)", 1.45)]:
    ax.axhline(context, color="0.5", ls="--", lw=1)
    ax.text(0.01, context * shift, name, fontsize=9, color="0.35", va="center")
ax.set(yscale="log", xlabel="relative pair index 2j / d",
       ylabel="wavelength 2π / θ_j (positions)",
       title="RoPE wavelength of each pair of dimensions")
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# How many pairs never complete a turn within the context, for each model:

# %%
for name, d, base, context in [("Llama-2-7B", 128, 1e4, 4096), ("SmolLM2-135M", 64, 1e5, 8192),
                               ("Llama-3-8B", 128, 5e5, 8192)]:
    wavelength = 2 * math.pi / inv_freq(d, base)
    n_slow = int((wavelength > context).sum())
    print(f"{name:>12}: {n_slow:2d} of {d // 2} pairs have a wavelength > {context} positions")

# %% [markdown]
# The fast pairs distinguish neighbouring positions; the slow ones change so little over the
# whole context that they act almost like position-free dimensions. A larger base moves more
# pairs into that slow group, one of the changes that let Llama 3 train on longer sequences.

# %% [markdown]
# ## Llama 3.1: slowing the slow pairs
#
# Llama 3 was pre-trained on sequences of 8,192 tokens; Llama 3.1 extends the context to 128K,
# 131,072 positions {cite}`dubey2024llama3`, and Llama 3.2 {cite}`meta2024llama32` and 3.3 have the
# same context. All of them stay with $b$ = 500,000 and change the frequencies pair by pair,
# according to the wavelength $\lambda_j = 2\pi/\theta_j$, with four numbers from the checkpoint's
# configuration: the original context $L$ = 8,192, `low_freq_factor` $\alpha$ = 1,
# `high_freq_factor` $\beta$ = 4, and a `factor` $s$, 8 for Llama 3.1 and 3.3, 32 for Llama 3.2.
#
# - A pair whose wavelength is shorter than $L/\beta$ (2,048 positions) keeps its frequency: it
#   makes at least four turns within the original context, and it is what tells nearby positions
#   apart.
# - A pair whose wavelength is longer than $L/\alpha$ (8,192 positions) turns $s$ times slower,
#   $\theta'_j = \theta_j / s$: position $s \cdot m$ now gets the angle that position $m$ had.
# - In between, the two are blended:
#   $\theta'_j = (1 - \gamma_j)\,\theta_j / s + \gamma_j\,\theta_j$ with
#   $\gamma_j = (L/\lambda_j - \alpha)/(\beta - \alpha)$, which goes from 0 at
#   $\lambda_j = L/\alpha$ to 1 at $\lambda_j = L/\beta$, so the frequencies change
#   continuously across the band.
#
# This is Meta's `apply_scaling` {cite}`meta2024llamamodels`, which writes the rule with Llama
# 3.1's numbers, and transformers' `_compute_llama3_parameters` (rope type `"llama3"`)
# {cite}`wolf2020transformers`, which reads all four from the configuration. Nothing else in the
# model changes. By hand:

# %%
def scaled_inv_freq(head_dim, base, factor, low_freq_factor, high_freq_factor, original):
    """Llama 3.1's θ'_j, from the unscaled θ_j = base^(-2j/head_dim)."""
    theta = inv_freq(head_dim, base)  # [head_dim/2], float64
    wavelength = 2 * math.pi / theta
    gamma = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - gamma) * theta / factor + gamma * theta
    return torch.where(wavelength < original / high_freq_factor, theta,  # fast: kept
                       torch.where(wavelength > original / low_freq_factor, theta / factor,  # slow
                                   blended))  # the band between


def model_inv_freq(a: ModelArgs):
    """θ_j of a model: scaled when its configuration asks for Llama 3.1's rule."""
    if not a.use_scaled_rope:
        return inv_freq(a.head_dim, a.rope_theta)
    return scaled_inv_freq(a.head_dim, a.rope_theta, a.rope_scaling_factor,
                           a.rope_low_freq_factor, a.rope_high_freq_factor,
                           a.rope_original_max_seq_len)


# %% [markdown]
# The package computes the same with `al.model.rope_frequencies(head_dim, theta, args)`, and
# transformers with `ROPE_INIT_FUNCTIONS["llama3"]`, given a `LlamaConfig` whose
# `rope_parameters` hold the four numbers (`transformers_config(args)` writes one from our
# `ModelArgs`). For the presets of Llama-3.2-1B and Llama-3.1-8B, and for the model loaded above
# if it uses the rule, the three must agree:

# %%
SCALED = {"Llama-3.2-1B": ModelArgs.preset("llama3.2-1b"),
          "Llama-3.1-8B": ModelArgs.preset("llama3.1-8b")}
if args.use_scaled_rope:
    SCALED["the model loaded above"] = args
for name, a in SCALED.items():
    ours = al.model.rope_frequencies(a.head_dim, a.rope_theta, a)  # [head_dim/2], float32
    theirs, attention_scaling = ROPE_INIT_FUNCTIONS["llama3"](transformers_config(a), "cpu")
    check_close(model_inv_freq(a).float(), ours, torch.float32, f"{name}: by hand")
    check_close(ours, theirs, torch.float32, f"{name}: transformers")
    assert attention_scaling == 1.0  # "llama3" scales the frequencies only
    wave = 2 * math.pi / inv_freq(a.head_dim, a.rope_theta)
    kept = int((wave < a.rope_original_max_seq_len / a.rope_high_freq_factor).sum())
    slowed = int((wave > a.rope_original_max_seq_len / a.rope_low_freq_factor).sum())
    print(f"{name} (head_dim {a.head_dim}, factor {a.rope_scaling_factor:g}): "
          f"{kept} pairs kept, {a.head_dim // 2 - kept - slowed} blended, {slowed} slowed")
    print(f"    by hand == package == transformers (float32 tolerance): True")

# %% [markdown]
# The wavelength of every pair before and after, for the two presets:

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, (name, a) in zip(axes, list(SCALED.items())[:2]):
    L, pairs = a.rope_original_max_seq_len, torch.arange(a.head_dim // 2)
    before = 2 * math.pi / inv_freq(a.head_dim, a.rope_theta)
    after = 2 * math.pi / model_inv_freq(a)
    ax.plot(pairs, before, marker=".", label="Llama 3 (unscaled)")
    ax.plot(pairs, after, marker=".", label=f"scaled, factor {a.rope_scaling_factor:g}")
    for bound, text in [(L / a.rope_high_freq_factor, "L/β"),
                        (L / a.rope_low_freq_factor, "L/α")]:
        ax.axhline(bound, color="0.5", ls="--", lw=0.8)
        ax.text(0, bound * 1.3, f"{text} = {bound:,.0f}", fontsize=9, color="0.35")
    ax.set(yscale="log", title=f"{name} (head_dim {a.head_dim})", xlabel="pair j")
    ax.legend(fontsize=9, loc="lower right")
    print(f"{name}: longest wavelength {before[-1]:,.0f} -> {after[-1]:,.0f} positions; "
          f"ratio after/before in the slow pairs {after[-1] / before[-1]:.0f}")
axes[0].set_ylabel("wavelength 2π / θ_j (positions)")
fig.suptitle("Llama 3.1-style RoPE scaling: the slow pairs stretched, the fast ones kept")
fig.tight_layout()
plt.show()

# %% [markdown]
# The fast pairs on the left are untouched; from the first dashed line up, the curves part, and
# above the second one every wavelength is multiplied by the factor. Of Llama-3.1-8B's 64 pairs,
# 29 keep their frequency, 6 are blended and 29 turn 8 times slower; Llama-3.2-1B slows 14 of its
# 32 pairs 32 times (the counts printed above). The relative-position
# property does not care: it holds for any frequencies, and the checks below use the model's own
# table, scaled or not.

# %% [markdown]
# ## `precompute_freqs_cis`
#
# The angles $m\theta_j$ do not depend on the input, so they are computed once, for every position
# up to `max_seq_len`, and stored as unit complex numbers $e^{i m\theta_j} = \cos m\theta_j + i
# \sin m\theta_j$ ("cis"). We build the table from its definition, with this model's frequencies:

# %%
def my_freqs_cis(a: ModelArgs, end: int):
    freqs = model_inv_freq(a).float()  # [head_dim/2]
    positions = torch.arange(end, dtype=torch.float32)  # [end]
    angles = positions[:, None] * freqs[None, :]  # [end, head_dim/2]: m·θ_j
    return torch.complex(torch.cos(angles), torch.sin(angles))  # [end, head_dim/2] complex64


table = my_freqs_cis(args, args.max_seq_len)
print("table:", tuple(table.shape), table.dtype)

# %% [markdown]
# The package's version, displayed from its source:

# %%
Markdown(f"```python\n{inspect.getsource(al.model.precompute_freqs_cis)}```")

# %% [markdown]
# Both tables agree, and the model's cached table (`model.freqs_cis(device)`, built with the
# model's `head_dim`, `max_seq_len`, `rope_theta` and scaling) is the same one. Angles at large
# positions are large (up to `max_seq_len - 1` radians for pair 0), and a float32 angle $A$ is
# only known to about $A \cdot 2^{-23}$, one unit in its last place. We allow four such units of
# the largest angle.

# %%
tol = 4 * (args.max_seq_len - 1) * 2.0**-23
package_table = al.model.precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta,
                                              args)
model_table = model.freqs_cis(model.device).cpu()
diff_package = (table - package_table).abs().max().item()
diff_model = (table - model_table).abs().max().item()
print(f"tolerance: 4 x {args.max_seq_len - 1} x 2^-23 = {tol:.1e}")
print(f"ours vs precompute_freqs_cis: max abs diff < tolerance: {diff_package < tol}")
print(f"ours vs model.freqs_cis:      max abs diff < tolerance: {diff_model < tol}")
assert diff_package < tol and diff_model < tol

# %% [markdown]
# ## `apply_rotary_emb`
#
# Now the rotation itself, written as the 2-D rotation of the first equation: even dimensions
# are the first coordinate of each pair, odd dimensions the second.

# %%
def my_rotary(x, freqs_cis):
    """x: [batch, seq, heads, head_dim]; freqs_cis: [seq, head_dim/2] complex."""
    cos = freqs_cis.real[None, :, None, :]  # [1, seq, 1, head_dim/2]
    sin = freqs_cis.imag[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]  # the two coordinates of each pair, [b, s, h, hd/2]
    out0 = x0 * cos - x1 * sin
    out1 = x0 * sin + x1 * cos
    return torch.stack([out0, out1], dim=-1).flatten(-2)  # interleave: [b, s, h, head_dim]


freqs = model.freqs_cis(model.device)[:seq]  # [seq, head_dim/2], positions 0 .. seq-1
q_rot, k_rot = my_rotary(q, freqs), my_rotary(k, freqs)
print("q_rot:", tuple(q_rot.shape), " k_rot:", tuple(k_rot.shape))

# %% [markdown]
# The package does the same with complex numbers: view each pair as one complex number, multiply
# by the table, view the result as pairs again.

# %%
Markdown(f"```python\n{inspect.getsource(al.model.apply_rotary_emb)}```")

# %% [markdown]
# The two forms round differently, so we compare them with the float32 tolerance of the book's
# checks, relative to the largest value (`check_close`):

# %%
check_close(q_rot, al.model.apply_rotary_emb(q, freqs), torch.float32, "rotated q")
check_close(k_rot, al.model.apply_rotary_emb(k, freqs), torch.float32, "rotated k")
print(f"2-D rotation form vs complex form, q and k: within "
      f"{RELATIVE_TOLERANCE[torch.float32]:g} of the largest value: True")

# %% [markdown]
# A rotation keeps every pair's length, so each head's vector keeps its norm, and position 0 is
# not rotated at all:

# %%
norm_change = ((q_rot.norm(dim=-1) - q.norm(dim=-1)).abs().max() / q.norm(dim=-1).max()).item()
assert norm_change < 1e-5
assert torch.equal(q_rot[:, 0], q[:, 0])
print("largest change of a head vector's norm, relative to the largest norm, < 1e-5: True")
print("position 0 unchanged: True")

# %% [markdown]
# ## One pair, many positions
#
# To see the rotation, take one real query, that of the token " Paris" (its last token, if the
# tokenizer splits the word) in head 0, and pretend it sits at positions 0, 1, 2, ... 15 in turn.
# Each panel follows one pair of its dimensions, chosen by its relative index $2j/d$ so that the
# same panels make sense for any `head_dim`: pair 0 ($\theta_0 = 1$, one radian per step), pair
# $d/16$ ($2j/d = 1/8$, $\theta = b^{-1/8}$) and pair $d/4$ ($2j/d = 1/2$, $\theta = b^{-1/2}$).
# For the bundled model's $b$ = 100,000 the last two are 0.237 and 0.0032 radians per step: the
# third pair hardly moves in 15 steps. The cell prints the values for the model loaded, from its
# own table (with Llama 3.1's scaling, a slow pair turns slower than the formula says).

# %%
paris = len(tok.encode("The capital of France is Paris")) - 1  # position of " Paris"
france = len(tok.encode("The capital of France")) - 1  # position of " France"
one_query = q[0, paris, 0]  # [head_dim], before RoPE
positions = torch.arange(16)
copies = one_query.cpu().expand(1, 16, 1, args.head_dim)  # the same vector at 16 positions
table16 = model.freqs_cis(model.device)[:16].cpu()  # [16, head_dim/2]
moved = my_rotary(copies, table16)[0, :, 0]  # [16, head_dim]
theta_model = model_inv_freq(args)  # [head_dim/2], the frequencies the model uses
PAIRS = [0, args.head_dim // 16, args.head_dim // 4]

fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
for ax, j in zip(axes, PAIRS):
    px, py = moved[:, 2 * j], moved[:, 2 * j + 1]
    r = float(torch.hypot(px[0], py[0]))
    ax.add_patch(plt.Circle((0, 0), r, fill=False, color="0.8"))
    ax.scatter(px, py, c=positions, cmap="viridis", s=25, zorder=3)
    for m in ([0, 1, 2, 3, 15] if 15 * theta_model[j] > 1 else [0, 15]):
        ax.annotate(str(m), (px[m], py[m]), textcoords="offset points", xytext=(4, 4),
                    fontsize=9)
    ax.set(aspect="equal", xlim=(-1.25 * r, 1.25 * r), ylim=(-1.25 * r, 1.25 * r),
           xlabel=f"dimension {2 * j}", ylabel=f"dimension {2 * j + 1}",
           title=f"pair {j}: θ = {theta_model[j]:.3g} rad/position")
    ax.tick_params(labelsize=9)
    print(f"pair {j:>2} (2j/d = {2 * j / args.head_dim:.3f}): b^(-2j/d) = {theta[j]:.3g}, "
          f"the model's θ_j = {theta_model[j]:.3g}; turned {15 * theta_model[j]:.3g} rad "
          f"in 15 steps")
fig.suptitle(f"Query of {piece(ids[paris])!r} (layer 0, head 0) placed at positions 0-15",
             fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The relative-position property, checked
#
# Take the query of " Paris" (head 0) and the key of " France" (key/value head 0, the one head 0
# reads, as chapter 6 explains). Put the query at position $m$ and the key at position $n$, then
# shift both by the same $s$. By the last equation of "The idea" the score must not change.

# %%
q_vec, k_vec = q[0, paris, 0], k[0, france, 0]  # [head_dim] each, before RoPE
big_table = model.freqs_cis(model.device).cpu()  # [max_seq_len, head_dim/2]


def score_at(m, n):
    """(q rotated to position m) · (k rotated to position n)."""
    qm = my_rotary(q_vec.cpu()[None, None, None], big_table[m : m + 1])
    kn = my_rotary(k_vec.cpu()[None, None, None], big_table[n : n + 1])
    return (qm * kn).sum().item()


m, n = paris, france
print(f"query {piece(ids[m])!r} at m = {m}, key {piece(ids[n])!r} at n = {n}, m - n = {m - n}")

# %% [markdown]
# In float32 the angle $p\,\theta_j$ at position $p$ is rounded by up to half a unit in its last
# place, about $p \cdot 2^{-24}$ radians, so the angle between a rotated query and a rotated key
# is off by up to about $p \cdot 2^{-23}$, and no score can move by more than $|q|\,|k|$ times
# that; at positions up to about 5,000 it is below $6 \cdot 10^{-4}$. So we compare the scores
# relative to $|q|\,|k|$, the largest a dot product of these two vectors can be, and allow
# $10^{-3}$, with shifts that stay inside the model's context.

# %%
reference_score = score_at(m, n)
scale = (q_vec.norm() * k_vec.norm()).item()
print(f"score at (m, n) = ({m}, {n}): {reference_score:.2f}; |q|·|k| = {scale:.1f}")
for s in [s for s in (1, 7, 100, 1000, 5000) if m + s < args.max_seq_len]:
    rel = abs(score_at(m + s, n + s) - reference_score) / scale
    assert rel < 1e-3
    print(f"shift s = {s:4d}: |score(m+s, n+s) - score(m, n)| / (|q||k|) < 1e-3: True")

# %% [markdown]
# Changing the *distance* does change the score. The same two vectors, with the key 0 to 9
# positions before the query:

# %%
for distance in range(10):
    print(f"m - n = {distance}: score {score_at(100 + distance, 100):7.2f}")

# %% [markdown]
# The same query and key, to move by hand: the page rotates each pair of the two vectors by its
# own angle, the model's $\theta_j$ times the position, and shows the score $q_m \cdot k_n$. Move
# the key's position and the query follows at the same distance: the arrows turn, the score does
# not. Change the distance and the score moves along a curve, the one the previous cell printed
# for distances 0 to 9.

# %%
from annotated_llama import explorers  # noqa: E402

rope_explorer = explorers.rope(q_vec, k_vec, theta_model, q_text=piece(ids[paris]),
                               k_text=piece(ids[france]), max_pos=min(args.max_seq_len - 1, 1024),
                               max_distance=min(32, args.max_seq_len - 1), pairs=PAIRS)
print(rope_explorer.summary)
for distance in (0, 3, 9):  # the page's reference: float64 complex numbers from the stored vectors
    at_100 = explorers.rope_score(rope_explorer.data, 100 + distance, 100)
    at_0 = explorers.rope_score(rope_explorer.data, distance, 0)  # the same distance, both moved by 100
    assert abs(at_100 - at_0) < 1e-6 * scale and abs(at_100 - score_at(100 + distance, 100)) < 1e-3 * scale
    print(f"m - n = {distance}: score {at_100:7.2f} (stored vectors), {score_at(100 + distance, 100):7.2f} (model)")

# %% tags=["remove-input", "nbval-ignore-output"]
rope_explorer

# %% [markdown]
# The same check on every head and every pair of tokens of the sentence at once: rotate all
# queries and keys as if the sentence started at position 1000 instead of 0, and compare the full
# score matrices of each query head with the key/value head it reads.

# %%
start = min(1000, args.max_seq_len - seq)
shifted_freqs = big_table[start : start + seq].to(model.device)
q_far, k_far = my_rotary(q, shifted_freqs), my_rotary(k, shifted_freqs)
n_rep = args.n_heads // args.n_kv_heads


def scores(q_, k_):  # [1, seq, heads, hd] -> [heads, seq, seq]
    k_ = k_.repeat_interleave(n_rep, dim=2)
    return torch.einsum("bqhd,bkhd->hqk", q_, k_)


scale_all = q.norm(dim=-1).max() * k.norm(dim=-1).max()
rel = ((scores(q_rot, k_rot) - scores(q_far, k_far)).abs().max() / scale_all).item()
assert rel < 1e-3
print(f"all {args.n_heads} heads, {seq}x{seq} scores, shift {start}:",
      "max diff / max |q||k| < 1e-3: True")

# %% [markdown]
# ## Long-range decay
#
# Su et al. point out a second property {cite}`su2021roformer`: if every pair of $q$ and $k$
# contributed the same amount, the score would be proportional to $\sum_j e^{i(m-n)\theta_j}$,
# and the size of that sum shrinks as the distance grows, because the pairs' phases spread out
# over the circle. We plot its modulus, divided by $d/2$ so that distance 0 gives 1, for the
# three bases (with $d = 128$ as in Llama 2 and 3).

# %%
def smooth(values, rel=0.1):
    """Mean of values[t - rel·t : t + rel·t] for every t: a window that widens with t."""
    c = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)])
    t = torch.arange(len(values))
    lo, hi = (t - rel * t).long(), torch.clamp((t + rel * t).long() + 1, max=len(values))
    return (c[hi] - c[lo]) / (hi - lo)


distances = torch.arange(0, 20001, dtype=torch.float64)  # [20001]
fig, ax = plt.subplots(figsize=(8, 4))
decay = {}
for (label, base), colour in zip(BASES.items(), ["C0", "C1", "C2"]):
    phases = distances[:, None] * inv_freq(128, base)[None, :]  # [distances, 64]
    unit = torch.polar(torch.ones_like(phases), phases)  # e^{i(m-n)θ_j}
    decay[label] = unit.mean(-1).abs()  # |Σ_j e^{i(m-n)θ_j}| / 64
    ax.plot(distances[1:], decay[label][1:], lw=0.5, alpha=0.3, color=colour)
    ax.plot(distances[1:], smooth(decay[label])[1:], lw=2, color=colour, label=label)
    row = ", ".join(f"{int(t)}: {decay[label][t].item():.2f}" for t in [1, 10, 100, 1000, 10000])
    print(f"{label:>22}  {row}")
ax.set(xscale="log", xlabel="distance m - n (positions)",
       ylabel="|Σ_j exp(i(m-n)θ_j)| / (d/2)",
       title="RoPE's long-range decay (d = 128; thick: mean over ±10% of the distance)")
ax.title.set_fontsize(10)
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# The exact curves (thin) wiggle: the decay is not monotonic. And real queries and keys are far
# from "every pair contributing the same", so this is a tendency, not a rule. A larger base keeps
# more pairs nearly still at a given distance and so decays more slowly: at distance 1000 the
# sum is 0.51 of its maximum for Llama 3's base and 0.23 for Llama 2's.

# %% [markdown]
# ## The other layout: rotate-half
#
# Meta's code, and this package, pair dimension $2j$ with $2j+1$: neighbours, interleaved.
# Hugging Face transformers pairs dimension $j$ with $j + d/2$: the first half of each head with
# the second half. Its `rotate_half` maps a head vector $(x_{\text{first}}, x_{\text{second}})$ to
# $(-x_{\text{second}}, x_{\text{first}})$, and `apply_rotary_pos_emb` computes
#
# $$
# q' = q \odot \cos + \operatorname{rotate\_half}(q) \odot \sin,
# $$
#
# with `cos` and `sin` of shape `[batch, seq, head_dim]` holding the angles $m\theta_j$ twice, once
# for each half. That is the same rotation, applied to different pairs of dimensions.
#
# The two layouts give the same attention scores if the *weights* are stored differently: reorder
# the rows of each head of `wq` and `wk` so that row $2j$ moves to $j$ and row $2j+1$ to $j + d/2$.
# Then the numbers that Meta's layout rotates together as a pair land exactly where rotate-half
# expects them. Converting a Meta checkpoint to Hugging Face applies this permutation; our loaders
# undo it when they read a Hugging Face checkpoint. Here it is as an index, built by hand:

# %%
hd = args.head_dim
# HF row r of a head is Meta row order[r]: first the even rows, then the odd ones
order = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
print("first rows of a head in HF order come from Meta rows:", order[:4].tolist(), "...",
      order[hd // 2 : hd // 2 + 4].tolist(), "...")


def to_hf_rows(w, n_heads):
    return w.view(n_heads, hd, -1)[:, order].reshape(n_heads * hd, -1)  # [n_heads*hd, dim]


wq_hf, wk_hf = to_hf_rows(wq, args.n_heads), to_hf_rows(wk, args.n_kv_heads)

# %% [markdown]
# It is the package's `permute_meta_to_hf`:

# %%
Markdown(f"```python\n{inspect.getsource(al.weights.permute_meta_to_hf)}```")

# %%
assert torch.equal(wq_hf, al.weights.permute_meta_to_hf(wq, args.n_heads))
assert torch.equal(wk_hf, al.weights.permute_meta_to_hf(wk, args.n_kv_heads))
print("our index == permute_meta_to_hf, for wq and wk: True")

# %% [markdown]
# It is also how `as_transformers` shows our `wq` and `wk` to transformers: its `q_proj.weight` is
# our `wq` seen through this permutation. Comparing those weights would compare the function with
# itself. The real test is what transformers *does* with them: its own rotary table
# `hf.model.rotary_emb` (which returns `cos` and `sin` for the given positions, with the scaling
# of the configuration) and its own `apply_rotary_pos_emb`, in transformers' heads-first layout
# `[batch, heads, seq, head_dim]`. Were the permutation wrong, rotate-half would turn the wrong
# pairs of dimensions and the results below would differ. (The tests also load the bundled GGUF
# with transformers' own converter, whose q/k permutation is its own.)

# %%
sa = hf.model.layers[0].self_attn
position_ids = torch.arange(seq, device=model.device)[None]  # [1, seq]
cos, sin = hf.model.rotary_emb(xf, position_ids)  # [1, seq, head_dim] each, float32
q_hf = (xf @ sa.q_proj.weight.float().T).view(1, seq, args.n_heads, hd).transpose(1, 2)
k_hf = (xf @ sa.k_proj.weight.float().T).view(1, seq, args.n_kv_heads, hd).transpose(1, 2)
q_hf_rot, k_hf_rot = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)  # [1, heads, seq, head_dim]
print("cos:", tuple(cos.shape), " q_hf_rot:", tuple(q_hf_rot.shape),
      " k_hf_rot:", tuple(k_hf_rot.shape))
for half in (cos[0, :, : hd // 2], cos[0, :, hd // 2 :]):
    check_close(half, freqs.real.float(), torch.float32, "transformers' cos")
print("cos holds our angles twice (float32 tolerance): True")

# %% [markdown]
# Our rotated queries and keys, with each head's dimensions put in the Hugging Face order, equal
# transformers' rotated queries and keys:

# %%
q_ours_hf = q_rot.transpose(1, 2)[..., order]  # [1, n_heads, seq, head_dim], HF dimension order
k_ours_hf = k_rot.transpose(1, 2)[..., order]
check_close(q_ours_hf, q_hf_rot, torch.float32, "rotated q, HF order")
check_close(k_ours_hf, k_hf_rot, torch.float32, "rotated k, HF order")
print("q and k, ours (permuted) vs transformers': within the float32 tolerance: True")

# %% [markdown]
# Since a permutation of dimensions applied to both $q$ and $k$ leaves their dot product alone, the
# attention scores agree too:

# %%
right = scores(q_rot, k_rot)  # [n_heads, seq, seq]
hf_scores = scores(q_hf_rot.transpose(1, 2), k_hf_rot.transpose(1, 2))
check_close(right, hf_scores, torch.float32, "attention scores")
print("attention scores, Meta layout vs HF layout: within the float32 tolerance: True")

# %% [markdown]
# So a checkpoint is tied to one RoPE layout. Give Meta's interleaved RoPE the Hugging Face row
# order without undoing the permutation, and every head rotates the wrong pairs of dimensions.
# Nothing raises an error, but the scores change:

# %%
q_mixed = my_rotary((xf @ wq_hf.T).view(1, seq, args.n_heads, hd), freqs)  # wrong layout
k_mixed = my_rotary((xf @ wk_hf.T).view(1, seq, args.n_kv_heads, hd), freqs)
err = ((scores(q_mixed, k_mixed) - right).abs().max() / right.abs().max()).item()
assert err > 100 * RELATIVE_TOLERANCE[torch.float32]  # far outside rounding
print(f"layout mismatch: largest score error / largest score = {err:.2f}")

# %% [markdown]
# ## What we have now
#
# - The RoPE table `model.freqs_cis(device)`: complex64 `[max_seq_len, head_dim/2]` (for the
#   bundled model `[8192, 32]`), computed once from `rope_theta`, and, for Llama 3.1 and later,
#   with the slow pairs slowed by the checkpoint's factor (checked against transformers).
# - Queries `[batch, seq, n_heads, head_dim]` and keys `[batch, seq, n_kv_heads, head_dim]` of
#   layer 0, rotated by `apply_rotary_emb` with the rows `start_pos : start_pos + seq` of the
#   table; their dot products depend on positions only through $m - n$ (checked on real vectors
#   to 1e-3 of $|q||k|$ for shifts up to 5000 where the context allows).
# - The bridge to Hugging Face checkpoints: `permute_meta_to_hf` / `unpermute_hf` on `wq` and
#   `wk`, checked to give the same rotated q and k as transformers' rotate-half code.
#
# Chapter 6 uses these rotated queries and keys: scores, the causal mask, softmax, the values,
# and how query heads share key/value heads (9 query heads and 3 key/value heads in the bundled
# model).
