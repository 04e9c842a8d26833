"""End to end on this machine: the simulated city feeding the whole local stack (broker,
PostgreSQL, ingest, rules engine, writer, API) at rising rates.

    python -m bench.e2e [--rates 10000,20000,40000,60000,80000,100000,150000] [--step-seconds 30]
                        [--latency-seconds 300] [--interval 0.05] [--concurrency 8]
                        [--storm] [--latency-rate RATE]

For each rate the simulator posts readings (and 12345 calls) for ``--step-seconds``; the rate
is kept up with when ingest accepts at least 90% of it and neither the rules engine's nor the
writer's consumer lag grows by more than two seconds' worth of readings over the step. Then,
at half the highest rate kept up with and with the typhoon scenario running (so alerts fire;
it lasts 1.25 times the phase, so the low-lying gauges, whose water rises from 20-40% to
60-80% of it, escalate at most of the phase's window closes), it reports alert latency:
when each alert transition could first be read from PostgreSQL (polled every 10 ms), less the
event time the transition happened at and the indicator's allowed lateness, which the engine
waits for by definition before it may close a window. The latency phase runs on a fresh
stack (``--same-stack`` to keep the ramp's): the local broker's fetches grow costlier with
everything it has ever stored.
The simulator posts every ``--interval`` seconds what the devices measured since its last
post, with at most ``--concurrency`` posts in flight (gateways posting at once): the
reading that lets a window close reaches ingest up to that long after the moment it could
close, which the latency includes.

How many transitions a window close brings depends on where the typhoon stands at it, so a
run's tail depends on the minute it was started. ``--storm`` makes it the same every time,
and the worst the simulated city has: the typhoon slows every road, and the road-speed
indicator judges each road on a five-minute window's mean, so most of the 696 roads breach in
the same window. It runs a 15-minute typhoon and a 720 s phase, started (after a wait of up
to five minutes) so that a five-minute close falls 650 s into the typhoon: ~700 transitions
at that one close. In the rush hours (around 08:30 and 18:00 in Guangzhou) roads are slow
already and that storm splits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import psutil
import psycopg
from aiokafka.partitioner import DefaultPartitioner

from bench.kafkalog import ReadingCounts, arrivals, end_offsets, produced_at, saved_offsets
from bench.scratch import scratch
from rules.indicators import Catalogue
from services.config import ApiSettings, IngestSettings, LocalSettings, Settings
from services.local.processes import free_port, stop_process
from services.local.stack import LocalStack

WARM_UP = 8.0  # seconds the simulator runs before a phase is measured
# --storm: see the module's docstring.
STORM_TYPHOON_MINUTES = 15
STORM_PHASE = 720.0
STORM_CLOSE_AFTER = 650.0  # seconds into the typhoon
STORM_CYCLE = 300  # seconds between five-minute closes


def storm_wait(now: float, lateness: float) -> float:
    """Seconds to wait from ``now`` (epoch s) so that a typhoon started then meets a close
    of the five-minute windows ``STORM_CLOSE_AFTER`` seconds in. Those windows close
    ``lateness`` after a multiple of ``STORM_CYCLE``."""
    return (lateness - STORM_CLOSE_AFTER - now) % STORM_CYCLE


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) a process and its living descendants have used."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    used = 0.0
    for proc in family:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used += times.user + times.system
    return used


class Run:
    def __init__(self) -> None:
        self.work = scratch("e2e")
        self.settings = Settings(
            api=ApiSettings(port=free_port()),
            ingest=IngestSettings(port=free_port()),
            local=LocalSettings(broker_port=free_port(), postgres_port=free_port(), simulate=False),
        )
        # The simulator runs here, at each step's rate; its devices are registered before
        # ingest starts, so none of its first posts is refused while ingest catches up.
        self.stack = LocalStack(
            self.settings, data_dir=self.work, simulate=False, city_devices=True
        )
        self.control = self.work / "scenario.json"
        self.interval = 1.0  # seconds between the simulator's posts
        self.concurrency = 8  # the simulator's posts in flight at once
        self.counts: ReadingCounts | None = None  # readings a record holds, once started

    def lag(self) -> tuple[int, dict[str, int]]:
        """Readings on the topic, and those each consumer group has not yet saved as done."""
        kafka = self.settings.kafka.model_copy(update={"bootstrap_servers": self.stack.bootstrap})
        topic = kafka.topics.readings
        ends = asyncio.run(end_offsets(kafka, [topic]))
        done = {
            "rules": saved_offsets(self.db_url, self.settings.rules.consumer_group),
            "writer": saved_offsets(
                self.db_url, self.settings.writer.consumer_group, "consumer_offsets"
            ),
        }
        # Offsets count records (frames); these count the readings in them.
        if self.counts is None:
            self.counts = ReadingCounts(kafka)
        upto = self.counts.upto
        behind = {
            name: sum(upto(p, end) - upto(p, kept.get((t, p), 0)) for (t, p), end in ends.items())
            for name, kept in done.items()
        }
        return sum(upto(p, end) for (_, p), end in ends.items()), behind

    def processes(self) -> dict[str, int]:
        """The stack's processes by part (each counted with its children: PostgreSQL's
        backends, ingest's sorting workers, the writer's roles)."""
        parts = {"broker": self.stack.broker, "postgres": self.stack.postgres}
        pids = {name: p.process.pid for name, p in parts.items() if p and p.process}
        pids.update({s.name: s.process.pid for s in self.stack.services if s.process})
        return pids

    def simulate(
        self, rate: float, seconds: float, tag: str
    ) -> tuple[float, dict[str, int], dict[str, float]]:
        """Run the simulator at ``rate``: after a warm-up, the rate readings reached the topic
        over ``seconds``, how much each group's lag grew meanwhile, and the CPU seconds each
        part of the stack (and the simulator) used meanwhile."""
        log = self.work / "logs" / f"simulate-{tag}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "simulate", "--rate", str(rate),
                 "--concurrency", str(self.concurrency), "--control", str(self.control),
                 "--interval", str(self.interval)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            time.sleep(WARM_UP)  # start-up and the first seconds' catch-up
            pids = {**self.processes(), "simulator": proc.pid}
            cpu = {name: tree_cpu(pid) for name, pid in pids.items()}
            began, (first, before) = time.monotonic(), self.lag()
            time.sleep(seconds)
            took, (last, after) = time.monotonic() - began, self.lag()
            cpu = {name: tree_cpu(pid) - cpu[name] for name, pid in pids.items()}
        finally:
            stop_process(proc, timeout=30)
        return (last - first) / took, {k: after[k] - before[k] for k in after}, cpu

    def drain(self, timeout: float = 600.0) -> float:
        """Wait until neither consumer group lags; the seconds it took. Raises if they still
        lag after ``timeout``: a measurement on top of a backlog measures the backlog."""
        began = time.monotonic()
        while max(self.lag()[1].values()) > 0:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"still lagging after {timeout:.0f} s: {self.lag()[1]}")
            time.sleep(1.0)
        return time.monotonic() - began

    def start(self) -> None:
        self.env, self.db_url = self.stack.start()

    def stop(self) -> None:
        if self.counts is not None:
            self.counts.close()
        self.stack.stop()


class Seen:
    """When each alert transition first became readable in PostgreSQL (committed), by polling
    in a thread: the row's ``stored_at`` is when its transaction began, not when it could be
    read.

    Each poll reads only rows whose transaction began in the last ``LOOKBACK`` seconds. Reading
    every row since the phase began, 100 times a second, cost the bench a fifth of a core
    (and PostgreSQL a tenth) by a storm's close, 650 s in: taken from the stack it measures.
    A row whose transaction took longer than that to commit is found by ``sweep`` afterwards
    and gets the sweep's time: counted, and never better than it was."""

    EVERY = 0.01
    LOOKBACK = 10.0

    def __init__(self, db_url: str, since: datetime) -> None:
        self.db_url, self.since = db_url, since
        self.at: dict[str, float] = {}
        self.swept = 0  # rows only the final sweep found
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.done.wait(self.EVERY):
                now = time.time()
                for (tid,) in conn.execute(
                    "SELECT transition_id::text FROM alert_transitions "
                    "WHERE stored_at >= greatest(%s, now() - make_interval(secs => %s))",
                    (self.since, self.LOOKBACK),
                ):
                    self.at.setdefault(tid, now)

    def sweep(self) -> None:
        """Every row since the phase began that no poll saw, at this moment."""
        now = time.time()
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            for (tid,) in conn.execute(
                "SELECT transition_id::text FROM alert_transitions WHERE stored_at >= %s",
                (self.since,),
            ):
                if tid not in self.at:
                    self.at[tid] = now
                    self.swept += 1

    def __enter__(self) -> Seen:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.sweep()


def closing_arrivals(
    run: Run, rows: list[tuple[str, str, str, float, str]], due: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """For each device-scope transition, the record that let its window close: when it was
    measured (its event time) and when ingest produced it (its timestamp), epoch s."""
    kafka = run.settings.kafka.model_copy(update={"bootstrap_servers": run.stack.bootstrap})
    logs = asyncio.run(arrivals(kafka, kafka.topics.readings))
    partitions = sorted(logs)
    place = DefaultPartitioner()
    out = {}
    for tid, _, level, _, scope_id in rows:
        if level != "device" or tid not in due:
            continue
        seen, at = logs[place(scope_id.encode(), partitions, partitions)]
        i = int(np.searchsorted(seen, int(due[tid] * 1000), side="left"))
        if i < len(at):
            out[tid] = (float(seen[i]) / 1000, float(at[i]))
    return out


def cpu_line(cpu: dict[str, float], readings: float, seconds: float) -> str:
    """Where the CPU went: microseconds of CPU per reading, by part, busiest first."""
    per = {name: used / max(readings, 1) * 1e6 for name, used in cpu.items()}
    parts = ", ".join(f"{name} {us:.1f}" for name, us in sorted(per.items(), key=lambda x: -x[1]))
    total = sum(cpu.values())
    return (
        f"{'':>8} CPU us/reading: {parts}; all {sum(per.values()):.1f} "
        f"({total / seconds:.0%} of a core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10000,20000,40000,60000,80000,100000,150000")
    parser.add_argument("--step-seconds", type=float, default=30.0)
    # Transitions come in bursts when windows close (once a minute for most indicators):
    # five minutes see four or five of them.
    parser.add_argument(
        "--latency-seconds", type=float, default=None, help="300 (720 with --storm)."
    )
    parser.add_argument(
        "--interval", type=float, default=0.05, help="Seconds between the simulator's posts."
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="The simulator's posts in flight at once (gateways posting at the same time).",
    )
    parser.add_argument(
        "--same-stack",
        action="store_true",
        help="Measure latency on the stack the rates ran on (by default, a fresh one).",
    )
    parser.add_argument(
        "--storm",
        action="store_true",
        help="Measure latency at the same storm every run: ~700 transitions at one close "
        "(waits up to five minutes first).",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="Skip the rates: measure latency at this many readings/s (half of what an "
        "earlier run sustained), so that runs compare at the same load.",
    )
    args = parser.parse_args()
    latency_seconds = args.latency_seconds or (STORM_PHASE if args.storm else 300.0)
    if args.storm and latency_seconds < STORM_CLOSE_AFTER + 30 - WARM_UP:
        parser.error(
            f"--storm needs --latency-seconds of at least {STORM_CLOSE_AFTER + 30 - WARM_UP:.0f}"
        )
    typhoon_minutes = STORM_TYPHOON_MINUTES if args.storm else math.ceil(latency_seconds / 48)
    catalogue = Catalogue.from_yaml()
    run = Run()
    run.interval, run.concurrency = args.interval, args.concurrency
    run.start()
    try:
        if args.latency_rate:
            rates, kept = [], 2 * args.latency_rate
        else:
            rates, kept = [float(r) for r in args.rates.split(",")], 0.0
            header = ("rate/s", "accepted/s", "rules lag +", "writer lag +")
            print("{:>8} {:>11} {:>12} {:>13}  kept up".format(*header))
        for rate in rates:
            run.drain()
            achieved, growth, cpu = run.simulate(rate, args.step_seconds, f"{rate:.0f}")
            ok = achieved >= 0.9 * rate and max(growth.values()) <= 2 * rate
            kept = rate if ok else kept
            print(
                f"{rate:>8,.0f} {achieved:>11,.0f} {growth['rules']:>12,} "
                f"{growth['writer']:>13,}  {'yes' if ok else 'no'}"
            )
            print(cpu_line(cpu, achieved * args.step_seconds, args.step_seconds))
            if not ok:
                break
        if not kept:
            print("kept up with none of the rates")
            return
        if rates:
            print(f"sustained: {kept:,.0f} readings/s")
            print(f"(the backlog of the last step drained in {run.drain():.0f} s)")
        if rates and not args.same_stack:
            # The local broker keeps every batch ever produced and lists them all on each
            # fetch that returns data (Tansu 0.6's memory store: no retention), so after the
            # ramp its fetches cost several times what they did at first; Apache Kafka's do
            # not grow so. Half load is measured as it would run from a fresh start.
            run.stop()
            run = Run()
            run.interval, run.concurrency = args.interval, args.concurrency
            run.start()
            print("(latency measured on a fresh stack; --same-stack keeps the ramp's)")
        if args.storm:
            # The lateness most indicators allow: their windows close that long after their end.
            usual = Counter(i.allowed_lateness_seconds for i in catalogue.by_code.values())
            wait = storm_wait(time.time(), usual.most_common(1)[0][0])
            print(f"(waiting {wait:.0f} s: a five-minute close falls {STORM_CLOSE_AFTER:.0f} s "
                  "into the typhoon)")  # fmt: skip
            time.sleep(wait)
        subprocess.run(
            [sys.executable, "-m", "services.cli", "scenario", "start", "typhoon", "--minutes",
             str(typhoon_minutes), "--control", str(run.control)],
            env=run.env, check=True, capture_output=True,
        )  # fmt: skip
        since = datetime.now(UTC)
        with Seen(run.db_url, since) as seen:
            achieved, _, cpu = run.simulate(kept / 2, latency_seconds, "latency")
            run.drain()
        print(f"latency phase: {achieved:,.0f} readings/s")
        print(cpu_line(cpu, achieved * latency_seconds, latency_seconds))
        lateness = {code: i.allowed_lateness_seconds for code, i in catalogue.by_code.items()}
        with psycopg.connect(run.db_url) as conn:
            rows = conn.execute(
                "SELECT transition_id::text, indicator, scope_level, "
                "extract(epoch FROM observed_at), scope_id FROM alert_transitions "
                "WHERE stored_at >= %s",
                (since,),
            ).fetchall()
            began: dict[str, float] = dict(
                conn.execute(
                    "SELECT transition_id::text, extract(epoch FROM stored_at)::float8 "
                    "FROM alert_transitions WHERE stored_at >= %s",
                    (since,),
                ).fetchall()
            )
        # Latency: from the moment the window could close (its end plus the allowed lateness,
        # which the engine must wait for) until the transition could be read from PostgreSQL.
        due = {tid: float(at) + lateness.get(code, 0) for tid, code, _, at, _ in rows}
        latencies = sorted(seen.at[tid] - due[tid] for tid in due if tid in seen.at)
        if seen.swept:
            print(
                f"({seen.swept:,} transitions committed more than {Seen.LOOKBACK:.0f} s after "
                "their transaction began: counted as readable when the phase ended)"
            )
        if len(latencies) < 20:
            print(f"only {len(latencies)} alert transitions at half load: no percentiles")
            return
        q = statistics.quantiles(latencies, n=100)
        moments = Counter(round(due[tid]) for tid, _, _, _, _ in rows if tid in seen.at)
        print(
            f"alert latency at {kept / 2:,.0f} readings/s, typhoon running "
            f"({len(latencies):,} transitions at {len(moments)} moments, at most "
            f"{max(moments.values()):,} at one): p50 {q[49] * 1000:,.0f} ms, "
            f"p99 {q[98] * 1000:,.0f} ms from when the window could close until readable"
        )
        # Device scopes are judged where their readings land; the others after a roll-up hop.
        for level in sorted({level for _, _, level, _, _ in rows}):
            mine = sorted(
                seen.at[t] - due[t] for t, _, lv, _, _ in rows if lv == level and t in seen.at
            )
            p50, top = statistics.median(mine) * 1000, mine[-1] * 1000
            print(f"  {level:<9} {len(mine):>5,} transitions: p50 {p50:,.0f} ms, max {top:,.0f} ms")
        # Where the time went: until the engine produced the transition, then until readable.
        kafka = run.settings.kafka.model_copy(update={"bootstrap_servers": run.stack.bootstrap})
        produced = asyncio.run(produced_at(kafka, kafka.topics.alerts))
        both = [t for t in due if t in produced and t in seen.at]
        # A device's transition closes on the first record that moves its readings
        # partition's event time past the due moment: when did ingest produce that record?
        arrived = closing_arrivals(run, rows, due)
        closed = [t for t in both if t in arrived]
        stages = {
            "until the closing reading was measured": [
                (arrived[t][0] - due[t]) * 1000 for t in closed
            ],
            "then ingest produced it": [(arrived[t][1] - arrived[t][0]) * 1000 for t in closed],
            "then the engine produced the transition": [
                (produced[t] - arrived[t][1]) * 1000 for t in closed
            ],
            "until the engine produced it": [(produced[t] - due[t]) * 1000 for t in both],
            "then the writer's transaction began": [(began[t] - produced[t]) * 1000 for t in both],
            f"then readable (polled every {Seen.EVERY * 1000:.0f} ms)": [
                (seen.at[t] - began[t]) * 1000 for t in both
            ],
        }
        for name, times in stages.items():
            if times:
                print(f"  {name}: p50 {statistics.median(times):,.0f} ms, max {max(times):,.0f} ms")
    finally:
        run.stop()


if __name__ == "__main__":
    main()
