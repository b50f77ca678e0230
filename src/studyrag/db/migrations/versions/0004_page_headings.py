"""Chunks of paged documents carry their page's heading in their context.

Revision ID: 0004

Contexts (indexed and embedded with each chunk) now include the page's heading
(`ingest/page_headings.py`). Chunks stored before keep the old context until their document
is reindexed: `app_state.contexts_outdated` makes each start warn until `studyrag documents
reindex` (all documents) has recomputed them; no text or offset changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    stale = bind.execute(
        sa.text("SELECT count(*) FROM documents WHERE status = 'completed'")
    ).scalar()
    if stale:
        bind.execute(
            sa.text("INSERT INTO app_state (key, value) VALUES ('contexts_outdated', :n)"),
            {"n": str(stale)},
        )


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM app_state WHERE key = 'contexts_outdated'"))
