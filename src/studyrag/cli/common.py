"""What every command shares: consoles, options, settings, logging, running and errors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from studyrag.config import Settings
    from studyrag.services import Services

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where StudyRAG keeps its data (default: $STUDYRAG_DATA_DIR or ./data).",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def settings_for(data_dir: Path | None) -> Settings:
    """Settings from --data-dir (when given), the environment and the saved TOML file."""
    from studyrag.config import load_settings

    return load_settings(data_dir=data_dir)


def setup_logging(level: str = "WARNING") -> None:
    """Log to stderr through rich; offline model loading; quiet chatty libraries."""
    from rich.logging import RichHandler

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    for noisy in ("chromadb", "httpx", "sentence_transformers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON object as one line of stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, as_json: bool = False) -> T:
    """Run a coroutine; a StudyRAGError becomes a clear message and exit code 1."""
    from studyrag.errors import StudyRAGError

    try:
        return asyncio.run(coro_fn())
    except StudyRAGError as exc:
        if as_json:
            emit(exc.to_dict())
        else:
            err_console.print(f"[bold red]error[/] [{exc.error_code}] {exc.message}")
            if exc.hint:
                err_console.print(f"  [dim]{exc.hint}[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def run_command(
    data_dir: Path | None,
    fn: Callable[[Services], Awaitable[T]],
    *,
    as_json: bool = False,
    with_chat: bool = False,
) -> T:
    """The body of most commands: logging, settings, services open for `fn`, errors shown."""
    setup_logging()
    settings = settings_for(data_dir)
    return run(lambda: with_services(settings, fn, with_chat=with_chat), as_json=as_json)


async def with_services(
    settings: Settings, fn: Callable[[Services], Awaitable[T]], *, with_chat: bool = False
) -> T:
    """Open the services for one command, run `fn` with them, close them."""
    from studyrag.services import open_services

    async with open_services(settings, with_chat=with_chat) as services:
        return await fn(services)


async def delete_each(
    ids: list[str], delete: Callable[[str], Awaitable[Any]], key: str, as_json: bool
) -> None:
    """Delete items one by one, reporting each."""
    for item in ids:
        await delete(item)
        if as_json:
            emit({key: item, "status": "deleted", "error_code": None})
        else:
            console.print(f"[green]deleted[/] {item}")
