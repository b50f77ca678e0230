"""JobRunner contract over InProcessJobRunner and ProcrastinateJobRunner (real PostgreSQL).

Every runner: a submitted job runs its handler once; a second submit of a queued or running
job is a no-op; a handler that raises is retried (runners that retry) or logged, and the
runner goes on; wait_idle returns when nothing is queued or running; aclose interrupts a
running job and a new runner resumes it. The procrastinate runner also shares its queue
between workers and gives the job of a worker that stopped beating to another one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from studyrag.config import JobsSettings
from studyrag.jobs.base import JobRunner
from studyrag.jobs.inprocess import InProcessJobRunner
from tests.contracts.test_sql_store import PG_ADMIN, _pg_available

pytestmark = pytest.mark.timeout(120)


@dataclass
class Recorder:
    """A handler that records its calls; `gate` holds runs until it is set."""

    calls: list[tuple[str, bool]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event | None = None
    fail_first: set[str] = field(default_factory=set)

    async def __call__(self, job_id: str, *, takeover: bool = False) -> None:
        self.calls.append((job_id, takeover))
        self.started.set()
        if job_id in self.fail_first:
            self.fail_first.discard(job_id)
            raise RuntimeError(f"transient failure of {job_id}")
        if self.gate is not None:
            await self.gate.wait()
        self.done.append(job_id)


async def _until(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def pg_url() -> AsyncIterator[str]:
    """A database of its own (procrastinate's tables are created in it by the runner)."""
    if not await _pg_available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432: start it (database `test`)")
    import asyncpg

    name = f"studyrag_jobs_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _jobs_settings() -> JobsSettings:
    # A queue per test: tests (and other runs) in one database never see each other's jobs.
    return JobsSettings(
        queue=f"t-{uuid.uuid4().hex[:10]}",
        heartbeat_seconds=0.5,
        stalled_after_seconds=2.0,
        retry_wait_seconds=1,
        max_attempts=3,
    )


@pytest.fixture(params=["inprocess", "procrastinate"])
def make_runner(request: pytest.FixtureRequest, pg_url: str) -> Callable[..., JobRunner]:
    """Builds runners of one kind; runners built by one test share one queue."""
    settings = _jobs_settings()

    def make(concurrency: int = 2) -> JobRunner:
        if request.param == "inprocess":
            return InProcessJobRunner(workers=concurrency)
        from studyrag.jobs.procrastinate import ProcrastinateJobRunner

        return ProcrastinateJobRunner(pg_url, settings, concurrency=concurrency)

    return make


async def test_a_submitted_job_runs_its_handler_once(make_runner) -> None:
    runner, handler = make_runner(), Recorder()
    runner.bind(handler)
    async with runner:
        await runner.submit("job-1")
        await runner.submit("job-2")
        await asyncio.wait_for(runner.wait_idle(), 30)
    assert sorted(handler.done) == ["job-1", "job-2"]
    assert sorted(handler.calls) == [("job-1", False), ("job-2", False)]


async def test_a_duplicate_submit_is_a_no_op_while_queued_or_running(make_runner) -> None:
    runner, handler = make_runner(), Recorder(gate=asyncio.Event())
    runner.bind(handler)
    async with runner:
        await runner.submit("job-1")
        await runner.submit("job-1")  # queued
        await asyncio.wait_for(handler.started.wait(), 30)
        await runner.submit("job-1")  # running
        assert runner.running == 1
        handler.gate.set()  # type: ignore[union-attr]
        await asyncio.wait_for(runner.wait_idle(), 30)
    assert handler.calls == [("job-1", False)]
    assert handler.done == ["job-1"]


async def test_a_failing_handler_is_retried_or_logged_and_the_runner_goes_on(
    make_runner, caplog: pytest.LogCaptureFixture
) -> None:
    runner, handler = make_runner(), Recorder(fail_first={"bad"})
    runner.bind(handler)
    async with runner:
        await runner.submit("bad")
        await runner.submit("good")
        await _until(lambda: "good" in handler.done)
        if runner.retries_failed:
            # Backoff, then the same job again; it knows an earlier run stopped.
            await _until(lambda: "bad" in handler.done)
        await asyncio.wait_for(runner.wait_idle(), 30)
    bad = [c for c in handler.calls if c[0] == "bad"]
    if runner.retries_failed:
        assert bad == [("bad", False), ("bad", True)]
        assert handler.done.count("bad") == 1
    else:
        assert bad == [("bad", False)] and "bad" not in handler.done
    assert "transient failure of bad" in caplog.text


async def test_wait_idle_returns_only_when_nothing_is_queued_or_running(make_runner) -> None:
    runner, handler = make_runner(concurrency=1), Recorder(gate=asyncio.Event())
    runner.bind(handler)
    async with runner:
        for i in range(3):
            await runner.submit(f"job-{i}")
        idle = asyncio.ensure_future(runner.wait_idle())
        await asyncio.wait_for(handler.started.wait(), 30)
        await asyncio.sleep(0.5)
        assert not idle.done()
        handler.gate.set()  # type: ignore[union-attr]
        await asyncio.wait_for(idle, 30)
    assert sorted(handler.done) == ["job-0", "job-1", "job-2"]


async def test_aclose_interrupts_a_running_job_and_the_next_start_resumes_it(
    make_runner,
) -> None:
    first, blocked = make_runner(), Recorder(gate=asyncio.Event())
    first.bind(blocked)
    async with first:
        await first.submit("job-1")
        await asyncio.wait_for(blocked.started.wait(), 30)
    # aclose returned: the run was interrupted, not finished.
    assert blocked.done == []
    second, handler = make_runner(), Recorder()
    second.bind(handler)
    async with second:
        # What JobService.start does for every unfinished job.
        await second.submit("job-1")
        await _until(lambda: handler.done == ["job-1"])
        await asyncio.wait_for(second.wait_idle(), 30)
    assert [job for job, _ in handler.calls] == ["job-1"]
    if second.retries_failed:
        assert handler.calls == [("job-1", True)]  # it knows the first run stopped


# --- the distributed runner only -------------------------------------------------------
@pytest.fixture
def two_workers(pg_url: str) -> tuple[JobRunner, JobRunner]:
    from studyrag.jobs.procrastinate import ProcrastinateJobRunner

    settings = _jobs_settings()
    return (
        ProcrastinateJobRunner(pg_url, settings, concurrency=2),
        ProcrastinateJobRunner(pg_url, settings, concurrency=2),
    )


async def test_two_workers_share_the_queue_and_run_each_job_once(two_workers) -> None:
    a, b = two_workers
    ran: list[tuple[str, str]] = []

    def on(worker: str) -> Recorder:
        class Slow(Recorder):
            async def __call__(self, job_id: str, *, takeover: bool = False) -> None:
                ran.append((worker, job_id))
                await asyncio.sleep(0.2)

        return Slow()

    a.bind(on("a"))
    b.bind(on("b"))
    async with a, b:
        ids = [f"job-{i}" for i in range(12)]
        for i, job_id in enumerate(ids):
            # Submitted through both, twice: still one run each.
            await (a if i % 2 else b).submit(job_id)
            await (b if i % 2 else a).submit(job_id)
        await _until(lambda: len(ran) >= len(ids))
        await asyncio.wait_for(a.wait_idle(), 30)
    assert sorted(job for _, job in ran) == sorted(ids)
    assert {worker for worker, _ in ran} == {"a", "b"}  # both took jobs


async def test_the_job_of_a_worker_that_stopped_beating_goes_to_another(
    two_workers, pg_url: str
) -> None:
    """A worker SIGKILLed mid-job leaves its row "doing" with a stale heartbeat."""
    import psycopg

    from studyrag.jobs.procrastinate import libpq_dsn

    dead, alive = two_workers
    handler = Recorder()
    alive.bind(handler)
    dead.bind(Recorder())
    # The dead worker queued the job and took it, then stopped beating (no process here
    # ever runs it: it is the state a SIGKILL leaves).
    await dead.submit("job-1")
    async with await psycopg.AsyncConnection.connect(libpq_dsn(pg_url), autocommit=True) as c:
        cur = await c.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) "
            "VALUES (now() - interval '1 hour') RETURNING id"
        )
        row = await cur.fetchone()
        assert row is not None
        await c.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s "
            "WHERE queue_name = %s AND lock = %s",
            [row[0], dead.queue, f"{dead.queue}:job-1"],  # type: ignore[attr-defined]
        )
    await dead.aclose()
    async with alive:
        # Still "running" on the dead worker: a second submit does not start a copy.
        await alive.submit("job-1")
        await _until(lambda: handler.done == ["job-1"])
        await asyncio.wait_for(alive.wait_idle(), 30)
    assert handler.calls == [("job-1", True)]
