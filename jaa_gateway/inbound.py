"""Events in: what needs no transaction (a heartbeat, an unknown device's chatter) is done
before any; the rest is deduplicated against the store (a device repeats an answered event
until it hears the answer, CONTRACT §3) and handed to the service it is for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from jaa_gateway.alarms import Acks, Raiser
from jaa_gateway.config import Config
from jaa_gateway.devices import Devices
from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.doors import Doors
from jaa_gateway.effects import Tx
from jaa_gateway.metrics import Metrics
from jaa_gateway.sessions import Sessions
from jaa_gateway.store import queries as q
from jaa_gateway.topics import Topics
from jaa_gateway.wire import mqtt as mqtt_wire

log = structlog.get_logger("jaa_gateway.engine")

# events a device repeats until answered (CONTRACT §3): a duplicate is answered again
ANSWERED_TYPES = frozenset({"session_start", "sos", "man_down", "cancel", "badge"})
# heartbeats remembered in memory to drop a repeated one (never stored: it changes nothing)
HEARTBEATS_KEPT = 50_000


@dataclass(eq=False, repr=False)
class Inbound:
    cfg: Config
    metrics: Metrics
    topics: Topics
    devices: Devices
    sessions: Sessions
    raiser: Raiser
    acks: Acks
    doors: Doors
    # in-memory first line of deduplication for heartbeats (never stored: a repeated
    # heartbeat changes nothing but last_seen)
    _recent_heartbeats: dict[tuple[str, str], None] = field(default_factory=dict, init=False)

    def forget(self) -> None:
        """Hot standby: a node that steps down drops what it remembered in memory."""
        self._recent_heartbeats.clear()
        self.doors.forget()

    def needs_unit(self, ev: DeviceEvent | DoorEvent) -> bool:
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
        self.devices.touch(ev)
        if ev.type != "heartbeat":
            return True
        key = (ev.device_id, ev.id)
        if key in self._recent_heartbeats:
            self.metrics.rejected.labels(reason="duplicate").inc()
            return False
        self._recent_heartbeats[key] = None
        if len(self._recent_heartbeats) > HEARTBEATS_KEPT:
            for old in list(self._recent_heartbeats)[:10_000]:
                del self._recent_heartbeats[old]
        return False

    async def apply(self, tx: Tx, ev: DeviceEvent | DoorEvent) -> None:
        if isinstance(ev, DeviceEvent):
            await self._device_event(tx, ev)
        else:
            await self._door_event(tx, ev)

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
            self.topics.to_device(tx, ev.device_id, denial | {"re": ev.id})
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
            ref, reply = await self.sessions.start(
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
            await self.sessions.end_by_person(
                tx,
                person,
                reason="device",
                device_id=ev.device_id,
                door_id=None,
                event_id=ev.id,
            )
        elif ev.type == "checkin":
            await self.sessions.checkin(tx, person, ev)
        elif ev.type in ("sos", "man_down"):
            ref = await self.raiser.device_alarm(tx, ev, person)
        elif ev.type == "cancel":
            ref = await self.acks.worker_cancel(tx, ev, person)
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
        ref, reply = await self.doors.handle(tx, ev)
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
        self.topics.to_device(tx, device_id, msg)
        if door_id:
            self.topics.to_door(tx, door_id, msg)
            self.topics.to_device(tx, session_device, msg)
