"""Validation of user-given names, descriptions and request IDs (spec P1, P2)."""

from __future__ import annotations

import re

from csbs.errors import DescriptionTooLong, InvalidArgument, InvalidName

MAX_NAME_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 255
MAX_REQUEST_ID_LENGTH = 64

# P1: CJK Unified Ideographs U+4E00-U+9FFF, ASCII letters and digits, "_" and "-". Spelled out
# because \w and \d match far more than the rule allows.
_NAME = re.compile(r"[\u4e00-\u9fffA-Za-z0-9_-]+", re.ASCII)
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def validate_name(value: str, field: str = "name") -> str:
    """Checks a name against P1; returns it unchanged."""
    if not value or len(value) > MAX_NAME_LENGTH or _NAME.fullmatch(value) is None:
        raise InvalidName(field, value, MAX_NAME_LENGTH)
    return value


def validate_description(value: str, field: str = "description") -> str:
    """Checks a description against P2."""
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise DescriptionTooLong(field, len(value), MAX_DESCRIPTION_LENGTH)
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
