"""End-to-end smoke figures for the local stack: ingest rate beside a bare uvicorn endpoint,
time until every accepted reading is stored, and closed-window-to-alert latency via the API.

    python -m bench.pipeline [--readings 200000] [--batch 5000] [--alerts 50]

It starts its own stack (embedded broker and PostgreSQL, fresh data directory, free ports,
no simulator) and stops it at the end. One client posts batches in sequence, so the ingest
figure is per connection; the ratio to the bare endpoint is what to compare between runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psycopg

from bench.scratch import scratch
from services.config import ApiSettings, IngestSettings, LocalSettings, Settings
from services.local.processes import free_port, stop_process, wait_for_port
from services.local.stack import LocalStack


def bodies(count: int, batch: int, tag: str) -> list[bytes]:
    """Batches of valid readings from 1,000 devices, with ids, as a gateway would send."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for start in range(0, count, batch):
        out.append(
            orjson.dumps(
                [
                    {
                        "device_id": f"{tag}-{i % 1000}",
                        "metric": "aqi",
                        "value": float(i % 300),
                        "unit": "AQI",
                        "ts": (t0 + timedelta(milliseconds=i)).isoformat(),
                    }
                    for i in range(start, min(start + batch, count))
                ]
            )
        )
    return out


def post_all(url: str, payloads: list[bytes], key: str = "") -> float:
    """Readings per second accepted by the endpoint at ``url``."""
    sent = 0
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    with httpx.Client(timeout=60, headers=headers) as client:
        began = time.perf_counter()
        for body in payloads:
            response = client.post(url, content=body)
            if response.status_code != 202:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
            sent += response.json()["accepted"]
        return sent / (time.perf_counter() - began)


def bare_rate(payloads: list[bytes], logs: Path) -> float:
    port = free_port()
    with (logs / "bare.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bare:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, what="bare endpoint")
        return post_all(f"http://127.0.0.1:{port}/api/v1/readings", payloads)
    finally:
        stop_process(proc, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--alerts", type=int, default=50)
    args = parser.parse_args()

    work = scratch("bench")
    settings = Settings(
        api=ApiSettings(port=free_port()),
        # The latency loop writes up to a few hours ahead (see below).
        ingest=IngestSettings(port=free_port(), max_future_seconds=86_400),
        local=LocalSettings(broker_port=free_port(), postgres_port=free_port(), simulate=False),
    )
    payloads = bodies(args.readings, args.batch, "bench")
    stack = LocalStack(settings, data_dir=work, simulate=False)
    try:
        _, db_url = stack.start()
        ingest = f"http://127.0.0.1:{settings.ingest.port}"
        api = f"http://127.0.0.1:{settings.api.port}"
        # Warm up: let the consumer groups form before anything is timed.
        key = stack.gateway_key
        post_all(f"{ingest}/api/v1/readings", bodies(10, 10, "warm"), key)
        time.sleep(6)

        latencies = []
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
            # The engine judges closed event-time windows: an alert waits for its window to end
            # and for the allowed lateness (60 s + 30 s for waterlogging), by definition. What
            # is timed here is the rest: each breaching reading comes with a later one that
            # closes its window, so the figure is the pipeline's own delay. Each device writes
            # a few minutes after the previous one, so no window is late on its partition.
            base = datetime.now(UTC) + timedelta(minutes=5)
            for k in range(args.alerts):
                device = f"latency-{k}"
                at = base + timedelta(minutes=3 * k)
                body = [
                    {
                        "device_id": device,
                        "metric": "waterlogging_depth",
                        "value": 60.0,
                        "unit": "cm",
                        "ts": when.isoformat(),
                    }
                    for when in (at, at + timedelta(minutes=2))
                ]
                start = time.perf_counter()
                client.post(f"{ingest}/api/v1/readings", json=body).raise_for_status()
                while not client.get(f"{api}/api/v1/alerts", params={"scope_id": device}).json()[
                    "items"
                ]:
                    time.sleep(0.005)
                latencies.append((time.perf_counter() - start) * 1000)
        began = time.perf_counter()
        ours = post_all(f"{ingest}/api/v1/readings", payloads, key)
        with psycopg.connect(db_url) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM readings WHERE device_id LIKE 'bench-%'"
                ).fetchone()
                if row and row[0] >= args.readings:
                    break
                time.sleep(0.2)
        stored_after = time.perf_counter() - began

        reference = bare_rate(payloads, work / "logs")
    finally:
        stack.stop()

    q = statistics.quantiles(latencies, n=100)
    print(f"readings: {args.readings:,} in batches of {args.batch:,}, one client")
    print(f"ingest over HTTP into Kafka:      {ours:>10,.0f} readings/s")
    print(
        f"bare uvicorn endpoint (reference): {reference:>9,.0f} readings/s"
        f"   ratio {ours / reference:.2f}"
    )
    print(
        f"all stored in PostgreSQL after:   {stored_after:>10.1f} s "
        f"({args.readings / stored_after:,.0f} readings/s end to end)"
    )
    print(
        f"closed window -> alert via the API: p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms "
        f"(n={len(latencies)}, idle stack; plus the window and allowed lateness)"
    )


if __name__ == "__main__":
    main()
