"""Which alarms one call speaks, and the TwiML that speaks them (pure functions).

A call to one number may stand for several alarms held back by the call pacing. It reads at most
`MAX_SPOKEN` of them (the ones whose call has waited longest), then says how many more there are
(they are in the SMS), and its key-press URL names exactly the alarms it read: pressing 1
acknowledges those and no other. The call rows of the alarms not read stay pending for the next
paced call, which reads the next ones. Whatever the number of alarms, the TwiML stays within
Twilio's limit and the action URL stays short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from jaa_gateway.domain import texts
from jaa_gateway.domain.texts import Lang
from jaa_gateway.notify.twiml import call_twiml

# A guard listens to a call; five alarms read twice is already about a minute and a half.
MAX_SPOKEN = 5

Row = dict[str, Any]


@dataclass(frozen=True)
class CallPlan:
    """rows: the call rows of the alarms the call reads (claim these, oldest first);
    more: alarms due for this number the call does not read (their rows stay pending);
    bad: rows whose text cannot be made into a call, with why (never sendable as they are)."""

    rows: list[Row] = field(default_factory=list)
    more: int = 0
    bad: list[tuple[Row, str]] = field(default_factory=list)


def _key(r: Row) -> str:
    return str(r["alarm"]) if r["alarm"] else f"#{r['id']}"


def _by_alarm(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The rows grouped per alarm, in the order each alarm's oldest row comes."""
    groups: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: int(r["id"])):
        groups.setdefault(_key(r), []).append(r)
    return groups


def action_url(public_url: str, alarm_ids: Sequence[str]) -> str:
    """The key-press webhook for a call that read `alarm_ids` (the first in the path)."""
    first = quote(alarm_ids[0] if alarm_ids else "none", safe="")
    url = f"{public_url}/twilio/voice/{first}"
    if len(alarm_ids) > 1:
        url += "?also=" + ",".join(quote(a, safe="") for a in alarm_ids[1:])
    return url


def call_document(group: Sequence[Row], more: int, lang: Lang, public_url: str) -> str:
    """The TwiML of a call that reads the alarms of `group` and mentions `more` others.

    ValueError when it does not fit Twilio's limit (`plan_call` keeps that from happening)."""
    groups = _by_alarm(group)
    if len(groups) > MAX_SPOKEN:
        raise ValueError(f"a call reads at most {MAX_SPOKEN} alarms, got {len(groups)}")
    spoken = [rows[0]["body"] for rows in groups.values()]
    if more:
        spoken.append(texts.more_alarms_voice(lang, more))
    ids = [str(rows[0]["alarm"]) for rows in groups.values() if rows[0]["alarm"]]
    return call_twiml(spoken, texts.VOICE_LANG[lang], action_url(public_url, ids))


def plan_call(
    rows: Sequence[Row], lang: Lang, public_url: str, limit: int = MAX_SPOKEN
) -> CallPlan:
    """Pick what one call to a number reads from its due call rows.

    The alarms whose oldest row waited longest come first, at most `limit` of them, fewer if
    their TwiML would not fit; every due row of a chosen alarm goes with it (it is heard once).
    A row whose text cannot be spoken even alone is set aside in `bad`, so it holds up no other.
    """
    if not 1 <= limit <= MAX_SPOKEN:
        raise ValueError(f"limit must be 1..{MAX_SPOKEN}, got {limit}")
    groups = _by_alarm(rows)
    chosen: list[str] = []
    bad: list[tuple[Row, str]] = []
    for key, group in groups.items():
        if len(chosen) == limit:
            break
        try:
            call_document(group, 0, lang, public_url)
        except Exception as exc:  # any row that breaks the document is set aside, not retried
            bad.extend((r, f"{type(exc).__name__}: {exc}") for r in group)
            continue
        chosen.append(key)
    bad_keys = {_key(r) for r, _ in bad}
    more = len(groups) - len(chosen) - len(bad_keys)
    while chosen:
        picked = [r for key in chosen for r in groups[key]]
        try:
            call_document(picked, more, lang, public_url)
        except ValueError:
            if len(chosen) == 1:
                raise
            chosen.pop()
            more += 1
            continue
        return CallPlan(rows=picked, more=more, bad=bad)
    return CallPlan(more=0, bad=bad)
