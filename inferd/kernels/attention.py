"""Paged attention over block tables for one flat batch of prefill chunks and decode tokens.

The KV cache of one layer is a pair of tensors [num_blocks, block_size, kv_heads, head_dim];
a sequence's keys live in the blocks its block table names. This module writes new keys/values
into their slots and attends each query over its own sequence's cached prefix, causally.
On CPU the fused kernel (csrc/cpu_ops.cpp) serves every row where it applies; the plain-torch
paths here serve the rest (quantized KV caches, unusual head layouts, no compiler). The CUDA
path lives in `attention_triton.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inferd.kernels import cpu_ops
from inferd.kernels.kv_quant import QuantizedKV

KVStore = torch.Tensor | QuantizedKV  # one layer's keys (or values), plain or quantized


@dataclass
class AttentionMetadata:
    """Where each token of the flat batch belongs. Built by the runner once per step.

    Sequence s owns query tokens [query_start[s], query_start[s+1]) of the batch; after this step
    its context holds seq_lens[s] tokens, so query j of s sits at position
    seq_lens[s] - query_len[s] + j and attends to positions 0..itself.
    """

    slot_mapping: torch.Tensor  # [T] int64: flat cache slot receiving each token's K/V (-1: skip)
    block_tables: torch.Tensor  # [S, max_blocks] int64
    seq_lens: list[int]  # per sequence, context length after this step
    query_lens: list[int]  # per sequence, tokens in this step
    seq_lens_t: torch.Tensor  # [S] int64, same as seq_lens
    query_start: list[int]  # [S+1] prefix sums of query_lens
    block_size: int
    max_seq_len: int
    num_decodes: int  # the first num_decodes sequences have query_len == 1
    sliding_window: int | None = None
    _decode_groups: list[DecodeGroup] | None = field(default=None, repr=False)
    _row_tables: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def row_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(block table [R, W], context length [R]) for each real query row: a prefill row at
        position p sees p + 1 tokens. Built by the first layer, reused by every other."""
        if self._row_tables is None:
            if self.num_decodes == self.num_seqs:
                self._row_tables = (self.block_tables, self.seq_lens_t)
            else:
                q_lens = torch.tensor(self.query_lens, device=self.block_tables.device)
                starts = torch.repeat_interleave(self.seq_lens_t - q_lens, q_lens)
                rows = torch.arange(starts.shape[0], device=starts.device)
                first_row = torch.repeat_interleave(
                    torch.tensor(self.query_start[:-1], device=starts.device), q_lens)
                self._row_tables = (torch.repeat_interleave(self.block_tables, q_lens, dim=0),
                                    starts + (rows - first_row) + 1)
        return self._row_tables

    def decode_groups(self) -> list[DecodeGroup]:
        """The decode rows' gather plan: built by the first layer, reused by every other."""
        if self._decode_groups is None:
            self._decode_groups = _plan_decode(self)
        return self._decode_groups


@dataclass
class DecodeGroup:
    """Decode rows sharing one padded context length, attended in one batched call."""

    rows: torch.Tensor | None  # indices among the decode rows; None = all of them, in order
    block_ids: torch.Tensor  # [n * padded / block_size] the blocks holding each row's padded context
    hide: torch.Tensor  # [n, 1, 1, padded] True where a position is masked out
    keep: torch.Tensor  # ~hide, the form SDPA takes
    padded: int


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: KVStore, v_cache: KVStore,
             slot_mapping: torch.Tensor) -> None:
    """Store this step's keys/values [T, Hk, D] into their cache slots."""
    if isinstance(k_cache, QuantizedKV):
        k_cache.write(k, slot_mapping)
        v_cache.write(v, slot_mapping)
        return
    kv_heads, head_dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def gather_kv(cache: KVStore, slots: torch.Tensor) -> torch.Tensor:
    """Keys or values at flat slots [N] -> [N, Hk, D] in the activation dtype."""
    if isinstance(cache, QuantizedKV):
        return cache.gather(slots)
    kv_heads, head_dim = cache.shape[-2:]
    return torch.index_select(cache.view(-1, kv_heads, head_dim), 0, slots)


def gather_kv_blocks(cache: KVStore, block_ids: torch.Tensor) -> torch.Tensor:
    """Whole blocks [N] -> [N * block_size, Hk, D]: far cheaper than gathering slot by slot."""
    if isinstance(cache, QuantizedKV):
        return cache.gather_blocks(block_ids)
    kv_heads, head_dim = cache.shape[-2:]
    return torch.index_select(cache, 0, block_ids).view(-1, kv_heads, head_dim)


def _context_slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Flat slot ids of positions 0..length-1 for one or many block tables."""
    num_blocks = (length + block_size - 1) // block_size
    offsets = torch.arange(block_size, device=block_table.device)
    slots = block_table[..., :num_blocks, None] * block_size + offsets
    return slots.flatten(-2)[..., :length]


def paged_attention(q: torch.Tensor, k_cache: KVStore, v_cache: KVStore,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, Hq, D] -> [T, Hq, D]. Keys/values for this step must already be written.

    Rows past the last sequence (padding) come out as zeros.
    """
    if q.is_cuda and not isinstance(k_cache, QuantizedKV):
        from inferd.kernels.attention_triton import paged_attention_cuda

        return paged_attention_cuda(q, k_cache, v_cache, meta, scale)
    if native_attention_supported(q, k_cache):
        return _native_attention(q, k_cache, v_cache, meta, scale)
    nd = meta.num_decodes
    if nd == meta.num_seqs:  # decode-only step: no per-sequence loop, no output scatter
        out = _decode_attention(q[:nd], k_cache, v_cache, meta, scale)
        return out if nd == q.shape[0] else torch.nn.functional.pad(out, (0, 0, 0, 0, 0, q.shape[0] - nd))
    # Zeros, not empty: padding rows must stay finite, since their K/V land in the null block
    # that masked-out positions of other sequences read (0 * NaN would poison them).
    out = torch.zeros_like(q)
    if nd:
        out[:nd] = _decode_attention(q[:nd], k_cache, v_cache, meta, scale)
    for s in range(nd, meta.num_seqs):
        lo, hi = meta.query_start[s], meta.query_start[s + 1]
        out[lo:hi] = _prefill_attention(q[lo:hi], k_cache, v_cache, meta.block_tables[s],
                                        meta.seq_lens[s], meta.block_size, scale,
                                        meta.sliding_window)
    return out


def native_attention_supported(q: torch.Tensor, k_cache: KVStore) -> bool:
    """Whether the fused CPU kernel serves this step: plain cache in q's dtype and a head layout
    it is compiled for; otherwise the gather + matmul/SDPA paths below run."""
    heads, head_dim = q.shape[1:]
    return (isinstance(k_cache, torch.Tensor) and k_cache.dtype == q.dtype
            and head_dim in NATIVE_HEAD_DIMS and 1 <= heads // k_cache.shape[-2] <= 8
            and cpu_ops.usable(q))


NATIVE_HEAD_DIMS = (8, 16, 32, 64, 128, 256)  # the head sizes csrc/cpu_ops.cpp is compiled for


def _native_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Every row, decode or prefill, attends on its own in the fused kernel: a row's result
    never depends on how its sequence was chunked or what else shares the step (and the
    kernel beat gather + matmul at every prompt length measured, 16 to 2048 tokens)."""
    tables, lens = meta.row_tables()
    n = lens.shape[0]
    out = torch.empty_like(q)
    out[n:].zero_()  # padding rows
    cpu_ops.ops().paged_attention_rows(out[:n], q[:n], k_cache, v_cache, tables, lens, scale,
                                       meta.sliding_window or 0)
    return out


def _gqa_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """q: [B, Hk, G*Q, D]; k, v: [B, Hk, L, D]; mask broadcastable to scores (True = hide).

    Softmax runs in fp32 whatever the activation dtype, which keeps bf16 close to the reference.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores.masked_fill_(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


# Decode contexts are padded to a multiple of this many positions, per sequence, so that the
# padded length (and hence every reduction's shape) depends only on the sequence itself and
# never on its batch companions: that is what keeps greedy decoding batch-invariant.
DECODE_BUCKET = 64


def _plan_decode(meta: AttentionMetadata) -> list[DecodeGroup]:
    """Group the decode rows by padded context length and precompute their slots and masks."""
    nd = meta.num_decodes
    bucket = -(-DECODE_BUCKET // meta.block_size) * meta.block_size  # whole blocks per bucket
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(meta.seq_lens[:nd]):
        buckets.setdefault(-(-n // bucket) * bucket, []).append(i)
    groups = []
    device = meta.block_tables.device
    for padded, rows in buckets.items():
        idx = torch.tensor(rows, device=device) if len(rows) < nd else None
        tables = meta.block_tables[:nd] if idx is None else meta.block_tables[idx]
        lens = meta.seq_lens_t[:nd] if idx is None else meta.seq_lens_t[idx]
        width = tables.shape[1] * meta.block_size
        if width < padded:  # tables are only as wide as the longest sequence needs
            tables = torch.nn.functional.pad(tables, (0, -(-(padded - width) // meta.block_size)))
        pos = torch.arange(padded, device=device)
        hide = pos[None, :] >= lens[:, None]
        if meta.sliding_window is not None:
            hide |= pos[None, :] < (lens[:, None] - meta.sliding_window)
        hide = hide[:, None, None, :]
        block_ids = tables[:, :padded // meta.block_size].reshape(-1)
        groups.append(DecodeGroup(idx, block_ids, hide, ~hide, padded))
    return groups


def _decode_attention(q: torch.Tensor, k_cache: KVStore, v_cache: KVStore,
                      meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """All single-token queries, grouped by padded context length; one batched call per group."""
    groups = meta.decode_groups()
    if len(groups) == 1:
        return _decode_group(q, k_cache, v_cache, groups[0], scale)
    out = torch.empty_like(q)
    for g in groups:
        out[g.rows] = _decode_group(q[g.rows], k_cache, v_cache, g, scale)
    return out


def _decode_group(q: torch.Tensor, k_cache: KVStore, v_cache: KVStore, group: DecodeGroup,
                  scale: float) -> torch.Tensor:
    n, heads, head_dim = q.shape
    kv_heads = k_cache.shape[-2]
    k = gather_kv_blocks(k_cache, group.block_ids).view(n, group.padded, kv_heads, head_dim)
    v = gather_kv_blocks(v_cache, group.block_ids).view(n, group.padded, kv_heads, head_dim)
    qg = q.reshape(n, kv_heads, heads // kv_heads, head_dim).to(k.dtype)  # [n, Hk, G, D]
    if q.dtype == torch.float32:
        o = _decode_attend_per_head(qg, k, v, group.hide, scale)
    else:
        o = torch.nn.functional.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2),
                                                             attn_mask=group.keep, scale=scale)
    return o.reshape(n, heads, head_dim).to(q.dtype)


def _decode_attend_per_head(qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hide: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """qg [n, Hk, G, D]; k, v [n, L, Hk, D] as gathered -> [n, Hk, G, D].

    fp32 SDPA on CPU reduces differently depending on the batch count, so fp32 uses explicit
    batched matmuls (batch entries independent: batch-invariant). One kv head at a time keeps
    every operand a plain strided matrix, which BLAS takes as it is; a [n, Hk, L, D] view would
    make matmul copy all of K and V first (10 ms a step at batch 32).
    """
    mask = hide[:, 0]  # [n, 1, L]
    outs = []
    for h in range(k.shape[2]):
        scores = torch.matmul(qg[:, h], k[:, :, h].transpose(1, 2)) * scale  # [n, G, L]
        scores.masked_fill_(mask, float("-inf"))
        outs.append(torch.matmul(torch.softmax(scores, dim=-1), v[:, :, h]))
    return torch.stack(outs, dim=1)


def _prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       block_table: torch.Tensor, seq_len: int, block_size: int, scale: float,
                       sliding_window: int | None) -> torch.Tensor:
    """A chunk of Q consecutive queries ending at position seq_len-1, over the cached context."""
    num_q, heads, head_dim = q.shape
    kv_heads = k_cache.shape[-2]
    slots = _context_slots(block_table, seq_len, block_size)
    k = gather_kv(k_cache, slots).transpose(0, 1)  # [Hk, L, D]
    v = gather_kv(v_cache, slots).transpose(0, 1)
    group = heads // kv_heads
    # [Hk, G, Q, D] flattened to [Hk, G*Q, D] so one matmul serves the whole group.
    qg = q.transpose(0, 1).reshape(kv_heads, group * num_q, head_dim).to(k.dtype)
    q_pos = torch.arange(seq_len - num_q, seq_len, device=q.device)
    k_pos = torch.arange(seq_len, device=q.device)
    hide = k_pos[None, :] > q_pos[:, None]  # [Q, L]
    if sliding_window is not None:
        hide |= k_pos[None, :] <= (q_pos[:, None] - sliding_window)
    hide = hide.repeat(group, 1)  # rows ordered (g, q), matching qg
    out = _gqa_attend(qg, k, v, hide, scale)  # [Hk, G*Q, D]
    return out.view(heads, num_q, head_dim).transpose(0, 1).to(q.dtype)
