"""Loops in a streamed answer: a run of repeated words or a sentence said again.

A small model at low temperature falls into cycles ("The revenue was $5. The revenue was
$5. ...") and stays there until the token cap. `RepetitionGuard` is fed the answer as it
streams and says, as early as it can tell, where the repetition began, so the engine stops
the model and keeps only the text before it.

Words are compared case-folded, without punctuation and without citation markers, so a
loop that only changes its [n] or its full stop is still a loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

# A word, a number with its separators ("1,577.3"), or a citation marker (skipped).
_TOKEN = re.compile(r"\[\s*\d{1,4}(?:\s*[,;–-]\s*\d{1,4})*\s*\]|\w+(?:[.,'’]\w+)*")
# Where a sentence ends: terminal punctuation before a blank, or a line break.
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")

# The tail loops when its last `p` words repeat back to back: a unit of LONG_UNIT_WORDS or
# more seen twice, a shorter one seen at least 3 times and over MIN_RUN_WORDS words in all
# ("no no no" is emphasis, "very" 12 times or a 4-word phrase 3 times is a loop).
LONG_UNIT_WORDS = 8
MIN_RUN_WORDS = 12
# The longest unit a back-to-back repeat is looked for in (longer loops are sentences).
MAX_UNIT_WORDS = 60
# A sentence said again counts from this length ("Yes." twice is not a loop).
MIN_SENTENCE_WORDS = 4
# A sentence that starts with the same words as an earlier one is its repeat from here on:
# stopping then, instead of at its end, keeps a repeated sentence off the screen.
PREFIX_WORDS = 10
# An answer this similar (word sequence match ratio) to an earlier one is that answer again.
COPY_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class Loop:
    """Where the repetition starts (a character offset into the text) and what repeats."""

    start: int
    kind: str  # "ngram" | "sentence" | "history" (an earlier answer said again)
    unit: str


@dataclass(slots=True)
class _Word:
    norm: str
    start: int


def _words(text: str) -> list[_Word]:
    return [
        _Word(m.group(0).casefold(), m.start())
        for m in _TOKEN.finditer(text)
        if not m.group(0).startswith("[")
    ]


def find_loop(text: str, *, final: bool = True, previous: Sequence[str] = ()) -> Loop | None:
    """The first repetition in `text`, or None. `final` False: text is still streaming, so
    the last (unfinished) sentence is judged only by its first PREFIX_WORDS words.
    `previous` are earlier answers of the conversation: starting like one of them, or saying
    one of their long sentences again, is a repetition too."""
    words = _words(text)
    found = [
        f
        for f in (
            _tail_run(words),
            _repeated_sentence(text, words, final=final),
            _from_previous(text, words, previous, final=final),
        )
        if f
    ]
    return min(found, key=lambda f: f.start) if found else None


def copies_previous(text: str, previous: Sequence[str]) -> bool:
    """Whether `text` is (nearly) word for word one of the earlier answers."""
    words = [w.norm for w in _words(text)]
    if len(words) < MIN_SENTENCE_WORDS:
        return False
    for earlier in previous:
        other = [w.norm for w in _words(earlier)]
        if len(other) < MIN_SENTENCE_WORDS:
            continue
        matcher = SequenceMatcher(None, words, other, autojunk=False)
        if matcher.ratio() >= COPY_RATIO:
            return True
    return False


def _from_previous(
    text: str, words: list[_Word], previous: Sequence[str], *, final: bool
) -> Loop | None:
    if not previous or len(words) < PREFIX_WORDS:
        return None
    head = tuple(w.norm for w in words[:PREFIX_WORDS])
    said: set[tuple[str, ...]] = set()
    for earlier in previous:
        earlier_words = _words(earlier)
        if tuple(w.norm for w in earlier_words[:PREFIX_WORDS]) == head:
            return Loop(0, "history", " ".join(head))
        for sentence in _sentences(earlier, earlier_words, final=True)[0]:
            if len(sentence) >= PREFIX_WORDS:
                said.add(tuple(w.norm for w in sentence))
    sentences, _ = _sentences(text, words, final=final)
    for sentence in sentences:
        key = tuple(w.norm for w in sentence)
        if len(key) >= PREFIX_WORDS and key in said:
            return Loop(sentence[0].start, "history", " ".join(key))
    return None


def _sentences(
    text: str, words: list[_Word], *, final: bool
) -> tuple[list[list[_Word]], list[_Word]]:
    """(complete sentences, the unfinished last one); at `final` every sentence is complete."""
    bounds = [m.end() for m in _SENTENCE_END.finditer(text)]
    sentences: list[list[_Word]] = []
    current: list[_Word] = []
    b = 0
    for w in words:
        while b < len(bounds) and bounds[b] <= w.start:
            if current:
                sentences.append(current)
                current = []
            b += 1
        current.append(w)
    if current and (final or b < len(bounds)):
        sentences.append(current)
        current = []
    return sentences, current


def trim_loop(text: str) -> tuple[str, Loop | None]:
    """`text` cut before its first repetition, and the loop found (None: unchanged)."""
    loop = find_loop(text)
    if loop is None:
        return text, None
    return text[: loop.start].rstrip(), loop


def _tail_run(words: list[_Word]) -> Loop | None:
    """The last words repeat back to back: keep the first copy, cut at the second."""
    n = len(words)
    norms = [w.norm for w in words]
    for p in range(1, min(MAX_UNIT_WORDS, n // 2) + 1):
        reps = 1
        while (reps + 1) * p <= n and norms[n - (reps + 1) * p : n - reps * p] == norms[n - p :]:
            reps += 1
        needed = 2 if p >= LONG_UNIT_WORDS else max(3, math.ceil(MIN_RUN_WORDS / p))
        if reps >= needed:
            first = n - reps * p
            # The run may start mid-unit ("… river. Paris is the capital … river. Paris is"):
            # slide back to where the repeating really began.
            while first > 0 and norms[first - 1] == norms[first - 1 + p]:
                first -= 1
            cut = words[first + p].start
            return Loop(cut, "ngram", " ".join(norms[first : first + p]))
    return None


def _repeated_sentence(text: str, words: list[_Word], *, final: bool) -> Loop | None:
    """A sentence (of MIN_SENTENCE_WORDS+) that an earlier sentence already said."""
    sentences, current = _sentences(text, words, final=final)
    seen: set[tuple[str, ...]] = set()
    prefixes: set[tuple[str, ...]] = set()
    for sentence in sentences:
        key = tuple(w.norm for w in sentence)
        if len(key) >= MIN_SENTENCE_WORDS and key in seen:
            return Loop(sentence[0].start, "sentence", " ".join(key))
        seen.add(key)
        if len(key) >= PREFIX_WORDS:
            prefixes.add(key[:PREFIX_WORDS])
    # Still being written: it repeats once it starts like an earlier long sentence.
    head = tuple(w.norm for w in current[:PREFIX_WORDS])
    if len(head) == PREFIX_WORDS and head in prefixes:
        return Loop(current[0].start, "sentence", " ".join(head))
    return None


class RepetitionGuard:
    """Fed an answer piece by piece; `loop` is set once the text repeats itself."""

    def __init__(self, *, previous: Sequence[str] = ()) -> None:
        self.text = ""
        self.loop: Loop | None = None
        self.previous = list(previous)

    def feed(self, piece: str) -> Loop | None:
        """Add a streamed piece; the loop found so far (None while the text is fine)."""
        if self.loop is None:
            self.text += piece
            self.loop = find_loop(self.text, final=False, previous=self.previous)
        return self.loop
