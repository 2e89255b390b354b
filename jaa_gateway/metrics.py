"""Prometheus metrics, in one registry per process (a module-level default would leak
between daemons started by one test process, so each App builds its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REJECT_REASONS = (
    "bad_json",
    "not_object",
    "too_large",
    "bad_field",
    "unknown_type",
    "bad_topic",
    "unknown_device",
    "duplicate",
    "handler_error",
)

# the daemon's supervised long-running tasks (app.py), listed so their counters start at 0
SUPERVISED_TASKS = (
    "mqtt",
    "inbox",
    "deadlines",
    "outbox",
    "loop-lag",
    "watchdog",
    "housekeeping",
    "selfwatch",
    "cluster",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rejected = Counter(
            "jaa_rejected_messages",
            "Inbound MQTT messages dropped, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        self.received = Counter(
            "jaa_mqtt_messages_received", "Inbound MQTT messages accepted at the edge", registry=r
        )
        self.mqtt_connected = Gauge(
            "jaa_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_reconnects = Counter("jaa_mqtt_reconnects", "Broker (re)connections", registry=r)
        self.inbox_depth = Gauge("jaa_inbox_depth", "Events waiting for the engine", registry=r)
        self.sessions_active = Gauge("jaa_sessions_active", "Active lone-work sessions", registry=r)
        self.session_denials = Counter(
            "jaa_session_denials", "Session starts denied, by reason", ["reason"], registry=r
        )
        self.alarms_open = Gauge(
            "jaa_alarms_open", "Alarms not yet resolved or cancelled", registry=r
        )
        self.alarms_raised = Counter(
            "jaa_alarms_raised", "Alarms raised, by kind", ["kind"], registry=r
        )
        self.notifications = Counter(
            "jaa_notifications",
            "Notifications by channel and outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.notify_latency = Histogram(
            "jaa_notification_send_seconds",
            "Time of one provider request",
            ["channel"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "jaa_outbox_pending", "Notifications waiting to be sent", registry=r
        )
        self.degraded = Gauge(
            "jaa_gateway_degraded",
            "1 while the gateway cannot notify or cannot write its database",
            registry=r,
        )
        # hot standby (CONTRACT §8): 1 on the node that leads (a gateway alone always does)
        self.leader = Gauge("jaa_gateway_leader", "1 while this node is the leader", registry=r)
        self.leader_changes = Counter(
            "jaa_gateway_leader_changes", "Times this node became the leader", registry=r
        )
        self.loop_lag = Gauge(
            "jaa_event_loop_lag_seconds", "Last measured event loop lag", registry=r
        )
        self.task_restarts = Counter(
            "jaa_task_restarts",
            "Long-running tasks restarted after they failed",
            ["task"],
            registry=r,
        )
        for task in SUPERVISED_TASKS:
            self.task_restarts.labels(task=task)
        self.deadlines_abandoned = Counter(
            "jaa_deadlines_abandoned",
            "Deadlines given up on after failing again and again while other work succeeded",
            registry=r,
        )
        # sos -> SMS, split where the time goes: waiting in the inbox ("queued": received at
        # the edge -> the engine takes it) and "handled" (received -> committed, its SMS
        # handed to the sender and its answers to the MQTT edge). Urgent events one by one;
        # a batch of routine events once, by its oldest event (cheap at 10,000 events/s).
        self.event_stage = Histogram(
            "jaa_event_stage_seconds",
            "Time from an event's arrival at the MQTT edge to each stage of its handling",
            ["stage", "priority"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self._stages = {
            (stage, priority): self.event_stage.labels(stage=stage, priority=priority)
            for stage in ("queued", "handled")
            for priority in ("urgent", "routine")
        }
        self.timer_lateness = Histogram(
            "jaa_timer_lateness_seconds",
            "How late deadlines fired",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def observe_event(self, priority: str, queued_s: float, handled_s: float) -> None:
        """One event's (or batch's) stage times, in seconds since it reached the edge."""
        self._stages["queued", priority].observe(max(0.0, queued_s))
        self._stages["handled", priority].observe(max(0.0, handled_s))
