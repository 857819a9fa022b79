"""Page tokens: opaque, signed by the service that issues them, so that a token it never
issued is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac

from csbs.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# The most bytes of records a page of a list whose records grow (a policy's runs) holds: half
# gRPC's 8 MiB message cap, so that a page stops by size well before the cap (issue 12).
PAGE_BYTES = 4 << 20


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {requested} is over the limit of {MAX_PAGE_SIZE}")
    return requested


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]

    def issue(self, scope: str, after_seq: int) -> str:
        body = f"{scope}\x00{after_seq}".encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode()

    def open(self, scope: str, token: str) -> int:
        """The sequence number to continue after; 0 for the first page."""
        if not token:
            return 0
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
            mac, body = raw[:16], raw[16:]
            if not hmac.compare_digest(mac, self._mac(body)):
                raise ValueError
            token_scope, _, seq = body.decode().partition("\x00")
            if token_scope != scope:
                raise ValueError
            return int(seq)
        except (ValueError, UnicodeError) as exc:
            raise InvalidArgument(
                "page_token was not issued by this service for this list and these filters"
            ) from exc
