"""The config's value types: durations, HH:MM times, dates, ids, E.164 phone numbers, API tokens.

Each parses the config's own forms and says in one sentence what is wrong; none echoes a secret.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    SecretStr,
    Tag,
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
# line breaks and tabs may stand in a text; other control characters and surrogates may not
UNREADABLE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_DURATION = dt.timedelta(days=366)
_DURATION_HINT = "use a number of seconds or a string like '45s', '10m', '4h'"


def parse_duration(value: object) -> dt.timedelta:
    """Parse ``"45s"``, ``"10m"``, ``"4h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"a duration is not true/false ({_DURATION_HINT})")
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float (e.g. 400 digits of JSON)
            raise ValueError("a duration cannot be longer than 366 days") from None
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m and value.strip().startswith("-"):
            raise ValueError("a duration cannot be negative")
        if not m:
            raise ValueError(f"{value!r} is not a duration ({_DURATION_HINT})")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"a duration is a number of seconds or a string ({_DURATION_HINT})")
    # TOML has inf and nan, and huge literals overflow timedelta: check before building one
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration cannot be longer than 366 days")
    return dt.timedelta(seconds=seconds)


def _parse_hhmm(value: object) -> dt.time:
    if isinstance(value, dt.time):
        # a TOML local time such as 07:00:00; seconds would be silently lost, so refuse them
        if value.second or value.microsecond or value.tzinfo is not None:
            raise ValueError(f"{value.isoformat()} is not a time of day in HH:MM form")
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        raise ValueError(f"{value!r} is not a time of day in HH:MM form (like '07:00')")
    hh, mm = int(value[:2]), int(value[3:])
    if hh > 23 or mm > 59:
        raise ValueError(f"{value!r} is not a valid time of day (00:00 to 23:59)")
    return dt.time(hh, mm)


def _parse_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ValueError("expected a date (YYYY-MM-DD), not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid date") from None
    raise ValueError(f"{value!r} is not a date in YYYY-MM-DD form")


# serialised back into the config's own forms, so a dumped model validates again (the store
# keeps API assessments as JSON)
Duration = Annotated[
    dt.timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda td: td.total_seconds(), return_type=float, when_used="json"),
]
HHMM = Annotated[
    dt.time,
    BeforeValidator(_parse_hhmm),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str, when_used="json"),
]
Date = Annotated[dt.date, BeforeValidator(_parse_date)]
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=_ID_PATTERN)]


def normalise_phone(value: str) -> str:
    """Return the E.164 form of a phone number, or raise ValueError."""
    if not isinstance(value, str) or not value.startswith("+"):
        raise ValueError(
            f"{value!r} is not an E.164 phone number (it must start with + and the country code)"
        )
    try:
        num = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{value!r} is not an E.164 phone number") from None
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

MIN_API_TOKEN_LENGTH = 16


def _check_token(tok: SecretStr) -> SecretStr:
    # the message must never contain the token itself
    if len(tok.get_secret_value()) < MIN_API_TOKEN_LENGTH:
        raise ValueError(
            f"an API token must be at least {MIN_API_TOKEN_LENGTH} characters long"
            " (value not shown)"
        )
    return tok


def _token_shape(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "table"
    return None


Token = Annotated[SecretStr, AfterValidator(_check_token)]
# A discriminated union, so a bad entry yields one error located at that entry rather than one
# error per union branch with pydantic's internal branch names in the location.
ApiTokens = Annotated[
    Annotated[list[Token], Tag("list")] | Annotated[dict[str, Token], Tag("table")],
    Discriminator(
        _token_shape,
        custom_error_type="api_tokens_shape",
        custom_error_message="should be a list of tokens or a table of name = token",
    ),
]
UNION_TAGS = frozenset({"list", "table"})
