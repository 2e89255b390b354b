"""The engine: events in -> state changes + effects out. The only place rules are applied.

Every entry point (an MQTT event, a deadline, an acknowledgement from HTTP) runs under one
lock and in one transaction, so rules never see half a change and the outbox rows a change
causes commit with it. Effects (MQTT answers, timers) run after the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import delete, insert, select, update

from jaa_gateway.alarms import AlarmOps
from jaa_gateway.changes import Changes
from jaa_gateway.config import Assessment, Config, Person
from jaa_gateway.deadlines import Deadlines, Key
from jaa_gateway.domain import gate, roster, texts
from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.effects import Publisher, Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.poison import RepeatFailures
from jaa_gateway.presence import Presence
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import assessments, devices, processed_events, sessions
from jaa_gateway.timeutil import from_ts, rfc3339, utcnow
from jaa_gateway.wire import mqtt as mqtt_wire

log = structlog.get_logger("jaa_gateway.engine")

# events a device repeats until answered (CONTRACT §3): a duplicate is answered again
ANSWERED_TYPES = frozenset({"session_start", "sos", "man_down", "cancel", "badge"})
DEDUPE_TTL = dt.timedelta(days=2)
# a door that flaps should not send an SMS per swing
NOTICE_SPACING = dt.timedelta(minutes=10)
# how long one transaction of a batch (deadlines, queued routine events) may hold the event
# loop before it commits and lets other work (an sos) in
UNIT_BUDGET_S = 0.02
_INSERT_SESSION = insert(sessions)
_T = TypeVar("_T")


@dataclass
class DeviceState:
    last_seen: float
    battery: float | None = None
    lat: float | None = None
    lon: float | None = None
    position_at: float | None = None


class Engine(AlarmOps):
    def __init__(
        self,
        cfg: Config,
        store: Store,
        publisher: Publisher,
        deadlines: Deadlines,
        metrics: Metrics,
        *,
        wake_outbox: Callable[[], None],
        alarm_stopped: Callable[[str], None] | None = None,
        send_now: Callable[[list[dict[str, Any]]], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.publisher = publisher
        self.deadlines = deadlines
        self.metrics = metrics
        self.clock = clock
        self._wake_outbox = wake_outbox
        # without a sender to hand them to, claimed rows wait for the restart's requeue;
        # App always passes one
        self._send_now = send_now or (lambda rows: None)
        self.alarm_stopped_hook = alarm_stopped
        self.lock = asyncio.Lock()
        self.prefix = cfg.mqtt.topic_prefix
        self.devices: dict[str, DeviceState] = {}
        self._dirty_devices: set[str] = set()
        # in-memory first line of deduplication for heartbeats (never stored: a repeated
        # heartbeat changes nothing but last_seen)
        self._recent_heartbeats: dict[tuple[str, str], None] = {}
        self._last_notice: dict[str, dt.datetime] = {}
        self.assessments: dict[str, Assessment] = {}
        self._assessments_by_person: dict[str, list[Assessment]] = {}
        # committed units: a deadline that keeps failing while these go on is poison
        self.commits = 0
        self._deadline_failures: RepeatFailures[Key] = RepeatFailures()
        # deadlines given up on (key -> why): the self-watch reports them as degraded
        self.abandoned_deadlines: dict[Key, str] = {}
        # which sessions' devices are watched, and what a lapsed watch means (CONTRACT §4)
        self.presence = self._new_presence()
        # committed units are told here (the console's live page), as MQTT gets their answers
        self.changes = Changes()

    def _new_presence(self) -> Presence:
        return Presence(
            self.deadlines,
            timeout=lambda: self.cfg.timing.device_timeout.total_seconds(),
            last_seen=lambda d: st.last_seen if (st := self.devices.get(d)) else None,
            raise_contact_lost=self.raise_contact_lost,
        )

    def forget(self) -> None:
        """Hot standby (cluster.py): a node that steps down drops what it knew as leader;
        `start()` rebuilds it all from the store if it leads again."""
        self.deadlines.clear()
        self.devices.clear()
        self._dirty_devices.clear()
        self._recent_heartbeats.clear()
        self._last_notice.clear()
        self.abandoned_deadlines.clear()
        self._deadline_failures = RepeatFailures()
        self.presence = self._new_presence()

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def unit(self, *, wait_publish: bool = True) -> AsyncIterator[Tx]:
        """Lock + transaction; effects are applied only after a successful commit.

        MQTT answers go out after the lock is released: waiting for a broker's PUBACK must
        not hold up the next event or deadline. ``wait_publish=False`` does not wait for it at
        all (the answers still leave in order through the edge's buffer, and go again after a
        reconnect): events and deadlines are handled one after another, and waiting would
        pace them by the broker's round trips. On a quiet broker each wait was ~40 ms (Nagle
        and the broker's delayed ACK), so a burst of sos 20 ms apart queued up (issue 17); a
        broker that hangs without closing the connection would hold every later event and
        timer (alarm steps included) for the edge's operation timeout (CONTRACT §7.2).
        """
        async with self.lock:
            async with self.store.tx() as conn:
                tx = Tx(conn=conn, now=self.clock())
                yield tx
            self.commits += 1
            for key, due in tx.timers:
                if due is None:
                    self.deadlines.discard(key)
                else:
                    self.deadlines.set(key, due)
            if tx.direct:
                self._send_now(tx.direct)
            if tx.wake_outbox:
                self._wake_outbox()
            for fn in tx.after_commit:
                fn()
            self.changes.emit("state")
        for topic, payload, retain in tx.publishes:
            try:
                await self.publisher.publish(topic, payload, retain=retain, wait=wait_publish)
            except Exception:
                log.exception("mqtt_publish_failed", topic=topic)

    def device_topic(self, device_id: str) -> str:
        return f"{self.prefix}/device/{device_id}/cmd"

    def door_topic(self, door_id: str) -> str:
        return f"{self.prefix}/door/{door_id}/cmd"

    def alarm_topic(self, alarm_id: str) -> str:
        return f"{self.prefix}/gateway/alarm/{alarm_id}"

    def to_device(self, tx: Tx, device_id: str | None, payload: dict[str, Any]) -> None:
        if device_id:
            tx.publish(self.device_topic(device_id), payload)

    def iso(self, ts: float | None) -> str | None:
        return rfc3339(ts, self.cfg.tz)

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Load assessments and device state, rebuild every timer from the store."""
        async with self.unit() as tx:
            await self._load_assessments(tx)
            rows = await tx.conn.execute(select(devices))
            for r in rows.mappings():
                self.devices[r["id"]] = DeviceState(
                    last_seen=r["last_seen"],
                    battery=r["battery"],
                    lat=r["lat"],
                    lon=r["lon"],
                    position_at=r["position_at"],
                )
            self.presence.started(tx.ts)
            for s in await q.active_sessions(tx.conn):
                self._session_timers(tx, s)
            open_rows = await q.open_alarms(tx.conn)
            for a in open_rows:
                self._alarm_timer(tx, a)
            n_sessions = await q.active_session_count(tx.conn)
            n_alarms = sum(1 for a in open_rows if a["state"] in ("prealarm", "escalating"))
            await q.add_audit(
                tx.conn, tx.ts, "gateway_started", sessions=n_sessions, open_alarms=n_alarms
            )
        self.metrics.sessions_active.set(n_sessions)
        self.metrics.alarms_open.set(len(open_rows))
        log.info(
            "engine_started", sessions=n_sessions, open_alarms=n_alarms, timers=len(self.deadlines)
        )

    async def _load_assessments(self, tx: Tx) -> None:
        """Config assessments into the store (config wins on conflicts), API ones back out."""
        stored = {r["id"]: r for r in (await tx.conn.execute(select(assessments))).mappings()}
        in_config = {a.id for a in self.cfg.assessments}
        rows: list[dict[str, Any]] = []
        for a in self.cfg.assessments:
            data = a.model_dump(mode="json")
            old = stored.get(a.id)
            if old is not None and old["source"] == "api" and old["data"] != data:
                # config wins on conflicts; say so, the facility may be surprised
                log.warning("assessment_overridden_by_config", assessment=a.id)
                await q.add_audit(
                    tx.conn,
                    tx.ts,
                    "assessment_overridden_by_config",
                    actor="config",
                    assessment=a.id,
                )
            if old is None or old["data"] != data or old["source"] != "config":
                rows.append(
                    {
                        "id": a.id,
                        "data": data,
                        "source": "config",
                        "updated_at": tx.ts,
                        "updated_by": "config",
                    }
                )
        # an assessment taken out of the config file no longer allows anything
        gone = [i for i, r in stored.items() if r["source"] == "config" and i not in in_config]
        for i in range(0, len(gone), 500):
            await tx.conn.execute(
                delete(assessments).where(assessments.c.id.in_(gone[i : i + 500]))
            )
        for aid in gone:
            log.warning("assessment_removed_with_config", assessment=aid)
            await q.add_audit(
                tx.conn, tx.ts, "assessment_removed_with_config", actor="config", assessment=aid
            )
        await q.upsert_assessments(tx.conn, rows)
        loaded: dict[str, Assessment] = {a.id: a for a in self.cfg.assessments}
        for aid, r in stored.items():
            if aid in in_config or r["source"] != "api":
                continue
            try:
                loaded[aid] = Assessment.model_validate(r["data"])
            except Exception:
                log.error("assessment_unreadable", assessment=aid)
        self._set_assessments(loaded)

    def _set_assessments(self, items: dict[str, Assessment]) -> None:
        self.assessments = items
        by_person: dict[str, list[Assessment]] = {}
        for a in items.values():
            by_person.setdefault(a.person, []).append(a)
        self._assessments_by_person = by_person

    def _put_assessment_cached(self, a: Assessment) -> None:
        items = dict(self.assessments)
        items[a.id] = a
        self._set_assessments(items)

    async def put_assessment(self, a: Assessment, actor: str) -> str:
        """Store an assessment from the API; returns 'created' or 'updated'."""
        async with self.unit() as tx:
            row = (
                (await tx.conn.execute(select(assessments).where(assessments.c.id == a.id)))
                .mappings()
                .first()
            )
            if row is not None and row["source"] == "config":
                raise PermissionError(
                    f"assessment {a.id} is defined in the config file; change it there"
                )
            data = a.model_dump(mode="json")
            if row is None:
                await tx.conn.execute(
                    insert(assessments).values(
                        id=a.id, data=data, source="api", updated_at=tx.ts, updated_by=actor
                    )
                )
            else:
                await tx.conn.execute(
                    update(assessments)
                    .where(assessments.c.id == a.id)
                    .values(data=data, updated_at=tx.ts, updated_by=actor)
                )
            result = "created" if row is None else "updated"
            await q.add_audit(
                tx.conn, tx.ts, f"assessment_{result}", actor=actor, assessment=a.id, data=data
            )
            tx.after_commit.append(lambda: self._put_assessment_cached(a))
        return result

    # ------------------------------------------------------------------ inbound events

    async def handle_batch(self, evs: list[DeviceEvent | DoorEvent]) -> None:
        """Events that queued up together share transactions (`_in_units`: one commit, one
        fsync, for a burst of check-ins, not one each; one that fails is rolled back alone and
        logged). A single event's failure propagates to the caller."""
        todo = [ev for ev in evs if self._needs_unit(ev)]
        if len(todo) == 1:
            # the next event must not wait for the broker's PUBACK of this one's answers
            async with self.unit(wait_publish=False) as tx:
                await self._apply(tx, todo[0])
            return

        def failed(_tx: Tx, ev: DeviceEvent | DoorEvent) -> None:
            log.exception("event_failed", type=ev.type, id=ev.id)

        await self._in_units(todo, self._apply, failed, wait_publish=False)

    async def _in_units(
        self,
        items: list[_T],
        one: Callable[[Tx, _T], Awaitable[None]],
        failed: Callable[[Tx, _T], None],
        *,
        wait_publish: bool,
    ) -> None:
        """`one` for every item, each under its own SAVEPOINT (`failed` is called, inside the
        except block, for one that raised and was rolled back), in as few transactions as
        UNIT_BUDGET_S allows. A transaction holds the event loop (SQLite runs on its thread),
        so after the budget it commits and lets the loop go: an sos arriving meanwhile waits
        that long at most, not for the whole batch. Each transaction handles at least one."""
        i = 0
        while i < len(items):
            if i:
                await asyncio.sleep(0)
            async with self.unit(wait_publish=wait_publish) as tx:
                t0, first = time.monotonic(), i
                while i < len(items):
                    if i > first and time.monotonic() - t0 >= UNIT_BUDGET_S:
                        break
                    item = items[i]
                    i += 1
                    mark = tx.mark()
                    try:
                        async with tx.conn.begin_nested():
                            await one(tx, item)
                    except Exception:
                        tx.rollback_to(mark)
                        failed(tx, item)

    def _needs_unit(self, ev: DeviceEvent | DoorEvent) -> bool:
        """What needs no transaction is done here: a heartbeat only moves last_seen (stored in
        batches), and an unknown device's event other than session_start is only counted."""
        if isinstance(ev, DoorEvent):
            return True
        if self.cfg.device(ev.device_id) is None:
            if ev.type == "session_start":
                return True
            self.metrics.rejected.labels(reason="unknown_device").inc()
            log.warning(
                "mqtt_message_rejected",
                reason="unknown_device",
                device=ev.device_id,
                type=ev.type,
            )
            return False
        self._touch(ev)
        if ev.type != "heartbeat":
            return True
        key = (ev.device_id, ev.id)
        if key in self._recent_heartbeats:
            self.metrics.rejected.labels(reason="duplicate").inc()
            return False
        self._recent_heartbeats[key] = None
        if len(self._recent_heartbeats) > 50_000:
            for old in list(self._recent_heartbeats)[:10_000]:
                del self._recent_heartbeats[old]
        return False

    async def _apply(self, tx: Tx, ev: DeviceEvent | DoorEvent) -> None:
        if isinstance(ev, DeviceEvent):
            await self._device_event(tx, ev)
        else:
            await self._door_event(tx, ev)

    def _touch(self, ev: DeviceEvent) -> None:
        ts = ev.received_at.timestamp()
        st = self.devices.get(ev.device_id)
        if st is None:
            st = self.devices[ev.device_id] = DeviceState(last_seen=ts)
        st.last_seen = max(st.last_seen, ts)
        if ev.battery is not None:
            st.battery = ev.battery
        if ev.lat is not None and ev.lon is not None:
            st.lat, st.lon, st.position_at = ev.lat, ev.lon, ts
        self._dirty_devices.add(ev.device_id)

    async def _device_event(self, tx: Tx, ev: DeviceEvent) -> None:
        device = self.cfg.device(ev.device_id)
        if device is None:  # a session_start (_needs_unit lets no other through)
            # deduplicated like every other answered event: the device repeats until
            # answered, and each repeat must not count or audit another denial
            sender = f"device:{ev.device_id}"
            seen = await q.get_processed(tx.conn, sender, ev.id)
            if seen is not None:
                self.metrics.rejected.labels(reason="duplicate").inc()
                await self._answer_again(tx, seen, ev.device_id, None, ev.id)
                return
            denial = mqtt_wire.session_denied(
                "unknown_device", f"Device {ev.device_id} is not registered with the gateway."
            )
            await q.add_audit(
                tx.conn,
                tx.ts,
                "session_denied",
                actor=ev.device_id,
                reason="unknown_device",
                device=ev.device_id,
            )
            await q.add_processed(tx.conn, sender, ev.id, tx.ts, ev.type, None, denial)
            tx.publish(self.device_topic(ev.device_id), denial | {"re": ev.id})
            dev = ev.device_id

            def denied() -> None:
                self.metrics.session_denials.labels(reason="unknown_device").inc()
                log.info("session_denied", device=dev, reason="unknown_device")

            tx.after_commit.append(denied)
            return
        seen = await q.get_processed(tx.conn, f"device:{ev.device_id}", ev.id)
        if seen is not None:
            self.metrics.rejected.labels(reason="duplicate").inc()
            log.info("duplicate_event", device=ev.device_id, id=ev.id, type=ev.type)
            if ev.type in ANSWERED_TYPES:
                await self._answer_again(tx, seen, ev.device_id, None, ev.id)
            return
        person = self.cfg.person(device.person)
        assert person is not None  # config cross-check guarantees it
        ref: str | None = None
        reply: dict[str, Any] | None = None
        if ev.type == "session_start":
            ref, reply = await self._start(
                tx,
                person,
                source="device",
                device_id=ev.device_id,
                door_id=None,
                location_id=ev.location,
                planned_minutes=ev.planned_minutes,
                event_id=ev.id,
            )
        elif ev.type == "session_end":
            await self._end_by_person(
                tx,
                person,
                reason="device",
                device_id=ev.device_id,
                door_id=None,
                event_id=ev.id,
            )
        elif ev.type == "checkin":
            await self._checkin(tx, person, ev)
        elif ev.type in ("sos", "man_down"):
            ref = await self.raise_device_alarm(tx, ev, person)
        elif ev.type == "cancel":
            ref = await self.worker_cancel(tx, ev, person)
        elif ev.type == "low_battery":
            await q.add_audit(tx.conn, tx.ts, "low_battery", actor=ev.device_id, battery=ev.battery)
            log.warning("device_low_battery", device=ev.device_id, battery=ev.battery)
        await q.add_processed(tx.conn, f"device:{ev.device_id}", ev.id, tx.ts, ev.type, ref, reply)

    async def _door_event(self, tx: Tx, ev: DoorEvent) -> None:
        seen = await q.get_processed(tx.conn, f"door:{ev.door_id}", ev.id)
        if seen is not None:
            self.metrics.rejected.labels(reason="duplicate").inc()
            if ev.type in ANSWERED_TYPES:
                await self._answer_again(tx, seen, None, ev.door_id, ev.id)
            return
        ref: str | None = None
        reply: dict[str, Any] | None = None
        loc = self.cfg.location_of_door(ev.door_id)
        if ev.type == "badge":
            person = self.cfg.person_by_badge(ev.badge or "")
            action = ev.action
            if person is not None and action is None:
                active = await q.active_session_of(tx.conn, person.id)
                at_here = active is not None and loc is not None and active["location"] == loc.id
                action = "end" if at_here else "start"
            if person is not None and action == "end":
                ref = await self._end_by_person(
                    tx,
                    person,
                    reason="badge",
                    device_id=None,
                    door_id=ev.door_id,
                    event_id=ev.id,
                )
            else:
                ref, reply = await self._start(
                    tx,
                    person,
                    source="badge",
                    device_id=None,
                    door_id=ev.door_id,
                    location_id=loc.id if loc else None,
                    planned_minutes=None,
                    event_id=ev.id,
                )
        elif ev.type == "open" and loc is not None:
            await self._door_opened(tx, ev, loc.id)
        await q.add_processed(tx.conn, f"door:{ev.door_id}", ev.id, tx.ts, ev.type, ref, reply)

    async def _answer_again(
        self,
        tx: Tx,
        seen: dict[str, Any],
        device_id: str | None,
        door_id: str | None,
        event_id: str,
    ) -> None:
        """A repeat of an answered event: answer with the current state (CONTRACT §3)."""
        msg: dict[str, Any] | None = None
        ref = seen["ref"]
        session_device: str | None = None
        if seen["reply"] is not None:
            msg = dict(seen["reply"])
        elif ref and ref.startswith("ses-"):
            s = await q.get_session(tx.conn, ref)
            if s is not None:
                session_device = s["device"]
                msg = (
                    mqtt_wire.session_started(s, self.cfg.tz)
                    if s["active"]
                    else mqtt_wire.session_ended(s["id"])
                )
        elif ref and ref.startswith("alm-"):
            a = await q.get_alarm(tx.conn, ref)
            if a is not None:
                msg = mqtt_wire.alarm_state(a, tx.now)
        elif seen["type"] == "cancel":
            msg = mqtt_wire.alarm_cancelled(None)
        if msg is None:
            return
        msg["re"] = event_id
        if device_id:
            self.to_device(tx, device_id, msg)
        if door_id:
            tx.publish(self.door_topic(door_id), msg)
            self.to_device(tx, session_device, msg)

    # ------------------------------------------------------------------ sessions

    def _device_alive(self, device_id: str, now: dt.datetime) -> bool:
        st = self.devices.get(device_id)
        timeout = self.cfg.timing.device_timeout.total_seconds()
        return st is not None and now.timestamp() - st.last_seen <= timeout

    async def _start(
        self,
        tx: Tx,
        person: Person | None,
        *,
        source: str,
        device_id: str | None,
        door_id: str | None,
        location_id: str | None,
        planned_minutes: int | None,
        event_id: str,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Run the gate; returns (session id, None) or (None, the denial reply)."""
        if person is not None:
            active = await q.active_session_of(tx.conn, person.id)
            if active is not None:
                if active["location"] == location_id:
                    if active["device"] is None and device_id is not None:
                        # badged in with the JAA off, now started from it: monitor the device
                        # from here on (check-in requests had nowhere to go until now)
                        active = dict(active) | {"device": device_id}
                        await q.update_session(tx.conn, active, device=device_id)
                        await q.add_audit(
                            tx.conn,
                            tx.ts,
                            "session_device_attached",
                            actor=person.id,
                            session=active["id"],
                            device=device_id,
                        )
                        self._session_timers(tx, active)
                    msg = mqtt_wire.session_started(active, self.cfg.tz) | {"re": event_id}
                    self.to_device(tx, device_id or active["device"], msg)
                    if door_id:
                        tx.publish(self.door_topic(door_id), msg)
                    return active["id"], None
                where = self.cfg.location(active["location"])
                return None, await self._deny(
                    tx,
                    person,
                    location_id,
                    device_id,
                    door_id,
                    event_id,
                    "session_active",
                    f"You already have a lone-work session at "
                    f"{where.name if where else active['location']}; end it first.",
                )
        # only the holder's device matters to the gate; the fleet may be 10,000 devices
        own = self.cfg.device_of(person.id) if person is not None else None
        own_state = self.devices.get(own.id) if own is not None else None
        last_seen = {own.id: from_ts(own_state.last_seen)} if own and own_state else {}
        decision = gate.decide_start(
            self.cfg,
            now=tx.now,
            person=person,
            location_id=location_id,
            source="device" if source == "device" else "badge",
            device_id=device_id,
            assessments=self._assessments_by_person.get(person.id, []) if person else [],
            device_last_seen=last_seen,
            planned_minutes=planned_minutes,
        )
        if isinstance(decision, gate.Denied):
            return None, await self._deny(
                tx,
                person,
                location_id,
                device_id,
                door_id,
                event_id,
                decision.reason,
                decision.detail,
            )
        assert person is not None and location_id is not None
        dev = device_id
        if dev is None:
            own = self.cfg.device_of(person.id)
            # monitor the worker's device only if it is alive now: a device left at home
            # (where the assessment does not require one) must not page the guards
            if own is not None and self._device_alive(own.id, tx.now):
                dev = own.id
        sid = "ses-" + secrets.token_hex(8)
        interval = decision.checkin_interval
        row: dict[str, Any] = {
            "id": sid,
            "person": person.id,
            "location": location_id,
            "device": dev,
            "door": door_id,
            "assessment": decision.assessment_id,
            "source": source,
            "started_at": tx.ts,
            "ends_at": decision.ends_at.timestamp(),
            "checkin_interval_s": interval.total_seconds() if interval else None,
            "checkin_due_at": (tx.now + interval).timestamp() if interval else None,
            "checkin_state": "waiting" if interval else "none",
            "overrun_state": "none",
            "offline_alarmed": False,
            "active": True,
            "generation": 0,
        }
        await tx.conn.execute(_INSERT_SESSION, row)
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_started",
            actor=person.id,
            session=sid,
            location=location_id,
            device=dev,
            door=door_id,
            source=source,
            assessment=decision.assessment_id,
            ends_at=self.iso(row["ends_at"]),
        )
        log.info("session_started", session=sid, person=person.id, location=location_id)
        self._session_timers(tx, row)
        msg = mqtt_wire.session_started(row, self.cfg.tz) | {"re": event_id}
        self.to_device(tx, dev, msg)
        if door_id:
            tx.publish(self.door_topic(door_id), msg)
        tx.after_commit.append(lambda: self.metrics.sessions_active.inc())
        return sid, None

    async def _deny(
        self,
        tx: Tx,
        person: Person | None,
        location_id: str | None,
        device_id: str | None,
        door_id: str | None,
        event_id: str,
        reason: str,
        detail: str,
    ) -> dict[str, Any]:
        reply = mqtt_wire.session_denied(reason, detail)
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_denied",
            actor=person.id if person else None,
            reason=reason,
            detail=detail,
            location=location_id,
            device=device_id,
            door=door_id,
        )
        log.info(
            "session_denied",
            person=person.id if person else None,
            reason=reason,
            location=location_id,
        )
        tx.after_commit.append(lambda: self.metrics.session_denials.labels(reason=reason).inc())
        self.to_device(tx, device_id, reply | {"re": event_id})
        if door_id:
            tx.publish(self.door_topic(door_id), reply | {"re": event_id})
        if person is not None and person.supervisor:
            sup = self.cfg.person(person.supervisor)
            loc = self.cfg.location(location_id) if location_id else None
            if sup is not None:
                body = texts.denial_sms(
                    self.cfg.gateway.language,
                    person.name,
                    loc.name if loc else (location_id or "?"),
                    reason,
                    detail,
                )
                await self.enqueue(
                    tx,
                    alarm=None,
                    purpose="denial",
                    k=None,
                    person=sup.id,
                    phone=sup.phone,
                    channel="sms",
                    body=body,
                )
        return reply

    async def _end_by_person(
        self,
        tx: Tx,
        person: Person,
        *,
        reason: str,
        device_id: str | None,
        door_id: str | None,
        event_id: str,
    ) -> str | None:
        s = await q.active_session_of(tx.conn, person.id)
        if s is None:
            log.info("session_end_without_session", person=person.id)
            await q.add_audit(
                tx.conn, tx.ts, "session_end_ignored", actor=person.id, reason="no active session"
            )
            # answered all the same: a reader or device that repeats until answered must stop
            nothing = mqtt_wire.session_ended(None) | {"re": event_id}
            self.to_device(tx, device_id, nothing)
            if door_id:
                tx.publish(self.door_topic(door_id), nothing)
            return None
        await self.end_session(tx, s, reason=reason, actor=person.id)
        msg = mqtt_wire.session_ended(s["id"]) | {"re": event_id}
        self.to_device(tx, s["device"] or device_id, msg)
        if door_id:
            tx.publish(self.door_topic(door_id), msg)
        return str(s["id"])

    async def end_session(self, tx: Tx, s: dict[str, Any], *, reason: str, actor: str) -> None:
        await q.update_session(tx.conn, s, active=False, ended_at=tx.ts, end_reason=reason)
        for kind in ("checkin", "overrun", "offline"):
            tx.set_timer((kind, s["id"]), None)
        sid = s["id"]
        tx.after_commit.append(lambda: self.presence.unwatch(sid))
        await q.add_audit(
            tx.conn,
            tx.ts,
            "session_ended",
            actor=actor,
            session=s["id"],
            reason=reason,
            location=s["location"],
        )
        log.info("session_ended", session=s["id"], reason=reason)
        tx.after_commit.append(lambda: self.metrics.sessions_active.dec())

    async def _checkin(self, tx: Tx, person: Person, ev: DeviceEvent) -> None:
        s = await q.active_session_of(tx.conn, person.id)
        if s is None:
            await q.add_audit(tx.conn, tx.ts, "checkin_without_session", actor=ev.device_id)
            return
        values: dict[str, Any] = {}
        if s["checkin_interval_s"]:
            due = tx.ts + s["checkin_interval_s"]
            values = {
                "checkin_due_at": due,
                "checkin_state": "waiting",
                "checkin_grace_until": None,
            }
            tx.set_timer(("checkin", s["id"]), due)
        if values:
            await q.update_session(tx.conn, s, **values)
        await q.add_audit(tx.conn, tx.ts, "checkin", actor=person.id, session=s["id"])
        await self.worker_reports_ok(tx, ev.device_id, kinds=("missed_checkin",))

    def _session_timers(self, tx: Tx, s: dict[str, Any]) -> None:
        sid = s["id"]
        if s["checkin_state"] == "waiting" and s["checkin_due_at"] is not None:
            tx.set_timer(("checkin", sid), s["checkin_due_at"])
        elif s["checkin_state"] == "due" and s["checkin_grace_until"] is not None:
            tx.set_timer(("checkin", sid), s["checkin_grace_until"])
        if s["overrun_state"] == "none":
            tx.set_timer(("overrun", sid), s["ends_at"])
        elif s["overrun_state"] == "due":
            tx.set_timer(
                ("overrun", sid), s["ends_at"] + self.cfg.timing.overrun_grace.total_seconds()
            )
        if s["device"] and not s["offline_alarmed"]:
            dev, started = str(s["device"]), float(s["started_at"])
            tx.set_timer(("offline", sid), self.presence.due(sid, dev, started))
            tx.after_commit.append(lambda: self.presence.watch(sid, dev, started))

    # ------------------------------------------------------------------ deadlines

    async def on_deadline(self, key: Key, due: float) -> None:
        await self.on_deadlines([(key, due)])

    def _offline_still_fresh(self, key: Key) -> bool:
        """An offline watch whose device was heard since: move it on, without the database.

        Every session's watch comes due once per device_timeout even while its device
        heartbeats; thousands of sessions started together would otherwise stall the engine
        with a transaction each, all at once."""
        due = self.presence.watched_due(key[1]) if key[0] == "offline" else None
        if due is None or due <= self.clock().timestamp() + 0.001:
            return False
        self.deadlines.set(key, due)
        return True

    async def on_deadlines(self, items: list[tuple[Key, float]]) -> None:
        """Deadlines due together share transactions (`_in_units`: 10,000 check-ins lapsing
        in the same minute must not queue behind 10,000 fsyncs, nor hold the loop for the
        whole wave). One that fails is rolled back alone and retried in a second."""
        keys = [key for key, _due in items if not self._offline_still_fresh(key)]

        def failed(tx: Tx, key: Key) -> None:
            exc = sys.exc_info()[1]
            error = f"{type(exc).__name__}: {str(exc)[:200]}" if exc else "unknown"
            retry_in = self._deadline_failures.failed(key, error, self.commits)
            if retry_in is not None:
                log.exception("deadline_failed", kind=key[0], entity=key[1], retry_in_s=retry_in)
                tx.set_timer(key, tx.ts + retry_in)
                return
            # failed again and again while other work went through: poison, not an outage.
            # Retrying forever would hide it; the self-watch reports it (degraded, audited,
            # the default chain told) and the entity keeps its state in the store.
            log.exception("deadline_abandoned", kind=key[0], entity=key[1], error=error)
            self.abandoned_deadlines[key] = error
            self.metrics.deadlines_abandoned.inc()

        async def one(tx: Tx, key: Key) -> None:
            await self._deadline(tx, key)
            self._deadline_failures.succeeded(key)

        await self._in_units(keys, one, failed, wait_publish=False)

    async def _deadline(self, tx: Tx, key: Key) -> None:
        kind, entity = key
        if kind == "alarm":
            await self.alarm_deadline(tx, entity)
            return
        if kind == "presence":
            await self.presence.deadline(tx)
            return
        s = await q.get_session(tx.conn, entity)
        if s is None or not s["active"]:
            return
        if kind == "checkin":
            await self._checkin_deadline(tx, s)
        elif kind == "overrun":
            await self._overrun_deadline(tx, s)
        elif kind == "offline":
            await self._offline_deadline(tx, s)

    async def _checkin_deadline(self, tx: Tx, s: dict[str, Any]) -> None:
        if s["checkin_state"] == "waiting":
            if s["checkin_due_at"] is None or s["checkin_due_at"] > tx.ts + 0.001:
                if s["checkin_due_at"] is not None:
                    tx.set_timer(("checkin", s["id"]), s["checkin_due_at"])
                return
            grace = self.cfg.timing.checkin_grace.total_seconds()
            until = s["checkin_due_at"] + grace
            await q.update_session(tx.conn, s, checkin_state="due", checkin_grace_until=until)
            await q.add_audit(tx.conn, tx.ts, "checkin_due", session=s["id"], reason="checkin")
            self.to_device(tx, s["device"], mqtt_wire.checkin_due(s["id"], "checkin", grace))
            tx.set_timer(("checkin", s["id"]), until)
        elif s["checkin_state"] == "due":
            if s["checkin_grace_until"] is not None and s["checkin_grace_until"] > tx.ts + 0.001:
                tx.set_timer(("checkin", s["id"]), s["checkin_grace_until"])
                return
            await q.update_session(tx.conn, s, checkin_state="alarmed")
            await self.raise_session_alarm(tx, s, "missed_checkin")

    async def _overrun_deadline(self, tx: Tx, s: dict[str, Any]) -> None:
        grace = self.cfg.timing.overrun_grace.total_seconds()
        if s["overrun_state"] == "none":
            if s["ends_at"] > tx.ts + 0.001:
                tx.set_timer(("overrun", s["id"]), s["ends_at"])
                return
            await q.update_session(tx.conn, s, overrun_state="due")
            await q.add_audit(tx.conn, tx.ts, "checkin_due", session=s["id"], reason="overrun")
            self.to_device(tx, s["device"], mqtt_wire.checkin_due(s["id"], "overrun", grace))
            tx.set_timer(("overrun", s["id"]), s["ends_at"] + grace)
        elif s["overrun_state"] == "due":
            if s["ends_at"] + grace > tx.ts + 0.001:
                tx.set_timer(("overrun", s["id"]), s["ends_at"] + grace)
                return
            await q.update_session(tx.conn, s, overrun_state="alarmed")
            await self.raise_session_alarm(tx, s, "session_overrun")

    async def _offline_deadline(self, tx: Tx, s: dict[str, Any]) -> None:
        if not s["device"] or s["offline_alarmed"]:
            return
        due = self.presence.due(s["id"], s["device"], s["started_at"])
        if due > tx.ts + 0.001:
            tx.set_timer(("offline", s["id"]), due)
            return
        if await self.presence.lapsed(tx, s):  # held, or one of a common cause
            return
        await q.update_session(tx.conn, s, offline_alarmed=True)
        sid = s["id"]
        tx.after_commit.append(lambda: self.presence.unwatch(sid))
        await self.raise_session_alarm(tx, s, "device_offline")

    def unwatched_now(self, a: dict[str, Any]) -> int | None:
        if a["kind"] != "contact_lost":
            return None
        return self.presence.unwatched_now(self.clock().timestamp())

    # ------------------------------------------------------------------ doors

    async def _door_opened(self, tx: Tx, ev: DoorEvent, location_id: str) -> None:
        loc = self.cfg.location(location_id)
        if loc is None or loc.after_hours is None:
            return
        if not roster.in_window(loc.after_hours, self.cfg.tz, tx.now):
            return
        if await q.active_at_location(tx.conn, location_id):
            return
        last = self._last_notice.get(location_id)
        if last is not None and tx.now - last < NOTICE_SPACING:
            await q.add_audit(
                tx.conn,
                tx.ts,
                "notice_suppressed",
                kind="unattended_entry",
                location=location_id,
                door=ev.door_id,
            )
            return
        self._last_notice[location_id] = tx.now
        await self.raise_notice(tx, "unattended_entry", location_id, ev.door_id)

    # ------------------------------------------------------------------ housekeeping

    async def flush_devices(self) -> int:
        """Write dirty device last-seen times (batched: at most a few seconds are at risk)."""
        if not self._dirty_devices:
            return 0
        dirty, self._dirty_devices = self._dirty_devices, set()
        rows = []
        for d in dirty:
            st = self.devices[d]
            rows.append(
                {
                    "id": d,
                    "last_seen": st.last_seen,
                    "battery": st.battery,
                    "lat": st.lat,
                    "lon": st.lon,
                    "position_at": st.position_at,
                }
            )
        try:
            async with self.store.tx() as conn:
                await q.upsert_devices(conn, rows)
        except Exception:
            self._dirty_devices |= dirty
            raise
        return len(rows)

    async def purge_processed(self) -> int:
        cutoff = (self.clock() - DEDUPE_TTL).timestamp()
        async with self.store.tx() as conn:
            res = await conn.execute(
                delete(processed_events).where(processed_events.c.received_at < cutoff)
            )
        return int(res.rowcount or 0)
