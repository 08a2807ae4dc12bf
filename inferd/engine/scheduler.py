"""Scheduler: decides, with integers only, which tokens of which sequences run in the next step.

Each step mixes decode tokens and prefill chunks under a token budget and a sequence cap.
Running sequences go first (so inter-token latency stays low), then waiting ones are admitted
in arrival order, their prompts chunked to fit. When the block pool runs dry the newest running
sequence is preempted: its blocks are freed and it is recomputed later (its own blocks often
come back from the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inferd.config import SchedulerConfig
from inferd.engine.kv_cache import BlockPool
from inferd.engine.sequence import SeqStatus, Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens of this sequence computed in this step
    num_spec: int = 0  # of those, speculative proposals to verify (they follow the real token)

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens - self.num_spec >= self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)  # decodes first, then prefills
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, pool: BlockPool, max_model_len: int):
        self.cfg = cfg
        self.pool = pool
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Proposer hook for speculative decoding: seq -> proposal token ids (may be empty).
        self.propose = None

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.free_seq(seq)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.pool.free_seq(seq)
        seq.status = SeqStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def schedule(self, spec_tokens: dict[int, list[int]] | None = None) -> SchedulerOutput:
        """Build one step. spec_tokens maps seq_id to proposals to verify with its decode token."""
        out = SchedulerOutput()
        budget = self.cfg.max_num_batched_tokens
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []

        # 1. Running sequences: decodes first (low ITL), then unfinished prefill chunks; when
        #    blocks run out the newest running sequences are preempted.
        for want_decode in (True, False):
            for seq in list(self.running):
                if budget <= 0:
                    break
                if seq.status != SeqStatus.RUNNING:
                    continue  # preempted earlier in this loop
                remaining = seq.num_tokens - seq.num_computed_tokens
                if (remaining == 1) != want_decode:
                    continue
                proposals: list[int] = []
                if spec_tokens and remaining == 1:
                    room = min(budget - 1, self.max_model_len - seq.num_tokens)
                    proposals = spec_tokens.get(seq.seq_id, [])[:max(0, room)]
                num = min(remaining + len(proposals), budget)
                if proposals and not self.pool.allocate(seq, num):
                    # Proposals are optional: never preempt another sequence to make room for them.
                    proposals, num = [], min(remaining, budget)
                if self._allocate_or_preempt(seq, num, out, decodes + prefills):
                    entry = ScheduledSeq(seq, num, len(proposals))
                    (decodes if want_decode else prefills).append(entry)
                    budget -= num

        # 2. Waiting sequences in arrival order, while budget, sequence cap and blocks allow.
        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
                seq = self.waiting[0]
                if not seq.block_table and seq.num_computed_tokens == 0:
                    self.pool.match_prefix(seq)
                remaining = seq.num_tokens - seq.num_computed_tokens
                num = min(remaining, budget)
                if not self.cfg.enable_chunked_prefill and num < remaining:
                    break
                if not self.pool.allocate(seq, num):
                    if not self.running:
                        self._ensure_progress(seq)
                    break
                self.waiting.popleft()
                seq.status = SeqStatus.RUNNING
                self.running.append(seq)
                prefills.append(ScheduledSeq(seq, num))
                budget -= num
        out.scheduled = decodes + prefills
        return out

    def _allocate_or_preempt(self, seq: Sequence, num: int, out: SchedulerOutput,
                             taken: list[ScheduledSeq]) -> bool:
        """Allocate for seq, preempting the newest unscheduled running sequences as needed.

        Returns False when seq itself had to be preempted.
        """
        scheduled = {id(e.seq) for e in taken}
        while not self.pool.allocate(seq, num):
            victim = next(v for v in reversed(self.running) if id(v) not in scheduled)
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _ensure_progress(self, seq: Sequence) -> None:
        """A lone sequence that cannot get blocks will never fit: its prompt exceeds the pool."""
        need = -(-seq.num_tokens // self.pool.block_size)
        if need > self.pool.num_blocks - 1:
            raise MemoryError(
                f"sequence needs {need} KV blocks but the pool has {self.pool.num_blocks - 1}; "
                "raise --kv-cache-memory or lower --max-model-len")
