"""Settings.from_env for the intake: INTAKE, the NATS_* settings and WORKER_METRICS_PORT; what the JetStream
queue is configured with from them; and `make run`'s NATS launcher.

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
        ({"NATS_STREAM": "MEDIABOT.INTAKE"}, "NATS_STREAM"),
        ({"NATS_STREAM": "a" * 33}, "NATS_STREAM"),
        ({"NATS_DUPLICATE_WINDOW_S": "30"}, "NATS_DUPLICATE_WINDOW_S"),
        ({"NATS_DUPLICATE_WINDOW_S": "inf"}, "NATS_DUPLICATE_WINDOW_S"),
        ({"NATS_ACK_WAIT_S": "0.5"}, "NATS_ACK_WAIT_S"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**REAL, **env})


def test_the_queue_is_configured_from_the_settings() -> None:
    from gateway.intake.jetstream_intake import jetstream_settings, subject_key_secret

    s = Settings.from_env({**REAL, "INTAKE": "jetstream", "NATS_REPLICAS": "3", "INTAKE_MAX_ATTEMPTS": "7",
                           "NATS_ACK_WAIT_S": "45", "NATS_DUPLICATE_WINDOW_S": "7200"})
    js = jetstream_settings(s)
    # The names KEDA's scaler reads (k8s/components/keda-worker/scaledobject.yaml).
    assert (js.stream, js.consumer, js.dead_letter_stream) == ("MEDIABOT_INTAKE", "worker", "MEDIABOT_INTAKE_DEAD_LETTERS")
    assert (js.replicas, js.max_deliver, js.ack_wait_s, js.duplicate_window_s, js.backoff_s) == (3, 7, 45.0, 7200.0, ())
    assert Settings.from_env(REAL).nats_duplicate_window_s == 6 * 3600
    # The subject key: derived from the Twilio token (not the token itself), or NATS_SUBJECT_KEY when set.
    derived = subject_key_secret(s)
    assert derived not in ("", "secret") and derived == subject_key_secret(Settings.from_env(REAL))
    assert subject_key_secret(Settings.from_env({**REAL, "TWILIO_AUTH_TOKEN": "other"})) != derived
    assert subject_key_secret(Settings.from_env({**REAL, "NATS_SUBJECT_KEY": "k3y"})) == "k3y"
    assert "k3y" not in repr(Settings.from_env({**REAL, "NATS_SUBJECT_KEY": "k3y"}))


def test_keda_scales_on_the_stream_and_consumer_the_code_creates() -> None:
    from pathlib import Path

    import yaml

    from gateway.intake.jetstream_intake import jetstream_settings

    js = jetstream_settings(Settings.from_env(REAL))
    path = Path(__file__).resolve().parents[2] / "k8s/components/keda-worker/scaledobject.yaml"
    [trigger] = yaml.safe_load(path.read_text())["spec"]["triggers"]
    assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (js.stream, js.consumer)


def test_make_run_starts_nats_only_for_jetstream_on_this_machine(tmp_path) -> None:  # noqa: ANN001
    from pathlib import Path

    from gateway.intake.nats_local import server_command

    binary = Path("/venv/bin/nats-server")
    assert server_command({}, binary) is None
    assert server_command({"INTAKE": "jetstream", "NATS_URL": "nats://nats.example:4222"}, binary) is None
    command = server_command({"INTAKE": "jetstream", "NATS_URL": "nats://127.0.0.1:4333",
                              "NATS_STORE_DIR": str(tmp_path)}, binary)
    assert command == [str(binary), "--jetstream", "--store_dir", str(tmp_path), "--addr", "127.0.0.1",
                       "--port", "4333", "--server_name", "mediabot-local"]
    assert server_command({"INTAKE": "jetstream"}, binary)[3:8] == ["data/nats", "--addr", "127.0.0.1", "--port", "4222"]
