"""Parameter counts and FFN sizes from configs alone, against transformers' models built on the meta
device from the published Hugging Face configs (sizes typed from each model's config.json)."""

import pytest
import torch

import annotated_llama as al

# preset -> the published config.json fields (hidden, layers, heads, kv heads, intermediate, vocab, tied)
HF_CONFIGS = {
    "llama2-7b": (4096, 32, 32, 32, 11008, 32000, False),
    "llama2-13b": (5120, 40, 40, 40, 13824, 32000, False),
    "llama2-70b": (8192, 80, 64, 8, 28672, 32000, False),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256, False),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000, False),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "smollm2-1.7b": (2048, 24, 32, 32, 8192, 49152, True),
    "mistral-7b": (4096, 32, 32, 8, 14336, 32000, False),
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parameter_count_matches_transformers(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    d, n_layers, heads, kv, ffn, vocab, tied = HF_CONFIGS[name]
    config = LlamaConfig(hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=tied)
    with torch.device("meta"):
        reference = sum(p.numel() for p in LlamaForCausalLM(config).parameters())  # shared weights once
    args = al.ModelArgs.preset(name)
    assert args.ffn_dim == ffn
    assert al.count_parameters(args) == reference


def test_published_counts():
    # Figures from references.md (transformers on the meta device) and the Llama 2 paper's model card.
    assert al.count_parameters(al.ModelArgs.preset("llama2-7b")) == 6_738_415_616
    assert al.count_parameters(al.ModelArgs.preset("llama2-13b")) == 13_015_864_320
    assert al.count_parameters(al.ModelArgs.preset("llama2-70b")) == 68_976_648_192
    assert al.count_parameters(al.ModelArgs.preset("llama3-8b")) == 8_030_261_248
    assert al.count_parameters(al.ModelArgs.preset("smollm2-135m")) == 134_515_008


def test_ffn_rule():
    # Llama 2 7B: 11008 = 256 * ceil((2/3 * 4 * 4096) / 256); Llama 3 8B: multiplier 1.3, multiple of 1024.
    assert al.ffn_hidden_dim(4096, 256) == 11008
    assert al.ffn_hidden_dim(4096, 1024, 1.3) == 14336
    assert al.ffn_hidden_dim(8192, 4096, 1.3) == 28672


def test_config_errors():
    with pytest.raises(ValueError, match="unknown preset 'llama-9000'"):
        al.ModelArgs.preset("llama-9000")
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads"):
        al.ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size -1"):
        al.ModelArgs.from_meta_params({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": -1})
