"""A unit of work: one database transaction plus the effects it causes, carried out only
after the commit (an MQTT answer or a timer for a state that was rolled back would lie)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from jaa_gateway.deadlines import Key
from jaa_gateway.store.db import Conn


class Publisher(Protocol):
    async def publish(
        self,
        topic: str,
        payload: dict[str, Any] | bytes | None,
        *,
        retain: bool = False,
        wait: bool = True,
    ) -> None: ...


@dataclass
class Tx:
    conn: Conn
    now: dt.datetime
    publishes: list[tuple[str, dict[str, Any] | None, bool]] = field(default_factory=list)
    timers: list[tuple[Key, float | None]] = field(default_factory=list)
    wake_outbox: bool = False
    direct: list[dict[str, Any]] = field(default_factory=list)  # claimed SMS rows to send
    after_commit: list[Any] = field(default_factory=list)

    @property
    def ts(self) -> float:
        return self.now.timestamp()

    def publish(self, topic: str, payload: dict[str, Any] | None, retain: bool = False) -> None:
        self.publishes.append((topic, payload, retain))

    def set_timer(self, key: Key, due: float | None) -> None:
        """Schedule (or with None, drop) the deadline `key`."""
        self.timers.append((key, due))

    def mark(self) -> tuple[int, int, int, int, bool]:
        """Where the effects stand now (with a SAVEPOINT: what to drop if it rolls back)."""
        return (
            len(self.publishes),
            len(self.timers),
            len(self.after_commit),
            len(self.direct),
            self.wake_outbox,
        )

    def rollback_to(self, mark: tuple[int, int, int, int, bool]) -> None:
        del self.publishes[mark[0] :]
        del self.timers[mark[1] :]
        del self.after_commit[mark[2] :]
        del self.direct[mark[3] :]
        self.wake_outbox = mark[4]
