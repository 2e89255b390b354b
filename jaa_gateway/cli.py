"""Command line: run · check-config · report · hash-password · demo · device · door."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from jaa_gateway.config import ConfigError, load_config, summary
from jaa_gateway.domain.events import DeviceEventType, DoorEventType

if TYPE_CHECKING:
    from jaa_gateway.demo.simulator import Kind

# argparse choices in the contract's order (CONTRACT §3), from the one list of event types
DEVICE_TYPES = get_args(DeviceEventType)
DOOR_TYPES = get_args(DoorEventType)
PASSWORD_ENV = "JAA_MQTT_PASSWORD"


def _check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'' if count == 1 else 's'}", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    print(summary(cfg))
    return 0


def _run(path: str) -> int:
    # no cycle collection while start-up builds its long-lived objects (config, timers): with
    # 10,000 people it ran again and again over them and took half the start-up time (issue 6,
    # measured 3.8 -> 1.8 s); App.run freezes them and turns it back on once the engine runs
    gc.disable()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    from jaa_gateway.app import run_daemon

    return run_daemon(cfg, config_path=path)


def _hash_password() -> int:
    """CONTRACT §1: twice from a terminal, once from stdin; prints the bcrypt hash."""
    import getpass

    from jaa_gateway.passwords import BadPassword, hash_password

    if sys.stdin.isatty():
        first = getpass.getpass("Console password: ")
        if getpass.getpass("Again: ") != first:
            print("error: the two passwords differ; nothing printed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        print(hash_password(first))
    except BadPassword as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    """CONTRACT §10: the monthly report from the database the config names. Only reads, so
    it runs beside the daemon. Exit 1: a config or database problem; 2: a bad argument."""
    from jaa_gateway.domain.report import BadMonth, month_of
    from jaa_gateway.report.service import NoDatabase, read_report

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    try:
        month = month_of(args.month, cfg.tz)
    except BadMonth as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        text = read_report(cfg, month, args.format)
    except NoDatabase as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from jaa_gateway.store.db import describe_error

        print(f"error: the database could not be read: {describe_error(exc)}", file=sys.stderr)
        return 1
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"{args.out}: the {args.format} report of {month.label}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _demo(speed: float, keep_running: bool) -> int:
    from jaa_gateway.demo.runner import run_demo

    return run_demo(speed=speed, keep_running=keep_running)


def _broker_of(args: argparse.Namespace) -> tuple[str, int, str, str | None]:
    """host, port, topic prefix and TLS CA: the options, else the config's [mqtt], else defaults.

    Only where the broker is comes from the config: never its client id (two clients with one
    id throw each other off the broker) and never the gateway's own login.
    """
    host, port, prefix, tls_ca = "127.0.0.1", 1883, "jaa", None
    if args.config:
        cfg = load_config(args.config)
        host, port, prefix, tls_ca = (
            cfg.mqtt.host,
            cfg.mqtt.port,
            cfg.mqtt.topic_prefix,
            cfg.mqtt.tls_ca,
        )
    host = args.host or host
    port = args.port or port
    prefix = args.prefix or prefix
    return host, port, prefix, args.tls_ca or tls_ca


def _send(args: argparse.Namespace, kind: Kind, sender: str, fields: dict[str, Any]) -> int:
    import datetime as dt

    import aiomqtt

    from jaa_gateway.adapters.events import Rejected
    from jaa_gateway.demo.simulator import build_event, cmd_topic, new_event_id, send_and_listen

    if not 0 <= args.wait <= 3600:
        print("error: --wait must be between 0 and 3600 seconds", file=sys.stderr)
        return 2
    try:
        host, port, prefix, tls_ca = _broker_of(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    try:
        # checked with the gateway's own parser: what it would drop is never sent
        topic, payload = build_event(
            prefix,
            kind,
            sender,
            args.type,
            fields,
            event_id=args.id or new_event_id(kind),
            now=dt.datetime.now(dt.UTC),
        )
    except Rejected as exc:
        print(
            f"error: the gateway would reject this event ({exc.reason}): {exc.detail}",
            file=sys.stderr,
        )
        return 2

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        received = asyncio.run(
            send_and_listen(
                host=host,
                port=port,
                topic=topic,
                payload=payload,
                answers=cmd_topic(prefix, kind, sender),
                wait=args.wait,
                username=args.username,
                password=os.environ.get(PASSWORD_ENV) or None,
                tls_ca=tls_ca,
                write=write,
            )
        )
    except aiomqtt.MqttError as exc:
        print(f"error: MQTT broker {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if received == 0 and args.wait > 0:
        write(f"no answer on the cmd topic within {args.wait:g} s")
    return 0


def _device(args: argparse.Namespace) -> int:
    fields = {
        "location": args.location,
        "planned_minutes": args.planned_minutes,
        "battery": args.battery,
        "lat": args.lat,
        "lon": args.lon,
        "alarm": args.alarm,
    }
    return _send(args, "device", args.device_id, fields)


def _door(args: argparse.Namespace) -> int:
    if args.type != "badge" and (args.badge or args.action):
        print("error: BADGE and --action belong to a badge event only", file=sys.stderr)
        return 2
    return _send(args, "door", args.door_id, {"badge": args.badge, "action": args.action})


def _mqtt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--config", help="take host, port, prefix and TLS CA from this config's [mqtt]")
    g.add_argument("--host", help="broker host (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="broker port (default 1883)")
    g.add_argument("--prefix", help="topic prefix (default jaa)")
    g.add_argument(
        "--username",
        help=f"MQTT login (default: the device or door id); password from ${PASSWORD_ENV}",
    )
    g.add_argument("--tls-ca", help="CA file: connect with TLS")
    p.add_argument("--id", help="event id (default: a fresh one); repeat an id to test dedupe")
    p.add_argument(
        "--wait",
        type=float,
        default=3.0,
        help="seconds to print the gateway's answers on the cmd topic (default 3)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaa-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the daemon in the foreground")
    p_run.add_argument("--config", required=True, help="path to the TOML config")
    p_check = sub.add_parser("check-config", help="validate a config file")
    p_check.add_argument("path")
    p_report = sub.add_parser(
        "report",
        help="the monthly lone-work report (HTML for A4, or CSV) from the config's database",
    )
    p_report.add_argument("--config", required=True, help="path to the TOML config")
    p_report.add_argument("--month", required=True, help="YYYY-MM, a month in the site's zone")
    p_report.add_argument("--format", choices=("html", "csv"), default="html")
    p_report.add_argument("--out", help="write to this file (default: standard output)")
    sub.add_parser(
        "hash-password",
        help="read a console password (twice from a terminal, once from stdin) and print its "
        "bcrypt hash for people's console_password",
    )

    p_demo = sub.add_parser("demo", help="a scripted tour on an embedded broker (exits 0 when OK)")
    p_demo.add_argument(
        "--speed", type=float, default=1.0, help="run the story this many times faster (0.2-10)"
    )
    p_demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the story, keep the broker, the gateway and its HTTP API up until Ctrl-C",
    )

    p_dev = sub.add_parser(
        "device",
        help="publish one device event and print the gateway's answers",
        description="Publish one contract event as a device (QoS 1) and print what the gateway "
        "answers on the device's cmd topic.",
    )
    p_dev.add_argument("device_id")
    p_dev.add_argument("type", choices=DEVICE_TYPES)
    p_dev.add_argument("--location", help="session_start: the location id")
    p_dev.add_argument("--planned-minutes", type=int, help="session_start: planned length")
    p_dev.add_argument("--lat", type=float)
    p_dev.add_argument("--lon", type=float)
    p_dev.add_argument("--battery", type=float, help="percent (heartbeat, low_battery)")
    p_dev.add_argument("--alarm", help="cancel: the alarm id")
    _mqtt_options(p_dev)

    p_door = sub.add_parser(
        "door",
        help="publish one door event and print the gateway's answers",
        description="Publish one contract event as a door sensor / badge reader (QoS 1) and "
        "print what the gateway answers on the door's cmd topic.",
    )
    p_door.add_argument("door_id")
    p_door.add_argument("type", choices=DOOR_TYPES)
    p_door.add_argument("badge", nargs="?", help="badge: the card id")
    p_door.add_argument(
        "--action", choices=("start", "end"), help="badge: start or end (default: toggle)"
    )
    _mqtt_options(p_door)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "run":
        return _run(args.config)
    if args.command == "report":
        return _report(args)
    if args.command == "hash-password":
        return _hash_password()
    if args.command == "demo":
        return _demo(args.speed, args.keep_running)
    if args.command == "device":
        return _device(args)
    if args.command == "door":
        return _door(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
