"""The outbox sender: claims pending notifications with a compare-and-set, hands them to the
transport, records the SID or the failure, and retries transient failures with jittered backoff
for a bounded time. Delivery is at-least-once: for an alarm, a duplicate beats a miss.

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
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from jaa_gateway.aio import wait_event
from jaa_gateway.calls import call_document, plan_call
from jaa_gateway.config import Config
from jaa_gateway.domain.alarm import AlarmState
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import Notifier, SendResult, TransportError
from jaa_gateway.outcomes import POISON_TRIES, Crashed, due_rows, mark_unrecordable, outcome
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, notifications
from jaa_gateway.timeutil import utcnow

log = structlog.get_logger("jaa_gateway.outbox")

BATCH = 200
MAX_IN_FLIGHT = 32
# while the database refuses to record an outcome (full, read-only), try again this often
RECORD_RETRY_MIN = 0.5
RECORD_RETRY_MAX = 5.0

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
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.failing_since: float | None = None
        # hot standby (CONTRACT §8): asked right before each provider request; a node that is
        # not (or no longer surely) the leader sends nothing (App sets it when clustered)
        self.may_act: Callable[[], bool] = lambda: True
        # console hook: told after a send's outcome is stored (App sets it)
        self.recorded: Callable[[], None] = lambda: None

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
        async with self.store.tx() as conn:
            rows = await due_rows(
                conn,
                now,
                notifications.c.channel == "call",
                notifications.c.phone == phone,
            )
            if ok_at > now:
                # paced: hold the call back; it will speak every alarm still open then
                await conn.execute(
                    update(notifications)
                    .where(
                        and_(
                            notifications.c.state == "pending",
                            notifications.c.channel == "call",
                            notifications.c.phone == phone,
                            notifications.c.next_attempt_at < ok_at,
                        )
                    )
                    .values(next_attempt_at=ok_at)
                )
                return
            # calls for alarms no longer escalating are not read, nor counted as "more"
            await conn.execute(
                update(notifications)
                .where(
                    and_(
                        notifications.c.state == "pending",
                        notifications.c.channel == "call",
                        notifications.c.phone == phone,
                        not_(_ALARM_STILL_ESCALATING),
                    )
                )
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
            channel = str(r["channel"])
            await self._record_until_stored([r], channel, None, Crashed(exc), unclaimed=True)

    async def _drop(self, rows: list[dict[str, Any]], channel: str) -> None:
        """Step rows whose alarm was acknowledged after their claim: never started."""
        try:
            await self._record_until_stored(rows, channel, None, None, dropped=True)
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
            await self._record_until_stored(rows, channel, result, error)
        finally:
            self._in_flight.difference_update(ids)
            self.wake()

    async def _record_until_stored(
        self,
        rows: list[dict[str, Any]],
        channel: str,
        result: SendResult | None,
        error: TransportError | None,
        dropped: bool = False,
        unclaimed: bool = False,
    ) -> None:
        """Record the outcome, retrying while the database refuses it.

        A send task must not raise: its exception would end the outbox's task group, and with
        it every later notification, while the daemon looked healthy. Meanwhile the rows stay
        claimed ('sending'), so no other pass sends them again; a restart requeues them.
        A failure that is not the database refusing (a row it cannot store) is tried
        POISON_TRIES times; then each row is recorded on its own, and a row that still cannot
        be is marked failed with a plain message.
        """
        delay = RECORD_RETRY_MIN
        tries = 0
        while True:
            try:
                await self._record(rows, channel, result, error, dropped, unclaimed)
                return
            except Exception as exc:
                if not isinstance(exc, OperationalError):
                    tries += 1
                if tries >= POISON_TRIES:
                    if len(rows) > 1:
                        for r in rows:
                            await self._record_until_stored(
                                [r], channel, result, error, dropped, unclaimed
                            )
                        return
                    if await mark_unrecordable(self.store, rows[0], channel, exc, now=self.clock):
                        self.metrics.notifications.labels(channel=channel, outcome="failed").inc()
                        return
                log.error(
                    "outbox_record_failed",
                    channel=channel,
                    notifications=[r["id"] for r in rows],
                    sent=result is not None,
                    error_type=type(exc).__name__,
                    error=str(exc)[:200],
                    retry_in_s=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)

    async def _record(
        self,
        rows: list[dict[str, Any]],
        channel: str,
        result: SendResult | None,
        error: TransportError | None,
        dropped: bool = False,
        unclaimed: bool = False,
    ) -> None:
        now = self.clock().timestamp()
        retry_for = self.cfg.notify.retry_for.total_seconds()
        failed = 0
        async with self.store.tx() as conn:
            for r in rows:
                values, event, detail = outcome(
                    r, now, result, error, dropped, retry_for=retry_for, rand=self.rand
                )
                failed += event == "notification_failed"
                where = notifications.c.id == r["id"]
                if unclaimed:  # a strike on a pending row: it counts as a try
                    values["attempts"] = int(r["attempts"]) + 1
                    where = and_(where, notifications.c.state == "pending")
                await conn.execute(update(notifications).where(where).values(**values))
                await q.add_audit(
                    conn,
                    now,
                    event,
                    alarm=r["alarm"],
                    actor=r["person"],
                    channel=channel,
                    purpose=r["purpose"],
                    k=r["k"],
                    to=r["phone"],
                    notification=r["id"],
                    **detail,
                )
        self.recorded()
        if dropped:
            return
        if result is not None:
            self.last_success = now
            self.failing_since = None
            self.metrics.notifications.labels(channel=channel, outcome="sent").inc(len(rows))
            log.info(
                "notification_sent",
                channel=channel,
                sid=result.sid,
                alarm=rows[0]["alarm"],
                purpose=rows[0]["purpose"],
                count=len(rows),
            )
        else:
            assert error is not None
            self.last_failure = now
            if self.failing_since is None:
                self.failing_since = now
            if failed:
                self.metrics.notifications.labels(channel=channel, outcome="failed").inc(failed)
            if len(rows) > failed:
                self.metrics.notifications.labels(channel=channel, outcome="retry").inc(
                    len(rows) - failed
                )
            log.error(
                "notification_failed",
                channel=channel,
                alarm=rows[0]["alarm"],
                error=error.message[:200],
                permanent=error.permanent,
                status=error.status,
                code=error.code,
            )

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
