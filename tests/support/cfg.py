"""Build configs for tests from plain dicts, through the real `parse_config`.

`config_dict()` returns a fresh, mutable dict shaped like the contract's example config (tests
edit it freely); `make_config(data)` validates it. The people, roster and chain match CONTRACT §2:
- security-desk: guard-day Mon-Fri 07:00-17:00; guard-night every day 17:00-07:00 (so nobody is
  on duty on Saturday and Sunday daytime);
- guards: 0s roster, 2m roster + supervisor, 5m head-security; repeat 1, repeat_after 1m,
  keep_paging 5m.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.config import Config, parse_config

OSLO = ZoneInfo("Europe/Oslo")
UTC = dt.UTC

_BASE: dict[str, Any] = {
    "gateway": {
        "site": "test-site",
        "timezone": "Europe/Oslo",
        "database": "sqlite:///:memory:",
        "language": "nb",
        "default_escalation": "guards",
    },
    "notify": {"driver": "console"},
    "timing": {"device_timeout": "120s"},
    "people": [
        {
            "id": "ola",
            "name": "Ola Nordmann",
            "phone": "+4791234567",
            "badges": ["04A1B2C3"],
            "roles": ["worker"],
            "supervisor": "kari",
            "hse_training_until": "2027-08-31",
        },
        {
            "id": "kari",
            "name": "Kari Hansen",
            "phone": "+4790000001",
            "roles": ["supervisor"],
        },
        {
            "id": "head-security",
            "name": "Per Sikkerhet",
            "phone": "+4790000002",
            "roles": ["head"],
        },
        {"id": "guard-day", "name": "Dag Vakt", "phone": "+4790000003", "roles": ["guard"]},
        {"id": "guard-night", "name": "Natt Vakt", "phone": "+4790000004", "roles": ["guard"]},
        {
            "id": "nils",
            "name": "Nils Uten Sjef",
            "phone": "+4790000005",
            "roles": ["worker"],
            "hse_training_until": "2027-08-31",
        },
    ],
    "devices": [{"id": "jaa-0042", "person": "ola"}],
    "locations": [
        {
            "id": "d1-123",
            "name": "Realfagbygget D1-123 (kjemilab)",
            "kind": "lab",
            "doors": ["door-d1-123"],
            "escalation": "guards",
            "after_hours": {"start": "17:00", "end": "07:00"},
        },
        {
            "id": "lab-quiet",
            "name": "Kjelleren K-01",
            "kind": "workshop",
            "escalation": "saturday-only",
        },
    ],
    "rosters": [
        {
            "id": "security-desk",
            "shifts": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "start": "07:00",
                    "end": "17:00",
                    "people": ["guard-day"],
                },
                {
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "start": "17:00",
                    "end": "07:00",
                    "people": ["guard-night"],
                },
            ],
        },
        {
            "id": "saturday",
            "shifts": [
                {"days": ["sat"], "start": "08:00", "end": "16:00", "people": ["guard-day"]}
            ],
        },
    ],
    "escalation_chains": [
        {
            "id": "guards",
            "repeat": 1,
            "repeat_after": "1m",
            "keep_paging": "5m",
            "steps": [
                {"after": "0s", "notify": ["roster:security-desk"], "via": ["sms", "call"]},
                {
                    "after": "2m",
                    "notify": ["roster:security-desk", "supervisor"],
                    "via": ["call"],
                },
                {"after": "5m", "notify": ["person:head-security"], "via": ["call", "sms"]},
            ],
        },
        {
            "id": "saturday-only",
            "steps": [{"after": "0s", "notify": ["roster:saturday"], "via": ["sms"]}],
        },
    ],
    "assessments": [
        {
            "id": "RA-2026-017",
            "person": "ola",
            "locations": ["d1-123"],
            "activity": "Titration with concentrated acids",
            "acute_injury_risk": True,
            "lone_work_allowed": True,
            "requires_jaa": True,
            "checkin_interval": "30m",
            "max_duration": "4h",
            "allowed_hours": {"start": "07:00", "end": "23:00"},
            "valid_from": "2026-09-01",
            "valid_until": "2027-08-31",
            "approved_by": "kari",
        }
    ],
}


def config_dict() -> dict[str, Any]:
    """A fresh deep copy of the base config dict."""
    return copy.deepcopy(_BASE)


def make_config(data: dict[str, Any] | None = None) -> Config:
    """Validate `data` (default: the base dict) into a Config; no environment lookups."""
    return parse_config(config_dict() if data is None else data, source="<test>", env={})


def oslo(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, fold: int = 0
) -> dt.datetime:
    """An Oslo wall-clock instant (fold=1 picks the second 02:xx on the October night)."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=OSLO, fold=fold)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)
