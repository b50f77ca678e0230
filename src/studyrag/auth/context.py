"""Who is acting: the user a request was authenticated as, for rows it creates.

Set by the access policy (auth/policy.py) for the request's task; notebooks, conversations
and jobs created while it runs are stamped with it (`acting_owner`). Unset (None) is the
local owner: the CLI, local mode, and work the server does by itself.
"""

from __future__ import annotations

from contextvars import ContextVar

acting_user: ContextVar[str | None] = ContextVar("acting_user", default=None)


def acting_owner() -> str | None:
    """The owner id to give a row created now."""
    return acting_user.get()
