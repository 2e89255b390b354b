"""One smoke run of the benchmark harness with tiny numbers (`make bench` runs the real sizes),
and checks of the pieces the figures rest on: percentiles, the raw MQTT packets, the table."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from benchmarks import run as bench_run
from benchmarks.harness import pct, summary_ms
from benchmarks.rawmqtt import RawPublisher, publish_packet
from benchmarks.scenarios import Scale
from tests.support.broker import MosquittoBroker, probe
from tests.support.postgres import find_bindir


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 50) == 50.0
    assert pct(values, 99) == 99.0
    assert pct(values, 100) == 100.0
    assert pct([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        pct([], 50)


def test_summary_reports_never_for_missing_samples() -> None:
    s = summary_ms([0.001] * 98 + [float("inf")] * 2)
    assert s["p50_ms"] == 1.0
    assert s["p99_ms"] is None and s["max_ms"] is None
    assert s["n"] == 100


def test_publish_packet_long_payload_uses_multibyte_length() -> None:
    pkt = publish_packet(b"t", b"x" * 200, 7)
    # 0x32 = PUBLISH QoS 1; 2+1+2+200 = 205 -> varint 0xCD 0x01
    assert pkt[:3] == b"\x32\xcd\x01"
    assert pkt[3:6] == b"\x00\x01t" and pkt[6:8] == b"\x00\x07"


async def test_raw_publisher_messages_arrive_intact(mosquitto: MosquittoBroker) -> None:
    async with probe(mosquitto.port, "bench/raw/#") as p:
        pub = await asyncio.to_thread(RawPublisher, "127.0.0.1", mosquitto.port, "raw-test")
        try:
            pub.send(
                [(f"bench/raw/{i}".encode(), json.dumps({"i": i}).encode()) for i in range(50)]
            )
            for i in (0, 49):
                seen = await p.wait_message(f"bench/raw/{i}")
                assert seen.json() == {"i": i}
            for _ in range(100):
                if pub.acked >= 50:
                    break
                await asyncio.sleep(0.02)
            assert pub.acked == 50
        finally:
            pub.close()
    assert paho.MQTTv311 == 4  # the raw CONNECT speaks protocol level 4, as paho's 3.1.1


def test_table_renders_every_scenario() -> None:
    res = {
        "latency": {
            "gateway": {"n": 2, "p50_ms": 10.0, "p99_ms": 20.0, "max_ms": 20.0},
            "floor": {"n": 2, "p50_ms": 2.0, "p99_ms": 4.0, "max_ms": 4.0},
            "peer": {"n": 2, "p50_ms": 4.0, "p99_ms": 5.0, "max_ms": 5.0},
            "postgresql": {"n": 2, "p50_ms": 12.0, "p99_ms": 30.0, "max_ms": 30.0},
            "lost": {"gateway": 0, "postgresql": 0, "floor": 0, "peer": 0},
            "gateway_footprint": {"peak_rss_mb": 100.0, "cpu_s": 1.0},
        },
        "ingest": {"heartbeat": {"sustained_per_s": 5000}, "floor": {"sustained_per_s": 10000}},
        "timers": {
            "sessions": 3,
            "checkin_due_missing": 1,
            "missed_checkin_sms_missing": 0,
            "checkin_due": {"n": 3, "p50_ms": 1.0, "p99_ms": None, "max_ms": None},
            "missed_checkin_sms": {"n": 3, "p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 2.0},
        },
        "recovery": {"error": "RuntimeError: broken"},
    }
    text = bench_run.table(res)
    assert "p50 5.00x, p99 5.00x ; p99 4.00x" in text
    assert "on PostgreSQL, same run (n=2)" in text
    assert "12.0 / 30.0 / 30.0" in text and "p99 pg/sqlite 1.50x" in text
    res["latency"]["postgresql"] = None
    res["latency"]["postgresql_error"] = "RuntimeError: no PostgreSQL server binaries"
    assert "n/a: RuntimeError: no PostgreSQL server binaries" in bench_run.table(res)
    assert "0.50x" in text  # ingest: gateway / floor
    assert "1.0 / never / never" in text
    assert "ERROR RuntimeError: broken" in text


async def test_smoke_run_of_the_harness(tmp_path: Path) -> None:
    """The latency scenario end to end at tiny sizes: real gateway process, fleet process,
    floor relay, probe and double; every alarm reaches the double."""
    scale = Scale.tiny()
    res = await bench_run.run(scale, ("latency",), tmp_path)
    lat = res["latency"]
    assert "error" not in lat, lat
    assert lat["lost"] == {"gateway": 0, "postgresql": 0, "peer": 0, "floor": 0}
    assert lat["gateway"]["n"] == scale.alarms
    # the same alarms on a throwaway PostgreSQL cluster, in the same run (issue 13)
    if find_bindir() is None:
        assert "no PostgreSQL server binaries" in lat["postgresql_error"]
    else:
        assert "postgresql_error" not in lat, lat["postgresql_error"]
        assert lat["postgresql"]["n"] == scale.alarms
        assert 0 < lat["postgresql"]["p50_ms"] <= lat["postgresql"]["max_ms"]
        assert lat["postgresql_footprint"]["peak_rss_mb"] > 10
    # the floor is measured beside each block (SQLite, then PostgreSQL)
    assert lat["floor"]["n"] == scale.alarms * (1 if find_bindir() is None else 2)
    assert 0 < lat["floor"]["p50_ms"] <= lat["floor"]["max_ms"]
    assert lat["gateway"]["p50_ms"] > 0
    assert lat["background"]["fleet_sent"]["heartbeat"] > 0
    assert lat["gateway_footprint"]["peak_rss_mb"] > 10
    assert "alarm latency" in bench_run.table(res)


def test_burst_rows_show_both_bursts_with_p95() -> None:
    res = {
        "burst": {
            "alarms": 200,
            "spacing_ms": 20.0,
            "quiet": {"n": 200, "p50_ms": 4.0, "p95_ms": 9.5, "p99_ms": 12.0, "max_ms": None},
            "loaded": {
                "n": 200,
                "p50_ms": 3.0,
                "p95_ms": 7.0,
                "p99_ms": 11.0,
                "max_ms": 20.0,
                "heartbeats_per_s": 1000.0,
                "handled_mean_ms": 2.5,
            },
        }
    }
    text = bench_run.table(res)
    assert "quiet burst: 200 sos 20 ms apart" in text
    assert "4.0 / 9.5 / 12.0 / never" in text
    assert "loaded burst (+1,000 hb/s)" in text and "3.0 / 7.0 / 11.0 / 20.0" in text


async def test_smoke_run_of_the_burst_scenario(tmp_path: Path) -> None:
    """Both bursts at tiny sizes through a real gateway process: an SMS for every sos."""
    scale = Scale.tiny()
    res = await bench_run.run(scale, ("burst",), tmp_path)
    bu = res["burst"]
    assert "error" not in bu, bu
    for phase in ("quiet", "loaded"):
        assert bu[phase]["n"] == scale.burst_alarms
        assert bu[phase]["max_ms"] is not None, (phase, bu[phase])  # none missing
        assert 0 < bu[phase]["p50_ms"] <= bu[phase]["p95_ms"] <= bu[phase]["max_ms"]
        assert bu[phase]["handled_mean_ms"] is not None
    assert bu["loaded"]["fleet_sent"]["heartbeat"] > 0
    assert "quiet burst" in bench_run.table(res)
