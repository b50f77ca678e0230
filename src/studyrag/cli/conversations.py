"""`studyrag conversations`: list, show or delete conversations."""

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

if TYPE_CHECKING:
    from studyrag.services import Services

_ID_HELP = "A conversation id, or any unique start of one (at least 4 characters)."

app = typer.Typer(help="List, show or delete conversations.", no_args_is_help=True)


@app.command("list")
def conversations_list(
    status: Annotated[str | None, typer.Option(help="active, archived or deleted.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (≤ 100).")] = 50,
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List a notebook's conversations (the default one unless --notebook), newest first."""

    async def go(services: Services) -> Any:
        notebook_id = await services.notebooks.resolve_id(notebook)
        page = await services.conversations.list(
            notebook_id=notebook_id, status=status, limit=limit
        )
        return page, services.settings.data_dir

    page, where = run_command(data_dir, go, as_json=as_json)
    items = [c.to_dict() for c in page.items]
    if as_json:
        for c in items:
            emit(c)
        return
    if not items:
        console.print(f"No conversations in {where}.", highlight=False, soft_wrap=True)
        console.print(
            'Start one with [bold]studyrag ask "your question"[/] or [bold]studyrag chat[/].'
        )
        return
    from rich.table import Table

    short = short_ids(c["id"] for c in items)
    table = Table("id", "title", "status", "messages", "updated")
    table.columns[0].no_wrap = True
    for c in items:
        table.add_row(
            short[c["id"]], c["title"], c["status"], str(c["message_count"]), str(c["updated_at"])
        )
    console.print(table)
    console.print(
        f"[dim]{page.total} conversations in {where} · `studyrag conversations show ID` takes "
        "any unique start of an id[/]",
        highlight=False,
        soft_wrap=True,
    )


@app.command("show")
def conversations_show(
    conversation_id: Annotated[str, typer.Argument(help=_ID_HELP)],
    limit: Annotated[int, typer.Option(help="Messages to show (latest).")] = 100,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Show a conversation and its messages."""

    async def go(services: Services) -> Any:
        conv_id = await services.conversations.resolve_id_prefix(conversation_id)
        conv = await services.conversations.get(conv_id)
        msgs = await services.conversations.list_messages(
            conv_id, limit=min(limit, 100), order="desc"
        )
        return conv, sorted(msgs.items, key=lambda m: m.seq)

    conv, msgs = run_command(data_dir, go, as_json=as_json)
    if as_json:
        emit(conv.to_dict() | {"messages": [m.to_dict() for m in msgs]})
        return
    c = conv.to_dict()
    console.print(f"[bold]{c['title']}[/] [dim]{c['id']} · {c['status']}[/]")
    for m in msgs:
        who = "[green]you[/]" if m.role == "user" else "[blue]studyrag[/]"
        flag = "" if m.status == "complete" else f" [yellow]({m.status})[/]"
        console.print(f"{who}{flag}: ", end="")
        console.print(m.content, markup=False, highlight=False)


@app.command("delete")
def conversations_delete(
    conversation_ids: Annotated[list[str], typer.Argument(help=_ID_HELP)],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Soft-delete conversations (purged later by cleanup)."""

    async def go(services: Services) -> None:
        ids = [await services.conversations.resolve_id_prefix(c) for c in conversation_ids]
        await delete_each(ids, services.conversations.soft_delete, "conversation_id", as_json)

    run_command(data_dir, go, as_json=as_json)
