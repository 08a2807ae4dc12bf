"""Paged attention against a dense reference: causal softmax attention over each sequence's own
keys, computed in float64 from the same values. CPU path always; CUDA (Triton) path on a GPU."""

from __future__ import annotations

import pytest
import torch

from inferd.kernels.attention import AttentionMetadata, paged_attention, write_kv

BLOCK = 16


def build_case(device: str, dtype: torch.dtype, q_lens: list[int], ctx_lens: list[int], heads=8,
               kv_heads=2, head_dim=64, window=None, seed=0, block=BLOCK):
    """Random sequences laid out in shuffled blocks; returns everything the kernels and the
    reference need. Sequences with q_len == 1 must come first (decode-first convention)."""
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block) for n in ctx_lens) + 4
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    k_cache = torch.zeros(num_blocks, block, kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    tables, slots, keys, vals, qs = [], [], [], [], []
    for q_len, n in zip(q_lens, ctx_lens, strict=True):
        blocks = [perm.pop() for _ in range(-(-n // block))]
        tables.append(blocks)
        k = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype)
        v = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype)
        keys.append(k)
        vals.append(v)
        pos = torch.arange(n)
        slot = torch.tensor(blocks)[pos // block] * block + pos % block
        # Cached prefix written directly; this step's tokens are written by write_kv below.
        k_cache.view(-1, kv_heads, head_dim)[slot[:n - q_len].to(device)] = k[:n - q_len].to(device)
        v_cache.view(-1, kv_heads, head_dim)[slot[:n - q_len].to(device)] = v[:n - q_len].to(device)
        slots.append(slot[n - q_len:])
        qs.append(torch.randn(q_len, heads, head_dim, generator=g).to(dtype))
    width = max(len(t) for t in tables)
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots).to(device),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device),
        seq_lens=ctx_lens, query_lens=q_lens, seq_lens_t=torch.tensor(ctx_lens, device=device),
        query_start=starts, block_size=block, max_seq_len=max(ctx_lens),
        num_decodes=sum(1 for q in q_lens if q == 1), sliding_window=window)
    new_k = torch.cat([k[n - q:] for k, q, n in zip(keys, q_lens, ctx_lens, strict=True)]).to(device)
    new_v = torch.cat([v[n - q:] for v, q, n in zip(vals, q_lens, ctx_lens, strict=True)]).to(device)
    write_kv(new_k, new_v, k_cache, v_cache, meta.slot_mapping)
    return torch.cat(qs).to(device), k_cache, v_cache, meta, keys, vals, qs


def reference(qs, keys, vals, scale, window=None):
    outs = []
    for q, k, v in zip(qs, keys, vals, strict=True):
        q, k, v = q.double(), k.double(), v.double()
        n, q_len = k.shape[0], q.shape[0]
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        qp = torch.arange(n - q_len, n)[:, None]
        kp = torch.arange(n)[None, :]
        hide = kp > qp
        if window:
            hide |= kp <= qp - window
        scores = scores.masked_fill(hide, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
    return torch.cat(outs)


CASES = [
    ([1, 1, 1], [5, 40, 17]),  # decodes only, ragged lengths
    ([7], [7]),  # one prefill from scratch
    ([1, 1, 12, 30], [33, 1, 50, 30]),  # decodes + chunk over a cached prefix + fresh prefill
]


@pytest.mark.parametrize("q_lens,ctx_lens", CASES + [([1] * 5, [3, 64, 65, 130, 200])])
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_cpu_paged_attention_matches_dense_reference(q_lens, ctx_lens, window, dtype, bound, cpu_kernels):
    q, kc, vc, meta, keys, vals, qs = build_case("cpu", dtype, q_lens, ctx_lens, window=window)
    out = paged_attention(q, kc, vc, meta, 0.125)
    ref = reference(qs, keys, vals, 0.125, window)
    assert (out.double() - ref).abs().max().item() < bound


@pytest.mark.parametrize("block", [8, 32, 48, 128])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_cpu_decode_any_block_size_and_padding_rows(block, dtype, bound, cpu_kernels):
    """Decode buckets are whole blocks for any block size; rows past the last sequence are zeros."""
    q, kc, vc, meta, keys, vals, qs = build_case("cpu", dtype, [1] * 4, [3, 64, 65, 200], block=block)
    padded_q = torch.cat([q, torch.randn(3, *q.shape[1:]).to(dtype)])
    out = paged_attention(padded_q, kc, vc, meta, 0.125)
    assert (out[:4].double() - reference(qs, keys, vals, 0.125)).abs().max().item() < bound
    assert torch.equal(out[4:], torch.zeros_like(out[4:]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the Triton kernel runs only there")
@pytest.mark.parametrize("q_lens,ctx_lens", CASES)
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_cuda_paged_attention_matches_dense_reference(q_lens, ctx_lens, window, dtype, bound):
    q, kc, vc, meta, keys, vals, qs = build_case("cuda", dtype, q_lens, ctx_lens, window=window)
    out = paged_attention(q, kc, vc, meta, 0.125)
    ref = reference(qs, keys, vals, 0.125, window)
    assert (out.double().cpu() - ref).abs().max().item() < bound
