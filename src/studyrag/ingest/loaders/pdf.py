"""PDF loader: text per page with pypdfium2, split into paragraphs by layout and line shape."""

from __future__ import annotations

import logging
import re
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from studyrag.errors import ExtractionFailed, StudyRAGError
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Loader, LoadOptions

log = logging.getLogger(__name__)

# PDFium keeps global state and is not thread-safe: every call into it, from the loader or
# from the page views (ingest/pdf_views.py), holds this lock.
_PDFIUM_LOCK = threading.Lock()

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# pdfium marks a hyphen it found at a line end as U+0002; U+FFFE/U+FFFF are noise, and so is
# a lone UTF-16 surrogate (the text is decoded keeping them, so indices stay pdfium's).
_NOISE_CHARS = r"\x00\x01\x03-\x08\x0b-\x1f\x7f\ud800-\udfff\ufffe\uffff"
_SPACE_CHARS = r" \t\u00a0"
# A line is cleaned token by token: a run of noise and spaces becomes one space (or nothing
# when it holds no space), any other run is kept as it is, so each kept char has one source.
_TOKEN = re.compile(rf"([{_NOISE_CHARS}{_SPACE_CHARS}]+)|[^{_NOISE_CHARS}{_SPACE_CHARS}]+")
_SPACE = re.compile(rf"[{_SPACE_CHARS}]")
_NEEDS_CLEANING = re.compile(rf"[{_NOISE_CHARS}\t\u00a0]|  ")
# A char outside the Basic Multilingual Plane: two UTF-16 units in pdfium's text.
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_ENDS_SENTENCE = re.compile(r"[.!?:;\"'\u201d\u2019)\]]$")
_BULLET = re.compile(r"^(?:[\u2022\u25aa\u25cf\u2023\u2043\u25e6*\-\u2013]\s|\(?\d{1,3}[.)]\s)")
# A line shorter than this share of the page's longest line, ending a sentence, ends a paragraph.
_SHORT_LINE = 0.75
# A line pitch this many times the line height, and this many times the page's usual pitch,
# marks a new paragraph; the second rule keeps 1.5- and double-spaced text in one piece.
_PARAGRAPH_GAP = 1.5
_PITCH_FACTOR = 1.3

#: The source of a paragraph char that no pdfium char stands for: the space joining two lines.
JOINED = -1


@dataclass(slots=True)
class _Line:
    text: str
    sources: list[int]  # per char of text: its index in the page's pdfium text
    top: float | None = None
    height: float | None = None


@dataclass(frozen=True, slots=True)
class PageText:
    """One page's paragraphs exactly as the loader extracts them, each char traced to pdfium.

    `sources[p][i]` is the index in `raw` (the page's pdfium text) of `paragraphs[p][i]`, or
    JOINED for the space that replaced a line break. The loader and the page views both build
    their text with `page_text`, so the highlight geometry cannot drift from the stored text.
    """

    raw: str
    paragraphs: list[str]
    sources: list[list[int]]
    # Where raw[i] starts in pdfium's UTF-16 text; None when every char is one UTF-16 unit.
    units: list[int] | None

    def text_index(self, index: int) -> int:
        """pdfium's text index (FPDFText_GetCharIndexFromTextIndex) of raw[index]."""
        return index if self.units is None else self.units[index]


def _utf16_units(raw: str) -> list[int] | None:
    """Each char's UTF-16 offset in `raw`; None when the offsets are the indices themselves."""
    if raw.isascii() or not _ASTRAL.search(raw):
        return None
    units: list[int] = []
    offset = 0
    for ch in raw:
        units.append(offset)
        offset += 2 if ord(ch) > 0xFFFF else 1
    return units


def _clean(segment: str, base: int) -> tuple[str, list[int]]:
    """Drop noise chars, collapse spaces, strip; with each kept char's index (from `base`)."""
    if not _NEEDS_CLEANING.search(segment):
        # Most lines: nothing to drop or collapse, only the ends to strip.
        lead = len(segment) - len(segment.lstrip())
        text = segment.strip()
        return text, list(range(base + lead, base + lead + len(text)))
    parts: list[str] = []
    sources: list[int] = []
    for match in _TOKEN.finditer(segment):
        if match.group(1) is None:
            parts.append(match.group())
            sources.extend(range(base + match.start(), base + match.end()))
        elif space := _SPACE.search(match.group()):
            parts.append(" ")
            sources.append(base + match.start() + space.start())
    text = "".join(parts)
    # str.strip also removes whitespace that is neither noise nor a space (U+2003, U+3000...).
    lead = len(text) - len(text.lstrip())
    kept = len(text.strip())
    return text[lead : lead + kept], sources[lead : lead + kept]


def _page_lines(textpage: pdfium.PdfTextPage) -> tuple[str, list[int] | None, list[_Line]]:
    """The page's pdfium text and its lines, each with its position where pdfium can tell it."""
    # Lone surrogates are kept (and dropped later as noise) so indices match pdfium's text.
    raw = textpage.get_text_range(errors="surrogatepass")
    units = _utf16_units(raw)
    segments: list[tuple[int, str]] = []
    pos = 0
    for match in _LINE_BREAK.finditer(raw):
        segments.append((pos, raw[pos : match.start()]))
        pos = match.end()
    segments.append((pos, raw[pos:]))
    lines: list[_Line] = []
    for start, segment in segments:
        text, sources = _clean(segment.replace("\x02", "-"), start)
        line = _Line(text, sources)
        if text:
            first = start + (len(segment) - len(segment.lstrip()))
            char_index = pdfium_c.FPDFText_GetCharIndexFromTextIndex(
                textpage, first if units is None else units[first]
            )
            if char_index >= 0:
                try:
                    _, bottom, _, top = textpage.get_charbox(char_index, loose=True)
                except pdfium.PdfiumError:
                    pass  # no geometry for this char; the text rules still apply
                else:
                    line.top, line.height = top, max(top - bottom, 0.0)
        lines.append(line)
    return raw, units, lines


def _pitch(line: _Line, nxt: _Line) -> tuple[float, float] | None:
    """(distance down the page from one line to the next, the taller line's height)."""
    if line.top is None or nxt.top is None or not line.height or not nxt.height:
        return None
    return line.top - nxt.top, max(line.height, nxt.height)


def _breaks_after(line: _Line, nxt: _Line, longest: int, usual_pitch: float) -> bool:
    """Whether a paragraph ends between `line` and the next line."""
    if not line.text or not nxt.text:
        return True
    if _BULLET.match(nxt.text):
        return True
    geometry = _pitch(line, nxt)
    if geometry is not None:
        pitch, height = geometry
        # A negative pitch is a jump up: a new column or a text box placed out of order.
        if pitch <= 0 or pitch > max(_PARAGRAPH_GAP * height, _PITCH_FACTOR * usual_pitch):
            return True
    return bool(_ENDS_SENTENCE.search(line.text)) and len(line.text) < _SHORT_LINE * longest


def _join(lines: list[_Line]) -> tuple[str, list[int]]:
    """Join wrapped lines into one paragraph, undoing end-of-line hyphenation."""
    out = lines[0].text
    sources = list(lines[0].sources)
    for line in lines[1:]:
        if len(out) > 1 and out.endswith("-") and out[-2].isalpha() and line.text[:1].islower():
            out = out[:-1] + line.text
            sources.pop()
        else:
            out = f"{out} {line.text}"
            sources.append(JOINED)
        sources.extend(line.sources)
    return out, sources


def _split_paragraphs(lines: list[_Line]) -> list[tuple[str, list[int]]]:
    """Group a page's lines into paragraphs, each with its chars' sources."""
    texts = [line.text for line in lines if line.text]
    if not texts:
        return []
    longest = max(len(text) for text in texts)
    geometry = [_pitch(line, nxt) for line, nxt in zip(lines, lines[1:], strict=False)]
    pitches = [pitch for pitch, _ in filter(None, geometry) if pitch > 0]
    usual_pitch = statistics.median(pitches) if pitches else 0.0
    paragraphs: list[tuple[str, list[int]]] = []
    current: list[_Line] = []
    for index, line in enumerate(lines):
        if line.text:
            current.append(line)
        nxt = lines[index + 1] if index + 1 < len(lines) else None
        if current and (nxt is None or _breaks_after(line, nxt, longest, usual_pitch)):
            paragraphs.append(_join(current))
            current = []
    return paragraphs


def page_text(textpage: pdfium.PdfTextPage) -> PageText:
    """The page's paragraphs as the loader stores them, with each char's pdfium source.

    The caller holds _PDFIUM_LOCK and owns `textpage`.
    """
    raw, units, lines = _page_lines(textpage)
    paragraphs = _split_paragraphs(lines)
    return PageText(
        raw,
        [text for text, _ in paragraphs],
        [sources for _, sources in paragraphs],
        units,
    )


def _open_failure(path: Path, exc: pdfium.PdfiumError) -> ExtractionFailed:
    code = getattr(exc, "err_code", None)
    if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
        message = "The PDF is encrypted; remove the password and ingest again."
    elif code == pdfium_c.FPDF_ERR_FILE:
        message = f"{path.name} could not be opened; check that the file exists and is readable."
    else:
        message = (
            f"{path.name} is damaged or not a PDF; open it in a PDF viewer and save or "
            "print it to a new PDF."
        )
    return ExtractionFailed(message, details={"reason": str(exc)})


def _metadata(document: pdfium.PdfDocument) -> dict[str, Any]:
    info = document.get_metadata_dict(skip_empty=True)
    metadata: dict[str, Any] = {"page_count": len(document)}
    for key in ("Title", "Author"):
        value = " ".join(str(info.get(key, "")).split())
        if value:
            metadata[key.lower()] = value
    return metadata


def open_pdf(path: Path) -> pdfium.PdfDocument:
    """Open a PDF, translating pdfium's failures; the caller holds _PDFIUM_LOCK and closes it."""
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        raise _open_failure(path, exc) from exc
    except FileNotFoundError as exc:
        raise ExtractionFailed(f"{path.name} does not exist.") from exc


class PdfLoader(Loader):
    """PDF: one span per paragraph, with its 1-based page number.

    The metadata's `page_starts[i]` is the offset in the text where page i + 1's first
    paragraph starts, or would start when the page has no text (past the end for trailing
    empty pages): the page views use it to re-read only the pages a passage is on.

    A page whose text layer is negligible (a scan) is rendered and recognised with OCR when
    the options allow it: its paragraphs come from the recognised lines, and the metadata's
    `page_boxes[str(page)]` keeps the page size and each line's span and box (points,
    top-left), which is how its passages are highlighted. `ocr_pages` lists those pages;
    `warnings` the pages OCR failed on (the rest of the document is still read).
    """

    suffixes = (".pdf",)
    file_type = "pdf"

    def load(self, path: Path) -> ExtractedDocument:
        """Extract each page's paragraphs and the title/author/page_count/page_starts metadata."""
        builder = DocumentBuilder()
        page_starts: list[int] = []
        scans = _Scans(self.options)
        with _PDFIUM_LOCK:
            document = open_pdf(path)
        try:
            with _PDFIUM_LOCK:
                metadata = _metadata(document)
            count = metadata["page_count"]
            for index in range(count):
                # The lock is taken per page, so a page view is not held up for a whole book.
                with _PDFIUM_LOCK:
                    paragraphs, scan = self._page_paragraphs(document, index, scans)
                page_starts.append(builder.next_start)
                if scan is not None:
                    # Recognised outside the lock: OCR takes a second or more per page.
                    paragraphs = scans.recognise(
                        *scan, index + 1, builder.next_start, count, text_layer=paragraphs
                    )
                for paragraph in paragraphs:
                    builder.add(paragraph, page=index + 1)
        except pdfium.PdfiumError as exc:
            raise ExtractionFailed(
                f"{path.name} is damaged: PDFium could not read its pages.",
                details={"reason": str(exc)},
            ) from exc
        finally:
            with _PDFIUM_LOCK:
                document.close()
        if not builder.spans:
            raise scans.no_text(path.name, metadata.get("page_count", 0))
        return builder.build(metadata | {"page_starts": page_starts} | scans.metadata())

    @staticmethod
    def _page_paragraphs(
        document: pdfium.PdfDocument, index: int, scans: _Scans
    ) -> tuple[list[str], tuple[np.ndarray, float] | None]:
        """The page's text-layer paragraphs, or its image (and px per pt) when it needs OCR."""
        page = document[index]
        try:
            textpage = page.get_textpage()
            try:
                paragraphs = page_text(textpage).paragraphs
            finally:
                textpage.close()
            if not scans.wanted(paragraphs, page):
                return paragraphs, None
            scale = scans.scale(page)
            try:
                # The few words of text layer it has stay the fallback should OCR read less.
                return paragraphs, (render_rgb(page, scale), scale)
            except pdfium.PdfiumError as exc:
                scans.errors += 1
                scans.failed(index + 1, f"Page {index + 1} could not be rendered ({exc}).")
                return paragraphs, None
        finally:
            page.close()


def render_rgb(page: pdfium.PdfPage, scale: float) -> np.ndarray:
    """The page as displayed (crop box, /Rotate), (h, w, 3) RGB uint8; caller holds the lock."""
    bitmap = page.render(scale=scale, rev_byteorder=True)
    try:
        # A copy: the bitmap's memory is pdfium's, freed with it below.
        pixels = np.array(bitmap.to_numpy(), dtype=np.uint8, copy=True)
    finally:
        bitmap.close()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


class _Scans:
    """The OCR side of one PDF load: which pages to recognise, and what was found on them."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.boxes: dict[str, dict[str, Any]] = {}
        self.warnings: list[dict[str, Any]] = []
        self.errors = 0  # pages that could not be rendered or recognised at all
        self.skipped = 0  # pages without text left unread because OCR is off
        self._quiet = False  # warnings held back while OCR competes with a text layer

    def wanted(self, paragraphs: list[str], page: pdfium.PdfPage) -> bool:
        """Whether a page is a scan to recognise: negligible text, something drawn on it."""
        from studyrag.ingest.ocr import MIN_TEXT_CHARS, visible_chars

        if visible_chars(paragraphs) >= MIN_TEXT_CHARS:
            return False
        if pdfium_c.FPDFPage_CountObjects(page) <= 0:
            return False  # a blank page: nothing to read
        if not self.options.ocr:
            self.skipped += 1
            return False
        return True

    def scale(self, page: pdfium.PdfPage) -> float:
        """Pixels per point: the configured dpi, lowered so the longest side fits OCR's."""
        from studyrag.ingest.ocr import MAX_SIDE

        width, height = page.get_size()
        return min(self.options.ocr_dpi / 72.0, MAX_SIDE / max(width, height, 1.0))

    def recognise(
        self,
        image: np.ndarray,
        scale: float,
        page: int,
        page_start: int,
        count: int,
        *,
        text_layer: list[str] | None = None,
    ) -> list[str]:
        """The page's paragraphs from OCR; [] (and a warning) when recognition fails.

        `scale` is the image's pixels per point, `page_start` the page's offset in the text.
        A page with a short text layer keeps it when OCR reads no more than it holds (an
        upside-down or stylised page): a real text layer is never replaced by less.
        """
        from studyrag.ingest.ocr import get_engine, ocr_paragraphs, visible_chars

        if text_layer and visible_chars(text_layer) > 0:
            warnings_before = len(self.warnings)
            errors_before = self.errors
            self._quiet = True
            try:
                read = self.recognise(image, scale, page, page_start, count)
            finally:
                self._quiet = False
            if visible_chars(read) > visible_chars(text_layer):
                for warning in self.warnings[warnings_before:]:
                    self._report(warning)
                return read
            self.boxes.pop(str(page), None)
            del self.warnings[warnings_before:]
            self.errors = errors_before
            return text_layer

        try:
            lines = get_engine(self.options.ocr_threads).recognise(image)
        except StudyRAGError:
            raise  # OCR cannot run at all: the document fails with that reason
        except Exception as exc:
            log.warning("OCR of page %d failed", page, exc_info=exc)
            self.errors += 1
            self.failed(page, f"OCR of page {page} failed ({type(exc).__name__}: {exc}).")
            lines = None
        paragraphs: list[str] = []
        if lines is not None and not lines:
            self.failed(
                page,
                f"Page {page} has no text layer and OCR recognised no text on it "
                "(a blank or unreadable scan).",
            )
        elif lines is not None:
            found = ocr_paragraphs(lines, scale, len(DocumentBuilder.SEPARATOR))
            paragraphs = found.paragraphs
            self.boxes[str(page)] = {
                "width": round(image.shape[1] / scale, 2),
                "height": round(image.shape[0] / scale, 2),
                "lines": [
                    [page_start + s, page_start + e, *(round(v, 2) for v in box)]
                    for s, e, box in found.line_spans
                ],
            }
        if self.options.on_page is not None:
            self.options.on_page(page, count)
        return paragraphs

    def failed(self, page: int, message: str) -> None:
        warning = {"page": page, "message": message}
        self.warnings.append(warning)
        if not self._quiet:
            self._report(warning)

    def _report(self, warning: dict[str, Any]) -> None:
        if self.options.on_warning is not None:
            self.options.on_warning(warning)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.boxes:
            from studyrag.ingest.ocr import engine_version

            meta["page_boxes"] = self.boxes
            meta["ocr_pages"] = sorted(int(p) for p in self.boxes)
            meta["ocr"] = {"engine": engine_version(), "dpi": self.options.ocr_dpi}
        if self.warnings:
            meta["warnings"] = self.warnings
        if self.skipped:
            meta["pages_without_text"] = self.skipped
        return meta

    def no_text(self, name: str, page_count: int) -> ExtractionFailed:
        details: dict[str, Any] = {"page_count": page_count}
        if self.skipped:
            return ExtractionFailed(
                f"{name} has no text layer (its pages are scanned images) and OCR is off; "
                "turn it on with STUDYRAG_INGEST__OCR=true and ingest it again.",
                details=details | {"pages_without_text": self.skipped},
                hint="Turn OCR on (STUDYRAG_INGEST__OCR=true, the default) and ingest it again.",
            )
        if self.errors:
            return ExtractionFailed(
                f"No page of {name} could be read: "
                + " ".join(w["message"] for w in self.warnings[:3]),
                details=details | {"warnings": self.warnings},
            )
        return ExtractionFailed(
            f"{name} has no extractable text: neither a text layer nor any text OCR could "
            "recognise.",
            details=details | {"ocr_pages": sorted(int(p) for p in self.boxes)},
            hint="Check that the pages are legible scans (200 dpi or better); "
            "or ingest it with the docling loader.",
        )
