"""Job persistence: background work on notebooks and the documents it covers."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from studyrag.auth.context import acting_owner
from studyrag.db.models import Document, Job
from studyrag.db.session import Database
from studyrag.errors import JobNotFound

JOB_QUEUED, JOB_RUNNING, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = (
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
)
JOB_FINISHED = (JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED)


class JobRepo:
    """All SQL that touches jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, kind: str, notebook_id: str | None, **meta: Any) -> Job:
        row = Job(
            kind=kind,
            notebook_id=notebook_id,
            status=JOB_QUEUED,
            meta=meta,
            owner_id=acting_owner(),
        )
        async with self.db.session() as s:
            s.add(row)
        return row

    async def get(self, job_id: str) -> Job:
        async with self.db.session() as s:
            row = await s.get(Job, job_id)
        if row is None:
            raise JobNotFound(
                f"No job with id {job_id!r}.",
                hint="Upload answers carry their job_id; list a notebook's documents instead.",
            )
        return row

    async def set_status(
        self, job_id: str, status: str, *, expect: Sequence[str] | None = None, **fields: Any
    ) -> bool:
        """Change a job's status (only from `expect` when given); True if it changed."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"status": status, "updated_at": now, **fields}
        if status in JOB_FINISHED:
            values["finished_at"] = now
        stmt = update(Job).where(Job.id == job_id)
        if expect is not None:
            stmt = stmt.where(Job.status.in_(expect))
        async with self.db.session() as s:
            result = await s.execute(stmt.values(**values))
        return bool(getattr(result, "rowcount", 0))

    async def documents(self, job_id: str) -> builtins.list[Document]:
        """The documents a job covers, in upload order."""
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Document)
                        .where(Document.job_id == job_id)
                        .order_by(Document.created_at, Document.id)
                    )
                ).all()
            )

    async def unfinished(self) -> builtins.list[Job]:
        """Jobs not finished yet (a crash may have left them), oldest first."""
        async with self.db.session() as s:
            return builtins.list(
                (
                    await s.scalars(
                        select(Job)
                        .where(Job.status.in_((JOB_QUEUED, JOB_RUNNING)))
                        .order_by(Job.created_at)
                    )
                ).all()
            )
