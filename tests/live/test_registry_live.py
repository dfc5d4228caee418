"""The model directory shared by 4 gunicorn workers (and by two servers, as two replicas would)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import requests

from tests import models
from tests.conftest import files_in, with_serving
from tests.live.server import CLOSE, raw_upload, upload


def predict(server, model_id, features):
    return requests.post(server.url("/predict"), json={"model_id": model_id, "features": features}, headers=CLOSE, timeout=10)


def hidden(directory) -> list[str]:
    return [name for name in files_in(directory) if name.startswith(".")]


def test_an_upload_is_served_by_every_worker_on_the_next_request(live):
    model, weights, bias = models.linear(in_features=4, out_features=3, seed=11)
    assert upload(live, model, "fresh").status_code == 201
    features = [0.5, -1.0, 2.0, 0.25]
    want = np.array(features, np.float32) @ weights + bias
    for _ in range(40):
        response = predict(live, "fresh", features)
        assert response.status_code == 200
        assert np.allclose(response.json()["prediction"], want, atol=1e-5)
    for _ in range(40):
        assert "fresh" in [m["id"] for m in requests.get(live.url("/models"), headers=CLOSE, timeout=5).json()["models"]]
        assert requests.get(live.url("/models/fresh"), headers=CLOSE, timeout=5).status_code == 200


def test_after_a_delete_no_worker_serves_the_model(live):
    assert upload(live, models.identity(), "doomed").status_code == 201
    for _ in range(8):
        assert predict(live, "doomed", [1, 2, 3, 4]).status_code == 200  # every worker has loaded it
    assert requests.delete(live.url("/models/doomed"), headers=CLOSE, timeout=5).status_code == 200
    for _ in range(40):
        response = predict(live, "doomed", [1, 2, 3, 4])
        assert response.status_code == 404 and response.json()["code"] == "model_not_found"
    for _ in range(20):
        listed = requests.get(live.url("/models"), headers=CLOSE, timeout=5).json()["models"]
        assert "doomed" not in [m["id"] for m in listed]
    assert not [name for name in files_in(live.model_dir) if name.startswith("doomed")]


def test_a_replaced_model_is_never_served_stale(live):
    first, w1, b1 = models.linear(seed=1)
    second, w2, b2 = models.linear(seed=2)
    features = [1.0, 2.0, 3.0, 4.0]
    assert upload(live, first, "swap").status_code == 201
    for _ in range(8):
        assert np.allclose(predict(live, "swap", features).json()["prediction"], np.array(features, np.float32) @ w1 + b1, atol=1e-5)
    assert requests.delete(live.url("/models/swap"), headers=CLOSE, timeout=5).status_code == 200
    assert upload(live, second, "swap").status_code == 201
    want = np.array(features, np.float32) @ w2 + b2
    for _ in range(40):
        assert np.allclose(predict(live, "swap", features).json()["prediction"], want, atol=1e-5)


def _race(server, payloads: list[tuple[bytes, str]]) -> list[int]:
    barrier = threading.Barrier(len(payloads))
    statuses = [0] * len(payloads)

    def one(index, data, model_id):
        barrier.wait()
        statuses[index] = upload(server, data, model_id).status_code

    threads = [threading.Thread(target=one, args=(i, d, m)) for i, (d, m) in enumerate(payloads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_ten_concurrent_uploads_of_one_id_give_one_201_and_nine_409(live):
    before = set(files_in(live.model_dir))
    statuses = _race(live, [(models.linear(seed=s)[0], "contested") for s in range(10)])
    assert sorted(statuses) == [201] + [409] * 9
    assert set(files_in(live.model_dir)) - before == set(with_serving(["contested@1.onnx", "contested@1.model_info.json", "contested.routing.json"]))
    assert hidden(live.model_dir) == []
    for _ in range(40):
        assert predict(live, "contested", [1, 2, 3, 4]).status_code == 200


def test_ten_concurrent_uploads_of_different_ids_all_succeed(live):
    ids = [f"many-{i}" for i in range(10)]
    assert _race(live, [(models.identity(), model_id) for model_id in ids]) == [201] * 10
    for model_id in ids:
        for _ in range(4):
            assert predict(live, model_id, [1, 2, 3, 4]).status_code == 200
    assert hidden(live.model_dir) == []


def test_an_upload_cut_off_halfway_leaves_nothing(live):
    model = models.linear(in_features=512, out_features=512)[0]
    head, body = raw_upload("cut", model)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
    for _ in range(50):
        if not hidden(live.model_dir):
            break
        threading.Event().wait(0.1)
    assert hidden(live.model_dir) == []
    assert not [name for name in files_in(live.model_dir) if name.startswith("cut")]
    assert predict(live, "iris", [5.1, 3.5, 1.4, 0.2]).json()["prediction"] == [0]


def test_models_survive_a_restart(make_server):
    server = make_server(workers=2)
    assert upload(server, models.identity(), "kept").status_code == 201
    directory = server.model_dir
    assert server.stop() == 0
    again = make_server(model_dir=directory, workers=2)
    assert predict(again, "kept", [1, 2, 3, 4]).status_code == 200
    assert {m["id"] for m in requests.get(again.url("/models"), timeout=5).json()["models"]} == {"iris", "kept"}


def test_a_corrupt_sidecar_or_missing_model_does_not_stop_the_start(make_server, tmp_path):
    directory = tmp_path / "models"
    first = make_server(workers=1)  # seeds iris, then gives us a real second model to break
    assert upload(first, models.identity(), "orphaned").status_code == 201
    first.stop()
    (directory / "garbled.model_info.json").write_text("{not json")
    (directory / "garbled.onnx").write_bytes(models.identity())
    (directory / "orphaned@1.onnx").unlink()  # sidecar without its model
    server = make_server(model_dir=directory, workers=2)
    assert requests.get(server.url("/health/ready"), timeout=5).status_code == 200
    assert predict(server, "iris", [5.1, 3.5, 1.4, 0.2]).status_code == 200
    for model_id in ("garbled", "orphaned"):
        assert predict(server, model_id, [1, 2, 3, 4]).status_code == 404
    assert [m["id"] for m in requests.get(server.url("/models"), timeout=5).json()["models"]] == ["iris"]
    skipped = [r for r in server.log_records() if r["message"] == "model skipped"]
    assert {r["model_id"] for r in skipped} >= {"garbled", "orphaned"}
    assert all(r["reason"] for r in skipped)


def test_leftovers_of_a_crash_are_removed_at_start(make_server, tmp_path):
    directory = tmp_path / "models"
    from tests.live.server import seed_demo_model

    seed_demo_model(directory)
    (directory / ".upload-deadbeef.tmp").write_bytes(b"half an upload")
    (directory / ".foo.claim").write_bytes(b"")
    (directory / "orphan.onnx").write_bytes(models.identity())
    make_server(model_dir=directory, workers=2)
    assert files_in(directory) == with_serving(["iris.model_info.json", "iris.onnx"])


def test_two_replicas_on_one_directory_agree(make_server, tmp_path):
    a = make_server(workers=2)
    b = make_server(model_dir=a.model_dir, workers=2)
    assert upload(a, models.identity(), "shared").status_code == 201
    for _ in range(20):
        assert predict(b, "shared", [1, 2, 3, 4]).status_code == 200
    assert requests.delete(b.url("/models/shared"), headers=CLOSE, timeout=5).status_code == 200
    for _ in range(20):
        assert predict(a, "shared", [1, 2, 3, 4]).status_code == 404
    statuses = []
    barrier = threading.Barrier(2)

    def race(server):
        barrier.wait()
        statuses.append(upload(server, models.identity(), "both").status_code)

    threads = [threading.Thread(target=race, args=(s,)) for s in (a, b)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert sorted(statuses) == [201, 409]
