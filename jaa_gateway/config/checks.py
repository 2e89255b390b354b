"""Cross-checks: every problem that needs more than one entry to see.

References between entries (a device's person, a location's chain, a chain's rosters and people),
ids used twice, a badge, phone number, device or door claimed twice, who may approve an
assessment. They run on a valid config and, when some entries fail validation, on the entries
that did (`cross_check_document`), so one pass shows every problem.
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from jaa_gateway.config.models import (
    LIST_SECTIONS,
    Assessment,
    Chain,
    Config,
    HttpSection,
    NotifySection,
    Person,
)

_T = typing.TypeVar("_T", bound=BaseModel)


@dataclass
class _View:
    """What the cross-checks see: the valid parts, and every id the document mentions.

    When some entries fail validation the cross-checks still run on the rest; an id that only an
    invalid entry has still counts as existing, so no reference to it is wrongly called unknown.
    A section whose ids cannot all be read is `opaque`: references into it are not judged.
    """

    notify: NotifySection | None
    http: HttpSection | None
    has_twilio: bool
    default_escalation: str | None
    items: dict[str, list[Any]]
    ids: dict[str, list[str]]
    opaque: set[str] = field(default_factory=set)
    # [cluster] (CONTRACT §8) needs PostgreSQL: the database URL, and whether the section is there
    database: str = "sqlite:///"
    has_cluster: bool = False
    _first: dict[str, dict[str, Any]] = field(default_factory=dict)
    _idsets: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Config) -> _View:
        return cls(
            notify=cfg.notify,
            http=cfg.http,
            has_twilio=cfg.twilio is not None,
            default_escalation=cfg.gateway.default_escalation,
            items={s: list(getattr(cfg, s)) for s in LIST_SECTIONS},
            ids={s: [item.id for item in getattr(cfg, s)] for s in LIST_SECTIONS},
            database=cfg.gateway.database,
            has_cluster=cfg.cluster is not None,
        )

    @classmethod
    def partial(cls, data: Mapping[str, Any]) -> _View:
        items: dict[str, list[Any]] = {}
        ids: dict[str, list[str]] = {}
        opaque: set[str] = set()
        for section, model in LIST_SECTIONS.items():
            raw = data.get(section, [])
            items[section], ids[section] = [], []
            if not isinstance(raw, list):
                opaque.add(section)
                continue
            for entry in raw:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    ids[section].append(entry["id"])
                else:
                    opaque.add(section)
                try:
                    items[section].append(model.model_validate(entry))
                except ValidationError:
                    pass
        gateway = data.get("gateway")
        default = gateway.get("default_escalation") if isinstance(gateway, dict) else None
        database = gateway.get("database") if isinstance(gateway, dict) else None
        return cls(
            notify=_try(NotifySection, data.get("notify", {})),
            http=_try(HttpSection, data.get("http", {})),
            has_twilio="twilio" in data,
            default_escalation=default if isinstance(default, str) else None,
            items=items,
            ids=ids,
            opaque=opaque,
            database=database if isinstance(database, str) else "sqlite:///",
            has_cluster="cluster" in data,
        )

    def exists(self, section: str, item_id: str) -> bool:
        if section in self.opaque:
            return True
        idset = self._idsets.get(section)
        if idset is None:
            idset = self._idsets[section] = set(self.ids[section])
        return item_id in idset

    def get(self, section: str, item_id: str) -> Any:
        """The valid entry with this id (the first one), or None."""
        if section not in self._first:
            first: dict[str, Any] = {}
            for item in self.items[section]:
                first.setdefault(item.id, item)
            self._first[section] = first
        return self._first[section].get(item_id)


def _try(model: type[_T], raw: Any) -> _T | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _may_approve(approver: Person, worker: Person) -> bool:
    if approver.id == worker.id:
        return False
    return "head" in approver.roles or worker.supervisor == approver.id


def may_approve(cfg: Config, approver_id: str, worker_id: str) -> bool:
    """The worker's supervisor, or a person with role head, may approve an assessment.

    Nobody approves their own assessment, not even a head.
    """
    approver = cfg.person(approver_id)
    worker = cfg.person(worker_id)
    if approver is None or worker is None:
        return False
    return _may_approve(approver, worker)


def _check_assessment(v: _View, a: Assessment, key: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not v.exists("people", a.person):
        out.append((f"{key}.person", f"unknown person {a.person!r}"))
    for i, lid in enumerate(a.locations):
        if not v.exists("locations", lid):
            out.append((f"{key}.locations[{i}]", f"unknown location {lid!r}"))
    approver: Person | None = v.get("people", a.approved_by)
    worker: Person | None = v.get("people", a.person)
    if not v.exists("people", a.approved_by):
        out.append((f"{key}.approved_by", f"unknown person {a.approved_by!r}"))
    elif a.approved_by == a.person:
        out.append((f"{key}.approved_by", "a person may not approve their own assessment"))
    elif approver is not None and worker is not None and not _may_approve(approver, worker):
        out.append(
            (
                f"{key}.approved_by",
                f"{a.approved_by!r} may not approve: not {a.person!r}'s supervisor "
                "and not a person with role head",
            )
        )
    if a.valid_until < a.valid_from:
        out.append((f"{key}.valid_until", "is before valid_from"))
    if a.max_duration <= dt.timedelta(0):
        out.append((f"{key}.max_duration", "must be longer than 0"))
    if a.checkin_interval is not None and a.checkin_interval < dt.timedelta(seconds=1):
        out.append((f"{key}.checkin_interval", "must be at least 1 second"))
    return out


def check_assessment(cfg: Config, a: Assessment, key: str) -> list[tuple[str, str]]:
    """Reference checks for one assessment (used for config entries and API bodies)."""
    return _check_assessment(_View.of(cfg), a, key)


def _dupes(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for i in items:
        if i in seen and i not in dup:
            dup.append(i)
        seen.add(i)
    return dup


def cross_check(cfg: Config) -> list[tuple[str, str]]:
    """Every problem that needs more than one entry to see, as (key, why)."""
    return _cross_check(_View.of(cfg))


def cross_check_document(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The cross-checks of a document that did not validate, on the entries that did."""
    return _cross_check(_View.partial(data))


def _cross_check(v: _View) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for section in LIST_SECTIONS:
        for d in _dupes(v.ids[section]):
            out.append((f"{section}[{d}]", f"id {d!r} is used more than once"))

    if v.notify is not None and v.notify.driver == "twilio" and not v.has_twilio:
        out.append(
            (
                "twilio",
                "section [twilio] is required: [notify] driver is 'twilio' unless "
                "driver = 'console' is set (console only prints; nobody is paged)",
            )
        )
    if v.default_escalation is not None and not v.exists("escalation_chains", v.default_escalation):
        out.append(
            ("gateway.default_escalation", f"unknown escalation chain {v.default_escalation!r}")
        )
    if v.http is not None:
        out.extend(_token_dupes(v.http))
    if v.has_cluster and not v.database.startswith("postgresql"):
        out.append(
            (
                "cluster",
                "[cluster] needs a postgresql:// database in [gateway] database (the nodes share "
                "it and its lease); remove [cluster] to run one gateway alone",
            )
        )

    badge_owner: dict[str, str] = {}
    phone_owner: dict[str, str] = {}
    for p in v.items["people"]:
        key = f"people[{p.id}]"
        if p.supervisor is not None:
            if p.supervisor == p.id:
                out.append((f"{key}.supervisor", "a person cannot supervise themselves"))
            elif not v.exists("people", p.supervisor):
                out.append((f"{key}.supervisor", f"unknown person {p.supervisor!r}"))
        for b in p.badges:
            if (other := _other_owner(badge_owner, b.upper(), p.id)) is not None:
                out.append((f"{key}.badges", f"badge {b!r} is also {other!r}'s"))
        # SMS replies are matched to people by number: two people on one number is ambiguous
        if (other := _other_owner(phone_owner, p.phone, p.id)) is not None:
            out.append((f"{key}.phone", f"{p.phone} is also {other!r}'s number"))

    holder: dict[str, str] = {}
    for d in v.items["devices"]:
        if not v.exists("people", d.person):
            out.append((f"devices[{d.id}].person", f"unknown person {d.person!r}"))
        if (other := _other_owner(holder, d.person, d.id)) is not None:
            out.append((f"devices[{d.id}].person", f"{d.person!r} already holds {other!r}"))

    door_owner: dict[str, str] = {}
    for loc in v.items["locations"]:
        key = f"locations[{loc.id}]"
        if not v.exists("escalation_chains", loc.escalation):
            out.append((f"{key}.escalation", f"unknown escalation chain {loc.escalation!r}"))
        for door in loc.doors:
            if (other := _other_owner(door_owner, door, loc.id)) is not None:
                out.append((f"{key}.doors", f"door {door!r} already belongs to {other!r}"))

    for r in v.items["rosters"]:
        for si, sh in enumerate(r.shifts):
            for pi, pid in enumerate(sh.people):
                if not v.exists("people", pid):
                    out.append(
                        (f"rosters[{r.id}].shifts[{si}].people[{pi}]", f"unknown person {pid!r}")
                    )

    for c in v.items["escalation_chains"]:
        out.extend(_check_chain(v, c))

    for a in v.items["assessments"]:
        out.extend(_check_assessment(v, a, f"assessments[{a.id}]"))
    return out


def _other_owner(owners: dict[str, str], thing: str, owner: str) -> str | None:
    """Who else already has `thing` (a badge, number, door...), or None; the first keeps it."""
    other = owners.setdefault(thing, owner)
    return None if other == owner else other


def _token_dupes(http: HttpSection) -> list[tuple[str, str]]:
    # token_names() maps a token to one name: a token listed twice would be audited under the
    # wrong name. The entries are named, never the token.
    tokens = http.api_tokens
    if isinstance(tokens, dict):
        named = [(f"http.api_tokens.{name}", tok) for name, tok in tokens.items()]
    else:
        named = [(f"http.api_tokens[{i}]", tok) for i, tok in enumerate(tokens)]
    first: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for key, tok in named:
        if (other := _other_owner(first, tok.get_secret_value(), key)) is not None:
            out.append((key, f"the same token as {other}"))
    return out


def _check_chain(v: _View, c: Chain) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    prev = dt.timedelta(0)
    for si, st in enumerate(c.steps):
        skey = f"escalation_chains[{c.id}].steps[{si}]"
        if st.after < prev:
            out.append((f"{skey}.after", "steps must be in order of 'after'"))
        prev = max(prev, st.after)
        for ti, t in enumerate(st.notify):
            kind, _, ref = t.partition(":")
            if kind == "roster" and not v.exists("rosters", ref):
                out.append((f"{skey}.notify[{ti}]", f"unknown roster {ref!r}"))
            if kind == "person" and not v.exists("people", ref):
                out.append((f"{skey}.notify[{ti}]", f"unknown person {ref!r}"))
    if c.keep_paging != dt.timedelta(0) and c.keep_paging < dt.timedelta(seconds=1):
        out.append((f"escalation_chains[{c.id}].keep_paging", "must be 0 or at least 1s"))
    return out
