"""Citations the server checks: every answer sentence matched to the source span that
supports it best, its [n] markers verified, moved or added, and each cited source's quote.

How a sentence is scored against a span (a sentence of a source chunk, or two adjacent ones):

- meaning: the cosine of their embeddings from the loaded embedder (clamped to 0..1);
- words: the share of the sentence's content words (stop words dropped, light stemming)
  that the span holds;
- support = the mean of the two, so a sentence copied from the span scores 1 and one that
  shares neither meaning nor words scores 0;
- facts: every number and capitalised name of the sentence must be in the span; when some
  are not, support is at most SUPPORT_THRESHOLD × (the share that is), i.e. below it.

A sentence is supported when its best span reaches SUPPORT_THRESHOLD = 0.5, the midpoint of
that scale: on average over meaning and words, more like the span than not. The constant is
a property of the scale, not fitted to any evaluation set.

What is done with the markers, per sentence: a written [n] whose source supports the
sentence stays; one whose source does not is moved to the best-supporting source when that
one supports it, else removed (and the sentence flagged unsupported); a sentence without a
marker that a source supports gets that source's marker. When no sentence is supported at
all, the best-supporting quote of the sources is appended as a blockquote (`fallback`).

Code is never rewritten: fenced code blocks are not sentences, inline code spans are never
split, and markers inside code are not markers (`chat/citations.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio
import numpy as np

from studyrag.backends.embeddings.base import Embedder
from studyrag.chat.citations import Marker, code_spans, find_markers, rewrite_markers
from studyrag.retrieval.context import Source
from studyrag.retrieval.lexical import STOPWORDS

SUPPORT_THRESHOLD = 0.5
# A source segment longer than this with line breaks in it is a table or a list, not a
# sentence: its lines are the units (a quote of a whole table highlights nothing).
_LONG_SEGMENT_CHARS = 400
FALLBACK_HEADING = "From your sources:"

# Tokens that end with a period but do not end a sentence.
_ABBREVIATIONS = frozenset(
    """e.g i.e etc vs cf al approx inc ltd co corp llc plc dept est fig figs no nos vol vols
    ch sec p pp ed eds mr mrs ms dr prof sr jr st mt jan feb mar apr jun jul aug sep sept oct
    nov dec u.s u.k e.u a.m p.m ca resp""".split()
)
_TERMINAL = re.compile(r"[.!?…]+")
_CLOSERS = "\"'”’)]*_"
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_CAPITALISED = re.compile(r"\b[A-Z][\w'’-]*")
# Where a line starts a new unit: a list item, a heading, a quote or a table row.
_LINE_START = re.compile(r"\n[ \t]*(?:[-*+•]\s|\d{1,3}[.)]\s|#{1,6}\s|>|\|)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_LEADER = re.compile(r"^(?:\s|[-*+•>#]|\d{1,3}[.)](?=\s)|\*\*|__)*")
_TAIL = re.compile(r"[.!?;:…]+[" + re.escape(_CLOSERS) + r"]*$")


# --- sentences ---------------------------------------------------------------------------
def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, trimmed; fenced code blocks are left out.

    A sentence ends at . ! ? (with closing quotes and the citation markers right after it)
    followed by a blank and a word that is not lower case, unless the period ends an
    abbreviation ("e.g.", "Inc.") or an initial; and at paragraph breaks and list items.
    Nothing inside an inline code span ends a sentence; a decimal point is never followed
    by a blank.
    """
    code = code_spans(text)
    inline = [(a, b) for a, b, fenced in code if not fenced]
    markers = {m.start: m for m in find_markers(text)}
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in [(a, b) for a, b, fenced in code if fenced] + [(len(text), len(text))]:
        out.extend(_split_prose(text, pos, start, inline, markers))
        pos = end
    return out


def _split_prose(
    text: str,
    start: int,
    stop: int,
    inline: list[tuple[int, int]],
    markers: Mapping[int, Marker],
) -> list[tuple[int, int]]:
    cuts = [start]
    for rule in (_PARAGRAPH, _LINE_START):
        cuts.extend(m.start() for m in rule.finditer(text, start, stop))
    for match in _TERMINAL.finditer(text, start, stop):
        if any(a <= match.start() < b for a, b in inline):
            continue
        end = match.end()
        while end < stop and text[end] in _CLOSERS:
            end += 1
        while end in markers and markers[end].end <= stop:
            end = markers[end].end
        if end < stop and not text[end].isspace():
            continue  # 3.5, e.g.x, "end.[" ...
        rest = text[end:stop].lstrip()
        if rest and rest[0].islower():
            continue
        if match.group(0) == "." and _is_abbreviation(text, start, match.start()):
            continue
        line = text[max(start, text.rfind("\n", start, match.start()) + 1) : match.start()]
        if match.group(0) == "." and re.fullmatch(r"\s*\d{1,3}", line):
            continue  # "1. " numbers a list item
        cuts.append(end)
    cuts.append(stop)
    spans: list[tuple[int, int]] = []
    for a, b in zip(sorted(set(cuts)), sorted(set(cuts))[1:], strict=False):
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if b - trail > a + lead:
            spans.append((a + lead, b - trail))
    return spans


def _is_abbreviation(text: str, start: int, dot: int) -> bool:
    word = re.search(r"([\w.]+)$", text[start:dot])
    if word is None:
        return False
    token = word.group(1).lower()
    if token in _ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha():
        return True  # an initial: "J. Smith"
    return bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", token))  # "u.s.a"


def _units(text: str) -> list[tuple[int, int]]:
    """A source's sentences, with long multi-line segments (tables, lists) cut into lines."""
    units: list[tuple[int, int]] = []
    for a, b in split_sentences(text):
        if b - a <= _LONG_SEGMENT_CHARS or "\n" not in text[a:b]:
            units.append((a, b))
            continue
        pos = a
        for line in text[a:b].split("\n"):
            lead = len(line) - len(line.lstrip())
            if line.strip():
                units.append((pos + lead, pos + len(line.rstrip())))
            pos += len(line) + 1
    return units


# --- what a text says --------------------------------------------------------------------
def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    words = (w.lower().replace("’", "'") for w in _WORD.findall(text))
    return {_stem(w) for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())}


def _number(raw: str) -> str | None:
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def _numbers(text: str) -> set[str]:
    return {n for n in (_number(m.group(0)) for m in _NUMBER.finditer(text)) if n is not None}


def _names(text: str) -> set[str]:
    """Capitalised words not at the start of the sentence (or of a clause after ':')."""
    names: set[str] = set()
    for match in _CAPITALISED.finditer(text):
        before = text[: match.start()].rstrip(" \t*_\"'“(")
        if not before or before[-1] in ":.!?\n":
            continue
        word = match.group(0).lower().replace("’", "'")
        if word in STOPWORDS:
            continue
        names.add(_stem(word))
    names.update(_stem(w.lower()) for w in re.findall(r"\b[A-Z]{2,}\b", text))
    return names


@dataclass(slots=True)
class _Text:
    """What scoring needs of a sentence or a span."""

    text: str
    terms: set[str]
    numbers: set[str]
    names: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, text: str) -> _Text:
        return cls(text, _terms(text), _numbers(text), _names(text))


@dataclass(slots=True)
class _Span:
    """A candidate quote: source `index`, offsets in the source's text, its vector."""

    index: int
    start: int
    end: int
    info: _Text
    vector: Any = None


def support(claim: _Text, span: _Text, cosine: float) -> float:
    """How well `span` supports `claim`, 0..1 (see the module docstring)."""
    words = len(claim.terms & span.terms) / len(claim.terms) if claim.terms else 0.0
    score = (min(max(cosine, 0.0), 1.0) + words) / 2
    facts = claim.numbers | claim.names
    if facts:
        held = len(claim.numbers & span.numbers) + len(claim.names & span.terms)
        if held < len(facts):
            score = min(score, SUPPORT_THRESHOLD) * held / len(facts)
    return round(score, 4)


# --- attribution -------------------------------------------------------------------------
@dataclass(slots=True)
class Attribution:
    """The checked answer: its content, the sources with quotes, and the metadata block."""

    content: str
    sources: list[dict[str, Any]]
    cited: list[int]
    meta: dict[str, Any]


@dataclass(slots=True)
class _Sentence:
    start: int
    end: int
    claimed: list[int]
    info: _Text
    vector: Any = None
    best: dict[int, tuple[float, _Span]] = field(default_factory=dict)
    claims: bool = True  # False: markers alone or a question; its markers are removed


def _source_dict(source: Source | Mapping[str, Any]) -> dict[str, Any]:
    return source.to_dict() if isinstance(source, Source) else dict(source)


def _source_text(source: Source | Mapping[str, Any]) -> tuple[int, int, str] | None:
    if isinstance(source, Source):
        return source.index, source.start, source.text
    text, start = source.get("text"), source.get("start")
    if not isinstance(text, str) or start is None:
        return None
    return int(source["index"]), int(start), text


def _prepare(
    answer: str, sources: Sequence[Source | Mapping[str, Any]]
) -> tuple[list[_Sentence], list[_Span], dict[int, int]]:
    sentences: list[_Sentence] = []
    for a, b in split_sentences(answer):
        piece = answer[a:b]
        claimed = [n for m in find_markers(piece) for n in m.numbers]
        bare = rewrite_markers(piece, lambda _: "")
        lead = _LEADER.match(bare)
        info = _Text.of(bare[lead.end() :] if lead else bare)
        if info.terms and bare.rstrip(_CLOSERS + " ").endswith("?"):
            # A question claims nothing: its markers go, it is not counted.
            sentences.append(_Sentence(a, b, claimed, info, claims=False))
            continue
        if not info.terms:
            # A marker, a bullet or punctuation alone claims nothing; markers on a line of
            # their own belong to the sentence before them.
            if claimed and sentences and sentences[-1].claims:
                sentences[-1].end = b
                sentences[-1].claimed = list(dict.fromkeys(sentences[-1].claimed + claimed))
            elif claimed:  # markers after no claim (the start, a question) cite nothing
                sentences.append(_Sentence(a, b, claimed, info, claims=False))
            continue
        sentences.append(_Sentence(a, b, list(dict.fromkeys(claimed)), info))
    spans: list[_Span] = []
    offsets: dict[int, int] = {}
    for source in sources:
        found = _source_text(source)
        if found is None:
            continue
        index, doc_start, text = found
        offsets[index] = doc_start
        spans.extend(_Span(index, a, b, _Text.of(text[a:b])) for a, b in _units(text))
    return sentences, spans, offsets


def _pairs(spans: list[_Span]) -> list[_Span]:
    """Two adjacent sentences of one source, for answer sentences that join them."""
    pairs: list[_Span] = []
    for one, two in zip(spans, spans[1:], strict=False):
        if one.index != two.index or one.vector is None or two.vector is None:
            continue
        vector = one.vector + two.vector
        info = _Text(
            one.info.text + " " + two.info.text,
            one.info.terms | two.info.terms,
            one.info.numbers | two.info.numbers,
        )
        pairs.append(_Span(one.index, one.start, two.end, info, vector / np.linalg.norm(vector)))
    return pairs


def _score(sentences: list[_Sentence], spans: list[_Span]) -> None:
    """Each sentence's best span per source."""
    spans = [s for s in spans if s.vector is not None]
    if not spans:
        return
    matrix = np.stack([s.vector for s in spans])
    for sentence in sentences:
        cosines = matrix @ sentence.vector
        for span, cosine in zip(spans, cosines, strict=True):
            value = support(sentence.info, span.info, float(cosine))
            held = sentence.best.get(span.index)
            if held is None or value > held[0]:
                sentence.best[span.index] = (value, span)


async def attribute(
    answer: str,
    sources: Sequence[Source | Mapping[str, Any]],
    *,
    embedder: Embedder,
    question: str = "",
    fallback: bool = True,
) -> Attribution:
    """Check `answer`'s citations against `sources` (see the module docstring)."""
    sentences, units, offsets = await anyio.to_thread.run_sync(_prepare, answer, sources)
    orphans = [s for s in sentences if not s.claims]
    sentences = [s for s in sentences if s.claims]
    # A span sharing no content word with a sentence scores at most cosine / 2 < 0.5
    # against it, so it can support none: only spans sharing a word are embedded.
    words = set().union(*(s.info.terms for s in sentences), _terms(question))
    embedded = [u for u in units if u.info.terms & words]
    texts = [s.info.text for s in sentences] + [u.info.text for u in embedded]
    with_question = bool(units and question.strip())
    if with_question:
        texts.append(question)
    q_vector = None
    if texts:
        # One batch on the embedder's query path: it never waits behind a document batch.
        vectors = np.asarray(await embedder.embed_queries(texts), dtype=np.float32)
        items: list[_Sentence | _Span] = [*sentences, *embedded]
        for item, vector in zip(items, vectors, strict=False):
            item.vector = vector
        q_vector = vectors[-1] if with_question else None
    return await anyio.to_thread.run_sync(
        lambda: _decide(
            answer, sources, sentences, orphans, units, offsets, question, q_vector, fallback
        )
    )


def _decide(
    answer: str,
    sources: Sequence[Source | Mapping[str, Any]],
    sentences: list[_Sentence],
    orphans: list[_Sentence],
    units: list[_Span],
    offsets: dict[int, int],
    question: str,
    q_vector: Any,
    fallback: bool,
) -> Attribution:
    _score(sentences, units + _pairs(units))
    out: list[str] = []
    pos = 0
    report: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    quotes: dict[int, tuple[float, _Span]] = {}
    for orphan in orphans:
        changes.extend({"sentence": None, "action": "removed", "marker": n} for n in orphan.claimed)
    checked = iter(range(len(sentences)))
    for sentence in sorted([*sentences, *orphans], key=lambda s: s.start):
        if not sentence.claims:
            out.append(answer[pos : sentence.start])
            pos = sentence.end
            if sentence.info.terms:  # a question: kept, without markers
                out.append(_with_markers(answer[sentence.start : sentence.end], []))
            else:  # markers alone before the first sentence: dropped with the blank after
                pos += len(answer[pos:]) - len(answer[pos:].lstrip())
            continue
        i = next(checked)
        final, best = _verdict(sentence)
        supported = bool(final)
        for n in final:
            value, span = sentence.best[n]
            # The best support wins; on a tie the longer span says more.
            if n not in quotes or (value, span.end - span.start) > (
                quotes[n][0],
                quotes[n][1].end - quotes[n][1].start,
            ):
                quotes[n] = (value, span)
        for n in sentence.claimed:
            if n not in final:
                moved = final and not set(final) & set(sentence.claimed)
                changes.append(
                    {"sentence": i, "action": "moved" if moved else "removed", "marker": n}
                    | ({"to": final[0]} if moved else {})
                )
        if final and not sentence.claimed:
            changes.append({"sentence": i, "action": "added", "marker": final[0]})
        piece = answer[sentence.start : sentence.end]
        if final != sentence.claimed:
            piece = _with_markers(piece, final)
        out.append(answer[pos : sentence.start])
        start = sum(len(p) for p in out)
        out.append(piece)
        pos = sentence.end
        report.append(
            {
                "start": start,
                "end": start + len(piece),
                "support": max((sentence.best[n][0] for n in final), default=best),
                "sources": final,
                "supported": supported,
            }
        )
    out.append(answer[pos:])
    content = "".join(out)
    supported_count = sum(1 for r in report if r["supported"])
    used_fallback = False
    reason = None
    if fallback and supported_count == 0 and units:
        content, picked = _fallback(content, units, question, q_vector, sentences)
        quotes.update(picked)
        used_fallback, reason = bool(picked), "unsupported"
    elif fallback and units and _misses_the_question(sentences, units, q_vector, quotes):
        # Supported, but by passages that answer something else, while the passage closest
        # to the question goes uncited: show that passage too.
        fresh = [u for u in units if u.index not in quotes]
        content, picked = _fallback(content, fresh, question, q_vector, [])
        quotes.update(picked)
        used_fallback, reason = bool(picked), "off_topic"
    cited = sorted(quotes)
    out_sources: list[dict[str, Any]] = []
    for source in sources:
        data = _source_dict(source)
        data.pop("text", None)
        held = quotes.get(int(data["index"]))
        data["cited"] = held is not None
        data["quote"] = None
        data["support"] = None
        if held is not None:
            value, span = held
            text = _source_text(source)
            assert text is not None
            base = offsets[span.index]
            data["quote"] = {
                "start": base + span.start,
                "end": base + span.end,
                "text": text[2][span.start : span.end],
            }
            data["support"] = value
        out_sources.append(data)
    meta = {
        "sentences": report,
        "supported": supported_count,
        "total": len(report),
        "fallback": used_fallback,
        # Why the quotes were added: no sentence supported, or none as close to the
        # question as an uncited passage.
        "fallback_reason": reason if used_fallback else None,
        "threshold": SUPPORT_THRESHOLD,
        "changes": changes,
    }
    return Attribution(content=content, sources=out_sources, cited=cited, meta=meta)


def _verdict(sentence: _Sentence) -> tuple[list[int], float]:
    """(the sentence's markers after checking, its best support over all sources)."""
    if not sentence.best:
        return [], 0.0
    best_index, (best, _) = max(sentence.best.items(), key=lambda kv: (kv[1][0], -kv[0]))
    kept = [
        n
        for n in sentence.claimed
        if n in sentence.best and sentence.best[n][0] >= SUPPORT_THRESHOLD
    ]
    if kept:
        return kept, best
    if best >= SUPPORT_THRESHOLD:
        return [best_index], best
    return [], best


def _with_markers(piece: str, numbers: list[int]) -> str:
    """The sentence with its markers replaced by `numbers`, placed before its end mark."""
    bare = rewrite_markers(piece, lambda _: "").strip()
    if not numbers:
        return bare
    marker = f" [{', '.join(str(n) for n in numbers)}]"
    tail = _TAIL.search(bare)
    if tail is None or any(a <= tail.start() < b for a, b, _ in code_spans(bare)):
        return bare + marker
    return bare[: tail.start()].rstrip() + marker + bare[tail.start() :]


def _misses_the_question(
    sentences: list[_Sentence],
    units: list[_Span],
    q_vector: Any,
    cited: Mapping[int, Any],
) -> bool:
    """Whether the passage closest to the question is uncited and closer to it than every
    sentence of the answer: the answer, supported or not, is about something else."""
    if q_vector is None:
        return False
    near = [(float(u.vector @ q_vector), u) for u in units if u.vector is not None]
    if not near:
        return False
    best, unit = max(near, key=lambda t: t[0])
    if unit.index in cited:
        return False
    answered = max(
        (float(s.vector @ q_vector) for s in sentences if s.vector is not None), default=-1.0
    )
    return best > answered


def _fallback(
    content: str,
    units: list[_Span],
    question: str,
    q_vector: Any,
    sentences: list[_Sentence],
) -> tuple[str, dict[int, tuple[float, _Span]]]:
    """Append the best-supporting quote(s) as a blockquote; the quotes chosen per source.

    A quote is scored against the question (the sources were retrieved for it) and, when
    the answer has sentences, against its closest one: the better of the two counts.
    """
    claim = _Text.of(question)
    scored: list[tuple[float, _Span]] = []
    for unit in units:
        if unit.vector is None:  # no word in common: nothing to go by but the rank
            scored.append((0.0, unit))
            continue
        values = [support(s.info, unit.info, float(unit.vector @ s.vector)) for s in sentences]
        if q_vector is not None:
            # Facts are a sentence's claims; a question's names and numbers are its topic.
            topic = _Text(claim.text, claim.terms, set())
            values.append(support(topic, unit.info, float(unit.vector @ q_vector)))
        scored.append((max(values, default=0.0), unit))
    scored.sort(key=lambda t: -t[0])
    picked: dict[int, tuple[float, _Span]] = {}
    for value, unit in scored:
        if not picked or (value >= SUPPORT_THRESHOLD and unit.index not in picked):
            picked.setdefault(unit.index, (value, unit))
        if len(picked) == 2:
            break
    blocks = []
    for index, (_, unit) in picked.items():
        lines = [line.strip() for line in unit.info.text.splitlines() if line.strip()]
        lines[-1] += f" [{index}]"
        blocks.append("\n".join(f"> {line}" for line in lines))
    head = content.rstrip()
    block = FALLBACK_HEADING + "\n" + "\n>\n".join(blocks)
    return (head + "\n\n" + block if head else block), picked
