"""Guards' SMS replies: only a plain "OK" with an optional 4-digit code acknowledges."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaa_gateway.domain.replies import SmsReply, parse_sms_reply


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("OK 1234", "1234"),
        ("ok1234", "1234"),
        (" Ok  1234 ", "1234"),
        ("oK 0000", "0000"),
        ("OK", None),
        ("ok", None),
        ("  OK \n", None),
        ("ok, 1234", "1234"),
        ("OK #1234", "1234"),
        ("OK: 1234", "1234"),
        ("OK - 1234", "1234"),
        ("OK 1234.", "1234"),
        ("OK 1234!", "1234"),
        ("OK.", None),
        ("OK!", None),
        ("OK\n1234", "1234"),
        ("OK\u00a01234", "1234"),  # a phone's no-break space
    ],
)
def test_accepted(body: str, code: str | None) -> None:
    assert parse_sms_reply(body) == SmsReply(code=code)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   ",
        "OK 12345",
        "OK 12",
        "OK 123",
        "OK 1234 5678",
        "1234",
        "OK 1234 takk, kommer",
        "Jeg kommer, OK 1234",
        "ikke OK 1234",
        "okay",
        "OKK 1234",
        "O K 1234",
        "OK abcd",
        "OK ١٢٣٤",  # Arabic-Indic digits are not a code
        "O\u212a 1234",  # Kelvin sign, which re.IGNORECASE would take for k
        "NEI",
        "OK " + "1" * 10_000,
    ],
)
def test_rejected(body: str) -> None:
    assert parse_sms_reply(body) is None


@given(st.text())
def test_any_text_never_crashes(body: str) -> None:
    r = parse_sms_reply(body)
    assert (
        r is None or r.code is None or (len(r.code) == 4 and r.code.isascii() and r.code.isdigit())
    )


@given(
    code=st.from_regex(r"[0-9]{4}", fullmatch=True),
    ok=st.sampled_from(["OK", "ok", "Ok", "oK"]),
    lead=st.sampled_from(["", " ", "  ", "\n", "\t "]),
    sep=st.sampled_from(["", " ", "  ", ", ", " #", ": ", "-", ",", " , "]),
    tail=st.sampled_from(["", " ", ".", "!", " .", "\n"]),
)
def test_forgiving_forms_keep_the_code(code: str, ok: str, lead: str, sep: str, tail: str) -> None:
    assert parse_sms_reply(f"{lead}{ok}{sep}{code}{tail}") == SmsReply(code=code)


@given(
    code=st.from_regex(r"[0-9]{4}", fullmatch=True),
    words=st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=30),
)
def test_a_code_among_words_is_not_an_ack(code: str, words: str) -> None:
    assert parse_sms_reply(f"OK {code} {words}") is None
    assert parse_sms_reply(f"{words} OK {code}") is None


def test_huge_bodies_are_cheap() -> None:
    began = time.perf_counter()
    for body in ("OK" + " " * 1_000_000 + "x", " " * 1_000_000, "OK 1234" * 100_000):
        assert parse_sms_reply(body) is None
    assert time.perf_counter() - began < 1.0


def test_non_string_is_none() -> None:
    assert parse_sms_reply(None) is None  # type: ignore[arg-type]
    assert parse_sms_reply(b"OK 1234") is None  # type: ignore[arg-type]
