"""MQTT topic names (CONTRACT §3): the core names the topics of its effects, the edge uses the
same builders for what it publishes and subscribes to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaa_gateway.effects import Tx


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def device_cmd(self, device_id: str) -> str:
        return f"{self.prefix}/device/{device_id}/cmd"

    def door_cmd(self, door_id: str) -> str:
        return f"{self.prefix}/door/{door_id}/cmd"

    def alarm(self, alarm_id: str) -> str:
        return f"{self.prefix}/gateway/alarm/{alarm_id}"

    def to_device(self, tx: Tx, device_id: str | None, payload: dict[str, Any]) -> None:
        """A command to a device after the commit (none when there is no device)."""
        if device_id:
            tx.publish(self.device_cmd(device_id), payload)

    def to_door(self, tx: Tx, door_id: str | None, payload: dict[str, Any]) -> None:
        if door_id:
            tx.publish(self.door_cmd(door_id), payload)
