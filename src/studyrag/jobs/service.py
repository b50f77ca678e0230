"""JobService: what each job does (ingest uploads, reindex, delete a notebook) and its events.

Callers create jobs here and get their id at once; the JobRunner runs `run(job_id)` in the
background. Every step of every document is published as a notebook event
(jobs/events.py), so the job SSE stream, the notebook WebSocket and the CLI's progress bar
are fed by the same reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

from studyrag.auth.context import acting_user
from studyrag.backends.broker.base import follow_channel
from studyrag.db.jobs import (
    JOB_CANCELLED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_FINISHED,
    JOB_QUEUED,
    JOB_RUNNING,
    JobRepo,
)
from studyrag.db.models import Document, Job
from studyrag.db.notebooks import NotebookRepo
from studyrag.db.repo import COMPLETED, PROCESSING, QUEUED, DocumentRepo
from studyrag.errors import (
    DocumentError,
    JobConflict,
    NotebookBusy,
    StudyRAGError,
)
from studyrag.ingest.ownership import owner_gone
from studyrag.ingest.pipeline import IngestionPipeline, IngestResult, Progress, check_upload
from studyrag.jobs.base import JobRunner
from studyrag.jobs.events import EventPublisher
from studyrag.observability.metrics import Metrics
from studyrag.schemas.documents import (
    DocumentPublic,
    JobPublic,
    UploadAccepted,
    UploadedDocument,
)

log = logging.getLogger(__name__)

# Cancels for jobs and documents that another worker may be running (any broker channel).
CONTROL_CHANNEL = "studyrag:job-control"

INGEST, REINDEX, DELETE_NOTEBOOK = "ingest", "reindex", "delete_notebook"
# How long a notebook deletion waits for its documents' ingestion to stop.
_STOP_WAIT = 30.0


@dataclass(slots=True)
class Upload:
    """One file of an upload: its name and its bytes as they arrive."""

    filename: str
    chunks: AsyncIterator[bytes]
    size: int | None = None


class JobService:
    """Creates, runs, cancels and reports jobs."""

    def __init__(
        self,
        *,
        pipeline: IngestionPipeline,
        documents: DocumentRepo,
        jobs: JobRepo,
        notebooks: NotebookRepo,
        runner: JobRunner,
        events: EventPublisher,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.documents = documents
        self.jobs = jobs
        self.notebooks = notebooks
        self.runner = runner
        self.events = events
        self.metrics = metrics or Metrics()
        runner.bind(self.run)
        # Documents and jobs asked to stop; checked by the pipeline at every step boundary.
        self._cancelled_docs: set[str] = set()
        self._cancelled_jobs: set[str] = set()
        # Jobs this process runs now, with the documents each is ingesting: a cancel sent to
        # another worker reaches them through the broker (CONTROL_CHANNEL).
        self._running: dict[str, set[str]] = {}
        self._control: asyncio.Task[None] | None = None
        # Job kinds other services run (an embedding-model switch, a notebook import).
        self._handlers: dict[str, Callable[[Job], Awaitable[None]]] = {}
        self._cancellable: set[str] = set()

    def register(
        self, kind: str, handler: Callable[[Job], Awaitable[None]], *, cancellable: bool = False
    ) -> None:
        """Run jobs of `kind` with `handler`; a cancellable one polls `is_cancelled`."""
        self._handlers[kind] = handler
        if cancellable:
            self._cancellable.add(kind)

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job was asked to stop."""
        return job_id in self._cancelled_jobs

    async def start(self) -> None:
        """Resume what a stop left: unfinished jobs, and queued documents with no live job;
        listen for cancels sent to other workers."""
        if self._control is None:
            self._control = asyncio.create_task(self._listen_control(), name="job-control")
        for job in await self.jobs.unfinished():
            await self.runner.submit(job.id)
        orphans: dict[str, list[str]] = {}
        for doc in await self.documents.by_status([QUEUED]):
            if doc.job_id and doc.job_id in {j.id for j in await self.jobs.unfinished()}:
                continue
            if not owner_gone(doc.owner, doc.updated_at):
                continue
            orphans.setdefault(doc.notebook_id, []).append(doc.id)
        for notebook_id, ids in orphans.items():
            await self.adopt(notebook_id, ids)
            log.info("resuming %d queued document(s) of notebook %s", len(ids), notebook_id)

    async def adopt(self, notebook_id: str, document_ids: list[str]) -> Job:
        """A job for queued documents that have none (a stop, or a request that went away)."""
        job = await self.jobs.create(kind=INGEST, notebook_id=notebook_id, resumed=True)
        await self.documents.assign_job(document_ids, job.id)
        await self.runner.submit(job.id)
        return job

    # --- creating jobs -----------------------------------------------------------------
    async def upload(
        self, notebook_id: str, files: Sequence[Upload] | AsyncIterable[Upload]
    ) -> UploadAccepted:
        """Store each file's bytes, queue the accepted ones in one job; never waits for
        the model. A refused file (type, size) is reported and stored nowhere. `files` may
        arrive one by one (a streamed form): each is stored before the next is read."""
        await self.notebooks.get(notebook_id)
        job = await self.jobs.create(kind=INGEST, notebook_id=notebook_id)
        answer: list[UploadedDocument] = []
        queued = 0
        try:
            await self._store_uploads(notebook_id, job.id, files, answer)
        finally:
            # Whatever stopped the loop (a client gone, a full disk), the job ends or runs.
            queued = sum(1 for a in answer if a.status == "queued")
            if queued:
                await self.runner.submit(job.id)
            else:
                await self.jobs.set_status(job.id, JOB_COMPLETED)
        return UploadAccepted(
            job_id=job.id if queued else None, notebook_id=notebook_id, documents=answer
        )

    async def _store_uploads(
        self,
        notebook_id: str,
        job_id: str,
        files: Sequence[Upload] | AsyncIterable[Upload],
        answer: list[UploadedDocument],
    ) -> None:
        settings = self.pipeline.settings
        async for f in _each(files):
            # Checked per file: a deletion that starts meanwhile must not get new documents.
            await self.notebooks.get(notebook_id)
            try:
                check_upload(f.filename, f.size, settings)
                sha, size = await self.pipeline.originals.save_stream(
                    f.chunks, limit=settings.max_file_size_bytes, name=f.filename
                )
                result = await self.pipeline.register_stored(
                    sha=sha,
                    size=size,
                    filename=f.filename,
                    notebook_id=notebook_id,
                    job_id=job_id,
                )
            except DocumentError as exc:
                answer.append(
                    UploadedDocument(
                        filename=f.filename,
                        status="rejected",
                        error_code=exc.error_code,
                        error=exc.message,
                    )
                )
                continue
            answer.append(_uploaded(result))
            if result.status == "queued":
                await self._announce_added(result.document_id)

    async def retry(self, document_id: str) -> Job:
        """Queue a failed or cancelled document again, as a new job."""
        doc = await self.documents.get(document_id)
        job = await self.jobs.create(kind=INGEST, notebook_id=doc.notebook_id, retry=document_id)
        try:
            doc = await self.pipeline.requeue(document_id, job_id=job.id)
        except StudyRAGError:
            await self.jobs.set_status(job.id, JOB_FAILED, error="nothing to retry")
            raise
        self._cancelled_docs.discard(document_id)
        self._emit_document(doc)
        await self.runner.submit(job.id)
        return job

    async def reindex(self, notebook_id: str, document_ids: Sequence[str] | None = None) -> Job:
        """Recompute the embeddings of a notebook's completed documents (or some of them)."""
        await self.notebooks.get(notebook_id)
        ids = (
            list(document_ids)
            if document_ids
            else await self.documents.all_ids(status=COMPLETED, notebook_id=notebook_id)
        )
        for document_id in ids:
            doc = await self.documents.get(document_id)
            if doc.notebook_id != notebook_id or doc.status != COMPLETED:
                raise JobConflict(
                    f"{doc.filename} is {doc.status}; only completed documents can be reindexed."
                )
        job = await self.jobs.create(kind=REINDEX, notebook_id=notebook_id, document_ids=ids)
        await self.runner.submit(job.id)
        return job

    async def delete_notebook(self, notebook_id: str) -> Job:
        """Hide the notebook at once; a job removes everything of it everywhere."""
        nb = await self.notebooks.get(notebook_id)
        if nb.is_default:
            raise NotebookBusy(
                "The default notebook cannot be deleted.",
                hint="Rename it, or delete its documents and conversations.",
            )
        if not await self.notebooks.mark_deleting(notebook_id):
            raise NotebookBusy(f"The notebook {nb.name!r} is being deleted already.")
        job = await self.jobs.create(kind=DELETE_NOTEBOOK, notebook_id=notebook_id, name=nb.name)
        self.events.emit(
            {"type": "notebook_deleting", "notebook_id": notebook_id, "job_id": job.id},
            notebook_id=notebook_id,
            job_id=job.id,
        )
        await self.runner.submit(job.id)
        return job

    # --- cancelling --------------------------------------------------------------------
    async def cancel_job(self, job_id: str) -> Job:
        """Stop a job at the next step boundary; what was completed stays."""
        job = await self.jobs.get(job_id)
        if job.status in JOB_FINISHED:
            raise JobConflict(f"The job is {job.status} already.")
        if job.kind == DELETE_NOTEBOOK or (
            job.kind in self._handlers and job.kind not in self._cancellable
        ):
            raise JobConflict(f"A {job.kind.replace('_', ' ')} job cannot be cancelled.")
        self._cancelled_jobs.add(job_id)
        for doc in await self.jobs.documents(job_id):
            await self._cancel_document(doc, tell=False)
        if job.status == JOB_RUNNING:
            await self._tell_workers({"job_id": job_id})
        if job.status == JOB_QUEUED:
            await self.jobs.set_status(job_id, JOB_CANCELLED, expect=[JOB_QUEUED])
            self._emit_job(await self.jobs.get(job_id), [])
        return await self.jobs.get(job_id)

    async def cancel_document(self, document_id: str) -> Document:
        """Stop one document's ingestion; the others of its job carry on."""
        doc = await self.documents.get(document_id)
        if doc.status not in (QUEUED, PROCESSING):
            raise JobConflict(f"{doc.filename} is {doc.status}; there is nothing to cancel.")
        await self._cancel_document(doc)
        return await self.documents.get(document_id)

    async def _cancel_document(self, doc: Document, *, tell: bool = True) -> None:
        if doc.status == QUEUED and await self.pipeline.cancel_queued(doc.id):
            self._emit_document(await self.documents.get(doc.id))
        elif doc.status in (QUEUED, PROCESSING):
            self._cancelled_docs.add(doc.id)
            if tell:
                await self._tell_workers({"document_id": doc.id})

    def _is_cancelled(self, document_id: str) -> bool:
        return document_id in self._cancelled_docs

    async def _tell_workers(self, message: dict[str, str]) -> None:
        """A cancel for whichever worker runs the job or document (this one included)."""
        try:
            await self.events.broker.publish(CONTROL_CHANNEL, {"action": "cancel", **message})
        except Exception as exc:  # noqa: BLE001 - the local cancel holds; say what did not
            log.warning("Cancel not sent to other workers (%s): %s", exc, message)

    def _take_cancel(self, message: dict[str, Any]) -> None:
        """A cancel from any worker, kept only for a job or document running here (a stale
        id would cancel a later retry of the same document)."""
        if message.get("action") != "cancel":
            return
        job_id = str(message.get("job_id") or "")
        if job_id in self._running:
            self._cancelled_jobs.add(job_id)
            self._cancelled_docs.update(self._running[job_id])
        document_id = str(message.get("document_id") or "")
        if any(document_id in docs for docs in self._running.values()):
            self._cancelled_docs.add(document_id)

    async def _listen_control(self) -> None:
        """Cancels sent to any worker; resubscribes after a broker failure."""

        async def take(message: dict[str, Any]) -> None:
            self._take_cancel(message)

        await follow_channel(self.events.broker, CONTROL_CHANNEL, take, what="Job control channel")

    async def aclose(self) -> None:
        """Stop listening for cancels."""
        if self._control is not None:
            self._control.cancel()
            await asyncio.gather(self._control, return_exceptions=True)
            self._control = None

    # --- running -----------------------------------------------------------------------
    async def run(self, job_id: str, *, takeover: bool = False) -> None:
        """Run one job to its end (the JobRunner calls this).

        `takeover`: an earlier run of this job stopped unfinished (the runner knows it is
        over, perhaps on a worker that died): its documents still "processing" go back to
        "queued" first, so this run ingests them.
        """
        job = await self.jobs.get(job_id)
        if job.status in JOB_FINISHED:
            return
        if takeover and job.kind == INGEST:
            await self.pipeline.take_over(await self.jobs.documents(job_id))
        # A job acts for whoever started it: what it creates (an imported notebook and its
        # conversations) is theirs.
        acting_user.set(job.owner_id)
        await self.jobs.set_status(job_id, JOB_RUNNING)
        self._running[job_id] = set()
        try:
            if job.kind == DELETE_NOTEBOOK:
                await self._run_delete_notebook(job)
            elif job.kind == REINDEX:
                await self._run_reindex(job)
            elif job.kind in self._handlers:
                await self._handlers[job.kind](job)
            else:
                await self._run_ingest(job)
        except asyncio.CancelledError:
            # Shutdown: the job stays "running" and its documents "queued"; start() resumes.
            await asyncio.shield(self.jobs.set_status(job_id, JOB_QUEUED))
            raise
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id, job.kind)
            message = exc.message if isinstance(exc, StudyRAGError) else type(exc).__name__
            await self.jobs.set_status(job_id, JOB_FAILED, error=message)
            if job.kind == DELETE_NOTEBOOK and job.notebook_id:
                # Visible again, so the user sees what is left and can delete it again.
                await self.notebooks.reactivate(job.notebook_id)
        else:
            final = JOB_CANCELLED if job_id in self._cancelled_jobs else JOB_COMPLETED
            await self.jobs.set_status(job_id, final, expect=[JOB_RUNNING])
        finally:
            self._cancelled_jobs.discard(job_id)
            self._running.pop(job_id, None)
        finished = await self.jobs.get(job_id)
        self.metrics.jobs_finished.labels(kind=finished.kind, status=finished.status).inc()
        docs = await self.jobs.documents(job_id) if finished.kind == INGEST else []
        for doc in docs:
            self._cancelled_docs.discard(doc.id)
        self._emit_job(finished, docs)
        await self.events.flush()

    async def _run_ingest(self, job: Job) -> None:
        docs = await self.jobs.documents(job.id)
        queued = [d.id for d in docs if d.status == QUEUED]
        meta = {d.id: d for d in docs}

        def report(p: Progress) -> None:
            doc = meta.get(p.document_id or "")
            notebook_id = doc.notebook_id if doc is not None else job.notebook_id
            self.events.emit(
                _progress_event(p, notebook_id=notebook_id, job_id=job.id),
                notebook_id=notebook_id,
                job_id=job.id,
            )

        self._emit_job(job, docs)
        self._running.setdefault(job.id, set()).update(queued)
        results = await self.pipeline.process(queued, progress=report, cancelled=self._is_cancelled)
        for result in results:
            for old in result.replaced:
                self._emit_deleted(old, job.notebook_id, job_id=job.id)
            self._cancelled_docs.discard(result.document_id or "")

    async def _run_reindex(self, job: Job) -> None:
        ids: list[str] = list(job.meta.get("document_ids") or [])
        done = 0
        for document_id in ids:
            try:
                await self.pipeline.reindex(document_id)
            except StudyRAGError as exc:
                log.warning("reindex of %s skipped: %s", document_id, exc.message)
            done += 1
            self.events.emit(
                {
                    "type": "job_progress",
                    "job_id": job.id,
                    "notebook_id": job.notebook_id,
                    "done": done,
                    "total": len(ids),
                    "progress": round(100.0 * done / max(1, len(ids)), 1),
                },
                notebook_id=job.notebook_id,
                job_id=job.id,
            )

    async def _run_delete_notebook(self, job: Job) -> None:
        assert job.notebook_id is not None
        notebook_id = job.notebook_id
        # Stop its ingestions first: nothing may be added while it is being removed.
        docs, _ = await self.documents.list(notebook_id=notebook_id, limit=1_000_000)
        for doc in docs:
            await self._cancel_document(doc)
        deadline = asyncio.get_running_loop().time() + _STOP_WAIT
        while any(
            d.status == PROCESSING and not owner_gone(d.owner, d.updated_at)
            for d in (await self.documents.list(notebook_id=notebook_id, limit=1_000_000))[0]
        ):
            if asyncio.get_running_loop().time() > deadline:
                raise NotebookBusy("Documents of the notebook are still being ingested.")
            await asyncio.sleep(0.2)
        docs, total = await self.documents.list(notebook_id=notebook_id, limit=1_000_000)
        done = 0
        while docs:
            for doc in docs:
                await self.pipeline.delete_document(doc.id)
                done += 1
                self._emit_deleted(doc.id, notebook_id, job_id=job.id)
                self.events.emit(
                    {
                        "type": "job_progress",
                        "job_id": job.id,
                        "notebook_id": notebook_id,
                        "done": done,
                        "total": total,
                        "progress": round(100.0 * done / max(1, total), 1),
                    },
                    notebook_id=notebook_id,
                    job_id=job.id,
                )
            # Listed again: an upload that was storing files when the deletion began.
            docs, more = await self.documents.list(notebook_id=notebook_id, limit=1_000_000)
            total = done + more
        await self.notebooks.purge_conversations(notebook_id)
        await self.notebooks.delete_row(notebook_id)
        self.events.emit(
            {"type": "notebook_deleted", "notebook_id": notebook_id, "job_id": job.id},
            notebook_id=notebook_id,
            job_id=job.id,
        )

    async def resume_deletions(self) -> None:
        """Notebooks left "deleting" by a stop get a deletion job again (start-up)."""
        unfinished = {j.notebook_id for j in await self.jobs.unfinished()}
        for nb in await self.notebooks.deleting():
            if nb.id not in unfinished:
                job = await self.jobs.create(kind=DELETE_NOTEBOOK, notebook_id=nb.id, name=nb.name)
                await self.runner.submit(job.id)

    # --- reading -----------------------------------------------------------------------
    async def public(self, job_id: str) -> JobPublic:
        job = await self.jobs.get(job_id)
        return JobPublic.from_rows(job, await self.jobs.documents(job_id))

    # --- events ------------------------------------------------------------------------
    def _emit_document(self, doc: Document, kind: str = "document_updated") -> None:
        self.events.emit(
            {
                "type": kind,
                "notebook_id": doc.notebook_id,
                "job_id": doc.job_id,
                "document": DocumentPublic.from_row(doc).model_dump(mode="json"),
            },
            notebook_id=doc.notebook_id,
            job_id=doc.job_id,
        )

    async def _announce_added(self, document_id: str | None) -> None:
        if document_id:
            self._emit_document(await self.documents.get(document_id), "document_added")

    def _emit_deleted(
        self, document_id: str, notebook_id: str | None, *, job_id: str | None
    ) -> None:
        self.events.emit(
            {"type": "document_deleted", "notebook_id": notebook_id, "document_id": document_id},
            notebook_id=notebook_id,
            job_id=job_id,
        )

    def announce_deleted(self, doc: Document) -> None:
        """A document removed outside a job (DELETE /api/documents/{id})."""
        self._emit_deleted(doc.id, doc.notebook_id, job_id=None)

    def _emit_job(self, job: Job, docs: list[Document]) -> None:
        self.events.emit(
            {
                "type": "job_updated",
                "notebook_id": job.notebook_id,
                "job": JobPublic.from_rows(job, docs).model_dump(
                    mode="json", exclude={"documents"}
                ),
            },
            notebook_id=job.notebook_id,
            job_id=job.id,
        )


def _uploaded(result: IngestResult) -> UploadedDocument:
    return UploadedDocument(
        filename=result.filename,
        status=result.status,
        document_id=result.document_id,
        error_code=result.error_code,
        error=result.error,
    )


def _progress_event(p: Progress, *, notebook_id: str | None, job_id: str) -> dict[str, Any]:
    status = {
        "completed": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
        "queued": "queued",
    }.get(p.step, "processing")
    event: dict[str, Any] = {
        "type": "document_updated",
        "notebook_id": notebook_id,
        "job_id": job_id,
        "document_id": p.document_id,
        "filename": p.filename,
        "status": status,
        "step": p.step,
        "progress": p.percent,
        "chunks": p.chunks,
        "error_code": p.error_code,
        "error": p.error,
    }
    if p.pages is not None:
        event["pages"] = {"done": p.pages[0], "total": p.pages[1]}
    if p.warning is not None:
        event["warning"] = p.warning
    return event


async def _each(files: Sequence[Upload] | AsyncIterable[Upload]) -> AsyncIterator[Upload]:
    if isinstance(files, AsyncIterable):
        async for f in files:
            yield f
    else:
        for f in files:
            yield f
