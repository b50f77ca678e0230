"""What every command shares: consoles, options, settings, logging, running and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from studyrag.data_dir import ENV_VAR, default_data_dir

if TYPE_CHECKING:
    import httpx

    from studyrag.config import Settings
    from studyrag.errors import EmptyLibrary, StudyRAGError
    from studyrag.services import Services

T = TypeVar("T")

console = Console()
# Not wrapped by rich: messages carry paths and commands that must stay whole when piped.
err_console = Console(stderr=True, soft_wrap=True)


def data_dir_note() -> str:
    """Which data directory a command uses when not given --data-dir, and how to change it."""
    source = f"from ${ENV_VAR}" if os.environ.get(ENV_VAR) else f"${ENV_VAR} overrides it"
    return f"{default_data_dir()} ({source})"


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help=f"Where StudyRAG keeps its data; default: {data_dir_note()}.",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
NotebookOpt = Annotated[
    str | None,
    typer.Option(
        "--notebook",
        "-n",
        help="Notebook name or id (default: the default notebook).",
        show_default=False,
    ),
]

API_KEY_ENV = "STUDYRAG_API_KEY"
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=API_KEY_ENV,
        help="API key for a multi-user server running on this library (sent as "
        "`Authorization: Bearer`); an admin makes one with `studyrag keys create --user NAME`.",
        show_default=False,
        show_envvar=True,
    ),
]


def settings_for(data_dir: Path | None) -> Settings:
    """Settings from --data-dir (when given), the environment and the saved TOML file."""
    from studyrag.config import load_settings

    return load_settings(data_dir=data_dir)


LOG_FILE = "logs/studyrag.log"


def setup_logging(
    level: str = "WARNING", fmt: str = "text", *, log_file: Path | None = None
) -> None:
    """Log to stderr through rich (or JSON lines), or to `log_file` (the chat REPL: a
    warning printed between a question and its answer is noise on the student's screen);
    offline model loading; quiet libraries."""
    from studyrag.observability.logs import configure_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    configure_logging(level, fmt, console=err_console, log_file=log_file)


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON object as one line of stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# Errors whose shared hint names HTTP routes: what a CLI user is told instead.
_CLI_HINTS = {
    "DOC_004": "List documents with `studyrag documents list`.",
    "DOC_007": "Wait until its ingestion finishes (`studyrag documents show ID`), then try again.",
    "CHAT_005": "List conversations with `studyrag conversations list`, or start one with "
    '`studyrag ask "..."`.',
    "SEARCH_004": "Add documents with `studyrag ingest PATH`.",
}


def cli_hint(exc: StudyRAGError) -> str:
    """The error's hint in CLI words: a class's default hint may name HTTP routes."""
    if exc.hint and exc.hint == type(exc).default_hint:
        return _CLI_HINTS.get(exc.error_code, exc.hint)
    return exc.hint


def show_error(exc: StudyRAGError, *, as_json: bool = False) -> None:
    """An error as the house JSON shape on stdout, or as a message and a hint on stderr."""
    hint = cli_hint(exc)
    if as_json:
        body = exc.to_dict()
        if hint:
            body["details"]["hint"] = hint
        emit(body)
        return
    err_console.print(f"[bold red]error[/] [{exc.error_code}] {exc.message}", highlight=False)
    if hint:
        err_console.print(f"  [dim]{hint}[/]", highlight=False)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, as_json: bool = False) -> T:
    """Run a coroutine; a StudyRAGError becomes a clear message and exit code 1."""
    from studyrag.errors import StudyRAGError

    try:
        return asyncio.run(coro_fn())
    except StudyRAGError as exc:
        show_error(exc, as_json=as_json)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def run_command(
    data_dir: Path | None,
    fn: Callable[[Services], Awaitable[T]],
    *,
    as_json: bool = False,
    with_chat: bool = False,
    log_to_file: bool = False,
) -> T:
    """The body of most commands: logging, settings, services open for `fn`, errors shown.

    `log_to_file`: log records go to <data dir>/logs/studyrag.log instead of the terminal."""
    settings = settings_for(data_dir)
    setup_logging(log_file=settings.data_dir / LOG_FILE if log_to_file else None)
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


@contextlib.contextmanager
def loading(message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while something slow loads, only on a terminal."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(message):
        yield


async def start_embedder(services: Services) -> None:
    """Load the embedding model now, saying so: the first load takes seconds."""
    with loading("Loading the embedding model…"):
        await services.embedder.start()


async def empty_library(services: Services, notebook_id: str | None = None) -> EmptyLibrary | None:
    """EmptyLibrary (SEARCH_004), naming the notebook and the data directory, when nothing in
    the notebook (the default one when None) is searchable."""
    from studyrag.errors import EmptyLibrary

    nb = await services.notebooks.resolve(notebook_id)
    _, completed = await services.documents.list(notebook_id=nb.id, status="completed", limit=1)
    if completed:
        return None
    _, total = await services.documents.list(notebook_id=nb.id, limit=1)
    where = services.settings.data_dir
    flag = "" if nb.is_default else f' --notebook "{nb.name}"'
    if total:
        return EmptyLibrary(
            f"None of the {total} documents of the notebook {nb.name!r} (in {where}) has "
            "finished ingesting.",
            hint=f"See why with `studyrag documents list{flag}`, then "
            f"`studyrag ingest PATH{flag}` again.",
        )
    return EmptyLibrary(
        f"The notebook {nb.name!r} (in {where}) is empty: no document has been ingested yet.",
        hint=f"Add documents with `studyrag ingest PATH{flag}`.",
    )


async def require_documents(services: Services, notebook_id: str | None = None) -> None:
    """Raise EmptyLibrary when nothing in the notebook is searchable yet."""
    problem = await empty_library(services, notebook_id)
    if problem is not None:
        raise problem


def short_ids(ids: Iterable[str], *, min_len: int = 8) -> dict[str, str]:
    """Each id cut to the shortest length (≥ min_len) that keeps the listed ids apart."""
    unique = list(dict.fromkeys(ids))
    length = min_len
    while length < max((len(i) for i in unique), default=0):
        if len({i[:length] for i in unique}) == len(unique):
            break
        length += 2
    return {i: i[:length] for i in unique}


@dataclass(frozen=True)
class Server:
    """A running server this command talks to, and the key it sends (multi-user mode)."""

    url: str
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """`Authorization: Bearer` when a key was given; nothing in local mode."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, *, read: float = 600.0) -> httpx.Client:
        """An HTTP client for this server, sending the key on every request."""
        import httpx

        return httpx.Client(
            base_url=self.url, headers=self.headers, timeout=httpx.Timeout(30, read=read)
        )


def running_server(data_dir: Path | None, api_key: str | None = None) -> Server | None:
    """The server running for this data dir (with the key to send it), None when none runs."""
    from studyrag import local_server

    url = local_server.find(settings_for(data_dir).data_dir)
    return None if url is None else Server(url, api_key or None)


# What a CLI user does about a refused key; the server's own hint names HTTP headers.
_KEY_HINTS = {
    "AUTH_001": "This server is in multi-user mode: pass --api-key KEY or set $"
    + API_KEY_ENV
    + "; an admin makes a key with `studyrag keys create --user NAME`.",
    "AUTH_002": "An admin makes a key with the scope it needs with "
    "`studyrag keys create --user NAME --scopes read,chat,admin` (an admin scope changes the "
    "library; the server's settings also need an admin user).",
}


def answer_error(body: Any, *, status: int = 0) -> StudyRAGError:
    """The server's error answer (house shape) as an error to show, in CLI words for a
    missing or refused key."""
    from studyrag.errors import StudyRAGError

    if not isinstance(body, dict) or "error_code" not in body:
        body = {"error_code": "GEN_001", "message": f"The server answered {status}: {body!r}"[:300]}
    details = dict(body.get("details") or {})
    hint = str(details.pop("hint", "") or "")
    code = str(body.get("error_code"))
    if code in _KEY_HINTS:
        hint = " ".join(h for h in (hint, _KEY_HINTS[code]) if h)
    exc = StudyRAGError(str(body.get("message")), details=details, hint=hint)
    exc.error_code = code
    return exc


def is_refused(reply: Any) -> bool:
    """A 401/403: the key is missing or does not cover the request (never worth doing the
    work in this process instead: the server holds this library)."""
    return int(reply.status_code) in (401, 403)


def ask_server(
    data_dir: Path | None,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    as_json: bool = False,
    timeout: float = 120.0,
    api_key: str | None = None,
) -> tuple[str, Any] | None:
    """(server URL, JSON answer) from the server running for this data dir, or None when
    none runs (or it cannot be reached): the command then works in this process. An error
    answer is shown in the house way and ends the command (exit code 1)."""
    import httpx

    server = running_server(data_dir, api_key)
    if server is None:
        return None
    try:
        reply = httpx.request(
            method, f"{server.url}{path}", json=body, headers=server.headers, timeout=timeout
        )
    except httpx.HTTPError:
        return None
    try:
        answer = reply.json()
    except ValueError:
        return None
    if reply.status_code >= 400:
        if not isinstance(answer, dict) or "error_code" not in answer:
            return None
        show_error(answer_error(answer), as_json=as_json)
        raise typer.Exit(1)
    return server.url, answer


def server_error(reply: Any, as_json: bool) -> NoReturn:
    """Show the server's error answer (house shape) and exit 1."""
    try:
        body = reply.json()
    except ValueError:
        body = {"error_code": "GEN_001", "message": reply.text[:200]}
    show_error(answer_error(body, status=reply.status_code), as_json=as_json)
    raise typer.Exit(1)


def remote_only(server: Server, error: StudyRAGError, *, as_json: bool) -> None:
    """Sent with a key, a request went to a multi-user server: this process must not answer
    in its place (it would read the library as its local owner, every user's notebooks
    included), so `error` is shown and the command ends. Without a key, returns: the
    command answers in this process, whose own checks explain."""
    if server.api_key:
        show_error(error, as_json=as_json)
        raise typer.Exit(1)


def unknown_notebook(ref: str | None, url: str) -> StudyRAGError:
    """NB_001 for a notebook the server does not show the caller."""
    from studyrag.errors import NotebookNotFound

    what = f"no notebook {ref!r}" if ref else "no default notebook for you yet"
    return NotebookNotFound(
        f"The server at {url} has {what}.",
        hint="List them with `studyrag notebooks list`, or name one with --notebook NAME.",
    )


def find_notebook_on_server(
    http: Any, ref: str | None, *, as_json: bool = False
) -> dict[str, Any] | None:
    """The server's notebook that `ref` (name, id or id start) names for the caller, as the
    server resolves it (own first, then shared); the caller's default one when `ref` is None.
    None when there is none (the caller explains); a refused key or an ambiguous name
    (NB_011) is shown and ends the command."""
    listed = http.get("/api/notebooks", params={"ref": ref} if ref and ref.strip() else None)
    if listed.status_code == 404:
        return None
    if listed.status_code != 200:
        server_error(listed, as_json)
    answer = listed.json()
    if ref and ref.strip():
        return dict(answer["items"][0])
    default = answer.get("default_id")
    return next((dict(b) for b in answer["items"] if b["id"] == default), None)
