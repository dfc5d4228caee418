"""Model monitoring on the real server: gunicorn with 4 sync workers, each counting into its own
memory-mapped file, every report merging all of them.

One module server (its PROMETHEUS_MULTIPROC_DIR a directory of the test's, so the monitoring
runtime directory ``<it>/monitoring`` can be looked at; NEXUS_REFERENCE_ROWS=200) serves every
test, each with model ids of its own; the restart test runs last and replaces it. Predictions go
out from 8 threads over fresh connections (sync workers close them anyway), so they land on
different workers; each test checks that several workers wrote a counts file. Expected bins,
drift scores and classes are computed here from the same numbers (the reference sketch with
nexus.monitoring.sketch, the classes with onnxruntime), so the server's answers are checked
exactly, not only by their verdicts.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import requests

from nexus.monitoring import sketch
from nexus.monitoring.live import FLUSH_AT, FLUSH_S, _Counts
from nexus.observability.metrics import COMPUTED_SERIES
from tests.conftest import files_in
from tests.live.server import CLOSE, LiveServer, metric_samples

TIMEOUT = 30
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MU = np.array([5.8, 3.0, 3.8, 1.2])
SIGMA = np.array([0.8, 0.4, 1.7, 0.7])
SHIFTED = (0, 2)  # the features moved by +2 sigma in the drifted traffic


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mon(tmp_path_factory):
    """The module's server (``mon.server``; the restart test swaps it) and its monitoring runtime directory."""
    base = tmp_path_factory.mktemp("monitoring")
    models_dir, metrics_dir = base / "models", base / "metrics"
    models_dir.mkdir()
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "NEXUS_REFERENCE_ROWS": "200"}
    holder = SimpleNamespace(server=None, env=env, models=models_dir, logs=base / "logs", runtime=metrics_dir / "monitoring")
    holder.server = LiveServer(models_dir, holder.logs, workers=4, env=env).start()
    try:
        yield holder
    finally:
        holder.server.stop()


def draw(seed: int, rows: int, shift: tuple[int, ...] = ()) -> np.ndarray:
    """``rows`` samples of N(MU, SIGMA) per feature, features in ``shift`` moved by +2 sigma; float32 values (as the model takes them)."""
    table = np.random.default_rng(seed).normal(MU, SIGMA, size=(rows, len(MU)))
    for f in shift:
        table[:, f] += 2 * SIGMA[f]
    return table.astype(np.float32).astype(np.float64)


def csv_of(table: np.ndarray, names: list[str] = NAMES) -> bytes:
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in table]
    return ("\n".join(lines) + "\n").encode()


def upload(server, data: bytes, model_id: str, version: str = "1", reference: bytes | None = None, filename: str = "reference.csv"):
    files = {"file": (f"{model_id}.onnx", io.BytesIO(data))}
    if reference is not None:
        files["reference"] = (filename, io.BytesIO(reference))
    return requests.post(server.url("/models/upload"), files=files, data={"id": model_id, "name": model_id, "version": version},
                         headers=CLOSE, timeout=60)


def get(server, path: str):
    return requests.get(server.url(path), headers=CLOSE, timeout=TIMEOUT)


def send(server, model_id: str, table: np.ndarray, version: str | None = None, threads: int = 8) -> list:
    """POST one /predict per row from ``threads`` threads, each on a fresh connection; every answer must be 200."""

    def one(row):
        body = {"model_id": model_id, "features": [float(v) for v in row], **({"version": version} if version else {})}
        response = requests.post(server.url("/predict"), json=body, headers=CLOSE, timeout=TIMEOUT)
        return response.status_code, response.text

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(one, table))
    failed = [a for a in answers if a[0] != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} predictions failed, first: {failed[:3]}"
    settle()
    return answers


def settle() -> None:
    """Give every worker's flusher its turn: a worker counts what its requests queued within FLUSH_S."""
    time.sleep(FLUSH_S * 4)


def reports(server, path: str, times: int = 12) -> list[dict]:
    """Ask ``path`` ``times`` times from 8 threads on fresh connections (so from several workers)."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(server, path), range(times)))
    for answer in answers:
        assert answer.status_code == 200, answer.text
    return [answer.json() for answer in answers]


def counts_view(report: dict) -> dict:
    """What a version's report counts (every worker must answer these the same)."""
    drift = report["drift"]
    return {
        "windows": report["windows"], "classes": report["classes"], "confidence": report["confidence"], "reference": report["reference"],
        "drift": None if drift["window"] is None else {
            part: {"status": drift[part]["status"], "rows": drift[part]["rows"],
                   "features": [(f["name"], f["verdict"], f["count"], f["live"]) for f in drift[part]["features"]]}
            for part in ("window", "last_n")},
    }


def one_report(server, model_id: str, version: str, times: int = 12) -> dict:
    """The version's report, asked ``times`` times: every answer must count the same; return the first."""
    found = reports(server, f"/models/{model_id}/versions/{version}/monitoring", times)
    views = [counts_view(r) for r in found]
    assert all(v == views[0] for v in views), f"workers disagree: {[v['windows'] for v in views]}"
    return found[0]


def wait_ready(server, model_id: str, versions: list[str], looks: int = 12, timeout: float = 20) -> None:
    """Until ``looks`` listings in a row (fresh connections, so from every worker in turn) show every version READY."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < looks:
        assert time.monotonic() < deadline, f"{model_id} {versions} not READY in every worker in {timeout} s"
        response = get(server, f"/models/{model_id}/versions")
        ready = [r["version"] for r in response.json().get("versions", []) if r["state"] == "READY"] if response.status_code == 200 else []
        in_a_row = in_a_row + 1 if ready == versions else 0
        if not in_a_row:
            time.sleep(0.1)


def version_dirs(runtime: Path, model_id: str) -> list[Path]:
    return sorted(runtime.glob(f"{model_id}@*")) if runtime.is_dir() else []


def counts_by_pid(runtime: Path, model_id: str, version: str) -> dict[int, int]:
    """Rows each worker's counts file holds (read with the server's own reader), by pid."""
    found = {}
    for directory in runtime.glob(f"{model_id}@{version}.*") if runtime.is_dir() else ():
        for path in directory.glob("*.counts"):
            counts = _Counts.read(path, len(NAMES))
            assert counts is not None, path
            found[int(path.stem)] = int(counts.totals[:, 1].sum())
    return found


def expected_bins(reference: np.ndarray, live: np.ndarray) -> tuple[list[sketch.FeatureSketch], list[list[int]]]:
    """The reference sketches the server builds from ``reference`` and the bins of ``live`` in them."""
    sketches = sketch.build(reference, NAMES)
    return sketches, [list(map(int, s.count(live[:, i]))) for i, s in enumerate(sketches)]


def expected_classes(data: bytes, table: np.ndarray) -> Counter:
    """The class each row gets from the model, one sample at a time as the server runs it."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels = Counter()
    for row in table.astype(np.float32):
        label, _ = session.run(None, {"input": row[None, :]})
        labels[str(int(label[0]))] += 1
    return labels


def monitoring_samples(server, model_id: str) -> dict:
    """The computed monitoring series of ``model_id`` in one scrape of /metrics."""
    return {key: value for key, value in metric_samples(server).items()
            if key[0] in COMPUTED_SERIES and ("model_id", model_id) in key[1]}


def sample(samples: dict, name: str, **labels) -> float:
    found = [v for (n, pairs), v in samples.items() if n == name and set(labels.items()) <= set(pairs)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


# -- 1. no drift, then drift, across the workers ----------------------------------------------------


def test_same_distribution_is_ok_and_two_shifted_features_alert_in_reports_and_metrics(mon, iris_bytes):
    server, runtime = mon.server, mon.runtime
    reference = draw(1, 1000)
    assert upload(server, iris_bytes, "drift", "1", csv_of(reference)).status_code == 201
    wait_ready(server, "drift", ["1"])
    calm = draw(2, 1000)
    send(server, "drift", calm, version="1")
    assert len(counts_by_pid(runtime, "drift", "1")) >= 2, "all predictions landed on one worker"

    sketches, calm_bins = expected_bins(reference, calm)
    first = one_report(server, "drift", "1")
    assert first["reference"]["source"] == "upload" and first["reference"]["rows"] == 1000
    assert first["reference"]["features"] == NAMES and first["reference"]["collecting"] is None
    assert first["task"]["kind"] == "classifier"
    assert first["windows"]["window"]["predictions"] == 1000 and first["windows"]["window"]["requests"] == 1000
    assert first["windows"]["last_n"] == {"size": 1000, "predictions": 1000}
    assert first["confidence"]["count"] == 1000 and sum(first["confidence"]["counts"]) == 1000
    assert sum(first["classes"].values()) == 1000
    assert {label: n for label, n in first["classes"].items() if n} == dict(expected_classes(iris_bytes, calm))
    assert first["drift"]["status"] != "alert"
    for part in ("window", "last_n"):
        assert first["drift"][part]["rows"] == 1000
        for i, feature in enumerate(first["drift"][part]["features"]):
            assert feature["name"] == NAMES[i] and feature["count"] == 1000
            assert feature["reference"] == list(sketches[i].counts)
            assert feature["live"] == calm_bins[i], (part, feature["name"])
            assert feature["psi"] == pytest.approx(sketch.psi(sketches[i].counts, calm_bins[i]), rel=1e-9)
            assert feature["verdict"] == "ok", (part, feature)
    assert first["drift"]["status"] == "ok"

    # Version 2: the same model and reference; features 0 and 2 shifted by +2 sigma.
    assert upload(server, iris_bytes, "drift", "2", csv_of(reference)).status_code == 201
    wait_ready(server, "drift", ["1", "2"])
    shifted = draw(3, 1000, SHIFTED)
    send(server, "drift", shifted, version="2")
    _, shifted_bins = expected_bins(reference, shifted)
    second = one_report(server, "drift", "2")
    assert second["windows"]["window"]["predictions"] == 1000 and second["windows"]["last_n"]["predictions"] == 1000
    assert second["confidence"]["count"] == 1000 and sum(second["classes"].values()) == 1000
    assert second["drift"]["status"] == "alert"
    for part in ("window", "last_n"):
        verdicts = {f["name"]: f["verdict"] for f in second["drift"][part]["features"]}
        assert verdicts == {name: "alert" if i in SHIFTED else "ok" for i, name in enumerate(NAMES)}, part
        assert [f["live"] for f in second["drift"][part]["features"]] == shifted_bins
        assert second["drift"][part]["status"] == "alert"

    # The model's report holds both versions, each as its own version's report says; version 1 unchanged.
    for whole in reports(server, "/models/drift/monitoring", 8):
        assert [v["version"] for v in whole["versions"]] == ["1", "2"]
        assert counts_view(whole["versions"][0]) == counts_view(first)
        assert counts_view(whole["versions"][1]) == counts_view(second)
        assert whole["thresholds"]["last_n"] == 1000 and whole["thresholds"]["reference_rows"] == 200

    # /metrics, from whichever worker answers: three scrapes agree, and say the same.
    scrapes = [monitoring_samples(server, "drift") for _ in range(3)]
    assert scrapes[0] and all(s == scrapes[0] for s in scrapes[1:])
    samples = scrapes[0]
    assert sample(samples, "model_drift_status", version="1") == 0
    assert sample(samples, "model_drift_status", version="2") == 2
    for version in ("1", "2"):
        assert sample(samples, "model_prediction_confidence_count", version=version) == 1000
        assert sample(samples, "model_prediction_confidence_bucket", version=version, le="+Inf") == 1000
        over = {name for name in NAMES if sample(samples, "model_feature_drift", version=version, feature=name, method="psi") > 0.25}
        assert over == ({NAMES[i] for i in SHIFTED} if version == "2" else set()), version
    assert sum(v for (n, pairs), v in samples.items() if n == "model_predicted_class_total" and ("version", "2") in pairs) == 1000


# -- 2. a reference from the first predictions, collected by every worker ---------------------------


def test_the_first_predictions_of_all_workers_become_the_reference_and_drift_is_read_against_it(mon, iris_bytes):
    server, runtime = mon.server, mon.runtime
    assert upload(server, iris_bytes, "collected").status_code == 201
    wait_ready(server, "collected", ["1"])
    before = one_report(server, "collected", "1", times=4)
    assert before["reference"]["source"] is None and before["drift"]["status"] == "no_reference"
    assert before["reference"]["collecting"] == {"rows": 0, "target": 200}

    send(server, "collected", draw(4, 200))
    assert len(counts_by_pid(runtime, "collected", "1")) >= 2, "all predictions landed on one worker"
    deadline = time.monotonic() + 5
    while True:
        found = reports(server, "/models/collected/versions/1/monitoring", 8)
        if all(r["reference"]["source"] == "predictions" for r in found) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for report in found:
        assert report["reference"]["source"] == "predictions", report["reference"]
        assert report["reference"]["rows"] == 200 and report["reference"]["features"] == [f"input[{i}]" for i in range(4)]
        assert report["reference"]["collecting"] is None
        assert report["windows"]["window"]["predictions"] == 200
    assert (mon.models / "collected@1.reference.json").is_file()
    assert list(runtime.rglob("collect.rows")) == [], "the collected rows outlived the reference"

    time.sleep(1.2)  # every worker looks for the reference again at its next prediction
    send(server, "collected", draw(5, 300, SHIFTED))
    report = one_report(server, "collected", "1")
    assert report["windows"]["window"]["predictions"] == 500
    assert report["drift"]["status"] == "alert"
    for part in ("window", "last_n"):
        features = report["drift"][part]["features"]
        assert [f["count"] for f in features] == [300] * 4, part  # the rows counted after the reference, only
        assert {f["name"]: f["verdict"] for f in features} == {f"input[{i}]": "alert" if i in SHIFTED else "ok" for i in range(4)}, part
    assert list(runtime.rglob("collect.rows")) == []


# -- 3. a reference that does not fit the model ------------------------------------------------------


def test_a_reference_of_the_wrong_width_is_refused_and_leaves_nothing(mon, iris_bytes):
    server = mon.server
    before = files_in(mon.models)
    wrong = draw(6, 200)[:, :3]
    for reference, filename in ((csv_of(wrong, NAMES[:3]), "wrong.csv"), (_npy(wrong), "wrong.npy")):
        response = upload(server, iris_bytes, "badref", "1", reference, filename)
        assert response.status_code == 400, response.text
        message = response.json()["error"]
        assert "4 value(s)" in message and ("3 columns" in message or "[200, 3]" in message), message
        assert files_in(mon.models) == before
        assert [n for n in files_in(mon.models) if "badref" in n or n.endswith(".tmp")] == []
        for answer in [get(server, "/models/badref") for _ in range(8)]:
            assert answer.status_code == 404, answer.text
    assert version_dirs(mon.runtime, "badref") == []


def _npy(table: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, table)
    return buffer.getvalue()


# -- 5. delete ---------------------------------------------------------------------------------------


def test_deleting_a_model_leaves_no_reference_no_counts_and_no_series(mon, iris_bytes):
    server, runtime = mon.server, mon.runtime
    assert upload(server, iris_bytes, "gone", "1", csv_of(draw(7, 200))).status_code == 201
    wait_ready(server, "gone", ["1"])
    send(server, "gone", draw(8, 120))
    assert (mon.models / "gone@1.reference.json").is_file()
    assert len(version_dirs(runtime, "gone")) == 1
    assert monitoring_samples(server, "gone")

    response = requests.delete(server.url("/models/gone"), headers=CLOSE, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert [n for n in files_in(mon.models) if n.startswith(("gone@", "gone.", ".gone"))] == []
    deadline, clean_in_a_row = time.monotonic() + 2, 0
    while clean_in_a_row < 8:  # eight scrapes in a row (fresh connections, so every worker) without a series of it
        left = version_dirs(runtime, "gone")
        series = [key for key in metric_samples(server) if ("model_id", "gone") in key[1]]
        clean_in_a_row = clean_in_a_row + 1 if not left and not series else 0
        assert clean_in_a_row or time.monotonic() < deadline, f"2 s after the delete: directories {left}, series {series[:5]}"
    for answer in [get(server, "/models/gone/monitoring") for _ in range(4)]:
        assert answer.status_code == 404, answer.text


# -- 6. a worker killed -----------------------------------------------------------------------------


def _wait_replaced(server, dead: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not (len(pids := server.worker_pids()) == server.workers and dead not in pids):
        assert time.monotonic() < deadline, f"gunicorn did not replace worker {dead}: {pids}"
        time.sleep(0.1)


def test_the_counts_of_a_killed_worker_still_count(mon, iris_bytes):
    server, runtime = mon.server, mon.runtime
    assert upload(server, iris_bytes, "killed", "1", csv_of(draw(9, 200))).status_code == 201
    wait_ready(server, "killed", ["1"])
    send(server, "killed", draw(10, 400))
    by_pid = counts_by_pid(runtime, "killed", "1")
    assert sum(by_pid.values()) == 400 and len(by_pid) >= 2, by_pid
    victim = max(by_pid, key=by_pid.get)
    assert victim in server.worker_pids()  # one of this server's workers
    os.kill(victim, signal.SIGKILL)
    _wait_replaced(server, victim)
    wait_ready(server, "killed", ["1"])
    assert counts_by_pid(runtime, "killed", "1")[victim] == by_pid[victim], "the dead worker's file is gone or changed"
    report = one_report(server, "killed", "1")
    assert report["windows"]["window"]["predictions"] == 400 and report["windows"]["last_n"]["predictions"] == 400
    assert report["confidence"]["count"] == 400 and sum(report["classes"].values()) == 400
    send(server, "killed", draw(11, 100))
    report = one_report(server, "killed", "1")
    assert report["windows"]["window"]["predictions"] == 500 and report["confidence"]["count"] == 500
    assert [f["count"] for f in report["drift"]["window"]["features"]] == [500] * 4

    # Under load: a worker killed while 8 threads keep predicting. Only the request it was answering
    # may fail; of the ones answered, only what the victim had queued and not yet counted (fewer
    # than FLUSH_AT, its last FLUSH_S) may be missing, and the one that failed may or may not count.
    def one(row):
        try:
            return requests.post(server.url("/predict"), json={"model_id": "killed", "features": [float(v) for v in row]},
                                 headers=CLOSE, timeout=TIMEOUT).status_code
        except requests.RequestException:
            return "exception"

    rows = draw(12, 400)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, row) for row in rows]
        while sum(f.done() for f in futures) < 150:
            time.sleep(0.01)
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        statuses = [f.result() for f in futures]
    _wait_replaced(server, victim)
    settle()
    ok, failed = statuses.count(200), len(statuses) - statuses.count(200)
    assert failed <= 1, Counter(statuses)
    report = one_report(server, "killed", "1")
    assert 500 + ok - (FLUSH_AT - 1) <= report["windows"]["window"]["predictions"] <= 500 + ok + failed, (ok, failed, report["windows"])
    counted = report["windows"]["window"]["predictions"]
    send(server, "killed", draw(13, 100))
    assert one_report(server, "killed", "1")["windows"]["window"]["predictions"] == counted + 100


# -- 4. restart (last: it replaces the module's server) ---------------------------------------------


def test_a_restart_keeps_the_references_and_starts_the_counts_from_zero(mon, iris_bytes):
    server = mon.server
    assert upload(server, iris_bytes, "kept", "1", csv_of(draw(14, 300))).status_code == 201
    assert upload(server, iris_bytes, "kept2").status_code == 201  # its reference: the first 200 predictions
    wait_ready(server, "kept", ["1"])
    wait_ready(server, "kept2", ["1"])
    send(server, "kept", draw(15, 150))
    send(server, "kept2", draw(16, 200))
    deadline = time.monotonic() + 5
    while not (mon.models / "kept2@1.reference.json").exists():
        assert time.monotonic() < deadline, "no reference collected from the first 200 predictions in 5 s"
        time.sleep(0.1)
    old = {model_id: one_report(server, model_id, "1", times=4) for model_id in ("kept", "kept2")}
    assert old["kept"]["reference"]["source"] == "upload" and old["kept2"]["reference"]["source"] == "predictions"

    assert server.stop(signal.SIGTERM) == 0
    mon.server = server = LiveServer(mon.models, mon.logs, workers=4, env=mon.env).start()
    wait_ready(server, "kept", ["1"])
    for model_id in ("kept", "kept2"):
        report = one_report(server, model_id, "1")
        assert {k: report["reference"][k] for k in ("source", "rows", "created_at", "file", "features")} == \
            {k: old[model_id]["reference"][k] for k in ("source", "rows", "created_at", "file", "features")}
        assert report["windows"]["window"]["predictions"] == 0 and report["windows"]["window"]["requests"] == 0
        assert report["windows"]["last_n"]["predictions"] == 0
        assert report["confidence"]["count"] == 0 and sum(report["classes"].values()) == 0
        assert report["drift"]["status"] == "insufficient"
    send(server, "kept", draw(17, 120))
    report = one_report(server, "kept", "1")
    assert report["windows"]["window"]["predictions"] == 120
    assert [f["count"] for f in report["drift"]["window"]["features"]] == [120] * 4
