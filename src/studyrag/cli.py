"""The `studyrag` command line (typer + rich). Heavy imports stay inside commands."""

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

app = typer.Typer(
    name="studyrag",
    help="Chat with your study documents: ingest, search, ask. Offline by default.",
    no_args_is_help=True,
    add_completion=False,
)
documents_app = typer.Typer(
    help="List, show, delete or reindex ingested documents.", no_args_is_help=True
)
app.add_typer(documents_app, name="documents")

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


def _settings(data_dir: Path | None) -> Settings:
    from studyrag.config import load_settings

    return load_settings(data_dir=data_dir)


def _setup_logging(level: str = "WARNING") -> None:
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


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, as_json: bool = False) -> T:
    """Run a coroutine; a StudyRAGError becomes a clear message and exit code 1."""
    from studyrag.errors import StudyRAGError

    try:
        return asyncio.run(coro_fn())
    except StudyRAGError as exc:
        if as_json:
            _emit(exc.to_dict())
        else:
            err_console.print(f"[bold red]error[/] [{exc.error_code}] {exc.message}")
            if exc.hint:
                err_console.print(f"  [dim]{exc.hint}[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _run_command(
    data_dir: Path | None,
    fn: Callable[[Services], Awaitable[T]],
    *,
    as_json: bool = False,
    with_chat: bool = False,
) -> T:
    """The body of most commands: logging, settings, services open for `fn`, errors shown."""
    _setup_logging()
    settings = _settings(data_dir)
    return _run(lambda: _with_services(settings, fn, with_chat=with_chat), as_json=as_json)


async def _with_services(
    settings: Settings, fn: Callable[[Services], Awaitable[T]], *, with_chat: bool = False
) -> T:
    from studyrag.services import open_services

    async with open_services(settings, with_chat=with_chat) as services:
        return await fn(services)


# --- ingest ------------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Ingest files and folders (PDF, DOCX, HTML, TXT, Markdown)."""

    async def go(services: Services) -> list[Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from studyrag.ingest.pipeline import Progress as Step
        from studyrag.ingest.pipeline import expand_paths

        files = expand_paths(paths)
        if not files:
            return []
        results = []
        if as_json:
            nb = await services.notebooks.default_id()
            for f in files:
                r = await services.pipeline.ingest_file(f, notebook_id=nb)
                _emit(_ingest_json(r))
                results.append(r)
            return results
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stage]}"),
            console=err_console,
            transient=False,
        ) as bar:
            task = bar.add_task("ingesting", total=len(files), stage="")

            def on_progress(step: Step) -> None:
                bar.update(task, stage=f"{step.filename}: {step.step} {step.percent:.0f}%")

            nb = await services.notebooks.default_id()
            for f in files:
                r = await services.pipeline.ingest_file(f, notebook_id=nb, progress=on_progress)
                results.append(r)
                bar.advance(task)
                _print_ingest(r)
        return results

    results = _run_command(data_dir, go, as_json=as_json)
    if not results:
        err_console.print("[yellow]No files found.[/]")
        raise typer.Exit(1)
    failed = sum(1 for r in results if not r.ok)
    if not as_json:
        done = sum(1 for r in results if r.status == "completed")
        dup = sum(1 for r in results if r.status == "duplicate")
        err_console.print(f"{done} ingested, {dup} already present, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _ingest_json(r: Any) -> dict[str, Any]:
    return {
        "document_id": r.document_id,
        "filename": r.filename,
        "status": r.status,
        "error_code": r.error_code,
        "error": r.error,
        "chunks": r.chunks,
        "timings": {k: round(v, 4) for k, v in r.timings.items()},
    }


def _print_ingest(r: Any) -> None:
    if r.status == "completed":
        console.print(f"[green]✓[/] {r.filename} — {r.chunks} chunks  [dim]{r.document_id}[/]")
    elif r.status == "duplicate":
        console.print(f"[yellow]=[/] {r.filename} — unchanged, {r.error}")
    else:
        console.print(f"[red]✗[/] {r.filename} — [{r.error_code}] {r.error}")


# --- search ------------------------------------------------------------------------------
@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    mode: Annotated[str, typer.Option(help="hybrid, semantic or lexical.")] = "hybrid",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many passages.")] = 5,
    file_type: Annotated[
        list[str] | None, typer.Option("--file-type", help="Only these types (pdf, md, ...).")
    ] = None,
    document: Annotated[
        list[str] | None, typer.Option("--document", help="Only these document ids.")
    ] = None,
    group: Annotated[bool, typer.Option("--group", help="Best passage per document.")] = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Search ingested documents: ranked passages with page, section and score."""

    async def go(services: Services) -> Any:
        from studyrag.retrieval.types import SearchFilters

        filters = SearchFilters(document_ids=document or None, file_types=file_type or None)
        return await services.search.search(
            query, mode=mode, top_k=top_k, filters=filters, group_by_document=group
        )

    response = _run_command(data_dir, go, as_json=as_json)
    if as_json:
        for r in response.results:
            _emit(
                {
                    "rank": r.rank,
                    "score": r.score,
                    "document_id": r.document_id,
                    "filename": r.filename,
                    "page": r.page,
                    "section": r.section,
                    "chunk_id": r.chunk_id,
                    "text": r.text,
                    "snippet": r.snippet,
                    "start": r.start,
                    "end": r.end,
                }
            )
        return
    if not response.results:
        console.print("[yellow]No matching passages.[/] Try other words or `--mode semantic`.")
        return
    for r in response.results:
        where = (
            r.filename
            + (f", p. {r.page}" if r.page else "")
            + (f" — {r.section}" if r.section else "")
        )
        console.print(f"[bold]{r.rank}.[/] [cyan]{where}[/]  [dim]score {r.score:.3f}[/]")
        snippet = r.snippet.replace("[", "\\[").replace("<mark>", "[bold yellow]")
        console.print("   " + snippet.replace("</mark>", "[/]"))
    console.print(f"[dim]{response.mode} search, {response.timings.get('total_ms', 0):.0f} ms[/]")


# --- documents ---------------------------------------------------------------------------
@documents_app.command("list")
def documents_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List documents."""

    async def go(services: Services) -> Any:
        return await services.documents.list(status=status, limit=10_000)

    docs, total = _run_command(data_dir, go, as_json=as_json)
    if as_json:
        for d in docs:
            _emit(_doc_json(d))
        return
    from rich.table import Table

    table = Table("id", "filename", "type", "status", "chunks", "error")
    for d in docs:
        table.add_row(
            d.id,
            d.filename,
            d.file_type,
            d.status,
            str(d.chunk_count),
            f"[{d.error_code}] {d.error}" if d.error_code else "",
        )
    console.print(table)
    console.print(f"[dim]{total} documents[/]")


def _doc_json(d: Any) -> dict[str, Any]:
    from studyrag.schemas.documents import DocumentPublic

    out = DocumentPublic.from_row(d).model_dump(mode="json")
    out["document_id"] = out.pop("id")
    out["chunks"] = out["chunk_count"]
    return out


@documents_app.command("show")
def documents_show(document_id: str, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Show one document and where its chunks are."""

    async def go(services: Services) -> Any:
        return await services.documents.get(document_id), await services.documents.chunks_for(
            document_id
        )

    doc, chunks = _run_command(data_dir, go, as_json=as_json)
    data = _doc_json(doc)
    data["chunk_locations"] = [
        {
            "chunk_id": c.id,
            "index": c.index,
            "page": c.page,
            "section": c.section,
            "tokens": c.token_count,
        }
        for c in chunks
    ]
    if as_json:
        _emit(data)
        return
    for key in (
        "document_id",
        "filename",
        "file_type",
        "status",
        "chunks",
        "embedding_model",
        "size",
        "sha256",
        "error_code",
        "error",
        "created_at",
    ):
        console.print(f"[bold]{key}[/]: {data.get(key)}")
    console.print(f"[bold]metadata[/]: {data.get('metadata')}")
    for c in chunks[:50]:
        console.print(
            f"  #{c.index} p.{c.page or '-'} {c.section or '(no section)'} "
            f"[dim]{c.token_count} tokens[/]"
        )


@documents_app.command("delete")
def documents_delete(
    document_ids: list[str], data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """Delete documents and every chunk of them."""

    async def go(services: Services) -> None:
        await _delete_each(document_ids, services.pipeline.delete_document, "document_id", as_json)

    _run_command(data_dir, go, as_json=as_json)


async def _delete_each(
    ids: list[str], delete: Callable[[str], Awaitable[Any]], key: str, as_json: bool
) -> None:
    for item in ids:
        await delete(item)
        if as_json:
            _emit({key: item, "status": "deleted", "error_code": None})
        else:
            console.print(f"[green]deleted[/] {item}")


@documents_app.command("reindex")
def documents_reindex(
    document_ids: Annotated[list[str] | None, typer.Argument(help="Ids; none = all.")] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Recompute embeddings with the current embedding model."""

    async def go(services: Services) -> list[Any]:
        ids = document_ids or await services.documents.all_ids(status="completed")
        out = []
        for d in ids:
            r = await services.pipeline.reindex(d)
            out.append(r)
            if as_json:
                _emit(_ingest_json(r))
            else:
                _print_ingest(r)
        return out

    results = _run_command(data_dir, go, as_json=as_json)
    if any(not r.ok for r in results):
        raise typer.Exit(1)


# --- ask / chat --------------------------------------------------------------------------
conversations_app = typer.Typer(help="List, show or delete conversations.", no_args_is_help=True)
app.add_typer(conversations_app, name="conversations")
models_app = typer.Typer(help="List, pull or choose chat models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


async def _answer(
    services: Services,
    question: str,
    *,
    conversation_id: str | None,
    template: str | None,
    mode: str | None,
    top_k: int | None,
    max_tokens: int | None,
    stream_to: Console | None,
) -> dict[str, Any]:
    """Run one question through the engine; print tokens as they come when asked to."""
    from contextlib import aclosing

    from studyrag.chat.engine import DoneEvent, ErrorEvent, TokenEvent
    from studyrag.errors import GenerationFailed

    assert services.chat is not None
    events = services.chat.stream_message(
        question,
        conversation_id=conversation_id,
        template=template,
        search_mode=mode,
        top_k=top_k,
        max_tokens=max_tokens,
    )
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TokenEvent) and stream_to is not None:
                stream_to.print(event.delta, end="", markup=False, highlight=False, soft_wrap=True)
            elif isinstance(event, ErrorEvent):
                raise event.exception or GenerationFailed(event.message)
            elif isinstance(event, DoneEvent):
                return event.to_dict()
    raise GenerationFailed("The answer ended without a result.")


def _ask_json(done: dict[str, Any]) -> dict[str, Any]:
    message = done["message"]
    keys = (
        "index",
        "document_id",
        "filename",
        "page",
        "section",
        "chunk_id",
        "score",
        "excerpt",
        "cited",
    )
    return {
        "answer": message["content"],
        "conversation_id": done["conversation"]["id"],
        "message_id": message["id"],
        "status": message.get("status"),
        "sources": [{k: s.get(k) for k in keys} for s in message.get("sources", [])],
        "metadata": done["metadata"],
    }


def _print_sources(done: dict[str, Any]) -> None:
    sources = done["message"].get("sources", [])
    if not sources:
        return
    console.print("\n[bold]Sources[/]")
    for s in sources:
        where = s["filename"] + (f", p. {s['page']}" if s.get("page") else "")
        if s.get("section"):
            where += f" — {s['section']}"
        tag = "" if s.get("cited", True) else " [dim](context only)[/]"
        console.print(f"  [{s['index']}] [cyan]{where}[/]{tag}", highlight=False)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Continue this conversation.")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template, e.g. RAG_DETAILED.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="hybrid, semantic or lexical.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Passages to retrieve.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Answer length cap.")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Ask a question; the answer streams with numbered citations, then its sources."""

    async def go(services: Services) -> dict[str, Any]:
        return await _answer(
            services,
            question,
            conversation_id=conversation,
            template=template,
            mode=mode,
            top_k=top_k,
            max_tokens=max_tokens,
            stream_to=None if as_json else console,
        )

    done = _run_command(data_dir, go, with_chat=True, as_json=as_json)
    if as_json:
        _emit(_ask_json(done))
        return
    console.print()
    _print_sources(done)
    meta = done["metadata"]
    stats = meta.get("stats") or {}
    console.print(
        f"[dim]conversation {done['conversation']['id']} · {meta.get('model', '')} via "
        f"{meta.get('provider', '')} · {stats.get('completion_tokens', 0)} tokens[/]"
    )


@app.command()
def chat(
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Continue this conversation.")
    ] = None,
    template: Annotated[str | None, typer.Option(help="Prompt template.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Interactive chat that keeps the conversation (/new starts over, /quit leaves)."""

    async def go(services: Services) -> None:
        from studyrag.errors import StudyRAGError

        current = conversation
        if current:
            await services.conversations.get(current)
        console.print("[bold]StudyRAG chat[/] — ask about your documents. /new, /quit")
        while True:
            try:
                line = await asyncio.to_thread(console.input, "[bold green]you>[/] ")
            except EOFError:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit", "/q"):
                break
            if line == "/new":
                current = None
                console.print("[dim]new conversation[/]")
                continue
            console.print("[bold blue]studyrag>[/] ", end="")
            try:
                done = await _answer(
                    services,
                    line,
                    conversation_id=current,
                    template=template,
                    mode=None,
                    top_k=None,
                    max_tokens=None,
                    stream_to=console,
                )
            except StudyRAGError as exc:
                err_console.print(f"\n[bold red]error[/] [{exc.error_code}] {exc.message}")
                continue
            current = done["conversation"]["id"]
            console.print()
            _print_sources(done)
        if current:
            console.print(f"[dim]conversation {current} saved[/]")

    _run_command(data_dir, go, with_chat=True)


@conversations_app.command("list")
def conversations_list(
    status: Annotated[str | None, typer.Option(help="active, archived or deleted.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (≤ 100).")] = 50,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List conversations, most recently updated first."""

    async def go(services: Services) -> Any:
        return await services.conversations.list(status=status, limit=limit)

    page = _run_command(data_dir, go, as_json=as_json)
    items = [c.to_dict() for c in page.items]
    if as_json:
        for c in items:
            _emit(c)
        return
    from rich.table import Table

    table = Table("id", "title", "status", "messages", "updated")
    for c in items:
        table.add_row(
            c["id"], c["title"], c["status"], str(c["message_count"]), str(c["updated_at"])
        )
    console.print(table)
    console.print(f"[dim]{page.total} conversations[/]")


@conversations_app.command("show")
def conversations_show(
    conversation_id: str,
    limit: Annotated[int, typer.Option(help="Messages to show (latest).")] = 100,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Show a conversation and its messages."""

    async def go(services: Services) -> Any:
        conv = await services.conversations.get(conversation_id)
        msgs = await services.conversations.list_messages(
            conversation_id, limit=min(limit, 100), order="desc"
        )
        return conv, sorted(msgs.items, key=lambda m: m.seq)

    conv, msgs = _run_command(data_dir, go, as_json=as_json)
    if as_json:
        _emit(conv.to_dict() | {"messages": [m.to_dict() for m in msgs]})
        return
    c = conv.to_dict()
    console.print(f"[bold]{c['title']}[/] [dim]{c['id']} · {c['status']}[/]")
    for m in msgs:
        who = "[green]you[/]" if m.role == "user" else "[blue]studyrag[/]"
        flag = "" if m.status == "complete" else f" [yellow]({m.status})[/]"
        console.print(f"{who}{flag}: ", end="")
        console.print(m.content, markup=False, highlight=False)


@conversations_app.command("delete")
def conversations_delete(
    conversation_ids: list[str], data_dir: DataDir = None, as_json: JsonOut = False
) -> None:
    """Soft-delete conversations (purged later by cleanup)."""

    async def go(services: Services) -> None:
        await _delete_each(
            conversation_ids, services.conversations.soft_delete, "conversation_id", as_json
        )

    _run_command(data_dir, go, as_json=as_json)


@models_app.command("list")
def models_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Models the configured chat provider can serve."""
    _setup_logging()
    settings = _settings(data_dir)

    async def go() -> tuple[str, str, list[Any]]:
        from studyrag.backends.registry import build_chat_model

        model = await build_chat_model(settings)
        async with model:
            return model.provider, model.model_name, await model.list_models()

    provider, current, models = _run(go, as_json=as_json)
    for m in models:
        if as_json:
            _emit(
                {"provider": provider, "name": m.name, "size": m.size, "current": m.name == current}
            )
        else:
            mark = "[green]*[/]" if m.name == current else " "
            size = f"{m.size / 1e6:.0f} MB" if m.size else ""
            console.print(f"{mark} {m.name}  [dim]{provider} {size}[/]")


@models_app.command("pull")
def models_pull(name: str, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Download a model into the Ollama server (provider ollama)."""
    _setup_logging()
    settings = _settings(data_dir)

    async def go() -> None:
        from studyrag.backends.llm.ollama import OllamaChatModel

        model = OllamaChatModel(settings.llm, model=name)
        async with model:
            last = ""
            async for step in model.pull_model(name):
                if as_json:
                    _emit({"model": name} | dict(step))
                elif step.get("status") != last or step.get("total"):
                    total, done = step.get("total") or 0, step.get("completed") or 0
                    pct = f" {100 * done / total:.0f}%" if total else ""
                    err_console.print(f"{step.get('status', '')}{pct}", highlight=False)
                    last = step.get("status", "")

    _run(go, as_json=as_json)
    if not as_json:
        console.print(f"[green]pulled[/] {name}; use it with `studyrag models use {name}`")


@models_app.command("use")
def models_use(
    name: Annotated[str, typer.Argument(help="A model name, or a path to a .gguf file.")],
    provider: Annotated[str | None, typer.Option(help="llamacpp, ollama, openai or auto.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Choose the chat model; saved in <data dir>/config.toml and loaded at every start."""
    from studyrag.config import save_settings
    from studyrag.errors import ConfigError

    settings = _settings(data_dir)
    updates: dict[str, Any] = {}
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            err_console.print(f"[bold red]error[/] [CONFIG_001] No GGUF file at {path}.")
            raise typer.Exit(1)
        updates = {"provider": provider or "llamacpp", "model_path": str(path)}
    else:
        updates = {
            "model": name,
            "provider": provider
            or (settings.llm.provider if settings.llm.provider != "llamacpp" else "ollama"),
        }
    if updates["provider"] not in ("llamacpp", "ollama", "openai", "auto"):
        raise ConfigError(f"Unknown provider {updates['provider']!r}.")
    path_saved = save_settings(settings, {"llm": updates})
    console.print(f"[green]saved[/] llm = {updates} in {path_saved}")


# --- serve -------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Start the HTTP/WebSocket server."""
    from studyrag.app import create_app
    from studyrag.app import serve as run_server

    settings = _settings(data_dir)
    _setup_logging(settings.log_level)
    run_server(
        create_app(settings),
        host=host or settings.api.host,
        port=port or settings.api.port,
        log_level=settings.log_level.lower(),
        ws_max_size=settings.api.ws_max_frame_bytes * 4,
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
