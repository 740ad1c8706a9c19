"""`python -m gateway.intake.dead_letters list|replay <id>|drop <id>`: the JetStream dead letters, for an operator.

It reads the same variables as the worker (NATS_URL, NATS_STREAM, ...): run it where they are set (in a
worker container, or with `.venv/bin/dotenv run --`).

A dead letter is a message the workers gave up on (gateway.intake.jetstream): kept with its payload until
replayed (queued again as a new message, processed from scratch) or dropped. ``list`` sweeps first, so a
message whose worker died on its last delivery is listed too. The output names messages by MessageSid and
senders by their opaque subject key only: the payload (with the phone number in it) is never printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from gateway.intake.jetstream import DeadLetter, DeadLetterNotFound, IntakeUnavailable, JetStreamQueue, JetStreamSettings

# A reason is a code the worker chose; a long digit run in one would be a phone number that slipped in.
_DIGIT_RUN = re.compile(r"\d{7,}")


def format_dead_letters(letters: Sequence[DeadLetter], now: datetime | None = None) -> str:
    """One line per dead letter, oldest first, under a header; "no dead letters" when there are none."""
    if not letters:
        return "no dead letters\n"
    now = now or datetime.now(UTC)
    rows = [("ID", "MESSAGE", "SENDER KEY", "DELIVERIES", "DEAD SINCE", "REASON")]
    for letter in letters:
        rows.append((
            str(letter.id), letter.message_id, letter.sender_key[:12], str(letter.deliveries),
            f"{letter.dead_at:%Y-%m-%d %H:%M:%S}Z ({_age(now - letter.dead_at)} ago)",
            _DIGIT_RUN.sub("…", letter.reason),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, settings: JetStreamSettings | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.intake.dead_letters", description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", help="NATS server(s), comma-separated (default: the settings' url)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the dead letters, oldest first")
    for name, text in (("replay", "queue a dead letter again for the workers"), ("drop", "delete a dead letter")):
        command = commands.add_parser(name, help=text)
        command.add_argument("id", type=int, help="the ID column of `list`")
    args = parser.parse_args(argv)

    if settings is None:
        from mediabot.config import ConfigError

        try:
            settings = _settings_from_env()
        except ConfigError as error:
            out.write(f"bad configuration: {error}\n")
            return 2
    if args.nats_url:
        settings = JetStreamSettings(**{**settings.__dict__, "url": args.nats_url})
    intake = JetStreamQueue(settings)
    try:
        if args.command == "list":
            out.write(format_dead_letters(intake.dead_letters()))
        elif args.command == "replay":
            letter = intake.dead_letter(args.id)
            queued = intake.replay_dead_letter(args.id)
            out.write(f"replayed dead letter {args.id} ({letter.message_id})"
                      f"{'' if queued else ': it had been queued already by an earlier replay'}\n")
        else:
            letter = intake.dead_letter(args.id)
            intake.drop_dead_letter(args.id)
            out.write(f"dropped dead letter {args.id} ({letter.message_id})\n")
    except DeadLetterNotFound:
        out.write(f"no dead letter {args.id}\n")
        return 1
    except IntakeUnavailable as error:
        out.write(f"NATS is not reachable: {error}\n")
        return 2
    finally:
        intake.close()
    return 0


def _settings_from_env() -> JetStreamSettings:
    """The queue the gateway and the worker use: NATS_URL, NATS_STREAM... read as they read them."""
    from gateway.config import Settings
    from gateway.intake.jetstream_intake import jetstream_settings

    return jetstream_settings(Settings.from_env())


def _age(delta: object) -> str:
    seconds = int(delta.total_seconds())  # type: ignore[attr-defined]
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(0, seconds)}s"


if __name__ == "__main__":
    sys.exit(main())
