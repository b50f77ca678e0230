"""Conversations count their message seqs, so a seq is never given out twice.

Revision ID: 0002

Message seqs were max(seq) + 1: after cleanup deleted a conversation's newest messages, the
next message reused a seq a client may already hold as a pagination cursor.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    )
    op.execute(
        "UPDATE conversations SET last_seq = COALESCE("
        "(SELECT max(m.seq) FROM messages m WHERE m.conversation_id = conversations.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("last_seq")
