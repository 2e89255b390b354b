"""The monthly report end to end, on SQLite and PostgreSQL, while the daemon runs.

The rows are made by the real daemon (mosquitto, the Twilio double): a session started and
ended over MQTT, a denied start, an sos acknowledged through the API. Then, with the daemon
still running, `jaa-gateway report` runs as a child process (CSV and HTML to a file) and the
API answers `GET /api/reports/monthly`; both must say the same. The console serves the report
to a head (its login), not to a guard.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

from jaa_gateway.timeutil import parse_rfc3339
from tests.support.broker import MosquittoBroker
from tests.support.console import ConsoleClient, with_console
from tests.support.gateway import TOKEN, to_toml
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import (
    event_topic,
    get_alarm,
    new_id,
    raise_sos,
    site,
    start_session,
    wait_cmd,
)

ROOT = Path(__file__).resolve().parents[1]


async def cli(*args: str) -> tuple[int, str, str]:
    """`jaa-gateway …` as a child process (without blocking the in-process daemon's loop)."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jaa_gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def table(text: str) -> dict[tuple[str, str, str, str], str]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["month", "scope", "location", "measure", "item", "label", "value"]
    assert all(len(r) == 7 for r in rows)
    return {(r[1], r[2], r[3], r[4]): r[6] for r in rows[1:]}


async def test_cli_and_api_report_a_month_made_by_the_daemon(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, db_url: str
) -> None:
    async with site(tmp_path, mosquitto, twilio_double, with_console, db_url=db_url) as (
        gw,
        p,
        cfg,
    ):
        conf = tmp_path / "gateway.toml"
        conf.write_text(to_toml(cfg), encoding="utf-8")
        # a session, started and ended over MQTT
        started = await start_session(p)
        # a denied start: Nils has no risk assessment for the lab
        deny_id = new_id("start")
        await p.publish(
            event_topic("jaa-0044"), {"id": deny_id, "type": "session_start", "location": "d1-123"}
        )
        denied = await wait_cmd(p, "jaa-0044", "session_denied", lambda m: m.get("re") == deny_id)
        # an sos, acknowledged through the API
        alarm_id, _ = await raise_sos(p)
        status, body = await gw.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-1"})
        assert status == 200, body
        end_id = new_id("end")
        await p.publish(event_topic("jaa-0042"), {"id": end_id, "type": "session_end"})
        await wait_cmd(p, "jaa-0042", "session_ended", lambda m: m.get("re") == end_id)
        a = await get_alarm(gw, alarm_id)
        opened = parse_rfc3339(a["opened_at"])
        ack_s = (parse_rfc3339(a["acknowledged_at"]) - opened).total_seconds()
        month = opened.astimezone(gw.cfg.tz).strftime("%Y-%m")

        # the CLI, beside the running daemon
        code, out, err = await cli(
            "report", "--config", str(conf), "--month", month, "--format", "csv"
        )
        assert code == 0, err
        got = table(out)
        assert got[("site", "", "sessions", "")] == "1"
        assert got[("location", "d1-123", "sessions", "")] == "1"
        assert got[("site", "", "sessions_ongoing", "")] == "0"
        status, audit = await gw.client.api("GET", "/api/audit")
        assert status == 200
        at = {
            e["event"]: parse_rfc3339(e["at"])
            for e in audit["events"]
            if e["event"] in ("session_started", "session_ended")
        }
        hours = (at["session_ended"] - at["session_started"]).total_seconds() / 3600
        assert abs(float(got[("site", "", "hours", "")]) - hours) <= 0.0001
        assert got[("site", "", "denied_starts", denied["reason"])] == "1"
        assert got[("location", "d1-123", "denied_starts", denied["reason"])] == "1"
        assert got[("site", "", "alarms", "sos")] == "1"
        assert got[("site", "", "alarms_acknowledged", "")] == "1"
        assert float(got[("site", "", "ack_median_s", "")]) == round(ack_s, 1)
        assert got[("site", "", "ack_within_60s_share", "")] == "1.0000"
        day = opened.astimezone(gw.cfg.tz).date().isoformat()
        assert got[("site", "", "alarms_per_day", day)] == "1"
        assert started["location"] == "d1-123"

        # the API says the same
        status, api_csv = await gw.client.api(
            "GET", f"/api/reports/monthly?month={month}&format=csv"
        )
        assert status == 200
        assert api_csv == out

        # HTML: to a file from the CLI, and from the API with its headers
        html_file = tmp_path / "report.html"
        code, _, err = await cli(
            "report", "--config", str(conf), "--month", month, "--out", str(html_file)
        )
        assert code == 0, err
        page = html_file.read_text(encoding="utf-8")
        assert "Månedsrapport for alenearbeid" in page and "<svg" in page
        assert "<script" not in page
        base = gw.client.base
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with gw.client.session.get(
            f"{base}/api/reports/monthly?month={month}", headers=auth
        ) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src" not in r.headers["Content-Security-Policy"]
            api_page = await r.text()
        assert 'data-key="sessions">1<' in api_page and 'data-key="denied">1<' in api_page

        # errors: no token, a bad month, a bad format; nothing is written
        status, _ = await gw.client.api("GET", f"/api/reports/monthly?month={month}", token=None)
        assert status == 401
        for query in ("", "?month=2026-13", "?month=june", f"?month={month}&format=pdf"):
            status, err_body = await gw.client.api("GET", f"/api/reports/monthly{query}")
            assert status == 400 and err_body["error"] in ("bad_month", "bad_format"), err_body
        code, _, err = await cli("report", "--config", str(conf), "--month", "2026-13")
        assert code == 2 and "out of range" in err

        # an empty month is a valid report
        code, out, err = await cli(
            "report", "--config", str(conf), "--month", "2001-02", "--format", "csv"
        )
        assert code == 0, err
        empty = table(out)
        assert empty[("site", "", "sessions", "")] == "0"
        assert sum(1 for k in empty if k[2] == "alarms_per_day") == 28

        # the console: a head sees the link and the report, a guard neither
        head = ConsoleClient(base)
        guard = ConsoleClient(base)
        try:
            assert await head.login("head-security") == 303
            _, board, _ = await head.request("GET", "/console")
            assert 'href="/console/report"' in board
            status, page, resp = await head.request("GET", f"/console/report?month={month}")
            assert status == 200 and 'data-key="alarms">1<' in page
            assert "style-src 'sha256-" in resp.headers["Content-Security-Policy"]
            status, text, _ = await head.request("GET", f"/console/report?month={month}&format=csv")
            assert status == 200 and table(text) == got
            assert await guard.login("guard-1") == 303
            _, board, _ = await guard.request("GET", "/console")
            assert "/console/report" not in board
            status, _, _ = await guard.request("GET", f"/console/report?month={month}")
            assert status == 403
            status, _, resp = await ConsoleClient(base).request("GET", "/console/report")
            assert status == 303 and resp.headers["Location"] == "/console/login"
        finally:
            await head.close()
            await guard.close()


async def test_cli_refuses_a_database_the_gateway_never_made(tmp_path: Path) -> None:
    from tests.support.gateway import site_config

    cfg: dict[str, Any] = site_config(tmp_path / "none.db", 1, None)
    conf = tmp_path / "gateway.toml"
    conf.write_text(to_toml(cfg), encoding="utf-8")
    code, out, err = await cli("report", "--config", str(conf), "--month", "2026-10")
    assert code == 1 and out == "" and "no SQLite database" in err
    assert not (tmp_path / "none.db").exists()  # nothing created
    # a file that is not the gateway's
    (tmp_path / "none.db").write_bytes(b"")
    code, _, err = await cli("report", "--config", str(conf), "--month", "2026-10")
    assert code == 1 and "no jaa-gateway tables" in err
