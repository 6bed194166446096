"""Preallocated key/value cache and the attention-mask bookkeeping for left-padded batches.

Padding scheme: a batch of prompts of different lengths is **left-padded** to a common length
P, and `pad[b]` counts the padding slots of row b. Every row then writes its next token into
the same cache slot, so one decode step is one batched matmul with no per-row indexing.
Two things keep padded rows exact (equal to running that row alone):

- positions are per row, `slot - pad[b]`, so RoPE / learned position embeddings see the
  unpadded positions 0, 1, 2, ...;
- keys in padding slots are masked out. A padding *query* would then see no key at all (a
  row of -inf, NaN after softmax), so it may see itself; its output is garbage that no real
  token ever attends to.

Without padding no mask tensor is built: prefill uses SDPA's `is_causal` and a one-token
decode step attends to the whole cache.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, preallocated for `max_seq_len` slots.

    Stored as (L, B, n_kv_head, T, head_dim): one layer's slice `[:pos]` is already in the
    (B, nh, T, hs) layout `scaled_dot_product_attention` takes, so a decode step never copies
    the cache (nanochat stores (L, B, T, H, D) for flash-attention; SDPA wants heads first).

    The model checks the step fits (`check_room`), hands each block its layer's views
    (`layer`) and the slot `pos` (the block writes with `cache_insert`), and moves `pos` with
    `advance` once all layers are done; `insert` is that write in one call, for code that
    holds the cache. `reset` rewinds for a new batch; `prefill` copies another cache (for
    example a prompt prefilled once with B = 1, then broadcast to B samples).

    >>> c = KVCache(n_layer=2, batch_size=1, n_kv_head=1, max_seq_len=4, head_dim=2)
    >>> k, v = c.insert(0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2)); c.advance(3); c.pos
    3
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_seq_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nkv, T, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nkv, T, hs)
        # Per-layer views, made once: a decode step would otherwise index 2 x n_layer times.
        self._layers = [(self.k[i], self.v[i]) for i in range(n_layer)]
        self.pos = 0  # slots filled so far (the same for every row: rows are left-padded)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        # A Python flag, so that checking "is there any padding" never syncs with the device.
        self.has_pad = False

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_seq_len(self) -> int:
        return self.k.size(3)

    def reset(self) -> None:
        """Rewind to an empty cache (the tensors are kept and overwritten)."""
        self.pos = 0
        self.pad.zero_()
        self.has_pad = False

    def set_pad(self, pad: torch.Tensor | None) -> None:
        """Record the left padding of the rows about to be prefilled."""
        if pad is None:
            self.pad.zero_()
            self.has_pad = False
            return
        if pad.shape != (self.batch_size,):
            raise ValueError(f"pad must have shape ({self.batch_size},), got {tuple(pad.shape)}")
        self.pad.copy_(pad)
        self.has_pad = bool(pad.any())

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's views, as `layer(i)` gives them (do not modify the list)."""
        return self._layers

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one layer's keys and values, (B, nkv, max_seq_len, hs) each.

        The model hands each block its own views plus `pos`, not the cache and a layer
        number, so every block runs the same code on different tensors: a compiled decode
        step (`DecoderLM.compile_decode`) then compiles one block, not one per layer."""
        return self._layers[layer]

    def check_room(self, n: int) -> None:
        """Raise ValueError unless `n` more slots fit after `pos`."""
        if self.pos + n > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {self.pos + n} > max_seq_len {self.max_seq_len}")

    def insert(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values (B, nkv, T, hs) of one layer at `pos`; return views
        of everything cached so far for that layer, (B, nkv, pos + T, hs)."""
        self.check_room(k.size(2))
        return cache_insert(self.layer(layer), self.pos, k, v)

    def advance(self, n: int) -> None:
        """Move past the `n` slots the last forward pass wrote."""
        self.pos += n

    def prefill(self, other: KVCache) -> None:
        """Copy `other`'s filled slots into this cache, broadcasting a batch of 1 to B rows."""
        same = (other.k.shape[0], other.k.shape[2], other.k.shape[4])
        if same != (self.k.shape[0], self.k.shape[2], self.k.shape[4]):
            raise ValueError("prefill: caches have different layer/head shapes")
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(
                f"prefill: batch {other.batch_size} cannot fill batch {self.batch_size}"
            )
        if other.pos > self.max_seq_len:
            raise ValueError(f"prefill: {other.pos} slots do not fit in {self.max_seq_len}")
        n = other.pos
        self.k[:, :, :, :n] = other.k[:, :, :, :n]
        self.v[:, :, :, :n] = other.v[:, :, :, :n]
        self.pad.copy_(other.pad.expand(self.batch_size))
        self.has_pad = other.has_pad
        self.pos = n


def cache_insert(
    cache: tuple[torch.Tensor, torch.Tensor], pos: int, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write keys/values (B, nkv, T, hs) into one layer's cache views at slot `pos` (the caller
    has checked that they fit); return the views of slots 0..pos + T."""
    ck, cv = cache
    t1 = pos + k.size(2)
    ck[:, :, pos:t1] = k
    cv[:, :, pos:t1] = v
    return ck[:, :, :t1], cv[:, :, :t1]


def positions(
    pad: torch.Tensor | None, start: int, length: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Per-row position ids (B, T) of slots start..start+length: `slot - pad[b]`, clamped at 0
    for the padding slots themselves."""
    pos = torch.arange(start, start + length, device=device).unsqueeze(0)  # (1, T)
    if pad is None:
        return pos.expand(batch_size, length)
    return (pos - pad.unsqueeze(1)).clamp_min(0)  # (B, T)


def attention_mask(
    pad: torch.Tensor | None, start: int, length: int
) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA, for queries at slots start..start+length attending to
    keys at slots 0..start+length.

    Returns `(None, True)` / `(None, False)` when no padding is involved, so the fast paths of
    SDPA stay available; else a boolean mask (B, 1, T, S) where True means "may attend".
    """
    if pad is None:
        if length == 1:
            return None, False  # one query sees the whole cache: no mask at all
        if start == 0:
            return None, True
    total = start + length
    device = pad.device if pad is not None else None
    q = torch.arange(start, total, device=device).view(-1, 1)  # (T, 1)
    k = torch.arange(total, device=device).view(1, -1)  # (1, S)
    mask = k <= q  # (T, S) causal
    if pad is None:
        return mask, False
    not_pad = k.unsqueeze(0) >= pad.view(-1, 1, 1)  # (B, 1, S)
    mask = mask & (not_pad | (k == q))  # (B, T, S): a padding query may see itself
    return mask.unsqueeze(1), False  # (B, 1, T, S)
