"""The per-worker view of the model directory: each model's versions and routing, kept in step with the disk.

Each gunicorn worker holds its own onnxruntime sessions, one per version (keyed by the version's
store key, ``<id>@<version>``), and for each model an :class:`Entry`: its versions in upload order
and the routing plan (``nexus.routing``) that says which version answers. Before answering, a
request makes one ``stat`` of the model directory; when the directory changed since the last look
(a version was added or removed, a routing changed, by any worker or replica), the registry
re-reads it. Directory timestamps are coarse, so a look taken less than ``RACY_NS`` after the
last change is not trusted and the next request looks again.

Loading is off the request path once ``start()`` has run (in gunicorn's workers): a re-read only
notes what must be loaded, and a loader thread loads it, so a request for model A never waits
for model B. A request for a version still loading waits for it up to ``load_wait_s``, then gets
a 503 with ``Retry-After``. A changed version is dropped at once and reloaded, never served stale.
Without ``start()`` (tests, scripts), a re-read loads what it found in the calling thread.

No worker builds a session of bytes that were not measured: a version whose sidecar has no
``load_check`` of its bytes (written by an older release, or by hand) is first opened in the
sandbox by whichever worker takes its model's claim, and the record is written to its sidecar.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import IO, Any, NamedTuple

from nexus import routing, sandbox
from nexus.clock import utc_now
from nexus.config import Limits, Settings
from nexus.errors import (
    ApiError,
    BadInput,
    InvalidModel,
    ModelBusy,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    ModelUnloaded,
    NotReady,
    StorageUnavailable,
    VersionExists,
    VersionInUse,
    VersionNotFound,
)
from nexus.monitoring import features, reference
from nexus.monitoring.live import Monitor, Monitoring
from nexus.records.recorder import Recorder
from nexus.routing import Plan, Routing
from nexus.runtime import VERSION as RUNTIME_VERSION
from nexus.runtime import Runtime, TensorSpec, check_serving_graph, trim_heap
from nexus.store import ModelStore, PendingFile, StoredModel, check_id, file_digest, model_of, upload_id, version_key

log = logging.getLogger("nexus.registry")

RACY_NS = 2_000_000_000
SIDECAR_FORMAT = 2  # 2: versions (the sidecar's "sequence" orders them); 1 had none
LOADER_POLL_S = 1.0  # the loader looks at the directory this often even when no request comes
BUSY_RETRY_S = 0.05  # and this often while a version it must load is another worker's to check
CLEAN_EVERY_S = 30.0  # and removes leftovers of dead writers (another replica's, say) this often
# What a budget counts at least for one open version: besides its session (about 90 kB for iris), a worker
# keeps its monitoring counts, metrics series and objects; 2,000 tiny models measured 0.24 MB each (PSS).
MIN_MODEL_MB = 0.25
_DIGESTS_KEPT = 10_000  # file digests remembered (three files a version)
FULL_REREAD_S = 60.0  # and reads the whole directory this often, for changes no log or timestamp showed
_NO_ROUTING = Routing()


@dataclass(frozen=True)
class Model:
    """A model version this worker can serve: what its sidecar says plus a live session."""

    id: str
    name: str
    version: str
    key: str  # the store's key of this version's files
    path: str
    created_at: str
    size_bytes: int
    sha256: str
    runtime: Runtime = field(repr=False, compare=False)
    sequence: int = 0  # upload order within the model; 0 for a model stored before versions
    signature: tuple[int, ...] | None = field(default=None, compare=False)
    load_check: dict[str, Any] | None = field(default=None, compare=False)
    task: dict[str, Any] | None = field(default=None, compare=False)  # what monitoring reads: classifier or regressor, which output
    monitor: Monitor | None = field(default=None, compare=False, repr=False)  # this worker's counting; None: monitoring off
    upload: str = field(default="", compare=False)  # which upload of the version this is (store.upload_id)
    memory_mb: float = field(default=0.0, compare=False)  # what one worker holds of it, as measured (the budget counts it)
    users: list = field(default_factory=list, compare=False, repr=False)  # one item per run in progress: never evicted then

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.runtime.inputs

    @property
    def watched(self) -> str | None:
        """The output monitoring and the records read (class probabilities, or the regressor's values), if any."""
        return self.task.get("output") if self.task else None

    @property
    def kind(self) -> str | None:
        """classifier or regressor, when the model has an output a label can be compared with."""
        return self.task.get("kind") if self.task and self.task.get("output") else None

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.runtime.outputs

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "path": self.path}

    def details(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "inputs": [t.info() for t in self.inputs],
            "outputs": [t.info() for t in self.outputs],
            "created_at": self.created_at,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "task": self.task,
        }

    def sidecar(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, **self.details(), "sequence": self.sequence, "load_check": self.load_check}


@dataclass(frozen=True)
class Entry:
    """One model as the directory has it: its versions in upload order and which of them answers."""

    id: str
    keys: dict[str, str]  # version -> store key, oldest first
    plan: Plan = field(compare=False)
    signature: tuple = field(compare=False)  # the routing document's and every version's identity
    stored_keys: tuple[str, ...] = field(compare=False)  # the keys that signature covers, in its order

    @property
    def versions(self) -> list[str]:
        return list(self.keys)

    @property
    def routing(self) -> Routing:
        return self.plan.routing


def _without(found: Routing, version: str) -> Routing:
    """The routing with ``version`` left out (named with weight 0, it gets no traffic)."""
    return Routing(found.default, {v: w for v, w in found.canary.items() if v != version},
                   {v: w for v, w in found.shadow.items() if v != version})


def _memory_mb(record: dict[str, Any] | None, shared: bool) -> float:
    """What one worker holds of a version, as the sandbox measured it: its serving form's graph,
    weights and private memory when shared, else the peak of its load from bytes."""
    record = record or {}
    measured = record.get("serving", {}).get("resident_mb") if shared else record.get("peak_mb")
    measured = float(measured) if isinstance(measured, (int, float)) and not isinstance(measured, bool) else 0.0
    return max(measured, MIN_MODEL_MB)


class _Seen(NamedTuple):
    """What a version's sidecar says, as of the files' identity ``signature``."""

    signature: tuple[int, ...] | None
    version: str
    sequence: int
    summary: dict[str, Any]  # Model.summary() without loading it


class _Busy(Exception):
    """Another writer holds the model's claim (it is checking or writing it); try again later."""


class Registry:
    """The models this worker serves; the dicts are swapped whole under ``_lock``, never edited."""

    def __init__(self, store: ModelStore, ort_threads: int, observer: ModuleType | object | None = None,
                 limits: Limits | None = None, load_wait_s: float = 5, monitoring: Monitoring | None = None,
                 recorder: Recorder | None = None, budget_mb: float | None = None, shared_weights: bool = True) -> None:
        """``observer``, if given, has ``models_changed(loaded, memory_mb)``, ``models_available(count)``,
        ``model_loaded(seconds)`` and ``models_evicted(count)``; ``monitoring``, if given, gives every version a monitor; ``recorder``,
        if given, keeps a record of every prediction. With ``budget_mb``, versions are opened on first use and the
        least recently used are closed to keep what this worker holds under the budget. Without ``shared_weights``,
        every session is built from the model's bytes (private weights in each worker) and no serving form is made."""
        self.store = store
        self.monitoring = monitoring
        self.recorder = recorder
        self.ort_threads = ort_threads
        self.limits = limits or Settings().limits
        self.load_wait_s = load_wait_s
        self.budget_mb = budget_mb
        self.shared_weights = shared_weights
        self._ticks = itertools.count()
        self._used: dict[str, int] = {}  # key -> tick of its last use (with a budget: which to close first)
        self._opening: dict[str, threading.Event] = {}  # key -> set when its load on demand ends
        self._digests: dict[tuple[int, ...], dict[str, Any]] = {}  # a file's identity -> its sha256 and size
        self._models: dict[str, Model] = {}  # store key -> loaded version
        self._entries: dict[str, Entry] = {}  # model id -> its versions and routing
        self._pending: dict[str, tuple[tuple[int, ...] | None, threading.Event]] = {}  # key -> (signature, loaded)
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one re-read at a time; loading happens outside it
        self._load_lock = threading.Lock()  # one loader at a time, whichever thread it is
        self._stamp: tuple[int, int] | None = None
        self._mark: tuple[int, int] | None = None  # the change log's (inode, offset read to) at the last look
        self._unexplained: tuple[int, int] | None = None  # a directory stamp the log did not explain at the last poll
        self._full_due = 0.0  # when the loader reads the whole directory again whatever the log says
        self._trust_after_ns = 0
        self._pid: int | None = os.getpid()  # the process whose sessions these are (a fork starts over)
        self._failed: dict[str, tuple[tuple[int, ...] | None, str]] = {}  # key -> (signature, reason)
        self._known: dict[str, _Seen] = {}  # key -> what its sidecar says, read once per change
        self._routings: dict[str, tuple[tuple[int, ...] | None, Routing]] = {}  # model id -> (document's identity, routing)
        self._unloaded: frozenset[str] = frozenset()
        self._missing = False
        self._observer = observer
        self._wake = threading.Event()
        self._loader_pid: int | None = None
        self._loader_ident: int | None = None
        self.synced_once = False
        self._reported = False  # models_changed called at least once in this process
        self._available: int | None = None  # what models_available was last told

    # -- reading ---------------------------------------------------------------------------

    def entry(self, model_id: str) -> Entry:
        """Return the model's versions and routing, or raise ModelNotFound (after a direct look at the disk)."""
        self.refresh(model_id)
        entry = self._entries.get(model_id)
        if entry is None:
            check_id(model_id)
            # A write by another worker may be newer than the directory stamp we trust.
            if self.store.has_model(model_id):
                self.sync()
                entry = self._entries.get(model_id)
            if entry is None:
                if self._missing:
                    raise StorageUnavailable()
                raise ModelNotFound(model_id)
        return entry

    def version(self, entry: Entry, version: str | None) -> Model:
        """Return the loaded ``version`` of the model (None: the one its routing makes the default).

        Wait (bounded) for it if this worker is still loading it; raise the error that says why
        it cannot be served otherwise.
        """
        if version is None:
            version = entry.plan.default
        key = entry.keys.get(version)
        if key is None:
            raise VersionNotFound(entry.id, version, entry.versions)
        model = self._models.get(key)
        if model is None:
            model = self._await(key, entry.id, version if len(entry.keys) > 1 else None)
        if self.budget_mb is not None:
            self._used[key] = next(self._ticks)
        return model

    def loaded(self, entry: Entry, version: str) -> Model | None:
        """Return the version if this worker has it loaded now, else None; never waits."""
        key = entry.keys.get(version)
        return None if key is None else self._models.get(key)

    def get(self, model_id: str, version: str | None = None) -> Model:
        """Return the model in ``version`` (None: its default version), or raise ModelNotFound."""
        return self.version(self.entry(model_id), version)

    def find(self, model_id: str) -> Model | None:
        """Return the model's default version, or None."""
        try:
            return self.get(model_id)
        except ModelNotFound:
            return None

    def entries(self) -> list[Entry]:
        """Return every model's entry, sorted by id, after waiting (bounded) for the versions this worker is loading."""
        self.refresh()
        deadline = time.monotonic() + self.load_wait_s
        with self._lock:
            pending = list(self._pending.values())
        for _, done in pending:
            if not self._wait(done, deadline - time.monotonic()):
                break  # the rest are listed once loaded; a listing never waits longer than one model would
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]

    def models(self) -> list[Model]:
        """Return every loaded version of every model, by id then upload order (waiting like ``entries``)."""
        entries = self.entries()
        with self._lock:
            models = self._models
        return [models[key] for entry in entries for key in entry.keys.values() if key in models]

    def loaded_now(self) -> list[Model]:
        """Return the versions this worker has loaded at this moment; never waits (for /metrics)."""
        with self._lock:
            return list(self._models.values())

    def versions_of(self, model_id: str, version: str | None = None) -> list[Model]:
        """Return ``version`` of the model, or (None) every version this worker has loaded; raise if there is none."""
        entry = self.entry(model_id)
        if version is not None:
            return [self.version(entry, version)]
        loaded = [model for key in entry.keys.values() if (model := self._models.get(key)) is not None]
        return loaded or [self.version(entry, None)]  # none loaded: the default's error says why

    def catalogue(self) -> list[tuple[Entry, dict[str, Any]]]:
        """Return each model that can answer, with its default version's summary (waiting like ``entries``):
        loaded, or, with a budget, able to be opened on its first request."""
        entries = self.entries()
        with self._lock:
            models = self._models
        found = []
        for entry in entries:
            key = entry.keys.get(entry.plan.default, "")
            model = models.get(key)
            if model is not None:
                found.append((entry, model.summary()))
            elif self.budget_mb is not None and key in self._known and key not in self._unloaded and key not in self._failed:
                found.append((entry, self._known[key].summary))
        return found

    def check_ready(self) -> None:
        """Raise NotReady unless this worker has loaded the model directory and can still read it."""
        if not self.synced_once:
            raise NotReady("this worker has not loaded the model directory yet")
        if not os.access(self.store.directory, os.R_OK | os.X_OK):
            raise NotReady(f"model directory '{self.store.directory}' is not readable")

    def count(self) -> int:
        """Return how many models this worker serves or is loading, in step with the directory; never waits."""
        self.refresh()
        with self._lock:
            return len({model_of(key) for key in self._models.keys() | self._pending.keys()})

    def known_versions(self) -> dict[str, set[str]]:
        """Return the versions of every model in the directory (for labels); never waits."""
        try:
            self.refresh()
        except ApiError:
            return {}
        with self._lock:
            return {model_id: set(entry.keys) for model_id, entry in self._entries.items()}

    def state(self, entry: Entry, version: str) -> tuple[str, str | None]:
        """Return a version's state in this worker: READY, LOADING or UNAVAILABLE, and the reason if not READY."""
        key = entry.keys[version]
        with self._lock:
            if key in self._models:
                return "READY", None
            if key in self._pending:
                return "LOADING", "loading"
        if key in self._unloaded:
            return "UNAVAILABLE", "unloaded"
        if key in self._failed:
            return "UNAVAILABLE", self._failed[key][1]
        return "UNAVAILABLE", "not loaded: opened on its first request" if self.budget_mb is not None else "not loaded yet"

    def index(self) -> list[dict[str, str]]:
        """Return every version of every model in the directory with its state (Triton's repository index)."""
        self.refresh()
        with self._lock:
            entries = [self._entries[k] for k in sorted(self._entries)]
        rows = []
        for entry in entries:
            for version in entry.keys:
                state, reason = self.state(entry, version)
                rows.append({"name": entry.id, "version": version, "state": state, **({"reason": reason} if reason else {})})
        return rows

    def _await(self, key: str, model_id: str, version: str | None) -> Model:
        """Wait (bounded) for a version this worker is loading; raise the error that says why there is none."""
        if self.budget_mb is not None and key not in self._unloaded and key not in self._failed and key in self._known:
            return self._open(key, model_id, version)
        with self._lock:
            waiting = self._pending.get(key)
        if waiting is not None and not self._wait(waiting[1], self.load_wait_s):
            raise ModelLoading(model_id, max(1, round(self.load_wait_s)))
        model = self._models.get(key)
        if model is not None:
            return model
        if self._missing:
            raise StorageUnavailable()
        if key in self._unloaded:
            raise ModelUnloaded(model_id, version)
        if key in self._failed:
            raise ModelUnavailable(model_id, self._failed[key][1])
        raise ModelNotFound(model_id)

    def _open(self, key: str, model_id: str, version: str | None) -> Model:
        """Open a version on its first request under a budget: one thread loads it, the others wait for
        that load (as long as a load may take: the first request never fails for being first)."""
        deadline = time.monotonic() + self.limits.load_seconds + self.load_wait_s
        while True:
            model = self._models.get(key)
            if model is not None:
                return model
            with self._lock:
                if key in self._models:
                    continue  # opened by another thread since the look above
                opening = self._opening.get(key)
                mine = opening is None
                if mine:
                    opening = self._opening[key] = threading.Event()
            if not mine:
                if not opening.wait(max(0.0, deadline - time.monotonic())):
                    raise ModelLoading(model_id, max(1, round(self.load_wait_s)))
                if key in self._models or key not in self._failed:
                    continue
                raise ModelUnavailable(model_id, self._failed[key][1])
            try:
                seen = self._known.get(key)
                if seen is None:  # gone from the directory since the request found it
                    raise ModelNotFound(model_id)
                try:
                    model = self._load(key, seen.signature, before_open=lambda mb, keep=key: self._evict(mb, keep))
                except _Busy:  # another worker is checking it under the model's claim
                    if time.monotonic() > deadline:
                        raise ModelLoading(model_id, max(1, round(self.load_wait_s))) from None
                    time.sleep(0.05)
                    continue
                if model is None:
                    if key in self._failed:
                        raise ModelUnavailable(model_id, self._failed[key][1])
                    raise ModelNotFound(model_id)
                with self._lock:
                    if self._known.get(key, seen).signature != seen.signature:
                        continue  # changed while we opened it: open what is there now
                    self._used[key] = next(self._ticks)
                self._swap(lambda models: models.__setitem__(key, model))
                self._evict(0, key)  # its measured size may have been above the estimate
                return model
            finally:
                if mine:
                    with self._lock:
                        self._opening.pop(key, None)
                    opening.set()

    def _evict(self, needed_mb: float, keep: str) -> None:
        """Close the least recently used versions not running a request until what this worker holds,
        plus ``needed_mb`` about to be opened, fits the budget; never ``keep``."""
        with self._lock:
            models = self._models
            held = sum(m.memory_mb for m in models.values())
            if held + needed_mb <= self.budget_mb:
                return
            closing = []
            for _, key in sorted((self._used.get(k, -1), k) for k, m in models.items() if k != keep and not m.users):
                if held + needed_mb <= self.budget_mb:
                    break
                closing.append(key)
                held -= models[key].memory_mb
            if not closing:
                return
            self._models = {k: m for k, m in models.items() if k not in closing}
            freed = sum(models[k].memory_mb for k in closing)
        self._changed(models, self._models)
        if self._observer is not None:
            self._observer.models_evicted(len(closing))
        log.info("models closed to stay under the memory budget",
                 extra={"keys": closing, "freed_mb": round(freed, 1), "held_mb": round(held, 1), "budget_mb": self.budget_mb})
        del models  # a closed session is freed here, or when the last request running it ends
        trim_heap()

    def _wait(self, loaded: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for a load the loader thread does; without one, load here at once."""
        if self._loader_pid != os.getpid():
            self._load_pending()
            return True
        return loaded.wait(max(0.0, seconds))

    # -- keeping in step with the disk -------------------------------------------------------

    def refresh(self, model_id: str | None = None) -> None:
        """Catch up with the directory if it changed since the last look (one stat when it did not).

        With the loader thread running, a request looks at the change log only: when it grew, the
        new lines say which versions to look at. Changes made without the log (by hand, or by an
        older release) are the loader's to find: it watches the directory's timestamp too.
        Without a loader (tests, scripts), a request watches the directory's timestamp itself.
        Directory timestamps are coarse: shortly after a change the stamp proves nothing; then a
        request for one model checks that model's own files instead of re-reading everything.
        """
        if self._pid == os.getpid() and self._loader_pid == self._pid:
            mark = self.store.changes_mark()
            if mark is not None or self._missing:
                if self._missing or mark != self._mark:
                    self.sync()
                return
            # No log (none written yet, or the directory is gone): watch the directory as below.
        try:
            stamp = self.store.dir_stamp()
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp and self._pid == os.getpid():
            if time.time_ns() >= self._trust_after_ns:
                return
            if model_id is not None:
                entry = self._entries.get(model_id)
                if entry is not None and self.store.model_signature(model_id, entry.stored_keys) == entry.signature:
                    return
        self.sync()

    def sync(self) -> None:
        """Catch up with the directory: drop what went away or changed, note what must be loaded, load it.

        What the change log says changed since the last look is all that is read; when the log has
        nothing new (a change made by hand) or was started anew, the whole directory is.
        With the loader thread running, loading is left to it; otherwise it happens here.
        """
        self._reread(follow=True)
        if self._loader_pid == os.getpid():
            # The loader loads what this re-read found next; it never needs waking by itself (it
            # spun through its 2 s look-again window when it did).
            if self._pending and threading.get_ident() != self._loader_ident:
                self._wake.set()
        else:
            self._load_pending()
        if self._missing:
            raise StorageUnavailable()

    def _look_for_unlogged(self) -> None:
        """The loader's look for changes the log does not name: the directory's timestamp moved and
        stayed unexplained for a whole poll (a logged write moves it a moment before its line
        lands), or a full re-read is due anyway (a stamp too coarse to show a change)."""
        try:
            stamp = self.store.dir_stamp()
        except OSError:
            stamp = None
        logged = self.store.changes_mark() != self._mark
        if time.monotonic() >= self._full_due:
            self._reread(follow=False)
        elif logged:
            self._reread(follow=True)
        elif stamp != self._stamp:
            if stamp == self._unexplained:
                self._reread(follow=False)
            self._unexplained = stamp

    def _reread(self, follow: bool = False) -> None:
        """Read the directory again: with ``follow``, only the models the change log names since the
        last look (the whole directory when the log has nothing new or is another file)."""
        with self._sync_lock:
            if self._pid != os.getpid():
                # Sessions made before a fork belong to the parent; start over in this process.
                with self._lock:
                    self._models, self._pending = {}, {}
                self._failed = {}
                self._pid = os.getpid()
                self._reported = False
                self._available = None
                self._mark = None
                follow = False
            changed: dict[str, set[str]] | None = None
            try:
                mark = self.store.changes_mark()  # before the look: a change after it is read again next time
                stamp = self.store.dir_stamp()
                if follow and mark is not None and self._mark is not None and mark != self._mark:
                    found = self.store.read_changes(self._mark, mark[1]) if mark[0] == self._mark[0] else None
                    if found is not None:
                        changed, offset = found
                        mark = (mark[0], offset)
                if changed is None:
                    stored = self.store.scan()
                    self._full_due = time.monotonic() + FULL_REREAD_S
                else:
                    known = self._entries
                    stored = [model for model_id, keys in changed.items()
                              if (model := self.store.look(model_id, keys | set(known[model_id].stored_keys if model_id in known else ())))]
                self._missing = False
            except OSError:  # the directory is gone or unreadable: serve nothing, say why
                mark, stamp, stored, changed = None, None, [], None
                self._missing = True
            with self._lock:
                current, pending = self._models, self._pending
            # What this look does not cover stays as it was: everything but the models the log named.
            kept = (lambda key: False) if changed is None else (lambda key: model_of(key) not in changed)
            fresh: dict[str, Model] = {k: m for k, m in current.items() if kept(k)}
            wanted: dict[str, tuple[tuple[int, ...] | None, threading.Event]] = {k: p for k, p in pending.items() if kept(k)}
            entries: dict[str, Entry] = {} if changed is None else {i: e for i, e in self._entries.items() if i not in changed}
            failed: dict[str, tuple[tuple[int, ...] | None, str]] = {k: f for k, f in self._failed.items() if kept(k)}
            unloaded = {k for k in self._unloaded if kept(k)}
            for stored_model in stored:
                entries[stored_model.model_id] = self._entry(stored_model, current, failed)
                for entry in stored_model.versions:
                    if entry.unloaded:
                        unloaded.add(entry.key)
                        continue
                    known = current.get(entry.key)
                    if known is not None and known.signature == entry.signature:
                        fresh[entry.key] = known
                    elif self.budget_mb is None and failed.get(entry.key, ((),))[0] != entry.signature:
                        already = pending.get(entry.key)
                        wanted[entry.key] = already if already and already[0] == entry.signature else (entry.signature, threading.Event())
            on_disk = {key for entry in entries.values() for key in entry.stored_keys}
            self._failed = failed
            self._known = {k: v for k, v in self._known.items() if k in on_disk}
            self._used = {k: v for k, v in self._used.items() if k in on_disk}
            self._routings = {k: v for k, v in self._routings.items() if k in entries}
            self._unloaded = frozenset(unloaded)
            with self._lock:
                now = self._models
                if now is not current:  # opened or closed meanwhile (on demand, under a budget): keep that
                    signatures = {v.key: v.signature for m in stored for v in m.versions}
                    for key, model in now.items():
                        if current.get(key) is not model and (kept(key) or signatures.get(key, ()) == model.signature):
                            fresh[key] = model
                    for key in current.keys() - now.keys():
                        fresh.pop(key, None)
                self._models, self._pending, self._entries = fresh, wanted, entries
            for key, (_, done) in pending.items():
                if key not in wanted:
                    done.set()  # nobody waits for a version that went away
            self._report_available()
            self._mark, self._stamp, self._unexplained = mark, stamp, None
            # A change within the timestamp's resolution of this look would not move the stamp.
            self._trust_after_ns = (stamp[1] + RACY_NS) if stamp else 0
            if not wanted:
                self.synced_once = True
        self._changed(current, fresh)

    def _report_available(self) -> None:
        """Tell the observer how many models can answer, open or not: those whose default version has
        not failed to load and is not unloaded (when it changed)."""
        if self._observer is None:
            return
        failed, unloaded = self._failed, self._unloaded
        count = sum(1 for entry in self._entries.values()
                    if (key := entry.keys.get(entry.plan.default)) is not None and key not in failed and key not in unloaded)
        if count != self._available:
            self._available = count
            self._observer.models_available(count)

    def _entry(self, stored: StoredModel, current: dict[str, Model], failed: dict) -> Entry:
        """Build one model's entry from the directory's listing; note versions whose sidecar is unusable in ``failed``."""
        versions: list[tuple[int, str, str]] = []  # (sequence, version, key)
        for entry in stored.versions:
            previous = self._failed.get(entry.key)
            if previous is not None and previous[0] == entry.signature:
                failed[entry.key] = previous  # failed to load these very files: not again
            try:
                sequence, version = self._version_of(entry.key, entry.version, entry.signature, current)
            except (OSError, ValueError) as exc:
                # The sidecar cannot say which version this is: list it under the name its files give
                # (a model stored before versions has none), so a request for it says why it fails.
                reason = str(exc)
                failed[entry.key] = (entry.signature, reason)
                log.warning("model skipped", extra={"model_id": stored.model_id, "key": entry.key, "reason": reason})
                sequence, version = 0, entry.version or ""
            versions.append((sequence, version, entry.key))
        chosen: dict[str, tuple[int, str]] = {}
        for sequence, version, key in sorted(versions):
            chosen[version] = (sequence, key)  # two files claiming one version (only by hand): the newer wins
        keys = {version: key for version, (_, key) in sorted(chosen.items(), key=lambda item: (item[1][0], item[0]))}
        signature = (stored.routing, *(entry.signature for entry in stored.versions))
        return Entry(stored.model_id, keys, Plan(self._routing(stored), list(keys)), signature,
                     tuple(entry.key for entry in stored.versions))

    def _version_of(self, key: str, named: str | None, signature: tuple[int, ...] | None,
                    current: dict[str, Model]) -> tuple[int, str]:
        """Return (sequence, version) of the version stored under ``key``, reading its sidecar once per change."""
        known = self._known.get(key)
        if known is not None and known.signature == signature:
            return known.sequence, known.version
        model = current.get(key)
        if model is not None and model.signature == signature:
            seen = _Seen(signature, model.version, model.sequence, model.summary())
        else:
            sidecar = self.store.read_sidecar(key)
            version = named if named is not None else str(sidecar.get("version") or "")
            sequence = sidecar.get("sequence", 0)
            sequence = sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 0
            summary = {"id": model_of(key), "name": str(sidecar.get("name") or model_of(key)), "version": version,
                       "path": self.store.display_path(key)}
            seen = _Seen(signature, version, sequence, summary)
        self._known[key] = seen
        return seen.sequence, seen.version

    def _routing(self, stored: StoredModel) -> Routing:
        """Return the model's routing as its document says, read once per change of the document."""
        cached = self._routings.get(stored.model_id)
        if cached is not None and cached[0] == stored.routing:
            return cached[1]
        found = _NO_ROUTING
        if stored.routing is not None:
            try:
                found = routing.parse(self.store.read_routing(stored.model_id) or {}, None)
            except (OSError, ValueError, BadInput) as exc:
                log.warning("routing document unusable; the newest version answers",
                            extra={"model_id": stored.model_id, "reason": getattr(exc, "message", str(exc))})
        self._routings[stored.model_id] = (stored.routing, found)
        return found

    def _load_pending(self) -> bool:
        """Load every version noted as wanted, one at a time, swapping each in as soon as it is ready;
        return whether one was left for later because another worker holds its model's claim."""
        with self._load_lock:
            with self._lock:
                work = list(self._pending.items())
            busy = False
            for key, (signature, done) in work:
                try:
                    model = self._load(key, signature)
                except _Busy:
                    busy = True
                    continue
                with self._lock:
                    if self._pending.get(key, (None, None))[1] is not done:
                        continue  # changed or removed while we loaded it: the next re-read decides
                    before = self._models
                    if model is not None:
                        self._models = {**before, key: model}
                    self._pending = {k: v for k, v in self._pending.items() if k != key}
                done.set()
                self._changed(before, self._models)
            if not busy:
                self.synced_once = True
            return busy

    def _load(self, key: str, signature: tuple[int, ...] | None,
              before_open: Callable[[float], None] | None = None) -> Model | None:
        started = time.perf_counter()
        model_id = model_of(key)
        try:
            # The files as they are now, taken before they are read: a sidecar another worker rewrote since
            # the directory was read (a serving form it made while this one waited) is not a change to reload for.
            signature = self.store.signature(key)
            if signature is None:
                raise ValueError("the .onnx file next to the sidecar is missing")
            sidecar = self.store.read_sidecar(key)
            with self.store.open_model(key) as file:
                found = self._digest(file)
                digest = found["sha256"]
                if sidecar.get("sha256") != digest:
                    raise ValueError("the .onnx file does not match the sha256 in its sidecar" if "sha256" in sidecar
                                     else "the sidecar does not name the model's sha256, so its file cannot be verified")
                record, reason, shared, rewritten = self._admit(key, sidecar, digest, file)
                if reason is not None:
                    raise ValueError(reason)
                if before_open is not None:
                    before_open(_memory_mb(record, shared))
                runtime = self._runtime(key, shared, file)
            # The sidecar this worker rewrote is the one it serves: the next look must not take it for a change.
            model = self._model(key, sidecar, found["size"], digest, runtime, rewritten or signature, record)
        except _Busy:
            raise
        except FileNotFoundError:  # deleted between the directory's listing and this read: not an error
            log.debug("model went away while loading", extra={"model_id": model_id, "key": key})
            return None
        except Exception as exc:  # a bad file must never stop the others from loading
            reason = getattr(exc, "message", None) or str(exc)
            self._failed[key] = (signature, reason)
            log.warning("model skipped", extra={"model_id": model_id, "key": key, "reason": reason})
            self._report_available()
            return None
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.model_loaded(seconds)
        log.info("model loaded", extra={"model_id": model_id, "version": model.version, "load_ms": round(seconds * 1000, 2)})
        return model

    def _admit(self, key: str, sidecar: dict[str, Any], digest: str,
               file: IO[bytes]) -> tuple[dict[str, Any], str | None, bool, tuple[int, ...] | None]:
        """Return the version's load check, why it may not be served (None if it may), whether its
        serving form is in place and verified (False: it is served from its bytes, as its record says),
        and the version's signature when this call rewrote its sidecar (else None).

        Without a record of these bytes, or without a serving form that matches its record and this
        onnxruntime, measure them in the sandbox and derive the form again under the model's claim,
        and keep the record in the sidecar, so the other workers and replicas need not.
        """
        decided = self._decided(key, sidecar, digest)
        if decided is not None:
            return (*decided, None)
        try:
            with self.store.claim(model_of(key)):
                if not self.store.is_current(key, file):  # deleted, or uploaded again, since we opened it
                    raise FileNotFoundError(key)
                current = self.store.read_sidecar(key)
                decided = self._decided(key, current, digest)  # another worker may have done it while we waited
                if decided is not None:
                    return (*decided, None)
                with self.store.workspace() as workspace:
                    try:
                        record = sandbox.check(file.fileno(), digest, self.limits, self._serving_in(workspace, key))
                    except ApiError as exc:
                        record = sandbox.refusal_record(exc, digest, self.limits)
                    earlier = self._recorded(current, digest)
                    if earlier is not None and earlier[1] is None and "serving" in record:
                        # Only the serving form was made again: the measurement that admitted these bytes stands,
                        # and so does the form's record when the same files came out (a form lost, made again).
                        kept = {k: earlier[0][k] for k in ("peak_mb", "seconds") if k in earlier[0]}
                        before = earlier[0].get("serving")
                        if isinstance(before, dict) and all(before.get(f) == record["serving"].get(f) for f in ("onnxruntime", "graph", "weights")):
                            kept["serving"] = before
                        record = {**record, **kept}
                    if "graph" in record.get("serving", {}):
                        self.store.publish_serving(key, workspace, {**current, "load_check": record})
                    else:
                        self.store.rewrite_sidecar(key, {**current, "load_check": record})
                log.info("model checked", extra={"model_id": model_of(key), "key": key, "load_check": record})
                reason = sandbox.verdict(record, digest, self.limits)
                return record, reason, reason is None and self._serving_state(key, record) is True, self.store.signature(key)
        except ModelBusy:
            raise _Busy() from None

    def _decided(self, key: str, sidecar: dict[str, Any], digest: str) -> tuple[dict[str, Any], str | None, bool] | None:
        """Return what the sidecar's load check decides for these bytes, or None when it must be made again."""
        decided = self._recorded(sidecar, digest)
        if decided is None:
            return None
        record, reason = decided
        if reason is not None or not self.shared_weights:
            return record, reason, False
        state = self._serving_state(key, record)
        return None if state is None else (record, None, state)

    def _serving_state(self, key: str, record: dict[str, Any]) -> bool | None:
        """Return True when the version's serving form is what its record describes (checked byte for
        byte), False when the record says this onnxruntime cannot make one, None when it must be made
        (none recorded, another onnxruntime's, or files missing or changed: never served)."""
        serving = record.get("serving")
        if not isinstance(serving, dict) or serving.get("onnxruntime") != RUNTIME_VERSION:
            return None
        if "error" in serving:
            return False
        graph, weights = self.store.serving_paths(key)
        try:
            if self._digest(graph) != serving.get("graph") or self._digest(weights) != serving.get("weights"):
                log.warning("serving form does not match its record; making it again", extra={"key": key})
                return None
            check_serving_graph(graph.read_bytes(), weights.name)
        except FileNotFoundError:
            log.warning("serving form missing; making it again", extra={"key": key})
            return None
        except (OSError, InvalidModel) as exc:
            log.warning("serving form unusable; making it again", extra={"key": key, "reason": str(exc)})
            return None
        return True

    def _digest(self, file: IO[bytes] | Path) -> dict[str, Any]:
        """Return file_digest of an open file or a path, hashed once per file: a file whose inode, size
        and change times are those of one hashed before is that file (the store replaces files, never
        edits them; an edit in place moves the change time), so opening a version again after a
        memory budget closed it does not read its weights again."""
        st = os.fstat(file.fileno()) if not isinstance(file, Path) else os.stat(file)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._digests.get(identity)
        if known is None:
            known = file_digest(file)
            if len(self._digests) >= _DIGESTS_KEPT:
                self._digests.clear()
            self._digests[identity] = known
        return known

    def _serving_in(self, workspace: Path, key: str) -> sandbox.Serving | None:
        if not self.shared_weights:
            return None
        graph, weights = self.store.serving_paths(key)
        # The sandbox runs in a directory of its own: a relative model directory must not be taken from there.
        return sandbox.Serving(os.path.abspath(workspace), graph.name, weights.name)

    def _runtime(self, key: str, shared: bool, file: IO[bytes], workspace: Path | None = None) -> Runtime:
        """Build the version's session: on its serving form (in ``workspace`` while it is being
        published) when ``shared``, else from the bytes of its open ``file``."""
        if shared:
            graph = self.store.serving_paths(key)[0]
            runtime = Runtime(None, self.ort_threads, self.limits, serving=str(workspace / graph.name if workspace else graph))
        else:
            file.seek(0)
            runtime = Runtime(file.read(), self.ort_threads, self.limits)
        trim_heap()
        return runtime

    def _recorded(self, sidecar: dict[str, Any], digest: str) -> tuple[dict[str, Any], str | None] | None:
        """Return the sidecar's load check and its verdict, or None when it decides nothing for these bytes."""
        try:
            return sidecar["load_check"], sandbox.verdict(sidecar.get("load_check"), digest, self.limits)
        except KeyError:
            return None

    def _model(self, key: str, sidecar: dict[str, Any], size: int, digest: str, runtime: Runtime,
               signature: tuple[int, ...] | None, load_check: dict[str, Any] | None) -> Model:
        sequence = sidecar.get("sequence", 0)
        task = features.task_of(sidecar.get("task"), runtime.outputs).document()
        created_at = str(sidecar.get("created_at") or "")
        version = str(sidecar.get("version") or "")
        monitor = None if self.monitoring is None else \
            self.monitoring.monitor(key, (model_of(key), version), digest, created_at, runtime.inputs, runtime.outputs, task)
        return Model(
            id=model_of(key),
            name=str(sidecar.get("name") or model_of(key)),
            version=version,
            key=key,
            path=self.store.display_path(key),
            created_at=created_at,
            size_bytes=size,
            sha256=digest,
            runtime=runtime,
            sequence=sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 0,
            signature=signature,
            load_check=load_check,
            task=task,
            monitor=monitor,
            upload=upload_id(digest, created_at),
            memory_mb=_memory_mb(load_check, runtime.shared),
        )

    def _changed(self, before: dict[str, Model], after: dict[str, Model]) -> None:
        """Report the number of models served when it may have changed, and at the first look (0 included)."""
        if self._observer is not None and (before.keys() != after.keys() or not self._reported):
            self._reported = True
            self._observer.models_changed(len({model.id for model in after.values()}), sum(m.memory_mb for m in after.values()))

    def _swap(self, update: Callable[[dict[str, Model]], None]) -> None:
        with self._lock:
            before = self._models
            models = dict(before)
            update(models)
            self._models = models
        self._changed(before, models)

    # -- the loader thread -------------------------------------------------------------------

    def start(self) -> None:
        """Load in a background thread of this process from now on, starting with the whole directory."""
        self._reread()
        self._loader_pid = os.getpid()
        threading.Thread(target=self._loader, name="nexus-loader", daemon=True).start()

    def _loader(self) -> None:
        self._loader_ident = threading.get_ident()
        last_clean = 0.0
        while True:
            busy = False
            try:
                busy = self._load_pending()
                if time.monotonic() - last_clean >= CLEAN_EVERY_S:
                    last_clean = time.monotonic()
                    self.store.clean_leftovers()
                    if self.monitoring is not None:
                        self.monitoring.sweep()
            except Exception:  # the loader must outlive any one bad look at the disk
                log.exception("loader pass failed")
            # Another worker is checking a model (making its serving form, say): look again soon, not in a second.
            self._wake.wait(BUSY_RETRY_S if busy else LOADER_POLL_S)
            self._wake.clear()
            try:
                self._look_for_unlogged()
            except ApiError:
                pass  # a missing directory: requests say so; keep looking

    # -- writing (each under the model's claim, deciding from the disk, not from this worker's view) --

    def upload(self, model_id: str, name: str, version: str, pending: PendingFile, task: tuple[str | None, str | None] = (None, None),
               reference_file: tuple[str, bytes] | None = None) -> Model:
        """Check a pending upload in the sandbox, publish it as a new version of ``model_id`` and serve it from this worker.

        ``task`` is the monitoring task the uploader declared (kind, output), checked against the model;
        ``reference_file`` (name, bytes) its sample inputs, checked against the model's inputs and kept
        as a sketch. Either one wrong is a BadInput that keeps nothing.
        """
        key = version_key(model_id, version)
        with self.store.claim(model_id):
            stored = self._on_disk(model_id)
            if version in stored:
                raise VersionExists(model_id, version)
            found = file_digest(pending.file)
            digest = found["sha256"]
            with self.store.workspace() as workspace:
                record = sandbox.check(pending.file.fileno(), digest, self.limits, self._serving_in(workspace, key))
                shared = "graph" in record.get("serving", {})
                if not shared and self.shared_weights:
                    log.warning("model served from its bytes: no serving form",
                                extra={"model_id": model_id, "version": version, "reason": record.get("serving", {}).get("error")})
                opening = time.perf_counter()
                runtime = self._runtime(key, shared, pending.file, workspace)
                if self._observer is not None:
                    self._observer.model_loaded(time.perf_counter() - opening)
                sequence = 1 + max((sequence for _, sequence in stored.values()), default=0)
                sidecar = {"name": name, "version": version, "created_at": utc_now(), "sequence": sequence,
                           "task": features.declared(runtime.outputs, *task).document()}
                sketch = None
                if reference_file is not None:
                    sketch = reference.from_upload(*reference_file, features.layout(runtime.inputs), digest)
                model = self._model(key, sidecar, found["size"], digest, runtime, None, record)
                self.store.publish(key, pending, model.sidecar(), self._stored_routing(model_id).document(), sketch,
                                   workspace if shared else None)
            signature = self.store.signature(key)
        model = replace(model, signature=signature)
        self._swap(lambda models: models.__setitem__(key, model))
        if self.budget_mb is not None:
            self._used[key] = next(self._ticks)
            self._evict(0, key)
        log.info("model uploaded", extra={"model_id": model_id, "version": version, "size_bytes": model.size_bytes,
                                          "load_check": record})
        return model

    def set_routing(self, model_id: str, document: object) -> Entry:
        """Check a routing document against the model's versions and store it (every worker follows), or raise BadInput."""
        with self.store.claim(model_id):
            stored = self._on_disk(model_id)
            if not stored:
                raise ModelNotFound(model_id)
            found = routing.parse(document, self._ordered(stored))
            self.store.write_routing(model_id, found.document())
        self.sync()
        log.info("routing changed", extra={"model_id": model_id, "routing": found.document()})
        return self.entry(model_id)

    def set_loaded(self, model_id: str, loaded: bool, version: str | None = None) -> None:
        """Serve a model (or one version) again, or stop serving it in every worker while keeping its files."""
        with self.store.claim(model_id):
            stored = self._on_disk(model_id)
            if not stored:
                raise ModelNotFound(model_id)
            if version is not None and version not in stored:
                raise VersionNotFound(model_id, version, self._ordered(stored))
            keys = [stored[version][0]] if version is not None else [key for key, _ in stored.values()]
            document = self._stored_routing(model_id).document() if self.store.routing_path(model_id).exists() else None
            self.store.set_unloaded(keys, not loaded, document)
        self.sync()
        if loaded:
            entry = self.entry(model_id)
            for key in keys:
                try:
                    self._await(key, model_id, next(v for v, k in entry.keys.items() if k == key))
                except (ModelNotFound, StopIteration):
                    reason = self._failed.get(key, (None, "unknown reason"))[1]
                    raise InvalidModel(f"model '{model_id}' cannot be loaded: {reason}") from None

    def delete_version(self, model_id: str, version: str) -> None:
        """Remove one version, or raise VersionInUse while the model's routing sends it traffic."""
        with self.store.claim(model_id):
            stored = self._on_disk(model_id)
            if not stored:
                raise ModelNotFound(model_id)
            if version not in stored:
                raise VersionNotFound(model_id, version, self._ordered(stored))
            current = self._stored_routing(model_id)
            plan = Plan(current, self._ordered(stored))
            if len(stored) == 1:
                raise VersionInUse(f"version '{version}' is the only version of model '{model_id}'; "
                                   f"DELETE /models/{model_id} removes the model")
            role = "the default" if plan.default == version else "a canary" if current.canary.get(version, 0) > 0 \
                else "a shadow" if current.shadow.get(version, 0) > 0 else None
            if role is not None:
                raise VersionInUse(f"version '{version}' of model '{model_id}' gets traffic as {role}; "
                                   f"move it away first with PUT /models/{model_id}/routing")
            key = stored[version][0]
            uploads = self._uploads([key])
            self.store.remove(key, _without(current, version).document())
        self._forget([key], model_id, uploads)
        self._swap(lambda models: models.pop(key, None))
        log.info("model version deleted", extra={"model_id": model_id, "version": version})

    def delete(self, model_id: str) -> None:
        """Remove ``model_id`` with all its versions from the directory and from this worker, or raise ModelNotFound."""
        with self.store.claim(model_id):
            stored = self._on_disk(model_id)
            if not stored:
                raise ModelNotFound(model_id)
            keys = [key for key, _ in stored.values()]
            uploads = self._uploads(keys)
            routing = self._stored_routing(model_id).document()
            for i, key in enumerate(keys):
                self.store.remove(key, None if i == len(keys) - 1 else routing)  # the last removes the document
        self._forget(keys, model_id, uploads)
        self._swap(lambda models: [models.pop(key, None) for key in keys])
        log.info("model deleted", extra={"model_id": model_id})

    def _forget(self, keys: list[str], model_id: str, uploads: set[str]) -> None:
        """Drop the monitoring counts (every worker's files: one directory each) and the prediction
        records (of those ``uploads``) of deleted versions."""
        if self.monitoring is not None:
            for key in keys:
                self.monitoring.discard(key)
        if self.recorder is not None and uploads:
            self.recorder.forget(model_id, uploads)

    def uploads(self, model_id: str) -> set[str]:
        """The uploads the model's versions are now (see store.upload_id): whose prediction records count."""
        return self._uploads(list(self.entry(model_id).keys.values()))

    def _uploads(self, keys: list[str]) -> set[str]:
        found = set()
        for key in keys:
            model = self._models.get(key)
            if model is not None:
                found.add(model.upload)
                continue
            try:  # not loaded in this worker (yet): its sidecar says which upload it is
                sidecar = self.store.read_sidecar(key)
            except (OSError, ValueError, BadInput):
                continue
            if sidecar.get("sha256"):
                found.add(upload_id(str(sidecar["sha256"]), str(sidecar.get("created_at") or "")))
        return found

    def _on_disk(self, model_id: str) -> dict[str, tuple[str, int]]:
        """Return the model's versions as the directory has them now: version -> (key, sequence). Hold the claim."""
        found: dict[str, tuple[str, int]] = {}
        for stored in self.store.scan():
            if stored.model_id != model_id:
                continue
            for entry in stored.versions:
                try:
                    sequence, version = self._version_of(entry.key, entry.version, entry.signature, self._models)
                except (OSError, ValueError):
                    sequence, version = 0, entry.version or ""
                found[version] = (entry.key, sequence)
        return found

    @staticmethod
    def _ordered(stored: dict[str, tuple[str, int]]) -> list[str]:
        return sorted(stored, key=lambda version: (stored[version][1], version))

    def _stored_routing(self, model_id: str) -> Routing:
        """Return the routing the model's document holds now (none if it has none or it is unusable). Hold the claim."""
        try:
            return routing.parse(self.store.read_routing(model_id) or {}, None)
        except (OSError, ValueError, BadInput):
            return _NO_ROUTING
