"""Plain-text loader, and the encoding detection the Markdown loader shares."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Loader

# Longest BOMs first: the UTF-32 LE BOM starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control characters that ordinary text does not contain (tab, newlines, form feed excluded).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_RATIO = 0.05
# Enough bytes to judge an encoding; scanning a 50 MB file for NULs twice is wasted work.
_SAMPLE = 64 * 1024
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")

_BINARY_MESSAGE = "The file looks like binary data, not text."
_BINARY_HINT = "Check that it is a plain-text file; convert other formats to PDF or DOCX first."
_EMPTY_MESSAGE = "The file is empty; there is no text to index."
_EMPTY_HINT = "Add some text to the file, or leave it out of the upload."


def _utf16_guess(data: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII-heavy text has a NUL in every other byte."""
    sample = data[:_SAMPLE]
    pairs = len(sample) // 2
    if pairs == 0 or len(data) % 2:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    # Latin text is mostly ASCII, so the high byte is NUL for well over a third of the units;
    # the other half almost never is.
    if odd_nuls > pairs * 0.3 and even_nuls < pairs * 0.05:
        candidate = "utf-16-le"
    elif even_nuls > pairs * 0.3 and odd_nuls < pairs * 0.05:
        candidate = "utf-16-be"
    else:
        return None
    try:
        data.decode(candidate)  # decoded twice only for BOM-less UTF-16, which is rare
    except UnicodeDecodeError:
        return None
    return candidate


def _looks_binary(text: str) -> bool:
    sample = text[:_SAMPLE]
    if not sample:
        return False
    return len(_CONTROL.findall(sample)) / len(sample) > _MAX_CONTROL_RATIO


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode text bytes (BOM, UTF-8, BOM-less UTF-16, latin-1); return (text, encoding).

    Raises ExtractionFailed for empty input and for binary data.
    """
    if not data.strip():
        raise ExtractionFailed(_EMPTY_MESSAGE, hint=_EMPTY_HINT)
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is not None:
        try:
            # utf-8-sig drops its BOM itself; the UTF-16/32 codecs named by byte order do not.
            text = data.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise ExtractionFailed(
                f"The file starts with a {encoding} byte-order mark but is not valid {encoding}."
            ) from exc
    elif b"\x00" not in data:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            # latin-1 decodes any byte string, so it is the last resort, not a guess.
            text, encoding = data.decode("latin-1"), "latin-1"
    else:
        encoding = _utf16_guess(data)
        if encoding is None:
            raise ExtractionFailed(_BINARY_MESSAGE, hint=_BINARY_HINT)
        text = data.decode(encoding)
    if _looks_binary(text):
        raise ExtractionFailed(_BINARY_MESSAGE, hint=_BINARY_HINT)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ExtractionFailed(_EMPTY_MESSAGE, hint=_EMPTY_HINT)
    return text, encoding


def read_text_file(path: Path) -> tuple[str, str]:
    """Read and decode a text file; see decode_text."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionFailed(f"Cannot read {path.name}: {exc.strerror or exc}.") from exc
    return decode_text(data)


class TextLoader(Loader):
    """Plain text: paragraphs are separated by blank lines."""

    suffixes = (".txt",)
    file_type = "txt"

    def load(self, path: Path) -> ExtractedDocument:
        """Decode `path` and split it into paragraphs."""
        text, encoding = read_text_file(path)
        builder = DocumentBuilder()
        for paragraph in _PARAGRAPH_BREAK.split(text):
            builder.add(paragraph)
        return builder.build({"encoding": encoding})
