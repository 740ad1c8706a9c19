"""What both simulators do first: wait until the stack `make run` started serves every backend.

The gateway is ready (it accepts and keeps messages) seconds after `make run` starts, while Triton is still
loading the face model: a photo sent then is answered "I'll check it shortly" and finished later by the
worker, which fetches the media again from the simulator's media host (WhatsApp) or local Bot API
(Telegram), gone by then, where Twilio's and Telegram's stay up. So a demo waits for the whole stack, and
says so once.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urljoin

import requests


def not_serving(session: requests.Session, url: str) -> list[str]:
    """What the gateway at ``url`` (any URL on it) lists in /readyz as not SERVING, sorted; ["the gateway"]
    when it does not answer. [] means the whole stack serves."""
    try:
        dependencies = session.get(urljoin(url, "/readyz"), timeout=2).json().get("dependencies", {})
    except (requests.RequestException, ValueError, AttributeError):
        return ["the gateway"]
    return sorted(name for name, status in dependencies.items() if status != "SERVING")


def wait_until_serving(webhook_url: str, timeout_s: float, *, poll_s: float = 0.5) -> list[str]:
    """Wait until the gateway's /readyz lists every backend SERVING, or ``timeout_s``; what is still not
    serving then ([] when all are; ["the gateway"] when it did not answer)."""
    deadline = time.monotonic() + timeout_s
    said = False
    with requests.Session() as session:
        session.trust_env = False
        while True:
            waiting = not_serving(session, webhook_url)
            if not waiting:
                return []
            if not said:
                print(f"simulate: waiting up to {timeout_s:g} s for {', '.join(waiting)} (Triton loads the face "
                      "model for a while after `make run` starts)", file=sys.stderr)
                said = True
            if time.monotonic() >= deadline:
                return waiting
            time.sleep(poll_s)
