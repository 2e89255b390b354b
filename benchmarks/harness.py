"""Plumbing shared by the scenarios: processes (gateway, fleet, floor, Node-RED), /proc
footprints, the alarm probe, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.site import BENCH_TOKEN, GUARD_PHONE
from tests.support.broker import free_port
from tests.support.gateway import GatewayProcess
from tests.support.twilio_double import Recorded, TwilioDouble

PEERS = Path(__file__).parent / "peers"
NODE_RED_VERSION = "4.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- numbers


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no samples")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/max in ms; an infinite sample (never happened) makes a percentile None."""

    def ms(v: float) -> float | None:
        return None if v == float("inf") else round(v * 1000, 2)

    return {
        "n": len(seconds),
        "p50_ms": ms(pct(seconds, 50)),
        "p99_ms": ms(pct(seconds, 99)),
        "max_ms": ms(max(seconds)),
    }


# ---------------------------------------------------------------------- /proc


@dataclass
class Footprint:
    peak_rss_mb: float
    cpu_s: float

    def as_dict(self) -> dict[str, float]:
        return {"peak_rss_mb": round(self.peak_rss_mb, 1), "cpu_s": round(self.cpu_s, 2)}


def footprint(pid: int) -> Footprint:
    """Peak RSS (VmHWM) and user+system CPU seconds of a live process."""
    hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        # the command name may hold spaces: fields are counted after its closing parenthesis
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return Footprint(hwm, cpu)


def merge_footprints(fps: Sequence[Footprint]) -> Footprint:
    return Footprint(max(f.peak_rss_mb for f in fps), sum(f.cpu_s for f in fps))


# ---------------------------------------------------------------------- gateway


class Gateway:
    """`jaa-gateway run` as a child process, with its /metrics and API at hand."""

    def __init__(self, cfg: dict[str, Any], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = GatewayProcess(cfg, workdir)
        self.base = self.proc.base
        self.session = aiohttp.ClientSession()
        self.started_at = 0.0
        self.last_footprint: Footprint | None = None

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def start(self, timeout: float = 60.0) -> float:
        """Start and wait for /healthz 200; returns the seconds from spawn to ready."""
        self.started_at = time.monotonic()
        self.proc.start()
        return await self.proc.wait_ready(timeout)

    def sample(self) -> Footprint:
        self.last_footprint = footprint(self.pid)
        return self.last_footprint

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(self.base + "/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def api(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
        async with self.session.get(self.base + path, headers=headers) as r:
            r.raise_for_status()
            return await r.json()

    async def processed(self) -> tuple[float, float]:
        """(events taken off the wire, inbox depth): the engine has handled received - depth."""
        m = await self.metrics()
        return m.get("jaa_mqtt_messages_received_total", 0.0), m.get("jaa_inbox_depth", 0.0)

    async def wait_metric(
        self, name: str, pred: Callable[[float], bool], timeout: float, what: str
    ) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = (await self.metrics()).get(name, 0.0)
            if pred(value):
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {name}={value} after {timeout}s")
            await asyncio.sleep(0.25)

    async def stop(self) -> Footprint | None:
        """SIGTERM; returns the footprint sampled just before."""
        fp = None
        if self.proc.proc is not None and self.proc.proc.poll() is None:
            fp = self.sample()
            await asyncio.to_thread(self.proc.terminate)
        await self.session.close()
        return fp

    def kill9(self) -> Footprint:
        fp = self.sample()
        self.proc.kill9()
        return fp

    async def close(self) -> None:
        await self.session.close()

    def log_tail(self) -> str:
        return self.proc.log_tail()


# ---------------------------------------------------------------------- helper processes


class Child:
    """A python -m benchmarks.X child with line-oriented stdin/stdout."""

    def __init__(self, args: list[str], name: str, workdir: Path) -> None:
        self.name = name
        self.errlog = (workdir / f"{name}.stderr").open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            env=env,
            cwd=Path(__file__).parent.parent,
            text=True,
            bufsize=1,
        )

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


class Fleet(Child):
    """The load generator process (benchmarks/fleet.py)."""

    def __init__(self, broker_port: int, workdir: Path) -> None:
        super().__init__(["benchmarks.fleet", "--port", str(broker_port)], "fleet", workdir)

    async def command(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send(obj)
        return await asyncio.to_thread(self.read)

    async def stream(
        self, name: str, type_: str, first: int, count: int, rate: float, total: int | None = None
    ) -> None:
        await self.command(
            {
                "cmd": "stream",
                "name": name,
                "type": type_,
                "first": first,
                "count": count,
                "rate": rate,
                "total": total,
            }
        )

    async def stop_stream(self, name: str) -> None:
        await self.command({"cmd": "stop", "name": name})

    async def stats(self) -> dict[str, Any]:
        # a finished finite stream may have printed a "done" line first: skip it
        self.send({"cmd": "stats"})
        while True:
            line = await asyncio.to_thread(self.read)
            if "sent" in line and "acked" in line:
                return line

    def quit(self) -> None:
        with contextlib.suppress(OSError):
            self.send({"cmd": "quit"})
        self.stop()


class NullSubscriber(Child):
    def __init__(self, broker_port: int, workdir: Path) -> None:
        super().__init__(["benchmarks.floor", "null", "--port", str(broker_port)], "null", workdir)
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _follow(self) -> None:
        while True:
            line = await asyncio.to_thread(self.read)
            self.count = int(line["n"])

    def start_following(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def stop(self) -> None:
        super().stop()
        if self._task is not None:
            self._task.cancel()


def floor_relay(broker_port: int, double: TwilioDouble, workdir: Path) -> Child:
    return Child(
        [
            "benchmarks.floor",
            "relay",
            "--port",
            str(broker_port),
            "--api-base",
            double.api_base,
            "--sid",
            double.account_sid,
            "--token",
            double.auth_token,
        ],
        "floor-relay",
        workdir,
    )


# ---------------------------------------------------------------------- Node-RED


def node_red_prefix() -> Path:
    """Node-RED installed with npm into a temporary prefix (kept between runs, never in the
    project). Raises RuntimeError when npm or the install is not available."""
    prefix = Path(
        os.environ.get(
            "JAA_BENCH_NODE_RED_PREFIX",
            Path(tempfile.gettempdir()) / f"jaa-bench-node-red-{NODE_RED_VERSION}",
        )
    )
    red = prefix / "node_modules" / "node-red" / "red.js"
    if red.exists():
        return prefix
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise RuntimeError("node/npm not found: cannot install Node-RED")
    prefix.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [npm, "install", "--prefix", str(prefix), f"node-red@{NODE_RED_VERSION}", "--no-audit"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if res.returncode != 0 or not red.exists():
        raise RuntimeError(f"npm install node-red@{NODE_RED_VERSION} failed: {res.stderr[-500:]}")
    return prefix


class NodeRed:
    def __init__(self, prefix: Path, workdir: Path, broker_port: int, double: TwilioDouble) -> None:
        self.userdir = workdir / "node-red"
        self.userdir.mkdir(parents=True, exist_ok=True)
        flow = (PEERS / "flow.json").read_text()
        for k, v in {
            "__BROKER_PORT__": str(broker_port),
            "__API_BASE__": double.api_base,
            "__ACCOUNT_SID__": double.account_sid,
            "__GUARD_PHONE__": GUARD_PHONE,
        }.items():
            flow = flow.replace(k, v)
        (self.userdir / "flows.json").write_text(flow)
        # credentialSecret is false in settings.js: credentials are read as plain JSON
        creds = {"jaa-peer-twilio": {"user": double.account_sid, "password": double.auth_token}}
        (self.userdir / "flows_cred.json").write_text(json.dumps(creds))
        shutil.copy(PEERS / "settings.js", self.userdir / "settings.js")
        self.red = prefix / "node_modules" / "node-red" / "red.js"
        self.port = free_port()
        self.log = (workdir / "node-red.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        node = shutil.which("node") or "node"
        self.proc = subprocess.Popen(
            [
                node,
                str(self.red),
                "--userDir",
                str(self.userdir),
                "--settings",
                str(self.userdir / "settings.js"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, NR_PORT=str(self.port)),
        )

    def sample(self) -> Footprint:
        assert self.proc is not None
        return footprint(self.proc.pid)

    def stop(self) -> Footprint | None:
        fp = None
        if self.proc is not None and self.proc.poll() is None:
            fp = self.sample()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return fp


# ---------------------------------------------------------------------- probes


class Probe:
    """Publishes device events from the harness (paho, its own network thread) and stamps
    them; the Twilio double in this same process stamps the arrivals (both time.monotonic)."""

    def __init__(self, broker_port: int, name: str = "probe") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{name}-{os.getpid()}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(1000)
        self.received: list[tuple[float, str, bytes]] = []  # (time.time(), topic, payload)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self.client.socket().setsockopt(6, 1, 1)  # TCP_NODELAY (IPPROTO_TCP=6, TCP_NODELAY=1)

    def _on_message(self, cl: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append((time.time(), msg.topic, msg.payload))

    def subscribe(self, topic: str) -> None:
        res = self.client.subscribe(topic, qos=1)
        if res[0] != 0:
            raise RuntimeError(f"subscribe failed: {res}")

    def publish(self, topic: str, payload: str) -> float:
        t0 = time.monotonic()
        self.client.publish(topic, payload, qos=1)
        return t0

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def wait_request(
    double: TwilioDouble, since: int, marker: str, timeout: float = 5.0
) -> tuple[Recorded, int]:
    """The first request at index >= since whose body contains marker; returns it and the
    index to continue from."""
    found: list[Recorded] = []

    def match(d: TwilioDouble) -> bool:
        for r in d.attempts[since:]:
            if marker in (r.body or ""):
                found.append(r)
                return True
        return False

    await double.wait_for(match, timeout)
    return found[0], len(double.attempts)
