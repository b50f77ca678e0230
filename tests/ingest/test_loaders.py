"""Loaders against generated documents: pages, sections, kinds, metadata, encodings, bad input."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import docx
import pytest
from docx.oxml import OxmlElement
from docx.oxml.ns import qn

from studyrag.errors import ExtractionFailed, MissingExtraError, UnsupportedFileType
from studyrag.ingest.loaders import (
    SUPPORTED_SUFFIXES,
    ExtractedDocument,
    get_loader,
    sniff_file_type,
)
from studyrag.ingest.loaders.base import Loader, Span
from studyrag.ingest.loaders.docling import DoclingLoader
from studyrag.ingest.loaders.docx import DocxLoader
from studyrag.ingest.loaders.html import HtmlLoader
from studyrag.ingest.loaders.markdown import MarkdownLoader
from studyrag.ingest.loaders.pdf import PdfLoader
from studyrag.ingest.loaders.text import TextLoader, decode_text
from tests.ingest import fixtures


def load(path: Path) -> ExtractedDocument:
    return get_loader(path).load(path)


def span_with(doc: ExtractedDocument, needle: str) -> Span:
    """The one span whose text contains `needle`."""
    found = [span for span in doc.spans if needle in doc.span_text(span)]
    assert len(found) == 1, f"{needle!r} found in {len(found)} spans"
    return found[0]


def assert_well_formed(doc: ExtractedDocument) -> None:
    """Spans are ordered, stripped, non-empty and the text is exactly them joined by blank lines."""
    assert doc.spans
    assert doc.text == "\n\n".join(doc.span_text(span) for span in doc.spans)
    for span in doc.spans:
        piece = doc.span_text(span)
        assert piece and piece == piece.strip()
    for before, after in zip(doc.spans, doc.spans[1:], strict=False):
        assert before.end + 2 == after.start


def assert_fails(path: Path, *needles: str) -> ExtractionFailed:
    with pytest.raises(ExtractionFailed) as info:
        load(path)
    assert info.value.error_code == "DOC_003"
    assert info.value.to_dict()["error_code"] == "DOC_003"
    for needle in needles:
        assert needle.lower() in info.value.message.lower()
    return info.value


# --- PDF ---------------------------------------------------------------------------------
def test_pdf_facts_are_on_their_pages(tmp_path: Path) -> None:
    doc = load(fixtures.make_pdf(tmp_path))
    assert_well_formed(doc)
    for fact, where in fixtures.facts_for("pdf").items():
        span = span_with(doc, fact)
        assert span.page == where.page, fact
        assert span.section == where.section
    assert {span.page for span in doc.spans} == {1, 2, 3}
    assert all(span.kind == "paragraph" for span in doc.spans)


def test_pdf_metadata(tmp_path: Path) -> None:
    doc = load(fixtures.make_pdf(tmp_path))
    assert doc.metadata["title"] == fixtures.PDF_TITLE
    assert doc.metadata["author"] == fixtures.PDF_AUTHOR
    assert doc.metadata["page_count"] == 3


def test_pdf_pages_split_into_paragraphs(tmp_path: Path) -> None:
    doc = load(fixtures.make_pdf(tmp_path))
    expected = [paragraph for page in fixtures.PDF_PAGES for paragraph in page]
    # Wrapped lines are joined back into one paragraph each, in reading order.
    assert [doc.span_text(span) for span in doc.spans] == expected
    assert "\r" not in doc.text


def test_pdf_wide_line_spacing_keeps_paragraphs_whole(tmp_path: Path) -> None:
    from fpdf import FPDF

    first = "Wide line spacing is common in theses and drafts. " * 6
    second = "A second paragraph follows after a larger gap between the blocks. " * 5
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 10, first.strip())  # 10 mm pitch: about double spacing for 12 pt
    pdf.ln(8)
    pdf.multi_cell(0, 10, second.strip())
    path = tmp_path / "spaced.pdf"
    pdf.output(str(path))
    doc = PdfLoader().load(path)
    assert [doc.span_text(s) for s in doc.spans] == [first.strip(), second.strip()]


def test_pdf_encrypted_fails_readably(tmp_path: Path) -> None:
    error = assert_fails(fixtures.make_encrypted_pdf(tmp_path), "encrypted", "password")
    assert error.status_code == 422


def test_pdf_corrupt_fails(tmp_path: Path) -> None:
    assert_fails(fixtures.make_corrupt_pdf(tmp_path), "damaged")


def test_pdf_not_a_pdf_fails(tmp_path: Path) -> None:
    path = tmp_path / "fake.pdf"
    path.write_text("just some text pretending to be a PDF")
    assert_fails(path, "not a PDF")


def test_pdf_without_text_fails(tmp_path: Path) -> None:
    assert_fails(fixtures.make_textless_pdf(tmp_path), "no extractable text")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_pdf_loader_closes_the_file(tmp_path: Path) -> None:
    path = fixtures.make_pdf(tmp_path)
    PdfLoader().load(path)  # warm-up: lazily opened library handles are not leaks
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        PdfLoader().load(path)
    with pytest.raises(ExtractionFailed):
        PdfLoader().load(fixtures.make_encrypted_pdf(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before


# --- DOCX --------------------------------------------------------------------------------
def test_docx_sections_follow_headings(tmp_path: Path) -> None:
    doc = load(fixtures.make_docx(tmp_path))
    assert_well_formed(doc)
    for fact, where in fixtures.facts_for("docx").items():
        span = span_with(doc, fact)
        assert span.section == where.section, fact
        assert span.page is None
    intro = span_with(doc, "A short guide")
    assert intro.section == ()


def test_docx_kinds_and_order(tmp_path: Path) -> None:
    doc = load(fixtures.make_docx(tmp_path))
    headings = [(doc.span_text(s), s.section) for s in doc.spans if s.kind == "heading"]
    assert headings == [
        ("Cell Structure", ("Cell Structure",)),
        ("Membranes", ("Cell Structure", "Membranes")),
        ("Organelles", ("Cell Structure", "Organelles")),
        ("Cell Division", ("Cell Division",)),
    ]
    (bullets,) = [s for s in doc.spans if s.kind == "list"]
    assert doc.span_text(bullets) == "- Proteins\n- Cholesterol\n- Glycolipids"
    (table,) = [s for s in doc.spans if s.kind == "table"]
    assert doc.span_text(table) == (
        "Organelle | Function\nRibosome | Protein synthesis\nNucleus | Stores DNA"
    )
    # Tables and paragraphs come out interleaved, in body order.
    lysosomes = span_with(doc, "Lysosomes")
    organelles = doc.spans[doc.spans.index(table) - 1]
    assert doc.span_text(organelles) == "Organelles"
    assert organelles.start < table.start < lysosomes.start


def test_docx_metadata(tmp_path: Path) -> None:
    doc = load(fixtures.make_docx(tmp_path))
    assert doc.metadata["title"] == fixtures.DOCX_TITLE
    assert doc.metadata["author"] == fixtures.DOCX_AUTHOR


def test_docx_title_levels_and_numbered_paragraphs(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_heading("Course Reader", level=0)  # the Title style
    document.add_heading("Part One", level=1)
    document.add_heading("Deep Detail", level=3)  # a skipped level still nests
    document.add_paragraph("Detail text.")
    document.add_heading("Second Chapter", level=2)  # replaces level 2 and deeper
    document.add_paragraph("Chapter text.")
    for text in ("first step", "second step"):
        paragraph = document.add_paragraph(text)  # Normal style, numbered through numPr
        num_pr = OxmlElement("w:numPr")
        ilvl = OxmlElement("w:ilvl")
        ilvl.set(qn("w:val"), "0")
        num_id = OxmlElement("w:numId")
        num_id.set(qn("w:val"), "1")
        num_pr.append(ilvl)
        num_pr.append(num_id)
        paragraph._p.get_or_add_pPr().append(num_pr)
    document.add_paragraph("After the list.")
    path = tmp_path / "reader.docx"
    document.save(str(path))

    doc = DocxLoader().load(path)
    assert span_with(doc, "Detail text.").section == ("Course Reader", "Part One", "Deep Detail")
    assert span_with(doc, "Chapter text.").section == (
        "Course Reader",
        "Part One",
        "Second Chapter",
    )
    steps = span_with(doc, "first step")
    assert steps.kind == "list"
    assert doc.span_text(steps) == "- first step\n- second step"
    assert span_with(doc, "After the list.").kind == "paragraph"
    assert doc.metadata["title"] == "Course Reader"  # no core title: the Title paragraph


@pytest.mark.parametrize("content", [b"", b"plain text, not a zip", b"PK\x03\x04broken zip"])
def test_docx_broken_fails(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.docx"
    path.write_bytes(content)
    assert_fails(path, "not a Word document")


def test_docx_random_bytes_fail(tmp_path: Path) -> None:
    assert_fails(fixtures.make_broken_docx(tmp_path), "damaged")


# --- HTML --------------------------------------------------------------------------------
def test_html_noise_removed(tmp_path: Path) -> None:
    doc = load(fixtures.make_html(tmp_path))
    assert_well_formed(doc)
    for noise in fixtures.HTML_NOISE:
        assert noise not in doc.text, noise


def test_html_structure(tmp_path: Path) -> None:
    doc = load(fixtures.make_html(tmp_path))
    for fact, where in fixtures.facts_for("html").items():
        assert span_with(doc, fact).section == where.section, fact
    assert [doc.span_text(s) for s in doc.spans if s.kind == "heading"] == [
        "Genetics",
        "Inheritance",
        "Mutations",
    ]
    assert doc.span_text(span_with(doc, "Dominant")) == (
        "- Dominant alleles\n- Recessive alleles\n  - Carriers"
    )
    assert span_with(doc, "Dominant").kind == "list"
    assert doc.span_text(span_with(doc, "BRCA1")) == "Gene | Trait\nBRCA1 | DNA repair"
    assert span_with(doc, "BRCA1").kind == "table"
    code = span_with(doc, "ATG")
    assert code.kind == "code"
    assert doc.span_text(code) == "ATG CGT\n  TAC"  # whitespace inside <pre> is kept
    # Inline markup does not break a paragraph apart.
    assert span_with(doc, "paired nucleotides").kind == "paragraph"
    assert [s.kind for s in doc.spans].count("paragraph") == 3


def test_html_metadata(tmp_path: Path) -> None:
    doc = load(fixtures.make_html(tmp_path))
    assert doc.metadata["title"] == fixtures.HTML_TITLE
    assert doc.metadata["author"] == "Barbara McClintock"


def test_html_declared_charset(tmp_path: Path) -> None:
    doc = load(fixtures.make_html_latin1(tmp_path))
    assert doc.text == "Cr\u00e8me br\u00fbl\u00e9e"
    assert doc.metadata["title"] == "Cr\u00e8me"


def test_html_text_without_tags_and_br(tmp_path: Path) -> None:
    path = tmp_path / "bare.htm"
    path.write_text("<body>Loose text <b>bold</b> here<br>next line<div>Block</div>tail</body>")
    doc = HtmlLoader().load(path)
    assert [doc.span_text(s) for s in doc.spans] == [
        "Loose text bold here\nnext line",
        "Block",
        "tail",
    ]
    assert "title" not in doc.metadata


def test_html_with_only_scripts_fails(tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    path.write_text("<html><head><script>var a = 1;</script></head><body><nav>Menu</nav></body>")
    assert_fails(path, "no readable text")


# --- Markdown ----------------------------------------------------------------------------
def test_markdown_structure(tmp_path: Path) -> None:
    doc = load(fixtures.make_markdown(tmp_path))
    assert_well_formed(doc)
    for fact, where in fixtures.facts_for("md").items():
        assert span_with(doc, fact).section == where.section, fact
    headings = [doc.span_text(s) for s in doc.spans if s.kind == "heading"]
    assert headings == ["Atoms", "Bonds", "Reactions"]  # not "not a heading"
    code = span_with(doc, "# not a heading")
    assert code.kind == "code"
    assert doc.span_text(code) == fixtures.MD_CODE
    assert code.section == ("Atoms", "Bonds")
    listing = span_with(doc, "Ionic bonds")
    assert listing.kind == "list"
    assert doc.span_text(listing) == "- Ionic bonds\n- Covalent bonds\n  - Polar\n- Metallic bonds"
    table = span_with(doc, "Hydrogen")
    assert table.kind == "table"
    assert doc.span_text(table) == "Bond | Strength\nCovalent | strong\nHydrogen | weak"


def test_markdown_front_matter_is_metadata_not_text(tmp_path: Path) -> None:
    doc = load(fixtures.make_markdown(tmp_path))
    assert doc.metadata["title"] == fixtures.MD_TITLE
    assert doc.metadata["encoding"] == "utf-8"
    assert "tags:" not in doc.text
    assert not doc.text.startswith("---")


def test_markdown_title_from_first_h1_and_setext(tmp_path: Path) -> None:
    path = tmp_path / "notes.markdown"
    path.write_text(
        "Intro line.\n\nOverview\n========\n\nBody text.\n\n### Deep ###\n\nDeep text.\n"
        "\n~~~\n## still code\n~~~\n\n## Next\n\nNext text.\n",
        encoding="utf-8",
    )
    doc = MarkdownLoader().load(path)
    assert doc.metadata["title"] == "Overview"
    assert span_with(doc, "Intro line.").section == ()
    assert span_with(doc, "Body text.").section == ("Overview",)
    assert span_with(doc, "Deep text.").section == ("Overview", "Deep")
    assert span_with(doc, "## still code").kind == "code"
    assert span_with(doc, "Next text.").section == ("Overview", "Next")


def test_markdown_shares_encoding_detection(tmp_path: Path) -> None:
    path = tmp_path / "utf16.md"
    path.write_bytes(b"\xff\xfe" + "# \u00dcbersicht\n\nGr\u00fc\u00dfe.\n".encode("utf-16-le"))
    doc = MarkdownLoader().load(path)
    assert doc.metadata["encoding"] == "utf-16-le"
    assert span_with(doc, "Gr\u00fc\u00dfe.").section == ("\u00dcbersicht",)


# --- plain text --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("maker", "expected", "encoding"),
    [
        (fixtures.make_txt_utf8, fixtures.TXT_UTF8, "utf-8"),
        (fixtures.make_txt_utf16, fixtures.TXT_UTF16, "utf-16-le"),
        (
            lambda d: fixtures.make_txt_utf16(d, "nobom.txt", bom=False),
            fixtures.TXT_UTF16,
            "utf-16-le",
        ),
        (fixtures.make_txt_latin1, fixtures.TXT_LATIN1.replace("\r\n", "\n"), "latin-1"),
    ],
    ids=["utf8", "utf16-bom", "utf16-no-bom", "latin1"],
)
def test_txt_encodings(tmp_path: Path, maker, expected: str, encoding: str) -> None:
    doc = load(maker(tmp_path))
    assert_well_formed(doc)
    assert doc.text == expected
    assert doc.metadata["encoding"] == encoding
    assert len(doc.spans) == 2  # split on the blank line
    assert all(span.page is None and span.section == () for span in doc.spans)


def test_txt_utf8_bom_and_utf16_be() -> None:
    assert decode_text(b"\xef\xbb\xbfhello") == ("hello", "utf-8-sig")
    assert decode_text(b"\xfe\xff" + "h\u00e9".encode("utf-16-be")) == ("h\u00e9", "utf-16-be")
    assert decode_text("plain words".encode("utf-16-be")) == ("plain words", "utf-16-be")


@pytest.mark.parametrize("whitespace", [False, True])
def test_txt_empty_fails(tmp_path: Path, whitespace: bool) -> None:
    assert_fails(fixtures.make_empty_txt(tmp_path, whitespace=whitespace), "empty")


def test_txt_binary_fails(tmp_path: Path) -> None:
    assert_fails(fixtures.make_binary_txt(tmp_path), "binary data, not text")


def test_txt_control_characters_fail(tmp_path: Path) -> None:
    path = tmp_path / "controls.txt"
    path.write_bytes(bytes(range(1, 32)) * 20 + b"some text")
    assert_fails(path, "binary")


def test_txt_keeps_lines_within_a_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_text("Roses are red,\nviolets are blue.\n \n\n\nSecond stanza.\n")
    doc = TextLoader().load(path)
    assert [doc.span_text(s) for s in doc.spans] == [
        "Roses are red,\nviolets are blue.",
        "Second stanza.",
    ]


# --- registry ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "loader"),
    [
        ("a.pdf", PdfLoader),
        ("a.PDF", PdfLoader),
        ("a.docx", DocxLoader),
        ("a.html", HtmlLoader),
        ("a.HTM", HtmlLoader),
        ("a.txt", TextLoader),
        ("a.md", MarkdownLoader),
        ("a.markdown", MarkdownLoader),
    ],
)
def test_get_loader_by_suffix(name: str, loader: type[Loader]) -> None:
    chosen = get_loader(Path(name))
    assert type(chosen) is loader
    assert Path(name).suffix.lower() in chosen.suffixes


def test_supported_suffixes() -> None:
    assert set(SUPPORTED_SUFFIXES) == {
        *(".pdf", ".docx", ".html", ".htm", ".txt", ".md", ".markdown"),
        *(".png", ".jpg", ".jpeg"),
    }


@pytest.mark.parametrize("name", ["slides.pptx", "archive.zip", "README"])
def test_get_loader_unknown_suffix(name: str) -> None:
    with pytest.raises(UnsupportedFileType) as info:
        get_loader(Path(name))
    assert info.value.error_code == "DOC_001"
    assert info.value.status_code == 415
    assert (Path(name).suffix or "(no extension)") in info.value.message
    assert ".pdf" in info.value.message


def test_sniff_file_type(tmp_path: Path) -> None:
    built = fixtures.make_all(tmp_path)
    for file_type, path in built.items():
        assert sniff_file_type(path) == file_type
    # Binary signatures beat the suffix; text types follow it.
    disguised = tmp_path / "really_a_pdf.txt"
    disguised.write_bytes(built["pdf"].read_bytes())
    assert sniff_file_type(disguised) == "pdf"
    no_suffix = tmp_path / "page"
    no_suffix.write_bytes(built["html"].read_bytes())
    assert sniff_file_type(no_suffix) == "html"
    notes = tmp_path / "notes.log"
    notes.write_text("just words")
    assert sniff_file_type(notes) == "txt"
    blob = tmp_path / "blob.bin"
    blob.write_bytes(fixtures.make_binary_txt(tmp_path).read_bytes())
    with pytest.raises(UnsupportedFileType):
        sniff_file_type(blob)


def test_every_fixture_loads_through_the_registry(tmp_path: Path) -> None:
    for file_type, path in fixtures.make_all(tmp_path).items():
        loader = get_loader(path)
        assert loader.file_type == file_type
        assert_well_formed(loader.load(path))


# --- docling (optional) ------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("docling") is not None, reason="docling installed")
def test_docling_missing_says_which_extra(tmp_path: Path) -> None:
    path = fixtures.make_pdf(tmp_path)
    with pytest.raises(MissingExtraError) as info:
        get_loader(path, prefer="docling")
    assert info.value.error_code == "CONFIG_002"
    assert "studyrag[docling]" in info.value.to_dict()["details"]["hint"]
    with pytest.raises(MissingExtraError):
        DoclingLoader("pdf").load(path)


def test_docling_preference_keeps_builtin_for_txt() -> None:
    # Plain text needs no layout model, so the preference does not apply (nor need docling).
    assert type(get_loader(Path("a.txt"), prefer="docling")) is TextLoader
