"""What the server tells its operators: JSON logs (``logs``) and Prometheus metrics (``metrics``).

The per-request line and counters are written by ``nexus.middleware.Edge``.
"""
