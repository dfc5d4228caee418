"""Prediction records, ground-truth feedback and live accuracy on the real server: gunicorn with 4
sync workers (tests/live/server.py), the skl2onnx iris classifier uploaded (class labels "0",
"1", "2"), SQLite by default and a real PostgreSQL (tests/live/postgres.py) shared by replicas.

Predictions go out from 8 threads over fresh connections (``Connection: close``), so they land on
different workers; the test keeps each answer's request id, the class the model answered
(``output_label``) and when the answer arrived. The expected accuracy, correct count, confusion
and per-class precision and recall are computed here from those answers and the truths the test
sends, so the server's numbers are checked exactly. Stored state is read from the database itself
(sqlite3 on ``<model dir>.state/records.db``, psycopg on PostgreSQL).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psycopg
import pytest
import requests
from sklearn.datasets import load_iris

from tests.conftest import wait_for
from tests.live.postgres import running_postgres
from tests.live.server import CLOSE, LiveServer, metric_samples, total, upload

pytestmark = pytest.mark.live

TIMEOUT = 30
CLASSES = ("0", "1", "2")
VISIBLE_S = 1.0  # the contract: a prediction is visible to feedback within 1 s
TABLES = ("nexus_predictions", "nexus_labels", "nexus_label_totals")


# -- helpers --------------------------------------------------------------------------------------


class Answer(NamedTuple):
    """One answered prediction: its request id, the class the model answered, when the answer arrived (time.time())."""

    request_id: str
    predicted: str
    at: float


def start(tmp_path: Path, models: Path, name: str, env: dict[str, str] | None = None, workers: int = 4) -> LiveServer:
    models.mkdir(parents=True, exist_ok=True)
    return LiveServer(models, tmp_path / f"logs-{name}", workers=workers, env=env or {}).start()


@pytest.fixture
def servers():
    """Servers a test starts (append them): every one is stopped after the test."""
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.stop()


def rows_of(seed: int, n: int) -> np.ndarray:
    """``n`` iris-like rows (dataset rows with noise), so the model answers all three classes and is sometimes wrong."""
    features, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(seed)
    picked = features[rng.integers(0, len(features), n)] + rng.normal(0, 0.35, (n, 4))
    return picked.astype(np.float32).astype(np.float64)


def predict_one(server: LiveServer, model_id: str, row) -> Answer:
    response = requests.post(server.url("/predict"), json={"model_id": model_id, "features": [float(v) for v in row]},
                             headers=CLOSE, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == body["request_id"], (response.headers, body)
    return Answer(body["request_id"], str(body["outputs"]["output_label"][0]), time.time())


def predict_all(server: LiveServer, model_id: str, rows: np.ndarray, threads: int = 8) -> list[Answer]:
    """One /predict per row from ``threads`` threads, each on a fresh connection; every answer must be 200."""
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda row: predict_one(server, model_id, row), rows))
    assert len({a.request_id for a in answers}) == len(answers), "request ids repeat"
    return answers


class Load:
    """``threads`` threads predicting over fresh connections until stopped: every answer, and every failure with its time."""

    def __init__(self, server: LiveServer, model_id: str, threads: int = 8, seed: int = 0) -> None:
        self.server, self.model_id = server, model_id
        self.rows = rows_of(seed, 256)
        self.answers: list[Answer] = []
        self.failures: list[tuple[float, str]] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        i = index
        while not self._stop.is_set():
            row = self.rows[i % len(self.rows)]
            i += len(self._threads)
            sent = time.monotonic()
            try:
                response = requests.post(self.server.url("/predict"), json={"model_id": self.model_id, "features": [float(v) for v in row]},
                                         headers=CLOSE, timeout=TIMEOUT)
            except requests.RequestException as exc:
                self.failures.append((time.time(), repr(exc)))
                time.sleep(0.01)
                continue
            if response.status_code != 200:
                self.failures.append((time.time(), f"{response.status_code} {response.text[:200]}"))
                continue
            self.latencies.append(time.monotonic() - sent)
            body = response.json()
            self.answers.append(Answer(body["request_id"], str(body["outputs"]["output_label"][0]), time.time()))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def wait_answers(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"only {len(self.answers)} of {count} answers in {timeout} s; failures {self.failures[:3]}"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 5)

    def __exit__(self, *exc) -> None:
        self.stop()


def get(server: LiveServer, path: str) -> requests.Response:
    return requests.get(server.url(path), headers=CLOSE, timeout=TIMEOUT)


def feedback(server: LiveServer, model_id: str, labels: list[dict]) -> requests.Response:
    return requests.post(server.url(f"/models/{model_id}/feedback"), json=labels, headers=CLOSE, timeout=TIMEOUT)


def feedback_ok(server: LiveServer, model_id: str, labels: list[dict]) -> dict:
    response = feedback(server, model_id, labels)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["received"] == len(labels) == len(body["items"])
    assert body["matched"] + body["duplicate"] + body["unknown"] + body["expired"] == len(labels)
    return body


def wait_ready(server: LiveServer, model_id: str, looks: int = 12, timeout: float = 20) -> None:
    """Until ``looks`` listings in a row (fresh connections, so from every worker in turn) show version 1 READY."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < looks:
        assert time.monotonic() < deadline, f"{model_id} not READY in every worker of {server.url()} in {timeout} s"
        response = get(server, f"/models/{model_id}/versions")
        ready = [r["version"] for r in response.json().get("versions", []) if r["state"] == "READY"] if response.status_code == 200 else []
        in_a_row = in_a_row + 1 if ready == ["1"] else 0
        if not in_a_row:
            time.sleep(0.1)


def deploy(server: LiveServer, data: bytes, model_id: str, *others: LiveServer) -> None:
    """Upload ``model_id`` (version 1) and wait until every worker of ``server`` and ``others`` serves it."""
    response = upload(server, data, model_id)
    assert response.status_code == 201, response.text
    for each in (server, *others):
        wait_ready(each, model_id)


def truths_for(answers: list[Answer], seed: int) -> list[str]:
    """A truth per answer: the answered class three times in four, another class otherwise."""
    rng = np.random.default_rng(seed)
    truths = []
    for answer in answers:
        if rng.random() < 0.75:
            truths.append(answer.predicted)
        else:
            truths.append(str(rng.choice([c for c in CLASSES if c != answer.predicted])))
    return truths


def label_items(answers: list[Answer], truths: list[str], start: int = 0) -> list[dict]:
    """Feedback items, varied as clients send them: truth as text or as an integer, the id alone or as ``<id>/0``."""
    items = []
    for i, (answer, truth) in enumerate(zip(answers, truths, strict=True), start):
        items.append({"request_id": answer.request_id if i % 3 else f"{answer.request_id}/0",
                      "truth": truth if i % 2 else int(truth)})
    return items


def expected_window(pairs: list[tuple[str, str]]) -> dict:
    """What a classifier window must say for these (truth, predicted) labels (without ``seconds``)."""
    n = len(pairs)
    correct = sum(t == p for t, p in pairs)
    confusion: dict[str, dict[str, int]] = {}
    for (t, p), count in Counter(pairs).items():
        confusion.setdefault(t, {})[p] = count
    classes = {}
    for label in {t for t, _ in pairs} | {p for _, p in pairs}:
        support = sum(1 for t, _ in pairs if t == label)
        made = sum(1 for _, p in pairs if p == label)
        hits = sum(1 for t, p in pairs if t == p == label)
        classes[label] = {"precision": hits / made if made else None, "recall": hits / support if support else None,
                          "support": support, "predicted": made}
    return {"labels": n, "correct": correct, "accuracy": correct / n if n else None, "classes": classes, "confusion": confusion}


def without_seconds(window: dict) -> dict:
    return {key: value for key, value in window.items() if key != "seconds"}


def performances(server: LiveServer, model_id: str, times: int = 12) -> list[dict]:
    """``GET /models/<id>/performance`` ``times`` times from 8 threads on fresh connections (so from several workers)."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(server, f"/models/{model_id}/performance"), range(times)))
    for answer in answers:
        assert answer.status_code == 200, answer.text
    found = [answer.json() for answer in answers]
    for body in found:
        for version in body["versions"]:
            version.pop("read_at", None)
    return found


def check_performance(found: list[dict], model_id: str, pairs: list[tuple[str, str]]) -> None:
    """Every answer the same, and each window exactly what ``pairs`` (truth, predicted) make."""
    assert all(body == found[0] for body in found), "workers disagree:\n" + "\n".join(json.dumps(b["versions"][0]["windows"]["hour"]) for b in found)
    body = found[0]
    assert body["model_id"] == model_id and [v["version"] for v in body["versions"]] == ["1"]
    version = body["versions"][0]
    assert version["task"] == {"kind": "classifier", "output": "output_probability"}
    want = expected_window(pairs)
    for name, seconds in (("hour", 3600), ("day", 86400), ("since_upload", None)):
        window = version["windows"][name]
        assert window["seconds"] == seconds
        assert without_seconds(window) == want, (name, window, want)
    points = version["timeline"]["points"]
    assert version["timeline"]["bucket_seconds"] == 3600
    assert sum(p["labels"] for p in points) == want["labels"]
    assert round(sum(p["labels"] * p["accuracy"] for p in points)) == want["correct"]


def records_db(server_models: Path) -> Path:
    return server_models.parent / f"{server_models.name}.state" / "records.db"


def sqlite_rows(path: Path, query: str, *args) -> list[tuple]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(query, args).fetchall()
    finally:
        connection.close()


def stored_ids_sqlite(path: Path, model_id: str) -> set[str]:
    return {r[0] for r in sqlite_rows(path, "SELECT request_id FROM nexus_predictions WHERE model_id = ?", model_id)}


def wait_visible(answers: list[Answer], stored_ids, what: str = "records") -> float:
    """Wait until every answer's record is stored (``stored_ids()``: the ids the database holds); return how long after
    the last answer that was. The contract says within 1 s; on a loaded test machine allow a little more."""
    wanted = {a.request_id for a in answers}
    last = max(a.at for a in answers)
    time.sleep(max(0.0, last + VISIBLE_S - time.time()))
    waited(f"the {what} of {len(wanted)} answered predictions stored", lambda: wanted <= stored_ids(), timeout=10)
    late = time.time() - last
    assert late < VISIBLE_S + 2.0, f"records became visible {late:.2f} s after the last answer (contract: within {VISIBLE_S} s)"
    return late


def written_by_pid(metrics_dir: Path) -> dict[int, float]:
    """``model_records_written_total`` per worker, read from each worker's multiprocess counter file."""
    from prometheus_client.mmap_dict import MmapedDict

    found = {}
    for path in metrics_dir.glob("counter_*.db"):
        for entry in MmapedDict.read_all_values_from_file(str(path)):
            key, value = entry[0], entry[1]
            if json.loads(key)[1] == "model_records_written_total":
                found[int(path.stem.rsplit("_", 1)[1])] = value
    return found


def waited(what: str, check, timeout: float, every: float = 0.1):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    found = wait_for(check, timeout, every)
    assert found, f"{what}: not within {timeout} s"
    return found


def readiness_records(server: LiveServer) -> tuple[int, str | None]:
    response = get(server, "/health/ready")
    return response.status_code, response.json().get("records")


def wait_replaced(server: LiveServer, dead: int, timeout: float = 20) -> None:
    waited(f"gunicorn replacing worker {dead}",
             lambda: len(pids := server.worker_pids()) == server.workers and dead not in pids, timeout)


# -- 1. four workers, SQLite: labels, outcomes and accuracy ------------------------------------------


def test_labels_from_any_worker_join_predictions_from_every_worker_and_accuracy_is_exact(tmp_path, servers, iris_bytes):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    models = tmp_path / "models"
    server = start(tmp_path, models, "sqlite", {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    servers.append(server)
    deploy(server, iris_bytes, "iris")

    answers = predict_all(server, "iris", rows_of(1, 500))
    assert set(a.predicted for a in answers) == set(CLASSES), Counter(a.predicted for a in answers)
    path = records_db(models)
    wait_visible(answers, lambda: stored_ids_sqlite(path, "iris"))  # the contract: visible to feedback within 1 s

    # Every prediction is stored, by several workers; /metrics (all workers merged) agrees.
    assert stored_ids_sqlite(path, "iris") == {a.request_id for a in answers}
    stored = dict(sqlite_rows(path, "SELECT request_id, predicted FROM nexus_predictions WHERE model_id = 'iris' AND row = 0"))
    assert stored == {a.request_id: a.predicted for a in answers}
    by_pid = written_by_pid(metrics_dir)
    assert sum(by_pid.values()) == 500 and len([n for n in by_pid.values() if n]) >= 2, f"records written per worker: {by_pid}"
    assert set(by_pid) <= set(server.worker_pids())
    assert total(metric_samples(server), "model_records_written_total") == 500

    # 400 of them labelled: 380 in four concurrent calls (to whichever workers take them), then 20 more
    # in a fifth call with re-sent labels, a repeat within the call and unknown ids.
    rng = np.random.default_rng(2)
    order = rng.permutation(len(answers))
    chosen = [answers[i] for i in order[:400]]
    unlabelled = [answers[i] for i in order[400:]]
    truths = truths_for(chosen, 3)
    items = label_items(chosen, truths)
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda k: feedback_ok(server, "iris", items[k * 95:(k + 1) * 95]), range(4)))
    for k, body in enumerate(bodies):
        assert (body["matched"], body["duplicate"], body["unknown"], body["expired"]) == (95, 0, 0, 0), body
        for answer, truth, item, sent in zip(chosen[k * 95:(k + 1) * 95], truths[k * 95:(k + 1) * 95], body["items"],
                                             items[k * 95:(k + 1) * 95], strict=True):
            assert sent["request_id"] in (answer.request_id, f"{answer.request_id}/0")
            assert item == {"request_id": sent["request_id"], "outcome": "matched", "version": "1",  # as the client wrote it
                            "predicted": answer.predicted, "correct": truth == answer.predicted}, item

    last = chosen[380:]
    flipped = [{"request_id": a.request_id, "truth": next(c for c in CLASSES if c != t)} for a, t in zip(chosen[:20], truths[:20])]
    unknown = [{"request_id": str(uuid.uuid4()), "truth": "1"} for _ in range(9)] + \
              [{"request_id": f"{unlabelled[0].request_id}/1", "truth": "0"},  # row 1 of a one-row prediction
               {"request_id": "never-predicted.id:1", "truth": 2}]
    repeat = {"request_id": last[0].request_id, "truth": next(c for c in CLASSES if c != truths[380])}
    call = label_items(last, truths[380:], 380) + [repeat] + flipped + unknown
    body = feedback_ok(server, "iris", call)
    assert (body["matched"], body["duplicate"], body["unknown"], body["expired"]) == (20, 21, 11, 0), {k: v for k, v in body.items() if k != "items"}
    outcomes = [item["outcome"] for item in body["items"]]
    assert outcomes == ["matched"] * 20 + ["duplicate"] * 21 + ["unknown"] * 11
    assert all(item == {"request_id": item["request_id"], "outcome": "duplicate", "version": "1"} for item in body["items"][20:41])
    assert [item["request_id"] for item in body["items"][41:]] == [u["request_id"] for u in unknown]
    assert all(set(item) == {"request_id", "outcome"} for item in body["items"][41:])

    # Re-sending everything once more: all duplicates, nothing counted.
    again = feedback_ok(server, "iris", items)
    assert (again["matched"], again["duplicate"], again["unknown"]) == (0, 400, 0)

    # Exactly what the test computes from the answers and the first truth of each, from every worker.
    pairs = [(t, a.predicted) for a, t in zip(chosen, truths, strict=True)]
    check_performance(performances(server, "iris"), "iris", pairs)
    version = get(server, "/models/iris/versions/1/performance").json()
    assert without_seconds(version["windows"]["since_upload"]) == expected_window(pairs)
    correct = sum(t == p for t, p in pairs)
    assert sqlite_rows(path, "SELECT count(*), sum(correct) FROM nexus_labels WHERE model_id = 'iris'") == [(400, correct)]
    scrapes = [metric_samples(server) for _ in range(3)]
    for samples in scrapes:
        assert total(samples, "model_feedback_total", model_id="iris", version="1", outcome="correct") == correct
        assert total(samples, "model_feedback_total", model_id="iris", version="1", outcome="incorrect") == 400 - correct


# -- 2. PostgreSQL shared by two replicas ---------------------------------------------------------


def test_replicas_sharing_postgres_join_a_label_sent_to_one_with_a_prediction_made_by_the_other(tmp_path, servers, iris_bytes):
    with running_postgres(tmp_path / "pg") as pg:
        models = tmp_path / "models"  # one model directory, as replicas share it (a volume)
        env = {"NEXUS_DATABASE_URL": pg.url}
        a = start(tmp_path, models, "a", env)
        servers.append(a)
        b = start(tmp_path, models, "b", env)
        servers.append(b)
        deploy(a, iris_bytes, "iris", b)

        answers = predict_all(a, "iris", rows_of(4, 200))

        def stored_ids() -> set[str]:
            with psycopg.connect(pg.url) as conn:
                return {r[0] for r in conn.execute("SELECT request_id FROM nexus_predictions WHERE model_id = 'iris'")}

        wait_visible(answers, stored_ids)
        truths = truths_for(answers, 5)
        items = label_items(answers, truths)
        with ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda k: feedback_ok(b, "iris", items[k * 100:(k + 1) * 100]), range(2)))
        for k, body in enumerate(bodies):
            assert (body["matched"], body["duplicate"], body["unknown"]) == (100, 0, 0), {key: v for key, v in body.items() if key != "items"}
            assert [item["predicted"] for item in body["items"]] == [x.predicted for x in answers[k * 100:(k + 1) * 100]]
        again = feedback_ok(a, "iris", items[:50] + items[150:])  # the same labels sent to the other replica
        assert (again["matched"], again["duplicate"], again["unknown"]) == (0, 100, 0)

        pairs = [(t, x.predicted) for x, t in zip(answers, truths, strict=True)]
        on_a, on_b = performances(a, "iris"), performances(b, "iris")
        check_performance(on_a, "iris", pairs)
        check_performance(on_b, "iris", pairs)
        assert on_a[0] == on_b[0]
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT count(*) FROM nexus_predictions WHERE model_id = 'iris'").fetchone() == (200,)
            assert conn.execute("SELECT count(*), count(DISTINCT request_id) FROM nexus_labels WHERE model_id = 'iris'").fetchone() == (200, 200)
            assert conn.execute("SELECT sum(labels) FROM nexus_label_totals WHERE model_id = 'iris'").fetchone() == (200,)
        correct = sum(t == p for t, p in pairs)
        counted_b = metric_samples(b)
        assert total(counted_b, "model_feedback_total", model_id="iris", outcome="correct") == correct
        assert total(counted_b, "model_feedback_total", model_id="iris", outcome="incorrect") == 200 - correct
        assert total(metric_samples(a), "model_feedback_total", model_id="iris") == 0  # the duplicates counted nowhere


# -- 3. a worker killed under load -----------------------------------------------------------------


def test_a_worker_killed_under_load_loses_at_most_its_last_second_of_records(tmp_path, servers, iris_bytes):
    models = tmp_path / "models"
    server = start(tmp_path, models, "kill")
    servers.append(server)
    deploy(server, iris_bytes, "iris")

    with Load(server, "iris", seed=6) as load:
        load.wait_answers(300)
        victim = server.worker_pids()[0]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_replaced(server, victim)
        load.wait_answers(len(load.answers) + 300)
    answers = list(load.answers)
    assert len(load.failures) <= 1, load.failures  # only the request the victim was answering
    assert all(killed_at <= at for at, _ in load.failures), load.failures

    path = records_db(models)
    after = [a for a in answers if a.at > killed_at + 0.2]
    waited("the records of the predictions answered after the kill", lambda: {a.request_id for a in after} <= stored_ids_sqlite(path, "iris"),
             timeout=5)
    stored = stored_ids_sqlite(path, "iris")
    missing = [a for a in answers if a.request_id not in stored]
    early = [round(killed_at - a.at, 3) for a in missing if a.at <= killed_at - 1.0]
    assert early == [], f"{len(early)} predictions answered more than 1 s before the kill have no record (answered that many s before it: {early[:10]})"
    late = [round(a.at - killed_at, 3) for a in missing if a.at > killed_at + 0.2]
    assert late == [], f"predictions answered after the kill (by live workers) have no record: {late[:10]}"
    print(f"{len(answers)} answered, {len(missing)} records lost with the killed worker")

    # Labelled, the stored ones all match; the lost ones are unknown, nothing else.
    body = feedback_ok(server, "iris", [{"request_id": a.request_id, "truth": a.predicted} for a in answers])
    assert (body["matched"], body["unknown"], body["duplicate"]) == (len(answers) - len(missing), len(missing), 0)


# -- 4. SIGTERM right after a burst ------------------------------------------------------------------


def test_a_graceful_stop_writes_every_answered_prediction(tmp_path, servers, iris_bytes):
    models = tmp_path / "models"
    server = start(tmp_path, models, "term")
    servers.append(server)
    deploy(server, iris_bytes, "iris")

    with Load(server, "iris", seed=7) as load:
        load.wait_answers(400)
        stopped_at = time.time()
        code = server.stop(signal.SIGTERM)  # while the burst is still arriving: the last answers are still queued
    assert code == 0, server.log_text()[-2000:]
    answers = list(load.answers)
    recent = [a for a in answers if a.at > stopped_at - 0.2]
    assert recent, "no prediction was answered in the last 0.2 s before SIGTERM: nothing was still queued"
    stored = stored_ids_sqlite(records_db(models), "iris")
    missing = [round(a.at - stopped_at, 3) for a in answers if a.request_id not in stored]
    warnings = [line for line in server.log_lines() if '"level": "INFO"' not in line and '"level":"INFO"' not in line]
    assert missing == [], (f"{len(missing)} of {len(answers)} answered predictions have no record after SIGTERM "
                           f"(answered at, s after SIGTERM: {missing[:10]}); server warnings: {warnings[-5:]}")


# -- 5. PostgreSQL stopped in the middle of a load run -------------------------------------------------


def test_the_database_going_away_costs_records_not_predictions_and_they_come_back(tmp_path, servers, iris_bytes):
    with running_postgres(tmp_path / "pg") as pg:
        models = tmp_path / "models"
        server = start(tmp_path, models, "down", {"NEXUS_DATABASE_URL": pg.url, "NEXUS_RECORD_QUEUE": "50"})
        servers.append(server)
        deploy(server, iris_bytes, "iris")
        assert readiness_records(server) == (200, "ok")

        with Load(server, "iris", seed=8) as load:
            load.wait_answers(200)
            pg.stop()
            down_at = time.time()
            # Readiness stays 200 and names the failure, in every worker (8 answers in a row say so).
            seen: list[tuple[int, str | None]] = []

            def every_worker_says_down():
                seen.extend(readiness_records(server) for _ in range(8))
                return all(code == 200 and (text or "").startswith("database unavailable") for code, text in seen[-8:])

            waited("readiness naming the database failure", every_worker_says_down, timeout=15)
            assert all(code == 200 for code, _ in seen), Counter(code for code, _ in seen)
            reason = seen[-1][1]
            assert "records dropped" in reason and ("refused" in reason.lower() or "connect" in reason.lower()), reason
            refused = feedback(server, "iris", [{"request_id": load.answers[0].request_id, "truth": "0"}])
            assert refused.status_code == 503 and refused.json()["code"] == "records_unavailable", refused.text
            assert "Retry-After" in refused.headers
            assert get(server, "/models/iris/performance").status_code == 503
            waited("model_records_dropped_total rising", lambda: total(metric_samples(server), "model_records_dropped_total") > 0, timeout=10)
            load.wait_answers(len(load.answers) + 300)
            pg.start()
            up_at = time.time()
            load.wait_answers(len(load.answers) + 200)
        assert load.failures == [], f"{len(load.failures)} predictions failed: {load.failures[:3]}"
        answers = list(load.answers)
        assert max(load.latencies) < 5.0, f"a prediction took {max(load.latencies):.2f} s while the database was down"
        assert sum(down_at < a.at < up_at for a in answers) >= 300

        # Every worker writes again: readiness says "ok" (and how many were dropped) 12 times in a row.
        streak: list[str | None] = []

        def back():
            streak.append(readiness_records(server)[1])
            return len(streak) >= 12 and all((text or "").startswith("ok") for text in streak[-12:])

        waited(f"readiness back to ok after the restart (last: {streak[-1:]})", back, timeout=30)
        dropped_note = streak[-1]
        samples = metric_samples(server)
        dropped = total(samples, "model_records_dropped_total")
        written = total(samples, "model_records_written_total")
        assert dropped > 0
        with psycopg.connect(pg.url) as conn:
            stored = conn.execute("SELECT count(*) FROM nexus_predictions WHERE model_id = 'iris'").fetchone()[0]
        assert stored == written, (stored, written)
        assert stored + dropped == len(answers), f"{len(answers)} answered, {stored} stored, {dropped} counted dropped ({dropped_note})"

        # Labelled: the stored ones match, the dropped ones are unknown.
        body = feedback_ok(server, "iris", [{"request_id": a.request_id, "truth": a.predicted} for a in answers])
        assert (body["matched"], body["unknown"], body["duplicate"]) == (stored, dropped, 0)

        # New predictions are recorded again, and visible to feedback within the second.
        fresh = predict_all(server, "iris", rows_of(9, 80))
        time.sleep(max(0.0, max(a.at for a in fresh) + VISIBLE_S - time.time()))
        body = feedback_ok(server, "iris", [{"request_id": a.request_id, "truth": a.predicted} for a in fresh])
        assert (body["matched"], body["unknown"]) == (80, 0), {k: v for k, v in body.items() if k != "items"}
        assert total(metric_samples(server), "model_records_dropped_total") == dropped


# -- 6. deleting a model deletes its records ----------------------------------------------------------


def test_deleting_a_model_removes_its_records_and_nothing_else(tmp_path, servers, iris_bytes):
    models = tmp_path / "models"
    server = start(tmp_path, models, "delete")
    servers.append(server)
    deploy(server, iris_bytes, "doomed")
    deploy(server, iris_bytes, "kept")
    made = {model_id: predict_all(server, model_id, rows_of(seed, 120)) for seed, model_id in ((10, "doomed"), (11, "kept"))}
    path = records_db(models)
    for model_id, answers in made.items():
        wait_visible(answers, lambda m=model_id: stored_ids_sqlite(path, m))
    for model_id, answers in made.items():
        body = feedback_ok(server, model_id, [{"request_id": a.request_id, "truth": a.predicted} for a in answers[:60]])
        assert body["matched"] == 60
    # A model's predictions are not another's: the ids of "doomed" are unknown to "kept".
    assert feedback_ok(server, "kept", [{"request_id": made["doomed"][-1].request_id, "truth": "0"}])["unknown"] == 1

    def counts(model_id: str) -> dict[str, int]:
        return {table: sqlite_rows(path, f"SELECT count(*) FROM {table} WHERE model_id = ?", model_id)[0][0] for table in TABLES}

    assert counts("doomed")["nexus_predictions"] == 120 and counts("doomed")["nexus_labels"] == 60
    assert counts("doomed")["nexus_label_totals"] > 0
    kept_before = counts("kept")

    response = requests.delete(server.url("/models/doomed"), headers=CLOSE, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert counts("doomed") == dict.fromkeys(TABLES, 0)
    assert counts("kept") == kept_before
    for answer in [get(server, "/models/doomed/performance") for _ in range(4)]:
        assert answer.status_code == 404 and answer.json()["code"] == "model_not_found", answer.text

    # Uploaded again under the same id: it starts from nothing, and the old ids are unknown.
    deploy(server, iris_bytes, "doomed")
    for body in performances(server, "doomed", times=8):
        assert body["versions"][0]["windows"]["since_upload"]["labels"] == 0
    body = feedback_ok(server, "doomed", [{"request_id": a.request_id, "truth": "0"} for a in made["doomed"]])
    assert body["unknown"] == 120


def test_predictions_answered_before_a_delete_leave_no_records(tmp_path, servers, iris_bytes):
    """Traffic on every worker up to the moment of the delete: no record of a prediction answered before
    the DELETE was even sent may outlive it (other workers still hold such records in their queues)."""
    models = tmp_path / "models"
    server = start(tmp_path, models, "delete-load")
    servers.append(server)
    deploy(server, iris_bytes, "doomed")
    with Load(server, "doomed", seed=12) as load:
        load.wait_answers(200)
        sent_at = time.time()
        response = requests.delete(server.url("/models/doomed"), headers=CLOSE, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
    answered_before = {a.request_id: a.at for a in load.answers if a.at < sent_at}
    assert len(answered_before) >= 200
    assert all(f[1].startswith("404") for f in load.failures), load.failures[:3]  # after the delete: model_not_found
    path = records_db(models)
    time.sleep(VISIBLE_S + 0.5)  # every worker has written what it had queued (WRITE_S is 0.2 s)
    left = sqlite_rows(path, "SELECT request_id, created_at FROM nexus_predictions WHERE model_id = 'doomed'")
    before = sorted(round(answered_before[rid] - sent_at, 3) for rid, _ in left if rid in answered_before)
    assert before == [], (f"{len(before)} records of predictions answered before DELETE /models/doomed was sent outlived it "
                          f"({len(left)} records of 'doomed' left in all; answered that many s before the DELETE: {before[:8]} ... {before[-3:]})")
