"""Settings.from_env: the defaults, development mode, and readable refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import GatewayStartupError, create_app
from gateway.config import DEFAULT_MEDIA_HOSTS, DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, Settings
from mediabot.config import ConfigError

REAL = {"TWILIO_ACCOUNT_SID": "AC" + "1f" * 16, "TWILIO_AUTH_TOKEN": "secret"}
MINIO = {
    **REAL, "STORAGE": "minio", "MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "bot", "MINIO_SECRET_KEY": "s3cr3t",
}


def test_defaults() -> None:
    s = Settings.from_env(REAL)
    assert s.public_base_url == "http://127.0.0.1:8080"
    assert s.gateway_port == 8080
    assert not s.trust_proxy
    assert not s.dev_credentials
    assert s.media_host_allowlist == frozenset(DEFAULT_MEDIA_HOSTS)
    assert s.audio_service_addr == "127.0.0.1:50051"
    assert s.vision_service_addr == "127.0.0.1:50052"
    assert s.storage == "filesystem"
    assert s.media_root == Path("./data/media")
    assert s.max_media_bytes == 16 * 1024 * 1024
    assert s.media_404_retry_delays_s == (1.0, 3.0)
    assert s.log_level == "INFO"


def test_the_default_budget_leaves_room_inside_twilios_15_seconds() -> None:
    s = Settings.from_env(REAL)
    # The budget caps every download, retry pause and RPC; replying after it takes milliseconds.
    assert s.webhook_budget_s <= 12
    assert sum(s.media_404_retry_delays_s) + s.audio_rpc_timeout_s < s.webhook_budget_s


def test_minio_settings() -> None:
    s = Settings.from_env(MINIO)
    assert s.storage == "minio"
    assert (s.minio_endpoint, s.minio_access_key, s.minio_secret_key) == ("minio:9000", "bot", "s3cr3t")
    assert (s.minio_bucket, s.minio_secure) == ("mediabot", True)
    assert (s.minio_connect_timeout_s, s.minio_read_timeout_s, s.minio_retries) == (2.0, 5.0, 2)
    assert "s3cr3t" not in repr(s)
    s = Settings.from_env({
        **MINIO, "MINIO_BUCKET": "my.media-bucket", "MINIO_SECURE": "0", "MINIO_CONNECT_TIMEOUT_S": "0.5",
        "MINIO_READ_TIMEOUT_S": "30", "MINIO_RETRIES": "0", "MINIO_ENDPOINT": "[::1]:9000",
    })
    assert (s.minio_bucket, s.minio_secure, s.minio_endpoint) == ("my.media-bucket", False, "[::1]:9000")
    assert (s.minio_connect_timeout_s, s.minio_read_timeout_s, s.minio_retries) == (0.5, 30.0, 0)


def test_minio_variables_are_ignored_for_the_filesystem() -> None:
    s = Settings.from_env({**REAL, "MINIO_ENDPOINT": "http://not checked", "MINIO_BUCKET": "NOT_CHECKED"})
    assert (s.storage, s.minio_endpoint) == ("filesystem", "")


def test_development_credentials_when_none_are_set() -> None:
    s = Settings.from_env({})
    assert s.dev_credentials
    assert (s.twilio_account_sid, s.twilio_auth_token) == (DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
    assert {"127.0.0.1", "localhost"} <= s.media_host_allowlist
    assert "127.0.0.1" not in Settings.from_env(REAL).media_host_allowlist


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.0.0.53:9000", "http://localhost:8080", "http://[::1]:8080"])
def test_development_credentials_with_a_loopback_url(url: str) -> None:
    assert Settings.from_env({"PUBLIC_BASE_URL": url, "TRUST_PROXY": "0"}).dev_credentials


@pytest.mark.parametrize(
    "env",
    [
        {"PUBLIC_BASE_URL": "https://abc.ngrok.app"},
        {"PUBLIC_BASE_URL": "https://mediabot.example.com", "TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": ""},
        {"PUBLIC_BASE_URL": "http://192.168.1.20:8080"},
        {"PUBLIC_BASE_URL": "http://localhost.example.com:8080"},
        {"PUBLIC_BASE_URL": "http://127.0.0.1:8080", "TRUST_PROXY": "1"},
        # The development token written out is as public as the one left unset.
        {"PUBLIC_BASE_URL": "https://abc.ngrok.app", "TWILIO_ACCOUNT_SID": "AC" + "1f" * 16,
         "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN},
    ],
)
def test_development_credentials_refuse_to_face_the_internet(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    message = str(raised.value)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "TRUST_PROXY"):
        assert name in message


def test_the_gateway_does_not_start_on_development_credentials_with_a_public_url(tmp_path: Path) -> None:
    with pytest.raises(GatewayStartupError, match="development credentials .* PUBLIC_BASE_URL=https://abc.ngrok.app"):
        create_app({"TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "PUBLIC_BASE_URL": "https://abc.ngrok.app",
                    "TRUST_PROXY": "0", "MEDIA_ROOT": tmp_path})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({**REAL, "TWILIO_AUTH_TOKEN": "REPLACE_ME_with_the_auth_token"}, "TWILIO_AUTH_TOKEN"),
        ({**REAL, "TWILIO_ACCOUNT_SID": "REPLACE_ME_with_the_account_sid"}, "TWILIO_ACCOUNT_SID"),
        ({**REAL, "TWILIO_WEBHOOK_SHARED_KEY": "replace_me"}, "TWILIO_WEBHOOK_SHARED_KEY"),
        ({**MINIO, "MINIO_ACCESS_KEY": "REPLACE_ME_minio_user"}, "MINIO_ACCESS_KEY"),
        ({**MINIO, "MINIO_SECRET_KEY": "REPLACE_ME_minio_secret"}, "MINIO_SECRET_KEY"),
    ],
)
def test_a_template_placeholder_left_in_a_secret_stops_start_up(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} still holds the template's REPLACE_ME placeholder"):
        Settings.from_env(env)


def test_trust_proxy_needs_an_explicit_public_url() -> None:
    with pytest.raises(ConfigError, match="TRUST_PROXY=1 needs PUBLIC_BASE_URL"):
        Settings.from_env({**REAL, "TRUST_PROXY": "1"})


def test_development_credentials_are_announced_loudly(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    app = create_app({"TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "MEDIA_ROOT": tmp_path})
    try:
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and "DEVELOPMENT" in r.getMessage()]
        assert warnings and "127.0.0.1" in warnings[0].getMessage()
    finally:
        app.extensions["mediabot"].close()


def test_gateway_port_moves_the_default_public_url() -> None:
    s = Settings.from_env({**REAL, "GATEWAY_PORT": "9000"})
    assert (s.gateway_port, s.public_base_url) == (9000, "http://127.0.0.1:9000")


def test_values_are_read() -> None:
    s = Settings.from_env({
        **REAL, "PUBLIC_BASE_URL": "https://abc.ngrok.app/", "TRUST_PROXY": "1",
        "MEDIA_HOST_ALLOWLIST": "api.twilio.com, Media.Example.com", "MEDIA_404_RETRY_DELAYS_S": "0.5,1,2",
        "MAX_MEDIA_BYTES": "1000", "LOG_LEVEL": "debug",
    })
    assert s.public_base_url == "https://abc.ngrok.app"
    assert s.trust_proxy
    assert s.media_host_allowlist == frozenset({"api.twilio.com", "media.example.com"})
    assert s.media_404_retry_delays_s == (0.5, 1.0, 2.0)
    assert s.max_media_bytes == 1000
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TWILIO_ACCOUNT_SID": "AC" + "1f" * 16}, "TWILIO_AUTH_TOKEN"),
        ({**REAL, "TWILIO_ACCOUNT_SID": "not-a-sid"}, "TWILIO_ACCOUNT_SID"),
        ({**REAL, "TWILIO_ACCOUNT_SID": "AC" + "x" * 32}, "TWILIO_ACCOUNT_SID"),
        ({**REAL, "STORAGE": "s3"}, "STORAGE"),
        ({**REAL, "STORAGE": "minio"}, "MINIO_ENDPOINT"),
        ({**MINIO, "MINIO_ENDPOINT": "http://minio:9000"}, "MINIO_ENDPOINT"),
        ({**MINIO, "MINIO_ENDPOINT": "minio:9000/bucket"}, "MINIO_ENDPOINT"),
        ({**MINIO, "MINIO_ENDPOINT": "minio:port"}, "MINIO_ENDPOINT"),
        ({**MINIO, "MINIO_SECRET_KEY": ""}, "MINIO_SECRET_KEY"),
        ({**MINIO, "MINIO_ACCESS_KEY": ""}, "MINIO_ACCESS_KEY"),
        ({**MINIO, "MINIO_BUCKET": "Media_Bot"}, "MINIO_BUCKET"),
        ({**MINIO, "MINIO_BUCKET": "ab"}, "MINIO_BUCKET"),
        ({**MINIO, "MINIO_BUCKET": "192.168.1.1"}, "MINIO_BUCKET"),
        ({**MINIO, "MINIO_SECURE": "maybe"}, "MINIO_SECURE"),
        ({**MINIO, "MINIO_READ_TIMEOUT_S": "0"}, "MINIO_READ_TIMEOUT_S"),
        ({**MINIO, "MINIO_RETRIES": "-1"}, "MINIO_RETRIES"),
        ({**REAL, "PUBLIC_BASE_URL": "abc.ngrok.app"}, "PUBLIC_BASE_URL"),
        ({**REAL, "PUBLIC_BASE_URL": "https://abc.ngrok.app/whatsapp"}, "PUBLIC_BASE_URL"),
        ({**REAL, "TRUST_PROXY": "maybe"}, "TRUST_PROXY"),
        ({**REAL, "MAX_MEDIA_BYTES": "16MB"}, "MAX_MEDIA_BYTES"),
        ({**REAL, "MAX_MEDIA_BYTES": "0"}, "MAX_MEDIA_BYTES"),
        ({**REAL, "GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({**REAL, "DOWNLOAD_READ_TIMEOUT_S": "-1"}, "DOWNLOAD_READ_TIMEOUT_S"),
        ({**REAL, "MEDIA_404_RETRY_DELAYS_S": "1,soon"}, "MEDIA_404_RETRY_DELAYS_S"),
        ({**REAL, "WEBHOOK_BUDGET_S": "20"}, "WEBHOOK_BUDGET_S"),
        ({**REAL, "MEDIA_HOST_ALLOWLIST": "https://api.twilio.com/x"}, "MEDIA_HOST_ALLOWLIST"),
        ({**REAL, "MEDIA_HOST_ALLOWLIST": " , "}, "MEDIA_HOST_ALLOWLIST"),
        ({**REAL, "LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({**REAL, "GRPC_MAX_ATTEMPTS": "6"}, "GRPC_MAX_ATTEMPTS"),
        ({**REAL, "RETENTION_DAYS": "0"}, "RETENTION_DAYS"),
        ({**REAL, "AUDIO_SERVICE_ADDR": "audio"}, "AUDIO_SERVICE_ADDR"),
        ({**REAL, "AUDIO_SERVICE_ADDR": "http://audio:50051"}, "AUDIO_SERVICE_ADDR"),
        ({**REAL, "AUDIO_SERVICE_ADDR": "dns:///audio"}, "AUDIO_SERVICE_ADDR"),
        ({**REAL, "VISION_SERVICE_ADDR": "vision:0"}, "VISION_SERVICE_ADDR"),
        ({**REAL, "VISION_SERVICE_ADDR": "ipv4:vision:50052"}, "VISION_SERVICE_ADDR"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "http"),
        ("MAX_MEDIA_BYTES", "16MB"),
        ("AUDIO_RPC_TIMEOUT_S", "nan"),
        ("WEBHOOK_BUDGET_S", "15"),
        ("MEDIA_404_RETRY_DELAYS_S", "1,-3"),
        ("TRUST_PROXY", "maybe"),
        ("STORAGE", "s3"),
        ("AUDIO_SERVICE_ADDR", "audio:port"),
        ("PUBLIC_BASE_URL", "ftp://abc.ngrok.app"),
    ],
)
def test_a_bad_value_is_named_and_repeated_in_the_one_message_shape(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got '{value}'$"):
        Settings.from_env({**REAL, name: value})


@pytest.mark.parametrize(
    "target",
    ["audio:50051", "10.0.0.7:50051", "[::1]:50051", "dns:///audio-headless.mediabot.svc.cluster.local:50051",
     "dns://10.96.0.10:53/audio:50051", "ipv4:10.0.0.7:50051,10.0.0.8:50051", "ipv6:[::1]:50051",
     "unix:/run/mediabot/audio.sock", "unix:///run/mediabot/audio.sock"],
)
def test_service_addresses_take_grpc_targets(target: str) -> None:
    s = Settings.from_env({**REAL, "AUDIO_SERVICE_ADDR": target, "VISION_SERVICE_ADDR": target})
    assert (s.audio_service_addr, s.vision_service_addr) == (target, target)


def test_create_app_stops_with_the_message_on_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(GatewayStartupError, match="STORAGE"):
        create_app({"STORAGE": "s3", "MEDIA_ROOT": tmp_path})


def test_twilio_api_base_url_for_deferred_whatsapp_answers() -> None:
    real = {"TWILIO_ACCOUNT_SID": "AC" + "ab" * 16, "TWILIO_AUTH_TOKEN": "real-token",
            "PUBLIC_BASE_URL": "https://bot.example.com"}
    assert Settings.from_env(real).twilio_api_base_url == "https://api.twilio.com"
    assert Settings.from_env({**real, "TWILIO_API_BASE_URL": "http://127.0.0.1:9999/"}).twilio_api_base_url == (
        "http://127.0.0.1:9999"
    )
    with pytest.raises(ConfigError, match=r"TWILIO_API_BASE_URL must be https unless it is on this machine"):
        Settings.from_env({**real, "TWILIO_API_BASE_URL": "http://twilio.internal.example"})
    # The development credentials: nothing to send from, so deferred answers are logged ("" = log only), or go
    # to a stand-in on this machine, never to Twilio.
    assert Settings.from_env({}).twilio_api_base_url == ""
    assert Settings.from_env({"TWILIO_API_BASE_URL": "http://127.0.0.1:8089"}).twilio_api_base_url == (
        "http://127.0.0.1:8089"
    )
    with pytest.raises(ConfigError, match="development Twilio credentials only go to a Twilio API on this machine"):
        Settings.from_env({"TWILIO_API_BASE_URL": "https://api.twilio.com"})
