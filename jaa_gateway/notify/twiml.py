"""TwiML for alarm calls and webhook answers, built with twilio's own builders.

A call reads the alarm text inside ``<Gather numDigits="1">`` so that a single key press posts to
the voice webhook; if nobody presses anything the text is read once more, then the call closes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import urlsplit

from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from jaa_gateway.notify.base import MAX_TWIML_CHARS

# Seconds Twilio waits for a key after the last <Say> of a Gather.
GATHER_TIMEOUT_S = 6

_LANG_RE = re.compile(r"[a-z]{2,3}-[A-Z]{2}")
# Characters XML 1.0 cannot carry; ElementTree would write them and produce a broken document.
_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_CLOSING = {
    "nb": "Ingen tast ble trykket. Alarmen er ikke bekreftet.",
    "en": "No key was pressed. The alarm has not been acknowledged.",
}


def call_twiml(
    texts: Sequence[str], voice_lang: str, action_url: str, *, closing: str | None = None
) -> str:
    """TwiML for an alarm call: the texts in a one-digit Gather, repeated once, then a goodbye.

    When the repeated form would exceed Twilio's 4000-character limit the texts are read only once
    (a call that reads once beats a call Twilio refuses); ValueError if even that does not fit.
    """
    says = _clean_texts(texts)
    lang = _check_lang(voice_lang)
    _check_url(action_url)
    goodbye = _clean(closing) if closing is not None else default_closing(lang)
    for rounds in (2, 1):
        response = VoiceResponse()
        for _ in range(rounds):
            _gather(response, says, lang, action_url)
        response.say(goodbye, language=lang)
        response.hangup()
        xml = str(response)
        if len(xml) <= MAX_TWIML_CHARS:
            return xml
    raise ValueError(
        f"the call text is too long for one call: {len(xml)} characters of TwiML, "
        f"at most {MAX_TWIML_CHARS}"
    )


def voice_regather(
    texts: Sequence[str], voice_lang: str, action_url: str, *, closing: str | None = None
) -> str:
    """Answer to a wrong key: say the texts (e.g. "press 1 to acknowledge") in one more Gather."""
    says = _clean_texts(texts)
    lang = _check_lang(voice_lang)
    _check_url(action_url)
    response = VoiceResponse()
    _gather(response, says, lang, action_url)
    response.say(_clean(closing) if closing is not None else default_closing(lang), language=lang)
    response.hangup()
    return str(response)


def voice_reply(text: str, voice_lang: str) -> str:
    """A final spoken answer (e.g. "acknowledged, help is on the way"), then hang up."""
    (say,) = _clean_texts([text])
    lang = _check_lang(voice_lang)
    response = VoiceResponse()
    response.say(say, language=lang)
    response.hangup()
    return str(response)


def sms_reply(text: str | None) -> str:
    """Answer to an incoming SMS webhook: one reply message, or an empty response (no reply)."""
    response = MessagingResponse()
    if text is not None:
        # Line breaks are kept: an SMS reply may be several short lines.
        body = _XML_INVALID_RE.sub(" ", text).strip()
        if not body:
            raise ValueError("an SMS reply text is empty")
        response.message(body)
    return str(response)


def spoken_text(twiml: str) -> list[str]:
    """The texts a call would speak first (the first Gather's <Say>s; every <Say> if none).

    ValueError when the document is not TwiML.
    """
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ValueError(f"the TwiML is not well-formed XML: {exc}") from exc
    if root.tag != "Response":
        raise ValueError(f"the TwiML root element is <{root.tag}>, not <Response>")
    gather = root.find("Gather")
    scope = gather if gather is not None else root
    return [(say.text or "").strip() for say in scope.iter("Say")]


def default_closing(voice_lang: str) -> str:
    return _CLOSING["nb"] if voice_lang[:2] in ("nb", "no", "nn") else _CLOSING["en"]


def _gather(response: VoiceResponse, says: list[str], lang: str, action_url: str) -> None:
    gather = response.gather(
        num_digits=1, action=action_url, method="POST", timeout=GATHER_TIMEOUT_S
    )
    for say in says:
        gather.say(say, language=lang)


def _clean(text: str) -> str:
    cleaned = " ".join(_XML_INVALID_RE.sub(" ", text).split())
    if not cleaned:
        raise ValueError("a spoken or SMS text is empty")
    return cleaned


def _clean_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # A bare string is a Sequence[str] of characters: almost certainly a caller's mistake.
        raise TypeError("texts must be a sequence of strings, not one string")
    if not texts:
        raise ValueError("there is no text to speak")
    return [_clean(t) for t in texts]


def _check_lang(voice_lang: str) -> str:
    if not _LANG_RE.fullmatch(voice_lang):
        raise ValueError(f"{voice_lang!r} is not a voice language like 'nb-NO' or 'en-GB'")
    return voice_lang


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
