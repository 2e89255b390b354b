"""Supervision of the daemon's long-running tasks.

A task that raises is logged, counted (`jaa_task_restarts_total{task}`), reported as degraded
(the self-watch and `/healthz` say so) and started again with jittered backoff. One bad row or
message must never stop the daemon: before this, an exception in the outbox ended the task
group and with it the process, and a restart met the same row again.

A task that returns on its own is restarted the same way: every supervised task is meant to
run until cancelled, so returning is a bug too. Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from jaa_gateway.metrics import Metrics

log = structlog.get_logger("jaa_gateway.supervise")

RESTART_MIN_S = 0.2
RESTART_MAX_S = 30.0
# a task that ran this long before it failed starts again from the shortest delay
STABLE_AFTER_S = 60.0
# how long a restart keeps the gateway reported degraded
DEGRADED_FOR_S = 120.0


@dataclass
class Fault:
    task: str
    error: str
    at: float  # monotonic
    restarts: int


class Supervisor:
    def __init__(
        self,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        min_delay: float = RESTART_MIN_S,
        max_delay: float = RESTART_MAX_S,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.rand = rand
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.faults: dict[str, Fault] = {}

    def recent_faults(self, within: float = DEGRADED_FOR_S) -> list[Fault]:
        """Tasks that failed within the last `within` seconds (the degraded state)."""
        now = self.clock()
        return [f for f in self.faults.values() if now - f.at <= within]

    async def run(
        self,
        name: str,
        start: Callable[[], Awaitable[None]],
        *,
        before_restart: Callable[[], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run `start()` until cancelled, restarting it whenever it raises or returns.

        `before_restart` runs before each restart (e.g. the outbox puts back the rows its dead
        send tasks had claimed); if it fails too, that counts as the next failure. A task that
        returns while `stopping()` is true (the daemon is shutting down) is done.
        """
        delay = self.min_delay
        restarts = 0
        while True:
            began = self.clock()
            try:
                if restarts and before_restart is not None:
                    await before_restart()
                await start()
                if stopping():
                    return
                error = "returned unexpectedly"
                log.error("task_returned", task=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.exception("task_failed", task=name)
            if self.clock() - began >= STABLE_AFTER_S:
                delay = self.min_delay
            restarts += 1
            self.faults[name] = Fault(name, error, self.clock(), restarts)
            self.metrics.task_restarts.labels(task=name).inc()
            wait = delay * (0.5 + self.rand())
            log.warning("task_restarting", task=name, in_s=round(wait, 3), restarts=restarts)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.max_delay)
