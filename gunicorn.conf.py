"""gunicorn settings for Model Nexus: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value comes from the environment, through the same Settings the app reads (nexus.config),
so one file serves development, Docker and Kubernetes. A ``--bind`` or ``--workers`` on the
command line still wins over these.
"""

import os
import shutil
import tempfile

from nexus.config import from_env

_settings = from_env()  # a bad value stops the start here, naming the variable

# -- Prometheus multiprocess mode -------------------------------------------------------------
# Must be in the environment before any worker imports prometheus_client. An operator's own
# directory is honoured; otherwise each server start gets a fresh private one.
# Its name carries the master's pid, so a start can remove those of masters that were killed.
_METRICS_PREFIX = "nexus-metrics-"
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

# -- serving ----------------------------------------------------------------------------------
# Loopback unless HOST says otherwise: sync workers facing clients directly can be held by a few
# slow ones (slowloris), so an exposed server belongs behind nginx (deploy/nginx.conf). The image
# sets HOST=0.0.0.0, since a container is reached through its own network namespace.
_host, _port = _settings.host, _settings.port
bind = f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}"
workers = _settings.workers
# sync workers measured fastest for small predictions (README: "Choosing the worker class").
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))  # a 512 MB upload over a slow link is not a hung worker
graceful_timeout = 15  # SIGTERM: finish in-flight requests for up to 15 s, then exit
keepalive = 5  # gthread workers keep client/nginx connections open this long; sync workers close after each response
# The heartbeat file lives in memory, not on a possibly slow container disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Trust X-Forwarded-* only from these addresses (nginx on the same host or pod by default);
# set FORWARDED_ALLOW_IPS to nginx's address, or "*" on a private network behind it.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# gunicorn 24+ opens a control socket under $HOME; we do not use it, and several servers on one
# machine (tests, replicas) would fight over the one path.
control_socket_disable = True

# -- logs: one JSON object per line on stdout, gunicorn's own lines included -------------------
logger_class = "nexus.observability.logs.GunicornLogger"
loglevel = _settings.log_level.lower()
errorlog = "-"
# The app writes one JSON line per request; set GUNICORN_ACCESS_LOG=- for gunicorn's as well.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)s %({x-request-id}o)s'


# -- hooks --------------------------------------------------------------------------------------
def _remove_dead_masters_metrics():
    """Remove the metrics directories that masters killed before their ``on_exit`` left behind."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(_METRICS_PREFIX):].partition("-")[0] if name.startswith(_METRICS_PREFIX) else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def on_starting(server):
    """Empty the metrics directory and clear leftovers of interrupted uploads, once, in the master."""
    if _own_metrics_dir:
        _remove_dead_masters_metrics()
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        path = os.path.join(_metrics_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    from nexus.store import ModelStore

    store = ModelStore(_settings.model_dir)
    store.ensure()
    store.clean_leftovers()


def when_ready(server):
    """Warn when anyone who can reach the port may upload and delete models."""
    open_addresses = [a for a in server.cfg.address if isinstance(a, tuple) and not _loopback(a[0])]
    if open_addresses and _settings.api_token is None:
        server.log.warning(
            "uploads and deletes are open to anyone who can reach %s: set NEXUS_API_TOKEN, or bind loopback (HOST=127.0.0.1) "
            "behind a proxy", ", ".join(f"{a[0]}:{a[1]}" for a in open_addresses)
        )


def _loopback(address):
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def post_worker_init(worker):
    """Load the models and serve gRPC in each worker after the fork, so no onnxruntime session or gRPC
    object crosses it."""
    from nexus import start_worker

    start_worker(worker.wsgi)


def worker_exit(server, worker):
    """Drain the worker's gRPC calls within what is left of the same grace period HTTP requests get,
    then end the worker without the interpreter's teardown.

    onnxruntime's static objects join their threads from the C exit handlers, after Python has
    finalized, which aborts the process (SIGABRT, "std::system_error: Invalid argument" on
    stderr). Every request is answered and every log line and metric written by now (the
    metrics live in shared memory-mapped files), so a worker that booted and was told to stop
    flushes its streams and leaves with os._exit; one that failed to boot keeps its exit code.
    """
    from nexus import stop_worker

    stop_worker(max(1, graceful_timeout - 2))
    if worker.booted and not worker.alive:
        import logging
        import sys

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def on_exit(server):
    """Remove the metrics directory this file made (an operator's own is left alone)."""
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    """Keep a dead worker's counters but drop its live gauges; remove what its unfinished writes left.

    The worker is reaped, so the kernel has dropped its locks: its temporary upload files and
    claims are now unheld and removed, while other workers' work in progress stays locked.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    from nexus.store import ModelStore

    try:
        ModelStore(_settings.model_dir).clean_leftovers()
    except OSError as exc:  # a missing directory: the workers report it
        server.log.warning("could not clean the model directory after a worker exit: %s", exc)
