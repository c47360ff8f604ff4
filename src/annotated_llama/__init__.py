"""The Annotated LLaMA: a readable, tested LLaMA forward pass on real checkpoints.

    import annotated_llama as al
    model, tokenizer = al.load("smollm2-135m")
    al.generate(model, tokenizer, "The capital of France is", max_new_tokens=8)
"""

from .config import ModelArgs, count_parameters, ffn_hidden_dim
from .generate import generate, sample_next, stream
from .loading import load
from .model import Transformer
from .quant import Int4Linear, Int8Linear, quantize_model, weight_bytes
from .tokenizer import llama2_tokenizer, load_tokenizer

__all__ = [
    "Int4Linear", "Int8Linear", "ModelArgs", "Transformer", "count_parameters", "ffn_hidden_dim", "generate",
    "llama2_tokenizer", "load", "load_tokenizer", "quantize_model", "sample_next", "stream", "weight_bytes",
]
