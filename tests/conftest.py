"""Shared fixtures live in tests/support/*; they are registered here as plugins."""

pytest_plugins = [
    "tests.support.broker",
    "tests.support.twilio_double",
    "tests.support.postgres",
]
