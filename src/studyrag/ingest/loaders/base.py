"""What every loader returns: the extracted text plus structural spans that point into it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studyrag.errors import ExtractionFailed

BlockKind = Literal["heading", "paragraph", "list", "table", "code"]


@dataclass(frozen=True, slots=True)
class Span:
    """A block of the extracted text: text[start:end], with where it sits in the document."""

    start: int
    end: int
    page: int | None  # 1-based; None where the format has no pages
    section: tuple[str, ...]  # heading path, outermost first; () before the first heading
    kind: BlockKind = "paragraph"


@dataclass(slots=True)
class ExtractedDocument:
    text: str
    spans: list[Span]
    metadata: dict[str, Any] = field(default_factory=dict)  # title, author, page_count, ...

    def span_text(self, span: Span) -> str:
        return self.text[span.start : span.end]


class DocumentBuilder:
    """Appends blocks separated by blank lines and records exact offsets for each."""

    SEPARATOR = "\n\n"

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.spans: list[Span] = []

    def add(
        self,
        text: str,
        *,
        page: int | None = None,
        section: tuple[str, ...] = (),
        kind: BlockKind = "paragraph",
    ) -> None:
        text = text.strip()
        if not text:
            return
        if self._parts:
            self._parts.append(self.SEPARATOR)
            self._length += len(self.SEPARATOR)
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        self.spans.append(Span(start, self._length, page, section, kind))

    @property
    def next_start(self) -> int:
        """The offset the next non-empty block will start at."""
        return self._length + (len(self.SEPARATOR) if self._parts else 0)

    def build(self, metadata: dict[str, Any] | None = None) -> ExtractedDocument:
        return ExtractedDocument("".join(self._parts), self.spans, dict(metadata or {}))


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How a loader reads scans, and whom it tells about each page it recognises.

    The callbacks are called from the loader's worker thread; `on_page` may raise (a
    cancelled document stops between two pages).
    """

    ocr: bool = True
    ocr_threads: int = 1
    ocr_dpi: int = 200
    # (pages read so far, page count), after each page that was recognised.
    on_page: Callable[[int, int], None] | None = None
    # A page that could not be recognised: {"page": n, "message": "..."}.
    on_warning: Callable[[dict[str, Any]], None] | None = None


class Loader(ABC):
    """Turns one file into an ExtractedDocument. Runs in a worker thread (blocking is fine).

    Raises studyrag.errors.ExtractionFailed (DOC_003) with a readable reason for corrupt,
    encrypted, empty or binary input.
    """

    def __init__(self, options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()

    #: Lower-case suffixes this loader reads, with the dot: (".pdf",)
    suffixes: tuple[str, ...] = ()
    file_type: str = ""

    @abstractmethod
    def load(self, path: Path) -> ExtractedDocument:
        """Extract text and structure from `path`."""


def build_nonempty(
    builder: DocumentBuilder,
    metadata: dict[str, Any] | None = None,
    *,
    reason: str = "The document contains no text to index.",
) -> ExtractedDocument:
    """Build the document, or raise ExtractionFailed when no block of text was found."""
    if not builder.spans:
        raise ExtractionFailed(reason)
    return builder.build(metadata)


class HeadingStack:
    """Tracks the heading path: a heading of level N replaces level N and everything deeper."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def push(self, level: int, title: str) -> tuple[str, ...]:
        """Enter a heading and return the new section path, outermost first."""
        # Popping by level (not slicing by depth) keeps skipped levels (H1 then H3) sensible.
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        """The current section path."""
        return tuple(title for _, title in self._stack)
