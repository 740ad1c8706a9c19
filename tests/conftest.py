"""Fixtures live in tests/fixtures/, one module per part of the system, so any test can use any real server."""

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.gateway",
    "tests.fixtures.nats",
    "tests.fixtures.s3",
    "tests.fixtures.telegram",
    "tests.fixtures.triton",
    "tests.fixtures.twilio_api",
    "tests.fixtures.vision",
]
