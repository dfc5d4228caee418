"""POST /predict: the seed API's prediction on one model.

``handle`` works on the WSGI environ so the middleware serves this hot route without a Flask
request context; Flask knows the route only for its url map.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from nexus import inference
from nexus.api import check_predict_token
from nexus.clock import utc_now
from nexus.errors import BadInput
from nexus.http import (
    CALL_ENVIRON,
    REQUEST_ID_ENVIRON,
    Reply,
    dumps,
    read_json_body,
    request_id_of,
    version_and_key,
)
from nexus.ids import valid_request_id
from nexus.inference import Call, InferenceRequest, Input
from nexus.tensors import decode_features, encode_output, flatten_output

bp = Blueprint("predict", __name__)


def handle(app_state, environ: dict[str, Any]) -> Reply:
    """Answer one ``POST /predict``."""
    check_predict_token(app_state.settings, environ)
    body = read_json_body(environ, app_state.settings.max_request_bytes)
    model_id = _model_id(body)
    request_id = _request_id(environ, body)
    version, key = version_and_key(environ, body.get("version"), body.get("routing_key"))
    call = environ[CALL_ENVIRON] = Call()
    answer = inference.infer(app_state.registry, InferenceRequest(model_id, _inputs(body), None, version, key, request_id), call)
    outputs = {spec.name: encode_output(value) for spec, value in answer.outputs}
    prediction = flatten_output(answer.outputs[0][1])
    call.finish()
    return Reply(dumps({
        "model_id": answer.model.id,
        "model_version": answer.model.version,
        "request_id": request_id,
        "prediction": prediction,
        "outputs": outputs,
        "latency_ms": call.latency_ms,
        "timestamp": utc_now(),
    }))


# The route is declared for the url map (405s, OPTIONS, the OpenAPI document) without a Flask view:
# the middleware serves every POST to it with ``handle`` (nexus.hot_routes names the endpoint).
bp.add_url_rule("/predict", endpoint="predict", methods=["POST"])


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model_id")
    if model_id is None:
        raise BadInput("field 'model_id' is missing")
    if not isinstance(model_id, str) or not model_id:
        raise BadInput("field 'model_id' must be a non-empty string")
    return model_id


def _request_id(environ: dict[str, Any], body: dict[str, Any]) -> str:
    if "request_id" in body:
        given = body["request_id"]
        if not valid_request_id(given):
            raise BadInput("field 'request_id' must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        environ[REQUEST_ID_ENVIRON] = given  # the client named this request: headers and logs follow
    return request_id_of(environ)


def _inputs(body: dict[str, Any]) -> list[Input]:
    """Read ``features`` (the model's only input) or ``inputs`` (any model, by name)."""
    if "features" in body and "inputs" in body:
        raise BadInput("send either 'features' or 'inputs', not both")
    if "features" in body:
        return [Input(None, _values(body["features"]))]
    given = body.get("inputs")
    if given is None:
        raise BadInput("field 'features' (or 'inputs' for models with several inputs) is missing")
    if not isinstance(given, dict):
        raise BadInput("field 'inputs' must be an object mapping input names to values")
    return [Input(name, _values(values)) for name, values in given.items()]


def _values(values: Any):
    """A flat list is one sample, a nested list the tensor itself (``tensors.decode_features``)."""
    return lambda name, dtype, declared: decode_features(name, values, dtype, declared)
