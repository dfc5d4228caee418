"""Many models: what 2,000 models in the directory cost a server at start, per request, and per change.

    python bench/many_models.py               # 2,000 models; about 12 minutes (4 of them writing the models); prints, updates docs/benchmarks.md and docs/many_models.png
    python bench/many_models.py --quick       # 200 models, 1 repeat; prints only (--write to write docs/ too)
    python bench/many_models.py --models 500  # another count
    python bench/many_models.py --keep /tmp/nexus-2000   # build the directory there once and reuse it in later runs

The models are tiny MLPs (4 -> 8 -> 3, float32, each with its own seeded weights), written into a
model directory through the server's own code (``nexus.registry.Registry.upload`` over a
``ModelStore``, in 2 processes: the sandbox's load check and the serving form included, the
change log too), as N uploads would; a second directory holds only the first of them.
Everything is then measured through the HTTP API (and one in-process comparison), so the bench
measures whatever the registry does:

a. Start-up: a 2-worker gunicorn server on the N models, without a budget (every worker opens
   every model) and with ``NEXUS_MEMORY_BUDGET_MB`` (models opened on first use), from the
   process start until every worker is ready: ``/health/ready`` answers 200 and, read from the
   Prometheus multiprocess files (no request, so no worker is disturbed), every worker has
   reported its first look at the directory and, without a budget, opened all N models
   (``model_loads_total`` of its pid).
b. Per request: ``/predict`` on one model with N models in the directory against 1, one sync
   worker pinned to core 0, wrk at concurrency 1 and 8 on core 1, the two servers taking turns; and the
   same requests in one process on one core through the app's WSGI stack, interleaved.
c. One change: on 2-worker servers (N models, without and with a budget; 1 model), a new model
   uploaded over HTTP, then predictions on it one after another: the time to the first success
   and to 50 successes in a row, the slowest of those requests, and any failure (there must be
   none: after an upload returns, every worker serves it); and the time until every worker holds
   it (the ``models_loaded`` it last wrote to its multiprocess file grew). Then the CPU each worker
   spends on a change with no traffic (the sum over its threads of /proc/<pid>/task/*/schedstat):
   a window after a new model written by another process (as another replica would; neither
   worker takes part in the write), minus the quieter of the same window just before and just
   after; the median of the repeats. And each worker's idle CPU over 30 s.
d. The budget at work: on the server with a budget, one request for each model of the directory,
   then what each worker has open, what the budget counts, its PSS, and the evictions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits import paired  # noqa: E402
from bench.memory import Gunicorn, metric, per_worker, smaps_rollup  # noqa: E402
from bench.run import Case, Measure, Server, lua_script, median_of, on_one_core, wrk, write_section, wsgi_call  # noqa: E402

BEGIN, END = "<!-- many_models: written by bench/many_models.py -->", "<!-- /many_models -->"
TARGET = "m00000"  # the model the per-request cases ask for (in both directories)
IN, HIDDEN, OUT = 4, 8, 3
WINDOW_S = 4.0  # a CPU window: the loader looks every second, and looks again for 2 s after a change
IDLE_S = 30.0  # the idle window: the loader also cleans leftovers and sweeps monitoring every 30 s
FEATURES = [5.1, 3.5, 1.4, 0.2]


# -- the models -----------------------------------------------------------------------------------


def tiny_mlp(seed: int) -> bytes:
    """An MLP 4 -> 8 -> 3 in float32 with its own weights (every initializer under 1 KiB)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {"W1": rng.standard_normal((IN, HIDDEN), dtype=np.float32), "B1": rng.standard_normal(HIDDEN, dtype=np.float32),
              "W2": rng.standard_normal((HIDDEN, OUT), dtype=np.float32), "B2": rng.standard_normal(OUT, dtype=np.float32)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W1"], ["M1"]), helper.make_node("Add", ["M1", "B1"], ["A1"]),
         helper.make_node("Relu", ["A1"], ["H"]), helper.make_node("MatMul", ["H", "W2"], ["M2"]),
         helper.make_node("Add", ["M2", "B2"], ["Y"])],
        "tiny_mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, IN])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, OUT])],
        [numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def model_id(i: int) -> str:
    return f"m{i:05d}"


def _publish(directory: str, indices: list[int]) -> int:
    """In a process of its own: upload the models ``indices`` into ``directory`` through the server's code."""
    from nexus.registry import Registry
    from nexus.store import ModelStore

    registry = Registry(ModelStore(Path(directory)), 1)
    for i in indices:
        pending = registry.store.new_pending()
        try:
            pending.file.write(tiny_mlp(i))
            registry.upload(model_id(i), f"tiny MLP {i}", "1", pending)
        finally:
            pending.discard()
    return len(indices)


def publish(directory: Path, indices: list[int], processes: int = 2) -> float:
    """Upload the models ``indices`` into ``directory`` in ``processes`` processes; return the seconds it took."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chunks = [indices[k::processes] for k in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = sum(pool.starmap(_publish, [(str(directory), chunk) for chunk in chunks if chunk]))
    assert done == len(indices)
    return time.perf_counter() - started


def visible(directory: Path) -> int:
    return sum(1 for name in os.listdir(directory) if name.endswith(".model_info.json"))


def prepare(work: Path, keep: Path | None, count: int) -> tuple[Path, Path, float | None]:
    """The directory of ``count`` models and the one of one model: built (timed), or reused from ``keep``."""
    base = keep or work
    many, one = base / f"models-{count}", base / "models-1"
    seconds = None
    if not (many.is_dir() and visible(many) == count):
        shutil.rmtree(many, ignore_errors=True)
        print(f"writing {count:,} models through Registry.upload in 2 processes...", flush=True)
        seconds = publish(many, list(range(count)))
        print(f"  {seconds:.0f} s ({seconds / count * 1000:.0f} ms a model per process pair)", flush=True)
    if not (one.is_dir() and visible(one) == 1):
        shutil.rmtree(one, ignore_errors=True)
        publish(one, [0], 1)
    return many, one, seconds


# -- reading the workers without asking them --------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of all the threads of ``pid`` (sum of /proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return total


def pid_metrics(metrics_dir: Path, pid: int, kinds: tuple[str, ...] = ("counter", "gauge_liveall")) -> dict[str, float]:
    """What worker ``pid`` wrote to the Prometheus multiprocess files of ``kinds``: sample name -> sum of its values."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = [str(metrics_dir / f"{kind}_{pid}.db") for kind in kinds if (metrics_dir / f"{kind}_{pid}.db").exists()]
    values: dict[str, float] = {}
    if not files:
        return values
    for family in MultiProcessCollector._read_metrics(files).values():
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def predict_body(model: str) -> bytes:
    return json.dumps({"model_id": model, "features": FEATURES}).encode()


def upload_http(url: str, data: bytes, new_id: str) -> None:
    response = requests.post(f"{url}/models/upload", files={"file": ("m.onnx", data)},
                             data={"id": new_id, "name": new_id, "version": "1"}, timeout=120)
    if response.status_code != 201:
        raise SystemExit(f"upload of {new_id} failed: {response.status_code} {response.text[:300]}")


# -- a. start-up ------------------------------------------------------------------------------------------


@dataclass
class Start:
    ready_s: float
    first_ready_s: float
    pss_mb: float
    metrics: dict[str, float]


def start_server(directory: Path, env: dict[str, str], work: Path, label: str) -> tuple[Gunicorn, Path]:
    metrics_dir = work / f"metrics-{label}"
    metrics_dir.mkdir(exist_ok=True)
    server = Gunicorn(directory, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "NEXUS_LOG_LEVEL": "INFO", **env}, 2,
                      work / f"{label}.log")
    return server, metrics_dir


def wait_ready(server: Gunicorn, metrics_dir: Path, models: int, budget: bool, timeout: float) -> Start:
    """Wait until every worker is ready (see the module's docstring); return the times since the process start."""
    first_ready = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {server.log.name}")
        pids = server.worker_pids()
        try:
            ok = requests.get(f"{server.url}/health/ready", timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        now = time.monotonic() - server.started
        if ok and first_ready is None:
            first_ready = now
        if ok and len(pids) == 2:
            seen = [pid_metrics(metrics_dir, pid) for pid in pids]
            looked = all("models_memory_bytes" in m for m in seen)
            opened = budget or all(m.get("model_loads_total", 0) >= models for m in seen)
            if looked and opened:
                pss = sum(smaps_rollup(pid)["Pss"] for pid in pids) / 1024
                totals = {name: metric(server.url, name) for name in
                          ("models_loaded", "models_available", "model_loads_total", "model_evictions_total")}
                return Start(now, first_ready, pss, totals)
        time.sleep(0.05)
    raise SystemExit(f"the server on {models} models was not ready in {timeout:g} s; see {server.log.name}")


# -- c. one change ------------------------------------------------------------------------------------------


@dataclass
class Change:
    first_s: float
    fifty_s: float
    slowest_ms: float
    failures: dict[int, int]
    all_hold_s: float | None


def holding(metrics_dir: Path, pids: list[int]) -> dict[int, float]:
    """How many models each worker has open, as it last said (its own ``models_loaded`` file)."""
    return {pid: pid_metrics(metrics_dir, pid, ("gauge_livemostrecent",)).get("models_loaded", 0.0) for pid in pids}


def propagation(server: Gunicorn, metrics_dir: Path, new_id: str, seed: int) -> Change:
    """Upload ``new_id`` over HTTP, then ask it for predictions one after another until 50 in a row succeed;
    meanwhile a thread reads the workers' ``models_loaded`` files until each has grown."""
    pids = server.worker_pids()
    before = holding(metrics_dir, pids)
    held: list[float] = []
    stop = threading.Event()

    def watch(started: float) -> None:
        while not stop.is_set() and time.perf_counter() - started < 10:
            if all(v > before[pid] for pid, v in holding(metrics_dir, pids).items()):
                held.append(time.perf_counter() - started)
                return
            time.sleep(0.005)

    upload_http(server.url, tiny_mlp(seed), new_id)
    started = time.perf_counter()
    watcher = threading.Thread(target=watch, args=(started,), daemon=True)
    watcher.start()
    body, failures, streak, first, slowest = predict_body(new_id), {}, 0, None, 0.0
    with requests.Session() as session:
        while streak < 50:
            if time.perf_counter() - started > 60:
                raise SystemExit(f"{new_id}: not 50 successes in a row within 60 s: failures {failures}")
            sent = time.perf_counter()
            response = session.post(f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60)
            took = time.perf_counter() - sent
            if response.status_code == 200:
                first = first if first is not None else time.perf_counter() - started
                streak += 1
                slowest = max(slowest, took * 1000)
            else:
                failures[response.status_code] = failures.get(response.status_code, 0) + 1
                streak = 0
    fifty = time.perf_counter() - started
    watcher.join()  # until every worker holds it, or 10 s after the upload
    return Change(first, fifty, slowest, failures, held[0] if held else None)


def window_cpu(pids: list[int], seconds: float) -> dict[int, float]:
    """CPU milliseconds each worker spends over the next ``seconds``."""
    start = {pid: cpu_ns(pid) for pid in pids}
    time.sleep(seconds)
    return {pid: (cpu_ns(pid) - start[pid]) / 1e6 for pid in pids}


def change_cpu(server: Gunicorn, directory: Path, new_id: str, seed: int, registry) -> dict[int, float]:
    """CPU ms each worker spends on a model another process adds: the window after it, minus the quieter of the
    same window just before and just after (the loader's 30 s clean-up pass lands in one of them now and then)."""
    pids = server.worker_pids()
    time.sleep(2.5)  # past any earlier change's look-again window
    before = window_cpu(pids, WINDOW_S)
    pending = registry.store.new_pending()
    start = {pid: cpu_ns(pid) for pid in pids}
    try:
        pending.file.write(tiny_mlp(seed))
        registry.upload(new_id, new_id, "1", pending)  # as another replica: neither worker takes part
    finally:
        pending.discard()
    time.sleep(WINDOW_S)
    changed = {pid: (cpu_ns(pid) - start[pid]) / 1e6 for pid in pids}
    after = window_cpu(pids, WINDOW_S)
    return {pid: changed[pid] - min(before[pid], after[pid]) for pid in pids}


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Results:
    models: int
    generate_s: float | None = None
    starts: dict[str, list[Start]] = field(default_factory=dict)
    http: dict[tuple[str, int], list[Measure]] = field(default_factory=dict)
    in_process: tuple[float, float] | None = None
    changes: dict[str, list[Change]] = field(default_factory=dict)
    change_cpu: dict[str, list[dict[int, float]]] = field(default_factory=dict)
    idle_cpu: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 models, 1 repeat; prints only unless --write")
    parser.add_argument("--repeats", type=int, default=3, help="starts, wrk rounds and changes per case (the median is reported)")
    parser.add_argument("--budget-mb", type=float, default=64,
                        help="NEXUS_MEMORY_BUDGET_MB of the budget cases (default 64: less than 2,000 tiny models take)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--keep", type=Path, help="build the model directories here, and reuse them when they are there")
    parser.add_argument("--print", action="store_true", help="print only, do not update docs/")
    parser.add_argument("--write", action="store_true", help="write docs/ after a --quick run too")
    args = parser.parse_args()
    if args.quick:
        args.models = 200 if args.models == 2000 else args.models
        args.repeats, args.duration = 1, 3
    write = (not args.print) and (args.write or not args.quick)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package wrk)")
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-many-"))
    results = Results(args.models)
    try:
        many, one, results.generate_s = prepare(work, args.keep, args.models)
        run_all(args, work, many, one, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.keep:  # the bench's own additions (new-*, replica-*) go, the N models stay
            for directory in (args.keep / f"models-{args.models}", args.keep / "models-1"):
                cleanup(directory)
    elapsed = time.monotonic() - began
    section = render(args, results, elapsed)
    print(section)
    if write:
        write_section(BEGIN, END, section)
        chart(results, ROOT / "docs" / "many_models.png")
        print("wrote docs/benchmarks.md and docs/many_models.png")
    else:
        print("(docs/ left as it is)")


def cleanup(directory: Path) -> None:
    if not directory.is_dir():
        return
    from nexus.registry import Registry
    from nexus.store import ModelStore

    registry = Registry(ModelStore(directory), 1)
    for name in os.listdir(directory):
        if name.endswith(".routing.json") and name.startswith(("new-", "replica-")):
            try:
                registry.delete(name[: -len(".routing.json")])
            except Exception as exc:  # noqa: BLE001
                print(f"could not remove {name}: {exc}")


def run_all(args, work: Path, many: Path, one: Path, results: Results) -> None:
    from nexus.registry import Registry
    from nexus.store import ModelStore

    n = args.models
    budget_env = {"NEXUS_MEMORY_BUDGET_MB": f"{args.budget_mb:g}"}
    configs = {f"{n:,} models, no budget": (many, {}, False), f"{n:,} models, budget {args.budget_mb:g} MB": (many, budget_env, True),
               "1 model, no budget": (one, {}, False)}

    # a. start-up, the configurations taking turns
    for r in range(args.repeats):
        for label, (directory, env, budget) in configs.items():
            server, metrics_dir = start_server(directory, env, work, f"start-{r}-{label.replace(' ', '_')}")
            try:
                start = wait_ready(server, metrics_dir, visible(directory), budget, timeout=1800)
            finally:
                server.stop()
            results.starts.setdefault(label, []).append(start)
            print(f"start {r + 1}: {label:32} ready in {start.ready_s:6.1f} s (first /health/ready 200 at {start.first_ready_s:.1f} s), "
                  f"workers' PSS {start.pss_mb:,.0f} MiB, {start.metrics}", flush=True)

    # b. per request: one pinned worker each, wrk on the other core; then in one process
    case = Case(f"{TARGET} /predict", "/predict", predict_body(TARGET), 1, lambda data, headers: True)
    servers = {}
    try:
        for label, directory in ((f"{n:,} models", many), ("1 model", one)):
            server = servers[label] = Server("wsgi:app", ROOT, {"NEXUS_MODEL_DIR": str(directory), "NEXUS_ORT_THREADS": "1",
                                                                "WEB_CONCURRENCY": "1", "NEXUS_GRPC_PORT": "0"},
                                             argparse.Namespace(workers=1, worker_class="sync", threads=1), work / f"wrk-{label[:4]}.log")
            deadline = time.monotonic() + 1800
            while requests.get(f"{server.url}/health/ready", timeout=60).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{label}: not ready")
                time.sleep(0.2)
            response = requests.post(server.url + case.path, data=case.body, headers=case.headers, timeout=60)
            assert response.status_code == 200, response.text
        script = lua_script(case, work)
        time.sleep(2.5)
        for server in servers.values():
            wrk(server.url + case.path, script, 1, 1)  # warm-up
        for r in range(args.repeats):
            order = list(servers.items()) if r % 2 == 0 else list(servers.items())[::-1]
            for label, server in order:
                for level in (1, 8):
                    measure = wrk(server.url + case.path, script, level, args.duration)
                    results.http.setdefault((label, level), []).append(measure)
                    print(f"wrk {r + 1}: {label:14} c={level} {measure.rps:7,.0f} req/s  p50 {measure.p50_ms:.3f} ms  "
                          f"p99 {measure.p99_ms:.3f} ms  errors {measure.errors}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results.in_process = in_process(many, one, work)
    print(f"in process: 1 model {results.in_process[1]:.1f} µs, {n:,} models {results.in_process[0]:.1f} µs", flush=True)

    # c. one change
    for label, (directory, env, budget) in configs.items():
        server, metrics_dir = start_server(directory, env, work, f"change-{label.replace(' ', '_')}")
        registry = Registry(ModelStore(directory), 1)
        try:
            wait_ready(server, metrics_dir, visible(directory), budget, timeout=1800)
            time.sleep(3)
            pids = server.worker_pids()
            idle_s = 8.0 if args.quick else IDLE_S
            results.idle_cpu[label] = sum(window_cpu(pids, idle_s).values()) / len(pids) / idle_s
            print(f"idle: {label:32} {results.idle_cpu[label]:.2f} ms of CPU per second per worker over {idle_s:g} s", flush=True)
            for r in range(args.repeats):
                change = propagation(server, metrics_dir, f"new-{r}", 10_000 + r)
                results.changes.setdefault(label, []).append(change)
                print(f"change {r + 1}: {label:32} first success {change.first_s * 1000:7.1f} ms, 50 in a row "
                      f"{change.fifty_s * 1000:7.1f} ms, slowest {change.slowest_ms:6.1f} ms, every worker holds it "
                      f"{'-' if change.all_hold_s is None else f'{change.all_hold_s * 1000:.0f} ms'}, failures {change.failures}", flush=True)
            for r in range(cpu_repeats(args)):
                cpu = change_cpu(server, directory, f"replica-{r}", 20_000 + r, registry)
                results.change_cpu.setdefault(label, []).append(cpu)
                print(f"cpu {r + 1}: {label:32} per worker on a change: " + ", ".join(f"{v:.1f} ms" for v in cpu.values()), flush=True)
            if budget:
                results.budget = every_model(server, metrics_dir, directory, args.budget_mb)
                print(f"budget: after a request for each model: {results.budget}", flush=True)
        finally:
            server.stop()
            for name in [f"new-{r}" for r in range(args.repeats)] + [f"replica-{r}" for r in range(cpu_repeats(args))]:
                try:
                    registry.delete(name)
                except Exception:  # noqa: BLE001 (not there: the run stopped before it)
                    pass


def cpu_repeats(args) -> int:
    return args.repeats if args.quick else max(5, args.repeats)


def every_model(server: Gunicorn, metrics_dir: Path, directory: Path, budget_mb: float) -> dict[str, float]:
    """Under a budget: ask each model of the directory once, one after another; return what the workers then hold."""
    ids = sorted(name[: -len(".routing.json")] for name in os.listdir(directory) if name.endswith(".routing.json"))
    times = []
    with requests.Session() as session:
        for model in ids:
            sent = time.perf_counter()
            response = session.post(f"{server.url}/predict", data=predict_body(model), headers={"Content-Type": "application/json"},
                                    timeout=60)
            times.append((time.perf_counter() - sent) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{model}: {response.status_code} {response.text[:300]}")
        warm = []
        for _ in range(50):
            sent = time.perf_counter()
            session.post(f"{server.url}/predict", data=predict_body(ids[-1]), headers={"Content-Type": "application/json"}, timeout=60)
            warm.append((time.perf_counter() - sent) * 1000)
    pids = server.worker_pids()
    open_now = holding(metrics_dir, pids)
    return {"models": len(ids), "budget_mb": budget_mb, "first_request_ms": statistics.median(times),
            "warm_request_ms": statistics.median(warm), "seconds": sum(times) / 1000,
            "open_per_worker": [open_now[pid] for pid in pids],
            "counted_mb_per_worker": [v / 2**20 for v in per_worker(server.url, "models_memory_bytes").values()],
            "pss_mb_per_worker": [smaps_rollup(pid)["Pss"] / 1024 for pid in pids],
            "evictions": metric(server.url, "model_evictions_total"), "loads": metric(server.url, "model_loads_total")}


def in_process(many: Path, one: Path, work: Path) -> tuple[float, float]:
    """Median µs of a whole /predict through the app's WSGI stack, N models against 1, interleaved on one core."""
    from nexus import create_app

    apps = []
    for directory in (many, one):
        app = create_app({"model_dir": directory, "log_level": "WARNING", "records": False, "monitoring": True,
                          "state_dir": work / f"state-{directory.name}"})
        app.extensions["nexus"].registry.sync()  # opens every model here (no loader thread in this process)
        apps.append(app)
    case = Case(f"{TARGET} /predict", "/predict", predict_body(TARGET), 1, lambda data, headers: True)
    time.sleep(2.5)  # past the registry's look-again window
    with on_one_core():
        many_us, one_us = paired(wsgi_call(apps[0], case), wsgi_call(apps[1], case), 15, 0.3)
    return many_us, one_us


# -- the report ------------------------------------------------------------------------------------------------


def med(values) -> float:
    return statistics.median(list(values))


def render(args, results: Results, elapsed: float) -> str:
    n = results.models
    labels = list(results.starts)
    lines = [
        BEGIN,
        "## Many models",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/many_models.py"
        f"{' --quick' if args.quick else ''}{f' --models {n}' if n not in (200, 2000) else ''}` (took {elapsed / 60:.0f} min"
        f"{f'; writing the {n:,} models through `Registry.upload` took {results.generate_s:.0f} s of it' if results.generate_s else ''}): "
        f"{n:,} tiny MLPs (4 → 8 → 3, each its own weights, written with the sandbox's load check and serving form as "
        f"uploads write them) against a directory of 1. Medians of {args.repeats} repeats.",
        "",
        "**Start-up** of a 2-worker server, from the process start until every worker is ready (`/health/ready` 200; "
        "every worker has read the directory and, without a budget, opened every model, as its `model_loads_total` says):",
        "",
        "| directory | ready after | first `/health/ready` 200 | PSS of the 2 workers | models_loaded | models_available | model_loads_total | model_evictions_total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        starts = results.starts[label]
        last = starts[-1].metrics
        lines.append(f"| {label} | {med(s.ready_s for s in starts):.1f} s | {med(s.first_ready_s for s in starts):.1f} s | "
                     f"{med(s.pss_mb for s in starts):,.0f} MiB | {last['models_loaded']:,.0f} | {last['models_available']:,.0f} | "
                     f"{last['model_loads_total']:,.0f} | {last['model_evictions_total']:,.0f} |")
    many_label, one_label = f"{n:,} models", "1 model"
    lines += [
        "",
        f"**Per request**: `/predict` on `{TARGET}` (one row), one sync worker pinned to one core, wrk on the other, "
        f"{args.duration} s runs, the two servers taking turns; requests per second (p50, p99):",
        "",
        "| directory | c=1 | c=8 |",
        "|---|---|---|",
    ]
    for label in (one_label, many_label):
        cells = []
        for level in (1, 8):
            m = median_of(results.http[(label, level)])
            ratio = "" if label == one_label else f", {m.rps / median_of(results.http[(one_label, level)]).rps:.2f}×"
            cells.append(f"{m.rps:,.0f} ({m.p50_ms:.2f} ms, {m.p99_ms:.2f} ms){ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    many_us, one_us = results.in_process
    lines += [
        "",
        f"In one process on one core, through the app's whole WSGI stack, interleaved (median of 15): {one_us:.1f} µs a request "
        f"with 1 model, {many_us:.1f} µs with {n:,} ({many_us - one_us:+.1f} µs).",
        "",
        "**One change**: a new model uploaded over HTTP to a 2-worker server, then `/predict` on it one request after "
        "another (times from the upload's answer; every worker holds it when the `models_loaded` each last wrote grew); "
        "and the CPU each worker spends on a model another process adds (as another replica would, so neither worker "
        f"takes part in the write) with no traffic: {WINDOW_S:g} s from the write, minus the quieter of the {WINDOW_S:g} s "
        "just before and just after; over both workers and the repeats, median (largest):",
        "",
        "| directory | first success | 50 in a row | slowest of those | every worker holds it | failures | CPU per worker per change | idle CPU per worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in results.changes:
        changes = results.changes[label]
        hold = [c.all_hold_s for c in changes if c.all_hold_s is not None]
        failures: dict[int, int] = {}
        for c in changes:
            for status, count in c.failures.items():
                failures[status] = failures.get(status, 0) + count
        cpu = [v for run in results.change_cpu[label] for v in run.values()]
        lines.append(f"| {label} | {med(c.first_s for c in changes) * 1000:.0f} ms | {med(c.fifty_s for c in changes) * 1000:.0f} ms | "
                     f"{med(c.slowest_ms for c in changes):.0f} ms ({max(c.slowest_ms for c in changes):.0f}) | "
                     f"{f'{med(hold) * 1000:.0f} ms ({max(hold) * 1000:.0f})' if hold else 'not within 10 s'}"
                     f"{'' if len(hold) == len(changes) else f', {len(changes) - len(hold)} of {len(changes)} not within 10 s'} | "
                     f"{', '.join(f'{count} × {status}' for status, count in sorted(failures.items())) or 'none'} | "
                     f"{med(cpu):.1f} ms ({max(cpu):.1f}) | {results.idle_cpu[label]:.2f} ms/s |")
    idle_s = 8.0 if args.quick else IDLE_S
    lines += ["", f"Idle CPU is measured over {idle_s:g} s with no change and no request (the loader looks at the directory every "
              "second, and every 30 s removes leftovers of dead writers and sweeps monitoring's files)."]
    if results.budget:
        b = results.budget
        no_budget_pss = med(x.pss_mb for x in results.starts[labels[0]])
        one_pss = med(x.pss_mb for x in results.starts[labels[-1]])
        lines += [
            "",
            f"**The budget at work**: on the server with `NEXUS_MEMORY_BUDGET_MB={b['budget_mb']:g}`, after the changes above, "
            f"one request for each of the {b['models']:,.0f} models in the directory, one after another ({b['seconds']:.1f} s in all; a request that opens its model "
            f"{b['first_request_ms']:.2f} ms at the median, a warm one {b['warm_request_ms']:.2f} ms). Without a budget the "
            f"2 workers hold {no_budget_pss:,.0f} MiB of PSS with every model open ({one_pss:,.0f} MiB with one model). Then:",
            "",
            "| | worker 1 | worker 2 |",
            "|---|---|---|",
            "| models open (`models_loaded` it last wrote) | " + " | ".join(f"{v:,.0f}" for v in b["open_per_worker"]) + " |",
            "| what the budget counts (`models_memory_bytes`) | " + " | ".join(f"{v:,.1f} MiB" for v in b["counted_mb_per_worker"]) + " |",
            "| PSS | " + " | ".join(f"{v:,.0f} MiB" for v in b["pss_mb_per_worker"]) + " |",
            "",
            f"`model_loads_total` {b['loads']:,.0f}, `model_evictions_total` {b['evictions']:,.0f}.",
        ]
    lines += [
        "",
        "![many models](many_models.png)",
        END,
    ]
    return "\n".join(lines) + "\n"  # a line of its own after END, kept when the section is replaced


def chart(results: Results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no chart (pip install -e '.[bench]')")
        return
    n = results.models
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), dpi=100)
    labels = list(results.starts)
    short = [label.replace(" models", "").replace(", ", "\n") for label in labels]
    colors = ["#2f6fdf", "#7fa8ef", "#aaaaaa"]
    ax = axes[0]
    ready = [med(s.ready_s for s in results.starts[label]) for label in labels]
    ax.bar(range(len(labels)), ready, color=colors)
    for i, v in enumerate(ready):
        ax.annotate(f"{v:.1f} s", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), short, fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("start-up to ready, 2 workers", fontsize=10)

    ax = axes[1]
    groups = [f"{n:,} models", "1 model"]
    http = [median_of(results.http[(g, 1)]).p50_ms for g in groups]
    many_us, one_us = results.in_process
    local = [many_us / 1000, one_us / 1000]
    x = np.arange(2)
    ax.bar(x - 0.2, http, 0.4, label="over HTTP, wrk c=1, p50", color="#2f6fdf")
    ax.bar(x + 0.2, local, 0.4, label="in one process (WSGI), median", color="#aaaaaa")
    for i, (a, b) in enumerate(zip(http, local, strict=True)):
        ax.annotate(f"{a:.3f}", (i - 0.2, a), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{b:.3f}", (i + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel("ms per /predict")
    ax.set_ylim(top=max(http) * 1.35)
    ax.set_title("/predict on one model, 1 worker on one core", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    labels = list(results.changes)
    short = [label.replace(" models", "").replace(", ", "\n") for label in labels]
    x = np.arange(len(labels))
    fifty = [med(c.fifty_s for c in results.changes[label]) * 1000 for label in labels]
    cpu = [med(v for run in results.change_cpu[label] for v in run.values()) for label in labels]
    ax.bar(x - 0.2, fifty, 0.4, label="upload → 50 successes in a row", color="#2f6fdf")
    other = ax.twinx()
    other.bar(x + 0.2, cpu, 0.4, label="CPU per worker per change (right axis)", color="#d08030")
    for i, (a, b) in enumerate(zip(fifty, cpu, strict=True)):
        ax.annotate(f"{a:.0f} ms", (i - 0.2, a), ha="center", va="bottom", fontsize=8)
        other.annotate(f"{b:.1f} ms", (i + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, short, fontsize=8)
    ax.set_ylabel("ms from the upload's answer")
    other.set_ylabel("CPU ms per worker")
    ax.set_ylim(top=max(fifty) * 1.4)
    other.set_ylim(bottom=0, top=max(max(cpu), 1) * 1.4)
    ax.set_title("one new model, 2 workers", fontsize=10)
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    fig.suptitle(f"Model Nexus with {n:,} models in the directory", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
