"""Reliability drills on a local stack under load; each prints what it found.

    python -m bench.drills kill      [--seconds 90] [--rate 1000] [--kills 4]
    python -m bench.drills postgres  [--seconds 60] [--rate 1000] [--down 8] [--crash]
    python -m bench.drills broker    [--seconds 30] [--rate 1000] [--down 15]
    python -m bench.drills poison
    python -m bench.drills fuzz      [--examples 50]   (needs pip install -e '.[bench]')

kill      SIGKILL the rules engine and the writer in turn at random moments while gateways
          post readings, restarting each at once.
postgres  stop PostgreSQL under load for ``--down`` seconds, then start it again; ``--crash``
          stops it as a crash does (immediate shutdown: unwritten WAL lost, recovery at start),
          which is what the writer's commits without waiting for the disk must survive.
broker    stop the broker under load: ingest must answer 503 and accept nothing meanwhile.
poison    undecodable and invalid records on every topic the platform reads.
fuzz      ingest's and the API's OpenAPI documents fuzzed by schemathesis: no 5xx allowed.

Each starts its own stack (embedded broker and PostgreSQL, free ports, no simulator), feeds it
readings over HTTP from several devices whose depths rise and fall through the thresholds, and
ends with counts: readings accepted (202 answers) and stored, alert transitions expected (one
pass of the pure engine over the topics' logs) and stored, and lost, duplicated and 5xx, which
must all be 0. Exit status 1 when one is not. The rules engine's idle ticks are off here
(``rules.tick_seconds`` an hour): the drill writes the final tick itself, so the logs it
replays are the ones the engine read.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaProducer

from bench.kafkalog import end_offsets, expected, saved_offsets, tick_all
from bench.scratch import scratch
from services.config import (
    ApiSettings,
    IngestSettings,
    KafkaSettings,
    LocalSettings,
    RulesSettings,
    Settings,
)
from services.local.processes import free_port
from services.local.stack import LocalStack, Service

DEVICES = 60


@dataclass
class Feed:
    """What the gateways saw."""

    accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # transport errors (connection refused...)


def body(at: datetime, phase: dict[str, float]) -> bytes:
    minute = at.timestamp() / 60
    return orjson.dumps(
        [
            {
                "device_id": device,
                "metric": "waterlogging_depth",
                "value": round(max(0.0, 30 + 30 * math.sin(minute / 3 + shift)), 2),
                "unit": "cm",
                "ts": at.isoformat(),
                "location": {"district": f"d{i % 4}", "street": f"d{i % 4}-s{i % 2}"},
            }
            for i, (device, shift) in enumerate(phase.items())
        ]
    )


def feed(ingest: str, key: str, rate: float, stop: threading.Event, out: Feed) -> None:
    """Post one reading per device every DEVICES/rate seconds until ``stop`` is set."""
    rng = random.Random(3)
    phase = {f"drill-{i:03d}": rng.uniform(0, 6) for i in range(DEVICES)}
    every = DEVICES / rate
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    with httpx.Client(timeout=30, headers=headers) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                response = client.post(
                    f"{ingest}/api/v1/readings", content=body(datetime.now(UTC), phase)
                )
                out.statuses[response.status_code] += 1
                if response.status_code == 202:
                    out.accepted += int(response.json()["accepted"])
            except httpx.TransportError:
                out.errors += 1
            next_at += every
            time.sleep(max(0.0, next_at - time.monotonic()))


class Drill:
    """A local stack, a feed, and the final tally."""

    def __init__(self, rate: float) -> None:
        self.work = scratch("drill")
        self.settings = Settings(
            api=ApiSettings(port=free_port()),
            # The drill's gateways make up their devices; the registry has its own tests.
            ingest=IngestSettings(port=free_port(), require_registered_devices=False),
            local=LocalSettings(broker_port=free_port(), postgres_port=free_port(), simulate=False),
            rules=RulesSettings(tick_seconds=3600),
            kafka=KafkaSettings(session_timeout_ms=6000),
        )
        self.stack = LocalStack(self.settings, data_dir=self.work, simulate=False)
        self.rate = rate
        self.fed = Feed()
        self.stopping = threading.Event()
        self.feeder: threading.Thread | None = None
        self.env: dict[str, str] = {}
        self.db_url = ""

    def __enter__(self) -> Drill:
        self.env, self.db_url = self.stack.start()
        self.kafka = self.settings.kafka.model_copy(
            update={"bootstrap_servers": self.stack.bootstrap}
        )
        print(f"stack up; logs in {self.work / 'logs'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.stack.stop()

    def service(self, name: str) -> Service:
        return next(s for s in self.stack.services if s.name == name)

    def start_feed(self) -> None:
        ingest = f"http://127.0.0.1:{self.settings.ingest.port}"
        self.feeder = threading.Thread(
            target=feed, args=(ingest, self.stack.gateway_key, self.rate, self.stopping, self.fed)
        )
        self.feeder.start()

    def stop_feed(self) -> None:
        self.stopping.set()
        if self.feeder is not None:
            self.feeder.join()

    def settle(self, timeout: float = 300.0) -> None:
        """Close every window, then wait until the engine and the writer have read it all."""
        asyncio.run(tick_all(self.kafka, datetime.now(UTC) + timedelta(hours=1)))
        topics = self.kafka.topics
        # Who must have read what: the engine its sources and its roll-up topic, the writer
        # the readings and the alerts.
        readers = {
            topics.readings: ("rules_state", "consumer_offsets"),
            topics.tickets: ("rules_state",),
            topics.rollup: ("rules_state",),
            topics.alerts: ("consumer_offsets",),
        }
        groups = {
            "rules_state": self.settings.rules.consumer_group,
            "consumer_offsets": self.settings.writer.consumer_group,
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ends = asyncio.run(end_offsets(self.kafka, list(readers)))
            saved = {t: saved_offsets(self.db_url, groups[t], t) for t in groups}
            behind = [
                key
                for key, end in ends.items()
                for table in readers[key[0]]
                if end > saved[table].get(key, 0)
            ]
            if not behind:
                return
            time.sleep(1.0)
        raise TimeoutError(f"not caught up within {timeout:.0f} s")

    def tally(self) -> bool:
        """Print the counts; True when nothing was lost, duplicated or answered with a 5xx."""
        stored, distinct = stored_readings(self.db_url)
        with psycopg.connect(self.db_url) as conn:
            stored_ids = {r[0] for r in conn.execute("SELECT transition_id FROM alert_transitions")}
        want, _ = asyncio.run(expected(self.kafka))
        lost_alerts = len(set(want) - stored_ids)
        unexpected = len(stored_ids - set(want))
        server_errors = sum(n for code, n in self.fed.statuses.items() if code >= 500)
        unavailable = self.fed.statuses.get(503, 0)
        findings = {
            "readings accepted": self.fed.accepted,
            "readings stored": distinct,
            "readings lost": self.fed.accepted - distinct,
            "readings duplicated": stored - distinct,
            "alert transitions expected": len(want),
            "alert transitions stored": len(stored_ids),
            "alert transitions lost": lost_alerts,
            "alert transitions unexpected": unexpected,
            "503 answers (with Retry-After)": unavailable,
            "other 5xx answers": server_errors - unavailable,
            "transport errors": self.fed.errors,
        }
        width = max(map(len, findings))
        for name, value in findings.items():
            print(f"  {name:<{width}}  {value:>9,}")
        bad = (
            findings["readings lost"]
            or findings["readings duplicated"]
            or lost_alerts
            or unexpected
            or findings["other 5xx answers"]
        )
        print("  verdict: " + ("FAILED" if bad else "nothing lost, duplicated or 5xx"))
        return not bad


def kill(args: argparse.Namespace) -> bool:
    rng = random.Random(args.seed)
    with Drill(args.rate) as drill:
        drill.start_feed()
        time.sleep(8)
        gap = args.seconds / (args.kills + 1)
        for n in range(args.kills):
            time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
            victim = drill.service(("rules", "writer")[n % 2])
            assert victim.process is not None
            victim.process.kill()
            victim.process.wait()
            print(f"  SIGKILL {victim.name} at {datetime.now(UTC):%H:%M:%S}; restarted")
            victim.start(drill.env)
        time.sleep(gap)
        drill.stop_feed()
        drill.settle()
        return drill.tally()


def postgres(args: argparse.Namespace) -> bool:
    with Drill(args.rate) as drill:
        assert drill.stack.postgres is not None
        drill.start_feed()
        time.sleep(args.seconds / 3)
        how = "crashed (immediate shutdown)" if args.crash else "stopped"
        print(f"  PostgreSQL {how} at {datetime.now(UTC):%H:%M:%S}")
        drill.stack.postgres.stop(crash=args.crash)
        time.sleep(args.down)
        drill.stack.postgres.start()
        print(f"  PostgreSQL started at {datetime.now(UTC):%H:%M:%S}")
        time.sleep(args.seconds * 2 / 3)
        drill.stop_feed()
        drill.settle()
        return drill.tally()


def broker(args: argparse.Namespace) -> bool:
    """The local broker keeps its topics in memory, so a restart loses them: this drill checks
    the edge, not the broker's durability (Apache Kafka's job in production). While the broker
    is down ingest must answer 503 with Retry-After and accept nothing; everything accepted
    before must be stored."""
    with Drill(args.rate) as drill:
        assert drill.stack.broker is not None
        drill.start_feed()
        time.sleep(args.seconds / 2)
        drill.stop_feed()
        before = drill.fed.accepted
        deadline = time.monotonic() + 120
        while stored_readings(drill.db_url)[1] < before and time.monotonic() < deadline:
            time.sleep(0.5)
        stored = stored_readings(drill.db_url)[1]
        print(f"  broker stopped at {datetime.now(UTC):%H:%M:%S}")
        drill.stack.broker.stop()
        drill.fed = Feed()
        drill.stopping.clear()
        drill.start_feed()
        time.sleep(args.down)
        drill.stop_feed()
        during = drill.fed
        refused = during.statuses.get(503, 0)
        other = sum(n for code, n in during.statuses.items() if code >= 500 and code != 503)
        findings = {
            "readings accepted before": before,
            "readings stored": stored,
            "readings lost": before - stored,
            "readings accepted while down": during.accepted,
            "503 answers while down": refused,
            "other answers while down": sum(during.statuses.values()) - refused,
            "other 5xx answers": other,
        }
        width = max(map(len, findings))
        for name, value in findings.items():
            print(f"  {name:<{width}}  {value:>9,}")
        ok = before == stored and during.accepted == 0 and refused > 0 and other == 0
        verdict = "nothing lost, nothing accepted that could not be kept" if ok else "FAILED"
        print(f"  verdict: {verdict}")
        return ok


def stored_readings(db_url: str) -> tuple[int, int]:
    """Rows and distinct readings the drill's devices have in PostgreSQL."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (reading_id, device_id, metric, ts)) FROM readings "
            "WHERE device_id LIKE 'drill-%'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def poison(args: argparse.Namespace) -> bool:
    misaligned = (  # a frame whose columns do not line up
        b'{"device_id":["a"],"metric":["aqi"],"unit":["AQI"],"ts":[0,1],"value":[1.0],'
        b'"place":[null],"places":{}}'
    )
    junk = [b"", b"\x00\xff not json", b"[]", b'{"device_id": 1}', b"{" * 10_000, b"null",
            misaligned]  # fmt: skip
    with Drill(args.rate) as drill:
        drill.start_feed()
        topics = drill.kafka.topics

        async def spray() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=drill.kafka.bootstrap_servers)
            await producer.start()
            try:
                for topic in (
                    topics.readings, topics.tickets, topics.rollup, topics.alerts,
                    topics.indicator_values, topics.dead_letter,
                ):  # fmt: skip
                    for value in junk:
                        await producer.send_and_wait(topic, value)
            finally:
                await producer.stop()

        asyncio.run(spray())
        time.sleep(args.seconds)
        drill.stop_feed()
        drill.settle()
        alive = all(
            s.process is not None and s.process.poll() is None for s in drill.stack.services
        )
        with psycopg.connect(drill.db_url) as conn:
            letters = conn.execute(
                "SELECT source, count(*) FROM dead_letters GROUP BY source ORDER BY source"
            ).fetchall()
        print(f"  poison records sent: {len(junk)} on each of 6 topics")
        for source, n in letters:
            print(f"  dead letters from {source:<8} {n:>6,}")
        print(f"  every service still running: {alive}")
        return drill.tally() and alive


def fuzz(args: argparse.Namespace) -> bool:
    """Every operation of ingest's and the API's OpenAPI documents fuzzed by schemathesis,
    with keys that pass authentication (a gateway's on ingest, an admin's on the API): no
    answer may be a 5xx."""
    from services.auth.models import ApiKeyCreate
    from services.auth.service import issue_sync

    st = Path(sys.executable).with_name("st")
    if not st.exists():
        raise SystemExit("schemathesis is missing: pip install -e '.[bench]'")
    with Drill(args.rate) as drill:
        drill.start_feed()  # the API answers over live data
        admin = issue_sync(
            drill.db_url,
            request=ApiKeyCreate.model_validate(
                {
                    "name": "fuzz drill",
                    "scopes": ["admin", "pii:read", "readings:write", "tickets:write"],
                }
            ),
            by="bench.drills",
        )
        targets = {
            "ingest": (drill.settings.ingest.port, drill.stack.gateway_key),
            "api": (drill.settings.api.port, admin.key),
        }
        ok = True
        for name, (port, key) in targets.items():
            done = subprocess.run(
                [
                    str(st), "run", f"http://127.0.0.1:{port}/openapi.json",
                    "--checks", "not_a_server_error", "--max-examples", str(args.examples),
                    "--header", f"Authorization: Bearer {key}", "--request-timeout", "30",
                    "--seed", str(args.seed),
                ],
                capture_output=True, text=True, check=False, cwd=drill.work,
            )  # fmt: skip
            (drill.work / f"fuzz-{name}.txt").write_text(done.stdout + done.stderr, "utf-8")
            found = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
            cases = f"{found[1]} cases, {found[2]} passed" if found else "no summary"
            verdict = "no 5xx" if done.returncode == 0 else "FAILED: see the report"
            print(f"  {name:<7} {cases}: {verdict} ({drill.work / f'fuzz-{name}.txt'})")
            ok = ok and done.returncode == 0
        drill.stop_feed()
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drill", choices=["kill", "postgres", "broker", "poison", "fuzz"])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long the load runs.")
    parser.add_argument("--rate", type=float, default=1000.0, help="Readings per second.")
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--down", type=float, default=8.0, help="Seconds a part is down.")
    parser.add_argument(
        "--crash",
        action="store_true",
        help="postgres: an immediate shutdown (as a crash: what was not yet written to the "
        "WAL on disk is lost) instead of a fast one.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--examples", type=int, default=50, help="Fuzz cases per operation.")
    args = parser.parse_args()
    drills = {"kill": kill, "postgres": postgres, "broker": broker, "poison": poison, "fuzz": fuzz}
    ok = drills[args.drill](args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
