"""Tokenizers: text to token ids and back, for the two kinds of vocabulary a LLaMA model ships with.

* ``SentencePieceTokenizer``: Llama 1 and 2. A SentencePiece BPE model over Unicode characters, with
  ``▁`` standing for a space, a "dummy prefix" space in front of the text, digits split one by one,
  and byte fallback (``<0x41>``...) for characters the vocabulary lacks.
* ``ByteLevelBPETokenizer``: GPT-2 style byte-level BPE, as in the bundled SmolLM2 and in Llama 3. The
  text is cut into chunks by a regular expression, every byte of a chunk is spelled as one printable
  character, and merges learned in training glue those characters into tokens.
* ``TiktokenTokenizer``: Meta's own Llama 3 ``tokenizer.model``, the same byte-level BPE stored the way
  OpenAI's ``tiktoken`` stores it (each token's bytes in base64 with its merge rank), read with tiktoken.

Both answer the same small interface (``encode``, ``decode``, ``bos_id``, ``eos_id``, ``vocab_size``,
``add_bos``, ``id_to_piece``, ``piece_to_id``), so the rest of the package never asks which one it holds.
``load_tokenizer(path)`` picks the right one for a ``.gguf`` file or a Meta ``tokenizer.model``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from . import assets

# llama.cpp's token types (``tokenizer.ggml.token_type``), named as SentencePiece names its piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TOKEN_TYPE_NAMES = {
    NORMAL: "NORMAL",
    UNKNOWN: "UNKNOWN",
    CONTROL: "CONTROL",
    USER_DEFINED: "USER_DEFINED",
    UNUSED: "UNUSED",
    BYTE: "BYTE",
}

LLAMA2_CACHE_NAME = "llama2-tokenizer.model"
LLAMA2_VOCAB_SIZE = 32000


class Tokenizer:
    """What every tokenizer here shares: BOS/EOS handling and argument checks.

    A subclass sets ``bos_id``, ``eos_id``, ``vocab_size`` and ``add_bos`` and implements the four
    methods that touch its library: ``_encode_text``, ``_decode_ids``, ``id_to_piece``, ``piece_to_id``.
    """

    bos_id: int
    eos_id: int
    vocab_size: int
    add_bos: bool  # the tokenizer's own convention: does a prompt start with BOS?

    def encode(self, text: str, bos: bool | None = None, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``bos=None`` follows the tokenizer's convention (``add_bos``)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        if bos is None:
            bos = self.add_bos
        # BOS and EOS are added here, never by the library, so both kinds behave the same way.
        return [self.bos_id] * bool(bos) + self._encode_text(text) + [self.eos_id] * bool(eos)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids (a list, or anything iterable such as a 1-D tensor).

        Each kind follows its own library: SentencePiece drops control tokens (``<s>``), byte-level
        BPE writes them out (``<|im_end|>``), as transformers does.
        """
        return self._decode_ids([self._check_id(i) for i in ids])

    def __len__(self) -> int:
        return self.vocab_size

    def _check_id(self, i: int) -> int:
        """``i`` as an int, or a ValueError if no token has that id."""
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return i

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_ids(self, ids: list[int]) -> str:
        raise NotImplementedError

    def id_to_piece(self, i: int) -> str:
        raise NotImplementedError

    def piece_to_id(self, piece: str) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, add_bos={self.add_bos})"
        )


# --------------------------------------------------------------------------------------------------
# Reading the vocabulary out of a GGUF file
# --------------------------------------------------------------------------------------------------


def read_gguf_tokenizer(path: str | os.PathLike) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` fields of a GGUF file as plain Python values, keys without the prefix.

    ``{"model": "llama", "tokens": [...], "scores": [...], "token_type": [...], "bos_token_id": 1, ...}``
    """
    from gguf import GGUFReader

    reader = GGUFReader(path)
    prefix = "tokenizer.ggml."
    return {
        key[len(prefix) :]: _field_value(field)
        for key, field in reader.fields.items()
        if key.startswith(prefix)
    }


def _field_value(field) -> Any:
    """One GGUF metadata field as a Python value.

    ``GGUFReader`` keeps a field as raw ``parts`` (little numpy views of the file: lengths, then
    values) and ``data``, the indices of the parts that hold values. A string is its utf-8 bytes.
    (Recent ``gguf`` versions do the same in ``ReaderField.contents()``; older ones lack it.)
    """
    from gguf import GGUFValueType

    parts = [field.parts[i] for i in field.data]
    kind = field.types[-1]  # for an array, the type of its items
    if kind == GGUFValueType.STRING:
        values = [bytes(part).decode("utf-8") for part in parts]
    else:
        values = [part[0].item() for part in parts]
    return values if field.types[0] == GGUFValueType.ARRAY else values[0]


# --------------------------------------------------------------------------------------------------
# SentencePiece (Llama 1 and 2)
# --------------------------------------------------------------------------------------------------


def sentencepiece_model_proto(tokens: list[str], scores: list[float], token_types: list[int]) -> bytes:
    """A serialized SentencePiece ``ModelProto`` for a BPE vocabulary of Llama 2's kind.

    llama.cpp keeps only the pieces, their scores and their types; the rest of Meta's
    ``tokenizer.model`` is the fixed recipe below, the same for every Llama 1/2 vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    piece_type = sp_pb2.ModelProto.SentencePiece.Type  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, ...
    model = sp_pb2.ModelProto()
    for piece, score, token_type in zip(tokens, scores, token_types, strict=True):
        if token_type not in _TOKEN_TYPE_NAMES:
            raise ValueError(f"piece {piece!r} has GGUF token type {token_type}, which SentencePiece lacks")
        # <unk> is UNKNOWN, <s> and </s> are CONTROL, <0x00>..<0xFF> are BYTE, the rest NORMAL.
        model.pieces.add(piece=piece, score=score, type=piece_type.Value(_TOKEN_TYPE_NAMES[token_type]))

    trainer = model.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE  # merges picked by score: the best-scored pair first
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True  # unknown characters become <0x..> byte pieces, never <unk>
    trainer.split_digits = True  # how Meta trained it: no piece holds two digits, "2024" is four tokens
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1  # no padding token

    normalizer = model.normalizer_spec
    normalizer.name = "identity"  # no Unicode normalization, hence no precompiled character map
    normalizer.add_dummy_prefix = True  # "Hello" is encoded as " Hello", so it matches "▁Hello"
    normalizer.remove_extra_whitespaces = False  # runs of spaces are kept, "  " has its own pieces
    normalizer.escape_whitespaces = True  # a space is written "▁" inside pieces
    return model.SerializeToString()


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (``sentencepiece.SentencePieceProcessor``) behind the common interface."""

    def __init__(self, processor, add_bos: bool = True):
        self.sp = processor
        self.bos_id = processor.bos_id()
        self.eos_id = processor.eos_id()
        self.vocab_size = processor.get_piece_size()
        self.add_bos = add_bos

    @classmethod
    def from_bytes(cls, model_proto: bytes, add_bos: bool = True) -> SentencePieceTokenizer:
        """A tokenizer from a serialized ``ModelProto``; ValueError if the bytes are not one."""
        import sentencepiece

        if not model_proto:  # SentencePiece would accept empty bytes as a model with no pieces
            raise ValueError("an empty SentencePiece model")
        try:
            processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as e:  # SentencePiece's error for bytes it cannot parse
            raise ValueError(f"not a SentencePiece model ({e})") from e
        return cls(processor, add_bos=add_bos)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """A Meta ``tokenizer.model`` (Llama 1/2 prompts start with BOS)."""
        return cls.from_bytes(Path(path).read_bytes(), add_bos=True)

    @classmethod
    def from_gguf_vocab(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Rebuild the SentencePiece model from a llama.cpp GGUF whose ``tokenizer.ggml.model`` is "llama"."""
        return cls._from_fields(read_gguf_tokenizer(path), path)

    @classmethod
    def _from_fields(cls, fields: dict, path) -> SentencePieceTokenizer:
        if fields.get("model") != "llama":
            raise ValueError(f"{path}: tokenizer.ggml.model is {fields.get('model')!r}, expected 'llama'")
        proto = sentencepiece_model_proto(fields["tokens"], fields["scores"], fields["token_type"])
        # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
        return cls.from_bytes(proto, add_bos=bool(fields.get("add_bos_token", True)))

    def _encode_text(self, text: str) -> list[int]:
        # SentencePiece never matches control pieces in text: a typed "<s>" stays three plain pieces.
        return self.sp.encode(text)

    def _decode_ids(self, ids: list[int]) -> str:
        # Control pieces (<s>, </s>) decode to nothing, byte pieces back to their bytes.
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(self._check_id(i))

    def piece_to_id(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if self.sp.id_to_piece(i) != piece:  # SentencePiece answers <unk>'s id for unknown pieces
            raise KeyError(f"{piece!r} is not a piece of this vocabulary")
        return i


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def llama2_tokenizer() -> SentencePieceTokenizer:
    """The Llama 2 tokenizer (32,000 pieces), rebuilt from llama.cpp's vocabulary once, then cached.

    Reading the GGUF takes about a second; the cached ``llama2-tokenizer.model`` loads in milliseconds.
    """
    cache = assets.cache_dir() / LLAMA2_CACHE_NAME
    if cache.is_file():
        try:
            tokenizer = SentencePieceTokenizer.from_bytes(cache.read_bytes(), add_bos=True)
            if tokenizer.vocab_size == LLAMA2_VOCAB_SIZE:
                return tokenizer
        except ValueError:  # a damaged cache file: rebuild it below
            pass
    fields = read_gguf_tokenizer(assets.asset_path(assets.LLAMA2_VOCAB))
    proto = sentencepiece_model_proto(fields["tokens"], fields["scores"], fields["token_type"])
    _write_atomically(cache, proto)
    return SentencePieceTokenizer.from_bytes(proto, add_bos=True)


# --------------------------------------------------------------------------------------------------
# Byte-level BPE (GPT-2 style: the bundled SmolLM2, Llama 3)
# --------------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's spelling of the 256 byte values as printable characters.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved to
    U+0100 and up in order. So a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A). The ``tokenizers``
    library does this itself; it is written out here to show what the vocabulary's strings mean.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),  # ASCII without space and DEL
        *range(ord("¡"), ord("¬") + 1),  # Latin-1 without no-break space ...
        *range(ord("®"), ord("ÿ") + 1),  # ... and soft hyphen
    ]
    spelling = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shifted)
            shifted += 1
    return spelling


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every occurrence of ``pair`` in ``symbols``, left to right, by the joined symbol."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def bpe_merge_steps(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges BPE applies to one chunk of byte-level text, in the order it applies them.

    ``word`` is already spelled in the byte alphabet (``bytes_to_unicode``); ``ranks`` maps a pair of
    symbols to its position in the merge list (lower = learned earlier = applied first). Start from
    single characters; repeatedly merge the adjacent pair with the lowest rank; stop when no adjacent
    pair is in the merge list.
    """
    symbols = list(word)
    steps = []
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        steps.append(best)
        symbols = _merge_pair(symbols, best)
    return steps


def bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The tokens (as strings) BPE turns ``word`` into: ``bpe_merge_steps`` replayed."""
    symbols = list(word)
    for pair in bpe_merge_steps(word, ranks):
        symbols = _merge_pair(symbols, pair)
    return symbols


def _pre_tokenizer(pre: str):
    """How the text is cut into chunks before BPE, by llama.cpp's name (``tokenizer.ggml.pre``)."""
    from tokenizers import pre_tokenizers

    # GPT-2's regex: contractions, letters, numbers, other symbols, each optionally after one space.
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "gpt2":
        return gpt2
    if pre == "smollm":
        # SmolLM2's own tokenizer.json, and llama.cpp's regex list for "smollm" (\p{N} first): every
        # digit is a chunk of its own, so spaces before a number are never glued to it.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    raise ValueError(f"byte-level pre-tokenizer {pre!r} is not supported here (supported: 'smollm', 'gpt2')")


class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2 style byte-level BPE, built with the ``tokenizers`` library from a GGUF's vocabulary."""

    def __init__(
        self,
        tokens: list[str],
        merges: list[tuple[str, str]],
        token_types: list[int],
        bos_id: int,
        eos_id: int,
        add_bos: bool = False,
        pre: str = "gpt2",
    ):
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTokenizer

        self.tokens = tokens
        self.merges = merges
        self.token_types, self.pre = list(token_types), pre
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.vocab_size = len(tokens)

        vocab = {token: i for i, token in enumerate(tokens)}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = _pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|>, <|endoftext|>, ...) become "special": matched whole when they
        # appear in the text, as transformers does for the same file (and llama.cpp with special
        # parsing on). User-defined tokens are matched whole too, but are not special.
        typed = list(zip(tokens, token_types))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in typed if k == CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in typed if k == USER_DEFINED])
        if tok.get_vocab_size(with_added_tokens=True) != self.vocab_size:
            raise ValueError("the vocabulary has duplicate tokens; ids would not match the model's")
        self.hf = tok

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> ByteLevelBPETokenizer:
        """The tokenizer stored in a GGUF whose ``tokenizer.ggml.model`` is "gpt2"."""
        return cls._from_fields(read_gguf_tokenizer(path), path)

    @classmethod
    def _from_fields(cls, fields: dict, path) -> ByteLevelBPETokenizer:
        if fields.get("model") != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model is {fields.get('model')!r}, expected 'gpt2'")
        return cls(
            tokens=fields["tokens"],
            merges=[tuple(m.split(" ")) for m in fields["merges"]],  # stored as "Ġ t"
            token_types=fields["token_type"],
            bos_id=fields["bos_token_id"],
            eos_id=fields["eos_token_id"],
            add_bos=bool(fields.get("add_bos_token", False)),
            pre=fields.get("pre", "gpt2"),
        )

    def to_json(self) -> str:
        """Everything needed to rebuild this tokenizer, for a cache that skips re-reading the GGUF."""
        return json.dumps({
            "tokens": self.tokens, "merges": [" ".join(m) for m in self.merges], "token_type": self.token_types,
            "bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "add_bos_token": self.add_bos,
            "pre": self.pre, "model": "gpt2",
        })

    @classmethod
    def from_json(cls, text: str, source="cached tokenizer") -> ByteLevelBPETokenizer:
        return cls._from_fields(json.loads(text), source)

    @cached_property
    def ranks(self) -> dict[tuple[str, str], int]:
        """Merge priorities for ``bpe_merge_steps``: the merge list's order."""
        return {pair: rank for rank, pair in enumerate(self.merges)}

    def pre_tokenize(self, text: str) -> list[str]:
        """The chunks BPE sees, in byte-level spelling (for showing; ``encode`` does this itself,
        after cutting out special tokens such as ``<|im_start|>``, which this does not)."""
        return [chunk for chunk, _ in self.hf.pre_tokenizer.pre_tokenize_str(text)]

    def _encode_text(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def _decode_ids(self, ids: list[int]) -> str:
        # Special tokens are written out ("<|im_end|>"), as transformers' decode does by default.
        return self.hf.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self.tokens[self._check_id(i)]

    def piece_to_id(self, piece: str) -> int:
        i = self.hf.token_to_id(piece)
        if i is None:
            raise KeyError(f"{piece!r} is not a piece of this vocabulary")
        return i


class JSONTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (e.g. Llama 3, SmolLM2 from the hub), with BOS/EOS from the
    directory's ``tokenizer_config.json`` / ``config.json``."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        self.hf = HFTokenizer.from_file(str(path))
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        config = {}
        for name in ("config.json", "tokenizer_config.json"):  # the second wins where both say something
            if (path.parent / name).is_file():
                config.update(json.loads((path.parent / name).read_text()))

        def token_id(key):
            value = config.get(key)
            if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config files
                value = value.get("content")
            if isinstance(value, str):
                return self.hf.token_to_id(value)
            return value if isinstance(value, int) else None

        self.bos_id = token_id("bos_token") if token_id("bos_token") is not None else token_id("bos_token_id")
        self.eos_id = token_id("eos_token") if token_id("eos_token") is not None else token_id("eos_token_id")
        # Whether the tokenizer's own post-processor puts BOS first (Llama 3's does; SmolLM2's does not).
        probe = self.hf.encode("a", add_special_tokens=True).ids
        self.add_bos = bool(config.get("add_bos_token", self.bos_id is not None and probe[:1] == [self.bos_id]))

    def _encode_text(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def _decode_ids(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self.hf.id_to_token(self._check_id(i))

    def piece_to_id(self, piece: str) -> int:
        i = self.hf.token_to_id(piece)
        if i is None:
            raise KeyError(f"{piece!r} is not a piece of this vocabulary")
        return i


class TiktokenTokenizer(Tokenizer):
    """Meta's Llama 3 ``tokenizer.model``: 128,000 byte-level BPE tokens (base64 bytes and rank per line),
    then 256 special tokens, as Meta's ``llama3/tokenizer.py`` defines them."""

    # Llama 3's pre-tokenizer: like GPT-2's, but case-insensitive contractions and numbers of at most 3 digits.
    PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    # The first special tokens, by name (Llama 3.1's list); the rest up to 256 are reserved.
    SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
               "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
    N_SPECIAL = 256

    def __init__(self, path: str | os.PathLike):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = Path(path)
        try:
            ranks = load_tiktoken_bpe(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a tiktoken BPE file ({type(e).__name__}: {e})") from e
        names = self.SPECIAL + [f"<|reserved_special_token_{2 + i}|>"
                                for i in range(self.N_SPECIAL - len(self.SPECIAL))]
        self.special = {name: len(ranks) + i for i, name in enumerate(names)}
        self.enc = tiktoken.Encoding(name=path.name, pat_str=self.PATTERN, mergeable_ranks=ranks,
                                     special_tokens=self.special)
        self.vocab_size = len(ranks) + len(names)
        self.bos_id, self.eos_id = self.special["<|begin_of_text|>"], self.special["<|end_of_text|>"]
        self.add_bos = True  # Meta's generation code starts every prompt with <|begin_of_text|>
        self._pieces = {i: b for b, i in ranks.items()}

    def _encode_text(self, text: str) -> list[int]:
        # Special-token text such as "<|eot_id|>" in a prompt stays plain text, as in Meta's default.
        return self.enc.encode(text, disallowed_special=())

    def _decode_ids(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def id_to_piece(self, i: int) -> str:
        i = self._check_id(i)
        if i in self._pieces:  # the token's bytes, shown in the byte-level spelling of the other tokenizers
            return "".join(_BYTE_TO_CHAR[b] for b in self._pieces[i])
        return next(name for name, j in self.special.items() if j == i)

    def piece_to_id(self, piece: str) -> int:
        if piece in self.special:
            return self.special[piece]
        try:
            data = bytes(_CHAR_TO_BYTE[c] for c in piece)
            return self.enc.encode_single_token(data)
        except Exception:  # a character outside the byte alphabet, or bytes that are no single token
            raise KeyError(f"{piece!r} is not a piece of this vocabulary") from None


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable bytes stand for themselves, the rest are moved
    up past 255), so byte-level tokens can be shown as text: a space is "Ġ", a newline "Ċ"."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = _byte_level_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def is_tiktoken_file(path: Path) -> bool:
    """Does ``path`` look like a tiktoken BPE file (``<base64> <rank>`` lines) rather than a SentencePiece
    protobuf?"""
    with open(path, "rb") as f:
        head = f.read(256)
    first = head.split(b"\n", 1)[0]
    return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", first) is not None


# --------------------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in ``path``: a ``.gguf`` file (SentencePiece or byte-level) or a ``tokenizer.model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file")
    if path.suffix == ".gguf":
        try:
            fields = read_gguf_tokenizer(path)
        except Exception as e:  # GGUFReader raises assorted errors on a file that is not GGUF
            raise ValueError(f"{path} is not a readable GGUF file ({e})") from e
        kind = fields.get("model")
        if kind == "llama":
            return SentencePieceTokenizer._from_fields(fields, path)
        if kind == "gpt2":
            return ByteLevelBPETokenizer._from_fields(fields, path)
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {kind!r}; "
            "expected 'llama' (SentencePiece) or 'gpt2' (byte-level BPE)"
        )
    if path.name.endswith("tokenizer.json"):
        return JSONTokenizer(path)
    if path.suffix == ".model":
        if is_tiktoken_file(path):
            return TiktokenTokenizer(path)
        try:
            return SentencePieceTokenizer.from_file(path)
        except ValueError as e:
            raise ValueError(f"{path}: {e}; expected a SentencePiece tokenizer.model") from e
    raise ValueError(
        f"{path}: cannot tell which tokenizer this is; expected a .gguf file with a tokenizer, a "
        "tokenizer.model (SentencePiece, or tiktoken for Llama 3) or a Hugging Face tokenizer.json"
    )
