"""transformers' ``LlamaForCausalLM`` on the same weights: the independent reference the book checks against.

Two ways to get it:

* ``as_transformers(model)``: transformers' model built around *our* tensors, so a chapter holds one copy of
  the weights whatever the checkpoint (a Meta directory, a GGUF, a hub id). What it shares with our model:
  the weights as our loader read them. What it does not: the model code (attention, RoPE in rotate-half form,
  norms, the MLP) and the q/k row order, which it gets back by applying the Meta -> Hugging Face permutation
  on the fly (a parametrization: one layer's q/k at a time is copied, during that layer's forward).
* ``transformers_model(source)``: transformers loads the checkpoint itself (for the bundled model it reads
  and dequantizes the GGUF with its own converter, cached as a Hugging Face directory): independent of our
  loader as well, at the price of a second copy of the weights. The tests use it; chapters use the first.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import torch

from torch import nn

from . import assets
from .loading import BUNDLED, resolve_device_dtype
from .weights import permute_meta_to_hf


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# How far our logits may be from transformers' on the same weights, relative to the largest |logit|: the two
# implementations round differently (order of sums, where they cast), so the gap scales with the dtype's unit
# roundoff u. 32·u for the 16-bit types (bf16 u = 2^-8, fp16 u = 2^-11); float32 gets 1e-5 (about 170·u),
# since a sum of thousands of products in another order differs by more than a few roundoffs. Measured on the
# bundled model (a 22-token sentence): 2.0e-6 (float32), 3.7e-3 (float16), 3.1e-2 (bfloat16).
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 32 * 2.0**-11, torch.bfloat16: 32 * 2.0**-8}


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, in float32."""
    ours, reference = ours.float(), reference.float()
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def check_close(ours: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, what: str = "logits") -> float:
    """Assert that ``ours`` is within ``RELATIVE_TOLERANCE[dtype]`` of ``reference``; return the relative gap."""
    gap, tol = relative_difference(ours, reference), RELATIVE_TOLERANCE[dtype]
    if not gap <= tol:  # also catches NaN
        raise AssertionError(f"{what}: relative difference {gap:.2e} exceeds the {dtype} tolerance {tol:.1e}")
    return gap


class _MetaToHFRows(nn.Module):
    """A parametrization: shows a Meta-layout q/k weight to transformers in its rotate-half row order."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return permute_meta_to_hf(weight, self.n_heads)


def transformers_config(args, dtype: torch.dtype = torch.float32):
    """A ``LlamaConfig`` with the hyperparameters of our ``ModelArgs``."""
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": args.rope_theta}
    if args.use_scaled_rope:
        rope.update(rope_type="llama3", factor=args.rope_scaling_factor, low_freq_factor=args.rope_low_freq_factor,
                    high_freq_factor=args.rope_high_freq_factor,
                    original_max_position_embeddings=args.rope_original_max_seq_len)
    return LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps,
        rope_parameters=rope, tie_word_embeddings=args.tie_word_embeddings, dtype=dtype)


def as_transformers(model):
    """transformers' ``LlamaForCausalLM`` running on ``model``'s own tensors (no second copy of the weights).

    q/k weights stay in Meta's interleaved layout in memory; a parametrization permutes them into transformers'
    rotate-half order each time transformers reads them. Everything else is the same storage as ``model``'s.
    """
    from torch.nn.utils import parametrize
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    _quiet_transformers()
    args = model.args
    config = transformers_config(args, model.dtype)
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight,
          "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.layers):
        at, ff, p = layer.attention, layer.feed_forward, f"model.layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": at.wq.weight, p + "self_attn.k_proj.weight": at.wk.weight,
            p + "self_attn.v_proj.weight": at.wv.weight, p + "self_attn.o_proj.weight": at.wo.weight,
            p + "mlp.gate_proj.weight": ff.w1.weight, p + "mlp.up_proj.weight": ff.w3.weight,
            p + "mlp.down_proj.weight": ff.w2.weight,
            p + "input_layernorm.weight": layer.attention_norm.weight,
            p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
        })
    # detach(): new tensor objects on the same storage, so transformers' Parameters never touch ours.
    hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True, assign=True)
    if args.tie_word_embeddings:  # assign=True gave the output its own Parameter: one object again, as tied
        hf.lm_head.weight = hf.model.embed_tokens.weight
    for layer in hf.model.layers:
        attn = layer.self_attn
        parametrize.register_parametrization(attn.q_proj, "weight", _MetaToHFRows(args.n_heads))
        parametrize.register_parametrization(attn.k_proj, "weight", _MetaToHFRows(args.n_kv_heads))
    hf.model.rotary_emb = LlamaRotaryEmbedding(config).to(model.device)  # its buffers were on meta
    hf.generation_config.pad_token_id = 0
    return hf.eval().requires_grad_(False)


def transformers_model(source: str | Path = "smollm2-135m", *, device=None, dtype=None):
    """``LlamaForCausalLM`` for ``source`` (bundled name, HF directory or HF id), in eval mode."""
    from transformers import LlamaForCausalLM

    _quiet_transformers()
    device, dtype = resolve_device_dtype(device, dtype)
    if isinstance(source, str) and source.lower() in BUNDLED:
        gguf = assets.asset_path(BUNDLED[source.lower()])
        directory = assets.cache_dir() / (gguf.stem + ".transformers")
        if not (directory / "config.json").is_file():
            # The GGUF converter draws its own progress bar on stderr: keep it out of notebook outputs.
            with contextlib.redirect_stderr(io.StringIO()):
                from_gguf = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # A model loaded from GGUF refuses save_pretrained; copy its tensors into a plain one.
            config = from_gguf.config
            config.quantization_config = None
            plain = LlamaForCausalLM(config)
            plain.load_state_dict(from_gguf.state_dict())
            partial = directory.with_suffix(".part")
            shutil.rmtree(partial, ignore_errors=True)
            plain.save_pretrained(partial)
            partial.rename(directory)
        source = directory
    return LlamaForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()


def transformers_tokenizer(source: str | Path = "smollm2-135m"):
    """transformers' own tokenizer for ``source`` (for the bundled model: built by transformers from the GGUF,
    then saved in the cache, since rebuilding it from the GGUF takes seconds)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    if isinstance(source, str) and source.lower() in BUNDLED:
        gguf = assets.asset_path(BUNDLED[source.lower()])
        directory = assets.cache_dir() / (gguf.stem + ".transformers-tokenizer")
        if not (directory / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            partial = directory.with_suffix(".part")
            shutil.rmtree(partial, ignore_errors=True)
            tokenizer.save_pretrained(partial)
            partial.rename(directory)
        source = directory
    return AutoTokenizer.from_pretrained(source)
