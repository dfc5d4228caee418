"""Benchmark Model Nexus against a naive Flask app and onnxruntime itself, on this machine.

    python bench/run.py            # the full run: 3 repeats x 8 s per case, writes docs/benchmarks.md and docs/bench.png
    python bench/run.py --quick    # 1 repeat x 3 s at concurrency 8; prints only (--write to write docs/ too)

Both servers run under gunicorn with the same settings, pinned to core 0 where taskset exists;
wrk (a compiled load generator) runs on core 1. Every case's response is checked against
onnxruntime before it is timed. Needs: wrk, and the 'bench' extra (matplotlib, onnx, requests).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32
LIMITS_BEGIN = "<!-- limits: written by bench/limits.py -->"


# -- models and request bodies ---------------------------------------------------------------------


def build_mlp(path: Path) -> None:
    """An MLP 784 -> 256 -> 10 in float32 with seeded weights (an MNIST-sized network)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((784, 256)) / 28).astype(np.float32)
    w2 = (rng.standard_normal((256, 10)) / 16).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W1"], ["H0"]),
            helper.make_node("Add", ["H0", "B1"], ["H1"]),
            helper.make_node("Relu", ["H1"], ["H"]),
            helper.make_node("MatMul", ["H", "W2"], ["L0"]),
            helper.make_node("Add", ["L0", "B2"], ["Y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 784])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.zeros(256, np.float32), "B1"),
         numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros(10, np.float32), "B2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())


def bench_models(work: Path) -> Path:
    """Make ``work/models`` holding the demo model, and the MLP at ``work/mlp.onnx`` for uploading; return the former."""
    model_dir = work / "models"
    model_dir.mkdir()
    for name in ("iris.onnx", "iris.model_info.json"):
        shutil.copy(ROOT / "models" / name, model_dir / name)
    build_mlp(work / "mlp.onnx")
    return model_dir


@dataclass
class Case:
    """One kind of request: what to send, where, and what onnxruntime says the answer is."""

    name: str
    path: str
    body: bytes
    samples: int
    check: callable
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    naive: bool = True  # the naive app serves this case too


def v2_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A V2 request for the MLP's input X (JSON, or binary with Y asked back in binary), and its headers."""
    if not binary:
        document = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        return json.dumps(document).encode(), {"Content-Type": "application/json"}
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "Y", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def make_cases(model_dir: Path) -> list[Case]:
    rng = np.random.default_rng(1)
    iris_x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    mlp_1 = rng.random((1, 784), dtype=np.float32)
    mlp_32 = rng.random((BATCH, 784), dtype=np.float32)
    iris = ort.InferenceSession(str(model_dir / "iris.onnx"), providers=["CPUExecutionProvider"])
    mlp = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    want_iris = iris.run(["output_label"], {"input": iris_x})[0].tolist()
    want_1 = mlp.run(None, {"X": mlp_1})[0]
    want_32 = mlp.run(None, {"X": mlp_32})[0]

    def predict_check(want):
        return lambda data, headers: np.allclose(json.loads(data)["prediction"], np.ravel(want), atol=1e-4)

    def v2_json_check(want):
        return lambda data, headers: np.allclose(json.loads(data)["outputs"][0]["data"], np.ravel(want), atol=1e-4)

    def v2_binary_check(want):
        def check(data, headers):
            size = int(headers["Inference-Header-Content-Length"])
            return np.allclose(np.frombuffer(data[size:], "<f4").reshape(want.shape), want, atol=1e-4)
        return check

    cases = [
        Case("iris /predict", "/predict", json.dumps({"model_id": "iris", "features": iris_x[0].tolist()}).encode(), 1,
             lambda data, headers: json.loads(data)["prediction"] == want_iris),
        Case("mlp-1 /predict", "/predict", json.dumps({"model_id": "mlp", "features": mlp_1[0].tolist()}).encode(), 1, predict_check(want_1)),
        Case(f"mlp-{BATCH} /predict", "/predict", json.dumps({"model_id": "mlp", "features": mlp_32.tolist()}).encode(), BATCH, predict_check(want_32)),
    ]
    for label, x, want in (("mlp-1", mlp_1, want_1), (f"mlp-{BATCH}", mlp_32, want_32)):
        body, headers = v2_body(x, binary=False)
        cases.append(Case(f"{label} v2 json", "/v2/models/mlp/infer", body, len(x), v2_json_check(want), headers, naive=False))
        body, headers = v2_body(x, binary=True)
        cases.append(Case(f"{label} v2 binary", "/v2/models/mlp/infer", body, len(x), v2_binary_check(want), headers, naive=False))
    return cases


# -- servers and load ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


@contextmanager
def on_one_core(core: int = 0):
    """Run this process (all its threads) on one core meanwhile, as a one-worker server runs: a
    background thread's work then costs the requests its time instead of running on a spare core."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Server:
    """gunicorn serving ``app`` from ``cwd`` with the project's settings, in its own process group."""

    def __init__(self, app: str, cwd: Path, env: dict[str, str], args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(args.workers),
                   "--worker-class", args.worker_class, "--threads", str(args.threads)]
        if app == "wsgi:app":
            command[3:3] = ["-c", "gunicorn.conf.py"]
        else:
            command += ["--no-control-socket", "--keep-alive", "5"]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(pinned([*command, app], 0), cwd=cwd, env={**os.environ, **env},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.post(f"{self.url}/echo" if app != "wsgi:app" else f"{self.url}/health/live", timeout=1)
                if self.worker_pids():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{app} did not start; see {log}")

    def worker_pids(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def rss_mb(self) -> float:
        """Resident size of the first worker, in MiB."""
        status = Path(f"/proc/{self.worker_pids()[0]}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        stop_group(self.proc, 20)
        self.log.close()


def wsgi_call(app, case: Case):
    """A call of ``case`` straight through the app's WSGI stack (the middleware's hot path), as gunicorn makes it."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=case.path, method="POST", data=case.body, headers=case.headers).get_environ()

    def call():
        environ["wsgi.input"] = io.BytesIO(case.body)
        b"".join(app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: None))

    return call


def lua_script(case: Case, directory: Path) -> Path:
    """A wrk script that POSTs the case's body (binary-safe: every byte escaped)."""
    body = "".join(f"\\{b:03d}" for b in case.body)
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in case.headers.items())
    path = directory / f"{re.sub(r'[^a-z0-9]+', '-', case.name)}.lua"
    path.write_text(f'wrk.method = "POST"\n{headers}wrk.body = "{body}"\n')
    return path


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, connections: int, seconds: float) -> Measure:
    command = pinned(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url], 1)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed on {url}: {done.stdout}{done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return Measure(rps, p50, p99, errors, total)


def median_of(measures: list[Measure]) -> Measure:
    return Measure(
        statistics.median(m.rps for m in measures),
        statistics.median(m.p50_ms for m in measures),
        statistics.median(m.p99_ms for m in measures),
        sum(m.errors for m in measures),
        sum(m.requests for m in measures),
    )


def verify(server: Server, case: Case) -> None:
    response = requests.post(server.url + case.path, data=case.body, headers=case.headers, timeout=10)
    if response.status_code != 200 or not case.check(response.content, response.headers):
        raise SystemExit(f"{case.name}: the server's answer differs from onnxruntime's: {response.status_code} {response.content[:300]!r}")


def compute_floor(model_dir: Path, seconds: float) -> dict[str, float]:
    """Calls per second of onnxruntime's session.run alone, one thread, per model and batch."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    floors = {}
    for label, model, name, x in (
        ("iris", "iris.onnx", "input", np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)),
        ("mlp-1", "mlp.onnx", "X", np.random.default_rng(2).random((1, 784), dtype=np.float32)),
        (f"mlp-{BATCH}", "mlp.onnx", "X", np.random.default_rng(3).random((BATCH, 784), dtype=np.float32)),
    ):
        session = ort.InferenceSession(str(model_dir / model), options, providers=["CPUExecutionProvider"])
        calls, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            session.run(None, {name: x})
            calls += 1
        floors[label] = calls / (time.perf_counter() - started)
    return floors


# -- the run -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 3 s, concurrency 8 only")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per case (the median is reported)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated connection counts")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.md and bench.png go")
    parser.add_argument("--write", action="store_true", help="write the report of a --quick run too")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.concurrency = 3, 1, "8"
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    model_dir = bench_models(work)
    naive_dir = work / "naive-models"
    naive_dir.mkdir()
    shutil.copy(model_dir / "iris.onnx", naive_dir / "iris.onnx")
    shutil.copy(work / "mlp.onnx", naive_dir / "mlp.onnx")

    print("compute floor (onnxruntime session.run alone)...", flush=True)
    floors = compute_floor(naive_dir, 1.0 if args.quick else 3.0)
    results: dict[tuple[str, str, int], Measure] = {}
    memory = {}
    env = {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": str(args.workers),
           "GUNICORN_WORKER_CLASS": args.worker_class, "GUNICORN_THREADS": str(args.threads)}
    servers = []
    try:
        nexus = Server("wsgi:app", ROOT, env, args, work / "nexus.log")
        servers.append(nexus)
        naive = Server("naive_app:app", ROOT / "bench", {"NAIVE_MODEL_DIR": str(naive_dir)}, args, work / "naive.log")
        servers.append(naive)
        time.sleep(1)
        memory["idle worker with the demo model"] = before_mlp = nexus.rss_mb()
        with open(work / "mlp.onnx", "rb") as model:
            response = requests.post(f"{nexus.url}/models/upload", files={"file": ("mlp.onnx", model)},
                                     data={"id": "mlp", "name": "MLP 784-256-10", "version": "1"}, timeout=60)
        response.raise_for_status()
        cases = make_cases(naive_dir)
        echo = Case("echo", "/echo", b'{"model_id":"iris","features":[5.1,3.5,1.4,0.2]}', 1, lambda d, h: True)
        plan = [(nexus, "nexus", c) for c in cases] + [(naive, "naive", c) for c in cases if c.naive] + [(naive, "naive", echo)]
        for server, _, case in plan:
            verify(server, case)  # also loads the MLP in the worker
        memory["added by one loaded MLP (784-256-10)"] = nexus.rss_mb() - before_mlp
        time.sleep(2.5)  # the registry re-checks files for 2 s after the directory changed
        for server, _, case in plan:  # warm-up, unrecorded
            wrk(server.url + case.path, lua_script(case, work), 8, 1)
        start_rss, served = nexus.rss_mb(), 0
        # The two servers take turns case by case, so drift on a shared machine hits both alike.
        for case in cases + [echo]:
            for level in levels:
                for server, who, _ in [p for p in plan if p[2] is case]:
                    script = lua_script(case, work)
                    runs = [wrk(server.url + case.path, script, level, args.duration) for _ in range(args.repeats)]
                    results[(who, case.name, level)] = measure = median_of(runs)
                    served += measure.requests if who == "nexus" else 0
                    print(f"  {who:6} {case.name:22} c={level:<3} {measure.rps:9,.0f} req/s  p50 {measure.p50_ms:6.2f} ms  p99 {measure.p99_ms:6.2f} ms", flush=True)
        memory[f"growth over {served:,} requests"] = nexus.rss_mb() - start_rss
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = render(args, cases, levels, results, floors, memory)
    print(report)
    if args.quick and not args.write:
        print("(a quick run: docs/ left as it is; --write writes it anyway)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "benchmarks.md"
    kept = previous.read_text() if previous.exists() else ""
    if LIMITS_BEGIN in kept:  # bench/limits.py's section is kept across full runs
        report = report.rstrip("\n") + "\n\n" + kept[kept.index(LIMITS_BEGIN):]
    previous.write_text(report)
    chart(cases, levels, results, args.out / "bench.png")


# -- the report ------------------------------------------------------------------------------------------


def rounds_arguments(description: str, rounds: str) -> tuple[argparse.Namespace, list[int]]:
    """The command line of a bench that runs rounds over ``rounds`` on one machine and writes a section of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print only, do not update docs/benchmarks.md")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds over {rounds} (the median is reported)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated connection counts")
    args = parser.parse_args()
    return args, [int(c) for c in args.concurrency.split(",")]


def write_section(begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into docs/benchmarks.md, replacing its last version."""
    report = ROOT / "docs" / "benchmarks.md"
    text = report.read_text() if report.exists() else "# Benchmarks\n"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def _floor_key(case: Case) -> str:
    return case.name.split()[0]


def render(args, cases, levels, results, floors, memory) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python bench/run.py{' --quick' if args.quick else ''}`: "
        f"{args.workers} gunicorn {args.worker_class} worker(s) pinned to one core, wrk on another, "
        f"medians of {args.repeats} run(s) of {args.duration:g} s. All production features on (request ids, metrics, one JSON log line per request, validation).",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}, onnxruntime {_version('onnxruntime')}, "
        f"flask {_version('flask')}, gunicorn {_version('gunicorn')}, numpy {_version('numpy')}, orjson {_version('orjson')}.",
        "",
        "The naive app (`bench/naive_app.py`) is the 25-line Flask app with stdlib `json` and nothing else. "
        "The compute floor is onnxruntime's `session.run` alone in a loop; the framework floor is the naive app's `/echo`.",
        "",
        "| case | conc. | Model Nexus req/s | samples/s | p50 ms | p99 ms | errors | naive req/s | × naive | × /echo | % of compute floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for level in levels:
            ours = results[("nexus", case.name, level)]
            naive = results.get(("naive", case.name, level))
            echo = results.get(("naive", "echo", level))
            floor = floors[_floor_key(case)]
            lines.append(
                f"| {case.name} | {level} | {ours.rps:,.0f} | {ours.rps * case.samples:,.0f} | {ours.p50_ms:.2f} | {ours.p99_ms:.2f} | {ours.errors} | "
                f"{f'{naive.rps:,.0f}' if naive else '-'} | {f'{ours.rps / naive.rps:.2f}' if naive else '-'} | "
                f"{f'{ours.rps / echo.rps:.2f}' if echo else '-'} | {100 * ours.rps / floor:.1f}% |"
            )
    lines += ["", "Naive app alone:", "", "| case | conc. | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for (who, name, level), m in results.items():
        if who == "naive":
            lines.append(f"| {name} | {level} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} |")
    lines += ["", "Compute floor (onnxruntime alone, one thread): " + ", ".join(f"{k} {v:,.0f} calls/s" for k, v in floors.items()), ""]
    lines += ["Memory (resident size of one worker):", ""] + [f"- {k}: {v:.1f} MiB" for k, v in memory.items()] + [""]
    lines += targets(cases, levels, results, floors)
    return "\n".join(lines) + "\n"


def targets(cases, levels, results, floors) -> list[str]:
    def ratio(case_name, level, samples=1):
        ours, naive = results.get(("nexus", case_name, level)), results.get(("naive", case_name, level))
        return (ours.rps / naive.rps) if ours and naive else None

    rows = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def add(text, value, goal, fmt="{:.2f}×"):
        if value is None:
            rows.append(f"| {text} | not measured in this run | - |")
        else:
            rows.append(f"| {text} | {fmt.format(value)} | {'yes' if value >= goal else 'no'} |")

    add("iris /predict ≥ 1.0× naive at c=8", ratio("iris /predict", 8) if 8 in levels else None, 1.0)
    for level in (1, 32):
        add(f"iris /predict ≥ 0.9× naive at c={level}", ratio("iris /predict", level) if level in levels else None, 0.9)
    add("mlp-1 /predict ≥ 1.2× naive at c=8", ratio("mlp-1 /predict", 8) if 8 in levels else None, 1.2)
    add(f"mlp-{BATCH} /predict ≥ 2× naive samples/s at c=8", ratio(f"mlp-{BATCH} /predict", 8) if 8 in levels else None, 2.0)
    binary = results.get(("nexus", f"mlp-{BATCH} v2 binary", 8))
    naive_batch = results.get(("naive", f"mlp-{BATCH} /predict", 8))
    add(f"mlp-{BATCH} V2 binary ≥ 4× naive samples/s at c=8", binary.rps / naive_batch.rps if binary and naive_batch else None, 4.0)
    if 8 in levels:
        worst = max(results[("nexus", c.name, 8)].p99_ms / results[("nexus", c.name, 8)].p50_ms for c in cases)
        rows.append(f"| p99 ≤ 3 × p50 at c=8 (worst case) | {worst:.2f}× | {'yes' if worst <= 3 else 'no'} |")
    batch_floor = floors[f"mlp-{BATCH}"] * BATCH
    for name in (f"mlp-{BATCH} /predict", f"mlp-{BATCH} v2 binary"):
        if ("nexus", name, 8) in results:
            rows.append(f"| {name}: share of the compute floor at c=8 | {100 * results[('nexus', name, 8)].rps * BATCH / batch_floor:.0f}% of {batch_floor:,.0f} samples/s | - |")
    return rows + [""]


def chart(cases, levels, results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no chart (pip install -e '.[bench]')")
        return
    level = 8 if 8 in levels else levels[0]
    names = [c.name for c in cases]
    ours = [results[("nexus", n, level)].rps for n in names]
    naive = [results[("naive", n, level)].rps if ("naive", n, level) in results else 0 for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    ax.bar(x - 0.2, ours, 0.4, label="Model Nexus (all features on)", color="#2f6fdf")
    ax.bar(x + 0.2, naive, 0.4, label="naive Flask app", color="#aaaaaa")
    for i, (a, b) in enumerate(zip(ours, naive, strict=True)):
        if b:
            ax.annotate(f"{a / b:.2f}×", (i - 0.2, a), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("requests / s")
    ax.set_title(f"1 sync worker, one core, concurrency {level}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()


def stop_group(proc: subprocess.Popen, seconds: float) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after ``seconds``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(seconds)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
