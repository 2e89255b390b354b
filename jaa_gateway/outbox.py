"""The outbox sender: claims pending notifications with a compare-and-set, hands them to the
transport, records the SID or the failure (jaa_gateway.outbox_record), and retries transient
failures with jittered backoff for a bounded time. Delivery is at-least-once: for an alarm, a
duplicate beats a miss.

Sending runs beside the engine, never inside it: the escalation timetable never waits on a slow
or failing provider. Calls to one number are paced (caller-ID spam flagging): a held-back call
is placed as soon as the pace allows and reads the alarms that waited longest (jaa_gateway.calls
picks them); pressing 1 acknowledges exactly those, and the others wait for the next call.

One row never stops the others: a row whose handling raises (a transport bug, a call that cannot
be built) is retried with backoff and, after `POISON_TRIES` such tries, marked failed and audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import and_, exists, func, not_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from jaa_gateway.aio import wait_event
from jaa_gateway.calls import call_document, plan_call
from jaa_gateway.config import Config
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import Notifier, SendResult, TransportError
from jaa_gateway.outbox_record import Attempt, Recorder
from jaa_gateway.outcomes import Crashed, due_rows
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, notifications
from jaa_gateway.timeutil import utcnow

log = structlog.get_logger("jaa_gateway.outbox")

BATCH = 200
MAX_IN_FLIGHT = 32

# a step notification may only start while its alarm is still escalating (the ack race)
_ALARM_STILL_ESCALATING = or_(
    notifications.c.purpose != "alarm",
    exists().where(
        and_(alarms.c.id == notifications.c.alarm, alarms.c.state == AlarmState.ESCALATING.value)
    ),
)


class Outbox:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        notifier: Notifier,
        metrics: Metrics,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.rand = rand
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(MAX_IN_FLIGHT)
        # alarms acknowledged (or otherwise stopped) since start: a step row claimed just
        # before the ack is dropped if its request has not started yet
        self._stopped: dict[str, float] = {}
        self._direct: list[dict[str, Any]] = []
        self._in_flight: set[int] = set()
        self._call_ok_at: dict[str, float] = {}  # phone -> earliest next call (epoch)
        self._recorder = Recorder(
            cfg, store, metrics, clock=clock, rand=rand, recorded=lambda: self.recorded()
        )
        # hot standby (CONTRACT §8): asked right before each provider request; a node that is
        # not (or no longer surely) the leader sends nothing (App sets it when clustered)
        self.may_act: Callable[[], bool] = lambda: True
        # console hook: told after a send's outcome is stored (App sets it)
        self.recorded: Callable[[], None] = lambda: None

    @property
    def last_success(self) -> float | None:
        return self._recorder.last_success

    @property
    def last_failure(self) -> float | None:
        return self._recorder.last_failure

    @property
    def failing_since(self) -> float | None:
        return self._recorder.failing_since

    def wake(self) -> None:
        self._wake.set()

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """SMS rows the engine claimed in its own transaction: send them now."""
        self._direct.extend(rows)
        self._in_flight.update(r["id"] for r in rows)
        self._wake.set()

    def alarm_stopped(self, alarm_id: str) -> None:
        """Called right after an acknowledgement commits (before the engine's lock is let go)."""
        self._stopped[alarm_id] = time.monotonic()
        if len(self._stopped) > 10_000:
            cutoff = time.monotonic() - 3600
            self._stopped = {a: t for a, t in self._stopped.items() if t > cutoff}

    def _split_stopped(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        keep = [r for r in rows if not (r["purpose"] == "alarm" and r["alarm"] in self._stopped)]
        drop = [r for r in rows if r not in keep]
        return keep, drop

    @property
    def status_url(self) -> str:
        return f"{self.cfg.http.public_url}/twilio/status"

    async def recover(self) -> None:
        """After a crash, rows left 'sending' may or may not have gone out: send them again
        (at-least-once), and restore the call pacing from what was sent recently."""
        now = self.clock().timestamp()
        spacing = self.cfg.notify.call_spacing.total_seconds()
        async with self.store.tx() as conn:
            res = await conn.execute(
                update(notifications)
                .where(notifications.c.state == "sending")
                .values(state="pending", next_attempt_at=now)
            )
            if res.rowcount:
                log.warning("outbox_requeued_after_restart", count=res.rowcount)
                await q.add_audit(conn, now, "outbox_requeued", count=res.rowcount)
            rows = await conn.execute(
                select(notifications.c.phone, func.max(notifications.c.sent_at))
                .where(
                    and_(notifications.c.channel == "call", notifications.c.sent_at > now - spacing)
                )
                .group_by(notifications.c.phone)
            )
            for phone, sent_at in rows:
                self._call_ok_at[phone] = float(sent_at) + spacing

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                direct, self._direct = self._direct, []
                for r in direct:
                    tg.create_task(self._send_sms(r), name=f"sms-{r['id']}")
                try:
                    await self._pass(tg)
                    delay = await self._next_delay()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox_pass_failed")
                    delay = 1.0
                if delay > 0:
                    await wait_event(self._wake, delay)

    async def _next_delay(self) -> float:
        async with self.store.tx() as conn:
            nxt = (
                await conn.execute(
                    select(func.min(notifications.c.next_attempt_at)).where(
                        notifications.c.state == "pending"
                    )
                )
            ).scalar()
        if nxt is None:
            return 5.0
        return float(min(5.0, max(0.0, float(nxt) - self.clock().timestamp())))

    async def _pass(self, tg: asyncio.TaskGroup) -> None:
        now = self.clock().timestamp()
        async with self.store.tx() as conn:
            rows = await due_rows(conn, now, limit=BATCH)
        calls_seen: set[str] = set()
        for r in rows:
            if r["id"] in self._in_flight:
                continue
            try:
                if r["channel"] == "call":
                    if r["phone"] in calls_seen:
                        continue
                    calls_seen.add(r["phone"])
                    await self._maybe_call(tg, r["phone"], now)
                else:
                    claimed = await self._claim([r["id"]])
                    if claimed:
                        self._in_flight.add(r["id"])
                        tg.create_task(self._send_sms(r), name=f"sms-{r['id']}")
            except SQLAlchemyError:
                raise  # the database, not this row: the whole pass tries again
            except Exception as exc:
                # this row (the oldest of its number's calls) is the one that cannot pass: it
                # gets a strike and the pass goes on with the rows behind it
                log.exception("outbox_row_failed", notification=r["id"], channel=r["channel"])
                await self._strike([r], exc)

    async def _claim(self, ids: list[int]) -> list[int]:
        """Compare-and-set pending -> sending; drop rows whose alarm stopped escalating."""
        got: list[int] = []
        async with self.store.tx() as conn:
            for nid in ids:
                res = await conn.execute(
                    update(notifications)
                    .where(
                        and_(
                            notifications.c.id == nid,
                            notifications.c.state == "pending",
                            _ALARM_STILL_ESCALATING,
                        )
                    )
                    .values(state="sending", attempts=notifications.c.attempts + 1)
                )
                if res.rowcount == 1:
                    got.append(nid)
                else:
                    await conn.execute(
                        update(notifications)
                        .where(and_(notifications.c.id == nid, notifications.c.state == "pending"))
                        .values(state="cancelled", error="alarm no longer escalating")
                    )
        return got

    async def _maybe_call(self, tg: asyncio.TaskGroup, phone: str, now: float) -> None:
        ok_at = self._call_ok_at.get(phone, 0.0)
        numbers_calls = (notifications.c.channel == "call", notifications.c.phone == phone)
        pending_calls = and_(notifications.c.state == "pending", *numbers_calls)
        async with self.store.tx() as conn:
            rows = await due_rows(conn, now, *numbers_calls)
            if ok_at > now:
                # paced: hold the call back; it will speak every alarm still open then
                await conn.execute(
                    update(notifications)
                    .where(and_(pending_calls, notifications.c.next_attempt_at < ok_at))
                    .values(next_attempt_at=ok_at)
                )
                return
            # calls for alarms no longer escalating are not read, nor counted as "more"
            await conn.execute(
                update(notifications)
                .where(and_(pending_calls, not_(_ALARM_STILL_ESCALATING)))
                .values(state="cancelled", error="alarm no longer escalating")
            )
        rows = [r for r in rows if r["id"] not in self._in_flight]
        plan = plan_call(rows, self.cfg.gateway.language, self.cfg.http.public_url)
        for r, why in plan.bad:
            log.error("call_unspeakable", notification=r["id"], alarm=r["alarm"], error=why)
            await self._strike([r], ValueError(why))
        # only the alarms the call reads are claimed: the others stay pending for the next call
        claimed = set(await self._claim([r["id"] for r in plan.rows]))
        group = [r for r in plan.rows if r["id"] in claimed]
        if not group:
            return
        self._call_ok_at[phone] = now + self.cfg.notify.call_spacing.total_seconds()
        self._in_flight.update(claimed)
        tg.create_task(self._send_call(phone, group, plan.more), name=f"call-{group[0]['id']}")

    async def _send_sms(self, row: dict[str, Any]) -> None:
        async with self._sem:
            if self._split_stopped([row])[1]:
                await self._drop([row], "sms")
                return
            await self._attempt(
                [row],
                "sms",
                lambda: self.notifier.send_sms(
                    row["phone"], row["body"], status_callback=self.status_url
                ),
            )

    async def _send_call(self, phone: str, group: list[dict[str, Any]], more: int) -> None:
        async with self._sem:
            group, dropped = self._split_stopped(group)
            if dropped:
                await self._drop(dropped, "call")
            if group:
                await self._place_call(phone, group, more)

    async def _place_call(self, phone: str, group: list[dict[str, Any]], more: int) -> None:
        async def send() -> SendResult:
            # built here, so that a document that cannot be built counts as a failed attempt
            # of these rows (bounded by POISON_TRIES) and never escapes into the task group
            twiml = call_document(group, more, self.cfg.gateway.language, self.cfg.http.public_url)
            # the pace counts from the request, not the claim (a claim that waited on a busy
            # loop must not bring the next call closer), and again from the provider's answer:
            # a first request that also opened the connection reaches the provider later than
            # it left, and the next call must still arrive call_spacing after it
            spacing = self.cfg.notify.call_spacing.total_seconds()
            self._pace(phone, self.clock().timestamp() + spacing)
            try:
                return await self.notifier.place_call(phone, twiml, status_callback=self.status_url)
            finally:
                self._pace(phone, self.clock().timestamp() + spacing)

        await self._attempt(group, "call", send)

    def _pace(self, phone: str, ok_at: float) -> None:
        self._call_ok_at[phone] = max(self._call_ok_at.get(phone, 0.0), ok_at)

    async def _strike(self, rows: list[dict[str, Any]], exc: BaseException) -> None:
        """A pending row whose handling raised before any send: count the try, back off, and
        after POISON_TRIES mark it failed (audited like any failed notification)."""
        for r in rows:
            await self._recorder.until_stored(
                Attempt([r], str(r["channel"]), error=Crashed(exc), unclaimed=True)
            )

    async def _drop(self, rows: list[dict[str, Any]], channel: str) -> None:
        """Step rows whose alarm was acknowledged after their claim: never started."""
        try:
            await self._recorder.until_stored(Attempt(rows, channel, dropped=True))
        finally:
            self._in_flight.difference_update(r["id"] for r in rows)
            self.wake()

    async def _attempt(self, rows: list[dict[str, Any]], channel: str, send: Any) -> None:
        ids = [r["id"] for r in rows]
        if not self.may_act():
            # the rows stay claimed ('sending'): the leader that took over requeues them
            log.warning("outbox_send_withheld_not_leader", notifications=ids, channel=channel)
            self._in_flight.difference_update(ids)
            return
        t0 = asyncio.get_running_loop().time()
        result: SendResult | None = None
        error: TransportError | None = None
        try:
            result = await send()
        except TransportError as exc:
            error = exc
        except Exception as exc:  # a transport bug must not lose the notification (nor loop)
            log.exception("transport_crashed", channel=channel)
            error = Crashed(exc)
        finally:
            self.metrics.notify_latency.labels(channel=channel).observe(
                asyncio.get_running_loop().time() - t0
            )
        try:
            await self._recorder.until_stored(Attempt(rows, channel, result, error))
        finally:
            self._in_flight.difference_update(ids)
            self.wake()

    def forget(self) -> None:
        """Hot standby: after stepping down, what this node held in memory as leader goes;
        the next leader (this node again, maybe) starts from the store (`recover`)."""
        self._direct.clear()
        self._in_flight.clear()
        self._stopped.clear()
        self._call_ok_at.clear()

    async def reset_after_crash(self) -> None:
        """Before the supervisor restarts a crashed sender: its send tasks died with it, so the
        rows they had claimed ('sending') would wait for a process restart. Put them back as
        pending, except rows the engine handed over that no task has taken yet."""
        keep = {int(r["id"]) for r in self._direct}
        self._in_flight &= keep
        now = self.clock().timestamp()
        async with self.store.tx() as conn:
            res = await conn.execute(
                update(notifications)
                .where(and_(notifications.c.state == "sending", notifications.c.id.not_in(keep)))
                .values(state="pending", next_attempt_at=now)
            )
            if res.rowcount:
                log.warning("outbox_requeued_after_crash", count=res.rowcount)
                await q.add_audit(conn, now, "outbox_requeued", count=res.rowcount, why="crash")
