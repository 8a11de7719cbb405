"""Who may write: operators from a users file (argon2 hashes) or one shared token, and their sessions.

Sessions live in this process's memory (a restart logs everyone out, which a console can
afford); the cookie holds only a random id. Every session, logged in or not, has its own CSRF
token, which each POST form carries back.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: An operator's name as recorded with an acknowledgement or a redrive.
USER_NAME: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
#: Sessions kept at most; the oldest go first (a flood of anonymous visits cannot grow memory).
MAX_SESSIONS: Final = 10_000

_hasher = PasswordHasher()


class UsersFileError(ValueError):
    """A users file that cannot be read; the message names the line."""


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``, for a line ``name:hash`` of the users file."""
    return _hasher.hash(password)


def parse_users(text: str, *, source: str = "<users>") -> dict[str, str]:
    """``name:argon2-hash`` per line; blank lines and ``#`` comments skipped.

    >>> parse_users("# operators\\nana:$argon2id$v=19$x\\n")
    {'ana': '$argon2id$v=19$x'}
    """
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not USER_NAME.match(name) or not hashed.startswith("$argon2"):
            raise UsersFileError(
                f"{source}:{number}: expected `name:$argon2...` (a name of letters, digits, ._@-)"
            )
        users[name] = hashed
    return users


def load_users(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        return parse_users(path.read_text(encoding="utf-8"), source=str(path))
    except OSError as exc:
        raise UsersFileError(f"cannot read the users file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Credentials:
    """What may log in: the users file's hashes and the shared token (either may be empty)."""

    users: dict[str, str]
    token: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.users) or bool(self.token)

    def check(self, name: str, password: str) -> str | None:
        """The operator's name if ``password`` is theirs (or the token), else None."""
        if not USER_NAME.match(name) or not password:
            return None
        hashed = self.users.get(name)
        if hashed is not None:
            try:
                return name if _hasher.verify(hashed, password) else None
            except (VerificationError, InvalidHashError):
                return None
        if self.token and hmac.compare_digest(password.encode(), self.token.encode()):
            return name
        return None


@dataclass
class Session:
    session_id: str
    csrf: str
    expires: float
    user: str | None = None
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Sessions by their cookie id, each for ``lifetime`` seconds.

    Anonymous ones (every visitor gets one, for its CSRF token) are capped at :data:`MAX_SESSIONS`,
    oldest dropped first; logged-in ones are kept apart, so a flood of cookie-less requests cannot
    push an operator out.
    """

    def __init__(self, *, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime = lifetime
        self._clock = clock
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._operators: dict[str, Session] = {}

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._operators.get(session_id) or self._anonymous.get(session_id)
        if session is None:
            return None
        if session.expires < self._clock():
            self.logout(session)
            return None
        return session

    def new(self) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self._clock() + self._lifetime,
        )
        self._anonymous[session.session_id] = session
        while len(self._anonymous) > MAX_SESSIONS:
            self._anonymous.popitem(last=False)
        return session

    def login(self, old: Session, user: str) -> Session:
        """A fresh session (new id and CSRF token) for ``user``: the id seen before login is dropped."""
        self.logout(old)
        session = Session(
            session_id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self._clock() + self._lifetime,
            user=user,
        )
        now = self._clock()
        for expired in [s for s in self._operators.values() if s.expires < now]:
            self.logout(expired)
        self._operators[session.session_id] = session
        return session

    def logout(self, session: Session) -> None:
        self._anonymous.pop(session.session_id, None)
        self._operators.pop(session.session_id, None)
