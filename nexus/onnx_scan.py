"""A minimal protobuf walk over an ONNX file that finds tensors stored as external data.

onnxruntime resolves an external tensor's ``location`` against a directory, so an uploaded model
could read files of the server as its weights. We refuse such models with a clear message before
onnxruntime sees them. This is the first of several walls, not the only one: sessions are also
told to resolve external data inside an empty directory (``runtime.session_options``), and
uploads are first opened in a sandboxed child whose working directory is empty (``sandbox``).

The walk reads the wire format the way protobuf's C++ parser (the one onnxruntime links) does:
a tag is truncated to 32 bits and an enum to 32 bits, so an over-long encoding cannot hide a
field from us. It visits every message that can hold a tensor (graphs, nodes, attributes,
functions and their attribute defaults, training info, sparse tensors) and skips every other
field (raw weights included) without copying it.
"""

from __future__ import annotations

# Field numbers from onnx.proto (they are part of the wire format and never change).
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node", 11: "attribute"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_LOCATION = b"location"  # the external_data entry that names the file
_UINT32 = 0xFFFFFFFF
# An ORT-format (flatbuffer) model carries this file identifier at offset 4; onnxruntime would
# load it from bytes by another path than the ONNX one, so it is refused rather than walked.
_ORT_FORMAT_ID = b"ORTM"

_KIND_FIELDS = {
    "model": _MODEL,
    "training": _TRAINING,
    "function": _FUNCTION,
    "graph": _GRAPH,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
}
_MAX_DEPTH = 64


class ProtobufError(ValueError):
    """Raised when the bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtobufError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) of a length-delimited field)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        key &= _UINT32  # protobuf keeps the low 32 bits of an over-long tag and reads the field
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ProtobufError("length-delimited field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > end:
            raise ProtobufError("field runs past its message")


def _external_location(buf: memoryview, start: int, end: int) -> str | None:
    """Return where the tensor's data lives when it is external ("" when it names no location), else None."""
    external, location = False, ""
    for number, wire, value in _fields(buf, start, end):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            key = entry = b""
            for field, kind, span in _fields(buf, *value):
                if kind == 2 and field in (1, 2):
                    text = bytes(buf[span[0]:span[1]])
                    key, entry = (text, entry) if field == 1 else (key, text)
            if key == _LOCATION:
                location = entry.decode("utf-8", "replace")
        elif number == _TENSOR_DATA_LOCATION and wire == 0 and value & _UINT32 == _EXTERNAL:
            external = True
    return location if external else None


def uses_external_data(data: bytes | memoryview) -> bool:
    """Tell whether any tensor in the serialized ModelProto ``data`` points at external data."""
    return bool(external_locations(data, first=True))


def external_locations(data: bytes | memoryview, first: bool = False) -> set[str]:
    """Return the files the tensors in the serialized ModelProto ``data`` name as their external data
    ("" for one that names none); with ``first``, stop at the first such tensor."""
    found: set[str] = set()
    buf = memoryview(data)
    if bytes(buf[4:8]) == _ORT_FORMAT_ID:
        raise ProtobufError("this is an ORT-format file; upload the .onnx model instead")
    stack = [("model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ProtobufError("messages nested too deeply")
        if kind == "tensor":
            location = _external_location(buf, start, end)
            if location is not None:
                found.add(location)
                if first:
                    return found
            continue
        wanted = _KIND_FIELDS[kind]
        for number, wire, value in _fields(buf, start, end):
            child = wanted.get(number)
            if child is not None and wire == 2:
                stack.append((child, value[0], value[1], depth + 1))
    return found


_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 4, 5
_ATTRIBUTE_GRAPHS = (6, 11)
_TENSOR_NAME = 8
_PREPACKED = "prepacked_"  # onnxruntime's external_data entries for a weight's pre-packed forms: "<op>+<kernel>|<offset>;<length>;..."


def weights_read(graph: bytes | memoryview) -> int:
    """Return how many bytes of its external weights file a session of the serving graph ``graph``
    holds: each weight's pre-packed forms, and its form as stored unless every node that reads it
    runs on a pre-packed form (then onnxruntime never reads it). Raise ProtobufError if unsure."""
    buf = memoryview(graph)
    weights: dict[str, tuple[int, dict[str, int]]] = {}  # name -> (stored length, pre-packed op -> length)
    readers: dict[str, set[str]] = {}  # name -> op types of the nodes that read it
    model = dict((number, value) for number, wire, value in _fields(buf, 0, len(buf)) if wire == 2)
    if 7 not in model:
        raise ProtobufError("no graph")
    graphs = [(*model[7], 0)]
    while graphs:
        start, end, depth = graphs.pop()
        if depth > _MAX_DEPTH:
            raise ProtobufError("graphs nested too deeply")
        for number, wire, value in _fields(buf, start, end):
            if wire != 2:
                continue
            if number == _GRAPH_INITIALIZER and depth == 0:
                name, entry = _stored_weight(buf, *value)
                if entry is not None:
                    weights[name] = entry
            elif number == _GRAPH_NODE:
                op, inputs = "", []
                for field, kind, span in _fields(buf, *value):
                    if kind != 2:
                        continue
                    if field == _NODE_OP_TYPE:
                        op = bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")
                    elif field == _NODE_INPUT:
                        inputs.append(bytes(buf[span[0]:span[1]]).decode("utf-8", "replace"))
                    elif field == _NODE_ATTRIBUTE:
                        graphs.extend((*g, depth + 1) for f, k, g in _fields(buf, *span) if k == 2 and f in _ATTRIBUTE_GRAPHS)
                for name in inputs:
                    readers.setdefault(name, set()).add(op)
    total = 0
    for name, (length, packed) in weights.items():
        total += sum(packed.values())
        if not packed or not readers.get(name, set()) <= set(packed):
            total += length
    return total


def _stored_weight(buf: memoryview, start: int, end: int) -> tuple[str, tuple[int, dict[str, int]] | None]:
    """Return an initializer's name and, when it is external, its stored length and pre-packed forms' lengths by op."""
    name, entries = "", {}
    for number, wire, value in _fields(buf, start, end):
        if wire == 2 and number == _TENSOR_NAME:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif wire == 2 and number == _TENSOR_EXTERNAL_DATA:
            pair = {field: bytes(buf[span[0]:span[1]]).decode("utf-8", "replace") for field, kind, span in _fields(buf, *value) if kind == 2}
            entries[pair.get(1, "")] = pair.get(2, "")
    if "location" not in entries:
        return name, None
    try:
        packed: dict[str, int] = {}
        for key, text in entries.items():
            if key.startswith(_PREPACKED):
                kernel, _, spans = text.partition("|")
                op = kernel.partition("+")[0]
                packed[op] = packed.get(op, 0) + sum(int(span.split(";")[1]) for span in spans.split("|"))
        return name, (int(entries["length"]), packed)
    except (KeyError, ValueError, IndexError):
        raise ProtobufError(f"unreadable external data entry of weight {name!r}") from None
