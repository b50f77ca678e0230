"""OCR of scanned pages and images with rapidocr-onnxruntime (its models ship in the wheel).

A page image goes in, recognised lines come out, each with its box in the image's pixels
(origin top-left). `ocr_paragraphs` turns a page's lines into the loader's paragraphs with
the same rules as a text PDF's (ingest/loaders/pdf.py), and records which span of the
document's text each line covers, so a passage can be highlighted on a scan
(ingest/pdf_views.py `ocr_page_rects`).

One engine per process; one page is recognised at a time, on `threads` onnxruntime threads
at nice +10 (the threads are created by, and inherit the priority of, the one OCR thread):
a scanned book uploading never takes more cores than it was given, nor the chat's turn.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from studyrag.errors import ExtractionFailed

log = logging.getLogger(__name__)

Rect = tuple[float, float, float, float]

#: The engine and its version, recorded in the metadata of every document it read.
ENGINE = "rapidocr-onnxruntime"
# A page whose text layer has fewer visible chars than this has none worth keeping (a page
# number, a scanner's stamp): it is recognised instead.
MIN_TEXT_CHARS = 20
# Recognised lines scoring below this are dropped (rapidocr's own default threshold).
_MIN_SCORE = 0.5
# Longest image side handed to the detector; rapidocr shrinks larger ones to this (its
# default is 2000, which would undo a 200 dpi render of an A4 page: 2339 px).
MAX_SIDE = 3000
_OCR_NICE = 10
# Word spaces are told from letter gaps within each line: the gaps fall into two groups,
# split where the sorted widths jump the most. Measured on crops (line heights 20-26 px):
# DejaVu Sans at 150 dpi, letters 0.04-0.23 of the height apart, words 0.31-0.5; a 10-K's
# serif table at 200 dpi, letters 0.04-0.12, words 0.23-0.32. A word gap is at least
# MIN_WORD_GAP heights wide and at least _JUMP times the next narrower gap.
MIN_WORD_GAP = 0.18
_JUMP = 1.5


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One recognised line: its text, its box (x0, y0, x1, y1; pixels, top-left), its score."""

    text: str
    box: Rect
    score: float


class OcrEngine:
    """rapidocr with bounded threads; `recognise` is safe to call from any thread."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        # One thread runs every page: onnxruntime's pool threads are created by it and keep
        # its lower priority; pages of two documents queue here instead of sharing cores.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="studyrag-ocr", initializer=_lower_priority
        )
        self._engine: Any = None

    def _load(self) -> Any:
        try:
            import cv2
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # a broken install: it is a default dependency
            raise ExtractionFailed(
                "OCR is not available: rapidocr-onnxruntime cannot be imported.",
                details={"reason": str(exc)},
                hint="Install it with `pip install rapidocr-onnxruntime`, or set "
                "STUDYRAG_INGEST__OCR=false to skip scanned pages.",
            ) from exc
        cv2.setNumThreads(self.threads)
        engine = RapidOCR(
            intra_op_num_threads=self.threads,
            inter_op_num_threads=1,
            max_side_len=MAX_SIDE,
            text_score=_MIN_SCORE,
        )
        # rapidocr gives its loggers a handler of their own that prints to stderr at DEBUG;
        # its messages go through the application's logging like everyone else's.
        for name in ("RapidOCR", "OrtInferSession"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.setLevel(logging.WARNING)
        return engine

    def _run(self, image: np.ndarray) -> list[OcrLine]:
        """rapidocr's own steps (RapidOCR.__call__), keeping what spacing needs: each line's
        crop and the position of each recognised char in it."""
        if self._engine is None:
            self._engine = self._load()
        engine = self._engine
        # rapidocr reads arrays as OpenCV does: BGR.
        img = np.ascontiguousarray(image[:, :, ::-1])
        detected = self._detect(img)
        if detected is None:
            return []
        boxes, crops = detected
        # No line-orientation classifier: rapidocr's squeezes a line into 192x48 px and
        # turned 2 of the 3 upright lines of a clean 150 dpi page upside down (garbage out).
        # Pages come upright: PDF pages are rendered with their /Rotate, images with EXIF.
        recognised, _ = engine.text_rec(crops, True)
        lines: list[OcrLine] = []
        for points, crop, (text, score, info) in zip(boxes, crops, recognised, strict=True):
            if float(score) < _MIN_SCORE:
                continue
            text = " ".join(_spaced(str(text), crop, info).split())
            if text:
                xs, ys = points[:, 0], points[:, 1]
                box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
                lines.append(OcrLine(text, box, float(score)))
        return lines

    def _detect(self, img: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Line boxes (quads in `img`'s pixels), top to bottom, and each line's crop."""
        engine = self._engine
        raw_h, raw_w = img.shape[:2]
        img, ratio_h, ratio_w = engine.preprocess(img)
        record: dict[str, Any] = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        img, record = engine.maybe_add_letterbox(img, record)
        boxes, _ = engine.auto_text_det(img)
        if boxes is None:
            return None
        crops = engine.get_crop_img_list(img, boxes)
        return list(engine._get_origin_points(boxes, record, raw_h, raw_w)), crops

    def recognise(self, image: np.ndarray) -> list[OcrLine]:
        """The lines of an (h, w, 3) RGB uint8 image, top to bottom, left to right."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an (h, w, 3) uint8 RGB image is needed, not {image.shape}")
        return self._executor.submit(self._run, image).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


_ENGINES: dict[int, OcrEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(threads: int) -> OcrEngine:
    """The process's engine for `threads` onnxruntime threads (models load on first use)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(threads)
        if engine is None:
            engine = _ENGINES[threads] = OcrEngine(threads)
        return engine


def engine_version() -> str:
    """ "rapidocr-onnxruntime <version>" as installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{ENGINE} {version(ENGINE)}"
    except PackageNotFoundError:
        return ENGINE


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _OCR_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority then
        log.debug("OCR runs at normal priority")


def _ink_gaps(crop: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of ink-free columns of a line crop, inner runs only."""
    grey = crop.mean(axis=2) if crop.ndim == 3 else crop.astype(float)
    lo, hi = float(grey.min()), float(grey.max())
    if hi - lo < 32:  # no contrast: nothing to tell ink from paper
        return []
    # Dark text on light paper, or light on dark: ink is the minority side of the midpoint.
    dark: np.ndarray = np.asarray(grey < (lo + hi) / 2)
    ink = dark if dark.mean() < 0.5 else ~dark
    columns: list[bool] = np.asarray(ink.any(axis=0)).astype(bool).tolist()
    gaps: list[tuple[int, int]] = []
    start: int | None = None
    for x, has_ink in enumerate(columns):
        if not has_ink and start is None:
            start = x
        elif has_ink and start is not None:
            if start > 0:
                gaps.append((start, x))
            start = None
    return gaps


def _word_gap(widths: list[int], height: int) -> int | None:
    """The narrowest gap that parts words in a line, from its own gaps; None if none does.

    Letter gaps and word spaces form two groups; the split is the largest jump (as a ratio)
    between consecutive sorted widths that lands at MIN_WORD_GAP line heights or more and
    is at least _JUMP times the gap below it. A line of one word has no such jump.
    """
    best: tuple[float, int] | None = None
    for below, above in zip([0, *widths], widths, strict=False):
        if above < MIN_WORD_GAP * height:
            continue
        ratio = above / max(below, 1)
        if ratio >= _JUMP and (best is None or ratio > best[0]):
            best = (ratio, above)
    return None if best is None else best[1]


def _spaced(text: str, crop: np.ndarray, info: Any) -> str:
    """`text` with a space wherever the crop shows a word gap between two chars.

    The recogniser (trained mostly on Chinese) often drops the spaces of English text; the
    ink does not: a run of blank columns as wide as the line's word gaps (`_word_gap`)
    between two recognised chars (placed by their CTC columns) is a space between words.
    """
    height, width = crop.shape[:2]
    try:
        columns = float(info[0])
        positions = [c * width / columns for word in info[2] for c in word]
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return text
    if height > width or len(positions) != len(text) or columns <= 0:
        return text  # a vertical line, or chars the decoder did not place
    gaps = _ink_gaps(crop)
    least = _word_gap(sorted(b - a for a, b in gaps), height)
    wide = [(a + b) / 2 for a, b in gaps if least is not None and b - a >= least]
    if not wide:
        return text
    out: list[str] = [text[0]]
    gap = 0
    for index in range(1, len(text)):
        while gap < len(wide) and wide[gap] <= positions[index - 1]:
            gap += 1
        between = gap < len(wide) and wide[gap] < positions[index]
        if between and not text[index].isspace() and not text[index - 1].isspace():
            out.append(" ")
        out.append(text[index])
    return "".join(out)


def visible_chars(paragraphs: list[str]) -> int:
    """How many non-space chars the paragraphs hold."""
    return sum(len(p) - p.count(" ") for p in paragraphs)


@dataclass(frozen=True, slots=True)
class OcrParagraphs:
    """A recognised page as the loader stores it.

    `lines[i]` is (start, end) of recognised line i's text within the concatenated
    paragraphs (each paragraph followed by `separator`) and its box in points, or None when
    the line's text was dropped.
    """

    paragraphs: list[str]
    line_spans: list[tuple[int, int, Rect]]


def ocr_paragraphs(lines: list[OcrLine], scale: float, separator: int) -> OcrParagraphs:
    """Group recognised lines (pixels at `scale` px/pt) into paragraphs, like a text page.

    The paragraph rules are the PDF loader's (line pitch, short lines, bullets, hyphenated
    line ends). Boxes come back in points; spans are offsets from the page's first char,
    counting `separator` chars between paragraphs.
    """
    from studyrag.ingest.loaders.pdf import JOINED, _Line, _split_paragraphs

    in_points: list[tuple[str, Rect]] = [
        (
            line.text,
            (line.box[0] / scale, line.box[1] / scale, line.box[2] / scale, line.box[3] / scale),
        )
        for line in lines
        if line.text.strip()
    ]
    # Each line's text gets its own range of source indices (a gap of one between lines),
    # so every paragraph char can be traced to the line it came from.
    pdf_lines: list[_Line] = []
    owner: dict[int, int] = {}
    base = 0
    for index, (text, box) in enumerate(in_points):
        sources = list(range(base, base + len(text)))
        for source in sources:
            owner[source] = index
        # _Line geometry is page space (y up): top = -y0, the height the box's.
        pdf_lines.append(_Line(text, sources, top=-box[1], height=box[3] - box[1]))
        base += len(text) + 1
    paragraphs = _split_paragraphs(pdf_lines)
    spans: dict[int, list[int]] = {}
    offset = 0
    for text, sources in paragraphs:
        for position, source in enumerate(sources):
            if source != JOINED:
                span = spans.setdefault(owner[source], [offset + position, offset + position])
                span[1] = offset + position + 1
        offset += len(text) + separator
    line_spans = [
        (start, end, in_points[index][1]) for index, (start, end) in sorted(spans.items())
    ]
    return OcrParagraphs([text for text, _ in paragraphs], line_spans)
