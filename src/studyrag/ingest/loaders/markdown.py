"""Markdown loader: a line scanner for the block structure (headings, fences, lists, tables)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from studyrag.ingest.loaders.base import (
    BlockKind,
    DocumentBuilder,
    ExtractedDocument,
    HeadingStack,
    Loader,
    build_nonempty,
)
from studyrag.ingest.loaders.text import read_text_file

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_SETEXT_1 = re.compile(r"^ {0,3}=+[ \t]*$")
_SETEXT_2 = re.compile(r"^ {0,3}-+[ \t]*$")
_THEMATIC = re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_INDENTED_CODE = re.compile(r"^(?: {4}|\t)")
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$")
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$")


def _strip_front_matter(lines: list[str]) -> tuple[list[str], str | None]:
    """Drop a leading YAML front-matter block; return the remaining lines and its title."""
    if not lines or lines[0].rstrip() != "---":
        return lines, None
    for index in range(1, len(lines)):
        if _FRONT_MATTER_END.match(lines[index]):
            title = None
            for line in lines[1:index]:
                match = _FRONT_MATTER_TITLE.match(line)
                if match:
                    title = match.group(1).strip("'\"").strip() or None
                    break
            return lines[index + 1 :], title
    # No closing delimiter: it was a thematic break, not front matter.
    return lines, None


def _table_row(line: str) -> str:
    """`| a | b |` -> `a | b`, the row shape every loader uses."""
    cells = line.strip()
    if cells.startswith("|"):
        cells = cells[1:]
    if cells.endswith("|") and not cells.endswith("\\|"):
        cells = cells[:-1]
    return " | ".join(cell.strip() for cell in cells.split("|"))


class _Scanner:
    """Walks the lines once, emitting blocks into a DocumentBuilder."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.builder = DocumentBuilder()
        self.headings = HeadingStack()
        self.first_h1: str | None = None
        self._paragraph: list[str] = []

    def _emit(self, text: str, kind: BlockKind) -> None:
        self.builder.add(text, section=self.headings.path, kind=kind)

    def _flush_paragraph(self) -> None:
        if self._paragraph:
            self._emit("\n".join(line.strip() for line in self._paragraph), "paragraph")
            self._paragraph = []

    def _heading(self, level: int, title: str) -> None:
        self._flush_paragraph()
        title = title.strip()
        if not title:
            return
        if level == 1 and self.first_h1 is None:
            self.first_h1 = title
        self.headings.push(level, title)
        self._emit(title, "heading")

    def run(self) -> None:
        lines = self.lines
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                self._flush_paragraph()
                i += 1
                continue
            fence = _FENCE.match(line)
            if fence and not (fence.group(2)[0] == "`" and "`" in fence.group(3)):
                i = self._fenced_code(i, fence.group(2))
                continue
            atx = _ATX.match(line)
            if atx:
                self._heading(len(atx.group(1)), atx.group(2) or "")
                i += 1
                continue
            if self._paragraph and _SETEXT_1.match(line):
                text = " ".join(part.strip() for part in self._paragraph)
                self._paragraph = []
                self._heading(1, text)
                i += 1
                continue
            if self._paragraph and _SETEXT_2.match(line):
                text = " ".join(part.strip() for part in self._paragraph)
                self._paragraph = []
                self._heading(2, text)
                i += 1
                continue
            if _THEMATIC.match(line):
                self._flush_paragraph()
                i += 1
                continue
            if _LIST_ITEM.match(line):
                i = self._list(i)
                continue
            if (
                "|" in line
                and i + 1 < len(lines)
                and _TABLE_DELIMITER.match(lines[i + 1])
                and "|" in lines[i + 1]
            ):
                i = self._table(i)
                continue
            if not self._paragraph and _INDENTED_CODE.match(line):
                i = self._indented_code(i)
                continue
            self._paragraph.append(line)
            i += 1
        self._flush_paragraph()

    def _fenced_code(self, i: int, marker: str) -> int:
        self._flush_paragraph()
        closing = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
        body: list[str] = []
        i += 1
        # An unclosed fence runs to the end of the document, as in CommonMark.
        while i < len(self.lines) and not closing.match(self.lines[i]):
            body.append(self.lines[i])
            i += 1
        self._emit("\n".join(body), "code")
        return i + 1

    def _list(self, i: int) -> int:
        self._flush_paragraph()
        items: list[str] = []
        lines = self.lines
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                # A blank line ends the list unless an item or an indented continuation follows.
                nxt = i + 1
                while nxt < len(lines) and not lines[nxt].strip():
                    nxt += 1
                if nxt < len(lines) and (
                    _LIST_ITEM.match(lines[nxt]) or lines[nxt][:1] in (" ", "\t")
                ):
                    i = nxt
                    continue
                break
            if items and not _LIST_ITEM.match(line):
                if _ATX.match(line) or _FENCE.match(line) or _THEMATIC.match(line):
                    break
            items.append(line.rstrip())
            i += 1
        self._emit("\n".join(items), "list")
        return i

    def _table(self, i: int) -> int:
        self._flush_paragraph()
        rows = [_table_row(self.lines[i])]
        i += 2  # the header row and the delimiter row
        while i < len(self.lines) and self.lines[i].strip() and "|" in self.lines[i]:
            rows.append(_table_row(self.lines[i]))
            i += 1
        self._emit("\n".join(rows), "table")
        return i

    def _indented_code(self, i: int) -> int:
        body: list[str] = []
        lines = self.lines
        while i < len(lines) and (_INDENTED_CODE.match(lines[i]) or not lines[i].strip()):
            body.append(lines[i][4:] if lines[i].startswith("    ") else lines[i][1:])
            i += 1
        self._emit("\n".join(body), "code")
        return i


class MarkdownLoader(Loader):
    """Markdown: ATX and setext headings build the section path; fences stay code."""

    suffixes = (".md", ".markdown")
    file_type = "md"

    def load(self, path: Path) -> ExtractedDocument:
        """Decode `path` and split it into heading, paragraph, list, table and code blocks."""
        text, encoding = read_text_file(path)
        lines, front_title = _strip_front_matter(text.split("\n"))
        scanner = _Scanner(lines)
        scanner.run()
        metadata: dict[str, Any] = {"encoding": encoding}
        title = front_title or scanner.first_h1
        if title:
            metadata["title"] = title
        return build_nonempty(scanner.builder, metadata)
