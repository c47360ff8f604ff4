"""A decode path for GPUs, built on the readable model (which stays the reference).

``FastLlama(model)`` runs the same weights as ``model`` with the changes that make batch-1 decoding fast on a
GPU (chapter 11):

- a **static KV cache**: every layer's keys and values live in one preallocated
  ``[max_batch_size, n_kv_heads, max_seq_len, head_dim]`` tensor in the model's dtype, written in place. Shapes
  never change from one step to the next, which is what CUDA graphs need;
- the one-token step takes its **position as a device tensor**: the rotary angles and the row of a precomputed
  causal mask are gathered with it, so no Python int that changes per step enters the step, and the step
  attends over the whole preallocated length with ``F.scaled_dot_product_attention`` and that boolean mask row;
- **fused projections**: wq/wk/wv concatenated into one ``wqkv`` and w1/w3 into one ``w13`` once, at
  construction (one matrix-vector product instead of three, or two; on by default on CUDA only, since on a
  2-core CPU it measured no faster);
- **no host-device syncs** in the decode loop: sampling on the device, new tokens written into a device buffer
  that is copied to the host once at the end;
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

CACHE_ROUNDING = 256  # with max_seq_len=None, cache lengths are rounded up to a multiple of this


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
    you need). None: sized per request, prompt + new tokens rounded up to a multiple of 256, at most the
    model's context. ``fuse`` (default: on CUDA only, where it saves kernel launches; on a CPU it measured no
    faster): concatenate wq/wk/wv and w1/w3 (and, with ``alias_model_weights``, re-point the
    model's own wq/wk/wv/w1/w3 at row slices of the fused tensors, so the weights are in memory once; values
    are unchanged). ``compile``: torch.compile the one-token step. Everything else shares the model's tensors.
    """

    def __init__(self, model: Transformer, max_batch_size: int = 1, max_seq_len: int | None = None,
                 compile: bool = False, fuse: bool | None = None, alias_model_weights: bool = True,
                 compile_prefill: bool = False):
        super().__init__()
        a = model.args
        if fuse is None:  # measured on a 2-core CPU: no gain there (within 2%); on a GPU it saves launches
            fuse = model.device.type == "cuda"
        self.args, self.fuse = a, fuse
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.eps = a.norm_eps
        self.device, self.dtype = model.device, model.dtype
        if max_seq_len is not None and not 0 < max_seq_len <= a.max_seq_len:
            raise ValueError(f"max_seq_len must be in 1..{a.max_seq_len} (the model's context), got {max_seq_len}")
        self.fixed_seq_len = max_seq_len
        self.max_batch_size = max_batch_size

        def share(t: torch.Tensor) -> torch.Tensor:
            return t.detach()  # the same storage, outside autograd

        self.tok_embeddings = share(model.tok_embeddings.weight)  # [vocab, dim]
        self.norm_weight = share(model.norm.weight)
        self.output = share(model.output.weight)  # [vocab, dim]; the embedding itself when tied
        self.layers = []
        for block in model.layers:
            attn, ff = block.attention, block.feed_forward
            w: dict[str, torch.Tensor] = {
                "attention_norm": share(block.attention_norm.weight), "ffn_norm": share(block.ffn_norm.weight),
                "wo": share(attn.wo.weight), "w2": share(ff.w2.weight),
            }
            if fuse:
                w["wqkv"] = self._fuse(attn, ("wq", "wk", "wv"), alias_model_weights)
                w["w13"] = self._fuse(ff, ("w1", "w3"), alias_model_weights)
            else:
                w.update({n: share(getattr(attn, n).weight) for n in ("wq", "wk", "wv")})
                w.update({n: share(getattr(ff, n).weight) for n in ("w1", "w3")})
            self.layers.append(w)

        # Rotary angles from the model's own table, as real cos/sin (float32 [context, head_dim/2]).
        freqs = model.freqs_cis(self.device)
        self.rope_cos, self.rope_sin = freqs.real.contiguous(), freqs.imag.contiguous()
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.causal = torch.empty(0, 0, dtype=torch.bool, device=self.device)
        self.cache_len_alloc = 0
        if max_seq_len is not None:
            self.setup_cache(max_batch_size, max_seq_len)

        self.compiled = compile
        self._step = self._decode
        self._prefill_fn = self._forward
        if compile:
            on_cuda = self.device.type == "cuda"
            self._step = torch.compile(self._decode, mode="reduce-overhead" if on_cuda else None, fullgraph=True,
                                       dynamic=False)
        if compile_prefill:
            self._prefill_fn = torch.compile(self._forward, dynamic=True)

    @staticmethod
    def _fuse(module: nn.Module, names: tuple[str, ...], alias: bool) -> torch.Tensor:
        """The weights of ``module.<names>`` concatenated along the output rows: [sum of rows, dim].

        With ``alias``, the module's own weights become row slices (views) of the result, which is remembered
        on the module, so a second FastLlama on the same model reuses it instead of concatenating again."""
        weights = [getattr(module, n).weight for n in names]
        key = "_fused_" + "".join(names)
        fused = getattr(module, key, None)
        if fused is not None:  # still the storage of every weight, at the right rows?
            starts = [0, *torch.tensor([w.shape[0] for w in weights]).cumsum(0).tolist()]
            if fused.shape[0] == starts[-1] and all(
                    w.data_ptr() == fused[s].data_ptr() and w.dtype == fused.dtype for w, s in zip(weights, starts)):
                return fused
        fused = torch.cat(weights).detach()
        if alias:
            start = 0
            for name, w in zip(names, weights):
                rows = w.shape[0]
                getattr(module, name).weight = nn.Parameter(fused[start:start + rows], requires_grad=False)
                start += rows
            setattr(module, key, fused)
        return fused

    # --- the static cache -------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_seq_len: int) -> None:
        """Allocate the static caches ([batch, n_kv_heads, max_seq_len, head_dim] per layer, model dtype) and
        the causal mask (bool [max_seq_len, max_seq_len]: row p lets position p see keys 0..p)."""
        shape = (batch, self.n_kv_heads, max_seq_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        if self.device.type == "cuda":  # fixed addresses: CUDA graphs may treat the caches as static inputs
            for t in self.k_cache + self.v_cache:
                torch._dynamo.mark_static_address(t)
        self.causal = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=self.device).tril_()
        self.max_batch_size, self.cache_len_alloc = batch, max_seq_len

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)

    def _ensure_cache(self, batch: int, needed: int) -> None:
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
        length = min(self.args.max_seq_len, math.ceil(needed / CACHE_ROUNDING) * CACHE_ROUNDING)
        if not self.k_cache or length != self.cache_len_alloc or batch > self.max_batch_size:
            self.setup_cache(max(batch, self.max_batch_size), length)

    # --- the layers ---------------------------------------------------------------------------------------
    def _qkv(self, w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fuse:
            q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return F.linear(x, w["wqkv"]).split([q_size, kv_size, kv_size], dim=-1)
        return F.linear(x, w["wq"]), F.linear(x, w["wk"]), F.linear(x, w["wv"])

    def _ffn(self, w: dict, x: torch.Tensor) -> torch.Tensor:
        if self.fuse:
            gate, up = F.linear(x, w["w13"]).chunk(2, dim=-1)
        else:
            gate, up = F.linear(x, w["w1"]), F.linear(x, w["w3"])
        return F.linear(F.silu(gate) * up, w["w2"])

    def _block(self, i: int, x: torch.Tensor, cos, sin, write, attend) -> torch.Tensor:
        """One transformer block; ``write(i, k, v)`` stores keys/values, ``attend(i, q, k, v)`` attends."""
        w = self.layers[i]
        batch, seq, _ = x.shape
        q, k, v = self._qkv(w, rms_norm(x, w["attention_norm"], self.eps))
        q = rope(q.view(batch, seq, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = rope(k.view(batch, seq, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [b, heads, seq, hd]
        write(i, k, v)
        out = attend(i, q, k, v).transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        h = x + F.linear(out, w["wo"])
        return h + self._ffn(w, rms_norm(h, w["ffn_norm"], self.eps))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(h, self.norm_weight, self.eps), self.output).float()

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prefill from position 0: tokens [batch, seq] -> float32 logits of the last position [batch, vocab]."""
        batch, seq = tokens.shape
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        gqa = self.n_kv_heads != self.n_heads

        def write(i, k, v):
            self.k_cache[i][:batch, :, :seq] = k
            self.v_cache[i][:batch, :, :seq] = v

        def attend(i, q, k, v):  # the prompt attends to itself: causal, nothing older in the cache
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

        h = F.embedding(tokens, self.tok_embeddings)  # [batch, seq, dim]
        for i in range(len(self.layers)):
            h = self._block(i, h, cos, sin, write, attend)
        return self._logits(h[:, -1:])[:, 0]

    def _decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per sequence at position ``pos`` (a 1-element long tensor on the device): token [batch]
        -> float32 logits [batch, vocab]. Every shape here is fixed: attention runs over the whole cache."""
        batch = token.shape[0]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [1, hd/2], gathered by a tensor index
        mask = self.causal[pos][None, None]  # [1, 1, 1, max_seq]: keys 0..pos visible
        gqa = self.n_kv_heads != self.n_heads

        def caches(i):  # [batch, n_kv_heads, max_seq, head_dim]
            kc, vc = self.k_cache[i], self.v_cache[i]
            return (kc, vc) if batch == kc.shape[0] else (kc[:batch], vc[:batch])

        def write(i, k, v):  # in place (an index_put_ that the compiler keeps in place), at slot ``pos``
            kc, vc = caches(i)
            kc[:, :, pos] = k
            vc[:, :, pos] = v

        def attend(i, q, k, v):
            kc, vc = caches(i)
            return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=gqa)

        h = F.embedding(token[:, None], self.tok_embeddings)  # [batch, 1, dim]
        for i in range(len(self.layers)):
            h = self._block(i, h, cos, sin, write, attend)
        return self._logits(h)[:, 0]

    # --- the public API -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, reserve: int = 1) -> torch.Tensor:
        """Run the prompt ([batch, seq] ids, or [seq]) from position 0, filling the cache; returns float32
        logits of its last position [batch, vocab]. ``reserve``: positions to keep free for decoding when the
        cache is sized per request."""
        tokens = torch.as_tensor(tokens, device=self.device).long()
        if tokens.dim() == 1:
            tokens = tokens[None]
        batch, seq = tokens.shape
        self._ensure_cache(batch, seq + reserve)
        return self._prefill_fn(tokens)

    @torch.inference_mode()
    def decode_step(self, token: torch.Tensor, pos) -> torch.Tensor:
        """One new token per sequence (token: [batch] or [batch, 1] ids) at position ``pos`` (an int, or better
        a 1-element long tensor on the device, which costs no host transfer) -> float32 logits [batch, vocab]."""
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
        ids go into a device buffer, copied to the host once at the end. ``stop_ids``: the result is cut before
        the first of them (the loop itself runs on, since checking would need a sync). Returns list[int] for
        one prompt, list[list[int]] for a batch.
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
            generator.manual_seed(seed if seed is not None else torch.seed())
        logits = self.prefill(prompt, reserve=max_new_tokens)
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
