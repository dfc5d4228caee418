"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, on the inference layer.

A thin protocol like ``nexus/api/v2.py``: each method parses its message into what the
inference layer, the registry or ``nexus.oip`` take, and renders their answer as a message.
Errors are the project's exceptions, turned into a status code and the same message REST gives
(``STATUS_CODES``) by ``_rpc``, which also gives every call its request id, its log line and
its metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from nexus import auth, inference, oip, routing
from nexus.config import MB
from nexus.errors import ApiError, BadInput, ModelNotFound, TooLarge
from nexus.http import REQUEST_ID_ENVIRON, current_request_id, serving
from nexus.ids import new_request_id, valid_request_id
from nexus.inference import Call, InferenceRequest, Input
from nexus.observability import metrics
from nexus.rpc import inference_pb2 as pb
from nexus.rpc import inference_pb2_grpc
from nexus.tensors import check_datatype, decode_v2_binary, decode_values, encode_v2

log = logging.getLogger("nexus.request")

SERVICE = "inference.GRPCInferenceService"
# The gRPC status of each HTTP status the errors carry.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# The field of InferTensorContents that holds each datatype's values (FP16 and BF16 come raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _rpc(method: Callable) -> Callable:
    """Serve one call: its request id (``x-request-id`` metadata, else a new one, sent back in the
    trailing metadata), its errors as a status, one log line and the metrics."""
    name = method.__name__

    def serve(self: Servicer, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata = dict(context.invocation_metadata())
        incoming = metadata.get("x-request-id")
        request_id = incoming if valid_request_id(incoming) else new_request_id()
        context.set_trailing_metadata((("x-request-id", request_id),))
        token = serving.set({REQUEST_ID_ENVIRON: request_id})
        call = Call()
        code, message = grpc.StatusCode.OK, None
        try:
            return method(self, request, metadata, call)
        except ApiError as exc:
            code, message = STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id, "rpc": name})
            code, message = grpc.StatusCode.INTERNAL, "internal server error; the server's log has the details"
        finally:
            seconds = time.perf_counter() - started
            _observe(name, code, seconds, request_id, call)
            serving.reset(token)
        context.abort(code, message)

    serve.__name__ = name
    return serve


def _observe(name: str, code: grpc.StatusCode, seconds: float, request_id: str, call: Call) -> None:
    metrics.observe_rpc(name, code.name, seconds)
    fields = {"request_id": request_id, "protocol": "grpc", "rpc": name, "code": code.name, "duration_ms": round(seconds * 1000, 3)}
    if call.model_id is not None:  # a prediction on a registered model
        outcome = "success" if code is grpc.StatusCode.OK else "error"
        fields.update(model_id=call.model_id, model_version=call.version, latency_ms=call.latency_ms, outcome=outcome)
        metrics.prediction_done(call.model_id, call.version, outcome, seconds)
    failed = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    log.log(logging.ERROR if failed else logging.INFO, "prediction" if call.model_id is not None else "request", extra=fields)


class Servicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The service over one worker's registry (``state`` is the app's ``Nexus``)."""

    def __init__(self, state) -> None:
        self.state = state
        self.registry = state.registry

    # -- health and metadata ---------------------------------------------------------------------

    @_rpc
    def ServerLive(self, request, metadata, call):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    def ServerReady(self, request, metadata, call):
        try:
            self.registry.check_ready()
        except ApiError:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    @_rpc
    def ModelReady(self, request, metadata, call):
        """Ready or not, as Triton answers: a model (or version) that cannot serve is ``ready: false``;
        only a worker that cannot serve at all (its directory missing, say) is UNAVAILABLE."""
        self._reader(metadata)
        try:
            self.registry.get(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    def ServerMetadata(self, request, metadata, call):
        return pb.ServerMetadataResponse(**oip.server_metadata())

    @_rpc
    def ModelMetadata(self, request, metadata, call):
        self._reader(metadata)
        entry = self.registry.entry(request.name)
        model = self.registry.version(entry, request.version or None)
        return json_format.ParseDict(oip.model_metadata(entry, model), pb.ModelMetadataResponse())

    # -- inference -------------------------------------------------------------------------------

    @_rpc
    def ModelInfer(self, request, metadata, call):
        self._reader(metadata)
        key = request.parameters["routing_key"].string_param if "routing_key" in request.parameters else None
        version, key = routing.pinned_and_key(request.model_version or metadata.get("x-model-version") or None,
                                                key or metadata.get("x-routing-key") or None)
        asked = [output.name for output in request.outputs] or None
        record_id = request.id if valid_request_id(request.id) else current_request_id()  # else the x-request-id sent back
        answer = inference.infer(self.registry, InferenceRequest(request.model_name, _inputs(request), asked, version, key, record_id),
                                 call)
        response = pb.ModelInferResponse(model_name=answer.model.id, model_version=answer.model.version, id=request.id)
        for spec, value in answer.outputs:
            tensor, payload = encode_v2(spec.name, spec.type, value, binary=True)
            output = response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            keys = tensor.get("parameters", {}).get("keys")
            if keys is not None:  # a ZipMap's class labels, in column order, as a JSON list
                output.parameters["keys"].string_param = orjson.dumps(keys).decode()
            response.raw_output_contents.append(payload)
        size, limit = response.ByteSize(), self.state.settings.grpc_max_message_mb * MB
        if size > limit:  # refused here, not by gRPC after the call, so the log and metrics say so
            raise TooLarge(f"the answer is {size / MB:.4g} MB, over the gRPC message limit of {limit / MB:g} MB "
                           "(NEXUS_GRPC_MAX_MESSAGE_MB); ask for fewer samples or outputs")
        call.finish()
        return response

    # -- Triton's extensions ---------------------------------------------------------------------

    @_rpc
    def ModelConfig(self, request, metadata, call):
        self._reader(metadata)
        config = oip.config_of(self.registry.get(request.name, request.version or None))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True))

    @_rpc
    def ModelStatistics(self, request, metadata, call):
        self._reader(metadata)
        if request.name:
            models = self.registry.versions_of(request.name, request.version or None)
        else:
            models = self.registry.models()
        stats = {"model_stats": oip.statistics_of(models)}
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_rpc
    def RepositoryIndex(self, request, metadata, call):
        self._reader(metadata)
        rows = [row for row in self.registry.index() if not request.ready or row["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @_rpc
    def RepositoryModelLoad(self, request, metadata, call):
        auth.check_token(self.state.settings, metadata.get("authorization"))
        self.registry.set_loaded(request.model_name, True, _version_parameter(request))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    def RepositoryModelUnload(self, request, metadata, call):
        auth.check_token(self.state.settings, metadata.get("authorization"))
        self.registry.set_loaded(request.model_name, False, _version_parameter(request))
        return pb.RepositoryModelUnloadResponse()

    def _reader(self, metadata: dict[str, str]) -> None:
        auth.check_predict_token(self.state.settings, metadata.get("authorization"))


def _version_parameter(request) -> str | None:
    if "version" not in request.parameters:
        return None
    version = request.parameters["version"].string_param
    if not version:
        raise BadInput("parameter 'version' must be a non-empty string")
    return version


def _inputs(request) -> list[Input]:
    """Each input with its decoder: its slice of ``raw_input_contents``, or its typed ``contents``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, or none")
    if not request.inputs:
        raise BadInput("the request has no inputs")
    return [Input(tensor.name, _decoder(tensor, raw[i] if raw else None)) for i, tensor in enumerate(request.inputs)]


def _decoder(tensor, raw: bytes | None):
    def decode(name: str, dtype, declared: tuple[int, ...]):
        check_datatype(name, tensor.datatype, dtype)
        shape = list(tensor.shape)
        if raw is not None:
            return decode_v2_binary(name, dtype.v2, shape, memoryview(raw), declared)
        field = CONTENTS_FIELD.get(dtype.v2)
        if field is None:
            raise BadInput(f"input '{name}': {dtype.v2} values have no field in 'contents'; send them in raw_input_contents")
        return decode_values(name, dtype.v2, shape, getattr(tensor.contents, field), declared)

    return decode
