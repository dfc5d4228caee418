"""Live monitoring: each worker counts what its predictions show into a memory-mapped file of its own,
and a report merges the files of every worker of the server.

One directory per model version (named by its key and upload) under the server's runtime
directory, emptied at every start::

    <key>.<upload>/<pid>.counts   one per worker process: time slots, a ring of the last N, totals
    <key>.<upload>/classes.json   the class labels, written once by the first worker that sees them
    <key>.<upload>/collect.rows   while no reference exists: the first predictions' feature rows,
                                  appended by every worker; deleted as soon as the reference is built

A counts file holds, per time slot (``SLOTS`` slots cover the window): requests, rows and rows
binned; each feature's bin counts; the confidence histogram and its sums (or the regressor's
output sums). Then a ring of the worker's last N rows (their bins and times), and totals since
start (confidence buckets, class counts, output sums) that /metrics exports as counters. Writing
is a few array increments in shared memory, no system call; a worker that died leaves its file,
so its counts still count. Nothing here may fail a prediction: the caller catches and counts.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson

from nexus.errors import BadInput
from nexus.monitoring import reference, sketch
from nexus.monitoring.confidence import confidence
from nexus.monitoring.features import Layout, Task, layout, task_of

if TYPE_CHECKING:
    from nexus.runtime import TensorSpec
    from nexus.store import ModelStore

log = logging.getLogger(__name__)

SLOTS = 60  # the window is cut into this many slots; a slot older than the window is reused
MISSING = sketch.MAX_CATEGORIES + 1  # the bin of values that are not finite numbers
BINS = MISSING + 1  # per feature: up to MAX_CATEGORIES categories and "other", or BINS numeric bins; then missing
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MAX_CLASSES = 100  # classes past the hundredth are counted as "other"
OTHER_CLASS = "other"
ONE_ROW_FEATURES = 16  # up to this many features, one sample is counted in plain Python (faster than numpy there)
HUGE = 1e150  # output values beyond this (and NaN, infinities) are left out: their squares would overflow the sums
SMALL_OUTPUT = 64  # outputs up to this many values are summed in plain Python
REFERENCE_POLL_S = 1.0  # how often a worker without a reference looks for one
_MAGIC = 0x4E58_4D4F_4E01
_HEADER = 8  # magic, features, bins, slots, ring, confidence buckets, rows ever written to the ring, pid


@dataclass(frozen=True)
class MonitoringSettings:
    """The server's monitoring settings (NEXUS_MONITORING, NEXUS_REFERENCE_ROWS, NEXUS_DRIFT_*)."""

    enabled: bool = True
    reference_rows: int = 1000
    window_s: float = 3600
    last_n: int = 1000
    warn: float = sketch.WARN
    alert: float = sketch.ALERT
    min_count: int = sketch.MIN_COUNT

    def thresholds(self) -> dict[str, Any]:
        return {"warn": self.warn, "alert": self.alert, "min_count": self.min_count, "method": "psi",
                "window_seconds": self.window_s, "last_n": self.last_n, "reference_rows": self.reference_rows}


def _sections(features: int, ring: int) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int]], int]:
    """Where each array of a counts file starts: name -> (dtype, shape, byte offset); and the file's size."""
    shapes = [
        ("header", np.int64, (_HEADER,)),
        ("epoch", np.int64, (SLOTS,)),
        ("totals", np.int64, (SLOTS, 3)),  # requests, rows, rows binned against the reference
        ("bins", np.int64, (SLOTS, features * BINS)),
        ("confidence", np.int64, (SLOTS, len(CONFIDENCE_BUCKETS))),
        ("stats", np.float64, (SLOTS, 5)),  # values, sum, sum of squares (regressor) or of margins, min, max
        ("ring_time", np.float64, (ring,)),
        ("cum_confidence", np.int64, (len(CONFIDENCE_BUCKETS),)),
        ("cum_classes", np.int64, (MAX_CLASSES + 1,)),
        ("cum_stats", np.float64, (2,)),  # values, sum: the confidence's (classifier) or the output's (regressor)
        ("ring_bins", np.uint8, (ring, features)),
    ]
    found, offset = {}, 0
    for name, dtype, shape in shapes:
        dtype = np.dtype(dtype)
        found[name] = (dtype, shape, offset)
        offset += -(-int(np.prod(shape)) * dtype.itemsize // 8) * 8
    return found, offset


class _Counts:
    """The arrays of one counts file, over a writable map (this worker's) or bytes read (anyone's).

    Beside the numpy views (for batches and reports), ``i64``/``f64``/``u8`` view the same bytes
    as flat sequences, which the one-row path indexes (``at`` gives each section's start in
    8-byte words): an increment there costs a third of a numpy item's.
    """

    def __init__(self, buffer: Any, features: int, ring: int) -> None:
        sections, _ = _sections(features, ring)
        self.at = {}
        for name, (dtype, shape, offset) in sections.items():
            setattr(self, name, np.ndarray(shape, dtype, buffer=buffer, offset=offset))
            self.at[name] = offset // 8
        self.features, self.ring = features, ring
        self.i64 = memoryview(buffer).cast("q")
        self.f64 = memoryview(buffer).cast("d")
        self.u8 = memoryview(buffer).cast("B")

    @classmethod
    def create(cls, path: Path, features: int, ring: int) -> _Counts:
        """Map this process's counts file, made afresh (a file of an earlier process with this pid is replaced)."""
        _, size = _sections(features, ring)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        counts = cls(buffer, features, ring)
        counts.stats[:, 3], counts.stats[:, 4] = np.inf, -np.inf
        counts.epoch[:] = -1
        counts.header[:] = (_MAGIC, features, BINS, SLOTS, ring, len(CONFIDENCE_BUCKETS), 0, os.getpid())
        return counts

    @classmethod
    def read(cls, path: Path, features: int) -> _Counts | None:
        """The counts of one worker's file, or None when it is not (yet) a complete file of this layout."""
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) < _HEADER * 8:
            return None
        header = np.frombuffer(data, np.int64, _HEADER)
        ring = int(header[4])
        if header[0] != _MAGIC or header[1] != features or header[2] != BINS or ring < 0 or len(data) != _sections(features, ring)[1]:
            return None
        return cls(bytearray(data), features, ring)


class _Offsets(NamedTuple):
    """Where the one-row path writes in a counts file's flat views (in 8-byte words; ``ring_bytes`` in bytes)."""

    position: int  # rows ever written to the ring (header[6])
    ring_time: int
    ring_bytes: int
    cum_confidence: int
    cum_classes: int
    cum_stats: int


class Monitor:
    """What one worker watches of one model version: counting on the hot path, reporting on demand."""

    def __init__(self, owner: Monitoring, key: str, sha256: str, created_at: str, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], task: object) -> None:
        self.owner, self.key, self.sha256 = owner, key, sha256
        self.layout: Layout = layout(inputs)
        self.task: Task = task_of(task, outputs)
        self.directory = owner.directory / f"{key}.{_upload(sha256, created_at)}"
        self.settings = owner.settings
        self._slot_s = self.settings.window_s / SLOTS
        self._lock = owner.lock_for(self.directory)  # gRPC threads, HTTP, and a reloaded Monitor of the version share the file
        self._counts: _Counts | None = None
        self._epoch = -1
        self._slot = 0
        self._labels: list[str] | None = None
        self._sketches: list[sketch.FeatureSketch] | None = None
        self._next_look = 0.0  # when to look for a reference again (while there is none)
        self._collect_fd: int | None = None
        self._building = False
        self._offsets = np.arange(len(self.layout.features), dtype=np.int64) * BINS
        self._one_row = len(self.layout.features) <= ONE_ROW_FEATURES

    # -- the hot path ---------------------------------------------------------------------------

    def observe(self, feeds: dict[str, np.ndarray], value: Any) -> None:
        """Count one request: its inputs' features (``feeds``) and the task output's ``value``.

        One sample (the common request) takes a plain-Python path over the shared memory; a batch
        takes numpy's. Both count the same. (A Monitor lives in one process: the registry makes
        its models anew after a fork.)
        """
        now = time.time()
        with self._lock:
            counts = self._counts or self._open()
            epoch = int(now / self._slot_s)
            if epoch != self._epoch:
                self._rotate(counts, epoch)
            slot = self._slot
            i64 = counts.i64
            totals = self._at_totals
            i64[totals] += 1
            if self.layout.inputs:
                row = self.layout.row(feeds) if self._one_row else None
                rows = None if row is not None else self.layout.rows(feeds)
                n = 1 if row is not None else 0 if rows is None else len(rows)
                if n:
                    i64[totals + 1] += n
                    if self._sketches is None and now >= self._next_look:
                        self._look_for_reference(now)
                    if self._sketches is not None:
                        if row is not None:
                            self._count_one(counts, row, now)
                        else:
                            self._count(counts, slot, rows, now)  # type: ignore[arg-type]
                        i64[totals + 2] += n
                    elif self._collect_fd is not None:
                        self._collect(np.array([row], np.float64) if row is not None else rows)  # type: ignore[arg-type]
            elif value is not None:  # no watched input (text): the answer's rows are the predictions
                i64[totals + 1] += len(value) if isinstance(value, list) else (np.shape(value)[0] if np.ndim(value) else 1)
            if value is not None:
                if self.task.kind == "classifier":
                    self._confidence(counts, slot, value)
                else:
                    self._output(counts, slot, value)

    def _open(self) -> _Counts:
        counts = self._counts = self.owner.counts_file(self.directory, len(self.layout.features))
        at = counts.at
        self._at = _Offsets(at["header"] + 6, at["ring_time"], at["ring_bins"] * 8, at["cum_confidence"], at["cum_classes"],
                            at["cum_stats"])
        self._epoch = -1
        return counts

    def _rotate(self, counts: _Counts, epoch: int) -> None:
        slot = epoch % SLOTS
        if counts.epoch[slot] != epoch:
            counts.epoch[slot] = -1
            counts.totals[slot] = 0
            counts.bins[slot] = 0
            counts.confidence[slot] = 0
            counts.stats[slot] = (0, 0, 0, np.inf, -np.inf)
            counts.epoch[slot] = epoch
        self._epoch, self._slot = epoch, slot
        at = counts.at  # where this slot's sections start, for the one-row path
        self._at_totals = at["totals"] + slot * 3
        self._at_bins = at["bins"] + slot * counts.features * BINS
        self._at_confidence = at["confidence"] + slot * len(CONFIDENCE_BUCKETS)
        self._at_stats = at["stats"] + slot * 5

    def _count_one(self, counts: _Counts, row: list[float], now: float) -> None:
        i64, at = counts.i64, self._at
        base = self._at_bins
        position = i64[at.position]
        at_ring = position % counts.ring
        found = []
        for f, x in enumerate(row):
            if x - x != 0:  # NaN or infinite
                b = MISSING
            else:
                categories = self._category_index[f]
                b = bisect_left(self._edge_lists[f], x) if categories is None else categories.get(x, len(categories))
            i64[base + b] += 1
            base += BINS
            found.append(b)
        start = at.ring_bytes + at_ring * len(row)
        counts.u8[start:start + len(row)] = bytes(found)
        counts.f64[at.ring_time + at_ring] = now
        i64[at.position] = position + 1

    def _count(self, counts: _Counts, slot: int, rows: np.ndarray, now: float) -> None:
        bins = (rows[:, :, None] > self._edges).sum(axis=2)
        if self._categorical is not None:
            columns, categories, other = self._categorical
            equal = rows[:, columns, None] == categories
            bins[:, columns] = np.where(equal.any(axis=2), equal.argmax(axis=2), other)
        finite = np.isfinite(rows)
        if not finite.all():
            bins[~finite] = MISSING
        flat = bins + self._offsets
        ring = counts.ring_bins
        position = int(counts.header[6])
        if len(rows) == 1:
            counts.bins[slot, flat[0]] += 1
            ring[position % len(ring)] = bins[0]
            counts.ring_time[position % len(ring)] = now
        else:
            counts.bins[slot] += np.bincount(flat.ravel(), minlength=counts.bins.shape[1])
            at = (position + np.arange(len(rows))) % len(ring)
            ring[at] = bins
            counts.ring_time[at] = now
        counts.header[6] = position + len(rows)

    def _confidence(self, counts: _Counts, slot: int, value: Any) -> None:
        one = None
        if isinstance(value, list):
            if len(value) == 1 and isinstance(value[0], dict):
                one = list(value[0].values())
        elif isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[0] == 1 and value.dtype.kind == "f":
            one = value[0].tolist()
        if self._labels is None:
            self._labels = self._class_labels(value)
        if one is None or len(one) < 2:
            self._confidences(counts, slot, value)
            return
        top = max(one)
        best = one.index(top)  # a tie goes to the first class, as in a batch
        margin = top - (sorted(one)[-2] if len(one) > 2 else min(one))
        bucket = min(bisect_left(CONFIDENCE_BUCKETS, top), len(CONFIDENCE_BUCKETS) - 1)
        i64, at = counts.i64, self._at
        i64[self._at_confidence + bucket] += 1
        i64[at.cum_confidence + bucket] += 1
        i64[at.cum_classes + (best if best < MAX_CLASSES else MAX_CLASSES)] += 1
        self._add_stats(counts.f64, 1, top, margin, top, top)

    def _add_stats(self, f64: memoryview, n: float, total: float, second: float, low: float, high: float) -> None:
        """Add to the current slot's value statistics (count, sum, second sum, min, max) and to the totals since start."""
        stats, cum = self._at_stats, self._at.cum_stats
        f64[stats] += n
        f64[stats + 1] += total
        f64[stats + 2] += second
        if low < f64[stats + 3]:
            f64[stats + 3] = low
        if high > f64[stats + 4]:
            f64[stats + 4] = high
        f64[cum] += n
        f64[cum + 1] += total

    def _confidences(self, counts: _Counts, slot: int, value: Any) -> None:
        found = confidence(value)
        if found is None or not len(found.top):
            return
        buckets = np.minimum(np.searchsorted(CONFIDENCE_BUCKETS, found.top, side="left"), len(CONFIDENCE_BUCKETS) - 1)
        spread = np.bincount(buckets, minlength=len(CONFIDENCE_BUCKETS))
        counts.confidence[slot] += spread
        counts.cum_confidence += spread
        self._add_stats(counts.f64, len(buckets), float(found.top.sum()), float(found.margin.sum()), float(found.top.min()),
                        float(found.top.max()))
        index = {label: i for i, label in enumerate(self._labels[:MAX_CLASSES])}  # type: ignore[index]
        for label in found.classes:
            counts.cum_classes[index.get(label, MAX_CLASSES)] += 1

    def _class_labels(self, value: Any) -> list[str]:
        """The model's class labels in its order, also written for the reports of other workers."""
        labels = [str(label) for label in value[0]] if isinstance(value, list) else [str(k) for k in range(np.shape(value)[1])]
        path = self.directory / "classes.json"
        if not path.exists():
            tmp = self.directory / f".classes-{os.getpid()}.tmp"
            tmp.write_bytes(orjson.dumps(labels))
            os.replace(tmp, path)
        return labels

    def _output(self, counts: _Counts, slot: int, value: Any) -> None:
        """Count the watched output's finite values: how many, their sum, sum of squares, minimum and maximum."""
        values = np.asarray(value)
        if values.dtype.kind not in "biuf" or not values.size:
            return
        if values.size <= SMALL_OUTPUT:
            kept = [v for v in values.ravel().tolist() if -HUGE < v < HUGE]  # finite ones whose squares add up
            if not kept:
                return
            n, total, squares, low, high = len(kept), sum(kept), sum(v * v for v in kept), min(kept), max(kept)
        else:
            flat = values.astype(np.float64, copy=False).ravel()
            flat = flat[np.abs(flat) < HUGE]
            if not flat.size:
                return
            n, total, squares = flat.size, float(flat.sum()), float(np.dot(flat, flat))
            low, high = float(flat.min()), float(flat.max())
        self._add_stats(counts.f64, n, total, squares, low, high)

    # -- the reference: stored by the upload, or collected from the first predictions ---------

    def _use(self, sketches: list[sketch.FeatureSketch]) -> None:
        edges = np.full((len(sketches), sketch.BINS - 1), np.inf)
        columns, categories, other = [], [], []
        for i, feature in enumerate(sketches):
            if feature.kind == "numeric":
                edges[i, :len(feature.edges)] = feature.edges
            else:
                columns.append(i)
                categories.append(list(feature.categories) + [np.nan] * (sketch.MAX_CATEGORIES - len(feature.categories)))
                other.append(len(feature.categories))
        self._edges = edges[None, :, :]
        self._edge_lists = [list(feature.edges) if feature.kind == "numeric" else None for feature in sketches]
        self._category_index = [None if feature.kind == "numeric" else {v: i for i, v in enumerate(feature.categories)}
                                for feature in sketches]
        self._categorical = (np.array(columns), np.array(categories)[None, :, :], np.array(other)) if columns else None
        self._sketches = sketches
        if self._collect_fd is not None:
            os.close(self._collect_fd)
            self._collect_fd = None

    def _look_for_reference(self, now: float) -> None:
        self._next_look = now + REFERENCE_POLL_S
        found = reference.sketches_of(self._stored(), self.layout, self.sha256)
        if found is not None:
            self._use(found)
        elif self._collect_fd is None and not self._building:
            path = self.directory / "collect.rows"
            self._collect_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _stored(self) -> dict[str, Any] | None:
        try:
            return self.owner.store.read_reference(self.key)
        except (OSError, ValueError):
            return None

    def _collect(self, rows: np.ndarray) -> None:
        """Append the feature rows of a prediction until the server has ``reference_rows`` of them, then build."""
        fd = self._collect_fd
        wanted = self.settings.reference_rows * rows.shape[1] * 8
        if os.fstat(fd).st_size >= wanted:
            self._start_build()
            return
        os.write(fd, np.ascontiguousarray(rows, dtype=np.float64).tobytes())
        if os.fstat(fd).st_size >= wanted:
            self._start_build()

    def _start_build(self) -> None:
        os.close(self._collect_fd)  # type: ignore[arg-type]
        self._collect_fd = None
        self._building = True
        threading.Thread(target=self._build, name="nexus-reference", daemon=True).start()

    def _build(self) -> None:
        """Build the reference from the collected rows, in one worker of the server (the others wait for the file)."""
        lock = None
        try:
            lock = os.open(self.directory / "collect.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if reference.sketches_of(self._stored(), self.layout, self.sha256) is None:
                features = len(self.layout.features)
                data = (self.directory / "collect.rows").read_bytes()
                rows = np.frombuffer(data, np.float64, len(data) // 8 // features * features).reshape(-1, features)
                rows = rows[: self.settings.reference_rows]
                if len(rows) >= self.settings.reference_rows:
                    document = reference.from_rows(rows, self.layout, self.sha256)
                    usable = lambda stored: reference.sketches_of(stored, self.layout, self.sha256) is not None  # noqa: E731
                    if self.owner.store.add_reference(self.key, self.sha256, document, usable):
                        log.info("reference collected", extra={"model_key": self.key, "rows": len(rows)})
            (self.directory / "collect.rows").unlink(missing_ok=True)
        except BlockingIOError:
            pass  # another worker builds it
        except Exception:
            log.exception("building a reference failed", extra={"model_key": self.key})
        finally:
            if lock is not None:
                os.close(lock)
            self._building = False
            self._next_look = 0.0

    # -- reports ---------------------------------------------------------------------------------

    def merged(self, now: float | None = None) -> Merged:
        """The counts of every worker of this server, for the window, the last N rows and since start."""
        now = time.time() if now is None else now
        features = len(self.layout.features)
        merged = Merged(features)
        current = int(now / self._slot_s)
        times, rings = [], []
        for path in sorted(self.directory.glob("*.counts")) if self.directory.is_dir() else ():
            counts = _Counts.read(path, features)
            if counts is None:
                continue
            live = (counts.epoch > current - SLOTS) & (counts.epoch <= current)
            merged.totals += counts.totals[live].sum(axis=0)
            merged.bins += counts.bins[live].sum(axis=0).reshape(features, BINS)
            merged.confidence += counts.confidence[live].sum(axis=0)
            stats = counts.stats[live]
            merged.stats[:3] += stats[:, :3].sum(axis=0)
            if len(stats):
                merged.stats[3] = min(merged.stats[3], stats[:, 3].min())
                merged.stats[4] = max(merged.stats[4], stats[:, 4].max())
            merged.cum_confidence += counts.cum_confidence
            merged.cum_classes += counts.cum_classes
            merged.cum_stats += counts.cum_stats
            written = min(int(counts.header[6]), len(counts.ring_time))
            times.append(counts.ring_time[:written])
            rings.append(counts.ring_bins[:written])
        if times:
            times_all, rings_all = np.concatenate(times), np.concatenate(rings)
            newest = np.argsort(times_all, kind="stable")[-self.settings.last_n:]
            merged.last_n_rows = len(newest)
            flat = (rings_all[newest].astype(np.int64) + self._offsets).ravel()
            merged.last_n = np.bincount(flat, minlength=features * BINS).reshape(features, BINS)
        merged.labels = self._stored_labels()
        return merged

    def _stored_labels(self) -> list[str] | None:
        if self._labels is not None:
            return self._labels
        try:
            return [str(label) for label in orjson.loads((self.directory / "classes.json").read_bytes())]
        except (OSError, orjson.JSONDecodeError, TypeError):
            return None

    def collecting(self) -> int:
        """Rows collected so far for a reference (all workers)."""
        try:
            size = (self.directory / "collect.rows").stat().st_size
        except OSError:
            return 0
        return min(self.settings.reference_rows, size // 8 // max(1, len(self.layout.features)))

    def report(self, now: float | None = None) -> dict[str, Any]:
        """The version's monitoring as ``GET /models/<id>/monitoring`` shows it."""
        self._refresh_reference()
        stored = self._stored() if self._sketches is not None else None
        merged = self.merged(now)
        settings = self.settings
        requests, rows, binned = (int(v) for v in merged.totals)
        body: dict[str, Any] = {
            "task": self.task.document(),
            "reference": {
                "source": stored.get("source") if stored else None,
                "rows": stored.get("rows") if stored else None,
                "created_at": stored.get("created_at") if stored else None,
                "file": stored.get("file") if stored else None,
                "features": [s.name for s in self._sketches] if self._sketches else list(self.layout.features),
                "collecting": None if self._sketches is not None or not self.layout.inputs
                else {"rows": self.collecting(), "target": settings.reference_rows},
            },
            "windows": {"window": {"seconds": settings.window_s, "requests": requests, "predictions": rows},
                        "last_n": {"size": settings.last_n, "predictions": merged.last_n_rows}},
            "confidence": None,
            "classes": merged.classes(),
            "output": None,
        }
        n = merged.stats[0]
        if self.task.kind == "classifier":
            body["confidence"] = {
                "count": int(n), "mean": merged.stats[1] / n if n else None, "mean_margin": merged.stats[2] / n if n else None,
                "min": merged.stats[3] if n else None, "max": merged.stats[4] if n else None,
                "buckets": list(CONFIDENCE_BUCKETS), "counts": [int(c) for c in merged.confidence],
            }
        elif self.task.output is not None:
            mean = merged.stats[1] / n if n else None
            body["output"] = {
                "name": self.task.output, "count": int(n), "mean": mean,
                "std": float(np.sqrt(max(0.0, merged.stats[2] / n - mean * mean))) if n else None,
                "min": merged.stats[3] if n else None, "max": merged.stats[4] if n else None,
            }
        body["drift"] = self.drift(merged, binned)
        return body

    def series(self, now: float | None = None) -> dict[str, Any]:
        """What /metrics shows of the version: totals since start, the window's drift and the worst verdict."""
        self._refresh_reference()
        merged = self.merged(now)
        found: dict[str, Any] = {"confidence": None, "output": None, "drift": [], "status": None}
        if self.task.kind == "classifier":
            found["confidence"] = {"buckets": CONFIDENCE_BUCKETS, "counts": [int(c) for c in merged.cum_confidence],
                                   "sum": float(merged.cum_stats[1]), "classes": merged.classes()}
        elif self.task.output is not None:
            found["output"] = {"count": float(merged.cum_stats[0]), "sum": float(merged.cum_stats[1])}
        drift = self.drift(merged, int(merged.totals[2]))
        if drift["window"] is not None:
            for feature in drift["window"]["features"]:
                found["drift"] += [(feature["name"], method, feature[method]) for method in ("psi", "js") if feature[method] is not None]
        found["status"] = STATUS_VALUE[drift["status"]]
        return found

    def _refresh_reference(self) -> None:
        """Pick up a reference another worker stored (this one may not have predicted since)."""
        if self._sketches is None:
            found = reference.sketches_of(self._stored(), self.layout, self.sha256)
            if found is not None:
                with self._lock:
                    if self._sketches is None:
                        self._use(found)

    def drift(self, merged: Merged, binned: int) -> dict[str, Any]:
        """Drift per feature over the window and over the last N rows, with verdicts and the worst of them."""
        if self._sketches is None:
            return {"status": "no_reference", "window": None, "last_n": None}
        window = self._scores(merged.bins, binned)
        last_n = self._scores(merged.last_n, merged.last_n_rows)
        return {"status": worst(window["status"], last_n["status"]), "window": window, "last_n": last_n}

    def _scores(self, bins: np.ndarray, rows: int) -> dict[str, Any]:
        settings = self.settings
        features = []
        for sketched, counts in zip(self._sketches, bins, strict=True):  # type: ignore[arg-type]
            live = counts[: len(sketched.counts)]
            seen = int(live.sum())
            scores = sketch.drift(sketched, live) if seen else {"psi": None, "js": None}
            noise = sketch.noise(len(sketched.counts), seen, sum(sketched.counts))
            verdict = sketch.verdict(scores["psi"], seen, settings.warn, settings.alert, settings.min_count, noise) \
                if seen else "insufficient"
            features.append({"name": sketched.name, "kind": sketched.kind, "verdict": verdict, "psi": scores["psi"], "js": scores["js"],
                             "count": seen, "missing": int(counts[MISSING]), "live": [int(c) for c in live],
                             "reference": list(sketched.counts)})
        status = worst(*(f["verdict"] for f in features)) if features else "insufficient"
        return {"status": status, "rows": rows, "features": features}


def _upload(sha256: str, created_at: str) -> str:
    """A short name for one upload of a version: a re-upload under the same key starts from zero."""
    return hashlib.sha256(f"{sha256} {created_at}".encode()).hexdigest()[:12]


_ORDER = {"insufficient": 0, "ok": 1, "warn": 2, "alert": 3}
STATUS_VALUE = {"ok": 0, "insufficient": 0, "no_reference": 0, "warn": 1, "alert": 2}


def worst(*verdicts: str) -> str:
    return max(verdicts, key=_ORDER.__getitem__) if verdicts else "insufficient"


class Merged:
    """The counts of all workers of one model version."""

    def __init__(self, features: int) -> None:
        self.totals = np.zeros(3, np.int64)
        self.bins = np.zeros((features, BINS), np.int64)
        self.confidence = np.zeros(len(CONFIDENCE_BUCKETS), np.int64)
        self.stats = np.array([0, 0, 0, np.inf, -np.inf], np.float64)
        self.cum_confidence = np.zeros(len(CONFIDENCE_BUCKETS), np.int64)
        self.cum_classes = np.zeros(MAX_CLASSES + 1, np.int64)
        self.cum_stats = np.zeros(2, np.float64)
        self.last_n = np.zeros((features, BINS), np.int64)
        self.last_n_rows = 0
        self.labels: list[str] | None = None

    def classes(self) -> dict[str, int]:
        """Predictions per class since start (the first MAX_CLASSES labels, then "other")."""
        if not self.labels:
            return {}
        found = {label: int(count) for label, count in zip(self.labels[:MAX_CLASSES], self.cum_classes, strict=False)}
        if len(self.labels) > MAX_CLASSES or self.cum_classes[MAX_CLASSES]:
            found[OTHER_CLASS] = int(self.cum_classes[MAX_CLASSES])
        return found


class Monitoring:
    """This server's monitoring: its settings, the model directory (for references) and the runtime
    directory where the workers keep their counts."""

    def __init__(self, settings: MonitoringSettings, store: ModelStore, directory: Path | None = None) -> None:
        self.settings, self.store = settings, store
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._locks: dict[Path, threading.Lock] = {}
        self._files: dict[Path, _Counts] = {}
        if directory is None:
            base = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if base:
                directory = Path(base) / "monitoring"  # emptied with the metrics at every start
            else:  # one process, no gunicorn (app.py, tests): a directory of its own, removed at exit
                directory = Path(tempfile.mkdtemp(prefix="nexus-monitoring-"))
                atexit.register(shutil.rmtree, directory, True)
        self.directory = directory

    def monitor(self, key: str, sha256: str, created_at: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                task: object) -> Monitor | None:
        if not self.settings.enabled:
            return None
        return Monitor(self, key, sha256, created_at, inputs, outputs, task)

    def lock_for(self, directory: Path) -> threading.Lock:
        """The lock of one version's counts in this process, shared by every Monitor of it (a version
        unloaded and loaded again gets a new Monitor over the same file)."""
        with self._guard:
            if self._pid != os.getpid():
                self._pid, self._locks, self._files = os.getpid(), {}, {}
            return self._locks.setdefault(directory, threading.Lock())

    def counts_file(self, directory: Path, features: int) -> _Counts:
        """This process's counts file of one version, mapped once and kept while the version exists. Hold its lock."""
        with self._guard:
            counts = self._files.get(directory) if self._pid == os.getpid() else None
            if counts is None:
                directory.mkdir(parents=True, exist_ok=True)
                counts = self._files[directory] = _Counts.create(directory / f"{os.getpid()}.counts", features, self.settings.last_n)
            return counts

    def _drop(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        with self._guard:
            self._files.pop(directory, None)
            self._locks.pop(directory, None)

    def discard(self, key: str) -> None:
        """Remove every worker's counts of version ``key`` (it is deleted), whichever upload of it they count."""
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name.rpartition(".")[0] == key:
                    self._drop(path)

    def sweep(self) -> None:
        """Remove the counts of versions the model directory no longer has (deleted, or uploaded anew),
        which a worker may have written after the delete removed them."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            key, _, upload = path.name.rpartition(".")
            try:
                sidecar = self.store.read_sidecar(key)
            except (FileNotFoundError, BadInput):  # gone, or no key at all
                sidecar = None
            except (OSError, ValueError):
                continue  # unreadable for now: decide later
            if sidecar is None or (sidecar.get("sha256") and _upload(str(sidecar["sha256"]), str(sidecar.get("created_at") or "")) != upload):
                self._drop(path)
