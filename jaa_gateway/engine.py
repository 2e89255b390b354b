"""The engine: events in -> state changes + effects out, through the services.

Every entry point (an MQTT event, a deadline, an acknowledgement from HTTP) runs under one
lock and in one transaction (`unit`), so rules never see half a change and the outbox rows a
change causes commit with it. Effects (MQTT answers, timers, rows for the sender) are carried
out after the commit. The rules themselves are the services' (`Services`, wired by the App):
this module hands each event and deadline to the one it is for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import structlog
from sqlalchemy import delete

from jaa_gateway.alarms import AckResult, Acks, Escalator
from jaa_gateway.assessments import Assessments
from jaa_gateway.changes import Changes
from jaa_gateway.config import Assessment, Config
from jaa_gateway.deadlines import Deadlines, Key
from jaa_gateway.devices import Devices
from jaa_gateway.domain.alarm import RUNNING
from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.effects import Publisher, Tx
from jaa_gateway.inbound import Inbound
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import OutboxPort
from jaa_gateway.poison import RepeatFailures
from jaa_gateway.presence import Presence
from jaa_gateway.session_timers import SessionTimers
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import processed_events
from jaa_gateway.timeutil import utcnow

log = structlog.get_logger("jaa_gateway.engine")

DEDUPE_TTL = dt.timedelta(days=2)
# how long one transaction of a batch (deadlines, queued routine events) may hold the event
# loop before it commits and lets other work (an sos) in
UNIT_BUDGET_S = 0.02
_T = TypeVar("_T")


@dataclass(frozen=True, repr=False)
class Services:
    """The rooms the engine hands work to (built and wired by the App). The services are
    dataclasses of their dependencies with repr=False: an exception logged with its frames'
    locals would otherwise print the whole config for each `self` (seconds, on the loop)."""

    devices: Devices
    assessments: Assessments
    presence: Presence
    timers: SessionTimers
    escalator: Escalator
    acks: Acks
    inbound: Inbound


class Engine:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        publisher: Publisher,
        deadlines: Deadlines,
        metrics: Metrics,
        services: Services,
        outbox: OutboxPort,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.publisher = publisher
        self.deadlines = deadlines
        self.metrics = metrics
        self.clock = clock
        self.svc = services
        self.presence = services.presence
        self.outbox = outbox
        self.lock = asyncio.Lock()
        # committed units: a deadline that keeps failing while these go on is poison
        self.commits = 0
        self._deadline_failures: RepeatFailures[Key] = RepeatFailures()
        # deadlines given up on (key -> why): the self-watch reports them as degraded
        self.abandoned_deadlines: dict[Key, str] = {}
        # committed units are told here (the console's live page), as MQTT gets their answers
        self.changes = Changes()

    def forget(self) -> None:
        """Hot standby (cluster.py): a node that steps down drops what it knew as leader;
        `start()` rebuilds it all from the store if it leads again."""
        svc = self.svc
        self.deadlines.clear()
        svc.devices.forget()
        svc.inbound.forget()
        svc.presence.forget()
        self.abandoned_deadlines.clear()
        self._deadline_failures = RepeatFailures()

    # ------------------------------------------------------------------ the unit of work

    @asynccontextmanager
    async def unit(self, *, wait_publish: bool = True) -> AsyncIterator[Tx]:
        """Lock + transaction; effects are applied only after a successful commit.

        MQTT answers go out after the lock is released: waiting for a broker's PUBACK must
        not hold up the next event or deadline. ``wait_publish=False`` does not wait for it at
        all (the answers still leave in order through the edge's buffer, and go again after a
        reconnect): events and deadlines are handled one after another, and waiting would
        pace them by the broker's round trips. On a quiet broker each wait was ~40 ms (Nagle
        and the broker's delayed ACK), so a burst of sos 20 ms apart queued up (issue 17); a
        broker that hangs without closing the connection would hold every later event and
        timer (alarm steps included) for the edge's operation timeout (CONTRACT §7.2).
        """
        async with self.lock:
            async with self.store.tx() as conn:
                tx = Tx(conn=conn, now=self.clock())
                yield tx
            self.commits += 1
            for key, due in tx.timers:
                if due is None:
                    self.deadlines.discard(key)
                else:
                    self.deadlines.set(key, due)
            if tx.direct:
                self.outbox.submit(tx.direct)
            if tx.wake_outbox:
                self.outbox.wake()
            for fn in tx.after_commit:
                fn()
            self.changes.emit("state")
        for topic, payload, retain in tx.publishes:
            try:
                await self.publisher.publish(topic, payload, retain=retain, wait=wait_publish)
            except Exception:
                log.exception("mqtt_publish_failed", topic=topic)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Load assessments and device state, rebuild every timer from the store."""
        svc = self.svc
        async with self.unit() as tx:
            await svc.assessments.load(tx)
            await svc.devices.load(tx.conn)
            svc.presence.started(tx.ts)
            for s in await q.active_sessions(tx.conn):
                svc.timers.set(tx, s)
            open_rows = await q.open_alarms(tx.conn)
            for a in open_rows:
                svc.escalator.timer(tx, a)
            n_sessions = await q.active_session_count(tx.conn)
            n_alarms = sum(1 for a in open_rows if a["state"] in RUNNING)
            await q.add_audit(
                tx.conn, tx.ts, "gateway_started", sessions=n_sessions, open_alarms=n_alarms
            )
        self.metrics.sessions_active.set(n_sessions)
        self.metrics.alarms_open.set(len(open_rows))
        log.info(
            "engine_started", sessions=n_sessions, open_alarms=n_alarms, timers=len(self.deadlines)
        )

    # ------------------------------------------------------------------ the HTTP API's calls

    @property
    def assessments(self) -> dict[str, Assessment]:
        return self.svc.assessments.by_id

    async def put_assessment(self, a: Assessment, actor: str) -> str:
        """Store an assessment from the API; returns 'created' or 'updated'."""
        async with self.unit() as tx:
            return await self.svc.assessments.put(tx, a, actor)

    async def ack(
        self, alarm_ids: list[str], *, by: str, via: str, person_id: str | None
    ) -> AckResult:
        """Acknowledge. `person_id` set (SMS/voice): only someone notified for the alarm."""
        async with self.unit() as tx:
            return await self.svc.acks.ack(tx, alarm_ids, by=by, via=via, person_id=person_id)

    async def resolve(
        self, alarm_id: str, *, by: str, note: str, via: str | None = None
    ) -> AckResult:
        async with self.unit() as tx:
            return await self.svc.acks.resolve(tx, alarm_id, by=by, note=note, via=via)

    async def republish_open_alarms(self) -> None:
        """After a (re)connect: the retained topics may have been lost with the broker."""
        async with self.unit() as tx:
            for a in await q.open_alarms(tx.conn):
                self.svc.escalator.writer.announce.publish(tx, a)

    # ------------------------------------------------------------------ inbound events

    async def handle_batch(self, evs: list[DeviceEvent | DoorEvent]) -> None:
        """Events that queued up together share transactions (`_in_units`: one commit, one
        fsync, for a burst of check-ins, not one each; one that fails is rolled back alone and
        logged). A single event's failure propagates to the caller."""
        inbound = self.svc.inbound
        todo = [ev for ev in evs if inbound.needs_unit(ev)]
        if len(todo) == 1:
            # the next event must not wait for the broker's PUBACK of this one's answers
            async with self.unit(wait_publish=False) as tx:
                await inbound.apply(tx, todo[0])
            return

        def failed(_tx: Tx, ev: DeviceEvent | DoorEvent) -> None:
            log.exception("event_failed", type=ev.type, id=ev.id)

        await self._in_units(todo, inbound.apply, failed, wait_publish=False)

    async def _in_units(
        self,
        items: list[_T],
        one: Callable[[Tx, _T], Awaitable[None]],
        failed: Callable[[Tx, _T], None],
        *,
        wait_publish: bool,
    ) -> None:
        """`one` for every item, each under its own SAVEPOINT (`failed` is called, inside the
        except block, for one that raised and was rolled back), in as few transactions as
        UNIT_BUDGET_S allows. A transaction holds the event loop (SQLite runs on its thread),
        so after the budget it commits and lets the loop go: an sos arriving meanwhile waits
        that long at most, not for the whole batch. Each transaction handles at least one."""
        i = 0
        while i < len(items):
            if i:
                await asyncio.sleep(0)
            async with self.unit(wait_publish=wait_publish) as tx:
                t0, first = time.monotonic(), i
                while i < len(items):
                    if i > first and time.monotonic() - t0 >= UNIT_BUDGET_S:
                        break
                    item = items[i]
                    i += 1
                    mark = tx.mark()
                    try:
                        async with tx.conn.begin_nested():
                            await one(tx, item)
                    except Exception:
                        tx.rollback_to(mark)
                        failed(tx, item)

    # ------------------------------------------------------------------ deadlines

    async def on_deadline(self, key: Key, due: float) -> None:
        await self.on_deadlines([(key, due)])

    def _offline_still_fresh(self, key: Key) -> bool:
        """An offline watch whose device was heard since: move it on, without the database.

        Every session's watch comes due once per device_timeout even while its device
        heartbeats; thousands of sessions started together would otherwise stall the engine
        with a transaction each, all at once."""
        due = self.presence.watched_due(key[1]) if key[0] == "offline" else None
        if due is None or due <= self.clock().timestamp() + 0.001:
            return False
        self.deadlines.set(key, due)
        return True

    async def on_deadlines(self, items: list[tuple[Key, float]]) -> None:
        """Deadlines due together share transactions (`_in_units`: 10,000 check-ins lapsing
        in the same minute must not queue behind 10,000 fsyncs, nor hold the loop for the
        whole wave). One that fails is rolled back alone and retried in a second."""
        keys = [key for key, _due in items if not self._offline_still_fresh(key)]

        def failed(tx: Tx, key: Key) -> None:
            exc = sys.exc_info()[1]
            error = f"{type(exc).__name__}: {str(exc)[:200]}" if exc else "unknown"
            retry_in = self._deadline_failures.failed(key, error, self.commits)
            if retry_in is not None:
                log.exception("deadline_failed", kind=key[0], entity=key[1], retry_in_s=retry_in)
                tx.set_timer(key, tx.ts + retry_in)
                return
            # failed again and again while other work went through: poison, not an outage.
            # Retrying forever would hide it; the self-watch reports it (degraded, audited,
            # the default chain told) and the entity keeps its state in the store.
            log.exception("deadline_abandoned", kind=key[0], entity=key[1], error=error)
            self.abandoned_deadlines[key] = error
            self.metrics.deadlines_abandoned.inc()

        async def one(tx: Tx, key: Key) -> None:
            await self._deadline(tx, key)
            self._deadline_failures.succeeded(key)

        await self._in_units(keys, one, failed, wait_publish=False)

    async def _deadline(self, tx: Tx, key: Key) -> None:
        kind, entity = key
        if kind == "alarm":
            await self.svc.escalator.deadline(tx, entity)
        elif kind == "presence":
            await self.presence.deadline(tx)
        else:
            await self.svc.timers.deadline(tx, kind, entity)

    # ------------------------------------------------------------------ housekeeping

    async def flush_devices(self) -> int:
        """Write dirty device last-seen times (batched: at most a few seconds are at risk)."""
        return await self.svc.devices.flush()

    async def purge_processed(self) -> int:
        cutoff = (self.clock() - DEDUPE_TTL).timestamp()
        async with self.store.tx() as conn:
            res = await conn.execute(
                delete(processed_events).where(processed_events.c.received_at < cutoff)
            )
        return int(res.rowcount or 0)
