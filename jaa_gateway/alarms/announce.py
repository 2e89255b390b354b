"""An alarm told outside over MQTT: its retained topic and the device command that tells its
state. The payloads are `wire/mqtt.py`'s; this names where they go."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.domain.alarm import OPEN
from jaa_gateway.effects import Tx
from jaa_gateway.topics import Topics
from jaa_gateway.wire import mqtt as mqtt_wire


class Announcer:
    def __init__(self, tz: ZoneInfo, topics: Topics) -> None:
        self._tz = tz
        self.topics = topics

    def publish(self, tx: Tx, a: Mapping[str, Any]) -> None:
        """Retained alarm topic while open; an empty retained message clears it."""
        if a["state"] in OPEN:
            tx.publish(
                self.topics.alarm(a["id"]), mqtt_wire.alarm_retained(a, self._tz), retain=True
            )
        else:
            tx.publish(self.topics.alarm(a["id"]), None, retain=True)

    def tell(
        self, tx: Tx, device_id: str | None, a: Mapping[str, Any], re: str | None = None
    ) -> None:
        """The alarm's state to a device (as the answer to its event `re`, if one)."""
        msg = mqtt_wire.alarm_state(a, tx.now)
        if re is not None:
            msg["re"] = re
        self.topics.to_device(tx, device_id, msg)
