"""Backend health: each backend's status, models and versions, and whether the server serves.

Required backends (database, vector store, embedder, broker): when one is down nothing can
be searched, ingested or streamed, so the server is `unavailable` and GET /health answers
503 (a load balancer stops sending it traffic). The chat model is optional: without it,
documents and search still work; the server is then `degraded` (200).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from studyrag import __version__
from studyrag.errors import BackendUnavailable, StudyRAGError

if TYPE_CHECKING:
    from studyrag.services import Services

log = logging.getLogger(__name__)

# A backend that has not answered in this long is down, as far as a health check can tell.
CHECK_TIMEOUT = 5.0


async def _check(name: str, check: Awaitable[dict[str, Any]], *, required: bool) -> dict[str, Any]:
    try:
        report = dict(await asyncio.wait_for(check, CHECK_TIMEOUT))
    except TimeoutError:
        error = BackendUnavailable(f"The {name} did not answer within {CHECK_TIMEOUT:.0f} s.")
        report = {"status": "unavailable", "error": error.to_dict()}
    except StudyRAGError as exc:
        report = {"status": "unavailable", "error": exc.to_dict()}
    except Exception as exc:  # noqa: BLE001 - a health check reports, it never fails
        log.warning("health check of the %s failed: %r", name, exc)
        error = BackendUnavailable(f"The {name} failed its check ({type(exc).__name__}).")
        report = {"status": "unavailable", "error": error.to_dict()}
    report["required"] = required
    return report


async def health_report(services: Services) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 503 when a required backend is down."""
    checks: dict[str, tuple[Awaitable[dict[str, Any]], bool]] = {
        "database": (services.db.health(), True),
        "vectors": (services.vectors.health_check(), True),
        "embeddings": (services.embedder.health_check(), True),
        "broker": (services.broker.health_check(), True),
    }
    if services.chat_model is not None:
        checks["llm"] = (services.chat_model.health_check(), False)
    names = list(checks)
    reports = await asyncio.gather(*(_check(n, checks[n][0], required=checks[n][1]) for n in names))
    by_name = dict(zip(names, reports, strict=True))
    down = [n for n, r in by_name.items() if r.get("status") != "ok"]
    if any(by_name[n]["required"] for n in down):
        status = "unavailable"
    elif down:
        status = "degraded"
    else:
        status = "ok"
    runner = services.jobs.runner
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "down": down,
        **by_name,
        "jobs": {"runner": runner.backend, "queued": runner.queued, "running": runner.running},
        # A local (no login) server on an open address says so here as well as in the log.
        "auth": {"mode": services.auth.mode, "warning": services.auth.warning},
    }
    return (503 if status == "unavailable" else 200), body
