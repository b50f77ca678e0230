"""`studyrag ingest`: files and folders into the library, with a progress bar.

The whole batch goes through one `IngestionPipeline.ingest_paths` call (many small files share
embedding batches); its progress callbacks drive the bar and the per-file lines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import (
    ApiKeyOpt,
    DataDir,
    JsonOut,
    NotebookOpt,
    console,
    emit,
    err_console,
    run_command,
    running_server,
    settings_for,
    start_embedder,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from studyrag.ingest.pipeline import IngestResult
    from studyrag.ingest.pipeline import Progress as Step
    from studyrag.services import Services

# How each kind of finished file counts in the summary.
_COUNTED = {
    "completed": "ingested",
    "duplicate": "already present",
    "failed": "failed",
    "rejected": "failed",
    "cancelled": "cancelled",
}


@dataclass
class _Run:
    """What one `studyrag ingest` did: results, or what the progress reports said."""

    files: list[Path]
    skipped: list[Path]
    results: list[IngestResult] = field(default_factory=list)
    # The final progress report of each finished file (what is known if the run stops).
    finished: list[Step] = field(default_factory=list)
    queued: int = 0
    stopped: bool = False
    seconds: float = 0.0
    # The notebook the files went to; empty for the default one.
    notebook: str = ""
    # The URL of the server that ingested them, when one ran on the library.
    via: str = ""


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    notebook: NotebookOpt = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Ingest files and folders of PDF, DOCX, HTML, TXT and Markdown (other files are skipped)."""
    from studyrag.ingest.pipeline import walk_paths

    files, skipped = walk_paths(paths)
    if as_json:
        for f in skipped:
            emit(_skipped_json(f))
    if not files:
        names = ", ".join(str(p) for p in paths)
        if skipped:
            err_console.print(
                f"[yellow]No file that can be ingested in {names}[/] ({len(skipped)} skipped: "
                "StudyRAG reads .pdf, .docx, .html/.htm, .txt, .md/.markdown, .png, .jpg/.jpeg)."
            )
        else:
            err_console.print(f"[yellow]No files found in {names}.[/]")
        raise typer.Exit(1)
    started = time.perf_counter()
    if _ingest_on_server(files, skipped, notebook, data_dir, as_json, started, api_key):
        return
    outcome = run_command(
        data_dir,
        lambda services: _ingest(services, files, skipped, as_json, notebook),
        as_json=as_json,
    )
    outcome.seconds = time.perf_counter() - started
    for r in (outcome.results or outcome.finished) if as_json else []:
        emit(ingest_json(r))
    if not as_json or outcome.stopped:
        _print_summary(outcome, settings_for(data_dir).data_dir)
    if outcome.stopped:
        # A worker thread may still be computing embeddings nobody will use: don't wait for
        # it. Everything this process wrote is committed or back in the queue by now.
        console.file.flush()
        err_console.file.flush()
        os._exit(130)
    if any(not r.ok for r in outcome.results):
        raise typer.Exit(1)


def _ingest_on_server(
    files: list[Path],
    skipped: list[Path],
    notebook: str | None,
    data_dir: Path | None,
    as_json: bool,
    started: float,
    api_key: str | None,
) -> bool:
    """A server running on this library holds its vector store open (vectors this process
    wrote would stay invisible to its searches): it adds the files. False when none runs."""
    from studyrag.cli.ingest_remote import ingest_via_server

    server = running_server(data_dir, api_key)
    if server is None:
        return False
    outcome = _Run(files, skipped)
    if not ingest_via_server(server, files, notebook, as_json=as_json, outcome=outcome):
        return False  # it did not answer: this process does the work
    outcome.seconds = time.perf_counter() - started
    if not as_json or outcome.stopped:
        _print_summary(outcome, settings_for(data_dir).data_dir)
    if outcome.stopped:
        raise typer.Exit(130)
    if any(s.step in ("failed", "rejected") for s in outcome.finished):
        raise typer.Exit(1)
    return True


async def _ingest(
    services: Services,
    files: list[Path],
    skipped: list[Path],
    as_json: bool,
    notebook_ref: str | None = None,
) -> _Run:
    """Run the pipeline over `files` with a progress bar; Ctrl-C stops it cleanly."""
    outcome = _Run(files, skipped)
    target = await services.notebooks.resolve(notebook_ref)
    notebook = target.id
    outcome.notebook = "" if target.is_default else target.name
    # Loaded before the bar starts, under its own message: it takes seconds.
    await start_embedder(services)
    bar = None if as_json else _progress_bar()
    task_id = bar.add_task("ingesting", total=len(files), stage="") if bar else None
    from studyrag.ingest.pipeline import STEP_PERCENT

    read = 0
    # Documents of the batch being embedded, and how far each is through its embedding.
    embedding: dict[str, float] = {}
    begin, end = STEP_PERCENT["embedding"], STEP_PERCENT["storing"]

    def on_progress(step: Step) -> None:
        nonlocal read
        if step.final:
            outcome.finished.append(step)
        embedding.pop(step.document_id or "", None)
        if bar is None or task_id is None:
            return
        if step.final:
            bar.advance(task_id)
            print_line(bar, _live_line(step))
        elif step.step == "extracting":
            # Files are read ahead of the embedding batches: this moves while the bar waits.
            read += 1
            bar.update(task_id, stage=f"reading {read}/{len(files)}: {step.filename}")
        elif step.step == "embedding" and step.document_id:
            embedding[step.document_id] = (step.percent - begin) / (end - begin)
            share = 100 * sum(embedding.values()) / len(embedding)
            bar.update(task_id, stage=f"embedding {len(embedding)} files {share:.0f}%")
        elif step.step == "storing":
            bar.update(task_id, stage=f"storing {step.filename}")

    loop = asyncio.get_running_loop()
    work = asyncio.create_task(
        services.pipeline.ingest_paths(files, notebook_id=notebook, progress=on_progress)
    )

    def on_sigint() -> None:
        if outcome.stopped:
            os._exit(130)  # a second Ctrl-C: leave the repair to the next start
        outcome.stopped = True
        err_console.print("\n[yellow]Stopping…[/] putting the files in progress back in the queue.")
        work.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        if bar is not None:
            bar.start()
        try:
            outcome.results = await work
            if bar is not None and task_id is not None:
                bar.update(task_id, stage="")
        except asyncio.CancelledError:
            if not outcome.stopped:
                raise
            # The pipeline rolled the files in flight back to "queued" before it stopped.
            outcome.queued = await _left_queued(services)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if bar is not None:
            bar.stop()
    return outcome


async def _left_queued(services: Services) -> int:
    """How many documents this process registered and left queued (none is searchable)."""
    from studyrag.db.repo import QUEUED
    from studyrag.ingest.ownership import process_owner

    mine = process_owner()
    return sum(1 for d in await services.documents.by_status([QUEUED]) if d.owner in (mine, None))


def _progress_bar() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class _OverallEta(ProgressColumn):
        """Time left at the average pace so far: files finish in bursts, one per embedding
        batch, so the recent speed rich's own column uses swings from zero to hundreds."""

        def render(self, task: Task) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            if task.finished or not task.total or not task.completed or elapsed is None:
                return Text("ETA -:--:--" if not task.finished else "", style="progress.remaining")
            left = int(elapsed * (task.total - task.completed) / task.completed)
            return Text(
                f"ETA {left // 3600}:{left % 3600 // 60:02}:{left % 60:02}",
                style="progress.remaining",
            )

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
        _OverallEta(table_column=Column(no_wrap=True)),
        TextColumn(
            "[dim]{task.fields[stage]}",
            table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
        ),
        console=err_console,
        # Lines printed to stdout while the bar is live go above it, on a terminal only, so
        # `studyrag ingest x > log` still writes them to the file.
        redirect_stdout=console.is_terminal,
        transient=False,
    )


def print_line(bar: Progress, line: str) -> None:
    """A file's line above the bar: through the bar's own console on a terminal (stdout
    written meanwhile can land mid-line while the bar redraws), to stdout otherwise."""
    (bar.console if console.is_terminal else console).print(line, highlight=False)


def _live_line(step: Step) -> str:
    if step.step == "completed":
        chunks = f"{step.chunks} chunk" + ("" if step.chunks == 1 else "s")
        return f"[green]✓[/] {step.filename} — {chunks}  [dim]{step.document_id}[/]"
    if step.step == "duplicate":
        return f"[yellow]=[/] {step.filename} — unchanged, {step.error}"
    if step.step == "cancelled":
        return f"[yellow]-[/] {step.filename} — cancelled"
    return f"[red]✗[/] {step.filename} — [{step.error_code}] {step.error}"


def _print_summary(outcome: _Run, data_dir: Path) -> None:
    """The counts, what was skipped, and what to do next."""
    statuses = [r.status for r in outcome.results] or [s.step for s in outcome.finished]
    counts = Counter(_COUNTED.get(status, status) for status in statuses)
    chunks = sum(r.chunks for r in outcome.results if r.status == "completed") or sum(
        s.chunks for s in outcome.finished if s.step == "completed"
    )
    parts = [
        f"{counts['ingested']} ingested",
        f"{counts['already present']} already present",
        f"{counts['failed']} failed",
        f"{len(outcome.skipped)} skipped",
    ]
    if counts["cancelled"]:
        parts.append(f"{counts['cancelled']} cancelled")
    parts.append(f"{chunks} chunks")
    err_console.print(f"{', '.join(parts)} in {outcome.seconds:.1f} s", highlight=False)
    if outcome.skipped:
        kinds = Counter(p.suffix.lower() or "(no suffix)" for p in outcome.skipped)
        listed = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        err_console.print(f"[dim]skipped (not a type StudyRAG reads): {listed}[/]", highlight=False)
    if outcome.stopped:
        left = "were cancelled on the server" if outcome.via else "are queued"
        unfinished = (
            f": {outcome.queued} files {left}, none of them searchable yet"
            if outcome.queued or not outcome.via
            else ""
        )
        err_console.print(
            f"[yellow]Stopped by Ctrl-C[/]{unfinished}. Run the same command again to finish "
            "(what is done is kept).",
            highlight=False,
        )
        return
    where = f", notebook {outcome.notebook!r}" if outcome.notebook else ""
    if outcome.via:
        where += f", ingested by the server at {outcome.via}"
    err_console.print(f"[dim]library: {data_dir}{where}[/]", highlight=False)
    if counts["ingested"] or counts["already present"]:
        flag = f' --notebook "{outcome.notebook}"' if outcome.notebook else ""
        err_console.print(
            f'Next: [bold]studyrag search "your words"{flag}[/] or '
            f'[bold]studyrag ask "your question"{flag}[/]',
            highlight=False,
        )


def _skipped_json(path: Path) -> dict[str, Any]:
    return {
        "document_id": None,
        "filename": path.name,
        "status": "skipped",
        "error_code": None,
        "error": f"files of type {path.suffix or '(none)'} are not ingested",
        "chunks": 0,
        "timings": {},
    }


def ingest_json(r: Any) -> dict[str, Any]:
    """One ingestion result (or a file's final progress report) as the JSON line of --json."""
    timings = getattr(r, "timings", {})
    return {
        "document_id": r.document_id,
        "filename": r.filename,
        "status": getattr(r, "status", None) or r.step,
        "error_code": r.error_code,
        "error": r.error,
        "chunks": r.chunks,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def print_ingest(r: Any) -> None:
    """One ingestion result as a human line."""
    if r.status == "completed":
        console.print(f"[green]✓[/] {r.filename} — {r.chunks} chunks  [dim]{r.document_id}[/]")
    elif r.status == "duplicate":
        console.print(f"[yellow]=[/] {r.filename} — unchanged, {r.error}")
    else:
        console.print(f"[red]✗[/] {r.filename} — [{r.error_code}] {r.error}")
