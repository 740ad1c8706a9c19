"""Settings.from_env for the intake: INTAKE, NATS_URL, NATS_REPLICAS and WORKER_METRICS_PORT.

Kept apart from test_config.py so the settings the deployments set (k8s and compose use the JetStream intake,
`make run` the spool) have their own file; their behaviour is tested with the intake itself.
"""

from __future__ import annotations

import pytest

from gateway.config import Settings
from mediabot.config import ConfigError

REAL = {"TWILIO_ACCOUNT_SID": "AC" + "1f" * 16, "TWILIO_AUTH_TOKEN": "secret"}


def test_defaults_keep_make_run_on_the_spool() -> None:
    s = Settings.from_env(REAL)
    assert (s.intake, s.nats_url, s.nats_replicas, s.worker_metrics_port) == (
        "spool", "nats://127.0.0.1:4222", 1, 0)


def test_values_are_read() -> None:
    s = Settings.from_env({
        **REAL, "INTAKE": "JetStream", "NATS_URL": "nats://nats-0.nats:4222, tls://nats-1.nats", "NATS_REPLICAS": "3",
        "WORKER_METRICS_PORT": "9103",
    })
    assert s.intake == "jetstream"
    assert s.nats_url == "nats://nats-0.nats:4222,tls://nats-1.nats"
    assert (s.nats_replicas, s.worker_metrics_port) == (3, 9103)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"INTAKE": "kafka"}, "INTAKE"),
        ({"NATS_URL": "http://nats:4222"}, "NATS_URL"),
        ({"NATS_URL": "nats:4222"}, "NATS_URL"),
        ({"NATS_URL": "nats://nats:4222,"}, "NATS_URL"),
        ({"NATS_URL": "nats://nats:port"}, "NATS_URL"),
        ({"NATS_URL": "nats://nats:4222/path"}, "NATS_URL"),
        ({"NATS_REPLICAS": "0"}, "NATS_REPLICAS"),
        ({"NATS_REPLICAS": "6"}, "NATS_REPLICAS"),
        ({"NATS_REPLICAS": "three"}, "NATS_REPLICAS"),
        ({"WORKER_METRICS_PORT": "-1"}, "WORKER_METRICS_PORT"),
        ({"WORKER_METRICS_PORT": "65536"}, "WORKER_METRICS_PORT"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**REAL, **env})
