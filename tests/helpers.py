"""Shared test helpers: small random LLaMA models built by transformers, saved as real checkpoints.

transformers' ``LlamaForCausalLM`` is the independent reference: the checkpoints are written from its
weights and its logits are what our model must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Small configurations covering the attention variants and the odd corners of the config space.
CONFIGS = {
    # mha: 192 = Meta's rule for dim 64 with multiple_of 32 (2/3·4·64 = 170, rounded up), so its params.json
    # gives multiple_of instead of the size.
    "mha": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=192),
    "gqa": dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, intermediate_size=344),
    "mqa": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=172),
    "tied": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=256,
                 tie_word_embeddings=True),
    "odd_head_dim": dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=40,
                         intermediate_size=200, rope_theta=500000.0, rms_norm_eps=1e-6),
}


def hf_model(kind: str, vocab_size: int = 256, n_layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(CONFIGS[kind])
    theta = cfg.pop("rope_theta", 10000.0)
    config = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=n_layers, max_position_embeddings=128,
                         rope_theta=theta, **cfg)
    model = LlamaForCausalLM(config).eval()
    # Random init leaves norms at 1: perturb them so a wrong norm would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_to_meta_state_dict(model) -> dict[str, torch.Tensor]:
    """Convert a transformers LlamaForCausalLM state dict to Meta's names and q/k layout.

    Written here from the published conversion rule (llama.cpp's and gpt-fast's converters: rows of each
    head reordered from (half, pair) to (pair, half)), not with the package's own function.
    """
    cfg = model.config
    hd = cfg.head_dim
    sd = model.state_dict()
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}

    def to_interleaved(w, heads):
        return w.reshape(heads, 2, hd // 2, w.shape[1]).permute(0, 2, 1, 3).reshape(heads * hd, w.shape[1])

    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = p + "self_attn."
        out.update({
            f"layers.{i}.attention.wq.weight": to_interleaved(sd[q + "q_proj.weight"], cfg.num_attention_heads),
            f"layers.{i}.attention.wk.weight": to_interleaved(sd[q + "k_proj.weight"], cfg.num_key_value_heads),
            f"layers.{i}.attention.wv.weight": sd[q + "v_proj.weight"],
            f"layers.{i}.attention.wo.weight": sd[q + "o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
            f"layers.{i}.attention_norm.weight": sd[p + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    return {k: v.clone().contiguous() for k, v in out.items()}


def meta_params(model) -> dict:
    cfg = model.config
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_parameters["rope_theta"],
              "max_seq_len": cfg.max_position_embeddings}
    if (cfg.hidden_size, cfg.intermediate_size) == (64, 192):
        params["multiple_of"] = 32
    else:
        params["hidden_dim"] = cfg.intermediate_size
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        params["head_dim"] = cfg.head_dim
    return params


def save_meta_checkpoint(model, directory: Path, n_shards: int = 1) -> Path:
    """Write params.json and consolidated.NN.pth, split model-parallel style when n_shards > 1
    (Meta's convention: column-parallel weights split rows, wo/w2 split columns, the embedding splits
    the model dimension, norms are copied into every shard)."""
    directory.mkdir(parents=True, exist_ok=True)
    sd = hf_to_meta_state_dict(model)
    if model.config.tie_word_embeddings:
        sd.pop("output.weight")
    (directory / "params.json").write_text(json.dumps(meta_params(model)))
    split_dim = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}
    for s in range(n_shards):
        shard = {}
        for name, t in sd.items():
            dim = split_dim.get(name.split(".")[-2])
            shard[name] = t if dim is None or n_shards == 1 else t.chunk(n_shards, dim=dim)[s].clone()
        torch.save(shard, directory / f"consolidated.{s:02d}.pth")
    return directory
