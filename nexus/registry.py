"""The per-worker view of the model directory: id -> loaded model, kept in step with the disk.

Each gunicorn worker holds its own onnxruntime sessions. Before answering, a request makes one
``stat`` of the model directory; when the directory changed since the last look (a model was
added or removed by any worker or replica), the registry re-reads it. Directory timestamps are
coarse, so a look taken less than ``RACY_NS`` after the last change is not trusted and the next
request looks again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import ModuleType
from dataclasses import dataclass, field, replace
from typing import Any

from nexus.errors import InvalidModel, ModelExists, ModelNotFound, ModelUnloaded
from nexus.http import utc_now
from nexus.runtime import Runtime, TensorSpec
from nexus.store import ModelStore, PendingFile, check_id, sha256_of

log = logging.getLogger("nexus.registry")

RACY_NS = 2_000_000_000
SIDECAR_FORMAT = 1


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
        return {"format": SIDECAR_FORMAT, **self.details()}


class Registry:
    """The models this worker serves; the dict is swapped whole under ``_lock``, never edited."""

    def __init__(self, store: ModelStore, ort_threads: int, observer: ModuleType | object | None = None) -> None:
        """``observer``, if given, has ``models_changed(count)`` and ``model_loaded(seconds)``."""
        self.store = store
        self.ort_threads = ort_threads
        self._models: dict[str, Model] = {}
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one sync at a time; loading must not block readers
        self._stamp: tuple[int, int] | None = None
        self._trust_after_ns = 0
        self._pid: int | None = None
        self._failed: dict[str, tuple[tuple[int, ...] | None, str]] = {}  # id -> (signature, reason)
        self._unloaded: frozenset[str] = frozenset()
        self._observer = observer
        self.synced_once = False

    # -- reading ---------------------------------------------------------------------------

    def get(self, model_id: str) -> Model:
        """Return the model, or raise ModelNotFound (after a direct look at the disk)."""
        self.refresh(model_id)
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            check_id(model_id)
            # A write by another worker may be newer than the directory stamp we trust.
            if self.store.exists(model_id):
                self.sync()
                with self._lock:
                    model = self._models.get(model_id)
            if model is None:
                if model_id in self._unloaded:
                    raise ModelUnloaded(model_id)
                raise ModelNotFound(model_id)
        return model

    def find(self, model_id: str) -> Model | None:
        """Return the model, or None."""
        try:
            return self.get(model_id)
        except ModelNotFound:
            return None

    def models(self) -> list[Model]:
        """Return every model, sorted by id."""
        self.refresh()
        with self._lock:
            return [self._models[k] for k in sorted(self._models)]

    def count(self) -> int:
        with self._lock:
            return len(self._models)

    def index(self) -> list[dict[str, str]]:
        """Return every model in the directory with its state: READY, or UNAVAILABLE with the reason."""
        self.refresh()
        with self._lock:
            models = self._models
        rows = []
        for entry in self.store.scan():
            model = models.get(entry.model_id)
            if model is not None:
                rows.append({"name": model.id, "version": model.version, "state": "READY"})
            elif entry.unloaded:
                rows.append({"name": entry.model_id, "state": "UNAVAILABLE", "reason": "unloaded"})
            else:
                reason = self._failed.get(entry.model_id, (None, "not loaded yet"))[1]
                rows.append({"name": entry.model_id, "state": "UNAVAILABLE", "reason": reason})
        return rows

    # -- keeping in step with the disk -------------------------------------------------------

    def refresh(self, model_id: str | None = None) -> None:
        """Re-read the directory if it changed since the last look (one stat when it did not).

        Shortly after a change the directory's stamp proves nothing; then a request for one
        model checks that model's own files (three stats) instead of re-reading everything.
        """
        try:
            stamp = self.store.dir_stamp()
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp == self._stamp and self._pid == os.getpid():
            if time.time_ns() >= self._trust_after_ns:
                return
            if model_id is not None:
                with self._lock:
                    model = self._models.get(model_id)
                if model is not None and model.signature is not None and self.store.signature(model_id) == model.signature:
                    return
        self.sync()

    def sync(self) -> None:
        """Load what appeared or changed in the directory, drop what went away."""
        with self._sync_lock:
            if self._pid != os.getpid():
                # Sessions made before a fork belong to the parent; start over in this process.
                with self._lock:
                    self._models = {}
                self._failed = {}
                self._pid = os.getpid()
            try:
                stamp = self.store.dir_stamp()
                stored = self.store.scan()
            except FileNotFoundError:
                stamp, stored = None, []
            with self._lock:
                current = self._models
            fresh: dict[str, Model] = {}
            for entry in stored:
                known = current.get(entry.model_id)
                if entry.unloaded:
                    continue
                if known is not None and known.signature == entry.signature:
                    fresh[entry.model_id] = known
                elif self._failed.get(entry.model_id, ((),))[0] != entry.signature:
                    model = self._load(entry.model_id, entry.signature)
                    if model is not None:
                        fresh[entry.model_id] = model
            on_disk = {entry.model_id for entry in stored}
            self._failed = {k: v for k, v in self._failed.items() if k not in fresh and k in on_disk}
            self._unloaded = frozenset(entry.model_id for entry in stored if entry.unloaded)
            with self._lock:
                self._models = fresh
            self._stamp = stamp
            # A change within the timestamp's resolution of this look would not move the stamp.
            self._trust_after_ns = (stamp[1] + RACY_NS) if stamp else 0
            self.synced_once = True
        self._changed(current, fresh)

    def _load(self, model_id: str, signature: tuple[int, ...] | None) -> Model | None:
        started = time.perf_counter()
        try:
            if signature is None:
                raise ValueError("the .onnx file next to the sidecar is missing")
            sidecar = self.store.read_sidecar(model_id)
            data = self.store.read_model(model_id)
            digest = sha256_of(data)
            if sidecar.get("sha256") not in (None, digest):
                raise ValueError("the .onnx file does not match the sha256 in its sidecar")
            model = self._model(model_id, sidecar, data, digest, Runtime(data, self.ort_threads), signature)
        except Exception as exc:  # a bad file must never stop the others from loading
            reason = getattr(exc, "message", None) or str(exc)
            self._failed[model_id] = (signature, reason)
            log.error("model skipped", extra={"model_id": model_id, "reason": reason})
            return None
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.model_loaded(seconds)
        log.info("model loaded", extra={"model_id": model_id, "load_ms": round(seconds * 1000, 2)})
        return model

    def _model(self, model_id: str, sidecar: dict[str, Any], data: bytes, digest: str, runtime: Runtime, signature: tuple[int, ...] | None) -> Model:
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

    # -- writing -----------------------------------------------------------------------------

    def upload(self, model_id: str, name: str, version: str, pending: PendingFile) -> Model:
        """Validate a pending upload, publish it as ``model_id`` and serve it from this worker."""
        with self.store.claim(model_id):
            if self.store.exists(model_id):
                raise ModelExists(model_id)
            data = pending.read_all()
            runtime = Runtime(data, self.ort_threads)
            sidecar = {"name": name, "version": version, "created_at": utc_now()}
            model = self._model(model_id, sidecar, data, sha256_of(data), runtime, None)
            self.store.publish(model_id, pending, model.sidecar())
            signature = self.store.signature(model_id)
        model = replace(model, signature=signature)
        self._swap(lambda models: models.__setitem__(model_id, model))
        log.info("model uploaded", extra={"model_id": model_id, "size_bytes": model.size_bytes})
        return model

    def set_loaded(self, model_id: str, loaded: bool) -> None:
        """Serve a model again, or stop serving it in every worker while keeping its files."""
        with self.store.claim(model_id):
            if not self.store.exists(model_id):
                raise ModelNotFound(model_id)
            self.store.set_unloaded(model_id, not loaded)
        self.sync()
        if loaded and self.find(model_id) is None:
            reason = self._failed.get(model_id, (None, "unknown reason"))[1]
            raise InvalidModel(f"model '{model_id}' cannot be loaded: {reason}")

    def delete(self, model_id: str) -> None:
        """Remove ``model_id`` from the directory and from this worker, or raise ModelNotFound."""
        with self.store.claim(model_id):
            if not self.store.exists(model_id):
                raise ModelNotFound(model_id)
            self.store.remove(model_id)
        self._swap(lambda models: models.pop(model_id, None))
        log.info("model deleted", extra={"model_id": model_id})
