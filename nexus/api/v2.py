"""The Open Inference Protocol (KServe V2) over REST, with the binary tensor data and model
repository extensions, on the same registry and sessions as ``/predict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Blueprint, request

from nexus import inference, oip
from nexus.api import check_predict_token, nexus, require_predict_token, require_token
from nexus.api.health import check_ready
from nexus.errors import BadInput
from nexus.http import (
    CALL_ENVIRON,
    Reply,
    dumps,
    json_response,
    parse_json_object,
    read_body,
    request_id_of,
    version_and_key,
)
from nexus.ids import valid_request_id
from nexus.inference import Call, InferenceRequest, InferenceResponse, Input
from nexus.tensors import check_datatype, decode_v2, decode_v2_binary, encode_v2

bp = Blueprint("v2", __name__, url_prefix="/v2")

HEADER_LENGTH = "Inference-Header-Content-Length"


@bp.get("")
def server_metadata():
    return json_response(oip.server_metadata())


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
    registry = nexus().registry
    entry = registry.entry(name)
    return json_response(oip.model_metadata(entry, registry.version(entry, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    require_predict_token()
    model = inference.resolve(nexus().registry, name, version)
    return json_response({"name": model.id, "ready": True})


def handle_infer(app_state, environ: dict[str, Any], name: str, version: str | None = None) -> Reply:
    """Answer one V2 inference request (the middleware serves it without a Flask context)."""
    check_predict_token(app_state.settings, environ)
    body, binary = _read_request(environ, app_state.settings.max_request_bytes)
    if not isinstance(body.get("id", ""), str):
        raise BadInput("field 'id' must be a string; it is echoed back in the answer")
    pinned, key = version_and_key(environ, version, _parameters(body, "the request").get("routing_key"))
    call = environ[CALL_ENVIRON] = Call()
    asked, as_binary = _wanted_outputs(body)
    given = body.get("id")  # the prediction's record is filed under the client's id, else the X-Request-ID it gets back
    request = InferenceRequest(name, _inputs(body.get("inputs"), binary), asked, pinned, key,
                               given if valid_request_id(given) else request_id_of(environ))
    reply = _response(inference.infer(app_state.registry, request, call), body, as_binary)
    call.finish()
    return reply


# Declared for the url map only: the middleware serves every POST to them with ``handle_infer``.
for _rule in ("/models/<name>/infer", "/models/<name>/versions/<version>/infer"):
    bp.add_url_rule(_rule, endpoint="infer", methods=["POST"])


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
@bp.post("/repository/models/<name>/versions/<version>/load")
def repository_load(name: str, version: str | None = None):
    require_token()
    nexus().registry.set_loaded(name, True, version)
    return json_response({})


@bp.post("/repository/models/<name>/unload")
@bp.post("/repository/models/<name>/versions/<version>/unload")
def repository_unload(name: str, version: str | None = None):
    require_token()
    nexus().registry.set_loaded(name, False, version)
    return json_response({})


# -- helpers ------------------------------------------------------------------------------------


def _read_request(environ: dict[str, Any], limit: int) -> tuple[dict[str, Any], memoryview]:
    """Split the body into its JSON header and the binary tensor data after it (if any)."""
    data = read_body(environ, limit)
    raw_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
    if raw_length is None:
        return parse_json_object(data), memoryview(b"")
    if not (raw_length.isascii() and raw_length.isdigit()) or int(raw_length) > len(data):
        raise BadInput(f"header {HEADER_LENGTH} must be the JSON header's length in bytes (at most {len(data)}), got {raw_length!r}")
    split = int(raw_length)
    view = memoryview(data)
    return parse_json_object(view[:split]), view[split:]


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadInput(f"{where}: 'parameters' must be an object")
    return parameters


def _inputs(inputs: Any, binary: memoryview) -> list[Input]:
    """Read each input's name and how to decode it: JSON ``data``, or its slice of the binary data."""
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("field 'inputs' must be a non-empty list of tensors")
    read, offset = [], 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadInput("each input must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = tensor["name"]
        size = _parameters(tensor, f"input '{name}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise BadInput(f"input '{name}': binary_data_size {size!r} runs past the {len(binary)} bytes of binary data")
            read.append(Input(name, _decoder(tensor, binary[offset : offset + size])))
            offset += size
        elif "data" in tensor:
            read.append(Input(name, _decoder(tensor, None)))
        else:
            raise BadInput(f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size")
    return read


def _decoder(tensor: dict[str, Any], raw: memoryview | None):
    """Decode one V2 input once the model's type is known; its datatype must be that type."""

    def decode(name: str, dtype, declared: tuple[int, ...]) -> np.ndarray:
        check_datatype(name, tensor.get("datatype"), dtype)
        if raw is not None:
            return decode_v2_binary(name, dtype.v2, tensor.get("shape"), raw, declared)
        return decode_v2(name, dtype.v2, tensor.get("shape"), tensor["data"], declared)

    return decode


def _wanted_outputs(body: dict[str, Any]) -> tuple[list[str] | None, Callable[[str], bool]]:
    """Return the output names asked for (None: all) and whether each is sent as binary."""
    default_binary = bool(_parameters(body, "the request").get("binary_data_output", False))
    asked = body.get("outputs")
    if asked is None:
        return None, lambda name: default_binary
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise BadInput("field 'outputs' must be a list of objects with a 'name'")
    binary = {o["name"]: bool(_parameters(o, f"output '{o['name']}'").get("binary_data", default_binary)) for o in asked}
    return [o["name"] for o in asked], binary.__getitem__


def _response(answer: InferenceResponse, body: dict[str, Any], as_binary: Callable[[str], bool]) -> Reply:
    outputs, payloads = [], []
    for spec, value in answer.outputs:
        tensor, payload = encode_v2(spec.name, spec.type, value, as_binary(spec.name))
        outputs.append(tensor)
        if payload is not None:
            payloads.append(payload)
    document: dict[str, Any] = {"model_name": answer.model.id, "model_version": answer.model.version, "outputs": outputs}
    if "id" in body:
        document["id"] = body["id"]
    header = dumps(document)
    if not payloads:
        return Reply(header)
    return Reply(header + b"".join(payloads), content_type="application/octet-stream", headers=((HEADER_LENGTH, str(len(header))),))
