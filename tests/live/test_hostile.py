"""Hostile models against the real server (gunicorn, 2 workers): none reads a file of the server,
exhausts its memory or stalls it.

The attack models are built in memory by tests/hostile_models.py (tests/test_onnx_scan.py checks
that the external-data ones really make onnxruntime read a file when nothing protects it).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests import hostile_models as hostile
from tests import models
from tests.conftest import files_in
from tests.live.server import ROOT, LiveServer, raw_upload, seed_demo_model

CLOSE = {"Connection": "close"}  # a fresh connection per request spreads requests over the workers
IRIS = {"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}
GIB_KB = 1024 * 1024
SECRET_LENGTH = 32
# An absolute path (not the tail of a relative one such as "../../etc/x") or an onnxruntime source location.
_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:tmp|work|root|home|etc|proc|usr|var|dev|sys|opt|run|srv|mnt)\b")


# -- helpers --------------------------------------------------------------------------------------


def upload(server, data: bytes, model_id: str, timeout: float = 60):
    files = {"file": (f"{model_id}.onnx", io.BytesIO(data))}
    return requests.post(server.url("/models/upload"), files=files,
                         data={"id": model_id, "name": model_id, "version": "1"}, headers=CLOSE, timeout=timeout)


def predict(server, body: dict, timeout: float = 30):
    return requests.post(server.url("/predict"), json=body, headers=CLOSE, timeout=timeout)


def check_error(response, status: int, code: str, *words: str) -> dict:
    """The JSON error every refusal has, with no path of the server and no onnxruntime source location."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    body = json.loads(response.text)
    assert set(body) == {"error", "code", "request_id"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str)
    for word in words:
        assert word in body["error"], body["error"]
    assert isinstance(body["request_id"], str) and body["request_id"] == response.headers["X-Request-ID"]
    check_clean(body["error"])
    return body


def check_clean(message: str) -> None:
    assert ".cc:" not in message, message
    assert str(ROOT) not in message, message
    assert not _ABSOLUTE.search(message), message


def status_kb(pid: int, field: str) -> int:
    """A size line (VmRSS, VmHWM...) of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def worker_sizes(server, field: str) -> dict[int, int]:
    return {pid: status_kb(pid, field) for pid in server.worker_pids()}


def wait_until(condition, seconds: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def hidden(directory: Path) -> list[str]:
    return [name for name in files_in(directory) if name.startswith(".")]


def _byte_lists(value):
    """Every list of ints 0..255 inside a parsed JSON value, flattened row by row, as bytes."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _byte_lists(item)
    elif isinstance(value, list):
        flat = _flatten(value)
        if flat and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in flat):
            yield bytes(flat)
        for item in value:
            if isinstance(item, (dict, list)):
                yield from _byte_lists(item)


def _flatten(value):
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def leaks(response, secrets: list[bytes]) -> list[bytes]:
    """The secrets found in a response: raw in the body, in its strings, or as a JSON list of byte values."""
    body = response.content
    found = {s for s in secrets if s in body}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    for chunk in _byte_lists(parsed):
        found.update(s for s in secrets if s in chunk)
    for text in _strings(parsed):
        found.update(s for s in secrets if s.decode("latin-1") in text)
    return sorted(found)


class IrisPoller:
    """Sends iris predictions one after another from a thread, recording each status and latency."""

    def __init__(self, server) -> None:
        self.server = server
        self.results: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = predict(self.server, IRIS, timeout=10)
                self.results.append((response.status_code, time.monotonic() - started))
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> IrisPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


# -- external data: refused, nothing read ---------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A 2-worker server with default limits; a secret file sits next to (above) its model directory."""
    base = tmp_path_factory.mktemp("hostile")
    seed_demo_model(base / "models")
    secret = base / "secret.txt"
    secret.write_bytes(uuid.uuid4().hex.encode())  # 32 unique bytes
    server = LiveServer(base / "models", base / "logs", workers=2).start()
    server.secret_file = secret
    yield server
    server.stop()


def _targets(server) -> list[tuple[str, bytes]]:
    """(location, the bytes a model reading it would leak): relative names of real files, absolute, escapes."""
    secret = server.secret_file
    return [
        ("README.md", (ROOT / "README.md").read_bytes()[:SECRET_LENGTH]),             # the server's working directory
        ("iris.onnx", (server.model_dir / "iris.onnx").read_bytes()[:SECRET_LENGTH]),  # next to the models
        ("secret.txt", secret.read_bytes()),                                         # a plain relative name
        ("../secret.txt", secret.read_bytes()),                                      # out of the model directory
        (str(secret), secret.read_bytes()),                                          # absolute
        ("../" * 24 + str(secret).lstrip("/"), secret.read_bytes()),                 # out of any directory
    ]


@pytest.mark.parametrize("variant", sorted(hostile.EXTERNAL_VARIANTS))
def test_external_data_models_are_refused_and_read_nothing(guarded, variant):
    targets = _targets(guarded)
    secrets = sorted({leak for _, leak in targets})
    before = files_in(guarded.model_dir)
    for n, (location, _) in enumerate(targets):
        model_id = f"ext-{variant.replace('_', '-')}-{n}"
        response = upload(guarded, hostile.EXTERNAL_VARIANTS[variant](location, SECRET_LENGTH), model_id)
        assert not leaks(response, secrets), (location, response.text[:300])
        if response.status_code == 201:  # a broken server: show what the model gives away
            answer = predict(guarded, {"model_id": model_id, "features": [0.0]})
            pytest.fail(f"{variant} at {location!r} was accepted; leaked {leaks(answer, secrets)}: {answer.text[:300]}")
        check_error(response, 400, "invalid_model", "external data")
        assert files_in(guarded.model_dir) == before, location
        for _ in range(2):  # both workers: the id is unknown and gives nothing away
            answer = predict(guarded, {"model_id": model_id, "features": [0.0]})
            assert not leaks(answer, secrets), answer.text[:300]
            check_error(answer, 404, "model_not_found")


def test_an_ordinary_upload_records_its_load_check(guarded):
    response = upload(guarded, models.identity(), "plain")
    assert response.status_code == 201, response.text
    sidecar = json.loads((guarded.model_dir / "plain@1.model_info.json").read_text())
    check = sidecar["load_check"]
    for field in ("peak_mb", "seconds"):
        assert isinstance(check[field], (int, float)) and not isinstance(check[field], bool) and check[field] >= 0, check
    answer = predict(guarded, {"model_id": "plain", "features": [1, 2, 3, 4]})
    assert answer.status_code == 200 and answer.json()["prediction"] == [1, 2, 3, 4]
    assert requests.delete(guarded.url("/models/plain"), headers=CLOSE, timeout=10).status_code == 200


# -- memory and time ------------------------------------------------------------------------------


def test_a_load_time_bomb_is_refused_without_any_worker_growing(make_server):
    server = make_server(workers=2, env={"NEXUS_MAX_MODEL_MEMORY_MB": "512"})
    pids = set(server.worker_pids())
    before = files_in(server.model_dir)
    response = upload(server, hostile.load_time_bomb(), "bomb")
    check_error(response, 422, "model_too_large", "512", "NEXUS_MAX_MODEL_MEMORY_MB")
    assert files_in(server.model_dir) == before
    peaks = worker_sizes(server, "VmHWM")
    assert all(kb < GIB_KB for kb in peaks.values()), peaks
    assert set(server.worker_pids()) == pids
    assert predict(server, IRIS).status_code == 200
    check_error(predict(server, {"model_id": "bomb", "features": [0.0]}), 404, "model_not_found")


def test_an_endless_loop_is_stopped_at_the_timeout_and_the_workers_go_on(make_server):
    server = make_server(workers=2, env={"NEXUS_INFERENCE_TIMEOUT_S": "2"})
    pids = set(server.worker_pids())
    assert upload(server, hostile.endless_loop(), "endless").status_code == 201
    assert predict(server, {"model_id": "endless", "inputs": {"M": [1000]}}).json()["outputs"]["Y"] == [1000]
    with IrisPoller(server) as poller:
        started = time.monotonic()
        response = predict(server, {"model_id": "endless", "inputs": {"M": [10**12]}}, timeout=30)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    check_error(response, 504, "inference_timeout", "NEXUS_INFERENCE_TIMEOUT_S")
    assert 1.9 <= elapsed <= 2 + 1.5, elapsed
    assert not poller.errors, poller.errors
    assert poller.results and all(status == 200 for status, _ in poller.results), poller.results
    # the worker that ran the loop serves on, the loop model included
    for _ in range(6):
        assert predict(server, IRIS).status_code == 200
        assert predict(server, {"model_id": "endless", "inputs": {"M": [10]}}).json()["outputs"]["Y"] == [10]
    assert set(server.worker_pids()) == pids


def test_a_run_over_the_inference_memory_limit_is_refused_and_a_large_one_gives_its_memory_back(make_server):
    server = make_server(workers=2, env={"NEXUS_MAX_INFERENCE_MEMORY_MB": "512"})
    pids = set(server.worker_pids())
    assert upload(server, hostile.fill(), "fill").status_code == 201
    assert predict(server, {"model_id": "fill", "inputs": {"shape": [1000]}}).json()["outputs"]["Y"] == [1.0]

    def all_below_700_mb():
        return all(kb < 700 * 1024 for kb in worker_sizes(server, "VmRSS").values())

    refused = predict(server, {"model_id": "fill", "inputs": {"shape": [400_000_000]}})  # 1.6 GB of float32
    check_error(refused, 422, "inference_memory_limit", "NEXUS_MAX_INFERENCE_MEMORY_MB")
    assert wait_until(all_below_700_mb, 3), worker_sizes(server, "VmRSS")

    allowed = predict(server, {"model_id": "fill", "inputs": {"shape": [100_000_000]}})  # 400 MB
    assert allowed.status_code == 200, allowed.text[:300]
    assert allowed.json()["outputs"]["Y"] == [1.0]
    assert wait_until(all_below_700_mb, 3), worker_sizes(server, "VmRSS")
    assert set(server.worker_pids()) == pids
    assert predict(server, IRIS).status_code == 200


def test_a_wide_string_among_many_empty_ones_takes_no_great_memory(make_server):
    server = make_server(workers=2)
    pids = set(server.worker_pids())
    assert upload(server, hostile.string_identity(), "strings").status_code == 201
    values = ["x" * 100_000] + [""] * 12_499
    for _ in range(2):  # both workers
        response = predict(server, {"model_id": "strings", "features": values}, timeout=60)
        assert response.status_code < 500, response.text[:300]
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        if response.status_code == 200:
            assert body["outputs"]["Y"] == values
        peaks = worker_sizes(server, "VmHWM")
        assert all(kb < GIB_KB for kb in peaks.values()), peaks
    assert set(server.worker_pids()) == pids


def test_a_slow_loading_model_delays_no_other_model(make_server):
    server = make_server(workers=2, env={"NEXUS_MAX_LOAD_SECONDS": "60", "NEXUS_LOAD_WAIT_S": "1"})
    with IrisPoller(server) as poller:
        response = upload(server, hostile.slow_to_load(), "slow", timeout=90)
        assert response.status_code == 201, response.text[:300]
        check = json.loads((server.model_dir / "slow@1.model_info.json").read_text())["load_check"]
        assert isinstance(check["peak_mb"], (int, float)) and check["peak_mb"] > 0, check
        assert isinstance(check["seconds"], (int, float)) and check["seconds"] > 1, check
        # The workers load it in the background now; asking for it waits at most NEXUS_LOAD_WAIT_S.
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = predict(server, {"model_id": "slow", "features": [0.0]}, timeout=30)
            answers.append((answer.status_code, time.monotonic() - started))
            assert answer.status_code in (200, 503), answer.text[:300]
            if answer.status_code == 503:
                check_error(answer, 503, "model_loading")
                assert re.fullmatch(r"\d+", answer.headers.get("Retry-After", "")), answer.headers
                assert int(answer.headers["Retry-After"]) >= 1
                assert answers[-1][1] < 1 + 1.5, answers
            elif len([a for a in answers if a[0] == 200]) >= 4:  # served, and by both workers most likely
                break
            time.sleep(0.1)
        assert answers[-1][0] == 200, answers
    assert not poller.errors, poller.errors
    assert poller.results and all(status == 200 for status, _ in poller.results), poller.results
    slowest = max(seconds for _, seconds in poller.results)
    assert slowest < 1.0, sorted(s for _, s in poller.results)[-5:]


def test_a_model_slower_to_load_than_the_limit_is_refused(make_server):
    server = make_server(workers=2, env={"NEXUS_MAX_LOAD_SECONDS": "1"})
    before = files_in(server.model_dir)
    started = time.monotonic()
    response = upload(server, hostile.slow_to_load(), "slow")
    elapsed = time.monotonic() - started
    check_error(response, 422, "model_load_timeout", "NEXUS_MAX_LOAD_SECONDS")
    assert elapsed < 10, elapsed
    assert files_in(server.model_dir) == before
    check_error(predict(server, {"model_id": "slow", "features": [0.0]}), 404, "model_not_found")
    assert predict(server, IRIS).status_code == 200


# -- crashes and a vanished directory -------------------------------------------------------------


def _holder(server, path: Path) -> int | None:
    """The worker pid with an open file descriptor on ``path``."""
    target = os.path.realpath(path)
    for pid in server.worker_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def test_a_worker_killed_mid_upload_leaves_no_hidden_files(make_server):
    server = make_server(workers=2)
    master = server.proc.pid
    model = models.linear(in_features=512, out_features=512)[0]
    head, body = raw_upload("killed", model)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])  # and the rest never comes while the worker lives
        assert wait_until(lambda: any(n.startswith(".upload-") for n in hidden(server.model_dir)), 10), \
            files_in(server.model_dir)
        temp = next(server.model_dir / n for n in hidden(server.model_dir) if n.startswith(".upload-"))
        assert temp.name.endswith(".tmp"), temp.name
        victim = _holder(server, temp)
        assert victim is not None, f"no worker holds {temp.name}"
        os.kill(victim, signal.SIGKILL)
        left = hidden(server.model_dir)
        assert wait_until(lambda: not hidden(server.model_dir), 60, interval=0.25), \
            f"still there after 60 s: {hidden(server.model_dir)} (were {left})"
    assert server.proc.poll() is None and server.proc.pid == master  # no restart
    assert victim not in server.worker_pids()
    assert wait_until(lambda: len(server.worker_pids()) == 2, 15)
    assert not (server.model_dir / "killed@1.onnx").exists() and not (server.model_dir / "killed.routing.json").exists()
    assert predict(server, IRIS).status_code == 200
    check_error(predict(server, {"model_id": "killed", "features": [0.0] * 512}), 404, "model_not_found")


def test_a_vanished_model_directory_gives_fast_json_503s(make_server, tmp_path):
    server = make_server(workers=2)
    away = tmp_path / "unmounted"
    server.model_dir.rename(away)
    try:
        calls = {
            "predict": lambda: predict(server, IRIS, timeout=10),
            "list": lambda: requests.get(server.url("/models"), headers=CLOSE, timeout=10),
            "upload": lambda: upload(server, models.identity(), "newcomer", timeout=10),
            "delete": lambda: requests.delete(server.url("/models/iris"), headers=CLOSE, timeout=10),
        }
        for _ in range(3):  # each route on each worker, more than once
            for name, call in calls.items():
                started = time.monotonic()
                response = call()
                elapsed = time.monotonic() - started
                assert elapsed < 1.0, (name, elapsed)
                check_error(response, 503, "storage_unavailable")
            started = time.monotonic()
            assert requests.get(server.url("/health/live"), headers=CLOSE, timeout=10).status_code == 200
            assert time.monotonic() - started < 1.0
    finally:
        away.rename(server.model_dir)
    assert wait_until(lambda: predict(server, IRIS, timeout=10).status_code == 200, 5)
