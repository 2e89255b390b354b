"""Recording what came of a send attempt: the row's new state and its audit, the send health
(last success, failing since) and the metrics, retried while the database refuses.

What an attempt means for a row is decided in jaa_gateway.outcomes (pure); this is the outbox's
writing of it, kept beside the loop that claims and sends (jaa_gateway.outbox).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, update
from sqlalchemy.exc import OperationalError

from jaa_gateway.config import Config
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import SendResult, TransportError
from jaa_gateway.outcomes import POISON_TRIES, mark_unrecordable, outcome
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import notifications

log = structlog.get_logger("jaa_gateway.outbox")

# while the database refuses to record an outcome (full, read-only), try again this often
RECORD_RETRY_MIN = 0.5
RECORD_RETRY_MAX = 5.0


@dataclass(frozen=True)
class Attempt:
    """What came of one try at a group of rows (an SMS, or one call for several alarms)."""

    rows: list[dict[str, Any]]
    channel: str
    result: SendResult | None = None
    error: TransportError | None = None
    dropped: bool = False  # step rows acknowledged after their claim: never started
    unclaimed: bool = False  # a strike on a pending row whose handling raised: counts as a try


class Recorder:
    """Stores attempts' outcomes for the outbox, and keeps its send health."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        metrics: Metrics,
        *,
        clock: Callable[[], dt.datetime],
        rand: Callable[[], float],
        recorded: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.rand = rand
        self.recorded = recorded  # told after an outcome is stored
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.failing_since: float | None = None

    async def until_stored(self, a: Attempt) -> None:
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
                await self._store(a)
                return
            except Exception as exc:
                if not isinstance(exc, OperationalError):
                    tries += 1
                if tries >= POISON_TRIES:
                    if len(a.rows) > 1:
                        for r in a.rows:
                            await self.until_stored(dataclasses.replace(a, rows=[r]))
                        return
                    if await mark_unrecordable(
                        self.store, a.rows[0], a.channel, exc, now=self.clock
                    ):
                        self.metrics.notifications.labels(channel=a.channel, outcome="failed").inc()
                        return
                log.error(
                    "outbox_record_failed",
                    channel=a.channel,
                    notifications=[r["id"] for r in a.rows],
                    sent=a.result is not None,
                    error_type=type(exc).__name__,
                    error=str(exc)[:200],
                    retry_in_s=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)

    async def _store(self, a: Attempt) -> None:
        rows, channel, result, error = a.rows, a.channel, a.result, a.error
        now = self.clock().timestamp()
        retry_for = self.cfg.notify.retry_for.total_seconds()
        failed = 0
        async with self.store.tx() as conn:
            for r in rows:
                values, event, detail = outcome(
                    r, now, result, error, a.dropped, retry_for=retry_for, rand=self.rand
                )
                failed += event == "notification_failed"
                where = notifications.c.id == r["id"]
                if a.unclaimed:  # a strike on a pending row: it counts as a try
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
        if a.dropped:
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
