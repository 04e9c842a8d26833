"""The simulated city's feed: readings to ingest over HTTP, 12345 calls over Open311.

Rate from a trickle to hundreds of thousands of readings per second (several batches in
flight at once). A scenario is started on command: ``city-vitals scenario start typhoon``
writes the control file the running simulator reads every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from ingest.batch import FRAME_TYPE
from ingest.city.model import City
from ingest.city.scenarios import Running, ScenarioName, ticket_surge
from ingest.city.tickets import draw_calls

log = logging.getLogger(__name__)

MAX_BATCH = 5_000


def read_control(path: Path | None) -> Running | None:
    """The scenario the control file names, if one is running now."""
    if path is None or not path.exists():
        return None
    try:
        data = orjson.loads(path.read_bytes())
        running = Running(
            name=ScenarioName(data["name"]),
            started_at=float(data["started_at"]),
            minutes=float(data.get("minutes", 30)),
            district=str(data.get("district", "tianhe")),
        )
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable scenario file %s: %s", path, exc)
        return None
    return running if running.active(time.time()) else None


def write_control(path: Path, running: Running) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            {"name": running.name.value, "started_at": running.started_at,
             "minutes": running.minutes, "district": running.district}
        )
    )  # fmt: skip


@dataclass
class Counts:
    accepted: int = 0
    refused: int = 0
    tickets: int = 0
    # Seconds each recent round took to build its bodies; each recent post until answered.
    builds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    posts: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


async def _post(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    counts: Counts,
    stop: asyncio.Event,
    kind: str = "application/json",
) -> None:
    """Post one batch, retrying after 503 or a lost connection as a well-behaved gateway."""
    while not stop.is_set():
        try:
            response = await client.post(path, content=body, headers={"content-type": kind})
        except httpx.TransportError as exc:
            log.warning("ingest unreachable (%s); retrying", exc)
            await asyncio.sleep(1.0)
            continue
        if response.status_code == 503:
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if response.status_code in (202, 422):
            answer = response.json()
            counts.accepted += int(answer["accepted"])
            counts.refused += len(answer["rejected"])
        else:
            log.error("ingest refused a batch: %s %s", response.status_code, response.text[:300])
        return


async def _timed(post: Coroutine[Any, Any, None]) -> float:
    """Seconds the post took."""
    began = time.time()
    await post
    return time.time() - began


async def _call(client: httpx.AsyncClient, form: dict[str, str], counts: Counts) -> None:
    try:
        response = await client.post("/open311/v2/requests.json", data=form)
    except httpx.TransportError as exc:
        log.warning("Open311 unreachable (%s)", exc)
        return
    if response.status_code == 201:
        counts.tickets += 1
    else:
        log.error("Open311 refused a call: %s %s", response.status_code, response.text[:300])


async def run(
    ingest_url: str,
    *,
    rate: float,
    stop: asyncio.Event,
    seed: int = 12345,
    key: str | None = None,
    control: Path | None = None,
    tickets: bool = True,
    concurrency: int = 4,
    interval: float = 1.0,
    frames: bool = True,
) -> Counts:
    """Feed ingest at about ``rate`` readings per second until stopped, posting every
    ``interval`` seconds (at most 1) what the devices measured since the last post: as frames
    (column by column, as a gateway of many devices would) or JSON arrays of readings."""
    interval = min(max(interval, 0.01), 1.0)
    city = City(seed)
    rng = np.random.default_rng(seed)
    counts = Counts()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency + 2)
    kind = FRAME_TYPE if frames else "application/json"
    async with httpx.AsyncClient(
        base_url=ingest_url, timeout=30.0, headers=headers, limits=limits
    ) as client:
        carry = 0.0
        last = time.time()
        calls: set[asyncio.Task[None]] = set()
        posts: set[asyncio.Task[float]] = set()
        slots = asyncio.Semaphore(concurrency)
        path = "/api/v1/readings"

        def finished(post: asyncio.Task[float]) -> None:
            posts.discard(post)
            slots.release()
            if post.cancelled():
                return
            if (error := post.exception()) is not None:
                # Not swallowed: a post that fails other than by transport (retried) or by
                # the answer's status (counted) is a bug to see.
                log.error("a post failed", exc_info=error)
                return
            counts.posts.append(post.result())

        while not stop.is_set():
            tick = time.time()
            running = read_control(control)
            carry += rate * (tick - last)
            count, carry = int(carry), carry - int(carry)
            elapsed, last = tick - last, tick
            make = city.frame if frames else city.body
            batches = [
                body
                for start in range(0, count, MAX_BATCH)
                if (body := make(tick, min(MAX_BATCH, count - start), running, span=elapsed))
            ]
            if tickets:
                surge = (
                    ticket_surge(running, float(running.progress(np.array([tick]))[0]))
                    if (running)
                    else {}
                )
                # Citizens call on their own time: a slow call never holds up the sensors.
                for form in draw_calls(rng, elapsed, city.grids, surge):
                    call = asyncio.create_task(_call(client, form, counts))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
            counts.builds.append(time.time() - tick)
            for body in batches:
                # As the gateways of a city would, a round's posts do not wait for the last
                # round's answers; only ``concurrency`` posts are in flight at once, so a slow
                # ingest slows the rounds down. (Posting round after round, each waiting for
                # its answers, left ingest idle while the broker acknowledged a round: it took
                # ~112,000 readings/s of 130,000 with its event loop half busy.)
                await slots.acquire()
                task = asyncio.create_task(_timed(_post(client, path, body, counts, stop, kind)))
                posts.add(task)
                task.add_done_callback(finished)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=max(0.0, interval - (time.time() - tick))
                )
        await asyncio.gather(*calls, *posts)
    log.info(
        "simulator stopped: %d readings accepted, %d refused, %d tickets filed",
        counts.accepted,
        counts.refused,
        counts.tickets,
    )
    if len(counts.builds) >= 2 and len(counts.posts) >= 2:
        build, post = np.array(counts.builds) * 1000, np.array(counts.posts) * 1000
        log.info(
            "last %d rounds: building them took p50 %.0f ms, max %.0f ms; last %d posts "
            "until ingest answered p50 %.0f ms, p99 %.0f ms, max %.0f ms",
            len(build),
            np.median(build),
            build.max(),
            len(post),
            np.median(post),
            np.percentile(post, 99),
            post.max(),
        )
    return counts
