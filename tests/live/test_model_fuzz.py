"""A small, bounded fuzz of uploads: byte-mutated models against the real server (2 workers).

Valid models from tests/models.py are mutated with a fixed seed (bits flipped, cut short, a slice
repeated, random bytes inserted), uploaded, and the accepted ones run on zeros of their declared
inputs under a short NEXUS_INFERENCE_TIMEOUT_S. Whatever the bytes, every answer is JSON and no
worker dies.
"""

from __future__ import annotations

import io
import json
import math
import random
import time

import requests

from tests import hostile_models as hostile
from tests import models

SEED = 20261130
MUTANTS = 40
PREDICTIONS = 3
MAX_ELEMENTS = 4096  # inputs larger than this (a mutated dimension) are not sent
BUDGET_S = 90
CLOSE = {"Connection": "close"}
CRASH_MARKERS = ("Worker exited", "WORKER TIMEOUT", "was sent SIGKILL", "was sent SIGSEGV", "exited with code",
                 "terminated due to signal")

# Zero of each ONNX element type the /predict codec reads (see README: dtype numbers).
_ZERO = {1: 0.0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: "", 9: False, 10: 0.0, 11: 0.0, 12: 0, 13: 0}


def _bases() -> dict[str, bytes]:
    return {
        "identity": models.identity(),
        "linear": models.linear(64, 16)[0],  # mostly weights: flips there keep the model loadable
        "add_mul": models.add_mul(),
        "mlp": models.mlp(),
        "divide": models.divide(),
        "reshape": models.reshape_to([2, 2]),
        "slow_loop": models.slow_loop(8),
        "strings": hostile.string_identity(),
    }


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``: its name and the new bytes (never empty)."""
    kind = rng.choices(["flip", "truncate", "duplicate", "insert"], weights=[4, 1, 1, 1])[0]
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 2)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[: rng.randrange(1, len(buf))]
    elif kind == "duplicate":
        start = rng.randrange(len(buf))
        end = min(len(buf), start + rng.randint(1, 64))
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = buf[start:end]
    else:
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return kind, bytes(buf)


def mutants() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    bases = _bases()
    names = sorted(bases)
    out = []
    for _ in range(MUTANTS):
        name = rng.choice(names)
        kind, data = mutate(bases[name], rng)
        out.append((f"{name}/{kind}", data))
    return out


def zeros(shape: list[int], value):
    """A nested list of ``value`` in ``shape``, -1 (dynamic) taken as 1."""
    dims = [d if d >= 0 else 1 for d in shape]

    def build(axis: int):
        return value if axis == len(dims) else [build(axis + 1) for _ in range(dims[axis])]

    return build(0)


def feeds(inputs: list[dict]) -> dict | None:
    """Zeros of each declared input, or None when one cannot be sent (a map, an unknown type, too large)."""
    out = {}
    for spec in inputs:
        value = _ZERO.get(spec.get("dtype"))
        shape = spec.get("shape")
        if value is None or not isinstance(shape, list):
            return None
        if math.prod(d if d >= 0 else 1 for d in shape) > MAX_ELEMENTS:
            return None
        out[spec["name"]] = zeros(shape, value)
    return out


def check_json(response, what: str) -> dict | list:
    content_type = response.headers.get("Content-Type", "")
    assert content_type.startswith("application/json"), (what, response.status_code, content_type, response.text[:200])
    return json.loads(response.text)


def test_mutated_models_get_json_answers_and_kill_no_worker(make_server):
    server = make_server(workers=2, env={"NEXUS_INFERENCE_TIMEOUT_S": "1.5", "NEXUS_MAX_LOAD_SECONDS": "10",
                                         "NEXUS_LOAD_WAIT_S": "2"})
    pids = set(server.worker_pids())
    started = time.monotonic()
    accepted, statuses = [], []
    for n, (label, data) in enumerate(mutants()):
        model_id = f"fuzz-{n}"
        what = f"mutant {n} ({label})"
        response = requests.post(server.url("/models/upload"), files={"file": (f"{model_id}.onnx", io.BytesIO(data))},
                                 data={"id": model_id, "name": model_id, "version": "1"}, headers=CLOSE, timeout=30)
        body = check_json(response, what)
        statuses.append(response.status_code)
        if response.status_code != 201:
            assert response.status_code < 500, (what, response.status_code, body)
            assert body.get("code") and body.get("request_id") == response.headers["X-Request-ID"], (what, body)
            continue
        accepted.append(label)
        request = feeds(body["info"]["inputs"])
        if request is None:
            continue
        for _ in range(PREDICTIONS):
            answer = requests.post(server.url("/predict"), json={"model_id": model_id, "inputs": request},
                                   headers=CLOSE, timeout=30)
            check_json(answer, f"{what}, prediction")
        assert time.monotonic() - started < BUDGET_S, f"the fuzz ran past {BUDGET_S} s at mutant {n}"
    # The server is whole: the same workers, none reported dead, iris still answers.
    assert set(server.worker_pids()) == pids
    assert server.proc.poll() is None
    log = server.log_text() + (server.stderr_path.read_text() if server.stderr_path.exists() else "")
    for marker in CRASH_MARKERS:
        assert marker not in log, marker
    iris = requests.post(server.url("/predict"), json={"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]},
                         headers=CLOSE, timeout=10)
    assert iris.status_code == 200 and iris.json()["prediction"] == [0]
    assert len(set(statuses)) > 1, statuses  # the mutations did reach both the refusals and the acceptances
