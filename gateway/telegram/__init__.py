"""Telegram: the same bot on a second channel, sharing everything after intake.

    webhook.py   POST /telegram: the secret-token check, the update read, the reply as a sendMessage
    updates.py   an Update (pyTelegramBotAPI's types) into the flat form that is spooled, and back
    botapi.py    getFile, the file download and sendMessage, keeping the bot token out of logs and errors
    notify.py    deferred outcomes (gateway.deferred): a sendMessage when an item the webhook could not finish is done
    simulate.py  a local Bot API server and real-shaped updates, for `python -m gateway.telegram.simulate`
    __main__.py  `python -m gateway.telegram set-webhook | delete-webhook | info`

Why pyTelegramBotAPI (telebot) and not python-telegram-bot: the gateway runs in gunicorn's synchronous
worker threads, and telebot is synchronous (requests underneath, already used here), while
python-telegram-bot is asyncio throughout (an event loop per call, httpx): its types alone would do, but
its calls would need a loop the gateway does not otherwise have. The types (Update.de_json, File, ...)
and the webhook management calls come from telebot; the three calls on the media path are made by
botapi.py for the reasons given there.
"""
