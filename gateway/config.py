"""The gateway's configuration: read from the environment once, at start-up, into one frozen object.

Everything the gateway may be told lives here, so a wrong value stops the process with a readable
message before the first webhook instead of failing on some user's voice note later.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mediabot import config, limits

logger = logging.getLogger(__name__)

# Used when TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are unset, so `make run` and `python -m gateway.whatsapp.simulate`
# work together out of the box. The simulator imports these same constants: one place, one truth. The token
# is public (it is in this file), so it is accepted only where nobody else can reach the gateway: with a
# loopback PUBLIC_BASE_URL, TRUST_PROXY=0, and (gateway.signature) from loopback clients only.
DEV_ACCOUNT_SID = "AC00000000000000000000000000000000"
DEV_AUTH_TOKEN = "mediabot-local-development-auth-token"

# Deployment templates (k8s/base/secrets.env.example) hold values starting with this instead of empty ones: a
# secret still holding it stops the process, so a template applied unedited cannot run on guessable values.
PLACEHOLDER_PREFIX = "REPLACE_ME"
# Secrets checked for a leftover placeholder (MinIO's only when STORAGE=minio, where they are read).
_SECRETS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WEBHOOK_SHARED_KEY", "TELEGRAM_BOT_TOKEN",
            "TELEGRAM_WEBHOOK_SECRET")
_MINIO_SECRETS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")

DEFAULT_GATEWAY_PORT = 8080
WEBHOOK_PATH = "/whatsapp"
TELEGRAM_WEBHOOK_PATH = "/telegram"

# Telegram (gateway.telegram). Used when TELEGRAM_BOT_TOKEN / TELEGRAM_WEBHOOK_SECRET are unset and the gateway
# is reachable from this machine only (loopback PUBLIC_BASE_URL, TRUST_PROXY=0), so `make run` and
# `python -m gateway.telegram.simulate` work together; public like DEV_AUTH_TOKEN, so refused
# anywhere else. The Bot API is then the simulator's, on loopback port 8081 (the self-hosted telegram-bot-api
# server's default port).
DEV_TELEGRAM_BOT_TOKEN = "1000000001:mediabot-local-development-telegram-token"
DEV_TELEGRAM_WEBHOOK_SECRET = "mediabot-local-development-telegram-secret"
DEV_TELEGRAM_API_BASE_URL = "http://127.0.0.1:8081"
DEFAULT_TELEGRAM_API_BASE_URL = "https://api.telegram.org"
# BotFather's tokens: the bot's numeric id, a colon, then letters, digits, _ and -.
_TELEGRAM_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{1,100}")
# setWebhook's secret_token: "1-256 characters. Only characters A-Z, a-z, 0-9, _ and - are allowed."
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")

# Where Twilio's MediaUrl{N} points (api.twilio.com, which wants basic auth) and where it redirects the
# download: mms.twiliocdn.com for accounts that enforce HTTP auth on media, s3-external-1.amazonaws.com
# for older, unauthenticated media (Twilio's "Protect Media Access with HTTP Basic Authentication" page).
DEFAULT_MEDIA_HOSTS = ("api.twilio.com", "mms.twiliocdn.com", "s3-external-1.amazonaws.com")

# Allowed only with the development credentials, where the simulator serves media from this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

STORAGE_BACKENDS = ("filesystem", "minio")

# Where an accepted webhook waits for the worker: files under SPOOL_DIR (one machine, `make run`) or a NATS
# JetStream stream (compose and k8s, where gateways and workers are separate, stateless replicas).
INTAKE_BACKENDS = ("spool", "jetstream")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# JetStream keeps 1, 3 or 5 copies in practice (a Raft group needs a majority); it refuses more than 5.
MAX_NATS_REPLICAS = 5
# The work stream's name (KEDA's scaler names it too: k8s/components/keda-worker); letters, digits, - and _.
DEFAULT_NATS_STREAM = "MEDIABOT_INTAKE"
_NATS_STREAM = re.compile(r"[A-Za-z0-9_-]{1,32}")

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")

# Twilio's REST API, where deferred WhatsApp answers are sent (gateway.whatsapp.notify). With the development
# credentials there is no account to send from: unless TWILIO_API_BASE_URL names a local stand-in, those
# answers are logged instead (gateway.deferred).
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"

# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

MIB = 1024 * 1024


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that can only reach this machine (plain http is acceptable there)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is how a dual-stack socket reports an IPv4 loopback client; Python 3.11 does not call
    # it loopback.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def default_public_base_url(env: Mapping[str, str]) -> str:
    """The URL the local gateway answers on when PUBLIC_BASE_URL is unset; the simulator signs for the same."""
    port = config.port(env, "GATEWAY_PORT", DEFAULT_GATEWAY_PORT)
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Settings:
    public_base_url: str
    trust_proxy: bool
    twilio_account_sid: str
    twilio_auth_token: str = field(repr=False)
    # True when the token is the public DEV_AUTH_TOKEN (none configured, or that one written out): only with
    # a loopback PUBLIC_BASE_URL and TRUST_PROXY=0, and webhooks are then answered for loopback clients only.
    dev_credentials: bool
    # Where deferred WhatsApp answers go (Twilio's Messages API); "" with the development credentials and no
    # TWILIO_API_BASE_URL: they are logged, not sent.
    twilio_api_base_url: str
    # Secret of a Twilio webhook SharedKey (Webhook Rules, public beta): used only for requests that carry
    # X-Twilio-Webhooks-Signature-Settings; empty means such requests are refused.
    twilio_webhook_shared_key: str = field(repr=False)
    media_host_allowlist: frozenset[str]
    audio_service_addr: str
    vision_service_addr: str
    storage: str
    media_root: Path
    # STORAGE=minio: any S3 server (MinIO in compose and k8s). Empty strings when STORAGE=filesystem.
    minio_endpoint: str  # host[:port], no scheme: MINIO_SECURE says http or https
    minio_access_key: str
    minio_secret_key: str = field(repr=False)
    minio_bucket: str
    minio_secure: bool
    # Set on the SDK's urllib3 pool: per-request connect/read timeouts and retries with backoff.
    minio_connect_timeout_s: float
    minio_read_timeout_s: float
    minio_retries: int
    max_media_bytes: int
    download_connect_timeout_s: float
    download_read_timeout_s: float
    # Pauses before retrying a media URL that answered 404 (Twilio serves webhooks before media propagates).
    media_404_retry_delays_s: tuple[float, ...]
    audio_rpc_timeout_s: float
    vision_rpc_timeout_s: float
    health_check_timeout_s: float
    # Wall-clock budget for one webhook; every download, RPC and retry pause is cut to what is left of it.
    webhook_budget_s: float
    log_level: str
    gateway_port: int
    # Durable intake (gateway.intake.spool, gateway.intake.worker): where verified webhooks wait until processed, and how
    # the background worker retries them (exponential backoff with jitter between these bounds).
    spool_dir: Path = Path("./data/spool")
    spool_retry_base_s: float = 1.0
    spool_retry_max_s: float = 60.0
    # After this long an entry still failing is moved to SPOOL_DIR/failed/ for a person to look at.
    spool_give_up_after_s: float = 24 * 3600.0
    # How often the worker looks for due entries, and the time one background attempt may take.
    spool_poll_s: float = 1.0
    spool_attempt_budget_s: float = 30.0
    # The poison cap, both intakes: attempts at a message before what is still failing is given up, with a
    # final reply, so an input that crashes a service is not retried for a day (JetStream: its MaxDeliver).
    intake_max_attempts: int = 20
    # INTAKE: "spool" (the files above) or "jetstream" (a stream on the NATS servers NATS_URL names, with
    # NATS_REPLICAS copies of each message: 3 on the k8s cluster, 1 on a single server).
    intake: str = "spool"
    nats_url: str = DEFAULT_NATS_URL
    nats_replicas: int = 1
    # INTAKE=jetstream (gateway.intake.jetstream_intake): the work stream's name (its dead letters go to
    # <name>_DEAD_LETTERS); how long the server remembers a MessageSid to drop a replayed webhook (hours:
    # Twilio's retries and debugger replays and a proxy's resend come later than NATS's 2-minute default);
    # how long a delivery may go without a sign of life before another worker gets it (a worker killed
    # mid-attempt); the key of the HMAC that turns a sender id into its subject token (empty: derived from
    # TWILIO_AUTH_TOKEN, which every gateway and worker already has).
    nats_stream: str = DEFAULT_NATS_STREAM
    nats_duplicate_window_s: float = 6 * 3600.0
    nats_ack_wait_s: float = 60.0
    nats_subject_key: str = field(default="", repr=False)
    # The worker's own HTTP port for GET /healthz and GET /metrics (probes, Prometheus); 0 = none.
    worker_metrics_port: int = 0
    # INTAKE=jetstream: messages one worker process handles at once (its loops, in threads). An attempt
    # mostly waits on the media host, audio, vision and storage; the media memory bound covers them all.
    worker_concurrency: int = 4
    # Security (issue 6): allowlisted media hosts whose name resolves to a private, loopback or link-local
    # address are refused unless this is set (SSRF via DNS); hosts written as loopback names are exempt.
    media_allow_private_addresses: bool = False
    # TLS to the audio and vision services (mediabot.grpc_tls): a CA file turns it on; cert+key add mTLS.
    grpc_tls_ca_file: str = ""
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = field(default="", repr=False)
    # Attempts per gRPC call (1 = no retry) when the service answers UNAVAILABLE, via gRPC's retry policy.
    grpc_max_attempts: int = 3
    # Privacy (gateway.privacy): media older than this many days expires; None keeps it until erased.
    retention_days: int | None = None
    # How often the worker expires old media (where no bucket lifecycle rule does) and forgets old markers.
    privacy_sweep_s: float = 3600.0
    # The line added to the first reply a sender gets; empty: the built-in text. A policy link goes after it.
    privacy_notice: str = ""
    privacy_policy_url: str = ""
    # Media bytes one gateway process (a gunicorn worker, the spool or JetStream worker) holds at once, across its threads
    # (gateway.media_memory): downloads claim their size, voice notes also the largest WAV (29 MB). An item
    # that finds no room waits up to media_memory_wait_s (within its webhook's budget), then is left to
    # the spool. The process holds about 3x this at its peak: 96 MiB keeps a worker near 400 MB.
    media_memory_mb: int = 96
    media_memory_wait_s: float = 5.0
    # The audio service's own AUDIO_MAX_DURATION_S (same variable, same default): the longest WAV it can
    # answer with, which sizes the audio channel's receive limit and a voice note's memory claim.
    audio_max_duration_s: float = limits.DEFAULT_MAX_AUDIO_DURATION_S
    # Telegram (gateway.telegram): on when both are set, or in development mode; empty strings: /telegram is 404.
    telegram_bot_token: str = field(default="", repr=False)
    telegram_webhook_secret: str = field(default="", repr=False)
    telegram_api_base_url: str = DEFAULT_TELEGRAM_API_BASE_URL
    # True with the public development token and secret: loopback only, like dev_credentials.
    telegram_dev_credentials: bool = False

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token and self.telegram_webhook_secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: os.environ); raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env

        port = config.port(env, "GATEWAY_PORT", DEFAULT_GATEWAY_PORT)
        explicit_public_url = config.optional(env, "PUBLIC_BASE_URL")
        public_base_url = _origin("PUBLIC_BASE_URL", explicit_public_url or default_public_base_url(env),
                                  "https://abc.ngrok.app")
        trust_proxy = config.flag(env, "TRUST_PROXY", False)
        if trust_proxy and explicit_public_url is None:
            raise config.ConfigError(
                "TRUST_PROXY=1 needs PUBLIC_BASE_URL: signatures are always checked against it, never against "
                "the host a request's X-Forwarded-* headers name"
            )

        storage = config.choice(env, "STORAGE", "filesystem", STORAGE_BACKENDS)
        for name in (*_SECRETS, *(_MINIO_SECRETS if storage == "minio" else ())):
            if config.text(env, name).upper().startswith(PLACEHOLDER_PREFIX):
                raise config.ConfigError(
                    f"{name} still holds the template's {PLACEHOLDER_PREFIX} placeholder: set the real value"
                )

        sid, token = config.optional(env, "TWILIO_ACCOUNT_SID"), config.optional(env, "TWILIO_AUTH_TOKEN")
        if (sid is None) != (token is None):
            raise config.ConfigError("set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither (development mode)")
        if sid is None or token is None:
            sid, token = DEV_ACCOUNT_SID, DEV_AUTH_TOKEN
        if not _ACCOUNT_SID.fullmatch(sid):
            raise config.invalid("TWILIO_ACCOUNT_SID", "AC followed by 32 hex digits", sid)
        # The development token signs for anyone who has read this repository, whether it was left unset or
        # written out: so it is allowed only where no one but this machine can send the gateway a webhook.
        dev_credentials = token == DEV_AUTH_TOKEN
        if dev_credentials:
            _check_development_reach(public_base_url, trust_proxy)

        hosts = config.optional(env, "MEDIA_HOST_ALLOWLIST")
        allowlist = _hostnames(hosts) if hosts is not None else frozenset(DEFAULT_MEDIA_HOSTS)
        if dev_credentials:
            allowlist |= frozenset(LOOPBACK_HOSTS)

        minio = _minio(env) if storage == "minio" else _NO_MINIO

        settings = cls(
            public_base_url=public_base_url,
            trust_proxy=trust_proxy,
            twilio_account_sid=sid,
            twilio_auth_token=token,
            dev_credentials=dev_credentials,
            twilio_api_base_url=_twilio_api_base_url(env, dev_credentials),
            twilio_webhook_shared_key=config.text(env, "TWILIO_WEBHOOK_SHARED_KEY"),
            media_host_allowlist=allowlist,
            audio_service_addr=config.grpc_target(env, "AUDIO_SERVICE_ADDR", "127.0.0.1:50051"),
            vision_service_addr=config.grpc_target(env, "VISION_SERVICE_ADDR", "127.0.0.1:50052"),
            storage=storage,
            media_root=config.path(env, "MEDIA_ROOT", Path("./data/media")),
            **minio,
            max_media_bytes=config.integer(env, "MAX_MEDIA_BYTES", limits.DEFAULT_MAX_MEDIA_BYTES, minimum=1),
            download_connect_timeout_s=config.seconds(env, "DOWNLOAD_CONNECT_TIMEOUT_S", 3.05),
            download_read_timeout_s=config.seconds(env, "DOWNLOAD_READ_TIMEOUT_S", 5.0),
            media_404_retry_delays_s=config.seconds_list(env, "MEDIA_404_RETRY_DELAYS_S", (1.0, 3.0)),
            audio_rpc_timeout_s=config.seconds(env, "AUDIO_RPC_TIMEOUT_S", 6.0),
            vision_rpc_timeout_s=config.seconds(env, "VISION_RPC_TIMEOUT_S", 4.0),
            health_check_timeout_s=config.seconds(env, "HEALTH_CHECK_TIMEOUT_S", 1.0),
            # Below Twilio's 15 s webhook timeout, so the reply is sent before Twilio gives up on it.
            webhook_budget_s=config.seconds(env, "WEBHOOK_BUDGET_S", 12.0, below=15),
            log_level=config.log_level(env, "LOG_LEVEL"),
            gateway_port=port,
            spool_dir=config.path(env, "SPOOL_DIR", Path("./data/spool")),
            spool_retry_base_s=config.seconds(env, "SPOOL_RETRY_BASE_S", 1.0),
            spool_retry_max_s=config.seconds(env, "SPOOL_RETRY_MAX_S", 60.0),
            spool_give_up_after_s=config.seconds(env, "SPOOL_GIVE_UP_AFTER_S", 24 * 3600.0),
            spool_poll_s=config.seconds(env, "SPOOL_POLL_S", 1.0),
            spool_attempt_budget_s=config.seconds(env, "SPOOL_ATTEMPT_BUDGET_S", 30.0),
            intake_max_attempts=config.integer(env, "INTAKE_MAX_ATTEMPTS", 20, minimum=2, maximum=1000),
            media_allow_private_addresses=config.flag(env, "MEDIA_ALLOW_PRIVATE_ADDRESSES", False),
            grpc_tls_ca_file=config.text(env, "GRPC_TLS_CA_FILE"),
            grpc_tls_cert_file=config.text(env, "GRPC_TLS_CERT_FILE"),
            grpc_tls_key_file=config.text(env, "GRPC_TLS_KEY_FILE"),
            # gRPC itself caps a retry policy's maxAttempts at 5: refuse more rather than let it clamp silently.
            grpc_max_attempts=config.integer(env, "GRPC_MAX_ATTEMPTS", 3, minimum=1, maximum=5),
            retention_days=config.integer(env, "RETENTION_DAYS", None, minimum=1),
            privacy_sweep_s=config.seconds(env, "PRIVACY_SWEEP_S", 3600.0),
            privacy_notice=config.text(env, "PRIVACY_NOTICE"),
            privacy_policy_url=_policy_url(config.optional(env, "PRIVACY_POLICY_URL")),
            media_memory_mb=config.integer(env, "MEDIA_MEMORY_MB", 96, minimum=1),
            media_memory_wait_s=config.seconds(env, "MEDIA_MEMORY_WAIT_S", 5.0),
            **_intake(env),
            # The audio service's own variable and default (mediabot.limits): the gateway sizes the WAV it receives.
            audio_max_duration_s=config.number(
                env, "AUDIO_MAX_DURATION_S", limits.DEFAULT_MAX_AUDIO_DURATION_S, minimum=1
            ),
            **_telegram(env, public_base_url, trust_proxy),
        )
        if settings.spool_retry_max_s < settings.spool_retry_base_s:
            raise config.ConfigError("SPOOL_RETRY_MAX_S must be at least SPOOL_RETRY_BASE_S")
        return settings

    def log_development_warning(self) -> None:
        """Loud on purpose: a gateway on the development token would accept webhooks anyone can sign."""
        if self.dev_credentials:
            logger.warning(
                "RUNNING WITH DEVELOPMENT TWILIO CREDENTIALS: TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are unset, so "
                "webhooks are checked against a public development token, answered only for clients on this "
                "machine, and media may be fetched from loopback hosts (%s). Fine for `make run` with the "
                "simulator; set both variables (and PUBLIC_BASE_URL) before exposing this gateway to Twilio.",
                ", ".join(LOOPBACK_HOSTS),
                extra={"dev_credentials": True, "public_base_url": self.public_base_url},
            )
        if self.telegram_dev_credentials:
            logger.warning(
                "RUNNING WITH DEVELOPMENT TELEGRAM CREDENTIALS: TELEGRAM_BOT_TOKEN/TELEGRAM_WEBHOOK_SECRET are unset, "
                "so %s takes updates carrying a public development secret, from clients on this machine only, "
                "and fetches files from the simulator's Bot API at %s. Fine for `make run` with `python -m "
                "gateway.telegram.simulate`; set both variables for a real bot.",
                TELEGRAM_WEBHOOK_PATH, self.telegram_api_base_url,
                extra={"telegram_dev_credentials": True, "public_base_url": self.public_base_url},
            )


def _check_development_reach(public_base_url: str, trust_proxy: bool) -> None:
    """Refuse the public development token wherever a request from outside this machine could reach us."""
    host = urlsplit(public_base_url).hostname or ""
    if not is_loopback_host(host) or trust_proxy:
        raise config.ConfigError(
            "development credentials (TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset, empty or the development token) "
            "are only allowed with a loopback PUBLIC_BASE_URL (127.0.0.1, ::1, localhost) and TRUST_PROXY=0, got "
            f"PUBLIC_BASE_URL={public_base_url} TRUST_PROXY={int(trust_proxy)}: set TWILIO_ACCOUNT_SID and "
            "TWILIO_AUTH_TOKEN to your Twilio account's values"
        )


def _twilio_api_base_url(env: Mapping[str, str], dev_credentials: bool) -> str:
    """TWILIO_API_BASE_URL: https (the auth token goes with every request) unless on this machine; with the
    development credentials only on this machine, and unset means "log deferred answers, send nothing"."""
    value = config.optional(env, "TWILIO_API_BASE_URL")
    if value is None:
        return "" if dev_credentials else DEFAULT_TWILIO_API_BASE_URL
    base = _origin("TWILIO_API_BASE_URL", value, DEFAULT_TWILIO_API_BASE_URL)
    parts = urlsplit(base)
    loopback = is_loopback_host(parts.hostname or "")
    if parts.scheme == "http" and not loopback:
        raise config.invalid("TWILIO_API_BASE_URL", "https unless it is on this machine (the auth token goes with "
                             "every request)", base)
    if dev_credentials and not loopback:
        raise config.ConfigError("the development Twilio credentials only go to a Twilio API on this machine: "
                                 f"TWILIO_API_BASE_URL is {base!r}; set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    return base


def _telegram(env: Mapping[str, str], public_base_url: str, trust_proxy: bool) -> dict[str, object]:
    """The TELEGRAM_* settings: both set (a real bot), neither (development mode where only this machine can
    reach the gateway, else the channel is off), and the Bot API URL the token may be sent to."""
    token, secret = config.optional(env, "TELEGRAM_BOT_TOKEN"), config.optional(env, "TELEGRAM_WEBHOOK_SECRET")
    if (token is None) != (secret is None):
        raise config.ConfigError("set both TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET, or neither")
    local_only = is_loopback_host(urlsplit(public_base_url).hostname or "") and not trust_proxy
    if token is None or secret is None:
        if not local_only:
            return {}  # no Telegram bot configured: /telegram answers 404
        token, secret = DEV_TELEGRAM_BOT_TOKEN, DEV_TELEGRAM_WEBHOOK_SECRET
    development = token == DEV_TELEGRAM_BOT_TOKEN or secret == DEV_TELEGRAM_WEBHOOK_SECRET
    if development and not local_only:
        raise config.ConfigError(
            "the development Telegram token or secret is only allowed with a loopback PUBLIC_BASE_URL and "
            f"TRUST_PROXY=0, got PUBLIC_BASE_URL={public_base_url} TRUST_PROXY={int(trust_proxy)}: set "
            "TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET to your bot's values"
        )
    if not _TELEGRAM_TOKEN.fullmatch(token):
        raise config.invalid_secret("TELEGRAM_BOT_TOKEN", "the token BotFather gave you, like 123456789:AA...")
    if not _TELEGRAM_SECRET.fullmatch(secret):
        raise config.invalid_secret(
            "TELEGRAM_WEBHOOK_SECRET", "1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)"
        )
    default_base = DEV_TELEGRAM_API_BASE_URL if development else DEFAULT_TELEGRAM_API_BASE_URL
    base = _origin("TELEGRAM_API_BASE_URL", config.text(env, "TELEGRAM_API_BASE_URL", default_base),
                   DEFAULT_TELEGRAM_API_BASE_URL)
    parts = urlsplit(base)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback_host(host):
        raise config.invalid(
            "TELEGRAM_API_BASE_URL", "https unless it is on this machine (the bot token is in its URLs)", base
        )
    if development and not is_loopback_host(host):
        raise config.ConfigError("the development Telegram token only goes to a Bot API on this machine (the "
                                 f"simulator's): TELEGRAM_API_BASE_URL is {base!r}")
    return {
        "telegram_bot_token": token,
        "telegram_webhook_secret": secret,
        "telegram_api_base_url": base,
        "telegram_dev_credentials": development,
    }


def _intake(env: Mapping[str, str]) -> dict[str, object]:
    """INTAKE and the NATS_* settings, checked for form only: reaching the servers is the intake's job."""
    nats_url = config.text(env, "NATS_URL", DEFAULT_NATS_URL)
    servers = [server.strip() for server in nats_url.split(",")]
    for server in servers:
        parts = urlsplit(server)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("nats", "tls") or not parts.hostname or parts.path not in ("", "/") or port == -1:
            raise config.invalid("NATS_URL", "nats://host[:port] (or tls://), several separated by commas", server)
    return {
        "intake": config.choice(env, "INTAKE", "spool", INTAKE_BACKENDS),
        "nats_url": ",".join(servers),
        # JetStream's own cap on a stream's copies is 5.
        "nats_replicas": config.integer(env, "NATS_REPLICAS", 1, minimum=1, maximum=MAX_NATS_REPLICAS),
        "nats_stream": _nats_stream(env),
        # The server's own bounds are wider; below a minute a Twilio retry could already miss it.
        "nats_duplicate_window_s": config.number(env, "NATS_DUPLICATE_WINDOW_S", 6 * 3600.0, minimum=60,
                                                 maximum=7 * 24 * 3600.0),
        # The worker signals progress every third of it during an attempt, so it need not cover one.
        "nats_ack_wait_s": config.number(env, "NATS_ACK_WAIT_S", 60.0, minimum=1, maximum=3600.0),
        "nats_subject_key": config.optional(env, "NATS_SUBJECT_KEY") or "",
        "worker_metrics_port": config.port(env, "WORKER_METRICS_PORT", 0, zero_means_off=True),
        "worker_concurrency": config.integer(env, "WORKER_CONCURRENCY", 4, minimum=1, maximum=64),
    }


def _nats_stream(env: Mapping[str, str]) -> str:
    stream = config.text(env, "NATS_STREAM", DEFAULT_NATS_STREAM)
    if not _NATS_STREAM.fullmatch(stream):
        raise config.invalid("NATS_STREAM", "1-32 letters, digits, '-' or '_'", stream)
    return stream


# What Settings holds for MinIO when STORAGE=filesystem: nothing is read, nothing is checked.
_NO_MINIO: dict[str, object] = {
    "minio_endpoint": "", "minio_access_key": "", "minio_secret_key": "", "minio_bucket": "", "minio_secure": True,
    "minio_connect_timeout_s": 2.0, "minio_read_timeout_s": 5.0, "minio_retries": 2,
}


def _minio(env: Mapping[str, str]) -> dict[str, object]:
    """The MINIO_* settings, checked for form only: reaching the server is the store's start-up job."""
    # No scheme: MINIO_SECURE picks http or https.
    endpoint = config.address(env, "MINIO_ENDPOINT", None, port_required=False)
    if endpoint is None:
        raise config.ConfigError("STORAGE=minio needs MINIO_ENDPOINT (host:port of the S3 API, e.g. minio:9000)")
    access_key, secret_key = config.optional(env, "MINIO_ACCESS_KEY"), config.optional(env, "MINIO_SECRET_KEY")
    if access_key is None or secret_key is None:
        raise config.ConfigError("STORAGE=minio needs both MINIO_ACCESS_KEY and MINIO_SECRET_KEY")
    bucket = config.text(env, "MINIO_BUCKET", "mediabot")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _is_ip(bucket):
        raise config.invalid(
            "MINIO_BUCKET", "an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)", bucket
        )
    return {
        "minio_endpoint": endpoint,
        "minio_access_key": access_key,
        "minio_secret_key": secret_key,
        "minio_bucket": bucket,
        "minio_secure": config.flag(env, "MINIO_SECURE", True),
        "minio_connect_timeout_s": config.seconds(env, "MINIO_CONNECT_TIMEOUT_S", 2.0),
        "minio_read_timeout_s": config.seconds(env, "MINIO_READ_TIMEOUT_S", 5.0),
        "minio_retries": config.integer(env, "MINIO_RETRIES", 2, minimum=0),
    }


def _origin(name: str, url: str, example: str) -> str:
    """scheme://host[:port] of an http(s) server, from a URL that may end in "/" but has no path, query or user."""
    parts = urlsplit(url)
    try:
        well_formed = (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
                       and parts.path in ("", "/") and not (parts.query or parts.fragment) and parts.username is None)
    except ValueError:  # from .port: not a number from 0 to 65535
        well_formed = False
    if not well_formed:
        raise config.invalid(name, f"an http(s) URL of the form scheme://host[:port], like {example}", url)
    return f"{parts.scheme}://{parts.netloc}"


def _policy_url(value: str | None) -> str:
    if value is None:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise config.invalid("PRIVACY_POLICY_URL", "an http(s) URL", value)
    return value


def _hostnames(value: str) -> frozenset[str]:
    """MEDIA_HOST_ALLOWLIST: host names or IP addresses, no scheme, port or path, compared in lower case."""
    hosts = frozenset(h.strip().lower() for h in value.split(",") if h.strip())
    if not hosts or any("/" in host or " " in host or (":" in host and not _is_ip(host)) for host in hosts):
        raise config.invalid("MEDIA_HOST_ALLOWLIST", "bare host names separated by commas", value)
    return hosts


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
