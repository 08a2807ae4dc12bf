"""The fused CPU kernels (inferd/kernels/csrc/cpu_ops.cpp) against the torch ops they replace.

bf16 results must be bitwise those of the torch formulation (which is HF's), except where an
exp is involved (silu, tanh-gelu), which may differ by one bf16 ulp; fp32 results within a few ulps.
"""

from __future__ import annotations

import pytest
import torch

from inferd.kernels import cpu_ops
from inferd.kernels.attention import write_kv
from inferd.model.rope import RotaryEmbedding, apply_rope
from tests.kernels.test_attention import reference

DTYPES = [torch.float32, torch.bfloat16]


def test_native_kernels_build_on_this_machine():
    """The fast path must really be there: a silent fallback would only show up as lost speed."""
    assert cpu_ops.available()


def _hf_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", [(1, 576), (5, 576), (3, 100), (40, 64)])
def test_rms_norm_and_add_rms_norm(dtype, rows, size):
    g = torch.Generator().manual_seed(rows * size)
    x = torch.randn(rows, size, generator=g).to(dtype)
    res = torch.randn(rows, size, generator=g).to(dtype)
    w = torch.randn(size, generator=g).to(dtype)
    out = torch.empty_like(x)
    cpu_ops.ops().rms_norm(out, x, w, 1e-5)
    _close(out, _hf_rms_norm(x, w, 1e-5), dtype)

    summed = res + x
    xx, rr = x.clone(), res.clone()
    cpu_ops.ops().add_rms_norm(xx, rr, w, 1e-5)
    assert torch.equal(rr, summed)  # the residual add rounds exactly as torch's add
    _close(xx, _hf_rms_norm(summed, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", [(1, 640), (5, 576), (3, 100), (40, 16)])
def test_gemma_norm_from_an_fp32_one_plus_w_weight(dtype, rows, size):
    """Given 1 + w in fp32, the norms compute Gemma's (normed * (1 + w.float())).to(dtype)."""
    from inferd.model.layers import OffsetRMSNorm

    g = torch.Generator().manual_seed(rows + size)
    norm = OffsetRMSNorm(size, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(size, generator=g) * 0.5)
    x = torch.randn(rows, size, generator=g).to(dtype)
    res = torch.randn(rows, size, generator=g).to(dtype)
    w = norm.native_weight()
    assert w.dtype == torch.float32 and torch.equal(w, 1.0 + norm.weight.float())
    out = torch.empty_like(x)
    cpu_ops.ops().rms_norm(out, x, w, 1e-6)
    _close(out, norm(x), dtype)
    xx, rr = x.clone(), res.clone()
    cpu_ops.ops().add_rms_norm(xx, rr, w, 1e-6)
    assert torch.equal(rr, res + x)
    _close(xx, norm(res + x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 2048), (7, 1536), (3, 40)])
def test_gelu_tanh_and_mul(dtype, rows, inter):
    gu = (torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4).to(dtype)
    gate, up = gu.split(inter, dim=-1)
    ref = torch.nn.functional.gelu(gate, approximate="tanh") * up
    out = cpu_ops.ops().gelu_tanh_and_mul(gu)
    assert out.shape == ref.shape and out.dtype == dtype
    # g / (1 + exp(-2z)) against torch's 0.5 g (1 + tanh(z)): the last fp32 bits, and far left
    # (gate < -4) torch's cancellation in 1 + tanh(z), a few 2**-24 * |gate * up| (then 0).
    diff = (out.float() - ref.float()).abs()
    noise = (gate.float() * up.float()).abs() * 2.0 ** -21
    if dtype == torch.bfloat16:
        ulp = ref.float().abs() * 2.0 ** -7
        assert bool((diff <= torch.maximum(ulp, noise)).all())
        assert (out == ref)[gate > -4].float().mean().item() > 0.99
    else:
        assert bool((diff <= torch.maximum(ref.float().abs() * 1e-5, noise)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 1536), (7, 1536), (3, 40)])
def test_silu_and_mul(dtype, rows, inter):
    gu = (torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4).to(dtype)
    gate, up = gu.split(inter, dim=-1)
    ref = torch.nn.functional.silu(gate) * up
    out = cpu_ops.ops().silu_and_mul(gu)
    assert out.shape == ref.shape and out.dtype == dtype
    if dtype == torch.bfloat16:  # exp may differ in its last fp32 bit: at most one bf16 ulp apart
        diff = (out.float() - ref.float()).abs()
        ulp = ref.float().abs().clamp_min(1e-30) * 2.0 ** -7
        assert bool((diff <= ulp).all())
        assert (out == ref).float().mean().item() > 0.99
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_write_kv_is_bitwise_rope_then_write(dtype):
    heads, kv_heads, dim, t = 9, 3, 64, 6
    g = torch.Generator().manual_seed(1)
    rotary = RotaryEmbedding(dim, 512, 10000.0, None, 512)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    rope = rotary.tables(torch.tensor([0, 5, 17, 100, 200, 3]), dtype)
    slots = torch.tensor([3, 20, 40, -1, 77, 100])  # -1: this row stores nothing
    k_cache = torch.zeros(8, 16, kv_heads, dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    q = cpu_ops.ops().rope_write_kv(qkv, rope.cos, rope.sin_signed, k_cache, v_cache, slots, heads)

    qk = apply_rope(qkv[:, :(heads + kv_heads) * dim].view(t, heads + kv_heads, dim), rope)
    v = qkv[:, (heads + kv_heads) * dim:].view(t, kv_heads, dim)
    keep = slots >= 0
    ref_k, ref_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    write_kv(qk[keep, heads:], v[keep], ref_k, ref_v, slots[keep])
    assert torch.equal(q, qk[:, :heads])
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [False, True], ids=["qwen3-norm", "gemma-norm"])
def test_norm_rope_write_kv_is_bitwise_qk_norm_then_rope_then_write(dtype, offset):
    """qk-norm as the Python layer computes it (each head normed, then rotated) in one pass."""
    from inferd.model.layers import OffsetRMSNorm, RMSNorm

    heads, kv_heads, dim, t = 4, 1, 256, 5
    g = torch.Generator().manual_seed(2)
    norms = [(OffsetRMSNorm if offset else RMSNorm)(dim, 1e-6).to(dtype) for _ in range(2)]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(torch.randn(dim, generator=g) * 0.3 + (0 if offset else 1))
    rotary = RotaryEmbedding(dim, 512, 10000.0, None, 512)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    rope = rotary.tables(torch.tensor([0, 5, 17, 100, 3]), dtype)
    slots = torch.tensor([3, 20, -1, 77, 100])
    k_cache = torch.zeros(8, 16, kv_heads, dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    q = cpu_ops.ops().norm_rope_write_kv(qkv, norms[0].native_weight(), norms[1].native_weight(), 1e-6, rope.cos,
                                         rope.sin_signed, k_cache, v_cache, slots, heads)

    qk = qkv[:, :(heads + kv_heads) * dim].view(t, heads + kv_heads, dim)
    qk = apply_rope(torch.cat((norms[0](qk[:, :heads]), norms[1](qk[:, heads:])), dim=1), rope)
    v = qkv[:, (heads + kv_heads) * dim:].view(t, kv_heads, dim)
    keep = slots >= 0
    ref_k, ref_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    write_kv(qk[keep, heads:], v[keep], ref_k, ref_v, slots[keep])
    _close(q, qk[:, :heads], dtype)
    _close(k_cache, ref_k, dtype)
    assert torch.equal(v_cache, ref_v)


def test_rope_write_kv_rejects_a_slot_outside_the_cache():
    k_cache = torch.zeros(2, 4, 1, 8)
    qkv, cos = torch.randn(1, 24), torch.ones(1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu_ops.ops().rope_write_kv(qkv, cos, cos, k_cache, k_cache.clone(), torch.tensor([8]), 1)


def _decode_case(dtype, lens, heads, kv_heads, dim, block, seed=0):
    """One query row per sequence; each sequence's K/V rows in blocks scattered over the pool in
    shuffled order (block 0 never used, so a wrong table entry reads garbage, not a neighbour)."""
    g = torch.Generator().manual_seed(seed)
    width = max(-(-n // block) for n in lens)
    num_blocks = len(lens) * width + 1
    k_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=g).to(dtype)
    tables = (torch.randperm(num_blocks - 1, generator=g)[:len(lens) * width] + 1).view(len(lens), width)
    q = torch.randn(len(lens), heads, dim, generator=g).to(dtype)
    keys, vals = [], []
    for s, n in enumerate(lens):
        pos = torch.arange(n)
        slots = tables[s][pos // block] * block + pos % block
        keys.append(k_cache.view(-1, kv_heads, dim)[slots])
        vals.append(v_cache.view(-1, kv_heads, dim)[slots])
    return q, k_cache, v_cache, tables.contiguous(), torch.tensor(lens), keys, vals


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("heads,kv_heads,dim,block", [
    (9, 3, 64, 16), (8, 1, 128, 32), (4, 4, 32, 8), (6, 2, 8, 16), (16, 2, 64, 24), (2, 2, 256, 16)])
@pytest.mark.parametrize("window", [None, 20])
def test_paged_attention_rows_matches_dense_reference(dtype, bound, heads, kv_heads, dim, block, window):
    lens = [1, 15, 16, 17, 40, 130]
    q, kc, vc, tables, seq_lens, keys, vals = _decode_case(dtype, lens, heads, kv_heads, dim, block)
    out = torch.empty_like(q)
    scale = dim ** -0.5
    cpu_ops.ops().paged_attention_rows(out, q, kc, vc, tables, seq_lens, scale, window or 0)
    ref = reference([q[i:i + 1] for i in range(len(lens))], keys, vals, scale, window)
    assert (out.double() - ref).abs().max().item() < bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_rows_do_not_depend_on_batch_companions(dtype):
    """Small batches split work by kv head, large ones by sequence: results must be bitwise equal."""
    lens = [37, 200, 5, 64] * 4
    q, kc, vc, tables, seq_lens, _, _ = _decode_case(dtype, lens, 9, 3, 64, 16, seed=3)
    together = torch.empty_like(q)
    cpu_ops.ops().paged_attention_rows(together, q, kc, vc, tables, seq_lens, 0.125, 0)
    for i in range(len(lens)):
        alone = torch.empty_like(q[i:i + 1])
        cpu_ops.ops().paged_attention_rows(alone, q[i:i + 1], kc, vc, tables[i:i + 1], seq_lens[i:i + 1], 0.125, 0)
        assert torch.equal(alone, together[i:i + 1])


def test_paged_attention_rows_rejects_bad_tables_instead_of_reading_wild_memory():
    q, kc, vc, tables, seq_lens, _, _ = _decode_case(torch.float32, [20, 30], 4, 2, 64, 16)
    out = torch.empty_like(q)
    bad = tables.clone()
    bad[1, 0] = kc.shape[0] + 5
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu_ops.ops().paged_attention_rows(out, q, kc, vc, bad, seq_lens, 0.125, 0)
    with pytest.raises(RuntimeError, match="block table holds"):
        cpu_ops.ops().paged_attention_rows(out, q, kc, vc, tables, torch.tensor([20, 999]), 0.125, 0)
    with pytest.raises(RuntimeError, match="only float32 and bfloat16"):
        cpu_ops.ops().paged_attention_rows(out.half(), q.half(), kc.half(), vc.half(), tables, seq_lens, 0.125, 0)
