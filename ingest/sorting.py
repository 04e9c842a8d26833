"""Sorting batch bodies in worker processes, beside the ingest service's event loop.

Parsing, validating, normalising and encoding a body is most of what ingest spends per
reading, and it is pure (``ingest.batch.sort_body``). Handing it to a worker process lets the
event loop go on with HTTP, de-duplication and the Kafka producer on another core, while
de-duplication stays in one process, so a retried batch is still recognised whichever
connection it comes back on (two uvicorn workers would each remember only their own).
A frame body whose readings all pass is the exception: checked in bulk, it costs less in the
event loop than its result's trip back from a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from functools import partial
from multiprocessing import get_context

from ingest.batch import Sorted, sort_body, sort_frame_at_once
from services.runtime import collect_for_throughput, exit_with_parent

log = logging.getLogger(__name__)


class SorterUnavailable(Exception):
    """A worker process died while sorting a body; nothing of it was accepted."""


def _start_worker(parent: int) -> None:
    # The service stops its workers itself: Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_for_throughput()
    exit_with_parent(parent)  # the task queue's pipe is open in the worker: it would wait


def _ready() -> bool:
    return True


class Sorter:
    """``sort_body`` in ``processes`` worker processes, or in the event loop when 0 (and for
    frames that pass whole)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the service has threads (the registry, the producer) by now.
        return ProcessPoolExecutor(
            self.processes,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )

    async def start(self) -> None:
        """Start the workers now, so the first request does not wait for them."""
        if self.processes:
            pool = self._pool = self._new_pool()
            loop = asyncio.get_running_loop()
            # A worker is spawned per task while none is idle: one task each starts them all.
            await asyncio.gather(
                *(loop.run_in_executor(pool, _ready) for _ in range(self.processes))
            )

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def sort(
        self,
        body: bytes,
        *,
        ndjson: bool,
        max_items: int,
        only_device: str | None,
        not_after: datetime | None,
        frame: bool = False,
    ) -> Sorted:
        """``sort_body`` of the body (raises MalformedBatch as it does)."""
        if frame:
            # A frame whose readings all pass is checked in bulk, cheaper here than the hop
            # to a worker and back (the result pickled there and unpickled here). One that
            # must be read reading by reading, to say what is wrong, goes to a worker.
            done = sort_frame_at_once(
                body, max_items=max_items, only_device=only_device, not_after=not_after
            )
            if done is not None:
                return done
        work = partial(
            sort_body,
            body,
            ndjson=ndjson,
            max_items=max_items,
            frame=frame,
            only_device=only_device,
            not_after=not_after,
        )
        pool = self._pool
        if pool is None:
            return work()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work)
        except BrokenProcessPool as exc:
            if self._pool is pool:  # the first request to find it broken replaces it
                log.error("a sorting worker died; starting new ones")
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise SorterUnavailable("a worker process died while reading the batch") from exc
