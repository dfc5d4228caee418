"""The OpenAPI 3.1 document of every route (REST API and V2), served at ``/openapi.json``.

Postman imports it as a collection whose requests (with "Parameter generation: Example") run as
they are against the demo model; schemathesis fuzzes the server from it. Its facts come from the
code that enforces them: ids from ``nexus.store``, V2 datatypes from ``nexus.tensors``, error
codes, statuses and meanings from ``nexus.errors``. Tests check it against the url map, the
README's error table and the demo model.
"""

from __future__ import annotations

from typing import Any

from nexus import __version__, config
from nexus.errors import (
    ApiError,
    BadInput,
    InferenceFailed,
    InferenceMemoryLimit,
    InferenceTimeout,
    InvalidModel,
    ModelBusy,
    ModelLoading,
    ModelLoadTimeout,
    ModelNotFound,
    ModelTooLarge,
    ModelUnavailable,
    ModelUnloaded,
    MonitoringOff,
    NotReady,
    RecordsOff,
    RecordsUnavailable,
    StorageFull,
    StorageNotWritable,
    StorageUnavailable,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
    VersionExists,
    VersionInUse,
    VersionNotFound,
)
from nexus.http import ROUTING_KEY_HEADER, VERSION_HEADER
from nexus.ids import REQUEST_ID_PATTERN
from nexus.records.recorder import MAX_LABELS
from nexus.routing import MAX_ROUTING_KEY
from nexus.store import ID_PATTERN, ID_RULE, RESERVED_IDS, VERSION_PATTERN, VERSION_RULE
from nexus.tensors import DTYPES

JSON = "application/json"

# The demo model (models/iris.onnx, README) and its real requests: every example below is one of them, so an
# imported collection runs against a fresh server as it is (tests/test_openapi.py sends each one).
DEMO_ID = "iris"
DEMO_NAME = "Iris classifier (logistic regression)"
DEMO_VERSION = "v1.0.0"
DEMO_INPUT = "input"
DEMO_SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]

# What the codec decodes (a datatype without a numpy type, like BF16, is refused).
V2_DATATYPES = [d.v2 for d in DTYPES if d.numpy is not None]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error_schema(codes: list[str]) -> dict[str, Any]:
    return {"allOf": [_ref("Error"), {"properties": {"code": {"enum": codes}}}]}


def _when(kind: type[ApiError]) -> str:
    """What an error means, from its class's docstring ("404: raise when <this>.")."""
    return (kind.__doc__ or "").partition("raise when ")[2].strip().rstrip(".")


_ERROR_HEADERS: dict[type[ApiError], dict[str, Any]] = {
    Unauthorized: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ModelLoading: {
        "Retry-After": {
            "description": "With model_loading: seconds to wait before asking again",
            "schema": {"type": "integer"},
        }
    },
}


def _errors(*kinds: type[ApiError]) -> dict[str, Any]:
    """The error responses of an operation raising ``kinds``: one per status, each code and its meaning."""
    by_status: dict[int, list[type[ApiError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    responses = {}
    for status, group in sorted(by_status.items()):
        meaning = "; ".join(f"{k.code}: {_when(k)}" for k in group)
        response = _json(_error_schema([k.code for k in group]), meaning)
        headers = {name: header for k in group for name, header in _ERROR_HEADERS.get(k, {}).items()}
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


# What the operations raise, by what they do.
_FINDS_A_MODEL = (
    BadInput, Unauthorized, ModelNotFound, ModelUnavailable, ModelUnloaded, ModelLoading, StorageUnavailable
)
_RUNS_A_MODEL = (*_FINDS_A_MODEL, TooLarge, InferenceMemoryLimit, InferenceFailed, InferenceTimeout)
_CLAIMS_AN_ID = (BadInput, Unauthorized, ModelBusy, StorageNotWritable, StorageUnavailable, StorageFull)


def _op(summary: str, ok: dict[str, Any], errors: tuple[type[ApiError], ...] = (), tag: str = "models",
        body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {**ok, **_errors(*errors)}, **extra}
    if Unauthorized in errors:
        op["security"] = [{"bearer": []}, {}]  # needed where NEXUS_API_TOKEN (and NEXUS_PROTECT_PREDICT) say
    if body is not None:
        op["requestBody"] = body
    return op


def _json_body(schema: dict[str, Any], examples: dict[str, tuple[str, Any]], required: bool = True,
               **other: Any) -> dict[str, Any]:
    """A JSON request body with named examples (name: (summary, value)); ``other`` media types after it."""
    named = {name: {"summary": summary, "value": value} for name, (summary, value) in examples.items()}
    return {"required": required, "content": {JSON: {"schema": schema, "examples": named}, **other}}


def _text(description: str, media_type: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


_ID_SCHEMA = {
    "type": "string",
    "pattern": f"^{ID_PATTERN}$",
    "description": f"A model id: {ID_RULE}; not {' or '.join(sorted(RESERVED_IDS))} (they name routes: {', '.join(RESERVED_IDS.values())})",
}


def _path_param(name: str, schema: dict[str, Any], example: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "example": example}


_MODEL_ID = _path_param("model_id", _ID_SCHEMA, DEMO_ID)
_NAME = _path_param("name", _ID_SCHEMA, DEMO_ID)
_VERSION = _path_param("version", {"type": "string", "description": "The model's version, as uploaded"},
                       DEMO_VERSION)
_PIN_HEADER = {"name": VERSION_HEADER, "in": "header", "required": False, "example": DEMO_VERSION,
               "schema": {"type": "string"}, "description": "Answer with this version instead of the one the routing chooses"}
_KEY_HEADER = {"name": ROUTING_KEY_HEADER, "in": "header", "required": False, "example": "user-42",
               "schema": {"type": "string", "maxLength": MAX_ROUTING_KEY},
               "description": "Requests with the same key get the same version under a given routing"}
_ANSWERED_BY = {VERSION_HEADER: {"description": "The version that answered", "schema": {"type": "string"}}}
_UPLOAD_VERSION = {"type": "string", "pattern": f"^{VERSION_PATTERN}$", "description": f"A new version: {VERSION_RULE}"}

def _routing_view(version: dict[str, Any]) -> dict[str, Any]:
    """A model's routing, the default it makes and each version's share, with its versions as ``version``."""
    return {
        "type": "object",
        "required": ["model_id", "routing", "default", "traffic", "shadow", "versions"],
        "properties": {
            "model_id": {"type": "string"},
            "routing": _ref("Routing"),
            "default": {"type": "string", "description": "The version that is the default now"},
            "traffic": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "Each version's percent of the routed traffic"},
            "shadow": {"type": "object", "additionalProperties": {"type": "number"}},
            "versions": {"type": "array", "items": version, "description": "Oldest first"},
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "request_id"],
        "properties": {
            "error": {"type": "string", "description": "One sentence saying what is wrong"},
            "code": {"type": "string", "description": "Stable snake_case code"},
            "request_id": {"type": "string"},
        },
    },
    "TensorInfo": {
        "type": "object",
        "required": ["name", "dtype", "shape", "type"],
        "properties": {
            "name": {"type": "string"},
            "dtype": {"type": "integer", "description": "ONNX element type number; 0 for maps and sequences"},
            "shape": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "-1 for a dynamic dimension",
            },
            "type": {"type": "string", "examples": ["tensor(float)", "seq(map(int64,tensor(float)))"]},
        },
    },
    "MonitoringReport": {
        "type": "object",
        "description": "One version's monitoring, merged over every worker of the server (README: Monitoring)",
        "required": ["model_id", "version", "task", "reference", "windows", "confidence", "classes", "output", "drift"],
        "properties": {
            "model_id": {"type": "string"},
            "version": {"type": "string"},
            "task": {"type": "object", "required": ["kind", "output", "declared"],
                     "properties": {"kind": {"enum": ["classifier", "regressor"]}, "output": {"type": ["string", "null"]},
                                    "declared": {"type": "boolean"}}},
            "reference": {"type": "object", "required": ["source", "rows", "features", "collecting"],
                          "properties": {"source": {"enum": ["upload", "predictions", None]}, "rows": {"type": ["integer", "null"]},
                                         "features": {"type": "array", "items": {"type": "string"}},
                                         "collecting": {"type": ["object", "null"]}}},
            "windows": {"type": "object", "required": ["window", "last_n"]},
            "confidence": {"type": ["object", "null"]},
            "classes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "output": {"type": ["object", "null"]},
            "drift": {"type": "object", "required": ["status", "window", "last_n"],
                      "properties": {"status": {"enum": ["ok", "warn", "alert", "insufficient", "no_reference"]},
                                     "window": {"type": ["object", "null"]}, "last_n": {"type": ["object", "null"]}}},
        },
    },
    "FeedbackItem": {
        "type": "object",
        "required": ["request_id", "truth"],
        "additionalProperties": False,
        "properties": {
            "request_id": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN}(/[0-9]{{1,9}})?$",
                           "description": "The prediction's request id (X-Request-ID), with /<row> for a row of a batch"},
            "truth": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 256}, {"type": "number"}],
                      "description": "The true class (string or integer) of a classifier, or the true value (number) of a regressor"},
        },
    },
    "FeedbackAnswer": {
        "type": "object",
        "required": ["model_id", "received", "matched", "duplicate", "unknown", "expired", "items"],
        "properties": {
            "model_id": {"type": "string"},
            **{name: {"type": "integer"} for name in ("received", "matched", "duplicate", "unknown", "expired")},
            "items": {"type": "array", "items": {
                "type": "object", "required": ["request_id", "outcome"],
                "properties": {"request_id": {"type": "string"}, "outcome": {"enum": ["matched", "duplicate", "unknown", "expired"]},
                               "version": {"type": "string"}, "predicted": {}, "correct": {"type": "boolean"},
                               "error": {"type": "number", "description": "predicted - truth (regressor)"}}}},
        },
    },
    "PerformanceReport": {
        "type": "object",
        "description": "One version's accuracy from the labels received (README: Feedback and accuracy)",
        "required": ["model_id", "version", "task", "windows", "timeline"],
        "properties": {
            "model_id": {"type": "string"},
            "version": {"type": "string"},
            "task": {"type": "object", "properties": {"kind": {"enum": ["classifier", "regressor", None]},
                                                      "output": {"type": ["string", "null"]}}},
            "windows": {"type": "object", "required": ["hour", "day", "since_upload"],
                        "additionalProperties": {"type": "object", "required": ["seconds", "labels"]}},
            "timeline": {"type": "object", "required": ["bucket_seconds", "points"],
                         "properties": {"bucket_seconds": {"type": "integer"}, "points": {"type": "array", "items": {"type": "object"}}}},
        },
    },
    "ModelSummary": {
        "type": "object",
        "required": ["id", "name", "version", "path"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "path": {"type": "string"},
        },
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
            "model_id": _ID_SCHEMA,
            "features": {
                "type": "array",
                "description": "Single-input models: a flat list is one sample, a nested list the tensor",
            },
            "inputs": {
                "type": "object",
                "additionalProperties": {"type": "array"},
                "description": "Input name to values, each read like 'features'",
            },
            "request_id": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN}$"},
            "version": {"type": "string", "description": f"Pin a version (as the {VERSION_HEADER} header does)"},
            "routing_key": {"type": "string", "maxLength": MAX_ROUTING_KEY,
                            "description": f"As the {ROUTING_KEY_HEADER} header: the same key gets the same version"},
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["model_id", "model_version", "request_id", "prediction", "outputs", "latency_ms", "timestamp"],
        "properties": {
            "model_id": {"type": "string"},
            "model_version": {"type": "string", "description": "The version that answered"},
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
            "datatype": {"type": "string", "enum": V2_DATATYPES},
            "parameters": {"type": "object"},
            "data": {"type": "array", "description": "Flat or nested, row-major"},
        },
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {
                "binary_data_output": {"type": "boolean"},
                "routing_key": {"type": "string", "maxLength": MAX_ROUTING_KEY,
                                "description": f"As the {ROUTING_KEY_HEADER} header: the same key gets the same version"},
            }},
            "inputs": {"type": "array", "items": _ref("V2Tensor"), "minItems": 1},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
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
    "Routing": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "default": {"type": ["string", "null"], "description": "The version that answers what no canary takes; "
                                                                   "null or absent: the newest uploaded"},
            "canary": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 100},
                       "description": "Version to percent of the traffic (at most 100 in all)"},
            "shadow": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 100},
                       "description": "Version to percent of the routed requests it gets a copy of; "
                                      "its answers never reach the client"},
        },
    },
    "RoutingView": _routing_view({"type": "string"}),
    "ModelVersions": _routing_view(_ref("ModelVersion")),
    "ModelVersion": {
        "type": "object",
        "required": ["id", "version", "state", "traffic_percent", "shadow_percent"],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string", "enum": ["READY", "LOADING", "UNAVAILABLE"]},
            "reason": {"type": "string"},
            "traffic_percent": {"type": "number"},
            "shadow_percent": {"type": "number"},
        },
        "description": "A version's state and share of traffic, with its details (as ModelDetails) when it is served",
    },
    # Triton's model configuration and statistics extensions (nexus/api/triton.py).
    "TritonModelConfig": {
        "type": "object",
        "required": ["name", "platform", "backend", "max_batch_size", "input", "output"],
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string", "const": "onnxruntime_onnx"},
            "backend": {"type": "string", "const": "onnxruntime"},
            "max_batch_size": {"type": "integer", "minimum": 0,
                               "description": "Above 0 when every input and output has a dynamic first dimension, "
                                              "which dims then leave out"},
            "input": {"type": "array", "items": _ref("TritonTensorConfig")},
            "output": {"type": "array", "items": _ref("TritonTensorConfig")},
        },
    },
    "TritonTensorConfig": {
        "type": "object",
        "required": ["name", "data_type", "dims"],
        "properties": {
            "name": {"type": "string"},
            "data_type": {"type": "string", "examples": ["TYPE_FP32", "TYPE_INT64", "TYPE_STRING"]},
            "dims": {"type": "array", "items": {"type": "integer"}, "description": "-1 for a dynamic dimension"},
        },
    },
    "TritonDuration": {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}},
    },
    "TritonModelStats": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {
            "model_stats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "version", "last_inference", "inference_count", "execution_count",
                                 "inference_stats", "batch_stats"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "last_inference": {"type": "integer", "description": "Milliseconds since the epoch; 0: never"},
                        "inference_count": {"type": "integer", "minimum": 0},
                        "execution_count": {"type": "integer", "minimum": 0},
                        "inference_stats": {
                            "type": "object",
                            "required": ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                                         "cache_hit", "cache_miss"],
                            "additionalProperties": _ref("TritonDuration"),
                        },
                        "batch_stats": {"type": "array"},
                    },
                },
            }
        },
    },
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ANY_OBJECT = {"type": "object"}
_READY = {"200": _json(_ANY_OBJECT, "Ready")}
_STATS = {"200": _json(_ref("TritonModelStats"), "Statistics")}


def _infer(versioned: bool) -> dict[str, Any]:
    one = {"name": DEMO_INPUT, "shape": [1, 4], "datatype": "FP32", "data": DEMO_SAMPLES[0]}
    two = {"name": DEMO_INPUT, "shape": [2, 4], "datatype": "FP32", "data": DEMO_SAMPLES}
    examples = {
        "one": ("One sample of the demo model", {"inputs": [one]}),
        "batch": ("Two samples, only the probabilities back",
                  {"id": "42", "inputs": [two], "outputs": [{"name": "output_probability"}]}),
    }
    ok = {
        "description": "Outputs; with binary outputs, the JSON header followed by the raw tensor bytes",
        "content": {JSON: {"schema": _ref("V2InferResponse")}, "application/octet-stream": _BINARY},
        "headers": _ANSWERED_BY,
    }
    return _op(
        "Run a model (Open Inference Protocol). With the binary extension, send "
        "'Inference-Header-Content-Length' and raw tensors after the JSON.",
        {"200": ok},
        (*_RUNS_A_MODEL, VersionNotFound),
        tag="v2",
        body=_json_body(_ref("V2InferRequest"), examples, **{"application/octet-stream": _BINARY}),
        parameters=[_KEY_HEADER] if versioned else [_PIN_HEADER, _KEY_HEADER],
    )


def _v2_model_paths(versioned: bool) -> dict[str, Any]:
    """Metadata, readiness and inference of one model, at /v2/models/{name}[/versions/{version}]."""
    path = "/v2/models/{name}/versions/{version}" if versioned else "/v2/models/{name}"
    params = [_NAME, _VERSION] if versioned else [_NAME]
    finds = (*_FINDS_A_MODEL, *((VersionNotFound,) if versioned else ()))
    metadata = {"200": _json(_ref("V2ModelMetadata"), "Metadata")}
    return {
        path: {"parameters": params, "get": _op("Model metadata, V2 datatypes", metadata, finds, tag="v2")},
        f"{path}/ready": {"parameters": params, "get": _op("Whether the model is ready", _READY, finds,
                                                           tag="v2")},
        f"{path}/infer": {"parameters": params, "post": _infer(versioned)},
        f"{path}/config": {"parameters": params, "get": _op("Model configuration (Triton's model configuration extension)",
                                                            {"200": _json(_ref("TritonModelConfig"), "Configuration")},
                                                            finds, tag="v2")},
        f"{path}/stats": {"parameters": params, "get": _op("Inference statistics over every worker (Triton's statistics "
                                                           "extension)", _STATS, finds, tag="v2")},
    }


def _health_paths() -> dict[str, Any]:
    seed_health = {"200": _json({"type": "object", "required": ["status", "timestamp"]}, "OK")}
    console_file = {
        "200": {"description": "A static file", "content": {"*/*": {"schema": {"type": "string"}}}},
        "404": _json(_error_schema(["not_found"]), "not_found: no such file"),
    }
    return {
        "/health": {"get": _op("Health (seed API)", seed_health, tag="health")},
        "/health/live": {"get": _op("Liveness: the process serves HTTP", {"200": _json(_ANY_OBJECT, "Live")},
                                    tag="health")},
        "/health/ready": {"get": _op("Readiness: this worker loaded the model directory", _READY,
                                     (NotReady, StorageUnavailable), tag="health")},
        "/metrics": {"get": _op("Prometheus metrics of all workers", {"200": _text("Prometheus text format")},
                                tag="health")},
        "/": {"get": _op("The web console (HTML)", {"200": _text("The console page", "text/html")},
                         tag="health")},
        "/console/{filename}": {
            "parameters": [_path_param("filename", {"type": "string"}, "console.js")],
            "get": _op("The console's scripts and styles", console_file, tag="health"),
        },
        "/openapi.json": {"get": _op("This document", {"200": _json(_ANY_OBJECT, "OpenAPI 3.1")},
                                     tag="health")},
    }


def _v2_paths() -> dict[str, Any]:
    server = {"200": _json({"type": "object", "required": ["name", "version", "extensions"]}, "Metadata")}
    rows = {"type": "array", "items": {"type": "object", "required": ["name", "state"]}}
    index = {"200": _json(rows, "Index")}
    index_body = _json_body({"type": "object", "properties": {"ready": {"type": "boolean"}}},
                            {"ready": ("Only the models ready to serve", {"ready": True})}, required=False)
    done = {"200": _json(_ANY_OBJECT, "Done")}
    return {
        "/v2": {"get": _op("Server metadata", server, tag="v2")},
        "/v2/health/live": {"get": _op("Server liveness", {"200": _json(_ANY_OBJECT, "Live")}, tag="v2")},
        "/v2/health/ready": {"get": _op("Server readiness", _READY, (NotReady,), tag="v2")},
        # /v2/models/{name} matches this path too, for a model whose id is "stats" (as in Triton): stats win.
        "/v2/models/stats": {"get": _op("Inference statistics of every model over every worker (Triton's "
                                        "statistics extension)", _STATS, (Unauthorized, StorageUnavailable), tag="v2")},
        **_v2_model_paths(versioned=False),
        **_v2_model_paths(versioned=True),
        "/v2/repository/index": {
            "post": _op("List every model in the directory with its state", index,
                        (BadInput, Unauthorized, TooLarge, StorageUnavailable), tag="v2", body=index_body)
        },
        **{
            f"/v2/repository/models/{{name}}{part}/{verb}": {
                "parameters": params,
                "post": _op(summary + what, done, errors + ((VersionNotFound,) if part else ()), tag="v2"),
            }
            for part, params, what in (("", [_NAME], "a model (every version)"), ("/versions/{version}", [_NAME, _VERSION],
                                                                                  "one version of a model"))
            for verb, summary, errors in (
                ("unload", "Stop serving, in every worker and keeping its files, ", (*_CLAIMS_AN_ID, ModelNotFound)),
                ("load", "Serve again ", (*_CLAIMS_AN_ID, InvalidModel, ModelNotFound, ModelLoading)),
            )
        },
    }


def _model_paths() -> dict[str, Any]:
    listing = {
        "type": "object",
        "required": ["models", "count"],
        "properties": {
            "models": {"type": "array", "items": _ref("ModelSummary")},
            "count": {"type": "integer"},
        },
    }
    details = {"200": _json(_ref("ModelDetails"), "Model")}
    deleted = {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}}
    routing_view = {"200": _json(_ref("RoutingView"), "The routing, the default it makes and each version's share")}
    versions = {"200": _json(_ref("ModelVersions"), "The routing and every version, oldest first")}
    version_deleted = {"type": "object", "required": ["deleted", "version"],
                       "properties": {"deleted": {"type": "string"}, "version": {"type": "string"}}}
    routing_examples = {
        "pin": ("Every request to the demo model's version", {"default": DEMO_VERSION}),
    }
    uploaded = {"type": "object", "required": ["model", "info"],
                "properties": {"model": _ref("ModelSummary"), "info": _ANY_OBJECT}}
    upload_form = {
        "type": "object",
        "required": ["file", "id", "name", "version"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "The .onnx file"},
            "id": _ID_SCHEMA,
            "name": {"type": "string", "maxLength": 200},
            "version": _UPLOAD_VERSION,
            "reference": {"type": "string", "format": "binary",
                          "description": "Sample inputs for drift monitoring: CSV with a header row, or .npy [samples, width]"},
            "task": {"enum": ["classifier", "regressor"], "description": "What monitoring reads (detected when left out)"},
            "task_output": {"type": "string", "maxLength": 200, "description": "The output it reads"},
        },
    }
    monitoring = {"type": "object", "required": ["model_id", "thresholds", "versions"],
                  "properties": {"model_id": {"type": "string"}, "thresholds": _ANY_OBJECT,
                                 "versions": {"type": "array", "items": _ref("MonitoringReport")}}}
    performance = {"type": "object", "required": ["model_id", "versions"],
                   "properties": {"model_id": {"type": "string"}, "versions": {"type": "array", "items": _ref("PerformanceReport")}}}
    feedback_body = {"type": "array", "minItems": 1, "maxItems": MAX_LABELS, "items": _ref("FeedbackItem")}
    feedback_examples = {"labels": ("Two labels: a one-row prediction and row 1 of a batch",
                                    [{"request_id": "01a22f8d-69ea-7b9f-99c8-41364bcd0c5b", "truth": 0},
                                     {"request_id": "01a22f8d-6a01-7c2e-8f00-5d1e2c3b4a59/1", "truth": 2}])}
    predict_examples = {
        "features": ("One sample of the demo model", {"model_id": DEMO_ID, "features": DEMO_SAMPLES[0]}),
        "inputs": ("A batch of two, by input name",
                   {"model_id": DEMO_ID, "inputs": {DEMO_INPUT: DEMO_SAMPLES}}),
    }
    return {
        "/predict": {
            "post": _op("Predict with a model", {"200": {**_json(_ref("PredictResponse"), "Prediction"), "headers": _ANSWERED_BY}},
                        (*_RUNS_A_MODEL, VersionNotFound, UnsupportedMediaType),
                        body=_json_body(_ref("PredictRequest"), predict_examples), parameters=[_PIN_HEADER, _KEY_HEADER])
        },
        "/models": {"get": _op("List models", {"200": _json(listing, "Models, sorted by id")},
                               (Unauthorized, StorageUnavailable))},
        "/models/info": {
            "get": _op("Describe a model (seed API form)", details, _FINDS_A_MODEL,
                       parameters=[{"name": "id", "in": "query", "required": True, "schema": _ID_SCHEMA,
                                    "example": DEMO_ID}])
        },
        "/models/{model_id}/versions": {
            "parameters": [_MODEL_ID],
            "get": _op("A model's versions, their state and share of traffic", versions, _FINDS_A_MODEL),
        },
        "/models/{model_id}/routing": {
            "parameters": [_MODEL_ID],
            "get": _op("Which version answers: the routing and each version's share", routing_view, _FINDS_A_MODEL),
            "put": _op("Change which version answers, in every worker and replica: default, canary percentages, shadows",
                       routing_view, (*_CLAIMS_AN_ID, ModelNotFound), body=_json_body(_ref("Routing"), routing_examples)),
        },
        "/models/{model_id}/monitoring": {
            "parameters": [_MODEL_ID],
            "get": _op("Confidence, classes and input drift of each version, over all workers",
                       {"200": _json(monitoring, "The thresholds and each loaded version's monitoring")}, (*_FINDS_A_MODEL, MonitoringOff)),
        },
        "/models/{model_id}/versions/{version}/monitoring": {
            "parameters": [_MODEL_ID, _VERSION],
            "get": _op("One version's confidence, classes and input drift, over all workers",
                       {"200": _json(_ref("MonitoringReport"), "The version's monitoring")},
                       (*_FINDS_A_MODEL, VersionNotFound, MonitoringOff)),
        },
        "/models/{model_id}/feedback": {
            "parameters": [_MODEL_ID],
            "post": _op("Label past predictions by their request ids (joined in any worker or replica sharing the records)",
                        {"200": _json(_ref("FeedbackAnswer"), "Each label's outcome, and how many of each")},
                        (*_FINDS_A_MODEL, RecordsOff, RecordsUnavailable, TooLarge, UnsupportedMediaType),
                        body=_json_body(feedback_body, feedback_examples)),
        },
        "/models/{model_id}/performance": {
            "parameters": [_MODEL_ID],
            "get": _op("Accuracy (or error) of each version from the labels received: last hour, last day, since upload",
                       {"200": _json(performance, "Each loaded version's accuracy")},
                       (*_FINDS_A_MODEL, RecordsOff, RecordsUnavailable)),
        },
        "/models/{model_id}/versions/{version}/performance": {
            "parameters": [_MODEL_ID, _VERSION],
            "get": _op("One version's accuracy (or error) from the labels received",
                       {"200": _json(_ref("PerformanceReport"), "The version's accuracy")},
                       (*_FINDS_A_MODEL, VersionNotFound, RecordsOff, RecordsUnavailable)),
        },
        "/models/{model_id}/versions/{version}": {
            "parameters": [_MODEL_ID, _VERSION],
            "get": _op("Describe one version", {"200": _json(_ref("ModelVersion"), "The version")},
                       (*_FINDS_A_MODEL, VersionNotFound)),
            # The demo server's model has this one version, which answers: its example is refused (409).
            "delete": _op("Delete one version (refused while the routing sends it traffic)",
                          {"200": _json(version_deleted, "Deleted")},
                          (*_CLAIMS_AN_ID, ModelNotFound, VersionNotFound, VersionInUse), **{"x-example-status": 409}),
        },
        "/models/{model_id}": {
            "parameters": [_MODEL_ID],
            "get": _op("Describe a model (its default version, with its versions and routing)", details, _FINDS_A_MODEL),
            "delete": _op("Delete a model with all its versions from every worker", {"200": _json(deleted, "Deleted")},
                          (*_CLAIMS_AN_ID, ModelNotFound)),
        },
        "/models/upload": {
            "post": _op(
                "Upload an ONNX model, or a new version of one (the newest answers unless the routing says otherwise)",
                {"201": _json(uploaded, "Uploaded")},
                (*_CLAIMS_AN_ID, InvalidModel, VersionExists, TooLarge, UnsupportedMediaType, ModelTooLarge,
                 ModelLoadTimeout),
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": upload_form,
                            # The text fields; the file is chosen when sending.
                            "example": {"id": DEMO_ID, "name": DEMO_NAME, "version": DEMO_VERSION},
                        }
                    },
                },
            ),
        },
    }


def _paths() -> dict[str, Any]:
    """Every route, in the order an imported collection runs them (by paths or by tags): reads first, and the
    writes that change the demo model last: unload before load, delete before the upload that restores it."""
    return {**_health_paths(), **_v2_paths(), **_model_paths()}


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Model Nexus",
            "version": __version__,
            "description": "Upload ONNX models at runtime and get predictions: the Model Nexus REST API and "
                           "the Open Inference Protocol (V2). The examples are requests for the demo model "
                           f"'{DEMO_ID}'.",
        },
        "servers": [
            {"url": f"http://localhost:{config.Settings().port}", "description": "The README's quick start"},
            {"url": "/", "description": "The server this document was fetched from"},
        ],
        "tags": [{"name": "health"}, {"name": "v2"}, {"name": "models"}],  # in the order of _paths()
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "NEXUS_API_TOKEN"}
            },
        },
    }
