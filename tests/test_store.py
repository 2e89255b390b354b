"""The store: migrations, and transactions that mean what they say (a SAVEPOINT inside a unit
of work rolls back alone and commits nothing by itself)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from jaa_gateway.store import queries as q
from jaa_gateway.store.db import MIGRATIONS, Store
from jaa_gateway.store.schema import audit, schema_migrations


async def _events(store: Store) -> list[str]:
    async with store.tx() as conn:
        return [r[0] for r in await conn.execute(select(audit.c.event).order_by(audit.c.seq))]


async def test_migrations_are_applied_once_and_recorded(db_url: str) -> None:
    store = Store(db_url)
    assert await store.migrate() == max(n for n, _, _ in MIGRATIONS)
    assert await store.migrate() == max(n for n, _, _ in MIGRATIONS)
    async with store.tx() as conn:
        versions = [
            r[0]
            for r in await conn.execute(
                select(schema_migrations.c.version).order_by(schema_migrations.c.version)
            )
        ]
    await store.close()
    assert versions == [n for n, _, _ in MIGRATIONS]
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(db_url: str) -> None:
    store = Store(db_url)
    await store.migrate()
    async with store.tx() as conn:
        await conn.execute(schema_migrations.insert().values(version=999, applied_at=0.0))
    with pytest.raises(RuntimeError, match="newer"):
        await store.migrate()
    await store.close()


async def test_savepoint_rolls_back_alone_and_release_does_not_commit(db_url: str) -> None:
    store = Store(db_url)
    await store.migrate()
    async with store.tx() as conn:
        async with conn.begin_nested():
            await q.add_audit(conn, 1.0, "kept")
        with pytest.raises(ZeroDivisionError):
            async with conn.begin_nested():
                await q.add_audit(conn, 2.0, "rolled_back")
                raise ZeroDivisionError
    assert await _events(store) == ["kept"]
    # a released SAVEPOINT is still part of the outer transaction: an error after it
    # takes it back too
    with pytest.raises(ZeroDivisionError):
        async with store.tx() as conn:
            async with conn.begin_nested():
                await q.add_audit(conn, 3.0, "released_then_outer_failed")
            raise ZeroDivisionError
    assert await _events(store) == ["kept"]
    await store.close()


async def test_a_version_1_database_gets_the_version_2_indexes(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    await store.migrate()
    await store.close()
    with sqlite3.connect(db) as c:  # as a gateway of schema version 1 left it
        c.execute("DROP INDEX ix_alarms_code_state")
        c.execute("DROP INDEX ix_alarms_device_state")
        c.execute("DELETE FROM schema_migrations WHERE version = 2")
    store = Store(f"sqlite:///{db}")
    assert await store.migrate() == 2
    await store.close()
    with sqlite3.connect(db) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(
            str(r[3])
            for r in c.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM alarms WHERE code = '1234' AND state = 'x'"
            )
        )
    assert {"ix_alarms_code_state", "ix_alarms_device_state"} <= names
    assert "ix_alarms_code_state" in plan
