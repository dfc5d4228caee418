"""Start a real PostgreSQL server, a fresh cluster of its own, on a free loopback port.

    with running_postgres(tmp_path) as pg:
        env = {"NEXUS_DATABASE_URL": pg.url}  # postgresql://nexus:<password>@127.0.0.1:<port>/nexus
        ...
        pg.stop()    # the database goes away in the middle of a test: connections are refused
        ...
        pg.start()   # the same cluster, the same port and URL, the data kept

``running_postgres(base, settings=None)`` is a context manager yielding a :class:`LivePostgres`,
started (``settings``: more postgresql.conf settings, e.g. ``{"max_connections": "20"}``):

- ``url``: ``postgresql://nexus:<password>@127.0.0.1:<port>/nexus``; role ``nexus`` (not a
  superuser) owns database ``nexus``. ``str(pg)`` is the URL too. ``admin_url`` is the same
  server as the superuser ``postgres`` (database ``postgres``), for what a test does behind the
  application's back (e.g. ``pg_terminate_backend``).
- ``stop(mode="fast", timeout=30)``: stop the server and wait for it. ``mode`` is pg_ctl's: ``"smart"``
  (wait for clients to disconnect), ``"fast"`` (disconnect them; the default), ``"immediate"``
  (no clean shutdown, like a crash: the next start recovers from the WAL).
- ``start(timeout=30)``: start it again on the same port, and wait until it accepts connections.
- ``running``, ``port``, ``directory`` (the cluster's), ``log_path``, ``log_text()``.

On exit the server is stopped and the cluster's directory removed. The server's log is
``base/postgres-<port>.log``, and is kept.

The server binaries are Debian's (package ``postgresql``: ``/usr/lib/postgresql/<version>/bin``,
the newest version) or ``initdb`` and ``postgres`` on PATH; without them the test is skipped.
The cluster is made for speed, not durability: ``fsync=off``, small ``shared_buffers``, one
process tree of its own, listening on 127.0.0.1 only (password authentication, SCRAM) and on a
unix socket inside its directory. A cluster starts in about a second.

initdb and postgres refuse to run as root. As root (CI), they run as the ``postgres`` system user
that the Debian package creates (else ``nobody``), and the cluster's directory belongs to that
user. pytest's temporary directories are private to root (mode 0700), so when that user cannot
reach ``base`` the cluster lives in a private directory under the system's temporary directory
instead (the log stays in ``base``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.live.server import free_port

DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
DATABASE = "nexus"
ROLE = "nexus"
SUPERUSER = "postgres"
# Settings for a throwaway test cluster: fast, small, loopback only. synchronous_commit stays on: a
# committed row survives stop("immediate") (the WAL is in the OS's cache, fsync or not).
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
}
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: Debian's newest version, else PATH's."""
    def version(directory: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(directory).parent.name))

    for directory in sorted(glob.glob(DEBIAN_BINARIES), key=version, reverse=True):
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(directory)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return Path(initdb).parent
    return None


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None (this process's) unless we are root, who may not run it."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip("PostgreSQL cannot run as root, and there is neither a postgres nor a nobody user to run it as")


class LivePostgres:
    """One PostgreSQL cluster in its own directory, its server started and stopped at will."""

    def __init__(self, binaries: Path, directory: Path, log_dir: Path, account: pwd.struct_passwd | None,
                 settings: Mapping[str, str] | None = None) -> None:
        self.binaries = binaries
        self.directory = directory  # holds data/ (the cluster) and run/ (the unix socket)
        self.data_dir = directory / "data"
        self.socket_dir = directory / "run"
        self.account = account
        self.port = free_port()
        self.log_path = log_dir / f"postgres-{self.port}.log"
        self.password = secrets.token_hex(16)  # role nexus
        self.admin_password = secrets.token_hex(16)  # superuser postgres
        self.settings = {**SETTINGS, **(settings or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.admin_password}@127.0.0.1:{self.port}/postgres"

    def __str__(self) -> str:
        return self.url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _run_as_server(self) -> dict:
        """Popen arguments that run a command as the server's account, with no PG* variables about."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.account is None:
            return {"env": env, "cwd": self.directory}
        env.update(HOME=str(self.directory), USER=self.account.pw_name, LOGNAME=self.account.pw_name)
        return {"env": env, "cwd": self.directory, "user": self.account.pw_uid, "group": self.account.pw_gid,
                "extra_groups": []}

    def create(self) -> LivePostgres:
        """initdb the cluster (superuser ``postgres``), settings in its postgresql.conf, the socket directory."""
        self.socket_dir.mkdir()
        password_file = self.directory / "password"
        password_file.write_text(self.admin_password + "\n")
        if self.account is not None:
            for path in (self.socket_dir, password_file):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        command = [str(self.binaries / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={password_file}",
                   "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        try:
            done = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=60, **self._run_as_server())
        finally:
            password_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with {done.returncode}:\n{done.stdout}")
        settings = {**self.settings, "port": str(self.port), "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/live/postgres.py\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
        return self

    def start(self, timeout: float = 30) -> LivePostgres:
        """Start the server and wait until it accepts connections; fail with its log if it does not in ``timeout`` s."""
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.binaries / "postgres"), "-D", str(self.data_dir)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, **self._run_as_server())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"postgres exited with {code}:\n{self.log_text()}")
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return self
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise RuntimeError(f"postgres did not accept connections in {timeout} s ({error}):\n{self.log_text()}") from None
            time.sleep(0.05)

    def create_database(self) -> None:
        """The role ``nexus`` (login, password) and the database ``nexus`` it owns."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(self.password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(ROLE)))

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server (``mode``: ``smart``, ``fast`` or ``immediate``, as pg_ctl's) and wait for it;
        kill its process group if it has not exited after ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(STOP_SIGNALS[mode])
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # no backend outlives its postmaster
        self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _cluster_directory(base: Path, account: pwd.struct_passwd | None) -> Path:
    """A fresh directory for the cluster, owned by the server's account: under ``base`` if that account
    can reach it there, else under the system's temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="postgres-", dir=base))
    if account is None:
        return directory
    os.chown(directory, account.pw_uid, account.pw_gid)
    reachable = subprocess.run(["test", "-w", str(directory), "-a", "-x", str(directory)], check=False,
                               user=account.pw_uid, group=account.pw_gid, extra_groups=[]).returncode == 0
    if reachable:
        return directory
    directory.rmdir()
    directory = Path(tempfile.mkdtemp(prefix="nexus-postgres-"))
    os.chown(directory, account.pw_uid, account.pw_gid)
    return directory


@contextlib.contextmanager
def running_postgres(base: Path, settings: Mapping[str, str] | None = None) -> Iterator[LivePostgres]:
    """A fresh PostgreSQL cluster, started, with role and database ``nexus``; yields its :class:`LivePostgres`.

    ``settings`` (name to value, as in postgresql.conf: strings quoted) are added to the cluster's.
    On exit the server is stopped (fast) and its directory removed. Skips the test when PostgreSQL
    is not installed.
    """
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip(f"PostgreSQL is not installed (Debian package postgresql): no initdb and postgres in {DEBIAN_BINARIES} or on PATH")
    account = server_account()
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    directory = _cluster_directory(base, account)
    server = LivePostgres(binaries, directory, base, account, settings)
    try:
        server.create()
        server.start()
        server.create_database()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
