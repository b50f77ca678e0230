"""Logging: plain (rich) or structured JSON lines, every line tagged with its request id.

STUDYRAG_LOG__FORMAT=json writes one JSON object per line on stderr: `ts`, `level`,
`logger`, `message`, `request_id` (of the request being served, when there is one) and the
record's extra fields; each request's line (logger `studyrag.access`) adds `method`,
`route`, `path`, `status`, `duration_ms` and `client`.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Set by RequestIdMiddleware for the request being served; tasks it starts inherit it.
request_id_var: ContextVar[str | None] = ContextVar("studyrag_request_id", default=None)

# LogRecord's own attributes: whatever else a record carries came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
NOISY = ("chromadb", "httpx", "sentence_transformers", "alembic")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the current request's, else None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on odd extra values."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in body:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "WARNING",
    fmt: str = "text",
    *,
    console: Any = None,
    log_file: Path | None = None,
) -> None:
    """Root logging: rich on stderr (on `console`), or JSON lines when `fmt` is "json";
    to `log_file` instead of stderr when one is given (text lines, or JSON)."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(
            JsonFormatter()
            if fmt == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    elif fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
