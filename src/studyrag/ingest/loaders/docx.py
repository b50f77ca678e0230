"""Word (.docx) loader: body paragraphs and tables in document order, headings as sections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders.base import (
    DocumentBuilder,
    ExtractedDocument,
    HeadingStack,
    Loader,
    build_nonempty,
)

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def _style_name(paragraph: Paragraph) -> str:
    try:
        style = paragraph.style
    except (KeyError, ValueError):
        return ""  # a style id the styles part does not define
    return (style.name or "") if style is not None else ""


def _heading_level(style_name: str) -> int | None:
    """0 for Title (above every Heading 1), N for Heading N, None for body text."""
    if style_name.lower() == "title":
        return 0
    match = _HEADING_STYLE.match(style_name.strip())
    return int(match.group(1)) if match else None


def _list_depth(paragraph: Paragraph, style_name: str) -> int | None:
    """Nesting depth of a list paragraph (numbering or a List style), None otherwise."""
    if paragraph._p.xpath("./w:pPr/w:numPr"):
        levels = paragraph._p.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
        return int(levels[0]) if levels and str(levels[0]).isdigit() else 0
    if style_name.lower().startswith("list"):
        # "List Bullet 2" is the second level of the built-in list styles.
        match = re.search(r"(\d)$", style_name)
        return int(match.group(1)) - 1 if match else 0
    return None


def _cell_text(text: str) -> str:
    return " ".join(text.split())


def _table_text(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # Horizontally merged cells come back once per grid column; keep one copy.
            if cell._tc is previous:
                continue
            previous = cell._tc
            cells.append(_cell_text(cell.text))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


class DocxLoader(Loader):
    """DOCX: Title/Heading N styles build the section path; lists and tables stay blocks."""

    suffixes = (".docx",)
    file_type = "docx"

    def load(self, path: Path) -> ExtractedDocument:
        """Walk the document body in order and emit heading, paragraph, list and table blocks."""
        try:
            document = docx.Document(str(path))
        except Exception as exc:  # python-docx raises zip, KeyError and XML errors alike
            raise ExtractionFailed(
                f"{path.name} is damaged or not a Word document (.docx); open it in Word or "
                "LibreOffice and save it again.",
                details={"reason": f"{type(exc).__name__}: {exc}"},
            ) from exc

        builder = DocumentBuilder()
        headings = HeadingStack()
        list_items: list[str] = []
        first_title: str | None = None

        def flush_list() -> None:
            if list_items:
                builder.add("\n".join(list_items), section=headings.path, kind="list")
                list_items.clear()

        for block in document.iter_inner_content():
            if isinstance(block, Table):
                flush_list()
                builder.add(_table_text(block), section=headings.path, kind="table")
                continue
            text = block.text.strip()
            if not text:
                continue
            style = _style_name(block)
            level = _heading_level(style)
            if level is not None:
                flush_list()
                heading = " ".join(text.split())
                if level == 0 and first_title is None:
                    first_title = heading
                headings.push(level, heading)
                builder.add(heading, section=headings.path, kind="heading")
                continue
            depth = _list_depth(block, style)
            if depth is not None:
                list_items.append(f"{'  ' * depth}- {text}")
                continue
            flush_list()
            builder.add(text, section=headings.path)
        flush_list()

        core = document.core_properties
        metadata: dict[str, Any] = {}
        title = (core.title or "").strip() or first_title
        if title:
            metadata["title"] = title
        if (core.author or "").strip():
            metadata["author"] = core.author.strip()
        return build_nonempty(builder, metadata, reason=f"{path.name} contains no text.")
