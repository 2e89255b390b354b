"""Live updates for every open console page (Server-Sent Events).

A change (`jaa_gateway.changes`: a committed unit of work, a recorded send, a delivery status,
stored device state) marks the board dirty; this loop re-reads it once, renders it once, and
every open page gets the same HTML. Changes that come together (a burst of alarms) are
coalesced over DEBOUNCE_S, so the reads follow the changes, not the number of pages. Device
state (battery, last heard) is stored in batches every couple of seconds and refreshes the
board at most every DEVICES_GAP_S. The header (health, who is on duty) is in memory and is
re-rendered every STATUS_EVERY_S, sent only when it differs.

A standby node runs no units of work, so it has no changes to follow: it re-reads the board
every STANDBY_EVERY_S instead (the load balancer sends the desk to the leader anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from jaa_gateway.changes import ChangeKind

log = structlog.get_logger("jaa_gateway.console")

DEBOUNCE_S = 0.05
DEVICES_GAP_S = 5.0
STATUS_EVERY_S = 2.0
STANDBY_EVERY_S = 2.0


@dataclass(frozen=True)
class Frame:
    version: int
    board: str
    status: str


class Feed:
    def __init__(
        self,
        render_board: Callable[[], Awaitable[str]],
        render_status: Callable[[], str],
        follows_changes: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render_board = render_board
        self._render_status = render_status
        self._follows = follows_changes
        self._clock = clock
        self._dirty = asyncio.Event()
        self._devices_due: float | None = None
        self._last_devices = -DEVICES_GAP_S
        self._last_board = 0.0
        self._stale = False  # a change not yet in `frame`
        self.frame: Frame | None = None
        self._next = asyncio.Event()
        self.watchers = 0
        self.renders = 0

    def changed(self, what: ChangeKind) -> None:
        """A change listener (`Changes.subscribe`): only takes note, never blocks."""
        if what == "devices":
            now = self._clock()
            self._devices_due = max(now, self._last_devices + DEVICES_GAP_S)
            return
        self._stale = True
        self._dirty.set()

    def wake(self) -> None:
        """Wake every waiting stream (shutdown): they see no new frame and check why."""
        waiter, self._next = self._next, asyncio.Event()
        waiter.set()

    async def current(self) -> Frame:
        """The latest frame, rendered now when there is none or a change is not in it yet (a
        page loaded right after an action shows the action's result)."""
        if self.frame is None or self._stale:
            await self._render()
        assert self.frame is not None
        return self.frame

    async def next_frame(self, after: int, timeout: float) -> Frame | None:
        """The first frame newer than version ``after``, or None after ``timeout``."""
        if self.frame is not None and self.frame.version > after:
            return self.frame
        waiter = self._next
        try:
            async with asyncio.timeout(timeout):
                await waiter.wait()
        except TimeoutError:
            return None
        return self.frame

    async def _render(self) -> None:
        self._stale = False  # a change during the read marks it stale again
        board = await self._render_board()
        self.renders += 1
        self._publish(board, self._render_status())

    def _publish(self, board: str, status: str) -> None:
        version = (self.frame.version + 1) if self.frame is not None else 1
        self.frame = Frame(version, board, status)
        waiter, self._next = self._next, asyncio.Event()
        waiter.set()

    async def run(self) -> None:
        """Supervised by the App, on every node."""
        while True:
            timeout = STATUS_EVERY_S
            if self._devices_due is not None:
                timeout = max(0.0, min(timeout, self._devices_due - self._clock()))
            try:
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
                await asyncio.sleep(DEBOUNCE_S)  # let a burst of changes land in one read
            except TimeoutError:
                pass
            now = self._clock()
            devices = self._devices_due is not None and now >= self._devices_due
            board_due = self._dirty.is_set() or devices
            if not self._follows() and (
                self.frame is None or now - self._last_board >= STANDBY_EVERY_S
            ):
                board_due = True
            self._dirty.clear()
            if devices:
                self._devices_due = None
                self._last_devices = now
            if self.watchers == 0:
                # nobody is looking: the next page renders on arrival (`current`)
                self.frame = None if board_due else self.frame
                continue
            if board_due:
                try:
                    await self._render()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("console_render_failed")
                    self._dirty.set()
                    await asyncio.sleep(1.0)
                    continue
                self._last_board = now
            elif self.frame is not None:
                status = self._render_status()
                if status != self.frame.status:
                    self._publish(self.frame.board, status)


def sse_frames(frame: Frame, previous: Frame | None) -> bytes:
    """The events that differ from ``previous``: ``board`` and ``status`` (HTML)."""
    out: list[str] = []
    if previous is None or frame.board != previous.board:
        out.append(sse_event("board", frame.board))
    if previous is None or frame.status != previous.status:
        out.append(sse_event("status", frame.status))
    return "".join(out).encode("utf-8")


def sse_event(name: str, data: str) -> str:
    lines = data.replace("\r", "").split("\n")
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"
