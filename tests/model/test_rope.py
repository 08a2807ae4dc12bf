"""RoPE: our sign-folded, q-and-k-together form is bitwise HF's rotate-half form."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from inferd.model.rope import RotaryEmbedding, apply_rope, rope_inv_freq


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_apply_rope_is_bitwise_hf(dtype, scaling):
    torch.manual_seed(0)
    head_dim, max_pos = 64, 512
    rotary = RotaryEmbedding(head_dim, max_pos, 10000.0, scaling, 64)
    positions = torch.tensor([0, 1, 5, 63, 64, 300, 511])
    q = torch.randn(len(positions), 6, head_dim).to(dtype)
    k = torch.randn(len(positions), 2, head_dim).to(dtype)
    rope = rotary.tables(positions, dtype)
    got = apply_rope(torch.cat([q, k], dim=1), rope)

    inv_freq, scale = rope_inv_freq(head_dim, 10000.0, scaling, 64)
    freqs = positions[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
    # HF layout: [batch, heads, seq, dim]; cos/sin [batch, seq, dim].
    ref_q, ref_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    assert torch.equal(got[:, :6], ref_q[0].transpose(0, 1))
    assert torch.equal(got[:, 6:], ref_k[0].transpose(0, 1))
