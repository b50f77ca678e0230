"""`studyrag ingest`: files and folders into the library, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import DataDir, JsonOut, console, emit, err_console, run_command

if TYPE_CHECKING:
    from studyrag.services import Services


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
                emit(ingest_json(r))
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
                print_ingest(r)
        return results

    results = run_command(data_dir, go, as_json=as_json)
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


def ingest_json(r: Any) -> dict[str, Any]:
    """One ingestion result as the JSON line `--json` prints."""
    return {
        "document_id": r.document_id,
        "filename": r.filename,
        "status": r.status,
        "error_code": r.error_code,
        "error": r.error,
        "chunks": r.chunks,
        "timings": {k: round(v, 4) for k, v in r.timings.items()},
    }


def print_ingest(r: Any) -> None:
    """One ingestion result as a human line."""
    if r.status == "completed":
        console.print(f"[green]✓[/] {r.filename} — {r.chunks} chunks  [dim]{r.document_id}[/]")
    elif r.status == "duplicate":
        console.print(f"[yellow]=[/] {r.filename} — unchanged, {r.error}")
    else:
        console.print(f"[red]✗[/] {r.filename} — [{r.error_code}] {r.error}")
