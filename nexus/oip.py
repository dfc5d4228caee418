"""What the Open Inference Protocol says about the server and its models, for every protocol that speaks it.

V2 over REST (``nexus/api/v2.py``, ``nexus/api/triton.py``) and over gRPC (``nexus/rpc``) render
these same descriptions, each in its own wire format: server metadata, model metadata, and
Triton's model configuration and statistics extensions (what ``perf_analyzer`` and tritonclient's
``get_model_config`` / ``get_inference_statistics`` ask for; Triton's
protocol/extension_model_configuration.md and extension_statistics.md).
"""

from __future__ import annotations

from typing import Any

from nexus import __version__
from nexus.observability import metrics
from nexus.registry import Entry, Model
from nexus.runtime import TensorSpec
from nexus.tensors import DTYPES, v2_datatype

SERVER_NAME = "model-nexus"
# "statistics" is served too but not advertised: perf_analyzer, seeing it, reads model versions
# as integers and aborts on one like "v1.0.0".
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]
PLATFORM = "onnxruntime_onnx"
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


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def model_metadata(entry: Entry, model: Model) -> dict[str, Any]:
    """The V2 metadata of ``model`` (a version of ``entry``), listing every version of the model."""
    return {
        "name": model.id,
        "versions": entry.versions,
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(spec) for spec in model.inputs],
        "outputs": [_tensor_metadata(spec) for spec in model.outputs],
    }


def metadata_shape(spec: TensorSpec) -> list[int]:
    """The shape V2 reports for a tensor: its declared one, or [-1, -1] for a map or sequence (a ZipMap)."""
    return list(spec.shape) if spec.dtype is not None else [-1, -1]


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_datatype(spec.type) or spec.type, "shape": metadata_shape(spec)}


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
