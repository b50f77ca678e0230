"""Notebook export and import: time, archive size, and the memory export takes.

Usage: python -m bench.notebook_archive [--big-mb N]
A notebook of a generated 20-page PDF (real chunks and vectors) and one large original
(N MB of random bytes named .pdf: its ingestion fails, its original is kept and exported).
Export streams, so its resident memory should grow by far less than the archive's size.
Import is timed with the archive's vectors and with vectors recomputed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import write_result
from bench.pdf_views import make_twenty_pages
from studyrag.config import Settings
from studyrag.services import open_services


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class PeakRss:
    """The highest resident set size seen while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def main(big_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        make_twenty_pages(docs)
        (docs / "scan.pdf").write_bytes(os.urandom(big_mb << 20))
        out: dict[str, Any] = {"big_original_mb": big_mb}
        async with open_services(Settings(data_dir=root / "a")) as services:
            nb = await services.notebooks.create("Bench")
            results = await services.pipeline.ingest_paths([docs], notebook_id=nb.id)
            out["documents"] = {r.filename: r.status for r in results}
            out["chunks"] = sum(r.chunks for r in results)
            for vectors in (False, True):
                target = root / f"nb-{vectors}.zip"
                with PeakRss() as mem:
                    t = time.perf_counter()
                    size = await services.archives.export_to(nb.id, target, vectors=vectors)
                    spent = time.perf_counter() - t
                out[f"export_vectors_{vectors}"] = {
                    "seconds": round(spent, 3),
                    "archive_mb": round(size / 1e6, 2),
                    "rss_growth_mb": round(mem.peak - mem.start, 1),
                }
        async with open_services(Settings(data_dir=root / "b")) as services:
            await services.embedder.start()
            for vectors in (True, False):
                archive = root / f"nb-{vectors}.zip"
                t = time.perf_counter()
                await services.archives.check(archive)
                checked = time.perf_counter() - t
                t = time.perf_counter()
                job = await services.archives.import_file(archive)
                spent = time.perf_counter() - t
                assert job.status == "completed", job.error
                out[f"import_vectors_{vectors}"] = {
                    "check_seconds": round(checked, 3),
                    # import_file checks the archive again inside the job, then restores.
                    "import_seconds": round(spent, 3),
                    "vectors": job.meta["vectors"],
                }
        return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mb", type=int, default=40)
    args = parser.parse_args()
    result = asyncio.run(main(args.big_mb))
    print(result)
    write_result("notebook_archive", result)
