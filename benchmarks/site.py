"""A generated campus: N workers with one device each, a few labs, a guard always on duty.

Everything here is plain config dicts in the CONTRACT §2 shape, written as TOML for a
`jaa-gateway run` subprocess by tests/support/gateway.py's `to_toml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GUARD_PHONE = "+4790000001"
HEAD_PHONE = "+4790000002"
LOCATIONS = 50


def device_id(i: int) -> str:
    return f"d{i:05d}"


def person_id(i: int) -> str:
    return f"w{i:05d}"


def worker_name(i: int) -> str:
    # the SMS names the worker: the device id inside the name lets the probe match SMS to sos
    return f"Worker {device_id(i)}"


def location_id(i: int) -> str:
    return f"lab-{i % LOCATIONS:02d}"


def worker_phone(i: int) -> str:
    return f"+4791{i:06d}"


def campus_config(
    *,
    db_path: Path,
    broker_port: int,
    http_port: int,
    twilio: dict[str, str],
    devices: int,
    checkin_interval: str = "30m",
    checkin_grace: str = "60s",
    max_duration: str = "8h",
    device_timeout: str = "10m",
    steps: list[dict[str, Any]] | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """`devices` workers, each with a device and an assessment (no JAA needed) for their lab."""
    people: list[dict[str, Any]] = [
        {"id": "guard-1", "name": "Guard One", "phone": GUARD_PHONE, "roles": ["guard"]},
        {"id": "head-1", "name": "Head One", "phone": HEAD_PHONE, "roles": ["head", "guard"]},
    ]
    devs: list[dict[str, Any]] = []
    assessments: list[dict[str, Any]] = []
    for i in range(devices):
        people.append(
            {
                "id": person_id(i),
                "name": worker_name(i),
                "phone": worker_phone(i),
                "roles": ["worker"],
                "hse_training_until": "2099-12-31",
            }
        )
        devs.append({"id": device_id(i), "person": person_id(i)})
        assessments.append(
            {
                "id": f"RA-{i:05d}",
                "person": person_id(i),
                "locations": [location_id(i)],
                "activity": "Bench work",
                "acute_injury_risk": False,
                "lone_work_allowed": True,
                "requires_jaa": False,
                "checkin_interval": checkin_interval,
                "max_duration": max_duration,
                "valid_from": "2020-01-01",
                "valid_until": "2099-12-31",
                "approved_by": "head-1",
            }
        )
    locations = [
        {
            "id": f"lab-{n:02d}",
            "name": f"Lab {n:02d}",
            "kind": "lab",
            "doors": [f"door-{n:02d}"],
            "escalation": "bench",
        }
        for n in range(LOCATIONS)
    ]
    return {
        "gateway": {
            "site": "bench",
            "timezone": "Europe/Oslo",
            "database": f"sqlite:///{db_path}",
            "language": "en",
            "default_escalation": "bench",
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "client_id": client_id or f"jaa-bench-{os.getpid()}-{broker_port}",
            "topic_prefix": "jaa",
        },
        "http": {
            "listen": f"127.0.0.1:{http_port}",
            "public_url": "https://jaa.bench.test",
            "api_tokens": {"bench": BENCH_TOKEN},
        },
        "notify": {"driver": "twilio", "call_spacing": "1s"},
        "twilio": {
            "account_sid": twilio["account_sid"],
            "auth_token": twilio["auth_token"],
            "from_number": "+4722334455",
            "api_base": twilio["api_base"],
            "request_timeout": "2s",
        },
        "timing": {
            "prealarm_window": "5s",
            "checkin_grace": checkin_grace,
            "overrun_grace": "5m",
            "device_timeout": device_timeout,
        },
        "people": people,
        "devices": devs,
        "locations": locations,
        "rosters": [
            {
                "id": "desk",
                "shifts": [
                    {
                        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        "start": "00:00",
                        "end": "00:00",
                        "people": ["guard-1"],
                    }
                ],
            }
        ],
        "escalation_chains": [
            {
                "id": "bench",
                "repeat": 0,
                "repeat_after": "1m",
                "keep_paging": "0",
                "steps": steps or [{"after": "0s", "notify": ["roster:desk"], "via": ["sms"]}],
            }
        ],
        "assessments": assessments,
    }


BENCH_TOKEN = "bench-token-0123456789abcdef"
