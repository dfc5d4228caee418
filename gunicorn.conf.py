"""gunicorn settings for Model Nexus: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value comes from the environment, so one file serves development, Docker and Kubernetes.
A ``--bind`` or ``--workers`` on the command line still wins over these.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
worker_class = "sync"
timeout = 300  # a 512 MB upload over a slow link must not be killed as a hung worker
graceful_timeout = 15
keepalive = 5
# gunicorn 24+ opens a control socket under $HOME; we do not use it, and several servers on one
# machine (tests, replicas) would fight over the one path.
control_socket_disable = True


def on_starting(server):
    """Remove what interrupted uploads left in the model directory, once, before any worker starts."""
    from nexus.config import from_env
    from nexus.store import ModelStore

    store = ModelStore(from_env().model_dir)
    store.ensure()
    store.clean_leftovers()


def post_worker_init(worker):
    """Load the models in each worker after the fork, so no onnxruntime session crosses it."""
    from nexus import start_worker

    start_worker(worker.wsgi)
