"""Configuration: TOML -> frozen pydantic models, with cross-checks.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` are lines of the
form ``file: key: why`` -- every problem at once, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

# --------------------------------------------------------------------------- value types

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_DURATION = dt.timedelta(days=366)


def parse_duration(value: object) -> dt.timedelta:
    """Parse ``"45s"``, ``"10m"``, ``"4h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, dt.timedelta):
        td = value
    elif isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '45s', '10m', '4h'")
    elif isinstance(value, int | float):
        td = dt.timedelta(seconds=float(value))
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(
                f"{value!r} is not a duration (use a number of seconds or '45s', '10m', '4h')"
            )
        td = dt.timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    else:
        raise ValueError("a duration is a number of seconds or a string like '45s', '10m', '4h'")
    if td < dt.timedelta(0):
        raise ValueError("a duration cannot be negative")
    if td > MAX_DURATION:
        raise ValueError("a duration cannot be longer than 366 days")
    return td


def format_duration(td: dt.timedelta) -> str:
    secs = td.total_seconds()
    for unit, size in (("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s"


def _parse_hhmm(value: object) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        raise ValueError(f"{value!r} is not a time of day in HH:MM form")
    hh, mm = int(value[:2]), int(value[3:])
    if hh > 23 or mm > 59:
        raise ValueError(f"{value!r} is not a valid time of day")
    return dt.time(hh, mm)


def _parse_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ValueError("expected a date (YYYY-MM-DD), not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a date in YYYY-MM-DD form")


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]
HHMM = Annotated[dt.time, BeforeValidator(_parse_hhmm)]
Date = Annotated[dt.date, BeforeValidator(_parse_date)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


def normalise_phone(value: str) -> str:
    """Return the E.164 form of a phone number, or raise ValueError."""
    if not isinstance(value, str) or not value.startswith("+"):
        raise ValueError(f"{value!r} is not an E.164 phone number (it must start with +)")
    try:
        num = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{value!r} is not an E.164 phone number ({exc})") from None
    if not phonenumbers.is_valid_number(num):
        raise ValueError(f"{value!r} is not a valid phone number")
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if e164 != value:
        raise ValueError(f"{value!r} is not in E.164 form (expected {e164})")
    return e164


Phone = Annotated[str, BeforeValidator(normalise_phone)]

Role = Literal["worker", "supervisor", "head", "guard", "admin"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Channel = Literal["sms", "call"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Window(_Frozen):
    """An HH:MM window in the site's zone; it may cross midnight; start == end: all day."""

    start: HHMM
    end: HHMM


# --------------------------------------------------------------------------- sections


class GatewaySection(_Frozen):
    site: Id
    timezone: str = "Europe/Oslo"
    database: str = "sqlite:///jaa-gateway.db"
    language: Literal["nb", "en"] = "nb"
    default_escalation: Id

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("database")
    @classmethod
    def _db(cls, v: str) -> str:
        if not re.match(r"^(sqlite(\+aiosqlite)?:///|postgresql(\+asyncpg)?://)", v):
            raise ValueError("database must be a sqlite:/// or postgresql:// URL")
        return v


class MqttSection(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="jaa-gateway", min_length=1, max_length=64)
    topic_prefix: str = Field(default="jaa", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class HttpSection(_Frozen):
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    api_tokens: list[SecretStr] | dict[str, SecretStr] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("api_tokens")
    @classmethod
    def _tokens(
        cls, v: list[SecretStr] | dict[str, SecretStr]
    ) -> list[SecretStr] | dict[str, SecretStr]:
        values = v.values() if isinstance(v, dict) else v
        for tok in values:
            if len(tok.get_secret_value()) < 16:
                raise ValueError("an API token must be at least 16 characters long")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def token_names(self) -> dict[str, str]:
        """Map each token's secret to its name (for the audit); list tokens are token-1..n."""
        if isinstance(self.api_tokens, dict):
            return {tok.get_secret_value(): name for name, tok in self.api_tokens.items()}
        return {tok.get_secret_value(): f"token-{i + 1}" for i, tok in enumerate(self.api_tokens)}


class NotifySection(_Frozen):
    driver: Literal["twilio", "console"] = "console"
    # how long a notification may keep failing transiently before it is given up (audited)
    retry_for: Duration = dt.timedelta(minutes=10)
    # at most one call per number this often (caller-ID spam flagging)
    call_spacing: Duration = dt.timedelta(seconds=30)


class TwilioSection(_Frozen):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    from_number: Phone
    api_base: str = "https://api.twilio.com"
    request_timeout: Duration = dt.timedelta(seconds=10)

    @field_validator("api_base")
    @classmethod
    def _base(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+$", v.rstrip("/")):
            raise ValueError(f"{v!r} is not a base URL like https://api.twilio.com")
        return v.rstrip("/")


class TimingSection(_Frozen):
    prealarm_window: Duration = dt.timedelta(seconds=30)
    checkin_grace: Duration = dt.timedelta(seconds=60)
    overrun_grace: Duration = dt.timedelta(minutes=5)
    device_timeout: Duration = dt.timedelta(seconds=120)


class Person(_Frozen):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    phone: Phone
    badges: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=lambda: ["worker"])
    supervisor: Id | None = None
    hse_training_until: Date | None = None


class Device(_Frozen):
    id: Id
    person: Id


class Location(_Frozen):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["lab", "workshop", "field"]
    doors: list[Id] = Field(default_factory=list)
    escalation: Id
    after_hours: Window | None = None


class Shift(_Frozen):
    days: list[Day] = Field(min_length=1)
    start: HHMM
    end: HHMM
    people: list[Id] = Field(min_length=1)


class Roster(_Frozen):
    id: Id
    shifts: list[Shift] = Field(min_length=1)


_TARGET_RE = re.compile(r"^(roster:[A-Za-z0-9][A-Za-z0-9._:-]*|person:[A-Za-z0-9][A-Za-z0-9._:-]*|supervisor)$")


class Step(_Frozen):
    after: Duration = dt.timedelta(0)
    notify: list[str] = Field(min_length=1)
    via: list[Channel] = Field(min_length=1)

    @field_validator("notify")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TARGET_RE.match(t):
                raise ValueError(f"{t!r} is not a target (roster:ID, person:ID or supervisor)")
        return v


class Chain(_Frozen):
    id: Id
    repeat: int = Field(default=0, ge=0, le=100)
    repeat_after: Duration = dt.timedelta(minutes=1)
    keep_paging: Duration = dt.timedelta(minutes=5)
    steps: list[Step] = Field(min_length=1)


class Assessment(_Frozen):
    """A risk assessment; the same model validates config entries and API bodies."""

    id: Id
    person: Id
    locations: list[Id] = Field(min_length=1)
    activity: str = Field(min_length=1, max_length=500)
    acute_injury_risk: bool
    lone_work_allowed: bool
    requires_jaa: bool
    checkin_interval: Duration | None = None
    max_duration: Duration
    allowed_hours: Window | None = None
    valid_from: Date
    valid_until: Date
    approved_by: Id

    @property
    def jaa_required(self) -> bool:
        """acute_injury_risk forces a JAA, whatever requires_jaa says (guideline)."""
        return self.requires_jaa or self.acute_injury_risk


class Config(_Frozen):
    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    http: HttpSection = HttpSection()
    notify: NotifySection = NotifySection()
    twilio: TwilioSection | None = None
    timing: TimingSection = TimingSection()
    people: list[Person] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    locations: list[Location] = Field(default_factory=list)
    rosters: list[Roster] = Field(default_factory=list)
    escalation_chains: list[Chain] = Field(default_factory=list)
    assessments: list[Assessment] = Field(default_factory=list)

    # ---- look-ups (built lazily; the model is frozen so they never go stale)
    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.gateway.timezone)

    def person(self, pid: str) -> Person | None:
        return _index(self, "people").get(pid)  # type: ignore[return-value]

    def device(self, did: str) -> Device | None:
        return _index(self, "devices").get(did)  # type: ignore[return-value]

    def location(self, lid: str) -> Location | None:
        return _index(self, "locations").get(lid)  # type: ignore[return-value]

    def roster(self, rid: str) -> Roster | None:
        return _index(self, "rosters").get(rid)  # type: ignore[return-value]

    def chain(self, cid: str) -> Chain | None:
        return _index(self, "escalation_chains").get(cid)  # type: ignore[return-value]

    def person_by_badge(self, badge: str) -> Person | None:
        key = badge.upper()
        for p in self.people:
            if any(b.upper() == key for b in p.badges):
                return p
        return None

    def person_by_phone(self, phone: str) -> Person | None:
        for p in self.people:
            if p.phone == phone:
                return p
        return None

    def device_of(self, person_id: str) -> Device | None:
        for d in self.devices:
            if d.person == person_id:
                return d
        return None

    def location_of_door(self, door_id: str) -> Location | None:
        for loc in self.locations:
            if door_id in loc.doors:
                return loc
        return None


_INDEX_CACHE: dict[tuple[int, str], dict[str, BaseModel]] = {}


def _index(cfg: Config, attr: str) -> dict[str, BaseModel]:
    key = (id(cfg), attr)
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        idx = {item.id: item for item in getattr(cfg, attr)}
        _INDEX_CACHE[key] = idx
    return idx


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config with problems; `problems` lists them as ``file: key: why``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(
    node: Any, env: Mapping[str, str], path: str, problems: list[tuple[str, str]]
) -> Any:
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                problems.append((path, f"environment variable {name} is not set"))
                return ""
            return env[name]

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {
            k: _substitute_env(v, env, f"{path}.{k}" if path else k, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    return node


def _loc_to_key(loc: Iterable[int | str], data: Any) -> str:
    """Turn a pydantic error location into ``people[ola].phone`` (id when known)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and 0 <= item < len(node):
                entry = node[item]
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    label = entry["id"]
                node = entry
            else:
                node = None
            parts.append(f"[{label}]")
        else:
            # skip pydantic's union-branch labels such as 'list[...]' / 'function-after[...]'
            if "[" in item or item in ("function-before", "function-after"):
                continue
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or "(top level)"


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    env_problems: list[tuple[str, str]] = []
    data = _substitute_env(dict(data), env, "", env_problems)
    problems = [f"{source}: {k}: {why}" for k, why in env_problems]
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        seen: set[str] = set()
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            line = f"{source}: {_loc_to_key(err['loc'], data)}: {msg}"
            if line not in seen:
                seen.add(line)
                problems.append(line)
        raise ConfigError(problems) from None
    problems.extend(f"{source}: {k}: {why}" for k, why in cross_check(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: (file): cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: (file): not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: (file): not valid TOML: {exc}"]) from None
    return parse_config(data, str(p), env)


# --------------------------------------------------------------------------- cross-checks


def may_approve(cfg: Config, approver_id: str, worker_id: str) -> bool:
    """The worker's supervisor, or a person with role head, may approve an assessment."""
    approver = cfg.person(approver_id)
    worker = cfg.person(worker_id)
    if approver is None or worker is None:
        return False
    return "head" in approver.roles or worker.supervisor == approver.id


def check_assessment(cfg: Config, a: Assessment, key: str) -> list[tuple[str, str]]:
    """Reference checks for one assessment (used for config entries and API bodies)."""
    out: list[tuple[str, str]] = []
    if cfg.person(a.person) is None:
        out.append((f"{key}.person", f"unknown person {a.person!r}"))
    for i, lid in enumerate(a.locations):
        if cfg.location(lid) is None:
            out.append((f"{key}.locations[{i}]", f"unknown location {lid!r}"))
    if cfg.person(a.approved_by) is None:
        out.append((f"{key}.approved_by", f"unknown person {a.approved_by!r}"))
    elif cfg.person(a.person) is not None and not may_approve(cfg, a.approved_by, a.person):
        out.append(
            (
                f"{key}.approved_by",
                f"{a.approved_by!r} may not approve: not {a.person!r}'s supervisor "
                "and not a person with role head",
            )
        )
    elif a.approved_by == a.person:
        out.append((f"{key}.approved_by", "a person may not approve their own assessment"))
    if a.valid_until < a.valid_from:
        out.append((f"{key}.valid_until", "is before valid_from"))
    if a.max_duration <= dt.timedelta(0):
        out.append((f"{key}.max_duration", "must be longer than 0"))
    if a.checkin_interval is not None and a.checkin_interval < dt.timedelta(seconds=1):
        out.append((f"{key}.checkin_interval", "must be at least 1 second"))
    if a.acute_injury_risk and not a.requires_jaa:
        out.append(
            (f"{key}.requires_jaa", "must be true when acute_injury_risk is true (guideline)")
        )
    return out


def _dupes(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for i in items:
        if i in seen and i not in dup:
            dup.append(i)
        seen.add(i)
    return dup


def cross_check(cfg: Config) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for section in ("people", "devices", "locations", "rosters", "escalation_chains", "assessments"):
        for d in _dupes(item.id for item in getattr(cfg, section)):
            out.append((f"{section}[{d}]", f"id {d!r} is used more than once"))

    if cfg.notify.driver == "twilio" and cfg.twilio is None:
        out.append(("twilio", "section [twilio] is required when notify.driver = 'twilio'"))
    if cfg.chain(cfg.gateway.default_escalation) is None:
        out.append(
            (
                "gateway.default_escalation",
                f"unknown escalation chain {cfg.gateway.default_escalation!r}",
            )
        )

    badge_owner: dict[str, str] = {}
    phone_owner: dict[str, str] = {}
    for p in cfg.people:
        key = f"people[{p.id}]"
        if p.supervisor is not None:
            if cfg.person(p.supervisor) is None:
                out.append((f"{key}.supervisor", f"unknown person {p.supervisor!r}"))
            elif p.supervisor == p.id:
                out.append((f"{key}.supervisor", "a person cannot supervise themselves"))
        for b in p.badges:
            other = badge_owner.setdefault(b.upper(), p.id)
            if other != p.id:
                out.append((f"{key}.badges", f"badge {b!r} is also {other!r}'s"))
        other = phone_owner.setdefault(p.phone, p.id)
        if other != p.id:
            # SMS replies are matched to people by number: two people on one number is ambiguous
            out.append((f"{key}.phone", f"{p.phone} is also {other!r}'s number"))

    holder: dict[str, str] = {}
    for d in cfg.devices:
        if cfg.person(d.person) is None:
            out.append((f"devices[{d.id}].person", f"unknown person {d.person!r}"))
        other = holder.setdefault(d.person, d.id)
        if other != d.id:
            out.append((f"devices[{d.id}].person", f"{d.person!r} already holds {other!r}"))

    door_owner: dict[str, str] = {}
    for loc in cfg.locations:
        key = f"locations[{loc.id}]"
        if cfg.chain(loc.escalation) is None:
            out.append((f"{key}.escalation", f"unknown escalation chain {loc.escalation!r}"))
        for door in loc.doors:
            other = door_owner.setdefault(door, loc.id)
            if other != loc.id:
                out.append((f"{key}.doors", f"door {door!r} already belongs to {other!r}"))

    for r in cfg.rosters:
        for si, sh in enumerate(r.shifts):
            for pi, pid in enumerate(sh.people):
                if cfg.person(pid) is None:
                    out.append(
                        (f"rosters[{r.id}].shifts[{si}].people[{pi}]", f"unknown person {pid!r}")
                    )

    for c in cfg.escalation_chains:
        prev = dt.timedelta(0)
        for si, st in enumerate(c.steps):
            skey = f"escalation_chains[{c.id}].steps[{si}]"
            if st.after < prev:
                out.append((f"{skey}.after", "steps must be in order of 'after'"))
            prev = st.after
            for ti, t in enumerate(st.notify):
                kind, _, ref = t.partition(":")
                if kind == "roster" and cfg.roster(ref) is None:
                    out.append((f"{skey}.notify[{ti}]", f"unknown roster {ref!r}"))
                if kind == "person" and cfg.person(ref) is None:
                    out.append((f"{skey}.notify[{ti}]", f"unknown person {ref!r}"))
        if c.keep_paging != dt.timedelta(0) and c.keep_paging < dt.timedelta(seconds=1):
            out.append((f"escalation_chains[{c.id}].keep_paging", "must be 0 or at least 1s"))

    for a in cfg.assessments:
        out.extend(check_assessment(cfg, a, f"assessments[{a.id}]"))
    return out


def summary(cfg: Config) -> str:
    """The short summary check-config prints for a good config."""
    tokens = cfg.http.api_tokens
    return "\n".join(
        [
            f"site {cfg.gateway.site} ({cfg.gateway.timezone}), language {cfg.gateway.language}",
            f"mqtt {cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.topic_prefix!r}"
            f" client {cfg.mqtt.client_id!r}",
            f"http {cfg.http.listen}, public {cfg.http.public_url}, {len(tokens)} API token(s)",
            f"notify {cfg.notify.driver}",
            f"{len(cfg.people)} people, {len(cfg.devices)} devices, "
            f"{len(cfg.locations)} locations, {len(cfg.rosters)} rosters, "
            f"{len(cfg.escalation_chains)} chains, {len(cfg.assessments)} assessments",
        ]
    )
