"""One loaded model: its onnxruntime session, the description of its inputs and outputs, and the
limits every run of it is held to.

Three things keep an uploaded graph from hurting the worker that runs it:

- **No file access.** A session may only resolve external data inside an empty directory this
  process made for nothing else (``session.model_external_initializers_file_folder_path``), so
  whatever a model names, there is no file to read; the protobuf walk refuses the models that
  try, with a clear message, before onnxruntime sees them.
- **Time.** Every run carries its own ``RunOptions``; a watchdog thread sets ``terminate`` on
  runs past their deadline, and onnxruntime stops between two kernels (loops included).
- **Memory.** Every session of the process allocates its working memory from one arena whose
  size is capped (``OrtArenaCfg.max_mem``), growing only by what a run asks for and shrinking
  back after each run, so a run that would need more fails alone and a large one gives its
  memory back.

**One copy of the weights per machine.** A session built from a model's bytes holds private
copies of its weights (and onnxruntime's pre-packed forms of them) in every worker. So the
server derives a *serving form* of each upload once (:func:`derive`, run in the sandbox): the
graph optimized the way a session would optimize it, with every initializer of 1 KiB or more,
pre-packed ones included, in a separate weights file. A worker opens that form by path
(``Runtime(None, ..., serving=path)``); onnxruntime maps the weights file, so the page cache
holds one copy that every worker shares.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from nexus.config import MB, Limits, Settings
from nexus.errors import BadInput, InferenceFailed, InferenceMemoryLimit, InferenceTimeout, InvalidModel
from nexus.onnx_scan import ProtobufError, external_locations, uses_external_data
from nexus.tensors import DType, dtype_for

# onnxruntime prints its own warnings to stderr as plain text; our logs are JSON only.
ort.set_default_logger_severity(3)

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE_LOCATION = re.compile(r"/?\S*\.(?:cc|h|cpp|hpp):\d+\s+(?:[\w:<>~,*& ]+\([^)]*\)\s*)?")
# Anything that looks like an absolute path, and file sizes, never reach a client.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s\"'<>,;]+")
_FILE_SIZE = re.compile(r"\b(file_length|file size|file_size)\s*[:=]?\s*\d+", re.IGNORECASE)
_MAX_REASON = 300
_MISSING_LOCALE = re.compile(r"Failed to construct locale with name:\s*([\w.@-]+)")
_TERMINATED = "terminate flag"
# How onnxruntime (and Python) say that an allocation failed: its capped arena, or the system.
_OUT_OF_MEMORY = ("BFCArena", "Available memory of", "bad_alloc", "bad allocation", "Failed to allocate",
                  "Cannot allocate", "MemoryError", "out of memory")
_SHRINK_ARENA = "memory.enable_memory_arena_shrinkage"
_KSAME_AS_REQUESTED = 1  # arena extend strategy: grow by what is asked, not to the next power of two


def short_reason(exc: BaseException) -> str:
    """Return onnxruntime's error message without its code prefix, source locations, paths or excess length."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _SOURCE_LOCATION.sub("", _ORT_PREFIX.sub("", text))
    text = _FILE_SIZE.sub(r"\1 (hidden)", _ABSOLUTE_PATH.sub("<path>", text)).strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the model declares it; ``dtype`` is None for maps and sequences."""

    name: str
    type: str
    shape: tuple[int, ...]
    dtype: DType | None

    def info(self) -> dict[str, Any]:
        """Return the seed API's TensorInfo: ONNX element-type number, shape with -1, type string."""
        return {"name": self.name, "dtype": self.dtype.onnx if self.dtype else 0, "shape": list(self.shape), "type": self.type}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, arg.type, shape, dtype_for(arg.type))


# -- what one process sets up once --------------------------------------------------------------


class _Process:
    """The per-process pieces: the empty external-data directory, the capped arena, the watchdog.

    Made lazily in the process that builds the first session (a gunicorn worker, after the
    fork); a process that finds them made by its parent makes its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.empty_dir = ""
        self.arena_mb: float | None = None
        self.watchdog: Watchdog | None = None

    def ready(self, inference_memory_mb: float) -> _Process:
        if self._pid == os.getpid():
            return self
        with self._lock:
            if self._pid != os.getpid():
                self.empty_dir = _empty_directory()
                # One arena for every session of this process: the cap holds whatever runs at once.
                # Registering is once per process; the first app's limit is the one in force.
                config = ort.OrtArenaCfg(int(inference_memory_mb * MB), _KSAME_AS_REQUESTED, -1, -1)
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, config)
                self.arena_mb = inference_memory_mb
                self.watchdog = Watchdog()
                self._pid = os.getpid()
        return self


def _empty_directory() -> str:
    """Return a directory that holds nothing and that only this user may write into.

    One per user (``nexus-no-files-<uid>`` in the temp directory), made once and never written,
    so processes that die do not leave one each behind. If the name is taken by anything else
    than an empty 0700 directory of ours (a file, a link, another owner's), a private one is made.
    """
    path = os.path.join(tempfile.gettempdir(), f"nexus-no-files-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="nexus-no-files-")
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700 and not os.listdir(path):
        return path
    return tempfile.mkdtemp(prefix="nexus-no-files-")


_process = _Process()


class Watchdog:
    """A thread that stops the runs past their deadline (``RunOptions.terminate``).

    Registering a run is a dict store and its removal a dict pop; the thread looks every
    ``interval`` seconds, so a run is stopped within ``interval`` of its deadline, plus the time
    onnxruntime takes to finish the kernel it is in.
    """

    interval = 0.1

    def __init__(self) -> None:
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        threading.Thread(target=self._loop, name="nexus-watchdog", daemon=True).start()

    def watch(self, options: ort.RunOptions, seconds: float) -> None:
        self._runs[id(options)] = (time.monotonic() + seconds, options)

    def forget(self, options: ort.RunOptions) -> None:
        self._runs.pop(id(options), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            for deadline, options in list(self._runs.values()):
                if now >= deadline:
                    options.terminate = True


def session_options(threads: int, inference_memory_mb: float, from_bytes: bool = True) -> ort.SessionOptions:
    """Return options for one session: ``threads`` intra-op threads, no file access, the capped arena.

    A session built from bytes resolves external data in an empty directory; one built from a
    serving form by path (``from_bytes`` False) resolves it next to the graph, where the server
    wrote its weights file. The form is already optimized; what the session still does at its
    default level is what derive leaves out on purpose: the layout changes for the CPU it runs on
    (convolutions in blocked NCHWc form), which keep convolution models at full speed at the cost
    of a private copy of their convolution weights (measured: 14 % slower without them).
    """
    process = _process.ready(inference_memory_mb)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if from_bytes:
        # A model built from bytes resolves external data here, and this directory stays empty.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", process.empty_dir)
    else:
        options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


# What derive writes: the optimizations every platform shares (not the layout-specific ones of
# ORT_ENABLE_ALL, which a session chooses for the CPU it runs on), initializers of at least
# _EXTERNAL_MIN_BYTES in the weights file, with the pre-packed forms the kernels run on.
_DERIVED_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
_EXTERNAL_MIN_BYTES = 1024
VERSION = ort.__version__  # a serving form is rebuilt when the onnxruntime that wrote it is another


def derive(data: bytes, graph_path: str, weights_name: str, limits: Limits) -> None:
    """Write the serving form of the model ``data``: its graph at ``graph_path`` and its weights
    in ``weights_name`` next to it; raise InvalidModel if onnxruntime cannot."""
    options = session_options(1, limits.inference_memory_mb)
    options.graph_optimization_level = _DERIVED_LEVEL
    options.optimized_model_filepath = graph_path
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights_name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES))
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    _build(data, options)


def check_serving_graph(graph: bytes, weights_name: str) -> None:
    """Raise InvalidModel unless the serving graph ``graph`` names no external data but ``weights_name``."""
    try:
        named = external_locations(graph)
    except ProtobufError as exc:
        raise InvalidModel(f"the serving form is not an ONNX graph: {exc}") from None
    if not named <= {weights_name}:
        raise InvalidModel("the serving form names other external data than its weights file")


try:
    import ctypes

    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to trim
    _libc = None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (a load leaves tens of MB of them behind)."""
    if _libc is not None:
        _libc.malloc_trim(0)



def out_of_memory(text: str) -> bool:
    """Tell whether an error's text says an allocation failed."""
    return any(marker in text for marker in _OUT_OF_MEMORY)


def check_model_bytes(data: bytes) -> None:
    """Raise InvalidModel unless ``data`` is an ONNX protobuf with every tensor embedded."""
    try:
        external = uses_external_data(data)
    except ProtobufError as exc:
        raise InvalidModel(f"file is not an ONNX model: {exc}") from None
    if external:
        raise InvalidModel(
            "model stores tensors as external data, which this server does not accept; embed the weights in the .onnx file"
        )


def _build(source: bytes | str, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for every kind of bad model
        locale = _MISSING_LOCALE.search(str(exc))
        if locale:
            raise InvalidModel(
                f"the model's StringNormalizer needs the locale '{locale.group(1)}', which this server's machine does "
                "not have: install it there (Debian: the locales package, the locale enabled in /etc/locale.gen, "
                "then locale-gen; the Docker image has en_US.UTF-8), or convert the model with a locale the server "
                "has, e.g. skl2onnx's options={TfidfVectorizer: {'locale': 'C.UTF-8'}}"
            ) from None
        raise InvalidModel(f"file is not a loadable ONNX model: {short_reason(exc)}") from None


class Runtime:
    """A live onnxruntime session of one model: built from its bytes, or (``serving``) from its serving form."""

    def __init__(self, data: bytes | None, threads: int, limits: Limits | None = None, *, serving: str | None = None) -> None:
        limits = limits or Settings().limits
        if serving is None:
            check_model_bytes(data)  # type: ignore[arg-type]
            self.session = _build(data, session_options(threads, limits.inference_memory_mb))  # type: ignore[arg-type]
        else:
            self.session = _build(serving, session_options(threads, limits.inference_memory_mb, from_bytes=False))
        # onnxruntime's Python session keeps the model's bytes for a fallback to other execution
        # providers, which a CPU-only server never takes: without the fallback, the bytes (a second
        # copy of the weights in every worker) are let go once the session is built.
        self.session.disable_fallback()
        self.session._model_bytes = None
        self.shared = serving is not None  # runs on the mapped weights of a serving form
        self.timeout_s = limits.inference_timeout_s
        self.inputs = tuple(_spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self.input_by_name = {i.name: i for i in self.inputs}

    def run(self, feeds: Mapping[str, np.ndarray], output_names: list[str] | None = None) -> list[Any]:
        """Run the model on ``feeds`` within the time and memory limits; return the asked outputs in order."""
        options = ort.RunOptions()
        options.add_run_config_entry(_SHRINK_ARENA, "cpu:0")  # give a large run's memory back at its end
        watchdog = _process.watchdog
        watchdog.watch(options, self.timeout_s)
        try:
            return self.session.run(output_names or self.output_names, feeds, options)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:
            raise BadInput(f"the model rejected the input: {short_reason(exc)}") from None
        except Exception as exc:
            text = str(exc)
            if options.terminate and _TERMINATED in text:
                raise InferenceTimeout(self.timeout_s) from None
            if out_of_memory(text):
                raise InferenceMemoryLimit(_process.arena_mb or 0) from None
            raise InferenceFailed(f"inference failed inside the model: {short_reason(exc)}") from None
        finally:
            watchdog.forget(options)
