"""A reference of a model's inputs kept as counts, never as raw rows, and the drift of live inputs from it.

Per feature, a reference is either numeric (``BINS`` bins between the reference's quantiles,
open at both ends, with how many reference values fell in each) or categorical (an integer
feature with at most ``MAX_CATEGORIES`` distinct values: the count of each, and one more bin for
anything else). Live values are counted into the same bins, so comparing them needs only the
two count vectors:

- PSI, the population stability index: sum of (a - e) * ln(a / e) over bins of proportions,
  empty bins smoothed by ``EPSILON``. Read as < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.
- Jensen-Shannon distance (base 2, from 0 for equal to 1 for disjoint), for categories too.

Verdicts are size-aware. With fewer than ``MIN_COUNT`` live values any distance is noise and the
answer is "insufficient", never an alarm. Above that, two samples of one distribution still differ
by chance: their PSI is on average about (bins - 1) * (1/n + 1/m) for n live and m reference
values (0.018 for 10 bins and 1,000 of each, 0.1 for 100 live ones). A verdict compares the PSI
less that expected noise with the thresholds, so a small window does not alarm on its own
sampling error and a large one still sees a small real shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 10
MAX_CATEGORIES = 20
MIN_COUNT = 100
EPSILON = 1e-4
WARN, ALERT = 0.1, 0.25  # PSI thresholds (the server's defaults)


@dataclass(frozen=True)
class FeatureSketch:
    """One feature of a reference: its bins and how many reference values fell in each."""

    name: str
    kind: str  # "numeric" or "categorical"
    edges: tuple[float, ...]  # numeric: the inner bin edges, ascending; bin i is (edges[i-1], edges[i]]
    categories: tuple[float, ...]  # categorical: the values seen; the last bin counts any other
    counts: tuple[int, ...]

    def count(self, values: np.ndarray) -> np.ndarray:
        """Count ``values`` (non-finite ones left out) into this feature's bins."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if self.kind == "numeric":
            return np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=len(self.edges) + 1)
        index = {value: i for i, value in enumerate(self.categories)}
        other = len(self.categories)
        return np.bincount([index.get(float(v), other) for v in values], minlength=other + 1)

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "edges": list(self.edges), "categories": list(self.categories),
                "counts": list(self.counts)}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> FeatureSketch:
        return cls(str(document["name"]), str(document["kind"]), tuple(map(float, document["edges"])),
                   tuple(map(float, document["categories"])), tuple(map(int, document["counts"])))


def build(rows: np.ndarray, names: list[str]) -> list[FeatureSketch]:
    """Sketch each column of ``rows`` ([samples, features]) as its feature's reference."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(names):
        raise ValueError(f"the reference must be a table of {len(names)} columns, got shape {list(rows.shape)}")
    return [_feature(name, rows[:, i]) for i, name in enumerate(names)]


def _feature(name: str, column: np.ndarray) -> FeatureSketch:
    column = column[np.isfinite(column)]
    distinct = np.unique(column)
    if len(distinct) <= MAX_CATEGORIES and np.all(distinct == np.round(distinct)):
        sketch = FeatureSketch(name, "categorical", (), tuple(float(v) for v in distinct), ())
    else:
        inner = np.quantile(column, np.linspace(0, 1, BINS + 1)[1:-1]) if len(column) else np.zeros(0)
        sketch = FeatureSketch(name, "numeric", tuple(float(v) for v in np.unique(inner)), (), ())
    return FeatureSketch(sketch.name, sketch.kind, sketch.edges, sketch.categories, tuple(int(c) for c in sketch.count(column)))


def _proportions(counts: np.ndarray | tuple[int, ...]) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total else counts


def psi(expected: np.ndarray | tuple[int, ...], actual: np.ndarray | tuple[int, ...]) -> float:
    """The population stability index of ``actual`` counts against ``expected`` counts (same bins)."""
    e = np.maximum(_proportions(expected), EPSILON)
    a = np.maximum(_proportions(actual), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon(expected: np.ndarray | tuple[int, ...], actual: np.ndarray | tuple[int, ...]) -> float:
    """The Jensen-Shannon distance (base 2) between two count vectors over the same bins: 0 equal, 1 disjoint."""
    p, q = _proportions(expected), _proportions(actual)
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def noise(bins: int, live: int, reference: int) -> float:
    """The PSI two samples of one distribution show on average: (bins - 1) * (1/live + 1/reference)."""
    if live <= 0 or reference <= 0:
        return 0.0
    return (bins - 1) * (1 / live + 1 / reference)


def verdict(score: float, count: int, warn: float = WARN, alert: float = ALERT, min_count: int = MIN_COUNT,
            expected_noise: float = 0.0) -> str:
    """Read a PSI: "insufficient" below ``min_count`` live values, else "ok", "warn" or "alert" for the
    score less ``expected_noise`` (see :func:`noise`)."""
    if count < min_count:
        return "insufficient"
    score -= expected_noise
    if score >= alert:
        return "alert"
    return "warn" if score >= warn else "ok"


def drift(sketch: FeatureSketch, live: np.ndarray | tuple[int, ...]) -> dict[str, float]:
    """The drift of ``live`` counts (in ``sketch``'s bins) from the reference, by method: PSI and
    Jensen-Shannon, for numeric bins and for categories alike."""
    return {"psi": psi(sketch.counts, live), "js": jensen_shannon(sketch.counts, live)}
