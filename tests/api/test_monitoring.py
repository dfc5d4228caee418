"""Model monitoring through the API: references (uploaded, or the first predictions), task declarations,
confidence and class counts, input drift, the /metrics series, restarts, deletes and the time window."""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus import create_app
from nexus.monitoring import live, sketch
from tests import models
from tests.conftest import TOKEN, assert_error, files_in, with_serving, metric, strict_json, wait_for

MU = np.array([5.8, 3.0, 3.7, 1.2])  # per-feature means of the iris-like traffic
IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
BUCKETS = live.CONFIDENCE_BUCKETS


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def runtime_under_tmp_path(tmp_path, monkeypatch):
    """Each app's monitoring runtime directory (a mkdtemp without PROMETHEUS_MULTIPROC_DIR) under the test's tmp_path."""
    base = tmp_path / "runtime"
    base.mkdir()
    monkeypatch.setattr(live, "tempfile", SimpleNamespace(mkdtemp=lambda prefix="": tempfile.mkdtemp(prefix=prefix, dir=base)))


def csv_of(table, header) -> bytes:
    lines = [",".join(header)] + [",".join(repr(float(v)) for v in row) for row in table]
    return ("\n".join(lines) + "\n").encode()


def npy_of(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def iris_reference(rows: int = 1000, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(MU, 1.0, size=(rows, 4))


def send_upload(client, data: bytes, model_id: str, version: str = "v1", reference: bytes | None = None,
                filename: str = "reference.csv", **fields):
    form = {"file": (io.BytesIO(data), f"{model_id}.onnx"), "id": model_id, "name": "Model", "version": version, **fields}
    if reference is not None:
        form["reference"] = (io.BytesIO(reference), filename)
    return client.post("/models/upload", data=form, content_type="multipart/form-data")


def uploaded(client, data: bytes, model_id: str, version: str = "v1", reference: bytes | None = None,
             filename: str = "reference.csv", **fields) -> dict:
    response = send_upload(client, data, model_id, version, reference, filename, **fields)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def predict(client, model_id: str, features, version: str | None = None) -> dict:
    body = {"model_id": model_id, "features": features, **({"version": version} if version else {})}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def report(client, model_id: str, version: str | None = None) -> dict:
    """One version's monitoring: the model's route when it has one version loaded, else the version's route."""
    if version is None:
        response = client.get(f"/models/{model_id}/monitoring")
        assert response.status_code == 200, response.get_data(as_text=True)
        body = strict_json(response)
        assert body["model_id"] == model_id and len(body["versions"]) == 1, body
        return body["versions"][0]
    response = client.get(f"/models/{model_id}/versions/{version}/monitoring")
    assert response.status_code == 200, response.get_data(as_text=True)
    return strict_json(response)


def monitor_of(app, model_id: str, version: str | None = None) -> live.Monitor:
    return app.extensions["nexus"].registry.get(model_id, version).monitor


def counted(app) -> None:
    """Count what the app's monitoring has queued now (a report does the same first), to look at its files."""
    app.extensions["nexus"].registry.monitoring.flush()


def verdicts(section: dict) -> list[str]:
    return [feature["verdict"] for feature in section["features"]]


def scrape(client) -> list:
    """Every sample /metrics shows, parsed by prometheus_client."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return [s for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples]


def values(samples, name: str, **labels) -> dict[tuple, float]:
    """The samples called ``name`` whose labels include ``labels``, by their remaining labels."""
    found = {}
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            found[tuple(sorted((k, v) for k, v in s.labels.items() if k not in labels))] = s.value
    return found


def top_probability(body: dict) -> float:
    [probabilities] = body["outputs"]["output_probability"]
    return max(probabilities.values())


def bucket_counts(tops) -> list[int]:
    found = [0] * len(BUCKETS)
    for top in tops:
        found[min(int(np.searchsorted(BUCKETS, top, side="left")), len(BUCKETS) - 1)] += 1
    return found


def nothing_kept(client, app, model_dir: Path, model_id: str) -> None:
    """A refused upload leaves no file (model, sidecar, reference, temporary), no counts and no model."""
    assert files_in(model_dir) == with_serving([])
    assert_error(client.get(f"/models/{model_id}"), 404, "model_not_found", model_id)
    runtime = app.extensions["nexus"].registry.monitoring.directory
    assert not runtime.exists() or not [p for p in runtime.iterdir() if p.name.startswith(f"{model_id}@")]



# -- 1, 2: an uploaded reference (CSV with a header, or .npy) ----------------------------------------


def test_a_csv_reference_is_kept_as_a_sketch_named_by_its_header(app, client, model_dir, iris_bytes):
    table = np.random.default_rng(1).uniform(0, 10, size=(1000, 4))  # 17 significant digits per value
    data = csv_of(table, IRIS_NAMES)
    body = uploaded(client, iris_bytes, "iris", reference=data, filename="iris.csv")
    assert body["model"]["id"] == "iris"
    assert files_in(model_dir) == with_serving(["iris.routing.json", "iris@v1.model_info.json", "iris@v1.onnx", "iris@v1.reference.json"])

    path = model_dir / "iris@v1.reference.json"
    text = path.read_text()
    document = json.loads(text)
    assert set(document) == {"format", "model_sha256", "source", "rows", "created_at", "file", "features"}
    assert document["source"] == "upload" and document["rows"] == 1000 and document["file"] == "iris.csv"
    assert document["model_sha256"] == json.loads((model_dir / "iris@v1.model_info.json").read_text())["sha256"]
    assert [f["name"] for f in document["features"]] == IRIS_NAMES
    for feature in document["features"]:
        assert set(feature) == {"name", "kind", "edges", "categories", "counts"}
        assert feature["kind"] == "numeric" and len(feature["edges"]) == sketch.BINS - 1 and feature["categories"] == []
        assert sum(feature["counts"]) == 1000 and len(feature["counts"]) == sketch.BINS
    # Only bins and counts: a few KB for an 80 KB table, and none of its values verbatim.
    assert path.stat().st_size < 4096 < len(data) / 10
    assert not [v for v in table.ravel()[:2000] if repr(float(v)) in text]

    found = report(client, "iris")
    assert found["model_id"] == "iris" and found["version"] == "v1"
    assert found["reference"] == {"source": "upload", "rows": 1000, "created_at": document["created_at"], "file": "iris.csv",
                                  "features": IRIS_NAMES, "collecting": None}
    assert found["drift"]["status"] == "insufficient"
    assert found["drift"]["window"]["rows"] == 0 and found["drift"]["last_n"]["rows"] == 0
    assert [f["name"] for f in found["drift"]["window"]["features"]] == IRIS_NAMES
    assert set(verdicts(found["drift"]["window"])) == set(verdicts(found["drift"]["last_n"])) == {"insufficient"}
    assert found["drift"]["window"]["features"][0]["reference"] == document["features"][0]["counts"]
    assert found["windows"]["window"]["requests"] == 0 and found["windows"]["last_n"]["predictions"] == 0
    # The version's own route says the same.
    assert report(client, "iris", "v1")["reference"] == found["reference"]


def test_the_model_report_names_the_thresholds(make_app):
    client = make_app(drift_warn=0.2, drift_alert=0.5, drift_min_count=10, drift_window_s=120, drift_last_n=50,
                      reference_rows=300).test_client()
    uploaded(client, models.identity(), "m")
    body = strict_json(client.get("/models/m/monitoring"))
    assert body["thresholds"] == {"warn": 0.2, "alert": 0.5, "min_count": 10, "method": "psi", "window_seconds": 120,
                                  "last_n": 50, "reference_rows": 300}
    found = body["versions"][0]
    assert found["windows"]["window"]["seconds"] == 120 and found["windows"]["last_n"]["size"] == 50
    assert found["reference"]["collecting"] == {"rows": 0, "target": 300}
    assert found["drift"] == {"status": "no_reference", "window": None, "last_n": None}


def test_a_npy_reference_names_the_features_by_input_and_column(client, model_dir):
    table = np.random.default_rng(2).normal(size=(150, 4)).astype(np.float32)
    uploaded(client, models.identity(), "n", reference=npy_of(table), filename="x.npy")
    document = json.loads((model_dir / "n@v1.reference.json").read_text())
    assert document["source"] == "upload" and document["rows"] == 150 and document["file"] == "x.npy"
    assert [f["name"] for f in document["features"]] == ["X[0]", "X[1]", "X[2]", "X[3]"]
    found = report(client, "n")
    assert found["reference"]["features"] == ["X[0]", "X[1]", "X[2]", "X[3]"] and found["reference"]["source"] == "upload"
    assert found["drift"]["status"] == "insufficient"


def test_a_reference_of_a_model_with_two_inputs_puts_their_columns_side_by_side(client, model_dir):
    table = np.random.default_rng(3).normal(size=(200, 6))
    uploaded(client, models.add_mul(), "two", reference=npy_of(table), filename="ab.npy")
    names = ["A[0]", "A[1]", "A[2]", "B[0]", "B[1]", "B[2]"]
    assert report(client, "two")["reference"]["features"] == names
    stored = json.loads((model_dir / "two@v1.reference.json").read_text())["features"]
    assert [f["edges"] for f in stored] == [list(s.edges) for s in sketch.build(table, names)]


def test_an_integer_column_with_few_values_is_categorical(client, model_dir):
    table = iris_reference(400)
    table[:, 3] = np.arange(400) % 3
    uploaded(client, models.identity(), "cat", reference=csv_of(table, list("abcd")))
    features = json.loads((model_dir / "cat@v1.reference.json").read_text())["features"]
    assert [f["kind"] for f in features] == ["numeric", "numeric", "numeric", "categorical"]
    assert features[3]["categories"] == [0.0, 1.0, 2.0] and features[3]["counts"] == [134, 133, 133, 0]


# -- 3: references that are refused, each keeping nothing --------------------------------------------

GOOD_ROWS = np.random.default_rng(4).normal(size=(120, 4))


def _bad_cell() -> bytes:
    lines = csv_of(GOOD_ROWS, list("abcd")).decode().splitlines()
    lines[50] = "1.0,2.0,three,4.0"  # line 51 of the file
    return "\n".join(lines).encode()


def _truncated_npy() -> bytes:
    return npy_of(GOOD_ROWS)[:200]


BAD_REFERENCES = [
    ("csv-width", csv_of(GOOD_ROWS[:, :3], list("abc")), "r.csv", "the model takes 4 value(s) per sample, the CSV header has 3 columns"),
    ("npy-width", npy_of(GOOD_ROWS[:, :3]), "r.npy", "the model takes 4 value(s) per sample, the reference has shape [120, 3]"),
    ("npy-1d", npy_of(GOOD_ROWS[:, 0]), "r.npy", "the reference has shape [120]"),
    ("npy-3d", npy_of(GOOD_ROWS.reshape(120, 2, 2)), "r.npy", "the reference has shape [120, 2, 2]"),
    ("too-few-rows", csv_of(GOOD_ROWS[:99], list("abcd")), "r.csv", "99 rows; a reference needs 100 to 1000000"),
    ("too-few-npy", npy_of(GOOD_ROWS[:10]), "r.npy", "10 rows; a reference needs 100"),
    ("header-only", b"a,b,c,d\n", "r.csv", "0 rows; a reference needs 100"),
    ("non-numeric", _bad_cell(), "r.csv", "CSV line 51 is not 4 numbers"),
    ("short-row", csv_of(GOOD_ROWS, list("abcd")) + b"1,2,3\n", "r.csv", "CSV line 122 is not 4 numbers"),
    ("no-header", csv_of(GOOD_ROWS, list("abcd")).split(b"\n", 1)[1], "r.csv", "the CSV's first row must be a header of column names"),
    ("duplicate-names", csv_of(GOOD_ROWS, list("abca")), "r.csv", "CSV column names must be distinct"),
    ("empty-name", csv_of(GOOD_ROWS, ["a", "", "c", "d"]), "r.csv", "CSV column names must be distinct, not empty"),
    ("empty", b"", "r.csv", "field 'reference' is empty"),
    ("blank", b"\n\n", "r.csv", "the CSV is empty"),
    ("garbage", b"\xff\xfe\x00\x81garbage\x80\x9f" * 10, "r.bin", "neither a .npy array nor UTF-8 CSV text"),
    ("utf16", csv_of(GOOD_ROWS, list("abcd")).decode().encode("utf-16"), "r.csv", "neither a .npy array nor UTF-8 CSV text"),
    ("npy-strings", npy_of(np.full((120, 4), "1.5")), "r.npy", "a .npy of numbers is needed, not <U3"),
    ("npy-complex", npy_of(GOOD_ROWS + 1j), "r.npy", "a .npy of numbers is needed, not complex128"),
    ("npy-pickle", None, "r.npy", "a .npy of numbers is needed, not object"),
    ("npy-truncated", _truncated_npy(), "r.npy", "more than its 200 bytes hold"),
    ("npy-bad-version", b"\x93NUMPY\x09\x00" + npy_of(GOOD_ROWS)[8:], "r.npy", "not a readable .npy array"),
    ("all-nan", npy_of(np.full((120, 4), np.nan)), "r.npy", "no row is made of finite numbers"),
    ("all-inf", csv_of(np.full((120, 4), np.inf), list("abcd")), "r.csv", "no row is made of finite numbers"),
]


@pytest.mark.parametrize(("case", "data", "filename", "words"), BAD_REFERENCES, ids=[c[0] for c in BAD_REFERENCES])
def test_a_bad_reference_is_refused_and_keeps_nothing(app, client, model_dir, case, data, filename, words):
    if case == "npy-pickle":
        buffer = io.BytesIO()
        np.save(buffer, np.array([[1.0, "a", None, 2]] * 120, dtype=object), allow_pickle=True)
        data = buffer.getvalue()
    response = send_upload(client, models.identity(), "bad", reference=data, filename=filename)
    assert_error(response, 400, "bad_input", words)
    if case != "empty":
        assert "field 'reference'" in response.get_json()["error"]
    nothing_kept(client, app, model_dir, "bad")


def test_a_reference_for_a_model_of_dynamic_width_is_refused(app, client, model_dir):
    data = csv_of(GOOD_ROWS, list("abcd"))
    response = send_upload(client, models.identity(shape=(None, None)), "dyn", reference=data)
    assert_error(response, 400, "bad_input", "field 'reference': the model's input has a dynamic width")
    nothing_kept(client, app, model_dir, "dyn")
    response = send_upload(client, models.identity(shape=(None, None)), "dyn", reference=npy_of(GOOD_ROWS), filename="r.npy")
    assert_error(response, 400, "bad_input", "dynamic width")
    nothing_kept(client, app, model_dir, "dyn")
    # Without a reference the model is taken, its inputs summarized, its first predictions to become the reference.
    uploaded(client, models.identity(shape=(None, None)), "dyn")
    assert report(client, "dyn")["reference"]["features"] == ["X:mean", "X:std", "X:min", "X:max", "X:zeros"]


def test_a_reference_for_a_model_without_numeric_inputs_is_refused(app, client, model_dir):
    response = send_upload(client, models.tfidf_classifier(), "text", reference=csv_of(GOOD_ROWS[:, :1], ["t"]))
    assert_error(response, 400, "bad_input", "field 'reference': the model has no numeric input to watch")
    nothing_kept(client, app, model_dir, "text")


def test_a_refused_reference_leaves_the_other_versions_as_they_were(app, client, model_dir):
    uploaded(client, models.identity(), "m", reference=npy_of(GOOD_ROWS), filename="r.npy")
    before = {name: (model_dir / name).read_bytes() for name in files_in(model_dir)}
    response = send_upload(client, models.identity(), "m", version="v2", reference=npy_of(GOOD_ROWS[:5]), filename="r.npy")
    assert_error(response, 400, "bad_input", "5 rows")
    assert {name: (model_dir / name).read_bytes() for name in files_in(model_dir)} == before
    assert client.get("/models/m").get_json()["versions"] == ["v1"]


# Server bugs: these references make the upload answer 500 instead of a 400 that names the field.

def _rows_text(separator: str) -> bytes:
    return separator.join(["a,b,c,d"] + [",".join(repr(float(v)) for v in row) for row in GOOD_ROWS]).encode()


def test_a_csv_with_old_mac_line_endings_is_no_server_error(app, client, model_dir):
    response = send_upload(client, models.identity(), "cr", reference=_rows_text("\r"))
    assert response.status_code in (201, 400), response.get_json()  # got 500: csv.Error "new-line character seen in unquoted field"
    if response.status_code == 400:
        assert_error(response, 400, "bad_input", "field 'reference'")
        nothing_kept(client, app, model_dir, "cr")
    else:
        assert report(client, "cr")["reference"]["rows"] == 120


def test_a_csv_with_windows_line_endings_is_read(client):
    uploaded(client, models.identity(), "crlf", reference=_rows_text("\r\n"))
    assert report(client, "crlf")["reference"]["rows"] == 120


def test_a_csv_cell_over_the_csv_modules_field_limit_is_a_bad_input(app, client, model_dir):
    data = b"a,b,c,d\n" + b"1" * 200_000 + b",1,1,1\n" + csv_of(GOOD_ROWS, list("abcd")).split(b"\n", 1)[1]
    response = send_upload(client, models.identity(), "big", reference=data)
    assert_error(response, 400, "bad_input", "field 'reference'")  # got 500: csv.Error "field larger than field limit (131072)"
    nothing_kept(client, app, model_dir, "big")


def test_a_npy_header_claiming_a_huge_shape_is_a_bad_input(app, client, model_dir):
    real = npy_of(GOOD_ROWS)
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000000, 4), }".ljust(len(real[10:128]) - 1) + b"\n"
    data = real[:10] + header + real[128:]  # 5 KB that say "2.8 PiB follow"
    response = send_upload(client, models.identity(), "huge", reference=data, filename="r.npy")
    assert_error(response, 400, "bad_input", "field 'reference'")  # got 500: MemoryError from np.load allocating the shape
    nothing_kept(client, app, model_dir, "huge")


def test_a_reference_sent_as_a_text_field_is_not_silently_dropped(app, client, model_dir):
    form = {"file": (io.BytesIO(models.identity()), "t.onnx"), "id": "txt", "name": "Model", "version": "v1",
            "reference": csv_of(GOOD_ROWS, list("abcd")).decode()}
    response = client.post("/models/upload", data=form, content_type="multipart/form-data")
    # got 201 with no reference at all: the CSV given as a plain form field is ignored without a word
    assert response.status_code == 400 or report(client, "txt")["reference"]["source"] == "upload", response.get_json()


# -- 4: task declarations --------------------------------------------------------------------------


BAD_TASKS = [
    ("iris", {"task": "foo"}, "field 'task' must be one of classifier, regressor, not 'foo'"),
    ("iris", {"task": "Classifier"}, "field 'task' must be one of classifier, regressor"),
    ("iris", {"task_output": "nope"}, "field 'task_output' names no output of the model; its outputs are output_label, output_probability"),
    ("iris", {"task": "classifier", "task_output": "output_label"}, "a classifier needs an output of class probabilities"),
    ("iris", {"task": "regressor", "task_output": "output_probability"}, "a regressor needs a numeric output"),
    ("linear", {"task": "classifier"}, "a classifier needs an output of class probabilities (a ZipMap, or float [N, K] with K > 1)"),
    ("linear1", {"task": "classifier", "task_output": "Y"}, "a classifier needs an output of class probabilities"),
    ("linear", {"task_output": "X"}, "field 'task_output' names no output of the model; its outputs are Y"),
    ("linear", {"task": ""}, "field 'task' must be a non-empty string"),
]


@pytest.mark.parametrize(("which", "fields", "words"), BAD_TASKS)
def test_a_bad_task_declaration_is_refused_and_keeps_nothing(app, client, model_dir, iris_bytes, which, fields, words):
    data = {"iris": iris_bytes, "linear": models.linear()[0], "linear1": models.linear(out_features=1)[0]}[which]
    response = send_upload(client, data, "t", reference=npy_of(GOOD_ROWS), filename="r.npy", **fields)
    assert_error(response, 400, "bad_input", words)
    nothing_kept(client, app, model_dir, "t")


DECLARED = [
    ("iris", {"task": "classifier"}, {"kind": "classifier", "output": "output_probability", "declared": True}),
    ("iris", {"task_output": "output_probability"}, {"kind": "classifier", "output": "output_probability", "declared": True}),
    ("iris", {"task": "regressor"}, {"kind": "regressor", "output": "output_label", "declared": True}),
    ("linear", {"task": "regressor", "task_output": "Y"}, {"kind": "regressor", "output": "Y", "declared": True}),
    ("linear", {"task": "classifier", "task_output": "Y"}, {"kind": "classifier", "output": "Y", "declared": True}),
]


@pytest.mark.parametrize(("which", "fields", "task"), DECLARED)
def test_a_declared_task_is_stored_and_reported(make_app, client, model_dir, iris_bytes, which, fields, task):
    data = iris_bytes if which == "iris" else models.linear()[0]
    uploaded(client, data, "t", **fields)
    assert json.loads((model_dir / "t@v1.model_info.json").read_text())["task"] == task
    assert report(client, "t")["task"] == task
    assert client.get("/models/t").get_json()["task"] == task
    # and a restarted server reads it back
    assert report(make_app().test_client(), "t")["task"] == task


# -- 5: the task detected, and what a classifier's or a regressor's answers show ---------------------


def test_a_zipmap_classifier_is_detected_and_its_confidence_counted(client, iris_bytes):
    uploaded(client, iris_bytes, "iris")
    found = report(client, "iris")
    assert found["task"] == {"kind": "classifier", "output": "output_probability", "declared": False}
    assert found["output"] is None and found["classes"] == {}
    assert found["confidence"] == {"count": 0, "mean": None, "mean_margin": None, "min": None, "max": None,
                                   "buckets": list(BUCKETS), "counts": [0] * len(BUCKETS)}
    rows = np.random.default_rng(5).normal(MU, 1.0, size=(40, 4)).astype(np.float32)
    answers = [predict(client, "iris", row.tolist()) for row in rows]
    tops = [top_probability(a) for a in answers]
    ordered = [sorted(a["outputs"]["output_probability"][0].values()) for a in answers]
    margins = [p[-1] - p[-2] for p in ordered]
    found = report(client, "iris")
    confidence = found["confidence"]
    assert confidence["count"] == 40 and sum(confidence["counts"]) == 40 and confidence["counts"] == bucket_counts(tops)
    assert confidence["mean"] == pytest.approx(np.mean(tops)) and confidence["mean_margin"] == pytest.approx(np.mean(margins))
    assert confidence["min"] == pytest.approx(min(tops)) and confidence["max"] == pytest.approx(max(tops))
    labels = Counter(str(a["prediction"][0]) for a in answers)
    assert found["classes"] == {c: labels[c] for c in "012"}
    assert sum(found["classes"].values()) == 40
    # No reference was uploaded: the predictions are collected towards one, not binned.
    assert found["reference"]["collecting"] == {"rows": 40, "target": 1000}
    assert found["drift"]["status"] == "no_reference"
    assert found["windows"]["window"] == {"seconds": 3600, "requests": 40, "predictions": 40}


def test_a_probability_tensor_next_to_a_label_is_a_classifier(client):
    uploaded(client, models.tfidf_classifier(), "text")
    answers = [predict(client, "text", [text]) for text in ("a good movie", "an awful film", "a great film")]
    batch = predict(client, "text", [["a bad movie"], ["a good film"]])
    found = report(client, "text")
    assert found["task"] == {"kind": "classifier", "output": "probabilities", "declared": False}
    tops = [max(a["outputs"]["probabilities"][0]) for a in answers] + [max(p) for p in batch["outputs"]["probabilities"]]
    assert found["confidence"]["count"] == 5 and found["confidence"]["counts"] == bucket_counts(tops)
    labels = Counter(str(label) for a in [*answers, batch] for label in a["prediction"])
    assert found["classes"] == {"0": labels["0"], "1": labels["1"]}
    # A text input is not watched: no features, no reference to collect.
    assert found["reference"]["features"] == [] and found["reference"]["collecting"] is None
    assert found["drift"]["status"] == "no_reference"


def test_a_regressor_reports_its_output_like_numpy(client):
    data, _, _ = models.linear()
    uploaded(client, data, "lin")
    found = report(client, "lin")
    assert found["task"] == {"kind": "regressor", "output": "Y", "declared": False}
    assert found["confidence"] is None and found["classes"] == {}
    assert found["output"] == {"name": "Y", "count": 0, "mean": None, "std": None, "min": None, "max": None}
    rows = np.random.default_rng(6).normal(size=(30, 4)).astype(np.float32)
    outputs = [predict(client, "lin", row.tolist())["prediction"] for row in rows[:20]]
    outputs += predict(client, "lin", rows[20:].tolist())["outputs"]["Y"]  # and a batch of 10
    got = np.array(outputs, dtype=np.float64).ravel()
    assert got.size == 90
    output = report(client, "lin")["output"]
    assert output["name"] == "Y" and output["count"] == 90
    # (the JSON answer carries each float32 to 7-8 significant digits)
    assert output["mean"] == pytest.approx(got.mean(), rel=1e-6) and output["std"] == pytest.approx(got.std(), rel=1e-6)
    assert output["min"] == pytest.approx(got.min(), rel=1e-6) and output["max"] == pytest.approx(got.max(), rel=1e-6)


# -- 6: drift ----------------------------------------------------------------------------------------


def test_traffic_like_the_reference_is_ok_and_a_shift_of_two_features_alerts(client, iris_bytes):
    reference = npy_of(iris_reference())
    uploaded(client, iris_bytes, "same", reference=reference, filename="ref.npy")
    uploaded(client, iris_bytes, "shifted", reference=reference, filename="ref.npy")
    same = np.random.default_rng(8).normal(MU, 1.0, size=(300, 4)).astype(np.float32)
    shifted = same.copy()
    shifted[:, [0, 2]] += 3

    for model_id, rows, expected in (("same", same, ["ok"] * 4), ("shifted", shifted, ["alert", "ok", "alert", "ok"])):
        answers = [predict(client, model_id, row.tolist()) for row in rows]
        found = report(client, model_id)
        drift = found["drift"]
        assert drift["status"] == ("ok" if model_id == "same" else "alert")
        for section in ("window", "last_n"):
            assert drift[section]["rows"] == 300, section
            assert verdicts(drift[section]) == expected, (model_id, section, drift[section]["features"])
            assert drift[section]["status"] == drift["status"]
            for feature in drift[section]["features"]:
                assert feature["count"] == 300 and sum(feature["live"]) == 300 and feature["missing"] == 0
                assert 0 <= feature["js"] <= 1 and feature["psi"] >= 0
        assert found["windows"]["window"]["requests"] == found["windows"]["window"]["predictions"] == 300
        assert found["windows"]["last_n"]["predictions"] == 300
        # The live bins are the traffic counted into the reference's bins.
        document = json.loads(reference_text(client, model_id))
        sketches = [sketch.FeatureSketch.from_document(f) for f in document["features"]]
        for feature, sketched, column in zip(drift["window"]["features"], sketches, rows.T.astype(np.float64), strict=True):
            assert feature["live"] == sketched.count(column).tolist()
            assert feature["psi"] == pytest.approx(sketch.psi(sketched.counts, feature["live"]))
        confidence = found["confidence"]
        assert confidence["count"] == 300 and sum(confidence["counts"]) == 300
        assert confidence["counts"] == bucket_counts([top_probability(a) for a in answers])
        assert sum(found["classes"].values()) == 300
        assert found["classes"] == {label: sum(str(a["prediction"][0]) == label for a in answers) for label in ("0", "1", "2")}


def reference_text(client, model_id: str, version: str = "v1") -> str:
    return (client.application.extensions["nexus"].store.reference_path(f"{model_id}@{version}")).read_text()


def sidecar_text(client, model_id: str, version: str = "v1") -> str:
    return (client.application.extensions["nexus"].store.sidecar_path(f"{model_id}@{version}")).read_text()


def test_too_little_traffic_is_insufficient_never_an_alarm(client, iris_bytes):
    uploaded(client, iris_bytes, "few", reference=npy_of(iris_reference()), filename="ref.npy")
    for row in np.random.default_rng(9).normal(MU + 5, 1.0, size=(99, 4)):  # far off, but only 99 rows
        predict(client, "few", row.tolist())
    drift = report(client, "few")["drift"]
    assert drift["status"] == "insufficient" and set(verdicts(drift["window"])) == {"insufficient"}
    assert all(f["psi"] is not None and f["psi"] > 1 for f in drift["window"]["features"])
    predict(client, "few", (MU + 5).tolist())
    assert report(client, "few")["drift"]["status"] == "alert"


def _reference_with_a_category() -> np.ndarray:
    table = iris_reference(600, seed=10)
    table[:, 3] = np.arange(600) % 3
    return table


BATCH_CASES = {  # the reference and the width of a row
    "iris-numeric": (iris_reference, 4),
    "iris-categorical": (_reference_with_a_category, 4),
    "two-inputs": (lambda: np.random.default_rng(11).normal(MU.mean(), 1.0, size=(300, 6)), 6),
    "wide-summarized": (lambda: np.random.default_rng(27).normal(MU.mean(), 1.0, size=(300, 100)), 100),
}


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_a_batch_counts_like_the_same_rows_sent_one_by_one(client, iris_bytes, case):
    table, width = BATCH_CASES[case]
    data = iris_bytes if case.startswith("iris") else models.add_mul() if width == 6 else models.mlp(in_features=100)
    reference = npy_of(table())
    uploaded(client, data, "batch", reference=reference, filename="r.npy")
    uploaded(client, data, "single", reference=reference, filename="r.npy")
    rows = np.random.default_rng(12).normal(MU.mean(), 1.5, size=(50, width)).astype(np.float32)
    if case == "iris-categorical":
        rows[:, 3] = [0, 1, 2, 7, 1.5] * 10  # the categories, one never seen, one not even an integer

    def send(model_id, block):
        if width == 6:
            return client.post("/predict", json={"model_id": model_id, "inputs": {"A": block[:, :3].tolist(), "B": block[:, 3:].tolist()}})
        if width == 100:
            block = block.copy()
            block[:, :10] = 0.0  # the share of zeros: 0.1
        return client.post("/predict", json={"model_id": model_id, "features": block.tolist()})

    assert send("batch", rows).status_code == 200
    for row in rows:
        assert send("single", row[None, :]).status_code == 200
    batch, single = report(client, "batch"), report(client, "single")
    assert batch["windows"]["window"] == {"seconds": 3600, "requests": 1, "predictions": 50}
    assert single["windows"]["window"] == {"seconds": 3600, "requests": 50, "predictions": 50}
    assert batch["windows"]["last_n"]["predictions"] == single["windows"]["last_n"]["predictions"] == 50
    for section in ("window", "last_n"):
        assert batch["drift"][section]["rows"] == single["drift"][section]["rows"] == 50
        for b, s in zip(batch["drift"][section]["features"], single["drift"][section]["features"], strict=True):
            assert b["live"] == s["live"], (section, b["name"])
            assert b["count"] == s["count"] == 50 and b["missing"] == s["missing"] == 0
            assert len(batch["drift"][section]["features"]) == (5 if width == 100 else width)
            assert b["psi"] == pytest.approx(s["psi"]) and b["js"] == pytest.approx(s["js"])
    assert batch["confidence"] == pytest.approx(single["confidence"])
    if width == 100:
        assert batch["reference"]["features"] == SUMMARY_NAMES
    assert batch["classes"] == single["classes"] and batch["output"] == pytest.approx(single["output"])
    if case == "iris-categorical":
        category = batch["drift"]["window"]["features"][3]
        assert category["kind"] == "categorical" and category["live"] == [10, 10, 10, 20]  # 7 and 1.5 are "other"


def test_the_last_n_ring_keeps_the_newest_rows(make_app):
    client = make_app(drift_last_n=8, drift_min_count=5).test_client()
    table = np.random.default_rng(13).normal(size=(200, 4))
    uploaded(client, models.identity(), "ring", reference=npy_of(table), filename="r.npy")
    rows = np.concatenate([np.full((12, 4), -9.0), np.full((8, 4), 9.0)]).astype(np.float32)
    for row in rows[:10]:
        predict(client, "ring", row.tolist())
    predict(client, "ring", rows[10:].tolist())  # a batch of 10: the last 8 are the newest
    found = report(client, "ring")
    assert found["windows"]["last_n"] == {"size": 8, "predictions": 8}
    assert found["drift"]["last_n"]["rows"] == 8 and found["drift"]["window"]["rows"] == 20
    for window, last in zip(found["drift"]["window"]["features"], found["drift"]["last_n"]["features"], strict=True):
        assert window["live"][0] == 12 and window["live"][-1] == 8
        assert last["live"][-1] == 8 and sum(last["live"]) == 8
    assert set(verdicts(found["drift"]["last_n"])) == {"alert"}  # min_count 5 from the settings


# -- 7: the first predictions become the reference ---------------------------------------------------


def test_the_first_predictions_become_the_reference(make_app, model_dir):
    app = make_app(reference_rows=120)
    client = app.test_client()
    uploaded(client, models.identity(), "c")
    assert report(client, "c")["reference"]["collecting"] == {"rows": 0, "target": 120}
    rows = np.random.default_rng(14).normal(size=(135, 4)).astype(np.float32)
    for row in rows[:60]:
        predict(client, "c", row.tolist())
    counted(app)
    monitor = monitor_of(app, "c")
    spill = monitor.directory / "collect.rows"
    assert spill.exists() and spill.stat().st_size == 60 * 4 * 8
    found = report(client, "c")
    assert found["reference"] == {"source": None, "rows": None, "created_at": None, "file": None,
                                  "features": ["X[0]", "X[1]", "X[2]", "X[3]"], "collecting": {"rows": 60, "target": 120}}
    assert found["drift"]["status"] == "no_reference"
    for row in rows[60:119]:
        predict(client, "c", row.tolist())
    assert report(client, "c")["reference"]["collecting"] == {"rows": 119, "target": 120}
    assert not (model_dir / "c@v1.reference.json").exists()
    predict(client, "c", rows[119].tolist())  # the 120th: the reference is built in the background

    found = wait_for(lambda: (r := report(client, "c"))["reference"]["source"] == "predictions" and r)
    assert found, "no reference within 5 s"
    assert found["reference"]["rows"] == 120 and found["reference"]["collecting"] is None and found["reference"]["file"] is None
    assert found["reference"]["features"] == ["X[0]", "X[1]", "X[2]", "X[3]"]
    document = json.loads((model_dir / "c@v1.reference.json").read_text())
    assert document["source"] == "predictions" and document["rows"] == 120 and "file" not in document
    expected = sketch.build(rows[:120].astype(np.float64), ["X[0]", "X[1]", "X[2]", "X[3]"])
    assert document["features"] == [s.document() for s in expected]
    assert wait_for(lambda: not spill.exists()), "collect.rows is left behind"
    # From now on predictions are binned against it.
    for row in rows[120:]:
        predict(client, "c", row.tolist())
    found = report(client, "c")
    assert found["drift"]["window"]["rows"] == 15 and found["windows"]["window"]["predictions"] == 135
    assert all(f["count"] == 15 for f in found["drift"]["window"]["features"])
    assert not spill.exists()


def test_a_batch_past_the_target_gives_a_reference_of_the_first_rows(make_app, model_dir):
    app = make_app(reference_rows=120)
    client = app.test_client()
    uploaded(client, models.identity(), "b")
    rows = np.random.default_rng(15).normal(size=(200, 4)).astype(np.float32)
    predict(client, "b", rows[:100].tolist())
    assert report(client, "b")["reference"]["collecting"] == {"rows": 100, "target": 120}
    predict(client, "b", rows[100:].tolist())
    assert wait_for(lambda: report(client, "b")["reference"]["source"] == "predictions"), "no reference within 5 s"
    document = json.loads((model_dir / "b@v1.reference.json").read_text())
    assert document["rows"] == 120
    assert document["features"] == [s.document() for s in sketch.build(rows[:120].astype(np.float64), ["X[0]", "X[1]", "X[2]", "X[3]"])]
    assert wait_for(lambda: not (monitor_of(app, "b").directory / "collect.rows").exists())


def test_an_uploaded_reference_means_nothing_is_collected(app, client):
    uploaded(client, models.identity(), "u", reference=npy_of(GOOD_ROWS), filename="r.npy")
    for row in GOOD_ROWS[:5]:
        predict(client, "u", row.tolist())
    assert not (monitor_of(app, "u").directory / "collect.rows").exists()
    assert report(client, "u")["drift"]["window"]["rows"] == 5


# -- 8: a restart keeps the reference -----------------------------------------------------------------


def test_a_restarted_server_shows_the_same_references(make_app, model_dir, iris_bytes):
    app = make_app(reference_rows=120)
    client = app.test_client()
    uploaded(client, iris_bytes, "up", reference=csv_of(iris_reference(300), IRIS_NAMES), filename="iris.csv", task="classifier")
    uploaded(client, models.identity(), "col")
    for row in np.random.default_rng(16).normal(size=(120, 4)):
        predict(client, "col", row.tolist())
    assert wait_for(lambda: report(client, "col")["reference"]["source"] == "predictions")
    before = {m: report(client, m) for m in ("up", "col")}

    again = create_app({"model_dir": model_dir, "ort_threads": 1, "reference_rows": 120}).test_client()
    for model_id in ("up", "col"):
        after = report(again, model_id)
        assert after["reference"] == before[model_id]["reference"]
        assert after["task"] == before[model_id]["task"]
        assert [f["reference"] for f in after["drift"]["window"]["features"]] == \
            [f["reference"] for f in before[model_id]["drift"]["window"]["features"]]
    assert report(again, "up")["reference"]["source"] == "upload" and report(again, "up")["reference"]["features"] == IRIS_NAMES
    assert report(again, "up")["task"] == {"kind": "classifier", "output": "output_probability", "declared": True}
    assert report(again, "col")["reference"]["source"] == "predictions" and report(again, "col")["reference"]["rows"] == 120
    # the new server bins its traffic against the stored reference at once, collecting nothing
    predict(again, "col", [0.0, 0.0, 0.0, 0.0])
    assert report(again, "col")["drift"]["window"]["rows"] == 1


# -- 9: deleting ---------------------------------------------------------------------------------------


def test_deleting_removes_references_and_counts(app, client, model_dir, iris_bytes):
    reference = npy_of(iris_reference(200))
    uploaded(client, iris_bytes, "d", reference=reference, filename="r.npy")
    uploaded(client, iris_bytes, "d", version="v2", reference=reference, filename="r.npy")
    for version in ("v1", "v2"):
        for row in iris_reference(5, seed=17):
            assert predict(client, "d", row.tolist(), version)["model_version"] == version
    counted(app)
    directories = {v: monitor_of(app, "d", v).directory for v in ("v1", "v2")}
    assert all(d.is_dir() and list(d.glob("*.counts")) for d in directories.values())
    assert [v["version"] for v in strict_json(client.get("/models/d/monitoring"))["versions"]] == ["v1", "v2"]

    assert client.delete("/models/d/versions/v1").status_code == 200
    assert not (model_dir / "d@v1.reference.json").exists() and not directories["v1"].exists()
    assert (model_dir / "d@v2.reference.json").exists() and directories["v2"].is_dir()
    assert [v["version"] for v in strict_json(client.get("/models/d/monitoring"))["versions"]] == ["v2"]
    assert_error(client.get("/models/d/versions/v1/monitoring"), 404, "version_not_found", "v1")
    assert report(client, "d", "v2")["windows"]["window"]["requests"] == 5

    assert client.delete("/models/d").status_code == 200
    assert files_in(model_dir) == with_serving([]) and not directories["v2"].exists()
    assert_error(client.get("/models/d/monitoring"), 404, "model_not_found", "d")

    # The same id and version uploaded again start from nothing.
    uploaded(client, iris_bytes, "d", reference=reference, filename="r.npy")
    found = report(client, "d")
    assert monitor_of(app, "d").directory != directories["v1"]
    assert found["windows"]["window"]["requests"] == 0 and found["windows"]["last_n"]["predictions"] == 0
    assert found["confidence"]["count"] == 0 and found["classes"] == {} and found["drift"]["window"]["rows"] == 0
    predict(client, "d", MU.tolist())
    found = report(client, "d")
    assert found["confidence"]["count"] == 1 and sum(found["classes"].values()) == 1
    assert values(scrape(client), "model_prediction_confidence_count", model_id="d", version="v1") == {(): 1.0}


def test_a_reupload_without_a_reference_collects_anew(make_app, model_dir):
    app = make_app(reference_rows=100)
    client = app.test_client()
    uploaded(client, models.identity(), "r", reference=npy_of(GOOD_ROWS), filename="r.npy")
    assert client.delete("/models/r").status_code == 200
    uploaded(client, models.identity(), "r")
    assert not (model_dir / "r@v1.reference.json").exists()
    assert report(client, "r")["reference"]["collecting"] == {"rows": 0, "target": 100}


# -- 10: /metrics ------------------------------------------------------------------------------------


def test_metrics_show_confidence_classes_drift_and_status(client, iris_bytes):
    uploaded(client, iris_bytes, "mx", reference=npy_of(iris_reference()), filename="r.npy")
    rows = np.random.default_rng(18).normal(MU, 1.0, size=(150, 4)).astype(np.float32)
    rows[:, [0, 2]] += 3
    answers = [predict(client, "mx", row.tolist()) for row in rows]
    tops = [top_probability(a) for a in answers]
    samples = scrape(client)

    assert values(samples, "model_prediction_confidence_count", model_id="mx", version="v1") == {(): 150.0}
    assert values(samples, "model_prediction_confidence_sum", model_id="mx", version="v1")[()] == pytest.approx(sum(tops))
    buckets = values(samples, "model_prediction_confidence_bucket", model_id="mx", version="v1")
    expected = np.cumsum(bucket_counts(tops)).tolist()
    assert {k[0][1]: v for k, v in buckets.items()} == {**{repr(float(b)): float(c) for b, c in zip(BUCKETS, expected, strict=True)},
                                                        "+Inf": 150.0}
    classes = values(samples, "model_predicted_class_total", model_id="mx", version="v1")
    assert {k[0][1]: v for k, v in classes.items()} == {c: float(sum(str(a["prediction"][0]) == c for a in answers)) for c in "012"}
    assert sum(classes.values()) == 150

    drift = values(samples, "model_feature_drift", model_id="mx", version="v1")
    window = report(client, "mx")["drift"]["window"]["features"]
    assert drift == pytest.approx({(("feature", f["name"]), ("method", m)): f[m] for f in window for m in ("psi", "js")})
    assert values(samples, "model_drift_status", model_id="mx", version="v1") == {(): 2.0}
    assert values(samples, "model_output_value_count", model_id="mx") == {}


def test_metrics_show_a_regressors_output_and_forget_deleted_models(client, iris_bytes):
    data, _, _ = models.linear()
    uploaded(client, data, "rx")
    uploaded(client, iris_bytes, "cx", reference=npy_of(iris_reference()), filename="r.npy")
    outputs = [predict(client, "rx", row.tolist())["prediction"] for row in GOOD_ROWS[:20]]
    for row in iris_reference(10, seed=19):
        predict(client, "cx", row.tolist())
    samples = scrape(client)
    assert values(samples, "model_output_value_count", model_id="rx", version="v1") == {(): 60.0}
    assert values(samples, "model_output_value_sum", model_id="rx", version="v1")[()] == pytest.approx(float(np.sum(outputs)), rel=1e-6)
    assert values(samples, "model_drift_status", model_id="rx", version="v1") == {(): 0.0}  # no reference yet
    assert values(samples, "model_feature_drift", model_id="rx") == {}
    assert values(samples, "model_prediction_confidence_count", model_id="rx") == {}
    assert values(samples, "model_drift_status", model_id="cx", version="v1") == {(): 0.0}  # 10 rows: insufficient
    assert len(values(samples, "model_feature_drift", model_id="cx", version="v1")) == 8

    for model_id in ("rx", "cx"):
        assert client.delete(f"/models/{model_id}").status_code == 200
    left = [s for s in scrape(client) if s.labels.get("model_id") in ("rx", "cx")]
    assert left == []


# -- 11: monitoring turned off ------------------------------------------------------------------------


def test_with_monitoring_off_the_report_is_404_and_predictions_work(make_app, model_dir, iris_bytes):
    app = make_app(monitoring=False)
    client = app.test_client()
    uploaded(client, iris_bytes, "off", reference=npy_of(iris_reference(200)), filename="r.npy")
    assert monitor_of(app, "off") is None
    assert predict(client, "off", MU.tolist())["model_id"] == "off"
    assert_error(client.get("/models/off/monitoring"), 404, "monitoring_off", "monitoring is turned off")
    assert_error(client.get("/models/off/versions/v1/monitoring"), 404, "monitoring_off", "NEXUS_MONITORING=0")
    assert_error(client.get("/models/none/monitoring"), 404, "model_not_found", "none")
    assert not [s for s in scrape(client) if s.name.startswith(("model_prediction_confidence", "model_drift", "model_feature_drift"))
                and s.labels.get("model_id") == "off"]


def test_the_report_needs_the_token_when_predictions_do(make_app):
    client = make_app(api_token=TOKEN, protect_predict=True).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = {"file": (io.BytesIO(models.identity()), "m.onnx"), "id": "p", "name": "Model", "version": "v1"}
    assert client.post("/models/upload", data=form, content_type="multipart/form-data", headers=auth).status_code == 201
    assert_error(client.get("/models/p/monitoring"), 401, "unauthorized", "")
    assert_error(client.get("/models/p/versions/v1/monitoring"), 401, "unauthorized", "")
    assert client.get("/models/p/monitoring", headers=auth).status_code == 200


def test_unknown_models_and_versions_have_no_report(client):
    assert_error(client.get("/models/ghost/monitoring"), 404, "model_not_found", "ghost")
    uploaded(client, models.identity(), "m")
    assert_error(client.get("/models/m/versions/v9/monitoring"), 404, "version_not_found", "v9")


# -- 12: a monitor that fails never fails a prediction ----------------------------------------------------


def test_a_failing_monitor_still_answers_and_counts_the_error(app, client, monkeypatch, iris_bytes):
    uploaded(client, iris_bytes, "boom", reference=npy_of(iris_reference(200)), filename="r.npy")
    monitor = monitor_of(app, "boom")

    def explode(entries):
        raise RuntimeError("monitoring exploded")

    monkeypatch.setattr(monitor, "_batch", explode)
    before = metric("model_monitoring_errors_total", model_id="boom", version="v1")
    for _ in range(3):
        body = predict(client, "boom", MU.tolist())
        assert body["model_id"] == "boom" and len(body["outputs"]["output_probability"]) == 1
    batch = client.post("/predict", json={"model_id": "boom", "features": [MU.tolist(), MU.tolist()]})
    assert batch.status_code == 200 and len(batch.get_json()["prediction"]) == 2
    counted(app)
    assert metric("model_monitoring_errors_total", model_id="boom", version="v1") == before + 4
    assert values(scrape(client), "model_monitoring_errors_total", model_id="boom", version="v1") == {(): before + 4}
    assert report(client, "boom")["windows"]["window"]["requests"] == 0  # nothing was counted
    monkeypatch.undo()
    predict(client, "boom", MU.tolist())
    assert report(client, "boom")["windows"]["window"]["requests"] == 1


def test_a_failing_monitor_also_spares_the_v2_protocol(app, client, monkeypatch):
    uploaded(client, models.identity(), "boom2")
    monkeypatch.setattr(monitor_of(app, "boom2"), "_batch", lambda entries: 1 / 0)
    before = metric("model_monitoring_errors_total", model_id="boom2", version="v1")
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = client.post("/v2/models/boom2/infer", json=body)
    assert response.status_code == 200, response.get_json()
    counted(app)
    assert metric("model_monitoring_errors_total", model_id="boom2", version="v1") == before + 1


# -- 13: wide inputs are summarized ---------------------------------------------------------------------


SUMMARY_NAMES = ["X:mean", "X:std", "X:min", "X:max", "X:zeros"]


def test_a_wide_input_is_watched_through_five_summaries(app, client, model_dir):
    wide = np.random.default_rng(20).normal(size=(150, 100))
    wide[:, :10] = 0.0
    uploaded(client, models.mlp(in_features=100), "wide", reference=npy_of(wide), filename="w.npy")
    found = report(client, "wide")
    assert found["reference"]["features"] == SUMMARY_NAMES
    document = json.loads((model_dir / "wide@v1.reference.json").read_text())
    summaries = np.stack([wide.mean(1), wide.std(1), wide.min(1), wide.max(1), (wide == 0).mean(1)], axis=1)
    expected = sketch.build(summaries, SUMMARY_NAMES)
    assert [f["name"] for f in document["features"]] == SUMMARY_NAMES
    assert [f["counts"] for f in document["features"]] == [list(s.counts) for s in expected]
    for stored, built in zip(document["features"], expected, strict=True):
        assert stored["kind"] == built.kind and stored["edges"] == pytest.approx(list(built.edges), rel=1e-12)
    rows = np.random.default_rng(21).normal(size=(30, 100)).astype(np.float32)
    for row in rows[:20]:
        predict(client, "wide", row.tolist())
    predict(client, "wide", rows[20:].tolist())
    found = report(client, "wide")
    assert found["windows"]["window"] == {"seconds": 3600, "requests": 21, "predictions": 30}
    assert found["drift"]["window"]["rows"] == 30 and found["drift"]["last_n"]["rows"] == 30
    assert [f["count"] for f in found["drift"]["window"]["features"]] == [30] * 5


def test_a_wide_input_takes_a_table_of_its_width_not_of_its_summaries(app, client, model_dir):
    response = send_upload(client, models.mlp(in_features=100), "wide",
                           reference=csv_of(GOOD_ROWS[:, :4].repeat(2, axis=1)[:, :5], SUMMARY_NAMES))
    assert_error(response, 400, "bad_input", "the model takes 100 value(s) per sample, the CSV header has 5 columns")
    nothing_kept(client, app, model_dir, "wide")
    header = [f"p{i}" for i in range(100)]
    uploaded(client, models.mlp(in_features=100), "wide", reference=csv_of(np.random.default_rng(22).normal(size=(120, 100)), header))
    assert report(client, "wide")["reference"]["features"] == SUMMARY_NAMES  # the header does not name summaries


# -- 14: the window's slots rotate, the last N do not -----------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """A clock for nexus.monitoring.live alone, moved by the test."""
    now = SimpleNamespace(value=1_000_000.5)
    monkeypatch.setattr(live, "time", SimpleNamespace(time=lambda: now.value))
    return now


def test_counts_older_than_the_window_drop_out_and_the_last_n_keep_them(make_app, clock):
    client = make_app(drift_window_s=60, drift_min_count=5).test_client()  # 60 slots of one second
    uploaded(client, models.identity(), "w", reference=npy_of(GOOD_ROWS), filename="r.npy")
    for row in GOOD_ROWS[:10]:
        predict(client, "w", row.tolist())
    clock.value += 30
    predict(client, "w", GOOD_ROWS[10:15].tolist())

    found = report(client, "w")
    assert found["windows"]["window"] == {"seconds": 60, "requests": 11, "predictions": 15}
    assert found["windows"]["last_n"]["predictions"] == 15 and found["drift"]["window"]["rows"] == 15
    assert found["output"]["count"] == 60

    clock.value += 30  # the first slot is now 60 s old: out of the window
    found = report(client, "w")
    assert found["windows"]["window"] == {"seconds": 60, "requests": 1, "predictions": 5}
    assert found["drift"]["window"]["rows"] == 5 and [f["count"] for f in found["drift"]["window"]["features"]] == [5] * 4
    assert found["windows"]["last_n"]["predictions"] == 15 and found["drift"]["last_n"]["rows"] == 15
    assert found["output"]["count"] == 20

    predict(client, "w", GOOD_ROWS[15].tolist())  # reuses the first slot: its old counts are cleared, not added to
    found = report(client, "w")
    assert found["windows"]["window"] == {"seconds": 60, "requests": 2, "predictions": 6}
    assert found["drift"]["window"]["rows"] == 6 and found["drift"]["last_n"]["rows"] == 16

    clock.value += 500
    found = report(client, "w")
    assert found["windows"]["window"] == {"seconds": 60, "requests": 0, "predictions": 0}
    assert found["drift"]["window"]["rows"] == 0 and set(verdicts(found["drift"]["window"])) == {"insufficient"}
    assert found["output"] == {"name": "Y", "count": 0, "mean": None, "std": None, "min": None, "max": None}
    assert found["windows"]["last_n"]["predictions"] == 16 and found["drift"]["last_n"]["rows"] == 16
    assert found["drift"]["last_n"]["status"] != "insufficient"
    # /metrics counts since start: the output sum counts every value ever seen
    assert values(scrape(client), "model_output_value_count", model_id="w", version="v1") == {(): 64.0}


# -- every worker of a server: counts files merged, reports from any worker ------------------------------


def test_reports_merge_the_counts_of_every_worker(app, client, iris_bytes):
    uploaded(client, iris_bytes, "mw", reference=npy_of(iris_reference(300)), filename="r.npy")
    rows = np.random.default_rng(23).normal(MU, 1.0, size=(60, 4)).astype(np.float32)
    for row in rows:
        predict(client, "mw", row.tolist())
    model = app.extensions["nexus"].registry.get("mw")
    mine = report(client, "mw")
    [own] = list(model.monitor.directory.glob("*.counts"))
    (model.monitor.directory / "999999.counts").write_bytes(own.read_bytes())  # a second worker that saw the same
    (model.monitor.directory / "888888.counts").write_bytes(b"not a counts file")  # and one that is not (yet) complete
    both = report(client, "mw")
    assert both["windows"]["window"] == {"seconds": 3600, "requests": 120, "predictions": 120}
    assert both["windows"]["last_n"]["predictions"] == 120 and both["drift"]["window"]["rows"] == 120
    assert both["confidence"]["count"] == 120 and both["confidence"]["counts"] == [2 * c for c in mine["confidence"]["counts"]]
    assert both["classes"] == {k: 2 * v for k, v in mine["classes"].items()}
    for b, m in zip(both["drift"]["window"]["features"], mine["drift"]["window"]["features"], strict=True):
        assert b["live"] == [2 * c for c in m["live"]]
    assert values(scrape(client), "model_prediction_confidence_count", model_id="mw", version="v1") == {(): 120.0}
    # A worker that has not predicted yet reports the same (the class labels come from the shared classes.json).
    other = live.Monitor(model.monitor.owner, model.key, (model.id, model.version), model.sha256, model.created_at, model.inputs, model.outputs, model.task)
    theirs = other.report()
    assert theirs["windows"] == both["windows"] and theirs["classes"] == both["classes"]
    assert theirs["confidence"] == both["confidence"] and theirs["drift"] == both["drift"]


def test_many_threads_count_every_prediction(app, iris_bytes):
    import threading

    client = app.test_client()
    uploaded(client, iris_bytes, "th", reference=npy_of(iris_reference(300)), filename="r.npy")
    rows = np.random.default_rng(24).normal(MU, 1.0, size=(50, 4)).astype(np.float32)
    failures = []

    def work():
        mine = app.test_client()
        for row in rows:
            if mine.post("/predict", json={"model_id": "th", "features": row.tolist()}).status_code != 200:
                failures.append(row)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    found = report(client, "th")
    assert found["windows"]["window"]["requests"] == 200 and found["drift"]["window"]["rows"] == 200
    assert found["confidence"]["count"] == 200 and sum(found["classes"].values()) == 200
    assert all(sum(f["live"]) == 200 for f in found["drift"]["window"]["features"])


def test_the_watched_output_is_read_even_when_the_client_asks_for_another(client, iris_bytes):
    uploaded(client, iris_bytes, "v2", reference=npy_of(iris_reference(300)), filename="r.npy")
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": MU.tolist() * 2}], "outputs": [{"name": "output_label"}]}
    response = client.post("/v2/models/v2/infer", json=body)
    assert response.status_code == 200 and [o["name"] for o in response.get_json()["outputs"]] == ["output_label"]
    found = report(client, "v2")
    assert found["confidence"]["count"] == 2 and found["windows"]["window"] == {"seconds": 3600, "requests": 1, "predictions": 2}


def test_a_sweep_removes_the_counts_of_versions_no_longer_stored(app, client):
    uploaded(client, models.identity(), "s", reference=npy_of(GOOD_ROWS), filename="r.npy")
    predict(client, "s", [1.0, 2.0, 3.0, 4.0])
    counted(app)
    monitoring = app.extensions["nexus"].registry.monitoring
    kept = monitor_of(app, "s").directory
    stale = [monitoring.directory / "gone@v1.0123456789ab", monitoring.directory / "s@v1.ffffffffffff"]  # deleted; an older upload
    for directory in stale:
        directory.mkdir()
        (directory / "1.counts").write_bytes(b"x")
    monitoring.sweep()
    assert kept.is_dir() and not any(d.exists() for d in stale)
    assert report(client, "s")["windows"]["window"]["requests"] == 1


def test_an_input_of_one_value_per_sample_is_one_feature(client):
    uploaded(client, models.identity(shape=(None, 1)), "one", reference=npy_of(GOOD_ROWS[:, 0]), filename="r.npy")
    assert report(client, "one")["reference"]["features"] == ["X"]
    predict(client, "one", [0.5])
    predict(client, "one", [[0.5], [1.5], [2.5]])
    found = report(client, "one")
    assert found["drift"]["window"]["rows"] == 4 and found["windows"]["window"]["requests"] == 2


# Server bugs: state that a reload, a stale file or one extreme value loses.


def test_one_huge_output_value_does_not_blank_the_windows_standard_deviation(client):
    from onnx import TensorProto

    uploaded(client, models.identity(TensorProto.DOUBLE), "huge")
    predict(client, "huge", [1e200, -1e200, 0.0, 0.0])  # finite float64 values whose squares overflow
    for row in GOOD_ROWS[:10]:
        predict(client, "huge", row.tolist())
    response = client.get("/models/huge/monitoring")
    output = strict_json(response)["versions"][0]["output"]
    # values beyond ±1e150 are left out of the summary (README: Monitoring), so their squares never overflow its sums
    assert output["count"] == 42 and -1e150 < output["min"] <= 0.0 <= output["max"] < 1e150
    assert output["std"] is not None and np.isfinite(output["std"]), output


def test_unloading_and_loading_a_version_keeps_its_counts(app, client, iris_bytes):
    uploaded(client, iris_bytes, "ul", reference=npy_of(iris_reference(300)), filename="r.npy")
    for row in iris_reference(10, seed=25):
        predict(client, "ul", row.tolist())
    assert report(client, "ul")["windows"]["window"]["requests"] == 10
    assert client.post("/v2/repository/models/ul/unload").status_code == 200
    assert client.post("/v2/repository/models/ul/load").status_code == 200
    assert report(client, "ul")["windows"]["window"]["requests"] == 10
    predict(client, "ul", MU.tolist())
    found = report(client, "ul")
    # got 1 and 1: the reloaded version's new Monitor re-creates this worker's <pid>.counts with O_TRUNC
    assert found["windows"]["window"]["requests"] == 11 and found["confidence"]["count"] == 11
    assert values(scrape(client), "model_prediction_confidence_count", model_id="ul", version="v1") == {(): 11.0}


def test_a_stored_reference_that_does_not_match_is_replaced_by_the_first_predictions(make_app, model_dir):
    client = make_app(reference_rows=100).test_client()
    uploaded(client, models.identity(), "st")
    stale = {"format": 1, "model_sha256": "0" * 64, "source": "upload", "rows": 100, "features": []}
    (model_dir / "st@v1.reference.json").write_text(json.dumps(stale))  # of other bytes (a copy, a hand edit, an older format)
    assert report(client, "st")["reference"]["collecting"] == {"rows": 0, "target": 100}
    for row in np.random.default_rng(26).normal(size=(100, 4)):
        predict(client, "st", row.tolist())
    # got: no reference ever; the 100 rows are collected, store.add_reference refuses to replace the file
    # that exists, the rows are thrown away and collecting starts again from 0, forever
    assert wait_for(lambda: report(client, "st")["reference"]["source"] == "predictions", 3.0), report(client, "st")["reference"]


# -- 19: a request only queues its prediction; the worker counts the queue in batches -----------------


def own_counts(monitor: live.Monitor) -> live._Counts:
    [path] = list(monitor.directory.glob("*.counts"))
    found = live._Counts.read(path, len(monitor.layout.features))
    assert found is not None
    return found


def test_the_flusher_counts_the_queue_without_a_report(app, client):
    uploaded(client, models.identity(), "q", reference=npy_of(GOOD_ROWS), filename="r.npy")
    predict(client, "q", [1.0, 2.0, 3.0, 4.0])
    predict(client, "q", GOOD_ROWS[:3].tolist())
    monitor = monitor_of(app, "q")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (monitor.directory.is_dir() and list(monitor.directory.glob("*.counts"))
                                               and own_counts(monitor).totals.sum(axis=0)[0] == 2):
        time.sleep(0.01)
    assert own_counts(monitor).totals.sum(axis=0).tolist() == [2, 4, 4]  # requests, predictions, predictions binned
    assert not monitor.owner.batcher.pending


def test_a_request_that_finds_flush_at_queued_counts_them_itself(app, client, monkeypatch):
    monkeypatch.setattr(app.extensions["nexus"].registry.monitoring.batcher, "wait_s", 60.0)  # the thread sleeps through the test
    uploaded(client, models.identity(), "qa", reference=npy_of(GOOD_ROWS), filename="r.npy")
    monitor = monitor_of(app, "qa")
    feeds = {"X": GOOD_ROWS[:1].astype(np.float32)}
    for n in range(1, live.FLUSH_AT):
        monitor.observe(feeds, None)
        assert len(monitor.owner.batcher.pending) == n
    assert not monitor.directory.exists()  # nothing counted yet
    monitor.observe(feeds, None)
    assert not monitor.owner.batcher.pending
    assert own_counts(monitor).totals.sum(axis=0).tolist() == [live.FLUSH_AT] * 3


def test_a_prediction_that_cannot_be_counted_is_left_out_and_the_rest_count(app, client):
    uploaded(client, models.identity(), "qb", reference=npy_of(GOOD_ROWS), filename="r.npy")
    monitor = monitor_of(app, "qb")
    before = metric("model_monitoring_errors_total", model_id="qb", version="v1")
    good = {"X": GOOD_ROWS[:2].astype(np.float32)}
    monitor.observe(good, None)
    monitor.observe({"unknown": np.zeros((1, 4), np.float32)}, None)  # no watched input in it: it cannot be counted
    monitor.observe(good, None)
    found = report(client, "qb")
    assert found["windows"]["window"] == {"seconds": 3600, "requests": 2, "predictions": 4}
    assert metric("model_monitoring_errors_total", model_id="qb", version="v1") == before + 1


def test_a_queue_spanning_slots_counts_each_prediction_in_its_own_slot(make_app, clock):
    app = make_app(drift_window_s=60, drift_min_count=1)  # 60 slots of one second
    client = app.test_client()
    uploaded(client, models.identity(), "qs", reference=npy_of(GOOD_ROWS), filename="r.npy")
    monitor = monitor_of(app, "qs")
    monitor.observe({"X": GOOD_ROWS[:3].astype(np.float32)}, None)
    clock.value += 61  # the first request is now older than the window
    monitor.observe({"X": GOOD_ROWS[3:4].astype(np.float32)}, None)
    found = report(client, "qs")  # one flush takes both
    assert found["windows"]["window"] == {"seconds": 60, "requests": 1, "predictions": 1}
    assert found["windows"]["last_n"]["predictions"] == 4


def test_deleting_a_version_counts_its_queue_before_removing_its_counts(app, client, model_dir):
    uploaded(client, models.identity(), "qd", reference=npy_of(GOOD_ROWS), filename="r.npy")
    predict(client, "qd", [1.0, 2.0, 3.0, 4.0])
    directory = monitor_of(app, "qd").directory
    assert client.delete("/models/qd").status_code == 200
    time.sleep(live.FLUSH_S * 3)  # the flusher's turn has passed: nothing of the version is written again
    assert not directory.exists() and not app.extensions["nexus"].registry.monitoring.batcher.pending


def test_a_worker_that_stops_counts_its_queue(app, client, monkeypatch):
    import nexus

    monkeypatch.setattr(app.extensions["nexus"].registry.monitoring.batcher, "wait_s", 60.0)  # the thread sleeps through the test
    monkeypatch.setattr(nexus, "_worker", app.extensions["nexus"])  # as start_worker leaves it in a gunicorn worker
    uploaded(client, models.identity(), "qw", reference=npy_of(GOOD_ROWS), filename="r.npy")
    predict(client, "qw", [1.0, 2.0, 3.0, 4.0])
    monitor = monitor_of(app, "qw")
    assert len(monitor.owner.batcher.pending) == 1 and not monitor.directory.exists()
    nexus.stop_worker(1)  # what gunicorn's worker_exit hook calls
    assert not monitor.owner.batcher.pending
    assert own_counts(monitor).totals.sum(axis=0).tolist() == [1, 1, 1]
