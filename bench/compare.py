"""Model Nexus against an earlier revision of itself, in the same run: did a change cost throughput?

    python bench/compare.py a6ef5a2              # 3 repeats x 5 s per case at concurrency 8, about 4 min
    python bench/compare.py a6ef5a2 --write      # and put the table into docs/benchmarks.md

The revision is exported with ``git archive`` into a temporary directory and served from there by
its own gunicorn.conf.py; the working tree is served as it is. Both get the same settings (one
sync worker pinned to core 0, wrk on core 1), take turns case by case and repeat by repeat, and
every case's answer is checked against onnxruntime on both before it is timed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import Server, build_mlp, lua_script, make_cases, median_of, verify, write_section, wrk  # noqa: E402

BEGIN, END = "<!-- compare: written by bench/compare.py -->", "<!-- /compare -->"


def export(revision: str, into: Path) -> Path:
    """Write the tree of ``revision`` into ``into`` and return it."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start(cwd: Path, model_dir: Path, work: Path, name: str, args: argparse.Namespace) -> Server:
    model_dir.mkdir()
    for file in ("iris.onnx", "iris.model_info.json"):
        shutil.copy(cwd / "models" / file, model_dir / file)
    env = {"NEXUS_MODEL_DIR": str(model_dir), "NEXUS_ORT_THREADS": "1", "WEB_CONCURRENCY": "1", "PYTHONPATH": str(cwd)}
    server = Server("wsgi:app", cwd, env, args, work / f"{name}.log")
    with open(work / "mlp.onnx", "rb") as model:
        response = requests.post(f"{server.url}/models/upload", files={"file": ("mlp.onnx", model)},
                                 data={"id": "mlp", "name": "MLP", "version": "1"}, timeout=60)
    response.raise_for_status()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md")
    args = parser.parse_args()
    args.workers, args.worker_class, args.threads = 1, "sync", 1
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package wrk)")
    label = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="nexus-compare-"))
    servers = []
    try:
        build_mlp(work / "mlp.onnx")
        (work / "cases").mkdir()
        shutil.copy(work / "mlp.onnx", work / "cases" / "mlp.onnx")
        shutil.copy(ROOT / "models" / "iris.onnx", work / "cases" / "iris.onnx")
        cases = make_cases(work / "cases")
        before = start(export(args.revision, work / "before"), work / "before-models", work, "before", args)
        servers.append(before)
        after = start(ROOT, work / "after-models", work, "after", args)
        servers.append(after)
        for server in servers:
            for case in cases:
                verify(server, case)
        time.sleep(2.5)  # the registries re-check their files for 2 s after the uploads
        rows = []
        for case in cases:
            script = lua_script(case, work)
            runs = {"before": [], "after": []}
            for server, name in ((before, "before"), (after, "after")):
                wrk(server.url + case.path, script, args.concurrency, 1)  # warm-up
            for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
                for server, name in ((before, "before"), (after, "after")):
                    runs[name].append(wrk(server.url + case.path, script, args.concurrency, args.duration))
            b, a = median_of(runs["before"]), median_of(runs["after"])
            rows.append(f"| {case.name} | {b.rps:,.0f} | {a.rps:,.0f} | {a.rps / b.rps:.3f} | {b.p99_ms:.2f} | {a.p99_ms:.2f} |")
            print(rows[-1], flush=True)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    section = (
        f"{BEGIN}\n## Before and after: {label} against the working tree\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python bench/compare.py {label}`: one sync worker "
        f"each, concurrency {args.concurrency}, medians of {args.repeats} interleaved runs of {args.duration} s.\n\n"
        f"| case | {label} req/s | now req/s | now / {label} | {label} p99 ms | now p99 ms |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + f"\n{END}\n"
    )
    print(section)
    if args.write:
        write_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
