"""What an operator reads about a config: its problems, one line each, and a summary.

A pydantic error becomes ``key: why``: the key names a list entry by its id where it has one
(``people[ola].phone``), else by position; the why is a sentence that echoes the input only where
it cannot be a secret. `redact` keeps every secret the document holds out of a finished line.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from jaa_gateway.config.models import LIST_SECTIONS, Config
from jaa_gateway.config.values import UNION_TAGS


class ConfigError(Exception):
    """A config with problems; `problems` lists them as ``file: key: why``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# values never shown in a problem line, wherever they end up
_SECRET_PATHS = (("mqtt", "password"), ("twilio", "auth_token"))
# redacting very short strings would mangle messages; real secrets are longer than this
_MIN_REDACT = 4


def item_label(node: Sequence[Any], index: int) -> str:
    entry = node[index]
    # only a well-formed id names an entry: anything else could break the one-line format
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        label = str(entry["id"])
        if label and label.isprintable() and len(label) <= 64 and not set(label) & set("[]"):
            return label
    return str(index)


def one_line(text: str) -> str:
    """Escape control characters (a TOML key may hold a newline): one problem, one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _loc_to_key(loc: Iterable[int | str], data: Any) -> str:
    """Turn a pydantic error location into ``people[ola].phone`` (id when known)."""
    parts: list[str] = []
    node = data
    prev: int | str | None = None
    for item in loc:
        after, prev = prev, item
        if after == "api_tokens" and item in UNION_TAGS:
            continue  # the branch of the list-or-table union, even if a token is named "table"
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and 0 <= item < len(node):
                label = item_label(node, item)
                node = node[item]
            else:
                node = None
            parts.append(f"[{label}]")
            continue
        if isinstance(node, dict) and item in node:
            node = node[item]
            parts.append(f".{item}" if parts else item)
            continue
        # pydantic's union-branch labels are not keys of the document: skip them
        if item in UNION_TAGS or "[" in item or item.startswith("function-"):
            continue
        node = None
        parts.append(f".{item}" if parts else item)
    return "".join(parts) or "(top level)"


def _annotation_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _annotation_model(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model whose field the last item of `loc` names (for "did you mean")."""
    model: type[BaseModel] = Config
    for item in loc[:-1]:
        if isinstance(item, int) or item in UNION_TAGS:
            continue
        info = model.model_fields.get(item)
        if info is None:
            return None
        found = _annotation_model(info.annotation)
        if found is None:
            return None
        model = found
    return model


_PATTERN_WHY = {
    "account_sid": "should be 'AC' followed by 32 hexadecimal digits",
    "topic_prefix": "should be MQTT topic levels of letters, digits, '_' and '-' (like 'jaa')",
}
_ID_WHY = "is not a valid id (letters, digits and . _ : -, starting with a letter or digit)"
_TOO_SHORT_WHY = {
    "notify": "a step needs at least one target (roster:ID, person:ID or supervisor)",
    "via": "a step needs at least one channel ('sms' or 'call')",
    "steps": "a chain needs at least one step",
    "shifts": "a roster needs at least one shift",
    "days": "a shift needs at least one day",
    "people": "a shift needs at least one person",
    "locations": "an assessment needs at least one location",
}


def _why(err: Mapping[str, Any]) -> str:
    """A sentence for one pydantic error; the input is echoed only where it cannot be secret."""
    kind: str = err["type"]
    loc: tuple[int | str, ...] = tuple(err["loc"])
    field_name = next((x for x in reversed(loc) if isinstance(x, str) and x not in UNION_TAGS), "")
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        close = (
            difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
            if model is not None
            else []
        )
        return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
    if kind == "literal_error":
        return f"{err['input']!r} is not allowed (expected {ctx.get('expected', '?')})"
    if kind == "too_short" and isinstance(err.get("input"), list):
        return _TOO_SHORT_WHY.get(field_name, "needs at least one entry")
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return _PATTERN_WHY.get(field_name, _ID_WHY)
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "should be a table"
    if kind == "list_type":
        if len(loc) == 1 and loc[0] in LIST_SECTIONS:
            return f"should be an array of tables ([[{loc[0]}]] entries)"
        return "should be an array"
    if kind == "string_type":
        return "should be a string"
    if kind == "bool_type":
        return "should be true or false"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "should be a whole number"
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def pydantic_problems(
    exc: ValidationError, data: Mapping[str, Any], skip: set[str]
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    # pydantic's copy of the input may be a secret: _why echoes it only for literal fields,
    # which never hold one, and the ValidationError itself is never shown
    for err in exc.errors(include_url=False):
        key = _loc_to_key(err["loc"], data)
        # a key whose ${VAR} is missing already has its problem; its empty value is no news
        if any(key == s or key.startswith((s + ".", s + "[")) for s in skip):
            continue
        out.append((key, _why(err)))
    return out


def secrets_in(data: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for section, name in _SECRET_PATHS:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(name), str):
            found.add(sec[name])
    http = data.get("http")
    tokens = http.get("api_tokens") if isinstance(http, dict) else None
    values = tokens.values() if isinstance(tokens, dict) else tokens
    if isinstance(values, Iterable) and not isinstance(values, str):
        found.update(v for v in values if isinstance(v, str))
    return found


def redact(line: str, secrets: Iterable[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) >= _MIN_REDACT:
            line = line.replace(s, "***")
    return line


def _without_userinfo(url: str) -> str:
    return re.sub(r"^(https?://)[^/@\s]*@", r"\1***@", url)


def summary(cfg: Config) -> str:
    """The short summary check-config prints for a good config (no secrets)."""
    tokens = cfg.http.api_tokens
    token_word = f"{len(tokens)} API token(s)"
    if isinstance(tokens, dict) and tokens:
        token_word += " (" + ", ".join(tokens) + ")"
    return "\n".join(
        [
            f"site {cfg.gateway.site} ({cfg.gateway.timezone}), language {cfg.gateway.language}",
            f"mqtt {cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.topic_prefix!r}"
            f" client {cfg.mqtt.client_id!r}",
            f"http {cfg.http.listen}, public {_without_userinfo(cfg.http.public_url)},"
            f" {token_word}",
            f"notify {cfg.notify.driver}",
            f"{len(cfg.people)} people, {len(cfg.devices)} devices, "
            f"{len(cfg.locations)} locations, {len(cfg.rosters)} rosters, "
            f"{len(cfg.escalation_chains)} chains, "
            f"{len(cfg.assessments)} assessments",
        ]
    )
