"""The OpenAPI document: exactly the app's operations, examples that run, the errors the code raises."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest

from nexus import errors
from nexus.openapi import DEMO_ID, DEMO_INPUT, DEMO_NAME, DEMO_VERSION, document
from nexus.store import RESERVED_IDS
from nexus.tensors import DTYPES

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / f"{DEMO_ID}.onnx"
DEMO_SIDECAR = ROOT / "models" / f"{DEMO_ID}.model_info.json"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
IMPLICIT = {"HEAD", "OPTIONS"}  # Flask adds them to every route


def _template(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def _served(app) -> set[tuple[str, str]]:
    """(path template, method) of every operation the url map routes."""
    return {
        (_template(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT
    }


def _operations(doc: dict) -> list[tuple[str, str, dict]]:
    """(path, method, operation) in document order."""
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS]


def _parameters(doc: dict, path: str, op: dict) -> list[dict]:
    return [*doc["paths"][path].get("parameters", []), *op.get("parameters", [])]


def test_documented_operations_are_exactly_the_routes_methods(app):
    documented = {(path, method) for path, method, _ in _operations(document())}
    served = _served(app)
    assert documented - served == set(), "documented but not served"
    assert served - documented == set(), "served but not documented"


def test_the_fixed_routes_where_a_model_id_goes_are_documented_with_their_own_methods_only(app):
    paths = document()["paths"]
    for path in RESERVED_IDS.values():
        own = {m.lower() for r in app.url_map.iter_rules() if r.rule == path for m in r.methods - IMPLICIT}
        assert {k for k in paths[path] if k in METHODS} == own, path


def test_no_id_parameter_admits_a_reserved_id():
    doc = document()
    ids = [(path, p["schema"]) for path, _, op in _operations(doc) for p in _parameters(doc, path, op)
           if p["name"] in ("model_id", "name", "id")]
    upload = doc["paths"]["/models/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]
    ids.append(("/models/upload", upload["schema"]["properties"]["id"]))
    assert {"/models/{model_id}", "/models/info", "/v2/models/{name}", "/models/upload"} <= {p for p, _ in ids}
    for path, schema in ids:
        assert re.search(schema["pattern"], DEMO_ID), path
        for reserved in RESERVED_IDS:
            assert not re.search(schema["pattern"], reserved), (path, reserved)
            assert reserved in schema["description"], path


def test_servers_name_the_quick_start_address_first_and_the_serving_one_second():
    assert [s["url"] for s in document()["servers"]] == ["http://localhost:8080", "/"]


def test_every_path_parameter_and_request_body_has_an_example():
    doc = document()
    for path, method, op in _operations(doc):
        for param in _parameters(doc, path, op):
            assert "example" in param, (path, method, param["name"])
        for media_type, content in op.get("requestBody", {}).get("content", {}).items():
            if media_type != "application/octet-stream":  # V2's binary body: raw tensors after a JSON header
                assert content.get("example") or content.get("examples"), (path, method, media_type)


@pytest.fixture
def demo_client(make_app, model_dir):
    """A client of an app serving the demo model, like a fresh server started as the README says."""
    shutil.copy(DEMO_MODEL, model_dir)
    shutil.copy(DEMO_SIDECAR, model_dir)
    app = make_app()
    app.extensions["nexus"].registry.sync()  # what a worker's loader does first
    return app.test_client()


def _url(doc: dict, path: str, op: dict) -> str:
    params = _parameters(doc, path, op)
    for param in params:
        if param["in"] == "path":
            path = path.replace(f"{{{param['name']}}}", param["example"])
    query = {p["name"]: p["example"] for p in params if p["in"] == "query"}
    return path + (f"?{urlencode(query)}" if query else "")


def _requests(op: dict) -> list[dict]:
    """The requests made from one operation's examples: one per example of its body."""
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        return [{"json": e["value"]} for e in content["application/json"]["examples"].values()]
    if "multipart/form-data" in content:  # the example's text fields, and the file a user picks
        fields = content["multipart/form-data"]["example"]
        return [{"data": {**fields, "file": (io.BytesIO(DEMO_MODEL.read_bytes()), DEMO_MODEL.name)},
                 "content_type": "multipart/form-data"}]
    return [{}]


def test_the_examples_succeed_in_document_order_against_the_demo_model(demo_client):
    """What running a collection imported from the document does against a fresh server."""
    doc = document()
    sent = []
    for path, method, op in _operations(doc):
        url = _url(doc, path, op)
        for request in _requests(op):
            response = demo_client.open(url, method=method.upper(), **request)
            if "x-example-status" in op:  # a refusal the demo server gives, documented on the operation
                assert response.status_code == op["x-example-status"], (method, url, response.get_data(as_text=True))
            else:
                assert 200 <= response.status_code < 300, (method, url, request, response.get_data(as_text=True))
            assert str(response.status_code) in op["responses"], (method, url)
            sent.append((method, path))
    assert ("post", "/predict") in sent and ("post", "/v2/models/{name}/infer") in sent
    assert ("delete", "/models/{model_id}") in sent and sent[-1] == ("post", "/models/upload")
    assert demo_client.get(f"/models/{DEMO_ID}").get_json()["name"] == DEMO_NAME  # the upload restored it


def test_the_examples_name_the_demo_model_as_it_is():
    demo = json.loads(DEMO_SIDECAR.read_text())
    assert (demo["id"], demo["name"], demo["version"]) == (DEMO_ID, DEMO_NAME, DEMO_VERSION)
    assert [t["name"] for t in demo["inputs"]] == [DEMO_INPUT]


# -- errors -------------------------------------------------------------------------------------------------

def _codes(response: dict) -> list[str]:
    return response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["code"]["enum"]


def _error_codes(op: dict) -> dict[str, list[str]]:
    return {status: _codes(r) for status, r in op["responses"].items() if int(status) >= 400}


def _op(path: str, method: str) -> dict:
    return document()["paths"][path][method]


V2_MODEL = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
RUNS_A_MODEL = [("/predict", "post"), *((f"{p}/infer", "post") for p in V2_MODEL)]
FINDS_A_MODEL = [("/models/{model_id}", "get"), ("/models/info", "get"), *RUNS_A_MODEL,
                 *((p, "get") for p in V2_MODEL), *((f"{p}/ready", "get") for p in V2_MODEL)]


@pytest.mark.parametrize(("path", "method"), FINDS_A_MODEL)
def test_every_operation_that_reads_a_model_documents_its_refusals(path, method):
    op = _op(path, method)
    codes = _error_codes(op)
    assert {"model_not_found", "model_unavailable", "model_unloaded"} <= set(codes["404"])
    assert set(codes["503"]) == {"model_loading", "storage_unavailable"}
    assert "Retry-After" in op["responses"]["503"]["headers"]
    # A version is pinned in the path, or on a run in a header or the body too.
    assert ("version_not_found" in codes["404"]) == ("{version}" in path or (path, method) in RUNS_A_MODEL)


@pytest.mark.parametrize(("path", "method"), RUNS_A_MODEL)
def test_every_operation_that_runs_a_model_documents_the_limits(path, method):
    codes = _error_codes(_op(path, method))
    assert codes["422"] == ["inference_memory_limit"] and codes["504"] == ["inference_timeout"]
    assert codes["500"] == ["inference_failed"] and codes["413"] == ["too_large"]


def test_upload_documents_the_load_limits_and_the_storage():
    codes = _error_codes(_op("/models/upload", "post"))
    assert set(codes["422"]) == {"model_too_large", "model_load_timeout"}
    assert set(codes["400"]) == {"bad_input", "invalid_model"}
    assert set(codes["409"]) == {"version_exists", "model_busy"}
    assert codes["507"] == ["storage_full"] and codes["500"] == ["storage_not_writable"]
    assert codes["503"] == ["storage_unavailable"] and {"401", "413", "415"} <= set(codes)


def test_every_error_status_says_what_each_of_its_codes_means():
    for path, method, op in _operations(document()):
        for status, codes in _error_codes(op).items():
            description = op["responses"][status]["description"]
            meanings = dict(part.split(": ", 1) for part in description.split("; "))
            assert list(meanings) == codes and all(meanings.values()), (path, method, status)


def test_the_error_headers_are_documented_where_the_errors_are():
    for error in (errors.Unauthorized(), errors.ModelLoading("m", 5)):
        for path, method, op in _operations(document()):
            response = op["responses"].get(str(error.status))
            if response and error.code in _codes(response):
                assert set(error.headers) <= set(response["headers"]), (path, method, error.code)


def _readme_errors() -> dict[str, set[str]]:
    """The README's Errors table: status -> codes."""
    section = (ROOT / "README.md").read_text().split("### Errors", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in section.splitlines():
        match = re.match(r"\| (\d{3}) \| (.+?) \|", row)
        if match:
            table.setdefault(match[1], set()).update(re.findall(r"`(\w+)`", match[2]))
    return table


def _subclasses(kind: type) -> set[type]:
    found = set(kind.__subclasses__())
    return found.union(*(_subclasses(k) for k in found))


def test_the_documented_errors_are_the_readmes_and_the_codes():
    documented: dict[str, set[str]] = {}
    for _, _, op in _operations(document()):
        for status, codes in _error_codes(op).items():
            documented.setdefault(status, set()).update(codes)
    readme = _readme_errors()
    # A wrong method is no documented operation, and internal_error is a bug, not an outcome.
    assert readme.pop("405") == {"method_not_allowed"}
    readme["500"].remove("internal_error")
    assert documented == readme
    raised = {(str(k.status), k.code) for k in _subclasses(errors.ApiError) if k is not errors.OverLimit}
    assert raised == {(s, c) for s, codes in documented.items() for c in codes} - {("404", "not_found")}


def test_v2_datatypes_are_the_ones_the_codec_decodes():
    tensor = document()["components"]["schemas"]["V2Tensor"]["properties"]["datatype"]
    assert tensor["enum"] == [d.v2 for d in DTYPES if d.numpy is not None]
    assert {"FP32", "BYTES", "BOOL"} <= set(tensor["enum"]) and "BF16" not in tensor["enum"]


def test_document_is_served_as_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["openapi"].startswith("3.1")
    assert "multipart/form-data" in body["paths"]["/models/upload"]["post"]["requestBody"]["content"]
    for status in ("400", "401", "409", "413", "415", "422", "507"):
        assert status in body["paths"]["/models/upload"]["post"]["responses"]
