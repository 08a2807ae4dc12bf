"""Load shapes: closed-loop fixed concurrency and open-loop Poisson arrivals.

Schedulers only decide *when* request i is sent; `send(i, scheduled_time)` does the sending and
returns its record. Every loop is bounded by a request count, a duration, or both, and each
request is bounded by the client's own timeout, so a run always ends.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

from inferd.bench.records import RequestRecord

SendFn = Callable[[int, float | None], Awaitable[RequestRecord]]
DoneFn = Callable[[RequestRecord], None]


def poisson_arrivals(
    rate: float, seed: int, num_requests: int | None = None, duration: float | None = None
) -> list[float]:
    """Send offsets (seconds from the run start) with exponential gaps of mean 1/rate.

    Deterministic in `seed`. `rate=inf` sends everything at t=0 (needs `num_requests`).
    """
    if num_requests is None and duration is None:
        raise ValueError("poisson_arrivals needs num_requests or duration")
    if math.isinf(rate):
        if num_requests is None:
            raise ValueError("an infinite request rate needs num_requests")
        return [0.0] * num_requests
    rng = random.Random(seed)
    offsets: list[float] = []
    t = 0.0
    while num_requests is None or len(offsets) < num_requests:
        if duration is not None and t >= duration:
            break
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def run_closed_loop(
    send: SendFn,
    concurrency: int,
    t0: float,
    num_requests: int | None,
    duration: float | None,
    on_done: DoneFn | None = None,
) -> list[RequestRecord]:
    """`concurrency` workers, each sending its next request as soon as its last one finishes."""
    records: list[RequestRecord] = []
    next_index = 0
    deadline = t0 + duration if duration is not None else math.inf

    async def worker() -> None:
        nonlocal next_index
        while True:
            # Claiming an index is atomic: no await between the check and the increment.
            if num_requests is not None and next_index >= num_requests:
                return
            if time.perf_counter() >= deadline:
                return
            index = next_index
            next_index += 1
            rec = await send(index, None)
            records.append(rec)
            if on_done:
                on_done(rec)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    records.sort(key=lambda r: r.index)
    return records


async def run_open_loop(
    send: SendFn,
    arrivals: list[float],
    t0: float,
    max_concurrency: int | None = None,
    on_done: DoneFn | None = None,
) -> list[RequestRecord]:
    """Send request i at `t0 + arrivals[i]` regardless of how earlier ones are doing.

    With `max_concurrency`, a request due while that many are in flight waits for a slot (its
    `scheduled_time` still records when it was due, so the queueing delay is visible).
    """
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    records: list[RequestRecord] = []

    async def one(index: int, offset: float) -> None:
        if gate is not None:
            async with gate:
                rec = await send(index, offset)
        else:
            rec = await send(index, offset)
        records.append(rec)
        if on_done:
            on_done(rec)

    tasks: list[asyncio.Task[None]] = []
    for index, offset in enumerate(arrivals):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, offset)))
    await asyncio.gather(*tasks)
    records.sort(key=lambda r: r.index)
    return records
