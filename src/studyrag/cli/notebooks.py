"""`studyrag notebooks list|create|rename|delete`: one notebook per course or project."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import DataDir, JsonOut, console, emit, err_console, run_command

if TYPE_CHECKING:
    from studyrag.services import Services

app = typer.Typer(help="List, create, rename or delete notebooks.", no_args_is_help=True)

NameOrId = Annotated[str, typer.Argument(help="The notebook's name, id or id start.")]


@app.command("list")
def notebooks_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Every notebook with its sources, chats and size."""

    async def go(services: Services) -> Any:
        return await services.notebooks.list_public()

    items = run_command(data_dir, go, as_json=as_json)
    if as_json:
        for nb in items:
            emit(nb.model_dump(mode="json"))
        return
    from rich.table import Table

    table = Table("id", "name", "sources", "chats", "size", box=None, header_style="bold")
    for nb in items:
        name = f"{nb.name} [dim](default)[/]" if nb.is_default else nb.name
        table.add_row(
            nb.id[:8], name, str(nb.documents), str(nb.conversations), _size(nb.size_bytes)
        )
    console.print(table)


@app.command("create")
def notebooks_create(
    name: Annotated[str, typer.Argument(help="A name such as 'Biology 101'.")],
    description: Annotated[str, typer.Option(help="What the notebook is for.")] = "",
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a notebook; add documents with `studyrag ingest PATH --notebook NAME`."""

    async def go(services: Services) -> Any:
        nb = await services.notebooks.create(name, description)
        return await services.notebooks.public(nb)

    nb = run_command(data_dir, go, as_json=as_json)
    if as_json:
        emit(nb.model_dump(mode="json"))
        return
    console.print(f"[green]created[/] {nb.name} ({nb.id[:8]})")
    err_console.print(f'[dim]Add documents: studyrag ingest PATH --notebook "{nb.name}"[/]')


@app.command("rename")
def notebooks_rename(
    notebook: NameOrId,
    new_name: Annotated[str, typer.Argument(help="The new name.")],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Rename a notebook."""

    async def go(services: Services) -> Any:
        found = await services.notebooks.resolve(notebook)
        nb = await services.notebooks.update(found.id, name=new_name)
        return await services.notebooks.public(nb)

    nb = run_command(data_dir, go, as_json=as_json)
    if as_json:
        emit(nb.model_dump(mode="json"))
    else:
        console.print(f"[green]renamed[/] {nb.id[:8]} to {nb.name}")


@app.command("delete")
def notebooks_delete(
    notebook: NameOrId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a notebook with its documents, files, vectors and conversations."""

    async def describe(services: Services) -> Any:
        return await services.notebooks.public(await services.notebooks.resolve(notebook))

    if not yes and not as_json:
        nb = run_command(data_dir, describe)
        typer.confirm(
            f"Delete {nb.name!r} with its {nb.documents} documents and {nb.conversations} "
            "conversations?",
            abort=True,
        )

    async def go(services: Services) -> Any:
        found = await services.notebooks.resolve(notebook)
        job = await services.jobs.delete_notebook(found.id)
        # The same job the server runs, here in the foreground.
        await services.jobs.run(job.id)
        return found, await services.jobs.public(job.id)

    found, job = run_command(data_dir, go, as_json=as_json)
    if as_json:
        emit({"notebook_id": found.id, "status": job.status, "job_id": job.id})
    else:
        console.print(f"[green]deleted[/] {found.name} ({found.id[:8]})")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)
