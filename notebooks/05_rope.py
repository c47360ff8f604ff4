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
# LLaMA does it with rotary position embeddings, RoPE {cite}`su2021roformer`. Nothing is added to
# the embeddings. Instead, just before the dot product, each query and key is *rotated* by an
# angle proportional to its position. Rotations preserve lengths, and the angle between two
# rotated vectors depends only on the difference of their rotations, so the score of a query at
# position $m$ and a key at position $n$ ends up depending on $m - n$ alone.
#
# This chapter builds the rotation twice (as 2-D rotation matrices and as complex
# multiplication), checks it against the package and against transformers, which uses a
# different but equivalent layout, and verifies the relative-position property on real queries
# and keys of the bundled model.

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
import math
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

import annotated_llama as al  # noqa: E402
from annotated_llama.reference import transformers_model  # noqa: E402

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %% [markdown]
# We load our model and, as the independent reference, transformers' `LlamaForCausalLM` on the
# same weights. Then we redo what the earlier chapters did: tokenize a sentence, look up the
# embeddings and apply layer 0's `attention_norm`. That is the input of the first attention
# layer, where RoPE is used for the first time.

# %%
model, tok = al.load(MODEL)
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
args = model.args
print(f"device {model.device}, dtype {model.dtype}")
print(f"dim {args.dim}, n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, "
      f"head_dim {args.head_dim}, rope_theta {args.rope_theta:g}, max_seq_len {args.max_seq_len}")

# %%
TEXT = "The capital of France is Paris, and the capital of Italy is Rome."
ids = tok.encode(TEXT)
tokens = torch.tensor([ids], device=model.device)  # [1, seq]
seq = tokens.shape[1]
x = model.layers[0].attention_norm(model.tok_embeddings(tokens))  # [1, seq, dim]
print("tokens:", [tok.decode([i]) for i in ids])
print("x:", tuple(x.shape))

# %% [markdown]
# Layer 0's query and key projections turn `x` into one query per head and one key per
# key/value head. We compute them in float32 so that the comparisons below are exact up to
# float32 rounding, whatever dtype the model runs in.

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
# the positions enter only through $m - n$.

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
for label, base in BASES.items():
    frac = torch.arange(0, 128, 2) / 128  # 2j/d
    ax.plot(frac, 2 * math.pi * base**frac, marker=".", label=label)
for context, name, shift in [(4096, "4,096 (Llama 2 context)", 0.55),
                             (8192, "8,192 (SmolLM2, Llama 3 context)", 1.45)]:
    ax.axhline(context, color="0.5", ls="--", lw=1)
    ax.text(0.01, context * shift, name, fontsize=9, color="0.35", va="center")
ax.set(yscale="log", xlabel="relative pair index 2j / d",
       ylabel="wavelength 2π / θ_j (positions)", title="RoPE wavelength of each pair of dimensions")
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
# ## `precompute_freqs_cis`
#
# The angles $m\theta_j$ do not depend on the input, so they are computed once, for every position
# up to `max_seq_len`, and stored as unit complex numbers $e^{i m\theta_j} = \cos m\theta_j + i
# \sin m\theta_j$ ("cis"). We build the table from its definition:

# %%
def my_freqs_cis(head_dim, end, base):
    freqs = inv_freq(head_dim, base).float()  # [head_dim/2]
    positions = torch.arange(end, dtype=torch.float32)  # [end]
    angles = positions[:, None] * freqs[None, :]  # [end, head_dim/2]: m·θ_j
    return torch.complex(torch.cos(angles), torch.sin(angles))  # [end, head_dim/2] complex64


table = my_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
print("table:", tuple(table.shape), table.dtype)

# %% [markdown]
# The package's version, displayed from its source:

# %%
Markdown(f"```python\n{inspect.getsource(al.model.precompute_freqs_cis)}```")

# %% [markdown]
# Both tables agree, and the model's cached table (`model.freqs_cis(device)`, built with the
# model's `head_dim`, `max_seq_len` and `rope_theta`) is the same one. Angles at large positions
# are large (up to 8191 radians here), so the cosines are only as exact as the float32 angle:
# we allow a few times 1e-4.

# %%
package_table = al.model.precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
model_table = model.freqs_cis(model.device).cpu()
diff_package = (table - package_table).abs().max().item()
diff_model = (table - model_table).abs().max().item()
print(f"ours vs precompute_freqs_cis: max abs diff < 5e-4: {diff_package < 5e-4}")
print(f"ours vs model.freqs_cis:      max abs diff < 5e-4: {diff_model < 5e-4}")
assert diff_package < 5e-4 and diff_model < 5e-4

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

# %%
diff = max((q_rot - al.model.apply_rotary_emb(q, freqs)).abs().max().item(),
           (k_rot - al.model.apply_rotary_emb(k, freqs)).abs().max().item())
print(f"2-D rotation form vs complex form: max abs diff < 1e-5: {diff < 1e-5}")
assert diff < 1e-5

# %% [markdown]
# A rotation keeps every pair's length, so each head's vector keeps its norm, and position 0 is
# not rotated at all:

# %%
norm_change = (q_rot.norm(dim=-1) - q.norm(dim=-1)).abs().max().item()
print(f"largest change of a head vector's norm < 1e-4: {norm_change < 1e-4}")
print(f"position 0 unchanged: {torch.equal(q_rot[:, 0], q[:, 0])}")

# %% [markdown]
# ## One pair, many positions
#
# To see the rotation, take one real query, that of the token " Paris" in head 0, and pretend
# it sits at positions 0, 1, 2, ... 15 in turn. Each panel follows one pair of its dimensions.
# Pair 0 turns one radian per step; pair 4 turns $b^{-1/4}$ radians and pair 12 hardly moves.

# %%
paris = ids.index(tok.encode(" Paris")[0])
one_query = q[0, paris, 0]  # [head_dim], before RoPE
positions = torch.arange(16)
copies = one_query.cpu().expand(1, 16, 1, args.head_dim)  # the same vector at 16 positions
table16 = model.freqs_cis(model.device)[:16].cpu()  # [16, head_dim/2]
moved = my_rotary(copies, table16)[0, :, 0]  # [16, head_dim]

fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
for ax, j in zip(axes, [0, 4, 12]):
    px, py = moved[:, 2 * j], moved[:, 2 * j + 1]
    r = float(torch.hypot(px[0], py[0]))
    ax.add_patch(plt.Circle((0, 0), r, fill=False, color="0.8"))
    ax.scatter(px, py, c=positions, cmap="viridis", s=25, zorder=3)
    for m in ([0, 1, 2, 3, 15] if j < 12 else [0, 15]):
        ax.annotate(str(m), (px[m], py[m]), textcoords="offset points", xytext=(4, 4),
                    fontsize=9)
    ax.set(aspect="equal", xlim=(-1.25 * r, 1.25 * r), ylim=(-1.25 * r, 1.25 * r),
           xlabel=f"dimension {2 * j}", ylabel=f"dimension {2 * j + 1}",
           title=f"pair {j}: θ = {theta[j]:.3g} rad/position")
    ax.tick_params(labelsize=9)
fig.suptitle("Query of ' Paris' (layer 0, head 0) placed at positions 0-15", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The relative-position property, checked
#
# Take the query of " Paris" (head 0) and the key of " France" (key/value head 0, the one head 0
# reads, as chapter 6 explains). Put the query at position $m$ and the key at position $n$, then
# shift both by the same $s$. By the last equation of "The idea" the score must not change.

# %%
france = ids.index(tok.encode(" France")[0])
q_vec, k_vec = q[0, paris, 0], k[0, france, 0]  # [head_dim] each, before RoPE
big_table = model.freqs_cis(model.device).cpu()  # [max_seq_len, head_dim/2]


def score_at(m, n):
    """(q rotated to position m) · (k rotated to position n)."""
    qm = my_rotary(q_vec.cpu()[None, None, None], big_table[m : m + 1])
    kn = my_rotary(k_vec.cpu()[None, None, None], big_table[n : n + 1])
    return (qm * kn).sum().item()


m, n = paris, france
print(f"m = {m}, n = {n}, m - n = {m - n}; |q|·|k| = {q_vec.norm() * k_vec.norm():.1f}")

# %% [markdown]
# Float32 angles at positions in the thousands carry errors of a few times 1e-4 radians, so we
# compare the scores relative to $|q|\,|k|$, the largest a dot product of these two vectors can be.

# %%
reference_score = score_at(m, n)
scale = (q_vec.norm() * k_vec.norm()).item()
print(f"score at (m, n) = ({m}, {n}): {reference_score:.2f}")
for s in [1, 7, 100, 1000, 5000]:
    shifted = score_at(m + s, n + s)
    rel = abs(shifted - reference_score) / scale
    print(f"shift s = {s:4d}: |score(m+s, n+s) - score(m, n)| / (|q||k|) < 1e-3: {rel < 1e-3}")
    assert rel < 1e-3

# %% [markdown]
# Changing the *distance* does change the score. The same two vectors, with the key 0 to 9
# positions before the query:

# %%
for distance in range(10):
    print(f"m - n = {distance}: score {score_at(100 + distance, 100):7.2f}")

# %% [markdown]
# The same check on every head and every pair of tokens of the sentence at once: rotate all
# queries and keys as if the sentence started at position 1000 instead of 0, and compare the full
# score matrices of each query head with the key/value head it reads.

# %%
shifted_freqs = big_table[1000 : 1000 + seq].to(model.device)
q_far, k_far = my_rotary(q, shifted_freqs), my_rotary(k, shifted_freqs)
n_rep = args.n_heads // args.n_kv_heads


def scores(q_, k_):  # [1, seq, heads, hd] -> [heads, seq, seq]
    k_ = k_.repeat_interleave(n_rep, dim=2)
    return torch.einsum("bqhd,bkhd->hqk", q_, k_)


scale_all = q.norm(dim=-1).max() * k.norm(dim=-1).max()
rel = ((scores(q_rot, k_rot) - scores(q_far, k_far)).abs().max() / scale_all).item()
print(f"all {args.n_heads} heads, {seq}x{seq} scores, shift 1000:",
      f"max diff / max |q||k| < 1e-3: {rel < 1e-3}")
assert rel < 1e-3

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
ax.set(xscale="log", xlabel="distance m - n (positions)",
       ylabel="|Σ_j exp(i(m-n)θ_j)| / (d/2)",
       title="RoPE's long-range decay (d = 128; thick: mean over ±10% of the distance)")
ax.title.set_fontsize(10)
ax.legend(fontsize=9)
plt.show()

# %%
for label, values in decay.items():
    row = ", ".join(f"{int(t)}: {values[t].item():.2f}" for t in [1, 10, 100, 1000, 10000])
    print(f"{label:>22}  {row}")

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
# It is the package's `permute_meta_to_hf`, and it reproduces the `q_proj` and `k_proj` weights
# transformers holds for this model (transformers read and dequantized the GGUF file itself):

# %%
Markdown(f"```python\n{inspect.getsource(al.weights.permute_meta_to_hf)}```")

# %%
sa = hf.model.layers[0].self_attn
print("ours == permute_meta_to_hf:",
      torch.equal(wq_hf, al.weights.permute_meta_to_hf(wq, args.n_heads))
      and torch.equal(wk_hf, al.weights.permute_meta_to_hf(wk, args.n_kv_heads)))
print("ours == transformers' q_proj, k_proj:",
      torch.equal(wq_hf, sa.q_proj.weight.float())
      and torch.equal(wk_hf, sa.k_proj.weight.float()))

# %% [markdown]
# Now the whole path on transformers' side: its `q_proj`/`k_proj` weights, its rotary table
# `hf.model.rotary_emb` (which returns `cos` and `sin` for the given positions) and its
# `apply_rotary_pos_emb`, in transformers' heads-first layout `[batch, heads, seq, head_dim]`.

# %%
positions = torch.arange(seq, device=model.device)[None]  # [1, seq]
cos, sin = hf.model.rotary_emb(xf, positions)  # [1, seq, head_dim] each, float32
q_hf = (xf @ sa.q_proj.weight.float().T).view(1, seq, args.n_heads, hd).transpose(1, 2)
k_hf = (xf @ sa.k_proj.weight.float().T).view(1, seq, args.n_kv_heads, hd).transpose(1, 2)
q_hf_rot, k_hf_rot = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)  # [1, heads, seq, head_dim]
print("cos:", tuple(cos.shape), " q_hf_rot:", tuple(q_hf_rot.shape),
      " k_hf_rot:", tuple(k_hf_rot.shape))
print("cos holds our angles twice:",
      torch.allclose(cos[0, :, : hd // 2], freqs.real.float(), atol=1e-6)
      and torch.allclose(cos[0, :, hd // 2 :], freqs.real.float(), atol=1e-6))

# %% [markdown]
# Our rotated queries and keys, with each head's dimensions put in the Hugging Face order, equal
# transformers' rotated queries and keys:

# %%
q_ours_hf = q_rot.transpose(1, 2)[..., order]  # [1, n_heads, seq, head_dim], HF dimension order
k_ours_hf = k_rot.transpose(1, 2)[..., order]
diff_q = (q_ours_hf - q_hf_rot).abs().max().item()
diff_k = (k_ours_hf - k_hf_rot).abs().max().item()
print(f"q: max abs diff < 1e-5: {diff_q < 1e-5};  k: max abs diff < 1e-5: {diff_k < 1e-5}")
assert diff_q < 1e-5 and diff_k < 1e-5

# %% [markdown]
# Since a permutation of dimensions applied to both $q$ and $k$ leaves their dot product alone, the
# attention scores are identical too:

# %%
hf_scores = scores(q_hf_rot.transpose(1, 2), k_hf_rot.transpose(1, 2))
same = (scores(q_rot, k_rot) - hf_scores).abs().max()
print(f"attention scores, Meta layout vs HF layout: max abs diff < 1e-4: {same.item() < 1e-4}")

# %% [markdown]
# So a checkpoint is tied to one RoPE layout. Give Meta's interleaved RoPE the Hugging Face row
# order without undoing the permutation, and every head rotates the wrong pairs of dimensions.
# Nothing raises an error, but the scores change:

# %%
q_mixed = my_rotary((xf @ wq_hf.T).view(1, seq, args.n_heads, hd), freqs)  # wrong layout
k_mixed = my_rotary((xf @ wk_hf.T).view(1, seq, args.n_kv_heads, hd), freqs)
right = scores(q_rot, k_rot)  # [n_heads, seq, seq]
err = ((scores(q_mixed, k_mixed) - right).abs().max() / right.abs().max()).item()
print(f"layout mismatch: largest score error / largest score = {err:.2f}")

# %% [markdown]
# ## What we have now
#
# - The RoPE table `model.freqs_cis(device)`: complex64 `[max_seq_len, head_dim/2]` (here
#   `[8192, 32]`), computed once from `rope_theta`.
# - Queries `[batch, seq, n_heads, head_dim]` and keys `[batch, seq, n_kv_heads, head_dim]` of
#   layer 0, rotated by `apply_rotary_emb` with the rows `start_pos : start_pos + seq` of the
#   table; their dot products depend on positions only through $m - n$ (checked on real vectors
#   to 1e-3 of $|q||k|$ for shifts up to 5000).
# - The bridge to Hugging Face checkpoints: `permute_meta_to_hf` / `unpermute_hf` on `wq` and
#   `wk`, checked to give the same rotated q and k as transformers (to 1e-5).
#
# Chapter 6 uses these rotated queries and keys: scores, the causal mask, softmax, the values,
# and how 9 query heads share 3 key/value heads.
