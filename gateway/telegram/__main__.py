"""Register the gateway's Telegram webhook with the Bot API, or look at / remove it.

    python -m gateway.telegram set-webhook [--drop-pending-updates]
    python -m gateway.telegram delete-webhook [--drop-pending-updates]
    python -m gateway.telegram info

``set-webhook`` calls setWebhook with PUBLIC_BASE_URL + /telegram, TELEGRAM_WEBHOOK_SECRET as the secret
token Telegram will send back in every update, and ``allowed_updates=["message"]`` (edited messages, channel
posts and the rest are then not even sent). ``info`` prints what getWebhookInfo says: the URL, the updates
waiting, the last delivery error. The configuration is the gateway's own (gateway.config), so with a .env
file run it as ``.venv/bin/dotenv run -- python -m gateway.telegram set-webhook``.

The calls are pyTelegramBotAPI's (``TeleBot.set_webhook`` ...): one process, one Bot API server, so its
process-wide API_URL is set once here. Its errors are reported by their Bot API description; a failed
connection only by its type, since requests' message would hold the URL and with it the bot token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import requests
import telebot
from telebot import apihelper
from telebot.apihelper import ApiException, ApiTelegramException

from gateway.config import TELEGRAM_WEBHOOK_PATH, Settings
from gateway.telegram.botapi import mask_token_in_library_logs
from mediabot.config import ConfigError

ALLOWED_UPDATES = ["message"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.telegram",
                                     description="Manage the Telegram webhook of this gateway's bot.")
    commands = parser.add_subparsers(dest="command", required=True)
    setting = commands.add_parser("set-webhook", help=f"point Telegram at PUBLIC_BASE_URL{TELEGRAM_WEBHOOK_PATH}")
    setting.add_argument("--drop-pending-updates", action="store_true",
                         help="drop the updates Telegram holds for the bot instead of delivering them")
    deleting = commands.add_parser("delete-webhook", help="stop Telegram from posting updates to the gateway")
    deleting.add_argument("--drop-pending-updates", action="store_true")
    commands.add_parser("info", help="what Telegram has: the webhook URL, pending updates, the last error")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"gateway.telegram: bad configuration: {error}", file=sys.stderr)
        return 2
    if not settings.telegram_enabled:
        print("gateway.telegram: set TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET (README, Talk to it from Telegram)",
              file=sys.stderr)
        return 2
    apihelper.API_URL = settings.telegram_api_base_url + "/bot{0}/{1}"
    apihelper.FILE_URL = settings.telegram_api_base_url + "/file/bot{0}/{1}"
    mask_token_in_library_logs(settings.telegram_bot_token)
    bot = telebot.TeleBot(settings.telegram_bot_token, threaded=False)
    try:
        if args.command == "set-webhook":
            url = settings.public_base_url.rstrip("/") + TELEGRAM_WEBHOOK_PATH
            bot.set_webhook(url=url, secret_token=settings.telegram_webhook_secret, allowed_updates=ALLOWED_UPDATES,
                            drop_pending_updates=args.drop_pending_updates or None)
            print(f"webhook set: {url} (updates: {', '.join(ALLOWED_UPDATES)})")
        elif args.command == "delete-webhook":
            bot.delete_webhook(drop_pending_updates=args.drop_pending_updates or None)
            print("webhook deleted")
        else:
            info = bot.get_webhook_info()
            print(f"url: {info.url or '(none)'}")
            print(f"pending updates: {info.pending_update_count}")
            print(f"allowed updates: {', '.join(info.allowed_updates or []) or '(all but a few)'}")
            if info.last_error_date:
                print(f"last error: {info.last_error_message} (at {info.last_error_date})")
    except ApiTelegramException as error:
        print(f"gateway.telegram: Telegram refused: {error.error_code} {error.description}", file=sys.stderr)
        return 1
    except (ApiException, requests.RequestException) as error:
        print(f"gateway.telegram: could not reach the Bot API at {settings.telegram_api_base_url} "
              f"({type(error).__name__})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
