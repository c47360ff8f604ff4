"""transformers' ``LlamaForCausalLM`` on the same weights: the independent reference the book checks against.

For the bundled model, transformers itself reads and dequantizes the GGUF (its own converter, not ours);
the result is saved once as a Hugging Face directory in the cache so later chapters load it in a second.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import torch

from . import assets
from .loading import BUNDLED, resolve_device_dtype


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


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
