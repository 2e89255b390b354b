"""Hot standby (CONTRACT §8): the node's role, and the loop that holds the lease.

`Role` is what the rest of the gateway asks: `may_act()` (MQTT, timers, sends, writes), `token`,
`role` and `leader`. A gateway without ``[cluster]`` gets `Role.solo`: always the leader, as
before. The rules are in `jaa_gateway.lease` (pure, tested at exact instants), the statements in
`jaa_gateway.store.leases`.

`Cluster.run` is two loops: the renewer tries to acquire or renew the lease every quarter lease
and records what the database answered; the governor starts the leader's work (`lead`) when this
node may act, and cancels it and cleans up (`stepped_down`) as soon as it may not -- at the
latest at the local deadline, whether or not the renewer is stuck on a database that does not
answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from jaa_gateway import lease
from jaa_gateway.aio import wait_event, within
from jaa_gateway.metrics import Metrics
from jaa_gateway.store import leases
from jaa_gateway.store.db import Store, describe_error

log = structlog.get_logger("jaa_gateway.cluster")

# a leader's work that ends by itself (its start-up failed) is started again after this
RELEAD_DELAY_S = 0.5
# stopping the leader's work (cancelling MQTT, timers, sends) must not hang the governor
STOP_WAIT_S = 3.0


class Role:
    def __init__(
        self,
        node: str,
        timing: lease.Timing | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.timing = timing
        self.clock = clock
        self.held: lease.Held | None = None
        self.seen: lease.Seen | None = None

    @classmethod
    def solo(cls, node: str) -> Role:
        """A gateway alone (no [cluster]): it always acts."""
        return cls(node, None)

    @property
    def clustered(self) -> bool:
        return self.timing is not None

    def may_act(self) -> bool:
        if self.timing is None:
            return True
        return lease.may_act(self.held, self.clock(), self.timing)

    @property
    def token(self) -> int | None:
        return self.held.token if self.held is not None and self.may_act() else None

    @property
    def role(self) -> lease.Role:
        return "leader" if self.may_act() else "standby"

    @property
    def leader(self) -> str | None:
        if self.timing is None:
            return self.node
        return lease.leader_of(self.seen, self.node, self.held, self.clock(), self.timing)

    def fence(self) -> tuple[str, int] | None:
        """For `Store.fence`: (node, token) while this node may act."""
        token = self.token
        return None if token is None else (self.node, token)


class Cluster:
    def __init__(
        self,
        role: Role,
        store: Store,
        metrics: Metrics,
        *,
        lead: Callable[[], Coroutine[Any, Any, None]],
        stepped_down: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        assert role.timing is not None, "a solo gateway runs no cluster loop"
        self.role = role
        self.timing = role.timing
        self.store = store
        self.metrics = metrics
        self._lead = lead
        self._stepped_down = stepped_down
        self._changed = asyncio.Event()
        self._leading: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self.first_answer = asyncio.Event()  # the first attempt has been answered (or failed)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._renew(), name="lease-renew")
                await self._govern()
        finally:
            held = self.role.held
            if self._leading is not None:
                await self._step_down("stopping")
            # a clean stop hands over at once (the work above has stopped)
            if held is not None:
                self.role.held = None
                try:
                    await within(leases.release(self.store, self.role.node, held.token), 1.0)
                except Exception as exc:
                    log.warning("lease_release_failed", error=describe_error(exc))

    # ------------------------------------------------------------------ renewer

    async def _renew(self) -> None:
        role, timing = self.role, self.timing
        while True:
            sent = role.clock()
            mine = lease.offered_token(role.held, sent, timing)
            seen: lease.Seen | None = None
            try:
                seen = await within(
                    leases.attempt(self.store, role.node, timing.lease, mine), timing.lease
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = describe_error(exc)
                if error != self._last_error:
                    log.warning("lease_attempt_failed", error=error, holding=mine is not None)
                self._last_error = error
            else:
                if self._last_error is not None:
                    log.info("lease_attempt_ok_again")
                self._last_error = None
                role.seen = seen
            before = role.held
            role.held = lease.after_attempt(before, sent, seen, timing)
            if role.held is not None and (before is None or before.token != role.held.token):
                log.info("lease_acquired", node=role.node, token=role.held.token)
            self.first_answer.set()
            self._changed.set()
            await asyncio.sleep(max(0.0, lease.next_attempt(sent, timing) - role.clock()))

    # ------------------------------------------------------------------ governor

    async def _govern(self) -> None:
        role = self.role
        while True:
            acting = role.may_act()
            if acting and self._leading is None:
                self._start_leading()
            elif not acting and self._leading is not None:
                await self._step_down("lease not confirmed in time")
            elif self._leading is not None and self._leading.done():
                # the leader's work ended by itself (its start-up failed): start it again
                await self._step_down("the leader's work ended")
                await asyncio.sleep(RELEAD_DELAY_S)
                continue
            self._changed.clear()
            timeout: float | None = None
            if role.held is not None and self._leading is not None:
                timeout = max(0.0, lease.act_until(role.held, self.timing) - role.clock())
                timeout = min(timeout, self.timing.renew_every)
            await wait_event(self._changed, timeout if timeout is not None else 60.0)

    def _start_leading(self) -> None:
        held = self.role.held
        log.warning("leader_now", node=self.role.node, token=held.token if held else None)
        self.metrics.leader.set(1)
        self.metrics.leader_changes.inc()
        self._leading = asyncio.create_task(self._lead(), name="leading")

    async def _step_down(self, why: str) -> None:
        task, self._leading = self._leading, None
        self.metrics.leader.set(0)
        if task is None:
            return
        log.warning("leader_stepping_down", node=self.role.node, why=why)
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if not task.done():
            log.error("leader_work_slow_to_stop", timeout_s=STOP_WAIT_S)
        try:
            await self._stepped_down()
        except Exception:
            log.exception("step_down_cleanup_failed")
        log.warning("standby_now", node=self.role.node, leader=self.role.leader)
