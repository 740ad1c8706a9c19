"""Browse what the bot kept, from a terminal, in whichever store STORAGE configures.

    python -m gateway.media list [--sender 15551234567] [--kind audio|images]
    python -m gateway.media get KEY [-o FILE]

``list`` prints one line per object, newest first: key, size in bytes, duration (audio) or face count
(photos), and when the webhook arrived. Without --sender it covers every sender. ``get`` downloads one
object (default: its file name, in the current directory; ``-o -`` writes to stdout).

The configuration is the gateway's own (gateway.config, from the environment), so with a .env file run it
as ``.venv/bin/dotenv run -- python -m gateway.media list``. It only reads: a missing bucket is reported,
not created.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ConfigError, Settings
from gateway.replies import format_duration
from gateway.sender import InvalidSender, sender_id
from gateway.store import (
    AUDIO,
    EXTENSIONS,
    IMAGES,
    InvalidKey,
    Store,
    StoredObject,
    StoreStartupError,
    newest_first,
    open_store,
    parse_key,
)


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
    listing.add_argument("--sender", help="one sender: WhatsApp id or number, e.g. 15551234567 or +15551234567")
    listing.add_argument("--kind", choices=sorted(EXTENSIONS), help=f"only {AUDIO} or only {IMAGES}")
    getting = commands.add_parser("get", help="download one object")
    getting.add_argument("key", help="the key as `list` prints it")
    getting.add_argument("-o", "--output", help="file to write (default: the key's file name here; - for stdout)")
    args = parser.parse_args(argv)

    sender = None
    if args.command == "list" and args.sender is not None:
        try:
            sender = sender_id({"From": args.sender})
        except InvalidSender as error:
            parser.error(f"--sender: {error}")
    if args.command == "get":
        try:
            parse_key(args.key)
        except InvalidKey:
            parser.error(f"{args.key!r} is not a media key (whatsapp/<sender>/<audio|images>/<file>)")

    try:
        store = open_store(Settings.from_env(), for_writing=False)
    except ConfigError as error:
        print(f"gateway.media: bad configuration: {error}", file=sys.stderr)
        return 2
    except StoreStartupError as error:
        print(f"gateway.media: storage: {error}", file=sys.stderr)
        return 1
    try:
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


if __name__ == "__main__":
    sys.exit(main())
