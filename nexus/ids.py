"""Request ids: what a client may send, and the time-ordered ones the server makes."""

from __future__ import annotations

import os
import re
import time

REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"
_VALID_REQUEST_ID = re.compile(REQUEST_ID_PATTERN).fullmatch


def new_request_id() -> str:
    """Return a new UUIDv7 as text (RFC 9562): the time in milliseconds, then random bits.

    Time-ordered ids keep the records' index compact, and tell a label for a prediction older
    than the retention (``expired``) from one for an id never seen (``unknown``).
    """
    ms = time.time_ns() // 1_000_000
    r = os.urandom(10).hex()  # 74 random bits are used of these 80
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{r[:3]}-{_VARIANT[r[3]]}{r[4:7]}-{r[7:19]}"  # version 7, variant 10xx


_VARIANT = {f"{n:x}": "89ab"[n & 3] for n in range(16)}


def request_id_time(request_id: str) -> float | None:
    """The time (seconds since the epoch) a UUIDv7 request id was made, or None for any other id."""
    if len(request_id) != 36 or request_id[14] != "7" or request_id[8] != "-" or request_id[13] != "-":
        return None
    try:
        return int(request_id[:8] + request_id[9:13], 16) / 1000
    except ValueError:
        return None


def valid_request_id(value: object) -> bool:
    """Tell whether ``value`` may be used as a request id (1-128 chars of ``[A-Za-z0-9._:-]``)."""
    return isinstance(value, str) and _VALID_REQUEST_ID(value) is not None
