"""Carrying out a transition of the alarm state machine (`domain/alarm.py`): a compare-and-set
on the row's generation, then the effects the transition named, in its order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import and_, update

from jaa_gateway.alarms.announce import Announcer
from jaa_gateway.domain.alarm import Change, Effect
from jaa_gateway.effects import Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import OutboxPort
from jaa_gateway.store import queries as q
from jaa_gateway.store.rows import AlarmRow, update_alarm_row
from jaa_gateway.store.schema import notifications

# carried out by the caller, in `then` (they need the caller's service)
_CALLERS = frozenset({Effect.RUN_STEPS, Effect.TELL_WORKER_OK})


@dataclass(eq=False, repr=False)
class AlarmWriter:
    announce: Announcer
    metrics: Metrics
    # told when an alarm stops: it drops step rows it has claimed but not started yet
    outbox: OutboxPort

    async def write(
        self,
        tx: Tx,
        a: AlarmRow,
        change: Change,
        then: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Write `change` to alarm `a` (StaleWrite if another writer changed it since it was
        read: nothing is written) and update `a`; cancel its pending steps if it says so; run
        `then` (the caller's audit, and RUN_STEPS / TELL_WORKER_OK: it gets the number of
        step rows cancelled); then the other effects in the change's order."""
        if _CALLERS & set(change.effects) and then is None:
            raise ValueError(f"{sorted(_CALLERS & set(change.effects))} need the caller's `then`")
        columns = change.columns()
        await q.update_alarm(tx.conn, a, **columns)
        update_alarm_row(a, columns)
        cancelled = 0
        if Effect.CANCEL_STEPS in change.effects:
            cancelled = await self._cancel_steps(tx, a["id"])
        if then is not None:
            await then(cancelled)
        for effect in change.effects:
            if effect is Effect.STOP_TIMER:
                tx.set_timer(("alarm", a["id"]), None)
            elif effect is Effect.TELL_DEVICE:
                self.announce.tell(tx, a["device"], a)
            elif effect is Effect.PUBLISH:
                self.announce.publish(tx, a)
            elif effect is Effect.CLOSED:
                tx.after_commit.append(self.metrics.alarms_open.dec)

    async def _cancel_steps(self, tx: Tx, alarm_id: str) -> int:
        """Nothing may start after the ack is stored: pending step rows are cancelled in the
        same transaction (the sender's claim checks the alarm's state), and the sender drops
        the ones it claimed but has not started."""
        res = await tx.conn.execute(
            update(notifications)
            .where(
                and_(
                    notifications.c.alarm == alarm_id,
                    notifications.c.purpose == "alarm",
                    notifications.c.state == "pending",
                )
            )
            .values(state="cancelled", error="acknowledged")
        )
        outbox = self.outbox
        tx.after_commit.append(lambda: outbox.alarm_stopped(alarm_id))
        return int(res.rowcount or 0)
