"""PDF loader: text per page with pypdfium2, split into paragraphs by layout and line shape."""

from __future__ import annotations

import re
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Loader

# PDFium keeps global state and is not thread-safe; loaders run in a thread pool.
_PDFIUM_LOCK = threading.Lock()

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# pdfium marks a hyphen it found at a line end as U+0002; U+FFFE/U+FFFF are noise.
_NOISE = re.compile(r"[\x00\x01\x03-\x08\x0b-\x1f\x7f\ufffe\uffff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_ENDS_SENTENCE = re.compile(r"[.!?:;\"'\u201d\u2019)\]]$")
_BULLET = re.compile(r"^(?:[\u2022\u25aa\u25cf\u2023\u2043\u25e6*\-\u2013]\s|\(?\d{1,3}[.)]\s)")
# A line shorter than this share of the page's longest line, ending a sentence, ends a paragraph.
_SHORT_LINE = 0.75
# A line pitch this many times the line height, and this many times the page's usual pitch,
# marks a new paragraph; the second rule keeps 1.5- and double-spaced text in one piece.
_PARAGRAPH_GAP = 1.5
_PITCH_FACTOR = 1.3


@dataclass(slots=True)
class _Line:
    text: str
    top: float | None = None
    height: float | None = None


def _clean(line: str) -> str:
    return _SPACES.sub(" ", _NOISE.sub("", line)).strip()


def _page_lines(textpage: pdfium.PdfTextPage) -> list[_Line]:
    """The page's lines, each with its vertical position where pdfium can tell it."""
    raw = textpage.get_text_range()
    segments: list[tuple[int, str]] = []
    pos = 0
    for match in _LINE_BREAK.finditer(raw):
        segments.append((pos, raw[pos : match.start()]))
        pos = match.end()
    segments.append((pos, raw[pos:]))
    lines: list[_Line] = []
    for start, segment in segments:
        text = _clean(segment.replace("\x02", "-"))
        line = _Line(text)
        if text:
            first = start + (len(segment) - len(segment.lstrip()))
            char_index = pdfium_c.FPDFText_GetCharIndexFromTextIndex(textpage, first)
            if char_index >= 0:
                try:
                    _, bottom, _, top = textpage.get_charbox(char_index, loose=True)
                except pdfium.PdfiumError:
                    pass  # no geometry for this char; the text rules still apply
                else:
                    line.top, line.height = top, max(top - bottom, 0.0)
        lines.append(line)
    return lines


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


def _join(lines: list[str]) -> str:
    """Join wrapped lines into one paragraph, undoing end-of-line hyphenation."""
    out = lines[0]
    for line in lines[1:]:
        if len(out) > 1 and out.endswith("-") and out[-2].isalpha() and line[:1].islower():
            out = out[:-1] + line
        else:
            out = f"{out} {line}"
    return out


def _split_paragraphs(lines: list[_Line]) -> list[str]:
    """Group a page's lines into paragraphs."""
    texts = [line.text for line in lines if line.text]
    if not texts:
        return []
    longest = max(len(text) for text in texts)
    geometry = [_pitch(line, nxt) for line, nxt in zip(lines, lines[1:], strict=False)]
    pitches = [pitch for pitch, _ in filter(None, geometry) if pitch > 0]
    usual_pitch = statistics.median(pitches) if pitches else 0.0
    paragraphs: list[str] = []
    current: list[str] = []
    for index, line in enumerate(lines):
        if line.text:
            current.append(line.text)
        nxt = lines[index + 1] if index + 1 < len(lines) else None
        if current and (nxt is None or _breaks_after(line, nxt, longest, usual_pitch)):
            paragraphs.append(_join(current))
            current = []
    return paragraphs


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


class PdfLoader(Loader):
    """PDF: one span per paragraph, with its 1-based page number."""

    suffixes = (".pdf",)
    file_type = "pdf"

    def load(self, path: Path) -> ExtractedDocument:
        """Extract each page's paragraphs and the title/author/page_count metadata."""
        builder = DocumentBuilder()
        with _PDFIUM_LOCK:
            try:
                document = pdfium.PdfDocument(path)
            except pdfium.PdfiumError as exc:
                raise _open_failure(path, exc) from exc
            except FileNotFoundError as exc:
                raise ExtractionFailed(f"{path.name} does not exist.") from exc
            try:
                metadata = _metadata(document)
                for page_number in range(1, len(document) + 1):
                    for paragraph in self._page_paragraphs(document, page_number - 1):
                        builder.add(paragraph, page=page_number)
            except pdfium.PdfiumError as exc:
                raise ExtractionFailed(
                    f"{path.name} is damaged: PDFium could not read its pages.",
                    details={"reason": str(exc)},
                ) from exc
            finally:
                document.close()
        if not builder.spans:
            raise ExtractionFailed(
                "The PDF has no extractable text (it is probably scanned images); run OCR on "
                "it first, or ingest it with the docling loader.",
                details={"page_count": metadata.get("page_count", 0)},
            )
        return builder.build(metadata)

    @staticmethod
    def _page_paragraphs(document: pdfium.PdfDocument, index: int) -> list[str]:
        page = document[index]
        try:
            textpage = page.get_textpage()
            try:
                return _split_paragraphs(_page_lines(textpage))
            finally:
                textpage.close()
        finally:
            page.close()
