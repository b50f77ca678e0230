"""OCR of scans: pages per second and character accuracy against a known text.

Usage: python -m bench.ocr [--pages N] [--dpi 150,200] [--threads 1]

Scans are made from text PDFs whose true text is known: pages of the FinanceBench dev
filings (the truth is their pypdfium2 text layer, as the PDF loader extracts it) and pages
drawn here with DejaVu Sans (the truth is the drawn text). Each page is rendered at the
given dpi, saved as JPEG inside an image-only PDF (as a scanner writes it), and read back by
the PDF loader itself (render, OCR, word spacing, paragraphs). Reported per dpi:
- pages per second (wall time of the load, one process, `threads` onnxruntime threads);
- character accuracy 1 - CER, CER = Levenshtein distance / truth length, whitespace
  collapsed: it also charges reading-order differences (a filing's table read row by row
  against a text layer stored column by column);
- word recall: the share of the truth's words (as a multiset) found among the recognised
  words, which reading order does not affect.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium

from bench.common import DATA, write_result
from studyrag.ingest.loaders.base import LoadOptions
from studyrag.ingest.loaders.pdf import PdfLoader, page_text, render_rgb

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
# Pages picked the same way from every filing: past the cover, and the middle.
DRAWN = [
    "Photosynthesis turns light energy into chemical energy. In the chloroplasts, "
    "chlorophyll absorbs blue and red light; the light reactions split water and release "
    "oxygen, and the Calvin cycle fixes carbon dioxide into sugars with the enzyme rubisco.",
    "Net revenue for fiscal 2022 was $4,210 million, up 12.5% from $3,742 million in fiscal "
    "2021, driven by higher volumes in the Americas and favourable pricing in Europe. "
    "Operating margin improved to 18.3% (2021: 16.9%).",
    "Mitochondria are the site of cellular respiration. Glycolysis in the cytoplasm yields "
    "pyruvate, which the citric acid cycle oxidises; the electron transport chain then "
    "drives ATP synthase, making about 30 ATP per glucose molecule.",
]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute: 1 each), Myers' bit-parallel algorithm."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask, high = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def _normal(text: str) -> str:
    return " ".join(text.split())


def word_recall(truth: str, found: str) -> float:
    want = Counter(w.strip(".,;:()\"'").casefold() for w in truth.split())
    want.pop("", None)
    got = Counter(w.strip(".,;:()\"'").casefold() for w in found.split())
    return sum(min(n, got[w]) for w, n in want.items()) / max(1, sum(want.values()))


def filing_pages(count: int) -> list[tuple[str, Any, str]]:
    """(name, PIL image source page, true text) of `count` text-rich filing pages."""
    pdfs = sorted((DATA / "financebench-dev" / "pdfs").glob("*.pdf"))
    picked: list[tuple[str, Any, str]] = []
    for path in pdfs:
        document = pdfium.PdfDocument(path)
        try:
            for index in (3, len(document) // 2):
                if len(picked) >= count:
                    break
                page = document[index]
                textpage = page.get_textpage()
                truth = "\n\n".join(page_text(textpage).paragraphs)
                textpage.close()
                if len(truth) >= 500:  # a page of text, not a divider
                    picked.append((f"{path.stem} p{index + 1}", (path, index), truth))
                page.close()
        finally:
            document.close()
        if len(picked) >= count:
            break
    return picked


def drawn_page(text: str, dpi: int) -> Any:
    """`text` wrapped in 11 pt DejaVu Sans on a US-letter page at `dpi`."""
    from PIL import Image, ImageDraw, ImageFont

    scale = dpi / 72
    image = Image.new("RGB", (round(612 * scale), round(792 * scale)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, round(11 * scale))
    x, y, right = 72 * scale, 72 * scale, (612 - 72) * scale
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > right - x:
            draw.text((x, y), line, fill="black", font=font)
            y += 16 * scale
            line = word
        else:
            line = trial
    draw.text((x, y), line, fill="black", font=font)
    return image


def render_filing_page(source: tuple[Path, int], dpi: int) -> Any:
    from PIL import Image

    path, index = source
    document = pdfium.PdfDocument(path)
    try:
        page = document[index]
        image = Image.fromarray(render_rgb(page, dpi / 72))
        page.close()
    finally:
        document.close()
    return image


def measure(pages: list[tuple[str, Any, str]], dpi: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        images = [
            drawn_page(source, dpi) if isinstance(source, str) else render_filing_page(source, dpi)
            for _, source, _ in pages
        ]
        scan = Path(tmp) / "scan.pdf"
        images[0].save(scan, "PDF", resolution=float(dpi), save_all=True, append_images=images[1:])
        times: list[float] = []
        last = [time.perf_counter()]

        def on_page(_done: int, _total: int) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        loader = PdfLoader(LoadOptions(ocr=True, ocr_threads=threads, ocr_dpi=dpi, on_page=on_page))
        started = last[0] = time.perf_counter()
        doc = loader.load(scan)
        total = time.perf_counter() - started
    by_page: dict[int, list[str]] = {}
    for span in doc.spans:
        by_page.setdefault(span.page or 0, []).append(doc.span_text(span))
    rows = []
    for number, (name, _, truth) in enumerate(pages, start=1):
        found = _normal(" ".join(by_page.get(number, [])))
        want = _normal(truth)
        cer = levenshtein(found, want) / max(1, len(want))
        rows.append(
            {
                "page": name,
                "chars": len(want),
                "seconds": round(times[number - 1], 2),
                "char_accuracy": round(max(0.0, 1 - cer), 4),
                "word_recall": round(word_recall(want, found), 4),
            }
        )
    chars = sum(r["chars"] for r in rows)
    return {
        "dpi": dpi,
        "threads": threads,
        "pages": len(rows),
        "pages_per_second": round(len(rows) / total, 3),
        "seconds_per_page_median": round(statistics.median(r["seconds"] for r in rows), 2),
        # Weighted by length: a page of 4,000 chars counts more than a caption page.
        "char_accuracy": round(
            sum(r["char_accuracy"] * r["chars"] for r in rows) / max(1, chars), 4
        ),
        "word_recall": round(sum(r["word_recall"] * r["chars"] for r in rows) / max(1, chars), 4),
        "by_page": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=4, help="filing pages (plus 3 drawn ones)")
    parser.add_argument("--dpi", default="150,200")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    pages = filing_pages(args.pages) + [(f"drawn {i + 1}", t, t) for i, t in enumerate(DRAWN)]
    runs = []
    for dpi in (int(d) for d in args.dpi.split(",")):
        run = measure(pages, dpi, args.threads)
        print(
            f"{dpi} dpi, {args.threads} thread(s): {run['pages_per_second']} pages/s, "
            f"char accuracy {run['char_accuracy']}, word recall {run['word_recall']}"
        )
        runs.append(run)
    write_result(
        "ocr",
        {
            "engine": "rapidocr-onnxruntime (PP-OCRv4 det/rec, models in the wheel)",
            "truth": "pypdfium2 text layer (filing pages), the drawn text (drawn pages)",
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
