"""Structure-aware chunking: token-sized chunks that follow sections and pages.

A chunk is always exactly ``doc.text[start:end]``; those offsets are what citations
highlight. Consecutive spans that share (section, page) are packed whole, greedily, up to
``chunk_size`` tokens. A chunk crosses a (section, page) boundary only when a group holds
nothing but headings: they label what follows, so they are attached to the next group when
that group is in the same section or one of its subsections. Content never shares a chunk
across a page break, however small: the page is what a citation points the reader at, and
a fact cited on the wrong page is a wrong citation.

A span longer than ``chunk_size`` is cut into windows of at most ``chunk_size`` tokens that
overlap by ``chunk_overlap`` tokens, preferring sentence ends near the limit, then word
boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from studyrag.backends.embeddings.base import Tokenizer
from studyrag.ingest.loaders.base import ExtractedDocument, Span

# How far back from the size limit a sentence end is preferred to a plain word boundary.
_SENTENCE_LOOKBACK_FRACTION = 4
_SENTENCE_END = frozenset(".!?。！？")


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """One chunk before it is stored: exactly text == doc.text[start:end]."""

    text: str
    start: int
    end: int
    page: int | None
    section: tuple[str, ...]
    token_count: int
    index: int


@dataclass(slots=True)
class _Piece:
    """A span with its token offsets, relative to span.start (shifted only when cut)."""

    span: Span
    offsets: list[tuple[int, int]]

    @property
    def count(self) -> int:
        return len(self.offsets)

    @property
    def is_heading(self) -> bool:
        return self.span.kind == "heading"


@dataclass(slots=True)
class _Group:
    section: tuple[str, ...]
    page: int | None
    pieces: list[_Piece] = field(default_factory=list)
    tokens: int = 0

    @property
    def headings_only(self) -> bool:
        return all(piece.is_heading for piece in self.pieces)

    def extend(self, pieces: list[_Piece]) -> None:
        self.pieces.extend(pieces)
        self.tokens += sum(piece.count for piece in pieces)


@dataclass(frozen=True, slots=True)
class _Cut:
    start: int
    end: int
    page: int | None
    tokens: int


def _groups(doc: ExtractedDocument, tokenizer: Tokenizer) -> Iterator[_Group]:
    """Tokenize each span once and group consecutive spans sharing (section, page)."""
    current: _Group | None = None
    text = doc.text
    for span in doc.spans:
        piece = _Piece(span, tokenizer.offsets(text[span.start : span.end]))
        if current is None or (current.section, current.page) != (span.section, span.page):
            if current is not None:
                yield current
            current = _Group(span.section, span.page)
        current.extend([piece])
    if current is not None:
        yield current


def _merged(groups: Iterator[_Group], chunk_size: int) -> Iterator[_Group]:
    """Attach heading-only groups to the content they label; streams."""
    previous: _Group | None = None
    for group in groups:
        if previous is not None:
            within = group.section[: len(previous.section)] == previous.section
            if previous.headings_only and within:
                merged = _Group(group.section, group.page)
                merged.extend(previous.pieces + group.pieces)
                previous = merged
                continue
            yield previous
        previous = group
    if previous is not None:
        yield previous


def _content_page(pieces: list[_Piece]) -> int | None:
    """The page a chunk is cited on: the one holding most of its content, headings aside."""
    weights: dict[int | None, int] = {}
    for piece in pieces:
        if not piece.is_heading:
            weights[piece.span.page] = weights.get(piece.span.page, 0) + piece.count
    if not weights:
        return pieces[0].span.page
    # max() keeps the first of equal weights: ties go to the earlier page.
    return max(weights, key=weights.__getitem__)


def _whole(pieces: list[_Piece]) -> _Cut:
    return _Cut(
        pieces[0].span.start,
        pieces[-1].span.end,
        _content_page(pieces),
        sum(piece.count for piece in pieces),
    )


def _windows(pieces: list[_Piece], text: str, chunk_size: int, overlap: int) -> Iterator[_Cut]:
    """Cut the tokens of `pieces` (one long span, maybe after headings) into windows."""
    # Offsets relative to `base`; the common case (one span, no headings) shifts nothing.
    base = pieces[0].span.start
    if len(pieces) == 1:
        tokens = pieces[0].offsets
    else:
        tokens = [
            (s + p.span.start - base, e + p.span.start - base) for p in pieces for s, e in p.offsets
        ]
    page = _content_page(pieces)
    n = len(tokens)

    def word_start(i: int) -> bool:
        return i == 0 or i >= n or tokens[i][0] > tokens[i - 1][1]

    def sentence_break(i: int) -> bool:
        if not word_start(i):
            return False
        end = base + tokens[i - 1][1]
        return text[end - 1] in _SENTENCE_END or "\n" in text[end : base + tokens[i][0]]

    lookback = max(1, chunk_size // _SENTENCE_LOOKBACK_FRACTION)
    a = 0
    while True:
        if n - a <= chunk_size:
            yield _Cut(base + tokens[a][0], base + tokens[-1][1], page, n - a)
            return
        hard = a + chunk_size
        lowest = a + overlap + 1  # the next window must start after this one does
        cut = next(
            (c for c in range(hard, max(lowest, hard - lookback) - 1, -1) if sentence_break(c)),
            None,
        )
        if cut is None:
            # A cut inside a word would split it into pieces the tokenizer never produces.
            cut = next((c for c in range(hard, lowest - 1, -1) if word_start(c)), hard)
        yield _Cut(base + tokens[a][0], base + tokens[cut - 1][1], page, cut - a)
        if overlap == 0:
            a = cut
            continue
        # Start the overlap at a word: forward first (overlap <= chunk_overlap), else back.
        start = cut - overlap
        snapped = next((i for i in range(start, cut) if word_start(i)), None)
        if snapped is None:
            snapped = next((i for i in range(start - 1, a, -1) if word_start(i)), start)
        a = snapped


def _pack(group: _Group, text: str, chunk_size: int, overlap: int) -> Iterator[_Cut]:
    """Pack whole spans greedily; split spans that alone exceed chunk_size."""
    pack: list[_Piece] = []
    pack_tokens = 0
    for piece in group.pieces:
        if pack_tokens + piece.count <= chunk_size:
            pack.append(piece)
            pack_tokens += piece.count
            continue
        # Trailing headings label what follows: they move on with the next piece.
        cut = len(pack)
        while cut > 0 and pack[cut - 1].is_heading:
            cut -= 1
        if cut:
            yield _whole(pack[:cut])
        carry = pack[cut:]
        carry_tokens = sum(p.count for p in carry)
        if carry_tokens + piece.count <= chunk_size:
            pack, pack_tokens = [*carry, piece], carry_tokens + piece.count
        else:
            yield from _windows([*carry, piece], text, chunk_size, overlap)
            pack, pack_tokens = [], 0
    if pack:
        yield _whole(pack)


def chunk_document(
    doc: ExtractedDocument,
    tokenizer: Tokenizer,
    *,
    chunk_size: int,
    chunk_overlap: int,
) -> list[ChunkDraft]:
    """Split `doc` into token-sized chunks that respect its sections and pages."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError(
            f"chunk_overlap must be >= 0 and < chunk_size ({chunk_size}), got {chunk_overlap}"
        )
    text = doc.text
    drafts: list[ChunkDraft] = []
    for group in _merged(_groups(doc, tokenizer), chunk_size):
        for cut in _pack(group, text, chunk_size, chunk_overlap):
            if cut.tokens == 0:
                continue  # only characters the tokenizer ignores: nothing to embed or find
            drafts.append(
                ChunkDraft(
                    text=text[cut.start : cut.end],
                    start=cut.start,
                    end=cut.end,
                    page=cut.page,
                    section=group.section,
                    token_count=cut.tokens,
                    index=len(drafts),
                )
            )
    return drafts
