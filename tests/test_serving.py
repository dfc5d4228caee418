"""The serving form: one optimized graph and one weights file per version, derived at upload, checked byte
for byte by every worker that opens it, rebuilt (never served) when it does not match its record."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nexus import registry as registry_module
from nexus import sandbox
from nexus.config import Settings
from nexus.errors import InvalidModel
from nexus.onnx_scan import external_locations
from nexus.registry import MIN_MODEL_MB, Registry
from nexus.runtime import VERSION, Runtime, check_serving_graph, derive
from nexus.store import ModelStore, file_digest
from tests import models
from tests.conftest import assert_error, files_in, upload, with_serving
from tests.test_registry import publish

X16 = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)


def conv() -> bytes:
    """Conv (16 filters of 3x3x3: 1.7 KiB of weights) + BatchNormalization + Relu on float [N, 3, 8, 8]."""
    rng = np.random.default_rng(3)
    arrays = {"W": rng.standard_normal((16, 3, 3, 3)), "B": rng.standard_normal(16), "scale": rng.random(16) + 0.5,
              "shift": rng.standard_normal(16), "mean": rng.standard_normal(16), "var": rng.random(16) + 0.5}
    return models._model(
        [helper.make_node("Conv", ["X", "W", "B"], ["C"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["C", "scale", "shift", "mean", "var"], ["N"]),
         helper.make_node("Relu", ["N"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 16, 8, 8])],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()],
    )


def reference(data: bytes, feeds: dict[str, np.ndarray]) -> list:
    """What onnxruntime answers when it runs the original bytes itself."""
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def sidecar(model_dir: Path, key: str = "m@1") -> dict:
    return json.loads((model_dir / f"{key}.model_info.json").read_text())


def write_sidecar(model_dir: Path, document: dict, key: str = "m@1") -> None:
    (model_dir / f"{key}.model_info.json").write_text(json.dumps(document))


def serving_files(model_dir: Path, key: str = "m@1") -> tuple[Path, Path]:
    return ModelStore(model_dir).serving_paths(key)


def assert_matches_record(model_dir: Path, key: str = "m@1") -> dict:
    """Assert the version's serving files are read-only and exactly what its sidecar records; return the record."""
    record = sidecar(model_dir, key)["load_check"]["serving"]
    assert record["onnxruntime"] == VERSION
    graph, weights = serving_files(model_dir, key)
    for path, what in ((graph, "graph"), (weights, "weights")):
        assert file_digest(path) == record[what], what
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, what
    assert isinstance(record["resident_mb"], (int, float)) and record["resident_mb"] >= 0
    return record


@pytest.fixture
def spy(monkeypatch):
    """Count sandbox checks and note, for every session the registry builds, the digests of the serving
    files it was built on at that moment (None for a session built from bytes)."""
    seen = SimpleNamespace(checks=0, opened=[])
    real_check, real_runtime = sandbox.check, registry_module.Runtime

    def check(*args, **kwargs):
        seen.checks += 1
        return real_check(*args, **kwargs)

    def runtime(data, threads, limits=None, *, serving=None):
        seen.opened.append(None if serving is None else (file_digest(serving), file_digest(serving + ".weights")))
        return real_runtime(data, threads, limits, serving=serving)

    monkeypatch.setattr(sandbox, "check", check)
    monkeypatch.setattr(registry_module, "Runtime", runtime)
    return seen


# -- at upload ------------------------------------------------------------------------------------


def test_an_upload_writes_its_serving_form_read_only_and_records_it(client, app, model_dir):
    response = upload(client, models.mlp(), "m", version="v1")
    assert response.status_code == 201, response.get_json()
    assert files_in(model_dir) == with_serving(["m.routing.json", "m@v1.model_info.json", "m@v1.onnx"])  # no workspace left
    record = assert_matches_record(model_dir, "m@v1")
    assert record["weights"]["size"] >= 2048  # W1 (16 x 32 floats) is in the weights file, not in the graph
    assert set(sidecar(model_dir, "m@v1")["load_check"]) == {"sha256", "peak_mb", "seconds", "serving"}
    model = app.extensions["nexus"].registry.get("m")
    assert model.runtime.shared is True
    assert model.memory_mb == max(record["resident_mb"], MIN_MODEL_MB)


def test_the_session_keeps_no_copy_of_the_model_bytes(model_dir):
    shared = publish(Registry(ModelStore(model_dir), 1), "m", models.mlp())
    assert shared.runtime.shared is True and shared.runtime.session._model_bytes is None
    private = Registry(ModelStore(model_dir), 1, shared_weights=False).get("m")
    assert private.runtime.shared is False and private.runtime.session._model_bytes is None
    for model in (shared, private):
        assert np.allclose(model.runtime.run({"X": X16})[0], reference(models.mlp(), {"X": X16})[0], rtol=1e-5, atol=1e-5)


def _mlp_case():
    return models.mlp(), {"X": X16}


def _wide_mlp_case():
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    return models.mlp(64, 256, 8, seed=4), {"X": x}


def _conv_case():
    return conv(), {"X": np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _small_weights_case():
    return models.linear(4, 3, seed=5)[0], {"X": np.arange(8, dtype=np.float32).reshape(2, 4)}


CASES = {"mlp": (_mlp_case, True), "wide-mlp": (_wide_mlp_case, True), "conv": (_conv_case, True),
         "small-weights": (_small_weights_case, False)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_predictions_on_the_serving_form_equal_onnxruntime_on_the_original_bytes(name, client, app, model_dir):
    build, has_weights = CASES[name]
    data, feeds = build()
    response = upload(client, data, "m", version="v1")
    assert response.status_code == 201, response.get_json()
    graph, weights = serving_files(model_dir, "m@v1")
    assert (weights.stat().st_size > 0) is has_weights  # initializers of 1 KiB or more go to the weights file
    assert external_locations(graph.read_bytes()) == ({weights.name} if has_weights else set())
    assert app.extensions["nexus"].registry.get("m").runtime.shared is True
    expected = reference(data, feeds)[0]
    (x,) = feeds.values()
    answer = client.post("/predict", json={"model_id": "m", "inputs": {"X": x.tolist()}})
    assert answer.status_code == 200, answer.get_json()
    np.testing.assert_allclose(np.asarray(answer.get_json()["outputs"]["Y"], np.float32), expected, rtol=1e-5, atol=1e-5)
    v2 = client.post("/v2/models/m/infer", json={"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                                                              "data": x.ravel().tolist()}]})
    assert v2.status_code == 200, v2.get_json()
    (out,) = v2.get_json()["outputs"]
    assert out["shape"] == list(expected.shape)
    np.testing.assert_allclose(np.asarray(out["data"], np.float32), expected.ravel(), rtol=1e-5, atol=1e-5)


def test_a_classifier_with_a_zipmap_answers_from_its_serving_form(client, app, model_dir, iris_bytes):
    response = upload(client, iris_bytes, "iris", version="v1")
    assert response.status_code == 201, response.get_json()
    assert_matches_record(model_dir, "iris@v1")
    assert app.extensions["nexus"].registry.get("iris").runtime.shared is True
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    labels, probabilities = reference(iris_bytes, {"input": np.asarray(rows, np.float32)})
    answer = client.post("/predict", json={"model_id": "iris", "features": rows})
    assert answer.status_code == 200, answer.get_json()
    outputs = answer.get_json()["outputs"]
    assert outputs["output_label"] == labels.tolist()
    for got, expected in zip(outputs["output_probability"], probabilities, strict=True):
        assert got.keys() == {str(k) for k in expected}
        assert all(abs(got[str(k)] - v) <= 1e-5 for k, v in expected.items())


def test_derive_writes_a_graph_that_names_only_its_weights(tmp_path):
    limits = Settings().limits
    derive(models.mlp(), str(tmp_path / "g.serving"), "g.serving.weights", limits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.serving", "g.serving.weights"]
    graph = (tmp_path / "g.serving").read_bytes()
    assert external_locations(graph) == {"g.serving.weights"}
    check_serving_graph(graph, "g.serving.weights")
    with pytest.raises(InvalidModel, match="other external data"):
        check_serving_graph(graph, "another.weights")
    with pytest.raises(InvalidModel, match="not an ONNX graph"):
        check_serving_graph(b"\x08\x80", "g.serving.weights")
    runtime = Runtime(None, 1, limits, serving=str(tmp_path / "g.serving"))
    assert runtime.shared is True
    np.testing.assert_allclose(runtime.run({"X": X16})[0], reference(models.mlp(), {"X": X16})[0], rtol=1e-5, atol=1e-5)


# -- a damaged or outdated serving form is rebuilt, never served ------------------------------------


def _writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def _flip_weights(model_dir):
    path = _writable(serving_files(model_dir)[1])
    with open(path, "r+b") as file:  # in place: the same inode a mapping of it would see
        data = bytearray(file.read())
        for i in range(0, len(data), 97):
            data[i] ^= 0xFF
        file.seek(0)
        file.write(data)


def _truncate_weights(model_dir):
    path = _writable(serving_files(model_dir)[1])
    os.truncate(path, path.stat().st_size // 2)


def _delete_weights(model_dir):
    serving_files(model_dir)[1].unlink()


def _delete_graph(model_dir):
    serving_files(model_dir)[0].unlink()


def _graph_names_another_file(model_dir):
    """The graph (and its record, so only the check of its names can tell) points a tensor at another file:
    a copy of the weights, so onnxruntime would load it without complaint."""
    graph, weights = serving_files(model_dir)
    (model_dir / "stolen.bin").write_bytes(weights.read_bytes())
    proto = onnx.load_from_string(graph.read_bytes())
    external = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external
    for entry in external[0].external_data:
        if entry.key == "location":
            entry.value = "stolen.bin"
    _writable(graph).write_bytes(proto.SerializeToString())
    document = sidecar(model_dir)
    document["load_check"]["serving"]["graph"] = file_digest(graph)
    write_sidecar(model_dir, document)


def _graph_not_onnx(model_dir):
    graph = serving_files(model_dir)[0]
    _writable(graph).write_bytes(b"\x08\x80garbage")
    document = sidecar(model_dir)
    document["load_check"]["serving"]["graph"] = file_digest(graph)
    write_sidecar(model_dir, document)


def _edit_record(change):
    def damage(model_dir):
        document = sidecar(model_dir)
        change(document["load_check"])
        write_sidecar(model_dir, document)
    return damage


DAMAGE = {
    "weights-corrupted": _flip_weights,
    "weights-truncated": _truncate_weights,
    "weights-deleted": _delete_weights,
    "graph-deleted": _delete_graph,
    "graph-names-another-file": _graph_names_another_file,
    "graph-not-onnx": _graph_not_onnx,
    "other-onnxruntime": _edit_record(lambda check: check["serving"].update(onnxruntime="0.0.0")),
    "error-of-another-onnxruntime": _edit_record(lambda check: check.update(serving={"onnxruntime": "0.0.0", "error": "x"})),
    "no-serving-record": _edit_record(lambda check: check.pop("serving")),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_serving_form_that_does_not_match_its_record_is_rebuilt_and_never_served(name, model_dir, spy):
    publish(Registry(ModelStore(model_dir), 1), "m", models.mlp())
    before = sidecar(model_dir)
    DAMAGE[name](model_dir)
    spy.checks, spy.opened = 0, []
    model = Registry(ModelStore(model_dir), 1).get("m")
    assert spy.checks == 1  # measured and derived again, under the model's claim
    record = assert_matches_record(model_dir)
    assert spy.opened and all(opened == (record["graph"], record["weights"]) for opened in spy.opened)
    assert model.runtime.shared is True and model.load_check["serving"] == record
    after = sidecar(model_dir)
    assert {k: v for k, v in after.items() if k != "load_check"} == {k: v for k, v in before.items() if k != "load_check"}
    assert after["load_check"]["sha256"] == before["sha256"]
    np.testing.assert_allclose(model.runtime.run({"X": X16})[0], reference(models.mlp(), {"X": X16})[0], rtol=1e-5, atol=1e-5)
    assert not [n for n in files_in(model_dir) if n.startswith(".")]  # the workspace and the claim are gone
    # Another worker takes the rebuilt form as it is: no second check.
    again = Registry(ModelStore(model_dir), 1).get("m")
    assert spy.checks == 1 and again.runtime.shared is True


def test_the_worker_that_rebuilds_a_serving_form_keeps_the_session_it_built(model_dir, spy):
    publish(Registry(ModelStore(model_dir), 1), "m", models.mlp())
    _delete_weights(model_dir)
    worker = Registry(ModelStore(model_dir), 1)
    spy.opened = []
    first = worker.get("m")
    assert worker.get("m") is first and len(spy.opened) == 1


def test_a_record_with_an_error_is_served_from_bytes_without_rebuilding(model_dir, spy):
    publish(Registry(ModelStore(model_dir), 1), "m", models.mlp())
    for path in serving_files(model_dir):
        path.unlink()
    document = sidecar(model_dir)
    document["load_check"]["serving"] = {"onnxruntime": VERSION, "error": "the optimizer gave up"}
    write_sidecar(model_dir, document)
    spy.checks, spy.opened = 0, []
    model = Registry(ModelStore(model_dir), 1).get("m")
    assert spy.checks == 0 and spy.opened == [None]
    assert model.runtime.shared is False and model.runtime.session._model_bytes is None
    assert model.memory_mb == max(document["load_check"]["peak_mb"], MIN_MODEL_MB)  # what a load from bytes was measured to take
    assert files_in(model_dir) == ["m.routing.json", "m@1.model_info.json", "m@1.onnx"]
    np.testing.assert_allclose(model.runtime.run({"X": X16})[0], reference(models.mlp(), {"X": X16})[0], rtol=1e-5, atol=1e-5)


# -- NEXUS_SHARED_WEIGHTS=0 -------------------------------------------------------------------------


def test_with_shared_weights_off_an_upload_writes_no_serving_form_and_serves(make_app, model_dir):
    app = make_app(shared_weights=False)
    client = app.test_client()
    response = upload(client, models.mlp(), "m", version="v1")
    assert response.status_code == 201, response.get_json()
    assert files_in(model_dir) == ["m.routing.json", "m@v1.model_info.json", "m@v1.onnx"]
    assert "serving" not in sidecar(model_dir, "m@v1")["load_check"]
    model = app.extensions["nexus"].registry.get("m")
    assert model.runtime.shared is False and model.runtime.session._model_bytes is None
    assert model.memory_mb == max(sidecar(model_dir, "m@v1")["load_check"]["peak_mb"], MIN_MODEL_MB)
    answer = client.post("/predict", json={"model_id": "m", "inputs": {"X": X16.tolist()}})
    assert answer.status_code == 200, answer.get_json()
    np.testing.assert_allclose(np.asarray(answer.get_json()["outputs"]["Y"], np.float32), reference(models.mlp(), {"X": X16})[0],
                               rtol=1e-5, atol=1e-5)


def test_with_shared_weights_off_an_existing_serving_form_is_left_alone(model_dir, spy):
    publish(Registry(ModelStore(model_dir), 1), "m", models.mlp())
    before = {name: (model_dir / name).stat().st_ino for name in files_in(model_dir)}
    _delete_weights(model_dir)  # a damaged form does not matter to a worker that does not use it
    spy.checks, spy.opened = 0, []
    model = Registry(ModelStore(model_dir), 1, shared_weights=False).get("m")
    assert spy.checks == 0 and spy.opened == [None] and model.runtime.shared is False
    assert {name: (model_dir / name).stat().st_ino for name in files_in(model_dir)} == \
        {name: ino for name, ino in before.items() if not name.endswith(".weights")}


def test_turning_shared_weights_on_derives_the_form_of_a_model_uploaded_without(model_dir, spy):
    publish(Registry(ModelStore(model_dir), 1, shared_weights=False), "m", models.mlp())
    assert files_in(model_dir) == ["m.routing.json", "m@1.model_info.json", "m@1.onnx"]
    spy.checks, spy.opened = 0, []
    model = Registry(ModelStore(model_dir), 1).get("m")
    assert spy.checks == 1 and model.runtime.shared is True
    record = assert_matches_record(model_dir)
    assert spy.opened == [(record["graph"], record["weights"])]


# -- removal and leftovers --------------------------------------------------------------------------


def test_deleting_a_version_or_the_model_removes_its_serving_form(client, model_dir):
    for version in ("v1", "v2"):
        assert upload(client, models.mlp(seed=len(version)), "m", version=version).status_code == 201
    assert client.put("/models/m/routing", json={"default": "v2"}).status_code == 200
    assert client.delete("/models/m/versions/v1").status_code == 200
    assert files_in(model_dir) == with_serving(["m.routing.json", "m@v2.model_info.json", "m@v2.onnx"])
    assert_error(client.delete("/models/m/versions/v2"), 409, "version_in_use", "only version")
    assert client.delete("/models/m").status_code == 200
    assert files_in(model_dir) == []
    assert_error(client.post("/predict", json={"model_id": "m", "inputs": {"X": X16.tolist()}}), 404, "model_not_found", "'m'")


def test_clean_leftovers_removes_unheld_workspaces_and_orphan_serving_files_only(model_dir):
    store = ModelStore(model_dir)
    publish(Registry(store, 1), "m", models.mlp())
    crashed = model_dir / ".serving-0123456789abcdef.tmp"
    crashed.mkdir()
    (crashed / "m@2.serving").write_bytes(b"half written")
    orphans = ["gone@1.serving", "gone@1.serving.weights", "old.serving"]
    for name in orphans:
        (model_dir / name).write_bytes(b"x")
        os.chmod(model_dir / name, 0o444)
    with store.workspace() as held:
        (held / "m@3.serving").write_bytes(b"being written")
        removed = store.clean_leftovers()
        assert sorted(removed) == sorted([crashed.name, *orphans])
        assert held.exists() and (held / "m@3.serving").exists()
        assert files_in(model_dir) == sorted([held.name, *with_serving(["m.routing.json", "m@1.model_info.json", "m@1.onnx"])])
    assert not held.exists()  # a workspace is removed by its holder at the end
    assert_matches_record(model_dir)


def test_a_worker_still_holding_a_deleted_upload_never_writes_its_form_over_the_new_one(model_dir):
    """Deleted and uploaded again under the same id and version while a worker had the old file open:
    that worker must not make a serving form of the old bytes for the new version."""
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "m", models.mlp(seed=1))
    with writer.store.open_model("m@1") as old:
        digest = file_digest(old)["sha256"]
        writer.delete("m")
        publish(writer, "m", models.mlp(seed=2))
        graph, weights = writer.store.serving_paths("m@1")
        before = graph.read_bytes(), weights.read_bytes()
        stale = Registry(ModelStore(model_dir), 1)
        sidecar = stale.store.read_sidecar("m@1")
        with pytest.raises(FileNotFoundError):
            stale._admit("m@1", {**sidecar, "load_check": None}, digest, old)
    assert (graph.read_bytes(), weights.read_bytes()) == before
    assert stale.store.read_sidecar("m@1") == sidecar


def test_a_relative_model_directory_gets_its_serving_form(tmp_path, monkeypatch):
    """NEXUS_MODEL_DIR=models, as the quick start runs it: the sandbox, which works in a directory of its
    own, must write the form into the model directory, not into a 'models' beside itself."""
    monkeypatch.chdir(tmp_path)
    registry = Registry(ModelStore(Path("models")), 1)
    registry.store.ensure()
    model = publish(registry, "m", models.mlp())
    assert model.runtime.shared is True
    assert "graph" in model.load_check["serving"]
    assert sorted(p.name for p in (tmp_path / "models").glob("m@1.serving*")) == ["m@1.serving", "m@1.serving.weights"]
