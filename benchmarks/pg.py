"""The alarm-latency bench on PostgreSQL (issue 13): the same campus, background load and alarms
as on SQLite, in the same run, on a throwaway cluster started exactly as the tests start theirs
(`tests.support.postgres.PostgresCluster`: initdb and pg_ctl in a temp dir, a free loopback
port). It never touches a server that happens to run on the machine (5432).

The gateway on PostgreSQL runs as a one-node cluster (`[cluster]`, a 5 s lease), as it would in
the hot-standby deployment that PostgreSQL is for: every transaction checks the fencing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.harness import Gateway
from jaa_gateway.store.schema import sessions
from tests.support.postgres import PostgresCluster, find_bindir

LEASE = "5s"


@contextlib.asynccontextmanager
async def throwaway_cluster() -> AsyncIterator[PostgresCluster]:
    """A PostgreSQL cluster of the bench's own, removed afterwards. Its directory is a fresh
    temp dir (as the tests' fixture): the server runs as an unprivileged user when we are root,
    and it must reach its data directory."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb, pg_ctl, ...) under /usr/lib/postgresql/*/bin "
            "or on PATH: sudo apt-get install -y postgresql"
        )
    work = Path(tempfile.mkdtemp(prefix="jaa-bench-pg-"))
    cluster = PostgresCluster(bindir, work)
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        try:
            await asyncio.to_thread(cluster.stop)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def on_postgres(cfg: dict[str, Any], url: str) -> dict[str, Any]:
    """The campus config on PostgreSQL, as a one-node cluster."""
    cfg["gateway"]["database"] = url
    cfg["cluster"] = {"node": "bench-pg", "lease": LEASE}
    return cfg


async def seed(url: str, rows: list[dict[str, Any]]) -> None:
    """Insert the session rows the SQLite store is seeded with (scenarios.session_rows)."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.begin() as conn:
            if rows:
                await conn.execute(insert(sessions), rows)
    finally:
        await engine.dispose()


async def prepare(cfg: dict[str, Any], workdir: Path, rows: list[dict[str, Any]]) -> float:
    """First start on the empty database (it writes the campus's people, devices and
    assessments), stop, then seed the sessions. Returns the first start's seconds to ready."""
    gw = Gateway(cfg, workdir)
    try:
        first = await gw.start(300)
        await wait_leading(gw, 30)
    finally:
        await gw.stop()
    await seed(cfg["gateway"]["database"], rows)
    return first


async def wait_leading(gw: Gateway, timeout: float) -> float:
    """Until the gateway answers /leader 200 (it has taken the lease); returns the seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(aiohttp.ClientError):
            async with gw.session.get(gw.base + "/leader") as r:
                if r.status == 200:
                    return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway on PostgreSQL never took the lease:\n" + gw.log_tail())
