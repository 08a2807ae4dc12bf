"""AsyncEmbedder: concurrent requests run together, the queue is bounded, callers that leave are
dropped, a failing step fails only its requests, shutdown fails what waits.

A stand-in Embedder records each step's sequences and can hold the worker, so the tests see
exactly how requests were batched without loading a model.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from inferd.engine.async_embedder import AsyncEmbedder
from inferd.engine.async_engine import EngineDead, QueueFull, ShuttingDown


class RecordingEmbedder:
    """Vector of a sequence = [its first id, its length]; steps recorded; `gate` holds a step."""

    name = "fake"
    max_batch_tokens = 64

    def __init__(self) -> None:
        self.steps: list[list[list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def embed_tokens(self, seqs: list[list[int]]) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(10)
        self.steps.append(seqs)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return torch.tensor([[float(s[0]), float(len(s))] for s in seqs])


@pytest.fixture()
def fake() -> RecordingEmbedder:
    return RecordingEmbedder()


async def _hold_worker(queue: AsyncEmbedder, fake: RecordingEmbedder) -> asyncio.Task:
    """Start a request that occupies the worker until fake.gate is set."""
    fake.gate.clear()
    fake.entered.clear()
    task = asyncio.create_task(queue.embed([[99]]))
    await asyncio.to_thread(fake.entered.wait, 10)
    return task


async def test_concurrent_requests_share_a_step_and_get_their_own_vectors(fake):
    queue = AsyncEmbedder(fake, step_tokens=1000)
    try:
        blocker = await _hold_worker(queue, fake)
        tasks = [asyncio.create_task(queue.embed([[i, 0, 0], [i + 100]])) for i in range(5)]
        await asyncio.sleep(0.05)  # all five queue behind the held step
        fake.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        for i, vectors in enumerate(results):
            assert vectors.tolist() == [[i, 3], [i + 100, 1]]
        assert len(fake.steps) == 2  # the held one, then all five requests in one step
        assert len(fake.steps[1]) == 10
        stats = queue.stats()
        assert (stats.requests, stats.inputs, stats.batches, stats.waiting_inputs) == (6, 11, 2, 0)
        assert stats.tokens == 1 + 5 * 4
    finally:
        queue.shutdown()


async def test_step_token_budget_splits_requests(fake):
    queue = AsyncEmbedder(fake, step_tokens=8)
    try:
        blocker = await _hold_worker(queue, fake)
        tasks = [asyncio.create_task(queue.embed([[i] * 5])) for i in range(3)]
        await asyncio.sleep(0.05)
        fake.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert [len(s) for s in fake.steps[1:]] == [1, 1, 1]  # 5 + 5 tokens exceed 8
    finally:
        queue.shutdown()


async def test_full_queue_refuses_then_recovers(fake):
    queue = AsyncEmbedder(fake, max_waiting_inputs=3)
    try:
        blocker = await _hold_worker(queue, fake)
        waiting = asyncio.create_task(queue.embed([[1], [2]]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="limit 3"):
            await queue.embed([[3], [4]])
        fake.gate.set()
        await asyncio.gather(blocker, waiting)
        assert (await queue.embed([[3], [4], [5]])).shape == (3, 2)
    finally:
        queue.shutdown()


async def test_cancelled_waiting_request_is_not_run(fake):
    queue = AsyncEmbedder(fake)
    try:
        blocker = await _hold_worker(queue, fake)
        gone = asyncio.create_task(queue.embed([[7]]))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        assert queue.stats().waiting_inputs == 0
        fake.gate.set()
        await blocker
        assert (await queue.embed([[8]])).tolist() == [[8, 1]]
        assert [7] not in [s for step in fake.steps for s in step]
    finally:
        queue.shutdown()


async def test_a_failing_step_fails_its_requests_only(fake):
    queue = AsyncEmbedder(fake)
    try:
        fake.fail_next = True
        with pytest.raises(RuntimeError, match="boom"):
            await queue.embed([[1]])
        assert (await queue.embed([[2]])).tolist() == [[2, 1]]
        assert queue.is_alive()
    finally:
        queue.shutdown()


async def test_cut_and_shutdown_fail_waiting_requests(fake):
    queue = AsyncEmbedder(fake)
    blocker = await _hold_worker(queue, fake)
    waiting = asyncio.create_task(queue.embed([[1]]))
    await asyncio.sleep(0.05)
    queue.cut(ShuttingDown("deadline"))
    with pytest.raises(ShuttingDown, match="deadline"):
        await waiting
    with pytest.raises(ShuttingDown):
        await queue.embed([[2]])
    fake.gate.set()
    await blocker  # the step already running finishes
    queue.shutdown()
    with pytest.raises(EngineDead):
        await queue.embed([[3]])
