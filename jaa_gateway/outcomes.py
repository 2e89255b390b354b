"""What one attempt means for a notification row (pure), and the outbox's due-rows query.

Kept apart from the outbox's loop so the retry rules can be read (and tested) on their own: a
provider's transient failure is retried with backoff for `retry_for`; a permanent one fails at
once; a row whose handling raised (`Crashed`: a bug, a text that cannot be sent) is tried
`POISON_TRIES` times, then fails, so no row is retried forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import and_, func, select, update

from jaa_gateway.notify.base import SendResult, TransportError
from jaa_gateway.notify.retry import backoff_delay
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Conn, Store
from jaa_gateway.store.schema import notifications

log = structlog.get_logger("jaa_gateway.outbox")

# a row whose handling raises (not a provider's answer) is tried this often, then marked failed
POISON_TRIES = 3


class Crashed(TransportError):
    """The handling of a row raised something no transport promises: a bug, or a row that can
    never be sent. Retried like a transient failure, but only `POISON_TRIES` times."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}", permanent=False)


def outcome(
    r: dict[str, Any],
    now: float,
    result: SendResult | None,
    error: TransportError | None,
    dropped: bool,
    *,
    retry_for: float,
    rand: Callable[[], float],
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """What one attempt means for its row: (column values, audit event, audit detail)."""
    attempts = int(r["attempts"]) + 1
    if dropped:
        why = "acknowledged before sending"
        return {"state": "cancelled", "error": why}, "notification_dropped", {"why": why}
    if result is not None:
        values = {
            "state": "sent",
            "sid": result.sid,
            "sent_at": now,
            # a status callback may have come first: keep the newer status
            "delivery_status": func.coalesce(notifications.c.delivery_status, result.status),
            "error": None,
        }
        return values, "notification_sent", {"sid": result.sid, "attempts": attempts}
    if error is None:
        raise ValueError("an attempt has a result, an error, or was dropped")
    message = error.message[:500]
    detail: dict[str, Any] = {
        "error": message,
        "status": error.status,
        "code": error.code,
        "attempts": attempts,
    }
    if isinstance(error, Crashed) and attempts >= POISON_TRIES:
        # this row, not the provider: never retried forever
        return (
            {"state": "failed", "error": message},
            "notification_failed",
            detail | {"permanent": False, "poison": True},
        )
    if error.permanent or now - float(r["created_at"]) >= retry_for:
        return (
            {"state": "failed", "error": message},
            "notification_failed",
            detail | {"permanent": error.permanent},
        )
    delay = backoff_delay(attempts, rand=rand)
    values = {"state": "pending", "next_attempt_at": now + delay, "error": message}
    return values, "notification_retry", detail | {"retry_in_s": round(delay, 3)}


async def due_rows(
    conn: Conn, now: float, *conditions: Any, limit: int | None = None
) -> list[dict[str, Any]]:
    """Pending notifications due by `now` (and matching `conditions`), oldest first."""
    query = (
        select(notifications)
        .where(
            and_(
                notifications.c.state == "pending",
                notifications.c.next_attempt_at <= now,
                *conditions,
            )
        )
        .order_by(notifications.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def mark_unrecordable(
    store: Store, r: dict[str, Any], channel: str, exc: BaseException, *, now: Callable[[], Any]
) -> bool:
    """A row whose outcome cannot be stored: mark it failed with nothing from the attempt in it
    (never left 'sending', to be sent again after every restart), audited. False if even that
    cannot be written (the database itself is refusing)."""
    message = f"the outcome could not be recorded: {type(exc).__name__}"
    try:
        async with store.tx() as conn:
            await conn.execute(
                update(notifications)
                .where(notifications.c.id == r["id"])
                .values(state="failed", error=message)
            )
            await q.add_audit(
                conn,
                now().timestamp(),
                "notification_failed",
                alarm=r["alarm"],
                channel=channel,
                notification=r["id"],
                error=message,
                poison=True,
            )
    except Exception:
        log.exception("outbox_record_failed_twice", notification=r["id"])
        return False
    return True
