"""`jaa-gateway check-config`, run as a separate process: exit codes and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.toml"
TWILIO_SECRET = "tw-secret-0123456789abcdef0123456789"
API_SECRET = "api-secret-abcdefghijklmnopqrstuvwx"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "JAA_API_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "jaa_gateway.cli", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SECRETS = {"TWILIO_AUTH_TOKEN": TWILIO_SECRET, "JAA_API_TOKEN": API_SECRET}


def test_example_passes_and_prints_a_summary() -> None:
    res = run_cli("check-config", "config/example.toml", env=SECRETS)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "config/example.toml: OK"
    assert lines[1] == "site gloshaugen (Europe/Oslo), language nb"
    assert "notify twilio" in lines
    assert any(line.startswith("13 people, 4 devices, 5 locations") for line in lines)
    assert res.stderr == ""
    assert TWILIO_SECRET not in res.stdout and API_SECRET not in res.stdout


def test_demo_config_passes() -> None:
    res = run_cli("check-config", "config/demo.toml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("config/demo.toml: OK\n")


def test_missing_env_vars_exit_1_with_one_line_each() -> None:
    res = run_cli("check-config", "config/example.toml")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "config/example.toml: http.api_tokens.facility: "
        "environment variable JAA_API_TOKEN is not set",
        "config/example.toml: twilio.auth_token: environment variable TWILIO_AUTH_TOKEN is not set",
        "config/example.toml: 2 problems",
    ]


def test_missing_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    res = run_cli("check-config", str(path))
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"{path}: (file): cannot read: No such file or directory",
        f"{path}: 1 problem",
    ]


def test_bad_toml_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nsite = "x"\n[gateway]\nsite = "y"\n', encoding="utf-8")
    res = run_cli("check-config", str(path))
    assert res.returncode == 1
    first = res.stderr.splitlines()[0]
    assert first.startswith(f"{path}: (file): not valid TOML: ")
    assert "line 3" in first


def test_no_path_is_a_usage_error() -> None:
    res = run_cli("check-config")
    assert res.returncode == 2
    assert "usage:" in res.stderr


def _edit_block(text: str, start: str, old: str, new: str) -> str:
    """Replace the first `old` after `start` (one [[entry]] of the file), exactly once."""
    at = text.index(start)
    hit = text.index(old, at)
    return text[:hit] + new + text[hit + len(old) :]


def _broken_example() -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    edits = [
        ("[gateway]", 'timezone = "Europe/Oslo"', 'timezone = "Europe/Olso"'),
        ("[gateway]", 'default_escalation = "guards"', 'default_escalation = "guard"'),
        ("[mqtt]", 'topic_prefix = "jaa"', 'topic_prefix = "jaa"\ncolour = "red"'),
        ("[timing]", 'checkin_grace = "60s"', 'checkin_grace = "1 minute"'),
        ('id = "ola"', 'phone = "+4791234567"', 'phone = "+47 912 34 567"'),
        ('id = "anders"', 'roles = ["worker"]', 'roles = ["student"]'),
        ('id = "jaa-0045"', 'id = "jaa-0045"', 'id = "jaa-0044"'),
        ('id = "d1-123"', 'start = "17:00"', 'start = "5pm"'),
        ('id = "vt-verksted"', 'kind = "workshop"', 'kind = "verksted"'),
        ('id = "vt-verksted"', 'doors = ["door-vt-verksted"]', 'doors = ["door-d1-123"]'),
        ('id = "guards-night"', '"guard-sigrid"', '"guard-siri"'),
        ('id = "field"', 'notify = ["person:head-security", "person:hilde"]', "notify = []"),
        ('id = "RA-2026-018"', 'valid_until = "2027-08-31"', 'valid_until = "2027-02-30"'),
        ('id = "RA-2026-022"', 'approved_by = "lars"', 'approved_by = "marit"'),
        ('id = "RA-2026-024"', 'locations = ["d1-123"]', 'locations = ["d1-321"]'),
    ]
    for start, old, new in edits:
        text = _edit_block(text, start, old, new)
    return text


def test_a_broken_example_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(_broken_example(), encoding="utf-8")
    res = run_cli("check-config", str(path), env={"TWILIO_AUTH_TOKEN": TWILIO_SECRET})
    assert res.returncode == 1
    p = str(path)
    expected = [
        f"{p}: http.api_tokens.facility: environment variable JAA_API_TOKEN is not set",
        f"{p}: gateway.timezone: unknown time zone 'Europe/Olso' "
        "(use an IANA name like 'Europe/Oslo')",
        f"{p}: mqtt.colour: unknown key",
        f"{p}: timing.checkin_grace: '1 minute' is not a duration "
        "(use a number of seconds or a string like '45s', '10m', '4h')",
        f"{p}: people[ola].phone: '+47 912 34 567' is not in E.164 form (expected +4791234567)",
        f"{p}: people[anders].roles[0]: 'student' is not allowed "
        "(expected 'worker', 'supervisor', 'head', 'guard' or 'admin')",
        f"{p}: locations[d1-123].after_hours.start: "
        "'5pm' is not a time of day in HH:MM form (like '07:00')",
        f"{p}: locations[vt-verksted].kind: "
        "'verksted' is not allowed (expected 'lab', 'workshop' or 'field')",
        f"{p}: escalation_chains[field].steps[1].notify: "
        "a step needs at least one target (roster:ID, person:ID or supervisor)",
        f"{p}: assessments[RA-2026-018].valid_until: '2027-02-30' is not a valid date",
        # cross-checks, run on everything that did validate
        f"{p}: devices[jaa-0044]: id 'jaa-0044' is used more than once",
        f"{p}: gateway.default_escalation: unknown escalation chain 'guard'",
        f"{p}: rosters[guards-night].shifts[1].people[0]: unknown person 'guard-siri'",
        f"{p}: assessments[RA-2026-022].approved_by: 'marit' may not approve: "
        "not 'silje''s supervisor and not a person with role head",
        f"{p}: assessments[RA-2026-024].locations[0]: unknown location 'd1-321'",
        f"{p}: 15 problems",
    ]
    assert res.stderr.splitlines() == expected
    assert res.stdout == ""
    assert TWILIO_SECRET not in res.stderr


def test_run_with_a_bad_config_prints_the_same_problems_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(_broken_example(), encoding="utf-8")
    env = {"TWILIO_AUTH_TOKEN": TWILIO_SECRET}
    checked = run_cli("check-config", str(path), env=env)
    ran = run_cli("run", "--config", str(path), env=env)
    assert ran.returncode == 1
    problems = checked.stderr.splitlines()[:-1]
    assert problems and all(line in ran.stderr.splitlines() for line in problems)


@pytest.mark.parametrize(
    "body",
    [
        '[twilio]\naccount_sid = "AC0"\nauth_token = "${TWILIO_AUTH_TOKEN}"\nfrom_number = "1"\n',
        '[http]\napi_tokens = ["${JAA_API_TOKEN}", "${JAA_API_TOKEN}"]\n',
        '[http]\napi_tokens = { a = "${TWILIO_AUTH_TOKEN}", b = 1 }\n',
        '[mqtt]\npassword = "${TWILIO_AUTH_TOKEN}"\nport = "x"\n',
    ],
)
def test_secrets_from_the_environment_are_never_printed(tmp_path: Path, body: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[gateway]\nsite = "x"\ndefault_escalation = "x"\ntimezone = "${JAA_API_TOKEN}"\n' + body,
        encoding="utf-8",
    )
    res = run_cli("check-config", str(path), env=SECRETS)
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert TWILIO_SECRET not in out and API_SECRET not in out
    assert TWILIO_SECRET[:12] not in out and API_SECRET[:12] not in out
    assert f"{path}: gateway.timezone: unknown time zone '***'" in out
