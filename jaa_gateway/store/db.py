"""The database: connection set-up, versioned migrations, transactions.

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
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVarTuple, overload

import structlog
from sqlalchemy import (
    Connection,
    CursorResult,
    Executable,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select, TypedReturnsRows

from jaa_gateway.store import schema

if TYPE_CHECKING:
    # imported only for PostgreSQL: it pulls in the ORM, ~0.12 s of every start-up
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger("jaa_gateway.store")

_Ts = TypeVarTuple("_Ts")


class Conn(Protocol):
    """What a transaction offers: the subset of SQLAlchemy's AsyncConnection the code uses."""

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], parameters: Any = None
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def exec_driver_sql(
        self, statement: str, parameters: Sequence[Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def run_sync(self, fn: Callable[[Connection], Any]) -> Any: ...

    def begin_nested(self) -> Any:
        """An async context manager: a SAVEPOINT that rolls back alone on error."""

    @property
    def dialect_name(self) -> str:
        """ "sqlite" or "postgresql": for the few statements whose SQL differs (upserts)."""


class SyncConn:
    """A synchronous SQLAlchemy connection behind the async ``Conn`` interface (SQLite)."""

    __slots__ = ("_c",)

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], parameters: Any = None
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]:
        return self._c.execute(statement, parameters)

    async def exec_driver_sql(
        self, statement: str, parameters: Sequence[Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        return self._c.exec_driver_sql(statement, tuple(parameters) if parameters else ())

    async def run_sync(self, fn: Callable[[Connection], Any]) -> Any:
        return fn(self._c)

    @property
    def dialect_name(self) -> str:
        return self._c.dialect.name

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        with self._c.begin_nested():
            yield


def _reads_only(statement: Executable | str) -> bool:
    """A statement that cannot change anything (the fence is for transactions that write)."""
    if isinstance(statement, Select | CompoundSelect):
        return True
    sql = statement.text if isinstance(statement, TextClause) else statement
    return isinstance(sql, str) and sql.lstrip()[:6].lower() == "select"


class AsyncConn:
    """SQLAlchemy's AsyncConnection behind the same interface (PostgreSQL on asyncpg).

    `wrote` says whether anything but a SELECT ran (the cluster's fence checks those)."""

    __slots__ = ("_c", "wrote")

    def __init__(self, conn: AsyncConnection) -> None:
        self._c = conn
        self.wrote = False

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], parameters: Any = None
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self, statement: Executable, parameters: Any = None
    ) -> CursorResult[*tuple[Any, ...]]:
        if not self.wrote and not _reads_only(statement):
            self.wrote = True
        return await self._c.execute(statement, parameters)

    async def exec_driver_sql(
        self, statement: str, parameters: Sequence[Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        if not self.wrote and not _reads_only(statement):
            self.wrote = True
        return await self._c.exec_driver_sql(statement, tuple(parameters) if parameters else ())

    async def run_sync(self, fn: Callable[[Connection], Any]) -> Any:
        self.wrote = True
        return await self._c.run_sync(fn)

    @property
    def dialect_name(self) -> str:
        return self._c.dialect.name

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        async with self._c.begin_nested():
            yield


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
