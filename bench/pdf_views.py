"""Page views of PDFs: how long highlighting a cited passage and rendering a page take.

Usage: python -m bench.pdf_views [--spans N]
Target: a chunk-sized passage (1,200 chars) of a 20-page PDF highlighted in well under the
100 ms an HTTP request can spend; a page rendered at scale 1.5 likewise. Measured on a
generated 20-page PDF and, when the bench data is there, a 190-page 10-K.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, summary_ms, write_result
from studyrag.ingest.loaders.pdf import PdfLoader
from studyrag.ingest.pdf_views import highlight_rects, render_page_png

SPAN = 1200  # about one 256-token chunk of English prose


def make_twenty_pages(directory: Path) -> Path:
    """20 A4 pages of wrapped 11 pt prose, about 3,500 characters each."""
    from fpdf import FPDF

    rng = random.Random(20)
    words = (
        "light energy chlorophyll absorbs glucose stroma thylakoid membrane carbon dioxide "
        "water oxygen enzyme rubisco cycle reaction pigment wavelength electron transport "
        "chain photosystem starch respiration leaf stomata plants cells"
    ).split()
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_font("Helvetica", size=11)
    for _ in range(20):
        pdf.add_page()
        for _ in range(6):
            sentence = " ".join(rng.choice(words) for _ in range(95))
            pdf.multi_cell(0, 14, sentence.capitalize() + ".")
            pdf.ln(8)
    path = directory / "twenty.pdf"
    pdf.output(str(path))
    return path


def measure(path: Path, spans: int, *, walk: bool) -> dict[str, Any]:
    doc = PdfLoader().load(path)
    starts = doc.metadata["page_starts"]
    rng = random.Random(7)
    samples: list[float] = []
    walked: list[float] = []
    rect_counts: list[int] = []
    for _ in range(spans):
        start = rng.randrange(0, len(doc.text) - SPAN)
        t = time.perf_counter()
        found = highlight_rects(path, doc.text, start, start + SPAN, page_starts=starts)
        samples.append(time.perf_counter() - t)
        rect_counts.append(sum(len(page.rects) for page in found))
        if walk:
            t = time.perf_counter()
            highlight_rects(path, doc.text, start, start + SPAN)
            walked.append(time.perf_counter() - t)
    renders: dict[str, Any] = {}
    for scale in (1.0, 1.5, 2.0):
        times: list[float] = []
        size = 0
        for page in range(1, 6):
            t = time.perf_counter()
            size = len(render_page_png(path, page, scale=scale))
            times.append(time.perf_counter() - t)
        renders[str(scale)] = {**summary_ms(times), "png_bytes_last": size}
    t = time.perf_counter()
    PdfLoader().load(path)
    return {
        "pages": doc.metadata["page_count"],
        "chars": len(doc.text),
        "highlight_with_page_starts": summary_ms(samples),
        "highlight_walking_pages": summary_ms(walked) if walk else None,
        "rects_per_span_mean": round(sum(rect_counts) / len(rect_counts), 1),
        "render_png": renders,
        "full_load_ms": round((time.perf_counter() - t) * 1000, 1),
    }


def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"span_chars": SPAN}
    with tempfile.TemporaryDirectory() as tmp:
        results["generated_20_pages"] = measure(make_twenty_pages(Path(tmp)), args.spans, walk=True)
    boeing = DATA / "financebench-dev" / "pdfs" / "BOEING_2022_10K.pdf"
    if boeing.is_file():
        results["boeing_10k"] = measure(boeing, args.spans, walk=False)
    for name, value in results.items():
        print(name, value)
    write_result("pdf_views", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spans", type=int, default=50)
    main(parser.parse_args())
