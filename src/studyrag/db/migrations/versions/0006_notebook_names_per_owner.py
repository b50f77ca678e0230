"""Notebook names are unique per owner instead of per server.

Revision ID: 0006

Two users may both have a "Biology 101"; one user still cannot have two (NB_002). The
unique constraint on `notebooks.name_key` (0003) becomes a unique index on
(coalesce(owner_id, ''), name_key): NULL is the local owner, and NULLs would not collide
in a plain two-column index, on SQLite or PostgreSQL. Existing names were unique per
server, so they are unique per owner: no row changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OWNER_NAME = "uq_notebooks_owner_name"
NAME_INDEX = "ix_notebooks_name_key"
# The name 0003's inline `unique=True` got: PostgreSQL's default; SQLite's, once the batch
# below reflects it under this naming convention.
SQLITE_UNIQUE = "uq_notebooks_name_key"


def _name_unique() -> str | None:
    for found in sa.inspect(op.get_bind()).get_unique_constraints("notebooks"):
        if found["column_names"] == ["name_key"]:
            return found["name"] or SQLITE_UNIQUE
    return None


def upgrade() -> None:
    name = _name_unique()
    if name is not None:
        if op.get_bind().dialect.name == "sqlite":
            # SQLite cannot drop a constraint: the batch copies the table without it.
            with op.batch_alter_table(
                "notebooks", naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"}
            ) as batch:
                batch.drop_constraint(name, type_="unique")
        else:
            op.drop_constraint(name, "notebooks", type_="unique")
    op.create_index(NAME_INDEX, "notebooks", ["name_key"])
    op.create_index(
        OWNER_NAME, "notebooks", [sa.text("coalesce(owner_id, '')"), "name_key"], unique=True
    )


def downgrade() -> None:
    """Fails (IntegrityError) while two owners have notebooks of the same name: rename one."""
    op.drop_index(OWNER_NAME, "notebooks")
    op.drop_index(NAME_INDEX, "notebooks")
    with op.batch_alter_table("notebooks") as batch:
        batch.create_unique_constraint(SQLITE_UNIQUE, ["name_key"])
