"""MQTT topic names (CONTRACT §3), the one set: the core names the topics of its effects, the
edge publishes and subscribes with the same builders. An id that would escape its topic level
(a '/', a wildcard) is refused with ValueError, never published to."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from jaa_gateway.effects import Tx

# Same shape as config ids, so a topic id can be looked up in the config without surprises.
ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
_ID_RE: Final = re.compile(ID_PATTERN)
# an alarm id is the gateway's own; any one topic level will do
_LEVEL_RE: Final = re.compile(r"[^/+#\x00]{1,128}")


def is_valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def _checked_id(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"{value!r} is not a valid id")
    return value


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.status = f"{prefix}/gateway/status"
        # what the edge subscribes to: every device's and every door's events
        self.events = (f"{prefix}/device/+/event", f"{prefix}/door/+/event")

    def device_cmd(self, device_id: str) -> str:
        return f"{self.prefix}/device/{_checked_id(device_id)}/cmd"

    def door_cmd(self, door_id: str) -> str:
        return f"{self.prefix}/door/{_checked_id(door_id)}/cmd"

    def alarm(self, alarm_id: str) -> str:
        if _LEVEL_RE.fullmatch(alarm_id) is None:
            raise ValueError(f"{alarm_id!r} cannot be used in a topic")
        return f"{self.prefix}/gateway/alarm/{alarm_id}"

    def to_device(self, tx: Tx, device_id: str | None, payload: dict[str, Any]) -> None:
        """A command to a device after the commit (none when there is no device)."""
        if device_id:
            tx.publish(self.device_cmd(device_id), payload)

    def to_door(self, tx: Tx, door_id: str | None, payload: dict[str, Any]) -> None:
        if door_id:
            tx.publish(self.door_cmd(door_id), payload)
