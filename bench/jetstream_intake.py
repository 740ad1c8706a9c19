"""`python -m bench.jetstream_intake`: what the JetStream intake costs on this machine.

Against a real nats-server -js (file storage; its default fsync policy, then ``sync_interval: always``) in a temp dir: the
latency of one blocking ``publish`` (the PubAck wait the webhook pays for "accepted"), p50/p99 over N
publishes of a webhook-sized payload, one after another as one gunicorn thread does them; then the
throughput of one worker fetching and acking them (batch 1, as the worker does, and batch 10).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gateway.intake.jetstream import JetStreamQueue, JetStreamSettings, sender_key
from bench.nats_server import NatsServer

# About what a WhatsApp media webhook's form takes as JSON.
PAYLOAD = json.dumps({"form": {f"field{i}": "x" * 40 for i in range(20)}, "received_at": "2026-01-01T00:00:00+00:00"}).encode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _drain(intake: JetStreamQueue, total: int, batch: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < total:
        for delivery in intake.fetch(batch=batch, timeout_s=2):
            delivery.ack()
            done += 1
    return done / (time.perf_counter() - started)


def run(count: int, *, sync_always: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        server = NatsServer(root=Path(root), sync_always=sync_always)
        server.start()
        intake = JetStreamQueue(JetStreamSettings(url=server.url))
        try:
            intake.ensure_topology()
            key = sender_key("15550000000")
            for n in range(50):  # warm-up, then drained
                intake.publish(f"WARM{n:030x}", PAYLOAD, key)
            _drain(intake, 50, 10)
            latencies_ms = []
            for n in range(count):
                started = time.perf_counter()
                intake.publish(f"SM{n:032x}", PAYLOAD, key)
                latencies_ms.append((time.perf_counter() - started) * 1000)
            single = _drain(intake, count, 1)
            for n in range(count):
                intake.publish(f"MM{n:032x}", PAYLOAD, key)
            batched = _drain(intake, count, 10)
        finally:
            intake.close()
            server.stop()
    return {
        "sync_interval": "always" if sync_always else "server default (2 min)",
        "publishes": count,
        "payload_bytes": len(PAYLOAD),
        "publish_p50_ms": round(statistics.median(latencies_ms), 3),
        "publish_p99_ms": round(_percentile(latencies_ms, 0.99), 3),
        "publish_max_ms": round(max(latencies_ms), 3),
        "fetch_ack_per_s_batch1": round(single, 1),
        "fetch_ack_per_s_batch10": round(batched, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    count = parser.parse_args().count
    baseline, synced = run(count), run(count, sync_always=True)
    # What fsync on every write (compose and k8s) costs against the server's default, per figure.
    ratios = {key: round(synced[key] / baseline[key], 2) for key in baseline
              if key.startswith(("publish_p", "fetch_ack")) and baseline[key]}
    print(json.dumps({"default": baseline, "sync_always": synced, "sync_always_vs_default": ratios}, indent=2))


if __name__ == "__main__":
    main()
