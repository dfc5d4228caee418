"""The one tensor codec: JSON values <-> numpy arrays of a model's declared types and shapes.

Every API decodes through here, so a value that one route accepts is accepted by all of them,
and every message names the input it is about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexus.errors import BadInput


@dataclass(frozen=True)
class DType:
    """One element type as ONNX numbers it, onnxruntime names it, numpy stores it and V2 calls it."""

    onnx: int
    ort: str
    numpy: np.dtype | None
    v2: str


# The table, written once; every lookup below is derived from it.
DTYPES: tuple[DType, ...] = (
    DType(1, "tensor(float)", np.dtype(np.float32), "FP32"),
    DType(2, "tensor(uint8)", np.dtype(np.uint8), "UINT8"),
    DType(3, "tensor(int8)", np.dtype(np.int8), "INT8"),
    DType(4, "tensor(uint16)", np.dtype(np.uint16), "UINT16"),
    DType(5, "tensor(int16)", np.dtype(np.int16), "INT16"),
    DType(6, "tensor(int32)", np.dtype(np.int32), "INT32"),
    DType(7, "tensor(int64)", np.dtype(np.int64), "INT64"),
    DType(8, "tensor(string)", np.dtype(object), "BYTES"),
    DType(9, "tensor(bool)", np.dtype(np.bool_), "BOOL"),
    DType(10, "tensor(float16)", np.dtype(np.float16), "FP16"),
    DType(11, "tensor(double)", np.dtype(np.float64), "FP64"),
    DType(12, "tensor(uint32)", np.dtype(np.uint32), "UINT32"),
    DType(13, "tensor(uint64)", np.dtype(np.uint64), "UINT64"),
    DType(16, "tensor(bfloat16)", None, "BF16"),
)
BY_ORT = {d.ort: d for d in DTYPES}
BY_V2 = {d.v2: d for d in DTYPES}
BY_ONNX = {d.onnx: d for d in DTYPES}

# Which kinds of inferred JSON arrays may be cast to which kinds of declared type.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iuf", "u": "iuf", "b": "b", "O": "U"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "true/false", "O": "strings"}


def dtype_for(ort_type: str) -> DType | None:
    """Return the table row for an onnxruntime type string, None for maps, sequences and others."""
    return BY_ORT.get(ort_type)


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def to_array(name: str, values: Any, dtype: DType) -> np.ndarray:
    """Turn JSON ``values`` (a number, string, bool or nested list) into an array of ``dtype``.

    Casting is strict: no strings to numbers, no null, no fractions to integers, no overflow.
    """
    target = dtype.numpy
    if target is None:
        raise BadInput(f"input '{name}': element type {dtype.ort} is not supported over JSON")
    try:
        raw = np.asarray(values)
    except (ValueError, TypeError):
        raise BadInput(f"input '{name}': nested lists must be rectangular (all rows the same length)") from None
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(target) if target.kind != "O" else raw.astype(object)
    if kind not in _ACCEPTED_KINDS[target.kind]:
        raise BadInput(f"input '{name}' needs {_KIND_WORDS[target.kind]} ({dtype.ort}), got {_describe(raw)}")
    if target.kind == "O":
        return raw.astype(object)
    if target.kind in "iu":
        return _to_integers(name, raw, dtype)
    if target.kind == "f" and kind == "f" and target.itemsize < 8:
        with np.errstate(over="ignore"):
            cast = raw.astype(target)
        if not np.isfinite(cast).all() and np.isfinite(raw).all():
            raise BadInput(f"input '{name}': a value is out of range for {dtype.ort}")
        return cast
    return raw.astype(target)


def _describe(raw: np.ndarray) -> str:
    if raw.dtype.kind == "O":
        sample = next((v for v in raw.flat if not isinstance(v, (int, float))), None)
        return "null" if sample is None else f"a {type(sample).__name__} value"
    return {"U": "strings", "b": "true/false", "f": "numbers", "i": "integers", "u": "integers"}[raw.dtype.kind]


def _to_integers(name: str, raw: np.ndarray, dtype: DType) -> np.ndarray:
    target = dtype.numpy
    assert target is not None
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or (raw != np.floor(raw)).any():
            raise BadInput(f"input '{name}' needs whole numbers ({dtype.ort}), got a fraction")
    info = np.iinfo(target)
    if raw.min() < info.min or raw.max() > info.max:
        raise BadInput(f"input '{name}': a value is out of range for {dtype.ort} [{info.min}, {info.max}]")
    return raw.astype(target)


def check_shape(name: str, shape: tuple[int, ...], declared: tuple[int, ...]) -> None:
    """Raise if an array of ``shape`` cannot be fed to an input declared as ``declared`` (-1 = any)."""
    if len(shape) != len(declared) or any(d != -1 and d != s for s, d in zip(shape, declared, strict=True)):
        raise BadInput(f"input '{name}' expects shape {shape_text(declared)}, got {shape_text(shape)}")


def sample_shape(name: str, count: int, declared: tuple[int, ...]) -> tuple[int, ...]:
    """Return the shape a flat list of ``count`` values takes as one sample of ``declared``.

    The batch dimension becomes 1 when it is dynamic; one other dynamic dimension is inferred.
    """
    if len(declared) <= 1:
        if declared and declared[0] not in (-1, count):
            raise BadInput(f"input '{name}': shape {shape_text(declared)} needs {declared[0]} values, got {count}")
        if not declared and count != 1:
            raise BadInput(f"input '{name}' is a scalar and needs 1 value, got {count}")
        return (count,) if declared else ()
    dims = list(declared)
    if dims[0] == -1:
        dims[0] = 1
    unknown = [i for i, d in enumerate(dims) if d == -1]
    known = math.prod(d for d in dims if d != -1)
    if len(unknown) > 1:
        raise BadInput(
            f"input '{name}' has shape {shape_text(declared)} with several dynamic dimensions; "
            "send the tensor as a nested list"
        )
    if unknown:
        if known == 0 or count % known or count == 0:
            raise BadInput(f"input '{name}': {count} values do not fill shape {shape_text(dims)} (a multiple of {known} is needed)")
        dims[unknown[0]] = count // known
    elif count != known:
        raise BadInput(f"input '{name}': shape {shape_text(dims)} needs {known} values, got {count}")
    return tuple(dims)


def decode_features(name: str, values: Any, dtype: DType, declared: tuple[int, ...]) -> np.ndarray:
    """Decode ``/predict`` features: a flat list is one sample, a nested list is the tensor itself."""
    if not isinstance(values, list):
        raise BadInput(f"input '{name}' must be a list of values, got {type(values).__name__}")
    array = to_array(name, values, dtype)
    if array.ndim == 1 and len(declared) != 1:
        return array.reshape(sample_shape(name, array.size, declared))
    check_shape(name, array.shape, declared)
    return array


def encode_output(value: Any) -> Any:
    """Make an onnxruntime output JSON-ready: arrays stay arrays, strings become lists, maps keep order."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS" or value.dtype.kind == "V" or not value.dtype.isnative:
            return value.tolist()
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    return value


def flatten_output(value: Any) -> Any:
    """Return an output as a flat list (the seed API's ``prediction``); sequences stay as they are."""
    if isinstance(value, np.ndarray):
        return encode_output(value.reshape(-1))
    return value
