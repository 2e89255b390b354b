"""Tables. Instants are stored as UTC epoch seconds (REAL): cheap to compare and to index,
the same on SQLite and PostgreSQL; the API turns them into RFC 3339 in the site's zone."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("battery", Float),
    Column("lat", Float),
    Column("lon", Float),
    Column("position_at", Float),
)

# Deduplication of inbound events: (sender, event id) -> what it produced, so that a repeat
# changes nothing and is answered again with the current state (CONTRACT §3).
processed_events = Table(
    "processed_events",
    metadata,
    Column("sender", String(80), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("received_at", Float, nullable=False),
    Column("type", String(32), nullable=False),
    Column("ref", String(64)),
    Column("reply", JSON),  # the stored answer, for replies that are not derived from state
)
Index("ix_processed_received", processed_events.c.received_at)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("person", String(64), nullable=False),
    Column("location", String(64), nullable=False),
    Column("device", String(64)),
    Column("door", String(64)),
    Column("assessment", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    Column("checkin_interval_s", Float),
    Column("checkin_due_at", Float),
    # none | waiting | due (checkin_due sent, grace running) | alarmed
    Column("checkin_state", String(16), nullable=False, default="none"),
    Column("checkin_grace_until", Float),
    # none | due (checkin_due overrun sent) | alarmed
    Column("overrun_state", String(16), nullable=False, default="none"),
    Column("offline_alarmed", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("ended_at", Float),
    Column("end_reason", String(32)),
    # (migration 3) bumped by every update: each is a compare-and-set on it (queries.py)
    Column("generation", Integer, nullable=False, default=0, server_default="0"),
)
Index("ix_sessions_active_person", sessions.c.active, sessions.c.person)

alarms = Table(
    "alarms",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("code", String(8), nullable=False),
    Column("kind", String(32), nullable=False),
    # prealarm | escalating | acknowledged | resolved | cancelled | notice
    Column("state", String(16), nullable=False),
    Column("person", String(64)),
    Column("location", String(64)),
    Column("session", String(40)),
    Column("device", String(64)),
    Column("lat", Float),
    Column("lon", Float),
    Column("opened_at", Float, nullable=False),
    Column("prealarm_until", Float),
    Column("escalation_started_at", Float),
    Column("chain", JSON),
    # bumped by every update, each a compare-and-set on it (queries.py): a writer that read
    # the alarm before another changed it changes nothing
    Column("generation", Integer, nullable=False, default=0),
    Column("next_k", Integer, nullable=False, default=0),
    Column("next_due_at", Float),
    Column("exhausted", Boolean, nullable=False, default=False),
    Column("acknowledged_by", String(100)),
    Column("acknowledged_at", Float),
    Column("ack_via", String(16)),
    Column("resolved_at", Float),
    Column("resolved_by", String(100)),
    Column("note", Text),
    Column("cancelled_at", Float),
    Column("worker_ok_at", Float),
)
Index("ix_alarms_state", alarms.c.state)
# (migration 2) a new alarm's code is checked against the open ones, and a device's check-in
# looks for its open alarm: without these, both scan every alarm (10,000 open ones: seconds)
Index("ix_alarms_code_state", alarms.c.code, alarms.c.state)
Index("ix_alarms_device_state", alarms.c.device, alarms.c.state)

# The outbox: written in the same transaction as the state change that causes it.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alarm", String(40)),
    # alarm (an escalation step) | worker_ok | notice | denial | info
    Column("purpose", String(16), nullable=False),
    Column("k", Integer),
    Column("person", String(64)),
    Column("phone", String(20), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("body", Text, nullable=False),
    # pending | sending | sent | failed | cancelled
    Column("state", String(12), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    Column("sid", String(64)),
    Column("error", Text),
    Column("delivery_status", String(32)),
)
Index("ix_notifications_state_due", notifications.c.state, notifications.c.next_attempt_at)
Index("ix_notifications_alarm", notifications.c.alarm)
Index("ix_notifications_sid", notifications.c.sid)

assessments = Table(
    "assessments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("source", String(16), nullable=False),  # config | api
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(100), nullable=False),
)

# (migration 3) the health probe's write: one row per node, overwritten (CONTRACT /healthz)
health = Table(
    "health",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("written_at", Float, nullable=False),
)

# (migration 4) The leader's lease, one row (CONTRACT §8, store/leases.py): who holds it, the
# fencing token (up by one on every takeover) and the expiry by the database's own clock.
leases = Table(
    "leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("node", String(64)),
    Column("token", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Append-only: the store never updates or deletes audit rows.
audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("event", String(48), nullable=False),
    Column("actor", String(100)),
    Column("alarm", String(40)),
    Column("session", String(40)),
    Column("data", JSON),
)
Index("ix_audit_ts", audit.c.ts)
Index("ix_audit_alarm", audit.c.alarm)
