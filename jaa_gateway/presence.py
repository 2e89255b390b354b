"""The presence service: which sessions' devices are watched, and what a lapsed watch means.

The rules are pure (`domain/presence.py`); this object keeps the state they need and carries
out their verdicts inside the engine's transactions:

* the watched sessions (session -> device, start) and, per session, the instant contact last
  returned for it (`_fresh`): a watch's device_timeout counts from the latest of the device last
  heard, the session's start and that instant;
* the broker's state, told by the MQTT edge on every change (`broker`);
* the common cause in force (`episode`), with its contact_lost alarm.

Restarts: nothing here is stored. The episode's alarm is: a common cause that begins while a
contact_lost alarm is still escalating (not acknowledged) takes that alarm on instead of raising
another, so a restart in the middle of an outage pages nobody twice. After a start the broker
counts as away until the first connect (the watches restored from the store wait for it), and
what the broker queued while the gateway was down gets a moment to arrive before anyone is
judged silent (`domain.presence.after_return`, `first_connect`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, select

from jaa_gateway.deadlines import Deadlines, Key
from jaa_gateway.domain import presence as rule
from jaa_gateway.effects import Tx
from jaa_gateway.store import queries as q
from jaa_gateway.store.schema import alarms

log = structlog.get_logger("jaa_gateway.presence")

KEY: Key = ("presence", "contact")
# a watch map rebuilt for each of thousands of watches lapsing together would cost O(n^2); one
# this young is used again (a heartbeat newer than this is not needed to tell who is silent)
SINCES_MAX_AGE_S = 0.25
_ESCALATING_CONTACT_LOST = (
    select(alarms.c.id, alarms.c.opened_at)
    .where(and_(alarms.c.kind == "contact_lost", alarms.c.state.in_(q.RUNNING_STATES)))
    .order_by(alarms.c.opened_at.desc())
    .limit(1)
)


@dataclass(frozen=True)
class Episode:
    cause: rule.Cause
    alarm: str
    since: float


class Presence:
    def __init__(
        self,
        deadlines: Deadlines,
        *,
        timeout: Callable[[], float],
        last_seen: Callable[[str], float | None],
    ) -> None:
        self._deadlines = deadlines
        self._timeout = timeout
        self._last_seen = last_seen
        self.forget()

    def forget(self) -> None:
        """The state of a new Presence: at construction, and (hot standby, cluster.py) when a
        node steps down and drops what it knew as leader."""
        self._watches: dict[str, tuple[str, float]] = {}
        self._fresh: dict[str, float] = {}
        self.up = False
        self.down_since: float | None = None
        self._pending_return: tuple[float | None, float, bool] | None = None
        self._connected_once = False
        self.episode: Episode | None = None
        self._sinces: tuple[float, dict[str, float]] | None = None
        self._began: tuple[Tx, str] | None = None
        # hot standby: the instant this node took over; every watch counts from it at least
        self._afresh = 0.0

    # ------------------------------------------------------------------ watches

    def watch(self, session: str, device: str, started: float) -> None:
        self._watches[session] = (device, started)
        self._sinces = None

    def unwatch(self, session: str) -> None:
        self._watches.pop(session, None)
        self._fresh.pop(session, None)
        self._sinces = None

    def is_watched(self, session: str) -> bool:
        return session in self._watches

    def since(self, session: str, device: str, started: float) -> float:
        """The instant this session's device_timeout counts from."""
        seen = self._last_seen(device)
        return max(
            seen if seen is not None else 0.0,
            started,
            self._fresh.get(session, 0.0),
            self._afresh,
        )

    def due(self, session: str, device: str, started: float) -> float:
        return self.since(session, device, started) + self._timeout()

    def watched_due(self, session: str) -> float | None:
        w = self._watches.get(session)
        return None if w is None else self.due(session, *w)

    def sinces(self, now: float) -> dict[str, float]:
        cached = self._sinces
        if cached is not None and 0.0 <= now - cached[0] < SINCES_MAX_AGE_S:
            return cached[1]
        out = {s: self.since(s, d, t) for s, (d, t) in self._watches.items()}
        self._sinces = (now, out)
        return out

    def unwatched_now(self, now: float) -> int:
        return rule.unwatched(
            self.sinces(now).values(), now=now, timeout=self._timeout(), broker_up=self.up
        )

    # ------------------------------------------------------------------ the broker

    def afresh(self, now: float) -> None:
        """Hot standby (CONTRACT §8): a node that takes over gives every watched device a full
        device_timeout from `now` (what it heard before is the old leader's business)."""
        self._afresh = now
        self._sinces = None

    def started(self, now: float) -> None:
        """At start-up: until the first connect, the broker counts as away since now."""
        if not self.up and self.down_since is None:
            self.down_since = now

    def broker(self, up: bool, now: float) -> None:
        """The MQTT edge's connection changed (called on every change, from its task)."""
        if up == self.up:
            return
        self.up = up
        self._sinces = None
        if up:
            self._pending_return = (self.down_since, now, not self._connected_once)
            self._connected_once = True
            self.down_since = None
            log.info("presence_broker_back")
            self._deadlines.set(KEY, now)
        else:
            pending, self._pending_return = self._pending_return, None
            # a return not handled yet: one outage from its start, not two
            self.down_since = pending[0] if pending is not None and pending[0] else now
            log.warning("presence_broker_away")

    # ------------------------------------------------------------------ verdicts

    async def lapsed(
        self, tx: Tx, s: dict[str, Any], raise_contact_lost: Callable[[Tx], Awaitable[str]]
    ) -> bool:
        """The watch of session `s` has lapsed. True: it is held or part of a common cause (no
        device_offline now; a common cause that begins here raises its contact_lost alarm with
        `raise_contact_lost`); False: the device is on its own, raise its device_offline."""
        sid = s["id"]
        if sid not in self._watches:
            self.watch(sid, s["device"], s["started_at"])
        sinces = self.sinces(tx.ts)
        if sid not in sinces or sinces[sid] + self._timeout() > tx.ts + rule.EPS:
            sinces = dict(sinces) | {sid: self.since(sid, s["device"], s["started_at"])}
        verdict = rule.judge(
            sinces,
            sid,
            now=tx.ts,
            timeout=self._timeout(),
            broker_up=self.up,
            outage_start=self.down_since,
            episode=self.episode is not None,
        )
        if isinstance(verdict, rule.Offline):
            return False
        if isinstance(verdict, rule.Hold):
            if verdict.until is not None:
                tx.set_timer(("offline", sid), verdict.until)
            else:
                await q.add_audit(
                    tx.conn,
                    tx.ts,
                    "device_offline_held",
                    session=sid,
                    alarm=self.episode.alarm if self.episode else None,
                    cause=self.episode.cause if self.episode else None,
                )
            return True
        alarm = await self._common_cause(tx, verdict, raise_contact_lost)
        await q.add_audit(
            tx.conn, tx.ts, "device_offline_held", session=sid, alarm=alarm, cause=verdict.cause
        )
        return True

    async def _common_cause(
        self, tx: Tx, verdict: rule.Common, raise_contact_lost: Callable[[Tx], Awaitable[str]]
    ) -> str:
        """Begin an episode: one contact_lost alarm (or the one still escalating)."""
        if self._began is not None and self._began[0] is tx:
            return self._began[1]  # this transaction began it, for another session
        row = (await tx.conn.execute(_ESCALATING_CONTACT_LOST)).first()
        if row is not None and row[1] >= tx.ts:
            return str(row[0])  # raised by this very transaction, for another session
        if row is not None:
            alarm, reused = str(row[0]), True
        else:
            alarm, reused = await raise_contact_lost(tx), False
        await q.add_audit(
            tx.conn,
            tx.ts,
            "contact_lost",
            alarm=alarm,
            cause=verdict.cause,
            unwatched=verdict.unwatched,
            watched=len(self._watches),
            reused=reused,
        )
        log.warning("contact_lost", alarm=alarm, cause=verdict.cause, unwatched=verdict.unwatched)
        episode = Episode(verdict.cause, alarm, tx.ts)
        if reused:  # (a raised alarm is found by the query above; a rolled back one is not)
            self._began = (tx, alarm)

        def begin() -> None:
            self._began = None
            if self.episode is None:
                self.episode = episode

        tx.after_commit.append(begin)
        # a mass silence ends when enough devices are heard again: look now and then
        tx.set_timer(KEY, tx.ts + self._check_every())
        return alarm

    def _check_every(self) -> float:
        return max(0.05, min(1.0, self._timeout() / 4))

    async def deadline(self, tx: Tx) -> None:
        """A return to handle, or an episode to check on."""
        now = tx.ts
        ret = self._pending_return
        if ret is not None:
            await self._returned(tx, outage_start=ret[0], first_connect=ret[2])

            def handled() -> None:
                if self._pending_return is ret:
                    self._pending_return = None

            tx.after_commit.append(handled)
            return
        if self.episode is None:
            return
        if self.up and not self.unwatched_now(now):
            await self._returned(tx, outage_start=None, first_connect=False)
            return
        tx.set_timer(KEY, now + self._check_every())

    async def _returned(self, tx: Tx, *, outage_start: float | None, first_connect: bool) -> None:
        """Contact is back: every watch moves on (`domain.presence.after_return`)."""
        episode = self.episode
        timeout = self._timeout()
        fresh = rule.after_return(
            {s: self.since(s, d, t) for s, (d, t) in self._watches.items()},
            outage_start=outage_start,
            now=tx.ts,
            timeout=timeout,
            contact_lost=episode is not None,
            first_connect=first_connect,
        )
        for sid, since in fresh.items():
            tx.set_timer(("offline", sid), since + timeout)
        if episode is not None:
            await q.add_audit(
                tx.conn,
                tx.ts,
                "contact_restored",
                alarm=episode.alarm,
                cause=episode.cause,
                lost_for_s=round(tx.ts - episode.since, 3),
                watched=len(fresh),
            )
            log.info("contact_restored", alarm=episode.alarm, cause=episode.cause)
        else:
            log.info("presence_watches_moved", watched=len(fresh), first_connect=first_connect)

        def apply() -> None:
            for sid, since in fresh.items():
                if sid in self._watches:
                    self._fresh[sid] = since
            self._sinces = None
            if self.episode is episode:
                self.episode = None

        tx.after_commit.append(apply)
