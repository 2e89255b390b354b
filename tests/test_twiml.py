"""TwiML for alarm calls and webhook answers, checked by parsing the XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaa_gateway.notify.base import MAX_TWIML_CHARS
from jaa_gateway.notify.twiml import (
    call_twiml,
    default_closing,
    sms_reply,
    spoken_text,
    voice_regather,
    voice_reply,
)

ACTION = "https://jaa.example.org/twilio/voice/A-17"
TEXTS = ["Alarm: SOS fra Ola Nordmann i Realfagbygget D1-123.", "Trykk 1 for å bekrefte."]


def _children(xml: str) -> list[ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return list(root)


def _assert_gather(el: ET.Element, texts: list[str], lang: str) -> None:
    assert el.tag == "Gather"
    assert el.get("numDigits") == "1"
    assert el.get("action") == ACTION
    assert el.get("method") == "POST"
    says = list(el)
    assert [s.tag for s in says] == ["Say"] * len(texts)
    assert [s.text for s in says] == texts
    assert all(s.get("language") == lang for s in says)


def test_call_reads_the_texts_in_a_gather_repeated_once_then_hangs_up() -> None:
    xml = call_twiml(TEXTS, "nb-NO", ACTION)
    first, second, closing, hangup = _children(xml)
    _assert_gather(first, TEXTS, "nb-NO")
    _assert_gather(second, TEXTS, "nb-NO")
    assert ET.tostring(first) == ET.tostring(second)
    assert closing.tag == "Say" and closing.get("language") == "nb-NO"
    assert closing.text == default_closing("nb-NO")
    assert hangup.tag == "Hangup"


def test_call_in_english_with_a_custom_closing() -> None:
    xml = call_twiml(["Alarm."], "en-GB", ACTION, closing="Goodbye.")
    first, _, closing, _ = _children(xml)
    _assert_gather(first, ["Alarm."], "en-GB")
    assert closing.text == "Goodbye."
    assert default_closing("en-GB") != default_closing("nb-NO")


def test_markup_in_texts_is_escaped_not_interpreted() -> None:
    text = 'Ola & Kari <b>"lab"</b> </Say><Hangup/>'
    xml = call_twiml([text], "en-GB", ACTION + "?a=1&b=2")
    gather = _children(xml)[0]
    assert gather.get("action") == ACTION + "?a=1&b=2"
    assert [s.text for s in gather] == [text]
    assert len(_children(xml)) == 4


def test_control_characters_are_removed_and_whitespace_collapsed() -> None:
    xml = call_twiml(["Ola\x00 Nord\x1bmann\n\n i  lab"], "nb-NO", ACTION)
    assert spoken_text(xml) == ["Ola Nord mann i lab"]


@pytest.mark.parametrize(
    ("texts", "lang", "url", "error"),
    [
        ([], "nb-NO", ACTION, ValueError),
        (["  "], "nb-NO", ACTION, ValueError),
        (["ok", "\x00"], "nb-NO", ACTION, ValueError),
        ("a bare string", "nb-NO", ACTION, TypeError),
        (["ok"], "norsk", ACTION, ValueError),
        (["ok"], "nb_NO", ACTION, ValueError),
        (["ok"], "nb-NO", "/twilio/voice/A-17", ValueError),
        (["ok"], "nb-NO", "ftp://host/x", ValueError),
    ],
)
def test_bad_call_input_is_refused(texts: list[str], lang: str, url: str, error: type) -> None:
    with pytest.raises(error):
        call_twiml(texts, lang, url)


def test_long_texts_drop_the_repetition_before_exceeding_twilio_limit() -> None:
    long_text = "Alarm. " * 400  # ~2800 characters: fits once, not twice
    xml = call_twiml([long_text.strip()], "en-GB", ACTION)
    assert len(xml) <= MAX_TWIML_CHARS
    tags = [el.tag for el in _children(xml)]
    assert tags == ["Gather", "Say", "Hangup"]


def test_texts_too_long_for_one_call_are_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        call_twiml(["Alarm. " * 700], "en-GB", ACTION)


def test_regather_offers_one_more_gather() -> None:
    xml = voice_regather(["Feil tast. Trykk 1 for å bekrefte."], "nb-NO", ACTION)
    gather, closing, hangup = _children(xml)
    _assert_gather(gather, ["Feil tast. Trykk 1 for å bekrefte."], "nb-NO")
    assert (closing.tag, hangup.tag) == ("Say", "Hangup")


def test_voice_reply_says_and_hangs_up() -> None:
    say, hangup = _children(voice_reply("Bekreftet. Takk.", "nb-NO"))
    assert (say.tag, say.text, say.get("language")) == ("Say", "Bekreftet. Takk.", "nb-NO")
    assert hangup.tag == "Hangup"
    with pytest.raises(ValueError):
        voice_reply("", "nb-NO")


def test_sms_reply_with_text_and_empty() -> None:
    (message,) = _children(sms_reply("Alarm A-17 bekreftet.\nTakk, Kari."))
    assert message.tag == "Message"
    assert message.text == "Alarm A-17 bekreftet.\nTakk, Kari."
    assert _children(sms_reply(None)) == []
    with pytest.raises(ValueError):
        sms_reply("   ")


def test_spoken_text_reads_the_first_gather_only() -> None:
    assert spoken_text(call_twiml(TEXTS, "nb-NO", ACTION)) == TEXTS
    assert spoken_text(voice_reply("Takk.", "en-GB")) == ["Takk."]
    with pytest.raises(ValueError, match="well-formed"):
        spoken_text("<Response><Say>")
    with pytest.raises(ValueError, match="root"):
        spoken_text("<Say>hei</Say>")


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=80
)


def _xml_allowed(c: str) -> bool:
    # XML 1.0 Char production.
    o = ord(c)
    return (
        o in (0x9, 0xA, 0xD)
        or 0x20 <= o <= 0xD7FF
        or 0xE000 <= o <= 0xFFFD
        or 0x10000 <= o <= 0x10FFFF
    )


def _expected_spoken(text: str) -> str:
    return " ".join("".join(c if _xml_allowed(c) else " " for c in text).split())


@given(texts=st.lists(_text, min_size=1, max_size=4), lang=st.sampled_from(["nb-NO", "en-GB"]))
def test_any_text_gives_valid_twiml_that_speaks_it(texts: list[str], lang: str) -> None:
    expected = [_expected_spoken(t) for t in texts]
    if not all(expected):
        with pytest.raises(ValueError):
            call_twiml(texts, lang, ACTION)
        return
    xml = call_twiml(texts, lang, ACTION)
    children = _children(xml)  # parses: the document is well-formed whatever the input
    assert [c.tag for c in children] == ["Gather", "Gather", "Say", "Hangup"]
    assert spoken_text(xml) == expected
