"""jaa-gateway: a lone-worker alarm gateway."""

__version__ = "0.1.0"
