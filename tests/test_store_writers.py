"""The store, ready for concurrent writers (issue 13, point 2), on SQLite and PostgreSQL:
every update of an alarm or a session is a compare-and-set on its generation (a stale writer
changes nothing and says so), upserts are single statements, migrations take an advisory lock,
the health probe writes a row and creates nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, text

from jaa_gateway.store import queries as q
from jaa_gateway.store.db import MIGRATIONS, Store
from jaa_gateway.store.schema import alarms, audit, devices, health, schema_migrations, sessions

LATEST = max(n for n, _, _ in MIGRATIONS)


def _alarm(aid: str = "alm-1") -> dict[str, Any]:
    return {
        "id": aid,
        "code": "1234",
        "kind": "sos",
        "state": "escalating",
        "opened_at": 1000.0,
        "escalation_started_at": 1000.0,
        "generation": 0,
        "next_k": 1,
        "next_due_at": 1002.0,
        "exhausted": False,
    }


def _session(sid: str = "ses-1") -> dict[str, Any]:
    return {
        "id": sid,
        "person": "ola",
        "location": "d1-123",
        "assessment": "RA-1",
        "source": "device",
        "started_at": 1000.0,
        "ends_at": 2000.0,
        "checkin_state": "waiting",
        "overrun_state": "none",
        "offline_alarmed": False,
        "active": True,
    }


async def _store(db_url: str) -> Store:
    store = Store(db_url)
    assert await store.migrate() == LATEST
    return store


async def _events(store: Store) -> list[str]:
    async with store.tx() as conn:
        return [r[0] for r in await conn.execute(select(audit.c.event).order_by(audit.c.seq))]


async def test_a_late_writer_cannot_put_an_acknowledged_alarm_back_to_escalating(
    db_url: str,
) -> None:
    store = await _store(db_url)
    async with store.tx() as conn:
        await conn.execute(insert(alarms), _alarm())
    # the step runner read the alarm (escalating, generation 0) ...
    async with store.tx() as conn:
        late = await q.get_alarm(conn, "alm-1")
    assert late is not None and late["state"] == "escalating"
    # ... a guard's ack is stored meanwhile ...
    async with store.tx() as conn:
        a = await q.get_alarm(conn, "alm-1")
        assert a is not None
        await q.update_alarm(conn, a, state="acknowledged", acknowledged_by="guard-1")
        assert a["generation"] == 1
    # ... and the step runner's write comes late: refused, its whole transaction with it
    with pytest.raises(q.StaleWrite, match=r"alarms alm-1: read at generation 0, now at 1"):
        async with store.tx() as conn:
            await q.add_audit(conn, 2.0, "late_step", alarm="alm-1")
            await q.update_alarm(conn, late, state="escalating", next_k=2, next_due_at=1004.0)
    async with store.tx() as conn:
        now = await q.get_alarm(conn, "alm-1")
    assert now is not None
    assert (now["state"], now["acknowledged_by"], now["next_k"], now["generation"]) == (
        "acknowledged",
        "guard-1",
        1,
        1,
    )
    assert await _events(store) == []
    # the late writer's row was not bumped: it still says what it read
    assert late["generation"] == 0
    await store.close()


async def test_each_write_bumps_the_generation_and_a_vanished_row_is_stale(db_url: str) -> None:
    store = await _store(db_url)
    async with store.tx() as conn:
        await conn.execute(insert(alarms), _alarm())
        a = await q.get_alarm(conn, "alm-1")
        assert a is not None
        # two writes of one writer in one transaction: its row follows the generation
        await q.update_alarm(conn, a, next_k=2)
        await q.update_alarm(conn, a, next_k=3)
        assert a["generation"] == 2
        with pytest.raises(ValueError, match="generation is the store's"):
            await q.update_alarm(conn, a, generation=7)
    ghost = _alarm("alm-gone")
    with pytest.raises(q.StaleWrite, match="alm-gone: read at generation 0, gone"):
        async with store.tx() as conn:
            await q.update_alarm(conn, ghost, state="acknowledged")
    await store.close()


async def test_a_late_session_writer_changes_nothing(db_url: str) -> None:
    store = await _store(db_url)
    async with store.tx() as conn:
        await conn.execute(insert(sessions), _session())
        s = await q.get_session(conn, "ses-1")
    assert s is not None and s["generation"] == 0
    stale = dict(s)
    async with store.tx() as conn:
        await q.update_session(conn, s, active=False, ended_at=1500.0, end_reason="ended")
    with pytest.raises(q.StaleWrite, match="sessions ses-1"):
        async with store.tx() as conn:
            await q.update_session(conn, stale, checkin_state="alarmed")
    async with store.tx() as conn:
        now = await q.get_session(conn, "ses-1")
    assert now is not None
    assert (now["active"], now["checkin_state"], now["generation"]) == (False, "waiting", 1)
    await store.close()


@pytest.mark.postgres
async def test_two_gateways_in_open_transactions_one_ack_wins(postgres_url: str) -> None:
    """Two stores (two processes' pools) on one database, truly concurrent: the step runner's
    transaction is open and has read the alarm when the other commits the ack; its update then
    matches no row (READ COMMITTED re-reads the committed row) and it writes nothing."""
    a_store, b_store = await _store(postgres_url), Store(postgres_url)
    async with a_store.tx() as conn:
        await conn.execute(insert(alarms), _alarm())
    read, acked = asyncio.Event(), asyncio.Event()

    async def step_runner() -> None:
        async with b_store.tx() as conn:
            row = await q.get_alarm(conn, "alm-1")
            assert row is not None
            read.set()
            await acked.wait()
            await q.add_audit(conn, 2.0, "late_step", alarm="alm-1")
            await q.update_alarm(conn, row, state="escalating", next_k=2)

    async def ack() -> None:
        await read.wait()
        async with a_store.tx() as conn:
            row = await q.get_alarm(conn, "alm-1")
            assert row is not None
            await q.update_alarm(conn, row, state="acknowledged", acknowledged_by="guard-1")
        acked.set()

    results = await asyncio.gather(step_runner(), ack(), return_exceptions=True)
    assert isinstance(results[0], q.StaleWrite), results
    assert results[1] is None, results
    async with a_store.tx() as conn:
        now = await q.get_alarm(conn, "alm-1")
    assert now is not None and (now["state"], now["generation"]) == ("acknowledged", 1)
    assert await _events(a_store) == []
    await a_store.close()
    await b_store.close()


@pytest.mark.postgres
async def test_gateways_starting_together_migrate_one_at_a_time(postgres_url: str) -> None:
    stores = [Store(postgres_url) for _ in range(3)]
    versions = await asyncio.gather(*(s.migrate() for s in stores))
    assert versions == [LATEST] * 3
    async with stores[0].tx() as conn:
        applied = [r[0] for r in await conn.execute(select(schema_migrations.c.version))]
    assert sorted(applied) == [n for n, _, _ in MIGRATIONS]
    for s in stores:
        await s.close()


async def test_a_version_2_database_gets_session_generations_and_the_health_table(
    db_url: str,
) -> None:
    store = await _store(db_url)
    async with store.tx() as conn:  # as a gateway of schema version 2 left it
        await conn.execute(insert(sessions), _session())
        await conn.execute(text("ALTER TABLE sessions DROP COLUMN generation"))
        await conn.execute(text("DROP TABLE health"))
        await conn.execute(text("CREATE TABLE health_probe (x INTEGER)"))
        await conn.execute(text("DELETE FROM schema_migrations WHERE version = 3"))
    await store.close()
    store = Store(db_url)
    assert await store.migrate() == 3

    def tables(c: Any) -> set[str]:
        return set(inspect(c).get_table_names())

    async with store.tx() as conn:
        names = await conn.run_sync(tables)
        s = await q.get_session(conn, "ses-1")
    assert "health" in names and "health_probe" not in names
    assert s is not None and s["generation"] == 0
    await store.close()


async def test_the_health_probe_writes_a_row_and_creates_nothing(db_url: str) -> None:
    store = await _store(db_url)

    def tables(c: Any) -> set[str]:
        return set(inspect(c).get_table_names())

    async with store.tx() as conn:
        before = await conn.run_sync(tables)
    t0 = time.time()
    await store.probe_write()
    await store.probe_write()
    async with store.tx() as conn:
        after = await conn.run_sync(tables)
        rows = (await conn.execute(select(health))).mappings().all()
    assert after == before
    assert [r["node"] for r in rows] == [store.node]
    assert t0 - 1 <= rows[0]["written_at"] <= time.time() + 1
    await store.close()


async def test_device_upsert_never_moves_last_seen_backwards(db_url: str) -> None:
    store = await _store(db_url)

    def row(last_seen: float, battery: float) -> dict[str, Any]:
        return {
            "id": "jaa-0042",
            "last_seen": last_seen,
            "battery": battery,
            "lat": None,
            "lon": None,
            "position_at": None,
        }

    for seen, battery in ((10.0, 0.9), (5.0, 0.1), (20.0, 0.8)):
        async with store.tx() as conn:
            await q.upsert_devices(conn, [row(seen, battery)])
    async with store.tx() as conn:
        got = (await conn.execute(select(devices.c.last_seen, devices.c.battery))).all()
    assert [tuple(r) for r in got] == [(20.0, 0.8)]
    await store.close()
