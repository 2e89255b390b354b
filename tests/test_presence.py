"""The presence rule (domain/presence.py) at exact instants, and the contact_lost texts."""

from __future__ import annotations

import pytest

from jaa_gateway.domain import guard_texts, texts
from jaa_gateway.domain import presence as p

T = 120.0  # device_timeout
NOW = 1_800_000_000.0  # any instant: the rule only compares differences


def watches(silent_for: list[float]) -> dict[str, float]:
    """Sessions s0, s1, ... whose devices were last heard `silent_for[i]` seconds before NOW."""
    return {f"s{i}": NOW - d for i, d in enumerate(silent_for)}


def up(ws: dict[str, float], session: str = "s0", now: float = NOW) -> p.Verdict:
    return p.judge(
        ws, session, now=now, timeout=T, broker_up=True, outage_start=None, episode=False
    )


# ---------------------------------------------------------------- mass silence, broker up


@pytest.mark.parametrize(
    ("silent", "watched", "common"),
    [
        (1, 1, False),
        (1, 5, False),  # one device alone: its own device_offline
        (2, 2, False),  # never fewer than three
        (2, 3, False),
        (3, 3, True),
        (3, 4, True),
        (3, 5, True),
        (3, 6, False),  # half is not "more than half"
        (4, 6, True),
        (4, 8, False),
        (5, 9, True),
        (500, 1000, False),
        (501, 1000, True),
    ],
)
def test_threshold(silent: int, watched: int, common: bool) -> None:
    ws = watches([T] + [T / 2 + 1] * (silent - 1) + [1.0] * (watched - silent))
    verdict = up(ws)
    if common:
        assert verdict == p.Common(p.Cause.SILENCE, silent)
    else:
        assert verdict == p.Offline()
    assert p.is_mass_silence(silent, watched) is common


def test_silent_is_strictly_more_than_half_a_timeout() -> None:
    # two others exactly at half a timeout are not silent yet; a millisecond later they are
    at_half = watches([T, T / 2, T / 2, 0.0])
    assert up(at_half) == p.Offline()
    later = {s: v - 0.001 for s, v in at_half.items()}
    assert up(later) == p.Common(p.Cause.SILENCE, 3)
    assert not p.is_silent(NOW - T / 2, NOW, T)
    assert p.is_silent(NOW - T / 2 - 0.001, NOW, T)


def test_a_network_cut_is_seen_at_the_first_lapse() -> None:
    """Five devices heartbeating every 30 s (a quarter of device_timeout), cut off at NOW - 90:
    when the first watch lapses (heard last 120 s ago), the others have been silent 90-120 s."""
    cut = NOW - 90.0
    ws = {f"s{i}": cut - 30.0 + 7.5 * i for i in range(5)}
    ws["s0"] = NOW - T  # the first to lapse, now
    assert up(ws) == p.Common(p.Cause.SILENCE, 5)
    # with one device heard (the cut spared it) 4 of 5 are still most of them
    assert up(ws | {"s4": NOW - 3.0}) == p.Common(p.Cause.SILENCE, 4)
    # with three heard, the lapsing device is on its own
    assert up(ws | {"s2": NOW - 1.0, "s3": NOW - 2.0, "s4": NOW - 3.0}) == p.Offline()


def test_judge_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="not watched"):
        up(watches([T]), session="nope")
    with pytest.raises(ValueError, match="not lapsed"):
        up(watches([T - 1.0]))
    with pytest.raises(ValueError, match="positive"):
        p.judge(
            watches([T]), "s0", now=NOW, timeout=0, broker_up=True, outage_start=None, episode=False
        )


def test_an_episode_in_force_holds_every_lapse_until_contact_returns() -> None:
    verdict = p.judge(
        watches([T, 1.0, 1.0]),
        "s0",
        now=NOW,
        timeout=T,
        broker_up=True,
        outage_start=None,
        episode=True,
    )
    assert verdict == p.Hold(None)


# ---------------------------------------------------------------- broker away


def away(ws: dict[str, float], outage_start: float, now: float, session: str = "s0") -> p.Verdict:
    return p.judge(
        ws, session, now=now, timeout=T, broker_up=False, outage_start=outage_start, episode=False
    )


def test_broker_away_contact_lost_when_the_first_watch_lapses() -> None:
    d = NOW - 100.0  # the outage began 100 s ago; devices were heard 0-20 s before it
    ws = {"s0": d - 20.0, "s1": d - 5.0, "s2": d}
    assert ws["s0"] + T == NOW
    assert away(ws, d, NOW) == p.Common(p.Cause.BROKER, 3)
    assert p.contact_lost_due(ws.values(), d, T) == NOW
    # one session alone: still a common cause while the broker is away (no device_offline)
    assert away({"s0": d - 20.0}, d, NOW) == p.Common(p.Cause.BROKER, 1)


def test_broker_blip_pages_nobody_before_half_a_timeout() -> None:
    """A device already silent for almost device_timeout lapses one second into an outage:
    nothing is raised before the outage has lasted half a device_timeout."""
    d = NOW - 1.0
    ws = {"s0": NOW - T, "s1": d - 2.0}
    assert away(ws, d, NOW) == p.Hold(d + T / 2)
    assert away(ws, d, d + T / 2 - 0.01) == p.Hold(d + T / 2)
    assert away(ws, d, d + T / 2) == p.Common(p.Cause.BROKER, 2)


def test_broker_away_since_start_counts_from_now_when_unknown() -> None:
    ws = {"s0": NOW - T}
    assert away(ws, None, NOW) == p.Hold(NOW + T / 2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- unwatched count


def test_unwatched_counts() -> None:
    ws = watches([T, T / 2 + 1, T / 2 + 1, 1.0, 1.0])
    assert p.unwatched(ws.values(), now=NOW, timeout=T, broker_up=False) == 5
    assert p.unwatched(ws.values(), now=NOW, timeout=T, broker_up=True) == 3
    ws["s2"] = NOW
    assert p.unwatched(ws.values(), now=NOW, timeout=T, broker_up=True) == 0  # 2 of 5: back
    assert p.unwatched([], now=NOW, timeout=T, broker_up=False) == 0


# ---------------------------------------------------------------- contact returns


def test_after_a_contact_lost_every_device_gets_a_fresh_timeout() -> None:
    d, r = NOW - 300.0, NOW
    ws = {"s0": d - 10.0, "s1": d - 1.0, "s2": r + 0.5}  # s2 heard just after the return
    fresh = p.after_return(ws, outage_start=d, now=r, timeout=T, contact_lost=True)
    assert fresh == {"s0": r, "s1": r, "s2": r + 0.5}


def test_after_a_short_outage_the_outage_does_not_count_as_silence() -> None:
    d, r = NOW - 3.0, NOW
    ws = {"s0": d - 100.0, "s1": d - 1.0}
    fresh = p.after_return(ws, outage_start=d, now=r, timeout=T, contact_lost=False)
    assert fresh == {"s0": d - 97.0, "s1": d + 2.0}
    # the device silent 100 s before the blip lapses 3 s later than it would have: no more
    assert fresh["s0"] + T == ws["s0"] + T + 3.0


def test_first_connect_after_a_start_gives_queued_events_a_settle() -> None:
    start, r = NOW - 0.4, NOW
    ws = {"s0": NOW - 3600.0, "s1": NOW - 10.0}  # s0 last heard before the gateway went down
    fresh = p.after_return(
        ws, outage_start=start, now=r, timeout=T, contact_lost=False, first_connect=True
    )
    assert fresh["s0"] + T == r + p.SETTLE_S
    assert fresh["s1"] == ws["s1"] + 0.4
    assert p.settle(4.0) == 1.0  # a quarter of a short device_timeout


# ---------------------------------------------------------------- texts


@pytest.mark.parametrize("lang", ["nb", "en"])
def test_contact_lost_texts_say_how_many_are_unwatched(lang: str) -> None:
    sms = texts.alarm_sms(lang, "contact_lost", None, None, "1234", None, None, unwatched=5)  # type: ignore[arg-type]
    voice = texts.alarm_voice(lang, "contact_lost", None, None, unwatched=5)  # type: ignore[arg-type]
    for text in (sms, voice):
        assert "5" in text
        assert "ukjent" not in text and "unknown" not in text
    assert ("Svar OK 1234" if lang == "nb" else "Reply OK 1234") in sms
    assert ("Trykk 1" if lang == "nb" else "Press 1") in voice


def test_contact_lost_sms_exact_nb() -> None:
    assert texts.alarm_sms("nb", "contact_lost", None, None, "0042", None, None, unwatched=5) == (
        "JAA-ALARM: Mistet kontakten med alarmenhetene\n"
        "5 personer som arbeider alene, er uten overvåking nå. Sjekk at de er i orden.\n"
        "Svar OK 0042 for å kvittere"
    )
    one = texts.alarm_sms("nb", "contact_lost", None, None, "0042", None, None, unwatched=1)
    assert "1 person som arbeider alene, er uten overvåking nå. Sjekk at personen" in one
    back = texts.alarm_sms("nb", "contact_lost", None, None, "0042", None, None, unwatched=0)
    assert "Kontakten er tilbake nå." in back
    unknown = texts.alarm_voice("nb", "contact_lost", None, None)
    assert "kan være uten overvåking" in unknown


def test_contact_lost_sms_exact_en() -> None:
    assert texts.alarm_sms("en", "contact_lost", None, None, "0042", None, None, unwatched=1) == (
        "JAA ALARM: Lost contact with the alarm devices\n"
        "1 person working alone is unwatched now. Check that they are safe.\n"
        "Reply OK 0042 to acknowledge"
    )


def test_contact_lost_count_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="count"):
        texts.alarm_sms("nb", "contact_lost", None, None, "0042", None, None, unwatched=-1)
    with pytest.raises(ValueError, match="count"):
        texts.alarm_voice("en", "contact_lost", None, None, unwatched=True)


def test_contact_lost_ack_confirmation_names_nobody() -> None:
    nb = guard_texts.ack_confirmation("nb", "0042", "contact_lost", None)
    assert nb.startswith("Kvittert: alarm for mistet kontakt 0042.")
    assert "ukjent" not in nb
    assert "unknown" not in guard_texts.ack_confirmation("en", "0042", "contact_lost", None)
