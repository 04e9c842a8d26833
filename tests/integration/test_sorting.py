"""Ingest's sorting worker processes (ingest/sorting.py): real processes, no broker needed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import orjson
import psutil
import pytest

from ingest.batch import MalformedBatch, sort_body
from ingest.city.model import City
from ingest.sorting import Sorter, SorterUnavailable


def test_a_worker_process_sorts_as_the_event_loop_would_and_a_dead_one_is_replaced() -> None:
    body = City(seed=5).body(1_782_000_000.0, 500)
    bad = body[:-1] + b",7]"  # one item that is not a reading: the item-by-item path
    frame = City(seed=5).frame(1_782_000_000.0, 500)
    columns = orjson.loads(frame)
    columns["unit"][0] = "furlong"  # a unit its metric cannot be converted from
    bad_frame = orjson.dumps(columns)

    async def go() -> None:
        sorter = Sorter(1)
        await sorter.start()
        sort = partial(sorter.sort, ndjson=False, max_items=1000, only_device=None, not_after=None)
        try:
            for sent in (body, bad):
                assert await sort(sent) == sort_body(sent, ndjson=False, max_items=1000)
            for sent in (frame, bad_frame):
                expected = sort_body(sent, ndjson=False, frame=True, max_items=1000)
                assert await sort(sent, frame=True) == expected
            assert len(expected.rejected) == 1  # the bad frame was read reading by reading
            with pytest.raises(MalformedBatch, match="not valid JSON"):
                await sort(b"[{")

            [worker] = [
                p
                for p in psutil.Process(os.getpid()).children()
                if any("spawn_main" in part for part in p.cmdline())
            ]
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            # A frame whose readings all pass is checked in bulk in the event loop, no hop.
            assert len((await sort(frame, frame=True)).accepted) == 500
            with pytest.raises(SorterUnavailable):
                await sort(body)
            assert len((await sort(body)).accepted) == 500  # a new worker took over
        finally:
            sorter.stop()

    asyncio.run(go())


SERVICE = """
import asyncio
from ingest.sorting import Sorter

async def main():
    sorter = Sorter(2)
    await sorter.start()
    print("ready", flush=True)
    await asyncio.sleep(120)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_end_when_the_service_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    service = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline().strip() == b"ready"
        workers = [
            p
            for p in psutil.Process(service.pid).children()
            if any("spawn_main" in part for part in p.cmdline())
        ]
        assert len(workers) == 2  # both started before the first request
        service.kill()
        service.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers outlived the service: {alive}"
    finally:
        service.kill()
