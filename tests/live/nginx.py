"""Start the shipped deploy/nginx.conf, pointed at a live server's port, for the live tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.live.server import ROOT, free_port, stop_process

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
MISSING = "nginx is not installed (Debian package nginx-light)"


def config(directory: Path, listen_port: int, upstream_port: int) -> str:
    """The shipped config, pointed at this test's ports and files (nothing else changes)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    replacements = [
        (r"listen 8000;", f"listen 127.0.0.1:{listen_port};"),
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream_port};"),
        (r"pid /tmp/nexus-nginx\.pid;", f"pid {directory}/nginx.pid;"),
        (r"error_log stderr warn;", f"error_log {directory}/error.log warn;"),
        (r"access_log /dev/stdout nexus_json;", f"access_log {directory}/access.log nexus_json;"),
        (r"/tmp/nexus-nginx-", f"{directory}/temp-"),
    ]
    for pattern, value in replacements:
        text, count = re.subn(pattern, value, text)
        assert count, f"deploy/nginx.conf no longer has {pattern!r}"
    if os.geteuid() == 0:
        text = "user root;\n" + text  # workers may then write the test's temp directories
    return text


@contextmanager
def running_nginx(directory: Path, upstream_port: int, timeout: float = 15) -> Iterator[tuple[str, Path]]:
    """Run nginx on a free loopback port in front of ``upstream_port``; yields its URL and access log."""
    assert NGINX is not None, MISSING
    port = free_port()
    path = Path(directory) / "nginx.conf"
    path.write_text(config(directory, port, upstream_port))
    checked = subprocess.run([NGINX, "-t", "-c", str(path), "-p", str(directory)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([NGINX, "-c", str(path), "-p", str(directory), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/health/live", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        yield url, Path(directory) / "access.log"
    finally:
        stop_process(proc)
