"""Start the real server (gunicorn + the project's gunicorn.conf.py) on a free loopback port."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """One gunicorn master and its workers, in their own process group, logging to files."""

    def __init__(self, model_dir: Path, log_dir: Path, workers: int = 4, env: dict[str, str] | None = None,
                 args: list[str] | None = None, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.model_dir = Path(model_dir)
        self.log_dir = Path(log_dir)
        self.workers = workers
        self.env = env or {}
        self.args = args or []
        self.port = port or free_port()
        # Each server its own gRPC port: workers bind it with SO_REUSEPORT, so two test servers on one
        # port would share their calls.
        self.grpc_port = int(self.env.get("NEXUS_GRPC_PORT") or free_port())
        self.host = host  # the address bound; requests always go to loopback
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.log_dir / f"server-{self.port}.out"
        self.stderr_path = self.log_dir / f"server-{self.port}.err"

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30) -> LiveServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "NEXUS_MODEL_DIR": str(self.model_dir), "WEB_CONCURRENCY": str(self.workers),
               "NEXUS_ORT_THREADS": "1", "NEXUS_GRPC_PORT": str(self.grpc_port), **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None) if "PROMETHEUS_MULTIPROC_DIR" not in self.env else None
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"{self.host}:{self.port}",
                   "--workers", str(self.workers), *self.args, "wsgi:app"]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.stderr_path.read_text()}{self.stdout_path.read_text()}")
            if len(self.worker_pids()) >= self.workers and self._ready():
                return self
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"gunicorn did not become ready in {timeout} s")

    def _ready(self) -> bool:
        """Every worker ready, as far as a few fresh connections can tell: a worker that lost the race
        to check a model (make its serving form) is ready a moment after the one that won it."""
        try:
            return all(requests.get(self.url("/health/ready"), headers={"Connection": "close"}, timeout=2).status_code == 200
                       for _ in range(4 * self.workers))
        except requests.RequestException:
            return False

    def worker_pids(self) -> list[int]:
        """The pids of the master's children (its workers)."""
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(pid) for pid in children]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send ``sig`` to the master and wait for it; kill the whole group if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers never outlive a test
        except ProcessLookupError:
            pass
        code = self.proc.wait(5)
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log_lines()]

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def seed_demo_model(model_dir: Path) -> None:
    """Copy the shipped demo model (iris) into ``model_dir``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("iris.onnx", "iris.model_info.json"):
        (model_dir / name).write_bytes((ROOT / "models" / name).read_bytes())


def raw_upload(model_id: str, data: bytes) -> tuple[bytes, bytes]:
    """The head and the body of a multipart upload of ``data`` as ``model_id``, for tests that send it in pieces."""
    boundary = "nexusboundary"
    fields = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{model_id}\r\n'
                     for name in ("id", "name"))
    body = (
        f"{fields}--{boundary}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n1\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{model_id}.onnx\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /models/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


def stop_process(proc: subprocess.Popen) -> None:
    """Ask a helper process (nginx, Prometheus) to stop, and kill it if it does not within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


CLOSE = {"Connection": "close"}  # a fresh connection per request spreads requests over the workers


def metric_samples(server) -> dict[tuple[str, frozenset], float]:
    """Parse /metrics into {(name, labels): value}."""
    text = requests.get(server.url("/metrics"), headers=CLOSE, timeout=5).text
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def total(samples, name, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def predict(server, model_id="iris", features=(5.1, 3.5, 1.4, 0.2), **headers):
    return requests.post(server.url("/predict"), json={"model_id": model_id, "features": list(features)},
                         headers={**CLOSE, **headers}, timeout=10)


def upload(server, data: bytes, model_id: str, token: str | None = None):
    headers = {**CLOSE, **({"Authorization": f"Bearer {token}"} if token else {})}
    files = {"file": (f"{model_id}.onnx", io.BytesIO(data))}
    return requests.post(server.url("/models/upload"), files=files, data={"id": model_id, "name": model_id, "version": "1"},
                         headers=headers, timeout=30)


def sigterm_during(server, call, after_s: float = 0.8) -> tuple[float, int | None]:
    """Run ``call`` in a thread, SIGTERM the server ``after_s`` into it, wait for both; return when
    SIGTERM was sent and the master's exit code."""
    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(after_s)  # the call is running in a worker
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=20)
    thread.join(30)
    return started, code


@contextlib.contextmanager
def running_prometheus(directory: Path, target: str, rule_files: list[Path] = ()):
    """A real Prometheus scraping ``target`` every second, ``rule_files`` loaded and evaluated every second; yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "nexus", "static_configs": [{"targets": [target]}]}],
    }))
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("prometheus did not become ready:\n" + log_path.read_text())
                time.sleep(0.2)
            yield url
        finally:
            stop_process(proc)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False
