"""The typed bundle of live services, built once by the app lifespan or a CLI command."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from studyrag.backends.embeddings.base import Embedder
from studyrag.backends.registry import build_embedder, build_vector_store
from studyrag.backends.vectors.base import VectorStore
from studyrag.config import Settings
from studyrag.db.repo import DocumentRepo
from studyrag.db.session import Database
from studyrag.ingest.pipeline import IngestionPipeline
from studyrag.retrieval.lexical import LexicalIndex
from studyrag.retrieval.search import SearchService
from studyrag.retrieval.semantic import SemanticIndex

if TYPE_CHECKING:
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
    chat_model: ChatModel | None = None
    chat: ChatEngine | None = None


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    with_chat: bool = False,
    chat_model: ChatModel | None = None,
    embedder: Embedder | None = None,
) -> AsyncIterator[Services]:
    """Open the database (migrated and reconciled), the embedder, the vectors, maybe the LLM."""
    from studyrag.chat.conversations import ConversationManager

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        db = Database(settings.database_url, echo=settings.database.echo)
        stack.push_async_callback(db.aclose)
        await db.migrate()
        repo = DocumentRepo(db)
        embedder = embedder or build_embedder(settings)
        stack.push_async_callback(embedder.aclose)
        # The collection is named after the model, which the vectors need before loading.
        vectors = build_vector_store(settings, model_name=embedder.model_name)
        await stack.enter_async_context(vectors)
        pipeline = IngestionPipeline(
            repo=repo, embedder=embedder, vectors=vectors, settings=settings.ingest
        )
        await pipeline.reconcile()
        search = SearchService(
            repo=repo,
            lexical=LexicalIndex(db),
            semantic=SemanticIndex(embedder, vectors),
            settings=settings.search,
        )
        services = Services(
            settings=settings,
            db=db,
            documents=repo,
            embedder=embedder,
            vectors=vectors,
            pipeline=pipeline,
            search=search,
            conversations=ConversationManager(db),
        )
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
            )
            # Cancelled answers finish their final write in the background: wait for it
            # before the database closes (callbacks run last-in, first-out).
            stack.push_async_callback(services.chat.drain)
        yield services
