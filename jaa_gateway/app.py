"""Wiring and lifecycle: one asyncio.TaskGroup with named tasks, signals, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from jaa_gateway import lease
from jaa_gateway.adapters.console import Console, DeskStatus
from jaa_gateway.adapters.http import Health, HttpApi
from jaa_gateway.adapters.leader_http import leader_middleware
from jaa_gateway.adapters.mqtt import MqttEdge
from jaa_gateway.adapters.report_http import ReportHttp
from jaa_gateway.adapters.scheduler import housekeeping_scheduler
from jaa_gateway.aio import within
from jaa_gateway.board import Board
from jaa_gateway.cluster import Cluster, Role
from jaa_gateway.config import Config
from jaa_gateway.deadlines import Deadlines
from jaa_gateway.intake import Intake
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify import make_notifier
from jaa_gateway.notify.base import Notifier
from jaa_gateway.outbox import Outbox
from jaa_gateway.report.service import Reports
from jaa_gateway.selfwatch import SelfWatch
from jaa_gateway.store.db import Store
from jaa_gateway.supervise import Supervisor
from jaa_gateway.systemd import sd_notify, watchdog
from jaa_gateway.views import Views
from jaa_gateway.wiring import wire_core

log = structlog.get_logger("jaa_gateway.app")

STOP_TIMEOUT = 8.0
CONSOLE_WARNING = (
    "notify.driver is 'console': SMS and calls are only printed, nobody is paged "
    "(set driver = 'twilio' in production)"
)


class _Stop(Exception):
    """Raised inside the task group to end it on a graceful stop."""


class App:
    def __init__(
        self,
        cfg: Config,
        *,
        notifier: Notifier | None = None,
        notify_write: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        # hot standby (CONTRACT §8, cluster.py) -- without [cluster] the gateway always acts
        cl = cfg.cluster
        timing = lease.Timing(cl.lease.total_seconds()) if cl is not None else None
        self.store = Store(
            cfg.gateway.database,
            node=cl.node if cl is not None else None,
            stuck_tx_after=timing.stuck_tx_after if timing is not None else None,
        )
        self.role = Role(self.store.node, timing)
        if timing is not None:
            self.store.fence = self.role.fence
        self.notifier = notifier or make_notifier(cfg, write=notify_write)
        self.supervisor = Supervisor(self.metrics)
        self.deadlines = Deadlines(on_late=self.metrics.timer_lateness.observe)
        self.outbox = Outbox(cfg, self.store, self.notifier, self.metrics)
        self.outbox.may_act = self.role.may_act  # cluster hook
        self.intake = Intake(self.metrics)
        self._enqueue = self.intake.enqueue  # what the MQTT edge hands its events to
        self.mqtt = MqttEdge(
            cfg.mqtt,
            self.metrics,
            self._enqueue,
            on_connect=self._on_connect,
            on_state=self._on_broker_state,
            node=cl.node if cl is not None else None,  # cluster hook
            may_connect=self.role.may_act,  # cluster hook
        )
        self.engine = wire_core(
            cfg, self.store, self.mqtt, self.deadlines, self.metrics, self.outbox
        )
        self.selfwatch = SelfWatch(
            cfg,
            self.store,
            self.outbox,
            self.notifier,
            self.mqtt,
            self.metrics,
            supervisor=self.supervisor,
            abandoned=lambda: self.engine.abandoned_deadlines,
        )
        self.selfwatch.node = cl.node if cl is not None else None  # cluster hook
        self.loop_lag = 0.0
        # console hooks: sends and delivery statuses are told as committed units are
        changes = self.engine.changes
        self.outbox.recorded = lambda: changes.emit("notification")
        # the monthly report (CONTRACT §10): the API's and the console's, read-only
        reports = ReportHttp(cfg, Reports(cfg, self.store))
        self.http = HttpApi(
            cfg,
            self.engine,
            Views(self.store, delivered=lambda: changes.emit("delivery")),
            self.metrics.registry,
            Health(
                # cluster hook: a standby is not connected to the broker, and that is healthy
                mqtt_connected=lambda: self.mqtt.connected or not self.role.may_act(),
                loop_lag=lambda: self.loop_lag,
                extra=lambda: [
                    f"degraded: {self.selfwatch.details.get(r, r)}" for r in self.selfwatch.reasons
                ],
                warnings=lambda: [CONSOLE_WARNING] if cfg.notify.driver == "console" else [],
                fields=(
                    (lambda: {"role": self.role.role, "leader": self.role.leader})
                    if timing is not None
                    else dict
                ),
            ),
            reports,
        )
        # the guard console (CONTRACT §9), on the API's server
        self.console = Console(
            cfg, self.engine, Board(self.store), changes, self._desk_status, reports=reports
        )
        self.console.routes(self.http.app)
        self.cluster: Cluster | None = None
        if timing is not None:  # cluster hook: one middleware, keyed on method and path
            self.http.app.middlewares.append(leader_middleware(self.role))
            self.cluster = Cluster(
                self.role,
                self.store,
                self.metrics,
                lead=self._lead,
                stepped_down=self._stepped_down,
            )
        self.ready = asyncio.Event()
        # `jaa-gateway run` only: tests and the demo run many Apps in one process
        self.freeze_gc = False
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None

    def _desk_status(self) -> DeskStatus:
        """The console's header, from memory."""
        cl = self.cfg.cluster
        return DeskStatus(
            mqtt_connected=self.mqtt.connected or not self.role.may_act(),
            degraded=[self.selfwatch.details.get(r, r) for r in self.selfwatch.reasons],
            twilio_failing=self.outbox.failing_since is not None,
            notify_driver=self.cfg.notify.driver,
            clustered=cl is not None,
            may_act=self.role.may_act(),
            leader=self.role.leader,
            node=cl.node if cl is not None else None,
        )

    async def _on_connect(self) -> None:
        await self.selfwatch.republish()
        await self.engine.republish_open_alarms()

    def _on_broker_state(self, connected: bool) -> None:
        # common cause (CONTRACT §4): while the broker is away nobody is judged silent alone
        self.engine.presence.broker(connected, self.engine.clock().timestamp())

    async def _lag_monitor(self) -> None:
        interval = 0.25
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag = max(0.0, loop.time() - t0 - interval)
            self.metrics.loop_lag.set(self.loop_lag)

    async def _housekeeping(self) -> None:
        sched = housekeeping_scheduler()
        sched.add_job(self._flush, "interval", seconds=2, id="flush_devices")
        sched.add_job(self._purge, "interval", minutes=30, id="purge_processed")
        sched.start()
        try:
            await asyncio.Event().wait()
        finally:
            sched.shutdown(wait=False)

    async def _flush(self) -> None:
        try:
            if await self.engine.flush_devices():
                self.engine.changes.emit("devices")
        except Exception:
            log.exception("device_flush_failed")

    async def _purge(self) -> None:
        try:
            n = await self.engine.purge_processed()
            if n:
                log.info("processed_events_purged", count=n)
        except Exception:
            log.exception("purge_failed")

    async def _start_http(self) -> None:
        self._runner = web.AppRunner(self.http.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.http.host, self.cfg.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.cfg.http.port
        log.info("http_listening", host=self.cfg.http.host, port=self.http_port)

    def _is_ready(self) -> bool:
        if self.cluster is not None and not self.role.may_act():
            return self.cluster.first_answer.is_set()  # a standby: once the lease was tried
        return self.mqtt.connected

    async def _wait_ready(self) -> None:
        while not self._is_ready():  # noqa: ASYNC110 (the edge keeps a flag, not an event)
            await asyncio.sleep(0.05)
        self.ready.set()
        sd_notify("READY=1")
        log.info("gateway_ready")

    async def _wait_stop(self) -> None:
        await self.stopping.wait()
        log.info("gateway_stopping")
        # offline goes out (retained) while the MQTT task still runs; cancelling it first
        # would disconnect cleanly, and a clean disconnect does not fire the last will
        with contextlib.suppress(Exception):
            await within(self.engine.flush_devices(), 2.0)
        with contextlib.suppress(Exception):
            await within(self.mqtt.stop(), 3.0)
        raise _Stop

    async def run(self) -> None:
        """Run until `stopping` is set; then stop within STOP_TIMEOUT."""
        t0 = time.monotonic()
        if self.cfg.notify.driver == "console":
            log.warning("notify_console_driver", warning=CONSOLE_WARNING)
        version = await self.store.migrate()
        log.info("db_ready", schema_version=version)
        if self.cluster is None:
            await self.outbox.recover()
        start = getattr(self.notifier, "start", None)
        if start is not None:
            await start()  # warms the provider client: the first alarm SMS must not pay for it
        if self.cluster is None:
            await self.engine.start()
            self.metrics.leader.set(1)
        else:
            # a standby answers reads; the config's assessments at least (the API's are loaded
            # from the store when this node leads)
            self.engine.svc.assessments.from_config()
        await self._start_http()
        if self.freeze_gc:
            # what start-up built lives as long as the process: out of the collector's way, so
            # a full collection later does not walk 10,000 people's config (a pause on the
            # loop that runs the alarms)
            gc.freeze()
            gc.enable()
        try:
            async with asyncio.TaskGroup() as tg:
                # every long-running task is supervised: an exception in one loop is logged,
                # counted, reported as degraded and the task restarted; it never ends the daemon
                tasks: dict[str, Callable[[], Awaitable[None]]] = {
                    "loop-lag": self._lag_monitor,
                    "watchdog": watchdog,
                    "console": self.console.feed.run,  # on every node: the console reads
                }
                if self.cluster is None:
                    tasks |= self._leader_tasks()
                else:  # cluster hook: the leader's tasks run while this node leads (_lead)
                    tasks["cluster"] = self.cluster.run
                for name, start in tasks.items():
                    tg.create_task(self._supervised(name, start), name=name)
                tg.create_task(self._wait_ready(), name="ready")
                tg.create_task(self._wait_stop(), name="stop")
                log.info("gateway_started", startup_s=round(time.monotonic() - t0, 3))
        except* _Stop:
            pass
        finally:
            await self._shutdown()

    def _leader_tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """What only the node that acts runs: MQTT, events, timers, sends, housekeeping."""
        return {
            "mqtt": self.mqtt.run,
            "inbox": lambda: self.intake.run(self.engine.handle_batch),
            "deadlines": lambda: self.deadlines.run(self.engine.on_deadlines),
            "outbox": self.outbox.run,
            "housekeeping": self._housekeeping,
            "selfwatch": self.selfwatch.run,
        }

    def _supervised(
        self, name: str, start: Callable[[], Awaitable[None]]
    ) -> Coroutine[Any, Any, None]:
        return self.supervisor.run(
            name,
            start,
            before_restart=self.outbox.reset_after_crash if name == "outbox" else None,
            stopping=self.stopping.is_set,
        )

    # ------------------------------------------------------------------ hot standby

    async def _lead(self) -> None:
        """This node leads (cluster.py): start as a restart does (CONTRACT §7.1), from the
        store, and run the leader's tasks until cancelled."""
        now = self.engine.clock().timestamp()
        self.engine.presence.afresh(now)  # every watched device gets a full device_timeout
        await self.outbox.recover()
        await self.engine.start()
        async with asyncio.TaskGroup() as tg:
            for name, start in self._leader_tasks().items():
                tg.create_task(self._supervised(name, start), name=name)

    async def _stepped_down(self) -> None:
        """The leader's tasks are cancelled: forget what this node held as leader."""
        self.mqtt.forget()
        self.engine.forget()
        self.outbox.forget()
        self.selfwatch.reasons = []
        self.intake.drain()

    async def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        with contextlib.suppress(Exception):
            await within(self.engine.flush_devices(), 2.0)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await within(self._runner.cleanup(), 2.0)
        with contextlib.suppress(Exception):
            await within(self.notifier.aclose(), 2.0)
        with contextlib.suppress(Exception):
            await within(self.store.close(), 2.0)
        log.info("gateway_stopped")


def run_daemon(cfg: Config, config_path: str, log_format: str = "json") -> int:
    from jaa_gateway import logs

    logs.configure(log_format)

    async def main() -> None:
        app = App(cfg)
        app.freeze_gc = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.stopping.set)
        log.info("gateway_starting", config=config_path, site=cfg.gateway.site)
        await app.run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
