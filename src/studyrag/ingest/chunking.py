"""Structure-aware chunking: token-sized chunks that follow sections and pages.

A chunk is always exactly ``doc.text[start:end]``; those offsets are what citations
highlight. Consecutive spans that share (section, page) are packed whole, greedily, up to
``chunk_size`` tokens. A chunk crosses a (section, page) boundary only when a group holds
nothing but headings: they label what follows, so they are attached to the next group when
that group is in the same section or one of its subsections; and it crosses a section
boundary when it is too small to stand alone (below). Content never shares a chunk
across a page break, however small: the page is what a citation points the reader at, and
a fact cited on the wrong page is a wrong citation.

A chunk too small to stand alone (under ``chunk_size / 4`` tokens: a title, a one-line
section) joins its neighbour on the same page, the following chunk first, else the previous
one, when the joined chunk stays within ``chunk_size``: it would cost an embedding, an index
row and a top-k slot like any chunk for a quarter of one's text at most, and a few words
alone match a query by their words, not by a meaning. Small neighbours accumulate up to
``chunk_size``. Inside one section, a small run of spans that cannot be packed with the
next span leads that span's windows instead, as headings do. A chunk that joins sections is
labelled with the deepest section holding all of its content (their common path), headings
aside: a citation may be coarse, never wrong.

A span longer than ``chunk_size`` is cut into windows of at most ``chunk_size`` tokens that
overlap by ``chunk_overlap`` tokens, preferring sentence ends near the limit, then word
boundaries.

Chunks are bounded in characters too: a token the tokenizer reports over ``MAX_TOKEN_CHARS``
characters (a 2 MB "word" without spaces is one unknown token to a WordPiece model) counts
as one token per ``MAX_TOKEN_CHARS`` characters, so the windows cut through it and no chunk
holds more than ``chunk_size * MAX_TOKEN_CHARS`` characters of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from studyrag.backends.embeddings.base import Tokenizer
from studyrag.ingest.loaders.base import ExtractedDocument, Span

# How far back from the size limit a sentence end is preferred to a plain word boundary.
_SENTENCE_LOOKBACK_FRACTION = 4
_SENTENCE_END = frozenset(".!?。！？")
# A chunk under chunk_size / _SMALL_FRACTION tokens is too small to stand alone: the share
# of a chunk the windows already give up to end at a sentence (_SENTENCE_LOOKBACK_FRACTION).
_SMALL_FRACTION = 4
# Longest token counted as one: real word pieces are a few characters; a longer one is a run
# the tokenizer gave up on (WordPiece maps any word over 100 characters to one [UNK]).
MAX_TOKEN_CHARS = 32


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
    content: int  # tokens of content, headings aside
    section: tuple[str, ...]

    def joined(self, after: _Cut) -> _Cut:
        """This cut and the content cut right after it as one chunk (they must not overlap)."""
        section = after.section
        if self.content:
            # The deepest section holding all of the content: coarse, never wrong.
            common = 0
            for mine, theirs in zip(self.section, after.section, strict=False):
                if mine != theirs:
                    break
                common += 1
            section = section[:common]
        return _Cut(
            self.start,
            after.end,
            after.page,
            self.tokens + after.tokens,
            self.content + after.content,
            section,
        )


def _bounded(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token offsets with every token over MAX_TOKEN_CHARS split into pieces of that size."""
    if all(e - s <= MAX_TOKEN_CHARS for s, e in offsets):
        return offsets
    out: list[tuple[int, int]] = []
    for s, e in offsets:
        out.extend((i, min(i + MAX_TOKEN_CHARS, e)) for i in range(s, e, MAX_TOKEN_CHARS))
        if s == e:
            out.append((s, e))
    return out


def _groups(doc: ExtractedDocument, tokenizer: Tokenizer) -> Iterator[_Group]:
    """Tokenize each span once and group consecutive spans sharing (section, page)."""
    current: _Group | None = None
    text = doc.text
    for span in doc.spans:
        piece = _Piece(span, _bounded(tokenizer.offsets(text[span.start : span.end])))
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


def _whole(pieces: list[_Piece], section: tuple[str, ...]) -> _Cut:
    content = sum(piece.count for piece in pieces if not piece.is_heading)
    return _Cut(
        pieces[0].span.start,
        pieces[-1].span.end,
        _content_page(pieces),
        sum(piece.count for piece in pieces),
        content,
        section,
    )


def _windows(
    pieces: list[_Piece], text: str, chunk_size: int, overlap: int, section: tuple[str, ...]
) -> Iterator[_Cut]:
    """Cut the tokens of `pieces` (one long span, maybe after a few short ones) into windows."""
    # Offsets relative to `base`; the common case (one span, no headings) shifts nothing.
    base = pieces[0].span.start
    if len(pieces) == 1:
        tokens = pieces[0].offsets
    else:
        tokens = [
            (s + p.span.start - base, e + p.span.start - base) for p in pieces for s, e in p.offsets
        ]
    # Content tokens before each token index, so a window's content weight is a difference.
    content_before = [0]
    for piece in pieces:
        for _ in range(piece.count):
            content_before.append(content_before[-1] + (not piece.is_heading))
    page = _content_page(pieces)
    n = len(tokens)

    def cut_of(a: int, b: int) -> _Cut:
        content = content_before[b] - content_before[a]
        return _Cut(base + tokens[a][0], base + tokens[b - 1][1], page, b - a, content, section)

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
            yield cut_of(a, n)
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
        yield cut_of(a, cut)
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
    section = group.section
    small = chunk_size // _SMALL_FRACTION
    pack: list[_Piece] = []
    pack_tokens = 0
    for piece in group.pieces:
        if pack_tokens + piece.count <= chunk_size:
            pack.append(piece)
            pack_tokens += piece.count
            continue
        if pack and pack_tokens < small:
            # Too small to stand alone (a title before its text): it leads the first window.
            yield from _windows([*pack, piece], text, chunk_size, overlap, section)
            pack, pack_tokens = [], 0
            continue
        # Trailing headings label what follows: they move on with the next piece.
        cut = len(pack)
        while cut > 0 and pack[cut - 1].is_heading:
            cut -= 1
        if cut:
            yield _whole(pack[:cut], section)
        carry = pack[cut:]
        carry_tokens = sum(p.count for p in carry)
        if carry_tokens + piece.count <= chunk_size:
            pack, pack_tokens = [*carry, piece], carry_tokens + piece.count
        else:
            yield from _windows([*carry, piece], text, chunk_size, overlap, section)
            pack, pack_tokens = [], 0
    if pack:
        yield _whole(pack, section)


def _joined_small(cuts: Iterator[_Cut], chunk_size: int) -> Iterator[_Cut]:
    """Join each chunk too small to stand alone to its neighbours on the same page; streams.

    Consecutive small chunks accumulate up to chunk_size, then join the following chunk if
    it still fits (a short section usually introduces what follows); a small chunk that
    cannot go forward joins the previous one if that fits. Headings label what follows, so a
    chunk never ends with them: nothing joins a chunk of headings only, which joins only the
    one after it.
    """
    small = chunk_size // _SMALL_FRACTION

    def fits(first: _Cut, second: _Cut) -> bool:
        # Windows of one span overlap; those never fit together anyway.
        return (
            second.content > 0
            and first.page == second.page
            and first.end <= second.start
            and first.tokens + second.tokens <= chunk_size
        )

    def settled(previous: _Cut | None, stuck: _Cut) -> tuple[_Cut | None, _Cut]:
        """(cut to yield, new previous) once `stuck` cannot join what follows it."""
        if previous is not None and stuck.tokens < small and fits(previous, stuck):
            return None, previous.joined(stuck)
        return previous, stuck

    previous: _Cut | None = None  # held back: a small chunk after it may still join it
    pending: _Cut | None = None  # small chunks so far, waiting to join what follows
    for cut in cuts:
        if cut.tokens == 0:
            continue  # only characters the tokenizer ignores: nothing to embed or find
        if pending is not None:
            if fits(pending, cut):
                joined = pending.joined(cut)
                if cut.tokens < small:
                    pending = joined
                    continue
                pending, cut = None, joined
            else:
                done, previous = settled(previous, pending)
                pending = None
                if done is not None:
                    yield done
        if cut.tokens < small:
            pending = cut
            continue
        if previous is not None:
            yield previous
        previous = cut
    if pending is not None:
        done, previous = settled(previous, pending)
        if done is not None:
            yield done
    if previous is not None:
        yield previous


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
    cuts = (
        cut
        for group in _merged(_groups(doc, tokenizer), chunk_size)
        for cut in _pack(group, text, chunk_size, chunk_overlap)
    )
    return [
        ChunkDraft(
            text=text[cut.start : cut.end],
            start=cut.start,
            end=cut.end,
            page=cut.page,
            section=cut.section,
            token_count=cut.tokens,
            index=index,
        )
        for index, cut in enumerate(_joined_small(cuts, chunk_size))
    ]
