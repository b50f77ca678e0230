"""`studyrag ingest` while a server runs on the same library: the server adds the files.

A server holds the vector store open, so vectors another process wrote would stay invisible
to its searches. Instead the CLI uploads the files (POST /api/notebooks/{id}/documents, at
most MAX_FILES_PER_UPLOAD a request) and follows each upload's job on its SSE stream
(GET /api/jobs/{id}/events): the same lines, bar and summary as a local run. Ctrl-C cancels
the running job on the server (its finished files stay, the others become cancelled, and
the same command finishes them later: a cancelled file is queued again when re-sent).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from studyrag.cli.common import (
    Server,
    emit,
    err_console,
    find_notebook_on_server,
    server_error,
    show_error,
    unknown_notebook,
)
from studyrag.errors import StudyRAGError

# The server takes at most this many files per request (api/routes/notebooks.py).
FILES_PER_REQUEST = 100
# ...and a request should not hold more than this many bytes of files.
BYTES_PER_REQUEST = 256 * 1024 * 1024


def batches(files: list[Path]) -> Iterator[list[Path]]:
    """The files in upload requests of at most FILES_PER_REQUEST files and about
    BYTES_PER_REQUEST bytes (a larger single file goes alone)."""
    batch: list[Path] = []
    size = 0
    for path in files:
        n = path.stat().st_size
        if batch and (len(batch) >= FILES_PER_REQUEST or size + n > BYTES_PER_REQUEST):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += n
    if batch:
        yield batch


def ingest_via_server(
    server: Server, files: list[Path], notebook: str | None, *, as_json: bool, outcome: Any
) -> bool:
    """Have the server ingest `files`, filling `outcome` (a `_Run`) with the final
    report of each file; False when the server cannot be used (the caller explains)."""
    import httpx

    from studyrag.cli.ingest import _live_line, _progress_bar, print_line
    from studyrag.ingest.pipeline import Progress as Step

    bar = None if as_json else _progress_bar()
    task = bar.add_task("ingesting", total=len(files), stage="") if bar else None
    current_job: str | None = None
    uploading = 0

    def finished(step: Step) -> None:
        if outcome.stopped and step.step == "cancelled":
            outcome.queued += 1  # stopped by this Ctrl-C: counted, not listed
            return
        outcome.finished.append(step)
        if as_json:
            emit(_json_line(step))
        elif bar is not None and task is not None:
            bar.advance(task)
            print_line(bar, _live_line(step))

    with ExitStack() as stack:
        http = stack.enter_context(server.client(read=3600))
        url = server.url
        try:
            nb = find_notebook_on_server(http, notebook, as_json=as_json)
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        if nb is None:
            show_error(unknown_notebook(notebook, url), as_json=as_json)
            raise typer.Exit(1)
        outcome.notebook = "" if nb["is_default"] else nb["name"]
        if bar is not None:
            bar.start()
            stack.callback(bar.stop)
        try:
            sent = 0
            for batch in batches(files):
                if bar is not None and task is not None:
                    bar.update(task, stage=f"uploading {sent + len(batch)}/{len(files)}")
                uploading = len(batch)
                accepted = _upload(http, nb["id"], batch, as_json)
                uploading = 0
                sent += len(batch)
                for doc in accepted["documents"]:
                    if doc["status"] != "queued":
                        finished(_step(doc, doc["status"]))
                current_job = accepted.get("job_id")
                if current_job:
                    _follow(http, current_job, finished, bar, task)
                current_job = None
            if bar is not None and task is not None:
                bar.update(task, stage="")
        except KeyboardInterrupt:
            outcome.stopped = True
            err_console.print("\n[yellow]Stopping…[/] the server cancels the files in progress.")
            if uploading:
                # Stopped mid-request: the files the server had received are its own job now.
                err_console.print(
                    f"[yellow]The server goes on with what it received of the last {uploading} "
                    "files[/]; `studyrag documents list` shows them.",
                    highlight=False,
                )
            if current_job:
                _cancel(http, current_job)
                # Until the job has stopped: the file in flight may still complete.
                try:
                    _follow(http, current_job, finished, bar, task)
                except (httpx.HTTPError, KeyboardInterrupt):
                    pass
                _reconcile(http, current_job, finished, outcome)
        except httpx.HTTPError as exc:
            err = StudyRAGError(
                f"The server at {url} stopped answering: {exc}",
                hint="Files it finished are kept; run the same command again to add the rest.",
            )
            err.error_code = "DOC_007"
            show_error(err, as_json=as_json)
            raise typer.Exit(1) from exc
    outcome.via = server.url
    return True


def _upload(http: Any, notebook_id: str, batch: list[Path], as_json: bool) -> dict[str, Any]:
    with ExitStack() as stack:
        parts = [("files", (p.name, stack.enter_context(p.open("rb")))) for p in batch]
        reply = http.post(f"/api/notebooks/{notebook_id}/documents", files=parts)
    if reply.status_code != 202:
        server_error(reply, as_json)
    answer: dict[str, Any] = reply.json()
    return answer


def _follow(http: Any, job_id: str, finished: Any, bar: Any, task: Any) -> None:
    """Read the job's events until it ends, reporting each file as it finishes."""
    seen: set[str] = set()
    with http.stream("GET", f"/api/jobs/{job_id}/events") as events:
        event = ""
        for line in events.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                continue
            if not line.startswith("data:") or event != "document_updated":
                continue
            data = json.loads(line.split(":", 1)[1])
            step = _step(data, data.get("status") or data.get("step") or "")
            if data.get("status") in ("completed", "failed", "cancelled"):
                if data["document_id"] not in seen:
                    seen.add(data["document_id"])
                    finished(step)
            elif bar is not None and task is not None:
                pct = float(data.get("progress") or 0.0)
                bar.update(task, stage=f"{data.get('step')} {data['filename']} {pct:.0f}%")


def _step(doc: dict[str, Any], status: str) -> Any:
    from studyrag.ingest.pipeline import Progress as Step

    return Step(
        doc["filename"],
        status,
        100.0 if status == "completed" else 0.0,
        document_id=doc.get("document_id"),
        error_code=doc.get("error_code"),
        error=doc.get("error"),
        chunks=int(doc.get("chunks") or 0),
    )


def _cancel(http: Any, job_id: str) -> None:
    try:
        http.post(f"/api/jobs/{job_id}/cancel")
    except Exception:  # noqa: BLE001 - the server may be gone too; the summary says what is known
        pass


def _reconcile(http: Any, job_id: str, finished: Any, outcome: Any) -> None:
    """After a stop: report the job's files that ended unseen, count those left unfinished."""
    try:
        job = http.get(f"/api/jobs/{job_id}").json()
    except Exception:  # noqa: BLE001 - the server may be gone too; the summary says what is known
        return
    reported = {s.document_id for s in outcome.finished}
    left = 0
    for doc in job.get("documents") or []:
        if doc["status"] in ("completed", "failed"):
            if doc["id"] not in reported:
                finished(
                    _step(
                        doc | {"document_id": doc["id"], "chunks": doc["chunk_count"]},
                        doc["status"],
                    )
                )
        else:
            left += 1
    outcome.queued = left


def _json_line(step: Any) -> dict[str, Any]:
    return {
        "document_id": step.document_id,
        "filename": step.filename,
        "status": step.step,
        "error_code": step.error_code,
        "error": step.error,
        "chunks": step.chunks,
        "timings": {},
    }
