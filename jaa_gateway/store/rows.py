"""Typed rows at the store boundary: what a read of a table gives the services."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast


class AlarmRow(TypedDict):
    id: str
    code: str
    kind: str
    state: str  # an AlarmState value (domain/alarm.py)
    person: str | None
    location: str | None
    session: str | None
    device: str | None
    lat: float | None
    lon: float | None
    opened_at: float
    prealarm_until: float | None
    escalation_started_at: float | None
    chain: dict[str, Any] | None  # the frozen ChainSnapshot (domain/model.py)
    generation: int  # compare-and-set: every update bumps it (queries.update_alarm)
    next_k: int
    next_due_at: float | None
    exhausted: bool
    acknowledged_by: str | None
    acknowledged_at: float | None
    ack_via: str | None
    resolved_at: float | None
    resolved_by: str | None
    note: str | None
    cancelled_at: float | None
    worker_ok_at: float | None


ALARM_COLUMNS: frozenset[str] = frozenset(AlarmRow.__annotations__)


def alarm_row(mapping: Mapping[Any, Any]) -> AlarmRow:
    """A row read from the alarms table (every column: the schema and AlarmRow agree)."""
    return cast(AlarmRow, dict(mapping))


def alarm_values(values: Mapping[str, Any]) -> None:
    """Columns to write to an alarm: a name that is no column is a bug, refused here."""
    unknown = set(values) - ALARM_COLUMNS
    if unknown:
        raise KeyError(f"no such alarm column: {', '.join(sorted(unknown))}")


def update_alarm_row(row: AlarmRow, values: Mapping[str, Any]) -> None:
    """Bring a row read earlier up to date with what was written to it."""
    alarm_values(values)
    cast(dict[str, Any], row).update(values)
