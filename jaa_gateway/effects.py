"""A unit of work: one database transaction plus the effects it causes, carried out only
after the commit (an MQTT answer or a timer for a state that was rolled back would lie)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from jaa_gateway.adapters.scheduler import Key


class Publisher(Protocol):
    async def publish(
        self, topic: str, payload: dict[str, Any] | bytes | None, *, retain: bool = False
    ) -> None: ...


@dataclass
class Tx:
    conn: AsyncConnection
    now: dt.datetime
    publishes: list[tuple[str, dict[str, Any] | None, bool]] = field(default_factory=list)
    timers: list[tuple[Key, float | None]] = field(default_factory=list)
    wake_outbox: bool = False
    after_commit: list[Any] = field(default_factory=list)

    @property
    def ts(self) -> float:
        return self.now.timestamp()

    def publish(self, topic: str, payload: dict[str, Any] | None, retain: bool = False) -> None:
        self.publishes.append((topic, payload, retain))

    def set_timer(self, key: Key, due: float | None) -> None:
        """Schedule (or with None, drop) the deadline `key`."""
        self.timers.append((key, due))
