"""Page views of PDFs: rects of cited passages on generated pages, page images, the char map."""

from __future__ import annotations

import io
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from fpdf import FPDF
from PIL import Image

from studyrag.errors import (
    ExtractionFailed,
    HighlightUnavailable,
    InvalidSpan,
    OriginalMissing,
    PageNotFound,
    StudyRAGError,
)
from studyrag.ingest.loaders.base import ExtractedDocument
from studyrag.ingest.loaders.pdf import (
    JOINED,
    PdfLoader,
    _clean,
    _Line,
    _split_paragraphs,
    page_text,
)
from studyrag.ingest.pdf_views import (
    MAX_SCALE,
    MIN_SCALE,
    PageRects,
    highlight_rects,
    page_count,
    render_page_png,
)
from tests.ingest import fixtures

FONT_SIZE = 12
LINE = 14  # points between lines, and each cell's height
LEFT = 50
# The last line of page 1 and the first of page 2: one paragraph the page break cuts.
PAGE_END = "the last words on the first page"
PAGE_START = "first words on the second page"
HYPHEN_LINES = ("The light reactions of photo-", "synthesis happen in the thylakoids.")
WRAPPED_LINES = (
    "Stomata open during the day and close at",
    "night to save water when the air is dry",
    "and hot in the summer months.",
)
MATH_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuMathTeXGyre.ttf")


def _pdf() -> FPDF:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_font("Helvetica", size=FONT_SIZE)
    pdf.set_auto_page_break(False)
    return pdf


def _line(pdf: FPDF, x: float, y: float, text: str) -> None:
    pdf.set_xy(x, y)
    pdf.cell(h=LINE, text=text)


def text_x(pdf: FPDF, x: float, before: str) -> float:
    """Where a cell placed at x starts drawing the char after `before`."""
    return x + pdf.c_margin + pdf.get_string_width(before)


def make_layout_pdf(directory: Path) -> tuple[Path, FPDF]:
    """Three pages of text at known places; page 2 is cut by the page break mid-paragraph."""
    pdf = _pdf()
    pdf.add_page()
    _line(pdf, LEFT, 100, "Known phrase alpha beta gamma.")
    for index, text in enumerate(WRAPPED_LINES):
        _line(pdf, LEFT, 200 + index * LINE, text)
    for index, text in enumerate(HYPHEN_LINES):
        _line(pdf, LEFT, 300 + index * LINE, text)
    _line(pdf, LEFT, 780, f"A paragraph that runs on until {PAGE_END}")
    pdf.add_page()
    _line(pdf, LEFT, 60, f"and goes on with the {PAGE_START}.")
    pdf.add_page()
    _line(pdf, 300, 400, "Delta epsilon on the third page.")
    path = directory / "layout.pdf"
    pdf.output(str(path))
    return path, pdf


def load(path: Path) -> ExtractedDocument:
    return PdfLoader().load(path)


def rects_of(path: Path, doc: ExtractedDocument, phrase: str) -> list[PageRects]:
    start = doc.text.index(phrase)
    return highlight_rects(
        path, doc.text, start, start + len(phrase), page_starts=doc.metadata["page_starts"]
    )


def near(value: float, expected: float, tolerance: float = 1.5) -> bool:
    return abs(value - expected) <= tolerance


def assert_on_line(rect: tuple[float, float, float, float], top: float) -> None:
    """The rect covers the text line of a cell whose top is `top` (points, top-left origin)."""
    x0, y0, x1, y1 = rect
    assert x0 < x1 and y0 < y1
    assert near((y0 + y1) / 2, top + LINE / 2, 3.0), (rect, top)
    assert FONT_SIZE - 1 <= y1 - y0 <= 1.5 * LINE


# --- rects -------------------------------------------------------------------------------
def test_phrase_rect_sits_where_it_was_drawn(tmp_path: Path) -> None:
    path, pdf = make_layout_pdf(tmp_path)
    doc = load(path)
    [found] = rects_of(path, doc, "alpha beta")
    assert found.page == 1
    assert (found.width, found.height) == pytest.approx((595.28, 841.89), abs=0.01)
    [rect] = found.rects
    assert near(rect[0], text_x(pdf, LEFT, "Known phrase "))
    assert near(rect[2], text_x(pdf, LEFT, "Known phrase alpha beta"))
    assert_on_line(rect, 100)


def test_span_across_a_wrapped_line_gives_one_rect_per_line(tmp_path: Path) -> None:
    path, pdf = make_layout_pdf(tmp_path)
    doc = load(path)
    # The loader joined the lines into one paragraph: the span reads across the line break.
    assert " ".join(WRAPPED_LINES) in doc.text
    [found] = rects_of(path, doc, "close at night to save")
    first, second = found.rects
    assert_on_line(first, 200)
    assert_on_line(second, 200 + LINE)
    assert near(first[0], text_x(pdf, LEFT, "Stomata open during the day and "))
    assert near(first[2], text_x(pdf, LEFT, WRAPPED_LINES[0]))
    assert near(second[0], text_x(pdf, LEFT, ""))
    assert near(second[2], text_x(pdf, LEFT, "night to save"))


def test_span_over_a_joined_hyphenation_covers_both_halves(tmp_path: Path) -> None:
    path, pdf = make_layout_pdf(tmp_path)
    doc = load(path)
    assert "photosynthesis happen" in doc.text  # the loader undid the hyphenation
    [found] = rects_of(path, doc, "photosynthesis")
    first, second = found.rects
    assert_on_line(first, 300)
    assert_on_line(second, 300 + LINE)
    assert near(first[0], text_x(pdf, LEFT, "The light reactions of "))
    assert near(first[2], text_x(pdf, LEFT, "The light reactions of photo"))
    assert near(second[2], text_x(pdf, LEFT, "synthesis"))


def test_span_across_a_page_break_gives_rects_on_both_pages(tmp_path: Path) -> None:
    path, pdf = make_layout_pdf(tmp_path)
    doc = load(path)
    start = doc.text.index(PAGE_END)
    end = doc.text.index(PAGE_START) + len(PAGE_START)
    found = highlight_rects(path, doc.text, start, end, page_starts=doc.metadata["page_starts"])
    assert [page.page for page in found] == [1, 2]
    [last] = found[0].rects
    [first] = found[1].rects
    assert_on_line(last, 780)
    assert near(last[0], text_x(pdf, LEFT, "A paragraph that runs on until "))
    assert_on_line(first, 60)
    assert near(first[0], text_x(pdf, LEFT, ""))
    assert near(first[2], text_x(pdf, LEFT, f"and goes on with the {PAGE_START}"))


def test_pages_walked_without_page_starts_give_the_same_rects(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    doc = load(path)
    for phrase in ("alpha beta", "photosynthesis", "Delta epsilon", f"{PAGE_END}\n\nand"):
        start = doc.text.index(phrase)
        span = (start, start + len(phrase))
        walked = highlight_rects(path, doc.text, *span)
        assert walked == highlight_rects(
            path, doc.text, *span, page_starts=doc.metadata["page_starts"]
        )
        assert walked


def test_fixture_facts_are_highlighted_on_their_pages(tmp_path: Path) -> None:
    path = fixtures.make_pdf(tmp_path)
    doc = load(path)
    for fact, where in fixtures.facts_for("pdf").items():
        [found] = rects_of(path, doc, fact)
        assert found.page == where.page
        # Each fact starts its page's first or second paragraph, on one line of 12 pt text.
        assert found.rects
        for x0, y0, x1, y1 in found.rects:
            assert 0 <= x0 < x1 <= found.width and 0 <= y0 < y1 <= found.height
            assert y1 - y0 < 2 * FONT_SIZE


def test_a_span_of_only_separators_has_no_rects(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    doc = load(path)
    start = doc.text.index("\n\n")
    assert highlight_rects(path, doc.text, start, start + 2) == []


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rects_cover_the_rendered_ink_on_rotated_cropped_pages(
    tmp_path: Path, rotation: int
) -> None:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_font("Helvetica", size=24)
    pdf.add_page()
    pdf.set_xy(120, 200)
    pdf.cell(text="Rotated words")
    plain = tmp_path / "plain.pdf"
    pdf.output(str(plain))
    document = pdfium.PdfDocument(plain)
    page = document[0]
    page.set_rotation(rotation)
    page.set_cropbox(30, 40, 500, 700)  # moves the origin: the rects must follow
    page.close()
    path = tmp_path / f"rotated{rotation}.pdf"
    document.save(path)
    document.close()

    doc = load(path)
    [found] = highlight_rects(path, doc.text, 0, len("Rotated words"))
    crop = (470, 660) if rotation in (0, 180) else (660, 470)
    assert (found.width, found.height) == pytest.approx(crop)
    [rect] = found.rects
    scale = 2.0
    image = np.asarray(Image.open(io.BytesIO(render_page_png(path, 1, scale=scale))).convert("L"))
    rows, cols = np.nonzero(image < 160)
    ink = (
        cols.min() / scale,
        rows.min() / scale,
        (cols.max() + 1) / scale,
        (rows.max() + 1) / scale,
    )
    # The ink lies inside the rect, and the rect is no bigger than the font's line box.
    assert rect[0] - 1 <= ink[0] and rect[1] - 1 <= ink[1], (rect, ink)
    assert ink[2] <= rect[2] + 1 and ink[3] <= rect[3] + 1, (rect, ink)
    assert all(abs(r - i) <= 8 for r, i in zip(rect, ink, strict=True)), (rect, ink)


@pytest.mark.skipif(not MATH_FONT.is_file(), reason="needs the DejaVu math font")
def test_chars_outside_the_bmp_do_not_shift_the_map(tmp_path: Path) -> None:
    # pdfium counts a char outside the BMP as two (a surrogate pair); Python counts one.
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_font("math", fname=str(MATH_FONT))
    pdf.set_font("math", size=FONT_SIZE)
    pdf.add_page()
    line = "Let \U0001d465\U0001d466\U0001d467 be three unknowns here"
    _line(pdf, LEFT, 100, line)
    path = tmp_path / "math.pdf"
    pdf.output(str(path))
    doc = load(path)
    [found] = rects_of(path, doc, "unknowns")
    [rect] = found.rects
    assert near(rect[0], text_x(pdf, LEFT, line[: line.index("unknowns")]))
    assert near(rect[2], text_x(pdf, LEFT, line[: line.index(" here")]))


# --- the char map ------------------------------------------------------------------------
def _same_char(shown: str, source: str) -> bool:
    """Whether a char of the cleaned text may come from this pdfium char (the cleaning rules)."""
    if shown == source:
        return True
    if shown == "-" and source == "\x02":  # pdfium's end-of-line hyphen
        return True
    return shown == " " and source in " \t\u00a0"  # a collapsed run of spaces


def test_every_char_of_the_cleaned_text_maps_to_its_pdfium_char(tmp_path: Path) -> None:
    paths = [make_layout_pdf(tmp_path)[0], fixtures.make_pdf(tmp_path)]
    pdf = _pdf()
    pdf.add_page()
    _line(pdf, LEFT, 100, "Spaces\u00a0and   runs  of\u00a0\u00a0blanks stay one space.")
    paths.append(tmp_path / "spaces.pdf")
    pdf.output(str(paths[-1]))
    for path in paths:
        doc = load(path)
        document = pdfium.PdfDocument(path)
        try:
            for index in range(len(document)):
                page = document[index]
                textpage = page.get_textpage()
                text = page_text(textpage)
                offset = doc.metadata["page_starts"][index]
                for paragraph, sources in zip(text.paragraphs, text.sources, strict=True):
                    # What the loader stored for this page is what page_text reads again.
                    assert doc.text[offset : offset + len(paragraph)] == paragraph
                    offset += len(paragraph) + 2
                    assert len(sources) == len(paragraph)
                    for shown, source in zip(paragraph, sources, strict=True):
                        if source == JOINED:
                            assert shown == " "
                            continue
                        assert _same_char(shown, text.raw[source]), (shown, text.raw[source])
                        char = pdfium_c.FPDFText_GetCharIndexFromTextIndex(
                            textpage, text.text_index(source)
                        )
                        assert pdfium_c.FPDFText_GetUnicode(textpage, char) == ord(text.raw[source])
                textpage.close()
                page.close()
        finally:
            document.close()


# The loader's cleaning before it kept a map: the mapped cleaner must give the same text.
_OLD_NOISE = re.compile(r"[\x00\x01\x03-\x08\x0b-\x1f\x7f\ufffe\uffff]")
_OLD_SPACES = re.compile(r"[ \t\u00a0]+")


def test_the_mapped_cleaner_keeps_the_loaders_text() -> None:
    alphabet = "ab- .\t\u00a0\u2003\x01\x03\x1c\x1f\x7f\ufffe\uffff\ud800"
    rng = random.Random(3)
    for _ in range(3000):
        segment = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        base = rng.randint(0, 50)
        text, sources = _clean(segment, base)
        without_surrogates = segment.replace("\ud800", "")  # the old decoding dropped them
        assert text == _OLD_SPACES.sub(" ", _OLD_NOISE.sub("", without_surrogates)).strip()
        assert len(sources) == len(text)
        assert sources == sorted(set(sources))
        for shown, source in zip(text, sources, strict=True):
            assert _same_char(shown, segment[source - base])


def test_a_hyphenation_the_loader_undoes_drops_the_hyphens_source() -> None:
    # This pdfium joins "photo-" + "synthesis" itself (the hyphen becomes U+FFFE, noise);
    # the loader's own join is for a hyphen pdfium leaves before a line break.
    lines = [
        _Line("of photo-", list(range(0, 9)), top=700.0, height=14.0),
        _Line("synthesis and", list(range(11, 24)), top=686.0, height=14.0),
        _Line("light", list(range(26, 31)), top=672.0, height=14.0),
    ]
    [(text, sources)] = _split_paragraphs(lines)
    assert text == "of photosynthesis and light"
    assert sources == [*range(0, 8), *range(11, 24), JOINED, *range(26, 31)]


def test_page_starts_point_at_each_pages_first_paragraph(tmp_path: Path) -> None:
    pdf = _pdf()
    for text in ("Page one text.", None, "Page three text.", None):
        pdf.add_page()
        if text:
            _line(pdf, LEFT, 100, text)
    path = tmp_path / "gaps.pdf"
    pdf.output(str(path))
    doc = load(path)
    assert doc.text == "Page one text.\n\nPage three text."
    # An empty page starts where the next text would: page 2 with page 3, page 4 past the end.
    assert doc.metadata["page_starts"] == [0, 16, 16, 34]
    [found] = rects_of(path, doc, "three")
    assert found.page == 3


# --- errors ------------------------------------------------------------------------------
def test_a_span_outside_the_text_is_refused(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    doc = load(path)
    for start, end in ((-1, 5), (5, 5), (7, 3), (0, len(doc.text) + 1)):
        with pytest.raises(InvalidSpan) as info:
            highlight_rects(path, doc.text, start, end)
        assert info.value.error_code == "DOC_009"


def test_a_changed_file_is_reported_not_highlighted(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    doc = load(path)
    start = doc.text.index("Delta")
    fixtures.make_pdf(tmp_path, name=path.name)  # another PDF in its place, same page count
    for page_starts in (doc.metadata["page_starts"], None):
        with pytest.raises(HighlightUnavailable) as info:
            highlight_rects(path, doc.text, start, start + 5, page_starts=page_starts)
        assert (info.value.error_code, info.value.status_code) == ("DOC_013", 409)
        assert "no longer gives the text" in info.value.message
    with pytest.raises(HighlightUnavailable, match="page offsets"):
        highlight_rects(path, doc.text, start, start + 5, page_starts=[0, 10])


def test_a_missing_or_broken_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pdf"
    with pytest.raises(OriginalMissing) as gone:
        highlight_rects(missing, "some text", 0, 4)
    assert (gone.value.error_code, gone.value.status_code) == ("DOC_011", 404)
    with pytest.raises(OriginalMissing):
        render_page_png(missing, 1)
    fake = tmp_path / "fake.pdf"
    fake.write_text("just some text pretending to be a PDF")
    for call in (
        lambda: render_page_png(fake, 1),
        lambda: highlight_rects(fake, "some text", 0, 4),
        lambda: page_count(fake),
    ):
        with pytest.raises(ExtractionFailed, match="not a PDF"):
            call()
    with pytest.raises(ExtractionFailed):
        render_page_png(fixtures.make_corrupt_pdf(tmp_path), 1)


# --- page images -------------------------------------------------------------------------
def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every row: a broken stream fails here
    return image.size


def test_page_renders_as_png_whose_size_follows_the_scale(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    assert page_count(path) == 3
    width, height = 595.28, 841.89
    assert png_size(render_page_png(path, 1, scale=1.0)) == (596, 842)
    assert png_size(render_page_png(path, 3, scale=2.0)) == (
        math.ceil(width * 2),
        math.ceil(height * 2),
    )
    assert png_size(render_page_png(path, 2, scale=0.5)) == (298, 421)


def test_rendered_page_shows_the_text_where_its_rects_are(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    doc = load(path)
    [found] = rects_of(path, doc, "Delta epsilon")
    image = np.asarray(Image.open(io.BytesIO(render_page_png(path, 3, scale=1.0))).convert("L"))
    x0, y0, x1, y1 = (round(v) for v in found.rects[0])
    assert (image[y0:y1, x0:x1] < 128).mean() > 0.05  # glyphs
    assert (image[y1 + 20 : y1 + 60, x0:x1] == 255).all()  # blank page below the line


def test_page_size_is_capped_and_the_scale_clamped(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    width, height = png_size(render_page_png(path, 1, scale=3.0, max_pixels=250_000))
    assert width * height <= 250_000
    assert width * height > 240_000  # lowered only as far as needed
    assert width / height == pytest.approx(595.28 / 841.89, abs=0.01)
    small = FPDF(unit="pt", format=(100, 60))  # the biggest scale stays a small image
    small.add_page()
    small.output(str(tmp_path / "small.pdf"))
    for scale, expected in ((1000.0, MAX_SCALE), (float("inf"), MAX_SCALE), (0.0, MIN_SCALE)):
        assert png_size(render_page_png(tmp_path / "small.pdf", 1, scale=scale)) == (
            math.ceil(100 * expected),
            math.ceil(60 * expected),
        )
    with pytest.raises(ValueError):
        render_page_png(path, 1, scale=float("nan"))


@pytest.mark.parametrize("page", [0, 4, -1])
def test_a_page_out_of_range_is_not_found(tmp_path: Path, page: int) -> None:
    path, _ = make_layout_pdf(tmp_path)
    with pytest.raises(PageNotFound) as info:
        render_page_png(path, page)
    error: StudyRAGError = info.value
    assert (error.error_code, error.status_code) == ("DOC_008", 404)
    assert error.details == {"page": page, "page_count": 3}
    assert "has 3 pages" in error.message


# --- threads -----------------------------------------------------------------------------
def test_views_and_the_loader_run_side_by_side_in_threads(tmp_path: Path) -> None:
    path, _ = make_layout_pdf(tmp_path)
    book = fixtures.make_pdf(tmp_path)
    doc = load(path)
    start = doc.text.index("photosynthesis")

    def highlight() -> object:
        return highlight_rects(path, doc.text, start, start + 14)

    jobs = [
        highlight,
        lambda: render_page_png(path, 1, scale=0.5),
        lambda: load(book).text,
        lambda: page_count(book),
    ]
    expected = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [(index, pool.submit(jobs[index])) for index in list(range(len(jobs))) * 6]
        for index, future in futures:
            assert future.result() == expected[index]
