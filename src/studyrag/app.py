"""create_app(settings) -> FastAPI; the lifespan owns every backend."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import uvicorn
from fastapi import FastAPI
from starlette.types import Scope

from studyrag import __version__
from studyrag.api.errors import (
    BodyLimitMiddleware,
    RequestIdMiddleware,
    install_error_handlers,
    max_body_bytes,
)
from studyrag.config import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, with_chat: bool = True) -> FastAPI:
    """The ASGI app; nothing is built until the lifespan starts."""
    from studyrag.api.main import api_router, area_of

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from studyrag.api.runtime import open_chat_runtime
        from studyrag.services import open_services

        cfg = settings or load_settings()
        async with AsyncExitStack() as stack:
            services = await stack.enter_async_context(open_services(cfg, with_chat=with_chat))
            app.state.services = services
            await services.embedder.start()
            # Entered after the services, so it closes first: sockets (1001), then answers.
            app.state.chat_runtime = await stack.enter_async_context(open_chat_runtime(services))
            log.info("StudyRAG %s ready; data in %s", __version__, cfg.data_dir)
            yield

    app = FastAPI(title="StudyRAG", version=__version__, lifespan=lifespan)
    app.add_middleware(
        BodyLimitMiddleware, limit=lambda scope: _body_limit(scope, settings), area_of=area_of
    )
    # Added last, so it runs first: the request id is known when a body is refused.
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app, area_of=area_of)
    app.include_router(api_router)
    return app


def _body_limit(scope: Scope, settings: Settings | None) -> int:
    """The chat body limit of the running app's settings."""
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    cfg = services.settings if services is not None else settings
    return max_body_bytes(cfg) if cfg is not None else 1 << 20


async def close_websockets(app: FastAPI) -> None:
    """Close every chat WebSocket with 1001 (going away); a no-op before start-up."""
    runtime = getattr(app.state, "chat_runtime", None)
    if runtime is not None:
        await runtime.ws.aclose()


class StudyRAGServer(uvicorn.Server):
    """uvicorn, but WebSockets are closed with 1001 before uvicorn closes them with 1012."""

    def __init__(self, config: uvicorn.Config, *, app: FastAPI) -> None:
        super().__init__(config)
        self.studyrag_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Say goodbye on every chat socket, then shut down as uvicorn does."""
        await close_websockets(self.studyrag_app)
        await super().shutdown(sockets)


def serve(app: FastAPI, *, host: str, port: int, **options: object) -> None:
    """Run `app` under uvicorn with the graceful WebSocket shutdown (blocks)."""
    config = uvicorn.Config(app, host=host, port=port, **options)  # type: ignore[arg-type]
    StudyRAGServer(config, app=app).run()
