"""OCR of scanned PDFs and images with the real rapidocr models, on pages the tests draw.

Each page is drawn with a real font at 200 dpi, so where every word is (in points) is known:
the highlight of a recognised word must land on the word that was drawn.
"""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest
from fpdf import FPDF

from studyrag.config import IngestSettings
from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders import loader_for_type, sniff_file_type
from studyrag.ingest.loaders.base import LoadOptions
from studyrag.ingest.loaders.image import ImageLoader
from studyrag.ingest.loaders.pdf import PdfLoader
from studyrag.ingest.pdf_views import highlight_rects, ocr_rects, render_image_png
from studyrag.ingest.pipeline import check_upload
from tests.ingest.scans import (
    ScannedPage,
    corrupt_image_of_page,
    render_page,
    save_png,
    save_scanned_pdf,
)

PAGE_ONE = [
    ["Photosynthesis happens in the chloroplasts", "of plant cells."],
    ["Chlorophyll absorbs blue and red light."],
]
PAGE_TWO = [["Mitochondria make ATP, the energy currency", "of the cell."]]
PAGE_THREE = [["Basalt is a volcanic rock formed from lava."]]


def words(text: str) -> set[str]:
    return {w.strip(".,;:").casefold() for w in text.split()}


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def assert_on_word(rects: list[tuple[float, ...]], page: ScannedPage, word: str) -> None:
    """One rect, covering most of the word as drawn and not much else."""
    (rect,) = rects
    truth = page.box(word)
    assert overlap(rect, truth) > 0.6, (rect, truth)
    assert (rect[2] - rect[0]) < 1.6 * (truth[2] - truth[0]), (rect, truth)


def test_scanned_pdf_is_read_page_by_page_with_boxes(tmp_path: Path) -> None:
    one, two = render_page(PAGE_ONE), render_page(PAGE_TWO)
    path = save_scanned_pdf(tmp_path / "scan.pdf", [one, two])
    pages: list[tuple[int, int]] = []
    doc = PdfLoader(LoadOptions(on_page=lambda done, total: pages.append((done, total)))).load(path)

    assert pages == [(1, 2), (2, 2)]
    assert {"photosynthesis", "chloroplasts", "chlorophyll", "absorbs"} <= words(doc.text)
    by_page = {span.page: doc.span_text(span) for span in doc.spans}
    assert "Chlorophyll" in by_page[1] and "Mitochondria" in by_page[2]
    # The two paragraphs of page 1 stay two; the wrapped line is joined.
    assert len([s for s in doc.spans if s.page == 1]) == 2
    meta = doc.metadata
    assert meta["ocr_pages"] == [1, 2] and meta["page_count"] == 2
    assert meta["page_starts"][1] == next(s.start for s in doc.spans if s.page == 2)
    assert meta["ocr"]["engine"].startswith("rapidocr-onnxruntime")
    assert "warnings" not in meta

    at = doc.text.index("Chlorophyll")
    (found,) = highlight_rects(
        path,
        doc.text,
        at,
        at + len("Chlorophyll"),
        page_starts=meta["page_starts"],
        page_boxes=meta["page_boxes"],
    )
    assert (found.page, round(found.width), round(found.height)) == (1, 360, 252)
    assert_on_word(found.rects, one, "Chlorophyll")
    # A passage across the page break is drawn on both pages.
    across = highlight_rects(
        path,
        doc.text,
        doc.text.index("light"),
        doc.text.index("energy"),
        page_starts=meta["page_starts"],
        page_boxes=meta["page_boxes"],
    )
    assert [p.page for p in across] == [1, 2]


def test_text_pages_keep_their_text_layer_and_only_scans_are_recognised(
    tmp_path: Path,
) -> None:
    text_pdf = FPDF()
    text_pdf.add_page()
    text_pdf.set_font("Helvetica", size=12)
    text_pdf.multi_cell(0, 8, "Cells have walls made of cellulose, which keep their shape.")
    text_pdf.output(str(tmp_path / "text.pdf"))
    scan = render_page(PAGE_THREE)
    save_scanned_pdf(tmp_path / "scan.pdf", [scan])
    merged = pdfium.PdfDocument(tmp_path / "text.pdf")
    merged.import_pages(pdfium.PdfDocument(tmp_path / "scan.pdf"))
    merged.save(tmp_path / "mixed.pdf")
    merged.close()

    doc = PdfLoader().load(tmp_path / "mixed.pdf")
    assert doc.span_text(doc.spans[0]) == (
        "Cells have walls made of cellulose, which keep their shape."
    )
    assert doc.metadata["ocr_pages"] == [2]
    assert "basalt" in words(doc.text)
    meta = doc.metadata
    for word, page in (("cellulose", 1), ("Basalt", 2)):
        at = doc.text.index(word)
        (found,) = highlight_rects(
            tmp_path / "mixed.pdf",
            doc.text,
            at,
            at + len(word),
            page_starts=meta["page_starts"],
            page_boxes=meta["page_boxes"],
        )
        assert found.page == page and found.rects
    at = doc.text.index("Basalt")
    (found,) = ocr_rects(meta["page_boxes"], at, at + 6)
    assert_on_word(found.rects, scan, "Basalt")


def test_png_is_a_one_page_document_with_boxes_and_a_page_image(tmp_path: Path) -> None:
    page = render_page(PAGE_ONE)
    path = save_png(tmp_path / "notes.png", page)
    assert sniff_file_type(path) == "image"
    loader = loader_for_type("image")
    assert isinstance(loader, ImageLoader)
    doc = loader.load(path)

    assert {"photosynthesis", "chlorophyll"} <= words(doc.text)
    assert {s.page for s in doc.spans} == {1}
    meta = doc.metadata
    assert meta["page_count"] == 1 and meta["ocr_pages"] == [1]
    assert meta["image"] == {"width": page.image.width, "height": page.image.height}
    at = doc.text.index("Chlorophyll")
    (found,) = ocr_rects(meta["page_boxes"], at, at + len("Chlorophyll"))
    # 200 dpi: the page is measured in points, like the PDF of the same scan.
    assert (round(found.width), round(found.height)) == (360, 252)
    assert_on_word(found.rects, page, "Chlorophyll")

    png = render_image_png(path, 1, scale=1.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 360  # IHDR width: one pixel per point


def test_jpeg_photo_is_read_upright(tmp_path: Path) -> None:
    page = render_page(PAGE_TWO)
    path = tmp_path / "photo.jpg"
    # Stored rotated, with the EXIF tag (6: rotate 90° clockwise to view) a phone writes.
    exif = page.image.getexif()
    exif[0x0112] = 6
    page.image.rotate(90, expand=True).save(path, "JPEG", quality=90, exif=exif, dpi=(200, 200))
    doc = ImageLoader().load(path)
    assert {"mitochondria", "energy", "currency"} <= words(doc.text)


def test_ocr_off_gives_a_clear_error(tmp_path: Path) -> None:
    path = save_scanned_pdf(tmp_path / "scan.pdf", [render_page(PAGE_ONE)])
    with pytest.raises(ExtractionFailed) as caught:
        PdfLoader(LoadOptions(ocr=False)).load(path)
    error = caught.value.to_dict()
    assert error["error_code"] == "DOC_003"
    assert "OCR is off" in error["message"]
    assert "STUDYRAG_INGEST__OCR=true" in error["details"]["hint"]
    assert error["details"]["pages_without_text"] == 1

    png = save_png(tmp_path / "notes.png", render_page(PAGE_ONE))
    with pytest.raises(ExtractionFailed, match="OCR, which is off"):
        ImageLoader(LoadOptions(ocr=False)).load(png)


def test_a_page_that_cannot_be_read_is_reported_and_the_rest_is_kept(tmp_path: Path) -> None:
    path = save_scanned_pdf(
        tmp_path / "scan.pdf",
        [render_page(PAGE_ONE), render_page(PAGE_TWO), render_page(PAGE_THREE)],
    )
    corrupt_image_of_page(path, 1)
    warned: list[dict[str, object]] = []
    doc = PdfLoader(LoadOptions(on_warning=warned.append)).load(path)

    assert {s.page for s in doc.spans} == {1, 3}
    assert "mitochondria" not in words(doc.text) and "basalt" in words(doc.text)
    assert warned == doc.metadata["warnings"]
    (warning,) = warned
    assert warning["page"] == 2 and "Page 2" in str(warning["message"])
    assert doc.metadata["ocr_pages"] == [1, 3]


def test_broken_image_file_is_refused_with_doc_003(tmp_path: Path) -> None:
    path = save_png(tmp_path / "notes.png", render_page(PAGE_ONE))
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ExtractionFailed, match="damaged"):
        ImageLoader().load(path)


def test_images_are_accepted_uploads() -> None:
    settings = IngestSettings()
    for name in ("scan.png", "photo.JPG", "photo.jpeg"):
        check_upload(name, 1000, settings)
