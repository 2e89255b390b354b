"""The inbound events the core consumes (CONTRACT §3), as typed, frozen values.

Pure: no I/O, no parsing. `adapters/events.py` turns an MQTT topic and payload into one of these
or rejects it; the engine only ever sees events that passed that edge.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal, get_args

DeviceEventType = Literal[
    "heartbeat",
    "session_start",
    "session_end",
    "checkin",
    "sos",
    "man_down",
    "cancel",
    "low_battery",
]
DoorEventType = Literal["badge", "open", "closed"]
BadgeAction = Literal["start", "end"]

DEVICE_EVENT_TYPES: Final[frozenset[str]] = frozenset(get_args(DeviceEventType))
DOOR_EVENT_TYPES: Final[frozenset[str]] = frozenset(get_args(DoorEventType))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEvent:
    """What a worker's device said; `device_id` comes from the topic, never the payload."""

    device_id: str
    id: str
    type: DeviceEventType
    ts: dt.datetime | None
    received_at: dt.datetime
    location: str | None = None
    planned_minutes: int | None = None
    battery: float | None = None
    lat: float | None = None
    lon: float | None = None
    alarm: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DoorEvent:
    """What a door reader said; `door_id` comes from the topic, never the payload."""

    door_id: str
    id: str
    type: DoorEventType
    ts: dt.datetime | None
    received_at: dt.datetime
    badge: str | None = None
    action: BadgeAction | None = None
