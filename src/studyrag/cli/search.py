"""`studyrag search`: ranked passages with page, section and score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import (
    ApiKeyOpt,
    DataDir,
    JsonOut,
    NotebookOpt,
    Server,
    answer_error,
    console,
    emit,
    empty_library,
    run_command,
    running_server,
    show_error,
    start_embedder,
)

if TYPE_CHECKING:
    from studyrag.services import Services


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    mode: Annotated[str, typer.Option(help="hybrid, semantic or lexical.")] = "hybrid",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many passages.")] = 5,
    file_type: Annotated[
        list[str] | None, typer.Option("--file-type", help="Only these types (pdf, md, ...).")
    ] = None,
    document: Annotated[
        list[str] | None,
        typer.Option("--document", help="Only these documents (ids or unique id starts)."),
    ] = None,
    group: Annotated[bool, typer.Option("--group", help="Best passage per document.")] = False,
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Search ingested documents: ranked passages with page, section and score."""

    async def go(services: Services) -> Any:
        from studyrag.retrieval.types import SearchFilters

        ids = [await services.documents.resolve_id_prefix(d) for d in document or []]
        filters = SearchFilters(
            document_ids=ids or None,
            file_types=file_type or None,
            notebook_id=await services.notebooks.resolve_id(notebook),
        )
        problem = await empty_library(services, filters.notebook_id)
        if problem is not None:
            # The request is checked first (an empty query is still SEARCH_001), lexically:
            # loading the embedding model to search nothing would take seconds.
            await services.search.search(query, mode="lexical", top_k=top_k, filters=filters)
            raise problem
        if mode in ("hybrid", "semantic"):
            await start_embedder(services)
        return await services.search.search(
            query, mode=mode, top_k=top_k, filters=filters, group_by_document=group
        )

    # A server running for this data directory has its models loaded: ask it (seconds of
    # loading saved), as the `ollama` CLI does. Document id starts are resolved locally.
    response = server = None
    if not document:
        server = running_server(data_dir, api_key)
        if server is not None:
            response = _ask_server(server, query, mode, top_k, file_type, group, notebook, as_json)
    via = server.url if server is not None and response is not None else None
    if response is None:
        response = run_command(data_dir, go, as_json=as_json)
    if as_json:
        for r in response.results:
            emit(
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
    served = f" by the server at {via}" if via else ""
    console.print(
        f"[dim]{response.mode} search, {response.timings.get('total_ms', 0):.0f} ms{served}[/]"
    )


def _ask_server(
    server: Server,
    query: str,
    mode: str,
    top_k: int,
    file_types: list[str] | None,
    group: bool,
    notebook: str | None,
    as_json: bool,
) -> Any:
    """The server's answer, or None to search in this process instead (server unreachable,
    or nothing found without a key: the local path explains an empty notebook)."""
    import httpx

    from studyrag.schemas.search import SearchResponsePublic

    body: dict[str, Any] = {
        "query": query,
        "mode": mode,
        "top_k": top_k,
        "group_by_document": group,
        "filters": {"file_types": file_types} if file_types else None,
    }
    if notebook:
        body["notebook_id"] = notebook
    try:
        reply = httpx.post(
            f"{server.url}/api/search", json=body, headers=server.headers, timeout=30
        )
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        try:
            error = reply.json()
        except ValueError:
            return None
        if not isinstance(error, dict) or "error_code" not in error:
            return None
        show_error(answer_error(error, status=reply.status_code), as_json=as_json)
        raise typer.Exit(1)
    response = SearchResponsePublic.model_validate(reply.json())
    # Nothing found: this process explains an empty notebook, but not in place of a
    # multi-user server (a key was sent): it would search as the local owner.
    return response if response.results or server.api_key else None
