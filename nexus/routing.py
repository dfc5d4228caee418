"""Which version of a model answers a request: the one place that decides it.

A model's routing is a small document (``{"default": "v1", "canary": {"v2": 10}, "shadow":
{"v3": 100}}``, weights in percent) that the store keeps next to its versions. This module
checks such a document against the versions that exist and turns it into a :class:`Plan`, which
answers each request in microseconds without I/O:

- a request that pins a version gets that version;
- a request with a routing key lands in one of ``BUCKETS`` buckets by a hash of the key, the
  same in every worker and replica, so the same key always gets the same version under a
  given routing; a request without one gets a random bucket;
- the canaries own the first buckets in the order of their names, the default the rest;
- each shadow version gets a copy of that share of the routed requests (by a second hash of
  the key, independent of the first), unless it is the version that answered.

With no routing document, or one without ``default``, the newest version uploaded answers.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus.errors import BadInput

BUCKETS = 10_000  # weights resolve to 0.01 %
MAX_ROUTING_KEY = 256
_FIELDS = ("default", "canary", "shadow")


@dataclass(frozen=True)
class Routing:
    """A model's routing as its document states it; versions named by the strings uploaded."""

    default: str | None = None
    canary: Mapping[str, float] = field(default_factory=dict)
    shadow: Mapping[str, float] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"default": self.default, "canary": dict(self.canary), "shadow": dict(self.shadow)}

    def names(self, version: str) -> bool:
        """Return whether this routing itself names ``version`` (as default, canary or shadow)."""
        return version == self.default or version in self.canary or version in self.shadow


def parse(document: object, versions: Sequence[str] | None) -> Routing:
    """Return the routing ``document`` states, or raise BadInput saying what is wrong with it.

    ``versions`` are the model's versions: every version named must be one of them (None: do
    not check, for a document already stored, whose plan leaves out the versions gone since).
    """
    if not isinstance(document, dict):
        raise BadInput('routing must be a JSON object like {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 100}}')
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        raise BadInput(f"routing has unknown field(s) {', '.join(map(repr, unknown))}; its fields are {', '.join(_FIELDS)}")
    known = ", ".join(repr(v) for v in versions or ())
    default = document.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise BadInput("routing field 'default' must be a version (a string) or null for the newest")
        if versions is not None and default not in versions:
            raise BadInput(f"routing names version {default!r} as default, which does not exist; the versions are {known}")
    canary = _weights(document.get("canary"), "canary", versions, known)
    shadow = _weights(document.get("shadow"), "shadow", versions, known)
    total = sum(canary.values())
    if total > 100:
        raise BadInput(f"routing's canary weights add up to {total:g} %; at most 100 % of the traffic can go to canaries")
    for kind, weights in (("canary", canary), ("shadow", shadow)):
        if default is not None and default in weights:
            raise BadInput(f"routing names version {default!r} both as default and as {kind}")
    return Routing(default, canary, shadow)


def _weights(given: object, kind: str, versions: Sequence[str] | None, known: str) -> dict[str, float]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadInput(f"routing field '{kind}' must be an object mapping versions to percentages, like {{\"v2\": 10}}")
    weights = {}
    for version, weight in given.items():
        if versions is not None and version not in versions:
            raise BadInput(f"routing names version {version!r} as {kind}, which does not exist; the versions are {known}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
            raise BadInput(f"routing's {kind} weight of version {version!r} must be a number from 0 to 100 (percent), got {weight!r}")
        weights[version] = weight
    return weights


def pinned_and_key(version: object, key: object) -> tuple[str | None, str | None]:
    """Check a request's pinned version and routing key as a protocol received them (None: not given)."""
    if version is not None and (not isinstance(version, str) or not version):
        raise BadInput("field 'version' must be a non-empty string: the version to answer with")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise BadInput("field 'routing_key' must be a non-empty string")
        if len(key) > MAX_ROUTING_KEY:
            raise BadInput(f"the routing key is {len(key)} characters long; the limit is {MAX_ROUTING_KEY}")
    return version, key


def bucket(key: str | None, salt: bytes = b"") -> int:
    """Return the request's bucket: a hash of its routing key, or a random one without a key."""
    if key is None:
        return random.randrange(BUCKETS)
    return zlib.crc32(salt + key.encode("utf-8", "surrogatepass")) % BUCKETS


class Plan:
    """A routing resolved against the versions that exist, ready to answer requests."""

    __slots__ = ("default", "canaries", "shadows", "routing")

    def __init__(self, routing: Routing, versions: Sequence[str]) -> None:
        """``versions`` in upload order, oldest first; names the routing has that are missing are left out."""
        self.routing = routing
        self.default = routing.default if routing.default in versions else (versions[-1] if versions else None)
        upper, canaries = 0, []
        for version in sorted(routing.canary):
            if version in versions and version != self.default and routing.canary[version] > 0:
                upper = min(BUCKETS, upper + round(routing.canary[version] * BUCKETS / 100))
                canaries.append((upper, version))
        self.canaries = tuple(canaries)
        self.shadows = tuple(
            (round(weight * BUCKETS / 100), version, version.encode())
            for version, weight in sorted(routing.shadow.items()) if version in versions and weight > 0
        )

    def choose(self, key: str | None) -> str | None:
        """Return the version that answers a routed request with routing key ``key`` (None: random)."""
        if self.canaries:
            position = bucket(key)
            for upper, version in self.canaries:
                if position < upper:
                    return version
        return self.default

    def shadows_for(self, served: str, key: str | None) -> list[str]:
        """Return the shadow versions that get a copy of a request ``served`` answered."""
        if not self.shadows:
            return []
        return [version for share, version, salt in self.shadows if version != served and bucket(key, salt) < share]

    def shares(self) -> dict[str, float]:
        """Return each version's share of routed traffic in percent (shadows' copies apart)."""
        shares: dict[str, float] = {}
        lower = 0
        for upper, version in self.canaries:
            shares[version] = (upper - lower) * 100 / BUCKETS
            lower = upper
        if self.default is not None:
            shares[self.default] = (BUCKETS - lower) * 100 / BUCKETS
        return shares

    def shadow_shares(self) -> dict[str, float]:
        """Return each shadow version's percent of the routed requests it gets a copy of."""
        return {version: share * 100 / BUCKETS for share, version, _ in self.shadows}
