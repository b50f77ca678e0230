"""Builders that generate small documents with known facts, for loader and end-to-end tests.

Every `make_*` function writes one file into `directory` and returns its path. `FACTS` maps
each known sentence to the fixture it is in and the page / section path a loader must report
for it. Every page of the PDF holds over 140 MiniLM tokens, so with any chunk_size up to
1024 no page is "tiny" (under chunk_size / 8) and a fact's chunk keeps its page.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fpdf import FPDF

PDF_TITLE = "Plant Biology Notes"
PDF_AUTHOR = "Ada Lovelace"
DOCX_TITLE = "Cell Biology Handbook"
DOCX_AUTHOR = "Rosalind Franklin"
HTML_TITLE = "Genetics Primer"
MD_TITLE = "Chemistry Notes"


@dataclass(frozen=True, slots=True)
class Fact:
    """Where a known sentence lives: which fixture, which page, which section path."""

    fixture: str  # "pdf", "docx", "html", "md", "txt"
    page: int | None
    section: tuple[str, ...]


FACTS: dict[str, Fact] = {
    # PDF (pages are 1-based; the PDF loader reports no sections)
    "Photosynthesis converts light energy into chemical energy stored in glucose.": Fact(
        "pdf", 1, ()
    ),
    "Chlorophyll absorbs blue and red light.": Fact("pdf", 2, ()),
    "The Calvin cycle fixes carbon dioxide in the stroma of the chloroplast.": Fact("pdf", 3, ()),
    # DOCX
    "Mitochondria produce ATP through cellular respiration.": Fact(
        "docx", None, ("Cell Structure",)
    ),
    "The phospholipid bilayer is selectively permeable.": Fact(
        "docx", None, ("Cell Structure", "Membranes")
    ),
    "Ribosome | Protein synthesis": Fact("docx", None, ("Cell Structure", "Organelles")),
    "Lysosomes digest worn-out organelles and cellular waste.": Fact(
        "docx", None, ("Cell Structure", "Organelles")
    ),
    "Mitosis produces two genetically identical daughter cells.": Fact(
        "docx", None, ("Cell Division",)
    ),
    # HTML
    "DNA is a double helix made of paired nucleotides.": Fact("html", None, ("Genetics",)),
    "Gregor Mendel studied inheritance in pea plants.": Fact(
        "html", None, ("Genetics", "Inheritance")
    ),
    "BRCA1 | DNA repair": Fact("html", None, ("Genetics", "Inheritance")),
    "Point mutations change a single base pair.": Fact("html", None, ("Genetics", "Mutations")),
    # Markdown
    "Electrons occupy shells around the nucleus.": Fact("md", None, ("Atoms",)),
    "Covalent bonds share electron pairs between atoms.": Fact("md", None, ("Atoms", "Bonds")),
    "Catalysts lower the activation energy of a reaction.": Fact(
        "md", None, ("Atoms", "Reactions")
    ),
}


def facts_for(fixture: str) -> dict[str, Fact]:
    """The known facts of one fixture ("pdf", "docx", "html", "md")."""
    return {text: fact for text, fact in FACTS.items() if fact.fixture == fixture}


# --- PDF ---------------------------------------------------------------------------------
PDF_PAGES: tuple[tuple[str, ...], ...] = (
    (
        "Photosynthesis converts light energy into chemical energy stored in glucose. "
        "It takes place in the leaves of green plants, where specialised cells are packed "
        "with chloroplasts.",
        "The overall reaction combines six molecules of carbon dioxide with six molecules of "
        "water to form one molecule of glucose and six molecules of oxygen. Oxygen leaves "
        "the leaf through small pores called stomata, which also let carbon dioxide in.",
        "Plants use the glucose for respiration, store it as starch in roots and seeds, or "
        "turn it into cellulose for their cell walls. Almost every food chain on land starts "
        "with this process.",
        "The rate of photosynthesis depends on light intensity, carbon dioxide concentration "
        "and temperature. Whichever of these is in shortest supply limits the rate, a rule "
        "known as the law of limiting factors.",
    ),
    (
        "Pigments",
        "Chlorophyll absorbs blue and red light. It reflects green light, which is why "
        "leaves look green to us.",
        "Accessory pigments such as carotenoids capture wavelengths that chlorophyll misses "
        "and pass the energy on. In autumn, when chlorophyll breaks down, the yellow and "
        "orange carotenoids become visible in the leaves of many deciduous trees.",
        "The absorption spectrum of a pigment shows how strongly it absorbs each wavelength; "
        "the action spectrum shows how fast photosynthesis runs at each wavelength.",
        "Pigments sit in the thylakoid membranes, grouped into photosystems. Each photosystem "
        "funnels the energy its antenna pigments collect to a single reaction centre, where "
        "an excited electron starts the electron transport chain.",
    ),
    (
        "The Calvin cycle fixes carbon dioxide in the stroma of the chloroplast. The enzyme "
        "rubisco attaches carbon dioxide to a five-carbon sugar called ribulose bisphosphate.",
        "The cycle uses the ATP and NADPH made by the light-dependent reactions in the "
        "thylakoid membranes. Three turns of the cycle produce one molecule of "
        "glyceraldehyde three-phosphate, which leaves the cycle to build glucose.",
        "Because it does not use light directly, the Calvin cycle is often called the "
        "light-independent stage, although it stops in the dark within minutes.",
        "Some plants that grow in hot, dry places concentrate carbon dioxide before the Calvin "
        "cycle runs. Maize and sugar cane use the C4 pathway, while cacti open their stomata "
        "only at night and store carbon dioxide as malic acid.",
    ),
)


def _pdf_document() -> FPDF:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(PDF_TITLE)
    pdf.set_author(PDF_AUTHOR)
    # A fixed timestamp: the same bytes on every run.
    pdf.set_creation_date(datetime(2024, 1, 1, tzinfo=UTC))
    pdf.set_font("Helvetica", size=12)
    return pdf


def make_pdf(directory: Path, name: str = "plants.pdf") -> Path:
    """A 3-page PDF with title/author metadata; see PDF_PAGES and FACTS for its text."""
    pdf = _pdf_document()
    for paragraphs in PDF_PAGES:
        pdf.add_page()
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph)
            pdf.ln(4)
    path = directory / name
    pdf.output(str(path))
    return path


def make_encrypted_pdf(directory: Path, name: str = "locked.pdf") -> Path:
    """A PDF that needs a user password to open."""
    pdf = _pdf_document()
    pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    pdf.add_page()
    pdf.multi_cell(0, 6, "This text is behind a password.")
    path = directory / name
    pdf.output(str(path))
    return path


def make_corrupt_pdf(directory: Path, name: str = "corrupt.pdf") -> Path:
    """The first half of a valid PDF: a download cut short."""
    whole = make_pdf(directory, name)
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])
    return whole


def make_textless_pdf(directory: Path, name: str = "scanned.pdf") -> Path:
    """A PDF with a drawing and no text layer, like a scan without OCR."""
    pdf = _pdf_document()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    path = directory / name
    pdf.output(str(path))
    return path


# --- DOCX --------------------------------------------------------------------------------
DOCX_LIST_ITEMS = ("Proteins", "Cholesterol", "Glycolipids")
DOCX_TABLE = (
    ("Organelle", "Function"),
    ("Ribosome", "Protein synthesis"),
    ("Nucleus", "Stores DNA"),
)


def make_docx(directory: Path, name: str = "cells.docx") -> Path:
    """A DOCX with Heading 1/2 sections, a bulleted list, a table and core properties."""
    import docx

    document = docx.Document()
    document.core_properties.title = DOCX_TITLE
    document.core_properties.author = DOCX_AUTHOR
    document.add_paragraph("A short guide to the parts of a cell.")
    document.add_heading("Cell Structure", level=1)
    document.add_paragraph("Mitochondria produce ATP through cellular respiration.")
    document.add_heading("Membranes", level=2)
    document.add_paragraph("The phospholipid bilayer is selectively permeable.")
    for item in DOCX_LIST_ITEMS:
        document.add_paragraph(item, style="List Bullet")
    document.add_heading("Organelles", level=2)
    table = document.add_table(rows=len(DOCX_TABLE), cols=2)
    for row, values in zip(table.rows, DOCX_TABLE, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_paragraph("Lysosomes digest worn-out organelles and cellular waste.")
    document.add_heading("Cell Division", level=1)
    document.add_paragraph("Mitosis produces two genetically identical daughter cells.")
    path = directory / name
    document.save(str(path))
    return path


def make_broken_docx(directory: Path, name: str = "broken.docx") -> Path:
    """Random bytes with a .docx name."""
    path = directory / name
    path.write_bytes(random.Random(7).randbytes(2048))
    return path


# --- HTML --------------------------------------------------------------------------------
HTML_NOISE = (
    "SiteLogo",
    "Home",
    "Contact us",
    "trackVisitor",
    "font-family",
    "Copyright 2024 Example Corp",
    "Enable JavaScript",
)

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Genetics Primer</title>
  <meta name="author" content="Barbara McClintock">
  <style>body { font-family: sans-serif; }</style>
  <script>function trackVisitor() { return 1; }</script>
</head>
<body>
  <header><a href="/">SiteLogo</a>
    <nav><ul><li><a href="/">Home</a></li><li><a href="/contact">Contact us</a></li></ul></nav>
  </header>
  <noscript>Enable JavaScript for the full experience.</noscript>
  <main>
    <h1>Genetics</h1>
    <p>DNA is a double helix made of <em>paired</em> nucleotides.</p>
    <h2>Inheritance</h2>
    <p>Gregor Mendel studied inheritance in pea plants.</p>
    <ul>
      <li>Dominant alleles</li>
      <li>Recessive alleles
        <ul><li>Carriers</li></ul>
      </li>
    </ul>
    <table>
      <tr><th>Gene</th><th>Trait</th></tr>
      <tr><td>BRCA1</td><td>DNA repair</td></tr>
    </table>
    <h2>Mutations</h2>
    <div>Point mutations change a single base pair.</div>
    <pre><code>ATG CGT
  TAC</code></pre>
  </main>
  <footer>Copyright 2024 Example Corp</footer>
  <script>trackVisitor();</script>
</body>
</html>
"""


def make_html(directory: Path, name: str = "genetics.html") -> Path:
    """An HTML page with nav/script/style/footer noise, headings, a list, a table and code."""
    path = directory / name
    path.write_text(_HTML, encoding="utf-8")
    return path


def make_html_latin1(directory: Path, name: str = "latin1.html") -> Path:
    """An HTML page encoded in ISO-8859-1 that declares it in a <meta> tag."""
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
        "<title>Cr\u00e8me</title></head><body><p>Cr\u00e8me br\u00fbl\u00e9e</p></body></html>"
    )
    path = directory / name
    path.write_bytes(html.encode("latin-1"))
    return path


# --- Markdown ----------------------------------------------------------------------------
MD_CODE = "# not a heading\nprint('hello')"

_MARKDOWN = """---
title: Chemistry Notes
tags: [chemistry]
---

# Atoms

Electrons occupy shells around the nucleus.
They are much lighter than protons.

## Bonds

Covalent bonds share electron pairs between atoms.

```python
# not a heading
print('hello')
```

- Ionic bonds
- Covalent bonds
  - Polar
- Metallic bonds

| Bond | Strength |
|------|----------|
| Covalent | strong |
| Hydrogen | weak |

Reactions
---------

Catalysts lower the activation energy of a reaction.
"""


def make_markdown(directory: Path, name: str = "chemistry.md") -> Path:
    """Markdown: front matter, ATX and setext headings, a fence holding '# ...', list, table."""
    path = directory / name
    path.write_text(_MARKDOWN, encoding="utf-8")
    return path


# --- Plain text --------------------------------------------------------------------------
TXT_UTF8 = (
    "Caf\u00e9 au lait \u2615 costs \u20ac3.\n\n"
    "The na\u00efve r\u00e9sum\u00e9 was 100\u00b0 wrong."
)
TXT_UTF16 = "\u03a3 is the Greek capital sigma.\n\nDas Ma\u00df ist voll."
TXT_LATIN1 = "Cr\u00e8me br\u00fbl\u00e9e est d\u00e9licieuse.\r\n\r\nGar\u00e7on, l'addition !"


def make_txt_utf8(directory: Path, name: str = "utf8.txt") -> Path:
    """UTF-8 text without a BOM, two paragraphs."""
    path = directory / name
    path.write_bytes(TXT_UTF8.encode("utf-8"))
    return path


def make_txt_utf16(directory: Path, name: str = "utf16.txt", *, bom: bool = True) -> Path:
    """UTF-16 LE text, with a BOM unless bom=False."""
    path = directory / name
    data = TXT_UTF16.encode("utf-16-le")
    path.write_bytes((b"\xff\xfe" + data) if bom else data)
    return path


def make_txt_latin1(directory: Path, name: str = "latin1.txt") -> Path:
    """latin-1 text with CRLF line endings (not valid UTF-8)."""
    path = directory / name
    path.write_bytes(TXT_LATIN1.encode("latin-1"))
    return path


def make_empty_txt(directory: Path, name: str = "empty.txt", *, whitespace: bool = False) -> Path:
    """An empty file, or one holding only whitespace."""
    path = directory / name
    path.write_bytes(b" \n\t\r\n  \n" if whitespace else b"")
    return path


def make_binary_txt(directory: Path, name: str = "binary.txt") -> Path:
    """Random bytes full of NULs, named .txt."""
    rng = random.Random(42)
    data = bytearray(rng.randbytes(4096))
    for index in range(0, len(data), 7):
        data[index] = 0
    path = directory / name
    path.write_bytes(bytes(data))
    return path


def make_all(directory: Path) -> dict[str, Path]:
    """Every good fixture (one per format), keyed by file type."""
    return {
        "pdf": make_pdf(directory),
        "docx": make_docx(directory),
        "html": make_html(directory),
        "md": make_markdown(directory),
        "txt": make_txt_utf8(directory),
    }
