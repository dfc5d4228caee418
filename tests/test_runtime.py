"""nexus.runtime: sessions that cannot read files, runs stopped at their deadline, a capped arena."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nexus import runtime
from nexus.config import Settings, with_overrides
from nexus.errors import InferenceMemoryLimit, InferenceTimeout, InvalidModel
from nexus.runtime import Runtime, short_reason
from tests import hostile_models, models

SECRET = b"TOP-SECRET-BYTES"


def limits(**overrides):
    return with_overrides(Settings(), overrides).limits


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("raw", "kept", "gone"),
    [
        ('[ONNXRuntimeError] : 1 : FAIL : External data path does not exist: "/tmp/nexus-no-files-x1/secret.txt"',
         "External data path does not exist", "/tmp"),
        ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/framework/tensorprotoutils.cc:619 "
         "ValidateExternalDataPathFromDir External data path validation failed", "validation failed", ".cc:"),
        ("size to read: 16 given file_length: 4096 are out of bounds", "out of bounds", "4096"),
        ("cannot open /work/main/.env for reading", "cannot open", ".env"),
    ],
)
def test_reasons_never_carry_paths_sizes_or_source_locations(raw, kept, gone):
    reason = short_reason(RuntimeError(raw))
    assert kept in reason and gone not in reason


def test_a_model_with_external_data_is_refused_by_name():
    with pytest.raises(InvalidModel, match="external data"):
        Runtime(hostile_models.external_initializer("secret.txt"), 1)


def test_a_model_the_walk_missed_still_reads_no_file(tmp_path, monkeypatch):
    """The second wall: even with the protobuf walk switched off, the session finds no file."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)  # where onnxruntime resolves a relative location by default
    monkeypatch.setattr(runtime, "uses_external_data", lambda data: False)
    for data in (hostile_models.external_initializer("secret.txt"), hostile_models.external_constant("secret.txt"),
                 hostile_models.external_function_default("secret.txt")):
        try:
            loaded = Runtime(data, 1)
        except InvalidModel as exc:
            assert "/" not in exc.message.replace("<path>", ""), exc.message
            continue
        outputs = loaded.run({"X": np.zeros(1, np.float32)})  # if it loaded at all, it holds no secret
        assert all(SECRET not in np.asarray(o).tobytes() for o in outputs)


def test_a_run_past_its_deadline_is_stopped_and_the_session_keeps_serving():
    model = Runtime(hostile_models.endless_loop(), 1, limits(inference_timeout_s=0.5))
    started = time.monotonic()
    with pytest.raises(InferenceTimeout, match=r"0\.5 s \(NEXUS_INFERENCE_TIMEOUT_S\)"):
        model.run({"M": np.array([10**12], np.int64)})
    assert 0.5 <= time.monotonic() - started < 2.0
    assert model.run({"M": np.array([3], np.int64)})  # the same session answers the next request


def test_a_run_over_the_memory_cap_fails_alone_and_a_large_one_gives_memory_back():
    model = Runtime(hostile_models.fill(), 1)  # the process's arena cap: the default 1024 MB
    idle = resident_mb()
    with pytest.raises(InferenceMemoryLimit, match="NEXUS_MAX_INFERENCE_MEMORY_MB"):
        model.run({"shape": np.array([400 * 1024 * 1024], np.int64)})  # 1.6 GB of float32
    assert resident_mb() < idle + 100
    model.run({"shape": np.array([100 * 1024 * 1024], np.int64)})  # 400 MB: allowed
    assert resident_mb() < idle + 100  # the arena shrank back after the run
    assert Runtime(models.identity(), 1).run({"X": np.ones((1, 4), np.float32)})[0].tolist() == [[1, 1, 1, 1]]


def test_a_session_keeps_no_copy_of_the_model_bytes():
    import sys

    data = models.mlp(in_features=64, hidden=256)
    before = sys.getrefcount(data)
    runtime = Runtime(data, 1)
    assert sys.getrefcount(data) == before  # onnxruntime's wrapper holds no reference to the upload's bytes
    out = runtime.run({runtime.inputs[0].name: np.zeros((1, 64), np.float32)})
    assert out[0].shape[0] == 1
