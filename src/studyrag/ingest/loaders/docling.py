"""Optional loader backed by Docling (layout models, OCR): `pip install 'studyrag[docling]'`."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from studyrag.errors import ExtractionFailed, MissingExtraError
from studyrag.ingest.loaders.base import (
    BlockKind,
    DocumentBuilder,
    ExtractedDocument,
    HeadingStack,
    Loader,
    build_nonempty,
)

# Converting loads layout models once; a converter is reused, and is not documented as
# safe for concurrent use, so calls are serialized.
_CONVERT_LOCK = threading.Lock()
# Page furniture and images carry no text worth indexing.
_SKIP_LABELS = {"page_header", "page_footer", "picture", "chart"}


@functools.cache
def _converter() -> Any:
    from docling.document_converter import DocumentConverter

    return DocumentConverter()


def _page(item: Any) -> int | None:
    prov = getattr(item, "prov", None) or []
    return int(prov[0].page_no) if prov else None


def _table_text(item: Any) -> str:
    rows: list[str] = []
    for row in item.data.grid:
        cells: list[str] = []
        for cell in row:
            text = " ".join(str(cell.text).split())
            # A spanning cell repeats in every grid position it covers.
            if not cells or text != cells[-1]:
                cells.append(text)
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


class DoclingLoader(Loader):
    """Any format Docling reads; headings and page provenance come from its document model."""

    suffixes = (".pdf", ".docx", ".html", ".htm", ".md", ".markdown")
    file_type = "docling"

    def __init__(self, file_type: str | None = None) -> None:
        # The registry passes the built-in type ("pdf", ...) so documents record their format,
        # not the loader that read them.
        if file_type:
            self.file_type = file_type

    def load(self, path: Path) -> ExtractedDocument:
        """Convert `path` with Docling and map its items to spans."""
        try:
            import docling  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("The docling loader", "docling") from exc
        try:
            with _CONVERT_LOCK:
                result = _converter().convert(path)
        except Exception as exc:  # Docling raises its own ConversionError and backend errors
            raise ExtractionFailed(
                f"Docling could not convert {path.name}.",
                details={"reason": f"{type(exc).__name__}: {exc}"},
            ) from exc
        document = result.document

        builder = DocumentBuilder()
        headings = HeadingStack()
        title: str | None = None
        list_items: list[str] = []
        list_page: int | None = None

        def flush_list() -> None:
            if list_items:
                text = "\n".join(list_items)
                builder.add(text, page=list_page, section=headings.path, kind="list")
                list_items.clear()

        for item, _depth in document.iterate_items():
            label = str(getattr(item.label, "value", item.label))
            if label in _SKIP_LABELS:
                continue
            page = _page(item)
            if label == "list_item":
                if list_items and page != list_page:
                    flush_list()
                list_page = page
                list_items.append(f"- {' '.join(str(item.text).split())}")
                continue
            flush_list()
            kind: BlockKind = "paragraph"
            if label == "table":
                text = _table_text(item)
                kind = "table"
            elif label in ("title", "section_header"):
                text = " ".join(str(item.text).split())
                level = 0 if label == "title" else int(getattr(item, "level", 1) or 1)
                if not text:
                    continue
                if label == "title" and title is None:
                    title = text
                headings.push(level, text)
                kind = "heading"
            else:
                text = str(getattr(item, "text", "") or "")
                if label == "code":
                    kind = "code"
            builder.add(text, page=page, section=headings.path, kind=kind)
        flush_list()

        metadata: dict[str, Any] = {"loader": "docling"}
        pages = getattr(document, "pages", None)
        if pages:
            metadata["page_count"] = len(pages)
        if title:
            metadata["title"] = title
        return build_nonempty(builder, metadata, reason=f"Docling found no text in {path.name}.")
