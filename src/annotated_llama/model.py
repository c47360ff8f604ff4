"""The LLaMA forward pass, in the order the book teaches it.

RMSNorm -> RoPE -> attention (grouped-query, with a KV cache) -> SwiGLU feed-forward -> transformer block
-> the whole model. Parameter names follow Meta's ``llama/model.py`` so Meta checkpoints load as they are,
and RoPE uses Meta's complex-number form on Meta's interleaved q/k layout (``weights.py`` converts other
layouts into it). ``Transformer.forward`` always returns float32 logits, whatever the weights' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from .cache import KVCache
from .config import ModelArgs


# --- RMSNorm -------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g: LayerNorm without the mean subtraction and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Square and average in float32: in float16 any |x| above 256 squares past the largest float16
        # (65,504) to inf, and residual streams grow far beyond that (chapter 4).
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


# --- RoPE ----------------------------------------------------------------------------------------------
def rope_frequencies(head_dim: int, theta: float = 10000.0, args: ModelArgs | None = None) -> torch.Tensor:
    """θ_j = theta^(-2j/head_dim) radians per position for pair j < head_dim/2, float32 ``[head_dim // 2]``.

    With ``args.use_scaled_rope`` (Llama 3.1 and later), Meta's rule stretches the slow pairs for a longer
    context: a pair whose wavelength 2π/θ_j exceeds original/low_freq_factor turns ``factor`` times slower,
    one shorter than original/high_freq_factor keeps its speed, and the band between blends the two.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if args is None or not args.use_scaled_rope:
        return inv_freq
    factor, low, high = args.rope_scaling_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
    original = args.rope_original_max_seq_len
    wavelength = 2 * torch.pi / inv_freq
    # 0 at the long-wavelength end of the band, 1 at the short one
    smooth = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0,
                         args: ModelArgs | None = None) -> torch.Tensor:
    """e^{i·m·θ_j} for positions m < end and pair j < head_dim/2 (θ_j from ``rope_frequencies``).

    Returns complex64 ``[end, head_dim // 2]``.
    """
    inv_freq = rope_frequencies(head_dim, theta, args)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)  # [end, head_dim/2]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2j], x[2j+1]) of every head by its position's angle.

    ``x``: [batch, seq, heads, head_dim]; ``freqs_cis``: [seq, head_dim/2] complex.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [b, s, h, hd/2] complex
    rotated = pairs * freqs_cis[None, :, None, :]
    return torch.view_as_real(rotated).flatten(3).type_as(x)  # back to [b, s, h, hd]


# --- Attention -----------------------------------------------------------------------------------------
def causal_mask(seq: int, start_pos: int, device: torch.device) -> torch.Tensor:
    """Boolean [seq, start_pos + seq]: query i (at position start_pos + i) may see keys 0..start_pos + i."""
    query_pos = torch.arange(seq, device=device)[:, None] + start_pos
    key_pos = torch.arange(start_pos + seq, device=device)[None, :]
    return key_pos <= query_pos


class Attention(nn.Module):
    """Multi-head attention where ``n_kv_heads`` key/value heads are shared by ``n_heads`` query heads."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.max_seq_len = args.max_seq_len
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        # Heads first: [batch, heads, seq, head_dim], the layout attention kernels and the cache use.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)  # [batch, n_kv_heads, start_pos + seq, head_dim]
        # softmax(q·kᵀ/√head_dim + mask)·v; enable_gqa lets each group of n_rep query heads read one KV head.
        # Never a mask together with GQA: on CUDA the flash kernel takes GQA but no mask, the memory-efficient
        # kernel a mask but no GQA, so the pair would leave only the slow math kernel.
        gqa = self.n_kv_heads != self.n_heads
        if seq == 1:  # one new query may see every cached key: no mask at all
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif start_pos == 0:  # the square causal mask, built inside the kernel
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # a chunk after cached positions: causal, aligned to the bottom-right corner of the scores
            if gqa:  # rare (chunked prefill): expand K/V so that the kernel needs no GQA support
                n_rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(seq, k.shape[2]))
        # out: [batch, n_heads, seq, head_dim]
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        return self.wo(out)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    """The attention weights that ``scaled_dot_product_attention`` computes but does not return.

    ``q``: [batch, n_heads, seq, head_dim] and ``k``: [batch, n_kv_heads, start_pos + seq, head_dim], both
    after RoPE. Returns float32 [batch, n_heads, seq, start_pos + seq].
    """
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)  # query head h reads KV head h // n_rep
    scores = q.float() @ k.float().transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~causal_mask(q.shape[2], start_pos, q.device), float("-inf"))
    return scores.softmax(dim=-1)


# --- SwiGLU feed-forward -------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """w2(silu(w1·x) ⊙ w3·x): a gate (w1) and a value (w3) path, multiplied, projected back (w2)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# --- The block and the model ---------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """Pre-norm residual block: h = x + attention(norm(x)); out = h + feed_forward(norm(h))."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start_pos, freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token ids [batch, seq] -> float32 next-token logits [batch, seq, vocab_size]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # RoPE angles are fixed, not learned: kept outside the parameters and buffers, so that
        # ``model.to(torch.bfloat16)`` cannot round them (or drop the imaginary part of a complex buffer).
        self._freqs_cis: dict[torch.device, torch.Tensor] = {}
        self.cache_len = 0  # positions already written into the KV caches
        self.check_inputs = True  # token-range checks cost a host sync; the GPU fast path turns them off

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def freqs_cis(self, device: torch.device) -> torch.Tensor:
        if device not in self._freqs_cis:
            a = self.args
            self._freqs_cis[device] = precompute_freqs_cis(a.head_dim, a.max_seq_len, a.rope_theta, a).to(device)
        return self._freqs_cis[device]

    def setup_cache(self, batch: int, capacity: int | None = None) -> None:
        """(Re)allocate every layer's KV cache for ``batch`` sequences; ``capacity`` positions up front."""
        a = self.args
        capacity = min(capacity or 256, a.max_seq_len)
        for layer in self.layers:
            layer.attention.cache = KVCache(
                batch, a.n_kv_heads, a.head_dim, capacity, a.max_seq_len, self.dtype, self.device
            )
        self.cache_len = 0

    def reset_cache(self) -> None:
        """Drop the KV caches (frees their memory); the next call must start at position 0."""
        for layer in self.layers:
            layer.attention.cache = None
        self.cache_len = 0

    def _cache_reusable(self, batch: int) -> bool:
        cache = self.layers[0].attention.cache
        if cache is None or cache.batch != batch:
            return False
        # A cache made under torch.inference_mode() cannot be written outside it.
        return torch.is_inference_mode_enabled() or not cache.k.is_inference()

    def _validate(self, tokens: torch.Tensor, start_pos: int) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens must be a torch.LongTensor [batch, seq], got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must hold integer ids (torch.long), got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            hint = " (add a batch dimension: tokens[None])" if tokens.dim() == 1 else ""
            raise ValueError(f"tokens must be 2-D [batch, seq], got shape {tuple(tokens.shape)}{hint}")
        batch, seq = tokens.shape
        if seq == 0 or batch == 0:
            raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); give at least one token")
        if start_pos < 0 or start_pos > self.cache_len:
            raise ValueError(
                f"start_pos {start_pos} is not in 0..{self.cache_len} (the positions already in the KV "
                "cache); feed the sequence in order, or start again at 0"
            )
        if start_pos + seq > self.args.max_seq_len:
            raise ValueError(
                f"sequence too long: start_pos {start_pos} + {seq} tokens = {start_pos + seq} > the model's "
                f"context of {self.args.max_seq_len} positions; shorten the prompt or generate fewer tokens"
            )
        if start_pos > 0 and batch != self.layers[0].attention.cache.batch:
            raise ValueError(
                f"batch {batch} differs from the batch {self.layers[0].attention.cache.batch} in the KV cache; "
                "start again at start_pos 0"
            )
        if self.check_inputs:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.args.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.args.vocab_size})")

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, *, last_only: bool = False) -> torch.Tensor:
        """Token ids [batch, seq] at positions start_pos.. -> float32 logits [batch, seq, vocab_size].

        ``last_only``: logits of the last position only, [batch, 1, vocab_size]: all that generation needs,
        and for a long prompt far less memory (2,048 positions × 128,256 float32 logits are 1 GB).
        """
        self._validate(tokens, start_pos)
        batch, seq = tokens.shape
        if start_pos == 0 and not self._cache_reusable(batch):
            self.setup_cache(batch, capacity=seq)
        tokens = tokens.to(self.device, torch.long)
        freqs_cis = self.freqs_cis(tokens.device)[start_pos : start_pos + seq]

        h = self.tok_embeddings(tokens)  # [batch, seq, dim]
        for layer in self.layers:
            h = layer(h, start_pos, freqs_cis)  # the residual stream, [batch, seq, dim]
        if last_only:
            h = h[:, -1:]  # [batch, 1, dim]
        h = self.norm(h)
        self.cache_len = start_pos + seq
        return self.output(h).float()  # [batch, seq (or 1), vocab_size]
