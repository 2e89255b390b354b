"""The database: connection set-up, transactions, the fence; the migrations run from here
(store/migrations.py), the connection adapters are in store/conn.py.

SQLite runs in WAL mode with synchronous=FULL: an alarm that was committed must survive a power
cut, not only a process crash, and FULL costs ~0.4 ms more a commit (STYLE.md, measured), which
is nothing next to an SMS.

SQLite is driven synchronously, on the event loop's own thread, through one connection that an
``asyncio.Lock`` hands to one transaction at a time. Measured (issue 6): through SQLAlchemy's
async layer on aiosqlite every statement was a hop to the driver's thread and back, ~0.7 ms under
load, and an sos is 13 statements and a commit; on the loop's thread a statement costs ~0.1 ms
and nothing else can run in between anyway (one writer, one lock). A statement never waits on
another process (busy_timeout is short: the gateway is the database's only writer), so the loop
is blocked only for the work itself. PostgreSQL keeps the async driver (asyncpg): there a
statement is a network round trip. Both are used through the same small ``Conn`` interface.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from jaa_gateway.store import schema
from jaa_gateway.store.conn import AsyncConn, SyncConn

# Conn and MIGRATIONS are imported from here across the code and tests: db is the store's door
from jaa_gateway.store.conn import Conn as Conn
from jaa_gateway.store.migrations import MIGRATION_LOCK as MIGRATION_LOCK
from jaa_gateway.store.migrations import MIGRATIONS as MIGRATIONS

if TYPE_CHECKING:
    # imported only for PostgreSQL: it pulls in the ORM, ~0.12 s of every start-up
    from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("jaa_gateway.store")


# outbox.MAX_IN_FLIGHT sends may each record their outcome at once (tests/test_store.py checks
# the pool stays above it), beside the engine's unit, HTTP reads, the health probe and flushes
PG_POOL_SIZE = 40
PG_POOL_OVERFLOW = 10


def async_url(url: str) -> str:
    """Map the config's database URL onto an async driver (PostgreSQL)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def sqlite_url(url: str) -> str:
    """The config may name the async SQLite driver (older configs); SQLite runs synchronously."""
    u = make_url(url)
    return u.set(drivername="sqlite").render_as_string(hide_password=False)


class Store:
    def __init__(
        self, url: str, *, node: str | None = None, stuck_tx_after: float | None = None
    ) -> None:
        """`node` names this gateway in the database (the health probe's row); default: the
        host name. `stuck_tx_after` (PostgreSQL, a clustered gateway): the server ends a session
        left idle inside a transaction this long (seconds), so a paused process cannot hold
        locks that a takeover waits for (store/leases.py)."""
        self.node = (node or socket.gethostname() or "gateway")[:64]
        # set by a clustered gateway: (node, token) while it holds the lease, else None; every
        # transaction that writes then checks the token before it commits (store/leases.py)
        self.fence: Callable[[], tuple[str, int] | None] | None = None
        self.is_sqlite = make_url(url).drivername.startswith("sqlite")
        self.last_write_ok: float | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._sync: Connection | None = None
        self.async_engine: AsyncEngine | None = None
        if self.is_sqlite:
            self.url = sqlite_url(url)
            # one connection for the process (StaticPool), used from the loop's thread only;
            # check_same_thread is off because the loop's thread is not always the creator's
            self.engine = create_engine(
                self.url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # the driver's own transaction handling starts transactions late and lets a
            # RELEASE of the first SAVEPOINT commit; SQLAlchemy's documented recipe: the driver
            # in autocommit mode, and an explicit BEGIN for each of our transactions
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            self.url = async_url(url)
            # pre-ping: a connection the server (or a failover) closed while it sat in the pool
            # is replaced before use, not handed to a transaction that then fails; the pool
            # holds the outbox's sends in flight plus the engine, the HTTP API and housekeeping
            settings: dict[str, Any] = {}
            if stuck_tx_after is not None:
                ms = str(max(100, int(stuck_tx_after * 1000)))
                settings["connect_args"] = {
                    "server_settings": {"idle_in_transaction_session_timeout": ms}
                }
            self.async_engine = create_async_engine(
                self.url,
                **settings,
                pool_pre_ping=True,
                pool_size=PG_POOL_SIZE,
                max_overflow=PG_POOL_OVERFLOW,
                pool_timeout=10,
            )
            # the synchronous face of the same engine (events such as "commit" attach here)
            self.engine = self.async_engine.sync_engine

    @asynccontextmanager
    async def tx(self, *, fenced: bool = True) -> AsyncIterator[Conn]:
        """One transaction; commits on success, rolls back on error.

        With a fence set (a clustered gateway) a transaction that wrote commits only if this
        node still holds the lease (`leases.NotLeader` otherwise); `fenced=False` is for the
        node's own rows (migrations, the health probe, the lease itself)."""
        try:
            if self.async_engine is not None:
                async with self.async_engine.begin() as aconn:
                    conn = AsyncConn(aconn)
                    yield conn
                    if fenced and self.fence is not None and conn.wrote:
                        await self._fence(conn)
            else:
                async with self._lock:
                    if self._sync is None or self._sync.invalidated or self._sync.closed:
                        self._sync = self.engine.connect()
                    with self._sync.begin():
                        yield SyncConn(self._sync)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        else:
            self.last_write_ok = time.monotonic()
            self.last_error = None

    async def _fence(self, conn: Conn) -> None:
        from jaa_gateway.store.leases import NotLeader, fence

        assert self.fence is not None
        held = self.fence()
        if held is None:
            raise NotLeader("this node does not hold the lease: nothing written")
        await fence(conn, *held)

    async def migrate(self) -> int:
        """Apply every migration not applied yet; return the schema version."""
        async with self.tx(fenced=False) as conn:
            if not self.is_sqlite:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
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
        """A tiny write, for /healthz: proves the database is writable now (this node's row
        of `health`, overwritten; no DDL, no growth)."""
        from jaa_gateway.store.queries import upsert

        async with self.tx(fenced=False) as conn:
            await conn.execute(
                upsert(conn, schema.health, key=("node",)),
                {"node": self.node, "written_at": time.time()},
            )

    async def close(self) -> None:
        if self.async_engine is not None:
            await self.async_engine.dispose()
            return
        async with self._lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None
            self.engine.dispose()


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
    # the gateway is the only writer: a lock held elsewhere (a sqlite3 shell left in a
    # transaction) fails a unit quickly and visibly rather than freezing the event loop
    cur.execute("PRAGMA busy_timeout=200")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
