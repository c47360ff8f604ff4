"""Reading checkpoints into Meta's parameter names and layout: GGUF, Hugging Face safetensors, Meta ``.pth``.

Every reader returns ``(ModelArgs, state_dict)`` with the names of ``model.Transformer`` and q/k rows in
Meta's interleaved RoPE layout. GGUF and Meta checkpoints already use that layout; Hugging Face checkpoints
permute q/k rows for the rotate-half form of RoPE, and ``unpermute_hf`` undoes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .config import ModelArgs


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its config."""


# --- The q/k permutation -------------------------------------------------------------------------------
def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved pairs (2j, 2j+1) -> Hugging Face's halves (j, j + head_dim/2), per head."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half row order -> Meta's interleaved order (the inverse of the above)."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


# --- Checking a state dict against its config ----------------------------------------------------------
def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    d, hd, ffn = args.dim, args.head_dim, args.ffn_dim
    shapes = {"tok_embeddings.weight": (args.vocab_size, d), "norm.weight": (d,)}
    if not args.tie_word_embeddings:
        shapes["output.weight"] = (args.vocab_size, d)
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (args.n_heads * hd, d),
            p + "attention.wk.weight": (args.n_kv_heads * hd, d),
            p + "attention.wv.weight": (args.n_kv_heads * hd, d),
            p + "attention.wo.weight": (d, args.n_heads * hd),
            p + "feed_forward.w1.weight": (ffn, d),
            p + "feed_forward.w2.weight": (d, ffn),
            p + "feed_forward.w3.weight": (ffn, d),
            p + "attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
        })
    return shapes


def _shape(value) -> tuple[int, ...]:
    """A tensor's shape, or a quantized linear's [out, in] (``load(quantize=...)`` converts as it reads)."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else (value.out_features, value.in_features)


def check_state_dict(args: ModelArgs, sd: dict, source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or wrongly shaped tensor."""
    want = expected_shapes(args)
    problems = [f"missing tensor {k} (expected shape {list(s)})" for k, s in want.items() if k not in sd]
    problems += [
        f"tensor {k} has shape {list(_shape(sd[k]))}, expected {list(s)}"
        for k, s in want.items() if k in sd and _shape(sd[k]) != s
    ]
    problems += [f"unexpected tensor {k} {list(_shape(sd[k]))}" for k in sd if k not in want]
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{source} does not match its config:\n  {shown}")


# --- GGUF ----------------------------------------------------------------------------------------------
_GGUF_NAMES = {
    "token_embd": "tok_embeddings", "output_norm": "norm", "output": "output",
    "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
    "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
}


def _gguf_reader(path: Path):
    from gguf import GGUFReader

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises assorted errors on truncated files
        raise CheckpointError(f"{path} is a truncated or corrupt GGUF file: {type(e).__name__}: {e}") from e


def gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def args_from_gguf(reader, path: Path) -> ModelArgs:
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path} holds a {arch!r} model; this package runs the 'llama' architecture")
    g = lambda k, d=None: gguf_field(reader, f"llama.{k}", d)  # noqa: E731
    n_heads = g("attention.head_count")
    names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return ModelArgs(
        dim=g("embedding_length"), n_layers=g("block_count"), n_heads=n_heads,
        n_kv_heads=g("attention.head_count_kv", n_heads), vocab_size=vocab,
        hidden_dim=g("feed_forward_length"), norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(g("rope.freq_base", 10000.0)), max_seq_len=g("context_length", 4096),
        head_dim=g("rope.dimension_count"), tie_word_embeddings="output.weight" not in names,
    )


def _llama3_rope_args(factors: np.ndarray, args: ModelArgs, reader, path: Path) -> ModelArgs:
    """The Llama 3.1 RoPE scaling that produced llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores the rule's result, one divisor per frequency (1 for fast pairs, the factor for slow ones);
    read the factor off it, take the other constants from the metadata or Meta's defaults, and check that the
    rule with those constants gives back every stored divisor.
    """
    from .model import rope_frequencies

    original = gguf_field(reader, "llama.rope.scaling.original_context_length", 8192)
    scaled = args.replace(use_scaled_rope=True, rope_scaling_factor=float(factors.max()),
                          rope_original_max_seq_len=int(original))
    plain = rope_frequencies(args.head_dim, args.rope_theta)
    expected = (plain / rope_frequencies(args.head_dim, args.rope_theta, scaled)).numpy()
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-4):
        raise CheckpointError(
            f"{path}: its rope_freqs tensor does not follow Llama 3.1's RoPE scaling rule (factor "
            f"{factors.max():g}, low/high frequency factors 1/4, original context {original}); this package "
            "implements that rule only")
    return scaled


def open_gguf(path: str | Path):
    """A llama GGUF's reader and its ``ModelArgs`` (RoPE scaling included, read off ``rope_freqs``)."""
    from gguf import dequantize

    path = Path(path)
    reader = _gguf_reader(path)
    args = args_from_gguf(reader, path)
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # Llama 3.1 RoPE scaling, stored as per-frequency divisors
            factors = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).ravel()
            args = _llama3_rope_args(factors, args, reader, path)
    return reader, args


def gguf_param_name(gguf_name: str, path: str | Path) -> str:
    """A llama GGUF tensor name -> our parameter name: ``blk.3.attn_q.weight`` -> ``layers.3.attention.wq.weight``."""
    m = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.weight", gguf_name)
    if not m or m.group(2) not in _GGUF_NAMES:
        raise CheckpointError(f"{path}: unknown tensor {gguf_name!r} for the llama architecture")
    name = _GGUF_NAMES[m.group(2)] + ".weight"
    return name if m.group(1) is None else f"layers.{m.group(1)}.{name}"


def gguf_tensors(reader, path: str | Path):
    """Yield (our parameter name, float32 tensor) for each weight of a llama GGUF, dequantized one at a time."""
    from gguf import GGMLQuantizationType, dequantize

    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # not a weight: ``open_gguf`` turned it into ModelArgs
            continue
        name = gguf_param_name(t.name, path)
        # GGUF lists dimensions fastest-first; the numpy view is already [rows, cols].
        array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = array.reshape([int(n) for n in reversed(t.shape)])
        if not array.flags.writeable:  # float32 tensors are read-only views of the file: copy (one tensor)
            array = array.copy()
        yield name, torch.from_numpy(array)


def keep_as_is(name: str, tensor: torch.Tensor):
    """The readers' default ``convert``: each tensor as read."""
    return tensor


def read_gguf(path: str | Path, dtype: torch.dtype | None = None,
              device: str | torch.device = "cpu", convert=keep_as_is) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Dequantize every tensor of a llama GGUF (q/k stay in Meta's layout, as GGUF stores them).

    One tensor at a time: dequantized to float32, then converted to ``dtype`` (default float32) on ``device``
    and passed through ``convert(name, tensor)`` (``load(quantize=...)`` quantizes there) before the next, so
    the float32 copy of the whole model never exists.
    """
    reader, args = open_gguf(path)
    sd = {name: convert(name, t.to(device=device, dtype=dtype or torch.float32))
          for name, t in gguf_tensors(reader, path)}
    check_state_dict(args, sd, str(path))
    return args, sd


# --- Hugging Face --------------------------------------------------------------------------------------
_HF_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def hf_name_to_meta(name: str) -> str | None:
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in _HF_LAYER_NAMES:
        return f"layers.{m.group(1)}.{_HF_LAYER_NAMES[m.group(2)]}.weight"
    if name.endswith("rotary_emb.inv_freq"):
        return None  # a buffer some old checkpoints saved; recomputed from rope_theta
    raise CheckpointError(f"unknown tensor {name!r} in a Hugging Face LLaMA checkpoint")


# safetensors dtype names -> torch dtypes (what a LLaMA checkpoint's tensors can be stored as)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(file: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                     keep=lambda name: True):
    """Yield ``(name, tensor)`` for each tensor of a ``.safetensors`` file whose name ``keep`` accepts, read
    with plain file reads into memory of its own, then moved to ``device`` and ``dtype`` (default: as stored).

    Why not safetensors' own loader: on a CPU it maps the file into memory, and every tensor stays a view of
    that one mapping; a tensor the model later replaces (a q/k/v matrix fused into one, a float matrix
    quantized) then stays resident as long as any other tensor of the file lives. Read this way, a
    replaced tensor is freed. The format: 8 bytes of little-endian header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the data (offsets counted from the end of the header).
    """
    file = Path(file)
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        for name, info in header.items():
            if name == "__metadata__" or not keep(name):
                continue
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{file}: tensor {name} is stored as {info['dtype']}, which this reader "
                                      f"does not know (known: {', '.join(_SAFETENSORS_DTYPES)})")
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            nbytes = tensor.numel() * tensor.element_size()
            if nbytes != end - begin:
                raise CheckpointError(f"{file}: tensor {name} has {end - begin} bytes, its shape needs {nbytes}")
            f.seek(8 + header_len + begin)
            if nbytes and f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != nbytes:
                raise CheckpointError(f"{file} ends inside tensor {name}: the file is truncated")
            yield name, tensor.to(device=device, dtype=dtype or tensor.dtype)


def _read_hf_file(file: Path, device, dtype, keep):
    """``read_safetensors``, with whatever else the file raises said as a CheckpointError (errors raised by the
    caller between two tensors are not caught here)."""
    try:
        yield from read_safetensors(file, device, dtype, keep=keep)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from e


def read_hf_dir(path: str | Path, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, convert=keep_as_is) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Hugging Face model directory: config.json and model.safetensors (or shards with an index).

    Tensors are read one at a time (``read_safetensors``), each moved to ``device``, converted to ``dtype``
    (default: as stored), put back in Meta's q/k layout and passed through ``convert(name, tensor)`` before the
    next, so a 7B model never sits in host memory whole, nor twice in two dtypes.
    """
    path = Path(path)
    config_path = path / "config.json"
    try:
        args = ModelArgs.from_hf_config(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{config_path} is not a valid LLaMA config.json ({type(e).__name__}: {e})") from e
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards named in {index.name} are missing: {missing}")
    if not files:
        hint = " (a PyTorch .bin checkpoint: convert it to safetensors first)" if list(path.glob("*.bin")) else ""
        raise CheckpointError(f"{path} has config.json but no *.safetensors weights{hint}")
    heads = {f"layers.{i}.attention.{key}.weight": n for i in range(args.n_layers)
             for key, n in (("wq", args.n_heads), ("wk", args.n_kv_heads))}
    def wanted(hf_name: str) -> bool:  # a tied checkpoint may store the shared matrix twice: read it once
        name = hf_name_to_meta(hf_name)
        return name is not None and not (name == "output.weight" and args.tie_word_embeddings)

    sd = {}
    for file in files:
        for hf_name, tensor in _read_hf_file(file, device, dtype, wanted):
            name = hf_name_to_meta(hf_name)
            if name in heads and tensor.shape[0] == heads[name] * args.head_dim:
                tensor = unpermute_hf(tensor, heads[name])
            sd[name] = convert(name, tensor)
    check_state_dict(args, sd, str(path))
    return args, sd


# --- Meta ----------------------------------------------------------------------------------------------
# Model-parallel shards: column-parallel weights split their output rows (dim 0), row-parallel ones their
# input columns (dim 1); the embedding is split along the model dimension; norms are replicated.
_SHARD_DIM = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}


def _shard_dim(name: str) -> int | None:
    return _SHARD_DIM.get(name.split(".")[-2])


def find_meta_tokenizer(path: Path) -> Path | None:
    for candidate in (path / "tokenizer.model", path.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def read_meta_dir(path: str | Path, vocab_size: int | None = None) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Meta checkpoint directory: params.json and consolidated.NN.pth (one or several shards).

    The shards are memory-mapped, so tensors are read from disk only when they are moved or merged.
    """
    path = Path(path)
    params_path = path / "params.json"
    try:
        params = json.loads(params_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{params_path} is not valid JSON: {e}") from e
    try:
        args = ModelArgs.from_meta_params(params, vocab_size=vocab_size)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{params_path}: {e}") from e
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path} has params.json but no consolidated.*.pth weights")
    loaded = []
    for shard in shards:
        try:
            # weights_only: a checkpoint is data; never let unpickling run code from it.
            loaded.append(torch.load(shard, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise CheckpointError(
                f"{shard} could not be loaded as plain tensors (weights_only=True): {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}. Only tensor checkpoints are accepted; a pickle "
                "that needs code to run is refused."
            ) from e
    sd = {}
    for name in loaded[0]:
        if name.endswith("rope.freqs"):
            continue  # Llama 1 saved the RoPE frequencies; they are recomputed from rope_theta
        parts = [s[name] for s in loaded]
        dim = _shard_dim(name)
        sd[name] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    if "output.weight" not in sd and "tok_embeddings.weight" in sd:
        args = args.replace(tie_word_embeddings=True)  # params.json cannot say it; the missing tensor does
    check_state_dict(args, sd, str(path))
    return args, sd
