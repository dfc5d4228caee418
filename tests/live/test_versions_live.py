"""Model versions and routing (default / canary / shadow) on the real server: gunicorn workers and replicas.

Most tests share one pair of replicas (two 4-worker servers on one model directory), each test
with model ids of its own. Expected answers are computed with numpy from the weights of the
``tests.models.linear`` models, so every answer is checked against the version it claims.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import models
from tests.conftest import files_in, with_serving
from tests.live.server import CLOSE, ROOT, LiveServer, metric_samples, total

TIMEOUT = 30  # per request: the machine is small and shared; totals are bounded by the loops below


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two 4-worker servers on one model directory, as two replicas behind a load balancer would be."""
    base = tmp_path_factory.mktemp("versions")
    directory = base / "models"
    directory.mkdir()
    started = []
    try:
        for _ in range(2):
            started.append(LiveServer(directory, base / "logs", workers=4).start())
        yield tuple(started)
    finally:
        for server in started:
            server.stop()


def upload_version(server, data: bytes, model_id: str, version: str):
    files = {"file": (f"{model_id}.onnx", io.BytesIO(data))}
    return requests.post(server.url("/models/upload"), files=files, data={"id": model_id, "name": model_id, "version": version},
                         headers=CLOSE, timeout=60)


def set_routing(server, model_id: str, document):
    return requests.put(server.url(f"/models/{model_id}/routing"), json=document, headers=CLOSE, timeout=TIMEOUT)


def ask(server, model_id: str, features, headers: dict | None = None, **body):
    """POST /predict on a fresh connection (gunicorn's sync workers close it anyway), so workers take turns."""
    return requests.post(server.url("/predict"), json={"model_id": model_id, "features": list(features), **body},
                         headers={**CLOSE, **(headers or {})}, timeout=TIMEOUT)


def get(server, path: str):
    return requests.get(server.url(path), headers=CLOSE, timeout=TIMEOUT)


def listed_versions(server, model_id: str) -> list[str]:
    response = get(server, f"/models/{model_id}/versions")
    assert response.status_code == 200, response.text
    return [row["version"] for row in response.json()["versions"]]


class Linear:
    """Versions of one linear model id: each version's weights, to compute what it must answer."""

    def __init__(self, model_id: str, **seeds: int) -> None:
        self.model_id = model_id
        self.data: dict[str, bytes] = {}
        self.weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for version, seed in seeds.items():
            data, weights, bias = models.linear(seed=seed)
            self.data[version], self.weights[version] = data, (weights, bias)

    def upload(self, server, *versions: str) -> None:
        for version in versions or self.data:
            response = upload_version(server, self.data[version], self.model_id, version)
            assert response.status_code == 201, response.text
            assert response.headers["Location"] == f"/models/{self.model_id}/versions/{version}"

    def expected(self, version: str, features) -> np.ndarray:
        weights, bias = self.weights[version]
        return np.array(features, np.float32) @ weights + bias

    def check(self, features) -> None:
        """Precondition: the versions answer ``features`` far apart, so an answer tells which one gave it."""
        answers = [self.expected(v, features) for v in self.weights]
        for i, first in enumerate(answers):
            for second in answers[i + 1:]:
                assert np.abs(first - second).max() > 0.1


def outcome(server_index: int, response: requests.Response, started: float) -> dict:
    """What the test keeps of one answer (checked later in the test's thread)."""
    record = {"replica": server_index, "started": started, "status": response.status_code, "header": response.headers.get("X-Model-Version")}
    try:
        record["body"] = response.json()
    except ValueError:
        record["body"] = response.text
    return record


def answered_by(record: dict, model: Linear, features) -> str:
    """Check one answer: 200, header and body name the same version, outputs are that version's; return it."""
    assert record["status"] == 200, record
    body = record["body"]
    version = body["model_version"]
    assert record["header"] == version, record
    assert version in model.weights, record
    assert body["model_id"] == model.model_id
    assert np.allclose(body["outputs"]["Y"], [model.expected(version, features)], rtol=1e-5, atol=1e-5), (record, version)
    return version


def run_clients(servers, model_id: str, features, concurrency: int, stop: threading.Event) -> list:
    """Start ``concurrency`` client threads alternating between ``servers`` until ``stop``; return their futures."""
    pool = ThreadPoolExecutor(concurrency)

    def client(start: int) -> list[dict]:
        records, turn = [], start
        while not stop.is_set():
            index = turn % len(servers)
            turn += 1
            started = time.monotonic()
            try:
                records.append(outcome(index, ask(servers[index], model_id, features), started))
            except requests.RequestException as exc:
                records.append({"replica": index, "started": started, "status": "exception", "body": repr(exc), "header": None})
        return records

    futures = [pool.submit(client, i) for i in range(concurrency)]
    pool.shutdown(wait=False)
    return futures


def many(servers, jobs, concurrency: int = 8) -> list[dict]:
    """Send ``jobs`` [(replica index, features, headers, body fields)] with ``concurrency`` threads; records in job order."""

    def one(job):
        index, features, headers, body = job
        started = time.monotonic()
        try:
            return outcome(index, ask(servers[index], body.pop("model_id"), features, headers, **body), started)
        except requests.RequestException as exc:
            return {"replica": index, "started": started, "status": "exception", "body": repr(exc), "header": None}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, [(i, f, h, dict(b)) for i, f, h, b in jobs]))


def all_ready(server, model_id: str, versions: list[str], looks: int = 30, timeout: float = 30) -> None:
    """Wait until ``looks`` listings in a row (fresh connections, so from every worker in turn) show every version READY.

    A shadow copy that reaches a worker before it has loaded the shadow version is counted
    'unavailable', not run; the tests that count shadow runs start once every worker has them.
    """
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < looks:
        assert time.monotonic() < deadline, f"{model_id} {versions} not READY in every worker in {timeout} s"
        rows = get(server, f"/models/{model_id}/versions").json()["versions"]
        ready = [row["version"] for row in rows if row["state"] == "READY"]
        in_a_row = in_a_row + 1 if ready == versions else 0
        if in_a_row == 0:
            time.sleep(0.1)


def wait_for_metrics(server, done, timeout: float = 5.0) -> dict:
    """Poll /metrics until ``done(samples)`` (shadow runs finish in each worker's thread after its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = metric_samples(server)
        if done(samples) or time.monotonic() >= deadline:
            return samples
        time.sleep(0.1)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file of the model directory with the sha256 of its bytes."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in files_in(directory)}


# -- 1. a new version under load, on two replicas --------------------------------------------------


def test_an_upload_under_load_on_two_replicas_never_fails_a_request_and_the_newest_answers_after_it(replicas):
    a = replicas[0]
    model = Linear("rollout", v1=101, v2=102)
    features = [0.5, -1.0, 2.0, 0.25]
    model.check(features)
    model.upload(a, "v1")
    for index in (0, 1):
        for _ in range(8):
            assert answered_by(outcome(index, ask(replicas[index], "rollout", features), 0), model, features) == "v1"

    stop = threading.Event()
    futures = run_clients(replicas, "rollout", features, concurrency=16, stop=stop)
    try:
        time.sleep(5)
        response = upload_version(a, model.data["v2"], "rollout", "v2")  # in the middle of the traffic
        uploaded = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        records = [record for future in futures for record in future.result(timeout=120)]
    assert response.status_code == 201, response.text

    errors = [r for r in records if r["status"] != 200]
    assert errors == [], f"{len(errors)} of {len(records)} requests failed, first: {errors[:3]}"
    versions = [answered_by(r, model, features) for r in records]
    assert len(records) >= 200, f"only {len(records)} requests in 10 s"
    assert "v1" in versions and "v2" in versions
    # A request sent after the upload returned is answered by the newest version on either replica.
    late = [r for r in records if r["started"] > uploaded]
    assert {r["replica"] for r in late} == {0, 1}
    assert [r for r in late if r["body"]["model_version"] != "v2"] == []
    for index in (0, 1):
        for _ in range(20):
            assert answered_by(outcome(index, ask(replicas[index], "rollout", features), 0), model, features) == "v2"


# -- 2. a canary's share --------------------------------------------------------------------------


def test_a_canary_gets_its_share_of_requests_without_a_routing_key_on_each_replica(replicas):
    a, b = replicas
    model = Linear("split", v1=111, v2=112)
    features = [1.0, 2.0, 3.0, 4.0]
    model.check(features)
    model.upload(a)
    response = set_routing(b, "split", {"default": "v1", "canary": {"v2": 10}})
    assert response.status_code == 200, response.text
    assert response.json()["traffic"] == {"v1": 90.0, "v2": 10.0}
    for server in replicas:
        listing = get(server, "/models/split/versions").json()
        assert {row["version"]: row["traffic_percent"] for row in listing["versions"]} == {"v1": 90.0, "v2": 10.0}

    records = many(replicas, [(i % 2, features, {}, {"model_id": "split"}) for i in range(2000)])
    for index in (0, 1):
        versions = [answered_by(r, model, features) for r in records if r["replica"] == index]
        assert len(versions) == 1000
        # Each request is v2 with p = 0.1, independently: the count of v2 in 1000 is binomial with mean
        # 100 and sd sqrt(1000 * 0.1 * 0.9) = 9.5; 60..140 (6 %..14 %) is more than 4 sd either side,
        # so a correct server fails this about once in 30,000 runs.
        share = versions.count("v2") / len(versions)
        assert 0.06 <= share <= 0.14, f"replica {index}: v2 answered {share:.1%} of 1000 requests; want 10 %"


# -- 3. sticky routing keys -----------------------------------------------------------------------


def _keys(count: int) -> tuple[list[str], list[str]]:
    """``count`` routing keys in the canary's first 10 % of buckets (v2) and ``count`` in the rest (v1)."""
    canary, default, i = [], [], 0
    while len(canary) < count or len(default) < count:
        key = f"user-{i}"
        i += 1
        # The documented rule: bucket = crc32(key) mod 10000; a canary of 10 % owns buckets 0..999.
        chosen = canary if zlib.crc32(key.encode()) % 10_000 < 1000 else default
        if len(chosen) < count:
            chosen.append(key)
    return canary, default


def test_a_routing_key_gets_the_same_version_in_every_worker_and_replica(replicas):
    a, b = replicas
    model = Linear("sticky", v1=121, v2=122)
    to_v2, to_v1 = _keys(25)
    keys = to_v2 + to_v1
    want = {key: ("v2" if key in to_v2 else "v1") for key in keys}
    features = {key: [float(i), 1.0, -i / 10, 0.5] for i, key in enumerate(keys)}
    for key in keys:
        model.check(features[key])
    model.upload(b)
    assert set_routing(a, "sticky", {"default": "v1", "canary": {"v2": 10}}).status_code == 200

    def send_round() -> dict[str, list[dict]]:
        # Each key 6 times, 3 on each replica, interleaved with the other keys' requests so that the
        # same key reaches different workers over fresh connections.
        jobs = [(i % 2, features[key], {"X-Routing-Key": key}, {"model_id": "sticky"}) for i in range(6) for key in keys]
        by_key: dict[str, list[dict]] = {key: [] for key in keys}
        for (_, _, headers, _), record in zip(jobs, many(replicas, jobs), strict=True):
            by_key[headers["X-Routing-Key"]].append(record)
        return by_key

    first, again = send_round(), send_round()
    for key in keys:
        for record in first[key] + again[key]:
            assert answered_by(record, model, features[key]) == want[key], (key, record)
        assert {r["replica"] for r in first[key]} == {0, 1}
        answers = {json.dumps(r["body"]["outputs"]) for r in first[key] + again[key]}
        assert len(answers) == 1, (key, answers)  # the very same answer every time

    # routing_key in the body does what the header does, on either replica; the body wins over the header.
    jobs = [(i % 2, features[key], {}, {"model_id": "sticky", "routing_key": key}) for i, key in enumerate(keys)]
    jobs += [(i % 2, features[key], {"X-Routing-Key": other}, {"model_id": "sticky", "routing_key": key})
             for i, (key, other) in enumerate(zip(to_v2 + to_v1, to_v1 + to_v2, strict=True))]
    for (_, feats, _, body), record in zip(jobs, many(replicas, jobs), strict=True):
        assert answered_by(record, model, feats) == want[body["routing_key"]], (body, record)


# -- 4. promote and roll back under load ----------------------------------------------------------


def test_promote_and_roll_back_under_load_fail_no_request_and_the_rollback_holds_at_once(replicas):
    a = replicas[0]
    model = Linear("rollback", v1=131, v2=132)
    features = [-0.5, 0.75, 1.5, -2.0]
    model.check(features)
    model.upload(a)
    assert set_routing(a, "rollback", {"default": "v1"}).status_code == 200

    stop = threading.Event()
    futures = run_clients(replicas, "rollback", features, concurrency=8, stop=stop)
    puts = []
    try:
        time.sleep(0.5)
        for i in range(3):  # promote v2, then roll back to v1; each on one replica or the other
            for version in ("v2", "v1"):
                response = set_routing(replicas[(i + (version == "v1")) % 2], "rollback", {"default": version})
                puts.append((version, response.status_code, response.json().get("default")))
                time.sleep(0.6)
        rolled_back = time.monotonic() - 0.6  # the last PUT returned before its sleep
        time.sleep(0.4)
    finally:
        stop.set()
        records = [record for future in futures for record in future.result(timeout=120)]

    assert puts == [("v2", 200, "v2"), ("v1", 200, "v1")] * 3
    errors = [r for r in records if r["status"] != 200]
    assert errors == [], f"{len(errors)} of {len(records)} requests failed, first: {errors[:3]}"
    versions = [answered_by(r, model, features) for r in records]
    assert "v2" in versions  # the promotions did take effect
    late = [r for r in records if r["started"] > rolled_back]
    assert [r for r in late if r["body"]["model_version"] != "v1"] == []
    for index in (0, 1):
        for _ in range(40):
            assert answered_by(outcome(index, ask(replicas[index], "rollback", features), 0), model, features) == "v1"


# -- 5. shadows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("same", [False, True], ids=["disagree", "agree"])
def test_a_shadow_gets_a_copy_of_every_request_and_its_agreement_is_counted(replicas, same):
    server = replicas[0]
    model_id = f"shadowed-{'same' if same else 'other'}"
    v1, w1, b1 = models.linear(out_features=1, seed=141)
    v2, w2, b2 = (v1, w1, b1) if same else models.linear(out_features=1, seed=142)
    rng = np.random.default_rng(7)
    requests_features = rng.standard_normal((60, 4)).astype(np.float32)
    if not same:  # one output each: compared with numpy's isclose, so they must be far apart to disagree
        assert np.abs((requests_features @ w1 + b1) - (requests_features @ w2 + b2)).min() > 1e-3
    for version, data in (("v1", v1), ("v2", v2)):
        assert upload_version(server, data, model_id, version).status_code == 201
    response = set_routing(server, model_id, {"default": "v1", "shadow": {"v2": 100}})
    assert response.status_code == 200, response.text
    assert response.json()["traffic"] == {"v1": 100.0} and response.json()["shadow"] == {"v2": 100.0}
    all_ready(server, model_id, ["v1", "v2"])

    for features in requests_features:
        response = ask(server, model_id, features.tolist())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "v1" == response.headers["X-Model-Version"]
        assert np.allclose(body["outputs"]["Y"], [features @ w1 + b1], rtol=1e-5, atol=1e-5)

    def shadows(samples, **labels):
        return total(samples, "model_shadow_predictions_total", model_id=model_id, version="v2", **labels)

    def agreement(samples, result):
        return total(samples, "model_shadow_agreement_total", model_id=model_id, version="v2", result=result)

    def histogram(samples, name):
        return total(samples, f"model_shadow_{name}_count", model_id=model_id, version="v2")

    # Each shadow run counts its outcome, then its duration, agreement and difference: wait for all of them.
    samples = wait_for_metrics(server, lambda s: shadows(s, status="success") >= 60 and histogram(s, "duration_seconds") >= 60
                               and agreement(s, "agree") + agreement(s, "disagree") >= 60
                               and histogram(s, "max_abs_difference") >= 60)
    counts = {status: shadows(samples, status=status) for status in ("success", "error", "dropped", "unavailable")}
    assert counts == {"success": 60, "error": 0, "dropped": 0, "unavailable": 0}
    assert (agreement(samples, "agree"), agreement(samples, "disagree")) == ((60, 0) if same else (0, 60))
    assert histogram(samples, "max_abs_difference") == 60
    difference = total(samples, "model_shadow_max_abs_difference_sum", model_id=model_id, version="v2")
    assert (difference == 0) if same else (difference > 60 * 1e-3)
    assert histogram(samples, "duration_seconds") == 60
    # Shadows are counted apart: only the version that answered has predictions.
    assert total(samples, "model_predictions_total", model_id=model_id, version="v2") == 0
    assert total(samples, "model_predictions_total", model_id=model_id, version="v1", status="success") == 60
    assert total(metric_samples(replicas[1]), "model_predictions_total", model_id=model_id) == 0


def test_a_failing_shadow_never_fails_a_request(replicas):
    server = replicas[0]
    v1, w1, b1 = models.linear(in_features=4, seed=151)
    v2 = models.linear(in_features=3, seed=152)[0]  # same input name, one feature fewer: every copy fails to decode
    for version, data in (("v1", v1), ("v2", v2)):
        assert upload_version(server, data, "shadow-fails", version).status_code == 201
    assert set_routing(server, "shadow-fails", {"default": "v1", "shadow": {"v2": 100}}).status_code == 200
    all_ready(server, "shadow-fails", ["v1", "v2"])

    features = [1.0, -2.0, 0.5, 3.0]
    want = np.array(features, np.float32) @ w1 + b1
    for _ in range(30):
        response = ask(server, "shadow-fails", features)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v1"
        assert np.allclose(response.json()["outputs"]["Y"], [want], rtol=1e-5, atol=1e-5)

    def shadows(samples, status):
        return total(samples, "model_shadow_predictions_total", model_id="shadow-fails", version="v2", status=status)

    samples = wait_for_metrics(server, lambda s: shadows(s, "error") >= 30)
    assert {status: shadows(samples, status) for status in ("success", "error", "dropped", "unavailable")} == {
        "success": 0, "error": 30, "dropped": 0, "unavailable": 0}
    assert total(samples, "model_shadow_agreement_total", model_id="shadow-fails") == 0
    assert total(samples, "model_predictions_total", model_id="shadow-fails", version="v1", status="success") == 30
    assert total(samples, "model_predictions_total", model_id="shadow-fails", status="error") == 0
    assert requests.get(server.url("/health/ready"), timeout=TIMEOUT).status_code == 200


# -- 7. deleting versions -------------------------------------------------------------------------


def test_a_routed_version_cannot_be_deleted_and_an_unrouted_one_goes_from_both_replicas_at_once(replicas):
    a, b = replicas
    model = Linear("pruned", v1=161, v2=162, v3=163, v4=164)
    features = [0.1, 0.2, 0.3, 0.4]
    model.upload(a)
    directory = a.model_dir

    def refused(server, version: str) -> dict:
        before = snapshot(directory)
        response = requests.delete(server.url(f"/models/pruned/versions/{version}"), headers=CLOSE, timeout=TIMEOUT)
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "version_in_use"
        assert snapshot(directory) == before  # not one file touched
        return response.json()

    # The implicit default: with no routing the newest version answers, so it is in use.
    assert "default" in refused(b, "v4")["error"]
    assert set_routing(a, "pruned", {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 50}}).status_code == 200
    for server, version, role in ((a, "v1", "default"), (b, "v2", "canary"), (a, "v3", "shadow")):
        assert role in refused(server, version)["error"]
    for server in replicas:
        assert listed_versions(server, "pruned") == ["v1", "v2", "v3", "v4"]

    # v4 gets no traffic now: it goes, and neither replica lists or serves it from the next request on.
    response = requests.delete(b.url("/models/pruned/versions/v4"), headers=CLOSE, timeout=TIMEOUT)
    assert response.status_code == 200 and response.json() == {"deleted": "pruned", "version": "v4"}
    for _ in range(20):
        for server in replicas:
            assert listed_versions(server, "pruned") == ["v1", "v2", "v3"]
    for index in (0, 1):
        response = ask(replicas[index], "pruned", features, version="v4")
        assert response.status_code == 404 and response.json()["code"] == "version_not_found"

    # Once the routing moves away from a version, it can go too.
    assert set_routing(b, "pruned", {"default": "v2"}).status_code == 200
    for version in ("v1", "v3"):
        response = requests.delete(a.url(f"/models/pruned/versions/{version}"), headers=CLOSE, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
    for _ in range(20):
        for server in replicas:
            assert listed_versions(server, "pruned") == ["v2"]
            assert get(server, "/models/pruned").json()["versions"] == ["v2"]
    assert [n for n in files_in(directory) if n.startswith("pruned")] == with_serving([
        "pruned.routing.json", "pruned@v2.model_info.json", "pruned@v2.onnx"])
    for index in (0, 1):
        assert answered_by(outcome(index, ask(replicas[index], "pruned", features), 0), model, features) == "v2"
    # The last version is never deleted on its own (DELETE /models/pruned does that).
    assert "only version" in refused(a, "v2")["error"]


# -- 8. a model directory of the previous release -------------------------------------------------


def _old_layout(directory: Path) -> dict[str, dict]:
    """Write two models as the previous release stored them: ``<id>.onnx`` + ``<id>.model_info.json``.

    'legacy' is the shipped iris model with a copy of its sidecar (format 1, with the load check that
    release recorded); 'bare' has only the fields every format-1 sidecar has, no load check.
    """
    directory.mkdir(parents=True)
    shipped = json.loads((ROOT / "models" / "iris.model_info.json").read_text())
    iris = (ROOT / "models" / "iris.onnx").read_bytes()
    assert shipped["format"] == 1 and "sequence" not in shipped and shipped["sha256"] == hashlib.sha256(iris).hexdigest()
    bare, weights, bias = models.linear(seed=171)
    sidecars = {
        "legacy": {**shipped, "id": "legacy", "name": "Legacy iris", "path": "models/legacy.onnx"},
        "bare": {"format": 1, "id": "bare", "name": "bare", "version": "v1.0.0", "path": "models/bare.onnx", "inputs": [],
                 "outputs": [], "created_at": "2026-01-02T03:04:05.000Z", "size_bytes": len(bare),
                 "sha256": hashlib.sha256(bare).hexdigest()},
    }
    for model_id, data in (("legacy", iris), ("bare", bare)):
        (directory / f"{model_id}.onnx").write_bytes(data)
        (directory / f"{model_id}.model_info.json").write_text(json.dumps(sidecars[model_id], indent=2))
    return {"sidecars": sidecars, "bare": (weights, bias)}


def test_a_model_directory_of_the_previous_release_is_served_and_takes_new_versions(make_server, tmp_path):
    directory = tmp_path / "old-models"
    old = _old_layout(directory)
    before = snapshot(directory)
    server = make_server(model_dir=directory, workers=4)
    iris_features = [5.1, 3.5, 1.4, 0.2]

    for _ in range(12):
        response = ask(server, "legacy", iris_features)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v1.0.0" == response.headers["X-Model-Version"]
        assert response.json()["prediction"] == [0]
    weights, bias = old["bare"]
    for _ in range(12):
        response = ask(server, "bare", [1, 2, 3, 4])
        assert response.status_code == 200 and response.json()["model_version"] == "v1.0.0", response.text
        assert np.allclose(response.json()["outputs"]["Y"], [np.array([1, 2, 3, 4], np.float32) @ weights + bias], atol=1e-5)
    listing = get(server, "/models/legacy/versions").json()
    assert [row["version"] for row in listing["versions"]] == ["v1.0.0"] and listing["default"] == "v1.0.0"
    assert {m["id"]: (m["version"], m["versions"]) for m in get(server, "/models").json()["models"]} == {
        "bare": ("v1.0.0", ["v1.0.0"]), "legacy": ("v1.0.0", ["v1.0.0"])}

    # A new version next to the old files: it is the newest, so it answers.
    model = Linear("legacy", v2=172)
    model.upload(server, "v2")
    for _ in range(12):
        record = outcome(0, ask(server, "legacy", iris_features), 0)
        assert answered_by(record, model, iris_features) == "v2"
    assert listed_versions(server, "legacy") == ["v1.0.0", "v2"]

    # Routing back to the old version: the old file answers again.
    response = set_routing(server, "legacy", {"default": "v1.0.0"})
    assert response.status_code == 200, response.text
    assert response.json()["traffic"] == {"v1.0.0": 100.0}
    for _ in range(12):
        response = ask(server, "legacy", iris_features)
        assert response.status_code == 200
        assert response.json()["model_version"] == "v1.0.0" and response.json()["prediction"] == [0]

    # The old files are where they were, as they were. A sidecar without a load check, or without a
    # serving form, gets the record of the check added (the registry measures unmeasured bytes once,
    # in the sandbox, and derives their serving form) and nothing else.
    after = snapshot(directory)
    for name in ("legacy.onnx", "bare.onnx"):
        assert after[name] == before[name], name
    for key in ("legacy", "bare"):
        sidecar = json.loads((directory / f"{key}.model_info.json").read_text())
        assert {k: v for k, v in sidecar.items() if k != "load_check"} == {k: v for k, v in old["sidecars"][key].items() if k != "load_check"}
        assert sidecar["load_check"]["sha256"] == old["sidecars"][key]["sha256"]
        assert "graph" in sidecar["load_check"]["serving"]
    assert set(after) == set(before) | set(with_serving(["legacy.routing.json", "legacy@v2.onnx", "legacy@v2.model_info.json",
                                                         "legacy.onnx", "bare.onnx"]))
