"""Notebooks own documents and conversations; background jobs; ingestion steps.

Revision ID: 0003

Everything that existed before moves into one default notebook. Vectors stored before this
revision carry no notebook id in their metadata: `app_state.vectors_untagged` asks the next
start to add it (the vector store is not reachable from a migration).
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
DEFAULT_NAME = "My notebook"


def upgrade() -> None:
    op.create_table(
        "notebooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("name_key", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("notebook_id", sa.String(32)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("error", sa.Text),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS),
    )
    op.create_index("ix_jobs_notebook_id", "jobs", ["notebook_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "app_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False, server_default=""),
    )

    notebook_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    notebooks = sa.table(
        "notebooks",
        sa.column("id"),
        sa.column("name"),
        sa.column("name_key"),
        sa.column("description"),
        sa.column("is_default"),
        sa.column("status"),
        sa.column("metadata", sa.JSON),
        sa.column("created_at", TS),
        sa.column("updated_at", TS),
    )
    op.bulk_insert(
        notebooks,
        [
            {
                "id": notebook_id,
                "name": DEFAULT_NAME,
                "name_key": DEFAULT_NAME.casefold(),
                "description": "",
                "is_default": True,
                "status": "active",
                "metadata": {},
                "created_at": now,
                "updated_at": now,
            }
        ],
    )

    # Plain columns (no batch rebuild of tables the FTS index and chunks point at); the
    # application always sets them, and the backfill below fills the old rows.
    op.add_column("documents", sa.Column("notebook_id", sa.String(32)))
    op.add_column("documents", sa.Column("job_id", sa.String(32)))
    op.add_column(
        "documents", sa.Column("step", sa.String(16), nullable=False, server_default="queued")
    )
    op.add_column("documents", sa.Column("progress", sa.Float, nullable=False, server_default="0"))
    op.add_column("conversations", sa.Column("notebook_id", sa.String(32)))
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE documents SET notebook_id = :n"), {"n": notebook_id})
    bind.execute(sa.text("UPDATE conversations SET notebook_id = :n"), {"n": notebook_id})
    # Steps mirror the statuses of what is already there; "pending" is now "queued".
    bind.execute(sa.text("UPDATE documents SET status = 'queued' WHERE status = 'pending'"))
    bind.execute(
        sa.text(
            "UPDATE documents SET step = status, progress = CASE WHEN status = 'completed' "
            "THEN 100 ELSE 0 END WHERE status IN ('completed', 'failed', 'queued')"
        )
    )
    if bind.execute(sa.text("SELECT count(*) FROM documents")).scalar():
        bind.execute(
            sa.text("INSERT INTO app_state (key, value) VALUES ('vectors_untagged', :n)"),
            {"n": notebook_id},
        )
    op.create_index("ix_documents_notebook_id", "documents", ["notebook_id"])
    op.create_index("ix_documents_job_id", "documents", ["job_id"])
    op.create_index("ix_documents_notebook_sha", "documents", ["notebook_id", "sha256"])
    op.create_index("ix_documents_notebook_filename", "documents", ["notebook_id", "filename"])
    op.create_index(
        "ix_conversations_notebook", "conversations", ["notebook_id", "status", "updated_at"]
    )


def downgrade() -> None:
    for index, table in (
        ("ix_conversations_notebook", "conversations"),
        ("ix_documents_notebook_filename", "documents"),
        ("ix_documents_notebook_sha", "documents"),
        ("ix_documents_job_id", "documents"),
        ("ix_documents_notebook_id", "documents"),
    ):
        op.drop_index(index, table_name=table)
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("notebook_id")
    with op.batch_alter_table("documents") as batch:
        for column in ("progress", "step", "job_id", "notebook_id"):
            batch.drop_column(column)
    op.drop_table("app_state")
    op.drop_table("jobs")
    op.drop_table("notebooks")
