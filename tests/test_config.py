"""Config validation: every class of problem, reported together, as ``file: key: why``.

Each test builds a small valid document, breaks one thing, and checks the exact key the problem
is reported at and that the reason says what is wrong. Secrets must never appear in a problem.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaa_gateway
from jaa_gateway.config import (
    Assessment,
    Config,
    ConfigError,
    check_assessment,
    load_config,
    may_approve,
    parse_assessment,
    parse_config,
    parse_duration,
    summary,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.toml"
DEMO = Path(jaa_gateway.__file__).parent / "demo" / "demo.toml"
SRC = "site.toml"
EXAMPLE_ENV = {
    "TWILIO_AUTH_TOKEN": "tw-secret-0123456789abcdef0123456789",
    "JAA_API_TOKEN": "api-secret-abcdefghijklmnopqrstuvwx",
}

_BASE: dict[str, Any] = {
    "gateway": {"site": "test", "timezone": "Europe/Oslo", "default_escalation": "guards"},
    "notify": {"driver": "console"},
    "http": {"api_tokens": ["a-long-enough-api-token"]},
    "people": [
        {
            "id": "ola",
            "name": "Ola Nordmann",
            "phone": "+4791234567",
            "badges": ["04A1B2C3"],
            "supervisor": "kari",
            "hse_training_until": "2027-08-31",
        },
        {"id": "kari", "name": "Kari", "phone": "+4741234567", "roles": ["supervisor"]},
        {"id": "hilde", "name": "Hilde", "phone": "+4792345678", "roles": ["head"]},
        {"id": "nils", "name": "Nils", "phone": "+4748123456"},
        {"id": "guard", "name": "Vakt", "phone": "+4793456789", "roles": ["guard"]},
    ],
    "devices": [{"id": "jaa-0042", "person": "ola"}],
    "locations": [
        {
            "id": "d1-123",
            "name": "Lab",
            "kind": "lab",
            "doors": ["door-d1-123"],
            "escalation": "guards",
            "after_hours": {"start": "17:00", "end": "07:00"},
        }
    ],
    "rosters": [
        {
            "id": "desk",
            "shifts": [
                {"days": ["mon", "sun"], "start": "00:00", "end": "00:00", "people": ["guard"]}
            ],
        }
    ],
    "escalation_chains": [
        {
            "id": "guards",
            "steps": [
                {"after": "0s", "notify": ["roster:desk"], "via": ["sms", "call"]},
                {"after": "2m", "notify": ["supervisor", "person:hilde"], "via": ["call"]},
            ],
        }
    ],
    "assessments": [
        {
            "id": "RA-1",
            "person": "ola",
            "locations": ["d1-123"],
            "activity": "Titration",
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


def base() -> dict[str, Any]:
    return copy.deepcopy(_BASE)


def problems(doc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, SRC, env or {})
    assert info.value.problems, "a ConfigError must list its problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only(doc: dict[str, Any], env: dict[str, str] | None = None) -> str:
    found = problems(doc, env)
    assert len(found) == 1, found
    return found[0]


def item(doc: dict[str, Any], section: str, item_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in doc[section] if e["id"] == item_id)
    return found


# --------------------------------------------------------------------------- good configs


def test_base_is_valid() -> None:
    cfg = parse_config(base(), SRC, {})
    assert cfg.person("ola") is not None and cfg.person("nobody") is None
    assert cfg.chain("guards") is not None
    assert cfg.tz.key == "Europe/Oslo"


def test_example_toml_passes_with_its_env_vars() -> None:
    cfg = load_config(EXAMPLE, env=EXAMPLE_ENV)
    assert cfg.gateway.language == "nb"
    assert cfg.gateway.timezone == "Europe/Oslo"
    assert cfg.notify.driver == "twilio" and cfg.twilio is not None
    assert cfg.twilio.auth_token.get_secret_value() == EXAMPLE_ENV["TWILIO_AUTH_TOKEN"]
    assert cfg.http.token_names() == {EXAMPLE_ENV["JAA_API_TOKEN"]: "facility"}
    assert len(cfg.people) >= 12
    assert len(cfg.locations) == 5
    assert {loc.kind for loc in cfg.locations} == {"lab", "workshop", "field"}
    assert all(loc.after_hours is not None for loc in cfg.locations if loc.kind == "lab")
    guards = [p for p in cfg.people if "guard" in p.roles]
    assert len(guards) >= 2
    assert any("head" in p.roles for p in cfg.people)
    chain = cfg.chain("guards")
    assert chain is not None and len(chain.steps) == 3 and chain.repeat >= 1
    assert chain.steps[-1].notify == ["person:head-security"]
    assert {a.valid_from for a in cfg.assessments} == {dt.date(2026, 9, 1)}
    assert {a.valid_until for a in cfg.assessments} == {dt.date(2027, 8, 31)}
    assert any(not a.lone_work_allowed for a in cfg.assessments)
    assert any(a.checkin_interval is None for a in cfg.assessments)
    assert any(a.acute_injury_risk for a in cfg.assessments)


def test_example_toml_needs_both_secrets_from_the_environment() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, env={})
    assert info.value.problems == [
        f"{EXAMPLE}: http.api_tokens.facility: environment variable JAA_API_TOKEN is not set",
        f"{EXAMPLE}: twilio.auth_token: environment variable TWILIO_AUTH_TOKEN is not set",
    ]


def test_example_rosters_cover_every_hour_of_the_week() -> None:
    cfg = load_config(EXAMPLE, env=EXAMPLE_ENV)
    covered: set[tuple[str, int]] = set()
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    for roster in cfg.rosters:
        for shift in roster.shifts:
            for day in shift.days:
                d = days.index(day)
                start, end = shift.start.hour, shift.end.hour
                length = (end - start) % 24 or 24
                for h in range(start, start + length):
                    covered.add((days[(d + h // 24) % 7], h % 24))
    assert len(covered) == 7 * 24


def test_demo_toml_passes_without_any_env_and_has_short_timings() -> None:
    cfg = load_config(DEMO, env={})
    assert cfg.notify.driver == "console"
    assert cfg.gateway.database.startswith("sqlite:///") and "////" not in cfg.gateway.database
    assert cfg.http.listen == "127.0.0.1:8080"
    assert cfg.timing.prealarm_window == dt.timedelta(seconds=3)
    assert cfg.timing.checkin_grace == dt.timedelta(seconds=3)
    assert cfg.timing.overrun_grace == dt.timedelta(seconds=5)
    assert cfg.timing.device_timeout == dt.timedelta(seconds=20)
    chain = cfg.chain(cfg.gateway.default_escalation)
    assert chain is not None
    assert [s.after.total_seconds() for s in chain.steps] == [0, 4, 8]
    assert chain.steps[0].via == ["sms", "call"]
    roster = cfg.roster("security-desk")
    assert roster is not None
    shift = roster.shifts[0]
    assert len(shift.days) == 7 and shift.start == shift.end == dt.time(0, 0)
    with_assessment = {a.person for a in cfg.assessments}
    students = [p for p in cfg.people if p.badges and p.id not in with_assessment]
    assert students, "the demo needs a badge holder without an assessment"
    chemist = cfg.person_by_badge("04a1b2c3")
    assert chemist is not None and cfg.device_of(chemist.id) is not None
    a = next(a for a in cfg.assessments if a.person == chemist.id)
    assert a.checkin_interval == dt.timedelta(seconds=5)
    assert a.valid_from <= dt.date(2026, 1, 1) and a.valid_until >= dt.date(2030, 12, 31)


def test_config_demo_toml_is_a_relative_symlink_to_the_packaged_one() -> None:
    link = REPO / "config" / "demo.toml"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == DEMO.resolve()


def test_api_tokens_as_a_list_and_as_a_table() -> None:
    doc = base()
    doc["http"]["api_tokens"] = ["first-token-0123456789", "second-token-0123456789"]
    cfg = parse_config(doc, SRC, {})
    assert cfg.http.token_names() == {
        "first-token-0123456789": "token-1",
        "second-token-0123456789": "token-2",
    }
    doc["http"]["api_tokens"] = {"facility": "${TOK}", "ops": "ops-token-0123456789"}
    cfg = parse_config(doc, SRC, {"TOK": "facility-token-0123456789"})
    assert cfg.http.token_names() == {
        "facility-token-0123456789": "facility",
        "ops-token-0123456789": "ops",
    }


def test_env_substitution_inside_a_longer_string() -> None:
    doc = base()
    doc["http"]["public_url"] = "https://${HOST}/jaa"
    cfg = parse_config(doc, SRC, {"HOST": "jaa.example.org"})
    assert cfg.http.public_url == "https://jaa.example.org/jaa"


def test_acute_injury_risk_forces_requires_jaa() -> None:
    doc = base()
    a = doc["assessments"][0]
    a["requires_jaa"] = False
    cfg = parse_config(doc, SRC, {})
    assert cfg.assessments[0].requires_jaa is True
    assert cfg.assessments[0].jaa_required
    del a["requires_jaa"]
    a["acute_injury_risk"] = False
    assert parse_config(doc, SRC, {}).assessments[0].jaa_required is False


def test_lookups_are_not_stale_after_model_copy() -> None:
    cfg = parse_config(base(), SRC, {})
    assert cfg.person("ola") is not None
    other = cfg.model_copy(update={"people": [p for p in cfg.people if p.id != "ola"]})
    assert other.person("ola") is None
    assert cfg.person("ola") is not None
    assert cfg.location_of_door("door-d1-123") is cfg.location("d1-123")
    assert cfg.person_by_phone("+4741234567") is cfg.person("kari")


def test_summary_names_counts_and_never_a_token() -> None:
    cfg = parse_config(base(), SRC, {})
    text = summary(cfg)
    assert "site test (Europe/Oslo)" in text
    assert "5 people, 1 devices, 1 locations" in text
    assert "a-long-enough-api-token" not in text


# --------------------------------------------------------------------------- one test per class


@pytest.mark.parametrize(
    ("edit", "key", "why"),
    [
        (lambda d: item(d, "people", "nils").update(supervisor="ghost"),
         "people[nils].supervisor", "unknown person 'ghost'"),
        (lambda d: d["devices"][0].update(person="ghost"),
         "devices[jaa-0042].person", "unknown person 'ghost'"),
        (lambda d: d["locations"][0].update(escalation="nochain"),
         "locations[d1-123].escalation", "unknown escalation chain 'nochain'"),
        (lambda d: d["gateway"].update(default_escalation="nochain"),
         "gateway.default_escalation", "unknown escalation chain 'nochain'"),
        (lambda d: d["rosters"][0]["shifts"][0]["people"].append("ghost"),
         "rosters[desk].shifts[0].people[1]", "unknown person 'ghost'"),
        (lambda d: d["escalation_chains"][0]["steps"][0]["notify"].append("roster:nope"),
         "escalation_chains[guards].steps[0].notify[1]", "unknown roster 'nope'"),
        (lambda d: d["escalation_chains"][0]["steps"][1]["notify"].append("person:ghost"),
         "escalation_chains[guards].steps[1].notify[2]", "unknown person 'ghost'"),
        (lambda d: d["assessments"][0].update(person="ghost"),
         "assessments[RA-1].person", "unknown person 'ghost'"),
        (lambda d: d["assessments"][0]["locations"].append("z9"),
         "assessments[RA-1].locations[1]", "unknown location 'z9'"),
        (lambda d: d["assessments"][0].update(approved_by="ghost"),
         "assessments[RA-1].approved_by", "unknown person 'ghost'"),
    ],
)  # fmt: skip
def test_unknown_references(edit: Any, key: str, why: str) -> None:
    doc = base()
    edit(doc)
    assert only(doc) == f"{SRC}: {key}: {why}"


@pytest.mark.parametrize(
    ("phone", "why"),
    [
        ("91234567", "'91234567' is not an E.164 phone number (it must start with +"),
        ("004791234567", "'004791234567' is not an E.164 phone number"),
        ("+47 912 34 567", "'+47 912 34 567' is not in E.164 form (expected +4791234567)"),
        ("+4712", "'+4712' is not a valid phone number"),
        ("+4759012345", "'+4759012345' is not a valid phone number"),
        ("+47abc", "'+47abc' is not"),
        (4791234567, "4791234567 is not an E.164 phone number"),
    ],
)
def test_phone_numbers_must_be_valid_e164(phone: object, why: str) -> None:
    doc = base()
    item(doc, "people", "nils")["phone"] = phone
    assert only(doc).startswith(f"{SRC}: people[nils].phone: {why}")


def test_without_notify_the_driver_is_twilio() -> None:
    """A config that forgot [notify] must page through Twilio, not print (issue 11)."""
    doc = base()
    del doc["notify"]
    assert problems(doc) == [
        f"{SRC}: twilio: section [twilio] is required: [notify] driver is 'twilio' unless "
        "driver = 'console' is set (console only prints; nobody is paged)"
    ]
    doc["twilio"] = {
        "account_sid": "AC" + "0" * 32,
        "auth_token": "x" * 32,
        "from_number": "+4740000000",
    }
    cfg = parse_config(doc, source=SRC, env={})
    assert cfg.notify.driver == "twilio"


def test_twilio_from_number_is_checked_too() -> None:
    doc = base()
    doc["twilio"] = {
        "account_sid": "AC" + "0" * 32,
        "auth_token": "x" * 32,
        "from_number": "+4759000000",
    }
    assert only(doc) == f"{SRC}: twilio.from_number: '+4759000000' is not a valid phone number"


def test_approver_who_is_neither_supervisor_nor_head() -> None:
    doc = base()
    doc["assessments"][0]["approved_by"] = "nils"
    assert only(doc) == (
        f"{SRC}: assessments[RA-1].approved_by: 'nils' may not approve: not 'ola''s supervisor "
        "and not a person with role head"
    )


def test_head_may_approve_but_not_their_own_assessment() -> None:
    doc = base()
    doc["assessments"][0]["approved_by"] = "hilde"
    parse_config(doc, SRC, {})  # a head approves anyone's ...
    doc["assessments"][0]["person"] = "hilde"
    assert only(doc) == (
        f"{SRC}: assessments[RA-1].approved_by: a person may not approve their own assessment"
    )
    cfg = parse_config(base(), SRC, {})
    assert may_approve(cfg, "hilde", "ola") and may_approve(cfg, "kari", "ola")
    assert not may_approve(cfg, "nils", "ola")
    assert not may_approve(cfg, "hilde", "hilde")
    assert not may_approve(cfg, "ghost", "ola") and not may_approve(cfg, "kari", "ghost")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("10 minutes", "'10 minutes' is not a duration (use a number of seconds or a string"),
        ("1h30m", "'1h30m' is not a duration"),
        ("-5s", "a duration cannot be negative"),
        (-5, "a duration cannot be negative"),
        ("400d", "a duration cannot be longer than 366 days"),
        (math.inf, "a duration must be a finite number"),
        (math.nan, "a duration must be a finite number"),
        (True, "a duration is not true/false"),
        ([30], "a duration is a number of seconds or a string"),
    ],
)
def test_bad_durations(value: object, why: str) -> None:
    doc = base()
    doc["timing"] = {"checkin_grace": value}
    assert only(doc).startswith(f"{SRC}: timing.checkin_grace: {why}")


def test_bad_duration_in_a_chain_step_and_an_assessment() -> None:
    doc = base()
    doc["escalation_chains"][0]["steps"][1]["after"] = "2 min"
    doc["assessments"][0]["max_duration"] = "four hours"
    found = problems(doc)
    assert found[0].startswith(
        f"{SRC}: escalation_chains[guards].steps[1].after: '2 min' is not a duration"
    )
    assert found[1].startswith(f"{SRC}: assessments[RA-1].max_duration: 'four hours' is not")
    assert len(found) == 2


def test_zero_durations_where_they_make_no_sense() -> None:
    doc = base()
    doc["timing"] = {"device_timeout": "0s"}
    doc["assessments"][0]["checkin_interval"] = 0
    doc["assessments"][0]["max_duration"] = "0m"
    assert problems(doc) == [
        f"{SRC}: timing.device_timeout: must be at least 1 second",
        f"{SRC}: assessments[RA-1].max_duration: must be longer than 0",
        f"{SRC}: assessments[RA-1].checkin_interval: must be at least 1 second",
    ]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Osl0", "../etc/passwd", ""])
def test_unknown_time_zone(zone: str) -> None:
    doc = base()
    doc["gateway"]["timezone"] = zone
    assert only(doc) == (
        f"{SRC}: gateway.timezone: unknown time zone {zone!r} (use an IANA name like 'Europe/Oslo')"
    )


@pytest.mark.parametrize(
    "section", ["people", "devices", "locations", "rosters", "escalation_chains", "assessments"]
)
def test_duplicate_ids(section: str) -> None:
    doc = base()
    twin = copy.deepcopy(doc[section][0])
    doc[section].append(twin)
    dup_id = twin["id"]
    found = problems(doc)
    assert f"{SRC}: {section}[{dup_id}]: id {dup_id!r} is used more than once" in found
    assert found[0] == f"{SRC}: {section}[{dup_id}]: id {dup_id!r} is used more than once"


def test_shared_badge_phone_door_and_device_holder() -> None:
    doc = base()
    item(doc, "people", "nils")["badges"] = ["04a1b2c3"]  # badges are matched case-blind
    item(doc, "people", "nils")["phone"] = "+4791234567"
    doc["devices"].append({"id": "jaa-0043", "person": "ola"})
    doc["locations"].append(
        {"id": "d1-124", "name": "Next door", "kind": "lab", "doors": ["door-d1-123"],
         "escalation": "guards"}
    )  # fmt: skip
    assert problems(doc) == [
        f"{SRC}: people[nils].badges: badge '04a1b2c3' is also 'ola''s",
        f"{SRC}: people[nils].phone: +4791234567 is also 'ola''s number",
        f"{SRC}: devices[jaa-0043].person: 'ola' already holds 'jaa-0042'",
        f"{SRC}: locations[d1-124].doors: door 'door-d1-123' already belongs to 'd1-123'",
    ]


def test_chain_step_with_no_target() -> None:
    doc = base()
    doc["escalation_chains"][0]["steps"][1]["notify"] = []
    assert only(doc) == (
        f"{SRC}: escalation_chains[guards].steps[1].notify: "
        "a step needs at least one target (roster:ID, person:ID or supervisor)"
    )
    del doc["escalation_chains"][0]["steps"][1]["notify"]
    assert only(doc) == f"{SRC}: escalation_chains[guards].steps[1].notify: is required"


def test_chain_step_problems_other_than_targets() -> None:
    doc = base()
    steps = doc["escalation_chains"][0]["steps"]
    steps[0]["after"] = "5m"
    steps[1]["via"] = []
    steps[0]["notify"] = ["guards", "roster:desk"]
    assert problems(doc) == [
        f"{SRC}: escalation_chains[guards].steps[0].notify: "
        "'guards' is not a target (roster:ID, person:ID or supervisor)",
        f"{SRC}: escalation_chains[guards].steps[1].via: "
        "a step needs at least one channel ('sms' or 'call')",
    ]
    steps[1]["via"] = ["call"]
    steps[0]["notify"] = ["roster:desk"]
    assert only(doc) == (
        f"{SRC}: escalation_chains[guards].steps[1].after: steps must be in order of 'after'"
    )
    doc["escalation_chains"][0]["steps"] = []
    assert only(doc) == f"{SRC}: escalation_chains[guards].steps: a chain needs at least one step"


@pytest.mark.parametrize(
    ("path", "extra", "key", "why"),
    [
        ((), "peoples", "peoples", "unknown key (did you mean 'people'?)"),
        (("gateway",), "time_zone", "gateway.time_zone", "unknown key (did you mean 'timezone'?)"),
        (("people", 0), "supervisr", "people[ola].supervisr",
         "unknown key (did you mean 'supervisor'?)"),
        (("locations", 0, "after_hours"), "stop", "locations[d1-123].after_hours.stop",
         "unknown key"),
        (("rosters", 0, "shifts", 0), "day", "rosters[desk].shifts[0].day",
         "unknown key (did you mean 'days'?)"),
        (("escalation_chains", 0, "steps", 1), "channels",
         "escalation_chains[guards].steps[1].channels", "unknown key"),
        (("assessments", 0), "approver", "assessments[RA-1].approver",
         "unknown key (did you mean 'approved_by'?)"),
    ],
)  # fmt: skip
def test_unknown_keys(path: tuple[str | int, ...], extra: str, key: str, why: str) -> None:
    doc = base()
    node: Any = doc
    for part in path:
        node = node[part]
    node[extra] = "x"
    assert only(doc) == f"{SRC}: {key}: {why}"


def test_missing_env_var_names_the_variable_and_the_key() -> None:
    doc = base()
    doc["mqtt"] = {"password": "${MQTT_PASSWORD}"}
    doc["http"]["api_tokens"] = ["${TOKEN_A}", "literal-token-0123456789"]
    doc["notify"] = {"driver": "twilio"}
    doc["twilio"] = {
        "account_sid": "AC" + "0" * 32,
        "auth_token": "${TWILIO_AUTH_TOKEN}",
        "from_number": "+4740000000",
    }
    assert problems(doc, {"TOKEN_A": "token-a-0123456789abcdef"}) == [
        f"{SRC}: mqtt.password: environment variable MQTT_PASSWORD is not set",
        f"{SRC}: twilio.auth_token: environment variable TWILIO_AUTH_TOKEN is not set",
    ]


def test_missing_env_var_in_a_list_entry_is_named_by_id() -> None:
    doc = base()
    item(doc, "people", "nils")["phone"] = "${NILS_PHONE}"
    assert only(doc) == f"{SRC}: people[nils].phone: environment variable NILS_PHONE is not set"
    parse_config(doc, SRC, {"NILS_PHONE": "+4748123456"})


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nsite = "x"\ntimezone = Europe/Oslo\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [line] = info.value.problems
    assert line.startswith(f"{path}: (file): not valid TOML: ")
    assert "line 3" in line


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[gateway]\nsite = "Gløshaugen"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [f"{path}: (file): not UTF-8 text"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [f"{path}: (file): cannot read: No such file or directory"]


def test_load_config_reports_the_file_name_on_every_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[gateway]\nsite = "x"\ndefault_escalation = "none"\ntimezone = "Nowhere/Land"\n'
        '[notify]\ndriver = "console"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [
        f"{path}: gateway.timezone: unknown time zone 'Nowhere/Land' "
        "(use an IANA name like 'Europe/Oslo')",
        f"{path}: gateway.default_escalation: unknown escalation chain 'none'",
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("7:00", "'7:00' is not a time of day in HH:MM form (like '07:00')"),
        ("24:00", "'24:00' is not a valid time of day (00:00 to 23:59)"),
        ("12:60", "'12:60' is not a valid time of day (00:00 to 23:59)"),
        ("0700", "'0700' is not a time of day in HH:MM form (like '07:00')"),
        (700, "700 is not a time of day in HH:MM form (like '07:00')"),
        (dt.time(7, 0, 30), "07:00:30 is not a time of day in HH:MM form"),
    ],
)
def test_bad_hhmm(value: object, why: str) -> None:
    doc = base()
    doc["locations"][0]["after_hours"]["end"] = value
    assert only(doc) == f"{SRC}: locations[d1-123].after_hours.end: {why}"
    doc = base()
    doc["rosters"][0]["shifts"][0]["start"] = value
    assert only(doc) == f"{SRC}: rosters[desk].shifts[0].start: {why}"


def test_native_toml_times_and_dates_are_accepted() -> None:
    text = (
        "[gateway]\nsite = 'x'\ndefault_escalation = 'c'\n"
        "[notify]\ndriver = 'console'\n"
        "[[escalation_chains]]\nid = 'c'\nsteps = [{ notify = ['supervisor'], via = ['sms'] }]\n"
        "[[locations]]\nid = 'l'\nname = 'L'\nkind = 'lab'\nescalation = 'c'\n"
        "after_hours = { start = 17:00:00, end = 07:00:00 }\n"
        "[[people]]\nid = 'p'\nname = 'P'\nphone = '+4791234567'\n"
        "hse_training_until = 2027-08-31\n"
    )
    cfg = parse_config(tomllib.loads(text), SRC, {})
    loc = cfg.location("l")
    assert loc is not None and loc.after_hours is not None
    assert loc.after_hours.start == dt.time(17, 0)
    person = cfg.person("p")
    assert person is not None and person.hse_training_until == dt.date(2027, 8, 31)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("\x00", "must not contain control characters"),
        ("Titration\x1b[2J", "must not contain control characters"),
        ("   ", "must not be blank"),
    ],
)
def test_unreadable_activity(value: str, why: str) -> None:
    doc = base()
    doc["assessments"][0]["activity"] = value
    assert only(doc) == f"{SRC}: assessments[RA-1].activity: {why}"


def test_activity_may_span_lines() -> None:
    doc = base()
    doc["assessments"][0]["activity"] = "Titration\n\twith HCl"
    assert parse_config(doc, SRC, {}).assessments[0].activity == "Titration\n\twith HCl"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2027-02-30", "'2027-02-30' is not a valid date"),
        ("31.08.2027", "'31.08.2027' is not a date in YYYY-MM-DD form"),
        ("20270831", "'20270831' is not a date in YYYY-MM-DD form"),
        (dt.datetime(2027, 8, 31, 12, 0), "expected a date (YYYY-MM-DD), not a date and time"),
    ],
)
def test_bad_dates(value: object, why: str) -> None:
    doc = base()
    item(doc, "people", "ola")["hse_training_until"] = value
    assert only(doc) == f"{SRC}: people[ola].hse_training_until: {why}"


def test_valid_until_before_valid_from() -> None:
    doc = base()
    doc["assessments"][0]["valid_until"] = "2026-08-31"
    assert only(doc) == f"{SRC}: assessments[RA-1].valid_until: is before valid_from"


@pytest.mark.parametrize(
    ("edit", "key", "why"),
    [
        (lambda d: item(d, "people", "nils").update(roles=["worker", "boss"]),
         "people[nils].roles[1]",
         "'boss' is not allowed (expected 'worker', 'supervisor', 'head', 'guard' or 'admin')"),
        (lambda d: d["locations"][0].update(kind="office"),
         "locations[d1-123].kind",
         "'office' is not allowed (expected 'lab', 'workshop' or 'field')"),
        (lambda d: d["rosters"][0]["shifts"][0].update(days=["mon", "monday"]),
         "rosters[desk].shifts[0].days[1]",
         "'monday' is not allowed (expected 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun')"),
        (lambda d: d["escalation_chains"][0]["steps"][0].update(via=["sms", "email"]),
         "escalation_chains[guards].steps[0].via[1]",
         "'email' is not allowed (expected 'sms' or 'call')"),
        (lambda d: d["gateway"].update(language="de"),
         "gateway.language", "'de' is not allowed (expected 'nb' or 'en')"),
        (lambda d: d.update(notify={"driver": "pager"}),
         "notify.driver", "'pager' is not allowed (expected 'twilio' or 'console')"),
    ],
)  # fmt: skip
def test_unknown_role_kind_day_channel(edit: Any, key: str, why: str) -> None:
    doc = base()
    edit(doc)
    assert only(doc) == f"{SRC}: {key}: {why}"


@pytest.mark.parametrize(
    ("tokens", "key", "why"),
    [
        ("single-token-0123456789", "http.api_tokens",
         "should be a list of tokens or a table of name = token"),
        (["good-token-0123456789", "short"], "http.api_tokens[1]",
         "an API token must be at least 16 characters long (value not shown)"),
        (["good-token-0123456789", 42], "http.api_tokens[1]", "should be a string"),
        ({"facility": "short"}, "http.api_tokens.facility",
         "an API token must be at least 16 characters long (value not shown)"),
        ({"table": "short"}, "http.api_tokens.table",
         "an API token must be at least 16 characters long (value not shown)"),
        ({"ops": ["x"]}, "http.api_tokens.ops", "should be a string"),
        (["same-token-0123456789", "same-token-0123456789"], "http.api_tokens[1]",
         "the same token as http.api_tokens[0]"),
        ({"a": "same-token-0123456789", "b": "same-token-0123456789"}, "http.api_tokens.b",
         "the same token as http.api_tokens.a"),
    ],
)  # fmt: skip
def test_api_token_problems_are_located_at_the_entry(tokens: object, key: str, why: str) -> None:
    doc = base()
    doc["http"]["api_tokens"] = tokens
    assert only(doc) == f"{SRC}: {key}: {why}"


def test_missing_required_keys_and_wrong_shapes() -> None:
    doc = base()
    del doc["gateway"]["site"]
    del item(doc, "people", "nils")["name"]
    doc["locations"][0]["after_hours"] = "17:00-07:00"
    doc["assessments"][0]["lone_work_allowed"] = "yes"
    doc["devices"] = {"id": "jaa-0042", "person": "ola"}
    assert problems(doc) == [
        f"{SRC}: gateway.site: is required",
        f"{SRC}: people[nils].name: is required",
        f"{SRC}: devices: should be an array of tables ([[devices]] entries)",
        f"{SRC}: locations[d1-123].after_hours: should be a table",
        f"{SRC}: assessments[RA-1].lone_work_allowed: should be true or false",
    ]


def test_bad_ids_and_twilio_section() -> None:
    doc = base()
    item(doc, "people", "nils")["id"] = "nils hansen"
    doc["notify"] = {"driver": "twilio"}
    found = problems(doc)
    assert found == [
        f"{SRC}: people[nils hansen].id: is not a valid id "
        "(letters, digits and . _ : -, starting with a letter or digit)",
        f"{SRC}: twilio: section [twilio] is required: [notify] driver is 'twilio' unless "
        "driver = 'console' is set (console only prints; nobody is paged)",
    ]
    doc = base()
    doc["twilio"] = {"account_sid": "XX123", "auth_token": "", "from_number": "+4740000000"}
    assert problems(doc) == [
        f"{SRC}: twilio.account_sid: should be 'AC' followed by 32 hexadecimal digits",
        f"{SRC}: twilio.auth_token: must not be empty",
    ]


# --------------------------------------------------------------------------- all at once


def test_several_problems_come_back_together() -> None:
    doc = base()
    doc["gateway"]["timezone"] = "Oslo"
    item(doc, "people", "ola")["phone"] = "91234567"
    doc["locations"][0]["kind"] = "office"
    doc["escalation_chains"][0]["steps"][0]["notify"] = ["roster:nope"]
    doc["assessments"][0]["approved_by"] = "nils"
    doc["extra"] = {}
    found = problems(doc)
    keys = [line.split(": ")[1] for line in found]
    assert keys == [
        "gateway.timezone",
        "people[ola].phone",
        "locations[d1-123].kind",
        "extra",
        "escalation_chains[guards].steps[0].notify[0]",
    ], found
    # ola failed validation, so whether nils may approve her assessment cannot be judged
    assert not any("may not approve" in line for line in found)


def test_cross_checks_run_even_when_other_sections_have_type_errors() -> None:
    doc = base()
    doc["gateway"]["timezone"] = 12
    doc["devices"].append({"id": "jaa-0099", "person": "ghost"})
    doc["assessments"][0]["approved_by"] = "nils"
    assert problems(doc) == [
        f"{SRC}: gateway.timezone: should be a string",
        f"{SRC}: devices[jaa-0099].person: unknown person 'ghost'",
        f"{SRC}: assessments[RA-1].approved_by: 'nils' may not approve: not 'ola''s supervisor "
        "and not a person with role head",
    ]


def test_an_invalid_entry_still_counts_as_existing_for_references() -> None:
    doc = base()
    item(doc, "people", "kari")["phone"] = "555"
    # ola's supervisor and RA-1's approver are kari: she exists, only her phone is wrong
    assert only(doc).startswith(f"{SRC}: people[kari].phone: '555' is not an E.164")


def test_a_section_of_the_wrong_shape_makes_no_false_unknown_references() -> None:
    doc = base()
    doc["people"] = {"ola": {}}
    assert problems(doc) == [f"{SRC}: people: should be an array of tables ([[people]] entries)"]


# --------------------------------------------------------------------------- secrets


SECRET = "s3cr3t-V4lue-Never-Shown"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(twilio={"account_sid": "bad", "auth_token": SECRET,
                                   "from_number": "+4740000000"}),
        lambda d: d.update(twilio={"account_sid": SECRET, "auth_token": SECRET,
                                   "from_number": "x"}),
        lambda d: d.update(mqtt={"password": SECRET, "port": "x"}),
        lambda d: d["http"].update(api_tokens=[SECRET[:10]]),
        lambda d: d["http"].update(api_tokens={"facility": SECRET[:10]}),
        lambda d: d["http"].update(api_tokens=SECRET),
        lambda d: d["http"].update(api_tokens=[SECRET, SECRET]),
        lambda d: d["http"].update(public_url=f"ftp://user:{SECRET}@example.org"),
        lambda d: d["gateway"].update(database=f"mysql://u:{SECRET}@db/jaa"),
        lambda d: d["gateway"].update(timezone="${SECRET_ENV}"),
        lambda d: item(d, "people", "nils").update(phone="${SECRET_ENV}"),
        lambda d: d["locations"][0].update(kind="${SECRET_ENV}"),
    ],
)  # fmt: skip
def test_secrets_are_never_echoed(edit: Any) -> None:
    doc = base()
    edit(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc, SRC, {"SECRET_ENV": SECRET})
    text = "\n".join(info.value.problems) + str(info.value) + repr(info.value)
    assert info.value.problems
    assert SECRET not in text and SECRET[:10] not in text


def test_secrets_are_masked_in_the_config_repr() -> None:
    doc = base()
    doc["twilio"] = {"account_sid": "AC" + "0" * 32, "auth_token": SECRET,
                     "from_number": "+4740000000"}  # fmt: skip
    doc["http"]["api_tokens"] = {"facility": SECRET}
    cfg = parse_config(doc, SRC, {})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and SECRET not in summary(cfg)


# --------------------------------------------------------------------------- API bodies


def test_parse_assessment_for_the_http_api() -> None:
    cfg = parse_config(base(), SRC, {})
    body = dict(_BASE["assessments"][0], id="RA-2", approved_by="hilde")
    a = parse_assessment(cfg, body)
    assert isinstance(a, Assessment) and a.id == "RA-2"
    with pytest.raises(ConfigError) as info:
        parse_assessment(cfg, dict(body, approved_by="nils", locations=["d1-123", "x"]))
    assert info.value.problems == [
        "locations[1]: unknown location 'x'",
        "approved_by: 'nils' may not approve: not 'ola''s supervisor"
        " and not a person with role head",
    ]
    with pytest.raises(ConfigError) as info:
        parse_assessment(cfg, dict(body, max_duration="long", acute_injury_risk=1, bogus=True))
    assert info.value.problems == [
        "acute_injury_risk: should be true or false",
        "max_duration: 'long' is not a duration (use a number of seconds or a string like "
        "'45s', '10m', '4h')",
        "bogus: unknown key",
    ]
    a = Assessment.model_validate(dict(body, person="ghost"))
    assert check_assessment(cfg, a, "x") == [("x.person", "unknown person 'ghost'")]


# --------------------------------------------------------------------------- durations


@given(
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("", 1)]),
)
def test_parse_duration_units(n: int, unit: tuple[str, int]) -> None:
    suffix, size = unit
    if n * size > 366 * 86400:
        with pytest.raises(ValueError, match="longer than 366 days"):
            parse_duration(f"{n}{suffix}")
    else:
        assert parse_duration(f"{n}{suffix}") == dt.timedelta(seconds=n * size)
        assert parse_duration(n * size) == dt.timedelta(seconds=n * size)


@given(st.one_of(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(), st.booleans(), st.none()))  # fmt: skip
def test_parse_duration_never_fails_with_anything_but_value_error(value: object) -> None:
    try:
        td = parse_duration(value)
    except ValueError:
        return
    assert dt.timedelta(0) <= td <= dt.timedelta(days=366)


def test_config_model_is_frozen() -> None:
    cfg = parse_config(base(), SRC, {})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen
        cfg.people[0].name = "Changed"  # type: ignore[misc]
    assert isinstance(cfg, Config)


def test_an_assessment_dumped_as_json_validates_again() -> None:
    cfg = parse_config(base(), SRC, {})
    a = cfg.assessments[0]
    dumped = a.model_dump(mode="json")
    assert dumped["checkin_interval"] == 1800
    assert dumped["allowed_hours"] == {"start": "07:00", "end": "23:00"}
    assert Assessment.model_validate(dumped) == a


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        out = [prefix] if prefix else []
        for k, v in node.items():
            out.extend(_leaf_paths(v, (*prefix, k)))
        return out
    if isinstance(node, list):
        out = [prefix]
        for i, v in enumerate(node):
            out.extend(_leaf_paths(v, (*prefix, i)))
        return out
    return [prefix]


_PATHS = _leaf_paths(_BASE)
_TOML_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["ola", "guards", "roster:desk", "17:00", "2027-01-01", "5m", "${X}"]),
        st.dates(),
        st.times(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.lists(st.tuples(st.sampled_from(_PATHS), _TOML_VALUES), min_size=1, max_size=4))
def test_any_edit_gives_a_config_or_a_config_error(edits: list[tuple[Any, object]]) -> None:
    doc = base()
    for path, value in edits:
        node: Any = doc
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit changed the shape under this path
    try:
        cfg = parse_config(doc, SRC, {})
    except ConfigError as exc:
        assert exc.problems
        assert all(line.startswith(f"{SRC}: ") and line.count(": ") >= 2 for line in exc.problems)
    else:
        assert isinstance(cfg, Config)


def test_every_problem_is_one_line_even_with_control_characters_in_keys() -> None:
    doc = base()
    item(doc, "people", "nils")["id"] = "nils\nhansen"
    doc["gateway"]["bad\nkey"] = 1
    found = problems(doc)
    assert all("\n" not in line for line in found)
    assert found[0] == f"{SRC}: gateway.bad\\nkey: unknown key"
    assert found[1].startswith(f"{SRC}: people[3].id: is not a valid id")


def test_lookups_leave_equal_configs_equal() -> None:
    a = parse_config(base(), SRC, {})
    b = parse_config(base(), SRC, {})
    assert a.person("ola") is not None and a.chain("guards") is not None
    assert a == b
    assert a.model_copy(update={"devices": []}) != b
