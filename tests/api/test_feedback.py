"""Prediction records, ground-truth feedback and live accuracy through the API (in-process).

Real models (tests/models.py) answer through onnxruntime; the records go to a real SQLite file
(``<tmp>/models.state/records.db``), read back here with sqlite3 after ``recorder.flush()``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto

from nexus import create_app
from nexus.ids import new_request_id, request_id_time
from nexus.monitoring import live
from nexus.records.database import SCHEMA_VERSION, Database, engine_url
from tests import models
from tests.conftest import TOKEN, assert_error, metric, strict_json, upload, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOUR = 3600
DAY = 86_400
TABLES = ("nexus_predictions", "nexus_labels", "nexus_label_totals")


def _iris_features() -> np.ndarray:
    from sklearn.datasets import load_iris

    features, _ = load_iris(return_X_y=True)
    # Every class, and the rows near the boundary between 1 and 2 where the model is less sure.
    return features[[0, 10, 20, 30, 40, 50, 60, 70, 77, 83, 100, 106, 119, 120, 133, 134, 138, 149]].astype(np.float32)


IRIS = _iris_features()


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def runtime_under_tmp_path(tmp_path, monkeypatch):
    """Each app's monitoring runtime directory under the test's tmp_path (not left in the system's /tmp)."""
    base = tmp_path / "runtime"
    base.mkdir()
    monkeypatch.setattr(live, "tempfile", SimpleNamespace(mkdtemp=lambda prefix="": tempfile.mkdtemp(prefix=prefix, dir=base)))


@pytest.fixture(scope="module")
def iris_session(iris_bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(iris_bytes, options, providers=["CPUExecutionProvider"])


def iris_truth(session, features) -> tuple[list[str], list[float]]:
    """What onnxruntime itself predicts: per row the top class (as text) and its probability."""
    _, probabilities = session.run(None, {"input": np.asarray(features, dtype=np.float32).reshape(-1, 4)})
    classes, tops = [], []
    for row in probabilities:
        best = max(row, key=lambda key: row[key])  # ties: the first class, like the server
        classes.append(str(best))
        tops.append(float(row[best]))
    return classes, tops


def database_file(model_dir: Path) -> Path:
    return model_dir.with_name(model_dir.name + ".state") / "records.db"


def query(model_dir: Path, sql: str, *args) -> list[tuple]:
    path = database_file(model_dir)
    if not path.exists():
        return []
    connection = sqlite3.connect(path, timeout=10)
    try:
        return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the file is there, its tables not yet
            return []
        raise
    finally:
        connection.close()


def execute(model_dir: Path, sql: str, *args) -> int:
    connection = sqlite3.connect(database_file(model_dir), timeout=10)
    try:
        with connection:
            return connection.execute(sql, args).rowcount
    finally:
        connection.close()


def snapshot(model_dir: Path) -> dict[str, list[tuple]]:
    """Every row of the three record tables (to tell that a refused call stored nothing)."""
    return {table: sorted(query(model_dir, f"SELECT * FROM {table}"), key=repr) for table in TABLES}


def recorder_of(app):
    return app.extensions["nexus"].registry.recorder


def model_of(app, model_id: str, version: str | None = None):
    return app.extensions["nexus"].registry.get(model_id, version)


def uploaded(client, data: bytes, model_id: str, version: str = "v1", headers=None) -> dict:
    response = upload(client, data, model_id, version=version, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def predict(client, model_id: str, features, headers=None, **fields):
    response = client.post("/predict", json={"model_id": model_id, "features": np.asarray(features).tolist(), **fields},
                           headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def v2_infer(client, model_id: str, features, version: str | None = None, **fields):
    features = np.asarray(features, dtype=np.float32).reshape(-1, 4)
    path = f"/v2/models/{model_id}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": list(features.shape), "datatype": "FP32", "data": features.ravel().tolist()}],
            **fields}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def feedback(client, model_id: str, items, headers=None):
    return client.post(f"/models/{model_id}/feedback", json=items, headers=headers or {})


def labeled(client, model_id: str, items, headers=None) -> dict:
    response = feedback(client, model_id, items, headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = strict_json(response)
    assert body["received"] == len(items) == len(body["items"])
    assert body["received"] == sum(body[outcome] for outcome in ("matched", "duplicate", "unknown", "expired"))
    for key in ("matched", "duplicate", "unknown", "expired"):
        assert body[key] == sum(1 for item in body["items"] if item["outcome"] == key)
    return body


def performance(client, model_id: str, version: str | None = None, headers=None) -> dict:
    path = f"/models/{model_id}" + (f"/versions/{version}" if version else "") + "/performance"
    response = client.get(path, headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    return strict_json(response)


def only_version(client, model_id: str) -> dict:
    body = performance(client, model_id)
    assert body["model_id"] == model_id and len(body["versions"]) == 1, body
    return body["versions"][0]


def expected_classifier_window(pairs: list[tuple[str, str]], seconds) -> dict:
    """The window the contract describes, computed here from (truth, predicted) pairs."""
    n = len(pairs)
    correct = sum(1 for truth, predicted in pairs if truth == predicted)
    labels = sorted({t for t, _ in pairs} | {p for _, p in pairs}, key=int)
    classes = {}
    for label in labels:
        support = sum(1 for t, _ in pairs if t == label)
        made = sum(1 for _, p in pairs if p == label)
        hits = sum(1 for t, p in pairs if t == p == label)
        classes[label] = {"precision": hits / made if made else None, "recall": hits / support if support else None,
                          "support": support, "predicted": made}
    confusion: dict[str, dict[str, int]] = {}
    for (truth, predicted), count in Counter(pairs).items():
        confusion.setdefault(truth, {})[predicted] = count
    return {"seconds": seconds, "labels": n, "correct": correct, "accuracy": correct / n if n else None,
            "classes": classes, "confusion": confusion}


def wrong(label: str) -> str:
    return str((int(label) + 1) % 3)



# -- what is recorded ------------------------------------------------------------------------------


def test_one_row_through_predict_is_recorded_with_the_class_onnxruntime_predicts(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris")
    started = time.time()
    generated = predict(client, "iris", IRIS[0])  # one row, 1-D features
    named = predict(client, "iris", IRIS[[7]], request_id="client-chosen.1")
    from_header = predict(client, "iris", IRIS[[13]], headers={"X-Request-ID": "from:header-7"})
    ended = time.time()
    assert named["request_id"] == "client-chosen.1" and from_header["request_id"] == "from:header-7"
    made = request_id_time(generated["request_id"])  # a generated id is a UUIDv7 of the moment
    assert made is not None and started - 0.01 <= made <= ended + 0.01
    recorder_of(app).flush()

    model = model_of(app, "iris")
    assert model.kind == "classifier" and model.upload
    found = query(model_dir, "SELECT model_id, version, upload, request_id, row, predicted, value, confidence, inputs, created_at "
                             "FROM nexus_predictions ORDER BY created_at")
    assert len(found) == 3
    for row, (answer, features) in zip(found, [(generated, IRIS[0]), (named, IRIS[7]), (from_header, IRIS[13])], strict=True):
        [cls], [top] = iris_truth(iris_session, features)
        assert row[:7] == ("iris", "v1", model.upload, answer["request_id"], 0, cls, None)
        assert row[7] == pytest.approx(top, rel=1e-6)
        assert row[8] is None  # inputs are not kept by default
        assert started - 0.01 <= row[9] <= ended + 0.01
        assert str(answer["prediction"][0]) == cls  # the label output agrees with the top probability


def test_a_batch_through_predict_is_recorded_one_row_per_sample(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris")
    answer = predict(client, "iris", IRIS, request_id="batch-1")
    recorder_of(app).flush()
    classes, tops = iris_truth(iris_session, IRIS)
    assert len(set(classes)) == 3
    found = query(model_dir, "SELECT request_id, row, predicted, confidence FROM nexus_predictions ORDER BY row")
    assert [(r, n, p) for r, n, p, _ in found] == [("batch-1", i, c) for i, c in enumerate(classes)]
    assert [c for *_, c in found] == pytest.approx(tops, rel=1e-6)
    assert [str(label) for label in answer["outputs"]["output_label"]] == classes
    for row, probabilities in zip(found, answer["outputs"]["output_probability"], strict=True):
        assert row[3] == pytest.approx(max(probabilities.values()), rel=1e-6)


def test_v2_predictions_are_recorded_under_the_body_id_or_the_x_request_id(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris")
    with_id = v2_infer(client, "iris", IRIS[:3], id="v2-client-id")
    without_id = v2_infer(client, "iris", IRIS[[5]])
    pinned = v2_infer(client, "iris", IRIS[[11]], version="v1")
    invalid_id = v2_infer(client, "iris", IRIS[[12]], id="not valid!")  # echoed, but the record goes under X-Request-ID
    assert with_id.get_json()["id"] == "v2-client-id"
    generated = without_id.headers["X-Request-ID"]
    assert request_id_time(generated) is not None
    recorder_of(app).flush()
    found = query(model_dir, "SELECT request_id, row, version, predicted, confidence FROM nexus_predictions")
    by_key = {(r, n): (v, p, c) for r, n, v, p, c in found}
    assert set(by_key) == {("v2-client-id", 0), ("v2-client-id", 1), ("v2-client-id", 2), (generated, 0),
                           (pinned.headers["X-Request-ID"], 0), (invalid_id.headers["X-Request-ID"], 0)}
    classes, tops = iris_truth(iris_session, IRIS[:3])
    for row in range(3):
        version, predicted, confidence = by_key[("v2-client-id", row)]
        assert (version, predicted) == ("v1", classes[row]) and confidence == pytest.approx(tops[row], rel=1e-6)
    [cls], [top] = iris_truth(iris_session, IRIS[[5]])
    assert by_key[(generated, 0)][1] == cls and by_key[(generated, 0)][2] == pytest.approx(top, rel=1e-6)
    # Feedback reaches them by the same ids.
    body = labeled(client, "iris", [{"request_id": "v2-client-id/2", "truth": classes[2]}, {"request_id": generated, "truth": cls}])
    assert [item["outcome"] for item in body["items"]] == ["matched", "matched"]


def test_inputs_are_kept_only_with_record_inputs(make_app, model_dir, iris_bytes):
    client = make_app().test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:2], request_id="plain")
    app = make_app(record_inputs=True)  # another server on the same directory and database
    other = app.test_client()
    predict(other, "iris", IRIS[:2], request_id="kept")
    recorder_of(app).flush()
    recorder_of(client.application).flush()
    found = dict(((r, n), i) for r, n, i in query(model_dir, "SELECT request_id, row, inputs FROM nexus_predictions"))
    assert found[("plain", 0)] is None and found[("plain", 1)] is None
    for row in range(2):
        kept = json.loads(found[("kept", row)])
        assert set(kept) == {"input"}
        assert np.array_equal(np.asarray(kept["input"], dtype=np.float32), IRIS[row])


def test_a_regressor_records_its_value_for_each_row(app, client, model_dir):
    data, weights, bias = models.linear(4, 1, seed=3)
    uploaded(client, data, "lin")
    uploaded(client, models.identity(), "ident")
    assert model_of(app, "lin").kind == "regressor" and model_of(app, "ident").kind == "regressor"
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    answer = predict(client, "lin", features, request_id="reg-1")
    predict(client, "ident", features, request_id="ident-1")
    recorder_of(app).flush()
    expected = (features @ weights + bias)[:, 0]
    assert np.asarray(answer["prediction"], dtype=np.float32).ravel() == pytest.approx(expected, rel=1e-5)
    found = query(model_dir, "SELECT row, value, predicted, confidence FROM nexus_predictions WHERE model_id = 'lin' ORDER BY row")
    assert [r for r, *_ in found] == list(range(5))
    assert [v for _, v, _, _ in found] == pytest.approx(expected.astype(np.float64), rel=1e-5)
    assert all(p is None and c is None for _, _, p, c in found)
    # identity's task output is Y = X: its first column is what a label is compared with.
    values = [v for (v,) in query(model_dir, "SELECT value FROM nexus_predictions WHERE model_id = 'ident' ORDER BY row")]
    assert values == [float(v) for v in features[:, 0]]


def test_a_refused_prediction_leaves_no_record(app, client, model_dir, iris_bytes):
    uploaded(client, iris_bytes, "iris")
    assert client.post("/predict", json={"model_id": "iris", "features": [[1.0, 2.0]], "request_id": "bad-shape"}).status_code == 400
    predict(client, "iris", IRIS[[0]], request_id="good")
    recorder_of(app).flush()
    assert query(model_dir, "SELECT request_id FROM nexus_predictions") == [("good",)]


def test_predictions_are_written_by_the_worker_thread_within_a_second(app, client, model_dir, iris_bytes):
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:1], request_id="first")
    recorder_of(app).flush()  # the tables are made: what follows times the writer alone
    predict(client, "iris", IRIS[:2], request_id="soon")
    assert wait_for(lambda: len(query(model_dir, "SELECT 1 FROM nexus_predictions WHERE request_id = 'soon'")) == 2, 1.0)


def test_readiness_says_records_are_ok(client, iris_bytes):
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:1])
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert strict_json(response)["records"] == "ok"


def test_with_records_off_predictions_work_and_nothing_is_written(make_app, model_dir, iris_bytes):
    app = make_app(records=False)
    client = app.test_client()
    assert recorder_of(app) is None
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:3], request_id="unrecorded")
    v2_infer(client, "iris", IRIS[:1])
    assert not model_dir.with_name("models.state").exists()
    assert_error(feedback(client, "iris", [{"request_id": "unrecorded", "truth": 1}]), 404, "records_off", "NEXUS_RECORDS=0")
    assert_error(client.get("/models/iris/performance"), 404, "records_off", "turned off")
    assert_error(client.get("/models/iris/versions/v1/performance"), 404, "records_off", "turned off")
    assert "records" not in strict_json(client.get("/health/ready"))
    assert not model_dir.with_name("models.state").exists()


# -- feedback outcomes -------------------------------------------------------------------------------


@pytest.fixture
def iris_batch(app, client, iris_bytes, iris_session):
    """The iris model, and one recorded batch of every IRIS row under request id 'b': its predicted classes."""
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS, request_id="b")
    recorder_of(app).flush()
    classes, _ = iris_truth(iris_session, IRIS)
    return classes


@pytest.fixture(scope="module")
def shared(tmp_path_factory, iris_bytes, iris_session):
    """One server for the refusals (which store nothing): iris with batch 'b' of every IRIS row, and a regressor with 'r'."""
    model_dir = tmp_path_factory.mktemp("shared") / "models"
    model_dir.mkdir()
    app = create_app({"model_dir": model_dir, "ort_threads": 1, "monitoring": False})
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    uploaded(client, models.linear(4, 1)[0], "lin")
    predict(client, "iris", IRIS, request_id="b")
    predict(client, "lin", np.ones((3, 4)), request_id="r")
    recorder_of(app).flush()
    assert query(model_dir, "SELECT count(*) FROM nexus_predictions") == [(len(IRIS) + 3,)]
    classes, _ = iris_truth(iris_session, IRIS)
    return SimpleNamespace(app=app, client=client, model_dir=model_dir, classes=classes)


def refused_and_nothing_stored(shared, response, status: int, code: str, words: str) -> None:
    before = snapshot(shared.model_dir)
    assert_error(response(), status, code, words)
    assert snapshot(shared.model_dir) == before
    assert query(shared.model_dir, "SELECT count(*) FROM nexus_labels") == [(0,)]
    assert query(shared.model_dir, "SELECT count(*) FROM nexus_label_totals") == [(0,)]


def test_labels_are_matched_with_the_predicted_class_by_row(client, model_dir, iris_batch):
    p = iris_batch
    items = [
        {"request_id": "b", "truth": p[0]},  # row 0, as text: right
        {"request_id": "b/1", "truth": int(p[1])},  # an integer class: compared as text, right
        {"request_id": "b/2", "truth": wrong(p[2])},
        {"request_id": "b/6", "truth": int(wrong(p[6]))},
        {"request_id": "b/17", "truth": p[17]},
    ]
    body = labeled(client, "iris", items)
    assert body["model_id"] == "iris"
    assert (body["matched"], body["duplicate"], body["unknown"], body["expired"]) == (5, 0, 0, 0)
    assert body["items"] == [
        {"request_id": "b", "outcome": "matched", "version": "v1", "predicted": p[0], "correct": True},
        {"request_id": "b/1", "outcome": "matched", "version": "v1", "predicted": p[1], "correct": True},
        {"request_id": "b/2", "outcome": "matched", "version": "v1", "predicted": p[2], "correct": False},
        {"request_id": "b/6", "outcome": "matched", "version": "v1", "predicted": p[6], "correct": False},
        {"request_id": "b/17", "outcome": "matched", "version": "v1", "predicted": p[17], "correct": True},
    ]
    stored = query(model_dir, "SELECT request_id, row, version, truth, predicted, correct FROM nexus_labels ORDER BY row")
    assert stored == [("b", 0, "v1", p[0], p[0], 1), ("b", 1, "v1", p[1], p[1], 1), ("b", 2, "v1", wrong(p[2]), p[2], 0),
                      ("b", 6, "v1", wrong(p[6]), p[6], 0), ("b", 17, "v1", p[17], p[17], 1)]
    totals = dict(((t, q), n) for t, q, n in query(model_dir, "SELECT truth, predicted, labels FROM nexus_label_totals"))
    assert totals == dict(Counter((truth, predicted) for _, _, _, truth, predicted, _ in stored))


def test_a_label_given_twice_counts_once_and_the_first_stands(client, model_dir, iris_batch):
    p = iris_batch
    first = labeled(client, "iris", [{"request_id": "b/3", "truth": p[3]}, {"request_id": "b/3", "truth": wrong(p[3])},
                                     {"request_id": "b", "truth": wrong(p[0])}, {"request_id": "b/0", "truth": p[0]}])
    assert [item["outcome"] for item in first["items"]] == ["matched", "duplicate", "matched", "duplicate"]
    assert first["items"][1] == {"request_id": "b/3", "outcome": "duplicate", "version": "v1"}
    assert (first["matched"], first["duplicate"]) == (2, 2)
    later = labeled(client, "iris", [{"request_id": "b/3", "truth": wrong(p[3])}, {"request_id": "b", "truth": p[0]},
                                     {"request_id": "b/4", "truth": p[4]}])
    assert [item["outcome"] for item in later["items"]] == ["duplicate", "duplicate", "matched"]
    assert query(model_dir, "SELECT row, truth, correct FROM nexus_labels ORDER BY row") == [
        (0, wrong(p[0]), 0), (3, p[3], 1), (4, p[4], 1)]
    version = only_version(client, "iris")
    for window in ("hour", "day", "since_upload"):
        assert version["windows"][window]["labels"] == 3 and version["windows"][window]["correct"] == 2
    assert sum(n for (n,) in query(model_dir, "SELECT labels FROM nexus_label_totals")) == 3


def test_labels_for_predictions_never_seen_are_unknown(app, client, model_dir, iris_bytes, iris_batch):
    uploaded(client, iris_bytes, "other")
    predict(client, "other", IRIS[:1], request_id="elsewhere")
    recorder_of(app).flush()
    fresh = new_request_id()  # a server id of now that no prediction had
    body = labeled(client, "iris", [{"request_id": "never-seen", "truth": "0"}, {"request_id": "elsewhere", "truth": "0"},
                                    {"request_id": f"b/{len(IRIS)}", "truth": "0"}, {"request_id": "b/999999999", "truth": "0"},
                                    {"request_id": fresh, "truth": 1}, {"request_id": "never-seen", "truth": "0"}])
    assert body["items"] == [{"request_id": r, "outcome": "unknown"} for r in
                             ["never-seen", "elsewhere", f"b/{len(IRIS)}", "b/999999999", fresh, "never-seen"]]
    assert body["unknown"] == 6 and body["matched"] == 0
    assert query(model_dir, "SELECT count(*) FROM nexus_labels") == [(0,)]
    # The other model's own feedback finds it.
    assert labeled(client, "other", [{"request_id": "elsewhere", "truth": "0"}])["matched"] == 1


def uuid7_at(seconds: float) -> str:
    ms = int(seconds * 1000)
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7abc-8def-0123456789ab"


def test_labels_older_than_the_retention_are_expired(make_app, model_dir, iris_bytes, iris_session):
    app = make_app(record_retention_days=1)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:2], request_id="aged")
    predict(client, "iris", IRIS[[2]], request_id="recent")
    recorder_of(app).flush()
    # Their predictions were made long ago: 2 days (past the 1 day kept) and 20 hours.
    assert execute(model_dir, "UPDATE nexus_predictions SET created_at = created_at - ? WHERE request_id = 'aged'", 2 * DAY) == 2
    assert execute(model_dir, "UPDATE nexus_predictions SET created_at = created_at - ? WHERE request_id = 'recent'", 20 * HOUR) == 1
    old_id, young_id = uuid7_at(time.time() - 2 * DAY), uuid7_at(time.time() - 20 * HOUR)
    assert request_id_time(old_id) == pytest.approx(time.time() - 2 * DAY, abs=5)
    [recent_class], _ = iris_truth(iris_session, IRIS[[2]])
    body = labeled(client, "iris", [{"request_id": "aged", "truth": 0}, {"request_id": "aged/1", "truth": 0},
                                    {"request_id": old_id, "truth": 0}, {"request_id": young_id, "truth": 0},
                                    {"request_id": "recent", "truth": recent_class}])
    assert body["items"] == [
        {"request_id": "aged", "outcome": "expired", "version": "v1"},
        {"request_id": "aged/1", "outcome": "expired", "version": "v1"},
        {"request_id": old_id, "outcome": "expired"},  # a server id older than the retention: no record to join
        {"request_id": young_id, "outcome": "unknown"},  # a server id of 20 hours ago that no prediction had
        {"request_id": "recent", "outcome": "matched", "version": "v1", "predicted": recent_class, "correct": True},
    ]
    assert (body["expired"], body["unknown"], body["matched"]) == (3, 1, 1)
    assert query(model_dir, "SELECT request_id FROM nexus_labels") == [("recent",)]
    assert only_version(client, "iris")["windows"]["since_upload"]["labels"] == 1


# -- refusals: 400 and nothing stored ----------------------------------------------------------------


NOT_A_TRUTH = "'truth' must be a class (a string or an integer) or a value (a number), not "
NOT_FINITE = "'truth' must be a finite number of at most 1e+100 in size"
NOT_A_CLASS = "'truth' as text must be a class of 1-256 characters"

BAD_BODIES = [
    ({"request_id": "b", "truth": 1}, "must be a JSON array"),
    ("b", "must be a JSON array"),
    (7, "must be a JSON array"),
    ([], "empty array"),
    ([{"request_id": "b", "truth": 1}, 5], "item 1 must be an object"),
    ([[{"request_id": "b", "truth": 1}]], "item 0 must be an object"),
    ([{"request_id": "b"}], "item 0 needs both 'request_id' and 'truth'"),
    ([{"truth": "1"}], "needs both 'request_id' and 'truth'"),
    ([{"request_id": "b", "truth": 1, "version": "v1"}], "unknown field(s) 'version'"),
    ([{"request_id": "b c", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b;drop", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b/x", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b/-1", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b/1/2", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b" * 129, "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "", "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": 5, "truth": 1}], "'request_id' must be a request id"),
    ([{"request_id": "b/", "truth": 1}], "item 0: 'request_id' must be a request id"),
    ([{"request_id": "b", "truth": True}], f"item 0: {NOT_A_TRUTH}true"),
    ([{"request_id": "b", "truth": None}], f"{NOT_A_TRUTH}null"),
    ([{"request_id": "b", "truth": [1]}], f"{NOT_A_TRUTH}[1]"),
    ([{"request_id": "b", "truth": {"class": 1}}], f'{NOT_A_TRUTH}{{"class":1}}'),
    ([{"request_id": "b", "truth": ""}], f"item 0: {NOT_A_CLASS}"),
    ([{"request_id": "b", "truth": "c" * 257}], NOT_A_CLASS),
    ([{"request_id": "b", "truth": 1e101}], f"item 0: {NOT_FINITE}"),
    ([{"request_id": "b", "truth": -1e300}], NOT_FINITE),
    ([{"request_id": "b", "truth": 10**101}], NOT_FINITE),
    # One bad item among good ones: none of them is stored.
    ([{"request_id": "b/1", "truth": 1}, {"request_id": "b/2", "truth": "2"}, {"request_id": "b/3", "truth": False}],
     f"item 2: {NOT_A_TRUTH}false"),
    ([{"request_id": "b/1", "truth": 1}, {"request_id": "b/2", "truth": 2.0}, {"request_id": "b/", "truth": 1}],
     "item 2: 'request_id' must be a request id"),
    ([{"request_id": "b/1", "truth": 1}, {"request_id": "b/2", "truth": 0, "note": "x"}], "item 1 has unknown field(s) 'note'"),
]


@pytest.mark.parametrize(("body", "words"), BAD_BODIES)
def test_a_bad_feedback_body_is_refused_and_nothing_is_stored(shared, body, words):
    refused_and_nothing_stored(shared, lambda: feedback(shared.client, "iris", body), 400, "bad_input", words)


def test_after_a_refused_call_its_good_labels_are_still_unlabeled(client, model_dir, iris_batch):
    p = iris_batch
    items = [{"request_id": "b/1", "truth": p[1]}, {"request_id": "b/2", "truth": p[2]}, {"request_id": "b/3", "truth": None}]
    before = snapshot(model_dir)
    assert_error(feedback(client, "iris", items), 400, "bad_input", f"item 2: {NOT_A_TRUTH}null")
    assert snapshot(model_dir) == before
    body = labeled(client, "iris", items[:2] + [{"request_id": "b/3", "truth": p[3]}])
    assert [item["outcome"] for item in body["items"]] == ["matched"] * 3


@pytest.mark.parametrize(("data", "words"), [
    (b"", "request body is empty"),
    (b"[{\"request_id\": \"b\", \"truth\": 1}", "not valid JSON"),
    (b"[{\"request_id\": \"b\", \"truth\": NaN}]", "not valid JSON"),
])
def test_a_body_that_is_not_json_is_refused(shared, data, words):
    refused_and_nothing_stored(
        shared, lambda: shared.client.post("/models/iris/feedback", data=data, content_type="application/json"), 400, "bad_input", words)


def test_an_id_with_an_empty_row_is_refused(client, model_dir, iris_batch):
    """``<id>/`` is neither ``<id>`` nor ``<id>/<row>``: refused, not read as row 0 (on a server of its own: it may store)."""
    before = snapshot(model_dir)
    assert_error(feedback(client, "iris", [{"request_id": "b/", "truth": iris_batch[0]}]), 400, "bad_input",
                 "'request_id' must be a request id")
    assert snapshot(model_dir) == before


def test_more_than_10000_labels_are_refused_and_10000_are_taken(client, model_dir, iris_batch):
    before = snapshot(model_dir)
    items = [{"request_id": "b", "truth": 0}] + [{"request_id": f"u{i}", "truth": i % 3} for i in range(10_000)]
    assert_error(feedback(client, "iris", items), 400, "bad_input", "10001 labels in one call; send at most 10000")
    assert snapshot(model_dir) == before
    body = labeled(client, "iris", items[:10_000])
    assert (body["matched"], body["unknown"]) == (1, 9_999)


A_REGRESSOR = "was predicted by version 'v1', a regressor: 'truth' must be a number, not text"


@pytest.mark.parametrize(("data", "words"), [
    (b'[{"request_id": "r", "truth": true}]', f"item 0: {NOT_A_TRUTH}true"),
    (b'[{"request_id": "r", "truth": null}]', f"{NOT_A_TRUTH}null"),
    (b'[{"request_id": "r", "truth": "1.5"}]', f"item 0: 'r' {A_REGRESSOR}"),  # text, though it reads as a number
    (b'[{"request_id": "r/2", "truth": "x"}]', f"item 0: 'r' {A_REGRESSOR}"),
    (b'[{"request_id": "r", "truth": [1.5]}]', f"{NOT_A_TRUTH}[1.5]"),
    (b'[{"request_id": "r", "truth": {"v": 1}}]', f'{NOT_A_TRUTH}{{"v":1}}'),
    (b'[{"request_id": "r", "truth": 1e101}]', f"item 0: {NOT_FINITE}"),
    (b'[{"request_id": "r", "truth": -1.0000000000000002e100}]', NOT_FINITE),
    (b'[{"request_id": "r", "truth": NaN}]', "not valid JSON"),
    (b'[{"request_id": "r", "truth": Infinity}]', "not valid JSON"),
    (b'[{"request_id": "r", "truth": 1e400}]', "not valid JSON"),
    # Good labels (a number for r/1, text for an id no version predicted) with one bad one: none is stored.
    (b'[{"request_id": "r/1", "truth": 1.5}, {"request_id": "nobody", "truth": "x"}, {"request_id": "r/2", "truth": "x"}]',
     f"item 2: 'r' {A_REGRESSOR}"),
])
def test_a_regressor_takes_only_finite_numbers(shared, data, words):
    refused_and_nothing_stored(
        shared, lambda: shared.client.post("/models/lin/feedback", data=data, content_type="application/json"), 400, "bad_input", words)


def test_a_model_with_no_output_to_compare_takes_no_feedback(app, client, model_dir):
    uploaded(client, models.identity(TensorProto.STRING), "strings")
    details = client.get("/models/strings").get_json()
    assert details["task"]["output"] is None  # no numeric output: nothing a label could be compared with
    assert model_of(app, "strings").kind is None
    before = snapshot(model_dir)
    for truth in ("a", 1, 1.5):
        assert_error(feedback(client, "strings", [{"request_id": "any", "truth": truth}]), 400, "bad_input",
                     "no output a label can be compared with")
    assert snapshot(model_dir) == before


# -- refusals: auth, unknown models, media type, size ----------------------------------------------------


def test_feedback_and_performance_need_the_token_when_predictions_do(make_app, model_dir, iris_bytes, iris_session):
    app = make_app(api_token=TOKEN, protect_predict=True)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris", headers=AUTH)
    predict(client, "iris", IRIS[:1], headers=AUTH, request_id="p")
    recorder_of(app).flush()
    [cls], _ = iris_truth(iris_session, IRIS[:1])
    items = [{"request_id": "p", "truth": cls}]
    before = snapshot(model_dir)
    assert_error(feedback(client, "iris", items), 401, "unauthorized", "")
    assert_error(feedback(client, "iris", items, {"Authorization": "Bearer wrong"}), 401, "unauthorized", "")
    assert_error(client.get("/models/iris/performance"), 401, "unauthorized", "")
    assert_error(client.get("/models/iris/versions/v1/performance"), 401, "unauthorized", "")
    assert_error(client.get("/models/ghost/performance"), 401, "unauthorized", "")  # before saying whether it exists
    assert snapshot(model_dir) == before
    assert labeled(client, "iris", items, AUTH)["matched"] == 1
    assert performance(client, "iris", headers=AUTH)["versions"][0]["windows"]["hour"]["correct"] == 1
    assert performance(client, "iris", "v1", headers=AUTH)["windows"]["hour"]["labels"] == 1


def test_without_protected_predictions_feedback_needs_no_token(make_app, iris_bytes):
    client = make_app(api_token=TOKEN).test_client()
    uploaded(client, iris_bytes, "iris", headers=AUTH)
    assert labeled(client, "iris", [{"request_id": "nothing", "truth": 0}])["unknown"] == 1
    assert performance(client, "iris")["model_id"] == "iris"


def test_unknown_models_and_versions(client, model_dir, iris_bytes):
    assert_error(feedback(client, "ghost", [{"request_id": "a", "truth": 1}]), 404, "model_not_found", "ghost")
    assert_error(client.get("/models/ghost/performance"), 404, "model_not_found", "ghost")
    assert_error(client.get("/models/ghost/versions/v1/performance"), 404, "model_not_found", "ghost")
    uploaded(client, iris_bytes, "iris")
    assert_error(client.get("/models/iris/versions/v9/performance"), 404, "version_not_found", "v9")
    assert query(model_dir, "SELECT count(*) FROM nexus_labels") in ([], [(0,)])


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_feedback_that_is_not_json_gets_415(shared, content_type):
    data = orjson.dumps([{"request_id": "b", "truth": shared.classes[0]}])
    refused_and_nothing_stored(shared, lambda: shared.client.post("/models/iris/feedback", data=data, content_type=content_type),
                               415, "unsupported_media_type", "application/json")


def test_feedback_over_the_body_limit_gets_413(make_app, model_dir, iris_bytes):
    app = make_app(max_request_mb=0.01)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:1], request_id="p")
    recorder_of(app).flush()
    before = snapshot(model_dir)
    items = [{"request_id": "p", "truth": 0}] + [{"request_id": f"id-{i}", "truth": "class-name"} for i in range(400)]
    assert len(orjson.dumps(items)) > 0.01 * 1024 * 1024
    assert_error(feedback(client, "iris", items), 413, "too_large", "over the limit of 0.01 MB")
    assert snapshot(model_dir) == before
    assert labeled(client, "iris", items[:1])["matched"] == 1


# -- performance ---------------------------------------------------------------------------------------


def shift_labels(model_dir: Path, seconds: float, request_id: str, rows) -> None:
    """Make labels look as if they arrived ``seconds`` ago (their time and hour)."""
    for row in rows:
        assert execute(model_dir, "UPDATE nexus_labels SET labeled_at = labeled_at - ?, "
                                  "labeled_hour = CAST((labeled_at - ?) / 3600 AS INTEGER) WHERE request_id = ? AND row = ?",
                       seconds, seconds, request_id, row) == 1


def test_with_no_labels_the_windows_are_empty(client, iris_bytes):
    uploaded(client, iris_bytes, "iris")
    uploaded(client, models.linear(4, 1)[0], "lin")
    version = only_version(client, "iris")
    assert version["model_id"] == "iris" and version["version"] == "v1"
    assert version["task"] == {"kind": "classifier", "output": "output_probability"}
    assert version["windows"] == {
        "hour": {"seconds": 3600, "labels": 0, "correct": 0, "accuracy": None, "classes": {}, "confusion": {}},
        "day": {"seconds": 86400, "labels": 0, "correct": 0, "accuracy": None, "classes": {}, "confusion": {}},
        "since_upload": {"seconds": None, "labels": 0, "correct": 0, "accuracy": None, "classes": {}, "confusion": {}},
    }
    assert version["timeline"] == {"bucket_seconds": 3600, "points": []}
    regressor = only_version(client, "lin")
    assert regressor["task"] == {"kind": "regressor", "output": "Y"}
    assert regressor["windows"]["hour"] == {"seconds": 3600, "labels": 0, "mae": None, "rmse": None}
    assert regressor["windows"]["since_upload"] == {"seconds": None, "labels": 0, "mae": None, "rmse": None}


def test_classifier_windows_and_timeline_are_what_the_labels_say(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS, request_id="w")
    predict(client, "iris", IRIS[::-1], request_id="x")
    recorder_of(app).flush()
    p_w, _ = iris_truth(iris_session, IRIS)
    p_x, _ = iris_truth(iris_session, IRIS[::-1])
    n = len(IRIS)
    # Truths: right for most rows, wrong for every third (so precision and recall differ per class).
    truth_w = [wrong(p) if i % 3 == 0 else p for i, p in enumerate(p_w)]
    truth_x = [wrong(wrong(p)) if i % 4 == 1 else p for i, p in enumerate(p_x)]
    body = labeled(client, "iris", [{"request_id": f"w/{i}", "truth": t} for i, t in enumerate(truth_w)]
                   + [{"request_id": f"x/{i}", "truth": int(t)} for i, t in enumerate(truth_x)])
    assert body["matched"] == 2 * n
    assert [item["correct"] for item in body["items"]] == [t == p for t, p in zip(truth_w + truth_x, p_w + p_x, strict=True)]
    # Some labels arrived earlier: w's first 6 rows 2 hours ago, its next 6 rows 2 days ago (within the 7 days kept).
    [(now,)] = query(model_dir, "SELECT labeled_at FROM nexus_labels WHERE request_id = 'w' AND row = 0")  # when they arrived
    shift_labels(model_dir, 2 * HOUR, "w", range(0, 6))
    shift_labels(model_dir, 2 * DAY, "w", range(6, 12))
    pairs_now = list(zip(truth_w[12:], p_w[12:], strict=True)) + list(zip(truth_x, p_x, strict=True))
    pairs_2h = list(zip(truth_w[:6], p_w[:6], strict=True))
    pairs_2d = list(zip(truth_w[6:12], p_w[6:12], strict=True))

    version = only_version(client, "iris")
    windows = version["windows"]
    assert windows["hour"] == expected_classifier_window(pairs_now, 3600)
    assert windows["day"] == expected_classifier_window(pairs_now + pairs_2h, 86400)
    assert windows["since_upload"] == expected_classifier_window(pairs_now + pairs_2h + pairs_2d, None)
    assert windows["since_upload"]["labels"] == 2 * n
    assert 0 < windows["since_upload"]["accuracy"] < 1
    assert list(windows["since_upload"]["classes"]) == ["0", "1", "2"]

    def point(seconds_ago, pairs):
        hour = int((now - seconds_ago) // HOUR)
        return {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour * HOUR)), "labels": len(pairs),
                "accuracy": sum(t == p for t, p in pairs) / len(pairs)}

    assert version["timeline"] == {"bucket_seconds": 3600,
                                   "points": [point(2 * DAY, pairs_2d), point(2 * HOUR, pairs_2h), point(0, pairs_now)]}
    # The version's own route says the same.
    single = performance(client, "iris", "v1")
    assert single["windows"] == windows and single["timeline"] == version["timeline"]


def test_regressor_mae_and_rmse_are_what_the_errors_say(app, client, model_dir):
    data, weights, bias = models.linear(4, 1, seed=5)
    uploaded(client, data, "lin")
    features = np.random.default_rng(4).normal(size=(10, 4)).astype(np.float32)
    answer = predict(client, "lin", features, request_id="r")
    recorder_of(app).flush()
    predicted = [float(v) for v in np.asarray(answer["outputs"]["Y"], dtype=np.float32)[:, 0]]
    assert predicted == pytest.approx(((features @ weights + bias)[:, 0]).tolist(), rel=1e-5)
    offsets = [0.5, -1.25, 2.0, 0.0, -0.75, 3.5, -2.0, 0.1, 1.0, -0.3]
    truths = [v - d for v, d in zip(predicted, offsets, strict=True)]
    truths[3] = round(truths[3])  # an integer truth is a number too
    before_count = metric("model_feedback_abs_error_count", model_id="lin", version="v1")
    before_sum = metric("model_feedback_abs_error_sum", model_id="lin", version="v1")
    body = labeled(client, "lin", [{"request_id": f"r/{i}", "truth": t} for i, t in enumerate(truths)])
    errors = [v - t for v, t in zip(predicted, truths, strict=True)]
    for item, value, error in zip(body["items"], predicted, errors, strict=True):
        assert set(item) == {"request_id", "outcome", "version", "predicted", "error"}
        assert item["outcome"] == "matched" and item["version"] == "v1"
        assert item["predicted"] == pytest.approx(value, rel=1e-12)
        assert item["error"] == pytest.approx(error, rel=1e-9, abs=1e-12)
    assert metric("model_feedback_abs_error_count", model_id="lin", version="v1") - before_count == 10
    assert metric("model_feedback_abs_error_sum", model_id="lin", version="v1") - before_sum == pytest.approx(
        sum(abs(e) for e in errors), rel=1e-9)
    shift_labels(model_dir, 3 * HOUR, "r", range(0, 4))

    def expected(errors_in, seconds):
        return {"seconds": seconds, "labels": len(errors_in), "mae": pytest.approx(sum(abs(e) for e in errors_in) / len(errors_in)),
                "rmse": pytest.approx(math.sqrt(sum(e * e for e in errors_in) / len(errors_in)))}

    version = only_version(client, "lin")
    assert version["task"] == {"kind": "regressor", "output": "Y"}
    assert version["windows"]["hour"] == expected(errors[4:], 3600)
    assert version["windows"]["day"] == expected(errors, 86400)
    assert version["windows"]["since_upload"] == expected(errors, None)
    points = version["timeline"]["points"]
    assert [p["labels"] for p in points] == [4, 6]
    assert points[0]["mae"] == pytest.approx(sum(abs(e) for e in errors[:4]) / 4)
    assert points[1]["mae"] == pytest.approx(sum(abs(e) for e in errors[4:]) / 6)
    assert all(set(p) == {"start", "labels", "mae"} for p in points)


def test_a_large_but_finite_regressor_truth_is_judged_not_a_server_error(app, client, model_dir):
    """A truth up to 1e100 in size is judged, and every sum stays finite; past it, it is refused (nothing stored)."""
    uploaded(client, models.identity(), "ident")
    predict(client, "ident", [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.5, 0.0, 0.0, 0.0]], request_id="big")
    recorder_of(app).flush()
    before = snapshot(model_dir)
    for truth in (1e200, -1e101, 10**101):
        assert_error(feedback(client, "ident", [{"request_id": "big/2", "truth": 0.5}, {"request_id": "big", "truth": truth}]),
                     400, "bad_input", f"item 1: {NOT_FINITE}")
    assert snapshot(model_dir) == before
    response = feedback(client, "ident", [{"request_id": "big", "truth": 1e100}, {"request_id": "big/1", "truth": -1e100},
                                          {"request_id": "big/2", "truth": 0}])
    assert response.status_code == 200, response.get_data(as_text=True)
    body = strict_json(response)
    assert [item["outcome"] for item in body["items"]] == ["matched"] * 3
    assert body["items"][0]["error"] == 1.0 - 1e100
    assert body["items"][1]["error"] == 5.0 + 1e100
    assert body["items"][2]["error"] == 0.5
    windows = only_version(client, "ident")["windows"]  # standard JSON: no Infinity in the RMSE
    assert windows["since_upload"]["labels"] == 3
    assert windows["since_upload"]["mae"] == pytest.approx(2e100 / 3)
    assert windows["since_upload"]["rmse"] == pytest.approx(math.sqrt(2e200 / 3))
    for window in ("hour", "day"):
        assert windows[window] == {**windows["since_upload"], "seconds": windows[window]["seconds"]}


def test_a_regressor_error_beyond_1e100_is_matched_but_not_compared(app, client, model_dir):
    """A float64 regressor can predict 1e100: a truth of -1e100 is 2e100 off, beyond what is compared."""
    uploaded(client, models.identity(TensorProto.DOUBLE), "wide")
    assert model_of(app, "wide").kind == "regressor"
    predict(client, "wide", [[1e100, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], request_id="far")
    recorder_of(app).flush()
    count = metric("model_feedback_abs_error_count", model_id="wide", version="v1")
    body = labeled(client, "wide", [{"request_id": "far", "truth": -1e100}, {"request_id": "far/1", "truth": 2}])
    assert body["items"] == [
        {"request_id": "far", "outcome": "matched", "version": "v1", "predicted": 1e100},  # no error: not compared
        {"request_id": "far/1", "outcome": "matched", "version": "v1", "predicted": 3.0, "error": 1.0},
    ]
    assert metric("model_feedback_abs_error_count", model_id="wide", version="v1") - count == 1
    assert query(model_dir, "SELECT row, truth, error FROM nexus_labels ORDER BY row") == [(0, str(int(-1e100)), None), (1, "2", 1.0)]
    strict_json(client.get("/models/wide/performance"))


def test_each_version_has_its_own_performance(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris", version="v1")
    uploaded(client, iris_bytes, "iris", version="v2")
    predict(client, "iris", IRIS[:6], request_id="one", version="v1")
    predict(client, "iris", IRIS[:6], request_id="two", version="v2")
    recorder_of(app).flush()
    classes, _ = iris_truth(iris_session, IRIS[:6])
    body = labeled(client, "iris", [{"request_id": f"one/{i}", "truth": c} for i, c in enumerate(classes)]
                   + [{"request_id": f"two/{i}", "truth": wrong(c)} for i, c in enumerate(classes[:4])])
    assert [item["version"] for item in body["items"]] == ["v1"] * 6 + ["v2"] * 4
    v1, v2 = performance(client, "iris", "v1"), performance(client, "iris", "v2")
    assert (v1["version"], v2["version"]) == ("v1", "v2")
    assert v1["windows"]["since_upload"] == expected_classifier_window(list(zip(classes, classes, strict=True)), None)
    assert v2["windows"]["since_upload"] == expected_classifier_window([(wrong(c), c) for c in classes[:4]], None)
    assert v1["windows"]["hour"]["accuracy"] == 1.0 and v2["windows"]["hour"]["accuracy"] == 0.0
    listed = {version["version"]: version for version in performance(client, "iris")["versions"]}
    assert listed["v1"]["windows"] == v1["windows"] and listed["v2"]["windows"] == v2["windows"]
    assert listed["v1"]["task"] == {"kind": "classifier", "output": "output_probability"}


def test_labels_are_judged_by_the_task_of_the_version_that_predicted(app, client, model_dir, iris_bytes, iris_session):
    """v1 a classifier, v2 (the default) a regressor: a label is judged by the version whose prediction it meets."""
    uploaded(client, iris_bytes, "mixed", version="v1")
    data, weights, bias = models.linear(4, 1)
    uploaded(client, data, "mixed", version="v2")
    assert model_of(app, "mixed").version == "v2" and model_of(app, "mixed").kind == "regressor"
    predict(client, "mixed", IRIS[:3], request_id="by-v1", version="v1")
    predict(client, "mixed", np.ones((3, 4)), request_id="by-v2", version="v2")
    recorder_of(app).flush()
    classes, _ = iris_truth(iris_session, IRIS[:3])
    value = float((np.ones((1, 4), np.float32) @ weights + bias)[0, 0])
    # A class for v1's prediction is a class (text, an integer, or an integral number), whatever the default version is.
    response = feedback(client, "mixed", [{"request_id": "by-v1", "truth": classes[0]}, {"request_id": "by-v1/1", "truth": int(classes[1])},
                                          {"request_id": "by-v1/2", "truth": float(classes[2])}, {"request_id": "by-v2", "truth": 1}])
    assert response.status_code == 200, response.get_data(as_text=True)
    items = strict_json(response)["items"]
    assert items[:3] == [
        {"request_id": "by-v1", "outcome": "matched", "version": "v1", "predicted": classes[0], "correct": True},
        {"request_id": "by-v1/1", "outcome": "matched", "version": "v1", "predicted": classes[1], "correct": True},
        {"request_id": "by-v1/2", "outcome": "matched", "version": "v1", "predicted": classes[2], "correct": True},
    ]
    assert set(items[3]) == {"request_id", "outcome", "version", "predicted", "error"}
    assert (items[3]["outcome"], items[3]["version"]) == ("matched", "v2")
    assert items[3]["predicted"] == pytest.approx(value, rel=1e-6) and items[3]["error"] == pytest.approx(value - 1, rel=1e-6)
    assert performance(client, "mixed", "v1")["windows"]["since_upload"]["accuracy"] == 1.0
    assert performance(client, "mixed", "v2")["windows"]["since_upload"]["labels"] == 1
    # Text for v2's prediction: the whole call is refused, its good labels included.
    before = snapshot(model_dir)
    assert_error(feedback(client, "mixed", [{"request_id": "by-v2/1", "truth": 1.5}, {"request_id": "by-v2/2", "truth": "1.5"}]),
                 400, "bad_input", "item 1: 'by-v2' was predicted by version 'v2', a regressor: 'truth' must be a number, not text")
    assert_error(feedback(client, "mixed", [{"request_id": "unseen", "truth": "0"}, {"request_id": "by-v2/2", "truth": "x"}]),
                 400, "bad_input", "item 1: 'by-v2' was predicted by version 'v2', a regressor")
    assert snapshot(model_dir) == before
    body = labeled(client, "mixed", [{"request_id": "by-v2/1", "truth": 1.5}, {"request_id": "by-v2/2", "truth": 2}])
    assert [(item["outcome"], item["version"]) for item in body["items"]] == [("matched", "v2")] * 2
    assert performance(client, "mixed", "v2")["windows"]["since_upload"]["labels"] == 3


def test_an_integral_number_is_the_class_it_names(client, model_dir, iris_batch):
    p = iris_batch
    twos = [row for row, predicted in enumerate(p) if predicted == "2"]
    ones = [row for row, predicted in enumerate(p) if predicted == "1"]
    assert twos and ones
    body = labeled(client, "iris", [{"request_id": f"b/{twos[0]}", "truth": 2.0}, {"request_id": f"b/{ones[0]}", "truth": 2.0},
                                    {"request_id": f"b/{twos[1]}", "truth": 2.5}])
    assert body["items"] == [
        {"request_id": f"b/{twos[0]}", "outcome": "matched", "version": "v1", "predicted": "2", "correct": True},
        {"request_id": f"b/{ones[0]}", "outcome": "matched", "version": "v1", "predicted": "1", "correct": False},
        {"request_id": f"b/{twos[1]}", "outcome": "matched", "version": "v1", "predicted": "2", "correct": False},  # no such class
    ]
    assert query(model_dir, "SELECT row, truth, correct FROM nexus_labels ORDER BY row") == sorted(
        [(twos[0], "2", 1), (ones[0], "2", 0), (twos[1], "2.5", 0)])
    assert only_version(client, "iris")["windows"]["since_upload"]["confusion"] == {"2": {"1": 1, "2": 1}, "2.5": {"2": 1}}


def test_a_label_for_a_prediction_of_a_deleted_upload_is_unknown(app, client, model_dir, iris_bytes, iris_session):
    """v1 deleted and uploaded again under the same id and version is another upload: the old one's predictions are unknown,
    even when their rows are still there (a worker that wrote them after the delete)."""
    uploaded(client, iris_bytes, "iris", version="v1")
    uploaded(client, iris_bytes, "iris", version="v2")
    predict(client, "iris", IRIS[:2], request_id="old", version="v1")
    predict(client, "iris", IRIS[:2], request_id="kept", version="v2")
    recorder_of(app).flush()
    old_upload = model_of(app, "iris", "v1").upload
    left = query(model_dir, "SELECT * FROM nexus_predictions WHERE request_id = 'old'")
    assert len(left) == 2
    assert client.delete("/models/iris/versions/v1").status_code == 200
    time.sleep(0.002)  # another upload time, as a real re-upload has
    uploaded(client, iris_bytes, "iris", version="v1")  # the same bytes, id and version
    assert model_of(app, "iris", "v1").upload != old_upload
    classes, _ = iris_truth(iris_session, IRIS[:2])
    assert [item["outcome"] for item in labeled(client, "iris", [{"request_id": "old", "truth": classes[0]}])["items"]] == ["unknown"]
    marks = ", ".join("?" * len(left[0]))
    for row in left:  # the old upload's predictions back, as a late writer would put them
        execute(model_dir, f"INSERT OR IGNORE INTO nexus_predictions VALUES ({marks})", *row)
    body = labeled(client, "iris", [{"request_id": "old/1", "truth": classes[1]}, {"request_id": "kept/1", "truth": classes[1]}])
    assert body["items"] == [
        {"request_id": "old/1", "outcome": "unknown"},
        {"request_id": "kept/1", "outcome": "matched", "version": "v2", "predicted": classes[1], "correct": True},
    ]
    assert query(model_dir, "SELECT request_id, row FROM nexus_labels") == [("kept", 1)]
    assert performance(client, "iris", "v1")["windows"]["since_upload"]["labels"] == 0


def test_a_model_takes_labels_when_one_of_its_versions_has_a_task(app, client, model_dir, iris_bytes, iris_session):
    """v1 has no output a label can be compared with, v2 is a classifier: the model takes feedback."""
    uploaded(client, models.identity(TensorProto.STRING), "some", version="v1")
    uploaded(client, iris_bytes, "some", version="v2")
    assert model_of(app, "some", "v1").kind is None and model_of(app, "some", "v2").kind == "classifier"
    words = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}
    assert client.post("/v2/models/some/versions/v1/infer", json={"id": "by-v1", **words}).status_code == 200
    predict(client, "some", IRIS[:1], request_id="by-v2", version="v2")
    recorder_of(app).flush()
    [cls], _ = iris_truth(iris_session, IRIS[:1])
    body = labeled(client, "some", [{"request_id": "by-v1", "truth": "a"}, {"request_id": "by-v2", "truth": cls}])
    assert body["items"] == [
        {"request_id": "by-v1", "outcome": "matched", "version": "v1", "predicted": None},  # stored, nothing to compare
        {"request_id": "by-v2", "outcome": "matched", "version": "v2", "predicted": cls, "correct": True},
    ]
    assert performance(client, "some", "v2")["windows"]["since_upload"]["accuracy"] == 1.0


def test_a_label_for_a_version_without_a_task_counts_in_no_window(app, client, model_dir, iris_bytes):
    uploaded(client, models.identity(TensorProto.STRING), "some", version="v1")
    uploaded(client, iris_bytes, "some", version="v2")
    words = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}
    assert client.post("/v2/models/some/versions/v1/infer", json={"id": "by-v1", **words}).status_code == 200
    recorder_of(app).flush()
    assert labeled(client, "some", [{"request_id": "by-v1", "truth": "a"}])["matched"] == 1
    window = performance(client, "some", "v1")["windows"]["since_upload"]
    assert window["accuracy"] is None and window["classes"] == {} and window["confusion"] == {}


def test_deleting_a_version_or_the_model_deletes_its_records(app, client, model_dir, iris_bytes, iris_session):
    for version in ("v1", "v2"):
        uploaded(client, iris_bytes, "iris", version=version)
    uploaded(client, iris_bytes, "bystander")
    classes, _ = iris_truth(iris_session, IRIS[:3])
    for model_id, version, request_id in (("iris", "v1", "a"), ("iris", "v2", "b"), ("bystander", None, "c")):
        predict(client, model_id, IRIS[:3], request_id=request_id, **({"version": version} if version else {}))
    recorder_of(app).flush()
    for model_id, request_id in (("iris", "a"), ("iris", "b"), ("bystander", "c")):
        labeled(client, model_id, [{"request_id": f"{request_id}/{i}", "truth": c} for i, c in enumerate(classes)])

    def count(table, model_id, version=None):
        extra = " AND version = ?" if version else ""
        return query(model_dir, f"SELECT count(*) FROM {table} WHERE model_id = ?{extra}", *([model_id, version] if version else [model_id]))[0][0]

    assert [count(t, "iris", "v1") for t in TABLES] == [3, 3, len(set(classes))]
    assert client.delete("/models/iris/versions/v1").status_code == 200
    assert [count(t, "iris", "v1") for t in TABLES] == [0, 0, 0]
    assert [count(t, "iris", "v2") for t in TABLES] == [3, 3, len(set(classes))]
    assert labeled(client, "iris", [{"request_id": "a", "truth": classes[0]}])["items"][0]["outcome"] == "unknown"
    assert client.delete("/models/iris").status_code == 200
    assert [count(t, "iris") for t in TABLES] == [0, 0, 0]
    assert [count(t, "bystander") for t in TABLES] == [3, 3, len(set(classes))]


def test_a_model_deleted_and_uploaded_again_starts_from_zero(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "iris")
    first_upload = model_of(app, "iris").upload
    predict(client, "iris", IRIS[:4], request_id="before")
    recorder_of(app).flush()
    classes, _ = iris_truth(iris_session, IRIS[:4])
    labeled(client, "iris", [{"request_id": f"before/{i}", "truth": c} for i, c in enumerate(classes)])
    assert only_version(client, "iris")["windows"]["since_upload"]["labels"] == 4
    assert client.delete("/models/iris").status_code == 200
    time.sleep(0.002)  # another upload time, as a real re-upload has
    uploaded(client, iris_bytes, "iris")  # the same bytes, id and version
    assert model_of(app, "iris").upload != first_upload
    version = only_version(client, "iris")
    for window in ("hour", "day", "since_upload"):
        assert version["windows"][window]["labels"] == 0 and version["windows"][window]["accuracy"] is None
    assert version["timeline"]["points"] == []
    assert labeled(client, "iris", [{"request_id": "before", "truth": classes[0]}])["unknown"] == 1
    predict(client, "iris", IRIS[:1], request_id="after")
    recorder_of(app).flush()
    assert labeled(client, "iris", [{"request_id": "after", "truth": wrong(classes[0])}])["matched"] == 1
    assert only_version(client, "iris")["windows"]["since_upload"] == expected_classifier_window([(wrong(classes[0]), classes[0])], None)


def test_labels_of_an_old_upload_left_behind_are_not_counted_for_the_new_one(app, client, model_dir, iris_bytes, iris_session):
    """Rows of a previous upload of the same version (say a worker wrote them after the delete) count for nothing."""
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:2], request_id="old")
    recorder_of(app).flush()
    classes, _ = iris_truth(iris_session, IRIS[:2])
    labeled(client, "iris", [{"request_id": "old", "truth": classes[0]}])
    kept = {table: query(model_dir, f"SELECT * FROM {table}") for table in TABLES}
    assert client.delete("/models/iris").status_code == 200
    uploaded(client, iris_bytes, "iris")
    for table, rows in kept.items():  # put the old upload's rows back, as a late writer would
        marks = ", ".join("?" * len(rows[0]))
        for row in rows:
            execute(model_dir, f"INSERT INTO {table} VALUES ({marks})", *row)
    version = only_version(client, "iris")
    assert [version["windows"][w]["labels"] for w in ("hour", "day", "since_upload")] == [0, 0, 0]
    assert version["timeline"]["points"] == []


# -- retention ----------------------------------------------------------------------------------------


def test_prune_removes_records_past_the_retention_and_keeps_the_totals(make_app, model_dir, iris_bytes, iris_session):
    app = make_app(record_retention_days=1)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:4], request_id="old")
    predict(client, "iris", IRIS[4:7], request_id="new")
    recorder_of(app).flush()
    old_classes, _ = iris_truth(iris_session, IRIS[:4])
    new_classes, _ = iris_truth(iris_session, IRIS[4:7])
    labeled(client, "iris", [{"request_id": f"old/{i}", "truth": c} for i, c in enumerate(old_classes[:3])]
            + [{"request_id": f"new/{i}", "truth": wrong(c)} for i, c in enumerate(new_classes)])
    # "old" was predicted and labeled 30 hours ago, past the day kept.
    execute(model_dir, "UPDATE nexus_predictions SET created_at = created_at - ? WHERE request_id = 'old'", 30 * HOUR)
    shift_labels(model_dir, 30 * HOUR, "old", range(3))
    recorder_of(app).prune()
    assert query(model_dir, "SELECT DISTINCT request_id FROM nexus_predictions") == [("new",)]
    assert query(model_dir, "SELECT DISTINCT request_id FROM nexus_labels") == [("new",)]
    assert sum(n for (n,) in query(model_dir, "SELECT labels FROM nexus_label_totals")) == 6
    version = only_version(client, "iris")
    everything = [(c, c) for c in old_classes[:3]] + [(wrong(c), c) for c in new_classes]
    assert version["windows"]["since_upload"] == expected_classifier_window(everything, None)
    assert version["windows"]["day"] == expected_classifier_window([(wrong(c), c) for c in new_classes], 86400)
    assert [p["labels"] for p in version["timeline"]["points"]] == [3]
    # A pruned prediction is gone: a label for it finds nothing (a client's id, not a UUIDv7 that would say expired).
    assert labeled(client, "iris", [{"request_id": "old/3", "truth": old_classes[3]}])["items"][0]["outcome"] == "unknown"


# -- metrics -------------------------------------------------------------------------------------------


def test_feedback_and_records_metrics_rise_by_what_was_matched_and_written(app, client, model_dir, iris_bytes, iris_session):
    uploaded(client, iris_bytes, "counted")
    written = metric("model_records_written_total")
    predict(client, "counted", IRIS[:5], request_id="m")
    predict(client, "counted", IRIS[[5]], request_id="n")
    recorder_of(app).flush()
    assert query(model_dir, "SELECT count(*) FROM nexus_predictions") == [(6,)]
    assert metric("model_records_written_total") - written >= 6
    classes, _ = iris_truth(iris_session, IRIS[:5])
    correct = metric("model_feedback_total", model_id="counted", version="v1", outcome="correct")
    incorrect = metric("model_feedback_total", model_id="counted", version="v1", outcome="incorrect")
    labeled(client, "counted", [{"request_id": "m", "truth": classes[0]}, {"request_id": "m/1", "truth": wrong(classes[1])},
                                {"request_id": "m/2", "truth": classes[2]}, {"request_id": "m/2", "truth": classes[2]},
                                {"request_id": "ghost", "truth": 1}])
    labeled(client, "counted", [{"request_id": "m/2", "truth": classes[2]}, {"request_id": "m/3", "truth": wrong(classes[3])}])
    assert metric("model_feedback_total", model_id="counted", version="v1", outcome="correct") - correct == 2
    assert metric("model_feedback_total", model_id="counted", version="v1", outcome="incorrect") - incorrect == 2
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'model_feedback_total{model_id="counted",outcome="correct",version="v1"}' in scraped
    assert "model_records_written_total" in scraped and "model_records_dropped_total" in scraped


# -- the database down -----------------------------------------------------------------------------------

UNREACHABLE = "postgresql://x:y@127.0.0.1:1/db"


def test_an_unreachable_database_costs_records_not_predictions(make_app, iris_bytes, iris_session):
    app = make_app(database_url=UNREACHABLE)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    dropped = metric("model_records_dropped_total")
    classes, _ = iris_truth(iris_session, IRIS[:3])
    for row in range(3):
        assert [str(c) for c in predict(client, "iris", IRIS[[row]])["prediction"]] == [classes[row]]
    recorder = recorder_of(app)
    assert wait_for(lambda: (recorder.flush(), recorder.dropped == 3)[1]), recorder.status()
    assert metric("model_records_dropped_total") - dropped >= 3
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    reason = strict_json(ready)["records"]
    assert reason.startswith("database unavailable since ") and reason.endswith("; 3 records dropped"), reason
    assert "127.0.0.1" in reason and "x:y@" not in reason
    for response in (feedback(client, "iris", [{"request_id": "a", "truth": 1}]), client.get("/models/iris/performance"),
                     client.get("/models/iris/versions/v1/performance")):
        assert_error(response, 503, "records_unavailable", "the records database is unavailable")
        assert response.headers["Retry-After"] == "5"
        assert "x:y@" not in response.get_data(as_text=True)
    # Still refused before the database is asked: bad bodies and unknown models.
    assert_error(feedback(client, "iris", [{"request_id": "a"}]), 400, "bad_input", "needs both")
    assert_error(feedback(client, "ghost", [{"request_id": "a", "truth": 1}]), 404, "model_not_found", "ghost")
    assert client.delete("/models/iris").status_code == 200  # a delete does not wait on the database


def test_a_small_queue_drops_records_while_the_database_is_down(make_app, iris_bytes):
    app = make_app(database_url=UNREACHABLE, record_queue=2)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    dropped = metric("model_records_dropped_total")
    for row in range(8):
        predict(client, "iris", IRIS[[row]])
    recorder = recorder_of(app)
    # At most 2 wait in the queue and 2 in the writer's hands: the others were dropped as they came.
    assert recorder.dropped >= 4
    assert metric("model_records_dropped_total") - dropped >= 4
    assert len(recorder.batcher.pending) <= 2
    assert wait_for(lambda: (recorder.flush(), recorder.dropped == 8)[1]), recorder.status()
    assert strict_json(client.get("/health/ready"))["records"].endswith("; 8 records dropped")


def test_dropped_records_are_counted_per_row_like_written_ones(make_app, iris_bytes):
    """A record is one row of a batch: a batch of 3 that could not be written is 3 records dropped."""
    app = make_app(database_url=UNREACHABLE)
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    dropped = metric("model_records_dropped_total")
    predict(client, "iris", IRIS[:3], request_id="three-rows")
    recorder = recorder_of(app)
    wait_for(lambda: (recorder.flush(), not recorder.batcher.pending and recorder.dropped > 0)[1])
    assert recorder.dropped == 3, recorder.status()
    assert metric("model_records_dropped_total") - dropped >= 3
    assert strict_json(client.get("/health/ready"))["records"].endswith("; 3 records dropped")


def test_a_state_directory_that_cannot_be_made_is_unavailable_not_an_error(make_app, tmp_path, iris_bytes):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory's parent should be")
    app = make_app(state_dir=blocker / "state")
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:2])
    recorder = recorder_of(app)
    recorder.flush()
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and strict_json(ready)["records"].startswith("database unavailable since ")
    for response in (feedback(client, "iris", [{"request_id": "a", "truth": 1}]), client.get("/models/iris/performance")):
        assert_error(response, 503, "records_unavailable", "the records database is unavailable")
        assert response.headers["Retry-After"] == "5"


def test_records_are_written_again_once_the_database_is_back(app, client, model_dir, iris_bytes, iris_session):
    path = database_file(model_dir)
    path.mkdir(parents=True)  # SQLite cannot open its file: a directory is in the way
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[[0]], request_id="lost")
    predict(client, "iris", IRIS[[1]], request_id="lost-too")
    recorder = recorder_of(app)
    assert wait_for(lambda: (recorder.flush(), recorder.dropped == 2)[1]), recorder.status()
    ready = strict_json(client.get("/health/ready"))
    assert "unable to open database file" in ready["records"] and ready["records"].endswith("; 2 records dropped")
    response = feedback(client, "iris", [{"request_id": "lost", "truth": 0}])
    assert_error(response, 503, "records_unavailable", "unable to open database file")
    path.rmdir()
    predict(client, "iris", IRIS[[3]], request_id="kept")
    recorder.flush()
    assert strict_json(client.get("/health/ready"))["records"] == "ok; 2 records dropped since start"
    assert query(model_dir, "SELECT request_id FROM nexus_predictions") == [("kept",)]
    [cls], _ = iris_truth(iris_session, IRIS[[3]])
    assert labeled(client, "iris", [{"request_id": "kept", "truth": cls}])["matched"] == 1


def test_a_database_of_a_newer_schema_is_unavailable(make_app, model_dir, iris_bytes):
    older = Database(engine_url(None, model_dir.with_name("models.state")))
    older.ensure()
    older.close()
    execute(model_dir, "UPDATE nexus_schema SET version = ?", SCHEMA_VERSION + 1)
    app = make_app()
    client = app.test_client()
    uploaded(client, iris_bytes, "iris")
    predict(client, "iris", IRIS[:1], request_id="p")
    recorder_of(app).flush()
    assert query(model_dir, "SELECT count(*) FROM nexus_predictions") == [(0,)]
    assert "newer than this server's" in strict_json(client.get("/health/ready"))["records"]
    assert_error(feedback(client, "iris", [{"request_id": "p", "truth": 0}]), 503, "records_unavailable", "newer than this server's")
    assert_error(client.get("/models/iris/performance"), 503, "records_unavailable", "newer than this server's")


def test_each_item_echoes_the_request_id_as_the_client_wrote_it(app, client, iris_bytes):
    uploaded(client, iris_bytes, "echo")
    one = predict(client, "echo", [5.1, 3.5, 1.4, 0.2])["request_id"]
    batch = predict(client, "echo", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])["request_id"]
    recorder_of(app).flush()
    sent = [f"{one}/0", one, batch, f"{batch}/1", f"{batch}/7"]
    body = labeled(client, "echo", [{"request_id": rid, "truth": 0} for rid in sent])
    assert [item["request_id"] for item in body["items"]] == sent
    assert [item["outcome"] for item in body["items"]] == ["matched", "duplicate", "matched", "matched", "unknown"]
