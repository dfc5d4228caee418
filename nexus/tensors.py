"""The one tensor codec: JSON values <-> numpy arrays of a model's declared types and shapes.

Every API decodes through here, so a value that one route accepts is accepted by all of them,
and every message names the input it is about.
"""

from __future__ import annotations

import math
import re
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

try:  # numpy's own dtype and shape discovery, without allocating the array
    from numpy._core._multiarray_umath import _discover_array_parameters as _discover
except ImportError:  # another numpy: every value takes the exact path, correct but slower
    _discover = None

# Which kinds of inferred JSON arrays may be cast to which kinds of declared type.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "U"}
# The same, as the Python types orjson gives JSON values, for the exact path.
_ACCEPTED_TYPES = {"f": {float, int}, "i": {int, float}, "u": {int, float}, "b": {bool}, "O": {str}}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "true/false", "O": "strings"}
_TYPE_WORDS = {str: "strings", bool: "true/false", float: "numbers", int: "integers", type(None): "null"}
_INFERRED_WORDS = {"U": "strings", "b": "true/false", "f": "numbers", "i": "integers", "u": "integers"}
_RAGGED = "nested lists must be rectangular (all rows the same length)"


def dtype_for(ort_type: str) -> DType | None:
    """Return the table row for an onnxruntime type string, None for maps, sequences and others."""
    return BY_ORT.get(ort_type)


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def to_array(name: str, values: Any, dtype: DType) -> np.ndarray:
    """Turn JSON ``values`` (a number, string, bool or nested list) into an array of ``dtype``.

    Casting is strict: no strings to numbers, no null, no fractions to integers, no overflow.
    Numbers take numpy's fast path. Anything numpy would store as fixed-width strings (count x
    longest x 4 bytes: a body with one long string and many short ones would take gigabytes)
    or as objects, and integers next to floats, take the exact path, whose memory stays
    proportional to the body.
    """
    target = dtype.numpy
    if target is None:
        raise BadInput(f"input '{name}': element type {dtype.ort} is not supported over JSON")
    if _discover is None:
        return _exact(name, values, dtype)
    try:
        found, _ = _discover(values)
    except ValueError:
        raise BadInput(f"input '{name}': {_RAGGED}") from None
    if found is None:  # no elements at all
        return np.array(values, dtype=target)
    kind = found.kind
    if kind in "OUS" or (kind == "f" and target.kind in "iu"):
        return _exact(name, values, dtype)
    if kind not in _ACCEPTED_KINDS[target.kind]:
        raise BadInput(f"input '{name}' needs {_KIND_WORDS[target.kind]} ({dtype.ort}), got {_INFERRED_WORDS[kind]}")
    if target.kind == "f":
        with np.errstate(over="ignore"):
            return _finite(name, np.asarray(values, dtype=target), dtype)
    raw = np.asarray(values)
    if target.kind in "iu":
        _in_range(name, raw.min(), raw.max(), dtype)
    return raw.astype(target)


def _exact(name: str, values: Any, dtype: DType) -> np.ndarray:
    """Convert through an object array (pointers only) and Python's exact types."""
    target = dtype.numpy
    try:
        cells = np.array(values, dtype=object)
    except ValueError:
        raise BadInput(f"input '{name}': {_RAGGED}") from None
    flat = cells.ravel().tolist()
    types = set(map(type, flat))
    if list in types:
        raise BadInput(f"input '{name}': {_RAGGED}")
    if not flat:
        return cells.astype(target)
    accepted = _ACCEPTED_TYPES[target.kind]
    if not types <= accepted:
        raise BadInput(f"input '{name}' needs {_KIND_WORDS[target.kind]} ({dtype.ort}), got {_describe(types - accepted)}")
    if target.kind == "O":
        return cells
    if target.kind == "b":
        return cells.astype(target)
    if target.kind in "iu":
        if float in types:
            if not all(v.is_integer() for v in flat if type(v) is float):
                raise BadInput(f"input '{name}' needs whole numbers ({dtype.ort}), got a fraction")
            flat = [int(v) for v in flat]  # exact Python ints: no rounding through float64 next to big integers
            cells = np.array(flat, dtype=object).reshape(cells.shape)
        _in_range(name, min(flat), max(flat), dtype)
        return cells.astype(target)
    try:
        wide = cells.astype(np.float64)
    except OverflowError:  # an integer beyond any float
        raise BadInput(f"input '{name}': a value is out of range for {dtype.ort}") from None
    with np.errstate(over="ignore"):
        return _finite(name, wide.astype(target), dtype)


def _finite(name: str, array: np.ndarray, dtype: DType) -> np.ndarray:
    """Return ``array``, or raise if a value became infinite: JSON numbers are finite, so it did not fit the type."""
    if not np.isfinite(array).all():
        raise BadInput(f"input '{name}': a value is out of range for {dtype.ort}")
    return array


def _in_range(name: str, low: Any, high: Any, dtype: DType) -> None:
    info = np.iinfo(dtype.numpy)
    if low < info.min or high > info.max:
        raise BadInput(f"input '{name}': a value is out of range for {dtype.ort} [{info.min}, {info.max}]")


def _describe(types: set[type]) -> str:
    if type(None) in types:
        return "null"
    known = sorted(_TYPE_WORDS[t] for t in types if t in _TYPE_WORDS)
    if known:
        return " and ".join(known)
    return f"a {next(iter(types)).__name__} value"


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
    """Make an onnxruntime output JSON-ready: arrays stay arrays, scalars become numbers, strings lists."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:  # orjson writes arrays, not 0-d ones
            return value.item()
        if value.dtype.kind in "OUS" or value.dtype.kind == "V" or not value.dtype.isnative:
            return value.tolist()
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    return value


def flatten_output(value: Any) -> Any:
    """Return an output as a flat list (the seed API's ``prediction``); sequences stay as they are."""
    if isinstance(value, np.ndarray):
        return encode_output(value.reshape(-1))
    return value


# -- Open Inference Protocol (V2) -------------------------------------------------------------

MAX_DIMS = 64  # numpy's own limit on an array's dimensions
_MAP_VALUE = re.compile(r"^seq\(map\((\w+),\s*tensor\((\w+)\)\)\)$")


def v2_datatype(ort_type: str) -> str | None:
    """Return the V2 datatype an output of ``ort_type`` is sent as (maps as their value type)."""
    dtype = BY_ORT.get(ort_type)
    if dtype is not None:
        return dtype.v2
    match = _MAP_VALUE.match(ort_type)
    if match:
        value = BY_ORT.get(f"tensor({match.group(2)})")
        return value.v2 if value else None
    return None


def element_count(name: str, shape: Any) -> int:
    """Validate a V2 ``shape`` (a list of non-negative ints) and return its element count."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadInput(f"input '{name}': shape must be a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise BadInput(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    return math.prod(shape)


def decode_v2(name: str, datatype: str, shape: list[int], data: Any, declared: tuple[int, ...]) -> np.ndarray:
    """Decode a V2 JSON input: ``data`` flat or nested, row-major, exactly ``shape``'s element count."""
    dtype = _v2_dtype(name, datatype)
    count = element_count(name, shape)
    if not isinstance(data, list):
        raise BadInput(f"input '{name}': data must be a list")
    array = to_array(name, data, dtype)
    if array.size != count:
        raise BadInput(f"input '{name}': shape {shape_text(shape)} needs {count} values, got {array.size}")
    array = array.reshape(shape)
    check_shape(name, array.shape, declared)
    return array


def check_datatype(name: str, given: object, dtype: DType) -> None:
    """Raise BadInput unless a V2 input's ``datatype`` is the one the model declares."""
    if given != dtype.v2:
        raise BadInput(f"input '{name}' is {dtype.v2} in the model, got datatype {given!r}")


def decode_values(name: str, datatype: str, shape: list[int], values: Any, declared: tuple[int, ...]) -> np.ndarray:
    """Decode an input given as a flat sequence of typed values (gRPC's ``contents``): exactly ``shape``'s
    element count, each within the datatype's range; BYTES as UTF-8 bytes."""
    dtype = _v2_dtype(name, datatype)
    count = element_count(name, shape)
    if len(values) != count:
        raise BadInput(f"input '{name}': shape {shape_text(shape)} needs {count} values, got {len(values)}")
    if dtype.v2 == "BYTES":
        try:
            array = np.array([bytes(v).decode("utf-8") for v in values] or [], dtype=object)
        except UnicodeDecodeError:
            raise BadInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
    elif dtype.numpy.kind in "iu":
        limits = np.iinfo(dtype.numpy)
        try:
            wide = np.array(values, dtype=np.uint64 if dtype.v2 == "UINT64" else np.int64)
        except OverflowError:
            wide = None
        if wide is None or (wide.size and (wide.min() < limits.min or wide.max() > limits.max)):
            raise BadInput(f"input '{name}': values must be {datatype} integers from {limits.min} to {limits.max}")
        array = wide.astype(dtype.numpy)
    else:
        array = np.array(values, dtype=dtype.numpy)
    array = array.reshape(shape)
    check_shape(name, array.shape, declared)
    return array


def decode_v2_binary(name: str, datatype: str, shape: list[int], raw: memoryview, declared: tuple[int, ...]) -> np.ndarray:
    """Decode a V2 binary input: little-endian values, or 4-byte length-prefixed UTF-8 for BYTES."""
    dtype = _v2_dtype(name, datatype)
    count = element_count(name, shape)
    if dtype.v2 == "BYTES":
        array = np.array(_split_bytes(name, raw, count), dtype=object)
    else:
        wire = dtype.numpy.newbyteorder("<")
        if len(raw) != count * wire.itemsize:
            raise BadInput(f"input '{name}': shape {shape_text(shape)} of {datatype} needs {count * wire.itemsize} bytes, got {len(raw)}")
        array = np.frombuffer(raw, dtype=wire).astype(dtype.numpy, copy=False)
    array = array.reshape(shape)
    check_shape(name, array.shape, declared)
    return array


def _v2_dtype(name: str, datatype: Any) -> DType:
    dtype = BY_V2.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or dtype.numpy is None:
        raise BadInput(f"input '{name}': unsupported datatype {datatype!r}; use one of {', '.join(d.v2 for d in DTYPES if d.numpy is not None)}")
    return dtype


def _split_bytes(name: str, raw: memoryview, count: int) -> list[str]:
    items, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise BadInput(f"input '{name}': binary BYTES data ends early")
        size = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise BadInput(f"input '{name}': binary BYTES data ends early")
        try:
            items.append(bytes(raw[pos : pos + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise BadInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
        pos += size
    if pos != len(raw):
        raise BadInput(f"input '{name}': {len(raw) - pos} bytes left over after {count} BYTES elements")
    return items


def encode_v2(name: str, ort_type: str, value: Any, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """Encode one output as a V2 tensor: JSON ``data``, or ``binary_data_size`` plus its raw bytes.

    A sequence of maps (a ZipMap) becomes a [N, number of keys] tensor of its value type, with
    the keys, in order, in ``parameters.keys``.
    """
    parameters: dict[str, Any] = {}
    if isinstance(value, list):
        keys = list(value[0]) if value else []
        datatype = v2_datatype(ort_type) or "FP32"
        array = np.array([[row[k] for k in keys] for row in value], dtype=BY_V2[datatype].numpy).reshape(len(value), len(keys))
        parameters["keys"] = keys
    else:
        array = np.asarray(value)
        datatype = v2_datatype(ort_type) or _datatype_of(array)
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        payload = _to_bytes(array, datatype)
        parameters["binary_data_size"] = len(payload)
    else:
        payload = None
        tensor["data"] = encode_output(array.reshape(-1))
    if parameters:
        tensor["parameters"] = parameters
    return tensor, payload


def _datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    for dtype in DTYPES:
        if dtype.numpy == array.dtype:
            return dtype.v2
    raise BadInput(f"output type {array.dtype} cannot be sent over the V2 protocol")


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(len(data).to_bytes(4, "little"))
            parts.append(data)
        return b"".join(parts)
    wire = BY_V2[datatype].numpy.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=wire).tobytes()
