"""The database: connection set-up, versioned migrations, transactions.

SQLite runs in WAL mode with synchronous=FULL: an alarm that was committed must survive a power
cut, not only a process crash, and FULL costs ~0.4 ms more a commit (STYLE.md, measured), which
is nothing next to an SMS. One connection is shared (pool of one): SQLite has a single writer
anyway, and queuing on the pool keeps every transaction short and in order on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from jaa_gateway.store import schema

log = structlog.get_logger("jaa_gateway.store")

Migration = Callable[[AsyncConnection], Awaitable[None]]


async def _v1(conn: AsyncConnection) -> None:
    await conn.run_sync(schema.metadata.create_all)


# Append only: a released migration is never edited; a schema change is a new entry.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _v1),
]


def async_url(url: str) -> str:
    """Map the config's database URL onto an async driver."""
    u = make_url(url)
    if u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


class Store:
    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self.last_write_ok: float | None = None
        self.last_error: str | None = None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # the driver's own transaction handling starts transactions late and lets a
            # RELEASE of the first SAVEPOINT commit; SQLAlchemy's documented recipe: the driver
            # in autocommit mode, and an explicit BEGIN for each of our transactions
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; commits on success, rolls back on error."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        else:
            self.last_write_ok = time.monotonic()
            self.last_error = None

    async def migrate(self) -> int:
        """Apply every migration not applied yet; return the schema version."""
        async with self.tx() as conn:
            await conn.run_sync(lambda c: schema.schema_migrations.create(c, checkfirst=True))
            rows = await conn.execute(select(schema.schema_migrations.c.version))
            applied = {r[0] for r in rows}
            version = max(applied, default=0)
            for num, name, fn in MIGRATIONS:
                if num in applied:
                    continue
                log.info("db_migration_applying", version=num, name=name)
                await fn(conn)
                await conn.execute(
                    schema.schema_migrations.insert().values(version=num, applied_at=time.time())
                )
                version = num
        known = max(n for n, _, _ in MIGRATIONS)
        if version > known:
            raise RuntimeError(
                f"database schema version {version} is newer than this gateway knows ({known}); "
                "refusing to run an older gateway on a newer database"
            )
        return version

    async def probe_write(self) -> None:
        """A tiny write, for /healthz: proves the database is writable now."""
        async with self.tx() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS health_probe (x INTEGER)"))
            await conn.execute(text("DELETE FROM health_probe"))
            await conn.execute(text("INSERT INTO health_probe (x) VALUES (1)"))

    async def close(self) -> None:
        await self.engine.dispose()


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """One line for an operator: the driver's own message (e.g. "OperationalError: database or
    disk is full") rather than SQLAlchemy's wrapper with the statement and a help link."""
    orig = getattr(exc, "orig", None)
    shown = orig if isinstance(orig, BaseException) else exc
    text_ = " ".join(str(shown).split())
    if not text_:
        text_ = "no answer in time" if isinstance(shown, TimeoutError) else "no detail"
    return f"{type(shown).__name__}: {text_}"[:limit]


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
