"""Model hyperparameters: Meta's ``ModelArgs``, presets for known models, and exact parameter counts.

Field names follow Meta's ``llama/model.py`` so a ``params.json`` reads straight in. Two fields go beyond
Meta's: ``hidden_dim`` (an explicit FFN size, as Hugging Face configs give it) and ``head_dim`` (for models
whose head size is not ``dim // n_heads``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: as many as query heads (multi-head attention)
    vocab_size: int = 32000
    multiple_of: int = 256  # the FFN size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    max_batch_size: int = 1
    hidden_dim: int | None = None  # explicit FFN size; None: derive it with Meta's rule
    head_dim: int | None = None  # None: dim // n_heads
    tie_word_embeddings: bool = False  # the output projection reuses the token embedding
    # Llama 3.1's RoPE scaling (Meta: ``use_scaled_rope``; Hugging Face: rope_type "llama3"): long-wavelength
    # frequencies are slowed by ``rope_scaling_factor``, short ones kept, the band between blended.
    use_scaled_rope: bool = False
    rope_scaling_factor: float = 8.0  # 8 for Llama 3.1 and 3.3, 32 for Llama 3.2
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192  # the context Llama 3 was pre-trained with

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}; give head_dim")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}: "
                "grouped-query attention shares each KV head among a whole number of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd; RoPE rotates pairs of dimensions")

    @property
    def ffn_dim(self) -> int:
        """The SwiGLU hidden size: explicit, or Meta's rule (2/3 of 4·dim, scaled, rounded up)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str) -> "ModelArgs":
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**PRESETS[key])

    @classmethod
    def from_meta_params(cls, params: dict, vocab_size: int | None = None) -> "ModelArgs":
        """From a Meta ``params.json``; ``vocab_size: -1`` there means 'ask the tokenizer'."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"params.json has fields this loader does not know: {sorted(unknown)}")
        # Meta's reference code scales by 8 whenever use_scaled_rope is set; a params.json may say otherwise.
        kw = {k: v for k, v in params.items() if k in known}
        if kw.get("vocab_size", -1) in (-1, None):
            if vocab_size is None:
                raise ValueError("params.json has vocab_size -1 and no tokenizer was found to give it")
            kw["vocab_size"] = vocab_size
        return cls(**kw)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        """From a Hugging Face ``config.json`` of a ``LlamaForCausalLM`` (or the same architecture)."""
        arch = cfg.get("architectures") or []
        if cfg.get("model_type") not in (None, "llama", "mistral") and "LlamaForCausalLM" not in arch:
            raise ValueError(
                f"config.json describes model_type {cfg.get('model_type')!r}; this package runs the "
                "LLaMA architecture (model_type 'llama')"
            )
        # transformers < 5 writes "rope_scaling" (null when unscaled) and "rope_theta"; transformers 5 writes
        # "rope_parameters", which holds the theta too.
        scaling = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ("default", None, "llama3"):
            raise ValueError(
                f"config.json asks for RoPE scaling {rope_type!r}; this package implements Llama 3.1's "
                "('llama3') and none other")
        rope = {}
        if rope_type == "llama3":
            rope = dict(
                use_scaled_rope=True, rope_scaling_factor=float(scaling["factor"]),
                rope_low_freq_factor=float(scaling["low_freq_factor"]),
                rope_high_freq_factor=float(scaling["high_freq_factor"]),
                rope_original_max_seq_len=int(scaling["original_max_position_embeddings"]))
        theta = cfg.get("rope_theta", scaling.get("rope_theta", 10000.0))
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("config.json has attention or MLP biases; LLaMA has none")
        if cfg.get("sliding_window"):
            raise ValueError("config.json asks for sliding-window attention, which this package does not implement")
        return cls(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            vocab_size=cfg["vocab_size"],
            hidden_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            head_dim=cfg.get("head_dim"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            **rope,
        )


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FFN size rule: keep SwiGLU's parameter count near a 4·dim MLP's, then round up.

    SwiGLU has three matrices instead of two, so 4·dim shrinks to 2/3 of it; Llama 2 70B and Llama 3 then
    scale by ``ffn_dim_multiplier``; the result is rounded up to ``multiple_of`` for efficient matmuls.
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def count_parameters(args: ModelArgs) -> int:
    """Exact number of learned parameters, from the config alone (RoPE frequencies are not parameters)."""
    d, hd = args.dim, args.head_dim
    attention = d * args.n_heads * hd + 2 * d * args.n_kv_heads * hd + args.n_heads * hd * d
    feed_forward = 3 * d * args.ffn_dim
    norms = 2 * d
    per_layer = attention + feed_forward + norms
    embedding = args.vocab_size * d
    output = 0 if args.tie_word_embeddings else args.vocab_size * d
    return embedding + args.n_layers * per_layer + d + output


# Hyperparameters as published in each model's params.json / config.json.
PRESETS: dict[str, dict] = {
    "llama1-7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, norm_eps=1e-6, max_seq_len=2048),
    "llama1-13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, norm_eps=1e-6, max_seq_len=2048),
    "llama1-33b": dict(dim=6656, n_layers=60, n_heads=52, vocab_size=32000, norm_eps=1e-6, max_seq_len=2048),
    "llama1-65b": dict(dim=8192, n_layers=80, n_heads=64, vocab_size=32000, norm_eps=1e-5, max_seq_len=2048),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": dict(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000, multiple_of=4096,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, max_seq_len=4096,
    ),
    "codellama-7b": dict(
        dim=4096, n_layers=32, n_heads=32, vocab_size=32016, norm_eps=1e-5, rope_theta=1e6, max_seq_len=16384,
    ),
    "llama3-8b": dict(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192,
    ),
    "llama3-70b": dict(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192,
    ),
    # Llama 3.1 keeps the Llama 3 shapes and stretches the context to 128k with scaled RoPE.
    "llama3.1-8b": dict(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, use_scaled_rope=True,
    ),
    "llama3.1-70b": dict(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
        ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, use_scaled_rope=True,
    ),
    "llama3.1-405b": dict(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
        ffn_dim_multiplier=1.2, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, use_scaled_rope=True,
    ),
    # Llama 3.2's small models: tied embeddings, RoPE scaled by 32 (their config.json's factor).
    "llama3.2-1b": dict(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=256,
        ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, use_scaled_rope=True,
        rope_scaling_factor=32.0, tie_word_embeddings=True,
    ),
    "llama3.2-3b": dict(
        dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, multiple_of=256,
        ffn_dim_multiplier=1.0, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, use_scaled_rope=True,
        rope_scaling_factor=32.0, tie_word_embeddings=True,
    ),
    "tinyllama-1.1b": dict(
        dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, hidden_dim=5632,
        norm_eps=1e-5, max_seq_len=2048,
    ),
    "smollm2-135m": dict(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, hidden_dim=1536, norm_eps=1e-5,
        rope_theta=100000.0, max_seq_len=8192, tie_word_embeddings=True,
    ),
    "smollm2-360m": dict(
        dim=960, n_layers=32, n_heads=15, n_kv_heads=5, vocab_size=49152, hidden_dim=2560, norm_eps=1e-5,
        rope_theta=100000.0, max_seq_len=8192, tie_word_embeddings=True,
    ),
    "smollm2-1.7b": dict(
        dim=2048, n_layers=24, n_heads=32, n_kv_heads=32, vocab_size=49152, hidden_dim=8192, norm_eps=1e-5,
        rope_theta=130000.0, max_seq_len=8192, tie_word_embeddings=True,
    ),
    "mistral-7b": dict(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=32000, hidden_dim=14336, norm_eps=1e-5,
        rope_theta=10000.0, max_seq_len=8192,
    ),
}
