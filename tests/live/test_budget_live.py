"""NEXUS_MEMORY_BUDGET_MB on the real server: 20 models, 2 workers, a budget that holds about 5 of them.

Under a budget a worker opens a model on its first request (which waits for the load and never
fails because of it) and closes the least recently used ones when the next would not fit; the
budget counts what the sandbox measured at upload (``load_check.serving.resident_mb``: the
serving form's files plus the session's private memory). The directory of 20 models is made
once for the module by a first server; a second one starts on it with a budget computed from
the sidecars, so the arithmetic holds whatever this onnxruntime writes.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.live.server import CLOSE, LiveServer, metric_samples, total
from tests.live.test_shared_weights_live import (
    MB,
    answered_by_worker,
    inputs,
    mlp,
    pss_kb,
    upload,
)

DIMS = (64, 1024, 768, 8)  # 3.3 MB of float32 weights per model
COUNT = 20
FITS = 5.5  # the budget holds this many models' measured size
MARGIN_MB = 64  # a worker's PSS may grow past the budget by this much: onnxruntime's arenas, the interpreter's heap


def model_id(index: int) -> str:
    return f"m{index:02d}"


def memory_by_pid(samples) -> dict[int, float]:
    """models_memory_bytes of each worker (multiprocess mode labels every worker's series with its pid)."""
    return {int(dict(labels)["pid"]): value for (name, labels), value in samples.items() if name == "models_memory_bytes"}


def listed(server) -> list[str]:
    response = requests.get(server.url("/models"), headers=CLOSE, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["models"])
    return [row["id"] for row in body["models"]]


def ask(server, index: int, x: np.ndarray) -> requests.Response:
    return requests.post(server.url("/predict"), json={"model_id": model_id(index), "features": x.tolist()},
                         headers=CLOSE, timeout=60)


def answer(response: requests.Response) -> np.ndarray:
    return np.asarray(response.json()["outputs"]["Y"], np.float32)


@pytest.fixture(scope="module")
def stocked(tmp_path_factory):
    """A directory of 20 models (different weights), uploaded to a 2-worker server with a budget; what it held after."""
    base = tmp_path_factory.mktemp("budget")
    directory = base / "models"
    directory.mkdir()
    data = [mlp(100 + i, DIMS) for i in range(COUNT)]
    features = [inputs(DIMS, 1, seed=i)[0] for i in range(COUNT)]
    sessions = [ort.InferenceSession(d, providers=["CPUExecutionProvider"]) for d in data]
    # answers[j][i]: model j on model i's input (onnxruntime on the uploaded bytes); each model's own is its reference.
    answers = [[session.run(["Y"], {"X": x[None, :]})[0] for x in features] for session in sessions]
    wants = [answers[i][i] for i in range(COUNT)]
    for i in range(COUNT):  # every model answers its input unlike the others: a mix-up would show
        assert min(np.abs(wants[i] - answers[j][i]).max() for j in range(COUNT) if j != i) > 1e-3
    del sessions
    # Before any upload the measured size is unknown: the serving weights file holds each MatMul's
    # weights and their pre-packed form, about twice the weights.
    estimate = 2 * 4 * sum(a * b for a, b in pairwise(DIMS)) / MB + 0.5
    upload_budget = round(FITS * estimate, 1)
    server = LiveServer(directory, base / "logs", workers=2, env={"NEXUS_MEMORY_BUDGET_MB": str(upload_budget)}).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda i: upload(server, data[i], model_id(i)), range(COUNT)))
        assert [r.status_code for r in responses] == [201] * COUNT, [r.text for r in responses if r.status_code != 201]
        after_uploads = metric_samples(server)
        pids = server.worker_pids()
    finally:
        server.stop()
    resident = [json.loads((directory / f"{model_id(i)}@1.model_info.json").read_text())["load_check"]["serving"]["resident_mb"]
                for i in range(COUNT)]
    return SimpleNamespace(base=base, directory=directory, data=data, features=features, wants=wants, resident=resident,
                           upload_budget=upload_budget, after_uploads=after_uploads, upload_pids=pids)


@pytest.fixture(scope="module")
def budgeted(stocked):
    """A 2-worker server started with a budget of about 5 models on the directory of 20; what it showed before any
    prediction, and after its first one."""
    budget = round(FITS * max(stocked.resident), 1)
    server = LiveServer(stocked.directory, stocked.base / "logs", workers=2, env={"NEXUS_MEMORY_BUDGET_MB": str(budget)}).start()
    try:
        seen = SimpleNamespace(server=server, budget=budget)
        seen.at_ready = metric_samples(server)
        time.sleep(2.5)  # two passes of each worker's loader thread
        seen.idle = metric_samples(server)
        seen.pids = server.worker_pids()
        seen.pss_before = {pid: pss_kb(pid) for pid in seen.pids}
        seen.listing = listed(server)
        seen.after_listing = metric_samples(server)
        seen.first = ask(server, 0, stocked.features[0])
        seen.after_first = metric_samples(server)
        yield seen
    finally:
        server.stop()


def test_uploads_to_a_server_with_a_budget_leave_each_worker_within_it(stocked):
    """A worker that takes uploads opens each uploaded model: it must close others to stay within its budget."""
    held = memory_by_pid(stocked.after_uploads)
    assert set(stocked.upload_pids) <= set(held)
    budget = stocked.upload_budget * MB
    print(f"\nafter {COUNT} uploads of {max(stocked.resident)} MB (measured) each, budget {stocked.upload_budget} MB: "
          + ", ".join(f"worker {pid} holds {held[pid] / MB:.1f} MB" for pid in stocked.upload_pids))
    over = {pid: round(held[pid] / MB, 1) for pid in stocked.upload_pids if held[pid] > budget}
    assert over == {}, f"workers hold more than the budget of {stocked.upload_budget} MB after uploads: {over}"


def test_a_start_with_a_budget_opens_nothing_until_a_request_comes(stocked, budgeted):
    assert 4 <= budgeted.budget / max(stocked.resident) <= 6  # about 5 models fit: the premise of these tests
    for when in ("at_ready", "idle", "after_listing"):
        samples = getattr(budgeted, when)
        assert total(samples, "models_available") == COUNT, when
        assert total(samples, "models_loaded") == 0, when
        assert total(samples, "model_loads_total") == 0, when
        assert total(samples, "model_load_duration_seconds_count") == 0, when
        assert set(memory_by_pid(samples).values()) <= {0.0}, when
    assert budgeted.listing == [model_id(i) for i in range(COUNT)]  # listed without being opened

    first = budgeted.first
    assert first.status_code == 200, first.text
    assert np.array_equal(answer(first), stocked.wants[0])
    assert total(budgeted.after_first, "model_loads_total") == 1
    assert total(budgeted.after_first, "model_load_duration_seconds_count") == 1
    assert total(budgeted.after_first, "models_loaded") == 1
    assert sorted(memory_by_pid(budgeted.after_first).values()) == [0.0, pytest.approx(stocked.resident[0] * MB, rel=0.01)]


def test_twenty_models_in_random_order_answer_right_and_each_worker_stays_within_the_budget(stocked, budgeted):
    server = budgeted.server
    jobs = [i for i in range(COUNT) for _ in range(12)]
    random.Random(7).shuffle(jobs)

    def one(index: int):
        try:
            return index, ask(server, index, stocked.features[index])
        except requests.RequestException as exc:
            return index, exc

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    seconds = time.monotonic() - started

    errors = [(model_id(i), getattr(r, "status_code", None), getattr(r, "text", repr(r))) for i, r in results
              if not isinstance(r, requests.Response) or r.status_code != 200]
    assert errors == [], f"{len(errors)} of {len(results)} predictions failed, first: {errors[:3]}"
    wrong = [model_id(i) for i, r in results if r.json()["model_id"] != model_id(i) or not np.array_equal(answer(r), stocked.wants[i])]
    assert wrong == [], f"{len(wrong)} answers are not their model's: {wrong[:5]}"

    assert server.worker_pids() == budgeted.pids, "a worker was replaced"
    served = {pid: sum(answered_by_worker(server, model_id(i)).get(pid, 0) for i in range(COUNT)) for pid in budgeted.pids}
    assert all(served.values()) and sum(served.values()) == len(results) + 1, served  # + the fixture's first prediction
    samples = metric_samples(server)
    loads, evictions = total(samples, "model_loads_total"), total(samples, "model_evictions_total")
    held = memory_by_pid(samples)
    pss_after = {pid: pss_kb(pid) for pid in budgeted.pids}
    growth = {pid: (pss_after[pid] - budgeted.pss_before[pid]) / 1024 for pid in budgeted.pids}
    print(f"\n{len(results)} predictions over {COUNT} models of {max(stocked.resident)} MB (measured) at concurrency 8 "
          f"in {seconds:.1f} s, budget {budgeted.budget} MB per worker: {loads:.0f} loads "
          f"({1000 * total(samples, 'model_load_duration_seconds_sum') / loads:.0f} ms each on average), {evictions:.0f} evictions; "
          + "; ".join(f"worker {pid}: answered {served[pid]:.0f}, holds {held[pid] / MB:.1f} MB, PSS {budgeted.pss_before[pid] / 1024:.1f} -> "
                      f"{pss_after[pid] / 1024:.1f} MB (+{growth[pid]:.1f})" for pid in budgeted.pids))
    assert evictions > 0
    assert loads >= COUNT and loads == total(samples, "model_load_duration_seconds_count")
    assert all(pid in held for pid in budgeted.pids)
    # _evict closes models until what is held plus the one to open fits, and never one running a request (a sync worker
    # runs one at a time): no worker holds more than the budget.
    over = {pid: held[pid] / MB for pid in budgeted.pids if held[pid] > budgeted.budget * MB}
    assert over == {}, f"workers over the budget of {budgeted.budget} MB: {over}"
    assert all(held[pid] > 0 for pid in budgeted.pids)
    too_big = {pid: g for pid, g in growth.items() if g > budgeted.budget + MARGIN_MB}
    assert too_big == {}, f"PSS grew past the budget + {MARGIN_MB} MB: {too_big}"
    closed = [r for r in server.log_records() if r.get("message") == "models closed to stay under the memory budget"]
    assert closed and all(r["held_mb"] <= budgeted.budget for r in closed)

    assert listed(server) == [model_id(i) for i in range(COUNT)]
    assert total(metric_samples(server), "models_available") == COUNT
