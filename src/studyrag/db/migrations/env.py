"""Alembic environment: runs on the connection handed over by Database.migrate()."""

from alembic import context

from studyrag.db.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through studyrag (Database.migrate), not the alembic CLI.")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
