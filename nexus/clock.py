"""Timestamps as the API writes them: RFC 3339, UTC, milliseconds, a ``Z``."""

from __future__ import annotations

import time

_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(timestamp: float) -> str:
    """Format a Unix time as RFC 3339 UTC with milliseconds and a ``Z`` (the second's text is cached)."""
    global _second_text
    second = int(timestamp)
    cached_second, text = _second_text
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}.{int((timestamp - second) * 1000):03d}Z"


def utc_now() -> str:
    """Return the current time as RFC 3339 UTC with milliseconds and a ``Z``."""
    return rfc3339(time.time())
