"""The guard console (CONTRACT §9): server-rendered pages, live over Server-Sent Events."""

from jaa_gateway.adapters.console.model import DeskStatus
from jaa_gateway.adapters.console.routes import Console

__all__ = ["Console", "DeskStatus"]
