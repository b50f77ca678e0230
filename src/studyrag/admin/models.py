"""ModelService: list, switch and pull models while the server runs.

A chat switch loads the new model, then makes it current: answers in flight finish on the
old one, which closes after the last of them (chat/model_slot.py). An embedding switch is a
job: every completed document of every notebook is embedded into the new model's own
collection while search keeps answering from the old vectors; when all are there, search
and ingestion flip to the new model together, and documents that finished on the old model
meanwhile are caught up. The choice is saved to config.toml.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from studyrag.admin.catalog import CatalogEntry, ModelCatalog
from studyrag.admin.config import ConfigService, redact_url
from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.vectors.base import VectorStore
from studyrag.db.jobs import JOB_RUNNING
from studyrag.db.models import Job
from studyrag.db.repo import COMPLETED
from studyrag.errors import (
    Cancelled,
    LLMUnavailable,
    ModelSwitchInProgress,
    StudyRAGError,
)
from studyrag.schemas.admin import ModelsPublic, ModelSwitch, ModelSwitched

if TYPE_CHECKING:
    from studyrag.backends.llm.base import ChatModel
    from studyrag.config import Settings
    from studyrag.services import Services

log = logging.getLogger(__name__)

SWITCH_EMBEDDING = "switch_embedding"
PULL_PROBE_WAIT = 2.0


class ModelService:
    """Models of one running app (or of a CLI command's services)."""

    def __init__(self, services: Services, config: ConfigService) -> None:
        self.services = services
        self.config = config
        self.catalog = ModelCatalog(services.settings)
        self._chat_lock = asyncio.Lock()
        # Embedder and store built by a switch request, handed to its job.
        self._prepared: dict[str, tuple[Embedder, VectorStore]] = {}
        # What switches opened and this service closes at shutdown (models, stores).
        self._switched: list[Any] = []
        services.jobs.register(SWITCH_EMBEDDING, self._run_embedding_switch, cancellable=True)

    # --- listing -----------------------------------------------------------------------
    async def list(self) -> ModelsPublic:
        """Chat and embedding models of every provider, with availability and the active ones."""
        chat, embedding = await asyncio.gather(self.catalog.chat(), self.catalog.embedding())
        return ModelsPublic(
            chat=[e.public(active=self._chat_active(e)) for e in chat.entries],
            embedding=[e.public(active=self._embedding_active(e)) for e in embedding.entries],
            providers=chat.providers + embedding.providers,
            switching_job_id=await self.switching_job(),
        )

    def _chat_active(self, entry: CatalogEntry) -> bool:
        model = self._current_chat()
        if model is None or model.provider != entry.provider:
            return False
        if entry.provider == "llamacpp":
            path = getattr(model, "model_path", None)
            return path is not None and entry.path is not None and str(path) == str(entry.path)
        return _full(model.model_name) == _full(entry.name)

    def _embedding_active(self, entry: CatalogEntry) -> bool:
        embedder = self.services.embedder
        if embedder.provider != entry.provider:
            return False
        if entry.provider == "ollama":
            return embedder.model_name == f"ollama:{entry.value}"
        return embedder.model_name == entry.value

    def _current_chat(self) -> ChatModel | None:
        engine = self.services.chat
        return engine.model if engine is not None else self.services.chat_model

    async def switching_job(self) -> str | None:
        """The embedding switch job that is running now, if any."""
        for job in await self.services.jobs.jobs.unfinished():
            if job.kind == SWITCH_EMBEDDING:
                return job.id
        return None

    # --- switching ---------------------------------------------------------------------
    async def switch(self, request: ModelSwitch) -> ModelSwitched:
        """Switch the chat model now, or start the job that switches the embedding model."""
        if request.role == "chat":
            return await self._switch_chat(request)
        return await self._switch_embedding(request)

    async def _switch_chat(self, request: ModelSwitch) -> ModelSwitched:
        from studyrag.backends.llm.auto import abuild_chat_model

        entry = await self.catalog.resolve("chat", request.model, request.provider)
        async with self._chat_lock:
            old = self._current_chat()
            previous = {"provider": old.provider, "name": old.model_name} if old else {}
            changes = chat_changes(entry)
            llm = self.services.settings.llm.model_copy(
                update={k.split(".", 1)[1]: v for k, v in changes.items()}
            )
            model = await abuild_chat_model(llm)
            try:
                await model.start()  # loads the weights: nothing changes if this fails
                if entry.provider == "ollama":
                    await model.validate_model()  # type: ignore[attr-defined]
                self.config.update(changes, allow_model_keys=True)
            except BaseException:
                await model.aclose()
                raise
            engine = self.services.chat
            if engine is not None:
                await engine.slot.swap(model)
            else:
                self._switched.append(model)
            self.services.chat_model = model
            log.info("chat model switched to %s (%s)", model.model_name, model.provider)
        return ModelSwitched(
            role="chat",
            provider=entry.provider,
            name=entry.name,
            status="active",
            previous=previous,
        )

    async def _switch_embedding(self, request: ModelSwitch) -> ModelSwitched:
        entry = await self.catalog.resolve("embedding", request.model, request.provider)
        current = self.services.embedder
        previous = {"provider": current.provider, "name": current.model_name}
        if self._embedding_active(entry):
            return ModelSwitched(
                role="embedding",
                provider=entry.provider,
                name=entry.name,
                status="active",
                previous=previous,
            )
        running = await self.switching_job()
        if running is not None:
            raise ModelSwitchInProgress(
                "An embedding-model switch is running already.", details={"job_id": running}
            )
        # Loaded now, so a model that cannot load is refused before any job exists.
        embedder, vectors = await self._open_space(entry.provider, entry.value)
        jobs = self.services.jobs
        job = await jobs.jobs.create(
            kind=SWITCH_EMBEDDING,
            notebook_id=None,
            provider=entry.provider,
            model=entry.value,
            name=entry.name,
            previous=previous,
        )
        self._prepared[job.id] = (embedder, vectors)
        await jobs.runner.submit(job.id)
        return ModelSwitched(
            role="embedding",
            provider=entry.provider,
            name=entry.name,
            status="reindexing",
            job_id=job.id,
            previous=previous,
        )

    async def _open_space(self, provider: str, model: str) -> tuple[Embedder, VectorStore]:
        from studyrag.backends.registry import build_embedder, build_vector_store

        settings = self.services.settings
        embeddings = settings.embeddings.model_copy(update={"provider": provider, "model": model})
        shadow = settings.model_copy(update={"embeddings": embeddings})
        embedder = build_embedder(shadow)
        try:
            await embedder.start()
            vectors = build_vector_store(shadow, model_name=embedder.model_name)
            await vectors.start()
        except BaseException:
            await embedder.aclose()
            raise
        return embedder, vectors

    async def _run_embedding_switch(self, job: Job) -> None:
        """Fill the new model's collection, flip search and ingestion to it, catch up."""
        s = self.services
        provider, model = str(job.meta["provider"]), str(job.meta["model"])
        prepared = self._prepared.pop(job.id, None)
        # Resumed after a restart: built again from what the job recorded.
        embedder, vectors = prepared or await self._open_space(provider, model)
        pipeline = s.pipeline
        pipeline.shadow_vectors.append(vectors)
        copied: set[str] = set()
        flipped = False
        try:
            while True:  # documents completed meanwhile are copied too
                todo = [i for i in await s.documents.all_ids(status=COMPLETED) if i not in copied]
                if not todo:
                    break
                for n, document_id in enumerate(todo, start=1):
                    if s.jobs.is_cancelled(job.id):
                        raise Cancelled("The embedding-model switch was cancelled.")
                    try:
                        await pipeline.copy_vectors(document_id, embedder, vectors)
                    except StudyRAGError as exc:  # deleted meanwhile: nothing to copy
                        log.info("switch: %s skipped (%s)", document_id, exc.message)
                    copied.add(document_id)
                    await self._progress(
                        job, len(copied), len(copied) + len(todo) - n, phase="copying"
                    )
            # The flip: both at once, between two awaits, so no search mixes the two.
            old_embedder, old_vectors = s.embedder, s.vectors
            pipeline.use_embeddings(embedder, vectors)
            s.search.semantic.use(embedder, vectors)
            s.embedder, s.vectors = embedder, vectors
            flipped = True
            await self._progress(job, len(copied), len(copied), phase="catching_up")
            pipeline.shadow_vectors.remove(vectors)
            self.config.update(
                {"embeddings.provider": provider, "embeddings.model": model},
                allow_model_keys=True,
            )
            for document_id in copied:
                await s.documents.set_status(
                    document_id, COMPLETED, expect=COMPLETED, embedding_model=embedder.model_name
                )
            # Batches that were embedding with the old model when it flipped: catch them up.
            await pipeline.wait_batches(old_vectors)
            for doc in await s.documents.by_status([COMPLETED]):
                if doc.embedding_model != embedder.model_name:
                    try:
                        await pipeline.reindex(doc.id)
                    except StudyRAGError as exc:
                        log.info("switch catch-up: %s skipped (%s)", doc.id, exc.message)
            self._switched.extend([embedder, vectors])
            for old in (old_embedder, old_vectors):
                if old in self._switched:
                    self._switched.remove(old)
                await old.aclose()
            log.info("embedding model switched to %s", embedder.model_name)
        except BaseException as exc:
            if not flipped:
                # Search never left the old model: drop the half-filled new space.
                if vectors in pipeline.shadow_vectors:
                    pipeline.shadow_vectors.remove(vectors)
                await embedder.aclose()
                await vectors.aclose()
            if isinstance(exc, Cancelled):
                return  # JobService.run records the job as cancelled
            raise

    async def _progress(self, job: Job, done: int, total: int, *, phase: str) -> None:
        """Reported on the job's channel and in its metadata. phase: copying (search still
        on the old model), catching_up (flipped: the new model answers)."""
        percent = round(100.0 * done / max(1, total), 1)
        self.services.jobs.events.emit(
            {
                "type": "job_progress",
                "job_id": job.id,
                "notebook_id": None,
                "done": done,
                "total": total,
                "progress": percent,
                "phase": phase,
            },
            notebook_id=None,
            job_id=job.id,
        )
        await self.services.jobs.jobs.set_status(
            job.id,
            JOB_RUNNING,
            meta={**job.meta, "progress": percent, "done": done, "total": total, "phase": phase},
        )

    # --- pulling -----------------------------------------------------------------------
    async def check_ollama(self) -> str:
        """Ollama's URL when it answers; LLMUnavailable (CHAT_001) saying what to do if not."""
        return await check_ollama(self.services.settings)

    def pull(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Progress of an Ollama pull: {status, completed, total} steps."""
        return pull(self.services.settings, name)

    async def aclose(self) -> None:
        """Close the models a switch opened (the first ones are closed by open_services)."""
        engine = self.services.chat
        if engine is not None:
            await engine.slot.aclose()
        for item in reversed(self._switched):
            await item.aclose()
        self._switched.clear()
        for embedder, vectors in self._prepared.values():
            await embedder.aclose()
            await vectors.aclose()
        self._prepared.clear()


def chat_changes(entry: CatalogEntry) -> dict[str, Any]:
    if entry.provider == "llamacpp":
        return {"llm.provider": "llamacpp", "llm.model_path": entry.value}
    return {"llm.provider": entry.provider, "llm.model": entry.value}


def _full(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


async def check_ollama(settings: Settings) -> str:
    """Ollama's URL when it answers; LLMUnavailable (CHAT_001) saying what to do if not."""
    from studyrag.backends.llm.ollama import probe_ollama

    url = settings.llm.ollama_url
    if await probe_ollama(url, wait=PULL_PROBE_WAIT) is None:
        shown = redact_url(url)
        raise LLMUnavailable(
            f"Ollama is not reachable at {shown}, so nothing can be pulled; start it with "
            "`ollama serve`, or set llm.ollama_url (STUDYRAG_LLM__OLLAMA_URL) to where it runs.",
            details={"url": shown, "setting": "llm.ollama_url"},
            hint="Start Ollama (`ollama serve`) or point llm.ollama_url at it "
            "(`studyrag config set llm.ollama_url URL`), then pull again.",
        )
    return url


async def pull(settings: Settings, name: str) -> AsyncIterator[dict[str, Any]]:
    """Pull `name` into Ollama, yielding {status, completed, total} steps."""
    from studyrag.backends.llm.ollama import OllamaChatModel

    model = OllamaChatModel(settings.llm, model=name)
    async with model:
        async for step in model.pull_model(name):
            yield step
