"""The WhatsApp gateway: a Flask app that receives Twilio webhooks, keeps the media, and replies.

Production: ``gunicorn 'gateway:create_app()'`` (configuration from the environment, see gateway.config).
Tests: ``create_app({"MEDIA_ROOT": ..., "TWILIO_AUTH_TOKEN": ...})``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway.config import TELEGRAM_WEBHOOK_PATH, WEBHOOK_PATH, Settings
from mediabot.config import ConfigError
from mediabot.logs import configure_logging

__all__ = ["GatewayStartupError", "create_app"]

logger = logging.getLogger(__name__)


class GatewayStartupError(RuntimeError):
    """The gateway cannot start (bad configuration, unusable storage); the message says what to fix.

    An Exception, not SystemExit, on purpose: gunicorn re-raises SystemExit from a booting worker, exits
    that worker with status 1 and spawns another, forever; any other exception makes it print the message,
    halt with "Worker failed to boot" and exit with status 3, which is what failing fast means there.
    """


# Twilio's webhook form is a few kB even with ten media URLs; anything near this is not Twilio.
_MAX_FORM_BYTES = 256 * 1024


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Build the app and its long-lived clients.

    ``config`` holds environment-variable overrides (e.g. ``{"MEDIA_ROOT": tmp_path}``), laid over
    os.environ and validated by the same ``Settings.from_env`` as production, so a test cannot build a
    configuration the real service would refuse.
    """
    # Imported here so `import gateway.config` (the simulator) does not pull in the whole app.
    from gateway import health, metrics
    from gateway.whatsapp import webhook
    from gateway.services import Services
    from gateway.storage.base import StoreStartupError
    from mediabot.memory import return_large_buffers_to_the_os

    env = {**os.environ, **{key: str(value) for key, value in (config or {}).items()}}
    try:
        settings = Settings.from_env(env)
    except ConfigError as error:
        raise GatewayStartupError(f"gateway: bad configuration: {error}") from None
    # JSON lines on stdout, unless the host process already set logging up (pytest's capture, or
    # gunicorn --log-config): replacing its handlers would silently drop its records.
    if not logging.getLogger().handlers:
        configure_logging("gateway", settings.log_level)
    settings.log_development_warning()
    return_large_buffers_to_the_os()  # per gunicorn worker: the app is created after the fork

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = _MAX_FORM_BYTES
    if settings.trust_proxy:
        # One proxy hop (ngrok, an ingress): the client's address for the logs is the last X-Forwarded-For
        # entry, the one that proxy added. Only that: the URL a signature is checked against always comes from
        # PUBLIC_BASE_URL (gateway.whatsapp.signature), never from X-Forwarded-Host/-Proto/-Port/-Prefix.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=0, x_host=0, x_port=0, x_prefix=0)  # type: ignore[method-assign]
    try:
        app.extensions["mediabot"] = Services.from_settings(settings)
    except StoreStartupError as error:
        # Fail fast, before the first webhook (e.g. MinIO unreachable, credentials refused).
        raise GatewayStartupError(f"gateway: storage: {error}") from None
    except ConfigError as error:  # an unreadable certificate file (mediabot.grpc_tls)
        raise GatewayStartupError(f"gateway: bad configuration: {error}") from None
    except OSError as error:
        # The intake's spool: SPOOL_DIR cannot be created or written (a read-only or missing volume).
        raise GatewayStartupError(f"gateway: SPOOL_DIR {settings.spool_dir} cannot be used: {error}") from None
    app.register_blueprint(webhook.bp)
    if settings.telegram_enabled:
        # Only then: without TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET (and outside development mode)
        # /telegram does not exist (404), rather than existing and refusing everything.
        from gateway.telegram import webhook as telegram_webhook

        app.register_blueprint(telegram_webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    # What a person starting `make run` wants to know first: where to point Twilio, and where media goes.
    where = (
        f"{settings.media_root.resolve()}" if settings.storage == "filesystem"
        else f"bucket {settings.minio_bucket} at {settings.minio_endpoint}"
    )
    logger.info(
        "gateway ready: Twilio webhook %s%s, %s, media stored in %s",
        settings.public_base_url.rstrip("/"), WEBHOOK_PATH,
        f"Telegram webhook {settings.public_base_url.rstrip('/')}{TELEGRAM_WEBHOOK_PATH}" if settings.telegram_enabled
        else "Telegram off (TELEGRAM_BOT_TOKEN unset)", where,
    )
    return app
