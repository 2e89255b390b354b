"""Crash loop across three nodes (issue 13, CONTRACT §8): the crash loop of tests/support/chaos.py
with three gateways on one PostgreSQL database, SIGKILLing whichever node leads.

What is reused: the simulated devices and guards, the kill moments, and the invariant checker
(`chaos.check`) on a snapshot of the shared database and the requests of every node. What is
added:

- Each node has its own Twilio double (same account and token, its own port in the node's
  `twilio.api_base`), so every request says which node sent it (`Req.node`): that is what is
  observable from outside, and what matters (a node that acts is a node that pages).
- `check_one_actor`: in arrival order, whenever the sender changes from one node to another, the
  gap between the two requests must be at least `min_gap`. The lease design guarantees a quarter
  lease at least: a leader acts for 3/4 of the lease after the renewal it sent, and a standby
  takes over only once the lease has expired by the database's clock (jaa_gateway/lease.py).
- `check_rounds`: every `sample_every_s` all nodes' `/healthz` are read at once; two nodes
  saying `role: leader` in one round that took less than that quarter lease is a violation.
- Takeover: the node is killed within milliseconds of answering `/leader` 200, so its lease
  runs at least a quarter lease past that answer: a new leader sooner than that took the lease
  before it expired. The takeover time is from the SIGKILL to the new leader's `/leader` 200.
- The killed node is started again at once (it competes for the lead like the others); the next
  kill waits until all three answer `/healthz` and one leads.
- A leader that steps down without being killed (a renewal too slow on a loaded machine) is
  legal; the sampler sees it, counts it (`stepdowns`) and records an outage from its last
  round as leader to the first round with a leader, which the checker treats like a kill (a
  request in flight at a step-down may go out once more).

Outages for the checker's deadlines run from the SIGKILL to the new leader's `/leader` 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from tests.support.broker import MosquittoBroker, MqttProbe, free_port
from tests.support.chaos import (
    KILL_MODES,
    ChaosResult,
    ChaosRun,
    ChaosSettings,
    Req,
    Snapshot,
    _until,
    requests_of,
)
from tests.support.gateway import Client, GatewayProcess
from tests.support.twilio_double import Recorded, TwilioDouble

# a request's arrival is stamped by the double in the (busy) test process: a little slack on
# the quarter-lease gap between two nodes' requests
STAMP_SLACK = 0.1


@dataclass(frozen=True)
class HaChaosSettings(ChaosSettings):
    nodes: int = 3
    lease_s: float = 2.0
    sample_every_s: float = 0.1
    uptime_s: tuple[float, float] = (0.05, 1.0)  # how long a leader lives before its kill
    startup_kill_share: float = 0.0  # a node's start-up is not its lead: the kills hit leaders

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, kills: int = 15) -> HaChaosSettings:
        env = dict(os.environ) if env is None else env
        n = int(env.get("CHAOS_HA_KILLS", str(kills)))
        seed = int(env.get("CHAOS_SEED", str(cls.seed)))
        if n < 1:
            raise ValueError("CHAOS_HA_KILLS must be at least 1")
        # ~4 s a kill on a loaded 2-core machine: this bound only stops a hung run
        return cls(seed=seed, kills=n, max_wall_s=max(150.0, n * 8.0))

    @property
    def min_gap(self) -> float:
        """The least time between two different nodes' requests: a quarter lease, less slack."""
        return self.lease_s * 0.25 - STAMP_SLACK


# --------------------------------------------------------------------------- the invariants


@dataclass(frozen=True)
class Round:
    """One sample of every node's /healthz: sent at `t0`, all answered by `t1` (wall clock)."""

    t0: float
    t1: float
    roles: dict[str, str | None]  # node -> "leader" / "standby" / None (no answer)

    @property
    def leaders(self) -> list[str]:
        return sorted(n for n, r in self.roles.items() if r == "leader")


def check_one_actor(reqs: Sequence[Req], min_gap: float) -> tuple[list[str], Counter[str]]:
    """Requests from two nodes less than `min_gap` apart: two nodes acting at once."""
    bad: list[str] = []
    counts: Counter[str] = Counter()
    ordered = sorted(reqs, key=lambda q: q.at)
    gaps: list[float] = []
    for a, b in itertools.pairwise(ordered):
        if a.node == b.node:
            continue
        counts["sender_switches"] += 1
        gap = b.at - a.at
        gaps.append(gap)
        if gap < min_gap:
            bad.append(
                f"{a.kind} to {a.to} from {a.node} at {a.at:.3f} and {b.kind} to {b.to} from "
                f"{b.node} at {b.at:.3f}: {gap:.3f} s apart (< {min_gap:.3f} s), two nodes acting"
            )
    if gaps:
        counts["sender_switch_min_gap_ms"] = int(min(gaps) * 1000)
    counts["senders"] = len({q.node for q in ordered})
    return bad, counts


def check_rounds(rounds: Sequence[Round], max_span: float) -> tuple[list[str], Counter[str]]:
    """Two nodes saying `leader` in one round shorter than `max_span`: two leaders at once."""
    bad: list[str] = []
    counts: Counter[str] = Counter()
    for r in rounds:
        if r.t1 - r.t0 >= max_span:
            counts["rounds_too_slow"] += 1
            continue
        counts["rounds"] += 1
        if len(r.leaders) > 1:
            bad.append(f"round at {r.t0:.3f} (+{r.t1 - r.t0:.3f} s): {r.leaders} all leading")
        elif not r.leaders:
            counts["rounds_without_leader"] += 1
    return bad, counts


# --------------------------------------------------------------------------- the nodes


class Node:
    def __init__(self, name: str, proc: GatewayProcess, double: TwilioDouble) -> None:
        self.name = name
        self.proc = proc
        self.double = double
        self.client = Client(proc.base, double.auth_token)
        self.expect_dead = False  # killed by the loop, not yet started again

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None


class LeaderClient:
    """The guards' way in, as through the load balancer: the node believed to lead, and on a
    503 `not_leader` the node it names (reads work anywhere)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.hint = nodes[0]

    def _pick(self) -> Node:
        if self.hint.alive():
            return self.hint
        return next((n for n in self.nodes if n.alive()), self.hint)

    def _named(self, body: Any) -> Node | None:
        if isinstance(body, str):
            with contextlib.suppress(ValueError):
                body = json.loads(body)
        if isinstance(body, dict) and body.get("error") == "not_leader":
            return next((n for n in self.nodes if n.name == body.get("leader")), None)
        return None

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        node = self._pick()
        st, out = await node.client.api(method, path, body)
        other = self._named(out) if st == 503 else None
        if other is not None and other is not node:
            self.hint = other
            st, out = await other.client.api(method, path, body)
        return st, out

    async def webhook(self, path: str, params: dict[str, str]) -> tuple[int, str]:
        node = self._pick()
        st, out = await node.client.webhook(path, params)
        other = self._named(out) if st == 503 else None
        if other is not None and other is not node:
            self.hint = other
            st, out = await other.client.webhook(path, params)
        return st, out

    async def close(self) -> None:
        for n in self.nodes:
            await n.client.close()


def ha_chaos_config(
    base: dict[str, Any], name: str, url: str, double: TwilioDouble, lease_s: float
) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["gateway"]["database"] = url
    cfg["cluster"] = {"node": name, "lease": f"{lease_s}s"}
    cfg["http"]["listen"] = f"127.0.0.1:{free_port()}"
    cfg["twilio"]["api_base"] = double.api_base
    return cfg


# --------------------------------------------------------------------------- the run


@dataclass
class HaChaosResult(ChaosResult):
    takeovers_s: list[float] = field(default_factory=list)
    stepdowns: int = 0
    lease_tokens: tuple[int, int] = (0, 0)

    def summary(self) -> str:
        t = sorted(self.takeovers_s)
        c = self.counts
        lines = [
            super().summary().replace("chaos:", "chaos-ha:", 1),
            f"  takeover s (kill -> new leader's /leader 200): n={len(t)} "
            + (f"min={t[0]:.2f} median={statistics.median(t):.2f} worst={t[-1]:.2f}" if t else "-"),
            f"  leader changes without a kill (stepdowns)={self.stepdowns}; lease token "
            f"{self.lease_tokens[0]} -> {self.lease_tokens[1]}",
            f"  /healthz rounds={c['rounds']} (too slow to judge: {c['rounds_too_slow']}, "
            f"without a leader: {c['rounds_without_leader']}); sender switches="
            f"{c['sender_switches']} (closest {c['sender_switch_min_gap_ms']} ms) "
            f"senders={c['senders']}",
        ]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        out = super().as_json()
        t = sorted(self.takeovers_s)
        out["takeovers_s"] = [round(x, 3) for x in self.takeovers_s]
        if t:
            out["takeover_median_s"] = round(statistics.median(t), 3)
            out["takeover_worst_s"] = round(t[-1], 3)
        out["stepdowns"] = self.stepdowns
        out["lease_tokens"] = list(self.lease_tokens)
        return out


class HaChaosRun(ChaosRun):
    s: HaChaosSettings

    def __init__(
        self,
        workdir: Path,
        broker: MosquittoBroker,
        doubles: list[TwilioDouble],
        url: str,
        settings: HaChaosSettings,
        log: Any = lambda _: None,
    ) -> None:
        if len(doubles) != settings.nodes:
            raise ValueError("one Twilio double per node")
        self.doubles = doubles
        self.url = url
        super().__init__(workdir, broker, doubles[0], settings, log)

    def _setup(self, workdir: Path) -> None:
        self.workdir = workdir
        self._last_snap: Snapshot | None = None
        self.nodes: list[Node] = []
        for i, double in enumerate(self.doubles):
            name = f"gw-{chr(ord('a') + i)}"
            cfg = ha_chaos_config(self.cfg, name, self.url, double, self.s.lease_s)
            work = workdir / name
            work.mkdir()
            self.nodes.append(Node(name, GatewayProcess(cfg, work), double))
        self.gw = self.nodes[0].proc  # for the base class's log tails
        self.client = LeaderClient(self.nodes)
        self.rounds: list[Round] = []
        self.takeovers: list[float] = []
        self.stepdowns = 0
        self._takeover = False  # from just before a kill to the new leader's /leader 200
        self._epoch = 0  # bumped at each start and end of a takeover
        self._open_stepdown = False
        self._pg: asyncpg.Connection | None = None
        self._first_token = 0

    def _attempts(self) -> list[Recorded]:
        return [r for d in self.doubles for r in list(d.attempts)]

    def _requests(self) -> list[Req]:
        return [q for n in self.nodes for q in requests_of(n.double, self.hist, n.name)]

    async def _snapshot(self) -> Snapshot:
        """One consistent read of the shared database (a read-only repeatable-read transaction)."""
        if self._pg is None:
            self._pg = await asyncpg.connect(self.url)
        conn = self._pg
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            taken = time.time()
            alarms = [dict(r) for r in await conn.fetch("SELECT * FROM alarms")]
            notes = [dict(r) for r in await conn.fetch("SELECT * FROM notifications ORDER BY id")]
            sessions = [dict(r) for r in await conn.fetch("SELECT * FROM sessions")]
        for a in alarms:
            if isinstance(a.get("chain"), str):
                a["chain"] = json.loads(a["chain"])
        self._last_snap = Snapshot(taken, alarms, notes, sessions)
        return self._last_snap

    def dump(self) -> Path:
        """The last snapshot, the history and the requests, for a failure's post-mortem (the
        test's database is dropped afterwards; the nodes' logs stay beside this file)."""
        snap = self._last_snap
        out = {
            "snapshot": snap.__dict__ if snap else None,
            "outages": [[o.start, o.end] for o in self.hist.outages],
            "kills": self.hist.kills,
            "takeovers_s": self.takeovers,
            "requests": [q.__dict__ for q in self._requests()],
            "acks_confirmed": self.hist.acks_confirmed,
            "resolves_confirmed": self.hist.resolves_confirmed,
        }
        path = self.workdir / "chaos-ha-state.json"
        path.write_text(json.dumps(out, indent=1, default=str))
        return path

    async def _lease_token(self) -> int:
        await self._snapshot()  # connects
        assert self._pg is not None
        token = await self._pg.fetchval("SELECT max(token) FROM leases")
        return int(token or 0)

    async def _check(self, *, final: bool = False) -> None:
        await super()._check(final=final)
        reqs = self._requests()
        bad, counts = check_one_actor(reqs, self.s.min_gap)
        bad2, counts2 = check_rounds(self.rounds, self.s.lease_s * 0.25)
        self.counts.update(counts)
        self.counts.update(counts2)
        for v in bad + bad2:
            if v not in self.violations:
                self.violations.append(v)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> HaChaosResult:
        t0 = time.monotonic()
        async with (
            MqttProbe(self.broker.port) as probe,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http,
        ):
            self._probe = probe
            self._http = http
            try:
                for n in self.nodes:
                    n.proc.start()
                for n in self.nodes:
                    await n.proc.wait_ready(40)
                self.client.hint = await self._wait_leader(20)
                self._first_token = await self._lease_token()
                return await self._run(t0, probe)
            finally:
                for n in self.nodes:
                    n.proc.kill9()
                await self.client.close()
                if self._pg is not None:
                    await self._pg.close()

    async def _run(self, t0: float, probe: MqttProbe) -> HaChaosResult:
        await probe.subscribe("jaa/device/+/cmd")
        tasks = [
            asyncio.create_task(self._router(), name="chaos-router"),
            asyncio.create_task(self._sampler(), name="chaos-sampler"),
            asyncio.create_task(self._guards(), name="chaos-guards"),
        ]
        for d in self.devices.values():
            actor = self._sos_device if d.id.startswith("jaa-s") else self._session_device
            tasks.append(asyncio.create_task(actor(d), name=f"chaos-{d.id}"))
        try:
            await self._kill_loop(t0)
            self.quiet.set()
            self.drain.set()
            await self._watch(asyncio.sleep(self.s.settle_s))
            last_token = await self._lease_token()
            # the nodes stop now: the sampler's step-downs end here
            self._takeover, self._epoch = True, self._epoch + 1
            # standbys first, then the leader (which hands the lease back)
            order = sorted(self.nodes, key=lambda n: n is self.client.hint)
            for n in order:
                n.expect_dead = True
                await asyncio.to_thread(n.proc.terminate)
            await self._check(final=True)
            if self.violations:
                self.log(f"chaos-ha: state for the post-mortem in {self.dump()}")
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        return HaChaosResult(
            settings=self.s,
            kills=len(self.takeovers),
            startup_kills=0,
            checks=self.checks,
            wall_s=time.monotonic() - t0,
            counts=self.counts,
            violations=self.violations,
            acks_by=self.hist.acks_by,
            kill_modes=self.kill_modes,
            takeovers_s=list(self.takeovers),
            stepdowns=self.stepdowns,
            lease_tokens=(self._first_token, last_token),
        )

    async def _watch(self, aw: Awaitable[Any]) -> None:
        """Await `aw` while making sure no node has died on its own (a crash loop)."""
        task = asyncio.ensure_future(aw)
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            for n in self.nodes:
                if not n.expect_dead and not n.alive():
                    task.cancel()
                    raise AssertionError(f"gateway {n.name} exited by itself:\n{n.proc.log_tail()}")
        task.result()

    async def _kill_loop(self, t0: float) -> None:
        while len(self.takeovers) < self.s.kills:
            if time.monotonic() - t0 > self.s.max_wall_s:
                raise AssertionError(f"only {len(self.takeovers)} kills in {self.s.max_wall_s} s")
            mode = self.rng.choices(KILL_MODES, weights=self.s.kill_weights)[0]
            await self._watch(self._kill_moment(mode))
            # a step-down the sampler is still tracking ends first: its outage is its own
            await _until(lambda: not self._open_stepdown, 10.0)
            victim, seen_leading = await self._poll_leader(10)
            self._takeover, self._epoch = True, self._epoch + 1
            victim.expect_dead = True
            self.hist.killed(time.time())
            victim.proc.kill9()
            t_kill = self.hist.kills[-1]
            self.kill_modes[mode] += 1
            victim.proc.start()  # at once: three nodes again, the restarted one a candidate
            victim.expect_dead = False
            leader = await self._wait_leader(self.s.lease_s + 6)
            t_lead = time.time()
            self.hist.ready(t_lead)
            self._takeover, self._epoch = False, self._epoch + 1
            self.client.hint = leader
            self.takeovers.append(t_lead - t_kill)
            early = seen_leading + self.s.lease_s * 0.25 - 0.05
            if t_lead < early:
                self.violations.append(
                    f"{leader.name} led {t_lead - seen_leading:.3f} s after {victim.name} last "
                    f"answered /leader 200: before {victim.name}'s lease could have expired"
                )
            await self._watch(victim.proc.wait_ready(40))
            await self._check()
            if self.checks % 10 == 0:
                t = sorted(self.takeovers)
                self.log(
                    f"chaos-ha: {len(t)} kills, {self.counts['alarms']} alarms, takeover median "
                    f"{statistics.median(t):.2f} s worst {t[-1]:.2f} s, "
                    f"{time.monotonic() - t0:.0f} s"
                )

    async def _leading(self, n: Node) -> bool:
        if not n.alive():
            return False
        try:
            async with self._http.get(n.proc.base + "/leader") as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _wait_leader(self, timeout: float) -> Node:
        return (await self._poll_leader(timeout))[0]

    async def _poll_leader(self, timeout: float) -> tuple[Node, float]:
        """The node that answers /leader 200 (polled every 20 ms), and the wall clock when
        the poll that found it was sent (it answered after that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = time.time()
            answers = await asyncio.gather(*(self._leading(n) for n in self.nodes))
            leading = [n for n, ok in zip(self.nodes, answers, strict=True) if ok]
            if leading:
                return leading[0], sent
            await asyncio.sleep(0.02)
        raise AssertionError(
            f"no leader within {timeout} s:\n"
            + "\n".join(f"--- {n.name}\n{n.proc.log_tail(15)}" for n in self.nodes)
        )

    # ------------------------------------------------------------------ the sampler

    async def _role(self, n: Node) -> str | None:
        if not n.alive():
            return None
        try:
            async with self._http.get(n.proc.base + "/healthz") as r:
                body = await r.json(content_type=None)
                return str(body.get("role")) if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    async def _sampler(self) -> None:
        """Every node's role, every `sample_every_s`; leader changes that no kill explains
        (step-downs) become outages in the history."""
        prev: Round | None = None
        while True:
            epoch = self._epoch
            t0 = time.time()
            roles = await asyncio.gather(*(self._role(n) for n in self.nodes))
            r = Round(t0, time.time(), {n.name: x for n, x in zip(self.nodes, roles, strict=True)})
            self.rounds.append(r)
            if self._takeover or epoch != self._epoch:
                prev = None  # the kill loop owns this stretch of the history
            elif prev is not None and r.t1 - r.t0 < self.s.lease_s * 0.25:
                if self._open_stepdown and r.leaders:
                    self.hist.ready(r.t1)
                    self._open_stepdown = False
                elif prev.leaders and prev.leaders != r.leaders and not self._open_stepdown:
                    self.stepdowns += 1
                    self.hist.killed(prev.t0)
                    if r.leaders:
                        self.hist.ready(r.t1)
                    else:
                        self._open_stepdown = True
                prev = r
            elif prev is None and not self._open_stepdown:
                prev = r
            await asyncio.sleep(self.s.sample_every_s)
