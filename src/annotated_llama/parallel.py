"""Tensor parallelism on ``torch.distributed``: one model split across N processes, as Meta runs Llama-2-70B.

Each of the N ranks (one per GPU, or one per group of CPU cores with gloo) holds a slice of every matrix:

* column-parallel ``wq``/``wk``/``wv`` (its own attention heads) and ``w1``/``w3`` (its own FFN hidden units):
  the rank computes its heads and hidden units alone, no communication;
* row-parallel ``wo`` and ``w2``: each rank's product is a partial sum over its heads / hidden units, so one
  all-reduce after each makes the full residual update: **two all-reduces per layer**;
* the token embedding split along the model dimension and the LM head along the vocabulary, as Meta's
  ``consolidated.NN.pth`` shards split them, each followed by an all-gather;
* norms replicated; the residual stream is the same on every rank.

GQA rule (which key/value heads a rank keeps): rank r holds query heads [⌊r·H/N⌋, ⌊(r+1)·H/N⌋) (an uneven
split when N does not divide H: the bundled model's 9 heads go 4 + 5 on 2 ranks) and exactly the KV heads those
query heads read. When N divides n_kv that divides the KV heads among the ranks, without copies. With fewer KV
heads than ranks (N a multiple of n_kv, dividing H) each rank keeps one KV head, replicated on N/n_kv ranks.
When a rank's query heads do not read its KV heads in equal groups (6 query heads over 3 KV heads on 2 ranks:
rank 0's heads 0, 1, 2 read KV heads 0, 0, 1) it keeps one KV copy per local query head, and its attention
is plain multi-head: correct, at the price of a larger KV cache on that rank.

Loading reads only each rank's slice: a Meta directory with N shards loads ``consolidated.{r}.pth`` on rank r,
no merge; other shard counts are memory-mapped and sliced; Hugging Face safetensors are read with
``get_slice`` (whole heads, then un-permuted per head); GGUF tensors are dequantized one at a time and sliced.

    torchrun --nproc-per-node 2 -m annotated_llama generate "The capital of France is" --tp 2

Inference only: the collectives are not differentiable here.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelArgs
from .model import Transformer
from .weights import CheckpointError, hf_name_to_meta, unpermute_hf

DEFAULT_TIMEOUT_S = 120.0


class TensorParallelError(RuntimeError):
    """Tensor-parallel set-up or a collective failed (on this rank or, as reported to it, on another)."""


# --- The process group ---------------------------------------------------------------------------------
def init(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, device: str | None = None):
    """Join the process group that ``torchrun`` (or ``run_local``) described in the environment.

    Returns ``(rank, world_size, device)``. Backend: NCCL when the ranks run on GPUs, gloo on CPU.
    ``timeout_s`` bounds every collective: a rank whose partner died raises instead of waiting forever.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise TensorParallelError(
                f"no process group to join: {', '.join(missing)} not set. Launch with "
                "`torchrun --nproc-per-node N ...`, or from Python with annotated_llama.parallel.run_local")
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    return dist.get_rank(), dist.get_world_size(), device


@dataclass
class CommStats:
    """What the collectives cost on this rank: calls, payload bytes, and wall seconds spent inside them.

    The seconds include waiting for the slowest rank to arrive: on a loaded machine that skew is part of
    what tensor parallelism costs.
    """

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    # On a GPU a collective returns before its data has moved; timing it exactly needs a synchronize after
    # every call, which stalls the launch queue. Off by default: then `seconds` counts launch time only.
    sync_to_time: bool = False

    def reset(self) -> None:
        self.calls, self.bytes, self.seconds = 0, 0, 0.0


def _collective(kind: str, x: torch.Tensor, stats: CommStats, where: str) -> torch.Tensor:
    """All-reduce (sum) or all-gather along the last dimension, timed, with errors that say where."""
    start = time.perf_counter()
    try:
        if kind == "all_reduce":
            dist.all_reduce(x)  # in place: every rank ends with the sum of all ranks' partial products
            out = x
        else:
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            out = torch.cat(parts, dim=-1)
    except Exception as e:  # gloo/NCCL errors: a peer closed its connection, or the timeout passed
        raise TensorParallelError(
            f"rank {dist.get_rank()}: {kind} after {where} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); another rank has probably failed or stopped: "
            "look for its error") from e
    if stats.sync_to_time and x.device.type == "cuda":
        torch.cuda.synchronize(x.device)  # NCCL returns before the data moved; time the transfer itself
    stats.calls += 1
    stats.bytes += x.numel() * x.element_size()
    stats.seconds += time.perf_counter() - start
    return out


# --- The plan: which rows and columns each rank holds --------------------------------------------------
@dataclass(frozen=True)
class Slices:
    """One rank's share of the model: heads, KV heads, FFN units, embedding columns, vocabulary rows."""

    rank: int
    tp: int
    head_dim: int
    q_heads: tuple[int, int]  # [first, end) query heads
    kv_heads: tuple[int, ...]  # the KV heads kept, in the order local attention uses them
    ffn: tuple[int, int]
    dim: tuple[int, int]
    vocab: tuple[int, int]

    @property
    def n_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def n_kv_heads(self) -> int:
        return len(self.kv_heads)

    def ranges(self, name: str) -> tuple[int, list[tuple[int, int]]] | None:
        """For a Meta tensor name: (dimension, [start, end) ranges along it) to keep; None if replicated."""
        hd, kind = self.head_dim, name.split(".")[-2]
        q = (self.q_heads[0] * hd, self.q_heads[1] * hd)
        table = {
            "wq": (0, [q]), "wo": (1, [q]),
            "wk": (0, [(k * hd, (k + 1) * hd) for k in self.kv_heads]),
            "wv": (0, [(k * hd, (k + 1) * hd) for k in self.kv_heads]),
            "w1": (0, [self.ffn]), "w3": (0, [self.ffn]), "w2": (1, [self.ffn]),
            "tok_embeddings": (1, [self.dim]), "output": (0, [self.vocab]),
        }
        return table.get(kind)


def plan(args: ModelArgs, rank: int, tp: int) -> Slices:
    """Split ``args``'s model over ``tp`` ranks: evenly where the sizes allow it (as Meta's shards are split),
    else heads and FFN units differ by at most one between ranks. Raises ValueError if it cannot be split."""
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tensor-parallel size must be a positive integer, got {tp!r}")
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} is not in 0..{tp - 1}")
    if tp > args.n_heads:
        raise ValueError(f"tensor-parallel size {tp} is more than n_heads = {args.n_heads} query heads: every "
                         "rank needs at least one head")
    # Heads and FFN units may split unevenly (the bundled model's 9 heads: 4 and 5 on 2 ranks), since the
    # all-reduce adds whole [.., dim] partial sums; the embedding and LM head are all-gathered, which needs
    # equal pieces.
    sizes = {"dim (the embedding is split along it)": args.dim,
             "vocab_size (the LM head is split along it)": args.vocab_size}
    bad = [f"{what} = {n}" for what, n in sizes.items() if n % tp]
    if bad:
        raise ValueError(f"tensor-parallel size {tp} must divide {'; '.join(bad)}: each rank takes an equal "
                         "share of embedding columns and vocabulary rows")

    def share(n):
        return (rank * n // tp, (rank + 1) * n // tp)

    q0, q1 = share(args.n_heads)
    needed = [h // args.n_rep for h in range(q0, q1)]  # the KV head each local query head reads
    unique = sorted(set(needed))
    per = (q1 - q0) // len(unique)
    uniform = (q1 - q0) % len(unique) == 0 and all(needed[i] == unique[i // per] for i in range(q1 - q0))
    kv = tuple(unique if uniform else needed)  # not uniform: one KV copy per query head (local MHA)
    return Slices(rank, tp, args.head_dim, (q0, q1), kv, share(args.ffn_dim), share(args.dim),
                  share(args.vocab_size))


def local_shapes(args: ModelArgs, s: Slices) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor rank ``s.rank`` holds (the LM head always present: tied models get a copy)."""
    hd, d = args.head_dim, args.dim
    ffn, dl, vl = s.ffn[1] - s.ffn[0], s.dim[1] - s.dim[0], s.vocab[1] - s.vocab[0]
    shapes = {"tok_embeddings.weight": (args.vocab_size, dl), "norm.weight": (d,), "output.weight": (vl, d)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (s.n_heads * hd, d), p + "attention.wk.weight": (s.n_kv_heads * hd, d),
            p + "attention.wv.weight": (s.n_kv_heads * hd, d), p + "attention.wo.weight": (d, s.n_heads * hd),
            p + "feed_forward.w1.weight": (ffn, d), p + "feed_forward.w2.weight": (d, ffn),
            p + "feed_forward.w3.weight": (ffn, d), p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,),
        })
    return shapes


def _cut(parts: list, split_dim: int | None, dim: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """Rows (dim 0) or columns (dim 1) ``ranges`` of the tensor that ``parts`` concatenate along ``split_dim``.

    ``parts`` may be tensors (memory-mapped shards, a dequantized GGUF tensor) or safetensors slices: only the
    pieces asked for are read, and the result is a fresh tensor that owns its memory.
    """

    def take(t, lo, hi):
        return t[lo:hi] if dim == 0 else t[:, lo:hi]

    if len(parts) == 1 or split_dim is None:
        pieces = [take(parts[0], lo, hi) for lo, hi in ranges]
    elif split_dim == dim:  # the ranges fall into one shard or straddle neighbours
        pieces, start = [], 0
        bounds = []
        for p in parts:
            n = p.get_shape()[dim] if hasattr(p, "get_shape") else p.shape[dim]
            bounds.append((start, start + n))
            start += n
        for lo, hi in ranges:
            for p, (a, b) in zip(parts, bounds):
                if a < hi and lo < b:
                    pieces.append(take(p, max(lo, a) - a, min(hi, b) - a))
    else:  # cut every shard the same way, then put the shards back together along their own dimension
        cut = [torch.cat([take(p, lo, hi) for lo, hi in ranges], dim) for p in parts]
        return torch.cat(cut, split_dim)
    return torch.cat(pieces, dim)  # a copy, even of a single piece: never a view that pins a whole tensor


# --- Reading one rank's slice --------------------------------------------------------------------------
def _meta_shard_dim(name: str) -> int | None:
    from .weights import _SHARD_DIM

    return _SHARD_DIM.get(name.split(".")[-2])


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:  # weights_only: a checkpoint is data; mmap: bytes are read from disk only when sliced or used
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be loaded as plain tensors (weights_only=True): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def read_meta_rank(path: str | Path, rank: int, tp: int, vocab_size: int | None = None):
    """One rank's slice of a Meta directory: shard r itself when there are ``tp`` shards, else cut on load.

    Returns ``(args, state_dict, how)``; ``how`` says which of the two happened (the chapter prints it).
    """
    path = Path(path)
    params_path = path / "params.json"
    try:
        args = ModelArgs.from_meta_params(json.loads(params_path.read_text()), vocab_size=vocab_size)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{params_path}: {e}") from e
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path} has params.json but no consolidated.*.pth weights")
    s = plan(args, rank, tp)
    if len(shards) == tp and args.n_kv_heads % tp == 0:
        sd = _load_pth(shards[rank])
        if "output.weight" in sd:  # untied (every Meta release): shard r is exactly rank r's slice
            sd.pop("rope.freqs", None)
            _check_shards(args, s, sd, f"{shards[rank]} (shard {rank} of {len(shards)}, loaded on rank {rank})")
            return args, sd, f"shard {rank} of {len(shards)}, as saved (no merge, no slicing)"
    loaded = [_load_pth(p) for p in shards]
    sd = {}
    for name in loaded[0]:
        if name.endswith("rope.freqs"):
            continue
        missing = [p.name for p, shard in zip(shards, loaded) if name not in shard]
        if missing:
            raise CheckpointError(f"{path}: tensor {name} is in {shards[0].name} but not in {missing}")
        r = s.ranges(name)
        sd[name] = loaded[0][name] if r is None else _cut([x[name] for x in loaded], _meta_shard_dim(name), *r)
    if "output.weight" not in sd and "tok_embeddings.weight" in loaded[0]:
        args = args.replace(tie_word_embeddings=True)
        sd["output.weight"] = _cut([x["tok_embeddings.weight"] for x in loaded], 1, 0, [s.vocab])
    _check_shards(args, s, sd, f"{path} ({len(shards)} shards, sliced for rank {rank} of {tp})")
    return args, sd, f"{len(shards)} shard(s) memory-mapped, rank {rank}'s slice cut from them"


def _check_shards(args: ModelArgs, s: Slices, sd: dict, source: str) -> None:
    want = local_shapes(args, s)
    bad = [f"{k}: {list(sd[k].shape)}, expected {list(v)}" for k, v in want.items()
           if k in sd and tuple(sd[k].shape) != v]
    missing = [k for k in want if k not in sd]
    if bad or missing:
        raise CheckpointError(
            f"{source} does not hold rank {s.rank}'s slice for tensor-parallel size {s.tp} "
            f"(shard count or split does not match params.json?):\n  " + "\n  ".join((bad + missing)[:8]))


def read_hf_rank(path: str | Path, rank: int, tp: int, device="cpu"):
    """One rank's slice of a Hugging Face directory, read with safetensors' ``get_slice`` (no full tensor).

    q/k rows are in rotate-half order within each head; whole heads are sliced, then each is un-permuted.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        args = ModelArgs.from_hf_config(json.loads((path / "config.json").read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{path / 'config.json'} is not a valid LLaMA config.json ({e})") from e
    index = path / "model.safetensors.index.json"
    files = (sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
             if index.is_file() else sorted(path.glob("*.safetensors")))
    if not files:
        raise CheckpointError(f"{path} has config.json but no *.safetensors weights")
    s = plan(args, rank, tp)
    sd = {}
    for file in files:
        with safe_open(file, framework="pt", device=str(device)) as f:
            for name in f.keys():
                meta = hf_name_to_meta(name)
                if meta is None or (meta == "output.weight" and args.tie_word_embeddings):
                    continue
                r = s.ranges(meta)
                t = f.get_tensor(name) if r is None else _cut([f.get_slice(name)], None, *r)
                if meta.endswith(("wq.weight", "wk.weight")):
                    t = unpermute_hf(t, t.shape[0] // args.head_dim)  # per head: a slice of whole heads
                sd[meta] = t
                if meta == "tok_embeddings.weight" and args.tie_word_embeddings:
                    sd["output.weight"] = _cut([f.get_slice(name)], None, 0, [s.vocab])
    _check_shards(args, s, sd, f"{path} (rank {rank} of {tp})")
    return args, sd, "safetensors slices (get_slice), q/k un-permuted per head"


def read_safetensors_meta_rank(file: str | Path, args: ModelArgs, rank: int, tp: int):
    """One rank's slice of a safetensors file already in Meta's names and layout (the bundled model's cache)."""
    from safetensors import safe_open

    s = plan(args, rank, tp)
    sd = {}
    with safe_open(file, framework="pt") as f:
        for name in f.keys():
            r = s.ranges(name)
            sd[name] = f.get_tensor(name) if r is None else _cut([f.get_slice(name)], None, *r)
            if name == "tok_embeddings.weight" and args.tie_word_embeddings:
                sd["output.weight"] = _cut([f.get_slice(name)], None, 0, [s.vocab])
    _check_shards(args, s, sd, f"{file} (rank {rank} of {tp})")
    return args, sd, "safetensors slices (get_slice)"


def read_gguf_rank(path: str | Path, rank: int, tp: int):
    """One rank's slice of a GGUF: each tensor dequantized to float32 on its own, sliced, then dropped."""
    from .weights import gguf_tensors, open_gguf

    path = Path(path)
    reader, args = open_gguf(path)
    s = plan(args, rank, tp)
    sd = {}
    for name, full in gguf_tensors(reader, path):
        r = s.ranges(name)
        sd[name] = full.clone() if r is None else _cut([full], None, *r)
        if name == "tok_embeddings.weight" and args.tie_word_embeddings:
            sd["output.weight"] = _cut([full], None, 0, [s.vocab])
    _check_shards(args, s, sd, f"{path} (rank {rank} of {tp})")
    return args, sd, "GGUF tensors dequantized one at a time, then sliced"


def read_rank(source, rank: int, tp: int, device="cpu"):
    """Find what ``source`` names (as ``annotated_llama.load`` does) and read rank ``rank``'s slice.

    Returns ``(args, state_dict, tokenizer, how)``.
    """
    from . import assets, loading
    from .tokenizer import load_tokenizer
    from .weights import find_meta_tokenizer

    if isinstance(source, str) and source.lower() in loading.BUNDLED:
        name = source.lower()
        tokenizer = loading._bundled_tokenizer(name)
        gguf_path = assets.asset_path(loading.BUNDLED[name])
        cached = assets.cache_dir() / (gguf_path.stem + ".f32.safetensors")
        if cached.is_file():
            from safetensors import safe_open

            with safe_open(cached, framework="pt") as f:
                meta = f.metadata() or {}
            if "model_args" in meta:
                args = ModelArgs(**json.loads(meta["model_args"]))
                return (*read_safetensors_meta_rank(cached, args, rank, tp)[:2], tokenizer,
                        "the float32 cache, " + "safetensors slices (get_slice)")
        return (*read_gguf_rank(gguf_path, rank, tp)[:2], tokenizer, "GGUF, dequantized and sliced")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        args, sd, how = read_gguf_rank(path, rank, tp)
        return args, sd, load_tokenizer(path), how
    if path.is_dir() and (path / "config.json").is_file():
        names = [n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()]
        if not names:
            raise CheckpointError(f"{path} has config.json but no tokenizer.model or tokenizer.json")
        args, sd, how = read_hf_rank(path, rank, tp, device)
        return args, sd, load_tokenizer(path / names[0]), how
    if path.is_dir() and (path / "params.json").is_file():
        tok_path = find_meta_tokenizer(path)
        if tok_path is None:
            raise CheckpointError(f"{path}: no tokenizer.model beside params.json or in its parent directory")
        tokenizer = load_tokenizer(tok_path)
        args, sd, how = read_meta_rank(path, rank, tp, vocab_size=tokenizer.vocab_size)
        return args, sd, tokenizer, how
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists():
        return read_rank(loading._hub_snapshot(text), rank, tp, device)
    raise ValueError(f"unknown model {text!r}: give a bundled name ({', '.join(loading.BUNDLED)}), a .gguf "
                     "file, a Hugging Face or Meta checkpoint directory, or a Hugging Face id")


# --- The parallel layers -------------------------------------------------------------------------------
class RowParallelLinear(nn.Linear):
    """y = Σ_ranks x_r · W_rᵀ: this rank's input slice times its columns of W, summed by one all-reduce."""

    def __init__(self, in_local: int, out_features: int, stats: CommStats, where: str):
        super().__init__(in_local, out_features, bias=False)
        self.stats, self.where = stats, where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = super().forward(x)  # [batch, seq, dim], this rank's share of the sum
        return _collective("all_reduce", partial, self.stats, self.where)


class GatheredLinear(nn.Linear):
    """The LM head split by vocabulary rows: local logits [.., vocab/N], all-gathered to [.., vocab]."""

    def __init__(self, in_features: int, out_local: int, stats: CommStats):
        super().__init__(in_features, out_local, bias=False)
        self.stats = stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _collective("all_gather", super().forward(x), self.stats, "the LM head")


class ParallelEmbedding(nn.Embedding):
    """The embedding split along the model dimension (Meta's split): [.., dim/N] per rank, gathered to dim."""

    def __init__(self, vocab_size: int, dim_local: int, stats: CommStats):
        super().__init__(vocab_size, dim_local)
        self.stats = stats

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = F.embedding(tokens, self.weight)  # [batch, seq, dim/N]
        return _collective("all_gather", local, self.stats, "the token embedding")  # [batch, seq, dim]


class TensorParallelTransformer(Transformer):
    """``model.Transformer`` with its matrices replaced by this rank's slices; the forward pass is unchanged.

    ``Attention.forward`` runs as written, on the rank's ``n_heads`` query and ``n_kv_heads`` KV heads; the
    row-parallel ``wo`` and ``w2`` end in the all-reduces. ``self.comm`` counts what the collectives cost.
    """

    def __init__(self, args: ModelArgs, slices: Slices):
        with torch.device("meta"):  # shapes only: the real tensors come from the rank's checkpoint slice
            super().__init__(args)
            self.slices, self.comm = slices, CommStats()
            s, hd, d = slices, args.head_dim, args.dim
            ffn = s.ffn[1] - s.ffn[0]
            self.tok_embeddings = ParallelEmbedding(args.vocab_size, s.dim[1] - s.dim[0], self.comm)
            for i, layer in enumerate(self.layers):
                att, ff = layer.attention, layer.feed_forward
                att.n_heads, att.n_kv_heads = s.n_heads, s.n_kv_heads  # what this rank's attention computes
                att.wq = nn.Linear(d, s.n_heads * hd, bias=False)
                att.wk = nn.Linear(d, s.n_kv_heads * hd, bias=False)
                att.wv = nn.Linear(d, s.n_kv_heads * hd, bias=False)
                att.wo = RowParallelLinear(s.n_heads * hd, d, self.comm, f"attention (wo) in layer {i}")
                ff.w1 = nn.Linear(d, ffn, bias=False)
                ff.w3 = nn.Linear(d, ffn, bias=False)
                ff.w2 = RowParallelLinear(ffn, d, self.comm, f"the feed-forward (w2) in layer {i}")
            self.output = GatheredLinear(d, s.vocab[1] - s.vocab[0], self.comm)

    def setup_cache(self, batch: int, capacity: int | None = None) -> None:
        """Each rank caches only its own KV heads: [batch, n_kv_heads on this rank, capacity, head_dim]."""
        a = self.args
        capacity = min(capacity or 256, a.max_seq_len)
        for layer in self.layers:
            layer.attention.cache = KVCache(batch, layer.attention.n_kv_heads, a.head_dim, capacity,
                                            a.max_seq_len, self.dtype, self.device)
        self.cache_len = 0


def _agree(error: str | None) -> None:
    """Every rank learns whether any rank failed, and raises the same error naming it (no rank waits)."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        raise TensorParallelError(f"rank {dist.get_rank()}: tensor-parallel loading failed on rank(s) "
                                  f"{', '.join(str(r) for r, _ in failed)}:\n"
                                  + "\n".join(f"  rank {r}: {e}" for r, e in failed))


def load(source="smollm2-135m", *, device=None, dtype=None, max_seq_len: int | None = None):
    """Load this rank's slice of ``source`` into a ``TensorParallelTransformer``; returns (model, tokenizer).

    Call it on every rank of an initialised process group (``init()``); the tensor-parallel size is the
    world size. A failure on any rank raises ``TensorParallelError`` on every rank.
    """
    from .loading import resolve_device_dtype

    if not dist.is_initialized():
        raise TensorParallelError("no process group: call annotated_llama.parallel.init() first (under torchrun "
                                  "or run_local)")
    rank, tp = dist.get_rank(), dist.get_world_size()
    model = tokenizer = error = None
    try:
        device, dtype = resolve_device_dtype(device, dtype)
        args, sd, tokenizer, how = read_rank(source, rank, tp, "cpu")
        if max_seq_len is not None:
            args = args.replace(max_seq_len=min(max_seq_len, args.max_seq_len))
        model = TensorParallelTransformer(args, plan(args, rank, tp))
        for name in list(sd):  # one tensor at a time: no second copy of the slice
            sd[name] = sd[name].to(device=device, dtype=dtype)
        model.load_state_dict(sd, strict=True, assign=True)
        model.eval().requires_grad_(False)
        model.how_loaded = how
    except Exception as e:  # reported to every rank by _agree, so no rank waits in a collective for it
        error = f"{type(e).__name__}: {e}"
    _agree(error)
    return model, tokenizer


# --- Launching N ranks from Python (a notebook, a test) ------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world_size, port, timeout_s, threads, device, queue, args, kwargs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    try:
        init("nccl" if device == "cuda" else "gloo", timeout_s, device=f"cuda:{rank}" if device == "cuda" else "cpu")
        result = (True, fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        msg = str(e) if isinstance(e, TensorParallelError) else f"{type(e).__name__}: {e}"
        result = (False, msg + "\n" + "".join(traceback.format_exception(e)[-3:]))
    buf = io.BytesIO()
    torch.save(result, buf)  # plain bytes through the queue: no shared-memory tensors to outlive the worker
    queue.put((rank, buf.getvalue()))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_local(fn, world_size: int = 2, *args, timeout_s: float = 60.0, threads: int | None = None,
              device: str = "cpu", **kwargs):
    """Run ``fn(*args, **kwargs)`` on ``world_size`` processes joined in a process group; return each rank's
    result, rank 0 first. ``fn`` must be importable (defined in a module, not a notebook cell).

    ``device="cpu"``: gloo, ``threads`` torch threads per rank (default: the cores shared out);
    ``device="cuda"``: NCCL, rank r on GPU r.

    ``timeout_s`` is the process group's timeout; the whole run is abandoned (processes killed) after
    2·``timeout_s`` + 60 s, start-up included. If any rank raises, ``TensorParallelError`` lists every rank's error.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(fn, r, world_size, port, timeout_s, threads, device, queue, args, kwargs))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, deadline = {}, time.monotonic() + 2 * timeout_s + 60  # start-up (imports) counted generously
    dead_since: dict[int, float] = {}  # a dead rank's result may still be in the queue: wait a little
    try:
        while len(results) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TensorParallelError(f"ranks {sorted(set(range(world_size)) - set(results))} gave no "
                                          f"result within {2 * timeout_s + 60:.0f} s")
            try:
                rank, data = queue.get(timeout=min(left, 1.0))
            except Exception:  # queue.Empty: a rank that died without reporting counts as failed
                for r, p in enumerate(procs):
                    if r not in results and not p.is_alive() and r not in dead_since:
                        dead_since[r] = time.monotonic()
                    elif r in dead_since and r not in results and time.monotonic() - dead_since[r] > 2.0:
                        results[r] = (False, f"exited (code {p.exitcode}) without reporting a result")
                continue
            results[rank] = torch.load(io.BytesIO(data), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    failed = {r: v for r, (ok, v) in results.items() if not ok}
    if failed:
        raise TensorParallelError("\n".join(f"rank {r}: {msg}" for r, msg in sorted(failed.items())))
    return [results[r][1] for r in range(world_size)]


# --- Workers for run_local: what the tests and the chapter run on every rank ---------------------------
def logits_and_greedy(source, prompt_ids: list[int], max_new_tokens: int = 8, device: str = "cpu"):
    """Load ``source`` tensor-parallel in float32; return (logits of the prompt [1, seq, vocab] on the CPU,
    greedy ids, how the rank's slice was read)."""
    model, _ = load(source, device=device, dtype=torch.float32)
    return (*_logits_and_greedy(model, prompt_ids, max_new_tokens), model.how_loaded)


def _logits_and_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    from .generate import generate_ids

    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids], device=model.device)).cpu()
        ids = list(generate_ids(model, prompt_ids, max_new_tokens))
    return logits, ids


def decode_timing(source="smollm2-135m", prompt: str = "The capital of France is", n_tokens: int = 16,
                  repeats: int = 3):
    """Load ``source`` tensor-parallel in float32 on the CPU and time greedy decoding (``time_decode``)."""
    model, tokenizer = load(source, device="cpu", dtype=torch.float32)
    return time_decode(model, tokenizer.encode(prompt), n_tokens, repeats)


def time_decode(model, prompt_ids: list[int], n_tokens: int = 16, repeats: int = 3) -> dict:
    """Per-token decode time of greedy generation after the prompt, and the share spent in collectives.

    Returns a dict: ``token_s`` (median seconds per decoded token over ``repeats`` runs), ``comm_share``
    (median fraction of decode time inside all-reduce/all-gather; 0 for a model without collectives),
    ``comm_calls``/``comm_bytes`` per token, ``weights_mib`` (the bytes of this rank's parameters) and
    ``peak_rss_mib`` (the process's peak resident memory: the slice, torch itself, and the checkpoint pages
    that memory-mapped reads touched).
    """
    import resource
    import statistics

    comm = getattr(model, "comm", CommStats())
    comm.sync_to_time = True  # measure the collectives themselves (on a GPU, at the price of a sync each)
    per_token, shares = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            model(torch.tensor([prompt_ids]))  # prefill, not timed
            token, pos = torch.tensor([[prompt_ids[-1]]]), len(prompt_ids)
            comm.reset()
            start = time.perf_counter()
            for _ in range(n_tokens):
                token = model(token, start_pos=pos)[:, -1].argmax(-1, keepdim=True)
                pos += 1
            elapsed = time.perf_counter() - start
            per_token.append(elapsed / n_tokens)
            shares.append(comm.seconds / elapsed)
    comm.sync_to_time = False
    params = {id(p): p for p in model.parameters()}  # a tied matrix counts once
    return {"token_s": statistics.median(per_token), "comm_share": statistics.median(shares),
            "comm_calls": comm.calls / n_tokens, "comm_bytes": comm.bytes / n_tokens,
            "weights_mib": sum(p.numel() * p.element_size() for p in params.values()) / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def check_and_time(source, prompt_ids: list[int], max_new_tokens: int = 8, n_tokens: int = 16,
                   repeats: int = 3) -> dict:
    """What the chapter runs on each rank: logits and greedy ids (as ``logits_and_greedy``), then timings."""
    model, _ = load(source, device="cpu", dtype=torch.float32)
    logits, ids = _logits_and_greedy(model, prompt_ids, max_new_tokens)
    return {"logits": logits, "ids": ids, "how": model.how_loaded, **time_decode(model, prompt_ids, n_tokens,
                                                                                 repeats)}
