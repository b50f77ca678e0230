"""`studyrag ask` (one question) and `studyrag chat` (a REPL that keeps the conversation)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from studyrag.cli.common import (
    ApiKeyOpt,
    DataDir,
    JsonOut,
    NotebookOpt,
    Server,
    answer_error,
    console,
    emit,
    find_notebook_on_server,
    is_refused,
    remote_only,
    require_documents,
    run_command,
    running_server,
    server_error,
    show_error,
    start_embedder,
    unknown_notebook,
)

if TYPE_CHECKING:
    from studyrag.errors import StudyRAGError
    from studyrag.services import Services


async def answer(
    services: Services,
    question: str,
    *,
    conversation_id: str | None,
    template: str | None,
    mode: str | None,
    top_k: int | None,
    max_tokens: int | None,
    stream_to: Console | None,
    notebook_id: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Run one question through the engine; show it live, then as stored, when asked to."""
    from contextlib import ExitStack, aclosing

    from studyrag.chat.engine import DoneEvent, ErrorEvent, TokenEvent
    from studyrag.cli.answer_view import AnswerView
    from studyrag.errors import GenerationFailed

    assert services.chat is not None
    events = services.chat.stream_message(
        question,
        conversation_id=conversation_id,
        template=template,
        search_mode=mode,
        top_k=top_k,
        max_tokens=max_tokens,
        notebook_id=notebook_id,
    )
    with ExitStack() as stack:
        view = stack.enter_context(AnswerView(stream_to, prefix=prefix)) if stream_to else None
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TokenEvent) and view is not None:
                    view.feed(event.delta)
                elif isinstance(event, ErrorEvent):
                    raise event.exception or GenerationFailed(event.message)
                elif isinstance(event, DoneEvent):
                    done = event.to_dict()
                    if view is not None:
                        view.finish(done)
                    return done
    raise GenerationFailed("The answer ended without a result.")


def ask_json(done: dict[str, Any]) -> dict[str, Any]:
    """An answer as the JSON line `ask --json` prints."""
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


def print_sources(done: dict[str, Any]) -> None:
    """The numbered sources under an answer."""
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


def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", "-c", help="Continue this conversation (id or its start)."),
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template, e.g. RAG_DETAILED.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="hybrid, semantic or lexical.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Passages to retrieve.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Answer length cap.")
    ] = None,
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Ask a question; the answer streams with numbered citations, then its sources."""

    async def go(services: Services) -> dict[str, Any]:
        conv_id = conversation and await services.conversations.resolve_id_prefix(conversation)
        scope = await services.conversations.scope(
            conv_id or None, await services.notebooks.resolve_id(notebook) if notebook else None
        )
        await require_documents(services, scope)
        if mode in (None, "hybrid", "semantic"):
            await start_embedder(services)
        return await answer(
            services,
            question,
            conversation_id=conv_id,
            template=template,
            mode=mode,
            top_k=top_k,
            max_tokens=max_tokens,
            stream_to=None if as_json else console,
            notebook_id=scope,
        )

    # A server running for this data directory has both models loaded: ask it, streaming.
    done = server = None
    if conversation is None:
        server = running_server(data_dir, api_key)
        if server is not None:
            options = {"template": template, "search_mode": mode, "top_k": top_k}
            options["max_tokens"] = max_tokens
            done = _ask_server(server, question, notebook, options, as_json=as_json)
    via = server.url if server is not None and done is not None else None
    if done is None:
        done = run_command(data_dir, go, with_chat=True, as_json=as_json)
    if as_json:
        emit(ask_json(done))
        return
    console.print()
    print_sources(done)
    meta = done["metadata"]
    stats = meta.get("stats") or {}
    console.print(
        f"[dim]conversation {done['conversation']['id']} · {meta.get('model', '')} via "
        f"{meta.get('provider', '')} · {stats.get('completion_tokens', 0)} tokens"
        + (f" · answered by the server at {via}" if via else "")
        + "[/]"
    )


def _ask_server(
    server: Server, question: str, notebook: str | None, options: dict[str, Any], *, as_json: bool
) -> dict[str, Any] | None:
    """Stream the answer from the server (SSE); None to answer in this process instead
    (server unreachable, or an empty notebook, which the local path explains)."""

    import httpx

    def fail(error: dict[str, Any]) -> None:
        show_error(answer_error(error), as_json=as_json)
        raise typer.Exit(1)

    from studyrag.cli.answer_view import AnswerView

    view = None if as_json else AnswerView(console)
    try:
        with server.client() as http:
            nb = find_notebook_on_server(http, notebook, as_json=as_json)
            if nb is None:
                remote_only(server, unknown_notebook(notebook, server.url), as_json=as_json)
                return None
            if not nb["documents_completed"]:
                remote_only(server, _empty_on_server(nb, server), as_json=as_json)
                return None
            created = http.post("/api/chat/conversations", json={"notebook_id": nb["id"]})
            if is_refused(created):
                server_error(created, as_json)
            if created.status_code != 201:
                return None
            body = {"message": question, **{k: v for k, v in options.items() if v}}
            cid = created.json()["id"]
            kind, data = _stream_answer(http, cid, body, view)
            if kind == "error":
                fail(data)
            return data
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        if view is not None and view.streamed:
            # Half an answer is on screen: asking again here would repeat it.
            fail({"error_code": "CHAT_001", "message": f"The server stopped answering: {exc}"})
        return None
    return None


NEW = "/new"


def questions(read: Callable[[str], str]) -> Iterator[str]:
    """What the student types at the REPL prompt: questions, and NEW for /new (said on
    screen); it ends at /quit (/exit, /q) or at the end of the input."""
    while True:
        try:
            line = read("[bold green]you>[/] ").strip()
        except EOFError:
            return
        if line in ("/quit", "/exit", "/q"):
            return
        if line == NEW:
            console.print("[dim]new conversation[/]")
        if line:
            yield line


def _empty_on_server(nb: dict[str, Any], server: Server) -> StudyRAGError:
    from studyrag.errors import EmptyLibrary

    return EmptyLibrary(
        f"The notebook {nb['name']!r} on the server at {server.url} has no document that "
        "finished ingesting.",
        hint=f'Add documents with `studyrag ingest PATH --notebook "{nb["name"]}"`.',
    )


def _stream_answer(
    http: Any, cid: str, body: dict[str, Any], view: Any
) -> tuple[str, dict[str, Any]]:
    """("done", the done event) or ("error", the error in the house shape) of one question
    the server answers over SSE; the tokens are fed to `view` (None: not shown)."""
    import json
    from contextlib import nullcontext

    with http.stream("POST", f"/api/chat/stream/{cid}", json=body) as stream:
        if stream.status_code != 200:
            stream.read()
            return "error", dict(stream.json())
        with view if view is not None else nullcontext():
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    if event == "token" and view is not None:
                        view.feed(data["delta"])
                    elif event == "error":
                        return "error", dict(data)
                    elif event == "done":
                        if view is not None:
                            view.finish(data)
                        return "done", dict(data)
    return "error", {"error_code": "CHAT_001", "message": "The server ended the answer early."}


def _chat_via_server(server: Server, notebook: str | None, template: str | None) -> bool:
    """The REPL against the running server, which has the models loaded; False when it
    cannot be used (unreachable; or, without a key, no such notebook: the local path says)."""
    import httpx

    from studyrag.cli.answer_view import AnswerView

    current: str | None = None
    started = False
    try:
        with server.client() as http:
            nb = find_notebook_on_server(http, notebook)
            if nb is None:
                remote_only(server, unknown_notebook(notebook, server.url), as_json=False)
                return False
            started = True
            if not nb["documents_completed"]:
                show_error(_empty_on_server(nb, server))  # documents may be added meanwhile
            console.print(
                "[bold]StudyRAG chat[/] — ask about your documents. /new, /quit "
                f"[dim](answered by the server at {server.url})[/]"
            )
            for line in questions(console.input):
                if line == NEW:
                    current = None
                    continue
                if current is None:
                    made = http.post("/api/chat/conversations", json={"notebook_id": nb["id"]})
                    if made.status_code != 201:
                        server_error(made, False)
                    current = str(made.json()["id"])
                body = {"message": line} | ({"template": template} if template else {})
                view = AnswerView(console, prefix="studyrag> ")
                kind, data = _stream_answer(http, current, body, view)
                if kind == "error":
                    show_error(answer_error(data))
                    continue
                console.print()
                print_sources(data)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        if not started:
            return False
        show_error(
            answer_error(
                {"error_code": "CHAT_001", "message": f"The server stopped answering: {exc}"}
            )
        )
        raise typer.Exit(1) from None
    if current:
        console.print(f"[dim]conversation {current} saved[/]")
    return True


def chat(
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", "-c", help="Continue this conversation (id or its start)."),
    ] = None,
    template: Annotated[str | None, typer.Option(help="Prompt template.")] = None,
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Interactive chat that keeps the conversation (/new starts over, /quit leaves)."""
    # A server running for this data directory has both models loaded: it answers.
    server = running_server(data_dir, api_key) if conversation is None else None
    if server is not None and _chat_via_server(server, notebook, template):
        return

    async def go(services: Services) -> None:
        from studyrag.errors import StudyRAGError

        current = conversation and await services.conversations.resolve_id_prefix(conversation)
        scope = await services.conversations.scope(
            current or None, await services.notebooks.resolve_id(notebook) if notebook else None
        )
        try:
            await require_documents(services, scope)
        except StudyRAGError as exc:
            show_error(exc)  # the REPL still starts: documents may be added meanwhile
        await start_embedder(services)
        console.print("[bold]StudyRAG chat[/] — ask about your documents. /new, /quit")
        lines = questions(console.input)
        # Read in a thread: the event loop goes on with the services' own tasks meanwhile.
        while (line := await asyncio.to_thread(next, lines, None)) is not None:
            if line == NEW:
                current = None
                continue
            try:
                done = await answer(
                    services,
                    line,
                    conversation_id=current,
                    template=template,
                    mode=None,
                    top_k=None,
                    max_tokens=None,
                    stream_to=console,
                    notebook_id=scope,
                    prefix="studyrag> ",
                )
            except StudyRAGError as exc:
                show_error(exc)
                continue
            current = done["conversation"]["id"]
            console.print()
            print_sources(done)
        if current:
            console.print(f"[dim]conversation {current} saved[/]")

    # Warnings (a removed citation marker, a failed rewrite) would land between the prompt
    # and the answer: the REPL logs to the data directory's log file instead.
    run_command(data_dir, go, with_chat=True, log_to_file=True)
