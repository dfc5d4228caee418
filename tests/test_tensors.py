"""The tensor codec: one datatype table, strict casts, shapes, and output encoding."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper

from nexus.errors import BadInput
from nexus.tensors import (
    BY_ONNX,
    BY_ORT,
    BY_V2,
    DTYPES,
    check_shape,
    decode_features,
    decode_v2,
    decode_v2_binary,
    decode_values,
    encode_output,
    encode_v2,
    flatten_output,
    sample_shape,
    to_array,
)


def test_the_table_is_consistent_in_every_direction():
    assert len({d.onnx for d in DTYPES}) == len({d.ort for d in DTYPES}) == len({d.v2 for d in DTYPES}) == len(DTYPES)
    for d in DTYPES:
        assert BY_ONNX[d.onnx] is BY_ORT[d.ort] is BY_V2[d.v2] is d
    assert len(BY_ONNX) == len(BY_ORT) == len(BY_V2) == len(DTYPES)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.v2)
def test_each_row_agrees_with_onnx(dtype):
    assert dtype.ort == f"tensor({TensorProto.DataType.Name(dtype.onnx).lower()})"
    if dtype.numpy is not None and dtype.numpy != np.dtype(object):
        assert helper.tensor_dtype_to_np_dtype(dtype.onnx) == dtype.numpy


@pytest.mark.parametrize(
    ("onnx_number", "ort", "v2"),
    [(1, "tensor(float)", "FP32"), (7, "tensor(int64)", "INT64"), (8, "tensor(string)", "BYTES"), (9, "tensor(bool)", "BOOL"),
     (10, "tensor(float16)", "FP16"), (11, "tensor(double)", "FP64")],
)
def test_the_seed_api_type_numbers(onnx_number, ort, v2):
    assert BY_ONNX[onnx_number].ort == ort and BY_ONNX[onnx_number].v2 == v2


@pytest.mark.parametrize(("v2", "numpy_type"), [("FP32", np.float32), ("FP64", np.float64), ("FP16", np.float16), ("INT8", np.int8),
                                                ("UINT64", np.uint64), ("BOOL", np.bool_), ("BYTES", np.object_)])
def test_v2_names_map_to_numpy(v2, numpy_type):
    assert BY_V2[v2].numpy == np.dtype(numpy_type)


@pytest.mark.parametrize(
    ("ort", "values", "words"),
    [
        ("tensor(float)", ["1"], "needs numbers"),
        ("tensor(float)", ["a", "b"], "got strings"),
        ("tensor(double)", ["1.5"], "needs numbers"),
        ("tensor(int64)", ["1"], "needs integers"),
        ("tensor(float)", [None], "null"),
        ("tensor(float)", [1.0, None], "null"),
        ("tensor(float)", [[1.0, 2.0], [None, 3.0]], "null"),
        ("tensor(int64)", [1, None], "null"),
        ("tensor(string)", ["a", None], "null"),
        ("tensor(float)", [True], "needs numbers"),
        ("tensor(int32)", [True], "needs integers"),
        ("tensor(float)", [1e39], "out of range"),
        ("tensor(float)", [-1e39], "out of range"),
        ("tensor(float16)", [70000.0], "out of range"),
        ("tensor(int32)", [1.5], "whole numbers"),
        ("tensor(int64)", [2.000001], "whole numbers"),
        ("tensor(int8)", [128], "out of range"),
        ("tensor(int8)", [-129], "out of range"),
        ("tensor(uint8)", [-1], "out of range"),
        ("tensor(uint8)", [256], "out of range"),
        ("tensor(int16)", [32768], "out of range"),
        ("tensor(int64)", [2**63], "out of range"),
        ("tensor(int64)", [2.0**63], "out of range"),
        ("tensor(uint64)", [2.0**64], "out of range"),
        ("tensor(uint64)", [2**64], "out of range"),
        ("tensor(bool)", [1], "true/false"),
        ("tensor(string)", [1], "needs strings"),
        ("tensor(float)", [{"a": 1}], "a dict value"),
        ("tensor(float)", [[1, 2], [3]], "rectangular"),
        ("tensor(float)", [[1, 2], 3], "rectangular"),
        ("tensor(string)", [["a", "b"], ["c"]], "rectangular"),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, list) else None,
)
def test_strict_casts_name_the_input(ort, values, words):
    with pytest.raises(BadInput, match=words) as info:
        to_array("X", values, BY_ORT[ort])
    assert "input 'X'" in info.value.message


@pytest.mark.parametrize(
    ("ort", "values", "expected"),
    [
        ("tensor(float)", [1, 2.5], [1.0, 2.5]),
        ("tensor(double)", [1e300, -2], [1e300, -2.0]),
        ("tensor(float16)", [1, 2], [1.0, 2.0]),
        ("tensor(int64)", [1, 2.0], [1, 2]),
        ("tensor(int8)", [-128, 127], [-128, 127]),
        ("tensor(uint8)", [0, 255], [0, 255]),
        ("tensor(int64)", [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
        ("tensor(uint64)", [0, 2**64 - 1], [0, 2**64 - 1]),
        ("tensor(uint64)", [[0, 1], [2, 2**64 - 1]], [[0, 1], [2, 2**64 - 1]]),
        ("tensor(bool)", [True, False], [True, False]),
        ("tensor(string)", ["a", "ünï", ""], ["a", "ünï", ""]),
        ("tensor(string)", [["a"], ["b"]], [["a"], ["b"]]),
    ],
)
def test_casts_that_are_exact_are_accepted(ort, values, expected):
    array = to_array("X", values, BY_ORT[ort])
    assert array.dtype == BY_ORT[ort].numpy
    assert array.tolist() == expected


@pytest.mark.parametrize(
    ("ort", "values"),
    [("tensor(int64)", [2**63 - 1, 2.0]), ("tensor(uint64)", [2**64 - 1, 2.0]), ("tensor(int64)", [2**53 + 1, 2.0])],
    ids=lambda value: repr(value) if isinstance(value, list) else None,
)
def test_big_integers_next_to_whole_floats_are_exact_or_refused(ort, values):
    try:
        array = to_array("X", values, BY_ORT[ort])
    except BadInput:
        return
    assert array.tolist() == [int(v) for v in values]


def test_an_element_type_without_numpy_is_refused_by_name():
    with pytest.raises(BadInput, match=r"tensor\(bfloat16\) is not supported"):
        to_array("X", [1.0], BY_ORT["tensor(bfloat16)"])


@pytest.mark.parametrize(
    ("count", "declared", "shape"),
    [(4, (-1, 4), (1, 4)), (4, (4,), (4,)), (7, (-1,), (7,)), (6, (-1, -1, 3), (1, 2, 3)), (6, (2, 3), (2, 3)), (1, (), ())],
)
def test_a_flat_list_is_one_sample(count, declared, shape):
    assert sample_shape("X", count, declared) == shape


@pytest.mark.parametrize(
    ("count", "declared", "words"),
    [(3, (-1, 4), "needs 4 values, got 3"), (5, (-1, -1, 3), "multiple of 3"), (4, (-1, -1, -1), "several dynamic"),
     (3, (4,), "needs 4 values, got 3"), (2, (), "scalar")],
)
def test_a_flat_list_that_does_not_fit(count, declared, words):
    with pytest.raises(BadInput, match=words) as info:
        sample_shape("X", count, declared)
    assert info.value.message.startswith("input 'X'")


def test_a_count_mismatch_says_the_shape_and_both_counts():
    with pytest.raises(BadInput) as info:
        sample_shape("X", 3, (-1, 4))
    assert info.value.message == "input 'X': shape [1, 4] needs 4 values, got 3"


@pytest.mark.parametrize(("shape", "declared"), [((2, 4), (-1, 4)), ((1, 4), (1, 4)), ((3, 2, 5), (-1, -1, 5)), ((), ())])
def test_shapes_that_fit_pass(shape, declared):
    check_shape("X", shape, declared)


@pytest.mark.parametrize(
    ("shape", "declared", "message"),
    [
        ((2, 3), (-1, 4), "input 'X' expects shape [-1, 4], got [2, 3]"),
        ((4,), (-1, 4), "input 'X' expects shape [-1, 4], got [4]"),
        ((1, 1, 4), (-1, 4), "input 'X' expects shape [-1, 4], got [1, 1, 4]"),
        ((2, 4), (1, 4), "input 'X' expects shape [1, 4], got [2, 4]"),
    ],
)
def test_shapes_that_do_not_fit_say_both_shapes(shape, declared, message):
    with pytest.raises(BadInput) as info:
        check_shape("X", shape, declared)
    assert info.value.message == message


def test_decode_features_reshapes_flat_and_keeps_nested():
    float32 = BY_ORT["tensor(float)"]
    assert decode_features("X", [1, 2, 3, 4], float32, (-1, 4)).shape == (1, 4)
    assert decode_features("X", [[1, 2, 3, 4]] * 3, float32, (-1, 4)).shape == (3, 4)
    with pytest.raises(BadInput, match="must be a list"):
        decode_features("X", 3, float32, (-1, 4))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array(["a", "b"], dtype=object), ["a", "b"]),
        (np.array([["a"], ["b"]], dtype=object), [["a"], ["b"]]),
        (np.array([1, 2], dtype=">i4"), [1, 2]),
    ],
)
def test_strings_and_foreign_byte_orders_become_lists(value, expected):
    assert encode_output(value) == expected


def test_numeric_outputs_stay_contiguous_arrays():
    plain = np.arange(4, dtype=np.float32)
    assert encode_output(plain) is plain
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    encoded = encode_output(transposed)
    assert encoded.flags.c_contiguous and encoded.tolist() == transposed.tolist()


def test_maps_and_sequences_pass_through():
    maps = [{0: 0.5, 1: 0.5}]
    assert encode_output(maps) is maps and flatten_output(maps) is maps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.arange(4).reshape(2, 2), [0, 1, 2, 3]),
        (np.array([[1.5]], dtype=np.float32), [1.5]),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), ["a", "b", "c", "d"]),
        (np.array(7, dtype=np.int64), [7]),
    ],
)
def test_flatten_output_is_one_flat_list(value, expected):
    flat = flatten_output(value)
    assert (flat.tolist() if isinstance(flat, np.ndarray) else flat) == expected


# -- the V2 codec ----------------------------------------------------------------------------------


def test_v2_json_data_may_be_flat_or_nested_and_must_fill_the_shape():
    flat = decode_v2("X", "FP32", [2, 2], [1, 2, 3, 4], (-1, 2))
    nested = decode_v2("X", "FP32", [2, 2], [[1, 2], [3, 4]], (-1, 2))
    assert flat.dtype == np.float32 and flat.tolist() == nested.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(BadInput, match=r"input 'X': shape \[2, 2\] needs 4 values, got 3"):
        decode_v2("X", "FP32", [2, 2], [1, 2, 3], (-1, 2))
    with pytest.raises(BadInput, match="at most 64"):
        decode_v2("X", "FP32", [1] * 65, [1], (-1,) * 65)


def test_v2_binary_tensors_are_little_endian_and_bytes_are_length_prefixed():
    raw = memoryview(np.array([1.5, -2.0], "<f4").tobytes())
    assert decode_v2_binary("X", "FP32", [2], raw, (-1,)).tolist() == [1.5, -2.0]
    words = b"".join(len(w).to_bytes(4, "little") + w for w in ("hé".encode(), b""))
    assert decode_v2_binary("S", "BYTES", [2], memoryview(words), (-1,)).tolist() == ["hé", ""]
    with pytest.raises(BadInput, match="ends early"):
        decode_v2_binary("S", "BYTES", [3], memoryview(words), (-1,))
    with pytest.raises(BadInput, match="needs 8 bytes, got 4"):
        decode_v2_binary("X", "FP32", [2], raw[:4], (-1,))


def test_v2_outputs_encode_as_json_or_binary_alike_and_a_zipmap_becomes_a_matrix_with_its_keys():
    values = np.array([[1.0, 2.5]], np.float32)
    as_json, none = encode_v2("Y", "tensor(float)", values, binary=False)
    as_binary, payload = encode_v2("Y", "tensor(float)", values, binary=True)
    assert none is None and as_json["data"].tolist() == [1.0, 2.5] and as_json["shape"] == [1, 2]
    assert np.frombuffer(payload, "<f4").tolist() == [1.0, 2.5] and as_binary["parameters"] == {"binary_data_size": 8}
    zipmap, _ = encode_v2("P", "seq(map(int64,tensor(float)))", [{0: 0.75, 1: 0.25}], binary=False)
    assert zipmap["datatype"] == "FP32" and zipmap["shape"] == [1, 2] and zipmap["parameters"] == {"keys": [0, 1]}
    scalar, _ = encode_v2("S", "tensor(float)", np.array(3.5, np.float32), binary=False)
    assert scalar["shape"] == [] and scalar["data"] == [3.5]


# -- typed values (gRPC's contents) --------------------------------------------------------------


@pytest.mark.parametrize(("datatype", "values", "expected"), [
    ("FP32", [1.5, -2.0], np.array([[1.5, -2.0]], np.float32)),
    ("INT8", [-128, 127], np.array([[-128, 127]], np.int8)),
    ("UINT16", [0, 65535], np.array([[0, 65535]], np.uint16)),
    ("INT64", [2**62, -(2**62)], np.array([[2**62, -(2**62)]], np.int64)),
    ("BOOL", [True, False], np.array([[True, False]])),
    ("BYTES", [b"caf\xc3\xa9", b""], np.array([["café", ""]], dtype=object)),
])
def test_typed_values_decode_to_the_datatype(datatype, values, expected):
    array = decode_values("x", datatype, [1, 2], values, (-1, 2))
    assert array.dtype == expected.dtype and array.tolist() == expected.tolist()


@pytest.mark.parametrize(("datatype", "values", "words"), [
    ("FP32", [1.0, 2.0, 3.0], "shape [1, 2] needs 2 values, got 3"),
    ("INT8", [1, 128], "INT8 integers from -128 to 127"),
    ("UINT8", [-1, 0], "UINT8 integers from 0 to 255"),
    ("BYTES", [b"\xff", b"a"], "UTF-8"),
    ("BF16", [1.0, 2.0], "unsupported datatype 'BF16'"),
])
def test_typed_values_that_do_not_fit_are_refused_with_the_reason(datatype, values, words):
    with pytest.raises(BadInput, match=re.escape(words)):
        decode_values("x", datatype, [1, 2], values, (-1, 2))


def test_typed_values_are_held_to_the_declared_shape():
    with pytest.raises(BadInput, match="input 'x'"):
        decode_values("x", "FP32", [2, 1], [1.0, 2.0], (-1, 2))
