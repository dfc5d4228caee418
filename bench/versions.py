"""What choosing a version costs: the hot path with one version, a canary routing, a routing key and a shadow.

    python bench/versions.py            # a few minutes; prints the table and updates docs/benchmarks.md
    python bench/versions.py --print    # print only

One gunicorn worker (sync, pinned to core 0, wrk on core 1, as ``bench/run.py``) serves two
versions of each benchmark model. The routings take turns on the same server, changed with
``PUT /models/<id>/routing`` between wrk runs, so the machine's drift hits them alike; each cell
is the median of the rounds:

- one version: ``{"default": "v1"}`` (what a model without versions does);
- canary: ``{"default": "v1", "canary": {"v2": 10}}``, requests without a routing key;
- canary + key: the same, each request with an ``X-Routing-Key`` header;
- shadow: ``{"default": "v1", "shadow": {"v2": 100}}``: every request is copied to v2, run by
  the worker's shadow thread on the same core.

Also in one process: ``Plan.choose`` and ``Plan.shadows_for`` alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits import micro_table, per_call_us  # noqa: E402
from bench.run import BATCH, Case, Measure, Server, bench_models, lua_script, median_of, rounds_arguments, v2_body, wrk, write_section  # noqa: E402
from nexus.routing import Plan, Routing  # noqa: E402

BEGIN, END = "<!-- versions: written by bench/versions.py -->", "<!-- /versions -->"
ROUTINGS = {
    "one version": {"default": "v1"},
    "canary 10 %": {"default": "v1", "canary": {"v2": 10}},
    "canary 10 % + routing key": {"default": "v1", "canary": {"v2": 10}},
    "shadow 100 %": {"default": "v1", "shadow": {"v2": 100}},
}


def cases() -> list[Case]:
    import numpy as np

    x = np.random.default_rng(1).random((BATCH, 784), dtype=np.float32)
    body, headers = v2_body(x, binary=True)
    ok = lambda data, headers: True  # noqa: E731 (answers are checked by bench/run.py; here the version is)
    return [
        Case("iris /predict", "/predict", json.dumps({"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}).encode(), 1, ok),
        Case(f"mlp-{BATCH} v2 binary", "/v2/models/mlp/infer", body, BATCH, ok, headers),
    ]


def upload(url: str, path: Path, model_id: str, version: str) -> None:
    with open(path, "rb") as model:
        response = requests.post(f"{url}/models/upload", files={"file": (path.name, model)},
                                 data={"id": model_id, "name": model_id, "version": version}, timeout=60)
    response.raise_for_status()


def route(url: str, model_id: str, routing: dict) -> None:
    requests.put(f"{url}/models/{model_id}/routing", json=routing, timeout=10).raise_for_status()


def shadow_counts(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("model_shadow_predictions_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def in_process(seconds: float) -> list[str]:
    versions = ["v1", "v2", "v3"]
    plain = Plan(Routing(), versions)
    canary = Plan(Routing("v1", {"v2": 10}), versions)
    shadow = Plan(Routing("v1", {}, {"v3": 100}), versions)
    rows = [
        ("`Plan.choose`, no canary", lambda: plain.choose(None)),
        ("`Plan.choose`, canary, random", lambda: canary.choose(None)),
        ("`Plan.choose`, canary, routing key", lambda: canary.choose("user-12345")),
        ("`Plan.shadows_for`, one shadow at 100 %", lambda: shadow.shadows_for("v1", None)),
    ]
    return [f"| {name} | {statistics.median(per_call_us(call, seconds) for _ in range(5)):.2f} µs |" for name, call in rows]


def main() -> None:
    args, levels = rounds_arguments(__doc__, "every routing")
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-versions-"))
    model_dir = work / "models"
    model_dir.mkdir()
    (work / "src").mkdir()
    source = bench_models(work / "src")  # the demo model in src/models, the MLP at src/mlp.onnx
    env = {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": "1"}
    server = Server("wsgi:app", ROOT, env, argparse.Namespace(workers=1, worker_class="sync", threads=1), work / "nexus.log")
    results: dict[tuple[str, str, int], list[Measure]] = {}
    try:
        for version in ("v1", "v2"):
            upload(server.url, source / "iris.onnx", "iris", version)
            upload(server.url, work / "src" / "mlp.onnx", "mlp", version)
        benchmark = cases()
        time.sleep(2.5)  # the registry re-checks files for 2 s after the directory changed
        for case in benchmark:  # warm-up, unrecorded
            wrk(server.url + case.path, lua_script(case, work), 8, 1)
        before = shadow_counts(server.url)
        for _ in range(args.rounds):
            for name, routing in ROUTINGS.items():
                for case in benchmark:
                    route(server.url, "mlp" if case.path.startswith("/v2") else "iris", routing)
                time.sleep(2.1)  # past the look-again window, so every routing runs the steady path
                for case in benchmark:
                    keyed = Case(case.name, case.path, case.body, case.samples, case.check,
                                 {**case.headers, "X-Routing-Key": "user-12345"}) if "key" in name else case
                    for level in levels:
                        measure = wrk(server.url + case.path, lua_script(keyed, work), level, args.duration)
                        results.setdefault((name, case.name, level), []).append(measure)
                        print(f"{name:28} {case.name:20} c={level:<3} {measure.rps:9.1f} req/s  p50 {measure.p50_ms:.3f} ms"
                              f"  errors {measure.errors}", flush=True)
        after = shadow_counts(server.url)
    finally:
        server.stop()
    shadow = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("success", "dropped", "error", "unavailable")}
    section = render(args, levels, benchmark, {k: median_of(v) for k, v in results.items()}, shadow, in_process(0.2))
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


def render(args, levels, benchmark, results, shadow, micro) -> str:
    lines = [
        BEGIN,
        "## Versions",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/versions.py`: one sync worker on "
        f"one core, wrk on the other, {args.duration} s per run, the median of {args.rounds} rounds in which the routings "
        "take turns on the same server. Requests per second (p50 latency):",
        "",
        "| routing | " + " | ".join(f"{c.name}, c={level}" for c in benchmark for level in levels) + " |",
        "|---|" + "---|" * (len(benchmark) * len(levels)),
    ]
    base = {(c.name, level): results["one version", c.name, level] for c in benchmark for level in levels}
    for name in ROUTINGS:
        cells = []
        for case in benchmark:
            for level in levels:
                m = results[name, case.name, level]
                ratio = m.rps / base[case.name, level].rps
                cells.append(f"{m.rps:,.0f} ({m.p50_ms:.2f} ms){'' if name == 'one version' else f', {ratio:.2f}×'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Shadow copies over the shadow runs: {shadow['success']:,.0f} run, {shadow['dropped']:,.0f} dropped because the "
        f"worker's queue was full, {shadow['error']:,.0f} failed. The shadow thread runs at the lowest CPU priority, so "
        "on a core the clients keep busy it gets what they leave: the client's latency and throughput stay near the "
        "one-version row, and the copies beyond that spare time are dropped and counted, never queued behind the "
        "clients. Agreement is then measured on the copies that ran.",
        *micro_table(micro),
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
