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
# streaming, and the chat format that the bundled instruct model was trained on.

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
import time
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

import annotated_llama as al
from annotated_llama.generate import generate_ids, sample_next
from annotated_llama.reference import transformers_model

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, via transformers
torch.manual_seed(0)
_ = torch.set_grad_enabled(False)  # inference only: no autograd graphs in this chapter

# %%
MODEL = "smollm2-135m"  # the one line to change: e.g. "meta-llama/Llama-2-7b-hf" on a Colab GPU

# %% [markdown]
# We load our model and, as the independent reference, transformers' `LlamaForCausalLM` on the
# same weights, in the device and dtype that `al.load` picked (CPU and float32 here; CUDA and
# bfloat16 on a GPU). A few checks below are exact only in float32; they say so.

# %%
model, tok = al.load(MODEL)
hf = transformers_model(MODEL, device=model.device, dtype=model.dtype)
FLOAT32 = model.dtype == torch.float32
a = model.args
print(f"{model.device.type}, {model.dtype}")
print(f"dim {a.dim}, n_layers {a.n_layers}, n_heads {a.n_heads}, "
      f"n_kv_heads {a.n_kv_heads}, vocab {a.vocab_size}")


def show(obj):
    """Render the package's source of ``obj`` as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


# %% [markdown]
# ## The transformer block
#
# A block has two sub-layers, attention and the feed-forward network. Each one reads a
# normalised copy of its input and *adds* its result to the input:
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
# This running sum is the *residual stream*: every sub-layer reads from it and writes into it
# {cite}`elhage2021mathematical`. We record it after the embedding and after every block with
# forward hooks, while the model runs normally.

# %%
states = []  # the residual stream: after the embedding, then after each block
record = lambda module, inputs, output: states.append(output)  # noqa: E731
modules = [model.tok_embeddings, *model.layers]
hooks = [m.register_forward_hook(record) for m in modules]
logits = model(tokens)  # [1, seq, vocab]
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

# %% [markdown]
# The embeddings are small (RMS about 0.1), and the blocks make the vectors steadily larger:
# the updates add up rather than cancel, to an RMS of about 25 after the last layer. The first
# position is different. Its RMS jumps to about 28 by layer 3, drops back to the level of the
# others at layers 10 and 11, then jumps to about 950 at layer 12, stays there until layer 28, and
# falls in the last two layers. Many LLaMA-style models park a few very large
# values on the first token, which every later token can attend to; chapter 10 looks at these
# "massive activations" {cite}`sun2024massive` and at what the intermediate states encode.
#
# Because the stream's scale changes by orders of magnitude from layer to layer, each sub-layer
# normalises its input first, and so does the LM head.

# %% [markdown]
# ## The final norm and the LM head
#
# After the last block, one more RMSNorm, then a linear map from `dim` to `vocab_size` gives one
# score, a logit, per vocabulary entry at every position:
#
# $$
# z = W_{\text{out}} \operatorname{RMSNorm}(x_L), \qquad W_{\text{out}} \in \mathbb{R}^{\text{vocab} \times \text{dim}}.
# $$
#
# SmolLM2 ties the LM head to the token embedding {cite}`press2017tying`: $W_{\text{out}}$ *is*
# the embedding table of chapter 3, so a logit is the dot product of the final state with each token's embedding.
# Llama 2 has a separate output matrix. `Transformer.forward` is the embedding, the loop over
# the blocks, the norm and the head:

# %%
show(al.model.Transformer.forward)

# %%
print("tied LM head:", model.output.weight is model.tok_embeddings.weight)
print("W_out:", tuple(model.output.weight.shape))
head = model.output(model.norm(states[-1])).float()  # [1, seq, vocab]
print("head(norm(last state)) == model(tokens):", torch.equal(head, logits))

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
diff = (by_hand - model(tokens)).abs().max().item()
print("logits:", tuple(by_hand.shape))
print("max |diff| vs model(tokens) < 1e-5:", diff < 1e-5)
if FLOAT32:
    assert diff < 1e-5

# %% [markdown]
# ## Our logits against transformers
#
# transformers' `LlamaForCausalLM` is an independent implementation: rotate-half RoPE on
# permuted q/k weights (chapter 5), its own attention and norm code, weights dequantized from
# the GGUF file by transformers itself. On a few prompts, we compare every logit at every
# position, and the top-ranked token at every position.

# %%
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "1, 2, 3, 4, 5,"]
TOL = 1e-4
rows, worst, all_same, largest = [], 0.0, True, 0.0
for prompt in PROMPTS:
    ids = torch.tensor([tok.encode(prompt)], device=model.device)  # [1, seq]
    ours, theirs = model(ids), hf(ids).logits.float()  # [1, seq, vocab] each
    d = (ours - theirs).abs().max().item()
    same = torch.equal(ours.argmax(-1), theirs.argmax(-1))
    worst, all_same = max(worst, d), all_same and same
    largest = max(largest, ours.abs().max().item())
    rows.append(f"{prompt!r:27} {ids.shape[1]:6d}  {str(d < TOL):17}  {same}")
print(f"{'prompt':27} {'tokens':>6}  max |diff| < 1e-4  same argmax everywhere")
print("\n".join(rows))
print(f"largest difference, order of magnitude: 1e{math.floor(math.log10(worst))}")
print(f"largest |logit|: {largest:.0f}")
if FLOAT32:  # in bfloat16 the two implementations round differently
    assert worst < TOL and all_same

# %% [markdown]
# On the bundled model in float32 the largest difference is of order $10^{-5}$, on logits as
# large as 38: the two implementations differ only in the order of their floating-point
# operations. And both pick the same top token at every position of every prompt.

# %% [markdown]
# ## From logits to a next token
#
# Only the last position's logits matter for what comes next. A softmax turns them into a
# probability distribution over the vocabulary, $p_i = e^{z_i} / \sum_j e^{z_j}$:

# %%
probs = logits[0, -1].softmax(-1)  # [vocab]
top_probs, top_ids = probs.topk(10)  # [10], [10]
top_pieces = [tok.decode([i]) for i in top_ids.tolist()]
for rank, (piece, p) in enumerate(zip(top_pieces, top_probs.tolist()), 1):
    print(f"{rank:2d}. {piece!r:12} {p:.3f}")
assert top_pieces[0] == " Paris"

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

# %% [markdown]
# " Paris" takes about three quarters of the probability; the rest spreads over thousands of
# tokens. How we pick from this distribution is the decoding strategy.

# %% [markdown]
# ## Greedy decoding with the KV cache
#
# Greedy decoding always takes the most likely token, $t_{n+1} = \arg\max_i z_i$, appends it and
# repeats. With the KV cache of chapter 7 the prompt goes through the model once (prefill), and
# after that only the newest token does (decode), at position `start_pos`:

# %%
def greedy_by_hand(model, prompt_ids, n_new, eos_id):
    tokens = torch.tensor([prompt_ids], device=model.device)  # [1, seq]
    logits = model(tokens, start_pos=0)[:, -1]  # prefill: [1, vocab]
    new = []
    for step in range(n_new):
        next_id = logits.argmax(-1)  # [1]
        if int(next_id) == eos_id:
            break
        new.append(int(next_id))
        pos = len(prompt_ids) + step  # where the new token sits
        logits = model(next_id.view(1, 1), start_pos=pos)[:, -1]  # decode, [1, vocab]
    return new


N_NEW = 10
prompt_ids = tok.encode(PROMPT)
start = time.perf_counter()
greedy_ids = greedy_by_hand(model, prompt_ids, N_NEW, tok.eos_id)
elapsed = time.perf_counter() - start
print(greedy_ids)
print(repr(tok.decode(greedy_ids)))
n = len(greedy_ids)
print(f"{n} tokens in {elapsed:.2f} s elapsed, {n / elapsed:.1f} tok/s")

# %% [markdown]
# The package's `al.generate` does the same (it also stops at the end-of-sequence token), and
# transformers' `generate` with `do_sample=False` on its own model produces the same token ids:

# %%
text = al.generate(model, tok, PROMPT, max_new_tokens=N_NEW)
hf_out = hf.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                     max_new_tokens=N_NEW, pad_token_id=tok.eos_id)  # [1, seq + N_NEW]
hf_ids = hf_out[0, seq:].tolist()

print("al.generate: ", repr(text))
assert text == tok.decode(greedy_ids)
print("transformers:", hf_ids)
print("same tokens:", hf_ids == greedy_ids)
if FLOAT32:
    assert hf_ids == greedy_ids

# %% [markdown]
# The loop inside `al.generate` is `generate_ids`: a prefill, then one decode step per token,
# with `sample_next` choosing each token.

# %%
show(generate_ids)

# %% [markdown]
# ## Temperature
#
# Greedy decoding is deterministic, and on longer texts it tends to repeat itself. Sampling
# draws the next token from the distribution instead. The temperature $T$ divides the logits
# before the softmax:
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
    paris = p[top_ids[0]].item()
    lines.append(f"T = {t}: P(' Paris') = {paris:.2f}, entropy {entropy:5.2f} bits")
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

# %% [markdown]
# At $T = 0.5$ " Paris" takes nearly everything. At $T = 2$ even the runners-up lose probability
# compared with $T = 1$: the mass moves out of the top 10 into the thousands of tokens of the
# tail, and the entropy rises from about 2 to about 12 bits.

# %% [markdown]
# ## Top-k and top-p
#
# Even at $T = 1$, a sample sometimes lands in the long tail of unlikely tokens, and one bad
# token can derail the rest of the text. Two cuts remove the tail before sampling:
#
# - **top-k** keeps the $k$ most likely tokens {cite}`fan2018hierarchical`;
# - **top-p**, or nucleus sampling, keeps the smallest set of most likely tokens whose
#   probabilities add up to at least $p$ {cite}`holtzman2020nucleus`. Where the model is sure,
#   the nucleus is small; where many continuations are plausible, it is large.
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
print(f"p = 0.9 keeps {len(kept)} of {probs.numel()} tokens, holding {mass:.3f}:")
print("|".join(tok.decode([i]) for i in kept.tolist()))

# %% [markdown]
# After "The capital of France is", the nucleus at $p = 0.9$ is exactly the ten tokens of the
# bar chart above. transformers implements the same cuts as logits processors; they keep the
# same sets:

# %%
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

def survivors(warped):  # [1, vocab] logits, -inf where cut -> set of ids kept
    return set(warped[0].isfinite().nonzero()[:, 0].tolist())


hf_top_p = survivors(TopPLogitsWarper(top_p=0.9)(tokens, z[None].clone()))
hf_top_k = survivors(TopKLogitsWarper(top_k=3)(tokens, z[None].clone()))
print("top-p 0.9, same set as ours:", hf_top_p == set(kept.tolist()))
print("top-k 3, same set as the top 3:", hf_top_k == set(top_ids[:3].tolist()))
assert hf_top_p == set(kept.tolist()) and hf_top_k == set(top_ids[:3].tolist())

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
print("|".join(tok.decode([i]) for i in ours.tolist()))
print("same draws as al.sample_next:", torch.equal(ours, package))
print("all inside the nucleus:", set(ours.tolist()) <= set(kept.tolist()))
assert torch.equal(ours, package)

# %% [markdown]
# Top-k works the same way; with $k = 3$ only " Paris", " the" and " London" can come out:

# %%
draws = sample_next(batch, temperature=1.0, top_k=3, generator=gen())
print("|".join(tok.decode([i]) for i in draws.tolist()))
assert set(draws.tolist()) <= set(top_ids[:3].tolist())

# %% [markdown]
# ## Seeded sampling is reproducible
#
# With a seed, `al.generate` samples the same text every time; another seed gives another text.
# Here at $T = 0.8$ with $p = 0.9$:

# %%
SAMPLING = dict(max_new_tokens=10, temperature=0.8, top_p=0.9)
first = al.generate(model, tok, "Once upon a time", seed=0, **SAMPLING)
again = al.generate(model, tok, "Once upon a time", seed=0, **SAMPLING)
other = al.generate(model, tok, "Once upon a time", seed=1, **SAMPLING)
print("seed 0:", repr(first))
print("seed 0:", repr(again))
print("seed 1:", repr(other))
assert first == again

# %% [markdown]
# (The same seed gives different draws on a GPU: CPU and CUDA generators are different
# random-number streams.)

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
times, pieces_out = zip(*arrivals)
print("|".join(piece.replace("\n", "\\n") for piece in pieces_out))
print(f"first piece after {times[0]:.2f} s elapsed")
print(f"then one every {(times[-1] - times[0]) / (len(times) - 1):.2f} s elapsed")
assert "".join(pieces_out) == text  # the greedy text from al.generate above

# %% [markdown]
# ## Talking to the instruct model
#
# The bundled model is SmolLM2-135M-*Instruct* {cite}`allal2025smollm2`: after pre-training it
# was fine-tuned on conversations written in the ChatML format, where each turn is wrapped in
# `<|im_start|>role\n ... <|im_end|>\n`. To ask it a question we write that format ourselves
# and leave the assistant's turn open. (This section is about the bundled model; a base model
# like Llama-2-7B has no chat format.)

# %%
question = "What is the capital of France?"
chat = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
chat_ids = tok.encode(chat)
print(len(chat_ids), "tokens:")
print("|".join(tok.id_to_piece(i) for i in chat_ids))  # Ġ: space, Ċ: newline
for special in ["<|im_start|>", "<|im_end|>"]:
    print(f"{special}: id {tok.piece_to_id(special)}")
print("eos_id:", tok.eos_id)

# %% [markdown]
# (The pieces are written in the byte-level alphabet of chapter 2: `Ġ` is a space, `Ċ` a
# newline.) `<|im_start|>` and `<|im_end|>` are single tokens, and `<|im_end|>` is the model's
# end-of-sequence token, so generation stops by itself when the assistant's turn is over:

# %%
answer = al.generate(model, tok, chat, max_new_tokens=32)
print(repr(answer))

# %% [markdown]
# The model's published chat template also puts a default system turn ("You are a helpful AI
# assistant named SmolLM, trained by Hugging Face") in front of the first user turn; the short
# prompt above is enough for this question.

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
# | LM head (tied to the embedding) | `[1, 5, 49152]` |
# | last position, softmax | `[49152]` |
# | greedy or sampled next token | one id: " Paris" |
#
# Our logits match transformers' `LlamaForCausalLM` to about $10^{-5}$ in float32, and greedy
# generation gives the same tokens. Generation is this pass in a loop: a prefill over the
# prompt, then one token at a time through the KV cache, with temperature, top-k and top-p
# shaping each draw.
#
# Chapter 10 opens the model up: it decodes the residual stream after every layer with the
# final norm and the LM head (the logit lens), and looks at attention patterns and at the
# massive activations we saw on the first position. Chapter 11 makes the same loop fast on a
# GPU.
