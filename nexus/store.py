"""The model directory: the only module that reads or writes model files.

A model ``<id>`` is two files, ``<id>.onnx`` and its sidecar ``<id>.model_info.json``, and it is
visible exactly when the sidecar exists. Every write is a temporary file that is flushed, then
renamed into place, the sidecar last, so a crash leaves either the whole model or nothing.

Work in progress lives in hidden files (names starting with ``.``, which no id may) and each one
is held with an exclusive ``flock`` by the process writing it: a claim ``.<id>.claim`` that makes
that process the only writer of ``<id>`` across workers and replicas, and ``*.tmp`` files.
The kernel drops the lock when its holder dies, so a hidden file nobody holds is a leftover
of a crash and is safe to remove.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from nexus.errors import BadInput, ModelBusy, StorageFull, StorageNotWritable, StorageUnavailable

log = logging.getLogger("nexus.store")

MODEL_SUFFIX = ".onnx"
SIDECAR_SUFFIX = ".model_info.json"
UNLOADED_SUFFIX = ".unloaded"
_CLAIM_SUFFIX = ".claim"
_TMP_SUFFIX = ".tmp"
ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ - not starting with '.'"
_ID_CHARS = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"  # ID_RULE as a regex; <id>.onnx is a safe file name
# The fixed routes in the places a model id goes (/models/<id>, /v2/models/<name>): a model with one of
# these ids could not be reached there, so none may be given to a model (tests/test_store.py holds this
# table to the app's url map). Models already on disk under one are still read and served.
RESERVED_IDS = {"info": "/models/info", "upload": "/models/upload", "stats": "/v2/models/stats"}
# The ids check_id accepts, as a regex for the OpenAPI document: ID_RULE, and not one of RESERVED_IDS.
ID_PATTERN = rf"(?!(?:{'|'.join(sorted(map(re.escape, RESERVED_IDS)))})$){_ID_CHARS}"
_VALID_ID = re.compile(_ID_CHARS).fullmatch
_CHUNK = 1024 * 1024


def check_id(model_id: object) -> str:
    """Return ``model_id`` if it may name a model (ID_RULE, not one of RESERVED_IDS), else raise BadInput."""
    model_id = _stored_id(model_id)
    if model_id in RESERVED_IDS:
        raise BadInput(f"id {model_id!r} is reserved: it names the route {RESERVED_IDS[model_id]}; use another")
    return model_id


def _stored_id(model_id: object) -> str:
    """Return ``model_id`` if it is ID_RULE (what a file in the directory may be named), else raise BadInput.

    Unlike check_id this lets reserved ids through, so models stored under one keep working.
    """
    if not isinstance(model_id, str) or not model_id:
        raise BadInput(f"model id is missing; give {ID_RULE}")
    if _VALID_ID(model_id) is None:
        raise BadInput(f"invalid model id {model_id[:80]!r}: use {ID_RULE}")
    return model_id


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _lock_path(path: Path, create: bool) -> int | None:
    """Open ``path`` and take its exclusive lock; return the fd, or None if someone else holds it.

    Returns None as well when ``create`` is False and the file does not exist. The inode check
    after locking catches a file that a clean-up removed between our open and our lock.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:  # only a missing directory makes creating a file in it fail this way
                raise StorageUnavailable() from None
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)
        if not create:
            return None


@contextmanager
def writing() -> Iterator[None]:
    """Turn a write's OS error into an API error that says what is wrong with the directory."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull() from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageNotWritable() from exc
        if exc.errno == errno.ENOENT:  # what we write is ours; only a vanished directory loses it
            raise StorageUnavailable() from exc
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingFile:
    """A hidden, locked temporary file in the model directory; removed unless published."""

    def __init__(self, directory: Path) -> None:
        while True:
            self.path = directory / f".upload-{secrets.token_hex(8)}{_TMP_SUFFIX}"
            fd = _lock_path(self.path, create=True)
            if fd is not None:
                break
        self.file: IO[bytes] = os.fdopen(fd, "w+b")
        self.published = False

    def size(self) -> int:
        self.file.flush()
        return os.fstat(self.file.fileno()).st_size

    def read_all(self) -> bytes:
        self.file.flush()
        self.file.seek(0)
        return self.file.read()

    def discard(self) -> None:
        """Remove the file unless it was published; always release the lock."""
        if not self.published:
            self.path.unlink(missing_ok=True)
            self.published = True  # nothing left to remove on a second call
        if not self.file.closed:
            self.file.close()


@dataclass(frozen=True)
class StoredModel:
    """What the directory says about one visible model: its id and the identity of its two files."""

    model_id: str
    signature: tuple[int, ...] | None
    unloaded: bool = False


class ModelStore:
    """The model directory on disk (shared by every worker and replica)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def model_path(self, model_id: str) -> Path:
        return self.directory / f"{_stored_id(model_id)}{MODEL_SUFFIX}"

    def sidecar_path(self, model_id: str) -> Path:
        return self.directory / f"{_stored_id(model_id)}{SIDECAR_SUFFIX}"

    def unloaded_path(self, model_id: str) -> Path:
        return self.directory / f"{_stored_id(model_id)}{UNLOADED_SUFFIX}"

    def display_path(self, model_id: str) -> str:
        """Return the model's path relative to the directory's parent, like ``models/iris.onnx``."""
        return f"{self.directory.name}/{model_id}{MODEL_SUFFIX}"

    def ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def dir_stamp(self) -> tuple[int, int]:
        """Return (inode, mtime_ns) of the directory: it changes whenever a model appears or goes."""
        st = os.stat(self.directory)
        return st.st_ino, st.st_mtime_ns

    def exists(self, model_id: str) -> bool:
        return self.sidecar_path(model_id).exists()

    # -- writing -------------------------------------------------------------------------

    def new_pending(self) -> PendingFile:
        """Create a temporary file in the directory for an upload to stream into."""
        with writing():
            return PendingFile(self.directory)

    @contextmanager
    def claim(self, model_id: str) -> Iterator[None]:
        """Be the only writer of ``model_id`` in every worker and replica, or raise ModelBusy."""
        path = self.directory / f".{_stored_id(model_id)}{_CLAIM_SUFFIX}"
        with writing():
            fd = _lock_path(path, create=True)
        if fd is None:
            raise ModelBusy(model_id)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            os.close(fd)

    def publish(self, model_id: str, pending: PendingFile, sidecar: dict[str, Any]) -> None:
        """Move a pending upload into place as ``model_id``, then write its sidecar. Hold the claim."""
        with writing():
            pending.file.flush()
            os.fsync(pending.file.fileno())
            os.replace(pending.path, self.model_path(model_id))
            pending.published = True
            try:
                self._write_sidecar(model_id, sidecar)
            except BaseException:
                self.model_path(model_id).unlink(missing_ok=True)  # no .onnx without its sidecar
                raise
            _fsync_dir(self.directory)

    def _write_sidecar(self, model_id: str, sidecar: dict[str, Any]) -> None:
        tmp = PendingFile(self.directory)
        try:
            tmp.file.write(orjson.dumps(sidecar, option=orjson.OPT_INDENT_2) + b"\n")
            tmp.file.flush()
            os.fsync(tmp.file.fileno())
            os.replace(tmp.path, self.sidecar_path(model_id))
            tmp.published = True
        finally:
            tmp.discard()

    def remove(self, model_id: str) -> None:
        """Remove a model, sidecar first so it stops being visible at once. Hold the claim."""
        self.sidecar_path(model_id).unlink(missing_ok=True)
        self.model_path(model_id).unlink(missing_ok=True)
        self.unloaded_path(model_id).unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def set_unloaded(self, model_id: str, unloaded: bool) -> None:
        """Mark a model as unloaded (kept on disk, served by no worker) or clear the mark. Hold the claim."""
        path = self.unloaded_path(model_id)
        if unloaded:
            path.touch()
        else:
            path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    # -- reading -------------------------------------------------------------------------

    def scan(self) -> list[StoredModel]:
        """List the visible models with a signature that changes whenever either file is replaced."""
        found = []
        with os.scandir(self.directory) as entries:
            names = {e.name for e in entries if not e.name.startswith(".")}
        for name in sorted(n for n in names if n.endswith(SIDECAR_SUFFIX)):
            model_id = name[: -len(SIDECAR_SUFFIX)]
            if _VALID_ID(model_id) is None:
                log.warning("skipping sidecar with an invalid id", extra={"file": name})
                continue
            found.append(StoredModel(model_id, self.signature(model_id), f"{model_id}{UNLOADED_SUFFIX}" in names))
        return found

    def signature(self, model_id: str) -> tuple[int, ...] | None:
        """Return the identity of a model's files and unload mark, or None when a file is missing."""
        try:
            sc = os.stat(self.sidecar_path(model_id))
            mo = os.stat(self.model_path(model_id))
        except FileNotFoundError:
            return None
        unloaded = os.path.exists(self.unloaded_path(model_id))
        return (sc.st_ino, sc.st_mtime_ns, sc.st_size, mo.st_ino, mo.st_mtime_ns, mo.st_size, unloaded)

    def read_sidecar(self, model_id: str) -> dict[str, Any]:
        """Return the sidecar as a dict; raise ValueError with the reason if it is not usable."""
        try:
            data = orjson.loads(self.sidecar_path(model_id).read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"sidecar is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("sidecar is not a JSON object")
        if data.get("id", model_id) != model_id:
            raise ValueError(f"sidecar names id {data.get('id')!r}, not {model_id!r}")
        return data

    def read_model(self, model_id: str) -> bytes:
        return self.model_path(model_id).read_bytes()

    def open_model(self, model_id: str) -> IO[bytes]:
        """Open a model's file for reading (a replacement never changes an open file's bytes)."""
        return open(self.model_path(model_id), "rb")

    def rewrite_sidecar(self, model_id: str, sidecar: dict[str, Any]) -> None:
        """Replace a visible model's sidecar (to add what was measured about it). Hold the claim."""
        with writing():
            self._write_sidecar(model_id, sidecar)
            _fsync_dir(self.directory)

    # -- recovery ------------------------------------------------------------------------

    def clean_leftovers(self) -> list[str]:
        """Remove what crashed writers left behind: unheld temp and claim files, models without sidecar."""
        removed = []
        with os.scandir(self.directory) as entries:
            names = sorted(e.name for e in entries)
        present = set(names)
        for name in names:
            if name.startswith(".") and name.endswith((_TMP_SUFFIX, _CLAIM_SUFFIX)):
                if self._remove_if_unheld(self.directory / name):
                    removed.append(name)
            elif name.endswith((MODEL_SUFFIX, UNLOADED_SUFFIX)):
                model_id = name[: -len(MODEL_SUFFIX if name.endswith(MODEL_SUFFIX) else UNLOADED_SUFFIX)]
                if _VALID_ID(model_id) is None or f"{model_id}{SIDECAR_SUFFIX}" in present:
                    continue
                try:
                    with self.claim(model_id):
                        if not self.exists(model_id):
                            (self.directory / name).unlink(missing_ok=True)
                            removed.append(name)
                except ModelBusy:
                    continue
        if removed:
            log.warning("removed leftovers of interrupted writes", extra={"files": removed})
        return removed

    @staticmethod
    def _remove_if_unheld(path: Path) -> bool:
        fd = _lock_path(path, create=False)
        if fd is None:
            return False
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
