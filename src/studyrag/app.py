"""create_app(settings) -> FastAPI; the lifespan owns every backend."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from starlette.types import Scope

from studyrag import __version__
from studyrag.api.cors import AllowListCORSMiddleware
from studyrag.api.errors import (
    BodyLimitMiddleware,
    RequestIdMiddleware,
    install_error_handlers,
    max_body_bytes,
)
from studyrag.api.origin import HostOriginMiddleware
from studyrag.api.security_headers import SecurityHeadersMiddleware
from studyrag.api.telemetry import RequestTelemetryMiddleware
from studyrag.config import Settings, load_settings
from studyrag.observability.metrics import Metrics

if TYPE_CHECKING:
    from studyrag.backends.embeddings.base import Embedder
    from studyrag.backends.llm.base import ChatModel
    from studyrag.services import Services

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    with_chat: bool = True,
    chat_model: ChatModel | None = None,
    embedder: Embedder | None = None,
) -> FastAPI:
    """The ASGI app; nothing is built until the lifespan starts.

    `chat_model` and `embedder` replace the configured ones (tests of the HTTP layer pass
    the fakes of backends/*/fake.py; never an end-to-end test)."""
    from studyrag.api.main import api_router, area_of

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from studyrag.api.runtime import open_chat_runtime
        from studyrag.observability.memory import MemoryWatch
        from studyrag.services import open_services

        cfg = settings or load_settings()
        async with AsyncExitStack() as stack:
            watch = MemoryWatch(
                ratio=cfg.log.memory_warn_ratio, interval=cfg.log.memory_check_seconds
            )
            metrics.memory_limit.set(watch.limit)
            await watch.start()
            stack.push_async_callback(watch.aclose)
            app.state.memory_watch = watch
            bound = str(getattr(app.state, "bind_host", None) or cfg.api.host)
            services = await stack.enter_async_context(
                open_services(
                    cfg,
                    with_chat=with_chat,
                    with_jobs=True,
                    metrics=metrics,
                    chat_model=chat_model,
                    embedder=embedder,
                    bound_host=bound,
                )
            )
            app.state.services = services
            # Multi-user with no user yet: a one-time link makes the first admin (printed by
            # StudyRAGServer once the port is bound).
            app.state.setup_token = await services.auth.start()
            if app.state.setup_token:
                log.warning(
                    "No user exists yet: open the setup link printed at start, or run "
                    "`studyrag users create NAME --admin`."
                )
            await _warm_up(services)
            # Entered after the services, so it closes first: sockets (1001), then answers.
            app.state.chat_runtime = await stack.enter_async_context(open_chat_runtime(services))
            log.info("StudyRAG %s ready; data in %s", __version__, cfg.data_dir)
            yield

    # /docs is the web interface's own page over vendored Swagger UI (api/routes/web.py).
    app = FastAPI(
        title="StudyRAG", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    # One registry per app, never the process-wide default: several apps keep their counts.
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(
        BodyLimitMiddleware, limit=lambda scope: _body_limit(scope, settings), area_of=area_of
    )
    # Inside the Host check: a rebound name gets no CORS answer.
    app.add_middleware(
        AllowListCORSMiddleware, settings=lambda scope: _settings(scope, settings), area_of=area_of
    )
    # Before the body is read: a rebound or cross-site request is refused unread.
    app.add_middleware(
        HostOriginMiddleware, settings=lambda scope: _settings(scope, settings), area_of=area_of
    )
    # Outside the body limit, so its 413s are timed and logged like any other answer.
    app.add_middleware(RequestTelemetryMiddleware)
    # Added last, so it runs first: the request id is known when a body is refused.
    app.add_middleware(RequestIdMiddleware)
    # Outermost: every answer, refusals of the middleware inside included, carries them.
    app.add_middleware(SecurityHeadersMiddleware)
    install_error_handlers(app, area_of=area_of)
    app.include_router(api_router)
    return app


async def _warm_up(services: Services) -> None:
    """Pay the first-query costs (embedder weights, torch kernels, the vector index read from
    disk, SQLite readers) before the server reports ready, not on a student's first search.
    The chat model's weights are loaded by open_services already."""
    import time

    from studyrag.retrieval.types import SearchFilters

    t = time.perf_counter()
    await services.embedder.start()
    filters = SearchFilters(notebook_id=await services.notebooks.default_id())
    await services.search.search("warm up", mode="hybrid", top_k=1, filters=filters)
    log.info("warmed up in %.1f s", time.perf_counter() - t)


def _settings(scope: Scope, settings: Settings | None) -> Settings | None:
    """The running app's settings (those its services were opened with), else the given."""
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    return services.settings if services is not None else settings


def _body_limit(scope: Scope, settings: Settings | None) -> int:
    """The chat body limit of the running app's settings."""
    cfg = _settings(scope, settings)
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
        # The Host check (api/origin.py) allows the names of the address really bound.
        app.state.bind_host = config.host

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then tell CLI commands of this data dir where we are."""
        await super().startup(sockets)
        services = getattr(self.studyrag_app.state, "services", None)
        if self.started and services is not None:
            from studyrag import local_server

            port = self.config.port
            for server in self.servers:  # the real port when 0 was asked for
                for sock in server.sockets:
                    port = sock.getsockname()[1]
            local_server.announce(services.settings.data_dir, host=self.config.host, port=port)
            token = getattr(self.studyrag_app.state, "setup_token", None)
            if token:
                print_setup_link(self.config.host, port, token)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Say goodbye on every chat socket, then shut down as uvicorn does."""
        services = getattr(self.studyrag_app.state, "services", None)
        if services is not None:
            from studyrag import local_server

            local_server.withdraw(services.settings.data_dir)
        await close_websockets(self.studyrag_app)
        await super().shutdown(sockets)


def print_setup_link(host: str, port: int, token: str) -> None:
    """The first admin's one-time link, on the terminal only (never in the log files)."""
    import sys

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    # In the fragment: a browser never sends it to a server or a proxy's access log.
    link = f"http://{shown}:{port}/#/setup/{token}"
    print(
        f"\nNo user exists yet. Create the first admin (once) at:\n  {link}\n"
        "or run: studyrag users create NAME --admin\n",
        file=sys.stderr,
        flush=True,
    )


def serve(app: FastAPI, *, host: str, port: int, **options: object) -> None:
    """Run `app` under uvicorn with the graceful WebSocket shutdown (blocks)."""
    config = uvicorn.Config(app, host=host, port=port, **options)  # type: ignore[arg-type]
    StudyRAGServer(config, app=app).run()
