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
# # 9. The whole model and generation
#
# Chapters 4 to 8 built every part of a LLaMA layer: RMSNorm, rotary position embeddings,
# grouped-query attention with its KV cache, and the SwiGLU feed-forward network. This chapter
# puts them together. We stack the parts into a transformer block, follow the residual stream
# through all the blocks, add the final norm and the LM head, and check the logits of the whole
# model against transformers' `LlamaForCausalLM` on the same weights.
#
# The model's output is a score for every token in the vocabulary. The second half of the
# chapter turns those scores into text: greedy decoding, temperature, top-k and top-p sampling,
# streaming, batches of prompts of different lengths, and the chat format that the bundled
# instruct model was trained on. It ends where training begins: the loss, the perplexity of the
# model on a text, and the gradient of one weight, checked against transformers.

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
import time
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.generate import generate_ids, sample_next
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, via transformers
torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference, except where a cell turns gradients on

# %% [markdown]
# The model is the bundled SmolLM2-135M-Instruct unless you change the next cell: its matrices
# are stored as 4-bit {term}`Q4_1` numbers (the embedding as 8-bit {term}`Q8_0`) and dequantized to float32 when
# it loads (chapter 0), so its predictions below are those of the 4-bit model. Any LLaMA runs
# here. In 16 bits the weights take parameters × 2 bytes: `TinyLlama/TinyLlama-1.1B-Chat-v1.0`
# (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B` (gated, 2.30 GiB) fit a Colab T4;
# `meta-llama/Llama-2-7b-hf` (12.55 GiB) and `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or
# an A100. Chapter 0 has the full table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %% [markdown]
# The independent reference is transformers' `LlamaForCausalLM`, built around our model's own
# tensors by `as_transformers`, so that only one copy of the weights is in memory. What the two
# share is the weights as our loader read them (for the bundled model, dequantized from the GGUF
# file by our loader). What they do not share is the model code: transformers has its own
# attention, its own norms and MLP, and RoPE in the rotate-half form, which it applies to q/k
# weights permuted into its row order (chapter 5). Every comparison with it goes through
# `check_close`, which asserts that the largest difference, relative to the largest value, is
# within a tolerance for the dtype: the two implementations round differently, more so in 16 bits.
#
# Two small helpers turn ids into text. Decoding new ids together with the prompt keeps the
# leading space that SentencePiece attaches to a word, which a token decoded alone loses. And a
# checkpoint's embedding may have a few more rows than its tokenizer has tokens (spare rows,
# padding the matrix to a round size): a model, random weights especially, can pick such an id,
# which has no text. The bundled model has none. A third helper shows the package's source.

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
hf = as_transformers(model)  # transformers' model code on our tensors
TOL = RELATIVE_TOLERANCE[model.dtype]  # check_close's tolerance in this dtype
a = model.args
print(f"{model.device.type}, {model.dtype}")
print(f"dim {a.dim}, n_layers {a.n_layers}, n_heads {a.n_heads}, "
      f"n_kv_heads {a.n_kv_heads}, vocab {a.vocab_size}")
print(f"tokenizer: {tok.vocab_size:,} tokens; spare embedding rows: "
      f"{a.vocab_size - tok.vocab_size}")
print(f"tolerance of check_close in {model.dtype}: {TOL:.2g}")


def token_text(i):  # one token's text; an id past the tokenizer's last token has none
    return tok.decode([i]) if i < tok.vocab_size else f"<spare {i}>"


def continuation(prompt_ids, new_ids):  # text of the new ids after the prompt (spare ids dropped)
    known = [i for i in new_ids if i < tok.vocab_size]
    return tok.decode(prompt_ids + known)[len(tok.decode(prompt_ids)):]


def show(obj):
    """Render the package's source of ``obj`` as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")

# %% [markdown]
# ## The transformer block
#
# A block has two sub-layers, attention and the feed-forward network. Each one reads a
# normalised copy of its input ({term}`RMSNorm`) and *adds* its result to the input:
#
# $$
# h = x + \operatorname{Attention}\big(\operatorname{RMSNorm}_1(x)\big), \qquad
# \text{out} = h + \operatorname{FFN}\big(\operatorname{RMSNorm}_2(h)\big).
# $$
#
# This is the pre-norm arrangement. The original transformer normalised *after* each addition
# {cite}`vaswani2017attention`; putting the norm at the entrance of each sub-layer leaves the
# path from a block's input to its output free of any normalisation, which makes deep stacks
# easier to train {cite}`xiong2020prenorm`. The package's block is exactly the two lines of the
# equation:

# %%
show(al.model.TransformerBlock)

# %% [markdown]
# We run the first block by hand on the embeddings of our running prompt, using the block's own
# sub-modules, and compare with calling the block. Without a KV cache (`reset_cache`), attention
# sees exactly the tokens it is given.

# %%
PROMPT = "The capital of France is"
tokens = torch.tensor([tok.encode(PROMPT)], device=model.device)  # [1, seq]
seq = tokens.shape[1]
model.reset_cache()
freqs_cis = model.freqs_cis(model.device)[:seq]  # [seq, head_dim/2] complex

block = model.layers[0]
x = model.tok_embeddings(tokens)  # [1, seq, dim]
h = x + block.attention(block.attention_norm(x), 0, freqs_cis)  # first addition
out = h + block.feed_forward(block.ffn_norm(h))  # second addition: [1, seq, dim]
same = torch.equal(out, block(x, 0, freqs_cis))

print("tokens", tuple(tokens.shape), "-> embeddings", tuple(x.shape),
      "-> block output", tuple(out.shape))
print("same as block(x):", same)
assert same

# %% [markdown]
# ## The residual stream
#
# Since each sub-layer only adds, the vector at a position after the last block is the
# embedding plus every update written along the way. With $a_l$ and $f_l$ the attention and
# feed-forward outputs of layer $l$:
#
# $$
# x_L = x_0 + \sum_{l=1}^{L} \left(a_l + f_l\right).
# $$
#
# This running sum is the {term}`residual stream <Residual stream>`: every sub-layer reads from
# it and writes into it {cite}`elhage2021mathematical`. We record it after the embedding and
# after every block with forward hooks, while the model runs normally.

# %%
states = []  # the residual stream: after the embedding, then after each block
record = lambda module, inputs, output: states.append(output)  # noqa: E731
modules = [model.tok_embeddings, *model.layers]
hooks = [m.register_forward_hook(record) for m in modules]
logits = model(tokens)  # [1, seq, vocab]: every position, for the checks below
for hook in hooks:
    hook.remove()

stream = torch.stack(states)[:, 0].float()  # [n_layers + 1, seq, dim]
rms = stream.pow(2).mean(-1).sqrt()  # [n_layers + 1, seq]: RMS over the features
pieces = [tok.decode([i]) for i in tokens[0].tolist()]
print(f"{len(states)} states, each of shape {tuple(states[0].shape)}")

# %% [markdown]
# The root mean square of each position's vector, after each layer (layer 0 is the embedding):

# %%
lines = ["layer " + "".join(f"{p!r:>11}" for p in pieces)]
for layer, row in enumerate(rms.tolist()):
    lines.append(f"{layer:5d} " + "".join(f"{v:11.3g}" for v in row))
print("\n".join(lines))

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for pos, piece in enumerate(pieces):
    ax.plot(rms[:, pos].cpu(), marker="o", ms=3, label=f"{pos}: {piece!r}")
ax.set_yscale("log")
ax.set_xlabel("layer (0 = token embedding)")
ax.set_ylabel("RMS of the residual vector (log scale)")
ax.set_title(f"The residual stream grows as the layers add to it: {PROMPT!r}")
ax.legend(title="position: token", fontsize=9)
ax.grid(alpha=0.3)
plt.show()
peak = rms.argmax()
print(f"{rms.shape[1]} curves of {rms.shape[0]} points; the largest RMS, {rms.max():.3g}, "
      f"is position {int(peak) % rms.shape[1]} after layer {int(peak) // rms.shape[1]}")

# %% [markdown]
# For the bundled model, the embeddings are small (RMS about 0.1), and the blocks make the
# vectors steadily larger: the updates add up rather than cancel, to an RMS of 22 to 30 after the
# last layer. The first position is different. Its RMS jumps to 28 by layer 3, drops back to the
# level of the others at layers 10 and 11, then jumps to about 950 at layer 12, stays there until
# layer 28, and falls in the last two layers. Many LLaMA-style models park a few very large
# values on the first token, which every later token can attend to; chapter 10 looks at these
# "massive activations" {cite}`sun2024massive` and at what the intermediate states encode. (These
# are the 4-bit model's values; the 16-bit release may differ in the details.)
#
# Because the stream's scale changes by orders of magnitude from layer to layer, each sub-layer
# normalises its input first, and so does the LM head.

# %% [markdown]
# ## The final norm and the LM head
#
# After the last block, one more RMSNorm, then a linear map from `dim` to `vocab_size`, the
# {term}`LM head`, gives one score, a {term}`logit <Logits>`, per vocabulary entry at every
# position:
#
# $$
# z = W_{\text{out}} \operatorname{RMSNorm}(x_L), \qquad W_{\text{out}} \in \mathbb{R}^{\text{vocab} \times \text{dim}}.
# $$
#
# The bundled SmolLM2 ties the LM head to the token embedding {cite}`press2017tying`
# ({term}`tied embeddings <Tied embeddings>`): $W_{\text{out}}$ *is* the embedding table of
# chapter 3, so a logit is the dot product of the final state with each token's embedding.
# Llama 2 has a separate output matrix. `Transformer.forward` is the embedding, the loop over
# the blocks, the norm and the head:

# %%
show(al.model.Transformer.forward)

# %%
print("tied LM head:", model.output.weight is model.tok_embeddings.weight)
print("W_out:", tuple(model.output.weight.shape))
head = model.output(model.norm(states[-1])).float()  # [1, seq, vocab]
print("head(norm(last state)) == model(tokens):", torch.equal(head, logits))
assert torch.equal(head, logits)

# %% [markdown]
# ## Only the last position goes to the LM head
#
# The model computes a logit vector at every position, and each one is a prediction of the token
# after that position. For generating text only the last one is new: the earlier ones predict
# tokens we already have. So `forward` takes `last_only=True`, which cuts the residual stream to
# its last position *before* the final norm and the head (the lines `if last_only:` above). The
# blocks still run on every position, since attention at the last position reads all of them;
# only the head's work shrinks.
#
# What the head costs per position is `vocab_size` float32 logits (4 bytes each) and
# `vocab_size × dim` multiply-adds. For a prompt of 2,048 tokens:

# %%
last = model(tokens, last_only=True)  # [1, 1, vocab]
print("last_only:", tuple(last.shape), "instead of", tuple(logits.shape))
gap = check_close(last[:, -1], logits[:, -1], model.dtype, "last-position logits")
print(f"same logits at the last position, within {TOL:.2g} relative: {gap <= TOL}")


def block_macs(args):  # multiply-adds per position in the blocks' weight matrices
    attention = args.dim * args.head_dim * (2 * args.n_heads + 2 * args.n_kv_heads)
    return args.n_layers * (attention + 3 * args.dim * args.ffn_dim)


POSITIONS = 2048
for name, args in [("this model", a), ("llama2-7b", al.ModelArgs.preset("llama2-7b")),
                   ("llama3-8b", al.ModelArgs.preset("llama3-8b"))]:
    every = args.vocab_size * POSITIONS * 4  # bytes of float32 logits at every position
    share = args.vocab_size * args.dim / block_macs(args)
    print(f"{name:10s} vocab {args.vocab_size:7,}: logits at {POSITIONS:,} positions "
          f"{every / 1e9:5.2f} GB, at the last {args.vocab_size * 4 / 1e6:4.2f} MB; "
          f"head {share:4.0%} of the blocks' matrix multiply-adds")

# %% [markdown]
# With Llama 3's vocabulary of 128,256 tokens, the logits of a 2,048-token prompt take 1.05 GB in
# float32, next to 0.51 MB for the last position alone; that gigabyte comes on top of the
# weights on a GPU that may have little to spare. The head's share of the compute is small for
# the 7B and 8B models (2% and 8% of the multiply-adds in the blocks' weight matrices) and large
# for a small model with a large vocabulary: 27% for the bundled one. The logits at every position are needed where they
# are all used: in training, where every position's prediction enters the loss (the last section
# of this chapter), and in checks like the ones in this chapter. Generation needs the last
# position only: the loops written in this chapter, and the package's `generate_ids` below, ask for
# it with `last_only=True`.

# %% [markdown]
# ## The whole forward pass by hand
#
# Everything together, as a short loop in plain PyTorch that uses the model's modules:

# %%
def forward_by_hand(model, tokens):  # tokens [batch, seq] -> logits [batch, seq, vocab]
    freqs_cis = model.freqs_cis(tokens.device)[: tokens.shape[1]]  # [seq, head_dim/2]
    h = model.tok_embeddings(tokens)  # [batch, seq, dim]
    for block in model.layers:
        h = h + block.attention(block.attention_norm(h), 0, freqs_cis)  # [b, seq, dim]
        h = h + block.feed_forward(block.ffn_norm(h))  # [batch, seq, dim]
    return model.output(model.norm(h)).float()  # [batch, seq, vocab]


model.reset_cache()  # no KV cache: plain attention over the given tokens
by_hand = forward_by_hand(model, tokens)
gap = check_close(by_hand, model(tokens), model.dtype, "forward by hand")
print("logits:", tuple(by_hand.shape))
print(f"same as model(tokens), within {TOL:.2g} relative: {gap <= TOL}")

# %% [markdown]
# ## Our logits against transformers
#
# On a few prompts, we compare every logit at every position with transformers' model, and the
# top-ranked token at every position. Where the two best logits of a position are closer than
# the rounding gap `check_close` allows, either may legitimately come out on top, so the top
# tokens are compared at the other positions (a "near tie" is a gap below twice the tolerance
# times the largest |logit|).

# %%
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "1, 2, 3, 4, 5,"]


def near_ties(z):  # [..., vocab] -> bool [...]: top two logits closer than twice the tolerance
    top2 = z.float().topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1] < 2 * TOL * z.float().abs().amax(-1)


print(f"{'prompt':27} {'tokens':>6}  {'within tolerance':>16}  same top token: asserted  "
      "all positions")
worst = 0.0
for prompt in PROMPTS:
    ids = torch.tensor([tok.encode(prompt)], device=model.device)  # [1, seq]
    ours, theirs = model(ids), hf(ids).logits.float()  # [1, seq, vocab] each
    gap = check_close(ours, theirs, model.dtype, f"logits of {prompt!r}")
    worst = max(worst, gap)
    sure = ~near_ties(ours)  # [1, seq]
    same = torch.equal(ours.argmax(-1)[sure], theirs.argmax(-1)[sure])
    assert same, f"top token differs at a position without a near tie: {prompt!r}"
    everywhere = torch.equal(ours.argmax(-1), theirs.argmax(-1))  # near ties included
    print(f"{prompt!r:27} {ids.shape[1]:6d}  {gap <= TOL!s:>16}  {int(sure.sum()):9d} of "
          f"{ids.shape[1]:<5d}  {everywhere}")
print(f"largest relative difference, order of magnitude: 1e{math.floor(math.log10(worst))}")

# %% [markdown]
# On the bundled model in float32 the largest difference is of order $10^{-6}$ of the largest
# logit: the two implementations differ only in the order of their floating-point operations.
# Both pick the same top token at every position of every prompt (in float32 none of them is a
# near tie). In 16 bits the gap grows to the size of the 16-bit rounding, and the check's
# tolerance with it: in bf16 the tolerance is an eighth of the largest logit, and any position whose
# two best logits are closer than a quarter of it counts as a near tie and is not compared, so in
# bf16 this check asserts much less; the last column still says whether the top tokens agree
# everywhere.

# %% [markdown]
# ## From logits to a next token
#
# Only the last position's logits matter for what comes next. A {term}`softmax <Softmax>` turns
# them into a probability distribution over the vocabulary, $p_i = e^{z_i} / \sum_j e^{z_j}$:

# %%
probs = logits[0, -1].softmax(-1)  # [vocab]
top_probs, top_ids = probs.topk(10)  # [10], [10]
top_pieces = [token_text(i) for i in top_ids.tolist()]
for rank, (piece, p) in enumerate(zip(top_pieces, top_probs.tolist()), 1):
    print(f"{rank:2d}. {piece!r:12} {p:.3f}")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
ax.barh(range(10), top_probs.cpu(), color="#4a86c5")
ax.set_yticks(range(10), [repr(p) for p in top_pieces], family="monospace")
ax.invert_yaxis()
ax.set_xlabel("probability of the next token")
ax.set_title(f"Top 10 next tokens after {PROMPT!r}")
for i, p in enumerate(top_probs.tolist()):
    ax.text(p + 0.005, i, f"{p:.3f}", va="center", fontsize=9)
ax.set_xlim(0, 1)
plt.show()
print(f"10 bars, from {top_probs[0]:.3f} ({top_pieces[0]!r}) to {top_probs[-1]:.3f}; "
      f"together {top_probs.sum():.3f}")

# %% [markdown]
# For the bundled model, " Paris" takes 0.773 of the probability and the ten most likely tokens
# together 0.903; the rest spreads over the other 49,142 tokens. (This is the 4-bit model's
# probability; the 16-bit SmolLM2 would give a somewhat different number.) How we pick from this
# distribution is the decoding strategy.

# %% [markdown]
# ## Greedy decoding with the KV cache
#
# {term}`Greedy decoding <Greedy decoding>` always takes the most likely token,
# $t_{n+1} = \arg\max_i z_i$, appends it and repeats. With the {term}`KV cache` of chapter 7 the
# prompt goes through the model once ({term}`prefill <Prefill>`), and after that only the newest
# token does ({term}`decode <Decode>`), at position `start_pos`. Both ask for the last position's
# logits only. The function also records, at each step, whether the two best logits were a near
# tie (as defined above), for the comparisons below.

# %%
def greedy_by_hand(model, prompt_ids, n_new, eos_id):  # -> new ids, near tie at each step
    tokens = torch.tensor([prompt_ids], device=model.device)  # [1, seq]
    logits = model(tokens, start_pos=0, last_only=True)[:, -1]  # prefill: [1, vocab]
    new, ties = [], []
    for step in range(n_new):
        next_id = logits.argmax(-1)  # [1]
        if int(next_id) == eos_id:
            break
        new.append(int(next_id))
        ties.append(bool(near_ties(logits[0])))
        pos = len(prompt_ids) + step  # where the new token sits
        logits = model(next_id.view(1, 1), start_pos=pos, last_only=True)[:, -1]  # decode
    return new, ties


N_NEW = 10
prompt_ids = tok.encode(PROMPT)
greedy_ids, greedy_ties = greedy_by_hand(model, prompt_ids, N_NEW, tok.eos_id)
print(greedy_ids)
print(repr(continuation(prompt_ids, greedy_ids)))
print(f"{len(greedy_ids)} new tokens, {sum(greedy_ties)} of them picked at a near tie")

# %% [markdown]
# Two greedy runs that round differently agree up to their first near tie; after it, either
# continuation is a correct greedy decoding of its own numbers. So comparisons of generated
# tokens below assert equality up to the first step where our top two logits were a near tie.

# %%
def agree_until_near_tie(ours, theirs, ties):  # -> how many tokens were compared
    n = next((i for i, tie in enumerate(ties) if tie), len(ties))  # steps before the first tie
    assert ours[:n] == theirs[:n], f"tokens differ before the first near tie: {ours} {theirs}"
    return n


# %% [markdown]
# The package's `al.generate` runs the same loop, `generate_ids`: a prefill, then one decode step
# per token, with `sample_next` choosing each token (greedy when the temperature is 0). It also
# keeps the sampler off ids that no token owns (`n_tokens`): some checkpoints give the embedding
# spare rows beyond the tokenizer's vocabulary.

# %%
show(generate_ids)

# %% [markdown]
# Its tokens, and those of transformers' `generate` with `do_sample=False` on its model (with our
# end-of-sequence id, so that both stop at the same token):

# %%
package_ids = list(generate_ids(model, prompt_ids, N_NEW, stop_ids={tok.eos_id}))
text = al.generate(model, tok, PROMPT, max_new_tokens=N_NEW)
hf_out = hf.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                     max_new_tokens=N_NEW, eos_token_id=tok.eos_id)  # [1, seq + new]
hf_ids = [i for i in hf_out[0, seq:].tolist() if i != tok.eos_id]

print("al.generate: ", repr(text))
print("generate_ids:", package_ids)
print("transformers:", hf_ids)
n_pkg = agree_until_near_tie(greedy_ids, package_ids, greedy_ties)
n_hf = agree_until_near_tie(greedy_ids, hf_ids, greedy_ties)
print(f"same tokens as greedy_by_hand up to the first near tie: package {n_pkg} of "
      f"{len(greedy_ids)}, transformers {n_hf} of {len(greedy_ids)}")
print(f"all tokens the same: package {package_ids == greedy_ids}, "
      f"transformers {hf_ids == greedy_ids}")

# %% [markdown]
# For the bundled model in float32 no step is a near tie, so all ten tokens are compared, and all
# three agree.

# %% [markdown]
# ## Temperature
#
# Greedy decoding is deterministic, and on longer texts it tends to repeat itself. Sampling
# draws the next token from the distribution instead. The {term}`temperature <Temperature>` $T$
# divides the logits before the softmax:
#
# $$
# p_i(T) = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}.
# $$
#
# $T < 1$ sharpens the distribution (towards greedy as $T \to 0$), $T > 1$ flattens it (towards
# uniform). Dividing by a positive number keeps the order of the logits, so the ranking of the
# tokens is the same at every temperature; only the gaps between their probabilities change.

# %%
TEMPERATURES = [0.5, 1.0, 2.0]
z = logits[0, -1]  # [vocab], the last position
by_t, lines = {}, []
for t in TEMPERATURES:
    p = (z / t).softmax(-1)  # [vocab]
    by_t[t] = p[top_ids]  # the same 10 tokens as above
    entropy = -(p * p.clamp_min(1e-30).log2()).sum().item()
    lines.append(f"T = {t}: P({top_pieces[0]!r}) = {p[top_ids[0]]:.2f}, "
                 f"entropy {entropy:5.2f} bits")
print("\n".join(lines))

# %%
fig, ax = plt.subplots(figsize=(8, 4))
width = 0.27
for k, t in enumerate(TEMPERATURES):
    xs = [i + (k - 1) * width for i in range(10)]
    ax.bar(xs, by_t[t].cpu(), width, label=f"T = {t}")
ax.set_xticks(range(10), [repr(p) for p in top_pieces], rotation=40, ha="right")
ax.set_yscale("log")
ax.set_ylabel("probability (log scale)")
ax.set_xlabel("next token (the top 10 at T = 1)")
ax.set_title(f"Temperature reshapes the next-token distribution after {PROMPT!r}")
ax.legend()
plt.show()
print("top-10 mass per temperature:",
      ", ".join(f"T = {t}: {by_t[t].sum():.3f}" for t in TEMPERATURES))
lose = int((by_t[2.0] < by_t[1.0]).sum())
print(f"tokens of the top 10 with less probability at T = 2 than at T = 1: {lose} of 10")

# %% [markdown]
# For the bundled model, at $T = 0.5$ " Paris" takes nearly everything (0.99). At $T = 2$ even
# the runners-up lose probability compared with $T = 1$: the mass moves out of the top 10 into
# the tens of thousands of tokens of the tail, and the entropy rises from 2.14 to 12.46 bits.

# %% [markdown]
# ## Top-k and top-p
#
# Even at $T = 1$, a sample sometimes lands in the long tail of unlikely tokens, and one bad
# token can derail the rest of the text. Two cuts remove the tail before sampling:
#
# - **top-k** keeps the $k$ most likely tokens {cite}`fan2018hierarchical`;
# - **{term}`top-p <Top-p>`**, or nucleus sampling, keeps the smallest set of most likely tokens
#   whose probabilities add up to at least $p$ {cite}`holtzman2020nucleus`. Where the model is
#   sure, the nucleus is small; where many continuations are plausible, it is large.
#
# The probabilities that survive are renormalised to sum to 1. Here is the nucleus cut by hand:
# a token survives if the tokens ranked above it hold less than $p$ (so the top one always
# survives).

# %%
def nucleus(probs, p):  # probs [vocab] -> the ids that survive, most likely first
    sorted_probs, order = probs.sort(descending=True)  # [vocab], [vocab]
    mass_before = sorted_probs.cumsum(0) - sorted_probs  # held by the tokens ranked above
    return order[mass_before < p]


kept = nucleus(probs, 0.9)
mass = probs[kept].sum().item()
print(f"p = 0.9 keeps {len(kept)} of {probs.numel()} tokens, holding {mass:.3f}")
print("the ten tokens of the bar chart:", set(kept.tolist()) == set(top_ids.tolist()))
print("|".join(token_text(i) for i in kept[:20].tolist()))

# %% [markdown]
# For the bundled model, after "The capital of France is", the nucleus at $p = 0.9$ is exactly
# the ten tokens of the bar chart above. transformers implements the same cuts as logits
# processors, and on the bundled model they keep the same sets. On a flat distribution (random
# weights give one) the boundary is fuzzy: many tokens have nearly or exactly the same
# probability, transformers sums the probabilities from the other end, and ties may be broken
# either way. So the cell asserts what must hold for any model: transformers' top-p set is also
# a set of most likely tokens (none it dropped is more likely than one it kept), its mass agrees
# with ours to within 0.001, and its top-k keeps the $k$ most likely tokens and any tied with
# the $k$-th.

# %%
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper  # noqa: E402


def survivors(warped):  # [1, vocab] logits, -inf where cut -> set of ids kept
    return set(warped[0].isfinite().nonzero()[:, 0].tolist())


hf_top_p = survivors(TopPLogitsWarper(top_p=0.9)(tokens, z[None].clone()))
hf_top_k = survivors(TopKLogitsWarper(top_k=3)(tokens, z[None].clone()))
top3_or_tied = set((z >= z.topk(3).values[-1]).nonzero()[:, 0].tolist())
print("top-p 0.9, same set as ours:", hf_top_p == set(kept.tolist()))
print("top-k 3, same set as the top 3:", hf_top_k == set(top_ids[:3].tolist()))
hf_kept = torch.zeros_like(probs, dtype=torch.bool)
hf_kept[list(hf_top_p)] = True
dropped = probs[~hf_kept]
assert dropped.numel() == 0 or probs[hf_kept].min() >= dropped.max() * (1 - 1e-4)  # most likely
assert abs(probs[hf_kept].sum().item() - mass) <= 1e-3
assert hf_top_k == top3_or_tied and set(top_ids[:3].tolist()) <= hf_top_k

# %% [markdown]
# Temperature and top-p together, to try by hand: the sliders below apply the same rules in the
# page, to the 50 most likely tokens after the prompt (the rest of the vocabulary is left out, so
# the probabilities shown are renormalised over these 50; the cell prints how much of the full
# distribution they hold). Grey bars are $p_i(T)$, blue bars what survives the top-p cut,
# renormalised; a test checks the page's numbers against the package's `sample_next` on the same
# 50 logits.

# %%
from annotated_llama import explorers  # noqa: E402

sampling_explorer = explorers.sampling(z, token_text, prompt=PROMPT, n=50,
                                       temperature=1.0, top_p=0.9)
print(sampling_explorer.summary)
print(f"at T = 1 the 50 tokens hold {sampling_explorer.data['full_mass']:.3f} of the probability")

# %% tags=["remove-input", "nbval-ignore-output"]
sampling_explorer

# %% [markdown]
# The package's `sample_next` applies temperature, then top-k, then top-p, and draws with
# `torch.multinomial` from a `torch.Generator` of its own, so a seed fixes the draw without
# touching PyTorch's global random state:

# %%
show(sample_next)

# %% [markdown]
# A sampler written by hand from the three steps, drawing from a generator seeded like the
# package's, picks the same tokens. We draw 20 tokens at once (20 copies of the same logits)
# at $T = 1$, $p = 0.9$:

# %%
def sample_by_hand(logits, temperature, top_p, generator):  # [batch, vocab] -> [batch]
    probs = (logits.float() / temperature).softmax(-1)  # [batch, vocab]
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # nucleus cut
    sorted_probs = sorted_probs / sorted_probs.sum(-1, keepdim=True)  # renormalise
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # [batch, 1]: ranks
    return order.gather(-1, choice)[:, 0]  # rank -> token id


batch = z[None].expand(20, -1)  # [20, vocab]
gen = lambda: torch.Generator(device=model.device).manual_seed(0)  # noqa: E731
ours = sample_by_hand(batch, 1.0, 0.9, gen())
package = sample_next(batch, temperature=1.0, top_p=0.9, generator=gen())
inside = set(ours.tolist()) <= set(kept.tolist())
print("|".join(token_text(i) for i in ours.tolist()))
print("same draws as al.sample_next:", torch.equal(ours, package))
print("all inside the nucleus:", inside)
assert torch.equal(ours, package) and inside

# %% [markdown]
# Top-k works the same way; with $k = 3$ only the three most likely tokens can come out (for the
# bundled model " Paris", " the" and " London"):

# %%
draws = sample_next(batch, temperature=1.0, top_k=3, generator=gen())
print("|".join(token_text(i) for i in draws.tolist()))
assert set(draws.tolist()) <= top3_or_tied

# %% [markdown]
# ## Seeded sampling is reproducible
#
# With a seed, the sampling loop draws the same tokens every time; another seed gives other
# tokens. `al.generate(model, tok, prompt, temperature=0.8, top_p=0.9, seed=0)` returns their
# text; here we call the loop itself, `generate_ids`, at $T = 0.8$ with $p = 0.9$:

# %%
SAMPLING = dict(temperature=0.8, top_p=0.9)
story = tok.encode("Once upon a time")
first = list(generate_ids(model, story, N_NEW, seed=0, **SAMPLING))
again = list(generate_ids(model, story, N_NEW, seed=0, **SAMPLING))
other = list(generate_ids(model, story, N_NEW, seed=1, **SAMPLING))
print("seed 0:", repr(continuation(story, first)))
print("seed 0:", repr(continuation(story, again)))
print("seed 1:", repr(continuation(story, other)))
assert first == again

# %% [markdown]
# (On a GPU the same seed will in general give other draws: CUDA's generator is a different
# random-number stream from the CPU's, and PyTorch does not promise equal results across
# devices. Not yet run here: no GPU has been lent to this book.)

# %% [markdown]
# ## Streaming
#
# `al.stream` yields text as the tokens arrive, which is what a chat interface shows. It decodes
# the prompt and all new ids each time and releases only the new text: decoding a token alone
# can lose the space that belongs to it (in SentencePiece vocabularies) or cut a multi-byte
# character in half. An interface would print each piece the moment it arrives; here we note
# when each one came and print them together, joined by `|` so that the token boundaries show
# (a newline is written `\n`):

# %%
start, arrivals = time.perf_counter(), []
for piece in al.stream(model, tok, PROMPT, max_new_tokens=N_NEW):
    arrivals.append((time.perf_counter() - start, piece))  # a UI shows `piece` now
times, pieces_out = zip(*arrivals) if arrivals else ((), ())
print("|".join(piece.replace("\n", "\\n") for piece in pieces_out))
if len(times) > 1:
    print(f"first piece after ⏱{times[0]:.2f} s, then one every "
          f"⏱{(times[-1] - times[0]) / (len(times) - 1):.2f} s (one run, on this CPU)")
assert "".join(pieces_out) == text  # the greedy text from al.generate above

# %% [markdown]
# ## Several prompts at once
#
# A GPU reads every weight once per decode step whether it computes one sequence or eight, so
# serving systems decode a *batch* of prompts together. The model takes `tokens` of shape
# `[batch, seq]`, but prompts have different lengths, and a rectangle needs them
# {term}`padded <Padding>`.
#
# For batched generation, transformers pads on the *left* (a tokenizer with
# `padding_side="left"`): every prompt ends in the last column, all rows produce their next token
# at the same step, and an attention mask keeps real tokens from attending to the padding, with
# position ids that start at each row's first real token. Our model has no
# attention mask, so it cannot hide padding from attention.
#
# Meta's reference `generate` (in `llama/generation.py` of its
# [llama repository](https://github.com/meta-llama/llama)) needs none. It fills a
# `[batch, prompt + new]` tensor with `pad_id` (the SentencePiece tokenizer has no padding piece
# and answers -1), writes each prompt from the left (padding on the *right*), and runs the
# shortest prompt's length as the prefill. Then it steps through the columns one at a time: at
# each column it computes every row's next token, and keeps it only where the row's prompt has
# no token there. A row's real tokens always sit at their true positions, and a padding column is
# filled before any later position reads it, so nothing ever attends to padding. The price is
# that the longer prompts' extra tokens go through one decode step each instead of the prefill.

# %%
PAD = -1  # Meta's pad_id: never fed to the model, only marks the free slots


def generate_batch(model, prompts, n_new):  # Meta's loop, greedy -> new ids, ties per row
    lengths = [len(p) for p in prompts]
    tokens = torch.full((len(prompts), max(lengths) + n_new), PAD, device=model.device)
    for row, ids in enumerate(prompts):
        tokens[row, : len(ids)] = torch.tensor(ids)  # right padding
    is_prompt = tokens != PAD  # [batch, total]
    ties = torch.zeros_like(is_prompt)  # a near tie at the step that wrote this column
    prev = 0
    for cur in range(min(lengths), tokens.shape[1]):  # first: the shortest prompt as prefill
        logits = model(tokens[:, prev:cur], start_pos=prev, last_only=True)[:, -1]  # [b, vocab]
        tokens[:, cur] = torch.where(is_prompt[:, cur], tokens[:, cur], logits.argmax(-1))
        ties[:, cur] = near_ties(logits)
        prev = cur
    return ([tokens[row, n: n + n_new].tolist() for row, n in enumerate(lengths)],
            [ties[row, n: n + n_new].tolist() for row, n in enumerate(lengths)])


BATCH = [PROMPT, "Once upon a time, in a small village by the sea,"]
batch_ids = [tok.encode(p) for p in BATCH]
together, ties = generate_batch(model, batch_ids, N_NEW)
for prompt, ids, new, row_ties in zip(BATCH, batch_ids, together, ties):
    alone = list(generate_ids(model, ids, N_NEW))  # the same prompt on its own, batch of 1
    n = agree_until_near_tie(new, alone, row_ties)
    print(f"{len(ids):2d} prompt tokens: {continuation(ids, new)!r}")
    print(f"   same tokens as alone up to the first near tie: {n} of {N_NEW}; "
          f"all the same: {new == alone}")

# %% [markdown]
# For the bundled model in float32, both prompts get the same ten tokens in the batch as on their
# own, with no near tie to stop the comparison. The shorter prompt's row starts generating at
# the first step; the longer one copies its own prompt tokens at the first steps and starts
# later. Meta's loop (in its Llama 2 version) also stops early once every row has produced its
# end-of-sequence token, and samples when the temperature is above 0; this sketch leaves both
# out.

# %% [markdown]
# ## Talking to the instruct model
#
# The bundled model is SmolLM2-135M-*Instruct* {cite}`allal2025smollm2`: after pre-training it
# was fine-tuned on conversations written in the ChatML format, where each turn is wrapped in
# `<|im_start|>role\n ... <|im_end|>\n`. To ask it a question we write that format ourselves
# and leave the assistant's turn open. (This section is about the bundled model; a base model
# like Llama-2-7B has no chat format, and Llama 3's instruct models use another one. The cells
# check that the tokenizer has ChatML's two special tokens, and skip otherwise.)

# %%
question = "What is the capital of France?"
chat = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
SPECIALS = ["<|im_start|>", "<|im_end|>"]
has_chatml = all(len(tok.encode(s, bos=False)) == 1 for s in SPECIALS)
if has_chatml:
    chat_ids = tok.encode(chat)
    print(len(chat_ids), "tokens:")
    print("|".join(tok.id_to_piece(i) for i in chat_ids))  # Ġ: space, Ċ: newline
    for special in SPECIALS:
        print(f"{special}: id {tok.piece_to_id(special)}")
    print("eos_id:", tok.eos_id)
else:
    print("this tokenizer has no ChatML tokens: the chat cells are skipped")

# %% [markdown]
# (The pieces are written in the byte-level alphabet of chapter 2: `Ġ` is a space, `Ċ` a
# newline.) `<|im_start|>` and `<|im_end|>` are single tokens, and `<|im_end|>` is the bundled
# model's end-of-sequence token, so generation stops by itself when the assistant's turn is over:

# %%
if has_chatml:
    answer = al.generate(model, tok, chat, max_new_tokens=32)
    print(repr(answer))

# %% [markdown]
# The model's published chat template also puts a default system turn in front of the first
# user turn; the short prompt above is enough for this question.

# %% [markdown]
# ## The loss: how well the model predicts a text
#
# Generation uses the last position's logits; training uses all of them. At every position $t$
# the model gives a distribution $p(\cdot \mid x_{\le t})$ over the next token, and the text says
# what the next token was. The loss is the average negative log-probability of the true next
# tokens, the {term}`cross-entropy <Cross-entropy>`:
#
# $$
# \mathcal{L} = -\frac{1}{n-1} \sum_{t=1}^{n-1} \log p(x_{t+1} \mid x_{\le t}),
# \qquad \text{perplexity} = e^{\mathcal{L}}.
# $$
#
# The {term}`perplexity <Perplexity>` reads as an effective number of choices: a model that spread its probability
# evenly over $k$ tokens at every step would have perplexity $k$, and one that guessed uniformly
# over the vocabulary would have the vocabulary's size. We measure it on a text written for this
# book: the opening of chapter 0 (its first paragraph and most of the second).

# %%
TEXT = (
    "A language model like LLaMA does one thing over and over: it reads a sequence of tokens "
    "and produces a score for every token in its vocabulary, the model's guess at what comes "
    "next. Pick one of those tokens, append it, and repeat, and you have generated text.\n\n"
    "This book follows that one step, the forward pass, from the text going in to the token "
    "coming out. Each chapter takes the tensors the previous chapter left us with, explains "
    "the next piece in a few sentences and an equation, builds it in plain PyTorch with the "
    "shapes written out, and then checks the result against an independent reference."
)
text_ids = torch.tensor([tok.encode(TEXT)], device=model.device)  # [1, n]
model.reset_cache()
text_logits = model(text_ids)  # [1, n, vocab]: every position is used here
losses = F.cross_entropy(text_logits[0, :-1], text_ids[0, 1:], reduction="none")  # [n - 1]
loss = losses.mean()
print(f"{text_ids.shape[1]} tokens, {len(losses)} predictions")
print(f"loss {loss:.3f} nats per token = {loss / math.log(2):.2f} bits, "
      f"perplexity {loss.exp():.1f}")
print(f"uniform guessing: loss {math.log(a.vocab_size):.3f}, perplexity {a.vocab_size:,}")

# %% [markdown]
# The tokens the model found easiest and hardest to predict (each with the text before it):

# %%
ids_list = text_ids[0].tolist()


def shown(t):  # the predicted token at position t + 1, with a few tokens of context
    before = tok.decode(ids_list[max(0, t - 3): t + 1]).replace("\n", "\\n")
    return f"{before!r:>32} -> {token_text(ids_list[t + 1])!r}"


order = losses.argsort()
for label, picks in [("easiest", order[:4]), ("hardest", order.flip(0)[:4])]:
    print(label)
    for t in picks.tolist():
        print(f"  {losses[t]:6.2f}  {shown(t)}")

# %% [markdown]
# For the bundled model, the loss on these two paragraphs is 4.259 nats per token, a perplexity
# of 70.8: on average it is as unsure as a choice among 71 tokens, against 49,152 for a uniform
# guess. It predicts the end of a fixed phrase ("over and over", "a sequence of") almost for
# free, and pays most where the text surprises it: " tensors" after "Each chapter takes the",
# and the name LLaMA, which its tokenizer splits into pieces. (These are the 4-bit model's
# numbers; the 16-bit release would score somewhat differently.)
#
# transformers computes the same loss when it is given `labels=` (it shifts them by one
# position itself):

# %%
hf_loss = hf(text_ids, labels=text_ids).loss
gap = check_close(loss, hf_loss, model.dtype, "loss")
print(f"ours {loss:.4f}, transformers {hf_loss.float():.4f}, within {TOL:.2g} relative: "
      f"{gap <= TOL}")

# %% [markdown]
# ## One gradient, checked
#
# Training would now take the gradient of the loss with respect to every weight and step
# against it. We take it for one matrix, the last layer's down projection `w2` (transformers'
# `mlp.down_proj`), with autograd turned on for that matrix alone, so that the backward pass
# runs only through the layers after it. Our model and transformers' hold the same storage for
# it, each through a `Parameter` object of its own, so each side's gradient is taken with respect
# to its own object.
#
# A gradient entry is a sum over every position of a product, and entries that nearly cancel keep
# the rounding of all the terms; so the check compares the whole matrix, by the norm of the
# difference relative to the norm of transformers' gradient, against the same tolerance as the
# logits.

# %%
ours_w = model.layers[-1].feed_forward.w2.weight  # [dim, ffn_dim]
hf_w = hf.model.layers[-1].mlp.down_proj.weight
assert ours_w is not hf_w and ours_w.data_ptr() == hf_w.data_ptr()  # same storage
with torch.enable_grad():
    ours_w.requires_grad_(True)
    hf_w.requires_grad_(True)
    try:
        model.reset_cache()
        our_loss = F.cross_entropy(model(text_ids)[0, :-1], text_ids[0, 1:])
        (ours_grad,) = torch.autograd.grad(our_loss, ours_w)
        (hf_grad,) = torch.autograd.grad(hf(text_ids, labels=text_ids).loss, hf_w)
    finally:
        ours_w.requires_grad_(False)
        hf_w.requires_grad_(False)
model.reset_cache()

gap = ((ours_grad.float() - hf_grad.float()).norm() / hf_grad.float().norm()).item()
print("gradient:", tuple(ours_grad.shape), ours_grad.dtype)
print(f"‖ours - transformers‖ / ‖transformers‖ <= {TOL:.2g}: {gap <= TOL}")
print(f"order of magnitude of that difference: 1e{math.floor(math.log10(max(gap, 1e-30)))}")
assert gap <= TOL, f"gradients differ by {gap:.2e} (relative, in norm)"

# %% [markdown]
# In float32 the two gradients of the bundled model agree to about $10^{-6}$: transformers'
# backward pass through its own code gives the same gradient as ours. A training step would
# subtract a small multiple of it from `w2`; that, and what a whole training loop needs on top
# (an optimiser, batches, a schedule, much more memory for the gradients and the optimiser's
# state), is beyond this book.

# %% [markdown]
# ## What we have now
#
# The whole forward pass, checked end to end. For the bundled model and our five-token prompt:
#
# | step | shape |
# |---|---|
# | token ids | `[1, 5]` |
# | token embedding | `[1, 5, 576]` |
# | 30 blocks, each adding attention and SwiGLU updates to the residual stream | `[1, 5, 576]` |
# | final RMSNorm | `[1, 5, 576]` |
# | LM head (tied to the embedding), every position or `last_only` | `[1, 5, 49152]` or `[1, 1, 49152]` |
# | last position, softmax | `[49152]` |
# | greedy or sampled next token | one id: " Paris" |
#
# Our logits match transformers' `LlamaForCausalLM` to within the rounding of the dtype, and
# greedy generation gives the same tokens up to the first near tie. Generation is this pass in a
# loop: a prefill over the prompt, then one token at a time through the KV cache, with
# temperature, top-k and top-p shaping each draw; several prompts run together with Meta's
# right-padded loop. The loss on a text uses every position's logits, and its gradient agrees
# with transformers'.
#
# The timings in this chapter are of this readable loop on a CPU. Chapter 10 opens the model up:
# it decodes the residual stream after every layer with the final norm and the LM head (the
# logit lens), and looks at attention patterns and at the massive activations we saw on the first
# position. Chapter 11 builds the faster decode loop a GPU needs and says which of its numbers
# were measured on which machine.
