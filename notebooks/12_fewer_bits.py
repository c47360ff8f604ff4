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
# # 12. Fewer bits
#
# Chapter 11 ended on one number: generating a token at batch 1 reads every weight matrix once,
# so its speed is at most the memory bandwidth divided by the bytes of weights read per token.
# That chapter removed the costs around those bytes. This one removes bytes.
#
# The bundled model has been quantized all along. Its file stores most weights as 4-bit
# integers, 5 bits per weight with the scales they share, and the package has expanded them to
# 32-bit floats as it loads (chapter 0), so every token the book generated read 5.6 times the
# bytes the file holds (the sums are below). This chapter reads the file's blocks byte by byte, looks at
# what its 4 bits cost, builds linear layers that keep their weights as 8-bit and 4-bit integers
# in memory, runs the bundled model straight from its own 4-bit numbers, and measures what each
# choice does to quality, speed and memory.

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
import collections
import contextlib
import gc
import inspect
import json
import math
import re
import statistics
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize, quantize
from IPython.display import Markdown, display

import annotated_llama as al
from annotated_llama import assets, quant
from annotated_llama.generate import generate_ids
from annotated_llama.reference import RELATIVE_TOLERANCE, relative_difference
from annotated_llama.weights import open_gguf

torch.set_grad_enabled(False)  # inference only: no autograd graphs
_ = torch.manual_seed(0)


def show(obj):
    """Render the package's source of ``obj`` as a highlighted code block."""
    return Markdown(f"```python\n{textwrap.dedent(inspect.getsource(obj))}```")


# %% [markdown]
# The model is the bundled SmolLM2-135M unless you change the next cell. Any LLaMA runs here: a
# Hugging Face id, a local directory or a GGUF file; on a GPU, `al.load` picks CUDA and bf16
# (fp16 on GPUs without native bf16). The first three sections are about a file format and always
# read the bundled GGUF file, whatever `MODEL` names; the model itself is loaded at section 4.

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# ## What the bundled file holds
#
# A {term}`GGUF` file is a header (the hyperparameters, the tokenizer) followed by the tensors,
# each stored in one of llama.cpp's types {cite}`gerganov2023llamacpp`. A quantized type cuts a
# tensor's rows into *blocks* of consecutive weights, and stores each block as a few bytes of
# shared scale followed by small integers. gguf-py, the file format's Python reader, knows each
# type's block: how many weights, how many bytes. So the bits per weight can be computed twice,
# from the block sizes and from the bytes the file actually holds, and they must agree:

# %%
GGUF_PATH = assets.asset_path(assets.SMOLLM2_GGUF)  # always the bundled file, whatever MODEL is
reader, _ = open_gguf(GGUF_PATH)
per_type = collections.defaultdict(lambda: {"tensors": 0, "weights": 0, "bytes": 0})
for t in reader.tensors:
    row = per_type[t.tensor_type.name]
    row["tensors"] += 1
    row["weights"] += int(t.n_elements)
    row["bytes"] += int(t.n_bytes)

print(f"{'type':<6}{'tensors':>8}{'weights':>13}{'bytes':>12}{'block':>16}{'bits/weight':>13}")
for name, row in sorted(per_type.items(), key=lambda item: -item[1]["weights"]):
    block_weights, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    bits = 8 * block_bytes / block_weights  # from the type's block
    # the file holds exactly that
    assert row["bytes"] * block_weights == row["weights"] * block_bytes
    print(f"{name:<6}{row['tensors']:>8}{row['weights']:>13,}{row['bytes']:>12,}"
          f"{f'{block_weights} in {block_bytes} B':>16}{bits:>13.2f}")
n_weights = sum(row["weights"] for row in per_type.values())
n_bytes = sum(row["bytes"] for row in per_type.values())
print(f"all: {n_weights:,} weights in {n_bytes:,} bytes, "
      f"{8 * n_bytes / n_weights:.2f} bits per weight; "
      f"as float32 they take {4 * n_weights:,} bytes ({4 * n_weights / n_bytes:.1f} times as many)")

# %% [markdown]
# {term}`Q4_1` holds every matrix of every layer: 32 weights in 20 bytes, a 16-bit scale $d$, a
# 16-bit minimum $m$, and 32 four-bit integers, $(2 + 2) \cdot 8 + 32 \cdot 4 = 160$ bits for
# 32 weights, 5 bits each. The token embedding, which is also the LM head (the bundled model
# ties them), is {term}`Q8_0`: 32 eight-bit integers and one 16-bit scale, 34 bytes, 8.5 bits per
# weight. The norm gains stay float32; they are 0.03% of the weights. The whole file is a
# little under a fifth of the float32 model the chapters have been running.
#
# These are llama.cpp's first block types. Its later *K-quants* {cite}`kawrakow2023kquants`
# group blocks into *super-blocks* of 256 weights that
# share one 16-bit scale (and, for the types with a minimum, one 16-bit scale for the minima);
# each block of the super-block then stores its own scale and minimum in 6 bits instead of 16.
# Q4_K spends $2 + 2$ bytes on the super-block's two scales, $8 \times (6 + 6)$ bits = 12 bytes
# on the eight blocks' scales and minima, and 128 bytes on 256 four-bit integers: 144 bytes, 4.5
# bits per weight, half a bit less than Q4_1 for the same 4-bit integers. gguf-py's table of
# block sizes, for the common types:

# %%
for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
    block_weights, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    print(f"{name:<5} {block_weights:>4} weights in {block_bytes:>4} bytes: "
          f"{8 * block_bytes / block_weights:g} bits per weight")
assert GGML_QUANT_SIZES[GGMLQuantizationType.Q4_K] == (256, 2 + 2 + 8 * (6 + 6) // 8 + 256 // 2)

# %% [markdown]
# ## One block, byte by byte
#
# A Q4_1 block stands for 32 consecutive weights $w_0 \dots w_{31}$ of one row:
#
# $$
# w_i = d \cdot q_i + m, \qquad q_i \in \{0, 1, \dots, 15\},
# $$
#
# and its 20 bytes are laid out as: bytes 0–1 the scale $d$ and bytes 2–3 the minimum $m$, both
# IEEE float16, little-endian; then 16 bytes of integers, two per byte. Byte $j$ of those 16
# holds $q_j$ in its low four bits and $q_{j+16}$ in its high four, so the low halves give the
# first 16 weights and the high halves the last 16 (not alternate weights, as one might guess).
#
# The first block of the file's first query matrix, `blk.0.attn_q.weight`, is its row 0,
# columns 0 to 31. The blocks run along a row, which is the input dimension of the layer: the
# dimension a matrix–vector product sums over. So one block's $d$ and $m$ serve one stretch of
# 32 terms of one dot product, which is what lets a kernel work on the integers and apply
# $d$ and $m$ once per block.

# %%
tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
rows, cols = (int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions fastest first
print(f"{tensor.name}: {tensor.tensor_type.name}, [{rows}, {cols}] weights; "
      f"stored as {tensor.data.dtype} {list(tensor.data.shape)}: "
      f"{cols // 32} blocks of 20 bytes per row")
raw = bytes(tensor.data[0, :20])  # row 0, columns 0..31: the first block
print("bytes:", raw.hex(" "))

# %% [markdown]
# Decoding it with nothing but numpy:

# %%
d = np.frombuffer(raw[0:2], dtype="<f2")[0]  # float16 scale
m = np.frombuffer(raw[2:4], dtype="<f2")[0]  # float16 minimum
packed = np.frombuffer(raw[4:20], dtype=np.uint8)  # [16], two 4-bit integers per byte
# [32]: low halves are q0..q15, high halves q16..q31
q = np.concatenate([packed & 0x0F, packed >> 4])
w = np.float32(d) * q.astype(np.float32) + np.float32(m)  # [32] float32 weights
print(f"d = {float(d)!r} (bytes {raw[0:2].hex()}), m = {float(m)!r} (bytes {raw[2:4].hex()})")
print("q =", q.tolist())
for i in range(0, 32, 8):
    print(f"w[{i:2}:{i + 8:2}] =", " ".join(f"{v:8.5f}" for v in w[i : i + 8]))

# %% [markdown]
# The package's decoder, `quant.decode_q4_1_block`, does the same; it must agree with ours and
# with gguf-py's own `dequantize` (written by llama.cpp's authors, independent of this book),
# both for this block and for the whole row of blocks in the file:

# %%
show(quant.decode_q4_1_block)

# %%
ours = torch.from_numpy(w)
package = quant.decode_q4_1_block(raw)
reference = torch.from_numpy(
    dequantize(np.frombuffer(raw, dtype=np.uint8)[None], GGMLQuantizationType.Q4_1))
whole = dequantize(tensor.data, GGMLQuantizationType.Q4_1)  # [rows, cols] float32, the whole matrix
assert torch.equal(package, ours) and torch.equal(reference.reshape(32), ours)
assert np.array_equal(whole[0, :32], w)
row0 = torch.cat([quant.decode_q4_1_block(bytes(tensor.data[0, 20 * b : 20 * (b + 1)]))
                  for b in range(cols // 32)])
assert torch.equal(row0, torch.from_numpy(whole[0]))
print("by hand == quant.decode_q4_1_block == gguf-py, bit for bit; "
      f"and all {cols // 32} blocks of row 0 == gguf-py's matrix, row 0")

# %% [markdown]
# A Q8_0 block is simpler: bytes 0–1 a float16 scale $d$, then 32 signed bytes $q_i$, and
# $w_i = d \cdot q_i$. No minimum: the grid is symmetric around zero. The first block of the
# token embedding (token 0, its first 32 dimensions):

# %%
embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
raw8 = bytes(embedding.data[0, :34])
d8 = np.frombuffer(raw8[0:2], dtype="<f2")[0]
q8 = np.frombuffer(raw8[2:34], dtype=np.int8)  # [32] signed
w8 = np.float32(d8) * q8.astype(np.float32)  # [32]
print(f"{embedding.tensor_type.name}; d = {float(d8)!r}; q[:8] = {q8[:8].tolist()}")
reference8 = dequantize(np.frombuffer(raw8, dtype=np.uint8)[None],
                        GGMLQuantizationType.Q8_0).reshape(32)
assert (torch.equal(quant.decode_q8_0_block(raw8), torch.from_numpy(w8))
        and np.array_equal(reference8, w8))
print("by hand == quant.decode_q8_0_block == gguf-py, bit for bit")

# %% [markdown]
# ## What 4 bits cost
#
# Every matrix the book has multiplied by, from chapter 1 to chapter 11, was these Q4_1 numbers,
# expanded to float32. How far are they from the weights SmolLM2 was trained to? That question
# needs the original 16-bit weights, which the book does not have: it fetches only the quantized
# file. The blocks still say a good deal. First, all Q4_1 blocks of the file, and their integers:

# %%
q4_1 = [t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_1]
n_blocks, both_ends, level_counts, sum_sq = 0, 0, np.zeros(16, dtype=np.int64), 0.0
scales, block_rms = [], []  # per block: the step d, and the RMS of its 32 stored weights
for t in q4_1:  # one tensor at a time: all 106 M weights at once would take gigabytes
    blocks = np.asarray(t.data).reshape(-1, 20)  # [n, 20] bytes
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32).ravel()  # [n] scale
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32).ravel()  # [n] minimum
    nibbles = blocks[:, 4:]  # [n, 16]
    levels = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1)  # [n, 32] q
    values = d[:, None] * levels + m[:, None]  # [n, 32] the stored weights
    n_blocks += len(blocks)
    both_ends += int(((levels == 0).any(axis=1) & (levels == 15).any(axis=1)).sum())
    level_counts += np.bincount(levels.ravel(), minlength=16)
    sum_sq += float((values.astype(np.float64) ** 2).sum())
    scales.append(d)
    block_rms.append(np.sqrt((values**2).mean(axis=1)))
scales, block_rms = np.concatenate(scales), np.concatenate(block_rms)  # [n_blocks] each
uses_both_ends = both_ends / n_blocks
counts = level_counts / level_counts.sum()
print(f"{len(q4_1)} Q4_1 tensors, {n_blocks:,} blocks")
print(f"blocks in which both q = 0 and q = 15 occur: {uses_both_ends:.2%}")
print("share of each q, 0..15 (%):", " ".join(f"{100 * c:.1f}" for c in counts))

# %% [markdown]
# Every block uses both ends of its range, $q = 0$ and $q = 15$. That is the mark of the
# simplest quantizer, the one llama.cpp's reference code and gguf-py implement: take the
# block's smallest weight as $m$ and its range over 15 as $d$,
#
# $$
# m = \min_i x_i, \qquad d = \frac{\max_i x_i - \min_i x_i}{15}, \qquad
# q_i = \operatorname{round}\!\left(\frac{x_i - m}{d}\right),
# $$
#
# so the smallest weight lands on 0 and the largest on 15 (up to the float16 rounding of $d$
# and $m$). That is also why the ends hold 4.0% of the integers each, more than levels 1 and
# 14 beside them: every block puts at least one weight on each end, while the rest of its
# weights crowd the middle levels, as weights shaped like a bell curve do. If that is how the file was made, applying the same quantizer to the
# stored weights must give back the very same bytes. Checked with gguf-py's quantizer on the
# blocks of the first layer:

# %%
layer0 = [t for t in q4_1 if t.name.startswith("blk.0.")]
same = all(np.array_equal(quantize(dequantize(t.data, t.tensor_type), t.tensor_type),
                          np.asarray(t.data))
           for t in layer0)
assert same
print(f"quantize(dequantize(blocks)) == blocks for all {len(layer0)} Q4_1 matrices "
      f"of layer 0: {same}")

# %% [markdown]
# So the stored weights sit exactly on their blocks' grids: a 4-bit format with the same blocks
# can hold them with no further loss, which section 5 uses. And each original weight was
# rounded to the nearest of its block's 16 levels, so it lay within $d/2$ of the stored value.
# How big is $d$? Its distribution, and against the weights it serves:

# %%
pct = [1, 50, 99]
print("step d, percentiles 1/50/99:", " ".join(f"{v:.4f}" for v in np.percentile(scales, pct)),
      f" max {scales.max():.4f}")
print("d / RMS of the block's weights, percentiles 1/50/99:",
      " ".join(f"{v:.3f}" for v in np.percentile(scales / block_rms, pct)))
mean_square = sum_sq / (32 * n_blocks)  # of all the stored weights
estimate = np.sqrt((scales.astype(np.float64) ** 2 / 12).mean() / mean_square)
print(f"estimated rounding error, RMS over RMS of the weights: {estimate:.2%}")

# %% [markdown]
# The step is a little over a quarter of the RMS of the weights in its block. If the rounding errors are spread
# evenly over $[-d/2, d/2]$, as they are when the weights are not themselves on a grid, their
# RMS is $d / \sqrt{12}$, and over all blocks that is the estimate above: the 4-bit weights
# differ from the originals by about 8% of the weights' own RMS. We can test that estimate on one
# matrix the file holds at higher precision, the 8-bit embedding: quantize its first 8,192 rows to
# Q4_1 with gguf-py and measure the error directly.

# %%
emb = dequantize(embedding.data[:8192], GGMLQuantizationType.Q8_0)  # [8192, dim] float32
emb_blocks = quantize(emb, GGMLQuantizationType.Q4_1)  # [8192, dim // 32 * 20] bytes
emb4 = dequantize(emb_blocks, GGMLQuantizationType.Q4_1)  # [8192, dim]
measured = np.sqrt(((emb4 - emb) ** 2).mean() / (emb**2).mean())
emb_d = emb_blocks.reshape(-1, 20)[:, 0:2].copy().view("<f2").astype(np.float32)
predicted = np.sqrt((emb_d**2 / 12).mean() / (emb**2).mean())
print(f"embedding to Q4_1: measured error {measured:.2%} of the RMS, "
      f"estimated from d {predicted:.2%}")

# %% [markdown]
# The estimate is close to the measurement, a little above it (the smallest and the largest
# weight of each block are stored almost exactly: only the float16 rounding of $d$ and $m$
# touches them). So about 8% is a fair figure for the
# per-weight error of this file's 4-bit matrices. What the file cannot tell us is what that
# error did to the model: the perplexity of the 16-bit SmolLM2 against this one, or which of its
# answers changed. That would take the original weights. What we can measure is the effect of
# further quantization on the model we have, which is what the rest of the chapter does.
#
# Rounding each weight to its nearest level is the simplest choice, not the best. GPTQ
# {cite}`frantar2023gptq` rounds the weights of a matrix one column at a time and adjusts the
# columns not yet rounded to cancel the error, using inputs recorded from sample text; AWQ
# {cite}`lin2024awq` scales up the few input channels whose activations are largest before
# rounding, so that the weights that matter most lose least. Both produce what the simple recipe
# produces, small integers with a scale (and a zero) per group; they choose the integers better.

# %% [markdown]
# ## Weight-only int8 and int4
#
# A quantized linear layer keeps its weights as small integers plus a few floating-point numbers
# per row or per group, and turns them back into floats only inside the matrix product. It is
# *weight-only* when the activations $x$ stay in floating point. Two schemes, each a few lines of
# PyTorch.
#
# **int8, symmetric, one scale per output channel.** Row $i$ of $W$ (one output) gets the scale
# that maps its largest magnitude to 127:
#
# $$
# s_i = \frac{\max_j |W_{ij}|}{127}, \qquad Q_{ij} = \operatorname{round}\!\left(\frac{W_{ij}}{s_i}\right)
# \in \{-127, \dots, 127\}, \qquad y_i = \sum_j s_i Q_{ij}\, x_j = s_i \sum_j Q_{ij}\, x_j .
# $$
#
# The scale comes out of the sum: a kernel can sum the products of $x$ with the integers and scale
# each output once. Each weight is off by at most $s_i / 2$.
#
# **int4, asymmetric, a scale and a zero per group** of $g = 32$ consecutive inputs of a row:
# Q4_1's own recipe, with $z$ for the minimum,
#
# $$
# W_{ij} \approx s_{ik} Q_{ij} + z_{ik}, \qquad Q_{ij} \in \{0, \dots, 15\}, \qquad
# y_i = \sum_k \Big( s_{ik} \sum_{j \in G_k} Q_{ij}\, x_j \;+\; z_{ik} \sum_{j \in G_k} x_j \Big),
# $$
#
# where $G_k$ is the $k$-th group of 32 inputs. The zero's term needs only the sum of $x$ over each
# group, the same for every row, so it costs almost nothing. Each weight is off by at most
# $s_{ik}/2$. Smaller groups follow the weights more closely and cost more bits for the scales.
#
# Both, by hand, on a real layer of the model: the first block's attention output projection `wo`.
# The model `MODEL` names is loaded now, after the bundled file and the statistics computed from
# its blocks have been let go, so that the two are never in memory together:

# %%
del reader, tensor, embedding, q4_1, layer0, scales, block_rms, emb, emb_blocks, emb4
gc.collect()
model, tok = al.load(MODEL, dtype=DTYPE)
DEVICE = model.device
print(f"{MODEL} on {model.device.type}, {model.dtype}, {model.args.n_layers} layers")

# %%
# the attention output projection, weight [dim, n_heads * head_dim]
linear = model.layers[0].attention.wo
W = linear.weight.detach().float()  # [out, in]: the arithmetic in float32
out_f, in_f = W.shape

# int8: one scale per output row
scale8 = W.abs().amax(dim=1) / 127  # [out]
Q8 = torch.round(W / scale8[:, None]).clamp(-127, 127)  # [out, in] integers (held as floats here)
W8 = Q8 * scale8[:, None]  # [out, in] dequantized

# int4: a scale and a zero (the minimum) per group of 32 inputs
g = 32
Wg = W.reshape(out_f, in_f // g, g)  # [out, groups, g]
lo, hi = Wg.amin(dim=-1), Wg.amax(dim=-1)  # [out, groups]
scale4 = (hi - lo) / 15
Q4 = torch.round((Wg - lo[..., None]) / scale4[..., None]).clamp(0, 15)  # [out, groups, g]
W4 = (Q4 * scale4[..., None] + lo[..., None]).reshape(out_f, in_f)  # [out, in] dequantized

slack = 1e-6 * W.abs().max()  # float32 rounding of the arithmetic itself
assert ((W8 - W).abs() <= scale8[:, None] / 2 + slack).all()  # within half a step of int8
assert ((W4 - W).reshape(out_f, -1, g).abs() <= scale4[..., None] / 2 + slack).all()  # and of int4


def rms_error(approx):  # RMS of the error over the RMS of the weights
    return ((approx - W).norm() / W.norm()).item()


print(f"wo of layer 0: [{out_f}, {in_f}]; every weight within half a step of its grid")
print(f"int8: RMS error {rms_error(W8):.2%} of the RMS weight; int4: {rms_error(W4):.2%}")

# %% [markdown]
# For the bundled model these errors come on top of the weights section 3 looked at, which are
# already on Q4_1's grid. That is why int4 costs nothing here (0.00%, the second figure): its groups
# are Q4_1's blocks, its recipe is Q4_1's, and section 3 showed that such weights quantize back to
# themselves. int8's grid, one step per row, does not line up with the Q4_1 grids of the row's
# blocks, so it moves the weights a little: about 1%. On weights that are not already on a 4-bit
# grid, int4's error is the larger by far: section 3 measured 8.6% for the same recipe on the
# 8-bit embedding.
#
# The factored sums give what the dequantized matrices give:

# %%
x = torch.randn(in_f)  # one token's input to the layer, [in]
y8 = scale8 * (Q8 @ x)  # [out]: integer-weighted sums, one scale per output
xg = x.reshape(in_f // g, g)  # [groups, g]
y4 = (scale4 * (Q4 * xg).sum(-1) + lo * xg.sum(-1)).sum(-1)  # [out]: per group, then over groups
assert torch.allclose(y8, W8 @ x, rtol=1e-4, atol=1e-4 * (W8 @ x).abs().max().item())
assert torch.allclose(y4, W4 @ x, rtol=1e-4, atol=1e-4 * (W4 @ x).abs().max().item())
print("factored int8 and int4 products == dequantized matrix times x (float32 rounding)")

# %% [markdown]
# The package's `quant.quantize_int8` and `quant.quantize_int4` compute the same numbers, bit for
# bit (the formulas are the shared part; the code is not):

# %%
q8, s8 = quant.quantize_int8(linear.weight)  # int8 [out, in], float32 [out]
# uint8 [out, in], float32 [out, groups] twice
q4, s4, z4 = quant.quantize_int4(linear.weight, group_size=g)
assert torch.equal(q8.float(), Q8) and torch.equal(s8, scale8)
assert (torch.equal(q4.float().reshape(Q4.shape), Q4) and torch.equal(s4, scale4)
        and torch.equal(z4, lo))
print(f"int8: q {q8.dtype} {list(q8.shape)}, scale {s8.dtype} {list(s8.shape)}")
print(f"int4: q {q4.dtype} {list(q4.shape)} (0..15), scale and zero {s4.dtype} {list(s4.shape)}")

# %% [markdown]
# ### The modules, and which kernel runs them
#
# `quant.Int8Linear` and `quant.Int4Linear` replace a bias-free `nn.Linear`. They hold these
# numbers as buffers (`Int4Linear` packs its 4-bit numbers two to a byte, in the order PyTorch's
# CPU kernel reads them, so that one copy serves both) and hand them to a kernel in `forward`. Which kernel is a question of measurement, and on the CPU
# that wrote this page the answers were not the obvious ones. The package's docstring records
# what was measured and what was chosen:

# %%
kernels = quant.__doc__[quant.__doc__.index("Kernels") :]
display(Markdown(kernels.split("The plain references")[0]))

# %%
show(quant.Int4Linear.forward)

# %% [markdown]
# fbgemm's int8 kernel needs more care. It multiplies 8-bit integers by 8-bit integers, so
# before it multiplies, it rounds the activations $x$ to integers too, with one scale for the whole
# call, chosen from the smallest and largest value it is given, and 7 bits of them (`reduce_range`,
# which keeps the sums of pairs of products that AVX2 forms in 16 bits from overflowing). Rounding
# a token's activations to 127 levels is coarse, and the next section measures what it costs.
# `Int8Linear` therefore hands the kernel each token twice. With an extra row $[-63.5, 63.5, 0,
# \dots]$ that pins the kernel's range, its scale is exactly 1 and its levels are the integers;
# the token, scaled to $a = 62\,x / \max|x|$, goes in as one row, which the kernel rounds to
# $\operatorname{round}(a)$, and what that rounding drops, $a - \operatorname{round}(a)$ (at most
# $1/2$), scaled by 124, goes in as a second row. Adding the second row's result, divided by 124,
# to the first's gives the product with $x$ rounded to about $2^{-14}$ of its largest value
# instead of $2^{-7}$. The three rows cost one read of the weights, as one row does:

# %%
show(quant.Int8Linear.forward)

# %% [markdown]
# The check that matters: each module's `forward` against the plain dequantize-then-matmul of the
# integers computed by hand above, on the real layer, with inputs in the model's dtype. The
# two share the integers and the scales (the package's, shown equal to ours above) and nothing else.
# The tolerance is the dtype's, as in the other chapters, plus, for `Int8Linear` on a CPU, the most
# that its rounding of the activations can move an output: the largest change of an activation,
# $\max|x| / (2 \cdot 62 \cdot 124)$, times the sum of the row's absolute weights.

# %%
x = torch.randn(2, 5, in_f).to(device=model.device, dtype=model.dtype)  # [batch, seq, in]
for name, module, W_deq in (("int8", quant.Int8Linear.from_linear(linear), W8),
                            ("int4", quant.Int4Linear.from_linear(linear, group_size=g), W4)):
    y = module(x)  # [batch, seq, out] in the model's dtype
    # by hand: float32, then the dtype
    reference = F.linear(x.float(), W_deq.to(x.device)).to(x.dtype)
    bound = RELATIVE_TOLERANCE[model.dtype] * reference.abs().max().float()
    # activations rounded (two levels): the largest move of an x_j times sum_j |w_ij|
    if name == "int8" and x.device.type == "cpu":
        moved = x.float().abs().max() / (2 * quant.TOP * quant.FRAC)
        bound = bound + moved * W_deq.abs().sum(dim=1).max()
    gap = (y.float() - reference.float()).abs().max()
    assert gap <= bound, (name, gap, bound)
    print(f"{name}: output {list(y.shape)} {y.dtype}; largest difference within the bound, "
          f"{bound / reference.abs().max().float():.2g} of the largest output")
del W, W8, W4, Wg, Q8, Q4, x, y, reference  # the layer's copies by hand: done with

# %% [markdown]
# ## The bundled model from its own 4-bit numbers
#
# Since Q4_1 and `Int4Linear` share their convention ($w = d \cdot q + m$, with $d$ as the scale
# and $m$ as the zero, in groups of 32 along a row), a Q4_1 matrix becomes an `Int4Linear` without
# any arithmetic: the same 4-bit numbers, re-packed two to a byte in the kernel's order (Q4_1 pairs
# elements $j$ and $j + 16$ of a block; the kernel pairs rows $j$ and $j + 16$ of a tile of 32
# outputs), and $d$ and $m$ widened from float16 to float32, which is exact. No float matrix is
# made on the way.
# `al.load(..., quantize="native")` does this for every matrix of the layers; the embedding, which
# is Q8_0 in the file and tied to the LM head, is decoded block by block and kept in float16 (11
# significant bits, fewer than $d \cdot q$ can have: the one place where this load rounds).

# %%
show(quant.Int4Linear.from_q4_1)

# %% [markdown]
# This needs a GGUF file whose matrices are Q4_1, so the next cells run only when `MODEL` is one
# (the bundled model is); with any other model they say so and skip. The check: every matrix of
# the natively loaded model, dequantized, against gguf-py's dequantization of the same tensor
# (independent code, the same bytes), and then what the CPU kernel's own format does to them. That
# kernel computes $(q - 8) \cdot s + z'$ with $z' = z + 8 s$, a sum rounded once in float32; the
# CUDA kernel also stores $s$ and $z'$ in bf16, which we can compute here without a GPU.

# %%
def q4_1_gguf(source):
    """The path of `source` if it is a GGUF file whose layer matrices are all Q4_1, else None."""
    path = GGUF_PATH if source == "smollm2-135m" else Path(str(source))
    if path.suffix != ".gguf" or not path.is_file():
        return None
    gguf_reader, _ = open_gguf(path)
    types = {t.tensor_type for t in gguf_reader.tensors
             if t.name.startswith("blk.") and len(t.shape) == 2}
    return path if types == {GGMLQuantizationType.Q4_1} else None


NATIVE_PATH = q4_1_gguf(MODEL)
if NATIVE_PATH is None:
    print(f"skipped: {MODEL} is not a GGUF file with Q4_1 matrices, "
          "so there are no 4-bit blocks to load "
          "as they are; the int8 and int4 variants below quantize its weights instead")
else:
    native, _ = al.load(MODEL, dtype=DTYPE, quantize="native")
    n_int4 = sum(isinstance(m, quant.Int4Linear) for m in native.modules())
    print(f"{MODEL}, quantize='native': {n_int4} "
          f"Int4Linear modules, {quant.weight_bytes(native):,} bytes of weights")

# %%
if NATIVE_PATH is not None:
    by_name = {t.name: t for t in open_gguf(NATIVE_PATH)[0].tensors}
    exact, worst_cpu, worst_bf16 = 0, 0.0, 0.0
    for i, block in enumerate(native.layers):
        for gguf_name, (part, attr) in zip(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                            "ffn_down", "ffn_up"), quant.LAYER_LINEARS):
            module = getattr(getattr(block, part), attr)
            t = by_name[f"blk.{i}.{gguf_name}.weight"]
            # [out, in] float32, gguf-py's
            want = torch.from_numpy(dequantize(t.data, t.tensor_type))
            exact += torch.equal(module.dequantize().cpu(), want)
            s, z = module.scale.cpu(), module.zero.cpu()  # [out, groups]
            q = module.q.cpu().float().reshape(*s.shape, -1)  # [out, groups, 32]
            for fmt, (s_k, z_k) in (("cpu", (s, z + 8 * s)),
                                    ("bf16", ((s.bfloat16().float()),
                                              (z + 8 * s).bfloat16().float()))):
                # the kernel's weights
                w_k = ((q - 8) * s_k[..., None] + z_k[..., None]).reshape(want.shape)
                # in steps d
                err = ((w_k - want).abs().reshape(*s.shape, -1) / s[..., None]).max().item()
                if fmt == "cpu":
                    worst_cpu = max(worst_cpu, err)
                else:
                    worst_bf16 = max(worst_bf16, err)
    n_mats = len(native.layers) * len(quant.LAYER_LINEARS)
    assert exact == n_mats
    print(f"{exact} of {n_mats} matrices, dequantized, equal gguf-py's dequantization bit for bit")
    print(f"the CPU kernel's (q - 8)·s + z' in float32: largest error {worst_cpu:.1e} of a step d")
    print(f"the CUDA kernel's bf16 s and z': largest error {worst_bf16:.2f} of a step d")
    del by_name  # the file's reader, with it

# %% [markdown]
# ## Quality: perplexity, agreement, an answer
#
# Now the whole model, in each variant: the model as loaded (for the bundled one, float32 holding
# the dequantized Q4_1 numbers), the same with every layer's seven matrices in int8 or in int4
# (`quant.quantize_model`), and for a Q4_1 file the native load above. The LM head, which for the
# bundled model is also the embedding, is a matrix apart: every logit goes through it, and for the
# bundled model it is a fifth of the weights. What the package does with it, and why, is in its
# source:

# %%
show(quant.quantize_head)

# %% [markdown]
# The measure is the perplexity of chapter 9 on a fixed text written for this book: its
# introduction (`book/intro.md`, with its citation markup removed), at most 1,024 tokens of it.
# Not fewer: on a few hundred tokens a perplexity moves by half a percent when a handful of
# predictions change, which is the size of the differences to be measured.

# %%
intro = Path("../book/intro.md").read_text(encoding="utf-8")
TEXT = re.sub(r"\s*\{cite\}`[^`]*`", "", intro).strip()  # the prose without MyST citation roles
text_ids = tok.encode(TEXT)[:1024]
tokens = torch.tensor([text_ids], device=model.device)  # [1, n]
N_TEXT = tokens.shape[1]
print(f"{len(TEXT.split())} words, {len(tok.encode(TEXT))} tokens, "
      f"the first {N_TEXT} used; "
      f"it begins: {TEXT[:60]!r}")

# %% [markdown]
# Each variant is measured alone: its perplexity, at how many positions its top token is the
# float model's, the largest difference between its logits and the float model's over the first
# 256 positions (relative to the largest float logit there), its greedy answer to "The capital of
# France is", and a short decode timing (3 rounds of 3 single-token steps after the prompt; the
# median round). The text goes through the model 256 tokens at a time, the KV cache carrying the
# earlier ones, so that no variant ever holds logits for more than 256 positions. Memory holds the
# float model and at most one quantized variant, and from the int8 variant on only the variant:
# `al.load(MODEL, quantize="int8")` reads the checkpoint again and `quant.quantize_model` replaces
# its matrices one by one, each float matrix freed as its quantized version takes its place, so a
# 7B model never needs its 16-bit copy and a quantized one side by side. What is kept of a variant
# is a few numbers, and of the float model its logits on the first 256 positions.

# %% [markdown]
# One practical matter first. PyTorch's CPU int4 kernel is made for decoding, one row of input at a
# time; given 256 rows of the text at once, it is far slower than dequantizing the matrix and
# multiplying in float32. Timed here on the layer of section 4, with 64 rows:

# %%
# [64, in]: 64 tokens' inputs
rows = torch.randn(64, in_f).to(device=model.device, dtype=model.dtype)
int4_wo = quant.Int4Linear.from_linear(linear, group_size=g)
int4_wo.prepare()
has_kernel = int4_wo._kernel[1] is not None  # the packed kernel takes this layer's sizes and device
kernel_rows = quant.KERNEL_MAX_ROWS  # forward's rule: the kernel below this many rows
for label, limit in (("int4 kernel", 65), ("dequantize, then F.linear", 0)):
    if label == "int4 kernel" and not has_kernel:
        print(f"int4 kernel: not available for this layer on {rows.device.type}: not timed")
        continue
    quant.KERNEL_MAX_ROWS = limit  # 65: the 64 rows go to the kernel; 0: to the reference
    int4_wo(rows)  # warm-up
    start = time.perf_counter()
    int4_wo(rows)
    print(f"{label:<26} ⏱{(time.perf_counter() - start) * 1e3:.1f} ms for 64 rows")
quant.KERNEL_MAX_ROWS = kernel_rows
print(f"Int4Linear.forward uses the kernel for fewer than {quant.KERNEL_MAX_ROWS} rows")
del rows, int4_wo

# %% [markdown]
# So `Int4Linear.forward` sends inputs of `quant.KERNEL_MAX_ROWS` rows or more (a prompt, or the
# perplexity's chunks of 256 tokens below) through `quant.int4_linear_reference`, and runs the kernel only for
# fewer rows (a decode step has one); the numbers are the same (section 4 compared the two).

# %%
PROMPT = tok.encode("The capital of France is")
ROUNDS = 3


@contextlib.contextmanager
def dequantized(module_class):
    """Within: every `module_class` module runs dequantize-then-F.linear instead of its kernel."""
    kernel_forward = module_class.forward
    module_class.forward = lambda self, x: F.linear(x, self.dequantize().to(x.dtype))
    try:
        yield
    finally:
        module_class.forward = kernel_forward


CHUNK = 256  # positions per call


def read_text(m):
    """The text through `m`, CHUNK tokens per call (the KV cache holds the earlier ones): the
    perplexity (exp of the mean next-token cross-entropy, chapter 9), the top token at every
    position [n], and the float32 logits of the first chunk [CHUNK, vocab]."""
    m.reset_cache()
    nll, top, first = 0.0, [], None
    for start in range(0, N_TEXT, CHUNK):
        logits = m(tokens[:, start:start + CHUNK], start_pos=start)[0].float()  # [chunk, vocab]
        targets = tokens[0, start + 1:start + CHUNK + 1]  # each position predicts the next token
        nll += F.cross_entropy(logits[:len(targets)], targets, reduction="sum").item()
        top.append(logits.argmax(-1))
        first = logits if first is None else first
        del logits
    m.reset_cache()
    return math.exp(nll / (N_TEXT - 1)), torch.cat(top), first


# the greedy continuation's text (ids past the tokenizer's last, spare rows, dropped)
def answer(m, n=5):
    new = [i for i in generate_ids(m, PROMPT, n) if i < tok.vocab_size]
    return tok.decode(PROMPT + new)[len(tok.decode(PROMPT)):]


def read_per_token(m):
    """Bytes of weights one decode step reads: each layer's seven matrices and the LM head, as
    stored (norm gains aside; the input embedding is looked up, one row, unless it is the LM head
    too)."""
    mats = [getattr(getattr(b, part), name) for b in m.layers for part, name in quant.LAYER_LINEARS]
    return sum(t.numel() * t.element_size()
               for mat in mats + [m.output] for t in [*mat.parameters(), *mat.buffers()])


def decode_ms(m, steps=3):
    """Milliseconds per decode step: the prompt first (untimed), then `steps` single-token calls."""
    m.reset_cache()
    nxt = m(torch.tensor([PROMPT], device=m.device))[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    sync = torch.cuda.synchronize if m.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        nxt = m(nxt, start_pos=len(PROMPT) + i)[:, -1].argmax(-1, keepdim=True)
    sync()
    m.reset_cache()
    return (time.perf_counter() - start) / steps * 1e3


def measure(m, reference=None, timed=True):
    """The numbers kept of a model: quality against `reference` (the float model's first-chunk
    logits), memory, an answer, speed."""
    ppl, top, first = read_text(m)
    r = {"perplexity": ppl, "top": top, "bytes": quant.weight_bytes(m), "read": read_per_token(m),
         "answer": answer(m), "ms": [decode_ms(m) for _ in range(ROUNDS)] if timed else None}
    r["diff"] = 0.0 if reference is None else relative_difference(first, reference)
    return r, first


# %%
del linear  # section 4's layer
gc.collect()
a = model.args
INT4_FITS = a.dim % 32 == 0 and a.ffn_dim % 32 == 0  # groups of 32 inputs, tiles of 32 output rows
float_label = f"{str(model.dtype).removeprefix('torch.')}, as loaded"
results = {}
# float_logits: [256, vocab], the first chunk's, kept as the reference
results[float_label], float_logits = measure(model)
# weights read per decode step
n_read = sum(getattr(getattr(b, p), n).weight.numel()
             for b in model.layers for p, n in quant.LAYER_LINEARS) \
    + model.output.weight.numel()
if NATIVE_PATH is not None:
    results["native Q4_1"], _ = measure(native, float_logits)
    del native
del model  # from here on, only one model at a time
gc.collect()
for scheme in ("int8", "int4"):  # the float model, read again, quantized one matrix at a time
    if scheme == "int4" and not INT4_FITS:
        print(f"int4 skipped: {MODEL}'s sizes (dim {a.dim}, ffn_dim {a.ffn_dim}) "
              "are not multiples of 32, "
              "the group size and tile of the int4 kernels (every published LLaMA's are)")
        continue
    m, _ = al.load(MODEL, dtype=DTYPE, quantize=scheme)
    results[scheme], _ = measure(m, float_logits)
    if scheme == "int8":
        # the same int8 weights with the activations rounded once, to 7 bits, instead of twice
        for module in m.modules():
            if isinstance(module, quant.Int8Linear):
                module.activation_levels = 1
        results["int8, one-level"], _ = measure(m, float_logits)
        with dequantized(quant.Int8Linear):  # ... and not rounded at all: the reference
            weight_only_int8, _ = measure(m, float_logits, timed=False)
    del m, _
    gc.collect()
print("variants measured:", ", ".join(results))  # and none of them is in memory now

# %%
base = results[float_label]
print(f"{'variant':<22}{'perplexity':>11}{'change':>9}{'max logit diff':>16}"
      f"{'same top token':>16}  answer")
for label, r in results.items():
    assert math.isfinite(r["perplexity"]), label
    agree = (r["top"] == base["top"]).sum().item()
    change = round(r["perplexity"] / base["perplexity"] - 1, 3) + 0.0  # + 0.0: no "-0.0%"
    print(f"{label:<22}{r['perplexity']:>11.1f}{change:>+9.1%}{r['diff']:>16.3f}{agree:>9} of "
          f"{len(base['top'])}  {r['answer']!r}")
r = weight_only_int8  # int8 weights through dequantize-then-matmul: no activation rounding
change = round(r["perplexity"] / base["perplexity"] - 1, 3) + 0.0
print(f"{'int8, weights only':<22}{r['perplexity']:>11.1f}{change:>+9.1%}{r['diff']:>16.3f}"
      f"{(r['top'] == base['top']).sum().item():>9} of {len(base['top'])}  "
      "(the reference, not timed)")

# %% [markdown]
# For the bundled model, int4 and the native load lose nothing this measure can see: perplexity
# 20.4 as in float32, the float model's top token at 1,023 of the 1,024 positions, logits within
# 0.001 of the largest. Their matrices hold the file's Q4_1 numbers (the native load exactly, by
# construction; int4 because section 3's fixed point makes the quantizer find the same integers
# again, with the scales to float32 rounding); what differs is the LM head, in float16.
#
# For the bundled model again: int8 with two-level activations, the package's default, comes to
# within 0.3% of float32's
# perplexity, with the float model's top token at 999 positions. The same int8 weights with the
# activations not rounded at all (the "weights only" row, through the plain reference) give 0.2%
# and 1,000 positions: the two-level rounding adds next to nothing to what the weights lose.
# Rounded once, to 7 bits, the activations cost far more: perplexity 5.8% above float32 and the
# float model's top token at 885 positions, though the answer about France survives. A LLaMA's
# activations have a few coordinates far larger than the rest (chapter 10); they set a token's one
# step and leave every other coordinate with few levels. LLM.int8() {cite}`dettmers2022llmint8`
# found the same outliers in larger models and keeps their coordinates in 16 bits; llama.cpp rounds
# activations too, with one scale per block of 32 values {cite}`gerganov2023llamacpp`, so that an
# outlier coarsens only its own block; the two-level rounding keeps one scale per token and adds
# seven bits below it. (On a GPU, `Int8Linear` runs the reference itself, activations untouched,
# and the three int8 rows agree.) The cell below checks, for whichever model is loaded, that the
# two-level kernel's perplexity stays within 1% of the weights-only reference's.

# %%
two_level_gap = results["int8"]["perplexity"] / weight_only_int8["perplexity"] - 1
assert abs(two_level_gap) < 0.01, two_level_gap
print(f"int8, two-level against weights only: {two_level_gap:+.2%} perplexity")

# %% [markdown]
# ## Speed and memory on this CPU
#
# Memory first, since it is exact: `al.weight_bytes` counts every parameter and buffer of a model
# once (a tensor shared by two modules, like a tied embedding, once), plus the copies that a kernel
# packs into its own layout. The bytes that one decode step reads are fewer: each layer's seven
# matrices and the LM head, in the format they are stored in (not the input embedding, of which a
# step reads one row, unless it is the LM head as well).

# %%
print(f"weights read per decode step: {n_read:,}")
print(f"{'variant':<22}{'in memory (bytes)':>18}{'of float':>9}{'read per step (bytes)':>23}"
      f"{'bits/weight':>12}")
for label, r in results.items():
    r["bits"] = 8 * r["read"] / n_read
    print(f"{label:<22}{r['bytes']:>18,}{r['bytes'] / base['bytes']:>9.2f}{r['read']:>23,}"
          f"{r['bits']:>12.2f}")

# %% [markdown]
# The int4 and native models hold 0.30 of the float32 model's bytes. Their matrices take 6 bits per
# weight here (4 for the number, and a float32 scale and zero per group of 32: 64 bits over 32
# weights; PyTorch's CPU kernel reads them in that form), and the LM head, which is also the
# embedding, stays in float16, 16 bits per weight for a fifth of the model. int8 holds half the
# float bytes: fbgemm keeps its own packed copy of every int8 matrix beside the package's. On the
# GPU formats of the next section, int8 is 8 bits and int4 5.
#
# Then speed, from the decode timings above (for each variant the median of its 3 rounds, with the
# range in brackets; the variants were timed one after another, not in alternating rounds, since
# they were never in memory together), set against this machine's roof: its
# memory bandwidth, measured here as the speed of copying 64 MiB, divided by the bytes each step
# reads. Every measured number is printed after a ⏱.

# %%
src, dst = torch.ones(2, 16 * 2**20, device=DEVICE)  # 64 MiB of float32 each, touched
copies = []
for _ in range(8):  # the first round is a warm-up
    start = time.perf_counter()
    dst.copy_(src)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    copies.append(time.perf_counter() - start)
bandwidth = 2 * src.nbytes / statistics.median(copies[1:])  # bytes read + bytes written per second
del src, dst
print(f"copy bandwidth: ⏱{bandwidth / 1e9:.1f} GB/s (read + write)")
for r in results.values():
    r["tok_s"] = 1e3 / statistics.median(r["ms"])  # decode tokens per second
for label, r in results.items():
    roof = bandwidth / r["read"]  # tokens per second if reading the weights were all a step did
    print(f"{label:<22} ⏱{statistics.median(r['ms']):.0f} ms per step [⏱{min(r['ms']):.0f} to "
          f"⏱{max(r['ms']):.0f}] = ⏱{r['tok_s']:.1f} tok/s, "
          f"⏱{r['tok_s'] / base['tok_s']:.2f}× the float model; "
          f"roof ⏱{roof:.0f} tok/s, ⏱{r['tok_s'] / roof:.0%} of it")

# %% [markdown]
# Fewer bytes did not make this CPU faster in proportion. int8 beats float32, by less than its
# bytes would allow, and by less with two-level activations than with one; int4 is slower than
# float32, at a few percent of its roof. The bytes are not what limits these steps. For int4, the
# work of turning packed integers into something the vector units can multiply is, and how fast
# that goes is a property of the kernel. For int8, it is what each call does besides the kernel:
# the two-level rounding is a dozen small tensor operations per matrix (the `forward` shown in
# section 4), and the bundled model's matrices are small (576 wide), so that a step is 210 short
# matrix-vector products and as many rounds of bookkeeping. `benchmarks/quant_widths.py` times
# one token through a layer's seven matrices, nothing else, at the bundled model's widths and at
# those of two models a reader might load instead, with random weights of their shapes:

# %%
def benchmark(name, how):
    """benchmarks/<name>.json as its script wrote it (where and when it was measured, printed), or None."""
    path = Path(f"../benchmarks/{name}.json")
    if not path.is_file():
        print(f"benchmarks/{name}.json not found: run {how} to measure")
        return None
    found = json.loads(path.read_text())
    print(textwrap.fill(found["machine"], 100))
    return found


widths = benchmark("quant_widths", "benchmarks/quant_widths.py")
if widths is not None:
    print(f"{'model shapes':<16}{'dim':>6}{'ffn':>7}{'float32 ms':>12}{'GB/s':>6}"
          + "".join(f"{v:>13}" for v in ("int8", "int8-1level", "int4")))
    for name, w in widths["widths"].items():
        v, d, kv, ffn = w["variants"], w["dim"], w["kv"], w["ffn_dim"]
        layer_bytes = 4 * (2 * d * d + 2 * kv * d + 3 * ffn * d)  # the seven float32 matrices
        ms = v["float32"]["ms_per_layer"]
        print(f"{name:<16}{d:>6}{ffn:>7}{ms:>12.2f}{layer_bytes / ms / 1e6:>6.1f}"
              + "".join(f"{v[k]['speedup']:>12.2f}×" for k in ("int8", "int8-1level", "int4")))
    v = widths["widths"]["Llama-2-7B"]["variants"]
    print("float32: ms per layer and the GB/s that reading its weights took; the others: speed-up over "
          "float32 (paired medians)")
    print(f"bytes read, float32 over: int8 {v['int8']['bytes_ratio']:.2f}×, int4 {v['int4']['bytes_ratio']:.2f}×")

# %% [markdown]
# At the bundled model's width, the two-level int8 matrices are no faster than float32, and the
# one-level ones about twice as fast. At TinyLlama's width the two-level ones are three times as
# fast as float32, and at Llama-2-7B's three and a half, near the four that int8's bytes allow
# (at that width float32 reads its weights at the rate in the GB/s column, close to what this
# machine's memory gives). The bookkeeping costs the
# same at every width; the matrix grows with the square. The int4 kernel, on the other hand, falls
# further behind as the matrices grow. The whole-model figures below are the bundled model's, and
# so the least favourable to int8; llama.cpp's show how much faster the same 4-bit numbers can be
# multiplied.

# %% [markdown]
# ### The benchmark: against transformers and llama.cpp
#
# `benchmarks/quant_compare.py` measures the same variants in one run, together with transformers'
# `LlamaForCausalLM` (eager, float32) and llama.cpp (through `llama-cpp-python`, built in an
# environment of its own) on the very same GGUF file: decode and prefill speed and resident memory,
# each a median of repetitions that alternate between the variants. It writes its results to
# `benchmarks/quant_compare.json`; this page shows what is there:

# %%
bench = benchmark("quant_compare", "`make bench-quant`")
if bench is not None:
    print(f"{bench['reps']} repetitions; prefill of {bench['prefill_tokens']} tokens, "
          f"{bench['decode_tokens']} decode steps; "
          f"copy bandwidth {bench['copy_bandwidth_GBps']:.1f} GB/s\n")
    print(f"{'variant':<22}{'decode tok/s [range]':>22}{'vs ours f32':>12}{'vs HF':>7}"
          f"{'prefill tok/s':>14}{'RSS MB':>8}{'MB/token':>9}{'roof tok/s':>11}")
    for name, v in bench["variants"].items():
        d, p = v["decode_tok_s"], v["prefill_tok_s"]
        decode = f"{d['median']:.1f} [{d['min']:.1f}-{d['max']:.1f}]"
        print(f"{name:<22}{decode:>22}{v['decode_vs_ours_float32']['median']:>12.2f}"
              f"{v['decode_vs_transformers']['median']:>7.2f}"
              f"{p['median']:>14.1f}{v['rss_mb'] - v['rss_base_mb']:>8.0f}"
              f"{v['bytes_per_token'] / 1e6:>9.0f}{v['roof_tok_s']:>11.1f}")
    v = bench["variants"]
    if {"llamacpp-q4_1", "ours-int4", "ours-float32"} <= set(v):
        fast = v["llamacpp-q4_1"]["decode_tok_s"]["median"]
        int4_tok_s = v["ours-int4"]["decode_tok_s"]["median"]
        float32_tok_s = v["ours-float32"]["decode_tok_s"]["median"]
        print(f"\nllama.cpp on the same file decodes {fast / int4_tok_s:.1f}× as fast "
              f"as our int4 and {fast / float32_tok_s:.1f}× as fast as our float32")

# %% [markdown]
# (RSS is the process's resident memory after loading, less what it held before: interpreter and
# libraries aside, the weights and whatever the runtime allocates beside them.) The `fast-` rows
# run chapter 11's `FastLlama` on the same weights, which stacks wq, wk and wv into one matrix and
# w1 and w3 into another, quantized ones included (`Int8Linear.concat`): four calls per layer
# instead of seven, and so less bookkeeping; with it, two-level int8 decodes 1.58 times as fast
# as our float32 and one-level int8 1.99 times. llama.cpp, reading the very file this chapter
# opened, is the fastest by far. Its kernels never turn the weights back into floats: for a Q4_1
# matrix, ggml first rounds the activations to 8 bits in blocks of 32 (its Q8_1 type, one scale per
# block), then multiplies the 4-bit and 8-bit integers with the CPU's integer vector instructions
# and applies each block's scales once {cite}`gerganov2023llamacpp`, all of it in C, one call per
# matrix. That is what no PyTorch kernel measured here does on this CPU.

# %% [markdown]
# ### On a GPU
#
# A GPU changes the picture because its kernels for 4-bit and 8-bit weights are made to keep up
# with its memory. Chapter 11's arithmetic then applies directly: a decode step reads every
# weight once, so it can go no faster than the memory bandwidth over the bytes of weights per
# token. For Llama-2-7B (from its configuration, as in chapter 11) in three formats: 16 bits, int8
# with a float32 scale per row of 4,096 weights, and int4 as PyTorch's CUDA kernel holds it, with a
# bf16 scale and zero per group of 32. Against a T4's 320 GB/s {cite}`nvidia2018t4` and an A100
# 80GB's 2,039 GB/s {cite}`nvidia2020a100`:

# %%
def weights_read_per_token(args: al.ModelArgs) -> int:
    """Parameters read for one token: all but the input embedding (the LM head counts even when
    tied)."""
    n = al.count_parameters(args) - args.vocab_size * args.dim
    return n + (args.vocab_size * args.dim if args.tie_word_embeddings else 0)


args7b = al.ModelArgs.preset("llama2-7b")
n7b, GiB = al.count_parameters(args7b), 2**30
read7b = weights_read_per_token(args7b)
GPU_BW = {"T4": 320e9, "A100 80GB": 2039e9}  # bytes per second, datasheet figures
# bits per weight
FORMATS = {"16-bit": 16, "int8": 8 + 32 / args7b.dim, "int4 (g = 32)": 4 + 2 * 16 / 32}
print(f"Llama-2-7B: {n7b:,} parameters, {read7b:,} read per token")
print(f"{'format':<15}{'bits':>7}{'weights (GiB)':>15}{'GB per token':>14}"
      + "".join(f"{g + ' roof':>16}" for g in GPU_BW))
for fmt, bits in FORMATS.items():
    per_token = read7b * bits / 8
    print(f"{fmt:<15}{bits:>7.3f}{n7b * bits / 8 / GiB:>15.2f}{per_token / 1e9:>14.2f}"
          + "".join(f"{bw / per_token:>12.0f} tok/s" for bw in GPU_BW.values()))

# %% [markdown]
# Every bit removed raises the roof in proportion. int8 halves the bytes per token and doubles the
# roof; int4, at 5 bits with its scales and zeros, multiplies it by 3.2: 494 tokens per second on
# the A100 and 77 on the T4, where 16 bits allow 154 and 24. These are limits computed from
# bytes, not speeds. A kernel comes near them only if unpacking and scaling the integers takes
# less time than reading them.

# %% [markdown]
# How close do real kernels come? gpt-fast {cite}`pytorch2023gptfast` measured Llama-2-7B at batch 1
# on an A100 80GB (power-limited to 330 W) in bf16 and with int8 and int4 (groups of 32) weights;
# its README lists the speeds {cite}`pytorchlabs2023gptfastrepo`. Set against the roofs above:

# %%
# tok/s, gpt-fast's README
GPT_FAST_A100 = {"16-bit": 104.9, "int8": 155.58, "int4 (g = 32)": 196.80}
for fmt, bits in FORMATS.items():
    roof = GPU_BW["A100 80GB"] / (read7b * bits / 8)
    speed = GPT_FAST_A100[fmt]
    print(f"{fmt:<15}{speed:>8.1f} tok/s: {speed / roof:.0%} of its roof; "
          f"{speed / GPT_FAST_A100['16-bit']:.2f}× the 16-bit speed"
          + (f", from {16 / bits:.1f}× fewer bytes per token" if bits < 16 else ""))

# %% [markdown]
# Fewer bytes pay on the GPU, but not in full: 16-bit decoding reaches 68% of its roof, int8 50%,
# int4 40%. The integers must be unpacked, shifted and scaled before they are multiplied, and at 4
# bits that work stops hiding behind the memory traffic. Still, int4 decodes 1.88 times as fast as
# 16 bits, and it changes what fits: in 16 bits the 7B model's 12.55 GiB leave a T4 too little room
# for its KV cache (chapter 0), while in int8 it takes 6.28 GiB and in int4 3.92 GiB, with roofs of
# 48 and 77 tokens per second on the T4's 320 GB/s.

# %% [markdown]
# ## Bits, perplexity and speed in one picture
#
# Each variant measured above, placed by the bits per weight that a decode step reads: its
# perplexity on the book's text (left), and its decode speed on this CPU in this run (right).

# %%
labels = list(results)
bits = [results[k]["bits"] for k in labels]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
for k, b in zip(labels, bits):
    ax1.plot(b, results[k]["perplexity"], "o")
    ax1.annotate(k, (b, results[k]["perplexity"]), textcoords="offset points", xytext=(6, 4),
                 fontsize=9)
    ax2.plot(b, results[k]["tok_s"], "o")
    ax2.annotate(k, (b, results[k]["tok_s"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
ax1.set_xlabel("bits per weight read per token", fontsize=10)
ax1.set_ylabel(f"perplexity on {tokens.shape[1]} tokens of book/intro.md", fontsize=10)
ax2.set_xlabel("bits per weight read per token", fontsize=10)
ax2.set_ylabel("decode speed on this CPU (tokens/s)", fontsize=10)
for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
fig.suptitle(f"{MODEL}: fewer bits against quality and speed", fontsize=11)
plt.tight_layout()
plt.show()
for k, b in zip(labels, bits):
    print(f"{k:<22} {b:6.2f} bits per weight, perplexity {results[k]['perplexity']:.1f}, "
          f"⏱{results[k]['tok_s']:.1f} tok/s")

# %% [markdown]
# On this CPU and for this model, the picture does not slope the way the bytes say it should: the
# variants that read the fewest bits lose no quality (they hold the file's own 4-bit numbers) and
# run slowest (the kernel, not the bytes, decides), and int8 buys its accuracy with speed. On a GPU,
# with kernels like llama.cpp's, or at the widths of larger models (the table above), the right
# panel turns: fewer bits per weight, more tokens per second.

# %% [markdown]
# ## What we have now
#
# - The bundled GGUF file, read block by block: Q4_1 (32 weights in 20 bytes: float16 $d$ and $m$,
#   32 four-bit $q$, $w = d \cdot q + m$, 5 bits per weight) for every matrix of the layers, Q8_0
#   (8.5 bits) for the tied embedding; `quant.decode_q4_1_block` and `quant.decode_q8_0_block`
#   decode one block exactly as gguf-py does.
# - What the file's 4 bits cost, as far as the file can say: its blocks were made by rounding to
#   the nearest of 16 levels between each block's minimum and maximum, an error of about 8% of the
#   weights' RMS; what that did to the model's predictions needs the 16-bit original.
# - Weight-only quantized linears that replace `nn.Linear`: `Int8Linear` (int8 `[out, in]` and a
#   float32 scale `[out]`; on a CPU, fbgemm's integer kernel, fed each token as two rows of integers
#   so that its rounding of the activations costs next to nothing) and `Int4Linear` (4-bit numbers packed two per byte `[out, in / 2]`, a
#   scale and a zero `[out, in / 32]`), checked against the plain dequantize-then-matmul;
#   `quant.quantize_model` and `al.load(..., quantize="int8" | "int4")` for any checkpoint, and
#   `quantize="native"` to run a Q4_1 GGUF from its own blocks, bit for bit.
# - Their price and their gain, measured: perplexity, agreement with the float model, memory, and
#   decode speed on this CPU; on a GPU, the roof rises with every bit removed.
#
# The next chapter keeps the weights in 16 bits and splits them across several processes instead:
# tensor parallelism, for models that no single GPU holds.
