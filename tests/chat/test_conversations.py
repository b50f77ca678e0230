"""ConversationManager on a real, migrated SQLite database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from studyrag.chat.conversations import DEFAULT_TITLE, ConversationManager, derive_title
from studyrag.db.models import Conversation, Message
from studyrag.db.session import Database
from studyrag.errors import ConversationNotFound, InvalidChatRequest, MessageNotFound


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    await database.migrate()
    yield database
    await database.aclose()


@pytest.fixture
def cm(db: Database) -> ConversationManager:
    return ConversationManager(db)


async def _fill(cm: ConversationManager, cid: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        ids.append((await cm.add_message(cid, role, f"message {i + 1}")).id)
    return ids


async def _backdate_messages(db: Database, ids: list[str], days: int) -> None:
    async with db.session() as s:
        await s.execute(
            update(Message)
            .where(Message.id.in_(ids))
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


# --- conversations -----------------------------------------------------------------------
async def test_create_get_and_utc_timestamps(cm: ConversationManager) -> None:
    made = await cm.create(metadata={"course": "bio"})
    got = await cm.get(made.id)
    assert got.title == DEFAULT_TITLE
    assert got.status == "active" and got.message_count == 0
    assert got.metadata == {"course": "bio"}
    # SQLite hands back naive datetimes; the manager must not.
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    data = got.to_dict()
    assert data["created_at"].endswith("+00:00")
    assert data["last_message_at"] is None


async def test_create_rejects_empty_or_long_title(cm: ConversationManager) -> None:
    with pytest.raises(InvalidChatRequest):
        await cm.create(title="   ")
    with pytest.raises(InvalidChatRequest):
        await cm.create(title="x" * 201)


async def test_unknown_conversation_is_chat_005(cm: ConversationManager) -> None:
    with pytest.raises(ConversationNotFound) as info:
        await cm.get("nope")
    assert info.value.error_code == "CHAT_005"
    with pytest.raises(ConversationNotFound):
        await cm.add_message("nope", "user", "hi")
    with pytest.raises(ConversationNotFound):
        await cm.list_messages("nope")


async def test_soft_delete_hides_everything(cm: ConversationManager) -> None:
    conv = await cm.create()
    msg = await cm.add_message(conv.id, "user", "hello")
    await cm.soft_delete(conv.id)
    with pytest.raises(ConversationNotFound):
        await cm.get(conv.id)
    with pytest.raises(ConversationNotFound):
        await cm.add_message(conv.id, "user", "still there?")
    with pytest.raises(ConversationNotFound):
        await cm.soft_delete(conv.id)
    with pytest.raises(MessageNotFound):
        await cm.get_message(msg.id)
    assert (await cm.list()).total == 0
    hidden = await cm.get(conv.id, include_deleted=True)
    assert hidden.status == "deleted" and hidden.deleted_at is not None
    assert [c.id for c in (await cm.list(status="deleted")).items] == [conv.id]


async def test_update_title_metadata_status(cm: ConversationManager) -> None:
    conv = await cm.create()
    updated = await cm.update(conv.id, title="  Cell   biology ", metadata={"a": 1})
    assert updated.title == "Cell biology" and updated.metadata == {"a": 1}
    assert updated.updated_at >= conv.updated_at
    archived = await cm.update(conv.id, status="archived")
    assert archived.status == "archived"
    assert [c.id for c in (await cm.list(status="archived")).items] == [conv.id]
    assert (await cm.list(status="active")).total == 0
    with pytest.raises(InvalidChatRequest):
        await cm.update(conv.id, status="deleted")
    with pytest.raises(InvalidChatRequest):
        await cm.list(status="gone")


async def test_title_comes_from_first_user_question(cm: ConversationManager) -> None:
    conv = await cm.create()
    await cm.add_message(conv.id, "system", "ignored for the title")
    question = (
        "How do the light-dependent reactions of photosynthesis produce ATP and NADPH "
        "in the thylakoid membrane?"
    )
    await cm.add_message(conv.id, "user", question)
    title = (await cm.get(conv.id)).title
    assert title == derive_title(question)
    assert title.endswith("…") and len(title) <= 61
    assert question.startswith(title[:-1])  # cut on a word boundary
    assert question[len(title) - 1] == " "
    await cm.add_message(conv.id, "user", "A second question")
    assert (await cm.get(conv.id)).title == title
    named = await cm.create(title="Mine")
    await cm.add_message(named.id, "user", "What is a cell?")
    assert (await cm.get(named.id)).title == "Mine"


def test_derive_title_short_and_long_word() -> None:
    assert derive_title("  What   is a\ncell? ") == "What is a cell?"
    assert derive_title("x" * 100) == "x" * 60 + "…"


# --- conversation pages ------------------------------------------------------------------
async def test_list_empty(cm: ConversationManager) -> None:
    page = await cm.list()
    assert page.items == [] and page.total == 0 and page.next_cursor is None


async def test_list_exact_page_size_has_no_next_cursor(cm: ConversationManager) -> None:
    for _ in range(5):
        await cm.create()
    page = await cm.list(limit=5)
    assert len(page.items) == 5 and page.total == 5 and page.next_cursor is None


async def test_list_cursor_walks_every_conversation_once_in_order(cm: ConversationManager) -> None:
    made = [await cm.create(title=f"c{i}") for i in range(7)]
    # Activity moves a conversation to the top.
    await cm.add_message(made[0].id, "user", "bump")
    seen, cursor, sizes = [], None, []
    while True:
        page = await cm.list(limit=3, cursor=cursor)
        assert page.total == 7
        sizes.append(len(page.items))
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert len({c.id for c in seen}) == 7
    assert seen[0].id == made[0].id
    keys = [(c.updated_at, c.id) for c in seen]
    assert keys == sorted(keys, reverse=True)


async def test_list_offset_matches_cursor_pages(cm: ConversationManager) -> None:
    for i in range(6):
        await cm.create(title=f"c{i}")
    first = await cm.list(limit=4)
    by_offset = await cm.list(limit=4, offset=4)
    by_cursor = await cm.list(limit=4, cursor=first.next_cursor)
    assert [c.id for c in by_offset.items] == [c.id for c in by_cursor.items]
    assert len(by_offset.items) == 2 and by_offset.next_cursor is None


async def test_list_rejects_bad_limits_and_cursors(cm: ConversationManager) -> None:
    for limit in (0, 101):
        with pytest.raises(InvalidChatRequest):
            await cm.list(limit=limit)
    assert len((await cm.list(limit=100)).items) == 0
    with pytest.raises(InvalidChatRequest):
        await cm.list(cursor="not-a-cursor")
    with pytest.raises(InvalidChatRequest):
        await cm.list(cursor="eyJ4IjogMX0", offset=3)


async def test_list_filters_title_and_dates(cm: ConversationManager) -> None:
    a = await cm.create(title="Genetics 100% review")
    b = await cm.create(title="Organic chemistry")
    assert [c.id for c in (await cm.list(title_search="GENETICS")).items] == [a.id]
    # LIKE wildcards in the search are literal.
    assert [c.id for c in (await cm.list(title_search="100%")).items] == [a.id]
    assert (await cm.list(title_search="_")).total == 0
    after_a = a.created_at + timedelta(microseconds=1)
    assert [c.id for c in (await cm.list(created_after=after_a)).items] == [b.id]
    assert [c.id for c in (await cm.list(created_before=after_a)).items] == [a.id]
    future = datetime.now(UTC) + timedelta(days=1)
    assert (await cm.list(updated_after=future)).total == 0
    assert (await cm.list(updated_before=future)).total == 2


# --- messages ------------------------------------------------------------------------------
async def test_add_message_updates_counters(cm: ConversationManager) -> None:
    conv = await cm.create()
    first = await cm.add_message(conv.id, "user", "q", metadata={"k": 1})
    second = await cm.add_message(
        conv.id, "assistant", "a", sources=[{"index": 1}], status="incomplete"
    )
    assert (first.seq, second.seq) == (1, 2)
    got = await cm.get(conv.id)
    assert got.message_count == 2
    assert got.last_message_at == second.created_at
    assert got.updated_at >= second.created_at
    assert second.to_dict()["sources"] == [{"index": 1}]
    with pytest.raises(InvalidChatRequest):
        await cm.add_message(conv.id, "robot", "x")
    with pytest.raises(InvalidChatRequest):
        await cm.add_message(conv.id, "user", "x", status="weird")


async def test_concurrent_add_message_gives_contiguous_seqs(cm: ConversationManager) -> None:
    conv = await cm.create()

    async def writer(n: int) -> list[int]:
        return [(await cm.add_message(conv.id, "user", f"w{n}-{i}")).seq for i in range(3)]

    results = await asyncio.gather(*(writer(n) for n in range(10)))
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 31))
    assert (await cm.get(conv.id)).message_count == 30
    page = await cm.list_messages(conv.id, limit=100)
    assert [m.seq for m in page.items] == list(range(1, 31))


async def test_update_and_get_message(cm: ConversationManager) -> None:
    conv = await cm.create()
    msg = await cm.add_message(conv.id, "assistant", "", status="incomplete")
    done = await cm.update_message(
        msg.id, content="answer", status="complete", sources=[{"index": 1}], metadata={"x": 2}
    )
    assert (done.content, done.status, done.sources, done.metadata) == (
        "answer",
        "complete",
        [{"index": 1}],
        {"x": 2},
    )
    again = await cm.get_message(msg.id, conversation_id=conv.id)
    assert again.content == "answer" and again.created_at.tzinfo is not None
    other = await cm.create()
    with pytest.raises(MessageNotFound) as info:
        await cm.get_message(msg.id, conversation_id=other.id)
    assert info.value.error_code == "CHAT_008"
    with pytest.raises(MessageNotFound):
        await cm.update_message("missing", content="x")
    with pytest.raises(InvalidChatRequest):
        await cm.update_message(msg.id, status="bogus")


async def test_list_messages_empty(cm: ConversationManager) -> None:
    conv = await cm.create()
    page = await cm.list_messages(conv.id)
    assert page.items == [] and not page.has_more_before and not page.has_more_after
    assert page.to_dict()["first_seq"] is None


async def test_list_messages_forward_pages(cm: ConversationManager) -> None:
    conv = await cm.create()
    await _fill(cm, conv.id, 5)
    p1 = await cm.list_messages(conv.id, limit=2)
    assert [m.seq for m in p1.items] == [1, 2]
    assert (p1.has_more_before, p1.has_more_after) == (False, True)
    p2 = await cm.list_messages(conv.id, limit=2, after_seq=p1.last_seq)
    assert [m.seq for m in p2.items] == [3, 4]
    assert (p2.has_more_before, p2.has_more_after) == (True, True)
    p3 = await cm.list_messages(conv.id, limit=2, after_seq=p2.last_seq)
    assert [m.seq for m in p3.items] == [5]
    assert (p3.has_more_before, p3.has_more_after) == (True, False)
    p4 = await cm.list_messages(conv.id, limit=2, after_seq=p3.last_seq)
    assert p4.items == [] and p4.has_more_before and not p4.has_more_after


async def test_list_messages_backward_pages(cm: ConversationManager) -> None:
    conv = await cm.create()
    await _fill(cm, conv.id, 5)
    p1 = await cm.list_messages(conv.id, limit=2, order="desc")
    assert [m.seq for m in p1.items] == [5, 4]
    assert (p1.has_more_before, p1.has_more_after) == (True, False)
    p2 = await cm.list_messages(conv.id, limit=2, before_seq=p1.first_seq, order="desc")
    assert [m.seq for m in p2.items] == [3, 2]
    # Same page, ascending: the page adjacent to the cursor, sorted the other way.
    p2_asc = await cm.list_messages(conv.id, limit=2, before_seq=p1.first_seq)
    assert [m.seq for m in p2_asc.items] == [2, 3]
    p3 = await cm.list_messages(conv.id, limit=2, before_seq=p2.first_seq, order="desc")
    assert [m.seq for m in p3.items] == [1]
    assert (p3.has_more_before, p3.has_more_after) == (False, True)
    p4 = await cm.list_messages(conv.id, limit=2, before_seq=1)
    assert p4.items == [] and not p4.has_more_before and p4.has_more_after


async def test_list_messages_exact_page_window_and_limits(cm: ConversationManager) -> None:
    conv = await cm.create()
    await _fill(cm, conv.id, 5)
    full = await cm.list_messages(conv.id, limit=5)
    assert len(full.items) == 5 and not full.has_more_before and not full.has_more_after
    window = await cm.list_messages(conv.id, after_seq=1, before_seq=5)
    assert [m.seq for m in window.items] == [2, 3, 4]
    for limit in (0, 101):
        with pytest.raises(InvalidChatRequest):
            await cm.list_messages(conv.id, limit=limit)


async def test_history_keeps_last_complete_dialogue(cm: ConversationManager) -> None:
    conv = await cm.create()
    await cm.add_message(conv.id, "user", "q1")
    await cm.add_message(conv.id, "assistant", "a1")
    await cm.add_message(conv.id, "system", "note")
    await cm.add_message(conv.id, "user", "q2")
    await cm.add_message(conv.id, "assistant", "half", status="incomplete")
    await cm.add_message(conv.id, "assistant", "boom", status="error")
    await cm.add_message(conv.id, "user", "q3")
    await cm.add_message(conv.id, "assistant", "a3")
    assert [m.content for m in await cm.history(conv.id, 10)] == ["q1", "a1", "q2", "q3", "a3"]
    assert [m.content for m in await cm.history(conv.id, 3)] == ["q2", "q3", "a3"]
    assert [m.content for m in await cm.history(conv.id, 2, before_seq=7)] == ["a1", "q2"]
    assert await cm.history(conv.id, 0) == []


# --- cleanup -----------------------------------------------------------------------------
async def test_cleanup_keep_last(cm: ConversationManager) -> None:
    a, b = await cm.create(), await cm.create()
    await _fill(cm, a.id, 5)
    await _fill(cm, b.id, 3)
    report = await cm.cleanup(a.id, keep_last=2)
    assert report.messages_removed == 3
    page = await cm.list_messages(a.id)
    assert [m.seq for m in page.items] == [4, 5]
    assert (await cm.get(a.id)).message_count == 2
    assert (await cm.get(b.id)).message_count == 3  # other conversations untouched
    # Seqs keep growing after a trim.
    assert (await cm.add_message(a.id, "user", "next")).seq == 6
    everywhere = await cm.cleanup(keep_last=1)
    assert everywhere.messages_removed == 2 + 2
    assert (await cm.get(b.id)).message_count == 1


async def test_cleanup_older_than_and_incomplete(db: Database, cm: ConversationManager) -> None:
    conv = await cm.create()
    ids = await _fill(cm, conv.id, 4)
    await _backdate_messages(db, ids[:2], days=40)
    await cm.add_message(conv.id, "assistant", "", status="incomplete")
    assert (await cm.cleanup(older_than=timedelta(days=30))).messages_removed == 2
    got = await cm.get(conv.id)
    assert got.message_count == 3
    assert (await cm.cleanup(drop_incomplete=True)).messages_removed == 1
    got = await cm.get(conv.id)
    assert got.message_count == 2
    remaining = (await cm.list_messages(conv.id)).items
    assert [m.content for m in remaining] == ["message 3", "message 4"]
    assert got.last_message_at == remaining[-1].created_at


async def test_cleanup_rules_are_a_union(db: Database, cm: ConversationManager) -> None:
    conv = await cm.create()
    ids = await _fill(cm, conv.id, 6)
    await _backdate_messages(db, ids[:1], days=10)
    await cm.update_message(ids[5], status="incomplete")
    report = await cm.cleanup(
        conv.id, keep_last=4, older_than=timedelta(days=5), drop_incomplete=True
    )
    # keep_last drops 1 and 2 (1 is also old), drop_incomplete drops 6.
    assert report.messages_removed == 3
    assert [m.seq for m in (await cm.list_messages(conv.id)).items] == [3, 4, 5]
    assert (await cm.get(conv.id)).message_count == 3
    with pytest.raises(InvalidChatRequest):
        await cm.cleanup(keep_last=-1)
    with pytest.raises(ConversationNotFound):
        await cm.cleanup("missing", keep_last=1)


async def test_cleanup_purges_old_deleted_conversations(
    db: Database, cm: ConversationManager
) -> None:
    old, recent, alive = await cm.create(), await cm.create(), await cm.create()
    for conv in (old, recent, alive):
        await _fill(cm, conv.id, 2)
    await cm.soft_delete(old.id)
    await cm.soft_delete(recent.id)
    async with db.session() as s:
        await s.execute(
            update(Conversation)
            .where(Conversation.id == old.id)
            .values(deleted_at=datetime.now(UTC) - timedelta(days=60))
        )
    report = await cm.cleanup(purge_deleted_older_than=timedelta(days=30))
    assert (report.conversations_purged, report.messages_purged) == (1, 2)
    assert report.messages_removed == 0
    with pytest.raises(ConversationNotFound):
        await cm.get(old.id, include_deleted=True)
    assert (await cm.get(recent.id, include_deleted=True)).message_count == 2
    assert (await cm.get(alive.id)).message_count == 2
    stats = await cm.statistics()
    assert stats["messages"]["total"] == 4


# --- statistics --------------------------------------------------------------------------
async def test_statistics_numbers(cm: ConversationManager) -> None:
    conv = await cm.create()
    other = await cm.create()
    await cm.update(other.id, status="archived")
    gone = await cm.create()
    await cm.soft_delete(gone.id)
    for t in range(1, 21):  # response times 1..20 s, 10 tokens each
        await cm.add_message(conv.id, "user", f"q{t}")
        await cm.add_message(
            conv.id,
            "assistant",
            f"a{t}",
            metadata={"stats": {"total_time": float(t), "completion_tokens": 10}},
        )
    for code in ("CHAT_004", "CHAT_004", "CHAT_001"):
        await cm.add_message(
            conv.id,
            "assistant",
            "",
            status="error",
            metadata={"error_code": code, "stats": {"total_time": 99.0, "completion_tokens": 1}},
        )
    await cm.add_message(conv.id, "assistant", "half", status="incomplete")
    # Cut off mid-stream by the model's server: incomplete, and a failure of its code.
    await cm.add_message(
        conv.id, "assistant", "cut", status="incomplete", metadata={"error_code": "CHAT_004"}
    )
    stats = await cm.statistics()
    assert stats["conversations"] == {
        "total": 3,
        "by_status": {"active": 1, "archived": 1, "deleted": 1},
    }
    assert stats["messages"]["total"] == 45
    assert stats["messages"]["by_role"] == {"user": 20, "assistant": 25}
    assert stats["messages"]["by_status"] == {"complete": 40, "error": 3, "incomplete": 2}
    # Only complete answers count towards response time.
    assert stats["response_time"]["count"] == 20
    assert stats["response_time"]["mean_seconds"] == pytest.approx(10.5)
    assert stats["response_time"]["p95_seconds"] == pytest.approx(19.0)
    assert stats["tokens_generated"] == 20 * 10 + 3
    assert stats["errors_by_code"] == {"CHAT_004": 3, "CHAT_001": 1}


async def test_statistics_empty(cm: ConversationManager) -> None:
    stats = await cm.statistics()
    assert stats["messages"]["total"] == 0
    assert stats["response_time"] == {"count": 0, "mean_seconds": None, "p95_seconds": None}
    assert stats["tokens_generated"] == 0 and stats["errors_by_code"] == {}


# --- turns -------------------------------------------------------------------------------
async def test_start_turn_creates_conversation_question_and_placeholder(
    cm: ConversationManager,
) -> None:
    turn = await cm.start_turn(None, "  What does chlorophyll absorb?  ", history_limit=10)
    assert turn.history == []
    assert turn.conversation.title == "What does chlorophyll absorb?"
    assert turn.conversation.message_count == 2
    assert (turn.user.seq, turn.user.role, turn.user.status) == (1, "user", "complete")
    assert turn.user.content == "What does chlorophyll absorb?"
    assert (turn.assistant.seq, turn.assistant.role) == (2, "assistant")
    assert (turn.assistant.content, turn.assistant.status) == ("", "incomplete")
    stored = await cm.get(turn.conversation.id)
    assert stored.message_count == 2 and stored.last_message_at is not None
    page = await cm.list_messages(turn.conversation.id)
    assert [m.id for m in page.items] == [turn.user.id, turn.assistant.id]


async def test_start_turn_continues_with_history_before_the_question(
    cm: ConversationManager,
) -> None:
    conv = await cm.create()
    await _fill(cm, conv.id, 4)
    turn = await cm.start_turn(
        conv.id, "And then?", history_limit=3, answer_metadata={"template": "RAG_BASIC"}
    )
    assert [m.content for m in turn.history] == ["message 2", "message 3", "message 4"]
    assert (turn.user.seq, turn.assistant.seq) == (5, 6)
    assert turn.assistant.metadata == {"template": "RAG_BASIC"}
    assert turn.conversation.message_count == 6
    # The first question named it; a later one does not rename it.
    assert turn.conversation.title == "message 1"
    fresh = await cm.create()
    named = await cm.start_turn(fresh.id, "Why is the sky blue?", history_limit=3)
    assert named.conversation.title == "Why is the sky blue?"


async def test_start_turn_on_missing_or_deleted_conversation_stores_nothing(
    cm: ConversationManager,
) -> None:
    with pytest.raises(ConversationNotFound):
        await cm.start_turn("missing", "Hello?", history_limit=5)
    conv = await cm.create()
    await cm.soft_delete(conv.id)
    with pytest.raises(ConversationNotFound):
        await cm.start_turn(conv.id, "Hello?", history_limit=5)
    deleted = await cm.get(conv.id, include_deleted=True)
    assert deleted.message_count == 0
    with pytest.raises(InvalidChatRequest):
        await cm.start_turn(None, "   ", history_limit=5)
    assert (await cm.list()).total == 0


async def test_concurrent_turns_get_distinct_pairs_of_seqs(cm: ConversationManager) -> None:
    conv = await cm.create()
    turns = await asyncio.gather(
        *(cm.start_turn(conv.id, f"q{n}", history_limit=2) for n in range(8))
    )
    pairs = sorted((t.user.seq, t.assistant.seq) for t in turns)
    assert pairs == [(2 * i + 1, 2 * i + 2) for i in range(8)]
    assert (await cm.get(conv.id)).message_count == 16


async def test_seqs_are_never_reused_after_cleanup_drops_the_newest(
    cm: ConversationManager,
) -> None:
    turn = await cm.start_turn(None, "First question?", history_limit=5)
    cid = turn.conversation.id
    assert (turn.user.seq, turn.assistant.seq) == (1, 2)
    # The unfinished answer is the newest message; cleanup removes it.
    await cm.cleanup(cid, drop_incomplete=True)
    page = await cm.list_messages(cid)
    assert [m.seq for m in page.items] == [1]
    # A client paging with after_seq=2 must still see what comes next.
    nxt = await cm.add_message(cid, "user", "Second question?")
    assert nxt.seq == 3
    turn2 = await cm.start_turn(cid, "Third?", history_limit=5)
    assert (turn2.user.seq, turn2.assistant.seq) == (4, 5)
    after = await cm.list_messages(cid, after_seq=2)
    assert [m.seq for m in after.items] == [3, 4, 5]


async def test_migration_backfills_last_seq_from_existing_messages(tmp_path) -> None:
    """A database made before 0002 keeps counting from its highest stored seq."""
    from alembic import command
    from alembic.config import Config

    from studyrag.db.session import MIGRATIONS_DIR

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")

    def upgrade_to(revision: str):
        def run(conn) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

        return run

    async with db.engine.begin() as conn:
        await conn.run_sync(upgrade_to("0001"))
        await conn.exec_driver_sql(
            "INSERT INTO conversations (id, title, status, metadata, message_count, "
            "created_at, updated_at) VALUES ('c1', 't', 'active', '{}', 2, "
            "'2026-01-01', '2026-01-01')"
        )
        for seq in (1, 7):
            await conn.exec_driver_sql(
                "INSERT INTO messages (id, conversation_id, seq, role, content, sources, "
                f"metadata, status, created_at) VALUES ('m{seq}', 'c1', {seq}, 'user', 'q', "
                "'[]', '{}', 'complete', '2026-01-01')"
            )
    await db.migrate()
    cm = ConversationManager(db)
    assert (await cm.add_message("c1", "user", "next")).seq == 8
    await db.aclose()
