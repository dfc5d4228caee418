"""POST /models/upload: the happy path and every refusal, each leaving the directory as it was."""

from __future__ import annotations

import errno
import hashlib
import io
import os

import pytest
from onnx import TensorProto, helper

from tests import models
from tests.conftest import TOKEN, assert_error, files_in, with_serving, upload


def test_upload_returns_201_with_model_and_tensor_info(client, model_dir, iris_bytes):
    response = upload(client, iris_bytes, "iris", name="Iris", version="v1.0.0")
    assert response.status_code == 201
    assert response.headers["Location"] == "/models/iris/versions/v1.0.0"
    body = response.get_json()
    assert body["model"] == {"id": "iris", "name": "Iris", "version": "v1.0.0", "path": "models/iris@v1.0.0.onnx"}
    assert body["info"]["inputs"] == [{"name": "input", "dtype": 1, "shape": [-1, 4], "type": "tensor(float)"}]
    assert body["info"]["outputs"] == [
        {"name": "output_label", "dtype": 7, "shape": [-1], "type": "tensor(int64)"},
        {"name": "output_probability", "dtype": 0, "shape": [], "type": "seq(map(int64,tensor(float)))"},
    ]
    assert files_in(model_dir) == with_serving(["iris.routing.json", "iris@v1.0.0.model_info.json", "iris@v1.0.0.onnx"])
    assert (model_dir / "iris@v1.0.0.onnx").read_bytes() == iris_bytes


def test_sidecar_holds_the_metadata(client, model_dir):
    import json

    data = models.identity()
    upload(client, data, "m", name="N", version="7")
    sidecar = json.loads((model_dir / "m@7.model_info.json").read_text())
    assert sidecar["id"] == "m" and sidecar["name"] == "N" and sidecar["version"] == "7" and sidecar["sequence"] == 1
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest() and sidecar["size_bytes"] == len(data)
    assert sidecar["created_at"].endswith("Z") and sidecar["inputs"][0]["name"] == "X"


@pytest.mark.parametrize(
    ("dtype", "number", "type_name"),
    [(1, 1, "tensor(float)"), (11, 11, "tensor(double)"), (7, 7, "tensor(int64)"), (8, 8, "tensor(string)"),
     (9, 9, "tensor(bool)"), (10, 10, "tensor(float16)"), (2, 2, "tensor(uint8)")],
)
def test_tensor_info_reports_onnx_type_numbers(client, dtype, number, type_name):
    body = upload(client, models.identity(dtype, shape=("batch", 3)), "t").get_json()
    assert body["info"]["inputs"][0] == {"name": "X", "dtype": number, "shape": [-1, 3], "type": type_name}


MISSING = [
    ({"id": "m", "name": "n", "version": "v"}, "field 'file' is missing"),
    ({"file": True, "name": "n", "version": "v"}, "field 'id' is missing"),
    ({"file": True, "id": "m", "version": "v"}, "field 'name' is missing"),
    ({"file": True, "id": "m", "name": "n"}, "field 'version' is missing"),
    ({"file": True, "id": "m", "name": "", "version": "v"}, "field 'name' must be a non-empty string"),
    ({"file": True, "id": "m", "name": "  ", "version": "v"}, "field 'name' must be a non-empty string"),
    ({"file": True, "id": "m", "name": "n", "version": ""}, "field 'version' must be a non-empty string"),
    ({"file": True, "id": "m", "name": "n" * 201, "version": "v"}, "the limit is 200"),
    ({"file": True, "id": "m", "name": "n", "version": "v" * 65}, "the limit is 64"),
]


@pytest.mark.parametrize(("fields", "words"), MISSING)
def test_missing_or_bad_fields_get_400_and_leave_nothing(client, model_dir, fields, words):
    data = dict(fields)
    if data.pop("file", False):
        data["file"] = (io.BytesIO(models.identity()), "m.onnx")
    response = client.post("/models/upload", data=data, content_type="multipart/form-data")
    assert_error(response, 400, "bad_input", words)
    assert files_in(model_dir) == with_serving([])


@pytest.mark.parametrize(
    ("bad_id", "words"),
    [
        ("", "field 'id' must be a non-empty string"),
        (".hidden", "invalid model id '.hidden'"),
        ("../escape", "invalid model id '../escape'"),
        ("a/b", "invalid model id 'a/b'"),
        ("a b", "invalid model id 'a b'"),
        ("x" * 65, "the limit is 64"),
        ("ünï", "invalid model id 'ünï'"),
        ("a\\b", "invalid model id"),
        ("%2e%2e", "invalid model id '%2e%2e'"),
    ],
)
def test_invalid_ids_get_400_and_leave_nothing(client, model_dir, bad_id, words):
    response = upload(client, models.identity(), bad_id)
    body = assert_error(response, 400, "bad_input", words)
    if bad_id:
        assert "1-64 characters of A-Z a-z 0-9 . _ -" in body["error"] or "limit" in body["error"]
    assert files_in(model_dir) == with_serving([])
    assert not any(model_dir.parent.glob("escape*"))


@pytest.mark.parametrize("reserved", ["info", "upload"])
def test_an_id_naming_a_route_under_models_gets_400_and_changes_nothing(client, model_dir, upload_model,
                                                                        reserved):
    upload_model(models.identity(), "kept")
    before = files_in(model_dir)
    response = upload(client, models.identity(), reserved)
    words = f"id '{reserved}' is reserved: it names the route /models/{reserved}"
    assert_error(response, 400, "bad_input", words)
    assert files_in(model_dir) == before
    assert [m["id"] for m in client.get("/models").get_json()["models"]] == ["kept"]


@pytest.mark.parametrize("good_id", ["iris", "a.b-c_1", "x" * 64, "information", "Info", "upload-2"])
def test_valid_ids_are_accepted_as_given(client, model_dir, good_id):
    response = upload(client, models.identity(), good_id)
    assert response.status_code == 201 and response.get_json()["model"]["id"] == good_id
    assert files_in(model_dir) == with_serving([f"{good_id}.routing.json", f"{good_id}@v1.model_info.json", f"{good_id}@v1.onnx"])


def test_empty_file_is_refused(client, model_dir):
    assert_error(upload(client, b"", "m"), 400, "bad_input", "empty")
    assert files_in(model_dir) == with_serving([])


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"this is not a model at all", "file is not"), (b"\x08\x07" + b"\xff" * 40, "file is not"), (None, "file is not an ONNX model")],
)
def test_files_that_are_not_models_get_400_invalid_model(client, model_dir, data, words):
    if data is None:
        data = models.linear()[0][:-20]  # a real model cut short
    response = upload(client, data, "m")
    assert_error(response, 400, "invalid_model", words)
    assert "Traceback" not in response.get_json()["error"] and ".cc:" not in response.get_json()["error"]
    assert files_in(model_dir) == with_serving([])


def test_a_model_onnxruntime_cannot_load_is_refused_with_its_reason(client, model_dir):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["X"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    response = upload(client, data, "weird")
    assert_error(response, 400, "invalid_model", "NoSuchOp")
    assert files_in(model_dir) == with_serving([])


def test_external_data_models_are_refused(client, model_dir, iris_bytes):
    upload(client, iris_bytes, "iris")
    before = files_in(model_dir)
    assert_error(upload(client, models.external_data(), "sneaky"), 400, "invalid_model", "external data")
    assert files_in(model_dir) == before


def test_same_id_and_version_twice_returns_409_and_keeps_first(client, model_dir):
    first, weights, bias = models.linear(seed=1)
    assert upload(client, first, "m", name="First", version="1").status_code == 201
    sidecar = (model_dir / "m@1.model_info.json").read_bytes()
    routing = (model_dir / "m.routing.json").read_bytes()
    assert_error(upload(client, models.linear(seed=2)[0], "m", name="Second", version="1"), 409, "version_exists",
                 "model 'm' already has version '1', and versions never change")
    assert files_in(model_dir) == with_serving(["m.routing.json", "m@1.model_info.json", "m@1.onnx"])
    assert (model_dir / "m@1.onnx").read_bytes() == first and (model_dir / "m@1.model_info.json").read_bytes() == sidecar
    assert (model_dir / "m.routing.json").read_bytes() == routing
    prediction = client.post("/predict", json={"model_id": "m", "features": [1, 0, 0, 0]}).get_json()["prediction"]
    assert prediction == pytest.approx((weights[0] + bias).tolist(), abs=1e-5)
    assert client.get("/models/m").get_json()["name"] == "First"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"json": {"id": "m"}}, "not 'application/json'"), ({"data": b"raw", "content_type": "application/octet-stream"}, "multipart/form-data"),
     ({"data": b"id=m&name=n", "content_type": "application/x-www-form-urlencoded"}, "multipart/form-data")],
)
def test_a_body_that_is_not_multipart_gets_415(client, model_dir, kwargs, words):
    response = client.post("/models/upload", **kwargs)
    assert_error(response, 415, "unsupported_media_type", words)
    assert files_in(model_dir) == with_serving([])


def test_upload_over_the_limit_gets_413_and_is_not_kept(make_app, model_dir):
    client = make_app(max_upload_mb=0.01).test_client()
    data = models.linear(in_features=64, out_features=80)[0]
    assert len(data) > 20 * 1024
    response = upload(client, data, "big")
    assert_error(response, 413, "too_large", "over the limit of 0.01 MB")
    assert files_in(model_dir) == with_serving([])
    assert client.get("/models").get_json()["count"] == 0


def test_upload_under_the_limit_is_accepted(make_app, model_dir):
    client = make_app(max_upload_mb=0.01).test_client()
    assert upload(client, models.identity(), "small").status_code == 201


@pytest.mark.parametrize(("header", "status"), [(None, 401), ("Bearer wrong", 401), ("Basic " + TOKEN, 401), (f"Bearer {TOKEN}", 201)])
def test_token_is_required_for_upload_when_set(make_app, model_dir, header, status):
    client = make_app(api_token=TOKEN).test_client()
    response = upload(client, models.identity(), "m", headers={"Authorization": header} if header else {})
    assert response.status_code == status
    if status == 401:
        assert_error(response, 401, "unauthorized", "Bearer")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert files_in(model_dir) == with_serving([])
    else:
        assert files_in(model_dir) == with_serving(["m.routing.json", "m@v1.model_info.json", "m@v1.onnx"])


def test_a_flood_of_file_parts_is_refused_and_leaves_nothing(client, model_dir):
    data = {f"file{i}": (io.BytesIO(b"x" * 100), f"f{i}.onnx") for i in range(40)}
    data.update({"id": "m", "name": "n", "version": "v"})
    response = client.post("/models/upload", data=data, content_type="multipart/form-data")
    assert_error(response, 413, "too_large", "too many parts (at most 16)")
    assert files_in(model_dir) == with_serving([])


def test_extra_file_parts_are_not_kept(client, model_dir):
    data = {"file": (io.BytesIO(models.identity()), "m.onnx"), "spare": (io.BytesIO(b"junk"), "junk.bin"),
            "id": "m", "name": "n", "version": "v"}
    assert client.post("/models/upload", data=data, content_type="multipart/form-data").status_code == 201
    assert files_in(model_dir) == with_serving(["m.routing.json", "m@v.model_info.json", "m@v.onnx"])


def _fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_a_full_disk_while_streaming_gets_507_and_leaves_nothing(client, model_dir, monkeypatch):
    from nexus.store import PendingFile

    real_init = PendingFile.__init__

    def init_then_fill_up(self, directory):
        real_init(self, directory)
        self.file.write = _fail_with(errno.ENOSPC)

    monkeypatch.setattr(PendingFile, "__init__", init_then_fill_up)
    response = upload(client, models.identity(), "m")
    assert_error(response, 507, "storage_full", "full")
    assert files_in(model_dir) == with_serving([])


def test_a_full_disk_while_publishing_leaves_nothing(client, model_dir, monkeypatch):
    from nexus import store

    real = store.ModelStore._write_json

    def sidecar_fails(self, path, document):  # the model file is in place and the routing document written
        if path.name.endswith(store.SIDECAR_SUFFIX):
            _fail_with(errno.ENOSPC)()
        return real(self, path, document)

    monkeypatch.setattr(store.ModelStore, "_write_json", sidecar_fails)
    assert_error(upload(client, models.identity(), "m"), 507, "storage_full", "full")
    assert files_in(model_dir) == with_serving([])


def test_a_read_only_model_directory_gets_a_clear_500(client, model_dir, monkeypatch, upload_model):
    from nexus import store

    upload_model(models.identity(), "kept")
    monkeypatch.setattr(store, "_lock_path", _fail_with(errno.EROFS))
    assert_error(upload(client, models.identity(), "m"), 500, "storage_not_writable", "not writable")
    assert_error(client.delete("/models/kept"), 500, "storage_not_writable", "not writable")
    assert files_in(model_dir) == with_serving(["kept.routing.json", "kept@v1.model_info.json", "kept@v1.onnx"])


def _has_locale(name: str) -> bool:
    import subprocess

    listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.lower().split()
    return name.lower().replace("utf-8", "utf8") in listed


@pytest.mark.skipif(not _has_locale("en_US.UTF-8"), reason="the en_US.UTF-8 locale is not installed (.ci/run and the image install it)")
def test_a_text_model_with_the_default_locale_uploads_and_predicts(client, upload_model):
    upload_model(models.tfidf_classifier(), "text")
    response = client.post("/predict", json={"model_id": "text", "inputs": {"text": [["a good film"], ["an awful movie"]]}})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["prediction"] == [1, 0]


def test_a_text_model_naming_a_missing_locale_gets_400_saying_what_to_do(client, model_dir):
    response = upload(client, models.tfidf_classifier(locale="xx_XX.UTF-8"), "text")
    body = assert_error(response, 400, "invalid_model", "needs the locale 'xx_XX.UTF-8'")
    assert "locale-gen" in body["error"] and "skl2onnx" in body["error"]
    assert files_in(model_dir) == with_serving([])
