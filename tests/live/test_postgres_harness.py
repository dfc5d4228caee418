"""The PostgreSQL harness (tests/live/postgres.py): a real server that works, stops, comes back
with its data on the same URL, and leaves nothing behind.

Skipped where PostgreSQL is not installed (Debian package postgresql).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from tests.live import postgres
from tests.live.postgres import running_postgres

pytestmark = pytest.mark.live


def refused(url: str) -> bool:
    """Whether a connection to ``url`` fails."""
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def process_uid(pid: int) -> int:
    """The real uid of process ``pid`` (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def test_a_working_server_for_nexus_on_loopback(tmp_path):
    with running_postgres(tmp_path) as pg:
        assert pg.url == str(pg) == f"postgresql://nexus:{pg.password}@127.0.0.1:{pg.port}/nexus"
        with psycopg.connect(pg.url) as conn:
            conn.execute("CREATE TABLE predictions (id serial PRIMARY KEY, label text NOT NULL, probability double precision)")
            conn.execute("INSERT INTO predictions (label, probability) VALUES (%s, %s), (%s, %s)", ("0", 0.98, "ünïcode", 0.5))
            conn.commit()
            rows = conn.execute("SELECT label, probability FROM predictions ORDER BY id").fetchall()
            assert rows == [("0", 0.98), ("ünïcode", 0.5)]
            user, superuser, address, encoding = conn.execute(
                "SELECT current_user, rolsuper, host(inet_server_addr()), pg_encoding_to_char(encoding) "
                "FROM pg_roles, pg_database WHERE rolname = current_user AND datname = current_database()").fetchone()
            assert (user, superuser, address, encoding) == ("nexus", False, "127.0.0.1", "UTF8")
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert refused(pg.url.replace(pg.password, "wrong-password"))
        # Only 127.0.0.1: another address may still take the port (it could not beside a server on 0.0.0.0).
        with psycopg.connect(pg.admin_url) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", pg.port))
        if os.geteuid() == 0:
            assert process_uid(pg.proc.pid) != 0, "postgres runs as root"
        assert Path(pg.directory, "data", "PG_VERSION").is_file()
        assert pg.log_path.parent == tmp_path


def test_stop_refuses_connections_and_start_brings_the_data_back_on_the_same_url(tmp_path):
    with running_postgres(tmp_path) as pg:
        url, port = pg.url, pg.port
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (1), (2)")
        held = psycopg.connect(url, autocommit=True)  # a connection open across the stop

        pg.stop()
        assert not pg.running
        assert refused(url)
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()

        pg.start()
        assert pg.running and (pg.url, pg.port) == (url, port)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
            conn.execute("INSERT INTO t VALUES (3)")

        pg.stop("immediate")  # like a crash: the next start recovers from the WAL
        assert refused(url)
        pg.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_the_server_stops_and_its_directory_goes_on_exit(tmp_path):
    with running_postgres(tmp_path) as pg:
        directory, proc = pg.directory, pg.proc
        assert directory.is_dir()
    assert proc.poll() is not None
    assert not directory.exists()
    assert refused(pg.url)
    assert pg.log_path.is_file()  # the log stays, for a failed test's report


def test_skips_where_postgresql_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "postgres_binaries", lambda: None)
    not_installed = r"PostgreSQL is not installed \(Debian package postgresql\)"
    with pytest.raises(pytest.skip.Exception, match=not_installed), running_postgres(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
