"""Hostile ONNX models, built in memory, for the tests that prove the server withstands them.

Every builder returns the serialized ModelProto. Nothing is downloaded and no file is written.

**Reading files of the server (external data).** An ONNX tensor may keep its bytes in another
file (``data_location = EXTERNAL``, ``external_data = {location, offset, length}``);
onnxruntime opens that file relative to the model's directory, or to the working directory when
the model is given as bytes. The ``external_*`` builders make a model whose first output ``Y``
(uint8 ``[length]``) is exactly the first ``length`` bytes of the file ``location`` names, so a
server that let such a model load would hand the file to whoever asks for a prediction. Each
model also has a float input ``X`` ``[1]`` and a second output ``Z = X``, so it looks like an
ordinary model to the API. The variants hide the external tensor in every place a tensor can
live (graph initializers, Constant nodes, subgraphs, sparse tensors, model-local functions and
their attribute defaults, training info) and in encodings that a naive protobuf walk misreads
(an over-long field key, an over-long enum value) while protobuf's C++ parser, the one
onnxruntime links, reads them as ordinary fields.

**Exhausting memory or time.** :func:`load_time_bomb` (about 170 bytes, about 1.8 GB while
onnxruntime constant-folds it at session creation), :func:`endless_loop` (a Loop whose trip
count is an input), :func:`fill` (a ConstantOfShape whose shape is an input),
:func:`slow_to_load` (seconds of constant folding) and :func:`string_identity` (string inputs,
whose naive numpy conversion takes the longest string's width for every element).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8
FUNCTION_DOMAIN = "nexus.hostile"

# The key of ModelProto.graph (field 7, wire type 2) as a 5-byte varint whose low 32 bits are
# 0x3A: protobuf's C++ parser keeps the low 32 bits of a tag, so it reads the graph; a walk that
# decodes the key as a 64-bit number sees field 536870919 and skips it. Python's protobuf (upb)
# refuses such a key as corrupt, onnx's C++ helpers (checker, shape inference) read it.
WIDE_KEY_HIGH = 0x10


# -- external-data tensors ----------------------------------------------------------------------


def external_tensor(name: str, location: str, length: int, offset: int = 0, data_type: int = TensorProto.UINT8,
                    data_location: bool = True, entries: bool = True) -> TensorProto:
    """A 1-D tensor of ``length`` elements whose bytes are in the file ``location`` at ``offset``.

    ``data_location=False`` leaves the ``data_location`` field unset (only the ``external_data``
    entries say where the bytes are); ``entries=False`` sets ``data_location = EXTERNAL`` alone.
    """
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.extend([length])
    if data_location:
        tensor.data_location = TensorProto.EXTERNAL
    if entries:
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def _io(length: int):
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.UINT8, [length]),
               helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1])]
    return inputs, outputs


def _leak_model(nodes, length: int, initializers=(), sparse=(), functions=(), opsets=()) -> onnx.ModelProto:
    """A model whose output Y is the tensor ``W`` that ``nodes`` or the initializers make, and Z = X."""
    inputs, outputs = _io(length)
    graph = helper.make_graph([*nodes, helper.make_node("Identity", ["X"], ["Z"])], "leak", inputs, outputs,
                              list(initializers), sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[*OPSET, *opsets], ir_version=IR_VERSION, functions=list(functions))


def external_initializer(location: str = "secret.txt", length: int = 16, offset: int = 0) -> bytes:
    """(a)/(b) A graph initializer ``W`` stored as external data at ``location`` (relative, absolute or ``../``)."""
    return _leak_model([helper.make_node("Identity", ["W"], ["Y"])], length,
                       [external_tensor("W", location, length, offset)]).SerializeToString()


def external_entries_only(location: str = "secret.txt", length: int = 16) -> bytes:
    """An initializer with ``external_data`` entries but ``data_location`` left unset."""
    return _leak_model([helper.make_node("Identity", ["W"], ["Y"])], length,
                       [external_tensor("W", location, length, data_location=False)]).SerializeToString()


def external_location_only(location: str = "secret.txt", length: int = 16) -> bytes:
    """An initializer with ``data_location = EXTERNAL`` and no ``external_data`` entry at all."""
    return _leak_model([helper.make_node("Identity", ["W"], ["Y"])], length,
                       [external_tensor("W", location, length, entries=False)]).SerializeToString()


def external_constant(location: str = "secret.txt", length: int = 16) -> bytes:
    """(c) A Constant node whose ``value`` attribute is an external tensor."""
    node = helper.make_node("Constant", [], ["W"], value=external_tensor("value", location, length))
    return _leak_model([node, helper.make_node("Identity", ["W"], ["Y"])], length).SerializeToString()


def external_sparse_constant(location: str = "secret.txt", length: int = 16) -> bytes:
    """A Constant node whose ``sparse_value`` has external values (every position listed)."""
    node = helper.make_node("Constant", [], ["W"], sparse_value=_sparse(location, length))
    return _leak_model([node, helper.make_node("Identity", ["W"], ["Y"])], length).SerializeToString()


def _sparse(location: str, length: int, name: str = "W") -> onnx.SparseTensorProto:
    values = external_tensor(name, location, length)
    indices = numpy_helper.from_array(np.arange(length, dtype=np.int64), name + "_indices")
    return helper.make_sparse_tensor(values, indices, [length])


def external_sparse_initializer(location: str = "secret.txt", length: int = 16) -> bytes:
    """A sparse graph initializer whose values are external."""
    return _leak_model([helper.make_node("Identity", ["W"], ["Y"])], length,
                       sparse=[_sparse(location, length)]).SerializeToString()


def external_in_subgraph(location: str = "secret.txt", length: int = 16) -> bytes:
    """An If node whose branches each hold an external initializer in their own subgraph."""

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", [name], [name + "_out"])], name + "_branch", [],
                                 [helper.make_tensor_value_info(name + "_out", TensorProto.UINT8, [length])],
                                 [external_tensor(name, location, length)])

    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cond"))
    choose = helper.make_node("If", ["cond"], ["Y"], then_branch=branch("then_w"), else_branch=branch("else_w"))
    return _leak_model([cond, choose], length).SerializeToString()


def external_in_graphs_attribute(location: str = "secret.txt", length: int = 16) -> bytes:
    """A node of a custom domain with a GRAPHS attribute (a list of graphs) holding an external initializer.

    onnxruntime has no kernel for it; it is here for the scanner, which must look into lists of graphs.
    """
    inner = helper.make_graph([], "inner", [], [helper.make_tensor_value_info("W", TensorProto.UINT8, [length])],
                              [external_tensor("W", location, length)])
    node = helper.make_node("Custom", ["X"], ["Y"], domain="nexus.custom")
    node.attribute.append(helper.make_attribute("graphs", [inner]))
    return _leak_model([node], length, opsets=[helper.make_opsetid("nexus.custom", 1)]).SerializeToString()


def external_in_tensors_attribute(location: str = "secret.txt", length: int = 16) -> bytes:
    """A node of a custom domain with a TENSORS attribute (a list of tensors), one of them external (scanner only)."""
    node = helper.make_node("Custom", ["X"], ["Y"], domain="nexus.custom")
    node.attribute.append(helper.make_attribute("tensors", [external_tensor("W", location, length)]))
    return _leak_model([node], length, opsets=[helper.make_opsetid("nexus.custom", 1)]).SerializeToString()


def external_in_training_info(location: str = "secret.txt", length: int = 16) -> bytes:
    """A normal graph, plus a ``training_info`` initialization graph with an external initializer (scanner only)."""
    model = onnx.load_from_string(string_identity())
    init = helper.make_graph([], "init", [], [], [external_tensor("W", location, length)])
    algorithm = helper.make_graph([], "step", [], [])
    info = model.training_info.add()
    info.initialization.CopyFrom(init)
    info.algorithm.CopyFrom(algorithm)
    return model.SerializeToString()


def _leak_function(body, attribute_protos=(), attributes=()) -> onnx.FunctionProto:
    return helper.make_function(FUNCTION_DOMAIN, "Leak", ["inp"], ["out"], body, OPSET,
                                attributes=list(attributes), attribute_protos=list(attribute_protos))


def external_function_default(location: str = "secret.txt", length: int = 16) -> bytes:
    """(e) A model-local function whose tensor attribute ``w`` defaults to an external tensor.

    The function's Constant takes its value from ``w`` (``ref_attr_name``); the graph calls the
    function without giving ``w``, so the default is what onnxruntime inlines and loads.
    """
    constant = helper.make_node("Constant", [], ["w"])
    constant.attribute.append(helper.make_attribute_ref("value", AttributeProto.TENSOR, ref_attr_name="w"))
    body = [constant, helper.make_node("Identity", ["w"], ["out"])]
    default = helper.make_attribute("w", external_tensor("w_default", location, length))
    function = _leak_function(body, attribute_protos=[default])
    call = helper.make_node("Leak", ["X"], ["Y"], domain=FUNCTION_DOMAIN)
    return _leak_model([call], length, functions=[function],
                       opsets=[helper.make_opsetid(FUNCTION_DOMAIN, 1)]).SerializeToString()


def external_function_body(location: str = "secret.txt", length: int = 16) -> bytes:
    """A model-local function whose body holds a Constant with an external ``value``."""
    body = [helper.make_node("Constant", [], ["w"], value=external_tensor("value", location, length)),
            helper.make_node("Identity", ["w"], ["out"])]
    call = helper.make_node("Leak", ["X"], ["Y"], domain=FUNCTION_DOMAIN)
    return _leak_model([call], length, functions=[_leak_function(body)],
                       opsets=[helper.make_opsetid(FUNCTION_DOMAIN, 1)]).SerializeToString()


def embedded_function_default(length: int = 16) -> bytes:
    """The function-default model of :func:`external_function_default` with an embedded tensor (a normal model)."""
    constant = helper.make_node("Constant", [], ["w"])
    constant.attribute.append(helper.make_attribute_ref("value", AttributeProto.TENSOR, ref_attr_name="w"))
    body = [constant, helper.make_node("Identity", ["w"], ["out"])]
    tensor = numpy_helper.from_array(np.arange(length, dtype=np.uint8), "w_default")
    function = _leak_function(body, attribute_protos=[helper.make_attribute("w", tensor)])
    call = helper.make_node("Leak", ["X"], ["Y"], domain=FUNCTION_DOMAIN)
    return _leak_model([call], length, functions=[function],
                       opsets=[helper.make_opsetid(FUNCTION_DOMAIN, 1)]).SerializeToString()


# -- protobuf encodings that hide a field from a naive walk --------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    """The protobuf varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def wide_key(number: int, wire: int, high: int = WIDE_KEY_HIGH) -> bytes:
    """The key of (``number``, ``wire``) padded to a 5-byte varint whose 5th byte is ``high``.

    Bits 28-31 of the key live in the low nibble of the 5th byte, so for a field number below
    2**25 ``high`` must keep that nibble zero for the low 32 bits to stay the real key;
    ``high = 0x10`` sets bit 32, which protobuf's C++ parser drops.
    """
    key = (number << 3) | wire
    if key >= 1 << 28 or high & 0x0F or high >= 0x80:
        raise ValueError("the key must fit in 28 bits and the 5th byte may only set bits 32-34")
    groups = [(key >> shift) & 0x7F for shift in (0, 7, 14, 21)]
    return bytes([g | 0x80 for g in groups] + [high])


def _split(message: bytes):
    """Yield (field number, wire type, key bytes, value bytes) of each field of ``message``.

    The key is read the way protobuf's C++ parser reads it (low 32 bits); the value of a
    length-delimited field is its content, without the length.
    """
    pos = 0
    while pos < len(message):
        start = pos
        key, pos = _varint(message, pos)
        key &= 0xFFFFFFFF
        field, wire = key >> 3, key & 7
        key_bytes = message[start:pos]
        if wire == 0:
            value_start = pos
            _, pos = _varint(message, pos)
            yield field, wire, key_bytes, message[value_start:pos]
        elif wire == 2:
            length, body = _varint(message, pos)
            pos = body + length
            yield field, wire, key_bytes, message[body:pos]
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield field, wire, key_bytes, message[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire} is not expected in an ONNX model")
        if pos > len(message):
            raise ValueError("the message ends inside a field")


def edit(data: bytes, path: tuple[int, ...], change) -> bytes:
    """Return ``data`` with every submessage at ``path`` replaced by ``change(its bytes)``.

    ``path`` lists length-delimited field numbers from the top-level message (``(7, 5)``: the
    graph's initializers); ``()`` is the message itself. Lengths are re-encoded, keys kept as they are.
    """
    if not path:
        return change(data)
    out = bytearray()
    for field, wire, key_bytes, value in _split(data):
        if wire == 2 and field == path[0]:
            inner = edit(value, path[1:], change)
            out += key_bytes + encode_varint(len(inner)) + inner
        elif wire == 2:
            out += key_bytes + encode_varint(len(value)) + value
        else:
            out += key_bytes + value
    return bytes(out)


def rewrite_keys(data: bytes, number: int, wire: int, path: tuple[int, ...] = (), high: int = WIDE_KEY_HIGH) -> bytes:
    """Re-encode every key of field ``number`` (wire type ``wire``) of the messages at ``path`` as :func:`wide_key`."""

    def widen(message: bytes) -> bytes:
        out = bytearray()
        for field, field_wire, key_bytes, value in _split(message):
            if field == number and field_wire == wire:
                key_bytes = wide_key(field, wire, high)
            out += key_bytes + (encode_varint(len(value)) if field_wire == 2 else b"") + value
        return bytes(out)

    return edit(data, path, widen)


def external_wide_graph_tag(location: str = "secret.txt", length: int = 16, high: int = WIDE_KEY_HIGH) -> bytes:
    """(d) :func:`external_initializer` with ModelProto.graph's key as a 5-byte varint (see ``WIDE_KEY_HIGH``).

    The key's bytes are ``BA 80 80 80 10``: 0x3A (field 7, wire type 2) plus bit 32.
    """
    return rewrite_keys(external_initializer(location, length), 7, 2, high=high)


def external_wide_tensor_keys(location: str = "secret.txt", length: int = 16) -> bytes:
    """:func:`external_initializer` with the graph key, the initializer key and the tensor's
    ``data_location`` key (field 14, varint) all 5-byte varints with bit 32 set."""
    data = external_initializer(location, length)
    data = rewrite_keys(data, 14, 0, path=(7, 5))  # initializer's data_location
    data = rewrite_keys(data, 5, 2, path=(7,))     # graph.initializer
    return rewrite_keys(data, 7, 2)                # model.graph


def external_wide_enum(location: str = "secret.txt", length: int = 16) -> bytes:
    """:func:`external_initializer` with ``data_location`` encoded as 2**32 + 1.

    protobuf's C++ parser truncates an enum to 32 bits, so it reads EXTERNAL (1).
    """
    overlong = encode_varint(14 << 3) + encode_varint((1 << 32) | TensorProto.EXTERNAL)

    def replace_location(tensor: bytes) -> bytes:
        kept = b"".join(key + (encode_varint(len(value)) if wire == 2 else b"") + value
                        for field, wire, key, value in _split(tensor) if field != 14)
        return kept + overlong

    return edit(external_initializer(location, length), (7, 5), replace_location)


# -- memory and time ----------------------------------------------------------------------------


def load_time_bomb(elements: int = 225_000_000) -> bytes:
    """(f) About 170 bytes that take about 1.8 GB while onnxruntime creates the session.

    ``Expand(1.0, [elements])`` has only constant inputs, so the session's constant folding
    computes it (900 MB of float32, under onnxruntime's 1 GiB cap per folded node) and keeps a
    second copy as the folded initializer before ReduceMax folds it to one number. Running the
    model afterwards is trivial: Y = X + 1.
    """
    nodes = [
        helper.make_node("Expand", ["one", "shape"], ["big"]),
        helper.make_node("ReduceMax", ["big"], ["top"], keepdims=0),
        helper.make_node("Add", ["X", "top"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "bomb",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array([elements], np.int64), "shape")],
    )
    return _checked(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION))


def endless_loop() -> bytes:
    """(g) A Loop whose trip count is the input ``M`` (int64 ``[1]``); ``M = 10**12`` runs for days.

    Each iteration adds 1 to a counter (so the loop cannot be optimised away); the output ``Y``
    (int64 ``[1]``) is the final counter, ``M`` itself for a loop that finishes.
    """
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["count_in", "one"], ["count_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_in", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_out", TensorProto.INT64, [1])],
        [numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["M"], ["trips"]), helper.make_node("Loop", ["trips", "cond", "zero"], ["Y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("M", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.INT64, [1])],
        [numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    return _checked(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION))


def fill() -> bytes:
    """(h) ``ConstantOfShape(shape)`` of float32 ones with ``shape`` an input (int64 ``[1]``), then ReduceMax.

    A request with ``shape = [400_000_000]`` needs 1.6 GB of working memory and answers ``[1.0]``;
    the output ``Y`` (float ``[1]``) stays one number whatever the size.
    """
    ones = numpy_helper.from_array(np.array([1.0], np.float32), "value")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=ones),
         helper.make_node("ReduceMax", ["big"], ["Y"], keepdims=1)],
        "fill",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    return _checked(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION))


def slow_to_load(size: int = 3000, matmuls: int = 6) -> bytes:
    """(i) A model of about 400 bytes whose session takes seconds to create (about 4 s on one core here).

    Two ConstantOfShape ``[size, size]`` matrices and a chain of ``matmuls`` MatMuls on them
    have constant inputs only, so the session's constant folding computes the chain (``size**3``
    multiply-adds each, on one thread) before the session exists; it keeps a few hundred MB
    while it does. Running it is trivial: ``Y = X + sum(chain)`` on float ``[1]``.
    """
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["m0"], value=numpy_helper.from_array(np.array([1e-3], np.float32))),
        helper.make_node("ConstantOfShape", ["shape"], ["w"], value=numpy_helper.from_array(np.array([5e-4], np.float32))),
    ]
    nodes += [helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]) for i in range(matmuls)]
    nodes += [helper.make_node("ReduceSum", [f"m{matmuls}"], ["total"], keepdims=0), helper.make_node("Add", ["X", "total"], ["Y"])]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([size, size], np.int64), "shape")],
    )
    return _checked(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION))


def string_identity() -> bytes:
    """(j) Y = X on tensor(string) ``[None]``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "strings",
        [helper.make_tensor_value_info("X", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.STRING, [None])],
    )
    return _checked(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION))


def _checked(model: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(model)
    return model.SerializeToString()


# The external-data variants, by name: each takes (location, length) and returns model bytes.
# ``ORT_READS`` are the ones onnxruntime 1.32 really opens the file for (checked by
# tests/test_onnx_scan.py against a relative location, when the model is given as bytes).
EXTERNAL_VARIANTS = {
    "initializer": external_initializer,
    "entries_only": external_entries_only,
    "location_only": external_location_only,
    "constant": external_constant,
    "sparse_constant": external_sparse_constant,
    "sparse_initializer": external_sparse_initializer,
    "subgraph": external_in_subgraph,
    "graphs_attribute": external_in_graphs_attribute,
    "tensors_attribute": external_in_tensors_attribute,
    "training_info": external_in_training_info,
    "function_default": external_function_default,
    "function_body": external_function_body,
    "wide_graph_tag": external_wide_graph_tag,
    "wide_tensor_keys": external_wide_tensor_keys,
    "wide_enum": external_wide_enum,
}
ORT_READS = ("initializer", "constant", "sparse_constant", "sparse_initializer", "subgraph", "function_default",
             "function_body", "wide_graph_tag", "wide_tensor_keys", "wide_enum")
