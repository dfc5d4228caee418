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
start (confidence buckets, class counts, output sums) that /metrics exports as counters.

A request only queues its prediction; the worker counts the queue in batches, off the request
(:class:`Monitoring`). Counting is array increments in shared memory, no system call; a worker
that died leaves its file, so its counts still count. Nothing here may fail a prediction: a
prediction that cannot be counted is left out and reported to ``Monitoring``'s ``failed``.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson

from nexus.batching import Batcher
from nexus.errors import BadInput
from nexus.monitoring import reference, sketch
from nexus.monitoring.confidence import confidence, joined, rows_of
from nexus.monitoring.features import Layout, Task, layout, task_of
from nexus.store import upload_id

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
HUGE = 1e150  # output values beyond this (and NaN, infinities) are left out: their squares would overflow the sums
FLUSH_S = 0.05  # the flusher counts what was queued this long after the first of it: reports lag a worker by this much
FLUSH_AT = 64  # a request that finds this many predictions queued counts them itself (bounds the queue's memory)
SUMMARIZE_AT = 8192  # a request of a wide model with this many input values is summarized on arrival (see observe)
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
    """The arrays of one counts file, over a writable map (this worker's) or bytes read (anyone's)."""

    def __init__(self, buffer: Any, features: int, ring: int) -> None:
        for name, (dtype, shape, offset) in _sections(features, ring)[0].items():
            setattr(self, name, np.ndarray(shape, dtype, buffer=buffer, offset=offset))
        self.features, self.ring = features, ring

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


class _Batch(NamedTuple):
    """What some predictions of one time slot add to the counts, worked out before anything is written."""

    time: float  # the newest prediction's
    requests: int
    predictions: int
    rows: np.ndarray | None  # their feature rows, when the model has watched inputs
    value: Any  # their task outputs joined (class probabilities, or the output's values raveled), or None


class Monitor:
    """What one worker watches of one model version: counting off the hot path, reporting on demand."""

    def __init__(self, owner: Monitoring, key: str, labels: tuple[str, str], sha256: str, created_at: str,
                 inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], task: object) -> None:
        self.owner, self.key, self.labels, self.sha256 = owner, key, labels, sha256
        self.layout: Layout = layout(inputs)
        self.task: Task = task_of(task, outputs)
        self.directory = owner.directory / f"{key}.{upload_id(sha256, created_at)}"
        self.settings = owner.settings
        self._slot_s = self.settings.window_s / SLOTS
        self._lock = owner.lock_for(self.directory)  # the flusher, a request flushing, and a reloaded Monitor of the version share the file
        self._counts: _Counts | None = None
        self._epoch = -1
        self._slot = 0
        self._labels: list[str] | None = None
        self._sketches: list[sketch.FeatureSketch] | None = None
        self._next_look = 0.0  # when to look for a reference again (while there is none)
        self._collect_fd: int | None = None
        self._building = False
        self._offsets = np.arange(len(self.layout.features), dtype=np.int64) * BINS
        self._wide = any(watched.summarized for watched in self.layout.inputs)

    # -- the hot path: queue the prediction ------------------------------------------------------

    def observe(self, feeds: dict[str, np.ndarray], value: Any) -> None:
        """Queue one prediction for counting: its inputs (``feeds``) and the task output's ``value``.

        The request only appends to this worker's queue; the worker's flusher counts what is
        queued in batches, ``FLUSH_S`` later, or the request that finds ``FLUSH_AT`` queued does
        (see :class:`Monitoring`). Neither argument may be changed afterwards (nothing does:
        feeds are decoded per request, and outputs are fresh arrays). A large request of a wide
        input is summarized here, while its values are in the cache, and only its few summaries
        per sample wait; a small one waits whole, to be summarized with the others in one pass.
        """
        owner = self.owner
        if self._wide and sum(array.size for array in feeds.values()) >= SUMMARIZE_AT:
            try:
                feeds = self.layout.rows(feeds)  # type: ignore[assignment]
            except Exception:
                owner.failed(self)
                return
        owner.batcher.put((self, time.time(), feeds, value))

    # -- counting, in batches ---------------------------------------------------------------------

    def count(self, entries: list[tuple[Any, float, dict[str, np.ndarray], Any]]) -> None:
        """Count queued predictions (oldest first). One that cannot be counted is left out and reported, the rest count."""
        try:
            batches = self._batches(entries)
        except Exception:
            batches = []
            for entry in entries:  # find the culprit: count the others one by one
                try:
                    batches += self._batches([entry])
                except Exception:
                    self.owner.failed(self)
        with self._lock:
            counts = self._counts or self._open()
            for batch in batches:
                self._add(counts, batch)

    def _batches(self, entries: list[tuple[Any, float, dict[str, np.ndarray], Any]]) -> list[_Batch]:
        """``entries`` cut by time slot, each run's features and outputs joined."""
        found, start = [], 0
        slots = [int(entry[1] / self._slot_s) for entry in entries]
        for end in range(1, len(entries) + 1):
            if end == len(entries) or slots[end] != slots[start]:
                found.append(self._batch(entries[start:end]))
                start = end
        return found

    def _batch(self, entries: list[tuple[Any, float, dict[str, np.ndarray], Any]]) -> _Batch:
        rows, predictions = None, 0
        values = [entry[3] for entry in entries if entry[3] is not None]
        if self.layout.inputs:
            rows = self._rows([entry[2] for entry in entries])
            predictions = len(rows)
        else:  # no watched input (text): the answers' rows are the predictions
            predictions = sum(rows_of(v) for v in values)
        value = None
        if values:
            if isinstance(values[0], list) or self.task.kind == "classifier":
                value = joined(values)
            else:
                value = np.concatenate([np.ravel(v) for v in values])
        return _Batch(entries[-1][1], len(entries), predictions, rows, value)

    def _rows(self, feeds: list[Any]) -> np.ndarray:
        """The feature rows of some requests' feeds, joined (a request whose inputs disagree on their samples gives none).

        A large request of a wide model comes with its rows already worked out (an array, or None).
        """
        summarized = [f for f in feeds if not isinstance(f, dict)]
        waiting = [f for f in feeds if isinstance(f, dict)] if summarized else feeds
        parts = [rows for rows in summarized if rows is not None]
        if len(waiting) == 1 or len(self.layout.inputs) > 1 or self.layout.inputs[0].width is None:
            parts += [rows for rows in map(self.layout.rows, waiting) if rows is not None]
        elif waiting:
            name = self.layout.inputs[0].name  # one input of a fixed width: join the requests, then one pass
            parts.append(self.layout.rows({name: np.concatenate([np.atleast_1d(f[name]) for f in waiting])}))  # type: ignore[arg-type]
        return np.vstack(parts) if parts else np.empty((0, len(self.layout.features)))

    def _add(self, counts: _Counts, batch: _Batch) -> None:
        epoch = int(batch.time / self._slot_s)
        if epoch != self._epoch:
            self._rotate(counts, epoch)
        slot = self._slot
        totals = counts.totals[slot]
        totals[0] += batch.requests
        totals[1] += batch.predictions
        rows = batch.rows
        if rows is not None and len(rows):
            if self._sketches is None and batch.time >= self._next_look:
                self._look_for_reference(batch.time)
            if self._sketches is not None:
                self._count(counts, slot, rows, batch.time)
                totals[2] += len(rows)
            elif self._collect_fd is not None:
                self._collect(rows)
        if batch.value is not None:
            if self.task.kind == "classifier":
                self._confidences(counts, slot, batch.value)
            else:
                self._output(counts, slot, batch.value)

    def _open(self) -> _Counts:
        counts = self._counts = self.owner.counts_file(self.directory, len(self.layout.features))
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
        counts.bins[slot] += np.bincount(flat.ravel(), minlength=counts.bins.shape[1])
        ring = counts.ring_bins
        position = int(counts.header[6])
        at = (position + np.arange(len(rows))) % len(ring)
        ring[at] = bins
        counts.ring_time[at] = now
        counts.header[6] = position + len(rows)

    def _confidences(self, counts: _Counts, slot: int, value: Any) -> None:
        if self._labels is None:
            self._labels = self._class_labels(value)
        found = confidence(value)
        if found is None or not len(found.top):
            return
        buckets = np.minimum(np.searchsorted(CONFIDENCE_BUCKETS, found.top, side="left"), len(CONFIDENCE_BUCKETS) - 1)
        spread = np.bincount(buckets, minlength=len(CONFIDENCE_BUCKETS))
        counts.confidence[slot] += spread
        counts.cum_confidence += spread
        self._add_stats(counts, slot, len(buckets), float(found.top.sum()), float(found.margin.sum()), float(found.top.min()),
                        float(found.top.max()))
        if found.labels == self._labels:  # the usual case: columns in the model's order
            counts.cum_classes += np.bincount(np.minimum(found.best, MAX_CLASSES), minlength=MAX_CLASSES + 1)
        else:
            index = {label: i for i, label in enumerate(self._labels[:MAX_CLASSES])}
            for label in found.classes:
                counts.cum_classes[index.get(label, MAX_CLASSES)] += 1

    @staticmethod
    def _add_stats(counts: _Counts, slot: int, n: float, total: float, second: float, low: float, high: float) -> None:
        """Add to the slot's value statistics (count, sum, second sum, min, max) and to the totals since start."""
        stats = counts.stats[slot]
        stats[0] += n
        stats[1] += total
        stats[2] += second
        stats[3] = min(stats[3], low)
        stats[4] = max(stats[4], high)
        counts.cum_stats[0] += n
        counts.cum_stats[1] += total

    def _class_labels(self, value: Any) -> list[str]:
        """The model's class labels in its order, also written for the reports of other workers."""
        labels = [str(label) for label in value[0]] if isinstance(value, list) else [str(k) for k in range(np.shape(value)[1])]
        path = self.directory / "classes.json"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".classes-{os.getpid()}.tmp"
            tmp.write_bytes(orjson.dumps(labels))
            os.replace(tmp, path)
        return labels

    def _output(self, counts: _Counts, slot: int, value: np.ndarray) -> None:
        """Count the watched output's finite values: how many, their sum, sum of squares, minimum and maximum."""
        if value.dtype.kind not in "biuf" or not value.size:
            return
        flat = value.astype(np.float64, copy=False)
        flat = flat[np.abs(flat) < HUGE]  # finite ones whose squares add up
        if flat.size:
            self._add_stats(counts, slot, flat.size, float(flat.sum()), float(np.dot(flat, flat)), float(flat.min()), float(flat.max()))

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
        """The counts of every worker of this server, for the window, the last N rows and since start
        (this worker's queue counted first; another worker's lags by at most ``FLUSH_S``)."""
        self.owner.flush()
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
    """This server's monitoring: its settings, the model directory (for references), the runtime
    directory where the workers keep their counts, and this worker's queue of predictions to count.

    A prediction costs its request one append to the worker's queue (a :class:`Batcher`): its
    thread, woken by the first prediction queued, waits ``FLUSH_S`` and counts everything queued
    by then, each version's share in one vectorized batch; a request that finds ``FLUSH_AT``
    queued counts them itself, so the queue never holds more than that many requests' inputs.
    Reports count this worker's queue first. A worker that stops counts its queue (:meth:`flush`,
    from the worker's exit hook or at exit); one killed outright loses at most its last
    ``FLUSH_S`` of counts.
    """

    def __init__(self, settings: MonitoringSettings, store: ModelStore, directory: Path | None = None,
                 failed: Callable[[str, str], None] | None = None) -> None:
        """``failed(model_id, version)``, if given, is told of each prediction whose counting failed."""
        self.settings, self.store = settings, store
        self._failed = failed
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._locks: dict[Path, threading.Lock] = {}
        self._files: dict[Path, _Counts] = {}
        self.batcher = Batcher("monitoring", self._count, FLUSH_S, FLUSH_AT)
        if directory is None:
            base = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if base:
                directory = Path(base) / "monitoring"  # emptied with the metrics at every start
            else:  # one process, no gunicorn (app.py, tests): a directory of its own, removed at exit
                directory = Path(tempfile.mkdtemp(prefix="nexus-monitoring-"))
                atexit.register(shutil.rmtree, directory, True)
        self.directory = directory

    def monitor(self, key: str, labels: tuple[str, str], sha256: str, created_at: str, inputs: tuple[TensorSpec, ...],
                outputs: tuple[TensorSpec, ...], task: object) -> Monitor | None:
        """A Monitor of version ``key`` (``labels``: its model id and version), or None when monitoring is off."""
        if not self.settings.enabled:
            return None
        return Monitor(self, key, labels, sha256, created_at, inputs, outputs, task)

    def _count(self, taken: list[tuple[Monitor, float, dict[str, np.ndarray], Any]]) -> None:
        """Count predictions taken from the queue, each version's share in one batch."""
        versions: dict[Monitor, list[tuple[Monitor, float, dict[str, np.ndarray], Any]]] = {}
        for entry in taken:
            versions.setdefault(entry[0], []).append(entry)
        for monitor, entries in versions.items():
            monitor.count(entries)

    def flush(self) -> None:
        """Count every prediction queued in this worker now."""
        self.batcher.flush()

    def failed(self, monitor: Monitor) -> None:
        if self._failed is not None:
            self._failed(*monitor.labels)
        else:
            log.exception("monitoring failed", extra={"model_key": monitor.key})

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
        self.flush()  # what this worker queued of it is counted now, not into a directory made anew after the removal
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
            if sidecar is None or (sidecar.get("sha256") and upload_id(str(sidecar["sha256"]), str(sidecar.get("created_at") or "")) != upload):
                self._drop(path)
