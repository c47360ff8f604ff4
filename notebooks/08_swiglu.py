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
# # 8. SwiGLU feed-forward
#
# After attention (chapters 6 and 7), each position's vector has gathered information from the
# positions before it and added it to the {term}`residual stream <Residual stream>`. The second
# sub-layer of the block, the feed-forward network (FFN), works on every position separately: it
# reads a normalised copy of the residual stream, $x = \operatorname{RMSNorm}(h)$
# ({term}`RMSNorm`), and adds its output back.
#
# The original transformer used two matrices with a ReLU between them,
# $W_2 \operatorname{ReLU}(W_1 x)$ {cite}`vaswani2017attention`. LLaMA uses {term}`SwiGLU`
# {cite}`shazeer2020glu`: a gated linear unit {cite}`dauphin2017glu` with the {term}`SiLU` (or
# Swish) activation {cite}`hendrycks2016gelu,ramachandran2017swish`. Two projections of $x$ go up to a
# hidden size $d_\text{ff}$; one of them, the gate, passes through SiLU and multiplies the other
# element by element; a third matrix projects the product back down to $d$:
#
# $$
# \operatorname{FFN}(x) = W_2\big(\operatorname{SiLU}(W_1 x) \odot W_3 x\big), \qquad
# \operatorname{SiLU}(z) = z\,\sigma(z) = \frac{z}{1 + e^{-z}} .
# $$
#
# In Meta's names, which the package keeps, $W_1$ is the gate, $W_3$ the up projection and $W_2$
# the down projection (transformers calls them `gate_proj`, `up_proj` and `down_proj`). This
# chapter builds the FFN of layer 0 from these three matrices, checks it against the package and
# against transformers, looks at what the gate does on real tokens, and explains where the hidden
# size, 11008 for Llama-2-7B, comes from.

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
import torch.nn.functional as F
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.config import ModelArgs
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference only: no autograd graph anywhere in this chapter
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no widgets

# %% [markdown]
# The model is the bundled SmolLM2-135M unless you change the next cell: a Hugging Face id, a
# local directory or a GGUF file. In 16 bits the weights take parameters × 2 bytes:
# `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B` (gated,
# about 2.3 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf` (12.55 GiB) and
# `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the full table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# We load our model, in the device and dtype that `al.load` picked (CPU and float32 here; on a
# GPU bfloat16, or float16 where bfloat16 is not native), and transformers' `LlamaForCausalLM`
# built around the same tensors (`as_transformers`: one copy of the weights). The two share the
# weights as our loader read them; transformers' MLP code is its own. The bundled model's
# matrices are 4-bit ({term}`Q4_1`) in its GGUF file, dequantized to float32 at load.

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
hf = as_transformers(model)
a = model.args
print(f"{model.device.type}, {model.dtype}; tolerance {RELATIVE_TOLERANCE[model.dtype]:.2g}")
print(f"dim {a.dim}, ffn hidden size {a.ffn_dim}, n_layers {a.n_layers}")


def show(obj):
    """Render the package's source of ``obj`` as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


# %% [markdown]
# ## The input: layer 0 after attention
#
# The FFN of layer 0 reads `ffn_norm(h)`, where `h` is the residual stream after the attention
# sub-layer. We catch both with forward pre-hooks, which see a module's inputs just before it
# runs, while the model processes a sentence.

# %%
text = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all."
ids = torch.tensor([tok.encode(text)], device=model.device)  # [1, seq]
caught = {}
block = model.layers[0]
hooks = [
    block.ffn_norm.register_forward_pre_hook(lambda m, args: caught.__setitem__("h", args[0])),
    block.feed_forward.register_forward_pre_hook(lambda m, args: caught.__setitem__("x", args[0])),
]
model(ids, last_only=True)  # only what the hooks catch is needed, not the logits
for hook in hooks:
    hook.remove()
h, x = caught["h"], caught["x"]  # [1, seq, dim] each
print("tokens:", ids.shape[1], "| h:", tuple(h.shape), "| x = ffn_norm(h):", tuple(x.shape))
assert torch.equal(model.layers[0].ffn_norm(h), x)

# %% [markdown]
# ## SwiGLU in plain PyTorch
#
# Three weight matrices, stored as `nn.Linear` weights `[out_features, in_features]`, and the
# SiLU written out as $z \cdot \sigma(z)$. We compute in float32, whatever dtype the model
# runs in.

# %%
ffn = model.layers[0].feed_forward
W1, W2, W3 = ffn.w1.weight.float(), ffn.w2.weight.float(), ffn.w3.weight.float()
print("w1 (gate):", tuple(W1.shape), " w3 (up):", tuple(W3.shape), " w2 (down):", tuple(W2.shape))
assert W1.shape == W3.shape == (a.ffn_dim, a.dim) and W2.shape == (a.dim, a.ffn_dim)

xf = x.float()
gate = xf @ W1.T  # [1, seq, ffn_dim]
up = xf @ W3.T  # [1, seq, ffn_dim]
act = gate * torch.sigmoid(gate)  # SiLU(gate): [1, seq, ffn_dim]
hidden = act * up  # the gated hidden vector: [1, seq, ffn_dim]
ours = hidden @ W2.T  # back down: [1, seq, dim]
print("hidden:", tuple(hidden.shape), "-> output:", tuple(ours.shape))

# %% [markdown]
# The package's `FeedForward` is the same line, with PyTorch's fused `F.silu`:

# %%
show(al.model.FeedForward)

# %% [markdown]
# The check, against the package's module and against transformers' `LlamaMLP` of layer 0
# (`hf.model.layers[0].mlp`, whose `gate_proj`, `up_proj` and `down_proj` are our `w1`, `w3`
# and `w2` tensors), on the same input. Both run in the model's dtype; `check_close` asserts a
# relative difference within that dtype's tolerance.

# %%
package = ffn(x)
reference = hf.model.layers[0].mlp(x)
tol = RELATIVE_TOLERANCE[model.dtype]
check_close(package, ours, model.dtype, "package FeedForward vs plain PyTorch")
check_close(reference, ours, model.dtype, "transformers' mlp vs plain PyTorch")
print(f"plain PyTorch vs package FeedForward: within {tol:.2g} (relative): True")
print(f"plain PyTorch vs transformers' mlp:   within {tol:.2g} (relative): True")
print(f"largest output value, for scale: {ours.abs().max().item():.1f}")

# %% [markdown]
# ## SiLU, ReLU and GELU
#
# SiLU is a smooth ReLU: close to $z$ for large positive $z$, close to 0 for large negative
# $z$, and, unlike ReLU, slightly negative in between, with a minimum below zero. GELU,
# $z\,\Phi(z)$ with $\Phi$ the normal CDF {cite}`hendrycks2016gelu`, has the same shape with a
# steeper transition.

# %%
z = torch.linspace(-6, 4, 1001)
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(z, F.relu(z), label="ReLU(z) = max(0, z)", lw=2, color="0.6")
ax.plot(z, F.gelu(z), label="GELU(z) = z Φ(z)", lw=2, ls="--")
ax.plot(z, F.silu(z), label="SiLU(z) = z σ(z)", lw=2)
ax.axhline(0, color="k", lw=0.5)
ax.set(xlabel="z (pre-activation)", ylabel="activation", ylim=(-0.6, 4),
       title="SiLU, the gate's activation in LLaMA, against ReLU and GELU")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=9)
i = F.silu(z).argmin()
print(f"{len(z)} points from z = {z[0]:.0f} to {z[-1]:.0f}")
print(f"SiLU minimum: {F.silu(z)[i].item():.3f} at z = {z[i].item():.2f}; "
      f"SiLU(4) = {F.silu(torch.tensor(4.0)):.3f}, GELU(4) = {F.gelu(torch.tensor(4.0)):.3f}")
plt.show()

# %% [markdown]
# ## The gate at work
#
# In SwiGLU the activation does not act on the value that is passed on; it sets how much of it
# passes. For hidden unit $i$ the product is $\operatorname{SiLU}(g_i) \cdot u_i$ with
# $g = W_1 x$ and $u = W_3 x$: where the gate's pre-activation $g_i$ is clearly negative,
# $\operatorname{SiLU}(g_i)$ is near 0 and the unit is off, whatever $u_i$ says; where it is
# positive, the unit passes $u_i$ scaled by about $g_i$, with either sign.
#
# Below, every (token, hidden unit) pair of layer 0 on our sentence: on the left the distribution
# of the gate $\operatorname{SiLU}(g_i)$, on the right the gate against the up projection $u_i$.

# %%
g_act = act[0].flatten().cpu()  # SiLU(w1 x) for every token and unit: [seq * ffn_dim]
u_val = up[0].flatten().cpu()  # w3 x: [seq * ffn_dim]
pick = torch.randperm(g_act.numel(), generator=torch.Generator().manual_seed(0))[:20000]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
ax1.hist(g_act, bins=120, color="C0")
ax1.set(yscale="log", xlabel="gate SiLU(w1 x)", ylabel="count (token, unit pairs)",
        title="Gate activations, layer 0")
ax2.scatter(g_act[pick], u_val[pick], s=2, alpha=0.3, color="C1")
ax2.set(xlabel="gate SiLU(w1 x)", ylabel="up projection w3 x",
        title="Gate vs up projection (20,000 random pairs)")
for ax in (ax1, ax2):
    ax.grid(True, alpha=0.3)
fig.tight_layout()
print(f"{g_act.numel():,} (token, unit) pairs; gate from {g_act.min():.3f} to {g_act.max():.1f}; "
      f"{len(pick):,} of them in the scatter plot")
plt.show()

# %% [markdown]
# In the bundled model most gates sit in a narrow band around zero, the negative side bounded by
# SiLU's minimum (-0.278); a few reach out to 3.4. How many units does the gate switch off? A ReLU would zero every unit with a
# negative pre-activation. SiLU does not: a negative $g_i$ gives a small negative factor, which
# still passes $u_i$, damped and with its sign flipped. We count the units that are effectively
# off, those whose gate is below 1% of the largest gate magnitude at the same token, and compare
# with the share of negative pre-activations.

# %%
def fraction_off(act):
    """Per token, the fraction of hidden units with |SiLU(gate)| < 0.01 of that token's largest."""
    mag = act.abs()  # [..., seq, ffn_dim]
    off = mag < 0.01 * mag.amax(dim=-1, keepdim=True)
    return off.float().mean(dim=-1)  # [..., seq]


off0 = fraction_off(act[0])  # [seq]
print(f"layer 0, {a.ffn_dim} hidden units, {len(off0)} tokens")
negative = (gate < 0).float().mean().item()
print(f"negative pre-activations w1 x: {100 * negative:.0f}% of all (token, unit) pairs")
print(f"units off per token: {100 * off0.mean().item():.0f}% on average, "
      f"from {100 * off0.min().item():.0f}% to {100 * off0.max().item():.0f}%")

# %% [markdown]
# So, in the bundled model, the gate of layer 0 is not a sparse on/off switch: at a typical token
# 11% of the units are off, far fewer than the 38% that have a negative pre-activation. It is a
# soft, signed weight per unit and per token. The same count in every layer, from hooks on each
# layer's `w1` (the gates of layer 0 that the hook catches, in the model's dtype, are checked
# against ours):

# %%
gates = {}
hooks = [
    layer.feed_forward.w1.register_forward_hook(
        lambda m, inp, out, i=i: gates.__setitem__(i, F.silu(out.float())))
    for i, layer in enumerate(model.layers)
]
model(ids, last_only=True)
for hook in hooks:
    hook.remove()
check_close(gates[0], act, model.dtype, "layer 0's gates, hooked vs ours")
off = torch.stack([fraction_off(gates[i][0]) for i in range(a.n_layers)])  # [n_layers, seq]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(100 * off.mean(1).cpu(), "o-", label="mean over tokens")
ax.fill_between(range(a.n_layers), 100 * off.amin(1).cpu(), 100 * off.amax(1).cpu(), alpha=0.25,
                label="min to max over tokens")
ax.set(xlabel="layer", ylabel="units off (%)", ylim=(0, 100),
       title="Hidden units with |SiLU(gate)| < 1% of the token's largest")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=9)
mean_off, max_off = 100 * off.mean(1), 100 * off.amax(1)  # [n_layers] each, %
print(f"{a.n_layers} layers: mean over tokens from {mean_off.min():.0f}% to {mean_off.max():.0f}%; "
      f"max over tokens from {max_off.min():.0f}% to {max_off.max():.0f}% "
      f"(layer {int(max_off.argmax())})")
plt.show()

# %% [markdown]
# In the bundled model the average over tokens stays between 3% and 22% in every layer, but the
# maximum spikes in a few layers, up to 93% in layer 11. Which token is that?

# %%
worst_layers = off.amax(1).topk(min(3, a.n_layers)).indices.sort().values.tolist()
for i in worst_layers:
    t = int(off[i].argmax())
    big = gates[i][0].abs().amax(-1)  # the largest gate at each token: [seq]
    others = torch.cat([big[:t], big[t + 1 :]]).median().item()
    piece = tok.decode(ids[0, t : t + 1].tolist())
    print(f"layer {i:2d}: token {t} ({piece!r}) has {100 * off[i, t].item():.0f}% "
          f"off; largest gate {big[t].item():.1f} (other tokens: median {others:.1f})")

# %% [markdown]
# In the bundled model all three spikes come from the first token, "The". There, in these
# layers, a few hidden units take gate values many times larger than at the other tokens (the
# printed largest gate against the median of the others), so 1% of that maximum is a high bar
# and most units fall below it. This is one face of the
# {term}`massive activations <Massive activation>` that LLaMA-style models keep on the first
# token {cite}`sun2024massive`; chapter 10 looks at them in the residual stream. These are the
# gates of the 4-bit quantized weights: quantization could shift such extreme values, although
# it cannot create the contrast between the first token and the others by itself.

# %% [markdown]
# ## Why 2/3 · 4d
#
# A transformer's classic FFN has two matrices, $d \times 4d$ and $4d \times d$: $8d^2$
# parameters. SwiGLU has three matrices of $d \times d_\text{ff}$. To spend the same parameters,
# Shazeer's GLU variants shrink the hidden size to $\tfrac{2}{3}$ of $4d$ {cite}`shazeer2020glu`:
# $3 \cdot d \cdot \tfrac{2}{3} \cdot 4d = 8d^2$. For Llama-2-7B's $d = 4096$:

# %%
d = ModelArgs.preset("llama2-7b").dim
mlp = 2 * d * (4 * d)  # two matrices, hidden 4d
exact = 2 * 4 * d / 3  # 2/3 of 4d: not a whole number for d = 4096
swiglu = 3 * d * exact  # three matrices, hidden 2/3·4d
print(f"d = {d}: two-matrix MLP {mlp:,} parameters; SwiGLU at 2/3·4d = {exact:.2f}: {swiglu:,.0f}")
assert math.isclose(mlp, swiglu)

# %% [markdown]
# $\tfrac{2}{3} \cdot 4 \cdot 4096 = 10922.67$ is not a whole number, let alone one that matrix
# kernels like. LLaMA takes the $\tfrac{2}{3} \cdot 4d$ of the GLU paper {cite}`touvron2023llama`,
# and Meta's reference code makes it a convenient size: it truncates to an integer, then rounds
# *up* to a multiple of `multiple_of = 256`:
# $\lceil 10922 / 256 \rceil \cdot 256 = 43 \cdot 256 = 11008$. The package's `al.ffn_hidden_dim`
# is that rule:

# %%
show(al.config.ffn_hidden_dim)

# %%
by_hand = 256 * math.ceil(int(2 * 4 * d / 3) / 256)
print(f"by hand: int(2·4·{d}/3) = {int(2 * 4 * d / 3)} -> {by_hand}")
print(f"al.ffn_hidden_dim({d}, 256) = {al.ffn_hidden_dim(d, 256)}")
print(f"preset llama2-7b: ffn_dim = {ModelArgs.preset('llama2-7b').ffn_dim}")
assert by_hand == al.ffn_hidden_dim(d, 256) == ModelArgs.preset("llama2-7b").ffn_dim == 11008
extra = 3 * d * 11008 / mlp - 1
print(f"SwiGLU at 11008 has {100 * extra:.2f}% more parameters than the 4d MLP")

# %% [markdown]
# Larger models scale the hidden size further with `ffn_dim_multiplier` before rounding
# (Llama-2-70B and Llama-3 use 1.3, Llama 3.2-1B 1.5) and round to larger multiples. The rule,
# applied to each preset's `dim`, `ffn_dim_multiplier` and `multiple_of`, gives the published
# hidden sizes (the `intermediate_size` of each model's `config.json`), including TinyLlama's,
# whose config states its size instead of the rule's inputs:

# %%
PUBLISHED = {"llama2-7b": 11008, "llama2-13b": 13824, "llama2-70b": 28672, "llama3-8b": 14336,
             "llama3-70b": 28672, "llama3.2-1b": 8192, "tinyllama-1.1b": 5632}
for name, published in PUBLISHED.items():
    p = ModelArgs.preset(name)
    rule = al.ffn_hidden_dim(p.dim, p.multiple_of, p.ffn_dim_multiplier)
    print(f"{name:14} dim {p.dim:5d}  multiplier {str(p.ffn_dim_multiplier):4}  "
          f"multiple_of {p.multiple_of:4d}  -> rule {rule:5d}, published {published:5d}"
          f"  ({published / p.dim:.2f}·d)")
    assert rule == published == p.ffn_dim

# %% [markdown]
# Not every LLaMA-shaped model states the rule's inputs. The bundled SmolLM2-135M gives its
# hidden size explicitly in its config, 1536, and for its $d = 576$ that is exactly
# $\tfrac{2}{3} \cdot 4d$, no rounding needed (1536 is also 6 × 256, so Meta's rule gives the
# same). For the model loaded above, its size and what the rule gives with the inputs its
# config states (the defaults, where a Hugging Face config states only the size):

# %%
small = ModelArgs.preset("smollm2-135m")
print(f"SmolLM2-135M: dim {small.dim}: 2·4·{small.dim}/3 = {2 * 4 * small.dim / 3:g}; "
      f"ffn_dim = {small.ffn_dim}; rule with 256: {al.ffn_hidden_dim(small.dim, 256)}")
assert 2 * 4 * small.dim % 3 == 0 and 2 * 4 * small.dim // 3 == small.ffn_dim == 1536
rule = al.ffn_hidden_dim(a.dim, a.multiple_of, a.ffn_dim_multiplier)
print(f"the model loaded above: dim {a.dim}, ffn_dim {a.ffn_dim} ({a.ffn_dim / a.dim:.2f}·d); "
      f"the rule with multiple_of {a.multiple_of} and multiplier {a.ffn_dim_multiplier} "
      f"gives {rule}")

# %% [markdown]
# ## What we have now
#
# - The FFN of a block: `x = ffn_norm(h)` `[batch, seq, dim]` → gate `w1 x` and up `w3 x`
#   `[batch, seq, ffn_dim]` → `silu(gate) * up` `[batch, seq, ffn_dim]` → down `w2`
#   `[batch, seq, dim]`, added to the residual stream. For the bundled model `dim` is 576 and
#   `ffn_dim` 1536; for Llama-2-7B 4096 and 11008.
# - Our plain-PyTorch SwiGLU agrees with the package's `FeedForward` and transformers' `LlamaMLP`
#   within the tolerance of the model's dtype, on the real input of layer 0.
# - The hidden size: $\tfrac{2}{3} \cdot 4d$, scaled by `ffn_dim_multiplier` and rounded up to
#   `multiple_of` (11008 for Llama-2-7B), or stated in the config (SmolLM2).
# - The gate weights each hidden unit per token. In the bundled model it is not a sparse switch:
#   in layer 0 a typical token has 11% of its units effectively off, although 38% of the
#   pre-activations are negative; the exception is the first token, where in a few layers a few
#   huge gates dwarf the rest.
#
# With attention (chapters 6 and 7) and the FFN, every part of a block is built. Chapter 9 stacks
# the blocks into the whole model, adds the final norm and the LM head, and generates text.
