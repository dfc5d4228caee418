"""One copy of a model's weights per machine, on the real server (gunicorn, several workers).

At upload the server derives a *serving form* of the model (``<key>.serving`` and the read-only
``<key>.serving.weights`` next to ``<key>.onnx``, recorded with their sha256 in the sidecar's
``load_check.serving``); every worker opens it by path and onnxruntime maps the weights, so the
page cache holds one copy that all workers share. These tests measure that (PSS of the workers),
check that the answers are onnxruntime's on the original bytes, that replacing a model under
load never serves stale weights, and that a damaged serving form is rebuilt and never served.

Models are MLPs of float32 MatMul weights built here; expected answers come from onnxruntime
run directly on the uploaded bytes.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import requests
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.mmap_dict import MmapedDict

from tests.live.server import CLOSE, seed_demo_model

TIMEOUT = 30
MB = 1024 * 1024
BIG = (512, 4096, 2048, 8)  # 40 MB of float32 weights
SMALL = (64, 512, 256, 8)  # 0.6 MB: fast to upload and to run under load


# -- models and references -------------------------------------------------------------------------


def mlp(seed: int, dims=SMALL) -> bytes:
    """X [N, dims[0]] -> MatMul -> Relu -> ... -> MatMul -> Y [N, dims[-1]], weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    nodes, weights, previous = [], [], "X"
    for i in range(len(dims) - 1):
        weights.append(numpy_helper.from_array((rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32), f"W{i}"))
        last = i == len(dims) - 2
        product = "Y" if last else f"M{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [product]))
        if not last:
            nodes.append(helper.make_node("Relu", [product], [f"H{i}"]))
            previous = f"H{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, dims[0]])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, dims[-1]])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def weight_bytes(dims) -> int:
    return 4 * sum(a * b for a, b in pairwise(dims))


def reference(data: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime's answer on the original .onnx bytes (a session of its own, default options)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["Y"], {"X": np.asarray(x, np.float32)})[0]


def inputs(dims, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dims[0])).astype(np.float32)


def same(answer, want: np.ndarray) -> bool:
    return np.allclose(np.asarray(answer, np.float32), want, rtol=1e-5, atol=1e-6)


# -- requests ---------------------------------------------------------------------------------------


def upload(server, data: bytes, model_id: str, version: str = "1"):
    files = {"file": (f"{model_id}.onnx", io.BytesIO(data))}
    return requests.post(server.url("/models/upload"), files=files, data={"id": model_id, "name": model_id, "version": version},
                         headers=CLOSE, timeout=120)


def predict(server, model_id: str, features) -> requests.Response:
    return requests.post(server.url("/predict"), json={"model_id": model_id, "features": np.asarray(features).tolist()},
                         headers=CLOSE, timeout=TIMEOUT)


def v2_infer(server, model_id: str, x: np.ndarray, version: str | None = None, binary: bool = False) -> requests.Response:
    path = f"/v2/models/{model_id}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if binary:
        body["parameters"] = {"binary_data_output": True}
    return requests.post(server.url(path), json=body, headers=CLOSE, timeout=TIMEOUT)


def v2_binary_output(response: requests.Response) -> np.ndarray:
    """The raw float32 bytes of output Y of a V2 response asked with binary_data_output."""
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    (output,) = header["outputs"]
    size = output["parameters"]["binary_data_size"]
    raw = response.content[length:length + size]
    assert len(raw) == size == 4 * int(np.prod(output["shape"]))
    return np.frombuffer(raw, "<f4").reshape(output["shape"])


def delete(server, path: str) -> requests.Response:
    return requests.delete(server.url(path), headers=CLOSE, timeout=TIMEOUT)


def set_routing(server, model_id: str, document) -> requests.Response:
    return requests.put(server.url(f"/models/{model_id}/routing"), json=document, headers=CLOSE, timeout=TIMEOUT)


# -- the workers' memory --------------------------------------------------------------------------------


def pss_kb(pid: int) -> int:
    """Proportional set size of a process: shared pages count divided by the number of processes mapping them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def mapped_files(pid: int) -> set[str]:
    """The paths of the files a process maps (a replaced file shows with ' (deleted)')."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            found.add(parts[5])
    return found


def serving_paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.serving", directory / f"{key}.serving.weights"


def sidecar(directory: Path, key: str) -> dict:
    return json.loads((directory / f"{key}.model_info.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def answered_by_worker(server, model_id: str) -> dict[int, float]:
    """How many predictions of ``model_id`` each worker answered, read from the workers' own Prometheus files
    (multiprocess mode: one ``counter_<pid>.db`` per worker, in the directory gunicorn.conf.py names after the master)."""
    directories = glob.glob(os.path.join(tempfile.gettempdir(), f"nexus-metrics-{server.proc.pid}-*"))
    assert len(directories) == 1, directories
    counts: dict[int, float] = {}
    for path in Path(directories[0]).glob("counter_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "model_predictions_total" and labels.get("model_id") == model_id and labels.get("status") == "success":
                counts[pid] = counts.get(pid, 0) + value
    return counts


def hammer(server, model_id: str, features, count: int, concurrency: int = 8) -> list[requests.Response]:
    """Send ``count`` predictions with ``concurrency`` clients: every sync worker is kept busy, so each answers some."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: predict(server, model_id, features), range(count)))


# -- 1. one copy of the weights per machine ---------------------------------------------------------


def _pss_increase(server, data: bytes, model_id: str, x: np.ndarray, want: np.ndarray) -> tuple[dict[int, int], dict[int, int], dict[int, float]]:
    """Each worker's PSS (kB) before the upload and after every worker has loaded the model and answered with it,
    and how many of the 200 predictions each answered."""
    pids = server.worker_pids()
    assert len(pids) == 4
    for response in hammer(server, "iris", [5.1, 3.5, 1.4, 0.2], 40):  # every worker past its first requests
        assert response.status_code == 200, response.text
    time.sleep(0.3)
    before = {pid: pss_kb(pid) for pid in pids}
    response = upload(server, data, model_id)
    assert response.status_code == 201, response.text
    answers = hammer(server, model_id, x, 200)
    assert [r.status_code for r in answers] == [200] * 200, [r.text for r in answers if r.status_code != 200][:3]
    for response in answers:
        assert same(response.json()["prediction"], want.ravel())
    assert server.worker_pids() == pids, "a worker was replaced during the measurement"
    served = answered_by_worker(server, model_id)
    assert sum(served.values()) == 200 and all(served.get(pid, 0) > 0 for pid in pids), f"not every worker answered: {served}"
    time.sleep(0.3)
    after = {pid: pss_kb(pid) for pid in pids}
    return before, after, served


def test_four_workers_hold_one_copy_of_a_models_weights_and_private_copies_without_sharing(make_server, tmp_path):
    dims = BIG
    data = mlp(1, dims)
    weights = weight_bytes(dims)
    x = inputs(dims, 1)[0]
    want = reference(data, x[None, :])

    server = make_server(workers=4)
    before, after, served = _pss_increase(server, data, "big", x, want)
    graph_path, weights_path = serving_paths(server.model_dir, "big@1")
    assert graph_path.exists() and weights_path.exists()
    assert stat.S_IMODE(weights_path.stat().st_mode) & 0o222 == 0, "the mapped weights file must be read-only"
    for pid in before:  # every worker opened the serving form: onnxruntime maps its weights
        assert str(weights_path) in mapped_files(pid), f"worker {pid} does not map {weights_path.name}"
    shared = sum(after.values()) - sum(before.values())
    server.stop()

    directory = tmp_path / "private"
    seed_demo_model(directory)
    private = make_server(model_dir=directory, workers=4, env={"NEXUS_SHARED_WEIGHTS": "0"})
    p_before, p_after, p_served = _pss_increase(private, data, "big", x, want)
    assert not any(name.endswith((".serving", ".serving.weights")) and name.startswith("big") for name in os.listdir(directory)), \
        "NEXUS_SHARED_WEIGHTS=0 makes no serving form"
    unshared = sum(p_after.values()) - sum(p_before.values())

    def line(label, first, second, increase, answered=None):
        per_worker = ", ".join(f"{(second[pid] - first[pid]) / 1024:.1f}" for pid in first)
        return (f"{label}: summed PSS {sum(first.values()) / 1024:.1f} -> {sum(second.values()) / 1024:.1f} MB, "
                f"increase {increase / 1024:.1f} MB = {increase * 1024 / weights:.2f}x the weights (per worker: {per_worker} MB; "
                f"predictions answered: {', '.join(f'{answered[pid]:.0f}' for pid in first) if answered else '-'})")

    print(f"\nmodel weights {weights / MB:.1f} MB, serving weights file {weights_path.stat().st_size / MB:.1f} MB, 4 workers")
    print(line("shared weights (default)", before, after, shared, served))
    print(line("NEXUS_SHARED_WEIGHTS=0 ", p_before, p_after, unshared, p_served))
    assert shared * 1024 < 1.6 * weights, line("shared", before, after, shared)
    assert unshared * 1024 > 3 * weights, line("private", p_before, p_after, unshared)  # the measurement can tell them apart


# -- 2. the answers are onnxruntime's on the original bytes -------------------------------------------------


def test_answers_from_the_serving_form_equal_onnxruntime_on_the_original_bytes(live):
    dims = (256, 1024, 512, 10)
    data = mlp(7, dims)
    assert upload(live, data, "exact", "v1").status_code == 201
    key = "exact@v1"
    record = sidecar(live.model_dir, key)["load_check"]["serving"]
    graph_path, weights_path = serving_paths(live.model_dir, key)
    assert record["graph"]["sha256"] == sha256(graph_path) and record["weights"]["sha256"] == sha256(weights_path)
    batch = inputs(dims, 5, seed=3)
    want = reference(data, batch)
    for _ in range(4):  # fresh connections: several workers answer
        for row in range(len(batch)):  # a flat list is one sample
            response = predict(live, "exact", batch[row])
            assert response.status_code == 200, response.text
            answer = np.asarray(response.json()["outputs"]["Y"], np.float32)
            assert np.array_equal(answer, want[row:row + 1]), (answer, want[row])
        response = predict(live, "exact", batch)  # a nested list is the batch
        assert response.status_code == 200, response.text
        assert np.array_equal(np.asarray(response.json()["outputs"]["Y"], np.float32), want)
        for version in (None, "v1"):
            response = v2_infer(live, "exact", batch, version)
            assert response.status_code == 200, response.text
            (output,) = response.json()["outputs"]
            assert output["shape"] == [5, dims[-1]] and response.json()["model_version"] == "v1"
            assert np.array_equal(np.reshape(np.asarray(output["data"], np.float32), output["shape"]), want)
            binary = v2_infer(live, "exact", batch, version, binary=True)
            assert binary.status_code == 200, binary.text
            assert np.array_equal(v2_binary_output(binary), want)  # bit for bit


# -- 3. replacing a model under load ----------------------------------------------------------------------


class Clients:
    """``concurrency`` threads sending the same prediction until stopped; each answer is kept with when it was sent."""

    def __init__(self, server, model_id: str, features, concurrency: int = 6) -> None:
        self.server, self.model_id, self.features = server, model_id, np.asarray(features).tolist()
        self.stopping = threading.Event()
        self.records: list[dict] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self) -> None:
        session = requests.Session()
        while not self.stopping.is_set():
            started = time.monotonic()
            record = {"started": started, "status": None, "version": None, "Y": None, "code": None}
            try:
                response = session.post(self.server.url("/predict"), json={"model_id": self.model_id, "features": self.features},
                                        headers=CLOSE, timeout=TIMEOUT)
                record["status"] = response.status_code
                body = response.json()
                if response.status_code == 200:
                    record["version"], record["Y"] = body["model_version"], np.asarray(body["outputs"]["Y"], np.float32)
                    assert response.headers["X-Model-Version"] == body["model_version"]
                else:
                    record["code"] = body.get("code")
            except Exception as exc:  # noqa: BLE001 (kept and reported by the test)
                record["status"], record["code"] = "exception", repr(exc)
            record["ended"] = time.monotonic()
            self.records.append(record)

    def after(self, moment: float) -> list[dict]:
        return [r for r in self.records if r["started"] > moment]


def whose(record: dict, answers: dict[str, np.ndarray]) -> str | None:
    """Which of ``answers`` (name -> reference output) the record's output is, exactly; None for none of them."""
    found = [name for name, want in answers.items() if np.array_equal(record["Y"], want)]
    return found[0] if len(found) == 1 else None


def test_a_new_version_routed_in_under_load_never_fails_and_never_answers_stale(live):
    v1, v2 = mlp(21), mlp(22)
    x = inputs(SMALL, 1, seed=5)
    answers = {"v1": reference(v1, x), "v2": reference(v2, x)}
    assert np.abs(answers["v1"] - answers["v2"]).max() > 0.1
    assert upload(live, v1, "rolling", "v1").status_code == 201
    assert set_routing(live, "rolling", {"default": "v1"}).status_code == 200  # v2 gets nothing until the routing says so
    for _ in range(8):
        response = predict(live, "rolling", x[0])
        assert response.status_code == 200 and np.array_equal(np.asarray(response.json()["outputs"]["Y"], np.float32), answers["v1"])

    with Clients(live, "rolling", x[0], concurrency=6) as clients:
        time.sleep(1.0)
        response = upload(live, v2, "rolling", "v2")
        assert response.status_code == 201, response.text
        uploaded = time.monotonic()
        time.sleep(1.0)
        routing_sent = time.monotonic()
        response = set_routing(live, "rolling", {"default": "v2"})
        assert response.status_code == 200, response.text
        routed = time.monotonic()
        time.sleep(1.0)
        response = delete(live, "/models/rolling/versions/v1")
        assert response.status_code == 200, response.text
        deleted = time.monotonic()
        time.sleep(1.0)
    records = clients.records

    errors = [r for r in records if r["status"] != 200]
    assert errors == [], f"{len(errors)} of {len(records)} requests failed, first: {errors[:3]}"
    for record in records:  # every answer is exactly v1's or v2's, and names the version that gave it
        assert whose(record, answers) == record["version"], record
    # Answered after v2 was uploaded and before the routing write was sent: still v1.
    between = [r for r in records if uploaded < r["started"] and r["ended"] < routing_sent]
    assert between and {r["version"] for r in between} == {"v1"}, "the routing pinned v1 while v2 was uploaded"
    late = clients.after(routed)
    stale = [r for r in late if r["version"] != "v2"]
    assert stale == [], f"{len(stale)} of {len(late)} requests sent after the routing write answered with v1"
    assert clients.after(deleted), "no request after the delete"
    assert len(records) >= 50, f"only {len(records)} requests in 4 s"
    print(f"\n{len(records)} predictions while v2 was uploaded, routed in and v1 deleted: 0 errors, "
          f"{sum(r['version'] == 'v1' for r in records)} from v1, {len(late)} sent after the routing write, all v2")
    assert not [name for name in os.listdir(live.model_dir) if name.startswith("rolling@v1")]


def test_a_model_deleted_and_uploaded_again_under_load_never_answers_with_the_old_weights(live):
    old, new = mlp(31), mlp(32)
    x = inputs(SMALL, 1, seed=6)
    answers = {"old": reference(old, x), "new": reference(new, x)}
    assert np.abs(answers["old"] - answers["new"]).max() > 0.1
    assert upload(live, old, "again", "1").status_code == 201
    weights_path = serving_paths(live.model_dir, "again@1")[1]
    old_weights = sha256(weights_path)

    with Clients(live, "again", x[0], concurrency=6) as clients:
        time.sleep(1.0)
        response = delete(live, "/models/again")
        assert response.status_code == 200, response.text
        response = upload(live, new, "again", "1")  # the same id and version, other weights
        assert response.status_code == 201, response.text
        uploaded = time.monotonic()
        time.sleep(1.5)
    records = clients.records

    odd = [r for r in records if r["status"] != 200 and (r["status"], r["code"]) != (404, "model_not_found")]
    assert odd == [], f"{len(odd)} requests failed other than 404 between the delete and the upload, first: {odd[:3]}"
    for record in records:
        if record["status"] == 200:
            assert record["version"] == "1" and whose(record, answers) in ("old", "new"), record
    late = clients.after(uploaded)
    assert len(late) >= 20
    stale = [r for r in late if r["status"] != 200 or whose(r, answers) != "new"]
    assert stale == [], f"{len(stale)} of {len(late)} requests sent after the new upload returned did not get its answer: {stale[:3]}"
    assert sha256(weights_path) != old_weights
    assert sidecar(live.model_dir, "again@1")["load_check"]["serving"]["weights"]["sha256"] == sha256(weights_path)
    print(f"\n{len(records)} predictions around delete + upload of the same id/version: "
          f"{sum(whose(r, answers) == 'old' for r in records if r['status'] == 200)} old, "
          f"{sum(r['status'] == 404 for r in records)} 404 in between, {len(late)} after the upload, all new")


# -- 4. a damaged serving form is made again, never served --------------------------------------------------


def _log_events(server, message: str, key: str) -> list[dict]:
    return [r for r in server.log_records() if r.get("message") == message and r.get("key") == key]


def _check_served_from_a_sound_form(server, key: str, x: np.ndarray, want: np.ndarray) -> None:
    """Every worker answers ``want``, maps the serving weights now on disk (none a replaced one), and the
    files are what the sidecar records."""
    for response in hammer(server, key.partition("@")[0], x[0], 40):
        assert response.status_code == 200, response.text
        assert np.array_equal(np.asarray(response.json()["outputs"]["Y"], np.float32), want)
    graph_path, weights_path = serving_paths(server.model_dir, key)
    record = sidecar(server.model_dir, key)["load_check"]["serving"]
    assert record["graph"]["sha256"] == sha256(graph_path)
    assert record["weights"]["sha256"] == sha256(weights_path)
    assert stat.S_IMODE(weights_path.stat().st_mode) & 0o222 == 0
    for pid in server.worker_pids():
        mapped = mapped_files(pid)
        assert str(weights_path) in mapped, f"worker {pid} does not map {weights_path.name}"
        assert not [path for path in mapped if ".serving" in path and path.endswith("(deleted)")], \
            f"worker {pid} maps a serving form that has been replaced: {mapped}"


def test_a_corrupt_or_missing_serving_form_is_made_again_and_never_served(make_server, tmp_path):
    dims = (128, 1024, 1024, 8)  # 4.5 MB of weights
    data = mlp(41, dims)
    x = inputs(dims, 1, seed=9)
    want = reference(data, x)
    key = "fragile@1"
    directory = tmp_path / "kept"
    directory.mkdir()
    server = make_server(model_dir=directory, workers=2)
    assert upload(server, data, "fragile").status_code == 201
    _check_served_from_a_sound_form(server, key, x, want)
    server.stop()
    graph_path, weights_path = serving_paths(directory, key)
    recorded = sidecar(directory, key)["load_check"]["serving"]

    # Flip bytes all along the weights file (the original weights and the pre-packed ones): served, they would answer wrong.
    os.chmod(weights_path, 0o644)
    with open(weights_path, "r+b") as file:
        size = os.fstat(file.fileno()).st_size
        for offset in range(4096, size, size // 64):
            file.seek(offset)
            chunk = file.read(64)
            file.seek(offset)
            file.write(bytes(b ^ 0x5A for b in chunk))
    os.chmod(weights_path, 0o444)
    corrupt = weights_path.stat()
    assert sha256(weights_path) != recorded["weights"]["sha256"]

    server = make_server(model_dir=directory, workers=2)
    _check_served_from_a_sound_form(server, key, x, want)
    assert weights_path.stat().st_ino != corrupt.st_ino, "the weights file was made again (a new file), not used as it was"
    assert _log_events(server, "serving form does not match its record; making it again", key), server.log_text()[-3000:]
    rebuilt = [r for r in server.log_records() if r.get("message") == "model checked" and r.get("key") == key]
    assert len(rebuilt) == 1, f"one worker makes it again, under the model's claim: {rebuilt}"
    print(f"\ncorrupt weights file: rebuilt once, sha256 {'equal to' if sha256(weights_path) == recorded['weights']['sha256'] else 'other than'} "
          "the first upload's")
    server.stop()

    graph_path.unlink()
    server = make_server(model_dir=directory, workers=2)
    _check_served_from_a_sound_form(server, key, x, want)
    assert graph_path.exists()
    assert _log_events(server, "serving form missing; making it again", key), server.log_text()[-3000:]
    assert len([r for r in server.log_records() if r.get("message") == "model checked" and r.get("key") == key]) == 1
    leftovers = [name for name in os.listdir(directory) if name.startswith(".serving-")]
    assert leftovers == [], leftovers
