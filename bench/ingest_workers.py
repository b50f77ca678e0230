"""Ingestion throughput with one job worker against two, on the procrastinate job queue.

Usage: python -m bench.ingest_workers [--docs 8] [--paragraphs 300] [--rounds 3]
                                      [--job-workers 1]

Two real `studyrag serve` processes (A, B) share PostgreSQL (the queue and the records), a
`chroma run` server, Redis and one originals directory, as in tests/e2e/test_multi_worker.py.
A round uploads `--docs` distinct markdown documents to A, one upload (one job) each, and
times until every job is completed. Rounds alternate: A alone (B stopped: one job worker),
then A and B (two), then A alone... in one run, so the ratio compares like with like.
Each worker runs `--job-workers` jobs at once (STUDYRAG_INGEST__JOB_WORKERS). Which worker
ran each document is read from the workers' logs ("ingested <file>").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tests.contracts.test_vector_store import running_chroma
from tests.e2e.test_multi_worker import (
    REDIS_URL,
    Worker,
    _pg_database,
    _restart,
    _start,
    _stop,
    _wait_healthy,
)

from bench.common import write_result

WORDS = (
    "sediment basin delta erosion terrace alluvial gravel moraine quartz river valley slope "
    "cliff glacier dune granite basalt shale fossil estuary"
).split()


def document(seed: int, paragraphs: int) -> str:
    """Distinct text per seed (no duplicate detection), ~8 chunks per 60 paragraphs."""
    lines = [f"# Field notes {seed}"]
    for i in range(paragraphs):
        body = " ".join(WORDS[(seed * 13 + i * 7 + j) % len(WORDS)] for j in range(40))
        lines.append(f"## Site {seed}-{i}\nObservation {i} of survey {seed}: {body}.")
    return "\n\n".join(lines)


async def one_round(
    a: Worker, workers: list[Worker], *, docs: int, paragraphs: int, tag: str
) -> dict[str, Any]:
    marks = {w.name: w.log.stat().st_size for w in workers}
    load_before = os.getloadavg()[0]
    async with httpx.AsyncClient(base_url=a.base, timeout=120) as http:
        nb = (await http.post("/api/notebooks", json={"name": f"bench {tag}"})).json()["id"]
        names = [f"{tag}-{i}.md" for i in range(docs)]
        texts = [document(int(tag[1:]) * 1000 + i, paragraphs) for i in range(docs)]
        t0 = time.perf_counter()
        jobs = []
        for name, text in zip(names, texts, strict=True):
            response = await http.post(
                f"/api/notebooks/{nb}/documents", files=[("files", (name, text.encode()))]
            )
            assert response.status_code == 202, response.text
            jobs.append(response.json()["job_id"])
        pending = set(jobs)
        while pending:
            for job_id in list(pending):
                state = (await http.get(f"/api/jobs/{job_id}")).json()
                if state["status"] in ("completed", "failed", "cancelled"):
                    assert state["status"] == "completed", state
                    pending.discard(job_id)
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - t0
        listed = (await http.get("/api/documents", params={"notebook_id": nb, "limit": 500})).json()
    chunks = sum(d["chunk_count"] for d in listed["items"])
    by_worker: dict[str, int] = {}
    for w in workers:
        with w.log.open("rb") as fh:
            fh.seek(marks[w.name])
            text = fh.read().decode(errors="replace")
        by_worker[w.name] = len(re.findall(rf"ingested {re.escape(tag)}-\d+\.md", text))
    return {
        "workers": len(workers),
        "seconds": round(elapsed, 2),
        "documents": docs,
        "chunks": chunks,
        "chunks_per_s": round(chunks / elapsed, 2),
        "documents_by_worker": by_worker,
        # Other work on the machine changes what a round gets: say how busy it was.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job-workers", type=int, default=1)
    parser.add_argument("--name", default="ingest_workers")
    args = parser.parse_args()
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="studyrag-bench-workers-"))
    with _pg_database() as pg_url, running_chroma(root / "chroma") as (chroma_url, _):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "STUDYRAG_DATABASE__URL": pg_url,
            "STUDYRAG_VECTORS__URL": chroma_url,
            "STUDYRAG_BROKER__URL": REDIS_URL,
            "STUDYRAG_BROKER__NAMESPACE": f"bench-{uuid.uuid4().hex[:10]}",
            "STUDYRAG_LLM__PROVIDER": "llamacpp",
            "STUDYRAG_LLM__N_THREADS": "1",
            "STUDYRAG_API__RATE_LIMIT_PER_MINUTE": "0",
            "STUDYRAG_INGEST__FILES_DIR": str(root / "shared-files"),
            "STUDYRAG_INGEST__JOB_WORKERS": str(args.job_workers),
            "STUDYRAG_JOBS__RUNNER": "procrastinate",
        }
        a = _start("A", root / "a", env, root / "a.log")
        _wait_healthy(a)
        b = _start("B", root / "b", env, root / "b.log")
        _wait_healthy(b)
        _stop(b)
        rounds: list[dict[str, Any]] = []
        try:
            for r in range(args.rounds):
                two = r % 2 == 1
                if two and b.proc.poll() is not None:
                    _restart(b)
                if not two and b.proc.poll() is None:
                    _stop(b)
                workers = [a, b] if two else [a]
                result = asyncio.run(
                    one_round(a, workers, docs=args.docs, paragraphs=args.paragraphs, tag=f"r{r}")
                )
                result["round"] = r
                rounds.append(result)
                print(result, flush=True)
        finally:
            _stop(b)
            _stop(a)
    one = [r["chunks_per_s"] for r in rounds if r["workers"] == 1]
    two = [r["chunks_per_s"] for r in rounds if r["workers"] == 2]
    data: dict[str, Any] = {
        "command": "python -m bench.ingest_workers "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "name"),
        "cpus": os.cpu_count(),
        "job_workers_per_process": args.job_workers,
        "rounds": rounds,
        "one_worker_chunks_per_s": round(statistics.median(one), 2) if one else None,
        "two_workers_chunks_per_s": round(statistics.median(two), 2) if two else None,
    }
    if one and two:
        data["two_over_one"] = round(statistics.median(two) / statistics.median(one), 3)
    write_result(args.name, data)


if __name__ == "__main__":
    main()
