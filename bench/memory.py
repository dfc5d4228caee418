"""One copy of the weights per machine: what 4 gunicorn workers add in memory serving a big model,
with the shared serving form (NEXUS_SHARED_WEIGHTS=1, the default) and without it (=0: every
worker builds its session from the model's bytes, a private copy of the weights each).

    python bench/memory.py                 # a ~500 MB model; about 5 minutes; prints, updates docs/benchmarks.md and docs/memory.png
    python bench/memory.py --quick         # a ~100 MB model, 1 repeat; prints only (--write to write docs/ too)
    python bench/memory.py --size-mb 1000  # another size

The model is an MLP (256 -> H -> ... -> H -> 16, float32, ReLU) generated into a temporary
directory, never kept. Two servers run at once, 4 sync workers each, on the same 2 cores, in
model directories of their own: one with shared weights, one without (monitoring, records and
gRPC off, so only the model changes what a worker holds).

1. Each worker's PSS (proportional set size: /proc/<pid>/smaps_rollup ``Pss:``, a page shared by
   n processes counted 1/n in each), RSS and private memory, idle before the upload.
2. The model uploaded to each server (timed: the upload runs the sandbox's load check, and with
   shared weights derives the serving form too), then every worker's load awaited
   (``model_loads_total`` +3: the uploading worker has it already, and ``models_memory_bytes``,
   one series per worker, non-zero for all 4), then concurrent requests until every worker has
   run the model (its CPU time grew by more than a few runs' worth).
3. The same memory figures again: the total PSS the workers added, divided by the weights' bytes.
   With shared weights, each worker's /proc/<pid>/smaps must show the ``.serving.weights`` file
   mapped (its Rss and Pss are printed).
4. The latency of the model through V2 binary tensors (one client, one request at a time), batch
   1 and batch 64, the two servers taking turns; the median of each run of requests, and the
   median of the repeats. Both servers' answers must agree.
5. Upload time again (repeats 2..n): the model uploaded under another id, its loads awaited, then
   deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
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

from bench.run import free_port, stop_group, write_section  # noqa: E402

BEGIN, END = "<!-- memory: written by bench/memory.py -->", "<!-- /memory -->"
MB = 1024 * 1024
IN_FEATURES, OUT_FEATURES = 256, 16
WORKERS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the model -------------------------------------------------------------------------------------


def build_big_mlp(path: Path, size_mb: float, seed: int = 0) -> dict:
    """Write an MLP 256 -> H x L -> 16 (float32, ReLU) of about ``size_mb`` MiB of weights to ``path``; return its shape."""
    from onnx import TensorProto, helper, numpy_helper

    target = size_mb * MB
    width = next((h for h in (4096, 2048, 1024, 512, 256) if target / (h * h * 4) >= 4), 256)
    layers = max(1, round((target - (IN_FEATURES + OUT_FEATURES) * width * 4) / (width * width * 4)))
    rng = np.random.default_rng(seed)
    shapes = [(IN_FEATURES, width)] + [(width, width)] * layers + [(width, OUT_FEATURES)]
    nodes, inits, previous = [], [], "X"
    for i, (rows, cols) in enumerate(shapes):
        weight = rng.standard_normal((rows, cols), dtype=np.float32)
        weight *= np.float32(1.0 / np.sqrt(rows))  # keeps the activations near 1 through the layers
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        del weight
        inits.append(numpy_helper.from_array(np.full(cols, 0.01, np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [f"M{i}"]))
        last = i == len(shapes) - 1
        nodes.append(helper.make_node("Add", [f"M{i}", f"B{i}"], ["Y" if last else f"A{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"A{i}"], [f"H{i}"]))
            previous = f"H{i}"
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, IN_FEATURES])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, OUT_FEATURES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    weight_bytes = sum(r * c * 4 + c * 4 for r, c in shapes)
    with open(path, "wb") as out:
        out.write(model.SerializeToString())
    return {"width": width, "layers": layers, "weight_bytes": weight_bytes, "file_bytes": path.stat().st_size}


def v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "Y", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def v2_output(response: requests.Response, rows: int) -> np.ndarray:
    size = int(response.headers["Inference-Header-Content-Length"])
    return np.frombuffer(response.content[size:], "<f4").reshape(rows, OUT_FEATURES)


# -- servers and /proc ---------------------------------------------------------------------------


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` with ``workers`` sync workers, not pinned, in its own process group."""

    def __init__(self, model_dir: Path, env: dict[str, str], workers: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        base = {"NEXUS_MODEL_DIR": str(model_dir), "WEB_CONCURRENCY": str(workers), "NEXUS_GRPC_PORT": "0",
                "NEXUS_ORT_THREADS": "1", "NEXUS_LOG_LEVEL": "WARNING"}
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", str(workers), "wsgi:app"]
        self.log = open(log, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **base, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def worker_pids(self) -> list[int]:
        try:
            return sorted(int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split())
        except OSError:
            return []

    def wait_booted(self, timeout: float = 120) -> float:
        """Wait until every worker has looked at the model directory (a ``models_memory_bytes`` series per
        worker pid: each worker reports it at its first look); return the seconds since the start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with status {self.proc.returncode}; see {self.log.name}")
            pids = self.worker_pids()
            try:
                if len(pids) == self.workers and set(pids) <= set(per_worker(self.url, "models_memory_bytes")):
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the workers did not all start in {timeout:g} s; see {self.log.name}")

    def stop(self) -> None:
        stop_group(self.proc, 30)
        self.log.close()


def metric(url: str, name: str) -> float:
    """The sum of every series of ``name`` in /metrics (0 when absent)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def per_worker(url: str, name: str) -> dict[int, float]:
    """A gauge with one series per worker (``pid`` label): pid -> value."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(rf'^{name}{{pid="(\d+)"}} ([0-9.e+-]+)$', text, re.M)}


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Private_Clean, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[name] = int(rest.split()[0])
    return fields


def mapped(pid: int, suffix: str) -> dict[str, int] | None:
    """Size, Rss and Pss (kB) of the mappings of files whose path ends with ``suffix`` in /proc/<pid>/smaps, or None."""
    found, current = None, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            current = len(head) >= 6 and head[-1].endswith(suffix)
            if current and found is None:
                found = {"Size": 0, "Rss": 0, "Pss": 0}
        elif current and head and head[0].rstrip(":") in ("Size", "Rss", "Pss"):
            found[head[0].rstrip(":")] += int(head[1])
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- one server's figures ------------------------------------------------------------------------------


@dataclass
class Side:
    label: str
    shared: bool
    server: Gunicorn
    before: dict[int, dict[str, int]] = field(default_factory=dict)
    after: dict[int, dict[str, int]] = field(default_factory=dict)
    weights_map: dict[int, dict[str, int] | None] = field(default_factory=dict)
    served_cpu: dict[int, float] = field(default_factory=dict)
    uploads: list[float] = field(default_factory=list)
    all_loaded: list[float] = field(default_factory=list)
    latency: dict[int, list[float]] = field(default_factory=dict)
    serving_files: int = 0
    budget_mb: float = 0.0
    load_check: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def upload(side: Side, path: Path, model_id: str) -> dict:
    os.sync()  # the previous upload's files written back first, so their writeback does not slow this one
    time.sleep(1)
    with open(path, "rb") as model:
        started = time.perf_counter()
        response = requests.post(f"{side.url}/models/upload", files={"file": (path.name, model)},
                                 data={"id": model_id, "name": "big MLP", "version": "1"}, timeout=1800)
        seconds = time.perf_counter() - started
    if response.status_code != 201:
        raise SystemExit(f"{side.label}: upload failed: {response.status_code} {response.text[:500]}")
    side.uploads.append(seconds)
    return response.json()


def wait_all_loaded(side: Side, loads_before: float, held_before: dict[int, float], timeout: float = 900) -> float:
    """Wait until the 3 workers that did not take the upload have loaded it (``model_loads_total`` +3) and every
    worker reports holding more than before (``models_memory_bytes``, one series per worker, written just after a
    load is counted); return the seconds it took."""
    started, deadline = time.perf_counter(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(side.url, "model_loads_total") >= loads_before + WORKERS - 1:
            holding = per_worker(side.url, "models_memory_bytes")
            if all(holding.get(pid, 0) > held_before.get(pid, 0) for pid in side.server.worker_pids()):
                return time.perf_counter() - started
        time.sleep(0.05)
    raise SystemExit(f"{side.label}: the workers did not all load the model in {timeout:g} s")


def serve_everywhere(side: Side, body: bytes, headers: dict[str, str], model_id: str, min_cpu: float) -> None:
    """Send concurrent requests until every worker has spent ``min_cpu`` seconds of CPU serving (runs of the model)."""
    pids = side.server.worker_pids()
    start = {pid: cpu_seconds(pid) for pid in pids}
    stop = threading.Event()
    errors: list[str] = []

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{side.url}/v2/models/{model_id}/infer", data=body, headers=headers, timeout=600)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2 * WORKERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and not errors:
            side.served_cpu = {pid: cpu_seconds(pid) - start[pid] for pid in pids}
            if min(side.served_cpu.values()) >= min_cpu:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise SystemExit(f"{side.label}: a request failed: {errors[0]}")
    if min(side.served_cpu.values()) < min_cpu:
        raise SystemExit(f"{side.label}: not every worker ran the model: CPU seconds per worker {side.served_cpu}")


def latency_ms(side: Side, model_id: str, body: bytes, headers: dict[str, str], count: int) -> tuple[float, requests.Response]:
    times = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(f"{side.url}/v2/models/{model_id}/infer", data=body, headers=headers, timeout=600)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return statistics.median(times), response


def memory_of(side: Side) -> dict[int, dict[str, int]]:
    return {pid: smaps_rollup(pid) for pid in side.server.worker_pids()}


def private_kb(fields: dict[str, int]) -> int:
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def added_kb(side: Side, name: str) -> dict[int, int]:
    return {pid: side.after[pid][name] - side.before[pid][name] for pid in side.after}


# -- the run -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=500, help="the model's weights, MiB (default 500)")
    parser.add_argument("--quick", action="store_true", help="a 100 MB model, 1 repeat; prints only unless --write")
    parser.add_argument("--repeats", type=int, default=3, help="latency and upload repeats (the median is reported)")
    parser.add_argument("--print", action="store_true", help="print only, do not update docs/")
    parser.add_argument("--write", action="store_true", help="write docs/ after a --quick run too")
    args = parser.parse_args()
    if args.quick:
        args.size_mb = 100 if args.size_mb == 500 else args.size_mb
        args.repeats = 1
    write = (not args.print) and (args.write or not args.quick)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-memory-"))
    model_path = work / "big.onnx"
    started = time.perf_counter()
    shape = build_big_mlp(model_path, args.size_mb)
    weight_kb = shape["weight_bytes"] / 1024
    print(f"model: 256 -> {shape['width']} x {shape['layers']} -> 16, {shape['weight_bytes'] / MB:.1f} MiB of weights, "
          f"{shape['file_bytes'] / MB:.1f} MiB file, generated in {time.perf_counter() - started:.1f} s", flush=True)
    limit_mb = str(max(2048, int(12 * shape["file_bytes"] / MB)))
    common = {"NEXUS_MAX_UPLOAD_MB": limit_mb, "NEXUS_MAX_MODEL_MEMORY_MB": limit_mb, "NEXUS_MAX_LOAD_SECONDS": "900",
              "NEXUS_MONITORING": "0", "NEXUS_RECORDS": "0", "NEXUS_LOAD_WAIT_S": "600", "NEXUS_INFERENCE_TIMEOUT_S": "600"}
    sides: list[Side] = []
    try:
        for label, shared in (("shared", True), ("private", False)):
            (work / label).mkdir()
            server = Gunicorn(work / label, {**common, "NEXUS_SHARED_WEIGHTS": "1" if shared else "0"}, WORKERS, work / f"{label}.log")
            sides.append(Side(label, shared, server))
        for side in sides:
            side.server.wait_booted()
        time.sleep(3)  # let the workers settle after their first look
        for side in sides:
            side.before = memory_of(side)

        rng = np.random.default_rng(1)
        batches = {1: rng.random((1, IN_FEATURES), dtype=np.float32), 64: rng.random((64, IN_FEATURES), dtype=np.float32)}
        bodies = {n: v2_binary(x) for n, x in batches.items()}
        model_id = "big"
        for side in sides:  # the first upload: the one whose memory is measured
            loads, held = metric(side.url, "model_loads_total"), per_worker(side.url, "models_memory_bytes")
            answer = upload(side, model_path, model_id)
            side.all_loaded.append(wait_all_loaded(side, loads, held))
            print(f"{side.label:8} upload {side.uploads[-1]:.1f} s, then {side.all_loaded[-1]:.1f} s until the other "
                  f"{WORKERS - 1} workers had loaded it", flush=True)
            info = requests.get(f"{side.url}/models/{model_id}", timeout=30).json()
            assert info["size_bytes"] == shape["file_bytes"], info
            holding = per_worker(side.url, "models_memory_bytes")
            if not all(holding.get(pid, 0) > 0 for pid in side.server.worker_pids()):
                raise SystemExit(f"{side.label}: not every worker holds the model: {holding}")
            side.budget_mb = statistics.median(holding.values()) / MB
            sidecar = json.loads((work / side.label / f"{model_id}@1.model_info.json").read_text())
            side.load_check = sidecar.get("load_check") or {}
            if side.shared:
                weights = work / side.label / f"{model_id}@1.serving.weights"
                if not weights.exists():
                    raise SystemExit(f"shared: no serving form was made: {side.load_check.get('serving')}")
                side.serving_files = weights.stat().st_size + (work / side.label / f"{model_id}@1.serving").stat().st_size
            del answer

        # Every worker runs the model: a batch-64 run takes a few tenths of a second of CPU per 500 MB.
        first = {}
        for side in sides:
            t, response = latency_ms(side, model_id, *bodies[64], 1)
            first[side.label] = v2_output(response, 64)
            min_cpu = max(0.5, 2.5 * t / 1000)
            serve_everywhere(side, *bodies[64], model_id, min_cpu)
            print(f"{side.label:8} every worker ran the model: CPU s per worker " +
                  ", ".join(f"{pid}: {s:.1f}" for pid, s in side.served_cpu.items()), flush=True)
        if not np.allclose(first["shared"], first["private"], rtol=1e-3, atol=1e-4):
            raise SystemExit("the shared and private servers answer differently")
        time.sleep(2)
        for side in sides:
            side.after = memory_of(side)
            side.weights_map = {pid: mapped(pid, ".serving.weights") for pid in side.after}
        for pid, found in sides[0].weights_map.items():
            if found is None or found["Rss"] == 0:
                raise SystemExit(f"shared: worker {pid} has not mapped the weights file: {found}")

        counts = {1: 12 if args.quick else 30, 64: 4 if args.quick else 8}
        for side in sides:  # warm-up
            for n in counts:
                latency_ms(side, model_id, *bodies[n], 2)
        for r in range(args.repeats):
            order = sides if r % 2 == 0 else sides[::-1]
            for n in counts:
                for side in order:
                    median, _ = latency_ms(side, model_id, *bodies[n], counts[n])
                    side.latency.setdefault(n, []).append(median)
                    print(f"round {r + 1}: {side.label:8} batch {n:<3} p50 {median:8.1f} ms", flush=True)

        for r in range(1, args.repeats):  # more uploads, for their time only
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                loads, held = metric(side.url, "model_loads_total"), per_worker(side.url, "models_memory_bytes")
                upload(side, model_path, f"again-{r}")
                side.all_loaded.append(wait_all_loaded(side, loads, held))
                requests.delete(f"{side.url}/models/again-{r}", timeout=60).raise_for_status()
                print(f"{side.label:8} upload {side.uploads[-1]:.1f} s, then {side.all_loaded[-1]:.1f} s until every worker had it", flush=True)
                time.sleep(2)
    finally:
        for side in sides:
            side.server.stop()
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - began
    section = render(args, shape, sides, weight_kb, elapsed)
    print(section)
    if write:
        write_section(BEGIN, END, section)
        chart(sides, weight_kb, shape, ROOT / "docs" / "memory.png")
        print("wrote docs/benchmarks.md and docs/memory.png")
    else:
        print("(docs/ left as it is)")


# -- the report --------------------------------------------------------------------------------------------


def render(args, shape: dict, sides: list[Side], weight_kb: float, elapsed: float) -> str:
    shared, private = sides
    mib = lambda kb: f"{kb / 1024:,.0f}"  # noqa: E731
    lines = [
        BEGIN,
        "## Big models: one copy of the weights",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/memory.py"
        f"{' --quick' if args.quick else ''}{f' --size-mb {args.size_mb:g}' if args.size_mb not in (100, 500) else ''}` "
        f"(took {elapsed / 60:.0f} min): an MLP 256 → {shape['width']} × {shape['layers']} → 16 in float32, "
        f"{shape['weight_bytes'] / MB:,.0f} MiB of weights ({shape['file_bytes'] / MB:,.0f} MiB file), generated for the run. "
        f"Two servers at once, {WORKERS} sync workers each on the machine's {os.cpu_count()} cores (monitoring, records and gRPC "
        "off): `NEXUS_SHARED_WEIGHTS=1` (the default: the upload derives a serving form, `<key>.serving` and "
        "`<key>.serving.weights`, that every worker opens by path and maps) and `NEXUS_SHARED_WEIGHTS=0` (each worker "
        "builds its session from the model's bytes). Memory is each worker's `/proc/<pid>/smaps_rollup` idle before the "
        "upload and after all 4 had loaded the model and run it (each spent "
        f"{min(min(s.served_cpu.values()) for s in sides):.1f} s or more of CPU on requests); PSS counts a page shared by "
        "n processes 1/n in each, so the sum over the workers is what the machine holds.",
        "",
        "| | shared weights | private weights (`NEXUS_SHARED_WEIGHTS=0`) |",
        "|---|---|---|",
    ]
    total = {s.label: sum(added_kb(s, "Pss").values()) for s in sides}
    rss = {s.label: sum(added_kb(s, "Rss").values()) for s in sides}
    priv = {s.label: sum(private_kb(s.after[p]) - private_kb(s.before[p]) for p in s.after) for s in sides}
    lines += [
        f"| PSS added, all {WORKERS} workers | **{mib(total['shared'])} MiB = {total['shared'] / weight_kb:.2f} × the weights** | "
        f"**{mib(total['private'])} MiB = {total['private'] / weight_kb:.2f} × the weights** |",
        f"| PSS added per worker | {', '.join(mib(v) for v in added_kb(shared, 'Pss').values())} MiB | "
        f"{', '.join(mib(v) for v in added_kb(private, 'Pss').values())} MiB |",
        f"| RSS added, sum of the workers | {mib(rss['shared'])} MiB | {mib(rss['private'])} MiB |",
        f"| private memory added (Private_Clean + Private_Dirty), sum | {mib(priv['shared'])} MiB | {mib(priv['private'])} MiB |",
        f"| the weights file mapped in each worker (Size / Rss / Pss of the mapping) | {mappings(shared)} | - |",
        f"| what `NEXUS_MEMORY_BUDGET_MB` counts per worker (`models_memory_bytes`) | {shared.budget_mb:,.0f} MiB | {private.budget_mb:,.0f} MiB |",
        f"| idle worker before the upload (PSS, median) | {mib(statistics.median(v['Pss'] for v in shared.before.values()))} MiB | "
        f"{mib(statistics.median(v['Pss'] for v in private.before.values()))} MiB |",
        f"| serving form on disk (graph + weights) | {shared.serving_files / MB:,.0f} MiB | none |",
        f"| upload (`POST /models/upload`, median of {len(shared.uploads)}) | {statistics.median(shared.uploads):.1f} s | "
        f"{statistics.median(private.uploads):.1f} s |",
        f"| then until the other {WORKERS - 1} workers had loaded it (median) | {statistics.median(shared.all_loaded):.1f} s | "
        f"{statistics.median(private.all_loaded):.1f} s |",
    ]
    for n in sorted(shared.latency):
        a, b = statistics.median(shared.latency[n]), statistics.median(private.latency[n])
        lines.append(f"| latency, batch {n}, V2 binary (p50, median of {len(shared.latency[n])} rounds) | {a:,.1f} ms "
                     f"({a / b:.2f} × private) | {b:,.1f} ms |")
    check = shared.load_check
    maps = [m for m in shared.weights_map.values() if m]
    mapped_mib = statistics.median(m["Rss"] for m in maps) / 1024 if maps else 0.0
    mapped_size_mib = statistics.median(m["Size"] for m in maps) / 1024 if maps else 0.0
    pss_added = added_kb(shared, "Pss")
    own_mib = statistics.median(pss_added[pid] - m["Pss"] for pid, m in shared.weights_map.items() if m) / 1024 if maps else 0.0
    lines += [
        "",
        f"Target: {WORKERS} workers add at most 1.3 × the weights in summed PSS (measured {total['shared'] / weight_kb:.2f} ×: "
        f"{'met' if total['shared'] / weight_kb <= 1.3 else 'not met'}; {total['private'] / weight_kb:.2f} × with private "
        "weights, one copy per worker), and latency within 10 % of private weights ("
        + ", ".join(f"batch {n}: {statistics.median(shared.latency[n]) / statistics.median(private.latency[n]) - 1:+.0%}"
                    for n in sorted(shared.latency)) + ").",
        "",
        f"Each worker maps {mapped_mib:,.0f} MiB of the weights file (Rss of the mapping; the page cache's one copy, "
        f"{mapped_mib / WORKERS:,.0f} MiB of PSS each) and holds about {own_mib:,.0f} MiB more of its own. The serving form "
        f"is {shared.serving_files / MB:,.0f} MiB on disk ({shared.serving_files / (weight_kb * 1024):.1f} × the weights, "
        f"beside the {shape['file_bytes'] / MB:,.0f} MiB `.onnx`): its weights file holds the initializers as uploaded and "
        f"their pre-packed forms, and a worker maps {mapped_size_mib:,.0f} MiB of it. The budget (`models_memory_bytes`, "
        f"from the load check) counts {shared.budget_mb:,.0f} MiB per worker for it, against the {mapped_mib + own_mib:,.0f} "
        f"MiB a worker holds; with private weights it counts the peak of a load from bytes ({private.budget_mb:,.0f} MiB, "
        f"for {statistics.median(added_kb(private, 'Pss').values()) / 1024:,.0f} MiB held).",
        "",
        f"An upload with shared weights does more in the sandbox: it loads the model from its bytes (peak "
        f"{check.get('peak_mb', 0):,.0f} MB, {check.get('seconds', 0):.1f} s), writes the serving form and opens it again to "
        f"measure it ({statistics.median(shared.uploads):.1f} s against {statistics.median(private.uploads):.1f} s with private "
        "weights, medians; the 2-core machine's disk writeback makes these vary by several seconds). The other workers "
        "then open the form by path without optimizing the graph again (after checking the sha256 of the `.onnx` and of "
        f"both serving files): {statistics.median(shared.all_loaded):.1f} s until all had it, against "
        f"{statistics.median(private.all_loaded):.1f} s building sessions from the bytes.",
        "",
        "![memory](memory.png)",
        END,
    ]
    return "\n".join(lines) + "\n"  # a line of its own after END, kept when the section is replaced


def mappings(side: Side) -> str:
    cells = [f"{m['Size'] / 1024:,.0f} / {m['Rss'] / 1024:,.0f} / {m['Pss'] / 1024:,.0f}" if m else "not mapped"
             for m in side.weights_map.values()]
    return ", ".join(cells) + " MiB"


def chart(sides: list[Side], weight_kb: float, shape: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no chart (pip install -e '.[bench]')")
        return
    names = [f"worker {i + 1}" for i in range(WORKERS)] + ["all workers"]
    values = {}
    for side in sides:
        per = [v / 1024 for v in added_kb(side, "Pss").values()]
        values[side.label] = per + [sum(per)]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    ax.bar(x - 0.2, values["shared"], 0.4, label="shared weights (NEXUS_SHARED_WEIGHTS=1)", color="#2f6fdf")
    ax.bar(x + 0.2, values["private"], 0.4, label="private weights (NEXUS_SHARED_WEIGHTS=0)", color="#aaaaaa")
    weights_mib = weight_kb / 1024
    for i, (a, b) in enumerate(zip(values["shared"], values["private"], strict=True)):
        ax.annotate(f"{a / weights_mib:.2f}×", (i - 0.2, a), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{b / weights_mib:.2f}×", (i + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.axhline(weights_mib, color="#444444", linestyle=":", linewidth=1, label=f"the weights: {weights_mib:,.0f} MiB")
    ax.axhline(1.3 * weights_mib, color="#d04030", linestyle="--", linewidth=1, label="target: all workers add at most 1.3 × the weights")
    ax.set_xticks(x, names)
    ax.set_ylabel("PSS added (MiB)")
    ax.set_title(f"{WORKERS} gunicorn workers serving a {shape['weight_bytes'] / MB:,.0f} MiB model: proportional set size added")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
