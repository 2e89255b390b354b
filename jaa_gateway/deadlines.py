"""The deadline heap: per-session and per-alarm timers, in the core.

The deadlines themselves live in the store (`checkin_due_at`, `next_due_at`, ...); this module
only keeps them in a heap and wakes the engine at the earliest one. STYLE.md's measurement: one
APScheduler job per session skips jobs as "missed" under load, so APScheduler runs only the
periodic housekeeping (`adapters/scheduler.py`). A fired deadline is a hint: the engine re-reads
the entity's state and due time from the store in the transaction that acts on it, so a stale
heap entry does nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable

import structlog

from jaa_gateway.aio import wait_event

log = structlog.get_logger("jaa_gateway.timers")

Key = tuple[str, str]  # (kind, entity id)
BATCH = 200  # deadlines fired in one transaction


class Deadlines:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        on_late: Callable[[float], None] | None = None,
    ) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._on_late = on_late

    def set(self, key: Key, due: float) -> None:
        """Set (or move) the deadline of `key` to the epoch instant `due`."""
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        if self._heap[0][2] == key:
            self._changed.set()

    def clear(self) -> None:
        """Forget every deadline (hot standby: a node that steps down)."""
        self._heap.clear()
        self._due.clear()
        self._changed.set()

    def discard(self, key: Key) -> None:
        self._due.pop(key, None)

    def due_at(self, key: Key) -> float | None:
        return self._due.get(key)

    def __len__(self) -> int:
        return len(self._due)

    def _compact(self) -> None:
        # stale entries pile up when deadlines move often (check-ins); rebuild now and then
        if len(self._heap) > 4 * len(self._due) + 1024:
            self._heap = [(d, next(self._seq), k) for k, d in self._due.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now: float) -> list[tuple[Key, float]]:
        out: list[tuple[Key, float]] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                out.append((key, due))
        self._compact()
        return out

    def next_due(self) -> float | None:
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(self._heap)
        return None

    async def run(self, fire: Callable[[list[tuple[Key, float]]], Awaitable[None]]) -> None:
        """Fire due deadlines in order, in batches, forever. Errors are logged, never fatal."""
        while True:
            now = self._clock()
            due_now = self.pop_due(now)
            for i in range(0, len(due_now), BATCH):
                if i:
                    await asyncio.sleep(0)  # let other work in between batches
                batch = due_now[i : i + BATCH]
                if self._on_late is not None:
                    t = self._clock()
                    for _key, due in batch:
                        self._on_late(max(0.0, t - due))
                try:
                    await fire(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # the entities keep their deadlines in the store: retry shortly
                    log.exception("timer_fire_failed", count=len(batch))
                    for key, _due in batch:
                        self.set(key, self._clock() + 1.0)
            nxt = self.next_due()
            self._changed.clear()
            timeout = None if nxt is None else max(0.0, nxt - self._clock())
            if timeout is not None and timeout <= 0:
                continue
            await wait_event(self._changed, min(timeout or 60.0, 60.0))
