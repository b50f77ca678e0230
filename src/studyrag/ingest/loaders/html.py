"""HTML loader: the readable content of a page, in document order, without the site chrome."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from studyrag.errors import ExtractionFailed
from studyrag.ingest.loaders.base import (
    BlockKind,
    DocumentBuilder,
    ExtractedDocument,
    HeadingStack,
    Loader,
    build_nonempty,
)

# Site chrome and non-content elements: never part of what a student wants to search.
# <form> stays: ASP.NET pages wrap the whole body in one.
_DROP_TAGS = (
    "script", "style", "noscript", "template", "nav", "footer", "iframe", "object", "embed",
    "svg", "canvas", "button", "select", "input", "textarea", "link", "meta", "head",
)  # fmt: skip
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_LISTS = {"ul", "ol", "menu"}
_PARAGRAPHS = {"p", "figcaption", "dt", "dd", "summary", "caption", "address", "legend"}
_CONTAINERS = {
    "html", "body", "main", "article", "section", "div", "header", "aside", "blockquote",
    "figure", "details", "center", "dl", "hgroup", "search", "fieldset", "li",
}  # fmt: skip
_BLOCKS = sorted(set(_HEADINGS) | _LISTS | _PARAGRAPHS | _CONTAINERS | {"table", "pre", "hr"})
_META_CHARSET = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_html(data: bytes) -> tuple[str, str]:
    """Decode HTML bytes: BOM, then the declared <meta> charset, then UTF-8; return (text, enc)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data.decode(name, errors="replace"), name
    match = _META_CHARSET.search(data[:16384])
    if match:
        declared = match.group(1).decode("ascii").lower()
        # The HTML standard reads a <meta> that claims UTF-16/32 as UTF-8: the bytes we
        # just matched as ASCII prove the file is not UTF-16.
        if not declared.startswith(("utf-16", "utf-32")):
            try:
                name = codecs.lookup(declared).name
                return data.decode(name), name
            except (LookupError, UnicodeDecodeError):
                pass  # an unknown or wrong declaration: fall back to UTF-8 below
    return data.decode("utf-8", errors="replace"), "utf-8"


def _collapse(text: str) -> str:
    """Collapse runs of whitespace inside each line; keep the explicit (<br>) line breaks."""
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _is_text(node: object) -> bool:
    return isinstance(node, NavigableString) and not isinstance(node, PreformattedString)


def _raw_text(node: Tag, *, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """The text of `node` with <br> as a line break, leaving out subtrees named in `skip`."""
    parts: list[str] = []

    def visit(tag: Tag) -> None:
        for child in tag.children:
            if isinstance(child, Tag):
                if child.name == "br":
                    parts.append("\n")
                elif child.name not in skip:
                    visit(child)
            elif _is_text(child):
                parts.append(str(child))

    visit(node)
    return "".join(parts)


def _inline_text(node: Tag, *, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """Like _raw_text, with whitespace collapsed."""
    return _collapse(_raw_text(node, skip=skip))


def _remove_noise(soup: BeautifulSoup) -> None:
    doomed: list[Tag] = list(soup.find_all(_DROP_TAGS))
    for tag in soup.find_all(True):
        role = str(tag.get("role") or "").lower()
        if role in _DROP_ROLES or tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
            doomed.append(tag)
        elif tag.name == "header" and tag.find(list(_HEADINGS)) is None:
            # A page header without a heading is a logo and a menu; one with the article's
            # <h1> is content and stays.
            doomed.append(tag)
    for tag in doomed:
        if not tag.decomposed:
            tag.decompose()


class _Walker:
    """Emits blocks for the body of a cleaned soup, in document order."""

    def __init__(self) -> None:
        self.builder = DocumentBuilder()
        self.headings = HeadingStack()
        self.first_h1: str | None = None
        self._inline: list[str] = []

    def _emit(self, text: str, kind: BlockKind = "paragraph") -> None:
        self.builder.add(text, section=self.headings.path, kind=kind)

    def finish(self) -> DocumentBuilder:
        """Emit any pending inline text and return the builder."""
        self._flush()
        return self.builder

    def _flush(self) -> None:
        if self._inline:
            self._emit(_collapse("".join(self._inline)))
            self._inline = []

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Tag):
                self._element(child)
            elif _is_text(child):
                # Text directly inside body/div is content too (pages without <p>).
                self._inline.append(str(child))

    def _element(self, tag: Tag) -> None:
        name = tag.name
        if name == "br":
            self._inline.append("\n")
        elif name in _HEADINGS:
            self._flush()
            title = " ".join(_inline_text(tag).split())
            if title:
                level = _HEADINGS[name]
                if level == 1 and self.first_h1 is None:
                    self.first_h1 = title
                self.headings.push(level, title)
                self._emit(title, "heading")
        elif name in _PARAGRAPHS:
            self._flush()
            # A <p> holding block children (invalid, but common in CMS output) is a container.
            if tag.find(_BLOCKS) is not None:
                self.walk(tag)
                self._flush()
            else:
                self._emit(_inline_text(tag))
        elif name in _LISTS:
            self._flush()
            self._emit("\n".join(_list_lines(tag, 0)), "list")
        elif name == "table":
            self._flush()
            self._emit(_table_text(tag), "table")
        elif name == "pre":
            self._flush()
            self._emit(tag.get_text(), "code")
        elif name == "hr":
            self._flush()
        elif name in _CONTAINERS or tag.find(_BLOCKS) is not None:
            self._flush()
            self.walk(tag)
            self._flush()
        else:
            # Inline markup (a, em, code, span ...) continues the current run of text.
            self._inline.append(_raw_text(tag))


def _list_lines(list_tag: Tag, depth: int) -> list[str]:
    lines: list[str] = []
    for item in list_tag.find_all("li", recursive=False):
        text = " ".join(_inline_text(item, skip=_LISTS).split())
        if text:
            lines.append(f"{'  ' * depth}- {text}")
        for nested in item.find_all(list(_LISTS)):
            # Only the lists directly under this item; deeper ones are handled recursively.
            if nested.find_parent("li") is item:
                lines.extend(_list_lines(nested, depth + 1))
    return lines


def _table_text(table: Tag) -> str:
    rows: list[str] = []
    caption = table.find("caption")
    if caption is not None and caption.find_parent("table") is table:
        rows.append(" ".join(_inline_text(caption).split()))
    for row in table.find_all("tr"):
        if row.find_parent("table") is not table:
            continue  # a row of a nested table
        cells = [" ".join(_inline_text(cell).split()) for cell in row.find_all(["td", "th"])]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(row for row in rows if row)


class HtmlLoader(Loader):
    """HTML: headings build the section path; scripts, menus and footers are dropped."""

    suffixes = (".html", ".htm")
    file_type = "html"

    def load(self, path: Path) -> ExtractedDocument:
        """Parse `path` and keep headings, paragraphs, lists, tables and code in order."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ExtractionFailed(f"Cannot read {path.name}: {exc.strerror or exc}.") from exc
        text, encoding = decode_html(data)
        # An XML declaration makes bs4 warn that XHTML is being parsed as HTML; it carries
        # nothing we need. The trailing newline keeps bs4 from taking short input for a path.
        text = _XML_DECLARATION.sub("", text, count=1) + "\n"
        soup = BeautifulSoup(text, "lxml")
        metadata: dict[str, Any] = {"encoding": encoding}
        if soup.title is not None:
            title = " ".join(soup.title.get_text().split())
            if title:
                metadata["title"] = title
        author = soup.find("meta", attrs={"name": re.compile("^author$", re.I)})
        if isinstance(author, Tag) and author.get("content"):
            metadata["author"] = str(author["content"]).strip()
        _remove_noise(soup)
        walker = _Walker()
        walker.walk(soup.body if soup.body is not None else soup)
        builder = walker.finish()
        if "title" not in metadata and walker.first_h1:
            metadata["title"] = walker.first_h1
        return build_nonempty(builder, metadata, reason="The HTML page contains no readable text.")
