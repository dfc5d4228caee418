"""What monitoring costs: the hot path with NEXUS_MONITORING on and off, and the counting alone.

    python bench/monitoring.py            # a few minutes; prints the table and updates docs/benchmarks.md
    python bench/monitoring.py --print    # print only

Two gunicorn servers, one sync worker each, both pinned to core 0 (wrk on core 1, as
``bench/run.py``): one with monitoring on (every model has an uploaded reference, so every
request is binned and its confidence counted), one with NEXUS_MONITORING=0. They take turns
under wrk in each round, so the machine's drift hits both alike; each cell is the median of the
rounds. Then, in one process, ``Monitor.observe`` alone, in a loop: each call queues its
prediction and every ``FLUSH_AT``-th counts the queue, so a call's time is its share of the
whole work: one iris row, one 784-pixel row (the wide path: 5 summaries), a batch of 32 of
those, before and after a million observations (the cost must not grow with traffic), and what
a report (the merge behind ``/models/<id>/monitoring`` and /metrics) costs over 4 workers' files.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits import micro_table, per_call_us  # noqa: E402
from bench.run import (  # noqa: E402
    BATCH, Case, Measure, Server, bench_models, lua_script, median_of, on_one_core, rounds_arguments, v2_body, wrk, wsgi_call,
    write_section,
)

BEGIN, END = "<!-- monitoring: written by bench/monitoring.py -->", "<!-- /monitoring -->"
IRIS_MEAN, IRIS_STD = np.array([5.8, 3.0, 3.8, 1.2]), np.array([0.8, 0.4, 1.8, 0.8])


def cases() -> list[Case]:
    x = np.random.default_rng(1).random((BATCH, 784), dtype=np.float32)
    body, headers = v2_body(x, binary=True)
    ok = lambda data, headers: True  # noqa: E731 (bench/run.py checks the answers)
    return [
        Case("iris /predict", "/predict", json.dumps({"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}).encode(), 1, ok),
        Case("mlp-1 /predict", "/predict", json.dumps({"model_id": "mlp", "features": x[0].tolist()}).encode(), 1, ok),
        Case(f"mlp-{BATCH} v2 binary", "/v2/models/mlp/infer", body, BATCH, ok, headers),
    ]


def references() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(2)
    iris = rng.normal(IRIS_MEAN, IRIS_STD, size=(1000, 4))
    csv = "sepal_length,sepal_width,petal_length,petal_width\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in iris)
    buffer = io.BytesIO()
    np.save(buffer, rng.random((1000, 784), dtype=np.float32))
    return {"iris": ("iris.csv", csv.encode()), "mlp": ("mlp.npy", buffer.getvalue())}


def upload(url: str, path: Path, model_id: str, reference: tuple[str, bytes] | None) -> None:
    with open(path, "rb") as model:
        files = {"file": (path.name, model)}
        if reference is not None:
            files["reference"] = reference
        response = requests.post(f"{url}/models/upload", files=files, data={"id": model_id, "name": model_id, "version": "1"}, timeout=60)
    response.raise_for_status()


def _app(monitoring: bool):
    """An app (no gunicorn) with iris and the MLP uploaded with their references."""
    from nexus import create_app
    from tests import models

    work = Path(tempfile.mkdtemp(prefix="nexus-bench-monitoring-"))
    (work / "models").mkdir()
    app = create_app({"model_dir": work / "models", "log_level": "WARNING", "monitoring": monitoring})
    client = app.test_client()
    refs = references()
    for model_id, data in (("iris", models.iris_classifier()), ("mlp", models.mlp(784, 256, 10))):
        response = client.post("/models/upload", data={"file": (io.BytesIO(data), "m.onnx"), "id": model_id, "name": model_id,
                                                       "version": "1", "reference": (io.BytesIO(refs[model_id][1]), refs[model_id][0])})
        assert response.status_code == 201, response.get_json()
    return app


def whole_requests(seconds: float) -> list[str]:
    """Whole requests in one process, monitoring off against on, interleaved: the per-request cost without the network's noise."""
    from bench.limits import paired

    off, on = _app(False), _app(True)
    time.sleep(2.5)  # past the registry's look-again window after the uploads (requests then stat the model's files)
    rows = []
    for case in cases():
        with on_one_core():
            before, after = paired(wsgi_call(off, case), wsgi_call(on, case), 7, seconds)
        rows.append(f"| {case.name} | {before:.1f} µs | {after:.1f} µs | {after - before:+.1f} µs |")
    return rows


def in_process(seconds: float) -> list[str]:
    """``Monitor.observe`` alone, and a report over 4 workers' files."""
    import os

    app = _app(True)
    time.sleep(2.5)
    registry = app.extensions["nexus"].registry
    iris, mlp = registry.get("iris"), registry.get("mlp")
    rng = np.random.default_rng(3)
    one = {"input": rng.normal(IRIS_MEAN, IRIS_STD, (1, 4)).astype(np.float32)}
    iris_out = iris.runtime.run(one, ["output_probability"])[0]
    pixels = {"X": rng.random((1, 784), dtype=np.float32)}
    batch = {"X": rng.random((BATCH, 784), dtype=np.float32)}
    mlp_out = mlp.runtime.run(pixels)[0]
    batch_out = mlp.runtime.run(batch)[0]
    median = lambda call: statistics.median(per_call_us(call, seconds) for _ in range(5))  # noqa: E731
    rows = [
        ("`observe` and its share of counting, iris, one row (classifier)", median(lambda: iris.monitor.observe(one, iris_out))),
        ("`observe` and its share of counting, MLP 784, one row (5 summaries)", median(lambda: mlp.monitor.observe(pixels, mlp_out))),
        (f"`observe` and its share of counting, MLP 784, batch of {BATCH}", median(lambda: mlp.monitor.observe(batch, batch_out))),
    ]
    for _ in range(1_000_000):
        iris.monitor.observe(one, iris_out)
    rows.append(("`observe` and its share of counting, iris, one row, after 1,000,000 more", median(lambda: iris.monitor.observe(one, iris_out))))
    source = next(iris.monitor.directory.glob("*.counts"))
    for fake in (1, 2, 3):  # three more workers' files, as under gunicorn with 4 workers
        (source.parent / f"{os.getpid() + 100000 + fake}.counts").write_bytes(source.read_bytes())
    rows.append(("report over 4 workers' files, iris (JSON of `/models/<id>/monitoring`)", median(lambda: iris.monitor.report())))
    rows.append(("report over 1 worker's file, MLP 784", median(lambda: mlp.monitor.report())))
    return [f"| {name} | {value:.1f} µs |" for name, value in rows]


def main() -> None:
    args, levels = rounds_arguments(__doc__, "both servers")
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-monitoring-"))
    (work / "src").mkdir()
    source = bench_models(work / "src")
    refs = references()
    servers = {}
    results: dict[tuple[str, str, int], list[Measure]] = {}
    benchmark = cases()
    try:
        for label, flag in (("monitoring on", "1"), ("monitoring off", "0")):
            model_dir = work / label.replace(" ", "-")
            model_dir.mkdir()
            env = {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": "1", "NEXUS_MONITORING": flag,
                   "NEXUS_GRPC_PORT": "0"}
            server = servers[label] = Server("wsgi:app", ROOT, env, argparse.Namespace(workers=1, worker_class="sync", threads=1),
                                             work / f"{label}.log")
            upload(server.url, source / "iris.onnx", "iris", refs["iris"])
            upload(server.url, work / "src" / "mlp.onnx", "mlp", refs["mlp"])
        time.sleep(2.5)  # past the registry's look-again window
        for server in servers.values():
            for case in benchmark:
                wrk(server.url + case.path, lua_script(case, work), 8, 1)  # warm-up, unrecorded
        for round_ in range(args.rounds):
            for case in benchmark:
                for level in levels:
                    for label in list(servers)[:: 1 if round_ % 2 else -1]:  # back to back, the first one alternating
                        server = servers[label]
                        measure = wrk(server.url + case.path, lua_script(case, work), level, args.duration)
                        results.setdefault((label, case.name, level), []).append(measure)
                        print(f"{label:15} {case.name:20} c={level:<3} {measure.rps:9.1f} req/s  p50 {measure.p50_ms:.3f} ms"
                              f"  errors {measure.errors}", flush=True)
        status = requests.get(f"{servers['monitoring on'].url}/models/iris/monitoring", timeout=10).json()["versions"][0]
    finally:
        for server in servers.values():
            server.stop()
    section = render(args, levels, benchmark, {k: median_of(v) for k, v in results.items()}, status, in_process(0.2),
                     whole_requests(0.3))
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


def render(args, levels, benchmark, results, status, micro, whole) -> str:
    lines = [
        BEGIN,
        "## Monitoring",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/monitoring.py`: two servers, one "
        f"sync worker each on the same core, wrk on the other, {args.duration} s per run, the median of {args.rounds} rounds; "
        "each case runs on the two back to back, which one first alternating by round. Both models were uploaded with a reference, so every request on the first server is "
        "binned against it and its confidence counted. Requests per second (p50 latency), and the cost per request "
        "derived from the two throughputs at c=1:",
        "",
        "| case | " + " | ".join(f"{label}, c={level}" for label in ("monitoring off", "monitoring on") for level in levels)
        + " | cost per request |",
        "|---|" + "---|" * (2 * len(levels) + 1),
    ]
    for case in benchmark:
        cells = []
        for label in ("monitoring off", "monitoring on"):
            for level in levels:
                m = results[label, case.name, level]
                ratio = m.rps / results["monitoring off", case.name, level].rps
                cells.append(f"{m.rps:,.0f} ({m.p50_ms:.2f} ms){'' if label == 'monitoring off' else f', {ratio:.2f}×'}")
        off, on = results["monitoring off", case.name, levels[0]].rps, results["monitoring on", case.name, levels[0]].rps
        cells.append(f"{(1 / on - 1 / off) * 1e6:+.1f} µs")
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    window = status["windows"]["window"]
    lines += [
        "",
        f"After the runs the iris report showed {window['requests']:,} requests counted in the window, drift status "
        f"`{status['drift']['status']}` (the benchmark sends one fixed row, so it drifts by design).",
        "",
        "Through the network a few microseconds drown in the machine's noise (runs of one server differ by 5 to 10 %). "
        "The same requests in one process on one core (the flusher thread's work counts), through the app's whole WSGI stack as gunicorn calls it, monitoring off "
        "against on, interleaved (median of 7):",
        "",
        "| case | monitoring off | monitoring on | cost per request |",
        "|---|---|---|---|",
        *whole,
        *micro_table(micro),
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
