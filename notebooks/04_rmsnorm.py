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
# this with {term}`RMSNorm` {cite}`zhang2019rmsnorm`, before each of the two sub-layers of every
# block and once more before the {term}`LM head` {cite}`touvron2023llama`.
#
# This chapter compares RMSNorm with the LayerNorm it replaces, builds it by hand on the real
# embeddings, checks it against the package and transformers, shows why it computes in
# float32 even when the model runs in 16 bits, and looks at the gains the model learned.

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
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import LogNorm

import annotated_llama as al
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

_ = torch.manual_seed(0)
torch.set_grad_enabled(False)  # inference only: no autograd graphs
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# The bundled model is SmolLM2-135M from a {term}`GGUF` file with 4-bit (Q4_1) matrices and an
# 8-bit (Q8_0) embedding table; the norm gains this chapter looks at are stored unquantized, in
# float32. Another LLaMA is one line away: `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (2.05 GiB in 16
# bits) or `meta-llama/Llama-3.2-1B` (about 2.3 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf`
# (12.55 GiB) or `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100 (2 bytes per
# parameter; chapter 0 has the full table).
#
# We pick up where chapter 3 stopped: the embeddings of "The capital of France is".

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
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


_LETTER = tok.encode("a", bos=False)[-1:]  # decoded after a letter, a token keeps its space


def piece(i: int) -> str:
    """A token's text, leading space included (special tokens by name)."""
    return tok.decode(_LETTER + [i])[len(tok.decode(_LETTER)):] or tok.id_to_piece(i)


pieces = [piece(i) for i in tokens[0].tolist()]
print(f"{'token':>10} {'RMS in':>8} {'RMS normed':>11} {'RMS after gain':>15}")
for p, a, b, c in zip(pieces, rms(x32)[0], rms(normed)[0], rms(y_hand)[0]):
    print(f"{p!r:>10} {a:8.4f} {b:11.4f} {c:15.4f}")

# %% [markdown]
# Not exactly 1: $\epsilon$ pulls the result down to $\sqrt{m / (m + \epsilon)}$ for a mean
# square $m$. How much depends on how large $m$ is compared with $\epsilon$:

# %%
predicted = torch.sqrt(mean_sq / (mean_sq + eps))[0, :, 0]  # [seq]
ratio = (mean_sq / eps)[0, :, 0]  # [seq]
print("m / eps:            ", " ".join(f"{v:,.0f}" for v in ratio.tolist()))
print("sqrt(m / (m + eps)):", " ".join(f"{v:.4f}" for v in predicted.tolist()))
assert torch.allclose(predicted, rms(normed)[0], atol=1e-5)

# %% [markdown]
# For the bundled model the embedding rows are short (an RMS near 0.1), so their mean squares
# are only about 700 to 1,500 times $\epsilon$ (three orders of magnitude), and the normalised
# RMS falls short of 1 in the fourth decimal. After the gain the RMS is no longer 1 at all: the
# gains of this layer are far below 1 in the bundled model (we look at them at the end of the
# chapter).

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
ours.weight.copy_(g.cpu())
theirs.weight.copy_(g.cpu())

y_ours = ours(x32.cpu())  # [batch, seq, dim], float32
y_theirs = theirs(x32.cpu())
for name, y in [("al.model.RMSNorm", y_ours), ("LlamaRMSNorm", y_theirs)]:
    gap = check_close(y, y_hand.cpu(), torch.float32, name)  # asserts
    print(f"by hand vs {name}: within the float32 tolerance "
          f"({RELATIVE_TOLERANCE[torch.float32]:g} of the largest output): True")

# %% [markdown]
# The same check in the model's own dtype, on the real modules: our layer 0 `attention_norm`
# against the `input_layernorm` of layer 0 of transformers' `LlamaForCausalLM`. The book's
# reference, `as_transformers(model)`, builds that model around our tensors (one copy of the
# weights), so the gain is shared by construction; what is compared is the two RMSNorm codes.

# %%
hf = as_transformers(model)  # transformers' model on our tensors: no second copy
hf_norm0 = hf.model.layers[0].input_layernorm
assert hf_norm0.weight.data_ptr() == norm0.weight.data_ptr()  # the same gain, shared
assert hf_norm0.variance_epsilon == eps
gap = check_close(norm0(x), hf_norm0(x), model.dtype, "layer 0 RMSNorm")
print(f"layer 0 RMSNorm, ours vs transformers' code, {model.dtype}: within tolerance: True")

# %% [markdown]
# ## LayerNorm and RMSNorm on the same vector
#
# How different are the two on real inputs? We apply both without gain or bias. For the
# bundled model the embeddings have a mean close to zero compared with their RMS, and the two
# outputs are close:

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

# %% [markdown]
# One vector in detail: the last token of " France" in the prompt, every coordinate of its
# LayerNorm output against its RMSNorm output.

# %%
france = len(tok.encode("The capital of France")) - 1  # position of the token that ends " France"
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
cases = [(f"embedding of {pieces[france]!r}", layer_norm, rms_norm),
         ("same vector + 0.5 RMS", ln_shifted, rms_shifted)]
for ax, (title, ln, rn) in zip(axes, cases):
    ax.scatter(ln[0, france].cpu(), rn[0, france].cpu(), s=6, alpha=0.6)
    ax.plot([-4, 4], [-4, 4], color="0.5", lw=0.8, ls="--", label="y = x")
    ax.set(title=title, xlabel="LayerNorm output (no gain, no bias)")
    ax.legend(fontsize=9, loc="upper left")
    # the line through the points, fitted: slope and offset
    slope, offset = torch.linalg.lstsq(
        torch.stack([ln[0, france], torch.ones_like(ln[0, france])], 1), rn[0, france, :, None]
    ).solution[:, 0].tolist()
    print(f"{title}: RMSNorm = {slope:.3f} x LayerNorm {offset:+.3f}")
v = shifted[0, france]
print(f"shifted vector: sigma / RMS = {v.std(correction=0) / rms(v):.3f}, "
      f"mu / RMS = {v.mean() / rms(v):.3f}")
axes[0].set_ylabel("RMSNorm output (no gain)")
fig.suptitle(f"The {args.dim} coordinates of one vector, normalised both ways")
fig.tight_layout()
plt.show()

# %% [markdown]
# On the real embedding of the bundled model the points sit on the diagonal. With the shift,
# RMSNorm's output is a shifted and shrunk copy of LayerNorm's: a line of slope
# $\sigma / \text{RMS}$ below 1, offset by $\mu / \text{RMS}$ (the fitted line and the two ratios
# are printed above). A model trained with RMSNorm never gets the re-centring for free; it has to
# learn to live without it, which LLaMA does.

# %% [markdown]
# ## Why float32 inside
#
# On a GPU the model runs in 16 bits, and the package nevertheless squares and averages in
# float32 (`x.float()` in the source above). The two 16-bit formats are at risk in different
# ways. {term}`bf16` keeps float32's exponent range and only 8 significant bits: it rounds, but
# it cannot overflow. float16 keeps 11 significant bits but a much smaller range: its largest
# finite number is 65,504, so any number above 256 has a square that float16 cannot hold.

# %%
fp16_max = torch.finfo(torch.float16).max
print(f"largest float16 {fp16_max:,.0f}, its square root {fp16_max ** 0.5:.1f}; "
      f"largest bfloat16 {torch.finfo(torch.bfloat16).max:.2e}")
for value in [255.0, 256.0]:
    square = torch.tensor(value, dtype=torch.float16) ** 2
    print(f"{value:.0f} squared in float16: {square.item()}")

# %% [markdown]
# Are there numbers that large in a LLaMA? Not in the embeddings, but the residual stream, the
# input of every later RMSNorm, grows as it goes through the layers. We record it after every
# block on our prompt, with a forward hook per layer, and look for its largest coordinate.

# %%
captured = {}
hooks = [layer.register_forward_hook(
    lambda module, inputs, out, i=i: captured.__setitem__(i, out))
    for i, layer in enumerate(model.layers)]
model(tokens, last_only=True)  # the logits are not needed, only the hooks' captures
for hook in hooks:
    hook.remove()
resid = torch.stack([captured[i][0].float().cpu() for i in range(args.n_layers)])  # [L, seq, dim]
del captured

seq = resid.shape[1]
flat = resid.abs().argmax().item()
top_layer, top_pos, top_dim = flat // (seq * args.dim), flat // args.dim % seq, flat % args.dim
big = resid[top_layer, top_pos]  # [dim]: the position with the largest coordinate
print(f"largest |residual| {big.abs().max():,.1f}: after layer {top_layer}, "
      f"at {pieces[top_pos]!r}, dim {top_dim}")
print(f"coordinates above 256 in that vector: {(big.abs() > 256).sum().item()}; "
      f"its sum of squares {big.pow(2).sum():.3g}")

# %% [markdown]
# For the bundled model the answer is yes, by far: a single coordinate of the residual stream
# passes 22,000 (chapter 10 looks at these "massive activations"), and its square alone is about
# 5 × 10⁸. Here is that vector normalised three ways: the package's RMSNorm on the float16
# vector (squares taken in float32), the same formula computed entirely in float16, and a
# float64 reference. What happens to the sum of squares in float16 decides the outcome:

# %%
v16 = big.half()  # the vector as a float16 model would hold it
squares16 = v16 * v16  # [dim], float16
sum16 = squares16.sum()  # float16 result
rsqrt16 = torch.rsqrt(squares16.mean() + eps)  # float16
norm_fp16 = v16 * rsqrt16  # the whole RMSNorm in float16 (unit gain)
norm_pkg = al.model.RMSNorm(args.dim, eps=eps).half()(v16)  # squares in float32, output float16
reference = big.double() * torch.rsqrt(big.double().pow(2).mean() + eps)
print(f"float16 squares that overflow to inf: {torch.isinf(squares16).sum().item()} of {args.dim}")
print(f"sum of squares in float16: {sum16.item():.4g} (float64: {big.double().pow(2).sum():.4g})")
print(f"1/RMS in float16: {rsqrt16.item():.4g}")
print(f"RMSNorm all in float16: largest |output| {norm_fp16.abs().max():.4g}, "
      f"{(norm_fp16 == 0).sum().item()} of {args.dim} outputs exactly 0")
gap = check_close(norm_pkg, reference, torch.float16, "package RMSNorm")  # asserts
print(f"package RMSNorm (float32 inside): largest |output| {norm_pkg.abs().max():.4g}, "
      f"within the float16 tolerance of float64: True")
limit = 256 / args.dim**0.5  # RMS at which the sum of dim squares reaches 65,536
print(f"a float16 sum of squares overflows once the RMS exceeds 256/sqrt(dim) = {limit:.1f}")

# %% [markdown]
# For the bundled model, computed in float16 the squares of its largest coordinates are
# infinite, so are their sum and mean, the reciprocal square root is 0, and the whole position
# comes out as zeros: the token would be wiped from the input of the next sub-layer. Nothing
# needs to be exotic for this: a float16 sum of squares overflows as soon as the RMS of the
# vector passes $256/\sqrt{d}$, which is 4 for Llama-2-7B's $d = 4096$. With the squares taken
# in float32 the same float16 vector is normalised correctly; the output itself is small (at most
# $\sqrt{d}$ before the gain), so it fits float16 again.
#
# Rounding is the smaller issue. The table compares, for our embeddings and the large
# residual vector, the relative error of the mean square when the vector is held in bf16 or
# float16: computed after upcasting to float32 (the package) or in the 16-bit type itself
# (PyTorch's `mean`, which accumulates in float32 internally but rounds the squares and the
# result). The reference is float64 of the same 16-bit vector.

# %%
def relative_error(value: float, exact: float) -> str:
    error = abs(value - exact) / exact
    if error != error or error == float("inf"):
        return "inf"
    return "< 0.01%" if error < 1e-4 else f"{error:.2%}"


inputs = {f"embedding {p!r}": row for p, row in zip(pieces, x32[0].cpu())}
inputs[f"residual, layer {top_layer}, {pieces[top_pos]!r}"] = big.cpu()
print(f"{'input':>30} {'bf16->f32':>10} {'bf16':>7} {'fp16->f32':>10} {'fp16':>7}")
for name, v in inputs.items():
    errors = []
    for dtype in (torch.bfloat16, torch.float16):
        stored = v.to(dtype)  # as a 16-bit model would hold it
        exact = stored.double().pow(2).mean().item()
        errors += [relative_error(stored.float().pow(2).mean().item(), exact),
                   relative_error(stored.pow(2).mean().item(), exact)]
    print(f"{name:>30} {errors[0]:>10} {errors[1]:>7} {errors[2]:>10} {errors[3]:>7}")

# %% [markdown]
# Upcast to float32, the error stays below 0.01% in both formats. In bf16 itself the bundled
# model's mean squares are off by about 0.1% to 0.3%: each square is rounded to 8 bits before
# the sum. A scale factor off by that much would be tolerable; what float16 does to the large
# vector is not. Meta's code, transformers and gpt-fast all upcast inside the norm too, and the
# cost is small, since the norm is a tiny part of the work of a block.

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
    first, last = a.mean(1)[0].item(), a.mean(1)[-1].item()
    print(f"{name}: mean |g| {first:.3f} in layer 0, {last:.3f} in layer {args.n_layers - 1}")
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
    print(f"{name} {tuple(ratio.shape)}: |g| / median below 0.1 in {(ratio < 0.1).sum().item()}"
          f" cells, above 10 in {(ratio > 10).sum().item()}")
axes[1].set_xticks(sorted(marked))
axes[1].tick_params(axis="x", labelsize=9, labelrotation=90)
axes[1].set_xlabel("dimension (ticks: the dimensions named above)")
fig.suptitle("RMSNorm gains, layer x dimension, relative to each layer's median")
plt.show()

# %% [markdown]
# A first look at why, ahead of chapter 10: the residual stream we recorded above, at a few
# depths. A dimension whose value is hundreds of times larger than the rest, on one token, is
# what Sun et al. call a {term}`massive activation <Massive activation>`
# {cite}`sun2024massive`. Then the gains that the two norms of every block give the dimension of
# the largest value:

# %%
for i in sorted({0, args.n_layers // 4, args.n_layers // 2, top_layer, args.n_layers - 1}):
    h = resid[i].abs()  # [seq, dim]: the residual stream after layer i
    pos, dim = divmod(h.argmax().item(), args.dim)
    print(f"after layer {i:>2}: largest |h| = {h.max():8.1f} at {pieces[pos]!r}, "
          f"dim {dim}; median |h| {h.median():.2f}")
for name, G in gains.items():
    n_tiny = (G[:, top_dim].abs() < 0.01).sum().item()
    print(f"{name}, dim {top_dim}: |g| < 0.01 in {n_tiny} of {args.n_layers} layers")

# %% [markdown]
# On the bundled model the residual stream carries one enormous coordinate on the first
# token, and in most layers the feed-forward norms give that very dimension a gain near zero
# (until the last layer, whose `ffn_norm` gives it the largest gain of all, as printed above).
# The value still dominates the RMS of its position (and so shrinks every other coordinate of
# that position after the division), but the feed-forward networks do not read it. Chapter 10
# follows these massive activations through the layers. (The bundled matrices are 4-bit, so the
# sizes printed here are those of the quantized model; we have not compared them with the
# original bf16 SmolLM2.)

# %% [markdown]
# ## What we have now
#
# - RMSNorm maps `[batch, seq, dim]` to `[batch, seq, dim]`: each position divided by its own
#   root mean square (computed in float32, which float16 needs to survive the residual
#   stream's largest values), then multiplied by a learned gain per dimension. Ours matches
#   transformers' `LlamaRMSNorm` within the float32 tolerance.
# - For the bundled model: `x` `[1, 5, 576]` becomes `attention_norm(x)` `[1, 5, 576]`, the
#   input of the first attention layer. 61 RMSNorms in all (2 per block and the final one).
# - In the bundled model the gains are not all alike: the final norm's are large, the block
#   norms' small, and a few dimensions are singled out in every layer.
#
# Next, chapter 5 prepares the one ingredient attention still needs: the positions of the
# tokens, which LLaMA encodes by rotating queries and keys ({term}`RoPE`).
