"""What the hostile-model limits cost: per run, per decoded request, and per upload.

    python bench/limits.py           # about a minute; prints the tables and updates docs/benchmarks.md
    python bench/limits.py --print   # print only

Every comparison is measured in the same process, interleaved, as the median of repeated
rounds, so the machine's noise hits both sides alike:

- a run: onnxruntime's ``session.run`` on a session with the previous options (its own arena,
  no run options) against ``Runtime.run`` (the shared capped arena, shrunk after the run, the
  watchdog's registration and removal, a fresh ``RunOptions``);
- decoding: ``tensors.to_array`` against numpy's plain ``np.asarray(values).astype(...)``,
  which has neither the strict casts nor the guard against fixed-width strings;
- an upload: the sandboxed load check (a child process that imports onnxruntime and opens the
  model) for the benchmark models.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import BATCH, LIMITS_BEGIN, build_mlp, write_section  # noqa: E402
from nexus import sandbox  # noqa: E402
from nexus.config import Settings  # noqa: E402
from nexus.runtime import Runtime  # noqa: E402
from nexus.store import sha256_of  # noqa: E402
from nexus.tensors import BY_ORT, to_array  # noqa: E402

BEGIN, END = LIMITS_BEGIN, "<!-- /limits -->"


def per_call_us(call, seconds: float) -> float:
    """Microseconds per call of ``call``, timed over about ``seconds``."""
    count, started = 0, time.perf_counter()
    while True:
        for _ in range(200):
            call()
        count += 200
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / count * 1e6


def micro_table(rows: list[str]) -> list[str]:
    """The lines of a section's table of in-process timings (``rows`` are its table rows)."""
    return ["", "In one process (median of 5):", "", "| call | time |", "|---|---|", *rows]


def paired(before, after, rounds: int, seconds: float) -> tuple[float, float]:
    """Medians of ``rounds`` interleaved timings of two calls."""
    a, b = [], []
    for _ in range(rounds):
        a.append(per_call_us(before, seconds))
        b.append(per_call_us(after, seconds))
    return statistics.median(a), statistics.median(b)


def old_session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the tables without writing docs/benchmarks.md")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3, help="per timing")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nexus-limits-"))
    build_mlp(work / "mlp.onnx")
    models = {"iris": (ROOT / "models" / "iris.onnx").read_bytes(), "mlp": (work / "mlp.onnx").read_bytes()}
    rng = np.random.default_rng(0)
    iris_x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    runs = [("iris, 1 sample", "iris", {"input": iris_x}), ("MLP 784-256-10, 1 sample", "mlp", {"X": rng.random((1, 784), np.float32)}),
            (f"MLP, {BATCH} samples", "mlp", {"X": rng.random((BATCH, 784), np.float32)})]
    lines = ["| run | `session.run`, previous options | `Runtime.run` with the limits | cost |", "|---|---|---|---|"]
    for label, name, feeds in runs:
        before, after = old_session(models[name]), Runtime(models[name], 1, Settings().limits)
        b, a = paired(lambda s=before, f=feeds: s.run(None, f), lambda r=after, f=feeds: r.run(f), args.rounds, args.seconds)
        lines.append(f"| {label} | {b:.1f} µs | {a:.1f} µs | {a - b:+.1f} µs |")
    run_table = "\n".join(lines)

    values = {"iris features (4 floats)": iris_x[0].tolist(), "784 floats": rng.random(784).tolist(),
              f"{BATCH} × 784 floats": rng.random((BATCH, 784)).tolist()}
    float32 = BY_ORT["tensor(float)"]
    lines = ["| JSON values | `np.asarray(...).astype(float32)` | `to_array` | cost |", "|---|---|---|---|"]
    for label, value in values.items():
        b, a = paired(lambda v=value: np.asarray(v).astype(np.float32), lambda v=value: to_array("X", v, float32), args.rounds, args.seconds)
        lines.append(f"| {label} | {b:.1f} µs | {a:.1f} µs | {a - b:+.1f} µs |")
    hostile = ["x" * 100_000] + [""] * 12_499
    started = time.perf_counter()
    to_array("X", hostile, BY_ORT["tensor(string)"])
    lines.append(f"\nOne 100,000-character string and 12,499 empty ones (0.15 MB of JSON) decode in "
                 f"{(time.perf_counter() - started) * 1000:.1f} ms as an object array of pointers; numpy's own inference "
                 "would allocate 12,500 × 100,000 × 4 bytes = 4.7 GiB.")
    decode_table = "\n".join(lines)

    lines = ["| model | size | sandboxed load check (median of 5) | measured peak load memory |", "|---|---|---|---|"]
    for name, data in models.items():
        path = work / f"{name}.onnx"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        times, record = [], {}
        for _ in range(5):
            started = time.perf_counter()
            record = sandbox.check(fd, sha256_of(data), Settings().limits)
            times.append(time.perf_counter() - started)
        os.close(fd)
        lines.append(f"| {name} | {len(data) / 1024:,.1f} KiB | {statistics.median(times) * 1000:.0f} ms | {record['peak_mb']} MB |")
    upload_table = "\n".join(lines)

    section = (f"{BEGIN}\n## What the limits cost\n\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
               f"`python bench/limits.py`, in one process, medians of {args.rounds} interleaved rounds.\n\n"
               f"Per run (the watchdog, the capped and shrinking arena, fresh run options):\n\n{run_table}\n\n"
               f"Per decoded input (strict casts, and strings never fixed-width):\n\n{decode_table}\n\n"
               f"Per upload (a child process that imports onnxruntime and opens the model; the upload was already "
               f"loading the model once in the worker):\n\n{upload_table}\n{END}\n")
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
