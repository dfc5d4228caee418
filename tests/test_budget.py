"""The memory budget: versions are opened on their first request, and the least recently used ones not
running a request are closed so that what a worker holds (as measured at upload) stays under the budget."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from nexus import registry as registry_module
from nexus.config import Limits, Settings, from_env
from nexus.errors import ModelLoading, ModelUnloaded
from nexus.registry import MIN_MODEL_MB, Registry
from nexus.store import ModelStore
from tests import models
from tests.conftest import assert_error, metric, wait_for
from tests.test_registry import publish

IDS = [f"m{i}" for i in range(6)]
X = np.random.default_rng(11).standard_normal((2, 64)).astype(np.float32)
NOT_LOADED = "not loaded: opened on its first request"


def reference(data: bytes) -> np.ndarray:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"X": X})[0]


class Observer:
    """Records what a registry tells its observer (the metrics module in the app)."""

    def __init__(self) -> None:
        self.changed: list[tuple[int, float]] = []
        self.available: list[int] = []
        self.loaded = 0
        self.evicted = 0
        self._lock = threading.Lock()

    def models_changed(self, count: int, memory_mb: float) -> None:
        with self._lock:
            self.changed.append((count, memory_mb))

    def models_available(self, count: int) -> None:
        self.available.append(count)

    def model_loaded(self, seconds: float) -> None:
        with self._lock:
            self.loaded += 1

    def models_evicted(self, count: int) -> None:
        with self._lock:
            self.evicted += count


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """Six MLPs (about 0.6 MB each as a serving form), uploaded once; the budget holds two of them."""
    directory = tmp_path_factory.mktemp("stock")
    writer = Registry(ModelStore(directory), 1)
    expected, memory = {}, {}
    for i, model_id in enumerate(IDS):
        data = models.mlp(64, 1024, 4, seed=i)
        publish(writer, model_id, data)
        expected[model_id] = reference(data)
        measured = json.loads((directory / f"{model_id}@1.model_info.json").read_text())["load_check"]["serving"]["resident_mb"]
        memory[model_id] = max(measured, MIN_MODEL_MB)
    sizes = sorted(memory.values())
    budget = sum(sizes[-2:]) + 0.05
    assert sizes[0] > 0 and sum(sizes[:3]) > budget  # any two fit, no three do
    return SimpleNamespace(directory=directory, expected=expected, memory=memory, budget=budget)


@pytest.fixture
def stocked(model_dir, stock):
    for path in stock.directory.iterdir():
        shutil.copy2(path, model_dir / path.name)
    return model_dir


@pytest.fixture
def worker(stocked, stock):
    """A registry under the budget on a copy of the stock, with an Observer."""
    return Registry(ModelStore(stocked), 1, observer=Observer(), budget_mb=stock.budget)


def held(registry: Registry) -> float:
    return sum(m.memory_mb for m in registry.loaded_now())


def open_ids(registry: Registry) -> list[str]:
    return sorted(m.id for m in registry.loaded_now())


def answer(registry: Registry, model_id: str) -> np.ndarray:
    return registry.get(model_id).runtime.run({"X": X})[0]


def test_nothing_is_opened_before_its_first_request(worker, stock):
    worker.sync()
    assert worker.loaded_now() == [] and worker._observer.loaded == 0
    assert worker._observer.available == [6]
    assert [entry.id for entry, _ in worker.catalogue()] == IDS
    assert [summary["version"] for _, summary in worker.catalogue()] == ["1"] * 6
    assert worker.index() == [{"name": i, "version": "1", "state": "UNAVAILABLE", "reason": NOT_LOADED} for i in IDS]
    assert worker.loaded_now() == []  # listing opens nothing


def test_random_requests_are_answered_right_and_the_budget_holds(worker, stock):
    rng = random.Random(5)
    opens = 0
    for _ in range(16):
        model_id = rng.choice(IDS)
        opens += model_id not in open_ids(worker)
        np.testing.assert_allclose(answer(worker, model_id), stock.expected[model_id], rtol=1e-5, atol=1e-5)
        assert held(worker) <= stock.budget and len(worker.loaded_now()) <= 2
        assert model_id in open_ids(worker)
    observer = worker._observer
    assert opens > 6 and observer.loaded == opens
    assert observer.evicted == opens - len(worker.loaded_now())  # every open beyond what is open now was closed
    assert observer.changed[-1] == (len(worker.loaded_now()), pytest.approx(held(worker)))


def test_the_least_recently_used_version_is_closed_first(worker):
    for model_id in ("m0", "m1", "m0", "m2"):
        answer(worker, model_id)
    assert open_ids(worker) == ["m0", "m2"]  # m1 was used least recently
    answer(worker, "m0")
    answer(worker, "m3")
    assert open_ids(worker) == ["m0", "m3"]
    answer(worker, "m4")
    assert open_ids(worker) == ["m3", "m4"]
    assert worker._observer.evicted == 3


def test_a_version_running_a_request_is_never_closed(worker, stock):
    running = [worker.get("m0"), worker.get("m1")]
    for model in running:
        model.users.append(None)  # what inference.infer does while it runs the version
    try:
        for model_id in ("m2", "m3"):
            answer(worker, model_id)  # opens, though both others run: the budget yields to running requests
            assert all(any(m is model for m in worker.loaded_now()) for model in running)  # the same sessions
        assert open_ids(worker) == ["m0", "m1", "m3"] and held(worker) > stock.budget
    finally:
        for model in running:
            model.users.pop()
    answer(worker, "m4")  # nothing runs now: the least recently used are closed
    assert open_ids(worker) == ["m3", "m4"] and held(worker) <= stock.budget
    assert worker._observer.evicted == 3  # m2, then m0 and m1


def test_concurrent_first_requests_open_the_version_once(worker, stock, monkeypatch):
    real = registry_module.Runtime

    def slow(data, threads, limits=None, *, serving=None):
        time.sleep(0.3)  # a load long enough for every request to arrive while it runs
        return real(data, threads, limits, serving=serving)

    monkeypatch.setattr(registry_module, "Runtime", slow)
    worker.sync()
    start, found, errors = threading.Barrier(8), [], []

    def request():
        start.wait()
        try:
            found.append(worker.get("m3"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(found) == 8
    assert all(model is found[0] for model in found)
    assert worker._observer.loaded == 1
    np.testing.assert_allclose(found[0].runtime.run({"X": X})[0], stock.expected["m3"], rtol=1e-5, atol=1e-5)


def test_waiting_for_another_requests_load_is_bounded(stocked, stock, monkeypatch):
    real = registry_module.Runtime

    def slow(data, threads, limits=None, *, serving=None):
        time.sleep(1.5)
        return real(data, threads, limits, serving=serving)

    monkeypatch.setattr(registry_module, "Runtime", slow)
    limits = Limits(model_memory_mb=2048, load_seconds=0.3, inference_timeout_s=30, inference_memory_mb=1024)
    worker = Registry(ModelStore(stocked), 1, limits=limits, load_wait_s=0.2, budget_mb=stock.budget)
    worker.sync()
    opener = threading.Thread(target=worker.get, args=("m0",))
    opener.start()
    time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(ModelLoading) as info:
        worker.get("m0")
    waited = time.monotonic() - started
    assert 0.4 <= waited < 1.2  # load_seconds + load_wait_s (0.5 s), not the rest of the load (1.4 s)
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    opener.join()
    assert open_ids(worker) == ["m0"]
    monkeypatch.setattr(registry_module, "Runtime", real)
    np.testing.assert_allclose(answer(worker, "m0"), stock.expected["m0"], rtol=1e-5, atol=1e-5)


def test_a_version_bigger_than_the_budget_opens_alone(stocked, stock, worker):
    big_bytes = models.mlp(64, 4096, 4, seed=9)
    publish(Registry(ModelStore(stocked), 1), "big", big_bytes)
    answer(worker, "m0")
    answer(worker, "m1")
    big = worker.get("big")
    assert big.memory_mb > stock.budget
    assert open_ids(worker) == ["big"] and held(worker) == big.memory_mb
    assert worker._observer.evicted == 2
    np.testing.assert_allclose(big.runtime.run({"X": X})[0], reference(big_bytes), rtol=1e-5, atol=1e-5)
    answer(worker, "m2")
    assert open_ids(worker) == ["m2"] and worker._observer.evicted == 3


def test_a_deleted_or_unloaded_version_leaves_the_accounting(worker, stock):
    answer(worker, "m0")
    answer(worker, "m1")
    worker.delete("m0")
    assert open_ids(worker) == ["m1"] and held(worker) == stock.memory["m1"]
    assert worker._observer.changed[-1] == (1, pytest.approx(stock.memory["m1"]))
    worker.set_loaded("m2", False)
    assert "m2" not in [entry.id for entry, _ in worker.catalogue()]
    with pytest.raises(ModelUnloaded):
        worker.get("m2")
    worker.set_loaded("m2", True)
    np.testing.assert_allclose(answer(worker, "m2"), stock.expected["m2"], rtol=1e-5, atol=1e-5)
    assert open_ids(worker) == ["m1", "m2"] and [e.id for e, _ in worker.catalogue()] == IDS[1:]


# -- over HTTP ----------------------------------------------------------------------------------------


def _predict(client, model_id: str):
    return client.post("/predict", json={"model_id": model_id, "inputs": {"X": X.tolist()}})


def _infer(client, model_id: str):
    return client.post(f"/v2/models/{model_id}/infer",
                       json={"inputs": [{"name": "X", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]})


def test_random_requests_over_http_are_answered_right_under_the_budget(make_app, stocked, stock):
    app = make_app(memory_budget_mb=stock.budget)
    client, registry = app.test_client(), app.extensions["nexus"].registry
    loads, evictions = metric("model_loads_total"), metric("model_evictions_total")
    rng = random.Random(8)
    for i in range(12):
        model_id = rng.choice(IDS)
        if i % 2:
            response = _predict(client, model_id)
            assert response.status_code == 200, response.get_json()
            got = response.get_json()["outputs"]["Y"]
        else:
            response = _infer(client, model_id)
            assert response.status_code == 200, response.get_json()
            got = np.reshape(response.get_json()["outputs"][0]["data"], X.shape[:1] + (4,))
        np.testing.assert_allclose(np.asarray(got, np.float32), stock.expected[model_id], rtol=1e-5, atol=1e-5)
        assert held(registry) <= stock.budget
    opened = metric("model_loads_total") - loads
    assert opened > 2 and metric("model_evictions_total") - evictions == opened - len(registry.loaded_now())
    assert metric("models_memory_bytes") == pytest.approx(held(registry) * 1024 * 1024)


def test_the_catalogue_lists_every_model_while_few_are_open(make_app, stocked, stock):
    app = make_app(memory_budget_mb=stock.budget)
    client, registry = app.test_client(), app.extensions["nexus"].registry
    listed = client.get("/models").get_json()
    assert listed["count"] == 6 and [m["id"] for m in listed["models"]] == IDS
    assert registry.loaded_now() == []
    for model_id in ("m0", "m4", "m5"):
        assert _predict(client, model_id).status_code == 200
    assert open_ids(registry) == ["m4", "m5"]
    listed = client.get("/models").get_json()
    assert listed["count"] == 6 and [(m["id"], m["versions"]) for m in listed["models"]] == [(i, ["1"]) for i in IDS]
    rows = client.post("/v2/repository/index").get_json()
    assert {row["name"]: (row["state"], row.get("reason")) for row in rows} == \
        {i: ("READY", None) if i in ("m4", "m5") else ("UNAVAILABLE", NOT_LOADED) for i in IDS}
    ready = client.post("/v2/repository/index", json={"ready": True}).get_json()
    assert [row["name"] for row in ready] == ["m4", "m5"]
    versions = client.get("/models/m2/versions").get_json()["versions"]
    assert [(v["state"], v.get("reason")) for v in versions] == [("UNAVAILABLE", NOT_LOADED)]
    assert client.get("/v2/models/m2/ready").status_code == 200  # asking opens it
    assert "m2" in open_ids(registry) and len(registry.loaded_now()) == 2


def _corrupt_bytes(model_dir):
    (model_dir / "m1@1.onnx").write_bytes(models.mlp(64, 1024, 4, seed=99))


def _over_the_memory_limit(model_dir):
    path = model_dir / "m1@1.model_info.json"
    document = json.loads(path.read_text())
    document["load_check"]["peak_mb"] = 4096.0
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(("damage", "words"), [(_corrupt_bytes, "does not match the sha256"),
                                               (_over_the_memory_limit, "needs 4096 MB of memory; the limit is 2048 MB")],
                         ids=["sha256-mismatch", "over-the-memory-limit"])
def test_a_version_that_cannot_be_opened_says_why_and_holds_no_memory(make_app, stocked, stock, damage, words):
    damage(stocked)
    app = make_app(memory_budget_mb=stock.budget)
    client, registry = app.test_client(), app.extensions["nexus"].registry
    assert _predict(client, "m0").status_code == 200
    loads = metric("model_loads_total")
    for _ in range(2):
        assert_error(_predict(client, "m1"), 404, "model_unavailable", words)
    assert_error(_infer(client, "m1"), 404, "model_unavailable", words)
    assert metric("model_loads_total") == loads
    assert open_ids(registry) == ["m0"] and held(registry) == stock.memory["m0"]
    assert [m["id"] for m in client.get("/models").get_json()["models"]] == [i for i in IDS if i != "m1"]
    row = next(row for row in client.post("/v2/repository/index").get_json() if row["name"] == "m1")
    assert row["state"] == "UNAVAILABLE" and words in row["reason"]
    for model_id in ("m2", "m3"):  # the others open and close around it as before
        assert _predict(client, model_id).status_code == 200
    assert open_ids(registry) == ["m2", "m3"] and held(registry) <= stock.budget


def test_a_shadow_opens_its_version_in_the_shadow_thread(make_app, model_dir, stock):
    writer = Registry(ModelStore(model_dir), 1)
    first, second = models.mlp(64, 1024, 4, seed=0), models.mlp(64, 1024, 4, seed=1)
    publish(writer, "s", first, "v1")
    publish(writer, "s", second, "v2")
    writer.set_routing("s", {"default": "v1", "shadow": {"v2": 100}})
    app = make_app(memory_budget_mb=stock.budget)
    client, registry = app.test_client(), app.extensions["nexus"].registry
    done = metric("model_shadow_predictions_total", model_id="s", version="v2", status="success")
    response = _predict(client, "s")
    assert response.status_code == 200 and response.get_json()["model_version"] == "v1"
    np.testing.assert_allclose(np.asarray(response.get_json()["outputs"]["Y"], np.float32), reference(first), rtol=1e-5, atol=1e-5)
    assert wait_for(lambda: metric("model_shadow_predictions_total", model_id="s", version="v2", status="success") > done)
    entry = registry.entry("s")
    assert registry.loaded(entry, "v2") is not None and held(registry) <= stock.budget


def test_uploads_in_a_budget_worker_keep_it_under_the_budget(model_dir, stock):
    worker = Registry(ModelStore(model_dir), 1, budget_mb=stock.budget)
    worker.sync()
    for i in range(3):
        publish(worker, f"u{i}", models.mlp(64, 1024, 4, seed=i))
        assert held(worker) <= stock.budget, open_ids(worker)


def test_budget_settings_are_read_from_the_environment():
    assert from_env({"NEXUS_MEMORY_BUDGET_MB": "512", "NEXUS_SHARED_WEIGHTS": "0"}).memory_budget_mb == 512
    assert from_env({"NEXUS_SHARED_WEIGHTS": "0"}).shared_weights is False
    assert from_env({}).memory_budget_mb is None and Settings().shared_weights is True
