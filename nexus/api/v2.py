"""The Open Inference Protocol (KServe V2) over REST, with the binary tensor data and model
repository extensions, on the same registry and sessions as ``/predict``."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, request

from nexus import __version__
from nexus.api import check_predict_token, nexus, require_predict_token, require_token
from nexus.api.health import check_ready
from nexus.errors import BadInput, VersionNotFound
from nexus.http import Reply, dumps, json_response, parse_json_object, read_body, to_response
from nexus.observability import metrics
from nexus.registry import Model
from nexus.tensors import decode_v2, decode_v2_binary, encode_v2, v2_datatype

bp = Blueprint("v2", __name__, url_prefix="/v2")

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
PLATFORM = "onnxruntime_onnx"


@bp.get("")
def server_metadata():
    return json_response({"name": "model-nexus", "version": __version__, "extensions": EXTENSIONS})


@bp.get("/health/live")
def server_live():
    return json_response({"live": True})


@bp.get("/health/ready")
def server_ready():
    check_ready()
    return json_response({"ready": True})


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    require_predict_token()
    model = _model(nexus(), name, version)
    return json_response({
        "name": model.id,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(spec) for spec in model.inputs],
        "outputs": [_tensor_metadata(spec) for spec in model.outputs],
    })


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    require_predict_token()
    model = _model(nexus(), name, version)
    return json_response({"name": model.id, "ready": True})


INFER_ROUTES = ("/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer")


def handle_infer(app_state, environ: dict[str, Any], name: str, version: str | None = None) -> Reply:
    """Answer one V2 inference request (the middleware serves it without a Flask context)."""
    check_predict_token(app_state.settings, environ)
    model = _model(app_state, name, version)
    body, binary = _read_request(environ, app_state.settings.max_request_bytes)
    timer = metrics.prediction(environ, model.id)
    feeds = _feeds(model, body.get("inputs"), binary)
    wanted = _wanted_outputs(model, body)
    results = timer.run(model.runtime, feeds, [output for output, _ in wanted])
    return _response(model, body, wanted, results)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    return to_response(handle_infer(nexus(), request.environ, name, version))


@bp.post("/repository/index")
def repository_index():
    require_predict_token()
    data = request.get_data(cache=False)
    ready_only = parse_json_object(data).get("ready", False) if data.strip() else False
    if not isinstance(ready_only, bool):
        raise BadInput("field 'ready' must be true or false")
    rows = nexus().registry.index()
    return json_response([r for r in rows if r["state"] == "READY"] if ready_only else rows)


@bp.post("/repository/models/<name>/load")
def repository_load(name: str):
    require_token()
    nexus().registry.set_loaded(name, True)
    return json_response({})


@bp.post("/repository/models/<name>/unload")
def repository_unload(name: str):
    require_token()
    nexus().registry.set_loaded(name, False)
    return json_response({})


# -- helpers ------------------------------------------------------------------------------------


def _model(app_state, name: str, version: str | None) -> Model:
    model = app_state.registry.get(name)
    if version is not None and version != model.version:
        raise VersionNotFound(name, version, model.version)
    return model


def _tensor_metadata(spec) -> dict[str, Any]:
    datatype = v2_datatype(spec.type)
    shape = list(spec.shape) if spec.dtype is not None else [-1, -1]
    return {"name": spec.name, "datatype": datatype or spec.type, "shape": shape}


def _read_request(environ: dict[str, Any], limit: int) -> tuple[dict[str, Any], memoryview]:
    """Split the body into its JSON header and the binary tensor data after it (if any)."""
    data = read_body(environ, limit)
    raw_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
    if raw_length is None:
        return parse_json_object(data), memoryview(b"")
    if not raw_length.isdigit() or int(raw_length) > len(data):
        raise BadInput(f"header {HEADER_LENGTH} must be the JSON header's length in bytes (at most {len(data)}), got {raw_length!r}")
    split = int(raw_length)
    view = memoryview(data)
    return parse_json_object(view[:split]), view[split:]


def _feeds(model: Model, inputs: Any, binary: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("field 'inputs' must be a non-empty list of tensors")
    specs = model.runtime.input_by_name
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadInput("each input must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = tensor["name"]
        spec = specs.get(name)
        if spec is None:
            raise BadInput(f"model '{model.id}' has no input named '{name}'; its inputs are {', '.join(specs)}")
        if name in feeds:
            raise BadInput(f"input '{name}' is given twice")
        expected = v2_datatype(spec.type)
        if tensor.get("datatype") != expected:
            raise BadInput(f"input '{name}' is {expected} in the model, got datatype {tensor.get('datatype')!r}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadInput(f"input '{name}': binary_data_size {size!r} runs past the {len(binary)} bytes of binary data")
            feeds[name] = decode_v2_binary(name, expected, tensor.get("shape"), binary[offset : offset + size], spec.shape)
            offset += size
        elif "data" in tensor:
            feeds[name] = decode_v2(name, expected, tensor.get("shape"), tensor["data"], spec.shape)
        else:
            raise BadInput(f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size")
    missing = [name for name in specs if name not in feeds]
    if missing:
        raise BadInput(f"input(s) {', '.join(repr(m) for m in missing)} missing for model '{model.id}'")
    return feeds


def _wanted_outputs(model: Model, body: dict[str, Any]) -> list[tuple[str, bool]]:
    """Return (output name, as binary) for each output to send, in the order asked."""
    default_binary = bool((body.get("parameters") or {}).get("binary_data_output", False))
    asked = body.get("outputs")
    if asked is None:
        return [(spec.name, default_binary) for spec in model.outputs]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise BadInput("field 'outputs' must be a list of objects with a 'name'")
    known = {spec.name for spec in model.outputs}
    wanted = []
    for output in asked:
        if output["name"] not in known:
            raise BadInput(f"model '{model.id}' has no output named '{output['name']}'; its outputs are {', '.join(sorted(known))}")
        wanted.append((output["name"], bool((output.get("parameters") or {}).get("binary_data", default_binary))))
    return wanted


def _response(model: Model, body: dict[str, Any], wanted: list[tuple[str, bool]], results: list[Any]):
    types = {spec.name: spec.type for spec in model.outputs}
    outputs, payloads = [], []
    for (name, binary), value in zip(wanted, results, strict=True):
        tensor, payload = encode_v2(name, types[name], value, binary)
        outputs.append(tensor)
        if payload is not None:
            payloads.append(payload)
    document: dict[str, Any] = {"model_name": model.id, "model_version": model.version, "outputs": outputs}
    if "id" in body:
        document["id"] = body["id"]
    header = dumps(document)
    if not any(binary for _, binary in wanted):
        return Reply(header)
    return Reply(header + b"".join(payloads), content_type="application/octet-stream", headers=((HEADER_LENGTH, str(len(header))),))
