"""Ingestion throughput: the whole pipeline against the embedder alone on the same chunks.

Usage: python -m bench.ingest_throughput [--pdfs N] [--rounds R]
Target: pipeline chunks/s ÷ embedder-alone chunks/s ≥ 0.85. Measured side by side in one
run, alternating the order each round, because this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, write_result
from studyrag.backends.embeddings.sentence_transformers import SentenceTransformersEmbedder
from studyrag.config import EmbeddingsSettings, Settings
from studyrag.ingest.pipeline import EMBED_BATCH, embedding_text
from studyrag.services import open_services


async def run_pipeline(files: list[Path], work: Path, embedder: Any) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(data_dir=work)
    async with open_services(settings, embedder=embedder) as services:
        t = time.perf_counter()
        results = await services.pipeline.ingest_paths(files)
        elapsed = time.perf_counter() - t
        steps = {
            k: round(sum(r.timings.get(k, 0) for r in results), 3)
            for k in ("extract", "chunk", "embed", "store")
        }
        per_doc_inputs = []
        for r in results:
            chunks = await services.documents.chunks_for(r.document_id or "")
            per_doc_inputs.append([embedding_text(c.section, c.text, c.context) for c in chunks])
    return {
        "seconds": elapsed,
        "chunks": sum(r.chunks for r in results),
        "failed": sum(1 for r in results if not r.ok),
        "steps": steps,
        "inputs": per_doc_inputs,
    }


async def run_embedder(embedder: Any, per_doc_inputs: list[list[str]]) -> float:
    """The embedder alone on the same texts, in full batches of EMBED_BATCH (its best case)."""
    texts = [t for inputs in per_doc_inputs for t in inputs]
    t = time.perf_counter()
    for i in range(0, len(texts), EMBED_BATCH):
        await embedder.embed_documents(texts[i : i + EMBED_BATCH])
    return time.perf_counter() - t


async def main(args: argparse.Namespace) -> None:
    files = sorted((DATA / "financebench-dev" / "pdfs").glob("*.pdf"))[: args.pdfs]
    embedder = SentenceTransformersEmbedder(EmbeddingsSettings())
    await embedder.start()
    await embedder.embed_documents(["warm up"] * 32)
    rounds = []
    inputs: list[list[str]] | None = None
    for r in range(args.rounds):
        # A fresh folder per round: chromadb caches clients per path within a process.
        work = CACHE / f"ingest-throughput-{r}"
        if r % 2 == 0 or inputs is None:
            pipe = await run_pipeline(files, work, embedder)
            inputs = pipe.pop("inputs")
            emb = await run_embedder(embedder, inputs)
        else:
            emb = await run_embedder(embedder, inputs)
            pipe = await run_pipeline(files, work, embedder)
            pipe.pop("inputs")
        chunks = pipe["chunks"]
        row = {
            "pipeline_seconds": round(pipe["seconds"], 2),
            "embedder_seconds": round(emb, 2),
            "chunks": chunks,
            "pipeline_chunks_per_s": round(chunks / pipe["seconds"], 1),
            "embedder_chunks_per_s": round(chunks / emb, 1),
            "ratio": round(emb / pipe["seconds"], 3),
            "pipeline_steps_s": pipe["steps"],
        }
        print(row)
        rounds.append(row)
    ratios = [r["ratio"] for r in rounds]
    write_result(
        "ingest_throughput",
        {
            "files": [f.name for f in files],
            "rounds": rounds,
            "ratio_median": round(statistics.median(ratios), 3),
            "target_ratio": 0.85,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdfs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
