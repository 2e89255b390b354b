"""Notification rows: what the outbox sends, written in the transaction that causes them; and
what the core needs of the outbox (`OutboxPort`)."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import insert

from jaa_gateway.effects import Tx
from jaa_gateway.store.schema import notifications

# built once: constructing a statement per row costs more than running it
_INSERT_NOTIFICATION = insert(notifications)


class OutboxPort(Protocol):
    """The sender, as the engine and the alarm services see it (the Outbox implements it)."""

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """SMS rows claimed ('sending') by a committed transaction: send them now. Nobody else
        sends them until a restart's recovery, so this is required, never a no-op."""

    def wake(self) -> None:
        """Rows were stored 'pending': look for them now, not at the next pass."""

    def alarm_stopped(self, alarm_id: str) -> None:
        """An acknowledgement committed: drop step rows of this alarm claimed but not started."""


async def enqueue(
    tx: Tx,
    *,
    alarm: str | None,
    purpose: str,
    k: int | None,
    person: str | None,
    phone: str,
    channel: str,
    body: str,
) -> None:
    # The first SMS of an alarm (and any SMS that is no escalation step) is claimed by this
    # very transaction and handed to the sender after the commit: no second transaction
    # stands between an alarm and its first SMS. Later steps wait as 'pending' for the
    # sender's claim, so an acknowledgement stored before that claim cancels them. Calls
    # always go through the sender's pass, which paces them per number.
    direct = channel == "sms" and (purpose != "alarm" or k == 0)
    row: dict[str, Any] = {
        "alarm": alarm,
        "purpose": purpose,
        "k": k,
        "person": person,
        "phone": phone,
        "channel": channel,
        "body": body,
        "state": "sending" if direct else "pending",
        "attempts": 1 if direct else 0,
        "next_attempt_at": tx.ts,
        "created_at": tx.ts,
    }
    res = await tx.conn.execute(_INSERT_NOTIFICATION, row)
    if direct:
        pk = res.inserted_primary_key
        assert pk is not None
        row["id"] = pk[0]
        row["attempts"] = 0  # what the sender's bookkeeping counts from
        tx.direct.append(row)
    tx.wake_outbox = True
