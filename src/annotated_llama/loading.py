"""``load(source)``: one entry point from a model name, a file, a directory or a hub id to (model, tokenizer).

The bundled model's float32 tensors are cached as safetensors after the first dequantization, so a warm
load reads one file instead of dequantizing 272 GGUF tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import assets
from .config import ModelArgs
from .model import Transformer
from .tokenizer import ByteLevelBPETokenizer, load_tokenizer
from .weights import (CheckpointError, find_meta_tokenizer, keep_as_is, read_gguf, read_hf_dir, read_meta_dir,
                      read_safetensors)

BUNDLED = {"smollm2-135m": assets.SMOLLM2_GGUF}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def native_bf16(device: torch.device) -> bool:
    """Does this CUDA GPU compute in bf16 natively (compute capability 8.0 or more: A100, L4, H100)?

    Not ``torch.cuda.is_bf16_supported()``: by default it counts emulation and answers True on a T4 (7.5),
    where bf16 is slow and torch.compile's inductor refuses to generate bf16 code.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when a GPU is present, in bf16 where the GPU has it natively, else fp16; CPU in float32."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        dtype = _DTYPES[dtype.lower()]
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if native_bf16(device) else torch.float16
        else:
            dtype = torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
    return device, dtype


def _bundled_state_dict(name: str, convert=keep_as_is) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    from safetensors.torch import save_file

    gguf_path = assets.asset_path(BUNDLED[name])
    cached = assets.cache_dir() / (gguf_path.stem + ".f32.safetensors")
    if cached.is_file():
        from safetensors import safe_open

        with safe_open(cached, framework="pt") as f:
            meta = f.metadata() or {}
        if "model_args" in meta:
            return ModelArgs(**json.loads(meta["model_args"])), {n: convert(n, t) for n, t in read_safetensors(cached)}
    args, sd = read_gguf(gguf_path)
    partial = cached.with_suffix(".part")
    fields = {k: v for k, v in vars(args).items()}
    save_file(sd, partial, metadata={"model_args": json.dumps(fields)})
    partial.rename(cached)
    return args, {n: convert(n, sd.pop(n)) for n in list(sd)}


def _bundled_tokenizer(name: str):
    """The bundled model's tokenizer, cached as JSON: re-reading 98k strings from the GGUF takes seconds."""
    gguf_path = assets.asset_path(BUNDLED[name])
    cached = assets.cache_dir() / (gguf_path.stem + ".tokenizer.json")
    if cached.is_file():
        return ByteLevelBPETokenizer.from_json(cached.read_text(), cached)
    tokenizer = load_tokenizer(gguf_path)
    partial = cached.with_suffix(".part")
    partial.write_text(tokenizer.to_json())
    partial.rename(cached)
    return tokenizer


def _hub_snapshot(repo_id: str) -> Path:
    """Download a hub model: its config.json first, checked, and only then the weights."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:
        raise ValueError(f"{repo_id!r} looks like a Hugging Face id, but huggingface_hub is not installed") from e
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as e:
        raise ValueError(
            f"could not download config.json of {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the id, your network, and for gated models (meta-llama/*) that you accepted the licence "
            "and logged in (huggingface_hub.login())."
        ) from e
    try:  # a model this package cannot run is refused before gigabytes of weights are fetched
        ModelArgs.from_hf_config(json.loads(config_path.read_text()))
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{repo_id}: {e}") from e
    try:
        return Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    except Exception as e:
        raise ValueError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Check the id, "
            "your network, and for gated models (meta-llama/*) that you accepted the licence and logged in "
            "(huggingface_hub.login())."
        ) from e


def read_checkpoint(source: str | Path, device: torch.device = torch.device("cpu"), dtype: torch.dtype | None = None,
                    convert=keep_as_is):
    """Find what ``source`` names and read it: returns (args, state_dict, tokenizer).

    GGUF files are dequantized tensor by tensor straight into ``dtype`` (when given) and onto ``device``, so a
    7B GGUF never sits in host memory as float32. ``convert(name, tensor)`` is applied to each tensor as it is
    read (GGUF, Hugging Face, the bundled model; a Meta checkpoint is memory-mapped, and ``build_model``
    converts it); its result, a tensor or a quantized linear, is what the state dict holds.
    """
    if isinstance(source, str) and source.lower() in BUNDLED:
        args, sd = _bundled_state_dict(source.lower(), convert)
        return args, sd, _bundled_tokenizer(source.lower())
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf; give a .gguf file or a checkpoint directory")
        args, sd = read_gguf(path, dtype=dtype, device=device, convert=convert)
        return args, sd, load_tokenizer(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            args, sd = read_hf_dir(path, device=device, dtype=dtype, convert=convert)
            names = [n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()]
            if not names:
                raise CheckpointError(f"{path} has config.json but no tokenizer.model or tokenizer.json")
            return args, sd, load_tokenizer(path / names[0])
        if (path / "params.json").is_file():
            tok_path = find_meta_tokenizer(path)
            if tok_path is None:
                raise CheckpointError(f"{path}: no tokenizer.model beside params.json or in its parent directory")
            tokenizer = load_tokenizer(tok_path)
            args, sd = read_meta_dir(path, vocab_size=tokenizer.vocab_size)
            return args, sd, tokenizer
        raise CheckpointError(
            f"{path} is a directory but holds neither config.json (Hugging Face) nor params.json (Meta)")
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists():
        return read_checkpoint(_hub_snapshot(text), device, dtype, convert)
    raise ValueError(
        f"unknown model {text!r}: not a bundled model ({', '.join(BUNDLED)}), not an existing .gguf file or "
        "checkpoint directory, and not a Hugging Face id of the form 'org/name'"
    )


def build_model(args: ModelArgs, sd: dict, device, dtype, convert=keep_as_is) -> Transformer:
    """Create the model without allocating weights (meta device), then adopt the loaded tensors, and the
    quantized linears that ``convert`` made of some of them, as modules."""
    with torch.device("meta"):
        model = Transformer(args)
    modules = {}
    for name in list(sd):  # one tensor at a time: peak memory stays near one copy
        value = sd.pop(name)
        if isinstance(value, torch.Tensor):
            value = convert(name, value.to(device=device, dtype=dtype))
        if isinstance(value, nn.Module):
            modules[name.removesuffix(".weight")] = value
        else:
            sd[name] = value
    if args.tie_word_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    model.load_state_dict(sd, strict=not modules, assign=True)
    for path, module in modules.items():
        parent, attr = path.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, module)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight  # assign=True replaced the shared parameter
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"no data for {left[:5]}")
    return model.eval().requires_grad_(False)


QUANTIZE = (None, "int8", "int4", "native")


def _gguf_path(source) -> Path | None:
    """The GGUF file that ``source`` names (the bundled model's included), or None."""
    if isinstance(source, str) and source.lower() in BUNDLED:
        return assets.asset_path(BUNDLED[source.lower()])
    path = Path(source).expanduser()
    return path if path.is_file() and path.suffix == ".gguf" else None


def build_native(path: Path, device, dtype, max_seq_len: int | None = None) -> Transformer:
    """A model from a GGUF's own blocks: every Q4_1 matrix of the layers goes straight into an ``Int4Linear``
    (the same 4-bit numbers, scales and minimums; no float matrix in between); the norms are read as floats; a
    tied Q8_0 embedding (the bundled file's) is decoded block by block (``Int8Linear.from_q8_0``) into the fp16
    head and embedding (``quant.quantize_head``: rounding enters there, to 11 significant bits); any other
    embedding or head is dequantized and stored the same way. Tensor by tensor: one float matrix at most."""
    from gguf import GGMLQuantizationType, dequantize

    from .quant import LAYER_LINEARS, Float16Linear, Int4Linear, Int8Linear, quantize_head
    from .weights import check_state_dict, gguf_param_name, open_gguf

    reader, args = open_gguf(path)
    if max_seq_len is not None:
        args = args.replace(max_seq_len=min(max_seq_len, args.max_seq_len))
    linears = {f"{part}.{name}.weight" for part, name in LAYER_LINEARS}
    with torch.device("meta"):
        model = Transformer(args)
    floats, shapes, head = {}, {}, None
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = gguf_param_name(t.name, path)
        rows, cols = ([int(n) for n in reversed(t.shape)] + [1])[:2]
        shapes[name] = torch.Size([rows, cols] if len(t.shape) == 2 else [rows])
        if name == "tok_embeddings.weight" and args.tie_word_embeddings and \
                t.tensor_type == GGMLQuantizationType.Q8_0:  # the tied head, decoded from its Q8_0 blocks
            head = Float16Linear(Int8Linear.from_q8_0(t.data, rows, cols).dequantize().to(device))
        elif name.startswith("layers.") and name.split(".", 2)[2] in linears:
            if t.tensor_type != GGMLQuantizationType.Q4_1:
                raise CheckpointError(
                    f"{path}: quantize='native' keeps Q4_1 matrices as they are, but {t.name} is "
                    f"{t.tensor_type.name}; load it with quantize='int4' (or 'int8') to re-quantize from its "
                    "dequantized weights instead")
            module_path, _ = name.rsplit(".", 1)
            parent_path, attr = module_path.rsplit(".", 1)
            setattr(model.get_submodule(parent_path), attr,
                    Int4Linear.from_q4_1(t.data, rows, cols).to(device).prepare())
        else:
            array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shapes[name])
            floats[name] = torch.from_numpy(array.copy()).to(device=device, dtype=dtype)
    check_state_dict(args, {k: torch.empty(s, device="meta") for k, s in shapes.items()}, str(path))
    tie_floats = args.tie_word_embeddings and head is None  # with ``head``, the (meta) pair is replaced below
    if tie_floats:
        floats["output.weight"] = floats["tok_embeddings.weight"]
    model.load_state_dict(floats, strict=False, assign=True)  # the linears are modules already
    if tie_floats:
        model.output.weight = model.tok_embeddings.weight
    quantize_head(model, "fp16", head_linear=head, dtype=dtype)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: no data for {left[:5]}")
    return model.eval().requires_grad_(False)


def load(source: str | Path = "smollm2-135m", *, device=None, dtype=None, max_seq_len: int | None = None,
         quantize: str | None = None):
    """Load a model and its tokenizer.

    ``source``: "smollm2-135m" (bundled), a ``.gguf`` file, a Hugging Face model directory, a Meta
    checkpoint directory (params.json + consolidated.*.pth), or a Hugging Face id when online.
    ``max_seq_len`` shortens the context (and the RoPE table) below the checkpoint's.
    ``quantize`` (chapter 12): None (float weights in ``dtype``); "int8" or "int4" (see ``quant``: each layer
    matrix quantized from its weights in ``dtype`` as soon as it is read, so the float model is never whole in
    memory; the LM head and a tied embedding in float16); "native" (a GGUF only: its own Q4_1 blocks, see
    ``build_native``). ``dtype`` stays the compute dtype of activations, norms and the KV cache.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize={quantize!r}; use None, 'int8', 'int4' or 'native'")
    device, dtype = resolve_device_dtype(device, dtype)
    if quantize == "native":
        path = _gguf_path(source)
        if path is None:
            raise ValueError(
                f"quantize='native' keeps a GGUF file's own 4-bit blocks, but {source!r} is not a .gguf file or "
                "the bundled model; use quantize='int4' or 'int8' to quantize a float checkpoint")
        bundled = isinstance(source, str) and source.lower() in BUNDLED
        tokenizer = _bundled_tokenizer(source.lower()) if bundled else load_tokenizer(path)
        return build_native(path, device, dtype, max_seq_len), tokenizer
    convert = keep_as_is
    if quantize is not None:  # each layer matrix is quantized as soon as it is read: no float model in between
        from .quant import quantizing

        convert = quantizing(quantize)
    args, sd, tokenizer = read_checkpoint(source, device=device, dtype=dtype, convert=convert)
    if max_seq_len is not None:
        args = args.replace(max_seq_len=min(max_seq_len, args.max_seq_len))
    if tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {args.vocab_size}")
    model = build_model(args, sd, device, dtype, convert)
    if quantize is not None:
        from .quant import quantize_head

        quantize_head(model, "fp16")  # the LM head (and a tied embedding) in float16
        meta_dir = (Path(str(source)).expanduser() / "params.json").is_file()
        for p in model.parameters() if meta_dir else ():  # the norms left get their own storage: views into a
            p.data = p.data.clone()  # memory-mapped Meta shard would keep every page read from it resident
    return model, tokenizer
