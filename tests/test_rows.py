"""Typed rows at the store boundary (store/rows.py) agree with the schema, and a column name
that does not exist is refused before anything is written."""

from __future__ import annotations

import pytest

from jaa_gateway.store.rows import ALARM_COLUMNS, alarm_row, alarm_values, update_alarm_row
from jaa_gateway.store.schema import alarms


def test_the_alarm_row_has_exactly_the_tables_columns() -> None:
    assert frozenset(c.name for c in alarms.columns) == ALARM_COLUMNS


def test_unknown_alarm_columns_are_refused_and_nothing_changes() -> None:
    row = alarm_row({c: None for c in ALARM_COLUMNS} | {"id": "alm-1", "state": "escalating"})
    with pytest.raises(KeyError, match="acknowleged_by"):
        update_alarm_row(row, {"state": "acknowledged", "acknowleged_by": "guard-1"})
    assert row["state"] == "escalating"
    with pytest.raises(KeyError, match="generations"):
        alarm_values({"generations": 2})
    update_alarm_row(row, {"state": "acknowledged", "acknowledged_by": "guard-1"})
    assert (row["state"], row["acknowledged_by"]) == ("acknowledged", "guard-1")
