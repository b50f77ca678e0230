"""InProcessJobRunner: the embedded default, asyncio worker tasks in this process."""

from __future__ import annotations

import asyncio
import logging

from studyrag.jobs.base import JobRunner

log = logging.getLogger(__name__)


class InProcessJobRunner(JobRunner):
    """`workers` owned tasks take job ids from a queue; a failing job is logged, not fatal."""

    backend = "inprocess"

    def __init__(self, *, workers: int = 2) -> None:
        super().__init__()
        self.workers = max(1, workers)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0

    @property
    def queued(self) -> int:
        return max(0, len(self._pending) - self._busy)

    @property
    def running(self) -> int:
        return self._busy

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"studyrag-job-worker-{i}")
                for i in range(self.workers)
            ]

    async def submit(self, job_id: str) -> None:
        if job_id in self._pending:
            return
        self._pending.add(job_id)
        self._idle.clear()
        self._queue.put_nowait(job_id)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            self._busy += 1
            try:
                await self.handler(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s failed", job_id)
            finally:
                self._busy -= 1
                self._pending.discard(job_id)
                if not self._pending and self._busy == 0:
                    self._idle.set()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pending.clear()
        self._idle.set()
