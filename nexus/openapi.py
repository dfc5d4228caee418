"""The OpenAPI 3.1 document of every route (REST API and V2), served at ``/openapi.json``.

Postman imports it as a collection; schemathesis fuzzes the server from it; a test checks that it
names exactly the routes of the Flask url_map.
"""

from __future__ import annotations

from typing import Any

from nexus import __version__
from nexus.store import ID_PATTERN

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "Bad input: the message says what is wrong",
        401: "The API token is required and missing or wrong",
        404: "Unknown model (or version)",
        405: "Method not allowed on this route",
        409: "The id is already registered, or being written right now",
        413: "Body over the configured limit",
        415: "Wrong content type",
        500: "Server-side failure: inference failed inside the model, or the model directory is not writable",
        503: "Not ready",
        507: "The model directory is full",
    }
    return {str(s): _json(_ref("Error"), words[s]) for s in statuses}


def _op(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None, tag: str = "models", **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses, **extra}
    if body is not None:
        op["requestBody"] = body
    return op


_ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN}$"}


def _path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


_MODEL_ID = _path_param("model_id", "Model id: 1-64 characters of A-Z a-z 0-9 . _ - not starting with '.'", _ID_SCHEMA)
_NAME = _path_param("name", "Model id", _ID_SCHEMA)
_VERSION = _path_param("version", "Model version string, as uploaded", {"type": "string", "maxLength": 64})
_COMMON = (404, 405)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "request_id"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "request_id": {"type": "string"}},
    },
    "TensorInfo": {
        "type": "object",
        "required": ["name", "dtype", "shape", "type"],
        "properties": {
            "name": {"type": "string"},
            "dtype": {"type": "integer", "description": "ONNX element type number; 0 for maps and sequences"},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1 for a dynamic dimension"},
            "type": {"type": "string", "examples": ["tensor(float)", "seq(map(int64,tensor(float)))"]},
        },
    },
    "ModelSummary": {
        "type": "object",
        "required": ["id", "name", "version", "path"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "string"}, "path": {"type": "string"}},
    },
    "ModelDetails": {
        "allOf": [
            _ref("ModelSummary"),
            {
                "type": "object",
                "required": ["inputs", "outputs", "created_at", "size_bytes", "sha256"],
                "properties": {
                    "inputs": {"type": "array", "items": _ref("TensorInfo")},
                    "outputs": {"type": "array", "items": _ref("TensorInfo")},
                    "created_at": {"type": "string"},
                    "size_bytes": {"type": "integer"},
                    "sha256": {"type": "string"},
                },
            },
        ]
    },
    "PredictRequest": {
        "type": "object",
        "required": ["model_id"],
        "oneOf": [{"required": ["features"]}, {"required": ["inputs"]}],
        "properties": {
            "model_id": {**_ID_SCHEMA, "examples": ["iris"]},
            "features": {"type": "array", "description": "Single-input models: a flat list is one sample, a nested list the tensor", "examples": [[5.1, 3.5, 1.4, 0.2]]},
            "inputs": {"type": "object", "additionalProperties": {"type": "array"}, "description": "Input name to nested list"},
            "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["model_id", "request_id", "prediction", "outputs", "latency_ms", "timestamp"],
        "properties": {
            "model_id": {"type": "string"},
            "request_id": {"type": "string"},
            "prediction": {"type": "array", "description": "The first output, flattened"},
            "outputs": {"type": "object", "description": "Every output by name; NaN and Infinity are null"},
            "latency_ms": {"type": "number"},
            "timestamp": {"type": "string"},
        },
    },
    "V2Tensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
            "parameters": {"type": "object"},
            "data": {"type": "array", "description": "Flat or nested, row-major"},
        },
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}}},
    },
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "items": _ref("V2Tensor"), "minItems": 1},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}},
            },
        },
    },
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _ref("V2Tensor")},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string", "const": "onnxruntime_onnx"},
            "inputs": {"type": "array", "items": _ref("V2TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("V2TensorMetadata")},
        },
    },
}

_INFER = _op(
    "Run a model (Open Inference Protocol). With the binary extension, send 'Inference-Header-Content-Length' and raw tensors after the JSON.",
    {
        "200": {
            "description": "Outputs; with binary outputs the body is the JSON header followed by raw tensor bytes",
            "content": {JSON: {"schema": _ref("V2InferResponse")}, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **_errors(400, 401, 404, 405, 413, 500),
    },
    {"required": True, "content": {JSON: {"schema": _ref("V2InferRequest")}, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    tag="v2",
)
_V2_METADATA = _op("Model metadata with V2 datatypes", {"200": _json(_ref("V2ModelMetadata"), "Metadata"), **_errors(400, 401, 404, 405)}, tag="v2")
_V2_READY = _op("Whether the model is ready", {"200": _json({"type": "object"}, "Ready"), **_errors(400, 401, 404, 405)}, tag="v2")
_MODEL_DETAILS = _op("Describe a model", {"200": _json(_ref("ModelDetails"), "Model"), **_errors(400, 401, 404, 405)})
_DELETE_MODEL = _op(
    "Delete a model from every worker",
    {"200": _json({"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}}, "Deleted"), **_errors(400, 401, 404, 405, 409)},
    security=[{"bearer": []}, {}],
)
_REPOSITORY_CHANGE = {"200": _json({"type": "object"}, "Done"), **_errors(400, 401, 404, 405, 409)}


def _paths() -> dict[str, Any]:
    return {
        "/models/upload": {
            "post": _op(
                "Upload an ONNX model",
                {
                    "201": _json({"type": "object", "required": ["model", "info"], "properties": {"model": _ref("ModelSummary"), "info": {"type": "object"}}}, "Uploaded"),
                    **_errors(400, 401, 405, 409, 413, 415, 500, 507),
                },
                {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "id", "name", "version"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary", "description": "The .onnx file"},
                                    "id": _ID_SCHEMA,
                                    "name": {"type": "string", "maxLength": 200},
                                    "version": {"type": "string", "maxLength": 64},
                                },
                            }
                        }
                    },
                },
                security=[{"bearer": []}, {}],
            ),
            # /models/<model_id> also matches this path for a model whose id is "upload".
            "get": _MODEL_DETAILS,
            "delete": _DELETE_MODEL,
        },
        "/predict": {
            "post": _op(
                "Predict with a model",
                {"200": _json(_ref("PredictResponse"), "Prediction"), **_errors(400, 401, 404, 405, 413, 415, 500)},
                {"required": True, "content": {JSON: {"schema": _ref("PredictRequest")}}},
            )
        },
        "/models": {
            "get": _op(
                "List models",
                {
                    "200": _json(
                        {"type": "object", "required": ["models", "count"], "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}, "count": {"type": "integer"}}},
                        "Models, sorted by id",
                    ),
                    **_errors(401, 405),
                },
            )
        },
        "/models/info": {
            "get": _op(
                "Describe a model (seed API form)",
                {"200": _json(_ref("ModelDetails"), "Model"), **_errors(400, 401, 404, 405)},
                parameters=[{"name": "id", "in": "query", "required": True, "schema": _ID_SCHEMA}],
            ),
            "delete": _DELETE_MODEL,
        },
        "/models/{model_id}": {
            "parameters": [_MODEL_ID],
            "get": _MODEL_DETAILS,
            "delete": _DELETE_MODEL,
        },
        "/health": {"get": _op("Health (seed API)", {"200": _json({"type": "object", "required": ["status", "timestamp"]}, "OK"), **_errors(*_COMMON)}, tag="health")},
        "/health/live": {"get": _op("Liveness: the process serves HTTP", {"200": _json({"type": "object"}, "Live"), **_errors(*_COMMON)}, tag="health")},
        "/health/ready": {"get": _op("Readiness: this worker loaded the model directory", {"200": _json({"type": "object"}, "Ready"), **_errors(405, 503)}, tag="health")},
        "/metrics": {
            "get": _op("Prometheus metrics of all workers", {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}, tag="health")
        },
        "/": {"get": _op("The web console (HTML)", {"200": {"description": "The console page", "content": {"text/html": {"schema": {"type": "string"}}}}}, tag="health")},
        "/console/{filename}": {
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _op("The console's scripts and styles", {"200": {"description": "A static file", "content": {"*/*": {"schema": {"type": "string"}}}}, **_errors(404)}, tag="health"),
        },
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, tag="health")},
        "/v2": {"get": _op("Server metadata", {"200": _json({"type": "object", "required": ["name", "version", "extensions"]}, "Metadata"), **_errors(*_COMMON)}, tag="v2")},
        "/v2/health/live": {"get": _op("Server liveness", {"200": _json({"type": "object"}, "Live"), **_errors(*_COMMON)}, tag="v2")},
        "/v2/health/ready": {"get": _op("Server readiness", {"200": _json({"type": "object"}, "Ready"), **_errors(405, 503)}, tag="v2")},
        "/v2/models/{name}": {"parameters": [_NAME], "get": _V2_METADATA},
        "/v2/models/{name}/versions/{version}": {"parameters": [_NAME, _VERSION], "get": _V2_METADATA},
        "/v2/models/{name}/ready": {"parameters": [_NAME], "get": _V2_READY},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [_NAME, _VERSION], "get": _V2_READY},
        "/v2/models/{name}/infer": {"parameters": [_NAME], "post": _INFER},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [_NAME, _VERSION], "post": _INFER},
        "/v2/repository/index": {
            "post": _op(
                "List every model in the directory with its state",
                {"200": _json({"type": "array", "items": {"type": "object", "required": ["name", "state"]}}, "Index"), **_errors(400, 401, 405)},
                {"required": False, "content": {JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
                tag="v2",
            )
        },
        "/v2/repository/models/{name}/load": {"parameters": [_NAME], "post": _op("Serve an unloaded model again", _REPOSITORY_CHANGE, tag="v2", security=[{"bearer": []}, {}])},
        "/v2/repository/models/{name}/unload": {
            "parameters": [_NAME],
            "post": _op("Stop serving a model in every worker, keeping its files", _REPOSITORY_CHANGE, tag="v2", security=[{"bearer": []}, {}]),
        },
    }


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Model Nexus",
            "version": __version__,
            "description": "Upload ONNX models at runtime and get predictions: the Model Nexus REST API and the Open Inference Protocol (V2).",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": "models"}, {"name": "v2"}, {"name": "health"}],
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "NEXUS_API_TOKEN"}},
        },
    }
