"""What an alarm looks like outside: its API/retained-topic shape and the device command that
tells its state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.domain.alarm import OPEN, AlarmState
from jaa_gateway.effects import Tx
from jaa_gateway.timeutil import rfc3339
from jaa_gateway.topics import Topics


def state_msg(a: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The device command that tells the current state of an alarm."""
    st = a["state"]
    if st == AlarmState.PREALARM:
        left = max(0.0, (a["prealarm_until"] or now.timestamp()) - now.timestamp())
        return {
            "type": "prealarm",
            "alarm": a["id"],
            "kind": a["kind"],
            "cancel_within_s": round(left, 3),
        }
    if st == AlarmState.ESCALATING:
        return {"type": "alarm_raised", "alarm": a["id"], "kind": a["kind"]}
    if st in (AlarmState.ACKNOWLEDGED, AlarmState.RESOLVED):
        return {"type": "alarm_acknowledged", "alarm": a["id"], "by": a["acknowledged_by"]}
    return {"type": "alarm_cancelled", "alarm": a["id"]}


class AlarmShapes:
    def __init__(self, tz: ZoneInfo, topics: Topics) -> None:
        self._tz = tz
        self.topics = topics

    def iso(self, ts: float | None) -> str | None:
        return rfc3339(ts, self._tz)

    def public(self, a: Mapping[str, Any]) -> dict[str, Any]:
        iso = self.iso
        return {
            "id": a["id"],
            "code": a["code"],
            "kind": a["kind"],
            "state": a["state"],
            "person": a["person"],
            "location": a["location"],
            "session": a["session"],
            "device": a["device"],
            "lat": a["lat"],
            "lon": a["lon"],
            "opened_at": iso(a["opened_at"]),
            "escalation_started_at": iso(a["escalation_started_at"]),
            "exhausted": bool(a["exhausted"]),
            "acknowledged_by": a["acknowledged_by"],
            "acknowledged_at": iso(a["acknowledged_at"]),
            "resolved_at": iso(a["resolved_at"]),
            "note": a["note"],
        }

    def publish(self, tx: Tx, a: Mapping[str, Any]) -> None:
        """Retained alarm topic while open; an empty retained message clears it."""
        if a["state"] in OPEN:
            tx.publish(self.topics.alarm(a["id"]), self.public(a), retain=True)
        else:
            tx.publish(self.topics.alarm(a["id"]), None, retain=True)

    def tell(
        self, tx: Tx, device_id: str | None, a: Mapping[str, Any], re: str | None = None
    ) -> None:
        """The alarm's state to a device (as the answer to its event `re`, if one)."""
        msg = state_msg(a, tx.now)
        if re is not None:
            msg["re"] = re
        self.topics.to_device(tx, device_id, msg)
