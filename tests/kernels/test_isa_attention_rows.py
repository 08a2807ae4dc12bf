"""The avx2 level's own kernels (csrc/attention_avx2.h, csrc/rows_mm_avx2.h, the AVX2 loop of
silu_and_mul) against the generic level's scalar code and against plain torch references in
float64, plus batch invariance on the avx2 level.

Tolerances, element by element, with `cond` the sum of the absolute terms behind the element
(sum_i p_i |v_i| for attention, |x| @ |W|.T for the matmuls), the scale of any float rounding:
  fp32 attention      |out - ref| <= 1e-5 * cond              (fp32 sums: ~1e-7 * cond)
  bf16 outputs        |out - ref| <= 2^-8 |ref| + 1e-5 * cond  (the output's bf16 rounding, 2^-9)
  avx2 vs generic     fp32 within 2e-5 * cond; bf16 at most one bf16 ulp (2^-7 relative) apart,
                      the two paths summing in different orders before the same rounding.
Batch invariance is bitwise: a row alone equals the same row inside a batch.
"""

from __future__ import annotations

import platform

import pytest
import torch

from inferd.kernels import cpu_isa, cpu_ops
from tests.kernels.test_cpu_ops import _decode_case

BF16_ULP = 2.0 ** -7


def _level_ops(name: str):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the avx2 level exists on x86-64 only")
    level = cpu_isa.level_named(name)
    if not cpu_isa.supported(level):
        missing = ", ".join(sorted(level.required - cpu_isa.cpu_flags()))
        pytest.skip(f"this CPU lacks the {name} level's instructions ({missing})")
    ops = cpu_ops.ops_for(name)
    if ops is None:
        pytest.skip(f"the {name} kernels did not build here (their .failed.log in the torch "
                    f"extensions cache has the compiler's output)")
    return ops


@pytest.fixture(scope="module")
def avx2():
    return _level_ops("avx2")


@pytest.fixture(scope="module")
def generic():
    return _level_ops("generic")


# ---------------------------------------------------------------- paged attention


def _attention_reference(q, keys, vals, scale, window):
    """float64 softmax attention of each row over positions [max(0, n - window), n) of its
    sequence; also the per-element rounding scale sum_i p_i |v_i|."""
    outs, conds = [], []
    for i, (k, v) in enumerate(zip(keys, vals, strict=True)):
        n = k.shape[0]
        lo = max(0, n - window) if window else 0
        k, v = k[lo:].double(), v[lo:].double()
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        p = (torch.einsum("hd,khd->hk", q[i].double(), k) * scale).softmax(-1)
        outs.append(torch.einsum("hk,khd->hd", p, v))
        conds.append(torch.einsum("hk,khd->hd", p, v.abs()))
    return torch.stack(outs), torch.stack(conds)


def _run_attention(ops, q, kc, vc, tables, lens, scale, window):
    out = torch.empty_like(q)
    ops.paged_attention_rows(out, q, kc, vc, tables, lens, scale, window or 0)
    return out


def _check_attention(out, ref, cond, dtype):
    err = (out.double() - ref).abs()
    if dtype == torch.float32:
        bound = 1e-5 * cond
    else:
        bound = 2.0 ** -8 * ref.abs() + 1e-5 * cond
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


def _check_paths_agree(a, b, dtype, cond):
    diff = (a.double() - b.double()).abs()
    if dtype == torch.float32:
        assert bool((diff <= 2e-5 * cond).all()), f"worst {(diff / cond).max().item():.3g} of cond"
    else:
        bound = BF16_ULP * torch.maximum(a.double().abs(), b.double().abs()) + 1e-6 * cond
        assert bool((diff <= bound).all())
        assert (a == b).double().mean().item() > 0.9  # mostly the very same bf16 value


LENS = [1, 7, 8, 9, 16, 17, 33, 100]  # within a chunk, chunk and block boundaries, several blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("group", range(1, 9))
def test_paged_attention_rows_avx2_matches_generic_and_reference(avx2, generic, dtype, dim, group):
    kv_heads = 1 + group % 3
    block = 16 if (dim + group) % 2 == 0 else 12  # 12: positions chunks of 8 end mid-block
    window = None if group % 2 else 13  # a window that is neither a block nor a chunk multiple
    q, kc, vc, tables, lens, keys, vals = _decode_case(dtype, LENS, group * kv_heads, kv_heads, dim, block,
                                                       seed=dim * 10 + group)
    scale = dim ** -0.5
    ref, cond = _attention_reference(q, keys, vals, scale, window)
    fast = _run_attention(avx2, q, kc, vc, tables, lens, scale, window)
    slow = _run_attention(generic, q, kc, vc, tables, lens, scale, window)
    _check_attention(fast, ref, cond, dtype)
    _check_attention(slow, ref, cond, dtype)
    _check_paths_agree(fast, slow, dtype, cond)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [None, 20, 64])
def test_paged_attention_rows_avx2_long_sequences_and_wide_heads(avx2, generic, dtype, window):
    """Head size 256 and sequences of several hundred positions, block size 32."""
    q, kc, vc, tables, lens, keys, vals = _decode_case(dtype, [5, 64, 257, 700], 8, 2, 256, 32, seed=7)
    ref, cond = _attention_reference(q, keys, vals, 1 / 16, window)
    fast = _run_attention(avx2, q, kc, vc, tables, lens, 1 / 16, window)
    _check_attention(fast, ref, cond, dtype)
    _check_paths_agree(fast, _run_attention(generic, q, kc, vc, tables, lens, 1 / 16, window), dtype, cond)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (8, 1, 128), (6, 3, 16), (16, 2, 32)])
def test_paged_attention_rows_avx2_rows_do_not_depend_on_batch(avx2, dtype, heads, kv_heads, dim):
    """A batch of 16 runs whole sequences per task, a single row one task per kv head: every row
    must come out bitwise the same either way."""
    lens = [37, 200, 5, 64, 1, 16, 17, 99] * 2
    q, kc, vc, tables, seq_lens, _, _ = _decode_case(dtype, lens, heads, kv_heads, dim, 16, seed=3)
    together = _run_attention(avx2, q, kc, vc, tables, seq_lens, dim ** -0.5, 0)
    windowed = _run_attention(avx2, q, kc, vc, tables, seq_lens, dim ** -0.5, 24)
    for i in range(len(lens)):
        one = slice(i, i + 1)
        alone = _run_attention(avx2, q[one], kc, vc, tables[one], seq_lens[one], dim ** -0.5, 0)
        assert torch.equal(alone, together[one]), f"row {i}"
        alone = _run_attention(avx2, q[one], kc, vc, tables[one], seq_lens[one], dim ** -0.5, 24)
        assert torch.equal(alone, windowed[one]), f"row {i} (window)"


# ---------------------------------------------------------------- int8 / fp8 row-major matmuls


def _rows_mm_case(kind: str, n: int, k: int, rows: int, scale_dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    if kind == "int8":
        w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        wf = w.double()
    else:
        w = (torch.randn(n, k, generator=g) * 40).to(torch.float8_e4m3fn)  # normals and subnormals
        wf = w.float().double()
    scale = (torch.rand(n, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    ref = x.double() @ (wf * scale.double()[:, None]).T
    cond = x.double().abs() @ (wf.abs() * scale.double()[:, None]).T
    return x, w, scale, ref, cond


def _rows_mm(ops, kind, x, w, scale):
    return (ops.int8_rows_mm if kind == "int8" else ops.fp8_rows_mm)(x, w, scale)


SHAPES = [(40, 96), (37, 101), (64, 7), (24, 576), (200, 1536)]  # k % 8 = 0, 5, 7, 0, 0; n % 8 = 0, 5, 0


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_rows_mm_avx2_matches_generic_and_reference(avx2, generic, kind, scale_dtype, n, k, rows):
    x, w, scale, ref, cond = _rows_mm_case(kind, n, k, rows, scale_dtype, seed=n * k + rows)
    fast = _rows_mm(avx2, kind, x, w, scale)
    slow = _rows_mm(generic, kind, x, w, scale)
    assert fast.dtype == torch.bfloat16 and fast.shape == (rows, n)
    for y in (fast, slow):
        err = (y.double() - ref).abs()
        assert bool((err <= 2.0 ** -8 * ref.abs() + 1e-5 * cond).all()), f"worst {(err / cond).max().item():.3g}"
    diff = (fast.double() - slow.double()).abs()
    bound = BF16_ULP * torch.maximum(fast.double().abs(), slow.double().abs()) + 1e-5 * cond
    assert bool((diff <= bound).all())


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("n,k", [(37, 101), (200, 1536)])
def test_rows_mm_avx2_rows_do_not_depend_on_batch(avx2, kind, n, k):
    """Batches of 2..9 rows run other passes (weight rows per pass, register tiles) than one row:
    each row's output must be bitwise the same."""
    x, w, scale, _, _ = _rows_mm_case(kind, n, k, 9, torch.bfloat16, seed=11)
    alone = torch.cat([_rows_mm(avx2, kind, x[i:i + 1], w, scale) for i in range(9)])
    for rows in range(2, 10):
        assert torch.equal(_rows_mm(avx2, kind, x[:rows], w, scale), alone[:rows]), f"{rows} rows"


def test_rows_mm_avx2_takes_fp8_as_raw_bytes(avx2):
    x, w, scale, _, _ = _rows_mm_case("fp8", 40, 96, 3, torch.float32, seed=5)
    assert torch.equal(avx2.fp8_rows_mm(x, w, scale), avx2.fp8_rows_mm(x, w.view(torch.uint8), scale))


# ---------------------------------------------------------------- silu_and_mul


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,inter", [(1, 1536), (7, 1536), (3, 40), (2, 13)])
def test_silu_and_mul_avx2_matches_generic(avx2, generic, dtype, rows, inter):
    gu = (torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4).to(dtype)
    fast, slow = avx2.silu_and_mul(gu), generic.silu_and_mul(gu)
    assert fast.shape == slow.shape == (rows, inter) and fast.dtype == dtype
    if dtype == torch.bfloat16:  # exp8 vs std::exp: at most one bf16 ulp apart, mostly equal
        diff = (fast.float() - slow.float()).abs()
        assert bool((diff <= BF16_ULP * torch.maximum(fast.float().abs(), slow.float().abs())).all())
        assert (fast == slow).float().mean().item() > 0.99
    else:
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
