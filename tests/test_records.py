"""The pure pieces of prediction records and feedback (nexus/records): reading a feedback body, the
accuracy of one window, and the Database on a real SQLite file (schema, writes, labels, pruning)."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nexus.errors import BadInput, RecordsUnavailable
from nexus.ids import new_request_id, request_id_time, valid_request_id
from nexus.records import database
from nexus.records.database import SCHEMA_VERSION, Database, Label, SchemaTooNew, engine_url
from nexus.records.recorder import MAX_LABELS, MAX_TRUTH, Recorder, RecordSettings, _window, parse_labels

# -- parse_labels ----------------------------------------------------------------------------------


def test_labels_are_read_with_their_row_as_text_and_as_a_number():
    """A truth is a class (text) or a value (a number); which it must be is the predicting version's task, not parse_labels'."""
    body = [
        {"request_id": "abc", "truth": "setosa"},
        {"request_id": "abc/1", "truth": 2},
        {"truth": 0, "request_id": "A.b_c:d-9/123456789"},
        {"request_id": "x" * 128 + "/7", "truth": "-1"},
        {"request_id": "big", "truth": 10**30},
        {"request_id": "r", "truth": 1.5},
        {"request_id": "r/2", "truth": -3},
        {"request_id": "text-number", "truth": "1.5"},
    ]
    assert parse_labels(body) == [
        Label("abc", 0, "setosa", None),
        Label("abc", 1, "2", 2.0),
        Label("A.b_c:d-9", 123456789, "0", 0.0),
        Label("x" * 128, 7, "-1", None),  # text stays text, even when it reads as a number
        Label("big", 0, str(10**30), 1e30),
        Label("r", 0, repr(1.5), 1.5),
        Label("r", 2, "-3", -3.0),
        Label("text-number", 0, "1.5", None),
    ]
    assert all(isinstance(label.value, float) for label in parse_labels(body) if label.value is not None)


@pytest.mark.parametrize(("truth", "text", "value"), [
    (1.0, "1", 1.0),  # an integral number is the class it names, whether written 1 or 1.0
    (2.0, "2", 2.0),
    (-0.0, "0", 0.0),
    (-7.0, "-7", -7.0),
    (1e20, str(10**20), 1e20),
    (0.5, "0.5", 0.5),
    (-2.25, "-2.25", -2.25),
    (1e-300, repr(1e-300), 1e-300),
    (MAX_TRUTH, str(int(MAX_TRUTH)), MAX_TRUTH),  # the largest accepted, either sign
    (-MAX_TRUTH, str(int(-MAX_TRUTH)), -MAX_TRUTH),
    (10**100, str(10**100), 1e100),  # an integer just under 1e100 as a float
])
def test_numbers_become_class_text_and_keep_their_value(truth, text, value):
    [label] = parse_labels([{"request_id": "n", "truth": truth}])
    assert (label.truth, label.value) == (text, value)
    assert isinstance(label.value, float)


def test_exactly_the_maximum_number_of_labels_is_accepted():
    body = [{"request_id": f"id-{i}", "truth": i % 3} for i in range(MAX_LABELS)]
    assert len(parse_labels(body)) == MAX_LABELS


GOOD = {"request_id": "ok", "truth": 1}
NOT_A_TRUTH = "'truth' must be a class (a string or an integer) or a value (a number), not "
NOT_FINITE = f"'truth' must be a finite number of at most {MAX_TRUTH:g} in size"
NOT_A_CLASS = "'truth' as text must be a class of 1-256 characters"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"request_id": "ok", "truth": 1}, "must be a JSON array"),
        ("ok", "must be a JSON array"),
        (None, "must be a JSON array"),
        ([], "empty array"),
        ([GOOD] * (MAX_LABELS + 1), f"{MAX_LABELS + 1} labels in one call; send at most {MAX_LABELS}"),
        ([GOOD, "ok"], "item 1 must be an object"),
        ([[GOOD]], "item 0 must be an object"),
        ([{"request_id": "ok"}], "item 0 needs both 'request_id' and 'truth'"),
        ([{"truth": 1}], "item 0 needs both"),
        ([{}], "needs both"),
        ([{"request_id": "ok", "truth": 1, "model_id": "m"}], "unknown field(s) 'model_id'"),
        ([{"request_id": "ok", "truth": 1, "b": 1, "a": 2}], "'a', 'b'"),
        ([{"request_id": "a b", "truth": 1}], "item 0: 'request_id' must be a request id"),
        ([{"request_id": "", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "é", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "x" * 129, "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": 12, "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": None, "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/x", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/-1", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/+1", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/1/2", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/1.0", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/\u0663", "truth": 1}], "'request_id' must be a request id"),  # an Arabic-Indic 3
        ([{"request_id": "ok/1234567890", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "/1", "truth": 1}], "'request_id' must be a request id"),
        ([{"request_id": "ok/", "truth": 1}], "item 0: 'request_id' must be a request id"),  # an empty row is no row 0
        ([GOOD, {"request_id": "ok/", "truth": 1}], "item 1: 'request_id' must be a request id"),
        ([GOOD, {"request_id": "ok", "truth": True}], f"item 1: {NOT_A_TRUTH}true"),
        ([{"request_id": "ok", "truth": False}], f"item 0: {NOT_A_TRUTH}false"),
        ([{"request_id": "ok", "truth": None}], f"{NOT_A_TRUTH}null"),
        ([{"request_id": "ok", "truth": [1]}], f"{NOT_A_TRUTH}[1]"),
        ([{"request_id": "ok", "truth": [1.5]}], f"{NOT_A_TRUTH}[1.5]"),
        ([{"request_id": "ok", "truth": {"c": 1}}], f'{NOT_A_TRUTH}{{"c":1}}'),
        ([{"request_id": "ok", "truth": ""}], f"item 0: {NOT_A_CLASS}"),
        ([{"request_id": "ok", "truth": "x" * 257}], NOT_A_CLASS),
        ([{"request_id": "ok", "truth": math.nan}], f"item 0: {NOT_FINITE}"),
        ([{"request_id": "ok", "truth": math.inf}], NOT_FINITE),
        ([{"request_id": "ok", "truth": -math.inf}], NOT_FINITE),
        ([{"request_id": "ok", "truth": 1e101}], NOT_FINITE),
        ([{"request_id": "ok", "truth": -1e200}], NOT_FINITE),
        ([{"request_id": "ok", "truth": math.nextafter(MAX_TRUTH, math.inf)}], NOT_FINITE),
        ([{"request_id": "ok", "truth": 10**101}], NOT_FINITE),
        ([{"request_id": "ok", "truth": -(10**400)}], NOT_FINITE),
        ([GOOD, GOOD, {"request_id": "ok", "truth": 1e300}], f"item 2: {NOT_FINITE}"),
    ],
)
def test_bad_bodies_are_refused_with_what_is_wrong(body, words):
    with pytest.raises(BadInput) as caught:
        parse_labels(body)
    assert words in str(caught.value)


def test_a_class_of_256_characters_is_the_longest_accepted():
    assert parse_labels([{"request_id": "ok", "truth": "y" * 256}])[0].truth == "y" * 256
    assert parse_labels([{"request_id": "ok", "truth": "y"}])[0] == Label("ok", 0, "y", None)


# -- request ids ---------------------------------------------------------------------------------


def test_generated_request_ids_are_uuid7_with_their_time():
    before = time.time()
    made = [new_request_id() for _ in range(200)]
    after = time.time()
    assert len(set(made)) == 200
    for request_id in made:
        assert valid_request_id(request_id)
        assert len(request_id) == 36 and request_id[14] == "7" and request_id[19] in "89ab"
        at = request_id_time(request_id)
        assert before - 0.002 <= at <= after + 0.002
    assert made == sorted(made) or [request_id_time(r) for r in made] == sorted(request_id_time(r) for r in made)
    assert request_id_time("client-chosen-id") is None
    assert request_id_time("0" * 36) is None


# -- one window's numbers --------------------------------------------------------------------------


def test_classifier_window_precision_recall_and_confusion():
    cells = [("cat", "cat", 5, 0.0, 0.0), ("cat", "dog", 2, 0.0, 0.0), ("dog", "dog", 3, 0.0, 0.0),
             ("dog", "cat", 1, 0.0, 0.0), ("bird", "cat", 4, 0.0, 0.0), ("2", "10", 1, 0.0, 0.0)]
    found = _window("classifier", 3600, cells)
    assert found["seconds"] == 3600 and found["labels"] == 16 and found["correct"] == 8
    assert found["accuracy"] == pytest.approx(8 / 16)
    assert found["classes"] == {
        # numbers first, in numeric order (2 before 10), then the others by text
        "2": {"precision": None, "recall": 0.0, "support": 1, "predicted": 0},  # never predicted: precision has no denominator
        "10": {"precision": 0.0, "recall": None, "support": 0, "predicted": 1},  # never true: recall has no denominator
        "bird": {"precision": None, "recall": 0.0, "support": 4, "predicted": 0},
        "cat": {"precision": pytest.approx(5 / 10), "recall": pytest.approx(5 / 7), "support": 7, "predicted": 10},
        "dog": {"precision": pytest.approx(3 / 5), "recall": pytest.approx(3 / 4), "support": 4, "predicted": 5},
    }
    assert list(found["classes"]) == ["2", "10", "bird", "cat", "dog"]
    assert found["confusion"] == {"2": {"10": 1}, "bird": {"cat": 4}, "cat": {"cat": 5, "dog": 2}, "dog": {"cat": 1, "dog": 3}}
    assert list(found["confusion"]) == ["2", "bird", "cat", "dog"]


def test_classifier_window_sums_cells_of_the_same_pair():
    found = _window("classifier", None, [("1", "1", 2, 0.0, 0.0), ("1", "1", 3, 0.0, 0.0), ("1", "0", 5, 0.0, 0.0)])
    assert found["labels"] == 10 and found["correct"] == 5 and found["confusion"] == {"1": {"0": 5, "1": 5}}
    assert found["classes"]["1"] == {"precision": 1.0, "recall": 0.5, "support": 10, "predicted": 5}
    assert found["classes"]["0"] == {"precision": 0.0, "recall": None, "support": 0, "predicted": 5}


def test_empty_windows_have_nulls_not_zero_divisions():
    assert _window("classifier", 86400, []) == {"seconds": 86400, "labels": 0, "correct": 0, "accuracy": None,
                                               "classes": {}, "confusion": {}}
    assert _window("regressor", None, []) == {"seconds": None, "labels": 0, "mae": None, "rmse": None}


def test_regressor_window_mae_and_rmse():
    errors = [0.5, -1.5, 2.0, -0.25]
    cells = [("", "", 3, sum(abs(e) for e in errors[:3]), sum(e * e for e in errors[:3])), ("", "", 1, 0.25, 0.0625)]
    found = _window("regressor", 3600, cells)
    assert found["labels"] == 4
    assert found["mae"] == pytest.approx(sum(abs(e) for e in errors) / 4)
    assert found["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 4))
    assert set(found) == {"seconds", "labels", "mae", "rmse"}


# -- the Database on a SQLite file -----------------------------------------------------------------


@pytest.fixture
def db(tmp_path):
    found = Database(engine_url(None, tmp_path / "state"))
    yield found
    found.close()


def prediction(request_id: str, row: int = 0, model_id: str = "m", version: str = "v1", upload: str = "u1",
               created_at: float | None = None, predicted: str | None = "1", value: float | None = None) -> Any:
    """One prediction record as ``Database.write`` takes it: a tuple of ``RECORD_COLUMNS``."""
    record = {"model_id": model_id, "request_id": request_id, "row": row, "version": version, "upload": upload,
              "created_at": time.time() if created_at is None else created_at, "predicted": predicted, "value": value,
              "confidence": 0.9 if predicted is not None else None, "inputs": None}
    return tuple(record[column] for column in database.RECORD_COLUMNS)


def rows(path: Path, query: str, *args) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(query, args).fetchall()


def never_expired(_request_id: str) -> bool:
    return False


CURRENT = {"u1"}  # the uploads a model's versions are now (what registry.uploads answers)


def test_the_sqlite_file_is_made_in_the_state_directory(tmp_path, db):
    assert engine_url(None, tmp_path / "state") == f"sqlite:///{tmp_path / 'state' / 'records.db'}"
    assert engine_url("postgresql://u:p@h:5/d", tmp_path) == "postgresql+psycopg://u:p@h:5/d"
    assert engine_url("postgres://u:p@h:5/d", tmp_path) == "postgresql+psycopg://u:p@h:5/d"
    assert "secret" not in database.describe("postgresql+psycopg://u:secret@h:5/d")
    assert not (tmp_path / "state").exists()  # nothing until first use
    db.ensure()
    path = tmp_path / "state" / "records.db"
    assert path.is_file()
    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"nexus_schema", "nexus_predictions", "nexus_labels", "nexus_label_totals"} <= tables
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_the_schema_is_made_once_however_often_it_is_ensured(tmp_path, db):
    path = tmp_path / "state" / "records.db"
    db.ensure()
    db.write([prediction("kept")])
    db.ensure()
    again = Database(db.url)  # another worker, or a restart
    again.ensure()
    again.ensure()
    again.close()
    assert rows(path, "SELECT component, version FROM nexus_schema") == [("records", SCHEMA_VERSION)]
    assert rows(path, "SELECT request_id FROM nexus_predictions") == [("kept",)]


def test_a_schema_from_a_newer_release_is_refused(tmp_path, db):
    db.ensure()
    path = tmp_path / "state" / "records.db"
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE nexus_schema SET version = ? WHERE component = 'records'", (SCHEMA_VERSION + 1,))
    newer = Database(db.url)
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1}, newer than this server's {SCHEMA_VERSION}"):
        newer.ensure()
    with pytest.raises(SchemaTooNew):
        newer.write([prediction("refused")])
    newer.close()
    assert rows(path, "SELECT count(*) FROM nexus_predictions") == [(0,)]
    # The recorder answers for it as unavailable (a 503), never as an internal error.
    recorder = Recorder(Database(db.url), RecordSettings())
    with pytest.raises(RecordsUnavailable, match="newer than this server's"):
        recorder.label("m", [Label("a", 0, "1", None)], CURRENT)
    with pytest.raises(RecordsUnavailable):
        recorder.performance("m", "v1", "u1", "classifier")
    recorder.db.close()


def test_a_reused_request_id_keeps_its_first_record(tmp_path, db):
    db.write([prediction("same", predicted="0"), prediction("same", row=1, predicted="2")])
    db.write([prediction("same", predicted="1", version="v2"), prediction("other", predicted="1")])
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT request_id, row, version, predicted FROM nexus_predictions ORDER BY request_id, row") == [
        ("other", 0, "v1", "1"), ("same", 0, "v1", "0"), ("same", 1, "v1", "2")]
    # The same id for another model is another prediction.
    db.write([prediction("same", model_id="n", predicted="5")])
    assert rows(path, "SELECT predicted FROM nexus_predictions WHERE model_id = 'n'") == [("5",)]


def test_labels_are_joined_judged_and_totalled(tmp_path, db):
    db.write([prediction("a", predicted="1"), prediction("a", row=1, predicted="2"), prediction("b", predicted="0"),
              prediction("r", predicted=None, value=2.5, model_id="reg")])
    now = time.time()
    # As parse_labels gives them: text truths, and numbers (an integer 0 is the class "0", and the value 0.0).
    given = [Label("a", 0, "1", None), Label("a", 1, "1", 1.0), Label("a", 0, "2", None), Label("nope", 0, "1", None),
             Label("a", 5, "1", None), Label("b", 0, "0", 0.0)]
    found = db.label("m", given, now, now - 3600, never_expired, CURRENT)
    assert [o.outcome for o in found] == ["matched", "matched", "duplicate", "unknown", "unknown", "matched"]
    assert (found[0].correct, found[1].correct, found[5].correct) == (True, False, True)
    assert (found[0].predicted, found[1].predicted) == ("1", "2")
    assert found[2].version == "v1" and found[3].version is None
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT request_id, row, truth, predicted, correct, labeled_at, labeled_hour FROM nexus_labels ORDER BY request_id, row") == [
        ("a", 0, "1", "1", 1, now, int(now // 3600)), ("a", 1, "1", "2", 0, now, int(now // 3600)),
        ("b", 0, "0", "0", 1, now, int(now // 3600))]
    assert rows(path, "SELECT truth, predicted, labels FROM nexus_label_totals WHERE model_id = 'm' ORDER BY truth, predicted") == [
        ("0", "0", 1), ("1", "1", 1), ("1", "2", 1)]
    # A regressor's label: its error, predicted - truth.
    [outcome] = db.label("reg", [Label("r", 0, "2", 2.0)], now, now - 3600, never_expired, CURRENT)
    assert outcome.outcome == "matched" and outcome.predicted == 2.5 and outcome.error == pytest.approx(0.5)
    assert outcome.correct is None
    assert rows(path, "SELECT labels, abs_error, squared_error FROM nexus_label_totals WHERE model_id = 'reg'") == [(1, 0.5, 0.25)]
    assert db.cells("reg", "v1", "u1", None) == [("", "", 1, 0.5, 0.25)]
    assert rows(path, "SELECT truth, predicted, correct, error FROM nexus_labels WHERE model_id = 'reg'") == [("2", None, None, 0.5)]


def snapshot(path: Path) -> dict[str, list[tuple]]:
    return {table: sorted(rows(path, f"SELECT * FROM {table}"), key=repr)
            for table in ("nexus_predictions", "nexus_labels", "nexus_label_totals")}


def test_a_truth_is_judged_by_the_task_of_the_version_that_predicted(tmp_path, db):
    """One model, v1 a classifier (upload u1) and v2 a regressor (u2): each label is judged by its prediction's version."""
    db.write([prediction("c", row=i, predicted="1") for i in range(4)]
             + [prediction("r", row=i, version="v2", upload="u2", predicted=None, value=2.5) for i in range(2)])
    now = time.time()
    both = {"u1", "u2"}
    found = db.label("m", [Label("c", 0, "1", 1.0),  # 1 or 1.0: the class "1"
                           Label("c", 1, "1", None),  # "1": the same class
                           Label("c", 2, "0.5", 0.5),  # a number that is no class the model has: wrong, not refused
                           Label("r", 0, "3", 3.0)], now, 0, never_expired, both)
    assert [(o.outcome, o.version, o.predicted, o.correct, o.error) for o in found] == [
        ("matched", "v1", "1", True, None), ("matched", "v1", "1", True, None), ("matched", "v1", "1", False, None),
        ("matched", "v2", 2.5, None, -0.5)]
    path = tmp_path / "state" / "records.db"
    before = snapshot(path)
    # Text for a regressor's prediction: the whole call is refused, its good labels included.
    with pytest.raises(BadInput) as caught:
        db.label("m", [Label("c", 3, "1", None), Label("unseen", 0, "x", None), Label("r", 1, "2.5", None)], now, 0,
                 never_expired, both)
    assert str(caught.value) == "item 2: 'r' was predicted by version 'v2', a regressor: 'truth' must be a number, not text"
    assert snapshot(path) == before
    # The same labels, the regressor's as a number: stored (text for an id no version predicted is just unknown).
    found = db.label("m", [Label("c", 3, "1", None), Label("unseen", 0, "x", None), Label("r", 1, "2.5", 2.5)], now, 0,
                     never_expired, both)
    assert [(o.outcome, o.error) for o in found] == [("matched", None), ("unknown", None), ("matched", 0.0)]
    assert db.cells("m", "v2", "u2", None) == [("", "", 2, 0.5, 0.25)]


def test_a_regressor_error_beyond_max_error_is_matched_but_not_compared(tmp_path, db):
    db.write([prediction("huge", predicted=None, value=1e100), prediction("edge", predicted=None, value=0.0)])
    now = time.time()
    found = db.label("m", [Label("huge", 0, "x", -1e100), Label("edge", 0, "x", -database.MAX_ERROR)], now, 0, never_expired,
                     CURRENT)
    assert [(o.outcome, o.predicted, o.correct, o.error) for o in found] == [
        ("matched", 1e100, None, None),  # 2e100 off: beyond what is compared
        ("matched", 0.0, None, database.MAX_ERROR)]  # exactly the limit: compared
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT request_id, error FROM nexus_labels ORDER BY request_id") == [
        ("edge", database.MAX_ERROR), ("huge", None)]
    for since in (None, now - 10):  # every sum stays finite
        [(_, _, _, abs_error, squared_error)] = db.cells("m", "v1", "u1", since)
        assert (abs_error, squared_error) == (database.MAX_ERROR, database.MAX_ERROR ** 2)
        assert math.isfinite(squared_error)


def test_a_label_that_is_not_compared_is_counted_in_no_metric(db):
    db.write([prediction("huge", predicted=None, value=1e100), prediction("near", predicted=None, value=3.0)])
    now = time.time()
    db.label("m", [Label("huge", 0, "x", -1e100), Label("near", 0, "2", 2.0)], now, 0, never_expired, CURRENT)
    for since in (None, now - 10):
        window = _window("regressor", since, db.cells("m", "v1", "u1", since))
        assert (window["mae"], window["rmse"]) == (1.0, 1.0)  # the one label compared was off by 1


def test_labels_only_meet_predictions_of_the_current_uploads(tmp_path, db):
    """A version deleted and uploaded again is another upload: its old predictions (left until the retention) are unknown."""
    db.write([prediction("old", upload="u0"), prediction("new", upload="u1"), prediction("both", upload="u0")])
    db.write([prediction("both", row=1, upload="u1")])
    now = time.time()
    found = db.label("m", [Label("old", 0, "1", None), Label("new", 0, "1", None), Label("both", 0, "1", None),
                           Label("both", 1, "1", None)], now, 0, never_expired, CURRENT)
    assert [(o.outcome, o.version) for o in found] == [("unknown", None), ("matched", "v1"), ("unknown", None), ("matched", "v1")]
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT request_id, row, upload FROM nexus_labels ORDER BY request_id, row") == [("both", 1, "u1"), ("new", 0, "u1")]
    assert db.cells("m", "v1", "u0", None) == []
    # A model with no current upload (say its versions are all being deleted) matches nothing.
    assert [o.outcome for o in db.label("m", [Label("old", 0, "1", None)], now, 0, never_expired, set())] == ["unknown"]


def test_expired_labels_by_prediction_time_or_by_the_id(db):
    now = time.time()
    db.write([prediction("old", created_at=now - 7200), prediction("new", created_at=now - 60)])
    old_ids = {"made-long-ago"}
    found = db.label("m", [Label("old", 0, "1", None), Label("new", 0, "1", None), Label("made-long-ago", 0, "1", None),
                           Label("never", 0, "1", None)], now, now - 3600, lambda request_id: request_id in old_ids, CURRENT)
    assert [(o.outcome, o.version) for o in found] == [("expired", "v1"), ("matched", "v1"), ("expired", None), ("unknown", None)]
    assert db.cells("m", "v1", "u1", None) == [("1", "1", 1, 0.0, 0.0)]  # only the matched one


def test_two_workers_labeling_the_same_ids_at_once_count_each_once(tmp_path, db):
    ids = [f"id-{i}" for i in range(300)]
    db.write([prediction(request_id, predicted=str(i % 3)) for i, request_id in enumerate(ids)])
    workers = [Database(db.url), Database(db.url), db, db]  # two other processes' databases, and two threads of this one
    given = [Label(request_id, 0, str(i % 2), None) for i, request_id in enumerate(ids)]
    barrier = threading.Barrier(len(workers))
    results: list = [None] * len(workers)
    errors: list = []

    def run(index):
        try:
            barrier.wait()
            now = time.time()
            results[index] = workers[index].label("m", given, now, now - 3600, never_expired, CURRENT)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for index, request_id in enumerate(ids):
        outcomes = sorted(result[index].outcome for result in results)
        assert outcomes == ["duplicate"] * (len(workers) - 1) + ["matched"], (request_id, outcomes)
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT count(*) FROM nexus_labels") == [(300,)]
    assert rows(path, "SELECT sum(labels) FROM nexus_label_totals") == [(300,)]
    expected_correct = sum(1 for i in range(300) if str(i % 3) == str(i % 2))
    cells = db.cells("m", "v1", "u1", None)
    assert sum(n for _, _, n, _, _ in cells) == 300
    assert sum(n for truth, predicted, n, _, _ in cells if truth == predicted) == expected_correct
    for worker in workers[:2]:
        worker.close()


def test_prune_deletes_old_predictions_and_labels_but_keeps_totals(tmp_path, db):
    now = time.time()
    db.write([prediction("old", created_at=now - 5000), prediction("fresh", created_at=now - 10)])
    db.label("m", [Label("old", 0, "1", None)], now - 4000, now - 10_000, never_expired, CURRENT)  # labeled long ago
    db.label("m", [Label("fresh", 0, "0", None)], now, now - 10_000, never_expired, CURRENT)
    assert db.prune(now - 3600) == (1, 1)
    path = tmp_path / "state" / "records.db"
    assert rows(path, "SELECT request_id FROM nexus_predictions") == [("fresh",)]
    assert rows(path, "SELECT request_id FROM nexus_labels") == [("fresh",)]
    assert sorted(db.cells("m", "v1", "u1", None)) == [("0", "1", 1, 0.0, 0.0), ("1", "1", 1, 0.0, 0.0)]  # since upload: both
    assert db.cells("m", "v1", "u1", now - 3600) == [("0", "1", 1, 0.0, 0.0)]
    assert db.prune(now - 3600) == (0, 0)  # twice is harmless


def test_windows_and_the_timeline_read_one_upload_by_label_time(db):
    now = time.time()
    db.write([prediction(f"p{i}", predicted="1") for i in range(6)])
    db.write([prediction("other-upload", predicted="1", upload="u2")])
    hour = 3600
    both = {"u1", "u2"}  # say v1 and v2, each its own upload
    db.label("m", [Label("p0", 0, "1", None), Label("p1", 0, "0", None)], now - 3 * hour, 0, never_expired, both)
    db.label("m", [Label("p2", 0, "1", None)], now - 2 * hour, 0, never_expired, both)
    db.label("m", [Label("p3", 0, "1", None), Label("p4", 0, "1", None), Label("p5", 0, "2", None)], now, 0, never_expired, both)
    db.label("m", [Label("other-upload", 0, "0", None)], now, 0, never_expired, both)
    assert db.timeline("m", "v1", "u1", now - 10 * hour) == [
        (int((now - 3 * hour) // hour), 2, 1, 0.0), (int((now - 2 * hour) // hour), 1, 1, 0.0), (int(now // hour), 3, 2, 0.0)]
    assert db.timeline("m", "v1", "u1", now - 2.5 * hour)[0][0] == int((now - 2 * hour) // hour)
    assert sum(n for *_, n, _, _ in db.cells("m", "v1", "u1", now - hour)) == 3
    assert sum(n for *_, n, _, _ in db.cells("m", "v1", "u1", None)) == 6
    assert db.cells("m", "v1", "u2", None) == [("0", "1", 1, 0.0, 0.0)]


def test_forget_deletes_the_records_of_some_uploads_of_a_model(tmp_path, db):
    now = time.time()
    db.write([prediction("a", version="v1", upload="u1"), prediction("b", version="v2", upload="u2"),
              prediction("c", model_id="keep", upload="u1")])  # another model's upload of the same name: not the same
    for model_id, request_id in (("m", "a"), ("m", "b"), ("keep", "c")):
        db.label(model_id, [Label(request_id, 0, "1", None)], now, 0, never_expired, {"u1", "u2"})
    path = tmp_path / "state" / "records.db"

    def count(table, model_id, upload=None):
        query = f"SELECT count(*) FROM {table} WHERE model_id = ?" + (" AND upload = ?" if upload else "")
        return rows(path, query, *([model_id, upload] if upload else [model_id]))[0][0]

    tables = ("nexus_predictions", "nexus_labels", "nexus_label_totals")
    db.forget("m", set())
    assert [count(t, "m") for t in tables] == [2, 2, 2]
    db.forget("m", {"u1", "gone-already"})
    assert [count(t, "m", "u1") for t in tables] == [0, 0, 0]
    assert [count(t, "m", "u2") for t in tables] == [1, 1, 1]
    assert [count(t, "keep", "u1") for t in tables] == [1, 1, 1]
    db.forget("m", {"u2"})
    assert [count(t, "m") for t in tables] == [0, 0, 0]
    assert [count(t, "keep") for t in tables] == [1, 1, 1]


def test_many_labels_are_looked_up_in_chunks(db):
    ids = [f"k{i}" for i in range(database._CHUNK * 2 + 17)]
    db.write([prediction(request_id, predicted="1") for request_id in ids])
    now = time.time()
    given = [Label(request_id, 0, "1", None) for request_id in ids] + [Label(ids[-1], 0, "1", None)]
    found = db.label("m", given, now, 0, never_expired, CURRENT)
    assert [o.outcome for o in found] == ["matched"] * len(ids) + ["duplicate"]
    assert db.cells("m", "v1", "u1", None) == [("1", "1", len(ids), 0.0, 0.0)]


# -- the recorder without its API --------------------------------------------------------------------


def test_the_recorder_writes_what_it_observed_and_counts_it(tmp_path):
    import numpy as np

    written, dropped = [], []
    recorder = Recorder(Database(engine_url(None, tmp_path)), RecordSettings(inputs=True, queue=100),
                        dropped=dropped.append, written=written.append)
    zipmap = [{0: 0.2, 1: 0.7, 2: 0.1}, {0: 0.6, 1: 0.3, 2: 0.1}]
    feeds = {"x": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)}
    recorder.observe("c1", "m", "v1", "u1", "classifier", zipmap, feeds)
    recorder.observe("r1", "reg", "v1", "u9", "regressor", np.array([[1.5, 9.0], [np.nan, 1.0], [-2.0, 0.0]], np.float32),
                     {"x": np.zeros((3, 2), np.float32)})
    recorder.observe("n1", "none", "v1", "u3", None, None, {"s": np.array(["a"], dtype=object)})
    recorder.flush()
    assert sum(written) == 6 and not dropped
    got = rows(tmp_path / "records.db", "SELECT model_id, request_id, row, predicted, value, confidence, inputs "
                                        "FROM nexus_predictions ORDER BY model_id, request_id, row")
    assert got == [
        ("m", "c1", 0, "1", None, pytest.approx(0.7), '{"x":[1.0,2.0]}'),
        ("m", "c1", 1, "0", None, pytest.approx(0.6), '{"x":[3.0,4.0]}'),
        ("none", "n1", 0, None, None, None, '{"s":"a"}'),
        ("reg", "r1", 0, None, 1.5, None, '{"x":[0.0,0.0]}'),
        ("reg", "r1", 1, None, None, None, '{"x":[0.0,0.0]}'),  # NaN is no value
        ("reg", "r1", 2, None, -2.0, None, '{"x":[0.0,0.0]}'),
    ]
    assert recorder.status() == "ok"
    recorder.db.close()


def test_the_recorder_drops_and_says_so_when_its_database_is_unreachable(tmp_path):
    dropped = []
    blocked = tmp_path / "records.db"
    blocked.mkdir()  # SQLite cannot open a directory as its file
    recorder = Recorder(Database(engine_url(None, tmp_path)), RecordSettings(queue=3), dropped=dropped.append)
    recorder.batcher.wait_s = 60  # only flush() below writes
    for i in range(5):
        recorder.observe(f"id{i}", "m", "v1", "u1", "classifier", [{"a": 1.0, "b": 0.0}], {})
    assert sum(dropped) == 2 and recorder.dropped == 2  # the queue holds 3
    recorder.flush()  # fails: what could not be written is dropped
    assert recorder.dropped == 5 and sum(dropped) == 5
    status = recorder.status()
    assert status.startswith("database unavailable since ") and "unable to open database file" in status
    assert status.endswith("; 5 records dropped")
    with pytest.raises(RecordsUnavailable, match="unable to open database file"):
        recorder.label("m", [Label("id0", 0, "a", None)], CURRENT)
    blocked.rmdir()
    recorder.observe("back", "m", "v1", "u1", "classifier", [{"a": 1.0, "b": 0.0}], {})
    recorder.flush()
    assert recorder.status() == "ok; 5 records dropped since start"
    assert rows(blocked, "SELECT request_id, predicted FROM nexus_predictions") == [("back", "a")]
    recorder.db.close()


def test_dropped_records_are_counted_per_row_like_written_ones(tmp_path):
    import numpy as np

    dropped = []
    blocked = tmp_path / "records.db"
    blocked.mkdir()  # the database cannot be opened: whatever is queued is dropped in the end
    recorder = Recorder(Database(engine_url(None, tmp_path)), RecordSettings(queue=1), dropped=dropped.append)
    recorder.batcher.wait_s = 60  # only flush() below writes
    three = [{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.8}, {"a": 0.5, "b": 0.5}]
    recorder.observe("kept", "m", "v1", "u1", "classifier", three, {})  # queued
    recorder.observe("over", "m", "v1", "u1", "classifier", three, {})  # past the queue: 3 rows dropped
    assert dropped == [3] and recorder.dropped == 3
    recorder.observe("reg", "r", "v1", "u1", "regressor", np.zeros((2, 1), np.float32), {})  # 2 rows
    recorder.observe("none", "n", "v1", "u1", None, None, {})  # no output: 1 row, like the record it would have been
    assert dropped == [3, 2, 1] and recorder.dropped == 6
    recorder.flush()  # fails: the 3 rows queued are dropped
    assert sum(dropped) == recorder.dropped == 9
    assert recorder.status().endswith("; 9 records dropped")
    blocked.rmdir()
    recorder.db.close()


def test_forget_deletes_now_and_again_a_little_later(tmp_path, monkeypatch):
    """Another worker may write what it had queued of a deleted upload just after the delete: the second pass takes it."""
    from nexus.records import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "FORGET_AGAIN_S", 0.5)
    recorder = Recorder(Database(engine_url(None, tmp_path)), RecordSettings())
    recorder.batcher.wait_s = 60
    recorder.observe("queued", "m", "v1", "gone", "classifier", [{"a": 1.0, "b": 0.0}], {})  # written by forget's flush
    recorder.db.write([prediction("written", upload="gone"), prediction("other", upload="kept")])
    recorder.forget("m", {"gone"})
    path = tmp_path / "records.db"
    assert rows(path, "SELECT request_id FROM nexus_predictions ORDER BY request_id") == [("other",)]
    recorder.db.write([prediction("late", upload="gone")])  # a late writer
    assert rows(path, "SELECT count(*) FROM nexus_predictions WHERE upload = 'gone'") == [(1,)]
    deadline = time.monotonic() + 5
    while rows(path, "SELECT count(*) FROM nexus_predictions WHERE upload = 'gone'") != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows(path, "SELECT request_id FROM nexus_predictions ORDER BY request_id") == [("other",)]
    recorder.db.close()

