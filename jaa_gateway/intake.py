"""The event intake: a priority inbox between the MQTT edge and the engine (alarms first)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import structlog

from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.metrics import Metrics

log = structlog.get_logger("jaa_gateway.app")

INBOX_SIZE = 20_000
# session events ride with alarms, so an sos never overtakes the start that locates it
URGENT = frozenset({"sos", "man_down", "cancel", "session_start", "session_end", "badge"})
# routine events (check-ins, low battery, door events) handled in one transaction at most
BATCH_MAX = 50
# an urgent event not handled (stored, its SMS handed to the sender) this long after it reached
# the edge is logged with its stage times (issue 17: the target is 250 ms at the 95th percentile)
SLOW_EVENT_S = 0.25

Event = DeviceEvent | DoorEvent
Handler = Callable[[list[Event]], Awaitable[None]]


class Intake:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # alarm events jump the queue: an sos must not wait behind a burst of heartbeats
        self.inbox: asyncio.PriorityQueue[tuple[int, int, Event]] = asyncio.PriorityQueue(
            INBOX_SIZE
        )
        self._seq = itertools.count()

    async def enqueue(self, ev: Event) -> None:
        prio = 0 if ev.type in URGENT else 1
        # a full inbox slows the MQTT reader: backpressure, not loss
        await self.inbox.put((prio, next(self._seq), ev))
        self.metrics.inbox_depth.set(self.inbox.qsize())

    def drain(self) -> None:
        """Forget what waits (a node that stepped down)."""
        while not self.inbox.empty():
            self.inbox.get_nowait()
        self.metrics.inbox_depth.set(0)

    async def run(self, handle: Handler) -> None:
        while True:
            item = await self.inbox.get()
            batch = [item[2]]
            if item[0] != 0:
                # routine events that queued up together share one transaction (one fsync,
                # not one each), a bounded number, so an sos behind them waits little;
                # an urgent event never joins a batch, it runs at once on its own
                while len(batch) < BATCH_MAX and not self.inbox.empty():
                    nxt = self.inbox.get_nowait()
                    if nxt[0] == 0:
                        await self._handle(handle, [nxt[2]])
                        continue
                    batch.append(nxt[2])
            await self._handle(handle, batch)

    async def _handle(self, handle: Handler, batch: list[Event]) -> None:
        began = time.time()  # wall clock, as the edge's received_at
        try:
            await handle(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the device repeats alarm and session events until answered, so a failure
            # here (a full disk, say) is retried by the device, not lost
            if len(batch) == 1:
                log.exception("event_failed", type=batch[0].type, id=batch[0].id)
            else:
                log.exception(
                    "events_failed", count=len(batch), events=[f"{e.type}:{e.id}" for e in batch]
                )
        else:
            self._timed(batch[0], began)
        finally:
            self.metrics.inbox_depth.set(self.inbox.qsize())

    def _timed(self, ev: Event, began: float) -> None:
        """Per-stage timings of a handled event, or of a batch by its oldest (first) event."""
        received = ev.received_at.timestamp()
        queued, handled = began - received, time.time() - received
        urgent = ev.type in URGENT
        self.metrics.observe_event("urgent" if urgent else "routine", queued, handled)
        if urgent and handled > SLOW_EVENT_S:
            log.warning(
                "event_slow",
                type=ev.type,
                id=ev.id,
                queued_ms=round(queued * 1000, 1),
                handled_ms=round(handled * 1000, 1),
            )
