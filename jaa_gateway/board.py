"""What the guard console shows (CONTRACT §9), read from the store in one transaction: the
console's way into the store, as `views.py` is the API's. Rows out; the console shapes them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from jaa_gateway.store import board as reads
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.rows import AlarmRow

Row = dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    alarms: list[Row]  # open alarms, newest first
    notifications: dict[str, list[Row]]  # alarm id -> its notifications, oldest first
    sessions: list[Row]  # active sessions, oldest first
    devices: dict[str, Row]  # device id -> stored battery / last heard / position
    denials: list[Row] = field(default_factory=list)  # today's session_denied audit rows


class Board:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def snapshot(self, denials_since: float) -> Snapshot:
        async with self._store.tx() as conn:
            open_alarms = await reads.open_alarms_newest_first(conn)
            sent = await reads.notifications_of(conn, [a["id"] for a in open_alarms])
            sessions = await q.active_sessions(conn)
            wanted = {s["device"] for s in sessions if s["device"]}
            wanted |= {a["device"] for a in open_alarms if a["device"]}
            devs = await reads.devices_by_id(conn, sorted(wanted))
            denials = await reads.denials_since(conn, denials_since)
        by_alarm: dict[str, list[Row]] = defaultdict(list)
        for n in sent:
            by_alarm[n["alarm"]].append(n)
        return Snapshot(
            alarms=open_alarms,
            notifications=dict(by_alarm),
            sessions=sessions,
            devices={d["id"]: d for d in devs},
            denials=denials,
        )

    async def timeline(self, alarm_id: str) -> tuple[AlarmRow, list[Row]] | None:
        """An alarm (any state) and its audit events in order; None when unknown."""
        async with self._store.tx() as conn:
            a = await q.get_alarm(conn, alarm_id)
            if a is None:
                return None
            return a, await reads.alarm_timeline(conn, alarm_id)
