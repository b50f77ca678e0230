"""`studyrag documents`: list, show, delete or reindex ingested documents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import (
    DataDir,
    JsonOut,
    NotebookOpt,
    console,
    delete_each,
    emit,
    run_command,
    short_ids,
)
from studyrag.cli.ingest import ingest_json, print_ingest

if TYPE_CHECKING:
    from studyrag.services import Services

_ID_HELP = "A document id, or any unique start of one (at least 4 characters)."

app = typer.Typer(help="List, show, delete or reindex ingested documents.", no_args_is_help=True)


@app.command("list")
def documents_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List the documents of a notebook (the default one unless --notebook)."""

    async def go(services: Services) -> Any:
        notebook_id = await services.notebooks.resolve_id(notebook)
        docs, total = await services.documents.list(
            notebook_id=notebook_id, status=status, limit=10_000
        )
        return docs, total, services.settings.data_dir

    docs, total, where = run_command(data_dir, go, as_json=as_json)
    if as_json:
        for d in docs:
            emit(doc_json(d))
        return
    if not docs:
        which = f"{status} documents" if status else "documents"
        console.print(f"No {which} in {where}.", highlight=False, soft_wrap=True)
        if not status:
            console.print("Add some with [bold]studyrag ingest PATH[/].")
        return
    from rich.table import Table

    short = short_ids(d.id for d in docs)
    table = Table("id", "filename", "type", "status", "chunks", "error")
    table.columns[0].no_wrap = True
    for d in docs:
        table.add_row(
            short[d.id],
            d.filename,
            d.file_type,
            d.status,
            str(d.chunk_count),
            f"[{d.error_code}] {d.error}" if d.error_code else "",
        )
    console.print(table)
    console.print(
        f"[dim]{total} documents in {where} · `studyrag documents show ID` takes any unique "
        "start of an id[/]",
        highlight=False,
        soft_wrap=True,
    )


def doc_json(d: Any) -> dict[str, Any]:
    """A document as the HTTP API shows it, with the CLI's historical key names added."""
    from studyrag.schemas.documents import DocumentPublic

    out = DocumentPublic.from_row(d).model_dump(mode="json")
    out["document_id"] = out.pop("id")
    out["chunks"] = out["chunk_count"]
    return out


@app.command("show")
def documents_show(
    document_id: Annotated[str, typer.Argument(help=_ID_HELP)],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Show one document and where its chunks are."""

    async def go(services: Services) -> Any:
        doc_id = await services.documents.resolve_id_prefix(document_id)
        return await services.documents.get(doc_id), await services.documents.chunks_for(doc_id)

    doc, chunks = run_command(data_dir, go, as_json=as_json)
    data = doc_json(doc)
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
        emit(data)
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


@app.command("delete")
def documents_delete(
    document_ids: Annotated[list[str], typer.Argument(help=_ID_HELP)],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete documents and every chunk of them."""

    async def go(services: Services) -> None:
        ids = [await services.documents.resolve_id_prefix(d) for d in document_ids]
        await delete_each(ids, services.pipeline.delete_document, "document_id", as_json)

    run_command(data_dir, go, as_json=as_json)


@app.command("reindex")
def documents_reindex(
    document_ids: Annotated[
        list[str] | None, typer.Argument(help="Ids or unique id starts; none = all.")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Recompute chunk contexts and embeddings with the current embedding model."""

    async def go(services: Services) -> list[Any]:
        from studyrag.ingest.page_headings import CONTEXTS_OUTDATED

        ids = [await services.documents.resolve_id_prefix(d) for d in document_ids or []]
        ids = ids or await services.documents.all_ids(status="completed")
        out = []
        for d in ids:
            r = await services.pipeline.reindex(d)
            out.append(r)
            if as_json:
                emit(ingest_json(r))
            else:
                print_ingest(r)
        if not document_ids and all(r.ok for r in out):
            # Every document now has the contexts of this version (migration 0004).
            await services.notebooks.repo.clear_state(CONTEXTS_OUTDATED)
        return out

    results = run_command(data_dir, go, as_json=as_json)
    if any(not r.ok for r in results):
        raise typer.Exit(1)
