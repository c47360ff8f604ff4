"""The key/value cache: what attention remembers of earlier positions so decoding needs no recomputation.

One ``KVCache`` per attention layer holds keys and values as ``[batch, n_kv_heads, capacity, head_dim]``.
It grows on demand (doubling, up to the model's context) so short prompts do not reserve memory for the
whole context; ``preallocate`` fixes the size up front, as the GPU decode path wants.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, capacity: int, max_capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_capacity = max_capacity

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, needed: int) -> None:
        new_capacity = min(self.max_capacity, max(needed, 2 * self.capacity))
        pad = new_capacity - self.capacity
        self.k = torch.nn.functional.pad(self.k, (0, 0, 0, pad))
        self.v = torch.nn.functional.pad(self.v, (0, 0, 0, pad))

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ([batch, n_kv_heads, seq, head_dim]) at ``start_pos``; return all keys and
        values up to the end of what was written."""
        end = start_pos + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
