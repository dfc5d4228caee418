"""Open a candidate model where it cannot hurt the serving workers, and measure what it costs.

Before any worker builds a session of a model it has not seen measured, the model is opened in
a short-lived child process (``python -m nexus.sandbox``) that:

- starts in an empty private working directory, with no file it may write (``RLIMIT_FSIZE`` 0)
  and the same session options the workers use (external data resolved in an empty directory);
- is watched by the parent, which reads its peak resident size (``VmHWM``) every 5 ms and kills
  it past the limit, and is the first process the kernel's out-of-memory killer picks. It gets
  no address-space limit on purpose: onnxruntime's constant folding gives up quietly when an
  allocation fails, so a capped child would measure a cheap model that every worker then
  folds in full;
- is killed when the load takes longer than the time limit, or when its parent dies.

What it measured (peak memory and seconds above the child's idle state) goes into the model's
sidecar as ``load_check``, so every worker and replica decides from the record without loading
the model again.

Given a place to write it, the same child then derives the model's serving form
(``runtime.derive``: the optimized graph and a weights file every worker maps), opens it the way
a worker will and measures what one worker holds of it (``resident_mb``, what the memory budget
counts). Only then may it write files, up to a bound set from the model's size. A model whose
serving form cannot be made is still served, from its bytes, and the record says why.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.config import MB, Limits
from nexus.errors import InvalidModel, ModelLoadTimeout, ModelTooLarge

_POLL_S = 0.005
_START_TIMEOUT_S = 60  # interpreter and onnxruntime import on a loaded machine
# What a serving form may take on disk: its weights once and pre-packed once, plus slack.
_SERVING_FILES_FACTOR, _SERVING_FILES_SLACK = 3, 64 * MB


def check(fd: int, sha256: str, limits: Limits, serving: Serving | None = None) -> dict[str, Any]:
    """Open the model file open at ``fd`` (whose bytes hash to ``sha256``) in a sandboxed child.

    The child reads the same open file (model files are replaced by rename, never rewritten),
    so the record is of exactly those bytes. Return the ``load_check`` record; raise
    ModelTooLarge or ModelLoadTimeout past the limits, InvalidModel if it cannot be loaded.
    With ``serving``, the child also writes the serving form there, and the record's ``serving``
    says what it wrote (or why it could not).
    """
    workdir = tempfile.mkdtemp(prefix="nexus-sandbox-")
    try:
        return {"sha256": sha256, **_Child(fd, workdir, limits, serving).result()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Serving:
    """Where the child writes a serving form: a directory of its own, and the two files' names."""

    directory: str
    graph: str
    weights: str


def verdict(record: Any, sha256: str, limits: Limits) -> str | None:
    """Return why the model with this ``load_check`` record may not be served under ``limits``, or None.

    Raise KeyError when the record cannot decide: there is none, it is of other bytes than
    ``sha256``, or it is a refusal made under smaller limits.
    """
    if not isinstance(record, dict) or record.get("sha256") != sha256:
        raise KeyError("no load check of these bytes")
    if "refused" in record:
        if record.get("memory_limit_mb", 0) < limits.model_memory_mb or record.get("time_limit_s", 0) < limits.load_seconds:
            raise KeyError("refused under smaller limits")
        return str(record["refused"])
    peak, seconds = record.get("peak_mb"), record.get("seconds")
    if not isinstance(peak, (int, float)) or not isinstance(seconds, (int, float)):
        raise KeyError("incomplete load check")
    if peak > limits.model_memory_mb:
        return _memory_message(f"{peak:g} MB", limits)
    if seconds > limits.load_seconds:
        return _time_message(limits)
    return None


def refusal_record(exc: Exception, sha256: str, limits: Limits) -> dict[str, Any]:
    """Return the ``load_check`` record that remembers a refusal under ``limits``."""
    message = getattr(exc, "message", str(exc))
    return {"sha256": sha256, "refused": message, "memory_limit_mb": limits.model_memory_mb, "time_limit_s": limits.load_seconds}


def _memory_message(needed: str, limits: Limits) -> str:
    return (
        f"loading this model needs {needed} of memory; the limit is {limits.model_memory_mb:g} MB "
        "(NEXUS_MAX_MODEL_MEMORY_MB)"
    )


def _time_message(limits: Limits) -> str:
    return f"loading this model takes longer than the limit of {limits.load_seconds:g} s (NEXUS_MAX_LOAD_SECONDS)"


class _Child:
    """One sandboxed load: the child process and the parent's watch over it."""

    def __init__(self, fd: int, workdir: str, limits: Limits, serving: Serving | None) -> None:
        self.limits = limits
        self.serving = serving
        argv = [str(fd), json.dumps(limits.__dict__), *([json.dumps(serving.__dict__)] if serving else [])]
        # -S skips site's start-up work; the parent's import path (this package first) replaces it.
        path = [str(Path(__file__).resolve().parent.parent), *(p for p in sys.path if p)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(path),
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "nexus.sandbox", *argv],
            cwd=workdir,
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.buffer = b""

    def result(self) -> dict[str, Any]:
        try:
            hello = self._line(time.monotonic() + _START_TIMEOUT_S, None)
            if hello is None or "baseline_kb" not in hello:
                raise self._failed(hello)
            deadline = time.monotonic() + self.limits.load_seconds
            report = self._line(deadline, hello["baseline_kb"])
            if report is None or "error" in report:
                raise self._failed(report)
            if self.serving is not None:
                report["serving"] = self._serving(hello["baseline_kb"])
            return report
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()

    def _serving(self, baseline_kb: int) -> dict[str, Any]:
        """Wait for the serving form (two loads: the one that writes it, the one that measures it);
        return its record, or one that says why there is none (the model is then served from its bytes)."""
        try:
            report = self._line(time.monotonic() + 2 * self.limits.load_seconds, baseline_kb, b"VmRSS:")
        except (ModelTooLarge, ModelLoadTimeout) as exc:
            report = {"error": exc.message}
        if report is None:
            report = {"error": f"the child stopped while writing it ({self._exit()})"}
        return {"onnxruntime": _ort_version(), **report}

    def _exit(self) -> str:
        code = self.proc.wait()
        return signal.Signals(-code).name if code < 0 else f"status {code}"

    def _line(self, deadline: float, baseline_kb: int | None, watched: bytes = b"VmHWM:") -> dict[str, Any] | None:
        """Read the child's next JSON line, enforcing the deadline and (after start) the memory limit
        on ``watched`` (the peak resident size; the current one while the serving form is made)."""
        stdout = self.proc.stdout
        while b"\n" not in self.buffer:
            if baseline_kb is not None:
                peak_kb = _status_kb(watched, self.proc.pid)
                if peak_kb is not None and (peak_kb - baseline_kb) * 1024 > self.limits.model_memory_mb * MB:
                    self.proc.kill()
                    raise self._too_large()
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                if baseline_kb is None:
                    raise InvalidModel("the model could not be checked: the sandbox did not start in time")
                raise ModelLoadTimeout(_time_message(self.limits))
            ready, _, _ = select.select([stdout], [], [], min(left, _POLL_S if baseline_kb is not None else left))
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return None

    def _failed(self, report: dict[str, Any] | None) -> Exception:
        """Turn a child's error report, or its death, into the API error the uploader gets."""
        if report is not None and "error" in report:
            from nexus.runtime import out_of_memory  # onnxruntime's words; the parent has it loaded already

            text = str(report["error"])
            if out_of_memory(text):  # whatever error class carried it, a failed allocation is the limit's doing
                return self._too_large()
            if report.get("code") == "invalid_model":
                return InvalidModel(text)
            return InvalidModel(f"file is not a loadable ONNX model: {text}")
        code = self.proc.wait()
        if code == -signal.SIGXCPU:
            return ModelLoadTimeout(_time_message(self.limits))
        if code == -signal.SIGKILL:  # the kernel's out-of-memory killer
            return self._too_large()
        if code < 0:
            name = signal.Signals(-code).name
            return InvalidModel(f"onnxruntime stopped while loading the model ({name}); the file is not a model it can load")
        return InvalidModel(f"the model could not be loaded (the loader exited with status {code})")


    def _too_large(self) -> ModelTooLarge:
        return ModelTooLarge(_memory_message(f"more than {self.limits.model_memory_mb:g} MB", self.limits))


def _status_kb(field: bytes, pid: int | str = "self") -> int | None:
    """Return one ``kB`` field of a process's ``/proc/<pid>/status`` (VmHWM, the peak resident size), or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# -- the child ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _ort_version() -> str:
    from nexus.runtime import VERSION  # onnxruntime's version; the parent has it loaded already

    return VERSION


def _child_main(fd: int, limits: Limits, serving: Serving | None) -> None:
    _die_with_parent()
    try:  # if memory runs out anyway, the kernel kills this process first
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = int(limits.load_seconds) + 5  # a backstop if the parent's clock stops
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    from nexus.runtime import Runtime, session_options  # onnxruntime loads here, before the baseline

    size = os.fstat(fd).st_size
    parts, done = [], 0
    while done < size:  # one read for any model under 2 GB: the bytes are held once
        part = os.pread(fd, size - done, done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    os.close(fd)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    del parts
    session_options(1, limits.inference_memory_mb)  # the process-wide pieces, outside the measurement
    # No file until the load is measured; then, for a serving form, files up to a bound.
    bound = _SERVING_FILES_FACTOR * size + _SERVING_FILES_SLACK if serving is not None else 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, bound))
    baseline_kb = _status_kb(b"VmHWM:")
    _emit({"baseline_kb": baseline_kb})
    started = time.perf_counter()
    try:
        runtime = Runtime(data, 1, limits)
    except MemoryError:
        _emit({"error": "MemoryError"})
        return
    except Exception as exc:
        _emit(_error(exc))
        return
    seconds = time.perf_counter() - started
    peak_mb = max(0, _status_kb(b"VmHWM:") - baseline_kb) / 1024
    _emit({"peak_mb": round(peak_mb, 1), "seconds": round(seconds, 3)})
    if serving is not None:
        del runtime
        failed = _write_form(data, serving, limits)
        del data  # the bytes are not needed to open the form: the memory watched while it is measured is the form's
        _emit(failed or _measure_form(serving, limits))


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}", "code": getattr(exc, "code", None)}


def _write_form(data: bytes, serving: Serving, limits: Limits) -> dict[str, Any] | None:
    """Write the serving form of ``data`` (files allowed up to the bound, then none); return why it failed, or None."""
    from nexus.runtime import derive

    try:
        bound = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (bound, bound))
        derive(data, os.path.join(serving.directory, serving.graph), serving.weights, limits)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    except MemoryError:
        return {"error": "MemoryError"}
    except Exception as exc:
        return _error(exc)
    return None


def _measure_form(serving: Serving, limits: Limits) -> dict[str, Any]:
    """Open the serving form like a worker does; return what it is and what one worker holds of it."""
    from nexus.onnx_scan import ProtobufError, weights_read
    from nexus.runtime import Runtime, check_serving_graph, trim_heap
    from nexus.store import file_digest

    graph = os.path.join(serving.directory, serving.graph)
    weights = os.path.join(serving.directory, serving.weights)
    try:
        gc.collect()
        trim_heap()
        if not os.path.exists(weights):  # a model without an initializer of 1 KiB: all of it is in the graph
            open(weights, "wb").close()
        with open(graph, "rb") as file:
            graph_bytes = file.read()
        check_serving_graph(graph_bytes, serving.weights)
        before_kb = _status_kb(b"RssAnon:")
        runtime = Runtime(None, 1, limits, serving=graph)
        trim_heap()
        private_mb = max(0, _status_kb(b"RssAnon:") - before_kb) / 1024
        del runtime
    except MemoryError:
        return {"error": "MemoryError"}
    except Exception as exc:
        return _error(exc)
    files = {"graph": file_digest(graph), "weights": file_digest(weights)}
    try:  # the weights a session reads: not the stored form of one that runs on its pre-packed forms only
        read = weights_read(graph_bytes)
    except ProtobufError:
        read = files["weights"]["size"]
    resident_mb = private_mb + (files["graph"]["size"] + min(read, files["weights"]["size"])) / MB
    return {**files, "resident_mb": round(resident_mb, 3)}


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), Limits(**json.loads(sys.argv[2])), Serving(**json.loads(sys.argv[3])) if len(sys.argv) > 3 else None)
