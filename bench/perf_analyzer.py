"""Triton's perf_analyzer against Model Nexus over the V2 protocol, as Triton users measure servers.

    bash scripts/install_perf_analyzer.sh && python bench/perf_analyzer.py     # about 1 min

One sync worker pinned to core 0 (as in bench/run.py); perf_analyzer runs on core 1 and reports
the throughput and latency it saw at each concurrency; the table goes into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import Server, bench_models, pinned, write_section  # noqa: E402

TOOLS = ROOT / ".tools" / "perf_analyzer"
BEGIN, END = "<!-- perf_analyzer: written by bench/perf_analyzer.py -->", "<!-- /perf_analyzer -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table without writing docs/benchmarks.md")
    parser.add_argument("--concurrency", default="1:8:7", help="perf_analyzer's --concurrency-range (start:end:step)")
    args = parser.parse_args()
    binary = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer") or str(TOOLS / "bin" / "perf_analyzer")
    if not Path(binary).exists():
        raise SystemExit("no perf_analyzer: run scripts/install_perf_analyzer.sh")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(TOOLS / "lib"), os.environ.get("LD_LIBRARY_PATH")) if p)}
    args.workers, args.worker_class, args.threads = 1, "sync", 1
    work = Path(tempfile.mkdtemp(prefix="nexus-pa-"))
    model_dir = bench_models(work)
    server = Server("wsgi:app", ROOT, {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": "1"},
                    args, work / "server.log")
    rows = []
    try:
        with open(work / "mlp.onnx", "rb") as model:
            requests.post(f"{server.url}/models/upload", files={"file": ("mlp.onnx", model)},
                          data={"id": "mlp", "name": "MLP 784-256-10", "version": "1"}, timeout=60).raise_for_status()
        time.sleep(2.5)
        for model, batch in (("iris", 1), ("mlp", 1), ("mlp", 32)):
            command = pinned([binary, "-m", model, "-b", str(batch), "-u", f"127.0.0.1:{server.port}", "-i", "http",
                              "--concurrency-range", args.concurrency, "--measurement-interval", "3000"], 1)
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=True)
            for level, rate, latency in re.findall(
                    r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec", done.stdout):
                label = "MLP 784-256-10" if model == "mlp" else model
                rows.append(f"| {label}, batch {batch} | {level} | {float(rate):,.0f} | {int(latency) / 1000:.2f} |")
                print(rows[-1], flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    section = (f"{BEGIN}\n## perf_analyzer\n\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
               "`python bench/perf_analyzer.py`: Triton's perf_analyzer 2.51 over HTTP (binary tensor data, its default), "
               "one sync worker; it counts every sample of a batch as an inference.\n\n"
               "| model | concurrency | inferences (samples)/s | average latency ms |\n|---|---|---|---|\n"
               + "\n".join(rows) + f"\n{END}\n")
    print(section)
    if not args.print:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
