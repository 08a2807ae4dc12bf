"""Scheduler decisions: decodes first, token budget, chunked prefill, caps and preemption."""

from __future__ import annotations

from inferd.config import SchedulerConfig
from inferd.engine.kv_cache import BlockPool
from inferd.engine.scheduler import Scheduler
from inferd.engine.sequence import Request, Sequence
from inferd.sampling_params import SamplingParams


def seq_of(n: int, seq_id: int) -> Sequence:
    return Sequence(seq_id, Request(str(seq_id), None, list(range(1, n + 1)), SamplingParams()), 0)


def run_step(sched: Scheduler, out) -> None:
    """Pretend the runner ran: mark tokens computed, and give finished prefills a sampled token."""
    for e in out.scheduled:
        e.seq.num_computed_tokens += e.num_tokens
        if e.seq.num_computed_tokens == e.seq.num_tokens:
            e.seq.append_token(7)


def test_prefill_is_chunked_under_the_token_budget():
    pool = BlockPool(100, 4)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=8), pool, 1000)
    s.add(seq_of(20, 0))
    sizes = []
    for _ in range(4):
        out = s.schedule()
        sizes.append(out.num_tokens)
        run_step(s, out)
    assert sizes == [8, 8, 4, 1]  # three chunks, then the first decode


def test_decodes_are_scheduled_before_prefills():
    pool = BlockPool(100, 4)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=10), pool, 1000)
    s.add(seq_of(3, 0))
    run_step(s, s.schedule())
    s.add(seq_of(30, 1))
    out = s.schedule()
    assert out.scheduled[0].seq.seq_id == 0 and out.scheduled[0].num_tokens == 1
    assert out.scheduled[1].seq.seq_id == 1 and out.scheduled[1].num_tokens == 9


def test_max_num_seqs_caps_the_running_batch():
    pool = BlockPool(100, 4)
    s = Scheduler(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=100), pool, 1000)
    for i in range(5):
        s.add(seq_of(3, i))
    out = s.schedule()
    assert len(out.scheduled) == 2 and s.num_waiting == 3


def test_newest_running_sequence_is_preempted_when_blocks_run_out():
    pool = BlockPool(5, 2)  # 4 usable blocks of 2 tokens
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=100), pool, 1000)
    a, b = seq_of(3, 0), seq_of(3, 1)
    s.add(a)
    s.add(b)
    run_step(s, s.schedule())  # prefill: 3 tokens each, 2 blocks each
    run_step(s, s.schedule())  # first decode fits in the second block
    assert pool.num_free_blocks == 0
    out = s.schedule()  # both need a 3rd block now; a is older, so b goes
    assert out.preempted == [b]
    assert [e.seq for e in out.scheduled] == [a]
    assert b.num_computed_tokens == 0 and b.block_table == [] and s.waiting[0] is b
    pool.check_integrity()


def test_no_admission_while_preempting():
    pool = BlockPool(5, 2)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=100), pool, 1000)
    s.add(seq_of(3, 0))
    s.add(seq_of(3, 1))
    run_step(s, s.schedule())
    run_step(s, s.schedule())
    s.add(seq_of(1, 2))
    out = s.schedule()
    assert out.preempted and all(e.seq.seq_id != 2 for e in out.scheduled)
