"""Validation of user-given names, descriptions and request IDs (spec P1, P2)."""

from __future__ import annotations

import re

from csbs.errors import InvalidArgument

MAX_NAME_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 255
MAX_REQUEST_ID_LENGTH = 64

# P1: CJK Unified Ideographs U+4E00-U+9FFF, ASCII letters and digits, "_" and "-". Spelled out
# because \w and \d match far more than the rule allows.
_NAME = re.compile(r"[\u4e00-\u9fffA-Za-z0-9_-]+", re.ASCII)
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def validate_name(value: str, field: str = "name") -> str:
    """Checks a name against P1; returns it unchanged."""
    if not value:
        raise InvalidArgument(f"P1: {field} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"P1: {field} has {len(value)} characters, at most {MAX_NAME_LENGTH} are allowed"
        )
    if _NAME.fullmatch(value) is None:
        raise InvalidArgument(
            f"P1: {field} {value!r} may contain only Chinese characters, English letters, "
            "digits, '_' and '-'"
        )
    return value


def validate_description(value: str, field: str = "description") -> str:
    """Checks a description against P2."""
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument(
            f"P2: {field} has {len(value)} characters, at most {MAX_DESCRIPTION_LENGTH} are allowed"
        )
    return value


def validate_request_id(value: str, field: str = "request_id") -> str:
    """Idempotency keys: empty (none) or 1-64 of [A-Za-z0-9_-]."""
    if not value:
        return value
    if len(value) > MAX_REQUEST_ID_LENGTH or _REQUEST_ID.fullmatch(value) is None:
        raise InvalidArgument(
            f"{field} must be 1 to {MAX_REQUEST_ID_LENGTH} characters of A-Z, a-z, 0-9, '_', '-'"
        )
    return value
