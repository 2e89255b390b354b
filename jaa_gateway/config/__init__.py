"""Configuration: TOML -> frozen pydantic models, with cross-checks.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` are lines of the
form ``file: key: why`` -- every problem at once, so an operator fixes a file in one pass. Keys
name list entries by their id where they have one (``people[ola].phone``), else by position.
No problem line ever contains a secret (tokens, passwords, values read from the environment).

Import from here; the rooms are the package's inside: `values` (durations, HH:MM, dates, ids,
phone numbers, API tokens), `models` (the frozen models and `Config`), `index` (Config's
look-ups), `checks` (the cross-checks), `report` (problem lines, redaction, the summary) and
`load` (TOML, ``${NAME}``, `load_config`, `parse_config`, `parse_assessment`).
"""

from jaa_gateway.config.checks import check_assessment, cross_check, may_approve
from jaa_gateway.config.load import load_config, parse_assessment, parse_config
from jaa_gateway.config.models import (
    Assessment,
    Chain,
    ClusterSection,
    Config,
    Device,
    GatewaySection,
    HttpSection,
    Location,
    MqttSection,
    NotifySection,
    Person,
    Roster,
    Shift,
    Step,
    TimingSection,
    TwilioSection,
    Window,
)
from jaa_gateway.config.report import ConfigError, summary
from jaa_gateway.config.values import (
    DAYS,
    HHMM,
    MAX_DURATION,
    MIN_API_TOKEN_LENGTH,
    UNREADABLE_RE,
    ApiTokens,
    Channel,
    Date,
    Day,
    Duration,
    Id,
    Phone,
    Role,
    Token,
    normalise_phone,
    parse_duration,
)

__all__ = [
    "DAYS",
    "HHMM",
    "MAX_DURATION",
    "MIN_API_TOKEN_LENGTH",
    "UNREADABLE_RE",
    "ApiTokens",
    "Assessment",
    "Chain",
    "Channel",
    "ClusterSection",
    "Config",
    "ConfigError",
    "Date",
    "Day",
    "Device",
    "Duration",
    "GatewaySection",
    "HttpSection",
    "Id",
    "Location",
    "MqttSection",
    "NotifySection",
    "Person",
    "Phone",
    "Role",
    "Roster",
    "Shift",
    "Step",
    "TimingSection",
    "Token",
    "TwilioSection",
    "Window",
    "check_assessment",
    "cross_check",
    "load_config",
    "may_approve",
    "normalise_phone",
    "parse_assessment",
    "parse_config",
    "parse_duration",
    "summary",
]
