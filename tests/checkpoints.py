"""Small random-weight LLaMA checkpoints in the formats a reader swaps in: the one-line-swap test's inputs.

Each is written the way its family ships, so the loader and every chapter meet the real thing:

* ``llama2-hf``: a Hugging Face directory shaped like Llama 2 (multi-head attention, untied output, θ = 10,000,
  context 4,096) with Llama 2's own SentencePiece ``tokenizer.model`` (32,000 pieces, BOS first);
* ``llama3.2-hf``: a Hugging Face directory shaped like Llama 3.2 (grouped-query attention 8/2, tied embeddings,
  θ = 500,000, Llama 3.1 RoPE scaling with factor 32, context 131,072) with a byte-level BPE ``tokenizer.json``
  whose post-processor puts ``<|begin_of_text|>`` first, as Llama 3's does;
* ``llama2-meta``: a Meta directory (params.json, consolidated.00.pth, tokenizer.model), the format of Meta's
  own code, with Llama 1's ε = 1e-6 and the FFN size given by ``multiple_of``;
* ``llama3-meta`` (unit tests only): a Meta Llama 3 directory with a tiktoken ``tokenizer.model``.

Weights are random (normal, std 0.02; norm gains 1 ± 0.1), written by transformers' ``LlamaForCausalLM`` or,
for Meta, converted from it with the published permutation rule in ``helpers.py``. The byte-level vocabulary
is trained here, with ``tokenizers``, on the book's own prose.

    python tests/checkpoints.py OUT_DIR [--scale N]   # writes OUT_DIR/<name> for every style
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import hf_to_meta_state_dict, meta_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL_VOCAB = 1000  # trained tokens; the model's embedding has a few spare rows, as real ones often do

STYLES = {
    # name: (format, config for transformers' LlamaConfig)
    "llama2-hf": ("hf", dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=8,
                             intermediate_size=344, vocab_size=32000, max_position_embeddings=4096,
                             rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                             tie_word_embeddings=False)),
    "llama3.2-hf": ("hf", dict(hidden_size=256, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                               intermediate_size=512, vocab_size=1024, max_position_embeddings=131072,
                               rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=BYTE_LEVEL_VOCAB,
                               eos_token_id=BYTE_LEVEL_VOCAB + 1,
                               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192})),
    "llama2-meta": ("meta", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                 intermediate_size=192, vocab_size=32000, max_position_embeddings=2048,
                                 rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                 tie_word_embeddings=False)),
}
SWAP_STYLES = ["llama2-hf", "llama3.2-hf", "llama2-meta"]


def random_hf_model(config: dict, seed: int = 0, scale: int = 1):
    """transformers' LlamaForCausalLM with random weights; ``scale`` multiplies the width (memory checks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(config)
    if scale > 1:
        config["hidden_size"] *= scale
        config["intermediate_size"] *= scale
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # random gains, so that a norm applied wrongly would show
                p.add_(0.1 * torch.randn_like(p))
    return model


def llama2_sentencepiece_bytes() -> bytes:
    """Llama 2's tokenizer.model (rebuilt from llama.cpp's vocabulary by the package, cached)."""
    from annotated_llama import llama2_tokenizer

    return llama2_tokenizer().sp.serialized_model_proto()


def train_byte_level_bpe(vocab_size: int = BYTE_LEVEL_VOCAB):
    """A byte-level BPE with Llama 3's pre-tokenizer regex, trained on the chapters' text (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = [p.read_text() for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))]
    tok.train_from_iterator(texts, trainer)
    return tok


def write_byte_level_tokenizer(directory: Path) -> None:
    """tokenizer.json (+ tokenizer_config.json) in Llama 3's manner: BOS added by the post-processor."""
    from tokenizers import AddedToken, processors

    tok = train_byte_level_bpe()
    n = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True), AddedToken("<|end_of_text|>", special=True)])
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", n)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True}))


def write_tiktoken_file(path: Path) -> None:
    """The trained byte-level BPE as a tiktoken file: base64 bytes and rank per line, bytes first, then one
    rank per merge in training order (tiktoken merges the pair whose result has the lowest rank)."""
    from annotated_llama.tokenizer import _CHAR_TO_BYTE

    tok = train_byte_level_bpe()
    merges = json.loads(tok.to_str())["model"]["merges"]
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    for rank, merge in enumerate(merges, start=256):
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        data = bytes(_CHAR_TO_BYTE[c] for c in left + right)
        lines.append(f"{base64.b64encode(data).decode()} {rank}")
    path.write_text("\n".join(lines) + "\n")


def write_checkpoint(name: str, out: Path, seed: int = 0, scale: int = 1) -> Path:
    """Write the checkpoint ``name`` (a key of STYLES, or "llama3-meta") under ``out / name``."""
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    if name == "llama3-meta":
        fmt, config = "meta", dict(STYLES["llama3.2-hf"][1], tie_word_embeddings=False,
                                   vocab_size=BYTE_LEVEL_VOCAB + 256)
    else:
        fmt, config = STYLES[name]
    model = random_hf_model(config, seed, scale)
    if fmt == "hf":
        model.save_pretrained(directory)
        if "llama2" in name:
            (directory / "tokenizer.model").write_bytes(llama2_sentencepiece_bytes())
        else:
            write_byte_level_tokenizer(directory)
        return directory
    sd = hf_to_meta_state_dict(model)
    params = meta_params(model)
    rope = config["rope_parameters"]
    if rope["rope_type"] == "llama3":  # Meta's spelling of Llama 3.1 RoPE scaling
        params.update(use_scaled_rope=True, rope_scaling_factor=rope["factor"])
    (directory / "params.json").write_text(json.dumps(params))
    torch.save(sd, directory / "consolidated.00.pth")
    if name == "llama3-meta":
        write_tiktoken_file(directory / "tokenizer.model")
    else:
        (directory / "tokenizer.model").write_bytes(llama2_sentencepiece_bytes())
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--styles", nargs="*", default=SWAP_STYLES)
    parser.add_argument("--scale", type=int, default=1, help="multiply hidden and FFN sizes (memory checks)")
    a = parser.parse_args()
    for name in a.styles:
        print(write_checkpoint(name, a.out, scale=a.scale))


if __name__ == "__main__":
    main()
