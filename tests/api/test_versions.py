"""Model versions and their routing (default, canary, shadow) through the Flask test client."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from nexus import create_app
from nexus.routing import bucket
from tests import models
from tests.conftest import TOKEN, assert_error, files_in, with_serving, metric, upload

DEMO = Path(__file__).resolve().parents[2] / "models"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = [1.0, 0.0, 0.0, 0.0]  # picks row 0 of a linear model's weights: each version answers its own numbers


def linear(seed: int) -> tuple[bytes, list[float]]:
    """A linear model and what it answers for FEATURES."""
    data, weights, bias = models.linear(seed=seed)
    return data, (weights[0] + bias).tolist()


VERSIONS = {"v1": linear(1), "v2": linear(2), "v3": linear(3)}


def predict(client, model_id: str = "m", headers=None, **body):
    return client.post("/predict", json={"model_id": model_id, "features": FEATURES, **body}, headers=headers or {})


def answered(response) -> str:
    """The version that answered a /predict, checked against its header and its numbers."""
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert response.headers["X-Model-Version"] == body["model_version"]
    if body["model_id"] == "m" and body["model_version"] in VERSIONS:
        assert body["prediction"] == pytest.approx(VERSIONS[body["model_version"]][1], abs=1e-5)
    return body["model_version"]


def v2_infer(client, model_id: str = "m", path=None, headers=None, parameters=None):
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": FEATURES}]}
    if parameters is not None:
        body["parameters"] = parameters
    return client.post(path or f"/v2/models/{model_id}/infer", data=orjson.dumps(body), headers=headers or {},
                       content_type="application/json")


def v2_answered(response) -> str:
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert response.headers["X-Model-Version"] == body["model_version"]
    return body["model_version"]


def put_routing(client, document, model_id: str = "m", headers=None):
    data = document if isinstance(document, (bytes, str)) else json.dumps(document)
    return client.put(f"/models/{model_id}/routing", data=data, content_type="application/json", headers=headers or {})


def files(model_id: str, *versions: str) -> list[str]:
    """The files a model with these versions has in the directory."""
    return with_serving([f"{model_id}.routing.json"] + [f"{model_id}@{v}{s}" for v in versions for s in (".model_info.json", ".onnx")])


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory) -> dict[int, Path]:
    """Model 'm' uploaded through the API once per module in versions v1, v2 (and v3), in that order:
    the directory after two uploads and after three. Tests copy the files (their sidecars carry the
    load checks, so loading a copy needs no sandbox)."""
    directories = {}
    for count in (2, 3):
        directory = tmp_path_factory.mktemp(f"versions{count}") / "models"
        directory.mkdir()
        client = create_app({"model_dir": directory, "ort_threads": 1}).test_client()
        for version in list(VERSIONS)[:count]:
            response = upload(client, VERSIONS[version][0], "m", name=f"Linear {version}", version=version)
            assert response.status_code == 201, response.get_json()
        directories[count] = directory
    return directories


def _copied(source: Path, model_dir: Path, client):
    for path in source.iterdir():
        shutil.copy2(path, model_dir / path.name)
    return client


@pytest.fixture
def three(client, model_dir, uploaded):
    """Model 'm' in versions v1, v2, v3 (uploaded in that order)."""
    return _copied(uploaded[3], model_dir, client)


@pytest.fixture
def two(client, model_dir, uploaded):
    """Model 'm' in versions v1, v2."""
    return _copied(uploaded[2], model_dir, client)


# -- upload ---------------------------------------------------------------------------------------


def test_two_versions_of_one_id_are_both_created(client, model_dir):
    first = upload(client, VERSIONS["v1"][0], "m", name="One", version="v1")
    assert first.status_code == 201 and first.headers["Location"] == "/models/m/versions/v1"
    assert first.get_json()["model"] == {"id": "m", "name": "One", "version": "v1", "path": "models/m@v1.onnx"}
    assert files_in(model_dir) == files("m", "v1")
    second = upload(client, VERSIONS["v2"][0], "m", name="Two", version="v2")
    assert second.status_code == 201 and second.headers["Location"] == "/models/m/versions/v2"
    assert second.get_json()["model"] == {"id": "m", "name": "Two", "version": "v2", "path": "models/m@v2.onnx"}
    assert files_in(model_dir) == files("m", "v1", "v2")
    assert (model_dir / "m@v1.onnx").read_bytes() == VERSIONS["v1"][0]
    assert (model_dir / "m@v2.onnx").read_bytes() == VERSIONS["v2"][0]
    for sequence, version in enumerate(("v1", "v2"), start=1):
        sidecar = json.loads((model_dir / f"m@{version}.model_info.json").read_text())
        assert sidecar["format"] == 2 and sidecar["sequence"] == sequence
        assert sidecar["id"] == "m" and sidecar["version"] == version and sidecar["path"] == f"models/m@{version}.onnx"
    assert json.loads((model_dir / "m.routing.json").read_text()) == {"default": None, "canary": {}, "shadow": {}}
    assert client.get("/models/m").get_json()["versions"] == ["v1", "v2"]
    assert client.get("/models").get_json() == {
        "models": [{"id": "m", "name": "Two", "version": "v2", "path": "models/m@v2.onnx", "versions": ["v1", "v2"]}],
        "count": 1,
    }


def test_versions_are_ordered_by_upload_not_by_name(client, model_dir):
    for version in ("b", "a", "c10", "c9"):
        assert upload(client, models.identity(), "m", version=version).status_code == 201
    assert client.get("/models/m/versions").get_json()["versions"][-1]["version"] == "c9"
    assert client.get("/models/m").get_json()["versions"] == ["b", "a", "c10", "c9"]
    assert answered(predict(client)) == "c9"
    sequences = {v: json.loads((model_dir / f"m@{v}.model_info.json").read_text())["sequence"] for v in ("b", "a", "c10", "c9")}
    assert sequences == {"b": 1, "a": 2, "c10": 3, "c9": 4}


def test_the_same_id_and_version_again_is_409_and_changes_nothing(two, model_dir):
    before = files_in(model_dir)
    stored = {name: (model_dir / name).read_bytes() for name in before}
    response = upload(two, VERSIONS["v3"][0], "m", name="Other", version="v1")
    assert_error(response, 409, "version_exists", "model 'm' already has version 'v1', and versions never change")
    assert "Location" not in response.headers
    assert files_in(model_dir) == before
    assert {name: (model_dir / name).read_bytes() for name in before} == stored
    assert answered(predict(two, version="v1")) == "v1"
    assert two.get("/models/m/versions/v1").get_json()["name"] == "Linear v1"


@pytest.mark.parametrize(
    ("version", "words"),
    [
        ("", "field 'version' must be a non-empty string"),
        (" v1", "invalid version ' v1'"),
        ("v1 ", "invalid version 'v1 '"),
        ("v 1", "invalid version 'v 1'"),
        (".v1", "invalid version '.v1'"),
        ("a/b", "invalid version 'a/b'"),
        ("a@b", "invalid version 'a@b'"),
        ("..", "invalid version '..'"),
        ("ü", "invalid version 'ü'"),
        ("v" * 65, "the limit is 64"),
    ],
)
def test_invalid_versions_get_400_and_leave_nothing(client, model_dir, upload_model, version, words):
    body = assert_error(upload(client, models.identity(), "m", version=version), 400, "bad_input", words)
    if version.strip() and len(version) <= 64:
        assert "A-Z a-z 0-9 . _ + -" in body["error"]
    assert files_in(model_dir) == with_serving([])
    # Nor is anything left next to an existing model.
    upload_model(models.identity(), "m", version="v1")
    before = files_in(model_dir)
    assert_error(upload(client, models.identity(), "m", version=version), 400, "bad_input", words)
    assert files_in(model_dir) == before


@pytest.mark.parametrize("version", ["1", "v1.0.0", "1.0.0-rc.1+build.5", "A_b-C", "x" * 64, "v1..2"])
def test_valid_versions_are_accepted_as_given(client, model_dir, version):
    response = upload(client, models.identity(), "m", version=version)
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"] == f"/models/m/versions/{version}"
    assert files_in(model_dir) == files("m", version)
    assert answered(predict(client, version=version)) == version


# -- which version answers --------------------------------------------------------------------------


def test_the_newest_version_answers_by_default(three):
    assert answered(predict(three)) == "v3"
    assert v2_answered(v2_infer(three)) == "v3"
    assert three.get("/models/m").get_json()["version"] == "v3"
    assert upload(three, models.linear(seed=4)[0], "m", version="v4").status_code == 201
    assert answered(predict(three)) == "v4"
    assert v2_answered(v2_infer(three)) == "v4"


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_a_version_is_pinned_by_body_header_or_v2_path(three, version):
    assert answered(predict(three, version=version)) == version
    assert answered(predict(three, headers={"X-Model-Version": version})) == version
    assert v2_answered(v2_infer(three, path=f"/v2/models/m/versions/{version}/infer")) == version
    assert v2_answered(v2_infer(three, headers={"X-Model-Version": version})) == version


def test_the_body_pin_wins_over_the_header(three):
    assert answered(predict(three, version="v1", headers={"X-Model-Version": "v2"})) == "v1"


def test_pinning_wins_over_the_routing(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 100}}).status_code == 200
    assert answered(predict(three, version="v3")) == "v3"
    assert answered(predict(three, version="v1", routing_key="user-1")) == "v1"


@pytest.mark.parametrize("how", ["body", "header", "v2-path", "v2-header", "v2-metadata", "v2-ready", "details"])
def test_an_unknown_version_is_404_listing_the_versions(three, how):
    missing = {
        "body": lambda: predict(three, version="v9"),
        "header": lambda: predict(three, headers={"X-Model-Version": "v9"}),
        "v2-path": lambda: v2_infer(three, path="/v2/models/m/versions/v9/infer"),
        "v2-header": lambda: v2_infer(three, headers={"X-Model-Version": "v9"}),
        "v2-metadata": lambda: three.get("/v2/models/m/versions/v9"),
        "v2-ready": lambda: three.get("/v2/models/m/versions/v9/ready"),
        "details": lambda: three.get("/models/m/versions/v9"),
    }[how]()
    assert_error(missing, 404, "version_not_found", "model 'm' has no version 'v9'; its versions are 'v1', 'v2', 'v3'")
    assert "X-Model-Version" not in missing.headers


def test_a_bad_pin_in_the_body_is_400(three):
    assert_error(predict(three, version=""), 400, "bad_input", "field 'version' must be a non-empty string")
    assert_error(predict(three, version=1), 400, "bad_input", "field 'version' must be a non-empty string")
    assert_error(predict(three, routing_key=""), 400, "bad_input", "field 'routing_key' must be a non-empty string")


def test_the_same_routing_key_gets_the_same_version(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 50}}).status_code == 200
    keys = [f"user-{i}" for i in range(24)]
    expected = {key: ("v2" if bucket(key) < 5000 else "v1") for key in keys}
    assert set(expected.values()) == {"v1", "v2"}  # the keys land on both sides
    for key in keys:
        by_body = [answered(predict(three, routing_key=key)) for _ in range(3)]
        by_header = [answered(predict(three, headers={"X-Routing-Key": key})) for _ in range(3)]
        by_v2 = [v2_answered(v2_infer(three, headers={"X-Routing-Key": key})),
                 v2_answered(v2_infer(three, parameters={"routing_key": key}))]
        assert by_body + by_header + by_v2 == [expected[key]] * 8, key


def test_the_body_routing_key_wins_over_the_header(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 50}}).status_code == 200
    low = next(f"k{i}" for i in range(1000) if bucket(f"k{i}") < 5000)
    high = next(f"k{i}" for i in range(1000) if bucket(f"k{i}") >= 5000)
    assert answered(predict(three, routing_key=low, headers={"X-Routing-Key": high})) == "v2"
    assert answered(predict(three, routing_key=high, headers={"X-Routing-Key": low})) == "v1"


def test_a_canary_of_100_percent_gets_everything(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 100}}).status_code == 200
    assert {answered(predict(three)) for _ in range(30)} == {"v2"}
    assert {answered(predict(three, routing_key=f"user-{i}")) for i in range(30)} == {"v2"}
    assert {v2_answered(v2_infer(three)) for _ in range(10)} == {"v2"}


def test_a_canary_of_0_percent_gets_nothing(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 0}}).status_code == 200
    assert {answered(predict(three, routing_key=f"user-{i}")) for i in range(30)} == {"v1"}


def test_routed_traffic_without_a_key_splits_by_weight(three):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 50}}).status_code == 200
    seen = [answered(predict(three)) for _ in range(200)]
    assert set(seen) == {"v1", "v2"}
    assert 50 < seen.count("v2") < 150  # 50 % of 200; ~7 standard deviations either side


# -- routing: PUT and GET -------------------------------------------------------------------------


def test_put_routing_returns_the_view_and_stores_the_document(three, model_dir):
    document = {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 100}}
    response = put_routing(three, document)
    assert response.status_code == 200, response.get_json()
    view = {
        "model_id": "m",
        "routing": document,
        "default": "v1",
        "traffic": {"v1": 90.0, "v2": 10.0},
        "shadow": {"v3": 100.0},
        "versions": ["v1", "v2", "v3"],
    }
    assert response.get_json() == view
    assert three.get("/models/m/routing").get_json() == view
    assert json.loads((model_dir / "m.routing.json").read_text()) == document
    assert files_in(model_dir) == files("m", "v1", "v2", "v3")
    assert answered(predict(three, routing_key=next(f"k{i}" for i in range(1000) if bucket(f"k{i}") >= 1000))) == "v1"


def test_an_empty_routing_resets_to_the_newest(three, model_dir):
    assert put_routing(three, {"default": "v1"}).status_code == 200
    assert answered(predict(three)) == "v1"
    response = put_routing(three, {})
    assert response.status_code == 200
    assert response.get_json()["routing"] == {"default": None, "canary": {}, "shadow": {}}
    assert response.get_json()["default"] == "v3" and response.get_json()["traffic"] == {"v3": 100.0}
    assert answered(predict(three)) == "v3"


def test_get_routing_without_a_document_change_shows_the_newest(three):
    assert three.get("/models/m/routing").get_json() == {
        "model_id": "m",
        "routing": {"default": None, "canary": {}, "shadow": {}},
        "default": "v3",
        "traffic": {"v3": 100.0},
        "shadow": {},
        "versions": ["v1", "v2", "v3"],
    }


BAD_ROUTING = [
    ({"default": "v9"}, "routing names version 'v9' as default, which does not exist; the versions are 'v1', 'v2', 'v3'"),
    ({"canary": {"v9": 10}}, "routing names version 'v9' as canary, which does not exist"),
    ({"shadow": {"v9": 10}}, "routing names version 'v9' as shadow, which does not exist"),
    ({"default": "v1", "canary": {"v2": -1}}, "canary weight of version 'v2' must be a number from 0 to 100 (percent), got -1"),
    ({"default": "v1", "canary": {"v2": 101}}, "got 101"),
    ({"default": "v1", "canary": {"v2": "10"}}, "got '10'"),
    ({"default": "v1", "canary": {"v2": True}}, "got True"),
    ({"default": "v1", "canary": {"v2": None}}, "got None"),
    ({"default": "v1", "shadow": {"v3": 100.5}}, "shadow weight of version 'v3' must be a number from 0 to 100"),
    ({"default": "v3", "canary": {"v1": 60, "v2": 50}}, "canary weights add up to 110 %"),
    ({"default": "v1", "mirror": {"v2": 10}}, "routing has unknown field(s) 'mirror'"),
    ({"default": "v1", "canary": {"v1": 10}}, "routing names version 'v1' both as default and as canary"),
    ({"default": "v1", "shadow": {"v1": 10}}, "routing names version 'v1' both as default and as shadow"),
    ({"default": 3}, "routing field 'default' must be a version"),
    ({"canary": ["v2"]}, "routing field 'canary' must be an object"),
    ([{"default": "v1"}], "request body must be a JSON object"),
    ("null", "request body must be a JSON object"),
    ('"v1"', "request body must be a JSON object"),
    ("{", "request body is not valid JSON"),
    ("", "request body is empty"),
]


@pytest.mark.parametrize(("document", "words"), BAD_ROUTING)
def test_each_bad_routing_is_400_and_leaves_the_document_unchanged(three, model_dir, document, words):
    good = {"default": "v2", "canary": {"v3": 20}, "shadow": {"v1": 5}}
    assert put_routing(three, good).status_code == 200
    stored = (model_dir / "m.routing.json").read_bytes()
    before = files_in(model_dir)
    assert_error(put_routing(three, document), 400, "bad_input", words)
    assert (model_dir / "m.routing.json").read_bytes() == stored
    assert files_in(model_dir) == before
    assert three.get("/models/m/routing").get_json()["routing"] == good


def test_routing_of_an_unknown_model_is_404(client, model_dir):
    assert_error(put_routing(client, {}, "ghost"), 404, "model_not_found", "model 'ghost' is not registered")
    assert_error(client.get("/models/ghost/routing"), 404, "model_not_found", "model 'ghost' is not registered")
    assert_error(client.get("/models/ghost/versions"), 404, "model_not_found", "model 'ghost' is not registered")
    assert files_in(model_dir) == with_serving([])


def test_put_routing_needs_the_token_when_set(make_app, model_dir):
    client = make_app(api_token=TOKEN).test_client()
    for version in ("v1", "v2"):
        assert upload(client, VERSIONS[version][0], "m", version=version, headers=AUTH).status_code == 201
    stored = (model_dir / "m.routing.json").read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = put_routing(client, {"default": "v1"}, headers=headers)
        assert_error(refused, 401, "unauthorized", "Bearer")
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert (model_dir / "m.routing.json").read_bytes() == stored
        assert answered(predict(client)) == "v2"
    # Reading the routing stays open, like the other reads.
    assert client.get("/models/m/routing").status_code == 200
    assert put_routing(client, {"default": "v1"}, headers=AUTH).status_code == 200
    assert answered(predict(client)) == "v1"


def test_the_versions_view_shows_state_and_shares(three):
    routing = {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 100}}
    assert put_routing(three, routing).status_code == 200
    body = three.get("/models/m/versions").get_json()
    assert body["model_id"] == "m" and body["routing"] == routing and body["default"] == "v1"
    assert body["traffic"] == {"v1": 90.0, "v2": 10.0} and body["shadow"] == {"v3": 100.0}
    rows = body["versions"]
    assert [row["version"] for row in rows] == ["v1", "v2", "v3"]
    assert [(row["state"], row["traffic_percent"], row["shadow_percent"]) for row in rows] == [
        ("READY", 90.0, 0.0), ("READY", 10.0, 0.0), ("READY", 0.0, 100.0)]
    for row in rows:
        assert "reason" not in row
        assert row["id"] == "m" and row["name"] == f"Linear {row['version']}" and row["path"] == f"models/m@{row['version']}.onnx"
        assert [t["name"] for t in row["inputs"]] == ["X"] and row["size_bytes"] > 0 and len(row["sha256"]) == 64


def test_the_version_view(three, model_dir):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 12.5}, "shadow": {"v3": 30}}).status_code == 200
    expected = {"v1": (87.5, 0.0), "v2": (12.5, 0.0), "v3": (0.0, 30.0)}
    for version, (traffic, shadow) in expected.items():
        body = three.get(f"/models/m/versions/{version}").get_json()
        assert body["version"] == version and body["state"] == "READY"
        assert body["traffic_percent"] == traffic and body["shadow_percent"] == shadow
        assert body["name"] == f"Linear {version}"
        assert body["size_bytes"] == len(VERSIONS[version][0])
        assert body["created_at"].endswith("Z")


def test_the_model_details_are_the_default_versions(three):
    assert put_routing(three, {"default": "v2", "canary": {"v3": 10}}).status_code == 200
    body = three.get("/models/m").get_json()
    assert body["version"] == "v2" and body["name"] == "Linear v2"
    assert body["versions"] == ["v1", "v2", "v3"]
    assert body["routing"] == {"default": "v2", "canary": {"v3": 10}, "shadow": {}}
    listed = three.get("/models").get_json()["models"]
    assert listed == [{"id": "m", "name": "Linear v2", "version": "v2", "path": "models/m@v2.onnx", "versions": ["v1", "v2", "v3"]}]


# -- shadows through the API -------------------------------------------------------------------------


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the shadow thread did not get there in time"
        time.sleep(0.005)


def test_a_shadow_gets_a_copy_of_routed_requests_and_the_client_gets_the_routed_answer(client, model_dir):
    model_id = "shadowed"
    for version in ("v1", "v2"):
        assert upload(client, VERSIONS[version][0], model_id, version=version).status_code == 201
    assert put_routing(client, {"default": "v1", "shadow": {"v2": 100}}, model_id).status_code == 200
    labels = {"model_id": model_id, "version": "v2"}
    before = metric("model_shadow_predictions_total", status="success", **labels)
    disagree = metric("model_shadow_agreement_total", result="disagree", **labels)
    response = predict(client, model_id)
    assert response.get_json()["model_version"] == "v1"
    assert response.get_json()["prediction"] == pytest.approx(VERSIONS["v1"][1], abs=1e-5)
    _wait_for(lambda: metric("model_shadow_predictions_total", status="success", **labels) == before + 1)
    # Two different linear models: [1, 3] regression outputs that are not close.
    _wait_for(lambda: metric("model_shadow_agreement_total", result="disagree", **labels) == disagree + 1)
    # A pinned request is not copied, and neither is one the shadow itself answered.
    predict(client, model_id, version="v1")
    predict(client, model_id, version="v2")
    time.sleep(0.2)
    assert metric("model_shadow_predictions_total", status="success", **labels) == before + 1
    assert metric("model_predictions_total", model_id=model_id, version="v2", status="success") == 1


# -- deleting a version ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing", "version", "words"),
    [
        (None, "v3", "version 'v3' of model 'm' gets traffic as the default; move it away first with PUT /models/m/routing"),
        ({"default": "v1"}, "v1", "gets traffic as the default"),
        ({"default": "v1", "canary": {"v2": 10}}, "v2", "version 'v2' of model 'm' gets traffic as a canary"),
        ({"default": "v1", "shadow": {"v3": 5}}, "v3", "version 'v3' of model 'm' gets traffic as a shadow"),
        ({"canary": {"v1": 10}}, "v1", "gets traffic as a canary"),
    ],
)
def test_a_version_that_gets_traffic_cannot_be_deleted(three, model_dir, routing, version, words):
    if routing is not None:
        assert put_routing(three, routing).status_code == 200
    before = files_in(model_dir)
    stored = (model_dir / "m.routing.json").read_bytes()
    assert_error(three.delete(f"/models/m/versions/{version}"), 409, "version_in_use", words)
    assert files_in(model_dir) == before
    assert (model_dir / "m.routing.json").read_bytes() == stored
    assert answered(predict(three, version=version)) == version


@pytest.mark.parametrize("kind", ["canary", "shadow"])
def test_a_canary_or_shadow_of_0_percent_gets_no_traffic_and_can_be_deleted(three, model_dir, kind):
    assert put_routing(three, {"default": "v1", kind: {"v2": 0}}).status_code == 200
    assert three.get("/models/m/versions/v2").get_json()["traffic_percent"] == 0.0
    assert three.get("/models/m/versions/v2").get_json()["shadow_percent"] == 0.0
    assert three.delete("/models/m/versions/v2").status_code == 200
    assert three.get("/models/m/routing").get_json()["routing"] == {"default": "v1", "canary": {}, "shadow": {}}  # named no more


def test_the_only_version_cannot_be_deleted(client, model_dir, upload_model):
    upload_model(models.identity(), "m", version="v1")
    before = files_in(model_dir)
    assert_error(client.delete("/models/m/versions/v1"), 409, "version_in_use",
                 "version 'v1' is the only version of model 'm'; DELETE /models/m removes the model")
    assert files_in(model_dir) == before


def test_a_version_without_traffic_is_deleted(three, model_dir):
    assert put_routing(three, {"default": "v1", "canary": {"v3": 10}}).status_code == 200
    response = three.delete("/models/m/versions/v2")
    assert response.status_code == 200 and response.get_json() == {"deleted": "m", "version": "v2"}
    assert files_in(model_dir) == files("m", "v1", "v3")
    assert_error(predict(three, version="v2"), 404, "version_not_found", "model 'm' has no version 'v2'; its versions are 'v1', 'v3'")
    assert_error(three.get("/models/m/versions/v2"), 404, "version_not_found", "its versions are 'v1', 'v3'")
    assert three.get("/models/m").get_json()["versions"] == ["v1", "v3"]
    assert three.get("/models/m/routing").get_json()["routing"] == {"default": "v1", "canary": {"v3": 10}, "shadow": {}}
    assert answered(predict(three)) in {"v1", "v3"}
    assert_error(three.delete("/models/m/versions/v2"), 404, "version_not_found", "has no version 'v2'")
    # The newest may go too once the routing names another default.
    assert put_routing(three, {"default": "v1"}).status_code == 200
    assert three.delete("/models/m/versions/v3").status_code == 200
    assert files_in(model_dir) == files("m", "v1")
    assert answered(predict(three)) == "v1"


def test_deleting_an_old_version_keeps_the_newest_answering(three, model_dir):
    assert three.delete("/models/m/versions/v1").status_code == 200
    assert files_in(model_dir) == files("m", "v2", "v3")
    assert answered(predict(three)) == "v3"
    # A newer upload after a deletion still comes after the others, even under the deleted version's name,
    # and it is the new bytes that answer, not a session kept from the old ones.
    data, expected = linear(4)
    assert upload(three, data, "m", version="v1").status_code == 201
    assert three.get("/models/m").get_json()["versions"] == ["v2", "v3", "v1"]
    assert json.loads((model_dir / "m@v1.model_info.json").read_text())["sequence"] == 4
    for response in (predict(three), predict(three, version="v1")):
        assert response.status_code == 200 and response.get_json()["model_version"] == "v1"
        assert response.get_json()["prediction"] == pytest.approx(expected, abs=1e-5)


def test_deleting_a_version_of_an_unknown_model_is_404(client, model_dir):
    assert_error(client.delete("/models/ghost/versions/v1"), 404, "model_not_found", "model 'ghost' is not registered")


@pytest.mark.parametrize(("method", "url"), [("delete", "/models/m/versions/v1"),
                                           ("post", "/v2/repository/models/m/versions/v1/unload")])
def test_deleting_or_unloading_a_version_needs_the_token_when_set(make_app, model_dir, method, url):
    client = make_app(api_token=TOKEN).test_client()
    for version in ("v1", "v2"):
        assert upload(client, VERSIONS[version][0], "m", version=version, headers=AUTH).status_code == 201
    before = files_in(model_dir)
    assert_error(client.open(url, method=method.upper()), 401, "unauthorized", "Bearer")
    assert files_in(model_dir) == before
    assert client.open(url, method=method.upper(), headers=AUTH).status_code == 200
    if method == "delete":
        assert files_in(model_dir) == files("m", "v2")
    else:
        assert_error(predict(client, version="v1"), 404, "model_unloaded", "version 'v1' of model 'm' is unloaded")


def test_deleting_the_model_removes_every_version_and_the_routing(three, model_dir, upload_model):
    assert put_routing(three, {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 50}}).status_code == 200
    upload_model(models.identity(), "keep")
    response = three.delete("/models/m")
    assert response.status_code == 200 and response.get_json() == {"deleted": "m"}
    assert files_in(model_dir) == files("keep", "v1")
    for version in (None, "v1", "v2", "v3"):
        extra = {"version": version} if version else {}
        assert_error(predict(three, **extra), 404, "model_not_found", "model 'm' is not registered")
    assert_error(three.get("/models/m/versions"), 404, "model_not_found", "model 'm' is not registered")
    # The id is free again: a new upload starts over at sequence 1 with no routing.
    assert upload(three, VERSIONS["v2"][0], "m", version="v2").status_code == 201
    assert json.loads((model_dir / "m@v2.model_info.json").read_text())["sequence"] == 1
    assert three.get("/models/m/routing").get_json()["routing"] == {"default": None, "canary": {}, "shadow": {}}
    three.delete("/models/m")
    three.delete("/models/keep")
    assert files_in(model_dir) == with_serving([])


# -- V2 -------------------------------------------------------------------------------------------


def test_v2_metadata_and_readiness_per_version(three):
    body = three.get("/v2/models/m").get_json()
    assert body["name"] == "m" and body["versions"] == ["v1", "v2", "v3"]
    for version in ("v1", "v2", "v3"):
        pinned = three.get(f"/v2/models/m/versions/{version}")
        assert pinned.status_code == 200 and pinned.get_json()["versions"] == ["v1", "v2", "v3"]
        ready = three.get(f"/v2/models/m/versions/{version}/ready")
        assert ready.status_code == 200 and ready.get_json() == {"name": "m", "ready": True}
    assert three.get("/v2/models/m/ready").status_code == 200


def test_v2_infer_answers_with_its_model_version(three):
    response = v2_infer(three, path="/v2/models/m/versions/v1/infer")
    body = response.get_json()
    assert body["model_name"] == "m" and body["model_version"] == "v1"
    assert np.allclose(body["outputs"][0]["data"], VERSIONS["v1"][1], atol=1e-5)
    assert response.headers["X-Model-Version"] == "v1"


def test_the_repository_index_has_a_row_per_version(three, upload_model):
    upload_model(models.identity(), "other", version="1.0")
    rows = three.post("/v2/repository/index").get_json()
    assert rows == [
        {"name": "m", "version": "v1", "state": "READY"},
        {"name": "m", "version": "v2", "state": "READY"},
        {"name": "m", "version": "v3", "state": "READY"},
        {"name": "other", "version": "1.0", "state": "READY"},
    ]


def test_unloading_one_version_leaves_the_others_serving(three, model_dir):
    before = files_in(model_dir)
    assert three.post("/v2/repository/models/m/versions/v1/unload").status_code == 200
    assert files_in(model_dir) == sorted(before + ["m@v1.unloaded"])
    assert_error(predict(three, version="v1"), 404, "model_unloaded",
                 "version 'v1' of model 'm' is unloaded; POST /v2/repository/models/m/versions/v1/load serves it again")
    assert_error(v2_infer(three, path="/v2/models/m/versions/v1/infer"), 404, "model_unloaded", "version 'v1' of model 'm'")
    assert three.get("/v2/models/m/versions/v1/ready").status_code == 404
    assert answered(predict(three, version="v2")) == "v2"
    assert answered(predict(three)) == "v3"
    rows = three.post("/v2/repository/index").get_json()
    assert rows[0] == {"name": "m", "version": "v1", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert [r["state"] for r in rows[1:]] == ["READY", "READY"]
    assert three.post("/v2/repository/index", json={"ready": True}).get_json() == rows[1:]
    listing = three.get("/models/m/versions").get_json()["versions"]
    assert listing[0] == {"id": "m", "version": "v1", "state": "UNAVAILABLE", "reason": "unloaded",
                          "traffic_percent": 0.0, "shadow_percent": 0.0}
    assert three.post("/v2/repository/models/m/versions/v1/load").status_code == 200
    assert files_in(model_dir) == before
    assert answered(predict(three, version="v1")) == "v1"
    assert [r["state"] for r in three.post("/v2/repository/index").get_json()] == ["READY"] * 3


def test_unloading_and_loading_an_unknown_version_is_404(three, model_dir):
    before = files_in(model_dir)
    for action in ("load", "unload"):
        assert_error(three.post(f"/v2/repository/models/m/versions/v9/{action}"), 404, "version_not_found",
                     "model 'm' has no version 'v9'; its versions are 'v1', 'v2', 'v3'")
    assert files_in(model_dir) == before


# -- metrics --------------------------------------------------------------------------------------


def test_predictions_are_counted_by_the_version_that_answered(three):
    def count(version: str, status: str = "success") -> float:
        return metric("model_predictions_total", model_id="m", version=version, status=status)

    before = {v: count(v) for v in ("v1", "v2", "v3")}
    errors = count("v1", "error")
    inference = metric("model_inference_duration_seconds_count", model_id="m", version="v1")
    answered(predict(three, version="v1"))
    answered(predict(three, version="v1"))
    v2_answered(v2_infer(three, path="/v2/models/m/versions/v2/infer"))
    answered(predict(three))
    assert {v: count(v) - before[v] for v in ("v1", "v2", "v3")} == {"v1": 2, "v2": 1, "v3": 1}
    assert metric("model_inference_duration_seconds_count", model_id="m", version="v1") == inference + 2
    bad = three.post("/predict", json={"model_id": "m", "version": "v1", "features": [1, 2]})
    assert bad.status_code == 400 and bad.headers["X-Model-Version"] == "v1"
    assert count("v1", "error") == errors + 1
    body = three.get("/metrics").get_data(as_text=True)
    assert 'model_predictions_total{model_id="m",status="success",version="v1"}' in body


def test_metrics_of_a_deleted_version_are_no_longer_exported(three):
    answered(predict(three, version="v1"))
    answered(predict(three, version="v2"))
    body = three.get("/metrics").get_data(as_text=True)
    ours = [line for line in body.splitlines() if line.startswith("model_predictions_total{") and 'model_id="m"' in line]
    assert any('version="v2"' in line for line in ours) and any('version="v1"' in line for line in ours)
    assert three.delete("/models/m/versions/v2").status_code == 200
    body = three.get("/metrics").get_data(as_text=True)
    ours = [line for line in body.splitlines() if 'model_id="m"' in line and not line.startswith("#")]
    assert ours and not any('version="v2"' in line for line in ours)
    assert any(line.startswith("model_predictions_total{") and 'version="v1"' in line for line in ours)


# -- upgrade from the previous layout ---------------------------------------------------------------


@pytest.fixture
def old_iris(make_app, model_dir):
    """An app on a directory the previous release wrote: models/iris.onnx + models/iris.model_info.json."""
    shutil.copy(DEMO / "iris.onnx", model_dir)
    shutil.copy(DEMO / "iris.model_info.json", model_dir)
    app = make_app()
    app.extensions["nexus"].registry.sync()  # what a worker's loader does first
    return app.test_client()


IRIS_SETOSA = [5.1, 3.5, 1.4, 0.2]


def test_a_model_stored_by_the_previous_release_answers_as_its_version(old_iris, model_dir):
    old = {name: (model_dir / name).read_bytes() for name in ("iris.onnx", "iris.model_info.json")}
    response = predict(old_iris, "iris", features=IRIS_SETOSA)
    assert answered(response) == "v1.0.0" and response.get_json()["prediction"] == [0]
    assert answered(predict(old_iris, "iris", features=IRIS_SETOSA, version="v1.0.0")) == "v1.0.0"
    assert old_iris.get("/models/iris").get_json()["versions"] == ["v1.0.0"]
    view = old_iris.get("/models/iris/versions/v1.0.0").get_json()
    assert view["path"] == "models/iris.onnx" and view["state"] == "READY" and view["traffic_percent"] == 100.0
    assert old_iris.post("/v2/repository/index").get_json() == [{"name": "iris", "version": "v1.0.0", "state": "READY"}]
    assert files_in(model_dir) == with_serving(["iris.model_info.json", "iris.onnx"])  # reading writes nothing
    assert {name: (model_dir / name).read_bytes() for name in old} == old


def test_a_new_version_of_an_old_model(old_iris, model_dir, iris_bytes):
    old = {name: (model_dir / name).read_bytes() for name in ("iris.onnx", "iris.model_info.json")}
    assert_error(upload(old_iris, iris_bytes, "iris", version="v1.0.0"), 409, "version_exists",
                 "model 'iris' already has version 'v1.0.0'")
    assert files_in(model_dir) == with_serving(["iris.model_info.json", "iris.onnx"])

    response = upload(old_iris, iris_bytes, "iris", name="Iris 2", version="v2.0.0")
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"] == "/models/iris/versions/v2.0.0"
    assert files_in(model_dir) == with_serving(["iris.model_info.json", "iris.onnx", "iris.routing.json",
                                   "iris@v2.0.0.model_info.json", "iris@v2.0.0.onnx"])
    assert json.loads((model_dir / "iris@v2.0.0.model_info.json").read_text())["sequence"] == 1
    assert old_iris.get("/models/iris").get_json()["versions"] == ["v1.0.0", "v2.0.0"]
    assert answered(predict(old_iris, "iris", features=IRIS_SETOSA)) == "v2.0.0"
    assert v2_answered(old_iris.post("/v2/models/iris/infer", json={
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_SETOSA}]})) == "v2.0.0"
    assert answered(predict(old_iris, "iris", features=IRIS_SETOSA, version="v1.0.0")) == "v1.0.0"

    # The old version is the default again.
    assert put_routing(old_iris, {"default": "v1.0.0"}, "iris").status_code == 200
    assert answered(predict(old_iris, "iris", features=IRIS_SETOSA)) == "v1.0.0"
    assert old_iris.get("/models/iris").get_json()["name"] == "Iris classifier (logistic regression)"
    assert_error(old_iris.delete("/models/iris/versions/v1.0.0"), 409, "version_in_use", "as the default")
    assert {name: (model_dir / name).read_bytes() for name in old} == old

    # And the old version can go once the new one is the default.
    assert put_routing(old_iris, {}, "iris").status_code == 200
    assert old_iris.delete("/models/iris/versions/v1.0.0").status_code == 200
    assert files_in(model_dir) == with_serving(["iris.routing.json", "iris@v2.0.0.model_info.json", "iris@v2.0.0.onnx"])
    assert answered(predict(old_iris, "iris", features=IRIS_SETOSA)) == "v2.0.0"
    assert_error(predict(old_iris, "iris", features=IRIS_SETOSA, version="v1.0.0"), 404, "version_not_found",
                 "model 'iris' has no version 'v1.0.0'; its versions are 'v2.0.0'")


def test_deleting_an_old_model_with_a_new_version_removes_everything(old_iris, model_dir, iris_bytes):
    assert upload(old_iris, iris_bytes, "iris", version="v2.0.0").status_code == 201
    assert old_iris.delete("/models/iris").status_code == 200
    assert files_in(model_dir) == with_serving([])
    assert_error(predict(old_iris, "iris", features=IRIS_SETOSA), 404, "model_not_found", "model 'iris' is not registered")
