"""Folder ingestion: many small files through ingest_paths against the embedder alone.

Usage: python -m bench.ingest_folder [--files N (1000)] [--compare-untrimmed]
The first N SciFact abstracts, each written as a .txt of its title, a blank line and its
text (as a user's folder of notes reaches the CLI), go through one `ingest_paths` call; then
the embedder alone embeds exactly the same chunk texts in full batches. Each side runs in its
own process, so each peak RSS (ru_maxrss) is its own; RSS is also sampled every 0.1 s and
recorded after every tenth of the files, to show whether memory grows with the file count.
Target: pipeline chunks/s ÷ embedder-alone chunks/s ≥ 0.85 (wall clock; CPU time is reported
too, as this machine is shared), and a flat RSS: what the process holds after each tenth of
the files does not grow with their number (peaks vary with each batch's longest passages).
--compare-untrimmed runs the pipeline once more without handing freed heap memory back to
the OS after each embedding batch (the behaviour before that fix), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, read_jsonl, write_result

TARGET_RATIO = 0.85


class RssSampler:
    """The process's resident memory, sampled in a thread; peak in MB."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_s() -> float:
    """CPU time of this process so far, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_files(n: int) -> Path:
    """The first n SciFact abstracts as title\\n\\ntext .txt files, written once per n."""
    folder = CACHE / "ingest-folder" / f"files-{n}"
    if folder.is_dir() and len(list(folder.glob("*.txt"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = read_jsonl(DATA / "scifact-train" / "corpus.jsonl")[:n]
    if len(rows) < n:
        raise SystemExit(f"the SciFact corpus has {len(rows)} abstracts, fewer than {n}")
    for row in rows:
        (folder / f"{row['_id']}.txt").write_text(
            f"{row['title']}\n\n{row['text']}\n", encoding="utf-8"
        )
    return folder


async def _embedder() -> Any:
    from studyrag.backends.embeddings.sentence_transformers import (
        SentenceTransformersEmbedder,
    )
    from studyrag.config import EmbeddingsSettings

    embedder = SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    await embedder.embed_documents(["warm up"] * 32)
    return embedder


async def side_pipeline(
    folder: Path, data_dir: Path, total: int, *, keep_freed: bool
) -> tuple[dict[str, Any], list[str]]:
    """One ingest_paths call over the folder: its figures, and the chunk texts it embedded."""
    from studyrag.backends.embeddings import sentence_transformers
    from studyrag.config import Settings
    from studyrag.ingest.pipeline import Progress, embedding_text
    from studyrag.services import open_services

    if keep_freed:
        sentence_transformers.release_freed_memory = lambda: None  # the behaviour before
    marks = {max(1, round(total * k / 10)) for k in range(1, 11)}
    by_files: list[dict[str, float]] = []
    embedder = await _embedder()
    async with open_services(Settings(data_dir=data_dir), embedder=embedder) as services:
        start_mb = RssSampler.current_mb()
        done = 0
        with RssSampler() as sampler:

            def progress(p: Progress) -> None:
                nonlocal done
                if p.final:
                    done += 1
                    if done in marks:
                        by_files.append(
                            {
                                "files": done,
                                "rss_mb": round(RssSampler.current_mb()),
                                "peak_so_far_mb": round(sampler.peak_mb),
                            }
                        )

            t, cpu = time.perf_counter(), cpu_s()
            results = await services.pipeline.ingest_paths([folder], progress=progress)
            elapsed, cpu = time.perf_counter() - t, cpu_s() - cpu
        inputs = []
        for r in results:
            for c in await services.documents.chunks_for(r.document_id or ""):
                inputs.append(embedding_text(c.section, c.text, c.context))
    half = [m["peak_so_far_mb"] for m in by_files if m["files"] <= total // 2]
    figures = {
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        "files": len(results),
        "failed": sum(1 for r in results if not r.ok),
        "chunks": sum(r.chunks for r in results),
        "steps_s": {
            k: round(sum(r.timings.get(k, 0) for r in results), 2)
            for k in ("extract", "chunk", "embed", "store")
        },
        "rss_before_mb": round(start_mb),
        "peak_rss_mb": round(max_rss_mb()),
        # Sampled; the peak is the model plus one batch's working set, which varies by batch.
        "sampled_peak_first_half_mb": half[-1] if half else None,
        "sampled_peak_all_mb": round(sampler.peak_mb),
        "rss_by_files": by_files,
    }
    return figures, inputs


async def side_embedder(texts: list[str]) -> dict[str, Any]:
    """The embedder alone on the same texts, in full batches of EMBED_BATCH (its best case)."""
    from studyrag.ingest.pipeline import EMBED_BATCH

    embedder = await _embedder()
    start_mb = RssSampler.current_mb()
    with RssSampler() as sampler:
        t, cpu = time.perf_counter(), cpu_s()
        for i in range(0, len(texts), EMBED_BATCH):
            await embedder.embed_documents(texts[i : i + EMBED_BATCH])
        elapsed, cpu = time.perf_counter() - t, cpu_s() - cpu
    return {
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(cpu, 2),
        "chunks": len(texts),
        "rss_before_mb": round(start_mb),
        "peak_rss_mb": round(max_rss_mb()),
        "peak_rss_sampled_mb": round(sampler.peak_mb),
    }


def run_side(*args: str) -> dict[str, Any]:
    """Run one side in a fresh process; its last stdout line is its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ingest_folder", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "rss_by_files"}), flush=True)
    return result


def main(args: argparse.Namespace) -> None:
    folder = write_files(args.files)
    work = CACHE / "ingest-folder" / "work"
    pipeline = run_side("--side", "pipeline", "--folder", str(folder), "--work", str(work))
    embedder = run_side("--side", "embedder", "--inputs", str(work / "inputs.json"))
    chunks = pipeline["chunks"]
    assert embedder["chunks"] == chunks, "both sides must embed the same chunks"
    data: dict[str, Any] = {
        "corpus": "scifact-train corpus.jsonl, first N abstracts as title\\n\\ntext .txt files",
        "pipeline": pipeline,
        "embedder_alone": embedder,
        "pipeline_chunks_per_s": round(chunks / pipeline["seconds"], 1),
        "embedder_chunks_per_s": round(chunks / embedder["seconds"], 1),
        "ratio": round(embedder["seconds"] / pipeline["seconds"], 3),
        "target_ratio": TARGET_RATIO,
        # The sides run one after the other on a shared machine: CPU time is what other
        # jobs' load does not change.
        "cpu_ratio": round(embedder["cpu_seconds"] / pipeline["cpu_seconds"], 3),
        "peak_rss_ratio": round(pipeline["peak_rss_mb"] / embedder["peak_rss_mb"], 2),
    }
    if args.compare_untrimmed:
        data["pipeline_untrimmed"] = run_side(
            "--side", "pipeline", "--folder", str(folder), "--work", str(work), "--keep-freed"
        )
    print(
        f"{chunks} chunks from {args.files} files: ratio {data['ratio']} "
        f"(target {TARGET_RATIO}), CPU-time ratio {data['cpu_ratio']}; "
        f"peak RSS pipeline {pipeline['peak_rss_mb']} MB, embedder alone "
        f"{embedder['peak_rss_mb']} MB"
    )
    write_result("ingest_folder", data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    # 1,000 files (~2,000 chunks) keep a default run near 4 minutes on 2 idle cores: each side
    # needs ~90 CPU-seconds per 1,000 chunks.
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--compare-untrimmed", action="store_true")
    # One side, run by main() in its own process.
    parser.add_argument("--side", choices=["pipeline", "embedder"])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--keep-freed", action="store_true")
    parsed = parser.parse_args()
    if parsed.side == "pipeline":
        shutil.rmtree(parsed.work, ignore_errors=True)
        files = len(list(parsed.folder.glob("*.txt")))
        out, inputs = asyncio.run(
            side_pipeline(parsed.folder, parsed.work / "data", files, keep_freed=parsed.keep_freed)
        )
        (parsed.work / "inputs.json").write_text(json.dumps(inputs))
        print(json.dumps(out))
    elif parsed.side == "embedder":
        texts = json.loads(parsed.inputs.read_text())
        print(json.dumps(asyncio.run(side_embedder(texts))))
    else:
        main(parsed)
