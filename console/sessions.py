"""Server-side sessions. The browser holds only an opaque random session ID (an HttpOnly,
SameSite=Strict cookie); the user's API token stays in this process's memory, with the session's
CSRF token, which every form carries and every POST is checked against. A session is dropped
after it has been idle for IDLE_SECONDS, and on logout; signing in gives a new session ID."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from console.gateway import RegionCatalog

COOKIE = "csbs_console_session"
IDLE_SECONDS = 8 * 3600.0


@dataclass
class Session:
    session_id: str
    csrf_token: str
    token: str = ""  # the user's API token; empty until signed in
    operator_token: str = ""  # the operator credential, if the user gave it: operator pages
    region_id: str = ""
    project_id: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    catalog: RegionCatalog = field(default_factory=RegionCatalog)  # the regions, a moment

    @property
    def signed_in(self) -> bool:
        return bool(self.token)

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf_token)


def _new_id() -> str:
    return secrets.token_urlsafe(32)


class SessionStore:
    """Every live session, by ID. Thread-safe: handlers run in a thread pool."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self._sessions: dict[str, Session] = {}
        self._idle = idle_seconds
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self._idle:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def new(self) -> Session:
        session = Session(session_id=_new_id(), csrf_token=_new_id())
        with self._lock:
            self._drop_idle()
            self._sessions[session.session_id] = session
        return session

    def sign_in(self, old: Session, token: str, operator_token: str = "") -> Session:
        """A new session (new ID and CSRF token) holding `token`; the old one is dropped, so
        an ID known before signing in is worth nothing after."""
        self.drop(old.session_id)
        session = self.new()
        session.token = token
        session.operator_token = operator_token
        return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for session_id in [
            s.session_id for s in self._sessions.values() if now - s.last_seen > self._idle
        ]:
            del self._sessions[session_id]
