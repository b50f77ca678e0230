"""ProcrastinateJobRunner: jobs queued in PostgreSQL, run by whichever worker takes them.

procrastinate (https://procrastinate.readthedocs.io) keeps its queue in its own tables of the
database StudyRAG already uses at scale. Each job id is deferred once as the task
`studyrag.run_job` with `lock` and `queueing_lock` set to the id: PostgreSQL hands it to one
worker at a time (a second copy waits for the lock, a second submit while it is queued is
refused). Every worker of the queue writes a heartbeat; a job whose worker fell silent past
`jobs.stalled_after_seconds` (SIGKILL, a lost machine) is put back in the queue by the sweep
of any other worker, and runs again with `takeover=True` so its half-done documents are
taken back (JobService.run). A run that raises is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import procrastinate
import psycopg
from procrastinate import exceptions as pq_exceptions
from procrastinate.retry import RetryStrategy

from studyrag.errors import JobQueueUnavailable
from studyrag.jobs.base import JobRunner

if TYPE_CHECKING:
    from procrastinate.job_context import JobContext

    from studyrag.config import JobsSettings

log = logging.getLogger(__name__)

TASK_NAME = "studyrag.run_job"
# Serialises the schema creation of workers that start together (any constant works; this
# one is "studyrag" in ASCII, so it says whose it is in pg_locks).
_SCHEMA_LOCK = 0x7374756479726167
# How long the supervisor waits before it starts a worker loop that stopped (database down).
_RESTART_DELAY = 2.0
# How often wait_idle() looks at the queue.
_IDLE_POLL = 0.2


def libpq_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` (SQLAlchemy) → `postgresql://…` (libpq, for psycopg)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ProcrastinateJobRunner(JobRunner):
    """Submits job ids to a procrastinate queue and runs a procrastinate worker here."""

    backend = "procrastinate"
    retries_failed = True

    def __init__(self, database_url: str, settings: JobsSettings, *, concurrency: int) -> None:
        super().__init__()
        self.dsn = libpq_dsn(database_url)
        self.settings = settings
        self.queue = settings.queue
        self.concurrency = max(1, concurrency)
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=self.dsn,
                # The worker's LISTEN connection, its heartbeat, the sweep and the jobs'
                # own fetch/finish queries.
                min_size=1,
                max_size=self.concurrency + 4,
                timeout=10,
            )
        )
        self._task = self.app.task(
            name=TASK_NAME,
            queue=self.queue,
            pass_context=True,
            retry=RetryStrategy(
                max_attempts=settings.max_attempts,
                exponential_wait=settings.retry_wait_seconds,
            ),
        )(self._run)
        self._open = False
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._running = 0
        self._queued = 0

    # --- JobRunner ---------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def _lock(self, job_id: str) -> str:
        # Locks are global to procrastinate's tables: two queues in one database stay apart.
        return f"{self.queue}:{job_id}"

    async def submit(self, job_id: str) -> None:
        await self._ensure_open()
        lock = self._lock(job_id)
        try:
            for status in ("todo", "doing"):
                if await self.app.job_manager.list_jobs_async(
                    queue=self.queue, lock=lock, status=status
                ):
                    return  # queued or running already (perhaps on another worker)
            await self._task.configure(lock=lock, queueing_lock=lock).defer_async(job_id=job_id)
        except pq_exceptions.AlreadyEnqueued:
            return
        except (pq_exceptions.ConnectorException, psycopg.Error, OSError) as exc:
            raise JobQueueUnavailable(f"The job queue did not take job {job_id}.") from exc

    async def wait_idle(self) -> None:
        # The queue is in PostgreSQL, filled and emptied by other processes too: polled.
        while True:
            if not await self._pending():
                return
            await asyncio.sleep(_IDLE_POLL)

    async def start(self) -> None:
        await self._ensure_open()
        self._closing = False
        if self._worker is None:
            self._worker = asyncio.create_task(self._supervise(), name="studyrag-job-queue")
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="studyrag-job-sweep")

    async def aclose(self) -> None:
        self._closing = True
        for task in (self._sweeper, self._worker):
            if task is not None:
                task.cancel()
        # Cancelling the worker aborts its running jobs at once (shutdown_graceful_timeout
        # 0): procrastinate puts them back in the queue for the next worker that starts.
        await asyncio.gather(
            *(t for t in (self._sweeper, self._worker) if t is not None), return_exceptions=True
        )
        self._sweeper = self._worker = None
        if self._open:
            self._open = False
            await self.app.close_async()

    # --- inside -----------------------------------------------------------------------
    async def _ensure_open(self) -> None:
        if self._open:
            return
        try:
            await self.app.open_async()
            self._open = True
            await self._apply_schema()
        # psycopg errors, OSError, and psycopg_pool.PoolTimeout (which is neither).
        except Exception as exc:
            if self._open:
                self._open = False
                await self.app.close_async()
            raise JobQueueUnavailable(
                f"The job queue in PostgreSQL is not reachable ({type(exc).__name__}: {exc})."
            ) from exc

    async def _apply_schema(self) -> None:
        """Create procrastinate's tables once per database (idempotent, race-free)."""
        schema = self.app.schema_manager.get_schema()
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
                cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
                row = await cursor.fetchone()
                if row is None or row[0] is None:
                    log.info("creating procrastinate's tables (job queue)")
                    await conn.execute(schema)

    async def _run(self, context: JobContext, job_id: str) -> None:
        """The procrastinate task: one job, by id, through the bound handler."""
        # A later attempt follows a run that stopped (raised, aborted at shutdown, or its
        # worker died): what that run left half-done is taken back.
        takeover = bool(context.job.attempts)
        self._running += 1
        try:
            await self.handler(job_id, takeover=takeover)
        except Exception:
            attempt = context.job.attempts + 1
            last = attempt >= self.settings.max_attempts
            log.exception(
                "job %s failed (attempt %d of %d)%s",
                job_id,
                attempt,
                self.settings.max_attempts,
                "" if last else "; it runs again after a backoff",
            )
            raise
        finally:
            self._running -= 1

    async def _pending(self) -> int:
        await self._ensure_open()
        total = 0
        for status in ("todo", "doing"):
            total += len(
                list(await self.app.job_manager.list_jobs_async(queue=self.queue, status=status))
            )
        return total

    async def _supervise(self) -> None:
        """Run the procrastinate worker; start it again when it stops (database down)."""
        while not self._closing:
            try:
                await self.app.run_worker_async(
                    queues=[self.queue],
                    name=f"studyrag-{self.queue}",
                    concurrency=self.concurrency,
                    install_signal_handlers=False,
                    shutdown_graceful_timeout=0,
                    update_heartbeat_interval=self.settings.heartbeat_seconds,
                    stalled_worker_timeout=self.settings.stalled_after_seconds,
                    # Done jobs are history nobody reads: keep the table small.
                    delete_jobs="successful",
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the job queue worker stopped; starting it again")
            if not self._closing:
                log.warning("the job queue worker stopped; starting it again")
                await asyncio.sleep(_RESTART_DELAY)

    async def _sweep(self) -> None:
        """Put back in the queue the jobs of workers that stopped beating (any worker)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self._retry_stalled()
                self._queued = len(
                    list(
                        await self.app.job_manager.list_jobs_async(queue=self.queue, status="todo")
                    )
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job queue sweep failed: %s", exc)

    async def _retry_stalled(self) -> list[Any]:
        stalled = list(
            await self.app.job_manager.get_stalled_jobs(
                queue=self.queue,
                task_name=TASK_NAME,
                seconds_since_heartbeat=self.settings.stalled_after_seconds,
            )
        )
        retried = []
        for job in stalled:
            try:
                await self.app.job_manager.retry_job(job)
            except pq_exceptions.ConnectorException as exc:
                # Another worker's sweep retried it first.
                log.debug("stalled job %s not retried: %s", job.id, exc)
                continue
            log.warning(
                "job %s (procrastinate job %s) stalled on a silent worker; queued again",
                job.task_kwargs.get("job_id"),
                job.id,
            )
            retried.append(job)
        return retried
