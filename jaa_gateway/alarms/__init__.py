"""Alarm rules: raise (`raising`), escalate step by step (`escalation`), cancel, acknowledge and
resolve (`acks`); a transition of `domain/alarm.py` written and carried out (`writer`); an alarm
told over MQTT (`announce`; the payloads are `wire/mqtt.py`'s). Each is a service that receives
what it needs; the engine runs them inside its units of work. The states and transitions are
`domain/alarm.py`'s."""

from jaa_gateway.alarms.acks import AckResult, Acks
from jaa_gateway.alarms.announce import Announcer
from jaa_gateway.alarms.escalation import Escalator
from jaa_gateway.alarms.raising import Raiser
from jaa_gateway.alarms.writer import AlarmWriter

__all__ = ["AckResult", "Acks", "AlarmWriter", "Announcer", "Escalator", "Raiser"]
