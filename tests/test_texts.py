"""SMS and voice texts in nb and en."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaa_gateway.domain import guard_texts, texts
from jaa_gateway.domain.gate import DENY_REASONS

LANGS = ("nb", "en")
ALARM_KINDS = ("sos", "man_down", "missed_checkin", "session_overrun", "device_offline")
WORKER = "Ola Nordmann"
PLACE = "Realfagbygget D1-123 (kjemilab)"
LINK = "https://maps.google.com/?q=63.41900,10.40200"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", ALARM_KINDS)
def test_alarm_sms_names_everything(lang: str, kind: str) -> None:
    text = texts.alarm_sms(lang, kind, WORKER, PLACE, "1234", 63.419, 10.402)  # type: ignore[arg-type]
    assert WORKER in text
    assert PLACE in text
    assert LINK in text
    assert texts.kind_name(lang, kind) in text  # type: ignore[arg-type]
    assert len(text) < 300


def test_alarm_sms_exact_nb() -> None:
    assert texts.alarm_sms("nb", "sos", WORKER, PLACE, "1234", 63.419, 10.402) == (
        "JAA-ALARM: SOS, nødknappen er trykket\n"
        "Person: Ola Nordmann\n"
        "Sted: Realfagbygget D1-123 (kjemilab)\n"
        f"Kart: {LINK}\n"
        "Svar OK 1234 for å kvittere"
    )


def test_alarm_sms_exact_en() -> None:
    assert texts.alarm_sms("en", "man_down", WORKER, PLACE, "0042", None, None) == (
        "JAA ALARM: Man down (fall or no movement)\n"
        "Worker: Ola Nordmann\n"
        "Location: Realfagbygget D1-123 (kjemilab)\n"
        "Reply OK 0042 to acknowledge"
    )


def test_alarm_sms_kinds_read_differently() -> None:
    for lang in LANGS:
        bodies = {texts.alarm_sms(lang, k, WORKER, PLACE, "1234", None, None) for k in ALARM_KINDS}  # type: ignore[arg-type]
        assert len(bodies) == len(ALARM_KINDS)


def test_alarm_sms_ack_instruction() -> None:
    assert "Svar OK 1234 for å kvittere" in texts.alarm_sms(
        "nb", "sos", WORKER, PLACE, "1234", None, None
    )
    assert "Reply OK 1234 to acknowledge" in texts.alarm_sms(
        "en", "sos", WORKER, PLACE, "1234", None, None
    )


def test_alarm_sms_without_position_has_no_link() -> None:
    for lang in LANGS:
        text = texts.alarm_sms(lang, "sos", WORKER, PLACE, "1234", None, None)  # type: ignore[arg-type]
        assert "maps.google.com" not in text
        text = texts.alarm_sms(lang, "sos", WORKER, PLACE, "1234", 63.4, None)  # type: ignore[arg-type]
        assert "maps.google.com" not in text


def test_sos_outside_a_session_reads_well() -> None:
    nb = texts.alarm_sms("nb", "sos", WORKER, None, "1234", 63.419, 10.402)
    assert f"ukjent sted, siste kjente posisjon {LINK}" in nb
    en = texts.alarm_sms("en", "sos", WORKER, None, "1234", 63.419, 10.402)
    assert f"unknown, last known position {LINK}" in en
    nb = texts.alarm_sms("nb", "sos", None, None, "1234", None, None)
    assert "ukjent person" in nb and "ukjent sted, ingen kjent posisjon" in nb
    assert "None" not in nb
    en = texts.alarm_sms("en", "sos", None, None, "1234", None, None)
    assert "unknown person" in en and "no known position" in en
    assert "None" not in en


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(float("nan"), 10.0), (91.0, 10.0), (63.0, 181.0), (float("inf"), 0.0)],
)
def test_impossible_position_gives_no_link_but_still_a_text(lat: float, lon: float) -> None:
    text = texts.alarm_sms("nb", "sos", WORKER, PLACE, "1234", lat, lon)
    assert "maps.google.com" not in text
    assert "Svar OK 1234" in text


def test_map_link_negative_coordinates() -> None:
    assert texts.map_link(-33.8688, 151.2093) == "https://maps.google.com/?q=-33.86880,151.20930"


def test_long_names_are_clipped_to_keep_the_sms_short() -> None:
    text = texts.alarm_sms("nb", "man_down", "Å" * 200, "Ø" * 200, "1234", -89.99999, -179.99999)
    assert len(text) < 300
    assert "…" in text
    assert text.endswith("Svar OK 1234 for å kvittere")


def test_newlines_in_names_do_not_break_lines() -> None:
    text = texts.alarm_sms("en", "sos", "Ola\nNordmann", "Lab\r\n1", "1234", None, None)
    assert "Worker: Ola Nordmann\n" in text and "Location: Lab 1\n" in text


@pytest.mark.parametrize("code", ["123", "12345", "abcd", "12 3", "١٢٣٤"])
def test_bad_code_is_an_error(code: str) -> None:
    with pytest.raises(ValueError, match="4 digits"):
        texts.alarm_sms("nb", "sos", WORKER, PLACE, code, None, None)


def test_unknown_language_and_kind_are_errors() -> None:
    with pytest.raises(ValueError, match="language"):
        texts.alarm_sms("de", "sos", WORKER, PLACE, "1234", None, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        texts.alarm_sms("nb", "fire", WORKER, PLACE, "1234", None, None)
    with pytest.raises(ValueError, match="language"):
        guard_texts.ack_voice_confirmation("sv")  # type: ignore[arg-type]


@given(
    worker=st.none() | st.text(max_size=300),
    place=st.none() | st.text(max_size=300),
    lat=st.none() | st.floats(allow_nan=True),
    lon=st.none() | st.floats(allow_nan=True),
    code=st.from_regex(r"[0-9]{4}", fullmatch=True),
    lang=st.sampled_from(LANGS),
    kind=st.sampled_from(ALARM_KINDS),
)
def test_alarm_sms_never_fails_and_stays_short(
    worker: str | None,
    place: str | None,
    lat: float | None,
    lon: float | None,
    code: str,
    lang: str,
    kind: str,
) -> None:
    text = texts.alarm_sms(lang, kind, worker, place, code, lat, lon)  # type: ignore[arg-type]
    assert f"OK {code}" in text
    assert len(text) < 300


# --------------------------------------------------------------------------- voice


@pytest.mark.parametrize("kind", ALARM_KINDS)
def test_alarm_voice(kind: str) -> None:
    nb = texts.alarm_voice("nb", kind, WORKER, PLACE)
    assert nb.endswith("Trykk 1 for å kvittere at du rykker ut.")
    assert WORKER in nb and PLACE in nb
    en = texts.alarm_voice("en", kind, WORKER, PLACE)
    assert en.endswith("Press 1 to acknowledge.")
    assert WORKER in en and PLACE in en


def test_alarm_voice_unknowns() -> None:
    assert "ukjent person" in texts.alarm_voice("nb", "sos", None, None)
    assert "unknown location" in texts.alarm_voice("en", "sos", None, None)


def test_voice_languages() -> None:
    assert texts.VOICE_LANG == {"nb": "nb-NO", "en": "en-GB"}


# --------------------------------------------------------------------------- other texts


def test_worker_ok_sms_still_asks_for_ack() -> None:
    nb = texts.worker_ok_sms("nb", "man_down", WORKER, PLACE, "4321")
    assert WORKER in nb and PLACE in nb and "OK 4321" in nb and "fortsatt åpen" in nb
    en = texts.worker_ok_sms("en", "man_down", WORKER, PLACE, "4321")
    assert WORKER in en and "reports being OK" in en and "still open" in en and "OK 4321" in en


def test_unattended_entry_notice() -> None:
    nb = texts.notice_sms("nb", "unattended_entry", PLACE, "door-d1-123", "22:14")
    assert PLACE in nb and "door-d1-123" in nb and "22:14" in nb and "Trenger ikke kvitteres" in nb
    en = texts.notice_sms("en", "unattended_entry", PLACE, "door-d1-123", "22:14")
    assert PLACE in en and "door-d1-123" in en and "22:14" in en and "No reply needed" in en
    assert "OK" not in en  # a notice asks for no acknowledgement
    unknown = texts.notice_sms("nb", "unattended_entry", None, None, "22:14")
    assert "ukjent sted" in unknown and "None" not in unknown


def test_gateway_degraded_notice() -> None:
    nb = texts.notice_sms("nb", "gateway_degraded", None, None, "03:10", reason="MQTT nede")
    assert "redusert funksjon: MQTT nede" in nb and "03:10" in nb
    en = texts.notice_sms("en", "gateway_degraded", None, None, "03:10", reason="database down")
    assert "degraded: database down" in en
    assert "degraded." in texts.notice_sms("en", "gateway_degraded", None, None, "03:10")


def test_notice_for_an_alarm_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="notice"):
        texts.notice_sms("nb", "sos", PLACE, None, "22:14")


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("reason", DENY_REASONS)
def test_denial_sms_names_reason_in_words(lang: str, reason: str) -> None:
    text = texts.denial_sms(lang, WORKER, PLACE, reason, "Some detail.")  # type: ignore[arg-type]
    assert WORKER in text and PLACE in text
    words = texts.reason_name(lang, reason)  # type: ignore[arg-type]
    assert words != reason and words in text
    # the English detail goes with English texts only; in nb the reason says it in Norwegian
    assert ("Some detail." in text) == (lang == "en")


def test_denial_sms_exact() -> None:
    assert texts.denial_sms(
        "nb", WORKER, PLACE, "training_expired", "The HSE training of Ola expired on 2026-09-08."
    ) == (
        "JAA: Ola Nordmann fikk ikke starte alenearbeid i Realfagbygget D1-123 (kjemilab): "
        "HMS-opplæringen mangler eller er utløpt."
    )


def test_reason_words_are_distinct() -> None:
    for lang in LANGS:
        words = [texts.reason_name(lang, r) for r in DENY_REASONS]  # type: ignore[arg-type]
        assert len(set(words)) == len(words)


def test_ack_texts() -> None:
    nb = guard_texts.ack_confirmation("nb", "1234", "sos", WORKER)
    assert "Kvittert" in nb and "1234" in nb and WORKER in nb and "SOS-alarm" in nb
    en = guard_texts.ack_confirmation("en", "1234", "missed_checkin", WORKER)
    assert "Acknowledged" in en and "1234" in en and "missed check-in" in en
    assert "kvittert" in guard_texts.ack_voice_confirmation("nb")
    assert "acknowledged" in guard_texts.ack_voice_confirmation("en")


def test_ack_reply_errors_are_distinct_per_language() -> None:
    problems = ("unknown_code", "ambiguous", "no_open_alarm", "not_allowed", "not_understood")
    for lang in LANGS:
        bodies = [guard_texts.ack_reply_error(lang, p) for p in problems]  # type: ignore[arg-type]
        assert len(set(bodies)) == len(problems)
    assert guard_texts.ack_reply_error("nb", "no_open_alarm") != guard_texts.ack_reply_error(
        "en", "no_open_alarm"
    )
    with pytest.raises(ValueError):
        guard_texts.ack_reply_error("nb", "bogus")  # type: ignore[arg-type]
