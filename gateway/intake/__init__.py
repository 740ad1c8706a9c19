"""The durable intake: what takes a verified message and makes sure its media is dealt with, even later.

    spool.py     the on-disk spool: one fsync'd entry per message, leased with flock
    attempt.py   one attempt at a spooled message (the same for the webhook and the worker)
    worker.py    `python -m gateway.intake.worker`: finishes what the webhooks could not
    channels.py  which channel a spooled message came by
"""
