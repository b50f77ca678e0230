"""Passwords: argon2id (argon2-cffi's defaults, RFC 9106's second recommendation).

Hashing takes tens of milliseconds of CPU and memory on purpose: it runs in a worker thread.
"""

from __future__ import annotations

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from studyrag.errors import InvalidAuthRequest

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024

_hasher = PasswordHasher()
# Verified against when a user name is unknown, so a wrong name costs as much as a wrong
# password and timing does not tell which names exist.
_DUMMY = _hasher.hash("studyrag-no-such-user")


def check_new_password(password: str) -> str:
    """The password, or InvalidAuthRequest when it is too short or too long."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidAuthRequest(
            f"A password needs at least {MIN_PASSWORD_CHARS} characters.",
            hint="Choose a longer password (a few words work well).",
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidAuthRequest(f"A password has at most {MAX_PASSWORD_CHARS} characters.")
    return password


async def hash_password(password: str) -> str:
    """The argon2id hash of a checked password."""
    check_new_password(password)
    return await anyio.to_thread.run_sync(_hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return (
            _hasher.verify(stored or _DUMMY, password[:MAX_PASSWORD_CHARS]) and stored is not None
        )
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored` (None: no password set; checked against a dummy)."""
    return await anyio.to_thread.run_sync(_verify, stored, password)
