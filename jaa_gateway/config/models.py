"""The config's shape: frozen models forbidding unknown keys, each checking its own fields (what
needs several entries is in `checks`); `Config` answers look-ups by id, badge, phone (`index`)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from jaa_gateway.config.index import lookup
from jaa_gateway.config.values import (
    HHMM,
    UNREADABLE_RE,
    ApiTokens,
    Channel,
    Date,
    Day,
    Duration,
    Id,
    Phone,
    Role,
)
from jaa_gateway.passwords import HASH_RE

# who may log in to the guard console (CONTRACT §9)
CONSOLE_ROLES: tuple[Role, ...] = ("guard", "supervisor", "head", "admin")


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
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name like 'Europe/Oslo')"
            ) from None
        return v

    @field_validator("database")
    @classmethod
    def _db(cls, v: str) -> str:
        # not echoed: a postgresql URL may carry a password
        if not re.match(r"^(sqlite(\+aiosqlite)?:///|postgresql(\+asyncpg)?://)", v):
            raise ValueError("database must be a sqlite:/// or postgresql:// URL")
        return v


class ClusterSection(_Frozen):
    """Several gateways on one PostgreSQL database, one leader by lease (CONTRACT §8)."""

    node: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    lease: Duration = dt.timedelta(seconds=5)

    @field_validator("lease")
    @classmethod
    def _lease(cls, v: dt.timedelta) -> dt.timedelta:
        if not dt.timedelta(seconds=1) <= v <= dt.timedelta(seconds=60):
            raise ValueError("lease must be between 1s and 60s")
        return v


class MqttSection(_Frozen):
    host: str = Field(default="127.0.0.1", min_length=1)
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
    api_tokens: ApiTokens = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT (like '127.0.0.1:8080')")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        # not echoed: a URL may carry user:password
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("is not an http(s) URL like 'https://jaa.example.org'")
        return v.rstrip("/")

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
    # twilio unless console is asked for: a config that forgot [notify] must page, not print
    driver: Literal["twilio", "console"] = "twilio"
    # how long a notification may keep failing transiently before it is given up (audited)
    retry_for: Duration = dt.timedelta(minutes=10)
    # at most one call per number this often (caller-ID spam flagging)
    call_spacing: Duration = dt.timedelta(seconds=30)
    # notifications failing this long (or the database unwritable): the gateway raises its own
    # gateway_degraded notice and says "degraded" on its status topic
    degraded_after: Duration = dt.timedelta(minutes=2)


class TwilioSection(_Frozen):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    from_number: Phone
    api_base: str = "https://api.twilio.com"
    request_timeout: Duration = dt.timedelta(seconds=10)

    @field_validator("auth_token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("api_base")
    @classmethod
    def _base(cls, v: str) -> str:
        # not echoed: a proxy URL may carry user:password
        if not re.match(r"^https?://[^/\s]+$", v.rstrip("/")):
            raise ValueError("is not a base URL like 'https://api.twilio.com'")
        return v.rstrip("/")


class TimingSection(_Frozen):
    prealarm_window: Duration = dt.timedelta(seconds=30)
    checkin_grace: Duration = dt.timedelta(seconds=60)
    overrun_grace: Duration = dt.timedelta(minutes=5)
    device_timeout: Duration = dt.timedelta(seconds=120)

    @field_validator("device_timeout")
    @classmethod
    def _device_timeout(cls, v: dt.timedelta) -> dt.timedelta:
        # 0 would declare every device offline at once
        if v < dt.timedelta(seconds=1):
            raise ValueError("must be at least 1 second")
        return v


def _default_roles() -> list[Role]:
    return ["worker"]


class Person(_Frozen):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    phone: Phone
    badges: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=_default_roles)
    supervisor: Id | None = None
    hse_training_until: Date | None = None
    # the guard console's login (CONTRACT §9): a bcrypt hash from `jaa-gateway hash-password`
    console_password: SecretStr | None = None

    @field_validator("console_password")
    @classmethod
    def _console_password(cls, v: SecretStr | None) -> SecretStr | None:
        # the message never repeats the value
        if v is not None and not HASH_RE.match(v.get_secret_value()):
            raise ValueError(
                "must be a bcrypt hash made by `jaa-gateway hash-password` "
                "(starts with $2b$; value not shown)"
            )
        return v

    @model_validator(mode="after")
    def _console_role(self) -> Person:
        if self.console_password is not None and not set(self.roles) & set(CONSOLE_ROLES):
            raise ValueError(
                f"console_password is set but {self.id} has none of the roles that may log in "
                f"to the console ({', '.join(CONSOLE_ROLES)})"
            )
        return self

    @property
    def may_use_console(self) -> bool:
        return self.console_password is not None and bool(set(self.roles) & set(CONSOLE_ROLES))


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


_TARGET_RE = re.compile(
    r"^(roster:[A-Za-z0-9][A-Za-z0-9._:-]*|person:[A-Za-z0-9][A-Za-z0-9._:-]*|supervisor)$"
)


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
    """A risk assessment; the same model validates config entries and API bodies.

    ``acute_injury_risk = true`` forces ``requires_jaa`` to true (CONTRACT §2, guideline: the
    JAA must be used where the activity can cause acute injury), so ``requires_jaa`` may be left
    out and is never false for such an activity.
    """

    id: Id
    person: Id
    locations: list[Id] = Field(min_length=1)
    activity: str = Field(min_length=1, max_length=500)

    @field_validator("activity")
    @classmethod
    def _readable_activity(cls, v: str) -> str:
        # it is shown to guards in SMS and to HSE in the audit: text a person can read
        if not v.strip():
            raise ValueError("must not be blank")
        if UNREADABLE_RE.search(v):
            raise ValueError("must not contain control characters")
        return v

    acute_injury_risk: StrictBool
    lone_work_allowed: StrictBool
    requires_jaa: StrictBool = False
    checkin_interval: Duration | None = None
    max_duration: Duration
    allowed_hours: Window | None = None
    valid_from: Date
    valid_until: Date
    approved_by: Id

    @model_validator(mode="before")
    @classmethod
    def _force_jaa(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("acute_injury_risk") is True:
            return {**data, "requires_jaa": True}
        return data

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
    cluster: ClusterSection | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.gateway.timezone)

    def person(self, pid: str) -> Person | None:
        found: Person | None = lookup(self, "people", pid)
        return found

    def device(self, did: str) -> Device | None:
        found: Device | None = lookup(self, "devices", did)
        return found

    def location(self, lid: str) -> Location | None:
        found: Location | None = lookup(self, "locations", lid)
        return found

    def roster(self, rid: str) -> Roster | None:
        found: Roster | None = lookup(self, "rosters", rid)
        return found

    def chain(self, cid: str) -> Chain | None:
        found: Chain | None = lookup(self, "escalation_chains", cid)
        return found

    def assessment(self, aid: str) -> Assessment | None:
        found: Assessment | None = lookup(self, "assessments", aid)
        return found

    def person_by_badge(self, badge: str) -> Person | None:
        found: Person | None = lookup(self, "people", badge.upper(), "badge")
        return found

    def person_by_phone(self, phone: str) -> Person | None:
        found: Person | None = lookup(self, "people", phone, "phone")
        return found

    def device_of(self, person_id: str) -> Device | None:
        found: Device | None = lookup(self, "devices", person_id, "person")
        return found

    def location_of_door(self, door_id: str) -> Location | None:
        found: Location | None = lookup(self, "locations", door_id, "door")
        return found


# list sections whose entries have ids; keys name an entry by its id (people[ola])
LIST_SECTIONS: dict[str, type[BaseModel]] = {
    "people": Person,
    "devices": Device,
    "locations": Location,
    "rosters": Roster,
    "escalation_chains": Chain,
    "assessments": Assessment,
}
