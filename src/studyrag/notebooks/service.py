"""NotebookService: create, find, rename and list notebooks; the one place names are checked."""

from __future__ import annotations

from typing import Any

from studyrag.db.models import Notebook
from studyrag.db.notebooks import ACTIVE, NotebookRepo
from studyrag.errors import InvalidNotebook, NotebookExists
from studyrag.schemas.notebooks import DESCRIPTION_MAX, NAME_MAX, NotebookPublic


def clean_name(name: str) -> str:
    """A notebook name with its blanks folded; InvalidNotebook (NB_003) when unusable."""
    value = " ".join((name or "").split())
    if not value:
        raise InvalidNotebook("A notebook needs a name.", hint="Give a name such as 'Biology 101'.")
    if len(value) > NAME_MAX:
        raise InvalidNotebook(f"A notebook name has at most {NAME_MAX} characters.")
    return value


# How many "name (n)" variants an import tries before giving up.
_MAX_SUFFIX = 1000


class NotebookService:
    """Notebooks and the default one that everything without a notebook goes to."""

    def __init__(self, repo: NotebookRepo) -> None:
        self.repo = repo
        self._default_id: str | None = None

    async def default(self) -> Notebook:
        nb = await self.repo.ensure_default()
        self._default_id = nb.id
        return nb

    async def default_id(self) -> str:
        if self._default_id is None:
            await self.default()
        assert self._default_id is not None
        return self._default_id

    async def resolve(self, ref: str | None) -> Notebook:
        """The notebook named or identified by `ref` (name, id or id prefix); the default
        notebook when `ref` is empty. NotebookNotFound (NB_001) otherwise."""
        if ref is None or not ref.strip():
            return await self.default()
        return await self.repo.find(ref)

    async def resolve_id(self, ref: str | None) -> str:
        if ref is None or not ref.strip():
            return await self.default_id()
        return (await self.repo.find(ref)).id

    async def create(self, name: str, description: str = "") -> Notebook:
        if len(description) > DESCRIPTION_MAX:
            raise InvalidNotebook(f"A description has at most {DESCRIPTION_MAX} characters.")
        return await self.repo.create(clean_name(name), description=description)

    async def create_unique(
        self,
        name: str,
        description: str = "",
        *,
        status: str = ACTIVE,
        notebook_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Notebook:
        """Create a notebook named `name`, or `name (2)`, `name (3)`… when it is taken."""
        base = clean_name(name)
        if len(description) > DESCRIPTION_MAX:
            raise InvalidNotebook(f"A description has at most {DESCRIPTION_MAX} characters.")
        for n in range(1, _MAX_SUFFIX + 1):
            suffix = f" ({n})" if n > 1 else ""
            candidate = base[: NAME_MAX - len(suffix)].rstrip() + suffix
            try:
                return await self.repo.create(
                    candidate,
                    description=description,
                    status=status,
                    notebook_id=notebook_id,
                    meta=meta,
                )
            except NotebookExists:
                continue
        raise NotebookExists(
            f"Notebooks named {base!r} up to {base!r} ({_MAX_SUFFIX}) exist already.",
            hint="Rename or delete some of them first.",
        )

    async def update(
        self, notebook_id: str, *, name: str | None = None, description: str | None = None
    ) -> Notebook:
        await self.repo.get(notebook_id)
        fields: dict[str, str] = {}
        if name is not None:
            fields["name"] = clean_name(name)
        if description is not None:
            if len(description) > DESCRIPTION_MAX:
                raise InvalidNotebook(f"A description has at most {DESCRIPTION_MAX} characters.")
            fields["description"] = description
        if not fields:
            return await self.repo.get(notebook_id)
        return await self.repo.update(notebook_id, **fields)

    async def public(self, nb: Notebook, *, conversations_of: str | None = None) -> NotebookPublic:
        """The notebook with its counts; `conversations_of`: count only that user's
        conversations (they are private, even their number)."""
        counts = await self.repo.counts([nb.id], conversations_of=conversations_of)
        return NotebookPublic.from_row(nb, counts.get(nb.id))

    async def list_public(self, *, conversations_of: str | None = None) -> list[NotebookPublic]:
        await self.default()
        rows = await self.repo.list()
        counts = await self.repo.counts([nb.id for nb in rows], conversations_of=conversations_of)
        return [NotebookPublic.from_row(nb, counts.get(nb.id)) for nb in rows]
