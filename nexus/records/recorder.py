"""Recording predictions, off the request, and answering for labels and accuracy.

A prediction costs its request one append to the worker's queue (a :class:`Batcher` that drops
past ``NEXUS_RECORD_QUEUE`` and counts what it drops: a slow or unreachable database never
slows a prediction). The queue's thread wakes ``WRITE_S`` after the first record queued, works
out each row's class and confidence (or value) for the whole batch at once, and writes the rows
in one transaction. When the database fails, the batch goes back to the front of the queue (as
much of it as fits) and the thread tries again after a pause; readiness says so meanwhile. A
worker that stops writes its queue; one killed outright loses what it queued in its last
``WRITE_S`` (well under the second the issue allows).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from nexus.batching import Batcher
from nexus.clock import utc_now
from nexus.errors import BadInput, RecordsUnavailable
from nexus.ids import request_id_time, valid_request_id
from nexus.monitoring.confidence import confidence, joined, rows_of
from nexus.records import database
from nexus.records.database import HOUR, Database, Label, Outcome

log = logging.getLogger(__name__)

WRITE_S = 0.2  # a record waits at most about this long in its worker before it is written
RETRY_S = (0.5, 5.0)  # pauses between tries while the database fails: first, longest
PRUNE_EVERY_S = 600.0  # each worker prunes past the retention this often (with jitter)
MAX_LABELS = 10_000  # labels per feedback call
FORGET_AGAIN_S = 1.0  # a delete removes the deleted uploads' records again this much later
MAX_TRUTH = database.MAX_ERROR  # a regressor's truth beyond this is refused: its error's square must stay finite in the sums
MAX_INPUT_BYTES = 64 * 1024  # with NEXUS_RECORD_INPUTS=1, a request's inputs are kept up to this size (the queue holds them)
DAY = 86_400


@dataclass(frozen=True)
class RecordSettings:
    """The server's record settings (NEXUS_RECORDS, NEXUS_RECORD_*)."""

    inputs: bool = False
    retention_s: float = 7 * DAY
    queue: int = 100_000


class Pending(NamedTuple):
    """One prediction waiting to be written."""

    time: float
    request_id: str
    model_id: str
    version: str
    upload: str
    kind: str | None  # classifier, regressor, or None (no output to compare a label with)
    value: Any  # the task's output (class probabilities or values), or None
    feeds: dict[str, np.ndarray] | None  # the inputs, when they are kept


class Recorder:
    """This server's prediction records: the worker's queue, its writer, and the queries behind feedback and accuracy."""

    def __init__(self, db: Database, settings: RecordSettings, dropped: Callable[[int], None] | None = None,
                 written: Callable[[int], None] | None = None) -> None:
        self.db, self.settings = db, settings
        self._dropped_cb, self._written_cb = dropped, written
        self.batcher = Batcher("records", self._write, WRITE_S, settings.queue, overflow=lambda pending: self._drop([pending]))
        self.dropped = 0
        self._failing: tuple[float, str] | None = None  # since when, and why, the last write failed
        self._pause = RETRY_S[0]
        self._next_prune = time.time() + random.uniform(0, 60)
        self._lock = threading.Lock()

    # -- the hot path ---------------------------------------------------------------------------

    def observe(self, request_id: str, model_id: str, version: str, upload: str, kind: str | None, value: Any,
                feeds: dict[str, np.ndarray]) -> None:
        """Queue the record of one prediction (neither ``value`` nor ``feeds`` may change afterwards)."""
        kept = feeds if self.settings.inputs and sum(array.nbytes for array in feeds.values()) <= MAX_INPUT_BYTES else None
        self.batcher.put(Pending(time.time(), request_id, model_id, version, upload, kind, value, kept))

    def start(self) -> None:
        """Create the tables now (a worker starting), in the background: a database that is down delays nothing."""

        def prepare() -> None:
            try:
                self.db.ensure()
            except Exception as exc:
                self._failed(exc, [])

        threading.Thread(target=prepare, name="nexus-records-schema", daemon=True).start()

    # -- writing ----------------------------------------------------------------------------------

    def _write(self, taken: list[Pending]) -> None:
        rows = [row for group in _groups(taken) for row in self._rows(group)]
        try:
            self.db.write(rows)
            if time.time() >= self._next_prune:
                self.prune()
        except Exception as exc:  # the database is slow, down or refuses: keep what fits, try again later
            self._failed(exc, taken)
            return
        if self._failing is not None:
            log.info("records database reachable again", extra={"database": database.describe(self.db.url)})
        self._failing, self._pause, self.batcher.pause_s = None, RETRY_S[0], 0.0
        if self._written_cb is not None:
            self._written_cb(len(rows))

    def _failed(self, exc: BaseException, taken: list[Pending]) -> None:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if self._failing is None:
            log.warning("records database unavailable", extra={"database": database.describe(self.db.url), "reason": reason})
            self._failing = (time.time(), reason)
        else:
            self._failing = (self._failing[0], reason)
        pending = self.batcher.pending
        room = max(0, self.settings.queue - len(pending))
        kept = taken[len(taken) - room:] if room < len(taken) else taken  # the newest fit; the oldest are dropped
        if len(kept) < len(taken):
            self._drop(taken[:len(taken) - len(kept)])
        pending.extendleft(reversed(kept))
        self.batcher.pause_s = self._pause  # the batcher's thread waits before it tries again
        self._pause = min(self._pause * 2, RETRY_S[1])

    def _drop(self, predictions: list[Pending]) -> None:
        """Count the records of predictions that will not be written (one per row, like the written ones)."""
        count = sum(_rows_of(p.value) for p in predictions)
        with self._lock:
            self.dropped += count
        if self._dropped_cb is not None:
            self._dropped_cb(count)

    def _rows(self, group: list[Pending]) -> list[tuple[Any, ...]]:
        """The records (``RECORD_COLUMNS``) of one version's predictions: per sample, the class and confidence (or the value)."""
        counts, predicted, values, confidences = _predictions(group[0].kind, [p.value for p in group])
        total = sum(counts)
        predicted = predicted or [None] * total  # type: ignore[list-item]
        values = values or [None] * total  # type: ignore[list-item]
        confidences = confidences or [None] * total  # type: ignore[list-item]
        rows = []
        at = 0
        for pending, n in zip(group, counts, strict=True):
            inputs = _inputs(pending.feeds, n) if pending.feeds is not None else None
            for row in range(n):
                rows.append((pending.model_id, pending.request_id, row, pending.version, pending.upload, pending.time,
                             predicted[at], values[at], confidences[at], inputs[row] if inputs is not None else None))
                at += 1
        return rows

    def flush(self) -> None:
        """Write what this worker has queued now, after the batch its thread may be writing (a worker that
        stops); if the database fails, what is left is dropped."""
        self.batcher.flush()
        left = self.batcher.take()
        if left:
            self._drop(left)

    def prune(self) -> None:
        """Delete records past the retention (every worker does so now and then; deleting twice is harmless)."""
        self._next_prune = time.time() + PRUNE_EVERY_S * random.uniform(0.8, 1.2)
        gone, labels = self.db.prune(time.time() - self.settings.retention_s)
        if gone or labels:
            log.info("records pruned", extra={"predictions": gone, "labels": labels})

    # -- what the API asks ----------------------------------------------------------------------

    def status(self) -> str:
        """``ok``, or why records are not being written (for readiness)."""
        failing = self._failing
        if failing is None:
            return "ok" if not self.dropped else f"ok; {self.dropped} records dropped since start"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failing[0]))
        return f"database unavailable since {since}: {failing[1]}; {self.dropped} records dropped"

    def label(self, model_id: str, labels: list[Label], uploads: set[str]) -> list[Outcome]:
        """Join labels with the predictions of the model's current ``uploads`` and store the new ones
        (raise BadInput, storing nothing, when a truth does not fit the version that predicted)."""
        now = time.time()
        cutoff = now - self.settings.retention_s

        def expired(request_id: str) -> bool:
            made = request_id_time(request_id)
            return made is not None and made < cutoff

        return self._ask(lambda: self.db.label(model_id, labels, now, cutoff, expired, uploads))

    def performance(self, model_id: str, version: str, upload: str, kind: str | None) -> dict[str, Any]:
        """Accuracy (classifier) or error (regressor) of one upload of a version: windows and an hourly timeline."""
        now = time.time()
        windows = {name: _window(kind, seconds, self._ask(lambda s=seconds: self.db.cells(model_id, version, upload,
                                                                                           None if s is None else now - s)))
                   for name, seconds in (("hour", HOUR), ("day", DAY), ("since_upload", None))}
        points = self._ask(lambda: self.db.timeline(model_id, version, upload, now - self.settings.retention_s))
        timeline = []
        for hour, n, correct, abs_error in points:
            point: dict[str, Any] = {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour * HOUR)), "labels": n}
            if kind == "regressor":
                point["mae"] = abs_error / n
            else:
                point["accuracy"] = correct / n
            timeline.append(point)
        return {"windows": windows, "timeline": {"bucket_seconds": HOUR, "points": timeline}, "read_at": utc_now()}

    def forget(self, model_id: str, uploads: set[str]) -> None:
        """Delete the records of deleted uploads of a model, now and once more ``FORGET_AGAIN_S`` later
        (the other workers write what they had queued of them within ``WRITE_S``). When the database
        cannot be reached, say so: the retention takes them later, and labels never match them."""
        self.flush()

        def forget(again: bool) -> None:
            try:
                self.db.forget(model_id, uploads)
            except Exception as exc:
                log.warning("records of a deleted model were kept until the retention",
                            extra={"model_id": model_id, "uploads": sorted(uploads), "reason": str(exc).splitlines()[0][:300]})
                return
            if not again:
                timer = threading.Timer(FORGET_AGAIN_S, forget, (True,))
                timer.daemon = True
                timer.start()

        forget(False)

    def _ask(self, query: Callable[[], Any]) -> Any:
        try:
            return query()
        except (database.SchemaTooNew, OSError) as exc:  # a newer schema; a state directory that cannot be made
            raise RecordsUnavailable(str(exc)) from None
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                raise RecordsUnavailable(str(exc).splitlines()[0][:300]) from None
            raise


# -- pure pieces ----------------------------------------------------------------------------------


def parse_labels(body: object) -> list[Label]:
    """The labels of a feedback call's body, checked in full before anything is stored (raise BadInput).

    A truth is a class (a string, or an integer) or a value (a number); which one it must be is
    the task of the version that made the prediction, checked when the label meets it.
    """
    if not isinstance(body, list):
        raise BadInput('the body must be a JSON array of {"request_id": ..., "truth": ...}')
    if not body:
        raise BadInput("the body is an empty array: send at least one label")
    if len(body) > MAX_LABELS:
        raise BadInput(f"{len(body)} labels in one call; send at most {MAX_LABELS}")
    found = []
    for index, item in enumerate(body):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise BadInput(f'{where} must be an object {{"request_id": ..., "truth": ...}}')
        extra = sorted(set(item) - {"request_id", "truth"})
        if extra:
            raise BadInput(f"{where} has unknown field(s) {', '.join(repr(k) for k in extra)}; only 'request_id' and 'truth' are read")
        if "request_id" not in item or "truth" not in item:
            raise BadInput(f"{where} needs both 'request_id' and 'truth'")
        given = item["request_id"]
        request_id, slash, row = given.partition("/") if isinstance(given, str) else ("", "", "")
        if not valid_request_id(request_id) or (slash and not (row.isdigit() and row.isascii() and len(row) <= 9)):
            raise BadInput(f"{where}: 'request_id' must be a request id (1-128 characters of A-Z a-z 0-9 . _ : -), "
                           f"optionally followed by /<row> for a row of a batch")
        found.append(Label(request_id, int(row or 0), *_truth(item["truth"], where)))
    return found


def _truth(truth: object, where: str) -> tuple[str, float | None]:
    """A truth as text (what a class is compared as) and as a number when it is one."""
    if isinstance(truth, str):
        if not 1 <= len(truth) <= 256:
            raise BadInput(f"{where}: 'truth' as text must be a class of 1-256 characters")
        return truth, None
    if isinstance(truth, bool) or not isinstance(truth, (int, float)):
        raise BadInput(f"{where}: 'truth' must be a class (a string or an integer) or a value (a number), "
                       f"not {orjson.dumps(truth, option=orjson.OPT_SERIALIZE_NUMPY).decode()[:100]}")
    if not (isinstance(truth, int) or np.isfinite(truth)) or abs(truth) > MAX_TRUTH:
        raise BadInput(f"{where}: 'truth' must be a finite number of at most {MAX_TRUTH:g} in size")
    integral = isinstance(truth, int) or float(truth).is_integer()
    return (str(int(truth)) if integral else repr(float(truth))), float(truth)


def _groups(taken: list[Pending]) -> list[list[Pending]]:
    groups: dict[tuple[str, str, str], list[Pending]] = {}
    for pending in taken:
        groups.setdefault((pending.model_id, pending.version, pending.upload), []).append(pending)
    return list(groups.values())


def _predictions(kind: str | None, values: list[Any]) -> tuple[list[int], list[str] | None, list[float] | None, list[float] | None]:
    """Per prediction its number of rows; per row the class and its probability (classifier) or the value (regressor)."""
    counts = [_rows_of(value) for value in values]
    if kind == "classifier":
        found = confidence(_joined(values))  # the whole batch at once, when the answers join
        if found is not None and len(found.top) == sum(counts):
            return counts, found.classes, None, found.top.tolist()
        predicted: list[str] = []
        confidences: list[float] = []
        for value, n in zip(values, counts, strict=True):
            found = confidence(value) if value is not None else None
            if found is None or len(found.top) != n:
                predicted += [None] * n  # type: ignore[list-item]
                confidences += [None] * n  # type: ignore[list-item]
            else:
                predicted += found.classes
                confidences += found.top.tolist()
        return counts, predicted, None, confidences
    if kind == "regressor":
        out: list[float] = []
        for value, n in zip(values, counts, strict=True):
            array = np.asarray(value) if value is not None else None
            if array is None or array.dtype.kind not in "biuf" or array.size == 0:
                out += [None] * n  # type: ignore[list-item]
                continue
            first = array.reshape(n, -1)[:, 0].astype(np.float64) if array.ndim else array.reshape(1).astype(np.float64)
            out += [v if np.isfinite(v) else None for v in first.tolist()]
        return counts, None, out, None
    return counts, None, None, None


def _joined(values: list[Any]) -> Any:
    """A batch's class probabilities as one answer, or None when they do not join."""
    try:
        return joined(values)
    except (ValueError, TypeError):
        return None


def _rows_of(value: Any) -> int:
    """Records of one prediction: one per sample of its answer (one when there is no answer, or an empty ZipMap)."""
    if value is None:
        return 1
    return max(1, rows_of(value)) if isinstance(value, list) else rows_of(value)


def _inputs(feeds: dict[str, np.ndarray], n: int) -> list[str] | None:
    """Each row's inputs as JSON ({name: values}), when every input has those rows."""
    per_row = {}
    for name, array in feeds.items():
        if not np.ndim(array) or np.shape(array)[0] != n:
            return None
        per_row[name] = array
    return [orjson.dumps({name: array[row] for name, array in per_row.items()}, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            for row in range(n)]


def _window(kind: str | None, seconds: float | None, cells: list[tuple[str, str, int, float, float]]) -> dict[str, Any]:
    """One window's accuracy, per-class precision and recall and confusion counts (classifier), or MAE and RMSE (regressor)."""
    n = sum(cell[2] for cell in cells)
    window: dict[str, Any] = {"seconds": seconds, "labels": n}
    if kind == "regressor":
        window["mae"] = sum(cell[3] for cell in cells) / n if n else None
        window["rmse"] = float(np.sqrt(sum(cell[4] for cell in cells) / n)) if n else None
        return window
    confusion: dict[str, dict[str, int]] = {}
    for truth, predicted, count, _, _ in cells:
        confusion.setdefault(truth, {})[predicted] = confusion.get(truth, {}).get(predicted, 0) + count
    correct = sum(row.get(truth, 0) for truth, row in confusion.items())
    predicted_totals: dict[str, int] = {}
    for row in confusion.values():
        for predicted, count in row.items():
            predicted_totals[predicted] = predicted_totals.get(predicted, 0) + count
    classes = {}
    for label in sorted(set(confusion) | set(predicted_totals), key=_class_order):
        support, made, hits = sum(confusion.get(label, {}).values()), predicted_totals.get(label, 0), confusion.get(label, {}).get(label, 0)
        classes[label] = {"precision": hits / made if made else None, "recall": hits / support if support else None,
                          "support": support, "predicted": made}
    window.update({"correct": correct, "accuracy": correct / n if n else None, "classes": classes,
                   "confusion": {t: dict(sorted(row.items(), key=lambda item: _class_order(item[0]))) for t, row in
                                 sorted(confusion.items(), key=lambda item: _class_order(item[0]))}})
    return window


def _class_order(label: str) -> tuple[int, Any]:
    """Classes that are numbers in numeric order, then the others by text."""
    try:
        return 0, int(label)
    except ValueError:
        return 1, label
