"""Server-side sessions. The browser holds only an opaque random session ID (an HttpOnly,
SameSite=Strict cookie); the user's API token stays in this process's memory, with the session's
CSRF token, which every form carries and every POST is checked against. A session is dropped
after it has been idle for IDLE_SECONDS, and on logout; signing in gives a new session ID.

A session not signed in (the login page's) costs nothing to make, so those are bounded: idle
for SIGNED_OUT_IDLE_SECONDS they are dropped, and past MAX_SIGNED_OUT the one least recently
seen goes, so a
visitor who asks for the login page a million times cannot fill the console's memory. Signed-in
sessions are bounded by the tokens the cluster issued."""

from __future__ import annotations

import heapq
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from console.gateway import RegionCatalog

COOKIE = "csbs_console_session"
IDLE_SECONDS = 8 * 3600.0
SIGNED_OUT_IDLE_SECONDS = 3600.0
MAX_SIGNED_OUT = 10_000


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

    def idle_for(self, now: float) -> float:
        return now - self.last_seen


def _new_id() -> str:
    return secrets.token_urlsafe(32)


class SessionStore:
    """Every live session, by ID. Thread-safe: handlers run in a thread pool."""

    def __init__(
        self,
        idle_seconds: float = IDLE_SECONDS,
        signed_out_idle_seconds: float = SIGNED_OUT_IDLE_SECONDS,
        max_signed_out: int = MAX_SIGNED_OUT,
    ) -> None:
        self._sessions: dict[str, Session] = {}
        self._idle = idle_seconds
        self._signed_out_idle = signed_out_idle_seconds
        self._max_signed_out = max_signed_out
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        limit = self._idle if session.signed_in else self._signed_out_idle
        return session.idle_for(now) > limit

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def new(self) -> Session:
        session = Session(session_id=_new_id(), csrf_token=_new_id())
        with self._lock:
            self._drop_idle()
            signed_out = [s for s in self._sessions.values() if not s.signed_in]
            over = len(signed_out) - self._max_signed_out + 1
            if over > 0:  # the least recently seen go first
                for gone in heapq.nsmallest(over, signed_out, key=lambda s: s.last_seen):
                    del self._sessions[gone.session_id]
            self._sessions[session.session_id] = session
        return session

    def sign_in(self, old: Session, token: str, operator_token: str = "") -> Session:
        """A new session (new ID and CSRF token) holding `token`; the old one is dropped, so
        an ID known before signing in is worth nothing after."""
        self.drop(old.session_id)
        session = Session(session_id=_new_id(), csrf_token=_new_id())
        session.token = token
        session.operator_token = operator_token
        with self._lock:
            self._sessions[session.session_id] = session
        return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for session_id in [s.session_id for s in self._sessions.values() if self._expired(s, now)]:
            del self._sessions[session_id]
