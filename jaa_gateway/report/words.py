"""The report's words, in Norwegian bokmål ("nb") and English ("en"), and the formatting of its
numbers (a decimal comma and "42 %" in Norwegian). Deny reasons are `domain/texts.py`'s, as the
SMS and the console say them."""

from __future__ import annotations

import datetime as dt
from typing import Final

from jaa_gateway.domain import texts

_T: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "title": "Månedsrapport for alenearbeid",
        "site": "Anlegg",
        "produced": "Laget {when}",
        "zone": "Alle tider i tidssonen {zone}.",
        "rule": "En økt eller alarm hører til måneden den begynte i.",
        "summary": "Sammendrag for hele anlegget",
        "whole_site": "Hele anlegget",
        "sessions": "Alenearbeidsøkter",
        "ongoing": "{n} pågår fortsatt",
        "hours": "Timer alenearbeid",
        "denied": "Avviste oppstarter",
        "alarms": "Alarmer",
        "cancelled": "{n} avbrutt av arbeideren i forvarselet",
        "unlocated": "{n} uten kjent sted",
        "missed": "Uteblitte innsjekker",
        "unattended": "Dør åpnet utenom arbeidstid uten økt",
        "ack": "Tid fra alarm til kvittering",
        "ack_note": "Regnet fra vaktene ble varslet. En alarm som aldri ble kvittert, teller "
        "som ikke kvittert innen 60 eller 180 sekunder.",
        "alerted": "Varslet",
        "acknowledged": "Kvittert",
        "not_acknowledged": "Ikke kvittert",
        "median": "Median",
        "p90": "90-persentil",
        "slowest": "Tregeste",
        "within": "Innen {s} s",
        "per_day": "Alarmer per dag",
        "per_day_desc": "Antall alarmer per dag i {month}",
        "by_location": "Per sted",
        "location": "Sted",
        "by_reason": "Avviste oppstarter etter årsak",
        "reason": "Årsak",
        "count": "Antall",
        "where": "Hvor",
        "by_kind": "Alarmer etter type",
        "kind": "Type",
        "expiring": "Går ut innen 30 dager etter månedens slutt",
        "expiring_none": "Ingen risikovurderinger eller HMS-opplæringer går ut i perioden.",
        "what": "Hva",
        "concerns": "Gjelder",
        "valid_until": "Gyldig til og med",
        "status": "Status",
        "assessment": "Risikovurdering {id}",
        "training": "HMS-opplæring",
        "expired": "utløpt",
        "ends_in": "går ut om {n} dager",
        "ends_in_one": "går ut om 1 dag",
        "ends_today": "siste gyldige dag er månedens siste",
        "nothing": "Ingen registreringer denne måneden.",
        "none": "Ingen.",
        "sign_title": "Gjennomgått av leder",
        "sign_text": "Jeg har gått gjennom rapporten og fulgt opp avvikene.",
        "name": "Navn",
        "date": "Dato",
        "signature": "Underskrift",
        "prev": "Forrige måned",
        "next": "Neste måned",
        "csv": "Last ned CSV",
        "removed_location": "{id} (ikke lenger i oppsettet)",
        "dash": "–",
        "col_sessions": "Økter",
        "col_hours": "Timer",
        "col_denied": "Avviste",
        "col_median": "Median kvittering",
        "col_missed": "Uteblitte innsjekker",
        "col_unattended": "Dør åpnet uten økt",
    },
    "en": {
        "title": "Monthly lone-work report",
        "site": "Site",
        "produced": "Produced {when}",
        "zone": "All times in the {zone} time zone.",
        "rule": "A session or an alarm belongs to the month it began in.",
        "summary": "Summary for the whole site",
        "whole_site": "Whole site",
        "sessions": "Lone-work sessions",
        "ongoing": "{n} still running",
        "hours": "Hours of lone work",
        "denied": "Denied starts",
        "alarms": "Alarms",
        "cancelled": "{n} cancelled by the worker during the pre-alarm",
        "unlocated": "{n} with no known location",
        "missed": "Missed check-ins",
        "unattended": "Doors opened after hours with no session",
        "ack": "Time from alarm to acknowledgement",
        "ack_note": "Counted from when the guards were alerted. An alarm never acknowledged "
        "counts as not acknowledged within 60 or 180 seconds.",
        "alerted": "Alerted",
        "acknowledged": "Acknowledged",
        "not_acknowledged": "Not acknowledged",
        "median": "Median",
        "p90": "90th percentile",
        "slowest": "Slowest",
        "within": "Within {s} s",
        "per_day": "Alarms per day",
        "per_day_desc": "Number of alarms per day in {month}",
        "by_location": "By location",
        "location": "Location",
        "by_reason": "Denied starts by reason",
        "reason": "Reason",
        "count": "Count",
        "where": "Where",
        "by_kind": "Alarms by kind",
        "kind": "Kind",
        "expiring": "Running out within 30 days of the month's end",
        "expiring_none": "No risk assessment or HSE training runs out in the period.",
        "what": "What",
        "concerns": "Concerns",
        "valid_until": "Valid through",
        "status": "Status",
        "assessment": "Risk assessment {id}",
        "training": "HSE training",
        "expired": "expired",
        "ends_in": "runs out in {n} days",
        "ends_in_one": "runs out in 1 day",
        "ends_today": "its last valid day is the month's last",
        "nothing": "Nothing recorded this month.",
        "none": "None.",
        "sign_title": "Reviewed by the head of unit",
        "sign_text": "I have reviewed this report and followed up what it shows.",
        "name": "Name",
        "date": "Date",
        "signature": "Signature",
        "prev": "Previous month",
        "next": "Next month",
        "csv": "Download CSV",
        "removed_location": "{id} (no longer configured)",
        "dash": "–",
        "col_sessions": "Sessions",
        "col_hours": "Hours",
        "col_denied": "Denied",
        "col_median": "Median to ack",
        "col_missed": "Missed check-ins",
        "col_unattended": "Doors after hours",
    },
}

# Alarm kinds as a report's table names them (shorter than an SMS headline).
_KINDS: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "sos": "SOS (nødknapp)",
        "man_down": "Mann ned",
        "missed_checkin": "Uteblitt innsjekk",
        "session_overrun": "Overskredet tid",
        "device_offline": "Alarmenhet uten forbindelse",
        "contact_lost": "Mistet kontakt med alarmenhetene",
        "duress": "Trusselalarm",
    },
    "en": {
        "sos": "SOS (panic button)",
        "man_down": "Man down",
        "missed_checkin": "Missed check-in",
        "session_overrun": "Session overrun",
        "device_offline": "Alarm device offline",
        "contact_lost": "Lost contact with the alarm devices",
        "duress": "Duress",
    },
}

_MONTHS: Final = {
    "nb": (
        "januar februar mars april mai juni juli august september oktober november desember"
    ).split(),
    "en": (
        "January February March April May June July August September October November December"
    ).split(),
}


def words(lang: str) -> dict[str, str]:
    return _T[lang if lang in _T else "nb"]


def kind_label(lang: str, kind: str) -> str:
    table = _KINDS["en" if lang == "en" else "nb"]
    if kind in table:
        return table[kind]
    try:
        return texts.kind_name("en" if lang == "en" else "nb", kind)
    except ValueError:
        return kind


def reason_label(lang: str, reason: str) -> str:
    text = texts.reason_name("en" if lang == "en" else "nb", reason)
    return text[:1].upper() + text[1:]


def month_name(lang: str, year: int, month: int) -> str:
    return f"{_MONTHS['en' if lang == 'en' else 'nb'][month - 1]} {year}"


def day_text(lang: str, day: dt.date) -> str:
    if lang == "en":
        return f"{day.day} {_MONTHS['en'][day.month - 1]} {day.year}"
    return f"{day.day}. {_MONTHS['nb'][day.month - 1]} {day.year}"


def number(lang: str, value: float, decimals: int = 1) -> str:
    text = f"{value:,.{decimals}f}"
    if lang == "en":
        return text
    # Norwegian: a space between thousands and a decimal comma
    return text.replace(",", " ").replace(".", ",")


def share(lang: str, value: float | None) -> str:
    if value is None:
        return "–"
    pct = round(value * 100)
    return f"{pct} %" if lang != "en" else f"{pct}%"


def duration(lang: str, seconds: float | None) -> str:
    """42 s · 2 min 05 s · 1 t 03 min (en: 1 h 03 min)."""
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    hour = "t" if lang != "en" else "h"
    return f"{s // 3600} {hour} {(s % 3600) // 60:02d} min"
