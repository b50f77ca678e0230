"""Upload jobs: time to searchable through the HTTP job API, and search while courses upload.

Usage: python -m bench.upload_jobs [--pages 20] [--rounds 3] [--uploads 5] [--searches 60]

1. Upload-to-searchable for one ~20-page PDF (the first pages of a FinanceBench filing):
   POST /api/notebooks/{id}/documents on a real `studyrag serve`, until its notebook
   WebSocket says "completed", against IngestionPipeline.ingest_file called directly on the
   same file in this process. Rounds alternate the order. Target ratio <= 1.10.
2. Search p50 over HTTP while `--uploads` uploads are being ingested, against idle, on the
   same server in the same run. Target ratio <= 2.0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.common import CACHE, DATA, percentile, read_jsonl, summary_ms, write_result
from studyrag.config import Settings
from studyrag.services import open_services


def pdf_excerpt(source: Path, pages: int, target: Path, *, offset: int = 0) -> Path:
    """The pages [offset, offset + pages) of a PDF as a new file."""
    import pypdfium2 as pdfium

    src = pdfium.PdfDocument(str(source))
    out = pdfium.PdfDocument.new()
    count = len(src)
    out.import_pages(src, [(offset + i) % count for i in range(min(pages, count))])
    out.save(str(target))
    return target


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    exe = str(Path(sys.executable).with_name("studyrag"))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.2)


async def upload_until_searchable(base: str, port: int, path: Path, name: str) -> float:
    """Seconds from the upload request to the notebook socket's "completed" event."""
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        nb = (await http.post("/api/notebooks", json={"name": name})).json()
        url = f"ws://127.0.0.1:{port}/ws/notebooks/{nb['id']}"
        async with websockets.connect(url) as ws:
            await ws.recv()  # ready
            data = await asyncio.to_thread(path.read_bytes)
            t = time.perf_counter()
            response = await http.post(
                f"/api/notebooks/{nb['id']}/documents",
                files=[("files", (path.name, data, "application/pdf"))],
            )
            doc_id = response.json()["documents"][0]["document_id"]
            while True:
                event = json.loads(await ws.recv())
                if event.get("document_id") == doc_id and event.get("status") == "completed":
                    return time.perf_counter() - t
                if event.get("document_id") == doc_id and event.get("status") == "failed":
                    raise RuntimeError(event)


async def direct(services: Any, path: Path, name: str) -> float:
    nb = await services.notebooks.create(name)
    t = time.perf_counter()
    result = await services.pipeline.ingest_file(path, notebook_id=nb.id)
    assert result.status == "completed", result
    return time.perf_counter() - t


async def search_loop(base: str, queries: list[str], notebook_id: str) -> list[float]:
    samples = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for q in queries:
            t = time.perf_counter()
            r = await http.post("/api/search", json={"query": q, "notebook_id": notebook_id})
            r.raise_for_status()
            samples.append(time.perf_counter() - t)
    return samples


async def wait_jobs(http: httpx.AsyncClient, job_ids: list[str]) -> None:
    """Poll until every job has finished (the bench has no socket open for them)."""
    finished = ("completed", "failed", "cancelled")
    for job_id in job_ids:
        # Polling another process over HTTP: there is no event to wait on here.
        while (await http.get(f"/api/jobs/{job_id}")).json()["status"] not in finished:  # noqa: ASYNC110
            await asyncio.sleep(0.5)


async def main(args: argparse.Namespace) -> None:
    work = CACHE / "upload-jobs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    filings = sorted((DATA / "financebench-dev" / "pdfs").glob("*.pdf"))
    port = 8765
    proc = start_server(work / "server", port, work / "serve.log")
    base = f"http://127.0.0.1:{port}"
    rounds: list[dict[str, float]] = []
    try:
        async with open_services(Settings(data_dir=work / "direct")) as services:
            await services.embedder.embed_documents(["warm up"] * 16)
            warm = pdf_excerpt(filings[0], 2, work / "warm.pdf", offset=40)
            await upload_until_searchable(base, port, warm, "warm-up")
            for r in range(args.rounds):
                # A different excerpt per round, the same for both sides of the round.
                pdf = pdf_excerpt(filings[r % len(filings)], args.pages, work / f"r{r}.pdf")
                if r % 2 == 0:
                    http_s = await upload_until_searchable(base, port, pdf, f"http-{r}")
                    direct_s = await direct(services, pdf, f"direct-{r}")
                else:
                    direct_s = await direct(services, pdf, f"direct-{r}")
                    http_s = await upload_until_searchable(base, port, pdf, f"http-{r}")
                row = {
                    "http_job_s": round(http_s, 2),
                    "direct_s": round(direct_s, 2),
                    "ratio": round(http_s / direct_s, 3),
                }
                print(row, flush=True)
                rounds.append(row)

        # 2. Search while uploading.
        queries = [q["text"] for q in read_jsonl(DATA / "scifact-train" / "queries.jsonl")]
        corpus = read_jsonl(DATA / "scifact-train" / "corpus.jsonl")[: args.corpus]
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            nb = (await http.post("/api/notebooks", json={"name": "search-bench"})).json()
            files = [
                ("files", (f"{d['_id']}.txt", f"{d['title']}\n\n{d['text']}".encode()))
                for d in corpus
            ]
            for i in range(0, len(files), 100):
                job = (
                    await http.post(
                        f"/api/notebooks/{nb['id']}/documents", files=files[i : i + 100]
                    )
                ).json()
                await wait_jobs(http, [job["job_id"]])
        await search_loop(base, queries[:10], nb["id"])  # warm
        idle = await search_loop(base, queries[10 : 10 + args.searches], nb["id"])
        uploads = []
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            for u in range(args.uploads):
                target = (await http.post("/api/notebooks", json={"name": f"course-{u}"})).json()
                pdf = pdf_excerpt(filings[(u + 3) % len(filings)], args.pages, work / f"u{u}.pdf")
                data = await asyncio.to_thread(pdf.read_bytes)
                job = (
                    await http.post(
                        f"/api/notebooks/{target['id']}/documents",
                        files=[("files", (pdf.name, data, "application/pdf"))],
                    )
                ).json()
                uploads.append(job["job_id"])
            busy: list[float] = []
            offset = 10 + args.searches
            while True:
                states = [(await http.get(f"/api/jobs/{j}")).json()["status"] for j in uploads]
                if all(s in ("completed", "failed") for s in states):
                    break
                chunk = queries[offset : offset + 5] or queries[:5]
                offset += 5
                busy.extend(await search_loop(base, chunk, nb["id"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    ratios = [r["ratio"] for r in rounds]
    idle_p50 = percentile([s * 1000 for s in idle], 50)
    busy_p50 = percentile([s * 1000 for s in busy], 50)
    write_result(
        "upload_jobs",
        {
            "pages": args.pages,
            "upload_to_searchable": {
                "rounds": rounds,
                "ratio_median": round(statistics.median(ratios), 3),
                "target_ratio": 1.10,
            },
            "search_during_uploads": {
                "corpus_docs": len(corpus),
                "uploads": args.uploads,
                "idle": summary_ms(idle),
                "busy": summary_ms(busy),
                "p50_ratio": round(busy_p50 / idle_p50, 3),
                "target_ratio": 2.0,
            },
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--searches", type=int, default=60)
    parser.add_argument("--corpus", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
