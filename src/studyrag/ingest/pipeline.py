"""Ingestion: validate → keep the original → extract → chunk → embed → store, with steps.

A document is first *registered*: validated, its original kept in the OriginalStore, a row
written as "queued" in its notebook. Processing then claims queued rows and walks them
through the steps extracting, chunking, embedding, storing, reporting progress, checking for
cancellation at every step boundary. A document is searchable only once its status is
"completed", which is set after its chunks are in SQL, in the full-text index and in the
vector store. Anything a crash left half-done is repaired by reconcile() at the next start:
documents whose original is kept go back to "queued", so an interrupted upload finishes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.vectors.base import VectorStore
from studyrag.config import IngestSettings
from studyrag.db.models import Chunk, Document
from studyrag.db.repo import (
    CANCELLED,
    COMPLETED,
    DELETING,
    FAILED,
    PROCESSING,
    QUEUED,
    DocumentRepo,
)
from studyrag.errors import (
    Cancelled,
    DocumentBusy,
    DocumentError,
    ExtractionFailed,
    FileTooLarge,
    IngestionFailed,
    StudyRAGError,
    UnsupportedFileType,
)
from studyrag.ingest.chunking import ChunkDraft, chunk_document
from studyrag.ingest.loaders import SUPPORTED_SUFFIXES, get_loader
from studyrag.ingest.loaders.base import ExtractedDocument, Loader, LoadOptions
from studyrag.ingest.originals import OriginalStore
from studyrag.ingest.ownership import alive_elsewhere_here, owner_gone, process_owner
from studyrag.ingest.page_headings import chunk_contexts, page_headings_from_text
from studyrag.ingest.zipsafe import ZIP_BASED_TYPES, check_zip_document
from studyrag.observability.metrics import Metrics

log = logging.getLogger(__name__)

# Parsing is CPU work; two at once is what two cores can take.
_EXTRACT_LIMITER = anyio.CapacityLimiter(2)
# Chunks embedded together: many small notes share one model call.
EMBED_BATCH = 256
# Chunks per embedder call inside a batch: progress advances in steps this size.
_EMBED_STEP = 64

# Steps a document passes through, with the share of the work done when each starts.
STEP_PERCENT = {
    "queued": 0.0,
    "extracting": 2.0,
    "chunking": 10.0,
    "embedding": 15.0,
    "storing": 90.0,
    "completed": 100.0,
}
_EMBED_SPAN = STEP_PERCENT["storing"] - STEP_PERCENT["embedding"]


@dataclass(slots=True)
class Progress:
    """One progress report of one document: its step and how far it is, in percent."""

    filename: str
    # queued | extracting | chunking | embedding | storing | completed | failed | cancelled
    # | duplicate | rejected (refused before it was stored)
    step: str
    percent: float = 0.0
    document_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    chunks: int = 0
    # While scanned pages are recognised (step "extracting"): (pages read, page count).
    pages: tuple[int, int] | None = None
    # A page that could not be read: {"page": n, "message": "..."}; the document goes on.
    warning: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.step in ("completed", "failed", "cancelled", "duplicate", "rejected")


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[str], bool]


def _never(_document_id: str) -> bool:
    return False


@dataclass(slots=True)
class IngestResult:
    filename: str
    path: str
    status: str  # queued | completed | duplicate | failed | cancelled | rejected
    document_id: str | None = None
    chunks: int = 0
    error_code: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Older versions of the same file name that this document replaced.
    replaced: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "duplicate", "queued")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Prepared:
    """A document extracted and chunked, waiting for its embeddings."""

    document_id: str
    file_type: str
    notebook_id: str
    extracted: ExtractedDocument
    drafts: list[ChunkDraft]
    result: IngestResult
    # Per draft: what it is part of (document name and title, its page's heading).
    contexts: list[str] = field(default_factory=list)
    # When it was uploaded: only older versions of its file name are retired.
    created_at: Any = None


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders walked recursively (hidden files skipped), sorted, unique."""
    out: list[Path] = []
    for p in paths:
        p = p.expanduser()
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def walk_paths(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(files to ingest, unsupported files met while walking folders).

    A file named explicitly is kept whatever its type, so ingesting it still says why it
    cannot be ingested (DOC_001); one merely found in a folder is only counted as skipped.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        p = p.expanduser()
        if p.is_dir():
            for f in expand_paths([p]):
                (files if f.suffix.lower() in SUPPORTED_SUFFIXES else skipped).append(f)
        else:
            files.append(p)
    kept = list(dict.fromkeys(files))
    named = set(kept)
    return kept, [f for f in dict.fromkeys(skipped) if f not in named]


def check_upload(filename: str, size: int | None, settings: IngestSettings) -> None:
    """DOC_002 / DOC_001 for a file that must not even be stored."""
    if size is not None and size > settings.max_file_size_bytes:
        raise FileTooLarge(
            f"{filename} is {size / 1e6:.1f} MB; the limit is {settings.max_file_size_mb:g} MB.",
            details={"filename": filename},
        )
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileType(
            f"{filename}: files of type {suffix or '(none)'} cannot be ingested.",
            details={"filename": filename, "supported": list(SUPPORTED_SUFFIXES)},
        )


class IngestionPipeline:
    """Turns kept originals into searchable chunks in SQL, FTS and the vector store."""

    def __init__(
        self,
        *,
        repo: DocumentRepo,
        embedder: Embedder,
        vectors: VectorStore,
        settings: IngestSettings,
        originals: OriginalStore,
        default_notebook: Callable[[], Awaitable[str]],
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics or Metrics()
        # Where documents go when a caller names no notebook.
        self.default_notebook = default_notebook
        self.embedder = embedder
        self.vectors = vectors
        self.settings = settings
        self.originals = originals
        # One at a time per sha256 in this process: dedupe (check, then create) and
        # releasing an original (unused?, then remove) must not interleave.
        self._sha_locks: dict[str, asyncio.Lock] = {}
        # Documents whose delete is running in this process (a retried delete waits for it).
        self._deleting: set[str] = set()
        # Vector stores being filled for another embedding model (a model switch): deletes
        # reach them too, so the new vectors never outlive their document.
        self.shadow_vectors: list[VectorStore] = []
        # Batches being embedded and stored, per vector store (a switch waits for the old
        # store's to end before it catches up on them).
        self._batches: dict[int, int] = {}
        self._batches_idle = asyncio.Event()
        self._batches_idle.set()

    def use_embeddings(self, embedder: Embedder, vectors: VectorStore) -> None:
        """Embed and store new documents with this model and store from now on."""
        self.embedder, self.vectors = embedder, vectors

    async def wait_batches(self, vectors: VectorStore) -> None:
        """Return when no batch is being embedded into `vectors`."""
        while self._batches.get(id(vectors)):
            self._batches_idle.clear()
            await self._batches_idle.wait()

    async def copy_vectors(self, document_id: str, embedder: Embedder, vectors: VectorStore) -> int:
        """Embed a completed document's chunks with `embedder` into `vectors`; its row and
        its current vectors stay as they are. Returns the number of chunks."""
        doc = await self.repo.get(document_id)
        chunks = await self.repo.chunks_for(document_id)
        if not chunks:
            return 0
        await embedder.start()
        embedded = await embedder.embed_documents(
            [embedding_text(c.section, c.text, c.context) for c in chunks]
        )
        await vectors.upsert(
            [str(c.id) for c in chunks],
            embedded,
            [vector_metadata(doc.id, doc.notebook_id, doc.file_type, c.index) for c in chunks],
        )
        return len(chunks)

    async def _delete_vectors(self, document_id: str) -> None:
        await self.vectors.delete(where={"document_id": document_id})
        for shadow in list(self.shadow_vectors):
            try:
                await shadow.delete(where={"document_id": document_id})
            except StudyRAGError:
                log.warning("vectors of %s stay in the store being filled", document_id)

    @property
    def chunk_size(self) -> int:
        """Configured size, capped at what the embedder reads (it would truncate the rest)."""
        return max(16, min(self.settings.chunk_size, self.embedder.max_tokens - 2))

    @property
    def chunk_overlap(self) -> int:
        return min(self.settings.chunk_overlap, self.chunk_size // 2)

    # --- registering -------------------------------------------------------------------
    async def register_file(
        self,
        path: Path,
        *,
        notebook_id: str | None = None,
        job_id: str | None = None,
        filename: str | None = None,
    ) -> IngestResult:
        """Validate a local file, keep its original and queue it (queued/duplicate/rejected)."""
        path = Path(path)
        notebook_id = notebook_id or await self.default_notebook()
        name = filename or path.name
        source, size = await anyio.to_thread.run_sync(_file_facts, path)
        try:
            if size is None:
                raise ExtractionFailed(f"{name} does not exist or is not a file.")
            check_upload(name, size, self.settings)
            sha, size = await self.originals.save_file(path)
        except DocumentError as exc:
            return _rejected(name, source, exc)
        except OSError as exc:
            return _rejected(name, source, ExtractionFailed(f"{name} cannot be read: {exc}"))
        return await self.register_stored(
            sha=sha,
            size=size,
            filename=name,
            notebook_id=notebook_id,
            job_id=job_id,
            source_path=source,
        )

    async def register_stored(
        self,
        *,
        sha: str,
        size: int,
        filename: str,
        notebook_id: str,
        job_id: str | None = None,
        source_path: str = "",
    ) -> IngestResult:
        """Queue an original already in the store; a duplicate in the notebook is not."""
        async with self._sha_lock(sha):
            return await self._register(sha, size, filename, notebook_id, job_id, source_path)

    def _sha_lock(self, sha: str) -> asyncio.Lock:
        if len(self._sha_locks) > 10_000:
            self._sha_locks = {k: v for k, v in self._sha_locks.items() if v.locked()}
        return self._sha_locks.setdefault(sha, asyncio.Lock())

    async def _register(
        self,
        sha: str,
        size: int,
        filename: str,
        notebook_id: str,
        job_id: str | None,
        source_path: str,
    ) -> IngestResult:
        result = IngestResult(filename=filename, path=source_path, status="queued")
        existing = await self.repo.find_by_sha(sha, notebook_id=notebook_id)
        if (
            existing is not None
            and existing.status == QUEUED
            and owner_gone(existing.owner, existing.updated_at)
        ):
            # Queued by a process that stopped (Ctrl-C, crash): this run takes it over.
            await self.repo.set_status(
                existing.id, QUEUED, expect=QUEUED, job_id=job_id, owner=process_owner()
            )
            result.document_id = existing.id
            return result
        if existing is not None:
            result.status = "duplicate"
            result.document_id = existing.id
            result.chunks = existing.chunk_count
            verb = "already ingested" if existing.status == COMPLETED else "being ingested"
            result.error = f"{verb} as {existing.filename} ({existing.id})"
            return result
        loader = get_loader(Path(filename), prefer=self.settings.loader)
        dropped = await self.repo.drop_failed(
            notebook_id=notebook_id, filename=filename, sha256=sha
        )
        doc = await self.repo.create(
            notebook_id=notebook_id,
            job_id=job_id,
            filename=filename,
            source_path=source_path,
            file_type=loader.file_type,
            size=size,
            sha256=sha,
            status=QUEUED,
            step="queued",
            progress=0.0,
            owner=process_owner(),
        )
        result.document_id = doc.id
        for old_sha in dropped:
            if old_sha != sha:
                await self.release_original(old_sha)
        return result

    async def release_original(self, sha256: str) -> None:
        """Remove an original once no document refers to it any more."""
        if not sha256:
            return
        async with self._sha_lock(sha256):
            if not await self.repo.sha_in_use(sha256):
                await self.originals.remove(sha256)

    # --- processing --------------------------------------------------------------------
    async def ingest_paths(
        self,
        paths: Iterable[Path],
        *,
        notebook_id: str | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelCheck = _never,
    ) -> list[IngestResult]:
        """Register and process files and folders; one file's failure never stops the rest."""
        report = progress or (lambda _p: None)
        notebook_id = notebook_id or await self.default_notebook()
        results: list[IngestResult] = []
        files = expand_paths(paths)
        # Registered a slice at a time, so the first documents are searchable early and
        # a stop loses at most one slice's queue.
        for begin in range(0, len(files), _REGISTER_SLICE):
            queued: list[str] = []
            for path in files[begin : begin + _REGISTER_SLICE]:
                registered = await self.register_file(Path(path), notebook_id=notebook_id)
                if registered.status == "queued" and registered.document_id:
                    queued.append(registered.document_id)
                else:
                    results.append(registered)
                    report(_final_progress(registered))
            results.extend(await self.process(queued, progress=report, cancelled=cancelled))
        return results

    async def ingest_file(
        self,
        path: Path,
        *,
        notebook_id: str | None = None,
        progress: ProgressCallback | None = None,
        filename: str | None = None,
    ) -> IngestResult:
        """Register and process one file; every failure is recorded, never raised."""
        registered = await self.register_file(
            Path(path), notebook_id=notebook_id, filename=filename
        )
        if registered.status != "queued" or registered.document_id is None:
            return registered
        (result,) = await self.process([registered.document_id], progress=progress)
        return result

    async def process(
        self,
        document_ids: Iterable[str],
        *,
        progress: ProgressCallback | None = None,
        cancelled: CancelCheck = _never,
    ) -> list[IngestResult]:
        """Take queued documents through every step; returns one result per document.

        Small documents are embedded together in batches of EMBED_BATCH chunks (one model
        call for many notes instead of one per note), and the next documents are parsed
        while a batch embeds. Each document still becomes searchable on its own, in one step.
        """
        report = progress or (lambda _p: None)
        results: list[IngestResult] = []
        batch: list[_Prepared] = []
        flushing: asyncio.Task[None] | None = None
        in_flight: list[_Prepared] = []
        try:
            for document_id in document_ids:
                prepared = await self._prepare(document_id, report, cancelled)
                if prepared is None:
                    continue
                if isinstance(prepared, IngestResult):
                    results.append(prepared)
                    continue
                results.append(prepared.result)
                batch.append(prepared)
                if sum(len(p.drafts) for p in batch) >= EMBED_BATCH:
                    if flushing is not None:
                        await flushing
                    in_flight = batch
                    flushing = asyncio.create_task(self._embed_and_store(batch, report, cancelled))
                    batch = []
            if flushing is not None:
                await flushing
                flushing = None
            in_flight = []
            if batch:
                in_flight, batch = batch, []
                await self._embed_and_store(in_flight, report, cancelled)
                in_flight = []
        finally:
            if flushing is not None and not flushing.done():
                flushing.cancel()
                await asyncio.gather(flushing, return_exceptions=True)
            # Stopped from outside (Ctrl-C, shutdown): nothing half-indexed stays visible.
            for p in [*in_flight, *batch]:
                if p.result.status == "queued":
                    await asyncio.shield(self._abandon(p))
        return results

    async def _prepare(
        self, document_id: str, report: ProgressCallback, cancelled: CancelCheck
    ) -> _Prepared | IngestResult | None:
        """Claim, extract and chunk one queued document; None when it is not queued."""
        doc = await self.repo.claim(document_id, owner=process_owner())
        if doc is None:
            return None  # cancelled, deleted or taken by another worker meanwhile
        result = IngestResult(
            filename=doc.filename, path=doc.source_path, status="queued", document_id=doc.id
        )
        step = _Reporter(report, doc.id, doc.filename)
        try:
            self._check(doc.id, cancelled)
            step("extracting")
            path = self.originals.path(doc.sha256)
            if not path.is_file():
                raise ExtractionFailed(
                    f"The original of {doc.filename} is missing; upload it again."
                )
            from studyrag.ingest.loaders import loader_for_type

            loader = loader_for_type(
                doc.file_type,
                prefer=self.settings.loader,
                options=self._load_options(doc.id, doc.filename, report, cancelled),
            )
            t = time.perf_counter()
            extracted: ExtractedDocument = await anyio.to_thread.run_sync(
                self._load_checked, loader, doc.file_type, path, limiter=_EXTRACT_LIMITER
            )
            result.timings["extract"] = time.perf_counter() - t
            self._check(doc.id, cancelled)
            step("chunking")
            t = time.perf_counter()
            await self.embedder.start()
            drafts: list[ChunkDraft] = await anyio.to_thread.run_sync(
                lambda: chunk_document(
                    extracted,
                    self.embedder.tokenizer,
                    chunk_size=self.chunk_size,
                    chunk_overlap=self.chunk_overlap,
                ),
                limiter=_EXTRACT_LIMITER,
            )
            result.timings["chunk"] = time.perf_counter() - t
            if not drafts:
                raise ExtractionFailed(f"{doc.filename} contains no text that could be extracted.")
        except Exception as exc:
            return await self._fail(result, doc.id, exc, report)
        contexts = chunk_contexts(
            document_context(doc.filename, extracted.metadata.get("title"), drafts),
            # From the text and page starts alone, as a reindex finds them again.
            page_headings_from_text(extracted.text, extracted.metadata.get("page_starts")),
            [(d.start, d.page) for d in drafts],
        )
        return _Prepared(
            doc.id,
            doc.file_type,
            doc.notebook_id,
            extracted,
            drafts,
            result,
            contexts,
            created_at=doc.created_at,
        )

    def _load_options(
        self, document_id: str, filename: str, report: ProgressCallback, cancelled: CancelCheck
    ) -> LoadOptions:
        """OCR settings, and page reports handed from the loader's thread to the event loop."""
        loop = asyncio.get_running_loop()
        start, span = (
            STEP_PERCENT["extracting"],
            STEP_PERCENT["chunking"] - STEP_PERCENT["extracting"],
        )

        def on_page(done: int, total: int) -> None:
            # Between two pages: a long scan stops there when it is cancelled.
            self._check(document_id, cancelled)
            percent = round(start + span * done / max(1, total), 1)
            progress = Progress(
                filename, "extracting", percent, document_id=document_id, pages=(done, total)
            )
            loop.call_soon_threadsafe(report, progress)

        def on_warning(warning: dict[str, Any]) -> None:
            progress = Progress(
                filename, "extracting", start, document_id=document_id, warning=warning
            )
            loop.call_soon_threadsafe(report, progress)

        return LoadOptions(
            ocr=self.settings.ocr,
            ocr_threads=self.settings.ocr_threads,
            ocr_dpi=self.settings.ocr_dpi,
            on_page=on_page,
            on_warning=on_warning,
        )

    @staticmethod
    def _check(document_id: str, cancelled: CancelCheck) -> None:
        if cancelled(document_id):
            raise Cancelled("Cancelled.")

    async def _embed_and_store(
        self, batch: list[_Prepared], report: ProgressCallback, cancelled: CancelCheck
    ) -> None:
        """Embed a batch of documents' chunks together, then store each document."""
        # One model and one store for the whole batch, whatever a model switch does meanwhile.
        embedder, store = self.embedder, self.vectors
        key = id(store)
        self._batches[key] = self._batches.get(key, 0) + 1
        try:
            await self._embed_and_store_with(batch, report, cancelled, embedder, store)
        finally:
            self._batches[key] -= 1
            if not self._batches[key]:
                del self._batches[key]
                self._batches_idle.set()

    async def _embed_and_store_with(
        self,
        batch: list[_Prepared],
        report: ProgressCallback,
        cancelled: CancelCheck,
        embedder: Embedder,
        store: VectorStore,
    ) -> None:
        await self.repo.set_step([p.document_id for p in batch], "embedding", 15.0)
        inputs = [
            embedding_input(d, c) for p in batch for d, c in zip(p.drafts, p.contexts, strict=True)
        ]
        # Which slice of `inputs` belongs to which document, for per-document progress.
        spans: list[tuple[_Prepared, int, int]] = []
        offset = 0
        for p in batch:
            spans.append((p, offset, offset + len(p.drafts)))
            offset += len(p.drafts)
            report(_progress(p, "embedding", STEP_PERCENT["embedding"]))
        t = time.perf_counter()
        vectors: list[list[float]] = []
        live = list(batch)
        try:
            for i in range(0, len(inputs), _EMBED_STEP):
                for p in [p for p in live if cancelled(p.document_id)]:
                    live.remove(p)
                    await self._fail(p.result, p.document_id, Cancelled("Cancelled."), report)
                if not live:
                    return
                vectors.extend(await embedder.embed_documents(inputs[i : i + _EMBED_STEP]))
                done = len(vectors)
                for p, begin, end in spans:
                    if p in live and begin < done and (done - _EMBED_STEP) < end:
                        share = min(1.0, (done - begin) / max(1, end - begin))
                        report(
                            _progress(
                                p, "embedding", STEP_PERCENT["embedding"] + share * _EMBED_SPAN
                            )
                        )
        except Exception as exc:
            for p in live:
                await self._fail(p.result, p.document_id, exc, report)
            return
        spent = time.perf_counter() - t
        # SQL + FTS rows per document, then one vector upsert for the batch, then each
        # document flips to "completed": only then is it searchable.
        stored: list[tuple[_Prepared, list[int], list[list[float]], float]] = []
        for p, begin, end in spans:
            if p not in live:
                continue
            n = end - begin
            # A shared batch's time is split by chunk count.
            p.result.timings["embed"] = spent * n / max(1, len(inputs))
            t = time.perf_counter()
            try:
                self._check(p.document_id, cancelled)
                report(_progress(p, "storing", STEP_PERCENT["storing"]))
                rows = _chunk_rows(p.drafts, p.contexts)
                ids = await self.repo.insert_chunks(p.document_id, rows)
            except Exception as exc:
                await self._fail(p.result, p.document_id, exc, report)
            else:
                stored.append((p, ids, vectors[begin:end], time.perf_counter() - t))
        if not stored:
            return
        t = time.perf_counter()
        try:
            await store.upsert(
                [str(i) for _, ids, _, _ in stored for i in ids],
                [v for _, _, vecs, _ in stored for v in vecs],
                [
                    vector_metadata(p.document_id, p.notebook_id, p.file_type, d.index)
                    for p, _, _, _ in stored
                    for d in p.drafts
                ],
            )
        except Exception as exc:
            for p, _, _, _ in stored:
                await self._fail(p.result, p.document_id, exc, report)
            return
        upsert_share = (time.perf_counter() - t) / len(stored)
        for p, ids, _, sql_time in stored:
            t = time.perf_counter()
            try:
                self._check(p.document_id, cancelled)
                # A stop (Ctrl-C, shutdown) that lands while the status flips must not
                # leave the flip half seen: committed in SQL but not in the result, where
                # the stop's rollback would strip a completed document of its chunks.
                await _finish_even_if_cancelled(self._complete(p, ids, embedder.model_name, report))
            except Exception as exc:
                await self._fail(p.result, p.document_id, exc, report)
                continue
            p.result.timings["store"] = sql_time + upsert_share + time.perf_counter() - t
            self._observe(p.result)
            log.info(
                "ingested %s: %d chunks; %s",
                p.result.filename,
                len(ids),
                " ".join(f"{k} {v:.3f}s" for k, v in p.result.timings.items()),
            )

    async def _complete(
        self, p: _Prepared, ids: list[int], model_name: str, report: ProgressCallback
    ) -> None:
        """Flip the document to completed, report it, then retire older versions of the same
        file name."""
        meta = dict(p.extracted.metadata)
        meta.setdefault("title", Path(p.result.filename).stem)
        done = await self.repo.set_status(
            p.document_id,
            COMPLETED,
            expect=PROCESSING,
            owner=None,
            step="completed",
            progress=100.0,
            chunk_count=len(ids),
            embedding_model=model_name,
            meta=meta,
            content=p.extracted.text,
            error=None,
            error_code=None,
        )
        if not done:
            # Deleted or reset while being ingested: its rows must not come back to life.
            raise IngestionFailed(
                f"{p.result.filename} was deleted or reset while it was being ingested."
            )
        p.result.status = "completed"
        p.result.chunks = len(ids)
        # The same file name with new content replaces the old version, now that the new
        # one is searchable (never before: the notebook is never without the file).
        older = await self.repo.same_name(
            p.notebook_id, p.result.filename, p.document_id, before=p.created_at
        )
        for old in older:
            try:
                await self.delete_document(old.id)
            except StudyRAGError as exc:
                log.warning("could not retire %s (%s): %s", old.id, old.filename, exc.message)
                continue
            p.result.replaced.append(old.id)
        report(
            Progress(
                p.result.filename, "completed", 100.0, document_id=p.document_id, chunks=len(ids)
            )
        )

    async def _fail(
        self, result: IngestResult, document_id: str, exc: BaseException, report: ProgressCallback
    ) -> IngestResult:
        """Roll a document's chunks back everywhere and record why it stopped; never raises."""
        if not isinstance(exc, Exception):
            raise exc
        if not isinstance(exc, StudyRAGError):
            # The details go to the log; the stored, user-visible message names no internals.
            log.error("ingestion of %s failed", result.filename, exc_info=exc)
            exc = IngestionFailed(
                f"Ingesting {result.filename} failed ({type(exc).__name__}); see the server log."
            )
        assert isinstance(exc, StudyRAGError)
        status = CANCELLED if isinstance(exc, Cancelled) else FAILED
        result.status, result.chunks = status, 0
        result.error_code = None if status == CANCELLED else exc.error_code
        result.error = None if status == CANCELLED else exc.message
        try:
            await self._rollback(document_id)
            await self.repo.set_status(
                document_id,
                status,
                expect=PROCESSING,
                owner=None,
                step=status,
                error_code=result.error_code,
                error=result.error,
                chunk_count=0,
            )
        except Exception:
            # The stores themselves are failing; the row stays "processing" for reconcile().
            log.exception("could not roll back %s", result.filename)
        else:
            if status == FAILED:
                await self._prune_failed(document_id)
        report(
            Progress(
                result.filename,
                status,
                0.0,
                document_id=document_id,
                error_code=result.error_code,
                error=result.error,
            )
        )
        self.metrics.ingest_documents.labels(status=status).inc()
        return result

    async def _prune_failed(self, document_id: str) -> None:
        """Keep only the newest `keep_failed` failed documents of this one's notebook."""
        try:
            doc = await self.repo.get(document_id)
            older, _ = await self.repo.list(
                notebook_id=doc.notebook_id,
                status=FAILED,
                limit=1000,
                offset=self.settings.keep_failed,
            )
            for old in older:
                if await self.repo.set_status(
                    old.id, DELETING, expect=FAILED, owner=process_owner()
                ):
                    await self._finish_delete(old)
        except StudyRAGError as exc:
            log.warning("could not remove old failed documents: %s", exc.message)

    def _observe(self, result: IngestResult) -> None:
        """Record a completed document's step durations (extract, chunk, embed, store)."""
        for step, seconds in result.timings.items():
            self.metrics.ingest_step.labels(step=step).observe(seconds)
        self.metrics.ingest_documents.labels(status=result.status).inc()

    async def _abandon(self, p: _Prepared) -> None:
        """A prepared document whose processing was stopped from outside goes back to queued."""
        try:
            # Status first: only a document still processing goes back (one that completed
            # meanwhile keeps its chunks), and a queued one is never searched.
            if await self.repo.set_status(
                p.document_id, QUEUED, expect=PROCESSING, owner=None, step="queued", progress=0.0
            ):
                await self._rollback(p.document_id)
        except Exception:
            log.exception("could not put %s back in the queue", p.result.filename)

    async def _rollback(self, document_id: str) -> None:
        """Remove every trace of a document's chunks: SQL and FTS, then vectors.

        A vector left behind (the store is down) names a chunk id that no longer exists and
        is never reused, so search drops it.
        """
        await self.repo.delete_chunks(document_id)
        try:
            await self._delete_vectors(document_id)
        except StudyRAGError:
            log.warning("vectors of %s stay behind: the vector store failed", document_id)

    # --- cancel, delete, reindex -------------------------------------------------------
    async def cancel_queued(self, document_id: str) -> bool:
        """Cancel a document that has not started; False when it is past queued."""
        return await self.repo.set_status(
            document_id, CANCELLED, expect=QUEUED, owner=None, step="cancelled"
        )

    async def requeue(self, document_id: str, *, job_id: str | None) -> Document:
        """Put a failed or cancelled document back in the queue (its original is kept)."""
        doc = await self.repo.get(document_id)
        if doc.status not in (FAILED, CANCELLED):
            raise DocumentBusy(
                f"{doc.filename} is {doc.status}; only failed or cancelled documents can be "
                "retried.",
                hint="Reindex a completed document instead.",
            )
        if not self.originals.exists(doc.sha256):
            from studyrag.errors import OriginalMissing

            raise OriginalMissing(f"The original of {doc.filename} is not kept.")
        await self.repo.set_status(
            document_id,
            QUEUED,
            expect=doc.status,
            job_id=job_id,
            owner=process_owner(),
            step="queued",
            progress=0.0,
            error=None,
            error_code=None,
        )
        return await self.repo.get(document_id)

    def _load_checked(self, loader: Loader, file_type: str, path: Path) -> ExtractedDocument:
        """Extract, after the zip-safety check for zip-based types (a bomb is never parsed)."""
        if file_type in ZIP_BASED_TYPES:
            check_zip_document(
                path,
                max_unpacked=self.settings.max_unpacked_bytes,
                max_ratio=self.settings.max_unpack_ratio,
            )
        return loader.load(path)

    async def delete_document(self, document_id: str) -> Document:
        """Remove a document and every chunk everywhere (not while it is being ingested).

        A document left `deleting` by a delete that failed (a store that was down) is hidden
        from every read, but a delete of it again finishes the job instead of answering 404.
        """
        async with self.repo.db.session() as s:
            stuck = await s.get(Document, document_id)
        if stuck is not None and stuck.status == DELETING:
            mine = stuck.owner == process_owner() and document_id not in self._deleting
            if not (mine or owner_gone(stuck.owner, stuck.updated_at)):
                raise DocumentBusy(f"{stuck.filename} is being deleted already.")
            await self._finish_delete(stuck)
            return stuck
        doc = await self.repo.get(document_id)
        busy = DocumentBusy(f"{doc.filename} is being ingested; cancel it or delete it after that.")
        abandoned = doc.status == PROCESSING and owner_gone(doc.owner, doc.updated_at)
        if doc.status == PROCESSING and not abandoned:
            raise busy
        # Marked first, so a crash halfway is finished by reconcile() and never half-visible;
        # conditional, so an ingestion that started meanwhile is not pulled from under it.
        if not await self.repo.set_status(
            document_id, DELETING, expect=doc.status, owner=process_owner()
        ):
            raise busy
        await self._finish_delete(doc)
        return doc

    async def discard(self, document_id: str) -> None:
        """Remove a document this process is writing, whatever its status (an import rolling
        back): vectors, rows, and the original when no other document refers to it."""
        async with self.repo.db.session() as s:
            doc = await s.get(Document, document_id)
        if doc is None:
            return
        await self.repo.set_status(document_id, DELETING, owner=process_owner())
        await self._finish_delete(doc)

    async def _finish_delete(self, doc: Document) -> None:
        self._deleting.add(doc.id)
        try:
            await self._delete_vectors(doc.id)
            await self.repo.delete_document(doc.id)
            await self.release_original(doc.sha256)
        finally:
            self._deleting.discard(doc.id)

    async def reindex(self, document_id: str) -> IngestResult:
        """Recompute a document's embeddings with the current embedding model."""
        doc = await self.repo.get(document_id)
        result = IngestResult(
            filename=doc.filename, path=doc.source_path, status="failed", document_id=doc.id
        )
        if doc.status != COMPLETED:
            raise DocumentBusy(
                f"{doc.filename} is {doc.status}; only completed documents can be reindexed.",
                hint="Retry it if it failed, or wait for it to finish.",
            )
        t = time.perf_counter()
        embedder, store = self.embedder, self.vectors
        # Contexts are derived from the stored text, so chunks indexed before page headings
        # existed get them (in SQL and full-text search too); copy_vectors embeds them.
        chunks = await self.repo.chunks_for(document_id)
        content = await self.repo.get_content(document_id)
        contexts = stored_contexts(doc.filename, doc.meta, content, chunks)
        changed = {c.id: ctx for c, ctx in zip(chunks, contexts, strict=True) if c.context != ctx}
        await self.repo.update_chunk_contexts(changed)
        # Chunk ids are stable, so the upsert replaces the vectors in place: the document is
        # never without them. The collection is per model: another model's stay apart.
        count = await self.copy_vectors(document_id, embedder, store)
        if not await self.repo.set_status(
            document_id, COMPLETED, expect=COMPLETED, embedding_model=embedder.model_name
        ):
            # Deleted meanwhile: the vectors just written must not outlive it.
            await store.delete(where={"document_id": document_id})
            raise DocumentBusy(f"{doc.filename} was deleted while it was being reindexed.")
        result.status = "completed"
        result.chunks = count
        result.timings["embed"] = time.perf_counter() - t
        return result

    async def reconcile(self) -> dict[str, int]:
        """Finish or undo whatever a crash left half-done; returns what was repaired.

        Documents whose original is kept go back to "queued" (the job runner finishes them);
        those without one fail with DOC_005. Half-deleted ones are finished.
        """
        repaired = {"requeued": 0, "interrupted": 0, "deleted": 0}
        self.originals.clear_incoming()
        for doc in await self.repo.by_status([QUEUED, PROCESSING, DELETING]):
            if not owner_gone(doc.owner, doc.updated_at):
                continue  # another live process is working on it
            try:
                await self._repair(doc, repaired)
            except StudyRAGError as exc:
                # A store that is down must not stop the start: the next start retries.
                log.warning("could not repair %s (%s): %s", doc.id, doc.filename, exc.message)
        if any(repaired.values()):
            log.warning("reconciled after an unclean stop: %s", repaired)
        return repaired

    async def take_over(self, docs: Iterable[Document]) -> dict[str, int]:
        """Put back in the queue the documents a stopped run of their job left processing.

        The job runner knows that run is over (it raised, or its worker stopped beating),
        including on another host, where ownership alone would wait for the hour-long
        lease. Only a live process of this host (known exactly) keeps its documents.
        """
        repaired = {"requeued": 0, "interrupted": 0, "deleted": 0}
        for doc in docs:
            if doc.status != PROCESSING or alive_elsewhere_here(doc.owner):
                continue
            try:
                await self._repair(doc, repaired)
            except StudyRAGError as exc:
                log.warning("could not take over %s (%s): %s", doc.id, doc.filename, exc.message)
        if any(repaired.values()):
            log.warning("took over documents of a stopped run: %s", repaired)
        return repaired

    async def _repair(self, doc: Document, repaired: dict[str, int]) -> None:
        """Finish a half-done delete, or put an interrupted ingestion back (or fail it)."""
        if doc.status == DELETING:
            await self._finish_delete(doc)
            repaired["deleted"] += 1
            return
        if doc.status == PROCESSING:
            await self.vectors.delete(where={"document_id": doc.id})
            await self.repo.delete_chunks(doc.id)
        if self.originals.exists(doc.sha256):
            await self.repo.set_status(
                doc.id, QUEUED, expect=doc.status, owner=None, step="queued", progress=0.0
            )
            repaired["requeued"] += 1
            return
        await self.repo.set_status(
            doc.id,
            FAILED,
            step="failed",
            error_code=IngestionFailed.error_code,
            error="Ingestion was interrupted (the process stopped); ingest the file again.",
            chunk_count=0,
        )
        repaired["interrupted"] += 1


_REGISTER_SLICE = 128


class _Reporter:
    """Reports one document's step changes."""

    def __init__(self, report: ProgressCallback, document_id: str, filename: str) -> None:
        self.report, self.document_id, self.filename = report, document_id, filename

    def __call__(self, step: str) -> None:
        self.report(Progress(self.filename, step, STEP_PERCENT[step], document_id=self.document_id))


async def _finish_even_if_cancelled(step: Coroutine[Any, Any, None]) -> None:
    """Run `step` to its end even when the caller is cancelled meanwhile; the caller still
    sees the cancellation, after the step is done (its result or error is then dropped)."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: a failure here is the cancelled caller's to ignore
        raise


def _progress(p: _Prepared, step: str, percent: float) -> Progress:
    return Progress(p.result.filename, step, round(percent, 1), document_id=p.document_id)


def _final_progress(result: IngestResult) -> Progress:
    step = "duplicate" if result.status == "duplicate" else result.status
    return Progress(
        result.filename,
        step,
        100.0 if step == "duplicate" else 0.0,
        document_id=result.document_id,
        error_code=result.error_code,
        error=result.error,
        chunks=result.chunks,
    )


def _rejected(filename: str, source: str, exc: StudyRAGError) -> IngestResult:
    return IngestResult(
        filename=filename,
        path=source,
        status="rejected",
        error_code=exc.error_code,
        error=exc.message,
    )


def vector_metadata(
    document_id: str, notebook_id: str, file_type: str, chunk_index: int
) -> dict[str, Any]:
    """What every vector carries, so search can filter by notebook, document and type."""
    return {
        "document_id": document_id,
        "notebook_id": notebook_id,
        "file_type": file_type,
        "chunk_index": chunk_index,
    }


def embedding_input(draft: ChunkDraft, context: str = "") -> str:
    """What the embedder reads for a new chunk."""
    return embedding_text(" > ".join(draft.section), draft.text, context)


def embedding_text(section: str, text: str, context: str = "") -> str:
    """Context, section path, then the passage: the headers give a passage its topic."""
    return "\n".join(part for part in (context, section, text) if part)


_SEPARATORS = re.compile(r"[_\-.]+")


def document_context(filename: str, title: Any, drafts: list[ChunkDraft]) -> str:
    """A short header naming the document, indexed and embedded with each of its chunks.

    Pages of a filing or slides of a lecture rarely repeat what they belong to, so a question
    naming the company or course would otherwise match every document alike. The file name
    counts when it has letters (not an id like "4983"); the title when it has a word and is
    not the first heading (which every chunk carries in its section path anyway).
    """
    parts: list[str] = []
    stem = _SEPARATORS.sub(" ", Path(filename).stem).strip()
    if re.search(r"[^\W\d_]", stem):
        parts.append(stem)
    first_heading = next((d.section[0] for d in drafts if d.section), "")
    if isinstance(title, str):
        clean = " ".join(title.split())[:200]
        if (
            re.search(r"[^\W\d_]{3,}", clean)
            and clean.casefold() != first_heading.casefold()
            # The file name as a title (what a document without one is stored with) adds nothing.
            and _SEPARATORS.sub(" ", clean).strip().casefold() != stem.casefold()
        ):
            parts.append(clean)
    return " — ".join(parts)


def stored_contexts(
    filename: str, meta: dict[str, Any], content: str, chunks: list[Chunk]
) -> list[str]:
    """Each stored chunk's context, recomputed as ingestion computes it for new chunks."""
    drafts = [
        ChunkDraft(
            text=c.text,
            start=c.start_char,
            end=c.end_char,
            page=c.page,
            section=tuple(c.section.split(" > ")) if c.section else (),
            token_count=c.token_count,
            index=c.index,
        )
        for c in chunks
    ]
    return chunk_contexts(
        document_context(filename, meta.get("title"), drafts),
        page_headings_from_text(content, meta.get("page_starts")),
        [(d.start, d.page) for d in drafts],
    )


def _chunk_rows(drafts: list[ChunkDraft], contexts: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "context": context,
            "index": d.index,
            "text": d.text,
            "start_char": d.start,
            "end_char": d.end,
            "page": d.page,
            "section": " > ".join(d.section),
            "token_count": d.token_count,
        }
        for d, context in zip(drafts, contexts, strict=True)
    ]


def _file_facts(path: Path) -> tuple[str, int | None]:
    """(absolute path, size), size None when it is not a readable regular file."""
    try:
        return str(path.resolve()), (path.stat().st_size if path.is_file() else None)
    except OSError:
        return str(path), None
