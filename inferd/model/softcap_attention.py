"""Attention with tanh soft-capped scores (Gemma 2 style `attn_logit_softcapping`), per sequence.

The paged kernels in inferd/kernels do not cap scores; this plain-torch path serves the layers
that ask for it, correct first (one sequence at a time). It reads the same paged KV cache.
"""

from __future__ import annotations

import torch

from inferd.kernels.attention import AttentionMetadata, KVStore, gather_kv


def softcapped_attention(q: torch.Tensor, k_cache: KVStore, v_cache: KVStore, meta: AttentionMetadata,
                         scale: float, softcap: float) -> torch.Tensor:
    """q [T, Hq, D] -> [T, Hq, D]: softmax(cap * tanh(q·k * scale / cap)) · v, causal and windowed.

    Keys and values of this step must already be written; padding rows come out as zeros.
    """
    out = torch.zeros_like(q)
    heads, kv_heads = q.shape[1], k_cache.shape[-2]
    bs = meta.block_size
    for s in range(meta.num_seqs):
        start, end, length = meta.query_start[s], meta.query_start[s + 1], meta.seq_lens[s]
        blocks = meta.block_tables[s, :(length + bs - 1) // bs]
        slots = (blocks[:, None] * bs + torch.arange(bs, device=q.device)).flatten()[:length]
        k = gather_kv(k_cache, slots).to(q.dtype).repeat_interleave(heads // kv_heads, dim=1)  # [L, Hq, D]
        v = gather_kv(v_cache, slots).to(q.dtype).repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k).float() * scale
        scores = torch.tanh(scores / softcap) * softcap
        q_pos = torch.arange(length - (end - start), length, device=q.device)
        k_pos = torch.arange(length, device=q.device)
        hide = k_pos[None, :] > q_pos[:, None]
        if meta.sliding_window is not None:
            hide |= k_pos[None, :] <= q_pos[:, None] - meta.sliding_window
        probs = torch.softmax(scores.masked_fill(hide, float("-inf")), dim=-1).to(q.dtype)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v)
    return out
