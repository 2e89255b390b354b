"""Reading a month's report from the database the config names: rows from the store, numbers
from `domain/report.py`, names from the config. Used by the CLI (its own short-lived store) and
by the HTTP API and the console (the daemon's store)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from jaa_gateway.config import Config
from jaa_gateway.domain.report import Month, MonthlyReport, Validity, monthly_report
from jaa_gateway.store import report_reads
from jaa_gateway.store.db import Store


class NoDatabase(Exception):
    """The database the config names has no gateway tables (the gateway never ran on it)."""


def validity(cfg: Config, stored: list[dict[str, Any]]) -> list[Validity]:
    """People's HMS trainings and the assessments' validity: the config's assessments, and the
    API's that are stored (an unreadable stored one is left out, as the engine leaves it)."""
    out = [
        Validity("training", p.id, p.id, p.hse_training_until)
        for p in cfg.people
        if p.hse_training_until is not None
    ]
    seen: set[str] = set()
    for a in cfg.assessments:
        seen.add(a.id)
        out.append(Validity("assessment", a.id, a.person, a.valid_until, tuple(a.locations)))
    for data in stored:
        aid, person, until = data.get("id"), data.get("person"), data.get("valid_until")
        if not isinstance(aid, str) or aid in seen or not isinstance(person, str):
            continue
        try:
            day = dt.date.fromisoformat(str(until))
        except ValueError:
            continue
        locs = data.get("locations")
        where = tuple(x for x in locs if isinstance(x, str)) if isinstance(locs, list) else ()
        out.append(Validity("assessment", aid, person, day, where))
    return out


class Reports:
    def __init__(self, cfg: Config, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._store = store
        self._clock = clock

    async def monthly(self, month: Month, *, check_schema: bool = False) -> MonthlyReport:
        """The report of ``month``. ``check_schema`` (the CLI): NoDatabase when the gateway's
        tables are missing, rather than a driver error."""
        async with self._store.tx(fenced=False) as conn:
            if check_schema and not await report_reads.has_schema(conn):
                raise NoDatabase(
                    "the database has no jaa-gateway tables: has the gateway run on it?"
                )
            rows = await report_reads.month_rows(conn, month.start, month.end)
            stored = await report_reads.stored_assessments(conn)
        return monthly_report(
            rows,
            month,
            self.cfg.tz,
            self._clock(),
            [loc.id for loc in self.cfg.locations],
            validity(self.cfg, stored),
        )


def _sqlite_file(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("sqlite"):
        return None
    return u.database or ":memory:"


def read_report(cfg: Config, month: Month, fmt: str) -> str:
    """The report as text, from a store of its own (the CLI): nothing is created or written."""
    import asyncio
    from pathlib import Path

    from jaa_gateway.report import render

    db_file = _sqlite_file(cfg.gateway.database)
    if db_file is not None and (db_file == ":memory:" or not Path(db_file).is_file()):
        raise NoDatabase(f"no SQLite database at {db_file}: has the gateway run with this config?")

    async def read() -> MonthlyReport:
        store = Store(cfg.gateway.database)
        try:
            return await Reports(cfg, store).monthly(month, check_schema=True)
        finally:
            await store.close()

    report = asyncio.run(read())
    return render.csv_text(cfg, report) if fmt == "csv" else render.html(cfg, report)
