"""The per-worker view of the model directory: id -> loaded model, kept in step with the disk.

Each gunicorn worker holds its own onnxruntime sessions. Before answering, a request makes one
``stat`` of the model directory; when the directory changed since the last look (a model was
added or removed by any worker or replica), the registry re-reads it. Directory timestamps are
coarse, so a look taken less than ``RACY_NS`` after the last change is not trusted and the next
request looks again.

Loading is off the request path once ``start()`` has run (in gunicorn's workers): a re-read only
notes what must be loaded, and a loader thread loads it, so a request for model A never waits
for model B. A request for a model still loading waits for it up to ``load_wait_s``, then gets
a 503 with ``Retry-After``. A changed model is dropped at once and reloaded, never served stale.
Without ``start()`` (tests, scripts), a re-read loads what it found in the calling thread.

No worker builds a session of bytes that were not measured: a model whose sidecar has no
``load_check`` of its bytes (written by an older release, or by hand) is first opened in the
sandbox by whichever worker takes its claim, and the record is written to its sidecar.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from nexus import sandbox
from nexus.config import Limits, Settings
from nexus.errors import (
    ApiError,
    InvalidModel,
    ModelBusy,
    ModelExists,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    ModelUnloaded,
    StorageUnavailable,
)
from nexus.clock import utc_now
from nexus.runtime import Runtime, TensorSpec
from nexus.store import ModelStore, PendingFile, check_id, sha256_of

log = logging.getLogger("nexus.registry")

RACY_NS = 2_000_000_000
SIDECAR_FORMAT = 1
LOADER_POLL_S = 1.0  # the loader looks at the directory this often even when no request comes
CLEAN_EVERY_S = 30.0  # and removes leftovers of dead writers (another replica's, say) this often


@dataclass(frozen=True)
class Model:
    """A model this worker can serve: what its sidecar says plus a live session."""

    id: str
    name: str
    version: str
    path: str
    created_at: str
    size_bytes: int
    sha256: str
    runtime: Runtime = field(repr=False, compare=False)
    signature: tuple[int, ...] | None = field(default=None, compare=False)
    load_check: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.runtime.inputs

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
        }

    def sidecar(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, **self.details(), "load_check": self.load_check}


class _Busy(Exception):
    """Another writer holds the model's claim (it is checking or writing it); try again later."""


class Registry:
    """The models this worker serves; the dicts are swapped whole under ``_lock``, never edited."""

    def __init__(self, store: ModelStore, ort_threads: int, observer: ModuleType | object | None = None,
                 limits: Limits | None = None, load_wait_s: float = 5) -> None:
        """``observer``, if given, has ``models_changed(count)`` and ``model_loaded(seconds)``."""
        self.store = store
        self.ort_threads = ort_threads
        self.limits = limits or Settings().limits
        self.load_wait_s = load_wait_s
        self._models: dict[str, Model] = {}
        self._pending: dict[str, tuple[tuple[int, ...] | None, threading.Event]] = {}  # id -> (signature, loaded)
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one re-read at a time; loading happens outside it
        self._load_lock = threading.Lock()  # one loader at a time, whichever thread it is
        self._stamp: tuple[int, int] | None = None
        self._trust_after_ns = 0
        self._pid: int | None = None
        self._failed: dict[str, tuple[tuple[int, ...] | None, str]] = {}  # id -> (signature, reason)
        self._unloaded: frozenset[str] = frozenset()
        self._missing = False
        self._observer = observer
        self._wake = threading.Event()
        self._loader_pid: int | None = None
        self.synced_once = False

    # -- reading ---------------------------------------------------------------------------

    def get(self, model_id: str) -> Model:
        """Return the model, or raise ModelNotFound (after a direct look at the disk)."""
        self.refresh(model_id)
        model = self._models.get(model_id)
        if model is None:
            check_id(model_id)
            # A write by another worker may be newer than the directory stamp we trust.
            if model_id not in self._pending and self.store.exists(model_id):
                self.sync()
            model = self._await(model_id)
        return model

    def find(self, model_id: str) -> Model | None:
        """Return the model, or None."""
        try:
            return self.get(model_id)
        except ModelNotFound:
            return None

    def models(self) -> list[Model]:
        """Return every model, sorted by id, after waiting (bounded) for those this worker is loading."""
        self.refresh()
        deadline = time.monotonic() + self.load_wait_s
        with self._lock:
            pending = list(self._pending.values())
        for _, done in pending:
            if not self._wait(done, deadline - time.monotonic()):
                break  # the rest are listed once loaded; a listing never waits longer than one model would
        with self._lock:
            return [self._models[k] for k in sorted(self._models)]

    def count(self) -> int:
        """Return how many models this worker serves or is loading, in step with the directory; never waits."""
        self.refresh()
        with self._lock:
            return len(self._models.keys() | self._pending.keys())

    def index(self) -> list[dict[str, str]]:
        """Return every model in the directory with its state: READY, or UNAVAILABLE with the reason."""
        self.refresh()
        with self._lock:
            models, pending = self._models, self._pending
        rows = []
        for entry in self.store.scan():
            model = models.get(entry.model_id)
            if model is not None:
                rows.append({"name": model.id, "version": model.version, "state": "READY"})
            elif entry.unloaded:
                rows.append({"name": entry.model_id, "state": "UNAVAILABLE", "reason": "unloaded"})
            elif entry.model_id in pending:
                rows.append({"name": entry.model_id, "state": "LOADING", "reason": "loading"})
            else:
                reason = self._failed.get(entry.model_id, (None, "not loaded yet"))[1]
                rows.append({"name": entry.model_id, "state": "UNAVAILABLE", "reason": reason})
        return rows

    def _await(self, model_id: str) -> Model:
        """Wait (bounded) for a model this worker is loading; raise the error that says why there is none."""
        with self._lock:
            waiting = self._pending.get(model_id)
        if waiting is not None and not self._wait(waiting[1], self.load_wait_s):
            raise ModelLoading(model_id, max(1, round(self.load_wait_s)))
        model = self._models.get(model_id)
        if model is not None:
            return model
        if self._missing:
            raise StorageUnavailable()
        if model_id in self._unloaded:
            raise ModelUnloaded(model_id)
        if model_id in self._failed:
            raise ModelUnavailable(model_id, self._failed[model_id][1])
        raise ModelNotFound(model_id)

    def _wait(self, loaded: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for a load the loader thread does; without one, load here at once."""
        if self._loader_pid != os.getpid():
            self._load_pending()
            return True
        return loaded.wait(max(0.0, seconds))

    # -- keeping in step with the disk -------------------------------------------------------

    def refresh(self, model_id: str | None = None) -> None:
        """Re-read the directory if it changed since the last look (one stat when it did not).

        Shortly after a change the directory's stamp proves nothing; then a request for one
        model checks that model's own files (three stats) instead of re-reading everything.
        """
        try:
            stamp = self.store.dir_stamp()
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp and self._pid == os.getpid():
            if time.time_ns() >= self._trust_after_ns:
                return
            if model_id is not None:
                model = self._models.get(model_id)
                if model is not None and model.signature is not None and self.store.signature(model_id) == model.signature:
                    return
        self.sync()

    def sync(self) -> None:
        """Re-read the directory: drop what went away or changed, note what must be loaded, load it.

        With the loader thread running, loading is left to it; otherwise it happens here.
        """
        self._reread()
        if self._loader_pid == os.getpid():
            self._wake.set()
        else:
            self._load_pending()
        if self._missing:
            raise StorageUnavailable()

    def _reread(self) -> None:
        with self._sync_lock:
            if self._pid != os.getpid():
                # Sessions made before a fork belong to the parent; start over in this process.
                with self._lock:
                    self._models, self._pending = {}, {}
                self._failed = {}
                self._pid = os.getpid()
            try:
                stamp = self.store.dir_stamp()
                stored = self.store.scan()
                self._missing = False
            except OSError:  # the directory is gone or unreadable: serve nothing, say why
                stamp, stored = None, []
                self._missing = True
            with self._lock:
                current, pending = self._models, self._pending
            fresh: dict[str, Model] = {}
            wanted: dict[str, tuple[tuple[int, ...] | None, threading.Event]] = {}
            for entry in stored:
                if entry.unloaded:
                    continue
                known = current.get(entry.model_id)
                if known is not None and known.signature == entry.signature:
                    fresh[entry.model_id] = known
                elif self._failed.get(entry.model_id, ((),))[0] != entry.signature:
                    already = pending.get(entry.model_id)
                    wanted[entry.model_id] = already if already and already[0] == entry.signature else (entry.signature, threading.Event())
            on_disk = {entry.model_id for entry in stored}
            self._failed = {k: v for k, v in self._failed.items() if k not in fresh and k in on_disk}
            self._unloaded = frozenset(entry.model_id for entry in stored if entry.unloaded)
            with self._lock:
                self._models, self._pending = fresh, wanted
            for model_id, (_, done) in pending.items():
                if model_id not in wanted:
                    done.set()  # nobody waits for a model that went away
            self._stamp = stamp
            # A change within the timestamp's resolution of this look would not move the stamp.
            self._trust_after_ns = (stamp[1] + RACY_NS) if stamp else 0
            if not wanted:
                self.synced_once = True
        self._changed(current, fresh)

    def _load_pending(self) -> None:
        """Load every model noted as wanted, one at a time, swapping each in as soon as it is ready."""
        with self._load_lock:
            with self._lock:
                work = list(self._pending.items())
            busy = False
            for model_id, (signature, done) in work:
                try:
                    model = self._load(model_id, signature)
                except _Busy:
                    busy = True
                    continue
                with self._lock:
                    if self._pending.get(model_id, (None, None))[1] is not done:
                        continue  # changed or removed while we loaded it: the next re-read decides
                    before = self._models
                    if model is not None:
                        self._models = {**before, model_id: model}
                    self._pending = {k: v for k, v in self._pending.items() if k != model_id}
                done.set()
                self._changed(before, self._models)
            if not busy:
                self.synced_once = True

    def _load(self, model_id: str, signature: tuple[int, ...] | None) -> Model | None:
        started = time.perf_counter()
        try:
            if signature is None:
                raise ValueError("the .onnx file next to the sidecar is missing")
            sidecar = self.store.read_sidecar(model_id)
            with self.store.open_model(model_id) as file:
                data = file.read()
                digest = sha256_of(data)
                if sidecar.get("sha256") != digest:
                    raise ValueError("the .onnx file does not match the sha256 in its sidecar" if "sha256" in sidecar
                                     else "the sidecar does not name the model's sha256, so its file cannot be verified")
                record, reason = self._admit(model_id, sidecar, digest, file.fileno())
            if reason is not None:
                raise ValueError(reason)
            model = self._model(model_id, sidecar, data, digest, Runtime(data, self.ort_threads, self.limits), signature, record)
        except _Busy:
            raise
        except FileNotFoundError:  # deleted between the directory's listing and this read: not an error
            log.debug("model went away while loading", extra={"model_id": model_id})
            return None
        except Exception as exc:  # a bad file must never stop the others from loading
            reason = getattr(exc, "message", None) or str(exc)
            self._failed[model_id] = (signature, reason)
            log.warning("model skipped", extra={"model_id": model_id, "reason": reason})
            return None
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.model_loaded(seconds)
        log.info("model loaded", extra={"model_id": model_id, "load_ms": round(seconds * 1000, 2)})
        return model

    def _admit(self, model_id: str, sidecar: dict[str, Any], digest: str, fd: int) -> tuple[dict[str, Any], str | None]:
        """Return the model's load check and why it may not be served (None if it may).

        Without a record of these bytes, measure them in the sandbox under the model's claim
        and keep the record in the sidecar, so the other workers and replicas need not.
        """
        decided = self._recorded(sidecar, digest)
        if decided is not None:
            return decided
        try:
            with self.store.claim(model_id):
                current = self.store.read_sidecar(model_id)
                decided = self._recorded(current, digest)  # another worker may have measured it while we waited
                if decided is not None:
                    return decided
                try:
                    record = sandbox.check(fd, digest, self.limits)
                except ApiError as exc:
                    record = sandbox.refusal_record(exc, digest, self.limits)
                self.store.rewrite_sidecar(model_id, {**current, "load_check": record})
                log.info("model checked", extra={"model_id": model_id, "load_check": record})
                return record, sandbox.verdict(record, digest, self.limits)
        except ModelBusy:
            raise _Busy() from None

    def _recorded(self, sidecar: dict[str, Any], digest: str) -> tuple[dict[str, Any], str | None] | None:
        """Return the sidecar's load check and its verdict, or None when it decides nothing for these bytes."""
        try:
            return sidecar["load_check"], sandbox.verdict(sidecar.get("load_check"), digest, self.limits)
        except KeyError:
            return None

    def _model(self, model_id: str, sidecar: dict[str, Any], data: bytes, digest: str, runtime: Runtime,
               signature: tuple[int, ...] | None, load_check: dict[str, Any] | None) -> Model:
        return Model(
            id=model_id,
            name=str(sidecar.get("name") or model_id),
            version=str(sidecar.get("version") or ""),
            path=self.store.display_path(model_id),
            created_at=str(sidecar.get("created_at") or ""),
            size_bytes=len(data),
            sha256=digest,
            runtime=runtime,
            signature=signature,
            load_check=load_check,
        )

    def _changed(self, before: dict[str, Model], after: dict[str, Model]) -> None:
        if self._observer is not None and before.keys() != after.keys():
            self._observer.models_changed(len(after))

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
        last_clean = 0.0
        while True:
            try:
                self._load_pending()
                if time.monotonic() - last_clean >= CLEAN_EVERY_S:
                    last_clean = time.monotonic()
                    self.store.clean_leftovers()
            except Exception:  # the loader must outlive any one bad look at the disk
                log.exception("loader pass failed")
            self._wake.wait(LOADER_POLL_S)
            self._wake.clear()
            try:
                self.refresh()
            except ApiError:
                pass  # a missing directory: requests say so; keep looking

    # -- writing -----------------------------------------------------------------------------

    def upload(self, model_id: str, name: str, version: str, pending: PendingFile) -> Model:
        """Check a pending upload in the sandbox, publish it as ``model_id`` and serve it from this worker."""
        with self.store.claim(model_id):
            if self.store.exists(model_id):
                raise ModelExists(model_id)
            data = pending.read_all()
            digest = sha256_of(data)
            record = sandbox.check(pending.file.fileno(), digest, self.limits)
            runtime = Runtime(data, self.ort_threads, self.limits)
            sidecar = {"name": name, "version": version, "created_at": utc_now()}
            model = self._model(model_id, sidecar, data, digest, runtime, None, record)
            self.store.publish(model_id, pending, model.sidecar())
            signature = self.store.signature(model_id)
        model = replace(model, signature=signature)
        self._swap(lambda models: models.__setitem__(model_id, model))
        log.info("model uploaded", extra={"model_id": model_id, "size_bytes": model.size_bytes, "load_check": record})
        return model

    def set_loaded(self, model_id: str, loaded: bool) -> None:
        """Serve a model again, or stop serving it in every worker while keeping its files."""
        with self.store.claim(model_id):
            if not self.store.exists(model_id):
                raise ModelNotFound(model_id)
            self.store.set_unloaded(model_id, not loaded)
        self.sync()
        if loaded:
            try:
                self._await(model_id)
            except ModelNotFound:
                reason = self._failed.get(model_id, (None, "unknown reason"))[1]
                raise InvalidModel(f"model '{model_id}' cannot be loaded: {reason}") from None

    def delete(self, model_id: str) -> None:
        """Remove ``model_id`` from the directory and from this worker, or raise ModelNotFound."""
        with self.store.claim(model_id):
            if not self.store.exists(model_id):
                raise ModelNotFound(model_id)
            self.store.remove(model_id)
        self._swap(lambda models: models.pop(model_id, None))
        log.info("model deleted", extra={"model_id": model_id})
