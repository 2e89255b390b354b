"""What changed, told to whoever watches (the guard console's live page, CONTRACT §9).

The same committed units of work that send MQTT answers and write the audit emit here, after
their commit; the outbox and the delivery-status webhook emit too. Listeners are called at once,
on the event loop, and must only take note (set a flag, wake a task): they never block a unit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import structlog

log = structlog.get_logger("jaa_gateway.changes")

# state: a unit of work committed (alarms, sessions, denials, check-ins, acknowledgements);
# notification: a send was recorded; delivery: Twilio reported a delivery status;
# devices: device battery / last heard were stored
ChangeKind = Literal["state", "notification", "delivery", "devices"]
Listener = Callable[[ChangeKind], None]


class Changes:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn`` on every change; returns the unsubscribe function."""
        self._listeners.append(fn)

        def unsubscribe() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return unsubscribe

    def emit(self, what: ChangeKind) -> None:
        for fn in tuple(self._listeners):
            try:
                fn(what)
            except Exception:
                # a watcher's bug never fails the unit of work that already committed
                log.exception("change_listener_failed", what=what)
