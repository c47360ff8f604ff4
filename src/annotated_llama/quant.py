"""Fewer bits (chapter 12): GGUF block decoding, and weight-only int8 / int4 linears that replace ``nn.Linear``.

Formats
- GGUF **Q4_1** block (20 bytes, 32 weights): fp16 ``d``, fp16 ``m``, then 16 bytes of 4-bit numbers ``q``;
  byte ``j`` holds element ``j`` in its low nibble and element ``j + 16`` in its high nibble; ``w = d·q + m``.
- GGUF **Q8_0** block (34 bytes, 32 weights): fp16 ``d``, then 32 signed bytes ``q``; ``w = d·q``.
- Our **int8**: symmetric per output channel (row): ``w ≈ q·scale``, ``q`` in -127..127, ``scale = max|w| / 127``.
- Our **int4**: asymmetric per group of ``group_size`` consecutive inputs of a row: ``w ≈ q·scale + zero``,
  ``q`` in 0..15, ``zero`` the group's minimum, ``scale = (max - min) / 15``. This is Q4_1's own convention
  (``scale = d``, ``zero = m``), so a GGUF's Q4_1 blocks become an ``Int4Linear`` exactly: the same 4-bit
  numbers (re-packed two per byte in the CPU kernel's layout, see ``pack_nibbles``: one copy serves both the
  reader and the kernel), fp16 ``d``/``m`` widened to float32 (exact).
  PyTorch's packed int4 kernels use ``(q - 8)·scale + zero'``; ``zero' = zero + 8·scale`` is computed once,
  when the kernel's copy is packed: one float32 rounding there (bf16 on CUDA, whose kernel takes bf16 only).

Kernels (``forward``). Measured for one token's worth of the bundled model's matmuls (30 layers × 7 matrices of
distinct weights, batch 1, one thread, medians of 7 alternating repetitions, AMD EPYC AVX2, load average
3.9-4.3 on 2 cores shared with other jobs, so ratios matter more than times): float32 ``F.linear`` 99 ms;
fbgemm's dynamic int8 linear (``torch.ops.quantized.linear_dynamic`` on prepacked weights) 46 ms;
``torch._weight_int8pack_mm`` 298 ms; PyTorch's packed int4 CPU matmul (``_weight_int4pack_mm_for_cpu``)
520 ms (864 ms against float32's 163 ms in a busier repeat, where dequantize-then-``F.linear`` in eager
PyTorch took 3,300 ms); ``torch.compile`` of dequantize-then-matmul 1,074 ms (int8) and 1,600 ms (int4)
against 96 ms; torchao 0.18 (PyPI) ships no CPU kernel of its own for these (its CPU int4 weight-only path
calls the same ``_weight_int4pack_mm_for_cpu``; its int8-activation/int4-weight CPU op is not in the wheel).
So:
- ``Int8Linear`` on CPU runs fbgemm's dynamic linear, the only int8 kernel here faster than float32. It
  multiplies integers by integers, so it rounds the *activations* too, one scale per call, to 8 bits (7 in
  practice: ``reduce_range``, which keeps AVX2's 16-bit pair sums from saturating). Sent as they are, with one
  scale per token, the bundled model's activations lose several percent of perplexity that way (their few
  large coordinates set the step; chapter 12 measures it). So by default each token goes in as two integer
  rows, its rounding and the rounding's remainder, one call, one read of the weights: the sum is the
  activations to about 14 bits and the result the weight-only product to within a bound that is tested
  (``Int8Linear``'s docstring; ``activation_levels=1`` keeps the single, cheaper rounding). fbgemm keeps its
  own packed copy of the int8 weights, so on CPU an int8 weight occupies two bytes (``q`` + the pack).
  PyTorch 2.13 deprecates the quantized tensor type this path builds on (pytorch/pytorch#184982); where the
  op is missing, ``forward`` falls back to the reference. Elsewhere (CUDA, other devices): the reference.
- ``Int4Linear`` on CPU runs ``_weight_int4pack_mm_for_cpu``, the fastest int4 path measured, and still several
  times slower than float32 here: none of the kernels above makes a 4-bit matmul faster than float32 on this
  CPU (llama.cpp's hand-written AVX2 dot products do; see ``benchmarks/quant_compare.py``). On CUDA:
  ``_weight_int4pack_mm`` (bf16 only; ``in_features`` a multiple of 128, ``out_features`` of 8, group size 32,
  64, 128 or 256), gated on ``device.type == "cuda"`` and untested here (no GPU); elsewhere the reference.

The LM head (tied to the embedding in the bundled model: one matrix, a fifth of its weights, read for every
token) is kept in float16 by ``quantize_model`` (``Float16Linear``; ``TiedEmbedding`` reads its rows): per-row
int8 cost +5.6% perplexity, per-group int8 had no kernel (236 ms per token for the head alone), float16 ran
faster than float32 (see ``quantize_head``).

What this gives on the bundled model (perplexity, memory, speed against transformers and llama.cpp) is
measured in chapter 12 and ``benchmarks/RESULTS.md``.

The plain references (``int8_linear_reference``, ``int4_linear_reference``: dequantize, then ``F.linear``) are
the checked truth; the kernels are tested against them.
"""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32  # weights per GGUF Q4_1 / Q8_0 block
Q4_1_BYTES = 20  # 2 (d) + 2 (m) + 16 (32 nibbles)
Q8_0_BYTES = 34  # 2 (d) + 32 (int8)
SCHEMES = ("int8", "int4")


# --- GGUF blocks, byte by byte ---------------------------------------------------------------------------
def decode_q4_1_block(raw: bytes) -> torch.Tensor:
    """One 20-byte Q4_1 block -> its 32 weights (float32)."""
    if len(raw) != Q4_1_BYTES:
        raise ValueError(f"a Q4_1 block is {Q4_1_BYTES} bytes, got {len(raw)}")
    d, m = struct.unpack("<ee", raw[:4])  # two little-endian fp16 numbers: the scale and the minimum
    q = [0] * BLOCK
    for j, byte in enumerate(raw[4:]):
        q[j] = byte & 0x0F  # low nibble: elements 0..15
        q[j + 16] = byte >> 4  # high nibble: elements 16..31
    # d·q is exact in float32 (11 + 4 significant bits); the sum is rounded once, as ggml does in float32.
    return torch.tensor([d * qi + m for qi in q], dtype=torch.float32)


def decode_q8_0_block(raw: bytes) -> torch.Tensor:
    """One 34-byte Q8_0 block -> its 32 weights (float32)."""
    if len(raw) != Q8_0_BYTES:
        raise ValueError(f"a Q8_0 block is {Q8_0_BYTES} bytes, got {len(raw)}")
    (d,) = struct.unpack("<e", raw[:2])
    q = struct.unpack("<32b", raw[2:])  # 32 signed bytes
    return torch.tensor([d * qi for qi in q], dtype=torch.float32)


# --- quantizing and dequantizing -------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (q int8 [out, in], scale float32 [out]): symmetric per row, |w - q·scale| ≤ scale/2.

    ``group_size``: one scale per group of that many inputs instead (scale [out, in/g]): Q8_0's layout with 32."""
    out_f, in_f = weight.shape
    g = in_f if group_size is None else group_size
    if group_size is not None:
        _check_group(in_f, g)
    w = weight.detach().float().reshape(out_f, in_f // g, g)  # [out, groups, g]
    scale = w.abs().amax(dim=-1) / 127  # [out, groups]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: q = 0, any scale
    q = torch.round(w / safe[..., None]).clamp(-127, 127).to(torch.int8).reshape(out_f, in_f)
    return q, (scale[:, 0] if group_size is None else scale)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q int8 [out, in] with scale [out] (per row) or [out, groups] -> float32 [out, in]."""
    s = scale.reshape(q.shape[0], -1)  # [out, groups]; one group per row when per row
    return (q.float().reshape(q.shape[0], s.shape[1], -1) * s[..., None]).reshape(q.shape)


def _check_group(in_features: int, group_size: int) -> None:
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size must be a positive even number, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not divisible by group_size {group_size}; "
                         f"use a group size that divides it (e.g. 32 or 64 for 576)")


def quantize_int4(weight: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] float -> (q uint8 0..15 [out, in], scale [out, in/g], zero [out, in/g]), float32 scales.

    ``w ≈ q·scale + zero`` with ``zero`` the group minimum: |w - deq| ≤ scale/2 (plus float32 rounding)."""
    out_f, in_f = weight.shape
    _check_group(in_f, group_size)
    g = weight.detach().float().reshape(out_f, in_f // group_size, group_size)  # [out, groups, g]
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # [out, groups]
    scale = (hi - lo) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: q = 0, w = zero exactly
    q = torch.round((g - lo[..., None]) / safe[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(out_f, in_f), scale, lo


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = q.shape
    g = q.float().reshape(out_f, in_f // group_size, group_size)  # [out, groups, g]
    return (g * scale[..., None] + zero[..., None]).reshape(out_f, in_f)  # [out, in] float32


TILE = 32  # output rows per tile of the packed int4 layout


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 0..15 [out, in] -> [out, in/2], two numbers per byte, in the layout of PyTorch's CPU int4 kernel
    (``_convert_weight_to_int4pack_for_cpu``): output rows in tiles of 32; for each tile and each input column,
    16 bytes, byte j holding row j of the tile (low nibble) and row j + 16 (high nibble). Q4_1 pairs elements
    j and j + 16 the same way, but along a block's inputs instead of a tile's rows."""
    out_f, in_f = q.shape
    if out_f % TILE:
        raise ValueError(f"out_features {out_f} is not a multiple of {TILE}, which the int4 layout needs")
    t = q.reshape(out_f // TILE, 2, TILE // 2, in_f)  # [tiles, (low, high), 16, in]
    return (t[:, 0] | (t[:, 1] << 4)).transpose(1, 2).contiguous().reshape(out_f, in_f // 2)  # [tiles, in, 16]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_nibbles``: [out, in/2] -> uint8 0..15 [out, in]."""
    out_f, half = packed.shape
    t = packed.reshape(out_f // TILE, 2 * half, TILE // 2)  # [tiles, in, 16]
    return torch.stack((t & 0x0F, t >> 4), dim=1).transpose(2, 3).reshape(out_f, 2 * half)  # [tiles, 2, 16, in]


# --- the references: dequantize, then an ordinary matmul --------------------------------------------------
def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ (q·scale)ᵀ -> [..., out] in x's dtype (weights dequantized in float32, then cast)."""
    return F.linear(x, dequantize_int8(q, scale).to(x.dtype))


def int4_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                          group_size: int) -> torch.Tensor:
    """x [..., in] @ (q·scale + zero)ᵀ -> [..., out] in x's dtype; ``q`` unpacked uint8 [out, in]."""
    return F.linear(x, dequantize_int4(q, scale, zero, group_size).to(x.dtype))


# --- the modules -----------------------------------------------------------------------------------------
def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor):
    """fbgemm's prepacked int8 weights (its own layout), or None where the op is missing."""
    try:
        with warnings.catch_warnings():  # the quantized tensor type is deprecated in torch 2.13 (see above)
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qweight, None)
    except (AttributeError, RuntimeError):
        return None


def _as_bytes(raw) -> torch.Tensor:
    """bytes, a uint8 tensor, or the numpy view GGUFReader gives (read-only, memory-mapped) -> uint8 [n] (one
    copy of the bytes, never a float matrix)."""
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1).view(torch.uint8)
    if isinstance(raw, (bytes, bytearray)):
        return torch.from_numpy(np.frombuffer(bytes(raw), dtype=np.uint8).copy())
    return torch.from_numpy(np.array(raw, dtype=np.uint8).reshape(-1))


# fbgemm's int8 kernel rounds its input to integers too (below). To feed it numbers it keeps exactly, we pin its
# range: an extra input row [-63.5, 63.5, 0, ...] makes its scale exactly 1 (127 levels over a width of 127) and
# its zero point 64, so its grid is the integers -64..63. Each token is scaled so that its largest |x| is TOP,
# and the remainder left by rounding (|r| ≤ 1/2) is scaled by FRAC onto the same grid in a second row.
PIN = 63.5
TOP = 62.0
FRAC = 124.0  # 124 · 1/2 = 62 ≤ TOP: the remainder row fits the grid as well


class Int8Linear(nn.Module):
    """A bias-free ``nn.Linear`` with int8 weights, one scale per output row: ``y = x @ (q·scale)ᵀ``.

    Buffers: ``q`` int8 [out, in], ``scale`` float32 [out] (or [out, in/group_size] with ``group_size``: Q8_0's
    layout with 32). ``forward(x)``: any leading shape, float32, bf16 or fp16, output in x's dtype.

    Per row on CPU it runs fbgemm's dynamic int8 linear on a packed copy of ``q`` (made at the first CPU call,
    or by ``prepare()``). That kernel multiplies integers by integers, so it rounds the activations to 8 bits
    as well (7 in practice: ``reduce_range``), one scale per call. ``activation_levels`` says how we feed it:

    - 2 (the default): each token x is sent as two integer rows, a = round(x·TOP/max|x|) and the remainder
      (x·TOP/max|x| - a)·FRAC rounded, plus the pinning row (see ``PIN``): three rows for one token, one read of
      the weights. Their sum gives x to about 14 bits (an error of at most max|x|/(2·TOP·FRAC) per element), so
      the result is the weight-only int8 product to within that;
    - 1: the token alone, divided by its max |x| (so the call's one scale is the token's own): 7-bit
      activations, fewer operations per call, more error (measured in chapter 12).

    Per group, anywhere else, or if fbgemm is missing: ``int8_linear_reference`` (no group-wise int8 kernel here).
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None,
                 activation_levels: int = 2):
        super().__init__()
        if activation_levels not in (1, 2):
            raise ValueError(f"activation_levels must be 1 or 2, got {activation_levels}")
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        self.activation_levels = activation_levels
        self.register_buffer("q", q.to(torch.int8))
        self.register_buffer("scale", scale.float())
        self._pack = None  # fbgemm's copy, CPU only
        self._pin = None  # the pinning row, made with the pack

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None, activation_levels: int = 2
                    ) -> "Int8Linear":
        if getattr(linear, "bias", None) is not None:
            raise ValueError("Int8Linear replaces bias-free linears only (LLaMA has no biases)")
        return cls(*quantize_int8(linear.weight, group_size), group_size, activation_levels)

    @classmethod
    def from_q8_0(cls, raw_blocks, out_features: int, in_features: int) -> "Int8Linear":
        """A GGUF Q8_0 matrix's bytes -> Int8Linear with group_size 32 and the same numbers (exact)."""
        blocks = _as_bytes(raw_blocks)
        n_blocks = out_features * in_features // BLOCK
        if in_features % BLOCK or blocks.numel() != n_blocks * Q8_0_BYTES:
            raise ValueError(f"a Q8_0 [{out_features}, {in_features}] matrix is {n_blocks} blocks of "
                             f"{Q8_0_BYTES} bytes = {n_blocks * Q8_0_BYTES} bytes, got {blocks.numel()}")
        blocks = blocks.reshape(n_blocks, Q8_0_BYTES)
        d = blocks[:, 0:2].contiguous().view(torch.float16).float()  # [blocks, 1]
        q = blocks[:, 2:].contiguous().view(torch.int8).reshape(out_features, in_features)
        return cls(q, d.reshape(out_features, in_features // BLOCK), BLOCK)

    @classmethod
    def concat(cls, parts: list["Int8Linear"]) -> "Int8Linear":
        """Several Int8Linears on the same input, stacked along the output rows (wq|wk|wv, w1|w3): one call
        instead of several; every row keeps its numbers and its scale."""
        if len({(p.in_features, p.group_size, p.activation_levels) for p in parts}) != 1:
            raise ValueError("Int8Linear.concat needs the same in_features, group_size and activation_levels")
        p0 = parts[0]
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), p0.group_size,
                   p0.activation_levels)

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(self.q, self.scale)

    def prepare(self) -> "Int8Linear":
        """Build the kernel's packed copy now (the first CPU ``forward`` would)."""
        if self.q.device.type == "cpu" and self._pack is None and self.group_size is None:
            self._pack = _fbgemm_pack(self.q, self.scale)
            self._pin = torch.zeros(1, self.in_features)
            self._pin[0, :2] = torch.tensor([-PIN, PIN])
        return self

    def kernel_nbytes(self) -> int:
        """Bytes of fbgemm's packed copy, estimated (an opaque object): one byte per weight plus one int32
        column offset per output row."""
        return 0 if self._pack is None else self.q.numel() + 4 * self.out_features

    def drop_kernel(self) -> None:
        """Free the kernel's packed copy (rebuilt at the next CPU call)."""
        self._pack = None

    def _apply(self, fn, recurse=True):  # .to(device) and friends: the packed copy is rebuilt when needed
        self.drop_kernel()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pack is None and x.device.type == "cpu":
            self.prepare()
        if self._pack is None or x.device.type != "cpu":
            return int8_linear_reference(x, self.q, self.scale)
        x2 = x.reshape(-1, self.in_features).float()  # [tokens, in]
        tokens = x2.shape[0]
        if self.activation_levels == 1:
            if tokens == 1:  # the call's one scale is already the token's own
                y = torch.ops.quantized.linear_dynamic(x2, self._pack, True)  # reduce_range=True
            else:  # one scale per token: divide by its max |x| first, multiply back after (y is linear in x)
                r = x2.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # [tokens, 1]
                y = torch.ops.quantized.linear_dynamic(x2 / r, self._pack, True) * r
        else:
            k = TOP / torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True).clamp_min(
                torch.finfo(torch.float32).tiny)  # [tokens, 1]: max |x·k| = TOP
            a = x2 * k  # [tokens, in], within ±TOP; the kernel rounds it to round(a)
            rest = (a - torch.round(a)).mul_(FRAC)  # what that rounding drops, scaled onto the grid (|rest| ≤ 62)
            yy = torch.ops.quantized.linear_dynamic(torch.cat((a, rest, self._pin)), self._pack, True)
            y = torch.add(yy[:tokens], yy[tokens:2 * tokens], alpha=1 / FRAC).div_(k)  # [tokens, out]
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        per = "per row" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 {per}, "
                f"activation_levels={self.activation_levels}")


_LAYOUT_OK: list[bool] = []


def _cpu_layout_matches() -> bool:
    """Does ``pack_nibbles`` give what ``torch._convert_weight_to_int4pack_for_cpu`` gives? Asked once, on a
    64 × 64 pattern where every (row, column) has its own number."""
    if not _LAYOUT_OK:
        q = (torch.arange(64 * 64) * 7 % 16).reshape(64, 64)
        q = (q + torch.arange(64)[:, None]) % 16  # rows differ too
        ours = pack_nibbles(q.to(torch.uint8))
        _LAYOUT_OK.append(torch.equal(ours, torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)))
    return _LAYOUT_OK[0]


# Inputs with at least this many rows (tokens) skip the packed int4 kernel for dequantize-then-matmul.
KERNEL_MAX_ROWS = 4


class Int4Linear(nn.Module):
    """A bias-free ``nn.Linear`` with 4-bit weights, a scale and a zero per group: ``w = q·scale + zero``.

    Buffers: ``qpacked`` uint8 [out, in/2] (two numbers per byte, see ``pack_nibbles``), ``scale``, ``zero`` float32
    [out, in/group_size]. ``q`` unpacks to uint8 [out, in]. ``forward(x)``: any leading shape, float32, bf16 or
    fp16, output in x's dtype. CPU: ``torch._weight_int4pack_mm_for_cpu`` on a packed copy made at the first
    call (or by ``prepare()``: ``qpacked`` itself plus the scales in the kernel's [groups, out, 2] form, zero'
    = zero + 8·scale), computed in float32, then cast. CUDA: ``torch._weight_int4pack_mm`` in bf16
    where its shape rules hold (in_features % 128, out_features % 8, group size 32/64/128/256; untested here).
    Inputs of ``KERNEL_MAX_ROWS`` rows or more (prompts), and anything else: ``int4_linear_reference``.
    """

    def __init__(self, qpacked: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int = 32):
        super().__init__()
        self.out_features, half = qpacked.shape
        self.in_features, self.group_size = 2 * half, group_size
        _check_group(self.in_features, group_size)
        groups = (self.out_features, self.in_features // group_size)
        if tuple(scale.shape) != groups or tuple(zero.shape) != groups:
            raise ValueError(f"scale and zero must be {list(groups)}, got {list(scale.shape)}, {list(zero.shape)}")
        self.register_buffer("qpacked", qpacked.to(torch.uint8))
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero", zero.float())
        self._kernel = None  # (device, packed weights, scales_and_zeros) in the kernel's format

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> "Int4Linear":
        if getattr(linear, "bias", None) is not None:
            raise ValueError("Int4Linear replaces bias-free linears only (LLaMA has no biases)")
        q, scale, zero = quantize_int4(linear.weight, group_size)
        return cls(pack_nibbles(q), scale, zero, group_size)

    @classmethod
    def from_q4_1(cls, raw_blocks, out_features: int, in_features: int) -> "Int4Linear":
        """A GGUF Q4_1 matrix's bytes ([out·in/32 blocks × 20 bytes], row-major: a row's blocks in order)
        -> Int4Linear with the same numbers: the nibble bytes are copied, d and m widened from fp16 (exact)."""
        blocks = _as_bytes(raw_blocks)
        n_blocks = out_features * in_features // BLOCK
        if in_features % BLOCK or blocks.numel() != n_blocks * Q4_1_BYTES:
            raise ValueError(f"a Q4_1 [{out_features}, {in_features}] matrix is {n_blocks} blocks of "
                             f"{Q4_1_BYTES} bytes = {n_blocks * Q4_1_BYTES} bytes, got {blocks.numel()}")
        blocks = blocks.reshape(n_blocks, Q4_1_BYTES)
        d = blocks[:, 0:2].contiguous().view(torch.float16).float()  # [blocks, 1]
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        nibbles = blocks[:, 4:]  # [blocks, 16]: byte j = element j (low), element j + 16 (high)
        q = torch.cat((nibbles & 0x0F, nibbles >> 4), dim=1).reshape(out_features, in_features)  # uint8 0..15
        groups = (out_features, in_features // BLOCK)
        return cls(pack_nibbles(q), d.reshape(groups), m.reshape(groups), BLOCK)

    @classmethod
    def concat(cls, parts: list["Int4Linear"]) -> "Int4Linear":
        """Several Int4Linears on the same input, stacked along the output rows (wq|wk|wv, w1|w3). The packed
        layout is made of tiles of 32 whole rows, so stacking the packed bytes stacks the rows."""
        if len({(p.in_features, p.group_size) for p in parts}) != 1:
            raise ValueError("Int4Linear.concat needs the same in_features and group_size")
        return cls(torch.cat([p.qpacked for p in parts]), torch.cat([p.scale for p in parts]),
                   torch.cat([p.zero for p in parts]), parts[0].group_size)

    @property
    def q(self) -> torch.Tensor:
        return unpack_nibbles(self.qpacked)  # uint8 [out, in]

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(self.q, self.scale, self.zero, self.group_size)

    def _kernel_copy(self, device: torch.device):
        """The weights in PyTorch's packed int4 format for ``device``, or None where no kernel applies."""
        q, g = self.q, self.group_size
        zero8 = self.zero + 8 * self.scale  # the kernels compute (q - 8)·scale + zero'
        if device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu"):
            # ``qpacked`` is already in the kernel's layout (checked once against torch's own packing; if a
            # torch version packs differently, its packing is used, at the cost of a second copy).
            packed = self.qpacked if _cpu_layout_matches() else torch._convert_weight_to_int4pack_for_cpu(
                q.to(torch.int32), 2)
            sz = torch.stack((self.scale, zero8), dim=-1).transpose(0, 1).contiguous()  # [groups, out, 2]
            return device, packed, sz
        if (device.type == "cuda" and self.in_features % 128 == 0 and self.out_features % 8 == 0
                and g in (32, 64, 128, 256)):
            pairs = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)  # the CUDA pack's input: [out, in/2]
            packed = torch._convert_weight_to_int4pack(pairs, 8)
            sz = torch.stack((self.scale, zero8), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            return device, packed, sz
        return None

    def prepare(self) -> "Int4Linear":
        """Build the kernel's packed copy now (the first ``forward`` would)."""
        if self._kernel is None:
            self._kernel = self._kernel_copy(self.qpacked.device) or (self.qpacked.device, None, None)
        return self

    def kernel_nbytes(self) -> int:
        if self._kernel is None or self._kernel[1] is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._kernel[1:] if t is not self.qpacked)

    def drop_kernel(self) -> None:
        """Free the kernel's copy of the scales (rebuilt at the next call)."""
        self._kernel = None

    def _apply(self, fn, recurse=True):
        self.drop_kernel()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.prepare()
        device, packed, sz = self._kernel
        x2 = x.reshape(-1, self.in_features)  # [tokens, in]
        # The packed kernels are matrix-vector kernels: their time grows with the rows, and from a few rows
        # on, dequantizing the matrix once and calling one float matmul is faster (one 1536 x 576 matrix on
        # this CPU, 2 threads: kernel 1.3 / 4.8 / 76 ms for 1 / 4 / 64 rows, dequantize-then-matmul 2.7 and
        # 5.3 ms for 4 and 64). So prompts take the reference and decode steps the kernel. On CUDA the same
        # rule is applied, unmeasured: PyTorch's int4 kernel is the one gpt-fast uses for decoding.
        if packed is not None and x.device == device and x2.shape[0] < KERNEL_MAX_ROWS:
            if device.type == "cpu":
                y = torch._weight_int4pack_mm_for_cpu(x2.float(), packed, self.group_size, sz)
            else:
                y = torch._weight_int4pack_mm(x2.to(torch.bfloat16), packed, self.group_size, sz)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return int4_linear_reference(x, self.q, self.scale, self.zero, self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4, "
                f"group_size={self.group_size}")


class Float16Linear(nn.Module):
    """A bias-free linear with float16 weights (``weight16`` [out, in]): 16 bits, no scales. The LM head's
    format by default: ``forward`` multiplies in float16 (``F.linear``; x cast to float16, the result back to
    x's dtype), measured faster than float32 for the bundled model's head (7.9 against 14.2 ms per token, one
    thread), where the group-wise int8 reference took 236 ms."""

    def __init__(self, weight16: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight16.shape
        self.register_buffer("weight16", weight16.to(torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float16Linear":
        return cls(linear.weight.detach())

    def dequantize(self) -> torch.Tensor:
        return self.weight16.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.float16), self.weight16).to(x.dtype)


class TiedEmbedding(nn.Module):
    """The token embedding read from the tied LM head's own numbers (a ``Float16Linear``'s ``weight16``, or an
    ``Int8Linear``'s ``q``/``scale``; the same tensors, one copy): a lookup converts only the rows it reads.

    ``weight``: an empty [0, dim] tensor in the compute dtype, on the buffers' device: ``Transformer.device`` and
    ``.dtype`` read them from ``tok_embeddings.weight``; the numbers are in the head's buffers."""

    def __init__(self, head: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        for name, t in head.named_buffers():  # the head's tensors themselves, not copies
            self.register_buffer(name, t)
        self.dtype = dtype

    @property
    def weight(self) -> torch.Tensor:
        return torch.empty(0, self.embedding_dim, dtype=self.dtype, device=next(self.buffers()).device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "weight16"):
            return self.weight16[tokens].to(self.dtype)  # [..., dim]
        q, s = self.q[tokens].float(), self.scale[tokens]  # [..., dim], [..., groups] (or [...] per row)
        s = s[..., None] if s.dim() == q.dim() - 1 else s.repeat_interleave(q.shape[-1] // s.shape[-1], dim=-1)
        return (q * s).to(self.dtype)  # [..., dim]


# --- whole models ----------------------------------------------------------------------------------------
def quantize_weight(weight: torch.Tensor, scheme: str, group_size: int = 32, activation_levels: int = 2
                    ) -> nn.Module:
    """A bias-free linear's weight [out, in] -> its ``Int8Linear`` / ``Int4Linear``, kernel copy made."""
    if scheme == "int8":
        return Int8Linear(*quantize_int8(weight), activation_levels=activation_levels).prepare()
    if scheme == "int4":
        q, scale, zero = quantize_int4(weight, group_size)
        return Int4Linear(pack_nibbles(q), scale, zero, group_size).prepare()
    raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def quantize_linear(linear: nn.Linear, scheme: str, group_size: int = 32, activation_levels: int = 2
                    ) -> nn.Module:
    if getattr(linear, "bias", None) is not None:
        raise ValueError("the quantized linears replace bias-free linears only (LLaMA has no biases)")
    return quantize_weight(linear.weight, scheme, group_size, activation_levels)


LAYER_LINEARS = (("attention", "wq"), ("attention", "wk"), ("attention", "wv"), ("attention", "wo"),
                 ("feed_forward", "w1"), ("feed_forward", "w2"), ("feed_forward", "w3"))


def quantizing(scheme: str, group_size: int = 32):
    """``convert(name, tensor)`` for the checkpoint readers (``load(quantize=scheme)``): a layer's wq wk wv wo
    w1 w2 w3 weight becomes its quantized linear as soon as it is read; any other tensor passes unchanged."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    suffixes = tuple(f".{part}.{name}.weight" for part, name in LAYER_LINEARS)

    def convert(name: str, tensor: torch.Tensor):
        if name.startswith("layers.") and name.endswith(suffixes):
            return quantize_weight(tensor, scheme, group_size)
        return tensor

    return convert


HEAD_GROUP = 32
HEADS = ("fp16", "int8")


def quantize_head(model, head: str | None = "fp16", head_linear: nn.Module | None = None,
                  dtype: torch.dtype | None = None) -> None:
    """The LM head (and the embedding, when tied to it: ``TiedEmbedding`` reads the head's own tensors).

    ``head``: "fp16" (``Float16Linear``, the default) or "int8" (``Int8Linear`` per group of 32, Q8_0's layout),
    None: left as it is. ``head_linear``: a head module already made (from a GGUF's blocks). Measured on the
    bundled model (perplexity on 256 tokens of the intro; float32 76.25): int8 per row 80.52 (+5.6%), so not
    that; int8 per group of 32 reproduces the bundled Q8_0 values exactly, but has no kernel here (236 ms per
    token for the head alone); fp16 keeps 11 significant bits and runs faster than float32."""
    if head is None:
        return
    if head not in HEADS:
        raise ValueError(f"head={head!r}: use 'fp16', 'int8' (per group of 32) or None (leave it float)")
    tied = model.output.weight is model.tok_embeddings.weight
    dtype = dtype or model.dtype  # the compute dtype the embedding returns
    if head_linear is None:
        head_linear = (Float16Linear.from_linear(model.output) if head == "fp16"
                       else Int8Linear.from_linear(model.output, HEAD_GROUP))
    model.output = head_linear
    if tied:
        model.tok_embeddings = TiedEmbedding(model.output, dtype)


def quantize_model(model, scheme: str, group_size: int = 32, head: str | None = "fp16", activation_levels: int = 2):
    """Replace, in place, every layer's wq wk wv wo w1 w2 w3 by ``Int8Linear`` / ``Int4Linear`` (one at a
    time, freeing each float weight as it goes) and the LM head (and the tied embedding) as ``head`` says
    (``quantize_head``: fp16 by default). ``activation_levels``: int8 only, see ``Int8Linear``. Returns the
    model."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme == "int4":
        for name, size in (("dim", model.args.dim), ("ffn_dim", model.args.ffn_dim)):
            _check_group(size, group_size)
    for block in model.layers:
        for part, name in LAYER_LINEARS:
            parent = getattr(block, part)
            linear = getattr(parent, name)
            if isinstance(linear, nn.Linear):
                setattr(parent, name, quantize_linear(linear, scheme, group_size, activation_levels))
    quantize_head(model, head)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of the weights: parameters and buffers (a tensor shared by two modules counted once),
    plus the kernels' packed copies (``kernel_nbytes``; fbgemm's is an estimate, see ``Int8Linear``)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total + sum(m.kernel_nbytes() for m in model.modules() if hasattr(m, "kernel_nbytes"))


@torch.inference_mode()
def perplexity(model, ids: list[int]) -> float:
    """exp(mean next-token cross-entropy) of ``model`` on the token ids (one forward pass, float32 logits)."""
    tokens = torch.tensor([ids], device=model.device)  # [1, seq]
    logits = model(tokens)[0, :-1].float()  # [seq - 1, vocab]: position t predicts token t + 1
    return math.exp(F.cross_entropy(logits, tokens[0, 1:]).item())
