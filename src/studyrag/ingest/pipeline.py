"""Ingestion: validate → extract → chunk → embed → store, with dedupe, timings and recovery.

A document is searchable only once its status is "completed", which is set after its chunks
are in SQL, in the full-text index and in the vector store. Anything left "pending",
"processing" or "deleting" by a crash is cleaned up by reconcile() at the next start.
"""

from __future__ import annotations

import hashlib
import logging
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
        """Ingest files and folders one file at a time; failures don't stop the rest."""
        return [await self.ingest_file(p, progress=progress) for p in expand_paths(paths)]

    async def ingest_file(
        self,
        path: Path,
        *,
        progress: ProgressCallback | None = None,
        filename: str | None = None,
    ) -> IngestResult:
        """Ingest one file; every failure is recorded on the document, never raised."""
        path = Path(path)
        filename = filename or path.name
        report = progress or (lambda _p: None)
        result = IngestResult(filename=filename, path=str(path), status="failed")
        suffix = path.suffix.lower()
        file_type = suffix.lstrip(".") or "unknown"
        record: dict[str, Any] = {
            "filename": filename,
            "source_path": str(path.resolve()) if path.exists() else str(path),
            "file_type": file_type,
            "sha256": "",
        }
        try:
            if not path.is_file():
                raise ExtractionFailed(f"{path} does not exist or is not a file.")
            size = path.stat().st_size
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

        existing = await self.repo.find_completed_by_sha(sha)
        if existing is not None:
            result.status = "duplicate"
            result.document_id = existing.id
            result.chunks = existing.chunk_count
            result.error = f"already ingested as {existing.filename} ({existing.id})"
            report(Progress(filename, "duplicate", 1, 1))
            return result

        await self.repo.drop_failed(source_path=record["source_path"], sha256=sha)
        doc = await self.repo.create(**record, status=PROCESSING)
        result.document_id = doc.id
        try:
            await self._process(doc.id, path, loader, result, report)
        except StudyRAGError as exc:
            await self._rollback(doc.id)
            return await self._mark_failed(result, doc.id, exc, report)
        except Exception as exc:
            log.exception("ingestion of %s failed", filename)
            await self._rollback(doc.id)
            err = IngestionFailed(f"Ingesting {filename} failed: {type(exc).__name__}: {exc}")
            return await self._mark_failed(result, doc.id, err, report)
        report(Progress(filename, "done", 1, 1))
        return result

    async def _process(
        self,
        document_id: str,
        path: Path,
        loader: Any,
        result: IngestResult,
        report: ProgressCallback,
    ) -> None:
        name = result.filename
        timings = result.timings
        t = time.perf_counter()
        report(Progress(name, "extract", 0, 1))
        extracted: ExtractedDocument = await anyio.to_thread.run_sync(
            loader.load, path, limiter=_EXTRACT_LIMITER
        )
        timings["extract"] = time.perf_counter() - t

        t = time.perf_counter()
        report(Progress(name, "chunk", 0, 1))
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
        timings["chunk"] = time.perf_counter() - t
        if not drafts:
            raise ExtractionFailed(f"{name} contains no text that could be extracted.")

        t = time.perf_counter()
        vectors: list[list[float]] = []
        inputs = [embedding_input(d) for d in drafts]
        for i in range(0, len(inputs), EMBED_BATCH):
            report(Progress(name, "embed", i, len(inputs)))
            vectors.extend(await self.embedder.embed_documents(inputs[i : i + EMBED_BATCH]))
        report(Progress(name, "embed", len(inputs), len(inputs)))
        timings["embed"] = time.perf_counter() - t

        t = time.perf_counter()
        report(Progress(name, "store", 0, 1))
        file_type = loader.file_type
        ids = await self.repo.insert_chunks(
            document_id,
            [
                {
                    "index": d.index,
                    "text": d.text,
                    "start_char": d.start,
                    "end_char": d.end,
                    "page": d.page,
                    "section": " > ".join(d.section),
                    "token_count": d.token_count,
                }
                for d in drafts
            ],
        )
        await self.vectors.upsert(
            [str(i) for i in ids],
            vectors,
            [
                {"document_id": document_id, "file_type": file_type, "chunk_index": d.index}
                for d in drafts
            ],
        )
        meta = dict(extracted.metadata)
        meta.setdefault("title", extracted.metadata.get("title") or Path(name).stem)
        await self.repo.set_status(
            document_id,
            COMPLETED,
            chunk_count=len(ids),
            embedding_model=self.embedder.model_name,
            meta=meta,
            content=extracted.text,
            error=None,
            error_code=None,
        )
        timings["store"] = time.perf_counter() - t
        result.status = "completed"
        result.chunks = len(ids)
        log.info(
            "ingested %s: %d chunks; extract %.3fs chunk %.3fs embed %.3fs store %.3fs",
            name,
            len(ids),
            timings["extract"],
            timings["chunk"],
            timings["embed"],
            timings["store"],
        )

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
        """Remove every trace of a document's chunks (vectors first, then SQL and FTS)."""
        await self.vectors.delete(where={"document_id": document_id})
        await self.repo.delete_chunks(document_id)

    async def delete_document(self, document_id: str) -> None:
        """Remove a document and every chunk everywhere."""
        await self.repo.get(document_id)
        # Marked first, so a crash halfway is finished by reconcile() and never half-visible.
        await self.repo.set_status(document_id, DELETING)
        await self.vectors.delete(where={"document_id": document_id})
        await self.repo.delete_document(document_id)

    async def reindex(self, document_id: str) -> IngestResult:
        """Recompute a document's embeddings with the current embedding model."""
        doc = await self.repo.get(document_id)
        result = IngestResult(
            filename=doc.filename, path=doc.source_path, status="failed", document_id=doc.id
        )
        if doc.status != COMPLETED:
            return await self._mark_failed(
                result,
                doc.id,
                IngestionFailed(
                    f"{doc.filename} is {doc.status}, not completed; ingest the file again."
                ),
                lambda _p: None,
            )
        t = time.perf_counter()
        chunks = await self.repo.chunks_for(document_id)
        await self.embedder.start()
        vectors = await self.embedder.embed_documents(
            [embedding_text(c.section, c.text) for c in chunks]
        )
        # The collection is per model, so the old model's vectors stay out of the new one.
        await self.vectors.delete(where={"document_id": document_id})
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


def embedding_input(draft: ChunkDraft) -> str:
    """What the embedder reads for a new chunk."""
    return embedding_text(" > ".join(draft.section), draft.text)


def embedding_text(section: str, text: str) -> str:
    """The section path, then the passage: the heading gives a passage its topic."""
    return f"{section}\n{text}" if section else text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
