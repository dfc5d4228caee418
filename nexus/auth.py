"""The API token: who may write (upload, delete, route, load, unload) and, when asked, read and predict.

Protocol-neutral: REST passes the ``Authorization`` header, gRPC the ``authorization`` metadata.
"""

from __future__ import annotations

import hmac

from nexus.config import Settings
from nexus.errors import Unauthorized


def check_token(settings: Settings, authorization: str | None) -> None:
    """Raise Unauthorized unless ``authorization`` is ``Bearer <the configured token>`` (if one is set)."""
    token = settings.api_token
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized()


def check_predict_token(settings: Settings, authorization: str | None) -> None:
    """Apply the token to reads and predictions too when NEXUS_PROTECT_PREDICT is on."""
    if settings.protect_predict:
        check_token(settings, authorization)
