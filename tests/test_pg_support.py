"""The PostgreSQL test support itself: missing binaries skip locally and fail under CI=true;
the pool is sized for the outbox's concurrency."""

from __future__ import annotations

import pytest

from jaa_gateway import outbox
from jaa_gateway.store import db
from tests.support import postgres


def test_missing_postgres_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL tests skipped: no binaries"):
        postgres._unavailable("no binaries")


def test_missing_postgres_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and the PostgreSQL tests cannot"):
        postgres._unavailable("no binaries")


def test_the_binaries_found_are_a_complete_set() -> None:
    bindir = postgres.find_bindir()
    if bindir is None:
        postgres._unavailable("no PostgreSQL server binaries")
    assert bindir is not None
    for name in ("initdb", "pg_ctl", "postgres", "psql"):
        assert (bindir / name).exists(), name


def test_the_pool_holds_every_send_in_flight_and_more() -> None:
    # each send in flight records its outcome in a transaction of its own; the engine, the
    # HTTP API and the health probe need connections beside them
    assert db.PG_POOL_SIZE >= outbox.MAX_IN_FLIGHT + 4
