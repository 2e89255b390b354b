"""The replies to guards: acknowledgements accepted, refused or already made, and the words for
the gateway's own problems (its gateway_degraded notice), in Norwegian bokmål and English.

Pure functions, as in `texts`, whose checks and name handling they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from jaa_gateway.domain.texts import _KIND_SHORT, Lang, _code, _kind, _lang, _name, _worker

AckProblem = Literal["unknown_code", "ambiguous", "no_open_alarm", "not_allowed", "not_understood"]


def ack_confirmation(lang: Lang, code: str, kind: str, worker_name: str | None) -> str:
    """Reply to the guard whose acknowledgement was accepted."""
    code = _code(code)
    what = _kind(lang, kind, _KIND_SHORT)
    if kind == "contact_lost":  # names nobody: the guard follows up, nobody to rush to
        if lang == "nb":
            return (
                f"Kvittert: {what} {code}. Du er registrert som den som følger opp. "
                "De andre blir ikke varslet mer."
            )
        return (
            f"Acknowledged: {what} {code}. You are recorded as following up. "
            "Nobody else will be paged."
        )
    who = _worker(lang, worker_name)
    if lang == "nb":
        return (
            f"Kvittert: {what} {code} ({who}). Du er registrert som den som rykker ut. "
            "De andre blir ikke varslet mer."
        )
    return (
        f"Acknowledged: {what} {code} ({who}). You are recorded as responding. "
        "Nobody else will be paged."
    )


def ack_voice_confirmation(lang: Lang) -> str:
    if _lang(lang) == "nb":
        return "Takk. Alarmen er kvittert, og du er registrert som den som rykker ut."
    return "Thank you. The alarm is acknowledged, and you are recorded as responding."


_ACK_ERRORS: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "unknown_code": (
            "Fant ingen åpen alarm med den koden. Svar OK og den firesifrede koden "
            "fra alarmmeldingen."
        ),
        "ambiguous": (
            "Du har flere åpne alarmer. Svar OK og den firesifrede koden fra alarmmeldingen "
            "du vil kvittere."
        ),
        "no_open_alarm": "Du har ingen åpen alarm å kvittere.",
        "not_allowed": "Du er ikke varslet om denne alarmen og kan ikke kvittere den.",
        "not_understood": (
            "Forstod ikke svaret. Svar OK og den firesifrede koden fra alarmmeldingen "
            "for å kvittere."
        ),
    },
    "en": {
        "unknown_code": (
            "No open alarm has that code. Reply OK and the 4-digit code from the alarm message."
        ),
        "ambiguous": (
            "You have more than one open alarm. Reply OK and the 4-digit code from the alarm "
            "message you are acknowledging."
        ),
        "no_open_alarm": "You have no open alarm to acknowledge.",
        "not_allowed": "You were not notified of this alarm and cannot acknowledge it.",
        "not_understood": (
            "Reply not understood. Reply OK and the 4-digit code from the alarm message "
            "to acknowledge."
        ),
    },
}


_DEGRADED: Final[dict[str, dict[str, str]]] = {
    "nb": {
        "notifications_failing": "SMS og oppringinger feiler",
        "database_unwritable": "databasen kan ikke skrives til",
        "task_failed": "en del av gatewayen feilet og ble startet på nytt",
        "deadline_failed": "en alarm- eller øktfrist feiler gang på gang",
    },
    "en": {
        "notifications_failing": "SMS and calls are failing",
        "database_unwritable": "the database cannot be written",
        "task_failed": "a part of the gateway failed and was restarted",
        "deadline_failed": "an alarm or session deadline keeps failing",
    },
}


def degraded_reasons(lang: Lang, codes: Sequence[str]) -> str:
    """The gateway's own problems in words, for its gateway_degraded notice."""
    table = _DEGRADED[_lang(lang)]
    return ", ".join(table.get(c, c) for c in codes)


def already_acknowledged(lang: Lang, code: str, by_name: str | None) -> str:
    """Reply to a guard whose OK came after someone else's: help is already on its way."""
    code = _code(code)
    who = _name(by_name)
    if lang == "nb":
        by = f" av {who}" if who else ""
        return f"Alarm {code} er allerede kvittert{by}. Ingen flere varsler sendes."
    by = f" by {who}" if who else ""
    return f"Alarm {code} was already acknowledged{by}. No more notifications are sent."


def ack_reply_error(lang: Lang, problem: AckProblem) -> str:
    """Reply to an SMS that could not acknowledge anything."""
    try:
        return _ACK_ERRORS[_lang(lang)][problem]
    except KeyError:
        raise ValueError(f"unknown acknowledgement problem {problem!r}") from None
