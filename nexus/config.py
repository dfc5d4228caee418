"""Settings for one server, read once from the environment (and a ``.env`` file, if one is named).

gunicorn.conf.py reads the same Settings as the app, so the bind address, the worker count and the
log level are parsed in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

MB = 1024 * 1024


class ConfigError(ValueError):
    """Raised when an environment variable holds a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    model_dir: Path = Path("models")
    max_upload_mb: float = 512
    max_request_mb: float = 32
    api_token: str | None = None
    protect_predict: bool = False
    ort_threads: int = 1
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ("*",)
    max_model_memory_mb: float = 2048
    max_load_seconds: float = 30
    inference_timeout_s: float = 30
    max_inference_memory_mb: float = 1024
    load_wait_s: float = 5
    memory_budget_mb: float | None = None  # None: every model is opened in every worker at start
    shared_weights: bool = True  # False: sessions from the model's bytes, a private copy of its weights per worker
    grpc_port: int = 8081  # 0: no gRPC
    grpc_max_message_mb: float = 64
    grpc_threads: int = 8
    monitoring: bool = True
    reference_rows: int = 1000
    drift_window_s: float = 3600
    drift_last_n: int = 1000
    drift_warn: float = 0.1
    drift_alert: float = 0.25
    drift_min_count: int = 100
    records: bool = True
    database_url: str | None = None  # None: SQLite in state_dir
    state_dir: Path | None = None  # None: next to the model directory (<model_dir>.state)
    record_inputs: bool = False
    record_retention_days: float = 7
    record_queue: int = 100_000

    def __post_init__(self) -> None:
        if not self.drift_warn < self.drift_alert:
            raise ConfigError(f"NEXUS_DRIFT_WARN ({self.drift_warn}) must be below NEXUS_DRIFT_ALERT ({self.drift_alert})")

    @property
    def state_path(self) -> Path:
        """Where this server keeps its own state (the SQLite records database): NEXUS_STATE_DIR, or
        a directory beside the model directory (never inside it, which replicas may share)."""
        if self.state_dir is not None:
            return self.state_dir
        return self.model_dir.parent / f"{self.model_dir.name or 'models'}.state"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def limits(self) -> Limits:
        """What one model may cost: to load (checked at upload) and to run (enforced on every run)."""
        return Limits(self.max_model_memory_mb, self.max_load_seconds, self.inference_timeout_s, self.max_inference_memory_mb)


@dataclass(frozen=True)
class Limits:
    """The limits every uploaded graph runs inside (the Settings fields of the same names)."""

    model_memory_mb: float
    load_seconds: float
    inference_timeout_s: float
    inference_memory_mb: float


# environment variable -> (field, parser)
def _positive_number(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port number from 1 to 65535")
    return value


def _port_or_off(raw: str) -> int:
    value = int(raw)
    if not 0 <= value < 65536:
        raise ValueError("must be a port number from 1 to 65535, or 0 for none")
    return value


def _database_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite:///")):
        raise ValueError("must be a postgresql://user:password@host:port/database URL (or sqlite:///path)")
    return url


def _host(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must be an address such as 127.0.0.1 or 0.0.0.0")
    return raw.strip()


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    return origins or ("*",)


_ENV = {
    "HOST": ("host", _host),
    "PORT": ("port", _port),
    "WEB_CONCURRENCY": ("workers", _positive_int),
    "NEXUS_MODEL_DIR": ("model_dir", Path),
    "NEXUS_MAX_UPLOAD_MB": ("max_upload_mb", _positive_number),
    "NEXUS_MAX_REQUEST_MB": ("max_request_mb", _positive_number),
    "NEXUS_API_TOKEN": ("api_token", lambda raw: raw or None),
    "NEXUS_PROTECT_PREDICT": ("protect_predict", _flag),
    "NEXUS_ORT_THREADS": ("ort_threads", _positive_int),
    "NEXUS_LOG_LEVEL": ("log_level", _log_level),
    "NEXUS_CORS_ORIGINS": ("cors_origins", _origins),
    "NEXUS_MAX_MODEL_MEMORY_MB": ("max_model_memory_mb", _positive_number),
    "NEXUS_MAX_LOAD_SECONDS": ("max_load_seconds", _positive_number),
    "NEXUS_INFERENCE_TIMEOUT_S": ("inference_timeout_s", _positive_number),
    "NEXUS_MAX_INFERENCE_MEMORY_MB": ("max_inference_memory_mb", _positive_number),
    "NEXUS_LOAD_WAIT_S": ("load_wait_s", _positive_number),
    "NEXUS_MEMORY_BUDGET_MB": ("memory_budget_mb", lambda raw: _positive_number(raw) if raw.strip() else None),
    "NEXUS_SHARED_WEIGHTS": ("shared_weights", _flag),
    "NEXUS_GRPC_PORT": ("grpc_port", _port_or_off),
    "NEXUS_GRPC_MAX_MESSAGE_MB": ("grpc_max_message_mb", _positive_number),
    "NEXUS_GRPC_THREADS": ("grpc_threads", _positive_int),
    "NEXUS_MONITORING": ("monitoring", _flag),
    "NEXUS_REFERENCE_ROWS": ("reference_rows", _positive_int),
    "NEXUS_DRIFT_WINDOW_S": ("drift_window_s", _positive_number),
    "NEXUS_DRIFT_LAST_N": ("drift_last_n", _positive_int),
    "NEXUS_DRIFT_WARN": ("drift_warn", _positive_number),
    "NEXUS_DRIFT_ALERT": ("drift_alert", _positive_number),
    "NEXUS_DRIFT_MIN_COUNT": ("drift_min_count", _positive_int),
    "NEXUS_RECORDS": ("records", _flag),
    "NEXUS_DATABASE_URL": ("database_url", _database_url),
    "NEXUS_STATE_DIR": ("state_dir", Path),
    "NEXUS_RECORD_INPUTS": ("record_inputs", _flag),
    "NEXUS_RECORD_RETENTION_DAYS": ("record_retention_days", _positive_number),
    "NEXUS_RECORD_QUEUE": ("record_queue", _positive_int),
}


def read_dotenv(path: Path) -> dict[str, str]:
    """Return the ``KEY=VALUE`` pairs of a ``.env`` file; blank lines and ``#`` comments are skipped."""
    pairs: dict[str, str] = {}
    if not path.is_file():
        return pairs
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs[key.strip()] = value
    return pairs


def default_ort_threads(workers: int) -> int:
    """Give each worker an equal share of the cores so workers x threads never exceeds them."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def from_env(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``) over the values of a ``.env`` file.

    The file is read only when named, by ``dotenv`` or by ``NEXUS_ENV_FILE``, so a developer's
    stray ``.env`` never changes a server or a test run that did not ask for it.
    """
    env = dict(os.environ if environ is None else environ)
    if dotenv is None and env.get("NEXUS_ENV_FILE"):
        dotenv = Path(env["NEXUS_ENV_FILE"])
        if not dotenv.is_file():
            raise ConfigError(f"NEXUS_ENV_FILE={str(dotenv)!r}: no such file")
    env = {**read_dotenv(dotenv), **env} if dotenv else env
    values: dict[str, object] = {}
    for name, (field_name, parse) in _ENV.items():
        raw = env.get(name)
        if raw is None or (raw == "" and field_name != "api_token"):
            continue
        try:
            values[field_name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if "ort_threads" not in values:
        values["ort_threads"] = default_ort_threads(int(values.get("workers") or (os.cpu_count() or 1)))
    return Settings(**values)


def with_overrides(settings: Settings, overrides: Mapping[str, object]) -> Settings:
    """Return ``settings`` with the given fields replaced; unknown names are an error."""
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = dict(overrides)
    for name in ("model_dir", "state_dir"):
        if values.get(name) is not None:
            values[name] = Path(values[name])  # type: ignore[arg-type]
    return replace(settings, **values)
