"""The typed bundle of live services, built once by the app lifespan or a CLI command."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from studyrag.auth.quotas import Limits
from studyrag.auth.service import AuthService
from studyrag.backends.broker.base import Broker
from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.registry import (
    build_broker,
    build_embedder,
    build_job_runner,
    build_vector_store,
)
from studyrag.backends.vectors.base import VectorStore
from studyrag.config import Settings
from studyrag.db.conversations import ConversationRepo
from studyrag.db.jobs import JobRepo
from studyrag.db.notebooks import NotebookRepo
from studyrag.db.repo import COMPLETED, DocumentRepo
from studyrag.db.session import Database
from studyrag.db.usage import UsageRepo
from studyrag.ingest.originals import OriginalStore
from studyrag.ingest.page_headings import CONTEXTS_OUTDATED
from studyrag.ingest.pipeline import IngestionPipeline, vector_metadata
from studyrag.jobs.events import EventPublisher
from studyrag.jobs.inprocess import InProcessJobRunner
from studyrag.jobs.service import JobService
from studyrag.notebooks.archive import NotebookArchives
from studyrag.notebooks.service import NotebookService
from studyrag.observability.metrics import Metrics
from studyrag.retrieval.lexical import LexicalIndex
from studyrag.retrieval.search import SearchService
from studyrag.retrieval.semantic import SemanticIndex

if TYPE_CHECKING:
    from studyrag.admin.config import ConfigService
    from studyrag.admin.models import ModelService
    from studyrag.backends.llm.base import ChatModel
    from studyrag.chat.conversations import ConversationManager
    from studyrag.chat.engine import ChatEngine

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    documents: DocumentRepo
    embedder: Embedder
    vectors: VectorStore
    pipeline: IngestionPipeline
    search: SearchService
    conversations: ConversationManager
    notebooks: NotebookService
    jobs: JobService
    broker: Broker
    originals: OriginalStore
    metrics: Metrics
    archives: NotebookArchives
    auth: AuthService
    limits: Limits
    chat_model: ChatModel | None = None
    chat: ChatEngine | None = None
    config: ConfigService | None = None
    models: ModelService | None = None


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    with_chat: bool = False,
    with_jobs: bool = False,
    chat_model: ChatModel | None = None,
    embedder: Embedder | None = None,
    metrics: Metrics | None = None,
    bound_host: str | None = None,
) -> AsyncIterator[Services]:
    """Open the database (migrated and reconciled), the embedder, the vectors, maybe the LLM.

    `with_jobs` starts the background job runner and resumes what a stop left unfinished
    (the server does; a CLI command runs its own work in the foreground). `bound_host`
    (the server's address) chooses the auth mode when it is auto.
    """
    from studyrag.chat.conversations import ConversationManager

    metrics = metrics or Metrics()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        db = Database(settings.database_url, echo=settings.database.echo)
        stack.push_async_callback(db.aclose)
        await db.migrate()
        repo = DocumentRepo(db)
        notebook_repo = NotebookRepo(db)
        notebooks = NotebookService(notebook_repo)
        await notebooks.default()
        originals = OriginalStore(settings.files_dir, shared=settings.ingest.files_dir is not None)
        embedder = embedder or build_embedder(settings)
        stack.push_async_callback(embedder.aclose)
        # The collection is named after the model, which the vectors need before loading.
        vectors = build_vector_store(settings, model_name=embedder.model_name)
        await stack.enter_async_context(vectors)
        pipeline = IngestionPipeline(
            repo=repo,
            embedder=embedder,
            vectors=vectors,
            settings=settings.ingest,
            originals=originals,
            default_notebook=notebooks.default_id,
            metrics=metrics,
        )
        await pipeline.reconcile()
        await _tag_old_vectors(notebook_repo, repo, vectors)
        await _warn_outdated_contexts(notebook_repo)
        broker = await stack.enter_async_context(build_broker(settings))
        events = EventPublisher(broker)
        await events.start()
        stack.push_async_callback(events.aclose)
        # A CLI command runs its jobs in the foreground (JobService.run): it never queues them
        # for the server's workers, which would run them a second time.
        runner = (
            build_job_runner(settings)
            if with_jobs
            else InProcessJobRunner(workers=settings.ingest.job_workers)
        )
        job_repo = JobRepo(db)
        jobs = JobService(
            pipeline=pipeline,
            documents=repo,
            jobs=job_repo,
            notebooks=notebook_repo,
            runner=runner,
            events=events,
            metrics=metrics,
        )
        archives = NotebookArchives(
            settings=settings.archive,
            imports_dir=settings.imports_dir,
            shared=settings.ingest.files_dir is not None,
            notebooks=notebooks,
            documents=repo,
            conversations=ConversationRepo(db),
            pipeline=pipeline,
            embedder=embedder,
            vectors=vectors,
            jobs=jobs,
            job_repo=job_repo,
            events=events,
        )
        search = SearchService(
            repo=repo,
            lexical=LexicalIndex(db),
            semantic=SemanticIndex(embedder, vectors),
            settings=settings.search,
            metrics=metrics,
        )
        conversations = ConversationManager(db)
        conversations.on_change = lambda kind, conv: events.emit(
            {
                "type": kind,
                "notebook_id": conv.notebook_id,
                "conversation": conv.model_dump(mode="json"),
            },
            notebook_id=conv.notebook_id,
            job_id=None,
        )
        auth = AuthService(db, settings, notebooks, bound_host=bound_host or settings.api.host)
        limits = Limits.open(settings, usage=UsageRepo(db), multi_user=auth.mode == "multi-user")
        stack.push_async_callback(limits.aclose)
        services = Services(
            settings=settings,
            db=db,
            documents=repo,
            embedder=embedder,
            vectors=vectors,
            pipeline=pipeline,
            search=search,
            conversations=conversations,
            notebooks=notebooks,
            jobs=jobs,
            broker=broker,
            originals=originals,
            metrics=metrics,
            archives=archives,
            auth=auth,
            limits=limits,
        )
        from studyrag.admin.config import ConfigService
        from studyrag.admin.models import ModelService

        # A server's settings are live (restart-only ones cannot change under it); a CLI
        # command's are the file's.
        services.config = ConfigService(settings, live=with_jobs)
        services.models = ModelService(services, services.config)
        # Closes what model switches opened, after the engine drained its answers.
        stack.push_async_callback(services.models.aclose)
        if with_chat:
            from studyrag.backends.registry import build_chat_model
            from studyrag.chat.engine import ChatEngine

            model = chat_model or await build_chat_model(settings)
            await stack.enter_async_context(model)
            services.chat_model = model
            services.chat = ChatEngine(
                conversations=services.conversations,
                search=search,
                model=model,
                settings=settings,
                metrics=metrics,
            )
            services.config.on_change = _reload_engine(services.chat)
            # Cancelled answers finish their final write in the background: wait for it
            # before the database closes (callbacks run last-in, first-out).
            stack.push_async_callback(services.chat.drain)
        if with_jobs:
            # Closed before the stores: running jobs stop at once and are resumed next time.
            await stack.enter_async_context(runner)
            metrics.watch(metrics.jobs, lambda: float(runner.queued), state="queued")
            metrics.watch(metrics.jobs, lambda: float(runner.running), state="running")
            # Archives a killed upload left (no unfinished import refers to them) go first.
            await archives.clear_orphan_uploads()
            await jobs.start()
            stack.push_async_callback(jobs.aclose)
            await jobs.resume_deletions()
        yield services


def _reload_engine(engine: ChatEngine) -> Callable[[set[str]], None]:
    def changed(keys: set[str]) -> None:
        if {"chat.template", "chat.templates"} & keys:
            engine.reload_templates()

    return changed


async def _warn_outdated_contexts(notebooks: NotebookRepo) -> None:
    """Documents indexed before page headings existed (0004) search as before until reindexed."""
    stale = await notebooks.state(CONTEXTS_OUTDATED)
    if stale:
        log.warning(
            "%s document(s) were indexed before chunks carried their page headings; run "
            "`studyrag documents reindex` once to recompute their contexts and embeddings",
            stale,
        )


async def _tag_old_vectors(
    notebooks: NotebookRepo, documents: DocumentRepo, vectors: VectorStore
) -> None:
    """Vectors stored before notebooks existed get their notebook id (once, after 0003)."""
    notebook_id = await notebooks.state("vectors_untagged")
    if not notebook_id:
        return
    ids = await documents.all_ids(status=COMPLETED)
    for document_id in ids:
        doc = await documents.get(document_id)
        chunks = await documents.chunks_for(document_id)
        await vectors.update_metadata(
            [str(c.id) for c in chunks],
            [vector_metadata(doc.id, doc.notebook_id, doc.file_type, c.index) for c in chunks],
        )
    await notebooks.clear_state("vectors_untagged")
    log.info("tagged the vectors of %d document(s) with their notebook", len(ids))
