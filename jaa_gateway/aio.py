"""Waiting with a time limit, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the task is
cancelled in the same loop iteration that sets the event: the cancellation is swallowed (the
3.11 implementation returns the inner result if it is done; 3.12 rewrote it on
``asyncio.timeout``). A daemon task in a ``while True`` loop around such a wait then never ends,
and the ``TaskGroup`` that shuts the gateway down waits for it forever. Under load (the outbox is
woken after every SMS) this happened at every stop (issue 6, the timers scenario: the gateway
ignored SIGTERM); in the tests it was a rare end-to-end hang. ``asyncio.timeout`` counts
cancellations (``uncancel``) and never swallows one, so every bounded wait goes through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` bounded by `timeout` (TimeoutError after it), like ``asyncio.wait_for``,
    but a cancellation of the caller always propagates."""
    async with asyncio.timeout(timeout):
        return await aw
