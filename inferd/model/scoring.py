"""Score whole sequences with our model outside the engine (quality evaluation, tests).

One sequence at a time through a scratch paged KV cache: the same model code path the engine
uses, with none of its scheduling.
"""

from __future__ import annotations

import torch

from inferd.kernels.attention import AttentionMetadata


@torch.inference_mode()
def sequence_logits(model, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """Logits [T, V] (fp32) at every position of one sequence."""
    cfg = model.config
    p = next(model.parameters())
    dtype = p.dtype if p.is_floating_point() else torch.float32
    dev = p.device
    num_blocks = len(ids) // block_size + 2
    kv = [(torch.zeros(num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=dtype, device=dev),
           torch.zeros(num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=dtype, device=dev))
          for _ in range(cfg.num_layers)]
    t = len(ids)
    # Block 0 is the engine's null block; use blocks 1.. as a real sequence would.
    meta = AttentionMetadata(
        slot_mapping=torch.arange(block_size, block_size + t, device=dev),
        block_tables=torch.arange(1, num_blocks, device=dev)[None],
        seq_lens=[t], query_lens=[t], seq_lens_t=torch.tensor([t], device=dev),
        query_start=[0, t], block_size=block_size, max_seq_len=t, num_decodes=1 if t == 1 else 0,
        sliding_window=cfg.sliding_window)
    hidden = model(torch.tensor(ids, device=dev), torch.arange(t, device=dev), kv, meta)
    return model.compute_logits(hidden)
