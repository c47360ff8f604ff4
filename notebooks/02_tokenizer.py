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
# # 2. Tokenizer
#
# Chapter 1 fed the bundled model the ids `[504, 3575, 282, 4649, 314]` and got " Paris" back.
# This chapter is about where such ids come from. A tokenizer cuts text into pieces from a
# fixed {term}`vocabulary <Vocabulary>` and replaces each piece by its index; the model never
# sees characters, only these integers ({term}`tokens <Token>`), and everything it knows about
# spelling it learned through them.
#
# LLaMA models use two kinds of tokenizer. Llama 1 and 2 use SentencePiece
# {cite}`kudo2018sentencepiece` with a byte-pair-encoding ({term}`BPE`) model
# {cite}`sennrich2016bpe` over Unicode characters, 32,000 pieces. Llama 3, and the bundled
# SmolLM2, use GPT-2's byte-level BPE {cite}`radford2019gpt2`, which works on bytes. We take
# both apart, rebuild their core loop in a few lines, learn a small vocabulary of our own, and
# check each against a reference: llama.cpp's test vectors for Llama 2
# {cite}`gerganov2023llamacpp`, transformers' tokenizer for SmolLM2, and the trainer of the
# `tokenizers` library {cite}`huggingface2019tokenizers` for our training loop, each time
# saying what the check shares with the code it checks.

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
import inspect
import json
import warnings

import matplotlib.pyplot as plt
import regex
import torch
from IPython.display import Markdown, display
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import annotated_llama as al
from annotated_llama import assets
from annotated_llama.reference import transformers_tokenizer
from annotated_llama.tokenizer import (ByteLevelBPETokenizer, TiktokenTokenizer, bpe_merge_steps,
                                       bpe_pieces, bytes_to_unicode)

# tqdm, imported by transformers, warns about missing notebook widgets
warnings.filterwarnings("ignore", message="IProgress not found")

# %% [markdown]
# The model is the bundled SmolLM2-135M unless you change the next cell. Any LLaMA runs here: a
# Hugging Face id, a local directory or a GGUF file. Its weights in 16 bits take parameters × 2
# bytes: `TinyLlama/TinyLlama-1.1B-Chat-v1.0` (ungated, 2.05 GiB) or `meta-llama/Llama-3.2-1B`
# (gated, 2.30 GiB) fit a Colab T4; `meta-llama/Llama-2-7b-hf` (12.55 GiB) and
# `meta-llama/Llama-3.1-8B` (14.96 GiB) need an L4 or an A100. Chapter 0 has the full table.
# This chapter uses the model only for its tokenizer and, at the end, its embedding table.

# %%
MODEL = "smollm2-135m"  # the one line to change: see below for what fits which Colab GPU
DTYPE = None  # None: bf16 on A100, L4, H100; fp16 on a T4 (no native bf16); float32 on a CPU

# %%
model, tok = al.load(MODEL, dtype=DTYPE)
print(tok)

# %% [markdown]
# The package reads three kinds of tokenizer file, all behind the same small interface
# (`encode`, `decode`, `bos_id`, `eos_id`, `id_to_piece`): a SentencePiece `tokenizer.model`
# (Llama 1 and 2, TinyLlama), a byte-level BPE stored in a GGUF file or a Hugging Face
# `tokenizer.json` (the bundled SmolLM2, and Llama 3 as Hugging Face distributes it), and the
# `tokenizer.model` of Meta's own Llama 3 download, which is the same byte-level BPE written in
# the format of OpenAI's `tiktoken` library {cite}`openai2022tiktoken` and read with it
# (`TiktokenTokenizer`). Whichever `MODEL` is loaded, its tokenizer gives text back unchanged:

# %%
SAMPLE = "The capital of France is Paris. In 2024, 🦙 and naïve café!"
sample_ids = tok.encode(SAMPLE, bos=False)
assert tok.decode(sample_ids) == SAMPLE
print(f"{type(tok).__name__}: {len(sample_ids)} tokens, decode(encode(text)) == text")

# %% [markdown]
# ## The Llama 2 vocabulary
#
# `al.llama2_tokenizer()` is the Llama 2 tokenizer. Meta's `tokenizer.model` is a serialized
# SentencePiece model; the package rebuilds the same model from the vocabulary llama.cpp
# ships (pieces, scores and types) plus the fixed training options Meta used, and hands it
# to the `sentencepiece` library. It has 32,000 pieces of four types:

# %%
sp = al.llama2_tokenizer()
print(sp)


def piece_type(i: int) -> str:
    p = sp.sp  # the sentencepiece.SentencePieceProcessor underneath
    return ("control" if p.is_control(i) else "unknown" if p.is_unknown(i)
            else "byte" if p.is_byte(i) else "normal")


types = collections.Counter(piece_type(i) for i in range(sp.vocab_size))
for kind in ["unknown", "control", "byte", "normal"]:
    first = next(i for i in range(sp.vocab_size) if piece_type(i) == kind)
    print(f"{kind:>8}: {types[kind]:>6} pieces, first: {first} "
          f"{sp.id_to_piece(first)!r}")

# %% [markdown]
# Id 0 is `<unk>`, 1 and 2 are the control pieces `<s>` ({term}`BOS`, beginning of sequence)
# and `</s>` ({term}`EOS`). Ids 3 to 258 are the 256 byte pieces `<0x00>` ... `<0xFF>`. The rest are
# ordinary pieces: whole words, pieces of words and single characters, where `▁` (U+2581)
# stands for a space. Every piece has a score; for the normal pieces it is the order in
# which training created them:

# %%
score = sp.sp.get_score  # id -> score
for i in [259, 260, 261, 262, 263, 266, 278, 3186, 15043, 29871, 29872, 31999]:
    print(f"{i:>6}  {sp.id_to_piece(i)!r:<10} score {score(i):>14,.0f}")
normal = [i for i in range(sp.vocab_size) if piece_type(i) == "normal"]
assert all(score(i) in (-(i - 259), -1e9) for i in normal)

# %% [markdown]
# Piece 260, `▁t`, was the first merge BPE learned (score −1), `er` the second, and so on:
# the score of piece $i$ is $-(i - 259)$, so a higher score means an earlier, more frequent
# merge. The single characters (`e`, `t`, ...) come last, and the runs of spaces (`▁▁`,
# `▁▁▁▁`, ...) and the lone `▁` have the score $-10^9$: they are in the vocabulary but
# merging into them has the lowest priority.

# %% [markdown]
# ## Text to ids
#
# The classic check: "I believe the meaning of life is", the prompt in Meta's example code,
# is BOS followed by seven pieces, each a word with its space in front:

# %%
ids = sp.encode("I believe the meaning of life is")
print(ids)
print([sp.id_to_piece(i) for i in ids])
assert ids == [1, 306, 4658, 278, 6593, 310, 2834, 338]

# %% [markdown]
# Four rules shape every encoding:
#
# - **The dummy prefix.** SentencePiece writes spaces as `▁` and puts one `▁` in front of
#   the text, so the first word looks like every other word: "Hello" is `▁Hello`, the same
#   piece as in "say Hello". A text that already starts with a space gets two.
# - **Byte fallback.** A character that is not in the vocabulary is spelled as its UTF-8
#   bytes, one byte piece each. There is never an `<unk>`.
# - **Split digits.** Numbers are always split into single digits, so "2024" is four tokens.
# - **BOS and EOS** are added by the caller (here `encode(bos=..., eos=...)`), never read
#   from the text: a typed `"<s>"` is three ordinary pieces.

# %%
def show(tokenizer, text, **kw):
    ids = tokenizer.encode(text, **kw)
    print(f"{text!r:<24} -> {ids}")
    print(f"{'':<24}    {[tokenizer.id_to_piece(i) for i in ids]}")


show(sp, "Hello", bos=False)
show(sp, " Hello", bos=False)
show(sp, "I like 🦙", bos=False)
show(sp, "in 2024", bos=False)
show(sp, "<s>Hi", bos=True, eos=True)

# %% [markdown]
# The llama emoji is not among the 32,000 pieces, so it became four byte pieces, the four
# bytes of its UTF-8 encoding, `F0 9F A6 99`; decoding puts the bytes back together. The
# `▁` before it stands alone because no piece `▁🦙` exists. Decoding reverses everything,
# including the dummy prefix:

# %%
text = "I like 🦙 in 2024!"
print(repr(sp.decode(sp.encode(text))), sp.decode(sp.encode(text)) == text)
print("🦙".encode("utf-8").hex(" ").upper())

# %% [markdown]
# ## Checking against llama.cpp's test vectors
#
# llama.cpp keeps a list of awkward inputs (empty text, runs of spaces, tabs and newlines,
# accents, Chinese, emoji, code) with the ids the original Llama tokenizer gives them, to
# test its own tokenizers against. The inputs are separated by a line
# `__ggml_vocab_test__`; the expected ids are one line per input, without BOS.

# %%
SEPARATOR = "\n__ggml_vocab_test__\n"
inp = assets.asset_path(assets.LLAMA2_VECTORS_IN).read_text(encoding="utf-8")
out = assets.asset_path(assets.LLAMA2_VECTORS_OUT).read_text(encoding="utf-8")
inputs, lines = inp.split(SEPARATOR), out.split("\n")
# Each input ends with the separator and each id line with "\n":
# drop the empty text after the last of each.
assert inputs[-1] == "" and lines[-1] == ""
vectors = [(text, [int(t) for t in line.split()])
           for text, line in zip(inputs[:-1], lines[:-1], strict=True)]

passed = [sp.encode(text, bos=False) == ids for text, ids in vectors]
print(f"{sum(passed)} of {len(vectors)} test vectors reproduced")
assert all(passed) and len(vectors) == 46

# %% [markdown]
# All 46 agree. The expected ids come from Llama's original tokenizer; ours is the model file
# the package rebuilt from llama.cpp's vocabulary. So this checks the rebuilt pieces, scores
# and options. The merge algorithm is the `sentencepiece` library's on both sides, and the
# from-scratch loop in the next section checks it independently. A few of the vectors, to see
# what they test:

# %%
for text, ids in vectors:
    if text in ["", " ", "   ", "\t\n", " Hello World!", "3333333", " this is 🦙.cpp"]:
        print(f"{text!r:<38} {ids}")

# %% [markdown]
# A single space is `▁▁` (the dummy prefix and the space), three spaces `▁▁▁▁`, and a number
# is a lone `▁` followed by one piece per digit.

# %% [markdown]
# ## BPE in a few lines
#
# How does SentencePiece pick `▁un` `bel` `iev` `able` for "unbelievable" and not some other
# split? BPE starts from single characters and merges, one pair at a time. In SentencePiece's
# variant the score decides: among all adjacent pairs whose concatenation is a piece of the
# vocabulary, merge the one whose piece has the highest score (the leftmost, on a tie), and
# repeat until no adjacent pair forms a piece:
#
# $$ (a, b)^\star = \arg\max_{(a,b)\ \text{adjacent},\ ab \in V} \operatorname{score}(ab) $$
#
# Whatever characters are left that are not pieces become byte pieces. In plain Python:

# %%
SCORE = {sp.id_to_piece(i): score(i) for i in normal}  # piece -> score


def sentencepiece_bpe(word: str) -> list[list[str]]:
    """The symbols after each merge step (spaces already written as '▁')."""
    symbols = list(word)
    steps = [symbols]
    while True:
        # positions i where symbols[i] + symbols[i + 1] is a piece
        mergeable = [i for i in range(len(symbols) - 1)
                     if symbols[i] + symbols[i + 1] in SCORE]
        if not mergeable:
            break
        # the best score wins; on a tie the leftmost (the largest -i)
        i = max(mergeable,
                key=lambda i: (SCORE[symbols[i] + symbols[i + 1]], -i))
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
        steps.append(symbols)
    return steps


def sentencepiece_encode(text: str) -> list[int]:
    """Dummy prefix, '▁' for spaces, BPE, byte fallback for non-pieces."""
    ids = []
    for symbol in sentencepiece_bpe("▁" + text.replace(" ", "▁"))[-1]:
        if symbol in SCORE:
            ids.append(sp.piece_to_id(symbol))
        else:  # byte fallback: one <0x..> piece per UTF-8 byte
            ids += [sp.piece_to_id(f"<0x{b:02X}>")
                    for b in symbol.encode("utf-8")]
    return ids


# %% [markdown]
# One word, step by step:

# %%
steps = sentencepiece_bpe("▁unbelievable")
lines = [f"step  0: {' '.join(steps[0])}"]
for n, (before, after) in enumerate(zip(steps, steps[1:]), start=1):
    new = next(a for a, b in zip(after, before) if a != b)  # the merged one
    lines.append(f"step {n:>2}: {' '.join(after):<28} {new!r:<7} {SCORE[new]:>7,.0f}")
lines.append(f"{len(steps[0])} symbols, {len(steps) - 1} merges, "
             f"{len(steps[-1])} pieces")
print("\n".join(lines))
assert sentencepiece_encode("unbelievable") == sp.encode("unbelievable",
                                                         bos=False)

# %% [markdown]
# The merges do not go left to right: `le` has the best score of all pieces that can form
# here, so it comes first, and `▁un` only forms at step 6. The same loop, checked on every word of a
# paragraph and on a few harder strings, against the real tokenizer:

# %%
PARAGRAPH = (
    "The tokenizer turns text into integers before the model sees anything. "
    "Rare words fall apart into several pieces, frequent ones stay whole, and "
    "characters outside the vocabulary, like the llama 🦙 or the snowman ☃, "
    "become bytes. In 2023 Meta released Llama 2 with a vocabulary of 32000 "
    "pieces; Llama 3 moved to 128256 byte-level tokens."
)
words = PARAGRAPH.split(" ") + ["Schifffahrt", "naïve", "東京", "x²+y²"]
mine = [sentencepiece_encode(w) for w in words]
real = [sp.encode(w, bos=False) for w in words]
print(f"{sum(a == b for a, b in zip(mine, real))} of {len(words)} words alike")
assert mine == real
assert sentencepiece_encode(PARAGRAPH) == sp.encode(PARAGRAPH, bos=False)
with_digit = [p for p in SCORE if len(p) > 1 and any(c in "0123456789" for c in p)]
print("pieces that join a digit 0-9 to anything else:", len(with_digit))
assert not with_digit

# %% [markdown]
# The from-scratch loop matches SentencePiece on all of them, and on the whole paragraph at
# once. (It leaves out the digit splitting, which this vocabulary makes unnecessary: no
# Llama 2 piece joins a digit to anything else, so no merge can.) A picture of the merges
# for one word, each row one step, the newest piece highlighted:

# %%
def draw_merges(ax, steps, title):
    for row, symbols in enumerate(steps):
        # the merged symbol: the first one that differs from the row above
        changed = None if row == 0 else next(
            i for i, (a, b) in enumerate(zip(symbols, steps[row - 1])) if a != b)
        x = 0  # each symbol spans as many character positions as it has
        for i, s in enumerate(symbols):
            colour = "#f6b26b" if i == changed else "#cfe2f3"
            ax.add_patch(plt.Rectangle((x + 0.05, -row - 0.4), len(s) - 0.1, 0.8,
                                       edgecolor="0.4", facecolor=colour))
            ax.text(x + len(s) / 2, -row, s, ha="center", va="center",
                    fontsize=10)
            x += len(s)
        if changed is not None:
            ax.text(x + 0.3, -row, f"score {SCORE[symbols[changed]]:,.0f}",
                    va="center", fontsize=9)
    ax.set_xlim(-0.2, len(steps[0]) + 3.2)
    ax.set_ylim(-len(steps) + 0.4, 0.6)
    rows = range(len(steps))
    ax.set_yticks([-r for r in rows], [f"step {r}" for r in rows])
    ax.set_xlabel("character position in the word")
    ax.set_title(title)


fig, ax = plt.subplots(figsize=(8, 4.5))
draw_merges(ax, steps, 'BPE merges of "unbelievable" (Llama 2 vocabulary)')
plt.show()
print(f"{len(steps)} rows, from {' '.join(steps[0])!r} to {' '.join(steps[-1])!r}")

# %% [markdown]
# The merges are greedy: each step takes the best piece available and never reconsiders.
# The word ends as four pieces because none of the pairs `▁un`+`bel`, `bel`+`iev` or
# `iev`+`able` is a piece of the vocabulary.

# %% [markdown]
# ## Byte-level BPE: the bundled model (and Llama 3)
#
# The bundled model's tokenizer, like GPT-2's and Llama 3's, never sees characters: it
# works on the UTF-8 bytes of the text, so no byte fallback is needed and nothing is ever
# unknown. Three differences from SentencePiece follow.
#
# **Bytes spelled as characters.** The vocabulary is stored as strings, so each of the 256
# byte values is given a printable character: printable ASCII and Latin-1 bytes stand for
# themselves, the others are moved up to U+0100 and beyond. A space becomes `Ġ`, a newline
# `Ċ`.
#
# The rest of this chapter uses the bundled model's tokenizer; with another `MODEL` it is
# loaded from the bundled GGUF instead.

# %%
if isinstance(tok, ByteLevelBPETokenizer):
    smol = tok
else:  # another MODEL: read the bundled model's tokenizer from its GGUF
    smol = al.load_tokenizer(assets.asset_path(assets.SMOLLM2_GGUF))
print(smol)
spelling = bytes_to_unicode()  # byte value -> character
for b in [ord("a"), ord("!"), ord(" "), ord("\n"), ord("\t"), 0xF0]:
    print(f"byte 0x{b:02X} -> {spelling[b]!r} (U+{ord(spelling[b]):04X})")
print("🦙 as bytes:", "".join(spelling[b] for b in "🦙".encode("utf-8")))

# %% [markdown]
# **Pre-tokenization.** Before any merge, a regular expression cuts the text into chunks:
# words with the space in front of them, runs of punctuation, runs of spaces. Merges never
# cross a chunk boundary.

# %%
print(smol.pre_tokenize("Hello world, it's 2024!\n"))

# %% [markdown]
# Each family has its own rules, and numbers show the differences best. The GGUF file names its
# rule in a field, `tokenizer.ggml.pre`; llama.cpp's converter picks the name by recognising a
# model's Hugging Face tokenizer from its output on a test text, and llama.cpp's rule of that
# name, "smollm", first cuts out every digit on its own and then applies GPT-2's expression
# {cite}`gerganov2023llamacpp`. The package does the same. GPT-2's expression alone keeps a run
# of digits in one chunk; Llama 3's expression, which the package hands to `tiktoken` for Meta's
# Llama 3 files, cuts it into groups of up to three. The three rules on one text, in byte-level
# spelling:

# %%
print("this file's rule:", smol.pre)
gpt2_rule = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
RULES = {
    f"bundled ({smol.pre})": smol.pre_tokenize,
    "GPT-2": lambda text: [chunk for chunk, _ in gpt2_rule.pre_tokenize_str(text)],
    "Llama 3": lambda text: ["".join(spelling[b] for b in chunk.encode("utf-8"))
                             for chunk in regex.findall(TiktokenTokenizer.PATTERN, text)],
}
for rule, cut in RULES.items():
    print(f"{rule:<17}", cut("In 2024, 1234567 llamas"))
digit_tokens = [t for t in smol.tokens if len(t) > 1 and any(c in "0123456789" for c in t)]
print("bundled tokens that join a digit 0-9 to anything else:", len(digit_tokens))
assert not digit_tokens

# %% [markdown]
# With every digit its own chunk, no merge can join a digit to anything, and the bundled
# vocabulary has no token that does: like Llama 2, it spells every number digit by digit.

# %% [markdown]
# **Merges by rank.** Where SentencePiece compares scores, byte-level BPE has an ordered
# list of merges (about one per token: each merge created a token), and always applies
# the earliest-learned merge present in the chunk; a merge joins every occurrence of its
# pair:

# %%
print(f"{len(smol.merges):,} merges for {smol.vocab_size:,} tokens")
print("the first five:", smol.merges[:5])

# %% [markdown]
# The package's `bpe_merge_steps` is that loop:

# %%
display(Markdown(f"```python\n{inspect.getsource(bpe_merge_steps)}```"))

# %%
def merge_all(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Join every adjacent occurrence of pair, left to right."""
    out = []
    for s in symbols:
        if out and (out[-1], s) == pair:
            out[-1] += s
        else:
            out.append(s)
    return out


word = "Ġtokenization"
symbols = list(word)
for a, b in bpe_merge_steps(word, smol.ranks):
    symbols = merge_all(symbols, (a, b))
    print(f"{a + ' + ' + b:<13} rank {smol.ranks[(a, b)]:>5}: {' '.join(symbols)}")
assert symbols == [smol.id_to_piece(i) for i in smol.encode(" tokenization")]

# %% [markdown]
# The loop ends in the two pieces the real tokenizer gives, `Ġtoken` and `ization`. The same
# loop in plain Python (the package's `bpe_pieces`, which replays `bpe_merge_steps`) against the
# `tokenizers` library's BPE on whole texts; only the pre-tokenization into chunks comes from the
# library here, the merges do not:

# %%
def python_bpe(text: str) -> list[int]:
    """Chunks from the pre-tokenizer, then the merge loop above on each chunk."""
    chunks = smol.pre_tokenize(text)
    return [smol.piece_to_id(piece) for chunk in chunks for piece in bpe_pieces(chunk, smol.ranks)]


TEXTS_PY = [PARAGRAPH, "naïve café, Schifffahrt, 東京 and 🦙", "def f(x):\n    return x ** 2\n"]
for text in TEXTS_PY:
    assert python_bpe(text) == smol.encode(text)
print(f"the Python loop gives the library's ids on {len(TEXTS_PY)} texts,"
      f" {sum(len(smol.encode(t)) for t in TEXTS_PY)} tokens")

# %% [markdown]
# ## How the merges are learned
#
# Both vocabularies above come with an order: SentencePiece's scores and the byte-level merge
# list both record which merge training learned first. The training loop itself is the
# original BPE algorithm {cite}`sennrich2016bpe`, and it is short. Split every word of a training
# text into single characters. Count every pair of adjacent symbols, each word weighted by how
# often it occurs. Merge the most frequent pair everywhere, which makes a new symbol, and write
# the merge down. Repeat until the vocabulary is as large as wanted. The merge list, in order,
# is the tokenizer.
#
# A toy corpus, written as SentencePiece writes it (a `▁` in front of every word):

# %%
CORPUS = (  # lower case, no punctuation: words are what the spaces separate
    "the llama and the alpaca live high in the andes "
    "a llama is taller than an alpaca and the llama carries the loads "
    "the alpaca is kept for its wool but the llama for its strength "
    "llamas and alpacas are cousins of the camel and the camel is the tallest"
)
WORDS = collections.Counter("▁" + word for word in CORPUS.split())  # word -> how often
ALPHABET = sorted({c for word in WORDS for c in word})
print(f"{sum(WORDS.values())} words, {len(WORDS)} different, {len(ALPHABET)} characters")
print(WORDS.most_common(6))

# %% [markdown]
# The trainer, in plain Python. One rule needs a decision that the description above leaves
# open: when several pairs are equally frequent, which is merged first? We take the pair whose
# symbols entered the vocabulary first (characters in code-point order, then merged symbols in
# the order they were made), the rule of the `tokenizers` library we compare with below.

# %%
def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Join every occurrence of pair, left to right."""
    out, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i:i + 2]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def train_bpe(words: dict[str, int], n_merges: int):
    """The first n_merges merges of BPE on words, each with its count, how many pairs tied for
    it and the corpus's length in symbols after it; and the words' final split."""
    split = {word: list(word) for word in words}  # every word as its current symbols
    entered = {c: i for i, c in enumerate(sorted({c for word in words for c in word}))}
    merges = []
    for _ in range(n_merges):
        counts = collections.Counter()
        for word, n in words.items():
            for pair in zip(split[word], split[word][1:]):
                counts[pair] += n
        best = max(counts.values())
        tied = [pair for pair, n in counts.items() if n == best]
        pair = min(tied, key=lambda p: (entered[p[0]], entered[p[1]]))  # oldest symbols first
        entered.setdefault(pair[0] + pair[1], len(entered))
        split = {word: merge_pair(symbols, pair) for word, symbols in split.items()}
        length = sum(len(split[word]) * n for word, n in words.items())
        merges.append((pair, best, len(tied), length))
    return merges, split


N_MERGES = 30
toy_merges, toy_split = train_bpe(WORDS, N_MERGES)
print(f"before any merge: {sum(len(word) * n for word, n in WORDS.items())} symbols")
for k, ((a, b), count, tied, length) in enumerate(toy_merges, start=1):
    if k <= 12 or k % 6 == 0:
        note = f"  ({tied} pairs tied)" if tied > 1 else ""
        print(f"merge {k:>2}: {a + ' + ' + b:<12} -> {a + b:<9} {count:>3} times,"
              f" corpus {length} symbols{note}")

# %% [markdown]
# The first merge is `▁t`, a space followed by t, as in Llama 2's vocabulary (piece 260, score
# −1) and the bundled model's (rank 0, `Ġ` + `t`): a space followed by t begins "the", "to",
# "that" and many other frequent English words, and in this corpus "the" is the commonest
# word. Then come `▁a`, `▁th`, `▁the`. Merge by merge, the frequent words become single
# symbols and the corpus shrinks, which is what a tokenizer is for:

# %%
for word in ["▁the", "▁llama", "▁alpaca", "▁camel", "▁strength"]:
    print(f"{word:<11} -> {toy_split[word]}")
assert toy_split["▁llama"] == ["▁llama"] and toy_split["▁alpaca"] == ["▁alpaca"]

# %% [markdown]
# "▁llama" and "▁alpaca" are one symbol each; "▁strength", which occurs once, is still in
# pieces. A real vocabulary is the same loop run tens of thousands of times on billions of words.
#
# **A check.** The `tokenizers` library, which builds the byte-level tokenizers above, has its own
# trainer (`BpeTrainer`, written in Rust, counting pairs incrementally rather than afresh at every
# step as we do). Trained on the same words for the same number of merges, with the words fed to
# it one by one so that its pre-tokenizer cannot cut them differently:

# %%
trained = Tokenizer(models.BPE())
trained.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
trainer = trainers.BpeTrainer(vocab_size=len(ALPHABET) + N_MERGES, show_progress=False)
trained.train_from_iterator(["▁" + word for word in CORPUS.split()], trainer)
library_merges = [tuple(m) for m in json.loads(trained.to_str())["model"]["merges"]]
ours = [pair for pair, *_ in toy_merges]
same = sum(a == b for a, b in zip(ours, library_merges))
print(f"{same} of {len(ours)} merges the same, in the same order")
assert library_merges == ours

# %% [markdown]
# All 30 agree, but only because both break ties the same way. The counts above show how often
# that decides: from merge 5 on, most merges were picked among equally frequent pairs, nine of
# them at merge 24. Training counts pairs, and nothing in the counts prefers one of two pairs
# that both occur three times. A trainer that takes the tied pair it happened to count first
# learns a different list after the first tie, equally valid:

# %%
def train_bpe_first_counted(words: dict[str, int], n_merges: int) -> list[tuple[str, str]]:
    """The same loop, but a tie goes to the pair counted first (the order of the words)."""
    split, merges = {word: list(word) for word in words}, []
    for _ in range(n_merges):
        counts = collections.Counter()
        for word, n in words.items():
            for pair in zip(split[word], split[word][1:]):
                counts[pair] += n
        pair = counts.most_common(1)[0][0]  # most_common keeps the first of equal counts
        merges.append(pair)
        split = {word: merge_pair(symbols, pair) for word, symbols in split.items()}
    return merges


other = train_bpe_first_counted(WORDS, N_MERGES)
first_tie = next(k for k, (_, _, tied, _) in enumerate(toy_merges) if tied > 1)
differ = next((k for k, (a, b) in enumerate(zip(other, ours)) if a != b), None)
print(f"first tie at merge {first_tie + 1}; the lists first differ at merge {differ + 1}")
print(f"merges in both lists: {len(set(other) & set(ours))} of {N_MERGES}")
assert other[:first_tie] == ours[:first_tie]  # before any tie, the counts decide alone

# %% [markdown]
# Before the first tie the two lists must agree, and they do; after it, they part. Real trainers
# each fix a rule (SentencePiece's trainer and `tokenizers` do not share one), so two
# implementations trained on the same text need not give the same vocabulary, and a check like
# the one above holds only where the rule is the same.

# %% [markdown]
# ## Checking against transformers
#
# transformers can build its own tokenizer from the same GGUF file
# (`AutoTokenizer.from_pretrained(..., gguf_file=...)`), with its own converter. What this
# check shares with ours, and what it does not: transformers' fast tokenizer runs on the same
# `tokenizers` library, so the BPE merging itself is one engine on both sides (the Python loop
# above is the independent check of that). Independent are the reading of the vocabulary and
# merge list out of the GGUF, and the configuration around them: the pre-tokenizer, the special
# tokens. On ordinary sentences both give the same ids:

# %%
hf_tok = transformers_tokenizer("smollm2-135m")
SENTENCES = [
    "The capital of France is",
    "Hello world, it's 2024!",
    "naïve café, Schifffahrt, 東京 and 🦙",
    "def f(x):\n    return x ** 2\n",
    "<|im_start|>user\nWhat is 1+1?<|im_end|>",
]
for s in SENTENCES:
    ours, theirs = smol.encode(s), hf_tok.encode(s, add_special_tokens=False)
    print(f"{s!r:<44} {len(ours):>3} tokens, same: {ours == theirs}")
    assert ours == theirs

# %% [markdown]
# The chat markers `<|im_start|>` and `<|im_end|>` are control tokens, matched whole.
# Where the two differ: transformers' GGUF converter gives this vocabulary GPT-2's pre-tokenizer,
# without the "smollm" rule of cutting out digits first (the rules printed above). Usually the
# result is the same, since no token joins a digit to anything, but spaces before a digit are
# grouped differently:

# %%
for s in ["x = 42", "x =  42"]:
    ours, theirs = smol.encode(s), hf_tok.encode(s, add_special_tokens=False)
    print(f"{s!r:<10} {'ours':<14} {[smol.id_to_piece(i) for i in ours]}")
    print(f"{'':<10} {'transformers':<14} {[smol.id_to_piece(i) for i in theirs]}")
    print(f"{'':<10} {'chunks, ' + smol.pre:<14} {smol.pre_tokenize(s)}")
    print(f"{'':<10} {'chunks, GPT-2':<14} {RULES['GPT-2'](s)}")

# %% [markdown]
# With two spaces, the "smollm" rule cuts the digits off first and leaves the two spaces as one
# chunk, `ĠĠ`, which is a token; GPT-2's expression gives the last space to the number, `Ġ42`,
# and since no token joins a space to a digit, that space stays alone as `Ġ`. The package
# follows the rule the GGUF file names.

# %% [markdown]
# ## The same text, two vocabularies
#
# How many tokens a text costs depends on the vocabulary. The same paragraph and three
# other texts under both tokenizers (without BOS):

# %%
TEXTS = {
    "English prose": PARAGRAPH,
    "German": "Die Hauptstadt von Frankreich ist Paris. "
              "Das Wetter ist heute schön.",
    "Python code": "def mean(xs):\n    return sum(xs) / len(xs)\n\n"
                   "print(mean([1, 2, 3]))\n",
    "digits": "3.14159265358979323846264338327950288419716939937510",
}
counts = {name: (len(sp.encode(t, bos=False)), len(smol.encode(t)))
          for name, t in TEXTS.items()}  # name -> (Llama 2, SmolLM2)
print(f"{'':>14} {'characters':>10} {'Llama 2':>8} {'SmolLM2':>8}")
for name, (n_llama2, n_smol) in counts.items():
    print(f"{name:>14} {len(TEXTS[name]):>10} {n_llama2:>8} {n_smol:>8}")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
x = list(range(len(counts)))
BARS = [(-0.2, "Llama 2 (SentencePiece, 32,000)", "#6fa8dc"),
        (0.2, "SmolLM2 (byte-level BPE, 49,152)", "#f6b26b")]
for column, (offset, label, colour) in enumerate(BARS):
    heights = [c[column] for c in counts.values()]
    ax.bar([i + offset for i in x], heights, width=0.4, label=label,
           color=colour)
    for i, h in zip(x, heights):
        ax.text(i + offset, h + 1, str(h), ha="center", fontsize=9)
ax.set_xticks(x, list(counts))
ax.set_ylabel("number of tokens")
ax.set_title("Tokens for the same text")
ax.legend(fontsize=9)
plt.show()
print("bars (Llama 2, SmolLM2):", {name: c for name, c in counts.items()})

# %% [markdown]
# SmolLM2's larger vocabulary needs fewer tokens for the English paragraph, Llama 2's fewer
# for the German sentence, and the code costs about the same. A vocabulary reflects the
# text it was trained on, and SmolLM2's training data is mostly English text and code
# {cite}`allal2025smollm2`. With every digit a token, the digits
# cost one token per character in both (Llama 2's one extra is the dummy-prefix `▁` in front).
# The count matters twice: it is the sequence length the model pays for in every layer, and
# the context window is measured in tokens, not characters.

# %% [markdown]
# ## What we have now
#
# Text becomes a list of ids; a batch of them is a `LongTensor` `[batch, seq]`, the input of
# the model. For the bundled model (byte-level, no BOS):

# %%
prompt = "The capital of France is"
tokens = torch.tensor([tok.encode(prompt)], device=model.device)  # [batch, seq]
print(f"tokens {tuple(tokens.shape)}: {tokens.tolist()}")
table = model.tok_embeddings.weight  # [vocab_size, dim]
print(f"embedding table {tuple(table.shape)}: one row per id")

# %% [markdown]
# Each id is now just a row number in the {term}`embedding <Embedding>` table,
# `[vocab_size, dim]`. Chapter 3
# looks these rows up, turning `[batch, seq]` ids into the `[batch, seq, dim]` vectors that
# flow through the rest of the model.
