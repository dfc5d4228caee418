"""The model directory: the only module that reads or writes model files.

A model ``<id>`` has one or more versions and one routing document ``<id>.routing.json`` (which
version answers; ``nexus.routing``). Version ``<v>`` is two files under the key ``<id>@<v>``:
``<id>@<v>.onnx`` and its sidecar ``<id>@<v>.model_info.json``, and it is visible exactly when the
sidecar exists. A model stored before versions existed keeps its files under the key ``<id>``
(``<id>.onnx``, ``<id>.model_info.json``) and is served as the single version its sidecar names,
so a directory written by an older release loads unchanged.

Every write is a temporary file that is flushed, then renamed into place, the sidecar last, so a
crash leaves either the whole version or nothing. Every write to a model ends by writing its
routing document again, so a reader that checks one model's files (the registry does, while
the directory's timestamp proves nothing) sees that document change with any of them.

Work in progress lives in hidden files (names starting with ``.``, which no id may) and each one
is held with an exclusive ``flock`` by the process writing it: a claim ``.<id>.claim`` that makes
that process the only writer of ``<id>`` across workers and replicas, and ``*.tmp`` files.
The kernel drops the lock when its holder dies, so a hidden file nobody holds is a leftover
of a crash and is safe to remove.

Every write ends by appending the keys it touched to the directory's change log
(``changes.log``: a line ``<id> <key>...`` per write, under an ``flock``). A worker that follows
the log's size learns what changed by reading the new lines and looking at those versions only,
so a change costs it work in proportion to the change, not to the directory. Past
``CHANGES_MAX_BYTES`` a writer starts a new log (a new file renamed into place); a reader that
finds another file there reads the whole directory once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
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
ROUTING_SUFFIX = ".routing.json"
REFERENCE_SUFFIX = ".reference.json"  # a version's monitoring reference: a sketch of sample inputs, never rows
# A version's serving form, derived by the server from its .onnx (runtime.derive), never sent by a client:
# the optimized graph, and the weights file every worker maps (one copy per machine).
SERVING_SUFFIX = ".serving"
SERVING_WEIGHTS_SUFFIX = ".serving.weights"
KEY_SEPARATOR = "@"  # in no id or version, so a key <id>@<version> splits one way
CHANGES_FILE = "changes.log"  # the change log: no key ends this way, so it is no model's file
CHANGES_MAX_BYTES = 1 << 20
_CLAIM_SUFFIX = ".claim"
_TMP_SUFFIX = ".tmp"
# The files of one version, and a model's routing document (longer suffixes first where one ends another).
_VERSION_FILES = (ROUTING_SUFFIX, MODEL_SUFFIX, UNLOADED_SUFFIX, REFERENCE_SUFFIX, SERVING_WEIGHTS_SUFFIX, SERVING_SUFFIX)
ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ - not starting with '.'"
_ID_CHARS = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"  # ID_RULE as a regex; <id>.onnx is a safe file name
# The fixed routes in the places a model id goes (/models/<id>, /v2/models/<name>): a model with one of
# these ids could not be reached there, so none may be given to a model (tests/test_store.py holds this
# table to the app's url map). Models already on disk under one are still read and served.
RESERVED_IDS = {"info": "/models/info", "upload": "/models/upload", "stats": "/v2/models/stats"}
# The ids check_id accepts, as a regex for the OpenAPI document: ID_RULE, and not one of RESERVED_IDS.
ID_PATTERN = rf"(?!(?:{'|'.join(sorted(map(re.escape, RESERVED_IDS)))})$){_ID_CHARS}"
_VALID_ID = re.compile(_ID_CHARS).fullmatch
VERSION_RULE = "1-64 characters of A-Z a-z 0-9 . _ + - not starting with '.'"
VERSION_PATTERN = r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}"  # VERSION_RULE as a regex; safe in a file name
_VALID_VERSION = re.compile(VERSION_PATTERN).fullmatch
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


def check_version(version: object) -> str:
    """Return ``version`` if a new version may be uploaded under it (VERSION_RULE), else raise BadInput."""
    if not isinstance(version, str) or _VALID_VERSION(version) is None:
        shown = repr(version[:80]) if isinstance(version, str) else "missing"
        raise BadInput(f"invalid version {shown}: use {VERSION_RULE}, like v1.0.0")
    return version


def version_key(model_id: str, version: str) -> str:
    """Return the key (file stem) of a model's version, like ``iris@v2``."""
    return f"{model_id}{KEY_SEPARATOR}{version}"


def split_key(key: str) -> tuple[str, str | None] | None:
    """Return (model id, version) of a file stem; version None for a model stored before versions.

    Return None when the stem is no key this store writes.
    """
    model_id, separator, version = key.partition(KEY_SEPARATOR)
    if _VALID_ID(model_id) is None or (separator and _VALID_VERSION(version) is None):
        return None
    return model_id, (version if separator else None)


def model_of(key: str) -> str:
    """Return the model id of a key (file stem) this store wrote."""
    return key.partition(KEY_SEPARATOR)[0]


def _valid_key(key: str) -> str:
    if split_key(key) is None:
        raise BadInput(f"invalid model key {key[:80]!r}")
    return key


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
        except IsADirectoryError:  # a workspace: a directory locks the same way, opened for reading
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:  # a clean-up took it before we could lock it
                return None
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
class StoredVersion:
    """What the directory says about one visible version: its key and the identity of its files."""

    key: str
    model_id: str
    version: str | None  # from the file name; None for a model stored before versions (its sidecar names it)
    signature: tuple[int, ...] | None
    unloaded: bool = False


@dataclass(frozen=True)
class StoredModel:
    """One visible model: its versions (in key order) and the identity of its routing document."""

    model_id: str
    versions: tuple[StoredVersion, ...]
    routing: tuple[int, ...] | None  # None: no routing document (the newest version answers)


class ModelStore:
    """The model directory on disk (shared by every worker and replica)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def model_path(self, key: str) -> Path:
        return self.directory / f"{_valid_key(key)}{MODEL_SUFFIX}"

    def sidecar_path(self, key: str) -> Path:
        return self.directory / f"{_valid_key(key)}{SIDECAR_SUFFIX}"

    def unloaded_path(self, key: str) -> Path:
        return self.directory / f"{_valid_key(key)}{UNLOADED_SUFFIX}"

    def reference_path(self, key: str) -> Path:
        return self.directory / f"{_valid_key(key)}{REFERENCE_SUFFIX}"

    def serving_paths(self, key: str) -> tuple[Path, Path]:
        """Return the paths of a version's serving form: its graph, and its weights file (named in the graph)."""
        key = _valid_key(key)
        return self.directory / f"{key}{SERVING_SUFFIX}", self.directory / f"{key}{SERVING_WEIGHTS_SUFFIX}"

    def routing_path(self, model_id: str) -> Path:
        return self.directory / f"{_stored_id(model_id)}{ROUTING_SUFFIX}"

    def display_path(self, key: str) -> str:
        """Return a version's path relative to the directory's parent, like ``models/iris@v1.onnx``."""
        return f"{self.directory.name}/{key}{MODEL_SUFFIX}"

    def ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def dir_stamp(self) -> tuple[int, int]:
        """Return (inode, mtime_ns) of the directory: it changes whenever a model appears or goes."""
        st = os.stat(self.directory)
        return st.st_ino, st.st_mtime_ns

    def exists(self, key: str) -> bool:
        """Return whether the version stored under ``key`` is visible."""
        return self.sidecar_path(key).exists()

    def has_model(self, model_id: str) -> bool:
        """Return whether ``model_id`` has a routing document or a version stored before versions existed.

        Every model this release writes has its routing document from its first upload on, so
        this takes two stats, where finding its versions would take a listing.
        """
        return self.routing_path(model_id).exists() or self.exists(model_id)

    # -- writing -------------------------------------------------------------------------

    def new_pending(self) -> PendingFile:
        """Create a temporary file in the directory for an upload to stream into."""
        with writing():
            return PendingFile(self.directory)

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """Yield a hidden, locked, empty directory in the model directory for a serving form to be
        written into (by the sandbox); its files are moved into place by ``publish`` or
        ``publish_serving``, and whatever is left is removed."""
        with writing():
            while True:
                path = self.directory / f".serving-{secrets.token_hex(8)}{_TMP_SUFFIX}"
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    continue
                fd = _lock_path(path, create=False)
                if fd is not None:
                    break
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def _place_serving(self, key: str, workspace: Path | None) -> None:
        """Move the serving form written in ``workspace`` into place for ``key`` (weights first: the
        graph names them); with None, remove any serving form ``key`` has."""
        for path in reversed(self.serving_paths(key)) if workspace is not None else self.serving_paths(key):
            if workspace is None:
                path.unlink(missing_ok=True)
                continue
            written = workspace / path.name
            with open(written, "rb") as file:
                os.fsync(file.fileno())
            os.chmod(written, 0o444)  # mapped by every worker: never to be edited in place
            os.replace(written, path)

    def publish_serving(self, key: str, workspace: Path, sidecar: dict[str, Any]) -> None:
        """Put a rebuilt serving form of visible version ``key`` in place, then its sidecar ``sidecar``
        that describes it. Hold the model's claim."""
        with writing():
            self._place_serving(key, workspace)
            self._write_json(self.sidecar_path(key), sidecar)
            _fsync_dir(self.directory)
            self._note(model_of(key), key)

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

    def publish(self, key: str, pending: PendingFile, sidecar: dict[str, Any], routing: dict[str, Any],
                reference: dict[str, Any] | None = None, serving: Path | None = None) -> None:
        """Move a pending upload into place as version ``key`` with its monitoring ``reference`` and the
        serving form written in the workspace ``serving`` (each if given), write its sidecar, then the
        model's routing document ``routing``. Hold the model's claim."""
        model_id = model_of(_valid_key(key))
        with writing():
            first = not self.routing_path(model_id).exists()
            if first:
                self._write_json(self.routing_path(model_id), routing)  # has_model is true from the first file on
            try:
                if reference is not None:
                    self._write_json(self.reference_path(key), reference)  # in place before the version is visible
                else:
                    self.reference_path(key).unlink(missing_ok=True)  # a deleted namesake's, left by a crash
                self._place_serving(key, serving)
                pending.file.flush()
                os.fsync(pending.file.fileno())
                os.replace(pending.path, self.model_path(key))
                pending.published = True
                try:
                    self._write_json(self.sidecar_path(key), sidecar)
                except BaseException:
                    self.model_path(key).unlink(missing_ok=True)  # no .onnx without its sidecar
                    raise
            except BaseException:
                self.reference_path(key).unlink(missing_ok=True)
                self._place_serving(key, None)
                if first:
                    self.routing_path(model_id).unlink(missing_ok=True)  # nor a routing document without a version
                raise
            self._write_json(self.routing_path(model_id), routing)
            _fsync_dir(self.directory)
            self._note(model_id, key)

    def _write_json(self, path: Path, document: dict[str, Any]) -> None:
        tmp = PendingFile(self.directory)
        try:
            tmp.file.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
            tmp.file.flush()
            os.fsync(tmp.file.fileno())
            os.replace(tmp.path, path)
            tmp.published = True
        finally:
            tmp.discard()

    def write_routing(self, model_id: str, routing: dict[str, Any]) -> None:
        """Replace a model's routing document (every worker follows it on its next request). Hold the claim."""
        with writing():
            self._write_json(self.routing_path(model_id), routing)
            _fsync_dir(self.directory)
            self._note(model_id)

    def remove(self, key: str, routing: dict[str, Any] | None) -> None:
        """Remove one version, sidecar first so it stops being visible at once, then write the model's
        routing document ``routing``, or remove it when ``routing`` is None (the model's last version).
        Hold the model's claim."""
        with writing():
            self.sidecar_path(key).unlink(missing_ok=True)
            self.model_path(key).unlink(missing_ok=True)
            self.unloaded_path(key).unlink(missing_ok=True)
            self.reference_path(key).unlink(missing_ok=True)
            self._place_serving(key, None)
            model_id = model_of(_valid_key(key))
            if routing is None:
                self.routing_path(model_id).unlink(missing_ok=True)
            else:
                self._write_json(self.routing_path(model_id), routing)
            _fsync_dir(self.directory)
            self._note(model_id, key)

    def add_reference(self, key: str, sha256: str, reference: dict[str, Any], usable: Callable[[dict[str, Any] | None], bool]) -> bool:
        """Store a reference collected from predictions for version ``key``, unless the version is gone,
        holds other bytes than ``sha256``, or has a reference already that ``usable`` accepts (one it
        does not, or an unreadable one, is replaced). Takes the model's claim (ModelBusy)."""
        with self.claim(model_of(_valid_key(key))):
            try:
                if self.read_sidecar(key).get("sha256") != sha256:
                    return False
            except (OSError, ValueError):
                return False
            try:
                if usable(self.read_reference(key)):
                    return False
            except (OSError, ValueError):
                pass  # unreadable: replaced
            with writing():
                self._write_json(self.reference_path(key), reference)
                _fsync_dir(self.directory)
            return True

    def set_unloaded(self, keys: list[str], unloaded: bool, routing: dict[str, Any] | None) -> None:
        """Mark versions as unloaded (kept on disk, served by no worker) or clear the mark, then write
        the model's routing document ``routing`` again (None: it has none). Hold the model's claim."""
        with writing():
            for key in keys:
                path = self.unloaded_path(key)
                if unloaded:
                    path.touch()
                else:
                    path.unlink(missing_ok=True)
            if routing is not None:
                self._write_json(self.routing_path(model_of(_valid_key(keys[0]))), routing)
            _fsync_dir(self.directory)
            self._note(model_of(keys[0]), *keys)


    # -- reading -------------------------------------------------------------------------

    def scan(self, model_id: str | None = None) -> list[StoredModel]:
        """List the visible models (or only ``model_id``) and their versions, with signatures that change
        whenever a file is replaced."""
        prefixes = (f"{model_id}{KEY_SEPARATOR}", f"{model_id}.") if model_id is not None else ("",)
        with os.scandir(self.directory) as entries:
            names = {e.name for e in entries if not e.name.startswith(".") and e.name.startswith(prefixes)}
        versions: dict[str, list[StoredVersion]] = {}
        for name in sorted(n for n in names if n.endswith(SIDECAR_SUFFIX)):
            key = name[: -len(SIDECAR_SUFFIX)]
            parts = split_key(key)
            if parts is None:
                log.warning("skipping sidecar with an invalid id or version", extra={"file": name})
                continue
            if model_id is not None and parts[0] != model_id:
                continue
            stored = StoredVersion(key, parts[0], parts[1], self.signature(key), f"{key}{UNLOADED_SUFFIX}" in names)
            versions.setdefault(parts[0], []).append(stored)
        return [StoredModel(found_id, tuple(found), self._stat(self.routing_path(found_id))) for found_id, found in versions.items()]

    def look(self, model_id: str, keys: set[str]) -> StoredModel | None:
        """Return model ``model_id`` as the versions ``keys`` make it now (those still visible), without
        listing the directory; None when none of them is."""
        found = []
        for key in sorted(keys):
            signature = self.signature(key)
            if signature is None and not self.exists(key):
                continue
            parts = split_key(key)
            found.append(StoredVersion(key, model_id, parts[1] if parts else None, signature,
                                       signature[-1] if signature else os.path.exists(self.unloaded_path(key))))
        return StoredModel(model_id, tuple(found), self._stat(self.routing_path(model_id))) if found else None

    # -- the change log ------------------------------------------------------------------

    def changes_mark(self) -> tuple[int, int] | None:
        """Return (inode, size) of the change log, or None when there is none: one stat."""
        try:
            st = os.stat(self.directory / CHANGES_FILE)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size

    def read_changes(self, mark: tuple[int, int], upto: int) -> tuple[dict[str, set[str]], int] | None:
        """Return what the log at ``mark`` (inode, offset) says changed up to byte ``upto`` (model id ->
        keys) and the offset read to (a line still being written is left for the next read); None when
        the log is another file than ``mark``'s (then the whole directory must be read)."""
        try:
            fd = os.open(self.directory / CHANGES_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_ino != mark[0]:
                return None
            data = os.pread(fd, max(0, upto - mark[1]), mark[1])
        finally:
            os.close(fd)
        complete = data.rfind(b"\n") + 1
        changed: dict[str, set[str]] = {}
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            model_id, *keys = line.split()
            if _VALID_ID(model_id) is not None:
                changed.setdefault(model_id, set()).update(k for k in keys if split_key(k) is not None and model_of(k) == model_id)
        return changed, mark[1] + complete

    def _note(self, model_id: str, *keys: str) -> None:
        """Append one write's line to the change log (starting a new log when it is full)."""
        line = " ".join((model_id, *keys)).encode() + b"\n"
        path = self.directory / CHANGES_FILE
        while True:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, path):
                    continue  # another writer started a new log meanwhile: append to that one
                if os.fstat(fd).st_size + len(line) > CHANGES_MAX_BYTES:
                    fresh = PendingFile(self.directory)
                    fresh.file.write(line)
                    fresh.file.flush()
                    os.replace(fresh.path, path)
                    fresh.published = True
                    fresh.discard()
                else:
                    os.write(fd, line)
                return
            finally:
                os.close(fd)

    def signature(self, key: str) -> tuple[int, ...] | None:
        """Return the identity of a version's files and unload mark, or None when a file is missing."""
        try:
            sc = os.stat(self.sidecar_path(key))
            mo = os.stat(self.model_path(key))
        except FileNotFoundError:
            return None
        unloaded = os.path.exists(self.unloaded_path(key))
        return (sc.st_ino, sc.st_mtime_ns, sc.st_size, mo.st_ino, mo.st_mtime_ns, mo.st_size, unloaded)

    def model_signature(self, model_id: str, keys: tuple[str, ...]) -> tuple[tuple[int, ...] | None, ...]:
        """Return the identity of a model's routing document and of the versions ``keys``.

        Adding or removing a version rewrites the routing document, so this changes with those too.
        """
        return (self._stat(self.routing_path(model_id)), *(self.signature(key) for key in keys))

    @staticmethod
    def _stat(path: Path) -> tuple[int, ...] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read_sidecar(self, key: str) -> dict[str, Any]:
        """Return a version's sidecar as a dict; raise ValueError with the reason if it is not usable."""
        model_id, version = split_key(_valid_key(key))
        data = self._read_json(self.sidecar_path(key), "sidecar")
        if data.get("id", model_id) != model_id:
            raise ValueError(f"sidecar names id {data.get('id')!r}, not {model_id!r}")
        if version is not None and data.get("version") != version:
            raise ValueError(f"sidecar names version {data.get('version')!r}, not {version!r}")
        return data

    def read_reference(self, key: str) -> dict[str, Any] | None:
        """Return a version's monitoring reference, or None when it has none; raise ValueError if it is not usable."""
        try:
            return self._read_json(self.reference_path(key), "reference")
        except FileNotFoundError:
            return None

    def read_routing(self, model_id: str) -> dict[str, Any] | None:
        """Return a model's routing document, or None when it has none; raise ValueError if it is not usable."""
        try:
            return self._read_json(self.routing_path(model_id), "routing document")
        except FileNotFoundError:
            return None

    @staticmethod
    def _read_json(path: Path, what: str) -> dict[str, Any]:
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{what} is not a JSON object")
        return data

    def read_model(self, key: str) -> bytes:
        return self.model_path(key).read_bytes()

    def is_current(self, key: str, file: IO[bytes]) -> bool:
        """Tell whether the open ``file`` is still version ``key``'s model file (not one deleted or replaced since)."""
        return _same_file(file.fileno(), self.model_path(key))

    def open_model(self, key: str) -> IO[bytes]:
        """Open a version's model file for reading (a replacement never changes an open file's bytes)."""
        return open(self.model_path(key), "rb")

    def rewrite_sidecar(self, key: str, sidecar: dict[str, Any]) -> None:
        """Replace a visible version's sidecar (to add what was measured about it). Hold the model's claim."""
        with writing():
            self._write_json(self.sidecar_path(key), sidecar)
            _fsync_dir(self.directory)
            self._note(model_of(key), key)

    # -- recovery ------------------------------------------------------------------------

    def clean_leftovers(self) -> list[str]:
        """Remove what crashed writers left behind: unheld temp and claim files, model files and
        references without a sidecar, routing documents without a version."""
        removed = []
        with os.scandir(self.directory) as entries:
            names = sorted(e.name for e in entries)
        present = set(names)
        models = {parts[0] for n in names if n.endswith(SIDECAR_SUFFIX) and (parts := split_key(n[: -len(SIDECAR_SUFFIX)]))}
        for name in names:
            if name.startswith(".") and name.endswith((_TMP_SUFFIX, _CLAIM_SUFFIX)):
                if self._remove_if_unheld(self.directory / name):
                    removed.append(name)
                continue
            suffix = next((s for s in _VERSION_FILES if name.endswith(s)), None)
            if suffix is None:
                continue
            stem = name[: -len(suffix)]
            parts = split_key(stem)
            if parts is None:
                continue
            if suffix == ROUTING_SUFFIX:
                if parts[1] is not None or stem in models:
                    continue
                orphan = lambda model_id=stem: not any(s.model_id == model_id for s in self.scan())  # noqa: E731
            else:
                if f"{stem}{SIDECAR_SUFFIX}" in present:
                    continue
                orphan = lambda key=stem: not self.exists(key)  # noqa: E731
            try:
                with self.claim(parts[0]):
                    if orphan():
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
            if os.path.isdir(path):  # a workspace
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(file: IO[bytes] | str | Path) -> dict[str, Any]:
    """Return {"sha256", "size"} of an open file (read from its start) or a path, read in chunks:
    no copy of a large file is kept."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as opened:
            return file_digest(opened)
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while read := file.readinto(buffer):
        digest.update(view[:read])
        size += read
    return {"sha256": digest.hexdigest(), "size": size}


def upload_id(sha256: str, created_at: str) -> str:
    """A short name for one upload of a version: the same id and version uploaded again is another upload
    (monitoring counts and prediction records start from zero for it)."""
    return hashlib.sha256(f"{sha256} {created_at}".encode()).hexdigest()[:12]
