"""POST /predict: the seed API's prediction on one model.

``handle`` works on the WSGI environ so the middleware can serve this hot route without a Flask
request context; the Flask view below routes the same function (405s, OPTIONS, the url map).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, request

from nexus.api import check_predict_token, nexus
from nexus.errors import BadInput
from nexus.http import REQUEST_ID_ENVIRON, Reply, dumps, read_json_body, request_id_of, to_response, utc_now, valid_request_id
from nexus.observability import metrics
from nexus.registry import Model
from nexus.tensors import decode_features, encode_output, flatten_output

bp = Blueprint("predict", __name__)
ROUTE = "/predict"


def handle(app_state, environ: dict[str, Any]) -> Reply:
    """Answer one ``POST /predict``."""
    check_predict_token(app_state.settings, environ)
    body = read_json_body(environ, app_state.settings.max_request_bytes)
    model = app_state.registry.get(_model_id(body))
    request_id = _request_id(environ, body)
    started = time.perf_counter()
    timer = metrics.prediction(environ, model.id)
    results = timer.run(model.runtime, feeds(model, body))
    outputs = {spec.name: encode_output(value) for spec, value in zip(model.outputs, results, strict=True)}
    timer.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return Reply(dumps({
        "model_id": model.id,
        "request_id": request_id,
        "prediction": flatten_output(results[0]),
        "outputs": outputs,
        "latency_ms": timer.latency_ms,
        "timestamp": utc_now(),
    }))


@bp.post(ROUTE)
def predict():
    return to_response(handle(nexus(), request.environ))


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


def feeds(model: Model, body: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode ``features`` (single-input models) or ``inputs`` (any model) into onnxruntime feeds."""
    specs = model.inputs
    if "features" in body and "inputs" in body:
        raise BadInput("send either 'features' or 'inputs', not both")
    if "features" in body:
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise BadInput(f"model '{model.id}' has {len(specs)} inputs ({names}); send 'inputs': {{name: values}} instead of 'features'")
        spec = specs[0]
        return {spec.name: decode_features(spec.name, body["features"], _tensor_dtype(spec), spec.shape)}
    given = body.get("inputs")
    if given is None:
        raise BadInput("field 'features' (or 'inputs' for models with several inputs) is missing")
    if not isinstance(given, dict):
        raise BadInput("field 'inputs' must be an object mapping input names to values")
    unknown = sorted(set(given) - {s.name for s in specs})
    if unknown:
        raise BadInput(f"model '{model.id}' has no input named {', '.join(repr(u) for u in unknown)}")
    missing = [s.name for s in specs if s.name not in given]
    if missing:
        raise BadInput(f"input(s) {', '.join(repr(m) for m in missing)} missing for model '{model.id}'")
    return {s.name: decode_features(s.name, given[s.name], _tensor_dtype(s), s.shape) for s in specs}


def _tensor_dtype(spec):
    if spec.dtype is None:
        raise BadInput(f"input '{spec.name}' has type {spec.type}, which cannot be sent as JSON")
    return spec.dtype
