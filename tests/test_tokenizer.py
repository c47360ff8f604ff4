"""Tests for annotated_llama.tokenizer, each against a reference that is not this package.

References used:
* llama.cpp's tokenizer test vectors for the Llama 2 vocabulary (``ggml-vocab-llama-spm.gguf.inp/.out``,
  produced by llama.cpp's ``convert_hf_to_gguf_update.py`` from Meta's tokenizer);
* the token ids Meta's llama repository and many write-ups print for "I believe the meaning of life is";
* transformers' tokenizer built from the same GGUF (``AutoTokenizer.from_pretrained(..., gguf_file=...)``);
* llama.cpp's pre-tokenizer rule for ``tokenizer.ggml.pre == "smollm"`` (src/llama-vocab.cpp: the regex
  ``\\p{N}`` first, then GPT-2's regex), written out below with the ``regex`` module;
* the ``tokenizers`` library's BPE model, for the pure-Python ``bpe_merge_steps``;
* the input text itself, for round trips.
"""

from __future__ import annotations

import random

import pytest

from annotated_llama import assets
from annotated_llama.tokenizer import (
    ByteLevelBPETokenizer,
    SentencePieceTokenizer,
    bpe_merge_steps,
    bpe_pieces,
    bytes_to_unicode,
    llama2_tokenizer,
    load_tokenizer,
)

SEPARATOR = "\n__ggml_vocab_test__\n"


@pytest.fixture(scope="module")
def llama2():
    return llama2_tokenizer()


@pytest.fixture(scope="module")
def smol():
    # Built through the public dispatch, so this also checks that a "gpt2" GGUF gives a byte-level BPE.
    tokenizer = load_tokenizer(assets.asset_path(assets.SMOLLM2_GGUF))
    assert isinstance(tokenizer, ByteLevelBPETokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def hf_smol():
    transformers = pytest.importorskip("transformers")
    path = assets.asset_path(assets.SMOLLM2_GGUF)
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def read_llama_cpp_vectors() -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, split the way llama.cpp's tests/test-tokenizer-0.cpp splits them.

    Every input is followed by the separator (convert_hf_to_gguf_update.py writes text + separator), so
    the text after the last separator is empty and is not a test; each .out line holds one input's ids.
    """
    raw = assets.asset_path(assets.LLAMA2_VECTORS_IN).read_bytes().decode("utf-8")
    out = assets.asset_path(assets.LLAMA2_VECTORS_OUT).read_bytes().decode("utf-8")
    inputs = raw.split(SEPARATOR)
    assert inputs[-1] == ""  # the file ends with a separator
    inputs = inputs[:-1]
    expected = [[int(t) for t in line.split()] for line in out.split("\n")[:-1]]  # out ends with "\n"
    assert len(inputs) == len(expected)
    return list(zip(inputs, expected))


# --------------------------------------------------------------------------------------------------
# Llama 2 (SentencePiece)
# --------------------------------------------------------------------------------------------------


def test_llama2_reproduces_llama_cpp_vectors(llama2):
    vectors = read_llama_cpp_vectors()
    # 46 inputs: the list in llama.cpp's convert_hf_to_gguf_update.py (a naive str.split on both files
    # yields 47 because of the empty text after the last separator and the empty last line).
    assert len(vectors) == 46
    assert ("", []) in vectors and (" ", [259]) in vectors and ("\t\n", [29871, 12, 13]) in vectors
    # Reference: llama.cpp's expected ids (no BOS: test-tokenizer-0 calls tokenize with add_special=false).
    got = [llama2.encode(text, bos=False) for text, _ in vectors]
    assert [(text, mine) for (text, ids), mine in zip(vectors, got) if mine != ids] == []


def test_llama2_meaning_of_life(llama2):
    # Reference: Meta's llama repository / many write-ups: BOS, then
    # "▁I ▁believe ▁the ▁meaning ▁of ▁life ▁is".
    assert llama2.encode("I believe the meaning of life is") == [1, 306, 4658, 278, 6593, 310, 2834, 338]


def test_llama2_conventions(llama2):
    # Reference: Meta's tokenizer.model (unk/bos/eos = 0/1/2, 32,000 pieces) and llama.cpp's GGUF flag
    # tokenizer.ggml.add_bos_token = True for this vocabulary.
    assert (llama2.bos_id, llama2.eos_id, llama2.vocab_size, len(llama2)) == (1, 2, 32000, 32000)
    assert llama2.add_bos is True
    body = llama2.encode("Hello world", bos=False)
    assert body == [15043, 3186]  # llama.cpp vector "Hello world" (dummy prefix: "▁Hello")
    assert llama2.encode("Hello world") == [1] + body
    assert llama2.encode("Hello world", bos=True, eos=True) == [1] + body + [2]


def test_llama2_pieces(llama2):
    # Reference: the llama.cpp vectors "Hello world" -> [15043, 3186] and "\n" -> [29871, 13]: pieces
    # "▁Hello", "▁world", the lone "▁" and the byte piece for 0x0A (SentencePiece spells it "<0x0A>").
    pieces = [llama2.id_to_piece(i) for i in (15043, 3186, 29871, 13)]
    assert pieces == ["▁Hello", "▁world", "▁", "<0x0A>"]
    assert [llama2.id_to_piece(i) for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"]
    assert all(llama2.piece_to_id(llama2.id_to_piece(i)) == i for i in range(llama2.vocab_size))
    with pytest.raises(KeyError):
        llama2.piece_to_id("no such piece")


AWKWARD = [
    "",
    " ",
    "   ",
    "a   b    c",
    "  two leading spaces",
    "trailing spaces   ",
    "\ttab\nnewline\r\nwindows\n\n\n",
    "12345 and 3.14159",
    "你好，世界！日本語のテキスト",
    "🦙🚀 😶\u200d🌫️ emoji",
    "e\u0301 combining acute vs precomposed \u00e9",
    "Ä\u0308 double dots, \u0915\u094d\u0937 Devanagari conjunct",
    "<s> typed as text </s>",
    "\x00 nul and \x7f del",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_llama2_round_trip(llama2, text):
    # Reference: the input itself (SentencePiece with byte fallback and no normalization loses nothing).
    assert llama2.decode(llama2.encode(text, bos=False)) == text


def test_llama2_typed_special_tokens_are_text(llama2):
    # Reference: SentencePiece never matches control pieces in input text; only encode(bos=True) adds BOS.
    ids = llama2.encode("<s>", bos=False)
    assert 1 not in ids and 2 not in llama2.encode("</s>", bos=False)
    assert [llama2.id_to_piece(i) for i in ids] == ["▁<", "s", ">"]
    assert llama2.decode([1, *llama2.encode("Hi", bos=False), 2]) == "Hi"  # control pieces decode to ""


def test_llama2_cache_is_written_atomically_and_repaired(llama2, tmp_path, monkeypatch):
    # Not a correctness check (the vectors are one): the cache must hold exactly what a fresh build
    # gives, here the file the module fixture built or found in the real cache directory.
    reference = (assets.cache_dir() / "llama2-tokenizer.model").read_bytes()
    vocab = assets.asset_path(assets.LLAMA2_VOCAB)
    monkeypatch.setenv("ANNOTATED_LLAMA_CACHE", str(tmp_path))
    (tmp_path / vocab.name).symlink_to(vocab)

    first = llama2_tokenizer()  # builds from the GGUF
    cache = tmp_path / "llama2-tokenizer.model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([vocab.name, cache.name])  # no .part left
    assert cache.read_bytes() == reference

    cache.write_bytes(b"half a file")  # a damaged cache is rebuilt, not trusted
    again = llama2_tokenizer()
    assert cache.read_bytes() == reference
    text = "I believe the meaning of life is"
    assert first.encode(text) == again.encode(text) == llama2.encode(text)


def test_load_tokenizer_dispatch(llama2):
    # A Llama-type GGUF gives SentencePiece; reference: the llama.cpp vectors.
    from_gguf = load_tokenizer(assets.asset_path(assets.LLAMA2_VOCAB))
    assert isinstance(from_gguf, SentencePieceTokenizer) and from_gguf.add_bos
    # A tokenizer.model file gives SentencePiece too (the cached model is one, byte for byte).
    from_model = load_tokenizer(assets.cache_dir() / "llama2-tokenizer.model")
    assert isinstance(from_model, SentencePieceTokenizer) and from_model.add_bos
    for text, ids in read_llama_cpp_vectors():
        assert from_gguf.encode(text, bos=False) == ids
        assert from_model.encode(text, bos=False) == ids


# --------------------------------------------------------------------------------------------------
# The bundled SmolLM2 tokenizer (byte-level BPE)
# --------------------------------------------------------------------------------------------------

# Strings where transformers' GGUF tokenizer and llama.cpp agree (see test_smollm2_digits_after_spaces).
VARIED = [
    "The capital of France is",
    "Hello world",
    " Hello world",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea?",
    "def f(x):\n    return x ** 2\n",
    "    indented\n\tTabbed\n",
    "multiple   spaces   between",
    "trailing spaces   ",
    "\n\n\nnewlines\n",
    "Numbers: 3.14159, 2024, 1e-5, 42nd, 0x1F",
    "ÄÖÜ äöü ß naïve café résumé",
    "e\u0301 combining acute",
    "你好，世界",
    "Привет, мир! нещо на Български",
    "مرحبا بالعالم",
    "कान्तेपुर क्ष",
    "🦙🦙 llamas 🚀 😶\u200d🌫️",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more text",
    "<|im_start without the end",
    "<s> is just text here </s>",
    "URL: https://example.com/a?b=c&d=e#frag",
    "snake_case camelCase kebab-case SCREAMING_CASE",
    "!!!!!!?????......------=======",
    "```python\nprint('hi')\n```",
    "",
    " ",
    "\u00a0non-breaking space",
    "x" * 40,
]


def test_smollm2_conventions(smol):
    # Reference: the GGUF's own fields (bos 1 = <|im_start|>, eos 2 = <|im_end|>, add_bos_token False)
    # and SmolLM2's vocabulary size, 49,152.
    assert (smol.bos_id, smol.eos_id, smol.vocab_size, len(smol)) == (1, 2, 49152, 49152)
    assert smol.add_bos is False
    assert smol.id_to_piece(1) == "<|im_start|>" and smol.piece_to_id("<|im_end|>") == 2
    assert all(smol.piece_to_id(smol.id_to_piece(i)) == i for i in range(smol.vocab_size))


def test_bos_follows_each_tokenizers_convention(smol, llama2):
    # Reference: the ids of transformers' tokenizer for the same GGUF, pinned by the slow test below, and
    # the llama.cpp vector for "Hello world". bos=None (the default) follows add_bos: no BOS for SmolLM2,
    # BOS for Llama 2; an explicit bos= wins either way.
    assert smol.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert smol.encode("The capital of France is", bos=True)[0] == smol.bos_id == 1
    assert llama2.encode("Hello world") == [1, 15043, 3186]
    assert llama2.encode("Hello world", bos=False) == [15043, 3186]


@pytest.mark.slow
def test_smollm2_capital_of_france_has_no_bos(smol, hf_smol):
    # Reference: transformers' tokenizer for the same GGUF (no BOS by default either).
    expected = hf_smol.encode("The capital of France is")
    assert expected == [504, 3575, 282, 4649, 314]
    assert smol.encode("The capital of France is") == expected
    assert smol.encode("The capital of France is", bos=True) == [1] + expected


@pytest.mark.slow
def test_smollm2_agrees_with_transformers(smol, hf_smol):
    # Reference: transformers' AutoTokenizer built from the same GGUF (its own GGUF reader and builder).
    for text in VARIED:
        ids = hf_smol.encode(text, add_special_tokens=False)
        assert smol.encode(text) == ids, text
        assert smol.decode(ids) == hf_smol.decode(ids), text
        assert [smol.id_to_piece(i) for i in ids] == hf_smol.convert_ids_to_tokens(ids), text


@pytest.mark.slow
def test_smollm2_control_tokens_in_text_are_special(smol, hf_smol):
    # Reference: transformers matches control tokens typed in the text (decided here: mirror it).
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = smol.encode(text)
    assert ids == hf_smol.encode(text, add_special_tokens=False)
    assert ids[0] == smol.bos_id and ids[-1] == smol.eos_id
    assert smol.decode(ids) == text == hf_smol.decode(ids)  # special tokens are written out on decode


def llama_cpp_smollm_chunks(text: str) -> list[str]:
    """llama.cpp's pre-tokenizer for "smollm" (src/llama-vocab.cpp): each \\p{N} is a chunk of its own,
    then GPT-2's regex splits what is between (with GPT-2's final ``\\s+`` for lone whitespace)."""
    import regex

    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    chunks = []
    for part in regex.split(r"(\p{N})", text):
        chunks += gpt2.findall(part)
    assert "".join(chunks) == text
    return chunks


@pytest.mark.slow
def test_smollm2_digits_after_spaces(smol, hf_smol):
    """Spaces before a digit: we follow llama.cpp and SmolLM2's tokenizer.json (digits split first).

    transformers 5.x builds the "smollm" GGUF tokenizer without the digit split, so for "a  1" it
    gives ["a", "Ġ", "Ġ", "1"] where llama.cpp gives ["a", "ĠĠ", "1"]; that is why VARIED avoids them.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

    spell = hf_bytes_to_unicode()
    bpe = hf_smol.backend_tokenizer.model  # transformers' BPE model (vocabulary and merges)
    for text in ["a  1", "\n 1", "x   2024", "Room  101\n  7 items", "\t\t7", *VARIED[:18]]:
        # Reference: llama.cpp's chunking, then transformers' BPE on each chunk.
        expected = [
            bpe.token_to_id(token.value)
            for chunk in llama_cpp_smollm_chunks(text)
            for token in bpe.tokenize("".join(spell[b] for b in chunk.encode("utf-8")))
        ]
        assert smol.encode(text) == expected, text
    assert [smol.id_to_piece(i) for i in smol.encode("a  1")] == ["a", "ĠĠ", "1"]


@pytest.mark.parametrize("text", AWKWARD + ["<|im_start|>system\n<|im_end|>"])
def test_smollm2_round_trip(smol, text):
    # Reference: the input itself (byte-level BPE can spell any UTF-8 text).
    assert smol.decode(smol.encode(text)) == text


def test_bytes_to_unicode_is_gpt2s_alphabet():
    # Reference: the tokenizers library's ByteLevel alphabet and GPT-2's well-known spellings.
    from tokenizers import pre_tokenizers

    spelling = bytes_to_unicode()
    assert sorted(spelling) == list(range(256))
    assert set(spelling.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert [spelling[ord(c)] for c in " \n\tA"] == ["Ġ", "Ċ", "ĉ", "A"]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for b in range(128):  # one-byte UTF-8 characters: the library spells each byte as we do
        assert byte_level.pre_tokenize_str(chr(b))[0][0] == spelling[b]


def test_bpe_merge_steps_agrees_with_tokenizers(smol):
    # Reference: the tokenizers library's BPE model that ByteLevelBPETokenizer wraps, on a few hundred
    # words: the chunks of the VARIED strings, plus random concatenations of vocabulary pieces (which
    # make BPE work through many competing merges).
    words = [chunk for text in VARIED for chunk in smol.pre_tokenize(text) if "<|" not in chunk]
    rng = random.Random(0)
    pieces = [smol.id_to_piece(i) for i in range(17, smol.vocab_size)]  # 0-16 are control tokens
    words += ["".join(rng.choice(pieces) for _ in range(rng.randint(2, 4))) for _ in range(300)]
    assert len(words) > 400
    for word in words:
        expected = [token.value for token in smol.hf.model.tokenize(word)]
        assert bpe_pieces(word, smol.ranks) == expected, word
    # The steps themselves: a merge can only use symbols that earlier merges made, so in a merge list
    # learned by BPE training the steps come out in increasing rank.
    for word in words[:100]:
        ranks = [smol.ranks[pair] for pair in bpe_merge_steps(word, smol.ranks)]
        assert ranks == sorted(ranks), word
    assert bpe_pieces("Ġlowest", smol.ranks) == [smol.id_to_piece(i) for i in smol.encode(" lowest")]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama2", "smol"])
def test_errors(which, request):
    tokenizer = request.getfixturevalue(which)
    with pytest.raises(TypeError, match="bytes"):
        tokenizer.encode(b"bytes are not text")
    with pytest.raises(TypeError, match="NoneType"):
        tokenizer.encode(None)
    n = tokenizer.vocab_size
    with pytest.raises(ValueError, match=rf"\b{n}\b.*\b{n}\b"):  # names the id and the vocabulary size
        tokenizer.decode([5, n])
    with pytest.raises(ValueError, match=r"-1\b"):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match=str(n)):
        tokenizer.id_to_piece(n)


def test_load_tokenizer_rejects_other_files(tmp_path):
    import gguf

    notes = tmp_path / "notes.txt"
    notes.write_text("not a tokenizer")
    with pytest.raises(ValueError, match="notes.txt.*expected"):
        load_tokenizer(notes)

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        load_tokenizer(junk)

    fake_model = tmp_path / "tokenizer.model"
    fake_model.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_tokenizer(fake_model)

    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        load_tokenizer(tmp_path / "missing.gguf")

    # A real GGUF with an unsupported tokenizer kind, and one with no tokenizer at all.
    for name, kind in [("bert.gguf", "bert"), ("weights-only.gguf", None)]:
        writer = gguf.GGUFWriter(tmp_path / name, "llama")
        if kind:
            writer.add_tokenizer_model(kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(ValueError, match=f"{name}.*{kind!r}.*expected 'llama'"):
            load_tokenizer(tmp_path / name)


def test_unsupported_byte_level_pre_tokenizer():
    with pytest.raises(ValueError, match="qwen2"):
        ByteLevelBPETokenizer(["a", "b"], [], [1, 1], bos_id=0, eos_id=1, pre="qwen2")
