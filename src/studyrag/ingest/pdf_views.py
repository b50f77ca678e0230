"""Views of an ingested PDF: page images, and where a passage of its text sits on its pages.

Offsets index the text the PDF loader extracted (`documents.content`). They are mapped back
to pdfium's characters by re-extracting the pages with the loader's own `page_text`, which
traces every char of that text to its pdfium source, and checking that the re-extracted
paragraphs are the stored ones: a file that changed since it was ingested is reported, never
highlighted at the wrong place.

Coordinates are PDF points with the origin at the top-left of the page as displayed (the
page's crop box, after its /Rotate), the frame of `render_page_png`'s image: a viewer scales
them by image width / page width.

Scanned pages (and image files) have no text layer to re-read: their text came from OCR, and
the loader kept each recognised line's span of the text and its box in the same frame
(`metadata.page_boxes`, ingest/ocr.py). A passage on such a page is drawn over the lines it
covers, cut in proportion to the chars it takes of a line's first and last.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from studyrag.errors import (
    ExtractionFailed,
    HighlightUnavailable,
    InvalidSpan,
    OriginalMissing,
    PageNotFound,
)
from studyrag.ingest.loaders.base import DocumentBuilder
from studyrag.ingest.loaders.pdf import _PDFIUM_LOCK, JOINED, PageText, open_pdf, page_text

Rect = tuple[float, float, float, float]

#: Default cap on a rendered page's pixels: an A4 page at scale 2.8, a US letter at 2.7.
DEFAULT_MAX_PIXELS = 4_000_000
MIN_SCALE = 0.1
MAX_SCALE = 8.0
_SEPARATOR = len(DocumentBuilder.SEPARATOR)
# A char joins the line run before it when its box overlaps the run's height by this share
# of the smaller height, does not start left of the previous char's left edge by more than
# this many heights (a ligature's chars share one box; kerning), and starts at most GAP
# heights right of the previous char (further is another column or table cell).
_SAME_LINE_OVERLAP = 0.5
_BACKSTEP = 0.5
_GAP = 3.0


@dataclass(frozen=True, slots=True)
class PageRects:
    """The rectangles that cover a passage on one page (1-based), in points from top-left."""

    page: int
    width: float
    height: float
    rects: list[Rect]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: page, width, height, rects as [x0, y0, x1, y1], rounded to 0.01 pt."""
        return {
            "page": self.page,
            "width": round(self.width, 2),
            "height": round(self.height, 2),
            "rects": [[round(v, 2) for v in rect] for rect in self.rects],
        }


def page_count(pdf_path: Path) -> int:
    """The number of pages of the PDF."""
    with _PDFIUM_LOCK:
        document = _open(pdf_path)
        try:
            return len(document)
        finally:
            document.close()


def highlight_rects(
    pdf_path: Path,
    content: str,
    start: int,
    end: int,
    *,
    page_starts: Sequence[int] | None = None,
    page_boxes: Mapping[str, Any] | None = None,
) -> list[PageRects]:
    """The rectangles covering content[start:end] on each page it touches, in page order.

    `content` is the document's extracted text, `page_starts` the loader's metadata of the
    same name; without it (documents ingested before it existed) pages are re-read from the
    first one up to the passage. `page_boxes` (metadata of the same name) holds the lines
    of the pages that were read with OCR. Raises InvalidSpan (DOC_009) for a span outside the text,
    OriginalMissing (DOC_011) when the file is gone, HighlightUnavailable (DOC_013) when it
    no longer gives that text, ExtractionFailed (DOC_003) when it is not a readable PDF.
    """
    if not 0 <= start < end <= len(content):
        raise InvalidSpan(
            f"The span {start}..{end} is outside the document's text "
            f"(0..{len(content)} characters).",
            details={"start": start, "end": end, "length": len(content)},
        )
    found: list[PageRects] = []
    with _PDFIUM_LOCK:
        document = _open(pdf_path)
        try:
            offset = 0  # where the next page's text starts, when the pages are walked
            for index, known in _pages_of(len(document), start, end, page_starts):
                scanned = (page_boxes or {}).get(str(index + 1))
                if scanned is not None:
                    if (on_scan := ocr_page_rects(index + 1, scanned, start, end)) is not None:
                        found.append(on_scan)
                    continue
                rects, offset = _page_rects(
                    pdf_path,
                    document,
                    index,
                    content,
                    (start, end),
                    offset if known is None else known,
                )
                if rects is not None:
                    found.append(rects)
                if known is None and offset >= end:
                    break
        except pdfium.PdfiumError as exc:
            raise ExtractionFailed(
                f"{pdf_path.name} is damaged: PDFium could not read its pages.",
                details={"reason": str(exc)},
            ) from exc
        finally:
            document.close()
    return found


def ocr_rects(page_boxes: Mapping[str, Any], start: int, end: int) -> list[PageRects]:
    """The rectangles covering [start, end) on the OCR'd pages of `page_boxes`, in page order."""
    found = []
    for page in sorted(page_boxes, key=int):
        rects = ocr_page_rects(int(page), page_boxes[page], start, end)
        if rects is not None:
            found.append(rects)
    return found


def ocr_page_rects(page: int, boxes: Mapping[str, Any], start: int, end: int) -> PageRects | None:
    """The part of each recognised line of one page that [start, end) covers; None if none.

    `boxes` is the loader's {"width", "height", "lines": [[start, end, x0, y0, x1, y1]]},
    line spans in document offsets, boxes in points from the top-left. Chars are taken as
    equally wide within a line: the cut falls within a char or two of the true one.
    """
    width, height = float(boxes["width"]), float(boxes["height"])
    rects: list[Rect] = []
    for line_start, line_end, x0, y0, x1, y1 in boxes["lines"]:
        lo, hi = max(start, line_start), min(end, line_end)
        if lo >= hi:
            continue
        share = (x1 - x0) / max(1, line_end - line_start)
        rect = (x0 + (lo - line_start) * share, y0, x0 + (hi - line_start) * share, y1)
        if (clipped := _clip(rect, width, height)) is not None:
            rects.append(clipped)
    return PageRects(page, width, height, rects) if rects else None


def render_image_png(
    image_path: Path, page: int, *, scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """An image document's one page as a PNG at `scale` pixels per point (as render_page_png).

    The page's points are the image loader's (its dpi), so the rects of `ocr_rects` sit on it.
    """
    from PIL import Image

    from studyrag.ingest.loaders.image import open_image

    if math.isnan(scale) or max_pixels < 1:
        raise ValueError(f"scale must be a number and max_pixels >= 1: {scale}, {max_pixels}")
    if not image_path.is_file():
        raise OriginalMissing(
            f"The image is not kept: {image_path} is missing.", details={"path": str(image_path)}
        )
    if page != 1:
        raise PageNotFound(
            f"{image_path.name} is an image: it has 1 page; there is no page {page}.",
            details={"page": page, "page_count": 1},
        )
    pixels, per_point = open_image(image_path)
    height_px, width_px = pixels.shape[:2]
    width, height = width_px / per_point, height_px / per_point
    fitted = _fit_scale(width, height, scale, max_pixels)
    # The tolerance keeps float noise (1000 px at 200 dpi is 360.0000001 pt) from a row more.
    size = (max(1, math.ceil(width * fitted - 1e-6)), max(1, math.ceil(height * fitted - 1e-6)))
    if size != (width_px, height_px):
        resized = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)
        pixels = np.asarray(resized, dtype=np.uint8)
    return _png(pixels)


def render_page_png(
    pdf_path: Path, page: int, *, scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """Page `page` (1-based) as a PNG at `scale` pixels per point, clamped and pixel-capped.

    `scale` is clamped to [MIN_SCALE, MAX_SCALE] and lowered further so the image has at
    most `max_pixels` pixels. Raises PageNotFound (DOC_008) for a page outside the document,
    OriginalMissing (DOC_011) when the file is gone, ExtractionFailed (DOC_003) when it is
    not a readable PDF; ValueError for a NaN scale or max_pixels < 1 (the route validates
    what users send).
    """
    if math.isnan(scale) or max_pixels < 1:
        raise ValueError(f"scale must be a number and max_pixels >= 1: {scale}, {max_pixels}")
    with _PDFIUM_LOCK:
        document = _open(pdf_path)
        try:
            pdf_page = document[_page_index(pdf_path, page, len(document))]
            try:
                width, height = pdf_page.get_size()
                bitmap = pdf_page.render(
                    scale=_fit_scale(width, height, scale, max_pixels), rev_byteorder=True
                )
                try:
                    # A copy: the bitmap's memory is pdfium's, freed with it below.
                    pixels = np.array(bitmap.to_numpy(), dtype=np.uint8, copy=True)
                finally:
                    bitmap.close()
            finally:
                pdf_page.close()
        except pdfium.PdfiumError as exc:
            raise ExtractionFailed(
                f"{pdf_path.name} is damaged: PDFium could not render page {page}.",
                details={"reason": str(exc), "page": page},
            ) from exc
        finally:
            document.close()
    # Encoding needs no pdfium: outside the lock, so other views and the loader go on.
    return _png(pixels)


# --- helpers -----------------------------------------------------------------------------
def _open(pdf_path: Path) -> pdfium.PdfDocument:
    if not pdf_path.is_file():
        raise OriginalMissing(
            f"The PDF is not kept: {pdf_path} is missing.", details={"path": str(pdf_path)}
        )
    return open_pdf(pdf_path)


def _page_index(pdf_path: Path, page: int, count: int) -> int:
    if not 1 <= page <= count:
        raise PageNotFound(
            f"{pdf_path.name} has {count} page{'' if count == 1 else 's'}; "
            f"there is no page {page}.",
            details={"page": page, "page_count": count},
        )
    return page - 1


def _fit_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """`scale` clamped, then lowered until the rendered size fits in `max_pixels`."""
    scale = min(max(scale, MIN_SCALE), MAX_SCALE)

    def pixels(s: float) -> int:
        # The size pypdfium2's render gives the bitmap.
        return max(1, math.ceil(width * s)) * max(1, math.ceil(height * s))

    if pixels(scale) > max_pixels:
        scale = math.sqrt(max_pixels / max(width * height, 1e-9))
        # ceil() may still overshoot by a row or a column: step down until it fits.
        while pixels(scale) > max_pixels and scale > 1e-6:
            scale *= 0.999
    return scale


def _pages_of(
    count: int, start: int, end: int, page_starts: Sequence[int] | None
) -> list[tuple[int, int | None]]:
    """(page index, offset of its text or None when unknown) of each page to read, in order."""
    if page_starts is None:
        # Offsets are found by reading the pages in order; the caller stops after `end`.
        return [(index, None) for index in range(count)]
    if len(page_starts) != count or any(
        b < a for a, b in zip(page_starts, page_starts[1:], strict=False)
    ):
        raise HighlightUnavailable(
            f"The PDF has {count} pages, which does not match the document's page offsets.",
            details={"page_count": count, "page_starts": len(page_starts)},
        )
    ends = [*page_starts[1:], math.inf]
    return [
        (index, page_starts[index])
        for index in range(count)
        if page_starts[index] < end and start < ends[index]
    ]


def _page_rects(
    pdf_path: Path,
    document: pdfium.PdfDocument,
    index: int,
    content: str,
    span: tuple[int, int],
    offset: int,
) -> tuple[PageRects | None, int]:
    """The passage's rects on one page (None if it has none there), and where the next page's
    text starts. `offset` is where this page's text starts in `content`."""
    start, end = span
    page = document[index]
    try:
        textpage = page.get_textpage()
        try:
            text = page_text(textpage)
            boxes: list[Rect] = []
            for paragraph, sources in zip(text.paragraphs, text.sources, strict=True):
                if content[offset : offset + len(paragraph)] != paragraph:
                    raise HighlightUnavailable(
                        f"{pdf_path.name} no longer gives the text that was ingested from it "
                        f"(page {index + 1} differs): another loader or loader version read it.",
                        details={"page": index + 1, "offset": offset},
                    )
                lo, hi = max(start, offset), min(end, offset + len(paragraph))
                for position in range(lo, hi):
                    box = _char_box(textpage, text, paragraph, sources, position - offset)
                    if box is not None:
                        boxes.append(box)
                offset += len(paragraph) + _SEPARATOR
            if not boxes:
                return None, offset
            width, height = page.get_size()
            to_view = _to_view(page.get_bbox(), page.get_rotation())
            rects = [
                clipped
                for run in _line_runs(boxes)
                if (clipped := _clip(to_view(run), width, height)) is not None
            ]
            return PageRects(index + 1, width, height, rects), offset
        finally:
            textpage.close()
    finally:
        page.close()


def _char_box(
    textpage: pdfium.PdfTextPage,
    text: PageText,
    paragraph: str,
    sources: list[int],
    position: int,
) -> Rect | None:
    """The loose box (page space) of the pdfium char behind paragraph[position], if it has one."""
    source = sources[position]
    if source == JOINED or paragraph[position].isspace():
        return None  # a line break or a space: the runs bridge them
    char_index = pdfium_c.FPDFText_GetCharIndexFromTextIndex(textpage, text.text_index(source))
    if char_index < 0:
        return None
    # The char pdfium holds there must be the one the text shows (for an astral char, its
    # first UTF-16 unit): a guard against index shifts the mapping did not foresee.
    code = ord(text.raw[source])
    if code > 0xFFFF:
        code = 0xD800 + ((code - 0x10000) >> 10)
    if pdfium_c.FPDFText_GetUnicode(textpage, char_index) != code:
        return None
    try:
        left, bottom, right, top = textpage.get_charbox(char_index, loose=True)
    except pdfium.PdfiumError:
        return None
    if right <= left or top <= bottom:
        return None
    return left, bottom, right, top


def _line_runs(boxes: list[Rect]) -> list[Rect]:
    """Merge consecutive char boxes (page space, y up) into one box per line run."""
    runs: list[list[float]] = []
    last_left = last_right = 0.0
    for left, bottom, right, top in boxes:
        if runs:
            run = runs[-1]
            height = min(top - bottom, run[3] - run[1])
            overlap = min(top, run[3]) - max(bottom, run[1])
            if (
                overlap >= _SAME_LINE_OVERLAP * height
                and left >= last_left - _BACKSTEP * height
                and left - last_right <= _GAP * height
            ):
                run[0], run[1] = min(run[0], left), min(run[1], bottom)
                run[2], run[3] = max(run[2], right), max(run[3], top)
                last_left, last_right = left, right
                continue
        runs.append([left, bottom, right, top])
        last_left, last_right = left, right
    return [(r[0], r[1], r[2], r[3]) for r in runs]


def _to_view(bbox: Rect, rotation: int) -> Callable[[Rect], Rect]:
    """A map from page space (y up) to the displayed page (top-left origin, after /Rotate).

    `bbox` is the page's displayed box (crop box within the media box), `rotation` its
    clockwise /Rotate in degrees: the frame pdfium renders, so rects sit on the image.
    """
    left, bottom, right, top = bbox

    def point(x: float, y: float) -> tuple[float, float]:
        if rotation == 90:
            return y - bottom, x - left
        if rotation == 180:
            return right - x, y - bottom
        if rotation == 270:
            return top - y, right - x
        return x - left, top - y

    def convert(rect: Rect) -> Rect:
        (ax, ay), (bx, by) = point(rect[0], rect[1]), point(rect[2], rect[3])
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)

    return convert


def _clip(rect: Rect, width: float, height: float) -> Rect | None:
    """`rect` cut to the page; None when nothing of it is on the page."""
    x0, y0 = max(rect[0], 0.0), max(rect[1], 0.0)
    x1, y1 = min(rect[2], width), min(rect[3], height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _png(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of an (h, w, 3) RGB or (h, w) grey uint8 array, written with zlib.

    Written here rather than by Pillow: rows are left unfiltered: on rendered text pages that
    compresses better than the "Up" filter or Pillow's adaptive one (measured: 298 kB vs
    339 kB and 386 kB for a 1224x1584 10-K page). zlib level 3 makes files within 1% of
    level 6's in half the time (893x1263 page: 307.7 vs 307.4 kB, about 40 vs 70 ms).
    """
    if pixels.ndim == 2:
        height, width, channels, color_type = *pixels.shape, 1, 0
    else:
        height, width, channels = pixels.shape
        color_type = 2
    rows = np.empty((height, width * channels + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(height, width * channels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 3)),
            chunk(b"IEND", b""),
        )
    )
