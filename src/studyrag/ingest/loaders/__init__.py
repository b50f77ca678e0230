"""Loader registry: pick a loader by file suffix; loader modules are imported on first use."""

from __future__ import annotations

import importlib
import importlib.util
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from studyrag.errors import ConfigError, ExtractionFailed, MissingExtraError, UnsupportedFileType
from studyrag.ingest.loaders.base import (
    DocumentBuilder,
    ExtractedDocument,
    Loader,
    LoadOptions,
    Span,
)


@dataclass(frozen=True, slots=True)
class LoaderEntry:
    """Where a built-in loader lives; imported lazily so start-up stays cheap."""

    file_type: str
    module: str
    class_name: str

    def load_class(self) -> type[Loader]:
        """Import the loader module and return its class."""
        module = importlib.import_module(f"{__name__}.{self.module}")
        cls: type[Loader] = getattr(module, self.class_name)
        return cls


_PDF = LoaderEntry("pdf", "pdf", "PdfLoader")
_DOCX = LoaderEntry("docx", "docx", "DocxLoader")
_HTML = LoaderEntry("html", "html", "HtmlLoader")
_TXT = LoaderEntry("txt", "text", "TextLoader")
_MD = LoaderEntry("md", "markdown", "MarkdownLoader")
_IMAGE = LoaderEntry("image", "image", "ImageLoader")

#: Lower-case suffix -> built-in loader.
LOADERS: Mapping[str, LoaderEntry] = MappingProxyType(
    {
        ".pdf": _PDF,
        ".docx": _DOCX,
        ".html": _HTML,
        ".htm": _HTML,
        ".txt": _TXT,
        ".md": _MD,
        ".markdown": _MD,
        ".png": _IMAGE,
        ".jpg": _IMAGE,
        ".jpeg": _IMAGE,
    }
)
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(LOADERS)
#: File types the Docling loader handles better than the built-ins (layout, OCR).
_DOCLING_TYPES = frozenset({"pdf", "docx", "html", "md"})
_BY_TYPE: Mapping[str, LoaderEntry] = MappingProxyType(
    {entry.file_type: entry for entry in LOADERS.values()}
)


def loader_for_type(
    file_type: str, *, prefer: str = "builtin", options: LoadOptions | None = None
) -> Loader:
    """A loader for a file type ("pdf", "docx", "html", "txt", "md", "image")."""
    entry = _BY_TYPE.get(file_type)
    if entry is None:
        raise UnsupportedFileType(f"Files of type {file_type!r} cannot be ingested.")
    if prefer == "docling":
        if file_type in _DOCLING_TYPES:
            if importlib.util.find_spec("docling") is None:
                raise MissingExtraError("The docling loader", "docling")
            from studyrag.ingest.loaders.docling import DoclingLoader

            return DoclingLoader(file_type)
    elif prefer != "builtin":
        raise ConfigError(
            f"Unknown loader {prefer!r}.",
            hint="Set STUDYRAG_INGEST__LOADER to 'builtin' or 'docling'.",
        )
    return entry.load_class()(options)


def get_loader(path: Path, *, prefer: str = "builtin") -> Loader:
    """The loader for `path`, chosen by its lower-case suffix."""
    suffix = path.suffix.lower()
    entry = LOADERS.get(suffix)
    if entry is None:
        raise UnsupportedFileType(
            f"{path.name}: files of type {suffix or '(no extension)'} cannot be ingested; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}.",
            details={"suffix": suffix, "supported": list(SUPPORTED_SUFFIXES)},
        )
    return loader_for_type(entry.file_type, prefer=prefer)


_HTML_START = re.compile(
    r"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.I | re.S
)


def _is_docx(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def sniff_file_type(path: Path) -> str:
    """The file type ("pdf", "docx", "html", "txt", "md", "image") from its first bytes and suffix.

    Binary signatures win over the suffix (a PDF saved as .txt is a PDF); text files keep
    the type their suffix names; a file with an unknown suffix is sniffed as HTML or text.
    Raises UnsupportedFileType for binary content of no supported type.
    """
    with path.open("rb") as handle:
        head = handle.read(8192)
    # The PDF header may follow some junk bytes; readers accept it within the first 1 KiB.
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04") and _is_docx(path):
        return "docx"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        return "image"
    entry = LOADERS.get(path.suffix.lower())
    if entry is not None:
        return entry.file_type
    from studyrag.ingest.loaders.text import decode_text

    if not head.strip():
        return "txt"  # empty: the text loader reports it with a readable message
    try:
        text, _ = decode_text(head)
    except ExtractionFailed as exc:
        raise _unsupported(path) from exc
    return "html" if _HTML_START.match(text) else "txt"


def _unsupported(path: Path) -> UnsupportedFileType:
    return UnsupportedFileType(
        f"{path.name} is not a PDF, Word, HTML, Markdown, text or image (PNG, JPEG) file.",
        details={"suffix": path.suffix.lower(), "supported": list(SUPPORTED_SUFFIXES)},
    )


__all__ = [
    "LOADERS",
    "SUPPORTED_SUFFIXES",
    "DocumentBuilder",
    "ExtractedDocument",
    "LoadOptions",
    "Loader",
    "LoaderEntry",
    "Span",
    "get_loader",
    "loader_for_type",
    "sniff_file_type",
]
