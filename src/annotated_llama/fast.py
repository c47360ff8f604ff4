"""A decode path for GPUs, built on the readable model (which stays the reference).

``FastLlama(model)`` runs the same weights as ``model`` with the changes that make batch-1 decoding fast on a
GPU (chapter 11):

- a **static KV cache**: every layer's keys and values live in one preallocated
  ``[max_batch_size, n_kv_heads, max_seq_len, head_dim]`` tensor in the model's dtype, written in place. Shapes
  and addresses never change from one step to the next, which is what CUDA graphs need. Without a fixed
  ``max_seq_len`` the cache only grows, through a few lengths (``cache_lengths``), so a shorter request after
  a longer one reuses it;
- the one-token step takes its **position as a device tensor**: the rotary angles are gathered with it and the
  mask row is computed from it (``arange(L) <= pos``), so no Python int that changes per step enters the step;
  the step attends over the whole allocated length with ``F.scaled_dot_product_attention`` and that mask, with
  the query heads of a grouped-query group folded into the query-sequence dimension (no ``enable_gqa``), so
  that a fused CUDA kernel accepts the call (see ``FastLlama._decode``);
- **fused projections**: wq/wk/wv concatenated into one ``wqkv`` and w1/w3 into one ``w13`` once, at
  construction (one matrix-vector product instead of three, or two). On by default on CUDA, where it saves
  kernel launches, and for chapter 12's quantized linears (``Int8Linear`` / ``Int4Linear``, stacked by their
  ``concat``), whose per-call work outside the kernel made fewer calls measurably faster on a 2-core CPU; off
  for float weights on a CPU, where it measured no faster;
- **no host-device syncs** in the decode loop: sampling on the device, new tokens written into a device buffer
  that is copied to the host once at the end; positions are checked on the host before the loop;
- an optional **torch.compile** of the one-token step (``mode="reduce-overhead"`` on CUDA: CUDA graphs; the
  default mode on CPU); the prompt (prefill) runs separately, eager unless ``compile_prefill`` asks for a
  dynamic-shape compile.

RMSNorm and RoPE run in float32 as in ``model.py``; the residual stream and the cache stay in the model dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .model import Transformer
from .quant import Int4Linear, Int8Linear

QUANTIZED = (Int8Linear, Int4Linear)  # chapter 12's linears, which FastLlama calls as modules

CACHE_MIN = 256  # with max_seq_len=None: the smallest cache
MAX_CACHE_LENGTHS = 6  # ... and at most this many cache lengths, so compiled graphs stay below dynamo's limit (8)


def cache_lengths(context: int) -> list[int]:
    """The cache lengths used when none is fixed, ascending: 256, then growing by a factor of 2 (or 4, 8... for
    contexts too long to reach in ``MAX_CACHE_LENGTHS`` doublings), then the context itself. 8192: 256 ... 8192
    (6 lengths); 131,072: 256, 1024, 4096, 16384, 65536, 131072."""
    doublings = math.log2(max(context, CACHE_MIN) / CACHE_MIN)
    ratio = 2 ** max(1, math.ceil(doublings / (MAX_CACHE_LENGTHS - 1)))
    lengths, n = [], CACHE_MIN
    while n < context:
        lengths.append(n)
        n *= ratio
    return lengths + [context]


def cache_bucket(needed: int, context: int) -> int:
    """The cache length for ``needed`` positions (at most ``context``) when none is fixed: the shortest of
    ``cache_lengths(context)`` that holds them. Few lengths, so few compiled steps: at most ``MAX_CACHE_LENGTHS``
    per batch size, and at most twice the positions needed for contexts up to 8192."""
    if not 0 < needed <= context:
        raise ValueError(f"{needed} positions needed but the model's context is {context}")
    return next(length for length in cache_lengths(context) if length >= needed)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as in ``model.RMSNorm``: mean of squares in float32, back to x's dtype, times the gain."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's interleaved RoPE with real arithmetic (no complex tensors, which compilers handle poorly).

    ``x``: [batch, seq, heads, head_dim]; ``cos``/``sin``: float32 [seq, head_dim/2]. Pair (x[2j], x[2j+1])
    turns by angle θ: (x0·cos − x1·sin, x0·sin + x1·cos), the complex product of ``apply_rotary_emb``.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # [b, s, h, hd/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3).type_as(x)


def sample_on_device(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[batch, vocab] logits -> [batch] ids without a host sync.

    Greedy when temperature is 0. Otherwise temperature and top-p as in ``generate.sample_next``, but the draw
    is argmax(p / E) with E ~ Exponential(1) per entry (the "exponential race": entry i wins with probability
    p_i), which needs no ``torch.multinomial`` and so no sync. A seed gives reproducible draws, but not the same
    draws as ``al.generate``.
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


class FastLlama(nn.Module):
    """The readable ``Transformer``'s weights, run with a static KV cache, fused projections and (optionally)
    a compiled one-token step.

    ``max_seq_len``: the static cache length (every decode step attends over all of it, so keep it near what
    you need). None: the cache is allocated at the first request and only grows (``cache_bucket``: the
    shortest of at most six lengths from 256 to the model's context that holds the request); it is never
    shrunk, so a short request after a long one reuses the long one's cache (and attends over its length).
    ``fuse`` (default: on CUDA, and for quantized linears; see the module docstring): stack wq/wk/wv and w1/w3
    (and, with ``alias_model_weights``, re-point the model's own wq/wk/wv/w1/w3 at row slices of the fused
    tensors, so the weights are in memory once; values are unchanged). ``compile``: torch.compile the one-token
    step (``compile_backend``: "inductor", or another torch.compile backend, e.g. a counting one in the tests).
    Everything else shares the model's tensors.

    Recompilation: the compiled step is specialised on shapes (``dynamic=False``), not on the instance, so
    FastLlama objects of one model shape share their compiled graphs, and a new graph is compiled once per
    distinct (cache length, batch): with a fixed ``max_seq_len`` one per batch size; without, at most
    ``MAX_CACHE_LENGTHS`` (6) per batch size. torch.compile raises beyond ``torch._dynamo.config.recompile_limit``
    (8) graphs of one code object under ``fullgraph=True``, a limit shared by every model shape compiled in
    the process (``torch._dynamo.reset()`` clears it).
    """

    def __init__(self, model: Transformer, max_batch_size: int = 1, max_seq_len: int | None = None,
                 compile: bool = False, fuse: bool | None = None, alias_model_weights: bool = True,
                 compile_prefill: bool = False, compile_backend="inductor"):
        super().__init__()
        a = model.args
        quantized = any(isinstance(m, QUANTIZED) for m in model.layers.modules())
        if fuse is None:  # float on a 2-core CPU: no gain (within 2%); on a GPU it saves launches
            fuse = model.device.type == "cuda" or quantized
        self.args, self.fuse = a, fuse
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.n_rep = a.n_heads // a.n_kv_heads  # query heads per key/value head
        self.eps = a.norm_eps
        self.device, self.dtype = model.device, model.dtype
        if max_seq_len is not None and not 0 < max_seq_len <= a.max_seq_len:
            raise ValueError(f"max_seq_len must be in 1..{a.max_seq_len} (the model's context), got {max_seq_len}")
        self.fixed_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        # Prefill with grouped-query attention: CUDA's flash kernel takes enable_gqa, but needs compute capability
        # 8.0 or more; on older GPUs (a T4 is 7.5) the fused kernel left is the memory-efficient one, which in some
        # torch versions refuses enable_gqa, so there the prompt's keys/values are repeated per query head instead
        # (a transient [batch, n_heads, seq, head_dim] copy of the prompt's K/V, not of the cache).
        self.gqa_in_kernel = self.device.type != "cuda" or torch.cuda.get_device_capability(self.device) >= (8, 0)

        def share(t: torch.Tensor) -> torch.Tensor:
            return t.detach()  # the same storage, outside autograd

        def weight_or_module(m: nn.Module):
            """A float linear's weight (called with F.linear), or a quantized linear itself (chapter 12's
            ``Int8Linear`` / ``Int4Linear``: called as a module, never concatenated)."""
            return share(m.weight) if isinstance(m, (nn.Linear, nn.Embedding)) else m

        self.tok_embeddings = weight_or_module(model.tok_embeddings)  # [vocab, dim], or a quant.TiedEmbedding
        self.norm_weight = share(model.norm.weight)
        self.output = weight_or_module(model.output)  # [vocab, dim]; the embedding itself when tied
        self.layers = []
        for block in model.layers:
            attn, ff = block.attention, block.feed_forward
            w: dict = {
                "attention_norm": share(block.attention_norm.weight), "ffn_norm": share(block.ffn_norm.weight),
                "wo": weight_or_module(attn.wo), "w2": weight_or_module(ff.w2),
            }
            for fused, parent, names in (("wqkv", attn, ("wq", "wk", "wv")), ("w13", ff, ("w1", "w3"))):
                kinds = {type(getattr(parent, n)) for n in names}
                if fuse and len(kinds) == 1 and kinds <= {nn.Linear, *QUANTIZED}:
                    w[fused] = self._fuse(parent, names, alias_model_weights)
                else:  # mixed kinds (or fusion off): one call each
                    w.update({n: weight_or_module(getattr(parent, n)) for n in names})
            self.layers.append(w)

        # Rotary angles from the model's own table, as real cos/sin (float32 [context, head_dim/2]).
        freqs = model.freqs_cis(self.device)
        self.rope_cos, self.rope_sin = freqs.real.contiguous(), freqs.imag.contiguous()
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.key_pos = torch.empty(0, dtype=torch.long, device=self.device)  # [L]: 0, 1, ..., L - 1
        self.cache_len_alloc = 0
        if max_seq_len is not None:
            self.setup_cache(max_batch_size, max_seq_len)

        self.compiled = compile
        self._step = self._decode
        self._prefill_fn = self._forward
        if compile:
            # CUDA graphs ("reduce-overhead") are an inductor mode; other backends take no mode.
            cuda_graphs = self.device.type == "cuda" and compile_backend == "inductor"
            self._step = torch.compile(self._decode, backend=compile_backend, fullgraph=True, dynamic=False,
                                       mode="reduce-overhead" if cuda_graphs else None)
        if compile_prefill:
            self._prefill_fn = torch.compile(self._forward, backend=compile_backend, dynamic=True)

    @staticmethod
    def _fuse(module: nn.Module, names: tuple[str, ...], alias: bool):
        """The linears ``module.<names>`` stacked along the output rows: a float weight [sum of rows, dim], or a
        quantized linear made by its class's ``concat``.

        With ``alias``, the modules' own tensors become row slices (views) of the result's, which is remembered
        on the module, so a second FastLlama on the same model reuses it instead of concatenating again. (A
        quantized part's kernel copy is dropped then; it is rebuilt if the readable model calls that part.)"""
        parts = [getattr(module, n) for n in names]
        quantized = isinstance(parts[0], QUANTIZED)
        tensors = [dict(p.named_buffers()) if quantized else {"weight": p.weight} for p in parts]
        key = "_fused_" + "".join(names)
        fused = getattr(module, key, None)
        fused_tensors = None
        if fused is not None:  # still the storage of every part, at the right rows?
            fused_tensors = dict(fused.named_buffers()) if quantized else {"weight": fused}
            starts = [0]
            for t in tensors:
                starts.append(starts[-1] + next(iter(t.values())).shape[0])
            if fused_tensors.keys() == tensors[0].keys() and all(
                    t[n].data_ptr() == fused_tensors[n][s].data_ptr() and t[n].dtype == fused_tensors[n].dtype
                    for t, s in zip(tensors, starts) for n in t):
                return fused
        fused = type(parts[0]).concat(parts).prepare() if quantized else torch.cat(
            [t["weight"] for t in tensors]).detach()
        if alias:
            fused_tensors = dict(fused.named_buffers()) if quantized else {"weight": fused}
            start = 0
            for part, t in zip(parts, tensors):
                rows = next(iter(t.values())).shape[0]
                for n in t:
                    view = fused_tensors[n][start:start + rows]
                    if quantized:
                        part._buffers[n] = view
                    else:
                        part.weight = nn.Parameter(view, requires_grad=False)
                if quantized:
                    part.drop_kernel()  # the fused module's kernel copy serves
                start += rows
            object.__setattr__(module, key, fused)  # remembered, not registered: no new state_dict keys
        return fused

    # --- the static cache -------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_seq_len: int) -> None:
        """Allocate the static caches ([batch, n_kv_heads, max_seq_len, head_dim] per layer, model dtype) and the
        key positions 0..max_seq_len - 1 that the decode step compares with its position."""
        self.k_cache, self.v_cache = [], []  # free the old caches before allocating: one set in memory at a time
        shape = (batch, self.n_kv_heads, max_seq_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.key_pos = torch.arange(max_seq_len, device=self.device)
        if self.device.type == "cuda":
            # Fixed addresses: CUDA graphs read the caches in place instead of copying them in at every replay.
            # Unguarded: a new cache (a new instance, a grown cache) re-records the graph, it does not recompile.
            for t in self.k_cache + self.v_cache + [self.key_pos]:
                torch._dynamo.mark_static_address(t, guard=False)
        self.max_batch_size, self.cache_len_alloc = batch, max_seq_len

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)

    def _ensure_cache(self, batch: int, needed: int) -> None:
        """Make sure ``batch`` sequences of ``needed`` positions fit; raise a ValueError (on the host, before any
        device work) if they cannot."""
        if needed > self.args.max_seq_len:
            raise ValueError(f"{needed} positions needed but the model's context is {self.args.max_seq_len}")
        if self.fixed_seq_len is not None:
            if needed > self.fixed_seq_len:
                raise ValueError(f"{needed} positions needed but the static cache holds {self.fixed_seq_len} "
                                 "(max_seq_len); make a FastLlama with a larger max_seq_len")
            if batch > self.max_batch_size:
                raise ValueError(f"batch {batch} > max_batch_size {self.max_batch_size}")
            if not self.k_cache:
                self.setup_cache(self.max_batch_size, self.fixed_seq_len)
            return
        if self.k_cache and needed <= self.cache_len_alloc and batch <= self.max_batch_size:
            return  # it fits: a shorter request reuses the cache (no reallocation, no new compiled graph)
        length = max(cache_bucket(needed, self.args.max_seq_len), self.cache_len_alloc)  # grow only
        self.setup_cache(max(batch, self.max_batch_size), length)

    # --- the layers ---------------------------------------------------------------------------------------
    @staticmethod
    def _linear(x: torch.Tensor, weight) -> torch.Tensor:
        """x @ weightᵀ for a float weight; a quantized linear module is called."""
        return F.linear(x, weight) if isinstance(weight, torch.Tensor) else weight(x)

    def _qkv(self, w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "wqkv" in w:
            q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return self._linear(x, w["wqkv"]).split([q_size, kv_size, kv_size], dim=-1)
        return self._linear(x, w["wq"]), self._linear(x, w["wk"]), self._linear(x, w["wv"])

    def _ffn(self, w: dict, x: torch.Tensor) -> torch.Tensor:
        if "w13" in w:
            gate, up = self._linear(x, w["w13"]).chunk(2, dim=-1)
        else:
            gate, up = self._linear(x, w["w1"]), self._linear(x, w["w3"])
        return self._linear(F.silu(gate) * up, w["w2"])

    def _block(self, i: int, x: torch.Tensor, cos, sin, write, attend) -> torch.Tensor:
        """One transformer block; ``write(i, k, v)`` stores keys/values, ``attend(i, q, k, v)`` attends."""
        w = self.layers[i]
        batch, seq, _ = x.shape
        q, k, v = self._qkv(w, rms_norm(x, w["attention_norm"], self.eps))
        q = rope(q.view(batch, seq, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = rope(k.view(batch, seq, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [b, heads, seq, hd]
        write(i, k, v)
        out = attend(i, q, k, v)  # [b, n_heads, seq, hd]
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        h = x + self._linear(out, w["wo"])
        return h + self._ffn(w, rms_norm(h, w["ffn_norm"], self.eps))

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.tok_embeddings
        return F.embedding(tokens, e) if isinstance(e, torch.Tensor) else e(tokens)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self._linear(rms_norm(h, self.norm_weight, self.eps), self.output).float()

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prefill from position 0: tokens [batch, seq] -> float32 logits of the last position [batch, vocab].

        The prompt attends to itself only (nothing older is in the cache), with ``is_causal=True`` and no mask:
        the call the flash kernel takes, with grouped-query attention (``enable_gqa``) on GPUs that have it."""
        batch, seq = tokens.shape
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        repeat_kv = self.n_rep > 1 and not self.gqa_in_kernel

        def write(i, k, v):
            self.k_cache[i][:batch, :, :seq] = k
            self.v_cache[i][:batch, :, :seq] = v

        def attend(i, q, k, v):
            if repeat_kv:  # [b, n_kv_heads, seq, hd] -> [b, n_heads, seq, hd]
                k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  enable_gqa=self.n_rep > 1 and not repeat_kv)

        h = self._embed(tokens)  # [batch, seq, dim]
        for i in range(len(self.layers)):
            h = self._block(i, h, cos, sin, write, attend)
        return self._logits(h[:, -1:])[:, 0]

    def _decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per sequence at position ``pos`` (a 1-element long tensor on the device): token [batch]
        -> float32 logits [batch, vocab]. Every shape here is fixed: attention runs over the whole cache.

        The attention call is shaped so that a fused CUDA kernel takes it, every step, with fixed shapes:
        - Not sliced to the valid length pos + 1: a length read from a device tensor would make the shapes
          data-dependent (no CUDA graph; a recompile per length). The whole cache, L slots, is attended over,
          with a mask row ``arange(L) <= pos`` hiding the empty and stale slots.
        - A mask rules out the flash kernel, which takes none; the memory-efficient kernel (and cuDNN's) take
          a mask, but not together with ``enable_gqa`` in the torch versions we support: with both, SDPA falls
          back to the math kernel, which repeats K/V for every query head and writes the scores out in float32.
        - So no ``enable_gqa``: the n_rep query heads that share a key/value head are folded into the query
          sequence dimension, q [b, n_heads, 1, hd] -> [b, n_kv_heads, n_rep, hd]. They all sit at the same
          position, so one mask row, broadcast as [1, 1, 1, L], serves them all. K/V are read once per KV head.
        """
        batch = token.shape[0]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [1, hd/2], gathered by a tensor index
        mask = (self.key_pos <= pos)[None, None, None]  # [1, 1, 1, L]: keys 0..pos visible

        def caches(i):  # [batch, n_kv_heads, L, head_dim]
            kc, vc = self.k_cache[i], self.v_cache[i]
            return (kc, vc) if batch == kc.shape[0] else (kc[:batch], vc[:batch])

        def write(i, k, v):  # in place (an index_put_ that the compiler keeps in place), at slot ``pos``
            kc, vc = caches(i)
            kc[:, :, pos] = k
            vc[:, :, pos] = v

        def attend(i, q, k, v):
            kc, vc = caches(i)
            q = q.reshape(batch, self.n_kv_heads, self.n_rep, self.head_dim)  # a group's heads as n_rep queries
            out = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)  # [b, n_kv_heads, n_rep, hd]
            return out.reshape(batch, self.n_heads, 1, self.head_dim)

        h = self._embed(token[:, None])  # [batch, 1, dim]
        for i in range(len(self.layers)):
            h = self._block(i, h, cos, sin, write, attend)
        return self._logits(h)[:, 0]

    # --- the public API -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, reserve: int = 1) -> torch.Tensor:
        """Run the prompt ([batch, seq] ids, or [seq]) from position 0, filling the cache; returns float32
        logits of its last position [batch, vocab]. ``reserve``: positions after the prompt that decode steps
        will use; the cache must hold seq + reserve (checked here, on the host)."""
        tokens = torch.as_tensor(tokens, device=self.device).long()
        if tokens.dim() == 1:
            tokens = tokens[None]
        batch, seq = tokens.shape
        self._ensure_cache(batch, seq + reserve)
        return self._prefill_fn(tokens)

    @torch.inference_mode()
    def decode_step(self, token: torch.Tensor, pos) -> torch.Tensor:
        """One new token per sequence (token: [batch] or [batch, 1] ids) at position ``pos`` -> float32 logits
        [batch, vocab].

        ``pos``: an int (checked against the cache), or better a 1-element long tensor on the device, which costs
        no host transfer and is not checked: reading it would be a sync, and a position past the cache would end
        in a device-side assert that poisons the CUDA context. ``generate`` checks its positions on the host
        before its loop; a caller passing tensors must do the same."""
        if not self.k_cache:
            raise ValueError("no cache yet: call prefill first")
        token = torch.as_tensor(token, device=self.device).long().reshape(-1)
        if not isinstance(pos, torch.Tensor):
            if not 0 <= pos < self.cache_len_alloc:
                raise ValueError(f"pos {pos} is outside the static cache (0..{self.cache_len_alloc - 1})")
            pos = torch.tensor([pos], device=self.device)
        pos = pos.reshape(1).to(self.device, torch.long)
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten now
        return self._step(token, pos)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop_ids=None) -> list:
        """Generate ``max_new_tokens`` ids after ``prompt_ids`` (list[int], or [batch, seq] ids).

        The loop never waits for the device: positions are a device tensor, sampling happens on the device, new
        ids go into a device buffer, copied to the host once at the end. The positions the loop will use are
        known before it starts, so they are checked then, on the host. ``stop_ids``: the result is cut before
        the first of them (the loop itself runs on, since checking would need a sync). ``seed``: None draws a
        fresh seed for this call's own generator, leaving torch's global random state alone. Returns list[int]
        for one prompt, list[list[int]] for a batch.
        """
        prompt = torch.as_tensor(prompt_ids, device=self.device).long()
        single = prompt.dim() == 1
        prompt = prompt[None] if single else prompt  # [batch, seq]
        batch, seq = prompt.shape
        if max_new_tokens <= 0:
            return [] if single else [[] for _ in range(batch)]
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()  # a non-deterministic seed for this generator only (torch.seed() would re-seed
                # the global CPU and CUDA generators as a side effect)
            else:
                generator.manual_seed(seed)
        # Decode steps run at positions seq .. seq + max_new_tokens - 2 (the last sampled token is not fed back):
        # prefill checks that they fit, before anything runs on the device.
        logits = self.prefill(prompt, reserve=max_new_tokens - 1)
        out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=self.device)  # the device buffer
        pos = torch.tensor([seq], dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            next_id = sample_on_device(logits, temperature, top_p, generator)  # [batch]
            out[:, step] = next_id
            if step + 1 == max_new_tokens:
                break
            logits = self.decode_step(next_id, pos)  # sampled before the next step can overwrite it
            pos += 1
        rows = out.tolist()  # the one device -> host copy
        if stop_ids:
            rows = [next((r[:j] for j, t in enumerate(r) if t in stop_ids), r) for r in rows]
        return rows[0] if single else rows
