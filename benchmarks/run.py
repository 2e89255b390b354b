"""`python -m benchmarks.run` (`make bench`): the five measurements of issue 6 in one run, a
table on stdout and benchmarks/results/latest.json. The alarm latency is measured on SQLite and,
in the same run, on a throwaway PostgreSQL cluster (issue 13, benchmarks/pg.py).

  --scale tiny      the smoke test's sizes (seconds, no Node-RED)
  --only a,b        some of: latency, burst, ingest, timers, recovery
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import burst, scenarios
from benchmarks.scenarios import Env, Scale
from tests.support.twilio_double import TwilioDouble

RESULTS = Path(__file__).parent / "results" / "latest.json"
ALL = ("latency", "burst", "ingest", "timers", "recovery")
TARGETS = {
    "alarm_p99_vs_peer": "p99 <= Node-RED p99",
    "ingest": ">= 10,000 events/s",
    "timer_p99_ms": 250.0,
    "ready_s": 3.0,
    "rss_mb": 300.0,
}


async def run(scale: Scale, only: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "scale": scale.__dict__,
    }
    async with TwilioDouble() as double:
        env = Env(workdir=workdir, scale=scale, double=double)
        await scenarios.make_template(env)
        out["warm_restart_ready_s"] = round(env.ready_s, 2)
        fns = {
            "latency": scenarios.alarm_latency,
            "burst": burst.burst,
            "ingest": scenarios.ingest,
            "timers": scenarios.timers,
            "recovery": scenarios.recovery,
        }
        for name in only:
            t0 = time.monotonic()
            try:
                out[name] = await fns[name](env)
            except Exception as e:
                traceback.print_exc()
                out[name] = {"error": f"{type(e).__name__}: {e}"}
            out[name]["scenario_s"] = round(time.monotonic() - t0, 1)
            print(f"[bench] {name} done in {out[name]['scenario_s']} s", file=sys.stderr)
        out["notes"] = env.notes
    out["total_s"] = round(time.monotonic() - started, 1)
    return out


def _ms(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"

    def one(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f}"

    return f"{one(d['p50_ms'])} / {one(d['p99_ms'])} / {one(d['max_ms'])}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str, str]] = []
    head = ("measure", "jaa-gateway", "floor", "Node-RED peer", "gw/floor ; gw/peer", "target")
    lat = res.get("latency") or {}
    if "error" in lat:
        rows.append(("alarm latency", "ERROR " + lat["error"][:60], "", "", "", ""))
    elif lat:
        g, f, p = lat.get("gateway"), lat.get("floor"), lat.get("peer")
        rows.append(
            (
                f"alarm latency ms p50/p99/max (n={g['n'] if g else 0})",
                _ms(g),
                _ms(f),
                _ms(p) if p else "n/a: " + str(lat.get("peer_error", ""))[:40],
                f"p50 {_ratio(g and g['p50_ms'], f and f['p50_ms'])}, "
                f"p99 {_ratio(g and g['p99_ms'], f and f['p99_ms'])} ; "
                f"p99 {_ratio(g and g['p99_ms'], p and p['p99_ms'])}",
                "p99 <= peer p99",
            )
        )
        q = lat.get("postgresql")
        rows.append(
            (
                f"  on PostgreSQL, same run (n={q['n'] if q else 0})",
                _ms(q) if q else "n/a: " + str(lat.get("postgresql_error", ""))[:60],
                _ms(f),
                "-",
                f"p50 {_ratio(q and q['p50_ms'], f and f['p50_ms'])}, "
                f"p99 {_ratio(q and q['p99_ms'], f and f['p99_ms'])} ; "
                f"p99 pg/sqlite {_ratio(q and q['p99_ms'], g and g['p99_ms'])}",
                "",
            )
        )
        if q and lat.get("postgresql_error"):
            rows.append(("  PostgreSQL error", str(lat["postgresql_error"])[:80], "", "", "", ""))
        skipped = lat.get("not_sent_block_budget", {})
        if any(skipped.values()):
            rows.append(
                (
                    "  alarms not sent (block time budget)",
                    f"{skipped.get('gateway')} (PostgreSQL {skipped.get('postgresql', 0)})",
                    "-",
                    str(skipped.get("peer")),
                    "",
                    "0",
                )
            )
        lost = lat.get("lost", {})
        if any(lost.values()):
            rows.append(
                (
                    "  alarms lost (no SMS in 5 s)",
                    f"{lost.get('gateway')} (PostgreSQL {lost.get('postgresql', 0)})",
                    str(lost.get("floor")),
                    str(lost.get("peer")),
                    "",
                    "0",
                )
            )
    rows += burst.table_rows(res)
    ing = res.get("ingest") or {}
    if "error" in ing:
        rows.append(("ingest", "ERROR " + ing["error"][:60], "", "", "", ""))
    elif ing:
        floor = ing.get("floor", {}).get("sustained_per_s")
        for kind, label in (
            ("heartbeat", "ingest events/s: heartbeats"),
            ("checkin", "ingest events/s: check-ins"),
            ("mix", "ingest events/s: campus mix"),
        ):
            v = ing.get(kind, {}).get("sustained_per_s")
            rows.append((label, str(v), str(floor), "-", _ratio(v, floor), ">= 10,000"))
        rows.append(
            ("session starts/s (MQTT)", str(ing.get("session_starts_per_s")), "-", "-", "", "")
        )
    tm = res.get("timers") or {}
    if "error" in tm:
        rows.append(("timers", "ERROR " + tm["error"][:60], "", "", "", ""))
    elif tm:
        rows.append(
            (
                f"checkin_due lateness ms (n={tm['sessions'] - tm['checkin_due_missing']})",
                _ms(tm.get("checkin_due")),
                "-",
                "-",
                "",
                "p99 <= 250",
            )
        )
        rows.append(
            (
                "missed_checkin SMS lateness ms "
                f"(n={tm['sessions'] - tm['missed_checkin_sms_missing']})",
                _ms(tm.get("missed_checkin_sms")),
                "-",
                "-",
                "",
                "p99 <= 250",
            )
        )
    rec = res.get("recovery") or {}
    if "error" in rec:
        rows.append(("recovery", "ERROR " + rec["error"][:60], "", "", "", ""))
    elif rec:
        rows.append(("kill -9 -> ready s", str(rec["restart_to_ready_s"]), "-", "-", "", "<= 3"))
        rows.append(
            (
                f"kill -9 -> next step sent s (first/all {rec['open_alarms']})",
                f"{rec['restart_to_first_step_s']} / {rec['restart_to_all_steps_s']}",
                "-",
                "-",
                "",
                "",
            )
        )
    for name in ALL:
        part = res.get(name) or {}
        pgfp = part.get("postgresql_footprint")
        if pgfp:
            rows.append(
                (
                    f"footprint {name} on PostgreSQL: peak RSS MB / CPU s",
                    f"{pgfp['peak_rss_mb']} / {pgfp['cpu_s']}",
                    "-",
                    "-",
                    "",
                    "RSS <= 300",
                )
            )
        fp = part.get("gateway_footprint")
        if fp:
            peer = part.get("peer_footprint")
            rows.append(
                (
                    f"footprint {name}: peak RSS MB / CPU s",
                    f"{fp['peak_rss_mb']} / {fp['cpu_s']}",
                    "-",
                    f"{peer['peak_rss_mb']} / {peer['cpu_s']}" if peer else "-",
                    "",
                    "RSS <= 300",
                )
            )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated, of: {','.join(ALL)}")
    ap.add_argument("--no-peer", action="store_true", help="skip the Node-RED peer")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores)")
    args = ap.parse_args(argv)
    only = tuple(x for x in args.only.split(",") if x)
    unknown = set(only) - set(ALL)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    scale = Scale.full() if args.scale == "full" else Scale.tiny()
    if args.no_peer:
        scale.peer = False
    workdir = Path(tempfile.mkdtemp(prefix="jaa-bench-"))
    try:
        res = asyncio.run(run(scale, only, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"[bench] work dir kept: {workdir}", file=sys.stderr)
    print(table(res))
    for note in res.get("notes", []):
        print("note:", note)
    print(f"total {res['total_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    failed = [n for n in only if "error" in (res.get(n) or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
