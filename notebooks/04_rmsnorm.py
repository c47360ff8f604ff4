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
# # 4. RMSNorm
#
# Chapter 3 turned the prompt into embedding vectors `x` of shape `[batch, seq, dim]`. Before
# attention reads them, every transformer block normalises them: each position's vector is
# rescaled to a standard size, then multiplied by a learned gain per dimension. LLaMA does
# this with RMSNorm {cite}`zhang2019rmsnorm`, before each of the two sub-layers of every block
# and once more before the LM head {cite}`touvron2023llama`.
#
# This chapter compares RMSNorm with the LayerNorm it replaces, builds it by hand on the real
# embeddings, checks it against the package and transformers, shows why it computes in
# float32 even when the model runs in bfloat16, and looks at the gains the model learned.

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
import warnings

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import LogNorm
import torch.nn.functional as F

import annotated_llama as al
from annotated_llama.reference import transformers_model

_ = torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %% [markdown]
# We pick up where chapter 3 stopped: the embeddings of "The capital of France is".

# %%
model, tok = al.load(MODEL)
args = model.args
PROMPT = "The capital of France is"
tokens = torch.tensor([tok.encode(PROMPT)], device=model.device)  # [batch, seq]
x = model.tok_embeddings(tokens)  # [batch, seq, dim]
print(f"device {model.device}, dtype {model.dtype}")
print("tokens", tuple(tokens.shape), "-> x", tuple(x.shape))
print(f"dim {args.dim}, norm_eps {args.norm_eps:g}")

# %% [markdown]
# ## LayerNorm and RMSNorm
#
# LayerNorm {cite}`ba2016layernorm` normalises a vector $\mathbf{x} \in \mathbb{R}^d$ by its
# own mean $\mu$ and standard deviation $\sigma$ over the $d$ coordinates, then applies a
# learned gain $\mathbf{g}$ and bias $\mathbf{b}$:
#
# $$
# \text{LayerNorm}(\mathbf{x}) = \frac{\mathbf{x} - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot
# \mathbf{g} + \mathbf{b}, \qquad
# \mu = \frac{1}{d}\sum_{i=1}^{d} x_i, \quad \sigma^2 = \frac{1}{d}\sum_{i=1}^{d} (x_i - \mu)^2.
# $$
#
# RMSNorm {cite}`zhang2019rmsnorm` drops the mean subtraction and the bias and divides by the
# root mean square instead:
#
# $$
# \text{RMSNorm}(\mathbf{x}) = \frac{\mathbf{x}}{\sqrt{\frac{1}{d}\sum_{i=1}^{d} x_i^2 + \epsilon}}
# \odot \mathbf{g}.
# $$
#
# Zhang and Sennrich's argument: what makes LayerNorm useful is that its output does not
# change when the input is scaled (re-scaling invariance); the invariance to shifting all
# coordinates by the same amount (re-centring) can go. What is left is cheaper: one reduction
# over the vector (the mean of the squares) instead of two that must run one after the other
# (the mean, then the variance around it), no subtraction, no bias. They measured running
# times 7% to 64% lower than with LayerNorm at comparable quality. Since $\text{RMS}^2 =
# \sigma^2 + \mu^2$, the two agree exactly when the mean is zero.

# %% [markdown]
# ## RMSNorm by hand
#
# The first norm the embeddings meet is the `attention_norm` of layer 0. We take its gain
# $\mathbf{g}$ and $\epsilon$ and compute in float32, whatever dtype the model runs in:

# %%
norm0 = model.layers[0].attention_norm
g = norm0.weight.float()  # [dim]
eps = norm0.eps
x32 = x.float()  # [batch, seq, dim]

mean_sq = x32.pow(2).mean(dim=-1, keepdim=True)  # [batch, seq, 1]
normed = x32 / torch.sqrt(mean_sq + eps)  # [batch, seq, dim]: RMS ~ 1
y_hand = normed * g  # [batch, seq, dim] * [dim] -> [batch, seq, dim]
print("x", tuple(x32.shape), "-> mean_sq", tuple(mean_sq.shape),
      "-> y", tuple(y_hand.shape))

# %% [markdown]
# Every position comes out with a root mean square of about 1 before the gain, however long
# its input was:

# %%
def rms(t: torch.Tensor) -> torch.Tensor:
    """Root mean square over the last dimension."""
    return t.float().pow(2).mean(dim=-1).sqrt()


pieces = [tok.decode([i]) for i in tokens[0].tolist()]
print(f"{'token':>10} {'RMS in':>8} {'RMS normed':>11} {'RMS after gain':>15}")
for p, a, b, c in zip(pieces, rms(x32)[0], rms(normed)[0], rms(y_hand)[0]):
    print(f"{p!r:>10} {a:8.4f} {b:11.4f} {c:15.4f}")

# %% [markdown]
# Not exactly 1: the embedding rows are short (an RMS near 0.1), so their mean square is
# within two orders of magnitude of $\epsilon$, and $\epsilon$ pulls the result down to
# $\sqrt{m / (m + \epsilon)}$ for a mean square $m$:

# %%
predicted = torch.sqrt(mean_sq / (mean_sq + eps))[0, :, 0]  # [seq]
print("sqrt(m / (m + eps)):", " ".join(f"{v:.4f}" for v in predicted.tolist()))
assert torch.allclose(predicted, rms(normed)[0], atol=1e-5)

# %% [markdown]
# After the gain the RMS is no longer 1: the gains of this layer are far below 1 (we look at
# them at the end of the chapter).

# %% [markdown]
# ## The package's RMSNorm
#
# The module every block uses, from `annotated_llama/model.py`:

# %%
print(inspect.getsource(al.model.RMSNorm))

# %% [markdown]
# Two details differ from our hand version: it multiplies by `rsqrt` instead of dividing by
# `sqrt` (one reciprocal per position, then multiplications), and it casts back to the input
# dtype *before* applying the gain, as Meta's implementation does. transformers'
# `LlamaRMSNorm` does the same. We build both with the same gain and $\epsilon$, in float32,
# and compare all three:

# %%
from transformers.models.llama.modeling_llama import LlamaRMSNorm

ours = al.model.RMSNorm(args.dim, eps=eps)
theirs = LlamaRMSNorm(args.dim, eps=eps)
with torch.no_grad():
    ours.weight.copy_(g.cpu())
    theirs.weight.copy_(g.cpu())

y_ours = ours(x32.cpu())  # [batch, seq, dim], float32
y_theirs = theirs(x32.cpu())
tol = 1e-6
for name, y in [("al.model.RMSNorm", y_ours), ("LlamaRMSNorm", y_theirs)]:
    diff = (y - y_hand.cpu()).abs().max().item()
    assert diff < tol
    print(f"by hand vs {name}: max abs diff < {tol:g}: True")

# %% [markdown]
# The same check on the real modules, in the model's own dtype: our layer 0 `attention_norm`
# against the `input_layernorm` of layer 0 in transformers' `LlamaForCausalLM`, loaded on the
# same weights.

# %%
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
hf_norm0 = hf.model.layers[0].input_layernorm
assert torch.equal(hf_norm0.weight, norm0.weight)
assert hf_norm0.variance_epsilon == eps
tol = 1e-6 if model.dtype == torch.float32 else 1e-2
diff = (norm0(x).float() - hf_norm0(x).float()).abs().max().item()
assert diff < tol
print(f"same gain and eps; layer 0 outputs differ by < {tol:g}: True")

# %% [markdown]
# ## LayerNorm and RMSNorm on the same vector
#
# How different are the two on real inputs? We apply both without gain or bias. The
# embeddings have a mean close to zero compared with their RMS, and the two outputs are close:

# %%
layer_norm = F.layer_norm(x32, (args.dim,), eps=eps)  # [batch, seq, dim], no g, b
rms_norm = x32 * torch.rsqrt(mean_sq + eps)  # [batch, seq, dim], no gain
mean = x32.mean(dim=-1)[0]  # [seq]
print(f"{'token':>10} {'mean / RMS':>11} {'max |LN - RMSNorm|':>19}")
gap = (layer_norm - rms_norm).abs().amax(dim=-1)[0]  # [seq]
for p, m, r, d in zip(pieces, mean, rms(x32)[0], gap):
    print(f"{p!r:>10} {m / r:+11.3f} {d:19.3f}")

# %% [markdown]
# Shift the same vectors by a constant, here half their RMS, and the two part ways. LayerNorm
# removes the shift and returns the same output as before; RMSNorm keeps it as part of the
# vector's direction and scales it along with everything else:

# %%
shifted = x32 + 0.5 * rms(x32)[..., None]  # [batch, seq, dim]
ln_shifted = F.layer_norm(shifted, (args.dim,), eps=eps)
rms_shifted = shifted * torch.rsqrt(shifted.pow(2).mean(-1, keepdim=True) + eps)
assert (ln_shifted - layer_norm).abs().max() < 1e-4
print("LayerNorm output unchanged by the shift (max diff < 1e-4): True")
print(f"RMSNorm output mean: {rms_shifted.mean(-1)[0, 0]:.3f} (first token); "
      f"max |LN - RMSNorm| = {(ln_shifted - rms_shifted).abs().max():.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
cases = [("embedding of ' France'", layer_norm, rms_norm),
         ("same vector + 0.5 RMS", ln_shifted, rms_shifted)]
for ax, (title, ln, rn) in zip(axes, cases):
    ax.scatter(ln[0, 3].cpu(), rn[0, 3].cpu(), s=6, alpha=0.6)
    ax.plot([-4, 4], [-4, 4], color="0.5", lw=0.8, ls="--", label="y = x")
    ax.set(title=title, xlabel="LayerNorm output (no gain, no bias)")
    ax.legend(fontsize=9, loc="upper left")
axes[0].set_ylabel("RMSNorm output (no gain)")
fig.suptitle(f"The {args.dim} coordinates of one vector, normalised both ways")
fig.tight_layout()
plt.show()

# %% [markdown]
# On the real embedding the points sit on the diagonal. With the shift, RMSNorm's output is a
# shifted and shrunk copy of LayerNorm's: a line of slope $\sigma / \text{RMS}$ below 1, offset
# by $\mu / \text{RMS}$. A model trained with RMSNorm never gets the re-centring for free; it
# has to learn to live without it, which LLaMA does.

# %% [markdown]
# ## Why float32 inside
#
# On a GPU the model runs in bfloat16, which keeps 8 significant bits (about 2 to 3 decimal
# digits). The package nevertheless squares and averages in float32 (`x.float()`). The reason
# is the sum inside the mean: added one at a time in bfloat16, a running sum stops growing once
# it is about 256 times larger than the terms it adds. The extreme case:

# %%
ones = torch.ones(4096, dtype=torch.bfloat16)
running = torch.zeros((), dtype=torch.bfloat16)
for v in ones:  # a kernel that accumulates in bfloat16, one term at a time
    running = running + v
print(f"4096 ones summed one at a time in bfloat16: {running.item():.0f}")
print(f"the same sum accumulated in float32: {ones.float().sum().item():.0f}")

# %% [markdown]
# Now the mean of squares of real inputs: our five embeddings, and a random vector of
# Llama-2-7B's width (4096), both stored in bfloat16. For each we compute $\frac{1}{d}\sum
# x_i^2$ three ways: in float32 (what the package does), with PyTorch's bfloat16 `mean` (which
# accumulates in float32 internally but rounds the squares and the result to bfloat16), and
# accumulating in bfloat16 one term at a time. The reference is float64.

# %%
def mean_square_bf16_running(v: torch.Tensor) -> float:
    """mean(v²) with a bfloat16 accumulator, one term at a time."""
    acc = torch.zeros((), dtype=torch.bfloat16)
    for s in v.pow(2):  # squares rounded to bfloat16
        acc = acc + s
    return (acc / v.numel()).item()


inputs = {f"embedding {p!r}": row for p, row in zip(pieces, x[0].cpu())}
generator = torch.Generator().manual_seed(0)
inputs["random, d = 4096"] = 0.1 * torch.randn(4096, generator=generator)


def relative_error(value: float, exact: float) -> str:
    error = abs(value - exact) / exact
    return "< 0.01%" if error < 1e-4 else f"{error:.1%}"


print(f"{'input (bfloat16)':>24} {'float32':>9} {'bf16 mean':>10} "
      f"{'bf16 running':>13}")
for name, v in inputs.items():
    v = v.bfloat16()
    exact = v.double().pow(2).mean().item()  # float64 reference
    values = [v.float().pow(2).mean().item(), v.pow(2).mean().item(),
              mean_square_bf16_running(v)]
    errors = [relative_error(value, exact) for value in values]
    print(f"{name:>24} {errors[0]:>9} {errors[1]:>10} {errors[2]:>13}")

# %% [markdown]
# The table shows relative errors. In float32 the error is below 0.01%. PyTorch's own
# bfloat16 `mean` is off by a few tenths of a percent from rounding alone. A kernel that
# accumulates in bfloat16 loses several percent on 576 numbers and about half the sum on 4096.
# Every coordinate of the normalised output is then off by the same factor (a mean square 10%
# too small makes the output about 5% too large). That is why Meta's code, transformers and
# gpt-fast all upcast inside the norm; the cost is small, since the norm is a tiny part of
# the work of a block.

# %% [markdown]
# ## The learned gains
#
# Each RMSNorm has its own gain vector $\mathbf{g}$ of `dim` numbers: two per block
# (`attention_norm` before attention, `ffn_norm` before the feed-forward network) and one final
# `norm`. They are initialised to 1 and trained. Stacked per layer:

# %%
gains = {
    "attention_norm": torch.stack([b.attention_norm.weight for b in model.layers]),
    "ffn_norm": torch.stack([b.ffn_norm.weight for b in model.layers]),
}  # each [n_layers, dim]
gains = {k: v.float().cpu() for k, v in gains.items()}
final = model.norm.weight.float().cpu()  # [dim]
for name, G in [*gains.items(), ("norm (final)", final[None])]:
    print(f"{name:>15} {tuple(G.shape)}: mean |g| {G.abs().mean():.3f}, "
          f"max |g| {G.abs().max():.2f}, negative {(G < 0).sum().item()}")
print(f"{2 * args.n_layers + 1} RMSNorms, {(2 * args.n_layers + 1) * args.dim:,} gains")
g0 = gains["attention_norm"][0].abs()
print(f"layer 0 attention_norm: mean |g| {g0.mean():.3f}, "
      f"|g| < 0.01 in {(g0 < 0.01).sum().item()} of {args.dim} dimensions")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
layers = torch.arange(args.n_layers)
for ax, (name, G) in zip(axes, gains.items()):
    a = G.abs()  # [n_layers, dim]
    ax.plot(layers, a.mean(1), marker=".", label="mean |g|")
    ax.plot(layers, a.median(1).values, marker=".", label="median |g|")
    ax.plot(layers, a.amax(1), marker=".", label="max |g|")
    for stat, ls in [(final.abs().mean(), "-"), (final.abs().amax(), ":")]:
        ax.axhline(stat, color="0.4", lw=0.8, ls=ls)
    ax.set(title=name, xlabel="layer")
    ax.set_yscale("log")
    ax.legend(fontsize=9)
axes[0].set_ylabel("|gain| (log scale)")
fig.suptitle("Gain statistics per layer (grey: the final norm's mean and max)")
fig.tight_layout()
plt.show()

# %% [markdown]
# In the bundled model the block gains are mostly well below 1 and grow slowly with depth
# (the `attention_norm` of layer 0 is nearly shut), and the gains of the final norm, which
# feeds the LM head, are several times larger. The overall size of a gain vector says little
# by itself: every sub-layer starts with linear maps (`wq`, `wk`, `wv`; `w1`, `w3`), so a
# common factor in $\mathbf{g}$ could equally live in those matrices. What carries
# information is how the gains differ from dimension to dimension.
#
# Which dimensions get the largest gain in each layer, and how often? And at the opposite
# end, which gains are practically zero, switching a dimension off for the sub-layer that
# reads the norm's output?

# %%
marked = set()  # dimensions to mark in the heat map below
for name, G in gains.items():
    top = G.abs().argmax(dim=1)  # [n_layers]: the dimension with the largest |g|
    counts = torch.bincount(top, minlength=args.dim)  # [dim]
    most = counts.argsort(descending=True, stable=True)[:3].tolist()
    tiny = (G.abs() < 0.01).sum(dim=0)  # [dim]: in how many layers |g| < 0.01
    off = tiny.argsort(descending=True, stable=True)[:2].tolist()
    marked.update(most[:1] + off[:1])
    print(f"{name}:")
    print("  largest |g|: " + ", ".join(
        f"dim {d} in {counts[d].item()} layers" for d in most))
    print("  |g| < 0.01:  " + ", ".join(
        f"dim {d} in {tiny[d].item()} layers" for d in off))
    flat = G.abs().flatten().topk(3)
    for v, i in zip(flat.values.tolist(), flat.indices.tolist()):
        print(f"  |g| = {v:.2f} at layer {i // args.dim}, dim {i % args.dim}")

# %% [markdown]
# The heat map shows every gain, layer by dimension, divided by the median $|g|$ of its layer
# so that the growth with depth does not hide the pattern. Columns that stand out are
# dimensions that the model treats differently in many layers; the ones named above are
# marked on the axis.

# %%
fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
for ax, (name, G) in zip(axes, gains.items()):
    ratio = G.abs() / G.abs().median(dim=1, keepdim=True).values  # [n_layers, dim]
    im = ax.imshow(ratio.clamp(0.1, 10), aspect="auto", cmap="RdBu_r",
                   norm=LogNorm(0.1, 10), interpolation="nearest")
    ax.set(title=name, ylabel="layer")
    fig.colorbar(im, ax=ax, label="|g| / median |g| of the layer")
axes[1].set_xticks(sorted(marked))
axes[1].tick_params(axis="x", labelsize=9, labelrotation=90)
axes[1].set_xlabel("dimension (ticks: the dimensions named above)")
fig.suptitle("RMSNorm gains, layer x dimension, relative to each layer's median")
plt.show()

# %% [markdown]
# A first look at why, ahead of chapter 10: the largest coordinate of the residual stream on
# our prompt, after a few layers. A dimension whose value is hundreds of times larger than the
# rest, on one token, is what Sun et al. call a massive activation {cite}`sun2024massive`.

# %%
captured = {}
hooks = [model.layers[i].register_forward_hook(
    lambda m, inputs, out, i=i: captured.__setitem__(i, out)) for i in (4, 14)]
model(tokens)
for hook in hooks:
    hook.remove()
for i, h in captured.items():
    h = h[0].float().abs()  # [seq, dim]: the residual stream after layer i
    pos, dim = divmod(h.argmax().item(), args.dim)
    print(f"after layer {i:>2}: largest |h| = {h.max():.0f} at {pieces[pos]!r}, "
          f"dim {dim}; median |h| {h.median():.2f}")
for name, G in gains.items():
    n_tiny = (G[:, dim].abs() < 0.01).sum().item()
    print(f"{name}, dim {dim}: |g| < 0.01 in {n_tiny} of {args.n_layers} layers")

# %% [markdown]
# On the bundled model the residual stream carries one enormous coordinate on the first
# token, and in most layers the feed-forward norms give that very dimension a gain near zero
# (until the last layer, whose `ffn_norm` gives it the largest gain of all, as printed above).
# The value still dominates the RMS of its position (and so shrinks every other coordinate of
# that position after the division), but the feed-forward networks do not read it. Chapter 10
# follows these massive activations through the layers.

# %% [markdown]
# ## What we have now
#
# - RMSNorm maps `[batch, seq, dim]` to `[batch, seq, dim]`: each position divided by its own
#   root mean square (computed in float32), then multiplied by a learned gain per dimension.
#   Ours matches transformers' `LlamaRMSNorm` within 1e-6 in float32.
# - For the bundled model: `x` `[1, 5, 576]` becomes `attention_norm(x)` `[1, 5, 576]`, the
#   input of the first attention layer. 61 RMSNorms in all (2 per block and the final one).
# - The gains are not all alike: the final norm's are large, the block norms' small, and a few
#   dimensions are singled out in every layer.
#
# Next, chapter 5 prepares the one ingredient attention still needs: the positions of the
# tokens, which LLaMA encodes by rotating queries and keys (RoPE).
