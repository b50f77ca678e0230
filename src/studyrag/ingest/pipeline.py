"""Ingestion: validate → extract → chunk → embed → store, with dedupe, timings and recovery.

A document is searchable only once its status is "completed", which is set after its chunks
are in SQL, in the full-text index and in the vector store. Anything left "pending",
"processing" or "deleting" by a crash is cleaned up by reconcile() at the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.vectors.base import VectorStore
from studyrag.config import IngestSettings
from studyrag.db.repo import (
    COMPLETED,
    DELETING,
    FAILED,
    PENDING,
    PROCESSING,
    DocumentRepo,
)
from studyrag.errors import (
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
from studyrag.ingest.loaders.base import ExtractedDocument
from studyrag.ingest.ownership import owner_gone, process_owner

log = logging.getLogger(__name__)

# Parsing is CPU work; two at once is what two cores can take.
_EXTRACT_LIMITER = anyio.CapacityLimiter(2)
EMBED_BATCH = 256


@dataclass(slots=True)
class Progress:
    """One progress report: a stage of one file, `done` of `total` units."""

    filename: str
    stage: str  # extract | chunk | embed | store | done | failed | duplicate
    done: int = 0
    total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class _Prepared:
    """A document extracted and chunked, waiting for its embeddings."""

    document_id: str
    file_type: str
    extracted: ExtractedDocument
    drafts: list[ChunkDraft]
    result: IngestResult
    context: str = ""


@dataclass(slots=True)
class IngestResult:
    filename: str
    path: str
    status: str  # completed | duplicate | failed
    document_id: str | None = None
    chunks: int = 0
    error_code: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "duplicate")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class IngestionPipeline:
    """Turns files into searchable chunks in SQL, FTS and the vector store."""

    def __init__(
        self,
        *,
        repo: DocumentRepo,
        embedder: Embedder,
        vectors: VectorStore,
        settings: IngestSettings,
    ) -> None:
        self.repo = repo
        self.embedder = embedder
        self.vectors = vectors
        self.settings = settings

    @property
    def chunk_size(self) -> int:
        """Configured size, capped at what the embedder reads (it would truncate the rest)."""
        return max(16, min(self.settings.chunk_size, self.embedder.max_tokens - 2))

    @property
    def chunk_overlap(self) -> int:
        return min(self.settings.chunk_overlap, self.chunk_size // 2)

    async def ingest_paths(
        self, paths: Iterable[Path], *, progress: ProgressCallback | None = None
    ) -> list[IngestResult]:
        """Ingest files and folders; failures are recorded per file and don't stop the rest.

        Small files are embedded together in batches of EMBED_BATCH chunks (one model call for
        many notes instead of one per note), and the next files are parsed while a batch
        embeds. Each document still becomes searchable on its own, in one step.
        """
        report = progress or (lambda _p: None)
        results: list[IngestResult] = []
        batch: list[_Prepared] = []
        flushing: asyncio.Task[None] | None = None
        try:
            for path in expand_paths(paths):
                prepared = await self._prepare(Path(path), path.name, report)
                if isinstance(prepared, IngestResult):
                    results.append(prepared)
                    continue
                results.append(prepared.result)
                batch.append(prepared)
                if sum(len(p.drafts) for p in batch) >= EMBED_BATCH:
                    if flushing is not None:
                        await flushing
                    flushing = asyncio.create_task(self._embed_and_store(batch, report))
                    batch = []
            if flushing is not None:
                await flushing
                flushing = None
            if batch:
                await self._embed_and_store(batch, report)
        finally:
            if flushing is not None and not flushing.done():
                flushing.cancel()
        return results

    async def ingest_file(
        self,
        path: Path,
        *,
        progress: ProgressCallback | None = None,
        filename: str | None = None,
    ) -> IngestResult:
        """Ingest one file; every failure is recorded on the document, never raised."""
        report = progress or (lambda _p: None)
        path = Path(path)
        prepared = await self._prepare(path, filename or path.name, report)
        if isinstance(prepared, IngestResult):
            return prepared
        await self._embed_and_store([prepared], report)
        return prepared.result

    async def _prepare(
        self, path: Path, filename: str, report: ProgressCallback
    ) -> _Prepared | IngestResult:
        """Validate, dedupe, record, extract and chunk; a final IngestResult if it stops here."""
        result = IngestResult(filename=filename, path=str(path), status="failed")
        suffix = path.suffix.lower()
        source, size = await anyio.to_thread.run_sync(_file_facts, path)
        record: dict[str, Any] = {
            "filename": filename,
            "source_path": source,
            "file_type": suffix.lstrip(".") or "unknown",
            "sha256": "",
        }
        try:
            if size is None:
                raise ExtractionFailed(f"{filename} does not exist or is not a file.")
            record["size"] = size
            # Checked before reading a byte: an oversized file costs nothing.
            if size > self.settings.max_file_size_bytes:
                raise FileTooLarge(
                    f"{filename} is {size / 1e6:.1f} MB; the limit is "
                    f"{self.settings.max_file_size_mb:g} MB."
                )
            if suffix not in SUPPORTED_SUFFIXES:
                raise UnsupportedFileType(
                    f"{filename}: files of type {suffix or '(none)'} cannot be ingested."
                )
            loader = get_loader(path, prefer=self.settings.loader)
            record["file_type"] = loader.file_type
            sha = await anyio.to_thread.run_sync(_sha256, path)
            record["sha256"] = sha
        except DocumentError as exc:
            return await self._record_failure(result, record, exc, report)

        existing = await self.repo.find_by_sha(sha)
        if existing is not None:
            result.status = "duplicate"
            result.document_id = existing.id
            result.chunks = existing.chunk_count
            verb = "already ingested" if existing.status == COMPLETED else "being ingested"
            result.error = f"{verb} as {existing.filename} ({existing.id})"
            report(Progress(filename, "duplicate", 1, 1))
            return result

        await self.repo.drop_failed(source_path=record["source_path"], sha256=sha)
        doc = await self.repo.create(**record, status=PROCESSING, owner=process_owner())
        result.document_id = doc.id
        try:
            t = time.perf_counter()
            report(Progress(filename, "extract", 0, 1))
            extracted: ExtractedDocument = await anyio.to_thread.run_sync(
                loader.load, path, limiter=_EXTRACT_LIMITER
            )
            result.timings["extract"] = time.perf_counter() - t
            t = time.perf_counter()
            report(Progress(filename, "chunk", 0, 1))
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
                raise ExtractionFailed(f"{filename} contains no text that could be extracted.")
        except Exception as exc:
            return await self._fail(result, doc.id, exc, report)
        context = document_context(filename, extracted.metadata.get("title"), drafts)
        return _Prepared(doc.id, loader.file_type, extracted, drafts, result, context)

    async def _embed_and_store(self, batch: list[_Prepared], report: ProgressCallback) -> None:
        """Embed a batch of documents' chunks together, then store each document."""
        inputs = [embedding_input(d, p.context) for p in batch for d in p.drafts]
        names = ", ".join(p.result.filename for p in batch[:3]) + ("…" if len(batch) > 3 else "")
        t = time.perf_counter()
        vectors: list[list[float]] = []
        try:
            for i in range(0, len(inputs), EMBED_BATCH):
                report(Progress(names, "embed", i, len(inputs)))
                vectors.extend(await self.embedder.embed_documents(inputs[i : i + EMBED_BATCH]))
            report(Progress(names, "embed", len(inputs), len(inputs)))
        except Exception as exc:
            for p in batch:
                await self._fail(p.result, p.document_id, exc, report)
            return
        spent = time.perf_counter() - t
        # SQL + FTS rows per document, then one vector upsert for the batch, then each
        # document flips to "completed": only then is it searchable.
        stored: list[tuple[_Prepared, list[int], list[list[float]], float]] = []
        offset = 0
        for p in batch:
            n = len(p.drafts)
            # A shared batch's time is split by chunk count.
            p.result.timings["embed"] = spent * n / max(1, len(inputs))
            t = time.perf_counter()
            report(Progress(p.result.filename, "store", 0, 1))
            try:
                ids = await self.repo.insert_chunks(p.document_id, _chunk_rows(p.drafts, p.context))
            except Exception as exc:
                await self._fail(p.result, p.document_id, exc, report)
            else:
                stored.append((p, ids, vectors[offset : offset + n], time.perf_counter() - t))
            offset += n
        if not stored:
            return
        t = time.perf_counter()
        try:
            await self.vectors.upsert(
                [str(i) for _, ids, _, _ in stored for i in ids],
                [v for _, _, vecs, _ in stored for v in vecs],
                [
                    {"document_id": p.document_id, "file_type": p.file_type, "chunk_index": d.index}
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
                await self._complete(p, ids)
            except Exception as exc:
                await self._fail(p.result, p.document_id, exc, report)
                continue
            p.result.timings["store"] = sql_time + upsert_share + time.perf_counter() - t
            report(Progress(p.result.filename, "done", 1, 1))
            log.info(
                "ingested %s: %d chunks; %s",
                p.result.filename,
                len(ids),
                " ".join(f"{k} {v:.3f}s" for k, v in p.result.timings.items()),
            )

    async def _complete(self, p: _Prepared, ids: list[int]) -> None:
        """Flip the document to completed with its metadata and extracted text."""
        meta = dict(p.extracted.metadata)
        meta.setdefault("title", Path(p.result.filename).stem)
        done = await self.repo.set_status(
            p.document_id,
            COMPLETED,
            expect=PROCESSING,
            owner=None,
            chunk_count=len(ids),
            embedding_model=self.embedder.model_name,
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

    async def _fail(
        self, result: IngestResult, document_id: str, exc: BaseException, report: ProgressCallback
    ) -> IngestResult:
        """Roll a document's chunks back everywhere and record why it failed; never raises."""
        if not isinstance(exc, Exception):
            raise exc
        if not isinstance(exc, StudyRAGError):
            # The details go to the log; the stored, user-visible message names no internals.
            log.error("ingestion of %s failed", result.filename, exc_info=exc)
            exc = IngestionFailed(
                f"Ingesting {result.filename} failed ({type(exc).__name__}); see the server log."
            )
        assert isinstance(exc, StudyRAGError)
        try:
            await self._rollback(document_id)
            return await self._mark_failed(result, document_id, exc, report)
        except Exception:
            # The stores themselves are failing; the row stays "processing" for reconcile().
            log.exception("could not roll back %s", result.filename)
            result.status, result.chunks = "failed", 0
            result.error_code, result.error = exc.error_code, exc.message
            report(Progress(result.filename, "failed", 1, 1))
            return result

    async def _record_failure(
        self,
        result: IngestResult,
        record: dict[str, Any],
        exc: StudyRAGError,
        report: ProgressCallback,
    ) -> IngestResult:
        await self.repo.drop_failed(
            source_path=record["source_path"], sha256=record["sha256"] or "\0"
        )
        doc = await self.repo.create(
            **record, status=FAILED, error_code=exc.error_code, error=exc.message
        )
        result.document_id = doc.id
        result.error_code = exc.error_code
        result.error = exc.message
        report(Progress(result.filename, "failed", 1, 1))
        return result

    async def _mark_failed(
        self, result: IngestResult, document_id: str, exc: StudyRAGError, report: ProgressCallback
    ) -> IngestResult:
        await self.repo.set_status(
            document_id, FAILED, error_code=exc.error_code, error=exc.message, chunk_count=0
        )
        result.status = "failed"
        result.chunks = 0
        result.error_code = exc.error_code
        result.error = exc.message
        report(Progress(result.filename, "failed", 1, 1))
        return result

    async def _rollback(self, document_id: str) -> None:
        """Remove every trace of a document's chunks: SQL and FTS, then vectors.

        A vector left behind (the store is down) names a chunk id that no longer exists and
        is never reused, so search drops it.
        """
        await self.repo.delete_chunks(document_id)
        try:
            await self.vectors.delete(where={"document_id": document_id})
        except StudyRAGError:
            log.warning("vectors of %s stay behind: the vector store failed", document_id)

    async def delete_document(self, document_id: str) -> None:
        """Remove a document and every chunk everywhere (not while it is being ingested)."""
        doc = await self.repo.get(document_id)
        busy = DocumentBusy(f"{doc.filename} is being ingested; delete it after that.")
        abandoned = doc.status in (PENDING, PROCESSING) and owner_gone(doc.owner, doc.updated_at)
        if doc.status not in (COMPLETED, FAILED) and not abandoned:
            raise busy
        # Marked first, so a crash halfway is finished by reconcile() and never half-visible;
        # conditional, so an ingestion that started meanwhile is not pulled from under it.
        if not await self.repo.set_status(
            document_id, DELETING, expect=doc.status, owner=process_owner()
        ):
            raise busy
        await self.vectors.delete(where={"document_id": document_id})
        await self.repo.delete_document(document_id)

    async def reindex(self, document_id: str) -> IngestResult:
        """Recompute a document's embeddings with the current embedding model."""
        doc = await self.repo.get(document_id)
        result = IngestResult(
            filename=doc.filename, path=doc.source_path, status="failed", document_id=doc.id
        )
        if doc.status != COMPLETED:
            raise DocumentBusy(
                f"{doc.filename} is {doc.status}; only completed documents can be reindexed.",
                hint="Ingest the file again if it failed, or wait for it to finish.",
            )
        t = time.perf_counter()
        chunks = await self.repo.chunks_for(document_id)
        await self.embedder.start()
        vectors = await self.embedder.embed_documents(
            [embedding_text(c.section, c.text, c.context) for c in chunks]
        )
        # Chunk ids are stable, so the upsert replaces the vectors in place: the document is
        # never without them. The collection is per model: another model's stay apart.
        await self.vectors.upsert(
            [str(c.id) for c in chunks],
            vectors,
            [
                {"document_id": document_id, "file_type": doc.file_type, "chunk_index": c.index}
                for c in chunks
            ],
        )
        await self.repo.set_status(document_id, COMPLETED, embedding_model=self.embedder.model_name)
        result.status = "completed"
        result.chunks = len(chunks)
        result.timings["embed"] = time.perf_counter() - t
        return result

    async def reconcile(self) -> dict[str, int]:
        """Finish or undo whatever a crash left half-done; returns what was repaired."""
        repaired = {"interrupted": 0, "deleted": 0}
        for doc in await self.repo.by_status([PENDING, PROCESSING, DELETING]):
            if not owner_gone(doc.owner, doc.updated_at):
                continue  # another live process is working on it
            await self.vectors.delete(where={"document_id": doc.id})
            if doc.status == DELETING:
                await self.repo.delete_document(doc.id)
                repaired["deleted"] += 1
                continue
            await self.repo.delete_chunks(doc.id)
            await self.repo.set_status(
                doc.id,
                FAILED,
                error_code=IngestionFailed.error_code,
                error="Ingestion was interrupted (the process stopped); ingest the file again.",
                chunk_count=0,
            )
            repaired["interrupted"] += 1
        if any(repaired.values()):
            log.warning("reconciled after an unclean stop: %s", repaired)
        return repaired


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
            and clean.casefold() != stem.casefold()
        ):
            parts.append(clean)
    return " — ".join(parts)


def _chunk_rows(drafts: list[ChunkDraft], context: str) -> list[dict[str, Any]]:
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
        for d in drafts
    ]


def _file_facts(path: Path) -> tuple[str, int | None]:
    """(absolute path, size), size None when it is not a readable regular file."""
    try:
        return str(path.resolve()), (path.stat().st_size if path.is_file() else None)
    except OSError:
        return str(path), None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
