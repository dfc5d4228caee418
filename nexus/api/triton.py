"""Triton's model configuration and statistics extensions of the Open Inference Protocol.

What ``perf_analyzer`` and tritonclient's ``get_model_config`` / ``get_inference_statistics``
ask for, on the same models as the V2 routes (Triton's protocol/extension_model_configuration.md
and extension_statistics.md):

- ``GET /v2/models/<name>[/versions/<version>]/config``: the configuration Triton's onnxruntime
  backend would fill in for the model (its "auto-complete"), as JSON.
- ``GET /v2/models/stats``, ``GET /v2/models/<name>[/versions/<version>]/stats``: each model's
  prediction counts and durations, summed over every gunicorn worker from the Prometheus
  metrics the server already keeps (``metrics.model_statistics``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from nexus.api import nexus, require_predict_token
from nexus.api.v2 import PLATFORM, metadata_shape
from nexus.inference import resolve
from nexus.http import json_response
from nexus.observability import metrics
from nexus.registry import Model
from nexus.runtime import TensorSpec
from nexus.tensors import DTYPES, v2_datatype

bp = Blueprint("triton", __name__, url_prefix="/v2")

BACKEND = "onnxruntime"
# Triton's model-config names of the element types, by V2 datatype: "TYPE_" + the V2 name, except
# that V2's BYTES is Triton's TYPE_STRING.
CONFIG_DATATYPES = {d.v2: "TYPE_" + ("STRING" if d.v2 == "BYTES" else d.v2) for d in DTYPES}
# The max_batch_size reported for a model whose every input and output has a dynamic first
# dimension. Any value > 0 tells clients that dimension is a batch (perf_analyzer then sends
# [batch, *dims] with its -b, 1 by default, instead of refusing the model's dynamic shape). The
# server neither batches requests together nor enforces this number: a request's batch is
# bounded only by NEXUS_MAX_REQUEST_MB.
MAX_BATCH_SIZE = 1024


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    require_predict_token()
    return json_response(config_of(_model(name, version)))


@bp.get("/models/stats")
def all_model_stats():
    require_predict_token()
    return json_response({"model_stats": statistics_of(nexus().registry.models())})


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
def model_stats(name: str, version: str | None = None):
    require_predict_token()
    if version is None:  # every version of the model, as Triton answers
        models = [m for m in nexus().registry.models() if m.id == name] or [_model(name, None)]
    else:
        models = [_model(name, version)]
    return json_response({"model_stats": statistics_of(models)})


# -- model configuration ------------------------------------------------------------------------


def config_of(model: Model) -> dict[str, Any]:
    """Return the model's configuration as Triton's onnxruntime backend would auto-complete it.

    Batching follows that backend's rule: when every input and output has a dynamic first
    dimension, ``max_batch_size`` is above 0 and ``dims`` leave that dimension out; otherwise
    ``max_batch_size`` is 0 and ``dims`` are the whole shape. Shapes are those of
    ``GET /v2/models/<id>`` (-1 for dynamic). Unlike that backend, a tensor left with no dims
    (a batched [-1]) gets ``dims: []``, not ``dims: [1]`` with a ``reshape``: this server takes
    such a tensor as [batch], never [batch, 1].
    """
    inputs = [(spec, metadata_shape(spec)) for spec in model.inputs]
    outputs = [(spec, metadata_shape(spec)) for spec in model.outputs]
    batching = all(shape and shape[0] == -1 for _, shape in inputs + outputs)
    skip = 1 if batching else 0
    return {
        "name": model.id,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": {"all": {}},  # every version uploaded is served (which one answers is the model's routing)
        "max_batch_size": MAX_BATCH_SIZE if batching else 0,
        "input": [
            {"name": spec.name, "data_type": _data_type(spec), "format": "FORMAT_NONE", "dims": shape[skip:],
             "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}
            for spec, shape in inputs
        ],
        "output": [
            {"name": spec.name, "data_type": _data_type(spec), "dims": shape[skip:], "label_filename": "", "is_shape_tensor": False}
            for spec, shape in outputs
        ],
    }


def _data_type(spec: TensorSpec) -> str:
    return CONFIG_DATATYPES.get(v2_datatype(spec.type) or "", "TYPE_INVALID")


# -- statistics ---------------------------------------------------------------------------------


def statistics_of(models: list[Model]) -> list[dict[str, Any]]:
    """Return Triton's ``model_stats`` entries for ``models``, summed over every worker.

    Each prediction request (``/predict`` and V2 infer alike) is one inference and one
    execution: the server does not batch requests together and does not count the samples in
    a batch. ``success``/``fail`` are the requests answered with and without an error and their
    whole durations; ``compute_infer`` is the time inside onnxruntime. There is no scheduler
    queue, and decoding and encoding are not timed apart: ``queue``, ``compute_input`` and
    ``compute_output`` carry the run count with 0 ns (perf_analyzer needs the four counts equal,
    and a growing queue count to find the model's stats).
    """
    totals = metrics.model_statistics((model.id, model.version) for model in models)
    entries = []
    for model in models:
        stats = totals[model.id, model.version]
        runs = {"count": stats.runs, "ns": 0}
        entries.append({
            "name": model.id,
            "version": model.version,
            "last_inference": round(stats.last_success * 1000),
            "inference_count": stats.success,
            "execution_count": stats.success,
            "inference_stats": {
                "success": {"count": stats.success, "ns": _ns(stats.success_seconds)},
                "fail": {"count": stats.failure, "ns": _ns(stats.failure_seconds)},
                "queue": runs,
                "compute_input": runs,
                "compute_infer": {"count": stats.runs, "ns": _ns(stats.run_seconds)},
                "compute_output": runs,
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [],
        })
    return entries


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _model(name: str, version: str | None) -> Model:
    return resolve(nexus().registry, name, version)
