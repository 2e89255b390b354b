"""The ``Conn`` interface a transaction offers, and its two adapters: SQLite driven synchronously
on the loop's thread (``SyncConn``), PostgreSQL on SQLAlchemy's async driver (``AsyncConn``).
Why the two differ: store/db.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVarTuple, overload

from sqlalchemy import Connection, CursorResult, Executable
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select, TypedReturnsRows

if TYPE_CHECKING:
    # imported only for PostgreSQL: it pulls in the ORM, ~0.12 s of every start-up
    from sqlalchemy.ext.asyncio import AsyncConnection

_Ts = TypeVarTuple("_Ts")


class Conn(Protocol):
    """What a transaction offers: the subset of SQLAlchemy's AsyncConnection the code uses.

    The typed overloads of `execute` live here only: the code sees the adapters as a `Conn`
    (`Store.tx`), and mypy checks each adapter's plain `execute` against both overloads."""

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
