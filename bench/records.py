"""What prediction records cost: the hot path with NEXUS_RECORDS off, on with SQLite, and on with PostgreSQL.

    python bench/records.py            # a few minutes; prints the tables and updates docs/benchmarks.md
    python bench/records.py --print    # print only

Three gunicorn servers, one sync worker each, all pinned to core 0 (wrk on core 1, as
``bench/run.py``), monitoring on in all three (as a server runs by default): one with
NEXUS_RECORDS=0, one recording into SQLite (the default), one into a real PostgreSQL started
for the run (skipped where PostgreSQL is not installed). They take turns under wrk in each
round, the first one rotating, so the machine's drift hits all alike; each cell is the median
of the rounds. After the runs, each recording server's /metrics must show every answered
prediction written and none dropped: the write path keeps up with the full rate.

Then, in one process: whole iris requests through the app's WSGI stack, records off against on
(SQLite), interleaved (the per-request cost without the network's noise); and the writer alone,
records per second into SQLite and PostgreSQL in the batches the worker makes.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits import paired  # noqa: E402
from bench.run import (  # noqa: E402
    Case, Measure, Server, bench_models, lua_script, median_of, on_one_core, rounds_arguments, wrk, write_section, wsgi_call,
)

BEGIN, END = "<!-- records: written by bench/records.py -->", "<!-- /records -->"
OFF, SQLITE, POSTGRES = "records off", "records on, SQLite", "records on, PostgreSQL"


def iris_case() -> Case:
    body = json.dumps({"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}).encode()
    return Case("iris /predict", "/predict", body, 1, lambda data, headers: True)


def counter(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def settled(url: str, served: float) -> tuple[float, float]:
    """Records written and dropped once the worker's queue is empty (or 10 s passed)."""
    deadline = time.monotonic() + 10
    while True:
        written, dropped = counter(url, "model_records_written_total"), counter(url, "model_records_dropped_total")
        if written + dropped >= served or time.monotonic() > deadline:
            return written, dropped
        time.sleep(0.2)


def _app(records: bool, work: Path, database_url: str | None = None):
    from nexus import create_app
    from tests import models

    (work / "models").mkdir(parents=True)
    app = create_app({"model_dir": work / "models", "log_level": "WARNING", "records": records, "database_url": database_url})
    response = app.test_client().post("/models/upload", data={"file": (io.BytesIO(models.iris_classifier()), "m.onnx"), "id": "iris",
                                                              "name": "iris", "version": "1"})
    assert response.status_code == 201, response.get_json()
    return app


def whole_requests(seconds: float) -> str:
    base = Path(tempfile.mkdtemp(prefix="nexus-bench-records-"))
    off, on = _app(False, base / "off"), _app(True, base / "on")
    time.sleep(2.5)  # past the registry's look-again window after the upload
    case = iris_case()
    with on_one_core():
        before, after = paired(wsgi_call(off, case), wsgi_call(on, case), 15, seconds)
    on.extensions["nexus"].registry.recorder.flush()
    return f"| {case.name} | {before:.1f} µs | {after:.1f} µs | {after - before:+.1f} µs |"


def writer_rate(url: str | None, label: str, batches: int = 40, size: int = 200) -> str:
    """Rows per second the records writer stores (rows worked out from queued predictions, then one transaction per batch)."""
    from nexus.records.database import Database, engine_url
    from nexus.records.recorder import Pending, Recorder, RecordSettings

    work = Path(tempfile.mkdtemp(prefix="nexus-bench-writer-"))
    recorder = Recorder(Database(engine_url(url, work)), RecordSettings())
    value = [{0: 0.9, 1: 0.05, 2: 0.05}]
    recorder.db.ensure()
    queued = [[Pending(time.time(), f"bench-{b}-{i}", "iris", "1", "u", "classifier", value, None) for i in range(size)]
              for b in range(batches)]
    started, cpu = time.perf_counter(), time.process_time()
    for batch in queued:
        recorder._write(batch)
    count = batches * size
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return f"| {label} | {count / wall:,.0f} records/s | {cpu / count * 1e6:.1f} µs |"


def main() -> None:
    args, levels = rounds_arguments(__doc__, "the servers")
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-records-"))
    (work / "src").mkdir()
    source = bench_models(work / "src")
    servers: dict[str, Server] = {}
    results: dict[tuple[str, int], list[Measure]] = {}
    case = iris_case()
    kept: dict[str, tuple[float, float, float]] = {}
    pg_url = None
    with ExitStack() as stack:
        try:
            from tests.live.postgres import running_postgres

            pg_url = stack.enter_context(running_postgres(work)).url
        except BaseException as exc:  # pytest.skip where PostgreSQL is missing
            print(f"PostgreSQL not measured: {exc}")
        try:
            for label, env in ((OFF, {"NEXUS_RECORDS": "0"}), (SQLITE, {}), (POSTGRES, {"NEXUS_DATABASE_URL": pg_url or ""})):
                if label == POSTGRES and pg_url is None:
                    continue
                model_dir = work / re.sub(r"\W+", "-", label)
                model_dir.mkdir()
                server = servers[label] = Server("wsgi:app", ROOT, {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1",
                                                                    "WEB_CONCURRENCY": "1", "NEXUS_GRPC_PORT": "0", **env},
                                                 argparse.Namespace(workers=1, worker_class="sync", threads=1), work / f"{model_dir.name}.log")
                with open(source / "iris.onnx", "rb") as model:
                    requests.post(f"{server.url}/models/upload", files={"file": ("iris.onnx", model)},
                                  data={"id": "iris", "name": "iris", "version": "1"}, timeout=60).raise_for_status()
            time.sleep(2.5)
            script = lua_script(case, work)
            for server in servers.values():
                wrk(server.url + case.path, script, 8, 1)  # warm-up, unrecorded
            order = list(servers)
            for round_ in range(args.rounds):
                for level in levels:
                    for label in order[round_ % len(order):] + order[:round_ % len(order)]:
                        measure = wrk(servers[label].url + case.path, script, level, args.duration)
                        results.setdefault((label, level), []).append(measure)
                        print(f"{label:24} c={level:<3} {measure.rps:9.1f} req/s  p50 {measure.p50_ms:.3f} ms  errors {measure.errors}",
                              flush=True)
            for label, server in servers.items():
                if label != OFF:
                    served = counter(server.url, 'model_predictions_total{model_id="iris",status="success",version="1"}')
                    kept[label] = (served, *settled(server.url, served))
        finally:
            for server in servers.values():
                server.stop()
        micro = [writer_rate(None, "SQLite (WAL, one transaction per batch of 200)")]
        if pg_url is not None:
            micro.append(writer_rate(pg_url, "PostgreSQL (loopback, one transaction per batch of 200)"))
    section = render(args, levels, {k: median_of(v) for k, v in results.items()}, kept, whole_requests(0.3), micro)
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


def render(args, levels, results, kept, whole, micro) -> str:
    labels = [label for label in (OFF, SQLITE, POSTGRES) if (label, levels[0]) in results]
    lines = [
        BEGIN,
        "## Prediction records",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/records.py`: servers of one sync "
        f"worker each on the same core, wrk on the other, {args.duration} s per run, the median of {args.rounds} rounds; the "
        "servers take turns in each round, the first one rotating. Monitoring is on in all of them. Requests per second "
        "(p50 latency), and the cost per request derived from the throughputs at c=1:",
        "",
        "| case | " + " | ".join(f"{label}, c={level}" for label in labels for level in levels) + " | " +
        " | ".join(f"cost, {label.removeprefix('records on, ')}" for label in labels[1:]) + " |",
        "|---|" + "---|" * (len(labels) * len(levels) + len(labels) - 1),
    ]
    cells = []
    for label in labels:
        for level in levels:
            m = results[label, level]
            ratio = m.rps / results[OFF, level].rps
            cells.append(f"{m.rps:,.0f} ({m.p50_ms:.2f} ms){'' if label == OFF else f', {ratio:.2f}×'}")
    off = results[OFF, levels[0]].rps
    cells += [f"{(1 / results[label, levels[0]].rps - 1 / off) * 1e6:+.1f} µs" for label in labels[1:]]
    lines.append("| iris /predict | " + " | ".join(cells) + " |")
    lines += ["", "After the runs, what each recording server's `/metrics` counted (the writer keeps up with the full rate "
              "when every prediction is written and none dropped):", "",
              "| server | predictions answered | records written | records dropped |", "|---|---|---|---|"]
    lines += [f"| {label} | {served:,.0f} | {written:,.0f} | {dropped:,.0f} |" for label, (served, written, dropped) in kept.items()]
    lines += ["", "The same requests in one process on one core (the writer thread's work counts), through the app's whole WSGI "
              "stack, records off against on (SQLite), interleaved (median of 15):", "", "| case | records off | records on | cost per request |", "|---|---|---|---|", whole,
              "", "The writer alone: queued iris predictions turned into rows (class, confidence) and written, in one thread:", "",
              "| database | rate | this process's CPU per record |", "|---|---|---|", *micro, END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
