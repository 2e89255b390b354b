"""Versioned schema migrations: append only, a released migration is never edited."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from sqlalchemy import Connection, inspect, text

from jaa_gateway.store import schema
from jaa_gateway.store.conn import Conn

Migration = Callable[[Conn], Awaitable[None]]


async def _v1(conn: Conn) -> None:
    await conn.run_sync(schema.metadata.create_all)


async def _v2(conn: Conn) -> None:
    # v1 creates the current metadata, these included, on a new database: IF NOT EXISTS
    await conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_alarms_code_state ON alarms (code, state)"
    )
    await conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_alarms_device_state ON alarms (device, state)"
    )


async def _v3(conn: Conn) -> None:
    # v1 creates the current metadata on a new database: only what is missing
    def session_columns(c: Connection) -> set[str]:
        return {col["name"] for col in inspect(c).get_columns("sessions")}

    if "generation" not in await conn.run_sync(session_columns):
        await conn.exec_driver_sql(
            "ALTER TABLE sessions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"
        )
    await conn.run_sync(lambda c: schema.health.create(c, checkfirst=True))
    # the old probe created this table at run time (DDL on every /healthz)
    await conn.exec_driver_sql("DROP TABLE IF EXISTS health_probe")


async def _v4(conn: Conn) -> None:
    await conn.run_sync(lambda c: schema.leases.create(c, checkfirst=True))
    await conn.execute(
        text(
            "INSERT INTO leases (name, node, token, expires_at) VALUES ('leader', NULL, 0, :t) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {"t": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)},
    )


# Append only: a released migration is never edited; a schema change is a new entry.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _v1),
    (2, "indexes for alarm codes and a device's open alarm", _v2),
    (3, "session generations (compare-and-set), the health probe's table", _v3),
    (4, "the leader's lease (hot standby)", _v4),
]

# Gateways starting together on one PostgreSQL database migrate one at a time (the lock is
# the transaction's: released by its commit or rollback, and by the server if the process dies)
MIGRATION_LOCK = 0x6A61615F6D6967  # "jaa_mig"
