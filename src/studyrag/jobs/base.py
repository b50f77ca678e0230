"""The JobRunner role: runs jobs by id in the background, whatever process submitted them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, Self


class JobHandler(Protocol):
    """What runs one job: JobService.run.

    `takeover` is true when an earlier run of the same job stopped without finishing (it
    raised, was aborted at shutdown, or its worker died): the handler takes back what that
    run left half-done. The runner guarantees that run is over.
    """

    async def __call__(self, job_id: str, *, takeover: bool = False) -> None: ...


class JobRunner(ABC):
    """Runs `handler(job_id)` for submitted jobs with bounded concurrency.

    The embedded default runs them in this process; a distributed runner (a job queue on
    PostgreSQL or Redis) runs the same handler on whichever worker takes the job. Callers
    only submit ids: what a job does is in JobService.
    """

    backend: str = ""
    # Whether a handler that raises runs again later (with backoff); else it is logged.
    retries_failed: bool = False

    def __init__(self) -> None:
        self._handler: JobHandler | None = None

    def bind(self, handler: JobHandler) -> None:
        """The coroutine that runs one job (JobService.run)."""
        self._handler = handler

    @property
    def handler(self) -> JobHandler:
        if self._handler is None:
            raise RuntimeError("JobRunner.bind() was not called")
        return self._handler

    @abstractmethod
    async def submit(self, job_id: str) -> None:
        """Queue a job; submitting a job that is queued or running already is a no-op."""

    @abstractmethod
    async def wait_idle(self) -> None:
        """Return when no job is queued or running (CLI and tests)."""

    @property
    def queued(self) -> int:
        """Jobs submitted here and waiting for a worker (0 where the runner cannot tell)."""
        return 0

    @property
    def running(self) -> int:
        """Jobs this process is running now."""
        return 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start taking jobs."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop; jobs still running are interrupted and resumed at the next start."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
