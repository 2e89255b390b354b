"""The demo's configuration: the shipped demo.toml, adapted to this run.

The file ships inside the package (importlib.resources), so `jaa-gateway demo` works from any
directory. This run then gets its own database (a temporary directory), the embedded broker's
port, a free loopback HTTP port, and its timings divided by ``--speed``.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from jaa_gateway.config import Config, TwilioSection, load_config

RESOURCE = "demo.toml"
DEMO_ACCOUNT_SID = "AC" + "0" * 32
DEMO_FROM_NUMBER = "+4740000000"
LOOPBACK = "127.0.0.1"


def load_demo_config() -> Config:
    """The shipped demo config (raises ConfigError if the packaged file is broken)."""
    resource = importlib.resources.files("jaa_gateway.demo").joinpath(RESOURCE)
    with importlib.resources.as_file(resource) as path:
        return load_config(path)


def scale(cfg: Config, speed: float) -> Config:
    """Every duration of the story divided by `speed` (2.0 runs twice as fast).

    `max_duration` is left alone: the story never reaches it, and a shorter one would turn
    the end of the tour into an overrun alarm.
    """
    if speed == 1.0:
        return cfg

    def s(td: dt.timedelta) -> dt.timedelta:
        return td / speed

    timing = cfg.timing.model_copy(
        update={
            "prealarm_window": s(cfg.timing.prealarm_window),
            "checkin_grace": s(cfg.timing.checkin_grace),
            "overrun_grace": s(cfg.timing.overrun_grace),
            "device_timeout": s(cfg.timing.device_timeout),
        }
    )
    notify = cfg.notify.model_copy(
        update={"call_spacing": s(cfg.notify.call_spacing), "retry_for": s(cfg.notify.retry_for)}
    )
    chains = [
        c.model_copy(
            update={
                "repeat_after": s(c.repeat_after),
                "keep_paging": s(c.keep_paging),
                "steps": [st.model_copy(update={"after": s(st.after)}) for st in c.steps],
            }
        )
        for c in cfg.escalation_chains
    ]
    assessments = [
        a.model_copy(
            update={"checkin_interval": s(a.checkin_interval) if a.checkin_interval else None}
        )
        for a in cfg.assessments
    ]
    return cfg.model_copy(
        update={
            "timing": timing,
            "notify": notify,
            "escalation_chains": chains,
            "assessments": assessments,
        }
    )


@dataclass(frozen=True)
class DemoSite:
    cfg: Config
    http_url: str
    http_port: int
    wanted_port: int  # the port demo.toml asks for; http_port differs when it was taken
    api_token: str
    twilio_token: str
    database: Path


def prepare(
    cfg: Config,
    *,
    workdir: Path,
    mqtt_port: int,
    speed: float,
    port_is_free: Callable[[int], bool],
    free_port: Callable[[], int],
) -> DemoSite:
    """The demo config for this run (see the module docstring)."""
    cfg = scale(cfg, speed)
    wanted = cfg.http.port
    port = wanted if wanted and port_is_free(wanted) else free_port()
    url = f"http://{LOOPBACK}:{port}"
    db = workdir / "jaa-demo.db"
    twilio = cfg.twilio
    if twilio is None:
        # the webhooks are signed; a demo config without [twilio] gets a token for this run only
        twilio = TwilioSection(
            account_sid=DEMO_ACCOUNT_SID,
            auth_token=SecretStr(secrets.token_hex(16)),
            from_number=DEMO_FROM_NUMBER,
        )
    tokens = cfg.http.token_names()
    if not tokens:
        raise ValueError("the demo config has no [http] api_tokens: the API tour needs one")
    cfg = cfg.model_copy(
        update={
            "gateway": cfg.gateway.model_copy(update={"database": f"sqlite:///{db}"}),
            # the embedded broker; the config's own host must not matter
            "mqtt": cfg.mqtt.model_copy(update={"host": LOOPBACK, "port": mqtt_port}),
            # loopback only, whatever the file says: the demo's token is no secret
            "http": cfg.http.model_copy(update={"listen": f"{LOOPBACK}:{port}", "public_url": url}),
            "notify": cfg.notify.model_copy(update={"driver": "console"}),
            "twilio": twilio,
        }
    )
    return DemoSite(
        cfg=cfg,
        http_url=url,
        http_port=port,
        wanted_port=wanted,
        api_token=next(iter(tokens)),
        twilio_token=twilio.auth_token.get_secret_value(),
        database=db,
    )
