"""BlockPool: allocation, prefix hits, eviction order and integrity, with no tensors involved."""

from __future__ import annotations

import pytest

from inferd.engine import kv_cache
from inferd.engine.kv_cache import NULL_BLOCK, BlockPool
from inferd.engine.sequence import Request, Sequence
from inferd.sampling_params import SamplingParams


def make_seq(tokens: list[int], seq_id: int = 0, **params) -> Sequence:
    return Sequence(seq_id, Request(str(seq_id), None, tokens, SamplingParams(**params)), 0)


def compute_all(pool: BlockPool, seq: Sequence) -> None:
    """What the engine does after a prefill: allocate, mark computed, register full blocks."""
    assert pool.allocate(seq, seq.num_tokens - seq.num_computed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    pool.register_full_blocks(seq)


def test_allocate_and_free_returns_every_block():
    pool = BlockPool(10, 4)
    seq = make_seq(list(range(10)))
    assert pool.allocate(seq, 10)
    assert len(seq.block_table) == 3 and NULL_BLOCK not in seq.block_table
    assert pool.num_free_blocks == 6
    pool.free_seq(seq)
    assert pool.num_free_blocks == 9
    pool.check_integrity()


def test_allocation_fails_cleanly_when_short():
    pool = BlockPool(3, 4)
    seq = make_seq(list(range(12)))
    assert not pool.allocate(seq, 12)
    assert seq.block_table == [] and pool.num_free_blocks == 2


def test_prefix_hit_reuses_full_blocks_only():
    pool = BlockPool(20, 4)
    a = make_seq(list(range(10)), 0)
    compute_all(pool, a)
    b = make_seq(list(range(10)) + [99, 98], 1)
    reused = pool.match_prefix(b)
    assert reused == 8  # two full blocks; the partial third block is not shared
    assert b.block_table == a.block_table[:2]
    assert pool.ref_counts[a.block_table[0]] == 2
    pool.check_integrity()


def test_match_always_leaves_one_token_to_compute():
    pool = BlockPool(20, 4)
    a = make_seq(list(range(8)), 0)
    compute_all(pool, a)
    b = make_seq(list(range(8)), 1)
    assert pool.match_prefix(b) == 4  # not 8: the last token's logits are needed


def test_freed_blocks_stay_cached_until_evicted_lru():
    pool = BlockPool(5, 2)  # 4 usable blocks
    a = make_seq([1, 2, 3, 4], 0)
    compute_all(pool, a)
    pool.free_seq(a)
    b = make_seq([1, 2, 3, 4, 5], 1)
    assert pool.match_prefix(b) == 4  # still cached after a was freed
    pool.free_seq(b)
    # Fill the pool with unrelated sequences: the cached blocks get evicted, oldest first.
    c = make_seq([7, 7, 7, 7, 7, 7, 7, 7], 2)
    compute_all(pool, c)
    d = make_seq([1, 2, 3, 4, 5], 3)
    assert pool.match_prefix(d) == 0
    pool.check_integrity()


def test_hash_collision_never_serves_other_tokens(monkeypatch):
    monkeypatch.setattr(kv_cache, "chain_hash", lambda parent, tokens: 42)
    pool = BlockPool(10, 4)
    a = make_seq([1, 2, 3, 4, 5], 0)
    compute_all(pool, a)
    b = make_seq([9, 9, 9, 9, 5], 1)  # same (forced) hash, different tokens
    assert pool.match_prefix(b) == 0


def test_prefix_caching_off_never_matches():
    pool = BlockPool(10, 4, enable_prefix_caching=False)
    a = make_seq(list(range(9)), 0)
    compute_all(pool, a)
    assert pool.match_prefix(make_seq(list(range(9)), 1)) == 0


def test_prompt_logprobs_requests_skip_the_cache():
    pool = BlockPool(10, 4)
    compute_all(pool, make_seq(list(range(9)), 0))
    assert pool.match_prefix(make_seq(list(range(9)), 1, prompt_logprobs=1)) == 0


def test_hit_rate_counts_tokens():
    pool = BlockPool(20, 4)
    compute_all(pool, make_seq(list(range(9)), 0))
    b = make_seq(list(range(9)), 1)
    pool.match_prefix(b)
    assert pool.hits == 8
    assert 0 < pool.hit_rate < 1


def test_pool_needs_two_blocks():
    with pytest.raises(ValueError):
        BlockPool(1, 16)


def test_salted_chains_share_blocks_only_within_a_salt():
    pool = BlockPool(20, 4)

    def salted(seq_id: int, salt: str | None) -> Sequence:
        return Sequence(seq_id, Request(str(seq_id), None, list(range(13)), SamplingParams(), salt), 0)

    owner = salted(0, "tenant-a")
    compute_all(pool, owner)
    pool.free_seq(owner)
    assert pool.match_prefix(salted(1, "tenant-b")) == 0
    assert pool.match_prefix(salted(2, None)) == 0  # the unsalted chain is another chain too
    again = salted(3, "tenant-a")
    assert pool.match_prefix(again) == 12
    pool.free_seq(again)
    pool.check_integrity()
