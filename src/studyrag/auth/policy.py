"""The access policy: who a request is (`Principal`), what each route requires (`Policy`,
declared by every HTTP and WebSocket route: tests/api/test_access_policy.py walks the route
table), and what a principal may see of notebooks, conversations, documents and jobs
(`Access`).

In local mode every request is the local owner, with every scope. In multi-user mode a
request is a user, by API key (`Authorization: Bearer`) or by session cookie; something it
may not see is answered exactly as something that does not exist (404), so ids are never
confirmed to another user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fastapi import WebSocketException
from starlette.requests import HTTPConnection

from studyrag.auth.context import acting_user
from studyrag.auth.keys import SCOPES
from studyrag.auth.sessions import COOKIE
from studyrag.errors import (
    ConversationNotFound,
    CsrfRejected,
    DocumentNotFound,
    Forbidden,
    JobNotFound,
    NotebookNotFound,
    StudyRAGError,
    Unauthorized,
)

if TYPE_CHECKING:
    from studyrag.auth.service import AuthService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.models import Notebook, User
    from studyrag.notebooks.service import NotebookService

Role = Literal["viewer", "editor", "owner"]
_RANK = {"viewer": 1, "editor": 2, "owner": 3}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Close code of a WebSocket handshake refused for its credentials (1008: policy violation);
# the handshake is answered with HTTP 403 before any frame.
WS_CLOSE_POLICY = 1008


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the local owner (user_id None), or a user by key or session."""

    user_id: str | None
    name: str
    is_admin: bool
    scopes: frozenset[str]
    via: Literal["local", "session", "key", "anonymous"]

    @property
    def is_local(self) -> bool:
        return self.via == "local"

    def has(self, scope: str) -> bool:
        """Whether the scopes cover `scope` (admin covers read and chat)."""
        return scope in self.scopes or "admin" in self.scopes

    @classmethod
    def of(cls, user: User, *, scopes: Iterable[str], via: Literal["session", "key"]) -> Principal:
        return cls(user.id, user.name, user.is_admin, frozenset(scopes), via)


LOCAL = Principal(None, "local", True, frozenset(SCOPES), "local")
ANONYMOUS = Principal(None, "anonymous", False, frozenset(), "anonymous")


class Policy:
    """A route's access rule, as a FastAPI dependency giving the route its `Principal`.

    `scope` None: any authenticated request; `admin`: an admin user with the admin scope;
    `public`: no credentials needed (health, the page, login)."""

    def __init__(
        self, name: str, *, scope: str | None = None, admin: bool = False, public: bool = False
    ) -> None:
        self.name = name
        self.scope = scope
        self.admin = admin
        self.public = public

    def __repr__(self) -> str:
        return f"Policy({self.name})"

    async def __call__(self, conn: HTTPConnection) -> Principal:
        services = getattr(conn.app.state, "services", None)
        if self.public:
            # Public routes (the page, /health) are served even by an app without services.
            local = services is None or services.auth.mode == "local"
            return LOCAL if local else ANONYMOUS
        assert services is not None, "the lifespan builds the services before any request"
        auth: AuthService = services.auth
        try:
            principal = await auth.authenticate(conn)
            self.check(principal)
        except StudyRAGError as exc:
            if conn.scope["type"] == "websocket":
                raise WebSocketException(WS_CLOSE_POLICY, exc.message[:120]) from exc
            raise
        # Rows this request creates (notebooks, conversations, jobs) are the principal's.
        acting_user.set(principal.user_id)
        return principal

    def check(self, principal: Principal) -> None:
        """AUTH_002 unless the principal's scopes and role cover this policy."""
        if self.scope is not None and not principal.has(self.scope):
            raise Forbidden(
                f"This request needs the {self.scope!r} scope, which the key does not have.",
                details={"scope": self.scope},
            )
        if self.admin and not principal.is_admin:
            raise Forbidden("Only an admin may do this.", details={"scope": "admin"})


# Every route declares one of these (api/routes/*); see docs/operations.md.
PUBLIC = Policy("public", public=True)
SIGNED_IN = Policy("signed-in")
READ = Policy("read", scope="read")
CHAT = Policy("chat", scope="chat")
# Changes to the library (notebooks, uploads, shares, jobs): the admin scope of a key, which
# for a non-admin user covers only what that user owns or may edit.
WRITE = Policy("write", scope="admin")
ADMIN = Policy("admin", scope="admin", admin=True)


async def authenticate(auth: AuthService, conn: HTTPConnection) -> Principal:
    """The principal of a request in multi-user mode: its key, else its session cookie."""
    header = conn.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Send the API key as `Authorization: Bearer <key>`.")
        user, scopes = await auth.keys.verify(token.strip())
        return Principal.of(user, scopes=scopes, via="key")
    token = conn.cookies.get(COOKIE, "")
    if not token:
        raise Unauthorized("This server needs you to log in.")
    user = await auth.sessions.user(token)
    check_csrf(conn)
    return Principal.of(user, scopes=list(SCOPES), via="session")


def check_csrf(conn: HTTPConnection) -> None:
    """A cookie is sent by the browser whoever made the page: a change (and a WebSocket)
    made with one must prove it comes from this server's own page. HostOriginMiddleware
    already refused a foreign Origin or Sec-Fetch-Site; here one of them must be present
    (every current browser sends Origin with a POST and a WebSocket)."""
    if conn.scope["type"] == "http" and conn.scope["method"] not in UNSAFE_METHODS:
        return
    site = conn.headers.get("sec-fetch-site", "").strip().lower()
    if conn.headers.get("origin") is None and site != "same-origin":
        raise CsrfRejected("A change made with a login cookie must come from the StudyRAG page.")


class Access:
    """What a principal may see and change; local owners see everything."""

    def __init__(self, repo: AuthRepo, notebooks: NotebookService) -> None:
        self.repo = repo
        self.notebooks = notebooks

    async def role(self, principal: Principal, notebook_id: str) -> Role | None:
        """owner, editor or viewer of a notebook, or None (not visible)."""
        if principal.is_local:
            return "owner"
        found, owner = await self.repo.notebook_owner(notebook_id)
        if not found or principal.user_id is None:
            return None
        if owner == principal.user_id:
            return "owner"
        roles = await self.repo.share_roles(notebook_id, principal.user_id)
        if "editor" in roles:
            return "editor"
        return "viewer" if roles else None

    async def notebook(self, principal: Principal, notebook_id: str, need: Role = "viewer") -> str:
        """The id, if the principal holds `need` on it; else NB_001 as for a missing one.

        A user who may see a notebook but not change it gets AUTH_002 for a change."""
        role = await self.role(principal, notebook_id)
        if role is None:
            raise NotebookNotFound(f"No notebook with id {notebook_id!r}.")
        if _RANK[role] < _RANK[need]:
            raise Forbidden(
                f"This notebook is shared with you as {role}; this needs {need}.",
                details={"role": role, "needs": need},
                hint="Ask its owner to share it with you as editor.",
            )
        return notebook_id

    async def resolve_notebook(
        self, principal: Principal, ref: str | None, need: Role = "viewer"
    ) -> str:
        """The notebook a request names (name, id or id prefix), or its user's default:
        the server's default notebook for the local owner, a user's oldest own notebook
        (made for them on first use) otherwise."""
        if ref is not None and ref.strip():
            try:
                notebook_id = (await self.find_notebook(principal, ref)).id
                return await self.notebook(principal, notebook_id, need)
            except NotebookNotFound:
                raise NotebookNotFound(f"No notebook named or with id {ref!r}.") from None
        if principal.is_local or principal.user_id is None:
            return await self.notebooks.default_id()
        own = await self.repo.oldest_owned_notebook(principal.user_id)
        if own is not None:
            return own
        created = await self.notebooks.create_unique(f"{principal.name}'s notebook")
        return created.id

    async def find_notebook(self, principal: Principal, ref: str) -> Notebook:
        """The notebook `ref` names (id, name, id prefix) among those the principal sees:
        its own of that name first, then the one shared with it (NB_011 if several)."""
        return await self.notebooks.repo.find(
            ref, viewer=principal.user_id, visible=await self.visible_notebooks(principal)
        )

    async def default_notebook(self, principal: Principal) -> str | None:
        """The notebook requests naming none use, without making it: None for a user who
        owns none yet (their first such request makes `NAME's notebook`)."""
        if principal.is_local or principal.user_id is None:
            return await self.notebooks.default_id()
        return await self.repo.oldest_owned_notebook(principal.user_id)

    async def visible_notebooks(self, principal: Principal) -> set[str] | None:
        """Ids of the notebooks a principal sees (None: every one, for the local owner)."""
        if principal.is_local or principal.user_id is None:
            return None
        return await self.repo.visible_notebook_ids(principal.user_id)

    async def conversation(self, principal: Principal, conversation_id: str) -> None:
        """CHAT_005 unless the conversation is the principal's own, in a notebook it sees.

        Conversations are private: sharing a notebook never shares its conversations."""
        if principal.is_local:
            return
        found = await self.repo.conversation_owner(conversation_id)
        if (
            found is None
            or found[1] != principal.user_id
            or await self.role(principal, found[0]) is None
        ):
            raise ConversationNotFound(f"No conversation with id {conversation_id!r}.")

    async def document(self, principal: Principal, document_id: str, need: Role = "viewer") -> None:
        """DOC_003 unless the document's notebook is visible (and `need` is held)."""
        if principal.is_local:
            return
        notebook_id = await self.repo.document_notebook(document_id)
        if notebook_id is None or await self.role(principal, notebook_id) is None:
            raise DocumentNotFound(f"No document with id {document_id!r}.")
        await self.notebook(principal, notebook_id, need)

    async def job(self, principal: Principal, job_id: str) -> None:
        """JOB 404 unless the principal started the job, or owns the notebook it works on."""
        if principal.is_local:
            return
        found, owner, notebook_id = await self.repo.job_owner(job_id)
        mine = found and owner == principal.user_id
        if found and not mine and notebook_id is not None:
            mine = await self.role(principal, notebook_id) == "owner"
        if not mine:
            raise JobNotFound(f"No job with id {job_id!r}.")
