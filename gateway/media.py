"""Browse what the bot kept, from a terminal, in whichever store STORAGE configures.

    python -m gateway.media list [--sender 15551234567] [--kind audio|images]
    python -m gateway.media get KEY [-o FILE]
    python -m gateway.media export --sender 15551234567 --out FILE.zip
    python -m gateway.media delete --sender 15551234567 [--yes]

``--sender`` takes a WhatsApp number or ``telegram:USER_ID`` for a Telegram user.

``list`` prints one line per object, newest first: key, size in bytes, duration (audio) or face count
(photos), and when the webhook arrived. Without --sender it covers every sender. ``get`` downloads one
object (default: its file name, in the current directory; ``-o -`` writes to stdout).

``export`` and ``delete`` answer data-access and erasure requests that reach the operator outside the chat
(gateway.privacy): ``export`` writes everything kept of one person, with its metadata, to a zip; ``delete``
says what it would erase and, with ``--yes``, erases it exactly as the chat's DELETE ALL does (the media,
its bookkeeping, this host's spool entries, and an erase marker that stops anything still in flight). Both
write an audit line naming who ran them (``cli``).

The configuration is the gateway's own (gateway.config, from the environment), so with a .env file run it
as ``.venv/bin/dotenv run -- python -m gateway.media list``. A missing bucket is reported, not created.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Settings
from gateway.privacy import Privacy
from gateway.replies import format_duration
from gateway.sender import InvalidSender, mask_phone, parse_sender_argument
from gateway.intake.spool import Spool
from gateway.intake import Forgets
from gateway.intake.spooled import SpoolEraser
from gateway.storage.factory import open_store
from gateway.storage.base import Store, StoreStartupError, StoredObject, newest_first
from gateway.storage.keys import AUDIO, EXTENSIONS, IMAGES, InvalidKey, parse_key
from mediabot.config import ConfigError
from mediabot.logs import configure_logging


def detail(stored: StoredObject) -> str:
    """Duration for audio, face count for photos: what tells two objects of one sender apart at a glance."""
    metadata = stored.metadata
    if stored.key.split("/")[2] == AUDIO:
        audio = metadata.get("audio")
        duration = audio.get("duration_ms") if isinstance(audio, dict) else None
        return format_duration(int(duration)) if isinstance(duration, (int, float)) else "?"
    faces = metadata.get("faces")
    if not isinstance(faces, list):
        return "?"
    return f"{len(faces)} face{'' if len(faces) == 1 else 's'}"


def received_at(stored: StoredObject) -> str:
    value = stored.metadata.get("received_at")
    if isinstance(value, str) and value:
        return value
    return parse_key(stored.key)[1].strftime("%Y-%m-%dT%H:%M:%SZ")


def rows(store: Store, sender: str | None, kind: str | None) -> list[StoredObject]:
    senders = [sender] if sender is not None else store.senders()
    found: list[StoredObject] = []
    for one in senders:
        found.extend(store.list(one, kind))
    return newest_first(found)


def format_table(objects: Sequence[StoredObject]) -> str:
    table = [("KEY", "SIZE", "DETAIL", "RECEIVED AT")]
    table += [(o.key, str(o.size), detail(o), received_at(o)) for o in objects]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        "  ".join((row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3])).rstrip()
        for row in table
    ]
    return "\n".join(lines)


def _write_file(path: Path, data: bytes) -> None:
    """Temp file beside the target, then rename: an interrupted download never leaves a partial FILE."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.media", description="Browse the media the bot kept, in the configured store."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="what is stored, newest first")
    listing.add_argument("--sender", help="one sender: WhatsApp id or number (15551234567, +15551234567) or "
                                          "telegram:USER_ID")
    listing.add_argument("--kind", choices=sorted(EXTENSIONS), help=f"only {AUDIO} or only {IMAGES}")
    getting = commands.add_parser("get", help="download one object")
    getting.add_argument("key", help="the key as `list` prints it")
    getting.add_argument("-o", "--output", help="file to write (default: the key's file name here; - for stdout)")
    exporting = commands.add_parser("export", help="everything kept of one person, with metadata, as a zip")
    exporting.add_argument("--sender", required=True, help="WhatsApp id or number, or telegram:USER_ID")
    exporting.add_argument("--out", required=True, help="the zip file to write")
    deleting = commands.add_parser("delete", help="erase everything kept of one person (an erasure request)")
    deleting.add_argument("--sender", required=True, help="WhatsApp id or number, or telegram:USER_ID")
    deleting.add_argument("--yes", action="store_true", help="really erase (without it: only say what)")
    args = parser.parse_args(argv)

    sender = None
    if args.command in ("list", "export", "delete") and args.sender is not None:
        try:
            sender = parse_sender_argument(args.sender)
        except InvalidSender as error:
            parser.error(f"--sender: {error}")
    if args.command == "get":
        try:
            parse_key(args.key)
        except InvalidKey:
            parser.error(f"{args.key!r} is not a media key ((whatsapp|telegram)/<sender>/<audio|images>/<file>)")

    try:
        settings = Settings.from_env()
        store = open_store(settings, for_writing=False)
    except ConfigError as error:
        print(f"gateway.media: bad configuration: {error}", file=sys.stderr)
        return 2
    except StoreStartupError as error:
        print(f"gateway.media: storage: {error}", file=sys.stderr)
        return 1
    try:
        if args.command in ("export", "delete"):
            assert sender is not None
            configure_logging("gateway-media", settings.log_level)
            return _privacy(args, store, settings, sender)
        if args.command == "list":
            objects = rows(store, sender, args.kind)
            print(format_table(objects) if objects else "nothing stored" + (f" for {sender}" if sender else ""))
            return 0
        try:
            data = store.get(args.key)
        except KeyError:
            print(f"gateway.media: no object {args.key}", file=sys.stderr)
            return 1
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            target = Path(args.output or args.key.rsplit("/", 1)[1])
            _write_file(target, data)
            print(f"{args.key} -> {target} ({len(data)} bytes)", file=sys.stderr)
        return 0
    except OSError as error:
        print(f"gateway.media: storage: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _intake_eraser(settings: Settings) -> Forgets | None:
    """What erases a sender's waiting messages: the JetStream stream (INTAKE=jetstream), or this host's
    spool if it has one (erasing must not create an empty spool where none was used)."""
    if settings.intake == "jetstream":
        from gateway.intake.jetstream import JetStreamQueue
        from gateway.intake.jetstream_intake import JetStreamEraser, jetstream_settings

        return JetStreamEraser(JetStreamQueue(jetstream_settings(settings)))
    return SpoolEraser(Spool(settings.spool_dir)) if settings.spool_dir.is_dir() else None


def _privacy(args: argparse.Namespace, store: Store, settings: Settings, sender: str) -> int:
    """``export`` and ``delete``: the operator's side of gateway.privacy."""
    privacy = Privacy(store, _intake_eraser(settings))
    if args.command == "export":
        usage = privacy.export(sender, Path(args.out), by="cli")
        print(f"exported {usage.describe()} to {args.out}", file=sys.stderr)
        return 0
    usage = privacy.usage(sender)
    if not args.yes:
        print(f"this would erase {usage.describe()} kept for {mask_phone(sender)}; run again with --yes to erase",
              file=sys.stderr)
        return 1
    erased = privacy.erase(sender, by="cli")
    print(f"erased {erased.media} file{'' if erased.media == 1 else 's'} and {erased.spooled} spooled "
          f"message{'' if erased.spooled == 1 else 's'} of {mask_phone(sender)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
