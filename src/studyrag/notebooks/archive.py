"""Notebook export and import: one zip archive per notebook (format in schemas/archive.py).

Export streams the archive as it is built — entry by entry, originals in 1 MiB blocks, the
zip written in a worker thread — so a notebook of large PDFs never sits in memory. Import is
two steps: the archive is checked whole (archive_check.py) before anything is written, then
an `import_notebook` job restores it into a new, hidden notebook and makes it visible only
at the end. A failure on the way removes everything that job wrote (rows, vectors, originals
no other document uses); a stop is undone and started again by the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from studyrag import __version__
from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.vectors.base import VectorStore
from studyrag.config import ArchiveSettings
from studyrag.db.conversations import ConversationRepo
from studyrag.db.jobs import JOB_RUNNING, JobRepo
from studyrag.db.models import Document, Job, new_id
from studyrag.db.notebooks import ACTIVE, NB_IMPORTING
from studyrag.db.repo import CANCELLED, COMPLETED, FAILED, PROCESSING, DocumentRepo
from studyrag.errors import ArchiveInvalid, ArchiveTooLarge, NotebookBusy, StudyRAGError
from studyrag.ingest.ownership import owner_gone, process_owner
from studyrag.ingest.pipeline import IngestionPipeline, embedding_text, vector_metadata
from studyrag.jobs.events import EventPublisher, job_channel
from studyrag.jobs.service import JobService
from studyrag.notebooks.archive_check import (
    BLOCK,
    ArchiveSummary,
    Counter,
    check_archive,
    decode_vectors,
    encode_vectors,
    iter_entry,
    load_json,
    open_zip,
)
from studyrag.notebooks.service import NotebookService
from studyrag.schemas.archive import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ArchivedChunk,
    ArchivedConversation,
    ArchivedDocument,
    ArchivedDocumentRef,
    ArchivedMessage,
    ArchivedNotebook,
    ArchiveEntry,
    ArchiveManifest,
    NotebookImportAccepted,
)

log = logging.getLogger(__name__)

IMPORT_NOTEBOOK = "import_notebook"
# Already compressed: stored as they are (deflating them again costs CPU for nothing).
_STORED_TYPES = {"pdf", "docx"}
# Chunks embedded per call when an import recomputes vectors (progress advances per call).
_EMBED_STEP = 256


@dataclass(slots=True)
class ExportPlan:
    """What one export will write; built (and checked) before the first byte is sent."""

    notebook_id: str
    name: str
    filename: str
    documents: list[Document]
    vectors: bool
    # Only this user's conversations go into the archive (None: every one, the local owner):
    # conversations stay private even in a shared notebook.
    conversations_of: str | None = None


def archive_filename(name: str) -> str:
    """A file name for the archive of notebook `name`: safe on any disk, never empty."""
    stem = re.sub(r"[^\w\- ]+", "_", name).strip(" ._") or "notebook"
    return stem.encode()[:120].decode(errors="ignore").strip() + ".studyrag.zip"


class _Sink:
    """A write-only, unseekable file: zipfile writes into it, the stream takes the bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _ZipStream:
    """A zip built entry by entry in worker threads; each step returns the bytes it made."""

    def __init__(self) -> None:
        self.sink = _Sink()
        self.zip = zipfile.ZipFile(
            self.sink,
            "w",
            compression=zipfile.ZIP_DEFLATED,
            allowZip64=True,
        )
        self.entries: dict[str, ArchiveEntry] = {}

    async def add_bytes(self, name: str, data: bytes, *, deflate: bool = True) -> bytes:
        self.entries[name] = ArchiveEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())

        def write() -> bytes:
            info = _info(name, len(data), deflate)
            with self.zip.open(info, "w") as out:
                out.write(data)
            return self.sink.take()

        return await anyio.to_thread.run_sync(write)

    async def add_file(
        self, name: str, path: Path, *, size: int, sha256: str, deflate: bool
    ) -> AsyncIterator[bytes]:
        """Copy a file in, 1 MiB at a time: a large original never sits in memory."""
        self.entries[name] = ArchiveEntry(size=size, sha256=sha256)
        fh = await anyio.to_thread.run_sync(path.open, "rb")
        try:
            out = await anyio.to_thread.run_sync(
                lambda: self.zip.open(_info(name, size, deflate), "w", force_zip64=True)
            )
            try:
                while True:
                    block: bytes = await anyio.to_thread.run_sync(fh.read, BLOCK)
                    if not block:
                        break
                    await anyio.to_thread.run_sync(out.write, block)
                    if chunk := self.sink.take():
                        yield chunk
            finally:
                await anyio.to_thread.run_sync(out.close)
        finally:
            await anyio.to_thread.run_sync(fh.close)
        if tail := self.sink.take():
            yield tail

    async def close(self) -> bytes:
        await anyio.to_thread.run_sync(self.zip.close)
        return self.sink.take()


def _info(name: str, size: int, deflate: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    info.file_size = size
    info.external_attr = 0o644 << 16
    return info


def _json(model: Any) -> bytes:
    return model.model_dump_json().encode()


class NotebookArchives:
    """Export a notebook as one archive; import one as a new notebook (a job)."""

    def __init__(
        self,
        *,
        settings: ArchiveSettings,
        imports_dir: Path,
        shared: bool = False,
        notebooks: NotebookService,
        documents: DocumentRepo,
        conversations: ConversationRepo,
        pipeline: IngestionPipeline,
        embedder: Embedder,
        vectors: VectorStore,
        jobs: JobService,
        job_repo: JobRepo,
        events: EventPublisher,
    ) -> None:
        self.settings = settings
        # Shared by several workers (any of them may run the import job): one folder per
        # process, so a starting worker never removes an archive another is receiving.
        self.imports_root = imports_dir
        self.shared = shared
        self.imports_dir = imports_dir / process_owner() if shared else imports_dir
        self.notebooks = notebooks
        self.documents = documents
        self.conversations = conversations
        self.pipeline = pipeline
        self.embedder = embedder
        self.vectors = vectors
        self.jobs = jobs
        self.job_repo = job_repo
        self.events = events
        jobs.register(IMPORT_NOTEBOOK, self._run_import)

    # --- export ------------------------------------------------------------------------
    async def plan_export(
        self, notebook_id: str, *, vectors: bool = False, conversations_of: str | None = None
    ) -> ExportPlan:
        """Check that the notebook can be exported now (NB_001, NB_004) and list its rows."""
        nb = await self.notebooks.repo.get(notebook_id)
        if nb.status != ACTIVE:
            raise NotebookBusy(f"The notebook {nb.name!r} is being imported; export it later.")
        docs, _ = await self.documents.list(notebook_id=nb.id, limit=1_000_000)
        busy = [d.filename for d in docs if d.status not in (COMPLETED, FAILED, CANCELLED)]
        if busy:
            raise NotebookBusy(
                f"{len(busy)} document(s) of {nb.name!r} are still being ingested "
                f"({', '.join(busy[:3])}).",
                hint="Export when the notebook's jobs have finished.",
                details={"documents": busy[:50]},
            )
        docs.sort(key=lambda d: (d.created_at, d.id))
        return ExportPlan(
            nb.id, nb.name, archive_filename(nb.name), docs, vectors, conversations_of
        )

    async def stream_export(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        """The archive's bytes as they are made; the manifest is the last entry."""
        nb = await self.notebooks.repo.get(plan.notebook_id)
        out = _ZipStream()
        refs: list[ArchivedDocumentRef] = []
        written: set[str] = set()
        dimensions: int | None = None
        for n, doc in enumerate(plan.documents):
            chunks = await self.documents.chunks_for(doc.id)
            archived = ArchivedDocument(
                id=doc.id,
                filename=doc.filename,
                file_type=doc.file_type,
                size=doc.size or 0,
                sha256=doc.sha256,
                status=doc.status,
                error_code=doc.error_code,
                error=doc.error,
                embedding_model=doc.embedding_model,
                metadata=dict(doc.meta or {}),
                content=await self.documents.get_content(doc.id) or None,
                created_at=doc.created_at,
                updated_at=doc.updated_at,
                chunk_ids=[c.id for c in chunks],
                chunks=[
                    ArchivedChunk(
                        index=c.index,
                        text=c.text,
                        start_char=c.start_char,
                        end_char=c.end_char,
                        page=c.page,
                        section=c.section or "",
                        context=c.context or "",
                        token_count=c.token_count or 0,
                    )
                    for c in chunks
                ],
            )
            entry = f"documents/{n}.json"
            data = await anyio.to_thread.run_sync(_json, archived)
            yield await out.add_bytes(entry, data)
            ref = ArchivedDocumentRef(entry=entry, filename=doc.filename, chunks=len(chunks))
            original = self.pipeline.originals.path(doc.sha256)
            kept = bool(doc.sha256) and await anyio.to_thread.run_sync(original.is_file)
            if kept:
                ref.original = f"originals/{doc.sha256}"
                if ref.original not in written:
                    written.add(ref.original)
                    size = (await anyio.to_thread.run_sync(original.stat)).st_size
                    async for piece in out.add_file(
                        ref.original,
                        original,
                        size=size,
                        sha256=doc.sha256,
                        deflate=doc.file_type not in _STORED_TYPES,
                    ):
                        yield piece
            if plan.vectors and chunks:
                found = await self.vectors.get_vectors([str(c.id) for c in chunks])
                rows = [found.get(str(c.id)) for c in chunks]
                if all(r is not None for r in rows):
                    vectors = [r for r in rows if r is not None]
                    dimensions = dimensions or len(vectors[0])
                    if all(len(v) == dimensions for v in vectors):
                        ref.vectors = f"vectors/{n}.f32"
                        yield await out.add_bytes(ref.vectors, encode_vectors(vectors))
            refs.append(ref)
        conversation_entries: list[str] = []
        conversations = await self.conversations.of_notebook(
            plan.notebook_id, owner_id=plan.conversations_of
        )
        for n, conv in enumerate(conversations):
            messages = await self.conversations.all_messages(conv.id)
            archived_conv = ArchivedConversation(
                title=conv.title,
                status=conv.status,
                metadata=dict(conv.meta or {}),
                last_seq=max([conv.last_seq or 0, *(m.seq for m in messages)]),
                last_message_at=conv.last_message_at,
                created_at=conv.created_at,
                updated_at=conv.updated_at,
                messages=[
                    ArchivedMessage(
                        seq=m.seq,
                        role=m.role,
                        content=m.content or "",
                        sources=list(m.sources or []),
                        metadata=dict(m.meta or {}),
                        status=m.status,
                        created_at=m.created_at,
                    )
                    for m in messages
                ],
            )
            entry = f"conversations/{n}.json"
            conversation_entries.append(entry)
            yield await out.add_bytes(entry, await anyio.to_thread.run_sync(_json, archived_conv))
        manifest = ArchiveManifest(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created_at=datetime.now(UTC),
            studyrag_version=__version__,
            notebook=ArchivedNotebook(
                name=nb.name,
                description=nb.description or "",
                metadata=dict(nb.meta or {}),
                created_at=nb.created_at,
            ),
            embedding_model=self.embedder.model_name,
            dimensions=dimensions,
            documents=refs,
            conversations=conversation_entries,
            entries=dict(out.entries),
        )
        yield await out.add_bytes(MANIFEST, _json(manifest))
        yield await out.close()

    async def export_to(self, notebook_id: str, target: Path, *, vectors: bool = False) -> int:
        """Write the archive to a local file (the CLI without a server); its size."""
        plan = await self.plan_export(notebook_id, vectors=vectors)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        size = 0
        try:
            async with await anyio.open_file(tmp, "wb") as fh:
                async for piece in self.stream_export(plan):
                    size += len(piece)
                    await fh.write(piece)
            await anyio.to_thread.run_sync(tmp.replace, target)
        finally:
            await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
        return size

    # --- import: accept ----------------------------------------------------------------
    async def check(self, path: Path) -> ArchiveSummary:
        """Check a whole archive (worker thread); an archive error changes nothing."""
        return await anyio.to_thread.run_sync(check_archive, path, self.settings)

    async def clear_orphan_uploads(self) -> int:
        """Remove uploaded archives no unfinished import job refers to (an upload killed
        while it was stored, or checked and refused by a process that died); how many."""
        kept = {
            str(job.meta.get("archive") or "")
            for job in await self.job_repo.unfinished()
            if job.kind == IMPORT_NOTEBOOK
        }
        removed = 0
        for folder in self._stopped_upload_folders():
            for leftover in list(folder.iterdir()):
                if leftover.is_file() and str(leftover) not in kept:
                    leftover.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.warning("removed %d partial archive upload(s) from %s", removed, self.imports_root)
        return removed

    def _stopped_upload_folders(self) -> list[Path]:
        """Folders whose uploads no live process is receiving (ours at start-up)."""
        if not self.shared:
            return [self.imports_dir] if self.imports_dir.is_dir() else []
        if not self.imports_root.is_dir():
            return []
        return [
            entry
            for entry in self.imports_root.iterdir()
            if entry.is_dir()
            and (
                entry.name == process_owner()
                or owner_gone(entry.name, datetime.fromtimestamp(entry.stat().st_mtime, UTC))
            )
        ]

    async def accept_upload(self, chunks: AsyncIterator[bytes]) -> NotebookImportAccepted:
        """Keep an uploaded archive, check it whole, then queue its import as a job."""
        await anyio.to_thread.run_sync(lambda: self.imports_dir.mkdir(parents=True, exist_ok=True))
        path = self.imports_dir / f"{uuid.uuid4().hex}.zip"
        limit = self.settings.max_archive_bytes
        try:
            size = 0
            async with await anyio.open_file(path, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ArchiveTooLarge(
                            f"The archive is over the {self.settings.max_archive_mb:g} MB limit.",
                            details={"limit": limit},
                        )
                    await out.write(chunk)
            return await self._queue(path, owned=True)
        except BaseException:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            raise

    async def import_file(
        self, path: Path, *, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> Job:
        """Check a local archive and run its import in the foreground (the CLI), passing
        the job's events to `on_event` as they are published."""
        absolute = await anyio.to_thread.run_sync(path.resolve)
        accepted = await self._queue(absolute, owned=False, submit=False)
        subscription = self.events.broker.subscribe(job_channel(accepted.job_id))
        first = asyncio.ensure_future(anext(subscription))  # subscribed before the job runs
        await asyncio.sleep(0)

        async def follow() -> None:
            pending: asyncio.Future[dict[str, Any]] = first
            while True:
                event = await pending
                if on_event is not None:
                    on_event(event)
                pending = asyncio.ensure_future(anext(subscription))

        follower = asyncio.create_task(follow(), name="studyrag-import-progress")
        try:
            await self.jobs.run(accepted.job_id)
        finally:
            await self.events.flush()
            follower.cancel()
            first.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await subscription.aclose()  # type: ignore[attr-defined]
        return await self.job_repo.get(accepted.job_id)

    async def _queue(
        self, path: Path, *, owned: bool, submit: bool = True
    ) -> NotebookImportAccepted:
        summary = await self.check(path)
        manifest = summary.manifest
        job = await self.job_repo.create(
            kind=IMPORT_NOTEBOOK,
            notebook_id=None,
            archive=str(path),
            owned=owned,
            name=manifest.notebook.name,
            documents=summary.documents,
            conversations=summary.conversations,
        )
        if submit:
            await self.jobs.runner.submit(job.id)
        return NotebookImportAccepted(
            job_id=job.id,
            name=manifest.notebook.name,
            documents=summary.documents,
            conversations=summary.conversations,
        )

    # --- import: the job ---------------------------------------------------------------
    async def _run_import(self, job: Job) -> None:
        """Restore the job's archive into a new notebook; undo it all if anything fails.

        A stop (cancellation, Ctrl-C) undoes nothing: the job stays unfinished, and its next
        run (at the next start) removes what the stopped one wrote, then starts over.
        """
        path = Path(str(job.meta.get("archive") or ""))
        owned = bool(job.meta.get("owned"))
        summary: ArchiveSummary | None = None
        originals: list[str] = []
        failure: Exception | None = None
        try:
            if not await anyio.to_thread.run_sync(path.is_file):
                raise ArchiveInvalid(
                    "The archive of this import is gone (removed, or the server was stopped "
                    "before the import started).",
                    hint="Import the file again.",
                )
            # Checked again: a file given by path may have changed since it was accepted.
            summary = await self.check(path)
            originals = [
                r.original.split("/", 1)[1] for r in summary.manifest.documents if r.original
            ]
        except Exception as exc:
            failure = exc
        if job.notebook_id:
            # A previous run stopped halfway: remove what it wrote, then start over.
            if await self._finished_before(job):
                return
            await self._discard(job.notebook_id, originals)
        if failure is not None:
            if owned:
                await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            raise failure
        assert summary is not None
        notebook_id = new_id()
        await self.job_repo.set_status(job.id, JOB_RUNNING, notebook_id=notebook_id)
        job.notebook_id = notebook_id
        try:
            result = await self._restore(job, path, summary)
        except Exception:
            await asyncio.shield(self._discard(notebook_id, originals))
            if owned:
                await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            raise
        await self.job_repo.set_status(job.id, JOB_RUNNING, meta={**job.meta, **result})
        if owned:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def _finished_before(self, job: Job) -> bool:
        """Whether the notebook of an interrupted import was completed already."""
        assert job.notebook_id is not None
        try:
            nb = await self.notebooks.repo.get(job.notebook_id)
        except StudyRAGError:
            return False
        return nb.status == ACTIVE

    async def _restore(self, job: Job, path: Path, summary: ArchiveSummary) -> dict[str, Any]:
        assert job.notebook_id is not None
        notebook_id = job.notebook_id
        manifest = summary.manifest
        nb = await self.notebooks.create_unique(
            manifest.notebook.name,
            manifest.notebook.description,
            status=NB_IMPORTING,
            notebook_id=notebook_id,
            meta=manifest.notebook.metadata,
        )
        await self.embedder.start()
        # Vectors are taken from the archive only when they come from this very model.
        use_vectors = (
            manifest.embedding_model == self.embedder.model_name
            and manifest.dimensions is not None
            and manifest.dimensions == self.embedder.dimensions
        )
        doc_ids: dict[str, str] = {}
        chunk_ids: dict[int, int] = {}
        counter = Counter(self.settings)
        total = len(manifest.documents) + len(manifest.conversations)
        done = 0
        recomputed = 0
        with open_zip(path) as zf:
            for ref in manifest.documents:
                raw = await anyio.to_thread.run_sync(load_json, zf, ref.entry, counter)
                doc = ArchivedDocument.model_validate(raw)
                if ref.original is not None:
                    await self.pipeline.originals.save_stream(
                        _blocks(iter_entry(zf, ref.original, counter)),
                        limit=doc.size + 1,
                        name=doc.filename,
                    )
                vectors: list[list[float]] | None = None
                if ref.vectors is not None and use_vectors and manifest.dimensions:
                    vectors = await anyio.to_thread.run_sync(
                        _read_vectors, zf, ref.vectors, counter, manifest.dimensions
                    )
                elif doc.chunks:
                    recomputed += 1
                new_doc = await self._restore_document(notebook_id, job.id, doc, vectors)
                doc_ids[doc.id] = new_doc
                new_chunks = await self.documents.chunk_ids(new_doc)
                chunk_ids.update(zip(doc.chunk_ids, new_chunks, strict=False))
                done += 1
                self._progress(job.id, notebook_id, done, total)
            conversations = 0
            for entry in manifest.conversations:
                raw = await anyio.to_thread.run_sync(load_json, zf, entry, counter)
                conv = ArchivedConversation.model_validate(raw)
                await self.conversations.insert_archived(
                    notebook_id=notebook_id,
                    conversation=conv.model_dump(exclude={"messages", "metadata"})
                    | {"meta": conv.metadata},
                    messages=[_message_row(m, doc_ids, chunk_ids) for m in conv.messages],
                )
                conversations += 1
                done += 1
                self._progress(job.id, notebook_id, done, total)
        await self.notebooks.repo.activate(notebook_id)
        public = await self.notebooks.public(await self.notebooks.repo.get(notebook_id))
        self.events.emit(
            {
                "type": "notebook_imported",
                "notebook_id": notebook_id,
                "job_id": job.id,
                "notebook": public.model_dump(mode="json"),
            },
            notebook_id=notebook_id,
            job_id=job.id,
        )
        return {
            "notebook_id": notebook_id,
            "notebook_name": nb.name,
            "documents": len(doc_ids),
            "conversations": conversations,
            "vectors": "recomputed" if recomputed else "archive",
            "progress": 100.0,
        }

    async def _restore_document(
        self,
        notebook_id: str,
        job_id: str,
        doc: ArchivedDocument,
        vectors: list[list[float]] | None,
    ) -> str:
        """One document: its row (processing while it is written), chunks, FTS, vectors."""
        row = await self.documents.create(
            notebook_id=notebook_id,
            job_id=job_id,
            filename=doc.filename,
            source_path="",
            file_type=doc.file_type,
            size=doc.size,
            sha256=doc.sha256,
            status=PROCESSING,
            step="storing",
            progress=50.0,
            owner=process_owner(),
            meta=dict(doc.metadata),
            content=doc.content,
            error_code=doc.error_code,
            error=doc.error,
            created_at=doc.created_at or datetime.now(UTC),
        )
        ids = await self.documents.insert_chunks(row.id, [c.model_dump() for c in doc.chunks])
        model = doc.embedding_model
        if ids:
            if vectors is None:
                vectors = []
                texts = [embedding_text(c.section, c.text, c.context) for c in doc.chunks]
                for i in range(0, len(texts), _EMBED_STEP):
                    vectors.extend(await self.embedder.embed_documents(texts[i : i + _EMBED_STEP]))
                model = self.embedder.model_name
            await self.vectors.upsert(
                [str(i) for i in ids],
                vectors,
                [vector_metadata(row.id, notebook_id, doc.file_type, c.index) for c in doc.chunks],
            )
        await self.documents.set_status(
            row.id,
            doc.status,
            expect=PROCESSING,
            owner=None,
            step=doc.status,
            progress=100.0 if doc.status == COMPLETED else 0.0,
            chunk_count=len(ids),
            embedding_model=model,
        )
        return row.id

    def _progress(self, job_id: str, notebook_id: str, done: int, total: int) -> None:
        self.events.emit(
            {
                "type": "job_progress",
                "job_id": job_id,
                "notebook_id": notebook_id,
                "done": done,
                "total": total,
                "progress": round(100.0 * done / max(1, total), 1),
            },
            notebook_id=notebook_id,
            job_id=job_id,
        )

    async def _discard(self, notebook_id: str, originals: list[str]) -> None:
        """Remove every trace of an unfinished import: rows, vectors, unused originals."""
        try:
            nb = await self.notebooks.repo.get(notebook_id, deleting_ok=True)
        except StudyRAGError:
            nb = None
        if nb is not None and nb.status == ACTIVE:
            return  # never an import's to remove once it completed
        try:
            for document_id in await self.documents.all_ids(notebook_id=notebook_id):
                await self.pipeline.discard(document_id)
            # Originals stored before their document row was written.
            for sha in originals:
                await self.pipeline.release_original(sha)
            await self.notebooks.repo.purge_conversations(notebook_id)
            await self.notebooks.repo.delete_row(notebook_id)
        except Exception:
            log.exception("could not undo the import of notebook %s", notebook_id)
            raise


def _read_vectors(
    zf: zipfile.ZipFile, entry: str, counter: Counter, dimensions: int
) -> list[list[float]]:
    return decode_vectors(b"".join(iter_entry(zf, entry, counter)), dimensions)


async def _blocks(source: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, each read in a worker thread."""
    done = object()
    while True:
        block = await anyio.to_thread.run_sync(next, source, done)
        if block is done:
            return
        assert isinstance(block, bytes)
        yield block


def _message_row(
    m: ArchivedMessage, doc_ids: dict[str, str], chunk_ids: dict[int, int]
) -> dict[str, Any]:
    """A message as a row, its sources pointing at the imported documents and chunks."""
    sources = []
    for source in m.sources:
        s = dict(source)
        old_doc = s.get("document_id")
        if isinstance(old_doc, str) and old_doc in doc_ids:
            s["document_id"] = doc_ids[old_doc]
        old_chunk = s.get("chunk_id")
        if isinstance(old_chunk, int) and not isinstance(old_chunk, bool):
            # A passage of a document the notebook no longer held names no chunk here.
            s["chunk_id"] = chunk_ids.get(old_chunk, -1)
        sources.append(s)
    return {
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "sources": sources,
        "meta": dict(m.metadata),
        "status": m.status,
        "created_at": m.created_at,
    }
