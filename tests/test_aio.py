"""Bounded waits that never swallow a cancellation (jaa_gateway/aio.py).

Python 3.11's ``asyncio.wait_for`` returns normally when the waiting task is cancelled in the
loop iteration that also completes what it waits for; a daemon loop around it then survives
its cancellation and the gateway's shutdown waits for it forever (issue 6).
"""

from __future__ import annotations

import asyncio

import pytest

from jaa_gateway.aio import wait_event, within
from jaa_gateway.deadlines import Deadlines


async def test_wait_event_reports_set_and_timeout() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    ev.set()
    assert await wait_event(ev, 0.01) is True
    assert await wait_event(ev, None) is True


async def test_a_cancel_that_meets_the_event_is_not_swallowed() -> None:
    ev = asyncio.Event()
    passes = 0

    async def daemon() -> None:
        nonlocal passes
        while True:  # the outbox's and the timers' loop shape
            await wait_event(ev, 10.0)
            ev.clear()
            passes += 1

    for _ in range(20):
        task = asyncio.create_task(daemon())
        await asyncio.sleep(0.001)
        ev.set()
        task.cancel()  # in the same iteration as the set
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        assert task.cancelled()


async def test_within_times_out_and_passes_results_and_cancels() -> None:
    assert await within(asyncio.sleep(0, "done"), 1.0) == "done"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(1.0), 0.01)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waiter() -> int:
        return await within(fut, 10.0)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.001)
    fut.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_timer_loop_ends_when_cancelled_as_a_deadline_is_set() -> None:
    deadlines = Deadlines()
    fired: list[object] = []

    async def fire(batch: list[tuple[tuple[str, str], float]]) -> None:
        fired.extend(batch)

    for _ in range(20):
        task = asyncio.create_task(deadlines.run(fire))
        await asyncio.sleep(0.001)
        deadlines.set(("checkin", f"s{len(fired)}"), 1e12)  # wakes the loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
