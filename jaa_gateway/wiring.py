"""The core's wiring: each service given what it needs, the engine running them (issue 12)."""

from __future__ import annotations

from jaa_gateway.alarms import Acks, AlarmWriter, Announcer, Escalator, Raiser
from jaa_gateway.assessments import Assessments
from jaa_gateway.config import Config
from jaa_gateway.deadlines import Deadlines
from jaa_gateway.devices import Devices
from jaa_gateway.doors import Doors
from jaa_gateway.effects import Publisher
from jaa_gateway.engine import Engine, Services
from jaa_gateway.inbound import Inbound
from jaa_gateway.metrics import Metrics
from jaa_gateway.notifications import OutboxPort
from jaa_gateway.presence import Presence
from jaa_gateway.session_timers import SessionTimers
from jaa_gateway.sessions import Sessions
from jaa_gateway.store.db import Store
from jaa_gateway.timeutil import utcnow
from jaa_gateway.topics import Topics


def wire_core(
    cfg: Config,
    store: Store,
    publisher: Publisher,
    deadlines: Deadlines,
    metrics: Metrics,
    outbox: OutboxPort,
) -> Engine:
    """The core's services, each given what it needs; the engine runs them."""
    topics = Topics(cfg.mqtt.topic_prefix)
    devices = Devices(cfg, store)
    presence = Presence(
        deadlines,
        timeout=lambda: cfg.timing.device_timeout.total_seconds(),
        last_seen=devices.last_seen,
    )
    announce = Announcer(cfg.tz, topics)
    writer = AlarmWriter(announce, metrics, outbox)
    escalator = Escalator(cfg, writer, presence, utcnow)
    raiser = Raiser(cfg, metrics, devices, escalator, announce)
    acks = Acks(cfg, writer)
    timers = SessionTimers(cfg, topics, presence, raiser)
    assessments = Assessments(cfg)
    sessions = Sessions(cfg, metrics, topics, devices, assessments, timers, acks)
    doors = Doors(cfg, sessions, raiser)
    inbound = Inbound(cfg, metrics, topics, devices, sessions, raiser, acks, doors)
    services = Services(devices, assessments, presence, timers, escalator, acks, inbound)
    return Engine(cfg, store, publisher, deadlines, metrics, services, outbox, clock=utcnow)
