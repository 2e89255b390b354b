"""`jaa-gateway demo`: broker, gateway and a scripted tour in one process.

An embedded amqtt broker on a free loopback port, the real daemon (`App`) on the shipped demo
config with the console notifier and a database in a temporary directory, and the story of
`story.py` played against them over MQTT and HTTP. Exit 0 when every step of the story happened,
1 (with the step and what was missing) when one did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from jaa_gateway.aio import within
from jaa_gateway.config import Config, ConfigError
from jaa_gateway.demo.broker import EmbeddedBroker, free_port, port_is_free, quiet_amqtt
from jaa_gateway.demo.democonfig import DemoSite, load_demo_config, prepare
from jaa_gateway.demo.story import Cast, Outcome, Story, StoryFailed
from jaa_gateway.demo.timeline import Timeline, table

MIN_SPEED = 0.2
MAX_SPEED = 10.0
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _print(text: str) -> None:
    print(text, flush=True)


def configure_logging(tl: Timeline, level: int = logging.WARNING) -> None:
    """structlog in console mode, routed into the timeline; warnings and errors only, so the
    daemon's own lines (an alarm raised, a failed notification) stay few enough to read."""
    from jaa_gateway import logs

    logs.configure("console", level=level)

    def to_timeline(_logger: Any, method: str, event_dict: Any) -> Any:
        event = str(event_dict.pop("event", ""))
        level_name = str(event_dict.pop("level", method))
        event_dict.pop("timestamp", None)
        exc = event_dict.pop("exception", None)
        if exc:
            event_dict["error"] = str(exc).strip().splitlines()[-1]
        tl.log_line(level_name, event, event_dict)
        raise structlog.DropEvent

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            to_timeline,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    quiet_amqtt()


def summary_rows(out: Outcome, site: DemoSite, wall_s: float) -> list[tuple[str, str]]:
    a, m = out.audit, out.metrics

    def metric(name: str) -> int:
        return int(sum(v for k, v in m.items() if k.startswith(name)))

    sms = int(m.get('jaa_notifications_total{channel="sms",outcome="sent"}', 0))
    calls = int(m.get('jaa_notifications_total{channel="call",outcome="sent"}', 0))
    guard = out.guard.name if out.guard else "?"
    return [
        ("sessions started", str(a.get("session_started", 0))),
        ("sessions denied", f"{a.get('session_denied', 0)} (no_assessment)"),
        ("sessions ended", str(a.get("session_ended", 0))),
        ("check-ins asked (checkin_due)", str(a.get("checkin_due", 0))),
        ("alarms raised", f"{a.get('alarm_raised', 0)} (missed_checkin, man_down)"),
        ("alarms acknowledged", f"{a.get('alarm_acknowledged', 0)} (by {guard}, SMS reply)"),
        ("alarms resolved", str(a.get("alarm_resolved", 0))),
        ("alarms cancelled by the worker", str(a.get("alarm_cancelled", 0))),
        ("escalation steps run", str(a.get("escalation_step", 0))),
        ("SMS sent", str(sms)),
        ("calls placed", str(calls)),
        ("notifications stopped by the ack", str(out.cancelled_by_ack)),
        (
            "ack latency (alarm -> ack)",
            f"{out.ack_latency_s:.2f} s" if out.ack_latency_s is not None else "-",
        ),
        ("heartbeats sent", str(out.heartbeats)),
        ("MQTT messages rejected", str(metric("jaa_rejected_messages_total"))),
        ("wall time", f"{wall_s:.1f} s"),
    ]


async def _wait_ready(app_task: asyncio.Task[None], ready: asyncio.Event) -> None:
    waiter = asyncio.ensure_future(ready.wait())
    try:
        done, _ = await asyncio.wait(
            {app_task, waiter}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if app_task in done:
        exc = app_task.exception() if not app_task.cancelled() else None
        raise RuntimeError(f"the gateway stopped while starting: {exc!r}")
    if not ready.is_set():
        raise RuntimeError(f"the gateway was not ready within {READY_TIMEOUT:.0f} s")


# the demo config's console login (demo.toml: guard-ivar's console_password is its hash)
DEMO_CONSOLE_LOGIN = ("guard-ivar", "vakt-demo-2026")


def _console_line(site: DemoSite) -> str:
    who, password = DEMO_CONSOLE_LOGIN
    return f"Guard console {site.http_url}/console   (log in as {who}, password {password})"


def _keep_running_banner(tl: Timeline, site: DemoSite, mqtt_port: int) -> None:
    url, tok = site.http_url, site.api_token
    # `make demo` runs .venv/bin/jaa-gateway, which may not be on PATH
    exe = "jaa-gateway" if shutil.which("jaa-gateway") else sys.argv[0]
    tl.raw("")
    tl.raw("The gateway keeps running (Ctrl-C stops it). Try:")
    tl.raw(f"  curl -s {url}/healthz")
    tl.raw(f"  curl -s -H 'Authorization: Bearer {tok}' {url}/api/alarms")
    tl.raw(f"  curl -s -H 'Authorization: Bearer {tok}' {url}/api/audit")
    tl.raw(f"  {exe} device {site.cfg.devices[0].id} sos --port {mqtt_port}")
    tl.raw(f"  {exe} door {_first_door(site)} badge {_first_badge(site)} --port {mqtt_port}")
    tl.raw(f"API {url}   token {tok}   MQTT 127.0.0.1:{mqtt_port}")
    tl.raw(_console_line(site))


def _first_door(site: DemoSite) -> str:
    return next((loc.doors[0] for loc in site.cfg.locations if loc.doors), "door-1")


def _first_badge(site: DemoSite) -> str:
    return next((p.badges[0] for p in site.cfg.people if p.badges), "04A1B2C3")


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def demo(
    speed: float,
    keep_running: bool,
    write: Callable[[str], None] = _print,
    config: Config | None = None,
) -> int:
    """Play the tour; `config` replaces the shipped demo config (tests)."""
    from jaa_gateway.app import App

    t_start = time.monotonic()
    try:
        base = config if config is not None else load_demo_config()
    except ConfigError as exc:
        write("the shipped demo config is broken:")
        for line in exc.problems:
            write(f"  {line}")
        return 1
    try:
        Cast.of(base)
    except ValueError as exc:
        write(f"the demo config cannot play the story: {exc}")
        return 1
    tl = Timeline(base, write=write)
    configure_logging(tl)
    with tempfile.TemporaryDirectory(prefix="jaa-demo-") as tmp:
        async with EmbeddedBroker(base.mqtt.port) as broker:
            site = prepare(
                base,
                workdir=Path(tmp),
                mqtt_port=broker.port,
                speed=speed,
                port_is_free=port_is_free,
                free_port=free_port,
            )
            tl.cfg = site.cfg
            write(f"jaa-gateway demo: a lone-worker alarm tour (speed {speed:g}x)")
            taken = f" ({base.mqtt.port} is taken)" if broker.port != base.mqtt.port else ""
            write(f"  MQTT broker  amqtt (embedded) on 127.0.0.1:{broker.port}{taken}")
            moved = f" ({site.wanted_port} is taken)" if site.http_port != site.wanted_port else ""
            write(f"  HTTP API     {site.http_url}{moved}")
            write(f"  database     {site.database} (deleted at the end)")
            write("  SMS and calls are printed, not sent (notify driver 'console')")
            write("")
            tl.header()
            story = Story(site, tl, broker.port, speed)
            app = App(site.cfg, notify_write=tl.notify_write)
            app_task = asyncio.create_task(app.run(), name="gateway")
            try:
                await _wait_ready(app_task, app.ready)
                async with story.actors():
                    outcome = await story.play()
                    wall = time.monotonic() - t_start
                    write("")
                    for line in table(summary_rows(outcome, site, wall), "Summary"):
                        write(line)
                    write("demo OK: every step of the story happened.")
                    if not keep_running:
                        write(f"{_console_line(site)}: open with --keep-running")
                    if keep_running:
                        story.show_heartbeats = False
                        story.answer_checkins = False
                        _keep_running_banner(tl, site, broker.port)
                        await _until_signal()
                        write("stopping ...")
                return 0
            except StoryFailed as exc:
                write("")
                write(f"DEMO FAILED in scene '{exc.scene}': {exc.detail}")
                print(f"jaa-gateway demo: failed: {exc}", file=sys.stderr)
                return 1
            except RuntimeError as exc:
                write(f"DEMO FAILED: {exc}")
                print(f"jaa-gateway demo: failed: {exc}", file=sys.stderr)
                return 1
            finally:
                app.stopping.set()
                try:
                    await within(asyncio.shield(app_task), STOP_TIMEOUT)
                except (TimeoutError, asyncio.CancelledError):
                    app_task.cancel()
                    with contextlib.suppress(BaseException):
                        await app_task
                except Exception as exc:
                    write(f"the gateway stopped with an error: {exc!r}")


def run_demo(speed: float = 1.0, keep_running: bool = False) -> int:
    try:
        import amqtt  # noqa: F401  (the embedded broker: the 'demo' extra)
    except ImportError:
        print(
            "jaa-gateway demo: the demo needs the 'demo' extra (amqtt): "
            "pip install 'jaa-gateway[demo]', or run `make demo`",
            file=sys.stderr,
        )
        return 1
    if not MIN_SPEED <= speed <= MAX_SPEED:
        print(
            f"jaa-gateway demo: --speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(demo(speed, keep_running))
    except KeyboardInterrupt:
        print("jaa-gateway demo: interrupted", file=sys.stderr)
        return 130
