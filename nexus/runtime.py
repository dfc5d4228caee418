"""One loaded model: its onnxruntime session and the description of its inputs and outputs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from nexus.errors import BadInput, InferenceFailed, InvalidModel
from nexus.onnx_scan import ProtobufError, uses_external_data
from nexus.tensors import DType, dtype_for

# onnxruntime prints its own warnings to stderr as plain text; our logs are JSON only.
ort.set_default_logger_severity(3)

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE_LOCATION = re.compile(r"/\S*onnxruntime\S*\.(?:cc|h|cpp):\d+\s+(?:[\w:<>~,* ]+\([^)]*\)\s*)?")
_MAX_REASON = 300


def short_reason(exc: BaseException) -> str:
    """Return onnxruntime's error message without its code prefix, source paths or excess length."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _SOURCE_LOCATION.sub("", _ORT_PREFIX.sub("", text)).strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the model declares it; ``dtype`` is None for maps and sequences."""

    name: str
    type: str
    shape: tuple[int, ...]
    dtype: DType | None

    def info(self) -> dict[str, Any]:
        """Return the seed API's TensorInfo: ONNX element-type number, shape with -1, type string."""
        return {"name": self.name, "dtype": self.dtype.onnx if self.dtype else 0, "shape": list(self.shape), "type": self.type}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, arg.type, shape, dtype_for(arg.type))


def session_options(threads: int) -> ort.SessionOptions:
    """Return options for one session: ``threads`` intra-op threads, no inter-op pool, quiet logs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


class Runtime:
    """A live onnxruntime session for one model file's bytes."""

    def __init__(self, data: bytes, threads: int) -> None:
        try:
            external = uses_external_data(data)
        except ProtobufError as exc:
            raise InvalidModel(f"file is not an ONNX model: {exc}") from None
        if external:
            raise InvalidModel("model stores tensors as external data, which this server does not accept; embed the weights in the .onnx file")
        # Sessions are built from bytes, never from a path, so nothing the model names can
        # reach another file in the model directory.
        try:
            self.session = ort.InferenceSession(data, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes for every kind of bad model
            raise InvalidModel(f"file is not a loadable ONNX model: {short_reason(exc)}") from None
        self.inputs = tuple(_spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self.input_by_name = {i.name: i for i in self.inputs}

    def run(self, feeds: Mapping[str, np.ndarray], output_names: list[str] | None = None) -> list[Any]:
        """Run the model on ``feeds`` and return the asked outputs (all by default) in order."""
        try:
            return self.session.run(output_names or self.output_names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
            raise BadInput(f"the model rejected the input: {short_reason(exc)}") from None
        except Exception as exc:
            raise InferenceFailed(f"inference failed inside the model: {short_reason(exc)}") from None
