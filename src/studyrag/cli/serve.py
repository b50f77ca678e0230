"""`studyrag serve`: the HTTP, SSE and WebSocket server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import DataDir, err_console, settings_for, setup_logging

if TYPE_CHECKING:
    from studyrag.config import Settings


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Start the HTTP/WebSocket server."""
    from studyrag.api.slow_clients import header_deadline_protocol
    from studyrag.api.ws.frames import TRANSPORT_QUEUE, transport_max_bytes
    from studyrag.app import create_app
    from studyrag.app import serve as run_server

    settings = settings_for(data_dir)
    setup_logging(settings.log_level, settings.log.format)
    err_console.print(f"StudyRAG data directory: {settings.data_dir}", highlight=False)
    run_server(
        create_app(settings),
        host=host or settings.api.host,
        port=port or settings.api.port,
        log_level=settings.log_level.lower(),
        # uvicorn's loggers go through ours (JSON or rich); the app logs each request itself,
        # with its request id, route and duration, instead of uvicorn's access line.
        log_config=None,
        access_log=False,
        # Frames over the app's limit must reach it (to get an error frame, not close 1009).
        ws_max_size=transport_max_bytes(settings.api.ws_max_frame_bytes),
        ws_max_queue=TRANSPORT_QUEUE,
        timeout_graceful_shutdown=10,
        # Slow clients (docs/operations.md): headers within a deadline, bounded in size.
        http=header_deadline_protocol(settings.api.header_timeout_seconds),
        timeout_keep_alive=settings.api.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.api.max_header_bytes,
        # The client's address and scheme as the reverse proxy saw them (api.trusted_proxies).
        **proxy_options(settings),
    )


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's X-Forwarded-* handling: believed from `api.trusted_proxies` only."""
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.api.trusted_proxies)}
