"""The soak of issue 7 (`make soak` runs 10 minutes of the campus): its judgement on made-up
series, and a shortened real soak (a 500-device fleet at 200 msg/s for 35 s) judged the same way.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks import soak
from benchmarks.soak import Sample, SoakSpec, judge, run_soak

SPEC = SoakSpec(duration_s=60, interval_s=2)


def series(
    n: int = 30,
    *,
    rss: list[float] | None = None,
    inbox: list[float] | None = None,
    outbox: list[float] | None = None,
    open_alarms: list[float] | None = None,
) -> list[Sample]:
    return [
        Sample(
            t_s=2.0 * (i + 1),
            rss_mb=rss[i] if rss else 100.0 + (i % 3) * 0.5,
            cpu_s=0.5 * i,
            inbox=inbox[i] if inbox else float(i % 4),
            outbox=outbox[i] if outbox else float(i % 2),
            open_alarms=open_alarms[i] if open_alarms else float(i % 2),
            sos_sent=i,
            sos_sms=i,
            sos_closed=i,
        )
        for i in range(n)
    ]


def verdict(samples: list[Sample], **kw: object) -> soak.Verdict:
    args: dict[str, object] = {
        "sos_sent": 20,
        "sos_sms": 20,
        "sos_closed": 20,
        "fleet_acked": 10_000,
        "gateway_received": 10_000.0,
        "gateway_alive": True,
    }
    args.update(kw)
    return judge(samples, SPEC, **args)  # type: ignore[arg-type]


def test_a_steady_run_is_flat() -> None:
    v = verdict(series())
    assert v.flat, v.reasons
    assert v.reasons == []
    assert v.rss_bound_mb == 20.0


def test_warmup_growth_in_the_first_half_is_not_a_leak() -> None:
    rss = [60.0 + 3 * i for i in range(15)] + [105.0] * 15
    assert verdict(series(rss=rss)).flat


def test_rss_climbing_through_the_second_half_is_a_leak() -> None:
    # 1 MB per sample: 14 MB over the second half stays under 20 MB, 2 MB per sample does not
    assert verdict(series(rss=[100.0 + i for i in range(30)])).flat
    v = verdict(series(rss=[100.0 + 2 * i for i in range(30)]))
    assert not v.flat
    assert any("RSS grew" in r for r in v.reasons)
    assert v.rss_growth_mb == pytest.approx(24.0)


def test_the_rss_bound_is_relative_for_a_large_process() -> None:
    # 10 % of 400 MB is 40 MB: 28 MB of growth is within it
    assert verdict(series(rss=[400.0 + 2 * i for i in range(30)])).flat
    assert not verdict(series(rss=[400.0 + 4 * i for i in range(30)])).flat


def test_one_allocator_burst_at_the_end_is_not_a_leak() -> None:
    rss = [100.0] * 29 + [160.0]
    assert verdict(series(rss=rss)).flat


@pytest.mark.parametrize(
    ("queue", "label"),
    [("inbox", "inbox depth"), ("outbox", "outbox pending"), ("open_alarms", "open alarms")],
)
def test_a_growing_queue_is_not_flat(queue: str, label: str) -> None:
    growing = [float(i * 20) for i in range(30)]
    v = verdict(series(**{queue: growing}))  # type: ignore[arg-type]
    assert not v.flat
    assert any(r.startswith(label) for r in v.reasons), v.reasons


def test_a_queue_within_its_margin_is_flat() -> None:
    inbox = [5.0] * 20 + [150.0] * 10  # 150 <= 5 + 200
    outbox = [1.0] * 20 + [5.0] * 10  # 5 <= 1 + 5
    assert verdict(series(inbox=inbox, outbox=outbox)).flat
    assert not verdict(series(outbox=[1.0] * 20 + [7.0] * 10)).flat


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"sos_sms": 19}, "1 of 20 sos got no SMS"),
        ({"sos_closed": 18}, "2 of 20 sos were not acked"),
        ({"sos_sent": 0, "sos_sms": 0, "sos_closed": 0}, "no sos was raised"),
        ({"gateway_received": 9_000.0}, "received 9000 of 10000"),
        ({"fleet_acked": 0}, "received"),
        ({"gateway_alive": False}, "exited"),
    ],
)
def test_lost_alarms_and_lost_load_are_not_flat(kw: dict[str, object], needle: str) -> None:
    v = verdict(series(), **kw)
    assert not v.flat
    assert any(needle in r for r in v.reasons), v.reasons


def test_too_few_samples_cannot_be_judged_flat() -> None:
    v = verdict(series(5))
    assert not v.flat
    assert "samples" in v.reasons[0]


@pytest.mark.parametrize(
    "kw",
    [
        {"duration_s": 0},
        {"duration_s": 10, "interval_s": 2},
        {"devices": 100, "sessions": 100},
        {"rate": 0},
        {"sessions": 1000, "checkin_period_s": 1, "rate": 500},
    ],
)
def test_a_bad_spec_is_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SoakSpec(), **kw)


def test_the_table_has_one_row_per_sample_with_cpu_percent() -> None:
    text = soak.table(series(4))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["t_s", "rss_mb", "cpu_s"]
    assert len(lines) == 5
    # 0.5 CPU s over 2 s between samples
    assert lines[2].split()[3] == "25"


def test_cli_refuses_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        soak.main(["--duration", "5", "--out", "/nonexistent/never.json"])
    assert exc.value.code == 2
    assert "6 sampling intervals" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(170)
async def test_short_soak_holds_flat(tmp_path: Path) -> None:
    spec = SoakSpec(
        duration_s=20,
        interval_s=2.5,
        devices=500,
        rate=200,
        sessions=100,
        checkin_period_s=10,
        sos_every_s=2,
    )
    res = await run_soak(spec, tmp_path)
    print(soak.report(res))
    v = res["verdict"]
    assert v["flat"], v["reasons"]
    samples = res["samples"]
    assert len(samples) >= 7
    assert all(s["rss_mb"] > 10 for s in samples)
    assert samples[-1]["cpu_s"] > samples[0]["cpu_s"]
    # the load really ran: about 200 msg/s for 20 s reached the broker and the gateway
    assert res["fleet"]["acked"] >= 0.9 * 200 * 20
    assert res["gateway_received"] >= res["fleet"]["acked"]
    assert res["sos"]["sent"] >= 8
    assert res["sos"]["sms"] == res["sos"]["closed"] == res["sos"]["sent"]
    assert res["sos"]["errors"] == []
    # the sos alarms are the only alarms: no session lapsed under the load
    raised = {k: v for k, v in res["alarms_raised"].items() if v}
    assert raised == {'jaa_alarms_raised_total{kind="sos"}': float(res["sos"]["sent"])}
    json.dumps(res)  # the result is what soak.json gets
