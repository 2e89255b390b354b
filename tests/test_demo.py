"""`jaa-gateway demo` is also a test: run it as a user would and read its summary."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

DEMO_TIMEOUT = 40.0
SPEED = "4"


def _summary(out: str) -> dict[str, str]:
    """The summary table's rows: {'sessions started': '1', ...}."""
    start = out.index("\nSummary\n")
    rows: dict[str, str] = {}
    for line in out[start:].splitlines():
        m = re.fullmatch(r"\| (.+?) +\| (.+?) +\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _run(
    args: list[str], cwd: Path, timeout: float = DEMO_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jaa_gateway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_plays_the_whole_story_and_exits_0(tmp_path: Path) -> None:
    t0 = time.monotonic()
    # from a directory without any config: the demo must find its own (package data)
    proc = _run(["demo", "--speed", SPEED], cwd=tmp_path)
    wall = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    assert wall < DEMO_TIMEOUT
    assert "demo OK: every step of the story happened." in out
    rows = _summary(out)
    assert rows["sessions started"] == "1"
    assert rows["sessions denied"].startswith("1 ")
    assert rows["sessions ended"] == "1"
    # one missed; on a slow machine the worker may be asked again later, and answers at once
    assert int(rows["check-ins asked (checkin_due)"]) >= 1
    assert rows["alarms raised"].startswith("2 ")
    assert rows["alarms acknowledged"].startswith("1 (by Ivar Vakt")
    assert rows["alarms resolved"] == "1"
    assert rows["alarms cancelled by the worker"] == "1"
    assert rows["SMS sent"] == "2"  # the supervisor's denial SMS and the guard's alarm SMS
    assert int(rows["calls placed"]) >= 2
    assert rows["MQTT messages rejected"] == "0"
    latency = float(rows["ack latency (alarm -> ack)"].removesuffix(" s"))
    assert 0 < latency < 10
    # the timeline shows who got what over which channel, with the text sent
    assert re.search(r"gateway +sms +-> Kari Nordmann \+4792345678: JAA: Per Hansen", out)
    assert re.search(r"gateway +sms +-> Ivar Vakt \+4748123456: JAA-ALARM", out)
    assert re.search(r"gateway +call +-> Ivar Vakt \+4748123456: «", out)
    assert re.search(r"Ivar Vakt +sms +-> gateway: 'OK [0-9]{4}'", out)
    assert "checkin_due (checkin)" in out
    assert "alarm_acknowledged" in out and "prealarm man_down" in out
    # nothing left behind in the working directory (the database lives in a temp dir)
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_bad_speed(tmp_path: Path) -> None:
    proc = _run(["demo", "--speed", "0"], cwd=tmp_path, timeout=20)
    assert proc.returncode == 2
    assert "--speed must be between" in proc.stderr


_BROKEN_STORY = """
import asyncio, sys
from jaa_gateway.demo.democonfig import load_demo_config
from jaa_gateway.demo.runner import demo

cfg = load_demo_config()
# the chemist's assessment no longer allows lone work: her badge-in is refused
cfg = cfg.model_copy(update={"assessments": [
    a.model_copy(update={"lone_work_allowed": False}) for a in cfg.assessments]})
sys.exit(asyncio.run(demo(4.0, False, config=cfg)))
"""


def test_demo_exits_1_naming_the_step_that_did_not_happen(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN_STORY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "session_denied lone_work_not_allowed" in proc.stdout
    assert "DEMO FAILED in scene 'Ola Nordmann (chemist) badges in" in proc.stdout
    assert "session_started did not arrive" in proc.stdout
    assert "demo OK" not in proc.stdout
