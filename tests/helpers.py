"""Small helpers the tests share: run our model on one prompt without the engine's scheduler."""

from __future__ import annotations

import torch

from inferd.kernels.attention import AttentionMetadata


def forward_logits(model, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """All-position logits [T, V] from our model for one sequence, through a scratch paged cache."""
    cfg = model.config
    num_blocks = len(ids) // block_size + 2
    p = next(model.parameters())
    kv = [(torch.zeros(num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype, device=p.device),
           torch.zeros(num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype, device=p.device))
          for _ in range(cfg.num_layers)]
    t = len(ids)
    # Block 0 is the engine's null block; use blocks 1.. as a real sequence would.
    table = torch.arange(1, num_blocks, device=p.device)[None]
    meta = AttentionMetadata(
        slot_mapping=torch.arange(block_size, block_size + t, device=p.device), block_tables=table,
        seq_lens=[t], query_lens=[t], seq_lens_t=torch.tensor([t], device=p.device),
        query_start=[0, t], block_size=block_size, max_seq_len=t, num_decodes=1 if t == 1 else 0,
        sliding_window=cfg.sliding_window)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids, device=p.device), torch.arange(t, device=p.device), kv, meta)
        return model.compute_logits(hidden)
