"""SMS and voice texts in Norwegian bokmål ("nb") and English ("en").

Pure functions: the language is an argument. Alarm texts must always be producible, so unknown
workers, places and positions read naturally instead of failing; an unknown language, kind or a
malformed code is a programming error and raises ValueError.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

Lang = Literal["nb", "en"]
LANGS: Final = ("nb", "en")
VOICE_LANG: Final = {"nb": "nb-NO", "en": "en-GB"}

KINDS: Final = (
    "sos",
    "man_down",
    "missed_checkin",
    "session_overrun",
    "device_offline",
    "contact_lost",
    "unattended_entry",
    "gateway_degraded",
)

# The kind as the headline of an alarm SMS.
_KIND: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "sos": "SOS, nødknappen er trykket",
        "man_down": "Mann ned (fall eller ingen bevegelse)",
        "missed_checkin": "Uteblitt innsjekk",
        "session_overrun": "Alenearbeidet er ikke avsluttet i tide",
        "device_offline": "Alarmenheten har mistet forbindelsen",
        "contact_lost": "Mistet kontakten med alarmenhetene",
        "unattended_entry": "Dør åpnet utenom arbeidstid uten registrert alenearbeid",
        "gateway_degraded": "Alarmsystemet har redusert funksjon",
    },
    "en": {
        "sos": "SOS, panic button pressed",
        "man_down": "Man down (fall or no movement)",
        "missed_checkin": "Missed check-in",
        "session_overrun": "Lone work not ended in time",
        "device_offline": "Alarm device lost contact",
        "contact_lost": "Lost contact with the alarm devices",
        "unattended_entry": "Door opened after hours with no lone-work session",
        "gateway_degraded": "The alarm system is degraded",
    },
}

# Short names for sentences ("SOS-alarm fra Ola ...", "Kvittert: SOS-alarm 1234 ...").
_KIND_SHORT: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "sos": "SOS-alarm",
        "man_down": "mann-ned-alarm",
        "missed_checkin": "alarm for uteblitt innsjekk",
        "session_overrun": "alarm for overskredet tid",
        "device_offline": "alarm for frakoblet alarmenhet",
        "contact_lost": "alarm for mistet kontakt",
        "unattended_entry": "varsel om dør åpnet",
        "gateway_degraded": "varsel om alarmsystemet",
    },
    "en": {
        "sos": "SOS alarm",
        "man_down": "man-down alarm",
        "missed_checkin": "missed check-in alarm",
        "session_overrun": "session overrun alarm",
        "device_offline": "device offline alarm",
        "contact_lost": "lost contact alarm",
        "unattended_entry": "after-hours door notice",
        "gateway_degraded": "alarm system notice",
    },
}

_REASON: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "unknown_badge": "ukjent adgangskort",
        "unknown_device": "ukjent alarmenhet",
        "unknown_location": "ukjent sted",
        "no_assessment": "ingen risikovurdering for arbeidet",
        "assessment_not_valid": "risikovurderingen er ikke gyldig i dag",
        "lone_work_not_allowed": "risikovurderingen tillater ikke alenearbeid",
        "outside_allowed_hours": "utenfor tidsrommet risikovurderingen tillater",
        "training_expired": "HMS-opplæringen mangler eller er utløpt",
        "jaa_required": "alenearbeidsalarm (JAA) kreves, men alarmen er ikke slått på",
        "no_assistance": "ingen vakt er tilgjengelig for å rykke ut",
        "session_active": "har allerede en aktiv økt et annet sted",
    },
    "en": {
        "unknown_badge": "unknown badge",
        "unknown_device": "unknown alarm device",
        "unknown_location": "unknown location",
        "no_assessment": "no risk assessment for the work",
        "assessment_not_valid": "the risk assessment is not valid today",
        "lone_work_not_allowed": "the risk assessment does not allow lone work",
        "outside_allowed_hours": "outside the hours the risk assessment allows",
        "training_expired": "HSE training missing or expired",
        "jaa_required": "a lone-work alarm (JAA) is required but none is online",
        "no_assistance": "no guard is available to respond",
        "session_active": "already has an active session elsewhere",
    },
}

_CODE_RE: Final = re.compile(r"[0-9]{4}")
# Names come from config (up to 200 chars); SMS must stay short enough to arrive in one piece.
_NAME_MAX: Final = 60
_DETAIL_MAX: Final = 140


def _lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r} (expected one of {LANGS})")
    return lang


def _kind(lang: str, kind: str, table: dict[str, dict[str, str]] = _KIND) -> str:
    try:
        return table[_lang(lang)][kind]
    except KeyError:
        raise ValueError(f"unknown alarm kind {kind!r} (expected one of {KINDS})") from None


def _code(code: str) -> str:
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        raise ValueError(f"an acknowledgement code is 4 digits, got {code!r}")
    return code


# Control characters (NUL, BEL, ESC ...) and lone surrogates: a name from config must not put
# them into an SMS (carriers mangle or refuse them) or a call's TwiML.
_UNSENDABLE_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _clip(text: str, limit: int) -> str:
    # no newlines, runs of spaces or control characters from config into an SMS
    text = " ".join(_UNSENDABLE_RE.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _name(value: str | None) -> str | None:
    if value is None:
        return None
    clipped = _clip(value, _NAME_MAX)
    return clipped or None


def map_link(lat: float | None, lon: float | None) -> str | None:
    """A map link for a position, or None when it is unknown or not a real position."""
    if lat is None or lon is None:
        return None
    try:
        la, lo = float(lat), float(lon)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(la) and math.isfinite(lo) and -90 <= la <= 90 and -180 <= lo <= 180):
        return None
    return f"https://maps.google.com/?q={la:.5f},{lo:.5f}"


def kind_name(lang: Lang, kind: str) -> str:
    """The alarm kind in words, e.g. "SOS-alarm (nødknapp)"."""
    return _kind(lang, kind)


def reason_name(lang: Lang, reason: str) -> str:
    """A deny reason in words; an unknown code is shown as is rather than failing."""
    return _REASON[_lang(lang)].get(reason, reason)


def _worker(lang: str, worker_name: str | None) -> str:
    name = _name(worker_name)
    if name is not None:
        return name
    return "ukjent person" if lang == "nb" else "unknown person"


def _unwatched(lang: str, n: int | None) -> str:
    """How many people working alone are unwatched (a contact_lost alarm), as a sentence."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"a number of unwatched sessions is a count, got {n!r}")
    if lang == "nb":
        if n is None:
            return "Personer som arbeider alene, kan være uten overvåking. Sjekk at de er i orden."
        if n == 0:
            return "Kontakten er tilbake nå. Sjekk at de som arbeider alene, er i orden."
        if n == 1:
            return (
                "1 person som arbeider alene, er uten overvåking nå. Sjekk at personen er i orden."
            )
        return f"{n} personer som arbeider alene, er uten overvåking nå. Sjekk at de er i orden."
    if n is None:
        return "People working alone may be unwatched. Check that they are safe."
    if n == 0:
        return "Contact is back now. Check that the people working alone are safe."
    who = "1 person working alone is" if n == 1 else f"{n} people working alone are"
    return f"{who} unwatched now. Check that they are safe."


# alarm_sms's words: headline, worker, place, map, position only, nothing known, how to ack
_SMS_LINES: Final[dict[str, tuple[str, str, str, str, str, str, str]]] = {
    "nb": (
        "JAA-ALARM",
        "Person",
        "Sted",
        "Kart",
        "ukjent sted, siste kjente posisjon",
        "ukjent sted, ingen kjent posisjon",
        "Svar OK {code} for å kvittere",
    ),
    "en": (
        "JAA ALARM",
        "Worker",
        "Location",
        "Map",
        "unknown, last known position",
        "unknown, no known position",
        "Reply OK {code} to acknowledge",
    ),
}


def alarm_sms(
    lang: Lang,
    kind: str,
    worker_name: str | None,
    location_name: str | None,
    code: str,
    lat: float | None,
    lon: float | None,
    *,
    unwatched: int | None = None,
) -> str:
    """The SMS a guard gets when an alarm escalates: one fact a line, the link on its own line
    (a full stop after a URL gets swallowed into the link by some phones).

    `contact_lost` names no worker or place but how many sessions are `unwatched` now."""
    what = _kind(lang, kind)
    code = _code(code)
    head, person, place, map_label, position_only, nowhere, reply = _SMS_LINES[lang]
    if kind == "contact_lost":
        return f"{head}: {what}\n{_unwatched(lang, unwatched)}\n{reply.format(code=code)}"
    who = _worker(lang, worker_name)
    name = _name(location_name)
    link = map_link(lat, lon)
    lines = [f"{head}: {what}", f"{person}: {who}"]
    if name is not None:
        lines.append(f"{place}: {name}")
        if link:
            lines.append(f"{map_label}: {link}")
    elif link:
        lines.append(f"{place}: {position_only} {link}")
    else:
        lines.append(f"{place}: {nowhere}")
    lines.append(reply.format(code=code))
    return "\n".join(lines)


def alarm_voice(
    lang: Lang,
    kind: str,
    worker_name: str | None,
    location_name: str | None,
    *,
    unwatched: int | None = None,
) -> str:
    """What a call says (spoken in VOICE_LANG[lang]); it ends by asking for the key press."""
    what = _kind(lang, kind, _KIND_SHORT)
    if kind == "contact_lost":
        if lang == "nb":
            return (
                "Dette er alenearbeidsalarmen. Alarmsystemet har mistet kontakten med "
                f"alarmenhetene. {_unwatched(lang, unwatched)} "
                "Trykk 1 for å kvittere at du følger opp."
            )
        return (
            "This is the lone-work alarm. The alarm system has lost contact with the alarm "
            f"devices. {_unwatched(lang, unwatched)} Press 1 to acknowledge that you follow up."
        )
    who = _worker(lang, worker_name)
    name = _name(location_name)
    if lang == "nb":
        where = f"i {name}" if name is not None else "på ukjent sted"
        return (
            f"Dette er alenearbeidsalarmen. {what[:1].upper()}{what[1:]} fra {who}, {where}. "
            "Trykk 1 for å kvittere at du rykker ut."
        )
    where = f"at {name}" if name is not None else "at an unknown location"
    return (
        f"This is the lone-work alarm. {what[:1].upper()}{what[1:]} from {who}, {where}. "
        "Press 1 to acknowledge."
    )


def worker_ok_sms(
    lang: Lang, kind: str, worker_name: str | None, location_name: str | None, code: str
) -> str:
    """The worker cancelled after escalation started: they report OK, but a guard must ack."""
    what = _kind(lang, kind, _KIND_SHORT)
    code = _code(code)
    who = _worker(lang, worker_name)
    name = _name(location_name)
    if lang == "nb":
        where = f" ({name})" if name is not None else ""
        return (
            f"JAA: {who}{where} melder at alt er OK etter {what} {code}. "
            f"Alarmen er fortsatt åpen: sjekk og svar OK {code} for å kvittere."
        )
    where = f" ({name})" if name is not None else ""
    return (
        f"JAA: {who}{where} reports being OK after {what} {code}. "
        f"The alarm is still open: check, then reply OK {code} to acknowledge."
    )


def notice_sms(
    lang: Lang,
    kind: str,
    location_name: str | None,
    door_id: str | None,
    when_local: str,
    reason: str | None = None,
) -> str:
    """A notice: no acknowledgement needed.

    `unattended_entry`: a door opened within a location's after_hours with nobody in a session.
    `gateway_degraded`: the gateway itself has a problem (`reason` says which).
    """
    _lang(lang)
    when = _clip(when_local, 40)
    if kind == "unattended_entry":
        name = _name(location_name)
        door = _name(door_id)
        if lang == "nb":
            place = name if name is not None else "ukjent sted"
            via = f" (dør {door})" if door else ""
            return (
                f"JAA-varsel: Dør åpnet kl. {when} utenom arbeidstid i {place}{via}, "
                "og ingen har registrert alenearbeid der. Sjekk ved behov. "
                "Trenger ikke kvitteres."
            )
        place = name if name is not None else "an unknown location"
        via = f" (door {door})" if door else ""
        return (
            f"JAA notice: a door was opened at {when}, after hours, at {place}{via}, "
            "and nobody has a lone-work session there. Check if needed. No reply needed."
        )
    if kind == "gateway_degraded":
        why = _clip(reason, _DETAIL_MAX) if reason else None
        if lang == "nb":
            tail = f": {why}" if why else ""
            return (
                f"JAA-varsel kl. {when}: alarmsystemet har redusert funksjon{tail}. "
                "Alarmer kan bli forsinket. Gi beskjed til driftsansvarlig."
            )
        tail = f": {why}" if why else ""
        return (
            f"JAA notice at {when}: the alarm system is degraded{tail}. "
            "Alarms may be delayed. Tell the operator on call."
        )
    raise ValueError(f"{kind!r} is not a notice kind (unattended_entry or gateway_degraded)")


def denial_sms(
    lang: Lang, worker_name: str | None, location_name: str | None, reason: str, detail: str
) -> str:
    """To the worker's supervisor: a lone-work start was refused, and why."""
    who = _worker(lang, worker_name)
    name = _name(location_name)
    why = reason_name(lang, reason)
    more = _clip(detail, _DETAIL_MAX) if detail else ""
    if lang == "nb":
        # the gate's detail is English (it also goes to the device): a Norwegian supervisor
        # gets the reason in Norwegian only, which says all the detail would
        where = name if name is not None else "ukjent sted"
        return f"JAA: {who} fikk ikke starte alenearbeid i {where}: {why}."
    where = name if name is not None else "an unknown location"
    tail = f" Details: {more}" if more else ""
    return f"JAA: {who} was refused lone work at {where}: {why}.{tail}"


def more_alarms_voice(lang: Lang, more: int) -> str:
    """Said after the alarms a grouped call reads: the others are in the SMS, and pressing 1
    in this call does not acknowledge them."""
    if isinstance(more, bool) or not isinstance(more, int) or more < 1:
        raise ValueError(f"the number of alarms not read is a positive integer, got {more!r}")
    if _lang(lang) == "nb":
        if more == 1:
            return "I tillegg er det én alarm til. Den står i SMS-ene dine og kvitteres ikke her."
        return f"I tillegg er det {more} alarmer til. De står i SMS-ene dine og kvitteres ikke her."
    if more == 1:
        return "And 1 more alarm: see your SMS. Pressing 1 does not acknowledge it."
    return f"And {more} more alarms: see your SMS. Pressing 1 does not acknowledge them."
