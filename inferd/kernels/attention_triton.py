"""CUDA paged attention: a Triton kernel for decode tokens, gather + SDPA for prefill chunks.

Decode (one query per sequence) is the hot path at serving time: one program per (sequence,
query head) walks that sequence's block table with an online softmax in fp32, so no context is
ever gathered or padded and each result is independent of the rest of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from inferd.kernels.attention import AttentionMetadata, _context_slots


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, scale,
                         stride_qt, stride_qh, stride_tb, stride_kb, stride_ks, stride_kh,
                         stride_ot, stride_oh, window,
                         GROUP: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    seq_len = tl.load(lens_ptr + seq).to(tl.int32)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, BLOCK)
    q = tl.load(q_ptr + seq * stride_qt + head * stride_qh + offs_d).to(tl.float32)
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    lo = 0
    if window > 0:
        lo = tl.maximum(seq_len - window, 0) // BLOCK
    for b in range(lo, tl.cdiv(seq_len, BLOCK)):
        block_id = tl.load(tables_ptr + seq * stride_tb + b).to(tl.int64)
        pos = b * BLOCK + offs_s
        valid = pos < seq_len
        if window > 0:
            valid = valid & (pos >= seq_len - window)
        base = block_id * stride_kb + offs_s[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :]
        k = tl.load(k_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * scale
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    out = acc / l_i
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


def paged_paged_attention_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None) -> torch.Tensor:
    """q: [S, Hq, D] (one query per sequence) -> [S, Hq, D]."""
    num_seqs, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    out = torch.empty_like(q)
    tables = block_tables.contiguous()
    _paged_decode_kernel[(num_seqs, heads)](
        q, k_cache, v_cache, out, tables, seq_lens.contiguous(), scale,
        q.stride(0), q.stride(1), tables.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), out.stride(0), out.stride(1), sliding_window or 0,
        GROUP=heads // kv_heads, BLOCK=k_cache.shape[1], HEAD_DIM=head_dim)
    return out


def paged_attention_cuda(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         meta: AttentionMetadata, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if nd:
        out[:nd] = paged_paged_attention_rows(q[:nd], k_cache, v_cache, meta.block_tables[:nd],
                                          meta.seq_lens_t[:nd], scale, meta.sliding_window)
    kv_heads, head_dim = k_cache.shape[-2:]
    for s in range(nd, meta.num_seqs):
        lo, hi = meta.query_start[s], meta.query_start[s + 1]
        seq_len, num_q = meta.seq_lens[s], hi - lo
        slots = _context_slots(meta.block_tables[s], seq_len, meta.block_size)
        k = k_cache.view(-1, kv_heads, head_dim)[slots].transpose(0, 1)  # [Hk, L, D]
        v = v_cache.view(-1, kv_heads, head_dim)[slots].transpose(0, 1)
        q_pos = torch.arange(seq_len - num_q, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        allow = k_pos[None, :] <= q_pos[:, None]  # causal, aligned to the end of the context
        if meta.sliding_window is not None:
            allow &= k_pos[None, :] > (q_pos[:, None] - meta.sliding_window)
        o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1), k, v, attn_mask=allow,
                                           scale=scale, enable_gqa=True)
        out[lo:hi] = o.transpose(0, 1)
    return out
