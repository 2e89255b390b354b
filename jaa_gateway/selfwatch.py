"""The gateway watching itself.

When it cannot do its job — notifications failing for longer than `notify.degraded_after`, or
the database not writable — it says so on its retained status topic (`degraded` with the
reason), logs at error level, and sends a `gateway_degraded` notice to the first step of the
default chain. That notice goes straight to the transport, not through the outbox: the outbox
lives in the database, which may be the very thing that is broken. Each target gets an SMS and,
if the SMS fails, a call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import structlog

from jaa_gateway.config import Config
from jaa_gateway.domain import escalation, guard_texts, texts
from jaa_gateway.effects import Publisher
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import Notifier, TransportError
from jaa_gateway.notify.twiml import voice_reply
from jaa_gateway.outbox import Outbox
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store, describe_error
from jaa_gateway.supervise import Supervisor
from jaa_gateway.timeutil import utcnow
from jaa_gateway.topics import Topics

log = structlog.get_logger("jaa_gateway.selfwatch")

CHECK_EVERY = 2.0
RENOTIFY_AFTER = dt.timedelta(minutes=30)
# audit entries kept while the database refuses them (oldest dropped beyond this)
UNAUDITED_LIMIT = 100


class SelfWatch:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        outbox: Outbox,
        notifier: Notifier,
        publisher: Publisher,
        metrics: Metrics,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        supervisor: Supervisor | None = None,
        abandoned: Callable[[], dict[tuple[str, str], str]] = dict,
    ) -> None:
        self.cfg = cfg
        self.supervisor = supervisor
        # deadlines the engine gave up on (poison): degraded until the daemon is restarted
        self.abandoned = abandoned
        self.store = store
        self.outbox = outbox
        self.notifier = notifier
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.reasons: list[str] = []
        self.details: dict[str, str] = {}
        self._notified_at: dt.datetime | None = None
        self._unaudited: list[tuple[float, str, dict[str, Any]]] = []
        self.status_topic = Topics(cfg.mqtt.topic_prefix).status
        # hot standby (CONTRACT §8): the status names the node (set by App when clustered)
        self.node: str | None = None

    async def check(self) -> list[str]:
        now = self.clock()
        reasons: list[str] = []
        details: dict[str, str] = {}
        failing = self.outbox.failing_since
        if failing is not None and now.timestamp() - failing >= (
            self.cfg.notify.degraded_after.total_seconds()
        ):
            reasons.append("notifications_failing")
            details["notifications_failing"] = (
                f"notifications failing for {now.timestamp() - failing:.0f}s"
            )
        try:
            async with asyncio.timeout(3.0):
                await self.store.probe_write()
        except Exception as exc:
            reasons.append("database_unwritable")
            details["database_unwritable"] = f"database not writable ({describe_error(exc)})"
        abandoned = self.abandoned()
        if abandoned:
            reasons.append("deadline_failed")
            details["deadline_failed"] = "; ".join(
                f"deadline of {kind} {entity} given up after repeated failures ({why})"
                for (kind, entity), why in list(abandoned.items())[:5]
            )
        faults = self.supervisor.recent_faults() if self.supervisor is not None else []
        if faults:
            reasons.append("task_failed")
            details["task_failed"] = "; ".join(
                f"task {f.task} restarted ({f.restarts}x): {f.error}" for f in faults
            )
        self.details = details
        return reasons

    def status_payload(self) -> dict[str, Any]:
        node = {"node": self.node} if self.node is not None else {}
        if not self.reasons:
            return {"state": "online", **node}
        return {
            "state": "degraded",
            "reason": guard_texts.degraded_reasons("en", self.reasons),
            "reasons": list(self.reasons),
            **node,
        }

    async def republish(self) -> None:
        """After a reconnect the edge says online; say degraded again if we are."""
        if self.reasons:
            await self.publisher.publish(self.status_topic, self.status_payload(), retain=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("selfwatch_failed")

    async def step(self) -> None:
        reasons = await self.check()
        now = self.clock()
        changed = reasons != self.reasons
        if changed and not reasons:
            # the audit says so before anyone is told (status, /healthz): whoever sees
            # "online" finds the recovery in the log
            log.info("gateway_recovered")
            await self._audit("gateway_recovered")
            self._notified_at = None
        self.reasons = reasons
        self.metrics.degraded.set(1 if reasons else 0)
        if changed:
            try:
                await self.publisher.publish(self.status_topic, self.status_payload(), retain=True)
            except Exception:
                log.exception("status_publish_failed")
            if reasons:
                log.error("gateway_degraded", reasons=reasons, details=self.details)
        if reasons and (
            changed or self._notified_at is None or now - self._notified_at >= RENOTIFY_AFTER
        ):
            self._notified_at = now
            await self._notify(reasons, now)

    async def _audit(self, event: str, **data: Any) -> None:
        """Append to the audit log. An entry the database refuses is kept and written, with
        its own time and marked delayed, by the next audit that gets through: otherwise a
        degraded spell caused by the database itself would be missing from the log."""
        self._unaudited.append((self.clock().timestamp(), event, data))
        del self._unaudited[:-UNAUDITED_LIMIT]
        try:
            async with self.store.tx() as conn:
                last = len(self._unaudited) - 1
                for i, (ts, ev, fields) in enumerate(self._unaudited):
                    extra: dict[str, Any] = {"delayed": True} if i < last else {}
                    await q.add_audit(conn, ts, ev, **fields, **extra)
        except Exception:
            log.warning("audit_unavailable", audit_event=event, waiting=len(self._unaudited))
            return
        self._unaudited.clear()

    async def _notify(self, reasons: list[str], now: dt.datetime) -> None:
        lang = self.cfg.gateway.language
        chain = self.cfg.chain(self.cfg.gateway.default_escalation)
        if chain is None:
            return
        targets = escalation.resolve_targets(self.cfg, chain.steps[0].notify, None, now)
        local = now.astimezone(self.cfg.tz).strftime("%H:%M")
        body = texts.notice_sms(
            lang, "gateway_degraded", None, None, local, guard_texts.degraded_reasons(lang, reasons)
        )
        sent: list[dict[str, Any]] = []
        for t in targets:
            via = await self._send_any(t.phone, body, lang)
            sent.append({"person": t.person_id, "via": via})
        log.error("gateway_degraded_notice", targets=sent, reasons=reasons)
        await self._audit("gateway_degraded", reasons=reasons, details=self.details, sent=sent)

    async def _send_any(self, phone: str, body: str, lang: str) -> str | None:
        """SMS first; a call when the SMS fails. Returns the channel that worked."""
        try:
            await self.notifier.send_sms(phone, body)
            return "sms"
        except TransportError as exc:
            log.warning("degraded_notice_sms_failed", error=exc.message[:200])
        try:
            await self.notifier.place_call(phone, voice_reply(body, texts.VOICE_LANG[lang]))
            return "call"
        except TransportError as exc:
            log.error("degraded_notice_call_failed", error=exc.message[:200])
        return None
