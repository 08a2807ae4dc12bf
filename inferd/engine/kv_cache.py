"""BlockPool: the paged KV cache's bookkeeping (which block holds what), with prefix caching.

Plain Python over integers; the tensors themselves live in the runner. Invariants (checked by
`check_integrity`, which the tests call):
- block 0 is reserved as the null block (padding rows write there); it is never handed out;
- every other block is either referenced (ref_count > 0) or in the free queue, never both;
- a full block that was computed gets a hash chained from its parent's hash and its token ids;
  a hit is confirmed by comparing token ids, so a hash collision never serves another's KV;
- the chain of a request with a cache salt (its tenant, vLLM's `cache_salt`) starts from the salt,
  so its blocks are found only by requests with the same salt;
- freed blocks keep their hash and stay reusable until evicted, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from inferd.engine.sequence import Sequence

NULL_BLOCK = 0


def chain_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


def salt_root(salt: str | None) -> int | None:
    """The parent hash of a salted chain's first block (None: the shared, unsalted chain)."""
    return None if salt is None else hash(("cache-salt", salt))


@dataclass
class CachedBlock:
    block_id: int
    tokens: tuple[int, ...]
    parent: int | None


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Free blocks in eviction order (oldest first); cached ones keep their hash until reused.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.hash_to_block: dict[int, CachedBlock] = {}
        self.block_to_hash: dict[int, int] = {}
        self.queries = 0  # prefix-cache lookups, in tokens
        self.hits = 0  # tokens served from the cache

    # ---- capacity -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks referenced by live sequences (cached-but-free counts as free)."""
        return 1.0 - len(self.free) / (self.num_blocks - 1)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    # ---- prefix cache ---------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks covering the longest computed prefix; return tokens reused.

        At least one token is always left to compute, since its logits are needed to sample.
        """
        if not self.enable_prefix_caching or seq.block_table or seq.params.prompt_logprobs is not None:
            return 0
        bs = self.block_size
        max_blocks = (seq.num_tokens - 1) // bs
        parent = salt_root(seq.request.cache_salt)
        matched: list[int] = []
        hashes: list[int] = []
        for i in range(max_blocks):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(parent, tokens)
            entry = self.hash_to_block.get(h)
            if entry is None or entry.tokens != tokens or entry.parent != parent:
                break
            matched.append(entry.block_id)
            hashes.append(h)
            parent = h
        self.queries += seq.num_tokens - seq.num_computed_tokens
        for b in matched:
            self._take(b)
        seq.block_table = matched
        seq.block_hashes = hashes
        reused = len(matched) * bs
        seq.num_computed_tokens = reused
        seq.num_cached_tokens = reused
        self.hits += reused
        return reused

    def register_full_blocks(self, seq: Sequence) -> None:
        """Hash every block of seq that became full and computed, making it reusable."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        while len(seq.block_hashes) < full:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else salt_root(seq.request.cache_salt)
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(parent, tokens)
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.hash_to_block and block not in self.block_to_hash:
                self.hash_to_block[h] = CachedBlock(block, tokens, parent)
                self.block_to_hash[block] = h

    # ---- allocation -----------------------------------------------------------------------
    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def _pop_free(self) -> int:
        block, _ = self.free.popitem(last=False)
        h = self.block_to_hash.pop(block, None)
        if h is not None:
            del self.hash_to_block[h]
        self.ref_counts[block] = 1
        return block

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give seq enough blocks for num_new_tokens more; False (and no change) if the pool is short."""
        need = self.blocks_needed(seq, num_new_tokens)
        if need > len(self.free):
            return False
        for _ in range(need):
            seq.block_table.append(self._pop_free())
        return True

    def free_seq(self, seq: Sequence) -> None:
        """Release seq's blocks; the most recently used go to the back of the eviction queue."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.block_hashes = []

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Drop blocks beyond num_tokens (speculative rollback); their hashes never existed."""
        keep = -(-num_tokens // self.block_size)
        while len(seq.block_table) > keep:
            block = seq.block_table.pop()
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None

    def reset_prefix_cache(self) -> None:
        self.hash_to_block.clear()
        self.block_to_hash.clear()

    def check_integrity(self) -> None:
        assert self.ref_counts[NULL_BLOCK] == 0 and NULL_BLOCK not in self.free
        for b in range(1, self.num_blocks):
            in_free = b in self.free
            assert in_free == (self.ref_counts[b] == 0), f"block {b}: ref {self.ref_counts[b]}, free {in_free}"
            assert self.ref_counts[b] >= 0
        for h, entry in self.hash_to_block.items():
            assert self.block_to_hash.get(entry.block_id) == h
