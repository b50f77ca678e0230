"""create_app(settings) -> FastAPI; the lifespan owns every backend."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from studyrag import __version__
from studyrag.api.errors import RequestIdMiddleware, install_error_handlers
from studyrag.config import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, with_chat: bool = True) -> FastAPI:
    """The ASGI app; nothing is built until the lifespan starts."""
    from studyrag.api.routes import documents, health, search

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from studyrag.services import open_services

        cfg = settings or load_settings()
        async with open_services(cfg, with_chat=with_chat) as services:
            app.state.services = services
            await services.embedder.start()
            log.info("StudyRAG %s ready; data in %s", __version__, cfg.data_dir)
            yield

    app = FastAPI(title="StudyRAG", version=__version__, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(documents.router)
    app.include_router(search.router)
    return app
