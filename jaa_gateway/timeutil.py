"""Instants: UTC epoch seconds in the store, aware datetimes everywhere else."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def to_ts(value: dt.datetime) -> float:
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.timestamp()


def from_ts(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, UTC)


def rfc3339(value: float | dt.datetime | None, tz: ZoneInfo | None = None) -> str | None:
    """RFC 3339 with the offset of `tz` (the site's zone), to the millisecond."""
    if value is None:
        return None
    d = from_ts(value) if isinstance(value, float | int) else value
    if tz is not None:
        d = d.astimezone(tz)
    return d.isoformat(timespec="milliseconds")


def parse_rfc3339(value: str) -> dt.datetime:
    """Parse an RFC 3339 instant; it must carry an offset (or Z)."""
    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if d.tzinfo is None:
        raise ValueError("an RFC 3339 time needs an offset, e.g. 2026-11-26T10:00:00+01:00")
    return d
