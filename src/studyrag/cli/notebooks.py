"""`studyrag notebooks list|create|rename|delete|export|import`: one notebook per course or
project, and its archive to move it between machines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import (
    ApiKeyOpt,
    DataDir,
    JsonOut,
    Server,
    console,
    emit,
    err_console,
    find_notebook_on_server,
    remote_only,
    run_command,
    running_server,
    server_error,
    show_error,
    unknown_notebook,
)

if TYPE_CHECKING:
    from studyrag.services import Services

app = typer.Typer(help="List, create, rename or delete notebooks.", no_args_is_help=True)

NameOrId = Annotated[str, typer.Argument(help="The notebook's name, id or id start.")]


@app.command("list")
def notebooks_list(
    data_dir: DataDir = None, as_json: JsonOut = False, api_key: ApiKeyOpt = None
) -> None:
    """Every notebook with its sources, chats and size (those you may see, on a server)."""
    from studyrag.schemas.notebooks import NotebookPublic

    server = running_server(data_dir, api_key)
    listed = _on_server(server, "GET", "/api/notebooks", as_json=as_json)
    if listed is not None:
        items = [NotebookPublic.model_validate(nb) for nb in listed["items"]]
    else:

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
    api_key: ApiKeyOpt = None,
) -> None:
    """Create a notebook; add documents with `studyrag ingest PATH --notebook NAME`."""
    from studyrag.schemas.notebooks import NotebookPublic

    server = running_server(data_dir, api_key)
    body = {"name": name, "description": description}
    made = _on_server(server, "POST", "/api/notebooks", as_json=as_json, json=body)
    if made is not None:
        nb = NotebookPublic.model_validate(made)
    else:

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
    api_key: ApiKeyOpt = None,
) -> None:
    """Rename a notebook."""
    from studyrag.schemas.notebooks import NotebookPublic

    server = running_server(data_dir, api_key)
    there = _find_on_server(server, notebook, as_json=as_json)
    if there is not None:
        path = f"/api/notebooks/{there['id']}"
        renamed = _on_server(server, "PUT", path, as_json=as_json, json={"name": new_name})
        nb = NotebookPublic.model_validate(renamed)
    else:

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
    api_key: ApiKeyOpt = None,
) -> None:
    """Delete a notebook with its documents, files, vectors and conversations."""
    from studyrag.schemas.notebooks import NotebookPublic

    server = running_server(data_dir, api_key)
    there = _find_on_server(server, notebook, as_json=as_json)
    if there is not None:
        assert server is not None
        if not yes and not as_json:
            _confirm_delete(NotebookPublic.model_validate(there))
        accepted = _on_server(server, "DELETE", f"/api/notebooks/{there['id']}", as_json=as_json)
        assert accepted is not None
        status = _wait_for_job(server, accepted["job_id"], as_json=as_json)
        if as_json:
            emit({"notebook_id": there["id"], "status": status, "job_id": accepted["job_id"]})
        else:
            console.print(
                f"[green]deleted[/] {there['name']} ({there['id'][:8]})"
                f" [dim]by the server at {server.url}[/]"
            )
        return

    async def describe(services: Services) -> Any:
        return await services.notebooks.public(await services.notebooks.resolve(notebook))

    if not yes and not as_json:
        _confirm_delete(run_command(data_dir, describe))

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


def _confirm_delete(nb: Any) -> None:
    typer.confirm(
        f"Delete {nb.name!r} with its {nb.documents} documents and {nb.conversations} "
        "conversations?",
        abort=True,
    )


def _on_server(
    server: Server | None, method: str, path: str, *, as_json: bool, **request: Any
) -> Any:
    """The running server's JSON answer to one request; None when no server runs (or it does
    not answer), so the command works on the library in this process. The server's error (a
    missing or refused key included) is shown and ends the command."""
    import httpx

    if server is None:
        return None
    try:
        with server.client() as http:
            reply = http.request(method, path, **request)
    except httpx.HTTPError:
        return None
    if reply.status_code >= 400:
        server_error(reply, as_json)
    return reply.json()


def _find_on_server(server: Server | None, ref: str, *, as_json: bool) -> dict[str, Any] | None:
    """The notebook `ref` names on the running server; None when no server runs. A notebook
    the server does not show the caller ends the command (NB_001)."""
    import httpx

    if server is None:
        return None
    try:
        with server.client() as http:
            found = find_notebook_on_server(http, ref, as_json=as_json)
    except httpx.HTTPError:
        return None
    if found is None:
        show_error(unknown_notebook(ref, server.url), as_json=as_json)
        raise typer.Exit(1)
    return found


def _wait_for_job(server: Server, job_id: str, *, as_json: bool, timeout: float = 600.0) -> str:
    """Poll the server's job until it ends; its final status."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        job = _on_server(server, "GET", f"/api/jobs/{job_id}", as_json=as_json)
        status = str(job["status"]) if job else "unknown"
        if status not in ("queued", "running") or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


@app.command("export")
def notebooks_export(
    notebook: NameOrId,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The archive to write (default: <name>.studyrag.zip)."),
    ] = None,
    vectors: Annotated[
        bool, typer.Option("--vectors", help="Include the vectors (else recomputed on import).")
    ] = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Write a notebook, with its documents, originals and conversations, to one archive."""
    server = running_server(data_dir, api_key)
    result = _export_via_server(server, notebook, output, vectors, as_json) if server else None
    via = server.url if server is not None and result is not None else None
    if result is None:

        async def go(services: Services) -> Any:
            from studyrag.notebooks.archive import archive_filename

            nb = await services.notebooks.resolve(notebook)
            target = output or Path(archive_filename(nb.name))
            size = await services.archives.export_to(nb.id, target, vectors=vectors)
            return {"notebook_id": nb.id, "name": nb.name, "path": str(target), "size": size}

        result = run_command(data_dir, go, as_json=as_json)
    result["server"] = via
    if as_json:
        emit(result)
    else:
        console.print(
            f"[green]exported[/] {result['name']} to {result['path']} "
            f"({_size(int(result['size']))})" + (f" [dim]by the server at {via}[/]" if via else "")
        )


@app.command("import")
def notebooks_import(
    archive: Annotated[Path, typer.Argument(help="An archive made by `notebooks export`.")],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Restore an archive as a new notebook (named as it was, or "name (2)" when taken)."""
    if not archive.is_file():
        err_console.print(f"[bold red]error[/] {archive} does not exist or is not a file.")
        raise typer.Exit(1)
    server = running_server(data_dir, api_key)
    job = _import_via_server(server, archive, as_json) if server else None
    via = server.url if server is not None and job is not None else None
    if job is None:

        def progress(event: dict[str, Any]) -> None:
            if event.get("type") == "job_progress" and not as_json:
                err_console.print(
                    f"[dim]importing: {event['done']}/{event['total']} "
                    f"({event['progress']:.0f} %)[/]"
                )

        async def go(services: Services) -> Any:
            job = await services.archives.import_file(archive, on_event=progress)
            return await services.jobs.public(job.id)

        public = run_command(data_dir, go, as_json=as_json)
        job = public.model_dump(mode="json", exclude={"documents"})
    _print_import(job, as_json, via)


def _print_import(job: dict[str, Any], as_json: bool, via: str | None) -> None:
    meta = job.get("metadata") or {}
    if job.get("status") != "completed":
        from studyrag.errors import StudyRAGError

        show_error(
            StudyRAGError(f"The import failed: {job.get('error') or job.get('status')}."),
            as_json=as_json,
        )
        raise typer.Exit(1)
    if as_json:
        emit(
            {
                "job_id": job["id"],
                "status": job["status"],
                "notebook_id": meta.get("notebook_id"),
                "name": meta.get("notebook_name"),
                "documents": meta.get("documents"),
                "conversations": meta.get("conversations"),
                "vectors": meta.get("vectors"),
                "server": via,
            }
        )
        return
    console.print(
        f"[green]imported[/] {meta.get('notebook_name')} ({str(meta.get('notebook_id'))[:8]}): "
        f"{meta.get('documents')} documents, {meta.get('conversations')} conversations"
        f" (vectors {meta.get('vectors')})" + (f" [dim]by the server at {via}[/]" if via else "")
    )


def _export_via_server(
    server: Server, notebook: str, output: Path | None, vectors: bool, as_json: bool
) -> dict[str, Any] | None:
    """Stream the archive from the running server; None to export in this process."""
    import httpx

    from studyrag.notebooks.archive import archive_filename

    try:
        with server.client() as http:
            nb = find_notebook_on_server(http, notebook, as_json=as_json)
            if nb is None:
                remote_only(server, unknown_notebook(notebook, server.url), as_json=as_json)
                return None  # the local path says why (NB_001)
            target = output or Path(archive_filename(nb["name"]))
            tmp = target.with_name(f".{target.name}.part")
            size = 0
            params = {"vectors": "true"} if vectors else {}
            with http.stream("GET", f"/api/notebooks/{nb['id']}/export", params=params) as reply:
                if reply.status_code != 200:
                    reply.read()
                    server_error(reply, as_json)
                with tmp.open("wb") as fh:
                    for block in reply.iter_bytes(1 << 20):
                        size += len(block)
                        fh.write(block)
            tmp.replace(target)
    except httpx.HTTPError:
        return None
    return {"notebook_id": nb["id"], "name": nb["name"], "path": str(target), "size": size}


def _import_via_server(server: Server, archive: Path, as_json: bool) -> dict[str, Any] | None:
    """Upload the archive to the running server and follow its job; None when unreachable."""
    import json

    import httpx

    try:
        with server.client(read=3600) as http:
            with archive.open("rb") as fh:
                reply = http.post(
                    "/api/notebooks/import", files={"file": (archive.name, fh, "application/zip")}
                )
            if reply.status_code != 202:
                server_error(reply, as_json)
            job_id = reply.json()["job_id"]
            with http.stream("GET", f"/api/jobs/{job_id}/events") as events:
                event = ""
                for line in events.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "job_progress" and not as_json:
                        data = json.loads(line.split(":", 1)[1])
                        err_console.print(
                            f"[dim]importing: {data['done']}/{data['total']} "
                            f"({data['progress']:.0f} %)[/]"
                        )
            job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()
            return job
    except httpx.HTTPError:
        return None


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)
