"""Hot standby end to end (CONTRACT §8, issue 13): gateways as subprocess daemons on one
PostgreSQL database, a real mosquitto, the Twilio double.

Site of tests/support/gateway.py with a 2 s lease: the leader renews every 0.5 s and acts for
1.5 s after a renewal it sent; a standby takes over within lease + 2 s = 4 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.broker import MosquittoBroker, probe
from tests.support.gateway import Client, GatewayProcess, site_config
from tests.support.postgres import PostgresCluster, find_bindir
from tests.support.twilio_double import Recorded, TwilioDouble
from tests.test_crash_recovery import assert_on_time_across_restart
from tests.test_e2e_alarms import (
    event_topic,
    eventually,
    get_alarm,
    new_id,
    retained_on,
    to,
    wait_cmd,
)

pytestmark = pytest.mark.postgres

LEASE = 2.0
BOUND = LEASE + 2.0  # CONTRACT §8


class Node:
    def __init__(self, name: str, proc: GatewayProcess, twilio: TwilioDouble) -> None:
        self.name = name
        self.proc = proc
        self.client = Client(proc.base, twilio.auth_token)

    async def get(self, path: str) -> tuple[int, Any]:
        try:
            async with self.client.session.get(self.proc.base + path) as r:
                return r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, ValueError):
            return 0, None

    async def leads(self) -> bool:
        status, _ = await self.get("/leader")
        return status == 200


@contextlib.asynccontextmanager
async def cluster_of(
    tmp_path: Path, cfg: dict[str, Any], twilio: TwilioDouble, names: tuple[str, ...]
) -> AsyncIterator[list[Node]]:
    """Start the nodes one after another (the first leads), each ready (/healthz 200)."""
    nodes: list[Node] = []
    try:
        for name in names:
            c = copy.deepcopy(cfg)
            c["cluster"] = {"node": name, "lease": f"{LEASE}s"}
            c["http"]["listen"] = f"127.0.0.1:{free()}"
            work = tmp_path / name
            work.mkdir()
            proc = GatewayProcess(c, work)
            proc.start()
            node = Node(name, proc, twilio)
            nodes.append(node)
            await proc.wait_ready(timeout=20)
            if name == names[0]:
                await eventually(node.leads, timeout=10)
        yield nodes
    finally:
        for n in nodes:
            if n.proc.proc is not None and n.proc.proc.poll() is None:
                with contextlib.suppress(Exception):
                    n.proc.proc.send_signal(signal.SIGCONT)
                    n.proc.terminate()
            n.proc.kill9()
            await n.client.close()


def free() -> int:
    from tests.support.broker import free_port

    return free_port()


async def leaders(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes if await n.leads()]


async def wait_leader(nodes: list[Node], timeout: float) -> tuple[Node, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for n in nodes:
            if await n.leads():
                return n, time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"no leader within {timeout} s")


def ola(records: list[Recorded]) -> list[Recorded]:
    """Notifications about Ola's alarm (the gap sos is Per's)."""
    return [r for r in records if "Ola" in (r.body or "") + (r.twiml or "")]


def ha_site(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio: TwilioDouble, url: str
) -> dict[str, Any]:
    cfg = site_config(tmp_path / "unused.db", mosquitto.port, twilio)
    cfg["gateway"]["database"] = url
    return cfg


async def test_two_nodes_kill9_of_the_leader_mid_escalation(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, postgres_url: str
) -> None:
    cfg = ha_site(tmp_path, mosquitto, twilio_double, postgres_url)
    steps = cfg["escalation_chains"][0]["steps"]
    # the second step after the takeover bound: it must come from the new leader, on time
    steps[1]["after"], steps[2]["after"] = "6s", "12s"
    async with (
        cluster_of(tmp_path, cfg, twilio_double, ("gw-a", "gw-b")) as nodes,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        a, b = nodes
        assert await leaders(nodes) == ["gw-a"]  # exactly one
        sa, ha = await a.get("/healthz")
        sb, hb = await b.get("/healthz")
        assert (sa, ha["role"], ha["leader"]) == (200, "leader", "gw-a")
        assert (sb, hb["role"], hb["leader"]) == (200, "standby", "gw-a")  # a healthy standby
        # reads on the standby work; writes answer not_leader naming the leader
        st, body = await b.client.api("GET", "/api/alarms")
        assert st == 200 and "alarms" in body
        st, body = await b.client.api("POST", "/api/alarms/nope/ack", {"by": "kari"})
        assert (st, body["error"], body["leader"]) == (503, "not_leader", "gw-a")
        st, _ = await b.client.webhook("/twilio/sms", {"From": "+4791234569", "Body": "OK"})
        assert st == 503

        await start_session_on(p)
        eid = new_id("sos")
        t0 = time.monotonic()
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        alarm_id = raised["alarm"]
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)

        async def step0_recorded() -> bool:
            al = await get_alarm(a, alarm_id)
            return bool(al["notifications"]) and all(
                n["state"] == "sent" for n in al["notifications"]
            )

        await eventually(step0_recorded, timeout=3)
        a.proc.kill9()
        t_kill = time.monotonic()
        # an sos while nobody leads: the broker queues it for the persistent session
        gap = new_id("sos")
        await p.publish(event_topic("jaa-0043"), {"id": gap, "type": "sos"}, qos=1)
        await wait_leader([b], timeout=BOUND + 2)
        took = time.monotonic() - t_kill
        print(f"\ntakeover after {took:.2f} s (bound {BOUND} s)")
        assert took <= BOUND, f"takeover took {took:.2f} s, more than lease + 2 s"
        raised_gap = await wait_cmd(p, "jaa-0043", "alarm_raised", lambda m: m.get("re") == gap)
        assert raised_gap["kind"] == "sos"
        # the second step on its original timetable, once; the first not again
        await twilio_double.wait_for(lambda d: len(to(d, "guard-2")) >= 1, timeout=8)
        await asyncio.sleep(0.5)
        t_ready = t_kill + took - t0
        step2 = ola(to(twilio_double, "guard-2") + to(twilio_double, "kari"))
        assert len(step2) == 2, step2
        assert_on_time_across_restart(step2, t0, 6.0, t_ready, "step 2")
        assert sorted(r.kind for r in ola(to(twilio_double, "guard-1"))) == ["call", "sms"]
        # an ack on the new leader stops the escalation: the third step never goes
        st, body = await b.client.api("POST", f"/api/alarms/{alarm_id}/ack", {"by": "kari"})
        assert st == 200, body
        await asyncio.sleep(max(0.0, 12.0 + 1.0 - (time.monotonic() - t0)))
        assert ola(to(twilio_double, "head-security")) == []
        al = await get_alarm(b, alarm_id)
        assert al["state"] == "acknowledged"
        assert await leaders([b]) == ["gw-b"]
        # metrics and the retained status name the leader
        async with b.client.session.get(b.proc.base + "/metrics") as r:
            metrics = await r.text()
        assert "jaa_gateway_leader 1.0" in metrics
        assert "jaa_gateway_leader_changes_total 1.0" in metrics
        status = await retained_on(mosquitto.port, "jaa/gateway/status")
        assert [s.json() for s in status] == [{"state": "online", "node": "gw-b"}]


async def start_session_on(p: Any) -> None:
    eid = new_id("start")
    await p.publish(
        event_topic("jaa-0042"), {"id": eid, "type": "session_start", "location": "d1-123"}
    )
    await wait_cmd(p, "jaa-0042", "session_started", lambda m: m.get("re") == eid, timeout=8)


async def test_a_sigstopped_leader_wakes_as_a_standby_and_sends_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble, postgres_url: str
) -> None:
    cfg = ha_site(tmp_path, mosquitto, twilio_double, postgres_url)
    steps = cfg["escalation_chains"][0]["steps"]
    steps[1]["after"], steps[2]["after"] = "3s", "60s"
    async with (
        cluster_of(tmp_path, cfg, twilio_double, ("gw-a", "gw-b")) as nodes,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        a, b = nodes
        eid = new_id("sos")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)

        async def step0_recorded() -> bool:
            al = await get_alarm(a, raised["alarm"])
            return bool(al["notifications"]) and all(
                n["state"] == "sent" for n in al["notifications"]
            )

        # recorded as sent: then nothing of it may go again (a row still 'sending' would, once)
        await eventually(step0_recorded, timeout=3)
        assert a.proc.proc is not None
        a.proc.proc.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        await wait_leader([b], timeout=BOUND + 2)
        print(f"\ntakeover from a stopped leader after {time.monotonic() - t_stop:.2f} s")
        assert time.monotonic() - t_stop <= BOUND + 0.5
        # step 1 (due at +3 s: guard-2 and kari) from the new leader, once
        await twilio_double.wait_for(
            lambda d: len(to(d, "guard-2")) == 1 and len(to(d, "kari")) == 1, timeout=6
        )
        await asyncio.sleep(0.3)
        sent_before = len(twilio_double.attempts)
        since = len(p.seen)
        a.proc.proc.send_signal(signal.SIGCONT)

        async def a_is_standby() -> bool:
            st, h = await a.get("/healthz")
            return st == 200 and h["role"] == "standby" and h["leader"] == "gw-b"

        await eventually(a_is_standby, timeout=3)
        assert not await a.leads()
        await asyncio.sleep(2.0)
        # the woken node sent nothing: no more requests reached the provider
        assert len(twilio_double.attempts) == sent_before, twilio_double.attempts[sent_before:]
        assert len(to(twilio_double, "guard-2")) == 1
        assert len(to(twilio_double, "kari")) == 1
        assert len(to(twilio_double, "guard-1")) == 2
        # it did not take the MQTT session back: the leader still handles events
        eid2 = new_id("sos")
        await p.publish(event_topic("jaa-0043"), {"id": eid2, "type": "sos"})
        await wait_cmd(p, "jaa-0043", "alarm_raised", lambda m: m.get("re") == eid2, since=since)
        statuses = [
            s.json() for s in p.seen[since:] if s.topic == "jaa/gateway/status" and s.payload
        ]
        assert all(s.get("node") != "gw-a" or s["state"] == "offline" for s in statuses), statuses
        st, hb = await b.get("/healthz")
        assert (st, hb["role"]) == (200, "leader"), hb
        assert await leaders(nodes) == ["gw-b"]
        al = await get_alarm(b, raised["alarm"])
        assert al["state"] == "escalating"


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of the test's own: it is stopped and started under the gateways."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    assert bindir is not None
    work = Path(tempfile.mkdtemp(prefix="jaa-pg-own-"))
    pg = PostgresCluster(bindir, work)
    try:
        pg.start()
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def restart_server(pg: PostgresCluster) -> None:
    opts = (
        f"-c listen_addresses={pg.host} -c port={pg.port} "
        f"-c unix_socket_directories={pg.sockdir} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    pg._run(
        "pg_ctl",
        "-D",
        str(pg.datadir),
        "-l",
        str(pg.logfile),
        "-o",
        opts,
        "-w",
        "-t",
        "30",
        "start",
        as_server=True,
    )


async def test_postgresql_stopped_and_started_under_a_running_pair(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
    own_postgres: PostgresCluster,
) -> None:
    url = own_postgres.create_database()
    cfg = ha_site(tmp_path, mosquitto, twilio_double, url)
    async with (
        cluster_of(tmp_path, cfg, twilio_double, ("gw-a", "gw-b")) as nodes,
        probe(mosquitto.port, "jaa/#") as p,
    ):
        eid = new_id("sos")
        await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
        raised = await wait_cmd(p, "jaa-0042", "alarm_raised", lambda m: m.get("re") == eid)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1")) == 2, timeout=3)
        own_postgres._run(
            "pg_ctl", "-D", str(own_postgres.datadir), "-m", "fast", "stop", as_server=True
        )

        # nobody may act without the database: both step down within the lease
        async def nobody_leads() -> bool:
            return await leaders(nodes) == []

        await eventually(nobody_leads, timeout=LEASE + 1)
        # an sos while the database is away: the device repeats it until answered (§3)
        gap = new_id("sos")
        await p.publish(event_topic("jaa-0043"), {"id": gap, "type": "sos"}, qos=1)
        await asyncio.sleep(1.0)
        restart_server(own_postgres)
        t_back = time.monotonic()
        leader, _ = await wait_leader(nodes, timeout=LEASE + 6)
        back = time.monotonic() - t_back
        print(f"\none leader again {back:.2f} s after the database returned")
        assert back <= LEASE + 2.0
        await asyncio.sleep(1.0)
        assert await leaders(nodes) == [leader.name]
        # the sos published while nobody led was queued by the broker for the session
        await wait_cmd(p, "jaa-0043", "alarm_raised", lambda m: m.get("re") == gap, timeout=8)
        al = await get_alarm(leader, raised["alarm"])
        assert al["state"] == "escalating"
        # the escalation went on: the later steps went out
        await twilio_double.wait_for(lambda d: len(to(d, "head-security")) >= 1, timeout=8)
